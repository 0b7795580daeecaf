//! A service policy's `hedge:` section: when a replayable try runs long, a second copy goes to
//! the next cluster and the first answer wins. Parsed and validated here (the error names the
//! field); applied by the calling gateway, which learns each cluster's p99 latency.
//!
//! ```yaml
//! hedge: {enabled: true, multiplier: 2, min: 50ms, max: 1s}
//! ```
//!
//! The hedge waits `multiplier × p99` of the cluster's recent successful tries, never less
//! than `min` nor more than `max` (and exactly `max` while too few tries are known). Off by
//! default: a hedge is paid from the retry budget, but it is still a second copy of a request.

use std::time::Duration;

use serde::Deserialize;

/// The effective hedge settings of a service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    pub enabled: bool,
    /// The hedge waits this many times the cluster's learned p99.
    pub multiplier: f64,
    /// Never sooner than this.
    pub min: Duration,
    /// Never later than this (and this while the p99 is not yet known).
    pub max: Duration,
}

impl Default for Hedge {
    fn default() -> Self {
        Self {
            enabled: false,
            multiplier: 2.0,
            min: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl Hedge {
    /// How long a try waits before its hedge is sent, given the cluster's learned p99 (`None`
    /// while too few tries are known); `None` when hedging is off.
    pub fn delay(&self, p99: Option<Duration>) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        Some(match p99 {
            Some(p) => p.mul_f64(self.multiplier).clamp(self.min, self.max),
            None => self.max,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHedge {
    enabled: Option<bool>,
    multiplier: Option<f64>,
    min: Option<String>,
    max: Option<String>,
}

/// Longest `hedge.max`: a hedge is for a try that runs long, not one that hangs.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Validates `raw` over the defaults: `Err((field, reason))`.
pub(crate) fn validate(raw: RawHedge) -> Result<Hedge, (&'static str, String)> {
    let mut h = Hedge {
        enabled: raw.enabled.unwrap_or(true),
        ..Hedge::default()
    };
    let duration = |field, text: &str| crate::duration::parse(text).map_err(|r| (field, r));
    if let Some(m) = raw.multiplier {
        if !(1.0..=100.0).contains(&m) {
            return Err(("hedge.multiplier", "between 1 and 100".into()));
        }
        h.multiplier = m;
    }
    if let Some(t) = raw.min {
        h.min = duration("hedge.min", &t)?;
        if h.min.is_zero() {
            return Err(("hedge.min", "must be above zero".into()));
        }
    }
    if let Some(t) = raw.max {
        h.max = duration("hedge.max", &t)?;
        if h.max > MAX_WAIT {
            return Err(("hedge.max", format!("at most {}s", MAX_WAIT.as_secs())));
        }
    }
    if h.max < h.min {
        return Err((
            "hedge.max",
            format!("below hedge.min ({} ms)", h.min.as_millis()),
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: serde_json::Value) -> Result<Hedge, (&'static str, String)> {
        validate(serde_json::from_value(json).expect("shape"))
    }

    #[test]
    fn settings_are_validated_with_the_field_named() {
        let ok = raw(serde_json::json!({"multiplier": 3, "min": "20ms", "max": "500ms"}))
            .expect("valid");
        assert!(ok.enabled, "a section without `enabled` turns hedging on");
        assert_eq!(ok.multiplier, 3.0);
        assert_eq!(
            (ok.min, ok.max),
            (Duration::from_millis(20), Duration::from_millis(500))
        );
        for (json, field) in [
            (serde_json::json!({"multiplier": 0.5}), "hedge.multiplier"),
            (serde_json::json!({"multiplier": 101}), "hedge.multiplier"),
            (serde_json::json!({"min": "0s"}), "hedge.min"),
            (serde_json::json!({"min": "soon"}), "hedge.min"),
            (serde_json::json!({"max": "2m"}), "hedge.max"),
            (serde_json::json!({"min": "2s", "max": "1s"}), "hedge.max"),
        ] {
            let (f, reason) = raw(json.clone()).expect_err("refused");
            assert_eq!(f, field, "{json}: {reason}");
        }
        assert!(
            serde_json::from_value::<RawHedge>(serde_json::json!({"after": "1s"})).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn a_document_sets_the_section_and_a_bad_one_names_the_field() {
        use crate::model::policy::{ServicePolicy, parse};
        let doc = parse(
            "hedged",
            &serde_json::json!({"services": ["demo/echo"], "hedge": {"max": "300ms"}}),
        )
        .expect("valid");
        assert!(doc.section_names().contains(&"hedge"));
        let mut p = ServicePolicy::default();
        assert!(!p.hedge.enabled, "off by default");
        doc.apply_to(&mut p);
        assert!(p.hedge.enabled);
        assert_eq!(p.hedge.max, Duration::from_millis(300));
        assert_eq!(p.hedge.min, Hedge::default().min);
        let e = parse(
            "hedged",
            &serde_json::json!({"services": ["demo/echo"], "hedge": {"multiplier": 0}}),
        )
        .expect_err("refused");
        assert_eq!(
            (e.document.as_str(), e.field.as_str()),
            ("hedged", "hedge.multiplier")
        );
        assert!(e.to_string().contains("between 1 and 100"), "{e}");
    }

    #[test]
    fn the_delay_follows_the_p99_within_bounds() {
        let h = Hedge {
            enabled: true,
            multiplier: 2.0,
            min: Duration::from_millis(50),
            max: Duration::from_secs(1),
        };
        let ms = Duration::from_millis;
        assert_eq!(h.delay(Some(ms(100))), Some(ms(200)));
        assert_eq!(h.delay(Some(ms(5))), Some(ms(50)), "never before min");
        assert_eq!(h.delay(Some(ms(900))), Some(ms(1000)), "never after max");
        assert_eq!(h.delay(None), Some(ms(1000)), "unknown p99: max");
        assert_eq!(Hedge::default().delay(Some(ms(100))), None, "off");
    }
}

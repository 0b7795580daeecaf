//! The `tracing:` section shared by the federation's and the gateway's config files: where spans
//! go (an OTLP/gRPC collector) and which requests are traced. Validated once at start.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration;

/// The `tracing:` section. Without `endpoint`, tracing is off and costs one branch per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector, `http://host:port` (e.g. `http://127.0.0.1:4317`). Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How a trace that does not come with a caller's decision is sampled.
    #[serde(default)]
    pub sampler: SamplerKind,
    /// With `sampler: ratio`: the share of new traces sampled.
    #[serde(default)]
    pub ratio: Ratio,
    /// Follow the caller's decision (the sampled flag of its W3C `traceparent`) when it sent one.
    #[serde(default = "yes")]
    pub parent_based: bool,
    /// Finished spans waiting for export; when it is full, new spans are dropped and counted.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Spans sent to the collector in one export call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long one export call may take; a batch that fails or times out is dropped and counted.
    #[serde(default = "default_export_timeout", with = "duration")]
    pub export_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            sampler: SamplerKind::default(),
            ratio: Ratio::default(),
            parent_based: true,
            queue_size: default_queue_size(),
            batch_size: default_batch_size(),
            export_timeout: default_export_timeout(),
        }
    }
}

/// The sampler for traces that start here (or, with `parent_based: false`, for every trace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// `ratio` of traces, decided from the trace ID (so every hop that decides alike agrees).
    #[default]
    Ratio,
    AlwaysOn,
    AlwaysOff,
}

/// A share between 0 and 1 (checked by [`TracingConfig::validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

// Validated finite (never NaN), so equality is total.
impl Eq for Ratio {}

impl Default for Ratio {
    fn default() -> Self {
        Self(0.01)
    }
}

fn yes() -> bool {
    true
}

fn default_queue_size() -> usize {
    2048
}

fn default_batch_size() -> usize {
    512
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

impl TracingConfig {
    /// The first wrong field (relative to the section, e.g. `ratio`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(endpoint) = &self.endpoint {
            check_endpoint(endpoint).map_err(|reason| ("endpoint", reason))?;
        }
        let r = self.ratio.0;
        if !(r.is_finite() && (0.0..=1.0).contains(&r)) {
            return Err(("ratio", format!("{r} is not between 0 and 1 (0.01 = 1 %)")));
        }
        if self.queue_size == 0 || self.queue_size > 1 << 20 {
            return Err((
                "queue_size",
                format!("{} is not between 1 and 1048576", self.queue_size),
            ));
        }
        if self.batch_size == 0 || self.batch_size > self.queue_size {
            return Err((
                "batch_size",
                format!(
                    "{} is not between 1 and queue_size ({})",
                    self.batch_size, self.queue_size
                ),
            ));
        }
        if self.export_timeout < Duration::from_millis(10) {
            return Err(("export_timeout", "must be at least 10ms".into()));
        }
        Ok(())
    }
}

/// `http://host:port`: this build speaks OTLP over plaintext gRPC (a collector beside the
/// process, or a sidecar, carries it further).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        format!("{endpoint:?} is not a URL ({e}); expected e.g. http://127.0.0.1:4317")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{endpoint:?}: TLS to the collector is not built in; run a collector on this \
                 host or beside the pod and give its plaintext address (http://...)"
            ));
        }
        _ => {
            return Err(format!(
                "{endpoint:?} needs the scheme http:// (e.g. http://127.0.0.1:4317)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!(
            "{endpoint:?} needs a host and a port (OTLP/gRPC listens on 4317 by default)"
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "{endpoint:?}: give the collector's address only, without a path"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut TracingConfig)) -> Result<(), (&'static str, String)> {
        let mut c = TracingConfig::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_are_valid_and_off() {
        let c: TracingConfig = serde_saphyr::from_str("{}").expect("parse");
        assert_eq!(c, TracingConfig::default());
        assert!(c.endpoint.is_none());
        assert_eq!(
            (c.sampler, c.ratio.0, c.parent_based),
            (SamplerKind::Ratio, 0.01, true)
        );
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |r: Result<(), (&'static str, String)>| r.expect_err("refused").0;
        assert_eq!(field(with(|c| c.ratio = Ratio(1.5))), "ratio");
        assert_eq!(field(with(|c| c.ratio = Ratio(f64::NAN))), "ratio");
        assert_eq!(field(with(|c| c.queue_size = 0)), "queue_size");
        assert_eq!(field(with(|c| c.batch_size = 4096)), "batch_size");
        assert_eq!(
            field(with(|c| c.export_timeout = Duration::ZERO)),
            "export_timeout"
        );
        for bad in [
            "127.0.0.1:4317",
            "https://collector:4317",
            "http://collector",
            "http://collector:4317/v1/traces",
            "not a url",
        ] {
            let err = with(|c| c.endpoint = Some(bad.into())).expect_err(bad);
            assert_eq!(err.0, "endpoint", "{bad}");
            assert!(err.1.contains(bad), "{bad}: {}", err.1);
        }
        assert_eq!(
            with(|c| c.endpoint = Some("http://127.0.0.1:4317".into())),
            Ok(())
        );
    }

    #[test]
    fn unknown_fields_and_samplers_are_refused() {
        assert!(serde_saphyr::from_str::<TracingConfig>("{sampler: sometimes}").is_err());
        assert!(serde_saphyr::from_str::<TracingConfig>("{rate: 0.5}").is_err());
        let c: TracingConfig =
            serde_saphyr::from_str("{sampler: always_on, parent_based: false}").expect("parse");
        assert_eq!((c.sampler, c.parent_based), (SamplerKind::AlwaysOn, false));
    }
}

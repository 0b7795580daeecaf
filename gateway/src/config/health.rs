//! The `health:` section of the gateway config: how peer gateways are probed, when a cluster is
//! ejected for a service and for how long, and the defaults of the per-service policy knobs that
//! live next to them (slow start, per-try timeout). Every default is the value
//! `docs/failover.md` lists; a service's own policy overrides the last two.

use std::time::Duration;

use isthmus_federation::duration;
use isthmus_federation::model::policy::ServicePolicy;
use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::health::HealthConfig;

/// Failure detection and failover defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// How often every peer gateway is probed.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
    /// How long a probe may take before it counts as missed.
    #[serde(with = "duration")]
    pub probe_timeout: Duration,
    /// Consecutive missed probes before a peer gateway is down (and the requests waiting on it
    /// move on).
    pub probe_misses: u32,
    /// Consecutive failed requests (502/503/504, connection errors, timeouts, retryable gRPC
    /// statuses) before a cluster is ejected for a service.
    pub outlier_failures: u32,
    /// The first ejection's length; each further one doubles it.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    /// The longest ejection; also the quiet period after which a cluster's ejection count is
    /// forgotten.
    #[serde(with = "duration")]
    pub max_ejection: Duration,
    /// Default of a service's `failover.slow_start`: a recovered cluster's share ramps from
    /// 10 % to 100 % over this long (0s: no ramp).
    #[serde(with = "duration")]
    pub slow_start: Duration,
    /// Default of a service's `retry.per_try_timeout`: how long one try of a replayable request
    /// waits for an answer before the next cluster is tried.
    #[serde(with = "duration")]
    pub per_try_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        let detectors = HealthConfig::default();
        let policy = ServicePolicy::default();
        Self {
            probe_interval: detectors.probe_interval,
            probe_timeout: detectors.probe_timeout,
            probe_misses: detectors.probe_failures,
            outlier_failures: detectors.outlier_failures,
            base_ejection: detectors.base_ejection,
            max_ejection: detectors.max_ejection,
            slow_start: policy.slow_start,
            per_try_timeout: policy.per_try_timeout,
        }
    }
}

impl HealthSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| {
            Err(ConfigError::Invalid {
                field: format!("health.{field}"),
                reason: reason.into(),
            })
        };
        for (field, value) in [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("base_ejection", self.base_ejection),
            ("per_try_timeout", self.per_try_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be above zero");
            }
        }
        if self.probe_misses == 0 {
            return invalid("probe_misses", "at least 1");
        }
        if self.outlier_failures == 0 {
            return invalid("outlier_failures", "at least 1");
        }
        if self.max_ejection < self.base_ejection {
            return invalid("max_ejection", "at least health.base_ejection");
        }
        Ok(())
    }

    /// The detectors' tuning (`stale_grace` is a top-level field of the gateway config).
    pub fn detectors(&self, stale_grace: Duration) -> HealthConfig {
        HealthConfig {
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            probe_failures: self.probe_misses,
            outlier_failures: self.outlier_failures,
            base_ejection: self.base_ejection,
            max_ejection: self.max_ejection,
            stale_grace,
        }
    }

    /// The policy every service starts from before its documents apply.
    pub fn policy_defaults(&self) -> ServicePolicy {
        ServicePolicy {
            slow_start: self.slow_start,
            per_try_timeout: self.per_try_timeout,
            ..ServicePolicy::default()
        }
    }
}

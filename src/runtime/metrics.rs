//! Prometheus metrics of the operator (prometheus-client, text exposition on `/metrics`).

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a reconcile failed; decides how it is retried.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorCategory {
    /// The API server or another dependency failed; retried with backoff.
    Transient,
    /// The spec cannot be acted on; reported as a condition, retried on the next change.
    InvalidSpec,
    /// Something the spec refers to does not exist (yet); retried with backoff.
    DependencyMissing,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub category: ErrorCategory,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

/// Every metric the operator exports, registered under the `berth` prefix.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    pub applies: Family<ControllerLabels, Counter>,
    pub leader: Gauge,
    /// 1 while a BackupPolicy's newest successful backup is within two schedule intervals.
    pub backup_fresh: Family<PolicyLabels, Gauge>,
    /// Unix time of a BackupPolicy's newest successful backup.
    pub backup_last_success: Family<PolicyLabels, Gauge>,
    /// 1 when a BackupPolicy's last restore drill passed, 0 when it failed.
    pub restore_drill_passed: Family<PolicyLabels, Gauge>,
    /// Unix time the last restore drill of a BackupPolicy finished.
    pub restore_drill_last: Family<PolicyLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let applies = Family::<ControllerLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register("reconcile_failures", "Reconciliations failed, by error category", failures.clone());
        registry.register("reconcile_duration_seconds", "Duration of reconciliations", duration.clone());
        registry.register(
            "child_applies",
            "Server-side applies of child objects (0 in a steady state)",
            applies.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        let backup_fresh = Family::<PolicyLabels, Gauge>::default();
        let backup_last_success = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "backup_fresh",
            "1 while the newest successful backup of a BackupPolicy is within two schedule intervals (0: RPO breached)",
            backup_fresh.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of the newest successful backup of a BackupPolicy",
            backup_last_success.clone(),
        );
        let restore_drill_passed = Family::<PolicyLabels, Gauge>::default();
        let restore_drill_last = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "restore_drill_last_result",
            "1 when the last restore drill (spec.verify) of a BackupPolicy passed, 0 when it failed",
            restore_drill_passed.clone(),
        );
        registry.register(
            "restore_drill_last_timestamp_seconds",
            "Unix time the last restore drill of a BackupPolicy finished",
            restore_drill_last.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            applies,
            leader,
            backup_fresh,
            backup_last_success,
            restore_drill_passed,
            restore_drill_last,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile.
    pub fn observe(&self, controller: &'static str, elapsed: Duration, failure: Option<ErrorCategory>) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if let Some(category) = failure {
            self.failures.get_or_create(&FailureLabels { controller, category }).inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

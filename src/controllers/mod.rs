//! One reconciler per kind: read (from watch caches) -> validate -> build -> server-side apply
//! -> status. Shared here: the error type and its retry policy, the "apply only what changed"
//! applier, and the context every controller gets.

pub mod appenvironment;
pub mod apply;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;

use crate::runtime::metrics::{ErrorCategory, Metrics};

/// Errors a reconcile can end with. Invalid specs are not errors: they become a `Ready=False`
/// condition and the controller waits for the next change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialize {kind}: {source}")]
    Serialize { kind: &'static str, source: serde_json::Error },
    #[error("{0}")]
    DependencyMissing(String),
}

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Kube(_) | Error::Serialize { .. } => ErrorCategory::Transient,
            Error::DependencyMissing(_) => ErrorCategory::DependencyMissing,
        }
    }
}

/// Settings and shared state of every controller.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// How often an up-to-date object is looked at again (drift correction).
    pub resync: Duration,
    /// Whether cert-manager's Certificate API exists in the cluster.
    pub cert_manager: bool,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        resync: Duration,
        cert_manager: bool,
    ) -> Self {
        Self { client, metrics, recorder, resync, cert_manager, failures: Mutex::default() }
    }

    /// Backoff after a failure of `key`: 1 s doubling to 5 min, with ±25 % jitter so that
    /// many objects failing together do not retry together.
    pub fn backoff(&self, key: &str) -> Action {
        let mut failures = self.failures.lock().expect("backoff map poisoned");
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let base = Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300));
        Action::requeue(jitter(base, key))
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("backoff map poisoned").remove(key);
    }
}

/// `base` scaled by a factor in [0.75, 1.25), derived from the clock and the key.
fn jitter(base: Duration, key: &str) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let seed = blake3::hash(format!("{key}{nanos}").as_bytes()).as_bytes()[0];
    base.mul_f64(0.75 + f64::from(seed) / 512.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for i in 0..100 {
            let d = jitter(Duration::from_secs(8), &i.to_string());
            assert!(d >= Duration::from_secs(6) && d < Duration::from_secs(10), "{d:?}");
        }
    }
}

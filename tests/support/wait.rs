//! Polling helpers for tests that watch an operator converge.

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The AppEnvironment once its status for the current generation has condition `type_` with
/// `status` and `reason`.
pub async fn app_condition(
    api: &kube::Api<berth::api::AppEnvironment>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> berth::api::AppEnvironment {
    eventually(&format!("{name} {type_}={status} {reason}"), Duration::from_secs(90), || async {
        let app = api.get(name).await.ok()?;
        let s = app.status.as_ref()?;
        let c = s.conditions.iter().find(|c| c.type_ == type_)?;
        (s.observed_generation == app.metadata.generation && c.status == status && c.reason == reason).then_some(app)
    })
    .await
}

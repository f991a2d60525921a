//! One reconciler per kind: read (from watch caches) -> validate -> build -> server-side apply
//! -> status. Shared here: the error type and its retry policy, the "apply only what changed"
//! applier, and the context every controller gets.

pub mod appenvironment;
pub mod apply;
pub mod backup;
pub mod backuppolicy;
pub mod databaseinstance;
pub mod drill;
pub mod maintenance;
pub mod repository;
pub mod restore;
pub mod web_identity;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use crate::api::conditions::{DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::runtime::impersonate::{
    ACCOUNT_NOT_FOUND, Account, TenantClient, Tenants, account_exists, account_not_found_message,
};
use crate::runtime::metrics::{ErrorCategory, Metrics};

/// Image of agent Jobs when none is configured: the operator's own release, whose `pg_dump`
/// and agent match this operator (a moving `latest` would not).
pub const DEFAULT_AGENT_IMAGE: &str = concat!("ghcr.io/berth-dev/berth:", env!("CARGO_PKG_VERSION"));

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
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
    /// The API server refused a child as invalid (HTTP 422, e.g. a change of an immutable
    /// field, or a value only the server validates): the same apply cannot succeed until the
    /// spec (or something the server checks against) changes.
    #[error("the API server rejected the {kind} {name:?}: {message}")]
    ApplyRejected { kind: String, name: String, message: String },
    /// A child's name is taken by an object the owner did not create and may not take over.
    #[error("{message}")]
    ForeignChild { kind: String, name: String, message: String },
}

/// Whether an API error may pass if the request is made again: a 5xx, a 429, or no answer
/// (a dropped connection). Such an error is retried, never recorded as the outcome of a Backup,
/// a Restore or a restored object.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        _ => true,
    }
}

/// Reason of the conditions that report an [`Error::ApplyRejected`].
pub const APPLY_REJECTED: &str = "ApplyRejected";
/// Reason of the conditions that report an object Berth would have to take over but may not.
pub const ADOPTION_CONFLICT: &str = "AdoptionConflict";
/// How often a rejected apply is tried again: slowly, since only a change (which wakes the
/// controller anyway) or something outside Berth (an admission policy) can make it pass.
pub const REJECTED_RETRY: Duration = Duration::from_secs(300);

impl Error {
    pub fn category(&self) -> ErrorCategory {
        match self {
            Error::Kube(_) | Error::Serialize { .. } => ErrorCategory::Transient,
            Error::DependencyMissing(_) => ErrorCategory::DependencyMissing,
            Error::Provision(_) => ErrorCategory::Transient,
            Error::ApplyRejected { .. } | Error::ForeignChild { .. } => ErrorCategory::InvalidSpec,
        }
    }

    /// `Ready=False`, `Progressing=False` and `Degraded=True` with reason [`APPLY_REJECTED`] and
    /// the server's message, for an [`Error::ApplyRejected`]; `Ready=False` with reason
    /// [`ADOPTION_CONFLICT`] for an [`Error::ForeignChild`]; `None` for any other error.
    pub fn rejected_conditions(&self) -> Option<[DesiredCondition; 3]> {
        if let Error::ForeignChild { message, .. } = self {
            return Some([
                DesiredCondition::new(READY, false, ADOPTION_CONFLICT, message.clone()),
                DesiredCondition::new(PROGRESSING, false, ADOPTION_CONFLICT, "the other object is left as it is"),
                DesiredCondition::new(DEGRADED, false, ADOPTION_CONFLICT, message.clone()),
            ]);
        }
        let Error::ApplyRejected { .. } = self else { return None };
        let message = format!(
            "{self}; change the spec so that the server accepts it (Berth tries again every {} minutes)",
            REJECTED_RETRY.as_secs() / 60
        );
        Some([
            DesiredCondition::new(READY, false, APPLY_REJECTED, message.clone()),
            DesiredCondition::new(PROGRESSING, false, APPLY_REJECTED, "waiting for the spec to change"),
            DesiredCondition::new(DEGRADED, true, APPLY_REJECTED, message),
        ])
    }

    /// An apply's error, as [`Error::ApplyRejected`] when the server found the object invalid.
    pub fn from_apply(e: kube::Error, kind: &str, name: &str) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 422 => {
                Error::ApplyRejected { kind: kind.to_string(), name: name.to_string(), message: s.message }
            }
            e => Error::Kube(e),
        }
    }
}

/// When the error policy tries `key` again after `error`, if not with the exponential backoff:
/// a rejected apply after [`REJECTED_RETRY`] (with jitter), whatever failed before.
fn slow_retry(error: &Error, key: &str) -> Option<Duration> {
    (error.category() == ErrorCategory::InvalidSpec).then(|| jitter(REJECTED_RETRY, key))
}

/// Settings and shared state of every controller.
pub struct Context {
    pub client: Client,
    /// Clients that act as the tenants' ServiceAccounts (BackupPolicy, Backup, Restore).
    pub tenants: Arc<Tenants>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// How often an up-to-date object is looked at again (drift correction).
    pub resync: Duration,
    /// Whether cert-manager's Certificate API exists in the cluster.
    pub cert_manager: bool,
    /// Whether the External Secrets Operator's ExternalSecret API (v1) exists in the cluster.
    pub external_secrets: bool,
    /// Namespace the operator runs in (database NetworkPolicies admit it).
    pub operator_namespace: String,
    /// In-cluster `host:port` addresses mapped to reachable ones, for an operator that runs
    /// outside the cluster network (development, tests).
    pub endpoint_overrides: HashMap<String, String>,
    /// Image of the agent Jobs of backups and restores (the operator's own image).
    pub agent_image: String,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        tenants: Arc<Tenants>,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        resync: Duration,
        cert_manager: bool,
    ) -> Self {
        Self {
            client,
            tenants,
            metrics,
            recorder,
            resync,
            cert_manager,
            external_secrets: false,
            operator_namespace: "berth-system".into(),
            endpoint_overrides: HashMap::new(),
            agent_image: DEFAULT_AGENT_IMAGE.into(),
            failures: Mutex::default(),
        }
    }

    /// Where to connect to the in-cluster address `host:port`.
    pub fn endpoint(&self, host: &str, port: u16) -> (String, u16) {
        let wanted = format!("{host}:{port}");
        match self.endpoint_overrides.get(&wanted).and_then(|to| to.rsplit_once(':')) {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(port)),
            None => (host.to_string(), port),
        }
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

    /// A client that acts as `account`, or the reason and message of the condition that says
    /// the account does not exist (Berth never creates it).
    pub async fn act_as(&self, account: &Account) -> Result<Result<TenantClient, (&'static str, String)>, Error> {
        if !account_exists(&self.client, account).await? {
            return Ok(Err((ACCOUNT_NOT_FOUND, account_not_found_message(account))));
        }
        let client = self.tenants.client(account)?;
        Ok(Ok(TenantClient { client, account: account.clone(), operator: self.client.clone() }))
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("backoff map poisoned").remove(key);
    }
}

/// An `Api` for one namespace, or all when `None`.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch cache of `K` (scoped like the controller, filtered by `config`) and the stream
/// that feeds it; the stream must be polled (by a controller's `owns_stream`/`watches_stream`).
/// Objects are [`slim`]med before they are stored, and every event is reported to the
/// applier's write log (so that it can tell a cache that lags its own writes).
pub fn cache<K: apply::Child>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static) {
    let (reader, writer) = reflector::store::<K>();
    apply::track::<K>();
    let events = watcher(api::<K>(client, namespace), config).modify(slim);
    let stream = reflector::reflector(writer, events)
        .inspect(|event| {
            if let Ok(event) = event {
                apply::CHILD_WRITES.observe(event);
            }
        })
        .default_backoff()
        .touched_objects();
    (reader, stream)
}

/// Drops what no controller reads from an object before a watch cache stores it:
/// `metadata.managedFields` (server-side apply bookkeeping, often larger than the object
/// itself) and kubectl's `last-applied-configuration` annotation (a second copy of the
/// object). Caches hold every watched object for the life of the process, so this is most
/// of their memory on a real API server.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Waits until `store` has its first full list. kube-runtime's `Store::wait_until_ready` wakes
/// only the most recent of several concurrent waiters (the controller itself waits on the main
/// store too), so the wait is re-polled instead of trusted to wake us.
pub async fn synced_store<K: Resource + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_elapsed) => continue,
        }
    }
}

/// Whether every watch cache of a controller has its first full list. Reconciles wait for it:
/// a child missing from a cache that is still filling would look absent, and acting on that
/// would rewrite it (or, for a StatefulSet, skip the day-2 checks).
#[derive(Clone)]
pub struct CachesSynced(tokio::sync::watch::Receiver<bool>);

impl CachesSynced {
    /// A flag and the sender that raises it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once the caches are synced (at once afterwards).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|synced| *synced).await;
    }
}

/// What the shared reconcile wrapper of [`drive`] needs from a controller's context.
pub trait ControllerContext: Send + Sync + 'static {
    fn shared(&self) -> &Context;
    fn caches(&self) -> &CachesSynced;
}

/// `namespace/name` of an object, for logs and the backoff map.
pub fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// `cached` as the API server has it now; `None` once it is gone. A controller's cache can lag
/// its own last status write (the watch is behind, and an owned Job's event triggers the next
/// reconcile first): a one-way step decided from that stale status would be done again, e.g. a
/// finished Backup exported and its completion written and announced twice. The kinds with
/// few objects and one-way steps (BackupPolicy, Backup, Restore) read fresh at each reconcile;
/// an AppEnvironment only before it starts a migration Job.
pub async fn read_fresh<K>(client: &Client, cached: &K) -> Result<Option<K>, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), cached.meta().namespace.as_deref().unwrap_or_default());
    api.get_opt(cached.meta().name.as_deref().unwrap_or_default()).await
}

/// Raises `caches_synced` (and calls `synced`) once `ready` resolves: every cache of a
/// controller has its first list.
pub fn when_synced(
    ready: impl Future<Output = ()> + Send + 'static,
    caches_synced: tokio::sync::watch::Sender<bool>,
    synced: impl FnOnce() + Send + 'static,
) {
    tokio::spawn(async move {
        ready.await;
        let _ = caches_synced.send(true);
        synced();
    });
}

/// Drives `controller` until `shutdown`: every reconcile waits for the caches, is timed and
/// counted under `name`; a failure is logged and retried with per-object exponential backoff
/// (an apply the API server rejected as invalid: slowly, see [`slow_retry`]).
pub async fn drive<K, C, F, Fut>(
    name: &'static str,
    controller: kube::runtime::Controller<K>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<C>,
    reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    C: ControllerContext,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    use futures::StreamExt;
    let wrapped = move |obj: Arc<K>, ctx: Arc<C>| {
        let reconcile = reconcile.clone();
        async move {
            ctx.caches().wait().await;
            let started = std::time::Instant::now();
            let key = object_key(obj.as_ref());
            let result = reconcile(obj, ctx.clone()).await;
            ctx.shared().metrics.observe(name, started.elapsed(), result.as_ref().err().map(Error::category));
            if result.is_ok() {
                ctx.shared().succeeded(&key);
            }
            result
        }
    };
    let error_policy = move |obj: Arc<K>, error: &Error, ctx: Arc<C>| {
        let key = object_key(obj.as_ref());
        tracing::warn!(controller = name, object = %key, %error, category = ?error.category(), "reconcile failed");
        match slow_retry(error, &key) {
            Some(after) => Action::requeue(after),
            None => ctx.shared().backoff(&key),
        }
    };
    controller
        .graceful_shutdown_on(shutdown)
        .run(wrapped, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile trigger failed");
            }
        })
        .await;
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

    fn rejected() -> Error {
        let status = kube::core::Status::failure(
            "StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden",
            "Invalid",
        )
        .with_code(422);
        Error::from_apply(kube::Error::Api(status.boxed()), "StatefulSet", "db")
    }

    #[test]
    fn a_422_becomes_a_condition_with_the_servers_message() {
        let e = rejected();
        assert_eq!(e.category(), ErrorCategory::InvalidSpec);
        let [ready, progressing, degraded] = e.rejected_conditions().expect("a rejected apply has conditions");
        assert_eq!((ready.status, ready.reason.as_str()), (false, APPLY_REJECTED));
        assert_eq!((progressing.status, progressing.reason.as_str()), (false, APPLY_REJECTED));
        assert_eq!((degraded.status, degraded.reason.as_str()), (true, APPLY_REJECTED));
        assert_eq!(
            degraded.message,
            "the API server rejected the StatefulSet \"db\": StatefulSet.apps \"db\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden; change the spec so that the server accepts it (Berth tries again every 5 minutes)"
        );
        // Other API errors stay transient, without conditions.
        let conflict = Error::from_apply(
            kube::Error::Api(kube::core::Status::failure("conflict", "Conflict").with_code(409).boxed()),
            "StatefulSet",
            "db",
        );
        assert_eq!(conflict.category(), ErrorCategory::Transient);
        assert!(conflict.rejected_conditions().is_none());
    }

    #[test]
    fn a_rejected_apply_is_retried_slowly_not_with_backoff() {
        for i in 0..20 {
            let after = slow_retry(&rejected(), &i.to_string()).expect("a rejected apply waits");
            assert!(after >= Duration::from_secs(225) && after < Duration::from_secs(375), "{after:?}");
        }
        // Everything else keeps the exponential backoff.
        assert_eq!(slow_retry(&Error::DependencyMissing("x".into()), "k"), None);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for i in 0..100 {
            let d = jitter(Duration::from_secs(8), &i.to_string());
            assert!(d >= Duration::from_secs(6) && d < Duration::from_secs(10), "{d:?}");
        }
    }
}

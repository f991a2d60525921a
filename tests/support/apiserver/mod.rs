//! Kubernetes API server stand-in on 127.0.0.1 (see DESIGN.md, "Testing: real parts").
//!
//! An in-process HTTP server (axum, plain HTTP) that serves enough of the Kubernetes REST API
//! for kube-rs clients, kube-runtime controllers and the real `kubectl` binary:
//! discovery, CRUD with resourceVersions and 409s, list + watch (with resume, bookmarks,
//! streaming lists and `410 Gone`), merge / JSON / strategic-merge / server-side-apply
//! patches, the `status` subresource, `metadata.generation`, finalizers and
//! `deletionTimestamp`, owner-reference garbage collection, CRD registration and CRD-schema
//! validation (structural schema + CEL rules via `kube-cel`), `meta.k8s.io/v1` Tables for
//! `kubectl get`, stand-ins for the built-in controllers and fault injection.
//!
//! The server runs on its own Tokio runtime in a background thread, so it keeps serving while
//! a test blocks (e.g. on `std::process::Command` running kubectl) and works from any runtime
//! flavour. It stops when the [`TestApiServer`] is dropped.
//!
//! Usage:
//! ```ignore
//! mod support;
//! use support::apiserver::{Options, TestApiServer};
//! let server = TestApiServer::start().await;          // stand-ins on
//! server.install_crds_from_dir(Path::new("crds")).await;
//! let client = server.client().await;                  // or KUBECONFIG=server.kubeconfig_path()
//! server.reset_counts();
//! // ... run the operator ...
//! assert_eq!(server.counts().write_requests(true), 0);  // leases/events excluded
//! server.faults().fail_next("patch", "deployments", 2, 500);
//! server.set_job_runner(|job| async move { JobOutcome::Succeeded });
//! ```
//! Benches can include it with `#[path = "../tests/support/apiserver/mod.rs"] mod apiserver;`.
//! `BERTH_TEST_APISERVER_LOG=1` logs every request to stderr.
//!
//! Deliberate approximations (details in `store.rs`, `http.rs`, `patch.rs`, `schema.rs`):
//! - `limit`/`continue` are ignored: lists always return every item in one page (allowed by
//!   the API: clients must cope with a server that does not paginate).
//! - `resourceVersion`/`resourceVersionMatch` on GET/LIST are ignored: reads are always served
//!   from the latest state.
//! - Server-side apply never reports field-manager conflicts (behaves as if `force=true`);
//!   `metadata.managedFields` is not emitted — the last applied configuration of each manager is
//!   kept in a side table and used to remove fields a manager stops applying.
//! - Strategic merge patch is JSON merge patch, except that lists whose items all carry a
//!   `name` (containers, env, volumes, ports with names, …) are merged by `name`; `$patch`
//!   directives are not supported.
//! - Objects in a namespace that does not exist are accepted, and the namespace is created.
//! - Deleting a namespace deletes its objects at once (those with finalizers get a
//!   `deletionTimestamp`) and removes the namespace without a Terminating phase.
//! - Garbage collection runs synchronously when an owner is removed; `Foreground`
//!   propagation is treated like `Background`; `Orphan` removes the owner reference.
//! - Built-in kinds are schemaless (not validated); CRD schemas support the structural subset
//!   listed in `schema.rs` (no `allOf`/`anyOf`/`oneOf`/`not`, no `format`).
#![allow(dead_code, clippy::type_complexity, clippy::too_many_arguments)]

mod http;
mod patch;
mod schema;
mod select;
mod standins;
mod store;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

pub use store::ApiError;

/// What a Job run ends with (the result of a job runner, or the default for Jobs without one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// `status.succeeded = 1`, condition `Complete=True`.
    Succeeded,
    /// `status.failed = 1`, condition `Failed=True` (reason `BackoffLimitExceeded`) with this message.
    Failed(String),
    /// Leave the Job active (`status.active = 1`) forever.
    Pending,
}

/// Future returned by a job runner.
pub type JobFuture = Pin<Box<dyn Future<Output = JobOutcome> + Send + 'static>>;
/// Runs a Job (given as JSON) and reports how it ended.
pub type JobRunner = Arc<dyn Fn(Value) -> JobFuture + Send + Sync + 'static>;

/// Which built-in controller stand-ins run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StandIn {
    /// Deployments become available with `spec.replicas` replicas.
    Deployments,
    /// StatefulSets become ready; their PVCs are created (phase Bound).
    StatefulSets,
    /// cert-manager Certificates become `Ready=True`; their Secret is created.
    Certificates,
    /// Jobs run (job runner, or [`Options::job_default`]).
    Jobs,
}

/// Server options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Deployment stand-in on.
    pub deployments: bool,
    /// StatefulSet stand-in on.
    pub statefulsets: bool,
    /// Certificate stand-in on.
    pub certificates: bool,
    /// Job stand-in on.
    pub jobs: bool,
    /// Outcome for Jobs when no job runner is registered.
    pub job_default: JobOutcome,
    /// Delay before a stand-in reacts to a change (zero: immediately).
    pub standin_delay: Duration,
    /// Watch events retained per resource type for watch resumption (older: `410 Gone`).
    pub history_limit: usize,
    /// Interval of BOOKMARK events on watches that ask for them.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            deployments: true,
            statefulsets: true,
            certificates: true,
            jobs: true,
            job_default: JobOutcome::Succeeded,
            standin_delay: Duration::ZERO,
            history_limit: 20_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

impl Options {
    /// All stand-ins off.
    pub fn without_standins() -> Self {
        Options { deployments: false, statefulsets: false, certificates: false, jobs: false, ..Options::default() }
    }
}

/// Request counts by (verb, resource). Verbs: get, list, watch, create, update, patch, delete,
/// deletecollection. Resources are plurals (`deployments`, `appenvironments`), subresources
/// as `plural/sub` (`appenvironments/status`). Discovery and OpenAPI requests are not counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// (verb, resource) → count.
    pub by: BTreeMap<(String, String), u64>,
}

impl RequestCounts {
    /// Count of one verb on one resource (exact resource string, e.g. `pods` or `pods/status`).
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.by.get(&(verb.to_string(), resource.to_string())).copied().unwrap_or(0)
    }
    /// All requests of a verb.
    pub fn verb(&self, verb: &str) -> u64 {
        self.by.iter().filter(|((v, _), _)| v == verb).map(|(_, n)| n).sum()
    }
    /// All requests to a resource, including its subresources.
    pub fn resource(&self, resource: &str) -> u64 {
        self.by.iter().filter(|((_, r), _)| base_resource(r) == resource).map(|(_, n)| n).sum()
    }
    /// Total of all counted requests.
    pub fn total(&self) -> u64 {
        self.by.values().sum()
    }
    /// Mutating requests (create, update, patch, delete, deletecollection). With
    /// `exclude_leases_and_events`, requests to `leases` and `events` (both API groups) are
    /// left out (leader election renews its Lease; recorders write Events).
    pub fn write_requests(&self, exclude_leases_and_events: bool) -> u64 {
        self.writes(exclude_leases_and_events).values().sum()
    }
    /// The mutating requests themselves, by (verb, resource) — handy in assertion messages.
    pub fn writes(&self, exclude_leases_and_events: bool) -> BTreeMap<(String, String), u64> {
        self.by
            .iter()
            .filter(|((v, r), _)| {
                is_write_verb(v) && !(exclude_leases_and_events && matches!(base_resource(r), "leases" | "events"))
            })
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }
}

fn base_resource(r: &str) -> &str {
    r.split('/').next().unwrap_or(r)
}

fn is_write_verb(v: &str) -> bool {
    matches!(v, "create" | "update" | "patch" | "delete" | "deletecollection")
}

#[derive(Clone, Debug)]
struct FaultRule {
    verb: String,
    resource: String,
    remaining: usize,
    status: u16,
    retry_after: Option<u64>,
}

/// Fault injection. `verb` and `resource` match like [`RequestCounts`] keys; `"*"` matches any.
#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<FaultRule>>,
    latency: Mutex<Option<(String, String, Duration)>>,
    drop_tx: Mutex<Option<tokio::sync::watch::Sender<u64>>>,
}

impl Faults {
    /// The next `n` requests matching (verb, resource) fail with HTTP `status` (500, 409, …) and
    /// a `Status` body with a matching reason.
    pub fn fail_next(&self, verb: &str, resource: &str, n: usize, status: u16) {
        self.rules.lock().unwrap().push(FaultRule {
            verb: verb.into(),
            resource: resource.into(),
            remaining: n,
            status,
            retry_after: None,
        });
    }
    /// The next `n` matching requests fail with `429 TooManyRequests` and `Retry-After`.
    pub fn throttle_next(&self, verb: &str, resource: &str, n: usize, retry_after_secs: u64) {
        self.rules.lock().unwrap().push(FaultRule {
            verb: verb.into(),
            resource: resource.into(),
            remaining: n,
            status: 429,
            retry_after: Some(retry_after_secs),
        });
    }
    /// Delay every request matching (verb, resource) by `latency` (`None`: no added latency).
    pub fn set_latency(&self, verb: &str, resource: &str, latency: Option<Duration>) {
        *self.latency.lock().unwrap() = latency.map(|d| (verb.to_string(), resource.to_string(), d));
    }
    /// Close every open watch stream now (clients see the stream end and re-watch).
    pub fn drop_watches(&self) {
        if let Some(tx) = self.drop_tx.lock().unwrap().as_ref() {
            tx.send_modify(|g| *g += 1);
        }
    }
    /// Remove all pending failures and the latency.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
        *self.latency.lock().unwrap() = None;
    }
    /// Pending failure rules still to fire (sum of remaining counts).
    pub fn pending(&self) -> usize {
        self.rules.lock().unwrap().iter().map(|r| r.remaining).sum()
    }

    fn take(&self, verb: &str, resource: &str) -> Option<(u16, Option<u64>)> {
        let mut rules = self.rules.lock().unwrap();
        let idx = rules
            .iter()
            .position(|r| r.remaining > 0 && pat_match(&r.verb, verb) && pat_match(&r.resource, resource))?;
        let r = &mut rules[idx];
        r.remaining -= 1;
        let out = (r.status, r.retry_after);
        if r.remaining == 0 {
            rules.remove(idx);
        }
        Some(out)
    }

    fn latency_for(&self, verb: &str, resource: &str) -> Option<Duration> {
        let l = self.latency.lock().unwrap();
        let (v, r, d) = l.as_ref()?;
        (pat_match(v, verb) && pat_match(r, resource)).then_some(*d)
    }
}

fn pat_match(pat: &str, s: &str) -> bool {
    pat == "*" || pat == s
}

/// State shared by the HTTP handlers, stand-ins and the harness.
pub(crate) struct Shared {
    store: store::Store,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    faults: Faults,
    opts: Options,
    port: u16,
    job_runner: RwLock<Option<JobRunner>>,
    standins: [AtomicBool; 4],
    drop_watches: tokio::sync::watch::Receiver<u64>,
}

impl Shared {
    fn standin_on(&self, s: StandIn) -> bool {
        self.standins[s as usize].load(Ordering::SeqCst)
    }
    fn count(&self, verb: &str, resource: &str) {
        *self.counts.lock().unwrap().entry((verb.to_string(), resource.to_string())).or_default() += 1;
    }
}

/// The test API server. Stops when dropped.
pub struct TestApiServer {
    shared: Arc<Shared>,
    url: String,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApiServer {
    /// Start with default options (all stand-ins on).
    pub async fn start() -> TestApiServer {
        Self::start_with(Options::default()).await
    }

    /// Start with the given options.
    pub async fn start_with(opts: Options) -> TestApiServer {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let opts2 = opts.clone();
        std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("test-apiserver-rt")
                    .enable_all()
                    .build()
                    .expect("test apiserver runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
                    let port = listener.local_addr().unwrap().port();
                    let (drop_tx, drop_rx) = tokio::sync::watch::channel(0u64);
                    let faults = Faults::default();
                    *faults.drop_tx.lock().unwrap() = Some(drop_tx);
                    let standins = [
                        AtomicBool::new(opts2.deployments),
                        AtomicBool::new(opts2.statefulsets),
                        AtomicBool::new(opts2.certificates),
                        AtomicBool::new(opts2.jobs),
                    ];
                    let shared = Arc::new(Shared {
                        store: store::Store::new(opts2.history_limit),
                        counts: Mutex::default(),
                        faults,
                        opts: opts2,
                        port,
                        job_runner: RwLock::new(None),
                        standins,
                        drop_watches: drop_rx,
                    });
                    let standin_task = tokio::spawn(standins::run(shared.clone()));
                    let app = http::router(shared.clone());
                    let _ = ready_tx.send(shared);
                    // Small watch chunks must not wait for Nagle / delayed ACKs.
                    use axum::serve::ListenerExt;
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = shutdown_rx.await;
                    });
                    let _ = server.await;
                    standin_task.abort();
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn test apiserver thread");
        let shared = ready_rx.await.expect("test apiserver failed to start");
        let url = format!("http://127.0.0.1:{}", shared.port);
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url)).expect("write kubeconfig");
        TestApiServer { shared, url, _dir: dir, kubeconfig, shutdown: Some(shutdown_tx) }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A kubeconfig file (cluster, user, context `berth-test`, current-context) for kubectl and
    /// `KUBECONFIG`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube client for this server (default namespace `default`). Create it inside the
    /// runtime that uses it.
    pub async fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().expect("server url"));
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(300));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Request counts since start or the last [`reset_counts`](Self::reset_counts).
    pub fn counts(&self) -> RequestCounts {
        RequestCounts { by: self.shared.counts.lock().unwrap().clone() }
    }

    /// Reset the request counts.
    pub fn reset_counts(&self) {
        self.shared.counts.lock().unwrap().clear();
    }

    /// Mutating requests counted so far (see [`RequestCounts::write_requests`]).
    pub fn write_requests(&self, exclude_leases_and_events: bool) -> u64 {
        self.counts().write_requests(exclude_leases_and_events)
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The current global resourceVersion (bumped by every write that changes something).
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }

    /// Turn a stand-in on or off at run time.
    pub fn set_standin(&self, which: StandIn, on: bool) {
        self.shared.standins[which as usize].store(on, Ordering::SeqCst);
        if on {
            standins::kick(&self.shared);
        }
    }

    /// Register the runner that executes Jobs (replaces any previous one).
    pub fn set_job_runner<F, Fut>(&self, f: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobOutcome> + Send + 'static,
    {
        let runner: JobRunner = Arc::new(move |job| Box::pin(f(job)) as JobFuture);
        *self.shared.job_runner.write().unwrap() = Some(runner);
    }

    /// Remove the job runner (Jobs then end with [`Options::job_default`]).
    pub fn clear_job_runner(&self) {
        *self.shared.job_runner.write().unwrap() = None;
    }

    /// Create or replace every CustomResourceDefinition found in the `*.yaml`/`*.yml`/`*.json`
    /// files of `dir` (multi-document YAML allowed). Not counted as requests. Panics on errors.
    pub async fn install_crds_from_dir(&self, dir: &Path) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        files.sort();
        for f in files {
            self.install_crds_from_file(&f).await;
        }
    }

    /// Create or replace the CustomResourceDefinitions in one YAML file.
    pub async fn install_crds_from_file(&self, file: &Path) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for doc in parse_yaml_docs(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display())) {
            if doc.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                self.shared.store.upsert_internal(doc).unwrap_or_else(|e| panic!("{}: {}", file.display(), e.message));
            }
        }
    }

    /// Create or replace any object (given as JSON) without going through HTTP (not counted).
    pub fn upsert(&self, obj: Value) -> Result<Value, ApiError> {
        self.shared.store.upsert_internal(obj).map(|o| (*o).clone())
    }

    /// Read an object directly from the store (not counted). `namespace` is ignored for
    /// cluster-scoped kinds.
    pub fn object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store.get_by_kind(api_version, kind, namespace, name).map(|o| (*o).clone())
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.shared.faults.drop_watches();
    }
}

fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: berth-test\n  cluster:\n    server: {url}\nusers:\n- name: berth-test\n  user: {{}}\ncontexts:\n- name: berth-test\n  context:\n    cluster: berth-test\n    user: berth-test\n    namespace: default\ncurrent-context: berth-test\n"
    )
}

/// Parse a (multi-document) YAML or JSON text into JSON values, skipping empty documents.
pub fn parse_yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(vec![v]);
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

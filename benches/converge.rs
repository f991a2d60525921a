//! Convergence benchmark: the real `berth operator` against two API servers, side by side:
//! the in-process stand-in (tests/support/apiserver) and a real control plane (kube-apiserver,
//! etcd, kube-controller-manager and the kubelet stand-in; tests/support/cluster), where the
//! operator runs as the chart's ServiceAccount. For N AppEnvironments (production tier with
//! ingress, TLS and autoscaling: 8 children and 3 pods each) it reports the time until all are
//! Ready (seen through one watch), the operator's API requests per AppEnvironment (the bench's
//! own creates and watch left out), writes during two steady-state resync periods (on the real
//! control plane counted from the API server's audit log), the operator's peak RSS (VmHWM), and
//! the CPU seconds each process spent (where the time goes).
//!
//!   cargo bench --bench converge                            # N = 100 and 1000, both servers
//!   BERTH_BENCH_SIZES=1000 BERTH_BENCH_SERVERS=cluster cargo bench --bench converge
//!   BERTH_BENCH_RESYNC=30 (default) sets --resync-seconds; BERTH_TEST_KCM_QPS=500 (default)
//!   the controller-manager's --kube-api-qps (burst twice that).
//!
//! A measurement, not a test: it prints figures and asserts nothing about time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use berth::api::AppEnvironment;
use futures::StreamExt;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use support::apiserver::TestApiServer;
use support::cluster::{Cluster, OPERATOR_USER, process_cpu_seconds};
use support::operator::Operator;

fn app(i: usize) -> AppEnvironment {
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: app-{i}\n  namespace: bench\nspec:\n  tier: production\n  image: ghcr.io/example/app:{i}\n  ingress:\n    hosts: [app-{i}.example.com]\n    tls:\n      issuerRef:\n        name: letsencrypt\n  autoscaling:\n    maxReplicas: 6\n"
    );
    serde_saphyr::from_str(&yaml).unwrap()
}

fn ready(app: &AppEnvironment) -> bool {
    app.status.as_ref().is_some_and(|s| {
        s.observed_generation == app.metadata.generation
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The server under the operator, and how its requests are counted.
enum Server {
    StandIn(TestApiServer),
    Cluster(Box<Cluster>, support::cluster::audit::Mark),
}

/// What one run measured.
struct Figures {
    server: &'static str,
    n: usize,
    created: Duration,
    converged: Duration,
    requests_per_app: f64,
    writes_per_app: f64,
    steady_writes: usize,
    steady_reconciles: f64,
    rss_mib: f64,
    cpu: Vec<(&'static str, f64)>,
}

impl Server {
    async fn start(kind: &str) -> Server {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        // cert-manager's Certificate CRD: open for the stand-in, with its real schema for the
        // real API server.
        let open_certificate_crd = repo.join("tests/fixtures/apiserver/cert-manager-certificate-crd-open.yaml");
        let certificate_crd = repo.join("tests/fixtures/cluster/cert-manager-certificate-crd.yaml");
        match kind {
            "standin" => {
                let server = TestApiServer::start().await;
                server.install_crds_from_dir(&repo.join("crds")).await;
                server.install_crds_from_file(&open_certificate_crd).await;
                Server::StandIn(server)
            }
            _ => {
                let cluster = Cluster::start().await;
                cluster.install_crds_from_dir(&repo.join("crds")).await;
                cluster.install_crds_from_file(&certificate_crd).await;
                cluster.namespace("bench").await;
                let mark = cluster.audit.mark();
                Server::Cluster(Box::new(cluster), mark)
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Server::StandIn(_) => "stand-in",
            Server::Cluster(..) => "real control plane",
        }
    }

    async fn client(&self) -> kube::Client {
        match self {
            Server::StandIn(s) => s.client().await,
            Server::Cluster(c, _) => c.client(),
        }
    }

    async fn operator_kubeconfig(&self) -> std::path::PathBuf {
        match self {
            Server::StandIn(s) => s.kubeconfig_path().to_path_buf(),
            Server::Cluster(c, _) => c.operator_kubeconfig(&[]).await,
        }
    }

    /// Starts counting the operator's requests.
    fn reset(&mut self) {
        match self {
            Server::StandIn(s) => s.reset_counts(),
            Server::Cluster(c, mark) => *mark = c.audit.mark(),
        }
    }

    /// The operator's requests and writes since `reset` (Events and Leases not among the
    /// writes), with the bench's own `own_requests` and `own_writes` left out on the stand-in,
    /// which cannot tell clients apart.
    fn operator_requests(&self, own_requests: u64, own_writes: u64) -> (u64, u64, String) {
        match self {
            Server::StandIn(s) => {
                let counts = s.counts();
                let total = counts.total().saturating_sub(own_requests);
                let writes = s.write_requests(true).saturating_sub(own_writes);
                (total, writes, format!("{:?}", counts.writes(true)))
            }
            Server::Cluster(c, mark) => {
                let by_kind = c.audit.requests_by_kind(*mark, OPERATOR_USER);
                let total = by_kind.values().sum::<usize>() as u64;
                let writes = c.audit.writes_since(*mark, OPERATOR_USER);
                (total, writes.len() as u64, format!("{by_kind:?}"))
            }
        }
    }

    fn cpu(&self) -> Vec<(&'static str, f64)> {
        let mut cpu = match self {
            Server::StandIn(_) => Vec::new(),
            Server::Cluster(c, _) => c.cpu_seconds(),
        };
        // The bench process: the stand-in server or the kubelet stand-in, and the bench's watch.
        let own = match self {
            Server::StandIn(_) => "stand-in API server (in the bench process)",
            Server::Cluster(..) => "kubelet stand-in (in the bench process)",
        };
        cpu.push((own, process_cpu_seconds(std::process::id()).unwrap_or(0.0)));
        cpu
    }
}

async fn run(kind: &str, n: usize, resync: u64) -> Figures {
    let mut server = Server::start(kind).await;
    let client = server.client().await;
    let kubeconfig = server.operator_kubeconfig().await;
    let mut operator =
        Operator::start(&kubeconfig, &["--leader-election=false", "--resync-seconds", &resync.to_string()]);
    operator.wait_ready(Duration::from_secs(120));
    let api: Api<AppEnvironment> = Api::namespaced(client, "bench");
    let cpu_before = server.cpu();
    let operator_cpu_before = process_cpu_seconds(operator.pid()).unwrap_or(0.0);
    server.reset();

    let started = Instant::now();
    // Create concurrently, like `kubectl apply -f dir/` or Argo CD syncing an app of apps.
    let creates = futures::stream::iter((0..n).map(|i| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &app(i)).await.map(|_| ()) }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>();
    for r in creates.await {
        r.expect("create");
    }
    let created = started.elapsed();
    // Readiness comes from one watch, not from listing every AppEnvironment every 50 ms: at
    // n = 1000 those lists (a few MB of JSON each, 20 per second, served and parsed on the
    // same two cores as the operator) slowed what they measured, and counted as requests.
    let mut events = api.watch(&WatchParams::default(), "0").await.expect("watch").boxed();
    let mut watches = 1;
    let mut ready_apps = HashSet::new();
    while ready_apps.len() < n {
        let left = Duration::from_secs(900).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, events.next()).await.expect("not converged after 15 minutes") {
            Some(Ok(WatchEvent::Added(app) | WatchEvent::Modified(app))) => {
                if ready(&app) {
                    ready_apps.insert(app.metadata.name.clone().unwrap_or_default());
                } else {
                    ready_apps.remove(app.metadata.name.as_deref().unwrap_or_default());
                }
            }
            Some(Ok(WatchEvent::Deleted(_) | WatchEvent::Bookmark(_))) => {}
            Some(Ok(WatchEvent::Error(e))) => panic!("watch error: {e:?}"),
            Some(Err(e)) => panic!("watch failed: {e}"),
            None => {
                events = api.watch(&WatchParams::default(), "0").await.expect("watch").boxed();
                watches += 1;
                ready_apps.clear();
            }
        }
    }
    drop(events);
    let converged = started.elapsed();
    let (requests, writes, by_kind) = server.operator_requests(n as u64 + watches, n as u64);
    println!("  [{}] operator requests until Ready: {by_kind}", server.name());
    let cpu_after = server.cpu();
    let operator_cpu = process_cpu_seconds(operator.pid()).unwrap_or(0.0) - operator_cpu_before;
    let mut cpu: Vec<(&'static str, f64)> = vec![("berth operator", operator_cpu)];
    for ((name, after), (_, before)) in cpu_after.iter().zip(&cpu_before) {
        cpu.push((name, after - before));
    }

    // Steady state: two full resync periods.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.reset();
    let reconciles_before = operator.counter("berth_reconciles_total");
    tokio::time::sleep(Duration::from_secs(2 * resync + 1)).await;
    let (_, steady_writes, by_kind) = server.operator_requests(0, 0);
    if steady_writes > 0 {
        println!("  [{}] steady-state requests: {by_kind}", server.name());
    }
    let steady_reconciles = operator.counter("berth_reconciles_total") - reconciles_before;
    let rss_mib = operator.peak_rss().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    Figures {
        server: server.name(),
        n,
        created,
        converged,
        requests_per_app: requests as f64 / n as f64,
        writes_per_app: writes as f64 / n as f64,
        steady_writes: steady_writes as usize,
        steady_reconciles,
        rss_mib,
        cpu,
    }
}

fn print(f: &Figures) {
    println!(
        "{:<19} n={:5}  created {:6.2}s  all Ready {:6.2}s  requests/app {:5.1}  writes/app {:4.1}  steady-state writes {} over {:.0} reconciles  operator peak RSS {:.1} MiB",
        f.server,
        f.n,
        f.created.as_secs_f64(),
        f.converged.as_secs_f64(),
        f.requests_per_app,
        f.writes_per_app,
        f.steady_writes,
        f.steady_reconciles,
        f.rss_mib,
    );
    let cpu: Vec<String> = f.cpu.iter().map(|(name, s)| format!("{name} {s:.1}s")).collect();
    println!("{:<19}   CPU until Ready: {}", "", cpu.join(", "));
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once with no args: keep
    // that fast.
    // Test runners list targets with `--list`: this is a measurement, not a test.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = match std::env::var("BERTH_BENCH_SIZES") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) if quick => vec![10],
        Err(_) => vec![100, 1000],
    };
    let servers: Vec<String> = std::env::var("BERTH_BENCH_SERVERS")
        .unwrap_or_else(|_| "standin,cluster".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let resync: u64 =
        std::env::var("BERTH_BENCH_RESYNC").ok().and_then(|s| s.parse().ok()).unwrap_or(if quick { 2 } else { 30 });
    let qps = std::env::var("BERTH_TEST_KCM_QPS").unwrap_or_else(|_| "500".into());
    println!("operator --resync-seconds {resync}; real control plane: kube-controller-manager --kube-api-qps {qps}");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for n in sizes {
        let figures: Vec<Figures> = servers
            .iter()
            .map(|kind| {
                let f = rt.block_on(run(kind, n, resync));
                print(&f);
                f
            })
            .collect();
        println!("--- n = {n}");
        for f in &figures {
            print(f);
        }
    }
}

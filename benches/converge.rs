//! Convergence benchmark: the real `berth operator` (release build recommended) against the
//! test API server. For N AppEnvironments (production tier with ingress, TLS and autoscaling:
//! 8 children each) it reports the time until all are Ready (seen through one watch), the
//! operator's API requests per AppEnvironment (the bench's own creates and watch left out,
//! Events included), writes during a steady-state resync, and the operator's peak RSS
//! (VmHWM).
//!
//!   cargo bench --bench converge                 # N = 100 and 1000
//!   BERTH_BENCH_SIZES=5000 cargo bench --bench converge
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

async fn run(n: usize) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = TestApiServer::start().await;
    server.install_crds_from_dir(&repo.join("crds")).await;
    server.install_crds_from_file(&repo.join("tests/fixtures/apiserver/cert-manager-certificate-crd.yaml")).await;
    let client = server.client().await;
    let resync = 5;
    let mut operator = Operator::start(
        server.kubeconfig_path(),
        &["--leader-election=false", "--resync-seconds", &resync.to_string()],
    );
    operator.wait_ready(Duration::from_secs(60));
    let api: Api<AppEnvironment> = Api::namespaced(client, "bench");
    server.reset_counts();

    let started = Instant::now();
    // Create concurrently, like `kubectl apply -f dir/` or Argo CD syncing an app of apps.
    let creates = futures::future::join_all((0..n).map(|i| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &app(i)).await.map(|_| ()) }
    }));
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
        let left = Duration::from_secs(600).saturating_sub(started.elapsed());
        match tokio::time::timeout(left, events.next()).await.expect("not converged after 10 minutes") {
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
    let counts = server.counts();
    // The bench's own requests (n creates and its watch) are left out of the per-app figures.
    let own_writes = n as u64;
    let own_requests = own_writes + watches;
    let operator_requests = counts.total().saturating_sub(own_requests) as f64;
    let operator_writes = server.write_requests(true).saturating_sub(own_writes) as f64;
    println!("  operator requests until Ready by (verb, resource): {:?}", {
        let mut by = counts.by.clone();
        if let Some(c) = by.get_mut(&("create".to_string(), "appenvironments".to_string())) {
            *c -= own_writes;
        }
        by.retain(|_, c| *c > 0);
        by
    });

    // Steady state: two full resync periods.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.reset_counts();
    let reconciles_before = operator.counter("berth_reconciles_total");
    tokio::time::sleep(Duration::from_secs(2 * resync + 1)).await;
    let steady_writes = server.write_requests(true);
    if steady_writes > 0 {
        println!("  steady-state writes by (verb, resource): {:?}", server.counts().writes(true));
    }
    let steady_reconciles = operator.counter("berth_reconciles_total") - reconciles_before;
    let rss = operator.peak_rss().unwrap_or(0) as f64 / (1024.0 * 1024.0);

    println!(
        "n={n:5}  created in {:6.2}s  all Ready after {:6.2}s  operator requests/app {:5.1} (writes/app {:4.1}, not counting Events)  steady-state: {steady_writes} writes over {steady_reconciles:.0} reconciles  operator peak RSS {rss:.1} MiB",
        created.as_secs_f64(),
        converged.as_secs_f64(),
        operator_requests / n as f64,
        operator_writes / n as f64,
    );
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
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for n in sizes {
        rt.block_on(run(n));
    }
}

//! Leader election under a hung API connection: two real `berth operator` processes against the
//! real control plane (tests/support/cluster), each through its own TCP proxy
//! (tests/support/stall_proxy). The leader's proxy stops moving bytes without closing anything;
//! the leader must give up within its renew deadline and exit, and the standby must take over
//! only after that — never two leaders. The evidence is each operator's own record of when it
//! started and stopped leading, stamped with the host's monotonic clock (both processes share
//! it), and the work the new leader then does.

use crate::support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use berth::api::AppEnvironment;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::{Cluster, OPERATOR_NAMESPACE};
use support::objects::repo;
use support::operator::free_port;
use support::stall_proxy::StallProxy;
use support::wait::eventually;

/// Shorter than the defaults (15/10/2) to keep the test short; the same margins apply.
const LEASE_DURATION: u64 = 12;
const RENEW_DEADLINE: u64 = 8;
const RETRY_PERIOD: u64 = 1;
const LEASE_NAME: &str = "berth-operator";

/// One `berth operator` process with its own identity (POD_NAME), logging JSON to a file.
struct Replica {
    identity: &'static str,
    child: Child,
    log: PathBuf,
    metrics_addr: SocketAddr,
}

impl Replica {
    fn start(identity: &'static str, kubeconfig: &Path, dir: &Path) -> Replica {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("operator")
            .args(["--metrics-addr", &metrics_addr.to_string(), "--log-format", "json"])
            .args(["--lease-duration-seconds", &LEASE_DURATION.to_string()])
            .args(["--lease-renew-deadline-seconds", &RENEW_DEADLINE.to_string()])
            .args(["--lease-retry-period-seconds", &RETRY_PERIOD.to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start berth operator");
        Replica { identity, child, log, metrics_addr }
    }

    fn ready(&mut self) -> Option<()> {
        use std::io::{Read, Write};
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited early ({status}):\n{}", self.identity, self.log_text());
        }
        let mut s = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.1 200").then_some(())
    }

    async fn wait_ready(&mut self) {
        let what = format!("{} ready", self.identity);
        eventually(&what, Duration::from_secs(60), || std::future::ready(self.ready())).await;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(message, monotonic_ns)` of every "started leading" / "stopped leading" record.
    fn leadership(&self) -> Vec<(String, u64, Value)> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                let message = v["message"].as_str()?;
                let kind = ["started leading", "stopped leading"].into_iter().find(|k| message.starts_with(k))?;
                Some((kind.to_string(), v["monotonic_ns"].as_u64()?, v))
            })
            .collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubeconfig` with its server replaced by `proxy` (the API server's certificate names
/// 127.0.0.1, so TLS verifies through any loopback port).
fn through(kubeconfig: &Path, cluster: &Cluster, proxy: SocketAddr, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let server = format!("server: {}", cluster.url);
    assert!(text.contains(&server), "the kubeconfig names {}", cluster.url);
    let path = kubeconfig.with_file_name(format!("{name}.kubeconfig"));
    std::fs::write(&path, text.replace(&server, &format!("server: https://{proxy}"))).unwrap();
    path
}

async fn holder(leases: &Api<Lease>) -> Option<(String, i32)> {
    let spec = leases.get_opt(LEASE_NAME).await.ok()??.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

async fn deployment_image(api: &Api<Deployment>, name: &str) -> Option<String> {
    let d = api.get_opt(name).await.ok()??;
    d.spec?.template.spec?.containers.first()?.image.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_connection_hangs_stops_before_the_standby_takes_over() {
    let cluster = Cluster::start_control_plane().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    cluster.namespace("shop-dev").await;
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let upstream: SocketAddr = cluster.url.trim_start_matches("https://").parse().unwrap();
    let (proxy_a, proxy_b) = (StallProxy::start(upstream).await, StallProxy::start(upstream).await);
    let leases: Api<Lease> = Api::namespaced(cluster.client(), OPERATOR_NAMESPACE);
    let work = tempfile::tempdir().unwrap();

    let mut a = Replica::start("berth-a", &through(&kubeconfig, &cluster, proxy_a.addr, "a"), work.path());
    a.wait_ready().await;
    assert_eq!(holder(&leases).await, Some(("berth-a".into(), 0)));
    let mut b = Replica::start("berth-b", &through(&kubeconfig, &cluster, proxy_b.addr, "b"), work.path());
    b.wait_ready().await; // ready as a follower: leadership is known

    // The leader works: it builds the AppEnvironment's Deployment.
    let text = std::fs::read_to_string(repo().join("deploy/examples/appenvironment-development.yaml")).unwrap();
    let app: AppEnvironment = serde_saphyr::from_str(&text).unwrap();
    let apps: Api<AppEnvironment> = Api::namespaced(cluster.client(), "shop-dev");
    apps.create(&PostParams::default(), &app).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "shop-dev");
    eventually("berth-a builds the Deployment", Duration::from_secs(60), || async {
        (deployment_image(&deployments, "shop-dev").await? == "ghcr.io/example/shop:1.4.2").then_some(())
    })
    .await;
    // A standby that has watched several renewals still follows.
    tokio::time::sleep(Duration::from_secs(3 * RETRY_PERIOD)).await;
    assert_eq!(holder(&leases).await, Some(("berth-a".into(), 0)));
    assert!(b.leadership().is_empty(), "berth-b leads while berth-a renews:\n{}", b.log_text());

    // Hang the leader's API connection.
    proxy_a.stall();
    let stalled = std::time::Instant::now();

    // The leader gives up within its renew deadline (plus a retry period and slack for a loaded
    // machine) and exits with a failure, without any answer from the API server.
    let exited: ExitStatus = eventually(
        "berth-a to exit after its renew deadline",
        Duration::from_secs(RENEW_DEADLINE + RETRY_PERIOD + 15),
        || std::future::ready(a.child.try_wait().unwrap()),
    )
    .await;
    assert!(!exited.success(), "a replica that lost its lease exits with a failure: {exited}");
    eprintln!("berth-a exited {} ms after its connection hung", stalled.elapsed().as_millis());

    // The standby takes over, as the lease's next term.
    eventually("berth-b to hold the lease", Duration::from_secs(60), || async {
        (holder(&leases).await? == ("berth-b".to_string(), 1)).then_some(())
    })
    .await;
    b.wait_ready().await;

    // Never two leaders, by the operators' own records on the shared monotonic clock.
    let (a_log, b_log) = (a.leadership(), b.leadership());
    let kinds = |log: &[(String, u64, Value)]| log.iter().map(|(k, _, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(kinds(&a_log), ["started leading", "stopped leading"], "berth-a:\n{}", a.log_text());
    assert_eq!(kinds(&b_log), ["started leading"], "berth-b:\n{}", b.log_text());
    let reason = a_log[1].2["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not renewed within"), "berth-a stopped because: {reason}");
    let (a_started, a_stopped, b_started) = (a_log[0].1, a_log[1].1, b_log[0].1);
    eprintln!(
        "berth-a led {} ms; berth-b started leading {} ms after berth-a stopped",
        (a_stopped - a_started) / 1_000_000,
        (b_started as i64 - a_stopped as i64) / 1_000_000
    );
    assert!(
        a_stopped < b_started,
        "berth-b started leading {} ms before berth-a stopped",
        a_stopped.saturating_sub(b_started) / 1_000_000
    );

    // The new leader does the work: a change reaches the Deployment through berth-b alone.
    apps.patch(
        "shop-dev",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": "ghcr.io/example/shop:1.4.3"}})),
    )
    .await
    .unwrap();
    eventually("berth-b updates the Deployment", Duration::from_secs(60), || async {
        (deployment_image(&deployments, "shop-dev").await? == "ghcr.io/example/shop:1.4.3").then_some(())
    })
    .await;
    cluster.assert_clean().await;
    drop(proxy_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_started_together_elect_one_leader() {
    let cluster = Cluster::start_control_plane().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), OPERATOR_NAMESPACE);
    let work = tempfile::tempdir().unwrap();

    // No Lease exists: both try to create it at once, and the API server lets one win.
    let mut a = Replica::start("berth-a", &kubeconfig, work.path());
    let mut b = Replica::start("berth-b", &kubeconfig, work.path());
    a.wait_ready().await;
    b.wait_ready().await;
    let (leader, transitions) = eventually("a Lease holder", Duration::from_secs(30), || holder(&leases)).await;
    assert_eq!(transitions, 0);
    // Several renewals later, still one leader, the one the Lease names.
    tokio::time::sleep(Duration::from_secs(3 * RETRY_PERIOD)).await;
    assert_eq!(holder(&leases).await, Some((leader.clone(), 0)));
    let leading: Vec<&str> = [&a, &b].iter().filter(|r| !r.leadership().is_empty()).map(|r| r.identity).collect();
    assert_eq!(leading, [leader.as_str()], "berth-a:\n{}\nberth-b:\n{}", a.log_text(), b.log_text());
}

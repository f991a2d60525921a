//! What an install of the operator (`helm install`, `kubectl apply -k deploy/base`) must
//! achieve on the real control plane, checked the same way for every install method
//! (tests/helm_install.rs, tests/kustomize_install.rs):
//!
//! - the operator pods pass admission in `berth-system`, which enforces Pod Security
//!   `restricted`, and the kubelet stand-in runs them as local `berth` processes
//!   ([`Kubelet::run_image`](super::kubelet::Kubelet::run_image)) with their bound
//!   service-account token;
//! - exactly one of them holds the Lease, and every one answers `/readyz` with 200;
//! - the example AppEnvironment becomes Ready, written by the Lease holder's token (the audit
//!   log's `authentication.kubernetes.io/pod-name`): no operator runs in the test process.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::cluster::{Cluster, OPERATOR_NAMESPACE, OPERATOR_USER, tool};
use super::kubelet::ServedPod;
use super::wait::eventually;

/// The operator image's repository in the chart and deploy/base.
pub const OPERATOR_IMAGE: &str = "ghcr.io/berth-dev/berth";
/// The operator's metrics/health `containerPort` in the chart and deploy/base.
pub const METRICS_PORT: i32 = 8080;
/// Lease of the chart's default values.
pub const LEASE: &str = "berth-operator";
/// The example every install must bring to Ready, and its namespace.
pub const EXAMPLE: &str = "deploy/examples/appenvironment-development.yaml";
pub const EXAMPLE_NAMESPACE: &str = "shop-dev";
pub const EXAMPLE_NAME: &str = "shop-dev";
/// The pod name in a bound service-account token's user info.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const ROLLOUT: Duration = Duration::from_secs(240);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs helm as admin against the cluster; panics with its output on failure.
pub fn helm(cluster: &Cluster, args: &[&str]) -> String {
    let home = cluster.dir().join("helm-home");
    let out = Command::new(tool("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm (scripts/install-tools.sh installs it into .tools/bin)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm {}:\n{text}", args.join(" "));
    text
}

/// What the operator looked like once it ran.
#[derive(Debug)]
pub struct OperatorSeen {
    /// The Deployment's pods, each run as a local process.
    pub pods: Vec<ServedPod>,
    /// The Lease holder (one of `pods`).
    pub leader: String,
    /// From the start of the wait until all of the above held.
    pub took: Duration,
}

/// Waits until the operator Deployment has `replicas` up-to-date pods, admitted in the
/// restricted namespace, each run by the kubelet stand-in as a process and Ready through its
/// real `/readyz`, with exactly one of them holding the Lease.
pub async fn operator_running(cluster: &Cluster, replicas: usize) -> OperatorSeen {
    let started = Instant::now();
    let client = cluster.client();
    let ns: Namespace = Api::all(client.clone()).get(OPERATOR_NAMESPACE).await.unwrap();
    let labels = ns.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
        Some("restricted"),
        "{OPERATOR_NAMESPACE} must enforce Pod Security restricted: {labels:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let want = replicas as i32;
    let (pods, leader) = eventually("the operator's pods run, one holds the Lease", ROLLOUT, || async {
        let d = deployments.get("berth").await.ok()?;
        let status = d.status.as_ref()?;
        let done = status.observed_generation == d.metadata.generation
            && status.replicas == Some(want)
            && status.updated_replicas == Some(want)
            && status.available_replicas == Some(want);
        if !done {
            return None;
        }
        let selector = d.spec.as_ref()?.selector.match_labels.clone()?;
        let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let listed = pods_api.list(&ListParams::default().labels(&selector.join(","))).await.ok()?;
        let live: Vec<Pod> = listed.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let ready = |p: &Pod| {
            let conditions = p.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
            conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        };
        if live.len() != replicas || !live.iter().all(ready) {
            return None;
        }
        let served = cluster.kubelet().served_pods();
        let pods: Vec<ServedPod> = live
            .iter()
            .filter_map(|p| served.iter().find(|s| Some(&s.uid) == p.metadata.uid.as_ref()).cloned())
            .collect();
        if pods.len() != replicas {
            return None;
        }
        let holder = leases.get(LEASE).await.ok()?.spec?.holder_identity?;
        pods.iter().any(|p| p.name == holder).then_some((pods, holder))
    })
    .await;

    // Readiness came from the process's own /readyz: ask it too. A standby that has just taken
    // the Lease answers 503 until its caches are synced, while the pod's Ready condition waits
    // for the probe's failure threshold; so "turns ready" within a deadline.
    let http = reqwest::Client::new();
    for pod in &pods {
        let url = pod.url(METRICS_PORT, "/readyz");
        eventually(&format!("{} /readyz 200", pod.name), Duration::from_secs(60), || async {
            let response = http.get(&url).send().await.ok()?;
            (response.status().as_u16() == 200).then_some(())
        })
        .await;
        let healthz = http.get(pod.url(METRICS_PORT, "/healthz")).send().await.unwrap();
        assert_eq!(healthz.status().as_u16(), 200, "{} /healthz", pod.name);
    }
    // Each runs as the chart's securityContext user (the stand-in switches users as root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for pod in &pods {
            let pid = pod.pid().unwrap_or_else(|| panic!("{}: no process", pod.name));
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
            assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "{}: {uid}", pod.name);
        }
    }
    // One leader: the Lease names one pod, and only that pod's metrics say it leads.
    let mut leading = Vec::new();
    for pod in &pods {
        let metrics = http.get(pod.url(METRICS_PORT, "/metrics")).send().await.unwrap().text().await.unwrap();
        let lead = metrics.lines().any(|l| l.starts_with("berth_leader") && l.trim_end().ends_with(" 1"));
        if lead {
            leading.push(pod.name.clone());
        }
    }
    assert_eq!(leading, vec![leader.clone()], "exactly the Lease holder leads (berth_leader metric)");
    OperatorSeen { pods, leader, took: started.elapsed() }
}

/// Applies the example AppEnvironment into its namespace (restricted) and waits until it is
/// Ready at its generation; returns the object.
pub async fn example_app_ready(cluster: &Cluster) -> Value {
    cluster.namespace(EXAMPLE_NAMESPACE).await;
    cluster.kubectl_apply(&std::fs::read(repo().join(EXAMPLE)).unwrap());
    app_ready(cluster).await
}

/// Waits until the example AppEnvironment is Ready at its current generation.
pub async fn app_ready(cluster: &Cluster) -> Value {
    eventually("the example AppEnvironment Ready", ROLLOUT, || async {
        let app = cluster.object("berth.dev/v1alpha1", "AppEnvironment", EXAMPLE_NAMESPACE, EXAMPLE_NAME).await?;
        let fresh = app["status"]["observedGeneration"] == app["metadata"]["generation"];
        let ready = ready_condition(&app).is_some_and(|c| c["status"] == "True");
        (fresh && ready).then_some(app)
    })
    .await
}

/// The Ready condition of an object.
pub fn ready_condition(object: &Value) -> Option<&Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")
}

/// The pods (by name) whose bound token wrote the example app's Deployment or status: who
/// reconciled it, from the API server's audit log.
pub fn writers_of_example(cluster: &Cluster) -> Vec<String> {
    let mut pods: Vec<String> = cluster
        .audit
        .all()
        .into_iter()
        .filter(|e| e.is_write() && e.user.username == OPERATOR_USER)
        .filter(|e| {
            e.object_ref.as_ref().is_some_and(|o| {
                o.namespace == EXAMPLE_NAMESPACE
                    && o.name == EXAMPLE_NAME
                    && matches!(o.resource.as_str(), "deployments" | "appenvironments")
            })
        })
        .map(|e| e.user.extra.get(POD_NAME_EXTRA).and_then(|v| v.first().cloned()).unwrap_or_default())
        .collect();
    pods.sort();
    pods.dedup();
    pods
}

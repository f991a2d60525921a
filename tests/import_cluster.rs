//! `berth import cluster` against the real control plane (tests/support/cluster): a
//! hand-written Deployment with its Service, Ingress, HorizontalPodAutoscaler and
//! PodDisruptionBudget becomes the AppEnvironment that reproduces them; what does not fit is
//! reported; the output renders and validates.

mod support;

use std::path::PathBuf;
use std::process::Command;

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use support::cluster::Cluster;

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".tools"));
    dir.join("bin").join(name)
}

async fn create(cluster: &Cluster, ns: &str, group: &str, version: &str, kind: &str, plural: &str, obj: Value) {
    let ar = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_their_service_ingress_autoscaler_and_budget_become_app_environments() {
    let cluster = Cluster::start_control_plane().await;
    cluster.namespace("legacy").await;
    let labels = json!({"app": "shop", "tier": "web"});
    create(
        &cluster,
        "legacy",
        "apps",
        "v1",
        "Deployment",
        "deployments",
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}],
                        "containers": [{
                            "name": "app", "image": "ghcr.io/acme/shop:4.2.0", "args": ["serve"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [{"name": "LOG_LEVEL", "value": "info"}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}
                        }],
                        "volumes": [{"name": "cache", "emptyDir": {}}]
                    }
                }
            }
        }),
    )
    .await;
    create(
        &cluster,
        "legacy",
        "",
        "v1",
        "Service",
        "services",
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop-svc"},
            "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]}
        }),
    )
    .await;
    create(
        &cluster,
        "legacy",
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt-prod"}},
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                "rules": [{"host": "shop.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "shop-svc", "port": {"number": 8080}}}}]}}]
            }
        }),
    )
    .await;
    create(&cluster, "legacy", "autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop"}, "minReplicas": 3, "maxReplicas": 8,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]}
    })).await;
    create(
        &cluster,
        "legacy",
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "shop"},
            "spec": {"selector": {"matchLabels": labels}, "minAvailable": 2}
        }),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["import", "cluster", "--namespace", "legacy", "--tier", "production", "-o", out.to_str().unwrap()])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let yaml = std::fs::read_to_string(out.join("berth.yaml")).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple::<Value>(&yaml).unwrap().into_iter().filter(|d| !d.is_null()).collect();
    let [app] = docs.as_slice() else { panic!("one AppEnvironment: {yaml}") };
    let spec = &app["spec"];
    assert_eq!(
        (app["metadata"]["name"].as_str(), app["metadata"]["namespace"].as_str()),
        (Some("shop"), Some("legacy"))
    );
    assert_eq!(spec["image"], "ghcr.io/acme/shop:4.2.0");
    assert_eq!(spec["args"], json!(["serve"]));
    assert_eq!(spec["ports"], json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"}]));
    assert_eq!(spec["probes"]["readiness"]["httpGet"]["path"], "/ready");
    assert_eq!(spec["autoscaling"], json!({"minReplicas": 3, "maxReplicas": 8, "targetCpuUtilization": 60}));
    assert!(spec.get("replicas").is_none(), "the autoscaler owns the replicas");
    assert_eq!(spec["rollout"], json!({"maxSurge": 1, "maxUnavailable": 0}));
    assert_eq!(spec["service"], json!({"port": 8080}));
    assert_eq!(spec["ingress"]["hosts"], json!(["shop.example.com"]));
    assert_eq!(spec["ingress"]["className"], "nginx");
    assert_eq!(spec["ingress"]["tls"]["issuerRef"], json!({"name": "letsencrypt-prod", "kind": "ClusterIssuer"}));
    assert_eq!(spec["disruptionBudget"], json!({"enabled": true, "minAvailable": 2}));
    let report = std::fs::read_to_string(out.join("migration-report.md")).unwrap();
    for (key, reason) in [
        ("spec.template.spec.initContainers", "not mapped"),
        ("volumes.cache", "not mapped"),
        ("service/shop-svc", "changed"),
        ("spec.selector", "changed"),
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(&format!("| {reason} | deployment/shop | `{key}`"))),
            "{key}:\n{report}"
        );
    }

    // The import renders and validates.
    let render = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["render", "-f", out.join("berth.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(render.status.success(), "{}", String::from_utf8_lossy(&render.stderr));
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &render.stdout).unwrap();
    let v = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.35.0"])
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}{}", String::from_utf8_lossy(&v.stdout), String::from_utf8_lossy(&v.stderr));
    let kinds: Vec<String> = serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&render.stdout))
        .unwrap()
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect();
    for kind in ["Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Certificate"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
}

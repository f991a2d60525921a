//! `berth import cluster` against the real control plane (tests/support/cluster): a
//! hand-written Deployment with its Service, Ingress, HorizontalPodAutoscaler and
//! PodDisruptionBudget becomes the AppEnvironment that reproduces them; what does not fit is
//! reported; the output renders and validates. With `--adopt`, the real operator takes the
//! live Deployments over: one whose pod template is Berth's already with no rollout (the same
//! ReplicaSet and pods before and after), a hand-written one only after the rollout is
//! allowed, keeping its selector.

use crate::support;

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

/// Runs `berth import cluster` on `namespace`: (berth.yaml, migration-report.md).
fn import(cluster: &Cluster, namespace: &str, extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["import", "cluster", "--namespace", namespace, "-o", out.to_str().unwrap()])
        .args(extra)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    (
        std::fs::read_to_string(out.join("berth.yaml")).unwrap(),
        std::fs::read_to_string(out.join("migration-report.md")).unwrap(),
    )
}

/// The ReplicaSets and pods behind Deployment `name`: (name, uid, replicas) of each
/// ReplicaSet, and the uids of the running pods.
async fn replicas_of(cluster: &Cluster, ns: &str, name: &str) -> (Vec<(String, String, i32)>, Vec<String>) {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client(), ns);
    let mut out: Vec<(String, String, i32)> = sets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.kind == "Deployment" && o.name == name))
        .map(|rs| (rs.name_any(), rs.uid().unwrap(), rs.spec.and_then(|s| s.replicas).unwrap_or_default()))
        .collect();
    out.sort();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), ns);
    let mut uids: Vec<String> = pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| out.iter().any(|(rs, _, _)| p.owner_references().iter().any(|o| &o.name == rs)))
        .map(|p| p.uid().unwrap())
        .collect();
    uids.sort();
    (out, uids)
}

const CATALOG: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: AppEnvironment
metadata:
  name: catalog
  namespace: legacy
spec:
  tier: development
  image: ghcr.io/acme/catalog:2.1.0
  replicas: 2
  ports:
  - name: http
    containerPort: 8080
  env:
  - name: LOG_LEVEL
    value: info
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_takes_deployments_over_with_a_rollout_only_where_the_templates_differ() {
    use berth::api::AppEnvironment;
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::ResourceExt;
    use kube::api::{Patch, PatchParams};
    use std::time::Duration;
    use support::operator::Operator;
    use support::wait::{app_condition, eventually};

    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    cluster.namespace("legacy").await;
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--resync-seconds", "1"]);
    operator.wait_ready(Duration::from_secs(60));
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "legacy");
    let apps: Api<AppEnvironment> = Api::namespaced(cluster.client(), "legacy");

    // catalog: what a team applied from `berth render` before it ran the operator.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.yaml"), CATALOG).unwrap();
    let render = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["render", "-f", dir.path().join("catalog.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(render.status.success(), "{}", String::from_utf8_lossy(&render.stderr));
    cluster.kubectl_apply(&render.stdout);
    // shop: written by hand, with its own selector, and only what Pod Security `restricted`
    // demands of Berth's defaults.
    let labels = json!({"app": "shop"});
    let shop = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app", "image": "ghcr.io/acme/shop:4.2.0",
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                    "ports": [{"name": "http", "containerPort": 8080}]
                }]
            }
        }}
    });
    create(&cluster, "legacy", "apps", "v1", "Deployment", "deployments", shop).await;
    for (name, replicas) in [("catalog", 2), ("shop", 1)] {
        eventually(&format!("{name} running"), Duration::from_secs(60), || async {
            let d = deployments.get(name).await.ok()?;
            (d.status?.ready_replicas? == replicas).then_some(())
        })
        .await;
    }
    let before = [replicas_of(&cluster, "legacy", "catalog").await, replicas_of(&cluster, "legacy", "shop").await];
    let shop_before = deployments.get("shop").await.unwrap();

    // Without --adopt, the operator leaves both Deployments alone and says why.
    let (yaml, report) = import(&cluster, "legacy", &[]);
    assert!(report.contains("AdoptionConflict"), "{report}");
    cluster.kubectl_apply(yaml.as_bytes());
    for name in ["catalog", "shop"] {
        let app = app_condition(&apps, name, "Ready", "False", "AdoptionConflict").await;
        let message = app.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
        assert!(message.contains("spec.adopt"), "{message}");
    }

    // With --adopt, the report tells which takeover rolls the pods.
    let (yaml, report) = import(&cluster, "legacy", &["--adopt"]);
    assert!(
        report.lines().any(|l| l.contains("deployment/catalog") && l.contains("with no rollout")),
        "catalog's template is Berth's:\n{report}"
    );
    assert!(!report.lines().any(|l| l.contains("deployment/catalog") && l.contains("adopt template")), "{report}");
    for difference in [
        "adopt template.metadata.labels.app.kubernetes.io/managed-by",
        "adopt template.spec.containers[app].securityContext",
        "spec.adopt.allowRollout",
    ] {
        assert!(
            report.lines().any(|l| l.contains("deployment/shop") && l.contains(difference)),
            "{difference}:\n{report}"
        );
    }
    cluster.kubectl_apply(yaml.as_bytes());

    // catalog is taken over in place: the same ReplicaSet and pods, now owned through the app.
    let catalog = app_condition(&apps, "catalog", "Ready", "True", "Available").await;
    let owned = deployments.get("catalog").await.unwrap();
    assert!(
        owned.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == catalog.uid().as_ref()),
        "{:?}",
        owned.owner_references()
    );
    // Give a rollout, were one started, time to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas_of(&cluster, "legacy", "catalog").await, before[0], "catalog was not rolled");

    // shop would roll: left exactly as it was until the rollout is allowed.
    let app = app_condition(&apps, "shop", "Ready", "False", "AdoptionNeedsRollout").await;
    let message = app.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.contains("securityContext") && message.contains("allowRollout"), "{message}");
    let untouched = deployments.get("shop").await.unwrap();
    assert_eq!(untouched.metadata.resource_version, shop_before.metadata.resource_version);
    assert_eq!(replicas_of(&cluster, "legacy", "shop").await, before[1]);

    apps.patch("shop", &PatchParams::default(), &Patch::Merge(json!({"spec": {"adopt": {"allowRollout": true}}})))
        .await
        .unwrap();
    app_condition(&apps, "shop", "Ready", "True", "Available").await;
    let adopted = deployments.get("shop").await.unwrap();
    let spec = adopted.spec.unwrap();
    assert_eq!(serde_json::to_value(&spec.selector.match_labels).unwrap(), labels, "the selector is kept");
    let template_labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(template_labels.get("app").map(String::as_str), Some("shop"));
    assert_eq!(template_labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("berth"));
    let (sets, pods) = replicas_of(&cluster, "legacy", "shop").await;
    let (old_sets, old_pods) = &before[1];
    let [(old_name, old_uid, _)] = old_sets.as_slice() else { panic!("{old_sets:?}") };
    assert!(
        sets.iter().any(|(n, u, r)| n == old_name && u == old_uid && *r == 0),
        "the old ReplicaSet scaled down: {sets:?}"
    );
    assert!(sets.iter().any(|(n, _, r)| n != old_name && *r == 1), "a new ReplicaSet runs Berth's template: {sets:?}");
    assert!(pods.iter().all(|p| !old_pods.contains(p)), "the pods were replaced");
    cluster.assert_clean().await;
}

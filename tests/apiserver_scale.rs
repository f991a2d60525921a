//! Scale probe of the test API server (ignored by default; measures, asserts no timing):
//! a kube-runtime Controller converges N custom resources with 8 server-side-applied children
//! each (the shape of an AppEnvironment) and a status write.
//!
//! `WIDGETS=1000 cargo nextest run --test integration apiserver_scale:: --run-ignored all --no-capture`

use crate::support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::TestApiServer;

fn widget_api(c: &Client, ns: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.berth.dev", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    }
}

fn children(w: &DynamicObject) -> Vec<(ApiResource, Value)> {
    let name = w.name_any();
    let oref = json!([w
        .controller_owner_ref(&ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("example.berth.dev", "v1", "Widget"),
            "widgets"
        ))
        .unwrap()]);
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "berth"});
    let meta = json!({"name": name, "labels": labels, "ownerReferences": oref});
    let ar = |g: &str, v: &str, k: &str, p: &str| ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), p);
    vec![
        (
            ar("", "v1", "ServiceAccount", "serviceaccounts"),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        ),
        (
            ar("apps", "v1", "Deployment", "deployments"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                     "template": {"metadata": {"labels": {"app.kubernetes.io/name": name}}, "spec": {"serviceAccountName": name,
                        "containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 8080}],
                                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}}}}),
        ),
        (
            ar("", "v1", "Service", "services"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        ),
        (
            ar("networking.k8s.io", "v1", "Ingress", "ingresses"),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
            "spec": {"rules": [{"host": format!("{name}.example.com"), "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"name": "http"}}}}]}}], "tls": [{"hosts": [format!("{name}.example.com")], "secretName": format!("{name}-tls")}]}}),
        ),
        (
            ar("cert-manager.io", "v1", "Certificate", "certificates"),
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta,
            "spec": {"secretName": format!("{name}-tls"), "dnsNames": [format!("{name}.example.com")], "issuerRef": {"name": "le", "kind": "ClusterIssuer"}}}),
        ),
        (
            ar("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, "minReplicas": 2, "maxReplicas": 5}}),
        ),
        (
            ar("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}}}),
        ),
        (
            ar("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}, "policyTypes": ["Ingress"]}}),
        ),
    ]
}

async fn reconcile(w: Arc<DynamicObject>, client: Arc<Client>) -> Result<Action, kube::Error> {
    let ns = w.namespace().unwrap();
    let pp = PatchParams::apply("berth/scale").force();
    for (ar, obj) in children(&w) {
        let api: Api<DynamicObject> = Api::namespaced_with((*client).clone(), &ns, &ar);
        api.patch(&w.name_any(), &pp, &Patch::Apply(&obj)).await?;
    }
    let generation = w.metadata.generation;
    if w.data["status"]["observedGeneration"].as_i64() != generation {
        widget_api(&client, Some(&ns))
            .patch_status(
                &w.name_any(),
                &PatchParams::apply("berth/scale-status").force(),
                &Patch::Apply(
                    json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget", "metadata": {"name": w.name_any()},
                    "status": {"observedGeneration": generation, "conditions": [{"type": "Ready", "status": "True"}]}}),
                ),
            )
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(3600)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale probe; run explicitly"]
async fn converge_many_widgets() {
    let n: usize = std::env::var("WIDGETS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let s = TestApiServer::start().await;
    s.install_crds_from_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apiserver")).await;
    let client = s.client().await;
    let gvk = GroupVersionKind::gvk("example.berth.dev", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let controller = Controller::new_with(widget_api(&client, None), watcher::Config::default(), ar)
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Service>::all(client.clone()), watcher::Config::default())
        .owns(Api::<ServiceAccount>::all(client.clone()), watcher::Config::default())
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_millis(100)), Arc::new(client.clone()))
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    let start = Instant::now();
    let api = widget_api(&client, Some("default"));
    let creates = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let w: DynamicObject =
                    serde_json::from_value(json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget",
                    "metadata": {"name": format!("w{i:04}")}, "spec": {"tier": "staging"}}))
                    .unwrap();
                api.create(&PostParams::default(), &w).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    creates.await;
    let created = start.elapsed();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    loop {
        let ws = api.list(&ListParams::default()).await.unwrap();
        let done = ws
            .items
            .iter()
            .filter(|w| w.data["status"]["observedGeneration"].as_i64() == w.metadata.generation)
            .count();
        if done == n {
            let d = deps.list(&ListParams::default()).await.unwrap();
            let avail =
                d.items.iter().filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(2)).count();
            if avail == n {
                break;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(300), "not converged: {done}/{n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged = start.elapsed();
    let counts = s.counts();
    eprintln!(
        "{n} widgets x 8 children: created in {created:?}, converged in {converged:?}; {} requests ({} writes), rv {}",
        counts.total(),
        counts.write_requests(false),
        s.resource_version()
    );
    handle.abort();
}

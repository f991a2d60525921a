//! A kube-runtime `Controller` (watcher + reflector, `.owns()`, the finalizer helper,
//! server-side apply of children and status, an events.k8s.io Recorder, a Lease) runs
//! unmodified against the test API server.

use crate::support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::apiserver::TestApiServer;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.berth.dev", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
#[serde(rename_all = "camelCase")]
pub struct WidgetSpec {
    tier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
    #[serde(default)]
    conditions: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Error(String);

struct Ctx {
    client: Client,
    recorder: Recorder,
    cleanups: AtomicUsize,
    reconciles: AtomicUsize,
}

const FINALIZER: &str = "example.berth.dev/cleanup";

async fn reconcile(w: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = w.namespace().unwrap();
    let api: Api<Widget> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, w, |ev| async {
        match ev {
            Finalizer::Apply(w) => apply(w, &ctx).await,
            Finalizer::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error(e.to_string()))
}

async fn apply(w: Arc<Widget>, ctx: &Ctx) -> Result<Action, Error> {
    let ns = w.namespace().unwrap();
    let name = w.name_any();
    let err = |e: kube::Error| Error(e.to_string());
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let child = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": [w.controller_owner_ref(&()).unwrap()],
                     "labels": {"app.kubernetes.io/managed-by": "widget-ctl"}},
        "data": {"tier": w.spec.tier},
    });
    cms.patch(&name, &PatchParams::apply("widget-ctl").force(), &Patch::Apply(&child)).await.map_err(err)?;
    let generation = w.metadata.generation;
    let ready = w.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    if !ready {
        let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), &ns);
        let status = json!({
            "apiVersion": "example.berth.dev/v1", "kind": "Widget", "metadata": {"name": name},
            "status": {"observedGeneration": generation, "conditions": [{
                "type": "Ready", "status": "True", "reason": "Reconciled", "message": "children applied",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}]},
        });
        widgets
            .patch_status(&name, &PatchParams::apply("widget-ctl/status").force(), &Patch::Apply(&status))
            .await
            .map_err(err)?;
        ctx.recorder
            .publish(
                &Event {
                    type_: EventType::Normal,
                    reason: "Reconciled".into(),
                    note: Some(format!("generation {generation:?}")),
                    action: "Reconcile".into(),
                    secondary: None,
                },
                &w.object_ref(&()),
            )
            .await
            .map_err(err)?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_w: Arc<Widget>, _e: &Error, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(50))
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apiserver")
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn all_ready(api: &Api<Widget>, n: usize) -> bool {
    let l = api.list(&ListParams::default()).await.unwrap();
    l.items.len() == n
        && l.items.iter().all(|w| w.status.as_ref().is_some_and(|s| s.observed_generation == w.metadata.generation))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_converges_and_settles() {
    let s = TestApiServer::start().await;
    s.install_crds_from_dir(&fixtures()).await;
    let client = s.client().await;

    // Leader election the way an operator does it: get, create, replace.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    assert_eq!(leases.get_opt("widget-ctl").await.unwrap().map(|l| l.metadata.name), None);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "widget-ctl"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}}))
    .unwrap();
    let mut lease = leases.create(&PostParams::default(), &lease).await.unwrap();
    lease.spec.get_or_insert_default().lease_transitions = Some(1);
    let renewed = leases.replace("widget-ctl", &PostParams::default(), &lease).await.unwrap();
    assert_ne!(renewed.metadata.resource_version, lease.metadata.resource_version);

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "widget-ctl".into(), instance: Some("pod-a".into()) },
        ),
        cleanups: AtomicUsize::new(0),
        reconciles: AtomicUsize::new(0),
    });
    let widgets_all: Api<Widget> = Api::all(client.clone());
    let cms_all: Api<ConfigMap> = Api::all(client.clone());
    let controller = Controller::new(widgets_all, watcher::Config::default())
        .owns(cms_all, watcher::Config::default())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    const N: usize = 25;
    for i in 0..N {
        let w = Widget::new(&format!("w{i}"), WidgetSpec { tier: "staging".into(), replicas: None });
        widgets.create(&PostParams::default(), &w).await.unwrap();
    }
    eventually("all widgets ready", || all_ready(&widgets, N)).await;
    for i in 0..N {
        let cm = cms.get(&format!("w{i}")).await.unwrap();
        assert_eq!(cm.data.unwrap()["tier"], "staging");
        assert_eq!(cm.metadata.owner_references.unwrap()[0].name, format!("w{i}"));
    }
    let w0 = widgets.get("w0").await.unwrap();
    assert_eq!(w0.finalizers(), [FINALIZER.to_string()]);
    assert_eq!(w0.spec.replicas, Some(1), "schema default applied");

    // Settled: no further changes, and a dropped-watch resync writes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rv = s.resource_version();
    s.reset_counts();
    s.faults().drop_watches();
    eventually("watches re-established", || async { s.counts().verb("watch") >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.resource_version(), rv, "something changed after convergence");
    assert_eq!(s.counts().write_requests(true), 0, "writes on resync: {:?}", s.counts().writes(true));

    // A spec change flows to the child and observedGeneration, despite injected failures.
    s.faults().fail_next("patch", "configmaps", 2, 500);
    widgets
        .patch("w3", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tier": "production", "replicas": 2}})))
        .await
        .unwrap();
    eventually("child updated", || async { cms.get("w3").await.unwrap().data.unwrap()["tier"] == "production" }).await;
    eventually("status observed generation 2", || async {
        widgets.get("w3").await.unwrap().status.unwrap().observed_generation == Some(2)
    })
    .await;

    // Events were recorded through events.k8s.io/v1.
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(evs.iter().any(|e| e.reason.as_deref() == Some("Reconciled")
        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("w3")));

    // Deletion: the finalizer's cleanup runs, the widget goes, its child is collected.
    widgets.delete("w5", &DeleteParams::default()).await.unwrap();
    eventually("widget deleted", || async { widgets.get_opt("w5").await.unwrap().is_none() }).await;
    assert!(ctx.cleanups.load(Ordering::SeqCst) >= 1);
    assert!(cms.get_opt("w5").await.unwrap().is_none(), "child garbage-collected");

    // A child deleted behind the controller's back is recreated (.owns() watch).
    cms.delete("w7", &DeleteParams::default()).await.unwrap();
    eventually("child recreated", || async { cms.get_opt("w7").await.unwrap().is_some() }).await;
    handle.abort();
}

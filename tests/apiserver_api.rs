//! Tests of the test API server (tests/support/apiserver) through a kube-rs client:
//! CRUD and error statuses, generation, no-op writes, server-side apply, status subresource,
//! watches (resume, 410, selectors), finalizers, owner-reference GC, CRD validation, Tables,
//! fault injection and the built-in controller stand-ins.

use crate::support;

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use support::apiserver::{JobOutcome, Options, StandIn, TestApiServer};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apiserver")
}

async fn server_with(opts: Options) -> (TestApiServer, Client) {
    let s = TestApiServer::start_with(opts).await;
    s.install_crds_from_dir(&fixtures()).await;
    let c = s.client().await;
    (s, c)
}

async fn server() -> (TestApiServer, Client) {
    server_with(Options::default()).await
}

fn widgets(c: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("example.berth.dev", "v1", "Widget");
    Api::namespaced_with(c.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "widgets"))
}

fn widget(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.berth.dev/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}))
        .unwrap()
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv<K: kube::Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap()
}

fn generation<K: kube::Resource>(o: &K) -> i64 {
    o.meta().generation.unwrap()
}

/// Collect watch events (type, name) for `dur`.
async fn events_for(api: &Api<DynamicObject>, from_rv: &str, dur: Duration) -> Vec<(String, String)> {
    let mut stream = api.watch(&WatchParams::default(), from_rv).await.unwrap().boxed();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + dur;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let ev = ev.unwrap();
        let (t, name) = match ev {
            WatchEvent::Added(o) => ("ADDED", o.metadata.name.unwrap()),
            WatchEvent::Modified(o) => ("MODIFIED", o.metadata.name.unwrap()),
            WatchEvent::Deleted(o) => ("DELETED", o.metadata.name.unwrap()),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => ("ERROR", format!("{}", e.code)),
        };
        out.push((t.to_string(), name));
    }
    out
}

#[tokio::test]
async fn crud_conflicts_and_not_found() {
    let (s, c) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let created = api.create(&PostParams::default(), &cm("a", json!({"k": "v"}))).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));

    // AlreadyExists
    let e = api_err(api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

    // get / list
    let got = api.get("a").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["k"], "v");
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);

    // replace with the current resourceVersion, then with a stale one
    let mut upd = got.clone();
    upd.data = Some([("k".to_string(), "w".to_string())].into());
    let replaced = api.replace("a", &PostParams::default(), &upd).await.unwrap();
    assert_ne!(rv(&replaced), rv(&got));
    let e = api_err(api.replace("a", &PostParams::default(), &upd).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    // generateName
    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let g = api.create(&PostParams::default(), &g).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));

    // delete, then 404 as a Status
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let e = api_err(api.get("a").await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.details.as_ref().unwrap().name, "a");
    let e = api_err(api.delete("a", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(e.code, 404);

    // objects in an unknown namespace are accepted; the namespace appears
    let other: Api<ConfigMap> = Api::namespaced(c.clone(), "elsewhere");
    other.create(&PostParams::default(), &cm("x", json!({}))).await.unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    ns.get("elsewhere").await.unwrap();
    // all-namespaces list
    let all: Api<ConfigMap> = Api::all(c.clone());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 2);

    // JSON patch and merge patch
    let p = other
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "add", "path": "/data", "value": {"a": "1"}}])).unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.data.unwrap()["a"], "1");
    let p =
        other.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "b": "2"}}))).await.unwrap();
    assert_eq!(p.data.unwrap(), [("b".to_string(), "2".to_string())].into());
    assert!(s.counts().get("patch", "configmaps") >= 2);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let (_s, c) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for (n, tier, extra) in [("a", "web", true), ("b", "db", false), ("c", "web", false)] {
        let mut o = cm(n, json!({}));
        let mut labels = std::collections::BTreeMap::from([("tier".to_string(), tier.to_string())]);
        if extra {
            labels.insert("extra".into(), "yes".into());
        }
        o.metadata.labels = Some(labels);
        api.create(&PostParams::default(), &o).await.unwrap();
    }
    let names = |l: Vec<ConfigMap>| -> Vec<String> { l.into_iter().map(|o| o.metadata.name.unwrap()).collect() };
    let q = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(names(api.list(&q("tier=web")).await.unwrap().items), ["a", "c"]);
    assert_eq!(names(api.list(&q("tier!=web")).await.unwrap().items), ["b"]);
    assert_eq!(names(api.list(&q("tier in (db, web),extra")).await.unwrap().items), ["a"]);
    assert_eq!(names(api.list(&q("tier notin (web)")).await.unwrap().items), ["b"]);
    assert_eq!(names(api.list(&q("!extra,tier=web")).await.unwrap().items), ["c"]);
    let f = ListParams::default().fields("metadata.name=b");
    assert_eq!(names(api.list(&f).await.unwrap().items), ["b"]);
    let f = ListParams::default().fields("metadata.namespace=default,metadata.name!=b");
    assert_eq!(names(api.list(&f).await.unwrap().items), ["a", "c"]);
}

#[tokio::test]
async fn generation_tracks_spec_only() {
    let (_s, c) = server().await;
    let api = widgets(&c, "default");
    let w = api.create(&PostParams::default(), &widget("w", json!({"tier": "development"}))).await.unwrap();
    assert_eq!(generation(&w), 1);
    let w = api
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .unwrap();
    assert_eq!(generation(&w), 1);
    let w = api
        .patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Up"}})))
        .await
        .unwrap();
    assert_eq!(generation(&w), 1);
    let w = api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    assert_eq!(generation(&w), 2);

    // Built-in kinds too.
    let d: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})).unwrap();
    let dep = d.create(&PostParams::default(), &dep).await.unwrap();
    assert_eq!(generation(&dep), 1);
    let dep = d
        .patch("d", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}})))
        .await
        .unwrap();
    assert_eq!(generation(&dep), 1);
    let dep = d
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "j"}]}}}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&dep), 2);
    let containers = dep.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!((containers.len(), containers[0].image.as_deref()), (1, Some("j")));
}

#[tokio::test]
async fn noop_writes_do_not_bump_resource_version_or_emit_events() {
    let (s, c) = server_with(Options::without_standins()).await;
    let api = widgets(&c, "default");
    let ssa = PatchParams::apply("mgr").force();
    let cfg = json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget", "metadata": {"name": "w", "labels": {"x": "1"}},
        "spec": {"tier": "staging", "tags": ["a"]}});
    let first = api.patch("w", &ssa, &Patch::Apply(&cfg)).await.unwrap();
    let global = s.resource_version();

    let again = api.patch("w", &ssa, &Patch::Apply(&cfg)).await.unwrap();
    assert_eq!(rv(&again), rv(&first));
    let merged =
        api.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tier": "staging"}}))).await.unwrap();
    assert_eq!(rv(&merged), rv(&first));
    let replaced = api.replace("w", &PostParams::default(), &again).await.unwrap();
    assert_eq!(rv(&replaced), rv(&first));
    let st = api.patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": null}))).await.unwrap();
    assert_eq!(rv(&st), rv(&first));
    assert_eq!(s.resource_version(), global, "a no-op write bumped the global resourceVersion");

    // No watch event either: a watch from the first version sees nothing.
    let evs = events_for(&api, &rv(&first), Duration::from_millis(300)).await;
    assert!(evs.is_empty(), "no-op writes produced events: {evs:?}");
    // ... while a real change does.
    api.patch("w", &ssa, &Patch::Apply(json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"tier": "production", "replicas": 2}}))).await.unwrap();
    let evs = events_for(&api, &rv(&first), Duration::from_millis(300)).await;
    assert_eq!(evs, [("MODIFIED".to_string(), "w".to_string())]);
    let counts = s.counts();
    assert_eq!(counts.write_requests(false), counts.verb("patch") + counts.verb("update"));
}

#[tokio::test]
async fn server_side_apply_removes_fields_no_longer_applied() {
    let (_s, c) = server().await;
    let api = widgets(&c, "default");
    let a = PatchParams::apply("berth/a").force();
    let cfg1 = json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget",
        "metadata": {"name": "w", "labels": {"keep": "1", "drop": "1"}},
        "spec": {"tier": "staging", "tags": ["x", "y"], "handle": "h",
                 "containers": [{"name": "app", "image": "i1", "args": ["-v"]}, {"name": "side", "image": "s"}]}});
    api.patch("w", &a, &Patch::Apply(&cfg1)).await.unwrap();
    // Another manager owns a label and a field.
    let b = PatchParams::apply("other").force();
    api.patch(
        "w",
        &b,
        &Patch::Apply(json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget",
        "metadata": {"name": "w", "labels": {"theirs": "1"}}, "spec": {"tier": "staging", "port": 8080}})),
    )
    .await
    .unwrap();

    let cfg2 = json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget",
        "metadata": {"name": "w", "labels": {"keep": "1"}},
        "spec": {"tier": "staging", "tags": ["x"], "containers": [{"name": "app", "image": "i2"}]}});
    let w = api.patch("w", &a, &Patch::Apply(&cfg2)).await.unwrap();
    let labels = w.metadata.labels.unwrap();
    assert!(labels.contains_key("keep") && labels.contains_key("theirs") && !labels.contains_key("drop"));
    let spec = &w.data["spec"];
    assert_eq!(spec["tags"], json!(["x"]));
    assert!(spec.get("handle").is_none(), "handle should be removed: {spec}");
    assert_eq!(spec["port"], 8080, "field of another manager kept");
    assert_eq!(spec["containers"], json!([{"name": "app", "image": "i2"}]));
    assert_eq!(spec["replicas"], 1, "schema default applied");
    // fieldManager is required for apply
    let e = api_err(api.patch("w", &PatchParams::default(), &Patch::Apply(&cfg2)).await.unwrap_err());
    assert_eq!(e.code, 422);
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let (_s, c) = server().await;
    let api = widgets(&c, "default");
    let mut w = widget("w", json!({"tier": "development"}));
    w.data["status"] = json!({"phase": "ignored-on-create"});
    let w = api.create(&PostParams::default(), &w).await.unwrap();
    assert!(w.data.get("status").is_none());
    // status writes ignore spec
    let w = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tier": "production"}, "status": {"phase": "Up"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (w.data["spec"]["tier"].as_str(), w.data["status"]["phase"].as_str()),
        (Some("development"), Some("Up"))
    );
    // main writes ignore status
    let w = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tier": "staging"}, "status": {"phase": "Down"}})),
        )
        .await
        .unwrap();
    assert_eq!((w.data["spec"]["tier"].as_str(), w.data["status"]["phase"].as_str()), (Some("staging"), Some("Up")));
    // status via server-side apply with its own manager
    let st = PatchParams::apply("berth/status").force();
    let w = api
        .patch_status(
            "w",
            &st,
            &Patch::Apply(json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
        "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["observedGeneration"], 2);
    assert_eq!(w.data["status"]["phase"], "Up");
    // replace_status
    let mut w2 = w.clone();
    w2.data["status"] = json!({"phase": "Replaced"});
    let w3 = api.replace_status("w", &PostParams::default(), &w2).await.unwrap();
    assert_eq!(w3.data["status"], json!({"phase": "Replaced"}));
}

#[tokio::test]
async fn watch_resume_selectors_and_gone() {
    let opts = Options { history_limit: 20, ..Options::without_standins() };
    let (_s, c) = server_with(opts).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let first = api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
    let start = rv(&first);
    api.create(&PostParams::default(), &cm("b", json!({}))).await.unwrap();
    api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})))
        .await
        .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();

    let collect = |wp: WatchParams, from: String| {
        let api = api.clone();
        async move {
            let mut out = vec![];
            let mut st = api.watch(&wp, &from).await.unwrap().boxed();
            while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), st.next()).await {
                match ev.unwrap() {
                    WatchEvent::Added(o) => out.push(format!("ADDED {}", o.metadata.name.unwrap())),
                    WatchEvent::Modified(o) => out.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
                    WatchEvent::Deleted(o) => out.push(format!("DELETED {}", o.metadata.name.unwrap())),
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(e) => out.push(format!("ERROR {}", e.code)),
                }
            }
            out
        }
    };
    // Resume from the first object's version.
    assert_eq!(collect(WatchParams::default(), start.clone()).await, ["ADDED b", "MODIFIED a", "DELETED b"]);
    // A label selector turns "now matches" into ADDED.
    assert_eq!(collect(WatchParams::default().labels("sel=yes"), start.clone()).await, ["ADDED a"]);
    // "0": the current state as ADDED events.
    assert_eq!(collect(WatchParams::default(), "0".into()).await, ["ADDED a"]);
    // Streaming list (sendInitialEvents) ends the initial state with a bookmark.
    let mut st = api.watch(&WatchParams::streaming_lists(), "").await.unwrap().boxed();
    let mut seen = vec![];
    while let Some(ev) = st.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(o) => seen.push(o.metadata.name.unwrap()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["a"]);

    // Overflow the retained history: resuming from the old version is 410 Gone.
    for i in 0..30 {
        api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"i": i.to_string()}}))).await.unwrap();
    }
    assert_eq!(collect(WatchParams::default(), start).await, ["ERROR 410"]);
}

#[tokio::test]
async fn finalizers_delay_deletion() {
    let (_s, c) = server().await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mut o = cm("f", json!({}));
    o.metadata.finalizers = Some(vec!["example.berth.dev/cleanup".into()]);
    let created = api.create(&PostParams::default(), &o).await.unwrap();
    let res = api.delete("f", &DeleteParams::default()).await.unwrap();
    let pending = res.left().expect("object returned while finalizers are pending");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let evs = events_for(&widgets_like_cm(&c), &rv(&created), Duration::from_millis(200)).await;
    assert_eq!(evs, [("MODIFIED".to_string(), "f".to_string())]);
    // Deleting again changes nothing.
    let again = api.delete("f", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert_eq!(rv(&again), rv(&pending));
    // Removing the last finalizer (the finalizer helper's JSON patch) deletes it.
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "example.berth.dev/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"}]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(api_err(api.get("f").await.unwrap_err()).code, 404);
    // A failing JSON patch test is rejected.
    api.create(&PostParams::default(), &cm("g", json!({}))).await.unwrap();
    let e = api_err(
        api.patch(
            "g",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": ["x"]}]))
                .unwrap(),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    // ... but "test null" on an absent path passes (kube-runtime's finalizer helper relies on it).
    api.patch(
        "g",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["y"]}]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
}

fn widgets_like_cm(c: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("", "v1", "ConfigMap");
    Api::namespaced_with(c.clone(), "default", &ApiResource::from_gvk_with_plural(&gvk, "configmaps"))
}

#[tokio::test]
async fn owner_reference_garbage_collection_cascades() {
    let (_s, c) = server().await;
    let wapi = widgets(&c, "default");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "default");
    let owner = wapi.create(&PostParams::default(), &widget("owner", json!({"tier": "development"}))).await.unwrap();
    let other = wapi.create(&PostParams::default(), &widget("other", json!({"tier": "development"}))).await.unwrap();
    let oref = |o: &DynamicObject, kind: &str, api_version: &str| json!({"apiVersion": api_version, "kind": kind, "name": o.metadata.name, "uid": o.metadata.uid, "controller": true});
    let mut child = cm("child", json!({}));
    child.metadata.owner_references =
        Some(vec![serde_json::from_value(oref(&owner, "Widget", "example.berth.dev/v1")).unwrap()]);
    let child = cms.create(&PostParams::default(), &child).await.unwrap();
    // grandchild owned by the child
    let gc: Secret = serde_json::from_value(json!({"metadata": {"name": "grandchild", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "child", "uid": child.metadata.uid}]}}))
    .unwrap();
    secrets.create(&PostParams::default(), &gc).await.unwrap();
    // shared: owned by both widgets
    let mut shared = cm("shared", json!({}));
    shared.metadata.owner_references = Some(vec![
        serde_json::from_value(oref(&owner, "Widget", "example.berth.dev/v1")).unwrap(),
        serde_json::from_value(oref(&other, "Widget", "example.berth.dev/v1")).unwrap(),
    ]);
    cms.create(&PostParams::default(), &shared).await.unwrap();

    wapi.delete("owner", &DeleteParams::background()).await.unwrap();
    assert_eq!(api_err(cms.get("child").await.unwrap_err()).code, 404);
    assert_eq!(api_err(secrets.get("grandchild").await.unwrap_err()).code, 404);
    cms.get("shared").await.expect("still owned by another widget");
    wapi.delete("other", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(cms.get("shared").await.unwrap_err()).code, 404);

    // Orphan propagation keeps dependents and drops the reference.
    let o3 = wapi.create(&PostParams::default(), &widget("o3", json!({"tier": "development"}))).await.unwrap();
    let mut kept = cm("kept", json!({}));
    kept.metadata.owner_references =
        Some(vec![serde_json::from_value(oref(&o3, "Widget", "example.berth.dev/v1")).unwrap()]);
    cms.create(&PostParams::default(), &kept).await.unwrap();
    wapi.delete("o3", &DeleteParams::orphan()).await.unwrap();
    assert!(cms.get("kept").await.unwrap().metadata.owner_references.is_none());
}

#[tokio::test]
async fn crd_schema_validation() {
    let (_s, c) = server().await;
    let api = widgets(&c, "default");
    let pp = PostParams::default();
    let bad = widget(
        "bad",
        json!({"tier": "huge", "replicas": 11, "handle": "Not_Valid", "tags": ["a", "b", "c", "d"], "port": true, "labels": {"a": 1}}),
    );
    let e = api_err(api.create(&pp, &bad).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let causes = &e.details.as_ref().unwrap().causes;
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    for f in ["spec.tier", "spec.replicas", "spec.handle", "spec.tags", "spec.port", "spec.labels[a]"] {
        assert!(fields.contains(&f), "no cause for {f}: {causes:?}");
    }
    assert!(e.message.starts_with("Widget.example.berth.dev \"bad\" is invalid: "), "{}", e.message);
    assert!(e.message.contains("spec.tier: Unsupported value: \"huge\""), "{}", e.message);

    // required
    let e = api_err(api.create(&pp, &widget("req", json!({"replicas": 1}))).await.unwrap_err());
    assert_eq!(e.details.unwrap().causes[0].field, "spec.tier");
    // wrong type
    let e = api_err(api.create(&pp, &widget("ty", json!({"tier": "staging", "replicas": "three"}))).await.unwrap_err());
    assert!(e.message.contains("spec.replicas in body must be of type integer"), "{}", e.message);
    // CEL rule
    let e = api_err(api.create(&pp, &widget("cel", json!({"tier": "production", "replicas": 1}))).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(e.message.contains("production widgets need at least 2 replicas"), "{}", e.message);

    // Unknown fields are pruned (default field validation warns), defaults applied,
    // preserve-unknown-fields keeps everything, int-or-string accepts both.
    let ok = api
        .create(
            &pp,
            &widget("ok", json!({"tier": "staging", "bogus": 1, "port": "http", "extra": {"any": {"thing": 1}}})),
        )
        .await
        .unwrap();
    assert!(ok.data["spec"].get("bogus").is_none());
    assert_eq!(ok.data["spec"]["replicas"], 1);
    assert_eq!(ok.data["spec"]["extra"]["any"]["thing"], 1);
    // Strict field validation rejects unknown fields.
    let strict = PostParams { field_manager: None, dry_run: false };
    let _ = strict;
    let e = api_err(api.patch("ok", &PatchParams::apply("m").validation_strict(), &Patch::Apply(json!({"apiVersion": "example.berth.dev/v1", "kind": "Widget", "metadata": {"name": "ok"}, "spec": {"tier": "staging", "nope": 1}}))).await.unwrap_err());
    assert_eq!(e.code, 400);
    assert!(e.message.contains("unknown field \"spec.nope\""), "{}", e.message);
    // Updates are validated too.
    let e = api_err(
        api.patch("ok", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": -1}}))).await.unwrap_err(),
    );
    assert_eq!(e.details.unwrap().causes[0].field, "spec.replicas");
}

#[tokio::test]
async fn tables_with_printer_columns() {
    let (s, c) = server().await;
    let api = widgets(&c, "default");
    api.create(&PostParams::default(), &widget("t1", json!({"tier": "production", "replicas": 3}))).await.unwrap();
    api.patch_status(
        "t1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [
        {"type": "Progressing", "status": "False"}, {"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();
    let req = http::Request::get(format!("{}/apis/example.berth.dev/v1/namespaces/default/widgets", s.url()))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .body(Vec::new())
        .unwrap();
    let table: Value = c.request(req).await.unwrap();
    assert_eq!(table["kind"], "Table");
    let cols: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cols, ["Name", "Tier", "Replicas", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[0], "t1");
    assert_eq!(cells[1], "production");
    assert_eq!(cells[2], 3);
    assert_eq!(cells[3], "True");
    assert!(cells[4].as_str().unwrap().ends_with('s'), "age: {}", cells[4]);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}

#[tokio::test]
async fn fault_injection() {
    let (s, c) = server_with(Options::without_standins()).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    s.faults().fail_next("create", "configmaps", 1, 500);
    let e = api_err(api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err());
    assert_eq!(e.code, 500);
    api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();

    s.faults().throttle_next("get", "configmaps", 1, 3);
    let req =
        http::Request::get(format!("{}/api/v1/namespaces/default/configmaps/a", s.url())).body(Vec::new()).unwrap();
    let resp = reqwest_like(&s, req).await;
    assert_eq!(resp.0, 429);
    assert_eq!(resp.1.as_deref(), Some("3"));
    api.get("a").await.unwrap();

    s.faults().fail_next("patch", "*", 2, 409);
    for _ in 0..2 {
        let e = api_err(api.patch("a", &PatchParams::default(), &Patch::Merge(json!({}))).await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    }
    assert_eq!(s.faults().pending(), 0);

    s.faults().set_latency("get", "configmaps", Some(Duration::from_millis(300)));
    let t = std::time::Instant::now();
    api.get("a").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    s.faults().clear();

    // Dropped watches end the stream.
    let mut st = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert!(matches!(st.next().await, Some(Ok(WatchEvent::Added(_)))));
    s.faults().drop_watches();
    let end = tokio::time::timeout(Duration::from_secs(2), st.next()).await.expect("stream should end");
    assert!(end.is_none());

    let counts = s.counts();
    assert_eq!(counts.get("create", "configmaps"), 2);
    assert_eq!(counts.get("watch", "configmaps"), 1);
    s.reset_counts();
    assert_eq!(s.counts().total(), 0);
}

/// A raw GET through the server's own hyper-free path: the kube client hides status codes
/// and headers, so use a plain TCP request.
async fn reqwest_like(s: &TestApiServer, req: http::Request<Vec<u8>>) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n", req.uri());
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = String::new();
    conn.read_to_string(&mut buf).await.unwrap();
    let code = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry = buf
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("retry-after:"))
        .map(|l| l.split(':').nth(1).unwrap().trim().to_string());
    (code, retry)
}

#[tokio::test]
async fn builtin_controller_standins() {
    let (s, c) = server().await;
    let deps: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let dep: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})).unwrap();
    deps.create(&PostParams::default(), &dep).await.unwrap();
    let d =
        wait_for(|| deps.get("web"), |d: &Deployment| d.status.as_ref().and_then(|s| s.available_replicas) == Some(3))
            .await;
    let st = d.status.unwrap();
    assert_eq!(st.observed_generation, Some(1));
    let conds = st.conditions.unwrap();
    assert!(conds.iter().any(|c| c.type_ == "Available" && c.status == "True"));
    assert!(conds.iter().any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")));
    // settled: the stand-in does not keep writing
    let before = s.resource_version();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.resource_version(), before);

    let stss: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let sts: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "postgres"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})).unwrap();
    stss.create(&PostParams::default(), &sts).await.unwrap();
    let s1 = wait_for(|| stss.get("db"), |s: &StatefulSet| s.status.as_ref().and_then(|s| s.ready_replicas) == Some(2))
        .await;
    let st = s1.status.unwrap();
    assert_eq!(st.current_revision, st.update_revision);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    for i in 0..2 {
        let p = pvcs.get(&format!("data-db-{i}")).await.unwrap();
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Bound"));
    }

    let certs = {
        let gvk = GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
        Api::<DynamicObject>::namespaced_with(
            c.clone(),
            "default",
            &ApiResource::from_gvk_with_plural(&gvk, "certificates"),
        )
    };
    let cert: DynamicObject = serde_json::from_value(json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "tls"}, "spec": {"secretName": "tls-secret", "dnsNames": ["a.example"]}}))
    .unwrap();
    certs.create(&PostParams::default(), &cert).await.unwrap();
    let cert =
        wait_for(|| certs.get("tls"), |c: &DynamicObject| c.data["status"]["conditions"][0]["status"] == "True").await;
    assert_eq!(cert.data["status"]["conditions"][0]["reason"], "Ready");
    assert_eq!(cert.data["status"]["conditions"][0]["observedGeneration"], 1);
    Api::<Secret>::namespaced(c.clone(), "default").get("tls-secret").await.unwrap();

    // Jobs: default outcome, then a registered runner.
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let job = |name: &str| -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "berth", "args": ["agent", "dump"]}]}}}}),
        )
        .unwrap()
    };
    jobs.create(&PostParams::default(), &job("j1")).await.unwrap();
    let j = wait_for(|| jobs.get("j1"), |j: &Job| j.status.as_ref().and_then(|s| s.succeeded) == Some(1)).await;
    assert!(j.status.unwrap().conditions.unwrap().iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    s.set_job_runner(|job: Value| async move {
        let args = job["spec"]["template"]["spec"]["containers"][0]["args"].clone();
        JobOutcome::Failed(format!("ran {args}"))
    });
    jobs.create(&PostParams::default(), &job("j2")).await.unwrap();
    let j = wait_for(|| jobs.get("j2"), |j: &Job| j.status.as_ref().and_then(|s| s.failed) == Some(1)).await;
    let failed = j.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.message.as_deref(), Some("ran [\"agent\",\"dump\"]"));

    // Switched off: nothing happens.
    s.set_standin(StandIn::Deployments, false);
    let mut dep2 = dep.clone();
    dep2.metadata.name = Some("off".into());
    deps.create(&PostParams::default(), &dep2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(deps.get("off").await.unwrap().status.is_none());
    s.set_standin(StandIn::Deployments, true);
    wait_for(|| deps.get("off"), |d: &Deployment| d.status.is_some()).await;
}

async fn wait_for<T, F, Fut>(mut get: F, cond: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
    T: std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = get().await.unwrap();
        if cond(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "condition not reached: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn discovery_lists_crds_with_short_names_and_categories() {
    let (_s, c) = server().await;
    let d = kube::discovery::Discovery::new(c.clone()).run().await.unwrap();
    let (ar, caps) = d
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "Widget")
        .expect("Widget discovered");
    assert_eq!(ar.plural, "widgets");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "widgets/status" || s.plural == "status"));
    let list: Value =
        c.request(http::Request::get("/apis/example.berth.dev/v1").body(Vec::new()).unwrap()).await.unwrap();
    let w = list["resources"].as_array().unwrap().iter().find(|r| r["name"] == "widgets").unwrap();
    assert_eq!(w["shortNames"], json!(["wd"]));
    assert_eq!(w["categories"], json!(["berthtest"]));
    // Deleting the CRD removes the type.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(c.clone());
    crds.delete("widgets.example.berth.dev", &DeleteParams::default()).await.unwrap();
    let e = api_err(widgets(&c, "default").list(&ListParams::default()).await.unwrap_err());
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn kubeconfig_file_works_for_kube_clients() {
    let s = TestApiServer::start().await;
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    assert_eq!(config.default_namespace, "default");
    let c = Client::try_from(config).unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
    let names: Vec<String> =
        ns.list(&ListParams::default()).await.unwrap().items.into_iter().map(|n| n.metadata.name.unwrap()).collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
}

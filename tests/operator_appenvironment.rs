//! The real `berth operator` process on a real control plane (kube-apiserver, etcd,
//! kube-controller-manager; tests/support/cluster), as the chart's ServiceAccount with the
//! chart's RBAC, in namespaces that enforce Pod Security `restricted`: an AppEnvironment
//! converges to Ready with all its children, stays converged without writes (counted from the
//! API server's audit log), follows spec changes, reports invalid specs without a retry loop,
//! respects `paused`, corrects drift, and is removed with its children by the real garbage
//! collector.

use crate::support;

use std::time::{Duration, Instant};

use berth::api::AppEnvironment;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::{Cluster, OPERATOR_USER};
use support::objects::repo;
use support::operator::Operator;

/// A control plane with Berth's CRDs and cert-manager's Certificate CRD, and `namespaces`.
async fn cluster(namespaces: &[&str]) -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    cluster.install_crds_from_file(&repo().join("tests/fixtures/cluster/cert-manager-certificate-crd.yaml")).await;
    for ns in namespaces {
        cluster.namespace(ns).await;
    }
    cluster
}

/// The operator as the chart's ServiceAccount (`helm_args` for the chart's values).
async fn operator(cluster: &Cluster, helm_args: &[&str], args: &[&str]) -> Operator {
    let kubeconfig = cluster.operator_kubeconfig(helm_args).await;
    let mut operator = Operator::start(&kubeconfig, args);
    operator.wait_ready(Duration::from_secs(60));
    operator
}

fn example(name: &str) -> AppEnvironment {
    let text = std::fs::read_to_string(repo().join("deploy/examples").join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition(app: &AppEnvironment, type_: &str) -> Option<(String, String)> {
    let c = app.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone()))
}

async fn wait_condition(
    api: &Api<AppEnvironment>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> AppEnvironment {
    eventually(&format!("{name} {type_}={status} {reason:?}"), Duration::from_secs(60), || async {
        let app = api.get(name).await.ok()?;
        let generation = app.metadata.generation;
        let (s, r) = condition(&app, type_)?;
        let fresh = app.status.as_ref()?.observed_generation == generation;
        (fresh && s == status && reason.is_none_or(|x| x == r)).then_some(app)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_app_converges_stays_quiet_and_follows_changes() {
    let cluster = cluster(&["shop"]).await;
    let client = cluster.client();
    let mut operator = operator(&cluster, &[], &["--resync-seconds", "1"]).await;

    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "shop");
    apps.create(&PostParams::default(), &example("appenvironment-production.yaml")).await.unwrap();
    let ready = wait_condition(&apps, "shop", "Ready", "True", Some("Available")).await;
    let status = ready.status.unwrap();
    assert_eq!(status.url.as_deref(), Some("https://shop.example.com/"));
    assert_eq!(status.image.as_deref(), Some("ghcr.io/example/shop:1.4.2"));
    assert!(status.conditions.iter().all(|c| c.observed_generation == ready.metadata.generation));

    // Every child exists, owned by the AppEnvironment.
    let uid = ready.metadata.uid.clone().unwrap();
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    assert_eq!(sa.metadata.owner_references.unwrap()[0].uid, uid);
    Api::<Service>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    // The autoscaler owns replicas: the operator's apply leaves them out (the server defaults
    // them to 1 and the real HPA controller raises them to minReplicas).
    let owned = deployment.metadata.managed_fields.clone().unwrap_or_default();
    let ours = owned.iter().find(|m| m.manager.as_deref() == Some("berth/appenvironment")).expect("berth's fields");
    let fields = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(fields.contains("f:template") && !fields.contains("f:replicas"), "{fields}");
    Api::<Ingress>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    Api::<PodDisruptionBudget>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    Api::<NetworkPolicy>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    let cert = cluster.object("cert-manager.io/v1", "Certificate", "shop", "shop").await.expect("Certificate created");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    // The real HPA controller raises the replicas to minReplicas, the ReplicaSet controller
    // makes the pods, and they pass Pod Security `restricted`.
    eventually("3 ready replicas", Duration::from_secs(60), || async {
        let d = Api::<Deployment>::namespaced(client.clone(), "shop").get("shop").await.ok()?;
        (d.status?.ready_replicas == Some(3)).then_some(())
    })
    .await;

    // Steady state: several resyncs (every second) run and write nothing.
    // The real server canonicalises quantities, drops empty lists and adds defaults: what the
    // operator compares must survive that. Writes are counted by the server's audit log.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let converging = cluster.audit.writes_since(Default::default(), OPERATOR_USER);
    assert!(converging.len() >= 8, "the audit log attributes the operator's writes to it: {converging:?}");
    let before = operator.counter("berth_reconciles_total");
    let mark = cluster.audit.mark();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reconciles = operator.counter("berth_reconciles_total") - before;
    assert!(reconciles >= 3.0, "resyncs ran ({reconciles})");
    let writes: Vec<String> = cluster.audit.writes_since(mark, OPERATOR_USER).iter().map(|e| e.describe()).collect();
    assert!(writes.is_empty(), "writes on a steady-state resync: {writes:#?}");

    // Removing the ingress section deletes the Ingress and the Certificate.
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ingress": null}}))).await.unwrap();
    wait_condition(&apps, "shop", "Ready", "True", None).await;
    eventually("Ingress and Certificate deleted", Duration::from_secs(10), || async {
        let ingress_gone = Api::<Ingress>::namespaced(client.clone(), "shop").get_opt("shop").await.ok()?.is_none();
        let cert_gone = cluster.object("cert-manager.io/v1", "Certificate", "shop", "shop").await.is_none();
        (ingress_gone && cert_gone).then_some(())
    })
    .await;
    let app = apps.get("shop").await.unwrap();
    assert_eq!(app.status.unwrap().url, None);

    // A new image rolls out.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": "ghcr.io/example/shop:1.5.0"}})),
    )
    .await
    .unwrap();
    wait_condition(&apps, "shop", "Ready", "True", None).await;
    let d = Api::<Deployment>::namespaced(client.clone(), "shop").get("shop").await.unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(),
        Some("ghcr.io/example/shop:1.5.0")
    );

    // Drift: someone edits the Deployment by hand; the operator puts it back.
    Api::<Deployment>::namespaced(client.clone(), "shop")
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil:latest"}]}}}}),
            ),
        )
        .await
        .unwrap();
    eventually("drift corrected", Duration::from_secs(10), || async {
        let d = Api::<Deployment>::namespaced(client.clone(), "shop").get("shop").await.ok()?;
        (d.spec?.template.spec?.containers[0].image.as_deref() == Some("ghcr.io/example/shop:1.5.0")).then_some(())
    })
    .await;

    // Deleting the AppEnvironment removes every child through the real garbage collector.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    eventually("children garbage-collected", Duration::from_secs(60), || async {
        let deployment = Api::<Deployment>::namespaced(client.clone(), "shop").get_opt("shop").await.ok()?;
        let service = Api::<Service>::namespaced(client.clone(), "shop").get_opt("shop").await.ok()?;
        let account = Api::<ServiceAccount>::namespaced(client.clone(), "shop").get_opt("shop").await.ok()?;
        let budget = Api::<PodDisruptionBudget>::namespaced(client.clone(), "shop").get_opt("shop").await.ok()?;
        (deployment.is_none() && service.is_none() && account.is_none() && budget.is_none()).then_some(())
    })
    .await;
    cluster.assert_clean().await;

    // SIGTERM stops the operator cleanly.
    assert!(operator.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spec_is_reported_without_a_retry_loop() {
    let cluster = cluster(&["team"]).await;
    let client = cluster.client();
    let operator = operator(&cluster, &[], &["--resync-seconds", "1", "--leader-election=false"]).await;
    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "team");

    // Passes the CRD schema but not the controller: production's default minReplicas (3)
    // exceeds maxReplicas.
    let mut app = example("appenvironment-development.yaml");
    app.metadata.namespace = Some("team".into());
    app.spec.tier = berth::api::appenvironment::Tier::Production;
    app.spec.autoscaling = Some(berth::api::appenvironment::Autoscaling { max_replicas: 2, ..Default::default() });
    apps.create(&PostParams::default(), &app).await.unwrap();
    let invalid = wait_condition(&apps, "shop-dev", "Ready", "False", Some("InvalidSpec")).await;
    let (_, message) = invalid
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.message.clone()))
        .unwrap();
    assert!(message.contains("spec.autoscaling.maxReplicas"), "{message}");
    // Flux's kstatus reads Stalled (Failed) and Reconciling (InProgress).
    let kstatus = |app: &AppEnvironment| -> Vec<(String, String)> {
        let conditions = app.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        conditions
            .into_iter()
            .filter(|c| c.type_ == "Stalled" || c.type_ == "Reconciling")
            .map(|c| (c.type_, c.status))
            .collect()
    };
    assert_eq!(kstatus(&invalid), [("Stalled".to_string(), "True".to_string())]);
    assert!(Api::<Deployment>::namespaced(client.clone(), "team").get_opt("shop-dev").await.unwrap().is_none());

    // No hot loop: over 3 s (3 resync periods) the invalid object is not retried. The wait
    // first lets the reconcile triggered by its own status write finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = operator.counter("berth_reconciles_total");
    let mark = cluster.audit.mark();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retries = operator.counter("berth_reconciles_total") - before;
    assert!(retries <= 1.0, "an invalid spec was reconciled {retries} times in 3 s");
    assert!(cluster.audit.writes_since(mark, OPERATOR_USER).is_empty());

    // Fixing the spec converges.
    apps.patch(
        "shop-dev",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": {"minReplicas": 2}}})),
    )
    .await
    .unwrap();
    let fixed = wait_condition(&apps, "shop-dev", "Ready", "True", None).await;
    assert_eq!(kstatus(&fixed), []);

    // Paused: spec changes are not applied.
    apps.patch("shop-dev", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true, "image": "x:2"}})))
        .await
        .unwrap();
    wait_condition(&apps, "shop-dev", "Progressing", "False", Some("Paused")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = Api::<Deployment>::namespaced(client.clone(), "team").get("shop-dev").await.unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(),
        Some("ghcr.io/example/shop:1.4.2")
    );
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_and_leader_lease() {
    let cluster = cluster(&[]).await;
    let client = cluster.client();
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut first = Operator::start(&kubeconfig, &[]);
    first.wait_ready(Duration::from_secs(60));
    assert_eq!(first.http_get("/healthz").unwrap().0, 200);
    assert_eq!(first.counter("berth_leader"), 1.0);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "berth-system");
    let lease = leases.get("berth-operator").await.unwrap();
    assert!(lease.spec.unwrap().holder_identity.is_some());

    // A second replica is ready as a standby and does not lead.
    let mut second = Operator::start(&kubeconfig, &[]);
    second.wait_ready(Duration::from_secs(60));
    assert_eq!(second.counter("berth_leader"), 0.0);

    // When the leader stops, it releases the lease and the standby takes over.
    assert!(first.terminate().success());
    eventually("standby takes over", Duration::from_secs(20), || async {
        (second.counter("berth_leader") == 1.0).then_some(())
    })
    .await;
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_only_the_namespaces_it_is_given() {
    // The chart's namespaced install: Roles in the watched namespaces only, nothing cluster-wide
    // to read them elsewhere.
    let cluster = cluster(&["team-a", "team-b", "elsewhere"]).await;
    let client = cluster.client();
    let _operator = operator(
        &cluster,
        &["--set", "operator.watchNamespaces={team-a,team-b}"],
        &["--namespaces", "team-a,team-b", "--leader-election=false"],
    )
    .await;
    for ns in ["team-a", "team-b", "elsewhere"] {
        let mut app = example("appenvironment-development.yaml");
        app.metadata.namespace = Some(ns.into());
        Api::<AppEnvironment>::namespaced(client.clone(), ns).create(&PostParams::default(), &app).await.unwrap();
    }
    for ns in ["team-a", "team-b"] {
        wait_condition(&Api::namespaced(client.clone(), ns), "shop-dev", "Ready", "True", None).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ignored = Api::<AppEnvironment>::namespaced(client.clone(), "elsewhere").get("shop-dev").await.unwrap();
    assert!(ignored.status.is_none(), "an unwatched namespace was reconciled");
    assert!(Api::<Deployment>::namespaced(client.clone(), "elsewhere").get_opt("shop-dev").await.unwrap().is_none());
    cluster.assert_clean().await;
}

/// A name Berth would give a child that is already taken by the team's own object: the app and
/// the DatabaseInstance leave it exactly as it is and say why (a forced apply would silently
/// take it, and a Secret's data with it), until `spec.adopt` asks for the takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_berth_did_not_create_is_left_alone_until_adopted() {
    use berth::api::DatabaseInstance;
    use k8s_openapi::api::core::v1::Secret;
    let cluster = cluster(&["legacy"]).await;
    let client = cluster.client();
    let _operator = operator(&cluster, &[], &["--resync-seconds", "1"]).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "legacy");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "legacy");

    // The old platform's Service and a team's Secret, each under a name Berth would use.
    let legacy_service: Service = serde_json::from_value(json!({
        "metadata": {"name": "shop-dev", "annotations": {"team": "kept"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"name": "web", "port": 8000}]}
    }))
    .unwrap();
    let legacy_service = services.create(&PostParams::default(), &legacy_service).await.unwrap();
    let team_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "orders-db-credentials"}, "stringData": {"password": "the-teams-own"}
    }))
    .unwrap();
    let team_secret = secrets.create(&PostParams::default(), &team_secret).await.unwrap();

    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "legacy");
    let mut app = example("appenvironment-development.yaml");
    app.metadata.namespace = Some("legacy".into());
    apps.create(&PostParams::default(), &app).await.unwrap();
    let text = std::fs::read_to_string(repo().join("deploy/examples/databaseinstance-postgres.yaml")).unwrap();
    let mut instance: DatabaseInstance = serde_saphyr::from_str(&text).unwrap();
    instance.metadata.namespace = Some("legacy".into());
    let instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), "legacy");
    instances.create(&PostParams::default(), &instance).await.unwrap();

    let refused = wait_condition(&apps, "shop-dev", "Ready", "False", Some("AdoptionConflict")).await;
    let message = &refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap().message;
    assert!(message.starts_with("Service shop-dev exists and Berth did not create it;"), "{message}");
    assert!(message.contains("spec.adopt"), "{message}");
    let refused = eventually("orders-db AdoptionConflict", Duration::from_secs(60), || async {
        let db = instances.get("orders-db").await.ok()?;
        let ready = db.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "AdoptionConflict").then_some(ready.message)
    })
    .await;
    assert!(refused.starts_with("Secret orders-db-credentials exists and Berth did not create it;"), "{refused}");
    // A resync later, both are exactly as the team left them; the app's pods were not started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let service = services.get("shop-dev").await.unwrap();
    assert_eq!(service.metadata.resource_version, legacy_service.metadata.resource_version);
    let secret = secrets.get("orders-db-credentials").await.unwrap();
    assert_eq!(secret.metadata.resource_version, team_secret.metadata.resource_version);
    assert!(Api::<Deployment>::namespaced(client.clone(), "legacy").get_opt("shop-dev").await.unwrap().is_none());

    // Adopted: the Service becomes the app's, with Berth's ports, and the app converges.
    apps.patch("shop-dev", &PatchParams::default(), &Patch::Merge(json!({"spec": {"adopt": {}}}))).await.unwrap();
    let ready = wait_condition(&apps, "shop-dev", "Ready", "True", None).await;
    let service = services.get("shop-dev").await.unwrap();
    assert_eq!(service.metadata.owner_references.unwrap()[0].uid, ready.metadata.uid.unwrap());
    assert!(service.spec.unwrap().ports.unwrap().iter().any(|p| p.name.as_deref() == Some("http")));
    cluster.assert_clean().await;
}

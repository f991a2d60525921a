//! The real `berth operator` process on a real control plane (tests/support/cluster), as the
//! chart's ServiceAccount in a namespace enforcing Pod Security `restricted`, provisioning a real
//! PostgreSQL 15 and a real RabbitMQ on loopback. The operator reaches them through
//! `--endpoint-overrides`, which maps the in-cluster Service address to the loopback server:
//! the operator's own networking setting, not a mock. The test plays the part of the
//! container image's entrypoint: it gives the server's administrative user the password the
//! operator generated into the credentials Secret.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use berth::api::{AppEnvironment, DatabaseInstance};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::{Cluster, OPERATOR_USER};
use support::external_secrets;
use support::objects::repo;
use support::operator::Operator;
use support::servers::{Postgres, RabbitMq};
use support::wait::eventually;

const NS: &str = "team-a";
const WAIT: Duration = Duration::from_secs(60);

async fn cluster() -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    cluster.namespace(NS).await;
    cluster
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    secret.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect()
}

async fn secret(client: &kube::Client, name: &str) -> Secret {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    eventually(&format!("Secret {name}"), WAIT, || async { api.get_opt(name).await.ok().flatten() }).await
}

/// Waits until the instance's condition `type_` has `status` and `reason` for its current
/// generation.
async fn wait_condition(
    api: &Api<DatabaseInstance>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> DatabaseInstance {
    eventually(&format!("{name} {type_}={status} ({reason})"), WAIT, || async {
        let db = api.get(name).await.ok()?;
        let st = db.status.as_ref()?;
        let c = st.conditions.iter().find(|c| c.type_ == type_)?;
        (st.observed_generation == db.metadata.generation && c.status == status && c.reason == reason).then_some(db)
    })
    .await
}

async fn wait_app(api: &Api<AppEnvironment>, type_: &str, status: &str, reason: &str) -> AppEnvironment {
    eventually(&format!("app {type_}={status} ({reason})"), WAIT, || async {
        let app = api.get("orders").await.ok()?;
        let st = app.status.as_ref()?;
        let c = st.conditions.iter().find(|c| c.type_ == type_)?;
        (c.status == status && c.reason == reason).then_some(app)
    })
    .await
}

fn patch(value: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instance_provisions_keeps_its_secret_grows_refuses_and_rotates() {
    let mut pg = Postgres::start();
    let cluster = cluster().await;
    let client = cluster.client();
    // The kubelet stand-in provisions and expands volumes of its provisioner, like a CSI driver.
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    let class = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "expandable"},
        "provisioner": "berth.test/hostpath", "allowVolumeExpansion": true});
    classes.create(&PostParams::default(), &serde_json::from_value(class).unwrap()).await.unwrap();

    let overrides = format!("orders-db.{NS}.svc:5432=127.0.0.1:{}", pg.port);
    let args = ["--resync-seconds", "1", "--endpoint-overrides", &overrides];
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &args);
    operator.wait_ready(WAIT);

    let api: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    let instance: DatabaseInstance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "orders-db", "namespace": NS},
        "spec": {"engine": "postgres", "version": "15",
                 "storage": {"size": "1Gi", "storageClassName": "expandable"},
                 "roles": [{"name": "app"}],
                 "databases": [{"name": "orders", "owner": "app"}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &instance).await.unwrap();

    // An app that uses the instance waits for it (the server does not accept the operator's
    // password yet, so the instance cannot be Ready).
    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), NS);
    let app: AppEnvironment = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment",
        "metadata": {"name": "orders", "namespace": NS},
        "spec": {"tier": "development", "image": "ghcr.io/example/orders:1.0", "databases": [{"name": "orders-db"}]}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let waiting = wait_app(&apps, "Progressing", "True", "WaitingForDatabase").await;
    let message = &waiting.status.unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(message.contains("orders-db"), "{message}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pod = deployments.get("orders").await.unwrap().spec.unwrap().template;
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
    let url = env.iter().find(|e| e.name == "DATABASE_URL").expect("DATABASE_URL injected");
    let key = url.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("orders-db-credentials", "uri"));
    assert_eq!(pod.metadata.unwrap().labels.unwrap()["berth.dev/uses-orders-db"], "true");

    // The image's entrypoint would initialise the server with the generated password.
    let admin = secret_data(&secret(&client, "orders-db-credentials").await);
    assert!(admin["password"].len() >= 32);
    assert_eq!(admin["username"], "postgres");
    assert_eq!(admin["host"], format!("orders-db.{NS}.svc"));
    pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{}'", admin["password"]));
    pg.password = admin["password"].clone();

    let ready = wait_condition(&api, "orders-db", "Ready", "True", "Provisioned").await;
    let status = ready.status.unwrap();
    assert_eq!(status.provisioned, ["role/app", "database/orders"]);
    assert_eq!(status.endpoint.as_deref(), Some("orders-db.team-a.svc:5432"));
    assert_eq!(status.secret_name.as_deref(), Some("orders-db-credentials"));
    assert_eq!(status.current_version.as_deref(), Some("15"));
    assert_eq!(
        pg.psql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'orders'").trim(),
        "app"
    );
    let app = secret_data(&secret(&client, "orders-db-user-app").await);
    assert_eq!(app["dbname"], "orders");
    assert!(pg.can_login("app", &app["password"], "orders").await, "the app role logs in with its Secret");
    // The instance's readiness wakes the app (a watch: the app's resync is far away).
    wait_app(&apps, "Ready", "True", "Available").await;

    // A restarted operator keeps every credential: same data, not even rewritten.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let before = secrets.get("orders-db-credentials").await.unwrap();
    assert_eq!(operator.terminate().code(), Some(0));
    let mut operator = Operator::start(&kubeconfig, &args);
    operator.wait_ready(WAIT);
    // Several resyncs (one per second), each connecting to the server: nothing to write, as the
    // real API server's audit log counts it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = cluster.audit.mark();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<String> = cluster.audit.writes_since(mark, OPERATOR_USER).iter().map(|e| e.describe()).collect();
    assert!(writes.is_empty(), "steady state writes: {writes:#?}");
    let after = secrets.get("orders-db-credentials").await.unwrap();
    assert_eq!(secret_data(&after), secret_data(&before));
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version);
    assert!(pg.can_login("postgres", &admin["password"], "postgres").await);

    // Growing the volume patches the PVC; the StatefulSet's claim template cannot change.
    api.patch("orders-db", &PatchParams::default(), &patch(json!({"spec": {"storage": {"size": "2Gi"}}})))
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    eventually("PVC grown to 2Gi and resized", WAIT, || async {
        let pvc = claims.get("data-orders-db-0").await.ok()?;
        let size = pvc.spec?.resources?.requests?.get("storage")?.0.clone();
        let capacity = pvc.status?.capacity?.get("storage")?.0.clone();
        (size == "2Gi" && capacity == "2Gi").then_some(())
    })
    .await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let template = sts.get("orders-db").await.unwrap().spec.unwrap().volume_claim_templates.unwrap();
    assert_eq!(
        template[0].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "1Gi"
    );

    // Shrinking is refused, and so is growing on a class that cannot expand.
    api.patch("orders-db", &PatchParams::default(), &patch(json!({"spec": {"storage": {"size": "1Gi"}}})))
        .await
        .unwrap();
    let refused = wait_condition(&api, "orders-db", "Degraded", "True", "StorageShrinkRefused").await;
    let message = &refused.status.unwrap().conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message.clone();
    assert!(message.contains("spec.storage.size") && message.contains("2Gi"), "{message}");
    classes.patch("expandable", &PatchParams::default(), &patch(json!({"allowVolumeExpansion": false}))).await.unwrap();
    api.patch("orders-db", &PatchParams::default(), &patch(json!({"spec": {"storage": {"size": "3Gi"}}})))
        .await
        .unwrap();
    wait_condition(&api, "orders-db", "Degraded", "True", "VolumeExpansionUnsupported").await;
    let pvc = claims.get("data-orders-db-0").await.unwrap();
    assert_eq!(pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0, "2Gi");
    api.patch("orders-db", &PatchParams::default(), &patch(json!({"spec": {"storage": {"size": "2Gi"}}})))
        .await
        .unwrap();
    wait_condition(&api, "orders-db", "Degraded", "False", "AsExpected").await;

    // A major upgrade is refused; the pods keep running 15.
    api.patch("orders-db", &PatchParams::default(), &patch(json!({"spec": {"version": "16"}}))).await.unwrap();
    let refused = wait_condition(&api, "orders-db", "Degraded", "True", "MajorUpgradeRefused").await;
    assert_eq!(refused.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().status, "True");
    let image = sts.get("orders-db").await.unwrap().spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(image.as_deref(), Some("postgres:15"));
    api.patch("orders-db", &PatchParams::default(), &patch(json!({"spec": {"version": "15"}}))).await.unwrap();
    wait_condition(&api, "orders-db", "Degraded", "False", "AsExpected").await;

    // Rotation: new passwords in the Secrets and in the server; the old ones stop working.
    let rotate = json!({"metadata": {"annotations": {"berth.dev/rotate-credentials": "2026-11-22"}}});
    api.patch("orders-db", &PatchParams::default(), &patch(rotate)).await.unwrap();
    eventually("rotation complete", WAIT, || async {
        let db = api.get("orders-db").await.ok()?;
        (db.status?.credentials_revision.as_deref() == Some("2026-11-22")).then_some(())
    })
    .await;
    let new_admin = secret_data(&secrets.get("orders-db-credentials").await.unwrap());
    let new_app = secret_data(&secrets.get("orders-db-user-app").await.unwrap());
    assert_ne!(new_admin["password"], admin["password"]);
    assert_ne!(new_app["password"], app["password"]);
    assert!(
        !new_admin.contains_key("previous-password"),
        "the old password is dropped once the server has the new one"
    );
    assert!(pg.can_login("app", &new_app["password"], "orders").await);
    assert!(!pg.can_login("app", &app["password"], "orders").await);
    assert!(pg.can_login("postgres", &new_admin["password"], "postgres").await);
    assert!(!pg.can_login("postgres", &admin["password"], "postgres").await);
    pg.password = new_admin["password"].clone();
    // The app's pods roll onto the new credentials.
    eventually("app pods annotated with the rotation", WAIT, || async {
        let pod = deployments.get("orders").await.ok()?.spec?.template.metadata?;
        (pod.annotations?.get("berth.dev/credentials-orders-db")? == "2026-11-22").then_some(())
    })
    .await;

    // Deleting the instance (default deletionPolicy Retain) keeps its data volume.
    api.delete("orders-db", &DeleteParams::default()).await.unwrap();
    eventually("StatefulSet gone with its owner", WAIT, || async {
        sts.get_opt("orders-db").await.ok()?.is_none().then_some(())
    })
    .await;
    // The pods go through the real garbage collector and the kubelet stand-in; the claim stays.
    eventually("pod gone", WAIT, || async {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
        pods.get_opt("orders-db-0").await.ok()?.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(claims.get_opt("data-orders-db-0").await.unwrap().is_some(), "the PVC outlives the instance");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_delete_removes_the_volumes_through_the_statefulset_controller() {
    let cluster = cluster().await;
    let client = cluster.client();
    // A closed port: the instance never becomes Ready, which deletion does not need.
    let closed = support::operator::free_port();
    let overrides = format!("scratch.{NS}.svc:5432=127.0.0.1:{closed}");
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--endpoint-overrides", &overrides]);
    operator.wait_ready(WAIT);
    let api: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    let instance: DatabaseInstance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "scratch", "namespace": NS},
        "spec": {"engine": "postgres", "version": "15", "storage": {"size": "1Gi"}, "deletionPolicy": "Delete"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &instance).await.unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    eventually("claim bound", WAIT, || async {
        let pvc = claims.get_opt("data-scratch-0").await.ok()??;
        (pvc.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;
    api.delete("scratch", &DeleteParams::default()).await.unwrap();
    eventually("claim deleted with the instance", WAIT, || async {
        claims.get_opt("data-scratch-0").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(api.get_opt("scratch").await.unwrap().is_none(), "the instance's finalizer was released");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cluster_provisions_vhosts_and_users_and_refuses_scale_down() {
    let mut mq = RabbitMq::start();
    let cluster = cluster().await;
    let client = cluster.client();
    let overrides = format!("events.{NS}.svc:15672=127.0.0.1:{}", mq.mgmt_port);
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--resync-seconds", "1", "--endpoint-overrides", &overrides]);
    operator.wait_ready(WAIT);

    let api: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    let instance: DatabaseInstance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "events", "namespace": NS},
        "spec": {"engine": "rabbitmq", "version": "4.1", "replicas": 3, "storage": {"size": "1Gi"},
                 "vhosts": ["orders"],
                 "users": [{"name": "orders-app", "permissions": [{"vhost": "orders", "read": "^orders\\."}]}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &instance).await.unwrap();

    // The image would create the default user from the server Secret's config fragment.
    let admin = secret_data(&secret(&client, "events-credentials").await);
    let user = json!({"password": admin["password"], "tags": "administrator"}).to_string();
    mq.api_ok("PUT", "/api/users/admin", Some(&user));
    mq.api_ok("PUT", "/api/permissions/%2F/admin", Some(r#"{"configure":".*","write":".*","read":".*"}"#));
    let cookie = secret_data(&secret(&client, "events-server").await);
    assert!(cookie["erlang-cookie"].len() >= 32);

    let ready = wait_condition(&api, "events", "Ready", "True", "Provisioned").await;
    assert_eq!(ready.status.unwrap().provisioned, ["vhost/orders", "user/orders-app"]);
    mq.user = "admin".into();
    mq.password = admin["password"].clone();
    let app = secret_data(&secret(&client, "events-user-orders-app").await);
    assert!(app["uri"].starts_with("amqp://orders-app:") && app["uri"].ends_with("@events.team-a.svc:5672/orders"));
    let stored: serde_json::Value = serde_json::from_str(&mq.api_ok("GET", "/api/users/orders-app", None)).unwrap();
    assert!(berth::provision::rabbitmq::password_matches(
        stored["password_hash"].as_str().unwrap(),
        stored["hashing_algorithm"].as_str().unwrap(),
        &app["password"],
    ));
    let perms: serde_json::Value =
        serde_json::from_str(&mq.api_ok("GET", "/api/permissions/orders/orders-app", None)).unwrap();
    assert_eq!(perms["read"], "^orders\\.");

    // Scaling a cluster down is refused and the StatefulSet keeps its three nodes.
    api.patch("events", &PatchParams::default(), &patch(json!({"spec": {"replicas": 1}}))).await.unwrap();
    let refused = wait_condition(&api, "events", "Degraded", "True", "ScaleDownRefused").await;
    let message = refused.status.unwrap().conditions.iter().find(|c| c.type_ == "Degraded").unwrap().message.clone();
    assert!(message.contains("spec.replicas"), "{message}");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    assert_eq!(sts.get("events").await.unwrap().spec.unwrap().replicas, Some(3));
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// `spec.credentials.externalSecret`: the administrative password lives in AWS Secrets Manager
/// and reaches the cluster as a Secret the External Secrets Operator syncs (this test plays that
/// operator, `support::external_secrets`). The instance waits for it, provisions the real
/// PostgreSQL with it, follows a new value there like a rotation, and refuses Berth's own
/// rotation annotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_admin_password_follows_an_external_secret() {
    let mut pg = Postgres::start();
    let cluster = cluster().await;
    external_secrets::install_crd(&cluster).await;
    let client = cluster.client();
    let overrides = format!("orders-db.{NS}.svc:5432=127.0.0.1:{}", pg.port);
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--resync-seconds", "1", "--endpoint-overrides", &overrides]);
    operator.wait_ready(WAIT);
    let es = external_secrets::create(&client, NS, "orders-db-admin", "/orders/prod/db-admin").await;

    let api: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    let instance: DatabaseInstance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "orders-db", "namespace": NS},
        "spec": {"engine": "postgres", "version": "15", "storage": {"size": "1Gi"},
                 "credentials": {"externalSecret": "orders-db-admin"},
                 "databases": [{"name": "orders"}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &instance).await.unwrap();

    // Not synced yet: the instance waits and says for what; no password is generated.
    let waiting = wait_condition(&api, "orders-db", "Ready", "False", "ExternalSecretNotSynced").await;
    let ready = waiting.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("spec.credentials.externalSecret: Secret orders-db-admin"), "{}", ready.message);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    assert!(secrets.get_opt("orders-db-credentials").await.unwrap().is_none(), "no generated password meanwhile");

    // Synced: the connection Secret carries the store's password, which the image's entrypoint
    // (this test) gives the server; the operator provisions with it.
    let first = "first-password-from-secrets-manager";
    external_secrets::fill(&client, &es, json!({"password": first})).await;
    let admin = eventually("the credentials Secret follows the synced one", WAIT, || async {
        let data = secret_data(&secrets.get_opt("orders-db-credentials").await.ok()??);
        (data.get("password").map(String::as_str) == Some(first)).then_some(data)
    })
    .await;
    assert_eq!(admin["username"], "postgres");
    pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{first}'"));
    pg.password = first.into();
    wait_condition(&api, "orders-db", "Ready", "True", "Provisioned").await;
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'orders'").trim(), "1");

    // Rotated in Secrets Manager: the operator sets the new password on the server (with the
    // old one) and the connection Secret follows; the old one stops working.
    let second = "second-password-from-secrets-manager";
    external_secrets::refill(&client, &es, json!({"password": second})).await;
    eventually("the server has the new password", WAIT, || async {
        let data = secret_data(&secrets.get("orders-db-credentials").await.ok()?);
        let done = data.get("password").map(String::as_str) == Some(second) && !data.contains_key("previous-password");
        done.then_some(())
    })
    .await;
    assert!(pg.can_login("postgres", second, "postgres").await, "the new password works");
    assert!(!pg.can_login("postgres", first, "postgres").await, "the old password no longer works");
    pg.password = second.into();
    wait_condition(&api, "orders-db", "Ready", "True", "Provisioned").await;

    // Berth's own rotation is refused: rotation happens in Secrets Manager.
    let rotate = json!({"metadata": {"annotations": {"berth.dev/rotate-credentials": "2026-12-04"}}});
    api.patch("orders-db", &PatchParams::default(), &patch(rotate)).await.unwrap();
    let refused = wait_condition(&api, "orders-db", "Degraded", "True", "RotationRefused").await;
    let degraded = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(degraded.message.contains("rotate it in AWS Secrets Manager"), "{}", degraded.message);
    assert_eq!(secret_data(&secrets.get("orders-db-credentials").await.unwrap())["password"], second);
    assert!(pg.can_login("postgres", second, "postgres").await, "the password stayed the synced one");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

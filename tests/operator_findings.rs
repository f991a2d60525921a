//! Defects found by reading the operator's code, each reproduced here on the real control plane
//! (tests/support/cluster: kube-apiserver 1.35, etcd, kube-controller-manager, the kubelet
//! stand-in) with the real `berth operator` as the chart's ServiceAccount, in namespaces that
//! enforce Pod Security `restricted`. Every defect has been fixed; each test says what it would
//! see with its fix reverted, and its assertions fail in that case.
//!
//! - `spec.securityContext` is merged over the restricted defaults (bac91cb);
//! - a pod blocked by the kubelet's non-root check shows in the AppEnvironment (5bbbdb0);
//! - immutable StatefulSet fields of a DatabaseInstance are refused, not retried (ad76b41);
//! - a Restore into a namespace that does not exist waits for it (07f1983);
//! - a child the API server refuses with 422 becomes a condition, not a hot loop (ad76b41).

use crate::support;

use std::time::Duration;

use berth::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::{Cluster, OPERATOR_USER};
use support::objects::repo;
use support::operator::Operator;
use support::servers::{Postgres, S3Server};
use support::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);

/// A control plane with Berth's CRDs and `namespaces` (enforcing Pod Security `restricted`).
async fn cluster(namespaces: &[&str]) -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    for ns in namespaces {
        cluster.namespace(ns).await;
        cluster.tenant_account(ns);
    }
    cluster
}

/// The operator as the chart's ServiceAccount, resyncing every second (so that a retry loop
/// or a steady-state write would show within the few seconds a test watches).
async fn operator(cluster: &Cluster, extra: &[&str]) -> Operator {
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut args = vec!["--resync-seconds", "1", "--leader-election=false"];
    args.extend_from_slice(extra);
    let mut operator = Operator::start(&kubeconfig, &args);
    operator.wait_ready(WAIT);
    operator
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn merge(value: Value) -> Patch<Value> {
    Patch::Merge(value)
}

/// Waits until the AppEnvironment's `type_` condition has `status` and `reason` for its
/// current generation; fails at once when Pod Security refused one of its pods.
async fn wait_app(cluster: &Cluster, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> Condition {
    let api: Api<AppEnvironment> = Api::namespaced(cluster.client(), ns);
    eventually(&format!("AppEnvironment {ns}/{name} {type_}={status} ({reason})"), WAIT, || async {
        let refused = pod_security_refusals(cluster, ns).await;
        assert!(refused.is_empty(), "Pod Security refused the pods of {ns}/{name}:\n{}", refused.join("\n"));
        let app = api.get(name).await.ok()?;
        let st = app.status.as_ref()?;
        let c = condition(&st.conditions, type_)?;
        (st.observed_generation == app.metadata.generation && c.status == status && c.reason == reason)
            .then(|| c.clone())
    })
    .await
}

/// Messages of `FailedCreate` events in `ns` that name Pod Security.
async fn pod_security_refusals(cluster: &Cluster, ns: &str) -> Vec<String> {
    cluster
        .events(Some(ns), "FailedCreate")
        .await
        .into_iter()
        .filter_map(|e| e.message)
        .filter(|m| m.contains("PodSecurity"))
        .collect()
}

/// The operator's writes since `mark` (audit log; Leases and Events left out), described.
fn writes(cluster: &Cluster, mark: support::cluster::audit::Mark) -> Vec<String> {
    cluster.audit.writes_since(mark, OPERATOR_USER).iter().map(|e| e.describe()).collect()
}

async fn create_app(cluster: &Cluster, ns: &str, name: &str, spec: Value) {
    let app: AppEnvironment = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    Api::<AppEnvironment>::namespaced(cluster.client(), ns).create(&PostParams::default(), &app).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 1. spec.securityContext merged over the restricted defaults (bac91cb)
// ---------------------------------------------------------------------------------------------

/// Without the fix, `spec.securityContext` replaced Berth's defaults wholesale: the container
/// had only `runAsUser` and `readOnlyRootFilesystem`, without `allowPrivilegeEscalation: false`
/// and `capabilities.drop: [ALL]`, so Pod Security `restricted` refused every pod (`FailedCreate`
/// on the ReplicaSet: `wait_app` fails on it, and Ready never becomes True). And
/// `privileged: true` went into the Deployment's apply, which this API server
/// (`--allow-privileged=false`) answers with 422 on every retry of the backoff while the status
/// still says `Available` for the previous generation: no `InvalidSpec`, and the audit log shows
/// the operator's Deployment patches, where the fix writes only the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_security_context_keeps_the_restricted_defaults_and_weakening_is_invalid() {
    let cluster = cluster(&["team"]).await;
    let client = cluster.client();
    let _operator = operator(&cluster, &[]).await;

    create_app(
        &cluster,
        "team",
        "web",
        json!({"tier": "development", "image": "ghcr.io/example/web:1",
               "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": false}}),
    )
    .await;
    // The pod is created (Pod Security admits it) and becomes Ready.
    wait_app(&cluster, "team", "web", "Ready", "True", "Available").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "team");
    let deployment = deployments.get("web").await.unwrap();
    assert_eq!(deployment.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    let container = &deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let sc = container.security_context.clone().unwrap();
    // The user's fields ...
    assert_eq!(sc.run_as_user, Some(1000));
    assert_eq!(sc.read_only_root_filesystem, Some(false));
    // ... over the defaults, which stay.
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.map(|s| s.type_).as_deref(), Some("RuntimeDefault"));

    // A field that weakens `restricted` is refused by name, and the Deployment is left alone.
    let mark = cluster.audit.mark();
    Api::<AppEnvironment>::namespaced(client.clone(), "team")
        .patch("web", &PatchParams::default(), &merge(json!({"spec": {"securityContext": {"privileged": true}}})))
        .await
        .unwrap();
    let invalid = wait_app(&cluster, "team", "web", "Ready", "False", "InvalidSpec").await;
    assert!(invalid.message.contains("spec.securityContext.privileged"), "{}", invalid.message);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = writes(&cluster, mark);
    assert!(
        written.iter().all(|w| w.starts_with("patch appenvironments/status ")),
        "an invalid securityContext must change nothing but the status: {written:#?}"
    );
    cluster.assert_clean().await;
}

// ---------------------------------------------------------------------------------------------
// 2. An image whose USER is root or a name (5bbbdb0)
// ---------------------------------------------------------------------------------------------

/// Without the fix, the AppEnvironment said only `RollingOut` ("0 of 1 replicas ready") while
/// the kubelet refused the container for good: no `CreateContainerConfigError` reason, no
/// kubelet message and no fix in its conditions (the waits for them time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_running_as_root_or_a_named_user_shows_the_kubelets_refusal_and_the_fix() {
    let cluster = cluster(&["team"]).await;
    let client = cluster.client();
    let _operator = operator(&cluster, &[]).await;
    cluster.kubelet().set_image_user("ghcr.io/example/rootful:1", "root");
    cluster.kubelet().set_image_user("ghcr.io/example/uid0:1", "0");
    let fix = "set spec.securityContext.runAsUser to a numeric non-root UID, or build the image with a numeric USER";

    create_app(&cluster, "team", "named", json!({"tier": "development", "image": "ghcr.io/example/rootful:1"})).await;
    create_app(&cluster, "team", "numeric", json!({"tier": "development", "image": "ghcr.io/example/uid0:1"})).await;
    for (name, kubelet_says) in [
        ("named", "container has runAsNonRoot and image has non-numeric user (root), cannot verify user is non-root"),
        ("numeric", "container has runAsNonRoot and image will run as root"),
    ] {
        let ready = wait_app(&cluster, "team", name, "Ready", "False", "CreateContainerConfigError").await;
        assert!(ready.message.contains(kubelet_says), "{name}: {}", ready.message);
        assert!(ready.message.contains(fix), "{name}: {}", ready.message);
        let degraded = wait_app(&cluster, "team", name, "Degraded", "True", "CreateContainerConfigError").await;
        assert!(degraded.message.contains(fix), "{name}: {}", degraded.message);
    }

    // The fix the message gives works.
    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "team");
    for name in ["named", "numeric"] {
        apps.patch(name, &PatchParams::default(), &merge(json!({"spec": {"securityContext": {"runAsUser": 1000}}})))
            .await
            .unwrap();
    }
    for name in ["named", "numeric"] {
        wait_app(&cluster, "team", name, "Ready", "True", "Available").await;
        wait_app(&cluster, "team", name, "Degraded", "False", "Healthy").await;
    }
    cluster.assert_clean().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Immutable StatefulSet fields of a DatabaseInstance (ad76b41)
// ---------------------------------------------------------------------------------------------

async fn wait_db(api: &Api<DatabaseInstance>, type_: &str, status: &str, reason: &str) -> Condition {
    eventually(&format!("orders-db {type_}={status} ({reason})"), WAIT, || async {
        let db = api.get("orders-db").await.ok()?;
        let st = db.status.as_ref()?;
        let c = condition(&st.conditions, type_)?;
        (st.observed_generation == db.metadata.generation && c.status == status && c.reason == reason)
            .then(|| c.clone())
    })
    .await
}

/// Without the fix, a new `spec.storage.storageClassName` went into the StatefulSet's
/// volumeClaimTemplates, which the API server refuses (422, "updates to statefulset spec for
/// fields other than ... are forbidden") on every retry of an exponential backoff: no
/// `ImmutableFieldChanged` condition, and the audit log shows a StatefulSet patch answered 422
/// every few seconds instead of one status write. A new `spec.engine` built and applied the
/// other engine's children (its `orders-db-server` Secret, ConfigMap, Services) before the
/// StatefulSet's 422 (rewriting the credentials Secret for the other engine on the way), where
/// the fix applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_storage_class_or_engine_is_refused_without_a_retry_loop() {
    const NS: &str = "team-a";
    let mut pg = Postgres::start();
    let cluster = cluster(&[NS]).await;
    let client = cluster.client();
    let classes: Api<StorageClass> = Api::all(client.clone());
    let fast = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"},
                      "provisioner": "berth.test/hostpath"});
    classes.create(&PostParams::default(), &serde_json::from_value(fast).unwrap()).await.unwrap();
    let overrides = format!("orders-db.{NS}.svc:5432=127.0.0.1:{}", pg.port);
    let _operator = operator(&cluster, &["--endpoint-overrides", &overrides]).await;

    let api: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    let instance: DatabaseInstance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "orders-db", "namespace": NS},
        "spec": {"engine": "postgres", "version": "15", "storage": {"size": "1Gi"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &instance).await.unwrap();
    // The image's entrypoint would start the server with the generated password.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let admin = eventually("orders-db-credentials", WAIT, || async {
        secrets.get_opt("orders-db-credentials").await.ok().flatten()
    })
    .await;
    let password = String::from_utf8(admin.data.unwrap()["password"].0.clone()).unwrap();
    pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{password}'"));
    pg.password = password;
    wait_db(&api, "Ready", "True", "Provisioned").await;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let templates = sts.get("orders-db").await.unwrap().spec.unwrap().volume_claim_templates;
    assert_eq!(templates.as_ref().unwrap()[0].spec.as_ref().unwrap().storage_class_name, None);

    // Another (existing) class: refused, the claim template kept, no retry loop.
    let mark = cluster.audit.mark();
    api.patch("orders-db", &PatchParams::default(), &merge(json!({"spec": {"storage": {"storageClassName": "fast"}}})))
        .await
        .unwrap();
    let degraded = wait_db(&api, "Degraded", "True", "ImmutableFieldChanged").await;
    assert!(degraded.message.contains("spec.storage.storageClassName"), "{}", degraded.message);
    assert!(
        degraded.message.contains("Set it back, or create a new DatabaseInstance and restore a backup into it"),
        "{}",
        degraded.message
    );
    // Over four resyncs (one a second) the only write is the status that reports it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let written = writes(&cluster, mark);
    assert!(
        written.len() <= 1 && written.iter().all(|w| w.contains("databaseinstances/status")),
        "writes after a refused storage class change: {written:#?}"
    );
    // (This API server refuses the change anyway; the claim template is the contract.)
    let now = sts.get("orders-db").await.unwrap().spec.unwrap().volume_claim_templates;
    assert_eq!(now, templates, "the StatefulSet's volumeClaimTemplates changed");

    // Set back: nothing is degraded any more.
    api.patch("orders-db", &PatchParams::default(), &merge(json!({"spec": {"storage": {"storageClassName": null}}})))
        .await
        .unwrap();
    wait_db(&api, "Degraded", "False", "AsExpected").await;
    wait_db(&api, "Ready", "True", "Provisioned").await;

    // Another engine. The CRD has no rule that makes spec.engine immutable (its CEL rules only
    // tie spec.replicas to the engine), so the server takes the patch and the operator refuses it.
    let mark = cluster.audit.mark();
    api.patch("orders-db", &PatchParams::default(), &merge(json!({"spec": {"engine": "rabbitmq", "version": "4.1"}})))
        .await
        .unwrap();
    let ready = wait_db(&api, "Ready", "False", "ImmutableFieldChanged").await;
    assert!(
        ready.message.starts_with("spec.engine cannot change from \"postgres\" to \"rabbitmq\" after creation"),
        "{}",
        ready.message
    );
    wait_db(&api, "Degraded", "True", "ImmutableFieldChanged").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written = writes(&cluster, mark);
    assert!(
        !written.is_empty() && written.iter().all(|w| w.contains("databaseinstances/status")),
        "an engine change applies nothing but the status: {written:#?}"
    );
    assert!(secrets.get_opt("orders-db-server").await.unwrap().is_none(), "RabbitMQ's server Secret was created");
    let pod = sts.get("orders-db").await.unwrap().spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("postgres:15"));

    // Set back: the instance is what it was.
    api.patch("orders-db", &PatchParams::default(), &merge(json!({"spec": {"engine": "postgres", "version": "15"}})))
        .await
        .unwrap();
    wait_db(&api, "Ready", "True", "Provisioned").await;
    wait_db(&api, "Degraded", "False", "AsExpected").await;
    cluster.assert_clean().await;
}

// ---------------------------------------------------------------------------------------------
// 4. A Restore into a namespace that does not exist (07f1983)
// ---------------------------------------------------------------------------------------------

/// Without the fix, the Restore never looked at its target namespace: with no Completed Backup
/// yet it ended `Failed` (`BackupNotFound`) instead of `Ready=False` `NamespaceNotFound` (the
/// first wait fails on it). With one, it opened the repository, went through the stages and, in
/// the data stage, tried to copy the storage Secrets into `shop-copy` again and again on the
/// backoff (404 from the namespace lifecycle admission: the audit check below sees those
/// requests), `InProgress` with nothing restored instead of waiting for the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_missing_namespace_waits_for_it_and_never_creates_it() {
    const NS: &str = "shop";
    const COPY: &str = "shop-copy";
    const KEY: &str = "correct horse battery staple";
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[NS]).await;
    let client = cluster.client();
    let _operator = operator(&cluster, &[]).await;

    // The policy the example names, on the S3 server, with its Secrets; only Kubernetes
    // objects are backed up (no database, no agent Job needed).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for (name, data) in [
        (
            "s3-credentials",
            vec![("AWS_ACCESS_KEY_ID", s3.access_key.clone()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone())],
        ),
        ("repository-key", vec![("key", format!("{KEY}\n"))]),
    ] {
        let data = data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some(data),
            ..Secret::default()
        };
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let policy: BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {
            "schedule": "0 3 * * *", "suspend": true,
            "storage": {"bucket": "backups", "prefix": "shop", "region": s3.region, "endpoint": s3.endpoint,
                        "insecureHTTP": true, "forcePathStyle": true, "credentialsSecret": "s3-credentials",
                        "encryptionKeySecret": "repository-key"},
            "scope": {"databases": false},
            "retention": {"keepLast": 5}
        }
    }))
    .unwrap();
    Api::<BackupPolicy>::namespaced(client.clone(), NS).create(&PostParams::default(), &policy).await.unwrap();
    create_app(&cluster, NS, "web", json!({"tier": "development", "image": "ghcr.io/example/web:1"})).await;

    // deploy/examples/restore-shop-copy.yaml as it is: shop -> shop-copy, from the policy's
    // newest Completed Backup, of which there is none yet: the namespace is checked first.
    let example = std::fs::read(repo().join("deploy/examples/restore-shop-copy.yaml")).unwrap();
    cluster.kubectl_apply(&example);
    let restores: Api<Restore> = Api::namespaced(client.clone(), NS);
    let waiting = |reason: &'static str| {
        let restores = restores.clone();
        async move {
            eventually(&format!("Restore shop-copy Ready=False ({reason})"), WAIT, || async {
                let r = restores.get("shop-copy").await.ok()?;
                let st = r.status.as_ref()?;
                let phase = st.phase.as_deref().unwrap_or_default();
                assert!(!matches!(phase, "Completed" | "Failed" | "PartiallyFailed"), "the restore ended: {st:?}");
                let c = condition(&st.conditions, "Ready")?;
                (c.status == "False" && c.reason == reason).then(|| (c.clone(), phase.to_string()))
            })
            .await
        }
    };
    let (ready, phase) = waiting("NamespaceNotFound").await;
    assert_eq!(phase, "Pending");
    assert!(ready.message.contains("\"shop-copy\""), "{}", ready.message);
    assert!(ready.message.contains("kubectl create namespace shop-copy"), "{}", ready.message);
    // A Warning event tells `kubectl describe` too (published right after the status).
    eventually("a NamespaceNotFound event", Duration::from_secs(10), || async {
        let events = cluster.events(Some(NS), "NamespaceNotFound").await;
        events.into_iter().find(|e| e.type_.as_deref() == Some("Warning"))
    })
    .await;

    // A Backup completes meanwhile; the restore keeps waiting for the namespace.
    let backup: Backup = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
        "metadata": {"name": "nightly-by-hand", "namespace": NS}, "spec": {"policyName": "nightly"}
    }))
    .unwrap();
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    backups.create(&PostParams::default(), &backup).await.unwrap();
    eventually("Backup nightly-by-hand Completed", WAIT, || async {
        let b = backups.get("nightly-by-hand").await.ok()?;
        let phase = b.status?.phase?;
        assert_ne!(phase, "Failed", "the Backup failed");
        (phase == "Completed").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, phase) = waiting("NamespaceNotFound").await;
    assert_eq!(phase, "Pending");

    // Berth neither created the namespace nor sent anything into it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(COPY).await.unwrap().is_none(), "someone created {COPY}");
    let into_copy: Vec<String> = cluster
        .audit
        .since(Default::default())
        .into_iter()
        .filter(|e| e.user.username == OPERATOR_USER)
        .filter(|e| {
            // Reading whether the namespace exists is the one request expected.
            e.object_ref.as_ref().is_some_and(|o| {
                let looked = o.resource == "namespaces" && e.verb == "get" && o.name == COPY;
                !looked && (o.namespace == COPY || o.resource == "namespaces")
            })
        })
        .map(|e| e.describe())
        .collect();
    assert!(into_copy.is_empty(), "the operator's requests into {COPY} or on namespaces: {into_copy:#?}");

    // Created by its owner, the namespace lets the restore go on (checked every 30 s).
    cluster.namespace(COPY).await;
    cluster.tenant_grant(NS, COPY);
    let done = eventually("Restore shop-copy Completed", Duration::from_secs(50), || async {
        let r = restores.get("shop-copy").await.ok()?;
        let st = r.status?;
        let phase = st.phase.clone()?;
        assert!(!matches!(phase.as_str(), "Failed" | "PartiallyFailed"), "the restore ended {phase}: {st:?}");
        (phase == "Completed").then_some(st)
    })
    .await;
    assert_eq!(done.backup_name.as_deref(), Some("nightly-by-hand"));
    assert!(done.errors.is_empty(), "{:?}", done.errors);
    let copied = Api::<AppEnvironment>::namespaced(client.clone(), COPY).get_opt("web").await.unwrap();
    assert!(copied.is_some(), "the AppEnvironment was restored into {COPY}: {done:?}");
    cluster.assert_clean().await;
}

// ---------------------------------------------------------------------------------------------
// 5. A child the API server refuses (422): a condition, not a hot loop (ad76b41)
// ---------------------------------------------------------------------------------------------

/// `spec.podLabels` is a free string map in the CRD and the controller's validation does not
/// look at it, so a label value the API server refuses ("needs review!") reaches the
/// Deployment's pod template, and the server answers the Deployment's apply with 422.
/// Without the fix, that was a transient error: no condition said so (the wait for
/// `ApplyRejected` times out) and the apply was retried on the exponential backoff (1, 2,
/// 4 s ...), where the fix retries every 5 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_the_api_server_refuses_becomes_a_condition_not_a_hot_loop() {
    let cluster = cluster(&["team"]).await;
    let client = cluster.client();
    let _operator = operator(&cluster, &[]).await;

    create_app(
        &cluster,
        "team",
        "web",
        json!({"tier": "development", "image": "ghcr.io/example/web:1", "podLabels": {"review": "needs review!"}}),
    )
    .await;
    let ready = wait_app(&cluster, "team", "web", "Ready", "False", "ApplyRejected").await;
    for part in ["the API server rejected the Deployment \"web\"", "needs review!", "Berth tries again every 5 minutes"]
    {
        assert!(ready.message.contains(part), "{part:?} missing from {}", ready.message);
    }
    let degraded = wait_app(&cluster, "team", "web", "Degraded", "True", "ApplyRejected").await;
    assert_eq!(degraded.message, ready.message);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "team");
    assert!(deployments.get_opt("web").await.unwrap().is_none());

    // No hot loop: after the reconcile its own status write triggers, nothing for 6 s (six
    // resync periods; the backoff would have retried at least twice).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mark = cluster.audit.mark();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let written = writes(&cluster, mark);
    assert!(written.is_empty(), "writes after a 422: {written:#?}");

    // Fixing the spec converges.
    Api::<AppEnvironment>::namespaced(client.clone(), "team")
        .patch("web", &PatchParams::default(), &merge(json!({"spec": {"podLabels": {"review": "done"}}})))
        .await
        .unwrap();
    wait_app(&cluster, "team", "web", "Ready", "True", "Available").await;
    let labels = deployments.get("web").await.unwrap().spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["review"], "done");
    cluster.assert_clean().await;
}

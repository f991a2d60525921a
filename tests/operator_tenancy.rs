//! Tenancy by impersonation (issue 15, item 1), on the real control plane
//! (tests/support/cluster) with the operator holding only the chart's RBAC. A team edits the
//! Berth objects of its own namespace; its namespace's admin created the `berth-backup`
//! ServiceAccount and Role of deploy/tenant/. Each attack of the issue is made as the team
//! would make it, and refused by the operator:
//! - (a) a repository crafted with Berth's own library (what `berth agent` writes) in the
//!   team's bucket, adopted by the policy's sync, whose Restore would create a Deployment and a
//!   RoleBinding in `kube-system`; and the team's own objects mapped into `kube-system` with
//!   `namespaceMapping`: both end `NotAuthorized` naming kind, namespace and verb, and the
//!   audit log shows no write at all into `kube-system`;
//! - (b) a database dump restored (`pg_restore --clean`) into another team's DatabaseInstance
//!   of the same name: refused, also when that team granted everything but `update` of the
//!   instance; no Job, no Secret, no write in the other namespace;
//! - (c) the storage credentials and repository key are never copied into the other namespace;
//! - a missing account ends with `ServiceAccountNotFound` and the fix; a name the admin does not
//!   allow (`--enforce-default-service-account`) with `ServiceAccountNotAllowed`.
//!
//! `Cluster::assert_clean` fails on any 403, made as the operator or as an account it
//! impersonates: refusals must come from the access reviews before any write, never from a
//! write the API server refused.

use crate::support;

use std::path::Path;
use std::time::Duration;

use berth::api::{Backup, BackupPolicy, DatabaseInstance, Restore};
use berth::backup::resources::{SnapshotRef, store_objects};
use berth::backup::{Repository, S3Config, Storage, StorageConfig};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::objects::{create, storage_secrets};
use support::operator::Operator;
use support::servers::S3Server;
use support::wait::eventually;

const TEAM_A: &str = "team-a";
const TEAM_B: &str = "team-b";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(120);

async fn cluster(namespaces: &[&str]) -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    for ns in namespaces {
        cluster.namespace(ns).await;
    }
    cluster
}

/// The operator with the chart's RBAC rendered with `helm_args`, and `args`.
async fn operator(cluster: &Cluster, helm_args: &[&str], args: &[&str]) -> Operator {
    let kubeconfig = cluster.operator_kubeconfig(helm_args).await;
    let mut args = args.to_vec();
    args.push("--leader-election=false");
    let mut operator = Operator::start(&kubeconfig, &args);
    operator.wait_ready(WAIT);
    operator
}

/// The team's bucket credentials and repository key, in its namespace.
fn policy(ns: &str, s3: &S3Server) -> Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": ns},
        "spec": {
            "schedule": "0 3 * * *", "suspend": true,
            "storage": {"bucket": "backups", "prefix": ns, "region": s3.region, "endpoint": s3.endpoint,
                        "forcePathStyle": true, "insecureHTTP": true, "credentialsSecret": "s3-credentials",
                        "encryptionKeySecret": "repository-key"},
            "scope": {"databases": false},
            "retention": {"keepLast": 5}
        }
    })
}

/// What a team can do with its own bucket and key: write a backup of its choosing, with Berth's
/// own repository code (the library `berth agent` runs), before its policy exists.
async fn craft_backup(s3: &S3Server, prefix: &str, name: &str, objects: &[Value], data: Vec<SnapshotRef>) {
    let config = StorageConfig::S3(S3Config {
        bucket: "backups".into(),
        prefix: prefix.into(),
        endpoint: Some(s3.endpoint.clone()),
        insecure_http: true,
        region: Some(s3.region.clone()),
        path_style: true,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        ..S3Config::default()
    });
    let storage = Storage::connect(&config).await.unwrap();
    let repo = match storage.head("config").await.unwrap() {
        Some(_) => Repository::open(storage, KEY.as_bytes()).await.unwrap(),
        None => Repository::init(storage, KEY.as_bytes()).await.unwrap(),
    };
    store_objects(&repo, name, vec![prefix.to_string()], objects, data).await.unwrap();
}

fn object(api_version: &str, kind: &str, ns: &str, name: &str, body: Value) -> Value {
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": ns}});
    obj.as_object_mut().unwrap().extend(body.as_object().unwrap().clone());
    obj
}

fn deployment(ns: &str, name: &str) -> Value {
    object(
        "apps/v1",
        "Deployment",
        ns,
        name,
        json!({"spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": "example.com/miner:1"}]}}
        }}),
    )
}

/// A RoleBinding that would make the team's account cluster-admin wherever it lands.
fn admin_binding(ns: &str) -> Value {
    object(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        ns,
        "team-a-is-admin",
        json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "berth-backup", "namespace": TEAM_A}]
        }),
    )
}

/// Waits until the policy's sync adopted the backup `name` from the bucket.
async fn adopted(client: &kube::Client, ns: &str, name: &str) {
    let backups: Api<Backup> = Api::namespaced(client.clone(), ns);
    eventually(&format!("Backup {name} adopted from the bucket"), WAIT, || async {
        let b = backups.get_opt(name).await.ok()??;
        (b.status?.phase.as_deref() == Some("Completed")).then_some(())
    })
    .await;
}

/// Creates a Restore and waits until it ends; returns it and its Ready condition.
async fn restore(client: &kube::Client, ns: &str, name: &str, spec: Value) -> (Restore, Condition) {
    let _: Restore = create(
        client,
        ns,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": name}, "spec": spec}),
    )
    .await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), ns);
    eventually(&format!("Restore {name} ends"), WAIT, || async {
        let r = restores.get(name).await.ok()?;
        let status = r.status.as_ref()?;
        if !matches!(status.phase.as_deref(), Some("Completed" | "PartiallyFailed" | "Failed")) {
            return None;
        }
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        Some((r, ready))
    })
    .await
}

fn phase(r: &Restore) -> Option<&str> {
    r.status.as_ref()?.phase.as_deref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_kube_system_is_refused_and_writes_nothing_there() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[TEAM_A]).await;
    cluster.tenant_account(TEAM_A);
    let client = cluster.client();
    let _operator = operator(&cluster, &[], &[]).await;
    storage_secrets(&client, TEAM_A, &s3, KEY).await;

    // The team writes two backups into its own bucket: one whose objects name kube-system
    // themselves, one of its own namespace's objects, to be mapped into kube-system.
    let crafted = [deployment("kube-system", "miner"), admin_binding("kube-system")];
    craft_backup(&s3, TEAM_A, "crafted-1", &crafted, Vec::new()).await;
    craft_backup(&s3, TEAM_A, "own-1", &[deployment(TEAM_A, "miner"), admin_binding(TEAM_A)], Vec::new()).await;
    let _: BackupPolicy = create(&client, TEAM_A, policy(TEAM_A, &s3)).await;
    adopted(&client, TEAM_A, "crafted-1").await;
    adopted(&client, TEAM_A, "own-1").await;

    let mark = cluster.audit.mark();
    let (crafted, ready) = restore(&client, TEAM_A, "crafted", json!({"backupName": "crafted-1"})).await;
    assert_eq!(phase(&crafted), Some("Failed"), "{:?}", crafted.status);
    assert_eq!(ready.reason, "NotAuthorized", "{}", ready.message);
    assert!(
        ready.message.starts_with(
            "ServiceAccount team-a/berth-backup may not create deployments.apps in namespace \"kube-system\""
        ),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("create rolebindings.rbac.authorization.k8s.io in namespace \"kube-system\""),
        "{}",
        ready.message
    );
    let (mapped, ready) =
        restore(&client, TEAM_A, "mapped", json!({"backupName": "own-1", "namespaceMapping": {TEAM_A: "kube-system"}}))
            .await;
    assert_eq!(phase(&mapped), Some("Failed"), "{:?}", mapped.status);
    assert_eq!(ready.reason, "NotAuthorized", "{}", ready.message);
    assert!(ready.message.contains("deployments.apps in namespace \"kube-system\""), "{}", ready.message);
    assert_eq!(mapped.status.as_ref().unwrap().created, None, "nothing was created");

    // A dry run says so up front, object by object, and looks nothing up where it may not.
    let (looked, _) = restore(&client, TEAM_A, "look", json!({"backupName": "crafted-1", "dryRun": true})).await;
    assert_eq!(phase(&looked), Some("Completed"));
    let planned = looked.status.unwrap().planned;
    assert!(
        planned[0].starts_with("refused: ServiceAccount team-a/berth-backup may not create deployments.apps"),
        "{planned:?}"
    );
    assert!(planned.contains(&"refused Deployment kube-system/miner".to_string()), "{planned:?}");
    assert!(planned.contains(&"refused RoleBinding kube-system/team-a-is-admin".to_string()), "{planned:?}");

    // Nothing reached kube-system: not the objects, and no write of any kind (audit log).
    assert!(cluster.object("apps/v1", "Deployment", "kube-system", "miner").await.is_none());
    let binding = cluster.object("rbac.authorization.k8s.io/v1", "RoleBinding", "kube-system", "team-a-is-admin");
    assert!(binding.await.is_none());
    let writes: Vec<String> = cluster.audit.writes_in(mark, "kube-system").iter().map(|e| e.describe()).collect();
    assert!(writes.is_empty(), "writes into kube-system: {writes:#?}");
    // The decision was the account's: Berth asked the API server as team-a/berth-backup.
    let reviews = cluster
        .audit
        .impersonated_since(mark, support::cluster::OPERATOR_USER, "system:serviceaccount:team-a:berth-backup")
        .into_iter()
        .filter(|e| e.resource() == "selfsubjectaccessreviews")
        .count();
    assert!(reviews >= 2, "access reviews as the team's account: {reviews}");
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_into_another_teams_database_is_refused_and_no_secret_is_copied_there() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[TEAM_A, TEAM_B]).await;
    cluster.tenant_account(TEAM_A);
    cluster.tenant_account(TEAM_B);
    let client = cluster.client();
    let _operator = operator(&cluster, &[], &[]).await;
    storage_secrets(&client, TEAM_A, &s3, KEY).await;

    // Team B's database, of the name team A's backup holds a dump of.
    let _: DatabaseInstance = create(
        &client,
        TEAM_B,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
               "metadata": {"name": "orders-db"},
               "spec": {"engine": "postgres", "version": "15", "storage": {"size": "1Gi"}}}),
    )
    .await;
    let credentials: Api<Secret> = Api::namespaced(client.clone(), TEAM_B);
    eventually("team-b's orders-db-credentials", WAIT, || async {
        credentials.get_opt("orders-db-credentials").await.ok()?
    })
    .await;
    let dump = SnapshotRef { kind: "postgres".into(), snapshot: "ab".repeat(32), source: "orders-db".into(), bytes: 1 };
    craft_backup(&s3, TEAM_A, "orders-1", &[], vec![dump]).await;
    let _: BackupPolicy = create(&client, TEAM_A, policy(TEAM_A, &s3)).await;
    adopted(&client, TEAM_A, "orders-1").await;

    // Without any right in team-b: refused, naming the database rule.
    let mark = cluster.audit.mark();
    let into_b = json!({"backupName": "orders-1", "namespaceMapping": {TEAM_A: TEAM_B}});
    let (first, ready) = restore(&client, TEAM_A, "into-b", into_b.clone()).await;
    assert_eq!(phase(&first), Some("Failed"), "{:?}", first.status);
    assert_eq!(ready.reason, "NotAuthorized", "{}", ready.message);
    for refused in [
        "update databaseinstances.berth.dev \"orders-db\" in namespace \"team-b\"",
        "get secrets \"orders-db-credentials\" in namespace \"team-b\"",
        "create jobs.batch in namespace \"team-b\"",
        "create secrets in namespace \"team-b\"",
    ] {
        assert!(ready.message.contains(refused), "{refused:?} not in: {}", ready.message);
    }
    assert!(ready.message.contains("pg_restore --clean"), "{}", ready.message);

    // Team B lets team A run Jobs and read and create Secrets, but not change its instance:
    // still refused, and the instance is the one request named.
    cluster.kubectl_apply(
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "almost", "namespace": TEAM_B},
             "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
                       {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
                       {"apiGroups": ["berth.dev"], "resources": ["databaseinstances"], "verbs": ["get"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "almost", "namespace": TEAM_B},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "almost"},
             "subjects": [{"kind": "ServiceAccount", "name": "berth-backup", "namespace": TEAM_A}]}
        ]})
        .to_string()
        .as_bytes(),
    );
    let (second, ready) = restore(&client, TEAM_A, "into-b-again", into_b).await;
    assert_eq!(phase(&second), Some("Failed"), "{:?}", second.status);
    assert_eq!(ready.reason, "NotAuthorized", "{}", ready.message);
    assert!(
        ready.message.starts_with(
            "ServiceAccount team-a/berth-backup may not update databaseinstances.berth.dev \"orders-db\" in namespace \
             \"team-b\", which this restore needs; nothing was restored. Refused: update databaseinstances.berth.dev \
             \"orders-db\" in namespace \"team-b\". A database dump is restored"
        ),
        "{}",
        ready.message
    );

    // No Job ran against team B's database, no Secret of team A's reached team-b, and nothing
    // in team-b was written on team A's behalf.
    let jobs: Api<Job> = Api::namespaced(client.clone(), TEAM_B);
    assert!(jobs.list(&ListParams::default()).await.unwrap().items.is_empty(), "a Job ran in team-b");
    for copied in ["s3-credentials", "repository-key"] {
        assert!(credentials.get_opt(copied).await.unwrap().is_none(), "{copied} was copied into team-b");
    }
    let team_a = "system:serviceaccount:team-a:berth-backup";
    let on_behalf: Vec<String> = cluster
        .audit
        .impersonated_since(mark, support::cluster::OPERATOR_USER, team_a)
        .iter()
        .filter(|e| e.is_write() && e.object_ref.as_ref().is_some_and(|o| o.namespace == TEAM_B))
        .map(|e| e.describe())
        .collect();
    assert!(on_behalf.is_empty(), "the operator wrote into team-b for team-a: {on_behalf:#?}");
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_forbidden_account_ends_with_a_condition_that_names_it() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[TEAM_A]).await;
    let client = cluster.client();
    // Enforced as the chart does it: the operator may impersonate `berth-backup` accounts only
    // (a resourceNames rule the API server applies to impersonation).
    let enforced = ["--set", "tenancy.enforceDefaultServiceAccount=true"];
    let _operator = operator(&cluster, &enforced, &["--enforce-default-service-account=true"]).await;
    storage_secrets(&client, TEAM_A, &s3, KEY).await;

    // No account yet: the policy says which one to create, and how.
    let _: BackupPolicy = create(&client, TEAM_A, policy(TEAM_A, &s3)).await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), TEAM_A);
    let ready = eventually("BackupPolicy Ready=False ServiceAccountNotFound", WAIT, || async {
        let p = policies.get("nightly").await.ok()?;
        let c = p.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.reason == "ServiceAccountNotFound").then_some(c)
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(ready.message.starts_with("ServiceAccount team-a/berth-backup does not exist"), "{}", ready.message);
    assert!(ready.message.contains("kubectl create serviceaccount -n team-a berth-backup"), "{}", ready.message);
    let (missing, ready) = restore(&client, TEAM_A, "too-early", json!({"policyName": "nightly"})).await;
    assert_eq!(phase(&missing), Some("Failed"));
    assert_eq!(ready.reason, "ServiceAccountNotFound", "{}", ready.message);

    // With the account, a Restore that names another one is refused: the admin enforces it.
    cluster.tenant_account(TEAM_A);
    let (other, ready) =
        restore(&client, TEAM_A, "as-admin", json!({"policyName": "nightly", "serviceAccountName": "admin"})).await;
    assert_eq!(phase(&other), Some("Failed"));
    assert_eq!(ready.reason, "ServiceAccountNotAllowed", "{}", ready.message);
    assert!(ready.message.starts_with("spec.serviceAccountName: \"admin\" is not allowed"), "{}", ready.message);
    assert!(ready.message.contains("--enforce-default-service-account"), "{}", ready.message);

    // And the policy recovers once the account exists (checked every 30 s).
    eventually("BackupPolicy Ready=True", Duration::from_secs(60), || async {
        let p = policies.get("nightly").await.ok()?;
        let c = p.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (c.status == "True").then_some(())
    })
    .await;
    cluster.assert_clean().await;

    // An account whose Role lacks what a backup reads: the Backup ends, naming the account and
    // the fix, instead of retrying forever. Those refused reads are the only 403s.
    const TEAM_C: &str = "team-c";
    cluster.namespace(TEAM_C).await;
    let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "berth-backup", "namespace": TEAM_C}});
    cluster.kubectl_apply(account.to_string().as_bytes());
    storage_secrets(&client, TEAM_C, &s3, KEY).await;
    let mut with_databases = policy(TEAM_C, &s3);
    with_databases["spec"]["scope"]["databases"] = json!(true);
    let _: BackupPolicy = create(&client, TEAM_C, with_databases).await;
    let backup_ends = |name: &'static str| {
        let backups: Api<Backup> = Api::namespaced(client.clone(), TEAM_C);
        let client = client.clone();
        async move {
            let _: Backup = create(
                &client,
                TEAM_C,
                json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
                       "spec": {"policyName": "nightly"}}),
            )
            .await;
            let status = eventually(&format!("Backup {name} ends"), WAIT, || async {
                let status = backups.get(name).await.ok()?.status?;
                matches!(status.phase.as_deref(), Some("Completed" | "PartiallyFailed" | "Failed")).then_some(status)
            })
            .await;
            assert_eq!(status.phase.as_deref(), Some("Failed"), "{status:?}");
            status.conditions.into_iter().find(|c| c.type_ == "Ready").unwrap()
        }
    };
    // No Role at all: the storage Secrets cannot be read as the account.
    // (A Backup's Ready reason is its phase; the failure's reason leads the message.)
    let ready = backup_ends("no-role").await;
    assert!(
        ready.message.starts_with(
            "Forbidden: spec.storage: the ServiceAccount Berth acts as in this namespace may not read Secret \"s3-credentials\""
        ),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("grant it get on Secrets"), "{}", ready.message);
    // Secrets only: the databases to back up cannot be listed.
    let secrets_only = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "secrets", "namespace": TEAM_C},
         "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "secrets", "namespace": TEAM_C},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secrets"},
         "subjects": [{"kind": "ServiceAccount", "name": "berth-backup", "namespace": TEAM_C}]}]});
    cluster.kubectl_apply(secrets_only.to_string().as_bytes());
    let ready = backup_ends("secrets-only").await;
    assert!(
        ready.message.starts_with(
            "Forbidden: cannot list the databases and volumes to back up as ServiceAccount team-c/berth-backup"
        ),
        "{}",
        ready.message
    );
    let forbidden = cluster.audit.forbidden(support::cluster::OPERATOR_USER);
    assert!(!forbidden.is_empty());
    assert!(
        forbidden.iter().all(|f| f.contains("team-c/") && f.contains("as system:serviceaccount:team-c:berth-backup")),
        "{forbidden:#?}"
    );
}

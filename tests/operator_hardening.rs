//! States no one could clear, on the real control plane (tests/support/cluster) with the
//! operator holding only the chart's RBAC:
//! - an export error (an `extraResources` kind the server does not serve) ends the Backup
//!   PartiallyFailed with the failed item listed, instead of InProgress forever;
//! - the data finalizer is added beside other finalizers, never over them;
//! - deleting a Backup whose storage cannot be reached keeps the finalizer and says why in
//!   `DataDeleted`, until the documented annotation lets it go with its data left in the bucket;
//! - offsite replication runs beside the policy's reconcile, its progress in status, and stops
//!   when its policy is deleted;
//! - a policy without `credentialsSecret` gets the operator's own cloud identity only when the
//!   cluster admin allows it (`--allow-operator-storage-identity`);
//! - a Restore that cannot finish ends Failed with `TimedOut` when `spec.timeout` runs out, and
//!   the API server refuses a timeout that is not a duration.

use crate::support;

use std::path::Path;
use std::time::Duration;

use berth::api::{Backup, BackupPolicy, Restore};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::objects::{create, storage_secrets};
use support::operator::Operator;
use support::servers::S3Server;
use support::wait::eventually;

const NS: &str = "shop";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(120);
const FOREIGN_FINALIZER: &str = "example.com/hold";

async fn cluster() -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    cluster.namespace(NS).await;
    // Berth acts as the namespace's `berth-backup` account (deploy/tenant/).
    cluster.tenant_account(NS);
    cluster
}

async fn operator(cluster: &Cluster) -> Operator {
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--leader-election=false"]);
    operator.wait_ready(WAIT);
    operator
}

fn policy(s3: &S3Server, extra_resources: &[&str]) -> Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {
            "schedule": "0 3 * * *", "suspend": true,
            "storage": {"bucket": "backups", "prefix": "shop", "region": s3.region, "endpoint": s3.endpoint,
                        "forcePathStyle": true, "insecureHTTP": true, "credentialsSecret": "s3-credentials",
                        "encryptionKeySecret": "repository-key"},
            "scope": {"databases": false, "extraResources": extra_resources},
            "retention": {"keepLast": 5}
        }
    })
}

fn phase(b: &Backup) -> Option<&str> {
    b.status.as_ref()?.phase.as_deref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_errors_end_the_backup_and_unreachable_storage_never_traps_its_deletion() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster().await;
    let client = cluster.client();
    let _operator = operator(&cluster).await;
    storage_secrets(&client, NS, &s3, KEY).await;
    let _: BackupPolicy = create(&client, NS, policy(&s3, &["nosuchthings.example.com"])).await;
    let _: Backup = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "by-hand", "finalizers": [FOREIGN_FINALIZER]},
            "spec": {"policyName": "nightly", "deleteData": true}
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);

    // The export of the unknown kind fails; the rest is backed up and the Backup ends.
    let ended = eventually("the Backup ends", WAIT, || async {
        let b = backups.get("by-hand").await.ok()?;
        matches!(phase(&b), Some("Completed" | "PartiallyFailed" | "Failed")).then_some(b)
    })
    .await;
    assert_eq!(phase(&ended), Some("PartiallyFailed"), "{ended:?}");
    let items = &ended.status.as_ref().unwrap().items;
    let resources = items.iter().find(|i| i.name == "resources").expect("resources item");
    assert_eq!(resources.phase, "Completed", "{items:?}");
    let extra = items.iter().find(|i| i.name == "resources/nosuchthings.example.com").expect("the failed kind's item");
    assert_eq!(extra.phase, "Failed");
    let error = extra.error.as_deref().unwrap_or_default();
    assert!(error.contains("spec.scope.extraResources") && error.contains("serves no resource"), "{error}");
    // Both finalizers: the operator's was added beside the foreign one, not over it.
    let finalizers = ended.metadata.finalizers.clone().unwrap_or_default();
    assert!(finalizers.iter().any(|f| f == FOREIGN_FINALIZER), "{finalizers:?}");
    assert!(finalizers.iter().any(|f| f == "berth.dev/backup-data"), "{finalizers:?}");
    let manifest = s3.root().join("backups/shop/backups/by-hand");
    assert!(manifest.exists(), "the Backup wrote its manifest under {}", manifest.display());

    // The storage goes away; deleting the Backup cannot delete its data and says so.
    let closed = support::operator::free_port();
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    let endpoint = json!({"spec": {"storage": {"endpoint": format!("http://127.0.0.1:{closed}")}}});
    policies.patch("nightly", &PatchParams::default(), &Patch::Merge(&endpoint)).await.unwrap();
    backups.delete("by-hand", &DeleteParams::default()).await.unwrap();
    let blocked = eventually("DataDeleted=False", WAIT, || async {
        let b = backups.get("by-hand").await.ok()?;
        let c = b.status?.conditions.into_iter().find(|c| c.type_ == "DataDeleted")?;
        (c.status == "False").then_some(c)
    })
    .await;
    assert_eq!(blocked.reason, "StorageUnreachable");
    assert!(
        blocked.message.contains("kubectl annotate backup by-hand -n shop berth.dev/skip-data-deletion=true"),
        "{}",
        blocked.message
    );
    let still = backups.get("by-hand").await.unwrap();
    assert!(still.metadata.finalizers.clone().unwrap_or_default().iter().any(|f| f == "berth.dev/backup-data"));
    assert_eq!(phase(&still), Some("PartiallyFailed"), "the status (and its snapshot ids) survived the condition");

    // The annotation lets it go; the data stays in the bucket and the foreign finalizer stays.
    let skip = json!({"metadata": {"annotations": {"berth.dev/skip-data-deletion": "true"}}});
    backups.patch("by-hand", &PatchParams::default(), &Patch::Merge(&skip)).await.unwrap();
    let released = eventually("the data finalizer released", WAIT, || async {
        let b = backups.get("by-hand").await.ok()?;
        let f = b.metadata.finalizers.clone().unwrap_or_default();
        (!f.iter().any(|f| f == "berth.dev/backup-data")).then_some(f)
    })
    .await;
    assert_eq!(released, vec![FOREIGN_FINALIZER.to_string()]);
    assert!(manifest.exists(), "the data stays in the bucket");
    let rest = json!({"metadata": {"finalizers": null}});
    backups.patch("by-hand", &PatchParams::default(), &Patch::Merge(&rest)).await.unwrap();
    eventually("the Backup is gone", WAIT, || async { backups.get_opt("by-hand").await.ok()?.is_none().then_some(()) })
        .await;
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_cannot_finish_ends_at_its_timeout() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster().await;
    let client = cluster.client();
    let _operator = operator(&cluster).await;
    storage_secrets(&client, NS, &s3, KEY).await;
    let _: BackupPolicy = create(&client, NS, policy(&s3, &[])).await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), NS);

    // The schema admits only hours, minutes and seconds.
    let bad = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "bad", "namespace": NS},
        "spec": {"policyName": "nightly", "timeout": "1d"}
    });
    let err = restores.create(&PostParams::default(), &serde_json::from_value(bad).unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("spec.timeout"), "{err}");

    // The target namespace never comes: the restore waits for it until its timeout.
    let _: Restore = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "stuck"},
            "spec": {"policyName": "nightly", "namespaceMapping": {NS: "never-created"}, "timeout": "5s"}
        }),
    )
    .await;
    let failed = eventually("the Restore ends", WAIT, || async {
        let r = restores.get("stuck").await.ok()?;
        let p = r.status.as_ref()?.phase.clone()?;
        matches!(p.as_str(), "Completed" | "PartiallyFailed" | "Failed").then_some(r)
    })
    .await;
    let status = failed.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "TimedOut", "{ready:?}");
    assert!(ready.message.contains("spec.timeout"), "{}", ready.message);
    cluster.assert_clean().await;
}

/// A TCP server that accepts connections and never answers, counting the open ones: an
/// offsite location that hangs.
struct Blackhole {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Blackhole {
    fn start() -> Self {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { port, open, accepted }
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsite_replication_runs_beside_the_reconcile_and_stops_with_its_policy() {
    let (s3, offsite) = (S3Server::start(), S3Server::start());
    s3.create_bucket("backups");
    offsite.create_bucket("offsite");
    let cluster = cluster().await;
    let client = cluster.client();
    let _operator = operator(&cluster).await;
    storage_secrets(&client, NS, &s3, KEY).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let creds = [("AWS_ACCESS_KEY_ID", &offsite.access_key), ("AWS_SECRET_ACCESS_KEY", &offsite.secret_key)];
    let data = creds.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("offsite-credentials".into()), ..Default::default() },
        data: Some(data),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let mut spec = policy(&s3, &[]);
    spec["spec"]["offsite"] = json!({
        "bucket": "offsite", "prefix": "shop-copy", "region": offsite.region, "endpoint": offsite.endpoint,
        "forcePathStyle": true, "insecureHTTP": true, "credentialsSecret": "offsite-credentials", "encryptionKeySecret": "repository-key"
    });
    let _: BackupPolicy = create(&client, NS, spec).await;
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    let by_hand = |name: &str| {
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
               "spec": {"policyName": "nightly"}})
    };

    // A completed backup is copied offsite by a run that the status reports.
    let _: Backup = create(&client, NS, by_hand("first")).await;
    let status = eventually("first replicated", WAIT, || async {
        let st = policies.get("nightly").await.ok()?.status?;
        (st.last_replicated_backup.as_deref() == Some("first")).then_some(st)
    })
    .await;
    let run = status.maintenance.expect("the run is in the status");
    assert_eq!(run.phase, "Succeeded", "{run:?}");
    assert!(run.message.unwrap_or_default().contains("replicated to spec.offsite"));
    assert!(offsite.root().join("offsite/shop-copy/backups/first").exists(), "the manifest is offsite");

    // The offsite location hangs: the run goes on beside the reconcile, which keeps working.
    let hole = Blackhole::start();
    let hang = json!({"spec": {"offsite": {"endpoint": format!("http://127.0.0.1:{}", hole.port)}}});
    policies.patch("nightly", &PatchParams::default(), &Patch::Merge(&hang)).await.unwrap();
    let _: Backup = create(&client, NS, by_hand("second")).await;
    eventually("a run hangs on the offsite location", WAIT, || async {
        let st = policies.get("nightly").await.ok()?.status?;
        let running = st.maintenance.is_some_and(|m| m.phase == "Running");
        (running && hole.open() > 0).then_some(())
    })
    .await;
    let _: Backup = create(&client, NS, by_hand("third")).await;
    eventually("the policy still reconciles: third is its newest success", WAIT, || async {
        let st = policies.get("nightly").await.ok()?.status?;
        let running = st.maintenance.is_some_and(|m| m.phase == "Running");
        (running && st.last_successful_backup.as_deref() == Some("third")).then_some(())
    })
    .await;
    assert_eq!(policies.get("nightly").await.unwrap().status.unwrap().last_replicated_backup.as_deref(), Some("first"));

    // Deleting the policy stops the run: its connections to the offsite location close.
    policies.delete("nightly", &DeleteParams::default()).await.unwrap();
    eventually("the run stopped", WAIT, || async { (hole.open() == 0).then_some(()) }).await;
    let accepted = hole.accepted();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(hole.accepted(), accepted, "no new attempt after the policy is gone");
    cluster.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_cloud_identity_is_lent_only_where_the_admin_allows_it() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster().await;
    let client = cluster.client();
    storage_secrets(&client, NS, &s3, KEY).await;
    let mut spec = policy(&s3, &[]);
    spec["spec"]["storage"].as_object_mut().unwrap().remove("credentialsSecret");
    let _: BackupPolicy = create(&client, NS, spec).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    let by_hand = |name: &str| {
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
               "spec": {"policyName": "nightly"}})
    };
    let ended = |name: &'static str| {
        let backups = backups.clone();
        async move {
            eventually(&format!("{name} ends"), WAIT, || async {
                let b = backups.get(name).await.ok()?;
                matches!(phase(&b), Some("Completed" | "PartiallyFailed" | "Failed")).then_some(b)
            })
            .await
        }
    };
    // The operator holds credentials of its own (as an IRSA role would give it).
    let own_identity =
        [("AWS_ACCESS_KEY_ID", s3.access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str())];
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;

    // By default a policy without credentialsSecret does not get them.
    let mut operator = Operator::start_with_env(&kubeconfig, &["--leader-election=false"], &own_identity);
    operator.wait_ready(WAIT);
    let _: Backup = create(&client, NS, by_hand("borrowed")).await;
    let refused = ended("borrowed").await;
    assert_eq!(phase(&refused), Some("Failed"));
    let ready = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready.message.starts_with("CredentialsRequired: spec.storage.credentialsSecret is not set"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("--allow-operator-storage-identity"), "{}", ready.message);
    assert!(!s3.root().join("backups/shop/config").exists(), "nothing was written with the operator's identity");
    assert_eq!(operator.terminate().code(), Some(0));

    // A cluster admin who allows it lends the operator's identity.
    let allowed = ["--leader-election=false", "--allow-operator-storage-identity=true"];
    let mut operator = Operator::start_with_env(&kubeconfig, &allowed, &own_identity);
    operator.wait_ready(WAIT);
    let _: Backup = create(&client, NS, by_hand("lent")).await;
    assert_eq!(phase(&ended("lent").await), Some("Completed"));
    assert!(s3.root().join("backups/shop/config").exists(), "the repository now exists where the refusal found none");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

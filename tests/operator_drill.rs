//! Restore drills (BackupPolicy `spec.verify`) end to end: the real operator on the real
//! control plane (tests/support/cluster) as the chart's ServiceAccount, the agent Jobs run by
//! the kubelet stand-in against real PostgreSQL 15 servers and a real S3 server (s3s-fs). The
//! drill namespace's `orders-db` is its own PostgreSQL, so that a drill can be told from a
//! write to the source.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth::api::{Backup, BackupPolicy, DatabaseInstance};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::objects::{create, create_secret, repo, secret_value, storage_secrets};
use support::operator::Operator;
use support::servers::{Postgres, RabbitMq, S3Server};
use support::wait::eventually;

const NS: &str = "shop";
const DRILL: &str = "shop-drill";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(120);
/// A drill fires every minute, then restores and checks.
const DRILL_WAIT: Duration = Duration::from_secs(240);

/// Row count and md5 of the source's table: what a drill must never change.
fn checksum(pg: &Postgres) -> String {
    pg.psql("orders", "SELECT count(*) || ':' || md5(string_agg(id::text || name, ',' ORDER BY id)) FROM items")
        .trim()
        .to_string()
}

/// The biggest pack of the bucket's repository: the database dump's data.
/// Every path below `root` with its content (files) or target (symlinks), in order.
fn tree_digest(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            let content = if kind.is_dir() {
                pending.push(path.clone());
                Vec::new()
            } else if kind.is_symlink() {
                std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), content));
        }
    }
    out.sort();
    out
}

fn biggest_pack(root: &Path) -> PathBuf {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { walk(&path, out) } else { out.push(path) }
        }
    }
    let mut packs = Vec::new();
    walk(&root.join("backups/shop/data"), &mut packs);
    packs.retain(|p| p.file_name().unwrap().to_str().unwrap().len() == 64);
    packs.into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).expect("packs in the bucket")
}

/// Removes the checksums s3s-fs stored beside the object at `path` (of bucket `backups`): its
/// internal info file is named after the base64 of bucket and key.
fn forget_stored_checksums(root: &Path, path: &Path) {
    use base64::Engine;
    let key = path.strip_prefix(root.join("backups")).unwrap().to_str().unwrap();
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let info_path = root.join(format!(".bucket-{}.object-{}.internal.json", encode("backups"), encode(key)));
    let mut info: serde_json::Map<String, Value> = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    let before = info.len();
    info.retain(|k, _| !k.starts_with("checksum_"));
    assert!(info.len() < before, "no checksum stored for {key}: {info:?}");
    std::fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drill_verifies_a_good_backup_and_names_a_damaged_pack() {
    let (mut pg, mut pg_drill, s3) = (Postgres::start(), Postgres::start(), S3Server::start());
    let (mut mq, mut mq_drill) = (RabbitMq::start(), RabbitMq::start());
    s3.create_bucket("backups");
    let overrides = [
        (format!("orders-db.{NS}.svc:5432"), format!("127.0.0.1:{}", pg.port)),
        (format!("orders-db.{DRILL}.svc:5432"), format!("127.0.0.1:{}", pg_drill.port)),
        (format!("events.{NS}.svc:15672"), format!("127.0.0.1:{}", mq.mgmt_port)),
        (format!("events.{DRILL}.svc:15672"), format!("127.0.0.1:{}", mq_drill.mgmt_port)),
    ];
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    for ns in [NS, DRILL] {
        cluster.namespace(ns).await;
    }
    // What the admins grant: shop's account restores into the drill namespace, and may empty it.
    cluster.tenant_account(NS);
    cluster.tenant_grant(NS, DRILL);
    let drill_role = std::fs::read_to_string(repo().join("deploy/tenant/berth-drill.yaml")).unwrap();
    cluster.kubectl_apply(
        drill_role
            .replace("team-a-drill", DRILL)
            .replace("namespace: team-a\n", &format!("namespace: {NS}\n"))
            .as_bytes(),
    );
    let kubelet = cluster.kubelet();
    kubelet.with_env("AWS_EC2_METADATA_DISABLED", "true");
    for (from, to) in &overrides {
        kubelet.with_host_override(from.clone(), to.clone());
    }
    let start = cluster.audit.mark();
    let client = cluster.client();
    let overrides_arg: Vec<String> = overrides.iter().map(|(a, b)| format!("{a}={b}")).collect();
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator =
        Operator::start(&kubeconfig, &["--leader-election=false", "--endpoint-overrides", &overrides_arg.join(",")]);
    operator.wait_ready(WAIT);

    storage_secrets(&client, NS, &s3, KEY).await;
    let _: DatabaseInstance = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance", "metadata": {"name": "orders-db"},
            "spec": {"engine": "postgres", "version": "15", "storage": {"size": "1Gi"},
                     "roles": [{"name": "app"}], "databases": [{"name": "orders", "owner": "app"}]}
        }),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let admin = eventually("orders-db credentials", WAIT, || async {
        secrets.get_opt("orders-db-credentials").await.ok().flatten()
    })
    .await;
    // The images' entrypoints would start both servers with the (restored) admin password.
    let password = secret_value(&admin, "password");
    for server in [&mut pg, &mut pg_drill] {
        server.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{password}'"));
        server.password = password.clone();
    }
    let _: DatabaseInstance = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance", "metadata": {"name": "events"},
            "spec": {"engine": "rabbitmq", "version": "4.1", "storage": {"size": "1Gi"}, "vhosts": ["orders"],
                     "users": [{"name": "orders-app", "permissions": [{"vhost": "orders"}]}]}
        }),
    )
    .await;
    let mq_admin =
        eventually("events credentials", WAIT, || async { secrets.get_opt("events-credentials").await.ok().flatten() })
            .await;
    let mq_password = secret_value(&mq_admin, "password");
    for server in [&mut mq, &mut mq_drill] {
        let user = json!({"password": mq_password, "tags": "administrator"}).to_string();
        server.api_ok("PUT", "/api/users/admin", Some(&user));
        server.api_ok("PUT", "/api/permissions/%2F/admin", Some(r#"{"configure":".*","write":".*","read":".*"}"#));
        server.user = "admin".into();
        server.password = mq_password.clone();
    }
    let instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    for name in ["orders-db", "events"] {
        eventually(&format!("{name} Ready"), WAIT, || async {
            let db = instances.get(name).await.ok()?;
            db.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        })
        .await;
    }
    // A queue only the backup's definitions bring back (provisioning makes vhosts and users).
    mq.api_ok("PUT", "/api/queues/orders/jobs", Some(r#"{"durable":true}"#));
    pg.psql(
        "orders",
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g; \
         CREATE TABLE notes (body text); INSERT INTO notes VALUES ('a'), ('b')",
    );
    let before = checksum(&pg);
    // An app's volume with files in nested directories: the drill restores it and counts them.
    let _: berth::api::AppEnvironment = create(
        &client,
        NS,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "web"},
               "spec": {"tier": "development", "image": "ghcr.io/example/web:1"}}),
    )
    .await;
    let _: PersistentVolumeClaim = create(
        &client,
        NS,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "web-data", "labels": {"berth.dev/appenvironment": "web"}},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    let data = eventually("web-data bound", WAIT, || async { cluster.kubelet().pvc_dir(NS, "web-data").await }).await;
    let mut bytes = 0;
    for i in 0..30 {
        let dir = data.join(format!("uploads/{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let body = format!("upload {i}\n").repeat(i + 1);
        bytes += body.len();
        std::fs::write(dir.join(format!("{i}.txt")), body).unwrap();
    }
    // Not counted, on either side: a symlink is not a file.
    std::os::unix::fs::symlink("uploads/0/0.txt", data.join("latest")).unwrap();
    let volume_before = tree_digest(&data);

    // A policy whose drills run every minute, and one Backup of it.
    let policy = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {
            "schedule": "0 3 * * *", "suspend": true,
            "storage": {"bucket": "backups", "prefix": "shop", "region": s3.region, "endpoint": s3.endpoint,
                        "insecureHTTP": true, "forcePathStyle": true, "credentialsSecret": "s3-credentials",
                        "encryptionKeySecret": "repository-key"},
            "scope": {"databases": true, "volumes": true},
            "verify": {"schedule": "* * * * *", "namespace": DRILL, "timeout": "10m"}
        }
    });
    let _: BackupPolicy = create(&client, NS, policy).await;
    let _: Backup = create(
        &client,
        NS,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "manual-1"},
               "spec": {"policyName": "nightly"}}),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    eventually("manual-1 Completed", WAIT, || async {
        let phase = backups.get("manual-1").await.ok()?.status?.phase?;
        assert!(phase != "Failed" && phase != "PartiallyFailed", "the backup ended {phase}");
        (phase == "Completed").then_some(())
    })
    .await;

    // The drill restores the backup into the drill namespace, checks it, and passes.
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    let passed = eventually("a drill passes", DRILL_WAIT, || async {
        let status = policies.get("nightly").await.ok()?.status?;
        let last = status.last_verified_restore.clone()?;
        assert_eq!(last.result, "Passed", "{last:?}");
        Some(status)
    })
    .await;
    let last = passed.last_verified_restore.clone().unwrap();
    assert_eq!(last.backup, "manual-1");
    assert!(last.message.contains("orders-db: 2 databases, 2 tables, 502 rows as recorded"), "{}", last.message);
    // The root, uploads and its four directories; counted by an agent Job on the drill's claim.
    let counted = format!("web-data: 30 files, 6 directories, {bytes} bytes as recorded");
    assert!(last.message.contains(&counted), "{counted} in: {}", last.message);
    let count = cluster.kubelet().runs().into_iter().find(|r| r.args.iter().any(|a| a == "count-dir"));
    let count = count.expect("a count-dir Job ran");
    assert_eq!((count.namespace.as_str(), count.exit_code), (DRILL, Some(0)), "{count:?}");
    assert!(
        last.message.contains("events: ") && last.message.contains("RabbitMQ definitions as recorded"),
        "{}",
        last.message
    );
    mq_drill.api_ok("GET", "/api/queues/orders/jobs", None);
    let verified = passed.conditions.iter().find(|c| c.type_ == "RestoreVerified").expect("RestoreVerified");
    assert_eq!((verified.status.as_str(), verified.reason.as_str()), ("True", "DrillPassed"), "{verified:?}");
    // The drill's server got the backup's rows; the source is as it was.
    assert_eq!(pg_drill.psql("orders", "SELECT count(*) FROM items").trim(), "500");
    assert_eq!(checksum(&pg), before, "a drill changed the source");
    assert_eq!(tree_digest(&data), volume_before, "a drill changed the source volume");
    // The drill namespace was emptied after the pass, and its Restore removed.
    let drill_instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), DRILL);
    assert!(drill_instances.list(&ListParams::default()).await.unwrap().items.is_empty());
    let drill_secrets: Api<Secret> = Api::namespaced(client.clone(), DRILL);
    let left: Vec<String> = drill_secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() != Some("kubernetes.io/service-account-token"))
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(left.is_empty(), "left in the drill namespace: {left:?}");
    // The agent Jobs went too: a finished pod would keep its claim for the Jobs' day of TTL.
    let drill_jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), DRILL);
    assert!(drill_jobs.list(&ListParams::default()).await.unwrap().items.is_empty(), "agent Jobs left");
    let drill_claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), DRILL);
    assert!(drill_claims.list(&ListParams::default()).await.unwrap().items.is_empty(), "claims left");

    // Damage one pack in the bucket (same size, other bytes): the next drill fails, names it,
    // and leaves the drill namespace as it is.
    let pack = biggest_pack(s3.root());
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&pack, &bytes).unwrap();
    let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();
    // s3s-fs keeps the upload's checksum beside the object, and the S3 client would refuse the
    // changed bytes on its own; a server without one (bit rot it cannot see) is what Berth's
    // own verification must catch, so the record goes.
    forget_stored_checksums(s3.root(), &pack);
    create_secret(&client, DRILL, "left-by-someone", &[("note", "inspect me")]).await;
    let failed = eventually("the next drill fails", DRILL_WAIT, || async {
        let status = policies.get("nightly").await.ok()?.status?;
        let last = status.last_verified_restore.clone()?;
        (last.started_at != passed.last_verified_restore.as_ref()?.started_at).then_some(status)
    })
    .await;
    let last = failed.last_verified_restore.clone().unwrap();
    assert_eq!(last.result, "Failed", "{last:?}");
    assert!(
        last.message.starts_with("RepositoryDataDamaged: check --read-data of backup manual-1"),
        "{}",
        last.message
    );
    assert!(last.message.contains(&pack_name), "the damaged pack {pack_name} is named: {}", last.message);
    let verified = failed.conditions.iter().find(|c| c.type_ == "RestoreVerified").expect("RestoreVerified");
    assert_eq!((verified.status.as_str(), verified.reason.as_str()), ("False", "DrillFailed"), "{verified:?}");
    assert_eq!(failed.drill.as_ref().map(|d| d.phase.as_str()), Some("Kept"));
    assert!(drill_secrets.get_opt("left-by-someone").await.unwrap().is_some(), "a failed drill's namespace is kept");
    assert_eq!(checksum(&pg), before, "a drill changed the source");
    // The drills wrote nothing in the source namespace as its account but through a Restore.
    let source_writes: Vec<_> = cluster
        .audit
        .writes_since(start, support::cluster::OPERATOR_USER)
        .into_iter()
        .filter(|e| e.verb == "delete" && e.object_ref.as_ref().is_some_and(|o| o.namespace == NS))
        .filter(|e| e.resource() != "restores")
        .collect();
    assert!(source_writes.is_empty(), "deletes in the source namespace: {source_writes:?}");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

//! BackupPolicy, Backup and Restore end to end: the real operator on a real control plane
//! (tests/support/cluster) as the chart's ServiceAccount, in namespaces enforcing Pod Security
//! `restricted`. The real Job controller runs the agent Jobs; the kubelet stand-in runs each Job
//! pod's `berth agent` command as a local process (as the pod's user), against a real S3 server
//! (s3s-fs), real PostgreSQL 15 servers and a real RabbitMQ on loopback. In-cluster Service
//! names reach the loopback servers through the operator's `--endpoint-overrides` and the
//! kubelet's host overrides.

use crate::support;

use std::time::Duration;

use berth::api::{Backup, BackupPolicy, DatabaseInstance, Restore};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::external_secrets;
use support::objects::{create, create_secret, repo, secret_value, storage_secrets};
use support::operator::Operator;
use support::servers::{Postgres, RabbitMq, S3Server};
use support::wait::eventually;

const NS: &str = "shop";
const OTHER: &str = "shop-restored";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(120);

/// A control plane with Berth's CRDs and the namespaces `NS` and `OTHER`, the kubelet
/// stand-in's agent processes configured by `servers`.
async fn cluster(overrides: &[(String, String)]) -> Cluster {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    for ns in [NS, OTHER] {
        cluster.namespace(ns).await;
    }
    // What each namespace's admin grants (deploy/tenant/): Berth acts as `berth-backup`, and
    // shop's account may restore into shop-restored.
    cluster.tenant_account(NS);
    cluster.tenant_grant(NS, OTHER);
    let kubelet = cluster.kubelet();
    kubelet.with_env("AWS_EC2_METADATA_DISABLED", "true");
    for (from, to) in overrides {
        kubelet.with_host_override(from.clone(), to.clone());
    }
    cluster
}

/// The operator as the chart's ServiceAccount, with `args`.
async fn operator(cluster: &Cluster, args: &[&str]) -> Operator {
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, args);
    operator.wait_ready(WAIT);
    operator
}

fn policy(s3: &S3Server, schedule: &str, suspend: bool) -> Value {
    json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": NS},
        "spec": {
            "schedule": schedule, "suspend": suspend,
            "storage": {"bucket": "backups", "prefix": "shop", "region": s3.region, "endpoint": s3.endpoint,
                        "insecureHTTP": true, "forcePathStyle": true, "credentialsSecret": "s3-credentials",
                        "encryptionKeySecret": "repository-key"},
            "scope": {"databases": true},
            "retention": {"keepLast": 5}
        }
    })
}

async fn wait_phase<K>(api: &Api<K>, name: &str, wanted: &str, phase: impl Fn(&K) -> Option<String>) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} {wanted}"), WAIT, || async {
        let obj = api.get(name).await.ok()?;
        let p = phase(&obj)?;
        assert!(
            p == wanted || !matches!(p.as_str(), "Completed" | "Failed" | "PartiallyFailed"),
            "{name} ended {p}, not {wanted}: {obj:?}"
        );
        (p == wanted).then_some(obj)
    })
    .await
}

fn restore_phase(r: &Restore) -> Option<String> {
    r.status.as_ref()?.phase.clone()
}

fn backup_phase(b: &Backup) -> Option<String> {
    b.status.as_ref()?.phase.clone()
}

/// The real servers. Each namespace's `orders-db` is its own PostgreSQL, so that a restore
/// into the other namespace can be told from an overwrite of the source.
struct Servers {
    pg: Postgres,
    pg_other: Postgres,
    mq: RabbitMq,
    s3: S3Server,
}

impl Servers {
    fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (ns, pg) in [(NS, &self.pg), (OTHER, &self.pg_other)] {
            out.push((format!("orders-db.{ns}.svc:5432"), format!("127.0.0.1:{}", pg.port)));
            out.push((format!("events.{ns}.svc:15672"), format!("127.0.0.1:{}", self.mq.mgmt_port)));
        }
        out
    }

    async fn operator(&self, cluster: &Cluster) -> Operator {
        let overrides: Vec<String> = self.overrides().iter().map(|(a, b)| format!("{a}={b}")).collect();
        let overrides = overrides.join(",");
        operator(cluster, &["--leader-election=false", "--endpoint-overrides", &overrides]).await
    }

    fn count_items(&self) -> String {
        self.pg.psql("orders", "SELECT count(*) FROM items").trim().to_string()
    }

    fn count_items_other(&self) -> String {
        self.pg_other.psql("orders", "SELECT count(*) FROM items").trim().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backup_restores_here_elsewhere_and_in_a_new_cluster() {
    let mut servers =
        Servers { pg: Postgres::start(), pg_other: Postgres::start(), mq: RabbitMq::start(), s3: S3Server::start() };
    servers.s3.create_bucket("backups");
    let cluster = cluster(&servers.overrides()).await;
    let start = cluster.audit.mark();
    let client = cluster.client();
    let mut operator = servers.operator(&cluster).await;
    storage_secrets(&client, NS, &servers.s3, KEY).await;

    // Two instances, provisioned for real (the test plays the images' entrypoints).
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
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let pg_admin = eventually("orders-db credentials", WAIT, || async {
        secrets.get_opt("orders-db-credentials").await.ok().flatten()
    })
    .await;
    let pg_password = secret_value(&pg_admin, "password");
    servers.pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{pg_password}'"));
    servers.pg.password = pg_password;
    let mq_admin =
        eventually("events credentials", WAIT, || async { secrets.get_opt("events-credentials").await.ok().flatten() })
            .await;
    let user = json!({"password": secret_value(&mq_admin, "password"), "tags": "administrator"}).to_string();
    servers.mq.api_ok("PUT", "/api/users/admin", Some(&user));
    servers.mq.api_ok("PUT", "/api/permissions/%2F/admin", Some(r#"{"configure":".*","write":".*","read":".*"}"#));
    servers.mq.user = "admin".into();
    servers.mq.password = secret_value(&mq_admin, "password");
    let instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    for name in ["orders-db", "events"] {
        eventually(&format!("{name} Ready"), WAIT, || async {
            let db = instances.get(name).await.ok()?;
            db.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        })
        .await;
    }
    servers.pg.psql("orders", "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2), (3)");
    let mq_user_before: Value = serde_json::from_str(&servers.mq.api_ok("GET", "/api/users/orders-app", None)).unwrap();

    // The schedule fires (every minute) and the Backup completes with every item.
    let _: BackupPolicy = create(&client, NS, policy(&servers.s3, "* * * * *", false)).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    let backup = eventually("a scheduled Backup", Duration::from_secs(90), || async {
        backups.list(&ListParams::default().labels("berth.dev/backuppolicy=nightly")).await.ok()?.items.pop()
    })
    .await;
    let name = backup.metadata.name.clone().unwrap();
    assert!(name.starts_with("nightly-2"), "{name}");
    let backup = wait_phase(&backups, &name, "Completed", backup_phase).await;
    let items = backup.status.unwrap().items;
    let mut names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["database/events", "database/orders-db", "resources"]);
    assert!(items.iter().all(|i| i.phase == "Completed" && i.snapshot.is_some()), "{items:?}");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    eventually("policy reports the success", WAIT, || async {
        let st = policies.get("nightly").await.ok()?.status?;
        let fresh = st.conditions.iter().any(|c| c.type_ == "BackupFresh" && c.status == "True");
        (st.last_successful_backup.as_deref() == Some(name.as_str()) && fresh && st.next_schedule_time.is_some())
            .then_some(())
    })
    .await;
    // No second run while we look: suspend the schedule.
    policies
        .patch("nightly", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}})))
        .await
        .unwrap();

    // Data loss: rows, the vhost and its user.
    servers.pg.psql("orders", "DELETE FROM items");
    servers.mq.api_ok("DELETE", "/api/vhosts/orders", None);
    servers.mq.api_ok("DELETE", "/api/users/orders-app", None);

    // A Restore in place brings them back.
    let restores: Api<Restore> = Api::namespaced(client.clone(), NS);
    let _: Restore = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "undo"},
            "spec": {"backupName": name}
        }),
    )
    .await;
    let restored = wait_phase(&restores, "undo", "Completed", restore_phase).await;
    assert!(restored.status.as_ref().unwrap().skipped.unwrap_or(0) > 0, "existing objects are left alone");
    assert_eq!(servers.count_items(), "3");
    let user: Value = serde_json::from_str(&servers.mq.api_ok("GET", "/api/users/orders-app", None)).unwrap();
    assert_eq!(user["password_hash"], mq_user_before["password_hash"], "the user comes back from the backup");
    servers.mq.api_ok("GET", "/api/permissions/orders/orders-app", None);

    // Into another namespace (its own server), from the policy's newest backup. The image's
    // entrypoint there would start the server with the restored admin password.
    servers.pg_other.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{}'", servers.pg.password));
    servers.pg_other.password = servers.pg.password.clone();
    servers.pg.psql("orders", "DELETE FROM items");
    let _: Restore = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "elsewhere"},
            "spec": {"policyName": "nightly", "namespaceMapping": {NS: OTHER}}
        }),
    )
    .await;
    let restored = wait_phase(&restores, "elsewhere", "Completed", restore_phase).await;
    assert_eq!(restored.status.unwrap().backup_name.as_deref(), Some(name.as_str()));
    let other: Api<DatabaseInstance> = Api::namespaced(client.clone(), OTHER);
    assert!(other.get_opt("orders-db").await.unwrap().is_some());
    let other_secrets: Api<Secret> = Api::namespaced(client.clone(), OTHER);
    let copied = other_secrets.get("orders-db-credentials").await.unwrap();
    assert_eq!(secret_value(&copied, "password"), servers.pg.password, "passwords come back with the data");
    assert_eq!(servers.count_items_other(), "3", "the copy has the backup's rows");
    assert_eq!(servers.count_items(), "0", "the source was not written");
    // The operator may create Jobs (an AppEnvironment's migrations), but every agent Job of a
    // backup or restore is created as the namespace's account, within that account's rights.
    let job_creates: Vec<_> = cluster
        .audit
        .writes_since(start, support::cluster::OPERATOR_USER)
        .into_iter()
        .filter(|e| e.verb == "create" && e.resource() == "jobs")
        .collect();
    assert!(job_creates.len() >= 3, "backup and restore Jobs: {job_creates:?}");
    let account = format!("system:serviceaccount:{NS}:berth-backup");
    for e in &job_creates {
        assert_eq!(e.impersonated_user.as_ref().map(|u| u.username.as_str()), Some(account.as_str()), "{e:?}");
    }
    cluster.assert_clean().await;
    operator.terminate();
    drop(cluster);

    // Disaster recovery: a brand-new cluster with only a suspended policy on the old bucket.
    // A manifest forged in the bucket (the genuine one under another name, without a valid
    // MAC for that name) is never adopted.
    let manifests = servers.s3.root().join("backups/shop/backups");
    let genuine = std::fs::read_to_string(manifests.join(&name).join("backup.json")).unwrap();
    std::fs::create_dir_all(manifests.join("forged-1")).unwrap();
    let forged = genuine.replace(&format!("\"name\": \"{name}\""), "\"name\": \"forged-1\"");
    assert_ne!(forged, genuine);
    std::fs::write(manifests.join("forged-1/backup.json"), forged).unwrap();
    let fresh = self::cluster(&servers.overrides()).await;
    let fresh_client = fresh.client();
    let mut operator = servers.operator(&fresh).await;
    storage_secrets(&fresh_client, NS, &servers.s3, KEY).await;
    let _: BackupPolicy = create(&fresh_client, NS, policy(&servers.s3, "0 3 * * *", true)).await;
    let fresh_backups: Api<Backup> = Api::namespaced(fresh_client.clone(), NS);
    let synced = wait_phase(&fresh_backups, &name, "Completed", backup_phase).await;
    assert_eq!(synced.metadata.labels.as_ref().unwrap()["berth.dev/synced"], "true");
    // The same pass that adopted the genuine manifest refused the forged one.
    assert!(fresh_backups.get_opt("forged-1").await.unwrap().is_none(), "a forged manifest was adopted");
    // A dry run lists what would happen and changes nothing.
    let dry = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "look"},
        "spec": {"backupName": name, "dryRun": true}
    });
    let _: Restore = create(&fresh_client, NS, dry).await;
    let looked =
        wait_phase(&Api::<Restore>::namespaced(fresh_client.clone(), NS), "look", "Completed", restore_phase).await;
    let planned = looked.status.unwrap().planned;
    assert!(planned.contains(&"create DatabaseInstance shop/orders-db".to_string()), "{planned:?}");
    assert!(planned.contains(&"create Secret shop/orders-db-credentials".to_string()), "{planned:?}");
    let instances_now: Api<DatabaseInstance> = Api::namespaced(fresh_client.clone(), NS);
    assert!(instances_now.get_opt("orders-db").await.unwrap().is_none(), "a dry run creates nothing");

    servers.pg.psql("orders", "DELETE FROM items");
    let _: Restore = create(
        &fresh_client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "recover"},
            "spec": {"backupName": name}
        }),
    )
    .await;
    let fresh_restores: Api<Restore> = Api::namespaced(fresh_client.clone(), NS);
    let recovered = wait_phase(&fresh_restores, "recover", "Completed", restore_phase).await;
    assert!(recovered.status.unwrap().created.unwrap_or(0) >= 4, "the instances, their Secrets and the policy");
    assert_eq!(servers.count_items(), "3");
    let fresh_instances: Api<DatabaseInstance> = Api::namespaced(fresh_client.clone(), NS);
    assert!(fresh_instances.get_opt("events").await.unwrap().is_some());
    fresh.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_storage_fails_the_backup_and_a_stopped_schedule_goes_stale() {
    let s3 = S3Server::start();
    let cluster = cluster(&[]).await;
    let client = cluster.client();
    let operator = operator(&cluster, &["--leader-election=false"]).await;
    storage_secrets(&client, NS, &s3, KEY).await;
    // Nothing listens on this port.
    let closed = support::operator::free_port();
    let mut unreachable = policy(&s3, "* * * * *", true);
    unreachable["spec"]["storage"]["endpoint"] = json!(format!("http://127.0.0.1:{closed}"));
    let _: BackupPolicy = create(&client, NS, unreachable).await;
    let _: Backup = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "by-hand"},
            "spec": {"policyName": "nightly"}
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    let failed = wait_phase(&backups, "by-hand", "Failed", backup_phase).await;
    let conditions = failed.status.unwrap().conditions;
    let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Failed"));
    assert!(ready.message.contains("StorageUnreachable"), "{}", ready.message);
    // What Argo CD (Degraded) and Flux's kstatus (Stalled) read: a failure, not work in progress.
    let status_of = |t: &str| conditions.iter().find(|c| c.type_ == t).map(|c| c.status.as_str());
    assert_eq!(
        (status_of("Degraded"), status_of("Stalled"), status_of("Reconciling")),
        (Some("True"), Some("True"), None)
    );

    // The policy's last success is an hour old and the schedule is suspended: an RPO breach.
    let _: Backup = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "old", "labels": {"berth.dev/backuppolicy": "nightly", "berth.dev/synced": "true"}},
            "spec": {"policyName": "nightly"}
        }),
    )
    .await;
    let hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let status = json!({"status": {"phase": "Completed", "completionTime": hour_ago.to_string()}});
    backups.patch_status("old", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    let stale = eventually("BackupFresh=False", WAIT, || async {
        let st = policies.get("nightly").await.ok()?.status?;
        let c = st.conditions.into_iter().find(|c| c.type_ == "BackupFresh")?;
        (c.status == "False" && c.reason == "BackupStale").then_some(c)
    })
    .await;
    assert!(stale.message.contains("suspend"), "{}", stale.message);
    eventually("berth_backup_fresh 0", WAIT, || async {
        let fresh = operator.counter("berth_backup_fresh");
        let last = operator.counter("berth_backup_last_success_timestamp_seconds");
        (fresh == 0.0 && last > 0.0).then_some(())
    })
    .await;
    cluster.assert_clean().await;
    let mut operator = operator;
    assert_eq!(operator.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_and_only_its_own_and_data_deletion_is_opt_in() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[]).await;
    let client = cluster.client();
    let mut operator = operator(&cluster, &["--leader-election=false"]).await;
    storage_secrets(&client, NS, &s3, KEY).await;
    // Two policies share one repository (same bucket and prefix).
    let mut keep_one = policy(&s3, "0 3 * * *", true);
    keep_one["metadata"]["name"] = json!("keep-one");
    keep_one["spec"]["retention"] = json!({"keepLast": 1});
    let mut keep_all = policy(&s3, "0 3 * * *", true);
    keep_all["metadata"]["name"] = json!("keep-all");
    keep_all["spec"]["retention"] = json!({});
    let _: BackupPolicy = create(&client, NS, keep_one).await;
    let _: BackupPolicy = create(&client, NS, keep_all).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    let run = |name: &'static str, policy: &'static str, delete_data: bool| {
        let (client, backups) = (client.clone(), backups.clone());
        async move {
            let _: Backup = create(
                &client,
                NS,
                json!({
                    "apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
                    "spec": {"policyName": policy, "deleteData": delete_data}
                }),
            )
            .await;
            wait_phase(&backups, name, "Completed", backup_phase).await
        }
    };
    run("all-1", "keep-all", false).await;
    run("one-1", "keep-one", false).await;
    run("one-2", "keep-one", false).await;
    eventually("retention removes one-1", WAIT, || async {
        backups.get_opt("one-1").await.ok()?.is_none().then_some(())
    })
    .await;

    let repository = || async {
        let config = berth::backup::StorageConfig::S3(berth::backup::S3Config {
            bucket: "backups".into(),
            prefix: "shop".into(),
            endpoint: Some(s3.endpoint.clone()),
            insecure_http: true,
            region: Some(s3.region.clone()),
            path_style: true,
            access_key_id: Some(s3.access_key.clone()),
            secret_access_key: Some(s3.secret_key.clone()),
            ..Default::default()
        });
        let storage = berth::backup::Storage::connect(&config).await.unwrap();
        berth::backup::Repository::open(storage, KEY.as_bytes()).await.unwrap()
    };
    let manifests = |repo: berth::backup::Repository| async move {
        let mut names: Vec<String> =
            berth::backup::resources::list_manifests(&repo).await.unwrap().into_iter().map(|m| m.name).collect();
        names.sort();
        names
    };
    assert_eq!(manifests(repository().await).await, ["all-1", "one-2"], "only keep-one's older backup went");

    // Deleting a Backup keeps its data unless it says deleteData.
    run("all-2", "keep-all", true).await;
    backups.delete("all-2", &Default::default()).await.unwrap();
    backups.delete("all-1", &Default::default()).await.unwrap();
    for name in ["all-1", "all-2"] {
        eventually(&format!("{name} deleted"), WAIT, || async {
            backups.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    assert_eq!(manifests(repository().await).await, ["all-1", "one-2"]);
    let report = berth::backup::ops::check(&repository().await, true).await.unwrap();
    assert!(report.ok(), "{report:?}");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_volume_is_backed_up_on_its_node_and_restored() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[]).await;
    let client = cluster.client();
    let mut operator = operator(&cluster, &["--leader-election=false"]).await;
    storage_secrets(&client, NS, &s3, KEY).await;

    let _: berth::api::AppEnvironment = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "web"},
            "spec": {"tier": "development", "image": "ghcr.io/example/web:1"}
        }),
    )
    .await;
    let _: k8s_openapi::api::core::v1::PersistentVolumeClaim = create(
        &client,
        NS,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "web-data", "labels": {"berth.dev/appenvironment": "web"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
        }),
    )
    .await;
    // The volume's files, on the volume the kubelet stand-in provisioned.
    let data = eventually("web-data bound", WAIT, || async { cluster.kubelet().pvc_dir(NS, "web-data").await }).await;
    // The app (UID 1000) wrote its uploads; index.db is root's (an old host's copy).
    std::fs::create_dir(data.join("uploads")).unwrap();
    std::fs::write(data.join("uploads/a.txt"), "first upload").unwrap();
    for path in [data.join("uploads"), data.join("uploads/a.txt")] {
        std::os::unix::fs::chown(path, Some(1000), Some(1000)).unwrap();
    }
    std::fs::write(data.join("index.db"), vec![7u8; 300_000]).unwrap();
    // The pod that mounts it runs on the stand-in's node: the backup Job must go there too.
    let restricted = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
    let _: k8s_openapi::api::core::v1::Pod = create(
        &client,
        NS,
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"},
            "spec": {"nodeName": support::kubelet::Kubelet::NODE,
                     "securityContext": {"fsGroup": 1000, "supplementalGroups": [3000]},
                     "containers": [{"name": "web", "image": "ghcr.io/example/web:1", "securityContext": restricted,
                                     "volumeMounts": [{"name": "data", "mountPath": "/srv/data"}]}],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}]}
        }),
    )
    .await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    eventually("web-0 running", WAIT, || async {
        (pods.get("web-0").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    // Written after the kubelet applied the fsGroup: an upload only its owner may read, and a
    // report only the app's supplemental group 3000 may read.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(data.join("uploads/a.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(data.join("reports")).unwrap();
    std::fs::write(data.join("reports/q3.csv"), "quarter,revenue\n3,42\n").unwrap();
    for (path, mode) in [(data.join("reports"), 0o750), (data.join("reports/q3.csv"), 0o640)] {
        std::os::unix::fs::chown(&path, Some(0), Some(3000)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let mut volumes = policy(&s3, "0 3 * * *", true);
    volumes["spec"]["scope"] = json!({"databases": false, "volumes": true});
    let _: BackupPolicy = create(&client, NS, volumes).await;
    let _: Backup = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "files"},
            "spec": {"policyName": "nightly"}
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    let done = wait_phase(&backups, "files", "Completed", backup_phase).await;
    let items = done.status.unwrap().items;
    let volume = items.iter().find(|i| i.name == "volume/web-data").expect("the app's PVC is an item");
    assert!(volume.bytes.unwrap_or(0) >= 300_000, "{volume:?}");
    let kubelet = cluster.kubelet();
    let job = kubelet.runs().into_iter().find(|r| r.args.iter().any(|a| a == "backup-dir")).expect("a volume Job ran");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NS);
    let spec = jobs.get(&job.job).await.unwrap().spec.unwrap().template.spec.unwrap();
    let affinity = serde_json::to_string(&spec.affinity).unwrap();
    assert!(
        affinity.contains(support::kubelet::Kubelet::NODE),
        "co-located with the pod that mounts the volume: {affinity}"
    );

    std::fs::remove_dir_all(data.join("uploads")).unwrap();
    std::fs::remove_dir_all(data.join("reports")).unwrap();
    std::fs::write(data.join("index.db"), b"corrupted").unwrap();
    let _: Restore = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "files-back"},
            "spec": {"backupName": "files"}
        }),
    )
    .await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), NS);
    let restored = eventually("files-back ended", WAIT, || async {
        let r = restores.get("files-back").await.ok()?;
        matches!(restore_phase(&r)?.as_str(), "Completed" | "Failed" | "PartiallyFailed").then_some(r)
    })
    .await;
    let agent = cluster.kubelet().runs().into_iter().filter(|r| r.job.starts_with("files-back")).collect::<Vec<_>>();
    assert_eq!(restore_phase(&restored).as_deref(), Some("Completed"), "{:?}\nagent runs: {agent:#?}", restored.status);
    assert_eq!(std::fs::read_to_string(data.join("uploads/a.txt")).unwrap(), "first upload");
    assert_eq!(std::fs::read(data.join("index.db")).unwrap(), vec![7u8; 300_000]);
    // The agent ran as the app (found from the pod that mounts the volume), so what it restored
    // belongs to the app, which can write it again.
    let restore_run = agent.iter().find(|r| r.exit_code == Some(0)).expect("a successful restore run");
    assert_eq!(restore_run.user.map(|(uid, _)| uid), Some(1000), "{restore_run:?}");
    let restored_file = std::fs::metadata(data.join("uploads/a.txt")).unwrap();
    assert_eq!((restored_file.uid(), restored_file.gid()), (1000, 1000));
    assert_eq!(restored_file.permissions().mode() & 0o7777, 0o600, "the owner-only upload keeps its mode");
    // Read through the supplemental group at backup time, so it is in the backup.
    assert_eq!(std::fs::read_to_string(data.join("reports/q3.csv")).unwrap(), "quarter,revenue\n3,42\n");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// Secrets the External Secrets Operator syncs (owned by an ExternalSecret, or carrying its
/// `reconcile.external-secrets.io/` labels) are backed up with the namespace but never
/// restored: their store holds the current value. A restore into another namespace brings
/// back the other Secrets only, and an Event on the Restore names those left out and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_leaves_out_secrets_synced_by_external_secrets() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = cluster(&[]).await;
    external_secrets::install_crd(&cluster).await;
    let client = cluster.client();
    let _operator = operator(&cluster, &["--leader-election=false"]).await;
    storage_secrets(&client, NS, &s3, KEY).await;
    let es = external_secrets::create(&client, NS, "db-admin", "/shop/prod/db-admin").await;
    external_secrets::fill(&client, &es, json!({"password": "from-secrets-manager"})).await;
    // A Secret written by the External Secrets Operator with its labels (its newer versions
    // label what they manage), without an owner.
    let labelled = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "api-token", "labels": {"reconcile.external-secrets.io/managed": "true"}},
        "stringData": {"token": "from-parameter-store"}});
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets.create(&PostParams::default(), &serde_json::from_value(labelled).unwrap()).await.unwrap();
    create_secret(&client, NS, "app-settings", &[("FEATURE_FLAGS", "checkout-v2")]).await;

    let mut spec = policy(&s3, "0 3 * * *", true);
    spec["spec"]["scope"] = json!({"databases": false, "extraResources": ["secrets"]});
    let _: BackupPolicy = create(&client, NS, spec).await;
    let _: Backup = create(
        &client,
        NS,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "with-synced"},
               "spec": {"policyName": "nightly"}}),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    wait_phase(&backups, "with-synced", "Completed", backup_phase).await;

    let _: Restore = create(
        &client,
        NS,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "elsewhere"},
               "spec": {"backupName": "with-synced", "namespaceMapping": {NS: OTHER}}}),
    )
    .await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), NS);
    wait_phase(&restores, "elsewhere", "Completed", restore_phase).await;

    // The ordinary Secret came back; the synced ones did not.
    let other: Api<Secret> = Api::namespaced(client.clone(), OTHER);
    let settings = other.get("app-settings").await.unwrap();
    assert_eq!(secret_value(&settings, "FEATURE_FLAGS"), "checkout-v2");
    assert!(other.get_opt("db-admin").await.unwrap().is_none(), "the ExternalSecret's Secret was restored");
    assert!(other.get_opt("api-token").await.unwrap().is_none(), "the labelled synced Secret was restored");
    // Both were in the backup: left out by the restore, not by the backup.
    let _: Restore = create(
        &client,
        NS,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": "plan"},
               "spec": {"backupName": "with-synced", "namespaceMapping": {NS: OTHER}, "dryRun": true}}),
    )
    .await;
    let planned = wait_phase(&restores, "plan", "Completed", restore_phase).await.status.unwrap().planned;
    for name in ["db-admin", "api-token"] {
        let line = format!("skip Secret {NS}/{name} (SyncedByExternalSecrets)");
        assert!(planned.contains(&line), "{line:?} not in {planned:?}");
    }

    // The Restore's events say which were left out and why.
    let events = cluster.events(Some(NS), "SyncedByExternalSecrets").await;
    let notes: Vec<String> = events
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("elsewhere"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(!notes.is_empty(), "{events:?}");
    for note in &notes {
        for name in ["db-admin", "api-token"] {
            assert!(note.contains(&format!("Secret {NS}/{name}")), "{note}");
        }
        assert!(!note.contains("app-settings"), "{note}");
        assert!(note.contains("External Secrets Operator"), "{note}");
    }
    cluster.assert_clean().await;
}

//! `serverSideEncryption` end to end: the real operator on a real control plane backs up a
//! namespace (its objects, and a real PostgreSQL through an agent Job run by the kubelet
//! stand-in) to a location with SSE-KMS and replicates it offsite to a location with SSE-S3
//! (AES256), through a recording proxy in front of the S3 server (s3s-fs, which ignores the
//! headers). Every object the operator and the agent write carries its location's encryption.

use crate::support;

use std::path::Path;
use std::time::Duration;

use berth::api::{Backup, BackupPolicy, DatabaseInstance};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::objects::create;
use support::operator::Operator;
use support::s3_recorder::S3Recorder;
use support::servers::{Postgres, S3Server};
use support::wait::eventually;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(120);
const KMS_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn location(s3: &S3Server, endpoint: &str, bucket: &str, sse: Value) -> Value {
    json!({"bucket": bucket, "prefix": "shop", "region": s3.region, "endpoint": endpoint, "insecureHTTP": true,
           "forcePathStyle": true, "credentialsSecret": "s3-credentials", "encryptionKeySecret": "repository-key",
           "serverSideEncryption": sse})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_writes_and_offsite_replication_carry_each_locations_encryption() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    s3.create_bucket("offsite");
    let recorder = S3Recorder::start(&s3.endpoint);
    let mut pg = Postgres::start();
    let pg_address = format!("127.0.0.1:{}", pg.port);
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
    cluster.namespace(NS).await;
    cluster.tenant_account(NS);
    cluster.kubelet().with_env("AWS_EC2_METADATA_DISABLED", "true");
    cluster.kubelet().with_host_override(format!("orders-db.{NS}.svc:5432"), pg_address.clone());
    let client = cluster.client();
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let overrides = format!("orders-db.{NS}.svc:5432={pg_address}");
    let mut operator = Operator::start(&kubeconfig, &["--leader-election=false", "--endpoint-overrides", &overrides]);
    operator.wait_ready(WAIT);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for (name, data) in [
        (
            "s3-credentials",
            vec![("AWS_ACCESS_KEY_ID", s3.access_key.clone()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone())],
        ),
        ("repository-key", vec![("key", "correct horse battery staple".to_string())]),
    ] {
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect()),
            ..Secret::default()
        };
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    // A PostgreSQL instance, provisioned for real (the test plays the image's entrypoint).
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
    let admin = eventually("orders-db credentials", WAIT, || async {
        secrets.get_opt("orders-db-credentials").await.ok().flatten()
    })
    .await;
    let password = String::from_utf8(admin.data.unwrap()["password"].0.clone()).unwrap();
    pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{password}'"));
    pg.password = password;
    let instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    eventually("orders-db Ready", WAIT, || async {
        let db = instances.get("orders-db").await.ok()?;
        db.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    let _: ConfigMap = create(
        &client,
        NS,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "b"}}),
    )
    .await;
    let _: BackupPolicy = create(&client, NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "nightly"},
            "spec": {
                "schedule": "0 3 * * *", "suspend": true,
                "storage": location(&s3, &recorder.endpoint, "backups", json!({"type": "aws:kms", "kmsKeyId": KMS_ARN})),
                "offsite": location(&s3, &recorder.endpoint, "offsite", json!({"type": "AES256"})),
                "scope": {"databases": true, "extraResources": ["configmaps"]}
            }
        }),
    )
    .await;
    let _: Backup = create(
        &client,
        NS,
        json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "first"},
               "spec": {"policyName": "nightly"}}),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    eventually("backup first Completed", WAIT, || async {
        let phase = backups.get("first").await.ok()?.status?.phase?;
        assert!(phase != "Failed" && phase != "PartiallyFailed", "backup ended {phase}");
        (phase == "Completed").then_some(())
    })
    .await;
    // The dump was written by the agent Job, whose endpoint is the proxy too: its writes are
    // among those checked below.
    let items = backups.get("first").await.unwrap().status.unwrap().items;
    assert!(items.iter().any(|i| i.name == "database/orders-db" && i.phase == "Completed"), "{items:?}");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    eventually("first replicated offsite", WAIT, || async {
        let status = policies.get("nightly").await.ok()?.status?;
        (status.last_replicated_backup.as_deref() == Some("first")).then_some(())
    })
    .await;

    let requests = recorder.requests();
    let writes: Vec<_> = requests.iter().filter(|r| r.writes_object()).collect();
    let (mut primary, mut offsite) = (0, 0);
    for w in &writes {
        let what = format!("{} {}", w.operation(), w.path);
        let sse = (w.header("x-amz-server-side-encryption"), w.header("x-amz-server-side-encryption-aws-kms-key-id"));
        if w.path.starts_with("/backups/shop/") {
            primary += 1;
            assert_eq!(sse, (Some("aws:kms"), Some(KMS_ARN)), "{what}");
        } else {
            assert!(w.path.starts_with("/offsite/shop/"), "{what}");
            offsite += 1;
            assert_eq!(sse, (Some("AES256"), None), "{what}");
        }
    }
    let paths: Vec<&str> = writes.iter().map(|w| w.path.as_str()).collect();

    for expected in ["/backups/shop/config", "/backups/shop/backups/first/backup.json", "/offsite/shop/config"] {
        assert!(paths.contains(&expected), "no write of {expected}: {paths:?}");
    }
    assert!(primary >= 5 && offsite >= 5, "{primary} primary and {offsite} offsite writes: {paths:?}");
    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

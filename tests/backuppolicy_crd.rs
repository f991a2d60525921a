//! The BackupPolicy CRD as generated (crds/) on a real kube-apiserver: its schema and CEL
//! rules refuse a storage location's `serverSideEncryption` that cannot work (an unknown
//! type, `aws:kms` without `kmsKeyId`, `kmsKeyId` with `AES256`) with messages naming the
//! field and the fix, and accept the two valid forms.

use crate::support;

use std::path::Path;

use berth::api::backuppolicy::BackupPolicy;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::cluster::Cluster;

fn policy(name: &str, sse: Value) -> BackupPolicy {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": name},
        "spec": {"schedule": "0 3 * * *", "storage": {"bucket": "backups", "encryptionKeySecret": "k"},
                 "offsite": {"bucket": "offsite", "encryptionKeySecret": "k", "serverSideEncryption": sse}},
    }))
    .unwrap()
}

/// The API server's refusal of a policy whose offsite location has `sse`, sent as raw JSON
/// (BackupPolicy itself could not hold an unknown type).
async fn refused(cluster: &Cluster, name: &str, sse: Value) -> (u16, String) {
    let resource = ApiResource::erase::<BackupPolicy>(&());
    let api = Api::<DynamicObject>::namespaced_with(cluster.client(), "shop", &resource);
    let mut obj = serde_json::to_value(policy(name, json!({"type": "AES256"}))).unwrap();
    obj["spec"]["offsite"]["serverSideEncryption"] = sse;
    match api.create(&PostParams::default(), &serde_json::from_value(obj).unwrap()).await {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected a refusal of {name}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_encryption_is_checked_by_the_real_api_server() {
    let cluster = Cluster::start_control_plane().await;
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/backuppolicies.berth.dev.yaml");
    cluster.install_crds_from_file(&crd).await;
    cluster.namespace("shop").await;
    let api: Api<BackupPolicy> = Api::namespaced(cluster.client(), "shop");
    let pp = PostParams::default();

    api.create(&pp, &policy("kms", json!({"type": "aws:kms", "kmsKeyId": "alias/backups"}))).await.unwrap();
    api.create(&pp, &policy("aes", json!({"type": "AES256"}))).await.unwrap();

    let (code, message) = refused(&cluster, "bad-type", json!({"type": "aws:kms:dsse", "kmsKeyId": "k"})).await;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.offsite.serverSideEncryption.type: Unsupported value: \"aws:kms:dsse\"")
            && message.contains("\"aws:kms\"")
            && message.contains("\"AES256\""),
        "{message}"
    );
    let (code, message) = refused(&cluster, "no-key", json!({"type": "aws:kms"})).await;
    assert_eq!(code, 422, "{message}");
    assert!(
        message.contains("spec.offsite.serverSideEncryption.kmsKeyId")
            && message.contains("aws:kms needs serverSideEncryption.kmsKeyId"),
        "{message}"
    );
    let (code, message) =
        refused(&cluster, "key-with-aes", json!({"type": "AES256", "kmsKeyId": "alias/backups"})).await;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("remove kmsKeyId for AES256, or set type: aws:kms"), "{message}");
}

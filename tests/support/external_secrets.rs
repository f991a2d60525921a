//! The External Secrets Operator's part in tests, against the ExternalSecret CRD written from its
//! documentation (`tests/fixtures/cluster/external-secrets-externalsecret-crd.yaml`): the
//! ExternalSecret's Ready condition and its target Secret, owned by the ExternalSecret. No
//! External Secrets Operator runs in tests.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use super::cluster::Cluster;

/// Installs the ExternalSecret CRD fixture.
pub async fn install_crd(cluster: &Cluster) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster/external-secrets-externalsecret-crd.yaml");
    cluster.install_crds_from_file(&fixture).await;
}

/// ExternalSecrets of `namespace`.
pub fn api(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Creates an ExternalSecret `name` reading `remote_key` of a ClusterSecretStore `aws` into the
/// Secret of the same name, key `password`.
pub async fn create(client: &kube::Client, namespace: &str, name: &str, remote_key: &str) -> DynamicObject {
    let es = json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"secretStoreRef": {"name": "aws", "kind": "ClusterSecretStore"}, "target": {"name": name},
                 "data": [{"secretKey": "password", "remoteRef": {"key": remote_key}}]}
    });
    api(client, namespace).create(&PostParams::default(), &serde_json::from_value(es).unwrap()).await.unwrap()
}

/// The ExternalSecret's Ready condition.
pub async fn set_ready(es: &Api<DynamicObject>, name: &str, ready: bool, reason: &str, message: &str) {
    let mut status = json!({"conditions": [{
        "type": "Ready", "status": if ready { "True" } else { "False" }, "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]});
    if ready {
        status["refreshTime"] = json!("2026-01-01T00:00:00Z");
        status["binding"] = json!({"name": name});
    }
    es.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await.unwrap();
}

/// The target Secret of `es` (same name), owned by it, with `data` as `stringData`.
pub async fn fill(client: &kube::Client, es: &DynamicObject, data: Value) {
    let namespace = es.metadata.namespace.clone().expect("a namespaced ExternalSecret");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": es.metadata.name, "namespace": namespace, "ownerReferences": [{
            "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "name": es.metadata.name, "uid": es.metadata.uid, "controller": true,
        }]},
        "stringData": data,
    });
    let secret: Secret = serde_json::from_value(secret).unwrap();
    Api::<Secret>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &secret).await.unwrap();
}

/// A new value in the store, synced into the target Secret of `es`.
pub async fn refill(client: &kube::Client, es: &DynamicObject, data: Value) {
    let namespace = es.metadata.namespace.clone().expect("a namespaced ExternalSecret");
    let name = es.metadata.name.clone().expect("a named ExternalSecret");
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"stringData": data})))
        .await
        .unwrap();
}

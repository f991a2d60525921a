//! The objects a test sets up, created through a kube-rs client as a user would.

use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, PostParams};
use serde_json::Value;

use super::servers::S3Server;

/// The repository's root: `crds/`, `deploy/`, `charts/`, `tests/fixtures/`.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Creates the namespaced object `value` in `ns`; a refusal fails the test, naming the object.
pub async fn create<K>(client: &kube::Client, ns: &str, value: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create {} {ns}/{:?}: {e}", K::kind(&()), object.meta().name))
}

/// Creates the Secret `name` in `ns` with `data`.
pub async fn create_secret(client: &kube::Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create Secret {ns}/{name}: {e}"));
}

/// The bucket credentials (`s3-credentials`) and repository key (`repository-key`) a
/// BackupPolicy names, in `ns`. The key ends in a newline, as `kubectl create secret
/// --from-file` of an echoed key leaves it.
pub async fn storage_secrets(client: &kube::Client, ns: &str, s3: &S3Server, key: &str) {
    let creds = [("AWS_ACCESS_KEY_ID", s3.access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str())];
    create_secret(client, ns, "s3-credentials", &creds).await;
    create_secret(client, ns, "repository-key", &[("key", &format!("{key}\n"))]).await;
}

/// The text under `key` of a Secret's data.
pub fn secret_value(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// Whether `conditions` hold `Ready=True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

//! Server-side apply that writes only when something changed. A child is up to date when it
//! carries the hash of the desired object (so removed fields are noticed) and every desired
//! field is present with the desired value (so edits by others are noticed).

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::info;

use super::Error;
use crate::resources::meta::typed;
use crate::runtime::metrics::{ControllerLabels, Metrics};

/// A namespaced child kind Berth applies and caches.
pub trait Child:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> Child for T where
    T: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Applies the children of one owner: only what changed, with the controller's field manager,
/// and deletes optional children the owner's spec dropped.
pub struct Applier<'a> {
    pub client: &'a kube::Client,
    pub metrics: &'a Metrics,
    /// Controller name (metrics label).
    pub controller: &'static str,
    /// Field manager, `berth/<controller>`.
    pub manager: &'static str,
    pub namespace: String,
    pub owner_uid: String,
    /// The owner label (`berth.dev/<kind>`, owner name) that orphans must carry.
    pub owner_label: (String, String),
}

impl Applier<'_> {
    /// Applies `desired` unless the cached copy in `store` is already up to date.
    pub async fn apply<K: Child>(&self, store: &Store<K>, desired: &K) -> Result<bool, Error> {
        let cached = store.get(&ObjectRef::new(&desired.name_any()).within(&self.namespace));
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let wrote = apply_if_changed(&api, cached.as_deref(), typed(desired), self.manager).await?;
        if wrote {
            self.metrics.applies.get_or_create(&ControllerLabels { controller: self.controller }).inc();
        }
        Ok(wrote)
    }

    /// Applies an optional child, or deletes the child `name` (when this owner owns it) if the
    /// spec no longer asks for it.
    pub async fn apply_optional<K: Child>(
        &self,
        store: &Store<K>,
        name: &str,
        desired: Option<&K>,
    ) -> Result<bool, Error> {
        if let Some(desired) = desired {
            return self.apply(store, desired).await;
        }
        let Some(existing) = store.get(&ObjectRef::new(name).within(&self.namespace)) else { return Ok(false) };
        if !owned_by(existing.as_ref(), &self.owner_uid, (&self.owner_label.0, &self.owner_label.1)) {
            return Ok(false);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                info!(namespace = %self.namespace, %name, kind = %K::kind(&()), "deleted a child the spec no longer asks for");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Annotation holding the hash of the last desired state Berth applied.
pub const HASH_ANNOTATION: &str = "berth.dev/applied-hash";

/// The hash of a desired object (without the annotation itself).
pub fn desired_hash(desired: &Value) -> String {
    let bytes = serde_json::to_vec(desired).expect("JSON values serialize");
    blake3::hash(&bytes).to_hex()[..16].to_string()
}

/// True when every field of `desired` is in `actual` with the same value. Arrays must have
/// the same length; their elements are compared the same way (servers add defaults inside).
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, v)| a.get(k).is_some_and(|av| is_subset(v, av))),
        (Value::Array(d), Value::Array(a)) => d.len() == a.len() && d.iter().zip(a).all(|(x, y)| is_subset(x, y)),
        (Value::Number(d), Value::Number(a)) => d.as_f64() == a.as_f64(),
        (d, a) => d == a,
    }
}

/// The desired object with the hash annotation added.
pub fn with_hash(mut desired: Value) -> Value {
    let hash = desired_hash(&desired);
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(HASH_ANNOTATION.into(), hash.into());
        }
    }
    desired
}

/// Whether `actual` (as cached) already matches `desired` (hash-annotated).
pub fn up_to_date<K: Serialize>(desired: &Value, actual: Option<&K>) -> bool {
    let Some(actual) = actual else { return false };
    let actual = serde_json::to_value(actual).unwrap_or(Value::Null);
    // Only spec-like content matters; the API server owns status.
    let mut desired = desired.clone();
    if let Some(map) = desired.as_object_mut() {
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    is_subset(&desired, &actual)
}

/// Applies `desired` with `manager` unless `cached` shows it is already in place. Returns
/// whether a write happened.
pub async fn apply_if_changed<K>(api: &Api<K>, cached: Option<&K>, desired: Value, manager: &str) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let desired = with_hash(desired);
    if up_to_date(&desired, cached) {
        return Ok(false);
    }
    let name = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&desired)).await?;
    Ok(true)
}

/// Whether `obj` is a child of the owner with `uid`, labelled as Berth's (orphans are matched
/// by owner reference and labels, never labels alone).
pub fn owned_by<K: Resource>(obj: &K, owner_uid: &str, owner_label: (&str, &str)) -> bool {
    obj.owner_references().iter().any(|o| o.uid == owner_uid && o.controller == Some(true))
        && obj.labels().get(owner_label.0).map(String::as_str) == Some(owner_label.1)
        && obj.labels().get("app.kubernetes.io/managed-by").map(String::as_str)
            == Some(crate::resources::meta::MANAGED_BY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_ignores_server_defaults_but_not_changes() {
        let desired = json!({"spec": {"ports": [{"name": "http", "port": 80}]}});
        let actual =
            json!({"spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"}});
        assert!(is_subset(&desired, &actual));
        let changed = json!({"spec": {"ports": [{"name": "http", "port": 81, "protocol": "TCP"}]}});
        assert!(!is_subset(&desired, &changed));
        let extra_port = json!({"spec": {"ports": [{"name": "http", "port": 80}, {"name": "x", "port": 1}]}});
        assert!(!is_subset(&desired, &extra_port));
    }

    #[test]
    fn hash_changes_when_a_field_is_removed() {
        let a = with_hash(json!({"metadata": {"name": "a"}, "spec": {"x": 1, "y": 2}}));
        let b = with_hash(json!({"metadata": {"name": "a"}, "spec": {"x": 1}}));
        // b is a subset of a, so only the hash tells that y must go.
        assert_ne!(a.pointer("/metadata/annotations").unwrap(), b.pointer("/metadata/annotations").unwrap());
        assert!(!is_subset(&b, &a));
    }
}

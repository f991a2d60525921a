//! Server-side apply that writes only when something changed. A child is up to date when it
//! carries the hash of the desired object (so removed fields are noticed) and every desired
//! field is present with the desired value (so edits by others are noticed).

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;

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

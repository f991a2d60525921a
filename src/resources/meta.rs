//! Metadata every child carries: the standard `app.kubernetes.io/*` labels and an owner
//! reference to the custom resource that owns it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, SeccompProfile, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// Value of `app.kubernetes.io/managed-by` on everything Berth creates.
pub const MANAGED_BY: &str = "berth";
/// Label naming the owning custom resource (with its kind in the key), used with the owner
/// reference to find orphans.
pub fn owner_label_key(kind: &str) -> String {
    format!("berth.dev/{}", kind.to_ascii_lowercase())
}

/// Labels that select the pods of one owner (stable for the owner's lifetime: they end up in
/// immutable selectors).
pub fn selector_labels(name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
    ])
}

/// All standard labels of a child of `owner`.
pub fn standard_labels<K: Resource<DynamicType = ()>>(owner: &K, component: &str) -> BTreeMap<String, String> {
    let name = owner.name_any();
    let mut labels = selector_labels(&name, component);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "berth".into());
    labels.insert(owner_label_key(&K::kind(&())), name);
    labels
}

/// The controller owner reference to `owner` (garbage collection and `.owns()` watches).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child named `name` in the owner's namespace.
pub fn child_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: owner.namespace(),
        labels: Some(labels),
        // Without a uid (offline rendering) an owner reference would be invalid: leave it out.
        owner_references: owner.meta().uid.is_some().then(|| vec![owner_reference(owner)]),
        ..ObjectMeta::default()
    }
}

/// A label value derived from free text: at most 63 characters of `[A-Za-z0-9._-]`, starting
/// and ending with an alphanumeric character; `None` when nothing is left.
pub fn label_value(text: &str) -> Option<String> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Serializes `obj` with its apiVersion and kind set (k8s-openapi types leave them to serde).
pub fn typed<K: kube::Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("Kubernetes objects serialize");
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    v
}

/// The container security context of every pod Berth builds: Pod Security `restricted`
/// (non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp) with a
/// read-only root filesystem.
pub fn restricted_container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("1.4.2").as_deref(), Some("1.4.2"));
        assert_eq!(label_value("sha256:abc").as_deref(), Some("sha256-abc"));
        assert_eq!(label_value("--").as_deref(), None);
        assert_eq!(label_value(&"a".repeat(80)).unwrap().len(), 63);
    }
}

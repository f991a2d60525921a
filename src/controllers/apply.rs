//! Server-side apply that writes only when something changed. A child is up to date when it
//! carries the hash of the desired object (so removed fields are noticed) and every desired
//! field is present with the desired value (so edits by others are noticed). An apply the
//! server refuses as invalid (422) is an [`Error::ApplyRejected`], which the controllers report
//! as a condition and retry slowly.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
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
    /// What to do with an object of a child's name that Berth did not create.
    pub foreign: Foreign,
}

/// What an [`Applier`] does when a child's name is taken by an object it did not create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// Leave it and fail with [`Error::ForeignChild`], whose message ends with this fix.
    Refuse(&'static str),
    /// Take it over, unless another controller owns it (`AppEnvironment.spec.adopt`).
    Adopt,
}

impl Applier<'_> {
    /// Applies `desired` unless the cached copy in `store` is already up to date, or this
    /// process has just applied the very same object and the cache has not caught up yet.
    pub async fn apply<K: Child>(&self, store: &Store<K>, desired: &K) -> Result<bool, Error> {
        let name = desired.name_any();
        let cached = store.get(&ObjectRef::new(&name).within(&self.namespace));
        let desired = with_hash(typed(desired));
        if up_to_date(&desired, cached.as_deref()) {
            return Ok(false);
        }
        // Read-your-writes: under load a watch cache lags this process's own applies by
        // seconds, and every child event re-triggers the owner; trusting only the cache
        // re-applied each child 3–6 times at 1,000 AppEnvironments (benches/converge.rs).
        let key = WriteKey::new::<K>(&self.namespace, &name);
        let hash = desired.pointer(HASH_POINTER).and_then(Value::as_str).unwrap_or_default().to_string();
        let cached_rv = cached.as_ref().and_then(|c| c.meta().resource_version.clone());
        if CHILD_WRITES.pending(&key, cached_rv.as_deref(), is_tracked::<K>()).is_some_and(|h| h == hash) {
            return Ok(false);
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        // The cache holds only objects with Berth's labels: a miss may hide someone else's
        // object of this name, which a forced apply would silently take.
        if cached.is_none()
            && let Some(live) = api.get_opt(&name).await?
        {
            let owner = (self.owner_uid.as_str(), (self.owner_label.0.as_str(), self.owner_label.1.as_str()));
            if let Some(message) = foreign_conflict(&live, owner, self.foreign) {
                return Err(Error::ForeignChild { kind: K::kind(&()).into_owned(), name, message });
            }
        }
        let applied = api
            .patch(&name, &PatchParams::apply(self.manager).force(), &Patch::Apply(&desired))
            .await
            .map_err(|e| Error::from_apply(e, &K::kind(&()), &name))?;
        if let Some(rv) = applied.meta().resource_version.as_deref() {
            CHILD_WRITES.record(key, hash, rv);
        }
        self.metrics.applies.get_or_create(&ControllerLabels { controller: self.controller }).inc();
        Ok(true)
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
/// [`HASH_ANNOTATION`] as a JSON pointer.
const HASH_POINTER: &str = "/metadata/annotations/berth.dev~1applied-hash";

/// Orders two resourceVersions of the same resource, as Kubernetes ≥ 1.35 guarantees
/// (KEP-5504, `k8s.io/apimachinery/pkg/util/resourceversion.CompareResourceVersion`): decimal
/// integers without leading zeros. `None` when either is not in that form (an older or an
/// unusual server): then nothing is inferred from it.
pub fn compare_resource_versions(a: &str, b: &str) -> Option<Ordering> {
    let valid = |v: &str| !v.is_empty() && !v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit());
    (valid(a) && valid(b)).then(|| a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// Identifies a written object: kind (or kind/subresource), namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WriteKey(Cow<'static, str>, String, String);

impl WriteKey {
    pub fn new<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        WriteKey(K::kind(&()), namespace.to_string(), name.to_string())
    }

    /// The key of an object's `status` subresource.
    pub fn status<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> Self {
        WriteKey(format!("{}/status", K::kind(&())).into(), namespace.to_string(), name.to_string())
    }
}

struct Written<V> {
    value: V,
    resource_version: String,
    at: Instant,
}

/// What this process wrote and its watch caches may not show yet ("read your own writes").
/// A watch cache lags the process's own writes, by seconds under load; a reconcile that sees
/// the cache from before its last write would otherwise write the same thing again. An entry
/// lives until the cache shows the object at (or after) the resourceVersion the write
/// returned, the object is deleted, the watch relists, or [`WriteLog::TTL`] passes.
pub struct WriteLog<V> {
    entries: Mutex<HashMap<WriteKey, Written<V>>>,
}

impl<V> Default for WriteLog<V> {
    fn default() -> Self {
        Self { entries: Mutex::default() }
    }
}

impl<V: Clone> WriteLog<V> {
    /// Longest a write is trusted over the cache: a safety net, not a tuning knob (entries
    /// normally go within milliseconds, when their watch event arrives).
    pub const TTL: Duration = Duration::from_secs(60);

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WriteKey, Written<V>>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers that `value` was written to `key` and the server answered with
    /// `resource_version`. Not remembered when resourceVersions cannot be compared.
    pub fn record(&self, key: WriteKey, value: V, resource_version: &str) {
        if compare_resource_versions(resource_version, resource_version).is_none() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, w| w.at.elapsed() < Self::TTL);
        }
        entries.insert(key, Written { value, resource_version: resource_version.to_string(), at: Instant::now() });
    }

    /// The value last written to `key` when the cache has not caught up with that write:
    /// the cached copy is older than it, or absent while `absent_is_stale` (the cache of this
    /// kind reports deletions and relists to the log, see [`WriteLog::observe`]). Forgets
    /// the entry once the cache has caught up.
    pub fn pending(&self, key: &WriteKey, cached_rv: Option<&str>, absent_is_stale: bool) -> Option<V> {
        let mut entries = self.lock();
        let written = entries.get(key)?;
        let stale = written.at.elapsed() < Self::TTL
            && match cached_rv {
                Some(rv) => compare_resource_versions(rv, &written.resource_version) == Some(Ordering::Less),
                None => absent_is_stale,
            };
        if stale {
            Some(written.value.clone())
        } else {
            entries.remove(key);
            None
        }
    }

    /// Called for every event of a watch cache of kind `K`, after the cache applied it.
    pub fn observe<K: Resource<DynamicType = ()>>(&self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => {
                let (Some(ns), Some(name), Some(rv)) = (
                    obj.meta().namespace.as_deref(),
                    obj.meta().name.as_deref(),
                    obj.meta().resource_version.as_deref(),
                ) else {
                    return;
                };
                let key = WriteKey::new::<K>(ns, name);
                let mut entries = self.lock();
                if entries.get(&key).is_some_and(|w| {
                    compare_resource_versions(rv, &w.resource_version).is_none_or(|o| o != Ordering::Less)
                }) {
                    entries.remove(&key);
                }
            }
            watcher::Event::Delete(obj) => {
                if let (Some(ns), Some(name)) = (obj.meta().namespace.as_deref(), obj.meta().name.as_deref()) {
                    self.lock().remove(&WriteKey::new::<K>(ns, name));
                }
            }
            // A relist can drop objects without Delete events: forget every write of the kind.
            watcher::Event::InitDone => {
                let kind = K::kind(&());
                self.lock().retain(|k, _| k.0 != kind);
            }
            watcher::Event::Init => {}
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Children this process applied (value: their desired hash), for every controller.
pub static CHILD_WRITES: LazyLock<WriteLog<String>> = LazyLock::new(WriteLog::default);

/// Kinds whose watch caches feed [`CHILD_WRITES`] with their events (see [`super::cache`]).
/// Only for those can a child missing from the cache be trusted to exist after our write.
static TRACKED_KINDS: LazyLock<Mutex<HashSet<Cow<'static, str>>>> = LazyLock::new(Mutex::default);

/// Marks kind `K` as having a watch cache that reports to [`CHILD_WRITES`].
pub fn track<K: Resource<DynamicType = ()>>() {
    TRACKED_KINDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(K::kind(&()));
}

fn is_tracked<K: Resource<DynamicType = ()>>() -> bool {
    TRACKED_KINDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&K::kind(&()))
}

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
    let kind = desired.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&desired))
        .await
        .map_err(|e| Error::from_apply(e, &kind, &name))?;
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

/// Why `live`, found under a child's name, may not be applied over by the owner
/// (`owner_uid`, owner label), or `None` when it may: it is the owner's (its controller
/// reference or its owner label), or it is unowned and `foreign` adopts.
pub fn foreign_conflict<K: Resource<DynamicType = ()>>(
    live: &K,
    (owner_uid, (label, owner)): (&str, (&str, &str)),
    foreign: Foreign,
) -> Option<String> {
    let (kind, name) = (K::kind(&()), live.name_any());
    match live.owner_references().iter().find(|o| o.controller == Some(true)) {
        Some(o) if o.uid == owner_uid => None,
        Some(o) => Some(format!(
            "{kind} {name} exists and is controlled by {} {}; Berth takes over only objects no controller owns, so rename the app or remove that {kind}",
            o.kind, o.name
        )),
        None if live.labels().get(label).map(String::as_str) == Some(owner) => None,
        None => match foreign {
            Foreign::Adopt => None,
            Foreign::Refuse(fix) => Some(format!("{kind} {name} exists and Berth did not create it; {fix}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_foreign_object_under_a_childs_name_is_refused_unless_adopted_and_unowned() {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let service = |labels: &[(&str, &str)], controller: Option<(&str, &str)>| {
            let mut s = Service::default();
            s.metadata.name = Some("shop".into());
            s.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            s.metadata.owner_references = controller.map(|(kind, uid)| {
                vec![OwnerReference {
                    kind: kind.into(),
                    name: "other".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            });
            s
        };
        let owner = ("uid-1", ("berth.dev/appenvironment", "shop"));
        let hand_made = service(&[("app", "shop")], None);
        let refuse = Foreign::Refuse("set spec.adopt");
        let message = foreign_conflict(&hand_made, owner, refuse).unwrap();
        assert_eq!(message, "Service shop exists and Berth did not create it; set spec.adopt");
        assert_eq!(foreign_conflict(&hand_made, owner, Foreign::Adopt), None);
        // Another controller's object is never taken, adopted or not.
        let owned = service(&[], Some(("HelmRelease", "uid-2")));
        for foreign in [refuse, Foreign::Adopt] {
            assert!(foreign_conflict(&owned, owner, foreign).unwrap().contains("controlled by HelmRelease other"));
        }
        // The owner's own: by controller reference, or (restored, re-labelled) by its label.
        assert_eq!(foreign_conflict(&service(&[], Some(("AppEnvironment", "uid-1"))), owner, refuse), None);
        let restored = service(&[("berth.dev/appenvironment", "shop")], None);
        assert_eq!(foreign_conflict(&restored, owner, refuse), None);
        let neighbours = service(&[("berth.dev/appenvironment", "shop-2")], None);
        assert!(foreign_conflict(&neighbours, owner, refuse).is_some());
    }

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

    #[test]
    fn resource_versions_compare_as_integers() {
        assert_eq!(compare_resource_versions("9", "10"), Some(Ordering::Less));
        assert_eq!(compare_resource_versions("10", "10"), Some(Ordering::Equal));
        assert_eq!(compare_resource_versions("101", "99"), Some(Ordering::Greater));
        assert_eq!(compare_resource_versions("010", "9"), None);
        assert_eq!(compare_resource_versions("abc", "9"), None);
        assert_eq!(compare_resource_versions("", "9"), None);
    }

    #[test]
    fn a_write_counts_until_the_cache_shows_it() {
        use k8s_openapi::api::core::v1::Service;
        let log = WriteLog::<String>::default();
        let key = WriteKey::new::<Service>("ns", "a");
        log.record(key.clone(), "h1".into(), "10");
        // The cache is older than the write, or does not have the object yet.
        assert_eq!(log.pending(&key, Some("9"), true).as_deref(), Some("h1"));
        assert_eq!(log.pending(&key, None, true).as_deref(), Some("h1"));
        // Absent from a cache that does not report deletions: nothing can be inferred.
        assert_eq!(log.pending(&key, None, false), None);
        log.record(key.clone(), "h1".into(), "10");
        // Once the cache has the write (or anything newer), the cache is trusted again.
        assert_eq!(log.pending(&key, Some("11"), true), None);
        assert_eq!(log.len(), 0);
        // Watch events retire entries: the write itself, a deletion, a relist.
        let mut svc = Service::default();
        svc.metadata.namespace = Some("ns".into());
        svc.metadata.name = Some("a".into());
        svc.metadata.resource_version = Some("10".into());
        log.record(key.clone(), "h1".into(), "10");
        log.observe(&watcher::Event::Apply(svc.clone()));
        assert_eq!(log.len(), 0);
        log.record(key.clone(), "h1".into(), "12");
        log.observe(&watcher::Event::Apply(svc.clone()));
        assert_eq!(log.len(), 1, "an older event does not retire a newer write");
        log.observe(&watcher::Event::Delete(svc.clone()));
        assert_eq!(log.len(), 0);
        log.record(key.clone(), "h1".into(), "12");
        log.observe(&watcher::Event::<Service>::InitDone);
        assert_eq!(log.len(), 0);
        // Unusual resourceVersions are never relied on.
        log.record(key, "h1".into(), "opaque");
        assert_eq!(log.len(), 0);
    }
}

//! Restore: the pure plan of a restore — which of a Backup's exported objects come back, how
//! they are rewritten for the target namespaces, and in which app-aware order — computed from
//! the Restore spec and the objects read from the repository. No I/O: the controller reads
//! the objects, creates them stage by stage (honouring `spec.existingResourcePolicy` and
//! `spec.dryRun`, which do not change the plan), and runs the data Jobs in the
//! [`Stage::DatabaseData`] and [`Stage::VolumeData`] stages.
//!
//! What never comes back:
//! - objects that only exist as the output of a controller: Pods, ReplicaSets,
//!   ControllerRevisions, Endpoints, EndpointSlices, Events, Leases, PersistentVolumes (a
//!   restored claim binds a new volume; its data comes back in the volume-data stage);
//! - children Berth manages (`app.kubernetes.io/managed-by: berth`): their operator recreates
//!   them from the restored AppEnvironments and DatabaseInstances. The exception is the
//!   Secrets of a DatabaseInstance (labelled `berth.dev/databaseinstance`): the restored
//!   database data carries the old passwords, so the Secrets must carry them too, and the
//!   DatabaseInstance controller keeps existing credentials rather than generating new ones;
//! - service-account token Secrets (the token controller issues new ones);
//! - Backups and Restores (Backups are found again in the bucket; a restored Restore would
//!   run again); BackupPolicies unless `spec.includeKinds` names them, because a restored
//!   policy would start writing into the same repository as the original.
//!
//! What is rewritten:
//! - namespaces by `spec.namespaceMapping`: `metadata.namespace`, the name of a Namespace
//!   object, an AppEnvironment's `spec.networkPolicy.allowFromNamespaces`, and ServiceAccount
//!   subjects of RoleBindings (DatabaseInstance specs name no namespace);
//! - metadata the API server fills in is removed: `uid`, `resourceVersion`, `generation`,
//!   `creationTimestamp`, `deletionTimestamp`, `deletionGracePeriodSeconds`, `selfLink`,
//!   `managedFields`, and `status`;
//! - **all** `ownerReferences`: a reference names its owner by uid, and a restored owner gets
//!   a new uid, so a kept reference would point at an object that no longer exists and the
//!   garbage collector would delete the restored object. Owners that matter re-adopt their
//!   dependents (Berth's controllers set owner references on every apply);
//! - allocated addresses of Services (`clusterIP`/`clusterIPs` unless headless, `nodePort`,
//!   `healthCheckNodePort`) and the binding of claims (`volumeName` and the binding
//!   annotations), which belong to the source cluster.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::api::restore::Restore;
use crate::api::validation::FieldError;

/// The app-aware order of a restore. The controller walks [`Stage::ALL`] in order and waits
/// for each stage before the next (DatabaseInstances Ready before their data is loaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Namespaces, ServiceAccounts, Secrets and ConfigMaps.
    ConfigAndSecrets,
    /// PersistentVolumeClaims.
    Volumes,
    /// DatabaseInstances; the controller waits until they are Ready.
    Databases,
    /// No objects: the controller runs the database restore Jobs here.
    DatabaseData,
    /// No objects: the controller runs the volume restore Jobs here.
    VolumeData,
    /// AppEnvironments (last) and every other object.
    Apps,
}

impl Stage {
    /// Every stage, in the order a restore runs them.
    pub const ALL: [Stage; 6] = [
        Stage::ConfigAndSecrets,
        Stage::Volumes,
        Stage::Databases,
        Stage::DatabaseData,
        Stage::VolumeData,
        Stage::Apps,
    ];
}

/// An object of the backup that the plan leaves out, and why (for `dryRun` and events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// `Kind namespace/name` (or `Kind name` when cluster-scoped), as in the backup.
    pub object: String,
    pub reason: &'static str,
}

/// What a restore creates, stage by stage.
#[derive(Clone, Debug, PartialEq)]
pub struct RestorePlan {
    /// One entry per stage, in [`Stage::ALL`] order (stages without objects included).
    pub stages: Vec<(Stage, Vec<Value>)>,
    /// Objects left out, in backup order.
    pub dropped: Vec<Dropped>,
}

impl RestorePlan {
    /// The objects of one stage.
    pub fn objects(&self, stage: Stage) -> &[Value] {
        self.stages.iter().find(|(s, _)| *s == stage).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }

    /// Every namespace the planned objects go into (after `spec.namespaceMapping`).
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.stages
            .iter()
            .flat_map(|(_, objects)| objects)
            .filter_map(|o| o.pointer("/metadata/namespace").and_then(Value::as_str))
            .filter(|ns| !ns.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The namespace `source` maps to under `spec.namespaceMapping` (itself when unmapped).
pub fn target_namespace(restore: &Restore, source: &str) -> String {
    restore.spec.namespace_mapping.get(source).cloned().unwrap_or_else(|| source.to_string())
}

/// Why an object is left out.
pub mod reason {
    pub const NOT_INCLUDED: &str = "NotInIncludeKinds";
    pub const EXCLUDED: &str = "InExcludeKinds";
    pub const RECREATED_BY_CONTROLLER: &str = "RecreatedByItsController";
    pub const MANAGED_BY_BERTH: &str = "RecreatedByBerth";
    pub const SERVICE_ACCOUNT_TOKEN: &str = "ServiceAccountToken";
    pub const BACKUP_MACHINERY: &str = "BackupOrRestore";
    pub const POLICY_NOT_INCLUDED: &str = "BackupPolicyNotIncluded";
    pub const SYNCED_BY_EXTERNAL_SECRETS: &str = "SyncedByExternalSecrets";
}

/// The API group of Berth's own kinds.
pub(super) const BERTH_GROUP: &str = "berth.dev";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The label that marks a child of a DatabaseInstance (see `resources::meta::owner_label_key`).
const DATABASE_LABEL: &str = "berth.dev/databaseinstance";

/// The note of the event that tells why Secrets synced by the External Secrets Operator were
/// left out of a restore (they are not restored, so a reader would look for them); `None` when
/// there were none.
pub fn synced_secrets_note(dropped: &[Dropped]) -> Option<String> {
    let synced: Vec<&str> =
        dropped.iter().filter(|d| d.reason == reason::SYNCED_BY_EXTERNAL_SECRETS).map(|d| d.object.as_str()).collect();
    (!synced.is_empty()).then(|| {
        format!(
            "not restored ({}): {}; the External Secrets Operator writes them from their store, whose value is newer than the backup's",
            reason::SYNCED_BY_EXTERNAL_SECRETS,
            synced.join(", ")
        )
    })
}

/// A Secret the External Secrets Operator writes from AWS Secrets Manager or another store
/// (owned by an ExternalSecret, or carrying that operator's labels): the store holds the
/// current value, so a restore must never put an older copy back.
fn synced_by_external_secrets(secret: &Value) -> bool {
    let owned = secret.pointer("/metadata/ownerReferences").and_then(Value::as_array).is_some_and(|owners| {
        owners.iter().any(|o| o["apiVersion"].as_str().is_some_and(|v| v.starts_with("external-secrets.io/")))
    });
    let labelled = secret
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .is_some_and(|labels| labels.keys().any(|k| k.starts_with("reconcile.external-secrets.io/")));
    owned || labelled
}

#[cfg(test)]
#[test]
fn the_note_names_only_the_synced_secrets() {
    let dropped = |object: &str, reason| Dropped { object: object.into(), reason };
    assert_eq!(synced_secrets_note(&[dropped("Pod shop/web-1", reason::RECREATED_BY_CONTROLLER)]), None);
    let note = synced_secrets_note(&[
        dropped("Secret shop/db", reason::SYNCED_BY_EXTERNAL_SECRETS),
        dropped("Pod shop/web-1", reason::RECREATED_BY_CONTROLLER),
        dropped("Secret shop/api", reason::SYNCED_BY_EXTERNAL_SECRETS),
    ])
    .unwrap();
    assert!(note.starts_with("not restored (SyncedByExternalSecrets): Secret shop/db, Secret shop/api;"), "{note}");
    assert!(!note.contains("web-1"), "{note}");
}

#[cfg(test)]
#[test]
fn secrets_synced_by_external_secrets_are_never_restored() {
    let owned = serde_json::json!({"metadata": {"ownerReferences": [{"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret", "name": "db"}]}});
    let labelled = serde_json::json!({"metadata": {"labels": {"reconcile.external-secrets.io/managed": "true"}}});
    let own = serde_json::json!({"metadata": {"labels": {"app": "shop"}, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap"}]}});
    assert!(synced_by_external_secrets(&owned) && synced_by_external_secrets(&labelled));
    assert!(!synced_by_external_secrets(&own));
}

/// Kinds that are the output of a controller, by (group, Kind).
const RECREATED: &[(&str, &str)] = &[
    ("", "Pod"),
    ("apps", "ReplicaSet"),
    ("apps", "ControllerRevision"),
    ("", "Endpoints"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("", "Event"),
    ("events.k8s.io", "Event"),
    ("coordination.k8s.io", "Lease"),
    ("", "PersistentVolume"),
];

/// `kind` or `kind.group` from `spec.includeKinds`/`excludeKinds`, lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KindFilter {
    name: String,
    group: Option<String>,
}

impl KindFilter {
    fn parse(entry: &str) -> Option<Self> {
        let lower = entry.trim().to_ascii_lowercase();
        let valid = !lower.is_empty()
            && lower.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !valid {
            return None;
        }
        Some(match lower.split_once('.') {
            Some((name, group)) => KindFilter { name: name.into(), group: Some(group.into()) },
            None => KindFilter { name: lower, group: None },
        })
    }

    fn matches(&self, obj: &ObjectKind) -> bool {
        let kind = obj.kind.to_ascii_lowercase();
        (self.name == kind || self.name == plural(&kind)) && self.group.as_ref().is_none_or(|g| *g == obj.group)
    }
}

/// The plural resource name of a (lowercase) Kind, by the rules Kubernetes' own kinds follow.
pub(super) fn plural(kind: &str) -> String {
    if ["ss", "x", "ch", "sh"].iter().any(|s| kind.ends_with(s)) {
        format!("{kind}es")
    } else if kind.ends_with('s') {
        kind.to_string()
    } else if let Some(stem) = kind.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{kind}s")
    }
}

/// Order inside a stage: rank, Kind, namespace, name.
type SortKey = (u8, String, String, String);

struct ObjectKind {
    group: String,
    kind: String,
}

/// Plans the restore of `objects` (as exported by the Backup) for `restore`. Invalid filters or
/// mappings and malformed objects are all reported at once.
pub fn plan(restore: &Restore, objects: Vec<Value>) -> Result<RestorePlan, Vec<FieldError>> {
    let spec = &restore.spec;
    let mut errors = Vec::new();

    let mut filters = |entries: &[String], field: &str| -> Vec<(usize, KindFilter)> {
        entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let f = KindFilter::parse(e).map(|f| (i, f));
                if f.is_none() {
                    errors.push(FieldError::new(
                        format!("{field}[{i}]"),
                        format!("{e:?} must be a kind or resource, optionally with its API group: e.g. \"Secret\", \"configmaps\", \"deployments.apps\""),
                    ));
                }
                f
            })
            .collect()
    };
    let include = filters(&spec.include_kinds, "spec.includeKinds");
    let exclude = filters(&spec.exclude_kinds, "spec.excludeKinds");
    for (i, e) in &exclude {
        if include.iter().any(|(_, f)| f == e) {
            errors.push(FieldError::new(
                format!("spec.excludeKinds[{i}]"),
                format!("{:?} is also in spec.includeKinds; list it in one of them", spec.exclude_kinds[*i]),
            ));
        }
    }
    let include: Vec<KindFilter> = include.into_iter().map(|(_, f)| f).collect();
    let exclude: Vec<KindFilter> = exclude.into_iter().map(|(_, f)| f).collect();
    for (from, to) in &spec.namespace_mapping {
        for (what, ns) in [("source", from), ("target", to)] {
            if !is_dns_label(ns) {
                errors.push(FieldError::new(
                    format!("spec.namespaceMapping.{from}"),
                    format!("{what} namespace {ns:?} must be a DNS label (lowercase letters, digits and '-', at most 63 characters)"),
                ));
            }
        }
    }

    let mut staged: BTreeMap<Stage, Vec<(SortKey, Value)>> = BTreeMap::new();
    let mut dropped = Vec::new();
    for (i, mut obj) in objects.into_iter().enumerate() {
        let Some(kind) = object_kind(&obj) else {
            errors.push(FieldError::new(
                format!("backup.objects[{i}]"),
                "is not a Kubernetes object (needs apiVersion, kind and metadata.name)",
            ));
            continue;
        };
        let label =
            |key: &str| obj.pointer(&format!("/metadata/labels/{}", key.replace('/', "~1"))).and_then(Value::as_str);
        let gk = (kind.group.as_str(), kind.kind.as_str());
        let why = if !include.is_empty() && !include.iter().any(|f| f.matches(&kind)) {
            Some(reason::NOT_INCLUDED)
        } else if exclude.iter().any(|f| f.matches(&kind)) {
            Some(reason::EXCLUDED)
        } else if RECREATED.contains(&gk) {
            Some(reason::RECREATED_BY_CONTROLLER)
        } else if gk == ("", "Secret")
            && obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
        {
            Some(reason::SERVICE_ACCOUNT_TOKEN)
        } else if gk == ("", "Secret") && synced_by_external_secrets(&obj) {
            Some(reason::SYNCED_BY_EXTERNAL_SECRETS)
        } else if label(MANAGED_BY_LABEL) == Some("berth") && !(gk == ("", "Secret") && label(DATABASE_LABEL).is_some())
        {
            Some(reason::MANAGED_BY_BERTH)
        } else if kind.group == BERTH_GROUP && (kind.kind == "Backup" || kind.kind == "Restore") {
            Some(reason::BACKUP_MACHINERY)
        } else if gk == (BERTH_GROUP, "BackupPolicy") && !include.iter().any(|f| f.matches(&kind)) {
            Some(reason::POLICY_NOT_INCLUDED)
        } else {
            None
        };
        if let Some(reason) = why {
            dropped.push(Dropped { object: describe(&obj, &kind), reason });
            continue;
        }

        clean(&mut obj, &kind);
        map_namespaces(&mut obj, &kind, &spec.namespace_mapping);
        let (stage, rank) = stage_of(&kind);
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        staged.entry(stage).or_default().push(((rank, kind.kind, ns, name), obj));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let stages = Stage::ALL
        .iter()
        .map(|stage| {
            let mut objs = staged.remove(stage).unwrap_or_default();
            objs.sort_by(|a, b| a.0.cmp(&b.0));
            (*stage, objs.into_iter().map(|o| o.1).collect())
        })
        .collect();
    Ok(RestorePlan { stages, dropped })
}

fn object_kind(obj: &Value) -> Option<ObjectKind> {
    let api_version = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    obj.pointer("/metadata/name")?.as_str().filter(|n| !n.is_empty())?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    Some(ObjectKind { group: group.into(), kind: kind.into() })
}

fn describe(obj: &Value, kind: &ObjectKind) -> String {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{} {ns}/{name}", kind.kind),
        None => format!("{} {name}", kind.kind),
    }
}

/// The stage of an object and its rank inside the stage (lower first).
fn stage_of(kind: &ObjectKind) -> (Stage, u8) {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Namespace") => (Stage::ConfigAndSecrets, 0),
        ("", "ServiceAccount") => (Stage::ConfigAndSecrets, 1),
        ("", "Secret") => (Stage::ConfigAndSecrets, 2),
        ("", "ConfigMap") => (Stage::ConfigAndSecrets, 3),
        ("", "PersistentVolumeClaim") => (Stage::Volumes, 0),
        (BERTH_GROUP, "DatabaseInstance") => (Stage::Databases, 0),
        (BERTH_GROUP, "AppEnvironment") => (Stage::Apps, 1),
        _ => (Stage::Apps, 0),
    }
}

/// Removes what the API server or the source cluster filled in.
fn clean(obj: &mut Value, kind: &ObjectKind) {
    let Some(map) = obj.as_object_mut() else { return };
    map.remove("status");
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
            "ownerReferences",
        ] {
            meta.remove(key);
        }
        if kind.group.is_empty() && kind.kind == "PersistentVolumeClaim" {
            remove_keys(
                meta.get_mut("annotations"),
                &[
                    "pv.kubernetes.io/bind-completed",
                    "pv.kubernetes.io/bound-by-controller",
                    "volume.beta.kubernetes.io/storage-provisioner",
                    "volume.kubernetes.io/storage-provisioner",
                    "volume.kubernetes.io/selected-node",
                ],
            );
        }
    }
    let Some(spec) = map.get_mut("spec").and_then(Value::as_object_mut) else { return };
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Service") => {
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            spec.remove("healthCheckNodePort");
            for port in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(p) = port.as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
        ("", "PersistentVolumeClaim") => {
            spec.remove("volumeName");
        }
        _ => {}
    }
}

fn remove_keys(map: Option<&mut Value>, keys: &[&str]) {
    if let Some(m) = map.and_then(Value::as_object_mut) {
        for k in keys {
            m.remove(*k);
        }
    }
}

fn map_namespaces(obj: &mut Value, kind: &ObjectKind, mapping: &BTreeMap<String, String>) {
    if mapping.is_empty() {
        return;
    }
    let rename = |v: &mut Value| {
        if let Some(to) = v.as_str().and_then(|ns| mapping.get(ns)) {
            *v = Value::String(to.clone());
        }
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(ns) = meta.get_mut("namespace") {
            rename(ns);
        }
        if kind.group.is_empty()
            && kind.kind == "Namespace"
            && let Some(name) = meta.get_mut("name")
        {
            rename(name);
        }
    }
    match (kind.group.as_str(), kind.kind.as_str()) {
        (BERTH_GROUP, "AppEnvironment") => {
            if let Some(list) = obj.pointer_mut("/spec/networkPolicy/allowFromNamespaces").and_then(Value::as_array_mut)
            {
                list.iter_mut().for_each(rename);
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            for subject in obj.get_mut("subjects").and_then(Value::as_array_mut).into_iter().flatten() {
                let subject: &mut Map<String, Value> = match subject.as_object_mut() {
                    Some(s) => s,
                    None => continue,
                };
                if subject.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                    && let Some(ns) = subject.get_mut("namespace")
                {
                    rename(ns);
                }
            }
        }
        _ => {}
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

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
use std::time::Duration;

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

/// What the API server says about a target namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceState {
    Active,
    /// Being deleted: it refuses new objects.
    Terminating,
    Missing,
}

/// Reason of `Ready=False` while a target namespace does not exist.
pub const NAMESPACE_NOT_FOUND: &str = "NamespaceNotFound";
/// Reason of `Ready=False` while a target namespace is being deleted.
pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";
/// How often a restore waiting for its target namespaces looks again.
pub const NAMESPACE_RECHECK: Duration = Duration::from_secs(30);

fn quoted_list(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// The reason and message of a restore that cannot start (or go on) because a target namespace
/// is missing or being deleted; `None` when every namespace is usable. Berth never creates
/// namespaces: who may create them is the cluster's decision, not a restore's.
pub fn namespace_problem(states: &[(String, NamespaceState)]) -> Option<(&'static str, String)> {
    let with = |wanted: NamespaceState| -> Vec<&str> {
        states.iter().filter(|(_, s)| *s == wanted).map(|(n, _)| n.as_str()).collect()
    };
    let recheck = NAMESPACE_RECHECK.as_secs();
    let missing = with(NamespaceState::Missing);
    if !missing.is_empty() {
        let (noun, verb, them) =
            if missing.len() == 1 { ("namespace", "does", "it") } else { ("namespaces", "do", "them") };
        return Some((
            NAMESPACE_NOT_FOUND,
            format!(
                "target {noun} {} {verb} not exist; create {them} (Berth does not create namespaces): kubectl create \
                 namespace {}. The restore starts once {them} exist{} (checked every {recheck} s)",
                quoted_list(&missing),
                missing.join(" "),
                if missing.len() == 1 { "s" } else { "" },
            ),
        ));
    }
    let terminating = with(NamespaceState::Terminating);
    if !terminating.is_empty() {
        let (noun, verb) = if terminating.len() == 1 { ("namespace", "is") } else { ("namespaces", "are") };
        return Some((
            NAMESPACE_TERMINATING,
            format!(
                "target {noun} {} {verb} being deleted and accept{} no new objects; wait until deletion finishes and \
                 create {} again (Berth does not create namespaces), or map to another namespace in \
                 spec.namespaceMapping (checked every {recheck} s)",
                quoted_list(&terminating),
                if terminating.len() == 1 { "s" } else { "" },
                if terminating.len() == 1 { "it" } else { "them" },
            ),
        ));
    }
    None
}

/// Longest a restore waits for its DatabaseInstances to become Ready (image pulls, initdb of a
/// large volume, RabbitMQ cluster formation) before it fails.
pub const DATABASE_READY_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Reason of a restore that gave up waiting for a DatabaseInstance.
pub const DATABASE_NOT_READY: &str = "DatabaseNotReady";
/// How long a Restore may take when `spec.timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Reason of a restore that ran past `spec.timeout`.
pub const TIMED_OUT: &str = "TimedOut";

/// `spec.timeout` as a duration: hours, minutes and seconds in any order, such as `1h`,
/// `90m` or `2h30m` (the schema admits only that shape); the default when unset.
pub fn timeout(restore: &Restore) -> Result<Duration, FieldError> {
    let Some(text) = restore.spec.timeout.as_deref() else { return Ok(DEFAULT_TIMEOUT) };
    parse_duration(text).filter(|d| !d.is_zero()).ok_or_else(|| {
        FieldError::new(
            "spec.timeout",
            format!("{text:?} is not a duration; write hours, minutes and seconds such as 1h, 90m or 2h30m"),
        )
    })
}

fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' if !number.is_empty() => {
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(unit)?)?;
                number.clear();
            }
            _ => return None,
        }
    }
    (number.is_empty() && !text.is_empty()).then_some(Duration::from_secs(total))
}

/// The message of a restore that ran past its timeout.
pub fn timed_out_message(limit: Duration) -> String {
    format!(
        "the restore did not finish within spec.timeout ({} minutes); objects restored so far stay. Look at status.errors and the agent Jobs' pods, then create a new Restore with a longer spec.timeout and existingResourcePolicy: update",
        limit.as_secs() / 60
    )
}

/// Reason of a restore that gave up waiting for its agent Jobs.
pub const JOBS_TIMED_OUT: &str = "JobsTimedOut";

/// Whether a wait that began at `started` has run longer than `limit` at `now`. A wait whose
/// start is unknown has just begun.
pub fn deadline_passed(started: Option<jiff::Timestamp>, now: jiff::Timestamp, limit: Duration) -> bool {
    started.is_some_and(|s| {
        now.duration_since(s) > jiff::SignedDuration::try_from(limit).unwrap_or(jiff::SignedDuration::MAX)
    })
}

/// `30 minutes`, `6 h 15 min`.
fn human(limit: Duration) -> String {
    let minutes = limit.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} minutes"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// Why a restore stops waiting for the DatabaseInstance `namespace/name`: `ready` is its
/// `Ready` condition's reason and message (`None`: the instance does not exist, and
/// `create_error` is why, if the restore recorded one).
pub fn database_not_ready_message(
    namespace: &str,
    name: &str,
    ready: Option<(&str, &str)>,
    create_error: Option<&str>,
) -> String {
    let state = match (ready, create_error) {
        (Some((reason, message)), _) => format!("its Ready condition says {reason}: {message}"),
        (None, Some(e)) => format!("it does not exist: {e}"),
        (None, None) => "it does not exist".to_string(),
    };
    format!(
        "DatabaseInstance {namespace}/{name} did not become Ready within {}: {state}. Its data was not restored; fix \
         the instance (kubectl describe dbi -n {namespace} {name}) and create a new Restore",
        human(DATABASE_READY_DEADLINE)
    )
}

/// Why a restore stops waiting for its agent Jobs.
pub fn jobs_timed_out_message(jobs: &[String], namespace: &str, limit: Duration) -> String {
    format!(
        "agent Jobs {} in namespace {namespace} did not finish within {}; look at their pods (kubectl get pods -n \
         {namespace} -l berth.dev/restore) and create a new Restore",
        jobs.join(", "),
        human(limit)
    )
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

const BERTH_GROUP: &str = "berth.dev";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The label that marks a child of a DatabaseInstance (see `resources::meta::owner_label_key`).
const DATABASE_LABEL: &str = "berth.dev/databaseinstance";

/// A Secret the External Secrets Operator writes from AWS Secrets Manager or another store
/// (owned by an ExternalSecret, or carrying that operator's labels): the store holds the
/// current value, so a restore must never put an older copy back (issue 18).
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
fn plural(kind: &str) -> String {
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

/// One request a restore's account would make: `verb` on `resource` (plural) of `group`, in
/// `namespace` (cluster-scoped when empty), on the object `name` when given. The controller
/// asks the API server (a SelfSubjectAccessReview as the account) about each.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: Option<String>,
}

impl Access {
    fn new(verb: &'static str, group: &str, resource: &str, namespace: &str, name: Option<&str>) -> Self {
        Self {
            verb,
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.map(str::to_string),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource =
            if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) };
        write!(f, "{} {resource}", self.verb)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if self.namespace.is_empty() {
            write!(f, " (cluster-wide)")
        } else {
            write!(f, " in namespace {:?}", self.namespace)
        }
    }
}

/// The API resource of an object: group, plural name, and whether it is namespaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub group: String,
    pub plural: String,
    pub namespaced: bool,
}

/// What the restore of one Backup writes besides its objects.
pub struct DataWrites<'a> {
    /// The Restore's namespace (where the account and the storage Secrets are).
    pub own_namespace: &'a str,
    /// Where the data Jobs run: the Backup's namespace after `spec.namespaceMapping`.
    pub target_namespace: &'a str,
    /// Names of the storage Secrets (credentials, CA, key) that the Jobs read.
    pub storage_secrets: Vec<&'a str>,
    /// The Backup's data snapshots: (kind, source), e.g. `("postgres", "orders-db")`.
    pub snapshots: Vec<(&'a str, &'a str)>,
}

/// Every request the restore makes as its account, deduplicated and in a stable order:
/// - each planned object: `create` (and `patch` with `existingResourcePolicy: update`) of its
///   resource in its namespace (cluster-wide for cluster-scoped kinds such as Namespace);
/// - each database dump: `update` of the target DatabaseInstance and `get` of its credentials
///   Secret, because `pg_restore --clean` rewrites the database behind it;
/// - each volume: `update` of the target claim, whose files the Job overwrites, and `list` of
///   pods (the Job runs beside the pod that mounts it);
/// - `create` of Jobs where data is restored, and for a target namespace other than the
///   Restore's, `get` and `create` of the storage Secrets there (they are copied as the
///   account).
///
/// `resource_of` resolves an object's kind (discovery); objects it cannot resolve are left
/// out here and fail on their own when created.
pub fn required_access(
    plan: &RestorePlan,
    update: bool,
    data: &DataWrites,
    resource_of: impl Fn(&Value) -> Option<ResourceName>,
) -> Vec<Access> {
    let mut wanted = BTreeSet::new();
    for obj in plan.stages.iter().flat_map(|(_, objects)| objects) {
        let Some(r) = resource_of(obj) else { continue };
        let namespace = if r.namespaced { obj.pointer("/metadata/namespace").and_then(Value::as_str) } else { None };
        let namespace = namespace.unwrap_or_default();
        wanted.insert(Access::new("create", &r.group, &r.plural, namespace, None));
        if update {
            let name = obj.pointer("/metadata/name").and_then(Value::as_str);
            wanted.insert(Access::new("patch", &r.group, &r.plural, namespace, name));
        }
    }
    let target = data.target_namespace;
    let mut jobs = false;
    for (kind, source) in &data.snapshots {
        match *kind {
            "postgres" | "rabbitmq" => {
                wanted.insert(Access::new("update", BERTH_GROUP, "databaseinstances", target, Some(source)));
                let credentials = crate::resources::backup::jobs::credentials_secret_name(source);
                wanted.insert(Access::new("get", "", "secrets", target, Some(&credentials)));
            }
            "dir" => {
                wanted.insert(Access::new("update", "", "persistentvolumeclaims", target, Some(source)));
                wanted.insert(Access::new("list", "", "pods", target, None));
            }
            _ => continue,
        }
        jobs = true;
    }
    if jobs {
        wanted.insert(Access::new("create", "batch", "jobs", target, None));
        if target != data.own_namespace {
            for secret in &data.storage_secrets {
                wanted.insert(Access::new("get", "", "secrets", target, Some(secret)));
                wanted.insert(Access::new("create", "", "secrets", target, None));
            }
        }
    }
    wanted.into_iter().collect()
}

/// Whether `answers` (the account's access reviews) refused the `create` of `obj`, whose API
/// resource is `resource`.
pub fn create_refused(answers: &[(Access, bool)], obj: &Value, resource: &ResourceName) -> bool {
    let namespace = if resource.namespaced { obj.pointer("/metadata/namespace").and_then(Value::as_str) } else { None };
    let wanted = Access::new("create", &resource.group, &resource.plural, namespace.unwrap_or_default(), None);
    answers.iter().any(|(access, allowed)| !allowed && *access == wanted)
}

/// Reason of a restore refused because its account may not make a request it needs.
pub const NOT_AUTHORIZED: &str = "NotAuthorized";

/// The condition of a restore whose account was refused one of the requests it needs
/// (`answers`: each request and whether the API server allows it), or `None` when all are
/// allowed. Nothing has been written when this is decided: the restore ends here.
pub fn authorization_refusal(account: &str, answers: &[(Access, bool)]) -> Option<(&'static str, String)> {
    let refused: Vec<&Access> = answers.iter().filter(|(_, allowed)| !allowed).map(|(a, _)| a).collect();
    let first = refused.first()?;
    let listed = refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let database = refused.iter().any(|a| a.resource == "databaseinstances" && a.verb == "update");
    let why = if database {
        " A database dump is restored (pg_restore --clean rewrites the database) only into a DatabaseInstance the \
         account may update and whose credentials Secret it may get."
    } else {
        ""
    };
    Some((
        NOT_AUTHORIZED,
        format!(
            "{account} may not {first}, which this restore needs; nothing was restored. Refused: {listed}.{why} \
             Grant the account these rights in a Role of that namespace (see deploy/tenant/), map the namespace \
             elsewhere with spec.namespaceMapping, or leave the kind out with spec.excludeKinds"
        ),
    ))
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn restore(spec: &str) -> Restore {
        serde_saphyr::from_str(&format!(
            "apiVersion: berth.dev/v1alpha1\nkind: Restore\nmetadata: {{name: r, namespace: shop}}\nspec:\n  backupName: nightly-20260501030000\n{spec}"
        ))
        .unwrap()
    }

    fn obj(api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": "1111",
                "resourceVersion": "42",
                "generation": 3,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubectl"}],
                "labels": {"app": name},
            },
            "spec": {},
            "status": {"phase": "Ready"},
        })
    }

    fn names(plan: &RestorePlan, stage: Stage) -> Vec<String> {
        plan.objects(stage)
            .iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
            .collect()
    }

    fn backup() -> Vec<Value> {
        vec![
            obj("berth.dev/v1alpha1", "AppEnvironment", "shop", "web"),
            obj("apps/v1", "Deployment", "shop", "legacy"),
            obj("v1", "PersistentVolumeClaim", "shop", "uploads"),
            obj("berth.dev/v1alpha1", "DatabaseInstance", "shop", "db"),
            obj("v1", "ConfigMap", "shop", "settings"),
            obj("v1", "Secret", "shop", "api-key"),
            obj("v1", "Namespace", "", "shop"),
            obj("v1", "Service", "shop", "legacy"),
        ]
    }

    #[test]
    fn timeout_defaults_to_an_hour_and_reads_hours_minutes_and_seconds() {
        assert_eq!(timeout(&restore("")).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout(&restore("  timeout: 90m\n")).unwrap(), Duration::from_secs(5400));
        assert_eq!(timeout(&restore("  timeout: 2h30m15s\n")).unwrap(), Duration::from_secs(9015));
        assert_eq!(timeout(&restore("  timeout: 45s\n")).unwrap(), Duration::from_secs(45));
        for bad in ["0m", "1d", "h", "1h30", "1.5h", "\"\""] {
            let err = timeout(&restore(&format!("  timeout: {bad}\n"))).unwrap_err();
            assert_eq!(err.field, "spec.timeout", "{bad}");
            assert!(err.message.contains("2h30m"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn stages_follow_the_app_aware_order() {
        let plan = plan(&restore(""), backup()).unwrap();
        let order: Vec<Stage> = plan.stages.iter().map(|(s, _)| *s).collect();
        assert_eq!(order, Stage::ALL);
        assert_eq!(names(&plan, Stage::ConfigAndSecrets), ["Namespace/shop", "Secret/api-key", "ConfigMap/settings"]);
        assert_eq!(names(&plan, Stage::Volumes), ["PersistentVolumeClaim/uploads"]);
        assert_eq!(names(&plan, Stage::Databases), ["DatabaseInstance/db"]);
        assert!(plan.objects(Stage::DatabaseData).is_empty());
        assert!(plan.objects(Stage::VolumeData).is_empty());
        assert_eq!(names(&plan, Stage::Apps), ["Deployment/legacy", "Service/legacy", "AppEnvironment/web"]);
        assert!(plan.dropped.is_empty(), "{:?}", plan.dropped);
    }

    #[test]
    fn server_populated_metadata_and_status_are_stripped() {
        let mut dep = obj("apps/v1", "Deployment", "shop", "legacy");
        dep["metadata"]["ownerReferences"] = json!([{"apiVersion": "x/v1", "kind": "Thing", "name": "t", "uid": "9"}]);
        dep["metadata"]["annotations"] = json!({"keep": "me"});
        let plan = plan(&restore(""), vec![dep]).unwrap();
        let out = &plan.objects(Stage::Apps)[0];
        let meta = out["metadata"].as_object().unwrap();
        let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["annotations", "labels", "name", "namespace"]);
        assert!(out.get("status").is_none());
        assert_eq!(out["spec"], json!({}));
    }

    #[test]
    fn services_and_claims_lose_what_the_source_cluster_allocated() {
        let mut svc = obj("v1", "Service", "shop", "web");
        svc["spec"] = json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "type": "NodePort",
            "ports": [{"port": 80, "nodePort": 30080}]});
        let mut headless = obj("v1", "Service", "shop", "db-headless");
        headless["spec"] = json!({"clusterIP": "None", "clusterIPs": ["None"]});
        let mut pvc = obj("v1", "PersistentVolumeClaim", "shop", "uploads");
        pvc["spec"] = json!({"volumeName": "pv-123", "resources": {"requests": {"storage": "1Gi"}}});
        pvc["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes", "team": "a"});
        let plan = plan(&restore(""), vec![svc, headless, pvc]).unwrap();
        let apps = plan.objects(Stage::Apps);
        assert_eq!(apps[1]["spec"], json!({"type": "NodePort", "ports": [{"port": 80}]}));
        assert_eq!(apps[0]["spec"], json!({"clusterIP": "None", "clusterIPs": ["None"]}));
        let claim = &plan.objects(Stage::Volumes)[0];
        assert_eq!(claim["spec"], json!({"resources": {"requests": {"storage": "1Gi"}}}));
        assert_eq!(claim["metadata"]["annotations"], json!({"team": "a"}));
    }

    #[test]
    fn namespace_mapping_rewrites_namespaces_everywhere() {
        let mut app = obj("berth.dev/v1alpha1", "AppEnvironment", "shop", "web");
        app["spec"] = json!({"networkPolicy": {"allowFromNamespaces": ["shop", "monitoring"]}});
        let mut rb = obj("rbac.authorization.k8s.io/v1", "RoleBinding", "shop", "rb");
        rb["subjects"] = json!([{"kind": "ServiceAccount", "name": "web", "namespace": "shop"},
            {"kind": "User", "name": "alice", "namespace": "shop"}]);
        let objects = vec![app, rb, obj("v1", "Namespace", "", "shop"), obj("v1", "ConfigMap", "other", "c")];
        let plan = plan(&restore("  namespaceMapping: {shop: shop-restored}\n"), objects).unwrap();
        let ns = &plan.objects(Stage::ConfigAndSecrets)[0];
        assert_eq!(ns["metadata"]["name"], "shop-restored");
        let cm = &plan.objects(Stage::ConfigAndSecrets)[1];
        assert_eq!(cm["metadata"]["namespace"], "other", "unmapped namespaces stay");
        let apps = plan.objects(Stage::Apps);
        assert_eq!(apps[0]["metadata"]["namespace"], "shop-restored");
        assert_eq!(apps[0]["subjects"][0]["namespace"], "shop-restored");
        assert_eq!(apps[0]["subjects"][1]["namespace"], "shop", "only ServiceAccount subjects");
        assert_eq!(apps[1]["metadata"]["namespace"], "shop-restored");
        assert_eq!(apps[1]["spec"]["networkPolicy"]["allowFromNamespaces"], json!(["shop-restored", "monitoring"]));
    }

    #[test]
    fn include_kinds_accepts_kind_plural_and_group_case_insensitively() {
        for include in ["[Secret, configmaps]", "[SECRETS, ConfigMap]", "[secret, configmap.]"] {
            let r = restore(&format!("  includeKinds: {include}\n"));
            let result = plan(&r, backup());
            if include.contains("configmap.") {
                let e = result.unwrap_err();
                assert_eq!(e[0].field, "spec.includeKinds[1]");
                continue;
            }
            let plan = result.unwrap();
            assert_eq!(names(&plan, Stage::ConfigAndSecrets), ["Secret/api-key", "ConfigMap/settings"], "{include}");
            assert!(plan.objects(Stage::Apps).is_empty(), "{include}");
            assert!(plan.dropped.iter().all(|d| d.reason == reason::NOT_INCLUDED));
        }
        let plan = plan(&restore("  includeKinds: [deployments.apps, appenvironments.berth.dev]\n"), backup()).unwrap();
        assert_eq!(names(&plan, Stage::Apps), ["Deployment/legacy", "AppEnvironment/web"]);
        let plan_wrong_group = super::plan(&restore("  includeKinds: [deployments.extensions]\n"), backup()).unwrap();
        assert!(plan_wrong_group.objects(Stage::Apps).is_empty());
    }

    #[test]
    fn exclude_kinds_wins_and_must_not_contradict_include() {
        let plan = plan(&restore("  excludeKinds: [services, Namespace, persistentvolumeclaims]\n"), backup()).unwrap();
        assert_eq!(names(&plan, Stage::Apps), ["Deployment/legacy", "AppEnvironment/web"]);
        assert!(plan.objects(Stage::Volumes).is_empty());
        assert_eq!(plan.dropped.len(), 3);
        assert!(plan.dropped.iter().all(|d| d.reason == reason::EXCLUDED));
        let e = super::plan(&restore("  includeKinds: [Secret]\n  excludeKinds: [\"bad!\", secret]\n"), backup())
            .unwrap_err();
        assert_eq!(
            e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["spec.excludeKinds[0]", "spec.excludeKinds[1]"]
        );
        assert!(e[1].message.contains("\"secret\" is also in spec.includeKinds"), "{}", e[1].message);
    }

    #[test]
    fn berth_children_are_dropped_but_database_credentials_come_back() {
        let managed = |kind: &str, api: &str, name: &str, owner_label: &str| {
            let mut o = obj(api, kind, "shop", name);
            o["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "berth", owner_label: "x"});
            o
        };
        let objects = vec![
            managed("Deployment", "apps/v1", "web", "berth.dev/appenvironment"),
            managed("ConfigMap", "v1", "db-config", "berth.dev/databaseinstance"),
            managed("Secret", "v1", "db-credentials", "berth.dev/databaseinstance"),
            managed("Secret", "v1", "web-extra", "berth.dev/appenvironment"),
            managed("StatefulSet", "apps/v1", "db", "berth.dev/databaseinstance"),
        ];
        let plan = plan(&restore(""), objects).unwrap();
        assert_eq!(names(&plan, Stage::ConfigAndSecrets), ["Secret/db-credentials"]);
        assert!(plan.objects(Stage::Apps).is_empty());
        assert_eq!(plan.dropped.len(), 4);
        assert!(plan.dropped.iter().all(|d| d.reason == reason::MANAGED_BY_BERTH));
        assert_eq!(plan.dropped[0].object, "Deployment shop/web");
    }

    #[test]
    fn controller_output_tokens_and_backup_objects_are_dropped() {
        let mut token = obj("v1", "Secret", "shop", "sa-token");
        token["type"] = json!("kubernetes.io/service-account-token");
        let objects = vec![
            obj("v1", "Pod", "shop", "web-abc"),
            obj("apps/v1", "ReplicaSet", "shop", "web-123"),
            obj("v1", "Endpoints", "shop", "web"),
            obj("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-x"),
            obj("v1", "Event", "shop", "e1"),
            obj("events.k8s.io/v1", "Event", "shop", "e2"),
            token,
            obj("berth.dev/v1alpha1", "Backup", "shop", "nightly-1"),
            obj("berth.dev/v1alpha1", "Restore", "shop", "r"),
            obj("berth.dev/v1alpha1", "BackupPolicy", "shop", "nightly"),
        ];
        let plan = plan(&restore(""), objects.clone()).unwrap();
        assert!(plan.stages.iter().all(|(_, o)| o.is_empty()), "{:?}", plan.stages);
        let reasons: Vec<&str> = plan.dropped.iter().map(|d| d.reason).collect();
        assert_eq!(
            reasons,
            [
                reason::RECREATED_BY_CONTROLLER,
                reason::RECREATED_BY_CONTROLLER,
                reason::RECREATED_BY_CONTROLLER,
                reason::RECREATED_BY_CONTROLLER,
                reason::RECREATED_BY_CONTROLLER,
                reason::RECREATED_BY_CONTROLLER,
                reason::SERVICE_ACCOUNT_TOKEN,
                reason::BACKUP_MACHINERY,
                reason::BACKUP_MACHINERY,
                reason::POLICY_NOT_INCLUDED,
            ]
        );
        // Named in includeKinds, a BackupPolicy comes back; Pods never do.
        let plan = super::plan(&restore("  includeKinds: [backuppolicies, pods]\n"), objects).unwrap();
        assert_eq!(names(&plan, Stage::Apps), ["BackupPolicy/nightly"]);
    }

    #[test]
    fn invalid_spec_and_objects_are_reported_together() {
        let r = restore("  namespaceMapping: {shop: Shop_Restored}\n  excludeKinds: [\"\"]\n");
        let e = plan(&r, vec![json!({"kind": "ConfigMap"}), obj("v1", "ConfigMap", "shop", "ok")]).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.excludeKinds[0]", "spec.namespaceMapping.shop", "backup.objects[0]"]);
        assert!(e[1].message.contains("Shop_Restored"));
    }

    #[test]
    fn target_namespaces_are_those_of_the_mapped_objects() {
        let r = restore("  namespaceMapping: {shop: shop-copy}\n");
        let plan = plan(&r, backup()).unwrap();
        assert_eq!(plan.namespaces().into_iter().collect::<Vec<_>>(), ["shop-copy"]);
        assert_eq!(target_namespace(&r, "shop"), "shop-copy");
        assert_eq!(target_namespace(&r, "other"), "other");
    }

    #[test]
    fn a_missing_target_namespace_is_named_with_the_fix() {
        use NamespaceState::*;
        assert_eq!(namespace_problem(&[("shop-copy".into(), Active)]), None);
        let (reason, message) =
            namespace_problem(&[("a".into(), Active), ("shop-copy".into(), Missing)]).expect("missing");
        assert_eq!(reason, NAMESPACE_NOT_FOUND);
        assert_eq!(
            message,
            "target namespace \"shop-copy\" does not exist; create it (Berth does not create namespaces): kubectl \
             create namespace shop-copy. The restore starts once it exists (checked every 30 s)"
        );
        let (_, two) = namespace_problem(&[("a".into(), Missing), ("b".into(), Missing)]).unwrap();
        assert!(two.starts_with("target namespaces \"a\", \"b\" do not exist; create them"), "{two}");
        let (reason, gone) = namespace_problem(&[("old".into(), Terminating)]).unwrap();
        assert_eq!(reason, NAMESPACE_TERMINATING);
        assert!(gone.starts_with("target namespace \"old\" is being deleted"), "{gone}");
    }

    #[test]
    fn waits_end_at_their_deadline() {
        let start = jiff::Timestamp::from_second(1_000_000).unwrap();
        let at = |secs: i64| jiff::Timestamp::from_second(1_000_000 + secs).unwrap();
        assert!(!deadline_passed(None, at(1_000_000), DATABASE_READY_DEADLINE), "an unknown start has just begun");
        assert!(!deadline_passed(Some(start), at(29 * 60), DATABASE_READY_DEADLINE));
        assert!(deadline_passed(Some(start), at(31 * 60), DATABASE_READY_DEADLINE));
        assert_eq!(
            database_not_ready_message("shop-copy", "orders-db", Some(("Starting", "0 of 1 pods ready")), None),
            "DatabaseInstance shop-copy/orders-db did not become Ready within 30 minutes: its Ready condition says \
             Starting: 0 of 1 pods ready. Its data was not restored; fix the instance (kubectl describe dbi -n \
             shop-copy orders-db) and create a new Restore"
        );
        assert!(
            database_not_ready_message("n", "db", None, Some("forbidden")).contains("it does not exist: forbidden")
        );
        assert!(
            jobs_timed_out_message(&["j1".into()], "n", Duration::from_secs(6 * 3600 + 900)).contains("6 h 15 min")
        );
    }

    fn resource_of(obj: &Value) -> Option<ResourceName> {
        let (group, plural, namespaced) = match obj["kind"].as_str()? {
            "Deployment" => ("apps", "deployments", true),
            "RoleBinding" => ("rbac.authorization.k8s.io", "rolebindings", true),
            "Secret" => ("", "secrets", true),
            "Namespace" => ("", "namespaces", false),
            "DatabaseInstance" => (BERTH_GROUP, "databaseinstances", true),
            _ => return None,
        };
        Some(ResourceName { group: group.into(), plural: plural.into(), namespaced })
    }

    fn data<'a>(target: &'a str, snapshots: Vec<(&'a str, &'a str)>) -> DataWrites<'a> {
        DataWrites {
            own_namespace: "shop",
            target_namespace: target,
            storage_secrets: vec!["s3-credentials", "repository-key"],
            snapshots,
        }
    }

    fn access(verb: &'static str, group: &str, resource: &str, ns: &str, name: Option<&str>) -> Access {
        Access::new(verb, group, resource, ns, name)
    }

    #[test]
    fn every_object_is_a_create_in_its_own_namespace_and_cluster_scoped_ones_cluster_wide() {
        let objects = vec![
            obj("apps/v1", "Deployment", "kube-system", "evil"),
            obj("rbac.authorization.k8s.io/v1", "RoleBinding", "shop", "rb"),
            obj("apps/v1", "Deployment", "shop", "web"),
            obj("v1", "Namespace", "", "new-ns"),
            obj("example.com/v1", "Unknown", "shop", "u"),
        ];
        let plan = plan(&restore(""), objects).unwrap();
        let needed = required_access(&plan, false, &data("shop", vec![]), resource_of);
        assert_eq!(
            needed,
            [
                access("create", "", "namespaces", "", None),
                access("create", "apps", "deployments", "kube-system", None),
                access("create", "apps", "deployments", "shop", None),
                access("create", "rbac.authorization.k8s.io", "rolebindings", "shop", None),
            ]
        );
        // With existingResourcePolicy: update, each object is also patched, by name.
        let needed = required_access(&plan, true, &data("shop", vec![]), resource_of);
        assert!(needed.contains(&access("patch", "apps", "deployments", "kube-system", Some("evil"))), "{needed:?}");
    }

    #[test]
    fn a_mapped_namespace_is_where_the_objects_are_checked() {
        let plan = plan(
            &restore("  namespaceMapping: {shop: kube-system}\n"),
            vec![obj("rbac.authorization.k8s.io/v1", "RoleBinding", "shop", "admin")],
        )
        .unwrap();
        let needed = required_access(&plan, false, &data("kube-system", vec![]), resource_of);
        assert_eq!(needed, [access("create", "rbac.authorization.k8s.io", "rolebindings", "kube-system", None)]);
    }

    #[test]
    fn a_database_dump_needs_update_of_the_instance_and_get_of_its_credentials() {
        let empty = plan(&restore(""), vec![]).unwrap();
        let needed = required_access(&empty, false, &data("team-b", vec![("postgres", "orders-db")]), resource_of);
        assert_eq!(
            needed,
            [
                access("get", "", "secrets", "team-b", Some("orders-db-credentials")),
                access("get", "", "secrets", "team-b", Some("repository-key")),
                access("get", "", "secrets", "team-b", Some("s3-credentials")),
                access("create", "", "secrets", "team-b", None),
                access("update", BERTH_GROUP, "databaseinstances", "team-b", Some("orders-db")),
                access("create", "batch", "jobs", "team-b", None),
            ]
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        // In its own namespace no Secret is copied; a volume overwrites a claim.
        let needed = required_access(&empty, false, &data("shop", vec![("dir", "uploads")]), resource_of);
        assert_eq!(
            needed,
            [
                access("create", "batch", "jobs", "shop", None),
                access("list", "", "pods", "shop", None),
                access("update", "", "persistentvolumeclaims", "shop", Some("uploads")),
            ]
        );
        // The snapshot of the objects themselves starts no Job.
        assert!(required_access(&empty, false, &data("x", vec![("kubernetes", "")]), resource_of).is_empty());
    }

    #[test]
    fn one_refused_request_refuses_the_restore_and_names_kind_namespace_and_verb() {
        let ok = access("create", "apps", "deployments", "shop", None);
        let bad = access("create", "apps", "deployments", "kube-system", None);
        assert_eq!(authorization_refusal("ServiceAccount shop/berth-backup", &[(ok.clone(), true)]), None);
        assert_eq!(authorization_refusal("ServiceAccount shop/berth-backup", &[]), None);
        let (reason, message) =
            authorization_refusal("ServiceAccount shop/berth-backup", &[(ok, true), (bad, false)]).unwrap();
        assert_eq!(reason, NOT_AUTHORIZED);
        assert!(
            message.starts_with(
                "ServiceAccount shop/berth-backup may not create deployments.apps in namespace \"kube-system\", which \
                 this restore needs; nothing was restored."
            ),
            "{message}"
        );
        assert!(!message.contains("pg_restore"), "{message}");
        let db = access("update", BERTH_GROUP, "databaseinstances", "team-b", Some("orders-db"));
        let (_, message) = authorization_refusal("ServiceAccount team-a/berth-backup", &[(db, false)]).unwrap();
        assert!(
            message.contains("may not update databaseinstances.berth.dev \"orders-db\" in namespace \"team-b\""),
            "{message}"
        );
        assert!(message.contains("pg_restore --clean"), "{message}");
    }

    #[test]
    fn a_dry_run_tells_refused_objects_apart() {
        let miner = obj("apps/v1", "Deployment", "kube-system", "miner");
        let deployments = resource_of(&miner).unwrap();
        let refused = access("create", "apps", "deployments", "kube-system", None);
        assert!(create_refused(&[(refused.clone(), false)], &miner, &deployments));
        assert!(!create_refused(&[(refused, true)], &miner, &deployments));
        let other = access("create", "apps", "deployments", "shop", None);
        assert!(!create_refused(&[(other, false)], &miner, &deployments));
    }

    #[test]
    fn plurals_of_kubernetes_kinds() {
        for (kind, want) in [
            ("ingress", "ingresses"),
            ("networkpolicy", "networkpolicies"),
            ("endpoints", "endpoints"),
            ("gateway", "gateways"),
            ("deployment", "deployments"),
            ("poddisruptionbudget", "poddisruptionbudgets"),
            ("backuppolicy", "backuppolicies"),
        ] {
            assert_eq!(plural(kind), want);
        }
    }
}

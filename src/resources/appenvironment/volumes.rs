//! `spec.volumes`: their validation, the pod volumes and mounts, and the app's claims.
//!
//! Claims carry the app's labels (so BackupPolicies find them) and no owner reference (so they
//! outlive the AppEnvironment); the controller deletes those with `deletionPolicy: Delete`
//! itself when the app goes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::validate::ValidApp;
use crate::api::appenvironment::{
    AccessMode, AppEnvironment, AppVolume, DeletionPolicy, EmptyDirMedium, FileSource, VolumeClaim,
};
use crate::api::validation::FieldError;
use crate::resources::databaseinstance::day2::quantity_bytes;
use crate::resources::meta;

/// Component label of the app's claims.
pub const CLAIM_COMPONENT: &str = "volume";
/// Annotation on a claim: its `deletionPolicy` when it was last applied.
pub const DELETION_POLICY_ANNOTATION: &str = "berth.dev/deletion-policy";
/// Finalizer on an AppEnvironment with a `deletionPolicy: Delete` claim.
pub const VOLUMES_FINALIZER: &str = "berth.dev/volumes";
/// The writable `/tmp` every pod gets (read-only root filesystem).
const TMP: &str = "tmp";

/// The PVC of `volume`.
pub fn claim_name(app: &str, volume: &str) -> String {
    format!("{app}-{volume}")
}

fn access_mode(claim: &VolumeClaim) -> AccessMode {
    claim.access_mode.unwrap_or(AccessMode::ReadWriteOnce)
}

/// A claim only one node (or pod) can mount at a time.
fn single_node(claim: &VolumeClaim) -> bool {
    access_mode(claim) != AccessMode::ReadWriteMany
}

/// Every rule of `spec.volumes` and the volumes workers and cron jobs name. `replicas` is
/// `None` when autoscaling; `rollout` is the resolved rolling update (None with Kubernetes'
/// defaults, which keep a single pod up while its successor starts).
pub fn check(
    app: &AppEnvironment,
    replicas: Option<i32>,
    rollout: &Option<(IntOrString, IntOrString)>,
    recreate: bool,
    errors: &mut Vec<FieldError>,
) {
    let spec = &app.spec;
    let mut names = BTreeSet::new();
    let mut paths = BTreeMap::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let field = |f: &str| format!("spec.volumes[{i}].{f}");
        if !names.insert(v.name.as_str()) {
            errors.push(FieldError::new(
                field("name"),
                format!("{:?} is used by another volume; names are unique", v.name),
            ));
        } else if v.name == TMP || !super::validate::is_dns_label(&v.name) || v.name.len() > 40 {
            errors.push(FieldError::new(
                field("name"),
                format!("{:?} must be lowercase letters, digits and '-' (at most 40) and not \"tmp\" (Berth's own /tmp volume)", v.name),
            ));
        }
        let path = v.mount_path.trim_end_matches('/');
        if !v.mount_path.starts_with('/') || path.is_empty() || path.split('/').any(|s| s == "..") {
            errors.push(FieldError::new(
                field("mountPath"),
                format!("{:?} must be an absolute path below /, e.g. /app/uploads", v.mount_path),
            ));
        } else if path == "/tmp" {
            errors.push(FieldError::new(
                field("mountPath"),
                "/tmp is Berth's writable scratch directory; mount the volume elsewhere",
            ));
        } else if let Some(j) = paths.insert(path.to_string(), i) {
            errors.push(FieldError::new(
                field("mountPath"),
                format!("{path:?} is also the mountPath of spec.volumes[{j}]"),
            ));
        }
        let sources = [v.claim.is_some(), v.config_map.is_some(), v.secret.is_some(), v.empty_dir.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            errors.push(FieldError::new(
                format!("spec.volumes[{i}]"),
                "set exactly one of claim, configMap, secret and emptyDir",
            ));
        }
        if let Some(c) = &v.claim
            && quantity_bytes(&c.size).is_none_or(|b| b <= 0.0)
        {
            errors.push(FieldError::new(field("claim.size"), format!("{:?} is not a size, e.g. 10Gi", c.size)));
        }
        if let Some(limit) = v.empty_dir.as_ref().and_then(|e| e.size_limit.as_ref())
            && quantity_bytes(limit).is_none()
        {
            errors.push(FieldError::new(field("emptyDir.sizeLimit"), format!("{limit:?} is not a size, e.g. 1Gi")));
        }
        for (kind, files) in [("configMap", &v.config_map), ("secret", &v.secret)] {
            for (k, item) in files.iter().flat_map(|f| f.items.iter().enumerate()) {
                if item.path.starts_with('/') || item.path.split('/').any(|s| s == "..") {
                    errors.push(FieldError::new(
                        field(&format!("{kind}.items[{k}].path")),
                        format!("{:?} must be a relative path without '..', e.g. app.conf", item.path),
                    ));
                }
            }
        }
    }

    // A single-node claim cannot follow pods onto several nodes, nor wait for a successor to
    // start before its predecessor stops.
    let single: Vec<&AppVolume> = spec.volumes.iter().filter(|v| v.claim.as_ref().is_some_and(single_node)).collect();
    if let Some(v) = single.first() {
        let mode = access_mode(v.claim.as_ref().expect("filtered on claims")).as_str();
        let fix = "set replicas: 1 with rollout.strategy: Recreate, or use a ReadWriteMany storage class (claim.accessMode: ReadWriteMany)";
        let problem = match replicas {
            None => Some("autoscaling runs several pods".to_string()),
            Some(n) if n > 1 => Some(format!("{n} replicas (the tier's default or spec.replicas) run on several nodes")),
            _ if recreate => None,
            _ if rollout.as_ref().is_some_and(|(_, unavailable)| stops_first(unavailable)) => None,
            _ => Some("a rolling update with maxUnavailable 0 (the tier's default or spec.rollout) starts the new pod before the old one releases the claim".to_string()),
        };
        if let Some(problem) = problem {
            errors.push(FieldError::new(
                format!(
                    "spec.volumes[{}].claim.accessMode",
                    spec.volumes.iter().position(|x| x.name == v.name).unwrap_or(0)
                ),
                format!("claim {:?} is {mode}: one node at a time, but {problem}; {fix}", v.name),
            ));
        }
    }

    let by_name: BTreeMap<&str, &AppVolume> = spec.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
    let users = spec
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("spec.workers[{i}].volumes"), &w.volumes))
        .chain(spec.cron_jobs.iter().enumerate().map(|(i, c)| (format!("spec.cronJobs[{i}].volumes"), &c.volumes)));
    for (field, wanted) in users {
        for (k, name) in wanted.iter().enumerate() {
            match by_name.get(name.as_str()) {
                None => errors.push(FieldError::new(
                    format!("{field}[{k}]"),
                    format!("{name:?} is not the name of one of spec.volumes"),
                )),
                Some(v) if v.claim.as_ref().is_some_and(single_node) => errors.push(FieldError::new(
                    format!("{field}[{k}]"),
                    format!("claim {name:?} is {}: only the app's own pod can mount it; use a ReadWriteMany storage class (claim.accessMode: ReadWriteMany) to share it", access_mode(v.claim.as_ref().expect("a claim")).as_str()),
                )),
                Some(_) => {}
            }
        }
    }
}

/// Whether a rolling update of a single pod stops it before its successor starts.
fn stops_first(max_unavailable: &IntOrString) -> bool {
    match max_unavailable {
        IntOrString::Int(n) => *n >= 1,
        // Percentages round down: only 100% of one pod is one pod.
        IntOrString::String(s) => s.trim_end_matches('%').trim().parse::<u32>().is_ok_and(|p| p >= 100),
    }
}

/// Pod volumes and container mounts: Berth's `/tmp`, then `spec.volumes` (all of them, or
/// only `only`).
pub fn pod_volumes(valid: &ValidApp, only: Option<&[String]>) -> (Vec<Volume>, Vec<VolumeMount>) {
    let app = &valid.app;
    let mut volumes =
        vec![Volume { name: TMP.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }];
    let mut mounts = vec![VolumeMount { name: TMP.into(), mount_path: "/tmp".into(), ..VolumeMount::default() }];
    for v in app.spec.volumes.iter().filter(|v| only.is_none_or(|names| names.contains(&v.name))) {
        let files = v.config_map.is_some() || v.secret.is_some();
        volumes.push(Volume {
            name: v.name.clone(),
            persistent_volume_claim: v.claim.as_ref().map(|_| PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&app.name_any(), &v.name),
                read_only: None,
            }),
            config_map: v.config_map.as_ref().map(|f| ConfigMapVolumeSource {
                name: f.name.clone(),
                items: items(f),
                default_mode: f.default_mode,
                ..ConfigMapVolumeSource::default()
            }),
            secret: v.secret.as_ref().map(|f| SecretVolumeSource {
                secret_name: Some(f.name.clone()),
                items: items(f),
                default_mode: f.default_mode,
                ..SecretVolumeSource::default()
            }),
            empty_dir: v.empty_dir.as_ref().map(|e| EmptyDirVolumeSource {
                medium: e.medium.map(|EmptyDirMedium::Memory| "Memory".to_string()),
                size_limit: e.size_limit.clone().map(Quantity),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: v.name.clone(),
            mount_path: v.mount_path.clone(),
            read_only: (files || v.read_only == Some(true)).then_some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

fn items(f: &FileSource) -> Option<Vec<KeyToPath>> {
    (!f.items.is_empty())
        .then(|| f.items.iter().map(|i| KeyToPath { key: i.key.clone(), path: i.path.clone(), mode: i.mode }).collect())
}

/// Whether any volume in `only` (or any at all) is a claim: the pod then gets an fsGroup, so
/// that a non-root process can write to a fresh volume.
pub fn mounts_claims(valid: &ValidApp, only: Option<&[String]>) -> bool {
    valid.app.spec.volumes.iter().any(|v| v.claim.is_some() && only.is_none_or(|names| names.contains(&v.name)))
}

/// The app's PersistentVolumeClaims: labelled as the app's, without owner reference.
pub fn claims(valid: &ValidApp) -> Vec<PersistentVolumeClaim> {
    let app = &valid.app;
    app.spec
        .volumes
        .iter()
        .filter_map(|v| Some((v, v.claim.as_ref()?)))
        .map(|(v, c)| {
            let mut labels = meta::standard_labels(app, CLAIM_COMPONENT);
            labels.insert("berth.dev/volume".into(), v.name.clone());
            let policy = match c.deletion_policy.unwrap_or_default() {
                DeletionPolicy::Retain => "Retain",
                DeletionPolicy::Delete => "Delete",
            };
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&app.name_any(), &v.name)),
                    namespace: app.namespace(),
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(DELETION_POLICY_ANNOTATION.to_string(), policy.to_string())])),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec![access_mode(c).as_str().into()]),
                    storage_class_name: c.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_string(), Quantity(c.size.clone()))])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }
        })
        .collect()
}

/// Claims of `app` Berth deletes with it (`deletionPolicy: Delete`).
pub fn claims_to_delete(app: &AppEnvironment) -> Vec<String> {
    app.spec
        .volumes
        .iter()
        .filter(|v| v.claim.as_ref().is_some_and(|c| c.deletion_policy == Some(DeletionPolicy::Delete)))
        .map(|v| claim_name(&app.name_any(), &v.name))
        .collect()
}

/// How a claim's size compares with the PVC's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeChange {
    Same,
    Grow { from: String },
    Shrink { from: String },
}

/// Compares the desired `claim` with the existing PVC's requested size.
pub fn size_change(desired: &PersistentVolumeClaim, existing: &PersistentVolumeClaim) -> SizeChange {
    let size = |pvc: &PersistentVolumeClaim| {
        pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
    };
    let (Some(want), Some(have)) = (size(desired), size(existing)) else { return SizeChange::Same };
    match (quantity_bytes(&want), quantity_bytes(&have)) {
        (Some(w), Some(h)) if w > h => SizeChange::Grow { from: have },
        (Some(w), Some(h)) if w < h => SizeChange::Shrink { from: have },
        _ => SizeChange::Same,
    }
}

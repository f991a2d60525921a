//! `spec.externalSecrets`: secrets kept in AWS Secrets Manager or Parameter Store, synced by
//! the External Secrets Operator. Each entry becomes an `ExternalSecret` (external-secrets.io/v1)
//! whose target Secret `<app>-<entry>` the pods receive as variables or files. The type is
//! hand-written with only the fields Berth sets or reads (like [`crate::resources::certificate`]):
//! the operator's full schema is its own to install.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount};
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::build::{app, child_meta};
use super::validate::ValidApp;
use crate::api::appenvironment::{AppEnvironment, SecretStoreKind};
use crate::api::validation::FieldError;

/// Spec of an ExternalSecret (the subset Berth sets).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "external-secrets.io",
    version = "v1",
    kind = "ExternalSecret",
    namespaced,
    schema = "disabled",
    status = "ExternalSecretStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretSpec {
    pub refresh_interval: String,
    pub secret_store_ref: StoreRef,
    pub target: Target,
    pub data: Vec<SecretData>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct StoreRef {
    pub name: String,
    pub kind: String,
}

/// The Secret the operator writes: owned by the ExternalSecret, so it goes with it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub name: String,
    pub creation_policy: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretData {
    pub secret_key: String,
    pub remote_ref: RemoteRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RemoteRef {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Status of an ExternalSecret (the subset Berth reads).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretStatus {
    #[serde(default)]
    pub conditions: Vec<EsoCondition>,
    /// When the target Secret was last written: absent until the first sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_time: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct EsoCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Component label of the ExternalSecrets.
pub const COMPONENT: &str = "external-secret";

/// Name of the ExternalSecret and of its target Secret.
pub fn secret_name(app: &str, entry: &str) -> String {
    format!("{app}-{entry}")
}

const DEFAULT_REFRESH: &str = "1h";

/// One ExternalSecret per `spec.externalSecrets` entry.
pub fn build(valid: &ValidApp) -> Vec<ExternalSecret> {
    let a = app(valid);
    a.spec
        .external_secrets
        .iter()
        .map(|e| {
            let name = secret_name(&a.name_any(), &e.name);
            let mut metadata = child_meta(valid, BTreeMap::new());
            metadata.name = Some(name.clone());
            metadata.labels.get_or_insert_default().insert("app.kubernetes.io/component".into(), COMPONENT.into());
            ExternalSecret {
                metadata,
                spec: ExternalSecretSpec {
                    refresh_interval: e.refresh_interval.clone().unwrap_or_else(|| DEFAULT_REFRESH.into()),
                    secret_store_ref: StoreRef {
                        name: e.store.name.clone(),
                        kind: e.store.kind.unwrap_or(SecretStoreKind::SecretStore).as_str().into(),
                    },
                    target: Target { name, creation_policy: "Owner".into() },
                    data: e
                        .data
                        .iter()
                        .map(|d| SecretData {
                            secret_key: d.key.clone(),
                            remote_ref: RemoteRef {
                                key: d.remote_key.clone(),
                                property: d.property.clone(),
                                version: d.version.clone(),
                            },
                        })
                        .collect(),
                },
                status: None,
            }
        })
        .collect()
}

/// Variables from the `env` entries, each a reference to its key of the synced Secret. A
/// variable the app declares in `spec.env` keeps that value (and is not listed here).
pub fn env_vars(app: &AppEnvironment) -> Vec<EnvVar> {
    let declared: BTreeSet<&str> = app.spec.env.iter().map(|e| e.name.as_str()).collect();
    app.spec
        .external_secrets
        .iter()
        .filter(|e| e.env == Some(true))
        .flat_map(|e| {
            let secret = secret_name(&app.name_any(), &e.name);
            e.data.iter().filter(|d| !declared.contains(d.key.as_str())).map(move |d| EnvVar {
                name: d.key.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: d.key.clone(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                value: None,
            })
        })
        .collect()
}

/// Volumes and read-only mounts of the `mountPath` entries.
pub fn volumes(app: &AppEnvironment) -> (Vec<Volume>, Vec<VolumeMount>) {
    app.spec
        .external_secrets
        .iter()
        .filter_map(|e| {
            let path = e.mount_path.as_ref()?;
            let volume = format!("external-{}", e.name);
            Some((
                Volume {
                    name: volume.clone(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret_name(&app.name_any(), &e.name)),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                VolumeMount { name: volume, mount_path: path.clone(), read_only: Some(true), ..VolumeMount::default() },
            ))
        })
        .unzip()
}

/// `spec.externalSecrets` problems the schema cannot see: a name used twice, a key twice in
/// one entry, a variable two entries define, a mount path of a volume.
pub fn check(app: &AppEnvironment, errors: &mut Vec<FieldError>) {
    let spec = &app.spec;
    let mut names = BTreeSet::new();
    let mut variables: BTreeMap<&str, usize> = BTreeMap::new();
    let volume_paths: BTreeSet<&str> = spec.volumes.iter().map(|v| v.mount_path.as_str()).collect();
    for (i, e) in spec.external_secrets.iter().enumerate() {
        if !names.insert(e.name.as_str()) {
            errors.push(FieldError::new(
                format!("spec.externalSecrets[{i}].name"),
                format!("{:?} is used by another entry; names are unique", e.name),
            ));
        }
        let mut keys = BTreeSet::new();
        for (k, d) in e.data.iter().enumerate() {
            let field = format!("spec.externalSecrets[{i}].data[{k}].key");
            if !keys.insert(d.key.as_str()) {
                errors.push(FieldError::new(field, format!("{:?} is listed twice in this entry", d.key)));
                continue;
            }
            if e.env != Some(true) {
                continue;
            }
            if !is_env_name(&d.key) {
                errors.push(FieldError::new(
                    field,
                    format!("{:?} becomes an environment variable: use letters, digits and '_', not starting with a digit, or mount the entry with mountPath", d.key),
                ));
            } else if let Some(j) = variables.insert(d.key.as_str(), i) {
                errors.push(FieldError::new(
                    field,
                    format!(
                        "variable {:?} also comes from spec.externalSecrets[{j}]; each variable from one entry",
                        d.key
                    ),
                ));
            }
        }
        if e.env == Some(false) && e.mount_path.is_none() {
            errors.push(FieldError::new(
                format!("spec.externalSecrets[{i}].env"),
                "is false and no mountPath is set: set env: true or a mountPath",
            ));
        }
        if let Some(path) = e.mount_path.as_deref().filter(|p| volume_paths.contains(p)) {
            errors.push(FieldError::new(
                format!("spec.externalSecrets[{i}].mountPath"),
                format!("{path:?} is also the mountPath of a spec.volumes entry; choose another directory"),
            ));
        }
        if secret_name(&app.name_any(), &e.name).len() > 253 {
            errors.push(FieldError::new(
                format!("spec.externalSecrets[{i}].name"),
                "makes a Secret name longer than 253 characters",
            ));
        }
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How far the ExternalSecrets of an app are.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncState {
    /// Entries whose ExternalSecret is not Ready: (field, message naming the ExternalSecret
    /// with the External Secrets Operator's own message).
    pub not_ready: Vec<String>,
    /// Whether a target Secret was never written: the pods cannot start without it, so the
    /// Deployment waits.
    pub never_synced: bool,
}

/// The state of `desired` as the cache `observed` shows them (same order as the spec).
pub fn sync_state(app: &AppEnvironment, observed: &[Option<&ExternalSecret>]) -> SyncState {
    let mut state = SyncState::default();
    for (i, (entry, es)) in app.spec.external_secrets.iter().zip(observed).enumerate() {
        let name = secret_name(&app.name_any(), &entry.name);
        let status = es.and_then(|e| e.status.as_ref());
        let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        if status.and_then(|s| s.refresh_time.as_ref()).is_none() && ready.is_none_or(|c| c.status != "True") {
            state.never_synced = true;
        }
        match ready {
            Some(c) if c.status == "True" => {}
            Some(c) => state.not_ready.push(format!(
                "spec.externalSecrets[{i}]: ExternalSecret {name} is not synced ({}): {}",
                c.reason.as_deref().unwrap_or("NotReady"),
                c.message.as_deref().unwrap_or("no message")
            )),
            None => state.not_ready.push(format!(
                "spec.externalSecrets[{i}]: ExternalSecret {name} has not been synced yet by the External Secrets Operator"
            )),
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::appenvironment::validate;

    fn app(spec: &str) -> AppEnvironment {
        let yaml = format!(
            "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: web\n  namespace: team\n  uid: u-1\nspec:\n  tier: development\n  image: x:1\n{spec}"
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    #[test]
    fn invalid_entries_name_the_field_and_the_fix() {
        let spec = "  volumes: [{name: c, mountPath: /etc/web, emptyDir: {}}]\n  externalSecrets:\n  - {name: db, store: {name: s}, env: true, data: [{key: DB_PASSWORD, remoteKey: a}, {key: 1BAD, remoteKey: b}]}\n  - {name: db, store: {name: s}, env: true, data: [{key: DB_PASSWORD, remoteKey: c}]}\n  - {name: files, store: {name: s}, mountPath: /etc/web, data: [{key: a.pem, remoteKey: d}, {key: a.pem, remoteKey: e}]}\n";
        let errors = validate(&app(spec)).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.externalSecrets[0].data[1].key",
                "spec.externalSecrets[1].name",
                "spec.externalSecrets[1].data[0].key",
                "spec.externalSecrets[2].data[1].key",
                "spec.externalSecrets[2].mountPath",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn sync_state_follows_the_external_secrets_ready_condition() {
        let a =
            app("  externalSecrets:\n  - {name: db, store: {name: s}, env: true, data: [{key: P, remoteKey: a}]}\n");
        let es = |status: Option<ExternalSecretStatus>| ExternalSecret {
            status,
            ..ExternalSecret::new("web-db", ExternalSecretSpec::default())
        };
        let condition = |status: &str, message: &str| EsoCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some("SecretSyncedError".into()),
            message: Some(message.into()),
        };
        let missing = sync_state(&a, &[None]);
        assert!(missing.never_synced && missing.not_ready[0].contains("has not been synced yet"));
        let failing =
            es(Some(ExternalSecretStatus { conditions: vec![condition("False", "denied")], refresh_time: None }));
        let state = sync_state(&a, &[Some(&failing)]);
        assert!(state.never_synced);
        assert_eq!(
            state.not_ready,
            ["spec.externalSecrets[0]: ExternalSecret web-db is not synced (SecretSyncedError): denied"]
        );
        // Synced once, failing now: the Secret exists, the pods may run; still not Ready.
        let stale = es(Some(ExternalSecretStatus {
            conditions: vec![condition("False", "denied")],
            refresh_time: Some("2026-01-01T00:00:00Z".into()),
        }));
        let state = sync_state(&a, &[Some(&stale)]);
        assert!(!state.never_synced && state.not_ready.len() == 1);
        let ready = es(Some(ExternalSecretStatus { conditions: vec![condition("True", "")], refresh_time: None }));
        assert_eq!(sync_state(&a, &[Some(&ready)]), SyncState::default());
    }
}

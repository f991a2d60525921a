//! The Job that runs one `berth agent …` task of a Backup or Restore: a database dump or
//! restore, or the files of one PersistentVolumeClaim.
//!
//! The pod runs the operator's own image (its entrypoint is the `berth` binary) with:
//! - the repository from the [`StorageLocation`]: `BERTH_REPOSITORY=s3://bucket/prefix`,
//!   `BERTH_S3_ENDPOINT`, `BERTH_S3_REGION`, `BERTH_S3_VIRTUAL_HOSTED` (unless
//!   `forcePathStyle`), `BERTH_S3_INSECURE_HTTP` (with `insecureHTTP`), `BERTH_S3_SSE` and
//!   `BERTH_S3_SSE_KMS_KEY_ID` (with `serverSideEncryption`), S3 credentials from `credentialsSecret` through `secretKeyRef`, the
//!   encryption key from `encryptionKeySecret` mounted at [`KEY_MOUNT_PATH`] and named by
//!   `BERTH_REPOSITORY_KEY_FILE`, a private CA from `caSecret` at [`CA_MOUNT_PATH`];
//! - the database connection from the instance's `<instance>-credentials` Secret (keys
//!   `host`, `port`, `username`, `password`): libpq's `PGHOST`/`PGPORT`/`PGUSER`/`PGPASSWORD`
//!   for PostgreSQL; for RabbitMQ the management API at `http://$(BERTH_RABBITMQ_HOST):15672`
//!   (Kubernetes expands `$(VAR)` from the variables before it);
//! - a volume's PVC at [`DATA_MOUNT_PATH`], read-only for a backup, as the [`VolumeConsumer`]
//!   (the pod that mounts it): on its node, so that a ReadWriteOnce volume can be mounted
//!   twice, and as its user, group and fsGroup, so that the agent may read what the app wrote
//!   and restored files belong to the app. A restore into a volume no pod mounts runs with the
//!   agent's own fsGroup, which the kubelet applies to the volume so that it may write;
//! - the label `berth.dev/role: backup` that the database NetworkPolicies admit, a restricted
//!   security context (non-root, RuntimeDefault seccomp, no capabilities, read-only root file
//!   system with an emptyDir at [`TMP_MOUNT_PATH`]), no service account token, and an owner
//!   reference to the Backup or Restore.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::api::backuppolicy::StorageLocation;
use crate::backup::census::Census;
use crate::resources::databaseinstance::build::BACKUP_ROLE_LABEL;
use crate::resources::databaseinstance::validate::MANAGEMENT_PORT;
use crate::resources::meta::{MANAGED_BY, label_value, owner_label_key, selector_labels};

/// Name of the one container.
pub const CONTAINER_NAME: &str = "agent";
/// The image's entrypoint binary (`command`); `args` start with `agent`.
pub const AGENT_PROGRAM: &str = "berth";
/// `app.kubernetes.io/component` of agent Jobs and pods.
pub const COMPONENT: &str = "backup-agent";
/// Label naming the task (`backup-postgres`, `restore-volume`, …).
pub const TASK_LABEL: &str = "berth.dev/agent-task";
/// Label naming the database instance or PVC the task works on.
pub const TARGET_LABEL: &str = "berth.dev/agent-target";

/// Where a volume task mounts the PVC (read-only for a backup).
pub const DATA_MOUNT_PATH: &str = "/data";
/// The writable scratch directory (an emptyDir; the root file system is read-only). Also `HOME`.
pub const TMP_MOUNT_PATH: &str = "/tmp";
/// Directory of the mounted `encryptionKeySecret`.
pub const KEY_MOUNT_PATH: &str = "/etc/berth/repository-key";
/// Key of the repository key in `encryptionKeySecret` (and the file name under [`KEY_MOUNT_PATH`]).
pub const KEY_SECRET_KEY: &str = "key";
/// `BERTH_REPOSITORY_KEY_FILE`: [`KEY_MOUNT_PATH`]/[`KEY_SECRET_KEY`].
pub const KEY_FILE_PATH: &str = "/etc/berth/repository-key/key";
/// Directory of the mounted `caSecret`.
pub const CA_MOUNT_PATH: &str = "/etc/berth/s3-ca";
/// Key of the CA bundle in `caSecret` (and the file name under [`CA_MOUNT_PATH`]).
pub const CA_SECRET_KEY: &str = "ca.crt";
/// `BERTH_S3_CA_FILE`: [`CA_MOUNT_PATH`]/[`CA_SECRET_KEY`].
pub const CA_FILE_PATH: &str = "/etc/berth/s3-ca/ca.crt";
/// Every mount path an agent container can have.
pub const MOUNT_PATHS: [&str; 4] = [DATA_MOUNT_PATH, TMP_MOUNT_PATH, KEY_MOUNT_PATH, CA_MOUNT_PATH];

/// Volume names.
pub const DATA_VOLUME: &str = "data";
pub const TMP_VOLUME: &str = "tmp";
pub const KEY_VOLUME: &str = "repository-key";
pub const CA_VOLUME: &str = "s3-ca";

/// UID/GID the agent runs as (the image's non-root user, as in the operator Deployment).
pub const AGENT_UID: i64 = 65532;
/// Finished Jobs (and their pods and logs) are removed after a day.
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 86_400;

/// Keys of a DatabaseInstance credentials Secret the agent reads.
pub const HOST_KEY: &str = "host";
pub const PORT_KEY: &str = "port";
pub const USERNAME_KEY: &str = "username";
pub const PASSWORD_KEY: &str = "password";
/// Keys of a `credentialsSecret`.
pub const ACCESS_KEY_ID_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// One unit of agent work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentTask {
    /// `pg_dump` of every database (and the roles) of a PostgreSQL DatabaseInstance.
    BackupPostgres { instance: String },
    /// The definitions of a RabbitMQ DatabaseInstance, through the management API.
    BackupRabbitmq { instance: String },
    /// The files of a PVC.
    BackupVolume { pvc: String },
    /// A `postgres` snapshot back into the instance (`pg_restore --clean --create`).
    RestorePostgres { instance: String, snapshot: String },
    /// A `rabbitmq` snapshot's definitions back into the instance.
    RestoreRabbitmq { instance: String, snapshot: String },
    /// A `dir` snapshot's files into a PVC.
    RestoreVolume { pvc: String, snapshot: String },
    /// A restored PVC's files counted against what its backup recorded (restore drills);
    /// mounted read-only, like a backup.
    CountVolume { pvc: String, recorded: Census },
}

impl AgentTask {
    /// The task as a label value, e.g. `backup-postgres`, `restore-volume`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::BackupPostgres { .. } => "backup-postgres",
            Self::BackupRabbitmq { .. } => "backup-rabbitmq",
            Self::BackupVolume { .. } => "backup-volume",
            Self::RestorePostgres { .. } => "restore-postgres",
            Self::RestoreRabbitmq { .. } => "restore-rabbitmq",
            Self::RestoreVolume { .. } => "restore-volume",
            Self::CountVolume { .. } => "count-volume",
        }
    }

    /// The DatabaseInstance or PVC the task works on.
    pub fn target(&self) -> &str {
        match self {
            Self::BackupPostgres { instance }
            | Self::BackupRabbitmq { instance }
            | Self::RestorePostgres { instance, .. }
            | Self::RestoreRabbitmq { instance, .. } => instance,
            Self::BackupVolume { pvc } | Self::RestoreVolume { pvc, .. } | Self::CountVolume { pvc, .. } => pvc,
        }
    }

    /// Whether the task writes into the target (a restore).
    pub fn is_restore(&self) -> bool {
        matches!(self, Self::RestorePostgres { .. } | Self::RestoreRabbitmq { .. } | Self::RestoreVolume { .. })
    }

    /// The PVC mounted at [`DATA_MOUNT_PATH`], for volume tasks.
    pub fn pvc(&self) -> Option<&str> {
        match self {
            Self::BackupVolume { pvc } | Self::RestoreVolume { pvc, .. } | Self::CountVolume { pvc, .. } => Some(pvc),
            _ => None,
        }
    }

    /// The database instance, for database tasks.
    pub fn instance(&self) -> Option<&str> {
        self.pvc().is_none().then(|| self.target())
    }

    /// `args` of the container: `agent <subcommand> …`. Tags apply to backups only.
    pub fn args(&self, tags: &[String]) -> Vec<String> {
        let mut args = vec!["agent".to_string()];
        let tag_args = || tags.iter().map(|t| format!("--tag={t}"));
        match self {
            Self::BackupPostgres { .. } => {
                args.push("backup-postgres".into());
                args.extend(tag_args());
            }
            Self::BackupRabbitmq { .. } => {
                args.push("backup-rabbitmq".into());
                args.extend(tag_args());
            }
            Self::BackupVolume { .. } => {
                args.extend(["backup-dir".to_string(), DATA_MOUNT_PATH.to_string()]);
                args.extend(tag_args());
            }
            Self::RestorePostgres { snapshot, .. } | Self::RestoreRabbitmq { snapshot, .. } => {
                args.extend(["restore".to_string(), snapshot.clone()]);
            }
            Self::RestoreVolume { snapshot, .. } => {
                args.extend([
                    "restore".to_string(),
                    snapshot.clone(),
                    "--target".to_string(),
                    DATA_MOUNT_PATH.to_string(),
                ]);
            }
            Self::CountVolume { recorded, .. } => {
                args.extend(["count-dir".to_string(), DATA_MOUNT_PATH.to_string()]);
                args.extend([
                    format!("--files={}", recorded.files),
                    format!("--dirs={}", recorded.dirs),
                    format!("--bytes={}", recorded.bytes),
                ]);
            }
        }
        args
    }
}

/// Name of a DatabaseInstance's credentials Secret (administrative user).
pub fn credentials_secret_name(instance: &str) -> String {
    format!("{instance}-credentials")
}

/// Everything about the Job that is not the task itself.
#[derive(Clone, Debug)]
pub struct JobSettings<'a> {
    /// The Backup or Restore (controller owner reference: the Job is garbage-collected with it).
    pub owner: &'a OwnerReference,
    pub namespace: &'a str,
    /// Job name; the caller makes it unique and at most 63 characters.
    pub name: &'a str,
    /// The operator's image (its entrypoint is the `berth` binary).
    pub image: &'a str,
    pub storage: &'a StorageLocation,
    /// Snapshot tags (backups only).
    pub tags: Vec<String>,
    /// The pod that mounts the PVC (volume tasks): its node and identity.
    pub consumer: Option<VolumeConsumer>,
    /// `activeDeadlineSeconds`.
    pub deadline_seconds: i64,
    /// `backoffLimit`.
    pub backoff_limit: i32,
    /// ServiceAccount the pod runs as: the policy's, so that a cloud identity bound to it
    /// (IRSA, Workload Identity) can serve storage. `None`: the namespace's `default`. Its
    /// token is not mounted (the agent never calls the API; an IRSA webhook projects its own).
    pub service_account: Option<&'a str>,
}

/// Where and as whom a pod mounts a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeConsumer {
    pub node_name: Option<String>,
    /// The effective non-root `runAsUser` of the container that mounts it (pod level when the
    /// container sets none).
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub fs_group: Option<i64>,
    /// The pod's supplemental groups: files only a group of the app may read are backed up.
    pub supplemental_groups: Vec<i64>,
}

/// The consumer of `claim` among `pods`: the first running pod that mounts it. Root (UID or
/// GID 0) is never taken over: the agent keeps its own identity then.
pub fn volume_consumer(pods: &[Pod], claim: &str) -> Option<VolumeConsumer> {
    pods.iter().find_map(|pod| {
        let spec = pod.spec.as_ref()?;
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == claim))?;
        if !running || pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let container = spec
            .containers
            .iter()
            .find(|c| c.volume_mounts.iter().flatten().any(|m| m.name == volume.name))
            .or(spec.containers.first());
        let container_context = container.and_then(|c| c.security_context.as_ref());
        let pod_context = spec.security_context.as_ref();
        let non_root = |id: Option<i64>| id.filter(|&id| id > 0);
        Some(VolumeConsumer {
            node_name: spec.node_name.clone(),
            run_as_user: non_root(
                container_context.and_then(|c| c.run_as_user).or(pod_context.and_then(|p| p.run_as_user)),
            ),
            run_as_group: non_root(
                container_context.and_then(|c| c.run_as_group).or(pod_context.and_then(|p| p.run_as_group)),
            ),
            fs_group: non_root(pod_context.and_then(|p| p.fs_group)),
            supplemental_groups: pod_context
                .and_then(|p| p.supplemental_groups.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|&g| g > 0)
                .collect(),
        })
    })
}

/// The pod's identity for `task`: the volume consumer's where it has one, else the agent's;
/// a restore into a volume gets an fsGroup so that the kubelet lets it write there.
fn pod_identity(task: &AgentTask, consumer: Option<&VolumeConsumer>) -> PodSecurityContext {
    let consumer = consumer.cloned().unwrap_or_default();
    let user = consumer.run_as_user.unwrap_or(AGENT_UID);
    let fs_group = match (&task, consumer.fs_group) {
        (_, Some(group)) => Some(group),
        (AgentTask::RestoreVolume { .. }, None) => Some(consumer.run_as_group.unwrap_or(AGENT_UID)),
        _ => None,
    };
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(consumer.run_as_group.unwrap_or(if consumer.run_as_user.is_some() {
            user
        } else {
            AGENT_UID
        })),
        fs_group,
        supplemental_groups: Some(consumer.supplemental_groups.clone()).filter(|g| !g.is_empty()),
        // The kubelet re-owns the volume only when its root does not match already.
        fs_group_change_policy: fs_group.map(|_| "OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

/// `s3://bucket/prefix` (or `s3://bucket`) as `berth agent` parses `BERTH_REPOSITORY`.
pub fn repository_url(storage: &StorageLocation) -> String {
    match storage.prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
        Some(prefix) => format!("s3://{}/{prefix}", storage.bucket),
        None => format!("s3://{}", storage.bucket),
    }
}

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
    }
}

/// Environment of the repository (location, credentials, key, CA).
fn repository_env(storage: &StorageLocation) -> Vec<EnvVar> {
    let mut env = vec![literal("BERTH_REPOSITORY", repository_url(storage))];
    if let Some(endpoint) = &storage.endpoint {
        env.push(literal("BERTH_S3_ENDPOINT", endpoint.clone()));
    }
    if storage.insecure_http {
        env.push(literal("BERTH_S3_INSECURE_HTTP", "true"));
    }
    if let Some(region) = &storage.region {
        env.push(literal("BERTH_S3_REGION", region.clone()));
    }
    if !storage.force_path_style {
        env.push(literal("BERTH_S3_VIRTUAL_HOSTED", "true"));
    }
    if let Some(secret) = &storage.credentials_secret {
        env.push(from_secret("AWS_ACCESS_KEY_ID", secret, ACCESS_KEY_ID_KEY));
        env.push(from_secret("AWS_SECRET_ACCESS_KEY", secret, SECRET_ACCESS_KEY_KEY));
    }
    if storage.ca_secret.is_some() {
        env.push(literal("BERTH_S3_CA_FILE", CA_FILE_PATH));
    }
    if let Some(sse) = &storage.server_side_encryption {
        env.push(literal("BERTH_S3_SSE", sse.type_.as_str()));
        if let Some(key) = &sse.kms_key_id {
            env.push(literal("BERTH_S3_SSE_KMS_KEY_ID", key.clone()));
        }
    }
    env.push(literal("BERTH_REPOSITORY_KEY_FILE", KEY_FILE_PATH));
    env
}

/// Environment of the database connection, from the instance's credentials Secret.
fn database_env(task: &AgentTask) -> Vec<EnvVar> {
    let Some(instance) = task.instance() else {
        return vec![];
    };
    let secret = credentials_secret_name(instance);
    match task {
        AgentTask::BackupPostgres { .. } | AgentTask::RestorePostgres { .. } => vec![
            from_secret("PGHOST", &secret, HOST_KEY),
            from_secret("PGPORT", &secret, PORT_KEY),
            from_secret("PGUSER", &secret, USERNAME_KEY),
            from_secret("PGPASSWORD", &secret, PASSWORD_KEY),
        ],
        _ => vec![
            // Only a building block for the URL below (`$(VAR)` expands earlier variables).
            from_secret("BERTH_RABBITMQ_HOST", &secret, HOST_KEY),
            literal("BERTH_RABBITMQ_URL", format!("http://$(BERTH_RABBITMQ_HOST):{MANAGEMENT_PORT}")),
            from_secret("BERTH_RABBITMQ_USER", &secret, USERNAME_KEY),
            from_secret("BERTH_RABBITMQ_PASSWORD", &secret, PASSWORD_KEY),
        ],
    }
}

fn secret_volume(name: &str, secret: &str, key: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath { key: key.into(), path: key.into(), ..KeyToPath::default() }]),
            // Files are root-owned without an fsGroup (which would also re-own the PVC of a
            // volume task): readable by the agent's UID, the pod's only process.
            default_mode: Some(0o444),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount { name: volume.into(), mount_path: path.into(), read_only: Some(read_only), ..VolumeMount::default() }
}

fn volumes(task: &AgentTask, storage: &StorageLocation) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: TMP_VOLUME.into(),
            // Holds the index spill file of a large repository (49 bytes a blob, twice while
            // it is rewritten): 2 GiB is room for 20 million blobs.
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("2Gi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume(KEY_VOLUME, &storage.encryption_key_secret, KEY_SECRET_KEY),
    ];
    let mut mounts = vec![mount(TMP_VOLUME, TMP_MOUNT_PATH, false), mount(KEY_VOLUME, KEY_MOUNT_PATH, true)];
    if let Some(ca) = &storage.ca_secret {
        volumes.push(secret_volume(CA_VOLUME, ca, CA_SECRET_KEY));
        mounts.push(mount(CA_VOLUME, CA_MOUNT_PATH, true));
    }
    if let Some(pvc) = task.pvc() {
        let read_only = !task.is_restore();
        volumes.push(Volume {
            name: DATA_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.into(),
                read_only: Some(read_only),
            }),
            ..Volume::default()
        });
        mounts.push(mount(DATA_VOLUME, DATA_MOUNT_PATH, read_only));
    }
    (volumes, mounts)
}

/// Labels of the Job and its pod.
pub fn job_labels(task: &AgentTask, owner: &OwnerReference) -> BTreeMap<String, String> {
    let owner_name = label_value(&owner.name).unwrap_or_default();
    let mut labels = selector_labels(&owner_name, COMPONENT);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels.insert("app.kubernetes.io/part-of".into(), "berth".into());
    labels.insert(owner_label_key(&owner.kind), owner_name);
    labels.insert(BACKUP_ROLE_LABEL.0.into(), BACKUP_ROLE_LABEL.1.into());
    labels.insert(TASK_LABEL.into(), task.name().into());
    labels.insert(TARGET_LABEL.into(), label_value(task.target()).unwrap_or_default());
    labels
}

fn node_affinity(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    // As the DaemonSet controller pins pods: by field, through the scheduler
                    // (unlike `nodeName`, which skips resource and taint checks).
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The shared restricted context, saying `privileged: false` outright as the agent always has.
fn agent_container_context() -> SecurityContext {
    SecurityContext { privileged: Some(false), ..crate::resources::meta::restricted_container_context() }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
}

/// The Job that runs `task`.
pub fn agent_job(task: &AgentTask, settings: &JobSettings) -> Job {
    let labels = job_labels(task, settings.owner);
    let mut env = repository_env(settings.storage);
    env.extend(database_env(task));
    env.extend([literal("HOME", TMP_MOUNT_PATH), literal("BERTH_PROGRESS", "log"), literal("BERTH_LOG", "info")]);
    let (volumes, volume_mounts) = volumes(task, settings.storage);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(settings.image.into()),
        command: Some(vec![AGENT_PROGRAM.into()]),
        args: Some(task.args(if task.is_restore() { &[] } else { &settings.tags })),
        env: Some(env),
        volume_mounts: Some(volume_mounts),
        // Measured with scripts/bench-scale.sh (release build): peak RSS 189 MiB backing up and
        // 158 MiB restoring a million files (11 GiB). The request covers that; the limit leaves
        // room for the chunk index of larger repositories (52 bytes a chunk: ~10M).
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "100m"), ("memory", "256Mi")])),
            limits: Some(quantities(&[("memory", "1Gi")])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(agent_container_context()),
        // The agent's last stderr line (the error) becomes the pod's termination message.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(settings.name.into()),
            namespace: Some(settings.namespace.into()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![settings.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            active_deadline_seconds: Some(settings.deadline_seconds),
            backoff_limit: Some(settings.backoff_limit),
            ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
            completions: Some(1),
            parallelism: Some(1),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: settings.service_account.map(str::to_string),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_identity(task, settings.consumer.as_ref())),
                    affinity: settings.consumer.as_ref().and_then(|c| c.node_name.as_deref()).map(node_affinity),
                    termination_grace_period_seconds: Some(30),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;

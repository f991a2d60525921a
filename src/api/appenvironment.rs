//! `AppEnvironment`: one application in one environment (development, staging, production),
//! and everything it needs to run: ServiceAccount, Deployment, Service, Ingress, TLS
//! Certificate, autoscaler, disruption budget and network policy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, Probe, ResourceRequirements, SecurityContext, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};

pub use crate::api::databaseinstance::DeletionPolicy;
use serde::{Deserialize, Serialize};

/// Desired state of one application in one environment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "AppEnvironment",
    plural = "appenvironments",
    shortname = "appenv",
    category = "berth",
    namespaced,
    status = "AppEnvironmentStatus",
    doc = "One application in one environment (development, staging or production): Berth keeps its ServiceAccount, Deployment, Service, Ingress, TLS Certificate, HorizontalPodAutoscaler, PodDisruptionBudget and NetworkPolicy converged.",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier", description = "Environment tier"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image", description = "Container image"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the app is available"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", description = "Public URL of the app"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("spec.replicas and spec.autoscaling are mutually exclusive: remove spec.replicas and set spec.autoscaling.minReplicas instead").field_path(".replicas"),
)]
#[serde(rename_all = "camelCase")]
pub struct AppEnvironmentSpec {
    /// Environment tier. It sets defaults a migrating team otherwise forgets: production gets at
    /// least 2 replicas (3 when autoscaling), a PodDisruptionBudget, spread across zones and
    /// zero-downtime rolling updates; development gets one replica and no PodDisruptionBudget.
    /// Explicit fields always win over tier defaults.
    pub tier: Tier,

    /// Container image, e.g. `registry.example.com/shop/api:1.4.2`.
    #[schemars(length(min = 1))]
    pub image: String,

    /// When to pull the image (`Always`, `IfNotPresent`, `Never`). Defaults to Kubernetes' rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Names of Secrets in this namespace used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,

    /// Entrypoint override (the image's ENTRYPOINT when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Arguments to the entrypoint (the image's CMD when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// Environment variables of the application container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// ConfigMaps and Secrets whose keys become environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// DatabaseInstances (in this namespace) the app uses. For each, the instance's connection
    /// Secret (`<instance>-credentials`) is injected as environment variables
    /// `<PREFIX>_URL`, `_HOST`, `_PORT`, `_USERNAME`, `_PASSWORD` (and `_NAME`, the database,
    /// for PostgreSQL); the pods get the `berth.dev/uses-<instance>` label the instance's
    /// NetworkPolicy admits; and the app stays Progressing until the instance is Ready. A
    /// variable also declared in `env` keeps the value from `env`. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub databases: Vec<DatabaseRef>,

    /// Ports the application listens on. The first port is the one the Service and the
    /// Ingress route to. Defaults to one port named `http` on 8080.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<AppPort>,

    /// Fixed number of pods. Mutually exclusive with `autoscaling`. Defaults by tier:
    /// development 1, staging 2, production 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// CPU and memory requests and limits of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Liveness, readiness and startup probes of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,

    /// Container securityContext, merged field by field over Berth's defaults, which pass the
    /// Pod Security `restricted` profile (non-root, no privilege escalation, all capabilities
    /// dropped, RuntimeDefault seccomp, read-only root filesystem). Set only what differs, e.g.
    /// a numeric `runAsUser` for an image whose USER is a name or root, or
    /// `readOnlyRootFilesystem: false`. Fields that would weaken `restricted` (privileged,
    /// runAsUser 0, runAsNonRoot false, allowPrivilegeEscalation true, added capabilities other
    /// than NET_BIND_SERVICE, Unconfined seccomp or AppArmor) are refused: `Ready=False`, reason
    /// `InvalidSpec`, naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// The Service in front of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSettings>,

    /// Public HTTP(S) routing. No Ingress is created when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSettings>,

    /// HorizontalPodAutoscaler settings. No autoscaler is created when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// PodDisruptionBudget settings. Defaults by tier: created (maxUnavailable 1) for staging
    /// and production, not for development.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,

    /// NetworkPolicy settings. By default ingress traffic is denied except from the ingress
    /// controller's namespace, the monitoring namespace when scraping is on, and pods of this
    /// app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySettings>,

    /// Rolling update settings. Production and staging default to `maxUnavailable: 0`,
    /// `maxSurge: 25%` (zero downtime); development to Kubernetes' defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,

    /// Spread pods across zones (`topology.kubernetes.io/zone`) and nodes. Defaults to true in
    /// production, false otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread: Option<bool>,

    /// The ServiceAccount the pods run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountSettings>,

    /// Inject the Linkerd proxy (`linkerd.io/inject: enabled` on the pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linkerd: Option<bool>,

    /// Metrics scraping annotations (Prometheus, Datadog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Monitoring>,

    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Extra labels on the pods (the `app.kubernetes.io/*` labels are always set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Node labels the pods must be scheduled on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Take over objects under the app's child names (its Deployment, Service, Ingress,
    /// ServiceAccount, ...) that Berth did not create and no controller owns (`berth import
    /// cluster --adopt` writes this). Without it, such an object is left alone and the
    /// AppEnvironment reports `AdoptionConflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<Adopt>,

    /// Volumes mounted into the application container (and into the workers and cron jobs
    /// that list them): persistent claims of the app, ConfigMap and Secret files, and
    /// emptyDirs. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub volumes: Vec<AppVolume>,

    /// Further processes from the same image and environment (queue consumers, schedulers):
    /// each is a Deployment `<name>-<worker>` with no Service or Ingress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub workers: Vec<Worker>,

    /// Scheduled tasks (the crontab of the old server): each is a CronJob `<name>-<cronJob>`
    /// with the app's image, environment and database variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub cron_jobs: Vec<AppCronJob>,

    /// A command run as a Job with the new image before the Deployment, workers and cron jobs
    /// move to it (e.g. `bin/rails db:migrate`). It runs once per image; while it runs they
    /// keep their current version, and a failed migration stops the rollout with
    /// `Ready=False`, reason `MigrationFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,

    /// Who of the team may see and change this app, and nothing else of the namespace: each
    /// entry's groups and users get a Role `<name>-access-<level>` scoped by resourceNames to
    /// the app's own objects, and RoleBindings to the chart's `berth-access-*` ClusterRoles for
    /// what RBAC cannot scope by name (pods, logs, backups and restores). See the README, "Team
    /// access", for what each level grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub access: Vec<AccessGrant>,

    /// Secrets kept in AWS Secrets Manager or Parameter Store (or any store of the External
    /// Secrets Operator): each entry becomes an `ExternalSecret` (external-secrets.io/v1)
    /// whose target Secret `<name>-<entry>` is injected as environment variables or files. The
    /// app stays `Ready=False`, reason `ExternalSecretNotReady`, with the ExternalSecret's own
    /// message until the Secret is synced. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub external_secrets: Vec<AppExternalSecret>,

    /// Stop all writes to this environment's children (for maintenance or an incident).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// How many revisions `status.history` keeps for `berth rollback` (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub revision_history_limit: Option<i32>,

    /// Seconds a new revision has to become Ready (default 600; also the Deployment's
    /// `progressDeadlineSeconds`). Past it the app reports `Progressing=False`, reason
    /// `ProgressDeadlineExceeded`, and an Event naming the last good revision and the
    /// `berth rollback` command. Berth never rolls back by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,
}

/// Access of some groups and users to this app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("(has(self.groups) ? size(self.groups) : 0) + (has(self.users) ? size(self.users) : 0) > 0").message("spec.access entries need at least one group or user"),
    validation = Rule::new("!has(self.exec) || !self.exec || self.level == 'operate'").message("spec.access exec is an addition to level operate: set level: operate or remove exec").field_path(".exec"),
)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrant {
    /// `view` (read the app's objects and pods), `edit` (view, and change or delete the app's
    /// own objects, ConfigMaps and Secrets) or `operate` (edit, and pod logs, rollout restarts,
    /// backups and restores).
    pub level: AccessLevel,
    /// Groups as the API server authenticates them (OIDC groups, or an EKS access entry's
    /// groups).
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
    /// User names as the API server authenticates them.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub users: Vec<String>,
    /// Also `kubectl exec` into the namespace's pods (level `operate` only; RBAC cannot limit
    /// exec to the app's pods). Defaults to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

/// An access level of [`AccessGrant`]; each includes the ones before it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AccessLevel {
    View,
    Edit,
    Operate,
}

impl AccessLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::View => "view",
            AccessLevel::Edit => "edit",
            AccessLevel::Operate => "operate",
        }
    }
}

/// One Secret synced by the External Secrets Operator from a store such as AWS Secrets
/// Manager, and how the app receives it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.env) != has(self.mountPath)").message("spec.externalSecrets entries need exactly one of env (variables) and mountPath (files)"),
)]
#[serde(rename_all = "camelCase")]
pub struct AppExternalSecret {
    /// Entry name; the ExternalSecret and its target Secret are `<app>-<name>`.
    #[schemars(length(min = 1, max = 30), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The SecretStore or ClusterSecretStore that reads the secrets.
    pub store: ExternalSecretStoreRef,
    /// Keys of the Secret and the remote values they come from.
    #[schemars(length(min = 1, max = 64))]
    pub data: Vec<ExternalSecretKey>,
    /// How often the operator re-reads the remote values, e.g. `1h` (ESO's `refreshInterval`).
    /// Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub refresh_interval: Option<String>,
    /// Inject every key as an environment variable of the same name. Exactly one of `env`
    /// and `mountPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<bool>,
    /// Mount the keys as files in this directory. Exactly one of `env` and `mountPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2), regex(pattern = r"^/"))]
    pub mount_path: Option<String>,
}

/// A SecretStore or ClusterSecretStore of the External Secrets Operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretStoreRef {
    /// Name of the store.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `SecretStore` (default: in this namespace) or `ClusterSecretStore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SecretStoreKind>,
}

/// Kind of External Secrets store.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SecretStoreKind {
    SecretStore,
    ClusterSecretStore,
}

impl SecretStoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretStoreKind::SecretStore => "SecretStore",
            SecretStoreKind::ClusterSecretStore => "ClusterSecretStore",
        }
    }
}

/// One key of the synced Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSecretKey {
    /// Key in the Secret: the environment variable's name with `env`, the file name with
    /// `mountPath`.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// The remote secret, e.g. a Secrets Manager secret name or ARN, or a Parameter Store path.
    #[schemars(length(min = 1))]
    pub remote_key: String,
    /// A JSON property of the remote secret, e.g. `password` of `{"password": …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// A version of the remote secret, e.g. `AWSCURRENT` or a version id. The current
    /// version when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A volume of the app: exactly one of `claim`, `configMap`, `secret` and `emptyDir`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("(has(self.claim) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + (has(self.emptyDir) ? 1 : 0) == 1").message("set exactly one of claim, configMap, secret and emptyDir"),
)]
#[serde(rename_all = "camelCase")]
pub struct AppVolume {
    /// Volume name (lowercase letters, digits and '-'); a claim's PVC is `<app>-<name>`.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Absolute path in the container, e.g. `/app/uploads`.
    #[schemars(length(min = 2), regex(pattern = r"^/"))]
    pub mount_path: String,
    /// Mount read-only. ConfigMap and Secret files are always read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// A PersistentVolumeClaim of the app, labelled `berth.dev/appenvironment: <app>` so that
    /// BackupPolicies back it up. It has no owner reference: it outlives the AppEnvironment
    /// unless `deletionPolicy: Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<VolumeClaim>,
    /// Files from a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<FileSource>,
    /// Files from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<FileSource>,
    /// A scratch directory that lives as long as the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirSettings>,
}

/// A persistent claim of the app.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaim {
    /// Requested size, e.g. `10Gi`. Growing it expands the PVC when its StorageClass allows
    /// volume expansion; claims never shrink.
    #[schemars(length(min = 1))]
    pub size: String,
    /// StorageClass of the claim. The cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `ReadWriteOnce` (default: one node at a time), `ReadWriteOncePod` or `ReadWriteMany`
    /// (needs a class that supports it, e.g. NFS or CephFS). A ReadWriteOnce claim needs
    /// `replicas: 1` and `rollout.strategy: Recreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
    /// What happens to the claim when the AppEnvironment is deleted: `Retain` (default) keeps
    /// it, `Delete` makes Berth delete it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// Access mode of a claim.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteOncePod,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// Files from a ConfigMap or Secret in the app's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Keys to project and the file each becomes. Every key becomes a file of its own name
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<FileItem>,
    /// Mode of the files: decimal (`288`) or, for kubectl, octal (`0440`). Kubernetes' default
    /// (0644) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,
}

/// One key as one file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileItem {
    /// Key in the ConfigMap or Secret.
    #[schemars(length(min = 1))]
    pub key: String,
    /// Relative file path under the mount path, e.g. `nginx.conf`.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Mode of this file, over `defaultMode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub mode: Option<i32>,
}

/// emptyDir settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirSettings {
    /// `Memory` for a tmpfs; the node's disk when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<EmptyDirMedium>,
    /// Most the directory may hold, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

/// Storage medium of an emptyDir.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum EmptyDirMedium {
    Memory,
}

/// A worker process: a Deployment from the app's image and environment, without Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    /// Worker name; its Deployment is `<app>-<name>`.
    #[schemars(length(min = 1, max = 30), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Entrypoint override (the app's `command` when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments, e.g. `["celery", "-A", "shop", "worker"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Number of pods. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// CPU and memory (the app's `resources` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Probes of the worker container (none by default: workers serve no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    /// Names of `spec.volumes` mounted into the worker (ReadWriteMany claims only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

/// A scheduled task run with the app's image, environment and databases.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppCronJob {
    /// Task name; its CronJob is `<app>-<name>`.
    #[schemars(length(min = 1, max = 30), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Cron schedule (five fields), e.g. `30 2 * * *`.
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// IANA time zone of the schedule, e.g. `Europe/Berlin`. The controller manager's (UTC
    /// usually) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Entrypoint override (the app's `command` when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments, e.g. `["bin/rails", "reports:nightly"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `Forbid` (default: a run still going skips the next), `Allow` or `Replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// Finished runs kept. Defaults to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: Option<i32>,
    /// Failed runs kept. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: Option<i32>,
    /// Longest one run may take, in seconds. Defaults to 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
    /// CPU and memory (the app's `resources` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Names of `spec.volumes` mounted into the task (ReadWriteMany claims only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

/// Concurrency policy of a CronJob.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ConcurrencyPolicy {
    Allow,
    Forbid,
    Replace,
}

/// The migration run before each rollout of a new image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// Entrypoint override (the app's `command` when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments, e.g. `["bin/rails", "db:migrate"]`. `command` or `args` must be set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Longest the migration may run, in seconds. Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<i64>,
    /// CPU and memory (the app's `resources` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// How an existing Deployment is taken over.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Adopt {
    /// The adopted Deployment's selector, kept because a selector is immutable. Berth adds
    /// these labels to its pods and selects with them in the Service, disruption budget and
    /// topology spread. Empty: Berth's own selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Let the takeover roll the pods when Berth's pod template differs from the live one
    /// (Berth's restricted securityContext, probes, labels). Without it, such a Deployment is
    /// left as it is and the AppEnvironment reports `AdoptionNeedsRollout` with the
    /// differences; an equal template is taken over with no rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_rollout: bool,
}

/// Environment tier.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Tier {
    /// One replica, no PodDisruptionBudget, Kubernetes' rolling-update defaults.
    #[default]
    Development,
    /// Two replicas, PodDisruptionBudget, zero-downtime rolling updates.
    Staging,
    /// Two replicas (three when autoscaling), PodDisruptionBudget, zone spread,
    /// zero-downtime rolling updates.
    Production,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Development => "development",
            Tier::Staging => "staging",
            Tier::Production => "production",
        }
    }
}

/// A DatabaseInstance the app uses, and the prefix of the environment variables it gets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRef {
    /// Name of a DatabaseInstance in the AppEnvironment's namespace.
    #[schemars(length(min = 1, max = 52), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Prefix of the injected variables (`<PREFIX>_URL`, `<PREFIX>_HOST`, …): uppercase
    /// letters, digits and `_`. Defaults to `DATABASE` for the app's only PostgreSQL instance
    /// and `AMQP` for its only RabbitMQ instance (so `DATABASE_URL` and `AMQP_URL`), otherwise
    /// to the instance name upper-cased with `-` as `_` (`orders-db` → `ORDERS_DB_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Z_][A-Z0-9_]*$"))]
    pub env_prefix: Option<String>,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A port the application listens on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPort {
    /// Port name (an IANA_SVC_NAME: lowercase letters, digits and '-', at most 15 characters).
    #[schemars(length(min = 1, max = 15), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Port number in the container.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
    /// Protocol: `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// Transport protocol of a port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// Probes of the application container. Each is a Kubernetes `Probe`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// Restarts the container when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    /// Removes the pod from the Service while it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Holds back the other probes until the application has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
}

/// Service settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Port the Service exposes (default 80); it forwards to the first container port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Annotations on the Service (for example cloud load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// Ingress settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.tls) || (has(self.hosts) && size(self.hosts) > 0)").message("spec.ingress.tls needs at least one host in spec.ingress.hosts: the certificate is issued for those names").field_path(".hosts"),
)]
#[serde(rename_all = "camelCase")]
pub struct IngressSettings {
    /// IngressClass to use (for example `nginx` or `alb`). The cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Host names routed to the app, e.g. `shop.example.com`. Wildcards like `*.example.com`
    /// are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub hosts: Vec<String>,
    /// URL paths routed to the app on every host. Defaults to `/` (Prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<IngressPath>,
    /// Annotations on the Ingress (controller-specific settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Serve HTTPS with a cert-manager Certificate for every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// DNS records published by external-dns (Route 53 and others): Berth writes the
    /// `external-dns.alpha.kubernetes.io/*` annotations on the Ingress. Set them here rather
    /// than in `annotations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<IngressDns>,
}

/// external-dns records of the Ingress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.target) || !has(self.alias) || !self.alias || !self.target.matches('^[0-9.]+$|:')").message("spec.ingress.dns.alias needs a hostname target (a load balancer's DNS name), not an IP address: remove alias or set target to the load balancer's hostname").field_path(".alias"),
)]
#[serde(rename_all = "camelCase")]
pub struct IngressDns {
    /// Host names to publish (`external-dns.alpha.kubernetes.io/hostname`). Each must be one of
    /// `spec.ingress.hosts`. Defaults to every host of `spec.ingress.hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub hostnames: Vec<String>,
    /// Record TTL in seconds (`external-dns.alpha.kubernetes.io/ttl`). Defaults by tier:
    /// development and staging 60, production 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 172800))]
    pub ttl: Option<i64>,
    /// What the records point to (`external-dns.alpha.kubernetes.io/target`), e.g. the DNS name
    /// of a shared ALB or an IP address. The Ingress's load balancer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target: Option<String>,
    /// Publish Route 53 alias records (`external-dns.alpha.kubernetes.io/alias: "true"`)
    /// instead of CNAMEs: needed at a zone apex, free of query charges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<bool>,
}

/// One routed path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressPath {
    /// The path, starting with `/`.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// How the path matches: `Prefix` (default), `Exact` or `ImplementationSpecific`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_type: Option<PathType>,
}

/// Ingress path match type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PathType {
    Prefix,
    Exact,
    ImplementationSpecific,
}

/// TLS through a cert-manager Certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    /// The cert-manager issuer that signs the certificate.
    pub issuer_ref: IssuerRef,
    /// Secret the certificate is stored in. Defaults to `<name>-tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// Reference to a cert-manager Issuer or ClusterIssuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer, e.g. `letsencrypt-prod`.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `ClusterIssuer` (default) or `Issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<IssuerKind>,
    /// API group of the issuer. Defaults to `cert-manager.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Kind of cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum IssuerKind {
    ClusterIssuer,
    Issuer,
}

/// HorizontalPodAutoscaler settings (autoscaling/v2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("spec.autoscaling.minReplicas must not exceed spec.autoscaling.maxReplicas").field_path(".minReplicas"),
)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lowest number of pods. Defaults by tier: production 3, otherwise 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Highest number of pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent of the request. Defaults to 70 when no
    /// target is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization: Option<i32>,
    /// Target average memory utilisation in percent of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_memory_utilization: Option<i32>,
}

/// PodDisruptionBudget settings. At most one of `minAvailable` and `maxUnavailable`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))").message("set only one of spec.disruptionBudget.minAvailable and spec.disruptionBudget.maxUnavailable"),
)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionBudget {
    /// Create the PodDisruptionBudget. Defaults to true for staging and production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Pods that must stay available during voluntary disruptions (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods that may be unavailable during voluntary disruptions (number or percentage).
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// NetworkPolicy settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Create the NetworkPolicy. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Namespace of the ingress controller allowed to reach the app. Defaults to
    /// `ingress-nginx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_controller_namespace: Option<String>,
    /// Namespace of the metrics scraper allowed to reach the metrics port when Prometheus
    /// scraping is on. Defaults to `monitoring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring_namespace: Option<String>,
    /// Further namespaces whose pods may reach the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from_namespaces: Vec<String>,
    /// Other AppEnvironments of this namespace whose pods (app, workers, cron jobs) may reach
    /// the app's ports, e.g. the services that shared a compose network with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 63)))]
    pub allow_from_apps: Vec<String>,
}

/// Rollout settings of the Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// `RollingUpdate` (default) or `Recreate` (stop the old pods before starting new ones:
    /// what an app with a ReadWriteOnce claim needs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RolloutStrategy>,
    /// Pods above the desired count during an update (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Pods below the desired count during an update (number or percentage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Deployment strategy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RolloutStrategy {
    RollingUpdate,
    Recreate,
}

/// ServiceAccount settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSettings {
    /// Annotations, e.g. `eks.amazonaws.com/role-arn` for IAM roles for service accounts
    /// (IRSA) or `iam.gke.io/gcp-service-account` for GKE workload identity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Mount the API token into the pods. Defaults to false: most apps never call the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_token: Option<bool>,
}

/// Metrics scraping.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Prometheus scrape annotations (`prometheus.io/scrape`, `port`, `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusScrape>,
    /// Datadog autodiscovery annotations for an OpenMetrics check of the same endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<DatadogScrape>,
}

/// Where metrics are served.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusScrape {
    /// Port serving metrics. Defaults to the first container port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// HTTP path of the metrics. Defaults to `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Datadog autodiscovery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatadogScrape {
    /// Metric namespace in Datadog. Defaults to the AppEnvironment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Metric names to collect. Defaults to all (`.*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// Observed state of an AppEnvironment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppEnvironmentStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pods that pass their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Public URL of the app (from the first Ingress host and path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Image of the current rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The migration of the latest image (`spec.migration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// The last `spec.revisionHistoryLimit` revisions, oldest first: a revision is recorded
    /// each time the effective pod templates change. `berth rollback` re-applies one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Revision>,
}

/// One revision of an AppEnvironment: a distinct effective pod template and configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Sequence number, counting up from 1 (`berth rollback --to-revision`).
    pub revision: i64,
    /// The `metadata.generation` it was first seen at.
    pub generation: i64,
    /// `spec.image` of the revision.
    pub image: String,
    /// Hash of the effective pod templates of the app, its workers, cron jobs and migration.
    pub hash: String,
    /// When the operator first applied it.
    pub created_at: Time,
    /// When it first became Ready; absent while it has not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Time>,
    /// When a newer revision replaced it (without `readyAt`: it never became Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<Time>,
    /// The revision's spec as compact JSON, when small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// Where the spec is kept instead, zstd-compressed, when too large for the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_ref: Option<RevisionSpecRef>,
}

/// A key of the app's history ConfigMap (owned by the AppEnvironment).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpecRef {
    /// Name of the ConfigMap, `<app>-history`.
    pub config_map: String,
    /// Key in its `binaryData`.
    pub key: String,
}

/// State of the migration Job of one image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The image the migration ran with.
    pub image: String,
    /// Name of its Job.
    pub job: String,
    /// `Running`, `Succeeded` or `Failed`.
    pub phase: String,
    /// Why it failed, from the Job's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

//! `DatabaseInstance`: a PostgreSQL server or RabbitMQ node (or cluster) running as pods on
//! persistent volumes, with the databases, roles, vhosts and users its spec declares.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Desired state of one PostgreSQL or RabbitMQ instance.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "DatabaseInstance",
    plural = "databaseinstances",
    shortname = "dbi",
    category = "berth",
    namespaced,
    status = "DatabaseInstanceStatus",
    doc = "A PostgreSQL server or RabbitMQ node/cluster on persistent volumes, with the databases, roles, vhosts and users its spec declares provisioned over a real connection.",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine", description = "postgres or rabbitmq"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version", description = "Engine version"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the instance serves clients"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "host:port clients connect to"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("self.engine != 'postgres' || !has(self.replicas) || self.replicas == 1").message("spec.replicas: PostgreSQL instances run exactly 1 replica").field_path(".replicas"),
    validation = Rule::new("self.engine != 'rabbitmq' || !has(self.replicas) || self.replicas == 1 || (self.replicas >= 3 && self.replicas % 2 == 1)").message("spec.replicas: a RabbitMQ cluster needs 1 or an odd number of at least 3 nodes").field_path(".replicas"),
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseInstanceSpec {
    /// Database engine: `postgres` or `rabbitmq`.
    pub engine: Engine,
    /// Engine version: PostgreSQL `14`–`17` (optionally with a minor, e.g. `16.4`); RabbitMQ
    /// `3.13` or `4.x`.
    #[schemars(length(min = 1, max = 32))]
    pub version: String,
    /// Container image override. Defaults to the official image of `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of pods: PostgreSQL 1; RabbitMQ 1 or an odd number ≥ 3 (one cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: Option<i32>,
    /// Persistent volume of each pod.
    pub storage: Storage,
    /// CPU and memory requests and limits of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// postgresql.conf parameters (PostgreSQL only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// rabbitmq.conf settings (RabbitMQ only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// What happens to the volumes when the instance is deleted: `Retain` (default) keeps
    /// them, `Delete` removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// PostgreSQL databases to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<PostgresDatabase>,
    /// PostgreSQL roles to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<PostgresRole>,
    /// RabbitMQ virtual hosts to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vhosts: Vec<String>,
    /// RabbitMQ users to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<RabbitUser>,
    /// Where the administrative password comes from. Berth generates it when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSource>,
    /// Prometheus metrics: a postgres_exporter sidecar (PostgreSQL) or RabbitMQ's built-in
    /// `rabbitmq_prometheus` endpoint, exposed on the client Service as port `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<DatabaseMetrics>,
}

/// A password kept outside Berth.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSource {
    /// A Secret of this namespace written by the External Secrets Operator (the target of an
    /// ExternalSecret reading AWS Secrets Manager), whose key `password` is the administrative
    /// password. Berth follows it: a new value there is set on the server, and the connection
    /// Secret `<instance>-credentials` carries it. The `berth.dev/rotate-credentials`
    /// annotation is refused (rotation happens in Secrets Manager), and a Restore never
    /// overwrites that Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub external_secret: Option<String>,
}

/// Metrics settings of a DatabaseInstance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseMetrics {
    /// Expose metrics. Defaults to false.
    #[serde(default)]
    pub enabled: bool,
    /// postgres_exporter image override (PostgreSQL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub exporter_image: Option<String>,
    /// Namespace of the Prometheus that scrapes the endpoint; the NetworkPolicy admits it on
    /// the metrics port. Defaults to `monitoring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub scraper_namespace: Option<String>,
}

/// Database engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Postgres,
    Rabbitmq,
}

/// Persistent volume settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Volume size, e.g. `20Gi`. Can grow (when the storage class allows expansion), never
    /// shrink.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"))]
    pub size: String,
    /// StorageClass of the volume. The cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Fate of data when its owner is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// A PostgreSQL database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresDatabase {
    /// Database name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Owning role (declared in `roles` or the instance's own user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `Retain` (default) never drops the database when it leaves the spec; `Delete` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<DeletionPolicy>,
}

/// A PostgreSQL role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresRole {
    /// Role name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The role can log in (gets a password Secret). Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<bool>,
    /// The role can create databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub createdb: Option<bool>,
    /// Roles this role is a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_roles: Vec<String>,
    /// `Retain` (default) never drops the role when it leaves the spec; `Delete` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<DeletionPolicy>,
}

/// A RabbitMQ user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitUser {
    /// User name.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// Management tags, e.g. `monitoring`, `management`, `administrator`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Permissions per vhost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<RabbitPermission>,
    /// `Retain` (default) never deletes the user when it leaves the spec; `Delete` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<DeletionPolicy>,
}

/// Permissions of a RabbitMQ user on one vhost (regular expressions).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RabbitPermission {
    /// The vhost.
    pub vhost: String,
    /// Resources the user may configure. Defaults to `.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure: Option<String>,
    /// Resources the user may write to. Defaults to `.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<String>,
    /// Resources the user may read from. Defaults to `.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
}

/// Observed state of a DatabaseInstance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseInstanceStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Coarse lifecycle phase for humans: Pending, Provisioning, Ready, Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `host:port` of the client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret holding the connection credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Version the pods currently run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// What exists in the server because the spec declares it, as `kind/name` (`role/app`,
    /// `database/orders`, `vhost/orders`, `user/app`), after the last successful provisioning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provisioned: Vec<String>,
    /// The last provisioning failure, kept until provisioning succeeds again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ProvisioningError>,
    /// The value of the `berth.dev/rotate-credentials` annotation whose rotation is complete.
    /// AppEnvironments that use the instance put it on their pod template, so a rotation rolls
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_revision: Option<String>,
}

/// A provisioning failure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningError {
    /// Machine-readable cause: `ServerUnreachable` or `ProvisioningFailed`.
    pub reason: String,
    /// What failed, as the server said it.
    pub message: String,
    /// When it failed (RFC 3339).
    pub time: String,
}

//! `Backup`: one backup run of Kubernetes resources, database dumps and volume data.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Desired state of one backup run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Backup",
    plural = "backups",
    shortname = "bk",
    category = "berth",
    namespaced,
    status = "BackupStatus",
    doc = "One backup run: Kubernetes resources, database dumps and volume data written to the policy's S3 repository.",
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.policyName",
        description = "BackupPolicy this backup belongs to"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "New, InProgress, Completed, PartiallyFailed or Failed"
    ),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.bytes", description = "Bytes backed up"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The BackupPolicy (same namespace) whose storage, scope and retention apply.
    #[schemars(length(min = 1, max = 253))]
    pub policy_name: String,
    /// Delete the backup's data from the repository when this object is deleted. Defaults to
    /// false: deleting the object keeps the data.
    #[serde(default)]
    pub delete_data: bool,
    /// ServiceAccount of this namespace that Berth acts as for this backup: it reads the
    /// policy's Secrets and exports the namespace's objects with that account's rights, and the
    /// agent Jobs run as it. Unset: the policy's `serviceAccountName`, else the operator's
    /// `--default-service-account` (`berth-backup` in the chart). A cluster admin may
    /// enforce that default, and then no other name is accepted. The namespace's admin creates
    /// the account and its Role (see the README, "Tenancy"); Berth never creates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub service_account_name: Option<String>,
}

/// Observed state of a Backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (true once Completed), in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// New, InProgress, Completed, PartiallyFailed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Bytes read from the sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Per-item results: resources, each database, each volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<BackupItem>,
}

/// Result of one item of a backup.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupItem {
    /// `resources`, `database/<name>` or `volume/<pvc>`.
    pub name: String,
    /// Completed or Failed.
    pub phase: String,
    /// Repository snapshot id of the item's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Bytes read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Error, when Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

//! `Restore`: brings back one Backup, optionally into other namespaces.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Desired state of one restore.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Restore",
    plural = "restores",
    shortname = "rst",
    category = "berth",
    namespaced,
    status = "RestoreStatus",
    doc = "Restores one Backup (or the newest successful Backup of a policy), optionally into other namespaces, in an app-aware order.",
    printcolumn(
        name = "Backup",
        type_ = "string",
        json_path = ".spec.backupName",
        description = "Backup being restored"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Restore phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("has(self.backupName) != has(self.policyName)").message("set exactly one of spec.backupName and spec.policyName"),
)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The Backup to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// Restore the newest Completed Backup of this BackupPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    /// Map source namespaces to target namespaces, e.g. `{shop: shop-restored}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Restore only these kinds (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_kinds: Vec<String>,
    /// Never restore these kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_kinds: Vec<String>,
    /// What to do with objects that already exist: `none` (default, leave them) or `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_resource_policy: Option<ExistingResourcePolicy>,
    /// Only list what would be created or changed.
    #[serde(default)]
    pub dry_run: bool,
    /// Longest the restore may take, counted from the Restore's creation, as a duration such
    /// as `90m` or `2h30m`. Defaults to `1h`. A restore still unfinished then ends Failed
    /// with reason `TimedOut`, and its agent Jobs are stopped by the same deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub timeout: Option<String>,
    /// ServiceAccount of this namespace that Berth acts as for this restore: every object,
    /// namespace and database it writes must be allowed to that account, or the restore is
    /// refused before it writes anything. Unset: the operator's `--default-service-account`
    /// (`berth-backup` in the chart). A cluster admin may
    /// enforce that default, and then no other name is accepted. The namespace's admin creates
    /// the account and its Role (see the README, "Tenancy"); Berth never creates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub service_account_name: Option<String>,
}

/// Handling of objects that already exist in the target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExistingResourcePolicy {
    None,
    Update,
}

/// Observed state of a Restore.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (true once Completed), in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pending (waiting for a target namespace), InProgress, Completed, PartiallyFailed or
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Objects created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u32>,
    /// Objects updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u32>,
    /// Objects skipped because they exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u32>,
    /// Errors, one per failed object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The Backup being restored (resolved from `spec.policyName` when that is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// The stage reached, in order: ConfigAndSecrets, Volumes, Databases, DatabaseData,
    /// VolumeData, Apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// When the current stage began. A stage that waits (for DatabaseInstances to become Ready,
    /// for agent Jobs) fails the restore once its deadline, counted from here, has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_start_time: Option<Time>,
    /// What the restore creates, updates or skips (`create Secret shop/orders-db-credentials`);
    /// with `spec.dryRun`, all it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<String>,
}

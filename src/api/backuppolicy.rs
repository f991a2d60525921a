//! `BackupPolicy`: a cron schedule that creates `Backup` objects, the storage they go to,
//! what they contain, how long they are kept and where they are copied offsite.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Desired state of a backup schedule.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "BackupPolicy",
    plural = "backuppolicies",
    shortname = "bp",
    category = "berth",
    namespaced,
    status = "BackupPolicyStatus",
    doc = "A backup schedule: creates Backup objects on a cron schedule, applies GFS retention and copies backups to an optional offsite location.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule", description = "Cron schedule"),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        description = "Whether the schedule is stopped"
    ),
    printcolumn(
        name = "Last Success",
        type_ = "string",
        json_path = ".status.lastSuccessfulBackup",
        description = "Newest completed Backup"
    ),
    printcolumn(
        name = "Fresh",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"BackupFresh\")].status",
        description = "Whether the last success is recent enough"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// Five-field cron schedule, e.g. `0 3 * * *` (03:00 every day).
    #[schemars(length(min = 9, max = 128))]
    pub schedule: String,
    /// IANA time zone of the schedule, e.g. `Europe/Berlin`. Defaults to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Stop creating new Backups (existing ones and restores are unaffected).
    #[serde(default)]
    pub suspend: bool,
    /// Where backups are written.
    pub storage: StorageLocation,
    /// An optional second location every backup is replicated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<StorageLocation>,
    /// What each backup contains.
    #[serde(default)]
    pub scope: BackupScope,
    /// How many backups are kept.
    #[serde(default)]
    pub retention: Retention,
    /// ServiceAccount of this namespace that Berth acts as for this policy and the Backups it
    /// creates: it reads the storage Secrets and exports objects with that account's rights,
    /// and the agent Jobs run as it. Unset: the operator's `--default-service-account`
    /// (`berth-backup` in the chart). A cluster admin may
    /// enforce that default, and then no other name is accepted. The namespace's admin creates
    /// the account and its Role (see the README, "Tenancy"); Berth never creates them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub service_account_name: Option<String>,
    /// Restore drills: on their own schedule, the newest Completed backup is restored (data
    /// only: DatabaseInstances, Secrets, PVCs and their data, never apps or CronJobs) into a
    /// pre-created drill namespace and checked, and the result is recorded in
    /// `status.lastVerifiedRestore` and the `RestoreVerified` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// Restore drills of a BackupPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// Five-field cron schedule of the drills (in `spec.timeZone`), e.g. `0 5 * * 0`.
    #[schemars(length(min = 9, max = 128))]
    pub schedule: String,
    /// The drill namespace, which the cluster admin creates and in which the policy's
    /// ServiceAccount may act (as for a Restore into another namespace). Berth empties it
    /// before and after each drill, so it must hold nothing else; it may not be the policy's
    /// own namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: String,
    /// How long the drill namespace of a failed drill is kept as it is for inspection, as a
    /// duration such as `24h` or `90m`. Defaults to `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub keep_failed_for: Option<String>,
    /// Longest a drill may take (restore, waits and checks), such as `1h`. Defaults to `1h`;
    /// a drill still unfinished then fails with reason `TimedOut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"))]
    pub timeout: Option<String>,
}

/// An S3 (or S3-compatible) location.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageLocation {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket (no leading slash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region, e.g. `eu-west-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible server (MinIO, Garage, Ceph). AWS when absent. A plain
    /// `http://` endpoint is refused unless `insecureHTTP` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint, for a network you trust (tests, an in-cluster
    /// MinIO): S3 credentials and the repository's objects then travel unencrypted, and a
    /// party on the path can read them or (for readable metadata, which carries a MAC) make
    /// the operator refuse them. Defaults to false.
    #[serde(default, rename = "insecureHTTP", skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// Address buckets by path (`endpoint/bucket`), as most S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Without it, the policy's
    /// ServiceAccount needs the IRSA annotation `eks.amazonaws.com/role-arn` (the operator and
    /// the agent Jobs then assume that role), unless the cluster admin lets the operator lend
    /// its own identity (`--allow-operator-storage-identity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Secret with `ca.crt` for a server with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<String>,
    /// Secret with the repository encryption key under `key`.
    pub encryption_key_secret: String,
    /// S3 server-side encryption requested on every object Berth writes here (agent,
    /// operator and offsite replication, multipart uploads included), for buckets whose
    /// policy demands it. The repository's own encryption stays; `berth agent check` reports
    /// objects stored without this encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryptionSettings>,
}

/// S3 server-side encryption of a storage location.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, kube::KubeSchema)]
#[x_kube(
    validation = Rule::new("self.type != 'aws:kms' || (has(self.kmsKeyId) && self.kmsKeyId != '')").message("serverSideEncryption.type aws:kms needs serverSideEncryption.kmsKeyId: set it to the KMS key id, key ARN or alias/NAME").field_path(".kmsKeyId"),
    validation = Rule::new("self.type != 'AES256' || !has(self.kmsKeyId)").message("serverSideEncryption.kmsKeyId goes only with type aws:kms: remove kmsKeyId for AES256, or set type: aws:kms").field_path(".kmsKeyId"),
)]
#[serde(rename_all = "camelCase")]
pub struct ServerSideEncryptionSettings {
    /// `aws:kms` (SSE-KMS, with `kmsKeyId`) or `AES256` (SSE-S3).
    #[serde(rename = "type")]
    pub type_: ServerSideEncryptionType,
    /// KMS key for `aws:kms`: a key id, key ARN, alias (`alias/NAME`) or alias ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub kms_key_id: Option<String>,
}

/// The S3 server-side encryption algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServerSideEncryptionType {
    #[serde(rename = "aws:kms")]
    AwsKms,
    #[serde(rename = "AES256")]
    Aes256,
}

impl ServerSideEncryptionType {
    /// The value S3 takes in `x-amz-server-side-encryption`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsKms => "aws:kms",
            Self::Aes256 => "AES256",
        }
    }
}

/// What a backup contains.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScope {
    /// AppEnvironments and DatabaseInstances of this namespace to include (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Further resource kinds to export, as `kind.group` (e.g. `configmaps`, `ingresses.networking.k8s.io`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_resources: Vec<String>,
    /// Dump the data of included DatabaseInstances. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<bool>,
    /// Copy the files of PersistentVolumeClaims used by included apps. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<bool>,
}

/// Grandfather-father-son retention. The newest successful backup is never removed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<u32>,
}

/// Observed state of a BackupPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `BackupFresh`, in the `metav1.Condition` shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the schedule last created a Backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the schedule fires next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Name of the newest Completed Backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    /// The newest Completed Backup whose data is also at `spec.offsite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replicated_backup: Option<String>,
    /// The last retention and offsite replication run, which goes on outside the reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceStatus>,
    /// The drill under way (`spec.verify`), while one runs or a failed one's namespace is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillStatus>,
    /// The last finished restore drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_restore: Option<VerifiedRestore>,
}

/// A restore drill under way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillStatus {
    /// The Backup being restored.
    pub backup: String,
    /// The child Restore that brings the data into the drill namespace.
    pub restore: String,
    /// When the drill started.
    pub started_at: Time,
    /// Emptying, Restoring, Checking, or Kept (a failed drill's namespace kept for inspection).
    pub phase: String,
}

/// The result of the last restore drill.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedRestore {
    /// The Backup that was restored.
    pub backup: String,
    /// When the drill started.
    pub started_at: Time,
    /// When it finished.
    pub finished_at: Time,
    /// How long it took, in seconds.
    pub duration_seconds: i64,
    /// Passed or Failed.
    pub result: String,
    /// What was checked, or which check failed with the object and the numbers.
    pub message: String,
}

/// A retention and offsite replication run of a BackupPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    /// Running, Succeeded or Failed.
    pub phase: String,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why it failed, when Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it is doing or did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

//! The Backup planner: from what the controller observed (the object, its status, its agent
//! Jobs, the snapshots in the repository, the clock) the next step, and the status that step
//! leaves. No I/O: every phase decision of a Backup is made here, and the controller only
//! reads, executes the step and records it.
//!
//! New -> [`Step::Start`] (open the repository, list the items) -> InProgress ->
//! [`Step::RunJobs`]: one agent Job per database and volume ([`job_steps`]), each finished Job's
//! snapshot found by its tags ([`record_snapshot`]) -> once no item is pending ([`jobs_done`]),
//! [`Step::Finish`]: the export and the manifest, and the terminal phase ([`complete`]). Any
//! failure of the whole Backup ends it Failed with a reason ([`fail`]); so does the
//! [`BACKUP_DEADLINE`]. Deleting a Backup is planned by [`plan_deletion`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::phase;
use crate::api::backup::{BackupItem, BackupStatus};

/// Seconds an agent Job may run, and its retries.
pub const JOB_DEADLINE_SECONDS: i64 = 6 * 3600;
pub const JOB_BACKOFF_LIMIT: i32 = 2;
/// Longest a Backup stays InProgress: its Jobs' deadline, then an hour for the export, which
/// retries errors that may pass (5xx, throttling) until then.
pub const BACKUP_DEADLINE: jiff::SignedDuration = jiff::SignedDuration::from_hours(JOB_DEADLINE_SECONDS / 3600 + 1);
/// How often an InProgress Backup looks again: Job status changes wake it, this is a safety net.
pub const JOBS_RECHECK: Duration = Duration::from_secs(60);
/// The item of the Kubernetes objects, stored last by the operator itself (no Job).
pub const RESOURCES: &str = "resources";
/// Annotation that lets a Backup with `spec.deleteData` go without deleting its data (for
/// storage that can no longer be reached).
pub const SKIP_DATA_DELETION: &str = "berth.dev/skip-data-deletion";

/// What the controller observed of a Backup.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `spec.deleteData`.
    pub delete_data: bool,
    /// The data finalizer is on the object.
    pub has_finalizer: bool,
    /// Found in the bucket (synced label): written elsewhere.
    pub synced: bool,
    /// The policy label names `spec.policyName`.
    pub labelled: bool,
    pub status: &'a BackupStatus,
    pub now: jiff::Timestamp,
}

/// The one thing a reconcile of a Backup does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Being deleted: see [`plan_deletion`].
    Delete,
    /// `spec.deleteData` without the finalizer: add it first.
    AddFinalizer,
    /// Created by hand: label it with its policy, so that the policy sees it (freshness,
    /// retention).
    LabelWithPolicy,
    /// Nothing to do until the object changes (terminal, or synced from the bucket).
    Idle,
    /// New: open (or create) the repository, decide the items, go InProgress.
    Start,
    /// InProgress: start, collect and record the items' agent Jobs.
    RunJobs,
    /// End the Backup Failed.
    Fail(Failure),
}

/// A terminal failure of the whole Backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// The next step of the Backup `observed`.
pub fn plan(observed: &Observed) -> Step {
    if observed.deleting {
        return Step::Delete;
    }
    if observed.delete_data && !observed.has_finalizer {
        return Step::AddFinalizer;
    }
    if observed.synced {
        return Step::Idle;
    }
    if !observed.labelled {
        return Step::LabelWithPolicy;
    }
    match observed.status.phase.as_deref() {
        Some(phase::IN_PROGRESS) => match deadline_failure(observed.status, observed.now) {
            Some(failure) => Step::Fail(failure),
            None => Step::RunJobs,
        },
        p if phase::is_terminal(p) => Step::Idle,
        _ => Step::Start,
    }
}

fn deadline_failure(status: &BackupStatus, now: jiff::Timestamp) -> Option<Failure> {
    let started = status.start_time.as_ref()?.0;
    (now.duration_since(started) > BACKUP_DEADLINE).then(|| Failure {
        reason: "DeadlineExceeded",
        message: format!(
            "still not finished {} hours after it started (the agent Jobs' deadline and an hour to export); see the items' errors and the operator's log",
            BACKUP_DEADLINE.as_hours()
        ),
    })
}

/// The status of a Backup that starts with the items: its objects, then each selected
/// database and volume.
pub fn started(now: jiff::Timestamp, databases: &[String], volumes: &[String]) -> BackupStatus {
    let mut items = vec![pending(RESOURCES)];
    items.extend(databases.iter().map(|db| pending(&format!("database/{db}"))));
    items.extend(volumes.iter().map(|pvc| pending(&format!("volume/{pvc}"))));
    BackupStatus { start_time: Some(Time(now)), items, ..BackupStatus::default() }
}

fn pending(name: &str) -> BackupItem {
    BackupItem { name: name.into(), phase: phase::PENDING.into(), snapshot: None, bytes: None, error: None }
}

/// Why a new Backup cannot list what it backs up as its account.
pub fn listing_refused(ns: &str, account: &str, refusal: &str) -> Failure {
    Failure {
        reason: "Forbidden",
        message: format!(
            "cannot list the databases and volumes to back up as ServiceAccount {ns}/{account}: {refusal}; grant it list on databaseinstances, appenvironments and persistentvolumeclaims (deploy/tenant/)"
        ),
    }
}

/// What became of an item's agent Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// No Job yet.
    Missing,
    Running,
    Succeeded,
    /// Failed, with the Job's condition.
    Failed(String),
}

/// What to do for one pending item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemStep {
    /// Create its agent Job.
    CreateJob { item: String },
    /// Its Job failed: the item fails with the Job's message (and what the agent said).
    RecordFailure { item: String, message: String },
    /// Its Job succeeded: find its snapshot.
    CollectSnapshot { item: String },
}

/// For each pending item (not the objects, which have no Job), in order, what its Job asks
/// for; a running Job asks for nothing. `jobs`: each item's Job, by item name.
pub fn job_steps(status: &BackupStatus, jobs: &BTreeMap<String, JobState>) -> Vec<ItemStep> {
    status
        .items
        .iter()
        .filter(|i| i.name != RESOURCES && i.phase == phase::PENDING)
        .filter_map(|i| {
            let item = i.name.clone();
            match jobs.get(&i.name).unwrap_or(&JobState::Missing) {
                JobState::Missing => Some(ItemStep::CreateJob { item }),
                JobState::Running => None,
                JobState::Succeeded => Some(ItemStep::CollectSnapshot { item }),
                JobState::Failed(message) => Some(ItemStep::RecordFailure { item, message: message.clone() }),
            }
        })
        .collect()
}

/// Ends an item Failed with `error`.
pub fn fail_item(status: &mut BackupStatus, item: &str, error: String) {
    if let Some(i) = status.items.iter_mut().find(|i| i.name == item) {
        i.phase = phase::FAILED.into();
        i.error = Some(error);
    }
}

/// A snapshot in the repository, as far as the Backup cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFact {
    pub id: String,
    pub tags: Vec<String>,
    pub time: jiff::Timestamp,
    pub bytes: u64,
}

/// Records the snapshot the succeeded Job of `item` wrote: the newest with the Backup's and
/// item's tags. A Job that wrote none fails the item.
pub fn record_snapshot(status: &mut BackupStatus, backup: &str, item: &str, snapshots: &[SnapshotFact]) {
    let wanted = super::snapshot_tags(backup, item);
    let found = snapshots.iter().filter(|s| wanted.iter().all(|t| s.tags.contains(t))).max_by_key(|s| s.time);
    let Some(i) = status.items.iter_mut().find(|i| i.name == item) else { return };
    match found {
        Some(snapshot) => {
            i.phase = phase::COMPLETED.into();
            i.snapshot = Some(snapshot.id.clone());
            i.bytes = Some(snapshot.bytes);
        }
        None => {
            i.phase = phase::FAILED.into();
            i.error = Some("the agent Job succeeded but wrote no snapshot with the Backup's tags".into());
        }
    }
}

/// Whether every item's Job has ended: the Backup may finish.
pub fn jobs_done(status: &BackupStatus) -> bool {
    status.items.iter().filter(|i| i.name != RESOURCES).all(|i| i.phase != phase::PENDING)
}

/// The terminal phase and message of a Backup whose Jobs have all ended, after the export:
/// `failed_sources` are the extra kinds that could not be read (as failed items), `stored` the
/// objects' snapshot and size or why they could not be stored. Completed when every item is;
/// Failed when none is or the objects are not stored; PartiallyFailed otherwise.
pub fn complete(
    status: &mut BackupStatus,
    failed_sources: Vec<(String, String)>,
    stored: Result<(String, u64), String>,
    now: jiff::Timestamp,
) -> (&'static str, String) {
    for (item, error) in failed_sources.into_iter().filter(|(item, _)| item != RESOURCES) {
        status.items.push(BackupItem {
            name: item,
            phase: phase::FAILED.into(),
            snapshot: None,
            bytes: None,
            error: Some(error),
        });
    }
    if let Some(resources) = status.items.iter_mut().find(|i| i.name == RESOURCES) {
        match stored {
            Ok((snapshot, bytes)) => {
                resources.phase = phase::COMPLETED.into();
                resources.snapshot = Some(snapshot);
                resources.bytes = Some(bytes);
            }
            Err(e) => {
                resources.phase = phase::FAILED.into();
                resources.error = Some(e);
            }
        }
    }
    let failed = status.items.iter().filter(|i| i.phase != phase::COMPLETED).count();
    let resources_failed = status.items.iter().any(|i| i.name == RESOURCES && i.phase == phase::FAILED);
    let final_phase = match failed {
        0 => phase::COMPLETED,
        n if n == status.items.len() || resources_failed => phase::FAILED,
        _ => phase::PARTIALLY_FAILED,
    };
    status.bytes = Some(status.items.iter().filter_map(|i| i.bytes).sum());
    status.completion_time = Some(Time(now));
    let message = match final_phase {
        phase::COMPLETED => format!("{} items backed up", status.items.len()),
        _ => status
            .items
            .iter()
            .filter_map(|i| i.error.as_ref().map(|e| format!("{}: {e}", i.name)))
            .collect::<Vec<_>>()
            .join("; "),
    };
    (final_phase, message)
}

/// Ends the Backup Failed: every unfinished item fails with the failure's message. Returns
/// the message of the Ready condition.
pub fn fail(status: &mut BackupStatus, failure: &Failure, now: jiff::Timestamp) -> String {
    status.completion_time = Some(Time(now));
    for item in status.items.iter_mut().filter(|i| !phase::is_terminal(Some(&i.phase))) {
        item.phase = phase::FAILED.into();
        item.error = Some(failure.message.clone());
    }
    format!("{}: {}", failure.reason, failure.message)
}

/// The reason of the Ready condition of a Backup in `phase`.
pub fn reason(new_phase: &str) -> &'static str {
    match new_phase {
        phase::COMPLETED => "Completed",
        phase::PARTIALLY_FAILED => "PartiallyFailed",
        phase::FAILED => "Failed",
        _ => "InProgress",
    }
}

/// What the controller knows of a Backup being deleted, gathered as [`plan_deletion`] asks.
#[derive(Clone, Debug, Default)]
pub struct Deletion {
    pub has_finalizer: bool,
    /// The [`SKIP_DATA_DELETION`] annotation is `true`.
    pub skip: bool,
    /// `None` until read.
    pub policy: Option<PolicyFact>,
    /// The deletion of the data, once tried.
    pub deleted: Option<Result<(), String>>,
    /// Whether the Backup's namespace is being deleted, once read.
    pub namespace_terminating: Option<bool>,
}

/// What a deletion finds of the Backup's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyFact {
    /// The policy and its account: the data can be deleted.
    Usable,
    /// The policy is there, its account is not (or not allowed): fixable, so it blocks like
    /// unreachable storage.
    AccountUnavailable(String),
    /// No usable policy (gone, invalid, unreadable): nobody can delete the data.
    Gone,
}

/// The next step of a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletionStep {
    /// Our finalizer is not there: nothing to do.
    Idle,
    ReadPolicy,
    DeleteData,
    ReadNamespace,
    /// Remove the finalizer; `kept` says why the data stays in the bucket (a `DataKept`
    /// warning), `None` when it was deleted.
    Release {
        kept: Option<String>,
    },
    /// The data cannot be deleted yet: report `DataDeleted=False` and retry with backoff.
    Block {
        message: String,
    },
}

/// The next step of deleting the Backup `name` in `ns`: its data goes unless the annotation
/// says to keep it, its policy is gone, or its namespace is being deleted (nobody can repair
/// a Secret there); storage that cannot be reached blocks the deletion.
pub fn plan_deletion(d: &Deletion, ns: &str, name: &str) -> DeletionStep {
    if !d.has_finalizer {
        return DeletionStep::Idle;
    }
    if d.skip {
        return DeletionStep::Release {
            kept: Some(format!("{SKIP_DATA_DELETION}=true: the backup's data stays in the bucket")),
        };
    }
    let deleted = match (&d.policy, &d.deleted) {
        (None, _) => return DeletionStep::ReadPolicy,
        (Some(PolicyFact::Gone), _) => {
            return DeletionStep::Release {
                kept: Some("its BackupPolicy is gone: the data stays in the bucket".into()),
            };
        }
        (Some(PolicyFact::AccountUnavailable(message)), _) => Err(message.clone()),
        (Some(PolicyFact::Usable), None) => return DeletionStep::DeleteData,
        (Some(PolicyFact::Usable), Some(deleted)) => deleted.clone(),
    };
    let Err(e) = deleted else { return DeletionStep::Release { kept: None } };
    match d.namespace_terminating {
        None => DeletionStep::ReadNamespace,
        Some(true) => DeletionStep::Release {
            kept: Some(format!(
                "namespace {ns:?} is being deleted and the data cannot be deleted ({e}): it stays in the bucket"
            )),
        },
        Some(false) => DeletionStep::Block {
            message: format!(
                "cannot delete the backup's data: {e}; Berth keeps trying. To delete the Backup and keep its data in the bucket, run: kubectl annotate backup {name} -n {ns} {SKIP_DATA_DELETION}=true"
            ),
        },
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

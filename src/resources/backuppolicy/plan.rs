//! The BackupPolicy planner. A policy is level-driven: every reconcile looks at the whole
//! picture (its Backups, its retention and replication run, the bucket sync, the clock) and
//! [`converge`] decides, in one place, everything that reconcile does: whether the schedule
//! fires, whether a retention and replication run starts, the status with its `Ready` and
//! `BackupFresh` conditions, and when to look again. Before that, [`next`] decides whether
//! there is anything to converge (deleted, invalid, no account). No I/O.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{BackupFact, Freshness, ValidPolicy, backup_name, due, freshness, next_run, retention_victims};
use crate::api::backuppolicy::{BackupPolicyStatus, MaintenanceStatus};
use crate::api::conditions::{DesiredCondition, READY};
use crate::resources::backup::phase;

/// Condition type of backup freshness.
pub const BACKUP_FRESH: &str = "BackupFresh";
/// How often a policy's bucket is listed for backups this cluster does not know.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(300);
/// How often a running retention and replication is looked at.
pub const MAINTENANCE_POLL: Duration = Duration::from_secs(5);
/// How long after a failed run the next one starts.
pub const MAINTENANCE_RETRY: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);
pub const MAINTENANCE_RUNNING: &str = "Running";
pub const MAINTENANCE_SUCCEEDED: &str = "Succeeded";
pub const MAINTENANCE_FAILED: &str = "Failed";
/// How often an object whose ServiceAccount is missing (or not allowed) looks again: creating
/// an account is not an event Berth watches.
pub const ACCOUNT_RECHECK: Duration = Duration::from_secs(30);

/// A reason and message of a condition.
pub type Refusal = (&'static str, String);

/// What decides whether a policy is converged at all; `account` is `None` until read.
#[derive(Clone, Debug)]
pub struct Gate {
    pub deleting: bool,
    /// Why the spec is invalid (every error), if it is.
    pub invalid: Option<String>,
    /// The policy's ServiceAccount can be acted as, or why not.
    pub account: Option<Result<(), Refusal>>,
}

/// What a reconcile of a policy does first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Being deleted: nothing (its Backups go with it; a running retention stops by itself).
    Idle,
    /// `Ready=False` InvalidSpec, until the spec changes.
    Invalid(String),
    /// Read whether the policy's ServiceAccount can be acted as.
    ReadAccount,
    /// `Ready=False` with the reason, looked at again after [`ACCOUNT_RECHECK`].
    AccountUnavailable(Refusal),
    /// Everything is there: [`converge`].
    Converge,
}

pub fn next(gate: &Gate) -> Step {
    if gate.deleting {
        return Step::Idle;
    }
    if let Some(message) = &gate.invalid {
        return Step::Invalid(message.clone());
    }
    match &gate.account {
        None => Step::ReadAccount,
        Some(Err(refusal)) => Step::AccountUnavailable(refusal.clone()),
        Some(Ok(())) => Step::Converge,
    }
}

/// A Backup of the policy, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSeen {
    pub name: String,
    pub phase: Option<String>,
    pub completion: Option<jiff::Timestamp>,
}

/// How a finished retention and replication run went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// The newest Backup whose data is now offsite, when the copy succeeded.
    pub replicated: Option<String>,
    /// Reason and message of a failure.
    pub error: Option<Refusal>,
    /// What was done.
    pub summary: String,
}

/// A retention and replication run as it was started: kept by the task that runs it, so
/// that its status comes from the task and not from a status a stale cache may show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStarted {
    pub at: jiff::Timestamp,
    /// What it does (the status message while it runs).
    pub plan: String,
}

/// The policy's retention and replication run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    Idle,
    Running(RunStarted),
    /// Finished since the last reconcile (handed out once).
    Finished(RunStarted, RunResult),
}

/// What a reconcile of a valid policy observed.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub policy: &'a ValidPolicy,
    pub status: &'a BackupPolicyStatus,
    /// `metadata.creationTimestamp` (the schedule counts missed runs from it).
    pub created: jiff::Timestamp,
    pub now: jiff::Timestamp,
    /// The policy's Backups.
    pub backups: &'a [BackupSeen],
    /// The bucket sync of this reconcile: `None` when none was due, else whether the bucket
    /// could be opened.
    pub sync: Option<Result<(), Refusal>>,
    pub run: RunState,
}

/// A retention and replication run to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRun {
    /// The Backups retention removes.
    pub victims: Vec<String>,
    /// The newest successful Backup (what the offsite copy will hold).
    pub newest: Option<String>,
    pub started: RunStarted,
}

/// Everything one reconcile of a valid policy does.
#[derive(Clone, Debug, PartialEq)]
pub struct Converge {
    /// Create the Backup of this name: the schedule fired.
    pub fire: Option<String>,
    /// Start a retention and replication run.
    pub start_run: Option<StartRun>,
    /// The status to write (its conditions are `conditions`).
    pub status: BackupPolicyStatus,
    pub conditions: Vec<DesiredCondition>,
    /// The freshness of the newest success, and its completion (for the metrics).
    pub fresh: Freshness,
    pub last_success: Option<jiff::Timestamp>,
    /// When to look again.
    pub requeue: Duration,
}

/// Decides the reconcile of a valid policy:
/// - the schedule fires when a run is due, the policy is not suspended and none of its
///   Backups runs (concurrency Forbid);
/// - retention never removes a backup not yet copied offsite, nor the newest success; a run
///   starts when there is something to remove or to copy, none runs, and a failed one ended
///   at least [`MAINTENANCE_RETRY`] ago;
/// - `Ready` is Suspended or Scheduled, or False with the reason of a bucket that cannot be
///   opened or of a failed run;
/// - the policy wakes for its next fire time, every [`SYNC_INTERVAL`] for freshness and sync,
///   and every [`MAINTENANCE_POLL`] while a run goes.
pub fn converge(o: &Observed) -> Converge {
    let valid = o.policy;
    let now = o.now;
    let mut status = o.status.clone();
    let mut ready = if valid.suspended() {
        DesiredCondition::new(READY, true, "Suspended", "spec.suspend is true: no new backups")
    } else {
        DesiredCondition::new(READY, true, "Scheduled", "the schedule is active")
    };
    if let Some(Err((reason, message))) = &o.sync {
        ready = DesiredCondition::new(READY, false, reason, message.clone());
    }

    let newest = newest_completed(o.backups);
    status.last_successful_backup = newest.map(|b| b.name.clone());

    let last_schedule = status.last_schedule_time.as_ref().map(|t| t.0);
    let running = o.backups.iter().any(|b| !phase::is_terminal(b.phase.as_deref()));
    let mut fire = None;
    if !valid.suspended()
        && let Some(at) = due(valid, last_schedule, o.created, now)
        && !running
    {
        fire = Some(backup_name(&kube::ResourceExt::name_any(&valid.policy), at));
        status.last_schedule_time = Some(Time(at));
    }
    status.next_schedule_time = if valid.suspended() { None } else { next_run(valid, now).map(Time) };

    // Retention, then the offsite copy of what is kept.
    let replicated_at = status
        .last_replicated_backup
        .as_ref()
        .and_then(|r| o.backups.iter().find(|b| &b.name == r))
        .and_then(|b| b.completion);
    let offsite = valid.policy.spec.offsite.is_some();
    let facts: Vec<BackupFact> = o
        .backups
        .iter()
        .map(|b| BackupFact {
            name: b.name.clone(),
            phase: b.phase.clone().unwrap_or_default(),
            completion: b.completion,
            synced: !offsite || b.completion.zip(replicated_at).is_some_and(|(c, r)| c <= r),
        })
        .collect();
    let victims = retention_victims(valid.retention(), &facts, &valid.time_zone);
    // The run's phase comes from its task: the status observed may predate the last write.
    let run_going = match &o.run {
        RunState::Running(started) => {
            status.maintenance = Some(run_going_status(started));
            true
        }
        RunState::Finished(started, result) => {
            if result.replicated.is_some() {
                status.last_replicated_backup = result.replicated.clone();
            }
            status.maintenance = Some(finished(started, result, now));
            false
        }
        RunState::Idle => false,
    };
    if let Some(MaintenanceStatus { phase, reason, message, .. }) = &status.maintenance
        && phase == MAINTENANCE_FAILED
    {
        let reason = reason.as_deref().unwrap_or("MaintenanceFailed");
        ready = DesiredCondition::new(READY, false, reason, message.clone().unwrap_or_default());
    }
    let retry_due = status.maintenance.as_ref().is_none_or(|m| {
        m.phase != MAINTENANCE_FAILED
            || m.completion_time.as_ref().is_none_or(|t| now.duration_since(t.0) >= MAINTENANCE_RETRY)
    });
    let mut start_run = None;
    if !run_going && retry_due && (!victims.is_empty() || needs_replication(valid, &status)) {
        let started = RunStarted { at: now, plan: run_plan(&victims, offsite) };
        status.maintenance = Some(run_going_status(&started));
        start_run = Some(StartRun { victims, newest: status.last_successful_backup.clone(), started });
    }

    let last_success = newest.and_then(|b| b.completion);
    let fresh = freshness(valid, last_success, o.created, now);
    let conditions = vec![ready, DesiredCondition::new(BACKUP_FRESH, fresh.fresh, fresh.reason, fresh.message.clone())];
    let until_next = status
        .next_schedule_time
        .as_ref()
        .map(|t| Duration::from_secs(t.0.duration_since(now).as_secs().max(0) as u64 + 1))
        .unwrap_or(SYNC_INTERVAL);
    // A running retention or replication is looked at again to collect its outcome.
    let wake = if run_going || start_run.is_some() { MAINTENANCE_POLL } else { SYNC_INTERVAL };
    Converge { fire, start_run, status, conditions, fresh, last_success, requeue: until_next.min(wake) }
}

/// The newest Completed Backup: by completion time, then by name. Completion times have a
/// resolution of one second, and two small backups can finish within one; without the name
/// a tie went to whichever came last in the cache's iteration order, which changes between
/// reconciles. (Scheduled Backups are named after their time, so the name orders them too.)
pub fn newest_completed(backups: &[BackupSeen]) -> Option<&BackupSeen> {
    backups
        .iter()
        .filter(|b| b.phase.as_deref() == Some(phase::COMPLETED))
        .max_by(|a, b| (a.completion, &a.name).cmp(&(b.completion, &b.name)))
}

/// The status of a run that goes.
fn run_going_status(started: &RunStarted) -> MaintenanceStatus {
    MaintenanceStatus {
        phase: MAINTENANCE_RUNNING.into(),
        start_time: Some(Time(started.at)),
        message: Some(started.plan.clone()),
        ..MaintenanceStatus::default()
    }
}

/// The status of a finished run.
fn finished(started: &RunStarted, result: &RunResult, now: jiff::Timestamp) -> MaintenanceStatus {
    let (phase, reason, message) = match &result.error {
        Some((reason, message)) => (MAINTENANCE_FAILED, Some(reason.to_string()), message.clone()),
        None => (MAINTENANCE_SUCCEEDED, None, result.summary.clone()),
    };
    MaintenanceStatus {
        phase: phase.into(),
        start_time: Some(Time(started.at)),
        completion_time: Some(Time(now)),
        reason,
        message: Some(message),
    }
}

/// What a run about to start will do.
fn run_plan(victims: &[String], offsite: bool) -> String {
    match (victims.len(), offsite) {
        (0, _) => "replicating to spec.offsite".into(),
        (n, true) => format!("retention: removing {n} backups, then replicating to spec.offsite"),
        (n, false) => format!("retention: removing {n} backups"),
    }
}

fn needs_replication(valid: &ValidPolicy, status: &BackupPolicyStatus) -> bool {
    valid.policy.spec.offsite.is_some()
        && status.last_successful_backup.is_some()
        && status.last_replicated_backup != status.last_successful_backup
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

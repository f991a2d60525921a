//! The Restore planner: from what the controller observed so far, the next step. Facts are
//! read only as the planner asks for them ([`Step::Read`]), in the order that keeps a waiting
//! restore cheap: the account, then the namespace of its Backup (before the repository is
//! opened, which a wait every 30 s must not do), then the Backup itself, every target
//! namespace and the account's access reviews. Then the one stage the status has reached runs,
//! and [`after_stage`] decides what its outcome leads to. No I/O.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::access::{Access, authorization_refusal};
use super::mapping::Stage;
use super::waits::{
    DATABASE_NOT_READY, DATABASE_READY_DEADLINE, JOBS_TIMED_OUT, NAMESPACE_RECHECK, NamespaceState, TIMED_OUT,
    database_not_ready_message, deadline_passed, jobs_timed_out_message, namespace_problem, timed_out_message,
};
use crate::api::restore::RestoreStatus;
use crate::resources::backup::AgentTask;
use crate::resources::backup::phase;

/// Seconds an agent Job may run at most, and its retries.
pub const JOB_DEADLINE_SECONDS: i64 = 6 * 3600;
pub const JOB_BACKOFF_LIMIT: i32 = 2;
/// How often a restore waiting for DatabaseInstances or Jobs looks again (their changes are
/// not watched by the controller, except its own Jobs).
pub const POLL: Duration = Duration::from_secs(2);
/// How soon the next stage starts after one ends.
pub const NEXT_STAGE: Duration = Duration::from_millis(10);
/// Longest the agent Jobs of a stage are waited for, counted from the start of the stage: the
/// wait for the DatabaseInstances, the Jobs' own deadline, and time to be scheduled and to
/// report.
pub const JOBS_DEADLINE: Duration =
    Duration::from_secs(DATABASE_READY_DEADLINE.as_secs() + JOB_DEADLINE_SECONDS as u64 + 15 * 60);

/// A reason and message of a condition.
pub type Refusal = (&'static str, String);

/// What the controller has observed of a Restore so far; `None`: not read yet.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub deleting: bool,
    pub status: &'a RestoreStatus,
    /// `spec.timeout`, or why it is invalid.
    pub timeout: Result<Duration, String>,
    pub created: Option<jiff::Timestamp>,
    pub now: jiff::Timestamp,
    pub dry_run: bool,
    /// The account the restore acts as (`namespace/name`), or why it cannot.
    pub account: Option<Result<String, Refusal>>,
    /// The target of the Restore's own namespace (where its Backups are), before the Backup is
    /// read.
    pub first_target: Option<Vec<(String, NamespaceState)>>,
    /// The Backup, its policy and its objects, loaded and planned; or why not.
    pub backup: Option<Result<(), Refusal>>,
    /// Every namespace the restore writes into.
    pub targets: Option<Vec<(String, NamespaceState)>>,
    /// The account's access reviews of every request the restore needs.
    pub access: Option<Vec<(Access, bool)>>,
}

/// A fact the planner needs before it can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    Account,
    FirstTarget,
    Backup,
    Targets,
    Access,
}

/// The one thing a reconcile of a Restore does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Finished or being deleted: nothing to do (forget its loaded backup).
    Idle,
    Read(Fact),
    /// End the restore in `phase` (Failed, or Completed for a dry run).
    Finish {
        phase: &'static str,
        reason: &'static str,
        message: String,
    },
    /// A target namespace is missing or being deleted: report it in `phase` (an Event the
    /// first time) and look again after `recheck`.
    WaitForNamespace {
        phase: &'static str,
        reason: &'static str,
        message: String,
        announce: bool,
        recheck: Duration,
    },
    /// List what the restore would do; `notes` go first (a refusal, a blocked namespace).
    DryRun {
        notes: Vec<String>,
    },
    /// Run the stage the status has reached.
    RunStage(Stage),
}

/// The next step of the Restore `o`.
pub fn next(o: &Observed) -> Step {
    if o.deleting || phase::is_terminal(o.status.phase.as_deref()) {
        return Step::Idle;
    }
    let failed = |(reason, message): Refusal| Step::Finish { phase: phase::FAILED, reason, message };
    let limit = match &o.timeout {
        Ok(limit) => *limit,
        Err(message) => return failed(("InvalidSpec", message.clone())),
    };
    if deadline_passed(o.created, o.now, limit) {
        return failed((TIMED_OUT, timed_out_message(limit)));
    }
    let account = match &o.account {
        None => return Step::Read(Fact::Account),
        Some(Err(refusal)) => return failed(refusal.clone()),
        Some(Ok(account)) => account,
    };
    if !o.dry_run {
        let Some(states) = &o.first_target else { return Step::Read(Fact::FirstTarget) };
        if let Some(problem) = namespace_problem(states) {
            return wait_for_namespace(o, limit, problem);
        }
    }
    match &o.backup {
        None => return Step::Read(Fact::Backup),
        Some(Err(refusal)) => return failed(refusal.clone()),
        Some(Ok(())) => {}
    }
    let Some(targets) = &o.targets else { return Step::Read(Fact::Targets) };
    // Before anything is written (and again only if the operator restarts before the first
    // stage ends): every request the restore needs must be allowed to its account.
    let answers: &[(Access, bool)] = match (&o.access, o.dry_run || o.status.stage.is_none()) {
        (Some(answers), _) => answers,
        (None, true) => return Step::Read(Fact::Access),
        (None, false) => &[],
    };
    let refusal = authorization_refusal(account, answers);
    let blocked = namespace_problem(targets);
    if o.dry_run {
        let refused = refusal.map(|(_, message)| format!("refused: {message}"));
        let blocked = blocked.map(|(_, message)| format!("blocked: {message}"));
        return Step::DryRun { notes: refused.into_iter().chain(blocked).collect() };
    }
    if let Some(problem) = blocked {
        return wait_for_namespace(o, limit, problem);
    }
    if let Some(refusal) = refusal {
        return failed(refusal);
    }
    Step::RunStage(o.status.stage.as_deref().and_then(stage_by_name).unwrap_or(Stage::ConfigAndSecrets))
}

fn wait_for_namespace(o: &Observed, limit: Duration, (reason, message): Refusal) -> Step {
    let announce = !o.status.conditions.iter().any(|c| c.type_ == crate::api::conditions::READY && c.reason == reason);
    // Look again in 30 s, or when the timeout runs out if that is sooner.
    let left = limit.saturating_sub(elapsed(o.created, o.now));
    Step::WaitForNamespace {
        phase: if o.status.stage.is_some() { phase::IN_PROGRESS } else { phase::PENDING },
        reason,
        message,
        announce,
        recheck: NAMESPACE_RECHECK.min(left + Duration::from_secs(1)),
    }
}

/// The status and Ready message of a finished dry run: `notes` first, then what each object
/// would do.
pub fn dry_run(status: &mut RestoreStatus, backup: String, notes: Vec<String>, listed: Vec<String>) -> String {
    status.backup_name = Some(backup);
    status.planned = notes.into_iter().chain(listed).collect();
    format!("dry run: {} objects would be restored", status.planned.len())
}

/// The stage named `name` in the status.
pub fn stage_by_name(name: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| format!("{s:?}") == name)
}

/// Time since the Restore was created.
pub fn elapsed(created: Option<jiff::Timestamp>, now: jiff::Timestamp) -> Duration {
    created.map_or(Duration::ZERO, |c| Duration::try_from(now.duration_since(c)).unwrap_or(Duration::ZERO))
}

/// Seconds an agent Job may run: what is left of the Restore's timeout (at least a minute, so
/// a Job created just before the end still gets to start), and never more than a Job's own
/// limit.
pub fn job_deadline_seconds(limit: Duration, created: Option<jiff::Timestamp>, now: jiff::Timestamp) -> i64 {
    let left = limit.saturating_sub(elapsed(created, now)).as_secs();
    i64::try_from(left).unwrap_or(i64::MAX).clamp(60, JOB_DEADLINE_SECONDS)
}

/// How a stage ended this time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageOutcome {
    Done,
    /// Still waiting, with what for.
    Wait(String),
    /// A wait passed its deadline: the restore ends Failed with this reason and message.
    Fail(&'static str, String),
}

/// What a stage's outcome leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterStage {
    /// Record the progress (InProgress, with the message) and look again after [`POLL`].
    Wait(String),
    /// Record the next stage, started now, and run it after [`NEXT_STAGE`].
    Next(Stage),
    Finish {
        phase: &'static str,
        reason: &'static str,
        message: String,
    },
}

/// What follows `outcome` of `stage`: the next stage, or the end of the restore (Completed,
/// or PartiallyFailed when an object or Job failed).
pub fn after_stage(stage: Stage, outcome: StageOutcome, status: &RestoreStatus) -> AfterStage {
    match outcome {
        StageOutcome::Wait(message) => AfterStage::Wait(message),
        StageOutcome::Fail(reason, message) => AfterStage::Finish { phase: phase::FAILED, reason, message },
        StageOutcome::Done => match Stage::ALL.iter().skip_while(|s| **s != stage).nth(1) {
            Some(next) => AfterStage::Next(*next),
            None => {
                let (phase, reason) = if status.errors.is_empty() {
                    (phase::COMPLETED, "Completed")
                } else {
                    (phase::PARTIALLY_FAILED, "PartiallyFailed")
                };
                let message = format!(
                    "created {}, updated {}, skipped {}; {} errors",
                    status.created.unwrap_or(0),
                    status.updated.unwrap_or(0),
                    status.skipped.unwrap_or(0),
                    status.errors.len()
                );
                AfterStage::Finish { phase, reason, message }
            }
        },
    }
}

/// Records that the restore is at `stage`, started `now`; returns the progress message.
pub fn enter_stage(status: &mut RestoreStatus, stage: Stage, now: jiff::Timestamp) -> String {
    status.stage = Some(format!("{stage:?}"));
    status.stage_start_time = Some(Time(now));
    format!("restoring: {stage:?}")
}

/// What a restore sees of a DatabaseInstance it waits for: its `Ready` condition (status,
/// reason, message) and whether the status is of the current generation; `None` when the
/// instance or its condition does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyFact {
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub current: bool,
}

/// Whether the DatabaseInstance `ns/name` lets the data stage go on (`None`), or what the
/// stage does while it does not: wait, or fail once [`DATABASE_READY_DEADLINE`] has passed
/// since `started` (the message says why, with the error of its create if there was one).
pub fn database_wait(
    ns: &str,
    name: &str,
    ready: Option<&ReadyFact>,
    status: &RestoreStatus,
    now: jiff::Timestamp,
) -> Option<StageOutcome> {
    if ready.is_some_and(|r| r.current && r.ready) {
        return None;
    }
    let started = status.stage_start_time.as_ref().map(|t| t.0);
    if deadline_passed(started, now, DATABASE_READY_DEADLINE) {
        let described = format!("DatabaseInstance {ns}/{name}: ");
        let create_error = status.errors.iter().find_map(|e| e.strip_prefix(described.as_str()));
        let ready = ready.map(|r| (r.reason.as_str(), r.message.as_str()));
        return Some(StageOutcome::Fail(DATABASE_NOT_READY, database_not_ready_message(ns, name, ready, create_error)));
    }
    Some(StageOutcome::Wait(format!("waiting for DatabaseInstance {ns}/{name} to be Ready")))
}

/// The agent task that restores a snapshot of `kind` from `source` in `stage`, if that stage
/// restores it: database dumps in [`Stage::DatabaseData`], volume files in
/// [`Stage::VolumeData`].
pub fn data_task(stage: Stage, kind: &str, source: &str, snapshot: &str) -> Option<AgentTask> {
    let (instance, snapshot) = (source.to_string(), snapshot.to_string());
    match (stage, kind) {
        (Stage::DatabaseData, "postgres") => Some(AgentTask::RestorePostgres { instance, snapshot }),
        (Stage::DatabaseData, "rabbitmq") => Some(AgentTask::RestoreRabbitmq { instance, snapshot }),
        (Stage::VolumeData, "dir") => Some(AgentTask::RestoreVolume { pvc: instance, snapshot }),
        _ => None,
    }
}

/// Records an error once (a failed Job is seen on every poll).
pub fn record_error(status: &mut RestoreStatus, message: String) {
    if !status.errors.contains(&message) {
        status.errors.push(message);
    }
}

/// How a data stage stands once each Job was looked at: done when none is `waiting`, failed
/// once [`JOBS_DEADLINE`] has passed since the stage started, else waiting.
pub fn jobs_outcome(waiting: &[String], ns: &str, status: &RestoreStatus, now: jiff::Timestamp) -> StageOutcome {
    if waiting.is_empty() {
        StageOutcome::Done
    } else if deadline_passed(status.stage_start_time.as_ref().map(|t| t.0), now, JOBS_DEADLINE) {
        StageOutcome::Fail(JOBS_TIMED_OUT, jobs_timed_out_message(waiting, ns, JOBS_DEADLINE))
    } else {
        StageOutcome::Wait(format!("waiting for agent Jobs {}", waiting.join(", ")))
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

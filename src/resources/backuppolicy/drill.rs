//! Restore drills (`spec.verify`), without a cluster: when a drill is due and which Backup it
//! restores, what a finished drill records (`status.lastVerifiedRestore`, the
//! `RestoreVerified` condition), how long a failed drill's namespace is kept, and what a drill
//! restores (data only) and checks ([`compare_counts`]).
//!
//! A drill runs outside the reconcile (it restores, waits and reads every pack): the
//! controller starts it when [`decide`] says so and hands its outcome back in. `status.drill`
//! remembers a drill under way, so that one interrupted by an operator restart is recorded as
//! failed rather than forgotten.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{BackupSeen, Refusal, newest_completed};
use super::schedule::STARTING_DEADLINE;
use super::validate::{ValidPolicy, ValidVerify};
use crate::api::backuppolicy::{BackupPolicyStatus, DrillStatus, VerifiedRestore};
use crate::api::conditions::DesiredCondition;

/// Condition type of the last drill's result.
pub const RESTORE_VERIFIED: &str = "RestoreVerified";
/// `status.drill.phase` of a drill under way.
pub const RUNNING: &str = "Running";
/// `status.drill.phase` of a failed drill whose namespace is kept for inspection.
pub const KEPT: &str = "Kept";
pub const PASSED: &str = "Passed";
pub const FAILED: &str = "Failed";
/// How often a running drill is looked at.
pub const DRILL_POLL: Duration = Duration::from_secs(5);
/// What a drill restores: data and what the data needs, never workloads (an app or a CronJob
/// started in the drill namespace could send mail or consume real queues).
pub const DRILL_KINDS: [&str; 3] = ["DatabaseInstance", "Secret", "PersistentVolumeClaim"];

/// The policy's drill task, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrillTask {
    Idle,
    Running,
    /// Finished since the last reconcile (handed out once).
    Finished(DrillOutcome),
}

/// How a finished drill went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillOutcome {
    /// `Ok` with what was checked, or the reason and the message naming the failed check.
    pub result: Result<String, Refusal>,
}

impl From<DrillOutcome> for DrillTask {
    fn from(outcome: DrillOutcome) -> Self {
        Self::Finished(outcome)
    }
}

/// What a reconcile observed for the drills of a valid policy.
#[derive(Clone, Debug)]
pub struct DrillObserved<'a> {
    pub policy: &'a ValidPolicy,
    pub status: &'a BackupPolicyStatus,
    pub created: Timestamp,
    pub now: Timestamp,
    pub backups: &'a [BackupSeen],
    pub task: DrillTask,
}

/// A drill to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartDrill {
    pub backup: String,
    /// Name of the child Restore (in the policy's namespace).
    pub restore: String,
    pub namespace: String,
    pub timeout: Duration,
}

/// What one reconcile does about drills.
#[derive(Clone, Debug, PartialEq)]
pub struct DrillDecision {
    pub start: Option<StartDrill>,
    /// Empty the drill namespace now: a failed drill's keep time is over.
    pub release: bool,
    pub drill: Option<DrillStatus>,
    pub last: Option<VerifiedRestore>,
    /// `RestoreVerified`, when `spec.verify` is set.
    pub condition: Option<DesiredCondition>,
    pub requeue: Option<Duration>,
}

/// Decides the drills of one reconcile:
/// - a finished drill is recorded; a failed one's namespace is kept for `keepFailedFor`, and
///   no drill starts while it is kept (it would empty it);
/// - a drill recorded as running with no task was interrupted (an operator restart): failed;
/// - a drill starts when its schedule fired since the last drill (or the policy's creation),
///   at most [`STARTING_DEADLINE`] ago, and a Completed Backup exists; it restores the newest.
pub fn decide(o: &DrillObserved) -> DrillDecision {
    let mut d = DrillDecision {
        start: None,
        release: false,
        drill: o.status.drill.clone(),
        last: o.status.last_verified_restore.clone(),
        condition: None,
        requeue: None,
    };
    let Some(verify) = &o.policy.verify else {
        // Drills switched off: a kept namespace is released, nothing else is reported.
        d.release = d.drill.is_some();
        d.drill = None;
        return d;
    };
    match (&o.task, d.drill.clone()) {
        (DrillTask::Running, _) => d.requeue = Some(DRILL_POLL),
        (DrillTask::Finished(outcome), Some(drill)) => finish(&mut d, drill, outcome.result.clone(), o.now),
        (DrillTask::Idle, Some(drill)) if drill.phase == RUNNING => {
            let interrupted = (
                "DrillInterrupted",
                "the operator restarted during the drill; the next one starts at its schedule".to_string(),
            );
            finish(&mut d, drill, Err(interrupted), o.now);
        }
        _ => {}
    }
    if let Some(drill) = &d.drill
        && drill.phase == KEPT
    {
        let finished = d.last.as_ref().map_or(drill.started_at.0, |l| l.finished_at.0);
        let until = finished.checked_add(verify.keep_failed_for).unwrap_or(Timestamp::MAX);
        if o.now >= until {
            d.release = true;
            d.drill = None;
        } else {
            d.requeue = Some(until_(o.now, until));
        }
    }
    if d.drill.is_none() && o.task == DrillTask::Idle {
        let baseline = d.last.as_ref().map_or(o.created, |l| l.started_at.0.max(o.created));
        let due = previous_run(verify, o.policy, o.now)
            .filter(|at| *at > baseline && o.now.duration_since(*at) <= STARTING_DEADLINE);
        let newest = newest_completed(o.backups);
        if let (Some(_), Some(backup)) = (due, newest) {
            let policy = kube::ResourceExt::name_any(&o.policy.policy);
            let restore = super::backup_name(&format!("{policy}-drill"), o.now);
            d.drill = Some(DrillStatus {
                backup: backup.name.clone(),
                restore: restore.clone(),
                started_at: Time(o.now),
                phase: RUNNING.into(),
            });
            d.start = Some(StartDrill {
                backup: backup.name.clone(),
                restore,
                namespace: verify.namespace.clone(),
                timeout: verify.timeout,
            });
            d.requeue = Some(DRILL_POLL);
        }
    }
    if d.requeue.is_none()
        && let Some(next) = next_run(verify, o.policy, o.now)
    {
        d.requeue = Some(until_(o.now, next) + Duration::from_secs(1));
    }
    d.condition = Some(condition(&d, verify));
    d
}

fn finish(d: &mut DrillDecision, drill: DrillStatus, result: Result<String, Refusal>, now: Timestamp) {
    let duration = now.duration_since(drill.started_at.0).as_secs().max(0);
    let (result, message, kept) = match result {
        Ok(summary) => (PASSED, summary, false),
        Err((reason, message)) => (FAILED, format!("{reason}: {message}"), true),
    };
    d.last = Some(VerifiedRestore {
        backup: drill.backup.clone(),
        started_at: drill.started_at.clone(),
        finished_at: Time(now),
        duration_seconds: duration,
        result: result.into(),
        message,
    });
    d.drill = kept.then(|| DrillStatus { phase: KEPT.into(), ..drill });
}

fn condition(d: &DrillDecision, verify: &ValidVerify) -> DesiredCondition {
    let running = d.drill.as_ref().filter(|r| r.phase == RUNNING);
    match (&d.last, running) {
        (Some(last), _) if last.result == PASSED => DesiredCondition::new(
            RESTORE_VERIFIED,
            true,
            "DrillPassed",
            format!("backup {} restored into {} and checked: {}", last.backup, verify.namespace, last.message),
        ),
        (Some(last), _) => {
            let kept = if d.drill.as_ref().is_some_and(|r| r.phase == KEPT) {
                format!(
                    "; namespace {} is kept as it is for inspection (spec.verify.keepFailedFor), and no drill runs until then",
                    verify.namespace
                )
            } else {
                String::new()
            };
            DesiredCondition::new(
                RESTORE_VERIFIED,
                false,
                "DrillFailed",
                format!("the drill of backup {} failed: {}{kept}", last.backup, last.message),
            )
        }
        (None, Some(r)) => DesiredCondition::new(
            RESTORE_VERIFIED,
            false,
            "DrillRunning",
            format!("the first drill is restoring backup {} into {}", r.backup, verify.namespace),
        ),
        (None, None) => DesiredCondition::new(
            RESTORE_VERIFIED,
            false,
            "NotYetVerified",
            "no restore drill has run yet; the first runs at spec.verify.schedule once a Backup has completed",
        ),
    }
}

fn until_(now: Timestamp, then: Timestamp) -> Duration {
    Duration::from_secs(then.duration_since(now).as_secs().max(0) as u64)
}

fn previous_run(verify: &ValidVerify, policy: &ValidPolicy, at: Timestamp) -> Option<Timestamp> {
    let zoned = at.to_zoned(policy.time_zone.clone());
    verify.schedule.find_previous_occurrence(&zoned, true).ok().map(|z| z.timestamp())
}

fn next_run(verify: &ValidVerify, policy: &ValidPolicy, at: Timestamp) -> Option<Timestamp> {
    let zoned = at.to_zoned(policy.time_zone.clone());
    verify.schedule.find_next_occurrence(&zoned, false).ok().map(|z| z.timestamp())
}

/// Compares what a backup recorded (`what` → count) with what the drill found after the
/// restore, in one check named `check` of `object`. Every difference is named with both
/// numbers; what the restore has beyond the record is not an error (a restored database may
/// hold objects the record skips).
pub fn compare_counts(
    check: &str,
    object: &str,
    recorded: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> Result<(), String> {
    let problems: Vec<String> = recorded
        .iter()
        .filter_map(|(what, want)| match restored.get(what) {
            None => Some(format!("{what} is missing (the backup recorded {want})")),
            Some(got) if got != want => Some(format!("{what} has {got}, the backup recorded {want}")),
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(format!("{check} of {object}: {}", problems.join(", "))) }
}

/// The named objects of a RabbitMQ definitions document, as `kind vhost/name` (vhosts and
/// users by name, permissions as `user@vhost`).
fn definition_names(definitions: &serde_json::Value) -> std::collections::BTreeSet<String> {
    let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or_default().to_string();
    let mut names = std::collections::BTreeSet::new();
    for (kind, list) in [
        ("vhost", "vhosts"),
        ("user", "users"),
        ("permission", "permissions"),
        ("queue", "queues"),
        ("exchange", "exchanges"),
        ("policy", "policies"),
    ] {
        for item in definitions.get(list).and_then(|l| l.as_array()).into_iter().flatten() {
            let name = match kind {
                "vhost" | "user" => text(item, "name"),
                "permission" => format!("{}@{}", text(item, "user"), text(item, "vhost")),
                _ => format!("{}/{}", text(item, "vhost"), text(item, "name")),
            };
            names.insert(format!("{kind} {name}"));
        }
    }
    names
}

/// Every vhost, user, permission, queue, exchange and policy the backup recorded must be in
/// the restored server's definitions; the missing ones are named, with the totals.
pub fn compare_definitions(
    object: &str,
    recorded: &serde_json::Value,
    restored: &serde_json::Value,
) -> Result<usize, String> {
    let (want, have) = (definition_names(recorded), definition_names(restored));
    let missing: Vec<&String> = want.difference(&have).collect();
    if missing.is_empty() {
        return Ok(want.len());
    }
    let listed: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
    Err(format!(
        "RabbitMQ definitions of {object}: {} of the {} recorded are missing: {}",
        missing.len(),
        want.len(),
        listed.join(", ")
    ))
}

#[cfg(test)]
#[path = "drill_tests.rs"]
mod tests;

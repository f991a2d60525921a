//! The BackupPolicy planner, without a cluster.

use super::*;
use crate::resources::backuppolicy::validate;

fn valid(extra: &str) -> ValidPolicy {
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: nightly, namespace: shop}}\nspec:\n  schedule: \"0 3 * * *\"\n  storage: {{bucket: backups, encryptionKeySecret: key}}\n{extra}"
    );
    validate(&serde_saphyr::from_str(&yaml).unwrap()).unwrap()
}

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn backup(name: &str, phase: &str, completion: Option<&str>) -> BackupSeen {
    BackupSeen { name: name.into(), phase: Some(phase.into()), completion: completion.map(at) }
}

fn observed<'a>(policy: &'a ValidPolicy, status: &'a BackupPolicyStatus, backups: &'a [BackupSeen]) -> Observed<'a> {
    Observed {
        policy,
        status,
        created: at("2026-01-01T00:00:00Z"),
        now: at("2026-01-02T03:00:30Z"),
        backups,
        sync: None,
        run: RunState::Idle,
    }
}

#[test]
fn deleted_invalid_or_accountless_policies_do_not_converge() {
    let gate = |deleting, invalid: Option<&str>, account| Gate { deleting, invalid: invalid.map(Into::into), account };
    assert_eq!(next(&gate(true, Some("bad"), None)), Step::Idle);
    assert_eq!(next(&gate(false, Some("bad"), None)), Step::Invalid("bad".into()));
    assert_eq!(next(&gate(false, None, None)), Step::ReadAccount);
    let missing = ("ServiceAccountNotFound", "create it".to_string());
    assert_eq!(next(&gate(false, None, Some(Err(missing.clone())))), Step::AccountUnavailable(missing));
    assert_eq!(next(&gate(false, None, Some(Ok(())))), Step::Converge);
}

#[test]
fn a_due_schedule_fires_unless_a_backup_runs_or_the_policy_is_suspended() {
    let policy = valid("");
    let status = BackupPolicyStatus::default();
    let c = converge(&observed(&policy, &status, &[]));
    assert_eq!(c.fire.as_deref(), Some("nightly-20260102030000"));
    assert_eq!(c.status.last_schedule_time, Some(Time(at("2026-01-02T03:00:00Z"))));
    assert_eq!(c.status.next_schedule_time, Some(Time(at("2026-01-03T03:00:00Z"))));
    assert_eq!(c.conditions[0].reason, "Scheduled");

    let running = [backup("nightly-20260101030000", phase::IN_PROGRESS, None)];
    let c = converge(&observed(&policy, &status, &running));
    assert_eq!((c.fire, c.status.last_schedule_time), (None, None));

    let suspended = valid("  suspend: true\n");
    let c = converge(&observed(&suspended, &status, &[]));
    assert_eq!((c.fire, c.status.next_schedule_time), (None, None));
    assert_eq!(c.conditions[0].reason, "Suspended");
    assert_eq!(c.requeue, SYNC_INTERVAL);
}

#[test]
fn the_newest_success_is_recorded_and_drives_freshness() {
    let policy = valid("");
    let status =
        BackupPolicyStatus { last_schedule_time: Some(Time(at("2026-01-02T03:00:00Z"))), ..Default::default() };
    let backups = [
        backup("a", phase::COMPLETED, Some("2026-01-01T03:10:00Z")),
        backup("b", phase::COMPLETED, Some("2026-01-02T03:10:00Z")),
        backup("c", phase::FAILED, Some("2026-01-02T04:10:00Z")),
    ];
    let c = converge(&Observed { now: at("2026-01-02T05:00:00Z"), ..observed(&policy, &status, &backups) });
    assert_eq!(c.status.last_successful_backup.as_deref(), Some("b"));
    assert_eq!(c.last_success, Some(at("2026-01-02T03:10:00Z")));
    assert!(c.fresh.fresh);
    assert_eq!((c.conditions[1].type_, c.conditions[1].status), (BACKUP_FRESH, true));
    // Woken for the next fire time (03:00 tomorrow, one second late).
    assert_eq!(c.requeue, SYNC_INTERVAL);
    let c = converge(&Observed { now: at("2026-01-03T02:59:00Z"), ..observed(&policy, &status, &backups) });
    assert_eq!(c.requeue, Duration::from_secs(61));
}

#[test]
fn a_bucket_that_cannot_be_opened_makes_the_policy_not_ready() {
    let policy = valid("");
    let status = BackupPolicyStatus::default();
    let sync = Some(Err(("StorageUnreachable", "no answer".to_string())));
    let c = converge(&Observed { sync, ..observed(&policy, &status, &[]) });
    assert_eq!((c.conditions[0].status, c.conditions[0].reason.as_str()), (false, "StorageUnreachable"));
    let c = converge(&Observed { sync: Some(Ok(())), ..observed(&policy, &status, &[]) });
    assert!(c.conditions[0].status);
}

#[test]
fn retention_starts_a_run_that_is_collected_when_it_ends() {
    let policy = valid("  retention: {keepLast: 1}\n");
    let status =
        BackupPolicyStatus { last_schedule_time: Some(Time(at("2026-01-02T03:00:00Z"))), ..Default::default() };
    let backups = [
        backup("old", phase::COMPLETED, Some("2026-01-01T03:10:00Z")),
        backup("new", phase::COMPLETED, Some("2026-01-02T03:10:00Z")),
    ];
    let c = converge(&observed(&policy, &status, &backups));
    let now = at("2026-01-02T03:00:30Z");
    let started = RunStarted { at: now, plan: "retention: removing 1 backups".into() };
    let start = StartRun { victims: vec!["old".into()], newest: Some("new".into()), started: started.clone() };
    assert_eq!(c.start_run, Some(start));
    let m = c.status.maintenance.clone().unwrap();
    assert_eq!((m.phase.as_str(), m.message.as_deref()), (MAINTENANCE_RUNNING, Some("retention: removing 1 backups")));
    assert_eq!(m.start_time, Some(Time(now)));
    assert_eq!(c.requeue, MAINTENANCE_POLL);

    // While it runs, nothing else starts, and the policy looks again soon.
    let running = c.status.clone();
    let c = converge(&Observed { run: RunState::Running(started.clone()), ..observed(&policy, &running, &backups) });
    assert_eq!((c.start_run, c.requeue), (None, MAINTENANCE_POLL));
    assert_eq!(c.status.maintenance, running.maintenance);

    // A failed run makes the policy not Ready and is retried five minutes later.
    let failed =
        RunResult { replicated: None, error: Some(("RetentionFailed", "boom".into())), summary: String::new() };
    let c = converge(&Observed {
        run: RunState::Finished(started, failed),
        ..observed(&policy, &BackupPolicyStatus::default(), &backups)
    });
    let m = c.status.maintenance.clone().unwrap();
    assert_eq!((m.phase.as_str(), m.reason.as_deref()), (MAINTENANCE_FAILED, Some("RetentionFailed")));
    assert_eq!(m.start_time, running.maintenance.unwrap().start_time);
    assert_eq!((c.conditions[0].status, c.conditions[0].reason.as_str()), (false, "RetentionFailed"));
    assert_eq!(c.start_run, None);
    let after = c.status.clone();
    let soon = converge(&Observed { now: at("2026-01-02T03:05:29Z"), ..observed(&policy, &after, &backups) });
    assert_eq!(soon.start_run, None);
    let later = converge(&Observed { now: at("2026-01-02T03:05:30Z"), ..observed(&policy, &after, &backups) });
    assert!(later.start_run.is_some());
}

#[test]
fn offsite_copies_the_newest_success_and_retention_keeps_what_is_not_copied() {
    let policy = valid("  retention: {keepLast: 1}\n  offsite: {bucket: far, encryptionKeySecret: key}\n");
    let status =
        BackupPolicyStatus { last_schedule_time: Some(Time(at("2026-01-02T03:00:00Z"))), ..Default::default() };
    let backups = [
        backup("old", phase::COMPLETED, Some("2026-01-01T03:10:00Z")),
        backup("new", phase::COMPLETED, Some("2026-01-02T03:10:00Z")),
    ];
    // Nothing is offsite yet: nothing is removed, the newest is copied.
    let c = converge(&observed(&policy, &status, &backups));
    let started = RunStarted { at: at("2026-01-02T03:00:30Z"), plan: "replicating to spec.offsite".into() };
    assert_eq!(c.start_run, Some(StartRun { victims: vec![], newest: Some("new".into()), started: started.clone() }));
    assert_eq!(c.status.maintenance.unwrap().message.as_deref(), Some("replicating to spec.offsite"));

    let done = RunResult { replicated: Some("new".into()), error: None, summary: "copied 3".into() };
    let c = converge(&Observed { run: RunState::Finished(started, done), ..observed(&policy, &status, &backups) });
    assert_eq!(c.status.last_replicated_backup.as_deref(), Some("new"));
    assert_eq!(c.start_run, None);
    // The next reconcile may remove the old one, now that a newer one is offsite.
    let copied = c.status.clone();
    let c = converge(&observed(&policy, &copied, &backups));
    assert_eq!(c.start_run.map(|r| r.victims), Some(vec!["old".to_string()]));
    let m = c.status.maintenance.unwrap();
    assert_eq!(m.message.as_deref(), Some("retention: removing 1 backups, then replicating to spec.offsite"));
}

/// A reconcile may see the policy as it was before its own last status write (the cache lags
/// the API server). The phase of a run that goes must still be Running, or a later write
/// would show the previous run's outcome for as long as this one goes.
#[test]
fn a_running_run_is_reported_from_its_task_whatever_status_was_observed() {
    let policy = valid("  offsite: {bucket: far, encryptionKeySecret: key}\n");
    let backups = [backup("second", phase::COMPLETED, Some("2026-01-02T03:10:00Z"))];
    let earlier = MaintenanceStatus {
        phase: MAINTENANCE_SUCCEEDED.into(),
        start_time: Some(Time(at("2026-01-01T03:00:00Z"))),
        completion_time: Some(Time(at("2026-01-01T03:01:00Z"))),
        reason: None,
        message: Some("replicated to spec.offsite: 3 objects".into()),
    };
    let stale = BackupPolicyStatus {
        last_schedule_time: Some(Time(at("2026-01-02T03:00:00Z"))),
        maintenance: Some(earlier),
        ..Default::default()
    };
    let started = RunStarted { at: at("2026-01-02T03:10:05Z"), plan: "replicating to spec.offsite".into() };
    let c = converge(&Observed { run: RunState::Running(started), ..observed(&policy, &stale, &backups) });
    let m = c.status.maintenance.unwrap();
    assert_eq!((m.phase.as_str(), m.message.as_deref()), (MAINTENANCE_RUNNING, Some("replicating to spec.offsite")));
    assert_eq!((m.start_time, m.completion_time), (Some(Time(at("2026-01-02T03:10:05Z"))), None));
    assert_eq!(c.status.last_successful_backup.as_deref(), Some("second"));
    assert_eq!((c.start_run, c.requeue), (None, MAINTENANCE_POLL));
}

/// Two Backups that complete within one second: the newest is decided by name, whatever the
/// order the cache lists them in (it was the last one listed).
#[test]
fn a_tie_of_completion_times_is_decided_by_name_not_by_listing_order() {
    let policy = valid("");
    let status = BackupPolicyStatus::default();
    let second = backup("second", phase::COMPLETED, Some("2026-01-02T03:10:00Z"));
    let third = backup("third", phase::COMPLETED, Some("2026-01-02T03:10:00Z"));
    for listed in [[second.clone(), third.clone()], [third, second]] {
        let c = converge(&observed(&policy, &status, &listed));
        assert_eq!(c.status.last_successful_backup.as_deref(), Some("third"), "{listed:?}");
    }
}

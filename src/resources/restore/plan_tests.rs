//! The Restore planner, step by step, without a cluster.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::*;
use crate::resources::restore::waits::{DEFAULT_TIMEOUT, NAMESPACE_NOT_FOUND};

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

const CREATED: &str = "2026-01-01T00:00:00Z";

/// A Restore created at [`CREATED`], observed a minute later, with every fact read and fine.
fn ready(status: &RestoreStatus) -> Observed<'_> {
    Observed {
        deleting: false,
        status,
        timeout: Ok(DEFAULT_TIMEOUT),
        created: Some(at(CREATED)),
        now: at("2026-01-01T00:01:00Z"),
        dry_run: false,
        account: Some(Ok("shop/restorer".into())),
        first_target: Some(vec![]),
        backup: Some(Ok(())),
        targets: Some(vec![("other".into(), NamespaceState::Active)]),
        access: Some(vec![]),
    }
}

fn access(verb: &'static str, allowed: bool) -> (Access, bool) {
    let access = Access {
        verb,
        group: "apps".into(),
        resource: "deployments".into(),
        namespace: "kube-system".into(),
        name: None,
    };
    (access, allowed)
}

#[test]
fn facts_are_read_in_order_and_only_when_needed() {
    let status = RestoreStatus::default();
    let all = ready(&status);
    let without = |f: fn(&mut Observed)| {
        let mut o = all.clone();
        f(&mut o);
        next(&o)
    };
    assert_eq!(without(|o| o.account = None), Step::Read(Fact::Account));
    assert_eq!(without(|o| o.first_target = None), Step::Read(Fact::FirstTarget));
    assert_eq!(without(|o| o.backup = None), Step::Read(Fact::Backup));
    assert_eq!(without(|o| o.targets = None), Step::Read(Fact::Targets));
    assert_eq!(without(|o| o.access = None), Step::Read(Fact::Access));
    // A dry run writes nothing: it does not wait for its Backup's namespace first.
    assert_eq!(
        without(|o| {
            o.dry_run = true;
            o.first_target = None;
            o.backup = None
        }),
        Step::Read(Fact::Backup)
    );
    // Once a stage has run, the access was checked before anything was written.
    let running = RestoreStatus { stage: Some("Volumes".into()), ..RestoreStatus::default() };
    let o = Observed { access: None, ..ready(&running) };
    assert_eq!(next(&o), Step::RunStage(Stage::Volumes));
    assert_eq!(next(&all), Step::RunStage(Stage::ConfigAndSecrets));
}

#[test]
fn finished_or_deleted_restores_do_nothing() {
    for p in [phase::COMPLETED, phase::PARTIALLY_FAILED, phase::FAILED] {
        let status = RestoreStatus { phase: Some(p.into()), ..RestoreStatus::default() };
        assert_eq!(next(&Observed { account: None, ..ready(&status) }), Step::Idle);
    }
    let status = RestoreStatus::default();
    assert_eq!(next(&Observed { deleting: true, ..ready(&status) }), Step::Idle);
}

#[test]
fn an_invalid_spec_a_timeout_an_account_or_a_backup_problem_fails_the_restore() {
    let status = RestoreStatus::default();
    let fails = |o: Observed| match next(&o) {
        Step::Finish { phase, reason, message } if phase == phase::FAILED => (reason, message),
        other => panic!("expected a failure, got {other:?}"),
    };
    let (reason, _) = fails(Observed { timeout: Err("spec.timeout: bad".into()), ..ready(&status) });
    assert_eq!(reason, "InvalidSpec");
    let late = Observed { now: at("2026-01-01T01:00:01Z"), account: None, ..ready(&status) };
    let (reason, message) = fails(late);
    assert_eq!(reason, TIMED_OUT);
    assert!(message.contains("60 minutes"), "{message}");
    let refused = Some(Err(("ServiceAccountNotFound", "no such account".to_string())));
    assert_eq!(fails(Observed { account: refused, ..ready(&status) }).0, "ServiceAccountNotFound");
    let unreadable = Some(Err(("BackupUnreadable", "bad".to_string())));
    assert_eq!(fails(Observed { backup: unreadable, ..ready(&status) }).0, "BackupUnreadable");
    let (reason, message) = fails(Observed { access: Some(vec![access("create", false)]), ..ready(&status) });
    assert_eq!(reason, "NotAuthorized");
    assert!(message.starts_with("shop/restorer may not create deployments.apps"), "{message}");
    assert_eq!(
        next(&Observed { access: Some(vec![access("create", true)]), ..ready(&status) }),
        Step::RunStage(Stage::ConfigAndSecrets)
    );
}

#[test]
fn a_missing_namespace_waits_announced_once_and_rechecked_before_the_timeout() {
    let status = RestoreStatus::default();
    let missing = Some(vec![("shop".to_string(), NamespaceState::Missing)]);
    let Step::WaitForNamespace { phase, reason, announce, recheck, .. } =
        next(&Observed { first_target: missing.clone(), backup: None, ..ready(&status) })
    else {
        panic!("expected a wait")
    };
    assert_eq!((phase, reason, announce, recheck), (phase::PENDING, NAMESPACE_NOT_FOUND, true, NAMESPACE_RECHECK));
    // Announced already, in a restore that has started, ten seconds before its timeout.
    let reported = RestoreStatus {
        stage: Some("Apps".into()),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: NAMESPACE_NOT_FOUND.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(at(CREATED)),
        }],
        ..RestoreStatus::default()
    };
    let late = Observed { targets: missing, now: at("2026-01-01T00:59:50Z"), ..ready(&reported) };
    let Step::WaitForNamespace { phase, announce, recheck, .. } = next(&late) else { panic!("expected a wait") };
    assert_eq!((phase, announce, recheck), (phase::IN_PROGRESS, false, Duration::from_secs(11)));
}

#[test]
fn a_dry_run_lists_the_refusal_then_the_blocked_namespace() {
    let status = RestoreStatus::default();
    let o = Observed {
        dry_run: true,
        targets: Some(vec![("gone".into(), NamespaceState::Terminating)]),
        access: Some(vec![access("create", false)]),
        ..ready(&status)
    };
    let Step::DryRun { notes } = next(&o) else { panic!("expected a dry run") };
    assert_eq!(notes.len(), 2);
    assert!(notes[0].starts_with("refused: shop/restorer may not"), "{}", notes[0]);
    assert!(notes[1].starts_with("blocked: target namespace \"gone\" is being deleted"), "{}", notes[1]);
    let mut s = RestoreStatus::default();
    let message = dry_run(&mut s, "nightly".into(), notes, vec!["create Secret shop/a".into()]);
    assert_eq!(message, "dry run: 3 objects would be restored");
    assert_eq!((s.backup_name.as_deref(), s.planned[2].as_str()), (Some("nightly"), "create Secret shop/a"));
}

#[test]
fn stages_follow_each_other_and_the_last_one_completes() {
    let mut status = RestoreStatus::default();
    assert_eq!(after_stage(Stage::Databases, StageOutcome::Done, &status), AfterStage::Next(Stage::DatabaseData));
    assert_eq!(after_stage(Stage::Volumes, StageOutcome::Wait("w".into()), &status), AfterStage::Wait("w".into()));
    assert_eq!(
        after_stage(Stage::Volumes, StageOutcome::Fail(JOBS_TIMED_OUT, "m".into()), &status),
        AfterStage::Finish { phase: phase::FAILED, reason: JOBS_TIMED_OUT, message: "m".into() }
    );
    status.created = Some(3);
    let done = after_stage(Stage::Apps, StageOutcome::Done, &status);
    let message = "created 3, updated 0, skipped 0; 0 errors".to_string();
    assert_eq!(done, AfterStage::Finish { phase: phase::COMPLETED, reason: "Completed", message });
    record_error(&mut status, "Job x failed".into());
    record_error(&mut status, "Job x failed".into());
    assert_eq!(status.errors.len(), 1);
    let AfterStage::Finish { phase, .. } = after_stage(Stage::Apps, StageOutcome::Done, &status) else { panic!() };
    assert_eq!(phase, phase::PARTIALLY_FAILED);
    let message = enter_stage(&mut status, Stage::VolumeData, at(CREATED));
    assert_eq!((message.as_str(), status.stage.as_deref()), ("restoring: VolumeData", Some("VolumeData")));
    assert_eq!(stage_by_name("VolumeData"), Some(Stage::VolumeData));
    assert_eq!(stage_by_name("Nope"), None);
}

#[test]
fn a_database_is_waited_for_until_its_deadline() {
    let mut status = RestoreStatus { stage_start_time: Some(Time(at(CREATED))), ..RestoreStatus::default() };
    let fact = |ready, current| ReadyFact { ready, reason: "Provisioning".into(), message: "m".into(), current };
    let soon = at("2026-01-01T00:10:00Z");
    assert_eq!(database_wait("shop", "db", Some(&fact(true, true)), &status, soon), None);
    let stale = database_wait("shop", "db", Some(&fact(true, false)), &status, soon);
    assert_eq!(stale, Some(StageOutcome::Wait("waiting for DatabaseInstance shop/db to be Ready".into())));
    let late = at("2026-01-01T00:30:01Z");
    let Some(StageOutcome::Fail(reason, message)) =
        database_wait("shop", "db", Some(&fact(false, true)), &status, late)
    else {
        panic!("expected a failure")
    };
    assert_eq!(reason, DATABASE_NOT_READY);
    assert!(message.contains("Provisioning: m"), "{message}");
    status.errors.push("DatabaseInstance shop/db: forbidden".into());
    let Some(StageOutcome::Fail(_, message)) = database_wait("shop", "db", None, &status, late) else { panic!() };
    assert!(message.contains("it does not exist: forbidden"), "{message}");
}

#[test]
fn data_stages_restore_their_own_kinds_and_wait_for_their_jobs() {
    assert!(matches!(data_task(Stage::DatabaseData, "postgres", "db", "s"), Some(AgentTask::RestorePostgres { .. })));
    assert!(matches!(data_task(Stage::DatabaseData, "rabbitmq", "mq", "s"), Some(AgentTask::RestoreRabbitmq { .. })));
    assert_eq!(data_task(Stage::DatabaseData, "dir", "data", "s"), None);
    assert_eq!(
        data_task(Stage::VolumeData, "dir", "data", "s"),
        Some(AgentTask::RestoreVolume { pvc: "data".into(), snapshot: "s".into() })
    );
    assert_eq!(data_task(Stage::VolumeData, "kubernetes", "x", "s"), None);

    let status = RestoreStatus { stage_start_time: Some(Time(at(CREATED))), ..RestoreStatus::default() };
    assert_eq!(jobs_outcome(&[], "shop", &status, at(CREATED)), StageOutcome::Done);
    let waiting = ["r-1".to_string()];
    assert_eq!(
        jobs_outcome(&waiting, "shop", &status, at("2026-01-01T06:00:00Z")),
        StageOutcome::Wait("waiting for agent Jobs r-1".into())
    );
    let late = jobs_outcome(&waiting, "shop", &status, at("2026-01-01T07:00:01Z"));
    assert!(matches!(late, StageOutcome::Fail(JOBS_TIMED_OUT, ref m) if m.contains("r-1")), "{late:?}");
}

#[test]
fn a_job_gets_what_is_left_of_the_timeout_within_bounds() {
    let created = Some(at(CREATED));
    assert_eq!(job_deadline_seconds(DEFAULT_TIMEOUT, created, at("2026-01-01T00:10:00Z")), 3000);
    assert_eq!(job_deadline_seconds(DEFAULT_TIMEOUT, created, at("2026-01-01T00:59:30Z")), 60);
    assert_eq!(job_deadline_seconds(Duration::from_secs(24 * 3600), created, at(CREATED)), JOB_DEADLINE_SECONDS);
    assert_eq!(elapsed(None, at(CREATED)), Duration::ZERO);
}

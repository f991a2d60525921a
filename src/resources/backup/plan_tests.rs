//! The Backup planner, phase by phase, without a cluster.

use super::*;

fn at(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn status(phase: Option<&str>, items: &[(&str, &str)]) -> BackupStatus {
    BackupStatus {
        phase: phase.map(Into::into),
        start_time: Some(Time(at("2026-01-01T00:00:00Z"))),
        items: items
            .iter()
            .map(|(name, p)| BackupItem { name: (*name).into(), phase: (*p).into(), ..BackupItem::default() })
            .collect(),
        ..BackupStatus::default()
    }
}

fn observed(status: &BackupStatus) -> Observed<'_> {
    Observed {
        deleting: false,
        delete_data: false,
        has_finalizer: false,
        synced: false,
        labelled: true,
        status,
        now: at("2026-01-01T01:00:00Z"),
    }
}

#[test]
fn a_new_backup_starts_and_an_in_progress_one_runs_its_jobs() {
    let new = BackupStatus::default();
    assert_eq!(plan(&observed(&new)), Step::Start);
    let running = status(Some(phase::IN_PROGRESS), &[]);
    assert_eq!(plan(&observed(&running)), Step::RunJobs);
    for p in [phase::COMPLETED, phase::PARTIALLY_FAILED, phase::FAILED] {
        assert_eq!(plan(&observed(&status(Some(p), &[]))), Step::Idle, "{p}");
    }
}

#[test]
fn deletion_finalizer_sync_and_label_come_before_the_phase() {
    let s = status(Some(phase::IN_PROGRESS), &[]);
    let deleting = Observed { deleting: true, delete_data: true, ..observed(&s) };
    assert_eq!(plan(&deleting), Step::Delete);
    let no_finalizer = Observed { delete_data: true, ..observed(&s) };
    assert_eq!(plan(&no_finalizer), Step::AddFinalizer);
    let with_finalizer = Observed { delete_data: true, has_finalizer: true, ..observed(&s) };
    assert_eq!(plan(&with_finalizer), Step::RunJobs);
    assert_eq!(plan(&Observed { synced: true, labelled: false, ..observed(&s) }), Step::Idle);
    assert_eq!(plan(&Observed { labelled: false, ..observed(&s) }), Step::LabelWithPolicy);
}

#[test]
fn an_in_progress_backup_fails_once_past_its_deadline() {
    let s = status(Some(phase::IN_PROGRESS), &[]);
    let just_in_time = Observed { now: at("2026-01-01T07:00:00Z"), ..observed(&s) };
    assert_eq!(plan(&just_in_time), Step::RunJobs);
    let late = Observed { now: at("2026-01-01T07:00:01Z"), ..observed(&s) };
    let Step::Fail(failure) = plan(&late) else { panic!("expected a failure") };
    assert_eq!(failure.reason, "DeadlineExceeded");
    assert!(failure.message.contains("7 hours"), "{}", failure.message);
}

#[test]
fn a_started_backup_lists_the_objects_then_databases_then_volumes() {
    let s = started(at("2026-01-01T00:00:00Z"), &["pg".into()], &["data".into()]);
    let names: Vec<_> = s.items.iter().map(|i| (i.name.as_str(), i.phase.as_str())).collect();
    assert_eq!(names, [("resources", "Pending"), ("database/pg", "Pending"), ("volume/data", "Pending")]);
    assert_eq!(s.start_time, Some(Time(at("2026-01-01T00:00:00Z"))));
    let refused = listing_refused("team", "backup", "forbidden (403)");
    assert_eq!(refused.reason, "Forbidden");
    assert!(refused.message.contains("ServiceAccount team/backup: forbidden (403)"), "{}", refused.message);
}

#[test]
fn each_pending_item_asks_for_what_its_job_needs() {
    let s = status(
        Some(phase::IN_PROGRESS),
        &[
            ("resources", "Pending"),
            ("database/a", "Pending"),
            ("database/b", "Pending"),
            ("database/c", "Pending"),
            ("volume/d", "Pending"),
            ("volume/e", "Completed"),
        ],
    );
    let jobs = BTreeMap::from([
        ("database/b".to_string(), JobState::Running),
        ("database/c".to_string(), JobState::Succeeded),
        ("volume/d".to_string(), JobState::Failed("agent Job x failed: BackoffLimitExceeded: boom".into())),
        ("volume/e".to_string(), JobState::Failed("old".into())),
    ]);
    assert_eq!(
        job_steps(&s, &jobs),
        [
            ItemStep::CreateJob { item: "database/a".into() },
            ItemStep::CollectSnapshot { item: "database/c".into() },
            ItemStep::RecordFailure {
                item: "volume/d".into(),
                message: "agent Job x failed: BackoffLimitExceeded: boom".into()
            },
        ]
    );
}

#[test]
fn a_finished_job_records_its_newest_tagged_snapshot_or_fails_the_item() {
    let mut s = status(Some(phase::IN_PROGRESS), &[("database/a", "Pending"), ("volume/v", "Pending")]);
    let snap = |id: &str, item: &str, time: &str| SnapshotFact {
        id: id.into(),
        tags: crate::resources::backup::snapshot_tags("nightly", item),
        time: at(time),
        bytes: id.len() as u64,
    };
    let snapshots = [
        snap("old", "database/a", "2026-01-01T00:00:00Z"),
        snap("newest", "database/a", "2026-01-01T00:10:00Z"),
        snap("other-backup", "volume/x", "2026-01-01T00:20:00Z"),
    ];
    record_snapshot(&mut s, "nightly", "database/a", &snapshots);
    record_snapshot(&mut s, "nightly", "volume/v", &snapshots);
    assert_eq!((s.items[0].phase.as_str(), s.items[0].snapshot.as_deref()), ("Completed", Some("newest")));
    assert_eq!(s.items[0].bytes, Some(6));
    assert_eq!(s.items[1].phase, "Failed");
    assert!(s.items[1].error.as_deref().unwrap().contains("wrote no snapshot"));
}

#[test]
fn jobs_are_done_when_no_item_but_the_objects_is_pending() {
    assert!(jobs_done(&status(None, &[("resources", "Pending"), ("database/a", "Failed")])));
    assert!(!jobs_done(&status(None, &[("resources", "Pending"), ("database/a", "Pending")])));
    let mut s = status(None, &[("resources", "Pending"), ("database/a", "Pending")]);
    fail_item(&mut s, "database/a", "database/a no longer exists".into());
    assert!(jobs_done(&s));
    assert_eq!(s.items[1].error.as_deref(), Some("database/a no longer exists"));
}

#[test]
fn completion_is_completed_partially_failed_or_failed() {
    let now = at("2026-01-01T02:00:00Z");
    let mut all = status(None, &[("resources", "Pending"), ("database/a", "Completed")]);
    all.items[1].bytes = Some(10);
    let (p, message) = complete(&mut all, vec![], Ok(("snap".into(), 5)), now);
    assert_eq!((p, message.as_str()), (phase::COMPLETED, "2 items backed up"));
    assert_eq!((all.bytes, all.completion_time.clone()), (Some(15), Some(Time(now))));
    assert_eq!(all.items[0].snapshot.as_deref(), Some("snap"));

    let mut partly = status(None, &[("resources", "Pending"), ("database/a", "Completed")]);
    let extra = vec![("resources/widgets.example.com".to_string(), "no such kind".to_string())];
    let (p, message) = complete(&mut partly, extra, Ok(("snap".into(), 5)), now);
    assert_eq!(p, phase::PARTIALLY_FAILED);
    assert_eq!(message, "resources/widgets.example.com: no such kind");
    assert_eq!(partly.items.len(), 3);

    // The objects not stored fail the Backup even when a database is safe.
    let mut core = status(None, &[("resources", "Pending"), ("database/a", "Completed")]);
    let (p, message) = complete(&mut core, vec![], Err("forbidden".into()), now);
    assert_eq!((p, message.as_str()), (phase::FAILED, "resources: forbidden"));

    let mut none = status(None, &[("resources", "Pending"), ("database/a", "Failed")]);
    none.items[1].error = Some("boom".into());
    assert_eq!(complete(&mut none, vec![], Ok(("s".into(), 1)), now).0, phase::PARTIALLY_FAILED);
    let mut nothing = status(None, &[("resources", "Pending"), ("database/a", "Failed")]);
    assert_eq!(complete(&mut nothing, vec![], Err("x".into()), now).0, phase::FAILED);
}

#[test]
fn a_failure_fails_every_unfinished_item() {
    let mut s = status(Some(phase::IN_PROGRESS), &[("resources", "Pending"), ("database/a", "Completed")]);
    let failure = Failure { reason: "StorageUnreachable", message: "no answer".into() };
    let message = fail(&mut s, &failure, at("2026-01-01T03:00:00Z"));
    assert_eq!(message, "StorageUnreachable: no answer");
    assert_eq!((s.items[0].phase.as_str(), s.items[0].error.as_deref()), ("Failed", Some("no answer")));
    assert_eq!((s.items[1].phase.as_str(), s.items[1].error.as_deref()), ("Completed", None));
    assert_eq!(s.completion_time, Some(Time(at("2026-01-01T03:00:00Z"))));
    assert_eq!(reason(phase::FAILED), "Failed");
    assert_eq!(reason(phase::IN_PROGRESS), "InProgress");
}

#[test]
fn deletion_deletes_the_data_or_says_why_it_stays() {
    let mut d = Deletion { has_finalizer: true, ..Deletion::default() };
    assert_eq!(plan_deletion(&Deletion::default(), "ns", "b"), DeletionStep::Idle);
    assert_eq!(plan_deletion(&d, "ns", "b"), DeletionStep::ReadPolicy);
    let skip = Deletion { skip: true, ..d.clone() };
    assert!(
        matches!(plan_deletion(&skip, "ns", "b"), DeletionStep::Release { kept: Some(m) } if m.contains(SKIP_DATA_DELETION))
    );
    let gone = Deletion { policy: Some(PolicyFact::Gone), ..d.clone() };
    assert!(
        matches!(plan_deletion(&gone, "ns", "b"), DeletionStep::Release { kept: Some(m) } if m.contains("BackupPolicy is gone"))
    );

    d.policy = Some(PolicyFact::Usable);
    assert_eq!(plan_deletion(&d, "ns", "b"), DeletionStep::DeleteData);
    d.deleted = Some(Ok(()));
    assert_eq!(plan_deletion(&d, "ns", "b"), DeletionStep::Release { kept: None });

    d.deleted = Some(Err("cannot reach the backup storage".into()));
    assert_eq!(plan_deletion(&d, "ns", "b"), DeletionStep::ReadNamespace);
    d.namespace_terminating = Some(true);
    assert!(
        matches!(plan_deletion(&d, "ns", "b"), DeletionStep::Release { kept: Some(m) } if m.contains("is being deleted"))
    );
    d.namespace_terminating = Some(false);
    let DeletionStep::Block { message } = plan_deletion(&d, "ns", "b") else { panic!("expected a block") };
    assert!(message.starts_with("cannot delete the backup's data: cannot reach the backup storage;"), "{message}");
    assert!(message.contains("kubectl annotate backup b -n ns berth.dev/skip-data-deletion=true"), "{message}");

    // A missing account blocks like unreachable storage, without trying the storage.
    let account = Deletion {
        has_finalizer: true,
        policy: Some(PolicyFact::AccountUnavailable("ServiceAccount ns/x not found".into())),
        namespace_terminating: Some(false),
        ..Deletion::default()
    };
    let DeletionStep::Block { message } = plan_deletion(&account, "ns", "b") else { panic!("expected a block") };
    assert!(message.contains("ServiceAccount ns/x not found"), "{message}");
}

//! The drill planner, without a cluster.

use super::*;
use crate::resources::backup::phase;
use crate::resources::backuppolicy::validate;

fn valid(verify: &str) -> ValidPolicy {
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: nightly, namespace: shop}}\nspec:\n  schedule: \"0 3 * * *\"\n  storage: {{bucket: backups, encryptionKeySecret: key}}\n{verify}"
    );
    validate(&serde_saphyr::from_str(&yaml).unwrap()).unwrap()
}

fn weekly() -> ValidPolicy {
    valid("  verify: {schedule: \"0 5 * * 0\", namespace: shop-drill, keepFailedFor: 2h}\n")
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn completed(name: &str, when: &str) -> BackupSeen {
    BackupSeen { name: name.into(), phase: Some(phase::COMPLETED.into()), completion: Some(at(when)) }
}

fn observe<'a>(
    policy: &'a ValidPolicy,
    status: &'a BackupPolicyStatus,
    now: &str,
    backups: &'a [BackupSeen],
    task: DrillTask,
) -> DrillObserved<'a> {
    DrillObserved { policy, status, created: at("2026-01-01T00:00:00Z"), now: at(now), backups, task }
}

fn running(started: &str) -> BackupPolicyStatus {
    BackupPolicyStatus {
        drill: Some(DrillStatus {
            backup: "nightly-2".into(),
            restore: "nightly-drill-x".into(),
            started_at: Time(at(started)),
            phase: RUNNING.into(),
        }),
        ..Default::default()
    }
}

#[test]
fn a_due_drill_restores_the_newest_completed_backup() {
    let policy = weekly();
    let status = BackupPolicyStatus::default();
    let backups = [
        completed("nightly-1", "2026-01-03T03:05:00Z"),
        completed("nightly-2", "2026-01-04T03:05:00Z"),
        BackupSeen {
            name: "nightly-3".into(),
            phase: Some("Failed".into()),
            completion: Some(at("2026-01-04T04:00:00Z")),
        },
    ];
    // 2026-01-04 is a Sunday: the drill fired at 05:00.
    let d = decide(&observe(&policy, &status, "2026-01-04T05:00:30Z", &backups, DrillTask::Idle));
    let start = d.start.expect("due");
    assert_eq!(start.backup, "nightly-2");
    assert_eq!(start.namespace, "shop-drill");
    assert!(start.restore.starts_with("nightly-drill-2026"), "{}", start.restore);
    assert_eq!(d.drill.unwrap().phase, RUNNING);
    assert_eq!(d.requeue, Some(DRILL_POLL));
    // Before its time, and without a Completed backup, nothing starts.
    let early = decide(&observe(&policy, &status, "2026-01-04T04:59:00Z", &backups, DrillTask::Idle));
    assert!(early.start.is_none());
    let d = decide(&observe(&policy, &status, "2026-01-04T05:00:30Z", &backups[2..], DrillTask::Idle));
    assert!(d.start.is_none());
    assert_eq!(d.condition.unwrap().reason, "NotYetVerified");
}

#[test]
fn a_passed_drill_is_recorded_and_the_next_waits_for_its_schedule() {
    let policy = weekly();
    let status = running("2026-01-04T05:00:00Z");
    let backups = [completed("nightly-2", "2026-01-04T03:05:00Z")];
    let done = DrillTask::Finished(DrillOutcome { result: Ok("1 database, 3 tables, 12 rows".into()) });
    let d = decide(&observe(&policy, &status, "2026-01-04T05:02:00Z", &backups, done));
    let last = d.last.clone().unwrap();
    assert_eq!((last.result.as_str(), last.duration_seconds, last.backup.as_str()), (PASSED, 120, "nightly-2"));
    assert!(d.drill.is_none() && d.start.is_none() && !d.release);
    let c = d.condition.unwrap();
    assert!(c.status && c.reason == "DrillPassed", "{c:?}");
    // An hour later nothing is due: the baseline is the last drill's start.
    let status = BackupPolicyStatus { last_verified_restore: Some(last), ..Default::default() };
    let d = decide(&observe(&policy, &status, "2026-01-04T06:00:00Z", &backups, DrillTask::Idle));
    assert!(d.start.is_none());
    assert_eq!(d.requeue, Some(Duration::from_secs(7 * 86400 - 3600 + 1)));
}

#[test]
fn a_failed_drill_keeps_its_namespace_then_releases_it() {
    let policy = weekly();
    let status = running("2026-01-04T05:00:00Z");
    let backups = [completed("nightly-2", "2026-01-04T03:05:00Z")];
    let why = ("CheckFailed", "row counts of database orders: public.items has 0, the backup recorded 3".to_string());
    let done = DrillTask::Finished(DrillOutcome { result: Err(why) });
    let d = decide(&observe(&policy, &status, "2026-01-04T05:01:00Z", &backups, done));
    assert_eq!(d.last.as_ref().unwrap().result, FAILED);
    assert_eq!(d.drill.as_ref().unwrap().phase, KEPT);
    assert!(!d.release);
    let c = d.condition.clone().unwrap();
    assert!(!c.status && c.reason == "DrillFailed", "{c:?}");
    assert!(c.message.contains("public.items has 0, the backup recorded 3"), "{}", c.message);
    assert_eq!(d.requeue, Some(Duration::from_secs(2 * 3600)));
    let kept =
        BackupPolicyStatus { drill: d.drill.clone(), last_verified_restore: d.last.clone(), ..Default::default() };
    // The next Sunday's drill would empty the namespace: it waits while the namespace is kept
    // (keepFailedFor 2h here), then the namespace is released.
    let still = decide(&observe(&policy, &kept, "2026-01-04T06:59:00Z", &backups, DrillTask::Idle));
    assert!(!still.release && still.start.is_none());
    let later = decide(&observe(&policy, &kept, "2026-01-04T07:01:00Z", &backups, DrillTask::Idle));
    assert!(later.release && later.drill.is_none());
}

#[test]
fn a_drill_without_a_task_was_interrupted() {
    let policy = weekly();
    let status = running("2026-01-04T05:00:00Z");
    let d = decide(&observe(&policy, &status, "2026-01-04T05:03:00Z", &[], DrillTask::Idle));
    assert_eq!(d.last.unwrap().result, FAILED);
    assert_eq!(d.drill.unwrap().phase, KEPT);
    // While its task runs, it is only looked at again.
    let d = decide(&observe(&policy, &status, "2026-01-04T05:03:00Z", &[], DrillTask::Running));
    assert!(d.last.is_none() && d.start.is_none());
    assert_eq!(d.requeue, Some(DRILL_POLL));
}

#[test]
fn drills_switched_off_release_a_kept_namespace() {
    let policy = valid("");
    let mut status = running("2026-01-04T05:00:00Z");
    status.drill.as_mut().unwrap().phase = KEPT.into();
    let d = decide(&observe(&policy, &status, "2026-01-04T05:03:00Z", &[], DrillTask::Idle));
    assert!(d.release && d.drill.is_none() && d.condition.is_none());
}

#[test]
fn counts_name_the_check_the_object_and_both_numbers() {
    let recorded: BTreeMap<String, u64> = [("public.items".into(), 3), ("public.orders".into(), 2)].into();
    let mut restored = recorded.clone();
    assert_eq!(compare_counts("row counts", "database orders", &recorded, &restored), Ok(()));
    restored.insert("public.items".into(), 1);
    restored.remove("public.orders");
    restored.insert("public.extra".into(), 9);
    assert_eq!(
        compare_counts("row counts", "database orders", &recorded, &restored),
        Err("row counts of database orders: public.items has 1, the backup recorded 3, public.orders is missing (the backup recorded 2)".into())
    );
}

#[test]
fn rabbitmq_definitions_name_what_is_missing() {
    let recorded = serde_json::json!({
        "vhosts": [{"name": "orders"}],
        "users": [{"name": "orders-app", "password_hash": "x"}],
        "permissions": [{"user": "orders-app", "vhost": "orders", "configure": ".*"}],
        "queues": [{"name": "jobs", "vhost": "orders", "durable": true}],
        "exchanges": [], "policies": []
    });
    let mut restored = recorded.clone();
    restored["vhosts"].as_array_mut().unwrap().push(serde_json::json!({"name": "/"}));
    assert_eq!(compare_definitions("DatabaseInstance shop-drill/events", &recorded, &restored), Ok(4));
    restored["queues"] = serde_json::json!([]);
    restored["users"] = serde_json::json!([{"name": "admin"}]);
    assert_eq!(
        compare_definitions("DatabaseInstance shop-drill/events", &recorded, &restored),
        Err("RabbitMQ definitions of DatabaseInstance shop-drill/events: 2 of the 4 recorded are missing: queue orders/jobs, user orders-app".into())
    );
}

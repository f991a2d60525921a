use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use serde_json::json;

use super::*;
use crate::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
use crate::resources::backup::job_name;

fn now() -> Timestamp {
    "2026-12-04T12:00:00Z".parse().unwrap()
}

fn obj<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap()
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-04T11:00:00Z"})
}

fn input() -> StatusInput {
    let web: AppEnvironment = obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"team": "a"}},
        "spec": {"tier": "production", "image": "ghcr.io/example/web:2", "replicas": 2,
                 "databases": [{"name": "orders-db"}, {"name": "gone-db"}],
                 "ingress": {"hosts": ["shop.example.com"]}},
        "status": {"readyReplicas": 1, "image": "ghcr.io/example/web:2", "url": "http://shop.example.com/",
                   "conditions": [cond("Degraded", "True", "ImagePullBackOff", "pod web-1: image not found"),
                                  cond("Ready", "False", "Unavailable", "1 of 2 replicas ready")]}
    }));
    let db: DatabaseInstance = obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "orders-db", "namespace": "shop"},
        "spec": {"engine": "postgres", "version": "16", "storage": {"size": "5Gi"}},
        "status": {"currentVersion": "15", "provisioned": ["role/app", "database/orders"],
                   "conditions": [cond("Ready", "True", "Provisioned", "serving")]}
    }));
    let events: DatabaseInstance = obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": "events", "namespace": "shop"},
        "spec": {"engine": "rabbitmq", "version": "4.1", "storage": {"size": "1Gi"}}
    }));
    let policy: BackupPolicy = obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"schedule": "0 3 * * *", "storage": {"bucket": "backups", "encryptionKeySecret": "k"},
                 "scope": {"selector": {"matchLabels": {"team": "a"}}}},
        "status": {"lastSuccessfulBackup": "nightly-20261203030000",
                   "conditions": [cond("BackupFresh", "True", "BackupRecent", "recent enough"),
                                  cond("Ready", "True", "Scheduled", "ok")]}
    }));
    let other_policy: BackupPolicy = obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "team-b", "namespace": "shop"},
        "spec": {"schedule": "0 * * * *", "suspend": true, "storage": {"bucket": "backups", "encryptionKeySecret": "k"},
                 "scope": {"selector": {"matchLabels": {"team": "b"}}}},
        "status": {"conditions": [cond("BackupFresh", "False", "BackupStale", "no backup for 3h; the policy is suspended")]}
    }));
    let backup = |name: &str, done: &str, bytes: u64| -> Backup {
        obj(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"policyName": "nightly"},
            "status": {"phase": "Completed", "startTime": "2026-12-03T03:00:00Z", "completionTime": done,
                       "items": [{"name": "resources", "phase": "Completed", "snapshot": "aa", "bytes": 100},
                                 {"name": "database/orders-db", "phase": "Completed", "snapshot": "bb", "bytes": bytes}]}
        }))
    };
    let restore = |name: &str, created: &str, phase: &str| -> Restore {
        obj(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created},
            "spec": {"backupName": "nightly-20261203030000"},
            "status": {"phase": phase, "backupName": "nightly-20261203030000", "created": 2, "skipped": 3,
                       "conditions": [cond("Ready", "True", "Completed", "done")]}
        }))
    };
    StatusInput {
        apps: vec![web],
        databases: vec![events, db],
        policies: vec![other_policy, policy],
        backups: vec![
            backup("nightly-20261202030000", "2026-12-02T03:01:00Z", 1024),
            backup("nightly-20261203030000", "2026-12-03T03:01:00Z", 4200),
        ],
        restores: vec![
            restore("older", "2026-12-04T09:00:00Z", "Failed"),
            restore("undo", "2026-12-04T11:55:00Z", "Completed"),
        ],
    }
}

const STATUS: &str = r#"Namespace shop
├── AppEnvironment web (production): not Ready, 1/2 replicas ready
│   ├── image ghcr.io/example/web:2
│   ├── url http://shop.example.com/
│   ├── conditions: Degraded=True, Ready=False
│   ├── Degraded=True ImagePullBackOff: pod web-1: image not found
│   ├── Ready=False Unavailable: 1 of 2 replicas ready
│   ├── DatabaseInstance orders-db: Ready, postgres 16 (running 15)
│   │   ├── storage 5Gi requested
│   │   ├── size 4.1 KiB in its newest dump (Backup nightly-20261203030000)
│   │   └── provisioned: role/app, database/orders
│   ├── DatabaseInstance gone-db: not found (spec.databases names it; create it or fix the name)
│   ├── BackupPolicy nightly: schedule "0 3 * * *", every 1d
│   │   ├── last success nightly-20261203030000, 1d 8h ago (1.4 schedule intervals)
│   │   └── BackupFresh=True BackupRecent: recent enough
│   └── last Restore undo: Completed from Backup nightly-20261203030000, created 5m ago
│       └── objects: 2 created, 0 updated, 3 skipped
├── DatabaseInstance events: not reconciled yet, rabbitmq 4.1 (no AppEnvironment names it)
│   ├── storage 1Gi requested
│   ├── size unknown: no completed dump yet
│   ├── provisioned: nothing yet
│   └── conditions: none yet (the operator has not reconciled it)
└── BackupPolicy team-b: schedule "0 * * * *", every 1h, suspended (includes no AppEnvironment)
    ├── no successful backup yet
    └── BackupFresh=False BackupStale: no backup for 3h; the policy is suspended
"#;

#[test]
fn status_is_a_tree_per_app_with_what_belongs_to_it() {
    let report = status_report(&input(), now());
    assert_eq!(status_text(&report, now(), false), STATUS);
}

#[test]
fn problems_are_red_on_a_terminal_and_plain_when_piped() {
    let report = status_report(&input(), now());
    let coloured = status_text(&report, now(), true);
    let red_lines: Vec<&str> = coloured.lines().filter(|l| l.contains(RED)).collect();
    assert!(red_lines.iter().any(|l| l.contains("AppEnvironment web")), "{coloured}");
    assert!(red_lines.iter().any(|l| l.contains("gone-db")), "{coloured}");
    assert!(red_lines.iter().any(|l| l.contains("BackupStale")), "{coloured}");
    assert!(!red_lines.iter().any(|l| l.contains("orders-db: Ready")), "a Ready instance is no problem: {coloured}");
    assert!(!status_text(&report, now(), false).contains('\x1b'));
}

#[test]
fn json_has_the_same_facts() {
    let report = status_report(&input(), now());
    let v = serde_json::to_value(&report).unwrap();
    let app = &v["namespaces"][0]["appEnvironments"][0];
    assert_eq!(app["desiredReplicas"], "2");
    assert_eq!(app["readyReplicas"], 1);
    assert_eq!(app["ready"], false);
    assert_eq!(app["databaseInstances"][0]["lastDump"], json!({"backup": "nightly-20261203030000", "bytes": 4200}));
    assert_eq!(app["databaseInstances"][1]["exists"], false);
    assert_eq!(app["backupPolicies"][0]["lastSuccessTime"], "2026-12-03T03:01:00Z");
    assert_eq!(app["backupPolicies"][0]["intervalSeconds"], 86_400);
    assert_eq!(v["namespaces"][0]["lastRestore"]["name"], "undo", "the newest Restore");
    assert_eq!(v["namespaces"][0]["otherBackupPolicies"][0]["name"], "team-b");
}

#[test]
fn an_app_no_policy_includes_is_flagged() {
    let mut input = input();
    input.policies.retain(|p| p.name_any() == "team-b");
    let text = status_text(&status_report(&input, now()), now(), false);
    assert!(text.contains("BackupPolicy: none includes this app (it is not backed up)"), "{text}");
}

#[test]
fn sizes_and_durations_read_well() {
    assert_eq!(size(512), "512 B");
    assert_eq!(size(4200), "4.1 KiB");
    assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    let d = |s| duration(SignedDuration::from_secs(s));
    assert_eq!([d(0), d(45), d(303), d(7800), d(3 * 86_400 + 4 * 3600 + 5)], ["0s", "45s", "5m 3s", "2h 10m", "3d 4h"]);
    assert_eq!(d(3600), "1h");
}

fn running_backup() -> Backup {
    obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
        "metadata": {"name": "nightly-1", "namespace": "shop"},
        "spec": {"policyName": "nightly"},
        "status": {"phase": "InProgress", "startTime": "2026-12-04T11:58:00Z",
                   "items": [{"name": "resources", "phase": "Pending"},
                             {"name": "database/orders-db", "phase": "Completed", "snapshot": "0123456789abcdef0123", "bytes": 4096},
                             {"name": "volume/data", "phase": "Failed", "error": "agent Job x failed: BackoffLimitExceeded: disk"},
                             {"name": "database/events", "phase": "Pending"}]}
    }))
}

#[test]
fn progress_counts_items_and_bytes() {
    assert_eq!(backup_progress(&running_backup()), "InProgress: 2 of 4 items done (1 failed), 4.0 KiB backed up");
    let fresh: Backup = obj(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
        "metadata": {"name": "b"}, "spec": {"policyName": "p"}}));
    assert_eq!(backup_progress(&fresh), "New: waiting for the operator to list the items");
}

#[test]
fn a_backup_that_failed_before_its_items_says_why() {
    let failed: Backup = obj(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
        "metadata": {"name": "b", "namespace": "shop"}, "spec": {"policyName": "p"},
        "status": {"phase": "Failed", "conditions": [cond("Ready", "False", "Failed", "StorageUnreachable: connection refused")]}}));
    assert_eq!(backup_progress(&failed), "Failed");
    assert_eq!(
        backup_outcome(&failed),
        "Backup shop/b Failed: 0 items, 0 B\n  StorageUnreachable: connection refused\nDetails: berth backup describe b -n shop\n"
    );
}

#[test]
fn describe_lists_items_with_durations_from_their_jobs() {
    let job: Job = obj(json!({
        "metadata": {"name": job_name("nightly-1", "database/orders-db")},
        "status": {"startTime": "2026-12-04T11:58:05Z", "completionTime": "2026-12-04T11:58:47Z", "succeeded": 1}
    }));
    let running: Job = obj(json!({
        "metadata": {"name": job_name("nightly-1", "database/events")},
        "status": {"startTime": "2026-12-04T11:59:00Z", "active": 1}
    }));
    let text = backup_describe(&running_backup(), &[job, running], now(), false);
    let expected = format!(
        "Name:        shop/nightly-1
Policy:      nightly
Phase:       InProgress
Started:     2026-12-04T11:58:00Z (2m ago)
Size:        4.0 KiB (4096 bytes)
Delete data: no, kept in the bucket
Items:
  resources: Pending
    duration: exported by the operator (no agent Job)
  database/orders-db: Completed
    size:     4.0 KiB (4096 bytes)
    duration: 42s (Job {})
    snapshot: 0123456789abcdef0123
  volume/data: Failed
    duration: unknown: its agent Job is gone (Jobs are deleted a day after they finish)
    error:    agent Job x failed: BackoffLimitExceeded: disk
  database/events: Pending
    duration: running for 1m (Job {})
",
        job_name("nightly-1", "database/orders-db"),
        job_name("nightly-1", "database/events")
    );
    assert_eq!(text, expected);
}

#[test]
fn recorded_errors_say_the_logs_are_gone() {
    let text = backup_recorded_errors(&running_backup());
    assert!(text.starts_with("The agent Jobs of Backup shop/nightly-1 no longer exist"), "{text}");
    assert!(text.contains("  volume/data: agent Job x failed: BackoffLimitExceeded: disk\n"), "{text}");
    assert!(text.contains("  database/orders-db: no error\n"), "{text}");
    assert!(text.contains("  database/events: no error recorded (Pending)\n"), "{text}");
}

#[test]
fn outcome_names_failed_items_and_where_to_look() {
    let mut b = running_backup();
    let status = b.status.as_mut().unwrap();
    status.phase = Some("PartiallyFailed".into());
    status.completion_time = Some(Time("2026-12-04T11:59:30Z".parse().unwrap()));
    status.bytes = Some(4096);
    assert_eq!(
        backup_outcome(&b),
        "Backup shop/nightly-1 PartiallyFailed: 4 items, 4.0 KiB in 1m 30s\n  volume/data: agent Job x failed: BackoffLimitExceeded: disk\nDetails: berth backup describe nightly-1 -n shop\n"
    );
}

#[test]
fn the_dry_run_plan_follows_the_backup_and_the_mapping() {
    let mut backup = running_backup();
    let status = backup.status.as_mut().unwrap();
    status.phase = Some("PartiallyFailed".into());
    status.completion_time = Some(Time("2026-12-04T11:59:00Z".parse().unwrap()));
    status.items[0] = serde_json::from_value(
        json!({"name": "resources", "phase": "Completed", "snapshot": "fedcba9876543210", "bytes": 2048}),
    )
    .unwrap();
    let restore = Restore::new(
        "r",
        crate::api::restore::RestoreSpec {
            backup_name: Some("nightly-1".into()),
            namespace_mapping: BTreeMap::from([("shop".to_string(), "shop-copy".to_string())]),
            include_kinds: vec!["DatabaseInstance".into(), "Secret".into()],
            ..Default::default()
        },
    );
    let policy: BackupPolicy = obj(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"schedule": "0 3 * * *", "storage": {"bucket": "backups", "encryptionKeySecret": "k"},
                 "scope": {"extraResources": ["configmaps"]}}
    }));
    let input = PlanInput {
        restore: &restore,
        backup: &backup,
        policy: Some(&policy),
        targets: vec![("shop-copy".into(), NamespaceCheck::Missing)],
    };
    assert_eq!(
        restore_plan(&input, now()),
        "Dry run: nothing was created. The restore would:
  read Backup shop/nightly-1: PartiallyFailed, finished 1m ago
  restore into namespace shop-copy (mapped from shop)
  BLOCKED: namespace shop-copy does not exist; Berth does not create namespaces, create it first (the Restore waits for it)
  restore only objects of the kinds DatabaseInstance, Secret
In order:
  1. create the objects of shop that the kinds allow (the backup holds its AppEnvironments, DatabaseInstances and their Secrets, the BackupPolicy, configmaps), from snapshot fedcba987654 (2.0 KiB): Secrets and ConfigMaps, then PVCs, then DatabaseInstances (and wait until they are Ready); objects that exist are left alone
  2. load the data of DatabaseInstance shop-copy/orders-db from snapshot 0123456789ab (4.0 KiB)
  3. create the AppEnvironments and the remaining objects that the kinds allow last
Not in the backup (these items did not complete):
  volume/data: agent Job x failed: BackoffLimitExceeded: disk
  database/events: Pending
Never restored: Pods, ReplicaSets and other controller output, objects Berth recreates, Backups and Restores; BackupPolicies only when --include-kinds names them.
"
    );
}

#[test]
fn desired_replicas_follow_the_tier_or_the_autoscaler() {
    let app = |spec: serde_json::Value| -> AppEnvironment {
        obj(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment",
                   "metadata": {"name": "a", "namespace": "ns"}, "spec": spec}))
    };
    let input = StatusInput {
        apps: vec![
            app(json!({"tier": "production", "image": "i", "autoscaling": {"minReplicas": 2, "maxReplicas": 5}})),
            app(json!({"tier": "production", "image": "i"})),
        ],
        ..Default::default()
    };
    let report = status_report(&input, now());
    let desired: Vec<&str> =
        report.namespaces[0].app_environments.iter().map(|a| a.desired_replicas.as_str()).collect();
    assert_eq!(desired[0], "2-5");
    assert!(desired[1].parse::<i32>().is_ok_and(|n| n >= 2), "production's default: {desired:?}");
}

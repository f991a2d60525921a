//! Flux's view of Berth's resources: the real kstatus library (`sigs.k8s.io/cli-utils`, a Go
//! module built from `tests/kstatus`) judges each kind in each state, with conditions from
//! Berth's own code: `resources::appenvironment::status::health` for an app's rollout, the
//! validators' messages for invalid specs, `controllers::backup::phase::conditions` for Backups
//! and Restores, and always `conditions::merge`, which adds `Reconciling` / `Stalled`. The other
//! condition lists are the ones the controllers write. Expected: Current when Ready, InProgress
//! while reconciling or at a stale generation, Failed when stalled.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use berth::api::appenvironment::AppEnvironmentStatus;
use berth::api::backup::BackupStatus;
use berth::api::backuppolicy::BackupPolicyStatus;
use berth::api::conditions::{self, DEGRADED, DesiredCondition, PROGRESSING, READY};
use berth::api::databaseinstance::DatabaseInstanceStatus;
use berth::api::restore::RestoreStatus;
use berth::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
use berth::controllers::backup::phase;
use berth::resources::appenvironment::status::{Observed, health};
use berth::resources::appenvironment::{DatabaseLinks, validate};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Resource;
use serde_json::Value;

/// Builds `tests/kstatus` (Go's build cache makes repeated builds quick) and returns the binary.
fn kstatus_check() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kstatus");
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kstatus-check");
    // Tests run in parallel processes: each builds its own file and renames it into place, so
    // none replaces the binary while another runs it.
    let own = binary.with_extension(std::process::id().to_string());
    // The Go of this machine kind lives in /usr/local/go when PATH lacks it.
    let go = if Command::new("go").arg("version").output().is_ok() { "go" } else { "/usr/local/go/bin/go" };
    let out = Command::new(go)
        .args(["build", "-o"])
        .arg(&own)
        .arg(".")
        .current_dir(&source)
        // go.sum pins every module; -mod=mod lets a fresh machine download them.
        .env("GOFLAGS", "-mod=mod")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `go` ({e}): install Go 1.24 or newer to build tests/kstatus"));
    assert!(out.status.success(), "go build in tests/kstatus failed:\n{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&own, &binary).unwrap();
    binary
}

/// kstatus's `(status, message)` for each object.
fn kstatus(objects: &[Value]) -> Vec<(String, String)> {
    let mut child = Command::new(kstatus_check())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kstatus-check starts");
    let mut stdin = child.stdin.take().unwrap();
    for o in objects {
        writeln!(stdin, "{o}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kstatus-check failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (s, m) = l.split_once('\t').expect("status<TAB>message");
            (s.to_string(), m.to_string())
        })
        .collect();
    assert_eq!(lines.len(), objects.len(), "one result per object");
    lines
}

fn now() -> Time {
    Time(jiff::Timestamp::from_second(1_767_607_200).unwrap())
}

/// The conditions a controller writes for `desired` at `generation`.
fn merged(desired: &[DesiredCondition], generation: i64) -> Vec<Condition> {
    conditions::merge(&[], desired, Some(generation), &now())
}

/// `object` (a Berth kind from YAML) with `metadata.generation` and `status`.
fn with_status<K: Resource + serde::Serialize>(mut object: K, generation: i64, status: impl serde::Serialize) -> Value {
    object.meta_mut().generation = Some(generation);
    let mut value = serde_json::to_value(&object).unwrap();
    value["status"] = serde_json::to_value(status).unwrap();
    value
}

fn parse<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
    serde_saphyr::from_str(yaml).expect("test object parses")
}

fn app(spec: &str) -> AppEnvironment {
    parse(&format!(
        "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata: {{name: shop, namespace: shop}}\nspec:\n{spec}"
    ))
}

fn deployment(updated: i32, available: i32, deadline_exceeded: bool) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.generation = Some(1);
    d.spec.get_or_insert_default().replicas = Some(2);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(2),
        updated_replicas: Some(updated),
        available_replicas: Some(available),
        ready_replicas: Some(available),
        conditions: deadline_exceeded.then(|| {
            vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet \"shop-6d4f\" has timed out progressing.".into()),
                ..DeploymentCondition::default()
            }]
        }),
        ..DeploymentStatus::default()
    });
    d
}

/// An AppEnvironment at `generation` whose status the controller computed at `observed` from
/// this Deployment and these database links.
fn app_from_rollout(generation: i64, observed: i64, deployment: &Deployment, databases: &DatabaseLinks) -> Value {
    let app = app("  tier: staging\n  image: ghcr.io/example/shop:1.4.2\n  databases:\n  - name: orders-db\n");
    let valid = validate(&app).expect("valid app");
    let pods: Vec<Arc<k8s_openapi::api::core::v1::Pod>> = Vec::new();
    let observed_state = Observed {
        deployment: Some(deployment),
        certificate: None,
        deployment_just_changed: false,
        databases,
        pods: &pods,
        workers: Vec::new(),
        migration: berth::resources::appenvironment::workloads::MigrationState::None,
    };
    let computed = health(&valid, &observed_state);
    let status = AppEnvironmentStatus {
        observed_generation: Some(observed),
        conditions: merged(&computed.conditions, observed),
        ..AppEnvironmentStatus::default()
    };
    with_status(app, generation, status)
}

fn no_databases() -> DatabaseLinks {
    DatabaseLinks { linked: Vec::new(), missing: Vec::new(), not_ready: Vec::new() }
}

/// Runs every case through kstatus and reports all mismatches at once.
fn check(cases: Vec<(&str, Value, &str)>) {
    let objects: Vec<Value> = cases.iter().map(|(_, o, _)| o.clone()).collect();
    let results = kstatus(&objects);
    let failures: Vec<String> = cases
        .iter()
        .zip(&results)
        .filter(|((_, _, want), (got, _))| got != want)
        .map(|((name, o, want), (got, message))| {
            format!("{name}: kstatus says {got} ({message}), expected {want}; conditions {}", o["status"]["conditions"])
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn app_environments() {
    let ready = deployment(2, 2, false);
    let mut waiting = no_databases();
    waiting.not_ready.push("orders-db".into());
    let invalid_app = app("  tier: staging\n  image: x:1\n  securityContext:\n    privileged: true\n");
    let message = match validate(&invalid_app) {
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        Ok(_) => panic!("a privileged container should be invalid"),
    };
    // As the controller writes an invalid spec and a paused app.
    let invalid = [
        DesiredCondition::new(READY, false, "InvalidSpec", message.clone()),
        DesiredCondition::new(PROGRESSING, false, "InvalidSpec", "waiting for the spec to be fixed"),
        DesiredCondition::new(DEGRADED, true, "InvalidSpec", message),
    ];
    let paused = |ready: bool| {
        [
            DesiredCondition::new(PROGRESSING, false, conditions::PAUSED, "spec.paused is true"),
            DesiredCondition::new(READY, ready, "Available", "all replicas run the current spec"),
            DesiredCondition::new(DEGRADED, false, "Healthy", "no failure observed"),
        ]
    };
    let status = |desired: &[DesiredCondition]| AppEnvironmentStatus {
        observed_generation: Some(2),
        conditions: merged(desired, 2),
        ..AppEnvironmentStatus::default()
    };
    check(vec![
        ("ready", app_from_rollout(1, 1, &ready, &no_databases()), "Current"),
        ("rolling out", app_from_rollout(1, 1, &deployment(1, 1, false), &no_databases()), "InProgress"),
        ("waiting for its database", app_from_rollout(1, 1, &ready, &waiting), "InProgress"),
        ("ready at an older generation", app_from_rollout(2, 1, &ready, &no_databases()), "InProgress"),
        ("rollout past its deadline", app_from_rollout(1, 1, &deployment(1, 1, true), &no_databases()), "Failed"),
        ("invalid spec", with_status(invalid_app, 2, status(&invalid)), "Failed"),
        (
            "paused while ready",
            with_status(app("  tier: staging\n  image: x:1\n"), 2, status(&paused(true))),
            "Current",
        ),
        (
            "paused before ready",
            with_status(app("  tier: staging\n  image: x:1\n"), 2, status(&paused(false))),
            "InProgress",
        ),
    ]);
}

#[test]
fn database_instances() {
    let db: DatabaseInstance = parse(
        "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata: {name: orders-db, namespace: shop}\nspec:\n  engine: postgres\n  version: \"16\"\n  storage: {size: 20Gi}\n",
    );
    let ok = DesiredCondition::new(DEGRADED, false, "AsExpected", "no refused change and no failure");
    let provisioned = DesiredCondition::new(READY, true, "Provisioned", "the server runs and matches the spec");
    let done = DesiredCondition::new(PROGRESSING, false, "Provisioned", "nothing left to do");
    let unreachable = "cannot connect to orders-db.shop.svc:5432: connection refused";
    // The condition lists the controller writes in each state.
    let states: Vec<(&str, Vec<DesiredCondition>, i64, &str)> = vec![
        ("provisioned", vec![provisioned.clone(), done.clone(), ok.clone()], 1, "Current"),
        ("provisioned at an older generation", vec![provisioned.clone(), done.clone(), ok.clone()], 0, "InProgress"),
        (
            "starting",
            vec![
                DesiredCondition::new(READY, false, "Starting", "0/1 pods ready"),
                DesiredCondition::new(PROGRESSING, true, "Starting", "0/1 pods ready"),
                ok,
            ],
            1,
            "InProgress",
        ),
        (
            "retrying an unreachable server",
            vec![
                DesiredCondition::new(READY, false, "ServerUnreachable", unreachable),
                DesiredCondition::new(PROGRESSING, true, "Provisioning", "retrying with backoff"),
                DesiredCondition::new(DEGRADED, true, "ServerUnreachable", unreachable),
            ],
            1,
            "InProgress",
        ),
        (
            "a refused change",
            vec![
                provisioned,
                done,
                DesiredCondition::new(DEGRADED, true, "StorageShrinkRefused", "spec.storage.size cannot shrink"),
            ],
            1,
            "Failed",
        ),
        (
            "invalid spec",
            vec![
                DesiredCondition::new(READY, false, "InvalidSpec", "spec.version: unsupported"),
                DesiredCondition::new(PROGRESSING, false, "InvalidSpec", "waiting for the spec to be fixed"),
                DesiredCondition::new(DEGRADED, true, "InvalidSpec", "spec.version: unsupported"),
            ],
            1,
            "Failed",
        ),
    ];
    check(
        states
            .into_iter()
            .map(|(name, desired, observed, want)| {
                let status = DatabaseInstanceStatus {
                    observed_generation: Some(observed),
                    conditions: merged(&desired, observed),
                    ..DatabaseInstanceStatus::default()
                };
                (name, with_status(db.clone(), 1, status), want)
            })
            .collect(),
    );
}

#[test]
fn backup_policies() {
    let policy = |extra: &str| -> BackupPolicy {
        parse(&format!(
            "apiVersion: berth.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: nightly, namespace: shop}}\nspec:\n  schedule: \"0 3 * * *\"\n  storage: {{bucket: shop-backups, encryptionKeySecret: backup-key}}\n{extra}"
        ))
    };
    let invalid = policy("  timeZone: Mars/Olympus\n");
    let message = match berth::resources::backuppolicy::validate::validate(&invalid) {
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        Ok(_) => panic!("an unknown time zone should be invalid"),
    };
    let fresh = DesiredCondition::new("BackupFresh", true, "Fresh", "last successful backup finished 7h ago");
    let scheduled = DesiredCondition::new(READY, true, "Scheduled", "the schedule is active");
    let states: Vec<(&str, BackupPolicy, i64, Vec<DesiredCondition>, &str)> = vec![
        ("scheduled", policy(""), 1, vec![scheduled.clone(), fresh.clone()], "Current"),
        ("scheduled at an older generation", policy(""), 2, vec![scheduled, fresh.clone()], "InProgress"),
        (
            "suspended",
            policy("  suspend: true\n"),
            1,
            vec![
                DesiredCondition::new(READY, true, "Suspended", "spec.suspend is true: no new backups"),
                fresh.clone(),
            ],
            "Current",
        ),
        (
            "bucket unreachable",
            policy(""),
            1,
            vec![DesiredCondition::new(READY, false, "StorageUnreachable", "cannot reach the bucket"), fresh],
            "InProgress",
        ),
        ("invalid spec", invalid, 1, vec![DesiredCondition::new(READY, false, "InvalidSpec", message)], "Failed"),
    ];
    check(
        states
            .into_iter()
            .map(|(name, p, generation, desired, want)| {
                let status = BackupPolicyStatus {
                    observed_generation: Some(1),
                    conditions: merged(&desired, 1),
                    ..BackupPolicyStatus::default()
                };
                (name, with_status(p, generation, status), want)
            })
            .collect(),
    );
}

#[test]
fn backups_and_restores() {
    let backup: Backup = parse(
        "apiVersion: berth.dev/v1alpha1\nkind: Backup\nmetadata: {name: nightly-20260105-0300, namespace: shop}\nspec: {policyName: nightly}\n",
    );
    let restore: Restore = parse(
        "apiVersion: berth.dev/v1alpha1\nkind: Restore\nmetadata: {name: shop-restore, namespace: shop}\nspec: {backupName: nightly-20260105-0300}\n",
    );
    let backup_at = |generation: i64, p: &str, reason: &str| {
        let status = BackupStatus {
            observed_generation: Some(1),
            conditions: merged(&phase::conditions(p, reason, "3 items"), 1),
            phase: Some(p.into()),
            ..BackupStatus::default()
        };
        with_status(backup.clone(), generation, status)
    };
    let backup_in = |p: &str, reason: &str| backup_at(1, p, reason);
    let restore_in = |p: &str, reason: &str| {
        let status = RestoreStatus {
            observed_generation: Some(1),
            conditions: merged(&phase::conditions(p, reason, "restore message"), 1),
            phase: Some(p.into()),
            ..RestoreStatus::default()
        };
        with_status(restore.clone(), 1, status)
    };
    check(vec![
        ("new backup", backup_in(phase::NEW, "InProgress"), "InProgress"),
        ("backup in progress", backup_in(phase::IN_PROGRESS, "InProgress"), "InProgress"),
        ("completed backup", backup_in(phase::COMPLETED, "Completed"), "Current"),
        ("completed backup at an older generation", backup_at(2, phase::COMPLETED, "Completed"), "InProgress"),
        ("failed backup", backup_in(phase::FAILED, "Failed"), "Failed"),
        ("partially failed backup", backup_in(phase::PARTIALLY_FAILED, "PartiallyFailed"), "Failed"),
        ("restore waiting for its namespace", restore_in(phase::PENDING, "NamespaceMissing"), "InProgress"),
        ("restore in progress", restore_in(phase::IN_PROGRESS, "InProgress"), "InProgress"),
        ("completed restore", restore_in(phase::COMPLETED, "Completed"), "Current"),
        ("failed restore", restore_in(phase::FAILED, "BackupNotFound"), "Failed"),
        ("partially failed restore", restore_in(phase::PARTIALLY_FAILED, "PartiallyFailed"), "Failed"),
    ]);
}

#[test]
fn kstatus_messages_carry_berth_messages() {
    let mut waiting = no_databases();
    waiting.missing.push("orders-db".into());
    let results = kstatus(&[app_from_rollout(1, 1, &deployment(2, 2, false), &waiting), {
        let r: Restore = parse(
            "apiVersion: berth.dev/v1alpha1\nkind: Restore\nmetadata: {name: r, namespace: shop}\nspec: {backupName: gone}\n",
        );
        let status = RestoreStatus {
            observed_generation: Some(1),
            conditions: merged(
                &phase::conditions(phase::FAILED, "BackupNotFound", "Backup \"gone\" does not exist"),
                1,
            ),
            phase: Some(phase::FAILED.into()),
            ..RestoreStatus::default()
        };
        with_status(r, 1, status)
    }]);
    assert_eq!(results[0].0, "InProgress");
    assert!(results[0].1.contains("DatabaseInstance \"orders-db\" does not exist"), "{:?}", results[0]);
    assert_eq!(results[1], ("Failed".to_string(), "Backup \"gone\" does not exist".to_string()));
}

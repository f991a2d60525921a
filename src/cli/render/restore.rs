//! A Restore's progress and outcome, and the plan of a dry run.

use std::fmt::Write as _;

use jiff::Timestamp;
use kube::ResourceExt;

use super::{ago, namespace_of, size};
use crate::api::{Backup, BackupPolicy, Restore};

/// A Restore's progress while waiting: phase, stage, what it waits for.
pub fn restore_progress(r: &Restore) -> String {
    let status = r.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("New");
    let stage = status.stage.as_ref().map(|s| format!(" at stage {s}")).unwrap_or_default();
    let message = status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| format!(": {}", c.message));
    format!("{phase}{stage}{}", message.unwrap_or_default())
}

/// The last line of `restore create --wait`.
pub fn restore_outcome(r: &Restore) -> String {
    let status = r.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("New");
    let from = status.backup_name.as_ref().map(|b| format!(" from Backup {b}")).unwrap_or_default();
    let mut out = format!(
        "Restore {}/{} {phase}{from}: {} created, {} updated, {} skipped, {} errors\n",
        namespace_of(r),
        r.name_any(),
        status.created.unwrap_or(0),
        status.updated.unwrap_or(0),
        status.skipped.unwrap_or(0),
        status.errors.len()
    );
    for e in &status.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    if phase == "Failed"
        && let Some(c) = status.conditions.iter().find(|c| c.type_ == "Ready")
    {
        let _ = writeln!(out, "  {}: {}", c.reason, c.message);
    }
    out
}

/// Whether a target namespace of a restore exists, as far as the CLI could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceCheck {
    Exists,
    Missing,
    /// The user may not read Namespaces.
    Unknown,
}

/// What a dry run knows: the Restore as it would be created, the Backup it resolves to, that
/// Backup's policy (if it still exists) and the target namespaces.
pub struct PlanInput<'a> {
    pub restore: &'a Restore,
    pub backup: &'a Backup,
    pub policy: Option<&'a BackupPolicy>,
    pub targets: Vec<(String, NamespaceCheck)>,
}

/// The plan of `restore create --dry-run`, from the Backup's status (its items and snapshot
/// ids) and its policy's scope; the repository is not opened.
pub fn restore_plan(input: &PlanInput, now: Timestamp) -> String {
    let (restore, backup) = (input.restore, input.backup);
    let status = backup.status.clone().unwrap_or_default();
    let source = namespace_of(backup);
    let target = crate::resources::restore::target_namespace(restore, &source);
    let mut out = String::from("Dry run: nothing was created. The restore would:\n");
    let when = status.completion_time.as_ref().map(|t| format!(", finished {}", ago(t, now))).unwrap_or_default();
    let by_policy =
        restore.spec.policy_name.as_ref().map(|p| format!(" (the newest Completed Backup of {p})")).unwrap_or_default();
    let _ = writeln!(
        out,
        "  read Backup {source}/{}{by_policy}: {}{when}",
        backup.name_any(),
        status.phase.as_deref().unwrap_or("New")
    );
    let into = if target == source {
        format!("namespace {target} (in place)")
    } else {
        format!("namespace {target} (mapped from {source})")
    };
    let _ = writeln!(out, "  restore into {into}");
    for (ns, check) in &input.targets {
        match check {
            NamespaceCheck::Exists => {}
            NamespaceCheck::Missing => {
                let _ = writeln!(
                    out,
                    "  BLOCKED: namespace {ns} does not exist; Berth does not create namespaces, create it first (the Restore waits for it)"
                );
            }
            NamespaceCheck::Unknown => {
                let _ = writeln!(out, "  (could not check that namespace {ns} exists: you may not read Namespaces)");
            }
        }
    }
    let kinds = |list: &[String]| list.join(", ");
    match (restore.spec.include_kinds.is_empty(), restore.spec.exclude_kinds.is_empty()) {
        (true, true) => {}
        (false, _) => {
            let _ = writeln!(out, "  restore only objects of the kinds {}", kinds(&restore.spec.include_kinds));
        }
        (true, false) => {}
    }
    if !restore.spec.exclude_kinds.is_empty() {
        let _ = writeln!(out, "  never restore objects of the kinds {}", kinds(&restore.spec.exclude_kinds));
    }
    let _ = writeln!(out, "In order:");
    let mut step = 0;
    let mut next = |out: &mut String, text: String| {
        step += 1;
        let _ = writeln!(out, "  {step}. {text}");
    };
    let resources = status.items.iter().find(|i| i.name == "resources" && i.phase == "Completed");
    let filtered = !restore.spec.include_kinds.is_empty() || !restore.spec.exclude_kinds.is_empty();
    let allowed = if filtered { " that the kinds allow" } else { "" };
    match resources {
        Some(item) => {
            let held = match input.policy {
                Some(p) => {
                    let mut kinds: Vec<String> =
                        ["AppEnvironments", "DatabaseInstances and their Secrets", "the BackupPolicy"]
                            .map(String::from)
                            .into();
                    kinds.extend(p.spec.scope.extra_resources.iter().cloned());
                    format!(" (the backup holds its {})", kinds.join(", "))
                }
                None => String::new(),
            };
            next(
                &mut out,
                format!(
                    "create the objects of {source}{allowed}{held}, from snapshot {} ({}): Secrets and ConfigMaps, then PVCs, then DatabaseInstances (and wait until they are Ready); objects that exist are left alone",
                    short(item.snapshot.as_deref()),
                    size(item.bytes.unwrap_or(0))
                ),
            );
        }
        None => next(&mut out, "no Kubernetes objects: the backup's resources item did not complete".into()),
    }
    for item in status.items.iter().filter(|i| i.phase == "Completed") {
        let snapshot = format!("snapshot {} ({})", short(item.snapshot.as_deref()), size(item.bytes.unwrap_or(0)));
        if let Some(db) = item.name.strip_prefix("database/") {
            next(&mut out, format!("load the data of DatabaseInstance {target}/{db} from {snapshot}"));
        }
    }
    for item in status.items.iter().filter(|i| i.phase == "Completed") {
        let snapshot = format!("snapshot {} ({})", short(item.snapshot.as_deref()), size(item.bytes.unwrap_or(0)));
        if let Some(pvc) = item.name.strip_prefix("volume/") {
            next(&mut out, format!("restore the files of PersistentVolumeClaim {target}/{pvc} from {snapshot}"));
        }
    }
    next(&mut out, format!("create the AppEnvironments and the remaining objects{allowed} last"));
    let skipped: Vec<_> = status.items.iter().filter(|i| i.phase != "Completed").collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "Not in the backup (these items did not complete):");
        for item in skipped {
            let _ = writeln!(out, "  {}: {}", item.name, item.error.as_deref().unwrap_or(item.phase.as_str()));
        }
    }
    let _ = writeln!(
        out,
        "Never restored: Pods, ReplicaSets and other controller output, objects Berth recreates, Backups and Restores; BackupPolicies only when --include-kinds names them."
    );
    out
}

/// The first 12 hex digits of a snapshot id, as `git` abbreviates.
fn short(id: Option<&str>) -> &str {
    id.map_or("?", |s| &s[..s.len().min(12)])
}

//! `berth status`: the report of each namespace (pure: from the fetched objects) and its tree.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde::Serialize;

use super::{Mark, Node, ago, condition, duration, is_problem, namespace_of, size, tree};
use crate::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
use crate::resources::appenvironment::{url as app_url, validate as validate_app};
use crate::resources::backuppolicy::{schedule_interval, validate as validate_policy};

/// The objects `status` fetched (one namespace or all).
#[derive(Clone, Debug, Default)]
pub struct StatusInput {
    pub apps: Vec<AppEnvironment>,
    pub databases: Vec<DatabaseInstance>,
    pub policies: Vec<BackupPolicy>,
    pub backups: Vec<Backup>,
    pub restores: Vec<Restore>,
}

/// `status`'s report; `-o json` prints it as it is.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub namespaces: Vec<NamespaceReport>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    pub name: String,
    pub app_environments: Vec<AppReport>,
    /// DatabaseInstances no AppEnvironment of the namespace names.
    pub other_database_instances: Vec<DatabaseReport>,
    /// BackupPolicies whose selector includes none of the namespace's AppEnvironments.
    pub other_backup_policies: Vec<PolicyReport>,
    pub last_restore: Option<RestoreReport>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: Timestamp,
}

impl From<&Condition> for ConditionReport {
    fn from(c: &Condition) -> Self {
        ConditionReport {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppReport {
    pub name: String,
    pub tier: String,
    pub ready: Option<bool>,
    pub conditions: Vec<ConditionReport>,
    pub ready_replicas: i32,
    /// `2`, or `2-5` when an autoscaler decides.
    pub desired_replicas: String,
    pub image: String,
    pub url: Option<String>,
    pub database_instances: Vec<DatabaseReport>,
    pub backup_policies: Vec<PolicyReport>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseReport {
    pub name: String,
    /// False for a name an AppEnvironment lists that does not exist.
    pub exists: bool,
    pub engine: String,
    pub version: String,
    pub running_version: Option<String>,
    pub ready: Option<bool>,
    pub conditions: Vec<ConditionReport>,
    pub requested_storage: String,
    pub provisioned: Vec<String>,
    /// Size of the database's newest dump (the CLI does not connect to databases; see README).
    pub last_dump: Option<DumpSize>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DumpSize {
    pub backup: String,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub name: String,
    pub schedule: String,
    pub time_zone: Option<String>,
    pub suspended: bool,
    /// The schedule's interval now, in seconds (absent when the spec is invalid).
    pub interval_seconds: Option<i64>,
    pub last_successful_backup: Option<String>,
    pub last_success_time: Option<Timestamp>,
    pub backup_fresh: Option<ConditionReport>,
    pub ready: Option<ConditionReport>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub name: String,
    pub phase: Option<String>,
    pub backup: Option<String>,
    pub created: Timestamp,
    pub objects_created: u32,
    pub objects_updated: u32,
    pub objects_skipped: u32,
    pub errors: Vec<String>,
    pub message: Option<String>,
}

fn created(meta: &kube::api::ObjectMeta) -> Timestamp {
    meta.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// Builds the report: per namespace (sorted), each AppEnvironment with the DatabaseInstances
/// it names and the BackupPolicies that include it, then what no app claims, and the newest
/// Restore.
pub fn status_report(input: &StatusInput, now: Timestamp) -> StatusReport {
    let mut namespaces: Vec<String> = input
        .apps
        .iter()
        .map(namespace_of)
        .chain(input.databases.iter().map(namespace_of))
        .chain(input.policies.iter().map(namespace_of))
        .chain(input.restores.iter().map(namespace_of))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let namespaces = namespaces
        .into_iter()
        .map(|ns| {
            let apps = in_namespace(&input.apps, &ns);
            let dbs = in_namespace(&input.databases, &ns);
            let policies = in_namespace(&input.policies, &ns);
            let backups = in_namespace(&input.backups, &ns);
            let last_restore = in_namespace(&input.restores, &ns)
                .into_iter()
                .max_by_key(|r| (created(&r.metadata), r.name_any()))
                .map(restore_report);
            let app_reports: Vec<AppReport> =
                apps.iter().map(|app| app_report(app, &dbs, &policies, &backups, now)).collect();
            let named: Vec<&str> = apps.iter().flat_map(|a| a.spec.databases.iter().map(|d| d.name.as_str())).collect();
            let covered: Vec<String> =
                app_reports.iter().flat_map(|a| a.backup_policies.iter().map(|p| p.name.clone())).collect();
            NamespaceReport {
                app_environments: app_reports,
                other_database_instances: dbs
                    .iter()
                    .filter(|d| !named.contains(&d.name_any().as_str()))
                    .map(|d| database_report(&d.name_any(), Some(d), &backups))
                    .collect(),
                other_backup_policies: policies
                    .iter()
                    .filter(|p| !covered.contains(&p.name_any()))
                    .map(|p| policy_report(p, &backups, now))
                    .collect(),
                last_restore,
                name: ns,
            }
        })
        .collect();
    StatusReport { namespaces }
}

/// The objects of `ns`, by name.
fn in_namespace<'a, K: ResourceExt>(objects: &'a [K], ns: &str) -> Vec<&'a K> {
    let mut out: Vec<&K> = objects.iter().filter(|o| namespace_of(*o) == ns).collect();
    out.sort_by_key(|o| o.name_any());
    out
}

fn app_report(
    app: &AppEnvironment,
    dbs: &[&DatabaseInstance],
    policies: &[&BackupPolicy],
    backups: &[&Backup],
    now: Timestamp,
) -> AppReport {
    let status = app.status.clone().unwrap_or_default();
    let valid = validate_app(app).ok();
    // The validated spec resolves the tier's defaults; an invalid one shows what it says.
    let desired = match (valid.as_ref().map(|v| (v.replicas, &v.autoscaling)), &app.spec.autoscaling) {
        (Some((Some(replicas), _)), _) => replicas.to_string(),
        (Some((None, Some(a))), _) => format!("{}-{}", a.min_replicas, a.max_replicas),
        (_, Some(a)) => format!("{}-{}", a.min_replicas.unwrap_or(1), a.max_replicas),
        _ => app.spec.replicas.map_or_else(|| "?".into(), |r| r.to_string()),
    };
    let labels = app.labels().clone();
    AppReport {
        name: app.name_any(),
        tier: app.spec.tier.as_str().into(),
        ready: condition(&status.conditions, "Ready").map(|c| c.status == "True"),
        conditions: status.conditions.iter().map(ConditionReport::from).collect(),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        desired_replicas: desired,
        image: status.image.clone().unwrap_or_else(|| app.spec.image.clone()),
        url: status.url.clone().or_else(|| valid.as_ref().and_then(app_url)),
        database_instances: app
            .spec
            .databases
            .iter()
            .map(|r| database_report(&r.name, dbs.iter().copied().find(|d| d.name_any() == r.name), backups))
            .collect(),
        backup_policies: policies
            .iter()
            .filter(|p| includes(p, &labels))
            .map(|p| policy_report(p, backups, now))
            .collect(),
    }
}

/// Whether the policy's `spec.scope.selector` includes an object with `labels`.
fn includes(policy: &BackupPolicy, labels: &BTreeMap<String, String>) -> bool {
    match &policy.spec.scope.selector {
        None => true,
        Some(selector) => Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels)),
    }
}

fn is_completed(b: &Backup) -> bool {
    matches!(b.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Completed" | "PartiallyFailed"))
}

fn completion(b: &Backup) -> Option<Timestamp> {
    b.status.as_ref()?.completion_time.as_ref().map(|t| t.0)
}

fn database_report(name: &str, db: Option<&DatabaseInstance>, backups: &[&Backup]) -> DatabaseReport {
    let item = format!("database/{name}");
    let last_dump = backups
        .iter()
        .filter(|b| is_completed(b))
        .filter_map(|b| {
            let it = b.status.as_ref()?.items.iter().find(|i| i.name == item && i.phase == "Completed")?;
            Some((completion(b), b.name_any(), it.bytes.unwrap_or(0)))
        })
        .max()
        .map(|(_, backup, bytes)| DumpSize { backup, bytes });
    let Some(db) = db else {
        return DatabaseReport { name: name.into(), exists: false, last_dump, ..Default::default() };
    };
    let status = db.status.clone().unwrap_or_default();
    DatabaseReport {
        name: name.into(),
        exists: true,
        engine: serde_json::to_value(db.spec.engine)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        version: db.spec.version.clone(),
        running_version: status.current_version.clone(),
        ready: condition(&status.conditions, "Ready").map(|c| c.status == "True"),
        conditions: status.conditions.iter().map(ConditionReport::from).collect(),
        requested_storage: db.spec.storage.size.clone(),
        provisioned: status.provisioned.clone(),
        last_dump,
    }
}

fn policy_report(policy: &BackupPolicy, backups: &[&Backup], now: Timestamp) -> PolicyReport {
    let status = policy.status.clone().unwrap_or_default();
    let last = status.last_successful_backup.clone();
    let last_time =
        last.as_ref().and_then(|name| backups.iter().find(|b| b.name_any() == *name)).and_then(|b| completion(b));
    PolicyReport {
        name: policy.name_any(),
        schedule: policy.spec.schedule.clone(),
        time_zone: policy.spec.time_zone.clone(),
        suspended: policy.spec.suspend,
        interval_seconds: validate_policy(policy).ok().map(|v| schedule_interval(&v, now).as_secs()),
        last_successful_backup: last,
        last_success_time: last_time,
        backup_fresh: condition(&status.conditions, "BackupFresh").as_ref().map(ConditionReport::from),
        ready: condition(&status.conditions, "Ready").as_ref().map(ConditionReport::from),
    }
}

fn restore_report(r: &Restore) -> RestoreReport {
    let status = r.status.clone().unwrap_or_default();
    RestoreReport {
        name: r.name_any(),
        phase: status.phase.clone(),
        backup: status.backup_name.clone().or_else(|| r.spec.backup_name.clone()),
        created: created(&r.metadata),
        objects_created: status.created.unwrap_or(0),
        objects_updated: status.updated.unwrap_or(0),
        objects_skipped: status.skipped.unwrap_or(0),
        errors: status.errors.clone(),
        message: condition(&status.conditions, "Ready").map(|c| c.message),
    }
}

fn conditions_node(conditions: &[ConditionReport]) -> Vec<Node> {
    if conditions.is_empty() {
        return vec![Node::new("conditions: none yet (the operator has not reconciled it)", Mark::Pending)];
    }
    let summary: Vec<String> = conditions.iter().map(|c| format!("{}={}", c.type_, c.status)).collect();
    let problems: Vec<&ConditionReport> = conditions.iter().filter(|c| is_problem(&as_condition(c))).collect();
    let mark = if problems.is_empty() { Mark::Plain } else { Mark::Problem };
    let mut out = vec![Node::new(format!("conditions: {}", summary.join(", ")), mark)];
    for c in problems {
        out.push(Node::new(format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message), Mark::Problem));
    }
    out
}

fn as_condition(c: &ConditionReport) -> Condition {
    Condition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: None,
        last_transition_time: Time(c.last_transition_time),
    }
}

fn readiness(ready: Option<bool>) -> (&'static str, Mark) {
    match ready {
        Some(true) => ("Ready", Mark::Plain),
        Some(false) => ("not Ready", Mark::Problem),
        None => ("not reconciled yet", Mark::Pending),
    }
}

fn app_node(app: &AppReport, last_restore: Option<&RestoreReport>, now: Timestamp) -> Node {
    let (ready, mark) = readiness(app.ready);
    let replicas_short = app.desired_replicas.parse::<i32>().is_ok_and(|d| app.ready_replicas < d);
    let mark = if replicas_short && mark == Mark::Plain { Mark::Pending } else { mark };
    let mut children = vec![
        Node::new(format!("image {}", app.image), Mark::Plain),
        Node::new(format!("url {}", app.url.as_deref().unwrap_or("none (no spec.ingress host)")), Mark::Plain),
    ];
    children.extend(conditions_node(&app.conditions));
    children.extend(app.database_instances.iter().map(database_node));
    if app.backup_policies.is_empty() {
        children.push(Node::new("BackupPolicy: none includes this app (it is not backed up)", Mark::Problem));
    }
    children.extend(app.backup_policies.iter().map(|p| policy_node(p, now)));
    children.push(restore_node(last_restore, now));
    Node::new(
        format!(
            "AppEnvironment {} ({}): {ready}, {}/{} replicas ready",
            app.name, app.tier, app.ready_replicas, app.desired_replicas
        ),
        mark,
    )
    .with(children)
}

fn database_node(db: &DatabaseReport) -> Node {
    if !db.exists {
        return Node::new(
            format!("DatabaseInstance {}: not found (spec.databases names it; create it or fix the name)", db.name),
            Mark::Problem,
        );
    }
    let (ready, mark) = readiness(db.ready);
    let version = match &db.running_version {
        Some(running) if *running != db.version => format!("{} {} (running {running})", db.engine, db.version),
        _ => format!("{} {}", db.engine, db.version),
    };
    let mut children = vec![Node::new(format!("storage {} requested", db.requested_storage), Mark::Plain)];
    children.push(Node::new(
        match db.last_dump.as_ref() {
            Some(d) => format!("size {} in its newest dump (Backup {})", size(d.bytes), d.backup),
            None => "size unknown: no completed dump yet".into(),
        },
        Mark::Plain,
    ));
    children.push(Node::new(
        if db.provisioned.is_empty() {
            "provisioned: nothing yet".into()
        } else {
            format!("provisioned: {}", db.provisioned.join(", "))
        },
        Mark::Plain,
    ));
    if db.ready != Some(true) {
        // The summary line only when there is nothing else to say; otherwise the problems.
        let skip = usize::from(!db.conditions.is_empty());
        children.extend(conditions_node(&db.conditions).into_iter().skip(skip));
    }
    Node::new(format!("DatabaseInstance {}: {ready}, {version}", db.name), mark).with(children)
}

fn policy_node(p: &PolicyReport, now: Timestamp) -> Node {
    let every =
        p.interval_seconds.map(|s| format!(", every {}", duration(SignedDuration::from_secs(s)))).unwrap_or_default();
    let zone = p.time_zone.as_ref().map(|z| format!(" {z}")).unwrap_or_default();
    let suspended = if p.suspended { ", suspended" } else { "" };
    let mut children = Vec::new();
    let last = match (&p.last_successful_backup, &p.last_success_time) {
        (Some(name), Some(at)) => {
            let age = now.duration_since(*at);
            let ratio = p.interval_seconds.filter(|s| *s > 0).map(|s| age.as_secs() as f64 / s as f64);
            let against = ratio.map(|r| format!(" ({r:.1} schedule intervals)")).unwrap_or_default();
            format!("last success {name}, {} ago{against}", duration(age))
        }
        (Some(name), None) => format!("last success {name}"),
        _ => "no successful backup yet".into(),
    };
    children.push(Node::new(last, Mark::Plain));
    let mark = match &p.backup_fresh {
        Some(c) => {
            let mark = if c.status == "True" { Mark::Plain } else { Mark::Problem };
            children.push(Node::new(format!("BackupFresh={} {}: {}", c.status, c.reason, c.message), mark));
            mark
        }
        None => {
            children.push(Node::new("BackupFresh not reported yet", Mark::Pending));
            Mark::Pending
        }
    };
    let mark = match &p.ready {
        Some(c) if c.status != "True" => {
            children.push(Node::new(format!("Ready=False {}: {}", c.reason, c.message), Mark::Problem));
            Mark::Problem
        }
        _ => mark,
    };
    Node::new(format!("BackupPolicy {}: schedule \"{}\"{zone}{every}{suspended}", p.name, p.schedule), mark)
        .with(children)
}

fn restore_node(r: Option<&RestoreReport>, now: Timestamp) -> Node {
    let Some(r) = r else { return Node::new("last Restore: none", Mark::Plain) };
    let phase = r.phase.as_deref().unwrap_or("New");
    let mark = match phase {
        "Completed" => Mark::Plain,
        "Failed" | "PartiallyFailed" => Mark::Problem,
        _ => Mark::Pending,
    };
    let from = r.backup.as_ref().map(|b| format!(" from Backup {b}")).unwrap_or_default();
    let mut children = vec![Node::new(
        format!("objects: {} created, {} updated, {} skipped", r.objects_created, r.objects_updated, r.objects_skipped),
        Mark::Plain,
    )];
    if phase != "Completed"
        && let Some(m) = &r.message
    {
        children.push(Node::new(m.clone(), mark));
    }
    children.extend(r.errors.iter().map(|e| Node::new(format!("error: {e}"), Mark::Problem)));
    Node::new(format!("last Restore {}: {phase}{from}, created {}", r.name, ago(&Time(r.created), now)), mark)
        .with(children)
}

/// `status` as text: one tree per namespace.
pub fn status_text(report: &StatusReport, now: Timestamp, colour: bool) -> String {
    if report.namespaces.is_empty() {
        return "No AppEnvironments, DatabaseInstances, BackupPolicies or Restores found.\n".into();
    }
    let mut out = String::new();
    for ns in &report.namespaces {
        let mut children: Vec<Node> =
            ns.app_environments.iter().map(|a| app_node(a, ns.last_restore.as_ref(), now)).collect();
        for db in &ns.other_database_instances {
            let mut node = database_node(db);
            node.text.push_str(" (no AppEnvironment names it)");
            children.push(node);
        }
        for p in &ns.other_backup_policies {
            let mut node = policy_node(p, now);
            node.text.push_str(" (includes no AppEnvironment)");
            children.push(node);
        }
        if ns.app_environments.is_empty() {
            children.push(restore_node(ns.last_restore.as_ref(), now));
        }
        out.push_str(&tree(&Node::new(format!("Namespace {}", ns.name), Mark::Heading).with(children), colour));
    }
    out
}

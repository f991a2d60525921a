//! Pure formatting of what the commands fetched: the `status` report (text tree and JSON), a
//! Backup's progress and description, its recorded errors, a Restore's progress and the plan
//! of a dry run. Nothing here talks to the cluster or reads the clock: `now` is an argument,
//! so every output is reproducible in unit tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde::Serialize;

use crate::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
use crate::resources::appenvironment::{url as app_url, validate as validate_app};
use crate::resources::backup::job_name;
use crate::resources::backuppolicy::{schedule_interval, validate as validate_policy};

// ---------------------------------------------------------------------------------------------
// Small formatters

/// Bytes as people read them: `512 B`, `4.1 KiB`, `2.0 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in its two largest units: `45s`, `5m 3s`, `2h 10m`, `3d 4h`.
pub fn duration(d: SignedDuration) -> String {
    let secs = d.as_secs().max(0);
    let parts = [(secs / 86_400, "d"), (secs % 86_400 / 3600, "h"), (secs % 3600 / 60, "m"), (secs % 60, "s")];
    let first = parts.iter().position(|(v, _)| *v != 0).unwrap_or(3);
    parts[first..]
        .iter()
        .take(2)
        .filter(|(v, _)| *v != 0 || first == 3)
        .map(|(v, u)| format!("{v}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How long ago `t` was: `5m ago`.
pub fn ago(t: &Time, now: Timestamp) -> String {
    format!("{} ago", duration(now.duration_since(t.0)))
}

const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// How a line is marked: problems red and work in progress yellow on a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mark {
    #[default]
    Plain,
    Heading,
    Pending,
    Problem,
}

fn paint(text: &str, mark: Mark, colour: bool) -> String {
    let code = match mark {
        _ if !colour => return text.to_string(),
        Mark::Plain => return text.to_string(),
        Mark::Heading => BOLD,
        Mark::Pending => YELLOW,
        Mark::Problem => RED,
    };
    format!("{code}{text}{RESET}")
}

/// One line of a tree and the lines under it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub text: String,
    pub mark: Mark,
    pub children: Vec<Node>,
}

impl Node {
    fn new(text: impl Into<String>, mark: Mark) -> Node {
        Node { text: text.into(), mark, children: Vec::new() }
    }

    fn with(mut self, children: Vec<Node>) -> Node {
        self.children = children;
        self
    }
}

/// A root node and its children drawn with box-drawing branches.
pub fn tree(root: &Node, colour: bool) -> String {
    fn children(out: &mut String, nodes: &[Node], prefix: &str, colour: bool) {
        for (i, node) in nodes.iter().enumerate() {
            let last = i + 1 == nodes.len();
            let (branch, next) = if last { ("└── ", "    ") } else { ("├── ", "│   ") };
            let _ = writeln!(out, "{prefix}{branch}{}", paint(&node.text, node.mark, colour));
            children(out, &node.children, &format!("{prefix}{next}"), colour);
        }
    }
    let mut out = format!("{}\n", paint(&root.text, root.mark, colour));
    children(&mut out, &root.children, "", colour);
    out
}

fn condition(conditions: &[Condition], type_: &str) -> Option<Condition> {
    conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// Whether a condition reports a problem: not Ready, Degraded, Stalled or a stale backup.
fn is_problem(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Ready" | "BackupFresh" => c.status != "True",
        "Degraded" | "Stalled" => c.status == "True",
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// `berth status`

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

fn namespace_of<K: ResourceExt>(obj: &K) -> String {
    obj.namespace().unwrap_or_default()
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
            let in_ns = |o: &dyn Fn() -> String| o() == ns;
            let mut apps: Vec<&AppEnvironment> = input.apps.iter().filter(|a| in_ns(&|| namespace_of(*a))).collect();
            apps.sort_by_key(|a| a.name_any());
            let mut dbs: Vec<&DatabaseInstance> =
                input.databases.iter().filter(|d| in_ns(&|| namespace_of(*d))).collect();
            dbs.sort_by_key(|d| d.name_any());
            let mut policies: Vec<&BackupPolicy> =
                input.policies.iter().filter(|p| in_ns(&|| namespace_of(*p))).collect();
            policies.sort_by_key(|p| p.name_any());
            let backups: Vec<&Backup> = input.backups.iter().filter(|b| in_ns(&|| namespace_of(*b))).collect();
            let last_restore = input
                .restores
                .iter()
                .filter(|r| in_ns(&|| namespace_of(*r)))
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

fn app_report(
    app: &AppEnvironment,
    dbs: &[&DatabaseInstance],
    policies: &[&BackupPolicy],
    backups: &[&Backup],
    now: Timestamp,
) -> AppReport {
    let status = app.status.clone().unwrap_or_default();
    let valid = validate_app(app).ok();
    let desired = match (&valid, &app.spec.autoscaling) {
        (Some(v), _) if v.replicas.is_some() => v.replicas.unwrap_or_default().to_string(),
        (Some(v), _) if v.autoscaling.is_some() => {
            let a = v.autoscaling.as_ref().expect("checked");
            format!("{}-{}", a.min_replicas, a.max_replicas)
        }
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

// ---------------------------------------------------------------------------------------------
// Backups

/// Items done of total and bytes read so far, e.g. `InProgress: 1 of 3 items done, 4.1 KiB`.
pub fn backup_progress(b: &Backup) -> String {
    let status = b.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("New");
    let total = status.items.len();
    let done = status.items.iter().filter(|i| matches!(i.phase.as_str(), "Completed" | "Failed")).count();
    let failed = status.items.iter().filter(|i| i.phase == "Failed").count();
    let bytes: u64 = status.items.iter().filter_map(|i| i.bytes).sum();
    let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
    if total == 0 && status.phase.is_some() && phase != "New" {
        return phase.to_string();
    }
    if total == 0 {
        return format!("{phase}: waiting for the operator to list the items");
    }
    format!("{phase}: {done} of {total} items done{failed}, {} backed up", size(bytes))
}

/// The last line of `backup create --wait`: the phase and, when it failed, why.
pub fn backup_outcome(b: &Backup) -> String {
    let status = b.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("New");
    let took = match (&status.start_time, &status.completion_time) {
        (Some(s), Some(c)) => format!(" in {}", duration(c.0.duration_since(s.0))),
        _ => String::new(),
    };
    let mut out = format!(
        "Backup {}/{} {phase}: {} items, {}{took}\n",
        namespace_of(b),
        b.name_any(),
        status.items.len(),
        size(status.bytes.unwrap_or_else(|| status.items.iter().filter_map(|i| i.bytes).sum()))
    );
    for item in status.items.iter().filter(|i| i.error.is_some()) {
        let _ = writeln!(out, "  {}: {}", item.name, item.error.as_deref().unwrap_or_default());
    }
    // A Backup that failed before its items (storage, policy) says why in its condition.
    if phase != "Completed"
        && !status.items.iter().any(|i| i.error.is_some())
        && let Some(c) = status.conditions.iter().find(|c| c.type_ == "Ready")
    {
        let _ = writeln!(out, "  {}", c.message);
    }
    if phase != "Completed" {
        let _ = writeln!(out, "Details: berth backup describe {} -n {}", b.name_any(), namespace_of(b));
    }
    out
}

/// `backup describe`: the Backup, then one block per item (size, duration from its agent Job
/// while the Job exists, snapshot id, error).
pub fn backup_describe(b: &Backup, jobs: &[Job], now: Timestamp, colour: bool) -> String {
    let status = b.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("New");
    let phase_mark = match phase {
        "Completed" => Mark::Plain,
        "Failed" | "PartiallyFailed" => Mark::Problem,
        _ => Mark::Pending,
    };
    let mut out = String::new();
    let line = |out: &mut String, key: &str, value: String| {
        let _ = writeln!(out, "{key:<13}{value}");
    };
    line(&mut out, "Name:", format!("{}/{}", namespace_of(b), b.name_any()));
    line(&mut out, "Policy:", b.spec.policy_name.clone());
    line(&mut out, "Phase:", paint(phase, phase_mark, colour));
    if b.labels().get("berth.dev/synced").is_some_and(|v| v == "true") {
        line(&mut out, "Origin:", "found in the bucket (run by another cluster)".into());
    }
    if let Some(t) = &status.start_time {
        line(&mut out, "Started:", format!("{} ({})", t.0, ago(t, now)));
    }
    if let Some(t) = &status.completion_time {
        line(&mut out, "Completed:", format!("{} ({})", t.0, ago(t, now)));
    }
    if let (Some(s), Some(c)) = (&status.start_time, &status.completion_time) {
        line(&mut out, "Duration:", duration(c.0.duration_since(s.0)));
    }
    let total = status.bytes.unwrap_or_else(|| status.items.iter().filter_map(|i| i.bytes).sum());
    line(&mut out, "Size:", format!("{} ({total} bytes)", size(total)));
    line(
        &mut out,
        "Delete data:",
        if b.spec.delete_data { "yes, with this object" } else { "no, kept in the bucket" }.into(),
    );
    if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Ready") {
        line(&mut out, "Message:", c.message.clone());
    }
    let _ = writeln!(out, "Items:");
    if status.items.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for item in &status.items {
        let mark = match item.phase.as_str() {
            "Completed" => Mark::Plain,
            "Failed" => Mark::Problem,
            _ => Mark::Pending,
        };
        let _ = writeln!(out, "  {}: {}", item.name, paint(&item.phase, mark, colour));
        if let Some(bytes) = item.bytes {
            let _ = writeln!(out, "    size:     {} ({bytes} bytes)", size(bytes));
        }
        let took = match item.name.as_str() {
            "resources" => "exported by the operator (no agent Job)".to_string(),
            name => match jobs.iter().find(|j| j.name_any() == job_name(&b.name_any(), name)) {
                Some(job) => job_duration(job, now),
                None => "unknown: its agent Job is gone (Jobs are deleted a day after they finish)".into(),
            },
        };
        let _ = writeln!(out, "    duration: {took}");
        if let Some(s) = &item.snapshot {
            let _ = writeln!(out, "    snapshot: {s}");
        }
        if let Some(e) = &item.error {
            let _ = writeln!(out, "    error:    {}", paint(e, Mark::Problem, colour));
        }
    }
    out
}

fn job_duration(job: &Job, now: Timestamp) -> String {
    let status = job.status.clone().unwrap_or_default();
    match (status.start_time, status.completion_time) {
        (Some(s), Some(c)) => format!("{} (Job {})", duration(c.0.duration_since(s.0)), job.name_any()),
        (Some(s), None) if status.failed.unwrap_or(0) > 0 && status.active.unwrap_or(0) == 0 => {
            format!("failed after running since {} (Job {})", s.0, job.name_any())
        }
        (Some(s), None) => format!("running for {} (Job {})", duration(now.duration_since(s.0)), job.name_any()),
        _ => format!("not started (Job {})", job.name_any()),
    }
}

/// `backup logs` once the agent Jobs are gone: the per-item errors recorded in status.
pub fn backup_recorded_errors(b: &Backup) -> String {
    let status = b.status.clone().unwrap_or_default();
    let mut out = format!(
        "The agent Jobs of Backup {}/{} no longer exist (Jobs are deleted a day after they finish), so their logs are gone.\nThe per-item errors recorded in its status:\n",
        namespace_of(b),
        b.name_any()
    );
    if status.items.is_empty() {
        out.push_str("  no items recorded\n");
    }
    for item in &status.items {
        let what = match (&item.error, item.phase.as_str()) {
            (Some(e), _) => e.clone(),
            (None, "Completed") => "no error".into(),
            (None, phase) => format!("no error recorded ({phase})"),
        };
        let _ = writeln!(out, "  {}: {what}", item.name);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Restores

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

#[cfg(test)]
mod tests;

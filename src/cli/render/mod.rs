//! Pure formatting of what the commands fetched: the `status` report (text tree and JSON), a
//! Backup's progress and description, its recorded errors, a Restore's progress and the plan
//! of a dry run. Nothing here talks to the cluster or reads the clock: `now` is an argument,
//! so every output is reproducible in unit tests.

mod backup;
mod restore;
mod status;

pub use backup::{backup_describe, backup_outcome, backup_progress, backup_recorded_errors};
pub use restore::{NamespaceCheck, PlanInput, restore_outcome, restore_plan, restore_progress};
pub use status::{
    AppReport, ConditionReport, DatabaseReport, DumpSize, NamespaceReport, PolicyReport, RestoreReport, StatusInput,
    StatusReport, status_report, status_text,
};

use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

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

fn namespace_of<K: ResourceExt>(obj: &K) -> String {
    obj.namespace().unwrap_or_default()
}

#[cfg(test)]
mod tests;

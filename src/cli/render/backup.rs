//! A Backup's progress, outcome, description and recorded errors.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use super::{Mark, ago, duration, namespace_of, paint, size};
use crate::api::Backup;
use crate::resources::backup::job_name;

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

//! The waits of a restore and their deadlines: target namespaces that must exist,
//! `spec.timeout`, DatabaseInstances that must become Ready, agent Jobs that must finish; and
//! the messages that say why a wait ended.

use std::time::Duration;

use crate::api::restore::Restore;
use crate::api::validation::FieldError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceState {
    Active,
    /// Being deleted: it refuses new objects.
    Terminating,
    Missing,
}

/// Reason of `Ready=False` while a target namespace does not exist.
pub const NAMESPACE_NOT_FOUND: &str = "NamespaceNotFound";
/// Reason of `Ready=False` while a target namespace is being deleted.
pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";
/// How often a restore waiting for its target namespaces looks again.
pub const NAMESPACE_RECHECK: Duration = Duration::from_secs(30);

fn quoted_list(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// The reason and message of a restore that cannot start (or go on) because a target namespace
/// is missing or being deleted; `None` when every namespace is usable. Berth never creates
/// namespaces: who may create them is the cluster's decision, not a restore's.
pub fn namespace_problem(states: &[(String, NamespaceState)]) -> Option<(&'static str, String)> {
    let with = |wanted: NamespaceState| -> Vec<&str> {
        states.iter().filter(|(_, s)| *s == wanted).map(|(n, _)| n.as_str()).collect()
    };
    let recheck = NAMESPACE_RECHECK.as_secs();
    let missing = with(NamespaceState::Missing);
    if !missing.is_empty() {
        let (noun, verb, them) =
            if missing.len() == 1 { ("namespace", "does", "it") } else { ("namespaces", "do", "them") };
        return Some((
            NAMESPACE_NOT_FOUND,
            format!(
                "target {noun} {} {verb} not exist; create {them} (Berth does not create namespaces): kubectl create \
                 namespace {}. The restore starts once {them} exist{} (checked every {recheck} s)",
                quoted_list(&missing),
                missing.join(" "),
                if missing.len() == 1 { "s" } else { "" },
            ),
        ));
    }
    let terminating = with(NamespaceState::Terminating);
    if !terminating.is_empty() {
        let (noun, verb) = if terminating.len() == 1 { ("namespace", "is") } else { ("namespaces", "are") };
        return Some((
            NAMESPACE_TERMINATING,
            format!(
                "target {noun} {} {verb} being deleted and accept{} no new objects; wait until deletion finishes and \
                 create {} again (Berth does not create namespaces), or map to another namespace in \
                 spec.namespaceMapping (checked every {recheck} s)",
                quoted_list(&terminating),
                if terminating.len() == 1 { "s" } else { "" },
                if terminating.len() == 1 { "it" } else { "them" },
            ),
        ));
    }
    None
}

/// Longest a restore waits for its DatabaseInstances to become Ready (image pulls, initdb of a
/// large volume, RabbitMQ cluster formation) before it fails.
pub const DATABASE_READY_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Reason of a restore that gave up waiting for a DatabaseInstance.
pub const DATABASE_NOT_READY: &str = "DatabaseNotReady";
/// How long a Restore may take when `spec.timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Reason of a restore that ran past `spec.timeout`.
pub const TIMED_OUT: &str = "TimedOut";

/// `spec.timeout` as a duration: hours, minutes and seconds in any order, such as `1h`,
/// `90m` or `2h30m` (the schema admits only that shape); the default when unset.
pub fn timeout(restore: &Restore) -> Result<Duration, FieldError> {
    let Some(text) = restore.spec.timeout.as_deref() else { return Ok(DEFAULT_TIMEOUT) };
    parse_duration(text).filter(|d| !d.is_zero()).ok_or_else(|| {
        FieldError::new(
            "spec.timeout",
            format!("{text:?} is not a duration; write hours, minutes and seconds such as 1h, 90m or 2h30m"),
        )
    })
}

/// `1h`, `90m`, `2h30m`: hours, minutes and seconds in any order.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' if !number.is_empty() => {
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(unit)?)?;
                number.clear();
            }
            _ => return None,
        }
    }
    (number.is_empty() && !text.is_empty()).then_some(Duration::from_secs(total))
}

/// The message of a restore that ran past its timeout.
pub fn timed_out_message(limit: Duration) -> String {
    format!(
        "the restore did not finish within spec.timeout ({} minutes); objects restored so far stay. Look at status.errors and the agent Jobs' pods, then create a new Restore with a longer spec.timeout and existingResourcePolicy: update",
        limit.as_secs() / 60
    )
}

/// Reason of a restore that gave up waiting for its agent Jobs.
pub const JOBS_TIMED_OUT: &str = "JobsTimedOut";

/// Whether a wait that began at `started` has run longer than `limit` at `now`. A wait whose
/// start is unknown has just begun.
pub fn deadline_passed(started: Option<jiff::Timestamp>, now: jiff::Timestamp, limit: Duration) -> bool {
    started.is_some_and(|s| {
        now.duration_since(s) > jiff::SignedDuration::try_from(limit).unwrap_or(jiff::SignedDuration::MAX)
    })
}

/// `30 minutes`, `6 h 15 min`.
fn human(limit: Duration) -> String {
    let minutes = limit.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} minutes"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// Why a restore stops waiting for the DatabaseInstance `namespace/name`: `ready` is its
/// `Ready` condition's reason and message (`None`: the instance does not exist, and
/// `create_error` is why, if the restore recorded one).
pub fn database_not_ready_message(
    namespace: &str,
    name: &str,
    ready: Option<(&str, &str)>,
    create_error: Option<&str>,
) -> String {
    let state = match (ready, create_error) {
        (Some((reason, message)), _) => format!("its Ready condition says {reason}: {message}"),
        (None, Some(e)) => format!("it does not exist: {e}"),
        (None, None) => "it does not exist".to_string(),
    };
    format!(
        "DatabaseInstance {namespace}/{name} did not become Ready within {}: {state}. Its data was not restored; fix \
         the instance (kubectl describe dbi -n {namespace} {name}) and create a new Restore",
        human(DATABASE_READY_DEADLINE)
    )
}

/// Why a restore stops waiting for its agent Jobs.
pub fn jobs_timed_out_message(jobs: &[String], namespace: &str, limit: Duration) -> String {
    format!(
        "agent Jobs {} in namespace {namespace} did not finish within {}; look at their pods (kubectl get pods -n \
         {namespace} -l berth.dev/restore) and create a new Restore",
        jobs.join(", "),
        human(limit)
    )
}

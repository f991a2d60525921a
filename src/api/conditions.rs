//! `metav1.Condition` helpers shared by every kind: set a condition without losing its
//! `lastTransitionTime`, derive kstatus's `Reconciling` and `Stalled` (what Flux waits on)
//! from the conditions a controller computed, and compare condition lists without caring about
//! their order.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types used across Berth resources.
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// kstatus: the controller works toward the current generation (Flux reports InProgress).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: nothing moves until the spec or the cluster changes (Flux reports Failed).
pub const STALLED: &str = "Stalled";

/// Reason of the conditions of a spec that fails validation.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// Reason of `Progressing=False` while `spec.paused` holds the controller back.
pub const PAUSED: &str = "Paused";

/// A condition as a controller computes it, before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl DesiredCondition {
    pub fn new(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self { type_, status, reason: reason.to_string(), message: message.into() }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// kstatus's condition derived from what a controller computed, or none when the resource is
/// reconciled. Both are "abnormal-true" (kstatus's convention, and what Flux's own controllers
/// write): present only while True.
/// - `Stalled` when nothing moves until the spec or the cluster changes: a condition with reason
///   `InvalidSpec`, or `Degraded=True` while `Progressing` is not True (a failed Backup or
///   Restore, a refused change, a rollout past its deadline, a pod that cannot start).
/// - `Reconciling` otherwise while `Ready` is not True, unless the resource is paused.
pub fn kstatus(desired: &[DesiredCondition]) -> Option<DesiredCondition> {
    let find = |type_: &str| desired.iter().find(|d| d.type_ == type_);
    let progressing = find(PROGRESSING);
    let degraded = find(DEGRADED).filter(|d| d.status && !progressing.is_some_and(|p| p.status));
    if let Some(cause) = degraded.or_else(|| desired.iter().find(|d| d.reason == INVALID_SPEC)) {
        return Some(DesiredCondition::new(STALLED, true, &cause.reason, cause.message.clone()));
    }
    let ready = find(READY);
    let paused = progressing.is_some_and(|p| !p.status && p.reason == PAUSED);
    match ready {
        Some(r) if r.status => None,
        _ if paused => None,
        Some(r) => Some(DesiredCondition::new(RECONCILING, true, &r.reason, r.message.clone())),
        None => Some(DesiredCondition::new(RECONCILING, true, "Reconciling", "no Ready condition yet")),
    }
}

/// Merges `desired`, plus its [`kstatus`] condition, into `existing`: conditions keep their
/// `lastTransitionTime` while their status is unchanged, every condition carries `generation`,
/// and conditions of types no longer computed are dropped. The result is sorted by type so that
/// it is stable.
pub fn merge(
    existing: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    debug_assert!(
        !desired.iter().any(|d| d.type_ == RECONCILING || d.type_ == STALLED),
        "Reconciling and Stalled are derived, not computed by controllers"
    );
    let mut out: Vec<Condition> = desired
        .iter()
        .chain(kstatus(desired).as_ref())
        .map(|d| {
            let status = status_str(d.status);
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// True when both lists hold the same conditions, whatever their order.
pub fn same_set(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| x == y))
}

/// The status of condition `type_` if present.
pub fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} in {conditions:?}"))
    }

    fn types(conditions: &[Condition]) -> Vec<(&str, &str)> {
        conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str())).collect()
    }

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let first = merge(&[], &[DesiredCondition::new(READY, false, "Progressing", "rolling out")], Some(1), &t(10));
        let second =
            merge(&first, &[DesiredCondition::new(READY, false, "Progressing", "still rolling")], Some(2), &t(20));
        assert_eq!(find(&second, READY).last_transition_time, t(10));
        assert_eq!(find(&second, READY).observed_generation, Some(2));
        assert_eq!(find(&second, RECONCILING).last_transition_time, t(10));
        let third = merge(&second, &[DesiredCondition::new(READY, true, "Available", "ok")], Some(2), &t(30));
        assert_eq!(find(&third, READY).last_transition_time, t(30));
    }

    fn derived(desired: &[DesiredCondition]) -> Vec<(String, String)> {
        merge(&[], desired, Some(3), &t(1))
            .into_iter()
            .filter(|c| c.type_ == RECONCILING || c.type_ == STALLED)
            .map(|c| (format!("{}={}", c.type_, c.status), c.message))
            .collect()
    }

    fn app(ready: bool, progressing: (bool, &str), degraded: bool) -> Vec<DesiredCondition> {
        vec![
            DesiredCondition::new(READY, ready, "R", "ready message"),
            DesiredCondition::new(PROGRESSING, progressing.0, progressing.1, "progressing message"),
            DesiredCondition::new(DEGRADED, degraded, "D", "degraded message"),
        ]
    }

    #[test]
    fn reconciling_while_not_ready_and_nothing_is_stuck() {
        let r = |m: &str| vec![("Reconciling=True".to_string(), m.to_string())];
        assert_eq!(derived(&app(false, (true, "RollingOut"), false)), r("ready message"));
        // Retrying with backoff: Degraded, but still moving.
        assert_eq!(derived(&app(false, (true, "Provisioning"), true)), r("ready message"));
        assert_eq!(derived(&[DesiredCondition::new(READY, false, "InProgress", "3 items")]), r("3 items"));
        assert_eq!(derived(&[]), r("no Ready condition yet"));
    }

    #[test]
    fn stalled_when_nothing_moves_without_a_change() {
        let s = |m: &str| vec![("Stalled=True".to_string(), m.to_string())];
        assert_eq!(derived(&app(false, (false, "ImagePullBackOff"), true)), s("degraded message"));
        // A refused change leaves the running server Ready, yet the spec is not reached.
        assert_eq!(derived(&app(true, (false, "Provisioned"), true)), s("degraded message"));
        // A failed Backup or Restore: Degraded without Progressing.
        let failed = [
            DesiredCondition::new(READY, false, "BackupNotFound", "no such backup"),
            DesiredCondition::new(DEGRADED, true, "BackupNotFound", "no such backup"),
        ];
        assert_eq!(derived(&failed), s("no such backup"));
        // A BackupPolicy has no Degraded: InvalidSpec on Ready is enough.
        assert_eq!(derived(&[DesiredCondition::new(READY, false, INVALID_SPEC, "bad cron")]), s("bad cron"));
    }

    #[test]
    fn neither_when_ready_or_paused() {
        assert_eq!(derived(&app(true, (false, "Idle"), false)), vec![]);
        assert_eq!(derived(&app(false, (false, PAUSED), false)), vec![]);
        let merged = merge(&[], &app(true, (false, "Idle"), false), Some(3), &t(1));
        assert_eq!(types(&merged), [("Degraded", "False"), ("Progressing", "False"), ("Ready", "True")]);
        assert!(merged.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn comparison_ignores_order() {
        let a = merge(
            &[],
            &[DesiredCondition::new(READY, true, "A", ""), DesiredCondition::new(DEGRADED, false, "B", "")],
            Some(1),
            &t(1),
        );
        let mut b = a.clone();
        b.reverse();
        assert!(same_set(&a, &b));
        b.pop();
        assert!(!same_set(&a, &b));
    }
}

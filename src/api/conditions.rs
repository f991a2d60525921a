//! `metav1.Condition` helpers shared by every kind: set a condition without losing its
//! `lastTransitionTime`, and compare condition lists without caring about their order.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types used across Berth resources.
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

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

/// Merges `desired` into `existing`: conditions keep their `lastTransitionTime` while their
/// status is unchanged, every condition carries `generation`, and conditions of types no
/// longer computed are dropped. The result is sorted by type so that it is stable.
pub fn merge(
    existing: &[Condition],
    desired: &[DesiredCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = desired
        .iter()
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

    #[test]
    fn keeps_transition_time_while_status_is_unchanged() {
        let first = merge(&[], &[DesiredCondition::new(READY, false, "Progressing", "rolling out")], Some(1), &t(10));
        let second =
            merge(&first, &[DesiredCondition::new(READY, false, "Progressing", "still rolling")], Some(2), &t(20));
        assert_eq!(second[0].last_transition_time, t(10));
        assert_eq!(second[0].observed_generation, Some(2));
        let third = merge(&second, &[DesiredCondition::new(READY, true, "Available", "ok")], Some(2), &t(30));
        assert_eq!(third[0].last_transition_time, t(30));
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

//! The phases of a Backup, its items and a Restore, and the conditions that follow them.

use crate::api::conditions::{DEGRADED, DesiredCondition, READY};

pub const NEW: &str = "New";
pub const IN_PROGRESS: &str = "InProgress";
pub const COMPLETED: &str = "Completed";
pub const PARTIALLY_FAILED: &str = "PartiallyFailed";
pub const FAILED: &str = "Failed";
pub const PENDING: &str = "Pending";

/// Whether a Backup (or item) in `phase` is finished.
pub fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some(COMPLETED | PARTIALLY_FAILED | FAILED))
}

/// The conditions of a Backup or Restore in `phase`: Ready once Completed, and Degraded once
/// Failed or PartiallyFailed, so that people, Argo CD and kstatus (`Stalled`) see the failure.
pub fn conditions(phase: &str, reason: &str, message: &str) -> Vec<DesiredCondition> {
    let mut out = vec![DesiredCondition::new(READY, phase == COMPLETED, reason, message)];
    if matches!(phase, FAILED | PARTIALLY_FAILED) {
        out.push(DesiredCondition::new(DEGRADED, true, reason, message));
    }
    out
}

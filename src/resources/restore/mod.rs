//! Restore: the pure decisions of a restore. [`mapping`] plans which of a Backup's objects come
//! back, rewritten for their target namespaces, in which app-aware [`Stage`]; [`access`] lists
//! what the restore's account must be allowed to do and refuses the restore when it is not;
//! [`waits`] holds the deadlines of its waits; [`plan`] decides the next step of a Restore from
//! what the controller observed. No I/O.

pub mod access;
pub mod mapping;
pub mod plan;
pub mod waits;

pub use access::{
    Access, DataWrites, NOT_AUTHORIZED, ResourceName, authorization_refusal, create_refused, required_access,
};
pub use mapping::{Dropped, RestorePlan, Stage, plan, reason, synced_secrets_note, target_namespace};
pub use waits::{
    DATABASE_NOT_READY, DATABASE_READY_DEADLINE, DEFAULT_TIMEOUT, JOBS_TIMED_OUT, NAMESPACE_NOT_FOUND,
    NAMESPACE_RECHECK, NAMESPACE_TERMINATING, NamespaceState, TIMED_OUT, database_not_ready_message, deadline_passed,
    jobs_timed_out_message, namespace_problem, timed_out_message, timeout,
};

#[cfg(test)]
mod tests;

//! BackupPolicy: validation, then the pure decisions of its controller — when the schedule
//! fires and which missed run to start ([`schedule`]), the names of the Backups it creates,
//! whether the newest success is fresh enough, and which Backups retention removes
//! ([`retention`]). No I/O: the controller reads the clock and the Backup objects and passes
//! them in.

pub mod drill;
pub mod plan;
pub mod retention;
pub mod schedule;
pub mod validate;

pub use retention::{BackupFact, retention_victims};
pub use schedule::{
    BACKUP_NAME_MAX, Freshness, STARTING_DEADLINE, backup_name, due, freshness, next_run, previous_run,
    schedule_interval,
};
pub use validate::{ValidPolicy, validate};

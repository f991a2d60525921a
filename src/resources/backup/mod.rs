//! Backup and Restore: pure builders of the Jobs that run `berth agent` for each database and
//! volume (see DESIGN.md, "Backups"). The controllers decide *which* Jobs to create and read
//! their outcome; these functions only turn one task into one Job.

pub mod jobs;

pub use jobs::{AgentTask, JobSettings, agent_job};

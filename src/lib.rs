//! Berth: a Kubernetes operator for workloads migrated from classic servers.
//!
//! The crate follows DESIGN.md: `api` (CRD types), `resources` (pure builders),
//! `controllers` (I/O), `runtime` (wiring), `backup` and `agent` (the data path).

pub mod agent;
pub mod api;
pub mod backup;
pub mod cli;
pub mod controllers;
pub mod crds;
pub mod import;
pub mod provision;
pub mod render;
pub mod resources;
pub mod runtime;

//! AppEnvironment: validation with tier defaults, then pure builders of its children (the
//! app's own in `build`, claims in `volumes`, workers, cron jobs and the migration in
//! `workloads`).

pub mod access;
pub mod adopt;
pub mod build;
pub mod databases;
pub mod dns;
pub mod external_secrets;
pub mod history;
pub mod security;
pub mod status;
pub mod validate;
pub mod volumes;
pub mod workloads;

pub use build::{AppChildren, build, url};
pub use databases::{DatabaseLinks, LinkedDatabase, link};
pub use validate::{ValidApp, validate};

#[cfg(test)]
mod shapes_tests;
#[cfg(test)]
mod tests;

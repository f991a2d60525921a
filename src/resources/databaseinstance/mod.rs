//! DatabaseInstance: validation with defaults resolved, then pure builders of its children.
//!
//! Passwords and the Erlang cookie are *observed facts*: the controller reads them from the
//! existing Secrets (or generates them once with [`credentials::generate_password`]) and passes
//! them in, so that [`build`] stays pure and never regenerates a credential.

pub mod build;
pub mod credentials;
pub mod day2;
pub mod validate;

pub use build::{DatabaseChildren, USES_LABEL_PREFIX, build, uses_label};
pub use credentials::{Credentials, PLACEHOLDER, generate_password};
pub use validate::{ValidDatabase, validate};

#[cfg(test)]
mod tests;

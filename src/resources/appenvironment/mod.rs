//! AppEnvironment: validation with tier defaults, then pure builders of its children.

pub mod build;
pub mod databases;
pub mod security;
pub mod status;
pub mod validate;

pub use build::{AppChildren, build, url};
pub use databases::{DatabaseLinks, LinkedDatabase, link};
pub use validate::{ValidApp, validate};

#[cfg(test)]
mod tests;

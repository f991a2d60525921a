//! Pure builders: a custom resource (plus observed facts) in, desired child objects out.
//! Nothing here performs I/O; the controllers apply what these functions return.

pub mod appenvironment;
pub mod backup;
pub mod backuppolicy;
pub mod certificate;
pub mod databaseinstance;
pub mod meta;
#[cfg(test)]
pub mod pod_security;
pub mod restore;

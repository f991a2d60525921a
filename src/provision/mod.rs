//! Provisioning over a real connection: the databases, roles, vhosts and users a
//! DatabaseInstance declares, created and kept converged in the running server.
//!
//! * [`postgres`] speaks the PostgreSQL protocol (`tokio-postgres`); identifiers are always
//!   quoted with [`postgres::quote_ident`] and literals with [`postgres::quote_literal`].
//! * [`rabbitmq`] uses the management HTTP API (`reqwest`).
//!
//! Both are idempotent: [`ProvisionReport`] says what a run created, changed or deleted, and a
//! second run with the same input reports nothing. Nothing that leaves the spec is dropped
//! unless it was provisioned with `reclaimPolicy: Delete`; that policy is recorded *in the
//! server* (a PostgreSQL comment `berth: reclaimPolicy=Delete`, a RabbitMQ user tag
//! [`rabbitmq::RECLAIM_TAG`]) so that it survives a lost status and an operator restart.

pub mod postgres;
pub mod rabbitmq;

use std::fmt;

/// What one provisioning run did, as `kind/name` items (e.g. `role/app`, `database/orders`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    pub created: Vec<String>,
    pub changed: Vec<String>,
    pub deleted: Vec<String>,
}

impl ProvisionReport {
    /// True when the server already matched the spec.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.changed.is_empty() && self.deleted.is_empty()
    }
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "up to date");
        }
        let mut parts = Vec::new();
        for (verb, items) in [("created", &self.created), ("changed", &self.changed), ("deleted", &self.deleted)] {
            if !items.is_empty() {
                parts.push(format!("{verb} {}", items.join(", ")));
            }
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// Where and as whom to connect: the administrative user of the instance.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

/// A provisioning failure, with a reason suitable for a condition.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The server cannot be reached or refused the administrative login (retry with backoff).
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    /// A statement or API call failed.
    #[error("{action} failed: {message}")]
    Request { action: String, message: String },
}

impl ProvisionError {
    /// `Reason` of the Degraded/Ready condition that reports this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "ServerUnreachable",
            Self::Request { .. } => "ProvisioningFailed",
        }
    }
}

/// Percent-encodes everything but unreserved characters (a path segment of the management
/// API, e.g. the vhost `/` as `%2F`).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

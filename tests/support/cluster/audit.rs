//! The API server's audit log: the server's own record of every request, so that write counts
//! and refusals come from the server, not from the operator's counters.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Every request at `Metadata` level (no bodies: Secrets never reach the log), once completed.
pub const POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
";

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub request_u_r_i: String,
    pub user: User,
    /// The user a request acted as (`Impersonate-User`): the tenant's ServiceAccount for the
    /// requests Berth makes on a BackupPolicy's, Backup's or Restore's behalf.
    #[serde(default)]
    pub impersonated_user: Option<User>,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct User {
    #[serde(default)]
    pub username: String,
    /// E.g. `authentication.kubernetes.io/pod-name` for a token bound to a pod.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

impl AuditEvent {
    /// A request that changes state (not a read, not a watch).
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// `verb resource[/subresource] namespace/name -> code`, for messages.
    pub fn describe(&self) -> String {
        let o = self.object_ref.clone().unwrap_or_default();
        let sub = if o.subresource.is_empty() { String::new() } else { format!("/{}", o.subresource) };
        format!("{} {}{} {}/{} -> {}", self.verb, o.resource, sub, o.namespace, o.name, self.code())
    }

    pub fn resource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.resource.as_str())
    }
}

/// A position in the log, to read what came after it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mark(usize);

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> AuditLog {
        AuditLog { path }
    }

    fn read(&self) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<AuditEvent> {
        self.read()
    }

    /// The current end of the log.
    pub fn mark(&self) -> Mark {
        Mark(self.read().len())
    }

    /// Requests after `mark`.
    pub fn since(&self, mark: Mark) -> Vec<AuditEvent> {
        self.read().into_iter().skip(mark.0).collect()
    }

    /// Requests of `user` refused with 403, whether made as itself or as a user it
    /// impersonated (then named: `as system:serviceaccount:…`).
    pub fn forbidden(&self, user: &str) -> Vec<String> {
        self.read()
            .iter()
            .filter(|e| e.user.username == user && e.code() == 403)
            .map(|e| {
                let message = e.response_status.as_ref().map_or("", |s| s.message.as_str());
                match &e.impersonated_user {
                    Some(as_user) => format!("{} as {} ({message})", e.describe(), as_user.username),
                    None => format!("{} ({message})", e.describe()),
                }
            })
            .collect()
    }

    /// Writes into `namespace` after `mark`, by anyone.
    pub fn writes_in(&self, mark: Mark, namespace: &str) -> Vec<AuditEvent> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.is_write() && e.object_ref.as_ref().is_some_and(|o| o.namespace == namespace))
            .collect()
    }

    /// Requests of `user` made as `as_user` (impersonated) after `mark`.
    pub fn impersonated_since(&self, mark: Mark, user: &str, as_user: &str) -> Vec<AuditEvent> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.user.username == user)
            .filter(|e| e.impersonated_user.as_ref().is_some_and(|u| u.username == as_user))
            .collect()
    }

    /// Writes by `user` after `mark`, other than Leases (leader election) and Events.
    pub fn writes_since(&self, mark: Mark, user: &str) -> Vec<AuditEvent> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.user.username == user && e.is_write() && !matches!(e.resource(), "leases" | "events"))
            .collect()
    }

    /// Requests per `verb resource` of `user` after `mark`.
    pub fn requests_by_kind(&self, mark: Mark, user: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for e in self.since(mark).into_iter().filter(|e| e.user.username == user) {
            *counts.entry(format!("{} {}", e.verb, e.resource())).or_insert(0) += 1;
        }
        counts
    }
}

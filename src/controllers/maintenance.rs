//! Retention and offsite replication of a BackupPolicy's repository, outside the reconcile.
//!
//! Copying a repository offsite can take hours; a reconcile that waited for it would hold a
//! worker, and nothing could stop it. Here each policy has at most one task: the reconcile
//! starts it and later collects its outcome. A task ends at its deadline, and stops within
//! [`POLICY_RECHECK`] when its policy is deleted or replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::Api;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::backuppolicy::BackupPolicy;
use crate::resources::backuppolicy::plan::RunStarted;

/// How often a running task checks that its policy still exists.
pub const POLICY_RECHECK: Duration = Duration::from_secs(5);
/// Longest one retention-and-replication run may take.
pub const DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// How a finished run went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The newest Backup whose data is now offsite, when the copy succeeded.
    pub replicated: Option<String>,
    /// Reason and message of a failure.
    pub error: Option<(&'static str, String)>,
    /// What was done, for the status.
    pub summary: String,
}

/// What the reconcile sees of a policy's task.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Running(RunStarted),
    Finished(RunStarted, Outcome),
}

struct Task {
    uid: String,
    started: RunStarted,
    outcome: Arc<Mutex<Option<Outcome>>>,
    handle: tokio::task::JoinHandle<()>,
}

/// The running tasks, by policy (namespace/name).
#[derive(Default)]
pub struct Tasks {
    tasks: Mutex<HashMap<String, Task>>,
}

impl Tasks {
    /// The state of `policy`'s task; a finished outcome is handed out once.
    pub fn poll(&self, policy: &BackupPolicy) -> State {
        let mut tasks = self.tasks.lock().expect("maintenance tasks");
        let key = key(policy);
        let Some(task) = tasks.get(&key) else { return State::Idle };
        if task.uid != policy.uid().unwrap_or_default() {
            // A task of a deleted policy of the same name: it stops by itself.
            task.handle.abort();
            tasks.remove(&key);
            return State::Idle;
        }
        let finished = task.outcome.lock().expect("outcome").take();
        match finished {
            Some(outcome) => State::Finished(tasks.remove(&key).expect("present").started, outcome),
            None if task.handle.is_finished() => State::Finished(
                tasks.remove(&key).expect("present").started,
                Outcome {
                    replicated: None,
                    error: Some(("MaintenanceStopped", "the retention and replication run stopped early".into())),
                    summary: String::new(),
                },
            ),
            None => State::Running(task.started.clone()),
        }
    }

    /// Starts `work`, as `started` describes it, for `policy` unless a task of it runs. The
    /// task ends with `work`, at [`DEADLINE`], or when the policy is gone.
    pub fn start<F>(&self, client: kube::Client, policy: &BackupPolicy, started: RunStarted, work: F)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let mut tasks = self.tasks.lock().expect("maintenance tasks");
        let key = key(policy);
        if tasks.contains_key(&key) {
            return;
        }
        let uid = policy.uid().unwrap_or_default();
        let outcome = Arc::new(Mutex::new(None));
        let slot = outcome.clone();
        let ns = policy.namespace().unwrap_or_default();
        let (name, watched_uid, task_key) = (policy.name_any(), uid.clone(), key.clone());
        let handle = tokio::spawn(async move {
            let api: Api<BackupPolicy> = Api::namespaced(client, &ns);
            let result = tokio::select! {
                done = tokio::time::timeout(DEADLINE, work) => done.unwrap_or_else(|_| Outcome {
                    replicated: None,
                    error: Some(("MaintenanceTimedOut", format!(
                        "retention and offsite replication did not finish within {} hours; they start again at the next reconcile",
                        DEADLINE.as_secs() / 3600
                    ))),
                    summary: String::new(),
                }),
                () = policy_gone(&api, &name, &watched_uid) => {
                    info!(backuppolicy = %task_key, "the policy is gone: retention and replication stopped");
                    return;
                }
            };
            if let Some((reason, message)) = &result.error {
                warn!(backuppolicy = %task_key, reason, %message, "retention or replication failed");
            }
            *slot.lock().expect("outcome") = Some(result);
        });
        tasks.insert(key, Task { uid, started, outcome, handle });
    }
}

/// Resolves once the policy `name` with `uid` is deleted, being deleted, or replaced.
pub(super) async fn policy_gone(api: &Api<BackupPolicy>, name: &str, uid: &str) {
    loop {
        tokio::time::sleep(POLICY_RECHECK).await;
        match api.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(p)) if p.uid().as_deref() != Some(uid) || p.meta().deletion_timestamp.is_some() => return,
            // Unknown (the API server is unreachable): keep working, look again.
            _ => {}
        }
    }
}

fn key(p: &BackupPolicy) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

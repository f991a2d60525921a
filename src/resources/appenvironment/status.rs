//! Conditions of an AppEnvironment, computed from what was observed of its Deployment, its
//! pods, its Certificate and referenced DatabaseInstances. Pure, so every rollout situation is a
//! unit test.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod, PodStatus,
};

use kube::ResourceExt;

use super::databases::DatabaseLinks;
use super::validate::ValidApp;
use super::workloads::MigrationState;
use crate::api::conditions::{DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::resources::certificate::Certificate;

/// What the controller observed, and whether it has just changed the Deployment (then the
/// cached Deployment is older than the change and cannot prove readiness).
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    pub certificate: Option<&'a Certificate>,
    pub deployment_just_changed: bool,
    /// `spec.databases` resolved against the namespace's DatabaseInstances: while one is
    /// missing or not ready, the app is not Ready but Progressing (`WaitingForDatabase`).
    pub databases: &'a DatabaseLinks,
    /// The app's pods (as the controller's slim pod cache keeps them: container states only).
    /// A container waiting for a reason in [`BLOCKING_REASONS`] shows in the conditions while
    /// the rollout is not done.
    pub pods: &'a [Arc<Pod>],
    /// Each worker's name and its Deployment (`None` when not created yet).
    pub workers: Vec<(&'a str, Option<&'a Deployment>)>,
    /// The migration of the current image: while it runs the rollout waits; when it failed
    /// the rollout stops (`MigrationFailed`).
    pub migration: MigrationState,
}

/// Reason of the conditions while the migration of the current image has failed.
pub const MIGRATION_FAILED: &str = "MigrationFailed";

/// Reason of `Ready=False` and `Progressing=True` while a referenced DatabaseInstance is
/// missing or not ready.
pub const WAITING_FOR_DATABASE: &str = "WaitingForDatabase";

/// The computed part of the status.
#[derive(Debug, PartialEq)]
pub struct AppHealth {
    pub conditions: Vec<DesiredCondition>,
    pub ready_replicas: Option<i32>,
}

/// Ready, Progressing and Degraded from the rollout, the pods, the certificate and the
/// databases.
pub fn health(valid: &ValidApp, observed: &Observed) -> AppHealth {
    let wants_tls = valid.ingress.as_ref().is_some_and(|i| i.tls.is_some());
    let ready_replicas = observed.deployment.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas);

    let rollout = match &observed.migration {
        MigrationState::Running => {
            Part::Pending("the migration of the new image runs; the Deployment moves to it once it succeeds".into())
        }
        _ => app_rollout(observed),
    };
    if let MigrationState::Failed(why) = &observed.migration {
        let message = format!(
            "the migration Job of image {} failed ({why}); the Deployment, workers and cron jobs keep their current image. Fix the migration, then change spec.image or spec.migration to run it again",
            valid.app.spec.image
        );
        return AppHealth {
            conditions: vec![
                DesiredCondition::new(READY, false, MIGRATION_FAILED, message.clone()),
                DesiredCondition::new(PROGRESSING, false, MIGRATION_FAILED, message.clone()),
                DesiredCondition::new(DEGRADED, true, MIGRATION_FAILED, message),
            ],
            ready_replicas,
        };
    }
    let cert = if wants_tls { certificate_state(observed.certificate) } else { Part::Done };

    let namespace = valid.app.namespace().unwrap_or_else(|| "default".into());
    let waiting_for_database = observed.databases.waiting_message(&namespace);
    // Pods that will not start without a change. Not while the Deployment was just changed
    // (its pods still run the old template: the change may be the fix) nor once the rollout
    // is done (a leftover pod of an old ReplicaSet is on its way out).
    let blocked = if observed.deployment_just_changed || matches!(rollout, Part::Done) {
        None
    } else {
        blocked_pods(&pod_problems(observed.pods.iter().map(AsRef::as_ref)), &namespace)
    };

    let (ready, ready_reason, ready_message): (bool, &str, String) =
        match (&rollout, &cert, &waiting_for_database, &blocked) {
            // An app without its database does not work, whatever the rollout says; a rollout or
            // certificate failure still shows as Degraded below.
            (_, _, Some(m), _) => (false, WAITING_FOR_DATABASE, m.clone()),
            (_, _, None, Some((reason, m))) => (false, reason, m.clone()),
            (Part::Done, Part::Done, None, None) => {
                (true, "Available", "all replicas run the current spec".to_string())
            }
            (Part::Failed(m), _, None, None) => (false, "RolloutFailed", m.clone()),
            (_, Part::Failed(m), None, None) => (false, "CertificateFailed", m.clone()),
            (Part::Pending(m), _, None, None) => (false, "RollingOut", m.clone()),
            (_, Part::Pending(m), None, None) => (false, "CertificatePending", m.clone()),
        };
    let progressing = match (&waiting_for_database, &blocked) {
        (Some(m), _) => DesiredCondition::new(PROGRESSING, true, WAITING_FOR_DATABASE, m.clone()),
        // Nothing moves until the spec, the image or the cluster changes.
        (None, Some((reason, m))) => DesiredCondition::new(PROGRESSING, false, reason, m.clone()),
        (None, None) if matches!(rollout, Part::Pending(_)) || matches!(cert, Part::Pending(_)) => {
            DesiredCondition::new(PROGRESSING, true, ready_reason, "waiting for the rollout and certificate to finish")
        }
        (None, None) => DesiredCondition::new(PROGRESSING, false, "Idle", "nothing in flight"),
    };
    let degraded = match (&blocked, &rollout, &cert) {
        (Some((reason, m)), _, _) => Some((reason.as_str(), m.clone())),
        (None, Part::Failed(m), _) => Some(("RolloutFailed", m.clone())),
        (None, _, Part::Failed(m)) => Some(("CertificateFailed", m.clone())),
        _ => None,
    };
    AppHealth {
        conditions: vec![
            DesiredCondition::new(READY, ready, ready_reason, ready_message),
            progressing,
            match degraded {
                Some((reason, m)) => DesiredCondition::new(DEGRADED, true, reason, m),
                None => DesiredCondition::new(DEGRADED, false, "Healthy", "no failure observed"),
            },
        ],
        ready_replicas,
    }
}

/// Waiting reasons of a container that will not start without a change (of the spec, the
/// image, or something the pod refers to). They are also the condition reasons.
pub const BLOCKING_REASONS: &[&str] = &[
    "CreateContainerConfigError",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
];

/// A container of one of the app's pods that waits for a reason in [`BLOCKING_REASONS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub pod: String,
    pub container: String,
    /// The kubelet's waiting reason, e.g. `CreateContainerConfigError`.
    pub reason: String,
    /// The kubelet's message (left out for `CrashLoopBackOff`, whose back-off countdown would
    /// change the status on every restart).
    pub message: String,
    /// Exit code and reason of the container's last run, when it ran.
    pub last_exit: Option<(i32, Option<String>)>,
}

impl PodProblem {
    /// What the owner of the AppEnvironment can do about it.
    pub fn fix(&self, namespace: &str) -> String {
        match self.reason.as_str() {
            "CreateContainerConfigError"
                if self.message.contains("non-numeric user") || self.message.contains("will run as root") =>
            {
                "set spec.securityContext.runAsUser to a numeric non-root UID, or build the image with a numeric USER"
                    .into()
            }
            "CreateContainerConfigError" if self.message.contains("not found") => {
                "create the Secret or ConfigMap it names in the namespace, or fix spec.env/spec.envFrom".into()
            }
            "CreateContainerConfigError" => {
                "fix the container settings the message names (spec.env, spec.envFrom, spec.securityContext)".into()
            }
            "ImagePullBackOff" | "ErrImagePull" => "check that spec.image names an image that exists (registry, \
                 repository and tag), and for a private registry that spec.imagePullSecrets name a Secret with \
                 access to it"
                .into(),
            "ErrImageNeverPull" => {
                "the image is not on the node and spec.imagePullPolicy is Never: set spec.imagePullPolicy to \
                 IfNotPresent, or load the image onto the nodes"
                    .into()
            }
            "InvalidImageName" => "fix spec.image: it is not a valid image reference".into(),
            _ => format!(
                "read its logs (kubectl logs -n {namespace} {} -c {} --previous) and check spec.command, spec.args, \
                 spec.env and the probes",
                self.pod, self.container
            ),
        }
    }

    /// `pod web-6d4f-x2k: container "app" is waiting with <reason>: <message>; <fix>`.
    pub fn describe(&self, namespace: &str) -> String {
        let mut out = format!("pod {}: container {:?} is waiting with {}", self.pod, self.container, self.reason);
        if !self.message.is_empty() {
            out.push_str(": ");
            out.push_str(&self.message);
        }
        if let Some((code, reason)) = &self.last_exit {
            out.push_str(&format!(" (last exit code {code}"));
            if let Some(r) = reason {
                out.push_str(&format!(", {r}"));
            }
            out.push(')');
        }
        out.push_str("; ");
        out.push_str(&self.fix(namespace));
        out
    }
}

/// Every container of `pods` (init containers too) that waits for a blocking reason, ordered by
/// pod and container so that the status does not change with the cache's order.
pub fn pod_problems<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<PodProblem> {
    let mut out = Vec::new();
    for pod in pods {
        let Some(status) = pod.status.as_ref() else { continue };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses =
            status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        out.extend(statuses.filter_map(|c| problem(&name, c)));
    }
    out.sort_by(|a, b| (&a.pod, &a.container).cmp(&(&b.pod, &b.container)));
    out
}

fn problem(pod: &str, c: &ContainerStatus) -> Option<PodProblem> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().filter(|r| BLOCKING_REASONS.contains(r))?;
    let message =
        if reason == "CrashLoopBackOff" { String::new() } else { waiting.message.clone().unwrap_or_default() };
    let last_exit = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| (t.exit_code, t.reason.clone()));
    Some(PodProblem { pod: pod.into(), container: c.name.clone(), reason: reason.into(), message, last_exit })
}

/// Cuts a watched pod down to what [`pod_problems`] reads and the controller maps it by: name,
/// namespace, the owner label `owner_label`, and the waiting and last-terminated states of its
/// containers. A cached pod is then a few hundred bytes instead of several kilobytes.
pub fn slim_pod(pod: &mut Pod, owner_label: &str) {
    let meta = &mut pod.metadata;
    meta.labels = meta.labels.take().map(|mut l| {
        l.retain(|k, _| k == owner_label);
        l
    });
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    pod.spec = None;
    pod.status = pod.status.take().map(|status| {
        let slim = |list: Option<Vec<ContainerStatus>>| {
            list.map(|list| {
                list.into_iter()
                    .map(|c| ContainerStatus {
                        name: c.name,
                        state: c.state.and_then(|s| s.waiting).map(|w| ContainerState {
                            waiting: Some(ContainerStateWaiting { reason: w.reason, message: w.message }),
                            ..ContainerState::default()
                        }),
                        last_state: c.last_state.and_then(|s| s.terminated).map(|t| ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: t.exit_code,
                                reason: t.reason,
                                ..ContainerStateTerminated::default()
                            }),
                            ..ContainerState::default()
                        }),
                        ..ContainerStatus::default()
                    })
                    .collect()
            })
        };
        PodStatus {
            container_statuses: slim(status.container_statuses),
            init_container_statuses: slim(status.init_container_statuses),
            ..PodStatus::default()
        }
    });
}

/// A hash of the blocking waiting reasons of `pod`'s containers (not their messages, which
/// count down back-offs): the pod watch wakes the app only when it changes. Always `Some` (the
/// shape kube-runtime's predicate filter takes).
pub fn blocking_hash(pod: &Pod) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for p in pod_problems([pod]) {
        (p.container, p.reason).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// Whether a container of `pod` waits for a blocking reason.
pub fn is_blocked(pod: &Pod) -> bool {
    !pod_problems([pod]).is_empty()
}

/// The condition reason and message of the first problem, with a count of the others.
fn blocked_pods(problems: &[PodProblem], namespace: &str) -> Option<(String, String)> {
    let first = problems.first()?;
    let mut message = first.describe(namespace);
    let others =
        problems.iter().filter(|p| p.pod != first.pod).map(|p| &p.pod).collect::<std::collections::BTreeSet<_>>();
    if !others.is_empty() {
        message.push_str(&format!(" ({} more pods are waiting too)", others.len()));
    }
    Some((first.reason.clone(), message))
}

enum Part {
    Done,
    Pending(String),
    Failed(String),
}

/// The app's Deployment, then each worker's.
fn app_rollout(observed: &Observed) -> Part {
    let main = rollout_state(observed.deployment, observed.deployment_just_changed);
    if !matches!(main, Part::Done) {
        return main;
    }
    for (name, d) in &observed.workers {
        match rollout_state(*d, false) {
            Part::Done => {}
            Part::Pending(m) => return Part::Pending(format!("worker {name}: {m}")),
            Part::Failed(m) => return Part::Failed(format!("worker {name}: {m}")),
        }
    }
    Part::Done
}

fn rollout_state(deployment: Option<&Deployment>, just_changed: bool) -> Part {
    let Some(d) = deployment else { return Part::Pending("the Deployment does not exist yet".into()) };
    if just_changed {
        return Part::Pending("the Deployment was just updated".into());
    }
    let Some(status) = d.status.as_ref() else { return Part::Pending("the Deployment has no status yet".into()) };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| c.type_ == "Progressing" && c.status == "False") {
        return Part::Failed(format!(
            "rollout stalled: {}",
            c.message.clone().or_else(|| c.reason.clone()).unwrap_or_default()
        ));
    }
    if let Some(c) = conditions.iter().find(|c| c.type_ == "ReplicaFailure" && c.status == "True") {
        return Part::Failed(format!("pods cannot be created: {}", c.message.clone().unwrap_or_default()));
    }
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Part::Pending("the Deployment controller has not seen the latest spec".into());
    }
    // The autoscaler owns spec.replicas when autoscaling; the status replicas field then
    // tells how many pods are wanted.
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or_else(|| status.replicas.unwrap_or(1));
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < wanted || available < wanted || total > updated {
        return Part::Pending(format!("{updated}/{wanted} pods updated, {available} available"));
    }
    Part::Done
}

fn certificate_state(cert: Option<&Certificate>) -> Part {
    let Some(cert) = cert else { return Part::Pending("the Certificate does not exist yet".into()) };
    match cert.ready() {
        Some(c) if c.status == "True" => Part::Done,
        Some(c) if c.reason.as_deref().is_some_and(|r| r.contains("Fail") || r == "Denied") => {
            Part::Failed(format!("certificate not issued: {}", c.message.clone().unwrap_or_default()))
        }
        Some(c) => Part::Pending(format!("certificate not issued yet: {}", c.message.clone().unwrap_or_default())),
        None => Part::Pending("cert-manager has not reported on the certificate yet".into()),
    }
}

//! The app's other processes, from the same image and environment: worker Deployments
//! (`spec.workers`), CronJobs (`spec.cronJobs`) and the migration Job (`spec.migration`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::build::{PodShape, app, pod_labels, pod_template};
use super::databases::DatabaseLinks;
use super::validate::ValidApp;
use crate::api::appenvironment::{ConcurrencyPolicy, Migration};
use crate::resources::meta;

/// Component label of worker pods (with [`WORKER_LABEL`] naming the worker).
pub const WORKER_COMPONENT: &str = "worker";
/// Label naming the worker of a Deployment and its pods.
pub const WORKER_LABEL: &str = "berth.dev/worker";
/// Component label of cron job pods (with [`CRON_JOB_LABEL`]).
pub const CRON_JOB_COMPONENT: &str = "cron-job";
/// Label naming the cron job of a CronJob and its pods.
pub const CRON_JOB_LABEL: &str = "berth.dev/cron-job";
/// Component label of migration Jobs and their pods.
pub const MIGRATION_COMPONENT: &str = "migration";
/// Annotation on a migration Job: the image it migrates to.
pub const MIGRATION_IMAGE_ANNOTATION: &str = "berth.dev/image";
/// Default bound of one migration and one cron job run.
const MIGRATION_TIMEOUT_SECONDS: i64 = 600;
const CRON_JOB_TIMEOUT_SECONDS: i64 = 3600;

/// The Deployment of worker `worker`.
pub fn worker_name(app: &str, worker: &str) -> String {
    format!("{app}-{worker}")
}

/// One Deployment per worker: the app's pod with the worker's command, no ports, no Service.
pub fn workers(valid: &ValidApp, links: &DatabaseLinks) -> Vec<Deployment> {
    let spec = &app(valid).spec;
    let app_name = app(valid).name_any();
    spec.workers
        .iter()
        .map(|w| {
            let selector = {
                let mut s = meta::selector_labels(&app_name, WORKER_COMPONENT);
                s.insert(WORKER_LABEL.into(), w.name.clone());
                s
            };
            let mut labels = pod_labels(valid, links, WORKER_COMPONENT);
            labels.insert(WORKER_LABEL.into(), w.name.clone());
            let (command, args) = process(&spec.command, &spec.args, &w.command, &w.args);
            let shape = PodShape {
                command,
                args,
                resources: w.resources.clone().or(spec.resources.clone()),
                probes: w.probes.clone().unwrap_or_default(),
                ports: false,
                volumes: Some(&w.volumes),
            };
            let template = pod_template(valid, links, labels, shape);
            let mut metadata_labels = meta::standard_labels(app(valid), WORKER_COMPONENT);
            metadata_labels.insert(WORKER_LABEL.into(), w.name.clone());
            Deployment {
                metadata: meta::child_meta(app(valid), &worker_name(&app_name, &w.name), metadata_labels),
                spec: Some(DeploymentSpec {
                    replicas: Some(w.replicas.unwrap_or(1)),
                    selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
                    revision_history_limit: Some(5),
                    // Workers serve no traffic: the tier's zero-downtime rollout is not theirs,
                    // Kubernetes' defaults are.
                    strategy: Some(DeploymentStrategy { type_: Some("RollingUpdate".into()), rolling_update: None }),
                    template,
                    ..DeploymentSpec::default()
                }),
                ..Deployment::default()
            }
        })
        .collect()
}

/// The command and arguments of a process: its own command and args when it sets a command,
/// the app's command with its own args when it sets only args, the app's otherwise.
fn process<'a>(
    app_command: &'a [String],
    app_args: &'a [String],
    command: &'a [String],
    args: &'a [String],
) -> (&'a [String], &'a [String]) {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => (command, args),
        (true, false) => (app_command, args),
        (true, true) => (app_command, app_args),
    }
}

/// One CronJob per `spec.cronJobs` entry, with the app's image, env and databases.
pub fn cron_jobs(valid: &ValidApp, links: &DatabaseLinks) -> Vec<CronJob> {
    let spec = &app(valid).spec;
    let app_name = app(valid).name_any();
    spec.cron_jobs
        .iter()
        .map(|c| {
            let mut labels = pod_labels(valid, links, CRON_JOB_COMPONENT);
            labels.insert(CRON_JOB_LABEL.into(), c.name.clone());
            let (command, args) = process(&spec.command, &spec.args, &c.command, &c.args);
            let shape = PodShape {
                command,
                args,
                resources: c.resources.clone().or(spec.resources.clone()),
                probes: Default::default(),
                ports: false,
                volumes: Some(&c.volumes),
            };
            let mut template = pod_template(valid, links, labels, shape);
            if let Some(pod) = template.spec.as_mut() {
                pod.restart_policy = Some("Never".into());
            }
            let mut metadata_labels = meta::standard_labels(app(valid), CRON_JOB_COMPONENT);
            metadata_labels.insert(CRON_JOB_LABEL.into(), c.name.clone());
            CronJob {
                metadata: meta::child_meta(app(valid), &format!("{app_name}-{}", c.name), metadata_labels),
                spec: Some(CronJobSpec {
                    schedule: c.schedule.clone(),
                    time_zone: c.time_zone.clone(),
                    concurrency_policy: Some(
                        match c.concurrency_policy.unwrap_or(ConcurrencyPolicy::Forbid) {
                            ConcurrencyPolicy::Allow => "Allow",
                            ConcurrencyPolicy::Forbid => "Forbid",
                            ConcurrencyPolicy::Replace => "Replace",
                        }
                        .into(),
                    ),
                    successful_jobs_history_limit: Some(c.successful_jobs_history_limit.unwrap_or(3)),
                    failed_jobs_history_limit: Some(c.failed_jobs_history_limit.unwrap_or(1)),
                    // A run missed by more than this (operator or controller down) is skipped,
                    // not started late in a burst.
                    starting_deadline_seconds: Some(300),
                    job_template: JobTemplateSpec {
                        metadata: None,
                        spec: Some(JobSpec {
                            // One attempt, like a crontab line: a failed run shows as a failed Job.
                            backoff_limit: Some(0),
                            active_deadline_seconds: Some(c.timeout_seconds.unwrap_or(CRON_JOB_TIMEOUT_SECONDS)),
                            template,
                            ..JobSpec::default()
                        }),
                    },
                    ..CronJobSpec::default()
                }),
                ..CronJob::default()
            }
        })
        .collect()
}

/// The name of the migration Job of the current image and command: a new image (or a new
/// command) is a new Job, so each runs once. The app name is cut so the name fits a label.
pub fn migration_name(valid: &ValidApp, migration: &Migration) -> String {
    let spec = &app(valid).spec;
    let mut hasher = blake3::Hasher::new();
    for part in std::iter::once(&spec.image).chain(&migration.command).chain(&migration.args) {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let hash = hex::encode(&hasher.finalize().as_bytes()[..4]);
    let name = app(valid).name_any();
    let prefix: String = name.chars().take(63 - "-migrate-".len() - hash.len()).collect();
    format!("{}-migrate-{hash}", prefix.trim_end_matches('-'))
}

/// The Job of `spec.migration`: the app's pod with the new image and the migration command,
/// one attempt, bounded by `timeoutSeconds`.
pub fn migration_job(valid: &ValidApp, links: &DatabaseLinks) -> Option<Job> {
    let spec = &app(valid).spec;
    let m = spec.migration.as_ref()?;
    let (command, args) = process(&spec.command, &spec.args, &m.command, &m.args);
    let shape = PodShape {
        command,
        args,
        resources: m.resources.clone().or(spec.resources.clone()),
        probes: Default::default(),
        ports: false,
        // Claims stay the app pod's: a ReadWriteOnce claim cannot be shared with the Job.
        volumes: Some(&[]),
    };
    let mut template = pod_template(valid, links, pod_labels(valid, links, MIGRATION_COMPONENT), shape);
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("Never".into());
    }
    let mut metadata =
        meta::child_meta(app(valid), &migration_name(valid, m), meta::standard_labels(app(valid), MIGRATION_COMPONENT));
    metadata.annotations = Some(BTreeMap::from([(MIGRATION_IMAGE_ANNOTATION.to_string(), spec.image.clone())]));
    Some(Job {
        metadata,
        spec: Some(JobSpec {
            // A migration that failed half-way is for a human to look at, not to repeat.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(m.timeout_seconds.unwrap_or(MIGRATION_TIMEOUT_SECONDS)),
            template,
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// Where the migration of the current image stands, from its Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationState {
    /// No `spec.migration`: nothing waits.
    None,
    Running,
    Succeeded,
    Failed(String),
}

/// The state of a migration Job (as cached; `None` when it does not exist yet).
pub fn migration_state(job: Option<&Job>) -> MigrationState {
    let Some(job) = job else { return MigrationState::Running };
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let is = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    if is("Complete").is_some() || is("SuccessCriteriaMet").is_some() {
        return MigrationState::Succeeded;
    }
    if let Some(c) = is("Failed").or_else(|| is("FailureTarget")) {
        let why = [c.reason.clone(), c.message.clone()].into_iter().flatten().collect::<Vec<_>>().join(": ");
        return MigrationState::Failed(why);
    }
    MigrationState::Running
}

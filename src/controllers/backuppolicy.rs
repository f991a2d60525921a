//! The BackupPolicy controller: fires the schedule (creates `Backup` objects), keeps the
//! retention (never the newest successful backup), replicates to the offsite location after
//! each success, reports freshness (`BackupFresh`, an RPO metric), and discovers backups in
//! the bucket that this cluster does not know (disaster recovery: a new cluster with only a
//! suspended policy sees every old backup).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::backup::{self as backup_ctl, POLICY_LABEL, SYNCED_LABEL, phase};
use super::maintenance::{self, Outcome};
use super::repository::{self, RepositoryError};
use super::{CachesSynced, Context, ControllerContext, Error, api, cache, drive, synced_store, when_synced};
use crate::api::backup::{Backup, BackupItem, BackupSpec, BackupStatus};
use crate::api::backuppolicy::{BackupPolicy, BackupPolicyStatus, MaintenanceStatus};
use crate::api::conditions::{self, DesiredCondition, READY};
use crate::backup::Repository;
use crate::backup::ops::{PruneOptions, prune};
use crate::backup::replicate::{ReplicateOptions, replicate};
use crate::backup::resources::{BackupManifest, RefusedManifest, scan_manifests};
use crate::resources::backuppolicy::{
    BackupFact, ValidPolicy, backup_name, due, freshness, next_run, retention_victims, validate,
};
use crate::runtime::impersonate::ACCOUNT_NOT_ALLOWED;
use crate::runtime::metrics::PolicyLabels;

pub const NAME: &str = "backuppolicy";
const STATUS_MANAGER: &str = "berth/backuppolicy-status";
/// Condition type of backup freshness.
pub const BACKUP_FRESH: &str = "BackupFresh";
/// How often a policy's bucket is listed for backups this cluster does not know.
const SYNC_INTERVAL: Duration = Duration::from_secs(300);
/// How often a running retention and replication is looked at.
const MAINTENANCE_POLL: Duration = Duration::from_secs(5);
/// How long after a failed run the next one starts.
const MAINTENANCE_RETRY: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);
const MAINTENANCE_RUNNING: &str = "Running";
const MAINTENANCE_SUCCEEDED: &str = "Succeeded";
const MAINTENANCE_FAILED: &str = "Failed";

struct Ctx {
    shared: Arc<Context>,
    backups: Store<Backup>,
    caches: CachesSynced,
    /// When each policy's bucket was last listed (by namespace/name).
    last_sync: Mutex<HashMap<String, Instant>>,
    /// Each policy's retention and replication run.
    maintenance: maintenance::Tasks,
}

impl ControllerContext for Ctx {
    fn shared(&self) -> &Context {
        &self.shared
    }
    fn caches(&self) -> &CachesSynced {
        &self.caches
    }
}

/// Runs the controller for one namespace (or all when `None`) until shutdown.
pub async fn run(
    shared: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) {
    let client = shared.client.clone();
    let ns = namespace.as_deref();
    let (backups, backup_stream) = cache::<Backup>(&client, ns, watcher::Config::default().labels(POLICY_LABEL));
    let controller = Controller::new(api::<BackupPolicy>(&client, ns), watcher::Config::default()).watches_stream(
        backup_stream,
        |b: Backup| {
            let policy = b.labels().get(POLICY_LABEL)?.clone();
            Some(ObjectRef::new(&policy).within(&b.namespace()?))
        },
    );
    let main_store = controller.store();
    let (caches_synced, caches) = CachesSynced::new();
    let backup_store = backups.clone();
    when_synced(
        async move {
            synced_store(&backup_store).await;
            synced_store(&main_store).await;
        },
        caches_synced,
        synced,
    );
    let ctx = Arc::new(Ctx { shared, backups, caches, last_sync: Mutex::default(), maintenance: Default::default() });
    drive(NAME, controller, shutdown, ctx, |obj, ctx| async move { reconcile_policy(&obj, &ctx).await }).await;
}

fn key(p: &BackupPolicy) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

fn timestamp(t: &Time) -> jiff::Timestamp {
    t.0
}

async fn reconcile_policy(policy: &BackupPolicy, ctx: &Ctx) -> Result<Action, Error> {
    if policy.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let now = jiff::Timestamp::now();
    let valid = match validate(policy) {
        Ok(v) => v,
        Err(errors) => {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            let conditions = [DesiredCondition::new(READY, false, "InvalidSpec", message)];
            write_status(policy, ctx, &conditions, policy.status.clone().unwrap_or_default()).await?;
            return Ok(Action::await_change());
        }
    };
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let mut status = policy.status.clone().unwrap_or_default();
    // Storage Secrets are read as the policy's ServiceAccount: the namespace's RBAC decides.
    let tenant = match tenant_client(ctx, policy).await? {
        Ok(client) => client,
        Err((reason, message)) => {
            let conditions = [DesiredCondition::new(READY, false, reason, message)];
            write_status(policy, ctx, &conditions, status).await?;
            return Ok(Action::requeue(ACCOUNT_RECHECK));
        }
    };
    let mut ready = DesiredCondition::new(
        READY,
        true,
        if valid.suspended() { "Suspended" } else { "Scheduled" },
        if valid.suspended() { "spec.suspend is true: no new backups" } else { "the schedule is active" },
    );

    // Disaster recovery: backups in the bucket that this cluster has no object for.
    if sync_due(ctx, &key(policy)) {
        // Throttled whether or not it works: an unreachable bucket is not listed in a loop.
        ctx.last_sync.lock().expect("sync map").insert(key(policy), Instant::now());
        match repository::open(&tenant, &ns, &valid.policy.spec.storage, "spec.storage").await {
            Ok(repo) => {
                sync_backups(ctx, policy, &repo).await?;
            }
            Err(e) => ready = DesiredCondition::new(READY, false, e.reason(), e.to_string()),
        }
    }

    let backups: Vec<Arc<Backup>> = ctx
        .backups
        .state()
        .into_iter()
        .filter(|b| b.namespace().as_deref() == Some(ns.as_str()) && b.labels().get(POLICY_LABEL) == Some(&name))
        .collect();
    let completion = |b: &Backup| b.status.as_ref().and_then(|s| s.completion_time.as_ref()).map(timestamp);
    let completed: Vec<&Arc<Backup>> = backups
        .iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase::COMPLETED))
        .collect();
    let newest = completed.iter().max_by_key(|b| completion(b)).copied();
    status.last_successful_backup = newest.map(|b| b.name_any());

    // The schedule. Concurrency Forbid: a due run waits while a backup of this policy runs.
    let created = policy.meta().creation_timestamp.as_ref().map(timestamp).unwrap_or(now);
    let last_schedule = status.last_schedule_time.as_ref().map(timestamp);
    let running = backups.iter().any(|b| !phase::is_terminal(b.status.as_ref().and_then(|s| s.phase.as_deref())));
    if !valid.suspended()
        && let Some(at) = due(&valid, last_schedule, created, now)
        && !running
    {
        create_backup(ctx, policy, &backup_name(&name, at)).await?;
        status.last_schedule_time = Some(Time(at));
    }
    status.next_schedule_time = if valid.suspended() { None } else { next_run(&valid, now).map(Time) };

    // Retention, then the offsite copy of what is kept. A backup not yet copied offsite is
    // never removed (`synced` false).
    let replicated_at = status
        .last_replicated_backup
        .as_ref()
        .and_then(|r| backups.iter().find(|b| &b.name_any() == r))
        .and_then(|b| completion(b));
    let offsite = valid.policy.spec.offsite.is_some();
    let facts: Vec<BackupFact> = backups
        .iter()
        .map(|b| BackupFact {
            name: b.name_any(),
            phase: b.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default(),
            completion: completion(b),
            synced: !offsite || completion(b).zip(replicated_at).is_some_and(|(c, r)| c <= r),
        })
        .collect();
    let victims = retention_victims(valid.retention(), &facts, &valid.time_zone);
    let running = match ctx.maintenance.poll(policy) {
        maintenance::State::Running { .. } => true,
        maintenance::State::Finished(outcome) => {
            if outcome.replicated.is_some() {
                status.last_replicated_backup = outcome.replicated.clone();
            }
            status.maintenance = Some(finished(outcome, status.maintenance.take(), now));
            false
        }
        maintenance::State::Idle => false,
    };
    if let Some(MaintenanceStatus { phase, reason, message, .. }) = &status.maintenance
        && phase == MAINTENANCE_FAILED
    {
        let reason = reason.as_deref().unwrap_or("MaintenanceFailed");
        ready = DesiredCondition::new(READY, false, reason, message.clone().unwrap_or_default());
    }
    let retry_due = status.maintenance.as_ref().is_none_or(|m| {
        m.phase != MAINTENANCE_FAILED
            || m.completion_time.as_ref().is_none_or(|t| now.duration_since(t.0) >= MAINTENANCE_RETRY)
    });
    if !running && retry_due && (!victims.is_empty() || needs_replication(&valid, &status)) {
        let (client, owned, valid) = (ctx.shared.client.clone(), policy.clone(), valid.clone());
        let (backups, newest) = (backups.clone(), status.last_successful_backup.clone());
        let message = maintenance_plan(&victims, valid.policy.spec.offsite.is_some());
        ctx.maintenance.start(client.clone(), policy, async move {
            match maintain(&client, &tenant, &owned, &valid, &backups, &victims).await {
                Ok(report) => Outcome {
                    replicated: report.is_some().then_some(newest).flatten(),
                    error: None,
                    summary: report.unwrap_or_default(),
                },
                Err(e) => {
                    Outcome { replicated: None, error: Some((e.reason(), e.to_string())), summary: String::new() }
                }
            }
        });
        status.maintenance = Some(MaintenanceStatus {
            phase: MAINTENANCE_RUNNING.into(),
            start_time: Some(Time(now)),
            message: Some(message),
            ..MaintenanceStatus::default()
        });
    }

    let fresh = freshness(&valid, newest.and_then(|b| completion(b)), created, now);
    let labels = PolicyLabels { namespace: ns.clone(), policy: name.clone() };
    ctx.shared.metrics.backup_fresh.get_or_create(&labels).set(i64::from(fresh.fresh));
    if let Some(t) = newest.and_then(|b| completion(b)) {
        ctx.shared.metrics.backup_last_success.get_or_create(&labels).set(t.as_second());
    }
    let conditions = [ready, DesiredCondition::new(BACKUP_FRESH, fresh.fresh, fresh.reason, fresh.message)];
    write_status(policy, ctx, &conditions, status.clone()).await?;

    // Wake up for the next fire time (and at least every few minutes for freshness and sync).
    let until_next = status
        .next_schedule_time
        .as_ref()
        .map(|t| Duration::from_secs(t.0.duration_since(now).as_secs().max(0) as u64 + 1))
        .unwrap_or(SYNC_INTERVAL);
    // A running retention or replication is looked at again to collect its outcome.
    let wake = if ctx.maintenance.poll(policy) == maintenance::State::Idle { SYNC_INTERVAL } else { MAINTENANCE_POLL };
    Ok(Action::requeue(until_next.min(wake)))
}

/// The status of a finished run.
fn finished(outcome: Outcome, started: Option<MaintenanceStatus>, now: jiff::Timestamp) -> MaintenanceStatus {
    let (phase, reason, message) = match outcome.error {
        Some((reason, message)) => (MAINTENANCE_FAILED, Some(reason.to_string()), message),
        None => (MAINTENANCE_SUCCEEDED, None, outcome.summary),
    };
    MaintenanceStatus {
        phase: phase.into(),
        start_time: started.and_then(|s| s.start_time),
        completion_time: Some(Time(now)),
        reason,
        message: Some(message),
    }
}

/// What a run about to start will do.
fn maintenance_plan(victims: &[String], offsite: bool) -> String {
    match (victims.len(), offsite) {
        (0, _) => "replicating to spec.offsite".into(),
        (n, true) => format!("retention: removing {n} backups, then replicating to spec.offsite"),
        (n, false) => format!("retention: removing {n} backups"),
    }
}

fn sync_due(ctx: &Ctx, key: &str) -> bool {
    ctx.last_sync.lock().expect("sync map").get(key).is_none_or(|t| t.elapsed() >= SYNC_INTERVAL)
}

fn needs_replication(valid: &ValidPolicy, status: &BackupPolicyStatus) -> bool {
    valid.policy.spec.offsite.is_some()
        && status.last_successful_backup.is_some()
        && status.last_replicated_backup != status.last_successful_backup
}

/// How often an object whose ServiceAccount is missing (or not allowed) looks again: creating
/// an account is not an event Berth watches.
pub const ACCOUNT_RECHECK: Duration = Duration::from_secs(30);

/// The client that acts as `policy`'s ServiceAccount, or the reason and message of the
/// condition that says why there is none.
async fn tenant_client(
    ctx: &Ctx,
    policy: &BackupPolicy,
) -> Result<Result<kube::Client, (&'static str, String)>, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let requested = [policy.spec.service_account_name.as_deref()];
    match ctx.shared.tenants.policy.account(&ns, &requested, "spec.serviceAccountName") {
        Ok(account) => ctx.shared.act_as(&account).await,
        Err(e) => Ok(Err((ACCOUNT_NOT_ALLOWED, e.to_string()))),
    }
}

async fn create_backup(ctx: &Ctx, policy: &BackupPolicy, name: &str) -> Result<(), Error> {
    let ns = policy.namespace().unwrap_or_default();
    let backup = Backup {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.clone()),
            labels: Some(backup_ctl::labels(&policy.name_any())),
            ..ObjectMeta::default()
        },
        // The Backup acts as its policy's account.
        spec: BackupSpec {
            policy_name: policy.name_any(),
            delete_data: false,
            service_account_name: policy.spec.service_account_name.clone(),
        },
        status: None,
    };
    let api: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match api.create(&PostParams::default(), &backup).await {
        Ok(_) => {
            info!(backuppolicy = %key(policy), backup = name, "schedule fired");
            Ok(())
        }
        // Created by an earlier reconcile whose status write was lost.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Why retention or replication failed.
#[derive(Debug, thiserror::Error)]
enum MaintenanceError {
    #[error("{0}")]
    Repository(#[from] RepositoryError),
    #[error("retention: {0}")]
    Retention(crate::backup::BackupError),
    #[error("offsite replication to spec.offsite: {0}")]
    Replication(crate::backup::BackupError),
    #[error("{0}")]
    Kube(#[from] Error),
}

impl MaintenanceError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Repository(e) => e.reason(),
            Self::Retention(_) => "RetentionFailed",
            Self::Replication(_) => "ReplicationFailed",
            Self::Kube(_) => "KubernetesError",
        }
    }
}

/// Forgets the data of `victims`, deletes their objects, prunes, and replicates the
/// repository to the offsite location. Returns what the offsite copy did, when there is one.
/// `client` is the operator's (it deletes the Backup objects retention removes), `tenant` the
/// policy's ServiceAccount's (it reads the storage Secrets).
async fn maintain(
    client: &kube::Client,
    tenant: &kube::Client,
    policy: &BackupPolicy,
    valid: &ValidPolicy,
    backups: &[Arc<Backup>],
    victims: &[String],
) -> Result<Option<String>, MaintenanceError> {
    let ns = policy.namespace().unwrap_or_default();
    let repo = repository::open(tenant, &ns, &valid.policy.spec.storage, "spec.storage").await?;
    if !victims.is_empty() {
        let doomed: Vec<&Arc<Backup>> = backups.iter().filter(|b| victims.contains(&b.name_any())).collect();
        for backup in &doomed {
            backup_ctl::forget_backup(&repo, backup).await.map_err(MaintenanceError::Retention)?;
        }
        let report = prune(&repo, PruneOptions::default()).await.map_err(MaintenanceError::Retention)?;
        info!(backuppolicy = %key(policy), ?report, "pruned the repository");
        // The objects go last: while one exists, its data may still be in the bucket.
        for backup in doomed {
            backup_ctl::delete_object(client, &ns, &backup.name_any()).await?;
            info!(backuppolicy = %key(policy), backup = %backup.name_any(), "retention removed a backup");
        }
    }
    let Some(offsite) = &valid.policy.spec.offsite else { return Ok(None) };
    let config = repository::storage_config(tenant, &ns, offsite, "spec.offsite").await?;
    let target = crate::backup::Storage::connect(&config).await.map_err(MaintenanceError::Replication)?;
    // Retention ran at the source: the copy follows it, never ahead of a complete source.
    let options = ReplicateOptions { delete_extraneous: true, ..ReplicateOptions::default() };
    let report = replicate(&repo, &target, options).await.map_err(MaintenanceError::Replication)?;
    info!(backuppolicy = %key(policy), copied = report.copied, bytes = report.bytes, "replicated offsite");
    Ok(Some(format!(
        "replicated to spec.offsite: {} objects ({} bytes) copied, {} already there, {} deleted",
        report.copied, report.bytes, report.skipped, report.deleted
    )))
}

/// Creates a Completed Backup object (labelled synced) for every manifest of this policy in
/// the repository that has no object in the namespace. Only manifests that verify with the
/// repository key are adopted; the others are logged and evented as refused.
async fn sync_backups(ctx: &Ctx, policy: &BackupPolicy, repo: &Repository) -> Result<(), Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let manifests = match scan_manifests(repo).await {
        Ok((manifests, refused)) => {
            for r in &refused {
                report_refused(ctx, policy, r).await;
            }
            manifests
        }
        Err(e) => {
            warn!(backuppolicy = %key(policy), error = %e, "cannot list the backups in the bucket");
            return Ok(());
        }
    };
    let api: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let known: HashSet<String> =
        api.list_metadata(&Default::default()).await?.items.iter().map(|b| b.name_any()).collect();
    for manifest in manifests {
        let theirs = manifest.labels.get(POLICY_LABEL).is_none_or(|p| *p == name);
        if !theirs || known.contains(&manifest.name) {
            continue;
        }
        let mut labels = backup_ctl::labels(&name);
        labels.insert(SYNCED_LABEL.into(), "true".into());
        let backup = Backup {
            metadata: ObjectMeta {
                name: Some(manifest.name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: BackupSpec {
                policy_name: name.clone(),
                delete_data: false,
                service_account_name: policy.spec.service_account_name.clone(),
            },
            status: None,
        };
        match api.create(&PostParams::default(), &backup).await {
            Ok(created) => {
                let status = synced_status(&manifest, created.meta().generation);
                let patch = serde_json::json!({
                    "apiVersion": Backup::api_version(&()), "kind": Backup::kind(&()), "status": status,
                });
                api.patch_status(&manifest.name, &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch))
                    .await?;
                info!(backuppolicy = %key(policy), backup = %manifest.name, "found a backup in the bucket");
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Logs and events a manifest disaster recovery refused (object key and reason only).
async fn report_refused(ctx: &Ctx, policy: &BackupPolicy, refused: &RefusedManifest) {
    warn!(backuppolicy = %key(policy), object = %refused.key, reason = %refused.reason, "backup manifest refused");
    let event = Event {
        type_: EventType::Warning,
        reason: "ManifestRefused".into(),
        note: Some(refused.reason.chars().take(1024).collect()),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = ctx.shared.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(backuppolicy = %key(policy), error = %e, "could not record an event");
    }
}

/// The status of a Backup known only from its manifest.
fn synced_status(manifest: &BackupManifest, generation: Option<i64>) -> BackupStatus {
    let parse = |s: &str| s.parse::<jiff::Timestamp>().ok().map(Time);
    let items: Vec<BackupItem> = manifest
        .snapshots
        .iter()
        .map(|s| BackupItem {
            name: match s.kind.as_str() {
                "kubernetes" => "resources".into(),
                "dir" => format!("volume/{}", s.source),
                _ => format!("database/{}", s.source),
            },
            phase: phase::COMPLETED.into(),
            snapshot: Some(s.snapshot.clone()),
            bytes: Some(s.bytes),
            error: None,
        })
        .collect();
    let now = Time(jiff::Timestamp::now());
    let ready = [DesiredCondition::new(READY, true, "Synced", "found in the bucket: a backup another cluster wrote")];
    BackupStatus {
        observed_generation: generation,
        conditions: conditions::merge(&[], &ready, generation, &now),
        phase: Some(phase::COMPLETED.into()),
        start_time: parse(&manifest.started),
        completion_time: parse(&manifest.completed),
        bytes: Some(items.iter().filter_map(|i| i.bytes).sum()),
        items,
    }
}

async fn write_status(
    policy: &BackupPolicy,
    ctx: &Ctx,
    desired: &[DesiredCondition],
    mut status: BackupPolicyStatus,
) -> Result<(), Error> {
    let current = policy.status.clone().unwrap_or_default();
    let generation = policy.meta().generation;
    status.conditions = conditions::merge(&current.conditions, desired, generation, &Time(jiff::Timestamp::now()));
    status.observed_generation = generation;
    let unchanged = status.observed_generation == current.observed_generation
        && conditions::same_set(&status.conditions, &current.conditions)
        && status.last_schedule_time == current.last_schedule_time
        && status.next_schedule_time == current.next_schedule_time
        && status.last_successful_backup == current.last_successful_backup
        && status.last_replicated_backup == current.last_replicated_backup
        && status.maintenance == current.maintenance;
    if unchanged {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": BackupPolicy::api_version(&()),
        "kind": BackupPolicy::kind(&()),
        "status": status,
    });
    let api: Api<BackupPolicy> = Api::namespaced(ctx.shared.client.clone(), &policy.namespace().unwrap_or_default());
    api.patch_status(&policy.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

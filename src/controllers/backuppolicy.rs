//! The BackupPolicy controller: observes the policy's Backups, its retention run and its
//! bucket, and executes what the planner ([`crate::resources::backuppolicy::plan`]) decides.
//! It fires the schedule (creates `Backup` objects), keeps the
//! retention (never the newest successful backup), replicates to the offsite location after
//! each success, reports freshness (`BackupFresh`, an RPO metric), and discovers backups in
//! the bucket that this cluster does not know (disaster recovery: a new cluster with only a
//! suspended policy sees every old backup).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::backup::{self as backup_ctl, POLICY_LABEL, SYNCED_LABEL, phase};
use super::drill::{self as drill_ctl, DrillRun};
use super::maintenance::{self, Outcome};
use super::repository::{self, RepositoryError};
use super::{CachesSynced, Context, ControllerContext, Error, api, cache, drive, synced_store, when_synced};
use crate::api::backup::{Backup, BackupItem, BackupSpec, BackupStatus};
use crate::api::backuppolicy::{BackupPolicy, BackupPolicyStatus};
use crate::api::conditions::{self, DesiredCondition, READY};
use crate::backup::Repository;
use crate::backup::ops::{PruneOptions, prune};
use crate::backup::replicate::{ReplicateOptions, replicate};
use crate::backup::resources::{BackupManifest, RefusedManifest, scan_manifests};
use crate::resources::backuppolicy::drill::{self, DrillObserved, DrillOutcome, DrillTask, StartDrill};
use crate::resources::backuppolicy::plan::{
    self, ACCOUNT_RECHECK, BackupSeen, Gate, Observed, RunResult, RunState, SYNC_INTERVAL, StartRun, Step,
};
use crate::resources::backuppolicy::{ValidPolicy, validate};
use crate::runtime::impersonate::{ACCOUNT_NOT_ALLOWED, TenantClient};
use crate::runtime::metrics::PolicyLabels;

pub const NAME: &str = "backuppolicy";
const STATUS_MANAGER: &str = "berth/backuppolicy-status";
pub use crate::resources::backuppolicy::plan::BACKUP_FRESH;
/// How long the bucket sync (disaster recovery) may take in one reconcile.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How long emptying a kept drill namespace may take in one reconcile.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

struct Ctx {
    shared: Arc<Context>,
    backups: Store<Backup>,
    caches: CachesSynced,
    /// When each policy's bucket was last listed (by namespace/name).
    last_sync: Mutex<HashMap<String, Instant>>,
    /// Each policy's retention and replication run.
    maintenance: maintenance::Tasks,
    /// Each policy's restore drill under way (by namespace/name), with its policy's uid.
    drills: Mutex<HashMap<String, (String, tokio::task::JoinHandle<DrillOutcome>)>>,
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
    let ctx = Arc::new(Ctx {
        shared,
        backups,
        caches,
        last_sync: Mutex::default(),
        maintenance: Default::default(),
        drills: Mutex::default(),
    });
    drive(NAME, controller, shutdown, ctx, |obj, ctx| async move { reconcile_policy(&obj, &ctx).await }).await;
}

fn key(p: &BackupPolicy) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

async fn reconcile_policy(cached: &BackupPolicy, ctx: &Ctx) -> Result<Action, Error> {
    // A status computed from a stale cache would be written back stale, and a finished run's
    // or drill's outcome, handed out once, would be lost.
    let Some(policy) = super::read_fresh(&ctx.shared.client, cached).await? else { return Ok(Action::await_change()) };
    let policy = &policy;
    let validated = validate(policy);
    let mut gate = Gate {
        deleting: policy.meta().deletion_timestamp.is_some(),
        invalid: validated
            .as_ref()
            .err()
            .map(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
        account: None,
    };
    let mut tenant = None;
    loop {
        match plan::next(&gate) {
            Step::Idle => return Ok(Action::await_change()),
            Step::Invalid(message) => {
                let conditions = [DesiredCondition::new(READY, false, "InvalidSpec", message)];
                write_status(policy, ctx, &conditions, policy.status.clone().unwrap_or_default()).await?;
                return Ok(Action::await_change());
            }
            // Storage Secrets are read as the policy's ServiceAccount: the namespace's RBAC decides.
            Step::ReadAccount => {
                gate.account = Some(tenant_client(ctx, policy).await?.map(|client| tenant = Some(client)));
            }
            Step::AccountUnavailable((reason, message)) => {
                let conditions = [DesiredCondition::new(READY, false, reason, message)];
                write_status(policy, ctx, &conditions, policy.status.clone().unwrap_or_default()).await?;
                return Ok(Action::requeue(ACCOUNT_RECHECK));
            }
            Step::Converge => {
                let valid = validated.expect("the planner converges valid policies only");
                let tenant = tenant.expect("the planner converges with an account only");
                return converge(policy, ctx, &valid, tenant).await;
            }
        }
    }
}

/// Observes the policy's Backups, its retention run and (when due) its bucket, and executes
/// what the planner decides.
async fn converge(
    policy: &BackupPolicy,
    ctx: &Ctx,
    valid: &ValidPolicy,
    tenant: TenantClient,
) -> Result<Action, Error> {
    let now = jiff::Timestamp::now();
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();

    // Disaster recovery: backups in the bucket that this cluster has no object for.
    let mut sync = None;
    if sync_due(ctx, &key(policy)) {
        // Throttled whether or not it works: an unreachable bucket is not listed in a loop.
        ctx.last_sync.lock().expect("sync map").insert(key(policy), Instant::now());
        let synced = tokio::time::timeout(SYNC_TIMEOUT, async {
            match repository::open(&tenant, &ns, &valid.policy.spec.storage, "spec.storage").await {
                Ok(repo) => sync_backups(ctx, policy, &repo).await.map(Ok),
                Err(e) => Ok(Err((e.reason(), e.to_string()))),
            }
        });
        sync = Some(match synced.await {
            Ok(synced) => synced?,
            Err(_) => Err((
                "StorageUnreachable",
                format!("listing the backups in spec.storage took longer than {}s", SYNC_TIMEOUT.as_secs()),
            )),
        });
    }

    let backups: Vec<Arc<Backup>> = ctx
        .backups
        .state()
        .into_iter()
        .filter(|b| b.namespace().as_deref() == Some(ns.as_str()) && b.labels().get(POLICY_LABEL) == Some(&name))
        .collect();
    let seen: Vec<BackupSeen> = backups
        .iter()
        .map(|b| BackupSeen {
            name: b.name_any(),
            phase: b.status.as_ref().and_then(|s| s.phase.clone()),
            completion: b.status.as_ref().and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
        })
        .collect();
    let run = match ctx.maintenance.poll(policy) {
        maintenance::State::Idle => RunState::Idle,
        maintenance::State::Running(started) => RunState::Running(started),
        maintenance::State::Finished(started, outcome) => RunState::Finished(
            started,
            RunResult { replicated: outcome.replicated, error: outcome.error, summary: outcome.summary },
        ),
    };
    let status = policy.status.clone().unwrap_or_default();
    let observed = Observed {
        policy: valid,
        status: &status,
        created: policy.meta().creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now),
        now,
        backups: &seen,
        sync,
        run,
    };
    let decided = plan::converge(&observed);
    let tenant_for_drill = tenant.clone();

    if let Some(backup) = &decided.fire {
        create_backup(ctx, policy, backup).await?;
    }
    if let Some(StartRun { victims, newest, started }) = decided.start_run {
        let (client, owned, valid) = (ctx.shared.client.clone(), policy.clone(), valid.clone());
        ctx.maintenance.start(client.clone(), policy, started, async move {
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
    }
    let labels = PolicyLabels { namespace: ns.clone(), policy: name.clone() };
    let mut status = decided.status;
    let mut conditions = decided.conditions;
    let drilled = drill::decide(&DrillObserved {
        policy: valid,
        status: &status,
        created: observed.created,
        now,
        backups: &seen,
        task: poll_drill(ctx, policy).await,
    });
    if let Some(start) = drilled.start.clone() {
        start_drill(ctx, policy, tenant_for_drill, start);
    }
    if drilled.release
        && let Some(verify) = policy.spec.verify.as_ref()
    {
        release_drill_namespace(ctx, policy, &verify.namespace).await;
    }
    if let Some(last) = &drilled.last
        && status.last_verified_restore.as_ref() != Some(last)
    {
        let passed = i64::from(last.result == drill::PASSED);
        ctx.shared.metrics.restore_drill_passed.get_or_create(&labels).set(passed);
        ctx.shared.metrics.restore_drill_last.get_or_create(&labels).set(last.finished_at.0.as_second());
    }
    status.drill = drilled.drill;
    status.last_verified_restore = drilled.last;
    conditions.extend(drilled.condition);
    let requeue = drilled.requeue.map_or(decided.requeue, |r| r.min(decided.requeue));
    ctx.shared.metrics.backup_fresh.get_or_create(&labels).set(i64::from(decided.fresh.fresh));
    if let Some(t) = decided.last_success {
        ctx.shared.metrics.backup_last_success.get_or_create(&labels).set(t.as_second());
    }
    write_status(policy, ctx, &conditions, status).await?;
    Ok(Action::requeue(requeue))
}

/// The state of `policy`'s drill task; a finished outcome is handed out once.
async fn poll_drill(ctx: &Ctx, policy: &BackupPolicy) -> DrillTask {
    let finished = {
        let mut drills = ctx.drills.lock().expect("drills");
        let key = key(policy);
        match drills.get(&key) {
            None => return DrillTask::Idle,
            Some((uid, handle)) if *uid != policy.uid().unwrap_or_default() => {
                handle.abort();
                drills.remove(&key);
                return DrillTask::Idle;
            }
            Some((_, handle)) if !handle.is_finished() => return DrillTask::Running,
            Some(_) => drills.remove(&key).expect("present").1,
        }
    };
    finished
        .await
        .unwrap_or_else(|e| DrillOutcome { result: Err(("DrillStopped", format!("the drill stopped: {e}"))) })
        .into()
}

fn start_drill(ctx: &Ctx, policy: &BackupPolicy, tenant: TenantClient, start: StartDrill) {
    let run = DrillRun {
        operator: ctx.shared.client.clone(),
        tenant,
        policy: policy.clone(),
        start,
        shared: ctx.shared.clone(),
    };
    info!(backuppolicy = %key(policy), backup = %run.start.backup, namespace = %run.start.namespace, "restore drill started");
    // A drill of a deleted (or replaced) policy stops; its Restore goes with the policy.
    let api: Api<BackupPolicy> = Api::namespaced(ctx.shared.client.clone(), &policy.namespace().unwrap_or_default());
    let (name, uid) = (policy.name_any(), policy.uid().unwrap_or_default());
    let handle = tokio::spawn(async move {
        tokio::select! {
            outcome = drill_ctl::run(run) => outcome,
            () = maintenance::policy_gone(&api, &name, &uid) => DrillOutcome {
                result: Err(("PolicyDeleted", "the policy was deleted during the drill".into())),
            },
        }
    });
    ctx.drills.lock().expect("drills").insert(key(policy), (policy.uid().unwrap_or_default(), handle));
}

/// Empties the namespace a failed drill kept, within a deadline (the next reconcile retries).
async fn release_drill_namespace(ctx: &Ctx, policy: &BackupPolicy, namespace: &str) {
    let Ok(Ok(tenant)) = tenant_client(ctx, policy).await else { return };
    match tokio::time::timeout(RELEASE_TIMEOUT, drill_ctl::empty_namespace(&tenant, namespace)).await {
        Ok(Ok(())) => info!(backuppolicy = %key(policy), namespace, "kept drill namespace emptied"),
        Ok(Err((_, message))) => {
            warn!(backuppolicy = %key(policy), namespace, %message, "cannot empty the drill namespace")
        }
        Err(_) => {
            warn!(backuppolicy = %key(policy), namespace, "emptying the drill namespace goes on at the next reconcile")
        }
    }
}

fn sync_due(ctx: &Ctx, key: &str) -> bool {
    ctx.last_sync.lock().expect("sync map").get(key).is_none_or(|t| t.elapsed() >= SYNC_INTERVAL)
}

/// The client that acts as `policy`'s ServiceAccount, or the reason and message of the
/// condition that says why there is none.
async fn tenant_client(
    ctx: &Ctx,
    policy: &BackupPolicy,
) -> Result<Result<TenantClient, (&'static str, String)>, Error> {
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
    tenant: &TenantClient,
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
        && status.maintenance == current.maintenance
        && status.drill == current.drill
        && status.last_verified_restore == current.last_verified_restore;
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

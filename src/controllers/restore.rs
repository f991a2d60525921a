//! The Restore controller: brings back one Backup in the app-aware order of
//! [`crate::resources::restore::Stage`], one stage per step, recording the stage reached in
//! the status (so a restarted operator resumes where it stopped). It reads what the planner
//! ([`crate::resources::restore::plan`]) asks for, executes the step it decides, and records
//! the outcome:
//! Secrets/ConfigMaps -> PVCs -> DatabaseInstances (then wait until Ready) -> database data
//! Jobs -> volume data Jobs -> AppEnvironments and the rest.
//!
//! Before any of it, every target namespace must exist: Berth does not create namespaces, so
//! a missing one is reported (`NamespaceNotFound`) and looked at again every 30 s, and the
//! restore starts once it is there. Every wait inside a stage has a deadline counted from
//! `status.stageStartTime`, after which the restore fails with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use tracing::{info, warn};

use super::backup::{POLICY_LABEL, phase};
use super::repository;
use super::{CachesSynced, Context, ControllerContext, Error, api, cache, drive, synced_store, when_synced};
use crate::api::DatabaseInstance;
use crate::api::backup::Backup;
use crate::api::backuppolicy::BackupPolicy;
use crate::api::backuppolicy::StorageLocation;
use crate::api::conditions::{self, READY};
use crate::api::restore::{ExistingResourcePolicy, Restore, RestoreStatus};
use crate::backup::resources::{BackupManifest, load_objects};
use crate::resources::backup::{AgentTask, JobSettings, agent_job, job_name, job_outcome};
use crate::resources::backuppolicy::validate as validate_policy;
use crate::resources::meta::owner_label_key;
use crate::resources::restore::plan::{
    self, AfterStage, Fact, JOB_BACKOFF_LIMIT, NEXT_STAGE, Observed, POLL, ReadyFact, StageOutcome, Step,
};
use crate::resources::restore::{
    Access, DataWrites, NamespaceState, ResourceName, RestorePlan, Stage, create_refused, required_access,
    synced_secrets_note, target_namespace, timeout,
};
use crate::runtime::impersonate::{ACCOUNT_NOT_ALLOWED, Account, TenantClient, allowed};

pub const NAME: &str = "restore";
const STATUS_MANAGER: &str = "berth/restore-status";
const MANAGER: &str = "berth/restore";
/// How long reading the Backup (its repository opened, its objects downloaded) may take in one
/// reconcile; past it the read is retried, and `spec.timeout` bounds the retries.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

struct Ctx {
    shared: Arc<Context>,
    jobs: Store<Job>,
    caches: CachesSynced,
    /// Each running Restore's opened backup, so that the polls of a stage neither derive the
    /// repository key again nor download the objects again.
    loaded: std::sync::Mutex<HashMap<String, CachedLoad>>,
}

/// A Restore's loaded backup, valid while the Restore's generation and the Backup's and
/// policy's resourceVersions are those it was loaded at.
struct CachedLoad {
    fingerprint: String,
    loaded: Arc<Loaded>,
    used: std::time::Instant,
}

/// A loaded backup unused this long belongs to a Restore that is gone.
const LOADED_IDLE: Duration = Duration::from_secs(600);

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
    let (jobs, job_stream) = cache::<Job>(&client, ns, watcher::Config::default().labels(&owner_label_key("Restore")));
    let controller = Controller::new(api::<Restore>(&client, ns), watcher::Config::default()).owns_stream(job_stream);
    let main_store = controller.store();
    let (caches_synced, caches) = CachesSynced::new();
    let job_store = jobs.clone();
    when_synced(
        async move {
            synced_store(&job_store).await;
            synced_store(&main_store).await;
        },
        caches_synced,
        synced,
    );
    let ctx = Arc::new(Ctx { shared, jobs, caches, loaded: Default::default() });
    drive(NAME, controller, shutdown, ctx, |obj, ctx| async move { reconcile_restore(&obj, &ctx).await }).await;
}

fn key(r: &Restore) -> String {
    format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any())
}

/// Everything a step needs: the Backup, its manifest and the plan.
struct Loaded {
    backup: Backup,
    policy: BackupPolicy,
    manifest: BackupManifest,
    plan: RestorePlan,
}

async fn reconcile_restore(cached: &Restore, ctx: &Ctx) -> Result<Action, Error> {
    // Each step is decided from the status as the server has it (a stale one would redo a
    // finished step).
    let Some(restore) = super::read_fresh(&ctx.shared.client, cached).await? else { return Ok(Action::await_change()) };
    let restore = &restore;
    let status = restore.status.clone().unwrap_or_default();
    let own_namespace = restore.namespace().unwrap_or_default();
    let limit = timeout(restore);
    let mut observed = Observed {
        deleting: restore.meta().deletion_timestamp.is_some(),
        status: &status,
        timeout: limit.as_ref().copied().map_err(ToString::to_string),
        created: restore.meta().creation_timestamp.as_ref().map(|t| t.0),
        now: jiff::Timestamp::now(),
        dry_run: restore.spec.dry_run,
        account: None,
        first_target: None,
        backup: None,
        targets: None,
        access: None,
    };
    // What the reads found, for the steps that use it.
    let mut tenant = None;
    let mut loaded = None;
    loop {
        match plan::next(&observed) {
            Step::Read(Fact::Account) => {
                // Everything the restore reads and writes for the tenant goes through its account.
                let requested = [restore.spec.service_account_name.as_deref()];
                let account = ctx.shared.tenants.policy.account(&own_namespace, &requested, "spec.serviceAccountName");
                observed.account = Some(match account {
                    Err(e) => Err((ACCOUNT_NOT_ALLOWED, e.to_string())),
                    Ok(account) => match ctx.shared.act_as(&account).await? {
                        Ok(client) => {
                            let name = account.to_string();
                            tenant = Some(Tenant { client, account });
                            Ok(name)
                        }
                        Err(refusal) => Err(refusal),
                    },
                });
            }
            Step::Read(Fact::FirstTarget) => {
                // A Backup holds the objects of its own namespace, the Restore's: its target is
                // known before the repository is opened.
                let target = target_namespace(restore, &own_namespace);
                observed.first_target = Some(namespace_states(ctx, [target], &own_namespace).await?);
            }
            Step::Read(Fact::Backup) => {
                let client = &tenant.as_ref().expect("the account is read first").client;
                let found = match tokio::time::timeout(LOAD_TIMEOUT, load(restore, ctx, client)).await {
                    Ok(found) => found?,
                    Err(_) => {
                        return Err(Error::DependencyMissing(format!(
                            "reading the backup from its repository took longer than {}s; trying again",
                            LOAD_TIMEOUT.as_secs()
                        )));
                    }
                };
                observed.backup = Some(found.map(|l| loaded = Some(l)));
            }
            Step::Read(Fact::Targets) => {
                let loaded = loaded.as_ref().expect("the backup is read first");
                let mut targets = loaded.plan.namespaces();
                targets.insert(target_namespace(restore, &loaded.backup.namespace().unwrap_or_default()));
                observed.targets = Some(namespace_states(ctx, targets, &own_namespace).await?);
            }
            Step::Read(Fact::Access) => {
                let client = &tenant.as_ref().expect("the account is read first").client;
                let loaded = loaded.as_ref().expect("the backup is read first");
                observed.access = Some(authorize(restore, client, loaded).await?);
            }
            Step::Idle => {
                ctx.loaded.lock().expect("loaded cache").remove(&restore.uid().unwrap_or_default());
                return Ok(Action::await_change());
            }
            Step::Finish { phase, reason, message } => {
                return finish(restore, ctx, status.clone(), phase, reason, message).await;
            }
            Step::WaitForNamespace { phase, reason, message, announce, recheck } => {
                write_status(restore, ctx, status.clone(), phase, reason, message.clone()).await?;
                if announce {
                    publish(ctx, restore, EventType::Warning, reason, &message).await;
                }
                return Ok(Action::requeue(recheck));
            }
            Step::DryRun { notes } => {
                let client = &tenant.as_ref().expect("the account is read first").client;
                let loaded = loaded.as_ref().expect("the backup is read first");
                let answers = observed.access.as_deref().unwrap_or_default();
                let listed = dry_run(client, &loaded.plan, answers).await?;
                let mut status = status.clone();
                let message = plan::dry_run(&mut status, loaded.backup.name_any(), notes, listed);
                return finish(restore, ctx, status, phase::COMPLETED, "DryRun", message).await;
            }
            Step::RunStage(stage) => {
                let tenant = tenant.as_ref().expect("the account is read first");
                let loaded = loaded.as_ref().expect("the backup is read first");
                let limit = *limit.as_ref().expect("the planner checked spec.timeout");
                return run_step(restore, ctx, tenant, loaded, stage, status.clone(), limit).await;
            }
        }
    }
}

/// Runs `stage` once and records what its outcome leads to.
async fn run_step(
    restore: &Restore,
    ctx: &Ctx,
    tenant: &Tenant,
    loaded: &Loaded,
    stage: Stage,
    mut status: RestoreStatus,
    limit: Duration,
) -> Result<Action, Error> {
    status.backup_name = Some(loaded.backup.name_any());
    if status.stage_start_time.is_none() {
        status.stage_start_time = Some(Time(jiff::Timestamp::now()));
    }
    let outcome = run_stage(restore, ctx, tenant, loaded, stage, &mut status, limit).await?;
    match plan::after_stage(stage, outcome, &status) {
        AfterStage::Wait(message) => {
            write_status(restore, ctx, status, phase::IN_PROGRESS, "InProgress", message).await?;
            Ok(Action::requeue(POLL))
        }
        AfterStage::Next(next) => {
            let message = plan::enter_stage(&mut status, next, jiff::Timestamp::now());
            write_status(restore, ctx, status, phase::IN_PROGRESS, "InProgress", message).await?;
            Ok(Action::requeue(NEXT_STAGE))
        }
        AfterStage::Finish { phase, reason, message } => finish(restore, ctx, status, phase, reason, message).await,
    }
}

/// Whether each of `namespaces` exists (the Restore's own namespace is known to).
async fn namespace_states(
    ctx: &Ctx,
    namespaces: impl IntoIterator<Item = String>,
    own: &str,
) -> Result<Vec<(String, NamespaceState)>, Error> {
    let api: Api<Namespace> = Api::all(ctx.shared.client.clone());
    let mut states = Vec::new();
    for name in namespaces.into_iter().filter(|n| n != own) {
        let state = match api.get_opt(&name).await? {
            None => NamespaceState::Missing,
            Some(ns)
                if ns.metadata.deletion_timestamp.is_some()
                    || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating") =>
            {
                NamespaceState::Terminating
            }
            Some(_) => NamespaceState::Active,
        };
        states.push((name, state));
    }
    Ok(states)
}

async fn publish(ctx: &Ctx, restore: &Restore, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1024).collect()),
        action: "Restore".into(),
        secondary: None,
    };
    if let Err(e) = ctx.shared.recorder.publish(&event, &restore.object_ref(&())).await {
        warn!(restore = %key(restore), error = %e, "could not record an event");
    }
}

/// Resolves the Backup, opens its repository, reads its objects and plans the restore. A
/// problem the user must fix comes back as `Err((reason, message))`.
async fn load(
    restore: &Restore,
    ctx: &Ctx,
    tenant: &TenantClient,
) -> Result<Result<Arc<Loaded>, (&'static str, String)>, Error> {
    let ns = restore.namespace().unwrap_or_default();
    let backups: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let backup = match (&restore.spec.backup_name, &restore.spec.policy_name) {
        (Some(name), _) => match backups.get_opt(name).await? {
            Some(b) => b,
            None => {
                return Ok(Err((
                    "BackupNotFound",
                    format!("spec.backupName: Backup {name:?} does not exist in namespace {ns:?}"),
                )));
            }
        },
        (None, Some(policy)) => {
            let list = backups.list(&ListParams::default().labels(&format!("{POLICY_LABEL}={policy}"))).await?;
            let completion = |b: &Backup| b.status.as_ref().and_then(|s| s.completion_time.clone()).map(|t| t.0);
            let newest = list
                .items
                .into_iter()
                .filter(|b| b.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase::COMPLETED))
                .max_by_key(completion);
            match newest {
                Some(b) => b,
                None => {
                    return Ok(Err((
                        "BackupNotFound",
                        format!("spec.policyName: BackupPolicy {policy:?} has no Completed Backup yet"),
                    )));
                }
            }
        }
        (None, None) => return Ok(Err(("InvalidSpec", "set spec.backupName or spec.policyName".into()))),
    };
    let backup_phase = backup.status.as_ref().and_then(|s| s.phase.as_deref());
    if !matches!(backup_phase, Some(phase::COMPLETED | phase::PARTIALLY_FAILED)) {
        return Ok(Err((
            "BackupNotRestorable",
            format!(
                "Backup {:?} is {}; only Completed or PartiallyFailed backups can be restored",
                backup.name_any(),
                backup_phase.unwrap_or("New")
            ),
        )));
    }
    let policies: Api<BackupPolicy> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let Some(policy) = policies.get_opt(&backup.spec.policy_name).await? else {
        return Ok(Err((
            "PolicyNotFound",
            format!(
                "Backup {:?} belongs to BackupPolicy {:?}, which does not exist: its storage settings are needed to read the backup; create the policy (suspended) first",
                backup.name_any(),
                backup.spec.policy_name
            ),
        )));
    };
    if let Err(errors) = validate_policy(&policy) {
        let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return Ok(Err(("InvalidPolicy", message)));
    }
    let uid = restore.uid().unwrap_or_default();
    let fingerprint = format!(
        "{}/{}/{}",
        restore.meta().generation.unwrap_or_default(),
        backup.resource_version().unwrap_or_default(),
        policy.resource_version().unwrap_or_default()
    );
    if let Some(hit) = ctx.loaded.lock().expect("loaded cache").get_mut(&uid)
        && hit.fingerprint == fingerprint
    {
        hit.used = std::time::Instant::now();
        return Ok(Ok(hit.loaded.clone()));
    }
    let repo = match repository::open(tenant, &ns, &policy.spec.storage, "spec.storage").await {
        Ok(r) => r,
        Err(repository::RepositoryError::Kube(e)) if super::is_transient(&e) => return Err(e.into()),
        Err(e) => return Ok(Err((e.reason(), e.to_string()))),
    };
    let (manifest, objects) = match load_objects(&repo, &backup.name_any()).await {
        Ok(x) => x,
        Err(e) => return Ok(Err(("BackupUnreadable", e.to_string()))),
    };
    match crate::resources::restore::plan(restore, objects) {
        Ok(plan) => {
            let loaded = Arc::new(Loaded { backup, policy, manifest, plan });
            let mut cache = ctx.loaded.lock().expect("loaded cache");
            cache.retain(|_, c| c.used.elapsed() < LOADED_IDLE);
            let used = std::time::Instant::now();
            cache.insert(uid, CachedLoad { fingerprint, loaded: loaded.clone(), used });
            Ok(Ok(loaded))
        }
        Err(errors) => Ok(Err(("InvalidSpec", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))),
    }
}

/// The Restore's account and a client that acts as it.
struct Tenant {
    client: TenantClient,
    account: Account,
}

/// Asks the API server, as the restore's account, about every request the restore needs
/// ([`required_access`]), and returns each request with the answer.
async fn authorize(restore: &Restore, tenant: &kube::Client, loaded: &Loaded) -> Result<Vec<(Access, bool)>, Error> {
    let mut resources = HashMap::new();
    for obj in loaded.plan.stages.iter().flat_map(|(_, objects)| objects) {
        let key = (obj["apiVersion"].clone(), obj["kind"].clone());
        if let std::collections::hash_map::Entry::Vacant(entry) = resources.entry(key) {
            let found = resource_of(tenant, obj).await.ok().map(|(ar, namespaced)| ResourceName {
                group: ar.group,
                plural: ar.plural,
                namespaced,
            });
            entry.insert(found);
        }
    }
    let storage = &loaded.policy.spec.storage;
    let own_namespace = restore.namespace().unwrap_or_default();
    let target = target_namespace(restore, &loaded.backup.namespace().unwrap_or_default());
    let data = DataWrites {
        own_namespace: &own_namespace,
        target_namespace: &target,
        storage_secrets: storage_secret_names(storage).map(String::as_str).collect(),
        snapshots: loaded.manifest.snapshots.iter().map(|s| (s.kind.as_str(), s.source.as_str())).collect(),
    };
    let update = restore.spec.existing_resource_policy == Some(ExistingResourcePolicy::Update);
    let needed = required_access(&loaded.plan, update, &data, |obj| {
        resources.get(&(obj["apiVersion"].clone(), obj["kind"].clone())).cloned().flatten()
    });
    let mut answers = Vec::with_capacity(needed.len());
    for access in needed {
        let ok = allowed(tenant, &access).await?;
        answers.push((access, ok));
    }
    Ok(answers)
}

/// Runs `stage` once: creates its objects, or waits for the DatabaseInstances and runs the
/// data Jobs.
async fn run_stage(
    restore: &Restore,
    ctx: &Ctx,
    tenant: &Tenant,
    loaded: &Loaded,
    stage: Stage,
    status: &mut RestoreStatus,
    limit: Duration,
) -> Result<StageOutcome, Error> {
    match stage {
        Stage::ConfigAndSecrets | Stage::Volumes | Stage::Databases | Stage::Apps => {
            if stage == Stage::ConfigAndSecrets
                && let Some(note) = synced_secrets_note(&loaded.plan.dropped)
            {
                let reason = crate::resources::restore::reason::SYNCED_BY_EXTERNAL_SECRETS;
                publish(ctx, restore, EventType::Normal, reason, &note).await;
            }
            apply_objects(restore, &tenant.client, loaded.plan.objects(stage), status).await?;
            Ok(StageOutcome::Done)
        }
        Stage::DatabaseData => {
            // The instances come up (and provision) before their data is loaded.
            for obj in loaded.plan.objects(Stage::Databases) {
                let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                let api: Api<DatabaseInstance> = Api::namespaced(kube::Client::clone(&tenant.client), ns);
                let ready = api.get_opt(name).await?.and_then(|db| {
                    let s = db.status.as_ref()?;
                    let c = s.conditions.iter().find(|c| c.type_ == READY)?;
                    Some(ReadyFact {
                        ready: c.status == "True",
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        current: s.observed_generation == db.metadata.generation,
                    })
                });
                if let Some(outcome) = plan::database_wait(ns, name, ready.as_ref(), status, jiff::Timestamp::now()) {
                    return Ok(outcome);
                }
            }
            run_jobs(restore, ctx, tenant, loaded, stage, status, limit).await
        }
        Stage::VolumeData => run_jobs(restore, ctx, tenant, loaded, stage, status, limit).await,
    }
}

/// Runs (and waits for) one agent Job per database dump or volume of the Backup.
async fn run_jobs(
    restore: &Restore,
    ctx: &Ctx,
    tenant: &Tenant,
    loaded: &Loaded,
    stage: Stage,
    status: &mut RestoreStatus,
    limit: Duration,
) -> Result<StageOutcome, Error> {
    let source_ns = loaded.backup.namespace().unwrap_or_default();
    let ns = target_namespace(restore, &source_ns);
    if ns != restore.namespace().unwrap_or_default() {
        copy_storage_secrets(&tenant.client, &restore.namespace().unwrap_or_default(), &ns, &loaded.policy).await?;
    }
    let created = restore.meta().creation_timestamp.as_ref().map(|t| t.0);
    let mut waiting = Vec::new();
    for snap in &loaded.manifest.snapshots {
        let Some(task) = plan::data_task(stage, &snap.kind, &snap.source, &snap.snapshot) else { continue };
        let job_name = job_name(&restore.name_any(), &format!("{}/{}", snap.kind, snap.source));
        match ctx.jobs.get(&ObjectRef::new(&job_name).within(&ns)) {
            None => {
                let owner = restore.controller_owner_ref(&()).expect("a Restore from the API has a uid");
                // A volume is restored on the node and as the user of the pod that mounts it.
                let consumer = match &task {
                    AgentTask::RestoreVolume { pvc, .. } => {
                        super::backup::volume_consumer(&tenant.client, &ns, pvc).await?
                    }
                    _ => None,
                };
                let settings = JobSettings {
                    owner: &owner,
                    namespace: &ns,
                    name: &job_name,
                    image: &ctx.shared.agent_image,
                    storage: &loaded.policy.spec.storage,
                    tags: Vec::new(),
                    consumer,
                    deadline_seconds: plan::job_deadline_seconds(limit, created, jiff::Timestamp::now()),
                    backoff_limit: JOB_BACKOFF_LIMIT,
                    // The account lives in the Restore's namespace; elsewhere the pod runs as
                    // that namespace's `default` (without a token, as always).
                    service_account: (ns == tenant.account.namespace).then_some(tenant.account.name.as_str()),
                };
                let mut job = agent_job(&task, &settings);
                if ns != restore.namespace().unwrap_or_default() {
                    // An owner in another namespace is not allowed: such Jobs are left to their TTL.
                    job.metadata.owner_references = None;
                }
                job.labels_mut().insert(owner_label_key("Restore"), restore.name_any());
                // Created as the account: a Job runs pods in its namespace.
                let jobs: Api<Job> = Api::namespaced(kube::Client::clone(&tenant.client), &ns);
                match jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => info!(restore = %key(restore), job = %job_name, "started agent Job"),
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    // Refused (forbidden, invalid): retrying cannot help; the item fails.
                    Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                        let message = format!("cannot create Job {ns}/{job_name} for {}: {}", task.name(), s.message);
                        plan::record_error(status, message);
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
                waiting.push(job_name);
            }
            Some(job) => match job_outcome(&job) {
                None => waiting.push(job_name),
                Some(Ok(())) => {}
                Some(Err(message)) => {
                    let message = super::backup::job_error(&ctx.shared.client, &ns, &job_name, message).await?;
                    plan::record_error(status, message);
                }
            },
        }
    }
    Ok(plan::jobs_outcome(&waiting, &ns, status, jiff::Timestamp::now()))
}

/// The Secrets (credentials, CA, key) that the agent Jobs of `storage` read.
fn storage_secret_names(storage: &StorageLocation) -> impl Iterator<Item = &String> {
    storage
        .credentials_secret
        .iter()
        .chain(storage.ca_secret.iter())
        .chain(std::iter::once(&storage.encryption_key_secret))
}

/// The agent Jobs of a restore into another namespace read the storage Secrets there: copies
/// them (credentials, CA, key) from the Restore's namespace when the target lacks them. As the
/// Restore's account (`client`): only where it may read and create Secrets itself.
async fn copy_storage_secrets(client: &kube::Client, from: &str, to: &str, policy: &BackupPolicy) -> Result<(), Error> {
    let source: Api<Secret> = Api::namespaced(client.clone(), from);
    let target: Api<Secret> = Api::namespaced(client.clone(), to);
    for name in storage_secret_names(&policy.spec.storage) {
        if target.get_opt(name).await?.is_some() {
            continue;
        }
        let Some(secret) = source.get_opt(name).await? else { continue };
        let copy = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(to.to_string()),
                labels: secret.metadata.labels.clone(),
                ..Default::default()
            },
            data: secret.data.clone(),
            type_: secret.type_.clone(),
            ..Secret::default()
        };
        match target.create(&PostParams::default(), &copy).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        info!(secret = %name, from, to, "copied a storage Secret for the restore Jobs");
    }
    Ok(())
}

/// The API resource of an object's apiVersion and kind.
async fn resource_of(client: &kube::Client, obj: &Value) -> Result<(ApiResource, bool), Error> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok((ar, caps.scope == kube::discovery::Scope::Namespaced))
}

/// Creates the objects (or, with `existingResourcePolicy: update`, updates existing ones),
/// counting what happened; a failure of one object is recorded, not fatal.
async fn apply_objects(
    restore: &Restore,
    client: &kube::Client,
    objects: &[Value],
    status: &mut RestoreStatus,
) -> Result<(), Error> {
    let update = restore.spec.existing_resource_policy == Some(ExistingResourcePolicy::Update);
    for obj in objects {
        let describe = describe(obj);
        let (ar, namespaced) = match resource_of(client, obj).await {
            Ok(x) => x,
            Err(e) => {
                status.errors.push(format!("{describe}: {e}"));
                continue;
            }
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
            Some(ns) if namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let object: DynamicObject = match serde_json::from_value(obj.clone()) {
            Ok(o) => o,
            Err(e) => {
                status.errors.push(format!("{describe}: {e}"));
                continue;
            }
        };
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => *status.created.get_or_insert(0) += 1,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                if update {
                    let params = PatchParams::apply(MANAGER).force();
                    match api.patch(name, &params, &Patch::Apply(obj)).await {
                        Ok(_) => *status.updated.get_or_insert(0) += 1,
                        Err(e) if super::is_transient(&e) => return Err(e.into()),
                        Err(e) => status.errors.push(format!("{describe}: {e}")),
                    }
                } else {
                    *status.skipped.get_or_insert(0) += 1;
                }
            }
            // A 5xx or 429 is no outcome: the stage runs again (what was created is then found).
            Err(e) if super::is_transient(&e) => return Err(e.into()),
            Err(e) => status.errors.push(format!("{describe}: {e}")),
        }
    }
    Ok(())
}

fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// What a restore would do, object by object, without doing it.
/// `answers`: the account's access reviews; an object it may not create is listed as refused
/// and not looked up (a read there would be refused too).
async fn dry_run(client: &kube::Client, plan: &RestorePlan, answers: &[(Access, bool)]) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for stage in Stage::ALL {
        for obj in plan.objects(stage) {
            let describe = describe(obj);
            let exists = match resource_of(client, obj).await {
                Ok((ar, namespaced)) => {
                    let resource = ResourceName { group: ar.group.clone(), plural: ar.plural.clone(), namespaced };
                    if create_refused(answers, obj, &resource) {
                        out.push(format!("refused {describe}"));
                        continue;
                    }
                    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
                        Some(ns) if namespaced => Api::namespaced_with(client.clone(), ns, &ar),
                        _ => Api::all_with(client.clone(), &ar),
                    };
                    // The account may not read it: then it cannot be told, which the
                    // refusal at the top of the list explains.
                    match api.get_opt(obj["metadata"]["name"].as_str().unwrap_or_default()).await {
                        Ok(found) => found.is_some(),
                        Err(kube::Error::Api(s)) if s.code == 403 => false,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(_) => false,
            };
            out.push(format!("{} {describe}", if exists { "exists" } else { "create" }));
        }
    }
    for dropped in &plan.dropped {
        out.push(format!("skip {} ({})", dropped.object, dropped.reason));
    }
    Ok(out)
}

async fn finish(
    restore: &Restore,
    ctx: &Ctx,
    status: RestoreStatus,
    new_phase: &str,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    info!(restore = %key(restore), phase = new_phase, %message, "restore finished");
    ctx.loaded.lock().expect("loaded cache").remove(&restore.uid().unwrap_or_default());
    write_status(restore, ctx, status, new_phase, reason, message).await?;
    Ok(Action::await_change())
}

async fn write_status(
    restore: &Restore,
    ctx: &Ctx,
    mut status: RestoreStatus,
    new_phase: &str,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let current = restore.status.clone().unwrap_or_default();
    let generation = restore.meta().generation;
    let ready = new_phase == phase::COMPLETED;
    let desired = phase::conditions(new_phase, reason, &message);
    status.conditions = conditions::merge(&current.conditions, &desired, generation, &Time(jiff::Timestamp::now()));
    status.observed_generation = generation;
    status.phase = Some(new_phase.to_string());
    if status == current {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": Restore::api_version(&()),
        "kind": Restore::kind(&()),
        "status": status,
    });
    let api: Api<Restore> = Api::namespaced(ctx.shared.client.clone(), &restore.namespace().unwrap_or_default());
    api.patch_status(&restore.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch)).await?;
    if current.phase.as_deref() != Some(new_phase) && phase::is_terminal(Some(new_phase)) {
        let type_ = if ready { EventType::Normal } else { EventType::Warning };
        publish(ctx, restore, type_, reason, &message).await;
    }
    Ok(())
}

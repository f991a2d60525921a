//! The Backup controller: one backup run, driven by its status. It observes (the object, its
//! agent Jobs, the repository), asks the planner ([`crate::resources::backup::plan`]) for the
//! next step, executes it with a deadline and records the outcome in the status.
//!
//! New -> open (or create) the policy's repository and decide the items -> InProgress: one
//! agent Job per database and volume (children of the Backup) -> when every Job has ended,
//! export the selected Kubernetes objects through the repository module and write the
//! manifest -> Completed, PartiallyFailed or Failed. Every failure ends in a terminal phase
//! with a reason: a Backup is never left InProgress because its storage is unreachable.
//! Deleting a Backup keeps its data unless `spec.deleteData` is true (finalizer).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{DynamicObject, Selector};
use kube::discovery::Discovery;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use tracing::{info, warn};

use super::repository::{self, RepositoryError};
use super::{CachesSynced, Context, ControllerContext, Error, api, cache, drive, synced_store, when_synced};
use crate::api::backup::{Backup, BackupStatus};
use crate::api::backuppolicy::BackupPolicy;
use crate::api::conditions;
use crate::api::databaseinstance::Engine;
use crate::api::{AppEnvironment, DatabaseInstance};
use crate::backup::Repository;
use crate::backup::resources::{SnapshotRef, store_objects};
use crate::resources::backup::plan::{
    self, Deletion, DeletionStep, Failure, ItemStep, JOB_BACKOFF_LIMIT, JOB_DEADLINE_SECONDS, JOBS_RECHECK, JobState,
    Observed, PolicyFact, SnapshotFact, Step,
};
use crate::resources::backup::{AgentTask, JobSettings, agent_job, job_name, job_outcome, jobs, snapshot_tags};
use crate::resources::backuppolicy::{ValidPolicy, validate as validate_policy};
use crate::resources::meta::owner_label_key;
use crate::runtime::impersonate::{ACCOUNT_NOT_ALLOWED, ACCOUNT_NOT_FOUND, TenantClient};

pub const NAME: &str = "backup";
const STATUS_MANAGER: &str = "berth/backup-status";
/// Label on Backups naming their BackupPolicy.
pub const POLICY_LABEL: &str = "berth.dev/backuppolicy";
/// Manifest label: the uid of the Backup object that wrote it.
const BACKUP_UID_LABEL: &str = "berth.dev/backup-uid";
/// Label on Backups that were found in the bucket rather than run by this cluster.
pub const SYNCED_LABEL: &str = "berth.dev/synced";
/// Finalizer that deletes the data of a Backup with `spec.deleteData`.
pub const DATA_FINALIZER: &str = "berth.dev/backup-data";
pub use crate::resources::backup::plan::SKIP_DATA_DELETION;
/// Condition of a Backup being deleted whose data could not be deleted yet.
pub const DATA_DELETED: &str = "DataDeleted";
/// Label on PVCs whose files are backed up with their AppEnvironment (value: the app's name).
pub const VOLUME_APP_LABEL: &str = "berth.dev/appenvironment";
/// How long the export and the manifest of a finished Backup may take in one reconcile; past
/// it the step is retried (it stores the objects once), and [`plan::BACKUP_DEADLINE`] bounds the
/// retries.
const FINISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How long deleting a Backup's data may take in one reconcile; past it the deletion is
/// blocked like unreachable storage (and retried).
const DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

pub use crate::resources::backup::phase;

struct Ctx {
    shared: Arc<Context>,
    jobs: Store<Job>,
    caches: CachesSynced,
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
    let (jobs, job_stream) =
        cache::<Job>(&client, ns, watcher::Config::default().labels(&owner_label_key("Backup").to_string()));
    let controller = Controller::new(api::<Backup>(&client, ns), watcher::Config::default()).owns_stream(job_stream);
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
    let ctx = Arc::new(Ctx { shared, jobs, caches });
    drive(NAME, controller, shutdown, ctx, |obj, ctx| async move { reconcile_backup(&obj, &ctx).await }).await;
}

fn key(b: &Backup) -> String {
    format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any())
}

/// The failure of a repository that cannot be opened, or the error to retry when the cause is
/// an API error that may pass (a 5xx or 429 reading its Secrets).
fn open_failure(e: RepositoryError) -> Result<Failure, Error> {
    match e {
        RepositoryError::Kube(e) if super::is_transient(&e) => Err(e.into()),
        e => Ok(repository_failure(e)),
    }
}

fn repository_failure(e: RepositoryError) -> Failure {
    Failure { reason: e.reason(), message: e.to_string() }
}

async fn reconcile_backup(cached: &Backup, ctx: &Ctx) -> Result<Action, Error> {
    // Each step is decided from the status as the server has it (a stale one would export and
    // complete a finished Backup again).
    let Some(backup) = super::read_fresh(&ctx.shared.client, cached).await? else { return Ok(Action::await_change()) };
    let backup = &backup;
    let status = backup.status.clone().unwrap_or_default();
    let observed = Observed {
        deleting: backup.meta().deletion_timestamp.is_some(),
        delete_data: backup.spec.delete_data,
        has_finalizer: backup.finalizers().iter().any(|f| f == DATA_FINALIZER),
        synced: backup.labels().get(SYNCED_LABEL).is_some_and(|v| v == "true"),
        labelled: backup.labels().get(POLICY_LABEL) == Some(&backup.spec.policy_name),
        status: &status,
        now: jiff::Timestamp::now(),
    };
    match plan::plan(&observed) {
        Step::Delete => delete_data(backup, ctx).await,
        Step::AddFinalizer => {
            let mut finalizers = backup.finalizers().to_vec();
            finalizers.push(DATA_FINALIZER.into());
            set_finalizers(backup, ctx, finalizers).await?;
            Ok(Action::await_change())
        }
        Step::LabelWithPolicy => {
            let api: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &backup.namespace().unwrap_or_default());
            let patch = serde_json::json!({"metadata": {"labels": {POLICY_LABEL: backup.spec.policy_name}}});
            api.patch(&backup.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            Ok(Action::await_change())
        }
        Step::Idle => Ok(Action::await_change()),
        Step::Start => start(backup, ctx).await,
        Step::RunJobs => run_jobs(backup, ctx, status).await,
        Step::Fail(failure) => fail(backup, ctx, status, failure).await,
    }
}

/// The Backup's valid policy and a client that acts as the Backup's ServiceAccount (its own
/// `spec.serviceAccountName`, else its policy's, else the operator's default), or why not.
async fn policy(ctx: &Ctx, backup: &Backup) -> Result<Result<(ValidPolicy, TenantClient, String), Failure>, Error> {
    let ns = backup.namespace().unwrap_or_default();
    let api: Api<BackupPolicy> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let Some(policy) = api.get_opt(&backup.spec.policy_name).await? else {
        return Ok(Err(Failure {
            reason: "PolicyNotFound",
            message: format!(
                "spec.policyName: BackupPolicy {:?} does not exist in namespace {ns:?}; create it or fix the name",
                backup.spec.policy_name
            ),
        }));
    };
    let valid = match validate_policy(&policy) {
        Ok(valid) => valid,
        Err(errors) => {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return Ok(Err(Failure { reason: "InvalidPolicy", message }));
        }
    };
    let requested = [backup.spec.service_account_name.as_deref(), policy.spec.service_account_name.as_deref()];
    let account = match ctx.shared.tenants.policy.account(&ns, &requested, "spec.serviceAccountName") {
        Ok(account) => account,
        Err(e) => return Ok(Err(Failure { reason: ACCOUNT_NOT_ALLOWED, message: e.to_string() })),
    };
    Ok(match ctx.shared.act_as(&account).await? {
        Ok(client) => Ok((valid, client, account.name)),
        Err((reason, message)) => Err(Failure { reason, message }),
    })
}

/// New: opens the repository and lists the items; InProgress from then on.
async fn start(backup: &Backup, ctx: &Ctx) -> Result<Action, Error> {
    let (policy, tenant, account) = match policy(ctx, backup).await? {
        Ok(p) => p,
        Err(f) => return fail(backup, ctx, BackupStatus::default(), f).await,
    };
    let ns = backup.namespace().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let failed_start = BackupStatus { start_time: Some(Time(now)), ..BackupStatus::default() };
    if let Err(e) = repository::open(&tenant, &ns, &policy.policy.spec.storage, "spec.storage").await {
        return fail(backup, ctx, failed_start, open_failure(e)?).await;
    }
    let (databases, volumes) = match sources(&tenant, &ns, &policy).await {
        Ok(sources) => sources,
        // The account's Role lacks a read: asking again cannot help, the Backup ends.
        Err(Error::Kube(e)) if refusal(&e).is_some() => {
            let failure = plan::listing_refused(&ns, &account, &refusal(&e).unwrap_or_default());
            return fail(backup, ctx, failed_start, failure).await;
        }
        Err(e) => return Err(e),
    };
    let status = plan::started(now, &databases, &volumes);
    info!(backup = %key(backup), items = status.items.len(), "backup started");
    write_status(backup, ctx, status, phase::IN_PROGRESS, None).await?;
    Ok(Action::await_change())
}

/// The names of the selected databases and volumes of a new Backup.
async fn sources(tenant: &kube::Client, ns: &str, policy: &ValidPolicy) -> Result<(Vec<String>, Vec<String>), Error> {
    let scope = &policy.policy.spec.scope;
    let mut databases = Vec::new();
    if scope.databases.unwrap_or(true) {
        databases = selected::<DatabaseInstance>(tenant, ns, policy).await?.iter().map(|db| db.name_any()).collect();
    }
    let mut claims = Vec::new();
    if scope.volumes.unwrap_or(false) {
        claims = volumes(tenant, ns, policy).await?.iter().map(|pvc| pvc.name_any()).collect();
    }
    Ok((databases, claims))
}

/// The objects of kind `K` in `ns` that the policy's selector includes.
async fn selected<K>(client: &kube::Client, ns: &str, policy: &ValidPolicy) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut params = ListParams::default();
    if let Some(selector) = &policy.policy.spec.scope.selector {
        let selector = Selector::try_from(selector.clone())
            .map_err(|e| Error::DependencyMissing(format!("spec.scope.selector: {e}")))?;
        params = params.labels_from(&selector);
    }
    Ok(Api::<K>::namespaced(client.clone(), ns).list(&params).await?.items)
}

/// PVCs labelled with an included AppEnvironment's name.
async fn volumes(client: &kube::Client, ns: &str, policy: &ValidPolicy) -> Result<Vec<PersistentVolumeClaim>, Error> {
    let apps: Vec<String> =
        selected::<AppEnvironment>(client, ns, policy).await?.iter().map(|a| a.name_any()).collect();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let all = claims.list(&ListParams::default().labels(VOLUME_APP_LABEL)).await?.items;
    Ok(all.into_iter().filter(|c| c.labels().get(VOLUME_APP_LABEL).is_some_and(|a| apps.contains(a))).collect())
}

/// InProgress: observes each item's Job, executes what the planner asks for each (start the
/// missing Jobs, record the failed ones, collect the snapshots of the succeeded ones), and
/// finishes the Backup once every Job has ended.
async fn run_jobs(backup: &Backup, ctx: &Ctx, mut status: BackupStatus) -> Result<Action, Error> {
    let (policy, tenant, account) = match policy(ctx, backup).await? {
        Ok(p) => p,
        Err(f) => return fail(backup, ctx, status, f).await,
    };
    let ns = backup.namespace().unwrap_or_default();
    let name = backup.name_any();
    let observed: BTreeMap<String, JobState> = status
        .items
        .iter()
        .map(|item| {
            let state = match ctx.jobs.get(&ObjectRef::new(&job_name(&name, &item.name)).within(&ns)) {
                None => JobState::Missing,
                Some(job) => match job_outcome(&job) {
                    None => JobState::Running,
                    Some(Ok(())) => JobState::Succeeded,
                    Some(Err(message)) => JobState::Failed(message),
                },
            };
            (item.name.clone(), state)
        })
        .collect();
    let mut changed = false;
    let mut collect = Vec::new();
    let tenant = Tenant { client: tenant, account };
    for step in plan::job_steps(&status, &observed) {
        match step {
            ItemStep::CreateJob { item } => {
                if let Some(error) = create_job(backup, ctx, &tenant, &policy, &item).await? {
                    plan::fail_item(&mut status, &item, error);
                    changed = true;
                }
            }
            ItemStep::RecordFailure { item, message } => {
                let error = job_error(&ctx.shared.client, &ns, &job_name(&name, &item), message).await?;
                plan::fail_item(&mut status, &item, error);
                changed = true;
            }
            ItemStep::CollectSnapshot { item } => collect.push(item),
        }
    }
    if !collect.is_empty() {
        let repo = match repository::open(&tenant.client, &ns, &policy.policy.spec.storage, "spec.storage").await {
            Ok(repo) => repo,
            Err(e) => return fail(backup, ctx, status, open_failure(e)?).await,
        };
        let snapshots = match repo.list_snapshots().await {
            Ok(list) => list
                .iter()
                .map(|(id, s)| SnapshotFact {
                    id: id.to_hex(),
                    tags: s.tags.clone(),
                    time: s.timestamp(),
                    bytes: s.summary.bytes_total,
                })
                .collect::<Vec<_>>(),
            Err(e) => return fail(backup, ctx, status, repository_failure(e.into())).await,
        };
        for item in &collect {
            plan::record_snapshot(&mut status, &name, item, &snapshots);
        }
        changed = true;
    }
    if !plan::jobs_done(&status) {
        if changed {
            write_status(backup, ctx, status, phase::IN_PROGRESS, None).await?;
        }
        return Ok(Action::requeue(JOBS_RECHECK));
    }
    match tokio::time::timeout(FINISH_TIMEOUT, finish(backup, ctx, &tenant.client, &policy, status)).await {
        Ok(done) => done,
        Err(_) => Err(Error::DependencyMissing(format!(
            "exporting the objects and writing the manifest took longer than {}s; trying again",
            FINISH_TIMEOUT.as_secs()
        ))),
    }
}

/// The Backup's account and a client that acts as it.
struct Tenant {
    client: TenantClient,
    account: String,
}

/// Creates the agent Job of `item` as the Backup's account. Returns the item's error when it
/// cannot run: its source is gone, or the account's Role refuses a read or the Job (which
/// fails the item, not the whole Backup).
async fn create_job(
    backup: &Backup,
    ctx: &Ctx,
    tenant: &Tenant,
    policy: &ValidPolicy,
    item: &str,
) -> Result<Option<String>, Error> {
    let ns = backup.namespace().unwrap_or_default();
    let name = backup.name_any();
    let account = &tenant.account;
    let job_name = job_name(&name, item);
    let refused = |e: Error| match &e {
        Error::Kube(k) => match refusal(k) {
            Some(r) => Ok(Some(format!("cannot read {item} as ServiceAccount {ns}/{account}: {r}"))),
            None => Err(e),
        },
        _ => Err(e),
    };
    let task = match task_for(&tenant.client, &ns, item).await {
        Ok(Some(task)) => task,
        Ok(None) => return Ok(Some(format!("{item} no longer exists"))),
        Err(e) => return refused(e),
    };
    let consumer = match &task {
        AgentTask::BackupVolume { pvc } => match volume_consumer(&tenant.client, &ns, pvc).await {
            Ok(consumer) => consumer,
            Err(e) => return refused(e),
        },
        _ => None,
    };
    let owner = backup.controller_owner_ref(&()).expect("a Backup from the API has a uid");
    let settings = JobSettings {
        owner: &owner,
        namespace: &ns,
        name: &job_name,
        image: &ctx.shared.agent_image,
        storage: &policy.policy.spec.storage,
        tags: snapshot_tags(&name, item),
        consumer,
        deadline_seconds: JOB_DEADLINE_SECONDS,
        backoff_limit: JOB_BACKOFF_LIMIT,
        service_account: Some(account),
    };
    let mut job = agent_job(&task, &settings);
    job.labels_mut().insert(owner_label_key("Backup"), name.clone());
    // Created as the Backup's account: its Role decides whether it may run Jobs here.
    let jobs: Api<Job> = Api::namespaced(kube::Client::clone(&tenant.client), &ns);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => info!(backup = %key(backup), item = %item, job = %job_name, "started agent Job"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => match refusal(&e) {
            Some(reason) => {
                return Ok(Some(format!(
                    "cannot create the agent Job {job_name} as ServiceAccount {ns}/{account}: {reason}"
                )));
            }
            None => return Err(e.into()),
        },
    }
    Ok(None)
}

/// The agent task of an item, or `None` when its source is gone.
async fn task_for(client: &kube::Client, ns: &str, item: &str) -> Result<Option<AgentTask>, Error> {
    if let Some(instance) = item.strip_prefix("database/") {
        let api: Api<DatabaseInstance> = Api::namespaced(client.clone(), ns);
        return Ok(api.get_opt(instance).await?.map(|db| match db.spec.engine {
            Engine::Postgres => AgentTask::BackupPostgres { instance: instance.into() },
            Engine::Rabbitmq => AgentTask::BackupRabbitmq { instance: instance.into() },
        }));
    }
    if let Some(pvc) = item.strip_prefix("volume/") {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        return Ok(api.get_opt(pvc).await?.map(|_| AgentTask::BackupVolume { pvc: pvc.into() }));
    }
    Ok(None)
}

/// A failed Job's message with the agent's own error (from its pods), which says why.
pub(super) async fn job_error(client: &kube::Client, ns: &str, job: &str, message: String) -> Result<String, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await?;
    Ok(match crate::resources::backup::agent_error(&list.items) {
        Some(why) => format!("{message}; the agent said: {why}"),
        None => message,
    })
}

/// The running pod that mounts `pvc`: a ReadWriteOnce volume can only be mounted a second
/// time on its node, and its files are the app's user's.
pub(super) async fn volume_consumer(
    client: &kube::Client,
    ns: &str,
    pvc: &str,
) -> Result<Option<jobs::VolumeConsumer>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods.list(&ListParams::default().fields("status.phase=Running")).await?;
    Ok(jobs::volume_consumer(&list.items, pvc))
}

/// Every Job has ended: exports the Kubernetes objects, writes the manifest and ends the
/// Backup in its terminal phase.
async fn finish(
    backup: &Backup,
    ctx: &Ctx,
    tenant: &TenantClient,
    policy: &ValidPolicy,
    mut status: BackupStatus,
) -> Result<Action, Error> {
    let ns = backup.namespace().unwrap_or_default();
    let name = backup.name_any();
    let repo = match repository::open(tenant, &ns, &policy.policy.spec.storage, "spec.storage").await {
        Ok(repo) => repo,
        Err(e) => return fail(backup, ctx, status, open_failure(e)?).await,
    };
    let exported = match export(tenant, &ns, policy).await {
        Ok(e) => e,
        Err(Error::Kube(e)) if refusal(&e).is_some() => {
            let message = format!("cannot export the namespace's objects: {}", refusal(&e).unwrap_or_default());
            Exported { objects: Vec::new(), failed: vec![(plan::RESOURCES.into(), message)] }
        }
        Err(e) => return Err(e),
    };
    // The manifest records each snapshot with its kind (postgres, rabbitmq, dir) as written:
    // restores pick their agent task from it.
    let mut extra = Vec::new();
    for item in status.items.iter().filter(|i| i.phase == phase::COMPLETED && i.name != plan::RESOURCES) {
        let (Some(id), Some((_, source))) = (&item.snapshot, item.name.split_once('/')) else { continue };
        match repo.find_snapshot(id).await {
            Ok((_, snap)) => extra.push(SnapshotRef {
                kind: snap.kind.clone(),
                snapshot: id.clone(),
                source: source.into(),
                bytes: item.bytes.unwrap_or(0),
            }),
            Err(e) => return fail(backup, ctx, status, repository_failure(e.into())).await,
        }
    }
    let core_failure = exported.failed.iter().find(|(item, _)| item == plan::RESOURCES).map(|(_, e)| e.clone());
    let stored = match core_failure {
        Some(message) => Err(message),
        None => {
            let uid = backup.uid().unwrap_or_default();
            store(&repo, &name, &uid, &ns, &exported.objects, extra, policy).await.map_err(|e| e.to_string())
        }
    };
    let (final_phase, message) = plan::complete(&mut status, exported.failed, stored, jiff::Timestamp::now());
    info!(backup = %key(backup), phase = final_phase, %message, "backup finished");
    write_status(backup, ctx, status, final_phase, Some(message)).await?;
    Ok(Action::await_change())
}

/// Stores the objects and the manifest, once: a manifest of this very Backup (its uid) is there
/// when an earlier attempt stored it and then could not record it in the status (a failed
/// status write, a killed operator), and is used as it is.
async fn store(
    repo: &Repository,
    name: &str,
    uid: &str,
    ns: &str,
    objects: &[Value],
    extra: Vec<SnapshotRef>,
    policy: &ValidPolicy,
) -> crate::backup::Result<(String, u64)> {
    if let Ok(stored) = crate::backup::resources::load_manifest(repo, name).await
        && stored.labels.get(BACKUP_UID_LABEL).is_some_and(|u| u == uid)
        && let Some(kubernetes) = stored.snapshots.iter().find(|s| s.kind == "kubernetes")
    {
        return Ok((kubernetes.snapshot.clone(), kubernetes.bytes));
    }
    let mut manifest = store_objects(repo, name, vec![ns.to_string()], objects, extra).await?;
    manifest.labels.insert(POLICY_LABEL.into(), policy.policy.name_any());
    manifest.labels.insert("berth.dev/namespace".into(), ns.into());
    manifest.labels.insert(BACKUP_UID_LABEL.into(), uid.into());
    crate::backup::resources::save_manifest(repo, &manifest).await?;
    let kubernetes = manifest.snapshots.iter().find(|s| s.kind == "kubernetes").expect("store_objects records it");
    Ok((kubernetes.snapshot.clone(), kubernetes.bytes))
}

/// The Kubernetes objects of the Backup: the selected AppEnvironments and DatabaseInstances,
/// the instances' Secrets (restored passwords must match restored data), the claims of the
/// backed-up volumes, the policy itself and the extra kinds of `spec.scope.extraResources`.
async fn export(client: &kube::Client, ns: &str, policy: &ValidPolicy) -> Result<Exported, Error> {
    let mut objects = Vec::new();
    let mut failed = Vec::new();
    let typed = |v: Result<Value, serde_json::Error>| v.map_err(|source| Error::Serialize { kind: "object", source });
    for app in selected::<AppEnvironment>(client, ns, policy).await? {
        objects.push(typed(serde_json::to_value(app))?);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for db in selected::<DatabaseInstance>(client, ns, policy).await? {
        let selector = format!("{}={}", owner_label_key("DatabaseInstance"), db.name_any());
        for secret in secrets.list(&ListParams::default().labels(&selector)).await?.items {
            objects.push(typed(serde_json::to_value(secret))?);
        }
        objects.push(typed(serde_json::to_value(db))?);
    }
    // The claims of the backed-up volumes: a restore elsewhere (another namespace, a new
    // cluster) creates them before its Jobs mount them to write the data back.
    if policy.policy.spec.scope.volumes.unwrap_or(false) {
        for pvc in volumes(client, ns, policy).await? {
            objects.push(typed(serde_json::to_value(pvc))?);
        }
    }
    let mut own = policy.policy.clone();
    own.status = None;
    objects.push(typed(serde_json::to_value(own))?);
    let extra = &policy.policy.spec.scope.extra_resources;
    if !extra.is_empty() {
        let discovery = Discovery::new(client.clone()).run().await?;
        for wanted in extra {
            let (plural, group) = wanted.split_once('.').unwrap_or((wanted.as_str(), ""));
            let found = discovery
                .groups()
                .filter(|g| g.name() == group)
                .flat_map(|g| g.recommended_resources())
                .find(|(ar, _)| ar.plural == plural);
            let item = format!("resources/{wanted}");
            let Some((ar, _)) = found else {
                let message = format!(
                    "spec.scope.extraResources: the API server serves no resource {wanted:?}; use plural.group, e.g. ingresses.networking.k8s.io"
                );
                failed.push((item, message));
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                Err(e) => match refusal(&e) {
                    Some(reason) => {
                        failed.push((
                            item,
                            format!("spec.scope.extraResources: cannot list {wanted} in {ns:?}: {reason}"),
                        ));
                        continue;
                    }
                    None => return Err(e.into()),
                },
            };
            for mut obj in list.items {
                obj.types = Some(kube::core::TypeMeta { api_version: ar.api_version.clone(), kind: ar.kind.clone() });
                objects.push(typed(serde_json::to_value(obj))?);
            }
        }
    }
    // One object per path: an extra kind may repeat what is exported anyway.
    let mut seen = std::collections::HashSet::new();
    objects.retain(|o| seen.insert((o["apiVersion"].clone(), o["kind"].clone(), o["metadata"]["name"].clone())));
    Ok(Exported { objects, failed })
}

/// The Kubernetes objects a Backup exports, and each source that could not be read, as
/// (item name, error).
struct Exported {
    objects: Vec<Value>,
    failed: Vec<(String, String)>,
}

/// The server's refusal of a request, which asking again cannot change (403, 404, 405, 422),
/// as a message; `None` for errors worth a retry (5xx, 429, 409, transport).
fn refusal(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400..=499) && !matches!(s.code, 409 | 429) => {
            Some(format!("{} ({})", s.message, s.code))
        }
        _ => None,
    }
}

async fn fail(backup: &Backup, ctx: &Ctx, mut status: BackupStatus, failure: Failure) -> Result<Action, Error> {
    warn!(backup = %key(backup), reason = failure.reason, message = %failure.message, "backup failed");
    let message = plan::fail(&mut status, &failure, jiff::Timestamp::now());
    write_status(backup, ctx, status, phase::FAILED, Some(message)).await?;
    Ok(Action::await_change())
}

/// Writes the status with `phase` and a Ready condition that follows it; an Event on every
/// phase change.
async fn write_status(
    backup: &Backup,
    ctx: &Ctx,
    mut status: BackupStatus,
    new_phase: &str,
    message: Option<String>,
) -> Result<(), Error> {
    let current = backup.status.clone().unwrap_or_default();
    let generation = backup.meta().generation;
    let reason = plan::reason(new_phase);
    let message = message.unwrap_or_else(|| format!("{} items", status.items.len()));
    let desired = phase::conditions(new_phase, reason, &message);
    status.conditions = conditions::merge(&current.conditions, &desired, generation, &Time(jiff::Timestamp::now()));
    status.observed_generation = generation;
    status.phase = Some(new_phase.to_string());
    let patch = serde_json::json!({
        "apiVersion": Backup::api_version(&()),
        "kind": Backup::kind(&()),
        "status": status,
    });
    let api: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &backup.namespace().unwrap_or_default());
    api.patch_status(&backup.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch)).await?;
    if current.phase.as_deref() != Some(new_phase) {
        let event = Event {
            type_: if matches!(new_phase, phase::FAILED | phase::PARTIALLY_FAILED) {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: new_phase.to_string(),
            note: Some(message.chars().take(1024).collect()),
            action: "Backup".into(),
            secondary: None,
        };
        if let Err(e) = ctx.shared.recorder.publish(&event, &backup.object_ref(&())).await {
            warn!(backup = %key(backup), error = %e, "could not record an event");
        }
    }
    Ok(())
}

/// A Backup with `spec.deleteData` that is being deleted: forget its snapshots and manifest
/// (the data goes at the next prune), then let the object go. The planner
/// ([`plan::plan_deletion`]) decides, from what is read as it asks, whether the data goes,
/// stays (the [`SKIP_DATA_DELETION`] annotation, a policy that is gone, a namespace being
/// deleted) or blocks the deletion (storage that cannot be reached: retried with backoff and
/// reported in the `DataDeleted` condition).
async fn delete_data(backup: &Backup, ctx: &Ctx) -> Result<Action, Error> {
    let ns = backup.namespace().unwrap_or_default();
    let name = backup.name_any();
    let mut observed = Deletion {
        has_finalizer: backup.finalizers().iter().any(|f| f == DATA_FINALIZER),
        skip: backup.annotations().get(SKIP_DATA_DELETION).is_some_and(|v| v == "true"),
        ..Deletion::default()
    };
    let mut usable = None;
    loop {
        match plan::plan_deletion(&observed, &ns, &name) {
            DeletionStep::Idle => return Ok(Action::await_change()),
            DeletionStep::ReadPolicy => {
                observed.policy = Some(match policy(ctx, backup).await {
                    Ok(Ok((policy, tenant, _))) => {
                        usable = Some((policy, tenant));
                        PolicyFact::Usable
                    }
                    Ok(Err(f)) if matches!(f.reason, ACCOUNT_NOT_FOUND | ACCOUNT_NOT_ALLOWED) => {
                        PolicyFact::AccountUnavailable(f.message)
                    }
                    Ok(Err(_)) | Err(_) => PolicyFact::Gone,
                });
            }
            DeletionStep::DeleteData => {
                let (policy, tenant) = usable.as_ref().expect("a usable policy was read");
                let deleted = tokio::time::timeout(DELETE_TIMEOUT, async {
                    match repository::open(tenant, &ns, &policy.policy.spec.storage, "spec.storage").await {
                        Ok(repo) => forget_backup(&repo, backup).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                });
                observed.deleted = Some(deleted.await.unwrap_or_else(|_| {
                    Err(format!("the backup storage did not answer within {}s", DELETE_TIMEOUT.as_secs()))
                }));
            }
            DeletionStep::ReadNamespace => {
                observed.namespace_terminating = Some(namespace_terminating(ctx, &ns).await?)
            }
            DeletionStep::Block { message } => {
                report_deletion_blocked(backup, ctx, &message).await?;
                return Err(Error::DependencyMissing(message));
            }
            DeletionStep::Release { kept } => {
                match kept {
                    Some(note) => publish(ctx, backup, EventType::Warning, "DataKept", note).await,
                    None => info!(backup = %key(backup), "deleted the backup's snapshots and manifest"),
                }
                let remaining = backup.finalizers().iter().filter(|f| *f != DATA_FINALIZER).cloned().collect();
                set_finalizers(backup, ctx, remaining).await?;
                return Ok(Action::await_change());
            }
        }
    }
}

/// Writes `metadata.finalizers` as a whole, only if nobody changed the object since it was
/// read (the resourceVersion precondition makes a concurrent change a 409 and a retry): a
/// merge patch of the list alone would drop another controller's finalizer.
async fn set_finalizers(backup: &Backup, ctx: &Ctx, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &backup.namespace().unwrap_or_default());
    let patch =
        serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": backup.resource_version()}});
    api.patch(&backup.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn namespace_terminating(ctx: &Ctx, ns: &str) -> Result<bool, Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.shared.client.clone());
    Ok(api.get_opt(ns).await?.is_none_or(|n| n.metadata.deletion_timestamp.is_some()))
}

/// `DataDeleted=False` beside the Backup's other conditions, once per message.
async fn report_deletion_blocked(backup: &Backup, ctx: &Ctx, message: &str) -> Result<(), Error> {
    let current = backup.status.clone().unwrap_or_default();
    let already = current.conditions.iter().find(|c| c.type_ == DATA_DELETED);
    if already.is_some_and(|c| c.message == message) {
        return Ok(());
    }
    let mut conditions: Vec<_> = current.conditions.iter().filter(|c| c.type_ != DATA_DELETED).cloned().collect();
    conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: DATA_DELETED.into(),
        status: "False".into(),
        reason: "StorageUnreachable".into(),
        message: message.into(),
        observed_generation: backup.meta().generation,
        last_transition_time: already.map_or_else(|| Time(jiff::Timestamp::now()), |c| c.last_transition_time.clone()),
    });
    // A merge patch of the conditions alone: an apply by the status manager would drop the
    // phase and items (the snapshot ids the deletion still needs).
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    let api: Api<Backup> = Api::namespaced(ctx.shared.client.clone(), &backup.namespace().unwrap_or_default());
    api.patch_status(&backup.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    publish(ctx, backup, EventType::Warning, "DataDeletionBlocked", message.into()).await;
    Ok(())
}

async fn publish(ctx: &Ctx, backup: &Backup, type_: EventType, reason: &str, note: String) {
    warn!(backup = %key(backup), reason, %note);
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "DeleteData".into(),
        secondary: None,
    };
    if let Err(e) = ctx.shared.recorder.publish(&event, &backup.object_ref(&())).await {
        warn!(backup = %key(backup), error = %e, "could not record an event");
    }
}

/// Removes the snapshots a Backup wrote and its manifest from `repo`.
pub async fn forget_backup(repo: &Repository, backup: &Backup) -> crate::backup::Result<()> {
    let ids: Vec<String> =
        backup.status.iter().flat_map(|s| s.items.iter()).filter_map(|i| i.snapshot.clone()).collect();
    for id in ids {
        if let Ok((id, _)) = repo.find_snapshot(&id).await {
            repo.delete_snapshot(&id).await?;
        }
    }
    crate::backup::resources::delete_manifest(repo, &backup.name_any()).await
}

/// Deletes a Backup object (used by retention).
pub async fn delete_object(client: &kube::Client, ns: &str, name: &str) -> Result<(), Error> {
    let api: Api<Backup> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Labels of a Backup created for `policy`.
pub fn labels(policy: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(POLICY_LABEL.to_string(), policy.to_string())])
}

//! The AppEnvironment controller: validate -> build -> apply what changed -> delete orphans ->
//! status. All reads come from watch caches; a reconcile of an up-to-date object writes
//! nothing.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::apply::{Applier, Foreign, WriteKey, WriteLog, up_to_date, with_hash};
use super::{
    ADOPTION_CONFLICT, CachesSynced, Context, ControllerContext, Error, api, cache, drive, slim, synced_store,
    when_synced,
};
use crate::api::appenvironment::{AppEnvironment, AppEnvironmentStatus, MigrationStatus, Revision};
use crate::api::conditions::{self, DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::api::databaseinstance::DatabaseInstance;
use crate::resources::appenvironment::adopt::{self, Takeover};
use crate::resources::appenvironment::external_secrets::{self, ExternalSecret, SyncState};
use crate::resources::appenvironment::status::{Observed, blocking_hash, health, is_blocked, slim_pod};
use crate::resources::appenvironment::volumes::{
    self, CLAIM_COMPONENT, DELETION_POLICY_ANNOTATION, SizeChange, VOLUMES_FINALIZER,
};
use crate::resources::appenvironment::workloads::{
    self, CRON_JOB_COMPONENT, MIGRATION_COMPONENT, MigrationState, WORKER_COMPONENT,
};
use crate::resources::appenvironment::{AppChildren, ValidApp, access, build, history, link, url, validate};
use crate::resources::certificate::Certificate;
use crate::resources::meta::{owner_label_key, typed};

/// Name of this controller in metrics, logs and field managers.
pub const NAME: &str = "appenvironment";
const MANAGER: &str = "berth/appenvironment";
const STATUS_MANAGER: &str = "berth/appenvironment-status";
/// Reconciles that run at once. Unbounded (kube-runtime's default), 1,000 new
/// AppEnvironments started 1,000 reconciles together, each with its built children and its
/// own connection to the API server (650 sockets): peak RSS 105–152 MiB. 8–64 all converge
/// as fast on the benchmark and peak at 82–92 MiB; 16 leaves room for a slower API server.
const CONCURRENCY: u16 = 16;

/// Watch caches of every child kind, scoped like the controller.
pub struct Stores {
    pub service_accounts: Store<ServiceAccount>,
    pub services: Store<Service>,
    pub deployments: Store<Deployment>,
    pub ingresses: Store<Ingress>,
    pub certificates: Option<Store<Certificate>>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub disruption_budgets: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub cron_jobs: Store<CronJob>,
    /// Migration Jobs (CronJobs' own Jobs are not Berth's children).
    pub jobs: Store<Job>,
    /// `spec.volumes` claims (labelled as the app's, not owned).
    pub volume_claims: Store<PersistentVolumeClaim>,
    /// DatabaseInstances the apps may reference (not children: watched for their readiness
    /// and credentials revision).
    pub database_instances: Store<DatabaseInstance>,
    /// The apps' pods, slimmed to their container states (see [`pod_cache`]).
    pub pods: Store<Pod>,
    /// `spec.access` Roles and RoleBindings.
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    /// `spec.externalSecrets` (only when the External Secrets Operator is installed).
    pub external_secrets: Option<Store<ExternalSecret>>,
}

struct Ctx {
    shared: Arc<Context>,
    stores: Stores,
    caches: CachesSynced,
    /// Statuses this process wrote that the AppEnvironment cache may not show yet.
    status_writes: WriteLog<AppEnvironmentStatus>,
}

impl ControllerContext for Ctx {
    fn shared(&self) -> &Context {
        &self.shared
    }
    fn caches(&self) -> &CachesSynced {
        &self.caches
    }
}

/// Runs the controller for one namespace (or all when `None`) until shutdown. `synced` is
/// called once every cache has its initial list.
pub async fn run(
    shared: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    synced: impl FnOnce() + Send + 'static,
) {
    let client = shared.client.clone();
    let ns = namespace.as_deref();
    // Only Berth's children are cached, never every Deployment of the cluster.
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by=berth,{}", owner_label_key("AppEnvironment")));

    let (service_accounts, sa_stream) = cache::<ServiceAccount>(&client, ns, children.clone());
    let (services, svc_stream) = cache::<Service>(&client, ns, children.clone());
    let (deployments, deploy_stream) = cache::<Deployment>(&client, ns, children.clone());
    let (ingresses, ing_stream) = cache::<Ingress>(&client, ns, children.clone());
    let (autoscalers, hpa_stream) = cache::<HorizontalPodAutoscaler>(&client, ns, children.clone());
    let (disruption_budgets, pdb_stream) = cache::<PodDisruptionBudget>(&client, ns, children.clone());
    let (network_policies, np_stream) = cache::<NetworkPolicy>(&client, ns, children.clone());
    let (cron_jobs, cron_stream) = cache::<CronJob>(&client, ns, children.clone());
    let (jobs, job_stream) = cache::<Job>(&client, ns, children.clone());
    let (volume_claims, pvc_stream) = cache::<PersistentVolumeClaim>(&client, ns, children.clone());
    let (certificates, cert_stream) = if shared.cert_manager {
        let (reader, stream) = cache::<Certificate>(&client, ns, children.clone());
        (Some(reader), Some(stream))
    } else {
        (None, None)
    };

    let (roles, role_stream) = cache::<Role>(&client, ns, children.clone());
    let (role_bindings, binding_stream) = cache::<RoleBinding>(&client, ns, children.clone());
    let (external_secrets, es_stream) = if shared.external_secrets {
        let (reader, stream) = cache::<ExternalSecret>(&client, ns, children.clone());
        (Some(reader), Some(stream))
    } else {
        (None, None)
    };
    let (database_instances, dbi_stream) = cache::<DatabaseInstance>(&client, ns, watcher::Config::default());
    let (pods, pod_stream) = pod_cache(&client, ns, children.clone());
    let stores = Stores {
        service_accounts,
        services,
        deployments,
        ingresses,
        certificates,
        autoscalers,
        disruption_budgets,
        network_policies,
        cron_jobs,
        jobs,
        volume_claims,
        database_instances,
        pods,
        roles,
        role_bindings,
        external_secrets,
    };
    let readiness = {
        let s = (
            stores.service_accounts.clone(),
            stores.services.clone(),
            stores.deployments.clone(),
            stores.ingresses.clone(),
            stores.autoscalers.clone(),
            stores.disruption_budgets.clone(),
            stores.network_policies.clone(),
            stores.certificates.clone(),
            stores.database_instances.clone(),
            stores.pods.clone(),
            (stores.cron_jobs.clone(), stores.jobs.clone(), stores.volume_claims.clone()),
            (stores.roles.clone(), stores.role_bindings.clone(), stores.external_secrets.clone()),
        );
        async move {
            synced_store(&s.0).await;
            synced_store(&s.1).await;
            synced_store(&s.2).await;
            synced_store(&s.3).await;
            synced_store(&s.4).await;
            synced_store(&s.5).await;
            synced_store(&s.6).await;
            if let Some(c) = s.7 {
                synced_store(&c).await;
            }
            synced_store(&s.8).await;
            synced_store(&s.9).await;
            synced_store(&s.10.0).await;
            synced_store(&s.10.1).await;
            synced_store(&s.10.2).await;
            synced_store(&s.11.0).await;
            synced_store(&s.11.1).await;
            if let Some(es) = &s.11.2 {
                synced_store(es).await;
            }
        }
    };

    // The controller's own cache, built here (rather than by `Controller::new`) so that its
    // objects are slimmed like every other cache.
    let (main_store, writer) = reflector::store::<AppEnvironment>();
    let apps = reflector::reflector(
        writer,
        watcher(api::<AppEnvironment>(&client, ns), watcher::Config::default()).modify(slim),
    )
    .applied_objects();
    let mut controller = Controller::for_stream(apps, main_store.clone())
        .owns_stream(sa_stream)
        .owns_stream(svc_stream)
        .owns_stream(deploy_stream)
        .owns_stream(ing_stream)
        .owns_stream(hpa_stream)
        .owns_stream(pdb_stream)
        .owns_stream(np_stream)
        .owns_stream(cron_stream)
        .owns_stream(job_stream)
        .owns_stream(role_stream)
        .owns_stream(binding_stream);
    if let Some(stream) = cert_stream {
        controller = controller.owns_stream(stream);
    }
    // An ExternalSecret's status (synced or not) is the app's readiness.
    if let Some(stream) = es_stream {
        controller = controller.owns_stream(stream);
    }
    // A DatabaseInstance that changes (ready, rotated) wakes the apps that reference it.
    let apps = main_store.clone();
    let controller = controller.watches_stream(dbi_stream, move |db: DatabaseInstance| {
        let (name, ns) = (db.name_any(), db.namespace());
        apps.state()
            .into_iter()
            .filter(|app| app.namespace() == ns && app.spec.databases.iter().any(|d| d.name == name))
            .map(|app| ObjectRef::from_obj(app.as_ref()))
            .collect::<Vec<_>>()
    });
    // A claim (not owned: found by its label) that changes wakes its app (expansion, binding).
    let owner_label = owner_label_key("AppEnvironment");
    let controller = controller.watches_stream(pvc_stream, move |pvc: PersistentVolumeClaim| {
        let app = pvc.labels().get(&owner_label)?.clone();
        Some(ObjectRef::new(&app).within(&pvc.namespace()?))
    });
    // A pod whose containers start or stop waiting for a blocking reason wakes its app (pods
    // carry the owner label through the Deployment's pod template).
    let owner_label = owner_label_key("AppEnvironment");
    let controller = controller.watches_stream(pod_stream, move |pod: Pod| {
        let app = pod.labels().get(&owner_label)?.clone();
        Some(ObjectRef::new(&app).within(&pod.namespace()?))
    });
    let (caches_synced, caches) = CachesSynced::new();
    let ctx = Arc::new(Ctx { shared, stores, caches, status_writes: WriteLog::default() });
    when_synced(
        async move {
            readiness.await;
            synced_store(&main_store).await;
        },
        caches_synced,
        synced,
    );
    let controller = controller.with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY));
    drive(NAME, controller, shutdown, ctx, |obj, ctx| async move { reconcile_app(&obj, &ctx).await }).await;
}

fn key(app: &AppEnvironment) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

async fn reconcile_app(app: &AppEnvironment, ctx: &Ctx) -> Result<Action, Error> {
    if app.meta().deletion_timestamp.is_some() {
        // Children go with their owner through garbage collection; claims have no owner.
        return delete_claims(app, ctx).await;
    }
    if app.spec.paused {
        let paused = [
            DesiredCondition::new(
                PROGRESSING,
                false,
                "Paused",
                "spec.paused is true: Berth does not change this environment",
            ),
            current_or(app, READY, "Paused"),
            current_or(app, DEGRADED, "Paused"),
        ];
        update_status(app, ctx, &paused, None, Computed::default()).await?;
        return Ok(Action::await_change());
    }
    let valid = match validate(app) {
        Ok(valid) => valid,
        Err(errors) => {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            let invalid = [
                DesiredCondition::new(READY, false, "InvalidSpec", message.clone()),
                DesiredCondition::new(PROGRESSING, false, "InvalidSpec", "waiting for the spec to be fixed"),
                DesiredCondition::new(DEGRADED, true, "InvalidSpec", message),
            ];
            update_status(app, ctx, &invalid, None, Computed::default()).await?;
            // Retrying cannot help: wait for the next change of the spec.
            return Ok(Action::await_change());
        }
    };
    let links = link(app, &referenced_instances(app, &ctx.stores.database_instances));
    let children = build(&valid, &links);
    if children.certificate.is_some() && !ctx.shared.cert_manager {
        let missing = "spec.ingress.tls needs cert-manager, whose Certificate API (cert-manager.io/v1) is not installed in the cluster; install cert-manager or remove spec.ingress.tls";
        let conditions = [
            DesiredCondition::new(READY, false, "CertManagerMissing", missing),
            DesiredCondition::new(PROGRESSING, false, "CertManagerMissing", missing),
            DesiredCondition::new(DEGRADED, true, "CertManagerMissing", missing),
        ];
        update_status(app, ctx, &conditions, None, Computed::default()).await?;
        return Err(Error::DependencyMissing(missing.into()));
    }
    if !children.external_secrets.is_empty() && !ctx.shared.external_secrets {
        let missing = "spec.externalSecrets needs the External Secrets Operator, whose ExternalSecret API (external-secrets.io/v1) is not installed in the cluster; install it or remove spec.externalSecrets";
        let conditions = [
            DesiredCondition::new(READY, false, "ExternalSecretsMissing", missing),
            DesiredCondition::new(PROGRESSING, false, "ExternalSecretsMissing", missing),
            DesiredCondition::new(DEGRADED, true, "ExternalSecretsMissing", missing),
        ];
        update_status(app, ctx, &conditions, None, Computed::default()).await?;
        return Err(Error::DependencyMissing(missing.into()));
    }
    if let Some(conditions) = takeover_refusal(app, ctx, &children.deployment).await? {
        update_status(app, ctx, &conditions, Some(&valid), Computed::default()).await?;
        // Berth does not watch Deployments it does not own: look again at the next resync.
        return Ok(Action::requeue(ctx.shared.resync));
    }
    sync_finalizer(app, ctx).await?;
    let applied = match apply_children(app, ctx, &children).await {
        Ok(applied) => applied,
        Err(e) => {
            if let Some(conditions) = e.rejected_conditions() {
                update_status(app, ctx, &conditions, None, Computed::default()).await?;
            }
            return Err(e);
        }
    };
    let name = app.name_any();
    let ns = app.namespace().unwrap_or_default();
    let deployment = ctx.stores.deployments.get(&ObjectRef::new(&name).within(&ns));
    let certificate = ctx.stores.certificates.as_ref().and_then(|s| s.get(&ObjectRef::new(&name).within(&ns)));
    let pods = app_pods(app, &ctx.stores.pods);
    let workers: Vec<_> = children
        .workers
        .iter()
        .map(|w| ctx.stores.deployments.get(&ObjectRef::new(&w.name_any()).within(&ns)))
        .collect();
    let observed = Observed {
        deployment: deployment.as_deref(),
        certificate: certificate.as_deref(),
        deployment_just_changed: applied.deployment_changed,
        databases: &links,
        pods: &pods,
        workers: app.spec.workers.iter().zip(&workers).map(|(w, d)| (w.name.as_str(), d.as_deref())).collect(),
        migration: applied.migration.0.clone(),
    };
    let mut app_health = health(&valid, &observed);
    if !applied.secrets.not_ready.is_empty() {
        let message = applied.secrets.not_ready.join("; ");
        app_health.conditions.retain(|c| c.type_ != READY);
        app_health.conditions.push(DesiredCondition::new(READY, false, "ExternalSecretNotReady", message));
    }
    if let Some((reason, message)) = applied.refusals.first() {
        app_health.conditions.retain(|c| c.type_ != DEGRADED);
        app_health.conditions.push(DesiredCondition::new(DEGRADED, true, reason, message.clone()));
    }
    // While a migration holds the rollout back, the running image is the Deployment's.
    let image = match applied.migration.0 {
        MigrationState::None | MigrationState::Succeeded => Some(app.spec.image.clone()),
        _ => {
            deployment.as_ref().and_then(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone())
        }
    };
    let revision = history::Observation {
        generation: app.meta().generation.unwrap_or_default(),
        hash: history::template_hash(&children),
        spec: app.spec.clone(),
        // Ready counts only when the cached Deployment is the one applied for this spec: right
        // after a change the cache can still show the previous, fully rolled-out one.
        ready: app_health.conditions.iter().any(|c| c.type_ == READY && c.status)
            && deployment.as_deref().is_some_and(|d| up_to_date(&with_hash(typed(&children.deployment)), Some(d))),
    };
    let status = Computed {
        ready_replicas: app_health.ready_replicas,
        image,
        migration: applied.migration.1,
        revision: Some(revision),
    };
    let deadline = update_status(app, ctx, &app_health.conditions, Some(&valid), status).await?;
    // Woken at the progress deadline, when it comes before the next resync.
    Ok(Action::requeue(deadline.map_or(ctx.shared.resync, |left| left.min(ctx.shared.resync))))
}

/// Why the app's Deployment is not applied: a Deployment of that name that this app does not
/// own (one applied from `berth render` carries Berth's labels, but no owner), and that
/// `spec.adopt` does not (or cannot) take over as it is. Berth's cache holds only Deployments
/// with its labels, so a miss there is looked up.
async fn takeover_refusal(
    app: &AppEnvironment,
    ctx: &Ctx,
    desired: &Deployment,
) -> Result<Option<[DesiredCondition; 3]>, Error> {
    let (name, ns) = (app.name_any(), app.namespace().unwrap_or_default());
    let cached = ctx.stores.deployments.get(&ObjectRef::new(&name).within(&ns));
    let fetched = match cached {
        Some(_) => None,
        None => Api::<Deployment>::namespaced(ctx.shared.client.clone(), &ns).get_opt(&name).await?,
    };
    let (reason, message) = match adopt::decide(app, desired, cached.as_deref().or(fetched.as_ref())) {
        Takeover::Proceed => return Ok(None),
        Takeover::Conflict(message) => (ADOPTION_CONFLICT, message),
        Takeover::NeedsRollout(differences) => (
            "AdoptionNeedsRollout",
            format!(
                "taking over Deployment {name} would roll its pods, because Berth's pod template differs: {}; set spec.adopt.allowRollout: true to roll them onto Berth's template",
                differences.join("; ")
            ),
        ),
    };
    Ok(Some([
        DesiredCondition::new(READY, false, reason, message.clone()),
        DesiredCondition::new(PROGRESSING, false, reason, "the Deployment is left as it is"),
        DesiredCondition::new(DEGRADED, false, reason, message),
    ]))
}

/// A watch cache of the AppEnvironments' pods (selected like the children, by Berth's labels)
/// and the stream that wakes their apps.
///
/// Why a watch and not a list while a Deployment is unavailable: nothing else tells that a pod
/// started waiting (a Deployment's status does not change when its new pod cannot start, until
/// the progress deadline 10 minutes later), so a list would have to poll. The watch costs one
/// connection; its memory stays small because every pod is cut down by [`slim_pod`] before it is
/// stored (name, the owner label and container waiting states: a few hundred bytes a pod), and
/// it wakes an app only when a blocking waiting reason of one of its pods appears or changes
/// ([`blocking_hash`]); pods that start fine are noticed through the Deployment.
fn pod_cache(
    client: &kube::Client,
    namespace: Option<&str>,
    config: watcher::Config,
) -> (Store<Pod>, impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static) {
    use futures::TryStreamExt;
    let (reader, writer) = reflector::store::<Pod>();
    let owner_label = owner_label_key("AppEnvironment");
    let events = watcher(api::<Pod>(client, namespace), config).modify(move |pod| slim_pod(pod, &owner_label));
    let stream = reflector::reflector(writer, events)
        .default_backoff()
        .touched_objects()
        .predicate_filter(blocking_hash, Default::default())
        .try_filter(|pod| std::future::ready(is_blocked(pod)));
    (reader, stream)
}

/// The cached pods of `app`.
fn app_pods(app: &AppEnvironment, store: &Store<Pod>) -> Vec<Arc<Pod>> {
    let (name, ns) = (app.name_any(), app.namespace());
    let key = owner_label_key("AppEnvironment");
    store.state().into_iter().filter(|p| p.namespace() == ns && p.labels().get(&key) == Some(&name)).collect()
}

/// The cached DatabaseInstances `app` references (its namespace only).
fn referenced_instances(app: &AppEnvironment, store: &Store<DatabaseInstance>) -> Vec<DatabaseInstance> {
    let ns = app.namespace().unwrap_or_default();
    app.spec
        .databases
        .iter()
        .filter_map(|d| store.get(&ObjectRef::new(&d.name).within(&ns)))
        .map(|db| (*db).clone())
        .collect()
}

/// Keeps the current condition of `type_` while paused (pausing does not make an app unready).
fn current_or(app: &AppEnvironment, type_: &'static str, reason: &str) -> DesiredCondition {
    let current = app.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    match current {
        Some(c) => DesiredCondition::new(type_, c.status == "True", &c.reason, c.message.clone()),
        None => DesiredCondition::new(type_, false, reason, "spec.paused is true"),
    }
}

/// What [`apply_children`] did.
struct Applied {
    /// Whether the Deployment was written.
    deployment_changed: bool,
    /// The migration of the current image, and its status.
    migration: (MigrationState, Option<MigrationStatus>),
    /// Claim changes that cannot be made (reason, message naming the field).
    refusals: Vec<(&'static str, String)>,
    /// The ExternalSecrets' sync state.
    secrets: SyncState,
}

fn applier<'a>(app: &AppEnvironment, ctx: &'a Ctx) -> Applier<'a> {
    Applier {
        client: &ctx.shared.client,
        metrics: &ctx.shared.metrics,
        controller: NAME,
        manager: MANAGER,
        namespace: app.namespace().unwrap_or_default(),
        owner_uid: app.uid().unwrap_or_default(),
        owner_label: (owner_label_key("AppEnvironment"), app.name_any()),
        foreign: match app.spec.adopt {
            Some(_) => Foreign::Adopt,
            None => Foreign::Refuse(
                "to take it over, set spec.adopt (`berth import cluster --adopt` writes it), or delete or rename it",
            ),
        },
    }
}

/// Applies what changed and deletes children the spec no longer asks for. While the migration
/// of a new image has not succeeded, the Deployment, workers and CronJobs stay as they are.
async fn apply_children(app: &AppEnvironment, ctx: &Ctx, children: &AppChildren) -> Result<Applied, Error> {
    // Destructured without `..`: a child that is built but not applied does not compile.
    let AppChildren {
        service_account,
        service,
        deployment,
        ingress,
        certificate,
        autoscaler,
        disruption_budget,
        network_policy,
        volume_claims,
        workers,
        cron_jobs,
        migration,
        external_secrets,
        access_roles,
        access_bindings,
    } = children;
    let s = &ctx.stores;
    let name = app.name_any();
    let applier = applier(app, ctx);
    let mut writes = 0;
    writes += applier.apply(&s.service_accounts, service_account).await? as u32;
    for role in access_roles {
        writes += applier.apply(&s.roles, role).await? as u32;
    }
    for binding in access_bindings {
        writes += applier.apply(&s.role_bindings, binding).await? as u32;
    }
    writes += delete_stale(app, &applier, &s.role_bindings, access::COMPONENT, access_bindings).await?;
    writes += delete_stale(app, &applier, &s.roles, access::COMPONENT, access_roles).await?;
    let mut secrets = SyncState::default();
    if let Some(store) = &s.external_secrets {
        for es in external_secrets {
            writes += applier.apply(store, es).await? as u32;
        }
        writes += delete_stale(app, &applier, store, external_secrets::COMPONENT, external_secrets).await?;
        let ns = app.namespace().unwrap_or_default();
        let observed: Vec<_> =
            external_secrets.iter().map(|es| store.get(&ObjectRef::new(&es.name_any()).within(&ns))).collect();
        secrets = external_secrets::sync_state(app, &observed.iter().map(Option::as_deref).collect::<Vec<_>>());
    }
    let (claim_writes, refusals) = apply_claims(app, ctx, &applier, volume_claims).await?;
    writes += claim_writes;
    let migration = migrate(app, ctx, &applier, migration.as_ref()).await?;
    writes += applier.apply(&s.services, service).await? as u32;
    let mut deployment_changed = false;
    // Pods cannot start before every Secret they reference exists.
    if matches!(migration.0, MigrationState::None | MigrationState::Succeeded) && !secrets.never_synced {
        deployment_changed = applier.apply(&s.deployments, deployment).await?;
        writes += deployment_changed as u32;
        for worker in workers {
            writes += applier.apply(&s.deployments, worker).await? as u32;
        }
        for cron_job in cron_jobs {
            writes += applier.apply(&s.cron_jobs, cron_job).await? as u32;
        }
    }
    writes += delete_stale(app, &applier, &s.deployments, WORKER_COMPONENT, workers).await?;
    writes += delete_stale(app, &applier, &s.cron_jobs, CRON_JOB_COMPONENT, cron_jobs).await?;
    writes += applier.apply_optional(&s.ingresses, &name, ingress.as_ref()).await? as u32;
    if let Some(certs) = &s.certificates {
        writes += applier.apply_optional(certs, &name, certificate.as_ref()).await? as u32;
    }
    writes += applier.apply_optional(&s.autoscalers, &name, autoscaler.as_ref()).await? as u32;
    writes += applier.apply_optional(&s.disruption_budgets, &name, disruption_budget.as_ref()).await? as u32;
    writes += applier.apply_optional(&s.network_policies, &name, network_policy.as_ref()).await? as u32;
    if writes > 0 {
        info!(appenvironment = %key(app), writes, "converged children");
    }
    Ok(Applied { deployment_changed, migration, refusals, secrets })
}

/// Deletes the children of `component` this app owns that `desired` no longer lists (a
/// worker or cron job removed from the spec).
async fn delete_stale<K: super::apply::Child>(
    app: &AppEnvironment,
    applier: &Applier<'_>,
    store: &Store<K>,
    component: &str,
    desired: &[K],
) -> Result<u32, Error> {
    let owner = owner_label_key("AppEnvironment");
    let stale: Vec<String> = store
        .state()
        .iter()
        .filter(|c| c.namespace() == app.namespace())
        .filter(|c| c.labels().get(&owner) == Some(&app.name_any()))
        .filter(|c| c.labels().get("app.kubernetes.io/component").map(String::as_str) == Some(component))
        .map(|c| c.name_any())
        .filter(|n| !desired.iter().any(|d| d.name_any() == *n))
        .collect();
    let mut deleted = 0;
    for name in stale {
        deleted += applier.apply_optional(store, &name, None).await? as u32;
    }
    Ok(deleted)
}

/// The migration Job of the current image: created once (a Job's template cannot change),
/// then followed; older migration Jobs go once it succeeded.
async fn migrate(
    app: &AppEnvironment,
    ctx: &Ctx,
    applier: &Applier<'_>,
    job: Option<&Job>,
) -> Result<(MigrationState, Option<MigrationStatus>), Error> {
    let Some(job) = job else { return Ok((MigrationState::None, None)) };
    let (name, ns) = (job.name_any(), app.namespace().unwrap_or_default());
    let status = |phase: &str, message: Option<String>| MigrationStatus {
        image: app.spec.image.clone(),
        job: name.clone(),
        phase: phase.into(),
        message,
    };
    // Its Job may be gone (deleted by hand); the status remembers that it ran.
    if let Some(done) =
        app.status.as_ref().and_then(|s| s.migration.as_ref()).filter(|m| m.job == name && m.phase == "Succeeded")
    {
        return Ok((MigrationState::Succeeded, Some(done.clone())));
    }
    let state = match ctx.stores.jobs.get(&ObjectRef::new(&name).within(&ns)) {
        None => {
            // The cached status may lag the write that recorded this migration's success (and
            // its Job was deleted since): ask the server before running a migration again.
            if let Some(done) = super::read_fresh(&ctx.shared.client, app)
                .await?
                .and_then(|fresh| fresh.status?.migration)
                .filter(|m| m.job == name && m.phase == "Succeeded")
            {
                return Ok((MigrationState::Succeeded, Some(done)));
            }
            if applier.apply(&ctx.stores.jobs, job).await? {
                info!(appenvironment = %key(app), job = %name, image = %app.spec.image, "started the migration");
            }
            MigrationState::Running
        }
        Some(existing) => workloads::migration_state(Some(&existing)),
    };
    if state == MigrationState::Succeeded {
        let current = [job.clone()];
        delete_stale(app, applier, &ctx.stores.jobs, MIGRATION_COMPONENT, &current).await?;
    }
    let migration = match &state {
        MigrationState::Failed(why) => status("Failed", Some(why.clone())),
        MigrationState::Succeeded => status("Succeeded", None),
        _ => status("Running", None),
    };
    Ok((state, Some(migration)))
}

/// Creates the app's claims and grows them when their size grew and their StorageClass
/// allows it. A claim that cannot change keeps its size and yields a refusal.
async fn apply_claims(
    app: &AppEnvironment,
    ctx: &Ctx,
    applier: &Applier<'_>,
    claims: &[PersistentVolumeClaim],
) -> Result<(u32, Vec<(&'static str, String)>), Error> {
    let ns = app.namespace().unwrap_or_default();
    let mut writes = 0;
    let mut refusals = Vec::new();
    for desired in claims {
        let pvc = desired.name_any();
        let index = app.spec.volumes.iter().position(|v| volumes::claim_name(&app.name_any(), &v.name) == pvc);
        let field = format!("spec.volumes[{}].claim.size", index.unwrap_or_default());
        let existing = ctx.stores.volume_claims.get(&ObjectRef::new(&pvc).within(&ns));
        let keep = match existing.as_deref().map(|e| (e, volumes::size_change(desired, e))) {
            None | Some((_, SizeChange::Same)) => None,
            Some((e, SizeChange::Grow { from })) => {
                let class = e.spec.as_ref().and_then(|s| s.storage_class_name.clone());
                match expandable(ctx, class.as_deref()).await? {
                    Ok(()) => {
                        info!(namespace = %ns, %pvc, %from, "growing volume");
                        None
                    }
                    Err(class) => {
                        refusals.push(("VolumeExpansionUnsupported", format!(
                            "{field}: PVC {pvc} cannot grow from {from}: StorageClass {class:?} does not set allowVolumeExpansion: true; enable expansion on the class, or set the size back to {from}"
                        )));
                        Some(from)
                    }
                }
            }
            Some((_, SizeChange::Shrink { from })) => {
                refusals.push((
                    "VolumeShrinkRefused",
                    format!("{field}: PVC {pvc} cannot shrink from {from}; set the size to {from} or more"),
                ));
                Some(from)
            }
        };
        let mut desired = desired.clone();
        if let Some(size) = keep
            && let Some(requests) =
                desired.spec.as_mut().and_then(|s| s.resources.as_mut()).and_then(|r| r.requests.as_mut())
        {
            requests.insert("storage".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(size));
        }
        writes += applier.apply(&ctx.stores.volume_claims, &desired).await? as u32;
    }
    Ok((writes, refusals))
}

/// Whether claims of `class` (the default class when `None`) can grow; the class name when not.
async fn expandable(ctx: &Ctx, class: Option<&str>) -> Result<Result<(), String>, Error> {
    let classes: Api<StorageClass> = Api::all(ctx.shared.client.clone());
    let found = match class {
        Some(name) => classes.get_opt(name).await?,
        None => classes.list(&Default::default()).await?.items.into_iter().find(|c| {
            c.annotations().get("storageclass.kubernetes.io/is-default-class").map(String::as_str) == Some("true")
        }),
    };
    match found {
        Some(c) if c.allow_volume_expansion == Some(true) => Ok(Ok(())),
        Some(c) => Ok(Err(c.name_any())),
        None => Ok(Err(class.unwrap_or("(cluster default)").to_string())),
    }
}

/// Keeps [`VOLUMES_FINALIZER`] on an app exactly while it has a `deletionPolicy: Delete`
/// claim.
async fn sync_finalizer(app: &AppEnvironment, ctx: &Ctx) -> Result<(), Error> {
    let wants = !volumes::claims_to_delete(app).is_empty();
    let has = app.finalizers().iter().any(|f| f == VOLUMES_FINALIZER);
    if wants == has {
        return Ok(());
    }
    let mut finalizers: Vec<String> = app.finalizers().iter().filter(|f| *f != VOLUMES_FINALIZER).cloned().collect();
    if wants {
        finalizers.push(VOLUMES_FINALIZER.into());
    }
    set_finalizers(app, ctx, finalizers).await
}

/// An app being deleted: deletes its claims annotated `deletionPolicy: Delete`, then lets it go.
async fn delete_claims(app: &AppEnvironment, ctx: &Ctx) -> Result<Action, Error> {
    if !app.finalizers().iter().any(|f| f == VOLUMES_FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = app.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.shared.client.clone(), &ns);
    // Listed, not cached: a claim created just before the deletion must not be missed.
    let selector = format!(
        "{}={},app.kubernetes.io/component={CLAIM_COMPONENT},app.kubernetes.io/managed-by=berth",
        owner_label_key("AppEnvironment"),
        app.name_any()
    );
    for pvc in claims.list(&kube::api::ListParams::default().labels(&selector)).await?.items {
        if pvc.annotations().get(DELETION_POLICY_ANNOTATION).map(String::as_str) != Some("Delete") {
            continue;
        }
        match claims.delete(&pvc.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                info!(appenvironment = %key(app), pvc = %pvc.name_any(), "deleted a claim with deletionPolicy Delete")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let remaining = app.finalizers().iter().filter(|f| *f != VOLUMES_FINALIZER).cloned().collect();
    set_finalizers(app, ctx, remaining).await?;
    Ok(Action::await_change())
}

/// Writes `metadata.finalizers` as a whole, only if nobody changed the object since it was
/// read (a concurrent change is a 409 and a retry): a merge patch of the list alone would
/// drop another controller's finalizer.
async fn set_finalizers(app: &AppEnvironment, ctx: &Ctx, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<AppEnvironment> = Api::namespaced(ctx.shared.client.clone(), &app.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": app.resource_version()}});
    api.patch(&app.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The parts of the status computed from the children (all `None` when the spec is invalid or
/// paused: the current values stay).
#[derive(Default)]
struct Computed {
    ready_replicas: Option<i32>,
    /// The image the Deployment runs or moves to.
    image: Option<String>,
    migration: Option<MigrationStatus>,
    /// The current spec's revision, recorded in `status.history`.
    revision: Option<history::Observation>,
}

/// Writes the status when it differs from the current one (conditions compared without
/// regard to order), and records an Event when readiness changes. Returns how long until the
/// newest revision's progress deadline, while it is not Ready.
async fn update_status(
    app: &AppEnvironment,
    ctx: &Ctx,
    desired: &[DesiredCondition],
    valid: Option<&ValidApp>,
    computed: Computed,
) -> Result<Option<std::time::Duration>, Error> {
    let Computed { ready_replicas, image, migration, revision } = computed;
    let ns = app.namespace().unwrap_or_default();
    let key = WriteKey::status::<AppEnvironment>(&ns, &app.name_any());
    // Under load the cached AppEnvironment can predate this process's own last status write
    // (its watch event is still on the way): compare with what was written then, not with
    // the older cached status, or the same status is written again (1,195 redundant writes
    // in a steady state at 1,000 AppEnvironments before this).
    let current = match ctx.status_writes.pending(&key, app.resource_version().as_deref(), false) {
        Some(written) => written,
        None => app.status.clone().unwrap_or_default(),
    };
    let now = Time(jiff::Timestamp::now());
    let generation = app.meta().generation;
    let history = match revision {
        Some(seen) => record_revision(app, ctx, &current.history, &seen, &now).await?,
        None => current.history.clone(),
    };
    let mut desired = desired.to_vec();
    let mut deadline_left = None;
    if valid.is_some() {
        let seconds = app.spec.progress_deadline_seconds.unwrap_or(history::DEFAULT_PROGRESS_DEADLINE_SECONDS);
        match history::deadline(&history, seconds, &now) {
            history::Deadline::Met => {}
            history::Deadline::Pending(left) => deadline_left = Some(left),
            history::Deadline::Exceeded { stalled, last_good } => {
                let message = history::deadline_message(app, stalled, last_good, seconds);
                desired.retain(|c| c.type_ != PROGRESSING);
                desired.push(DesiredCondition::new(PROGRESSING, false, history::PROGRESS_DEADLINE_EXCEEDED, message));
            }
        }
    }
    let new_status = AppEnvironmentStatus {
        observed_generation: generation,
        conditions: conditions::merge(&current.conditions, &desired, generation, &now),
        ready_replicas: ready_replicas.or(current.ready_replicas.filter(|_| valid.is_none())),
        url: valid.and_then(url).or(if valid.is_none() { current.url.clone() } else { None }),
        image: image.or(current.image.clone()),
        migration: if valid.is_some() { migration } else { current.migration.clone() },
        history,
    };
    let unchanged = new_status.observed_generation == current.observed_generation
        && conditions::same_set(&new_status.conditions, &current.conditions)
        && new_status.ready_replicas == current.ready_replicas
        && new_status.url == current.url
        && new_status.image == current.image
        && new_status.migration == current.migration
        && new_status.history == current.history;
    if unchanged {
        return Ok(deadline_left);
    }
    let patch = serde_json::json!({
        "apiVersion": AppEnvironment::api_version(&()),
        "kind": AppEnvironment::kind(&()),
        "status": new_status,
    });
    let api: Api<AppEnvironment> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let params = PatchParams::apply(STATUS_MANAGER).force();
    let written = match api.patch_status(&app.name_any(), &params, &Patch::Apply(&patch)).await {
        // The CRD installed is older than this binary (an operator upgraded before its CRDs):
        // keep the app's status current without the fields that CRD lacks.
        Err(kube::Error::Api(e)) if e.message.contains(".status.history: field not declared in schema") => {
            warn!(appenvironment = %app.name_any(), namespace = %ns, "the installed AppEnvironment CRD has no status.history: revision history and the progress deadline wait for the CRDs of this release (helm upgrade, or kubectl apply -f crds/)");
            let mut older = patch.clone();
            if let Some(status) = older["status"].as_object_mut() {
                status.remove("history");
            }
            api.patch_status(&app.name_any(), &params, &Patch::Apply(&older)).await?
        }
        written => written?,
    };
    if let Some(rv) = written.resource_version() {
        ctx.status_writes.record(key, new_status.clone(), &rv);
    }
    publish_transition(app, ctx, &current.conditions, &new_status).await;
    publish_deadline(app, ctx, &current.conditions, &new_status).await;
    Ok(deadline_left)
}

/// `history` with `seen` recorded; a new revision whose spec is too large for the status is
/// first written to the history ConfigMap (read, then applied with the keys still in use).
async fn record_revision(
    app: &AppEnvironment,
    ctx: &Ctx,
    history: &[Revision],
    seen: &history::Observation,
    now: &Time,
) -> Result<Vec<Revision>, Error> {
    let limit = app.spec.revision_history_limit.unwrap_or(history::DEFAULT_LIMIT);
    let recorded = history::record(&app.name_any(), history, seen, limit, now);
    let dropped_stored = history
        .iter()
        .filter(|r| r.spec_ref.is_some())
        .any(|r| !recorded.history.iter().any(|kept| kept.revision == r.revision));
    if recorded.stored.is_some() || dropped_stored {
        let ns = app.namespace().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), &ns);
        let name = history::config_map_name(&app.name_any());
        let existing = api.get_opt(&name).await?.and_then(|c| c.binary_data).unwrap_or_default();
        let config_map = history::config_map(app, &recorded.history, existing, recorded.stored);
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&typed(&config_map))).await?;
    }
    Ok(recorded.history)
}

/// A Warning Event when the newest revision passes its progress deadline without being Ready.
async fn publish_deadline(app: &AppEnvironment, ctx: &Ctx, before: &[Condition], after: &AppEnvironmentStatus) {
    let exceeded = |c: &Condition| c.type_ == PROGRESSING && c.reason == history::PROGRESS_DEADLINE_EXCEEDED;
    let Some(now) = after.conditions.iter().find(|c| exceeded(c)) else { return };
    if before.iter().any(exceeded) {
        return;
    }
    let event = Event {
        type_: EventType::Warning,
        reason: history::PROGRESS_DEADLINE_EXCEEDED.into(),
        note: Some(now.message.chars().take(1024).collect()),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(e) = ctx.shared.recorder.publish(&event, &app.object_ref(&())).await {
        warn!(appenvironment = %key(app), error = %e, "could not record an event");
    }
}

async fn publish_transition(app: &AppEnvironment, ctx: &Ctx, before: &[Condition], after: &AppEnvironmentStatus) {
    let Some(ready) = after.conditions.iter().find(|c| c.type_ == READY) else { return };
    let was = before.iter().find(|c| c.type_ == READY);
    if was.is_some_and(|w| w.status == ready.status && w.reason == ready.reason) {
        return;
    }
    let (type_, note) = match (ready.status.as_str(), ready.reason.as_str()) {
        ("True", _) => (
            EventType::Normal,
            format!("available{}", after.url.as_ref().map(|u| format!(" at {u}")).unwrap_or_default()),
        ),
        (_, "RollingOut" | "CertificatePending" | "Paused") => (EventType::Normal, ready.message.clone()),
        _ => (EventType::Warning, ready.message.clone()),
    };
    let event = Event {
        type_,
        reason: ready.reason.clone(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.shared.recorder.publish(&event, &app.object_ref(&())).await {
        warn!(appenvironment = %key(app), error = %e, "could not record an event");
    }
}

//! The AppEnvironment controller: validate -> build -> apply what changed -> delete orphans ->
//! status. All reads come from watch caches; a reconcile of an up-to-date object writes
//! nothing.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::apply::{Applier, WriteKey, WriteLog};
use super::{CachesSynced, Context, ControllerContext, Error, api, cache, drive, slim, synced_store, when_synced};
use crate::api::appenvironment::{AppEnvironment, AppEnvironmentStatus};
use crate::api::conditions::{self, DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::api::databaseinstance::DatabaseInstance;
use crate::resources::appenvironment::status::{Observed, blocking_hash, health, is_blocked, slim_pod};
use crate::resources::appenvironment::{AppChildren, ValidApp, build, link, url, validate};
use crate::resources::certificate::Certificate;
use crate::resources::meta::owner_label_key;

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
    /// DatabaseInstances the apps may reference (not children: watched for their readiness
    /// and credentials revision).
    pub database_instances: Store<DatabaseInstance>,
    /// The apps' pods, slimmed to their container states (see [`pod_cache`]).
    pub pods: Store<Pod>,
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
    let (certificates, cert_stream) = if shared.cert_manager {
        let (reader, stream) = cache::<Certificate>(&client, ns, children.clone());
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
        database_instances,
        pods,
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
        .owns_stream(np_stream);
    if let Some(stream) = cert_stream {
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
        // Children go with their owner through garbage collection; nothing else to clean.
        return Ok(Action::await_change());
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
        update_status(app, ctx, &paused, None, None).await?;
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
            update_status(app, ctx, &invalid, None, None).await?;
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
        update_status(app, ctx, &conditions, None, None).await?;
        return Err(Error::DependencyMissing(missing.into()));
    }
    let deployment_changed = match apply_children(app, ctx, &children).await {
        Ok(changed) => changed,
        Err(e) => {
            if let Some(conditions) = e.rejected_conditions() {
                update_status(app, ctx, &conditions, None, None).await?;
            }
            return Err(e);
        }
    };
    let name = app.name_any();
    let ns = app.namespace().unwrap_or_default();
    let deployment = ctx.stores.deployments.get(&ObjectRef::new(&name).within(&ns));
    let certificate = ctx.stores.certificates.as_ref().and_then(|s| s.get(&ObjectRef::new(&name).within(&ns)));
    let pods = app_pods(app, &ctx.stores.pods);
    let observed = Observed {
        deployment: deployment.as_deref(),
        certificate: certificate.as_deref(),
        deployment_just_changed: deployment_changed,
        databases: &links,
        pods: &pods,
    };
    let app_health = health(&valid, &observed);
    update_status(app, ctx, &app_health.conditions, app_health.ready_replicas, Some(&valid)).await?;
    Ok(Action::requeue(ctx.shared.resync))
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

/// Applies what changed and deletes children the spec no longer asks for. Returns whether the
/// Deployment was written.
async fn apply_children(app: &AppEnvironment, ctx: &Ctx, children: &AppChildren) -> Result<bool, Error> {
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
    } = children;
    let s = &ctx.stores;
    let name = app.name_any();
    let applier = Applier {
        client: &ctx.shared.client,
        metrics: &ctx.shared.metrics,
        controller: NAME,
        manager: MANAGER,
        namespace: app.namespace().unwrap_or_default(),
        owner_uid: app.uid().unwrap_or_default(),
        owner_label: (owner_label_key("AppEnvironment"), name.clone()),
    };
    let mut writes = 0;
    writes += applier.apply(&s.service_accounts, service_account).await? as u32;
    writes += applier.apply(&s.services, service).await? as u32;
    let deployment_changed = applier.apply(&s.deployments, deployment).await?;
    writes += deployment_changed as u32;
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
    Ok(deployment_changed)
}

/// Writes the status when it differs from the current one (conditions compared without
/// regard to order), and records an Event when readiness changes.
async fn update_status(
    app: &AppEnvironment,
    ctx: &Ctx,
    desired: &[DesiredCondition],
    ready_replicas: Option<i32>,
    valid: Option<&ValidApp>,
) -> Result<(), Error> {
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
    let new_status = AppEnvironmentStatus {
        observed_generation: generation,
        conditions: conditions::merge(&current.conditions, desired, generation, &now),
        ready_replicas: ready_replicas.or(current.ready_replicas.filter(|_| valid.is_none())),
        url: valid.and_then(url).or(if valid.is_none() { current.url.clone() } else { None }),
        image: valid.map(|v| v.app.spec.image.clone()).or(current.image.clone()),
    };
    let unchanged = new_status.observed_generation == current.observed_generation
        && conditions::same_set(&new_status.conditions, &current.conditions)
        && new_status.ready_replicas == current.ready_replicas
        && new_status.url == current.url
        && new_status.image == current.image;
    if unchanged {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": AppEnvironment::api_version(&()),
        "kind": AppEnvironment::kind(&()),
        "status": new_status,
    });
    let api: Api<AppEnvironment> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let written =
        api.patch_status(&app.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch)).await?;
    if let Some(rv) = written.resource_version() {
        ctx.status_writes.record(key, new_status.clone(), &rv);
    }
    publish_transition(app, ctx, &current.conditions, &new_status).await;
    Ok(())
}

async fn publish_transition(
    app: &AppEnvironment,
    ctx: &Ctx,
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    after: &AppEnvironmentStatus,
) {
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

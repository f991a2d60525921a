//! The DatabaseInstance controller: validate -> credentials (read, generated once, rotated on
//! request) -> day-2 plan -> apply what changed -> grow volumes -> wait for the StatefulSet ->
//! provision over a real connection -> status.
//!
//! Credentials are never lost: the Secret is looked up in the API when the cache lacks it
//! before anything is generated, and a rotation keeps the old administrative password in the
//! Secret until the server has the new one.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::apply::{Applier, Foreign};
use super::{CachesSynced, Context, ControllerContext, Error, api, cache, drive, synced_store, when_synced};
use crate::api::conditions::{self, DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::api::databaseinstance::{DatabaseInstance, DatabaseInstanceStatus, ProvisioningError};
use crate::provision::{self, ProvisionError, Target};
use crate::resources::databaseinstance::build::COMPONENT;
use crate::resources::databaseinstance::credentials::{self, ROTATE_ANNOTATION};
use crate::resources::databaseinstance::day2::{self, Refusal, Resize};
use crate::resources::databaseinstance::validate::MANAGEMENT_PORT;
use crate::resources::databaseinstance::{Credentials, DatabaseChildren, ValidDatabase, build, validate};
use crate::resources::meta::owner_label_key;

/// Name of this controller in metrics, logs and field managers.
pub const NAME: &str = "databaseinstance";
const MANAGER: &str = "berth/databaseinstance";
const STATUS_MANAGER: &str = "berth/databaseinstance-status";
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Watch caches of every child kind (and the data PVCs), scoped like the controller.
struct Stores {
    service_accounts: Store<ServiceAccount>,
    roles: Store<Role>,
    role_bindings: Store<RoleBinding>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    services: Store<Service>,
    stateful_sets: Store<StatefulSet>,
    disruption_budgets: Store<PodDisruptionBudget>,
    network_policies: Store<NetworkPolicy>,
    volume_claims: Store<PersistentVolumeClaim>,
}

struct Ctx {
    shared: Arc<Context>,
    stores: Stores,
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
    let children = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by=berth,{}", owner_label_key("DatabaseInstance")));
    // PVCs are made by the StatefulSet controller from the claim template: they carry the
    // selector labels only, and no owner reference (so they outlive the instance).
    let claims = watcher::Config::default().labels(&format!("app.kubernetes.io/component={COMPONENT}"));

    let (service_accounts, sa_stream) = cache::<ServiceAccount>(&client, ns, children.clone());
    let (roles, role_stream) = cache::<Role>(&client, ns, children.clone());
    let (role_bindings, rb_stream) = cache::<RoleBinding>(&client, ns, children.clone());
    let (secrets, secret_stream) = cache::<Secret>(&client, ns, children.clone());
    let (config_maps, cm_stream) = cache::<ConfigMap>(&client, ns, children.clone());
    let (services, svc_stream) = cache::<Service>(&client, ns, children.clone());
    let (stateful_sets, sts_stream) = cache::<StatefulSet>(&client, ns, children.clone());
    let (disruption_budgets, pdb_stream) = cache::<PodDisruptionBudget>(&client, ns, children.clone());
    let (network_policies, np_stream) = cache::<NetworkPolicy>(&client, ns, children);
    let (volume_claims, pvc_stream) = cache::<PersistentVolumeClaim>(&client, ns, claims);
    let stores = Stores {
        service_accounts,
        roles,
        role_bindings,
        secrets,
        config_maps,
        services,
        stateful_sets,
        disruption_budgets,
        network_policies,
        volume_claims,
    };
    let readiness = {
        let s = &stores;
        let (a, b, c, d, e) = (
            s.service_accounts.clone(),
            s.roles.clone(),
            s.role_bindings.clone(),
            s.secrets.clone(),
            s.config_maps.clone(),
        );
        let (f, g, h, i, j) = (
            s.services.clone(),
            s.stateful_sets.clone(),
            s.disruption_budgets.clone(),
            s.network_policies.clone(),
            s.volume_claims.clone(),
        );
        async move {
            synced_store(&a).await;
            synced_store(&b).await;
            synced_store(&c).await;
            synced_store(&d).await;
            synced_store(&e).await;
            synced_store(&f).await;
            synced_store(&g).await;
            synced_store(&h).await;
            synced_store(&i).await;
            synced_store(&j).await;
        }
    };

    let controller = Controller::new(api::<DatabaseInstance>(&client, ns), watcher::Config::default())
        .owns_stream(sa_stream)
        .owns_stream(role_stream)
        .owns_stream(rb_stream)
        .owns_stream(secret_stream)
        .owns_stream(cm_stream)
        .owns_stream(svc_stream)
        .owns_stream(sts_stream)
        .owns_stream(pdb_stream)
        .owns_stream(np_stream)
        .watches_stream(pvc_stream, |pvc: PersistentVolumeClaim| {
            let instance = pvc.labels().get(INSTANCE_LABEL)?.clone();
            Some(ObjectRef::new(&instance).within(&pvc.namespace()?))
        });
    let main_store = controller.store();
    let (caches_synced, caches) = CachesSynced::new();
    let ctx = Arc::new(Ctx { shared, stores, caches });
    when_synced(
        async move {
            readiness.await;
            synced_store(&main_store).await;
        },
        caches_synced,
        synced,
    );
    drive(NAME, controller, shutdown, ctx, |obj, ctx| async move { reconcile_instance(&obj, &ctx).await }).await;
}

fn key(db: &DatabaseInstance) -> String {
    format!("{}/{}", db.namespace().unwrap_or_default(), db.name_any())
}

/// The status a reconcile computed, written only when it differs from the current one.
struct Outcome {
    conditions: Vec<DesiredCondition>,
    phase: &'static str,
    current_version: Option<String>,
    provisioned: Option<Vec<String>>,
    last_error: Option<Option<ProvisioningError>>,
    credentials_revision: Option<String>,
}

async fn reconcile_instance(db: &DatabaseInstance, ctx: &Ctx) -> Result<Action, Error> {
    if db.meta().deletion_timestamp.is_some() {
        // Children go through garbage collection; PVCs follow the StatefulSet's retention policy.
        return Ok(Action::await_change());
    }
    let valid = match validate(db) {
        Ok(valid) => valid,
        Err(errors) => {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            let outcome = Outcome {
                conditions: vec![
                    DesiredCondition::new(READY, false, "InvalidSpec", message.clone()),
                    DesiredCondition::new(PROGRESSING, false, "InvalidSpec", "waiting for the spec to be fixed"),
                    DesiredCondition::new(DEGRADED, true, "InvalidSpec", message),
                ],
                phase: "Failed",
                current_version: None,
                provisioned: None,
                last_error: None,
                credentials_revision: None,
            };
            update_status(db, ctx, None, outcome).await?;
            return Ok(Action::await_change());
        }
    };
    let name = valid.name();
    let ns = valid.namespace();

    // Credentials: stored ones are kept; only missing ones are generated.
    let mut stored = stored_credentials(&valid, ctx, Read::Cache).await?;
    // The Secret cache can lag this controller's own last write. Generating or rotating from a
    // stale Secret would replace a password the server already has, leaving none that works:
    // before either, read the Secrets from the server.
    let requested = db.annotations().get(ROTATE_ANNOTATION);
    let rotation_due = requested.is_some() && stored.as_ref().and_then(|c| c.revision.as_ref()) != requested;
    if rotation_due || Credentials::complete(&valid, stored.clone()).1 {
        stored = stored_credentials(&valid, ctx, Read::Server).await?;
    }
    let first = stored.as_ref().is_none_or(|c| c.admin_password.is_empty());
    let (mut credentials, generated) = Credentials::complete(&valid, stored);
    if generated {
        info!(databaseinstance = %key(db), "generated credentials");
    }
    let external = db.spec.credentials.as_ref().and_then(|c| c.external_secret.as_deref());
    let mut rotation_refused = None;
    if let Some(secret) = external {
        let synced = Api::<Secret>::namespaced(ctx.shared.client.clone(), &ns).get_opt(secret).await?;
        let base =
            if first { Credentials { admin_password: String::new(), ..credentials.clone() } } else { credentials };
        let Some(followed) = synced.and_then(|s| credentials::follow_external(base, &s)) else {
            let message = format!(
                "spec.credentials.externalSecret: Secret {secret} does not exist or has no key \"password\" yet; the External Secrets Operator writes it from the store (check its ExternalSecret)"
            );
            let outcome = Outcome {
                conditions: vec![
                    DesiredCondition::new(READY, false, "ExternalSecretNotSynced", message.clone()),
                    DesiredCondition::new(PROGRESSING, true, "ExternalSecretNotSynced", message),
                ],
                phase: "Pending",
                current_version: None,
                provisioned: None,
                last_error: None,
                credentials_revision: None,
            };
            update_status(db, ctx, None, outcome).await?;
            return Ok(Action::requeue(ctx.shared.resync));
        };
        credentials = followed;
    }
    if let Some(requested) = db.annotations().get(ROTATE_ANNOTATION)
        && credentials.revision.as_deref() != Some(requested.as_str())
    {
        if let Some(secret) = external {
            rotation_refused = Some(Refusal {
                reason: "RotationRefused",
                message: format!(
                    "{ROTATE_ANNOTATION}: the password comes from spec.credentials.externalSecret ({secret}); rotate it in AWS Secrets Manager and Berth follows the synced Secret, then remove the annotation"
                ),
            });
        } else {
            info!(databaseinstance = %key(db), revision = %requested, "rotating credentials");
            credentials = credentials.rotated(&valid, requested);
        }
    }

    let existing = ctx.stores.stateful_sets.get(&ObjectRef::new(&name).within(&ns));
    let claims: Vec<PersistentVolumeClaim> = ctx
        .stores
        .volume_claims
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns.as_str()) && c.labels().get(INSTANCE_LABEL) == Some(&name))
        .map(|c| (**c).clone())
        .collect();
    let plan = day2::plan(&valid, existing.as_deref(), &claims);
    if let Some(hold) = &plan.hold {
        // Nothing of the running instance can follow: apply nothing, wait for the spec.
        let outcome = Outcome {
            conditions: vec![
                DesiredCondition::new(READY, false, hold.reason, hold.message.clone()),
                DesiredCondition::new(PROGRESSING, false, hold.reason, "waiting for the spec to change"),
                DesiredCondition::new(DEGRADED, true, hold.reason, hold.message.clone()),
            ],
            phase: "Failed",
            current_version: None,
            provisioned: None,
            last_error: None,
            credentials_revision: None,
        };
        update_status(db, ctx, None, outcome).await?;
        return Ok(Action::await_change());
    }
    let children = build(&plan.effective, &credentials, &ctx.shared.operator_namespace);
    apply_or_report(db, ctx, &children).await?;
    let mut refusals = plan.refusals.clone();
    refusals.extend(rotation_refused);
    refusals.extend(grow_volumes(ctx, &ns, &plan.resizes).await?);

    let degraded = match refusals.first() {
        Some(first) => DesiredCondition::new(
            DEGRADED,
            true,
            first.reason,
            refusals.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; "),
        ),
        None => DesiredCondition::new(DEGRADED, false, "AsExpected", "no refused change and no failure"),
    };

    let rollout = existing.as_deref().map(|s| rollout_state(s, plan.effective.replicas));
    let running = existing.as_deref().and_then(day2::running_version);
    if !matches!(rollout, Some(Rollout::Done)) {
        let message = match rollout {
            Some(Rollout::Pending(m)) => m,
            _ => "creating the StatefulSet".into(),
        };
        let outcome = Outcome {
            conditions: vec![
                DesiredCondition::new(READY, false, "Starting", message.clone()),
                DesiredCondition::new(PROGRESSING, true, "Starting", message),
                degraded,
            ],
            phase: "Pending",
            current_version: None,
            provisioned: None,
            last_error: None,
            credentials_revision: None,
        };
        update_status(db, ctx, Some(&valid), outcome).await?;
        // The StatefulSet's status changes wake this controller up.
        return Ok(Action::requeue(ctx.shared.resync));
    }

    match provision_server(&valid, &credentials, ctx).await {
        Ok(report) => {
            if !report.is_empty() {
                info!(databaseinstance = %key(db), %report, "provisioned");
            }
            if credentials.previous_admin_password.is_some() {
                // The server has the new password: the old one may go.
                credentials.previous_admin_password = None;
                let finished = build(&plan.effective, &credentials, &ctx.shared.operator_namespace);
                apply_or_report(db, ctx, &finished).await?;
            }
            let outcome = Outcome {
                conditions: vec![
                    DesiredCondition::new(READY, true, "Provisioned", "the server runs and matches the spec"),
                    DesiredCondition::new(PROGRESSING, false, "Provisioned", "nothing left to do"),
                    degraded,
                ],
                phase: "Ready",
                current_version: running,
                provisioned: Some(declared_items(&valid)),
                last_error: Some(None),
                credentials_revision: credentials.revision.clone(),
            };
            update_status(db, ctx, Some(&valid), outcome).await?;
            Ok(Action::requeue(ctx.shared.resync))
        }
        Err(e) => {
            let failure = ProvisioningError {
                reason: e.reason().into(),
                message: e.to_string(),
                time: jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            };
            let mut degraded = DesiredCondition::new(DEGRADED, true, e.reason(), e.to_string());
            if let Some(first) = refusals.first() {
                degraded.message = format!("{}; {}", degraded.message, first.message);
            }
            let outcome = Outcome {
                conditions: vec![
                    DesiredCondition::new(READY, false, e.reason(), e.to_string()),
                    DesiredCondition::new(PROGRESSING, true, "Provisioning", "retrying with backoff"),
                    degraded,
                ],
                phase: "Provisioning",
                current_version: running,
                provisioned: None,
                last_error: Some(Some(failure)),
                credentials_revision: None,
            };
            update_status(db, ctx, Some(&valid), outcome).await?;
            Err(e.into())
        }
    }
}

/// Where [`stored_credentials`] reads the Secrets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The controller's cache (the main Secret from the server when the cache has none).
    Cache,
    /// The API server, every one.
    Server,
}

/// The credentials in the instance's Secrets. From the cache, the main Secret is read from the
/// API when the cache does not have it: a cache that lags must never make the operator
/// generate (and overwrite) a password that already exists.
async fn stored_credentials(valid: &ValidDatabase, ctx: &Ctx, read: Read) -> Result<Option<Credentials>, Error> {
    let ns = valid.namespace();
    let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let get = async |name: &str| -> Result<Option<Arc<Secret>>, Error> {
        match read {
            Read::Cache => Ok(ctx.stores.secrets.get(&ObjectRef::new(name).within(&ns))),
            Read::Server => Ok(api.get_opt(name).await?.map(Arc::new)),
        }
    };
    let mut main = get(&valid.secret_name()).await?;
    if main.is_none() && read == Read::Cache {
        main = api.get_opt(&valid.secret_name()).await?.map(Arc::new);
    }
    let mut users: BTreeMap<String, Arc<Secret>> = BTreeMap::new();
    for user in valid.login_users() {
        let name = valid.user_secret_name(user);
        if let Some(secret) = get(&name).await? {
            users.insert(name, secret);
        }
    }
    let server = get(&format!("{}-server", valid.name())).await?;
    Ok(Credentials::from_secrets(valid, main.as_deref(), |n| users.get(n).map(|s| s.as_ref()), server.as_deref()))
}

/// A Secret with its `stringData` moved to `data`, the form the API server stores and returns,
/// so that the applier can tell an up-to-date Secret from a changed one.
fn as_stored(mut secret: Secret) -> Secret {
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_default();
        for (k, v) in string_data {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
    secret
}

/// [`apply_children`], with an apply the API server rejected as invalid reported in the
/// status (`ApplyRejected`, the server's message) before the error goes to the error policy.
async fn apply_or_report(db: &DatabaseInstance, ctx: &Ctx, children: &DatabaseChildren) -> Result<(), Error> {
    let Err(e) = apply_children(db, ctx, children).await else { return Ok(()) };
    if let Some(conditions) = e.rejected_conditions() {
        let outcome = Outcome {
            conditions: conditions.to_vec(),
            phase: "Failed",
            current_version: None,
            provisioned: None,
            last_error: None,
            credentials_revision: None,
        };
        update_status(db, ctx, None, outcome).await?;
    }
    Err(e)
}

async fn apply_children(db: &DatabaseInstance, ctx: &Ctx, children: &DatabaseChildren) -> Result<(), Error> {
    // Destructured without `..`: a child that is built but not applied does not compile.
    let DatabaseChildren {
        service_account,
        role,
        role_binding,
        credentials,
        user_secrets,
        server_secret,
        config,
        headless_service,
        service,
        stateful_set,
        disruption_budget,
        network_policy,
    } = children;
    let s = &ctx.stores;
    let name = db.name_any();
    let applier = Applier {
        client: &ctx.shared.client,
        metrics: &ctx.shared.metrics,
        controller: NAME,
        manager: MANAGER,
        namespace: db.namespace().unwrap_or_default(),
        owner_uid: db.uid().unwrap_or_default(),
        owner_label: (owner_label_key("DatabaseInstance"), name.clone()),
        // A Secret or Service of the team's own that shares a child's name is never overwritten.
        foreign: Foreign::Refuse(
            "Berth never overwrites it: rename the DatabaseInstance, or move that object out of the way",
        ),
    };
    let peer_discovery = format!("{name}-peer-discovery");
    let mut writes = 0u32;
    writes += applier.apply(&s.service_accounts, service_account).await? as u32;
    writes += applier.apply_optional(&s.roles, &peer_discovery, role.as_ref()).await? as u32;
    writes += applier.apply_optional(&s.role_bindings, &peer_discovery, role_binding.as_ref()).await? as u32;
    writes += applier.apply(&s.secrets, &as_stored(credentials.clone())).await? as u32;
    for secret in user_secrets {
        writes += applier.apply(&s.secrets, &as_stored(secret.clone())).await? as u32;
    }
    if let Some(secret) = server_secret {
        writes += applier.apply(&s.secrets, &as_stored(secret.clone())).await? as u32;
    }
    writes += applier.apply(&s.config_maps, config).await? as u32;
    writes += applier.apply(&s.services, headless_service).await? as u32;
    writes += applier.apply(&s.services, service).await? as u32;
    writes += applier.apply(&s.stateful_sets, stateful_set).await? as u32;
    writes += applier.apply_optional(&s.disruption_budgets, &name, disruption_budget.as_ref()).await? as u32;
    writes += applier.apply(&s.network_policies, network_policy).await? as u32;
    if writes > 0 {
        info!(databaseinstance = %key(db), writes, "converged children");
    }
    Ok(())
}

/// Grows the PVCs in `resizes` when their StorageClass allows expansion; otherwise returns a
/// refusal that says so.
async fn grow_volumes(ctx: &Ctx, namespace: &str, resizes: &[Resize]) -> Result<Vec<Refusal>, Error> {
    let mut refusals = Vec::new();
    if resizes.is_empty() {
        return Ok(refusals);
    }
    let classes: Api<StorageClass> = Api::all(ctx.shared.client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.shared.client.clone(), namespace);
    for resize in resizes {
        let class = match &resize.storage_class {
            Some(name) => classes.get_opt(name).await?,
            None => classes.list(&Default::default()).await?.items.into_iter().find(|c| {
                c.annotations().get("storageclass.kubernetes.io/is-default-class").map(String::as_str) == Some("true")
            }),
        };
        let class_name = class.as_ref().map(|c| c.name_any()).or(resize.storage_class.clone()).unwrap_or_default();
        if class.as_ref().is_none_or(|c| c.allow_volume_expansion != Some(true)) {
            refusals.push(Refusal {
                reason: "VolumeExpansionUnsupported",
                message: format!(
                    "spec.storage.size: PVC {} cannot grow from {} to {}: StorageClass {class_name:?} does not set \
                     allowVolumeExpansion: true; enable expansion on the class, or set spec.storage.size back to {}",
                    resize.pvc, resize.from, resize.size, resize.from
                ),
            });
            continue;
        }
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": resize.size}}}});
        claims.patch(&resize.pvc, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        info!(namespace, pvc = %resize.pvc, from = %resize.from, to = %resize.size, "growing volume");
    }
    Ok(refusals)
}

enum Rollout {
    Done,
    Pending(String),
}

/// Whether every pod of the StatefulSet is ready and runs the current template.
fn rollout_state(sts: &StatefulSet, replicas: i32) -> Rollout {
    let Some(status) = &sts.status else { return Rollout::Pending("waiting for the StatefulSet controller".into()) };
    let generation = sts.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Pending("waiting for the StatefulSet controller to see the change".into());
    }
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < replicas {
        return Rollout::Pending(format!("{ready} of {replicas} pods ready"));
    }
    if status.update_revision.is_some() && status.update_revision != status.current_revision {
        return Rollout::Pending("rolling out the new pod template".into());
    }
    Rollout::Done
}

/// Connects as the administrative user (finishing a rotation first) and makes the server
/// match the spec.
async fn provision_server(
    valid: &ValidDatabase,
    credentials: &Credentials,
    ctx: &Ctx,
) -> Result<provision::ProvisionReport, ProvisionError> {
    let port = if valid.is_rabbitmq() { MANAGEMENT_PORT } else { valid.port() };
    let (host, port) = ctx.shared.endpoint(&valid.host(), port as u16);
    let target = |password: &str| Target {
        host: host.clone(),
        port,
        user: valid.admin_user().to_string(),
        password: password.to_string(),
    };
    if let Some(previous) = &credentials.previous_admin_password {
        let rotated = if valid.is_rabbitmq() {
            provision::rabbitmq::rotate_password(&target(previous), valid.admin_user(), &credentials.admin_password)
                .await
        } else {
            provision::postgres::rotate_password(&target(previous), valid.admin_user(), &credentials.admin_password)
                .await
        };
        match rotated {
            // The old password no longer works: an earlier run already rotated it.
            Ok(()) | Err(ProvisionError::Connect { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let admin = target(&credentials.admin_password);
    if valid.is_rabbitmq() {
        provision::rabbitmq::ensure(&admin, &valid.vhosts, &valid.users, &credentials.user_passwords).await
    } else {
        provision::postgres::ensure(&admin, &valid.roles, &valid.databases, &credentials.user_passwords).await
    }
}

/// What the spec declares, as `kind/name`: after a successful run, all of it exists.
fn declared_items(valid: &ValidDatabase) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    items.extend(valid.roles.iter().map(|r| format!("role/{}", r.name)));
    items.extend(valid.databases.iter().map(|d| format!("database/{}", d.name)));
    items.extend(valid.vhosts.iter().map(|v| format!("vhost/{v}")));
    items.extend(valid.users.iter().map(|u| format!("user/{}", u.name)));
    items
}

async fn update_status(
    db: &DatabaseInstance,
    ctx: &Ctx,
    valid: Option<&ValidDatabase>,
    outcome: Outcome,
) -> Result<(), Error> {
    let current = db.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let generation = db.meta().generation;
    let new_status = DatabaseInstanceStatus {
        observed_generation: generation,
        conditions: conditions::merge(&current.conditions, &outcome.conditions, generation, &now),
        phase: Some(outcome.phase.to_string()),
        endpoint: valid.map(|v| format!("{}:{}", v.host(), v.port())).or(current.endpoint.clone()),
        secret_name: valid.map(ValidDatabase::secret_name).or(current.secret_name.clone()),
        current_version: outcome.current_version.or(current.current_version.clone()),
        provisioned: outcome.provisioned.unwrap_or(current.provisioned.clone()),
        last_error: match outcome.last_error {
            Some(e) => e,
            None => current.last_error.clone(),
        },
        credentials_revision: outcome.credentials_revision.or(current.credentials_revision.clone()),
    };
    let unchanged = new_status.observed_generation == current.observed_generation
        && conditions::same_set(&new_status.conditions, &current.conditions)
        && new_status.phase == current.phase
        && new_status.endpoint == current.endpoint
        && new_status.secret_name == current.secret_name
        && new_status.current_version == current.current_version
        && new_status.provisioned == current.provisioned
        && new_status.last_error.as_ref().map(|e| (&e.reason, &e.message))
            == current.last_error.as_ref().map(|e| (&e.reason, &e.message))
        && new_status.credentials_revision == current.credentials_revision;
    if unchanged {
        return Ok(());
    }
    tracing::debug!(databaseinstance = %key(db), before = ?current, after = ?new_status, "status changed");
    let patch = serde_json::json!({
        "apiVersion": DatabaseInstance::api_version(&()),
        "kind": DatabaseInstance::kind(&()),
        "status": new_status,
    });
    let api: Api<DatabaseInstance> = Api::namespaced(ctx.shared.client.clone(), &db.namespace().unwrap_or_default());
    api.patch_status(&db.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch)).await?;
    publish_transition(db, ctx, &current, &new_status).await;
    Ok(())
}

/// An Event when readiness or the degraded reason changes.
async fn publish_transition(
    db: &DatabaseInstance,
    ctx: &Ctx,
    before: &DatabaseInstanceStatus,
    after: &DatabaseInstanceStatus,
) {
    let find = |s: &DatabaseInstanceStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).cloned();
    for type_ in [READY, DEGRADED] {
        let Some(now) = find(after, type_) else { continue };
        if find(before, type_).is_some_and(|b| b.status == now.status && b.reason == now.reason) {
            continue;
        }
        let good = (type_ == READY) == (now.status == "True");
        if type_ == DEGRADED && good && find(before, type_).is_none() {
            continue;
        }
        let event = Event {
            type_: if good || now.reason == "Starting" { EventType::Normal } else { EventType::Warning },
            reason: now.reason.clone(),
            note: Some(now.message.chars().take(1024).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.shared.recorder.publish(&event, &db.object_ref(&())).await {
            warn!(databaseinstance = %key(db), error = %e, "could not record an event");
        }
    }
}

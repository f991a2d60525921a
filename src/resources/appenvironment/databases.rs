//! `spec.databases`: the DatabaseInstances an AppEnvironment uses. Pure: the controller (or
//! `berth render`) passes in the instances of the app's namespace, [`link`] resolves every
//! reference, and the builders turn the result into environment variables, pod labels and
//! annotations.
//!
//! What a reference gives the pods:
//! - environment variables from the instance's credentials Secret (`<instance>-credentials`):
//!   `<PREFIX>_URL` (key `uri`), `_HOST`, `_PORT`, `_USERNAME`, `_PASSWORD` and, for
//!   PostgreSQL, `_NAME` (key `dbname`); see [`env_vars`];
//! - the label `berth.dev/uses-<instance>: "true"`, which the instance's NetworkPolicy admits;
//! - the annotation `berth.dev/credentials-<instance>: <credentialsRevision>` once the instance
//!   reports one, so that a credential rotation rolls the Deployment.
//!
//! Network egress: the app's own NetworkPolicy restricts ingress only (policy type `Ingress`),
//! so its pods may already connect to the instance; the instance's NetworkPolicy is what
//! admits them, through the label above. Should the app's policy ever restrict egress, it must
//! add [`egress_rules`] (the instance's pods on its client port).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};
use k8s_openapi::api::networking::v1::{NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::appenvironment::{AppEnvironment, DatabaseRef};
use crate::api::conditions::READY;
use crate::api::databaseinstance::{DatabaseInstance, Engine};
use crate::resources::databaseinstance::{self, uses_label};
use crate::resources::meta;

/// Default prefix of the app's only PostgreSQL instance (`DATABASE_URL`).
pub const POSTGRES_PREFIX: &str = "DATABASE";
/// Default prefix of the app's only RabbitMQ instance (`AMQP_URL`).
pub const RABBITMQ_PREFIX: &str = "AMQP";
/// Prefix of the pod annotation carrying an instance's credentials revision.
pub const CREDENTIALS_ANNOTATION_PREFIX: &str = "berth.dev/credentials-";

/// One referenced DatabaseInstance that exists and has a valid spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedDatabase {
    /// Name of the DatabaseInstance.
    pub name: String,
    pub engine: Engine,
    /// Prefix of the injected variables, e.g. `DATABASE`.
    pub env_prefix: String,
    /// The instance's credentials Secret (`<instance>-credentials`).
    pub secret_name: String,
    /// Client port (5432 or 5672).
    pub port: i32,
    /// The instance reports `Ready=True` for its current generation.
    pub ready: bool,
    /// `status.credentialsRevision` of the instance.
    pub credentials_revision: Option<String>,
}

/// Every reference of `spec.databases`, resolved against the instances of the namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseLinks {
    /// Instances that exist with a valid spec, in `spec.databases` order (ready or not).
    pub linked: Vec<LinkedDatabase>,
    /// Referenced names with no DatabaseInstance in the namespace.
    pub missing: Vec<String>,
    /// Referenced instances that are not ready (including those with an invalid spec).
    pub not_ready: Vec<String>,
}

impl DatabaseLinks {
    /// Whether the app must wait for a database: one is missing or not ready.
    pub fn waiting(&self) -> bool {
        !self.missing.is_empty() || !self.not_ready.is_empty()
    }

    /// Why the app waits, naming each instance; `None` when nothing is missing or unready.
    pub fn waiting_message(&self, namespace: &str) -> Option<String> {
        let parts: Vec<String> = self
            .missing
            .iter()
            .map(|n| format!("DatabaseInstance {n:?} does not exist in namespace {namespace:?}"))
            .chain(self.not_ready.iter().map(|n| format!("DatabaseInstance {n:?} is not ready")))
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The prefix a reference gets when it sets no `envPrefix`: the instance name upper-cased with
/// `-` as `_` (`orders-db` → `ORDERS_DB`).
pub fn name_prefix(name: &str) -> String {
    name.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }).collect()
}

/// Resolves `app.spec.databases` against `instances` (those of the app's namespace; others
/// are ignored).
///
/// Prefixes: an explicit `envPrefix` wins; otherwise `DATABASE` (PostgreSQL) or `AMQP`
/// (RabbitMQ) when the reference is the app's only one of that engine and no other reference
/// claims that prefix (explicitly or through its name); otherwise [`name_prefix`]. With the
/// checks of `validate` (unique names, no explicit prefix equal to another's), no two linked
/// databases share a prefix.
pub fn link(app: &AppEnvironment, instances: &[DatabaseInstance]) -> DatabaseLinks {
    let namespace = app.namespace();
    let find = |name: &str| {
        instances.iter().find(|i| i.name_any() == name && (namespace.is_none() || i.namespace() == namespace))
    };
    let refs = &app.spec.databases;
    // Engines of every found instance (valid or not), so a prefix does not change when an
    // instance's spec becomes valid.
    let engines: Vec<Option<Engine>> = refs.iter().map(|r| find(&r.name).map(|i| i.spec.engine)).collect();
    let mut links = DatabaseLinks::default();
    for (i, r) in refs.iter().enumerate() {
        let Some(instance) = find(&r.name) else {
            links.missing.push(r.name.clone());
            continue;
        };
        let Ok(valid) = databaseinstance::validate(instance) else {
            links.not_ready.push(r.name.clone());
            continue;
        };
        let ready = is_ready(instance);
        if !ready {
            links.not_ready.push(r.name.clone());
        }
        links.linked.push(LinkedDatabase {
            name: r.name.clone(),
            engine: valid.engine,
            env_prefix: resolve_prefix(refs, &engines, i),
            secret_name: valid.secret_name(),
            port: valid.port(),
            ready,
            credentials_revision: instance.status.as_ref().and_then(|s| s.credentials_revision.clone()),
        });
    }
    links
}

fn resolve_prefix(refs: &[DatabaseRef], engines: &[Option<Engine>], i: usize) -> String {
    let r = &refs[i];
    if let Some(prefix) = &r.env_prefix {
        return prefix.clone();
    }
    let Some(engine) = engines[i] else { return name_prefix(&r.name) };
    let default = match engine {
        Engine::Postgres => POSTGRES_PREFIX,
        Engine::Rabbitmq => RABBITMQ_PREFIX,
    };
    let only_one = engines.iter().filter(|e| **e == Some(engine)).count() == 1;
    let claimed = refs
        .iter()
        .enumerate()
        .any(|(j, other)| j != i && other.env_prefix.clone().unwrap_or_else(|| name_prefix(&other.name)) == default);
    if only_one && !claimed { default.to_string() } else { name_prefix(&r.name) }
}

/// `Ready=True` with `observedGeneration` equal to the instance's `metadata.generation`.
fn is_ready(instance: &DatabaseInstance) -> bool {
    let generation = instance.metadata.generation;
    instance.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == READY && c.status == "True" && (generation.is_none() || c.observed_generation == generation)
        })
    })
}

fn secret_env(name: String, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: None }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The variables of one linked database, as `(suffix, Secret key)` pairs.
fn variables(engine: Engine) -> &'static [(&'static str, &'static str)] {
    match engine {
        Engine::Postgres => &[
            ("URL", "uri"),
            ("HOST", "host"),
            ("PORT", "port"),
            ("USERNAME", "username"),
            ("PASSWORD", "password"),
            ("NAME", "dbname"),
        ],
        Engine::Rabbitmq => {
            &[("URL", "uri"), ("HOST", "host"), ("PORT", "port"), ("USERNAME", "username"), ("PASSWORD", "password")]
        }
    }
}

/// The container's environment: the variables of every linked database (as `secretKeyRef`s of
/// its credentials Secret), then `user_env` (`spec.env`) unchanged. A database variable whose
/// name `user_env` also declares is left out, so the user's value wins and no name appears
/// twice. Database variables come first so that `spec.env` values can refer to them with
/// `$(DATABASE_HOST)`.
pub fn env_vars(links: &DatabaseLinks, user_env: &[EnvVar]) -> Vec<EnvVar> {
    let mut taken: BTreeSet<String> = user_env.iter().map(|e| e.name.clone()).collect();
    let mut out = Vec::new();
    for db in &links.linked {
        for (suffix, key) in variables(db.engine) {
            let name = format!("{}_{suffix}", db.env_prefix);
            if !taken.insert(name.clone()) {
                continue;
            }
            out.push(secret_env(name, &db.secret_name, key));
        }
    }
    out.extend(user_env.iter().cloned());
    out
}

/// Pod labels that let the instances' NetworkPolicies admit the app's pods.
pub fn pod_labels(links: &DatabaseLinks) -> BTreeMap<String, String> {
    links.linked.iter().map(|db| (uses_label(&db.name), "true".to_string())).collect()
}

/// The annotation key holding the credentials revision of `instance`:
/// `berth.dev/credentials-<instance>`, shortened with a hash when the name part would exceed
/// the 63 characters of a qualified name.
pub fn credentials_annotation(instance: &str) -> String {
    let name_part = format!("credentials-{instance}");
    if name_part.len() <= 63 {
        return format!("berth.dev/{name_part}");
    }
    let hash = blake3::hash(instance.as_bytes()).to_hex();
    let keep: String = instance.chars().take(63 - "credentials-".len() - 9).collect();
    format!("{CREDENTIALS_ANNOTATION_PREFIX}{}-{}", keep.trim_end_matches('-'), &hash.as_str()[..8])
}

/// Pod annotations that roll the Deployment when an instance's credentials are rotated.
pub fn pod_annotations(links: &DatabaseLinks) -> BTreeMap<String, String> {
    links
        .linked
        .iter()
        .filter_map(|db| db.credentials_revision.as_ref().map(|rev| (credentials_annotation(&db.name), rev.clone())))
        .collect()
}

/// Egress to every linked instance's pods on its client port, for a NetworkPolicy of the app
/// that restricts egress. (The current one restricts ingress only; see the module docs.)
pub fn egress_rules(links: &DatabaseLinks) -> Vec<NetworkPolicyEgressRule> {
    links
        .linked
        .iter()
        .map(|db| NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(meta::selector_labels(&db.name, databaseinstance::build::COMPONENT)),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(db.port)),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            }]),
        })
        .collect()
}

//! Turns a raw AppEnvironment into a [`ValidApp`]: tier defaults resolved, and every rule the
//! CRD schema cannot express checked. Builders only ever see a `ValidApp`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::SecurityContext;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::databases::name_prefix;
use super::dns::{self, ResolvedDns};
use super::security;
use super::volumes;
use super::{access, external_secrets};
use crate::api::appenvironment::{
    AppEnvironment, AppPort, DatabaseRef, IssuerKind, PathType, Protocol, RolloutStrategy, Tier,
};
use crate::api::validation::FieldError;
use crate::resources::backuppolicy::validate::parse_schedule;

/// Port used when `spec.ports` is empty.
pub const DEFAULT_PORT: i32 = 8080;
/// CPU target used when autoscaling sets no target at all.
pub const DEFAULT_CPU_TARGET: i32 = 70;

/// An AppEnvironment whose spec passed validation, with every default resolved.
#[derive(Clone, Debug)]
pub struct ValidApp {
    /// The resource itself (metadata for names, owner references and labels).
    pub app: AppEnvironment,
    pub tier: Tier,
    pub ports: Vec<ResolvedPort>,
    /// `None` when an autoscaler owns the replica count.
    pub replicas: Option<i32>,
    pub service_port: i32,
    /// `None` with Kubernetes' rolling-update defaults, and with `recreate`.
    pub rollout: Option<(IntOrString, IntOrString)>,
    /// `rollout.strategy: Recreate`.
    pub recreate: bool,
    pub topology_spread: bool,
    pub ingress: Option<ResolvedIngress>,
    pub autoscaling: Option<ResolvedAutoscaling>,
    pub disruption_budget: Option<ResolvedBudget>,
    pub network_policy: Option<ResolvedNetworkPolicy>,
    pub metrics: Option<(i32, String)>,
    /// The container securityContext: `spec.securityContext` merged over the `restricted`
    /// defaults (see [`security::merge`]).
    pub security_context: SecurityContext,
}

/// A container port with its defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPort {
    pub name: String,
    pub container_port: i32,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedIngress {
    pub class_name: Option<String>,
    pub hosts: Vec<String>,
    pub paths: Vec<(String, &'static str)>,
    pub annotations: BTreeMap<String, String>,
    pub tls: Option<ResolvedTls>,
    /// `spec.ingress.dns`, its annotations added to the Ingress by the builder.
    pub dns: Option<ResolvedDns>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTls {
    pub secret_name: String,
    pub issuer_name: String,
    pub issuer_kind: &'static str,
    pub issuer_group: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedAutoscaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub cpu: Option<i32>,
    pub memory: Option<i32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ResolvedBudget {
    MinAvailable(IntOrString),
    MaxUnavailable(IntOrString),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedNetworkPolicy {
    pub ingress_controller_namespace: String,
    pub monitoring_namespace: String,
    pub allow_from_namespaces: Vec<String>,
    pub allow_from_apps: Vec<String>,
}

/// Validates `app` and resolves its defaults; every problem found is returned, not only the
/// first, so that a user fixes them in one round.
pub fn validate(app: &AppEnvironment) -> Result<ValidApp, Vec<FieldError>> {
    let spec = &app.spec;
    let mut errors = Vec::new();
    let name = app.name_any();
    // The name becomes a Service name, which must be a DNS-1035 label.
    if name.len() > 63 || !is_dns_label(&name) || name.starts_with(|c: char| c.is_ascii_digit()) {
        errors.push(FieldError::new(
            "metadata.name",
            format!("{name:?} must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters) because it names the Service"),
        ));
    }
    if spec.image.trim().is_empty() || spec.image.chars().any(char::is_whitespace) {
        errors.push(FieldError::new(
            "spec.image",
            "must be an image reference without spaces, e.g. registry.example.com/team/app:1.2.3",
        ));
    }

    let ports = resolve_ports(&spec.ports, &mut errors);
    let security_context = security::merge(spec.security_context.as_ref()).unwrap_or_else(|e| {
        errors.extend(e);
        SecurityContext::default()
    });
    check_databases(&spec.databases, &mut errors);
    super::adopt::check(app, &mut errors);
    let tier = spec.tier;

    let autoscaling = spec.autoscaling.as_ref().map(|a| {
        let tier_min = if tier == Tier::Production { 3 } else { 1 };
        let min_replicas = a.min_replicas.unwrap_or(tier_min.min(a.max_replicas).max(1));
        if a.min_replicas.is_none() && tier == Tier::Production && a.max_replicas < 3 {
            errors.push(FieldError::new(
                "spec.autoscaling.maxReplicas",
                format!("{} is below the production default of minReplicas 3; raise maxReplicas or set spec.autoscaling.minReplicas explicitly", a.max_replicas),
            ));
        }
        if min_replicas > a.max_replicas {
            errors.push(FieldError::new("spec.autoscaling.minReplicas", "must not exceed spec.autoscaling.maxReplicas"));
        }
        let none_set = a.target_cpu_utilization.is_none() && a.target_memory_utilization.is_none();
        ResolvedAutoscaling {
            min_replicas,
            max_replicas: a.max_replicas,
            cpu: a.target_cpu_utilization.or(none_set.then_some(DEFAULT_CPU_TARGET)),
            memory: a.target_memory_utilization,
        }
    });
    if spec.replicas.is_some() && spec.autoscaling.is_some() {
        errors.push(FieldError::new(
            "spec.replicas",
            "cannot be combined with spec.autoscaling: remove spec.replicas and set spec.autoscaling.minReplicas",
        ));
    }
    let replicas = if autoscaling.is_some() {
        None
    } else {
        Some(spec.replicas.unwrap_or(match tier {
            Tier::Development => 1,
            Tier::Staging | Tier::Production => 2,
        }))
    };

    let service = spec.service.clone().unwrap_or_default();
    let ingress = spec.ingress.as_ref().map(|ing| {
        let mut seen = BTreeSet::new();
        for (i, host) in ing.hosts.iter().enumerate() {
            if !seen.insert(host) {
                errors.push(FieldError::new(format!("spec.ingress.hosts[{i}]"), format!("{host:?} is listed twice")));
            }
        }
        if ing.tls.is_some() && ing.hosts.is_empty() {
            errors.push(FieldError::new(
                "spec.ingress.hosts",
                "spec.ingress.tls needs at least one host: the certificate is issued for these names",
            ));
        }
        let paths = if ing.paths.is_empty() {
            vec![("/".to_string(), "Prefix")]
        } else {
            ing.paths
                .iter()
                .map(|p| {
                    let t = match p.path_type.unwrap_or(PathType::Prefix) {
                        PathType::Prefix => "Prefix",
                        PathType::Exact => "Exact",
                        PathType::ImplementationSpecific => "ImplementationSpecific",
                    };
                    (p.path.clone(), t)
                })
                .collect()
        };
        let dns = dns::resolve(ing, tier, &mut errors);
        ResolvedIngress {
            dns,
            class_name: ing.class_name.clone(),
            hosts: ing.hosts.clone(),
            paths,
            annotations: ing.annotations.clone(),
            tls: ing.tls.as_ref().map(|tls| ResolvedTls {
                secret_name: tls.secret_name.clone().unwrap_or_else(|| format!("{name}-tls")),
                issuer_name: tls.issuer_ref.name.clone(),
                issuer_kind: match tls.issuer_ref.kind.unwrap_or(IssuerKind::ClusterIssuer) {
                    IssuerKind::ClusterIssuer => "ClusterIssuer",
                    IssuerKind::Issuer => "Issuer",
                },
                issuer_group: tls.issuer_ref.group.clone().unwrap_or_else(|| "cert-manager.io".into()),
            }),
        }
    });

    let budget = spec.disruption_budget.clone().unwrap_or_default();
    let budget_enabled = budget.enabled.unwrap_or(tier != Tier::Development);
    let disruption_budget = budget_enabled.then_some(match (budget.min_available, budget.max_unavailable) {
        (Some(min), _) => ResolvedBudget::MinAvailable(min),
        (None, Some(max)) => ResolvedBudget::MaxUnavailable(max),
        (None, None) => ResolvedBudget::MaxUnavailable(IntOrString::Int(1)),
    });

    let np = spec.network_policy.clone().unwrap_or_default();
    let network_policy = np.enabled.unwrap_or(true).then(|| ResolvedNetworkPolicy {
        ingress_controller_namespace: np.ingress_controller_namespace.unwrap_or_else(|| "ingress-nginx".into()),
        monitoring_namespace: np.monitoring_namespace.unwrap_or_else(|| "monitoring".into()),
        allow_from_namespaces: np.allow_from_namespaces,
        allow_from_apps: np.allow_from_apps,
    });

    let first_port = ports.first().map(|p| p.container_port).unwrap_or(DEFAULT_PORT);
    let monitoring = spec.monitoring.clone().unwrap_or_default();
    let metrics = monitoring
        .prometheus
        .as_ref()
        .map(|p| (p.port.unwrap_or(first_port), p.path.clone().unwrap_or_else(|| "/metrics".into())));
    if let Some((port, path)) = &metrics {
        if !ports.iter().any(|p| p.container_port == *port) {
            errors.push(FieldError::new(
                "spec.monitoring.prometheus.port",
                format!("{port} is not one of spec.ports; add it there so the network policy and Service know it"),
            ));
        }
        if !path.starts_with('/') {
            errors.push(FieldError::new("spec.monitoring.prometheus.path", format!("{path:?} must start with '/'")));
        }
    }
    if monitoring.datadog.is_some() && metrics.is_none() {
        errors.push(FieldError::new(
            "spec.monitoring.datadog",
            "needs spec.monitoring.prometheus: Datadog scrapes the same OpenMetrics endpoint",
        ));
    }

    let zero_downtime = tier != Tier::Development;
    let explicit = spec.rollout.clone().unwrap_or_default();
    let recreate = explicit.strategy == Some(RolloutStrategy::Recreate);
    if recreate && (explicit.max_surge.is_some() || explicit.max_unavailable.is_some()) {
        errors.push(FieldError::new(
            "spec.rollout",
            "maxSurge and maxUnavailable apply to RollingUpdate only: remove them or set rollout.strategy: RollingUpdate",
        ));
    }
    let rollout = match (explicit.max_surge, explicit.max_unavailable, zero_downtime) {
        _ if recreate => None,
        (None, None, false) => None,
        (surge, unavailable, _) => Some((
            surge.unwrap_or_else(|| IntOrString::String("25%".into())),
            unavailable.unwrap_or(if zero_downtime { IntOrString::Int(0) } else { IntOrString::String("25%".into()) }),
        )),
    };
    if let Some((surge, unavailable)) = &rollout
        && is_zero(surge)
        && is_zero(unavailable)
    {
        errors.push(FieldError::new(
            "spec.rollout",
            "maxSurge and maxUnavailable cannot both be 0: the rollout could never make progress",
        ));
    }

    volumes::check(app, replicas, &rollout, recreate, &mut errors);
    check_workloads(app, &mut errors);
    access::check(&spec.access, &mut errors);
    external_secrets::check(app, &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ValidApp {
        app: app.clone(),
        tier,
        service_port: service.port.unwrap_or(80),
        ports,
        replicas,
        rollout,
        recreate,
        topology_spread: spec.topology_spread.unwrap_or(tier == Tier::Production),
        ingress,
        autoscaling,
        disruption_budget,
        network_policy,
        metrics,
        security_context,
    })
}

/// Longest name of a CronJob: its Jobs get an 11-character suffix within 63.
const CRONJOB_NAME_MAX: usize = 52;

/// `spec.workers`, `spec.cronJobs` and `spec.migration`: unique names that fit their child
/// names, schedules and time zones the CronJob controller accepts, a migration that runs
/// something.
fn check_workloads(app: &AppEnvironment, errors: &mut Vec<FieldError>) {
    let spec = &app.spec;
    let name = app.name_any();
    let mut seen = BTreeSet::new();
    for (i, w) in spec.workers.iter().enumerate() {
        let field = format!("spec.workers[{i}].name");
        if !seen.insert(w.name.as_str()) {
            errors.push(FieldError::new(field, format!("{:?} is used by another worker; names are unique", w.name)));
        } else if !is_dns_label(&w.name) || format!("{name}-{}", w.name).len() > 63 {
            errors.push(FieldError::new(
                field,
                format!("{:?}: the Deployment {name}-{} must be a DNS label of at most 63 characters; use a shorter lowercase name", w.name, w.name),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, c) in spec.cron_jobs.iter().enumerate() {
        let field = |f: &str| format!("spec.cronJobs[{i}].{f}");
        if !seen.insert(c.name.as_str()) {
            errors.push(FieldError::new(
                field("name"),
                format!("{:?} is used by another cron job; names are unique", c.name),
            ));
        } else if !is_dns_label(&c.name) || format!("{name}-{}", c.name).len() > CRONJOB_NAME_MAX {
            errors.push(FieldError::new(
                field("name"),
                format!("{:?}: the CronJob {name}-{} must be a DNS label of at most {CRONJOB_NAME_MAX} characters; use a shorter lowercase name", c.name, c.name),
            ));
        }
        if let Err(message) = parse_schedule(&c.schedule) {
            errors.push(FieldError::new(field("schedule"), message));
        }
        if let Some(tz) = &c.time_zone
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            errors.push(FieldError::new(
                field("timeZone"),
                format!("{tz:?} is not an IANA time zone name, e.g. Europe/Berlin or America/New_York"),
            ));
        }
    }
    if let Some(m) = &spec.migration
        && m.command.is_empty()
        && m.args.is_empty()
    {
        errors.push(FieldError::new(
            "spec.migration",
            "needs command or args, e.g. args: [\"bin/rails\", \"db:migrate\"]",
        ));
    }
}

fn is_zero(v: &IntOrString) -> bool {
    match v {
        IntOrString::Int(i) => *i == 0,
        IntOrString::String(s) => s.trim_end_matches('%').trim() == "0",
    }
}

fn resolve_ports(ports: &[AppPort], errors: &mut Vec<FieldError>) -> Vec<ResolvedPort> {
    if ports.is_empty() {
        return vec![ResolvedPort { name: "http".into(), container_port: DEFAULT_PORT, protocol: "TCP" }];
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if !names.insert(p.name.clone()) {
                errors.push(FieldError::new(
                    format!("spec.ports[{i}].name"),
                    format!("{:?} is used by another port; port names must be unique", p.name),
                ));
            }
            let protocol = match p.protocol.unwrap_or(Protocol::Tcp) {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Sctp => "SCTP",
            };
            if !numbers.insert((p.container_port, protocol)) {
                errors.push(FieldError::new(
                    format!("spec.ports[{i}].containerPort"),
                    format!("{} is listed twice", p.container_port),
                ));
            }
            ResolvedPort { name: p.name.clone(), container_port: p.container_port, protocol }
        })
        .collect()
}

/// `spec.databases`: each instance once, valid prefixes, and no prefix shared by two
/// references. The defaults `DATABASE`/`AMQP` depend on the instances' engines and are
/// resolved without collisions by [`super::databases::link`]; what can collide regardless of
/// the engines is checked here.
fn check_databases(refs: &[DatabaseRef], errors: &mut Vec<FieldError>) {
    let mut names = BTreeMap::new();
    for (i, r) in refs.iter().enumerate() {
        if let Some(&first) = names.get(r.name.as_str()) {
            errors.push(FieldError::new(
                format!("spec.databases[{i}].name"),
                format!(
                    "{:?} is already referenced by spec.databases[{first}]; list each DatabaseInstance once",
                    r.name
                ),
            ));
        } else {
            names.insert(r.name.as_str(), i);
        }
    }
    // Explicit prefixes, in order, against explicit prefixes and name-derived defaults.
    let mut claimed: BTreeMap<String, usize> = BTreeMap::new();
    for (i, r) in refs.iter().enumerate() {
        if r.env_prefix.is_none() {
            claimed.entry(name_prefix(&r.name)).or_insert(i);
        }
    }
    for (i, r) in refs.iter().enumerate() {
        let Some(prefix) = &r.env_prefix else { continue };
        let field = format!("spec.databases[{i}].envPrefix");
        if !is_env_prefix(prefix) {
            errors.push(FieldError::new(
                field,
                format!("{prefix:?} must consist of uppercase letters, digits and '_' and not start with a digit (^[A-Z_][A-Z0-9_]*$), e.g. ORDERS_DB"),
            ));
            continue;
        }
        match claimed.get(prefix) {
            Some(&j) if refs[j].env_prefix.is_some() => errors.push(FieldError::new(
                field,
                format!("{prefix:?} is also the envPrefix of spec.databases[{j}] ({:?}); give each database its own prefix", refs[j].name),
            )),
            Some(&j) => errors.push(FieldError::new(
                field,
                format!("{prefix:?} is the default prefix of spec.databases[{j}] ({:?}); choose another envPrefix or set spec.databases[{j}].envPrefix", refs[j].name),
            )),
            _ => {
                claimed.insert(prefix.clone(), i);
            }
        }
    }
}

fn is_env_prefix(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

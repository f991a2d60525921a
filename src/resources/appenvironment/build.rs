//! Pure builders: a [`ValidApp`] in, the children of the AppEnvironment out.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, LocalObjectReference, PersistentVolumeClaim, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, Service, ServiceAccount, ServicePort, ServiceSpec,
    TopologySpreadConstraint,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::access;
use super::databases::{self, DatabaseLinks};
use super::dns;
use super::external_secrets::{self, ExternalSecret};
use super::validate::{ResolvedBudget, ValidApp};
use super::{adopt, volumes, workloads};
use crate::api::appenvironment::{AppEnvironment, Probes, PullPolicy, ServiceType};
use crate::resources::certificate::{Certificate, CertificateIssuerRef, CertificateSpec};
use crate::resources::meta::{self, typed};

/// Component label of application pods.
pub const COMPONENT: &str = "app";
/// Name of the application container.
pub const CONTAINER: &str = "app";

/// Every child of an AppEnvironment; `None` for the optional ones the spec does not ask for.
/// The controller's applier destructures this without `..`, so a new child kind that is built
/// but never applied does not compile.
#[derive(Clone, Debug)]
pub struct AppChildren {
    pub service_account: ServiceAccount,
    pub service: Service,
    pub deployment: Deployment,
    pub ingress: Option<Ingress>,
    pub certificate: Option<Certificate>,
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    pub disruption_budget: Option<PodDisruptionBudget>,
    pub network_policy: Option<NetworkPolicy>,
    /// `spec.volumes` claims: no owner reference (see [`volumes`]).
    pub volume_claims: Vec<PersistentVolumeClaim>,
    /// One Deployment per `spec.workers` entry.
    pub workers: Vec<Deployment>,
    /// One CronJob per `spec.cronJobs` entry.
    pub cron_jobs: Vec<CronJob>,
    /// The Job of `spec.migration` for the current image.
    pub migration: Option<Job>,
    /// One ExternalSecret per `spec.externalSecrets` entry.
    pub external_secrets: Vec<ExternalSecret>,
    /// `spec.access`: a Role per level, and the RoleBindings (see [`access`]).
    pub access_roles: Vec<Role>,
    pub access_bindings: Vec<RoleBinding>,
}

impl AppChildren {
    /// Every present child as JSON, in apply order (ServiceAccount, access Roles and
    /// RoleBindings, ExternalSecrets, claims, migration Job, Service, Deployment, workers, CronJobs, Ingress, Certificate, HorizontalPodAutoscaler,
    /// PodDisruptionBudget, NetworkPolicy).
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        let Self {
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
        } = self;
        let mut out = vec![typed(service_account)];
        out.extend(access_roles.iter().map(typed));
        out.extend(access_bindings.iter().map(typed));
        out.extend(external_secrets.iter().map(typed));
        out.extend(volume_claims.iter().map(typed));
        out.extend(migration.as_ref().map(typed));
        out.extend([typed(service), typed(deployment)]);
        out.extend(workers.iter().map(typed));
        out.extend(cron_jobs.iter().map(typed));
        out.extend(ingress.as_ref().map(typed));
        out.extend(certificate.as_ref().map(typed));
        out.extend(autoscaler.as_ref().map(typed));
        out.extend(disruption_budget.as_ref().map(typed));
        out.extend(network_policy.as_ref().map(typed));
        out
    }
}

/// Builds every child of `valid`. `links` are its `spec.databases` resolved by
/// [`databases::link`]: their variables, labels and annotations go into the Deployment's pods
/// (whether or not the instances are ready yet; readiness only affects the status).
pub fn build(valid: &ValidApp, links: &DatabaseLinks) -> AppChildren {
    let (access_roles, access_bindings) = access::build(valid);
    AppChildren {
        external_secrets: external_secrets::build(valid),
        access_roles,
        access_bindings,
        service_account: service_account(valid),
        service: service(valid),
        deployment: deployment(valid, links),
        ingress: ingress(valid),
        certificate: certificate(valid),
        autoscaler: autoscaler(valid),
        disruption_budget: disruption_budget(valid),
        network_policy: network_policy(valid),
        volume_claims: volumes::claims(valid),
        workers: workloads::workers(valid, links),
        cron_jobs: workloads::cron_jobs(valid, links),
        migration: workloads::migration_job(valid, links),
    }
}

pub(super) fn app(valid: &ValidApp) -> &AppEnvironment {
    &valid.app
}

pub(super) fn labels(valid: &ValidApp) -> BTreeMap<String, String> {
    let mut labels = meta::standard_labels(app(valid), COMPONENT);
    labels.insert("berth.dev/tier".into(), valid.tier.as_str().into());
    labels
}

fn selector(valid: &ValidApp) -> LabelSelector {
    LabelSelector { match_labels: Some(adopt::selector_labels(app(valid))), ..LabelSelector::default() }
}

pub(super) fn child_meta(valid: &ValidApp, annotations: BTreeMap<String, String>) -> ObjectMeta {
    let mut m = meta::child_meta(app(valid), &app(valid).name_any(), labels(valid));
    if !annotations.is_empty() {
        m.annotations = Some(annotations);
    }
    m
}

fn service_account(valid: &ValidApp) -> ServiceAccount {
    let settings = app(valid).spec.service_account.clone().unwrap_or_default();
    ServiceAccount {
        metadata: child_meta(valid, settings.annotations),
        automount_service_account_token: Some(settings.automount_token.unwrap_or(false)),
        ..ServiceAccount::default()
    }
}

fn service(valid: &ValidApp) -> Service {
    let spec = &app(valid).spec;
    let settings = spec.service.clone().unwrap_or_default();
    let ports = valid
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| ServicePort {
            name: Some(p.name.clone()),
            port: if i == 0 { valid.service_port } else { p.container_port },
            target_port: Some(IntOrString::String(p.name.clone())),
            protocol: Some(p.protocol.into()),
            ..ServicePort::default()
        })
        .collect();
    Service {
        metadata: child_meta(valid, settings.annotations),
        spec: Some(ServiceSpec {
            type_: Some(
                match settings.type_.unwrap_or(ServiceType::ClusterIP) {
                    ServiceType::ClusterIP => "ClusterIP",
                    ServiceType::NodePort => "NodePort",
                    ServiceType::LoadBalancer => "LoadBalancer",
                }
                .into(),
            ),
            selector: Some(adopt::selector_labels(app(valid))),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pod_annotations(valid: &ValidApp, links: &DatabaseLinks) -> BTreeMap<String, String> {
    let spec = &app(valid).spec;
    let mut annotations = BTreeMap::new();
    if let Some(linkerd) = spec.linkerd {
        annotations.insert("linkerd.io/inject".into(), if linkerd { "enabled" } else { "disabled" }.into());
    }
    if let Some((port, path)) = &valid.metrics {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), port.to_string());
        annotations.insert("prometheus.io/path".into(), path.clone());
        if let Some(dd) = spec.monitoring.as_ref().and_then(|m| m.datadog.as_ref()) {
            let metrics = if dd.metrics.is_empty() { vec![".*".to_string()] } else { dd.metrics.clone() };
            let check = serde_json::json!({
                "openmetrics": {
                    "init_config": {},
                    "instances": [{
                        "openmetrics_endpoint": format!("http://%%host%%:{port}{path}"),
                        "namespace": dd.namespace.clone().unwrap_or_else(|| app(valid).name_any()),
                        "metrics": metrics,
                    }]
                }
            });
            annotations.insert(format!("ad.datadoghq.com/{CONTAINER}.checks"), check.to_string());
        }
    }
    annotations.extend(spec.pod_annotations.clone());
    // After the user's: a credential rotation must roll the pods.
    annotations.extend(databases::pod_annotations(links));
    annotations
}

/// What differs between the pods of the app, its workers, cron jobs and migration.
pub(super) struct PodShape<'a> {
    pub command: &'a [String],
    pub args: &'a [String],
    pub resources: Option<ResourceRequirements>,
    pub probes: Probes,
    /// The app's ports (only the app's own pods serve them).
    pub ports: bool,
    /// The names of `spec.volumes` mounted, or all of them.
    pub volumes: Option<&'a [String]>,
}

/// Labels of pods of `component`: the owner's, the image version, the user's, and the
/// DatabaseInstances' admission labels.
pub(super) fn pod_labels(valid: &ValidApp, links: &DatabaseLinks, component: &str) -> BTreeMap<String, String> {
    let spec = &app(valid).spec;
    let mut pod_labels = meta::standard_labels(app(valid), component);
    pod_labels.insert("berth.dev/tier".into(), valid.tier.as_str().into());
    if let Some(version) =
        spec.image.rsplit_once(':').map(|(_, tag)| tag).filter(|t| !t.contains('/')).and_then(meta::label_value)
    {
        pod_labels.insert("app.kubernetes.io/version".into(), version);
    }
    pod_labels.extend(spec.pod_labels.clone());
    // After the user's: the instances' NetworkPolicies admit pods by these labels.
    pod_labels.extend(databases::pod_labels(links));
    pod_labels
}

/// The pod template of every process of the app: its image, env, database variables,
/// securityContext, ServiceAccount and scheduling, shaped by `shape`.
pub(super) fn pod_template(
    valid: &ValidApp,
    links: &DatabaseLinks,
    labels: BTreeMap<String, String>,
    shape: PodShape,
) -> PodTemplateSpec {
    let spec = &app(valid).spec;
    let name = app(valid).name_any();
    let mut env = databases::env_vars(links, &spec.env);
    env.extend(external_secrets::env_vars(app(valid)));
    let (mut volumes, mut mounts) = volumes::pod_volumes(valid, shape.volumes);
    let (secret_volumes, secret_mounts) = external_secrets::volumes(app(valid));
    volumes.extend(secret_volumes);
    mounts.extend(secret_mounts);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| {
            match p {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            }
            .into()
        }),
        command: (!shape.command.is_empty()).then(|| shape.command.to_vec()),
        args: (!shape.args.is_empty()).then(|| shape.args.to_vec()),
        env: (!env.is_empty()).then_some(env),
        env_from: (!spec.env_from.is_empty()).then(|| spec.env_from.clone()),
        ports: shape.ports.then(|| {
            valid
                .ports
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.clone()),
                    container_port: p.container_port,
                    protocol: Some(p.protocol.into()),
                    ..ContainerPort::default()
                })
                .collect()
        }),
        resources: shape.resources,
        liveness_probe: shape.probes.liveness,
        readiness_probe: shape.probes.readiness,
        startup_probe: shape.probes.startup,
        security_context: Some(valid.security_context.clone()),
        // A read-only root filesystem still needs a writable /tmp for most runtimes.
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    // A fresh volume belongs to root: the fsGroup lets a non-root process write to it.
    let fs_group = volumes::mounts_claims(valid, shape.volumes).then(|| {
        let sc = &valid.security_context;
        sc.run_as_group.or(sc.run_as_user).unwrap_or(DEFAULT_FS_GROUP)
    });
    let annotations = pod_annotations(valid, links);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            automount_service_account_token: Some(
                spec.service_account.as_ref().and_then(|s| s.automount_token).unwrap_or(false),
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                fs_group,
                fs_group_change_policy: fs_group.map(|_| "OnRootMismatch".into()),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.iter().map(|n| LocalObjectReference { name: n.clone() }).collect()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            ..PodSpec::default()
        }),
    }
}

/// fsGroup of pods that mount a claim when the securityContext names no user or group (the
/// UID Berth's images and most distroless images run as).
const DEFAULT_FS_GROUP: i64 = 65532;

fn deployment(valid: &ValidApp, links: &DatabaseLinks) -> Deployment {
    let spec = &app(valid).spec;
    let shape = PodShape {
        command: &spec.command,
        args: &spec.args,
        resources: spec.resources.clone(),
        probes: spec.probes.clone().unwrap_or_default(),
        ports: true,
        volumes: None,
    };
    let mut labels = pod_labels(valid, links, COMPONENT);
    // An adopted Deployment's pods must still match its immutable selector.
    if app(valid).spec.adopt.is_some() {
        labels.extend(adopt::selector_labels(app(valid)));
    }
    let mut template = pod_template(valid, links, labels, shape);
    if let Some(pod) = template.spec.as_mut() {
        pod.topology_spread_constraints = valid.topology_spread.then(|| {
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
                .into_iter()
                .map(|key| TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: key.into(),
                    // ScheduleAnyway: a single-zone cluster must still run the app.
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(selector(valid)),
                    match_label_keys: Some(vec!["pod-template-hash".into()]),
                    ..TopologySpreadConstraint::default()
                })
                .collect()
        });
    }
    let strategy = if valid.recreate {
        DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: valid.rollout.as_ref().map(|(surge, unavailable)| RollingUpdateDeployment {
                max_surge: Some(surge.clone()),
                max_unavailable: Some(unavailable.clone()),
            }),
        }
    };
    Deployment {
        metadata: child_meta(valid, BTreeMap::new()),
        spec: Some(DeploymentSpec {
            replicas: valid.replicas,
            selector: selector(valid),
            revision_history_limit: Some(5),
            // Kubernetes' default (600) when unset, which is also Berth's.
            progress_deadline_seconds: app(valid).spec.progress_deadline_seconds,
            strategy: Some(strategy),
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn ingress(valid: &ValidApp) -> Option<Ingress> {
    let ing = valid.ingress.as_ref()?;
    let name = app(valid).name_any();
    let first_port = valid.ports.first().map(|p| p.name.clone()).unwrap_or_else(|| "http".into());
    let http = HTTPIngressRuleValue {
        paths: ing
            .paths
            .iter()
            .map(|(path, path_type)| HTTPIngressPath {
                path: Some(path.clone()),
                path_type: (*path_type).into(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: name.clone(),
                        port: Some(ServiceBackendPort {
                            name: Some(first_port.clone()),
                            ..ServiceBackendPort::default()
                        }),
                    }),
                    ..IngressBackend::default()
                },
            })
            .collect(),
    };
    let rules = if ing.hosts.is_empty() {
        vec![IngressRule { host: None, http: Some(http) }]
    } else {
        ing.hosts.iter().map(|h| IngressRule { host: Some(h.clone()), http: Some(http.clone()) }).collect()
    };
    let mut annotations = ing.annotations.clone();
    annotations.extend(ing.dns.as_ref().map(dns::annotations).unwrap_or_default());
    Some(Ingress {
        metadata: child_meta(valid, annotations),
        spec: Some(IngressSpec {
            ingress_class_name: ing.class_name.clone(),
            rules: Some(rules),
            tls: ing.tls.as_ref().map(|tls| {
                vec![IngressTLS { hosts: Some(ing.hosts.clone()), secret_name: Some(tls.secret_name.clone()) }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

fn certificate(valid: &ValidApp) -> Option<Certificate> {
    let ing = valid.ingress.as_ref()?;
    let tls = ing.tls.as_ref()?;
    Some(Certificate {
        metadata: child_meta(valid, BTreeMap::new()),
        spec: CertificateSpec {
            secret_name: tls.secret_name.clone(),
            dns_names: ing.hosts.clone(),
            issuer_ref: CertificateIssuerRef {
                name: tls.issuer_name.clone(),
                kind: tls.issuer_kind.into(),
                group: tls.issuer_group.clone(),
            },
        },
        status: None,
    })
}

fn autoscaler(valid: &ValidApp) -> Option<HorizontalPodAutoscaler> {
    let a = valid.autoscaling.as_ref()?;
    let metric = |resource: &str, pct: i32| MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(pct),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    };
    let metrics: Vec<MetricSpec> =
        a.cpu.map(|c| metric("cpu", c)).into_iter().chain(a.memory.map(|m| metric("memory", m))).collect();
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(valid, BTreeMap::new()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: app(valid).name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

fn disruption_budget(valid: &ValidApp) -> Option<PodDisruptionBudget> {
    let budget = valid.disruption_budget.as_ref()?;
    let (min_available, max_unavailable) = match budget {
        ResolvedBudget::MinAvailable(v) => (Some(v.clone()), None),
        ResolvedBudget::MaxUnavailable(v) => (None, Some(v.clone())),
    };
    Some(PodDisruptionBudget {
        metadata: child_meta(valid, BTreeMap::new()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(valid)),
            min_available,
            max_unavailable,
            // Evict pods that are not ready anyway, so a broken rollout cannot block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Every pod of the app (app, workers, cron jobs, migration): they all carry the owner label.
fn all_pods(valid: &ValidApp) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_string(), meta::MANAGED_BY.to_string()),
            (meta::owner_label_key("AppEnvironment"), app(valid).name_any()),
        ])),
        ..LabelSelector::default()
    }
}

/// Ingress only: which pods may reach the app. Egress is not restricted, so the app reaches
/// the DatabaseInstances of `spec.databases` without a rule here (their own NetworkPolicies
/// admit it by the `berth.dev/uses-<instance>` pod label). A policy that adds the `Egress`
/// type must include [`databases::egress_rules`].
fn network_policy(valid: &ValidApp) -> Option<NetworkPolicy> {
    let np = valid.network_policy.as_ref()?;
    let ns_peer = |ns: &str| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let port = |p: i32, protocol: &str| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some(protocol.into()),
        ..NetworkPolicyPort::default()
    };
    let app_ports: Vec<NetworkPolicyPort> = valid.ports.iter().map(|p| port(p.container_port, p.protocol)).collect();
    let mut rules = vec![
        // Pods of the same app (peers, sidecars of replicas) may talk to each other.
        NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer { pod_selector: Some(all_pods(valid)), ..NetworkPolicyPeer::default() }]),
            ..NetworkPolicyIngressRule::default()
        },
        NetworkPolicyIngressRule {
            from: Some(vec![ns_peer(&np.ingress_controller_namespace)]),
            ports: Some(app_ports.clone()),
        },
    ];
    if let Some((metrics_port, _)) = valid.metrics {
        rules.push(NetworkPolicyIngressRule {
            from: Some(vec![ns_peer(&np.monitoring_namespace)]),
            ports: Some(vec![port(metrics_port, "TCP")]),
        });
    }
    if !np.allow_from_namespaces.is_empty() {
        rules.push(NetworkPolicyIngressRule {
            from: Some(np.allow_from_namespaces.iter().map(|ns| ns_peer(ns)).collect()),
            ports: Some(app_ports),
        });
    }
    if !np.allow_from_apps.is_empty() {
        // Every pod of those apps (their workers and cron jobs too) carries the owner label.
        let owner = meta::owner_label_key("AppEnvironment");
        rules.push(NetworkPolicyIngressRule {
            from: Some(
                np.allow_from_apps
                    .iter()
                    .map(|a| NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(owner.clone(), a.clone())])),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    })
                    .collect(),
            ),
            ports: Some(valid.ports.iter().map(|p| port(p.container_port, p.protocol)).collect()),
        });
    }
    Some(NetworkPolicy {
        metadata: child_meta(valid, BTreeMap::new()),
        spec: Some(NetworkPolicySpec {
            // Every pod of the app: its workers, cron jobs and migration too, so that none of
            // them is open to the whole cluster.
            pod_selector: Some(all_pods(valid)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The public URL of the app: first concrete host and first path of the Ingress.
pub fn url(valid: &ValidApp) -> Option<String> {
    let ing = valid.ingress.as_ref()?;
    let host = ing.hosts.iter().find(|h| !h.starts_with('*'))?;
    let scheme = if ing.tls.is_some() { "https" } else { "http" };
    let path = ing.paths.first().map(|(p, _)| p.as_str()).unwrap_or("/");
    Some(format!("{scheme}://{host}{path}"))
}

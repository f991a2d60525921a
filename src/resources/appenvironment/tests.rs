//! Builder and status tests, starting from small YAML fixtures run through `validate`.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::status::{Observed, health};
use super::*;
use crate::api::AppEnvironment;
use crate::resources::certificate::{Certificate, CertificateCondition, CertificateStatus};

fn app(spec: &str) -> AppEnvironment {
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: web\n  namespace: team\n  uid: u-1\n  generation: 1\nspec:\n{spec}"
    );
    serde_saphyr::from_str(&yaml).expect("fixture parses")
}

fn valid(spec: &str) -> ValidApp {
    validate(&app(spec)).expect("fixture is valid")
}

static NO_DATABASES: DatabaseLinks = DatabaseLinks { linked: Vec::new(), missing: Vec::new(), not_ready: Vec::new() };

fn build_plain(valid: &ValidApp) -> AppChildren {
    build(valid, &NO_DATABASES)
}

#[test]
fn development_defaults() {
    let c = build_plain(&valid("  tier: development\n  image: x:1\n"));
    assert_eq!(c.deployment.spec.replicas, Some(1));
    assert!(c.disruption_budget.is_none());
    assert!(c.ingress.is_none() && c.certificate.is_none() && c.autoscaler.is_none());
    assert!(c.network_policy.is_some(), "default-deny ingress applies to every tier");
    let pod = c.deployment.spec.template.spec.unwrap();
    assert!(pod.topology_spread_constraints.is_none());
    assert_eq!(
        c.deployment.spec.strategy.unwrap().rolling_update,
        None,
        "development keeps Kubernetes' rollout defaults"
    );
}

#[test]
fn production_defaults_and_explicit_fields_win() {
    let c = build_plain(&valid("  tier: production\n  image: x:1\n"));
    assert_eq!(c.deployment.spec.replicas, Some(2));
    let ru = c.deployment.spec.strategy.clone().unwrap().rolling_update.unwrap();
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert!(c.disruption_budget.is_some());
    assert_eq!(
        c.deployment.spec.template.spec.as_ref().unwrap().topology_spread_constraints.as_ref().unwrap().len(),
        2
    );

    let c = build_plain(&valid(
        "  tier: production\n  image: x:1\n  replicas: 5\n  topologySpread: false\n  disruptionBudget:\n    enabled: false\n  rollout:\n    maxUnavailable: 1\n",
    ));
    assert_eq!(c.deployment.spec.replicas, Some(5));
    assert!(c.disruption_budget.is_none());
    assert!(c.deployment.spec.template.spec.as_ref().unwrap().topology_spread_constraints.is_none());
    assert_eq!(c.deployment.spec.strategy.unwrap().rolling_update.unwrap().max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn autoscaling_leaves_replicas_to_the_autoscaler() {
    let c = build_plain(&valid("  tier: production\n  image: x:1\n  autoscaling:\n    maxReplicas: 6\n"));
    assert_eq!(c.deployment.spec.replicas, None);
    let hpa = c.autoscaler.unwrap().spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 6));
    let metrics = hpa.metrics.unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].resource.as_ref().unwrap().target.average_utilization, Some(70));
}

#[test]
fn tls_yields_certificate_for_every_host() {
    let c = build_plain(&valid(
        "  tier: staging\n  image: x:1\n  ingress:\n    hosts: [a.example.com, b.example.com]\n    tls:\n      issuerRef:\n        name: le\n        kind: Issuer\n",
    ));
    let cert = c.certificate.unwrap();
    assert_eq!(cert.spec.dns_names, ["a.example.com", "b.example.com"]);
    assert_eq!(cert.spec.issuer_ref.kind, "Issuer");
    assert_eq!(cert.spec.secret_name, "web-tls");
    let tls = c.ingress.unwrap().spec.unwrap().tls.unwrap();
    assert_eq!(tls[0].secret_name.as_deref(), Some("web-tls"));
}

#[test]
fn children_carry_owner_reference_and_labels() {
    let c = build_plain(&valid("  tier: staging\n  image: x:1\n"));
    let meta = &c.service.metadata;
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("AppEnvironment", "u-1", Some(true)));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "berth");
    assert_eq!(labels["berth.dev/appenvironment"], "web");
}

#[test]
fn restricted_security_context_by_default() {
    let c = build_plain(&valid("  tier: staging\n  image: x:1\n"));
    let pod = c.deployment.spec.template.spec.unwrap();
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    assert_eq!(pod.automount_service_account_token, Some(false));
}

fn deployment(
    generation: i64,
    observed: i64,
    replicas: i32,
    updated: i32,
    available: i32,
    stalled: bool,
) -> Deployment {
    let mut d = Deployment::default();
    d.metadata.generation = Some(generation);
    d.spec.replicas = Some(replicas);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(observed),
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        available_replicas: Some(available),
        ready_replicas: Some(available),
        conditions: stalled.then(|| {
            vec![DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some("False".into()),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..DeploymentCondition::default()
            }]
        }),
        ..DeploymentStatus::default()
    });
    d
}

fn condition(h: &super::status::AppHealth, type_: &str) -> (bool, String) {
    let c = h.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status, c.reason.clone())
}

#[test]
fn status_follows_the_rollout() {
    let v = valid("  tier: staging\n  image: x:1\n");
    let obs = |d: &Deployment, changed| {
        health(
            &v,
            &Observed {
                deployment: Some(d),
                certificate: None,
                deployment_just_changed: changed,
                databases: &NO_DATABASES,
            },
        )
    };
    let done = obs(&deployment(2, 2, 2, 2, 2, false), false);
    assert_eq!(condition(&done, "Ready"), (true, "Available".into()));
    assert!(!condition(&done, "Progressing").0);
    assert_eq!(done.ready_replicas, Some(2));
    assert_eq!(condition(&obs(&deployment(3, 2, 2, 2, 2, false), false), "Ready"), (false, "RollingOut".into()));
    assert!(condition(&obs(&deployment(2, 2, 2, 1, 2, false), false), "Progressing").0);
    assert!(
        !condition(&obs(&deployment(2, 2, 2, 2, 2, false), true), "Ready").0,
        "a just-written Deployment proves nothing"
    );
    let stalled = obs(&deployment(2, 2, 2, 1, 1, true), false);
    assert_eq!(condition(&stalled, "Degraded"), (true, "RolloutFailed".into()));
    let missing = health(
        &v,
        &Observed { deployment: None, certificate: None, deployment_just_changed: false, databases: &NO_DATABASES },
    );
    assert!(!condition(&missing, "Ready").0);
}

#[test]
fn status_waits_for_the_certificate() {
    let v = valid(
        "  tier: staging\n  image: x:1\n  ingress:\n    hosts: [a.example.com]\n    tls:\n      issuerRef:\n        name: le\n",
    );
    let d = deployment(1, 1, 2, 2, 2, false);
    let cert = |status: &str, reason: &str| Certificate {
        metadata: Default::default(),
        spec: Default::default(),
        status: Some(CertificateStatus {
            conditions: vec![CertificateCondition {
                type_: "Ready".into(),
                status: status.into(),
                reason: Some(reason.into()),
                ..Default::default()
            }],
        }),
    };
    let pending = cert("False", "Issuing");
    let h = health(
        &v,
        &Observed {
            deployment: Some(&d),
            certificate: Some(&pending),
            deployment_just_changed: false,
            databases: &NO_DATABASES,
        },
    );
    assert_eq!(condition(&h, "Ready"), (false, "CertificatePending".into()));
    let failed = cert("False", "Failed");
    let h = health(
        &v,
        &Observed {
            deployment: Some(&d),
            certificate: Some(&failed),
            deployment_just_changed: false,
            databases: &NO_DATABASES,
        },
    );
    assert_eq!(condition(&h, "Degraded"), (true, "CertificateFailed".into()));
    let ready = cert("True", "Ready");
    let h = health(
        &v,
        &Observed {
            deployment: Some(&d),
            certificate: Some(&ready),
            deployment_just_changed: false,
            databases: &NO_DATABASES,
        },
    );
    assert!(condition(&h, "Ready").0);
}

#[test]
fn url_prefers_a_concrete_host_and_https_with_tls() {
    let v = valid(
        "  tier: staging\n  image: x:1\n  ingress:\n    hosts: ['*.example.com', shop.example.com]\n    paths: [{path: /api}]\n    tls:\n      issuerRef:\n        name: le\n",
    );
    assert_eq!(url(&v).as_deref(), Some("https://shop.example.com/api"));
}

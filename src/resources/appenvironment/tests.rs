//! Builder and status tests, starting from small YAML fixtures run through `validate`.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::status::{Observed, health};
use super::workloads::MigrationState;
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
    let spec = c.deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert!(c.disruption_budget.is_none());
    assert!(c.ingress.is_none() && c.certificate.is_none() && c.autoscaler.is_none());
    assert!(c.network_policy.is_some(), "default-deny ingress applies to every tier");
    let pod = spec.template.spec.unwrap();
    assert!(pod.topology_spread_constraints.is_none());
    assert_eq!(spec.strategy.unwrap().rolling_update, None, "development keeps Kubernetes' rollout defaults");
}

#[test]
fn production_defaults_and_explicit_fields_win() {
    let c = build_plain(&valid("  tier: production\n  image: x:1\n"));
    let spec = c.deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let ru = spec.strategy.clone().unwrap().rolling_update.unwrap();
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert!(c.disruption_budget.is_some());
    assert_eq!(spec.template.spec.as_ref().unwrap().topology_spread_constraints.as_ref().unwrap().len(), 2);

    let c = build_plain(&valid(
        "  tier: production\n  image: x:1\n  replicas: 5\n  topologySpread: false\n  disruptionBudget:\n    enabled: false\n  rollout:\n    maxUnavailable: 1\n",
    ));
    let spec = c.deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(5));
    assert!(c.disruption_budget.is_none());
    assert!(spec.template.spec.as_ref().unwrap().topology_spread_constraints.is_none());
    assert_eq!(spec.strategy.unwrap().rolling_update.unwrap().max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn autoscaling_leaves_replicas_to_the_autoscaler() {
    let c = build_plain(&valid("  tier: production\n  image: x:1\n  autoscaling:\n    maxReplicas: 6\n"));
    assert_eq!(c.deployment.spec.as_ref().unwrap().replicas, None);
    let hpa = c.autoscaler.unwrap().spec.unwrap();
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
    let pod = c.deployment.spec.unwrap().template.spec.unwrap();
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn a_user_security_context_is_merged_over_the_restricted_defaults() {
    // Only a UID: everything else must stay restricted (a namespace enforcing Pod Security
    // `restricted` rejected the pods when this replaced the defaults wholesale).
    let c = build_plain(&valid("  tier: staging\n  image: x:1\n  securityContext:\n    runAsUser: 10001\n"));
    let sc = c.deployment.spec.unwrap().template.spec.unwrap().containers[0].security_context.clone().unwrap();
    assert_eq!(sc.run_as_user, Some(10001));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
}

#[test]
fn a_security_context_that_weakens_restricted_is_an_invalid_spec() {
    let errors: Vec<String> =
        validate(&app("  tier: staging\n  image: x:1\n  securityContext:\n    privileged: true\n    runAsUser: 0\n"))
            .expect_err("privileged and root are refused")
            .iter()
            .map(ToString::to_string)
            .collect();
    assert_eq!(
        errors,
        [
            "spec.securityContext.privileged: true is not allowed under Pod Security 'restricted'; remove it",
            "spec.securityContext.runAsUser: 0 (root) is not allowed under Pod Security 'restricted'; use a non-root UID such as 1000, or remove it",
        ]
    );
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
    d.spec.get_or_insert_default().replicas = Some(replicas);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(observed),
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        available_replicas: Some(available),
        ready_replicas: Some(available),
        conditions: stalled.then(|| {
            vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
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
                pods: &[],
                workers: Vec::new(),
                migration: MigrationState::None,
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
        &Observed {
            deployment: None,
            certificate: None,
            deployment_just_changed: false,
            databases: &NO_DATABASES,
            pods: &[],
            workers: Vec::new(),
            migration: MigrationState::None,
        },
    );
    assert!(!condition(&missing, "Ready").0);
}

/// A pod of the app named `name` whose container `app` waits with `reason`/`message`.
fn waiting_pod(name: &str, reason: &str, message: &str) -> std::sync::Arc<k8s_openapi::api::core::v1::Pod> {
    std::sync::Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "team", "labels": {"berth.dev/appenvironment": "web", "pod-template-hash": "abc"}},
            "spec": {"containers": [{"name": "app", "image": "x:1"}]},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "app", "image": "x:1", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "password=hunter2"}},
            }]},
        }))
        .unwrap(),
    )
}

const NON_NUMERIC_USER: &str =
    "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root";

#[test]
fn pods_that_cannot_start_show_in_the_conditions_with_the_fix() {
    let v = valid(
        "  tier: staging
  image: x:1
",
    );
    let rolling = deployment(2, 2, 2, 2, 0, false);
    let pods = [
        waiting_pod("web-abc-2", "CreateContainerConfigError", NON_NUMERIC_USER),
        waiting_pod("web-abc-1", "CreateContainerConfigError", NON_NUMERIC_USER),
    ];
    let observed = |pods, changed| Observed {
        deployment: Some(&rolling),
        certificate: None,
        deployment_just_changed: changed,
        databases: &NO_DATABASES,
        pods,
        workers: Vec::new(),
        migration: MigrationState::None,
    };
    let h = health(&v, &observed(&pods, false));
    let expected = "pod web-abc-1: container \"app\" is waiting with CreateContainerConfigError: container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root (last exit code 1, Error); set spec.securityContext.runAsUser to a numeric non-root UID, or build the image with a numeric USER (1 more pods are waiting too)";
    for type_ in ["Ready", "Progressing", "Degraded"] {
        let c = h.conditions.iter().find(|c| c.type_ == type_).unwrap();
        assert_eq!(c.reason, "CreateContainerConfigError", "{type_}");
        assert_eq!(c.message, expected, "{type_}");
        assert_eq!(c.status, type_ == "Degraded", "{type_}");
    }
    // The termination message (the container's own output) never makes it into the status.
    assert!(!h.conditions.iter().any(|c| c.message.contains("hunter2")));

    // Right after the Deployment changed its pods may be the old ones: the change may be the fix.
    assert_eq!(condition(&health(&v, &observed(&pods, true)), "Degraded"), (false, "Healthy".into()));
    // A done rollout ignores a leftover pod.
    let done = deployment(2, 2, 2, 2, 2, false);
    let h = health(
        &v,
        &Observed {
            deployment: Some(&done),
            certificate: None,
            deployment_just_changed: false,
            databases: &NO_DATABASES,
            pods: &pods,
            workers: Vec::new(),
            migration: MigrationState::None,
        },
    );
    assert_eq!(condition(&h, "Ready"), (true, "Available".into()));
    // Ordinary waiting (the image is being pulled) is just a rollout.
    let creating = [waiting_pod("web-abc-1", "ContainerCreating", "")];
    assert_eq!(condition(&health(&v, &observed(&creating, false)), "Ready"), (false, "RollingOut".into()));
}

#[test]
fn each_blocking_reason_names_its_fix() {
    use super::status::pod_problems;
    let cases = [
        ("ImagePullBackOff", "Back-off pulling image \"x:1\"", "spec.imagePullSecrets"),
        ("ErrImagePull", "not found", "spec.image names an image that exists"),
        ("InvalidImageName", "couldn't parse image name", "fix spec.image"),
        ("ErrImageNeverPull", "", "spec.imagePullPolicy"),
        ("CreateContainerConfigError", "secret \"db\" not found", "create the Secret or ConfigMap"),
        (
            "CreateContainerConfigError",
            "container has runAsNonRoot and image will run as root (pod: \"web\")",
            "spec.securityContext.runAsUser",
        ),
        (
            "CrashLoopBackOff",
            "back-off 5m0s restarting failed container=app",
            "kubectl logs -n team web-abc-1 -c app --previous",
        ),
    ];
    for (reason, message, fix) in cases {
        let pod = waiting_pod("web-abc-1", reason, message);
        let problems = pod_problems([pod.as_ref()]);
        assert_eq!(problems.len(), 1, "{reason}");
        let described = problems[0].describe("team");
        assert!(described.contains(fix), "{reason}: {described}");
    }
    // The back-off countdown is left out so that the status does not change on every restart.
    let crash = pod_problems([waiting_pod("web-abc-1", "CrashLoopBackOff", "back-off 5m0s").as_ref()]);
    assert!(!crash[0].describe("team").contains("5m0s"));
}

#[test]
fn slim_pods_keep_what_the_status_reads() {
    use super::status::{blocking_hash, is_blocked, pod_problems, slim_pod};
    let full = waiting_pod("web-abc-1", "CreateContainerConfigError", NON_NUMERIC_USER);
    let mut slim = (*full).clone();
    slim_pod(&mut slim, "berth.dev/appenvironment");
    assert_eq!(pod_problems([&slim]), pod_problems([full.as_ref()]));
    assert!(slim.spec.is_none());
    assert_eq!(slim.metadata.labels.as_ref().unwrap().keys().collect::<Vec<_>>(), ["berth.dev/appenvironment"]);
    assert!(serde_json::to_string(&slim).unwrap().len() < serde_json::to_string(full.as_ref()).unwrap().len());
    assert!(is_blocked(&slim));
    // The back-off message changes on every restart; the hash that wakes the app does not.
    let later = waiting_pod("web-abc-1", "CreateContainerConfigError", "another message");
    assert_eq!(blocking_hash(&slim), blocking_hash(&later));
    assert_ne!(blocking_hash(&slim), blocking_hash(&waiting_pod("web-abc-1", "ImagePullBackOff", "")));
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
            pods: &[],
            workers: Vec::new(),
            migration: MigrationState::None,
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
            pods: &[],
            workers: Vec::new(),
            migration: MigrationState::None,
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
            pods: &[],
            workers: Vec::new(),
            migration: MigrationState::None,
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

// spec.databases: linking, injection, status and validation.

mod databases {
    use k8s_openapi::api::core::v1::EnvVar;

    use super::super::databases::{credentials_annotation, egress_rules, env_vars, link, pod_annotations, pod_labels};
    use super::super::status::WAITING_FOR_DATABASE;
    use super::*;
    use crate::api::DatabaseInstance;
    use crate::api::databaseinstance::Engine;

    /// A DatabaseInstance at generation 2; `ready` is the observedGeneration of a Ready=True
    /// condition (`None`: no condition).
    fn instance(
        name: &str,
        namespace: &str,
        engine: &str,
        ready: Option<i64>,
        revision: Option<&str>,
    ) -> DatabaseInstance {
        let version = if engine == "postgres" { "16" } else { "3.13" };
        let mut yaml = format!(
            "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  generation: 2\nspec:\n  engine: {engine}\n  version: \"{version}\"\n  storage:\n    size: 1Gi\nstatus:\n"
        );
        if let Some(g) = ready {
            yaml.push_str(&format!(
                "  conditions:\n  - type: Ready\n    status: \"True\"\n    observedGeneration: {g}\n    reason: Available\n    message: up\n    lastTransitionTime: \"2025-01-01T00:00:00Z\"\n"
            ));
        }
        if let Some(r) = revision {
            yaml.push_str(&format!("  credentialsRevision: {r}\n"));
        }
        serde_saphyr::from_str(&yaml).expect("instance fixture parses")
    }

    fn pg(name: &str) -> DatabaseInstance {
        instance(name, "team", "postgres", Some(2), None)
    }

    fn mq(name: &str) -> DatabaseInstance {
        instance(name, "team", "rabbitmq", Some(2), None)
    }

    fn errors(spec: &str) -> Vec<String> {
        validate(&app(spec)).expect_err("fixture is invalid").iter().map(ToString::to_string).collect()
    }

    fn prefixes(links: &DatabaseLinks) -> Vec<(&str, &str)> {
        links.linked.iter().map(|l| (l.name.as_str(), l.env_prefix.as_str())).collect()
    }

    const BASE: &str = "  tier: staging\n  image: x:1\n";

    #[test]
    fn one_of_each_engine_gets_database_and_amqp() {
        let a = app(&format!("{BASE}  databases:\n  - name: orders-db\n  - name: events-mq\n"));
        let links = link(&a, &[mq("events-mq"), pg("orders-db"), pg("unrelated")]);
        assert_eq!(prefixes(&links), [("orders-db", "DATABASE"), ("events-mq", "AMQP")]);
        let pg_link = &links.linked[0];
        assert_eq!(
            (pg_link.engine, pg_link.secret_name.as_str(), pg_link.port, pg_link.ready),
            (Engine::Postgres, "orders-db-credentials", 5432, true)
        );
        let mq_link = &links.linked[1];
        assert_eq!(
            (mq_link.engine, mq_link.secret_name.as_str(), mq_link.port),
            (Engine::Rabbitmq, "events-mq-credentials", 5672)
        );
        assert!(links.missing.is_empty() && links.not_ready.is_empty());
    }

    #[test]
    fn two_of_an_engine_use_their_names_and_explicit_prefixes_win() {
        let a = app(&format!(
            "{BASE}  databases:\n  - name: orders-db\n  - name: billing-db\n  - name: events-mq\n    envPrefix: BUS\n"
        ));
        let links = link(&a, &[pg("orders-db"), pg("billing-db"), mq("events-mq")]);
        assert_eq!(prefixes(&links), [("orders-db", "ORDERS_DB"), ("billing-db", "BILLING_DB"), ("events-mq", "BUS")]);
    }

    #[test]
    fn a_default_claimed_by_another_reference_falls_back_to_the_name() {
        // The RabbitMQ reference claims DATABASE explicitly: the only PostgreSQL instance
        // must not get it as well.
        let a =
            app(&format!("{BASE}  databases:\n  - name: orders-db\n  - name: events-mq\n    envPrefix: DATABASE\n"));
        let links = link(&a, &[pg("orders-db"), mq("events-mq")]);
        assert_eq!(prefixes(&links), [("orders-db", "ORDERS_DB"), ("events-mq", "DATABASE")]);
    }

    #[test]
    fn missing_foreign_invalid_and_stale_instances_are_waited_for() {
        let a = app(&format!(
            "{BASE}  databases:\n  - name: gone\n  - name: elsewhere\n  - name: broken\n  - name: stale\n  - name: starting\n  - name: up\n"
        ));
        let mut broken = pg("broken");
        broken.spec.version = "9".into();
        let instances = [
            instance("elsewhere", "other-team", "postgres", Some(2), None),
            broken,
            instance("stale", "team", "postgres", Some(1), None),
            instance("starting", "team", "rabbitmq", None, None),
            pg("up"),
        ];
        let links = link(&a, &instances);
        assert_eq!(links.missing, ["gone", "elsewhere"]);
        assert_eq!(links.not_ready, ["broken", "stale", "starting"]);
        // Not-ready instances are still linked (their variables are injected), invalid ones not.
        let linked: Vec<(&str, bool)> = links.linked.iter().map(|l| (l.name.as_str(), l.ready)).collect();
        assert_eq!(linked, [("stale", false), ("starting", false), ("up", true)]);
        assert!(links.waiting());
        let message = links.waiting_message("team").unwrap();
        assert!(message.contains("DatabaseInstance \"gone\" does not exist in namespace \"team\""), "{message}");
        assert!(message.contains("DatabaseInstance \"stale\" is not ready"), "{message}");
    }

    fn secret_ref(env: &[EnvVar], name: &str) -> Option<(String, String)> {
        let var = env.iter().find(|e| e.name == name)?;
        let r = var.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some((r.name.clone(), r.key.clone()))
    }

    #[test]
    fn connection_secret_becomes_environment_variables() {
        let a = app(&format!(
            "{BASE}  env:\n  - name: AMQP_PASSWORD\n    value: from-spec\n  - name: LOG\n    value: info\n  databases:\n  - name: orders-db\n  - name: events-mq\n"
        ));
        let links = link(&a, &[pg("orders-db"), mq("events-mq")]);
        let c = build(&validate(&a).unwrap(), &links);
        let env = c.deployment.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
        let s = |secret: &str, key: &str| Some((secret.to_string(), key.to_string()));
        assert_eq!(secret_ref(&env, "DATABASE_URL"), s("orders-db-credentials", "uri"));
        assert_eq!(secret_ref(&env, "DATABASE_HOST"), s("orders-db-credentials", "host"));
        assert_eq!(secret_ref(&env, "DATABASE_PORT"), s("orders-db-credentials", "port"));
        assert_eq!(secret_ref(&env, "DATABASE_USERNAME"), s("orders-db-credentials", "username"));
        assert_eq!(secret_ref(&env, "DATABASE_PASSWORD"), s("orders-db-credentials", "password"));
        assert_eq!(secret_ref(&env, "DATABASE_NAME"), s("orders-db-credentials", "dbname"));
        assert_eq!(secret_ref(&env, "AMQP_URL"), s("events-mq-credentials", "uri"));
        assert_eq!(secret_ref(&env, "AMQP_USERNAME"), s("events-mq-credentials", "username"));
        assert!(env.iter().all(|e| e.name != "AMQP_NAME"), "RabbitMQ has no database name");
        // The user's AMQP_PASSWORD wins and appears once; spec.env follows the injected ones.
        let amqp_password: Vec<&EnvVar> = env.iter().filter(|e| e.name == "AMQP_PASSWORD").collect();
        assert_eq!(amqp_password.len(), 1);
        assert_eq!(amqp_password[0].value.as_deref(), Some("from-spec"));
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), 6 + 4 + 2);
        assert_eq!(&names[names.len() - 2..], ["AMQP_PASSWORD", "LOG"]);
    }

    #[test]
    fn no_databases_leaves_the_environment_alone() {
        let user = vec![EnvVar { name: "A".into(), value: Some("1".into()), ..EnvVar::default() }];
        assert_eq!(env_vars(&DatabaseLinks::default(), &user), user);
        let c = build_plain(&valid(BASE));
        assert!(c.deployment.spec.unwrap().template.spec.unwrap().containers[0].env.is_none());
    }

    #[test]
    fn pods_carry_the_uses_label_and_the_credentials_revision() {
        let a = app(&format!(
            "{BASE}  podLabels:\n    team: shop\n  databases:\n  - name: orders-db\n  - name: events-mq\n"
        ));
        let links = link(&a, &[instance("orders-db", "team", "postgres", Some(2), Some("r7")), mq("events-mq")]);
        let c = build(&validate(&a).unwrap(), &links);
        let spec = c.deployment.spec.unwrap();
        let meta = spec.template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["berth.dev/uses-orders-db"], "true");
        assert_eq!(labels["berth.dev/uses-events-mq"], "true");
        assert_eq!(labels["team"], "shop");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["berth.dev/credentials-orders-db"], "r7");
        assert!(!annotations.keys().any(|k| k.contains("events-mq")), "no revision reported, no annotation");
        // The selector of the Deployment is immutable and must not change.
        assert!(!spec.selector.match_labels.unwrap().keys().any(|k| k.starts_with("berth.dev/uses-")));
        assert_eq!(pod_labels(&links).len(), 2);
        assert_eq!(pod_annotations(&links).len(), 1);
    }

    #[test]
    fn credentials_annotation_stays_a_qualified_name() {
        let long = "a".repeat(52);
        let key = credentials_annotation(&long);
        let name_part = key.strip_prefix("berth.dev/").unwrap();
        assert!(name_part.len() <= 63, "{key}");
        assert_ne!(credentials_annotation(&long), credentials_annotation(&"a".repeat(51)));
        assert_eq!(credentials_annotation("orders-db"), "berth.dev/credentials-orders-db");
    }

    #[test]
    fn network_access_to_the_instances() {
        let a = app(&format!("{BASE}  databases:\n  - name: orders-db\n  - name: events-mq\n"));
        let links = link(&a, &[pg("orders-db"), mq("events-mq")]);
        let rules = egress_rules(&links);
        assert_eq!(rules.len(), 2);
        let to = &rules[0].to.as_ref().unwrap()[0];
        let selector = to.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(selector["app.kubernetes.io/instance"], "orders-db");
        assert_eq!(selector["app.kubernetes.io/component"], "database");
        let port = &rules[1].ports.as_ref().unwrap()[0];
        assert_eq!(port.port, Some(IntOrString::Int(5672)));
        // The app's own policy restricts ingress only, so egress to the instances is open;
        // adding the Egress type without these rules would cut the app off its databases.
        let np = build(&validate(&a).unwrap(), &links).network_policy.unwrap().spec.unwrap();
        assert_eq!(np.policy_types.unwrap(), ["Ingress"]);
        assert!(np.egress.is_none());
    }

    #[test]
    fn status_waits_for_the_databases() {
        let v = valid(&format!("{BASE}  databases:\n  - name: orders-db\n  - name: events-mq\n"));
        let d = deployment(1, 1, 2, 2, 2, false);
        let links = link(&v.app, &[instance("events-mq", "team", "rabbitmq", None, None)]);
        let h = health(
            &v,
            &Observed {
                deployment: Some(&d),
                certificate: None,
                deployment_just_changed: false,
                databases: &links,
                pods: &[],
                workers: Vec::new(),
                migration: MigrationState::None,
            },
        );
        assert_eq!(condition(&h, "Ready"), (false, WAITING_FOR_DATABASE.into()));
        assert_eq!(condition(&h, "Progressing"), (true, WAITING_FOR_DATABASE.into()));
        assert!(!condition(&h, "Degraded").0);
        let ready = h.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            ready.message,
            "DatabaseInstance \"orders-db\" does not exist in namespace \"team\"; DatabaseInstance \"events-mq\" is not ready"
        );

        // A failed rollout is still reported as such under Degraded.
        let stalled = deployment(1, 1, 2, 1, 1, true);
        let h = health(
            &v,
            &Observed {
                deployment: Some(&stalled),
                certificate: None,
                deployment_just_changed: false,
                databases: &links,
                pods: &[],
                workers: Vec::new(),
                migration: MigrationState::None,
            },
        );
        assert_eq!(condition(&h, "Degraded"), (true, "RolloutFailed".into()));

        // Once both are there and ready, the rollout decides again.
        let links = link(&v.app, &[pg("orders-db"), mq("events-mq")]);
        let h = health(
            &v,
            &Observed {
                deployment: Some(&d),
                certificate: None,
                deployment_just_changed: false,
                databases: &links,
                pods: &[],
                workers: Vec::new(),
                migration: MigrationState::None,
            },
        );
        assert_eq!(condition(&h, "Ready"), (true, "Available".into()));
        assert!(!condition(&h, "Progressing").0);
    }

    #[test]
    fn invalid_references_are_rejected_with_the_fix() {
        let e = errors(&format!("{BASE}  databases:\n  - name: orders-db\n  - name: orders-db\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("spec.databases[1].name: \"orders-db\" is already referenced by spec.databases[0]"),
            "{e:?}"
        );

        let e = errors(&format!("{BASE}  databases:\n  - name: orders-db\n    envPrefix: orders\n"));
        assert!(e[0].starts_with("spec.databases[0].envPrefix: \"orders\" must consist of uppercase letters"), "{e:?}");
        let e = errors(&format!("{BASE}  databases:\n  - name: orders-db\n    envPrefix: 1DB\n"));
        assert!(e[0].starts_with("spec.databases[0].envPrefix"), "{e:?}");

        let e = errors(&format!(
            "{BASE}  databases:\n  - name: orders-db\n    envPrefix: DB\n  - name: billing-db\n    envPrefix: DB\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("spec.databases[1].envPrefix: \"DB\" is also the envPrefix of spec.databases[0]"),
            "{e:?}"
        );

        let e = errors(&format!(
            "{BASE}  databases:\n  - name: orders-db\n  - name: billing-db\n    envPrefix: ORDERS_DB\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("spec.databases[1].envPrefix: \"ORDERS_DB\" is the default prefix of spec.databases[0] (\"orders-db\"); choose another envPrefix or set spec.databases[0].envPrefix"),
            "{e:?}"
        );

        // Distinct explicit prefixes, and the DATABASE/AMQP defaults, are fine.
        validate(&app(&format!(
            "{BASE}  databases:\n  - name: orders-db\n    envPrefix: DATABASE\n  - name: events-mq\n  - name: billing-db\n    envPrefix: BILLING\n"
        )))
        .expect("valid");
    }
}

//! The shapes migrated apps need: volumes, workers, cron jobs and the migration.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, PersistentVolumeClaim, Pod};

use super::status::{MIGRATION_FAILED, Observed, health};
use super::volumes::{SizeChange, claims_to_delete, size_change};
use super::workloads::{MigrationState, migration_name, migration_state};
use super::*;
use crate::api::{AppEnvironment, DatabaseInstance};

fn app(spec: &str) -> AppEnvironment {
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: web\n  namespace: team\n  uid: u-1\n  generation: 1\nspec:\n{spec}"
    );
    serde_saphyr::from_str(&yaml).expect("fixture parses")
}

fn valid(spec: &str) -> ValidApp {
    validate(&app(spec)).unwrap_or_else(|e| panic!("fixture is valid: {e:?}"))
}

fn errors(spec: &str) -> Vec<String> {
    validate(&app(spec)).expect_err("fixture is invalid").iter().map(ToString::to_string).collect()
}

fn orders_db() -> DatabaseInstance {
    serde_saphyr::from_str(
        "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata:\n  name: orders-db\n  namespace: team\n  generation: 1\nspec:\n  engine: postgres\n  version: \"16\"\n  storage:\n    size: 1Gi\n",
    )
    .unwrap()
}

fn built(spec: &str) -> AppChildren {
    let a = app(spec);
    let links = link(&a, &[orders_db()]);
    build(&validate(&a).unwrap_or_else(|e| panic!("fixture is valid: {e:?}")), &links)
}

fn env_names(env: &Option<Vec<EnvVar>>) -> Vec<String> {
    env.iter().flatten().map(|e| e.name.clone()).collect()
}

const VOLUMES: &str = "  tier: production
  image: shop:2.0
  replicas: 1
  rollout:
    strategy: Recreate
  volumes:
  - name: uploads
    mountPath: /app/public/uploads
    claim:
      size: 10Gi
      storageClassName: fast
      deletionPolicy: Delete
  - name: config
    mountPath: /etc/shop
    configMap:
      name: shop-config
      items:
      - key: shop.ini
        path: shop.ini
        mode: 288
  - name: keys
    mountPath: /run/secrets/shop
    secret:
      name: shop-keys
      defaultMode: 256
  - name: cache
    mountPath: /var/cache/shop
    emptyDir:
      medium: Memory
      sizeLimit: 256Mi
";

#[test]
fn volumes_become_claims_mounts_and_a_recreate_rollout() {
    let c = built(VOLUMES);
    let [pvc] = c.volume_claims.as_slice() else { panic!("one claim: {:?}", c.volume_claims) };
    assert_eq!(pvc.metadata.name.as_deref(), Some("web-uploads"));
    assert_eq!(pvc.labels().get("berth.dev/appenvironment").map(String::as_str), Some("web"), "BackupPolicies find it");
    assert!(pvc.metadata.owner_references.is_none(), "a claim outlives its app");
    assert_eq!(pvc.annotations().get("berth.dev/deletion-policy").map(String::as_str), Some("Delete"));
    let spec = pvc.spec.as_ref().unwrap();
    assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "10Gi");

    let d = c.deployment.spec.unwrap();
    assert_eq!(d.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
    assert!(d.strategy.unwrap().rolling_update.is_none());
    let pod = d.template.spec.unwrap();
    let volumes = pod.volumes.unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["tmp", "uploads", "config", "keys", "cache"]);
    assert_eq!(volumes[1].persistent_volume_claim.as_ref().unwrap().claim_name, "web-uploads");
    let cm = volumes[2].config_map.as_ref().unwrap();
    assert_eq!((cm.name.as_str(), cm.items.as_ref().unwrap()[0].mode), ("shop-config", Some(0o440)));
    assert_eq!(volumes[3].secret.as_ref().unwrap().default_mode, Some(0o400));
    assert_eq!(volumes[4].empty_dir.as_ref().unwrap().medium.as_deref(), Some("Memory"));
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    let mount = |n: &str| mounts.iter().find(|m| m.name == n).unwrap().clone();
    assert_eq!(mount("uploads").mount_path, "/app/public/uploads");
    assert_eq!(mount("uploads").read_only, None);
    assert_eq!(mount("config").read_only, Some(true), "files are read-only");
    // A fresh volume is root's: the fsGroup lets the non-root app write to it.
    assert_eq!(pod.security_context.unwrap().fs_group, Some(65532));
    assert_eq!(claims_to_delete(&app(VOLUMES)), ["web-uploads"]);
}

#[test]
fn a_single_node_claim_refuses_several_pods_and_overlapping_rollouts() {
    let claim = "  volumes:\n  - name: data\n    mountPath: /data\n    claim:\n      size: 1Gi\n";
    let fix = "set replicas: 1 with rollout.strategy: Recreate, or use a ReadWriteMany storage class";
    // The production tier's defaults: 2 replicas, maxUnavailable 0.
    let e = errors(&format!("  tier: production\n  image: x:1\n{claim}"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("spec.volumes[0].claim.accessMode: claim \"data\" is ReadWriteOnce"), "{e:?}");
    assert!(e[0].contains("2 replicas") && e[0].contains(fix), "{e:?}");
    // One replica, but a rolling update that starts the new pod first.
    let e = errors(&format!("  tier: production\n  image: x:1\n  replicas: 1\n{claim}"));
    assert!(e[0].contains("maxUnavailable 0") && e[0].contains(fix), "{e:?}");
    let e = errors(&format!("  tier: development\n  image: x:1\n{claim}"));
    assert!(e[0].contains("maxUnavailable 0"), "development's 25% of one pod is 0: {e:?}");
    let e = errors(&format!("  tier: staging\n  image: x:1\n  autoscaling:\n    maxReplicas: 4\n{claim}"));
    assert!(e[0].contains("autoscaling"), "{e:?}");
    // What the message proposes is accepted, and so is a rollout that stops the pod first.
    valid(&format!("  tier: production\n  image: x:1\n  replicas: 1\n  rollout:\n    strategy: Recreate\n{claim}"));
    valid(&format!("  tier: production\n  image: x:1\n  replicas: 1\n  rollout:\n    maxUnavailable: 1\n{claim}"));
    valid(&format!("  tier: production\n  image: x:1\n{claim}      accessMode: ReadWriteMany\n"));
}

#[test]
fn bad_volumes_name_the_field() {
    let e = errors(
        "  tier: development\n  image: x:1\n  replicas: 1\n  rollout:\n    strategy: Recreate\n    maxSurge: 1\n  volumes:\n  - name: a\n    mountPath: /tmp\n    emptyDir: {}\n  - name: b\n    mountPath: /b\n    emptyDir: {}\n    configMap:\n      name: c\n  - name: c\n    mountPath: /c\n    claim:\n      size: lots\n  - name: d\n    mountPath: /d\n    secret:\n      name: s\n      items:\n      - key: k\n        path: ../escape\n  workers:\n  - name: mailer\n    volumes: [nope, c]\n",
    );
    let has = |prefix: &str| e.iter().any(|m| m.starts_with(prefix));
    assert!(has("spec.rollout: maxSurge and maxUnavailable apply to RollingUpdate only"), "{e:?}");
    assert!(has("spec.volumes[0].mountPath: /tmp is Berth's writable scratch directory"), "{e:?}");
    assert!(has("spec.volumes[1]: set exactly one of claim, configMap, secret and emptyDir"), "{e:?}");
    assert!(has("spec.volumes[2].claim.size: \"lots\" is not a size"), "{e:?}");
    assert!(has("spec.volumes[3].secret.items[0].path: \"../escape\""), "{e:?}");
    assert!(has("spec.workers[0].volumes[0]: \"nope\" is not the name of one of spec.volumes"), "{e:?}");
    assert!(has("spec.workers[0].volumes[1]: claim \"c\" is ReadWriteOnce: only the app's own pod"), "{e:?}");
    assert_eq!(e.len(), 7, "{e:?}");
}

const WORKLOADS: &str = "  tier: staging
  image: shop:2.0
  command: [bundle, exec]
  args: [puma]
  env:
  - name: RAILS_ENV
    value: production
  databases:
  - name: orders-db
  volumes:
  - name: shared
    mountPath: /shared
    claim:
      size: 5Gi
      accessMode: ReadWriteMany
  workers:
  - name: sidekiq
    args: [sidekiq, -q, default]
    replicas: 3
    volumes: [shared]
  - name: scheduler
    command: [clockwork]
  cronJobs:
  - name: nightly-report
    schedule: \"30 2 * * *\"
    timeZone: Europe/Berlin
    args: [rake, reports:nightly]
  migration:
    args: [rake, db:migrate]
";

#[test]
fn workers_are_deployments_of_the_same_image_without_service() {
    let c = built(WORKLOADS);
    let names: Vec<String> = c.workers.iter().map(|w| w.name_any()).collect();
    assert_eq!(names, ["web-sidekiq", "web-scheduler"]);
    let main_env = env_names(&c.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].env);
    assert!(main_env.contains(&"DATABASE_URL".to_string()) && main_env.contains(&"RAILS_ENV".to_string()));
    let sidekiq = c.workers[0].spec.clone().unwrap();
    assert_eq!(sidekiq.replicas, Some(3));
    let selector = sidekiq.selector.match_labels.unwrap();
    assert_eq!(selector.get("app.kubernetes.io/component").map(String::as_str), Some("worker"));
    assert_eq!(selector.get("berth.dev/worker").map(String::as_str), Some("sidekiq"));
    let pod = sidekiq.template.spec.unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("shop:2.0"));
    // Only args set: the app's command with the worker's args.
    assert_eq!(container.command.as_deref(), Some(&["bundle".to_string(), "exec".into()][..]));
    assert_eq!(container.args.as_deref(), Some(&["sidekiq".to_string(), "-q".into(), "default".into()][..]));
    assert!(container.ports.is_none() && container.readiness_probe.is_none());
    assert_eq!(env_names(&container.env), main_env, "the app's env and database variables");
    let labels = sidekiq.template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels.get("berth.dev/uses-orders-db").map(String::as_str), Some("true"), "the database admits it");
    let volumes: Vec<String> = pod.volumes.unwrap().iter().map(|v| v.name.clone()).collect();
    assert_eq!(volumes, ["tmp", "shared"]);
    // A command of its own drops the app's args.
    let scheduler = c.workers[1].spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(scheduler.containers[0].command.as_deref(), Some(&["clockwork".to_string()][..]));
    assert_eq!(scheduler.containers[0].args, None);
    // The Service and the PodDisruptionBudget select the app's own pods only.
    let service_selector = c.service.spec.unwrap().selector.unwrap();
    assert_eq!(service_selector.get("app.kubernetes.io/component").map(String::as_str), Some("app"));
}

#[test]
fn cron_jobs_run_the_app_with_its_env_and_databases() {
    let c = built(WORKLOADS);
    let [cron] = c.cron_jobs.as_slice() else { panic!("one CronJob") };
    assert_eq!(cron.name_any(), "web-nightly-report");
    let spec = cron.spec.clone().unwrap();
    assert_eq!(spec.schedule, "30 2 * * *");
    assert_eq!(spec.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!((spec.successful_jobs_history_limit, spec.failed_jobs_history_limit), (Some(3), Some(1)));
    let job = spec.job_template.spec.unwrap();
    assert_eq!((job.backoff_limit, job.active_deadline_seconds), (Some(0), Some(3600)));
    let pod = job.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let env = env_names(&pod.containers[0].env);
    assert!(env.contains(&"DATABASE_URL".to_string()) && env.contains(&"RAILS_ENV".to_string()), "{env:?}");
    assert_eq!(pod.containers[0].args.as_deref(), Some(&["rake".to_string(), "reports:nightly".into()][..]));
}

#[test]
fn bad_workers_and_cron_jobs_name_the_field() {
    let e = errors(
        "  tier: development\n  image: x:1\n  workers:\n  - name: a\n  - name: a\n  cronJobs:\n  - name: r\n    schedule: \"* * *\"\n    timeZone: Mars/Olympus\n  migration: {}\n",
    );
    let has = |prefix: &str| e.iter().any(|m| m.starts_with(prefix));
    assert!(has("spec.workers[1].name: \"a\" is used by another worker"), "{e:?}");
    assert!(has("spec.cronJobs[0].schedule: \"* * *\" has 3 fields"), "{e:?}");
    assert!(has("spec.cronJobs[0].timeZone: \"Mars/Olympus\" is not an IANA time zone"), "{e:?}");
    assert!(has("spec.migration: needs command or args"), "{e:?}");
}

#[test]
fn the_migration_is_one_job_per_image() {
    let c = built(WORKLOADS);
    let job = c.migration.clone().unwrap();
    let spec = job.spec.clone().unwrap();
    assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(0), Some(600)));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.containers[0].image.as_deref(), Some("shop:2.0"));
    assert!(env_names(&pod.containers[0].env).contains(&"DATABASE_URL".to_string()));
    assert_eq!(job.annotations().get("berth.dev/image").map(String::as_str), Some("shop:2.0"));

    let same = valid(WORKLOADS);
    let newer = valid(&WORKLOADS.replace("shop:2.0", "shop:2.1"));
    let m = same.app.spec.migration.clone().unwrap();
    assert_eq!(job.name_any(), migration_name(&same, &m));
    assert_ne!(migration_name(&same, &m), migration_name(&newer, &m), "a new image migrates again");
    assert!(job.name_any().starts_with("web-migrate-") && job.name_any().len() == "web-migrate-".len() + 8);
    let long = AppEnvironment {
        metadata: ObjectMeta { name: Some("a".repeat(63)), ..same.app.metadata.clone() },
        ..same.app.clone()
    };
    let long = ValidApp { app: long, ..same.clone() };
    assert!(migration_name(&long, &m).len() <= 63, "the Job name is a label value");
}

fn job_with(condition: Option<(&str, &str)>) -> Job {
    Job {
        status: Some(JobStatus {
            conditions: condition.map(|(t, reason)| {
                vec![JobCondition {
                    type_: t.into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..JobCondition::default()
                }]
            }),
            ..JobStatus::default()
        }),
        ..Job::default()
    }
}

#[test]
fn migration_state_follows_the_job() {
    assert_eq!(migration_state(None), MigrationState::Running);
    assert_eq!(migration_state(Some(&job_with(None))), MigrationState::Running);
    assert_eq!(migration_state(Some(&job_with(Some(("Complete", "Completed"))))), MigrationState::Succeeded);
    assert_eq!(
        migration_state(Some(&job_with(Some(("Failed", "BackoffLimitExceeded"))))),
        MigrationState::Failed("BackoffLimitExceeded: Job has reached the specified backoff limit".into())
    );
}

fn available() -> Deployment {
    Deployment {
        metadata: ObjectMeta { generation: Some(1), ..ObjectMeta::default() },
        spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec { replicas: Some(1), ..Default::default() }),
        status: Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            ready_replicas: Some(1),
            ..DeploymentStatus::default()
        }),
    }
}

#[test]
fn status_waits_for_the_migration_and_workers_and_stops_on_a_failed_migration() {
    let v = valid("  tier: development\n  image: x:2\n  migration:\n    args: [migrate]\n");
    let links = link(&v.app, &[]);
    let d = available();
    let pods: Vec<Arc<Pod>> = Vec::new();
    let observed = |migration, workers| Observed {
        deployment: Some(&d),
        certificate: None,
        deployment_just_changed: false,
        databases: &links,
        pods: &pods,
        workers,
        migration,
    };
    let cond = |h: &status::AppHealth, t: &str| {
        let c = h.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status, c.reason.clone(), c.message.clone())
    };
    let h = health(&v, &observed(MigrationState::Succeeded, vec![]));
    assert!(cond(&h, "Ready").0);
    let h = health(&v, &observed(MigrationState::Running, vec![]));
    assert_eq!(cond(&h, "Ready").1, "RollingOut");
    assert!(cond(&h, "Progressing").0);
    let h = health(&v, &observed(MigrationState::Failed("BackoffLimitExceeded".into()), vec![]));
    for t in ["Ready", "Progressing"] {
        assert_eq!((cond(&h, t).0, cond(&h, t).1.as_str()), (false, MIGRATION_FAILED));
    }
    let (degraded, reason, message) = cond(&h, "Degraded");
    assert!(degraded && reason == MIGRATION_FAILED);
    assert!(
        message.contains("image x:2 failed (BackoffLimitExceeded)") && message.contains("keep their current image")
    );
    // A worker that is not available yet holds Ready back.
    let h = health(&v, &observed(MigrationState::Succeeded, vec![("mailer", None)]));
    assert_eq!(cond(&h, "Ready").1, "RollingOut");
    assert!(cond(&h, "Ready").2.starts_with("worker mailer: "));
    let h = health(&v, &observed(MigrationState::Succeeded, vec![("mailer", Some(&d))]));
    assert!(cond(&h, "Ready").0);
}

#[test]
fn claims_grow_but_never_shrink() {
    let c = built(VOLUMES);
    let desired = &c.volume_claims[0];
    let with_size = |size: &str| {
        let mut pvc: PersistentVolumeClaim = desired.clone();
        pvc.spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert("storage".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()));
        pvc
    };
    assert_eq!(size_change(desired, &with_size("10Gi")), SizeChange::Same);
    assert_eq!(size_change(desired, &with_size("5Gi")), SizeChange::Grow { from: "5Gi".into() });
    assert_eq!(size_change(desired, &with_size("20Gi")), SizeChange::Shrink { from: "20Gi".into() });
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

#[test]
fn apps_named_in_allow_from_apps_may_reach_the_app() {
    let c = built("  tier: development\n  image: x:1\n  networkPolicy:\n    allowFromApps: [proxy, cron]\n");
    let rules = c.network_policy.unwrap().spec.unwrap().ingress.unwrap();
    let last = rules.last().unwrap();
    let apps: Vec<String> = last
        .from
        .iter()
        .flatten()
        .map(|p| p.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["berth.dev/appenvironment"].clone())
        .collect();
    assert_eq!(apps, ["proxy", "cron"]);
    assert_eq!(
        last.ports.as_ref().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
    let plain = built("  tier: development\n  image: x:1\n");
    assert_eq!(plain.network_policy.unwrap().spec.unwrap().ingress.unwrap().len(), rules.len() - 1);
}

#[test]
fn the_network_policy_covers_workers_cron_jobs_and_the_migration() {
    let c = built(WORKLOADS);
    let selector = c.network_policy.unwrap().spec.unwrap().pod_selector.unwrap().match_labels.unwrap();
    let covered =
        |labels: &std::collections::BTreeMap<String, String>| selector.iter().all(|(k, v)| labels.get(k) == Some(v));
    let pod_labels = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| t.metadata.clone().unwrap().labels.unwrap();
    assert!(covered(&pod_labels(&c.deployment.spec.unwrap().template)));
    assert!(covered(&pod_labels(&c.workers[0].spec.clone().unwrap().template)));
    assert!(covered(&pod_labels(&c.cron_jobs[0].spec.clone().unwrap().job_template.spec.unwrap().template)));
    assert!(covered(&pod_labels(&c.migration.unwrap().spec.unwrap().template)));
    let db_pod = std::collections::BTreeMap::from([("app.kubernetes.io/name".to_string(), "web".to_string())]);
    assert!(!covered(&db_pod), "a DatabaseInstance named like the app is not covered");
}

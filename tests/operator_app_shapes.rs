//! The shapes migrated apps need, end to end: the real `berth operator` (as the chart's
//! ServiceAccount with the chart's RBAC) on the real control plane (tests/support/cluster)
//! with the kubelet stand-in, which provisions and grows claims, makes workload pods ready and
//! runs Job pods' `sh` commands as local processes; CronJobs' Jobs come from the real CronJob
//! controller. Claims are the app's without owner and go only with `deletionPolicy: Delete`;
//! workers are Deployments without Service; a migration Job runs before the Deployment moves
//! to a new image, and a failed one stops the rollout.

use crate::support;

use std::time::{Duration, Instant};

use berth::api::AppEnvironment;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::{Cluster, OPERATOR_USER};
use support::objects::repo;
use support::operator::Operator;

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The app once its status for the current generation has `type_` with `status` and `reason`.
async fn wait_condition(
    api: &Api<AppEnvironment>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> AppEnvironment {
    eventually(&format!("{name} {type_}={status} {reason}"), Duration::from_secs(90), || async {
        let app = api.get(name).await.ok()?;
        let s = app.status.as_ref()?;
        let c = s.conditions.iter().find(|c| c.type_ == type_)?;
        (s.observed_generation == app.metadata.generation && c.status == status && c.reason == reason).then_some(app)
    })
    .await
}

fn image_of(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap()
}

fn requested(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0.clone()
}

const APP: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: AppEnvironment
metadata:
  name: shop
  namespace: shop
spec:
  tier: development
  image: example.com/shop:1
  replicas: 1
  rollout:
    strategy: Recreate
  env:
  - name: APP_VERSION
    value: "1"
  volumes:
  - name: uploads
    mountPath: /app/uploads
    claim:
      size: 1Gi
      deletionPolicy: Delete
  - name: reports
    mountPath: /app/reports
    claim:
      size: 1Gi
  - name: config
    mountPath: /etc/shop
    configMap:
      name: shop-config
      items:
      - key: shop.ini
        path: shop.ini
  workers:
  - name: mailer
    args: [mailer]
  cronJobs:
  - name: tick
    schedule: "* * * * *"
    command: [sh, -c, 'echo "tick of version $APP_VERSION"']
  migration:
    command: [sh, -c, 'echo "migrating to version $APP_VERSION"']
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_workers_cron_jobs_and_migrations_on_the_real_control_plane() {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    cluster.namespace("shop").await;
    let client = cluster.client();
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--resync-seconds", "1"]);
    operator.wait_ready(Duration::from_secs(60));
    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "shop");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");

    // The production tier's defaults (2 replicas, maxUnavailable 0) with a ReadWriteOnce claim:
    // refused, naming the fix, and nothing is created.
    let mut rwo: AppEnvironment = serde_saphyr::from_str(APP).unwrap();
    rwo.metadata.name = Some("rwo".into());
    rwo.spec.tier = berth::api::appenvironment::Tier::Production;
    rwo.spec.replicas = None;
    rwo.spec.rollout = None;
    apps.create(&PostParams::default(), &rwo).await.unwrap();
    let refused = wait_condition(&apps, "rwo", "Ready", "False", "InvalidSpec").await;
    let message = &refused.status.unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(
        message.contains("spec.volumes[0].claim.accessMode: claim \"uploads\" is ReadWriteOnce")
            && message
                .contains("set replicas: 1 with rollout.strategy: Recreate, or use a ReadWriteMany storage class"),
        "{message}"
    );
    assert!(
        deployments.get_opt("rwo").await.unwrap().is_none() && claims.get_opt("rwo-uploads").await.unwrap().is_none()
    );

    // The app converges: its migration ran first, with the app's environment.
    let config: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "shop-config"}, "data": {"shop.ini": "[shop]\n"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "shop").create(&PostParams::default(), &config).await.unwrap();
    apps.create(&PostParams::default(), &serde_saphyr::from_str(APP).unwrap()).await.unwrap();
    let ready = wait_condition(&apps, "shop", "Ready", "True", "Available").await;
    let migration = ready.status.unwrap().migration.expect("status reports the migration");
    assert_eq!((migration.image.as_str(), migration.phase.as_str()), ("example.com/shop:1", "Succeeded"));
    let runs = cluster.kubelet().runs_of(&migration.job);
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].stdout.trim(), "migrating to version 1");
    let job = jobs.get(&migration.job).await.unwrap();
    let finished = job.status.unwrap().completion_time.expect("the migration completed").0;
    let deployment = deployments.get("shop").await.unwrap();
    assert!(
        // Both in whole seconds: created after the completion, so not in an earlier second.
        deployment.metadata.creation_timestamp.clone().unwrap().0 >= finished,
        "the Deployment was created after the migration finished"
    );

    // Claims: the app's by label, no owner reference, bound by the PV controller.
    for name in ["shop-uploads", "shop-reports"] {
        let pvc = eventually(&format!("{name} bound"), Duration::from_secs(30), || async {
            let pvc = claims.get(name).await.ok()?;
            (pvc.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pvc)
        })
        .await;
        assert_eq!(pvc.labels().get("berth.dev/appenvironment").map(String::as_str), Some("shop"));
        assert!(pvc.owner_references().is_empty(), "{name} outlives the app");
    }
    let pod = deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let volumes: Vec<&str> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, ["tmp", "uploads", "reports", "config"]);
    // The worker: a Deployment of the same image and env, ready, without a Service.
    let worker = deployments.get("shop-mailer").await.unwrap();
    assert_eq!(image_of(&worker), "example.com/shop:1");
    assert_eq!(worker.status.as_ref().and_then(|s| s.available_replicas), Some(1));
    assert!(Api::<Service>::namespaced(client.clone(), "shop").get_opt("shop-mailer").await.unwrap().is_none());

    // Steady state: resyncs (every second) write nothing, claims, CronJob and Job included.
    let mark = cluster.audit.mark();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes: Vec<String> = cluster.audit.writes_since(mark, OPERATOR_USER).iter().map(|e| e.describe()).collect();
    assert!(writes.is_empty(), "writes on a steady-state resync: {writes:#?}");

    // Growing a claim expands the PVC (the class allows expansion).
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/volumes/0/claim/size", "value": "2Gi"}
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    eventually("shop-uploads grown to 2Gi", Duration::from_secs(30), || async {
        let pvc = claims.get("shop-uploads").await.ok()?;
        let capacity = pvc.status.as_ref()?.capacity.as_ref()?.get("storage")?.0.clone();
        (requested(&pvc) == "2Gi" && capacity == "2Gi").then_some(())
    })
    .await;

    // A new image whose migration fails: the rollout stops, everything keeps the old image.
    let failing = json!({"spec": {
        "image": "example.com/shop:2",
        "migration": {"command": ["sh", "-c", "echo 'relation \"orders\" already exists' >&2; exit 3"]}
    }});
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&failing)).await.unwrap();
    let failed = wait_condition(&apps, "shop", "Ready", "False", "MigrationFailed").await;
    let status = failed.status.unwrap();
    let failed_migration = status.migration.clone().unwrap();
    assert_eq!((failed_migration.image.as_str(), failed_migration.phase.as_str()), ("example.com/shop:2", "Failed"));
    assert!(
        failed_migration.message.as_deref().unwrap_or_default().contains("BackoffLimitExceeded"),
        "{failed_migration:?}"
    );
    assert_eq!(status.image.as_deref(), Some("example.com/shop:1"), "status.image is the image that runs");
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "MigrationFailed"));
    assert!(degraded.message.contains("keep their current image"), "{}", degraded.message);
    assert_eq!(cluster.kubelet().runs_of(&failed_migration.job)[0].exit_code, Some(3));
    // Several resyncs later, still the old image everywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(image_of(&deployments.get("shop").await.unwrap()), "example.com/shop:1");
    assert_eq!(image_of(&deployments.get("shop-mailer").await.unwrap()), "example.com/shop:1");
    let cron: CronJob = Api::namespaced(client.clone(), "shop").get("shop-tick").await.unwrap();
    let cron_image = cron.spec.unwrap().job_template.spec.unwrap().template.spec.unwrap().containers[0].image.clone();
    assert_eq!(cron_image.as_deref(), Some("example.com/shop:1"));

    // A fixed migration lets the rollout through; the older migration Jobs go.
    let fixed = json!({"spec": {
        "env": [{"name": "APP_VERSION", "value": "2"}],
        "migration": {"command": ["sh", "-c", "echo \"migrating to version $APP_VERSION\""]}
    }});
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&fixed)).await.unwrap();
    let ready = wait_condition(&apps, "shop", "Ready", "True", "Available").await;
    let ready_status = ready.status.unwrap();
    assert_eq!(ready_status.image.as_deref(), Some("example.com/shop:2"));
    let migration2 = ready_status.migration.unwrap();
    assert_eq!((migration2.image.as_str(), migration2.phase.as_str()), ("example.com/shop:2", "Succeeded"));
    assert_eq!(cluster.kubelet().runs_of(&migration2.job)[0].stdout.trim(), "migrating to version 2");
    assert_eq!(image_of(&deployments.get("shop").await.unwrap()), "example.com/shop:2");
    assert_eq!(image_of(&deployments.get("shop-mailer").await.unwrap()), "example.com/shop:2");
    eventually("only the current migration Job is left", Duration::from_secs(30), || async {
        let left = jobs.list(&ListParams::default().labels("app.kubernetes.io/component=migration")).await.ok()?;
        let names: Vec<String> =
            left.items.iter().filter(|j| j.metadata.deletion_timestamp.is_none()).map(|j| j.name_any()).collect();
        (names == [migration2.job.clone()]).then_some(())
    })
    .await;

    // The CronJob controller runs the task with the app's image and env.
    let tick = eventually("a run of the CronJob", Duration::from_secs(90), || async {
        cluster.kubelet().runs().into_iter().find(|r| r.job.starts_with("shop-tick-") && r.exit_code == Some(0))
    })
    .await;
    assert!(tick.stdout.starts_with("tick of version"), "{tick:#?}");

    // A worker removed from the spec goes.
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"workers": null}}))).await.unwrap();
    eventually("shop-mailer deleted", Duration::from_secs(30), || async {
        deployments.get_opt("shop-mailer").await.ok()?.is_none().then_some(())
    })
    .await;

    // Deleting the app deletes the claim with deletionPolicy Delete and keeps the other.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    eventually("the app gone", Duration::from_secs(60), || async {
        apps.get_opt("shop").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually("shop-uploads deleted", Duration::from_secs(60), || async {
        claims.get_opt("shop-uploads").await.ok()?.is_none().then_some(())
    })
    .await;
    let kept = claims.get("shop-reports").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none(), "a Retain claim stays");
    // No 403 for the chart's RBAC (cronjobs, claims, finalizers), no pod refused by Pod Security.
    cluster.assert_clean().await;
    drop(operator);
}

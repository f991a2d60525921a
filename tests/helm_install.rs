//! The chart on a real control plane (tests/support/cluster), the operator it installs run by
//! the kubelet stand-in as local `berth` processes with their own service-account tokens
//! (tests/support/kubelet/serve.rs; checks in tests/support/install.rs):
//!
//! - `helm install` with default values: the pods pass Pod Security `restricted`, one holds the
//!   Lease, `/readyz` answers, the example AppEnvironment becomes Ready — reconciled by the
//!   Lease holder; `helm uninstall` then removes the operator and keeps the CRDs (their
//!   `helm.sh/resource-policy: keep`), the AppEnvironment, a PVC and a Backup.
//! - `helm upgrade` from the chart of an earlier commit (CRDs in `crds/`, which Helm installs
//!   once and never upgrades) to the working tree's (CRDs as templates, upgraded on every
//!   upgrade): the app stays Ready throughout, one leader, the CRDs' schemas become the working
//!   tree's.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde_json::Value;
use support::cluster::{Cluster, OPERATOR_NAMESPACE, OPERATOR_USER};
use support::install::{
    EXAMPLE_NAME, EXAMPLE_NAMESPACE, OPERATOR_IMAGE, app_ready, example_app_ready, helm, operator_running,
    ready_condition, repo, writers_of_example,
};
use support::wait::eventually;

/// The chart of an earlier commit: CRDs in charts/berth/crds/ (before they became templates),
/// whose AppEnvironment schema still has the Kubernetes 1.34+ fields (fileKeyRef, probe
/// protocol) that the working tree's dropped.
const EARLIER_CHART_COMMIT: &str = "07f1983";
const CRDS: [&str; 5] = ["appenvironments", "databaseinstances", "backuppolicies", "backups", "restores"];

fn chart() -> String {
    repo().join("charts/berth").display().to_string()
}

/// `charts/berth` of `commit`, extracted into `dir` with `git archive`.
fn chart_at(commit: &str, dir: &std::path::Path) -> String {
    let tar = dir.join("earlier-chart.tar");
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["archive", "--output"])
        .arg(&tar)
        .args([commit, "charts/berth"])
        .output()
        .expect("run git (the test needs the repository's history)");
    assert!(out.status.success(), "git archive {commit} charts/berth: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir).output().expect("run tar");
    assert!(out.status.success(), "tar -xf {}: {}", tar.display(), String::from_utf8_lossy(&out.stderr));
    let chart = dir.join("charts/berth");
    assert!(chart.join("Chart.yaml").exists(), "git archive {commit} charts/berth gave no chart (a shallow clone?)");
    chart.display().to_string()
}

/// The working tree's CRD (crds/, what `berth crds` generates) for `plural`.
fn working_tree_crd(plural: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(format!("crds/{plural}.berth.dev.yaml"))).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

async fn served_crd(cluster: &Cluster, plural: &str) -> Value {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let crd = crds.get(&format!("{plural}.berth.dev")).await;
    serde_json::to_value(crd.unwrap_or_else(|e| panic!("CRD {plural}.berth.dev: {e}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_operator_and_uninstall_keeps_crds_resources_and_volumes() {
    let cluster = Cluster::start().await;
    cluster.kubelet().run_image(OPERATOR_IMAGE);
    cluster.namespace(OPERATOR_NAMESPACE).await;

    let started = Instant::now();
    let notes =
        helm(&cluster, &["install", "berth", &chart(), "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "240s"]);
    let installed = started.elapsed();
    assert!(notes.contains("`helm uninstall` removes the operator only and leaves"), "NOTES.txt:\n{notes}");
    let seen = operator_running(&cluster, 2).await;
    let app = example_app_ready(&cluster).await;
    let app_took = started.elapsed();
    let writers = writers_of_example(&cluster);
    assert_eq!(writers, vec![seen.leader.clone()], "the app is reconciled by the Lease holder's process only");
    for plural in CRDS {
        let crd = served_crd(&cluster, plural).await;
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{plural}");
    }
    eprintln!(
        "helm install: {} pods run as processes {:?}, Lease holder {}, /readyz 200 on each; \
         `helm install --wait` {installed:?}, operator checks {:?}, app {} Ready ({:?}) after {app_took:?}",
        seen.pods.len(),
        seen.pods.iter().map(|p| &p.name).collect::<Vec<_>>(),
        seen.leader,
        seen.took,
        EXAMPLE_NAME,
        ready_condition(&app).map(|c| &c["reason"]),
    );

    // A user's volume and a Backup beside the app.
    cluster.kubectl_apply(
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: uploads, namespace: {EXAMPLE_NAMESPACE}}}\n\
             spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n---\n\
             apiVersion: berth.dev/v1alpha1\nkind: Backup\nmetadata: {{name: before-uninstall, namespace: {EXAMPLE_NAMESPACE}}}\n\
             spec: {{policyName: nightly}}\n"
        )
        .as_bytes(),
    );
    eventually("the PVC bound", Duration::from_secs(60), || async {
        let pvc = cluster.object("v1", "PersistentVolumeClaim", EXAMPLE_NAMESPACE, "uploads").await?;
        (pvc["status"]["phase"] == "Bound").then_some(())
    })
    .await;
    cluster.assert_clean().await;

    let uninstalled = cluster.audit.mark();
    let out = helm(&cluster, &["uninstall", "berth", "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "120s"]);
    assert!(out.contains("kept due to the resource policy"), "helm uninstall names what it keeps:\n{out}");
    assert!(cluster.object("apps/v1", "Deployment", OPERATOR_NAMESPACE, "berth").await.is_none());
    eventually("the operator processes stopped", Duration::from_secs(60), || async {
        cluster.kubelet().served_pods().is_empty().then_some(())
    })
    .await;
    for plural in CRDS {
        let crd = served_crd(&cluster, plural).await;
        assert!(crd["metadata"]["deletionTimestamp"].is_null(), "{plural} is being deleted");
    }
    let app = cluster.object("berth.dev/v1alpha1", "AppEnvironment", EXAMPLE_NAMESPACE, EXAMPLE_NAME).await;
    let app = app.expect("the AppEnvironment outlives the operator");
    assert!(app["metadata"]["deletionTimestamp"].is_null());
    assert!(
        cluster.object("apps/v1", "Deployment", EXAMPLE_NAMESPACE, EXAMPLE_NAME).await.is_some(),
        "the app runs on"
    );
    let pvc = cluster.object("v1", "PersistentVolumeClaim", EXAMPLE_NAMESPACE, "uploads").await.expect("the PVC stays");
    assert_eq!(pvc["status"]["phase"], "Bound");
    let backup = cluster.object("berth.dev/v1alpha1", "Backup", EXAMPLE_NAMESPACE, "before-uninstall").await;
    assert!(backup.is_some(), "the Backup stays");
    // Helm deletes the Deployment and the operator's RBAC together; a replica still stopping
    // may be refused its Lease. Nothing else may be refused.
    let refused: Vec<String> = cluster
        .audit
        .since(uninstalled)
        .iter()
        .filter(|e| e.user.username == OPERATOR_USER && e.code() == 403 && e.resource() != "leases")
        .map(|e| e.describe())
        .collect();
    assert!(refused.is_empty(), "refused while the operator stopped: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_an_earlier_chart_keeps_running_and_upgrades_the_crds() {
    let cluster = Cluster::start().await;
    cluster.kubelet().run_image(OPERATOR_IMAGE);
    cluster.namespace(OPERATOR_NAMESPACE).await;
    let earlier = chart_at(EARLIER_CHART_COMMIT, cluster.dir());

    // The pods run the binary under test, which is newer than the earlier chart: it also
    // watches the CronJobs of `spec.cronJobs` and asks whether ExternalSecrets exist
    // (`spec.externalSecrets`), which that chart's RBAC does not grant. (A real upgrade ships
    // the binary with its own chart's RBAC; here the earlier chart's extension point supplies
    // the missing rules.)
    let cronjobs = r#"rbac.extraRules=[{"apiGroups":["batch"],"resources":["cronjobs"],"verbs":["get","list","watch"]},{"apiGroups":["external-secrets.io"],"resources":["externalsecrets"],"verbs":["get","list","watch"]}]"#;
    helm(
        &cluster,
        &[
            "install",
            "berth",
            &earlier,
            "-n",
            OPERATOR_NAMESPACE,
            "--set-json",
            cronjobs,
            "--wait",
            "--timeout",
            "240s",
        ],
    );
    let before = operator_running(&cluster, 2).await;
    let app = example_app_ready(&cluster).await;
    let ready_since = ready_condition(&app).unwrap()["lastTransitionTime"].clone();
    let schema = |crd: &Value| crd["spec"]["versions"][0]["schema"].clone();
    let old = served_crd(&cluster, "appenvironments").await;
    assert_ne!(schema(&old), schema(&working_tree_crd("appenvironments")), "the earlier chart's CRD must differ");

    // Helm adopts the CRDs that the earlier chart's crds/ created outside the release once.
    let started = Instant::now();
    helm(
        &cluster,
        &["upgrade", "berth", &chart(), "-n", OPERATOR_NAMESPACE, "--take-ownership", "--wait", "--timeout", "240s"],
    );
    let after = operator_running(&cluster, 2).await;
    let upgraded = started.elapsed();
    let names = |seen: &support::install::OperatorSeen| seen.pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert!(
        names(&after).iter().all(|n| !names(&before).contains(n)),
        "the upgrade rolled the operator pods: {:?} -> {:?}",
        names(&before),
        names(&after)
    );
    for plural in CRDS {
        let crd = served_crd(&cluster, plural).await;
        assert_eq!(
            schema(&crd),
            schema(&working_tree_crd(plural)),
            "{plural}: the served schema is the working tree's"
        );
        assert_eq!(
            crd["metadata"]["annotations"]["meta.helm.sh/release-name"], "berth",
            "{plural} belongs to the release"
        );
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{plural}");
    }
    // The app stayed Ready throughout: the same transition as before the upgrade.
    let app = app_ready(&cluster).await;
    assert_eq!(
        ready_condition(&app).unwrap()["lastTransitionTime"],
        ready_since,
        "the app left Ready during the upgrade"
    );
    eprintln!(
        "helm upgrade {EARLIER_CHART_COMMIT} -> working tree: {upgraded:?}; Lease {} -> {}; CRDs upgraded; app Ready since {ready_since}",
        before.leader, after.leader
    );
    cluster.assert_clean().await;
}

//! The chart on a real control plane (tests/support/cluster): `helm install` into a namespace
//! that enforces Pod Security `restricted`, the CRDs established, the operator Deployment
//! available (its pods started by the kubelet stand-in, after admission accepted them), then
//! `helm upgrade` and `helm uninstall`, which keeps the CRDs and so every user's resources.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use support::cluster::{Cluster, OPERATOR_NAMESPACE, tool};

fn helm(cluster: &Cluster, args: &[&str]) -> String {
    let home = cluster.dir().join("helm-home");
    let out = Command::new(tool("helm"))
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm (scripts/install-tools.sh installs it into .tools/bin)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm {}:\n{text}", args.join(" "));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_on_a_real_api_server() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/berth");
    let chart = chart.to_str().unwrap();
    let cluster = Cluster::start().await;
    cluster.namespace(OPERATOR_NAMESPACE).await;

    helm(&cluster, &["install", "berth", chart, "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "180s"]);
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    for name in ["appenvironments", "databaseinstances", "backuppolicies", "backups", "restores"] {
        let crd = crds.get(&format!("{name}.berth.dev")).await.unwrap();
        let established = crd.status.unwrap().conditions.unwrap_or_default();
        assert!(established.iter().any(|c| c.type_ == "Established" && c.status == "True"), "{name}");
    }
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), OPERATOR_NAMESPACE);
    let operator = deployments.get("berth").await.unwrap();
    let status = operator.status.unwrap();
    assert_eq!(status.available_replicas, Some(2), "{status:?}");

    // An upgrade that changes the pod template rolls the pods and still passes admission.
    helm(
        &cluster,
        &[
            "upgrade",
            "berth",
            chart,
            "-n",
            OPERATOR_NAMESPACE,
            "--reuse-values",
            "--set",
            "operator.logLevel=debug",
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    let operator = deployments.get("berth").await.unwrap();
    let env = operator.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap_or_default();
    assert!(env.iter().any(|e| e.value.as_deref() == Some("debug")), "{env:?}");
    cluster.assert_clean().await;

    // Uninstalling removes the operator but keeps the CRDs (Helm never deletes crds/), so no
    // user's AppEnvironment or Backup goes with it.
    helm(&cluster, &["uninstall", "berth", "-n", OPERATOR_NAMESPACE, "--wait", "--timeout", "120s"]);
    assert!(deployments.get_opt("berth").await.unwrap().is_none());
    assert!(crds.get_opt("appenvironments.berth.dev").await.unwrap().is_some());
}

//! `kubectl apply -k deploy/base` on a fresh real control plane does what `helm install` does
//! (tests/helm_install.rs, the same checks from tests/support/install.rs): the base's own
//! namespace enforces Pod Security `restricted`, the operator pods pass admission and run as
//! local `berth` processes (the kubelet stand-in) with their service-account tokens, one holds
//! the Lease, `/readyz` answers, and the example AppEnvironment becomes Ready, reconciled by
//! the Lease holder.

use crate::support;

use std::process::Command;
use std::time::Instant;

use support::cluster::{Cluster, tool};
use support::install::{
    OPERATOR_IMAGE, example_app_ready, operator_running, ready_condition, repo, writers_of_example,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_k_deploy_base_runs_the_operator() {
    let cluster = Cluster::start().await;
    cluster.kubelet().run_image(OPERATOR_IMAGE);

    let started = Instant::now();
    // Server-side: the CRDs exceed the last-applied annotation of client-side apply.
    let out = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["apply", "--server-side", "-k"])
        .arg(repo().join("deploy/base"))
        .output()
        .expect("run kubectl (scripts/install-tools.sh installs it into .tools/bin)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl apply -k deploy/base:\n{text}");

    let seen = operator_running(&cluster, 2).await;
    let app = example_app_ready(&cluster).await;
    assert_eq!(writers_of_example(&cluster), vec![seen.leader.clone()], "reconciled by the Lease holder only");
    eprintln!(
        "kubectl apply -k deploy/base: pods {:?} run as processes, Lease holder {}, /readyz 200 on each; \
         app Ready ({:?}) after {:?}",
        seen.pods.iter().map(|p| &p.name).collect::<Vec<_>>(),
        seen.leader,
        ready_condition(&app).map(|c| &c["reason"]),
        started.elapsed(),
    );
    cluster.assert_clean().await;
}

//! The real `kubectl` (1.35) against the test API server: server-side apply of a CRD and a
//! custom resource, `get` by short name and category (server-side Tables with the CRD's
//! printer columns), `wait --for=condition=Ready`, `delete`.
//!
//! kubectl comes from `<repo>/.tools/bin/kubectl` (`BERTH_TOOLS_DIR` overrides `<repo>/.tools`),
//! installed by `scripts/install-tools.sh`. Without it this test fails.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use support::apiserver::{Options, TestApiServer};
use support::kubectl::Kubectl;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apiserver/kubectl")
}

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_wait_delete() {
    let s = TestApiServer::start_with(Options::without_standins()).await;
    let k = Kubectl::new(s.kubeconfig_path());
    let dir: &Path = &fixture_dir();
    let dir_s = dir.to_str().unwrap();

    k.ok(&["version"]);
    // As against a real cluster, one pass over a directory with a CRD and a resource of that
    // CRD registers the CRD but cannot map the resource yet ("ensure CRDs are installed
    // first"); a second pass after the CRD is established applies it.
    let first = k.run(&["apply", "--server-side", "-f", dir_s]);
    let first_out = String::from_utf8_lossy(&first.stdout);
    assert!(first_out.contains("gadgets.example.berth.dev serverside-applied"), "{first_out}");
    k.ok(&["wait", "--for=condition=Established", "crd/gadgets.example.berth.dev", "--timeout=30s"]);
    let out = k.ok(&["apply", "--server-side", "-f", dir_s]);
    assert!(out.contains("gadget.example.berth.dev/g1 serverside-applied"), "{out}");
    // Re-applying is a no-op on the server.
    let rv = s.resource_version();
    k.ok(&["apply", "--server-side", "-f", dir_s]);
    assert_eq!(s.resource_version(), rv, "re-apply changed something");

    // get by short name: printer columns from the server-side Table.
    let out = k.ok(&["get", "gdg"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(columns(lines[0]), ["NAME", "TIER", "READY", "AGE"], "{out}");
    let row = columns(lines[1]);
    assert_eq!(&row[..2], ["g1", "production"], "{out}");
    // by category
    let out = k.ok(&["get", "berthkubectl"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(columns(lines[0]), ["NAME", "TIER", "READY", "AGE"], "{out}");
    assert_eq!(columns(lines[1])[0], "g1", "{out}");
    // JSON output goes through the same API
    let out = k.ok(&["get", "gadget", "g1", "-o", "jsonpath={.spec.size}"]);
    assert_eq!(out, "1", "schema default");

    // wait: set Ready while kubectl waits.
    let wait = k
        .command(&["wait", "--for=condition=Ready", "gadget/g1", "--timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = s.client().await;
    let gvk = GroupVersionKind::gvk("example.berth.dev", "v1alpha1", "Gadget");
    let api: Api<DynamicObject> =
        Api::namespaced_with(c, "default", &ApiResource::from_gvk_with_plural(&gvk, "gadgets"));
    api.patch_status(
        "g1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Done", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
    )
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || wait.wait_with_output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kubectl wait failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("gadget.example.berth.dev/g1 condition met"), "{stdout}");

    let out = k.ok(&["get", "gdg", "g1"]);
    assert_eq!(columns(out.lines().nth(1).unwrap())[2], "True", "{out}");

    let out = k.ok(&["delete", "gadget", "g1", "--timeout=30s"]);
    assert!(out.contains("deleted"), "{out}");
    let out = k.run(&["get", "gadget", "g1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

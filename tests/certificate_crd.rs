//! cert-manager's Certificate CRD fixture (tests/fixtures/cluster/cert-manager-certificate-crd.yaml)
//! carries the real schema: on a real kube-apiserver it refuses what cert-manager's CRD refuses
//! (a Certificate without `spec.secretName`, an unknown key usage) and accepts, unpruned, the
//! Certificate `berth render` makes for the production example.

use crate::support;

use std::process::Command;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::objects::repo;

/// The Certificate in `berth render -f deploy/examples/appenvironment-production.yaml`.
fn rendered_certificate() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("render")
        .arg("-f")
        .arg(repo().join("deploy/examples/appenvironment-production.yaml"))
        .output()
        .expect("berth runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
    docs.into_iter().find(|d| d["kind"] == "Certificate").expect("a Certificate in the output")
}

fn certificate(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

/// The API server's refusal of `obj`: its status code and message.
async fn refusal(api: &Api<DynamicObject>, obj: &DynamicObject) -> (u16, String) {
    match api.create(&PostParams::default(), obj).await {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected the API server to refuse {obj:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_schema_refuses_what_cert_manager_refuses_and_accepts_berths_certificate() {
    let cluster = Cluster::start_control_plane().await;
    cluster.install_crds_from_file(&repo().join("tests/fixtures/cluster/cert-manager-certificate-crd.yaml")).await;
    cluster.namespace("shop").await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    let certs: Api<DynamicObject> = Api::namespaced_with(cluster.client(), "shop", &resource);
    let issuer = json!({"name": "letsencrypt-prod", "kind": "ClusterIssuer", "group": "cert-manager.io"});

    // No spec.secretName.
    let (code, message) =
        refusal(&certs, &certificate("no-secret", json!({"dnsNames": ["a.example.com"], "issuerRef": issuer}))).await;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.secretName: Required value"), "{message}");

    // A key usage cert-manager does not know.
    let bad_usage = json!({"secretName": "a-tls", "dnsNames": ["a.example.com"], "issuerRef": issuer,
                           "usages": ["digital signature", "server-auth"]});
    let (code, message) = refusal(&certs, &certificate("bad-usage", bad_usage)).await;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.usages[1]: Unsupported value: \"server-auth\""), "{message}");

    // Berth's Certificate, applied server-side with strict field validation as a check that
    // every field it sets is in cert-manager's schema (an unknown one would be refused, not
    // silently pruned).
    let rendered = rendered_certificate();
    let name = rendered["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(rendered["metadata"]["namespace"], "shop");
    let applied = certs
        .patch(&name, &PatchParams::apply("berth").force().validation_strict(), &Patch::Apply(&rendered))
        .await
        .unwrap_or_else(|e| panic!("the API server refused Berth's Certificate: {e}\n{rendered:#}"));
    assert_eq!(applied.data["spec"], rendered["spec"], "stored as rendered, nothing pruned");
    assert_eq!(applied.data["spec"]["issuerRef"]["kind"], "ClusterIssuer");

    // cert-manager's status shape goes through the status subresource.
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                        "message": "Certificate is up to date and has not expired",
                        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 1}],
        "notBefore": "2025-01-01T00:00:00Z", "notAfter": "2025-04-01T00:00:00Z",
        "renewalTime": "2025-03-02T00:00:00Z", "revision": 1,
    }});
    let patched = certs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert_eq!(patched.data["status"]["conditions"][0]["status"], "True");
    assert_eq!(patched.data["status"]["revision"], 1);
}

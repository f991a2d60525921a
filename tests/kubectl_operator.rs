//! What a user does on day one, with the real kubectl 1.35 against the test API server while
//! `berth operator` runs: server-side apply of the CRDs and of `deploy/examples/`, `kubectl get
//! appenv` with the printer columns, `kubectl get berth`, and `kubectl wait` for Ready.

mod support;

use std::path::Path;
use std::time::Duration;

use support::apiserver::TestApiServer;
use support::kubectl::Kubectl;
use support::operator::Operator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_and_wait_for_the_examples() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = TestApiServer::start().await;
    server.install_crds_from_file(&repo.join("tests/fixtures/apiserver/cert-manager-certificate-crd.yaml")).await;
    let k = Kubectl::new(server.kubeconfig_path());
    // The example instances' Service names lead to a closed loopback port: the operator never
    // looks them up in DNS or leaves 127.0.0.0/8. (The backup examples fail on their missing
    // Secrets before any network access.)
    let closed = support::operator::free_port();
    let overrides = format!("orders-db.shop.svc:5432=127.0.0.1:{closed},events-mq.shop.svc:15672=127.0.0.1:{closed}");
    let mut operator =
        Operator::start(server.kubeconfig_path(), &["--leader-election=false", "--endpoint-overrides", &overrides]);

    // The operator starts before its CRDs exist (as when a chart upgrade races); it must
    // recover once they are installed.
    let crds = repo.join("crds");
    let out = k.ok(&["apply", "--server-side", "-k", crds.to_str().unwrap()]);
    assert!(out.contains("appenvironments.berth.dev serverside-applied"), "{out}");
    k.ok(&["wait", "--for=condition=Established", "crd/appenvironments.berth.dev", "--timeout=30s"]);
    operator.wait_ready(Duration::from_secs(60));
    let examples = repo.join("deploy/examples");
    let out = k.ok(&["apply", "--server-side", "-f", examples.to_str().unwrap()]);
    assert!(out.contains("appenvironment.berth.dev/shop serverside-applied"), "{out}");

    let out = k.ok(&["wait", "--for=condition=Ready", "appenvironment/shop", "-n", "shop", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    k.ok(&["wait", "--for=condition=Ready", "appenv/shop-dev", "-n", "shop-dev", "--timeout=60s"]);
    k.ok(&["wait", "--for=condition=Ready", "appenv/shop-staging", "-n", "shop-staging", "--timeout=60s"]);

    let out = k.ok(&["get", "appenv", "-n", "shop"]);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "TIER", "IMAGE", "READY", "URL", "AGE"], "{out}");
    assert_eq!(
        &lines[1][..5],
        ["shop", "production", "ghcr.io/example/shop:1.4.2", "True", "https://shop.example.com/"],
        "{out}"
    );

    let out = k.ok(&["get", "berth", "-A"]);
    for name in ["shop", "shop-dev", "shop-staging"] {
        assert!(
            out.lines().any(|l| l.split_whitespace().nth(1) == Some(&format!("appenvironment.berth.dev/{name}"))),
            "{name} in `kubectl get berth -A`:\n{out}"
        );
    }
    // Re-applying the same files changes nothing on the server.
    let rv = server.resource_version();
    k.ok(&["apply", "--server-side", "-f", examples.to_str().unwrap()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.resource_version(), rv, "a second apply of unchanged examples wrote something");
}

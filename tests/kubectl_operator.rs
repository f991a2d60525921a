//! What a user does on day one, with the real kubectl 1.35 against a real control plane
//! (tests/support/cluster) while `berth operator` runs as the chart's ServiceAccount:
//! server-side apply of the CRDs and of `deploy/examples/`, `kubectl get appenv` with the
//! printer columns, `kubectl get berth`, `kubectl wait` for Ready, and `kubectl explain` on
//! every field of every kind.

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::cluster::Cluster;
use support::kubectl::Kubectl;
use support::operator::Operator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_and_wait_for_the_examples() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cluster = Cluster::start().await;
    cluster.install_crds_from_file(&repo.join("tests/fixtures/cluster/cert-manager-certificate-crd.yaml")).await;
    // Berth does not create namespaces: the platform team does, enforcing Pod Security.
    for ns in ["shop", "shop-dev", "shop-staging"] {
        cluster.namespace(ns).await;
    }
    let k = Kubectl::new(cluster.kubeconfig_path());
    // The example instances' Service names lead to a closed loopback port: the operator never
    // looks them up in DNS or leaves 127.0.0.0/8. (The backup examples fail on their missing
    // Secrets before any network access.)
    let closed = support::operator::free_port();
    let overrides = format!("orders-db.shop.svc:5432=127.0.0.1:{closed},events-mq.shop.svc:15672=127.0.0.1:{closed}");
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--leader-election=false", "--endpoint-overrides", &overrides]);

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
    // Re-applying the same files changes nothing on the server: every object keeps its
    // generation and kubectl's field set. (Not the resourceVersion: the operator may still be
    // writing statuses, e.g. of an instance whose server is not up. Nor the field set's time:
    // about one run in ten, the API server rewrites kubectl's entry of the first object applied
    // with the same fields and a new time, which 30 re-applies without the operator never did.)
    let field_sets = || {
        let out = k.ok(&["get", "berth", "-A", "-o", "json", "--show-managed-fields"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut sets = std::collections::BTreeMap::new();
        for item in list["items"].as_array().unwrap() {
            let meta = &item["metadata"];
            let name = format!("{}/{}/{}", item["kind"].as_str().unwrap(), meta["namespace"], meta["name"]);
            let mut kubectl =
                meta["managedFields"].as_array().unwrap().iter().find(|m| m["manager"] == "kubectl").cloned();
            if let Some(entry) = kubectl.as_mut().and_then(|e| e.as_object_mut()) {
                assert!(
                    entry.remove("time").is_some_and(|t| t.as_str().is_some_and(|t| t.starts_with("20"))),
                    "{name}: {entry:?}"
                );
            }
            assert!(kubectl.is_some(), "{name} has no field set of kubectl: {}", meta["managedFields"]);
            // Kept whole: if this ever fails, the message shows who owns what.
            sets.insert(name, (meta["generation"].clone(), kubectl, meta["managedFields"].clone()));
        }
        sets
    };
    let before = field_sets();
    k.ok(&["apply", "--server-side", "-f", examples.to_str().unwrap()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = field_sets();
    for (name, (generation, kubectl, all)) in &before {
        let (generation_after, kubectl_after, all_after) = &after[name];
        assert!(
            generation == generation_after && kubectl == kubectl_after,
            "a second apply of unchanged examples wrote {name}:\nbefore: generation {generation}, managedFields {all:#}\nafter: generation {generation_after}, managedFields {all_after:#}"
        );
    }
    assert_eq!(after.len(), before.len(), "objects before: {:?}", before.keys());
    cluster.assert_clean().await;
}

/// `kubectl explain` answers on every field of every Berth kind, from the OpenAPI the real
/// API server publishes for the CRDs, with the description written in `src/api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_answers_on_every_field() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cluster = Cluster::start_control_plane().await;
    cluster.install_crds_from_dir(&repo.join("crds")).await;
    let k = Kubectl::new(cluster.kubeconfig_path());
    for crd in berth::api::all_crds() {
        let kind = crd.spec.names.kind.to_lowercase();
        let schema = berth::api::validation::crd_schema(&crd);
        let mut fields = Vec::new();
        field_paths(&schema, &kind, &mut fields);
        // The API server publishes a new CRD's discovery and OpenAPI a moment after it is
        // Established: wait for explain to know the kind before asking field by field.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !k.command(&["explain", &kind]).output().unwrap().status.success() {
            assert!(std::time::Instant::now() < deadline, "kubectl explain {kind}: not published within 60 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(fields.len() > 5, "{kind}: {fields:?}");
        for (path, description) in fields {
            let out = k.ok(&["explain", &path]);
            let first_line = description.lines().next().unwrap_or_default().trim();
            let words: Vec<&str> = first_line.split_whitespace().take(4).collect();
            let text: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                text.contains(&words.join(" ")),
                "kubectl explain {path} does not show its description {first_line:?}:\n{out}"
            );
        }
    }
}

/// Every field path below `prefix` in a CRD's OpenAPI schema, with its description.
fn field_paths(schema: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    let properties = schema.get("properties").or_else(|| schema.get("items").and_then(|i| i.get("properties")));
    let Some(properties) = properties.and_then(|p| p.as_object()) else { return };
    for (name, field) in properties {
        if prefix.matches('.').count() == 0 && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let path = format!("{prefix}.{name}");
        let description = field.get("description").and_then(|d| d.as_str()).unwrap_or_default().to_string();
        out.push((path.clone(), description));
        field_paths(field, &path, out);
    }
}

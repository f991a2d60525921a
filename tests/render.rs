//! `berth render` as a user runs it: the real binary, real files, exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn render(args: &[&Path]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("render");
    for a in args {
        cmd.arg("-f").arg(a);
    }
    let out = cmd.output().expect("berth runs");
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines().filter_map(|l| l.strip_prefix("kind: ")).map(str::to_string).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn production_example_prints_exactly_the_eight_children_in_apply_order() {
    let (code, out, err) = render(&[&repo().join("deploy/examples/appenvironment-production.yaml")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        kinds(&out),
        [
            "ServiceAccount",
            "Service",
            "Deployment",
            "Ingress",
            "Certificate",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy"
        ]
    );
    // Autoscaling owns the replica count; the tier default gives the autoscaler 3 pods.
    assert!(!out.contains("\n  replicas:"), "Deployment must leave replicas to the autoscaler");
    assert!(out.contains("minReplicas: 3"));
    assert!(out.contains("maxUnavailable: 0"));
    assert!(out.contains("topology.kubernetes.io/zone"));
}

#[test]
fn development_example_has_one_replica_and_no_budget() {
    let (code, out, err) = render(&[&repo().join("deploy/examples/appenvironment-development.yaml")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(kinds(&out), ["ServiceAccount", "Service", "Deployment", "Ingress", "NetworkPolicy"]);
    assert!(out.contains("  replicas: 1\n"));
}

#[test]
fn whole_examples_directory_renders() {
    let (code, out, err) = render(&[&repo().join("deploy/examples")]);
    assert_eq!(code, 0, "{err}");
    assert!(kinds(&out).iter().filter(|k| *k == "Deployment").count() >= 3);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).expect("output is a YAML stream");
    assert!(docs.iter().all(|d| d.get("apiVersion").is_some() && d.pointer("/metadata/name").is_some()));
}

/// Backup Jobs run the agent from the operator's own release (never a moving `latest`), so
/// that its `pg_dump` and data format match the operator that scheduled them.
#[test]
fn backup_jobs_run_the_agent_of_the_operators_own_version() {
    let (code, out, err) = render(&[&repo().join("deploy/examples")]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).expect("output is a YAML stream");
    let images: Vec<&str> = docs
        .iter()
        // Backup Jobs, not the AppEnvironments' migration Jobs (which run the app's image).
        .filter(|d| d["kind"] == "Job" && d["metadata"]["labels"]["app.kubernetes.io/component"] != "migration")
        .flat_map(|j| j["spec"]["template"]["spec"]["containers"].as_array().unwrap())
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert!(!images.is_empty(), "the examples' Backup renders agent Jobs");
    let own = format!("ghcr.io/berth-dev/berth:{}", env!("CARGO_PKG_VERSION"));
    assert!(images.iter().all(|i| *i == own), "{images:?}");
}

const HEAD: &str = "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: web\n";

#[test]
fn malformed_input_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("wrong-type", "spec:\n  tier: staging\n  image: x\n  replicas: three\n", "spec.replicas: must be an integer"),
        ("unknown-tier", "spec:\n  tier: prod\n  image: x\n", "spec.tier: \"prod\" is not allowed"),
        (
            "min-gt-max",
            "spec:\n  tier: staging\n  image: x\n  autoscaling:\n    minReplicas: 5\n    maxReplicas: 2\n",
            "spec.autoscaling.minReplicas",
        ),
        ("missing-image", "spec:\n  tier: staging\n", "spec.image: is required"),
        (
            "tls-without-host",
            "spec:\n  tier: staging\n  image: x\n  ingress:\n    tls:\n      issuerRef:\n        name: le\n",
            "spec.ingress.hosts",
        ),
        (
            "replicas-and-autoscaling",
            "spec:\n  tier: staging\n  image: x\n  replicas: 2\n  autoscaling:\n    maxReplicas: 4\n",
            "spec.replicas",
        ),
        (
            "unknown-field",
            "spec:\n  tier: staging\n  image: x\n  imagePullPolicyy: Always\n",
            "spec.imagePullPolicyy: unknown field",
        ),
        (
            "production-max-below-default-min",
            "spec:\n  tier: production\n  image: x\n  autoscaling:\n    maxReplicas: 2\n",
            "spec.autoscaling.maxReplicas",
        ),
        ("bad-name", "spec:\n  tier: staging\n  image: x\n", "metadata.name"),
    ];
    for (name, spec, expected) in cases {
        let text = if name == "bad-name" {
            format!("{}{spec}", HEAD.replace("name: web", "name: Web_App"))
        } else {
            format!("{HEAD}{spec}")
        };
        let file = write(dir.path(), &format!("{name}.yaml"), &text);
        let (code, out, err) = render(&[&file]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(out.is_empty(), "{name}: nothing on stdout for invalid input, got {out}");
        let expected_line = format!("{}:1: {expected}", file.display());
        assert!(
            err.lines().any(|l| l.starts_with(&expected_line)),
            "{name}: expected a line starting with {expected_line:?}, got:\n{err}"
        );
    }
}

#[test]
fn document_index_points_at_the_broken_document() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{HEAD}spec:\n  tier: development\n  image: x\n");
    let bad = format!("{HEAD}spec:\n  tier: development\n");
    let file = write(dir.path(), "multi.yaml", &format!("# leading comment\n---\n{good}---\n{bad}"));
    let (code, _, err) = render(&[&file]);
    assert_eq!(code, 2);
    assert_eq!(err.trim(), format!("{}:2: spec.image: is required", file.display()));
}

#[test]
fn garbage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: [(&str, &[u8]); 6] = [
        ("binary.yaml", &[0xff, 0xfe, 0x00, 0x01]),
        ("list.yaml", b"- a\n- b\n"),
        ("bad-yaml.yaml", b"spec: [unclosed\n"),
        ("other-kind.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"),
        (
            "no-name.yaml",
            b"apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nspec:\n  tier: development\n  image: x\n",
        ),
        ("null-spec.yaml", b"apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: x\nspec:\n"),
    ];
    for (name, bytes) in inputs {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let (code, out, err) = render(&[&p]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(out.is_empty());
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(err.starts_with(&p.display().to_string()), "{name}: {err}");
    }
    let (code, _, err) = render(&[&dir.path().join("missing.yaml")]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn orders_example_gets_the_connection_secrets_of_both_instances() {
    let examples = repo().join("deploy/examples");
    let (code, out, err) = render(&[
        &examples.join("appenvironment-orders.yaml"),
        &examples.join("databaseinstance-postgres.yaml"),
        &examples.join("databaseinstance-rabbitmq.yaml"),
    ]);
    assert_eq!(code, 0, "{err}");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).expect("output is a YAML stream");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d.pointer("/metadata/name") == Some(&"shop-orders".into()))
        .expect("the shop-orders Deployment");
    let template = &deployment["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["berth.dev/uses-orders-db"], "true");
    assert_eq!(template["metadata"]["labels"]["berth.dev/uses-events-mq"], "true");
    let env = template["spec"]["containers"][0]["env"].as_array().expect("env");
    let secret_of = |name: &str| {
        let var = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} in {env:?}"));
        let r = &var["valueFrom"]["secretKeyRef"];
        (r["name"].as_str().unwrap().to_string(), r["key"].as_str().unwrap().to_string())
    };
    assert_eq!(secret_of("DATABASE_URL"), ("orders-db-credentials".into(), "uri".into()));
    assert_eq!(secret_of("DATABASE_NAME"), ("orders-db-credentials".into(), "dbname".into()));
    assert_eq!(secret_of("AMQP_URL"), ("events-mq-credentials".into(), "uri".into()));
    assert_eq!(secret_of("AMQP_PASSWORD"), ("events-mq-credentials".into(), "password".into()));
}

#[test]
fn a_database_missing_from_the_input_is_an_error_naming_the_reference() {
    let (code, out, err) = render(&[&repo().join("deploy/examples/appenvironment-orders.yaml")]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "nothing on stdout for invalid input, got {out}");
    assert!(
        err.contains("spec.databases[0].name: DatabaseInstance \"orders-db\" is not in the rendered input (namespace \"shop\"); pass its manifest with -f"),
        "{err}"
    );
    assert!(err.contains("spec.databases[1].name: DatabaseInstance \"events-mq\""), "{err}");

    // An instance of the same name in another namespace does not count.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("deploy/examples/databaseinstance-postgres.yaml"))
        .unwrap()
        .replace("namespace: shop", "namespace: elsewhere");
    let other = write(dir.path(), "other.yaml", &text);
    let app = write(
        dir.path(),
        "app.yaml",
        "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  tier: development\n  image: x\n  databases:\n  - name: orders-db\n",
    );
    let (code, _, err) = render(&[&app, &other]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{}:1: spec.databases[0].name", app.display())), "{err}");
}

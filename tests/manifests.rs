//! Validation of every manifest Berth ships or prints: the Helm chart, the CRDs, the kustomize
//! base, the GitOps examples and the output of `berth render`.
//!
//! The tools come from `${BERTH_TOOLS_DIR:-<repo>/.tools}/bin` (installed by
//! `scripts/install-tools.sh`). A missing tool fails the test; it is never skipped.
//!
//! `kubernetes-validate --strict` rejects unknown fields, but it only *warns* (exit status 0)
//! about a kind it has no schema for — which includes a built-in kind at a wrong apiVersion
//! (`apps/v1beta1` Deployment). [`validate`] therefore accepts a warning only for the API
//! groups of custom resources ([`NO_SCHEMA_GROUPS`]) and checks that every document was
//! either validated or warned about; `kubernetes_validate_catches_invalid_manifests` proves
//! that a broken manifest really fails.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Kubernetes versions every manifest must validate against: the oldest the chart supports
/// (`kubeVersion` in Chart.yaml, the k8s-openapi feature in Cargo.toml) through 1.35.
const K8S_VERSIONS: &[&str] = &["1.33.0", "1.34.0", "1.35.0"];

/// The CRD files `berth crds --dir crds` writes, one per kind.
const CRD_FILES: &[&str] = &[
    "appenvironments.berth.dev.yaml",
    "backuppolicies.berth.dev.yaml",
    "backups.berth.dev.yaml",
    "databaseinstances.berth.dev.yaml",
    "restores.berth.dev.yaml",
];

/// API groups of custom resources: kubernetes-validate has no schema for them and warns.
/// A warning for any other group (e.g. a built-in kind at a wrong version) is a failure.
const NO_SCHEMA_GROUPS: &[&str] = &["berth.dev", "cert-manager.io", "monitoring.coreos.com", "external-secrets.io"];

/// Values files in charts/berth/ci/ (each switches on optional features); "" = defaults.
const CHART_SCENARIOS: &[&str] = &["", "ci/all-features-values.yaml", "ci/single-replica-values.yaml"];

const INSTALL_HINT: &str = "run `scripts/install-tools.sh` (or point BERTH_TOOLS_DIR at a directory \
                            whose bin/ holds kubectl, helm, kubernetes-validate and checkov)";

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".tools"));
    let path = dir.join("bin").join(name);
    assert!(path.is_file(), "{name} not found at {}: {INSTALL_HINT}", path.display());
    path
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn output(cmd: &mut Command) -> Output {
    cmd.current_dir(repo());
    cmd.output().unwrap_or_else(|e| panic!("cannot run `{}`: {e}; {INSTALL_HINT}", describe(cmd)))
}

/// Runs the command and returns stdout; panics with stdout and stderr when it fails.
fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Parses a multi-document YAML stream; empty documents (only comments) are dropped.
fn parse_docs(yaml: &str, what: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind_of(doc: &Value) -> String {
    doc["kind"].as_str().unwrap_or_default().to_owned()
}

fn name_of(doc: &Value) -> String {
    doc["metadata"]["name"].as_str().unwrap_or_default().to_owned()
}

fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn helm_template(values: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "berth", "charts/berth", "--namespace", "berth-system"]);
    if !values.is_empty() {
        cmd.arg("--values").arg(repo().join("charts/berth").join(values));
    }
    cmd.args(extra);
    cmd
}

fn scenario_name(values: &str) -> &str {
    if values.is_empty() { "default values" } else { values }
}

/// Writes `yaml` into a temporary file named after `label` (kept alive by the returned guard),
/// so that a validation error names the scenario.
fn temp_yaml_named(label: &str, yaml: &str) -> tempfile::NamedTempFile {
    let prefix: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let mut f =
        tempfile::Builder::new().prefix(&format!("berth-{prefix}-")).suffix(".yaml").tempfile().expect("temp file");
    std::io::Write::write_all(&mut f, yaml.as_bytes()).expect("write temp file");
    f
}

fn temp_yaml(yaml: &str) -> tempfile::NamedTempFile {
    temp_yaml_named("manifest", yaml)
}

/// Validates `files` with `kubernetes-validate --strict` for every version in [`K8S_VERSIONS`]
/// (one process per version, all files at once, versions in parallel).
///
/// Success means: exit status 0, no ERROR line, every WARN line is a missing schema for a
/// custom-resource group, and every document was reported (validated or warned about).
fn validate(files: &[&Path], label: &str) -> Result<(), String> {
    let mut documents = 0usize;
    for f in files {
        let text = fs::read_to_string(f).map_err(|e| format!("{label}: read {}: {e}", f.display()))?;
        documents += parse_docs(&text, &f.display().to_string()).len();
    }
    if documents == 0 {
        return Err(format!("{label}: no Kubernetes objects to validate"));
    }
    let bin = tool("kubernetes-validate");
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = K8S_VERSIONS
            .iter()
            .map(|version| {
                let bin = &bin;
                s.spawn(move || {
                    let mut cmd = Command::new(bin);
                    cmd.args(["--strict", "--kubernetes-version", version]).args(files);
                    let out = output(&mut cmd);
                    let text =
                        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                    check_validate_output(&text, out.status.success(), documents)
                        .map_err(|e| format!("{label}, Kubernetes {version}:\n{e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("validate thread")).collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() { Ok(()) } else { Err(errors.join("\n\n")) }
}

fn check_validate_output(text: &str, success: bool, documents: usize) -> Result<(), String> {
    let mut reported = 0usize;
    let mut problems = Vec::new();
    for line in text.lines() {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            reported += 1;
        } else if line.starts_with("WARN ") && line.contains("Couldn't find schema for kind") {
            reported += 1;
            let group = line
                .split(" with api version ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(api_group)
                .unwrap_or("?");
            if !NO_SCHEMA_GROUPS.contains(&group) {
                problems.push(format!("no schema for a kind of group `{group}` (wrong apiVersion?): {line}"));
            }
        } else if line.starts_with("ERROR ") {
            problems.push(line.to_owned());
        } else if !line.trim().is_empty() {
            problems.push(format!("unexpected output: {line}"));
        }
    }
    if !success {
        problems.push("kubernetes-validate exited with a failure status".into());
    }
    if reported != documents {
        problems.push(format!("{documents} documents, but kubernetes-validate reported on {reported}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// A helm template render of the chart, written to a temp file, with its parsed documents.
struct Render {
    file: tempfile::NamedTempFile,
    docs: Vec<Value>,
}

fn render_chart(values: &str, extra: &[&str]) -> Render {
    let yaml = run_ok(&mut helm_template(values, extra));
    let docs = parse_docs(&yaml, &format!("helm template ({})", scenario_name(values)));
    Render { file: temp_yaml_named(&format!("helm-template-{}", scenario_name(values)), &yaml), docs }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind_of(d) == kind && name_of(d) == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

fn crd_dir_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// the validator itself
// ------------------------------------------------------------------------------------------

/// The validation is only worth something if it fails on broken input.
#[test]
fn kubernetes_validate_catches_invalid_manifests() {
    // (what, manifest, a fragment of the expected complaint)
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown field",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  replicas: 1\n  \
             replicass: 2\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    \
             spec: {containers: [{name: c, image: i}]}\n",
            "'replicass' was unexpected",
        ),
        (
            "wrong type",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: http}]}\n",
            "is not of type 'integer'",
        ),
        // Only a warning from kubernetes-validate itself: `validate` must turn it into a failure.
        (
            "removed apiVersion",
            "apiVersion: apps/v1beta1\nkind: Deployment\nmetadata: {name: a}\n",
            "no schema for a kind of group `apps`",
        ),
        ("missing kind", "apiVersion: v1\nmetadata: {name: a}\n", "could not be validated"),
    ];
    let files: Vec<_> = cases.iter().map(|(_, yaml, _)| temp_yaml(yaml)).collect();
    std::thread::scope(|s| {
        for ((what, _, expected), file) in cases.iter().zip(&files) {
            s.spawn(move || match validate(&[file.path()], what) {
                Ok(()) => panic!("{what}: invalid manifest passed validation"),
                Err(e) => assert!(e.contains(expected), "{what}: failed, but not with `{expected}`:\n{e}"),
            });
        }
        // And a valid one, with a custom resource of an allowed group, passes.
        s.spawn(|| {
            let ok = temp_yaml(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n---\n\
                 apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata: {name: a}\nspec: {}\n",
            );
            validate(&[ok.path()], "valid manifest").unwrap();
        });
    });
}

// ------------------------------------------------------------------------------------------
// Helm chart
// ------------------------------------------------------------------------------------------

#[test]
fn helm_lint_strict() {
    for values in CHART_SCENARIOS {
        let mut cmd = Command::new(tool("helm"));
        cmd.args(["lint", "--strict", "charts/berth"]);
        if !values.is_empty() {
            cmd.arg("--values").arg(repo().join("charts/berth").join(values));
        }
        let out = run_ok(&mut cmd);
        assert!(out.contains("0 chart(s) failed"), "helm lint ({}):\n{out}", scenario_name(values));
    }
}

#[test]
fn helm_template_validates_for_all_kubernetes_versions() {
    let renders: Vec<(&str, Render)> =
        CHART_SCENARIOS.iter().map(|v| (*v, render_chart(v, &["--include-crds"]))).collect();
    for (values, render) in &renders {
        let kinds: BTreeSet<String> = render.docs.iter().map(kind_of).collect();
        for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"] {
            assert!(kinds.contains(kind), "{}: no {kind} rendered", scenario_name(values));
        }
    }
    let files: Vec<&Path> = renders.iter().map(|(_, r)| r.file.path()).collect();
    validate(&files, "helm template charts/berth (default, all-features, single-replica)").unwrap();
}

#[test]
fn helm_values_schema_rejects_invalid_values() {
    let cases: &[(&str, &[&str])] = &[
        ("unknown top-level key", &["--set", "replicas=2"]),
        ("unknown nested key", &["--set", "operator.logformat=json"]),
        ("logFormat outside the enum", &["--set", "operator.logFormat=xml"]),
        ("replicaCount of the wrong type", &["--set-string", "replicaCount=two"]),
        (
            "wildcard verb in rbac.extraRules",
            &[
                "--set",
                "rbac.extraRules[0].apiGroups[0]=",
                "--set",
                "rbac.extraRules[0].resources[0]=pods",
                "--set",
                "rbac.extraRules[0].verbs[0]=*",
            ],
        ),
        ("namespace that is not a DNS label", &["--set", "operator.watchNamespaces[0]=Team_A"]),
        (
            "two replicas without leader election",
            &["--set", "replicaCount=2", "--set", "operator.leaderElection.enabled=false"],
        ),
    ];
    for (what, args) in cases {
        let out = output(&mut helm_template("", args));
        assert!(!out.status.success(), "{what}: helm template accepted it");
    }
}

/// RBAC: explicit verbs, the rules the operator needs, and per-namespace Roles when
/// `operator.watchNamespaces` is set.
#[test]
fn chart_rbac_is_explicit_and_follows_watch_namespaces() {
    fn rules(doc: &Value) -> Vec<(BTreeSet<String>, BTreeSet<String>, BTreeSet<String>)> {
        let set = |v: &Value| -> BTreeSet<String> {
            v.as_array().into_iter().flatten().map(|s| s.as_str().unwrap().to_owned()).collect()
        };
        doc["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (set(&r["apiGroups"]), set(&r["resources"]), set(&r["verbs"])))
            .collect()
    }
    fn allows(
        rules: &[(BTreeSet<String>, BTreeSet<String>, BTreeSet<String>)],
        group: &str,
        resource: &str,
        verbs: &[&str],
    ) -> bool {
        verbs
            .iter()
            .all(|verb| rules.iter().any(|(g, r, v)| g.contains(group) && r.contains(resource) && v.contains(*verb)))
    }
    // Server-side apply is `patch` (plus `create`); nothing the operator does is an `update`.
    const OWNED: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    // What the operator needs for itself (issue 15: backups and restores act as the tenant's
    // ServiceAccount), as (group, resource, verbs).
    let mut needed: Vec<(String, String, &[&str])> = Vec::new();
    for p in ["appenvironments", "databaseinstances", "backuppolicies", "backups", "restores"] {
        needed.push(("berth.dev".into(), p.into(), &["get", "list", "watch"]));
        needed.push(("berth.dev".into(), format!("{p}/status"), &["get", "patch"]));
        needed.push(("berth.dev".into(), format!("{p}/finalizers"), &["update"]));
    }
    needed.push(("berth.dev".into(), "backups".into(), &["create", "patch", "delete"]));
    needed.push(("berth.dev".into(), "appenvironments".into(), &["patch"]));
    for r in ["serviceaccounts", "services", "configmaps", "secrets", "persistentvolumeclaims"] {
        needed.push(("".into(), r.into(), OWNED));
    }
    needed.push(("".into(), "serviceaccounts".into(), &["impersonate"]));
    needed.push(("".into(), "pods".into(), &["get", "list", "watch"]));
    needed.push(("".into(), "events".into(), &["create", "patch"]));
    needed.push(("events.k8s.io".into(), "events".into(), &["create", "patch"]));
    // The AppEnvironments' migration Jobs and CronJobs are the operator's own children; the
    // agent Jobs of backups and restores are created as the tenant (operator_tenancy).
    needed.push(("batch".into(), "jobs".into(), OWNED));
    needed.push(("batch".into(), "cronjobs".into(), OWNED));
    for (g, r) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "networkpolicies"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
        ("cert-manager.io", "certificates"),
    ] {
        needed.push((g.into(), r.into(), OWNED));
    }

    for values in CHART_SCENARIOS {
        let render = render_chart(values, &[]);
        for doc in render.docs.iter().filter(|d| matches!(kind_of(d).as_str(), "ClusterRole" | "Role")) {
            for (g, r, v) in rules(doc) {
                let all: Vec<&String> = g.iter().chain(&r).chain(&v).collect();
                assert!(!all.iter().any(|s| s.contains('*')), "{} {} has a wildcard", kind_of(doc), name_of(doc));
            }
        }
    }

    // Cluster-wide (defaults): everything in the ClusterRole, the Lease in a Role.
    let default = render_chart("", &[]);
    let cluster = rules(find(&default.docs, "ClusterRole", "berth"));
    for (g, r, v) in &needed {
        assert!(allows(&cluster, g, r, v), "ClusterRole lacks {v:?} on {g}/{r}");
    }
    assert!(allows(&cluster, "storage.k8s.io", "storageclasses", &["get", "list", "watch"]));
    // What a tenant's account does is not the operator's to do: no restored kind, no write of
    // the Berth kinds' specs, and impersonation of ServiceAccounts only.
    assert!(!allows(&cluster, "berth.dev", "databaseinstances", &["create"]));
    assert!(!allows(&cluster, "berth.dev", "appenvironments", &["update"]));
    assert!(!allows(&cluster, "", "secrets", &["update"]));
    assert!(!allows(&cluster, "", "users", &["impersonate"]) && !allows(&cluster, "", "groups", &["impersonate"]));
    let lease = find(&default.docs, "Role", "berth-leader-election");
    assert_eq!(lease["metadata"]["namespace"], "berth-system");
    assert!(allows(&rules(lease), "coordination.k8s.io", "leases", &["get", "create", "update", "patch"]));
    assert!(!default.docs.iter().any(|d| kind_of(d) == "Role" && name_of(d) == "berth"));

    // Namespaced: a Role + RoleBinding per watched namespace, nothing namespaced cluster-wide.
    let ns = render_chart("", &["--set", "operator.watchNamespaces={team-b,team-a}"]);
    let cluster = rules(find(&ns.docs, "ClusterRole", "berth"));
    assert!(!allows(&cluster, "", "secrets", &["get"]), "ClusterRole still grants secrets in namespaced mode");
    assert!(!allows(&cluster, "berth.dev", "appenvironments", &["get"]));
    assert!(allows(&cluster, "storage.k8s.io", "storageclasses", &["get", "list", "watch"]));
    for namespace in ["team-a", "team-b"] {
        let role = ns
            .docs
            .iter()
            .find(|d| kind_of(d) == "Role" && name_of(d) == "berth" && d["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("no Role berth in {namespace}"));
        let role_rules = rules(role);
        for (g, r, v) in &needed {
            assert!(allows(&role_rules, g, r, v), "Role in {namespace} lacks {v:?} on {g}/{r}");
        }
        assert!(
            ns.docs.iter().any(|d| kind_of(d) == "RoleBinding"
                && name_of(d) == "berth"
                && d["metadata"]["namespace"] == namespace)
        );
    }
    let deployment = find(&ns.docs, "Deployment", "berth");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "BERTH_NAMESPACES" && e["value"] == "team-a,team-b"));

    // An enforced default account: the operator may impersonate accounts of that name only.
    let impersonation = |render: &Render| {
        let role = find(&render.docs, "ClusterRole", "berth");
        let rules = role["rules"].as_array().unwrap();
        rules.iter().find(|r| r["verbs"] == serde_json::json!(["impersonate"])).cloned().unwrap()
    };
    assert!(impersonation(&default).get("resourceNames").is_none());
    let enforced = render_chart(
        "",
        &["--set", "tenancy.enforceDefaultServiceAccount=true", "--set", "tenancy.defaultServiceAccount=backup-runner"],
    );
    assert_eq!(impersonation(&enforced)["resourceNames"], serde_json::json!(["backup-runner"]));
    let env = &find(&enforced.docs, "Deployment", "berth")["spec"]["template"]["spec"]["containers"][0]["env"];
    let env = env.as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "BERTH_DEFAULT_SERVICE_ACCOUNT" && e["value"] == "backup-runner"));
    assert!(env.iter().any(|e| e["name"] == "BERTH_ENFORCE_DEFAULT_SERVICE_ACCOUNT" && e["value"] == "true"));
}

/// The operator pod: restricted security context, probes on the named port, downward API,
/// PDB and spreading only with more than one replica.
#[test]
fn chart_deployment_is_restricted_and_highly_available() {
    let default = render_chart("", &[]);
    let deployment = find(&default.docs, "Deployment", "berth");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(c["image"], "ghcr.io/berth-dev/berth:0.1.0");
    assert_eq!(c["args"][0], "operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["ports"][0]["name"], "http-metrics");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http-metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http-metrics");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    let env: BTreeMap<String, Value> =
        c["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone())).collect();
    assert_eq!(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env["BERTH_LEADER_ELECTION"]["value"], "true");
    assert_eq!(env["BERTH_METRICS_ADDR"]["value"], "0.0.0.0:8080");
    assert_eq!(env["BERTH_LOG_FORMAT"]["value"], "json");
    assert!(!env.contains_key("BERTH_NAMESPACES"), "an empty BERTH_NAMESPACES must not be set");
    let spread: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topologyKey"].as_str().unwrap())
        .collect();
    assert!(spread.contains(&"kubernetes.io/hostname"), "replicas are not spread across nodes");
    assert_eq!(find(&default.docs, "PodDisruptionBudget", "berth")["spec"]["minAvailable"], 1);
    assert!(!default.docs.iter().any(|d| kind_of(d) == "ServiceMonitor"), "ServiceMonitor must be off by default");

    let single = render_chart("ci/single-replica-values.yaml", &[]);
    assert!(!single.docs.iter().any(|d| kind_of(d) == "PodDisruptionBudget"), "PDB with one replica blocks drains");
    assert!(!single.docs.iter().any(|d| name_of(d) == "berth-leader-election"));

    let all = render_chart("ci/all-features-values.yaml", &[]);
    assert!(all.docs.iter().any(|d| kind_of(d) == "ServiceMonitor"));
    let image = &find(&all.docs, "Deployment", "berth")["spec"]["template"]["spec"]["containers"][0]["image"];
    assert!(image.as_str().unwrap().contains("@sha256:"), "image.digest is not used: {image}");
}

/// checkov's Kubernetes policies on the rendered chart (one checkov run over the renders of
/// all scenarios: its start-up dominates). Accepted findings, and why:
/// - CKV_K8S_38 (service account token only where needed), everywhere: an operator talks to
///   the API server, so this is exactly where a token is needed. The ServiceAccount itself has
///   `automountServiceAccountToken: false`; the pod opts in.
/// - CKV_K8S_43 (image by digest) and CKV_K8S_15 (pullPolicy Always), with the default values
///   only: the default is the release tag with IfNotPresent so that a plain `helm install`
///   works; `image.digest` and `image.pullPolicy` are the production knobs, and the
///   all-features scenario sets them, where both checks run and must pass.
#[test]
fn checkov_passes_on_the_rendered_chart() {
    const SKIPPED_EVERYWHERE: &[&str] = &["CKV_K8S_38"];
    let scenarios: &[(&str, &str, &[&str])] = &[
        ("", "default.yaml", &["CKV_K8S_43", "CKV_K8S_15"]),
        ("ci/all-features-values.yaml", "all-features.yaml", &[]),
        ("ci/single-replica-values.yaml", "single-replica.yaml", &["CKV_K8S_43", "CKV_K8S_15"]),
    ];
    // Not tempfile's default `.tmpXXXX`: checkov silently skips hidden directories.
    let dir = tempfile::Builder::new().prefix("berth-checkov-").tempdir().expect("temp dir");
    for (values, file, _) in scenarios {
        fs::write(dir.path().join(file), run_ok(&mut helm_template(values, &[]))).unwrap();
    }
    let mut cmd = Command::new(tool("checkov"));
    cmd.env("CKV_SKIP_PACKAGE_UPDATE_CHECK", "true")
        .arg("--directory")
        .arg(dir.path())
        .args(["--framework", "kubernetes", "--skip-download", "--quiet", "--compact", "--output", "json"])
        .args(["--skip-check", &SKIPPED_EVERYWHERE.join(",")]);
    let out = output(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("checkov printed no JSON report ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let summary = &report["summary"];
    assert!(
        summary["parsing_errors"] == 0
            && summary["resource_count"].as_u64().unwrap_or(0) >= 20
            && summary["passed"].as_u64().unwrap_or(0) >= 150,
        "checkov did not really scan the chart: {summary}"
    );
    let mut failures = Vec::new();
    for check in report["results"]["failed_checks"].as_array().into_iter().flatten() {
        let id = check["check_id"].as_str().unwrap_or("?");
        let path = check["file_path"].as_str().unwrap_or("?");
        let accepted =
            scenarios.iter().any(|(_, file, allowed)| path.ends_with(&format!("/{file}")) && allowed.contains(&id));
        if !accepted {
            failures.push(format!(
                "{id} {} — {} in {path}",
                check["check_name"].as_str().unwrap_or("?"),
                check["resource"].as_str().unwrap_or("?")
            ));
        }
    }
    assert!(failures.is_empty(), "checkov findings on the chart:\n  {}", failures.join("\n  "));
}

// ------------------------------------------------------------------------------------------
// CRDs
// ------------------------------------------------------------------------------------------

const CRD_DRIFT_HINT: &str = "run `cargo run -- crds --dir crds --chart-dir charts/berth/templates/crds`";

/// A CRD without the chart's keep annotations (Helm's and Argo CD's).
fn without_keep(mut crd: Value) -> Value {
    if let Some(Value::Object(a)) = crd.pointer_mut("/metadata/annotations") {
        a.remove("helm.sh/resource-policy");
        a.remove("argocd.argoproj.io/sync-options");
        if a.is_empty() {
            crd["metadata"].as_object_mut().unwrap().remove("annotations");
        }
    }
    crd
}

#[test]
fn crds_validate_and_the_chart_renders_the_same_crds_kept_on_uninstall() {
    let crds = repo().join("crds");
    let present = crd_dir_files(&crds);
    let expected: BTreeSet<String> = CRD_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(present, expected, "crds/ must hold one file per kind: {CRD_DRIFT_HINT}");

    // The chart renders the same CRDs (templates, so `helm upgrade` upgrades them), each kept
    // on `helm uninstall`; crds.enabled=false renders none.
    let chart = render_chart("", &[]);
    let rendered: BTreeMap<String, &Value> = chart
        .docs
        .iter()
        .filter(|d| kind_of(d) == "CustomResourceDefinition")
        .map(|d| (format!("{}.yaml", name_of(d)), d))
        .collect();
    assert_eq!(rendered.keys().cloned().collect::<BTreeSet<_>>(), expected, "the chart's CRDs: {CRD_DRIFT_HINT}");
    for (f, crd) in &rendered {
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{f}: kept on uninstall");
        let argocd = &crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"];
        assert_eq!(argocd, "Prune=false,Delete=false", "{f}: kept when Argo CD deletes its Application");
        let file = parse_docs(&fs::read_to_string(crds.join(f)).unwrap(), f).remove(0);
        assert!(without_keep((*crd).clone()) == file, "the chart's {f} differs from crds/{f}: {CRD_DRIFT_HINT}");
    }
    let off = render_chart("", &["--set", "crds.enabled=false"]);
    assert!(!off.docs.iter().any(|d| kind_of(d) == "CustomResourceDefinition"), "crds.enabled=false renders CRDs");

    // crds/kustomization.yaml (used by deploy/base) lists every CRD.
    let kustomization = fs::read_to_string(crds.join("kustomization.yaml"))
        .expect("crds/kustomization.yaml is missing: deploy/base includes the CRDs through it");
    let k = &parse_docs(&kustomization, "crds/kustomization.yaml")[0];
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_str().unwrap().trim_start_matches("./").to_owned())
        .collect();
    assert_eq!(listed, expected, "crds/kustomization.yaml must list exactly the CRD files");

    // Each file is one CRD for its kind, and validates.
    let mut files = Vec::new();
    for f in CRD_FILES {
        let path = crds.join(f);
        let docs = parse_docs(&fs::read_to_string(&path).unwrap(), f);
        assert_eq!(docs.len(), 1, "crds/{f}: one CRD per file");
        assert_eq!(kind_of(&docs[0]), "CustomResourceDefinition", "crds/{f}");
        assert_eq!(format!("{}.yaml", name_of(&docs[0])), *f, "crds/{f}: file name must be <metadata.name>.yaml");
        assert_eq!(docs[0]["spec"]["group"], "berth.dev", "crds/{f}");
        assert_eq!(docs[0]["spec"]["scope"], "Namespaced", "crds/{f}");
        let categories = &docs[0]["spec"]["names"]["categories"];
        assert!(categories.as_array().is_some_and(|c| c.iter().any(|c| c == "berth")), "crds/{f}: category berth");
        files.push(path);
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    validate(&refs, "crds/").unwrap();
}

// ------------------------------------------------------------------------------------------
// berth render
// ------------------------------------------------------------------------------------------

#[test]
fn render_of_the_examples_validates() {
    let examples = repo().join("deploy/examples");
    let inputs: Vec<PathBuf> = fs::read_dir(&examples)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(OsStr::to_str), Some("yaml" | "yml")))
                .collect()
        })
        .unwrap_or_default();
    assert!(!inputs.is_empty(), "deploy/examples/ holds no *.yaml examples");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["render", "-f", "deploy/examples/"]);
    let yaml = run_ok(&mut cmd);
    let docs = parse_docs(&yaml, "output of `berth render -f deploy/examples/`");
    assert!(!docs.is_empty(), "`berth render -f deploy/examples/` printed no objects");
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && !kind_of(d).is_empty() && !name_of(d).is_empty(),
            "rendered object without apiVersion/kind/metadata.name: {d}"
        );
    }
    let file = temp_yaml(&yaml);
    validate(&[file.path()], "berth render -f deploy/examples/").unwrap();
}

// ------------------------------------------------------------------------------------------
// kustomize base
// ------------------------------------------------------------------------------------------

/// `1.0` as `1`: kustomize rewrites the CRDs' float bounds (`minimum: 1.0`) as integers.
fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) => {
            *v = Value::from(n.as_f64().unwrap() as i64);
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// Drops what legitimately differs between the chart render and the kustomize base: the
/// `helm.sh/chart` and `app.kubernetes.io/managed-by` labels, and how a whole number is written.
fn normalise(mut doc: Value) -> Value {
    integral_numbers(&mut doc);
    for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(Value::Object(labels)) = doc.pointer_mut(pointer) {
            labels.remove("helm.sh/chart");
            labels.remove("app.kubernetes.io/managed-by");
        }
    }
    doc
}

#[test]
fn kustomize_base_builds_validates_and_matches_the_chart() {
    let yaml = run_ok(Command::new(tool("kubectl")).args(["kustomize", "deploy/base"]));
    let file = temp_yaml(&yaml);
    validate(&[file.path()], "kubectl kustomize deploy/base").unwrap();

    let docs = parse_docs(&yaml, "kubectl kustomize deploy/base");
    let key = |d: &Value| (kind_of(d), d["metadata"]["namespace"].as_str().unwrap_or("").to_owned(), name_of(d));
    let ns = docs.iter().find(|d| kind_of(d) == "Namespace").expect("the base creates its namespace");
    assert_eq!(name_of(ns), "berth-system");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    for d in docs.iter().filter(|d| {
        !matches!(kind_of(d).as_str(), "Namespace" | "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding")
    }) {
        assert_eq!(d["metadata"]["namespace"], "berth-system", "{} {}", kind_of(d), name_of(d));
    }

    // The CRDs are those of crds/, which are the chart's (without Helm's keep annotation).
    let crds: BTreeSet<String> =
        docs.iter().filter(|d| kind_of(d) == "CustomResourceDefinition").map(name_of).collect();
    let expected: BTreeSet<String> = CRD_FILES.iter().map(|f| f.trim_end_matches(".yaml").to_owned()).collect();
    assert_eq!(crds, expected, "deploy/base must include every CRD");

    // Everything equals the chart with default values (release name `berth`).
    let chart = render_chart("", &[]);
    let base: BTreeMap<_, _> =
        docs.iter().filter(|d| kind_of(d) != "Namespace").map(|d| (key(d), normalise(d.clone()))).collect();
    let helm: BTreeMap<_, _> = chart
        .docs
        .iter()
        .map(|d| if kind_of(d) == "CustomResourceDefinition" { without_keep(d.clone()) } else { d.clone() })
        .map(|d| (key(&d), normalise(d)))
        .collect();
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        helm.keys().collect::<Vec<_>>(),
        "deploy/base and charts/berth (default values) create different objects"
    );
    for (k, b) in &base {
        assert!(
            b == &helm[k],
            "deploy/base differs from the chart for {k:?}; regenerate the base from \
            `helm template berth charts/berth -n berth-system`\n--- base\n{b:#}\n--- chart\n{:#}",
            helm[k]
        );
    }
}

// ------------------------------------------------------------------------------------------
// GitOps examples
// ------------------------------------------------------------------------------------------

#[test]
fn gitops_examples_are_consistent() {
    let known: &[(&str, &str)] = &[
        ("argoproj.io/v1alpha1", "Application"),
        ("source.toolkit.fluxcd.io/v1", "OCIRepository"),
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        ("v1", "Namespace"),
        ("v1", "ConfigMap"), // argocd-cm-health.yaml (tests/gitops_health.rs checks its content)
    ];
    let mut files = Vec::new();
    for dir in ["argocd", "flux-helm", "flux-kustomize"] {
        let mut entries: Vec<PathBuf> = fs::read_dir(repo().join("deploy/gitops").join(dir))
            .unwrap_or_else(|e| panic!("deploy/gitops/{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("yaml")))
            .collect();
        entries.sort();
        files.extend(entries);
    }
    assert!(files.len() >= 5, "GitOps examples missing: {files:?}");

    let mut helm_values = Vec::new();
    let mut builtin = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        for doc in parse_docs(&fs::read_to_string(f).unwrap(), &rel) {
            let (api, kind) = (doc["apiVersion"].as_str().unwrap_or(""), kind_of(&doc));
            assert!(known.contains(&(api, kind.as_str())), "{rel}: unexpected {api} {kind}");
            match kind.as_str() {
                "Application" => {
                    let src = &doc["spec"]["source"];
                    let path = src["path"].as_str().expect("Application source.path");
                    assert!(repo().join(path).is_dir(), "{rel}: source.path {path} does not exist");
                    assert_eq!(doc["spec"]["destination"]["namespace"], "berth-system", "{rel}");
                    if let Some(values) = src["helm"].get("valuesObject") {
                        assert_eq!(path, "charts/berth", "{rel}");
                        helm_values.push((rel.clone(), values.clone()));
                    }
                }
                "HelmRelease" => {
                    assert_eq!(doc["spec"]["install"]["crds"], "CreateReplace", "{rel}");
                    assert_eq!(doc["spec"]["upgrade"]["crds"], "CreateReplace", "{rel}");
                    helm_values.push((rel.clone(), doc["spec"]["values"].clone()));
                }
                "Kustomization" if api.starts_with("kustomize.toolkit.fluxcd.io") => {
                    let path = doc["spec"]["path"].as_str().expect("Kustomization spec.path");
                    assert!(
                        repo().join(path).join("kustomization.yaml").is_file(),
                        "{rel}: spec.path {path} is no kustomize directory"
                    );
                }
                "Namespace" | "ConfigMap" => builtin.push(f.clone()),
                _ => {}
            }
        }
    }
    assert!(helm_values.len() >= 2, "expected Helm values in the Argo CD and Flux examples");

    // The values in the examples are accepted by values.schema.json and render.
    for (rel, values) in helm_values {
        let file = temp_yaml(&serde_json::to_string(&values).unwrap()); // JSON is YAML
        let mut cmd = Command::new(tool("helm"));
        cmd.args(["template", "berth", "charts/berth", "--namespace", "berth-system", "--values"]).arg(file.path());
        let out = output(&mut cmd);
        assert!(
            out.status.success(),
            "{rel}: its Helm values are rejected by the chart:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The Flux directory builds as a kustomization, and the built-in kinds validate.
    run_ok(Command::new(tool("kubectl")).args(["kustomize", "deploy/gitops/flux-helm"]));
    let refs: Vec<&Path> = builtin.iter().map(PathBuf::as_path).collect();
    validate(&refs, "deploy/gitops Namespace and ConfigMap objects").unwrap();
}

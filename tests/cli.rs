//! `berth` for people (`status`, `backup`, `restore`), run as a process against the real control
//! plane (tests/support/cluster) with the real operator, a real PostgreSQL and an S3 server on
//! loopback, its output compared with golden files under `tests/fixtures/cli/`.
//!
//! The scripted session of issue 17 goes through the real `kubectl`: `kubectl-berth` is a
//! symlink to the test's `berth` binary in a directory on kubectl's `PATH`, so `kubectl berth`
//! runs it as a plugin. No YAML is written by hand in the session: the backup and the restore
//! are the CLI's.
//!
//! Golden files hold the output with what changes from run to run (times, ages, durations,
//! sizes, snapshot ids) replaced by placeholders. `BERTH_UPDATE_GOLDEN=1` rewrites them; review
//! the diff (`git diff tests/fixtures/cli`) before committing it.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth::api::{Backup, BackupPolicy, DatabaseInstance};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::kubectl::Kubectl;
use support::objects::{create, is_ready, repo, storage_secrets};
use support::operator::Operator;
use support::servers::{Postgres, S3Server};
use support::wait::eventually;

const NS: &str = "shop";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(120);

/// One command's result.
struct Run {
    command: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The command, its output and its exit code, as a transcript entry.
    fn transcript(&self) -> String {
        let mut out = format!("$ {}\n{}", self.command, self.stdout);
        if !self.stderr.is_empty() {
            out.push_str(&format!("[stderr]\n{}", self.stderr));
        }
        out.push_str(&format!("[exit {}]\n\n", self.code));
        out
    }
}

fn finish(command: String, out: std::process::Output) -> Run {
    let run = Run {
        command,
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("{}", run.transcript());
    run
}

/// `kubectl berth ...` through the real kubectl, which finds `kubectl-berth` on its PATH.
struct Plugin {
    kubectl: Kubectl,
    dir: tempfile::TempDir,
}

impl Plugin {
    fn new(kubeconfig: &Path) -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_berth"), dir.path().join("kubectl-berth")).unwrap();
        Plugin { kubectl: Kubectl::new(kubeconfig), dir }
    }

    fn run(&self, args: &[&str]) -> Run {
        let path =
            std::env::join_paths([self.dir.path().to_path_buf(), PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
                .unwrap();
        let mut all = vec!["berth"];
        all.extend_from_slice(args);
        let out = self.kubectl.command(&all).env("PATH", path).env_remove("NO_COLOR").output().expect("run kubectl");
        finish(format!("kubectl berth {}", args.join(" ")), out)
    }
}

/// `berth ...` run directly, with `--kubeconfig` (not the environment).
fn berth(kubeconfig: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run berth");
    finish(format!("berth {} --kubeconfig <kubeconfig>", args.join(" ")), out)
}

/// Replaces what differs between runs with placeholders.
fn normalise(text: &str) -> String {
    let rules = [
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>"),
        (r"\b\d+(\.\d)? (B|KiB|MiB|GiB)\b", "<size>"),
        (r"\(\d+ bytes\)", "(<n> bytes)"),
        (r#""bytes": \d+"#, r#""bytes": 0"#),
        (r"\b\d+[dhms]( \d+[dhms])?\b", "<duration>"),
        (r"\b\d+\.\d schedule intervals", "<n> schedule intervals"),
        (r"\bsnapshot(:? +)[0-9a-f]{12,64}\b", "snapshot$1<id>"),
    ];
    let mut out = text.to_string();
    for (pattern, replacement) in rules {
        out = regex::Regex::new(pattern).unwrap().replace_all(&out, replacement).into_owned();
    }
    out
}

/// Compares `actual` (normalised) with `tests/fixtures/cli/<name>`, or rewrites the file when
/// `BERTH_UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/fixtures/cli").join(name);
    let actual = normalise(actual);
    if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        eprintln!("rewrote {}: review `git diff tests/fixtures/cli`", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; run with BERTH_UPDATE_GOLDEN=1 to write it, then review it", path.display())
    });
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{} differs from the output (first at line {}):\n--- expected\n{expected}\n--- actual\n{actual}\nIf the change is intended, rerun with BERTH_UPDATE_GOLDEN=1 and review the diff.",
            path.display(),
            first + 1
        );
    }
}

/// The progress lines `--wait` prints before the end, which depend on when it looked: checked
/// for their form and taken out of the transcript.
fn take_progress(run: &mut Run, pattern: &str) -> Vec<String> {
    let re = regex::Regex::new(pattern).unwrap();
    let (progress, rest): (Vec<&str>, Vec<&str>) = run.stdout.lines().partition(|l| re.is_match(l));
    let progress = progress.into_iter().map(String::from).collect();
    run.stdout = rest.iter().map(|l| format!("{l}\n")).collect();
    progress
}

/// A kubeconfig for a ServiceAccount of `NS` bound to the built-in `view` role there (which
/// the chart's aggregated ClusterRole extends to Berth's kinds).
async fn viewer_kubeconfig(cluster: &Cluster) -> PathBuf {
    let client = cluster.client();
    let _: ServiceAccount =
        create(&client, NS, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "viewer"}}))
            .await;
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "viewer", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": NS}]
    });
    cluster.kubectl_apply(binding.to_string().as_bytes());
    let token = Api::<ServiceAccount>::namespaced(client, NS)
        .create_token_request("viewer", &PostParams::default(), &Default::default())
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let path = cluster.dir().join("viewer.kubeconfig");
    std::fs::write(&path, support::cluster::pki::kubeconfig(&cluster.url, &cluster.ca_pem, "viewer", &token)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_backup_and_restore_through_kubectl_match_the_golden_session() {
    let mut pg = Postgres::start();
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    cluster.namespace(NS).await;
    cluster.tenant_account(NS);
    let pg_address = (format!("orders-db.{NS}.svc:5432"), format!("127.0.0.1:{}", pg.port));
    cluster.kubelet().with_env("AWS_EC2_METADATA_DISABLED", "true");
    cluster.kubelet().with_host_override(pg_address.0.clone(), pg_address.1.clone());
    let client = cluster.client();
    let operator_kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let overrides = format!("{}={}", pg_address.0, pg_address.1);
    let mut operator =
        Operator::start(&operator_kubeconfig, &["--leader-election=false", "--endpoint-overrides", &overrides]);
    operator.wait_ready(WAIT);

    // What a team has before it reaches for the CLI: an app, its database and a policy.
    storage_secrets(&client, NS, &s3, KEY).await;
    let _: DatabaseInstance = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance", "metadata": {"name": "orders-db"},
            "spec": {"engine": "postgres", "version": "15", "storage": {"size": "1Gi"},
                     "roles": [{"name": "app"}], "databases": [{"name": "orders", "owner": "app"}]}
        }),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let admin = eventually("orders-db credentials", WAIT, || async {
        secrets.get_opt("orders-db-credentials").await.ok().flatten()
    })
    .await;
    let password = String::from_utf8(admin.data.unwrap()["password"].0.clone()).unwrap();
    pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{password}'"));
    pg.password = password;
    let _: berth::api::AppEnvironment = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "web"},
            "spec": {"tier": "development", "image": "ghcr.io/example/web:1",
                     "databases": [{"name": "orders-db"}], "ingress": {"hosts": ["shop.example.test"]}}
        }),
    )
    .await;
    let _: BackupPolicy = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 3 * * *", "suspend": true,
                     "storage": {"bucket": "backups", "prefix": "shop", "region": s3.region, "endpoint": s3.endpoint,
                                 "insecureHTTP": true, "forcePathStyle": true, "credentialsSecret": "s3-credentials",
                                 "encryptionKeySecret": "repository-key"},
                     "scope": {"databases": true}}
        }),
    )
    .await;
    let instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
    let apps: Api<berth::api::AppEnvironment> = Api::namespaced(client.clone(), NS);
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
    eventually("orders-db, web and nightly reconciled", WAIT, || async {
        let db = instances.get("orders-db").await.ok()?.status?;
        let app = apps.get("web").await.ok()?.status?;
        let policy = policies.get("nightly").await.ok()?.status?;
        let fresh = policy.conditions.iter().any(|c| c.type_ == "BackupFresh");
        (is_ready(&db.conditions) && !db.provisioned.is_empty() && is_ready(&app.conditions) && fresh).then_some(())
    })
    .await;
    pg.psql("orders", "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2), (3)");

    // The scripted session: status, a backup waited for, a dry run, the data lost, a restore.
    let plugin = Plugin::new(cluster.kubeconfig_path());
    let mut session = String::new();
    let status = plugin.run(&["status", "-A"]);
    assert_eq!(status.code, 0);
    assert!(!status.stdout.contains('\x1b'), "no colours when piped");
    session.push_str(&status.transcript());

    let mut backup = plugin.run(&["backup", "create", "--policy", "nightly", "--name", "manual-1", "--wait", "-n", NS]);
    let progress = take_progress(&mut backup, r"^(New|InProgress): ");
    let form = regex::Regex::new(
        r"^(New: waiting for the operator to list the items|InProgress: \d of 2 items done, \d+(\.\d)? (B|KiB|MiB) backed up)$",
    )
    .unwrap();
    assert!(progress.iter().all(|l| form.is_match(l)), "{progress:?}");
    assert_eq!(backup.code, 0, "Completed exits 0");
    session.push_str(&backup.transcript());
    let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
    let done = backups.get("manual-1").await.unwrap();
    assert_eq!(done.status.as_ref().unwrap().phase.as_deref(), Some("Completed"));
    assert_eq!(done.metadata.labels.unwrap()["berth.dev/backuppolicy"], "nightly");

    session.push_str(&plugin.run(&["backup", "describe", "manual-1", "-n", NS]).transcript());
    let dry = plugin.run(&[
        "restore",
        "create",
        "--from-backup",
        "manual-1",
        "--namespace-mapping",
        "shop=shop-copy",
        "--include-kinds",
        "DatabaseInstance,Secret",
        "--dry-run",
        "-n",
        NS,
    ]);
    assert_eq!(dry.code, 0);
    session.push_str(&dry.transcript());
    assert_eq!(restore_count(&client).await, 0, "a dry run creates no Restore");

    pg.psql("orders", "DELETE FROM items");
    let mut restore =
        plugin.run(&["restore", "create", "--from-backup", "manual-1", "--name", "undo", "--wait", "-n", NS]);
    let progress = take_progress(&mut restore, r"^(New|Pending|InProgress)\b");
    assert!(progress.iter().all(|l| l.starts_with("InProgress") || l.starts_with("New")), "{progress:?}");
    assert_eq!(restore.code, 0);
    session.push_str(&restore.transcript());
    assert_eq!(pg.psql("orders", "SELECT count(*) FROM items").trim(), "3", "the rows came back");

    eventually("nightly reports manual-1", WAIT, || async {
        let st = policies.get("nightly").await.ok()?.status?;
        let fresh = st.conditions.iter().any(|c| c.type_ == "BackupFresh" && c.reason == "BackupRecent");
        (st.last_successful_backup.as_deref() == Some("manual-1") && fresh).then_some(())
    })
    .await;
    let after = plugin.run(&["status", "-A"]);
    session.push_str(&after.transcript());
    golden("session.txt", &session);

    let json = berth(
        cluster.kubeconfig_path(),
        &["status", "-n", NS, "-o", "json", "--context", "berth-test-admin@berth-test"],
    );
    assert_eq!(json.code, 0);
    let parsed: Value = serde_json::from_str(&json.stdout).expect("-o json prints JSON");
    assert_eq!(parsed["namespaces"][0]["appEnvironments"][0]["databaseInstances"][0]["lastDump"]["backup"], "manual-1");
    golden("status.json", &json.stdout);

    // Logs: the agent Job's pod exists while the Job does (the kubelet stand-in serves no
    // logs, so the CLI says it cannot read them); once the Jobs are gone, the recorded errors.
    let live = plugin.run(&["backup", "logs", "manual-1", "-n", NS]);
    assert_eq!(live.code, 0);
    assert!(live.stdout.starts_with("==> database/orders-db: Job manual-1-"), "{}", live.stdout);
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    for job in jobs.list(&ListParams::default().labels("berth.dev/backup=manual-1")).await.unwrap() {
        jobs.delete(&job.metadata.name.unwrap(), &DeleteParams::background()).await.unwrap();
    }
    eventually("the agent Jobs gone", WAIT, || async {
        jobs.list(&ListParams::default().labels("berth.dev/backup=manual-1")).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    let mut errors = String::new();
    errors.push_str(&plugin.run(&["backup", "logs", "manual-1", "-n", NS]).transcript());

    // Every refusal names the object and the fix, with its own exit code.
    let _: BackupPolicy = create(
        &client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "weekly"},
            "spec": {"schedule": "0 4 * * 0", "suspend": true,
                     "storage": {"bucket": "backups", "prefix": "weekly", "region": s3.region, "endpoint": s3.endpoint,
                                 "insecureHTTP": true, "forcePathStyle": true, "credentialsSecret": "s3-credentials",
                                 "encryptionKeySecret": "repository-key"}}
        }),
    )
    .await;
    // Storage nobody answers on: the Backup ends Failed and `--wait` exits 3.
    let closed = support::operator::free_port();
    let _: BackupPolicy = create(&client, NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "unreachable"},
            "spec": {"schedule": "0 4 * * *", "suspend": true,
                     "storage": {"bucket": "backups", "region": s3.region, "endpoint": format!("http://127.0.0.1:{closed}"),
                                 "insecureHTTP": true, "forcePathStyle": true, "credentialsSecret": "s3-credentials",
                                 "encryptionKeySecret": "repository-key"}}
        }),
    )
    .await;
    let mut failed =
        plugin.run(&["backup", "create", "--policy", "unreachable", "--name", "broken-1", "--wait", "-n", NS]);
    take_progress(&mut failed, r"^(New|InProgress): ");
    assert_eq!(failed.code, 3, "a Failed backup exits 3");
    errors.push_str(&failed.transcript().replace(&closed.to_string(), "<port>"));
    let viewer = viewer_kubeconfig(&cluster).await;
    let cases: [(&[&str], i32, bool); 6] = [
        (&["backup", "describe", "nope", "-n", NS], 5, false),
        (&["backup", "create", "--policy", "missing", "-n", NS], 5, false),
        (&["restore", "create", "--policy", "weekly", "-n", NS], 7, false),
        (&["restore", "create", "--from-backup", "manual-1", "--namespace-mapping", "shop", "-n", NS], 8, false),
        (&["backup", "create", "--policy", "nightly", "-n", NS], 6, true),
        (&["status", "-A"], 6, true),
    ];
    for (args, code, as_viewer) in cases {
        let run = if as_viewer { berth(&viewer, args) } else { plugin.run(args) };
        assert_eq!(run.code, code, "{}", run.transcript());
        assert!(!run.stderr.contains("panicked") && !run.stderr.contains("backtrace"), "{}", run.stderr);
        errors.push_str(&run.transcript());
    }
    let viewer_status = berth(&viewer, &["status", "-n", NS]);
    assert_eq!(viewer_status.code, 0, "the view role reads everything status shows");
    golden("errors.txt", &errors);

    // On a terminal (a pty from util-linux's `script`) the output is coloured, unless NO_COLOR.
    let on_tty = |no_color: bool| {
        let line = format!(
            "{} status -n {NS} --kubeconfig {}",
            env!("CARGO_BIN_EXE_berth"),
            cluster.kubeconfig_path().display()
        );
        let mut command = Command::new("script");
        command.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null()).env_remove("NO_COLOR");
        if no_color {
            command.env("NO_COLOR", "1");
        }
        String::from_utf8_lossy(&command.output().expect("run script (util-linux)").stdout).into_owned()
    };
    let coloured = on_tty(false);
    assert!(coloured.contains("\x1b[1mNamespace shop\x1b[0m"), "{coloured:?}");
    assert!(!on_tty(true).contains('\x1b'), "NO_COLOR turns colours off");

    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// The Restores in the test namespace.
async fn restore_count(client: &kube::Client) -> usize {
    Api::<berth::api::Restore>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap().items.len()
}

/// The whole spec of `name` in `ns`.
async fn spec_of(client: &kube::Client, ns: &str, name: &str) -> Value {
    let app = Api::<berth::api::AppEnvironment>::namespaced(client.clone(), ns).get(name).await.unwrap();
    serde_json::to_value(app.spec).unwrap()
}

/// The app container and the pod volumes of the Deployment `ns/name`.
async fn template_of(client: &kube::Client, ns: &str, name: &str) -> (Value, Value) {
    let d = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns).get(name).await.unwrap();
    let pod = serde_json::to_value(d.spec.unwrap().template.spec.unwrap()).unwrap();
    (pod["containers"][0].clone(), pod["volumes"].clone())
}

/// `ns/name` Ready at its current generation, and its status.history with every revision up
/// to `revisions` recorded.
async fn ready_with_history(
    client: &kube::Client,
    ns: &str,
    name: &str,
    revisions: usize,
) -> (berth::api::AppEnvironment, Vec<berth::api::appenvironment::Revision>) {
    let apps: Api<berth::api::AppEnvironment> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{ns}/{name} Ready with {revisions} revisions"), WAIT, || async {
        let app = apps.get(name).await.ok()?;
        let status = app.status.clone()?;
        let current = status.observed_generation == app.metadata.generation;
        let newest_ready = status.history.last().is_some_and(|r| r.ready_at.is_some());
        (current && is_ready(&status.conditions) && status.history.len() == revisions && newest_ready)
            .then_some((app, status.history))
    })
    .await
}

async fn patch_spec(client: &kube::Client, ns: &str, name: &str, spec: Value) {
    Api::<berth::api::AppEnvironment>::namespaced(client.clone(), ns)
        .patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({"spec": spec})))
        .await
        .unwrap();
}

/// `berth` on a pseudo-terminal (util-linux `script`), `input` typed at it.
fn berth_on_tty(kubeconfig: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let line = format!("{} {} --kubeconfig {}", env!("CARGO_BIN_EXE_berth"), args.join(" "), kubeconfig.display());
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned()
}

/// Revision history, the progress deadline, `berth rollback` and `berth promote`: each change
/// is compared on the whole spec before and after, and followed into the Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_deadline_rollback_and_promote_change_only_what_they_should() {
    const BROKEN: &str = "ghcr.io/example/web:broken";
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    for ns in ["staging", "prod"] {
        cluster.namespace(ns).await;
    }
    // An image whose USER is root: under Berth's runAsNonRoot the kubelet refuses to start it,
    // so its pods never become Ready.
    cluster.kubelet().set_image_user(BROKEN, "0");
    let client = cluster.client();
    let mut operator = Operator::start(&cluster.operator_kubeconfig(&[]).await, &["--leader-election=false"]);
    operator.wait_ready(WAIT);
    let kubeconfig = cluster.kubeconfig_path();

    // Revision 1, then revision 2 with a spec too large for the status (many args).
    let config = |cm: &str| json!({"name": "config", "mountPath": "/etc/web", "configMap": {"name": cm}});
    let staging_spec = json!({
        "tier": "staging", "image": "ghcr.io/example/web:1", "progressDeadlineSeconds": 15,
        "env": [{"name": "GREETING", "value": "hello"}], "volumes": [config("web-config-v1")]
    });
    let _: berth::api::AppEnvironment = create(&client, "staging", json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "web"}, "spec": staging_spec
    }))
    .await;
    let (_, history) = ready_with_history(&client, "staging", "web", 1).await;
    assert!(history[0].spec.is_some() && history[0].spec_ref.is_none(), "a small spec stays in the status");
    let args: Vec<String> = (0..80).map(|i| format!("--feature-flag-{i}=enabled")).collect();
    patch_spec(
        &client,
        "staging",
        "web",
        json!({
            "image": "ghcr.io/example/web:2", "args": args,
            "env": [{"name": "GREETING", "value": "hi"}], "volumes": [config("web-config-v2")]
        }),
    )
    .await;
    let (good, history) = ready_with_history(&client, "staging", "web", 2).await;
    let good_spec = serde_json::to_value(&good.spec).unwrap();
    let stored = history[1].spec_ref.clone().expect("a large spec goes to the ConfigMap");
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "staging")
        .get(&stored.config_map)
        .await
        .unwrap();
    assert_eq!(cm.metadata.owner_references.unwrap()[0].uid, good.metadata.uid.clone().unwrap());
    assert!(cm.binary_data.unwrap().contains_key(&stored.key));
    assert!(history[0].superseded_at.is_some() && history[0].ready_at.is_some());

    // Revision 3 never becomes Ready: past progressDeadlineSeconds, a condition and an Event
    // name the last good revision and the command; the spec stays as written.
    patch_spec(&client, "staging", "web", json!({"image": BROKEN})).await;
    let apps: Api<berth::api::AppEnvironment> = Api::namespaced(client.clone(), "staging");
    let stalled = eventually("staging/web ProgressDeadlineExceeded", WAIT, || async {
        let app = apps.get("web").await.ok()?;
        let c = app.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Progressing")?.clone();
        (c.status == "False" && c.reason == "ProgressDeadlineExceeded").then_some((app, c))
    })
    .await;
    let (broken, condition) = stalled;
    let command = "`berth rollback web -n staging --to-revision 2`";
    assert!(
        condition
            .message
            .contains("revision 3 (generation 3, image ghcr.io/example/web:broken) has not become Ready within 15s"),
        "{}",
        condition.message
    );
    assert!(
        condition
            .message
            .contains(&format!("the last good revision is 2 (image ghcr.io/example/web:2): roll back with {command}")),
        "{}",
        condition.message
    );
    let history = broken.status.as_ref().unwrap().history.clone();
    assert_eq!((history.len(), history[2].ready_at.clone()), (3, None));
    assert_eq!(broken.spec.image, BROKEN, "no automatic rollback");
    let events = eventually("the ProgressDeadlineExceeded Event", WAIT, || async {
        let events = cluster.events(Some("staging"), "ProgressDeadlineExceeded").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert!(events[0].message.as_deref().unwrap_or_default().contains(command), "{events:?}");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // The rollback: an Argo CD-tracked object gets the warning; the spec becomes revision 2's,
    // exactly, and the Deployment's template follows.
    apps.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": "shop:berth.dev/AppEnvironment:staging/web"}}})),
    )
    .await
    .unwrap();
    let mut transcript = String::new();
    let rollback = berth(kubeconfig, &["rollback", "web", "-n", "staging"]);
    assert_eq!(rollback.code, 0, "{}", rollback.transcript());
    assert!(rollback.stderr.contains("managed by Argo CD"), "{}", rollback.stderr);
    transcript.push_str(&rollback.transcript());
    let (rolled, history) = ready_with_history(&client, "staging", "web", 4).await;
    assert_eq!(serde_json::to_value(&rolled.spec).unwrap(), good_spec, "the whole spec is revision 2's");
    let managers: Vec<_> = rolled.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
    assert!(managers.contains(&"berth-cli".to_string()), "{managers:?}");
    assert_eq!(history[3].hash, history[1].hash, "the same templates as revision 2");
    assert_eq!((history[2].ready_at.clone(), history[2].superseded_at.is_some()), (None, true), "3 never became Ready");
    let (container, volumes) = template_of(&client, "staging", "web").await;
    assert_eq!(container["image"], "ghcr.io/example/web:2");
    assert_eq!(container["args"].as_array().unwrap().len(), 80);
    assert_eq!(container["env"][0], json!({"name": "GREETING", "value": "hi"}));
    assert!(volumes.to_string().contains("web-config-v2") && !volumes.to_string().contains("web-config-v1"));
    let progressing = rolled.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_ne!(progressing.reason, "ProgressDeadlineExceeded", "Ready again clears the deadline");

    for (args, code) in [
        (&["rollback", "web", "-n", "staging", "--to-revision", "99"][..], 5),
        (&["rollback", "nope", "-n", "staging"][..], 5),
        (&["promote", "web", "--from", "staging", "--to", "staging"][..], 8),
    ] {
        let run = berth(kubeconfig, args);
        assert_eq!(run.code, code, "{}", run.transcript());
        transcript.push_str(&run.transcript());
    }

    // Promotion: production keeps its tier's defaults and its own fields; the image, env and
    // config volumes come from staging, and only with a yes.
    let prod_spec = json!({
        "tier": "production", "image": "ghcr.io/example/web:1",
        "env": [{"name": "GREETING", "value": "hello"}],
        "volumes": [config("web-config-v1"), {"name": "cache", "mountPath": "/cache", "emptyDir": {}}]
    });
    let _: berth::api::AppEnvironment = create(
        &client,
        "prod",
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "web"}, "spec": prod_spec
        }),
    )
    .await;
    ready_with_history(&client, "prod", "web", 1).await;
    let before = spec_of(&client, "prod", "web").await;
    let deployment_before =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "prod").get("web").await.unwrap();
    let promote = ["promote", "web", "--from", "staging", "--to", "prod", "--env", "--config-volumes"];
    let refused = berth(kubeconfig, &promote);
    assert_eq!(refused.code, 8, "no terminal and no --yes: {}", refused.transcript());
    transcript.push_str(&refused.transcript());
    let declined = berth_on_tty(kubeconfig, &promote, "n\n");
    assert!(declined.contains("[y/N]") && declined.contains("Not applied"), "{declined}");
    assert_eq!(spec_of(&client, "prod", "web").await, before, "refused and declined change nothing");

    let mut yes = promote.to_vec();
    yes.push("--yes");
    let applied = berth(kubeconfig, &yes);
    assert_eq!(applied.code, 0, "{}", applied.transcript());
    transcript.push_str(&applied.transcript());
    let mut expected = before.clone();
    expected["image"] = json!("ghcr.io/example/web:2");
    expected["env"] = json!([{"name": "GREETING", "value": "hi"}]);
    expected["volumes"] = json!([config("web-config-v2"), {"name": "cache", "mountPath": "/cache", "emptyDir": {}}]);
    assert_eq!(spec_of(&client, "prod", "web").await, expected, "image, env and config volumes only");
    let (promoted, history) = ready_with_history(&client, "prod", "web", 2).await;
    assert_eq!(promoted.spec.tier, berth::api::appenvironment::Tier::Production);
    assert_eq!(history[1].image, "ghcr.io/example/web:2");
    let (container, volumes) = template_of(&client, "prod", "web").await;
    assert_eq!(container["image"], "ghcr.io/example/web:2");
    assert_eq!(container["env"][0], json!({"name": "GREETING", "value": "hi"}));
    assert!(container.get("args").is_none(), "staging's args are not promoted");
    assert!(volumes.to_string().contains("web-config-v2") && volumes.to_string().contains("\"cache\""));
    let deployment_after =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "prod").get("web").await.unwrap();
    let (b, a) = (deployment_before.spec.unwrap(), deployment_after.spec.unwrap());
    assert_eq!((a.replicas, a.strategy), (b.replicas, b.strategy), "production's replicas and rollout stay");
    golden("day2.txt", &transcript);

    cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

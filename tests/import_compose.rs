//! `berth import compose` over the compose projects in tests/fixtures/compose: every output
//! renders with `berth render` and passes `kubernetes-validate --strict`; the mapping
//! (databases, secrets, interpolation, networks, extends, profiles) and the report are checked
//! structurally; bad input exits 2 with file:line and writes nothing.

use crate::support::objects::repo;

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/compose")
}

/// `berth` with only PATH and `env` in its environment (compose reads the shell's variables).
fn berth(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(env.iter().copied());
    cmd.current_dir(fixtures()).output().expect("berth runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).expect("a YAML stream").into_iter().filter(|d| !d.is_null()).collect()
}

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".tools"));
    dir.join("bin").join(name)
}

/// An import into a fresh folder: its files, parsed, and the report.
struct Imported {
    _dir: tempfile::TempDir,
    berth: Vec<Value>,
    secrets: Vec<Value>,
    config_maps: Vec<Value>,
    report: String,
    rendered: Vec<Value>,
}

impl Imported {
    fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {docs:#?}"))
    }
    fn app(&self, name: &str) -> &Value {
        Self::find(&self.berth, "AppEnvironment", name)
    }
    fn env(&self, app: &str, var: &str) -> Option<&Value> {
        self.app(app)["spec"]["env"].as_array()?.iter().find(|e| e["name"] == var)
    }
    /// The report row of `service` and `key` (its kind and reason).
    fn row(&self, service: &str, key: &str) -> Option<String> {
        self.report.lines().find(|l| l.contains(&format!("| {service} | `{key}` |"))).map(str::to_string)
    }
}

/// Imports, renders the Berth resources, and validates the render output, Secrets and
/// ConfigMaps with `kubernetes-validate --strict`.
fn import(args: &[&str], env: &[(&str, &str)]) -> Imported {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut all = vec!["import", "compose"];
    all.extend(args);
    all.extend(["-o", out.to_str().unwrap()]);
    let run = berth(&all, env);
    assert!(run.status.success(), "import failed: {}", text(&run.stderr));
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    let render = berth(&["render", "-f", out.join("berth.yaml").to_str().unwrap()], &[]);
    assert!(render.status.success(), "berth render refused the import: {}", text(&render.stderr));
    let rendered_file = dir.path().join("rendered.yaml");
    std::fs::write(&rendered_file, &render.stdout).unwrap();
    let mut files = vec![rendered_file];
    files.extend(["secrets.yaml", "configmaps.yaml"].map(|f| out.join(f)).into_iter().filter(|p| p.exists()));
    for version in ["1.33.0", "1.35.0"] {
        let v = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("kubernetes-validate runs (BERTH_TOOLS_DIR)");
        let report = format!("{}{}", text(&v.stdout), text(&v.stderr));
        assert!(v.status.success() && !report.contains("ERROR"), "kubernetes-validate {version}:\n{report}");
    }
    Imported {
        berth: docs(&read("berth.yaml")),
        secrets: docs(&read("secrets.yaml")),
        config_maps: docs(&read("configmaps.yaml")),
        report: read("migration-report.md"),
        rendered: docs(&text(&render.stdout)),
        _dir: dir,
    }
}

/// Names of the other AppEnvironments whose pods the NetworkPolicy of `app` admits.
fn admitted_apps(rendered: &[Value], app: &str) -> Vec<String> {
    let np = Imported::find(rendered, "NetworkPolicy", app);
    np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["from"].as_array().cloned().unwrap_or_default())
        .filter_map(|peer| peer["podSelector"]["matchLabels"]["berth.dev/appenvironment"].as_str().map(str::to_string))
        // Its own pods always reach each other.
        .filter(|name| name != app)
        .collect()
}

#[test]
fn web_postgres_rabbitmq_worker_and_cron() {
    let i = import(&["-f", "shop/docker-compose.yml", "--namespace", "shop"], &[]);

    // PostgreSQL and RabbitMQ became managed instances, from the tags and the POSTGRES_*/RABBITMQ_* variables.
    let db = Imported::find(&i.berth, "DatabaseInstance", "db");
    assert_eq!(db["spec"]["engine"], "postgres");
    assert_eq!(db["spec"]["version"], "16");
    assert_eq!(db["spec"]["databases"], serde_json::json!([{"name": "shop", "owner": "shop"}]));
    assert_eq!(db["spec"]["roles"], serde_json::json!([{"name": "shop"}]));
    let mq = Imported::find(&i.berth, "DatabaseInstance", "mq");
    assert_eq!((mq["spec"]["version"].as_str(), mq["spec"]["vhosts"][0].as_str()), (Some("3.13"), Some("shop")));

    // The apps use them through spec.databases: no hard-coded host or password is left.
    assert_eq!(i.app("web")["spec"]["databases"], serde_json::json!([{"name": "db"}, {"name": "mq"}]));
    assert!(i.env("web", "DATABASE_URL").is_none(), "DATABASE_URL is injected, not copied");
    assert_eq!(i.env("web", "CELERY_BROKER_URL").unwrap()["value"], "$(AMQP_URL)");
    let all = serde_json::to_string(&i.berth).unwrap();
    assert!(!all.contains("s3cret-db-pass") && !all.contains("s3cret-mq-pass"), "old passwords left in the apps");
    assert!(!i.report.contains("s3cret"), "the report shows a password");
    assert!(i.row("web", "environment.DATABASE_URL").unwrap().contains("injected from DatabaseInstance db"));

    assert_eq!(
        i.env("metrics", "DATA_SOURCE_URI").unwrap()["value"],
        "$(DATABASE_HOST):$(DATABASE_PORT)/shop?sslmode=disable"
    );
    assert_eq!(i.env("metrics", "DATA_SOURCE_PASS").unwrap()["value"], "$(DATABASE_PASSWORD)");
    // Interpolation (.env, defaults) and env_file; secret-looking values in a Secret.
    assert_eq!(i.env("web", "DEBUG").unwrap()["value"], "false", "${{DEBUG:-false}}");
    assert_eq!(i.env("web", "DJANGO_SETTINGS_MODULE").unwrap()["value"], "shop.settings.production", "from web.env");
    let key = i.env("web", "DJANGO_SECRET_KEY").unwrap();
    assert_eq!(key["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "web-env", "key": "DJANGO_SECRET_KEY"}));
    let web_env = Imported::find(&i.secrets, "Secret", "web-env");
    assert_eq!(web_env["stringData"]["DJANGO_SECRET_KEY"], "django-insecure-0123456789abcdef");
    assert_eq!(web_env["stringData"]["EMAIL_HOST_PASSWORD"], "mail-pass-123", "single quotes in web.env");

    // secrets: under /run/secrets, configs: as ConfigMap files.
    let web = &i.app("web")["spec"];
    let volume = |app: &Value, name: &str| {
        app["volumes"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned().unwrap()
    };
    let secrets = volume(web, "secrets");
    assert_eq!(secrets["mountPath"], "/run/secrets");
    assert_eq!(secrets["secret"]["items"][0]["path"], "stripe_api_key");
    assert_eq!(
        Imported::find(&i.secrets, "Secret", "web-secrets")["stringData"]["stripe_api_key"],
        "sk_test_51Hfake0123456789\n"
    );
    let conf = volume(&i.app("proxy")["spec"], "configs");
    assert_eq!(
        (conf["mountPath"].as_str(), conf["configMap"]["items"][0]["path"].as_str()),
        (Some("/etc/nginx/conf.d"), Some("default.conf"))
    );
    assert!(
        Imported::find(&i.config_maps, "ConfigMap", "proxy-config")["data"]["nginx_conf"]
            .as_str()
            .unwrap()
            .contains("listen 8080")
    );

    // Named volume: a claim, one replica, Recreate. Health checks: HTTP probes on the named port.
    assert_eq!(volume(web, "media")["claim"]["size"], "10Gi");
    assert_eq!((web["replicas"].as_i64(), web["rollout"]["strategy"].as_str()), (Some(1), Some("Recreate")));
    assert_eq!(web["probes"]["readiness"]["httpGet"], serde_json::json!({"path": "/healthz", "port": "http"}));
    assert_eq!(web["probes"]["liveness"]["initialDelaySeconds"], 40);
    assert_eq!(web["securityContext"], serde_json::json!({"runAsUser": 1000, "runAsGroup": 1000}));
    assert_eq!(web["resources"]["limits"], serde_json::json!({"cpu": "1.0", "memory": "1Gi"}));

    // The Celery worker (same build and environment, no port) is a worker of web; the cron
    // container's crontab lines are web's cron jobs. Both get web's env and databases.
    assert!(i.berth.iter().all(|d| d["metadata"]["name"] != "worker" && d["metadata"]["name"] != "cron"));
    let worker = &web["workers"][0];
    assert_eq!(
        (worker["name"].as_str(), worker["replicas"].as_i64(), worker["args"][0].as_str()),
        (Some("worker"), Some(2), Some("celery"))
    );
    let schedules: Vec<(&str, &str)> = web["cronJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["schedule"].as_str().unwrap(), c["command"][2].as_str().unwrap()))
        .collect();
    assert_eq!(
        schedules,
        [("*/15 * * * *", "python manage.py clearsessions"), ("30 2 * * *", "python manage.py send_digest")]
    );
    let rendered_worker = Imported::find(&i.rendered, "Deployment", "web-worker");
    let worker_env = rendered_worker["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    assert!(worker_env.iter().any(|e| e["name"] == "DATABASE_URL"), "the worker gets the injected variables");
    Imported::find(&i.rendered, "CronJob", "web-cron-2");
    assert!(i.row("cron", "command (./crontab:2)").unwrap().contains("became spec.cronJobs cron-2 of web"));
    assert!(i.row("worker", "(service)").unwrap().contains("became spec.workers worker of web"));

    // Build-only services: a placeholder image and a line saying what to do.
    assert_eq!(web["image"], "registry.invalid/shop/web:replace-me");
    assert!(i.row("web", "build").unwrap().contains("--image web=REGISTRY/IMAGE:TAG"));

    // Networks: proxy (frontend) and metrics (backend) share none, so neither admits the
    // other; web is on both.
    assert_eq!(admitted_apps(&i.rendered, "proxy"), ["web"]);
    assert_eq!(admitted_apps(&i.rendered, "web"), ["proxy", "metrics"]);
    assert_eq!(admitted_apps(&i.rendered, "metrics"), ["web"]);

    // What could not be carried over is reported with service, key and reason.
    assert!(i.row("worker", "cap_add").unwrap().contains("Pod Security restricted"));
    assert!(i.row("cron", "logging").unwrap().starts_with("| not mapped |"));
    assert!(i.row("db", "volumes").unwrap().contains("init scripts"));
    assert!(i.row("db", "environment.POSTGRES_PASSWORD").unwrap().contains("Berth generates the passwords"));

    // --image replaces the placeholder; --host adds an Ingress.
    let i = import(
        &[
            "-f",
            "shop/docker-compose.yml",
            "--image",
            "web=ghcr.io/acme/shop:3.1",
            "--host",
            "proxy=shop.example.com",
            "--tier",
            "production",
        ],
        &[],
    );
    assert_eq!(i.app("web")["spec"]["image"], "ghcr.io/acme/shop:3.1");
    assert_eq!(i.app("web")["metadata"]["namespace"], "shop", "the project name");
    assert_eq!(i.app("proxy")["spec"]["ingress"]["hosts"], serde_json::json!(["shop.example.com"]));
    assert!(i.rendered.iter().any(|d| d["kind"] == "Ingress" && d["metadata"]["name"] == "proxy"));
}

#[test]
fn mariadb_is_reported_and_the_app_still_converts() {
    let i = import(&["-f", "wordpress/docker-compose.yml"], &[("WORDPRESS_DB_PASSWORD", "from-the-shell")]);
    assert!(i.berth.iter().all(|d| d["kind"] != "DatabaseInstance"), "MariaDB is no Berth engine");
    assert!(i.row("mariadb", "image").unwrap().contains("MariaDB (mariadb:11.4) is not a Berth engine"));
    let wp = i.app("wordpress");
    assert_eq!(wp["metadata"]["namespace"], "wordpress", "the folder names the project");
    assert!(wp["spec"]["databases"].is_null());
    assert_eq!(i.env("wordpress", "WORDPRESS_DB_HOST").unwrap()["value"], "mariadb:3306");
    assert!(i.row("wordpress", "environment.WORDPRESS_DB_HOST").unwrap().contains("point it at the MariaDB"));
    // The shell's variable wins over the default.
    let secret = Imported::find(&i.secrets, "Secret", "wordpress-env");
    assert_eq!(secret["stringData"]["WORDPRESS_DB_PASSWORD"], "from-the-shell");
    assert!(i.row("wordpress", "volumes[1]").unwrap().contains("bind mount"));
    assert_eq!(wp["spec"]["probes"]["readiness"]["httpGet"]["path"], "/wp-login.php");
}

#[test]
fn extends_overrides_and_profiles() {
    let files = ["-f", "extends/docker-compose.yml", "-f", "extends/docker-compose.override.yml"];
    let i = import(&files, &[]);
    let api = &i.app("api")["spec"];
    assert_eq!(api["image"], "registry.example.com/acme/services:2024.11.3", "from common.yml, ${{RELEASE:-…}}");
    assert_eq!(api["replicas"], 3, "from the override file");
    assert_eq!(api["resources"]["limits"]["memory"], "256Mi", "from the extended service");
    assert_eq!(i.env("api", "LOG_LEVEL").unwrap()["value"], "warn", "the override's environment merges");
    assert_eq!(i.env("api", "LOG_FORMAT").unwrap()["value"], "json");
    // notifier extends api: its command and SERVICE_NAME win, the rest is api's.
    assert_eq!(i.env("notifier", "SERVICE_NAME").unwrap()["value"], "notifier");
    assert_eq!(i.app("notifier")["spec"]["args"], serde_json::json!(["/usr/local/bin/notifier"]));
    assert!(i.env("notifier", "API_TOKEN").unwrap()["valueFrom"].is_object(), "from .env, into a Secret");
    // A service of an inactive profile is reported, not imported.
    assert!(i.berth.iter().all(|d| d["metadata"]["name"] != "adminer"));
    assert!(i.row("adminer", "profiles").unwrap().contains("COMPOSE_PROFILES=debug"));
    for key in ["privileged", "network_mode", "pid", "volumes[0]"] {
        assert!(i.row("metrics-agent", key).unwrap().starts_with("| not mapped |"), "{key}: {}", i.report);
    }
    assert!(i.row("cache", "image").unwrap().contains("Redis"));

    let with_debug = import(&files, &[("COMPOSE_PROFILES", "debug"), ("RELEASE", "2025.1.0")]);
    assert_eq!(with_debug.app("adminer")["spec"]["image"], "adminer:4.8.1");
    assert_eq!(with_debug.app("api")["spec"]["image"], "registry.example.com/acme/services:2025.1.0");
}

/// Bad input: exit code 2, `file:line: message`, nothing written.
#[test]
fn bad_input_names_the_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("invalid.yml", "services:\n  web:\n    image: nginx\n    ports: [80\n", ":4:", "invalid YAML"),
        (
            "unknown.yml",
            "services:\n  web:\n    image: nginx\nservice:\n  db: {}\n",
            ":4:",
            "unknown top-level key \"service\"",
        ),
        (
            "noimage.yml",
            "services:\n  web:\n    image: nginx\n  worker:\n    command: celery\n",
            ":4:",
            "service \"worker\" has neither image nor build",
        ),
        (
            "required.yml",
            "services:\n  web:\n    image: nginx\n    environment:\n      KEY: ${KEY:?set KEY}\n",
            ":2:",
            "required variable KEY is missing a value: set KEY",
        ),
    ];
    for (file, yaml, line, message) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, yaml).unwrap();
        let out = dir.path().join(format!("{file}.out"));
        let run = berth(&["import", "compose", "-f", path.to_str().unwrap(), "-o", out.to_str().unwrap()], &[]);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(&format!("{}{line}", path.display())) && stderr.contains(message), "{file}: {stderr}");
        assert!(!out.exists(), "{file}: partial output written");
        let to_stdout = berth(&["import", "compose", "-f", path.to_str().unwrap()], &[]);
        assert!(to_stdout.stdout.is_empty(), "{file}: partial output on stdout");
    }
}

/// Without -o: the YAML on stdout (all objects), the report on stderr.
#[test]
fn stdout_holds_every_object_and_stderr_the_report() {
    let run = berth(&["import", "compose", "-f", "wordpress/docker-compose.yml"], &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let kinds: Vec<String> = docs(&text(&run.stdout)).iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["AppEnvironment", "Secret"]);
    assert!(text(&run.stderr).starts_with("# Migration report"));
}

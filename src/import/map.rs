//! Compose services to Berth resources: PostgreSQL and RabbitMQ services become
//! DatabaseInstances, every other service with an image or a build an AppEnvironment (with its
//! Secret and ConfigMap). Each key is either mapped (counted) or reported with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::interpolate::parse_env_file;
use super::model::{ImportError, Project, Service, as_map};
use super::processes;
use super::report::Report;
use crate::api::appenvironment::Tier;

/// What the command line adds to the compose files.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub namespace: Option<String>,
    pub tier: Tier,
    /// `--image SERVICE=REF`.
    pub images: BTreeMap<String, String>,
    /// `--host SERVICE=HOSTNAME`.
    pub hosts: BTreeMap<String, String>,
    pub postgres_version: Option<String>,
}

/// The resources of one import.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// AppEnvironments and DatabaseInstances (what `berth render` reads).
    pub berth: Vec<Value>,
    /// Secrets (they hold the compose project's secret values).
    pub secrets: Vec<Value>,
    pub config_maps: Vec<Value>,
}

/// Size of a claim or instance volume when compose says nothing (it has no sizes).
const DEFAULT_SIZE: &str = "10Gi";
/// The newest supported majors, for `latest` and untagged images.
const POSTGRES_LATEST: &str = "17";
const RABBITMQ_LATEST: &str = "4.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Postgres,
    Rabbitmq,
}

/// A database service: how apps find it and what they used to connect with.
struct Database {
    service: String,
    instance: String,
    engine: Engine,
    hosts: Vec<String>,
    user: String,
    password: String,
    database: String,
}

/// Kubernetes name of a compose name: lowercase letters, digits and '-', starting with a
/// letter, at most `max`.
pub fn k8s_name(name: &str, max: usize) -> String {
    let mut out: String =
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "s-");
    }
    let cut: String = out.chars().take(max).collect();
    let trimmed = cut.trim_end_matches('-');
    let mut collapsed = String::new();
    for c in trimmed.chars() {
        if !(c == '-' && collapsed.ends_with('-')) {
            collapsed.push(c);
        }
    }
    collapsed
}

/// The repository name of an image (`docker.io/library/postgres:16-alpine` → `postgres`) and
/// its tag.
fn image_parts(image: &str) -> (String, Option<String>) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        Some((repo, tag)) => (repo.to_ascii_lowercase(), Some(tag.to_string())),
        None => (last.to_ascii_lowercase(), None),
    }
}

fn engine_of(image: &str) -> Option<Engine> {
    match image_parts(image).0.as_str() {
        "postgres" | "postgresql" => Some(Engine::Postgres),
        "rabbitmq" => Some(Engine::Rabbitmq),
        _ => None,
    }
}

/// Databases and stores Berth does not run, and what to do instead.
fn other_store(image: &str) -> Option<&'static str> {
    Some(match image_parts(image).0.as_str() {
        "mysql" | "percona" => "MySQL",
        "mariadb" => "MariaDB",
        "mongo" | "mongodb" => "MongoDB",
        "redis" | "valkey" | "keydb" => "Redis",
        "memcached" => "Memcached",
        "elasticsearch" | "opensearch" => "Elasticsearch/OpenSearch",
        "cassandra" => "Cassandra",
        "influxdb" => "InfluxDB",
        _ => return None,
    })
}

/// The PostgreSQL version for a tag: supported majors as they are, others the nearest one.
fn postgres_version(tag: Option<&str>) -> (String, Option<String>) {
    let digits = |t: &str| t.split(['-', '.']).next().and_then(|m| m.parse::<u32>().ok());
    match tag.and_then(digits) {
        Some(m @ 14..=17) => (m.to_string(), None),
        Some(m) if m < 14 => (
            "14".into(),
            Some(format!(
                "PostgreSQL {m} is not supported (14–17): the instance runs 14; move the data with a dump and restore (pg_dump, or a Berth Backup and Restore), not by copying the data directory"
            )),
        ),
        Some(m) => (
            POSTGRES_LATEST.into(),
            Some(format!(
                "PostgreSQL {m} is not supported yet (14–17): the instance runs {POSTGRES_LATEST}; a dump of {m} may use features {POSTGRES_LATEST} lacks"
            )),
        ),
        None => (
            POSTGRES_LATEST.into(),
            Some(format!(
                "tag {:?} names no major version: the instance runs {POSTGRES_LATEST}, the newest supported; pin it with --postgres-version",
                tag.unwrap_or("latest")
            )),
        ),
    }
}

fn rabbitmq_version(tag: Option<&str>) -> (String, Option<String>) {
    let nums: Vec<u32> = tag
        .unwrap_or_default()
        .split('-')
        .next()
        .unwrap_or_default()
        .split('.')
        .map_while(|p| p.parse().ok())
        .collect();
    match nums.as_slice() {
        [3, 13, ..] => ("3.13".into(), None),
        [4, minor, ..] => (format!("4.{minor}"), None),
        [4] => (RABBITMQ_LATEST.into(), None),
        [3, ..] => (
            "3.13".into(),
            Some(format!("RabbitMQ {} is not supported (3.13, 4.x): the instance runs 3.13", tag.unwrap_or_default())),
        ),
        _ => (
            RABBITMQ_LATEST.into(),
            Some(format!("tag {:?} names no version: the instance runs {RABBITMQ_LATEST}", tag.unwrap_or("latest"))),
        ),
    }
}

/// Splits a compose command string as a POSIX shell would (quotes, backslashes).
pub fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

pub(super) fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => shell_words(s),
        Value::Array(items) => items.iter().map(scalar).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Seconds of a compose duration (`1m30s`, `10s`, `500ms`); rounded up, at least 1.
fn seconds(v: &Value) -> Option<i64> {
    let s = scalar(v);
    let mut total = 0f64;
    let mut num = String::new();
    let mut rest = s.as_str();
    while !rest.is_empty() {
        let c = rest.chars().next()?;
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, factor) = [("ms", 0.001), ("us", 0.000001), ("h", 3600.0), ("m", 60.0), ("s", 1.0)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))?;
        total += num.parse::<f64>().ok()? * factor;
        num.clear();
        rest = &rest[unit.len()..];
    }
    if !num.is_empty() {
        total += num.parse::<f64>().ok()?;
    }
    Some((total.ceil() as i64).max(1))
}

/// A compose memory size (`512M`, `1g`, `1024k`, bytes) as a Kubernetes quantity (binary units,
/// as compose means them).
fn memory(v: &Value) -> Option<String> {
    let s = scalar(v).trim().to_ascii_lowercase();
    let s = s.trim_end_matches('b');
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    num.parse::<f64>().ok()?;
    let unit = match unit {
        "" => "",
        "k" => "Ki",
        "m" => "Mi",
        "g" => "Gi",
        "t" => "Ti",
        _ => return None,
    };
    Some(format!("{num}{unit}"))
}

/// Maps the project; `Err` only for inputs compose itself would refuse (a missing env_file or
/// secret file).
pub fn map(project: &Project, opts: &Options, report: &mut Report) -> Result<Resources, ImportError> {
    let project_name = project_name(project);
    let namespace = opts.namespace.clone().unwrap_or_else(|| k8s_name(&project_name, 63));
    let mut out = Resources::default();

    // Databases first: apps refer to them.
    let mut databases = Vec::new();
    let mut others: Vec<(String, &'static str, Vec<String>)> = Vec::new();
    for s in &project.services {
        let image = s.body.get("image").map(scalar).unwrap_or_default();
        if let Some(engine) = engine_of(&image) {
            let (instance, db) = database_instance(s, engine, &namespace, project, opts, report);
            out.berth.push(instance);
            databases.push(db);
        } else if let Some(kind) = other_store(&image) {
            let hosts = hostnames(s);
            report.unmapped(
                &s.name,
                "image",
                format!("{kind} ({image}) is not a Berth engine: run it as a managed service of your cloud or with its own operator, move its data there, and point the apps' variables that name {:?} at it; the apps still convert", s.name),
            );
            others.push((s.name.clone(), kind, hosts));
        }
    }
    let db_names: BTreeSet<&str> =
        databases.iter().map(|d| d.service.as_str()).chain(others.iter().map(|o| o.0.as_str())).collect();
    let apps: Vec<&Service> = project.services.iter().filter(|s| !db_names.contains(s.name.as_str())).collect();
    // Port-less processes of another app's image join that app (workers, cron jobs).
    let folded = processes::folds(&apps, project);
    let members = |host: &Service| -> Vec<&Service> {
        apps.iter().copied().filter(|s| folded.get(&s.name) == Some(&host.name)).collect()
    };
    let hosts: Vec<&Service> = apps.iter().copied().filter(|s| !folded.contains_key(&s.name)).collect();

    // Networks: who may reach whom (services on no network are on `default`); an app is on
    // the networks of its folded processes too.
    let networks_of = |s: &Service| -> BTreeSet<String> {
        if s.body.contains_key("network_mode") {
            return BTreeSet::new();
        }
        match s.body.get("networks") {
            Some(Value::Array(items)) => items.iter().map(scalar).collect(),
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => BTreeSet::from(["default".to_string()]),
        }
    };
    let group_networks = |s: &Service| -> BTreeSet<String> {
        let mut all = networks_of(s);
        for m in members(s) {
            all.extend(networks_of(m));
        }
        all
    };
    let mut claimed_volumes: BTreeMap<String, String> = BTreeMap::new();
    for s in &hosts {
        let mine = group_networks(s);
        let peers: Vec<String> = hosts
            .iter()
            .filter(|o| o.name != s.name && !group_networks(o).is_disjoint(&mine))
            .map(|o| k8s_name(&o.name, 40))
            .collect();
        let (workers, cron_jobs) = processes::entries(&k8s_name(&s.name, 40), &members(s), report);
        let app = app_environment(
            s,
            &AppContext {
                project,
                opts,
                namespace: &namespace,
                project_name: &project_name,
                databases: &databases,
                others: &others,
                peers,
                workers,
                cron_jobs,
            },
            &mut claimed_volumes,
            &mut out,
            report,
        )?;
        out.berth.push(app);
    }
    for (key, _) in &project.networks {
        report.mapped("(project)", &format!("networks.{key}"));
    }
    Ok(out)
}

fn hostnames(s: &Service) -> Vec<String> {
    let mut hosts = vec![s.name.clone()];
    for key in ["container_name", "hostname"] {
        if let Some(h) = s.body.get(key).and_then(Value::as_str) {
            hosts.push(h.to_string());
        }
    }
    if let Some(Value::Object(nets)) = s.body.get("networks") {
        for net in nets.values() {
            hosts.extend(net.get("aliases").and_then(Value::as_array).into_iter().flatten().map(scalar));
        }
    }
    hosts
}

/// The service's environment: `env_file` entries, then `environment`, with compose's rules
/// for a name without value (taken from the shell or `.env`).
pub(super) fn environment(
    s: &Service,
    project: &Project,
    report: &mut Report,
) -> Result<Vec<(String, String)>, ImportError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    let files: Vec<(String, bool)> = match s.body.get("env_file") {
        Some(Value::String(f)) => vec![(f.clone(), true)],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::Object(m) => (
                    m.get("path").map(scalar).unwrap_or_default(),
                    m.get("required").and_then(Value::as_bool).unwrap_or(true),
                ),
                other => (scalar(other), true),
            })
            .collect(),
        _ => Vec::new(),
    };
    let base = s.file.parent().unwrap_or(Path::new("."));
    for (file, required) in files {
        let path = base.join(&file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) if !required => continue,
            Err(e) => {
                return Err(ImportError {
                    file: s.file.display().to_string(),
                    line: s.line,
                    message: format!("service {:?}: env_file {}: {e}", s.name, path.display()),
                });
            }
        };
        let pairs = parse_env_file(&text, &project.vars).map_err(|(line, m)| ImportError {
            file: path.display().to_string(),
            line: line as u64,
            message: m,
        })?;
        for (k, v) in pairs {
            set(&mut env, k, v);
        }
    }
    if let Some(e) = s.body.get("environment") {
        for (k, v) in as_map(e) {
            match v {
                Value::Null => match project.vars.get(&k) {
                    Some(value) => set(&mut env, k, value.to_string()),
                    None => report.unmapped(
                        &s.name,
                        format!("environment.{k}"),
                        "has no value here and none in the shell or .env: left out; set it in spec.env",
                    ),
                },
                other => set(&mut env, k, scalar(&other)),
            }
        }
    }
    Ok(env)
}

fn database_instance(
    s: &Service,
    engine: Engine,
    namespace: &str,
    project: &Project,
    opts: &Options,
    report: &mut Report,
) -> (Value, Database) {
    let name = k8s_name(&s.name, 40);
    let image = s.body.get("image").map(scalar).unwrap_or_default();
    let tag = image_parts(&image).1;
    report.mapped(&s.name, "image");
    let env: BTreeMap<String, String> = environment(s, project, report).unwrap_or_default().into_iter().collect();
    let (version, why) = match (engine, &opts.postgres_version) {
        (Engine::Postgres, Some(v)) => {
            report.note(&s.name, "image", format!("version {v} from --postgres-version"));
            (v.clone(), None)
        }
        (Engine::Postgres, None) => postgres_version(tag.as_deref()),
        (Engine::Rabbitmq, _) => rabbitmq_version(tag.as_deref()),
    };
    if let Some(why) = why {
        report.changed(&s.name, "image", why);
    }
    let mut spec = json!({
        "engine": if engine == Engine::Postgres { "postgres" } else { "rabbitmq" },
        "version": version,
        "storage": {"size": DEFAULT_SIZE},
    });
    let (user, password, database) = match engine {
        Engine::Postgres => {
            let user = env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".into());
            let db = env.get("POSTGRES_DB").cloned().unwrap_or_else(|| user.clone());
            if user != "postgres" {
                spec["roles"] = json!([{"name": user}]);
            }
            if db != "postgres" {
                spec["databases"] =
                    if user != "postgres" { json!([{"name": db, "owner": user}]) } else { json!([{"name": db}]) };
            }
            (user, env.get("POSTGRES_PASSWORD").cloned().unwrap_or_default(), db)
        }
        Engine::Rabbitmq => {
            let user = env.get("RABBITMQ_DEFAULT_USER").cloned().unwrap_or_else(|| "guest".into());
            let vhost = env.get("RABBITMQ_DEFAULT_VHOST").cloned().unwrap_or_else(|| "/".into());
            if vhost != "/" {
                spec["vhosts"] = json!([vhost]);
            }
            if user != "guest" {
                spec["users"] = json!([{"name": user, "permissions": [{"vhost": vhost}]}]);
            }
            (user, env.get("RABBITMQ_DEFAULT_PASS").cloned().unwrap_or_default(), vhost)
        }
    };
    for key in env.keys() {
        let (mapped, why) = match key.as_str() {
            "POSTGRES_USER" => (true, "a role of the instance"),
            "POSTGRES_DB" => (true, "a database of the instance"),
            "RABBITMQ_DEFAULT_USER" => (true, "a user of the instance"),
            "RABBITMQ_DEFAULT_VHOST" => (true, "a vhost of the instance"),
            "POSTGRES_PASSWORD" | "RABBITMQ_DEFAULT_PASS" => {
                (false, "Berth generates the passwords and keeps them in Secrets; the apps get them injected")
            }
            _ => (
                false,
                "no DatabaseInstance setting for it; postgresql.conf settings go in spec.parameters, rabbitmq.conf ones in spec.config",
            ),
        };
        if mapped {
            report.mapped(&s.name, &format!("environment.{key}"));
        } else if key.contains("PASSWORD") || key.ends_with("_PASS") {
            report.changed(&s.name, format!("environment.{key}"), why);
        } else {
            report.unmapped(&s.name, format!("environment.{key}"), why);
        }
    }
    for (key, value) in &s.body {
        match key.as_str() {
            "image" | "environment" | "env_file" => {}
            "volumes" => {
                let named = value.as_array().into_iter().flatten().filter_map(|v| volume_source(v).filter(|(src, _)| is_named(src)));
                for (src, _) in named {
                    report.changed(&s.name, "volumes", format!("named volume {src:?} becomes the instance's storage ({DEFAULT_SIZE} assumed: compose has no size; set spec.storage.size); move its data with a dump and restore"));
                }
                for v in value.as_array().into_iter().flatten().filter(|v| volume_source(v).is_some_and(|(src, _)| !is_named(&src))) {
                    report.unmapped(&s.name, "volumes", format!("{}: host files (e.g. init scripts) do not reach the instance; create the schema from the app's migration instead", scalar(v)));
                }
            }
            "ports" | "expose" => report.note(&s.name, key.as_str(), format!("the instance's Service {name} serves the standard port inside the cluster; nothing is published on a host")),
            "healthcheck" => report.note(&s.name, "healthcheck", "Berth probes the server itself"),
            "restart" | "container_name" | "hostname" | "networks" | "depends_on" => report.mapped(&s.name, key),
            "deploy" => {
                if let Some(r) = resources(value) {
                    spec["resources"] = r;
                    report.mapped(&s.name, "deploy.resources");
                } else {
                    report.unmapped(&s.name, "deploy", "only deploy.resources carries over to a DatabaseInstance");
                }
            }
            "command" => report.unmapped(&s.name, "command", "server flags: put postgresql.conf settings in spec.parameters (rabbitmq.conf in spec.config)"),
            other => report.unmapped(&s.name, other, "no DatabaseInstance setting for it"),
        }
    }
    let instance = json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "DatabaseInstance",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": project_label(&project_name(project))}},
        "spec": spec,
    });
    let db =
        Database { service: s.name.clone(), instance: name, engine, hosts: hostnames(s), user, password, database };
    (instance, db)
}

/// The compose project name: `name:`, else the folder of the first file (as compose does).
fn project_name(project: &Project) -> String {
    project.name.clone().unwrap_or_else(|| {
        std::fs::canonicalize(&project.dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "app".into())
    })
}

fn project_label(name: &str) -> String {
    crate::resources::meta::label_value(name).unwrap_or_else(|| "compose".into())
}

/// `deploy.resources` as Kubernetes resources.
fn resources(deploy: &Value) -> Option<Value> {
    let r = deploy.get("resources")?;
    let part = |section: &str| {
        let s = r.get(section)?;
        let mut m = Map::new();
        if let Some(cpu) = s.get("cpus") {
            m.insert("cpu".into(), Value::String(scalar(cpu)));
        }
        if let Some(mem) = s.get("memory").and_then(memory) {
            m.insert("memory".into(), Value::String(mem));
        }
        (!m.is_empty()).then_some(Value::Object(m))
    };
    let mut out = Map::new();
    if let Some(l) = part("limits") {
        out.insert("limits".into(), l);
    }
    if let Some(req) = part("reservations") {
        out.insert("requests".into(), req);
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// `(source, target)` of a volume entry, either syntax; `None` for tmpfs and anonymous volumes.
pub(super) fn volume_source(v: &Value) -> Option<(String, String)> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            (parts.len() >= 2).then(|| (parts[0].to_string(), parts[1].to_string()))
        }
        Value::Object(m) if m.get("type").and_then(Value::as_str) != Some("tmpfs") => {
            Some((m.get("source").map(scalar)?, m.get("target").map(scalar)?))
        }
        _ => None,
    }
}

fn is_named(source: &str) -> bool {
    !source.is_empty() && !source.starts_with(['.', '/', '~', '$'])
}

struct AppContext<'a> {
    project: &'a Project,
    opts: &'a Options,
    namespace: &'a str,
    project_name: &'a str,
    databases: &'a [Database],
    others: &'a [(String, &'static str, Vec<String>)],
    /// Apps that share a network with this one.
    peers: Vec<String>,
    /// `spec.workers` and `spec.cronJobs` from the services folded into this one.
    workers: Vec<Value>,
    cron_jobs: Vec<Value>,
}

/// Whether `value` names `host` as a host (`host`, `host:5432`, `…@host/…`, `//host:…`).
fn names_host(value: &str, host: &str) -> bool {
    let mut start = 0;
    while let Some(i) = value[start..].find(host) {
        let at = start + i;
        let before = value[..at].chars().last();
        let after = value[at + host.len()..].chars().next();
        let left = before.is_none_or(|c| matches!(c, '@' | '/' | '=' | ',' | ' ' | ';'));
        let right = after.is_none_or(|c| matches!(c, ':' | '/' | ',' | ' ' | ';' | '?'));
        if left && right {
            return true;
        }
        start = at + host.len();
    }
    false
}

const SECRET_WORDS: &[&str] = &["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"];

fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Why a service key is not carried over (and what to do instead).
pub(super) fn unmapped_reason(key: &str) -> &'static str {
    match key {
        "privileged" => {
            "Berth's pods pass Pod Security restricted: a privileged container is refused; find what needs it (usually nothing does)"
        }
        "cap_add" => {
            "added capabilities are refused under Pod Security restricted (NET_BIND_SERVICE aside, set in spec.securityContext); listen on a port above 1024 instead"
        }
        "network_mode" => "pods have their own network namespace; there is no host or shared-container networking",
        "pid" | "ipc" => "pods do not share the host's namespaces under Pod Security restricted",
        "devices" => "host devices cannot be mounted under Pod Security restricted",
        "security_opt" => {
            "Berth sets RuntimeDefault seccomp and no privilege escalation; custom profiles are not mapped"
        }
        "working_dir" => "AppEnvironment has no working directory: set WORKDIR in the image",
        "labels" => {
            "container labels are not pod labels (other rules): add spec.podLabels or spec.podAnnotations by hand"
        }
        "logging" => "the cluster collects stdout and stderr; logging drivers do not apply",
        "stop_grace_period" | "stop_signal" => "no AppEnvironment field: the pod gets Kubernetes' 30 s and SIGTERM",
        "extra_hosts" | "dns" | "dns_search" | "domainname" => {
            "cluster DNS resolves Services by name; static host entries are not mapped"
        }
        "ulimits" | "sysctls" | "shm_size" | "mem_swappiness" | "oom_score_adj" | "cpu_shares" | "cpuset" => {
            "kernel and runtime limits are the node's business in Kubernetes"
        }
        "tty" | "stdin_open" => "pods run without a terminal",
        "init" => "no init process option: build the image with tini or dumb-init if the app leaves zombies",
        "volumes_from" => "pods cannot share another container's volumes: use a claim with accessMode ReadWriteMany",
        "links" | "external_links" => "Services resolve by name; links are not needed",
        "platform" => "the node's architecture decides: build a multi-arch image",
        "scale" => "use deploy.replicas (spec.replicas)",
        "develop" => "compose watch is a development tool",
        "runtime" | "isolation" | "cgroup_parent" | "cgroup" | "userns_mode" => {
            "runtime settings are the node's business"
        }
        _ => "no AppEnvironment field for it",
    }
}

fn app_environment(
    s: &Service,
    ctx: &AppContext,
    claimed_volumes: &mut BTreeMap<String, String>,
    out: &mut Resources,
    report: &mut Report,
) -> Result<Value, ImportError> {
    let svc = s.name.as_str();
    let name = k8s_name(svc, 40);
    let body = &s.body;
    let mut spec = Map::new();
    spec.insert("tier".into(), json!(ctx.opts.tier.as_str()));

    // Image.
    let image = match (ctx.opts.images.get(svc), body.get("image").map(scalar)) {
        (Some(img), _) => {
            report.changed(
                svc,
                if body.contains_key("build") { "build" } else { "image" },
                format!("image {img} from --image"),
            );
            img.clone()
        }
        (None, Some(img)) => {
            report.mapped(svc, "image");
            if body.contains_key("build") {
                report.note(svc, "build", format!("built from source by compose; the image {img} must be pushed to a registry the cluster can pull from"));
            }
            img
        }
        (None, None) => {
            let placeholder = format!("registry.invalid/{}/{name}:replace-me", k8s_name(ctx.project_name, 40));
            let context = match body.get("build") {
                Some(Value::Object(b)) => b.get("context").map(scalar).unwrap_or_else(|| ".".into()),
                Some(other) => scalar(other),
                None => ".".into(),
            };
            report.changed(svc, "build", format!("built from {context}: build and push the image, then import again with --image {svc}=REGISTRY/IMAGE:TAG (the output has the placeholder {placeholder}, which no cluster can pull)"));
            placeholder
        }
    };
    spec.insert("image".into(), json!(image));
    if let Some(p) = body.get("pull_policy").and_then(Value::as_str) {
        let policy = match p {
            "always" => Some("Always"),
            "never" => Some("Never"),
            "missing" | "if_not_present" => Some("IfNotPresent"),
            _ => None,
        };
        match policy {
            Some(p) => {
                spec.insert("imagePullPolicy".into(), json!(p));
                report.mapped(svc, "pull_policy");
            }
            None => report.unmapped(
                svc,
                "pull_policy",
                format!("{p:?} has no Kubernetes pull policy (Always, IfNotPresent, Never)"),
            ),
        }
    }
    if let Some(e) = body.get("entrypoint") {
        spec.insert("command".into(), json!(string_list(e)));
        report.mapped(svc, "entrypoint");
    }
    if let Some(c) = body.get("command") {
        spec.insert("args".into(), json!(string_list(c)));
        report.mapped(svc, "command");
    }

    // Databases this app reaches: by depends_on or by a variable naming the service.
    let env = environment(s, ctx.project, report)?;
    let depends: Vec<String> = match body.get("depends_on") {
        Some(Value::Array(items)) => items.iter().map(scalar).collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let used: Vec<&Database> = ctx
        .databases
        .iter()
        .filter(|d| depends.contains(&d.service) || env.iter().any(|(_, v)| d.hosts.iter().any(|h| names_host(v, h))))
        .collect();
    let count = |e: Engine| used.iter().filter(|d| d.engine == e).count();
    let prefix = |d: &Database| match d.engine {
        Engine::Postgres if count(Engine::Postgres) == 1 => "DATABASE".to_string(),
        Engine::Rabbitmq if count(Engine::Rabbitmq) == 1 => "AMQP".to_string(),
        _ => crate::resources::appenvironment::databases::name_prefix(&d.instance),
    };
    if !used.is_empty() {
        spec.insert("databases".into(), Value::Array(used.iter().map(|d| json!({"name": d.instance})).collect()));
    }

    // Environment: database values become references to the injected variables, secrets go
    // into a Secret.
    let mut env_out: Vec<Value> = Vec::new();
    let mut secret_data: BTreeMap<String, String> = BTreeMap::new();
    let secret_name = format!("{name}-env");
    'vars: for (k, v) in &env {
        for d in &used {
            let p = prefix(d);
            let injected = ["URL", "HOST", "PORT", "USERNAME", "PASSWORD", "NAME"].map(|s| format!("{p}_{s}"));
            let port = if d.engine == Engine::Postgres { "5432" } else { "5672" };
            let reference = if injected.contains(k) {
                report.changed(
                    svc,
                    format!("environment.{k}"),
                    format!(
                        "dropped: {k} is injected from DatabaseInstance {} ({}-credentials)",
                        d.instance, d.instance
                    ),
                );
                continue 'vars;
            } else if d.hosts.iter().any(|h| names_host(v, h) && v.contains("://")) {
                Some("URL")
            } else if d.hosts.iter().any(|h| v == h) {
                Some("HOST")
            } else if !d.password.is_empty() && *v == d.password {
                Some("PASSWORD")
            } else if *v == d.user && k.to_ascii_uppercase().contains("USER") {
                Some("USERNAME")
            } else if *v == port && k.to_ascii_uppercase().contains("PORT") {
                Some("PORT")
            } else if d.engine == Engine::Postgres
                && *v == d.database
                && ["DB", "DATABASE", "NAME"].iter().any(|w| k.to_ascii_uppercase().contains(w))
            {
                Some("NAME")
            } else {
                None
            };
            // `db:5432/shop?…`: a host-relative address keeps its tail.
            let tail = d.hosts.iter().find_map(|h| v.strip_prefix(h.as_str()).filter(|r| r.starts_with([':', '/'])));
            if let (None, Some(rest)) = (reference, tail) {
                let rest = rest
                    .strip_prefix(&format!(":{port}"))
                    .map(|r| format!(":$({p}_PORT){r}"))
                    .unwrap_or(rest.to_string());
                env_out.push(json!({"name": k, "value": format!("$({p}_HOST){rest}")}));
                report.changed(
                    svc,
                    format!("environment.{k}"),
                    format!(
                        "named the host of compose service {:?}: now $({p}_HOST), injected from DatabaseInstance {}",
                        d.service, d.instance
                    ),
                );
                continue 'vars;
            }
            if let Some(part) = reference {
                let var = format!("{p}_{part}");
                env_out.push(json!({"name": k, "value": format!("$({var})")}));
                // Never the value: a URL holds the old password.
                let what = match part {
                    "URL" => "a connection URL",
                    "HOST" => "the host",
                    "PASSWORD" => "the password",
                    "USERNAME" => "the user",
                    "PORT" => "the port",
                    _ => "the database name",
                };
                report.changed(
                    svc,
                    format!("environment.{k}"),
                    format!(
                        "was {what} of compose service {:?}: now $({var}), injected from DatabaseInstance {}",
                        d.service, d.instance
                    ),
                );
                continue 'vars;
            }
        }
        for (other, kind, hosts) in ctx.others {
            if hosts.iter().any(|h| names_host(v, h)) {
                report.changed(svc, format!("environment.{k}"), format!("names compose service {other:?} ({kind}, not imported): point it at the {kind} that replaces it"));
            }
        }
        if looks_secret(k) && !v.is_empty() {
            secret_data.insert(k.clone(), v.clone());
            env_out.push(json!({"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": k}}}));
            report.changed(
                svc,
                format!("environment.{k}"),
                format!("looks like a secret: moved to Secret {secret_name} (secrets.yaml) and referenced"),
            );
        } else {
            env_out.push(json!({"name": k, "value": v}));
            report.mapped(svc, &format!("environment.{k}"));
        }
    }
    if body.contains_key("env_file") {
        report.mapped(svc, "env_file");
    }
    if !env_out.is_empty() {
        spec.insert("env".into(), Value::Array(env_out));
    }
    for d in &depends {
        if used.iter().any(|u| u.service == *d) {
            report.mapped(svc, &format!("depends_on.{d}"));
        } else {
            report.note(svc, format!("depends_on.{d}"), format!("Kubernetes starts apps independently: {svc} must retry until {d} answers (its readiness probe keeps it out of the Service meanwhile)"));
        }
    }
    if used.iter().any(|d| d.engine == Engine::Postgres) {
        report.note(svc, "databases", "DATABASE_URL connects as the instance's owner to database postgres; a role of the instance has its own Secret <instance>-user-<role> with the database it owns (use it in spec.env with secretKeyRef for least privilege)");
    }

    // Ports.
    let mut ports: Vec<Value> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut add_port = |container: i64, protocol: &str, ports: &mut Vec<Value>| {
        if !seen.insert((container, protocol.to_string())) {
            return;
        }
        let n = ports.len();
        let port_name = if n == 0 && protocol == "TCP" {
            "http".to_string()
        } else {
            format!("{}-{container}", protocol.to_ascii_lowercase())
        };
        ports.push(json!({"name": port_name, "containerPort": container, "protocol": protocol}));
    };
    for (i, p) in body.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let (target, published, protocol) = match p {
            Value::Object(m) => (
                m.get("target").map(scalar).unwrap_or_default(),
                m.get("published").map(scalar),
                m.get("protocol").map(scalar).unwrap_or_else(|| "tcp".into()),
            ),
            other => {
                let s = scalar(other);
                let (spec_part, protocol) =
                    s.split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or((s.clone(), "tcp".into()));
                let parts: Vec<&str> = spec_part.rsplitn(2, ':').collect();
                (parts[0].to_string(), parts.get(1).map(|p| p.rsplit(':').next().unwrap_or(p).to_string()), protocol)
            }
        };
        match target.parse::<i64>() {
            Ok(t) if (1..=65535).contains(&t) => {
                add_port(t, &protocol.to_ascii_uppercase(), &mut ports);
                report.mapped(svc, &format!("ports[{i}]"));
                if let Some(host) = published.filter(|h| !h.is_empty()) {
                    report.note(
                        svc,
                        format!("ports[{i}]"),
                        format!(
                            "host port {host} is not published: reach the app through Service {name}{}",
                            if ctx.opts.hosts.contains_key(svc) {
                                " and its Ingress"
                            } else {
                                ", or give it an Ingress with --host"
                            }
                        ),
                    );
                }
            }
            _ => report.unmapped(
                svc,
                format!("ports[{i}]"),
                format!("{target:?}: port ranges and non-numeric ports are not mapped; list each port"),
            ),
        }
    }
    for p in body.get("expose").and_then(Value::as_array).into_iter().flatten() {
        if let Ok(t) = scalar(p).split('/').next().unwrap_or_default().parse::<i64>() {
            add_port(t, "TCP", &mut ports);
        }
    }
    if body.contains_key("expose") {
        report.mapped(svc, "expose");
    }
    if ports.is_empty() {
        report.note(svc, "ports", "the service listens on no port: the Service routes to 8080, which nothing answers (harmless); if it runs the image of another service, consider that app's spec.workers");
    } else {
        spec.insert("ports".into(), Value::Array(ports.clone()));
    }
    if let Some(host) = ctx.opts.hosts.get(svc) {
        spec.insert("ingress".into(), json!({"hosts": [host]}));
        report.note(svc, "--host", format!("Ingress for {host}; add ingress.tls with a cert-manager issuer for HTTPS"));
    }

    // Health check.
    if let Some(hc) = body.get("healthcheck") {
        match probes(hc, &ports) {
            Some(p) => {
                spec.insert("probes".into(), p);
                report.mapped(svc, "healthcheck");
            }
            None => report.note(svc, "healthcheck", "disabled or empty: no probes"),
        }
    }

    // Resources, replicas, user.
    let mut replicas: Option<i64> = None;
    if let Some(deploy) = body.get("deploy").and_then(Value::as_object) {
        for (k, v) in deploy {
            match k.as_str() {
                "replicas" => {
                    replicas = v.as_i64();
                    report.mapped(svc, "deploy.replicas");
                }
                "resources" => match resources(&json!({"resources": v})) {
                    Some(r) => {
                        spec.insert("resources".into(), r);
                        report.mapped(svc, "deploy.resources");
                    }
                    None => report.unmapped(
                        svc,
                        "deploy.resources",
                        "only cpus and memory of limits and reservations carry over",
                    ),
                },
                "restart_policy" => report.note(svc, "deploy.restart_policy", "a Deployment always restarts its pods"),
                "update_config" | "rollback_config" => {
                    report.unmapped(svc, format!("deploy.{k}"), "set spec.rollout (maxSurge, maxUnavailable) instead")
                }
                "placement" => {
                    report.unmapped(svc, "deploy.placement", "set spec.nodeSelector or spec.tolerations instead")
                }
                other => report.unmapped(svc, format!("deploy.{other}"), "no AppEnvironment field for it"),
            }
        }
    }
    if let Some(u) = body.get("user").map(scalar) {
        let (uid, gid) =
            u.split_once(':').map(|(a, b)| (a.to_string(), Some(b.to_string()))).unwrap_or((u.clone(), None));
        match uid.parse::<i64>() {
            Ok(0) => report.unmapped(svc, "user", "root is refused by Pod Security restricted: run the image as a numeric non-root user and set spec.securityContext.runAsUser"),
            Ok(n) => {
                let mut sc = json!({"runAsUser": n});
                if let Some(g) = gid.and_then(|g| g.parse::<i64>().ok()).filter(|g| *g > 0) {
                    sc["runAsGroup"] = json!(g);
                }
                spec.insert("securityContext".into(), sc);
                report.mapped(svc, "user");
            }
            Err(_) if uid == "root" => report.unmapped(svc, "user", "root is refused by Pod Security restricted: run the image as a numeric non-root user and set spec.securityContext.runAsUser"),
            Err(_) => report.unmapped(svc, "user", format!("{u:?} is a name: Kubernetes cannot check that it is not root; set spec.securityContext.runAsUser to its numeric UID")),
        }
    }

    // Volumes, secrets, configs.
    let mut volumes: Vec<Value> = Vec::new();
    let mut claims = 0;
    for (i, v) in body.get("volumes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let key = format!("volumes[{i}]");
        let tmpfs = v.get("type").and_then(Value::as_str) == Some("tmpfs");
        match volume_source(v) {
            Some((src, target)) if is_named(&src) => {
                let vol_name = k8s_name(&src, 40);
                if let Some(owner) = claimed_volumes.get(&src).filter(|o| *o != svc) {
                    report.unmapped(svc, key, format!("named volume {src:?} is already the claim of {owner}: a claim belongs to one app; share files through object storage, or mount the claim in {owner}'s spec.workers with accessMode ReadWriteMany"));
                    continue;
                }
                claimed_volumes.insert(src.clone(), svc.to_string());
                volumes.push(json!({"name": vol_name, "mountPath": target, "claim": {"size": DEFAULT_SIZE}}));
                claims += 1;
                report.changed(svc, key, format!("named volume {src:?} becomes claim {name}-{vol_name} ({DEFAULT_SIZE} assumed: compose has no size), kept when the app is deleted and backed up by BackupPolicies; copy its data in once"));
            }
            Some((src, _)) => report.unmapped(svc, key, format!("bind mount of host path {src:?}: the node's files are not the old server's; bake them into the image, use configs: (a ConfigMap) or a named volume (a claim)")),
            None if tmpfs || v.is_string() => {
                let target = v.get("target").map(scalar).unwrap_or_else(|| scalar(v));
                volumes.push(json!({"name": format!("scratch-{i}"), "mountPath": target, "emptyDir": if tmpfs {json!({"medium": "Memory"})} else {json!({})}}));
                report.changed(svc, key, format!("{} volume at {target}: an emptyDir, emptied when the pod goes", if tmpfs { "tmpfs" } else { "anonymous" }));
            }
            None => report.unmapped(svc, key, "volume entry without source and target"),
        }
    }
    for (i, t) in match body.get("tmpfs") {
        Some(Value::Array(items)) => items.iter().map(scalar).collect::<Vec<_>>(),
        Some(other) => vec![scalar(other)],
        None => Vec::new(),
    }
    .into_iter()
    .enumerate()
    {
        let target = t.split(':').next().unwrap_or_default().to_string();
        volumes.push(json!({"name": format!("tmpfs-{i}"), "mountPath": target, "emptyDir": {"medium": "Memory"}}));
        report.mapped(svc, &format!("tmpfs[{i}]"));
    }
    files_volume(s, ctx, "secrets", &name, &mut volumes, out, report)?;
    files_volume(s, ctx, "configs", &name, &mut volumes, out, report)?;
    if !volumes.is_empty() {
        spec.insert("volumes".into(), Value::Array(volumes));
    }
    match (claims > 0, replicas) {
        (true, Some(n)) if n > 1 => {
            if let Some(Value::Array(vs)) = spec.get_mut("volumes") {
                for v in vs.iter_mut().filter(|v| v.get("claim").is_some()) {
                    v["claim"]["accessMode"] = json!("ReadWriteMany");
                }
            }
            spec.insert("replicas".into(), json!(n));
            report.changed(svc, "deploy.replicas", format!("{n} replicas share its claims: accessMode ReadWriteMany, which needs a storage class that offers it (NFS, CephFS, EFS, Filestore)"));
        }
        (true, _) => {
            spec.insert("replicas".into(), json!(1));
            spec.insert("rollout".into(), json!({"strategy": "Recreate"}));
            report.note(
                svc,
                "volumes",
                "one replica with rollout.strategy Recreate: a ReadWriteOnce claim is one node's at a time",
            );
        }
        (false, Some(n)) => {
            spec.insert("replicas".into(), json!(n));
        }
        (false, None) => {}
    }

    if !ctx.workers.is_empty() {
        spec.insert("workers".into(), json!(ctx.workers));
    }
    if !ctx.cron_jobs.is_empty() {
        spec.insert("cronJobs".into(), json!(ctx.cron_jobs));
    }

    // Networks: who may reach the app.
    let mut np = json!({});
    if !ctx.peers.is_empty() {
        np["allowFromApps"] = json!(ctx.peers);
    }
    spec.insert("networkPolicy".into(), np);
    report.note(svc, "networks", if ctx.peers.is_empty() {
        "shares no network with another app: no other app of the namespace may reach it (the ingress controller may)".to_string()
    } else {
        format!("reachable from {} (shared compose networks), as spec.networkPolicy.allowFromApps", ctx.peers.join(", "))
    });
    if let Some(Value::Object(nets)) = body.get("networks") {
        for (net, cfg) in nets {
            if cfg.get("aliases").is_some() {
                report.unmapped(
                    svc,
                    format!("networks.{net}.aliases"),
                    format!("only the Service name {name} resolves; change the clients or add Services by hand"),
                );
            }
        }
    }

    // Everything else: reported.
    const HANDLED: &[&str] = &[
        "image",
        "build",
        "pull_policy",
        "entrypoint",
        "command",
        "environment",
        "env_file",
        "depends_on",
        "ports",
        "expose",
        "healthcheck",
        "deploy",
        "user",
        "volumes",
        "tmpfs",
        "secrets",
        "configs",
        "networks",
        "profiles",
        "extends",
    ];
    for key in body.keys().filter(|k| !HANDLED.contains(&k.as_str())) {
        match key.as_str() {
            "restart" => report.note(svc, "restart", "a Deployment restarts its containers always"),
            "container_name" | "hostname" => report.note(
                svc,
                key.as_str(),
                format!("the app is reached by its Service name {name} in namespace {}", ctx.namespace),
            ),
            "read_only" => {
                report.note(svc, "read_only", "Berth's root filesystem is read-only already, with a writable /tmp")
            }
            "cap_drop" => report.note(svc, "cap_drop", "Berth drops all capabilities already"),
            k if k.starts_with("x-") => report.note(svc, k, "extension field: ignored"),
            other => report.unmapped(svc, other, unmapped_reason(other)),
        }
    }
    if body.contains_key("profiles") {
        report.note(svc, "profiles", "in an active profile (COMPOSE_PROFILES)");
    }

    if !secret_data.is_empty() {
        out.secrets.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret_name, "namespace": ctx.namespace},
            "type": "Opaque",
            "stringData": secret_data,
        }));
    }
    Ok(json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "AppEnvironment",
        "metadata": {"name": name, "namespace": ctx.namespace, "labels": {"app.kubernetes.io/part-of": project_label(ctx.project_name)}},
        "spec": spec,
    }))
}

/// A health check as readiness and liveness probes: an HTTP GET when it curls or wgets a
/// local URL, else the command itself.
fn probes(hc: &Value, ports: &[Value]) -> Option<Value> {
    if hc.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let test = hc.get("test")?;
    let (kind, args): (String, Vec<String>) = match test {
        Value::String(s) => ("CMD-SHELL".into(), vec![s.clone()]),
        Value::Array(items) => {
            let all: Vec<String> = items.iter().map(scalar).collect();
            (all.first()?.clone(), all[1..].to_vec())
        }
        _ => return None,
    };
    if kind == "NONE" || args.is_empty() {
        return None;
    }
    let line = args.join(" ");
    let url = line
        .split_whitespace()
        .find(|w| {
            w.trim_matches(['"', '\'']).starts_with("http://localhost")
                || w.trim_matches(['"', '\'']).starts_with("http://127.0.0.1")
        })
        .map(|w| w.trim_matches(['"', '\'']).to_string());
    let mut probe = if let Some(url) = url.filter(|_| line.contains("curl") || line.contains("wget")) {
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let port: i64 = authority.split_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
        let named =
            ports.iter().find(|p| p["containerPort"] == port).and_then(|p| p["name"].as_str().map(str::to_string));
        json!({"httpGet": {"path": path, "port": named.map(Value::String).unwrap_or(json!(port))}})
    } else if kind == "CMD-SHELL" {
        json!({"exec": {"command": ["/bin/sh", "-c", line]}})
    } else {
        json!({"exec": {"command": args}})
    };
    if let Some(s) = hc.get("interval").and_then(seconds) {
        probe["periodSeconds"] = json!(s);
    }
    if let Some(s) = hc.get("timeout").and_then(seconds) {
        probe["timeoutSeconds"] = json!(s);
    }
    if let Some(r) = hc.get("retries").and_then(Value::as_i64) {
        probe["failureThreshold"] = json!(r.max(1));
    }
    let mut liveness = probe.clone();
    if let Some(s) = hc.get("start_period").and_then(seconds) {
        liveness["initialDelaySeconds"] = json!(s);
    }
    Some(json!({"readiness": probe, "liveness": liveness}))
}

/// `secrets:` (files under /run/secrets) or `configs:` of a service: one Secret or ConfigMap
/// per app with the files it uses, one volume per target directory.
fn files_volume(
    s: &Service,
    ctx: &AppContext,
    key: &str,
    app: &str,
    volumes: &mut Vec<Value>,
    out: &mut Resources,
    report: &mut Report,
) -> Result<(), ImportError> {
    let svc = s.name.as_str();
    let Some(entries) = s.body.get(key).and_then(Value::as_array) else { return Ok(()) };
    let secret = key == "secrets";
    let top = if secret { &ctx.project.secrets } else { &ctx.project.configs };
    let object = if secret { format!("{app}-secrets") } else { format!("{app}-config") };
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    // Target directory → items.
    let mut dirs: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let field = format!("{key}[{i}]");
        let (source, target, mode) = match e {
            Value::Object(m) => (
                m.get("source").map(scalar).unwrap_or_default(),
                m.get("target").map(scalar),
                m.get("mode").and_then(Value::as_i64),
            ),
            other => (scalar(other), None, None),
        };
        let Some(definition) = top.get(&source) else {
            report.unmapped(svc, field, format!("{source:?} is not defined under the top-level {key}:"));
            continue;
        };
        let content = if let Some(file) = definition.get("file").map(scalar) {
            let path: PathBuf = ctx.project.dir.join(&file);
            std::fs::read_to_string(&path).map_err(|e| ImportError {
                file: s.file.display().to_string(),
                line: s.line,
                message: format!("service {svc:?}: {key} {source:?}: cannot read {}: {e}", path.display()),
            })?
        } else if let Some(var) = definition.get("environment").map(scalar) {
            ctx.project.vars.get(&var).unwrap_or_default().to_string()
        } else if let Some(c) = definition.get("content").map(scalar) {
            c
        } else {
            report.unmapped(
                svc,
                field,
                format!(
                    "{source:?} is external: create the {} {object} with key {source} yourself",
                    if secret { "Secret" } else { "ConfigMap" }
                ),
            );
            continue;
        };
        let data_key: String = source
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
            .collect();
        let default_target = if secret { format!("/run/secrets/{source}") } else { format!("/{source}") };
        let mut target = target.unwrap_or(default_target);
        if secret && !target.starts_with('/') {
            target = format!("/run/secrets/{target}");
        }
        let (dir, file) = target.rsplit_once('/').map(|(d, f)| (d.to_string(), f.to_string())).unwrap_or_default();
        let dir = if dir.is_empty() {
            report.changed(svc, field.clone(), format!("target {target} is a file in /, which a volume cannot hold: mounted at /config/{file} instead; point the app there"));
            "/config".to_string()
        } else {
            report.mapped(svc, &field);
            dir
        };
        data.insert(data_key.clone(), content);
        let mut item = json!({"key": data_key, "path": file});
        if let Some(m) = mode {
            item["mode"] = json!(m);
        }
        dirs.entry(dir).or_default().push(item);
    }
    if data.is_empty() {
        return Ok(());
    }
    for (n, (dir, items)) in dirs.into_iter().enumerate() {
        let vol_name = if n == 0 { key.to_string() } else { format!("{key}-{n}") };
        let source = if secret { "secret" } else { "configMap" };
        volumes.push(json!({"name": vol_name, "mountPath": dir, source: {"name": object, "items": items}}));
    }
    if secret {
        out.secrets.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": object, "namespace": ctx.namespace}, "type": "Opaque", "stringData": data}));
    } else {
        out.config_maps.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": object, "namespace": ctx.namespace}, "data": data}));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_versions_and_words() {
        assert_eq!(k8s_name("Web_App", 40), "web-app");
        assert_eq!(k8s_name("1st", 40), "s-1st");
        assert_eq!(postgres_version(Some("16-alpine")).0, "16");
        assert_eq!(postgres_version(Some("13.4")), ("14".into(), postgres_version(Some("13")).1));
        assert!(postgres_version(Some("18")).1.unwrap().contains("not supported yet"));
        assert_eq!(postgres_version(None).0, "17");
        assert_eq!(rabbitmq_version(Some("3.13-management")).0, "3.13");
        assert_eq!(rabbitmq_version(Some("4.1.2-management-alpine")).0, "4.1");
        assert!(rabbitmq_version(Some("3.12")).1.is_some());
        assert_eq!(shell_words(r#"sh -c "echo 'a b'" x\ y"#), ["sh", "-c", "echo 'a b'", "x y"]);
        assert_eq!(seconds(&json!("1m30s")), Some(90));
        assert_eq!(seconds(&json!("500ms")), Some(1));
        assert_eq!(memory(&json!("512M")).as_deref(), Some("512Mi"));
        assert!(names_host("postgres://shop:pw@db:5432/shop", "db"));
        assert!(!names_host("postgres://shop:pw@dbx:5432/shop", "db"));
        assert!(names_host("db", "db"));
    }
}

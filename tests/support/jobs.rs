//! Running a pod's `berth …` container as a local process: the core shared by the API server
//! stand-in's Job runner ([`LocalJobRunner`]) and the kubelet stand-in of the real control plane
//! (`support::kubelet`).
//!
//! ```ignore
//! let runner = LocalJobRunner::new(&server, HashMap::from([(("team".into(), "uploads".into()), dir)]))
//!     .with_host_override("db.team.svc:5432", format!("127.0.0.1:{}", pg.port));
//! runner.install(&server);
//! // create Jobs; they end Complete or Failed; runner.runs() has each attempt's output
//! ```
//!
//! What a kubelet would do, mapped to this machine ([`prepare`] and [`run_process`]):
//! - program `berth` (the `command`, or the image's entrypoint when there is none) is the test
//!   crate's `berth` binary; `sh` is `/bin/sh` (small commands standing in for an app's own,
//!   e.g. a migration); other programs are refused;
//! - `env`: literal values with `$(VAR)` expansion from earlier variables (`$$` escapes),
//!   `secretKeyRef`/`configMapKeyRef` (`data` and `stringData`/`binaryData`), `envFrom`, and
//!   `fieldRef` for `metadata.name`/`namespace`/`uid`/`labels['k']`/`annotations['k']`,
//!   `spec.nodeName`, `spec.serviceAccountName`, `status.podIP`/`hostIP`. A missing Secret or
//!   key is a configuration error with the kubelet's message;
//! - volumes: Secret, ConfigMap and projected volumes (secret, configMap, downwardAPI,
//!   serviceAccountToken through the TokenRequest API) are written into a scratch directory
//!   (one file per key or per `items` entry, with the mode), emptyDirs are scratch directories
//!   (mode 0777 as the kubelet makes them), a PVC is the directory its caller maps it to;
//!   every argument and environment value that is a mount path or below one (also after
//!   `--flag=`) is rewritten to the local path;
//! - host overrides (`"db.team.svc:5432"` → `"127.0.0.1:54321"`, like the operator's
//!   `--endpoint-overrides`) replace `host:port` anywhere in arguments and environment values;
//!   for libpq-style split variables, a value equal to the host becomes the new host and a
//!   value equal to the port the new port (only when some variable holds the host). An
//!   override without a port replaces the host alone;
//! - the process gets only the container's environment plus `PATH` (and extras), runs in its
//!   own process group (killed as a whole at the end, at a deadline, or when dropped), and may
//!   run as another user ([`Identity`], set between fork and exec).
//!
//! [`LocalJobRunner`] (the stand-in server's Job runner) runs as the test's own user, retries
//! a non-zero exit up to `backoffLimit` times, kills at the Job's `activeDeadlineSeconds`, and
//! fails the Job at once on a configuration error (a real pod would sit in
//! `CreateContainerConfigError` until the deadline).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, PodSpec, Secret, ServiceAccount, Volume};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::apiserver::{JobOutcome, TestApiServer};

/// One run of one Job pod's container.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub namespace: String,
    pub job: String,
    /// The pod's name (`<job>-local` for the API server stand-in's runner).
    pub pod: String,
    /// Arguments after the program, as run (mount paths and hosts mapped).
    pub args: Vec<String>,
    /// The container environment as run (without `PATH` and extras).
    pub env: BTreeMap<String, String>,
    /// `(uid, gid)` the process ran as; `None`: the test's own user.
    pub user: Option<(u32, u32)>,
    /// `None` when killed (deadline, deletion) or not started.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// What `fieldRef`s and downward API volumes read of the pod.
#[derive(Clone, Debug, Default)]
pub struct PodFields {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node_name: String,
    pub pod_ip: String,
    pub host_ip: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// Why a container cannot start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareError {
    /// What a kubelet reports as `CreateContainerConfigError` or a failed mount: a missing
    /// Secret, key or claim. It may go away (the Secret is created later).
    Config(String),
    /// The stand-in cannot run this at all (not the berth binary, an unsupported source).
    Unsupported(String),
}

impl PrepareError {
    pub fn message(&self) -> &str {
        match self {
            PrepareError::Config(m) | PrepareError::Unsupported(m) => m,
        }
    }
}

/// Everything a container of one pod is prepared from.
pub struct Sandbox<'a> {
    pub client: &'a kube::Client,
    pub fields: &'a PodFields,
    pub spec: &'a PodSpec,
    /// The pod's scratch directory (volumes go below it).
    pub dir: &'a Path,
    /// Claim name → local directory of its volume.
    pub pvc_dirs: &'a HashMap<String, PathBuf>,
    pub overrides: &'a [(String, String)],
}

/// A volume as prepared on this machine.
#[derive(Clone, Debug)]
pub struct LocalVolume {
    pub name: String,
    pub dir: PathBuf,
    /// Secret, ConfigMap, projected and downward API volumes (the kubelet's read-only kinds).
    pub read_only_kind: bool,
    /// The claim, for a PVC volume.
    pub claim: Option<String>,
}

/// A container ready to run.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// `/bin/sh` rather than the berth binary.
    pub shell: bool,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The volumes its mounts use.
    pub volumes: Vec<LocalVolume>,
}

/// User and groups a process runs as (the test runs as root to switch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (fsGroup, supplementalGroups).
    pub groups: Vec<u32>,
}

/// How a process ended.
#[derive(Clone, Debug, Default)]
pub struct ProcessResult {
    /// `None`: killed at the deadline, or it could not start (see `stderr`).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// It could not be started at all.
    pub start_error: bool,
}

/// Process groups of running processes, to kill them all at once.
pub type ProcessGroups = Arc<Mutex<HashSet<i32>>>;

/// Kills every process group in `groups` (for a `Drop`).
pub fn kill_all(groups: &ProcessGroups) {
    for pgid in groups.lock().unwrap().drain() {
        // SAFETY: plain signal to a process group we started.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

type DataCache = HashMap<(bool, String), Option<BTreeMap<String, Vec<u8>>>>;

/// Prepares `container` of the pod: program, arguments, environment, volumes.
pub async fn prepare(sb: &Sandbox<'_>, container: &Container) -> Result<Prepared, PrepareError> {
    let ns = sb.fields.namespace.as_str();
    let shell = matches!(container.command.as_deref(), Some([p, ..]) if p == "sh" || p == "/bin/sh");
    let program = match container.command.as_deref() {
        None | Some([]) => Vec::new(),
        Some([p, rest @ ..]) if p == "berth" || p.ends_with("/berth") => rest.to_vec(),
        Some([_, rest @ ..]) if shell => rest.to_vec(),
        Some([p, ..]) => {
            return Err(PrepareError::Unsupported(format!(
                "job runner: only the berth binary and sh run here, not {p:?}"
            )));
        }
    };
    let mut args = program;
    args.extend(container.args.clone().unwrap_or_default());
    let mut cache = DataCache::new();

    // Volumes and mounts.
    let io = |e: std::io::Error| PrepareError::Unsupported(format!("job runner: {}: {e}", sb.dir.display()));
    std::fs::create_dir_all(sb.dir).map_err(io)?;
    let volumes: HashMap<&str, &Volume> = sb.spec.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    let mut used: Vec<LocalVolume> = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some(v) = volumes.get(m.name.as_str()) else {
            return Err(PrepareError::Unsupported(format!("job runner: volume mount {:?} names no volume", m.name)));
        };
        let local = volume_dir(sb, v, &sb.dir.join(format!("vol-{}", v.name)), &mut cache).await?;
        if !used.iter().any(|u| u.name == local.name) {
            used.push(local.clone());
        }
        let local = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let d = local.dir.join(sub);
                // The kubelet creates a missing subPath directory.
                std::fs::create_dir_all(&d).map_err(io)?;
                d
            }
            None => local.dir,
        };
        let path = m.mount_path.trim_end_matches('/');
        mounts.push((if path.is_empty() { "/" } else { path }.to_string(), local));
    }
    // Longest mount path first, so that /a/b wins over /a.
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));

    // Environment: envFrom first, then env in order with `$(VAR)` expansion.
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (secret, name, optional) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => (true, s.name.clone(), s.optional == Some(true)),
            (None, Some(c)) => (false, c.name.clone(), c.optional == Some(true)),
            (None, None) => continue,
        };
        match object_data(sb.client, ns, secret, &name, &mut cache).await? {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                }
            }
            None if optional => {}
            None => {
                let kind = if secret { "secret" } else { "configmap" };
                return Err(PrepareError::Config(format!("{kind} \"{name}\" not found")));
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            let key_ref = match (&src.secret_key_ref, &src.config_map_key_ref) {
                (Some(r), _) => Some((true, &r.name, &r.key, r.optional == Some(true))),
                (None, Some(r)) => Some((false, &r.name, &r.key, r.optional == Some(true))),
                (None, None) => None,
            };
            if let Some((secret, obj, key, optional)) = key_ref {
                let kind = if secret { "Secret" } else { "ConfigMap" };
                match object_data(sb.client, ns, secret, obj, &mut cache).await? {
                    Some(data) => match data.get(key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(PrepareError::Config(format!(
                                "couldn't find key {key} in {kind} {ns}/{obj} (env {})",
                                e.name
                            )));
                        }
                    },
                    None if optional => None,
                    None => {
                        return Err(PrepareError::Config(format!(
                            "{} \"{obj}\" not found (env {})",
                            kind.to_lowercase(),
                            e.name
                        )));
                    }
                }
            } else if let Some(f) = &src.field_ref {
                Some(field_value(sb.fields, &f.field_path).ok_or_else(|| {
                    PrepareError::Unsupported(format!("job runner: fieldRef {} is not supported", f.field_path))
                })?)
            } else {
                return Err(PrepareError::Unsupported(format!(
                    "job runner: env {}: only secretKeyRef, configMapKeyRef and fieldRef",
                    e.name
                )));
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or(""), &env))
        };
        if let Some(v) = value {
            set(&mut env, e.name.clone(), v);
        }
    }

    // Hosts, then paths.
    apply_overrides(sb.overrides, &mut env, &mut args);
    for v in env.iter_mut().map(|(_, v)| v).chain(args.iter_mut()) {
        *v = map_paths(v, &mounts);
    }
    let cwd = match container.working_dir.as_deref() {
        Some(w) => PathBuf::from(map_paths(w, &mounts)),
        None => sb.dir.to_path_buf(),
    };
    Ok(Prepared { shell, args, env, cwd, volumes: used })
}

fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
    env.retain(|(n, _)| n != &name);
    env.push((name, value));
}

/// The value of a `fieldRef` (`None`: not supported).
pub fn field_value(f: &PodFields, path: &str) -> Option<String> {
    let key_of = |s: &str, prefix: &str| s.strip_prefix(prefix)?.strip_suffix("']").map(str::to_string);
    Some(match path {
        "metadata.namespace" => f.namespace.clone(),
        "metadata.name" => f.name.clone(),
        "metadata.uid" => f.uid.clone(),
        "spec.nodeName" => f.node_name.clone(),
        "spec.serviceAccountName" => f.service_account.clone(),
        "status.podIP" | "status.podIPs" => f.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => f.host_ip.clone(),
        "metadata.labels" => format_map(&f.labels),
        "metadata.annotations" => format_map(&f.annotations),
        p => {
            if let Some(k) = key_of(p, "metadata.labels['") {
                f.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = key_of(p, "metadata.annotations['") {
                f.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// The downward API's `key="value"` lines.
fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n")
}

async fn volume_dir(
    sb: &Sandbox<'_>,
    v: &Volume,
    local: &Path,
    cache: &mut DataCache,
) -> Result<LocalVolume, PrepareError> {
    let ns = sb.fields.namespace.as_str();
    let io = |e: std::io::Error| PrepareError::Unsupported(format!("job runner: volume {}: {e}", v.name));
    let done =
        |dir: PathBuf, read_only_kind: bool| LocalVolume { name: v.name.clone(), dir, read_only_kind, claim: None };
    if let Some(pvc) = &v.persistent_volume_claim {
        let dir = sb.pvc_dirs.get(&pvc.claim_name).cloned().ok_or_else(|| {
            PrepareError::Config(format!(
                "persistentvolumeclaim \"{}\" not found (no local directory for {ns}/{} in the job runner)",
                pvc.claim_name, pvc.claim_name
            ))
        })?;
        return Ok(LocalVolume { claim: Some(pvc.claim_name.clone()), ..done(dir, false) });
    }
    if v.empty_dir.is_some() {
        std::fs::create_dir_all(local).map_err(io)?;
        set_mode(local, 0o777).map_err(io)?;
        return Ok(done(local.to_path_buf(), false));
    }
    // Read-only kinds: files written fresh for each container start.
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let missing =
        |what: String| PrepareError::Config(format!("MountVolume.SetUp failed for volume \"{}\" : {what}", v.name));
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        project(sb, &v.name, true, &name, s.items.as_deref(), mode, s.optional == Some(true), cache, &mut files)
            .await?;
    } else if let Some(c) = &v.config_map {
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        project(sb, &v.name, false, &c.name, c.items.as_deref(), mode, c.optional == Some(true), cache, &mut files)
            .await?;
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.unwrap_or(0o644) as u32;
        for i in d.items.iter().flatten() {
            let f = i.field_ref.as_ref().ok_or_else(|| {
                PrepareError::Unsupported(format!("job runner: volume {}: only fieldRef items", v.name))
            })?;
            let value = field_value(sb.fields, &f.field_path).ok_or_else(|| {
                PrepareError::Unsupported(format!("job runner: fieldRef {} is not supported", f.field_path))
            })?;
            files.push((i.path.clone(), value.into_bytes(), i.mode.map_or(mode, |m| m as u32)));
        }
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for src in p.sources.iter().flatten() {
            if let Some(s) = &src.secret {
                project(
                    sb,
                    &v.name,
                    true,
                    &s.name,
                    s.items.as_deref(),
                    mode,
                    s.optional == Some(true),
                    cache,
                    &mut files,
                )
                .await?;
            } else if let Some(c) = &src.config_map {
                project(
                    sb,
                    &v.name,
                    false,
                    &c.name,
                    c.items.as_deref(),
                    mode,
                    c.optional == Some(true),
                    cache,
                    &mut files,
                )
                .await?;
            } else if let Some(d) = &src.downward_api {
                for i in d.items.iter().flatten() {
                    let Some(value) = i.field_ref.as_ref().and_then(|f| field_value(sb.fields, &f.field_path)) else {
                        return Err(PrepareError::Unsupported(format!(
                            "job runner: volume {}: unsupported downward API item {}",
                            v.name, i.path
                        )));
                    };
                    files.push((i.path.clone(), value.into_bytes(), i.mode.map_or(mode, |m| m as u32)));
                }
            } else if let Some(t) = &src.service_account_token {
                let token =
                    service_account_token(sb, t.audience.clone(), t.expiration_seconds).await.map_err(&missing)?;
                files.push((t.path.clone(), token.into_bytes(), mode));
            } else {
                return Err(PrepareError::Unsupported(format!(
                    "job runner: volume {}: unsupported projected source",
                    v.name
                )));
            }
        }
    } else {
        return Err(PrepareError::Unsupported(format!("job runner: volume {} has an unsupported source", v.name)));
    }
    std::fs::create_dir_all(local).map_err(io)?;
    set_mode(local, 0o755).map_err(io)?;
    for (path, data, mode) in files {
        let file = local.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // Replace (a read-only file from an earlier start cannot be opened for writing by a
        // non-root test, and the mode must be the new one).
        let _ = std::fs::remove_file(&file);
        std::fs::write(&file, &data).map_err(io)?;
        set_mode(&file, mode).map_err(io)?;
    }
    Ok(done(local.to_path_buf(), true))
}

/// Files of a Secret or ConfigMap for volume `volume` (missing: the kubelet's words).
#[allow(clippy::too_many_arguments)]
async fn project(
    sb: &Sandbox<'_>,
    volume: &str,
    secret: bool,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
    cache: &mut DataCache,
    files: &mut Vec<(String, Vec<u8>, u32)>,
) -> Result<(), PrepareError> {
    let ns = sb.fields.namespace.as_str();
    let kind = if secret { "secret" } else { "configmap" };
    let missing =
        |what: String| PrepareError::Config(format!("MountVolume.SetUp failed for volume \"{volume}\" : {what}"));
    let Some(data) = object_data(sb.client, ns, secret, name, cache).await? else {
        return if optional { Ok(()) } else { Err(missing(format!("{kind} \"{name}\" not found"))) };
    };
    match items {
        Some(items) => {
            for i in items {
                let Some(value) = data.get(&i.key) else {
                    if optional {
                        continue;
                    }
                    let kind = if secret { "Secret" } else { "ConfigMap" };
                    return Err(missing(format!("couldn't find key {} in {kind} {ns}/{name}", i.key)));
                };
                files.push((i.path.clone(), value.clone(), i.mode.map_or(default_mode, |m| m as u32)));
            }
        }
        None => files.extend(data.into_iter().map(|(k, v)| (k, v, default_mode))),
    }
    Ok(())
}

/// A bound service account token, as the kubelet requests it for a projected volume.
async fn service_account_token(
    sb: &Sandbox<'_>,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<String, String> {
    let sa = if sb.fields.service_account.is_empty() { "default" } else { sb.fields.service_account.as_str() };
    let api: Api<ServiceAccount> = Api::namespaced(sb.client.clone(), &sb.fields.namespace);
    // Built from JSON: the struct's shape differs between Kubernetes versions of k8s-openapi.
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": audience.into_iter().filter(|a| !a.is_empty()).collect::<Vec<_>>(),
            "expirationSeconds": seconds.unwrap_or(3600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": sb.fields.name, "uid": sb.fields.uid},
        },
    }))
    .map_err(|e| format!("failed to fetch token: {e}"))?;
    let made = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("failed to fetch token: {e}"))?;
    let made = serde_json::to_value(made).unwrap_or_default();
    made["status"]["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "failed to fetch token: no token in the response".into())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// A Secret's (`data` decoded, `stringData` on top) or ConfigMap's (`data`, `binaryData`)
/// contents, cached per preparation; `None` if missing.
async fn object_data(
    client: &kube::Client,
    ns: &str,
    secret: bool,
    name: &str,
    cache: &mut DataCache,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, PrepareError> {
    let key = (secret, name.to_string());
    if let Some(hit) = cache.get(&key) {
        return Ok(hit.clone());
    }
    let failed = |e: kube::Error| {
        let kind = if secret { "Secret" } else { "ConfigMap" };
        PrepareError::Config(format!("job runner: reading {kind} {ns}/{name}: {e}"))
    };
    let found = if secret {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        api.get_opt(name).await.map_err(failed)?.map(|s| {
            let mut data: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        })
    } else {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        api.get_opt(name).await.map_err(failed)?.map(|c| {
            let mut data: BTreeMap<String, Vec<u8>> =
                c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            for (k, v) in c.data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        })
    };
    cache.insert(key, found.clone());
    Ok(found)
}

/// Kills a process group when dropped (end of run, deadline, task aborted).
pub struct GroupGuard {
    pgid: i32,
    registry: Option<ProcessGroups>,
}

impl GroupGuard {
    /// Guards the process group led by `pid`, listed in `registry` until dropped.
    pub fn new(pid: u32, registry: Option<&ProcessGroups>) -> GroupGuard {
        if let Some(r) = registry {
            r.lock().unwrap().insert(pid as i32);
        }
        GroupGuard { pgid: pid as i32, registry: registry.cloned() }
    }

    /// Sends `signal` to the whole group.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain signal to the process group we started.
        unsafe { libc::kill(-self.pgid, signal) };
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: plain signal to the process group we started.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        if let Some(r) = &self.registry {
            r.lock().unwrap().remove(&self.pgid);
        }
    }
}

/// The test crate's `berth` binary for a prepared container: only the container's environment
/// plus `PATH` and `extra_env`, in its own process group (killed when dropped), as `identity`
/// when given. Standard streams are the caller's choice (stdin is closed).
pub fn berth_command(
    p: &Prepared,
    extra_env: &[(String, String)],
    identity: Option<&Identity>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(if p.shell { "/bin/sh" } else { env!("CARGO_BIN_EXE_berth") });
    cmd.args(&p.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(extra_env.iter().cloned())
        .envs(p.env.iter().cloned())
        .current_dir(&p.cwd)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(id) = identity.cloned() {
        // std's own uid()/gid() would drop supplementary groups after any pre_exec hook could
        // set them, so all three are switched here, in the child between fork and exec.
        // SAFETY: only async-signal-safe system calls on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(id.groups.len(), id.groups.as_ptr()) != 0
                    || libc::setgid(id.gid) != 0
                    || libc::setuid(id.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Runs the prepared container with the berth binary, as `identity` when given, killed at
/// `deadline`. Dropping the future kills the process group.
pub async fn run_process(
    p: &Prepared,
    extra_env: &[(String, String)],
    identity: Option<&Identity>,
    deadline: Option<Duration>,
    registry: Option<&ProcessGroups>,
) -> ProcessResult {
    let mut cmd = berth_command(p, extra_env, identity);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut result = ProcessResult::default();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.stderr = format!("job runner: cannot start the berth binary: {e}");
            result.start_error = true;
            return result;
        }
    };
    let Some(pid) = child.id() else {
        result.stderr = "job runner: the process vanished at start".into();
        result.start_error = true;
        return result;
    };
    let guard = GroupGuard::new(pid, registry);
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf).await;
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let waited = match deadline {
        Some(d) => tokio::time::timeout(d, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    // The whole group goes (as a container's processes do when its main process ends), which
    // also closes pipes a left-over grandchild would hold open.
    drop(guard);
    let _ = child.kill().await;
    result.stdout = out.await.unwrap_or_default();
    result.stderr = err.await.unwrap_or_default();
    match waited {
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            result.exit_code = Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
        }
        Some(Err(e)) => {
            result.exit_code = Some(128);
            result.stderr.push_str(&format!("\njob runner: waiting for the process: {e}"));
        }
        None => result.stderr.push_str("\njob runner: killed at activeDeadlineSeconds"),
    }
    result
}

struct Inner {
    server_url: String,
    pvc_dirs: Mutex<HashMap<(String, String), PathBuf>>,
    host_overrides: Mutex<Vec<(String, String)>>,
    extra_env: Mutex<Vec<(String, String)>>,
    runs: Mutex<Vec<JobRun>>,
    scratch: tempfile::TempDir,
}

/// The API server stand-in's Job runner: runs Jobs as local processes; cheap to clone
/// (shared state).
#[derive(Clone)]
pub struct LocalJobRunner {
    inner: Arc<Inner>,
}

impl LocalJobRunner {
    /// A runner reading Secrets from `server`; `pvc_dirs` maps (namespace, claim) to a local
    /// directory standing in for the volume.
    pub fn new(server: &TestApiServer, pvc_dirs: HashMap<(String, String), PathBuf>) -> Self {
        let scratch = tempfile::Builder::new().prefix("berth-jobs-").tempdir().expect("tempdir");
        LocalJobRunner {
            inner: Arc::new(Inner {
                server_url: server.url(),
                pvc_dirs: Mutex::new(pvc_dirs),
                host_overrides: Mutex::default(),
                extra_env: Mutex::default(),
                runs: Mutex::default(),
                scratch,
            }),
        }
    }

    /// Maps an in-cluster `host:port` (or `host`) to a local one.
    pub fn with_host_override(self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.inner.host_overrides.lock().unwrap().push((from.into(), to.into()));
        self
    }

    /// Adds a variable to every process's environment (before the container's own).
    pub fn with_env(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.extra_env.lock().unwrap().push((name.into(), value.into()));
        self
    }

    /// Maps (or remaps) a PVC to a local directory.
    pub fn set_pvc_dir(&self, namespace: &str, claim: &str, dir: impl Into<PathBuf>) {
        self.inner.pvc_dirs.lock().unwrap().insert((namespace.into(), claim.into()), dir.into());
    }

    /// Registers this runner as `server`'s job runner.
    pub fn install(&self, server: &TestApiServer) {
        let me = self.clone();
        server.set_job_runner(move |job| {
            let me = me.clone();
            async move { me.run(job).await }
        });
    }

    /// Every attempt so far, in order.
    pub fn runs(&self) -> Vec<JobRun> {
        self.inner.runs.lock().unwrap().clone()
    }

    /// The attempts of one Job.
    pub fn runs_of(&self, job: &str) -> Vec<JobRun> {
        self.runs().into_iter().filter(|r| r.job == job).collect()
    }

    /// Runs one Job to its end.
    pub async fn run(&self, job: Value) -> JobOutcome {
        let job: Job = match serde_json::from_value(job) {
            Ok(j) => j,
            Err(e) => return JobOutcome::Failed(format!("job runner: cannot read the Job: {e}")),
        };
        let ns = job.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = job.metadata.name.clone().unwrap_or_default();
        let Some(spec) = job.spec.as_ref() else {
            return JobOutcome::Failed("job runner: the Job has no spec".into());
        };
        let Some(pod) = spec.template.spec.as_ref() else {
            return JobOutcome::Failed("job runner: the Job has no pod spec".into());
        };
        let Some(container) = pod.containers.first() else {
            return JobOutcome::Failed("job runner: the pod has no containers".into());
        };
        let dir = self.inner.scratch.path().join(format!("{ns}-{name}-{}", job.metadata.uid.as_deref().unwrap_or("")));
        let fields = PodFields {
            name: format!("{name}-local"),
            namespace: ns.clone(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            node_name: "local-node".into(),
            pod_ip: "127.0.0.1".into(),
            host_ip: "127.0.0.1".into(),
            service_account: pod.service_account_name.clone().unwrap_or_else(|| "default".into()),
            labels: spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default(),
            annotations: spec.template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default(),
        };
        let pvc_dirs: HashMap<String, PathBuf> = self
            .inner
            .pvc_dirs
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| *n == ns)
            .map(|((_, c), d)| (c.clone(), d.clone()))
            .collect();
        let overrides = self.inner.host_overrides.lock().unwrap().clone();
        let client = {
            let config = kube::Config::new(self.inner.server_url.parse().expect("server url"));
            kube::Client::try_from(config).expect("kube client")
        };
        let sandbox = Sandbox {
            client: &client,
            fields: &fields,
            spec: pod,
            dir: &dir,
            pvc_dirs: &pvc_dirs,
            overrides: &overrides,
        };
        let run_of = |args: Vec<String>, env: BTreeMap<String, String>| JobRun {
            namespace: ns.clone(),
            job: name.clone(),
            pod: fields.name.clone(),
            args,
            env,
            user: None,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
        };
        let prepared = match prepare(&sandbox, container).await {
            Ok(p) => p,
            Err(e) => {
                let msg = e.message().to_string();
                self.record(JobRun { stderr: msg.clone(), ..run_of(vec![], BTreeMap::new()) });
                return JobOutcome::Failed(msg);
            }
        };
        let deadline = spec.active_deadline_seconds.map(|s| Duration::from_secs(s.max(1) as u64));
        let attempts = spec.backoff_limit.unwrap_or(6).max(0) + 1;
        let started = tokio::time::Instant::now();
        let extra_env = self.inner.extra_env.lock().unwrap().clone();
        let mut last = String::new();
        for _ in 0..attempts {
            let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let out = run_process(&prepared, &extra_env, None, left, None).await;
            let code = out.exit_code;
            last = tail(&out.stderr, 8);
            self.record(JobRun {
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
                ..run_of(prepared.args.clone(), prepared.env.iter().cloned().collect())
            });
            match code {
                Some(0) => return JobOutcome::Succeeded,
                Some(_) => {}
                None => return JobOutcome::Failed(format!("Job was active longer than specified deadline: {last}")),
            }
        }
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            return JobOutcome::Failed(format!("Job was active longer than specified deadline: {last}"));
        }
        JobOutcome::Failed(last)
    }

    fn record(&self, run: JobRun) {
        self.inner.runs.lock().unwrap().push(run);
    }
}

/// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a literal `$`,
/// anything else stays as written.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = defined.iter().rev().find(|(n, _)| n == &inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// See the module documentation.
pub fn apply_overrides(overrides: &[(String, String)], env: &mut [(String, String)], args: &mut [String]) {
    for (from, to) in overrides {
        for v in env.iter_mut().map(|(_, v)| v).chain(args.iter_mut()) {
            if v.contains(from.as_str()) {
                *v = v.replace(from.as_str(), to);
            }
        }
        let split = |s: &str| s.rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string()));
        match (split(from), split(to)) {
            (Some((fh, fp)), Some((th, tp))) => {
                if env.iter().any(|(_, v)| *v == fh) {
                    for (_, v) in env.iter_mut() {
                        if *v == fh {
                            *v = th.clone();
                        } else if *v == fp {
                            *v = tp.clone();
                        }
                    }
                }
            }
            (None, None) => {}
            _ => panic!("host override {from:?} -> {to:?}: give a port on both sides or on neither"),
        }
    }
}

/// Rewrites a value that is a mount path or below one (also `--flag=<path>`).
pub fn map_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let (prefix, path) = match value.split_once('=') {
        Some((flag, p)) if flag.starts_with('-') => (format!("{flag}="), p),
        _ => (String::new(), value),
    };
    for (mount, local) in mounts {
        let rest = if path == mount {
            Some("")
        } else {
            path.strip_prefix(mount.as_str()).filter(|r| r.starts_with('/') || mount == "/")
        };
        if let Some(rest) = rest {
            let rest = rest.trim_start_matches('/');
            let mapped = if rest.is_empty() { local.clone() } else { local.join(rest) };
            return format!("{prefix}{}", mapped.display());
        }
    }
    value.to_string()
}

/// The last `lines` non-empty lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

//! The Job stand-in's runner: runs a Job's `berth agent …` container as a local process.
//!
//! ```ignore
//! let runner = LocalJobRunner::new(&server, HashMap::from([(("team".into(), "uploads".into()), dir)]))
//!     .with_host_override("db.team.svc:5432", format!("127.0.0.1:{}", pg.port));
//! runner.install(&server);
//! // create Jobs; they end Complete or Failed; runner.runs() has each attempt's output
//! ```
//!
//! What a kubelet would do, mapped to this machine:
//! - program `berth` (the `command`, or the image's entrypoint when there is none) is the test
//!   crate's `berth` binary; other programs are refused;
//! - `env`: literal values with `$(VAR)` expansion from earlier variables (`$$` escapes),
//!   `secretKeyRef` from the namespace's Secrets in the test API server (`data` and
//!   `stringData`), `fieldRef` for `metadata.name`/`metadata.namespace`/`spec.nodeName`/
//!   `status.podIP`. A missing Secret or key fails the Job with the kubelet's message (a real
//!   pod would sit in `CreateContainerConfigError` until the deadline);
//! - volumes: Secret volumes are written into a scratch directory (one file per key or per
//!   `items` entry, with the mode), emptyDirs are scratch directories, a PVC is the directory
//!   given in `pvc_dirs` (no mapping: the Job fails); every argument and environment value
//!   that is a mount path or below one (also after `--flag=`) is rewritten to the local path;
//! - host overrides (`"db.team.svc:5432"` → `"127.0.0.1:54321"`, like the operator's
//!   `--endpoint-overrides`) replace `host:port` anywhere in arguments and environment values;
//!   for libpq-style split variables, a value equal to the host becomes the new host and a
//!   value equal to the port the new port (only when some variable holds the host). An
//!   override without a port replaces the host alone;
//! - the process gets only the container's environment plus `PATH` (and [`with_env`]
//!   extras); `activeDeadlineSeconds` kills it; a non-zero exit is retried up to
//!   `backoffLimit` times, then the Job fails with the last lines of stderr.
//!
//! [`with_env`]: LocalJobRunner::with_env

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret, Volume};
use kube::Api;
use serde_json::Value;

use super::apiserver::{JobOutcome, TestApiServer};

/// One attempt of one Job.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub namespace: String,
    pub job: String,
    /// Arguments after the program, as run (mount paths and hosts mapped).
    pub args: Vec<String>,
    /// The container environment as run (without `PATH` and extras).
    pub env: BTreeMap<String, String>,
    /// `None` when killed (deadline) or not started.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

struct Inner {
    server_url: String,
    pvc_dirs: Mutex<HashMap<(String, String), PathBuf>>,
    host_overrides: Mutex<Vec<(String, String)>>,
    extra_env: Mutex<Vec<(String, String)>>,
    runs: Mutex<Vec<JobRun>>,
    scratch: tempfile::TempDir,
}

/// Runs Jobs as local processes; cheap to clone (shared state).
#[derive(Clone)]
pub struct LocalJobRunner {
    inner: Arc<Inner>,
}

/// Why a Job could not start (the pod's configuration error).
struct ConfigError(String);

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
        let prepared = match self.prepare(&ns, &name, pod, container, &dir).await {
            Ok(p) => p,
            Err(ConfigError(msg)) => {
                self.record(JobRun {
                    namespace: ns,
                    job: name,
                    args: vec![],
                    env: BTreeMap::new(),
                    exit_code: None,
                    stdout: String::new(),
                    stderr: msg.clone(),
                });
                return JobOutcome::Failed(msg);
            }
        };
        let deadline = spec.active_deadline_seconds.map(|s| Duration::from_secs(s.max(1) as u64));
        let attempts = spec.backoff_limit.unwrap_or(6).max(0) + 1;
        let started = tokio::time::Instant::now();
        let mut last = String::new();
        for _ in 0..attempts {
            let left = deadline.map(|d| d.saturating_sub(started.elapsed()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let run = self.spawn(&ns, &name, &prepared, left).await;
            let code = run.exit_code;
            last = tail(&run.stderr, 8);
            self.record(run);
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

    async fn prepare(
        &self,
        ns: &str,
        name: &str,
        pod: &PodSpec,
        container: &Container,
        dir: &Path,
    ) -> Result<Prepared, ConfigError> {
        let program = match container.command.as_deref() {
            None | Some([]) => Vec::new(),
            Some([p, rest @ ..]) if p == "berth" || p.ends_with("/berth") => rest.to_vec(),
            Some([p, ..]) => {
                return Err(ConfigError(format!("job runner: only the berth binary runs here, not {p:?}")));
            }
        };
        let mut args = program;
        args.extend(container.args.clone().unwrap_or_default());
        if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(ConfigError("job runner: envFrom is not supported".into()));
        }
        let client = {
            let config = kube::Config::new(self.inner.server_url.parse().expect("server url"));
            kube::Client::try_from(config).expect("kube client")
        };
        let secrets: Api<Secret> = Api::namespaced(client, ns);
        let mut cache: HashMap<String, Option<BTreeMap<String, Vec<u8>>>> = HashMap::new();

        // Volumes and mounts.
        std::fs::create_dir_all(dir).map_err(|e| ConfigError(format!("job runner: {e}")))?;
        let volumes: HashMap<&str, &Volume> = pod.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in container.volume_mounts.iter().flatten() {
            let Some(v) = volumes.get(m.name.as_str()) else {
                return Err(ConfigError(format!("job runner: volume mount {:?} names no volume", m.name)));
            };
            let local = self.volume_dir(ns, v, &dir.join(format!("vol-{}", v.name)), &secrets, &mut cache).await?;
            let local = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => local.join(sub),
                None => local,
            };
            let path = m.mount_path.trim_end_matches('/');
            mounts.push((if path.is_empty() { "/" } else { path }.to_string(), local));
        }
        // Longest mount path first, so that /a/b wins over /a.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));

        // Environment, in order, with `$(VAR)` expansion.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in container.env.iter().flatten() {
            let value = if let Some(src) = &e.value_from {
                if let Some(r) = &src.secret_key_ref {
                    match secret_data(&secrets, &r.name, &mut cache).await {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                            None if r.optional == Some(true) => None,
                            None => {
                                return Err(ConfigError(format!(
                                    "couldn't find key {} in Secret {ns}/{} (env {})",
                                    r.key, r.name, e.name
                                )));
                            }
                        },
                        None if r.optional == Some(true) => None,
                        None => return Err(ConfigError(format!("secret \"{}\" not found (env {})", r.name, e.name))),
                    }
                } else if let Some(f) = &src.field_ref {
                    Some(match f.field_path.as_str() {
                        "metadata.namespace" => ns.to_string(),
                        "metadata.name" => format!("{name}-local"),
                        "spec.nodeName" => "local-node".to_string(),
                        "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                        other => return Err(ConfigError(format!("job runner: fieldRef {other} is not supported"))),
                    })
                } else {
                    return Err(ConfigError(format!("job runner: env {}: only secretKeyRef and fieldRef", e.name)));
                }
            } else {
                Some(expand(e.value.as_deref().unwrap_or(""), &env))
            };
            if let Some(v) = value {
                env.retain(|(n, _)| n != &e.name);
                env.push((e.name.clone(), v));
            }
        }

        // Hosts, then paths.
        let overrides = self.inner.host_overrides.lock().unwrap().clone();
        apply_overrides(&overrides, &mut env, &mut args);
        for v in env.iter_mut().map(|(_, v)| v).chain(args.iter_mut()) {
            *v = map_paths(v, &mounts);
        }
        let cwd = match container.working_dir.as_deref() {
            Some(w) => PathBuf::from(map_paths(w, &mounts)),
            None => dir.to_path_buf(),
        };
        Ok(Prepared { args, env, cwd })
    }

    async fn volume_dir(
        &self,
        ns: &str,
        v: &Volume,
        local: &Path,
        secrets: &Api<Secret>,
        cache: &mut HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    ) -> Result<PathBuf, ConfigError> {
        let io = |e: std::io::Error| ConfigError(format!("job runner: volume {}: {e}", v.name));
        if let Some(pvc) = &v.persistent_volume_claim {
            return self
                .inner
                .pvc_dirs
                .lock()
                .unwrap()
                .get(&(ns.to_string(), pvc.claim_name.clone()))
                .cloned()
                .ok_or_else(|| {
                    ConfigError(format!(
                        "persistentvolumeclaim \"{}\" not found (no local directory for {ns}/{} in the job runner)",
                        pvc.claim_name, pvc.claim_name
                    ))
                });
        }
        if v.empty_dir.is_some() {
            std::fs::create_dir_all(local).map_err(io)?;
            return Ok(local.to_path_buf());
        }
        if let Some(s) = &v.secret {
            let secret = s.secret_name.clone().unwrap_or_default();
            std::fs::create_dir_all(local).map_err(io)?;
            let Some(data) = secret_data(secrets, &secret, cache).await else {
                if s.optional == Some(true) {
                    return Ok(local.to_path_buf());
                }
                return Err(ConfigError(format!(
                    "MountVolume.SetUp failed for volume \"{}\" : secret \"{secret}\" not found",
                    v.name
                )));
            };
            let default_mode = s.default_mode.unwrap_or(0o644) as u32;
            let files: Vec<(String, String, u32)> = match &s.items {
                Some(items) => {
                    let mut out = Vec::new();
                    for i in items {
                        if !data.contains_key(&i.key) {
                            if s.optional == Some(true) {
                                continue;
                            }
                            return Err(ConfigError(format!(
                                "MountVolume.SetUp failed for volume \"{}\" : couldn't find key {} in Secret {ns}/{secret}",
                                v.name, i.key
                            )));
                        }
                        out.push((i.key.clone(), i.path.clone(), i.mode.map_or(default_mode, |m| m as u32)));
                    }
                    out
                }
                None => data.keys().map(|k| (k.clone(), k.clone(), default_mode)).collect(),
            };
            for (key, path, mode) in files {
                let file = local.join(&path);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::fs::write(&file, &data[&key]).map_err(io)?;
                std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io)?;
            }
            return Ok(local.to_path_buf());
        }
        Err(ConfigError(format!("job runner: volume {} has an unsupported source", v.name)))
    }

    async fn spawn(&self, ns: &str, name: &str, p: &Prepared, deadline: Option<Duration>) -> JobRun {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(&p.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.inner.extra_env.lock().unwrap().clone())
            .envs(p.env.iter().cloned())
            .current_dir(&p.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut run = JobRun {
            namespace: ns.to_string(),
            job: name.to_string(),
            args: p.args.clone(),
            env: p.env.iter().cloned().collect(),
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
        };
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                run.stderr = format!("job runner: cannot start the berth binary: {e}");
                return run;
            }
        };
        let output = child.wait_with_output();
        let result = match deadline {
            Some(d) => tokio::time::timeout(d, output).await.ok(),
            None => Some(output.await),
        };
        match result {
            Some(Ok(out)) => {
                run.exit_code = Some(out.status.code().unwrap_or(128));
                run.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                run.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            Some(Err(e)) => {
                run.exit_code = Some(128);
                run.stderr = format!("job runner: waiting for the process: {e}");
            }
            // Dropping the future killed the process (kill_on_drop).
            None => run.stderr = "job runner: killed at activeDeadlineSeconds".into(),
        }
        run
    }
}

struct Prepared {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
}

/// The Secret's data (`data` decoded, `stringData` on top), cached per run; `None` if missing.
async fn secret_data(
    api: &Api<Secret>,
    name: &str,
    cache: &mut HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
) -> Option<BTreeMap<String, Vec<u8>>> {
    if let Some(hit) = cache.get(name) {
        return hit.clone();
    }
    let found = match api.get_opt(name).await {
        Ok(Some(s)) => {
            let mut data: BTreeMap<String, Vec<u8>> =
                s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            Some(data)
        }
        Ok(None) => None,
        Err(e) => panic!("job runner: reading Secret {name}: {e}"),
    };
    cache.insert(name.to_string(), found.clone());
    found
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

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

//! Long-running pods as local processes: how the kubelet stand-in runs the operator itself.
//!
//! A workload pod (not of a Job) whose first container's image is one given to
//! [`Kubelet::run_image`] runs that container as the test crate's `berth` binary for as long
//! as the pod lives. It is prepared like a Job pod's (`support::jobs::prepare`: env and
//! fieldRefs, Secret/ConfigMap/projected volumes, emptyDirs, the pod's user; init and further
//! containers are not run, the latter are reported running), plus what a pod network and the
//! in-cluster client need on a host shared by every pod:
//! - **Ports**: every `containerPort` gets a free loopback port. An argument or environment
//!   value that is exactly `<host>:<containerPort>` or `:<containerPort>` (a listen address,
//!   e.g. `BERTH_METRICS_ADDR=0.0.0.0:8080`) becomes `127.0.0.1:<loopback port>`, so that two
//!   replicas of a Deployment do not collide. [`Kubelet::served_pods`] has the mapping.
//! - **Credentials**: the API server's ServiceAccount admission adds the `kube-api-access-*`
//!   projected volume (a TokenRequest token bound to the pod for its `serviceAccountName`,
//!   `ca.crt` of `kube-root-ca.crt`, the namespace); its files are written as the kubelet
//!   writes them, and the process gets a `KUBECONFIG` whose server is the loopback API server
//!   and whose `tokenFile` and `certificate-authority` are those files. (kube-rs reads the
//!   in-cluster files only from the fixed `/var/run/secrets/kubernetes.io/serviceaccount`, which
//!   two pods on one host cannot share; the token and CA are the pod's own all the same.) Without
//!   that volume (`automountServiceAccountToken: false`) there is no `KUBECONFIG`.
//! - **Probes**: httpGet and tcpSocket readiness and liveness probes run against the mapped
//!   port with the probe's delay, period, timeout and thresholds. `Ready` follows the readiness
//!   probe (without one: ready once started); a failing liveness probe kills the process. Exec
//!   and gRPC probes are not run (they count as passing).
//! - **Restarts**: an exited process starts again (restartPolicy Always) after the kubelet's
//!   back-off (10 s, doubling, at most 300 s), with `restartCount` and `lastState`.
//! - **Deletion**: SIGTERM to the process group, SIGKILL after the deletion's grace period;
//!   only then is the pod deleted (the operator releases its Lease on SIGTERM).
//!
//! Output (stdout and stderr) is appended to `<scratch>/pods/<uid>/<container>.log`. The token
//! is written at each start and not refreshed (kube-rs rereads the file; a test lives far
//! shorter than the token's hour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::reflector;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::super::jobs::{GroupGuard, PrepareError, Prepared, berth_command, tail};
use super::super::operator::free_port;
use super::{CONFIG_RETRY, CState, Inner, Kubelet, set_mode};

/// Where a container finds its service account's token and CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Deletion grace period when the pod gives none.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A pod whose container runs as a local process.
#[derive(Clone, Debug)]
pub struct ServedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `containerPort` → the loopback port it listens on here.
    pub ports: BTreeMap<i32, u16>,
    /// The container's stdout and stderr, every start appended.
    pub log: PathBuf,
    /// The running process (0 between starts).
    pid: Arc<AtomicU32>,
}

impl ServedPod {
    /// `http://127.0.0.1:<mapped port>{path}` for a `containerPort`.
    pub fn url(&self, container_port: i32, path: &str) -> String {
        let port = self.ports.get(&container_port).unwrap_or_else(|| {
            panic!("pod {}/{} declares no containerPort {container_port}", self.namespace, self.name)
        });
        format!("http://127.0.0.1:{port}{path}")
    }

    /// The running process's id, if one runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }

    /// What the process printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A served pod's task.
pub(super) struct ServedTask {
    pod: ServedPod,
    handle: JoinHandle<()>,
    /// Ask the process to stop, with this grace period.
    stop: Option<oneshot::Sender<Duration>>,
    /// The task has ended: no process is left.
    done: Arc<AtomicBool>,
}

impl ServedTask {
    pub(super) fn abort(&self) {
        self.handle.abort();
    }
}

/// Sets the flag when dropped (however the task ends).
struct DoneOnDrop(Arc<AtomicBool>);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Kubelet {
    /// Runs workload pods of `repository` (an image reference without tag or digest, e.g.
    /// `ghcr.io/berth-dev/berth`) as local `berth` processes (see `kubelet::serve`).
    pub fn run_image(&self, repository: &str) {
        self.inner.served_images.lock().unwrap().push(repository.to_string());
    }

    /// The API server URL that served pods' kubeconfigs point at (`Cluster::start` sets it).
    pub fn set_api_server(&self, url: &str) {
        *self.inner.api_server.lock().unwrap() = Some(url.to_string());
    }

    /// Served pods whose process is still running or due to restart.
    pub fn served_pods(&self) -> Vec<ServedPod> {
        let served = self.inner.served.lock().unwrap();
        served.values().filter(|t| !t.done.load(Ordering::SeqCst)).map(|t| t.pod.clone()).collect()
    }
}

/// The image reference without tag or digest.
pub(super) fn repository(image: &str) -> &str {
    let bare = image.split('@').next().unwrap_or(image);
    match bare.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => bare,
    }
}

/// A listen address `<host>:<port>` or `:<port>` of a declared port, moved to its loopback port.
fn localize(value: &str, ports: &BTreeMap<i32, u16>) -> Option<String> {
    let (host, port) = value.rsplit_once(':')?;
    let host_ok = host.is_empty() || ["0.0.0.0", "127.0.0.1", "localhost", "[::]", "::"].contains(&host);
    let local = ports.get(&port.parse::<i32>().ok()?)?;
    host_ok.then(|| format!("127.0.0.1:{local}"))
}

fn localize_all(p: &mut Prepared, ports: &BTreeMap<i32, u16>) {
    for v in p.env.iter_mut().map(|(_, v)| v).chain(p.args.iter_mut()) {
        let (prefix, value) = match v.split_once('=') {
            Some((flag, rest)) if flag.starts_with('-') => (format!("{flag}="), rest.to_string()),
            _ => (String::new(), v.clone()),
        };
        if let Some(local) = localize(&value, ports) {
            *v = format!("{prefix}{local}");
        }
    }
}

/// A kubeconfig for the loopback API server with the pod's own token and CA files.
fn kubeconfig(server: &str, sa_dir: &Path, namespace: &str) -> String {
    let doc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "in-cluster", "cluster": {
            "server": server, "certificate-authority": sa_dir.join("ca.crt")}}],
        "users": [{"name": "pod", "user": {"tokenFile": sa_dir.join("token")}}],
        "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "pod", "namespace": namespace}}],
        "current-context": "in-cluster",
    });
    // JSON is YAML.
    serde_json::to_string_pretty(&doc).unwrap()
}

/// What a probe says now.
enum Check {
    Pass,
    Fail,
}

/// One probe with its schedule and counters.
struct ProbeState {
    probe: Probe,
    port: Option<u16>,
    next: Instant,
    successes: i32,
    failures: i32,
}

impl ProbeState {
    fn new(probe: Option<&Probe>, c: &Container, ports: &BTreeMap<i32, u16>, started: Instant) -> Option<ProbeState> {
        let probe = probe?.clone();
        let target = probe
            .http_get
            .as_ref()
            .map(|h| h.port.clone())
            .or_else(|| probe.tcp_socket.as_ref().map(|t| t.port.clone()));
        let number = match target {
            Some(IntOrString::Int(n)) => Some(n),
            Some(IntOrString::String(name)) => {
                c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.container_port)
            }
            None => None,
        };
        let port = number.map(|n| ports.get(&n).copied().unwrap_or(n as u16));
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        Some(ProbeState { probe, port, next: started + delay, successes: 0, failures: 0 })
    }

    /// Probes when due; `Some(true)` once success threshold is met, `Some(false)` once the
    /// failure threshold is, `None` otherwise.
    async fn tick(&mut self, http: &reqwest::Client) -> Option<bool> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64);
        let timeout = Duration::from_secs(self.probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let check = match (self.port, &self.probe.http_get, &self.probe.tcp_socket) {
            (Some(port), Some(h), _) => {
                let scheme = if h.scheme.as_deref() == Some("HTTPS") { "https" } else { "http" };
                let url = format!("{scheme}://127.0.0.1:{port}{}", h.path.as_deref().unwrap_or("/"));
                match http.get(&url).timeout(timeout).send().await {
                    Ok(r) if (200..400).contains(&r.status().as_u16()) => Check::Pass,
                    _ => Check::Fail,
                }
            }
            (Some(port), None, Some(_)) => {
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
                    Ok(Ok(_)) => Check::Pass,
                    _ => Check::Fail,
                }
            }
            _ => Check::Pass,
        };
        match check {
            Check::Pass => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= self.probe.success_threshold.unwrap_or(1)).then_some(true)
            }
            Check::Fail => {
                self.successes = 0;
                self.failures += 1;
                (self.failures >= self.probe.failure_threshold.unwrap_or(3)).then_some(false)
            }
        }
    }
}

impl Inner {
    /// Whether the pod's first container is of an image that runs here.
    pub(super) fn runs_locally(&self, pod: &Pod) -> bool {
        let Some(image) = pod.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.as_deref()) else {
            return false;
        };
        self.served_images.lock().unwrap().iter().any(|r| r == repository(image))
    }

    /// Starts the pod's process task once.
    pub(super) fn start_served_pod(self: &Arc<Self>, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut served = self.served.lock().unwrap();
        if served.contains_key(&uid) {
            return;
        }
        let Some(main) = pod.spec.as_ref().and_then(|s| s.containers.first()).cloned() else { return };
        let ports = main.ports.iter().flatten().map(|p| (p.container_port, free_port())).collect();
        let info = ServedPod {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            ports,
            log: self.scratch.join("pods").join(&uid).join(format!("{}.log", main.name)),
            pid: Arc::default(),
        };
        let (tx, rx) = oneshot::channel();
        let done = Arc::new(AtomicBool::new(false));
        let me = self.clone();
        let (p, i, d) = (pod.clone(), info.clone(), done.clone());
        let handle = tokio::spawn(async move { me.run_served_pod(p, i, rx, d).await });
        served.insert(uid, ServedTask { pod: info, handle, stop: Some(tx), done });
    }

    /// Asks a served pod's process to stop; `true` when none is left (or there never was one).
    pub(super) fn stop_served(&self, uid: &str, grace: Duration) -> bool {
        let mut served = self.served.lock().unwrap();
        let Some(task) = served.get_mut(uid) else { return true };
        if let Some(stop) = task.stop.take() {
            self.log(format!("pod {}/{}: stopping its process", task.pod.namespace, task.pod.name));
            let _ = stop.send(grace);
        }
        if task.done.load(Ordering::SeqCst) {
            served.remove(uid);
            return true;
        }
        false
    }

    /// The pod as the store has it now (same uid), else as given.
    fn latest(&self, pod: &Pod) -> Pod {
        let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
        self.stores
            .pods
            .get(&reflector::ObjectRef::new(name).within(ns))
            .map(|p| (*p).clone())
            .filter(|p| p.metadata.uid == pod.metadata.uid)
            .unwrap_or_else(|| pod.clone())
    }

    /// Writes the pod's status with `main` in state `state` and the other containers running.
    async fn served_status(&self, pod: &Pod, phase: &str, state: CState) {
        let spec = pod.spec.as_ref();
        let mut containers = vec![state.clone()];
        containers.extend(spec.into_iter().flat_map(|s| s.containers.iter().skip(1)).map(CState::running));
        let latest = self.latest(pod);
        let status = self.status_patch(&latest, phase, &[], &containers, None);
        if let Err(e) = self.write_status(&latest, status).await {
            self.log(format!("pod {}: {e}", super::key_of(&pod.metadata)));
        }
    }

    async fn run_served_pod(
        self: Arc<Self>,
        pod: Pod,
        served: ServedPod,
        mut stop: oneshot::Receiver<Duration>,
        done: Arc<AtomicBool>,
    ) {
        let _done = DoneOnDrop(done);
        let Some(spec) = pod.spec.clone() else { return };
        let Some(main) = spec.containers.first().cloned() else { return };
        let key = format!("{}/{}", served.namespace, served.name);
        let fields = self.pod_fields(&pod);
        let dir = self.scratch.join("pods").join(&served.uid);
        let _ = std::fs::create_dir_all(&dir);
        set_mode(&dir, 0o755);

        // Set up until the container can start (a Secret may come later).
        let mut prepared = loop {
            match self.setup(&pod, &spec, &fields, &dir, &[], &main).await {
                Ok(mut p) => break p.pop().expect("the main container").1,
                Err((c, e)) => {
                    let reason = match &e {
                        PrepareError::Config(m) if m.starts_with("MountVolume.") => "ContainerCreating",
                        PrepareError::Config(_) => "CreateContainerConfigError",
                        PrepareError::Unsupported(_) => "CreateContainerError",
                    };
                    self.served_status(&pod, "Pending", CState::waiting(&c, reason, e.message())).await;
                    self.log(format!("pod {key}: cannot start: {}", e.message()));
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(CONFIG_RETRY) => {}
                    }
                }
            }
        };
        localize_all(&mut prepared, &served.ports);
        let sa_mount =
            main.volume_mounts.iter().flatten().find(|m| m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_DIR);
        let sa_dir = sa_mount.and_then(|m| prepared.volumes.iter().find(|v| v.name == m.name)).map(|v| v.dir.clone());
        let server = self.api_server.lock().unwrap().clone();
        if let (Some(sa_dir), Some(server)) = (sa_dir, server) {
            let path = dir.join("kubeconfig");
            std::fs::write(&path, kubeconfig(&server, &sa_dir, &served.namespace)).expect("write the pod's kubeconfig");
            set_mode(&path, 0o644);
            prepared.env.push(("KUBECONFIG".into(), path.display().to_string()));
        }

        let extra_env = self.extra_env.lock().unwrap().clone();
        // Switching users needs root; otherwise the process runs as the test's own user.
        // SAFETY: geteuid has no preconditions.
        let identity = (unsafe { libc::geteuid() } == 0).then(|| self.identity(&spec, &main));
        let http = reqwest::Client::new();
        let mut restarts = 0;
        let mut last_state = json!({});
        loop {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&served.log).expect("pod log");
            let mut cmd = berth_command(&prepared, &extra_env, identity.as_ref());
            cmd.stdout(log.try_clone().expect("pod log")).stderr(log);
            self.log(format!("pod {key}: starting {} as {identity:?}: berth {}", main.name, prepared.args.join(" ")));
            let (code, message) = match cmd.spawn() {
                Err(e) => (128, format!("kubelet stand-in: cannot start the berth binary: {e}")),
                Ok(mut child) => {
                    let guard = GroupGuard::new(child.id().unwrap_or_default(), Some(&self.groups));
                    served.pid.store(child.id().unwrap_or_default(), Ordering::SeqCst);
                    let started = Instant::now();
                    let mut readiness = ProbeState::new(main.readiness_probe.as_ref(), &main, &served.ports, started);
                    let mut liveness = ProbeState::new(main.liveness_probe.as_ref(), &main, &served.ports, started);
                    let mut ready = readiness.is_none();
                    let state = |ready: bool| CState {
                        ready,
                        restart_count: restarts,
                        last_state: last_state.clone(),
                        ..CState::running(&main)
                    };
                    self.served_status(&pod, "Running", state(ready)).await;
                    let status = loop {
                        tokio::select! {
                            status = child.wait() => break status,
                            grace = &mut stop => {
                                let grace = grace.unwrap_or(DEFAULT_GRACE);
                                guard.signal(libc::SIGTERM);
                                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                                    self.log(format!("pod {key}: still running after {grace:?}: killed"));
                                }
                                return;
                            }
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                                if let Some(r) = readiness.as_mut()
                                    && let Some(now_ready) = r.tick(&http).await
                                    && now_ready != ready
                                {
                                    ready = now_ready;
                                    self.log(format!("pod {key}: readiness probe: ready={ready}"));
                                    self.served_status(&pod, "Running", state(ready)).await;
                                }
                                if let Some(l) = liveness.as_mut()
                                    && l.tick(&http).await == Some(false)
                                {
                                    self.log(format!("pod {key}: liveness probe failed: killed"));
                                    guard.signal(libc::SIGKILL);
                                }
                            }
                        }
                    };
                    drop(guard);
                    served.pid.store(0, Ordering::SeqCst);
                    use std::os::unix::process::ExitStatusExt;
                    let code = match status {
                        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                        Err(_) => 128,
                    };
                    (code, tail(&std::fs::read_to_string(&served.log).unwrap_or_default(), 8))
                }
            };
            // restartPolicy Always: back-off, then start again.
            restarts += 1;
            let reason = if code == 0 { "Completed" } else { "Error" };
            last_state = CState::terminated(&main, code, reason, &message).state;
            let backoff = Duration::from_secs((10u64 << (restarts - 1).min(5)).min(300));
            self.log(format!("pod {key}: exited with {code}; restarting in {backoff:?}"));
            let waiting = CState {
                restart_count: restarts,
                last_state: last_state.clone(),
                ..CState::waiting(
                    &main,
                    "CrashLoopBackOff",
                    &format!(
                        "back-off {}s restarting failed container={} pod={}",
                        backoff.as_secs(),
                        main.name,
                        super::pod_desc(&pod)
                    ),
                )
            };
            self.served_status(&pod, "Running", waiting).await;
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }
}

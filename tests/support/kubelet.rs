//! The kubelet stand-in of the real control plane (`support::cluster`): what a node, its
//! kubelet, the scheduler, a CSI hostpath driver (provisioner, resizer, deleter) and
//! cert-manager would do, through a cluster-admin `kube::Client`.
//!
//! ```ignore
//! let kubelet = Kubelet::start(cluster.admin_client(), scratch.path()).await;
//! kubelet.with_host_override("db.team.svc:5432", format!("127.0.0.1:{}", pg.port));
//! kubelet.with_env("AWS_EC2_METADATA_DISABLED", "true");
//! // Deployments become available, Jobs run `berth …` locally and end Complete or Failed
//! // through the real Job controller; kubelet.runs_of("job") has each pod's output.
//! ```
//!
//! - **Node** `berth-test-node` (Ready; cpu 16, memory 64Gi, pods 1000; zone `zone-a`) with its
//!   Lease in `kube-node-lease` renewed every 10 s (the real node-lifecycle controller would
//!   otherwise taint it and evict its pods).
//! - **Scheduling**: pods without `spec.nodeName` (default scheduler, no scheduling gates) are
//!   bound through `pods/binding` when the node fits — `nodeSelector`, required node affinity,
//!   taints against tolerations, every PVC (also generic ephemeral volumes) present, not being
//!   deleted and bound — otherwise they get `PodScheduled=False` reason `Unschedulable` with a
//!   message in the scheduler's words. Resources, pod (anti-)affinity and topology spread are
//!   not checked (one node).
//! - **Workload pods** (not of a Job) become Running and Ready with a pod IP from 10.244.0.0/16
//!   (nothing listens there), no process runs; except when the kubelet would refuse a
//!   container: `runAsNonRoot` without a non-root `runAsUser` and an image whose USER
//!   ([`Kubelet::set_image_user`], default `65532`) is root or not numeric →
//!   `CreateContainerConfigError` with the kubelet's message, pod Pending.
//! - **Job pods** (owner Job, or label `batch.kubernetes.io/job-name`): init containers and the
//!   first container run as local processes of the test crate's `berth` binary
//!   (`support::jobs`: env, Secret/ConfigMap/projected volumes, emptyDirs, PVCs as their PV's
//!   directory, host overrides) as the pod's user: `runAsUser`/`runAsGroup` over the image's
//!   USER, supplementary groups `fsGroup` + `supplementalGroups`; with an `fsGroup` the volumes
//!   are re-owned as the kubelet does (group fsGroup, group rw/ro bits, setgid directories;
//!   `OnRootMismatch` honoured; a CSI volume only when RWO — ours carry fsType ext4). Status:
//!   Running, then Succeeded/Failed with `state.terminated` (exit code, reason
//!   Completed/Error, message = last lines of stderr on failure); `restartPolicy: OnFailure`
//!   restarts in place (10 s, 20 s … backoff, `restartCount`); the pod's
//!   `activeDeadlineSeconds` fails it with reason `DeadlineExceeded`. A missing Secret/key/claim
//!   leaves it Pending (`CreateContainerConfigError`, or `ContainerCreating` for a volume)
//!   and is retried every 2 s; a program other than berth or sh fails it at once (`StartError`).
//!   Each pod runs once; retries are new pods from the Job controller.
//! - **Deletion**: any pod with a `deletionTimestamp` has its processes killed and is deleted
//!   with grace period 0 (finalizers stay others' business).
//! - **Volumes**: StorageClass `standard` (default, provisioner `berth.test/hostpath`,
//!   expansion allowed, Immediate, Delete). Pending claims of our classes get a PV
//!   `pvc-<claim uid>` (CSI driver `hostpath.berth.test` — a driver name cannot hold a `/` —,
//!   fsType ext4) whose data directory is `<scratch>/pv/<pv>` (root,
//!   0755 — like a fresh filesystem: a non-root process needs an fsGroup to write there); the
//!   real PV controller binds them. WaitForFirstConsumer claims are provisioned once the
//!   "scheduler" has set `volume.kubernetes.io/selected-node`. Growing a bound claim grows the
//!   PV and the claim's `status.capacity`. Released PVs with reclaim Delete are deleted with
//!   their directory.
//! - **cert-manager**: every `cert-manager.io/v1` Certificate gets its `spec.secretName` Secret
//!   (kubernetes.io/tls; `tls.crt`, `tls.key`, `ca.crt` of a self-signed certificate for its
//!   dnsNames, valid 90 days) and `Ready=True`; re-issued when dnsNames or commonName change or
//!   the Secret goes.
//!
//! - **Long-running pods of registered images** ([`Kubelet::run_image`], the operator's own)
//!   run as local `berth` processes with the pod's service-account token, ports remapped to
//!   loopback, probes, restarts and graceful deletion: see [`serve`].
//!
//! Writes are logged to stderr with `BERTH_TEST_KUBELET_LOG=1`. An error on one object is
//! logged and retried on the next pass (every second, and on every watch event).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

mod serve;
pub use serve::ServedPod;

use super::jobs::{
    Identity, JobRun, LocalVolume, PodFields, PrepareError, Prepared, ProcessGroups, Sandbox, kill_all, prepare,
    run_process, tail,
};

const MANAGER: &str = "berth-test-kubelet";
const PROVISIONER: &str = "berth.test/hostpath";
/// The CSI driver of our PVs (a driver name must be a DNS subdomain: no `/`, unlike a
/// provisioner name).
const CSI_DRIVER: &str = "hostpath.berth.test";
const STORAGE_CLASS: &str = "standard";
const DEFAULT_IMAGE_USER: &str = "65532";
const HOST_IP: &str = "127.0.0.1";
const KUBELET_VERSION: &str = "v1.35.4";
/// How often every object is looked at again, watch events or not.
const RESYNC: Duration = Duration::from_secs(1);
/// A claim, Secret or key missing at a container's start is looked for again this often.
const CONFIG_RETRY: Duration = Duration::from_secs(2);

/// The kubelet stand-in; aborts its tasks and kills its processes when dropped.
pub struct Kubelet {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

struct JobTask {
    handle: JoinHandle<()>,
    cancel: Option<oneshot::Sender<()>>,
}

struct Stores {
    pods: Store<Pod>,
    nodes: Store<Node>,
    pvcs: Store<PersistentVolumeClaim>,
    pvs: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    certificates: Store<DynamicObject>,
}

struct Inner {
    client: kube::Client,
    scratch: PathBuf,
    log: bool,
    stores: Stores,
    host_overrides: Mutex<Vec<(String, String)>>,
    extra_env: Mutex<Vec<(String, String)>>,
    image_users: Mutex<HashMap<String, String>>,
    runs: Mutex<Vec<JobRun>>,
    /// Job pods started, by uid (each runs once).
    job_pods: Mutex<HashMap<String, JobTask>>,
    groups: ProcessGroups,
    /// Pod IPs handed out, by uid.
    ips: Mutex<HashMap<String, String>>,
    next_ip: AtomicU32,
    /// Pods deleted (uid → when), not to repeat the call while finalizers hold them.
    deleted: Mutex<HashMap<String, Instant>>,
    /// Workload pods whose volumes got their fsGroup.
    volumes_set_up: Mutex<HashSet<String>>,
    /// When the node's Ready condition first became true.
    ready_since: Time,
    /// Image repositories whose workload pods run as local processes (`serve`).
    served_images: Mutex<Vec<String>>,
    /// Those pods' tasks, by uid.
    served: Mutex<HashMap<String, serve::ServedTask>>,
    /// The API server URL for served pods' kubeconfigs.
    api_server: Mutex<Option<String>>,
}

impl Kubelet {
    /// The node's name.
    pub const NODE: &'static str = "berth-test-node";

    /// Registers the node and the StorageClass and starts every loop; returns once the node is
    /// Ready and the watches have listed. `scratch` holds volume data (`pv/`) and pod
    /// directories (`pods/`); it is made traversable for other users (0755).
    pub async fn start(client: kube::Client, scratch: &Path) -> Kubelet {
        let scratch = scratch.to_path_buf();
        open_for_others(&scratch);
        for sub in ["pv", "pods"] {
            let d = scratch.join(sub);
            std::fs::create_dir_all(&d).expect("kubelet scratch");
            set_mode(&d, 0o755);
        }
        let log = std::env::var("BERTH_TEST_KUBELET_LOG").is_ok_and(|v| v == "1");

        let mut tasks = Vec::new();
        let pods_kick = Arc::new(Notify::new());
        let volumes_kick = Arc::new(Notify::new());
        let certs_kick = Arc::new(Notify::new());
        let certificate_resource = certificate_resource();
        let stores = Stores {
            pods: reflect(&mut tasks, Api::all(client.clone()), watcher::Config::default(), &[&pods_kick]),
            nodes: reflect(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={}", Self::NODE)),
                &[&pods_kick],
            ),
            pvcs: reflect(
                &mut tasks,
                Api::all(client.clone()),
                watcher::Config::default(),
                &[&pods_kick, &volumes_kick],
            ),
            pvs: reflect(&mut tasks, Api::all(client.clone()), watcher::Config::default(), &[&volumes_kick]),
            classes: reflect(&mut tasks, Api::all(client.clone()), watcher::Config::default(), &[&volumes_kick]),
            certificates: {
                let writer = reflector::store::Writer::new(certificate_resource.clone());
                let reader = writer.as_reader();
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &certificate_resource);
                let kick = certs_kick.clone();
                let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
                tasks.push(tokio::spawn(async move {
                    stream
                        .for_each(|_| {
                            kick.notify_one();
                            futures::future::ready(())
                        })
                        .await
                }));
                reader
            },
        };
        let inner = Arc::new(Inner {
            client,
            scratch,
            log,
            stores,
            host_overrides: Mutex::default(),
            extra_env: Mutex::default(),
            image_users: Mutex::default(),
            runs: Mutex::default(),
            job_pods: Mutex::default(),
            groups: ProcessGroups::default(),
            ips: Mutex::default(),
            next_ip: AtomicU32::new(0),
            deleted: Mutex::default(),
            volumes_set_up: Mutex::default(),
            ready_since: Time(jiff::Timestamp::now()),
            served_images: Mutex::default(),
            served: Mutex::default(),
            api_server: Mutex::default(),
        });

        // The node and the class first, so that nothing is scheduled before the node exists.
        let started = Instant::now();
        loop {
            let node = inner.register_node().await;
            let class = inner.storage_class().await;
            match (node, class) {
                (Ok(()), Ok(())) => break,
                (n, c) => {
                    let e = n.err().or(c.err()).unwrap_or_default();
                    assert!(started.elapsed() < Duration::from_secs(60), "kubelet stand-in: cannot register: {e}");
                    inner.log(format!("registering the node: {e} (retrying)"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let ready = async {
            inner.stores.pods.wait_until_ready().await.ok();
            inner.stores.nodes.wait_until_ready().await.ok();
            inner.stores.pvcs.wait_until_ready().await.ok();
            inner.stores.pvs.wait_until_ready().await.ok();
            inner.stores.classes.wait_until_ready().await.ok();
        };
        if tokio::time::timeout(Duration::from_secs(60), ready).await.is_err() {
            panic!("kubelet stand-in: the watches did not list within 60 s");
        }

        let me = inner.clone();
        tasks.push(tokio::spawn(async move { me.node_loop().await }));
        let me = inner.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                me.pods_pass().await;
                kicked(&pods_kick).await;
            }
        }));
        let me = inner.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                me.volumes_pass().await;
                kicked(&volumes_kick).await;
            }
        }));
        let me = inner.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                me.certificates_pass().await;
                kicked(&certs_kick).await;
            }
        }));
        Kubelet { inner, tasks }
    }

    /// Maps an in-cluster `host:port` (or `host`) to a local one in Job pods' arguments and
    /// environment (see `support::jobs`).
    pub fn with_host_override(&self, from: impl Into<String>, to: impl Into<String>) {
        self.inner.host_overrides.lock().unwrap().push((from.into(), to.into()));
    }

    /// Adds a variable to every Job process's environment (before the container's own).
    pub fn with_env(&self, name: impl Into<String>, value: impl Into<String>) {
        self.inner.extra_env.lock().unwrap().push((name.into(), value.into()));
    }

    /// The USER of `image` (exact reference, or the reference without tag/digest): `"0"`,
    /// `"root"`, `"1000"`, `"1000:1000"`. Default `65532` (group 65532, as distroless'
    /// nonroot). A numeric user without a group runs with the group of the same number.
    pub fn set_image_user(&self, image: &str, user: &str) {
        self.inner.image_users.lock().unwrap().insert(image.to_string(), user.to_string());
    }

    /// Every Job pod's process so far (one per container start), in order.
    pub fn runs(&self) -> Vec<JobRun> {
        self.inner.runs.lock().unwrap().clone()
    }

    /// The runs of one Job's pods.
    pub fn runs_of(&self, job: &str) -> Vec<JobRun> {
        self.runs().into_iter().filter(|r| r.job == job).collect()
    }

    /// The data directory of the PV bound to the claim (`None`: not bound, or not a volume
    /// this machine has a directory for).
    pub async fn pvc_dir(&self, ns: &str, claim: &str) -> Option<PathBuf> {
        self.inner.claim_volume(ns, claim).await.ok().map(|c| c.dir)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, t) in self.inner.job_pods.lock().unwrap().drain() {
            t.handle.abort();
        }
        for (_, t) in self.inner.served.lock().unwrap().drain() {
            t.abort();
        }
        kill_all(&self.inner.groups);
    }
}

/// Starts a reflector for `api` that wakes `kicks` on every event.
fn reflect<K>(tasks: &mut Vec<JoinHandle<()>>, api: Api<K>, config: watcher::Config, kicks: &[&Arc<Notify>]) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kicks: Vec<Arc<Notify>> = kicks.iter().map(|k| (*k).clone()).collect();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tasks.push(tokio::spawn(async move {
        stream
            .for_each(|_| {
                for k in &kicks {
                    k.notify_one();
                }
                futures::future::ready(())
            })
            .await
    }));
    reader
}

/// Waits for a watch event or the resync period.
async fn kicked(kick: &Notify) {
    let _ = tokio::time::timeout(RESYNC, kick.notified()).await;
}

fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

fn set_mode(path: &Path, mode: u32) {
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode));
}

/// Makes `dir` 0755 and its ancestors searchable by others, so that another uid reaches it.
fn open_for_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).expect("kubelet scratch");
    set_mode(dir, 0o755);
    for a in dir.ancestors().skip(1) {
        if let Ok(m) = std::fs::metadata(a) {
            let mode = m.permissions().mode();
            if mode & 0o001 == 0 {
                set_mode(a, (mode & 0o7777) | 0o001);
            }
        }
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn time_json(t: &Time) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// `namespace/name`.
fn key_of(meta: &kube::api::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

// ---------------------------------------------------------------------------------------------
// Node

impl Inner {
    fn log(&self, msg: impl AsRef<str>) {
        if self.log {
            // kube's API errors end with the whole Status in Debug form; the message suffices.
            let msg = msg.as_ref();
            let msg = msg.split_once(" (Status {").map_or(msg, |(m, _)| m);
            eprintln!("[kubelet] {msg}");
        }
    }

    async fn register_node(&self) -> Result<(), String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": Kubelet::NODE, "labels": {
                "kubernetes.io/hostname": Kubelet::NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "zone-a",
                "topology.kubernetes.io/region": "region-a",
            }},
        });
        // Registered with its status in one request, as the kubelet does: a node first seen
        // without a Ready condition gets the node-lifecycle controller's not-ready taint.
        let mut first = node.clone();
        first["status"] = self.node_status_json()["status"].clone();
        let first: Node = serde_json::from_value(first).map_err(|e| e.to_string())?;
        match nodes.create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, &first).await {
            Ok(_) => self.log(format!("registered node {}", Kubelet::NODE)),
            Err(e) if is_conflict(&e) => {
                nodes
                    .patch(Kubelet::NODE, &apply_params(), &Patch::Apply(&node))
                    .await
                    .map_err(|e| format!("Node: {e}"))?;
            }
            Err(e) => return Err(format!("Node: {e}")),
        }
        self.node_status().await?;
        self.renew_lease().await
    }

    async fn node_status(&self) -> Result<(), String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = self.node_status_json();
        nodes
            .patch_status(Kubelet::NODE, &apply_params(), &Patch::Apply(&status))
            .await
            .map(|_| ())
            .map_err(|e| format!("Node status: {e}"))
    }

    fn node_status_json(&self) -> Value {
        let resources = json!({"cpu": "16", "memory": "64Gi", "pods": "1000", "ephemeral-storage": "200Gi"});
        let beat = time_json(&now());
        let since = time_json(&self.ready_since);
        let cond = |ty: &str, status: &str, reason: &str, message: &str| {
            json!({"type": ty, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": beat, "lastTransitionTime": since})
        };
        json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": Kubelet::NODE},
            "status": {
                "capacity": resources, "allocatable": resources,
                "conditions": [
                    cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                ],
                "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": Kubelet::NODE}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": "berth-test-node", "systemUUID": "berth-test-node", "bootID": "berth-test-node",
                    "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 13 (trixie)",
                    "containerRuntimeVersion": "berth-test://1.0.0", "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
                },
            },
        })
    }

    async fn renew_lease(&self) -> Result<(), String> {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-node-lease");
        let owner = match self.stores.nodes.state().first().and_then(|n| n.metadata.uid.clone()) {
            Some(uid) => Some(uid),
            None => {
                Api::<Node>::all(self.client.clone())
                    .get(Kubelet::NODE)
                    .await
                    .map_err(|e| format!("Node: {e}"))?
                    .metadata
                    .uid
            }
        };
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": Kubelet::NODE, "namespace": "kube-node-lease", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": Kubelet::NODE, "uid": owner}]},
            "spec": {"holderIdentity": Kubelet::NODE, "leaseDurationSeconds": 40,
                     "renewTime": serde_json::to_value(MicroTime(jiff::Timestamp::now())).unwrap()},
        });
        leases
            .patch(Kubelet::NODE, &apply_params(), &Patch::Apply(&lease))
            .await
            .map(|_| ())
            .map_err(|e| format!("Lease: {e}"))
    }

    async fn node_loop(&self) {
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tick += 1;
            // The status (and the Node itself, should someone delete it) once a minute.
            let node_missing = self.stores.nodes.state().is_empty();
            if (tick.is_multiple_of(6) || node_missing)
                && let Err(e) = self.register_node().await
            {
                self.log(format!("node: {e}"));
            }
            if let Err(e) = self.renew_lease().await {
                self.log(format!("lease: {e}"));
            }
        }
    }

    async fn storage_class(&self) -> Result<(), String> {
        let classes: Api<StorageClass> = Api::all(self.client.clone());
        let class = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "allowVolumeExpansion": true,
            "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete",
        });
        match classes.create(&PostParams::default(), &serde_json::from_value(class).unwrap()).await {
            Ok(_) => {
                self.log(format!("created StorageClass {STORAGE_CLASS}"));
                Ok(())
            }
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(format!("StorageClass: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pods: scheduling, status, deletion

const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The scheduler's verdict for one pod.
enum Fit {
    Yes,
    No(String),
    /// WaitForFirstConsumer claims to provision for this node first.
    SelectNode(Vec<String>),
    /// Claims being provisioned.
    Wait,
}

fn job_name(pod: &Pod) -> Option<String> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))
        .map(|o| o.name.clone());
    owner.or_else(|| pod.metadata.labels.as_ref()?.get("batch.kubernetes.io/job-name").cloned())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pod's description in kubelet messages: `"name_namespace(uid)"` (format.Pod).
fn pod_desc(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// A container's security settings: container over pod.
struct Effective {
    run_as_non_root: bool,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
}

fn effective(spec: &PodSpec, c: &Container) -> Effective {
    let p = spec.security_context.as_ref();
    let s = c.security_context.as_ref();
    Effective {
        run_as_non_root: s.and_then(|s| s.run_as_non_root).or(p.and_then(|p| p.run_as_non_root)).unwrap_or(false),
        run_as_user: s.and_then(|s| s.run_as_user).or(p.and_then(|p| p.run_as_user)),
        run_as_group: s.and_then(|s| s.run_as_group).or(p.and_then(|p| p.run_as_group)),
    }
}

/// An image's USER: `(uid if numeric or "root", name if not numeric, gid if given)`.
fn parse_user(user: &str) -> (Option<u32>, Option<String>, Option<u32>) {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, g.parse().ok()),
        None => (user, None),
    };
    match u.parse::<u32>() {
        Ok(uid) => (Some(uid), None, g),
        Err(_) => (None, Some(u.to_string()), g),
    }
}

impl Inner {
    fn image_user(&self, image: &str) -> String {
        let users = self.image_users.lock().unwrap();
        let bare = image.split('@').next().unwrap_or(image);
        let bare = match bare.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => bare,
        };
        users.get(image).or_else(|| users.get(bare)).cloned().unwrap_or_else(|| DEFAULT_IMAGE_USER.into())
    }

    /// The kubelet's `verifyRunAsNonRoot`.
    fn verify_non_root(&self, pod: &Pod, spec: &PodSpec, c: &Container) -> Result<(), String> {
        let e = effective(spec, c);
        if !e.run_as_non_root {
            return Ok(());
        }
        let desc = pod_desc(pod);
        if let Some(uid) = e.run_as_user {
            if uid == 0 {
                return Err(format!(
                    "container's runAsUser breaks non-root policy (pod: {desc:?}, container: {})",
                    c.name
                ));
            }
            return Ok(());
        }
        let user = self.image_user(c.image.as_deref().unwrap_or(""));
        match parse_user(&user) {
            (Some(0), _, _) => Err(format!(
                "container has runAsNonRoot and image will run as root (pod: {desc:?}, container: {})",
                c.name
            )),
            (None, Some(name), _) if !name.is_empty() => Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: {desc:?}, container: {})",
                c.name
            )),
            _ => Ok(()),
        }
    }

    /// Who a container's process runs as.
    fn identity(&self, spec: &PodSpec, c: &Container) -> Identity {
        let e = effective(spec, c);
        let (image_uid, image_name, image_gid) = parse_user(&self.image_user(c.image.as_deref().unwrap_or("")));
        let image_uid = image_uid.or_else(|| (image_name.as_deref() == Some("root")).then_some(0));
        let uid = e.run_as_user.map(|u| u as u32).or(image_uid).unwrap_or(65532);
        let gid = e.run_as_group.map(|g| g as u32).or(image_gid).unwrap_or(uid);
        let psc = spec.security_context.as_ref();
        let mut groups: Vec<u32> = psc.and_then(|p| p.fs_group).map(|g| g as u32).into_iter().collect();
        groups
            .extend(psc.and_then(|p| p.supplemental_groups.clone()).unwrap_or_default().into_iter().map(|g| g as u32));
        groups.dedup();
        Identity { uid, gid, groups }
    }

    fn pod_ip(&self, pod: &Pod) -> String {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return HOST_IP.into();
        }
        if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            return ip;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.ips
            .lock()
            .unwrap()
            .entry(uid)
            .or_insert_with(|| {
                let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
                format!("10.244.{}.{}", (n / 250) % 256, n % 250 + 2)
            })
            .clone()
    }

    async fn pods_pass(self: &Arc<Self>) {
        let pods = self.stores.pods.state();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        for pod in &pods {
            let result = if pod.metadata.deletion_timestamp.is_some() {
                self.delete_pod(pod).await
            } else if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none_or(str::is_empty) {
                self.schedule(pod).await
            } else if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(Kubelet::NODE) {
                Ok(())
            } else if job_name(pod).is_some() {
                self.start_job_pod(pod);
                Ok(())
            } else if is_terminal(pod) {
                Ok(())
            } else if self.runs_locally(pod) {
                self.start_served_pod(pod);
                Ok(())
            } else {
                self.workload_status(pod).await
            };
            if let Err(e) = result {
                self.log(format!("pod {}: {e}", key_of(&pod.metadata)));
            }
        }
        // Job pods gone from the cluster: their processes go too.
        let mut gone = Vec::new();
        for (uid, t) in self.job_pods.lock().unwrap().iter_mut() {
            if !live.contains(uid)
                && let Some(c) = t.cancel.take()
            {
                gone.push(uid.clone());
                let _ = c.send(());
            }
        }
        for uid in gone {
            self.log(format!("pod {uid} is gone: process killed"));
        }
        let gone: Vec<String> = self.served.lock().unwrap().keys().filter(|u| !live.contains(*u)).cloned().collect();
        for uid in gone {
            self.stop_served(&uid, Duration::ZERO);
        }
        self.deleted.lock().unwrap().retain(|uid, _| live.contains(uid));
        self.volumes_set_up.lock().unwrap().retain(|uid| live.contains(uid));
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<(), String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // A running process gets its grace period first; the pod goes once it has ended.
        let grace = pod.metadata.deletion_grace_period_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
        let grace = grace.or_else(|| {
            let spec = pod.spec.as_ref()?;
            spec.termination_grace_period_seconds.map(|s| Duration::from_secs(s.max(0) as u64))
        });
        if !self.stop_served(&uid, grace.unwrap_or(Duration::from_secs(30))) {
            return Ok(());
        }
        if let Some(t) = self.job_pods.lock().unwrap().get_mut(&uid)
            && let Some(c) = t.cancel.take()
        {
            let _ = c.send(());
        }
        if let Some(when) = self.deleted.lock().unwrap().get(&uid)
            && when.elapsed() < Duration::from_secs(5)
        {
            return Ok(());
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut dp = DeleteParams::default().grace_period(0);
        dp.preconditions = Some(kube::api::Preconditions { uid: Some(uid.clone()), resource_version: None });
        match api.delete(name, &dp).await {
            Ok(_) => {
                self.log(format!("deleted pod {ns}/{name} (grace period 0)"));
                self.deleted.lock().unwrap().insert(uid, Instant::now());
                Ok(())
            }
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
            Err(e) => Err(format!("delete: {e}")),
        }
    }

    /// Whether the pod can go onto the node (the scheduler's filters that matter here).
    fn fit(&self, pod: &Pod, spec: &PodSpec) -> Fit {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let Some(node) = self.stores.nodes.state().into_iter().next() else {
            return Fit::No("0/0 nodes are available: no nodes available to schedule pods.".into());
        };
        let fail = |why: &str| Fit::No(format!("0/1 nodes are available: {why}."));
        if !node_selector_matches(spec, &node) {
            return fail("1 node(s) didn't match Pod's node affinity/selector");
        }
        if let Some(t) = untolerated_taint(spec, &node) {
            return fail(&format!("1 node(s) had untolerated taint {{{t}}}"));
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
            && !tolerates(spec, "node.kubernetes.io/unschedulable", "", "NoSchedule")
        {
            return fail("1 node(s) were unschedulable");
        }
        let pod_name = pod.metadata.name.as_deref().unwrap_or("");
        let mut select = Vec::new();
        let mut waiting = false;
        for v in spec.volumes.iter().flatten() {
            let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => c.claim_name.clone(),
                (None, Some(_)) => format!("{pod_name}-{}", v.name),
                _ => continue,
            };
            let Some(pvc) = self.stores.pvcs.get(&reflector::ObjectRef::new(&claim).within(ns)) else {
                return fail(&format!("persistentvolumeclaim \"{claim}\" not found"));
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return fail(&format!("persistentvolumeclaim \"{claim}\" is being deleted"));
            }
            if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                continue;
            }
            if !self.wait_for_first_consumer(&pvc) {
                return fail("pod has unbound immediate PersistentVolumeClaims");
            }
            // Provisioned for the node the scheduler selects, then bound.
            let selected = pvc.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE)).is_some();
            if selected {
                waiting = true;
            } else {
                select.push(claim);
            }
        }
        if !select.is_empty() {
            Fit::SelectNode(select)
        } else if waiting {
            Fit::Wait
        } else {
            Fit::Yes
        }
    }

    fn wait_for_first_consumer(&self, pvc: &PersistentVolumeClaim) -> bool {
        let Some(class) = pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()) else {
            return false;
        };
        self.stores
            .classes
            .get(&reflector::ObjectRef::new(&class))
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
    }

    async fn schedule(&self, pod: &Pod) -> Result<(), String> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
        if spec.scheduler_name.as_deref().is_some_and(|s| s != "default-scheduler")
            || spec.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty())
        {
            return Ok(());
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let why = match self.fit(pod, spec) {
            Fit::Yes => None,
            Fit::Wait => return Ok(()),
            Fit::SelectNode(claims) => {
                let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
                let patch = json!({"metadata": {"annotations": {SELECTED_NODE: Kubelet::NODE}}});
                for claim in claims {
                    pvcs.patch(&claim, &patch_params(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| format!("select node: {e}"))?;
                    self.log(format!("selected node for claim {ns}/{claim}"));
                }
                return Ok(());
            }
            Fit::No(why) => Some(why),
        };
        if let Some(why) = why {
            let current = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
                .and_then(|c| c.message.clone());
            if current.as_deref() == Some(why.as_str()) {
                return Ok(());
            }
            let patch = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": why, "lastTransitionTime": time_json(&now())}]}});
            api.patch_status(name, &patch_params(), &Patch::Strategic(&patch))
                .await
                .map_err(|e| format!("status: {e}"))?;
            self.log(format!("pod {ns}/{name} unschedulable: {why}"));
            return Ok(());
        }
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": Kubelet::NODE},
        });
        match api.create_subresource::<_, Value>("binding", name, &PostParams::default(), &binding).await {
            Ok(_) => {
                self.log(format!("bound pod {ns}/{name} to {}", Kubelet::NODE));
                Ok(())
            }
            // Already bound (a stale cache), or gone.
            Err(e) if is_conflict(&e) || is_not_found(&e) => Ok(()),
            Err(e) => Err(format!("binding: {e}")),
        }
    }

    /// A workload pod: Running and Ready, or Pending with the kubelet's refusal.
    async fn workload_status(&self, pod: &Pod) -> Result<(), String> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        // The kubelet sets up volumes (fsGroup) before the containers start.
        if !self.volumes_set_up.lock().unwrap().contains(&uid) {
            let mut vols = Vec::new();
            for v in spec.volumes.iter().flatten() {
                let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
                    (Some(c), _) => c.claim_name.clone(),
                    (None, Some(_)) => format!("{}-{}", pod.metadata.name.as_deref().unwrap_or(""), v.name),
                    _ => continue,
                };
                let cv = self.claim_volume(&ns, &claim).await.map_err(|e| e.message().to_string())?;
                let ro = v.persistent_volume_claim.as_ref().and_then(|p| p.read_only) == Some(true);
                if cv.fs_group_applies {
                    vols.push(LocalVolume {
                        name: v.name.clone(),
                        dir: cv.dir,
                        read_only_kind: ro,
                        claim: Some(claim),
                    });
                }
            }
            apply_fs_group(spec, &vols);
            self.volumes_set_up.lock().unwrap().insert(uid.clone());
        }
        let mut init = Vec::new();
        let mut waiting_init = None;
        for c in spec.init_containers.iter().flatten() {
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let state = match self.verify_non_root(pod, spec, c) {
                Err(msg) => {
                    waiting_init.get_or_insert(c.name.clone());
                    CState::waiting(c, "CreateContainerConfigError", &msg)
                }
                Ok(()) if waiting_init.is_some() => CState::waiting(c, "PodInitializing", ""),
                Ok(()) if sidecar => CState::running(c),
                Ok(()) => CState::terminated(c, 0, "Completed", ""),
            };
            init.push(state);
        }
        let containers: Vec<CState> = spec
            .containers
            .iter()
            .map(|c| match (&waiting_init, self.verify_non_root(pod, spec, c)) {
                (Some(_), _) => CState::waiting(c, "PodInitializing", ""),
                (None, Err(msg)) => CState::waiting(c, "CreateContainerConfigError", &msg),
                (None, Ok(())) => CState::running(c),
            })
            .collect();
        let all_running = waiting_init.is_none() && containers.iter().all(|c| c.ready);
        let phase = if all_running { "Running" } else { "Pending" };
        let desired = self.status_patch(pod, phase, &init, &containers, waiting_init.as_deref());
        self.write_status(pod, desired).await
    }

    /// The pods/status patch for a pod with these container states.
    fn status_patch(
        &self,
        pod: &Pod,
        phase: &str,
        init: &[CState],
        containers: &[CState],
        waiting_init: Option<&str>,
    ) -> Value {
        let spec = pod.spec.as_ref();
        let existing = pod.status.as_ref();
        let started = existing.and_then(|s| s.start_time.clone()).unwrap_or_else(now);
        let ip = self.pod_ip(pod);
        let terminal = phase == "Succeeded" || phase == "Failed";
        let unready: Vec<&str> = containers.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
        let gates_ok = spec.and_then(|s| s.readiness_gates.as_ref()).into_iter().flatten().all(|g| {
            existing
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
        let mut conds = Vec::new();
        let cond = |ty: &str, ok: bool, reason: &str, message: String| {
            let status = if ok { "True" } else { "False" };
            let since = existing
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == ty && c.status == status))
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(now);
            let mut c =
                json!({"type": ty, "status": status, "lastTransitionTime": time_json(&since), "lastProbeTime": null});
            if !reason.is_empty() {
                c["reason"] = json!(reason);
            }
            if !message.is_empty() {
                c["message"] = json!(message);
            }
            c
        };
        conds.push(cond("PodReadyToStartContainers", !terminal, "", String::new()));
        match waiting_init {
            Some(c) => conds.push(cond(
                "Initialized",
                false,
                "ContainersNotInitialized",
                format!("containers with incomplete status: [{c}]"),
            )),
            None => conds.push(cond("Initialized", true, if terminal { "PodCompleted" } else { "" }, String::new())),
        }
        let (ready_reason, ready_msg) = if terminal {
            ("PodCompleted", String::new())
        } else if unready.is_empty() {
            ("", String::new())
        } else {
            ("ContainersNotReady", format!("containers with unready status: [{}]", unready.join(" ")))
        };
        let containers_ready = !terminal && unready.is_empty();
        conds.push(cond("ContainersReady", containers_ready, ready_reason, ready_msg.clone()));
        let (ready_reason, ready_msg) = if containers_ready && !gates_ok {
            ("ReadinessGatesNotReady", "the status of pod readiness gate is not \"True\"".to_string())
        } else {
            (ready_reason, ready_msg)
        };
        conds.push(cond("Ready", containers_ready && gates_ok, ready_reason, ready_msg));
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        let mut status = json!({
            "phase": phase,
            "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": time_json(&started),
            "conditions": conds,
            "containerStatuses": containers.iter().map(|c| c.json(uid)).collect::<Vec<_>>(),
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init.iter().map(|c| c.json(uid)).collect::<Vec<_>>());
        }
        status
    }

    /// Writes `status` unless the pod already shows it (phase, conditions, container states).
    async fn write_status(&self, pod: &Pod, status: Value) -> Result<(), String> {
        let current = serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
        if summary(&current) == summary(&status) {
            return Ok(());
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let phase = status["phase"].as_str().unwrap_or("").to_string();
        match api.patch_status(name, &patch_params(), &Patch::Strategic(&json!({"status": status}))).await {
            Ok(_) => {
                self.log(format!("pod {ns}/{name}: {phase} {}", summary(&status)["containers"]));
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(format!("status: {e}")),
        }
    }
}

/// What decides whether a pod's status must be written.
fn summary(status: &Value) -> Value {
    let conds: BTreeMap<String, Value> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != "PodScheduled")
        .map(|c| (c["type"].as_str().unwrap_or("").to_string(), json!([c["status"], c["reason"], c["message"]])))
        .collect();
    let containers = |key: &str| -> Vec<Value> {
        status[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let state = &c["state"];
                let kind =
                    ["running", "waiting", "terminated"].into_iter().find(|k| !state[*k].is_null()).unwrap_or("");
                json!([
                    c["name"],
                    c["ready"],
                    c["restartCount"],
                    kind,
                    state[kind]["reason"],
                    state[kind]["message"],
                    state[kind]["exitCode"]
                ])
            })
            .collect()
    };
    json!({"phase": status["phase"], "podIP": status["podIP"], "conditions": conds,
           "containers": containers("containerStatuses"), "init": containers("initContainerStatuses")})
}

/// A container's reported state.
#[derive(Clone, Debug)]
struct CState {
    name: String,
    image: String,
    ready: bool,
    started: bool,
    restart_count: i32,
    state: Value,
    last_state: Value,
}

impl CState {
    fn base(c: &Container) -> CState {
        CState {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            ready: false,
            started: false,
            restart_count: 0,
            state: json!({}),
            last_state: json!({}),
        }
    }

    fn running(c: &Container) -> CState {
        CState {
            ready: true,
            started: true,
            state: json!({"running": {"startedAt": time_json(&now())}}),
            ..CState::base(c)
        }
    }

    fn waiting(c: &Container, reason: &str, message: &str) -> CState {
        let mut w = json!({"reason": reason});
        if !message.is_empty() {
            w["message"] = json!(message);
        }
        CState { state: json!({"waiting": w}), ..CState::base(c) }
    }

    fn terminated(c: &Container, code: i32, reason: &str, message: &str) -> CState {
        let t = now();
        let mut s =
            json!({"exitCode": code, "reason": reason, "startedAt": time_json(&t), "finishedAt": time_json(&t)});
        if !message.is_empty() {
            s["message"] = json!(message);
        }
        CState { state: json!({"terminated": s}), ..CState::base(c) }
    }

    fn json(&self, pod_uid: &str) -> Value {
        let image_id = if self.image.is_empty() { String::new() } else { format!("berth-test://{}", self.image) };
        let mut v = json!({
            "name": self.name, "image": self.image, "imageID": image_id,
            "ready": self.ready, "started": self.started, "restartCount": self.restart_count,
            "state": self.state, "lastState": self.last_state,
        });
        if self.state.get("waiting").is_none() {
            v["containerID"] = json!(format!("berth-test://{pod_uid}-{}", self.name));
        }
        v
    }
}

fn label_of<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn node_selector_matches(spec: &PodSpec, node: &Node) -> bool {
    for (k, v) in spec.node_selector.iter().flatten() {
        if label_of(node, k) != Some(v.as_str()) {
            return false;
        }
    }
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
    else {
        return true;
    };
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    required.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.iter().flatten();
        let fields = term.match_fields.iter().flatten();
        let mut any = false;
        let labels_ok = exprs.clone().all(|r| {
            any = true;
            requirement(label_of(node, &r.key), &r.operator, r.values.as_deref().unwrap_or(&[]))
        });
        let fields_ok = fields.clone().all(|r| {
            any = true;
            let value = (r.key == "metadata.name").then_some(node_name);
            requirement(value, &r.operator, r.values.as_deref().unwrap_or(&[]))
        });
        any && labels_ok && fields_ok
    })
}

fn requirement(value: Option<&str>, op: &str, values: &[String]) -> bool {
    let num = |s: &str| s.parse::<i64>().ok();
    match op {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((value.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b),
        _ => false,
    }
}

fn tolerates(spec: &PodSpec, key: &str, value: &str, effect: &str) -> bool {
    spec.tolerations.iter().flatten().any(|t| {
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == key,
        };
        let value_ok = t.operator.as_deref() == Some("Exists") || t.value.as_deref().unwrap_or("") == value;
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == effect);
        key_ok && value_ok && effect_ok
    })
}

/// The first NoSchedule/NoExecute taint the pod does not tolerate, as the scheduler prints it.
fn untolerated_taint(spec: &PodSpec, node: &Node) -> Option<String> {
    node.spec.as_ref()?.taints.iter().flatten().find_map(|t| {
        let value = t.value.as_deref().unwrap_or("");
        let blocking = t.effect == "NoSchedule" || t.effect == "NoExecute";
        (blocking && !tolerates(spec, &t.key, value, &t.effect)).then(|| format!("{}: {value}", t.key))
    })
}

/// The kubelet's SetVolumeOwnership for the pod's fsGroup.
fn apply_fs_group(spec: &PodSpec, volumes: &[LocalVolume]) {
    let Some(psc) = spec.security_context.as_ref() else { return };
    let Some(gid) = psc.fs_group else { return };
    let on_root_mismatch = psc.fs_group_change_policy.as_deref() == Some("OnRootMismatch");
    for v in volumes {
        set_ownership(&v.dir, gid as u32, v.read_only_kind, on_root_mismatch);
    }
}

fn set_ownership(root: &Path, gid: u32, read_only: bool, on_root_mismatch: bool) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const SETGID: u32 = 0o2000;
    let mask = if read_only { 0o440 } else { 0o660 };
    if on_root_mismatch && let Ok(m) = std::fs::metadata(root) {
        let want = mask | 0o110;
        if m.gid() == gid && m.mode() & want == want && m.mode() & SETGID != 0 {
            return;
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        let _ = std::os::unix::fs::lchown(&p, None, Some(gid));
        if m.file_type().is_symlink() {
            continue;
        }
        let mut mode = m.permissions().mode() & 0o7777;
        mode |= mask;
        if m.is_dir() {
            mode |= 0o110 | SETGID;
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
    }
}

// ---------------------------------------------------------------------------------------------
// Job pods

/// A claim's volume on this machine.
struct ClaimVolume {
    dir: PathBuf,
    /// The kubelet would apply an fsGroup to it (CSI: RWO with an fsType; hostPath: no).
    fs_group_applies: bool,
}

impl Inner {
    async fn claim_volume(&self, ns: &str, claim: &str) -> Result<ClaimVolume, PrepareError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let cfg = |m: String| PrepareError::Config(m);
        let pvc = pvcs
            .get_opt(claim)
            .await
            .map_err(|e| cfg(format!("reading persistentvolumeclaim {ns}/{claim}: {e}")))?
            .ok_or_else(|| cfg(format!("persistentvolumeclaim \"{claim}\" not found")))?;
        let pv_name = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| cfg(format!("persistentvolumeclaim \"{claim}\" is not bound")))?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get_opt(&pv_name)
            .await
            .map_err(|e| cfg(format!("reading persistentvolume {pv_name}: {e}")))?
            .ok_or_else(|| cfg(format!("persistentvolume \"{pv_name}\" not found")))?;
        let spec = pv.spec.unwrap_or_default();
        let rwo = spec.access_modes.iter().flatten().any(|m| m == "ReadWriteOnce" || m == "ReadWriteOncePod");
        if let Some(csi) = &spec.csi {
            if csi.driver != CSI_DRIVER {
                return Err(PrepareError::Unsupported(format!(
                    "kubelet stand-in: volume {pv_name}: CSI driver {} is not installed",
                    csi.driver
                )));
            }
            let dir = self.pv_dir(&pv_name);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| cfg(format!("{}: {e}", dir.display())))?;
                set_mode(&dir, 0o755);
            }
            return Ok(ClaimVolume {
                dir,
                fs_group_applies: rwo && csi.fs_type.as_deref().is_some_and(|f| !f.is_empty()),
            });
        }
        if let Some(h) = &spec.host_path {
            return Ok(ClaimVolume { dir: PathBuf::from(&h.path), fs_group_applies: false });
        }
        if let Some(l) = &spec.local {
            return Ok(ClaimVolume { dir: PathBuf::from(&l.path), fs_group_applies: true });
        }
        Err(PrepareError::Unsupported(format!("kubelet stand-in: volume {pv_name}: unsupported volume source")))
    }

    fn pv_dir(&self, pv: &str) -> PathBuf {
        self.scratch.join("pv").join(pv)
    }

    /// What `fieldRef`s and downward API volumes read of the pod.
    fn pod_fields(&self, pod: &Pod) -> PodFields {
        let spec = pod.spec.as_ref();
        PodFields {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node_name: Kubelet::NODE.into(),
            pod_ip: self.pod_ip(pod),
            host_ip: HOST_IP.into(),
            service_account: spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into()),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        }
    }

    fn start_job_pod(self: &Arc<Self>, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if is_terminal(pod) {
            return;
        }
        let mut tasks = self.job_pods.lock().unwrap();
        if tasks.contains_key(&uid) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        let pod = pod.clone();
        let handle = tokio::spawn(async move { me.run_job_pod(pod, rx).await });
        tasks.insert(uid, JobTask { handle, cancel: Some(tx) });
    }

    fn record(&self, run: JobRun) {
        self.runs.lock().unwrap().push(run);
    }

    /// Sets up and runs one Job pod to its end (or until it is deleted).
    async fn run_job_pod(self: Arc<Self>, pod: Pod, mut cancel: oneshot::Receiver<()>) {
        let Some(spec) = pod.spec.clone() else { return };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let job = job_name(&pod).unwrap_or_default();
        let began = Instant::now();
        let deadline = spec.active_deadline_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
        let left = || deadline.map(|d| d.saturating_sub(began.elapsed()));
        let fields = self.pod_fields(&pod);
        let dir = self.scratch.join("pods").join(&uid);
        let _ = std::fs::create_dir_all(&dir);
        set_mode(&dir, 0o755);
        let inits: Vec<Container> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() != Some("Always"))
            .cloned()
            .collect();
        let Some(main) = spec.containers.first().cloned() else { return };
        let run_of = |c: &Container| {
            JobRun {
                namespace: ns.clone(),
                job: job.clone(),
                pod: name.clone(),
                args: vec![],
                env: BTreeMap::new(),
                user: None,
                exit_code: None,
                stdout: String::new(),
                stderr: String::new(),
            }
            .with_container(c)
        };
        // The latest pod (for status patches that keep timestamps).
        let latest = |me: &Inner| {
            me.stores
                .pods
                .get(&reflector::ObjectRef::new(&name).within(&ns))
                .map(|p| (*p).clone())
                .filter(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
                .unwrap_or_else(|| pod.clone())
        };
        let others = |skip: &str, state: fn(&Container) -> CState| -> Vec<CState> {
            spec.containers.iter().filter(|c| c.name != skip).map(state).collect()
        };

        // Set up until every container can start (or the deadline passes).
        let prepared: Vec<(Container, Prepared)> = loop {
            match self.setup(&pod, &spec, &fields, &dir, &inits, &main).await {
                Ok(p) => break p,
                Err((c, PrepareError::Unsupported(msg))) => {
                    let mut statuses = vec![CState::terminated(&c, 128, "StartError", &msg)];
                    statuses.extend(others(&c.name, |c| CState::terminated(c, 0, "Completed", "")));
                    let status = self.status_patch(&latest(&self), "Failed", &[], &statuses, None);
                    if let Err(e) = self.write_status(&pod, status).await {
                        self.log(format!("pod {ns}/{name}: {e}"));
                    }
                    self.log(format!("pod {ns}/{name} cannot start: {msg}"));
                    self.record(JobRun { stderr: msg, ..run_of(&c) });
                    return;
                }
                Err((c, PrepareError::Config(msg))) => {
                    let reason = if msg.starts_with("MountVolume.") || msg.contains("persistentvolume") {
                        "ContainerCreating"
                    } else {
                        "CreateContainerConfigError"
                    };
                    let mut statuses = vec![CState::waiting(&c, reason, &msg)];
                    statuses.extend(others(&c.name, |c| CState::waiting(c, "ContainerCreating", "")));
                    let status = self.status_patch(&latest(&self), "Pending", &[], &statuses, None);
                    if let Err(e) = self.write_status(&latest(&self), status).await {
                        self.log(format!("pod {ns}/{name}: {e}"));
                    }
                    let wait = left().map_or(CONFIG_RETRY, |l| l.min(CONFIG_RETRY));
                    tokio::select! {
                        _ = &mut cancel => {
                            self.record(JobRun { stderr: format!("{msg}\nkubelet stand-in: the pod was deleted before it started"), ..run_of(&c) });
                            return;
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                    if left().is_some_and(|l| l.is_zero()) {
                        self.deadline_exceeded(&latest(&self), &spec).await;
                        self.record(JobRun {
                            stderr: format!("{msg}\nkubelet stand-in: activeDeadlineSeconds passed before it started"),
                            ..run_of(&c)
                        });
                        return;
                    }
                }
            }
        };

        let extra_env = self.extra_env.lock().unwrap().clone();
        let on_failure = spec.restart_policy.as_deref() == Some("OnFailure");
        let mut init_states: Vec<CState> = inits.iter().map(|c| CState::waiting(c, "PodInitializing", "")).collect();
        let mut restarts = 0;
        let mut last_state = json!({});
        let mut i = 0;
        while i < prepared.len() {
            let (c, p) = &prepared[i];
            let is_main = i == prepared.len() - 1;
            // Status: this container running.
            let (init, containers, waiting_init) = if is_main {
                let mut running = CState::running(c);
                running.restart_count = restarts;
                running.last_state = last_state.clone();
                let mut cs = vec![running];
                cs.extend(others(&c.name, CState::running));
                (init_states.clone(), cs, None)
            } else {
                init_states[i] = CState { ready: false, ..CState::running(c) };
                let cs = spec.containers.iter().map(|c| CState::waiting(c, "PodInitializing", "")).collect();
                (init_states.clone(), cs, Some(c.name.clone()))
            };
            let phase = if is_main { "Running" } else { "Pending" };
            let status = self.status_patch(&latest(&self), phase, &init, &containers, waiting_init.as_deref());
            if let Err(e) = self.write_status(&latest(&self), status).await {
                self.log(format!("pod {ns}/{name}: {e}"));
            }
            let identity = self.identity(&spec, c);
            // Switching users needs root; otherwise the process runs as the test's own user.
            // SAFETY: geteuid has no preconditions.
            let identity = (unsafe { libc::geteuid() } == 0).then_some(identity);
            self.log(format!(
                "pod {ns}/{name}: running container {} as {identity:?}: berth {}",
                c.name,
                p.args.join(" ")
            ));
            let user = identity.as_ref().map(|i| (i.uid, i.gid));
            let run = run_process(p, &extra_env, identity.as_ref(), left(), Some(&self.groups));
            let out = tokio::select! {
                out = run => out,
                _ = &mut cancel => {
                    self.record(JobRun {
                        args: p.args.clone(),
                        env: p.env.iter().cloned().collect(),
                        user,
                        stderr: "kubelet stand-in: killed, the pod was deleted".into(),
                        ..run_of(c)
                    });
                    return;
                }
            };
            let code = out.exit_code;
            let message = tail(&out.stderr, 8);
            self.log(format!("pod {ns}/{name}: container {} exited with {code:?}", c.name));
            self.record(JobRun {
                args: p.args.clone(),
                env: p.env.iter().cloned().collect(),
                user,
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
                ..run_of(c)
            });
            if out.start_error {
                let mut cs = vec![CState::terminated(c, 128, "StartError", &message)];
                cs.extend(others(&c.name, |c| CState::terminated(c, 0, "Completed", "")));
                let status = self.status_patch(&latest(&self), "Failed", &init_states, &cs, None);
                let _ = self.write_status(&latest(&self), status).await;
                return;
            }
            let Some(code) = code else {
                self.deadline_exceeded(&latest(&self), &spec).await;
                return;
            };
            if code == 0 {
                if is_main {
                    let mut done = CState::terminated(c, 0, "Completed", "");
                    done.restart_count = restarts;
                    done.last_state = last_state.clone();
                    let mut cs = vec![done];
                    cs.extend(others(&c.name, |c| CState::terminated(c, 0, "Completed", "")));
                    let status = self.status_patch(&latest(&self), "Succeeded", &init_states, &cs, None);
                    if let Err(e) = self.write_status(&latest(&self), status).await {
                        self.log(format!("pod {ns}/{name}: {e}"));
                    }
                    return;
                }
                init_states[i] = CState::terminated(c, 0, "Completed", "");
                i += 1;
                continue;
            }
            let failed = CState::terminated(c, code, "Error", &message);
            if on_failure {
                // Restarted in place after a back-off, as the kubelet does.
                restarts += 1;
                last_state = failed.state.clone();
                let backoff = Duration::from_secs((10u64 << (restarts - 1).min(5)).min(300));
                let mut waiting = CState::waiting(
                    c,
                    "CrashLoopBackOff",
                    &format!(
                        "back-off {}s restarting failed container={} pod={}",
                        backoff.as_secs(),
                        c.name,
                        pod_desc(&pod)
                    ),
                );
                waiting.restart_count = restarts;
                waiting.last_state = last_state.clone();
                let (init, cs, phase) = if is_main {
                    let mut cs = vec![waiting];
                    cs.extend(others(&c.name, CState::running));
                    (init_states.clone(), cs, "Running")
                } else {
                    init_states[i] = waiting;
                    let cs = spec.containers.iter().map(|c| CState::waiting(c, "PodInitializing", "")).collect();
                    (init_states.clone(), cs, "Pending")
                };
                let status =
                    self.status_patch(&latest(&self), phase, &init, &cs, (!is_main).then_some(c.name.as_str()));
                let _ = self.write_status(&latest(&self), status).await;
                let wait = left().map_or(backoff, |l| l.min(backoff));
                tokio::select! {
                    _ = &mut cancel => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                if left().is_some_and(|l| l.is_zero()) {
                    self.deadline_exceeded(&latest(&self), &spec).await;
                    return;
                }
                continue;
            }
            let mut failed = failed;
            failed.restart_count = restarts;
            failed.last_state = last_state.clone();
            let (init, cs) = if is_main {
                let mut cs = vec![failed];
                cs.extend(others(&c.name, |c| CState::terminated(c, 0, "Completed", "")));
                (init_states.clone(), cs)
            } else {
                init_states[i] = failed;
                let cs = spec.containers.iter().map(|c| CState::waiting(c, "PodInitializing", "")).collect();
                (init_states.clone(), cs)
            };
            let status = self.status_patch(&latest(&self), "Failed", &init, &cs, None);
            if let Err(e) = self.write_status(&latest(&self), status).await {
                self.log(format!("pod {ns}/{name}: {e}"));
            }
            return;
        }
    }

    /// Claims, non-root check, preparation and volume ownership of every container to run.
    async fn setup(
        &self,
        pod: &Pod,
        spec: &PodSpec,
        fields: &PodFields,
        dir: &Path,
        inits: &[Container],
        main: &Container,
    ) -> Result<Vec<(Container, Prepared)>, (Container, PrepareError)> {
        let mut pvc_dirs = HashMap::new();
        let mut fs_group_claims = HashSet::new();
        for v in spec.volumes.iter().flatten() {
            let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => c.claim_name.clone(),
                (None, Some(_)) => format!("{}-{}", fields.name, v.name),
                _ => continue,
            };
            let cv = self.claim_volume(&fields.namespace, &claim).await.map_err(|e| (main.clone(), e))?;
            if cv.fs_group_applies {
                fs_group_claims.insert(claim.clone());
            }
            pvc_dirs.insert(claim, cv.dir);
        }
        let overrides = self.host_overrides.lock().unwrap().clone();
        let sandbox = Sandbox { client: &self.client, fields, spec, dir, pvc_dirs: &pvc_dirs, overrides: &overrides };
        let mut out = Vec::new();
        let mut volumes: Vec<LocalVolume> = Vec::new();
        for c in inits.iter().chain(std::iter::once(main)) {
            self.verify_non_root(pod, spec, c).map_err(|m| (c.clone(), PrepareError::Config(m)))?;
            let p = prepare(&sandbox, c).await.map_err(|e| (c.clone(), e))?;
            for v in &p.volumes {
                let eligible = v.claim.as_ref().is_none_or(|c| fs_group_claims.contains(c));
                if eligible && !volumes.iter().any(|u| u.name == v.name) {
                    volumes.push(v.clone());
                }
            }
            out.push((c.clone(), p));
        }
        apply_fs_group(spec, &volumes);
        Ok(out)
    }

    async fn deadline_exceeded(&self, pod: &Pod, spec: &PodSpec) {
        let cs: Vec<CState> = spec.containers.iter().map(|c| CState::terminated(c, 137, "Error", "")).collect();
        let mut status = self.status_patch(pod, "Failed", &[], &cs, None);
        status["reason"] = json!("DeadlineExceeded");
        status["message"] = json!("Pod was active on the node longer than the specified deadline");
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.patch_status(name, &patch_params(), &Patch::Strategic(&json!({"status": status}))).await {
            Ok(_) => self.log(format!("pod {ns}/{name}: DeadlineExceeded")),
            Err(e) => self.log(format!("pod {ns}/{name}: status: {e}")),
        }
    }
}

trait WithContainer {
    fn with_container(self, c: &Container) -> Self;
}

impl WithContainer for JobRun {
    /// A run that never started: the container's arguments as written.
    fn with_container(mut self, c: &Container) -> Self {
        let mut args: Vec<String> = c.command.iter().flatten().skip(1).cloned().collect();
        args.extend(c.args.clone().unwrap_or_default());
        self.args = args;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Volumes: provisioner, resizer, deleter

/// Bytes of a quantity (`1Gi`, `500M`, `1e9`, `1073741824`).
fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let units: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("random");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn storage_request(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
}

impl Inner {
    async fn volumes_pass(&self) {
        for pvc in self.stores.pvcs.state() {
            if let Err(e) = self.provision_or_resize(&pvc).await {
                self.log(format!("claim {}: {e}", key_of(&pvc.metadata)));
            }
        }
        for pv in self.stores.pvs.state() {
            if let Err(e) = self.reclaim(&pv).await {
                self.log(format!("volume {}: {e}", pv.metadata.name.as_deref().unwrap_or("")));
            }
        }
    }

    fn our_class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.stores.classes.get(&reflector::ObjectRef::new(name)).filter(|c| c.provisioner == PROVISIONER)
    }

    async fn provision_or_resize(&self, pvc: &PersistentVolumeClaim) -> Result<(), String> {
        if pvc.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(spec) = pvc.spec.as_ref() else { return Ok(()) };
        let Some(class_name) = spec.storage_class_name.clone().filter(|c| !c.is_empty()) else {
            return Ok(());
        };
        let Some(class) = self.our_class(&class_name) else { return Ok(()) };
        let ns = pvc.metadata.namespace.clone().unwrap_or_default();
        let name = pvc.metadata.name.clone().unwrap_or_default();
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let request = storage_request(pvc).unwrap_or_else(|| "1Gi".into());
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let volume_name = spec.volume_name.clone().filter(|v| !v.is_empty());

        if phase == "Pending" && volume_name.is_none() {
            let wffc = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
            let selected = pvc.metadata.annotations.as_ref().and_then(|a| a.get(SELECTED_NODE)).is_some();
            if wffc && !selected {
                return Ok(());
            }
            let pv_name = format!("pvc-{uid}");
            if self.stores.pvs.get(&reflector::ObjectRef::new(&pv_name)).is_some() {
                return Ok(());
            }
            if spec.data_source.is_some() || spec.data_source_ref.is_some() {
                self.log(format!("claim {ns}/{name}: a data source is not supported; provisioning an empty volume"));
            }
            let dir = self.pv_dir(&pv_name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            set_mode(&dir, 0o755);
            let pv = json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {"storage": request},
                    "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                    "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
                    "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
                    "storageClassName": class_name,
                    "mountOptions": class.mount_options.clone(),
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                                 "uid": uid, "resourceVersion": pvc.metadata.resource_version},
                    "csi": {"driver": CSI_DRIVER, "volumeHandle": random_uuid(), "fsType": "ext4",
                            "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "berth-test-kubelet"}},
                },
            });
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let pv: PersistentVolume = serde_json::from_value(pv).map_err(|e| e.to_string())?;
            return match pvs
                .create(&PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() }, &pv)
                .await
            {
                Ok(_) => {
                    self.log(format!("provisioned {pv_name} ({request}) for claim {ns}/{name}"));
                    Ok(())
                }
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(format!("create PV: {e}")),
            };
        }

        // Resize a bound claim.
        if phase != "Bound" || class.allow_volume_expansion != Some(true) {
            return Ok(());
        }
        let Some(volume_name) = volume_name else { return Ok(()) };
        let Some(pv) = self.stores.pvs.get(&reflector::ObjectRef::new(&volume_name)) else { return Ok(()) };
        if pv.metadata.annotations.as_ref().and_then(|a| a.get("pv.kubernetes.io/provisioned-by")).map(String::as_str)
            != Some(PROVISIONER)
        {
            return Ok(());
        }
        let want = quantity_bytes(&request).unwrap_or(0.0);
        let pv_size = pv
            .spec
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .and_then(|q| quantity_bytes(&q.0))
            .unwrap_or(0.0);
        let claim_size = pvc
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .and_then(|q| quantity_bytes(&q.0))
            .unwrap_or(0.0);
        if want > pv_size {
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            let patch = json!({"spec": {"capacity": {"storage": request}}});
            pvs.patch(&volume_name, &patch_params(), &Patch::Merge(&patch))
                .await
                .map_err(|e| format!("grow PV: {e}"))?;
            self.log(format!("grew {volume_name} to {request} for claim {ns}/{name}"));
        }
        if want > claim_size {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
            let patch = json!({"status": {
                "capacity": {"storage": request},
                "allocatedResources": {"storage": request},
                "allocatedResourceStatuses": null,
                "conditions": null,
            }});
            pvcs.patch_status(&name, &patch_params(), &Patch::Merge(&patch))
                .await
                .map_err(|e| format!("claim status: {e}"))?;
            self.log(format!("claim {ns}/{name} now has {request}"));
        }
        Ok(())
    }

    async fn reclaim(&self, pv: &PersistentVolume) -> Result<(), String> {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let ours =
            pv.metadata.annotations.as_ref().and_then(|a| a.get("pv.kubernetes.io/provisioned-by")).map(String::as_str)
                == Some(PROVISIONER);
        if !ours {
            return Ok(());
        }
        if pv.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let delete = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        if !(released && delete) {
            return Ok(());
        }
        let dir = self.pv_dir(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                self.log(format!("deleted released volume {name}"));
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(format!("delete PV: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cert-manager

const CERT_NAME_ANNOTATION: &str = "cert-manager.io/certificate-name";
const ALT_NAMES_ANNOTATION: &str = "cert-manager.io/alt-names";
const COMMON_NAME_ANNOTATION: &str = "cert-manager.io/common-name";

/// A self-signed certificate and key (PEM) for `dns_names`, valid 90 days from today.
fn self_signed(common_name: Option<&str>, dns_names: &[String]) -> Result<(String, String, Time, Time), String> {
    let today = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date();
    let until = today.checked_add(jiff::Span::new().days(90)).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(dns_names.to_vec()).map_err(|e| e.to_string())?;
    if let Some(cn) = common_name.or(dns_names.first().map(String::as_str)) {
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    params.not_before = rcgen::date_time_ymd(today.year() as i32, today.month() as u8, today.day() as u8);
    params.not_after = rcgen::date_time_ymd(until.year() as i32, until.month() as u8, until.day() as u8);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let at_midnight = |d: jiff::civil::Date| {
        d.to_zoned(jiff::tz::TimeZone::UTC).map(|z| Time(z.timestamp())).map_err(|e| e.to_string())
    };
    Ok((cert.pem(), key.serialize_pem(), at_midnight(today)?, at_midnight(until)?))
}

impl Inner {
    async fn certificates_pass(&self) {
        for cert in self.stores.certificates.state() {
            if let Err(e) = self.certificate(&cert).await {
                self.log(format!("certificate {}: {e}", key_of(&cert.metadata)));
            }
        }
    }

    async fn certificate(&self, cert: &DynamicObject) -> Result<(), String> {
        if cert.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = cert.metadata.namespace.clone().unwrap_or_default();
        let name = cert.metadata.name.clone().unwrap_or_default();
        let spec = &cert.data["spec"];
        let Some(secret_name) = spec["secretName"].as_str().filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let dns: Vec<String> =
            spec["dnsNames"].as_array().into_iter().flatten().filter_map(|d| d.as_str().map(String::from)).collect();
        let cn = spec["commonName"].as_str();
        let status = &cert.data["status"];
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let existing = secrets.get_opt(secret_name).await.map_err(|e| format!("Secret: {e}"))?;
        let annotations = existing.as_ref().and_then(|s| s.metadata.annotations.clone()).unwrap_or_default();
        let has_keys = existing
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.contains_key("tls.crt") && d.contains_key("tls.key"));
        let up_to_date = has_keys
            && annotations.get(CERT_NAME_ANNOTATION).map(String::as_str) == Some(name.as_str())
            && annotations.get(ALT_NAMES_ANNOTATION).map(String::as_str) == Some(dns.join(",").as_str())
            && annotations.get(COMMON_NAME_ANNOTATION).map(String::as_str) == Some(cn.unwrap_or(""));
        let generation = cert.metadata.generation;
        let ready =
            status["conditions"].as_array().into_iter().flatten().any(|c| {
                c["type"] == "Ready" && c["status"] == "True" && c["observedGeneration"].as_i64() == generation
            });
        if up_to_date && ready {
            return Ok(());
        }
        let mut patch = json!({"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "Ready",
            "message": "Certificate is up to date and has not expired",
            "observedGeneration": generation, "lastTransitionTime": time_json(&now()),
        }]}});
        if !up_to_date {
            let (crt, key, not_before, not_after) = self_signed(cn, &dns)?;
            let b64 = |s: &str| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(s)
            };
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": secret_name, "namespace": ns,
                    "labels": {"controller.cert-manager.io/fao": "true"},
                    "annotations": {
                        CERT_NAME_ANNOTATION: name, ALT_NAMES_ANNOTATION: dns.join(","),
                        COMMON_NAME_ANNOTATION: cn.unwrap_or(""), "cert-manager.io/ip-sans": "",
                        "cert-manager.io/uri-sans": "",
                        "cert-manager.io/issuer-name": spec["issuerRef"]["name"].as_str().unwrap_or(""),
                        "cert-manager.io/issuer-kind": spec["issuerRef"]["kind"].as_str().unwrap_or("Issuer"),
                        "cert-manager.io/issuer-group": spec["issuerRef"]["group"].as_str().unwrap_or("cert-manager.io"),
                    }},
                "data": {"tls.crt": b64(&crt), "tls.key": b64(&key), "ca.crt": b64(&crt)},
            });
            secrets
                .patch(secret_name, &apply_params(), &Patch::Apply(&secret))
                .await
                .map_err(|e| format!("Secret {secret_name}: {e}"))?;
            self.log(format!("issued Secret {ns}/{secret_name} for Certificate {name} ({})", dns.join(",")));
            let revision = status["revision"].as_i64().unwrap_or(0) + 1;
            patch["status"]["notBefore"] = time_json(&not_before);
            patch["status"]["notAfter"] = time_json(&not_after);
            patch["status"]["renewalTime"] = time_json(&Time(
                not_after.0.checked_sub(jiff::SignedDuration::from_hours(24 * 30)).unwrap_or(not_after.0),
            ));
            patch["status"]["revision"] = json!(revision);
        }
        // Keep the transition time of a condition that stays True.
        if let Some(t) = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready" && c["status"] == "True")
            .and_then(|c| c.get("lastTransitionTime"))
        {
            patch["status"]["conditions"][0]["lastTransitionTime"] = t.clone();
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &certificate_resource());
        api.patch_status(&name, &patch_params(), &Patch::Merge(&patch)).await.map_err(|e| format!("status: {e}"))?;
        self.log(format!("Certificate {ns}/{name} Ready"));
        Ok(())
    }
}

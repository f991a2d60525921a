//! A real Kubernetes control plane on loopback, in the style of controller-runtime's envtest:
//! etcd, kube-apiserver and kube-controller-manager (every controller) built from the
//! `k8s.io/kubernetes` Go module by `scripts/build-control-plane.sh`, plus the kubelet stand-in
//! of `super::kubelet` (no kubelet, no scheduler, no container runtime exist here).
//!
//! What is real: authentication (static tokens and service-account tokens), RBAC, admission
//! (Pod Security, namespace lifecycle, immutable fields, CRD schemas and CEL with its cost
//! budget), server-side apply with managedFields, garbage collection, the Deployment,
//! ReplicaSet, StatefulSet, Job, PV/PVC and namespace controllers. Every request is written to
//! an audit log, which the tests read to count writes and find refused requests.
//!
//! ```ignore
//! let cluster = Cluster::start().await;                 // etcd + apiserver + controller-manager + kubelet stand-in
//! cluster.install_crds_from_dir(&repo.join("crds")).await;
//! cluster.namespace("shop").await;                      // enforces Pod Security `restricted`
//! let kubeconfig = cluster.operator_kubeconfig(&[]).await; // the chart's RBAC, as its ServiceAccount
//! let operator = Operator::start(&kubeconfig, &[]);
//! ...
//! cluster.assert_clean().await;                         // no 403 for the operator, no PodSecurity rejection
//! ```
//!
//! `BERTH_TEST_KEEP=1` keeps the working directory (logs, audit log, kubeconfigs) and prints it.

pub mod audit;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Event, Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use super::kubelet::Kubelet;
use super::operator::free_port;
use audit::AuditLog;

/// Namespace of the operator's ServiceAccount, as `helm install -n berth-system` makes it.
pub const OPERATOR_NAMESPACE: &str = "berth-system";
/// The operator's identity: the chart's ServiceAccount (release `berth`).
pub const OPERATOR_USER: &str = "system:serviceaccount:berth-system:berth";
const ADMIN_TOKEN: &str = "berth-test-admin-token";
const CONTROLLER_MANAGER_TOKEN: &str = "berth-test-controller-manager-token";
const MANAGER: &str = "berth-tests";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory with kube-apiserver, kube-controller-manager and etcd: `BERTH_CONTROL_PLANE_BIN`,
/// or what `scripts/build-control-plane.sh` built (and cached) for this machine.
pub fn control_plane_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BERTH_CONTROL_PLANE_BIN") {
            return PathBuf::from(dir);
        }
        let out = Command::new(repo().join("scripts/build-control-plane.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-control-plane.sh");
        assert!(out.status.success(), "scripts/build-control-plane.sh failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("build-control-plane.sh prints the bin directory").trim())
    })
}

/// A tool of `scripts/install-tools.sh` (kubectl, helm) from `.tools/bin`, or from PATH.
pub fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("BERTH_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".tools"));
    let path = dir.join("bin").join(name);
    if path.exists() { path } else { PathBuf::from(name) }
}

struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, dir: &Path, mut command: Command) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process { name, child, log }
    }

    /// Panics with the log's tail when the process has exited.
    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("{} exited ({status}); last lines of {}:\n{}", self.name, self.log.display(), tail.join("\n"));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running control plane; everything stops when it is dropped.
pub struct Cluster {
    // Dropped in field order: the kubelet first, then the controller-manager, the API server, etcd.
    kubelet: Option<Kubelet>,
    processes: Vec<Process>,
    pub url: String,
    pub ca_pem: String,
    admin_kubeconfig: PathBuf,
    client: kube::Client,
    pub audit: AuditLog,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd, kube-apiserver, kube-controller-manager and the kubelet stand-in.
    pub async fn start() -> Cluster {
        let mut cluster = Cluster::start_control_plane().await;
        let kubelet = Kubelet::start(cluster.client.clone(), &cluster.dir.path().join("kubelet")).await;
        kubelet.set_api_server(&cluster.url);
        cluster.kubelet = Some(kubelet);
        cluster
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager, without a kubelet stand-in.
    pub async fn start_control_plane() -> Cluster {
        let started = Instant::now();
        let bin = control_plane_bin();
        let dir = tempfile::Builder::new().prefix("berth-cluster-").tempdir().unwrap();
        if std::env::var_os("BERTH_TEST_KEEP").is_some() {
            eprintln!("control plane directory: {}", dir.path().display());
        }
        let pki = pki::Pki::create(&dir.path().join("pki"));
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "{ADMIN_TOKEN},berth-test-admin,uid-admin,\"system:masters\"\n\
                 {CONTROLLER_MANAGER_TOKEN},system:kube-controller-manager,uid-kcm\n"
            ),
        )
        .unwrap();
        let audit_policy = dir.path().join("audit-policy.yaml");
        std::fs::write(&audit_policy, audit::POLICY).unwrap();
        let audit_log = dir.path().join("audit.log");

        let mut processes = Vec::new();

        let (etcd_port, etcd_peer) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args(["--name", "default", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        processes.push(Process::spawn("etcd", dir.path(), etcd));

        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver
            .args(["--etcd-servers", &etcd_url])
            .args(["--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg("--cert-dir")
            .arg(dir.path().join("apiserver-certs"))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", pki.serving_key.display()))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", pki.service_account_public_key.display()))
            .arg(format!("--service-account-signing-key-file={}", pki.service_account_key.display()))
            .arg("--service-cluster-ip-range=10.0.0.0/16")
            // No endpoint for the `kubernetes` Service: a loopback address is not a valid endpoint.
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=false")
            .arg(format!("--audit-policy-file={}", audit_policy.display()))
            .arg(format!("--audit-log-path={}", audit_log.display()))
            .arg("--audit-log-format=json")
            .arg("--audit-log-mode=blocking")
            .arg("--audit-log-maxsize=0")
            .arg("--max-requests-inflight=2000")
            .arg("--max-mutating-requests-inflight=1000")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .arg("-v=1");
        processes.push(Process::spawn("kube-apiserver", dir.path(), apiserver));

        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(&admin_kubeconfig, pki::kubeconfig(&url, &pki.ca_pem, "berth-test-admin", ADMIN_TOKEN)).unwrap();
        let cm_kubeconfig = dir.path().join("controller-manager.kubeconfig");
        std::fs::write(
            &cm_kubeconfig,
            pki::kubeconfig(&url, &pki.ca_pem, "system:kube-controller-manager", CONTROLLER_MANAGER_TOKEN),
        )
        .unwrap();
        let client = client_for(&admin_kubeconfig).await;

        // Ready: /readyz answers ok (etcd reachable, bootstrap RBAC and priority classes made).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for p in &mut processes {
                p.check_running();
            }
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if let Ok(text) = client.request_text(req).await
                && text.trim() == "ok"
            {
                break;
            }
            assert!(Instant::now() < deadline, "kube-apiserver not ready within 120 s (see {})", dir.path().display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let qps = std::env::var("BERTH_TEST_KCM_QPS").unwrap_or_else(|_| "500".into());
        let mut cm = Command::new(bin.join("kube-controller-manager"));
        cm.arg(format!("--kubeconfig={}", cm_kubeconfig.display()))
            .arg(format!("--authentication-kubeconfig={}", cm_kubeconfig.display()))
            .arg(format!("--authorization-kubeconfig={}", cm_kubeconfig.display()))
            .arg("--secure-port=0")
            .arg("--leader-elect=false")
            .arg("--controllers=*")
            .arg("--use-service-account-credentials=true")
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--service-account-private-key-file={}", pki.service_account_key.display()))
            .arg(format!("--cluster-signing-cert-file={}", pki.ca_cert.display()))
            .arg(format!("--cluster-signing-key-file={}", pki.ca_key.display()))
            .arg("--service-cluster-ip-range=10.0.0.0/16")
            .arg(format!("--kube-api-qps={qps}"))
            .arg(format!("--kube-api-burst={}", qps.parse::<u32>().unwrap_or(500) * 2))
            // Terminated pods are collected soon, like a busy cluster's.
            .arg("--terminated-pod-gc-threshold=100")
            .arg("-v=1");
        processes.push(Process::spawn("kube-controller-manager", dir.path(), cm));

        let mut cluster = Cluster {
            kubelet: None,
            processes,
            url,
            ca_pem: pki.ca_pem.clone(),
            admin_kubeconfig,
            client,
            audit: AuditLog::new(audit_log),
            dir,
        };
        // The controller-manager works once it has made the `default` ServiceAccount.
        let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        while accounts.get_opt("default").await.ok().flatten().is_none() {
            for p in &mut cluster.processes {
                p.check_running();
            }
            assert!(Instant::now() < deadline, "kube-controller-manager made no default ServiceAccount within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if std::env::var_os("BERTH_TEST_LOG").is_some() {
            eprintln!("control plane up in {:?} at {}", started.elapsed(), cluster.url);
        }
        cluster
    }

    /// A client with cluster-admin rights (the tests' own, never the operator's).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The admin kubeconfig (for kubectl and helm run by tests).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The working directory (logs, audit log, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kubelet stand-in.
    pub fn kubelet(&self) -> &Kubelet {
        self.kubelet.as_ref().expect("the cluster was started without the kubelet stand-in")
    }

    /// CPU seconds (user + system) used so far by each control-plane process.
    pub fn cpu_seconds(&self) -> Vec<(&'static str, f64)> {
        self.processes.iter().map(|p| (p.name, process_cpu_seconds(p.child.id()).unwrap_or(0.0))).collect()
    }

    /// Creates a namespace that enforces Pod Security `restricted`, as platform teams set it.
    pub async fn namespace(&self, name: &str) {
        let labels = json!({
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
        });
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        Api::<Namespace>::all(self.client.clone())
            .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(ns))
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Applies every CRD in `dir` server-side and waits until each is Established (a CEL rule
    /// that does not compile or exceeds the cost budget is refused here).
    pub async fn install_crds_from_dir(&self, dir: &Path) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for file in files {
            self.install_crds_from_file(&file).await;
        }
    }

    /// Applies the CRDs of one YAML file (one or more documents) and waits until Established.
    pub async fn install_crds_from_file(&self, file: &Path) {
        let text = std::fs::read_to_string(file).unwrap();
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for doc in text.split("\n---").filter(|d| d.lines().any(|l| l.trim() == "kind: CustomResourceDefinition")) {
            let crd: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let name = crd["metadata"]["name"].as_str().unwrap().to_string();
            api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("the API server refused CRD {name} from {}: {e}", file.display()));
            super::wait::eventually(&format!("CRD {name} Established"), Duration::from_secs(30), || async {
                let crd = api.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
            })
            .await;
        }
    }

    /// Installs the chart's ServiceAccount and RBAC (`helm template` with `helm_args`, e.g.
    /// `--set operator.watchNamespaces={a,b}`), and returns a kubeconfig that authenticates as
    /// that ServiceAccount with a TokenRequest token — the operator's identity in a real install.
    pub async fn operator_kubeconfig(&self, helm_args: &[&str]) -> PathBuf {
        Api::<Namespace>::all(self.client.clone())
            .patch(
                OPERATOR_NAMESPACE,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}),
                ),
            )
            .await
            .unwrap();
        let rendered = Command::new(tool("helm"))
            .args(["template", "berth"])
            .arg(repo().join("charts/berth"))
            .args(["--namespace", OPERATOR_NAMESPACE])
            .args(["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"])
            .args(helm_args)
            .output()
            .expect("run helm (scripts/install-tools.sh installs it into .tools/bin)");
        assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
        self.kubectl_apply(&rendered.stdout);

        let token = Api::<ServiceAccount>::namespaced(self.client.clone(), OPERATOR_NAMESPACE)
            .create_token_request(
                "berth",
                &PostParams::default(),
                &TokenRequest {
                    spec: TokenRequestSpec { expiration_seconds: Some(24 * 3600), ..Default::default() },
                    ..Default::default()
                },
            )
            .await
            .expect("TokenRequest for the operator's ServiceAccount")
            .status
            .map(|s| s.token)
            .expect("a token in the TokenRequest's status");
        let path = self.dir.path().join("operator.kubeconfig");
        std::fs::write(&path, pki::kubeconfig(&self.url, &self.ca_pem, "berth", &token)).unwrap();
        path
    }

    /// What a namespace's admin does before its team uses backups (README, "Tenancy"): the
    /// ServiceAccount `berth-backup`, its Role and RoleBinding of deploy/tenant/, in `namespace`.
    pub fn tenant_account(&self, namespace: &str) {
        let manifest = std::fs::read_to_string(repo().join("deploy/tenant/berth-backup.yaml")).unwrap();
        self.kubectl_apply(manifest.replace("namespace: team-a", &format!("namespace: {namespace}")).as_bytes());
    }

    /// Lets the account of `from` restore into `to`: the same Role in `to`, bound to the
    /// ServiceAccount of `from` (what `to`'s admin grants for a restore across namespaces).
    pub fn tenant_grant(&self, from: &str, to: &str) {
        self.tenant_account(to);
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("berth-backup-from-{from}"), "namespace": to},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "berth-backup"},
            "subjects": [{"kind": "ServiceAccount", "name": "berth-backup", "namespace": from}],
        });
        self.kubectl_apply(binding.to_string().as_bytes());
    }

    /// `kubectl apply --server-side` of `yaml`, as admin.
    pub fn kubectl_apply(&self, yaml: &[u8]) {
        use std::io::Write;
        let mut child = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(["apply", "--server-side", "--field-manager", MANAGER, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl (scripts/install-tools.sh installs it into .tools/bin)");
        child.stdin.take().unwrap().write_all(yaml).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Any object by apiVersion and kind (resolved through discovery), or `None` when absent.
    pub async fn object(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk).await.ok()?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let object = api.get_opt(name).await.ok()??;
        Some(serde_json::to_value(object).unwrap())
    }

    /// Events in `namespace` (all namespaces for `None`) whose reason is `reason`.
    pub async fn events(&self, namespace: Option<&str>, reason: &str) -> Vec<Event> {
        let api: Api<Event> = match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).collect()
    }

    /// Fails on what a real cluster would refuse and the stand-in never did: a request of the
    /// operator's identity answered 403, or a pod that Pod Security kept from being created.
    pub async fn assert_clean(&self) {
        let forbidden = self.audit.forbidden(OPERATOR_USER);
        assert!(forbidden.is_empty(), "the operator's requests were refused (403):\n{}", forbidden.join("\n"));
        let rejected: Vec<String> = self
            .events(None, "FailedCreate")
            .await
            .into_iter()
            .filter(|e| e.message.as_deref().is_some_and(|m| m.contains("PodSecurity")))
            .map(|e| {
                format!(
                    "{}/{}: {}",
                    e.involved_object.namespace.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect();
        assert!(rejected.is_empty(), "Pod Security rejected pods:\n{}", rejected.join("\n"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kubelet.take();
        // Stop in reverse start order: the controller-manager, then the API server, then etcd.
        while let Some(p) = self.processes.pop() {
            drop(p);
        }
        if std::env::var_os("BERTH_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// CPU seconds (user + system) of a process, from /proc (clock ticks of 1/100 s on Linux).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// A client for `kubeconfig` (a file written by this harness).
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

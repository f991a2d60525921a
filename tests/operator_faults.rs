//! Faults injected into the real operator's backups and restores, on the real control plane
//! (tests/support/cluster), with real PostgreSQL servers, a real S3-compatible server and the
//! kubelet stand-in running the agent Jobs:
//! - API faults between the operator and the API server (`support/fault_proxy`): 500s before
//!   and after the server acted, 429 with Retry-After, 409 Conflict, watches dropped mid-stream
//!   and watches answered 410 Gone;
//! - the operator killed with SIGKILL while agent Jobs run, in a backup and in a restore;
//! - S3 that answers slowly, and S3 that refuses connections partway through an upload
//!   (`support/stall_proxy` between the agents and S3).
//!
//! Every test asserts the same three things: every Backup and Restore ends in a terminal phase;
//! nothing is lost (a restore into another namespace, with its own PostgreSQL, gives the same
//! rows, the volume's files are byte-identical, and `berth agent check --read-data` is clean);
//! nothing is done twice (one agent Job per item and attempt, one snapshot per item, every
//! restored object and every Job created once, counted from the API server's audit log).

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use support::cluster::{Cluster, OPERATOR_USER, audit::Mark};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::objects::{create, is_ready, repo, secret_value, storage_secrets};
use support::operator::Operator;
use support::servers::{Postgres, S3Server};
use support::stall_proxy::StallProxy;
use support::wait::eventually;

const NS: &str = "shop";
const OTHER: &str = "shop-restored";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(180);
/// The volume's incompressible payload: big enough that an upload can be cut partway.
const PAYLOAD: usize = 3 << 20;

/// The cluster, the servers and the app whose database and volume are backed up. The agents
/// reach S3 through `agents_s3` (the kubelet stand-in maps the endpoint); the operator reaches
/// it directly.
struct World {
    cluster: Cluster,
    client: kube::Client,
    s3: S3Server,
    agents_s3: StallProxy,
    pg: Postgres,
    pg_other: Postgres,
    /// The app's volume (`web-data` in `NS`).
    data: PathBuf,
    /// The operator's kubeconfig (the chart's ServiceAccount), straight to the API server.
    kubeconfig: PathBuf,
}

impl World {
    async fn start() -> World {
        let (s3, pg, pg_other) = (S3Server::start(), Postgres::start(), Postgres::start());
        s3.create_bucket("backups");
        let s3_addr = s3.endpoint.trim_start_matches("http://").to_string();
        let agents_s3 = StallProxy::start(s3_addr.parse().unwrap()).await;
        let cluster = Cluster::start().await;
        cluster.install_crds_from_dir(&repo().join("crds")).await;
        for ns in [NS, OTHER] {
            cluster.namespace(ns).await;
        }
        // The Backups and Restores act as the shop's account, which the other namespace's admin
        // lets restore there.
        cluster.tenant_account(NS);
        cluster.tenant_grant(NS, OTHER);
        let kubelet = cluster.kubelet();
        kubelet.with_env("AWS_EC2_METADATA_DISABLED", "true");
        for (ns, pg) in [(NS, &pg), (OTHER, &pg_other)] {
            kubelet.with_host_override(format!("orders-db.{ns}.svc:5432"), format!("127.0.0.1:{}", pg.port));
        }
        kubelet.with_host_override(s3_addr, agents_s3.addr.to_string());
        let kubeconfig = cluster.operator_kubeconfig(&[]).await;
        let client = cluster.client();
        let mut world = World { cluster, client, s3, agents_s3, pg, pg_other, data: PathBuf::new(), kubeconfig };
        let mut operator = world.operator(&world.kubeconfig.clone());
        world.app().await;
        operator.terminate();
        world
    }

    /// `berth operator` against `kubeconfig`, ready.
    fn operator(&self, kubeconfig: &Path) -> Operator {
        let overrides = [(NS, &self.pg), (OTHER, &self.pg_other)]
            .iter()
            .map(|(ns, pg)| format!("orders-db.{ns}.svc:5432=127.0.0.1:{}", pg.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut operator =
            Operator::start(kubeconfig, &["--leader-election=false", "--endpoint-overrides", &overrides]);
        operator.wait_ready(WAIT);
        operator
    }

    /// The app: a provisioned PostgreSQL instance with rows, a volume with files, the pod that
    /// mounts it, and a suspended policy over both.
    async fn app(&mut self) {
        let client = self.client.clone();
        storage_secrets(&client, NS, &self.s3, KEY).await;
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
        // The image's entrypoint would start the servers with this password; both namespaces'.
        let password = secret_value(&admin, "password");
        for pg in [&mut self.pg, &mut self.pg_other] {
            pg.psql("postgres", &format!("ALTER ROLE postgres PASSWORD '{password}'"));
            pg.password = password.clone();
        }
        let instances: Api<DatabaseInstance> = Api::namespaced(client.clone(), NS);
        eventually("orders-db Ready", WAIT, || async {
            is_ready(&instances.get("orders-db").await.ok()?.status?.conditions).then_some(())
        })
        .await;
        self.pg.psql(
            "orders",
            "CREATE TABLE items (id int PRIMARY KEY, body text); \
             INSERT INTO items SELECT i, md5(i::text) FROM generate_series(1, 5000) i",
        );

        let _: berth::api::AppEnvironment = create(
            &client,
            NS,
            json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "web"},
                "spec": {"tier": "development", "image": "ghcr.io/example/web:1"}
            }),
        )
        .await;
        let _: k8s_openapi::api::core::v1::PersistentVolumeClaim = create(
            &client,
            NS,
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "web-data", "labels": {"berth.dev/appenvironment": "web"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }),
        )
        .await;
        let kubelet = self.cluster.kubelet();
        self.data = eventually("web-data bound", WAIT, || async { kubelet.pvc_dir(NS, "web-data").await }).await;
        let mut payload = vec![0u8; PAYLOAD];
        blake3::Hasher::new().update(b"berth operator_faults").finalize_xof().fill(&mut payload);
        std::fs::create_dir(self.data.join("uploads")).unwrap();
        std::fs::write(self.data.join("uploads/photo.raw"), &payload).unwrap();
        std::fs::write(self.data.join("uploads/a.txt"), "first upload\n").unwrap();
        std::fs::write(self.data.join("index.db"), vec![7u8; 300_000]).unwrap();
        for path in ["uploads", "uploads/photo.raw", "uploads/a.txt", "index.db"] {
            std::os::unix::fs::chown(self.data.join(path), Some(1000), Some(1000)).unwrap();
        }
        let restricted = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
        let _: k8s_openapi::api::core::v1::Pod = create(
            &client,
            NS,
            json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"},
                "spec": {"nodeName": support::kubelet::Kubelet::NODE, "securityContext": {"fsGroup": 1000},
                         "containers": [{"name": "web", "image": "ghcr.io/example/web:1", "securityContext": restricted,
                                         "volumeMounts": [{"name": "data", "mountPath": "/srv/data"}]}],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}]}
            }),
        )
        .await;
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
        eventually("web-0 running", WAIT, || async {
            (pods.get("web-0").await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
        let _: BackupPolicy = create(
            &client,
            NS,
            json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "BackupPolicy", "metadata": {"name": "nightly"},
                "spec": {
                    "schedule": "0 3 * * *", "suspend": true,
                    "storage": {"bucket": "backups", "prefix": "shop", "region": self.s3.region,
                                "endpoint": self.s3.endpoint, "insecureHTTP": true, "forcePathStyle": true,
                                "credentialsSecret": "s3-credentials", "encryptionKeySecret": "repository-key"},
                    "scope": {"databases": true, "volumes": true},
                    "retention": {"keepLast": 10}
                }
            }),
        )
        .await;
        // The policy's first pass (it syncs the bucket) is over before any fault is armed.
        let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), NS);
        eventually("the policy reconciled", WAIT, || async {
            policies.get("nightly").await.ok()?.status?.observed_generation.map(|_| ())
        })
        .await;
    }

    async fn backup(&self, name: &str) {
        let _: Backup = create(
            &self.client,
            NS,
            json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Backup", "metadata": {"name": name},
                   "spec": {"policyName": "nightly"}}),
        )
        .await;
    }

    /// Creates a Restore of `backup` into `OTHER`.
    async fn restore_elsewhere(&self, name: &str, backup: &str) {
        let _: Restore = create(
            &self.client,
            NS,
            json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Restore", "metadata": {"name": name},
                   "spec": {"backupName": backup, "namespaceMapping": {NS: OTHER}}}),
        )
        .await;
    }

    /// Waits until the Backup ends; returns it and the seconds since `since`.
    async fn backup_ended(&self, name: &str, since: Instant) -> (Backup, u64) {
        let api: Api<Backup> = Api::namespaced(self.client.clone(), NS);
        let b = until_terminal(&api, name, |b: &Backup| b.status.as_ref().and_then(|s| s.phase.clone())).await;
        (b, since.elapsed().as_secs())
    }

    async fn restore_ended(&self, name: &str, since: Instant) -> (Restore, u64) {
        let api: Api<Restore> = Api::namespaced(self.client.clone(), NS);
        let r = until_terminal(&api, name, |r: &Restore| r.status.as_ref().and_then(|s| s.phase.clone())).await;
        (r, since.elapsed().as_secs())
    }

    /// The agent Jobs of a Backup or Restore (by the owner label), by name.
    async fn jobs(&self, ns: &str, owner_kind: &str, owner: &str) -> Vec<String> {
        let label = format!("{}={owner}", berth::resources::meta::owner_label_key(owner_kind));
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let mut names: Vec<String> = jobs
            .list(&ListParams::default().labels(&label))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|j| j.metadata.name.unwrap())
            .collect();
        names.sort();
        names
    }

    /// The repository, opened directly.
    async fn repository(&self) -> berth::backup::Repository {
        let config = berth::backup::StorageConfig::S3(berth::backup::S3Config {
            bucket: "backups".into(),
            prefix: "shop".into(),
            endpoint: Some(self.s3.endpoint.clone()),
            insecure_http: true,
            region: Some(self.s3.region.clone()),
            path_style: true,
            access_key_id: Some(self.s3.access_key.clone()),
            secret_access_key: Some(self.s3.secret_key.clone()),
            ..Default::default()
        });
        let storage = berth::backup::Storage::connect(&config).await.unwrap();
        berth::backup::Repository::open(storage, KEY.as_bytes()).await.unwrap()
    }

    /// Snapshots in the repository tagged `backup=<name>`, as `item` tags (the kubernetes
    /// objects' snapshot as `resources`), sorted.
    async fn snapshots_of(&self, backup: &str) -> Vec<String> {
        let tag = format!("backup={backup}");
        let mut items: Vec<String> = self
            .repository()
            .await
            .list_snapshots()
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, s)| s.tags.contains(&tag))
            .map(|(_, s)| s.tags.iter().find_map(|t| t.strip_prefix("item=")).unwrap_or("resources").to_string())
            .collect();
        items.sort();
        items
    }

    /// `berth agent check --read-data` on the repository: every pack read and verified.
    fn check_read_data(&self) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, format!("{KEY}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["agent", "check", "--read-data"])
            .envs(self.s3.env())
            .env("BERTH_REPOSITORY", "s3://backups/shop")
            .env("BERTH_S3_REGION", &self.s3.region)
            .env("BERTH_REPOSITORY_KEY_FILE", &key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "check --read-data: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The restore into `OTHER` brought the same rows into its own server and the same files
    /// into its own volume, and left the source alone.
    async fn assert_restored_elsewhere(&self, rows: &str) {
        let digest = "SELECT count(*) || ':' || md5(string_agg(id || '=' || body, ',' ORDER BY id)) FROM items";
        assert_eq!(self.pg_other.psql("orders", digest).trim(), rows, "the other namespace's PostgreSQL has the rows");
        let restored = self.cluster.kubelet().pvc_dir(OTHER, "web-data").await.expect("web-data restored in OTHER");
        assert_ne!(restored, self.data, "a volume of its own");
        assert_eq!(files(&restored), files(&self.data), "the volume's files are byte-identical");
    }

    fn rows(&self) -> String {
        let digest = "SELECT count(*) || ':' || md5(string_agg(id || '=' || body, ',' ORDER BY id)) FROM items";
        self.pg.psql("orders", digest).trim().to_string()
    }

    /// A fault proxy in front of the API server, and the operator's kubeconfig through it.
    async fn via_proxy(&self) -> (FaultProxy, PathBuf) {
        let proxy = FaultProxy::start(&self.cluster.url, &self.cluster.ca_pem).await;
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap().replace(&self.cluster.url, &proxy.url);
        let kubeconfig = self.cluster.dir().join("operator-via-proxy.kubeconfig");
        std::fs::write(&kubeconfig, text).unwrap();
        (proxy, kubeconfig)
    }

    /// Touches the agent Jobs of a Backup or Restore: each gets an event, as when the Job
    /// controller or a TTL controller updates it.
    async fn touch_jobs(&self, ns: &str, owner_kind: &str, owner: &str) {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        for name in self.jobs(ns, owner_kind, owner).await {
            let patch = json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
            jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
    }

    /// Since `mark`: the operator's writes to the Backup or Restore `name` (of `resource`,
    /// `backups` or `restores`) and to its agent Jobs.
    fn writes_about(&self, mark: Mark, resource: &str, name: &str) -> BTreeMap<String, usize> {
        let mut writes = self.writes(mark);
        writes.retain(|w, _| {
            let object = format!(" {resource}");
            (w.contains(&object) && w.ends_with(&format!("/{name}")))
                || (w.contains(" jobs ") && w.contains(&format!("/{name}-")))
        });
        writes
    }

    /// How many Events with `reason` the operator recorded about the `kind` `name` in `NS`.
    async fn events_of(&self, kind: &str, name: &str, reason: &str) -> usize {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), NS);
        let list = events.list(&ListParams::default()).await.unwrap().items;
        list.iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
            })
            // A repeated Event is one object whose series counts the repeats.
            .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1) as usize))
            .sum()
    }

    /// Since `mark`: the operator's successful writes, as `verb resource[/sub] ns/name` → count.
    fn writes(&self, mark: Mark) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.cluster.audit.writes_since(mark, OPERATOR_USER).into_iter().filter(|e| e.code() < 300) {
            let o = e.object_ref.clone().unwrap_or_default();
            let sub = if o.subresource.is_empty() { String::new() } else { format!("/{}", o.subresource) };
            *out.entry(format!("{} {}{sub} {}/{}", e.verb, o.resource, o.namespace, o.name)).or_insert(0) += 1;
        }
        out
    }
}

/// Polls `name` until its phase is terminal; on timeout, fails with the object as it is.
async fn until_terminal<K>(api: &Api<K>, name: &str, phase: impl Fn(&K) -> Option<String>) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let obj = api.get(name).await.ok();
        if let Some(obj) = &obj
            && matches!(phase(obj).as_deref(), Some("Completed" | "PartiallyFailed" | "Failed"))
        {
            return obj.clone();
        }
        assert!(Instant::now() < deadline, "{name} did not end within {WAIT:?}: {obj:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn phase_of_backup(b: &Backup) -> &str {
    b.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

fn phase_of_restore(r: &Restore) -> &str {
    r.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

/// No work done twice: each Job, and each object the restore wrote, was created once, and no
/// Job was patched or replaced.
fn assert_each_written_once(writes: &BTreeMap<String, usize>) {
    // Events and access reviews are creates that change nothing (a Restore asks its account's
    // rights again after a restart).
    let changes_nothing = |w: &str| w.starts_with("create events") || w.starts_with("create selfsubjectaccessreviews");
    let twice: Vec<_> =
        writes.iter().filter(|(w, n)| w.starts_with("create ") && !changes_nothing(w) && **n > 1).collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");
    let job_changes: Vec<_> = writes.keys().filter(|w| w.contains(" jobs ") && !w.starts_with("create ")).collect();
    assert!(job_changes.is_empty(), "agent Jobs changed after their creation: {job_changes:?}");
    // A Backup's status changes at most four times: InProgress, each of its two agent items,
    // its end.
    let chatty: Vec<_> = writes.iter().filter(|(w, n)| w.starts_with("patch backups/status ") && **n > 4).collect();
    assert!(chatty.is_empty(), "a Backup's status written more often than it changed: {chatty:?}");
}

/// The restored objects the operator created in `OTHER`, as `resource/name`.
fn created_in_other(writes: &BTreeMap<String, usize>) -> Vec<String> {
    writes
        .keys()
        .filter_map(|w| w.strip_prefix("create "))
        .filter_map(|w| w.split_once(' '))
        .filter(|(_, at)| at.starts_with(&format!("{OTHER}/")))
        .map(|(resource, at)| format!("{resource}/{}", at.split_once('/').unwrap().1))
        .filter(|r| !r.starts_with("jobs/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_faults_lose_nothing_and_repeat_nothing() {
    let world = World::start().await;
    let (proxy, kubeconfig) = world.via_proxy().await;
    // Watches: the first watch of the Backups' Jobs breaks after its first events and its next
    // one is told its resourceVersion expired; so is the first watch of Backups and of Restores.
    // (Matched by the Backup controller's label selector: the AppEnvironment controller also
    // watches Jobs, its migrations, and in this test that watch never sees an event.)
    let backup_jobs = "labelSelector=berth.dev%2Fbackup&";
    proxy.add(Rule::new("watch", backup_jobs, Fault::DropWatch, 1));
    proxy.add(Rule::new("watch", backup_jobs, Fault::Gone, 1));
    proxy.add(Rule::new("watch", "/backups?", Fault::Gone, 1));
    proxy.add(Rule::new("watch", "/restores?", Fault::Gone, 1));
    let mark = world.cluster.audit.mark();
    let mut operator = world.operator(&kubeconfig);
    let rows = world.rows();
    // The policy's first pass reads the storage Secret (a bucket sync); the faults below are
    // meant for the Backup's reads.
    eventually("the policy's first bucket sync", WAIT, || async {
        let reads = world.cluster.audit.since(mark);
        reads
            .iter()
            .any(|e| e.user.username == OPERATOR_USER && e.verb == "get" && e.request_u_r_i.contains("s3-credentials"))
            .then_some(())
    })
    .await;

    // The backup: a Secret read fails, Job creations are throttled and one's reply is lost,
    // status writes conflict, and the final status write fails before the server sees it.
    let status = format!("/namespaces/{NS}/backups/by-hand/status");
    for rule in [
        Rule::new("get", format!("/namespaces/{NS}/secrets/s3-credentials"), Fault::ServerError, 1),
        Rule::new("create", format!("/namespaces/{NS}/jobs"), Fault::Throttled, 1),
        Rule::new("create", format!("/namespaces/{NS}/jobs"), Fault::ReplyLost, 1),
        Rule::new("patch", status.clone(), Fault::Conflict, 1).with_body(r#""phase":"InProgress""#),
        Rule::new("patch", status.clone(), Fault::ServerError, 1).with_body("items backed up"),
    ] {
        proxy.add(rule);
    }
    let started = Instant::now();
    world.backup("by-hand").await;
    let (backup, backup_secs) = world.backup_ended("by-hand", started).await;
    assert_eq!(phase_of_backup(&backup), "Completed", "{:?}", backup.status);
    let items: Vec<&str> = backup.status.as_ref().unwrap().items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(items, ["resources", "database/orders-db", "volume/web-data"]);

    // The restore into the other namespace: the key Secret's read fails, creations of
    // restored objects fail (500) or are throttled, and status writes conflict.
    let other = |path: &str| format!("/namespaces/{OTHER}/{path}");
    for rule in [
        Rule::new("get", format!("/namespaces/{NS}/secrets/repository-key"), Fault::ServerError, 1),
        Rule::new("create", other("secrets"), Fault::ServerError, 1),
        Rule::new("create", other("databaseinstances"), Fault::ServerError, 1),
        Rule::new("create", other("persistentvolumeclaims"), Fault::Throttled, 1),
        Rule::new("create", other("appenvironments"), Fault::ReplyLost, 1),
        Rule::new("patch", format!("/namespaces/{NS}/restores/elsewhere/status"), Fault::Conflict, 2)
            .with_body(r#""phase":"InProgress""#),
    ] {
        proxy.add(rule);
    }
    let started = Instant::now();
    world.restore_elsewhere("elsewhere", "by-hand").await;
    let (restore, restore_secs) = world.restore_ended("elsewhere", started).await;
    assert_eq!(phase_of_restore(&restore), "Completed", "{:?}", restore.status);
    assert!(proxy.unfired().is_empty(), "faults never injected: {:?}", proxy.unfired());
    assert!(proxy.fired().iter().any(|f| f.starts_with("DropWatch")), "a watch was dropped: {:?}", proxy.fired());

    // Nothing lost.
    world.assert_restored_elsewhere(&rows).await;
    world.check_read_data();
    // Nothing twice: one Job per item, one snapshot per item, every object created once.
    let jobs = world.jobs(NS, "Backup", "by-hand").await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(world.cluster.kubelet().runs_of(job).len(), 1, "one pod of {job}");
    }
    assert_eq!(world.snapshots_of("by-hand").await, ["database/orders-db", "resources", "volume/web-data"]);
    assert_eq!(world.jobs(OTHER, "Restore", "elsewhere").await.len(), 2);
    let writes = world.writes(mark);
    assert_each_written_once(&writes);
    let mut restored = created_in_other(&writes);
    restored.sort();
    for wanted in ["databaseinstances/orders-db", "persistentvolumeclaims/web-data", "appenvironments/web"] {
        assert!(restored.iter().any(|r| r == wanted), "{wanted} restored: {restored:?}");
    }
    eprintln!(
        "api faults: backup ended in {backup_secs}s, restore in {restore_secs}s; injected {:#?}; operator writes {:#?}",
        proxy.fired(),
        writes
    );
    world.cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// The operator's cache of Backups and Restores lags the server by seconds (its watches are
/// late, as under load), while its cache of their Jobs is current. A Job event right after a
/// Backup or Restore completed then triggers a reconcile whose cached object is still
/// InProgress: nothing of the finished run may be done again (no export, no status write, no
/// second Completed event).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_behind_the_server_redoes_no_finished_step() {
    const LAG: Duration = Duration::from_secs(5);
    let world = World::start().await;
    let (proxy, kubeconfig) = world.via_proxy().await;
    proxy.add(Rule::new("watch", "/backups?", Fault::LagWatch(LAG), usize::MAX));
    proxy.add(Rule::new("watch", "/restores?", Fault::LagWatch(LAG), usize::MAX));
    let mut operator = world.operator(&kubeconfig);
    let rows = world.rows();

    world.backup("lagged").await;
    let (backup, _) = world.backup_ended("lagged", Instant::now()).await;
    assert_eq!(phase_of_backup(&backup), "Completed", "{:?}", backup.status);
    // Within the lag: the operator has not yet seen its own Completed write.
    let mark = world.cluster.audit.mark();
    world.touch_jobs(NS, "Backup", "lagged").await;
    tokio::time::sleep(LAG * 2).await;
    let backups: Api<Backup> = Api::namespaced(world.client.clone(), NS);
    assert_eq!(backups.get("lagged").await.unwrap().status, backup.status, "the finished Backup's status rewritten");
    let writes = world.writes_about(mark, "backups", "lagged");
    assert!(writes.is_empty(), "the operator wrote after the Backup had completed: {writes:#?}");
    assert_eq!(world.events_of("Backup", "lagged", "Completed").await, 1, "one Completed event");

    world.restore_elsewhere("lagged-restore", "lagged").await;
    let (restore, _) = world.restore_ended("lagged-restore", Instant::now()).await;
    assert_eq!(phase_of_restore(&restore), "Completed", "{:?}", restore.status);
    let mark = world.cluster.audit.mark();
    world.touch_jobs(OTHER, "Restore", "lagged-restore").await;
    tokio::time::sleep(LAG * 2).await;
    let restores: Api<Restore> = Api::namespaced(world.client.clone(), NS);
    assert_eq!(
        restores.get("lagged-restore").await.unwrap().status,
        restore.status,
        "the finished Restore's status rewritten"
    );
    let writes = world.writes_about(mark, "restores", "lagged-restore");
    assert!(writes.is_empty(), "the operator wrote after the Restore had completed: {writes:#?}");
    assert_eq!(world.events_of("Restore", "lagged-restore", "Completed").await, 1, "one Completed event");
    world.assert_restored_elsewhere(&rows).await;
    assert!(proxy.fired().iter().any(|f| f.starts_with("LagWatch")), "{:?}", proxy.fired());
    world.cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// The operator's cache of Secrets lags the server by seconds, and the instance is reconciled
/// again right after it rotated its credentials (`berth.dev/rotate-credentials`): it must not
/// rotate a second time from the stale Secret, which would leave the Secret with a password
/// the server never got and the server's nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_cache_behind_the_server_rotates_credentials_once() {
    const LAG: Duration = Duration::from_secs(5);
    let world = World::start().await;
    let (proxy, kubeconfig) = world.via_proxy().await;
    proxy.add(Rule::new("watch", "/secrets?", Fault::LagWatch(LAG), usize::MAX));
    let mut operator = world.operator(&kubeconfig);
    let instances: Api<DatabaseInstance> = Api::namespaced(world.client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), NS);
    let before = secret_value(&secrets.get("orders-db-credentials").await.unwrap(), "password");

    let annotate = |key: &str, value: &str| Patch::Merge(json!({"metadata": {"annotations": {key: value}}}));
    instances
        .patch("orders-db", &PatchParams::default(), &annotate("berth.dev/rotate-credentials", "2026-12-06"))
        .await
        .unwrap();
    let rotated = eventually("the rotated password in the Secret", WAIT, || async {
        let password = secret_value(&secrets.get("orders-db-credentials").await.ok()?, "password");
        (password != before).then_some(password)
    })
    .await;
    // Within the lag: the next reconcile, while the cache still has the Secret before rotation.
    instances.patch("orders-db", &PatchParams::default(), &annotate("example.com/touched", "yes")).await.unwrap();
    tokio::time::sleep(LAG * 2).await;
    eventually("rotation complete", WAIT, || async {
        let db = instances.get("orders-db").await.ok()?;
        (db.status?.credentials_revision.as_deref() == Some("2026-12-06")).then_some(())
    })
    .await;
    let now = secret_value(&secrets.get("orders-db-credentials").await.unwrap(), "password");
    assert_eq!(now, rotated, "the credentials were rotated a second time");
    assert!(world.pg.can_login("postgres", &now, "postgres").await, "the Secret's password works on the server");
    assert!(!world.pg.can_login("postgres", &before, "postgres").await, "the old password no longer works");
    assert!(proxy.fired().iter().any(|f| f.starts_with("LagWatch")), "{:?}", proxy.fired());
    world.cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// The operator's cache of AppEnvironments lags the server, and the app's migration Job is
/// deleted by hand right after it succeeded: the migration must not run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_behind_the_server_runs_a_migration_once() {
    const LAG: Duration = Duration::from_secs(5);
    let world = World::start().await;
    let (proxy, kubeconfig) = world.via_proxy().await;
    proxy.add(Rule::new("watch", "/appenvironments?", Fault::LagWatch(LAG), usize::MAX));
    let mut operator = world.operator(&kubeconfig);
    let apps: Api<AppEnvironment> = Api::namespaced(world.client.clone(), NS);
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), NS);
    let _: AppEnvironment = create(
        &world.client,
        NS,
        json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "AppEnvironment", "metadata": {"name": "migrated"},
            "spec": {"tier": "development", "image": "ghcr.io/example/web:1",
                     "migration": {"command": ["sh", "-c", "echo migrated"]}}
        }),
    )
    .await;
    let job = eventually("the migration succeeded", WAIT, || async {
        let migration = apps.get("migrated").await.ok()?.status?.migration?;
        (migration.phase == "Succeeded").then_some(migration.job)
    })
    .await;
    // Within the lag: the Job goes, while the operator's cached app still has it Running.
    jobs.delete(&job, &kube::api::DeleteParams::background()).await.unwrap();
    tokio::time::sleep(LAG * 2).await;
    assert_eq!(world.cluster.kubelet().runs_of(&job).len(), 1, "the migration ran once");
    assert!(jobs.get_opt(&job).await.unwrap().is_none(), "the migration Job was created again");
    let migration = apps.get("migrated").await.unwrap().status.unwrap().migration.unwrap();
    assert_eq!((migration.job.as_str(), migration.phase.as_str()), (job.as_str(), "Succeeded"));
    assert!(proxy.fired().iter().any(|f| f.starts_with("LagWatch")), "{:?}", proxy.fired());
    world.cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

/// Waits until `count` agent pods of Jobs named `prefix…` in `ns` run (their processes
/// started), and returns their names.
async fn agents_running(world: &World, ns: &str, prefix: &str, count: usize) -> Vec<String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(world.client.clone(), ns);
    eventually(&format!("{count} agent pods of {prefix} run"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels("batch.kubernetes.io/job-name")).await.ok()?;
        let running: Vec<String> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(prefix)))
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(|p| p.metadata.name.unwrap())
            .collect();
        (running.len() >= count).then_some(running)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_killed_mid_backup_and_mid_restore_resumes_without_repeating_work() {
    let world = World::start().await;
    let mut operator = world.operator(&world.kubeconfig);
    let mark = world.cluster.audit.mark();
    let rows = world.rows();

    // The agents' S3 hangs while their Jobs run: the operator is killed in the middle.
    world.agents_s3.stall();
    let started = Instant::now();
    world.backup("killed").await;
    agents_running(&world, NS, "killed-", 2).await;
    assert_eq!(operator.kill_9().code(), None, "killed by a signal");
    let mut operator = world.operator(&world.kubeconfig);
    world.agents_s3.resume();
    let (backup, backup_secs) = world.backup_ended("killed", started).await;
    assert_eq!(phase_of_backup(&backup), "Completed", "{:?}", backup.status);

    // The restore: killed while the database's Job runs, and again while the volume's runs.
    world.agents_s3.stall();
    let started = Instant::now();
    world.restore_elsewhere("elsewhere", "killed").await;
    agents_running(&world, OTHER, "elsewhere-", 1).await;
    operator.kill_9();
    let mut operator = world.operator(&world.kubeconfig);
    world.agents_s3.resume();
    let restores: Api<Restore> = Api::namespaced(world.client.clone(), NS);
    eventually("the restore reaches the volume's data", WAIT, || async {
        let r = restores.get("elsewhere").await.ok()?;
        (r.status?.stage.as_deref() == Some("VolumeData")).then_some(())
    })
    .await;
    world.agents_s3.stall();
    agents_running(&world, OTHER, "elsewhere-", 1).await;
    operator.kill_9();
    let mut operator = world.operator(&world.kubeconfig);
    world.agents_s3.resume();
    let (restore, restore_secs) = world.restore_ended("elsewhere", started).await;
    assert_eq!(phase_of_restore(&restore), "Completed", "{:?}", restore.status);

    world.assert_restored_elsewhere(&rows).await;
    world.check_read_data();
    for (ns, kind, owner) in [(NS, "Backup", "killed"), (OTHER, "Restore", "elsewhere")] {
        let jobs = world.jobs(ns, kind, owner).await;
        assert_eq!(jobs.len(), 2, "{jobs:?}");
        for job in &jobs {
            assert_eq!(world.cluster.kubelet().runs_of(job).len(), 1, "one pod of {job}");
        }
    }
    assert_eq!(world.snapshots_of("killed").await, ["database/orders-db", "resources", "volume/web-data"]);
    let writes = world.writes(mark);
    assert_each_written_once(&writes);
    eprintln!("kill -9: backup ended in {backup_secs}s, restore in {restore_secs}s; operator writes {writes:#?}");
    world.cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_that_is_slow_or_refuses_partway_loses_nothing_and_says_why() {
    let world = World::start().await;
    let mut operator = world.operator(&world.kubeconfig);
    let mark = world.cluster.audit.mark();
    let rows = world.rows();

    // S3 refuses connections once the agents have uploaded a third of the volume's payload.
    world.agents_s3.refuse_after(PAYLOAD as u64 / 3);
    let started = Instant::now();
    world.backup("cut").await;
    let (cut, cut_secs) = world.backup_ended("cut", started).await;
    assert!(world.agents_s3.refusing(), "the upload was cut");
    let status = cut.status.clone().unwrap();
    assert_eq!(phase_of_backup(&cut), "PartiallyFailed", "{status:?}");
    let resources = status.items.iter().find(|i| i.name == "resources").unwrap();
    assert_eq!(resources.phase, "Completed", "the operator reaches S3 itself: {status:?}");
    // The volume's upload is the one cut; the small database dump may finish before the cut
    // (the two agents run at once), but whatever failed says why.
    let volume = status.items.iter().find(|i| i.name == "volume/web-data").unwrap();
    assert_eq!(volume.phase, "Failed", "{volume:?}");
    for item in status.items.iter().filter(|i| i.name != "resources" && i.phase != "Completed") {
        assert_eq!(item.phase, "Failed", "{item:?}");
        let error = item.error.as_deref().unwrap_or_default();
        assert!(error.contains("Connection refused") || error.contains("connection refused"), "says why: {error}");
    }
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").expect("Degraded");
    assert!(degraded.message.contains("volume/web-data"), "{}", degraded.message);
    let mut completed: Vec<String> =
        status.items.iter().filter(|i| i.phase == "Completed").map(|i| i.name.clone()).collect();
    completed.sort();
    assert_eq!(world.snapshots_of("cut").await, completed, "the cut uploads left no snapshot");
    // One Job per item; each tried as often as its backoffLimit allows, each attempt a pod.
    let jobs = world.jobs(NS, "Backup", "cut").await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(world.cluster.kubelet().runs_of(job).len(), 3, "backoffLimit 2: three attempts of {job}");
    }

    // S3 accepts again, slowly: the next backup takes longer and completes.
    world.agents_s3.accept_again().await;
    world.agents_s3.slow(Duration::from_millis(20));
    let sent = world.agents_s3.bytes_sent();
    let started = Instant::now();
    world.backup("slow").await;
    let (slow, slow_secs) = world.backup_ended("slow", started).await;
    assert_eq!(phase_of_backup(&slow), "Completed", "{:?}", slow.status);
    assert!(world.agents_s3.bytes_sent() - sent > PAYLOAD as u64, "the upload went through the slow path");
    world.agents_s3.slow(Duration::ZERO);

    let started = Instant::now();
    world.restore_elsewhere("elsewhere", "slow").await;
    let (restore, restore_secs) = world.restore_ended("elsewhere", started).await;
    assert_eq!(phase_of_restore(&restore), "Completed", "{:?}", restore.status);
    world.assert_restored_elsewhere(&rows).await;
    // The partial uploads left nothing that fails a full read (retention has by now removed
    // `cut`, older than the newest Completed backup, and pruned).
    world.check_read_data();
    assert_eq!(world.snapshots_of("slow").await, ["database/orders-db", "resources", "volume/web-data"]);
    let writes = world.writes(mark);
    assert_each_written_once(&writes);
    eprintln!(
        "s3 faults: cut backup ended in {cut_secs}s ({}), slow backup in {slow_secs}s, restore in {restore_secs}s",
        status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone()).unwrap_or_default()
    );
    world.cluster.assert_clean().await;
    assert_eq!(operator.terminate().code(), Some(0));
}

//! The Jobs built by `resources::backup::agent_job`, created in the test API server and run
//! by its Job stand-in as local `berth agent` processes (tests/support/jobs.rs: same args,
//! env from the Secrets, mounts mapped to local folders) against a real S3 server (s3s-fs)
//! and a real PostgreSQL 15 and RabbitMQ on loopback. The database host in the credentials Secret is the
//! in-cluster Service name; a host override maps it to the loopback server.

use crate::agent_support;
use crate::support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth::api::backuppolicy::StorageLocation;
use berth::api::{Backup, Restore};
use berth::backup::{Repository, S3Config, Storage, StorageConfig};
use berth::resources::backup::jobs::{AgentTask, JobSettings, KEY_FILE_PATH, agent_job};
use berth::resources::meta::owner_reference;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::apiserver::TestApiServer;
use support::jobs::{LocalJobRunner, apply_overrides, expand, map_paths};
use support::objects::create_secret;
use support::servers::{Postgres, RabbitMq, S3Server};
use support::wait::eventually;

const NS: &str = "team";
const KEY: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(180);

/// Test API server with CRDs, an S3 server with an initialised repository, and the
/// repository Secrets in the namespace.
struct World {
    server: TestApiServer,
    client: kube::Client,
    s3: S3Server,
    storage: StorageLocation,
    owner: OwnerReference,
    restore_owner: OwnerReference,
}

impl World {
    async fn start() -> World {
        let server = TestApiServer::start().await;
        server.install_crds_from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds")).await;
        let client = server.client().await;
        let s3 = S3Server::start();
        s3.create_bucket("backups");
        let storage = StorageLocation {
            bucket: "backups".into(),
            prefix: Some("team".into()),
            region: Some(s3.region.clone()),
            endpoint: Some(s3.endpoint.clone()),
            // The loopback S3 server speaks plain HTTP.
            insecure_http: true,
            force_path_style: true,
            credentials_secret: Some("s3-credentials".into()),
            ca_secret: None,
            encryption_key_secret: "repository-key".into(),
            server_side_encryption: None,
        };
        Repository::init(Storage::connect(&storage_config(&s3, &storage)).await.unwrap(), KEY.as_bytes())
            .await
            .expect("init repository");
        create_secret(
            &client,
            NS,
            "s3-credentials",
            &[("AWS_ACCESS_KEY_ID", s3.access_key.as_str()), ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str())],
        )
        .await;
        // With a trailing newline, as `kubectl create secret --from-file` of an echoed key.
        create_secret(&client, NS, "repository-key", &[("key", &format!("{KEY}\n"))]).await;

        let backups: Api<Backup> = Api::namespaced(client.clone(), NS);
        let backup: Backup = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "nightly-1", "namespace": NS}, "spec": {"policyName": "nightly"}
        }))
        .unwrap();
        let backup = backups.create(&PostParams::default(), &backup).await.unwrap();
        let restores: Api<Restore> = Api::namespaced(client.clone(), NS);
        let restore: Restore = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": "undo", "namespace": NS}, "spec": {"backupName": "nightly-1"}
        }))
        .unwrap();
        let restore = restores.create(&PostParams::default(), &restore).await.unwrap();
        World { owner: owner_reference(&backup), restore_owner: owner_reference(&restore), server, client, s3, storage }
    }

    fn runner(&self, pvc_dirs: HashMap<(String, String), PathBuf>) -> LocalJobRunner {
        // No instance metadata service here: fail fast should the SDK ever look for one.
        LocalJobRunner::new(&self.server, pvc_dirs).with_env("AWS_EC2_METADATA_DISABLED", "true")
    }

    /// Builds the Job for `task`, creates it and waits until it is Complete or Failed;
    /// returns the final Job.
    async fn run(&self, task: &AgentTask, name: &str) -> Job {
        let owner = if task.is_restore() { &self.restore_owner } else { &self.owner };
        let settings = JobSettings {
            owner,
            namespace: NS,
            name,
            image: "ghcr.io/berth/berth:test",
            storage: &self.storage,
            tags: vec!["backup=nightly-1".into(), "policy=nightly".into()],
            consumer: task.pvc().map(|_| berth::resources::backup::jobs::VolumeConsumer {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            deadline_seconds: 600,
            backoff_limit: 0,
            service_account: None,
        };
        let job = agent_job(task, &settings);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), NS);
        jobs.create(&PostParams::default(), &job).await.expect("create Job");
        eventually(&format!("Job {name} to finish"), WAIT, || async {
            let j = jobs.get(name).await.ok()?;
            let done = j
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
            done.then_some(j)
        })
        .await
    }

    async fn repository(&self) -> Repository {
        let storage = Storage::connect(&storage_config(&self.s3, &self.storage)).await.unwrap();
        Repository::open(storage, KEY.as_bytes()).await.expect("open repository")
    }
}

fn storage_config(s3: &S3Server, storage: &StorageLocation) -> StorageConfig {
    StorageConfig::S3(S3Config {
        bucket: storage.bucket.clone(),
        prefix: storage.prefix.clone().unwrap_or_default(),
        endpoint: Some(s3.endpoint.clone()),
        insecure_http: true,
        region: Some(s3.region.clone()),
        path_style: true,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        ..S3Config::default()
    })
}

/// `(type, message)` of the Job's terminal condition.
fn outcome(job: &Job) -> (String, String) {
    let c = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"))
        .expect("terminal condition");
    (c.type_.clone(), c.message.clone().unwrap_or_default())
}

fn assert_complete(job: &Job, runner: &LocalJobRunner) {
    let name = job.metadata.name.as_deref().unwrap();
    let (ty, msg) = outcome(job);
    assert_eq!(ty, "Complete", "Job {name} failed: {msg}\nruns: {:#?}", runner.runs_of(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_and_restore_jobs_run_the_agent_against_real_servers() {
    let pg = Postgres::start();
    let world = World::start().await;
    let host = format!("db.{NS}.svc");
    // As the DatabaseInstance controller writes it: the in-cluster Service, the real port.
    create_secret(
        &world.client,
        NS,
        "db-credentials",
        &[("username", "postgres"), ("password", &pg.password), ("host", &host), ("port", "5432")],
    )
    .await;
    let runner =
        world.runner(HashMap::new()).with_host_override(format!("{host}:5432"), format!("127.0.0.1:{}", pg.port));
    runner.install(&world.server);

    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);
         INSERT INTO orders (item) SELECT 'item ' || g FROM generate_series(1, 500) g;",
    );

    let job = world.run(&AgentTask::BackupPostgres { instance: "db".into() }, "nightly-1-db").await;
    assert_complete(&job, &runner);
    let run = &runner.runs_of("nightly-1-db")[0];
    assert_eq!(run.env["PGHOST"], "127.0.0.1", "host from the Secret, mapped: {:?}", run.env);
    assert_eq!(run.env["PGPORT"], pg.port.to_string());
    assert_eq!(run.env["PGPASSWORD"], pg.password);
    assert_ne!(run.env["BERTH_REPOSITORY_KEY_FILE"], KEY_FILE_PATH, "mount path mapped to a local file");
    assert!(Path::new(&run.env["BERTH_REPOSITORY_KEY_FILE"]).is_file());

    let repo = world.repository().await;
    let snaps = repo.list_snapshots().await.unwrap();
    let (id, snap) = snaps.iter().find(|(_, s)| s.kind == "postgres").expect("a postgres snapshot");
    assert_eq!(snap.tags, ["backup=nightly-1", "policy=nightly"]);
    assert!(snap.summary.files >= 2, "{:?}", snap.summary);

    pg.psql("shop", "DELETE FROM orders WHERE id > 10");
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders").trim(), "10");

    let restore = AgentTask::RestorePostgres { instance: "db".into(), snapshot: id.to_hex() };
    let job = world.run(&restore, "undo-db").await;
    assert_complete(&job, &runner);
    assert_eq!(pg.psql("shop", "SELECT count(*) FROM orders").trim(), "500");
    assert_eq!(pg.psql("shop", "SELECT item FROM orders WHERE id = 500").trim(), "item 500");
    assert_eq!(runner.runs().len(), 2, "one attempt each");
}

fn write_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for (i, rel) in ["a.txt", "sub/b.bin", "sub/deeper/c.bin", "empty"].iter().enumerate() {
        let data = if *rel == "empty" { vec![] } else { agent_support::pseudo_random(i as u64 + 1, 5000 * (i + 1)) };
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.insert(rel.to_string(), data);
    }
    files
}

fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    agent_support::files_below(dir)
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_backup_and_restore_jobs_round_trip_a_directory() {
    let world = World::start().await;
    let source = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let files = write_tree(source.path());
    let runner = world.runner(HashMap::from([
        ((NS.to_string(), "uploads".to_string()), source.path().to_path_buf()),
        ((NS.to_string(), "uploads-restored".to_string()), target.path().to_path_buf()),
    ]));
    runner.install(&world.server);

    let job = world.run(&AgentTask::BackupVolume { pvc: "uploads".into() }, "nightly-1-uploads").await;
    assert_complete(&job, &runner);
    let run = &runner.runs_of("nightly-1-uploads")[0];
    assert_eq!(run.args[..3], ["agent", "backup-dir", &source.path().display().to_string()][..]);

    let repo = world.repository().await;
    let snaps = repo.list_snapshots().await.unwrap();
    let (id, snap) = snaps.iter().find(|(_, s)| s.kind == "dir").expect("a dir snapshot");
    assert_eq!(snap.tags, ["backup=nightly-1", "policy=nightly"]);
    assert_eq!(snap.summary.files, 4, "{:?}", snap.summary);
    assert_eq!(read_tree(source.path()), files, "the backup left the volume alone");

    let restore = AgentTask::RestoreVolume { pvc: "uploads-restored".into(), snapshot: id.to_hex() };
    let job = world.run(&restore, "undo-uploads").await;
    assert_complete(&job, &runner);
    assert_eq!(read_tree(target.path()), files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fail_with_a_message_when_a_secret_or_volume_is_missing() {
    let world = World::start().await;
    let runner = world.runner(HashMap::new());
    runner.install(&world.server);

    // No `ghost-credentials`: the pod could not start (CreateContainerConfigError).
    let job = world.run(&AgentTask::BackupPostgres { instance: "ghost".into() }, "nightly-1-ghost").await;
    let (ty, msg) = outcome(&job);
    assert_eq!(ty, "Failed");
    assert!(msg.contains("ghost-credentials"), "{msg}");
    assert!(runner.runs_of("nightly-1-ghost")[0].exit_code.is_none(), "the agent never ran");

    // A Secret without the key the Job names.
    create_secret(&world.client, NS, "half-credentials", &[("username", "postgres"), ("host", "half.team.svc")]).await;
    let job = world.run(&AgentTask::BackupPostgres { instance: "half".into() }, "nightly-1-half").await;
    let (ty, msg) = outcome(&job);
    assert_eq!(ty, "Failed");
    assert!(msg.contains("half-credentials") && msg.contains("port"), "{msg}");

    // A PVC with no local folder.
    let job = world.run(&AgentTask::BackupVolume { pvc: "nowhere".into() }, "nightly-1-nowhere").await;
    let (ty, msg) = outcome(&job);
    assert_eq!(ty, "Failed");
    assert!(msg.contains("nowhere"), "{msg}");

    // The agent itself fails: the message is the end of its stderr.
    let scratch = tempfile::tempdir().unwrap();
    runner.set_pvc_dir(NS, "scratch", scratch.path());
    let task = AgentTask::RestoreVolume { pvc: "scratch".into(), snapshot: "0000dead".into() };
    let job = world.run(&task, "undo-scratch").await;
    let (ty, msg) = outcome(&job);
    assert_eq!(ty, "Failed");
    assert!(msg.contains("berth agent: error") && msg.contains("0000dead"), "{msg}");
    assert_eq!(runner.runs_of("undo-scratch")[0].exit_code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_backup_and_restore_jobs_use_the_management_port_of_the_secrets_host() {
    let rabbit = RabbitMq::start();
    let world = World::start().await;
    let host = format!("mq.{NS}.svc");
    create_secret(
        &world.client,
        NS,
        "mq-credentials",
        &[("username", &rabbit.user), ("password", &rabbit.password), ("host", &host), ("port", "5672")],
    )
    .await;
    let runner = world
        .runner(HashMap::new())
        .with_host_override(format!("{host}:15672"), format!("127.0.0.1:{}", rabbit.mgmt_port));
    runner.install(&world.server);
    rabbit.api_ok("PUT", "/api/vhosts/shop", Some("{}"));
    rabbit.api_ok("PUT", "/api/exchanges/shop/orders", Some(r#"{"type":"topic","durable":true}"#));

    let job = world.run(&AgentTask::BackupRabbitmq { instance: "mq".into() }, "nightly-1-mq").await;
    assert_complete(&job, &runner);
    let run = &runner.runs_of("nightly-1-mq")[0];
    assert_eq!(run.env["BERTH_RABBITMQ_URL"], rabbit.mgmt_url(), "$(BERTH_RABBITMQ_HOST) expanded, then mapped");
    let snaps = world.repository().await.list_snapshots().await.unwrap();
    let (id, snap) = snaps.iter().find(|(_, s)| s.kind == "rabbitmq").expect("a rabbitmq snapshot");
    assert_eq!(snap.tags, ["backup=nightly-1", "policy=nightly"]);

    rabbit.api_ok("DELETE", "/api/vhosts/shop", None);
    assert!(!rabbit.api_ok("GET", "/api/exchanges", None).contains("\"orders\""));
    let restore = AgentTask::RestoreRabbitmq { instance: "mq".into(), snapshot: id.to_hex() };
    let job = world.run(&restore, "undo-mq").await;
    assert_complete(&job, &runner);
    let exchanges = rabbit.api_ok("GET", "/api/exchanges/shop", None);
    assert!(exchanges.contains("\"orders\""), "{exchanges}");
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn dependent_variables_expand_like_the_kubelet() {
    let defined = vars(&[("HOST", "mq.team.svc"), ("PORT", "15672")]);
    assert_eq!(expand("http://$(HOST):$(PORT)/api", &defined), "http://mq.team.svc:15672/api");
    assert_eq!(expand("$(MISSING) $$(HOST) $ $(", &defined), "$(MISSING) $(HOST) $ $(");
}

#[test]
fn host_overrides_map_joined_and_split_addresses() {
    let overrides = vars(&[("db.team.svc:5432", "127.0.0.1:40001")]);
    let mut env = vars(&[("PGHOST", "db.team.svc"), ("PGPORT", "5432"), ("URL", "postgres://db.team.svc:5432/x")]);
    let mut args = vec!["--url=http://db.team.svc:5432".to_string()];
    apply_overrides(&overrides, &mut env, &mut args);
    assert_eq!(env, vars(&[("PGHOST", "127.0.0.1"), ("PGPORT", "40001"), ("URL", "postgres://127.0.0.1:40001/x")]));
    assert_eq!(args, ["--url=http://127.0.0.1:40001"]);
    // A port alone is left alone when no variable names the host.
    let mut env = vars(&[("OTHER_PORT", "5432")]);
    apply_overrides(&overrides, &mut env, &mut []);
    assert_eq!(env, vars(&[("OTHER_PORT", "5432")]));
}

#[test]
fn mount_paths_map_to_local_folders() {
    let mounts = vec![
        ("/etc/berth/s3-ca".to_string(), PathBuf::from("/local/ca")),
        ("/data".to_string(), PathBuf::from("/local/pvc")),
    ];
    assert_eq!(map_paths("/data", &mounts), "/local/pvc");
    assert_eq!(map_paths("/data/sub/f", &mounts), "/local/pvc/sub/f");
    assert_eq!(map_paths("--target=/data", &mounts), "--target=/local/pvc");
    assert_eq!(map_paths("/etc/berth/s3-ca/ca.crt", &mounts), "/local/ca/ca.crt");
    assert_eq!(map_paths("/database", &mounts), "/database");
    assert_eq!(map_paths("s3://backups/data", &mounts), "s3://backups/data");
}

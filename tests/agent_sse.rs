//! S3 server-side encryption (`storage.serverSideEncryption`) on every object write, through
//! a recording proxy in front of a real S3-compatible server (s3s-fs, which ignores the
//! headers): the `berth agent` binary (init, backups with multipart packs, prune, locks),
//! the operator's repository code (init, Kubernetes export, manifest, lock) and offsite
//! replication, each with the settings built from a `StorageLocation` as the operator and
//! the Job builder build them. `check` reads the encryption back and reports objects without it.

use crate::agent_support;
use crate::support;

use std::sync::Arc;

use agent_support::{Agent, agent_command, pseudo_random};
use berth::api::backuppolicy::{ServerSideEncryptionSettings, ServerSideEncryptionType, StorageLocation};
use berth::backup::replicate::{ReplicateOptions, replicate};
use berth::backup::{Repository, Storage, StorageConfig, WriterStats, lock::RepoLock, ops, resources};
use berth::controllers::repository;
use support::s3_recorder::{Recorded, S3Recorder};
use support::servers::S3Server;

const KMS_KEY: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";
const KMS_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// Asserts that every object-writing request carried exactly `algorithm` (and `key`), and
/// returns how many of each operation there were.
fn assert_all_writes_encrypted(requests: &[Recorded], algorithm: &str, key: Option<&str>) -> Vec<&'static str> {
    let writes: Vec<&Recorded> = requests.iter().filter(|r| r.writes_object()).collect();
    assert!(!writes.is_empty(), "no object was written: {requests:?}");
    for w in &writes {
        let what = format!("{} {} {}", w.operation(), w.path, w.query);
        assert_eq!(w.header("x-amz-server-side-encryption"), Some(algorithm), "{what}");
        assert_eq!(w.header("x-amz-server-side-encryption-aws-kms-key-id"), key, "{what}");
    }
    writes.iter().map(|w| w.operation()).collect()
}

fn written_paths(requests: &[Recorded]) -> Vec<String> {
    requests.iter().filter(|r| r.writes_object()).map(|r| r.path.clone()).collect()
}

#[test]
fn agent_writes_carry_sse_kms_and_check_reports_objects_without_it() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    let recorder = S3Recorder::start(&s3.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("repo.key");
    std::fs::write(&key_file, "correct horse battery staple\n").unwrap();
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let agent = Agent {
        extra_env: vec![
            env("BERTH_S3_ENDPOINT", &recorder.endpoint),
            env("BERTH_S3_SSE", "aws:kms"),
            env("BERTH_S3_SSE_KMS_KEY_ID", KMS_KEY),
        ],
        s3,
        repo: "s3://backups/berth/test".into(),
        key_file,
        dir,
    };
    agent.ok(&["init"]);
    let src = agent.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 20 MB of incompressible data: a 16 MiB pack, above the 8 MiB part size (multipart).
    std::fs::write(src.join("big.bin"), pseudo_random(1, 20_000_000)).unwrap();
    std::fs::write(src.join("small.txt"), b"hello\n").unwrap();
    agent.ok(&["backup-dir", src.to_str().unwrap()]);
    std::fs::write(src.join("big.bin"), pseudo_random(2, 20_000_000)).unwrap();
    agent.ok(&["backup-dir", src.to_str().unwrap()]);
    agent.ok(&["forget", "--keep-last", "1", "--prune"]);

    let requests = recorder.requests();
    let ops = assert_all_writes_encrypted(&requests, "aws:kms", Some(KMS_KEY));
    assert!(ops.contains(&"CreateMultipartUpload") && ops.contains(&"PutObject"), "{ops:?}");
    assert!(requests.iter().filter(|r| r.operation() == "UploadPart").count() >= 2);
    let paths = written_paths(&requests);
    for kind in ["/config", "/keys/", "/locks/", "/index/", "/snapshots/", "/data/"] {
        assert!(paths.iter().any(|p| p.contains(kind)), "no write below {kind}: {paths:?}");
    }

    // Read back: the bucket reports the key as an ARN for every object, so check is clean.
    recorder.stamp_encryption("aws:kms", Some(KMS_ARN));
    let out = agent.ok(&["check"]);
    assert!(out.contains("server-side encryption of") && out.contains("no errors"), "{out}");
    let report = agent.json(&["check"]);
    let checked = report["encryptionChecked"].as_u64().unwrap();
    assert!(checked >= 6, "{report}");

    // One snapshot stored without encryption: check names it and fails.
    let snapshot = agent_support::files_below(&agent.repo_dir().join("snapshots")).remove(0);
    let snapshot = snapshot.strip_prefix(agent.repo_dir()).unwrap().to_str().unwrap().to_string();
    recorder.unstamp(&snapshot);
    let err = agent.fails(&["check"]);
    assert!(
        err.contains(&format!(
            "object {snapshot}: stored with no server-side encryption, expected aws:kms with key {KMS_KEY}"
        )),
        "{err}"
    );
    assert_eq!(err.matches("error: object").count(), 1, "{err}");

    // Another key than the configured one is reported for every object.
    recorder.stamp_encryption("aws:kms", Some("arn:aws:kms:us-east-1:111122223333:key/other"));
    let err = agent.fails(&["check"]);
    assert!(err.contains("stored with aws:kms with key arn:aws:kms:us-east-1:111122223333:key/other"), "{err}");
    assert!(err.matches("error: object").count() as u64 >= checked, "{err}");
}

#[test]
fn agent_refuses_inconsistent_sse_settings_before_any_request() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("BERTH_S3_SSE", "aws:kms")], "--sse (BERTH_S3_SSE): server-side encryption aws:kms needs a KMS key id"),
        (
            &[("BERTH_S3_SSE", "AES256"), ("BERTH_S3_SSE_KMS_KEY_ID", "k")],
            "a KMS key id goes only with server-side encryption aws:kms",
        ),
        (&[("BERTH_S3_SSE", "aes256")], "\"aes256\" is not supported; use \"aws:kms\""),
        (&[("BERTH_S3_SSE_KMS_KEY_ID", "k")], "--sse-kms-key-id (BERTH_S3_SSE_KMS_KEY_ID) needs --sse aws:kms"),
    ];
    for (env, message) in cases {
        let o = agent_command()
            .args(["snapshots", "--repo", "s3://backups/x", "--endpoint", "http://127.0.0.1:9", "--insecure-http"])
            .env("BERTH_REPOSITORY_KEY", "k")
            .env_remove("BERTH_S3_SSE")
            .env_remove("BERTH_S3_SSE_KMS_KEY_ID")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(message), "{env:?}: {err}");
    }
}

fn location(bucket: &str, endpoint: &str, sse: ServerSideEncryptionSettings) -> StorageLocation {
    StorageLocation {
        bucket: bucket.into(),
        prefix: Some("team-a".into()),
        endpoint: Some(endpoint.into()),
        insecure_http: true,
        force_path_style: true,
        encryption_key_secret: "repo-key".into(),
        server_side_encryption: Some(sse),
        ..StorageLocation::default()
    }
}

/// The operator's settings of `location` (credentials as from its Secret).
async fn connect(s3: &S3Server, location: &StorageLocation, field: &'static str) -> Storage {
    let mut config = repository::s3_settings(location, field).unwrap();
    config.region = Some(s3.region.clone());
    config.access_key_id = Some(s3.access_key.clone());
    config.secret_access_key = Some(s3.secret_key.clone());
    Storage::connect(&StorageConfig::S3(config)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_offsite_replication_writes_carry_each_locations_encryption() {
    let s3 = S3Server::start();
    s3.create_bucket("backups");
    s3.create_bucket("offsite");
    let recorder = S3Recorder::start(&s3.endpoint);
    let kms =
        ServerSideEncryptionSettings { type_: ServerSideEncryptionType::AwsKms, kms_key_id: Some(KMS_ARN.into()) };
    let aes = ServerSideEncryptionSettings { type_: ServerSideEncryptionType::Aes256, kms_key_id: None };
    let primary = connect(&s3, &location("backups", &recorder.endpoint, kms), "spec.storage").await;
    let offsite = connect(&s3, &location("offsite", &recorder.endpoint, aes), "spec.offsite").await;

    // What the operator writes: the repository (on an empty location), a Backup's Kubernetes
    // export and manifest under a lock; a backup with a multipart pack, as a Job adds.
    let repo = Repository::init(primary, b"operator-key").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("big.bin"), pseudo_random(3, 20_000_000)).unwrap();
    ops::backup_directory(&repo, data.path(), vec![], Arc::new(WriterStats::default()), None).await.unwrap();
    let lock = RepoLock::acquire(&repo, false, "backup").await.unwrap();
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "shop"}, "data": {"a": "b"}});
    resources::store_objects(&repo, "nightly-1", vec!["shop".into()], &[cm], vec![]).await.unwrap();
    lock.release().await.unwrap();
    let requests = recorder.requests();
    let ops = assert_all_writes_encrypted(&requests, "aws:kms", Some(KMS_ARN));
    assert!(ops.contains(&"CreateMultipartUpload"), "{ops:?}");
    let paths = written_paths(&requests);
    for kind in ["/backups/team-a/config", "/backups/team-a/backups/nightly-1/", "/backups/team-a/locks/"] {
        assert!(paths.iter().any(|p| p.starts_with(kind)), "no write below {kind}: {paths:?}");
    }

    // Offsite replication writes with the offsite location's encryption (packs included).
    recorder.clear();
    let opts = ReplicateOptions { lock_source: false, ..ReplicateOptions::default() };
    let report = replicate(&repo, &offsite, opts).await.unwrap();
    assert!(report.copied >= 5, "{report:?}");
    let requests = recorder.requests();
    let ops = assert_all_writes_encrypted(&requests, "AES256", None);
    assert!(ops.contains(&"CreateMultipartUpload"), "{ops:?}");
    assert!(written_paths(&requests).iter().all(|p| p.starts_with("/offsite/team-a/")));
}

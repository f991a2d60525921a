use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

use super::*;

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "berth.dev/v1alpha1".into(),
        kind: "Backup".into(),
        name: "nightly-20261122".into(),
        uid: "2c4e6a1e-0000-4000-8000-000000000001".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn storage() -> StorageLocation {
    StorageLocation {
        bucket: "backups".into(),
        prefix: Some("/team-a/".into()),
        region: Some("eu-west-1".into()),
        endpoint: Some("https://s3.example.test".into()),
        insecure_http: false,
        force_path_style: true,
        credentials_secret: Some("s3-creds".into()),
        ca_secret: Some("s3-ca".into()),
        encryption_key_secret: "repo-key".into(),
        server_side_encryption: None,
    }
}

fn build(task: &AgentTask, storage: &StorageLocation, node: Option<&str>) -> Job {
    let owner = owner();
    let settings = JobSettings {
        owner: &owner,
        namespace: "team-a",
        name: "nightly-20261122-db-1",
        image: "ghcr.io/berth/berth:1.2.3",
        storage,
        tags: vec!["backup=nightly-20261122".into(), "policy=nightly".into()],
        consumer: node.map(|n| VolumeConsumer { node_name: Some(n.into()), ..VolumeConsumer::default() }),
        deadline_seconds: 3600,
        backoff_limit: 2,
        service_account: Some("berth-backup"),
    };
    agent_job(task, &settings)
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container(job: &Job) -> &Container {
    let p = pod(job);
    assert_eq!(p.containers.len(), 1);
    &p.containers[0]
}

/// Env as name → literal value or `secret:<name>/<key>`.
fn env(job: &Job) -> BTreeMap<String, String> {
    container(job)
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(src)) => {
                    let r = src.secret_key_ref.as_ref().expect("only secretKeyRef sources");
                    assert_eq!(r.optional, Some(false), "{}", e.name);
                    format!("secret:{}/{}", r.name, r.key)
                }
                other => panic!("env {} has {other:?}", e.name),
            };
            (e.name.clone(), v)
        })
        .collect()
}

/// Mounts as path → (volume, read-only).
fn mounts(job: &Job) -> BTreeMap<String, (String, bool)> {
    container(job)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.clone(), (m.name.clone(), m.read_only.unwrap_or(false))))
        .collect()
}

fn volume<'a>(job: &'a Job, name: &str) -> &'a Volume {
    pod(job).volumes.as_ref().unwrap().iter().find(|v| v.name == name).unwrap_or_else(|| panic!("volume {name}"))
}

fn args(job: &Job) -> Vec<&str> {
    container(job).args.as_ref().unwrap().iter().map(String::as_str).collect()
}

/// What every agent Job has, whatever the task.
fn assert_common(job: &Job, task: &str, target: &str) {
    let meta = &job.metadata;
    assert_eq!(meta.name.as_deref(), Some("nightly-20261122-db-1"));
    assert_eq!(meta.namespace.as_deref(), Some("team-a"));
    assert_eq!(meta.owner_references.as_deref(), Some(&[owner()][..]));

    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    assert_eq!(spec.backoff_limit, Some(2));
    assert_eq!(spec.ttl_seconds_after_finished, Some(86_400));
    assert_eq!(spec.completions, Some(1));

    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(spec.template.metadata.as_ref().unwrap().labels.as_ref(), Some(labels));
    assert_eq!(labels["berth.dev/role"], "backup", "admitted by the database NetworkPolicy");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "berth");
    assert_eq!(labels["app.kubernetes.io/part-of"], "berth");
    assert_eq!(labels["app.kubernetes.io/instance"], "nightly-20261122");
    assert_eq!(labels["app.kubernetes.io/component"], COMPONENT);
    assert_eq!(labels["berth.dev/backup"], "nightly-20261122");
    assert_eq!(labels[TASK_LABEL], task);
    assert_eq!(labels[TARGET_LABEL], target);

    let p = pod(job);
    assert_eq!(p.restart_policy.as_deref(), Some("Never"));
    assert_eq!(p.automount_service_account_token, Some(false));
    assert_eq!(p.service_account_name.as_deref(), Some("berth-backup"), "the pod runs as the policy's account");
    let psc = p.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(AGENT_UID));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    if task != "restore-volume" {
        assert_eq!(psc.fs_group, None, "an fsGroup would re-own the files of a backed-up PVC");
    }

    let c = container(job);
    assert_eq!(c.name, CONTAINER_NAME);
    assert_eq!(c.image.as_deref(), Some("ghcr.io/berth/berth:1.2.3"));
    assert_eq!(c.command.as_deref(), Some(&["berth".to_string()][..]));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.as_ref().unwrap().contains_key("memory"));
    assert!(res.limits.as_ref().unwrap().contains_key("memory"));

    // Repository.
    let e = env(job);
    assert_eq!(e["BERTH_REPOSITORY"], "s3://backups/team-a");
    assert_eq!(e["BERTH_S3_ENDPOINT"], "https://s3.example.test");
    assert_eq!(e["BERTH_S3_REGION"], "eu-west-1");
    assert!(!e.contains_key("BERTH_S3_VIRTUAL_HOSTED"), "forcePathStyle is the agent's default");
    assert_eq!(e["AWS_ACCESS_KEY_ID"], "secret:s3-creds/AWS_ACCESS_KEY_ID");
    assert_eq!(e["AWS_SECRET_ACCESS_KEY"], "secret:s3-creds/AWS_SECRET_ACCESS_KEY");
    assert_eq!(e["BERTH_REPOSITORY_KEY_FILE"], "/etc/berth/repository-key/key");
    assert_eq!(e["BERTH_S3_CA_FILE"], "/etc/berth/s3-ca/ca.crt");
    assert_eq!(e["HOME"], "/tmp");
    assert!(!e.contains_key("BERTH_REPOSITORY_KEY"), "the key never travels in the environment");

    // Mounts: scratch, key and CA.
    let m = mounts(job);
    assert_eq!(m["/tmp"], (TMP_VOLUME.to_string(), false));
    assert_eq!(m["/etc/berth/repository-key"], (KEY_VOLUME.to_string(), true));
    assert_eq!(m["/etc/berth/s3-ca"], (CA_VOLUME.to_string(), true));
    assert!(volume(job, TMP_VOLUME).empty_dir.is_some());
    let key = volume(job, KEY_VOLUME).secret.as_ref().unwrap();
    assert_eq!(key.secret_name.as_deref(), Some("repo-key"));
    assert_eq!(key.items.as_ref().unwrap()[0].key, "key");
    assert_eq!(key.items.as_ref().unwrap()[0].path, "key");
    let ca = volume(job, CA_VOLUME).secret.as_ref().unwrap();
    assert_eq!(ca.secret_name.as_deref(), Some("s3-ca"));
    assert_eq!(ca.items.as_ref().unwrap()[0].key, "ca.crt");
}

fn assert_postgres_env(job: &Job) {
    let e = env(job);
    assert_eq!(e["PGHOST"], "secret:db-credentials/host");
    assert_eq!(e["PGPORT"], "secret:db-credentials/port");
    assert_eq!(e["PGUSER"], "secret:db-credentials/username");
    assert_eq!(e["PGPASSWORD"], "secret:db-credentials/password");
    assert!(!e.keys().any(|k| k.starts_with("BERTH_RABBITMQ")), "{e:?}");
    assert!(!mounts(job).contains_key(DATA_MOUNT_PATH));
    assert!(pod(job).affinity.is_none());
}

fn assert_rabbitmq_env(job: &Job) {
    let e = env(job);
    assert_eq!(e["BERTH_RABBITMQ_HOST"], "secret:mq-credentials/host");
    assert_eq!(e["BERTH_RABBITMQ_URL"], "http://$(BERTH_RABBITMQ_HOST):15672");
    assert_eq!(e["BERTH_RABBITMQ_USER"], "secret:mq-credentials/username");
    assert_eq!(e["BERTH_RABBITMQ_PASSWORD"], "secret:mq-credentials/password");
    assert!(!e.keys().any(|k| k.starts_with("PG")), "{e:?}");
    // `$(VAR)` only expands variables defined before it.
    let names: Vec<&str> = container(job).env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("BERTH_RABBITMQ_HOST") < pos("BERTH_RABBITMQ_URL"));
    assert!(!mounts(job).contains_key(DATA_MOUNT_PATH));
}

#[test]
fn backup_postgres() {
    let job = build(&AgentTask::BackupPostgres { instance: "db".into() }, &storage(), None);
    assert_common(&job, "backup-postgres", "db");
    assert_eq!(args(&job), ["agent", "backup-postgres", "--tag=backup=nightly-20261122", "--tag=policy=nightly"]);
    assert_postgres_env(&job);
}

#[test]
fn backup_rabbitmq() {
    let job = build(&AgentTask::BackupRabbitmq { instance: "mq".into() }, &storage(), None);
    assert_common(&job, "backup-rabbitmq", "mq");
    assert_eq!(args(&job), ["agent", "backup-rabbitmq", "--tag=backup=nightly-20261122", "--tag=policy=nightly"]);
    assert_rabbitmq_env(&job);
}

#[test]
fn backup_volume_is_read_only_and_on_the_users_node() {
    let job = build(&AgentTask::BackupVolume { pvc: "uploads".into() }, &storage(), Some("node-7"));
    assert_common(&job, "backup-volume", "uploads");
    assert_eq!(args(&job), ["agent", "backup-dir", "/data", "--tag=backup=nightly-20261122", "--tag=policy=nightly"]);
    assert_eq!(mounts(&job)["/data"], (DATA_VOLUME.to_string(), true));
    let pvc = volume(&job, DATA_VOLUME).persistent_volume_claim.as_ref().unwrap();
    assert_eq!(pvc.claim_name, "uploads");
    assert_eq!(pvc.read_only, Some(true));
    let e = env(&job);
    assert!(!e.keys().any(|k| k.starts_with("PG") || k.starts_with("BERTH_RABBITMQ")), "{e:?}");
    let terms = &pod(&job)
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    let field = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!((field.key.as_str(), field.operator.as_str()), ("metadata.name", "In"));
    assert_eq!(field.values.as_deref(), Some(&["node-7".to_string()][..]));
}

#[test]
fn restore_postgres() {
    let task = AgentTask::RestorePostgres { instance: "db".into(), snapshot: "3fa9c2d1".into() };
    let job = build(&task, &storage(), None);
    assert_common(&job, "restore-postgres", "db");
    assert_eq!(args(&job), ["agent", "restore", "3fa9c2d1"], "no tags on a restore");
    assert_postgres_env(&job);
}

#[test]
fn restore_rabbitmq() {
    let task = AgentTask::RestoreRabbitmq { instance: "mq".into(), snapshot: "latest".into() };
    let job = build(&task, &storage(), None);
    assert_common(&job, "restore-rabbitmq", "mq");
    assert_eq!(args(&job), ["agent", "restore", "latest"]);
    assert_rabbitmq_env(&job);
}

#[test]
fn restore_volume_is_writable() {
    let task = AgentTask::RestoreVolume { pvc: "uploads".into(), snapshot: "3fa9c2d1".into() };
    let job = build(&task, &storage(), Some("node-2"));
    assert_common(&job, "restore-volume", "uploads");
    assert_eq!(args(&job), ["agent", "restore", "3fa9c2d1", "--target", "/data"]);
    assert_eq!(mounts(&job)["/data"], (DATA_VOLUME.to_string(), false));
    assert_eq!(volume(&job, DATA_VOLUME).persistent_volume_claim.as_ref().unwrap().read_only, Some(false));
    assert!(pod(&job).affinity.is_some());
    // No pod mounts it: the agent's own group, applied by the kubelet, lets it write there.
    let psc = pod(&job).security_context.as_ref().unwrap();
    assert_eq!((psc.run_as_user, psc.fs_group), (Some(AGENT_UID), Some(AGENT_UID)));
    assert_eq!(psc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
}

#[test]
fn count_volume_reads_only_and_passes_the_recorded_figures() {
    let recorded = crate::backup::census::Census { files: 12, dirs: 3, bytes: 4096 };
    let task = AgentTask::CountVolume { pvc: "uploads".into(), recorded };
    let job = build(&task, &storage(), None);
    assert_common(&job, "count-volume", "uploads");
    assert_eq!(args(&job), ["agent", "count-dir", "/data", "--files=12", "--dirs=3", "--bytes=4096"]);
    assert_eq!(mounts(&job)["/data"], (DATA_VOLUME.to_string(), true));
    assert_eq!(volume(&job, DATA_VOLUME).persistent_volume_claim.as_ref().unwrap().read_only, Some(true));
}

/// A running pod mounting `claim` as `user` (container level) with the pod's `fs_group`.
fn consumer_pod(claim: &str, phase: &str, user: Option<i64>, fs_group: Option<i64>) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-0"},
        "spec": {
            "nodeName": "node-7",
            "securityContext": {"runAsUser": 999, "fsGroup": fs_group, "supplementalGroups": [0, 3000]},
            "containers": [
                {"name": "sidecar", "securityContext": {"runAsUser": 5}},
                {"name": "web", "securityContext": {"runAsUser": user, "runAsGroup": 1001},
                 "volumeMounts": [{"name": "data", "mountPath": "/srv"}]}
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        },
        "status": {"phase": phase}
    }))
    .unwrap()
}

#[test]
fn volume_consumer_is_the_running_pod_and_container_that_mount_the_claim() {
    let pods = [
        consumer_pod("other", "Running", Some(1), None),
        consumer_pod("uploads", "Pending", Some(2), None),
        consumer_pod("uploads", "Running", Some(1000), Some(2000)),
    ];
    let consumer = volume_consumer(&pods, "uploads").unwrap();
    assert_eq!(
        consumer,
        VolumeConsumer {
            node_name: Some("node-7".into()),
            run_as_user: Some(1000),
            run_as_group: Some(1001),
            fs_group: Some(2000),
            supplemental_groups: vec![3000],
        },
        "root's group is never taken over"
    );
    assert_eq!(volume_consumer(&pods[..2], "uploads"), None, "a pending pod mounts nothing yet");
    // The pod-level user counts when the mounting container sets none; root is never taken.
    let pod_level = volume_consumer(&[consumer_pod("uploads", "Running", None, Some(0))], "uploads").unwrap();
    assert_eq!((pod_level.run_as_user, pod_level.fs_group), (Some(999), None));
}

#[test]
fn volume_jobs_run_as_the_consumer() {
    let owner = owner();
    let storage = storage();
    let consumer = VolumeConsumer {
        node_name: Some("node-7".into()),
        run_as_user: Some(1000),
        run_as_group: Some(1001),
        fs_group: Some(2000),
        supplemental_groups: vec![3000],
    };
    for task in [
        AgentTask::BackupVolume { pvc: "uploads".into() },
        AgentTask::RestoreVolume { pvc: "uploads".into(), snapshot: "3fa9c2d1".into() },
    ] {
        let settings = JobSettings {
            owner: &owner,
            namespace: "team-a",
            name: "files",
            image: "berth:1",
            storage: &storage,
            tags: Vec::new(),
            consumer: Some(consumer.clone()),
            deadline_seconds: 3600,
            backoff_limit: 2,
            service_account: None,
        };
        let job = agent_job(&task, &settings);
        let psc = pod(&job).security_context.as_ref().unwrap();
        assert_eq!((psc.run_as_user, psc.run_as_group, psc.fs_group), (Some(1000), Some(1001), Some(2000)));
        assert_eq!(psc.supplemental_groups, Some(vec![3000]));
        assert_eq!(psc.run_as_non_root, Some(true));
        assert!(serde_json::to_string(&pod(&job).affinity).unwrap().contains("node-7"));
    }
}

#[test]
fn minimal_storage_location() {
    let minimal = StorageLocation {
        bucket: "backups".into(),
        encryption_key_secret: "repo-key".into(),
        ..StorageLocation::default()
    };
    let job = build(&AgentTask::BackupPostgres { instance: "db".into() }, &minimal, None);
    let e = env(&job);
    assert_eq!(e["BERTH_REPOSITORY"], "s3://backups");
    assert_eq!(e["BERTH_S3_VIRTUAL_HOSTED"], "true", "AWS without forcePathStyle: virtual-hosted");
    for absent in [
        "BERTH_S3_ENDPOINT",
        "BERTH_S3_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "BERTH_S3_CA_FILE",
        "BERTH_S3_INSECURE_HTTP",
    ] {
        assert!(!e.contains_key(absent), "{absent}: {e:?}");
    }
    // The plain-HTTP opt-in reaches the agent, which refuses http:// without it.
    let http = StorageLocation {
        endpoint: Some("http://minio.backup.svc:9000".into()),
        insecure_http: true,
        ..minimal.clone()
    };
    let e = env(&build(&AgentTask::BackupPostgres { instance: "db".into() }, &http, None));
    assert_eq!(e["BERTH_S3_INSECURE_HTTP"], "true");
    // Server-side encryption reaches the agent, which sends it on every write.
    let kms = StorageLocation {
        server_side_encryption: Some(crate::api::backuppolicy::ServerSideEncryptionSettings {
            type_: crate::api::backuppolicy::ServerSideEncryptionType::AwsKms,
            kms_key_id: Some("alias/backups".into()),
        }),
        ..minimal.clone()
    };
    let e = env(&build(&AgentTask::BackupPostgres { instance: "db".into() }, &kms, None));
    assert_eq!((e["BERTH_S3_SSE"].as_str(), e["BERTH_S3_SSE_KMS_KEY_ID"].as_str()), ("aws:kms", "alias/backups"));
    assert!(!env(&job).contains_key("BERTH_S3_SSE"));
    assert!(!mounts(&job).contains_key(CA_MOUNT_PATH));
    assert!(pod(&job).volumes.as_ref().unwrap().iter().all(|v| v.name != CA_VOLUME));
    assert_eq!(e["BERTH_REPOSITORY_KEY_FILE"], KEY_FILE_PATH);
}

#[test]
fn path_constants_agree() {
    assert_eq!(KEY_FILE_PATH, format!("{KEY_MOUNT_PATH}/{KEY_SECRET_KEY}"));
    assert_eq!(CA_FILE_PATH, format!("{CA_MOUNT_PATH}/{CA_SECRET_KEY}"));
    assert_eq!(
        repository_url(&StorageLocation { bucket: "b".into(), prefix: Some("a/b".into()), ..Default::default() }),
        "s3://b/a/b"
    );
}

#[test]
fn long_owner_names_give_valid_label_values() {
    let mut o = owner();
    o.name = format!("{}-x", "n".repeat(80));
    let labels = job_labels(&AgentTask::BackupVolume { pvc: "p".into() }, &o);
    assert!(labels.values().all(|v| v.len() <= 63), "{labels:?}");
}

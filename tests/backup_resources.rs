//! The library API the Backup controller uses: Kubernetes objects in the Velero-style layout
//! and retention, against a real S3-compatible server.

use crate::support;

use berth::backup::{Repository, RetentionPolicy, S3Config, Storage, StorageConfig, archiver, ops, resources};
use support::servers::S3Server;

async fn repo(s3: &S3Server, prefix: &str, init: bool) -> Result<Repository, berth::backup::BackupError> {
    let cfg = StorageConfig::S3(S3Config {
        bucket: "velero".into(),
        prefix: prefix.into(),
        endpoint: Some(s3.endpoint.clone()),
        insecure_http: true,
        region: Some(s3.region.clone()),
        path_style: true,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        ..Default::default()
    });
    let storage = Storage::connect(&cfg).await?;
    if init { Repository::init(storage, b"k8s-key").await } else { Repository::open(storage, b"k8s-key").await }
}

fn objects(replicas: u32) -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"replicas": replicas}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "shop"}, "data": {"password": "c2VjcmV0"}}),
        serde_json::json!({"apiVersion": "berth.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": "orders", "namespace": "shop"}, "spec": {"engine": "postgres"}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_objects_roundtrip_and_discovery() {
    let s3 = S3Server::start();
    s3.create_bucket("velero");
    let r = repo(&s3, "cluster-a", true).await.unwrap();
    let m1 = resources::store_objects(&r, "nightly-1", vec!["shop".into()], &objects(2), vec![]).await.unwrap();
    assert_eq!(m1.format_version, resources::MANIFEST_VERSION);
    assert_eq!(m1.counts["apps/Deployment"], 1);
    assert_eq!(m1.resources.len(), 4);

    // The manifest is plain, readable JSON in the bucket; the Secret is not stored in clear.
    let manifest_path = s3.root().join("velero/cluster-a/backups/nightly-1/backup.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    assert!(
        text.contains("\"formatVersion\": 1") && text.contains("resources/apps/Deployment/namespaces/shop/web.json"),
        "{text}"
    );
    for f in walk(&s3.root().join("velero/cluster-a")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"c2VjcmV0"), "secret in clear in {}", f.display());
    }

    // A fresh process (a new cluster) finds and reads the backup.
    let r2 = repo(&s3, "cluster-a", false).await.unwrap();
    resources::store_objects(&r2, "nightly-2", vec!["shop".into()], &objects(3), vec![]).await.unwrap();
    let found = resources::list_manifests(&r2).await.unwrap();
    assert_eq!(found.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["nightly-1", "nightly-2"]);
    let (_, back) = resources::load_objects(&r2, "nightly-1").await.unwrap();
    let mut want = objects(2);
    want.sort_by_key(|o| resources::object_path(o).unwrap().1);
    assert_eq!(back, want);
    let (_, back2) = resources::load_objects(&r2, "nightly-2").await.unwrap();
    assert!(back2.iter().any(|o| o["spec"]["replicas"] == 3));

    // Restoring the snapshot to a directory yields the Velero-style tree.
    let snap_id = berth::backup::Id::from_hex(&m1.snapshots[0].snapshot).unwrap();
    let snap = r2.load_snapshot(&snap_id).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    archiver::restore_dir(&r2, &snap.root, dir.path(), 4, &|_| {}).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("resources/core/Secret/namespaces/shop/db.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["data"]["password"], "c2VjcmV0");
    assert!(dir.path().join("resources/core/Namespace/cluster/shop.json").is_file());

    // Retention keeps the newest of each series; prune and check stay clean.
    let (report, _) = ops::forget(&r2, &RetentionPolicy { keep_last: 1, ..Default::default() }, false).await.unwrap();
    // Each backup is its own series (source = backup name), so nothing is removed.
    assert!(report.removed.is_empty(), "{report:?}");
    ops::prune(&r2, ops::PruneOptions::default()).await.unwrap();
    let check = ops::check(&r2, true).await.unwrap();
    assert!(check.ok(), "{check:?}");

    // A wrong key is refused.
    let storage = Storage::connect(&StorageConfig::S3(S3Config {
        bucket: "velero".into(),
        prefix: "cluster-a".into(),
        endpoint: Some(s3.endpoint.clone()),
        insecure_http: true,
        path_style: true,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let err = Repository::open(storage, b"other").await.unwrap_err();
    assert!(matches!(err, berth::backup::BackupError::WrongKey { .. }), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

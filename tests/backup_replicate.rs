//! Offsite replication between two real S3-compatible servers (`s3s-fs` in-process): the
//! replica opens with the same key and restores; a second run copies nothing; retention at the
//! source is mirrored with `delete_extraneous`; an empty, partial or foreign source is refused
//! without touching the replica.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth::backup::replicate::{ReplicateOptions, replicate};
use berth::backup::{
    BackupError, Repository, RetentionPolicy, S3Config, Storage, StorageConfig, WriteOptions, WriterStats, archiver,
    ops, resources,
};
use support::servers::S3Server;

const KEY: &[u8] = b"offsite-key";

async fn storage(s3: &S3Server, bucket: &str, prefix: &str) -> Storage {
    Storage::connect(&StorageConfig::S3(S3Config {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(s3.endpoint.clone()),
        insecure_http: true,
        region: Some(s3.region.clone()),
        path_style: true,
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(s3.secret_key.clone()),
        ..Default::default()
    }))
    .await
    .unwrap()
}

/// Every object of a repository location (locks included), key → size.
async fn objects(s: &Storage) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for dir in ["data", "index", "snapshots", "keys", "backups", "locks"] {
        for o in s.list(dir).await.unwrap() {
            out.insert(format!("{dir}/{}", o.name), o.size);
        }
    }
    if let Some(size) = s.head("config").await.unwrap() {
        out.insert("config".into(), size);
    }
    out
}

fn under<'a>(objs: &'a BTreeMap<String, u64>, dir: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    objs.keys().filter(move |k| k.starts_with(dir))
}

/// Deterministic, incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn read_tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Restores the newest `dir` snapshot of `repo` and returns the files.
async fn restore_newest(repo: &Repository) -> BTreeMap<PathBuf, Vec<u8>> {
    let (_, snap) =
        repo.list_snapshots().await.unwrap().into_iter().rfind(|(_, s)| s.kind == "dir").expect("a dir snapshot");
    let out = tempfile::tempdir().unwrap();
    archiver::restore_dir(repo, &snap.root, out.path(), 4, &|_| {}).await.unwrap();
    read_tree(out.path())
}

fn opts(delete_extraneous: bool) -> ReplicateOptions {
    // Small concurrency and budget so that the bounds are exercised with several packs.
    ReplicateOptions { delete_extraneous, concurrency: 3, memory_budget: 1024 * 1024, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_restore_prune_and_refuse() {
    let (s3a, s3b) = (S3Server::start(), S3Server::start());
    s3a.create_bucket("primary");
    s3b.create_bucket("offsite");
    let a = storage(&s3a, "primary", "prod").await;
    let b = storage(&s3b, "offsite", "prod-copy").await;

    // Two backups of a changing directory (small packs, so that there are many objects).
    let mut ra = Repository::init(a.clone(), KEY).await.unwrap();
    ra.set_write_options(WriteOptions { pack_size: 256 * 1024, ..Default::default() });
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("sub")).unwrap();
    std::fs::write(src.path().join("big.bin"), noise(1, 3 * 1024 * 1024)).unwrap();
    std::fs::write(src.path().join("sub/notes.txt"), b"first version\n").unwrap();
    std::fs::write(src.path().join("gone.bin"), noise(2, 600 * 1024)).unwrap();
    ops::backup_directory(&ra, src.path(), vec![], Arc::new(WriterStats::default()), None).await.unwrap();
    std::fs::write(src.path().join("sub/notes.txt"), b"second version, longer\n").unwrap();
    std::fs::write(src.path().join("sub/new.bin"), noise(3, 700 * 1024)).unwrap();
    std::fs::remove_file(src.path().join("gone.bin")).unwrap();
    ops::backup_directory(&ra, src.path(), vec![], Arc::new(WriterStats::default()), None).await.unwrap();
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
    resources::store_objects(&ra, "nightly-1", vec!["shop".into()], std::slice::from_ref(&ns), vec![]).await.unwrap();
    let want = read_tree(src.path());

    // First replication copies everything but locks.
    let at_a = objects(&a).await;
    assert!(under(&at_a, "data/").count() > 3, "expected several packs: {at_a:?}");
    let r1 = replicate(&ra, &b, opts(false)).await.unwrap();
    assert_eq!((r1.copied, r1.skipped, r1.deleted, r1.vanished), (at_a.len(), 0, 0, 0), "{r1:?}");
    assert_eq!(r1.bytes, at_a.values().sum::<u64>());
    assert_eq!(objects(&b).await, at_a);
    assert!(under(&objects(&a).await, "locks/").next().is_none(), "the source lock is released");

    // The replica is the same repository: same key, same snapshots, same files.
    let rb = Repository::open(b.clone(), KEY).await.unwrap();
    assert_eq!(rb.config(), ra.config());
    assert_eq!(restore_newest(&rb).await, want);
    let (_, back) = resources::load_objects(&rb, "nightly-1").await.unwrap();
    assert_eq!(back, vec![ns.clone()]);

    // Nothing changed: nothing copied.
    let r2 = replicate(&ra, &b, opts(false)).await.unwrap();
    assert_eq!((r2.copied, r2.bytes, r2.skipped, r2.deleted), (0, 0, at_a.len(), 0), "{r2:?}");

    // Retention at the source; without delete_extraneous the replica keeps everything.
    let (forgot, _) = ops::forget(&ra, &RetentionPolicy { keep_last: 1, ..Default::default() }, false).await.unwrap();
    assert_eq!(forgot.removed.len(), 1, "{forgot:?}");
    let pruned = ops::prune(&ra, ops::PruneOptions { repack_threshold: 0.0, dry_run: false }).await.unwrap();
    assert!(pruned.packs_deleted + pruned.packs_repacked > 0, "{pruned:?}");
    let after_prune = objects(&a).await;
    let before_b = objects(&b).await;
    let pruned_packs: Vec<&String> = under(&before_b, "data/").filter(|k| !after_prune.contains_key(*k)).collect();
    assert!(!pruned_packs.is_empty());
    let r3 = replicate(&ra, &b, opts(false)).await.unwrap();
    assert_eq!(r3.deleted, 0);
    assert!(r3.copied > 0, "the repacked data and new index are copied: {r3:?}");
    let union = objects(&b).await;
    assert!(before_b.keys().chain(after_prune.keys()).all(|k| union.contains_key(k)), "kept without deletion");

    // With delete_extraneous the replica mirrors the pruned source and is still sound.
    let r4 = replicate(&ra, &b, opts(true)).await.unwrap();
    assert_eq!(r4.copied, 0, "everything new was copied by the previous run: {r4:?}");
    let at_b = objects(&b).await;
    assert_eq!(at_b, after_prune);
    assert_eq!(r4.deleted, before_b.keys().filter(|k| !after_prune.contains_key(*k)).count());
    for k in &pruned_packs {
        assert!(!at_b.contains_key(*k), "{k} still at the replica");
    }
    let rb = Repository::open(b.clone(), KEY).await.unwrap();
    let check = ops::check(&rb, true).await.unwrap();
    assert!(check.ok() && check.warnings.is_empty(), "{check:?}");
    assert_eq!(check.snapshots, 2, "the newest dir snapshot and the Kubernetes one");
    assert_eq!(restore_newest(&rb).await, want);

    // Sources that must never wipe the replica; each is refused and B is untouched.
    let snapshot_of_b = objects(&b).await;
    // (The source is an open repository: one that does not open is never replicated.)
    let missing_prefix = storage(&s3a, "primary", "no-such-prefix").await;
    let err = Repository::open(missing_prefix, KEY).await.unwrap_err();
    assert!(matches!(err, BackupError::NotARepository(_)), "{err}");
    let missing_bucket = storage(&s3a, "no-such-bucket", "prod").await;
    let err = Repository::open(missing_bucket, KEY).await.unwrap_err();
    assert!(matches!(err, BackupError::NoSuchBucket { .. }), "{err}");
    // Only config and keys (a listing that lost the data): deletion refused, nothing copied.
    let partial = storage(&s3a, "primary", "partial").await;
    for k in under(&after_prune, "keys/").chain(["config".to_string()].iter()) {
        partial.put(k, a.get(k).await.unwrap()).await.unwrap();
    }
    let partial = Repository::open(partial, KEY).await.unwrap();
    let err = replicate(&partial, &b, opts(true)).await.unwrap_err();
    assert!(err.to_string().contains("no object under"), "{err}");
    // Another repository.
    let other = storage(&s3a, "primary", "other").await;
    let other = Repository::init(other, KEY).await.unwrap();
    let err = replicate(&other, &b, opts(true)).await.unwrap_err();
    assert!(err.to_string().contains("different repository"), "{err}");
    assert_eq!(objects(&b).await, snapshot_of_b);
}

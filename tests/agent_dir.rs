//! `berth agent backup-dir` / `restore` / `check` / `forget` / `prune` against a real
//! S3-compatible server (s3s-fs in-process).

use crate::agent_support;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use agent_support::{Agent, files_below, pseudo_random};
use berth::backup::lock::RepoLock;
use berth::backup::{Repository, S3Config, Storage, StorageConfig};

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    target: Option<Vec<u8>>,
}

/// Everything a restore must reproduce, keyed by relative path.
fn describe(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            out.insert(
                p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec(),
                Entry {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    content: ft.is_file().then(|| std::fs::read(&p).unwrap()),
                    target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                },
            );
        }
    }
    let m = std::fs::metadata(root).unwrap();
    out.insert(
        b".".to_vec(),
        Entry {
            kind: "root",
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            content: None,
            target: None,
        },
    );
    out
}

fn make_tree(root: &Path) {
    let is_root = unsafe { libc::geteuid() } == 0;
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("a/big.bin"), pseudo_random(1, 9 * 1024 * 1024 + 17)).unwrap();
    // From 16 MiB (8 maximum chunks) on, a file is read by the large-file threads with direct
    // I/O; the length ends off the 4 KiB alignment so that the tail is read buffered.
    std::fs::create_dir_all(root.join("volumes")).unwrap();
    std::fs::write(root.join("volumes/disk.img"), pseudo_random(2, 17 * 1024 * 1024 + 4099)).unwrap();
    std::fs::write(root.join("a/b/small.txt"), b"hello\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    // Highly compressible and internally repetitive.
    std::fs::write(root.join("a/b/c/log.txt"), "line of log text\n".repeat(200_000)).unwrap();
    // Same content twice: deduplicated.
    std::fs::write(root.join("a/copy.bin"), pseudo_random(1, 9 * 1024 * 1024 + 17)).unwrap();
    std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"non-UTF-8 name").unwrap();
    std::os::unix::fs::symlink("b/small.txt", root.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::set_permissions(root.join("a/b/small.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(root.join("a/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
    if is_root {
        std::os::unix::fs::chown(root.join("a/b/small.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("a/link"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::chown(root.join("empty-dir"), Some(1000), Some(1000)).unwrap();
    }
    let t = |s, ns| filetime::FileTime::from_unix_time(s, ns);
    filetime::set_file_mtime(root.join("a/big.bin"), t(1_600_000_000, 123_456_789)).unwrap();
    filetime::set_symlink_file_times(root.join("a/link"), t(1_500_000_000, 5), t(1_500_000_000, 5)).unwrap();
    filetime::set_file_mtime(root.join("empty-dir"), t(1_400_000_000, 0)).unwrap();
    filetime::set_file_mtime(root.join("a/b/c"), t(1_300_000_000, 999)).unwrap();
    filetime::set_file_mtime(root, t(1_200_000_000, 1)).unwrap();
}

#[test]
fn directory_roundtrip_incremental_and_retention() {
    let agent = Agent::new();
    let src = agent.dir.path().join("src");
    make_tree(&src);
    let before = describe(&src);

    let first = agent.json(&["backup-dir", src.to_str().unwrap(), "--tag", "t1"]);
    let s1 = &first["snapshot"]["summary"];
    let total = s1["bytesTotal"].as_u64().unwrap();
    let uploaded1 = s1["bytesUploaded"].as_u64().unwrap();
    assert!(total > 21_000_000, "{s1}");
    // The duplicate 9 MiB file and the repetitive log compress/deduplicate away.
    assert!(uploaded1 < total - 9_000_000, "{s1}");

    let out = agent.dir.path().join("restore1");
    agent.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(describe(&out), before, "restored tree differs");
    // A restore drill's count: the restored tree holds what the summary recorded, and one file
    // less is named with both counts.
    let recorded: Vec<String> = [("files", "files"), ("dirs", "dirs"), ("bytes", "bytesTotal")]
        .iter()
        .map(|(flag, field)| format!("--{flag}={}", s1[field].as_u64().unwrap()))
        .collect();
    let count = |dir: &Path| -> Vec<String> {
        let mut args = vec!["count-dir".to_string(), dir.to_str().unwrap().to_string()];
        args.extend(recorded.iter().cloned());
        args
    };
    let args = count(&out);
    let counted = agent.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(counted.contains("7 files, 6 directories"), "{counted}");
    let fewer = agent.dir.path().join("restore-fewer");
    agent.ok(&["restore", "latest", "--target", fewer.to_str().unwrap()]);
    std::fs::remove_file(fewer.join("a/b/small.txt")).unwrap();
    let args = count(&fewer);
    let stderr = agent.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stderr.contains("it holds 6 files, 6 directories"), "{stderr}");
    assert!(stderr.contains("the backup recorded 7 files, 6 directories"), "{stderr}");

    // Change one file slightly and add one: the second backup uploads little.
    let mut big = std::fs::read(src.join("a/big.bin")).unwrap();
    big[4_000_000..4_000_100].copy_from_slice(&[7u8; 100]);
    std::fs::write(src.join("a/big.bin"), &big).unwrap();
    let mut disk = std::fs::read(src.join("volumes/disk.img")).unwrap();
    disk[10_000_000..10_065_536].fill(9);
    std::fs::write(src.join("volumes/disk.img"), &disk).unwrap();
    std::fs::write(src.join("new.txt"), b"new file").unwrap();
    let second = agent.json(&["backup-dir", src.to_str().unwrap()]);
    let s2 = &second["snapshot"]["summary"];
    assert!(s2["filesUnchanged"].as_u64().unwrap() >= 4, "{s2}");
    assert!(s2["bytesUploaded"].as_u64().unwrap() < uploaded1 / 3, "incremental upload too large: {s2} vs {uploaded1}");
    let out2 = agent.dir.path().join("restore2");
    agent.ok(&["restore", "latest", "--target", out2.to_str().unwrap()]);
    assert_eq!(describe(&out2), describe(&src));

    // The first snapshot still restores the old state.
    let id1 = first["id"].as_str().unwrap();
    let out3 = agent.dir.path().join("restore3");
    agent.ok(&["restore", &id1[..10], "--target", out3.to_str().unwrap()]);
    assert_eq!(describe(&out3), before);

    // Restoring over an existing tree: longer files are cut to the snapshot's length, and a
    // symlink planted where the snapshot has a file is replaced, never written through.
    let outside = agent.dir.path().join("outside.txt");
    std::fs::write(&outside, b"must stay").unwrap();
    std::fs::remove_file(out2.join("a/b/small.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, out2.join("a/b/small.txt")).unwrap();
    agent.ok(&["restore", &id1[..10], "--target", out2.to_str().unwrap()]);
    let mut over = describe(&out2);
    assert!(over.remove(b"new.txt".as_slice()).is_some(), "restore deletes nothing");
    assert_eq!(over, before, "restore over an existing tree");
    assert_eq!(std::fs::read(&outside).unwrap(), b"must stay");

    let list = agent.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    agent.ok(&["check", "--read-data"]);

    // Retention: keep the last one, then prune; the newest still restores and checks.
    std::fs::remove_file(src.join("a/copy.bin")).unwrap();
    std::fs::write(src.join("a/big.bin"), pseudo_random(9, 3_000_000)).unwrap();
    agent.ok(&["backup-dir", src.to_str().unwrap()]);
    let forget = agent.json(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(forget["forget"]["removed"].as_array().unwrap().len(), 2, "{forget}");
    assert!(forget["prune"]["bytesFreed"].as_u64().unwrap() > 9_000_000, "{forget}");
    agent.ok(&["check", "--read-data"]);
    let out4 = agent.dir.path().join("restore4");
    agent.ok(&["restore", "latest", "--target", out4.to_str().unwrap()]);
    assert_eq!(describe(&out4), describe(&src));
    let stderr = agent.fails(&["forget"]);
    assert!(stderr.contains("no retention rule"), "{stderr}");
}

#[test]
fn clear_errors_for_wrong_key_missing_bucket_and_truncated_pack() {
    let agent = Agent::new();
    let src = agent.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), pseudo_random(3, 3_000_000)).unwrap();
    agent.ok(&["backup-dir", src.to_str().unwrap()]);

    // Wrong key.
    let mut cmd = agent.cmd(&["snapshots"]);
    let bad = agent.dir.path().join("bad.key");
    std::fs::write(&bad, "not the key").unwrap();
    let o = cmd.env("BERTH_REPOSITORY_KEY_FILE", &bad).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong repository key"), "{err}");

    // Missing bucket.
    let o = agent.cmd(&["snapshots"]).env("BERTH_REPOSITORY", "s3://no-such-bucket/x").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-bucket") && err.contains("does not exist"), "{err}");

    // No repository at that prefix.
    let err = {
        let o = agent.cmd(&["snapshots"]).env("BERTH_REPOSITORY", "s3://backups/elsewhere").output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(err.contains("no repository"), "{err}");

    // Truncated pack: check names it, restore refuses with a clear error.
    let packs: Vec<_> = files_below(&agent.repo_dir().join("data"));
    assert!(!packs.is_empty());
    let victim = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let len = std::fs::metadata(victim).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(victim).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = agent.fails(&["check"]);
    assert!(err.contains("truncated"), "{err}");
    let out = agent.dir.path().join("restore");
    let err = agent.fails(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert!(err.contains("truncated") || err.contains("beyond its end"), "{err}");
}

#[test]
fn prune_refuses_while_another_process_holds_a_lock_and_ignores_forged_ones() {
    let agent = Agent::new();
    let src = agent.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    // A forged exclusive lock (no MAC): refused, so it blocks neither backups nor prune, and
    // `unlock` removes it.
    let now = jiff::Timestamp::now().to_string();
    let forged = serde_json::json!({
        "exclusive": true, "hostname": "other-pod", "pid": 1, "operation": "prune",
        "created": now, "refreshed": now
    });
    let locks = agent.repo_dir().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    std::fs::write(locks.join("a".repeat(64)), forged.to_string()).unwrap();
    agent.ok(&["backup-dir", src.to_str().unwrap()]);
    agent.ok(&["prune"]);
    assert!(agent.ok(&["unlock"]).contains("removed 1 lock(s)"));

    // A genuine shared lock of a backup running in another process (this one, with the key).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = rt.block_on(async {
        let config = StorageConfig::S3(S3Config {
            bucket: "backups".into(),
            prefix: "berth/test".into(),
            endpoint: Some(agent.s3.endpoint.clone()),
            insecure_http: true,
            region: Some(agent.s3.region.clone()),
            path_style: true,
            access_key_id: Some(agent.s3.access_key.clone()),
            secret_access_key: Some(agent.s3.secret_key.clone()),
            ..S3Config::default()
        });
        Repository::open(Storage::connect(&config).await.unwrap(), b"correct horse battery staple").await.unwrap()
    });
    let lock = rt.block_on(RepoLock::acquire(&repo, false, "backup elsewhere")).unwrap();
    // Backups share the lock; prune needs it exclusively.
    agent.ok(&["backup-dir", src.to_str().unwrap()]);
    let err = agent.fails(&["prune"]);
    assert!(err.contains("locked") && err.contains("backup elsewhere"), "{err}");
    rt.block_on(lock.release()).unwrap();
    agent.ok(&["prune"]);
    agent.ok(&["check", "--read-data"]);
}

//! `kill -9` in the middle of a backup leaves a repository that passes `check`; the next
//! backup succeeds and reuses what the killed one uploaded.

use crate::agent_support;

use std::time::{Duration, Instant};

use agent_support::{Agent, files_below, pseudo_random};

#[test]
fn kill_9_mid_backup_then_check_and_second_backup() {
    let agent = Agent::new();
    let src = agent.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(src.join(format!("file-{i:02}.bin")), pseudo_random(100 + i, 12 * 1024 * 1024)).unwrap();
    }
    let data_dir = agent.repo_dir().join("data");
    let index_dir = agent.repo_dir().join("index");
    // Small packs so that there are many uploads to interrupt.
    let mut child = agent
        .cmd(&["backup-dir", src.to_str().unwrap(), "--pack-size-mib", "2", "--upload-concurrency", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let indexed = files_below(&index_dir).len();
        if indexed >= 1 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "backup finished before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no index file written in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: SIGKILL to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert!(!status.success(), "backup was not killed: {status}");
    let packs_after_kill = files_below(&data_dir).len();
    assert!(packs_after_kill > 0);
    assert!(files_below(&agent.repo_dir().join("snapshots")).is_empty(), "no snapshot may exist yet");

    // The repository is consistent (unreferenced packs are warnings, not errors).
    agent.ok(&["check", "--read-data"]);

    // The next backup succeeds (the dead process's lock is stale) and reuses uploaded data.
    let second = agent.json(&["backup-dir", src.to_str().unwrap()]);
    let s = &second["snapshot"]["summary"];
    let total = s["bytesTotal"].as_u64().unwrap();
    let new = s["bytesNew"].as_u64().unwrap();
    assert_eq!(total, 12 * 12 * 1024 * 1024);
    assert!(new < total, "nothing reused after the crash: {s}");
    agent.ok(&["check", "--read-data"]);
    let out = agent.dir.path().join("restore");
    agent.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    for i in 0..12u64 {
        let name = format!("file-{i:02}.bin");
        assert!(std::fs::read(out.join(&name)).unwrap() == std::fs::read(src.join(&name)).unwrap(), "{name} differs");
    }
    // Prune (exclusive lock; the killed process's lock is stale) removes the orphans.
    agent.ok(&["prune"]);
    agent.ok(&["check", "--read-data"]);
}

//! Runs the real `berth agent` binary against an in-process S3 server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::servers::S3Server;

/// The agent binary: `berth agent` when main.rs wires it, else the identical `berth-agent`.
pub fn agent_command() -> Command {
    static WIRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let wired = *WIRED.get_or_init(|| {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["agent", "--help"])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("backup-dir")
            })
    });
    if wired {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.arg("agent");
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_berth-agent"))
    }
}

/// An S3 server with bucket `backups`, a key file and an initialised repository.
pub struct Agent {
    pub s3: S3Server,
    pub repo: String,
    pub key_file: PathBuf,
    pub dir: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
}

impl Agent {
    pub fn new() -> Self {
        let s3 = S3Server::start();
        s3.create_bucket("backups");
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("repo.key");
        std::fs::write(&key_file, "correct horse battery staple\n").unwrap();
        let a = Self {
            s3,
            repo: "s3://backups/berth/test".into(),
            key_file,
            dir,
            extra_env: vec![],
        };
        a.ok(&["init"]);
        a
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = agent_command();
        c.args(args)
            .envs(self.s3.env())
            .env("BERTH_REPOSITORY", &self.repo)
            .env("BERTH_REPOSITORY_KEY_FILE", &self.key_file)
            .env("BERTH_PROGRESS", "log")
            .env("BERTH_LOG", "warn")
            .env_remove("BERTH_REPOSITORY_KEY")
            .envs(self.extra_env.clone());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run agent")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "agent {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("agent {args:?}: not JSON ({e}): {out}"))
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "agent {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// Directory of the repository's objects inside the S3 server's store.
    pub fn repo_dir(&self) -> PathBuf {
        self.s3.root().join("backups/berth/test")
    }
}

/// Deterministic pseudo-random bytes (xorshift), for seeded test data.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every regular file below `dir` (recursively).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

//! The authenticated repository format through the real `berth agent` binary against a real
//! S3-compatible server (s3s-fs, plain HTTP on loopback): the plain-HTTP opt-in, a tampered
//! `config`, a forged key file asking for 10^9 PBKDF2 rounds, and `repo migrate` of a
//! format-1 repository, which then restores byte-identically.

use crate::agent_support;

use agent_support::{Agent, files_below, pseudo_random};
use berth::backup::{S3Config, Storage, StorageConfig};

fn config_path(agent: &Agent) -> std::path::PathBuf {
    agent.repo_dir().join("config")
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Replaces a repository object through S3 (s3s-fs keeps metadata beside its files, so a
/// file rewritten on disk with another length no longer reads back).
fn write(agent: &Agent, path: &std::path::Path, data: impl Into<Vec<u8>>) {
    let key = path.strip_prefix(agent.repo_dir()).unwrap().to_str().unwrap().to_string();
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
    let data = data.into();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        Storage::connect(&config).await.unwrap().put(&key, data.into()).await.unwrap();
    });
}

#[test]
fn plain_http_endpoint_needs_the_opt_in() {
    let agent = Agent::new();
    let o = agent.cmd(&["snapshots"]).env_remove("BERTH_S3_INSECURE_HTTP").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&agent.s3.endpoint) && err.contains("is plain HTTP"), "{err}");
    assert!(err.contains("--insecure-http") && err.contains("BERTH_S3_INSECURE_HTTP=true"), "{err}");
    // The flag works as well as the variable.
    let o = agent.cmd(&["snapshots", "--insecure-http"]).env_remove("BERTH_S3_INSECURE_HTTP").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn tampered_config_and_forged_key_files_are_refused() {
    let agent = Agent::new();
    let path = config_path(&agent);
    let genuine = std::fs::read(&path).unwrap();
    let mut config = read_json(&path);
    assert_eq!(config["version"], 2);
    assert!(config["mac"].is_string(), "{config}");

    // Any change to the config (here: the chunker, which would silently end deduplication).
    config["chunker"]["avg_size"] = 65536.into();
    write(&agent, &path, config.to_string().into_bytes());
    let err = agent.fails(&["snapshots"]);
    assert!(err.contains("config failed authentication with this repository's key"), "{err}");
    write(&agent, &path, genuine.clone());

    // 10^9 rounds in the config: refused before any key is derived.
    let mut config = read_json(&path);
    config["kdf"]["iterations"] = 1_000_000_000u32.into();
    write(&agent, &path, config.to_string().into_bytes());
    let err = agent.fails(&["snapshots"]);
    assert!(err.contains("config refused before deriving any key") && err.contains("1000000000"), "{err}");
    write(&agent, &path, genuine.clone());

    // The same in a key file.
    let key_file = files_below(&agent.repo_dir().join("keys")).remove(0);
    let mut key = read_json(&key_file);
    key["iterations"] = 1_000_000_000u32.into();
    write(&agent, &key_file, key.to_string().into_bytes());
    let err = agent.fails(&["snapshots"]);
    assert!(err.contains("refused before deriving any key") && err.contains("keys/"), "{err}");
}

/// A format-1 repository (config and manifests without MACs, as berth wrote them before) is
/// refused with the command that migrates it; `repo migrate` authenticates it, and the
/// migrated repository restores byte-identically and checks clean.
#[test]
fn format_1_repository_is_refused_then_migrated() {
    let agent = Agent::new();
    let src = agent.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/data.bin"), pseudo_random(4, 5_000_000)).unwrap();
    std::fs::write(src.join("notes.txt"), b"format one\n").unwrap();
    agent.ok(&["backup-dir", src.to_str().unwrap()]);

    // Format 1: the config as the old code wrote it (`to_vec_pretty` of format, version, id,
    // created, chunker); keys, packs, index files and snapshots are the same in both formats.
    let path = config_path(&agent);
    let v2 = read_json(&path);
    let v1 = serde_json::json!({
        "format": v2["format"], "version": 1, "id": v2["id"], "created": v2["created"], "chunker": v2["chunker"],
    });
    write(&agent, &path, serde_json::to_vec_pretty(&v1).unwrap());

    let err = agent.fails(&["snapshots"]);
    assert!(err.contains("format version 1") && err.contains("berth agent repo migrate"), "{err}");
    let out = agent.ok(&["repo", "migrate"]);
    assert!(out.contains("from format 1 to 2"), "{out}");
    let config = read_json(&path);
    assert_eq!((config["version"].as_u64(), config["id"].clone()), (Some(2), v2["id"].clone()));
    assert!(config["mac"].is_string());
    assert!(agent.ok(&["repo", "migrate"]).contains("nothing to migrate"));

    let out = agent.dir.path().join("restored");
    agent.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    for f in ["sub/data.bin", "notes.txt"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(src.join(f)).unwrap(), "{f}");
    }
    agent.ok(&["check", "--read-data"]);
}

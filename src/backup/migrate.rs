//! `berth agent repo migrate`: format version 1 → 2.
//!
//! Version 1 stored `config`, the manifests under `backups/` and the locks as plain JSON
//! without a MAC, so nothing stopped a forged manifest from being adopted. Version 2 adds the
//! MACs ([`super::auth`]); every other object (keys, packs, index files, snapshots) is the
//! same in both and is not touched.
//!
//! A version-1 manifest can only be verified as far as the key allows: it is authenticated
//! (rewritten with its MAC) only when its name matches its object key, its `repositoryId` is
//! this repository's, every snapshot it names decrypts with the key and carries the tag
//! `backup=<name>` that the Backup wrote, and every object it lists reads back with the keyed
//! checksum it records. A manifest that fails stays as it is and is refused by version-2
//! readers; the report lists it. `config` is rewritten last, so an interrupted migration is
//! simply run again (manifests already authenticated are kept). An offsite replica follows at
//! the next replication, which replaces its format-1 `config` and manifests.

use serde::{Deserialize, Serialize};

use super::auth;
use super::crypto::Id;
use super::error::{BackupError, Result};
use super::lock::{LockInfo, RepoLock};
use super::repo::{self, ChunkerParams, REPO_VERSION, RepoConfig, Repository};
use super::resources::{self, BackupManifest, RefusedManifest};
use super::storage::Storage;

/// The `config` object of format version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfigV1 {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateReport {
    /// The format version found.
    pub from_version: u32,
    /// True when the repository had the current format already (nothing written).
    pub already_current: bool,
    /// Manifests now authenticated (including those a previous run did).
    pub authenticated: Vec<String>,
    /// Manifests that failed verification: left as they are, refused by readers.
    pub refused: Vec<Refused>,
}

/// A manifest migration did not authenticate.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub key: String,
    pub reason: String,
}

impl From<RefusedManifest> for Refused {
    fn from(r: RefusedManifest) -> Self {
        Self { key: r.key, reason: r.reason }
    }
}

/// Migrates the repository at `storage` to the current format with `secret`.
pub async fn migrate(storage: Storage, secret: &[u8]) -> Result<MigrateReport> {
    let (header, bytes) = repo::read_header(&storage).await?;
    if header.version == REPO_VERSION {
        let repo = Repository::open(storage, secret).await?;
        let (manifests, refused) = resources::scan_manifests(&repo).await?;
        return Ok(MigrateReport {
            from_version: header.version,
            already_current: true,
            authenticated: manifests.into_iter().map(|m| m.name).collect(),
            refused: refused.into_iter().map(Refused::from).collect(),
        });
    }
    let (key, (_, kdf)) = repo::unlock(&storage, secret).await?;
    let old: RepoConfigV1 = serde_json::from_slice(&bytes).map_err(|e| BackupError::corrupt(repo::CONFIG_KEY, e))?;
    let config = RepoConfig {
        format: old.format,
        version: REPO_VERSION,
        id: old.id,
        created: old.created,
        chunker: old.chunker,
        kdf,
    };
    let repo = Repository::assemble(storage, key, config);
    repo.load_index().await?;
    refuse_live_v1_locks(&repo).await?;
    let lock = RepoLock::acquire(&repo, true, "migrate").await?;
    let result = async {
        let report = migrate_manifests(&repo, header.version).await?;
        repo.write_config().await?;
        Ok::<_, BackupError>(report)
    }
    .await;
    let released = lock.release().await;
    let report = result?;
    released?;
    tracing::info!(
        url = repo.url(),
        authenticated = report.authenticated.len(),
        refused = report.refused.len(),
        "repository migrated to format {REPO_VERSION}"
    );
    Ok(report)
}

/// Version-1 locks carry no MAC, so a version-2 lock would ignore them: a migration must not
/// run beside an older berth's backup or prune.
async fn refuse_live_v1_locks(repo: &Repository) -> Result<()> {
    for obj in repo.storage().list("locks").await? {
        let key = format!("locks/{}", obj.name);
        let data = match repo.storage().get(&key).await {
            Ok(d) => d,
            Err(BackupError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if let Ok((info, _)) = auth::parse_unverified::<LockInfo>(&key, &data)
            && !info.is_stale()
        {
            return Err(BackupError::Locked(format!(
                "{} ({key}); wait until it ends (or remove it if its process is gone) and migrate again",
                info.describe()
            )));
        }
    }
    Ok(())
}

async fn migrate_manifests(repo: &Repository, from_version: u32) -> Result<MigrateReport> {
    let mut report = MigrateReport { from_version, ..MigrateReport::default() };
    for o in repo.storage().list("backups").await? {
        let Some(name) = o.name.strip_suffix("/backup.json") else { continue };
        let key = format!("backups/{}", o.name);
        let data = match repo.storage().get(&key).await {
            Ok(d) => d,
            Err(BackupError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        if resources::open_manifest(repo, name, &data).is_ok() {
            report.authenticated.push(name.to_string());
            continue;
        }
        let checked = async {
            let (manifest, _) = auth::parse_unverified::<BackupManifest>(&key, &data)?;
            verify_v1_manifest(repo, name, &manifest).await?;
            resources::save_manifest(repo, &manifest).await
        }
        .await;
        match checked {
            Ok(()) => report.authenticated.push(name.to_string()),
            Err(e @ (BackupError::Storage { .. } | BackupError::Aborted(_))) => return Err(e),
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "manifest not authenticated");
                report.refused.push(Refused { key, reason: e.to_string() });
            }
        }
    }
    Ok(report)
}

/// Checks a version-1 manifest against what the key authenticates (see the module docs).
async fn verify_v1_manifest(repo: &Repository, name: &str, manifest: &BackupManifest) -> Result<()> {
    let refuse = |detail: String| BackupError::Unauthenticated { key: format!("backups/{name}/backup.json"), detail };
    if manifest.name != name {
        return Err(refuse(format!("it names backup {:?}", manifest.name)));
    }
    if !repo.is_this(&manifest.repository_id) {
        return Err(refuse(format!("it names repository {:?}", manifest.repository_id)));
    }
    let tag = format!("backup={name}");
    for s in &manifest.snapshots {
        let snap = repo.load_snapshot(&Id::from_hex(&s.snapshot)?).await?;
        if !snap.tags.contains(&tag) {
            return Err(refuse(format!("its snapshot {} belongs to another backup (no tag {tag})", s.snapshot)));
        }
    }
    resources::read_objects(repo, manifest).await?;
    Ok(())
}

/// Test fixture: rewrites a repository's `config` and manifests the way format version 1
/// wrote them (the pre-migration code path: `serde_json::to_vec_pretty` of the plain values,
/// no `mac`). Every other object is the same in both versions.
#[cfg(test)]
pub(crate) async fn write_format_1(repo: &Repository) -> Result<()> {
    let c = repo.config();
    let old = RepoConfigV1 {
        format: c.format.clone(),
        version: 1,
        id: c.id.clone(),
        created: c.created.clone(),
        chunker: c.chunker,
    };
    let storage = repo.storage();
    for o in storage.list("backups").await? {
        let key = format!("backups/{}", o.name);
        let (manifest, _) = auth::parse_unverified::<BackupManifest>(&key, &storage.get(&key).await?)?;
        storage.put(&key, serde_json::to_vec_pretty(&manifest).expect("json").into()).await?;
    }
    storage.put(repo::CONFIG_KEY, serde_json::to_vec_pretty(&old).expect("json").into()).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backup::resources::{SnapshotRef, load_manifest, load_objects, store_objects};
    use crate::backup::{StorageConfig, archiver, ops};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrates_a_format_1_repository_and_restores_byte_identically() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo_dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let content = crate::backup::test_bytes(9, 3_000_000);
        std::fs::write(src.join("sub/data.bin"), &content).unwrap();
        std::fs::write(src.join("small.txt"), b"small").unwrap();
        let storage = Storage::connect(&StorageConfig::Local(repo_dir.clone())).await.unwrap();
        let repo = Repository::init(storage.clone(), b"secret").await.unwrap();
        let tags = vec!["backup=nightly-1".to_string()];
        let (dir_id, dir_snap) = ops::backup_directory(&repo, &src, tags, Arc::default(), None).await.unwrap();
        let volume = SnapshotRef {
            kind: "dir".into(),
            snapshot: dir_id.to_hex(),
            source: "data".into(),
            bytes: dir_snap.summary.bytes_total,
        };
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "shop"}, "data": {"k": "v"}});
        store_objects(&repo, "nightly-1", vec!["shop".into()], &[cm], vec![volume.clone()]).await.unwrap();
        // A manifest forged in the format-1 bucket, naming the genuine volume snapshot.
        let mut forged = load_manifest(&repo, "nightly-1").await.unwrap();
        forged.name = "forged".into();
        forged.snapshots = vec![volume];
        resources::save_manifest(&repo, &forged).await.unwrap();
        write_format_1(&repo).await.unwrap();
        let v1_config = storage.get("config").await.unwrap();
        assert!(!String::from_utf8_lossy(&v1_config).contains("mac"));

        let err = Repository::open(storage.clone(), b"secret").await.unwrap_err();
        assert!(matches!(err, BackupError::MigrationNeeded { found: 1, .. }), "{err}");
        assert!(err.to_string().contains("berth agent repo migrate"), "{err}");
        let err = Repository::open(storage.clone(), b"wrong").await.unwrap_err();
        assert!(matches!(err, BackupError::WrongKey { .. }), "a wrong key is told as such: {err}");
        assert!(matches!(migrate(storage.clone(), b"wrong").await, Err(BackupError::WrongKey { .. })));
        assert_eq!(storage.get("config").await.unwrap(), v1_config, "nothing written without the key");

        let report = migrate(storage.clone(), b"secret").await.unwrap();
        assert_eq!((report.from_version, report.already_current), (1, false));
        assert_eq!(report.authenticated, ["nightly-1"]);
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert_eq!(report.refused[0].key, "backups/forged/backup.json");
        assert!(report.refused[0].reason.contains("no tag backup=forged"), "{report:?}");

        let repo = Repository::open(storage.clone(), b"secret").await.unwrap();
        assert_eq!(repo.config().version, REPO_VERSION);
        assert_eq!(load_objects(&repo, "nightly-1").await.unwrap().1[0]["data"]["k"], "v");
        assert!(matches!(load_manifest(&repo, "forged").await, Err(BackupError::Unauthenticated { .. })));
        let snap = repo.load_snapshot(&dir_id).await.unwrap();
        let target = tmp.path().join("restored");
        archiver::restore_dir(&repo, &snap.root, &target, 4, &|_| {}).await.unwrap();
        assert_eq!(std::fs::read(target.join("sub/data.bin")).unwrap(), content);
        assert_eq!(std::fs::read(target.join("small.txt")).unwrap(), b"small");
        let check = ops::check(&repo, true).await.unwrap();
        assert_eq!(check.errors.len(), 1, "only the forged manifest: {check:?}");
        assert!(check.errors[0].contains("backups/forged/backup.json"), "{check:?}");

        let again = migrate(storage, b"secret").await.unwrap();
        assert!(again.already_current && again.authenticated == ["nightly-1"], "{again:?}");
    }

    /// A live format-1 lock (an older berth still backing up) stops the migration.
    #[tokio::test]
    async fn a_live_format_1_lock_stops_the_migration() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::connect(&StorageConfig::Local(tmp.path().join("repo"))).await.unwrap();
        let repo = Repository::init(storage.clone(), b"secret").await.unwrap();
        write_format_1(&repo).await.unwrap();
        let now = jiff::Timestamp::now().to_string();
        let lock = LockInfo {
            exclusive: false,
            hostname: "old-agent".into(),
            pid: 7,
            operation: "backup postgres".into(),
            created: now.clone(),
            refreshed: now,
        };
        storage.put("locks/old", serde_json::to_vec_pretty(&lock).unwrap().into()).await.unwrap();
        let err = migrate(storage.clone(), b"secret").await.unwrap_err();
        assert!(matches!(err, BackupError::Locked(_)) && err.to_string().contains("locks/old"), "{err}");
        storage.delete("locks/old").await.unwrap();
        assert!(!migrate(storage, b"secret").await.unwrap().already_current);
    }
}

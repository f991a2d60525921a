//! Kubernetes objects of a Backup, Velero-style.
//!
//! Objects are stored one JSON document per object at
//! `resources/<group>/<Kind>/namespaces/<namespace>/<name>.json` (cluster-scoped:
//! `resources/<group>/<Kind>/cluster/<name>.json`; the core group is `core`) — inside the
//! encrypted, deduplicated repository as a snapshot of kind `kubernetes`, because the objects
//! include Secrets. Restoring that snapshot to a directory gives exactly that tree.
//!
//! Next to it, `backups/<name>/backup.json` is a plain, person-readable manifest (format
//! version, times, counts, sizes, the snapshot ids of everything the Backup wrote and a
//! checksum per object) with a `mac` over its content and its own object key
//! ([`super::auth`]): a manifest changed in the bucket, forged, or copied to another backup's
//! name is refused. The operator lists `backups/` to rediscover backups in a bucket and
//! adopts only the manifests that verify ([`scan_manifests`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::archiver;
use super::auth::{self, Kind};
use super::crypto::Id;
use super::error::{BackupError, Result};
use super::ops::{BackupSpec, run_backup};
use super::repo::Repository;
use super::writer::WriterStats;

/// Version of `backup.json`.
pub const MANIFEST_VERSION: u32 = 1;

/// One object listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceItem {
    /// API group (`core` for the legacy group).
    pub group: String,
    pub version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// Path inside the `kubernetes` snapshot.
    pub path: String,
    pub size: u64,
    /// Keyed BLAKE3 of the JSON document (its chunk id), hex.
    pub checksum: String,
}

/// A snapshot that belongs to a Backup (database dump, volume, resources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// `kubernetes`, `postgres`, `rabbitmq`, `dir`.
    pub kind: String,
    pub snapshot: String,
    pub source: String,
    pub bytes: u64,
}

/// `backups/<name>/backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupManifest {
    pub format_version: u32,
    pub name: String,
    pub repository_id: String,
    pub started: String,
    pub completed: String,
    #[serde(default)]
    pub included_namespaces: Vec<String>,
    /// Objects per `group/Kind`.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub resources: Vec<ResourceItem>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotRef>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Object key of the manifest of Backup `name`.
pub fn manifest_key(name: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(BackupError::Invalid(format!("invalid backup name {name:?}")));
    }
    Ok(format!("backups/{name}/backup.json"))
}

fn path_segment(s: &str, what: &str) -> Result<String> {
    if s.is_empty() || s.contains('/') || s == "." || s == ".." {
        return Err(BackupError::Invalid(format!("invalid {what} {s:?}")));
    }
    Ok(s.to_string())
}

/// Where an object goes in the layout.
pub fn object_path(obj: &serde_json::Value) -> Result<(ResourceItem, String)> {
    let api_version =
        obj["apiVersion"].as_str().ok_or_else(|| BackupError::Invalid("object without apiVersion".into()))?;
    let kind = obj["kind"].as_str().ok_or_else(|| BackupError::Invalid("object without kind".into()))?;
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or_else(|| BackupError::Invalid(format!("{kind} without metadata.name")))?;
    let namespace = obj["metadata"]["namespace"].as_str().filter(|s| !s.is_empty());
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => ("core".to_string(), api_version.to_string()),
    };
    let path = match namespace {
        Some(ns) => format!(
            "resources/{}/{}/namespaces/{}/{}.json",
            path_segment(&group, "group")?,
            path_segment(kind, "kind")?,
            path_segment(ns, "namespace")?,
            path_segment(name, "name")?
        ),
        None => format!(
            "resources/{}/{}/cluster/{}.json",
            path_segment(&group, "group")?,
            path_segment(kind, "kind")?,
            path_segment(name, "name")?
        ),
    };
    Ok((
        ResourceItem {
            group,
            version,
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            path: path.clone(),
            size: 0,
            checksum: String::new(),
        },
        path,
    ))
}

/// Stores `objects` as the Kubernetes part of Backup `name`, writes its manifest and returns
/// it. `extra` lists other snapshots of the same Backup (dumps, volumes) to record.
pub async fn store_objects(
    repo: &Repository,
    name: &str,
    included_namespaces: Vec<String>,
    objects: &[serde_json::Value],
    extra: Vec<SnapshotRef>,
) -> Result<BackupManifest> {
    manifest_key(name)?;
    let started = jiff::Timestamp::now().to_string();
    let mut items = Vec::new();
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for obj in objects {
        let (mut item, path) = object_path(obj)?;
        if !seen.insert(path.clone()) {
            return Err(BackupError::Invalid(format!("object {path} given twice")));
        }
        let doc = serde_json::to_vec_pretty(obj).expect("json");
        item.size = doc.len() as u64;
        item.checksum = repo.key().blob_id(&doc).to_hex();
        items.push(item);
        files.push((path, doc));
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    let spec = BackupSpec {
        kind: "kubernetes".into(),
        source: name.to_string(),
        tags: vec![format!("backup={name}")],
        parent: Some(None),
    };
    let (id, snap) =
        run_backup(repo, spec, Arc::new(WriterStats::default()), move |w, _, _| archiver::backup_virtual(w, files))
            .await?;
    let mut counts = BTreeMap::new();
    for i in &items {
        *counts.entry(format!("{}/{}", i.group, i.kind)).or_insert(0) += 1;
    }
    let mut snapshots = vec![SnapshotRef {
        kind: "kubernetes".into(),
        snapshot: id.to_hex(),
        source: name.to_string(),
        bytes: snap.summary.bytes_total,
    }];
    snapshots.extend(extra);
    let manifest = BackupManifest {
        format_version: MANIFEST_VERSION,
        name: name.to_string(),
        repository_id: repo.config().id.clone(),
        started,
        completed: jiff::Timestamp::now().to_string(),
        included_namespaces,
        counts,
        resources: items,
        snapshots,
        labels: BTreeMap::new(),
    };
    save_manifest(repo, &manifest).await?;
    Ok(manifest)
}

/// The bytes of a manifest as stored: indented JSON with its `mac`.
pub fn seal_manifest(repo: &Repository, manifest: &BackupManifest) -> Result<Bytes> {
    let key = manifest_key(&manifest.name)?;
    Ok(Bytes::from(auth::seal(repo.key(), Kind::Manifest, &key, manifest)))
}

/// Writes (or replaces) a manifest.
pub async fn save_manifest(repo: &Repository, manifest: &BackupManifest) -> Result<()> {
    let key = manifest_key(&manifest.name)?;
    repo.storage().put(&key, seal_manifest(repo, manifest)?).await
}

/// Parses and authenticates the bytes of the manifest of Backup `name`.
pub fn open_manifest(repo: &Repository, name: &str, data: &[u8]) -> Result<BackupManifest> {
    let key = manifest_key(name)?;
    let m: BackupManifest = auth::open(repo.key(), Kind::Manifest, &key, data)?;
    if m.format_version > MANIFEST_VERSION {
        return Err(BackupError::UnsupportedVersion { found: m.format_version, supported: MANIFEST_VERSION });
    }
    Ok(m)
}

/// Reads a manifest; fails with [`BackupError::Unauthenticated`] when its MAC does not verify.
pub async fn load_manifest(repo: &Repository, name: &str) -> Result<BackupManifest> {
    let data = repo.storage().get(&manifest_key(name)?).await?;
    open_manifest(repo, name, &data)
}

/// A manifest in the bucket that was not adopted, and why (no secrets in either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedManifest {
    /// Its object key, `backups/<name>/backup.json`.
    pub key: String,
    pub reason: String,
}

/// Every manifest under `backups/`: those that verify, by name, and those refused.
pub async fn scan_manifests(repo: &Repository) -> Result<(Vec<BackupManifest>, Vec<RefusedManifest>)> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for o in repo.storage().list("backups").await? {
        let Some(name) = o.name.strip_suffix("/backup.json") else { continue };
        match load_manifest(repo, name).await {
            Ok(m) => out.push(m),
            Err(BackupError::NotFound(_)) => {}
            Err(e) => refused.push(RefusedManifest { key: format!("backups/{}", o.name), reason: e.to_string() }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, refused))
}

/// Every manifest that verifies (for disaster recovery discovery), by name; the others are
/// logged and left out.
pub async fn list_manifests(repo: &Repository) -> Result<Vec<BackupManifest>> {
    let (manifests, refused) = scan_manifests(repo).await?;
    for r in refused {
        tracing::warn!(object = %r.key, reason = %r.reason, "backup manifest refused");
    }
    Ok(manifests)
}

/// Reads back the objects of Backup `name`, verified against the manifest's checksums.
pub async fn load_objects(repo: &Repository, name: &str) -> Result<(BackupManifest, Vec<serde_json::Value>)> {
    let manifest = load_manifest(repo, name).await?;
    let objects = read_objects(repo, &manifest).await?;
    Ok((manifest, objects))
}

/// Reads the objects `manifest` lists from its `kubernetes` snapshot, each verified against
/// the manifest's checksum (keyed with the repository key).
pub async fn read_objects(repo: &Repository, manifest: &BackupManifest) -> Result<Vec<serde_json::Value>> {
    let name = &manifest.name;
    let snap_id = manifest
        .snapshots
        .iter()
        .find(|s| s.kind == "kubernetes")
        .ok_or_else(|| BackupError::Invalid(format!("backup {name} has no Kubernetes objects")))?;
    let snap = repo.load_snapshot(&Id::from_hex(&snap_id.snapshot)?).await?;
    let mut objects = Vec::new();
    for item in &manifest.resources {
        let node = archiver::lookup(repo, &snap.root, &item.path).await?;
        let doc = archiver::read_file(repo, &node).await?;
        if repo.key().blob_id(&doc).to_hex() != item.checksum {
            return Err(BackupError::corrupt(&item.path, "checksum does not match the manifest"));
        }
        objects.push(serde_json::from_slice(&doc).map_err(|e| BackupError::corrupt(&item.path, e))?);
    }
    Ok(objects)
}

/// Deletes a manifest (the snapshots it names are removed by forget/prune).
pub async fn delete_manifest(repo: &Repository, name: &str) -> Result<()> {
    repo.storage().delete(&manifest_key(name)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let (i, p) = object_path(&serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"}
        }))
        .unwrap();
        assert_eq!(p, "resources/apps/Deployment/namespaces/shop/web.json");
        assert_eq!((i.group.as_str(), i.version.as_str()), ("apps", "v1"));
        let (_, p) = object_path(&serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}
        }))
        .unwrap();
        assert_eq!(p, "resources/core/Namespace/cluster/shop.json");
        assert!(
            object_path(&serde_json::json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "../x"}})).is_err()
        );
        assert!(manifest_key("a/b").is_err());
    }

    async fn repo_with_backup() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::backup::Storage::connect(&crate::backup::StorageConfig::Local(dir.path().join("r"))).await.unwrap();
        let repo = Repository::init(storage, b"secret").await.unwrap();
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "shop"}, "data": {"k": "v"}});
        let mut m = store_objects(&repo, "nightly-1", vec!["shop".into()], &[cm], vec![]).await.unwrap();
        m.labels.insert("berth.dev/policy".into(), "nightly".into());
        save_manifest(&repo, &m).await.unwrap();
        (dir, repo)
    }

    #[tokio::test]
    async fn tampered_manifests_are_refused() {
        let (_dir, repo) = repo_with_backup().await;
        let key = "backups/nightly-1/backup.json";
        let genuine = repo.storage().get(key).await.unwrap();
        let text = String::from_utf8(genuine.to_vec()).unwrap();
        assert!(text.contains("\"berth.dev/policy\": \"nightly\"") && text.contains("\"mac\""), "{text}");
        assert_eq!(load_objects(&repo, "nightly-1").await.unwrap().1.len(), 1);

        // Moved to another policy by editing a label.
        let forged = text.replace("\"berth.dev/policy\": \"nightly\"", "\"berth.dev/policy\": \"other\"");
        repo.storage().put(key, Bytes::from(forged)).await.unwrap();
        let err = load_manifest(&repo, "nightly-1").await.unwrap_err();
        assert!(matches!(&err, BackupError::Unauthenticated { key: k, .. } if k == key), "{err}");
        assert!(load_objects(&repo, "nightly-1").await.is_err());

        // A genuine manifest copied to another backup's name.
        repo.storage().put(key, genuine.clone()).await.unwrap();
        repo.storage().put("backups/replayed/backup.json", genuine).await.unwrap();
        let err = load_manifest(&repo, "replayed").await.unwrap_err();
        assert!(err.to_string().contains("backups/replayed/backup.json failed authentication"), "{err}");

        let (found, refused) = scan_manifests(&repo).await.unwrap();
        assert_eq!(found.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["nightly-1"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].key, "backups/replayed/backup.json");
        assert_eq!(list_manifests(&repo).await.unwrap().len(), 1);
        let check = crate::backup::ops::check(&repo, false).await.unwrap();
        assert_eq!(check.errors.len(), 1, "{check:?}");
        assert!(check.errors[0].contains("backups/replayed/backup.json failed authentication"), "{check:?}");
    }

    /// A lock without a valid MAC is ignored (it cannot block a prune) and `unlock` removes it;
    /// the locks berth writes verify.
    #[tokio::test]
    async fn forged_locks_are_refused() {
        use crate::backup::lock::{RepoLock, list_locks, remove_locks};
        let (_dir, repo) = repo_with_backup().await;
        let forged = serde_json::json!({"exclusive": true, "hostname": "elsewhere", "pid": 1,
            "operation": "prune", "created": jiff::Timestamp::now().to_string(),
            "refreshed": jiff::Timestamp::now().to_string()});
        repo.storage().put("locks/forged", Bytes::from(serde_json::to_vec(&forged).unwrap())).await.unwrap();
        assert!(list_locks(&repo).await.unwrap().is_empty());
        let lock = RepoLock::acquire(&repo, true, "prune").await.unwrap();
        assert_eq!(list_locks(&repo).await.unwrap().len(), 1, "our own lock verifies");
        lock.release().await.unwrap();
        assert_eq!(remove_locks(&repo, false).await.unwrap(), 1);
        assert!(repo.storage().list("locks").await.unwrap().is_empty());
    }
}

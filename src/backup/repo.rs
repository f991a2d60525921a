//! Opening, initialising and reading a repository.
//!
//! Layout under `s3://bucket/prefix/`:
//!
//! ```text
//! config                    JSON + MAC: format, version, id, chunker and KDF parameters
//! keys/<id>                 master key wrapped by a user secret (JSON)
//! data/<ab>/<pack id>       pack files
//! index/<id>                encrypted index files
//! snapshots/<id>            encrypted snapshot manifests (JSON)
//! locks/<id>                lock objects (JSON + MAC)
//! backups/<name>/backup.json  person-readable manifests of Kubernetes backups (JSON + MAC)
//! ```
//!
//! Opening reads `config` before any key exists only for what it must: the format, the
//! version and the KDF parameters, which are bounded before the KDF runs. Once a key file
//! opens, the whole `config` is verified with its MAC ([`super::auth`]) and the parameters
//! that opened the key must be the ones it records. Format version 1 had no MACs; such a
//! repository is refused with [`BackupError::MigrationNeeded`] (see [`super::migrate`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::auth::{self, Kind};
use super::crypto::{self, Id, KeyFile, MasterKey};
use super::error::{BackupError, Result};
use super::index::{Index, IndexLimits, IndexLoader};
use super::pack::{self, BlobKind, PackInfo};
use super::ranges;
use super::snapshot::{SNAPSHOT_VERSION, Snapshot, Tree};
use super::storage::Storage;

/// Repository format version written by this build: 2 authenticates `config`, manifests and
/// locks (version 1 did not).
pub const REPO_VERSION: u32 = 2;
/// Key files tried when opening: each costs a key derivation, so a bucket filled with forged
/// key files must not turn opening into hours of PBKDF2.
pub const MAX_KEY_FILES: usize = 32;
/// Tree reads in flight in [`Repository::load_trees`].
const TREE_READS: usize = 16;

/// Chunker parameters, fixed at `init` (changing them would defeat deduplication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

/// 512 KiB on average: a small change rewrites about 0.7 MiB instead of 1.4 MiB with 1 MiB
/// chunks (measured by scripts/bench-backup.sh); the index costs ~64 bytes of memory per
/// chunk, 128 MiB per TiB of unique data.
impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min_size: 128 * 1024, avg_size: 512 * 1024, max_size: 2 * 1024 * 1024 }
    }
}

/// The key derivation of the repository's key files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// `pbkdf2-sha256`.
    pub algorithm: String,
    pub iterations: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self { algorithm: crypto::KDF_ALGORITHM.into(), iterations: crypto::KDF_ITERATIONS }
    }
}

/// The `config` object (stored with a `mac`, see [`super::auth`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always `berth-repository`.
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created: String,
    pub chunker: ChunkerParams,
    /// Parameters of every key file (checked against the key file that opened).
    pub kdf: KdfParams,
}

/// What is read from `config` before any key exists.
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigHeader {
    pub format: String,
    pub version: u32,
    /// Absent in format version 1.
    #[serde(default)]
    pub kdf: Option<KdfParams>,
}

/// Object key of the configuration.
pub const CONFIG_KEY: &str = "config";

/// Tunables of writers (not stored in the repository).
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Target pack size in bytes.
    pub pack_size: usize,
    /// zstd level for blobs.
    pub compression_level: i32,
    /// Packs uploaded in parallel.
    pub upload_concurrency: usize,
    /// Compression/encryption threads (0 = number of CPUs).
    pub workers: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { pack_size: 16 * 1024 * 1024, compression_level: 3, upload_concurrency: 4, workers: 0 }
    }
}

/// An open repository. Cheap to clone; the index is shared.
#[derive(Clone)]
pub struct Repository {
    storage: Storage,
    key: Arc<MasterKey>,
    config: Arc<RepoConfig>,
    index: Arc<RwLock<Index>>,
    /// Names of the index files the in-memory index was built from (and has written since).
    index_files: Arc<RwLock<BTreeSet<String>>>,
    pub(crate) write_options: WriteOptions,
    index_limits: IndexLimits,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("url", &self.storage.url()).field("id", &self.config.id).finish()
    }
}

fn snapshot_aad(id: &Id) -> Vec<u8> {
    let mut a = b"berth snapshot ".to_vec();
    a.extend_from_slice(&id.0);
    a
}

impl Repository {
    /// Creates a new repository protected by `secret`. Fails when one exists already.
    pub async fn init(storage: Storage, secret: &[u8]) -> Result<Self> {
        if secret.is_empty() {
            return Err(BackupError::Invalid("the repository key is empty".into()));
        }
        storage.ensure_bucket().await?;
        if storage.head("config").await?.is_some() {
            return Err(BackupError::AlreadyExists(storage.url().to_string()));
        }
        let key = MasterKey::generate();
        let keyfile = key.wrap(secret);
        let key_id = Id::random();
        storage.put(&format!("keys/{key_id}"), Bytes::from(serde_json::to_vec_pretty(&keyfile).expect("json"))).await?;
        let config = RepoConfig {
            format: "berth-repository".into(),
            version: REPO_VERSION,
            id: Id::random().to_hex(),
            created: jiff::Timestamp::now().to_string(),
            chunker: ChunkerParams::default(),
            kdf: KdfParams::default(),
        };
        let repo = Self::assemble(storage, key, config);
        // `config` last: a repository is complete once it exists.
        repo.write_config().await?;
        Ok(repo)
    }

    pub(crate) fn assemble(storage: Storage, key: MasterKey, config: RepoConfig) -> Self {
        Self {
            storage,
            key: Arc::new(key),
            config: Arc::new(config),
            index: Arc::default(),
            index_files: Arc::default(),
            write_options: WriteOptions::default(),
            index_limits: IndexLimits::default(),
        }
    }

    /// Writes this repository's `config` with its MAC.
    pub(crate) async fn write_config(&self) -> Result<()> {
        let sealed = auth::seal(&self.key, Kind::Config, CONFIG_KEY, &*self.config);
        self.storage.put(CONFIG_KEY, Bytes::from(sealed)).await
    }

    /// Opens an existing repository and loads its index.
    pub async fn open(storage: Storage, secret: &[u8]) -> Result<Self> {
        let (header, config_bytes) = read_header(&storage).await?;
        let (key, used) = unlock(&storage, secret).await?;
        if header.version < REPO_VERSION {
            return Err(BackupError::MigrationNeeded {
                url: storage.url().to_string(),
                found: header.version,
                supported: REPO_VERSION,
            });
        }
        let config: RepoConfig = auth::open(&key, Kind::Config, CONFIG_KEY, &config_bytes)?;
        if config.kdf != used.1 {
            return Err(BackupError::Unauthenticated {
                key: used.0,
                detail: format!(
                    "it was opened with KDF parameters {:?} but the authenticated config records {:?}",
                    used.1, config.kdf
                ),
            });
        }
        let repo = Self::assemble(storage, key, config);
        repo.load_index().await?;
        Ok(repo)
    }

    /// Adds another key (for rotation); returns its id.
    pub async fn add_key(&self, secret: &[u8]) -> Result<Id> {
        let id = Id::random();
        let file = self.key.wrap(secret);
        self.storage.put(&format!("keys/{id}"), Bytes::from(serde_json::to_vec_pretty(&file).expect("json"))).await?;
        Ok(id)
    }

    /// Whether `id` names this repository (a manifest's `repositoryId`).
    pub fn is_this(&self, id: &str) -> bool {
        self.config.id == id
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn key(&self) -> &MasterKey {
        &self.key
    }
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn url(&self) -> &str {
        self.storage.url()
    }
    /// Shared in-memory index.
    pub fn index(&self) -> &RwLock<Index> {
        &self.index
    }
    /// Replaces the writer tunables.
    pub fn set_write_options(&mut self, o: WriteOptions) {
        self.write_options = o;
    }
    /// How much of the index later loads hold in memory (tests spill small indexes with it).
    pub fn set_index_limits(&mut self, l: IndexLimits) {
        self.index_limits = l;
    }
    pub fn write_options(&self) -> WriteOptions {
        self.write_options
    }

    /// (Re)loads all index files; returns their names. Each file is decoded and added as it
    /// arrives, so that only the compact index and a few decoded files are in memory at once.
    pub async fn load_index(&self) -> Result<Vec<String>> {
        let files = self.storage.list("index").await?;
        let key = self.key.clone();
        let mut loaded = futures::stream::iter(files)
            .map(|f| {
                let key = key.clone();
                async move {
                    let data = self.storage.get(&format!("index/{}", f.name)).await?;
                    let name = f.name.clone();
                    let packs = tokio::task::spawn_blocking(move || pack::decode_index(&key, &name, &data))
                        .await
                        .map_err(|e| BackupError::Aborted(e.to_string()))??;
                    Ok::<_, BackupError>((f.name, packs))
                }
            })
            .buffer_unordered(8);
        let mut loader = IndexLoader::new(self.index_limits);
        let mut names = Vec::new();
        while let Some(file) = loaded.next().await {
            let (name, packs) = file?;
            for p in &packs {
                loader.load_pack(p)?;
            }
            names.push(name);
        }
        let index = loader.finish()?;
        tracing::debug!(
            blobs = index.blob_count(),
            spilled = index.spilled_blobs(),
            bytes = index.heap_bytes(),
            "index loaded"
        );
        *self.index.write().expect("index lock") = index;
        *self.index_files.write().expect("index lock") = names.iter().cloned().collect();
        Ok(names)
    }

    /// Reloads the index when one of its files is gone since it was loaded (a `prune` in
    /// between rewrote it; files other writers added only hold blobs this one need not know);
    /// returns whether it did. A writer calls this once it holds its lock,
    /// so that it never deduplicates against blobs a prune has removed.
    pub async fn refresh_index(&self) -> Result<bool> {
        let listed: BTreeSet<String> = self.storage.list("index").await?.into_iter().map(|f| f.name).collect();
        if self.index_files.read().expect("index lock").is_subset(&listed) {
            return Ok(false);
        }
        tracing::debug!("index files changed since the repository was opened; reloading");
        self.load_index().await?;
        Ok(true)
    }

    /// Writes an index file for packs already stored; returns its name.
    pub async fn write_index(&self, packs: &[PackInfo]) -> Result<String> {
        let name = Id::random().to_hex();
        let data = pack::encode_index(&self.key, packs);
        self.storage.put(&format!("index/{name}"), Bytes::from(data)).await?;
        self.index_files.write().expect("index lock").insert(name.clone());
        Ok(name)
    }

    /// Reads, decrypts and verifies one blob.
    pub async fn read_blob(&self, id: &Id) -> Result<Vec<u8>> {
        let (meta, e) = self
            .index
            .read()
            .expect("index lock")
            .get(id)
            .ok_or_else(|| BackupError::corrupt(format!("blob {id}"), "not in the index"))?;
        let sealed = self.storage.get_range(&pack::pack_key(&meta.id), e.offset as u64, e.length as u64).await?;
        let key = self.key.clone();
        let id = *id;
        tokio::task::spawn_blocking(move || pack::open_blob(&key, e.kind, &id, &sealed, e.raw_len))
            .await
            .map_err(|e| BackupError::Aborted(e.to_string()))?
    }

    /// Loads trees, several per ranged read where they sit close together in a pack: the
    /// trees of one backup sit together in a few tree packs, and a GET per tree cost a
    /// request per directory (and an S3 server a whole block read for each). A tree whose
    /// read fails is loaded alone, so that it fails with its own error.
    pub async fn load_trees(&self, ids: Vec<Id>) -> Vec<(Id, Result<Tree>)> {
        let mut wanted = HashMap::new();
        let mut alone = Vec::new();
        {
            let index = self.index.read().expect("index lock");
            for id in ids {
                match index.get(&id) {
                    Some((meta, e)) => drop(wanted.insert(id, (e, meta, ()))),
                    None => alone.push(id),
                }
            }
        }
        let mut loaded = Vec::new();
        let mut reads = futures::stream::iter(ranges::plan_reads(wanted))
            .map(|read| async move { (self.read_trees(&read).await, read) })
            .buffer_unordered(TREE_READS);
        while let Some((trees, read)) = reads.next().await {
            match trees {
                Ok(trees) => loaded.extend(trees),
                Err(_) => alone.extend(read.blobs.iter().map(|(id, _, _)| *id)),
            }
        }
        let singles = futures::stream::iter(alone)
            .map(|id| async move { (id, self.load_tree(&id).await) })
            .buffer_unordered(TREE_READS)
            .collect::<Vec<_>>()
            .await;
        loaded.extend(singles);
        loaded
    }

    /// Opens (authenticates, decompresses) and parses the tree `e` out of `region`, the bytes
    /// of its pack from offset `start` on.
    pub(crate) fn open_tree(&self, id: &Id, e: &super::index::IndexEntry, region: &[u8], start: u64) -> Result<Tree> {
        let outside = || BackupError::corrupt(format!("tree {id}"), "outside the bytes read for it".to_string());
        let s = (e.offset as u64).checked_sub(start).ok_or_else(outside)? as usize;
        let sealed = region.get(s..s + e.length as usize).ok_or_else(outside)?;
        Tree::decode(id, &pack::open_blob(&self.key, e.kind, id, sealed, e.raw_len)?)
    }

    /// The trees of one ranged read, each parsed or failed on its own.
    async fn read_trees(&self, read: &ranges::Read<()>) -> Result<Vec<(Id, Result<Tree>)>> {
        let (start, end) = read.span();
        let data = self.storage.get_range(&pack::pack_key(&read.pack.id), start, end - start).await?;
        let (repo, blobs) = (self.clone(), read.blobs.iter().map(|(id, e, _)| (*id, *e)).collect::<Vec<_>>());
        tokio::task::spawn_blocking(move || {
            blobs.into_iter().map(|(id, e)| (id, repo.open_tree(&id, &e, &data, start))).collect()
        })
        .await
        .map_err(|e| BackupError::Aborted(e.to_string()))
    }

    /// Loads a tree blob.
    pub async fn load_tree(&self, id: &Id) -> Result<Tree> {
        let data = self.read_blob(id).await?;
        Tree::decode(id, &data)
    }

    /// Kind check for a blob id (used by `check`).
    pub fn blob_kind(&self, id: &Id) -> Option<BlobKind> {
        self.index.read().expect("index lock").get(id).map(|(_, e)| e.kind)
    }

    /// Stores a snapshot manifest; returns its id.
    pub async fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let id = Id::random();
        let json = serde_json::to_vec(snap).expect("json");
        let sealed = self.key.seal(&snapshot_aad(&id), &json);
        self.storage.put(&format!("snapshots/{id}"), Bytes::from(sealed)).await?;
        Ok(id)
    }

    /// Loads one snapshot manifest.
    pub async fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let data = match self.storage.get(&format!("snapshots/{id}")).await {
            Err(BackupError::NotFound(_)) => {
                return Err(BackupError::Invalid(format!("snapshot {id} not found")));
            }
            other => other?,
        };
        let json = self.key.open(&snapshot_aad(id), &data, &format!("snapshot {id}"))?;
        let snap: Snapshot =
            serde_json::from_slice(&json).map_err(|e| BackupError::corrupt(format!("snapshot {id}"), e))?;
        if snap.version > SNAPSHOT_VERSION {
            return Err(BackupError::UnsupportedVersion { found: snap.version, supported: SNAPSHOT_VERSION });
        }
        Ok(snap)
    }

    /// All snapshots, oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let names = self.storage.list("snapshots").await?;
        let mut out: Vec<(Id, Snapshot)> = futures::stream::iter(names)
            .map(|n| async move {
                let id = Id::from_hex(&n.name)?;
                Ok::<_, BackupError>((id, self.load_snapshot(&id).await?))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.1.timestamp().cmp(&b.1.timestamp()).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Resolves `latest`, a full id or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let all = self.list_snapshots().await?;
        if spec == "latest" {
            return all
                .into_iter()
                .last()
                .ok_or_else(|| BackupError::Invalid("the repository has no snapshots".into()));
        }
        let matches: Vec<_> = all.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec.to_lowercase())).collect();
        match matches.len() {
            0 => Err(BackupError::Invalid(format!("no snapshot matches {spec:?}"))),
            1 => Ok(matches.into_iter().next().expect("one")),
            n => Err(BackupError::Invalid(format!("{n} snapshots match {spec:?}; give more digits"))),
        }
    }

    /// Deletes a snapshot manifest (its data stays until `prune`).
    pub async fn delete_snapshot(&self, id: &Id) -> Result<()> {
        self.storage.delete(&format!("snapshots/{id}")).await
    }
}

/// Reads `config` as far as it can be read without a key: refuses a location without a
/// repository, an unknown format, a newer version, and KDF parameters out of bounds.
pub(crate) async fn read_header(storage: &Storage) -> Result<(ConfigHeader, Bytes)> {
    storage.ensure_bucket().await?;
    let bytes = match storage.get(CONFIG_KEY).await {
        Ok(b) => b,
        Err(BackupError::NotFound(_)) => return Err(BackupError::NotARepository(storage.url().to_string())),
        Err(e) => return Err(e),
    };
    let header: ConfigHeader = serde_json::from_slice(&bytes).map_err(|e| BackupError::corrupt(CONFIG_KEY, e))?;
    if header.format != "berth-repository" {
        return Err(BackupError::NotARepository(storage.url().to_string()));
    }
    if header.version > REPO_VERSION {
        return Err(BackupError::UnsupportedVersion { found: header.version, supported: REPO_VERSION });
    }
    if let Some(kdf) = &header.kdf {
        let probe = KeyFile {
            version: 1,
            created: String::new(),
            hostname: String::new(),
            kdf: kdf.algorithm.clone(),
            iterations: kdf.iterations,
            salt: String::new(),
            data: String::new(),
        };
        crypto::check_kdf(&probe, CONFIG_KEY)?;
    }
    Ok((header, bytes))
}

/// Opens the master key with `secret`: tries at most [`MAX_KEY_FILES`] key files, each with
/// its parameters bounded before the KDF runs. Returns the key and the name and parameters of
/// the key file that opened it.
pub(crate) async fn unlock(storage: &Storage, secret: &[u8]) -> Result<(MasterKey, (String, KdfParams))> {
    let keys = storage.list("keys").await?;
    if keys.len() > MAX_KEY_FILES {
        return Err(BackupError::Invalid(format!(
            "repository {} has {} key files under keys/; at most {MAX_KEY_FILES} are tried (each costs a key derivation): remove the ones that are not yours",
            storage.url(),
            keys.len()
        )));
    }
    for k in &keys {
        let name = format!("keys/{}", k.name);
        let data = storage.get(&name).await?;
        let file: KeyFile = serde_json::from_slice(&data).map_err(|e| BackupError::corrupt(&name, e))?;
        crypto::check_kdf(&file, &name)?;
        let params = KdfParams { algorithm: file.kdf.clone(), iterations: file.iterations };
        let secret = secret.to_vec();
        let n = name.clone();
        let opened = tokio::task::spawn_blocking(move || MasterKey::unwrap_key(&file, &secret, &n))
            .await
            .map_err(|e| BackupError::Aborted(e.to_string()))??;
        if let Some(key) = opened {
            return Ok((key, (name, params)));
        }
    }
    Err(BackupError::WrongKey { url: storage.url().to_string(), count: keys.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::StorageConfig;

    async fn fresh() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::connect(&StorageConfig::Local(dir.path().join("repo"))).await.unwrap();
        Repository::init(storage.clone(), b"secret").await.unwrap();
        (dir, storage)
    }

    /// A tree opened out of bytes read for it comes out as loaded alone; out of bytes that do
    /// not hold it (before or past them), it is an error naming the tree, never a panic.
    #[tokio::test]
    async fn a_tree_outside_the_bytes_read_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, root, _) = crate::backup::forty_dir_snapshot(tmp.path()).await;
        let (pack, e) = repo.index().read().unwrap().get(&root).unwrap();
        let start = e.offset as u64;
        let bytes = repo.storage().get_range(&pack::pack_key(&pack.id), start, e.length as u64).await.unwrap();
        assert_eq!(repo.open_tree(&root, &e, &bytes, start).unwrap(), repo.load_tree(&root).await.unwrap());
        for (region, from) in [(&bytes[..], start + 1), (&bytes[..bytes.len() - 1], start)] {
            let err = repo.open_tree(&root, &e, region, from).unwrap_err().to_string();
            assert!(err.contains(&root.to_hex()) && err.contains("outside"), "{err}");
        }
    }

    /// 41 trees of one tree pack come with one GET, each equal to its own load; ids missing
    /// from the index, and trees whose read fails, fail with their own error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trees_are_loaded_with_one_read_per_pack_region() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, root, mut ids) = crate::backup::forty_dir_snapshot(tmp.path()).await;
        let storage = repo.storage().clone();
        ids.push(root);

        let before = storage.gets();
        let loaded = repo.load_trees(ids.clone()).await;
        assert_eq!(storage.gets() - before, 1, "one GET for 41 trees of one tree pack");
        assert_eq!(loaded.len(), 41);
        for (id, tree) in loaded {
            assert_eq!(tree.unwrap(), repo.load_tree(&id).await.unwrap());
        }

        let unknown = Id([7; 32]);
        let (pack, _) = repo.index().read().unwrap().get(&ids[0]).unwrap();
        std::fs::remove_file(tmp.path().join("repo").join(pack::pack_key(&pack.id))).unwrap();
        let loaded = repo.load_trees(vec![ids[0], ids[1], unknown]).await;
        assert_eq!(loaded.len(), 3);
        for (id, tree) in loaded {
            let err = tree.unwrap_err().to_string();
            let named = if id == unknown { id.to_hex() } else { pack.id.to_hex() };
            assert!(err.contains(&named), "{id}: {err}");
        }
    }

    async fn edit_config(storage: &Storage, f: impl FnOnce(&mut serde_json::Value)) {
        let mut doc: serde_json::Value = serde_json::from_slice(&storage.get(CONFIG_KEY).await.unwrap()).unwrap();
        f(&mut doc);
        storage.put(CONFIG_KEY, Bytes::from(serde_json::to_vec_pretty(&doc).unwrap())).await.unwrap();
    }

    #[tokio::test]
    async fn config_is_readable_and_authenticated() {
        let (_dir, storage) = fresh().await;
        let text = String::from_utf8(storage.get(CONFIG_KEY).await.unwrap().to_vec()).unwrap();
        assert!(text.contains("\"version\": 2") && text.contains("\"mac\"") && text.contains("100000"), "{text}");
        Repository::open(storage.clone(), b"secret").await.unwrap();

        // Changing what the chunker does (or anything else) breaks the MAC.
        edit_config(&storage, |c| c["chunker"]["avg_size"] = 4096.into()).await;
        let err = Repository::open(storage.clone(), b"secret").await.unwrap_err();
        assert!(matches!(&err, BackupError::Unauthenticated { key, .. } if key == "config"), "{err}");
        assert!(err.to_string().contains("config failed authentication with this repository's key"), "{err}");
    }

    /// A forged config or key file asking for 10^9 PBKDF2 rounds is refused before any
    /// derivation: the error is `KdfRefused`, which only the bounds check returns (a derivation
    /// would run for minutes and then end in `Unauthenticated` or `WrongKey`).
    #[tokio::test]
    async fn kdf_parameters_are_bounded_before_deriving() {
        let (_dir, storage) = fresh().await;
        edit_config(&storage, |c| c["kdf"]["iterations"] = 1_000_000_000u32.into()).await;
        let err = Repository::open(storage.clone(), b"secret").await.unwrap_err();
        assert!(matches!(&err, BackupError::KdfRefused { key, .. } if key == "config"), "{err}");
        assert!(err.to_string().contains("1000000000 PBKDF2 rounds"), "{err}");

        let (_dir, storage) = fresh().await;
        let key_name = format!("keys/{}", storage.list("keys").await.unwrap()[0].name);
        let mut file: serde_json::Value = serde_json::from_slice(&storage.get(&key_name).await.unwrap()).unwrap();
        file["iterations"] = 1_000_000_000u32.into();
        storage.put(&key_name, Bytes::from(serde_json::to_vec(&file).unwrap())).await.unwrap();
        let err = Repository::open(storage.clone(), b"secret").await.unwrap_err();
        assert!(matches!(&err, BackupError::KdfRefused { key, .. } if *key == key_name), "{err}");
    }

    /// A key file with other (in-bounds) parameters than the authenticated config records is
    /// refused once the config is verified.
    #[tokio::test]
    async fn key_file_parameters_are_checked_under_the_mac() {
        let (_dir, storage) = fresh().await;
        let repo = Repository::open(storage.clone(), b"secret").await.unwrap();
        let mut config = repo.config().clone();
        config.kdf.iterations = 2 * crypto::KDF_ITERATIONS;
        // Sealed with the right key: only the recorded parameters differ from the key file's.
        let sealed = auth::seal(repo.key(), Kind::Config, CONFIG_KEY, &config);
        storage.put(CONFIG_KEY, Bytes::from(sealed)).await.unwrap();
        let err = Repository::open(storage.clone(), b"secret").await.unwrap_err();
        assert!(matches!(&err, BackupError::Unauthenticated { key, .. } if key.starts_with("keys/")), "{err}");
    }

    #[tokio::test]
    async fn too_many_key_files_are_refused_before_deriving() {
        let (_dir, storage) = fresh().await;
        for i in 0..MAX_KEY_FILES {
            storage.put(&format!("keys/forged-{i}"), Bytes::from_static(b"{}")).await.unwrap();
        }
        let err = Repository::open(storage, b"secret").await.unwrap_err();
        assert!(err.to_string().contains("at most 32 are tried"), "{err}");
    }
}

//! Whole operations on a repository: backup runs, forget, prune and check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::runtime::Handle;

use super::archiver;
use super::crypto::Id;
use super::error::{BackupError, Result};
use super::lock::RepoLock;
use super::pack::{self, BlobKind, PackBuilder, PackInfo};
use super::prefetch::MetadataPrefetch;
use super::repo::Repository;
use super::retention::{self, Decision, RetentionPolicy};
use super::snapshot::{Node, NodeKind, SNAPSHOT_VERSION, Snapshot, Summary, Tree};
use super::writer::{BlobWriter, WriterStats};

/// What a backup run is about.
#[derive(Debug, Clone)]
pub struct BackupSpec {
    /// `dir`, `postgres`, `rabbitmq`, `kubernetes`.
    pub kind: String,
    /// Path or server description (no credentials).
    pub source: String,
    pub tags: Vec<String>,
    /// Use this snapshot as the parent instead of the newest one of the same series;
    /// `Some(None)` disables the parent.
    pub parent: Option<Option<Id>>,
}

/// The snapshot a backup compares against: the one asked for, or the newest of the same
/// series (kind + source).
async fn find_parent(repo: &Repository, spec: &BackupSpec) -> Result<Option<(Id, Snapshot)>> {
    match spec.parent {
        Some(Some(id)) => Ok(Some((id, repo.load_snapshot(&id).await?))),
        Some(None) => Ok(None),
        None => {
            let probe = Snapshot {
                version: SNAPSHOT_VERSION,
                time: String::new(),
                hostname: String::new(),
                kind: spec.kind.clone(),
                source: spec.source.clone(),
                tags: vec![],
                root: Node::new("/", NodeKind::Dir),
                parent: None,
                summary: Summary::default(),
                program: String::new(),
            };
            let key = probe.group_key();
            Ok(repo.list_snapshots().await?.into_iter().rfind(|(_, s)| s.group_key() == key))
        }
    }
}

/// Runs a backup: takes a shared lock, finds the parent snapshot, runs `produce` in a blocking
/// thread with a writer, waits for all data and index files, then writes the snapshot.
pub async fn run_backup<F>(
    repo: &Repository,
    spec: BackupSpec,
    stats: Arc<WriterStats>,
    produce: F,
) -> Result<(Id, Snapshot)>
where
    F: FnOnce(&BlobWriter, &Handle, Option<archiver::Parent>) -> Result<Node> + Send + 'static,
{
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    // The lock (then a check that no prune changed the index since it was loaded) and the
    // search for the parent snapshot are independent round trips: run them together.
    let locked = async {
        let lock = RepoLock::acquire(repo, false, &format!("backup {}", spec.kind)).await?;
        match repo.refresh_index().await {
            Ok(_) => Ok(lock),
            Err(e) => {
                let _ = lock.release().await;
                Err(e)
            }
        }
    };
    let (lock, parent) = tokio::join!(locked, find_parent(repo, &spec));
    let lock = lock?;
    let parent = match parent {
        Ok(p) => p,
        Err(e) => {
            let _ = lock.release().await;
            return Err(e);
        }
    };
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "lock acquired, parent snapshot found");
    let result = async {
        let parent_arg = parent.as_ref().map(|(_, s)| archiver::Parent { root: s.root.clone() });
        let handle = Handle::current();
        let r = repo.clone();
        let st = stats.clone();
        let root = tokio::task::spawn_blocking(move || {
            let writer = BlobWriter::new(&r, handle.clone(), st);
            let root = produce(&writer, &handle, parent_arg)?;
            tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "source read");
            writer.finish()?;
            tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "uploads finished");
            Ok::<_, BackupError>(root)
        })
        .await
        .map_err(|e| BackupError::Aborted(format!("backup thread: {e}")))??;
        let s = &stats;
        let summary = Summary {
            files: s.files.load(Ordering::Relaxed),
            dirs: s.dirs.load(Ordering::Relaxed),
            files_unchanged: s.files_unchanged.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            bytes_total: s.bytes_total.load(Ordering::Relaxed),
            blobs_new: s.blobs_new.load(Ordering::Relaxed),
            bytes_new: s.bytes_new.load(Ordering::Relaxed),
            bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            time: time.to_string(),
            hostname: super::hostname(),
            kind: spec.kind,
            source: spec.source,
            tags: spec.tags,
            root,
            parent: parent.map(|(id, _)| id),
            summary,
            program: format!("berth {}", env!("CARGO_PKG_VERSION")),
        };
        let id = repo.save_snapshot(&snap).await?;
        Ok::<_, BackupError>((id, snap))
    }
    .await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

/// Backs up a directory. A `prefetch` started on it (see [`MetadataPrefetch`]) is stopped
/// when the walk begins.
pub async fn backup_directory(
    repo: &Repository,
    path: &Path,
    tags: Vec<String>,
    stats: Arc<WriterStats>,
    prefetch: Option<MetadataPrefetch>,
) -> Result<(Id, Snapshot)> {
    let abs: PathBuf =
        std::fs::canonicalize(path).map_err(|e| BackupError::io(format!("cannot read {}", path.display()), e))?;
    let spec = BackupSpec { kind: "dir".into(), source: abs.display().to_string(), tags, parent: None };
    let r = repo.clone();
    run_backup(repo, spec, stats, move |w, h, parent| {
        if let Some(p) = prefetch {
            tracing::debug!(entries = p.stop(), "metadata prefetched");
        }
        archiver::backup_dir(w, &r, h, &abs, parent)
    })
    .await
}

/// Result of `forget`.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
}

/// Applies a retention policy to every series (kind + source) and deletes the snapshot
/// manifests it does not keep (data stays until [`prune`]). The newest snapshot of each series
/// is always kept. With `dry_run` nothing is deleted.
pub async fn forget(
    repo: &Repository,
    policy: &RetentionPolicy,
    dry_run: bool,
) -> Result<(ForgetReport, BTreeMap<String, Vec<Decision>>)> {
    if policy.is_empty() {
        return Err(BackupError::Invalid(
            "no retention rule given (use --keep-last/--keep-daily/--keep-weekly/--keep-monthly)".into(),
        ));
    }
    let snaps = repo.list_snapshots().await?;
    let mut series: BTreeMap<String, Vec<(Id, jiff::Timestamp)>> = BTreeMap::new();
    for (id, s) in &snaps {
        series.entry(s.group_key()).or_default().push((*id, s.timestamp()));
    }
    let decisions = retention::apply_grouped(policy, &series, &jiff::tz::TimeZone::UTC);
    let mut report = ForgetReport { kept: vec![], removed: vec![] };
    for d in decisions.values().flatten() {
        if d.keep {
            report.kept.push(d.id.to_hex());
        } else {
            report.removed.push(d.id.to_hex());
            if !dry_run {
                repo.delete_snapshot(&d.id).await?;
            }
        }
    }
    Ok((report, decisions))
}

/// Trees a walk of `check` or `prune` holds at once: it takes them from the front of its queue
/// (breadth first), so that trees close together in a pack share reads while memory does
/// not grow with the width of a level.
const TREES_AT_ONCE: usize = 1024;

/// Walks the trees reachable from `roots` breadth first, [`TREES_AT_ONCE`] at a time, each
/// once: `seen` gets every tree id (a tree already in it is skipped). `visit` gets each tree,
/// or the error that kept it from being read; its error ends the walk.
async fn walk_trees(
    repo: &Repository,
    roots: Vec<Id>,
    seen: &mut HashSet<Id>,
    mut visit: impl FnMut(Id, Result<&Tree>) -> Result<()>,
) -> Result<()> {
    let mut todo = roots;
    while !todo.is_empty() {
        let ids: Vec<Id> = todo.drain(..todo.len().min(TREES_AT_ONCE)).filter(|id| seen.insert(*id)).collect();
        for (id, tree) in repo.load_trees(ids).await {
            match tree {
                Ok(tree) => {
                    visit(id, Ok(&tree))?;
                    todo.extend(tree.nodes.iter().filter_map(|n| n.subtree));
                }
                Err(e) => visit(id, Err(e))?,
            }
        }
    }
    Ok(())
}

/// Collects every blob reachable from the snapshots (trees and data). Fails when a tree
/// cannot be read.
async fn used_blobs(repo: &Repository, snaps: &[(Id, Snapshot)]) -> Result<HashSet<Id>> {
    let (mut used, mut data) = (HashSet::new(), HashSet::new());
    let roots = snaps.iter().filter_map(|(_, s)| s.root.subtree).collect();
    walk_trees(repo, roots, &mut used, |_, tree| {
        data.extend(tree?.nodes.iter().flat_map(|n| n.content.iter().copied()));
        Ok(())
    })
    .await?;
    used.extend(data);
    Ok(used)
}

/// Options of [`prune`].
#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Repack a pack when more than this fraction of it is unused.
    pub repack_threshold: f64,
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self { repack_threshold: 0.25, dry_run: false }
    }
}

/// Result of `prune`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub packs_before: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_written: usize,
    pub orphan_packs_deleted: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub index_files_replaced: usize,
    pub uploads_aborted: usize,
}

/// Removes data no snapshot references. Holds an exclusive lock, so it cannot run beside a
/// backup. Crash-safe by ordering: repacked data and the new index are written before the old
/// index files are deleted, and packs are deleted last; an interrupted prune leaves only
/// unreferenced packs, which the next prune removes.
pub async fn prune(repo: &Repository, opts: PruneOptions) -> Result<PruneReport> {
    let lock = RepoLock::acquire(repo, true, "prune").await?;
    let result = prune_locked(repo, opts).await;
    let released = lock.release().await;
    let r = result?;
    released?;
    Ok(r)
}

async fn prune_locked(repo: &Repository, opts: PruneOptions) -> Result<PruneReport> {
    let old_index_files = repo.load_index().await?;
    let snaps = repo.list_snapshots().await?;
    let used = used_blobs(repo, &snaps).await?;
    let contents = repo.index().read().expect("index").pack_contents();
    {
        let index = repo.index().read().expect("index");
        if let Some(missing) = used.iter().find(|id| !index.contains(id)) {
            return Err(BackupError::corrupt(
                format!("blob {missing}"),
                "referenced by a snapshot but not in the index; nothing pruned (run `check`)",
            ));
        }
    }
    let stored: HashMap<String, u64> = repo
        .storage()
        .list("data")
        .await?
        .into_iter()
        .map(|o| (o.name.rsplit('/').next().unwrap_or("").to_string(), o.size))
        .collect();
    let mut report = PruneReport { packs_before: stored.len(), ..Default::default() };
    let mut keep: Vec<PackInfo> = Vec::new();
    let mut delete: Vec<PackInfo> = Vec::new();
    let mut repack: Vec<PackInfo> = Vec::new();
    let mut seen_blobs: HashSet<Id> = HashSet::new();
    for p in contents {
        if !stored.contains_key(&p.id.to_hex()) {
            if p.blobs.iter().any(|b| used.contains(&b.id)) {
                return Err(BackupError::corrupt(
                    format!("pack {}", pack::pack_key(&p.id)),
                    "indexed and needed but missing from storage; nothing pruned (run `check`)",
                ));
            }
            continue;
        }
        let used_bytes: u64 = p.blobs.iter().filter(|b| used.contains(&b.id)).map(|b| b.length as u64).sum();
        let dup = p.blobs.iter().any(|b| seen_blobs.contains(&b.id));
        if used_bytes == 0 {
            report.blobs_removed += p.blobs.len();
            delete.push(p);
        } else if dup || (1.0 - used_bytes as f64 / p.size as f64) > opts.repack_threshold {
            repack.push(p);
        } else {
            seen_blobs.extend(p.blobs.iter().map(|b| b.id));
            keep.push(p);
        }
    }
    let known: HashSet<String> = keep.iter().chain(&delete).chain(&repack).map(|p| p.id.to_hex()).collect();
    let orphans: Vec<(String, u64)> =
        stored.iter().filter(|(k, _)| !known.contains(*k)).map(|(k, v)| (k.clone(), *v)).collect();
    report.orphan_packs_deleted = orphans.len();
    report.packs_deleted = delete.len();
    report.packs_repacked = repack.len();
    report.bytes_freed = delete.iter().map(|p| p.size).sum::<u64>() + orphans.iter().map(|(_, s)| *s).sum::<u64>();
    if opts.dry_run {
        return Ok(report);
    }

    // 1. Repack: copy still-used blobs (verified) into new packs.
    let mut new_packs: Vec<PackInfo> = Vec::new();
    let mut builder = PackBuilder::default();
    let pack_size = repo.write_options().pack_size;
    for p in &repack {
        let data = repo.storage().get(&pack::pack_key(&p.id)).await?;
        for b in &p.blobs {
            if !used.contains(&b.id) || seen_blobs.contains(&b.id) {
                if !used.contains(&b.id) {
                    report.blobs_removed += 1;
                }
                continue;
            }
            let sealed = data
                .get(b.offset as usize..(b.offset + b.length) as usize)
                .ok_or_else(|| BackupError::corrupt(format!("pack {}", p.id), "blob beyond end"))?;
            pack::open_blob(repo.key(), b.kind, &b.id, sealed, b.raw_len)?;
            builder.add(b.kind, b.id, sealed, b.raw_len);
            seen_blobs.insert(b.id);
            if builder.len() >= pack_size {
                let (bytes, info) = std::mem::take(&mut builder).finish(repo.key());
                repo.storage().put(&pack::pack_key(&info.id), bytes).await?;
                new_packs.push(info);
            }
        }
        report.bytes_freed += p.size;
    }
    if !builder.is_empty() {
        let (bytes, info) = builder.finish(repo.key());
        repo.storage().put(&pack::pack_key(&info.id), bytes).await?;
        new_packs.push(info);
    }
    report.packs_written = new_packs.len();

    // 2. New index covering every pack that stays.
    let all: Vec<PackInfo> = keep.into_iter().chain(new_packs).collect();
    for chunk in all.chunks(4096) {
        repo.write_index(chunk).await?;
    }
    // 3. Old index files, 4. unreferenced packs.
    report.index_files_replaced = old_index_files.len();
    repo.storage().delete_many(old_index_files.iter().map(|n| format!("index/{n}")).collect()).await?;
    let mut doomed: Vec<String> = delete.iter().chain(&repack).map(|p| pack::pack_key(&p.id)).collect();
    doomed.extend(orphans.iter().map(|(k, _)| format!("data/{}/{}", &k[..2.min(k.len())], k)));
    repo.storage().delete_many(doomed).await?;
    report.uploads_aborted = repo.storage().abort_stale_uploads("data", Duration::from_secs(0)).await?;
    repo.load_index().await?;
    Ok(report)
}

/// Result of `check`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub trees_checked: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    /// Objects whose server-side encryption was read back (only with SSE configured).
    pub encryption_checked: usize,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Verifies the repository structure: every snapshot readable, every tree readable and
/// authentic, every backup manifest authentic, every referenced blob indexed, every indexed
/// pack present with the right size.
/// With `read_data`, also downloads every pack and verifies every blob. With server-side
/// encryption configured, every object's stored encryption is read back and compared.
pub async fn check(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let lock = RepoLock::acquire(repo, false, "check").await?;
    let result = check_locked(repo, read_data).await;
    let released = lock.release().await;
    let r = result?;
    released?;
    Ok(r)
}

async fn check_locked(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    repo.load_index().await?;
    let stored: HashMap<String, u64> = repo
        .storage()
        .list("data")
        .await?
        .into_iter()
        .map(|o| (o.name.rsplit('/').next().unwrap_or("").to_string(), o.size))
        .collect();
    let contents = repo.index().read().expect("index").pack_contents();
    report.packs = contents.len();
    report.blobs = repo.index().read().expect("index").blob_count();
    let mut indexed: HashSet<String> = HashSet::new();
    for p in &contents {
        let name = p.id.to_hex();
        match stored.get(&name) {
            None => report.errors.push(format!("pack {} is indexed but missing from storage", pack::pack_key(&p.id))),
            Some(size) if *size != p.size => report.errors.push(format!(
                "pack {}: {} bytes in storage, the index says {} (truncated or damaged)",
                pack::pack_key(&p.id),
                size,
                p.size
            )),
            Some(_) => {}
        }
        indexed.insert(name);
    }
    for name in stored.keys() {
        if !indexed.contains(name) {
            report.warnings.push(format!(
                "pack {name} is not indexed (left by an interrupted backup or prune; `prune` removes it)"
            ));
        }
    }
    // Snapshots and trees.
    let names = repo.storage().list("snapshots").await?;
    let mut roots = Vec::new();
    for n in names {
        match Id::from_hex(&n.name) {
            Ok(id) => match repo.load_snapshot(&id).await {
                Ok(s) => {
                    report.snapshots += 1;
                    roots.extend(s.root.subtree);
                }
                Err(e) => report.errors.push(format!("snapshot {}: {e}", n.name)),
            },
            Err(_) => report.warnings.push(format!("unexpected object snapshots/{}", n.name)),
        }
    }
    // Manifests that fail authentication would be refused by every reader.
    let (_, refused) = super::resources::scan_manifests(repo).await?;
    report.errors.extend(refused.into_iter().map(|r| r.reason));
    walk_trees(repo, roots, &mut HashSet::new(), |id, tree| {
        report.trees_checked += 1;
        let tree = match tree {
            Ok(tree) => tree,
            Err(e) => {
                report.errors.push(format!("tree {id}: {e}"));
                return Ok(());
            }
        };
        let index = repo.index().read().expect("index");
        for n in &tree.nodes {
            for c in &n.content {
                match index.get(c) {
                    None => {
                        report.errors.push(format!("file {:?} in tree {id}: chunk {c} is not in the index", n.name))
                    }
                    Some((_, e)) if e.kind != BlobKind::Data => {
                        report.errors.push(format!("chunk {c} is indexed as a tree"))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    })
    .await?;
    check_server_side_encryption(repo, &mut report).await?;
    if read_data {
        let results: Vec<(String, u64, Vec<String>)> = futures::stream::iter(contents)
            .filter(|p| std::future::ready(stored.get(&p.id.to_hex()) == Some(&p.size)))
            .map(|p| async move {
                let key = pack::pack_key(&p.id);
                let data = match repo.storage().get(&key).await {
                    Ok(d) => d,
                    Err(e) => return (key, 0, vec![e.to_string()]),
                };
                let len = data.len() as u64;
                let r = repo.clone();
                let errs = tokio::task::spawn_blocking(move || verify_pack(&r, &p, &data))
                    .await
                    .unwrap_or_else(|e| vec![format!("verifier panicked: {e}")]);
                (key, len, errs)
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for (key, len, errs) in results {
            report.packs_read += 1;
            report.bytes_read += len;
            report.errors.extend(errs.into_iter().map(|e| format!("{key}: {e}")));
        }
    }
    Ok(report)
}

/// `check --read-data` limited to `snapshots`: every tree reachable from them readable and
/// authentic, and every pack holding one of their blobs present, of the indexed size,
/// downloaded and each of its blobs verified. What a restore drill checks of its backup.
pub async fn check_snapshot_data(repo: &Repository, snapshots: &[Id]) -> Result<CheckReport> {
    let lock = RepoLock::acquire(repo, false, "check").await?;
    let result = check_snapshot_data_locked(repo, snapshots).await;
    let released = lock.release().await;
    let r = result?;
    released?;
    Ok(r)
}

async fn check_snapshot_data_locked(repo: &Repository, snapshots: &[Id]) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    repo.load_index().await?;
    let mut todo = Vec::new();
    for id in snapshots {
        match repo.load_snapshot(id).await {
            Ok(s) => {
                report.snapshots += 1;
                todo.extend(s.root.subtree);
            }
            Err(e) => report.errors.push(format!("snapshot {id}: {e}")),
        }
    }
    let (mut blobs, mut data) = (HashSet::new(), HashSet::new());
    walk_trees(repo, todo, &mut blobs, |id, tree| {
        report.trees_checked += 1;
        match tree {
            Ok(tree) => data.extend(tree.nodes.iter().flat_map(|n| n.content.iter().copied())),
            Err(e) => report.errors.push(format!("tree {id}: {e}")),
        }
        Ok(())
    })
    .await?;
    blobs.extend(data);
    let stored: HashMap<String, u64> = repo
        .storage()
        .list("data")
        .await?
        .into_iter()
        .map(|o| (o.name.rsplit('/').next().unwrap_or("").to_string(), o.size))
        .collect();
    let contents: Vec<PackInfo> = repo
        .index()
        .read()
        .expect("index")
        .pack_contents()
        .into_iter()
        .filter(|p| p.blobs.iter().any(|b| blobs.contains(&b.id)))
        .collect();
    report.packs = contents.len();
    report.blobs = blobs.len();
    let results: Vec<(String, u64, Vec<String>)> = futures::stream::iter(contents)
        .map(|p| {
            let size = stored.get(&p.id.to_hex()).copied();
            async move {
                let key = pack::pack_key(&p.id);
                match size {
                    None => return (key, 0, vec!["indexed but missing from storage".to_string()]),
                    Some(size) if size != p.size => {
                        return (
                            key,
                            0,
                            vec![format!("{size} bytes in storage, the index says {} (truncated or damaged)", p.size)],
                        );
                    }
                    Some(_) => {}
                }
                let data = match repo.storage().get(&key).await {
                    Ok(d) => d,
                    Err(e) => return (key, 0, vec![e.to_string()]),
                };
                let len = data.len() as u64;
                let r = repo.clone();
                let errs = tokio::task::spawn_blocking(move || verify_pack(&r, &p, &data))
                    .await
                    .unwrap_or_else(|e| vec![format!("verifier panicked: {e}")]);
                (key, len, errs)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for (key, len, errs) in results {
        report.packs_read += usize::from(len > 0);
        report.bytes_read += len;
        report.errors.extend(errs.into_iter().map(|e| format!("pack {key}: {e}")));
    }
    Ok(report)
}

/// Reads back (HeadObject) the server-side encryption of every object of the format (locks
/// excepted: they live minutes) and reports those stored without the configured one: written
/// before it was configured, or by a server or bucket policy that dropped it.
async fn check_server_side_encryption(repo: &Repository, report: &mut CheckReport) -> Result<()> {
    let Some(expected) = repo.storage().server_side_encryption() else {
        return Ok(());
    };
    let mut keys = vec![super::repo::CONFIG_KEY.to_string()];
    for dir in ["keys", "index", "snapshots", "backups", "data"] {
        keys.extend(repo.storage().list(dir).await?.into_iter().map(|o| format!("{dir}/{}", o.name)));
    }
    let found: Vec<(String, Result<Option<super::ObjectEncryption>>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let e = repo.storage().encryption(&key).await;
            (key, e)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (key, encryption) in found {
        // An object removed since the listing (a concurrent forget) has nothing to check.
        if let Some(encryption) = encryption? {
            report.encryption_checked += 1;
            if let Some(why) = expected.mismatch(&encryption) {
                report.errors.push(format!(
                    "object {key}: {why} (copy it onto itself with the encryption, e.g. `aws s3 cp --sse`, or check the bucket policy)"
                ));
            }
        }
    }
    Ok(())
}

fn verify_pack(repo: &Repository, p: &PackInfo, data: &Bytes) -> Vec<String> {
    let mut errs = Vec::new();
    let header = match pack::parse_pack(repo.key(), &p.id, data) {
        Ok(h) => h,
        Err(e) => return vec![e.to_string()],
    };
    let by_id: HashMap<Id, &pack::PackedBlob> = header.iter().map(|b| (b.id, b)).collect();
    for b in &p.blobs {
        match by_id.get(&b.id) {
            Some(h) if **h == *b => {}
            _ => errs.push(format!("blob {} in the index does not match the pack header", b.id)),
        }
    }
    for b in &header {
        let sealed = &data[b.offset as usize..(b.offset + b.length) as usize];
        if let Err(e) = pack::open_blob(repo.key(), b.kind, &b.id, sealed, b.raw_len) {
            errs.push(e.to_string());
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::StorageConfig;
    use crate::backup::storage::Storage;

    async fn open(dir: &Path) -> Repository {
        let storage = Storage::connect(&StorageConfig::Local(dir.to_path_buf())).await.unwrap();
        Repository::open(storage, b"secret").await.unwrap()
    }

    /// Walks wider than [`TREES_AT_ONCE`] see every tree: check counts them all, prune
    /// keeps every blob they reference, and the snapshot's data check agrees.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tree_walks_wider_than_one_load_see_every_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo_dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
        let dirs = TREES_AT_ONCE + 76;
        for i in 0..dirs {
            std::fs::create_dir_all(src.join(format!("d{i:04}"))).unwrap();
            std::fs::write(src.join(format!("d{i:04}/f")), crate::backup::test_bytes(i as u64, 64)).unwrap();
        }
        let storage = Storage::connect(&StorageConfig::Local(repo_dir)).await.unwrap();
        let repo = Repository::init(storage, b"secret").await.unwrap();
        let (id, _) = backup_directory(&repo, &src, vec![], Arc::default(), None).await.unwrap();

        let report = check(&repo, false).await.unwrap();
        assert_eq!((report.trees_checked, report.errors.len()), (dirs + 1, 0), "{:?}", report.errors);
        let report = check_snapshot_data(&repo, &[id]).await.unwrap();
        assert_eq!((report.trees_checked, report.errors.len()), (dirs + 1, 0), "{:?}", report.errors);
        let pruned = prune(&repo, PruneOptions::default()).await.unwrap();
        assert_eq!(pruned.blobs_removed, 0);
        let report = check(&repo, true).await.unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    /// A tree deeper than the soft limit of open files backs up and restores whole: the walk
    /// holds a descriptor per level, and raises the limit to the hard one. (Nextest runs each
    /// test in a process of its own, so the lowered limit stays here.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_deeper_than_the_soft_open_files_limit_backs_up() {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscalls with a valid, initialised struct.
        unsafe { assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0) };
        if limit.rlim_max < 1024 {
            eprintln!("hard limit of open files {} is too low to test", limit.rlim_max);
            return;
        }
        limit.rlim_cur = 256;
        // SAFETY: as above.
        unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0) };
        let tmp = tempfile::tempdir().unwrap();
        let (repo_dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
        let deep: PathBuf = std::iter::repeat_n("d", 400).collect();
        std::fs::create_dir_all(src.join(&deep)).unwrap();
        std::fs::write(src.join(&deep).join("f"), b"at the bottom").unwrap();
        let storage = Storage::connect(&StorageConfig::Local(repo_dir)).await.unwrap();
        let repo = Repository::init(storage, b"secret").await.unwrap();
        let (_, snap) = backup_directory(&repo, &src, vec![], Arc::default(), None).await.unwrap();
        assert_eq!((snap.summary.files, snap.summary.dirs), (1, 401));
        let target = tmp.path().join("restored");
        crate::backup::archiver::restore_dir(&repo, &snap.root, &target, 4, &|_| {}).await.unwrap();
        assert_eq!(std::fs::read(target.join(&deep).join("f")).unwrap(), b"at the bottom");
    }

    /// A writer that opened the repository before a prune removed data must not refer to
    /// that data: once locked it reloads the index and uploads the content again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backup_after_a_concurrent_prune_uploads_pruned_data_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo_dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
        std::fs::create_dir_all(&src).unwrap();
        let content = crate::backup::test_bytes(3, 2_400_000);
        std::fs::write(src.join("data.bin"), &content).unwrap();
        let storage = Storage::connect(&StorageConfig::Local(repo_dir.clone())).await.unwrap();
        let first = Repository::init(storage, b"secret").await.unwrap();
        let (id, _) = backup_directory(&first, &src, vec![], Arc::default(), None).await.unwrap();

        let stale = open(&repo_dir).await; // its index still lists the blobs of `id`
        first.delete_snapshot(&id).await.unwrap();
        let report = prune(&first, PruneOptions::default()).await.unwrap();
        assert!(report.packs_deleted > 0, "{report:?}");

        let (_, snap) = backup_directory(&stale, &src, vec![], Arc::default(), None).await.unwrap();
        assert!(snap.summary.bytes_uploaded as usize > content.len() / 2, "{:?}", snap.summary);
        let check = check(&open(&repo_dir).await, true).await.unwrap();
        assert!(check.ok(), "{check:?}");
    }

    /// A large file that changed is chunked with its old chunk list (confirmed by hash, on
    /// the large-file threads): its chunks must be exactly those of a scan from scratch, and
    /// the bulk of it must have been confirmed rather than scanned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_large_file_gets_the_chunks_of_a_full_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo_dir, src) = (tmp.path().join("repo"), tmp.path().join("src"));
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let noise = crate::backup::test_bytes(5, 40 << 20);
        // Compressible and random pages, so that cut points come from the content.
        let mut content: Vec<u8> = noise
            .chunks(8192)
            .flat_map(|page| if page[0] < 100 { page.to_vec() } else { page.iter().map(|b| b'a' + b % 4).collect() })
            .collect();
        std::fs::write(src.join("sub/disk.img"), &content).unwrap();
        std::fs::write(src.join("small.txt"), b"small").unwrap();
        let storage = Storage::connect(&StorageConfig::Local(repo_dir.clone())).await.unwrap();
        let repo = Repository::init(storage, b"secret").await.unwrap();
        backup_directory(&repo, &src, vec![], Arc::default(), None).await.unwrap();

        for k in 0..3 {
            let at = 1_000_003 + k * 12_000_011;
            content[at..at + 65_536].copy_from_slice(&noise[..65_536]);
        }
        content.splice(20_000_000..20_000_000, noise[..12_345].iter().copied());
        std::fs::write(src.join("sub/disk.img"), &content).unwrap();
        let stats = Arc::new(WriterStats::default());
        let (_, snap) = backup_directory(&repo, &src, vec![], stats.clone(), None).await.unwrap();

        let node = archiver::lookup(&repo, &snap.root, "sub/disk.img").await.unwrap();
        let chunker = crate::backup::chunker::Chunker::new(repo.config().chunker, repo.key().chunker_seed);
        let mut expected = Vec::new();
        chunker
            .chunks::<_, std::io::Error>(
                &content[..],
                None,
                |d| repo.key().blob_id(d),
                |_, id| {
                    expected.push(id);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(node.content, expected);
        assert_eq!(archiver::read_file(&repo, &node).await.unwrap(), content);
        let confirmed = stats.bytes_confirmed.load(Ordering::Relaxed);
        // Four changes spoil at most two chunks (of at most 2 MiB) each.
        assert!(confirmed > content.len() as u64 / 2, "only {confirmed} bytes confirmed");
        let check = check(&open(&repo_dir).await, true).await.unwrap();
        assert!(check.ok(), "{check:?}");
    }

    /// An index larger than its memory bound (here 300 blobs) lives in a spill file: a backup
    /// that spills as it adds, an unchanged re-run that loads the spilled index, a restore
    /// and a full check all work from it, and the restore is byte-identical.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spilled_index_serves_backup_rerun_restore_and_check() {
        use crate::backup::index::IndexLimits;
        let tmp = tempfile::tempdir().unwrap();
        let (repo_dir, src, target) = (tmp.path().join("repo"), tmp.path().join("src"), tmp.path().join("restored"));
        let mut files = Vec::new();
        for i in 0..1_500u64 {
            let path = src.join(format!("d{}/e{}/f{i}.dat", i % 7, i % 3));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let data = crate::backup::test_bytes(i, 200 + (i as usize * 37) % 3_000);
            std::fs::write(&path, &data).unwrap();
            files.push((path, data));
        }
        let small = IndexLimits { memory_blobs: 300, merge_at: 64 };
        let storage = Storage::connect(&StorageConfig::Local(repo_dir.clone())).await.unwrap();
        let mut repo = Repository::init(storage, b"secret").await.unwrap();
        repo.set_index_limits(small);
        repo.load_index().await.unwrap();
        backup_directory(&repo, &src, vec![], Arc::default(), None).await.unwrap();
        assert!(repo.index().read().unwrap().spilled_blobs() > 1_000, "the backup's blobs spilled");

        let mut again = open(&repo_dir).await;
        again.set_index_limits(small);
        again.load_index().await.unwrap();
        assert!(again.index().read().unwrap().spilled_blobs() > 1_000, "the loaded index spilled");
        let stats = Arc::new(WriterStats::default());
        let (_, snap) = backup_directory(&again, &src, vec![], stats.clone(), None).await.unwrap();
        assert_eq!(stats.files_unchanged.load(Ordering::Relaxed), 1_500, "every file found in the spilled index");
        assert_eq!(stats.blobs_new.load(Ordering::Relaxed), 0);

        crate::backup::restore::restore_dir(&again, &snap.root, &target, 4, &|_| {}).await.unwrap();
        for (path, data) in &files {
            let restored = target.join(path.strip_prefix(&src).unwrap());
            assert!(std::fs::read(&restored).unwrap() == *data, "{} differs", restored.display());
        }
        let report = check(&again, true).await.unwrap();
        assert!(report.ok() && report.blobs > 1_500, "{report:?}");
    }
}

//! Offsite replication: make a second location hold the same repository (DESIGN.md "Backups":
//! "Offsite copies replicate the same objects to a second location").
//!
//! The repository is almost entirely immutable and content-addressed (packs are named by the
//! BLAKE3 hash of their bytes; index files, snapshots and keys by random ids; `config` never
//! changes), so replication is a one-way sync by name and size:
//!
//! * **What is copied**: every object under `data/`, `index/`, `snapshots/`, `keys/`,
//!   `backups/` and the `config` object that is missing at the target or has a different size
//!   there. The manifests under `backups/` are the only objects rewritten in place
//!   ([`resources::save_manifest`](super::resources::save_manifest)), so for them equal sizes
//!   are not trusted and the contents are compared. Lock objects (`locks/`, see
//!   [`lock`](super::lock)) are never copied and never deleted. Objects outside these
//!   directories are not part of the format and are ignored.
//! * **Order**: the copy runs in phases, each finished before the next starts — packs, index
//!   files, snapshots, keys, `config`, manifests — the same order in which a backup writes
//!   them. A reader of the target (a disaster-recovery restore while a replication runs, or one
//!   that was interrupted) therefore never sees a snapshot whose index or packs are missing,
//!   nor a manifest whose snapshot is missing, and the target only becomes a repository
//!   (`config`) once its keys are there. The source is *listed* in the opposite order
//!   (manifests first, packs last) so that everything a listed snapshot needs, which was
//!   written before it, is in the later listings.
//! * **Deletion** (only with [`ReplicateOptions::delete_extraneous`], after retention ran at
//!   the source): target objects the source no longer has are removed after every copy
//!   succeeded, in the reverse order (manifests, snapshots, index files, packs, keys), which is
//!   the order `forget`/`prune` use, so a reader again never sees a snapshot without its data.
//!   `config` is never deleted.
//! * **Safety**: nothing at all happens when the source has no `config` (an empty, wrong or
//!   unreachable prefix) or when the target holds a *different* repository (its `config`
//!   differs, other than being this repository's in an older format: a replica of a source
//!   migrated since, whose `config` and manifests the next run replaces). Deletion is refused — before anything is copied — when the source listing looks
//!   incomplete: no key, or no pack / index file / snapshot at the source while the target has
//!   some (retention always keeps the newest snapshot of every series, so a repository emptied
//!   of them is not a result of retention).
//! * **Concurrency with writers at the source**: by default a shared lock ([`RepoLock`], with
//!   its MAC) is taken at the source for the whole run, so `prune` — which needs an
//!   exclusive lock — cannot repack under it, while backups may continue. Objects that vanish
//!   between listing and copying (a manifest or snapshot removed by `forget`) are skipped and
//!   counted as [`ReplicateReport::vanished`]. Without the lock (read-only credentials at the
//!   source), a concurrent `prune` can leave the target with an index file pointing at a pack
//!   it lacks; the next run repairs that.
//! * **Integrity**: a pack's name is the BLAKE3 hash of its bytes; with
//!   [`ReplicateOptions::verify_packs`] every copied pack is hashed and a damaged one fails the
//!   run instead of spreading to the offsite copy. Everything else is authenticated with the
//!   repository key (encrypted, or carrying a MAC): the source is an open [`Repository`], so
//!   its `config` was verified before anything is copied; readers of the target verify the
//!   rest.
//!
//! **Memory**: [`Storage::put`] takes a whole object (multipart uploads are cut from it
//! internally) and has no streaming form, so reading in ranges with
//! [`Storage::get_range`] would not lower the peak: each object in flight is held in memory
//! once. The total held at any time is bounded by [`ReplicateOptions::memory_budget`] (a
//! semaphore weighted by object size); an object larger than the budget is copied alone.
//! Packs are 16 MiB by default, so the default budget lets 8 copies run at once.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::crypto::Id;
use super::error::{BackupError, Result};
use super::lock::RepoLock;
use super::repo::Repository;
use super::storage::Storage;

/// Options of [`replicate`].
#[derive(Debug, Clone, Copy)]
pub struct ReplicateOptions {
    /// Delete target objects the source no longer has (after retention ran at the source).
    pub delete_extraneous: bool,
    /// Objects copied (or deleted) in parallel; 0 means the default, 8.
    pub concurrency: usize,
    /// Upper bound on the bytes of objects held in memory at once; 0 means the default,
    /// 256 MiB.
    pub memory_budget: u64,
    /// Hold a shared lock at the source while replicating (needs write access there).
    pub lock_source: bool,
    /// Hash every copied pack and fail when it does not match its name.
    pub verify_packs: bool,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        Self {
            delete_extraneous: false,
            concurrency: DEFAULT_CONCURRENCY,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            lock_source: true,
            verify_packs: true,
        }
    }
}

/// Default of [`ReplicateOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Default of [`ReplicateOptions::memory_budget`].
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 * 1024 * 1024;

/// What [`replicate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicateReport {
    /// Objects written to the target.
    pub copied: usize,
    /// Bytes written to the target.
    pub bytes: u64,
    /// Objects deleted at the target.
    pub deleted: usize,
    /// Source objects already present (same size; same content for manifests) at the target.
    pub skipped: usize,
    /// Source objects that disappeared between listing and copying (removed by `forget`).
    pub vanished: usize,
}

/// The kinds of objects, in copy order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Packs,
    Index,
    Snapshots,
    Keys,
    Config,
    Manifests,
}

impl Class {
    const COPY_ORDER: [Class; 6] =
        [Class::Packs, Class::Index, Class::Snapshots, Class::Keys, Class::Config, Class::Manifests];
    /// Listing order: whatever an object needs was written before it, so list it after it.
    const LIST_ORDER: [Class; 6] =
        [Class::Manifests, Class::Snapshots, Class::Keys, Class::Config, Class::Index, Class::Packs];
    /// Deletion order (`config` is never deleted).
    const DELETE_ORDER: [Class; 5] = [Class::Manifests, Class::Snapshots, Class::Index, Class::Packs, Class::Keys];

    /// The directory listed for this class (`None` for the single `config` object).
    fn dir(self) -> Option<&'static str> {
        match self {
            Class::Packs => Some("data"),
            Class::Index => Some("index"),
            Class::Snapshots => Some("snapshots"),
            Class::Keys => Some("keys"),
            Class::Config => None,
            Class::Manifests => Some("backups"),
        }
    }

    /// Objects rewritten in place: equal sizes do not prove equal contents.
    fn mutable(self) -> bool {
        matches!(self, Class::Manifests)
    }
}

/// Full keys and sizes of the objects of one class.
type Listing = BTreeMap<String, u64>;

async fn list_class(storage: &Storage, class: Class) -> Result<Listing> {
    match class.dir() {
        Some(dir) => Ok(storage.list(dir).await?.into_iter().map(|o| (format!("{dir}/{}", o.name), o.size)).collect()),
        None => Ok(storage.head("config").await?.map(|size| ("config".to_string(), size)).into_iter().collect()),
    }
}

async fn list_all(storage: &Storage) -> Result<BTreeMap<Class, Listing>> {
    let mut out = BTreeMap::new();
    for class in Class::LIST_ORDER {
        out.insert(class, list_class(storage, class).await?);
    }
    Ok(out)
}

/// Why deleting at the target would be unsafe, if it would.
fn deletion_refused(source: &BTreeMap<Class, Listing>, target: &BTreeMap<Class, Listing>) -> Option<String> {
    let empty = Listing::new();
    let count = |l: &BTreeMap<Class, Listing>, c: Class| l.get(&c).unwrap_or(&empty).len();
    if count(source, Class::Config) == 0 {
        return Some("the source has no config object".into());
    }
    if count(source, Class::Keys) == 0 {
        return Some("the source lists no key".into());
    }
    for class in [Class::Packs, Class::Index, Class::Snapshots] {
        if count(source, class) == 0 && count(target, class) > 0 {
            return Some(format!(
                "the source lists no object under {}/ while the target has {}",
                class.dir().unwrap_or_default(),
                count(target, class)
            ));
        }
    }
    None
}

/// Makes `target` hold the same repository as `repo`; see the module documentation for the
/// order, the safety rules and the memory bound.
pub async fn replicate(repo: &Repository, target: &Storage, opts: ReplicateOptions) -> Result<ReplicateReport> {
    let source = repo.storage();
    source.ensure_bucket().await?;
    target.ensure_bucket().await?;
    let source_config = match source.get("config").await {
        Ok(c) => c,
        Err(BackupError::NotFound(_)) => return Err(BackupError::NotARepository(source.url().to_string())),
        Err(e) => return Err(e),
    };
    match target.get("config").await {
        Ok(c) if c != source_config && !older_copy(&c, repo) => {
            return Err(BackupError::Invalid(format!(
                "{} holds a different repository than {} (their config objects differ); nothing replicated",
                target.url(),
                source.url()
            )));
        }
        Ok(_) | Err(BackupError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let lock = if opts.lock_source {
        Some(RepoLock::acquire(repo, false, &format!("replicate to {}", target.url())).await?)
    } else {
        None
    };
    let result = replicate_locked(source, target, opts).await;
    let released = match lock {
        Some(l) => l.release().await,
        None => Ok(()),
    };
    let report = result?;
    released?;
    Ok(report)
}

/// Whether the target's `config` is this repository's in an older format (a replica of a
/// repository migrated since): it is replaced like any other object.
fn older_copy(target_config: &[u8], repo: &Repository) -> bool {
    #[derive(serde::Deserialize)]
    struct Header {
        id: String,
        version: u32,
    }
    serde_json::from_slice::<Header>(target_config)
        .is_ok_and(|h| repo.is_this(&h.id) && h.version < repo.config().version)
}

async fn replicate_locked(source: &Storage, target: &Storage, opts: ReplicateOptions) -> Result<ReplicateReport> {
    let concurrency = if opts.concurrency == 0 { DEFAULT_CONCURRENCY } else { opts.concurrency };
    let src = list_all(source).await?;
    let dst = list_all(target).await?;
    if opts.delete_extraneous
        && let Some(why) = deletion_refused(&src, &dst)
    {
        return Err(BackupError::Invalid(format!(
            "refusing to replicate {} to {} with deletion: {why}; nothing copied or deleted",
            source.url(),
            target.url()
        )));
    }

    let budget = Budget::new(if opts.memory_budget == 0 { DEFAULT_MEMORY_BUDGET } else { opts.memory_budget });
    let mut report = ReplicateReport::default();
    let empty = Listing::new();
    for class in Class::COPY_ORDER {
        let there = dst.get(&class).unwrap_or(&empty);
        let todo: Vec<(String, u64, bool)> = src
            .get(&class)
            .unwrap_or(&empty)
            .iter()
            .filter_map(|(key, size)| match there.get(key) {
                Some(s) if s != size => Some((key.clone(), *size, false)),
                Some(_) if class.mutable() => Some((key.clone(), *size, true)),
                Some(_) => {
                    report.skipped += 1;
                    None
                }
                None => Some((key.clone(), *size, false)),
            })
            .collect();
        let outcomes: Vec<Outcome> = futures::stream::iter(todo)
            .map(|(key, size, compare)| {
                let budget = &budget;
                async move {
                    copy_one(source, target, &key, size, compare, class == Class::Packs && opts.verify_packs, budget)
                        .await
                }
            })
            .buffer_unordered(concurrency)
            .try_collect()
            .await?;
        for o in outcomes {
            match o {
                Outcome::Copied(n) => {
                    report.copied += 1;
                    report.bytes += n;
                }
                Outcome::Same => report.skipped += 1,
                Outcome::Vanished => report.vanished += 1,
            }
        }
        tracing::debug!(?class, ?report, "replication phase done");
    }

    if opts.delete_extraneous {
        for class in Class::DELETE_ORDER {
            let here = src.get(&class).unwrap_or(&empty);
            let doomed: Vec<String> =
                dst.get(&class).unwrap_or(&empty).keys().filter(|k| !here.contains_key(*k)).cloned().collect();
            let n = doomed.len();
            futures::stream::iter(doomed)
                .map(|k| async move { target.delete(&k).await })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            report.deleted += n;
        }
    }
    tracing::info!(source = source.url(), target = target.url(), ?report, "replication finished");
    Ok(report)
}

enum Outcome {
    Copied(u64),
    Same,
    Vanished,
}

async fn copy_one(
    source: &Storage,
    target: &Storage,
    key: &str,
    size: u64,
    compare: bool,
    verify: bool,
    budget: &Budget,
) -> Result<Outcome> {
    let _permit = budget.acquire(size).await?;
    let data = match source.get(key).await {
        Ok(d) => d,
        Err(BackupError::NotFound(_)) => {
            tracing::info!(key, "object vanished at the source before it was copied");
            return Ok(Outcome::Vanished);
        }
        Err(e) => return Err(e),
    };
    if compare {
        match target.get(key).await {
            Ok(existing) if existing == data => return Ok(Outcome::Same),
            Ok(_) | Err(BackupError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if verify {
        verify_pack(key, data.clone()).await?;
    }
    let n = data.len() as u64;
    target.put(key, data).await?;
    Ok(Outcome::Copied(n))
}

/// Checks that a pack's bytes hash to its name (`data/<ab>/<64 hex>`); other names are copied
/// as they are.
async fn verify_pack(key: &str, data: Bytes) -> Result<()> {
    let Some(want) = key.rsplit('/').next().and_then(|n| Id::from_hex(n).ok()) else {
        return Ok(());
    };
    let got = tokio::task::spawn_blocking(move || Id(*blake3::hash(&data).as_bytes()))
        .await
        .map_err(|e| BackupError::Aborted(e.to_string()))?;
    if got != want {
        return Err(BackupError::corrupt(
            format!("object {key} at the source"),
            format!("its content hashes to {got}; not copied to the offsite replica (run `check` at the source)"),
        ));
    }
    Ok(())
}

/// A semaphore counting KiB of objects held in memory.
struct Budget {
    sem: Semaphore,
    total: u32,
}

impl Budget {
    fn new(bytes: u64) -> Self {
        let total = bytes.div_ceil(1024).clamp(1, u32::MAX as u64) as u32;
        Self { sem: Semaphore::new(total as usize), total }
    }

    async fn acquire(&self, size: u64) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let need = size.div_ceil(1024).clamp(1, self.total as u64) as u32;
        self.sem.acquire_many(need).await.map_err(|e| BackupError::Aborted(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::StorageConfig;

    async fn local(dir: &std::path::Path, name: &str) -> Storage {
        Storage::connect(&StorageConfig::Local(dir.join(name))).await.unwrap()
    }

    fn listing(entries: &[(Class, &[&str])]) -> BTreeMap<Class, Listing> {
        entries.iter().map(|(c, keys)| (*c, keys.iter().map(|k| (k.to_string(), 1)).collect())).collect()
    }

    #[test]
    fn deletion_guard() {
        let full: &[(Class, &[&str])] = &[
            (Class::Config, &["config"]),
            (Class::Keys, &["keys/k"]),
            (Class::Packs, &["data/ab/x"]),
            (Class::Index, &["index/i"]),
            (Class::Snapshots, &["snapshots/s"]),
        ];
        let target = listing(full);
        assert_eq!(deletion_refused(&listing(full), &target), None);
        assert!(deletion_refused(&listing(&[]), &target).unwrap().contains("no config"));
        assert!(deletion_refused(&listing(&full[..1]), &target).unwrap().contains("no key"));
        let no_snaps = listing(&full[..4]);
        assert!(deletion_refused(&no_snaps, &target).unwrap().contains("snapshots/"));
        // A fresh repository replicated to an empty target is fine.
        assert_eq!(deletion_refused(&listing(&full[..2]), &listing(&[])), None);
    }

    #[tokio::test]
    async fn copies_skips_locks_rechecks_manifests_refuses_damaged_packs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (local(dir.path(), "a").await, local(dir.path(), "b").await);
        let repo = Repository::init(a.clone(), b"secret").await.unwrap();
        let pack = Bytes::from_static(b"pack bytes");
        let pack_key = crate::backup::pack::pack_key(&Id(*blake3::hash(&pack).as_bytes()));
        a.put(&pack_key, pack).await.unwrap();
        a.put("locks/someone", Bytes::from_static(b"not json")).await.unwrap();
        a.put("backups/n/backup.json", Bytes::from_static(b"v1")).await.unwrap();
        let r = replicate(&repo, &b, ReplicateOptions::default()).await.unwrap();
        assert_eq!((r.copied, r.skipped, r.deleted), (4, 0, 0), "{r:?}");
        assert!(b.list("locks").await.unwrap().is_empty());
        assert!(a.list("locks").await.unwrap().len() == 1, "our lock is released");

        // A manifest rewritten in place with the same size is copied again.
        a.put("backups/n/backup.json", Bytes::from_static(b"v2")).await.unwrap();
        let r = replicate(&repo, &b, ReplicateOptions::default()).await.unwrap();
        assert_eq!((r.copied, r.skipped), (1, 3), "{r:?}");
        assert_eq!(&b.get("backups/n/backup.json").await.unwrap()[..], b"v2");

        // A pack whose bytes do not match its name is not spread.
        let bad = crate::backup::pack::pack_key(&Id([7; 32]));
        a.put(&bad, Bytes::from_static(b"garbage")).await.unwrap();
        let err = replicate(&repo, &b, ReplicateOptions::default()).await.unwrap_err();
        assert!(matches!(err, BackupError::Corrupt { .. }), "{err}");
        assert_eq!(b.head(&bad).await.unwrap(), None);

        // A replica still in format 1 (the source was migrated since) is brought up to date.
        let d = local(dir.path(), "d").await;
        let v1 = serde_json::json!({"format": "berth-repository", "version": 1, "id": repo.config().id,
            "created": repo.config().created, "chunker": repo.config().chunker});
        d.put("config", Bytes::from(serde_json::to_vec_pretty(&v1).unwrap())).await.unwrap();
        a.delete(&bad).await.unwrap();
        replicate(&repo, &d, ReplicateOptions::default()).await.unwrap();
        assert_eq!(d.get("config").await.unwrap(), a.get("config").await.unwrap());

        // A different repository at the target is refused.
        let c = local(dir.path(), "c").await;
        c.put("config", Bytes::from_static(b"{\"other\":1}")).await.unwrap();
        let err = replicate(&repo, &c, ReplicateOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains("different repository"), "{err}");
    }

    #[tokio::test]
    async fn budget_bounds_bytes_in_flight() {
        let b = Budget::new(10 * 1024);
        let p1 = b.acquire(6 * 1024).await.unwrap();
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), b.acquire(6 * 1024)).await.is_err());
        drop(p1);
        // Larger than the whole budget: runs alone instead of waiting forever.
        let _p = b.acquire(1 << 30).await.unwrap();
    }
}

//! Restore of a directory tree, streamed: memory does not grow with the number of files.
//!
//! A walk task goes through the snapshot's trees depth-first, one directory at a time (with
//! at most 64 trees fetched ahead in walk order, through a cache of 1 MiB windows of the tree
//! packs, see [`TreeFetch`]), creates directories, links, fifos and empty files, and cuts the
//! files with content into batches of at most 16,384 files or 256 MiB (see [`LIMITS`]; the
//! first three smaller, see [`RAMP`]).
//! While batches are written the walk plans the next. A batch is written as ranged reads of at
//! most [`ranges::MAX_READ`] bytes of one pack each, `parallel` at a time across batch
//! boundaries (see [`write_batches`]): every blob is verified (authenticated decryption and
//! id hash) and written at its offsets, files are created in parallel, and the last write of a
//! file sets its owner, mode and times through the open descriptor. Directories get theirs
//! once their whole subtree is written, deepest first. The target's file system is flushed as
//! batches are written and once at the end (see [`Flush`]). Memory: the walk stack (one tree per
//! level), the prefetched trees, 16 tree-pack windows, at most [`WRITING_BATCHES`] + 2 batch
//! plans and `parallel` read buffers.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::crypto::Id;
use super::error::{BackupError, Result};
use super::index::{IndexEntry, PackMeta};
use super::pack;
use super::ranges::{self, plan_reads};
use super::repo::Repository;
use super::snapshot::{Node, NodeKind, Tree};

/// Bounds of a restore's plans.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// A batch is cut after this many files with content ...
    batch_files: usize,
    /// ... or this many bytes of them (one file is never split).
    batch_bytes: u64,
    /// Trees fetched ahead of the walk.
    prefetch_trees: usize,
    /// Tree packs are read in windows of this size ...
    tree_window: u64,
    /// ... and this many are kept.
    tree_windows: usize,
}

/// A ranged read of a batch: each blob goes to its targets.
type Read = ranges::Read<Vec<Target>>;

/// Batches of 16,384 files rather than 8,192: a batch's blobs then sit closer together in their
/// packs, so it takes fewer and longer reads (the 80k-file bench restore from Garage: 4.2 s
/// instead of 4.4 s with sync, the server's CPU 2.3 s instead of 2.5 s). A batch plan takes
/// about 500 bytes a file of a deep tree; 32,768 gained little more for twice that.
const LIMITS: Limits = Limits {
    batch_files: 16_384,
    batch_bytes: 256 << 20,
    prefetch_trees: 64,
    tree_window: TREE_WINDOW,
    tree_windows: TREE_WINDOWS,
};

/// Counters of a restore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// What is set on a restored node once its content is in place.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: filetime::FileTime,
}

impl Meta {
    fn of(n: &Node) -> Self {
        Self {
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            mtime: filetime::FileTime::from_unix_time(n.mtime_sec, n.mtime_nsec),
        }
    }
}

/// A file of a batch.
struct FilePlan {
    path: PathBuf,
    size: u64,
    meta: Meta,
    /// Content bytes not yet written: the write that brings it to 0 sets the metadata.
    remaining: AtomicU64,
    /// Exactly one blob: created (truncated) by its only write, without `set_len`.
    single: bool,
}

/// Where a blob goes: a file of the batch and an offset in it.
struct Target {
    file: u32,
    offset: u64,
}

/// Files whose content is written together.
#[derive(Default)]
struct Batch {
    files: Vec<FilePlan>,
    blobs: HashMap<Id, (IndexEntry, PackMeta, Vec<Target>)>,
    bytes: u64,
    /// Directories whose whole subtree is in this batch or an earlier one, deepest first.
    dirs: Vec<(PathBuf, Meta)>,
}

/// The first batches are cut at 1/8, 1/4 and 1/2 of the limits: no data is read before the
/// first batch is planned, and planning 16,384 files (with their trees) kept the reads idle
/// for the first part of a restore.
const RAMP: u32 = 3;

impl Batch {
    /// Whether this batch, the `sent`-th, is full.
    fn full(&self, limits: &Limits, sent: u32) -> bool {
        let shift = RAMP.saturating_sub(sent);
        self.files.len() >= (limits.batch_files >> shift).max(1) || self.bytes >= limits.batch_bytes >> shift
    }
}

/// Restores the tree below `root` into `target` (created if missing). Every chunk is
/// verified (authenticated decryption and id hash) before it is written, and the restore
/// returns once what it wrote is on disk (see [`Flush`]). `on_bytes` is called with the
/// number of bytes written as the restore progresses.
pub async fn restore_dir(
    repo: &Repository,
    root: &Node,
    target: &Path,
    parallel: usize,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<RestoreStats> {
    restore_with(repo, root, target, parallel, on_bytes, LIMITS).await.map(|(stats, _)| stats)
}

/// [`restore_dir`] within `limits`; also gives the number of flushes started.
async fn restore_with(
    repo: &Repository,
    root: &Node,
    target: &Path,
    parallel: usize,
    on_bytes: &(dyn Fn(u64) + Sync),
    limits: Limits,
) -> Result<(RestoreStats, u64)> {
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    std::fs::create_dir_all(target).map_err(|e| BackupError::io(format!("creating {}", target.display()), e))?;
    // Capacity 1: the walk plans at most one batch ahead of those being written.
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(1);
    let walk = tokio::spawn(walk(repo.clone(), root.clone(), target.to_path_buf(), is_root, limits, tx));
    let pool = BufferPool::default();
    let flush = Flush::open(target)?;
    let written = write_batches(
        rx,
        parallel.max(1),
        |read, files| read_and_write(repo, read, files, is_root, pool.clone()),
        |dirs| {
            flush.start();
            set_dir_meta(dirs, is_root)
        },
        on_bytes,
    )
    .await;
    let walked = walk.await.map_err(|e| BackupError::Aborted(format!("restore walk: {e}")));
    // A failed write stops the walk (its send fails): the write's error is the cause.
    written?;
    let stats = walked??;
    flush.finish().await?;
    Ok((stats, flush.started.into_inner()))
}

/// Flushes the target's file system while the restore goes on (one `syncfs` at a time, started
/// as each batch is written) and once more at the end, so that a restore reports done only
/// once what it restored is on disk. Flushing as it goes lets the disk write while the restore
/// still reads (the 80k-file bench restore with its `sync`: 3.7 s instead of 4.3 s) rather
/// than all at the end.
struct Flush {
    dir: Arc<std::fs::File>,
    path: PathBuf,
    running: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The first error of a flush in the background: `syncfs` reports a write-back error to a
    /// descriptor once, so the final flush would not see it again.
    failed: Arc<std::sync::Mutex<Option<std::io::Error>>>,
    started: AtomicU64,
    /// `syncfs`; the tests give a failing one (no file system here fails write-back on demand).
    sync: fn(&std::fs::File) -> std::io::Result<()>,
}

impl Flush {
    fn open(target: &Path) -> Result<Self> {
        Self::with_sync(target, syncfs)
    }

    fn with_sync(target: &Path, sync: fn(&std::fs::File) -> std::io::Result<()>) -> Result<Self> {
        let dir = std::fs::File::open(target).map_err(|e| BackupError::io(format!("open {}", target.display()), e))?;
        Ok(Self {
            dir: Arc::new(dir),
            path: target.to_path_buf(),
            running: std::sync::Mutex::new(None),
            failed: Arc::default(),
            started: AtomicU64::new(0),
            sync,
        })
    }

    /// Starts a flush in the background unless one is running.
    fn start(&self) {
        let mut running = self.running.lock().expect("flush");
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        let (dir, failed, sync) = (self.dir.clone(), self.failed.clone(), self.sync);
        *running = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = sync(&dir) {
                failed.lock().expect("flush").get_or_insert(e);
            }
        }));
    }

    /// Waits for the flush in the background, then flushes what was written since.
    async fn finish(&self) -> Result<()> {
        let running = self.running.lock().expect("flush").take();
        if let Some(h) = running {
            h.await.map_err(|e| BackupError::Aborted(e.to_string()))?;
        }
        self.started.fetch_add(1, Ordering::Relaxed);
        let (dir, sync) = (self.dir.clone(), self.sync);
        let last =
            tokio::task::spawn_blocking(move || sync(&dir)).await.map_err(|e| BackupError::Aborted(e.to_string()))?;
        match self.failed.lock().expect("flush").take().map_or(last, Err) {
            Ok(()) => Ok(()),
            Err(e) => Err(BackupError::io(format!("flushing the file system of {} to disk", self.path.display()), e)),
        }
    }
}

/// `syncfs(2)`; a file system that cannot flush (some FUSE ones) is not an error.
fn syncfs(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)) => Ok(()),
        e => Err(e),
    }
}

/// Batches being written at once, at most: the tail of one, the next, and one more when the
/// next is short. A batch is released once its directories have their metadata.
const WRITING_BATCHES: usize = 3;

/// A batch whose reads are under way.
struct Writing {
    reads_left: usize,
    /// Given their metadata once this batch's reads and the earlier batches' directories are
    /// done.
    dirs: Vec<(PathBuf, Meta)>,
}

enum Done {
    Read(u64, Result<u64>),
    Dirs(Result<()>),
}

/// Writes the batches in order with `parallel` reads in flight throughout: the reads of the
/// next batch start while the last of the current one still run (waiting for a batch's slowest
/// read left the other slots idle at every batch boundary). A batch's directories get their
/// metadata once its reads are done and the earlier batches' directories have theirs (a parent
/// may lose the write or search permission its children still need).
async fn write_batches<R, RF, D, DF>(
    mut batches: tokio::sync::mpsc::Receiver<Batch>,
    parallel: usize,
    read: R,
    set_dirs: D,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<()>
where
    R: Fn(Read, Arc<Vec<FilePlan>>) -> RF,
    RF: std::future::Future<Output = Result<u64>>,
    D: Fn(Vec<(PathBuf, Meta)>) -> DF,
    DF: std::future::Future<Output = Result<()>>,
{
    use futures::FutureExt;
    use futures::future::Either;
    // Batches are numbered in order: `writing[0]` is batch `oldest`.
    let mut writing: std::collections::VecDeque<Writing> = std::collections::VecDeque::new();
    let mut oldest = 0u64;
    let mut queued: std::vec::IntoIter<Read> = Vec::new().into_iter();
    let mut queued_files: Arc<Vec<FilePlan>> = Arc::default();
    let mut tasks = futures::stream::FuturesUnordered::new();
    let (mut reading, mut setting_dirs, mut more) = (0usize, false, true);
    loop {
        while reading < parallel
            && let Some(r) = queued.next()
        {
            let batch = oldest + writing.len() as u64 - 1;
            tasks.push(Either::Left(read(r, queued_files.clone()).map(move |r| Done::Read(batch, r))));
            reading += 1;
        }
        if !setting_dirs && writing.front().is_some_and(|w| w.reads_left == 0) {
            let dirs = std::mem::take(&mut writing[0].dirs);
            tasks.push(Either::Right(set_dirs(dirs).map(Done::Dirs)));
            setting_dirs = true;
        }
        let take_batch = more && queued.len() == 0 && reading < parallel && writing.len() < WRITING_BATCHES;
        tokio::select! {
            biased;
            done = tasks.next(), if !tasks.is_empty() => match done.expect("a task") {
                Done::Read(batch, r) => {
                    on_bytes(r?);
                    reading -= 1;
                    writing[(batch - oldest) as usize].reads_left -= 1;
                }
                Done::Dirs(r) => {
                    r?;
                    writing.pop_front();
                    oldest += 1;
                    setting_dirs = false;
                }
            },
            batch = batches.recv(), if take_batch => match batch {
                Some(b) => {
                    let reads = plan_reads(b.blobs);
                    writing.push_back(Writing { reads_left: reads.len(), dirs: b.dirs });
                    queued = reads.into_iter();
                    queued_files = Arc::new(b.files);
                }
                None => more = false,
            },
            else => break,
        }
    }
    debug_assert!(writing.is_empty(), "every batch written");
    Ok(())
}

async fn set_dir_meta(dirs: Vec<(PathBuf, Meta)>, is_root: bool) -> Result<()> {
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|(p, m)| apply_meta(p, m, is_root)))
        .await
        .map_err(|e| BackupError::Aborted(e.to_string()))?
}

/// Tree packs are read in aligned windows of this size, and the last [`TREE_WINDOWS`] are
/// kept: a directory's subtrees were written just before it (post-order), so the trees the
/// walk wants next are mostly in a window already read. A tree that crosses a window's end is
/// taken out of both (a read of its own would be a small one). A read per group of trees cost
/// a round trip each time the walk went down a level: 43 ms each on a loopback Garage (a small
/// response waits for the client's delayed ACK), tens of ms on S3. 256 KiB windows held
/// ~35 MiB less at a million files but made the 80k-file bench restore 1.1 s slower: the 18
/// windows of its tree pack no longer fit in the 16 kept.
const TREE_WINDOW: u64 = 1 << 20;
/// Windows kept (their sealed bytes), besides those still held by trees being decoded.
const TREE_WINDOWS: usize = 16;

/// A window's read, shared by the trees in it: its bytes, or `None` when the read failed (its
/// trees are then loaded alone, each failing with its own error).
type WindowRead = futures::future::Shared<futures::future::BoxFuture<'static, Option<Bytes>>>;

struct Window {
    read: WindowRead,
    abort: tokio::task::AbortHandle,
    last_use: u64,
}

/// A tree wanted from its windows, and who waits for it (several receivers when identical
/// directories share a tree).
type Wanted = (IndexEntry, Vec<oneshot::Sender<Tree>>);

/// The windows a tree is read from: its pack, and its first and last window (the next one
/// when the tree crosses a window's end).
type Span = (Id, u64, u64);

/// Trees requested ahead of the walk, read through a cache of tree-pack windows and decoded
/// off the walk's task.
struct TreeFetch {
    repo: Repository,
    pending: HashMap<Id, Vec<oneshot::Receiver<Tree>>>,
    /// Keyed by pack and window number.
    windows: HashMap<(Id, u64), Window>,
    uses: u64,
    decodes: Vec<JoinHandle<()>>,
    count: usize,
    limits: Limits,
}

impl TreeFetch {
    fn new(repo: Repository, limits: Limits) -> Self {
        Self { repo, pending: HashMap::new(), windows: HashMap::new(), uses: 0, decodes: Vec::new(), count: 0, limits }
    }

    fn request(&mut self, ids: Vec<Id>) {
        self.uses += 1;
        let mut wanted: HashMap<Span, HashMap<Id, Wanted>> = HashMap::new();
        let found: Vec<_> = {
            let index = self.repo.index().read().expect("index");
            ids.into_iter().map(|id| (id, index.get(&id))).collect()
        };
        for (id, found) in found {
            let (tx, rx) = oneshot::channel();
            self.pending.entry(id).or_default().push(rx);
            self.count += 1;
            // A tree missing from the index, longer than a window or past its pack's end is
            // left to `take`, which loads it alone.
            if let Some((meta, e)) = found
                && let Some(span) = self.windows_of(meta, &e)
            {
                wanted.entry(span).or_default().entry(id).or_insert_with(|| (e, Vec::new())).1.push(tx);
            }
        }
        self.decodes.retain(|h| !h.is_finished());
        let size = self.limits.tree_window;
        for ((pack, first, last), trees) in wanted {
            let reads: Vec<_> = (first..=last).map(|k| (k * size, self.windows[&(pack, k)].read.clone())).collect();
            let repo = self.repo.clone();
            self.decodes.push(tokio::spawn(async move {
                let pieces = futures::future::join_all(
                    reads.into_iter().map(|(start, read)| async move { read.await.map(|bytes| (start, bytes)) }),
                );
                // Dropped senders make `take` load the trees alone.
                let Some(pieces) = pieces.await.into_iter().collect::<Option<Vec<_>>>() else { return };
                let _ = tokio::task::spawn_blocking(move || decode_trees(&repo, &pieces, trees)).await;
            }));
        }
        self.evict();
    }

    /// The windows holding the tree `e` of `pack`, each read from now on if it is not yet;
    /// `None` for a tree that is longer than a window or reaches past the pack's end.
    fn windows_of(&mut self, pack: PackMeta, e: &IndexEntry) -> Option<Span> {
        let (offset, end) = (e.offset as u64, e.offset as u64 + e.length as u64);
        let size = self.limits.tree_window;
        if e.length == 0 || u64::from(e.length) > size || end > pack.size {
            return None;
        }
        let (first, last) = (offset / size, (end - 1) / size);
        for k in first..=last {
            let uses = self.uses;
            let w = self.windows.entry((pack.id, k)).or_insert_with(|| {
                let (start, end) = (k * size, ((k + 1) * size).min(pack.size));
                let (storage, object) = (self.repo.storage().clone(), pack::pack_key(&pack.id));
                let task = tokio::spawn(async move { storage.get_range(&object, start, end - start).await.ok() });
                let abort = task.abort_handle();
                let read =
                    futures::FutureExt::shared(futures::FutureExt::boxed(async move { task.await.ok().flatten() }));
                Window { read, abort, last_use: uses }
            });
            w.last_use = uses;
        }
        Some((pack.id, first, last))
    }

    /// Drops the least recently used windows beyond the number kept.
    fn evict(&mut self) {
        while self.windows.len() > self.limits.tree_windows {
            let oldest = self.windows.iter().min_by_key(|(_, w)| w.last_use).map(|(k, _)| *k).expect("a window");
            self.windows.remove(&oldest);
        }
    }

    async fn take(&mut self, id: Id) -> Result<Tree> {
        if !self.pending.contains_key(&id) {
            // Not requested (the root, or past the budget): through its window all the same,
            // which then serves its neighbours.
            self.request(vec![id]);
        }
        let requested = self.pending.get_mut(&id).and_then(Vec::pop);
        if self.pending.get(&id).is_some_and(Vec::is_empty) {
            self.pending.remove(&id);
        }
        if let Some(rx) = requested {
            self.count -= 1;
            if let Ok(tree) = rx.await {
                return Ok(tree);
            }
        }
        // Its window's read or its decoding failed: alone, failing with this tree's error.
        self.repo.load_tree(&id).await
    }

    /// Requests the next subtrees in walk order (nearest first) up to the budget, once half
    /// of it is used, so that their windows are read before the walk gets there.
    fn fill(&mut self, stack: &mut [Frame]) {
        let budget = self.limits.prefetch_trees;
        if self.count > budget / 2 {
            return;
        }
        let mut ids = Vec::new();
        'frames: for frame in stack.iter_mut().rev() {
            while frame.scanned > 0 {
                if self.count + ids.len() >= budget {
                    break 'frames;
                }
                frame.scanned -= 1;
                let n = &frame.nodes[frame.scanned];
                if n.kind == NodeKind::Dir
                    && let Some(id) = n.subtree
                {
                    ids.push(id);
                }
            }
        }
        if !ids.is_empty() {
            self.request(ids);
        }
    }
}

impl Drop for TreeFetch {
    fn drop(&mut self) {
        self.decodes.iter().for_each(JoinHandle::abort);
        self.windows.values().for_each(|w| w.abort.abort());
    }
}

/// Decodes trees out of the windows read for them (each window's start and bytes, in order)
/// and hands each to its receivers; a tree that does not open is skipped (its receivers fail,
/// and `take` loads it alone for its error).
fn decode_trees(repo: &Repository, windows: &[(u64, Bytes)], trees: HashMap<Id, Wanted>) {
    for (id, (e, receivers)) in trees {
        let opened = match windows {
            [(start, bytes)] => repo.open_tree(&id, &e, bytes, *start),
            // Across a window's end: its own bytes out of both.
            _ => {
                let (offset, end) = (e.offset as u64, e.offset as u64 + e.length as u64);
                repo.open_tree(&id, &e, &gather(windows, offset, end), offset)
            }
        };
        let Ok(tree) = opened else { continue };
        for tx in receivers {
            let _ = tx.send(tree.clone());
        }
    }
}

/// The bytes `[offset, end)` out of consecutive windows (shorter when they do not cover it).
fn gather(windows: &[(u64, Bytes)], offset: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((end - offset) as usize);
    for (start, bytes) in windows {
        let (from, to) = (offset.max(*start), end.min(start + bytes.len() as u64));
        if from < to {
            out.extend_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
        }
    }
    out
}

/// A directory being walked.
struct Frame {
    path: PathBuf,
    meta: Meta,
    /// The entries not yet walked, last first (`pop` takes the next).
    nodes: Vec<Node>,
    /// Entries from this position on were looked at by [`TreeFetch::fill`].
    scanned: usize,
}

impl Frame {
    fn new(path: PathBuf, meta: Meta, tree: Option<Tree>) -> Self {
        let mut nodes = tree.map(|t| t.nodes).unwrap_or_default();
        nodes.reverse();
        Self { path, meta, scanned: nodes.len(), nodes }
    }
}

async fn walk(
    repo: Repository,
    root: Node,
    target: PathBuf,
    is_root: bool,
    limits: Limits,
    tx: tokio::sync::mpsc::Sender<Batch>,
) -> Result<RestoreStats> {
    let mut stats = RestoreStats::default();
    let mut fetch = TreeFetch::new(repo.clone(), limits);
    let tree = match root.subtree {
        Some(id) => Some(fetch.take(id).await?),
        None => None,
    };
    let mut stack = vec![Frame::new(target, Meta::of(&root), tree)];
    let (mut batch, mut sent) = (Batch::default(), 0u32);
    let stopped = || BackupError::Aborted("the restore stopped".into());
    loop {
        fetch.fill(&mut stack);
        let Some(top) = stack.last_mut() else { break };
        let Some(n) = top.nodes.pop() else {
            let done = stack.pop().expect("a frame");
            batch.dirs.push((done.path, done.meta));
            continue;
        };
        top.scanned = top.scanned.min(top.nodes.len());
        let name = OsString::from_vec(n.name_bytes());
        if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(BackupError::corrupt(
                format!("directory {}", top.path.display()),
                format!("invalid file name {name:?}"),
            ));
        }
        let p = top.path.join(&name);
        match n.kind {
            NodeKind::Dir => {
                match std::fs::create_dir(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                    Err(e) => return Err(BackupError::io(format!("mkdir {}", p.display()), e)),
                }
                // Writable until its content is in place; its own mode comes last.
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
                stats.dirs += 1;
                let tree = match n.subtree {
                    Some(id) => Some(fetch.take(id).await?),
                    None => None,
                };
                stack.push(Frame::new(p, Meta::of(&n), tree));
            }
            NodeKind::Symlink => {
                let _ = std::fs::remove_file(&p);
                let t = OsString::from_vec(n.target_bytes());
                std::os::unix::fs::symlink(&t, &p)
                    .map_err(|e| BackupError::io(format!("symlink {}", p.display()), e))?;
                apply_meta(&p, &Meta::of(&n), is_root)?;
            }
            NodeKind::Fifo => {
                let _ = std::fs::remove_file(&p);
                let c = std::ffi::CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| BackupError::Invalid("NUL in path".into()))?;
                // SAFETY: valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(BackupError::io(format!("mkfifo {}", p.display()), std::io::Error::last_os_error()));
                }
                apply_meta(&p, &Meta::of(&n), is_root)?;
            }
            NodeKind::File => {
                stats.files += 1;
                stats.bytes += n.size;
                plan_file(&repo, &mut batch, p, &n, is_root)?;
                if batch.full(&limits, sent) {
                    tx.send(std::mem::take(&mut batch)).await.map_err(|_| stopped())?;
                    sent += 1;
                }
            }
        }
    }
    tx.send(batch).await.map_err(|_| stopped())?;
    Ok(stats)
}

/// Adds a file to the batch; an empty file is created (with its metadata) right away.
fn plan_file(repo: &Repository, batch: &mut Batch, path: PathBuf, n: &Node, is_root: bool) -> Result<()> {
    let plan = FilePlan {
        meta: Meta::of(n),
        size: n.size,
        remaining: AtomicU64::new(n.size),
        single: n.content.len() == 1,
        path,
    };
    if n.content.is_empty() {
        if n.size != 0 {
            return Err(BackupError::corrupt(
                format!("file {}", plan.path.display()),
                format!("no chunks, node says {} bytes", n.size),
            ));
        }
        let f = open_for_restore(&plan)?;
        return apply_meta_fd(&f, &plan, is_root);
    }
    let file = batch.files.len() as u32;
    let index = repo.index().read().expect("index");
    let mut offset = 0u64;
    for id in &n.content {
        let (meta, e) = index.get(id).ok_or_else(|| {
            BackupError::corrupt(format!("blob {id}"), format!("not in the index (needed by {})", plan.path.display()))
        })?;
        batch.blobs.entry(*id).or_insert_with(|| (e, meta, Vec::new())).2.push(Target { file, offset });
        offset += e.raw_len as u64;
    }
    drop(index);
    if offset != n.size {
        return Err(BackupError::corrupt(
            format!("file {}", plan.path.display()),
            format!("chunks add up to {offset} bytes, node says {}", n.size),
        ));
    }
    batch.bytes += n.size;
    batch.files.push(plan);
    Ok(())
}

/// Download and decompression buffers shared by the reads of one restore, one pair per read in
/// flight: a fresh buffer per ranged GET would be page-faulted (zeroed) by the kernel every
/// time. (Not per thread: the blocking pool grows to dozens of threads over a long restore,
/// and per-thread scratch held 70 MB at a million files.)
type BufferPool = Arc<std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

async fn read_and_write(
    repo: &Repository,
    read: Read,
    files: Arc<Vec<FilePlan>>,
    is_root: bool,
    pool: BufferPool,
) -> Result<u64> {
    let key = pack::pack_key(&read.pack.id);
    let (start, end) = read.span();
    let (buf, mut scratch) = pool.lock().expect("pool").pop().unwrap_or_default();
    let mut data = repo.storage().get_range_into(&key, start, end - start, buf).await.map_err(|e| match e {
        BackupError::Corrupt { detail, .. } => BackupError::corrupt(format!("pack {key}"), detail),
        other => other,
    })?;
    let repo = repo.clone();
    let (written, data, scratch) = tokio::task::spawn_blocking(move || {
        let result = (|| {
            let mut written = 0u64;
            // Consecutive blobs of a pack often belong to one file: keep it open.
            let mut open: Option<(u32, std::fs::File)> = None;
            for (id, e, targets) in read.blobs {
                let s = (e.offset as u64 - start) as usize;
                let sealed = &mut data[s..s + e.length as usize];
                let plain = pack::open_blob_in_place(repo.key(), e.kind, &id, sealed, e.raw_len, &mut scratch)?;
                for t in targets {
                    let plan = &files[t.file as usize];
                    if open.as_ref().is_none_or(|(i, _)| *i != t.file) {
                        open = Some((t.file, open_for_restore(plan)?));
                    }
                    let (_, f) = open.as_ref().expect("opened above");
                    f.write_all_at(plain, t.offset)
                        .map_err(|err| BackupError::io(format!("write {}", plan.path.display()), err))?;
                    written += plain.len() as u64;
                    let len = plain.len() as u64;
                    if plan.remaining.fetch_sub(len, Ordering::AcqRel) == len {
                        apply_meta_fd(f, plan, is_root)?;
                        open = None;
                    }
                }
            }
            Ok::<_, BackupError>(written)
        })();
        result.map(|written| (written, data, scratch))
    })
    .await
    .map_err(|e| BackupError::Aborted(e.to_string()))??;
    pool.lock().expect("pool").push((data, scratch));
    Ok(written)
}

/// Opens (creating it when needed) a file being restored and gives it its final length.
/// Never follows a symlink at the path: a restore target may hold untrusted links.
fn open_for_restore(plan: &FilePlan) -> Result<std::fs::File> {
    // A file of one blob is written whole by one write: truncating at open is enough.
    let truncate = plan.single || plan.size == 0;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(truncate)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&plan.path)
    };
    let f = match open() {
        // A symlink where the snapshot has a file: replace the link, never write through it.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => match std::fs::remove_file(&plan.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => open(),
        },
        other => other,
    }
    .map_err(|e| BackupError::io(format!("create {}", plan.path.display()), e))?;
    if !truncate {
        f.set_len(plan.size).map_err(|e| BackupError::io(format!("truncate {}", plan.path.display()), e))?;
    }
    Ok(f)
}

/// Without root, the mode and times of a file another user owns cannot be set (a restore into
/// a volume the app shares through its fsGroup); its content is restored all the same.
fn tolerated(e: &std::io::Error, is_root: bool) -> bool {
    !is_root && e.raw_os_error() == Some(libc::EPERM)
}

/// Owner, mode and times of a written file, through its descriptor (no path lookups).
fn apply_meta_fd(f: &std::fs::File, plan: &FilePlan, is_root: bool) -> Result<()> {
    let m = &plan.meta;
    let p = || plan.path.display();
    if is_root {
        std::os::unix::fs::fchown(f, Some(m.uid), Some(m.gid))
            .map_err(|e| BackupError::io(format!("chown {}", p()), e))?;
    }
    match f.set_permissions(std::fs::Permissions::from_mode(m.mode)) {
        Err(e) if !tolerated(&e, is_root) => return Err(BackupError::io(format!("chmod {}", p()), e)),
        _ => {}
    }
    match filetime::set_file_handle_times(f, Some(m.mtime), Some(m.mtime)) {
        Err(e) if !tolerated(&e, is_root) => Err(BackupError::io(format!("set times {}", p()), e)),
        _ => Ok(()),
    }
}

/// Owner, mode and times by path (directories, links, fifos).
fn apply_meta(p: &Path, m: &Meta, is_root: bool) -> Result<()> {
    if is_root {
        std::os::unix::fs::lchown(p, Some(m.uid), Some(m.gid))
            .map_err(|e| BackupError::io(format!("chown {}", p.display()), e))?;
    }
    if m.kind != NodeKind::Symlink {
        match std::fs::set_permissions(p, std::fs::Permissions::from_mode(m.mode)) {
            Err(e) if !tolerated(&e, is_root) => return Err(BackupError::io(format!("chmod {}", p.display()), e)),
            _ => {}
        }
    }
    match filetime::set_symlink_file_times(p, m.mtime, m.mtime) {
        Err(e) if !tolerated(&e, is_root) => Err(BackupError::io(format!("set times {}", p.display()), e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::backup::ops::backup_directory;
    use crate::backup::storage::Storage;
    use crate::backup::{StorageConfig, test_bytes};

    /// A write-back error reported to a flush in the background fails the restore, though
    /// the final flush (to which the kernel does not report it again) succeeds; so does one
    /// reported to the final flush alone. Without one, the restore's flush succeeds.
    #[tokio::test]
    async fn a_write_back_error_of_any_flush_fails_the_restore() {
        use std::sync::atomic::AtomicUsize;
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        static FAIL_CALL: AtomicUsize = AtomicUsize::new(usize::MAX);
        fn flaky(_: &std::fs::File) -> std::io::Result<()> {
            if CALLS.fetch_add(1, Ordering::SeqCst) == FAIL_CALL.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        }
        let dir = tempfile::tempdir().unwrap();
        for (fail_call, fails) in [(usize::MAX, false), (0, true), (1, true)] {
            CALLS.store(0, Ordering::SeqCst);
            FAIL_CALL.store(fail_call, Ordering::SeqCst);
            let flush = Flush::with_sync(dir.path(), flaky).unwrap();
            flush.start();
            let result = flush.finish().await;
            assert_eq!(CALLS.load(Ordering::SeqCst), 2, "one flush in the background, one at the end");
            match result {
                Ok(()) => assert!(!fails, "call {fail_call} failed, yet the flush succeeded"),
                Err(e) => {
                    assert!(fails, "no call failed, yet: {e}");
                    let text = e.to_string();
                    assert!(
                        text.contains("flushing the file system of")
                            && text.contains(&dir.path().display().to_string()),
                        "{text}"
                    );
                }
            }
        }
    }

    /// Everything a restore must reproduce, by relative path.
    fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let what = if m.file_type().is_symlink() {
                    format!("link -> {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    todo.push(p.clone());
                    format!("dir {:o} {}.{}", m.mode() & 0o7777, m.mtime(), m.mtime_nsec())
                } else {
                    let data = std::fs::read(&p).unwrap();
                    format!(
                        "file {:o} {}.{} {} {}",
                        m.mode() & 0o7777,
                        m.mtime(),
                        m.mtime_nsec(),
                        data.len(),
                        blake3::hash(&data)
                    )
                };
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), what);
            }
        }
        out
    }

    fn set_mtime(p: &Path, sec: i64) {
        let t = filetime::FileTime::from_unix_time(sec, 123_456_789);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }

    /// A tree with deep and empty directories, identical empty directories (one shared tree),
    /// empty and multi-chunk files, links and a hard link, read-only modes, restored with
    /// batches and prefetch far smaller than the tree: every batch boundary and every
    /// directory finished in an earlier batch is crossed, and directory times must survive
    /// the files written into them after the walk left them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streamed_restore_reproduces_the_tree_across_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let mut deep = src.join("deep");
        for i in 0..40 {
            deep.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("leaf.txt"), b"at the bottom").unwrap();
        for d in ["empty", "same1/x", "same2/x", "wide", "ro"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        for i in 0..50u64 {
            std::fs::write(src.join(format!("wide/f{i:02}")), test_bytes(i, 100 + 997 * i as usize)).unwrap();
        }
        std::fs::write(src.join("wide/copy"), test_bytes(7, 100 + 997 * 7)).unwrap();
        std::fs::write(src.join("large.bin"), test_bytes(99, 3_000_000)).unwrap();
        std::fs::write(src.join("empty.txt"), b"").unwrap();
        std::fs::hard_link(src.join("wide/f03"), src.join("hard")).unwrap();
        std::os::unix::fs::symlink("wide/f01", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
        std::fs::write(src.join("ro/secret"), b"read only").unwrap();
        std::fs::set_permissions(src.join("ro/secret"), std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        // Times last, children before parents.
        let mut all: Vec<PathBuf> = describe(&src).into_keys().map(|p| src.join(p)).collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, p) in all.iter().enumerate() {
            set_mtime(p, 1_600_000_000 + i as i64);
        }

        let storage = Storage::connect(&StorageConfig::Local(tmp.path().join("repo"))).await.unwrap();
        let repo = Repository::init(storage, b"secret").await.unwrap();
        let (_, snap) = backup_directory(&repo, &src, vec![], Arc::default(), None).await.unwrap();

        let limits =
            Limits { batch_files: 3, batch_bytes: 64 << 10, prefetch_trees: 2, tree_window: 512, tree_windows: 2 };
        let target = tmp.path().join("restored");
        let written = AtomicU64::new(0);
        let on_bytes = |n| {
            written.fetch_add(n, Ordering::Relaxed);
        };
        let (stats, flushes) = restore_with(&repo, &snap.root, &target, 3, &on_bytes, limits).await.unwrap();
        assert_eq!(describe(&target), describe(&src));
        // Batches of 3 files: flushes go on during the restore, and one comes last.
        assert!(flushes >= 2, "{flushes} flushes");
        assert_eq!(stats.files, 56, "{stats:?}");
        assert_eq!(stats.dirs, 48, "{stats:?}");
        assert_eq!(written.load(Ordering::Relaxed), stats.bytes);

        // Again over the first restore: files are rewritten in place, links replaced.
        std::fs::write(target.join("wide/f10"), b"changed since").unwrap();
        restore_with(&repo, &snap.root, &target, 3, &|_| {}, limits).await.unwrap();
        assert_eq!(describe(&target), describe(&src));
    }

    /// The 40 directory trees of [`crate::backup::forty_dir_snapshot`], the 8th twice (a
    /// directory identical to another shares its tree).
    async fn forty_trees(tmp: &Path) -> (Repository, Vec<Id>) {
        let (repo, _, mut ids) = crate::backup::forty_dir_snapshot(tmp).await;
        ids.push(ids[7]);
        (repo, ids)
    }

    /// Trees requested together come with one read of their tree pack's window, identical
    /// trees included; when the read fails, each tree is loaded alone and fails with its own
    /// error (the read's is not lost, nor a tree left waiting).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trees_come_with_one_read_of_their_window() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, ids) = forty_trees(tmp.path()).await;
        let expected: Vec<Tree> = futures::future::try_join_all(ids.iter().map(|id| repo.load_tree(id))).await.unwrap();

        let gets = repo.storage().gets();
        let mut fetch = TreeFetch::new(repo.clone(), LIMITS);
        fetch.request(ids.clone());
        for (id, tree) in ids.iter().zip(&expected) {
            assert_eq!(&fetch.take(*id).await.unwrap(), tree);
        }
        assert_eq!(repo.storage().gets() - gets, 1, "one read for 41 trees in one window");
        assert_eq!((fetch.count, fetch.pending.len()), (0, 0));

        let (pack, _) = repo.index().read().unwrap().get(&ids[0]).unwrap();
        std::fs::remove_file(tmp.path().join("repo").join(pack::pack_key(&pack.id))).unwrap();
        let mut fetch = TreeFetch::new(repo.clone(), LIMITS);
        fetch.request(ids.clone());
        for id in &ids[..3] {
            let err = fetch.take(*id).await.unwrap_err();
            assert!(err.to_string().contains(&pack.id.to_hex()), "{err}");
        }
    }

    /// With windows smaller than the tree pack: each window is read once while it is kept, a
    /// tree that crosses a window's end comes out of both windows (no read of its own), and
    /// trees still come right once their window was evicted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_windows_are_read_once_while_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, ids) = forty_trees(tmp.path()).await;
        let expected: Vec<Tree> = futures::future::try_join_all(ids.iter().map(|id| repo.load_tree(id))).await.unwrap();
        let window = 1024u64;
        let spans: Vec<(u64, u64)> = {
            let index = repo.index().read().unwrap();
            ids.iter()
                .map(|id| index.get(id).unwrap().1)
                .map(|e| (e.offset as u64, (e.offset + e.length) as u64))
                .collect()
        };
        let windows: std::collections::HashSet<u64> =
            spans.iter().flat_map(|(s, e)| s / window..=(e - 1) / window).collect();
        assert!(windows.len() >= 4, "the trees span {} windows: the test needs several", windows.len());
        let crossing = spans.iter().filter(|(s, e)| (e - 1) / window != s / window).count();
        assert!(crossing > 0, "no tree crosses a window's end: the test needs one");

        let limits = Limits { tree_window: window, tree_windows: 64, ..LIMITS };
        let gets = repo.storage().gets();
        let mut fetch = TreeFetch::new(repo.clone(), limits);
        fetch.request(ids.clone());
        for (id, tree) in ids.iter().zip(&expected) {
            assert_eq!(&fetch.take(*id).await.unwrap(), tree);
        }
        assert_eq!(repo.storage().gets() - gets, windows.len() as u64, "one read per window, none per tree");
        // Again: every window is kept, nothing is read again.
        fetch.request(ids.clone());
        for (id, tree) in ids.iter().zip(&expected) {
            assert_eq!(&fetch.take(*id).await.unwrap(), tree);
        }
        assert_eq!(repo.storage().gets() - gets, windows.len() as u64, "kept windows are not read again");

        // One window kept: each request evicts the last, and the trees still come right.
        let mut fetch = TreeFetch::new(repo.clone(), Limits { tree_windows: 1, ..limits });
        for (id, tree) in ids.iter().zip(&expected).rev() {
            fetch.request(vec![*id]);
            assert_eq!(&fetch.take(*id).await.unwrap(), tree);
            assert!(fetch.windows.len() <= 1);
        }
    }

    /// A tree's bytes out of the windows it crosses; windows that do not cover it give fewer
    /// bytes (and the tree then fails to open, and is loaded alone).
    #[test]
    fn a_tree_across_windows_is_gathered_from_both() {
        let windows = [(0u64, Bytes::from_static(b"abcd")), (4, Bytes::from_static(b"efgh"))];
        assert_eq!(gather(&windows, 2, 6), b"cdef");
        assert_eq!(gather(&windows, 4, 7), b"efg");
        assert_eq!(gather(&windows[..1], 2, 6), b"cd");
    }

    /// The first batches are cut small, so that reads start early; from the fourth on, at the
    /// limits.
    #[test]
    fn the_first_batches_are_cut_small() {
        let limits = Limits { batch_files: 16, batch_bytes: 1 << 20, ..LIMITS };
        let files_when_full = |sent| {
            let mut b = Batch::default();
            while !b.full(&limits, sent) {
                b.files.push(FilePlan {
                    path: PathBuf::new(),
                    size: 1,
                    meta: Meta { kind: NodeKind::File, mode: 0, uid: 0, gid: 0, mtime: filetime::FileTime::zero() },
                    remaining: AtomicU64::new(1),
                    single: true,
                });
            }
            b.files.len()
        };
        assert_eq!((0..5).map(files_when_full).collect::<Vec<_>>(), [2, 4, 8, 16, 16]);
        let big = Batch { bytes: 1 << 17, ..Batch::default() };
        assert!(big.full(&limits, 0) && !big.full(&limits, 1), "bytes ramp up the same way");
    }

    /// A batch for [`write_batches`]: `reads` blobs in as many packs (pack id: batch, read),
    /// and one directory.
    fn test_batch(n: u8, reads: u8) -> Batch {
        let mut b = Batch::default();
        for r in 0..reads {
            let pack = PackMeta { id: Id([n * 16 + r; 32]), size: 1 << 20 };
            let e = IndexEntry {
                pack: u32::from(n * 16 + r),
                kind: pack::BlobKind::Data,
                offset: 0,
                length: 10,
                raw_len: 10,
            };
            b.blobs.insert(pack.id, (e, pack, Vec::new()));
        }
        let meta = Meta { kind: NodeKind::Dir, mode: 0o755, uid: 0, gid: 0, mtime: filetime::FileTime::zero() };
        b.dirs.push((PathBuf::from(format!("d{n}")), meta));
        b
    }

    /// The next batch's reads start while the current batch's slowest read still runs, never
    /// more than `parallel` at once; a batch's directories get their metadata only after its
    /// own reads and after the earlier batches' directories.
    #[tokio::test]
    async fn batches_overlap_and_directories_come_after_their_reads() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for (n, reads) in [(0, 2), (1, 3), (2, 0), (3, 1)] {
            tx.send(test_batch(n, reads)).await.unwrap();
        }
        drop(tx);
        let log = std::sync::Mutex::new(Vec::<String>::new());
        let (in_flight, most) = (AtomicU64::new(0), AtomicU64::new(0));
        let next_batch_started = tokio::sync::Notify::new();
        let read = |read: Read, _files| {
            let (batch, i) = (read.pack.id.0[0] / 16, read.pack.id.0[0] % 16);
            let (log, in_flight, most, started) = (&log, &in_flight, &most, &next_batch_started);
            async move {
                most.fetch_max(in_flight.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                if batch == 1 {
                    started.notify_one();
                }
                if (batch, i) == (0, 0) {
                    started.notified().await;
                }
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                log.lock().unwrap().push(format!("read {batch}"));
                Ok(10)
            }
        };
        let set_dirs = |dirs: Vec<(PathBuf, Meta)>| {
            log.lock().unwrap().push(format!("dirs {}", &dirs[0].0.display().to_string()[1..]));
            async { Ok(()) }
        };
        let written = AtomicU64::new(0);
        let on_bytes = |n| {
            written.fetch_add(n, Ordering::Relaxed);
        };
        let run = write_batches(rx, 3, read, set_dirs, &on_bytes);
        tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("batch 1 waited for the slowest read of batch 0")
            .unwrap();
        assert_eq!(written.load(Ordering::Relaxed), 60);
        assert!(most.load(Ordering::SeqCst) <= 3, "at most `parallel` reads at once");
        let log = log.into_inner().unwrap();
        let at = |what: &str| log.iter().rposition(|l| l == what).unwrap_or_else(|| panic!("{what}: {log:?}"));
        for n in 0..4 {
            let dirs = at(&format!("dirs {n}"));
            if n != 2 {
                assert!(at(&format!("read {n}")) < dirs, "{log:?}");
            }
            if n > 0 {
                assert!(at(&format!("dirs {}", n - 1)) < dirs, "{log:?}");
            }
        }
    }
}

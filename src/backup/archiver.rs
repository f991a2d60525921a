//! Directory trees in and out of a repository.
//!
//! Backup walks a directory depth-first in name order, reuses the chunk list of every file
//! whose size, mtime, ctime and inode match the parent snapshot (no read at all), and chunks
//! the others. Restore creates the tree, then downloads each needed pack once (in parallel),
//! verifies every blob and writes it at its offsets, then sets modes, owners and times
//! (directories last, deepest first).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use tokio::runtime::Handle;

use super::crypto::Id;
use super::direct::DirectReader;
use super::error::{BackupError, Result};
use super::pack::BlobKind;
use super::repo::Repository;
use super::snapshot::{Node, NodeKind, Tree, encode_raw};
use super::writer::{BlobWriter, WriterStats};

/// Stores a tree and returns its id.
pub fn save_tree(writer: &BlobWriter, tree: &Tree) -> Result<Id> {
    let json = serde_json::to_vec(tree).expect("tree json");
    writer.add(BlobKind::Tree, &json)
}

// Casts: `struct stat`'s field types differ between architectures.
#[allow(clippy::unnecessary_cast)]
fn node_from_stat(name: &[u8], st: &Stat, kind: NodeKind) -> Node {
    let (name, name_raw) = encode_raw(name);
    let mut n = Node::new(name, kind);
    n.name_raw = name_raw;
    n.mode = st.st_mode as u32 & 0o7777;
    n.uid = st.st_uid as u32;
    n.gid = st.st_gid as u32;
    n.mtime_sec = st.st_mtime as i64;
    n.mtime_nsec = st.st_mtime_nsec as u32;
    n.inode = st.st_ino as u64;
    n.ctime_sec = st.st_ctime as i64;
    n.ctime_nsec = st.st_ctime_nsec as u32;
    n
}

// The walk goes through directory descriptors: each directory's entries are listed, stat'ed
// and opened relative to its descriptor, and subdirectories opened from it without following
// symbolic links. A path is then looked up once, not once per entry per level; and a
// directory renamed or replaced by a symbolic link during the backup cannot lead the walk
// outside the tree.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

/// Opens the directory `name` in `dir` to walk it, without following a symbolic link.
fn open_subdir(dir: &OwnedFd, name: &OsString) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name.as_os_str(), DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?)
}

/// Opens a directory's entry `name` for reading, without following a symbolic link (it was a
/// regular file when stat'ed; `ELOOP` means it has been replaced by one since).
fn open_entry(dir: &OwnedFd, name: &OsString) -> std::io::Result<std::fs::File> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
    Ok(std::fs::File::from(rustix::fs::openat(dir, name.as_os_str(), flags, Mode::empty())?))
}

/// Raises the soft limit of open files to the hard one, as Go programs do at start. The walk
/// holds a descriptor per directory level on each walk thread, and containers often start
/// with a soft limit of 1,024: a tree deeper than that would fail with `EMFILE`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// An entry that is gone (or replaced by a symbolic link) since its directory was listed.
fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP)
}

struct Walker<'a> {
    writer: &'a BlobWriter,
    repo: &'a Repository,
    handle: &'a Handle,
    stats: Arc<WriterStats>,
    small_file: u64,
    /// Files from this size on are chunked on the large-file threads (see [`LargeFile`]).
    large_file: u64,
    large: std::sync::mpsc::Sender<LargeFile>,
}

/// A large file for the large-file threads. On the walk threads, the few large files of a
/// directory would be read one after another by whichever thread took the directory (the
/// others are busy with small files and never steal them); these threads chunk them side
/// by side while the walk goes on.
struct LargeFile {
    file: std::fs::File,
    path: PathBuf,
    previous: Option<Vec<Id>>,
    done: std::sync::mpsc::SyncSender<Result<(Vec<Id>, u64)>>,
}

/// A directory entry, or a file node whose content a large-file thread is still reading.
enum Entry {
    Done(Option<Node>),
    Reading(Node, std::sync::mpsc::Receiver<Result<(Vec<Id>, u64)>>),
}

thread_local! {
    /// A walk thread's buffer for small files: one allocation per thread, not one per file
    /// (fresh pages faulted in, and freed again, for each of a volume's million small files).
    static SMALL_FILE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads `f` to its end into `buf`, expecting `expected` bytes (it may have changed since
/// its `stat`), and returns the bytes read. `buf` stays initialised up to its largest use,
/// so it is neither zeroed again nor read into with a probe per file.
fn read_whole<'b>(f: &mut std::fs::File, expected: usize, buf: &'b mut Vec<u8>) -> std::io::Result<&'b [u8]> {
    use std::io::Read;
    if buf.len() <= expected {
        buf.resize(expected + 1, 0); // one byte more: the read that sees the end is not a probe
    }
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(2 * buf.len(), 0);
        }
        match f.read(&mut buf[filled..]) {
            Ok(0) => return Ok(&buf[..filled]),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Chunks and stores an open file; read errors name the file.
fn store_file(writer: &BlobWriter, f: impl std::io::Read, p: &Path, previous: Option<&[Id]>) -> Result<(Vec<Id>, u64)> {
    writer.add_stream(f, previous).map_err(|e| match e {
        BackupError::Io { source, .. } => BackupError::io(format!("reading {}", p.display()), source),
        other => other,
    })
}

/// [`store_file`] for the large-file threads: read with direct I/O (see [`DirectReader`]).
fn store_large_file(
    writer: &BlobWriter,
    f: std::fs::File,
    p: &Path,
    previous: Option<&[Id]>,
) -> Result<(Vec<Id>, u64)> {
    let started = std::time::Instant::now();
    let reader = DirectReader::new(f, p).map_err(|e| BackupError::io(format!("reading {}", p.display()), e))?;
    let stored = store_file(writer, reader, p, previous);
    tracing::debug!(path = %p.display(), elapsed_ms = started.elapsed().as_millis() as u64, "large file chunked");
    stored
}

/// Stack of a walk thread: enough for trees thousands of levels deep.
const WALK_STACK: usize = 64 << 20;

/// Threads that walk and read: twice the cores (stat calls on a cold cache wait on the disk),
/// at most 8 so that the chunkers' buffers (up to two maximum-size chunks each) stay bounded.
fn walk_pool() -> Result<rayon::ThreadPool> {
    let cores = super::cores();
    rayon::ThreadPoolBuilder::new()
        .num_threads((cores * 2).clamp(4, 8))
        .thread_name(|i| format!("berth-walk-{i}"))
        // The walk recurses a few frames per directory level: deep trees need more than the
        // 2 MiB default. Untouched stack pages cost no memory.
        .stack_size(WALK_STACK)
        .build()
        .map_err(|e| BackupError::Aborted(format!("starting the walk threads: {e}")))
}

/// The previous snapshot of a source. Its trees are loaded one directory at a time as the
/// walk reaches them, so that memory does not grow with the number of files.
pub struct Parent {
    pub root: Node,
}

/// Backs up the directory `path`; returns its root node (name `/`). `parent` is the previous
/// snapshot of the same source, for change detection.
pub fn backup_dir(
    writer: &BlobWriter,
    repo: &Repository,
    handle: &Handle,
    path: &Path,
    parent: Option<Parent>,
) -> Result<Node> {
    raise_open_files_limit();
    let root_dir = match rustix::fs::open(path, DIR_FLAGS, Mode::empty()) {
        Ok(d) => d,
        Err(rustix::io::Errno::NOTDIR) => {
            return Err(BackupError::Invalid(format!("{} is not a directory", path.display())));
        }
        Err(e) => return Err(BackupError::io(format!("cannot read {}", path.display()), e.into())),
    };
    let meta = rustix::fs::fstat(&root_dir)
        .map_err(|e| BackupError::io(format!("cannot read {}", path.display()), e.into()))?;
    let parent_tree = match parent.and_then(|p| p.root.subtree) {
        Some(id) => Some(handle.block_on(repo.load_tree(&id))?),
        None => None,
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (large, jobs) = std::sync::mpsc::channel::<LargeFile>();
    let jobs = std::sync::Mutex::new(jobs);
    let subtree = std::thread::scope(|scope| {
        for i in 0..super::cores() {
            let (jobs, stop) = (&jobs, &stop);
            std::thread::Builder::new()
                .name(format!("berth-large-{i}"))
                .spawn_scoped(scope, move || {
                    loop {
                        // Its own statement: the guard must not live through the job.
                        let job = jobs.lock().expect("lock").recv();
                        let Ok(job) = job else { return };
                        if !stop.load(Ordering::Relaxed) {
                            let _ =
                                job.done.send(store_large_file(writer, job.file, &job.path, job.previous.as_deref()));
                        }
                    }
                })
                .map_err(|e| BackupError::Aborted(format!("starting the large-file threads: {e}")))?;
        }
        let w = Walker {
            writer,
            repo,
            handle,
            stats: writer.stats().clone(),
            small_file: repo.config().chunker.min_size as u64,
            large_file: 8 * repo.config().chunker.max_size as u64,
            large,
        };
        let subtree = walk_pool()?.install(|| w.dir(root_dir, path, parent_tree));
        // Queued large files of a failed walk are skipped; dropping the walker ends the threads.
        stop.store(subtree.is_err(), Ordering::Relaxed);
        subtree
    })?;
    let mut root = node_from_stat(b"/", &meta, NodeKind::Dir);
    root.subtree = Some(subtree);
    root.inode = 0;
    root.ctime_sec = 0;
    root.ctime_nsec = 0;
    Ok(root)
}

impl Walker<'_> {
    /// Backs up the open directory `dir` at `path`; returns its tree's id.
    fn dir(&self, dir: OwnedFd, path: &Path, parent: Option<Tree>) -> Result<Id> {
        self.stats.dirs.fetch_add(1, Ordering::Relaxed);
        let listing = |e: std::io::Error| BackupError::io(format!("reading directory {}", path.display()), e);
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(|e| listing(e.into()))? {
            let name = entry.map_err(|e| listing(e.into()))?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let old: HashMap<Vec<u8>, Node> =
            parent.map(|t| t.nodes.into_iter().map(|n| (n.name_bytes(), n)).collect()).unwrap_or_default();
        // Entries in parallel (rayon keeps their order): cold stat calls wait on the disk, and
        // large files are chunked on every core.
        let entries: Vec<Entry> = names
            .par_iter()
            .map(|name| self.entry(&dir, &path.join(name), name, old.get(name.as_bytes())))
            .collect::<Result<_>>()?;
        let mut nodes = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Entry::Done(node) => nodes.extend(node),
                Entry::Reading(mut n, done) => {
                    let (ids, len) =
                        done.recv().map_err(|_| BackupError::Aborted("a large-file thread stopped".into()))??;
                    (n.content, n.size) = (ids, len);
                    self.stats.files.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_total.fetch_add(len, Ordering::Relaxed);
                    nodes.push(n);
                }
            }
        }
        save_tree(self.writer, &Tree { nodes })
    }

    /// One entry of the directory `dir`, at path `p`; `None` when it vanished or is a kind
    /// that is not backed up.
    fn entry(&self, dir: &OwnedFd, p: &Path, name: &OsString, prev: Option<&Node>) -> Result<Entry> {
        let vanished = |p: &Path| {
            tracing::warn!(path = %p.display(), "vanished during backup; skipped");
            Ok(Entry::Done(None))
        };
        let meta = match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(m) => m,
            Err(e) if e == rustix::io::Errno::NOENT => return vanished(p),
            Err(e) => return Err(BackupError::io(format!("stat {}", p.display()), e.into())),
        };
        let len = meta.st_size as u64;
        let node = match FileType::from_raw_mode(meta.st_mode) {
            FileType::RegularFile => {
                let mut n = node_from_stat(name.as_bytes(), &meta, NodeKind::File);
                let unchanged = prev.filter(|o| {
                    o.kind == NodeKind::File
                        && o.size == len
                        && o.mtime_sec == n.mtime_sec
                        && o.mtime_nsec == n.mtime_nsec
                        && o.ctime_sec == n.ctime_sec
                        && o.ctime_nsec == n.ctime_nsec
                        && o.inode == n.inode
                        && o.content.iter().all(|id| self.repo.index().read().expect("index").contains(id))
                });
                if let Some(o) = unchanged {
                    n.content = o.content.clone();
                    n.size = o.size;
                    self.stats.files_unchanged.fetch_add(1, Ordering::Relaxed);
                } else if len < self.small_file {
                    // Below the minimum chunk size the chunker would return the whole file.
                    let mut f = match open_entry(dir, name) {
                        Ok(f) => f,
                        Err(e) if is_gone(&e) => return vanished(p),
                        Err(e) => return Err(BackupError::io(format!("open {}", p.display()), e)),
                    };
                    let stored = SMALL_FILE.with_borrow_mut(|buf| {
                        let data = read_whole(&mut f, len as usize, buf)
                            .map_err(|e| BackupError::io(format!("reading {}", p.display()), e))?;
                        n.size = data.len() as u64;
                        self.stats.bytes_read.fetch_add(n.size, Ordering::Relaxed);
                        let content =
                            if data.is_empty() { Vec::new() } else { vec![self.writer.add(BlobKind::Data, data)?] };
                        if buf.len() > 2 * self.small_file as usize {
                            *buf = Vec::new(); // the file grew while it was read: do not keep that much
                        }
                        Ok::<_, BackupError>(content)
                    });
                    n.content = stored?;
                } else {
                    let f = match open_entry(dir, name) {
                        Ok(f) => f,
                        Err(e) if is_gone(&e) => return vanished(p),
                        Err(e) => return Err(BackupError::io(format!("open {}", p.display()), e)),
                    };
                    let previous = prev.filter(|o| o.kind == NodeKind::File).map(|o| &o.content[..]);
                    if len >= self.large_file {
                        let (done, reading) = std::sync::mpsc::sync_channel(1);
                        let job =
                            LargeFile { file: f, path: p.to_owned(), previous: previous.map(<[Id]>::to_vec), done };
                        self.large
                            .send(job)
                            .map_err(|_| BackupError::Aborted("the large-file threads stopped".into()))?;
                        return Ok(Entry::Reading(n, reading));
                    }
                    (n.content, n.size) = store_file(self.writer, f, p, previous)?;
                }
                self.stats.files.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_total.fetch_add(n.size, Ordering::Relaxed);
                n
            }
            FileType::Directory => {
                let sub_dir = match open_subdir(dir, name) {
                    Ok(d) => d,
                    Err(e) if is_gone(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => return vanished(p),
                    Err(e) => return Err(BackupError::io(format!("reading directory {}", p.display()), e)),
                };
                let mut n = node_from_stat(name.as_bytes(), &meta, NodeKind::Dir);
                let sub = match prev.filter(|o| o.kind == NodeKind::Dir).and_then(|o| o.subtree) {
                    Some(id) => Some(self.handle.block_on(self.repo.load_tree(&id))?),
                    None => None,
                };
                n.subtree = Some(self.dir(sub_dir, p, sub)?);
                n
            }
            FileType::Symlink => {
                let mut n = node_from_stat(name.as_bytes(), &meta, NodeKind::Symlink);
                let target = match rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new()) {
                    Ok(t) => t,
                    Err(e) if e == rustix::io::Errno::NOENT => return vanished(p),
                    Err(e) => return Err(BackupError::io(format!("readlink {}", p.display()), e.into())),
                };
                let (t, raw) = encode_raw(target.as_bytes());
                n.target = Some(t);
                n.target_raw = raw;
                n
            }
            FileType::Fifo => node_from_stat(name.as_bytes(), &meta, NodeKind::Fifo),
            _ => {
                tracing::warn!(path = %p.display(), "sockets and device files are not backed up; skipped");
                return Ok(Entry::Done(None));
            }
        };
        Ok(Entry::Done(Some(node)))
    }
}

/// Builds nested trees from in-memory files (`a/b/c.json` → bytes) and returns the root node.
/// Used for database dumps and Kubernetes objects.
pub fn backup_virtual(writer: &BlobWriter, files: Vec<(String, Vec<u8>)>) -> Result<Node> {
    #[derive(Default)]
    struct Dir {
        files: Vec<(String, Vec<u8>)>,
        dirs: std::collections::BTreeMap<String, Dir>,
    }
    let mut root = Dir::default();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let Some((file, dirs)) = parts.split_last() else {
            return Err(BackupError::Invalid(format!("empty path {path:?}")));
        };
        let mut d = &mut root;
        for part in dirs {
            d = d.dirs.entry((*part).to_string()).or_default();
        }
        d.files.push(((*file).to_string(), data));
    }
    fn save(writer: &BlobWriter, d: Dir) -> Result<Id> {
        let mut nodes = Vec::new();
        for (name, sub) in d.dirs {
            let mut n = Node::new(name, NodeKind::Dir);
            n.subtree = Some(save(writer, sub)?);
            writer.stats().dirs.fetch_add(1, Ordering::Relaxed);
            nodes.push(n);
        }
        for (name, data) in d.files {
            let mut n = Node::new(name, NodeKind::File);
            n.mode = 0o600;
            let (ids, len) = writer.add_stream(&data[..], None)?;
            n.content = ids;
            n.size = len;
            writer.stats().files.fetch_add(1, Ordering::Relaxed);
            writer.stats().bytes_total.fetch_add(len, Ordering::Relaxed);
            nodes.push(n);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        save_tree(writer, &Tree { nodes })
    }
    let mut node = Node::new("/", NodeKind::Dir);
    node.subtree = Some(save(writer, root)?);
    Ok(node)
}

/// Reads a whole file of a snapshot into memory (small files: manifests, definitions).
pub async fn read_file(repo: &Repository, node: &Node) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(node.size as usize);
    for id in &node.content {
        out.extend_from_slice(&repo.read_blob(id).await?);
    }
    Ok(out)
}

/// Streams a file of a snapshot to `sink` in order, prefetching `parallel` chunks.
pub async fn stream_file<W>(repo: &Repository, node: &Node, sink: &mut W, parallel: usize) -> Result<u64>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut blobs = futures::stream::iter(node.content.clone())
        .map(|id| async move { repo.read_blob(&id).await })
        .buffered(parallel.max(1));
    let mut n = 0u64;
    while let Some(b) = blobs.next().await {
        let b = b?;
        sink.write_all(&b).await.map_err(|e| BackupError::io("writing restored data", e))?;
        n += b.len() as u64;
    }
    sink.flush().await.map_err(|e| BackupError::io("writing restored data", e))?;
    Ok(n)
}

/// Finds a node by slash-separated path below a root node.
pub async fn lookup(repo: &Repository, root: &Node, path: &str) -> Result<Node> {
    let mut node = root.clone();
    for part in path.split('/').filter(|s| !s.is_empty()) {
        let sub =
            node.subtree.ok_or_else(|| BackupError::Invalid(format!("{path}: {} is not a directory", node.name)))?;
        let tree = repo.load_tree(&sub).await?;
        node = tree
            .nodes
            .into_iter()
            .find(|n| n.name == part)
            .ok_or_else(|| BackupError::Invalid(format!("{path}: no entry {part:?} in the snapshot")))?;
    }
    Ok(node)
}

/// Lists the files below a node: (relative path, node).
pub async fn walk_files(repo: &Repository, root: &Node) -> Result<Vec<(String, Node)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.clone())];
    while let Some((prefix, node)) = stack.pop() {
        let Some(sub) = node.subtree else { continue };
        for n in repo.load_tree(&sub).await?.nodes {
            let p = if prefix.is_empty() { n.name.clone() } else { format!("{prefix}/{}", n.name) };
            match n.kind {
                NodeKind::Dir => stack.push((p, n)),
                _ => out.push((p, n)),
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub use super::restore::{RestoreStats, restore_dir};

#[cfg(test)]
mod tests {
    use super::*;

    /// A file or directory replaced by a symbolic link after its directory was listed reads as
    /// gone: the walk neither reads the link's target nor descends into it.
    #[test]
    fn entries_are_not_opened_through_symbolic_links() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret"), b"not in the tree").unwrap();
        std::fs::create_dir_all(tmp.path().join("tree/sub")).unwrap();
        std::fs::write(tmp.path().join("tree/file"), b"in the tree").unwrap();
        std::os::unix::fs::symlink("../outside", tmp.path().join("tree/dir-link")).unwrap();
        std::os::unix::fs::symlink("../outside/secret", tmp.path().join("tree/file-link")).unwrap();
        let tree = rustix::fs::open(tmp.path().join("tree"), DIR_FLAGS, Mode::empty()).unwrap();
        let name = |n: &str| OsString::from(n);

        let gone = |e: std::io::Error| is_gone(&e) || e.raw_os_error() == Some(libc::ENOTDIR);
        assert!(gone(open_subdir(&tree, &name("dir-link")).unwrap_err()));
        assert!(gone(open_entry(&tree, &name("file-link")).unwrap_err()));
        // The same calls open real entries.
        open_subdir(&tree, &name("sub")).unwrap();
        let mut f = open_entry(&tree, &name("file")).unwrap();
        assert_eq!(read_whole(&mut f, 0, &mut Vec::new()).unwrap(), b"in the tree");
    }

    /// One buffer serves files of any size, larger or smaller than their `stat` said, and
    /// never returns bytes of an earlier, longer file.
    #[test]
    fn read_whole_returns_each_file_exactly_whatever_its_stat_said() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        for (i, (len, expected)) in
            [(10_000, 10_000), (3, 3), (0, 0), (70_000, 100), (50, 9_000)].into_iter().enumerate()
        {
            let data = crate::backup::test_bytes(i as u64 + 1, len);
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &data).unwrap();
            let mut f = std::fs::File::open(&path).unwrap();
            assert!(read_whole(&mut f, expected, &mut buf).unwrap() == data, "file {i} of {len} bytes");
        }
    }
}

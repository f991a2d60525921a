//! Reads a source tree's metadata into the kernel's caches while the repository opens.
//!
//! On a cold cache most of an incremental walk waits for directory and inode blocks, while
//! opening the repository and taking the lock are round trips to S3 that leave the disk
//! and the cores idle. [`MetadataPrefetch`] lists and stats the tree in that time; the walk
//! then finds the inodes cached. It stops as soon as the walk starts, so it never competes
//! with it, and it reads no file content.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Directories waiting to be listed, and how many threads are listing one.
#[derive(Default)]
struct Queue {
    dirs: Vec<PathBuf>,
    busy: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    stop: AtomicBool,
    entries: AtomicU64,
}

/// Background threads that stat every entry below a directory until stopped or done.
pub struct MetadataPrefetch {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl MetadataPrefetch {
    /// Starts `threads` threads below `root`. Errors (unreadable directories, vanished
    /// entries) are skipped: the walk reports them.
    pub fn start(root: &Path, threads: usize) -> Self {
        let shared = Arc::new(Shared::default());
        shared.queue.lock().expect("queue").dirs.push(root.to_path_buf());
        let threads = (0..threads.max(1))
            .filter_map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new().name(format!("berth-prefetch-{i}")).spawn(move || run(&shared)).ok()
            })
            .collect();
        Self { shared, threads }
    }

    /// Stops the threads and waits for them (each finishes the entry it is at); returns the
    /// number of entries it stat-ed.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.shared.entries.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MetadataPrefetch {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(shared: &Shared) {
    loop {
        let dir = {
            let mut q = shared.queue.lock().expect("queue");
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(d) = q.dirs.pop() {
                    q.busy += 1;
                    break d;
                }
                if q.busy == 0 {
                    // Nothing queued and nobody listing: the tree is done.
                    shared.ready.notify_all();
                    return;
                }
                q = shared.ready.wait(q).expect("queue");
            }
        };
        let mut subdirs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                // `DirEntry::metadata` stats relative to the open directory and does not
                // follow symlinks, like the walk.
                if let Ok(m) = e.metadata() {
                    shared.entries.fetch_add(1, Ordering::Relaxed);
                    if m.is_dir() {
                        subdirs.push(e.path());
                    }
                }
            }
        }
        let mut q = shared.queue.lock().expect("queue");
        q.dirs.extend(subdirs);
        q.busy -= 1;
        shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (at most 10 s) for every thread to return by itself.
    fn wait_done(p: &MetadataPrefetch) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !p.threads.iter().all(|t| t.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "prefetch threads did not end");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn stats_every_entry_of_a_tree_and_ends_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "a/b", "a/b/c", "d"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        for f in ["x", "a/y", "a/b/z", "a/b/c/w", "d/v"] {
            std::fs::write(dir.path().join(f), b"data").unwrap();
        }
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("a/link")).unwrap();
        let p = MetadataPrefetch::start(dir.path(), 3);
        // Every thread returns once the tree is done, without being stopped.
        wait_done(&p);
        // 4 directories, 5 files, 1 symlink (not followed).
        assert_eq!(p.stop(), 10);
    }

    #[test]
    fn a_missing_root_is_not_an_error() {
        let p = MetadataPrefetch::start(Path::new("/nonexistent/berth-prefetch"), 2);
        wait_done(&p);
        assert_eq!(p.stop(), 0);
    }
}

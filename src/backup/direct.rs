//! Reading a large file around the page cache (`O_DIRECT`), one block ahead on its own thread.
//!
//! A backup reads every byte of a changed volume file once. Through the page cache that evicts
//! the workload's own cached data, and every 4 KiB costs a freshly allocated cache page plus a
//! kernel copy; in a VM whose free memory is handed back to the host, the fresh pages are the
//! dearest part of the whole read. Direct reads land in a few reused, aligned blocks instead.
//! The kernel's read-ahead does not apply to them, so a thread keeps the next blocks in flight
//! while the caller hashes the current one.
//!
//! Only the large-file threads of `backup-dir` use it; small files are read whole and their
//! pages are few.
//!
//! Filesystems without `O_DIRECT` (tmpfs before Linux 6.6, some FUSE mounts) refuse the open or
//! the read with `EINVAL`; the file is then read the ordinary way from the same offset.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes per read. Larger requests hold up the walk's small metadata reads queued behind
/// them; 1, 2 and 4 MiB were measured (see `scripts/bench-backup.sh`), 2 MiB was best.
pub const BLOCK: usize = 2 << 20;
/// Address, offset and length alignment that every Linux block device accepts.
const ALIGN: usize = 4096;
/// Blocks per reader: one being consumed, one in flight (a second one in flight measured no faster).
const BLOCKS: usize = 2;
/// Blocks kept for the next file; fresh ones would be page-faulted (zeroed) again.
const POOL_MAX: usize = 4 * BLOCKS;

static POOL: Mutex<Vec<Block>> = Mutex::new(Vec::new());

/// An aligned block of `BLOCK` bytes inside a slightly larger allocation.
struct Block {
    mem: Vec<u8>,
    len: usize,
}

impl Block {
    fn take() -> Self {
        POOL.lock().expect("pool").pop().unwrap_or_else(|| Block { mem: vec![0; BLOCK + ALIGN], len: 0 })
    }

    fn give_back(self) {
        let mut pool = POOL.lock().expect("pool");
        if pool.len() < POOL_MAX {
            pool.push(self);
        }
    }

    fn data(&self) -> &[u8] {
        let start = self.mem.as_ptr().align_offset(ALIGN);
        &self.mem[start..start + BLOCK]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        let start = self.mem.as_ptr().align_offset(ALIGN);
        &mut self.mem[start..start + BLOCK]
    }
}

/// Reads a file sequentially through direct I/O with read-ahead; see the module documentation.
pub struct DirectReader {
    full: Receiver<io::Result<Block>>,
    free: Option<Sender<Block>>,
    current: Option<Block>,
    pos: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DirectReader {
    /// Reads `file`, which was opened at `path`, from its start. The path is opened a second
    /// time with `O_DIRECT`; when that fails or names another file by now, `file` is read the
    /// ordinary way.
    pub fn new(file: File, path: &Path) -> io::Result<Self> {
        let direct = open_direct(&file, path);
        let (free, free_rx) = channel();
        let (full_tx, full) = channel();
        for _ in 0..BLOCKS {
            free.send(Block::take()).expect("receiver alive");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("berth-read-ahead".into())
            .spawn(move || read_ahead(file, direct, free_rx, full_tx, &stopped))?;
        Ok(Self { full, free: Some(free), current: None, pos: 0, stop, thread: Some(thread) })
    }
}

impl Read for DirectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(b) = &self.current {
                if self.pos < b.len {
                    let n = out.len().min(b.len - self.pos);
                    out[..n].copy_from_slice(&b.data()[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                if b.len < BLOCK {
                    // A short block is the end of the file.
                    return Ok(0);
                }
            }
            if let (Some(b), Some(free)) = (self.current.take(), &self.free) {
                let _ = free.send(b);
            }
            match self.full.recv() {
                Ok(Ok(b)) => (self.current, self.pos) = (Some(b), 0),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the read-ahead thread stopped")),
            }
        }
    }
}

impl Drop for DirectReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.free.take());
        if let Some(b) = self.current.take() {
            b.give_back();
        }
        // Until the thread ends (it drops its sender), so that its blocks return to the pool.
        for b in self.full.iter().flatten() {
            b.give_back();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `path` opened again with `O_DIRECT`, if that works and it is still the file of `file`.
fn open_direct(file: &File, path: &Path) -> Option<File> {
    let direct = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).ok()?;
    let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
}

fn read_ahead(
    file: File,
    mut direct: Option<File>,
    free: Receiver<Block>,
    full: Sender<io::Result<Block>>,
    stop: &AtomicBool,
) {
    let mut offset = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut block) = free.recv() else { break };
        let result = fill(&file, &mut direct, &mut block, &mut offset);
        let last = result.is_err() || block.len < BLOCK;
        let sent = match result {
            Ok(()) => full.send(Ok(block)),
            Err(e) => {
                block.give_back();
                full.send(Err(e))
            }
        };
        if sent.is_err() || last {
            break;
        }
    }
    for b in free.try_iter() {
        b.give_back();
    }
}

/// Fills `block` from `offset` on, up to `BLOCK` bytes or the end of the file. Direct reads
/// need an aligned offset and length; after a short read (the end of the file, or a file that
/// shrank) and after `EINVAL`, the rest is read through `file`.
fn fill(file: &File, direct: &mut Option<File>, block: &mut Block, offset: &mut u64) -> io::Result<()> {
    block.len = 0;
    while block.len < BLOCK {
        let filled = block.len;
        let aligned = filled.is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64);
        let dst = &mut block.data_mut()[filled..];
        let read = match direct.as_ref().filter(|_| aligned) {
            Some(d) => match d.read_at(dst, *offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    *direct = None;
                    continue;
                }
                r => r,
            },
            None => file.read_at(dst, *offset),
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                block.len += n;
                *offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    fn read_through(path: &Path, chunk: usize) -> Vec<u8> {
        let mut r = DirectReader::new(File::open(path).unwrap(), path).unwrap();
        let (mut out, mut buf) = (Vec::new(), vec![0; chunk]);
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn reads_every_byte_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [0, 1, ALIGN - 1, ALIGN, BLOCK, BLOCK + 1, 3 * BLOCK + 12345].into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            let data = pattern(len);
            std::fs::write(&path, &data).unwrap();
            for chunk in [7, 1 << 20, 3 * BLOCK] {
                assert!(read_through(&path, chunk) == data, "length {len}, reads of {chunk}");
            }
        }
    }

    #[test]
    fn direct_reads_then_an_unaligned_rest_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = pattern(2 * BLOCK + 5000);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut direct = open_direct(&file, &path);
        if direct.is_none() {
            eprintln!("{} has no O_DIRECT; only the buffered path is tested", dir.path().display());
        }
        let (mut block, mut offset) = (Block::take(), 0u64);
        fill(&file, &mut direct, &mut block, &mut offset).unwrap();
        assert!(block.len == BLOCK && block.data()[..BLOCK] == data[..BLOCK]);
        // An unaligned offset (a file that shrank and grew again) is read buffered.
        offset = BLOCK as u64 + 100;
        fill(&file, &mut direct, &mut block, &mut offset).unwrap();
        assert!(block.len == BLOCK && block.data()[..BLOCK] == data[BLOCK + 100..2 * BLOCK + 100]);
        fill(&file, &mut direct, &mut block, &mut offset).unwrap();
        assert!(block.len == 4900 && block.data()[..4900] == data[2 * BLOCK + 100..]);
        fill(&file, &mut direct, &mut block, &mut offset).unwrap();
        assert_eq!(block.len, 0);
    }

    #[test]
    fn a_reader_dropped_early_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, pattern(8 * BLOCK)).unwrap();
        let mut r = DirectReader::new(File::open(&path).unwrap(), &path).unwrap();
        let mut buf = vec![0; 100];
        r.read_exact(&mut buf).unwrap();
        // Drop joins the thread: this returns only if it stopped after its block in flight.
        drop(r);
    }

    #[test]
    fn a_replaced_path_is_not_read_directly() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"old").unwrap();
        std::fs::write(&b, b"new").unwrap();
        let file = File::open(&a).unwrap();
        std::fs::rename(&b, &a).unwrap();
        assert!(open_direct(&file, &a).is_none());
        assert_eq!(read_through(&a, 10), b"new");
        let mut r = DirectReader::new(file, &a).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"old");
    }
}

//! The write pipeline: chunk → id → (dedup) → compress + encrypt → pack → upload → index.
//!
//! Callers run in blocking threads. Whole blobs ([`BlobWriter::add`]: small files, trees) are
//! compressed and encrypted by the calling thread; the chunks of a stream
//! ([`BlobWriter::add_stream`]) go over a bounded channel to worker threads that do it. Both
//! end up in the open pack of the blob's kind: small data blobs by way of the calling
//! thread's run (see [`RUN_BYTES`]), the rest directly. A full pack is uploaded by a tokio
//! task, at most `upload_concurrency` at a time. Memory is bounded by the channel
//! (2 × workers blobs), the runs, the open packs, the packs in flight and one kept pack
//! buffer. After upload the pack's blobs enter the shared index and an index file is written
//! every few packs, so that a killed backup leaves reusable data.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::chunker::{Chunker, Previous};
use super::crypto::Id;
use super::error::{BackupError, Result};
use super::pack::{self, BlobKind, PackBuilder, PackInfo};
use super::repo::Repository;

/// Live counters of a writer, readable while it runs (progress output).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub bytes_read: AtomicU64,
    pub blobs_new: AtomicU64,
    pub bytes_new: AtomicU64,
    pub blobs_dedup: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub files_unchanged: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Bytes of changed files taken over as old chunks, confirmed by hash without a scan.
    pub bytes_confirmed: AtomicU64,
}

struct Job {
    kind: BlobKind,
    id: Id,
    data: Vec<u8>,
}

struct Shared {
    repo: Repository,
    handle: Handle,
    /// Blobs queued or packed but not yet uploaded and indexed.
    pending: Mutex<HashSet<Id>>,
    /// Open packs: data and trees apart, so that trees can be fetched pack-wise.
    packs: [Mutex<PackBuilder>; 2],
    /// Runs of small data blobs, one per calling thread (by [`RUN_SLOT`]).
    runs: Vec<Mutex<PackBuilder>>,
    uploads: Arc<Semaphore>,
    unindexed: Mutex<Vec<PackInfo>>,
    last_index: Mutex<Instant>,
    error: Mutex<Option<BackupError>>,
    stats: Arc<WriterStats>,
    chunker: Chunker,
    /// Chunk buffers handed back by the workers: a fresh multi-megabyte buffer per chunk
    /// would be page-faulted (zeroed) by the kernel every time.
    spare: Mutex<Vec<Vec<u8>>>,
    /// Buffers of uploaded packs, for the next packs: a fresh one would be page-faulted too.
    pack_buffers: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept in [`Shared::spare`]: enough for the queue, the workers and the walkers.
const SPARE_BUFFERS: usize = 16;
/// Pack buffers kept in [`Shared::pack_buffers`], for the next data pack: one, as each kept
/// buffer is 18 MiB resident beside the packs in flight.
const SPARE_PACK_BUFFERS: usize = 1;

/// Small data blobs sealed by one thread gather in a run of this size before they join the
/// open pack. Without runs, the walk threads, each in another part of the tree, interleave
/// their files blob by blob in every pack. A restore writes the tree in walk order, part by
/// part: it would read each pack once per part, through the other threads' files, and
/// download them again for their own part (1.4× the repository, measured on 80k files). A
/// run is longer than the gap a restore reads through, so it skips the other threads' runs;
/// and long, so that a restore needs few reads (each costs the S3 server partial blocks).
const RUN_BYTES: usize = 4 << 20;
const _: () = assert!(RUN_BYTES as u64 > super::ranges::MAX_RANGE_GAP);
/// Run slots: more than the walk threads, so that each has its own.
const RUN_SLOTS: usize = 16;
static NEXT_RUN_SLOT: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// This thread's run slot (modulo [`RUN_SLOTS`]).
    static RUN_SLOT: usize = NEXT_RUN_SLOT.fetch_add(1, Ordering::Relaxed);
}

/// Writes blobs into a repository. Create one per backup run, call [`finish`](Self::finish).
pub struct BlobWriter {
    shared: Arc<Shared>,
    tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

const INDEX_EVERY_PACKS: usize = 8;
const INDEX_EVERY: Duration = Duration::from_secs(30);

impl BlobWriter {
    /// Starts the worker threads. `handle` is the runtime that runs uploads; call from a
    /// blocking thread (not from inside an async task).
    pub fn new(repo: &Repository, handle: Handle, stats: Arc<WriterStats>) -> Self {
        let opts = repo.write_options();
        let workers = if opts.workers == 0 { super::cores() } else { opts.workers };
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            handle,
            pending: Mutex::default(),
            packs: Default::default(),
            runs: (0..RUN_SLOTS).map(|_| Mutex::default()).collect(),
            uploads: Arc::new(Semaphore::new(opts.upload_concurrency.max(1))),
            unindexed: Mutex::default(),
            last_index: Mutex::new(Instant::now()),
            error: Mutex::default(),
            stats,
            chunker: Chunker::new(repo.config().chunker, repo.key().chunker_seed),
            spare: Mutex::default(),
            pack_buffers: Mutex::default(),
        });
        let (tx, rx) = sync_channel::<Job>(workers * 2);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..workers)
            .map(|i| {
                let shared = shared.clone();
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("berth-pack-{i}"))
                    .spawn(move || worker(shared, rx))
                    .expect("spawn worker thread")
            })
            .collect();
        Self { shared, tx: Some(tx), workers: handles }
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.shared.stats
    }

    fn check_error(&self) -> Result<()> {
        if let Some(e) = self.shared.error.lock().expect("lock").take() {
            return Err(e);
        }
        Ok(())
    }

    /// Stores a blob unless it exists already; returns its id. The calling thread compresses
    /// and encrypts it: these are whole small files and trees, from the walk's many threads,
    /// and handing each to a worker cost more in wake-ups than sealing it.
    pub fn add(&self, kind: BlobKind, data: &[u8]) -> Result<Id> {
        thread_local! {
            static SEALED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let id = self.shared.repo.key().blob_id(data);
        if self.claim(&id, data.len())? {
            SEALED.with_borrow_mut(|sealed| match kind {
                BlobKind::Data => run_blob(&self.shared, &id, data, sealed),
                BlobKind::Tree => pack_blob(&self.shared, kind, &id, data, sealed),
            });
        }
        Ok(id)
    }

    /// Whether a blob is new: then it is marked pending and counted, and the caller stores it.
    fn claim(&self, id: &Id, len: usize) -> Result<bool> {
        self.check_error()?;
        // Under the pending lock: an upload moves its blobs from `pending` to the index (index
        // first), so a blob is always in one of the two.
        let known = {
            let mut pending = self.shared.pending.lock().expect("lock");
            pending.contains(id)
                || self.shared.repo.index().read().expect("index lock").contains(id)
                || !pending.insert(*id)
        };
        let s = &self.shared.stats;
        if known {
            s.blobs_dedup.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        s.blobs_new.fetch_add(1, Ordering::Relaxed);
        s.bytes_new.fetch_add(len as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Queues a blob for the workers unless it is known; `data` is only called for a new blob.
    fn add_with(&self, kind: BlobKind, id: Id, data: impl FnOnce() -> Vec<u8>, len: usize) -> Result<()> {
        if !self.claim(&id, len)? {
            return Ok(());
        }
        let data = data();
        self.tx.as_ref().expect("writer open").send(Job { kind, id, data }).map_err(|_| {
            self.shared
                .error
                .lock()
                .expect("lock")
                .take()
                .unwrap_or_else(|| BackupError::Aborted("pack workers stopped".into()))
        })
    }

    /// Chunks a stream with content-defined chunking and stores the chunks; returns their ids
    /// and the total length. Only new chunks are copied (to be compressed and packed).
    /// `previous` is the chunk list of the stream's last version, when there is one: its
    /// chunks are confirmed by hash instead of searched for (see [`chunker`](super::chunker)).
    pub fn add_stream<R: Read>(&self, reader: R, previous: Option<&[Id]>) -> Result<(Vec<Id>, u64)> {
        let mut previous = previous.and_then(|ids| self.previous_chunks(ids));
        let mut ids = Vec::new();
        let key = self.shared.repo.key();
        let total = self.shared.chunker.chunks(
            reader,
            previous.as_mut(),
            |d| key.blob_id(d),
            |chunk, id| {
                self.shared.stats.bytes_read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.add_with(
                    BlobKind::Data,
                    id,
                    || {
                        let mut buf = self.shared.spare.lock().expect("lock").pop().unwrap_or_default();
                        buf.extend_from_slice(chunk);
                        buf
                    },
                    chunk.len(),
                )?;
                ids.push(id);
                Ok::<_, BackupError>(())
            },
        )?;
        if let Some(p) = previous {
            self.shared.stats.bytes_confirmed.fetch_add(p.reused_bytes(), Ordering::Relaxed);
        }
        Ok((ids, total))
    }

    /// The old chunks with their lengths from the index; `None` when one is not indexed (it
    /// could not be reused anyway).
    fn previous_chunks(&self, ids: &[Id]) -> Option<Previous> {
        let index = self.shared.repo.index().read().expect("index lock");
        let chunks: Option<Vec<(Id, u32)>> =
            ids.iter().map(|id| index.get(id).map(|(_, e)| (*id, e.raw_len))).collect();
        chunks.filter(|c| !c.is_empty()).map(Previous::new)
    }

    /// Flushes everything, waits for all uploads and writes the last index file. Only after
    /// this returns `Ok` may a snapshot refer to the blobs.
    pub fn finish(mut self) -> Result<()> {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                return Err(BackupError::Aborted("a pack worker panicked".into()));
            }
        }
        for run in &self.shared.runs {
            let mut run = run.lock().expect("lock");
            if !run.is_empty() {
                append_run(&self.shared, &mut run);
            }
        }
        for open in &self.shared.packs {
            let last = std::mem::take(&mut *open.lock().expect("lock"));
            if !last.is_empty() {
                upload_pack(&self.shared, last);
            }
        }
        let permits = self.shared.repo.write_options().upload_concurrency.max(1) as u32;
        let all = self
            .shared
            .handle
            .block_on(self.shared.uploads.clone().acquire_many_owned(permits))
            .map_err(|_| BackupError::Aborted("upload semaphore closed".into()))?;
        drop(all);
        self.check_error()?;
        let rest = std::mem::take(&mut *self.shared.unindexed.lock().expect("lock"));
        if !rest.is_empty() {
            let repo = self.shared.repo.clone();
            let data_len = self.shared.handle.block_on(async move { repo.write_index(&rest).await.map(|_| ()) });
            data_len?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn set_error(shared: &Shared, e: BackupError) {
    let mut slot = shared.error.lock().expect("lock");
    if slot.is_none() {
        *slot = Some(e);
    }
}

fn worker(shared: Arc<Shared>, rx: Arc<Mutex<Receiver<Job>>>) {
    let mut sealed = Vec::new();
    loop {
        let job = {
            let rx = rx.lock().expect("lock");
            rx.recv()
        };
        let Ok(job) = job else { return };
        if shared.error.lock().expect("lock").is_some() {
            // Drain without work so that senders do not block; the error surfaces in add/finish.
            continue;
        }
        pack_blob(&shared, job.kind, &job.id, &job.data, &mut sealed);
        let mut buf = job.data;
        buf.clear();
        let mut spare = shared.spare.lock().expect("lock");
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }
}

/// Compresses and encrypts a blob into `sealed`, appends it to the open pack of its kind,
/// and uploads the pack once full.
fn pack_blob(shared: &Arc<Shared>, kind: BlobKind, id: &Id, data: &[u8], sealed: &mut Vec<u8>) {
    let opts = shared.repo.write_options();
    pack::seal_blob_into(shared.repo.key(), kind, id, data, opts.compression_level, sealed);
    let full = {
        let mut p = shared.packs[kind as usize].lock().expect("lock");
        p.add(kind, *id, sealed, data.len() as u32);
        if p.len() >= opts.pack_size {
            // Tree packs fill slowly: a fresh buffer is only faulted in as they grow.
            let buf = match kind {
                BlobKind::Data => shared.pack_buffers.lock().expect("lock").pop().unwrap_or_default(),
                BlobKind::Tree => Vec::new(),
            };
            Some(std::mem::replace(&mut *p, PackBuilder::with_buffer(buf)))
        } else {
            None
        }
    };
    if let Some(p) = full {
        upload_pack(shared, p);
    }
}

/// Seals a small data blob into `sealed` and adds it to the calling thread's run; a full run
/// joins the open data pack.
fn run_blob(shared: &Arc<Shared>, id: &Id, data: &[u8], sealed: &mut Vec<u8>) {
    let opts = shared.repo.write_options();
    pack::seal_blob_into(shared.repo.key(), BlobKind::Data, id, data, opts.compression_level, sealed);
    let slot = RUN_SLOT.with(|s| *s) % shared.runs.len();
    let mut run = shared.runs[slot].lock().expect("lock");
    if run.is_empty() {
        run.reserve(RUN_BYTES + sealed.len());
    }
    run.add(BlobKind::Data, *id, sealed, data.len() as u32);
    if run.len() >= RUN_BYTES {
        append_run(shared, &mut run);
    }
}

/// Moves a run into the open data pack, after uploading that pack if the run does not fit.
fn append_run(shared: &Arc<Shared>, run: &mut PackBuilder) {
    let pack_size = shared.repo.write_options().pack_size;
    let full = {
        let mut p = shared.packs[BlobKind::Data as usize].lock().expect("lock");
        let full = (!p.is_empty() && p.len() + run.len() > pack_size).then(|| {
            let buf = shared.pack_buffers.lock().expect("lock").pop().unwrap_or_default();
            std::mem::replace(&mut *p, PackBuilder::with_buffer(buf))
        });
        p.append(run);
        full
    };
    if let Some(p) = full {
        upload_pack(shared, p);
    }
}

fn upload_pack(shared: &Arc<Shared>, builder: PackBuilder) {
    let (bytes, info) = builder.finish(shared.repo.key());
    let permit = match shared.handle.block_on(shared.uploads.clone().acquire_owned()) {
        Ok(p) => p,
        Err(_) => {
            set_error(shared, BackupError::Aborted("upload semaphore closed".into()));
            return;
        }
    };
    let shared2 = shared.clone();
    shared.handle.spawn(async move {
        let _permit = permit;
        let key = pack::pack_key(&info.id);
        let len = bytes.len() as u64;
        if let Err(e) = shared2.repo.storage().put(&key, bytes.clone()).await {
            set_error(&shared2, e);
            return;
        }
        // The storage is done with the bytes: their buffer serves the next pack.
        if let Ok(buf) = bytes.try_into_mut() {
            let mut buf = Vec::from(buf);
            buf.clear();
            let mut pool = shared2.pack_buffers.lock().expect("lock");
            if pool.len() < SPARE_PACK_BUFFERS {
                pool.push(buf);
            }
        }
        shared2.stats.bytes_uploaded.fetch_add(len, Ordering::Relaxed);
        if let Err(e) = shared2.repo.index().write().expect("index lock").add_pack(&info) {
            set_error(&shared2, e);
            return;
        }
        // Indexed now: `pending` only holds the blobs in flight (bounded by the packs in flight).
        {
            let mut pending = shared2.pending.lock().expect("lock");
            for b in &info.blobs {
                pending.remove(&b.id);
            }
        }
        let batch = {
            let mut un = shared2.unindexed.lock().expect("lock");
            un.push(info);
            let mut last = shared2.last_index.lock().expect("lock");
            if un.len() >= INDEX_EVERY_PACKS || last.elapsed() >= INDEX_EVERY {
                *last = Instant::now();
                Some(std::mem::take(&mut *un))
            } else {
                None
            }
        };
        if let Some(batch) = batch
            && let Err(e) = shared2.repo.write_index(&batch).await
        {
            set_error(&shared2, e);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::StorageConfig;
    use crate::backup::storage::Storage;

    /// Two threads adding small blobs side by side (as the walk threads do): each pack holds
    /// them in long runs of one thread's blobs, not interleaved blob by blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_blobs_of_concurrent_threads_are_packed_in_runs() {
        const BLOBS: u64 = 1500; // of 4 KiB, incompressible: 6 MiB per thread
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::connect(&StorageConfig::Local(tmp.path().to_path_buf())).await.unwrap();
        let repo = Repository::init(storage, b"secret").await.unwrap();
        let (r, handle) = (repo.clone(), Handle::current());
        let ids: Vec<Vec<Id>> = tokio::task::spawn_blocking(move || {
            let writer = BlobWriter::new(&r, handle, Arc::default());
            let barrier = std::sync::Barrier::new(2);
            let ids = std::thread::scope(|s| {
                let threads: Vec<_> = (0..2u64)
                    .map(|t| {
                        let (writer, barrier) = (&writer, &barrier);
                        s.spawn(move || {
                            (0..BLOBS)
                                .map(|i| {
                                    if i % 8 == 0 {
                                        barrier.wait(); // keeps the two threads in step
                                    }
                                    let data = crate::backup::test_bytes(t * BLOBS + i + 1, 4096);
                                    writer.add(BlobKind::Data, &data).unwrap()
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            writer.finish().unwrap();
            ids
        })
        .await
        .unwrap();

        let index = repo.index().read().unwrap();
        let mut placed: Vec<(u32, u32, usize)> = (ids.iter().enumerate())
            .flat_map(|(t, ids)| ids.iter().map(move |id| (t, id)))
            .map(|(t, id)| index.get(id).map(|(_, e)| (e.pack, e.offset, t)).expect("indexed"))
            .collect();
        placed.sort();
        let stretches = 1 + placed.windows(2).filter(|w| w[0].0 != w[1].0 || w[0].2 != w[1].2).count();
        // 12 MiB in runs of 4 MiB: about 4 stretches (blob by blob: thousands).
        assert!((2..=8).contains(&stretches), "{stretches} stretches of one thread's blobs");
    }
}

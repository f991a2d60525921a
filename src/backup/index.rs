//! The repository index (blob id → pack and position), with memory bounded by design.
//!
//! Up to [`IndexLimits::memory_blobs`] blobs are held in memory: a vector sorted by id (52
//! bytes a blob, searched by bisection), and the blobs a backup added since the last merge in
//! a small hash map. A larger index keeps its sorted blobs in one *spill file* in the scratch
//! directory (`TMPDIR`; created unlinked, so a crash leaves nothing behind), 49 bytes a blob,
//! searched in place: the id of every [`FENCE`]-th record stays in memory (half a byte a blob)
//! and a lookup reads one stretch of [`FENCE`] records with one `pread`, from the page cache.
//! A million-blob index then holds about 0.5 MB of fences instead of 52 MB of entries, and
//! its file's pages are cache the kernel may reclaim, not the process's memory.
//!
//! Loading the index files is an external sort ([`IndexLoader`]): blobs are gathered
//! `memory_blobs` at a time, each lot is sorted and written as a run, and the runs are merged
//! into the spill file at the end. A backup's blobs reach the spill file the same way: when
//! the in-memory part outgrows `memory_blobs`, it is merged with the file into a new one.
//!
//! The spill file is memory by other means: failing to *read it back* (an I/O error on the
//! scratch disk) aborts like a failed allocation would. Failing to *write* it (the scratch
//! volume is full) is an ordinary error.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;

use super::crypto::Id;
use super::error::{BackupError, Result};
use super::pack::{BlobKind, PackInfo, PackedBlob};

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub kind: BlobKind,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

/// A pack known to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackMeta {
    pub id: Id,
    pub size: u64,
}

/// How much of the index is held in memory.
#[derive(Debug, Clone, Copy)]
pub struct IndexLimits {
    /// Sorted blobs held in memory before they move to the spill file.
    pub memory_blobs: usize,
    /// Blobs added by a backup that are merged into the sorted part at once.
    pub merge_at: usize,
}

impl Default for IndexLimits {
    /// 262,144 blobs (13.6 MB) in memory; 57,000 recent ones stay below 7/8 of a 65,536-bucket
    /// hash map, so it never doubles (3.5 MB).
    fn default() -> Self {
        Self { memory_blobs: 1 << 18, merge_at: 57_000 }
    }
}

/// Records of the spill file one lookup reads (3,136 bytes).
const FENCE: usize = 64;
/// One record: id, pack, kind, offset, length, raw_len.
const RECORD: usize = 32 + 4 + 1 + 4 + 4 + 4;
/// Buffer of each run read by a merge.
const MERGE_READ_BUF: usize = 64 << 10;

type Entry = (Id, IndexEntry);

/// The index of a repository.
#[derive(Debug, Default)]
pub struct Index {
    pub packs: Vec<PackMeta>,
    pack_pos: HashMap<Id, u32>,
    /// Sorted by id, each id once, none of them in `spill`.
    sorted: Vec<Entry>,
    /// Added since the last merge; none of them is in `sorted` or `spill`.
    recent: HashMap<Id, IndexEntry>,
    spill: Option<SpillFile>,
    limits: IndexLimits,
}

impl Index {
    /// An empty index holding at most `limits` in memory.
    pub fn with_limits(limits: IndexLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.entry(id).is_some()
    }

    fn entry(&self, id: &Id) -> Option<IndexEntry> {
        if let Ok(i) = self.sorted.binary_search_by(|(k, _)| k.cmp(id)) {
            return Some(self.sorted[i].1);
        }
        if let Some(e) = self.recent.get(id) {
            return Some(*e);
        }
        self.spill.as_ref().and_then(|s| s.get(id))
    }

    pub fn get(&self, id: &Id) -> Option<(PackMeta, IndexEntry)> {
        self.entry(id).map(|e| (self.packs[e.pack as usize], e))
    }

    pub fn blob_count(&self) -> usize {
        self.sorted.len() + self.recent.len() + self.spill.as_ref().map_or(0, |s| s.len)
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }

    /// Blobs in the spill file rather than in memory.
    pub fn spilled_blobs(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.len)
    }

    /// Bytes of memory held by the blob entries (for tests and logs).
    pub fn heap_bytes(&self) -> usize {
        self.sorted.capacity() * std::mem::size_of::<Entry>()
            + self.recent.capacity() * (std::mem::size_of::<Entry>() + 1)
            + self.spill.as_ref().map_or(0, |s| s.fences.capacity() * std::mem::size_of::<Id>())
    }

    fn pack_position(&mut self, id: Id, size: u64) -> u32 {
        *self.pack_pos.entry(id).or_insert_with(|| {
            self.packs.push(PackMeta { id, size });
            (self.packs.len() - 1) as u32
        })
    }

    /// Adds the blobs of a pack (a blob already known elsewhere keeps its first location).
    pub fn add_pack(&mut self, info: &PackInfo) -> Result<()> {
        let pos = self.pack_position(info.id, info.size);
        for b in &info.blobs {
            if !self.contains(&b.id) {
                self.recent.insert(b.id, entry(pos, b));
            }
        }
        if self.recent.len() >= self.limits.merge_at {
            self.merge_recent();
        }
        if self.sorted.len() > self.limits.memory_blobs {
            let sorted = std::mem::take(&mut self.sorted);
            let old = self.spill.take();
            self.spill = Some(SpillFile::merge(old.into_iter().map(SpillFile::reader).collect(), Some(sorted))?);
        }
        Ok(())
    }

    /// Merges `recent` into `sorted` in place, from the back (no second copy of `sorted`).
    fn merge_recent(&mut self) {
        let mut add: Vec<Entry> = self.recent.drain().collect();
        self.recent.shrink_to(self.limits.merge_at);
        add.sort_unstable_by_key(|e| e.0);
        let old = self.sorted.len();
        self.sorted.reserve_exact(add.len());
        self.sorted.extend_from_slice(&add);
        let (mut i, mut j) = (old, add.len());
        while j > 0 {
            let k = i + j - 1;
            if i > 0 && self.sorted[i - 1].0 > add[j - 1].0 {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = add[j - 1];
                j -= 1;
            }
        }
    }

    /// Calls `f` with every blob.
    fn scan(&self, mut f: impl FnMut(&Id, &IndexEntry)) {
        self.sorted.iter().for_each(|(id, e)| f(id, e));
        self.recent.iter().for_each(|(id, e)| f(id, e));
        if let Some(s) = &self.spill {
            s.scan(&mut f);
        }
    }

    /// Every pack with its blobs (as in the index, including duplicates' first location only).
    pub fn pack_contents(&self) -> Vec<PackInfo> {
        let mut out: Vec<PackInfo> =
            self.packs.iter().map(|p| PackInfo { id: p.id, size: p.size, blobs: Vec::new() }).collect();
        self.scan(|id, e| {
            out[e.pack as usize].blobs.push(PackedBlob {
                kind: e.kind,
                id: *id,
                offset: e.offset,
                length: e.length,
                raw_len: e.raw_len,
            });
        });
        for p in &mut out {
            p.blobs.sort_by_key(|b| b.offset);
        }
        out
    }
}

fn entry(pack: u32, b: &PackedBlob) -> IndexEntry {
    IndexEntry { pack, kind: b.kind, offset: b.offset, length: b.length, raw_len: b.raw_len }
}

/// Builds an [`Index`] from index files: an external sort whose memory is bounded by
/// `memory_blobs`, whatever the number of blobs.
pub struct IndexLoader {
    index: Index,
    /// Sorted runs already written, `memory_blobs` blobs each.
    runs: Vec<RunReader>,
}

impl IndexLoader {
    pub fn new(limits: IndexLimits) -> Self {
        Self { index: Index::with_limits(limits), runs: Vec::new() }
    }

    /// Adds the blobs of a pack read from an index file.
    pub fn load_pack(&mut self, info: &PackInfo) -> Result<()> {
        let pos = self.index.pack_position(info.id, info.size);
        for b in &info.blobs {
            if self.index.sorted.len() == self.index.limits.memory_blobs {
                let mut lot = std::mem::take(&mut self.index.sorted);
                sort_dedup(&mut lot);
                self.runs.push(write_run(&lot)?);
                lot.clear();
                self.index.sorted = lot; // the same room for the next lot
            }
            self.index.sorted.push((b.id, entry(pos, b)));
        }
        Ok(())
    }

    /// Sorts what was loaded; merges the runs into the spill file when there are any. A
    /// duplicate keeps its first location (the pack loaded first).
    pub fn finish(mut self) -> Result<Index> {
        let mut lot = std::mem::take(&mut self.index.sorted);
        sort_dedup(&mut lot);
        if self.runs.is_empty() {
            lot.shrink_to_fit();
            self.index.sorted = lot;
        } else {
            self.index.spill = Some(SpillFile::merge(self.runs, Some(lot))?);
        }
        Ok(self.index)
    }
}

fn sort_dedup(lot: &mut Vec<Entry>) {
    lot.sort_unstable_by_key(|(id, e)| (*id, e.pack));
    lot.dedup_by(|later, first| later.0 == first.0);
}

fn scratch_file() -> Result<File> {
    tempfile::tempfile()
        .map_err(|e| BackupError::io(format!("creating the index spill file in {}", std::env::temp_dir().display()), e))
}

fn spill_err(e: std::io::Error) -> BackupError {
    BackupError::io(format!("the index spill file in {}", std::env::temp_dir().display()), e)
}

fn encode(id: &Id, e: &IndexEntry, out: &mut [u8; RECORD]) {
    out[..32].copy_from_slice(&id.0);
    out[32..36].copy_from_slice(&e.pack.to_le_bytes());
    out[36] = e.kind as u8;
    out[37..41].copy_from_slice(&e.offset.to_le_bytes());
    out[41..45].copy_from_slice(&e.length.to_le_bytes());
    out[45..49].copy_from_slice(&e.raw_len.to_le_bytes());
}

fn decode(r: &[u8]) -> Entry {
    let u32_at = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().expect("4 bytes"));
    // Written by this process from a valid kind.
    let kind = if r[36] == BlobKind::Tree as u8 { BlobKind::Tree } else { BlobKind::Data };
    let id = Id(r[..32].try_into().expect("32 bytes"));
    (id, IndexEntry { pack: u32_at(32), kind, offset: u32_at(37), length: u32_at(41), raw_len: u32_at(45) })
}

/// A sorted run written to a scratch file, for the merge.
fn write_run(lot: &[Entry]) -> Result<RunReader> {
    let mut w = BufWriter::with_capacity(MERGE_READ_BUF, scratch_file()?);
    let mut rec = [0u8; RECORD];
    for (id, e) in lot {
        encode(id, e, &mut rec);
        w.write_all(&rec).map_err(spill_err)?;
    }
    let mut file = w.into_inner().map_err(|e| spill_err(e.into_error()))?;
    file.rewind().map_err(spill_err)?;
    Ok(RunReader { file: BufReader::with_capacity(MERGE_READ_BUF, file), left: lot.len() })
}

/// Reads a sorted run front to back.
struct RunReader {
    file: BufReader<File>,
    left: usize,
}

impl RunReader {
    fn next(&mut self) -> Result<Option<Entry>> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut rec = [0u8; RECORD];
        self.file.read_exact(&mut rec).map_err(spill_err)?;
        self.left -= 1;
        Ok(Some(decode(&rec)))
    }
}

/// The sorted blobs that do not fit in memory.
#[derive(Debug)]
struct SpillFile {
    file: File,
    len: usize,
    /// The id of records 0, FENCE, 2·FENCE, …
    fences: Vec<Id>,
}

impl SpillFile {
    /// Merges sorted runs (and a sorted vector) into a new spill file; an id in several keeps
    /// the location with the lowest pack position.
    fn merge(runs: Vec<RunReader>, memory: Option<Vec<Entry>>) -> Result<Self> {
        let mut sources: Vec<Source> = runs.into_iter().map(Source::Run).collect();
        sources.extend(memory.map(|m| Source::Memory(m.into_iter())));
        // The head of each source, and a heap of (id, pack, source) over them.
        let mut heads = vec![None; sources.len()];
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some((id, e)) = s.next()? {
                heap.push(Reverse((id, e.pack, i)));
                heads[i] = Some(e);
            }
        }
        let mut w = BufWriter::with_capacity(1 << 20, scratch_file()?);
        let (mut len, mut fences, mut last) = (0usize, Vec::new(), None::<Id>);
        let mut rec = [0u8; RECORD];
        while let Some(Reverse((id, _, src))) = heap.pop() {
            let e = heads[src].take().expect("a head for each source in the heap");
            if let Some((next, ne)) = sources[src].next()? {
                heap.push(Reverse((next, ne.pack, src)));
                heads[src] = Some(ne);
            }
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            if len % FENCE == 0 {
                fences.push(id);
            }
            encode(&id, &e, &mut rec);
            w.write_all(&rec).map_err(spill_err)?;
            len += 1;
        }
        let file = w.into_inner().map_err(|e| spill_err(e.into_error()))?;
        fences.shrink_to_fit();
        Ok(Self { file, len, fences })
    }

    fn reader(self) -> RunReader {
        let mut file = self.file;
        // A seek of a regular file cannot fail at offset 0.
        let _ = file.rewind();
        RunReader { file: BufReader::with_capacity(MERGE_READ_BUF, file), left: self.len }
    }

    fn get(&self, id: &Id) -> Option<IndexEntry> {
        let block = self.fences.partition_point(|f| f <= id).checked_sub(1)?;
        let mut buf = [0u8; FENCE * RECORD];
        let buf = self.read(block * FENCE, &mut buf);
        let (mut lo, mut hi) = (0, buf.len() / RECORD);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let r = &buf[mid * RECORD..(mid + 1) * RECORD];
            match r[..32].cmp(&id.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(decode(r).1),
            }
        }
        None
    }

    /// Reads the records from `first` on that fit in `buf` (at least one, unless past the end).
    fn read<'b>(&self, first: usize, buf: &'b mut [u8]) -> &'b [u8] {
        let n = (buf.len() / RECORD).min(self.len.saturating_sub(first));
        let buf = &mut buf[..n * RECORD];
        if let Err(e) = self.file.read_exact_at(buf, (first * RECORD) as u64) {
            panic!("reading the index spill file back failed (the scratch disk is failing): {e}");
        }
        buf
    }

    fn scan(&self, f: &mut impl FnMut(&Id, &IndexEntry)) {
        let mut buf = vec![0u8; 1024 * RECORD];
        let mut first = 0;
        while first < self.len {
            let part = self.read(first, &mut buf);
            for r in part.chunks_exact(RECORD) {
                let (id, e) = decode(r);
                f(&id, &e);
            }
            first += part.len() / RECORD;
        }
    }
}

/// A sorted source of a merge.
enum Source {
    Run(RunReader),
    Memory(std::vec::IntoIter<Entry>),
}

impl Source {
    fn next(&mut self) -> Result<Option<Entry>> {
        match self {
            Self::Run(r) => r.next(),
            Self::Memory(m) => Ok(m.next()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_id(n: u32) -> Id {
        Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    fn pack_of(seed: u32, blobs: std::ops::Range<u32>) -> PackInfo {
        let blobs = blobs
            .enumerate()
            .map(|(i, n)| PackedBlob {
                kind: if n % 7 == 0 { BlobKind::Tree } else { BlobKind::Data },
                id: blob_id(n),
                offset: i as u32 * 10,
                length: 10 + n % 3,
                raw_len: n,
            })
            .collect();
        PackInfo { id: blob_id(1_000_000_000 + seed), size: 1 << 20, blobs }
    }

    /// Index files (three packs, the third repeating blobs of the first), then a backup's
    /// packs (more than `merge_at` new blobs, and one pack half known already).
    fn build(limits: IndexLimits) -> Index {
        let mut loader = IndexLoader::new(limits);
        for p in [pack_of(1, 0..40_000), pack_of(2, 40_000..80_000), pack_of(3, 30_000..45_000)] {
            loader.load_pack(&p).unwrap();
        }
        let mut index = loader.finish().unwrap();
        assert_eq!(index.blob_count(), 80_000);
        for k in 0..20u32 {
            index.add_pack(&pack_of(10 + k, 80_000 + k * 5_000..80_000 + (k + 1) * 5_000)).unwrap();
        }
        index.add_pack(&pack_of(99, 179_990..180_010)).unwrap();
        index
    }

    /// Every blob is found at its first location, whether it is held in memory or in the
    /// spill file; unknown ids are not found; `pack_contents` lists each blob once.
    fn assert_lookups(index: &Index) {
        assert_eq!(index.blob_count(), 180_010);
        for n in 0..180_010u32 {
            let (pack, e) = index.get(&blob_id(n)).unwrap_or_else(|| panic!("blob {n} not found"));
            assert_eq!((e.raw_len, e.length), (n, 10 + n % 3), "blob {n}");
            assert_eq!(e.kind == BlobKind::Tree, n % 7 == 0, "blob {n}");
            let expected = match n {
                0..40_000 => 1,
                40_000..80_000 => 2,
                80_000..180_000 => 10 + (n - 80_000) / 5_000,
                _ => 99,
            };
            assert_eq!(pack.id, blob_id(1_000_000_000 + expected), "blob {n}");
        }
        for n in 180_010..200_000u32 {
            assert!(!index.contains(&blob_id(n)), "blob {n} is not in the index");
        }
        let contents = index.pack_contents();
        let mut listed: Vec<Id> = contents.iter().flat_map(|p| p.blobs.iter().map(|b| b.id)).collect();
        assert_eq!(listed.len(), 180_010);
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed.len(), 180_010, "each blob once");
    }

    #[test]
    fn a_small_index_stays_in_memory() {
        let index = build(IndexLimits::default());
        assert_lookups(&index);
        assert_eq!(index.spilled_blobs(), 0);
        assert!(index.recent.len() < IndexLimits::default().merge_at, "merged: {} recent", index.recent.len());
    }

    /// With room for 10,000 blobs, the load is an external sort of 8 runs, and the backup's
    /// blobs move to the spill file as they come: memory stays near the bound, lookups agree.
    #[test]
    fn a_large_index_spills_and_is_searched_in_place() {
        let limits = IndexLimits { memory_blobs: 10_000, merge_at: 3_000 };
        let index = build(limits);
        assert_lookups(&index);
        assert!(index.spilled_blobs() >= 160_000, "{} spilled", index.spilled_blobs());
        assert!(index.sorted.len() <= limits.memory_blobs && index.recent.len() < limits.merge_at);
        // Entries in memory at most: the sorted part, the recent map, one fence per 64 blobs.
        let bound = (limits.memory_blobs + limits.merge_at) * 52 + limits.merge_at * 2 * 53 + 180_010 / 64 * 32;
        assert!(index.heap_bytes() < bound, "{} bytes held, bound {bound}", index.heap_bytes());
    }
}

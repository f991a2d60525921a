//! Ranged reads of packs: the blobs wanted from one pack that sit close together are fetched
//! with one GET (restore's batches and trees, `check` and `prune`'s tree walks).

use std::collections::HashMap;

use super::crypto::Id;
use super::index::{IndexEntry, PackMeta};

/// Blobs of one pack closer than this are fetched with one ranged GET; farther apart, the gap
/// is not downloaded (packs written by incremental backups hold blobs of many snapshots, and
/// a backup's walk threads write runs longer than this, see `writer::RUN_BYTES`).
pub(crate) const MAX_RANGE_GAP: u64 = 1 << 20;
/// The longest ranged GET: bounds the read buffers (`parallel` of them), and splits a batch of
/// small files into enough reads to keep `parallel` of them busy.
pub(super) const MAX_READ: u64 = 8 << 20;

/// A blob to read: where it is, and where it goes (`T`).
pub(super) type Planned<T> = (Id, IndexEntry, T);

/// One ranged read: blobs of one pack, sorted by offset.
pub(super) struct Read<T> {
    pub pack: PackMeta,
    pub blobs: Vec<Planned<T>>,
}

impl<T> Read<T> {
    /// The byte range of the pack that holds the blobs.
    pub fn span(&self) -> (u64, u64) {
        let start = self.blobs[0].1.offset as u64;
        let end = self.blobs.iter().map(|(_, e, _)| e.offset as u64 + e.length as u64).max().unwrap_or(start);
        (start, end)
    }
}

/// Cuts blobs (of a batch, or trees) into reads: per pack, runs without a gap above
/// [`MAX_RANGE_GAP`], at most [`MAX_READ`] long (a longer blob is read alone).
pub(super) fn plan_reads<T>(blobs: HashMap<Id, (IndexEntry, PackMeta, T)>) -> Vec<Read<T>> {
    let mut by_pack: HashMap<u32, (PackMeta, Vec<Planned<T>>)> = HashMap::new();
    for (id, (e, meta, targets)) in blobs {
        by_pack.entry(e.pack).or_insert_with(|| (meta, Vec::new())).1.push((id, e, targets));
    }
    let mut reads = Vec::new();
    for (_, (pack, mut entries)) in by_pack {
        entries.sort_by_key(|(_, e, _)| e.offset);
        let mut current: Vec<Planned<T>> = Vec::new();
        for entry in entries {
            if let (Some(first), Some(last)) = (current.first(), current.last()) {
                let start = first.1.offset as u64;
                let prev_end = last.1.offset as u64 + last.1.length as u64;
                let end = entry.1.offset as u64 + entry.1.length as u64;
                if entry.1.offset as u64 > prev_end + MAX_RANGE_GAP || end - start > MAX_READ {
                    reads.push(Read { pack, blobs: std::mem::take(&mut current) });
                }
            }
            current.push(entry);
        }
        if !current.is_empty() {
            reads.push(Read { pack, blobs: current });
        }
    }
    reads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::pack;

    /// Reads of one batch are cut at gaps and at the read size, never split a blob, and keep
    /// every blob once.
    #[test]
    fn reads_are_bounded_and_cover_every_blob() {
        let pack = PackMeta { id: Id([1; 32]), size: 64 << 20 };
        let mut blobs = HashMap::new();
        let mut offset = 0u32;
        for i in 0..200u32 {
            // 100 KiB blobs, a 2 MiB hole after the 50th.
            let e = IndexEntry { pack: 0, kind: pack::BlobKind::Data, offset, length: 100 << 10, raw_len: 1 };
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            blobs.insert(Id(id), (e, pack, i));
            offset += (100 << 10) + if i == 49 { 2 << 20 } else { 0 };
        }
        let reads = plan_reads(blobs);
        assert_eq!(reads.iter().map(|r| r.blobs.len()).sum::<usize>(), 200);
        for r in &reads {
            let first = r.blobs[0].1.offset as u64;
            let last = r.blobs.last().unwrap().1;
            assert!(last.offset as u64 + last.length as u64 - first <= MAX_READ);
            assert!(r.blobs.windows(2).all(|w| w[1].1.offset == w[0].1.offset + w[0].1.length));
        }
        // 50 blobs before the hole, 150 after, cut into reads of at most `per_read` blobs.
        let per_read = (MAX_READ / (100 << 10)) as usize;
        assert_eq!(reads.len(), 50usize.div_ceil(per_read) + 150usize.div_ceil(per_read));
    }
}

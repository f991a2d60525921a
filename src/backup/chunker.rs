//! Content-defined chunking of a stream (FastCDC 2020, normalisation level 1, keyed gear).
//!
//! fastcdc's `StreamCDC` shifts its buffer and copies every chunk out (several copies of
//! every byte); here one buffer per thread is filled by `read`, cut points are found in
//! place and the callback gets slices. Cut points are the same as `StreamCDC`'s: a cut is
//! only searched with at least `max_size` bytes ahead (or at the end of the stream).
//!
//! A changed file is mostly its old chunks. Given the chunks of its previous version
//! ([`Previous`]), the chunker first tries the old chunk expected at the current offset: when
//! the next bytes hash to its id and a scan would cut where it ends, that is the chunk, and
//! the chunk's bytes are never scanned. The result is exactly a full scan's: equal bytes mean
//! no cut point before the old chunk's end (a FastCDC cut point depends on the bytes before it
//! only), and whether the scan cuts at the end itself is decided by the gear hash there, which
//! covers the 64 bytes before it and the first byte after the chunk ([`Chunker::cuts_at`]).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};

use super::crypto::Id;
use super::repo::ChunkerParams;

/// Chunker settings with the gear tables of one repository.
pub struct Chunker {
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

thread_local! {
    // Reused across files: a fresh buffer would be faulted in (zeroed) for every file.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Chunker {
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Self { params, mask_s, mask_l, gear, gear_ls }
    }

    /// Where the chunk starting at `data[0]` ends; `data` holds at least `max_size` bytes
    /// unless it is the end of the stream.
    fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (_, end) = cut_gear(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        end
    }

    /// Whether a scan of `data` (from a chunk start, at least `max_size` bytes or up to the end of
    /// the stream) would cut at `len`, given that it finds no cut point before `len` — which
    /// holds when `data[..len]` is a chunk the scan once cut there. Mirrors `cut_gear`: the
    /// candidate positions are `min_size..` (the last byte of an odd-length window is never
    /// one), below `avg_size` the strict mask applies, and the gear hash at a position is
    /// `(h << 1) + gear[byte]` over the bytes from `min_size`, of which the last 64 count.
    fn cuts_at(&self, data: &[u8], len: usize) -> bool {
        let (min, avg, max) =
            (self.params.min_size as usize, self.params.avg_size as usize, self.params.max_size as usize);
        if len == data.len() || len == max {
            // The end of the stream, or the maximum chunk size.
            return len <= data.len();
        }
        let remaining = data.len().min(max);
        if len < min || len >= remaining || (remaining % 2 == 1 && len == remaining - 1) {
            return false;
        }
        let center = avg.min(data.len());
        let mask = if len / 2 < center / 2 { self.mask_s } else { self.mask_l };
        let hash = data[min.max(len.saturating_sub(63))..=len]
            .iter()
            .fold(0u64, |h, &b| (h << 1).wrapping_add(self.gear[b as usize]));
        hash & mask == 0
    }

    /// Reads `reader` to the end and calls `chunk` with every chunk and its id (`id_of`) in
    /// order; returns the number of bytes read. Chunks found in `previous` are confirmed by
    /// their id instead of searched for. Read errors are returned as they are.
    pub fn chunks<R: Read, E: From<std::io::Error>>(
        &self,
        mut reader: R,
        mut previous: Option<&mut Previous>,
        id_of: impl Fn(&[u8]) -> Id,
        mut chunk: impl FnMut(&[u8], Id) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max_size as usize;
        BUFFER.with_borrow_mut(|buf| {
            // Three maximum chunks: the unread tail moved to the front before a refill is
            // below one maximum chunk, so at most a third of the bytes are moved twice.
            if buf.len() < 3 * max {
                *buf = vec![0; 3 * max];
            }
            let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
            loop {
                if !eof && end - start < max {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                    while !eof && end < buf.len() {
                        match reader.read(&mut buf[end..]) {
                            Ok(0) => eof = true,
                            Ok(n) => end += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                if start == end {
                    return Ok(total);
                }
                let data = &buf[start..end];
                let known = previous.as_deref_mut().and_then(|p| {
                    let (i, len, expected) = p.candidate(total)?;
                    let found = len <= data.len() && self.cuts_at(data, len) && id_of(&data[..len]) == expected;
                    p.matched(found.then_some(i));
                    found.then_some((len, expected))
                });
                let (len, id) = match known {
                    Some(found) => found,
                    None => {
                        let len = self.cut(data);
                        let id = id_of(&data[..len]);
                        if let Some(p) = previous.as_deref_mut() {
                            p.scanned(&id);
                        }
                        (len, id)
                    }
                };
                chunk(&data[..len], id)?;
                start += len;
                total += len as u64;
            }
        })
    }
}

/// The chunks of a stream's previous version, to confirm instead of search (see the module
/// documentation).
pub struct Previous {
    ids: Vec<Id>,
    /// Start offset of every chunk, and the previous stream's length at the end.
    starts: Vec<u64>,
    by_id: std::collections::HashMap<Id, usize>,
    /// The old chunk after the last one the new stream matched: where a shifted stream
    /// (bytes inserted or removed before) continues.
    next: Option<usize>,
    reused: u64,
}

impl Previous {
    /// From the ids and plaintext lengths of the previous version's chunks, in order.
    pub fn new(chunks: impl IntoIterator<Item = (Id, u32)>) -> Self {
        let (mut ids, mut starts, mut at) = (Vec::new(), vec![0u64], 0u64);
        for (id, len) in chunks {
            ids.push(id);
            at += len as u64;
            starts.push(at);
        }
        let by_id = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self { ids, starts, by_id, next: Some(0), reused: 0 }
    }

    /// The old chunk to try at `offset`: the one after the last match (a stream shifted by an
    /// insertion continues there), else the one that started at this offset. Its position,
    /// length and id.
    fn candidate(&self, offset: u64) -> Option<(usize, usize, Id)> {
        let i = self
            .next
            .filter(|&i| i < self.ids.len())
            .or_else(|| self.starts[..self.ids.len()].binary_search(&offset).ok())?;
        Some((i, (self.starts[i + 1] - self.starts[i]) as usize, self.ids[i]))
    }

    /// Records whether the candidate at position `i` matched.
    fn matched(&mut self, i: Option<usize>) {
        self.next = i.map(|i| i + 1);
        if let Some(i) = i {
            self.reused += self.starts[i + 1] - self.starts[i];
        }
    }

    /// Bytes taken over as old chunks without a scan.
    pub fn reused_bytes(&self) -> u64 {
        self.reused
    }

    /// Records a chunk found by a scan: when it is an old chunk, the next old one follows.
    fn scanned(&mut self, id: &Id) {
        self.next = self.by_id.get(id).map(|i| i + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        crate::backup::test_bytes(0x2545_f491_4f6c_dd1d, n)
    }

    fn test_id(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    /// Reads in odd-sized pieces, like a pipe.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(out.len()).min(77_777);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn same_cut_points_as_fastcdc_stream() {
        let params = ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };
        let seed = 0x1234_5678_9abc_def0;
        for n in [0, 1, 16 * 1024 - 1, 300 * 1024, 5 * 1024 * 1024 + 3] {
            let input = data(n);
            let expected: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
                &input[..],
                16 * 1024,
                64 * 1024,
                256 * 1024,
                Normalization::Level1,
                seed,
            )
            .map(|c| c.unwrap().data)
            .collect();
            let mut got = Vec::new();
            let total = Chunker::new(params, seed)
                .chunks::<_, std::io::Error>(Trickle(&input), None, test_id, |c, _| {
                    got.push(c.to_vec());
                    Ok(())
                })
                .unwrap();
            assert_eq!(total, n as u64);
            assert_eq!(got, expected, "input of {n} bytes");
        }
    }

    #[test]
    fn read_errors_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let params = ChunkerParams::default();
        let err =
            Chunker::new(params, 1).chunks::<_, std::io::Error>(Broken, None, test_id, |_, _| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }

    /// Chunks `input` (with `previous` when given): (length, id) of every chunk.
    fn chunk_list(c: &Chunker, input: &[u8], previous: Option<&mut Previous>) -> Vec<(u32, Id)> {
        let mut out = Vec::new();
        c.chunks::<_, std::io::Error>(Trickle(input), previous, test_id, |d, id| {
            assert_eq!(id, test_id(d));
            out.push((d.len() as u32, id));
            Ok(())
        })
        .unwrap();
        out
    }

    /// Random stretches, zeros (maximum-size cuts) and repetitive text, in pieces.
    fn mixed(seed: u64, n: usize) -> Vec<u8> {
        let noise = crate::backup::test_bytes(seed, n);
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while out.len() < n {
            let len = 500 + (noise[i] as usize * 97) % 20_000;
            match noise[i + 1] % 3 {
                0 => out.extend_from_slice(&noise[i..(i + len).min(n)]),
                1 => out.resize(out.len() + len, 0),
                _ => out.extend((0..len).map(|k| b"let x = a + b;\n"[k % 15])),
            }
            i = (i + 7919) % (n - 2);
        }
        out.truncate(n);
        out
    }

    #[test]
    fn confirming_old_chunks_gives_the_chunks_of_a_full_scan() {
        let params = ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096 };
        let c = Chunker::new(params, 0x0bad_cafe);
        let old = mixed(11, 600_000);
        let old_chunks = chunk_list(&c, &old, None);
        let boundaries: Vec<usize> = old_chunks
            .iter()
            .scan(0usize, |at, (len, _)| {
                *at += *len as usize;
                Some(*at)
            })
            .collect();
        let noise = crate::backup::test_bytes(99, 1 << 16);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![("unchanged", old.clone())];
        // The byte right after a chunk decides whether the scan cuts there; the byte before
        // it is part of the chunk.
        for (name, delta) in [("first byte after a cut", 0usize), ("last byte before a cut", 1)] {
            let mut d = old.clone();
            for b in boundaries.iter().step_by(7).filter(|&&b| b < old.len()) {
                d[b - delta] ^= 0x5a;
            }
            cases.push((name, d));
        }
        let mut d = old.clone();
        for k in 0..40 {
            let at = (k * 14_983) % (old.len() - 300);
            d[at..at + 300].copy_from_slice(&noise[k * 300..k * 300 + 300]);
        }
        cases.push(("scattered overwrites", d));
        let mut d = old.clone();
        d.splice(100_000..100_000, noise[..777].iter().copied());
        d.drain(400_000..401_234);
        cases.push(("insertion and deletion", d));
        cases.push(("truncated", old[..old.len() - 2_345].to_vec()));
        cases.push(("truncated at a cut", old[..boundaries[boundaries.len() / 2]].to_vec()));
        // One byte after a cut (by the loose mask, beyond the average size) that ends an
        // even-length chunk: the scan of the odd-length rest never tests that position.
        let even =
            boundaries.windows(2).find(|w| (w[1] - w[0]) % 2 == 0 && (1024..4096).contains(&(w[1] - w[0]))).unwrap();
        cases.push(("truncated one byte after a cut", old[..even[1] + 1].to_vec()));
        let mut d = old.clone();
        d.extend_from_slice(&noise[..5_000]);
        cases.push(("appended", d));
        cases.push(("unrelated", mixed(12, 500_000)));
        for (name, new) in cases {
            let mut previous = Previous::new(old_chunks.iter().map(|(len, id)| (*id, *len)));
            let got = chunk_list(&c, &new, Some(&mut previous));
            assert_eq!(got, chunk_list(&c, &new, None), "{name}");
            let reused = previous.reused_bytes() as f64 / new.len() as f64;
            if name == "unrelated" {
                assert!(reused < 0.05, "{name}: {reused}");
            } else {
                assert!(reused > 0.5, "{name}: only {reused:.2} of the bytes reused");
            }
        }
    }
}

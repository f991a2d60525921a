//! Content-defined chunking of a stream (FastCDC 2020, normalisation level 1, keyed gear).
//!
//! fastcdc's `StreamCDC` shifts its buffer and copies every chunk out (several copies of
//! every byte); here one buffer per thread is filled by `read`, cut points are found in
//! place and the callback gets slices. Cut points are the same as `StreamCDC`'s: a cut is
//! only searched with at least `max_size` bytes ahead (or at the end of the stream).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};

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

    /// Reads `reader` to the end and calls `chunk` with every chunk in order; returns the
    /// number of bytes read. Read errors are returned as they are.
    pub fn chunks<R: Read, E: From<std::io::Error>>(
        &self,
        mut reader: R,
        mut chunk: impl FnMut(&[u8]) -> Result<(), E>,
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
                let len = self.cut(&buf[start..end]);
                chunk(&buf[start..start + len])?;
                start += len;
                total += len as u64;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        crate::backup::test_bytes(0x2545_f491_4f6c_dd1d, n)
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
                .chunks::<_, std::io::Error>(Trickle(&input), |c| {
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
        let err = Chunker::new(params, 1).chunks::<_, std::io::Error>(Broken, |_| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
    }
}

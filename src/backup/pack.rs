//! Pack files and the index.
//!
//! A pack (`data/<2 hex>/<64 hex>`, named by the BLAKE3 hash of its bytes) is
//!
//! ```text
//! blob_0 … blob_n   each: seal(aad = kind || id, flag || payload), flag 0 = raw, 1 = zstd
//! header            seal(aad = "berth pack header", entries), entry = kind u8, id [32],
//!                   sealed length u32 LE, plaintext length u32 LE (offsets are implicit)
//! header length     u32 LE
//! magic             "BERTHPK1"
//! ```
//!
//! An index file (`index/<random>`) is `seal("berth index", zstd(records))` listing, per pack,
//! its id, size and blobs with offsets. Index files are written only after their packs are
//! stored, and snapshots only after their index files, so a crash never leaves a snapshot that
//! points at missing data.

use super::crypto::{Id, MasterKey, OVERHEAD};
use super::error::{BackupError, Result};

const PACK_MAGIC: &[u8; 8] = b"BERTHPK1";
const INDEX_MAGIC: &[u8; 8] = b"BERTHIX1";
const HEADER_AAD: &[u8] = b"berth pack header";
const INDEX_AAD: &[u8] = b"berth index";
const ENTRY_LEN: usize = 1 + 32 + 4 + 4;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    /// File content chunk.
    Data = 0,
    /// A serialised directory tree.
    Tree = 1,
}

impl BlobKind {
    fn from_u8(b: u8) -> Result<Self> {
        match b {
            0 => Ok(Self::Data),
            1 => Ok(Self::Tree),
            other => Err(BackupError::corrupt("blob", format!("unknown blob kind {other}"))),
        }
    }
}

/// Associated data that binds a sealed blob to its id and kind.
pub fn blob_aad(kind: BlobKind, id: &Id) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind as u8;
    aad[1..].copy_from_slice(&id.0);
    aad
}

thread_local! {
    // zstd contexts are costly to create (hundreds of KiB of tables); one per thread and level.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(plain: &[u8], level: i32, out: &mut Vec<u8>) -> std::io::Result<()> {
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, c) = slot.as_mut().expect("set above");
        let start = out.len();
        out.resize(start + zstd::zstd_safe::compress_bound(plain.len()), 0);
        let n = c.compress_to_buffer(plain, &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    })
}

/// Decompresses `data` into `out` (cleared first), expecting at most `raw_len` bytes.
fn decompress_into(data: &[u8], raw_len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    out.reserve(raw_len);
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress_to_buffer(data, out).map(|_| ())
    })
}

/// Compresses (when it pays) and encrypts one blob.
pub fn seal_blob(key: &MasterKey, kind: BlobKind, id: &Id, plain: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD + 1);
    seal_blob_into(key, kind, id, plain, level, &mut out);
    out
}

/// [`seal_blob`] into a reused buffer (cleared first). Data that looks random (sampled) is
/// stored without trying zstd: compressing it costs time and saves nothing.
pub fn seal_blob_into(key: &MasterKey, kind: BlobKind, id: &Id, plain: &[u8], level: i32, out: &mut Vec<u8>) {
    key.seal_with(&blob_aad(kind, id), out, |body| {
        let start = body.len();
        if !looks_incompressible(plain) {
            body.push(1u8);
            if compress(plain, level, body).is_ok() && body.len() - start + 16 < plain.len() {
                return;
            }
            body.truncate(start);
        }
        body.push(0);
        body.extend_from_slice(plain);
    });
}

/// Bytes per sample of [`looks_incompressible`] and the distance between samples.
const SAMPLE_LEN: usize = 1024;
const SAMPLE_EVERY: usize = 32 * 1024;

/// True when every sample of `data` (1 KiB every 32 KiB) has a nearly uniform byte
/// distribution, as encrypted, compressed or random data has, and does not repeat itself. The
/// first test is the sum of squared byte counts: about n + n²/256 (5,120) for uniform bytes,
/// several times that for text, code or structured binary data; the second catches a block
/// of evenly spread bytes written again and again (see [`repeats`]). One compressible sample
/// is enough to try zstd.
pub fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 4 * SAMPLE_LEN {
        return false;
    }
    data.chunks(SAMPLE_EVERY).all(|window| {
        let sample = &window[..window.len().min(SAMPLE_LEN)];
        if sample.len() < SAMPLE_LEN {
            return true;
        }
        let mut counts = [0u32; 256];
        for &b in sample {
            counts[b as usize] += 1;
        }
        counts.iter().map(|&c| c * c).sum::<u32>() < 7 * 1024 && !repeats(sample)
    })
}

/// Whether many 8-byte windows of `sample` occurred earlier in it, as a tiny LZ match finder
/// sees them: in random data almost none do; in a block repeated within the sample (a byte
/// ramp, a counter and padding, a short record written again) most do, whatever its byte
/// histogram. (Repeats farther apart than a sample stay unseen: such data is stored raw.)
fn repeats(sample: &[u8]) -> bool {
    let mut seen = [0u64; 512];
    let mut hits = 0;
    for w in sample.windows(8).step_by(2) {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let slot = &mut seen[(w.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) as usize];
        hits += usize::from(*slot == w);
        *slot = w;
    }
    hits * 8 > sample.len()
}

/// [`open_blob`] without allocating: decrypts `sealed` in place, decompresses into `scratch`
/// when the blob is compressed, and returns the verified plaintext.
pub fn open_blob_in_place<'a>(
    key: &MasterKey,
    kind: BlobKind,
    id: &Id,
    sealed: &'a mut [u8],
    raw_len: u32,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let what = || format!("blob {}", id.to_hex());
    let body = key.open_in_place(&blob_aad(kind, id), sealed, &what())?;
    let plain: &[u8] = match body.first() {
        Some(0) => &body[1..],
        Some(1) => {
            decompress_into(&body[1..], raw_len as usize, scratch)
                .map_err(|e| BackupError::corrupt(what(), format!("zstd: {e}")))?;
            &scratch[..]
        }
        _ => return Err(BackupError::corrupt(what(), "bad compression flag")),
    };
    if plain.len() != raw_len as usize || key.blob_id(plain) != *id {
        return Err(BackupError::corrupt(what(), "content does not match its id"));
    }
    Ok(plain)
}

/// Decrypts, decompresses and verifies one blob against its id.
pub fn open_blob(key: &MasterKey, kind: BlobKind, id: &Id, sealed: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let (mut copy, mut scratch) = (sealed.to_vec(), Vec::new());
    open_blob_in_place(key, kind, id, &mut copy, raw_len, &mut scratch).map(<[u8]>::to_vec)
}

/// One blob inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u32,
    pub length: u32,
    pub raw_len: u32,
}

/// A finished pack: its bytes and what it contains.
#[derive(Debug, Clone)]
pub struct PackInfo {
    pub id: Id,
    pub size: u64,
    pub blobs: Vec<PackedBlob>,
}

/// Storage key of a pack.
pub fn pack_key(id: &Id) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

/// Accumulates sealed blobs into a pack.
#[derive(Default)]
pub struct PackBuilder {
    buf: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

impl PackBuilder {
    /// A builder that fills `buf` (emptied), e.g. the buffer of a pack already uploaded.
    pub fn with_buffer(mut buf: Vec<u8>) -> Self {
        buf.clear();
        Self { buf, blobs: Vec::new() }
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
    pub fn count(&self) -> usize {
        self.blobs.len()
    }

    /// Reserves room for `additional` more bytes; a builder without room reserves a whole
    /// pack's at its first blob.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// A builder without room reserves 18 MiB before its first blob: a 16 MiB pack and the
    /// blob that passes the size, without growing by copying.
    fn reserve_pack(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(18 * 1024 * 1024);
        }
    }

    /// Appends an already sealed blob.
    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8], raw_len: u32) {
        self.reserve_pack();
        self.blobs.push(PackedBlob { kind, id, offset: self.buf.len() as u32, length: sealed.len() as u32, raw_len });
        self.buf.extend_from_slice(sealed);
    }

    /// Moves the blobs of `run` (a builder used as a staging area, never finished) to the
    /// end of this pack, in their order; `run` is left empty with its buffer.
    pub fn append(&mut self, run: &mut PackBuilder) {
        self.reserve_pack();
        let base = self.buf.len() as u32;
        self.blobs.extend(run.blobs.drain(..).map(|b| PackedBlob { offset: base + b.offset, ..b }));
        self.buf.extend_from_slice(&run.buf);
        run.buf.clear();
    }

    /// Appends the header and returns the pack bytes and its description.
    pub fn finish(mut self, key: &MasterKey) -> (bytes::Bytes, PackInfo) {
        let mut header = Vec::with_capacity(self.blobs.len() * ENTRY_LEN);
        for b in &self.blobs {
            header.push(b.kind as u8);
            header.extend_from_slice(&b.id.0);
            header.extend_from_slice(&b.length.to_le_bytes());
            header.extend_from_slice(&b.raw_len.to_le_bytes());
        }
        let sealed = key.seal(HEADER_AAD, &header);
        self.buf.extend_from_slice(&sealed);
        self.buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        let id = Id(*blake3::hash(&self.buf).as_bytes());
        let info = PackInfo { id, size: self.buf.len() as u64, blobs: self.blobs };
        (bytes::Bytes::from(self.buf), info)
    }
}

/// Reads the header of a complete pack and checks its hash.
pub fn parse_pack(key: &MasterKey, expected: &Id, data: &[u8]) -> Result<Vec<PackedBlob>> {
    let what = format!("pack {}", pack_key(expected));
    if Id(*blake3::hash(data).as_bytes()) != *expected {
        return Err(BackupError::corrupt(
            what,
            format!("content hash mismatch ({} bytes; truncated or modified)", data.len()),
        ));
    }
    if data.len() < 12 || &data[data.len() - 8..] != PACK_MAGIC {
        return Err(BackupError::corrupt(what, "missing pack trailer (truncated?)"));
    }
    let hlen = u32::from_le_bytes(data[data.len() - 12..data.len() - 8].try_into().unwrap()) as usize;
    if hlen + 12 > data.len() || hlen < OVERHEAD {
        return Err(BackupError::corrupt(what, "bad header length"));
    }
    let hstart = data.len() - 12 - hlen;
    let header = key.open(HEADER_AAD, &data[hstart..data.len() - 12], &what)?;
    if header.len() % ENTRY_LEN != 0 {
        return Err(BackupError::corrupt(what, "bad header size"));
    }
    let mut offset = 0u32;
    let mut out = Vec::with_capacity(header.len() / ENTRY_LEN);
    for e in header.chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_u8(e[0])?;
        let id = Id(e[1..33].try_into().unwrap());
        let length = u32::from_le_bytes(e[33..37].try_into().unwrap());
        let raw_len = u32::from_le_bytes(e[37..41].try_into().unwrap());
        out.push(PackedBlob { kind, id, offset, length, raw_len });
        offset = offset.checked_add(length).ok_or_else(|| BackupError::corrupt(&what, "offset overflow"))?;
    }
    if offset as usize != hstart {
        return Err(BackupError::corrupt(what, "header does not match the blob area"));
    }
    Ok(out)
}

/// Serialises packs into one sealed index file.
pub fn encode_index(key: &MasterKey, packs: &[PackInfo]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(8 + packs.iter().map(|p| 44 + p.blobs.len() * 49).sum::<usize>());
    raw.extend_from_slice(INDEX_MAGIC);
    for p in packs {
        raw.extend_from_slice(&p.id.0);
        raw.extend_from_slice(&p.size.to_le_bytes());
        raw.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            raw.push(b.kind as u8);
            raw.extend_from_slice(&b.id.0);
            raw.extend_from_slice(&b.offset.to_le_bytes());
            raw.extend_from_slice(&b.length.to_le_bytes());
            raw.extend_from_slice(&b.raw_len.to_le_bytes());
        }
    }
    let compressed = zstd::bulk::compress(&raw, 3).expect("zstd compress");
    key.seal(INDEX_AAD, &compressed)
}

/// Parses a sealed index file.
pub fn decode_index(key: &MasterKey, name: &str, sealed: &[u8]) -> Result<Vec<PackInfo>> {
    let what = format!("index {name}");
    let compressed = key.open(INDEX_AAD, sealed, &what)?;
    let raw =
        zstd::stream::decode_all(&compressed[..]).map_err(|e| BackupError::corrupt(&what, format!("zstd: {e}")))?;
    if raw.len() < 8 || &raw[..8] != INDEX_MAGIC {
        return Err(BackupError::corrupt(&what, "bad magic"));
    }
    let mut r = &raw[8..];
    let mut take = |n: usize| -> Result<&[u8]> {
        if r.len() < n {
            return Err(BackupError::corrupt(&what, "truncated"));
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    let mut out = Vec::new();
    while let Ok(idb) = take(32) {
        let id = Id(idb.try_into().unwrap());
        let size = u64::from_le_bytes(take(8)?.try_into().unwrap());
        let count = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let mut blobs = Vec::with_capacity(count);
        for _ in 0..count {
            let e = take(45)?;
            blobs.push(PackedBlob {
                kind: BlobKind::from_u8(e[0])?,
                id: Id(e[1..33].try_into().unwrap()),
                offset: u32::from_le_bytes(e[33..37].try_into().unwrap()),
                length: u32::from_le_bytes(e[37..41].try_into().unwrap()),
                raw_len: u32::from_le_bytes(e[41..45].try_into().unwrap()),
            });
        }
        out.push(PackInfo { id, size, blobs });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_data_is_stored_raw_and_the_rest_compressed() {
        let text: Vec<u8> = b"fn main() { println!(\"hello, berth\"); }\n".repeat(20_000);
        let noise = crate::backup::test_bytes(7, 600_000);
        let mixed: Vec<u8> = noise[..300_000].iter().chain(&text[..300_000]).copied().collect();
        assert!(looks_incompressible(&noise));
        assert!(!looks_incompressible(&text));
        assert!(!looks_incompressible(&mixed), "one compressible region is enough to try zstd");
        assert!(!looks_incompressible(&noise[..1000]), "too short to judge: zstd decides");
        let key = MasterKey::generate();
        // Evenly spread bytes that repeat: the byte histogram is flat, the data is not random.
        let ramp: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        let block: Vec<u8> = noise[..256].repeat(2400);
        let counted: Vec<u8> =
            (0..150u32).flat_map(|n| n.to_le_bytes().into_iter().chain(ramp[..4092].iter().copied())).collect();
        for (name, data) in [("ramp", &ramp), ("repeated random block", &block), ("counter + ramp blocks", &counted)] {
            assert!(!looks_incompressible(data), "{name}");
            let id = key.blob_id(data);
            assert!(seal_blob(&key, BlobKind::Data, &id, data, 2).len() < data.len() / 4, "{name} compressed");
        }
        for (data, raw) in [(&noise, true), (&text, false), (&mixed, false)] {
            let id = key.blob_id(data);
            let sealed = seal_blob(&key, BlobKind::Data, &id, data, 2);
            assert_eq!(sealed.len() >= data.len(), raw, "stored raw: {raw}");
            assert_eq!(&open_blob(&key, BlobKind::Data, &id, &sealed, data.len() as u32).unwrap(), data);
            let (mut copy, mut scratch) = (sealed.clone(), Vec::new());
            let plain = open_blob_in_place(&key, BlobKind::Data, &id, &mut copy, data.len() as u32, &mut scratch);
            assert_eq!(plain.unwrap(), &data[..]);
            let mut tampered = sealed.clone();
            tampered[40] ^= 1;
            let err = open_blob_in_place(&key, BlobKind::Data, &id, &mut tampered, data.len() as u32, &mut scratch);
            assert!(err.unwrap_err().to_string().contains("authentication failed"));
        }
    }

    #[test]
    fn pack_roundtrip_and_corruption() {
        let key = MasterKey::generate();
        let mut b = PackBuilder::default();
        let datas: Vec<Vec<u8>> =
            vec![vec![7u8; 100_000], b"tiny".to_vec(), (0..5000u32).flat_map(|x| x.to_le_bytes()).collect()];
        let mut ids = Vec::new();
        for d in &datas {
            let id = key.blob_id(d);
            let sealed = seal_blob(&key, BlobKind::Data, &id, d, 3);
            b.add(BlobKind::Data, id, &sealed, d.len() as u32);
            ids.push(id);
        }
        let (bytes, info) = b.finish(&key);
        assert_eq!(info.size as usize, bytes.len());
        assert!(bytes.len() < 100_000, "compressed");
        let parsed = parse_pack(&key, &info.id, &bytes).unwrap();
        assert_eq!(parsed, info.blobs);
        for (blob, d) in parsed.iter().zip(&datas) {
            let s = &bytes[blob.offset as usize..(blob.offset + blob.length) as usize];
            assert_eq!(&open_blob(&key, blob.kind, &blob.id, s, blob.raw_len).unwrap(), d);
            // A blob presented under another id is refused.
            assert!(open_blob(&key, blob.kind, &ids[0], s, blob.raw_len).is_err() || blob.id == ids[0]);
        }
        let truncated = &bytes[..bytes.len() - 10];
        let err = parse_pack(&key, &info.id, truncated).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        let idx = encode_index(&key, std::slice::from_ref(&info));
        let back = decode_index(&key, "x", &idx).unwrap();
        assert_eq!(back[0].blobs, info.blobs);
        assert_eq!(back[0].size, info.size);
        let mut index = crate::backup::index::Index::default();
        index.add_pack(&back[0]).unwrap();
        assert!(index.contains(&ids[1]));
        assert_eq!(index.pack_contents()[0].blobs, info.blobs);
        assert!(decode_index(&MasterKey::generate(), "x", &idx).is_err());
    }
}

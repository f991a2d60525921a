//! Keys, ids and authenticated encryption.
//!
//! * A repository has one random **master key** (AES-256-GCM data key, BLAKE3 id key, chunker
//!   seed). It is stored in `keys/<id>` objects, each wrapping it with a key derived from a
//!   user secret (PBKDF2-HMAC-SHA256); a secret that opens no key object is refused.
//! * Blob ids are keyed BLAKE3 hashes of the plaintext, so ids do not reveal content hashes.
//! * Every encrypted object is `nonce (12) || ciphertext || tag (16)`; the associated data
//!   binds it to what it is (a blob id, an object kind), so objects cannot be swapped.
//!
//! * Objects kept readable (the `config`, `backups/*/backup.json`, `locks/*`) carry a MAC:
//!   keyed BLAKE3 with a key derived from the master key ([`MasterKey::mac`], see
//!   [`super::auth`]), over the object's name and content, so that a file changed, forged or
//!   copied to another name is refused.
//! * Key files are opened with PBKDF2 parameters read before any key exists; they are bounded
//!   ([`check_kdf`]) so that a forged key file cannot make opening a repository run for hours.
//!
//! Nonces are random (96 bit). With chunks of ~512 KiB a repository would need more than 2^32
//! encryptions (2 PiB of unique data) before the birthday bound matters.

use std::fmt;
use std::num::NonZeroU32;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::{BackupError, Result};

const TAG_LEN: usize = 16;
/// Bytes added by [`MasterKey::seal`].
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// PBKDF2-HMAC-SHA256 rounds of every key file berth writes.
pub const KDF_ITERATIONS: u32 = 100_000;
/// Key files asking for more rounds are refused before the KDF runs (a forged file must not
/// make opening the repository take hours): ten times what berth writes.
pub const KDF_MAX_ITERATIONS: u32 = 10 * KDF_ITERATIONS;
/// Key files asking for fewer rounds are refused: berth never wrote fewer.
pub const KDF_MIN_ITERATIONS: u32 = KDF_ITERATIONS;
/// The only key derivation berth writes.
pub const KDF_ALGORITHM: &str = "pbkdf2-sha256";
/// Salts longer than this are refused (berth writes 32 bytes).
const KDF_MAX_SALT: usize = 64;
/// Context of the MAC key's derivation from the master key (BLAKE3 `derive_key`): a
/// distinct context string gives a key independent of the encryption and id keys.
const MAC_KEY_CONTEXT: &str = "berth 2026-12 repository metadata MAC key v1";

/// Fills a buffer from the operating system's CSPRNG (`getrandom(2)`). Not aws-lc's
/// generator: that one seeds every new thread from CPU-jitter entropy, tens of milliseconds
/// of CPU per backup for nothing the kernel does not already give.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("system random generator failed");
    b
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("system random generator failed");
    hex::encode(b)
}

/// A 32-byte id (blob, pack, snapshot).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// A random id.
    pub fn random() -> Self {
        Self(random_bytes())
    }
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|e| BackupError::Invalid(format!("invalid id {s:?}: {e}")))?;
        Ok(Self(b))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Id::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The secret key material of one repository.
pub struct MasterKey {
    aead: LessSafeKey,
    raw: [u8; 32],
    id_key: [u8; 32],
    mac_key: [u8; 32],
    /// Seed of the chunker's gear table, so that chunk boundaries do not leak content.
    pub chunker_seed: u64,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(Serialize, Deserialize)]
struct MasterKeyMaterial {
    encrypt: String,
    id: String,
    chunker_seed: u64,
}

/// A `keys/<id>` object: the master key wrapped with a key derived from a user secret.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub created: String,
    pub hostname: String,
    pub kdf: String,
    pub iterations: u32,
    pub salt: String,
    /// base64 of the sealed master key material.
    pub data: String,
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        Self::from_parts(random_bytes(), random_bytes(), u64::from_le_bytes(random_bytes()))
    }

    fn from_parts(raw: [u8; 32], id_key: [u8; 32], chunker_seed: u64) -> Self {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte key"));
        let mut material = [0u8; 64];
        material[..32].copy_from_slice(&raw);
        material[32..].copy_from_slice(&id_key);
        let mac_key = blake3::derive_key(MAC_KEY_CONTEXT, &material);
        Self { aead, raw, id_key, mac_key, chunker_seed }
    }

    /// MAC of a readable repository object: keyed BLAKE3 over `domain` (what kind of object),
    /// `name` (its key in the repository, so that it cannot be replayed under another name)
    /// and `body`, each length-prefixed so that no two inputs collide.
    pub fn mac(&self, domain: &str, name: &str, body: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.mac_key);
        for part in [domain.as_bytes(), name.as_bytes(), body] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize()
    }

    /// Whether `mac` (hex) authenticates `body` as [`mac`](Self::mac) computes it; the
    /// comparison is constant-time (`blake3::Hash`'s equality).
    pub fn verify_mac(&self, domain: &str, name: &str, body: &[u8], mac: &str) -> bool {
        blake3::Hash::from_hex(mac).is_ok_and(|given| given == self.mac(domain, name, body))
    }

    /// Keyed BLAKE3 id of plaintext data.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// Encrypts `plain` bound to `aad`: `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        self.seal_with(aad, &mut out, |buf| buf.extend_from_slice(plain));
        out
    }

    /// Like [`seal`](Self::seal), into `out` (cleared first): `fill` appends the plaintext,
    /// which is then encrypted in place. Reusing `out` saves an allocation per object.
    pub fn seal_with(&self, aad: &[u8], out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
        let nonce_bytes: [u8; NONCE_LEN] = random_bytes();
        out.clear();
        out.extend_from_slice(&nonce_bytes);
        fill(out);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM seal");
        out.extend_from_slice(tag.as_ref());
    }

    /// Decrypts and authenticates `sealed` in place; returns the plaintext (a part of `sealed`).
    pub fn open_in_place<'a>(&self, aad: &[u8], sealed: &'a mut [u8], what: &str) -> Result<&'a mut [u8]> {
        if sealed.len() < OVERHEAD {
            return Err(BackupError::corrupt(what, "encrypted object too short"));
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| BackupError::corrupt(what, "bad nonce"))?;
        self.aead
            .open_in_place(nonce, Aad::from(aad), rest)
            .map_err(|_| BackupError::corrupt(what, "authentication failed (data modified or truncated)"))
    }

    /// Decrypts and authenticates what [`seal`](Self::seal) produced with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(BackupError::corrupt(what, "encrypted object too short"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN])
            .map_err(|_| BackupError::corrupt(what, "bad nonce"))?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain_len = self
            .aead
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| BackupError::corrupt(what, "authentication failed (data modified or truncated)"))?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }

    /// Wraps this master key with a user secret into a key file.
    pub fn wrap(&self, secret: &[u8]) -> KeyFile {
        let salt: [u8; 32] = random_bytes();
        let wrapping = derive(secret, &salt, KDF_ITERATIONS);
        let material = serde_json::to_vec(&MasterKeyMaterial {
            encrypt: hex::encode(self.raw),
            id: hex::encode(self.id_key),
            chunker_seed: self.chunker_seed,
        })
        .expect("serialise key");
        let sealed = wrapping.seal(b"berth key", &material);
        let b64 = base64::engine::general_purpose::STANDARD;
        KeyFile {
            version: 1,
            created: jiff::Timestamp::now().to_string(),
            hostname: super::hostname(),
            kdf: KDF_ALGORITHM.into(),
            iterations: KDF_ITERATIONS,
            salt: b64.encode(salt),
            data: b64.encode(sealed),
        }
    }

    /// Unwraps a key file; `None` when the secret does not open it. The parameters are
    /// checked ([`check_kdf`]) before the KDF runs.
    pub fn unwrap_key(file: &KeyFile, secret: &[u8], name: &str) -> Result<Option<Self>> {
        check_kdf(file, name)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode(&file.salt).map_err(|e| BackupError::corrupt(name, e))?;
        if salt.len() > KDF_MAX_SALT {
            return Err(BackupError::corrupt(name, format!("salt of {} bytes (at most {KDF_MAX_SALT})", salt.len())));
        }
        let sealed = b64.decode(&file.data).map_err(|e| BackupError::corrupt(name, e))?;
        let wrapping = derive(secret, &salt, file.iterations);
        let Ok(material) = wrapping.open(b"berth key", &sealed, "key file") else {
            return Ok(None);
        };
        let m: MasterKeyMaterial =
            serde_json::from_slice(&material).map_err(|e| BackupError::corrupt("key file", e))?;
        let mut raw = [0u8; 32];
        let mut id_key = [0u8; 32];
        hex::decode_to_slice(&m.encrypt, &mut raw).map_err(|e| BackupError::corrupt("key file", e))?;
        hex::decode_to_slice(&m.id, &mut id_key).map_err(|e| BackupError::corrupt("key file", e))?;
        Ok(Some(Self::from_parts(raw, id_key, m.chunker_seed)))
    }
}

/// Refuses key-derivation parameters berth would never write, before any derivation runs:
/// an unknown algorithm, or a round count outside
/// [`KDF_MIN_ITERATIONS`]..=[`KDF_MAX_ITERATIONS`]. `name` is the key file's object key.
pub fn check_kdf(file: &KeyFile, name: &str) -> Result<()> {
    if file.kdf != KDF_ALGORITHM {
        return Err(BackupError::KdfRefused {
            key: name.to_string(),
            detail: format!("unsupported key derivation {:?} (berth writes {KDF_ALGORITHM})", file.kdf),
        });
    }
    if !(KDF_MIN_ITERATIONS..=KDF_MAX_ITERATIONS).contains(&file.iterations) {
        return Err(BackupError::KdfRefused {
            key: name.to_string(),
            detail: format!(
                "{} PBKDF2 rounds, outside the accepted {KDF_MIN_ITERATIONS}..={KDF_MAX_ITERATIONS}",
                file.iterations
            ),
        });
    }
    Ok(())
}

fn derive(secret: &[u8], salt: &[u8], iterations: u32) -> MasterKey {
    let mut out = [0u8; 32];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations.max(1)).expect("non-zero"),
        salt,
        secret,
        &mut out,
    );
    MasterKey::from_parts(out, [0u8; 32], 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let k = MasterKey::generate();
        let sealed = k.seal(b"aad", b"secret data");
        assert_ne!(&sealed[NONCE_LEN..NONCE_LEN + 11], b"secret data");
        assert_eq!(k.open(b"aad", &sealed, "x").unwrap(), b"secret data");
        assert!(k.open(b"other", &sealed, "x").is_err());
        let mut bad = sealed.clone();
        bad[NONCE_LEN + 2] ^= 1;
        assert!(k.open(b"aad", &bad, "x").is_err());
        assert!(k.open(b"aad", &sealed[..sealed.len() - 1], "x").is_err());
        let other = MasterKey::generate();
        assert!(other.open(b"aad", &sealed, "x").is_err());
    }

    #[test]
    fn wrap_unwrap() {
        let k = MasterKey::generate();
        let f = k.wrap(b"correct horse");
        let back = MasterKey::unwrap_key(&f, b"correct horse", "keys/k").unwrap().unwrap();
        assert_eq!(back.blob_id(b"x"), k.blob_id(b"x"));
        assert_eq!(back.chunker_seed, k.chunker_seed);
        assert_eq!(back.mac("d", "n", b"b"), k.mac("d", "n", b"b"));
        assert!(MasterKey::unwrap_key(&f, b"wrong", "keys/k").unwrap().is_none());
    }

    /// Parameters outside the bounds are refused before the KDF runs: the error kind says so
    /// (a derivation with 10^9 rounds would not return for minutes, and would then fail
    /// authentication with `Ok(None)`, not `KdfRefused`).
    #[test]
    fn kdf_parameters_are_bounded_before_deriving() {
        let k = MasterKey::generate();
        let mut f = k.wrap(b"pw");
        f.iterations = 1_000_000_000;
        let err = MasterKey::unwrap_key(&f, b"pw", "keys/forged").unwrap_err();
        assert!(matches!(err, BackupError::KdfRefused { .. }), "{err}");
        assert!(err.to_string().contains("keys/forged") && err.to_string().contains("1000000000"), "{err}");
        f.iterations = 1000;
        assert!(matches!(MasterKey::unwrap_key(&f, b"pw", "k"), Err(BackupError::KdfRefused { .. })));
        f.iterations = KDF_ITERATIONS;
        f.kdf = "scrypt".into();
        assert!(matches!(MasterKey::unwrap_key(&f, b"pw", "k"), Err(BackupError::KdfRefused { .. })));
    }

    #[test]
    fn macs_bind_domain_name_and_body() {
        let k = MasterKey::generate();
        let mac = k.mac("manifest", "backups/a/backup.json", b"{}").to_hex();
        assert!(k.verify_mac("manifest", "backups/a/backup.json", b"{}", &mac));
        assert!(!k.verify_mac("manifest", "backups/b/backup.json", b"{}", &mac));
        assert!(!k.verify_mac("lock", "backups/a/backup.json", b"{}", &mac));
        assert!(!k.verify_mac("manifest", "backups/a/backup.json", b"{ }", &mac));
        assert!(!k.verify_mac("manifest", "backups/a/backup.json", b"{}", "not hex"));
        assert!(!MasterKey::generate().verify_mac("manifest", "backups/a/backup.json", b"{}", &mac));
        // Length prefixes: moving bytes between name and body changes the MAC.
        assert_ne!(k.mac("d", "ab", b"c"), k.mac("d", "a", b"bc"));
    }

    #[test]
    fn ids_are_keyed() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        let id = a.blob_id(b"y");
        assert_eq!(Id::from_hex(&id.to_hex()).unwrap(), id);
    }
}

//! Trees (directories) and snapshot manifests.
//!
//! A tree is a JSON document listing the nodes of one directory, stored as a blob, so
//! unchanged directories deduplicate like file content. A snapshot (`snapshots/<id>`,
//! encrypted JSON, `version` field) names the root node and what was backed up.

use serde::{Deserialize, Serialize};

use super::crypto::Id;

/// Current snapshot manifest version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Kind of a file-system node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name (lossy UTF-8 when the real name is not UTF-8; see `name_raw`).
    pub name: String,
    /// base64 of the raw name bytes when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// File size in bytes (0 for other kinds).
    #[serde(default)]
    pub size: u64,
    /// Content chunks, in order (files only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<Id>,
    /// Directory tree blob (directories only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    /// Symlink target (lossy UTF-8; see `target_raw`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_raw: Option<String>,
    /// Inode and change time, only to detect unchanged files against a parent snapshot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_i")]
    pub ctime_sec: i64,
    #[serde(default, skip_serializing_if = "is_zero_u")]
    pub ctime_nsec: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u(v: &u32) -> bool {
    *v == 0
}

impl Node {
    /// A node with defaults (mode 0644 file / 0755 dir, owned by the current user, mtime now).
    pub fn new(name: impl Into<String>, kind: NodeKind) -> Self {
        let now = jiff::Timestamp::now();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            name: name.into(),
            name_raw: None,
            kind,
            mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
            uid,
            gid,
            mtime_sec: now.as_second(),
            mtime_nsec: now.subsec_nanosecond() as u32,
            size: 0,
            content: Vec::new(),
            subtree: None,
            target: None,
            target_raw: None,
            inode: 0,
            ctime_sec: 0,
            ctime_nsec: 0,
        }
    }

    /// The raw file name bytes.
    pub fn name_bytes(&self) -> Vec<u8> {
        decode_raw(&self.name, self.name_raw.as_deref())
    }

    /// The raw symlink target bytes.
    pub fn target_bytes(&self) -> Vec<u8> {
        decode_raw(self.target.as_deref().unwrap_or(""), self.target_raw.as_deref())
    }
}

fn decode_raw(lossy: &str, raw: Option<&str>) -> Vec<u8> {
    use base64::Engine;
    raw.and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
        .unwrap_or_else(|| lossy.as_bytes().to_vec())
}

/// Splits raw bytes into the (lossy, raw) pair stored in a node.
pub fn encode_raw(bytes: &[u8]) -> (String, Option<String>) {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => {
            (String::from_utf8_lossy(bytes).into_owned(), Some(base64::engine::general_purpose::STANDARD.encode(bytes)))
        }
    }
}

/// The nodes of one directory, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Parses the plaintext of tree blob `id`; one that does not parse is corrupt.
    pub fn decode(id: &Id, plain: &[u8]) -> Result<Self, super::error::BackupError> {
        serde_json::from_slice(plain).map_err(|e| super::error::BackupError::corrupt(format!("tree {id}"), e))
    }
}

/// Counters of one backup run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    /// Files taken unchanged from the parent snapshot without reading them.
    pub files_unchanged: u64,
    pub bytes_read: u64,
    /// Total size of the snapshot's file contents.
    pub bytes_total: u64,
    pub blobs_new: u64,
    /// Uncompressed size of the new blobs.
    pub bytes_new: u64,
    /// Bytes written to storage (packs and index files).
    pub bytes_uploaded: u64,
    pub duration_ms: u64,
}

impl Summary {
    /// bytes_total / bytes_uploaded (infinite when data existed but nothing was uploaded).
    pub fn dedup_ratio(&self) -> f64 {
        if self.bytes_uploaded == 0 {
            if self.bytes_total == 0 { 1.0 } else { f64::INFINITY }
        } else {
            self.bytes_total as f64 / self.bytes_uploaded as f64
        }
    }
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339 start time.
    pub time: String,
    pub hostname: String,
    /// `dir`, `postgres`, `rabbitmq` or `kubernetes`.
    pub kind: String,
    /// What was backed up: a path, a server (without credentials), a backup name.
    pub source: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The root directory node; its `subtree` holds the content.
    pub root: Node,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub summary: Summary,
    /// `berth <version>`.
    pub program: String,
}

impl Snapshot {
    /// Parsed start time.
    pub fn timestamp(&self) -> jiff::Timestamp {
        self.time.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    /// Snapshots with the same group key are one series for retention and parents. The
    /// hostname is not part of it: in Kubernetes every Job pod has a new one.
    pub fn group_key(&self) -> String {
        format!("{}:{}", self.kind, self.source)
    }
}

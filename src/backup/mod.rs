//! Repository format on S3, retention, resource export/import.
//!
//! A content-addressed, deduplicated, encrypted repository (see DESIGN.md "Backups"):
//! FastCDC chunks with keyed BLAKE3 ids, zstd, AES-256-GCM, packs + index on S3
//! ([`storage`]). The Backup controller and `berth agent` use it through:
//!
//! * [`StorageConfig`] / [`Storage::connect`] → [`Repository::init`] / [`Repository::open`]
//! * [`resources::store_objects`] / [`resources::load_objects`] / [`resources::scan_manifests`]
//! * [`migrate::migrate`] from format version 1 (no MACs on readable objects)
//! * [`ops::backup_directory`], [`ops::run_backup`] (any producer of files)
//! * [`ops::forget`] with a [`RetentionPolicy`], [`ops::prune`], [`ops::check`]
//! * [`restore::restore_dir`] (also as `archiver::restore_dir`), [`archiver::stream_file`]
//! * [`replicate::replicate`] to an offsite copy

pub mod archiver;
pub mod auth;
pub mod census;
pub mod chunker;
pub mod crypto;
pub mod direct;
pub mod error;
pub mod index;
pub mod lock;
pub mod migrate;
pub mod ops;
pub mod pack;
pub mod prefetch;
pub mod ranges;
pub mod replicate;
pub mod repo;
pub mod resources;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod storage;
pub mod writer;

pub use crypto::Id;
pub use error::{BackupError, Result};
pub use repo::{Repository, WriteOptions};
pub use retention::RetentionPolicy;
pub use snapshot::{Node, Snapshot, Summary};
pub use storage::{ObjectEncryption, S3Config, ServerSideEncryption, Storage, StorageConfig};
pub use writer::WriterStats;

/// Cores this process may use (2 when unknown): sizes the thread pools of a backup.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// This machine's host name (pod name in Kubernetes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Deterministic incompressible bytes (xorshift) for unit tests.
#[cfg(test)]
pub(crate) fn test_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A file:// repository under `tmp` holding one snapshot of 40 directories with a small file
/// each, for tests of tree reads: the root tree's id and the 40 directories' tree ids.
#[cfg(test)]
pub(crate) async fn forty_dir_snapshot(tmp: &std::path::Path) -> (Repository, Id, Vec<Id>) {
    let src = tmp.join("src");
    for i in 0..40u64 {
        std::fs::create_dir_all(src.join(format!("d{i:02}"))).unwrap();
        std::fs::write(src.join(format!("d{i:02}/f")), test_bytes(i, 100)).unwrap();
    }
    let storage = Storage::connect(&StorageConfig::Local(tmp.join("repo"))).await.unwrap();
    let repo = Repository::init(storage, b"secret").await.unwrap();
    let (_, snap) = ops::backup_directory(&repo, &src, vec![], Default::default(), None).await.unwrap();
    let root = snap.root.subtree.unwrap();
    let dirs: Vec<Id> = repo.load_tree(&root).await.unwrap().nodes.iter().filter_map(|n| n.subtree).collect();
    assert_eq!(dirs.len(), 40);
    (repo, root, dirs)
}

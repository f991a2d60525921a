//! Repository locks (`locks/<id>`, JSON with a MAC, see [`super::auth`]).
//!
//! A lock whose MAC does not verify was not written by a holder of the repository key: it is
//! refused (ignored, with a warning) and `unlock` removes it.
//!
//! Writers (backup, check) take shared locks, `prune` takes an exclusive one. A lock is taken
//! by writing it and then listing again: if a conflicting lock shows up, ours is removed and
//! the operation fails, so of two racing processes at least one backs off (S3 has
//! read-after-write consistency). Locks are refreshed every 5 minutes; a lock is stale when
//! it was not refreshed for 30 minutes, or when it was written on this host by a process
//! that no longer exists (`kill -9`).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::auth::{self, Kind};
use super::crypto::Id;
use super::error::{BackupError, Result};
use super::repo::Repository;

const REFRESH: Duration = Duration::from_secs(300);
const STALE_AFTER: Duration = Duration::from_secs(1800);

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub exclusive: bool,
    pub hostname: String,
    pub pid: u32,
    pub operation: String,
    pub created: String,
    pub refreshed: String,
}

impl LockInfo {
    /// True when the holder is gone.
    pub fn is_stale(&self) -> bool {
        let age = self
            .refreshed
            .parse::<jiff::Timestamp>()
            .map(|t| jiff::Timestamp::now().duration_since(t))
            .unwrap_or(jiff::SignedDuration::MAX);
        if age > jiff::SignedDuration::try_from(STALE_AFTER).expect("duration") {
            return true;
        }
        if self.hostname == super::hostname() && self.pid != std::process::id() {
            // SAFETY: kill with signal 0 only checks for existence.
            let r = unsafe { libc::kill(self.pid as i32, 0) };
            if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
                return true;
            }
        }
        false
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} lock held by {} (pid {} on {}, since {}, refreshed {})",
            if self.exclusive { "exclusive" } else { "shared" },
            self.operation,
            self.pid,
            self.hostname,
            self.created,
            self.refreshed
        )
    }
}

/// A held lock; call [`release`](Self::release) when done.
pub struct RepoLock {
    repo: Repository,
    name: String,
    refresher: tokio::task::JoinHandle<()>,
}

/// The authenticated locks of a repository, and the names of those refused.
async fn read_locks(repo: &Repository) -> Result<(Vec<(String, LockInfo)>, Vec<String>)> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for obj in repo.storage().list("locks").await? {
        let key = format!("locks/{}", obj.name);
        match repo.storage().get(&key).await {
            Ok(data) => match auth::open::<LockInfo>(repo.key(), Kind::Lock, &key, &data) {
                Ok(info) => out.push((obj.name, info)),
                Err(e) => {
                    tracing::warn!(error = %e, "lock refused; `berth agent unlock` removes it");
                    refused.push(obj.name);
                }
            },
            Err(BackupError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, refused))
}

/// Lists the authenticated locks of a repository (refused ones are logged and left out).
pub async fn list_locks(repo: &Repository) -> Result<Vec<(String, LockInfo)>> {
    Ok(read_locks(repo).await?.0)
}

/// Removes stale and refused locks (or all locks with `all`); returns how many.
pub async fn remove_locks(repo: &Repository, all: bool) -> Result<usize> {
    let (locks, refused) = read_locks(repo).await?;
    let mut doomed = refused;
    doomed.extend(locks.into_iter().filter(|(_, info)| all || info.is_stale()).map(|(name, _)| name));
    let n = doomed.len();
    for name in doomed {
        repo.storage().delete(&format!("locks/{name}")).await?;
    }
    Ok(n)
}

fn conflict(mine_exclusive: bool, other: &LockInfo) -> bool {
    !other.is_stale() && (mine_exclusive || other.exclusive)
}

impl RepoLock {
    /// Takes a shared or exclusive lock for `operation`.
    pub async fn acquire(repo: &Repository, exclusive: bool, operation: &str) -> Result<Self> {
        for (_, other) in list_locks(repo).await? {
            if conflict(exclusive, &other) {
                return Err(BackupError::Locked(other.describe()));
            }
        }
        let now = jiff::Timestamp::now().to_string();
        let info = LockInfo {
            exclusive,
            hostname: super::hostname(),
            pid: std::process::id(),
            operation: operation.to_string(),
            created: now.clone(),
            refreshed: now,
        };
        let name = Id::random().to_hex();
        let key = format!("locks/{name}");
        repo.storage().put(&key, Bytes::from(auth::seal(repo.key(), Kind::Lock, &key, &info))).await?;
        for (other_name, other) in list_locks(repo).await? {
            if other_name != name && conflict(exclusive, &other) {
                repo.storage().delete(&key).await?;
                return Err(BackupError::Locked(other.describe()));
            }
        }
        let r = repo.clone();
        let refresher = tokio::spawn(async move {
            let mut info = info;
            loop {
                tokio::time::sleep(REFRESH).await;
                info.refreshed = jiff::Timestamp::now().to_string();
                let sealed = Bytes::from(auth::seal(r.key(), Kind::Lock, &key, &info));
                if let Err(e) = r.storage().put(&key, sealed).await {
                    tracing::warn!(error = %e, "refreshing the repository lock failed");
                }
            }
        });
        Ok(Self { repo: repo.clone(), name, refresher })
    }

    /// Removes the lock.
    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        self.repo.storage().delete(&format!("locks/{}", self.name)).await
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

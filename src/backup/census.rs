//! What a directory tree holds, counted as a `dir` snapshot's summary counts it: regular files,
//! directories (the root included) and the bytes of the files. Symlinks, FIFOs, sockets and
//! devices are not counted, on either side. A restore drill compares a restored volume's count
//! with the backup's summary (`berth agent count-dir`), which the repository authenticates.

use std::path::Path;

use serde::Serialize;

use super::Summary;

/// Counts of one tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

impl Census {
    /// What a backup recorded.
    pub fn of_summary(summary: &Summary) -> Self {
        Self { files: summary.files, dirs: summary.dirs, bytes: summary.bytes_total }
    }

    /// Counts the tree below `root` without following symlinks; one directory open at a time.
    pub fn count(root: &Path) -> std::io::Result<Self> {
        let mut census = Self { dirs: 1, ..Self::default() };
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).map_err(with_path(&dir))? {
                let entry = entry.map_err(with_path(&dir))?;
                let kind = entry.file_type().map_err(with_path(&entry.path()))?;
                if kind.is_dir() {
                    census.dirs += 1;
                    pending.push(entry.path());
                } else if kind.is_file() {
                    census.files += 1;
                    census.bytes += entry.metadata().map_err(with_path(&entry.path()))?.len();
                }
            }
        }
        Ok(census)
    }

    /// `None` when `self` (what is there) is what was `recorded`, else what differs, in words.
    pub fn mismatch(&self, recorded: &Self) -> Option<String> {
        (self != recorded).then(|| {
            format!(
                "it holds {} files, {} directories and {} bytes; the backup recorded {} files, {} directories and {} bytes",
                self.files, self.dirs, self.bytes, recorded.files, recorded.dirs, recorded.bytes
            )
        })
    }
}

/// The error with the path it concerns.
fn with_path(path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl std::fmt::Display for Census {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files, {} directories, {} bytes", self.files, self.dirs, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_dirs_and_bytes_but_not_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/one"), b"12345").unwrap();
        std::fs::write(root.join("a/b/two"), b"123").unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("a", root.join("link-to-dir")).unwrap();
        let census = Census::count(root).unwrap();
        assert_eq!(census, Census { files: 3, dirs: 3, bytes: 8 });
        assert_eq!(census.mismatch(&census), None);
        let fewer = Census { files: 2, ..census };
        let message = census.mismatch(&fewer).unwrap();
        assert!(
            message.starts_with("it holds 3 files, 3 directories and 8 bytes; the backup recorded 2 files"),
            "{message}"
        );
    }
}

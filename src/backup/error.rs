//! The error type of the backup repository.

/// Everything that can go wrong while reading or writing a repository.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The bucket does not exist (or is not visible with these credentials).
    #[error("bucket {bucket:?} does not exist or is not accessible at {endpoint}")]
    NoSuchBucket { bucket: String, endpoint: String },
    /// An object the repository needs is missing.
    #[error("object {0} not found in the repository storage")]
    NotFound(String),
    /// The storage answered with an error (after retries).
    #[error("storage {op} {key}: {message}")]
    Storage { op: &'static str, key: String, message: String },
    /// There is no repository at that location.
    #[error("no repository at {0} (run `berth agent init` first)")]
    NotARepository(String),
    /// `init` found an existing repository.
    #[error("a repository already exists at {0}")]
    AlreadyExists(String),
    /// The key does not open the repository.
    #[error("wrong repository key: the key given does not open any of the {count} key(s) of repository {url}")]
    WrongKey { url: String, count: usize },
    /// Data failed authentication, hashing or parsing.
    #[error("repository data is corrupt: {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// A readable repository object (`config`, a manifest, a lock) whose MAC does not verify
    /// with this repository's key.
    #[error(
        "{key} failed authentication with this repository's key ({detail}): it was modified, copied from another name or written with another key; it is refused (restore it from a good copy, e.g. the offsite replica, or delete it)"
    )]
    Unauthenticated { key: String, detail: String },
    /// A key file asks for key-derivation parameters berth never writes; refused before the
    /// derivation runs.
    #[error(
        "key file {key} refused before deriving any key: {detail}; it was not written by berth (remove it, or restore the keys/ directory from a good copy)"
    )]
    KdfRefused { key: String, detail: String },
    /// A repository of an older format that must be migrated before use.
    #[error(
        "repository {url} has format version {found}, whose config and backup manifests are not authenticated; this berth reads version {supported} only. stop the backups writing to it and run `berth agent repo migrate` once with its settings and key (BERTH_REPOSITORY={url}, BERTH_REPOSITORY_KEY_FILE)"
    )]
    MigrationNeeded { url: String, found: u32, supported: u32 },
    /// A plain-HTTP S3 endpoint without the explicit opt-in.
    #[error(
        "S3 endpoint {endpoint} is plain HTTP: credentials and repository objects would travel unprotected. Use https://, or allow plain HTTP explicitly where the network is trusted (tests, an in-cluster MinIO): `insecureHTTP: true` in the BackupPolicy's storage location, `--insecure-http` (BERTH_S3_INSECURE_HTTP=true) for `berth agent`"
    )]
    InsecureEndpoint { endpoint: String },
    /// Another process holds a conflicting lock.
    #[error("repository is locked: {0}")]
    Locked(String),
    /// A repository format newer than this binary understands.
    #[error("unsupported repository format version {found} (this berth supports {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// Bad input from the caller (configuration, arguments).
    #[error("{0}")]
    Invalid(String),
    /// Local file-system error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The operation was interrupted (a worker died or the pipeline was cancelled).
    #[error("operation aborted: {0}")]
    Aborted(String),
}

impl BackupError {
    pub(crate) fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Corrupt { what: what.into(), detail: detail.to_string() }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// True when retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Storage { .. } | Self::Locked(_) | Self::Aborted(_))
    }
}

/// Result alias of the backup module.
pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// A read error of backup input; callers that know the file replace the context.
impl From<std::io::Error> for BackupError {
    fn from(source: std::io::Error) -> Self {
        Self::io("reading input", source)
    }
}

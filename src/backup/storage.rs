//! Object storage under a repository root: S3 (any S3-compatible server) or a local directory.
//!
//! Keys given to [`Storage`] are relative to the repository prefix (`config`, `data/ab/…`).
//! Every S3 call is retried by the SDK with exponential backoff (standard retry mode); large
//! objects are written with multipart uploads whose parts go up in parallel and which are
//! aborted when any part fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption as SseAlgorithm};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::error::{BackupError, Result};

/// Whether `endpoint` is plain HTTP.
pub fn is_plain_http(endpoint: &str) -> bool {
    endpoint.trim_start().get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

/// Default size of one multipart part; objects up to this size use a single PUT.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// Where a repository lives.
// Built once per repository open and never stored in bulk: boxing the S3 variant would buy
// nothing and cost every constructor a `Box::new`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// `s3://bucket/prefix` on AWS or any S3-compatible server.
    S3(S3Config),
    /// `file:///path` (or a plain absolute path): a local directory, for tests and NFS mounts.
    Local(PathBuf),
}

/// Settings of an S3 location. Credentials not given here come from the usual AWS chain
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE` and its files, web identity).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing slash; empty for the bucket root.
    pub prefix: String,
    /// Custom endpoint (`https://minio.example:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Allow a plain `http://` endpoint (tests, an in-cluster MinIO). Uploads are not signed
    /// over their payload (UNSIGNED-PAYLOAD), and credentials and readable metadata would
    /// travel in the clear, so plain HTTP is refused unless asked for.
    pub insecure_http: bool,
    /// Region; falls back to the AWS chain, then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub path_style: bool,
    /// PEM file with additional CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// Multipart part size in bytes (minimum 5 MiB on AWS); 0 means the default.
    pub part_size: usize,
    /// Parallel requests per multipart upload; 0 means 4.
    pub upload_concurrency: usize,
    /// Longest one request may go without completing, retries included, before the work
    /// fails: a server that stops answering ends the work in this time instead of read
    /// timeouts retried for many minutes. Zero means [`DEFAULT_NO_PROGRESS_TIMEOUT`].
    pub no_progress_timeout: Duration,
    /// Server-side encryption requested on every object written (PutObject and
    /// CreateMultipartUpload); `None` leaves it to the bucket's default.
    pub sse: Option<ServerSideEncryption>,
}

/// S3 server-side encryption of written objects. It is on top of, not instead of, the
/// repository's own encryption: it is for bucket policies and compliance rules that demand a
/// KMS key (or SSE-S3) on every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3 (`AES256`).
    Aes256,
    /// SSE-KMS (`aws:kms`) with this key: an id, ARN, alias (`alias/name`) or alias ARN.
    Kms { key_id: String },
}

impl ServerSideEncryption {
    /// From the `type` and `kmsKeyId` settings (`aws:kms` needs a key, `AES256` takes none).
    /// `source` names where they came from, for the error message.
    pub fn parse(kind: &str, kms_key_id: Option<&str>, source: &str) -> Result<Self> {
        let key = kms_key_id.map(str::trim).filter(|k| !k.is_empty());
        match (kind, key) {
            ("aws:kms", Some(key)) => Ok(Self::Kms { key_id: key.to_string() }),
            ("aws:kms", None) => Err(BackupError::Invalid(format!(
                "{source}: server-side encryption aws:kms needs a KMS key id (a key id, key ARN or alias/NAME)"
            ))),
            ("AES256", None) => Ok(Self::Aes256),
            ("AES256", Some(_)) => Err(BackupError::Invalid(format!(
                "{source}: a KMS key id goes only with server-side encryption aws:kms, not AES256; remove the key id or use aws:kms"
            ))),
            (other, _) => Err(BackupError::Invalid(format!(
                "{source}: server-side encryption {other:?} is not supported; use \"aws:kms\" (with a KMS key id) or \"AES256\""
            ))),
        }
    }

    /// The value of `x-amz-server-side-encryption`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Aes256 => "AES256",
            Self::Kms { .. } => "aws:kms",
        }
    }

    fn sdk_algorithm(&self) -> SseAlgorithm {
        match self {
            Self::Aes256 => SseAlgorithm::Aes256,
            Self::Kms { .. } => SseAlgorithm::AwsKms,
        }
    }

    fn kms_key_id(&self) -> Option<String> {
        match self {
            Self::Aes256 => None,
            Self::Kms { key_id } => Some(key_id.clone()),
        }
    }

    /// Why an object stored with `found` does not have this encryption; `None` when it does.
    /// S3 reports the key as an ARN, so a key id matches the ARN's `key/<id>` ending; an
    /// alias resolves to a key S3 does not name, so with an alias only the type is compared.
    pub fn mismatch(&self, found: &ObjectEncryption) -> Option<String> {
        let expected = match self {
            Self::Aes256 => "AES256".to_string(),
            Self::Kms { key_id } => format!("aws:kms with key {key_id}"),
        };
        let stored = match (&found.algorithm, &found.kms_key_id) {
            (None, _) => "no server-side encryption".to_string(),
            (Some(a), Some(k)) => format!("{a} with key {k}"),
            (Some(a), None) => a.clone(),
        };
        let matches = match self {
            Self::Aes256 => found.algorithm.as_deref() == Some("AES256"),
            Self::Kms { key_id } => {
                found.algorithm.as_deref() == Some("aws:kms")
                    && (key_id.starts_with("alias/")
                        || key_id.contains(":alias/")
                        || found.kms_key_id.as_deref().is_some_and(|k| {
                            k == key_id || k.strip_suffix(key_id.as_str()).is_some_and(|p| p.ends_with("key/"))
                        }))
            }
        };
        (!matches).then(|| format!("stored with {stored}, expected {expected}"))
    }
}

/// The server-side encryption S3 reports for a stored object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectEncryption {
    /// `x-amz-server-side-encryption` of the response (`AES256`, `aws:kms`), if any.
    pub algorithm: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id` of the response, if any.
    pub kms_key_id: Option<String>,
}

/// How long a request to S3 may make no progress by default.
pub const DEFAULT_NO_PROGRESS_TIMEOUT: Duration = Duration::from_secs(300);

fn stalled_hint() -> &'static str {
    "the S3 server made no progress within the no-progress bound (BERTH_S3_NO_PROGRESS_TIMEOUT, --no-progress-timeout; default 300 s)"
}

fn stalled(bound: Duration) -> String {
    format!("{} of {} s while sending the response body", stalled_hint(), bound.as_secs())
}

impl S3Config {
    fn no_progress_timeout(&self) -> Duration {
        if self.no_progress_timeout.is_zero() { DEFAULT_NO_PROGRESS_TIMEOUT } else { self.no_progress_timeout }
    }
}

impl StorageConfig {
    /// Parses `s3://bucket/prefix`, `file:///path` or an absolute path.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackupError::Invalid(format!(
                    "repository URL {url:?} has no bucket (expected s3://bucket/prefix)"
                )));
            }
            Ok(Self::S3(S3Config {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                path_style: true,
                ..S3Config::default()
            }))
        } else if let Some(path) = url.strip_prefix("file://") {
            Ok(Self::Local(PathBuf::from(path)))
        } else if url.starts_with('/') {
            Ok(Self::Local(PathBuf::from(url)))
        } else {
            Err(BackupError::Invalid(format!(
                "unsupported repository URL {url:?} (expected s3://bucket/prefix or file:///path)"
            )))
        }
    }

    /// The location as a URL, for messages.
    pub fn url(&self) -> String {
        match self {
            Self::S3(c) if c.prefix.is_empty() => format!("s3://{}", c.bucket),
            Self::S3(c) => format!("s3://{}/{}", c.bucket, c.prefix),
            Self::Local(p) => format!("file://{}", p.display()),
        }
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the listed directory.
    pub name: String,
    pub size: u64,
}

/// A handle on the storage of one repository; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Backend>,
    url: String,
    /// GETs made through this handle and its clones.
    gets: Arc<std::sync::atomic::AtomicU64>,
}

enum Backend {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
        endpoint: String,
        part_size: usize,
        concurrency: usize,
        /// Longest a response body may stall (the SDK's operation timeout ends at the headers).
        no_progress: Duration,
        sse: Option<ServerSideEncryption>,
    },
    Local {
        root: PathBuf,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("url", &self.url).finish()
    }
}

fn s3_err<E, R>(op: &'static str, key: &str, err: aws_sdk_s3::error::SdkError<E, R>) -> BackupError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + 'static,
{
    let code = err.code().map(str::to_string);
    if let aws_sdk_s3::error::SdkError::TimeoutError(_) = &err {
        let message = format!("{}: {}", stalled_hint(), error_chain(&err));
        return BackupError::Storage { op, key: key.to_string(), message };
    }
    match code.as_deref() {
        Some("NoSuchKey") | Some("NotFound") => BackupError::NotFound(key.to_string()),
        _ => BackupError::Storage { op, key: key.to_string(), message: error_chain(&err) },
    }
}

/// The error and its sources joined by ": ", each once. The SDK's `DisplayErrorContext` also
/// appends a Debug dump, which does not belong in a status message a person reads.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

impl Storage {
    /// Connects to the configured location (no request is made yet).
    pub async fn connect(config: &StorageConfig) -> Result<Self> {
        let url = config.url();
        match config {
            StorageConfig::Local(root) => {
                Ok(Self { inner: Arc::new(Backend::Local { root: root.clone() }), url, gets: Arc::default() })
            }
            StorageConfig::S3(c) => {
                if let Some(endpoint) = c.endpoint.as_deref().filter(|e| is_plain_http(e))
                    && !c.insecure_http
                {
                    return Err(BackupError::InsecureEndpoint { endpoint: endpoint.to_string() });
                }
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .retry_config(
                        aws_config::retry::RetryConfig::standard()
                            .with_max_attempts(8)
                            .with_initial_backoff(Duration::from_millis(200))
                            .with_max_backoff(Duration::from_secs(20)),
                    )
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(10))
                            .read_timeout(Duration::from_secs(120).min(c.no_progress_timeout()))
                            // Every attempt and backoff of one request together: the bound on
                            // a server that accepts connections and never answers.
                            .operation_timeout(c.no_progress_timeout())
                            .build(),
                    );
                if let Some(region) = &c.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                if let (Some(ak), Some(sk)) = (&c.access_key_id, &c.secret_access_key) {
                    loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                        ak.clone(),
                        sk.clone(),
                        c.session_token.clone(),
                        None,
                        "berth",
                    ));
                }
                // A custom client when a CA file is given, and for plain-HTTP endpoints: the
                // default one reads every file of /etc/ssl/certs at start (0.2 s on a cold
                // page cache) even when no TLS connection is ever made.
                let plain_http = c.endpoint.as_deref().is_some_and(is_plain_http);
                if c.ca_file.is_some() || plain_http {
                    use aws_smithy_http_client::tls;
                    let trust = match &c.ca_file {
                        Some(ca) => {
                            let pem = std::fs::read(ca)
                                .map_err(|e| BackupError::io(format!("reading CA file {}", ca.display()), e))?;
                            tls::TrustStore::default().with_pem_certificate(pem)
                        }
                        None => tls::TrustStore::empty(),
                    };
                    let ctx = tls::TlsContext::builder().with_trust_store(trust).build().map_err(|e| {
                        BackupError::Invalid(format!("TLS settings of {}: {e}", c.endpoint.as_deref().unwrap_or("S3")))
                    })?;
                    let http = aws_smithy_http_client::Builder::new()
                        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
                        .tls_context(ctx)
                        .build_https();
                    loader = loader.http_client(http);
                }
                let shared = loader.load().await;
                let mut b = aws_sdk_s3::config::Builder::from(&shared).force_path_style(c.path_style);
                if shared.region().is_none() {
                    b = b.region(aws_config::Region::new("us-east-1"));
                }
                if let Some(ep) = &c.endpoint {
                    b = b.endpoint_url(ep.clone());
                }
                let client = aws_sdk_s3::Client::from_conf(b.build());
                Ok(Self {
                    inner: Arc::new(Backend::S3 {
                        client,
                        bucket: c.bucket.clone(),
                        prefix: c.prefix.clone(),
                        endpoint: c.endpoint.clone().unwrap_or_else(|| "AWS S3".into()),
                        part_size: if c.part_size == 0 { DEFAULT_PART_SIZE } else { c.part_size.max(5 * 1024 * 1024) },
                        concurrency: if c.upload_concurrency == 0 { 4 } else { c.upload_concurrency },
                        no_progress: c.no_progress_timeout(),
                        sse: c.sse.clone(),
                    }),
                    url,
                    gets: Arc::default(),
                })
            }
        }
    }

    /// The location as a URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many objects and ranges were read through this handle and its clones (each is a
    /// request, and on S3 a billed one).
    pub fn gets(&self) -> u64 {
        self.gets.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn full_key(prefix: &str, key: &str) -> String {
        if prefix.is_empty() { key.to_string() } else { format!("{prefix}/{key}") }
    }

    /// Fails with [`BackupError::NoSuchBucket`] when the bucket is missing.
    pub async fn ensure_bucket(&self) -> Result<()> {
        match &*self.inner {
            Backend::Local { root } => {
                let parent = root.parent().unwrap_or(Path::new("/"));
                if parent.is_dir() {
                    Ok(())
                } else {
                    Err(BackupError::NoSuchBucket {
                        bucket: parent.display().to_string(),
                        endpoint: "local file system".into(),
                    })
                }
            }
            Backend::S3 { client, bucket, endpoint, .. } => match client.head_bucket().bucket(bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    if status == Some(404) || e.code() == Some("NoSuchBucket") {
                        Err(BackupError::NoSuchBucket { bucket: bucket.clone(), endpoint: endpoint.clone() })
                    } else {
                        Err(s3_err("HeadBucket", bucket, e))
                    }
                }
            },
        }
    }

    /// Writes an object (replacing any existing one).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        match &*self.inner {
            Backend::Local { root } => {
                let path = root.join(key);
                let data2 = data.clone();
                tokio::task::spawn_blocking(move || local_put(&path, &data2))
                    .await
                    .map_err(|e| BackupError::Aborted(e.to_string()))?
            }
            Backend::S3 { client, bucket, prefix, part_size, concurrency, sse, .. } => {
                let full = Self::full_key(prefix, key);
                if data.len() <= *part_size {
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(&full)
                        .set_server_side_encryption(sse.as_ref().map(ServerSideEncryption::sdk_algorithm))
                        .set_ssekms_key_id(sse.as_ref().and_then(ServerSideEncryption::kms_key_id))
                        .body(ByteStream::from(data))
                        // UNSIGNED-PAYLOAD: hashing every uploaded byte with SHA-256 (here and
                        // again on the server) buys little: packs, indexes and snapshots are
                        // sealed with AES-GCM, config, manifests and locks carry a MAC, all
                        // verified whenever read; endpoints use TLS unless `insecure_http`.
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .await
                        .map_err(|e| s3_err("PutObject", &full, e))?;
                    Ok(())
                } else {
                    multipart_put(client, bucket, &full, data, *part_size, *concurrency, sse.as_ref()).await
                }
            }
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_inner(key, None, Vec::new()).await.map(Bytes::from)
    }

    /// Reads `len` bytes at `start`; fails with a corruption error when the object is shorter.
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        self.get_range_into(key, start, len, Vec::new()).await.map(Bytes::from)
    }

    /// [`get_range`](Self::get_range) into `buf` (cleared first), so that a caller that reads
    /// many ranges reuses one buffer instead of page-faulting a fresh one each time.
    pub async fn get_range_into(&self, key: &str, start: u64, len: u64, buf: Vec<u8>) -> Result<Vec<u8>> {
        let data = self.get_inner(key, Some((start, len)), buf).await?;
        if (data.len() as u64) != len {
            return Err(BackupError::corrupt(
                format!("object {key}"),
                format!("wanted {len} bytes at offset {start}, got {} (object truncated?)", data.len()),
            ));
        }
        Ok(data)
    }

    async fn get_inner(&self, key: &str, range: Option<(u64, u64)>, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &*self.inner {
            Backend::Local { root } => {
                let path = root.join(key);
                let key = key.to_string();
                tokio::task::spawn_blocking(move || local_get(&path, &key, range, buf))
                    .await
                    .map_err(|e| BackupError::Aborted(e.to_string()))?
            }
            Backend::S3 { client, bucket, prefix, no_progress, .. } => {
                let full = Self::full_key(prefix, key);
                // The SDK retries the request; a body that breaks off mid-way is retried here.
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    buf.clear();
                    let mut req = client.get_object().bucket(bucket).key(&full);
                    if let Some((start, len)) = range {
                        if len == 0 {
                            return Ok(buf);
                        }
                        req = req.range(format!("bytes={}-{}", start, start + len - 1));
                    }
                    let mut out = match req.send().await {
                        Ok(o) => o,
                        Err(e) => {
                            let status = e.raw_response().map(|r| r.status().as_u16());
                            if status == Some(416) {
                                return Err(BackupError::corrupt(
                                    format!("object {key}"),
                                    "requested range lies beyond its end (object truncated?)",
                                ));
                            }
                            return Err(s3_err("GetObject", &full, e));
                        }
                    };
                    let want = out.content_length.unwrap_or(0).max(0) as usize;
                    if buf.capacity() < want {
                        // A new buffer, not `reserve`: growing copies the old capacity (stale
                        // bytes) into fresh memory. The power of two leaves room for the next,
                        // slightly larger pack, so a reused buffer grows once.
                        buf = Vec::new();
                        buf.reserve_exact(want.next_power_of_two());
                    }
                    // `Ok(false)`: the body stalled; asking again would only wait as long again.
                    let body = async {
                        loop {
                            match tokio::time::timeout(*no_progress, out.body.next()).await {
                                Ok(Some(piece)) => buf.extend_from_slice(&piece?),
                                Ok(None) => return Ok::<_, aws_sdk_s3::primitives::ByteStreamError>(true),
                                Err(_) => return Ok(false),
                            }
                        }
                    };
                    match body.await {
                        Ok(true) => return Ok(buf),
                        Ok(false) => {
                            return Err(BackupError::Storage {
                                op: "GetObject",
                                key: full,
                                message: stalled(*no_progress),
                            });
                        }
                        Err(e) if range.is_some() && self.shorter_than(key, range).await => {
                            let (start, len) = range.expect("range");
                            return Err(BackupError::corrupt(
                                format!("object {key}"),
                                format!(
                                    "object truncated: shorter than the {len} bytes needed at offset {start} ({e})"
                                ),
                            ));
                        }
                        Err(e) if attempt < 5 => {
                            tracing::warn!(key = %full, attempt, error = %e, "S3 body read failed, retrying");
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                        Err(e) => {
                            return Err(BackupError::Storage { op: "GetObject", key: full, message: e.to_string() });
                        }
                    }
                }
            }
        }
    }

    /// True when the object is shorter than the end of `range` (a truncated object).
    async fn shorter_than(&self, key: &str, range: Option<(u64, u64)>) -> bool {
        let Some((start, len)) = range else {
            return false;
        };
        matches!(self.head(key).await, Ok(Some(size)) if size < start + len)
    }

    /// Size of an object, `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        match &*self.inner {
            Backend::Local { root } => match std::fs::metadata(root.join(key)) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(BackupError::io(format!("stat {key}"), e)),
            },
            Backend::S3 { client, bucket, prefix, .. } => {
                let full = Self::full_key(prefix, key);
                match client.head_object().bucket(bucket).key(&full).send().await {
                    Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
                    Err(e) => {
                        let status = e.raw_response().map(|r| r.status().as_u16());
                        if status == Some(404) { Ok(None) } else { Err(s3_err("HeadObject", &full, e)) }
                    }
                }
            }
        }
    }

    /// The server-side encryption requested for written objects, if any.
    pub fn server_side_encryption(&self) -> Option<&ServerSideEncryption> {
        match &*self.inner {
            Backend::S3 { sse, .. } => sse.as_ref(),
            Backend::Local { .. } => None,
        }
    }

    /// The server-side encryption S3 reports for a stored object (HeadObject); `None` when the
    /// object does not exist. A local directory has none.
    pub async fn encryption(&self, key: &str) -> Result<Option<ObjectEncryption>> {
        let Backend::S3 { client, bucket, prefix, .. } = &*self.inner else {
            return Ok(Some(ObjectEncryption::default()));
        };
        let full = Self::full_key(prefix, key);
        match client.head_object().bucket(bucket).key(&full).send().await {
            Ok(o) => Ok(Some(ObjectEncryption {
                algorithm: o.server_side_encryption().map(|a| a.as_str().to_string()),
                kms_key_id: o.ssekms_key_id().map(str::to_string),
            })),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(s3_err("HeadObject", &full, e)),
        }
    }

    /// Lists every object below `dir` (recursively), names relative to `dir`.
    pub async fn list(&self, dir: &str) -> Result<Vec<ObjectInfo>> {
        let dir = dir.trim_end_matches('/');
        match &*self.inner {
            Backend::Local { root } => {
                let base = root.join(dir);
                tokio::task::spawn_blocking(move || local_list(&base))
                    .await
                    .map_err(|e| BackupError::Aborted(e.to_string()))?
            }
            Backend::S3 { client, bucket, prefix, .. } => {
                let full = format!("{}/", Self::full_key(prefix, dir));
                let mut out = Vec::new();
                let mut pages = client.list_objects_v2().bucket(bucket).prefix(&full).into_paginator().send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| s3_err("ListObjectsV2", &full, e))?;
                    for obj in page.contents() {
                        if let Some(k) = obj.key()
                            && let Some(name) = k.strip_prefix(&full)
                            && !name.is_empty()
                        {
                            out.push(ObjectInfo {
                                name: name.to_string(),
                                size: obj.size().unwrap_or(0).max(0) as u64,
                            });
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match &*self.inner {
            Backend::Local { root } => match std::fs::remove_file(root.join(key)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(BackupError::io(format!("deleting {key}"), e)),
            },
            Backend::S3 { client, bucket, prefix, .. } => {
                let full = Self::full_key(prefix, key);
                match client.delete_object().bucket(bucket).key(&full).send().await {
                    Ok(_) => Ok(()),
                    Err(e) => match s3_err("DeleteObject", &full, e) {
                        BackupError::NotFound(_) => Ok(()),
                        other => Err(other),
                    },
                }
            }
        }
    }

    /// Deletes many objects with bounded parallelism.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        futures::stream::iter(keys)
            .map(|k| async move { self.delete(&k).await })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Aborts unfinished multipart uploads below `dir` started more than `older_than` ago
    /// (left behind by a killed process). Servers without `ListMultipartUploads` are skipped.
    pub async fn abort_stale_uploads(&self, dir: &str, older_than: Duration) -> Result<usize> {
        let Backend::S3 { client, bucket, prefix, .. } = &*self.inner else {
            return Ok(0);
        };
        let full = format!("{}/", Self::full_key(prefix, dir));
        let out = match client.list_multipart_uploads().bucket(bucket).prefix(&full).send().await {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %DisplayErrorContext(&e), "ListMultipartUploads unsupported; skipping");
                return Ok(0);
            }
        };
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut aborted = 0;
        for up in out.uploads() {
            let started = up.initiated().and_then(|t| std::time::SystemTime::try_from(*t).ok());
            if started.is_some_and(|s| s > cutoff) {
                continue;
            }
            if let (Some(key), Some(id)) = (up.key(), up.upload_id()) {
                client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| s3_err("AbortMultipartUpload", key, e))?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }
}

async fn multipart_put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    data: Bytes,
    part_size: usize,
    concurrency: usize,
    sse: Option<&ServerSideEncryption>,
) -> Result<()> {
    // The encryption is set when the upload is created; S3 wants it on UploadPart only for
    // customer-provided keys (SSE-C), which Berth does not use.
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .set_server_side_encryption(sse.map(ServerSideEncryption::sdk_algorithm))
        .set_ssekms_key_id(sse.and_then(ServerSideEncryption::kms_key_id))
        .send()
        .await
        .map_err(|e| s3_err("CreateMultipartUpload", key, e))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| BackupError::Storage {
            op: "CreateMultipartUpload",
            key: key.to_string(),
            message: "server returned no upload id".into(),
        })?
        .to_string();
    let parts: Vec<(i32, Bytes)> = (0..data.len().div_ceil(part_size))
        .map(|i| {
            let end = ((i + 1) * part_size).min(data.len());
            (i as i32 + 1, data.slice(i * part_size..end))
        })
        .collect();
    let uploaded: Result<Vec<CompletedPart>> = futures::stream::iter(parts)
        .map(|(n, body)| {
            let upload_id = upload_id.clone();
            async move {
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(n)
                    .body(ByteStream::from(body))
                    // UNSIGNED-PAYLOAD, as in `put` (packs are sealed and verified on read).
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| s3_err("UploadPart", key, e))?;
                Ok(CompletedPart::builder().part_number(n).set_e_tag(out.e_tag().map(str::to_string)).build())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await;
    let result = match uploaded {
        Ok(mut parts) => {
            parts.sort_by_key(|p| p.part_number());
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| s3_err("CompleteMultipartUpload", key, e))
        }
        Err(e) => Err(e),
    };
    if result.is_err()
        && let Err(e) = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await
    {
        tracing::warn!(key, error = %DisplayErrorContext(&e), "aborting multipart upload failed");
    }
    result
}

fn local_put(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("object path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| BackupError::io(format!("mkdir {}", dir.display()), e))?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), super::crypto::random_hex(8)));
    let res = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let direct = write_direct(&f, data);
        std::os::unix::fs::FileExt::write_all_at(&f, &data[direct..], direct as u64)?;
        f.sync_all()?;
        drop_cached(&f);
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| BackupError::io(format!("writing {}", path.display()), e))
}

/// Writes the longest whole-page prefix of `data` around the page cache (`O_DIRECT`), when
/// `data` starts on a page boundary, as pack buffers do; returns the bytes so written, and
/// the caller writes the rest through the cache. A backup never reads its packs again, and
/// the copy into the page cache was the largest cost of writing a `file://` repository that
/// the backup could avoid (8 % of a small-file backup's CPU time). A file system without
/// direct I/O, or one that refuses a write (larger blocks), ends this early and loses nothing.
fn write_direct(f: &std::fs::File, data: &[u8]) -> usize {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    const PAGE: usize = 4096;
    let len = data.len() / PAGE * PAGE;
    if len == 0 || !(data.as_ptr() as usize).is_multiple_of(PAGE) {
        return 0;
    }
    let Ok(flags) = fcntl_getfl(f) else { return 0 };
    if fcntl_setfl(f, flags | OFlags::DIRECT).is_err() {
        return 0;
    }
    let mut done = 0;
    while done < len {
        match std::os::unix::fs::FileExt::write_at(f, &data[done..len], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break, // the buffered write of the rest reports a lasting error
        }
    }
    // Should this fail, the unaligned rest fails to write and the put reports it.
    let _ = fcntl_setfl(f, flags);
    done
}

/// Drops the clean, just-synced pages of an object from the page cache: a backup writes its
/// packs once and does not read them again. Kept, a backup's whole repository stayed cached,
/// charged to the agent's memory cgroup and pushing out the node's workloads; and each pack
/// took fresh pages. Dropped, the next pack reuses them: writing a repository took a tenth of
/// the system time on this test machine, where fresh pages are costly (a VM that returns
/// freed memory to its host). Advice only: a failure changes nothing.
fn drop_cached(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    let _ = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn local_get(path: &Path, key: &str, range: Option<(u64, u64)>, mut buf: Vec<u8>) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::NotFound(key.to_string()));
        }
        Err(e) => return Err(BackupError::io(format!("reading {key}"), e)),
    };
    buf.clear();
    let res = match range {
        None => f.read_to_end(&mut buf).map(|_| ()),
        Some((start, len)) => {
            f.seek(SeekFrom::Start(start)).and_then(|_| f.take(len).read_to_end(&mut buf).map(|_| ()))
        }
    };
    res.map_err(|e| BackupError::io(format!("reading {key}"), e))?;
    Ok(buf)
}

fn local_list(base: &Path) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BackupError::io(format!("listing {}", dir.display()), e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| BackupError::io("listing", e))?;
            let ft = entry.file_type().map_err(|e| BackupError::io("listing", e))?;
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let name = path.strip_prefix(base).expect("listed below base").to_string_lossy().into_owned();
                out.push(ObjectInfo { name, size });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let StorageConfig::S3(c) = StorageConfig::parse("s3://bkt/a/b/").unwrap() else { panic!("not s3") };
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bkt", "a/b"));
        assert_eq!(StorageConfig::parse("s3://bkt").unwrap().url(), "s3://bkt".to_string());
        assert!(StorageConfig::parse("s3:///x").is_err());
        assert!(StorageConfig::parse("ftp://x").is_err());
        assert_eq!(StorageConfig::parse("/tmp/r").unwrap(), StorageConfig::Local(PathBuf::from("/tmp/r")));
    }

    #[test]
    fn server_side_encryption_settings() {
        let kms = ServerSideEncryption::parse("aws:kms", Some("1234abcd-12ab"), "spec.storage").unwrap();
        assert_eq!(kms, ServerSideEncryption::Kms { key_id: "1234abcd-12ab".into() });
        assert_eq!(ServerSideEncryption::parse("AES256", None, "x").unwrap(), ServerSideEncryption::Aes256);
        let err = ServerSideEncryption::parse("aws:kms", Some(" "), "--sse").unwrap_err().to_string();
        assert!(err.contains("--sse") && err.contains("needs a KMS key id"), "{err}");
        let err = ServerSideEncryption::parse("AES256", Some("k"), "--sse").unwrap_err().to_string();
        assert!(err.contains("only with server-side encryption aws:kms"), "{err}");
        let err = ServerSideEncryption::parse("aws:kms:dsse", None, "--sse").unwrap_err().to_string();
        assert!(err.contains("\"aws:kms:dsse\" is not supported") && err.contains("AES256"), "{err}");
    }

    #[test]
    fn stored_encryption_is_compared_with_the_expected_one() {
        let stored = |a: Option<&str>, k: Option<&str>| ObjectEncryption {
            algorithm: a.map(str::to_string),
            kms_key_id: k.map(str::to_string),
        };
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab";
        let by_id = ServerSideEncryption::Kms { key_id: "1234abcd-12ab".into() };
        assert_eq!(by_id.mismatch(&stored(Some("aws:kms"), Some(arn))), None);
        assert_eq!(by_id.mismatch(&stored(Some("aws:kms"), Some("1234abcd-12ab"))), None);
        let by_arn = ServerSideEncryption::Kms { key_id: arn.into() };
        assert_eq!(by_arn.mismatch(&stored(Some("aws:kms"), Some(arn))), None);
        let other = by_id.mismatch(&stored(Some("aws:kms"), Some("arn:aws:kms:eu-west-1:1:key/99991234abcd-12ab")));
        assert!(other.is_some_and(|m| m.contains("expected aws:kms with key 1234abcd-12ab")));
        let none = by_id.mismatch(&stored(None, None)).unwrap();
        assert!(none.contains("stored with no server-side encryption"), "{none}");
        assert!(by_id.mismatch(&stored(Some("AES256"), None)).is_some());
        let alias = ServerSideEncryption::Kms { key_id: "alias/backups".into() };
        assert_eq!(alias.mismatch(&stored(Some("aws:kms"), Some(arn))), None);
        assert!(alias.mismatch(&stored(Some("AES256"), None)).is_some());
        assert_eq!(ServerSideEncryption::Aes256.mismatch(&stored(Some("AES256"), None)), None);
        assert!(ServerSideEncryption::Aes256.mismatch(&stored(Some("aws:kms"), Some(arn))).is_some());
    }

    #[tokio::test]
    async fn storage_errors_read_as_a_chain_without_debug_dumps() {
        // A port nothing listens on: the SDK's error wraps a connector error in several layers.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = StorageConfig::S3(S3Config {
            bucket: "b".into(),
            endpoint: Some(format!("http://{closed}")),
            insecure_http: true,
            path_style: true,
            region: Some("us-east-1".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Config::default()
        });
        let err = Storage::connect(&config).await.unwrap().head("config").await.unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");
        assert!(!err.contains("DispatchFailure") && !err.contains("{ "), "a Debug dump leaked: {err}");
    }

    #[tokio::test]
    async fn plain_http_needs_the_opt_in() {
        let config = |insecure_http| {
            StorageConfig::S3(S3Config {
                bucket: "b".into(),
                endpoint: Some("HTTP://127.0.0.1:9".into()),
                insecure_http,
                ..S3Config::default()
            })
        };
        let err = Storage::connect(&config(false)).await.unwrap_err();
        assert!(matches!(err, BackupError::InsecureEndpoint { .. }), "{err}");
        assert!(err.to_string().contains("--insecure-http") && err.to_string().contains("insecureHTTP"), "{err}");
        Storage::connect(&config(true)).await.unwrap();
        assert!(!is_plain_http("https://s3.example"));
    }

    #[tokio::test]
    async fn local_backend_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::connect(&StorageConfig::Local(dir.path().join("repo"))).await.unwrap();
        s.ensure_bucket().await.unwrap();
        s.put("data/ab/x", Bytes::from_static(b"hello world")).await.unwrap();
        assert_eq!(&s.get("data/ab/x").await.unwrap()[..], b"hello world");
        assert_eq!(&s.get_range("data/ab/x", 6, 5).await.unwrap()[..], b"world");
        assert!(s.get_range("data/ab/x", 6, 50).await.is_err());
        let l = s.list("data").await.unwrap();
        assert_eq!(l, vec![ObjectInfo { name: "ab/x".into(), size: 11 }]);
        assert!(matches!(s.get("nope").await, Err(BackupError::NotFound(_))));
        s.delete("data/ab/x").await.unwrap();
        s.delete("data/ab/x").await.unwrap();
        assert!(s.list("data").await.unwrap().is_empty());
    }

    /// Pages of `path` in the page cache, by `mincore` of a mapping of the file.
    fn cached_pages(path: &Path) -> usize {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096;
        let mut resident = vec![0u8; len.div_ceil(page)];
        // SAFETY: a read-only shared mapping of `len` bytes of an open file, inspected with
        // mincore into a vector of one byte per page, and unmapped; never dereferenced.
        unsafe {
            let addr = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
            assert_ne!(addr, libc::MAP_FAILED);
            assert_eq!(libc::mincore(addr, len, resident.as_mut_ptr()), 0);
            libc::munmap(addr, len);
        }
        resident.iter().filter(|r| *r & 1 == 1).count()
    }

    /// A stored object is on disk and out of the page cache (a backup never reads its packs
    /// back); it reads back whole, from disk.
    #[tokio::test]
    async fn a_stored_object_is_not_left_in_the_page_cache() {
        // On disk: tmpfs pages cannot be dropped.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let s = Storage::connect(&StorageConfig::Local(dir.path().join("repo"))).await.unwrap();
        s.ensure_bucket().await.unwrap();
        let data = crate::backup::test_bytes(7, 4 << 20);
        s.put("data/ab/pack", Bytes::from(data.clone())).await.unwrap();
        let path = dir.path().join("repo/data/ab/pack");
        assert_eq!(cached_pages(&path), 0, "pages of a stored object stayed cached");
        assert!(s.get("data/ab/pack").await.unwrap() == data);
        assert!(cached_pages(&path) > 0, "the check sees cached pages"); // the test can fail
    }

    /// Whole pages of a page-aligned buffer are written directly, the rest through the cache,
    /// and the file holds exactly the data; an unaligned buffer is left to the cached write.
    #[test]
    fn direct_writes_cover_the_whole_pages_of_an_aligned_buffer() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap(); // ext4, not tmpfs
        let mut backing = vec![0u8; 8 * 4096];
        let start = backing.as_ptr().align_offset(4096);
        let data = crate::backup::test_bytes(3, 3 * 4096 + 100);
        backing[start..start + data.len()].copy_from_slice(&data);
        let aligned = &backing[start..start + data.len()];
        use std::os::unix::fs::OpenOptionsExt;
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("p"));
        let whole = if probe.is_ok() { 3 * 4096 } else { 0 };
        if probe.is_err() {
            eprintln!("{} has no O_DIRECT; only the cached path is tested", dir.path().display());
        }
        for (name, bytes, direct) in [("aligned", aligned, whole), ("unaligned", &aligned[1..], 0)] {
            let path = dir.path().join(name);
            let f = std::fs::File::create(&path).unwrap();
            assert_eq!(write_direct(&f, bytes), direct, "{name}");
            std::os::unix::fs::FileExt::write_all_at(&f, &bytes[direct..], direct as u64).unwrap();
            drop(f);
            assert!(std::fs::read(&path).unwrap() == bytes, "{name}: file differs");
        }
        local_put(&dir.path().join("put"), aligned).unwrap();
        assert!(std::fs::read(dir.path().join("put")).unwrap() == aligned);
    }
}

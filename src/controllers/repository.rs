//! Opens the backup repository of a BackupPolicy's storage location from the operator: the
//! S3 settings of the spec, credentials, CA and encryption key from Secrets of the policy's
//! namespace. A location without a repository gets one (the agent Jobs expect it to exist).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::api::backuppolicy::StorageLocation;
use crate::backup::storage::is_plain_http;
use crate::backup::{BackupError, Repository, S3Config, ServerSideEncryption, Storage, StorageConfig};
use crate::controllers::web_identity::{self, ROLE_ARN_ANNOTATION, WebIdentityError};
use crate::runtime::impersonate::{Account, TenantClient};

/// How long opening a repository may take before the backup reports the storage unreachable.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

static INIT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether a location without `credentialsSecret`, whose account has no IAM role annotation,
/// may be reached with the operator's own cloud identity (its IRSA role, instance profile or environment). Off unless the cluster admin
/// turns it on (`--allow-operator-storage-identity`): otherwise any namespace editor could use
/// the operator's IAM role on any bucket. Set once at start.
static OPERATOR_IDENTITY_ALLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets (or forbids) locations without `credentialsSecret` use the operator's own identity.
pub fn allow_operator_identity(allowed: bool) {
    OPERATOR_IDENTITY_ALLOWED.store(allowed, std::sync::atomic::Ordering::Relaxed);
}

/// Why a repository could not be opened, with the reason a condition shows.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("{field}: {message}")]
    Secret { field: &'static str, message: String },
    #[error(
        "{field}: the ServiceAccount Berth acts as in this namespace may not read Secret {name:?} ({message}); grant it get on Secrets in its Role (deploy/tenant/)"
    )]
    SecretForbidden { field: &'static str, name: String, message: String },
    #[error(
        "{field}.endpoint {endpoint} is plain HTTP: S3 credentials and repository objects would travel unprotected; use https://, or set {field}.insecureHTTP: true if the network is trusted (tests, an in-cluster MinIO)"
    )]
    InsecureEndpoint { field: &'static str, endpoint: String },
    #[error(
        "{field}.credentialsSecret is not set and {account} has no {ROLE_ARN_ANNOTATION} annotation: Berth does not lend the operator's own cloud identity to a namespace's backups. Either annotate the account with the IAM role its backups may use (kubectl annotate serviceaccount -n {} {} {ROLE_ARN_ANNOTATION}=arn:aws:iam::ACCOUNT_ID:role/NAME; its Role must allow create on serviceaccounts/token for itself), or create a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in this namespace and name it in {field}.credentialsSecret (a cluster admin may instead allow the operator's identity with --allow-operator-storage-identity)",
        account.namespace, account.name
    )]
    CredentialsRequired { field: &'static str, account: Account },
    #[error("{field}: {source}")]
    WebIdentity { field: &'static str, source: WebIdentityError },
    #[error("cannot reach the backup storage at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Repository(#[from] BackupError),
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl RepositoryError {
    /// `Reason` of the condition that reports this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Secret { .. } => "SecretMissing",
            Self::SecretForbidden { .. } => "Forbidden",
            Self::InsecureEndpoint { .. } => "InsecureEndpoint",
            Self::CredentialsRequired { .. } => "CredentialsRequired",
            Self::WebIdentity { source, .. } => source.reason(),
            Self::Unreachable { .. } => "StorageUnreachable",
            Self::Repository(BackupError::WrongKey { .. }) => "WrongKey",
            Self::Repository(BackupError::Unauthenticated { .. } | BackupError::KdfRefused { .. }) => {
                "RepositoryUnauthenticated"
            }
            Self::Repository(BackupError::MigrationNeeded { .. }) => "RepositoryMigrationNeeded",
            Self::Repository(_) => "RepositoryError",
            Self::Kube(_) => "KubernetesError",
        }
    }
}

async fn secret_value(
    secrets: &Api<Secret>,
    field: &'static str,
    name: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, RepositoryError> {
    // Read as the tenant's account: its Role, not the operator's, decides.
    let found = match secrets.get_opt(name).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(RepositoryError::SecretForbidden { field, name: name.to_string(), message: s.message });
        }
        found => found?,
    };
    let Some(secret) = found else {
        return Err(RepositoryError::Secret {
            field,
            message: format!("Secret {name:?} does not exist in this namespace; create it or fix the name"),
        });
    };
    Ok(secret.data.and_then(|mut d| d.remove(key)).map(|b| b.0))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// The S3 settings of `location` without its credentials: where it is and how every object
/// is written there (server-side encryption included).
pub fn s3_settings(location: &StorageLocation, field: &'static str) -> Result<S3Config, RepositoryError> {
    if let Some(endpoint) = location.endpoint.as_deref().filter(|e| is_plain_http(e))
        && !location.insecure_http
    {
        return Err(RepositoryError::InsecureEndpoint { field, endpoint: endpoint.to_string() });
    }
    Ok(S3Config {
        bucket: location.bucket.clone(),
        prefix: location.prefix.clone().unwrap_or_default().trim_matches('/').to_string(),
        endpoint: location.endpoint.clone(),
        insecure_http: location.insecure_http,
        region: location.region.clone(),
        path_style: location.force_path_style,
        sse: match &location.server_side_encryption {
            Some(sse) => Some(ServerSideEncryption::parse(
                sse.type_.as_str(),
                sse.kms_key_id.as_deref(),
                &format!("{field}.serverSideEncryption"),
            )?),
            None => None,
        },
        ..S3Config::default()
    })
}

/// The storage settings of `location`, with credentials read from its Secrets as `tenant`, or
/// else from the IAM role of `tenant`'s account (IRSA).
pub async fn storage_config(
    tenant: &TenantClient,
    namespace: &str,
    location: &StorageLocation,
    field: &'static str,
) -> Result<StorageConfig, RepositoryError> {
    let mut config = s3_settings(location, field)?;
    if location.credentials_secret.is_none() {
        let keys = web_identity::credentials(tenant, location.region.as_deref())
            .await
            .map_err(|source| RepositoryError::WebIdentity { field, source })?;
        match keys {
            Some(keys) => {
                config.access_key_id = Some(keys.access_key_id);
                config.secret_access_key = Some(keys.secret_access_key);
                config.session_token = Some(keys.session_token);
            }
            None if OPERATOR_IDENTITY_ALLOWED.load(std::sync::atomic::Ordering::Relaxed) => {}
            None => return Err(RepositoryError::CredentialsRequired { field, account: tenant.account.clone() }),
        }
    }
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), namespace);
    if let Some(name) = &location.credentials_secret {
        let get = |key| secret_value(&secrets, field, name, key);
        config.access_key_id = get("AWS_ACCESS_KEY_ID").await?.map(text);
        config.secret_access_key = get("AWS_SECRET_ACCESS_KEY").await?.map(text);
        config.session_token = get("AWS_SESSION_TOKEN").await?.map(text);
        if config.access_key_id.is_none() || config.secret_access_key.is_none() {
            return Err(RepositoryError::Secret {
                field,
                message: format!("Secret {name:?} needs the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            });
        }
    }
    if let Some(name) = &location.ca_secret {
        let Some(pem) = secret_value(&secrets, field, name, "ca.crt").await? else {
            return Err(RepositoryError::Secret { field, message: format!("Secret {name:?} has no key ca.crt") });
        };
        let path = std::env::temp_dir().join(format!("berth-ca-{namespace}-{name}.pem"));
        std::fs::write(&path, pem).map_err(|e| BackupError::Io { context: path.display().to_string(), source: e })?;
        config.ca_file = Some(path);
    }
    Ok(StorageConfig::S3(config))
}

/// The repository encryption key of `location`.
pub async fn repository_key(
    client: &kube::Client,
    namespace: &str,
    location: &StorageLocation,
    field: &'static str,
) -> Result<Vec<u8>, RepositoryError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = &location.encryption_key_secret;
    // Trailing newlines are dropped, as the agent does (`kubectl create secret --from-file`
    // of an echoed key): both must derive the same key.
    let key = secret_value(&secrets, field, name, "key").await?.map(|mut k| {
        while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            k.pop();
        }
        k
    });
    match key {
        Some(key) if !key.is_empty() => Ok(key),
        _ => Err(RepositoryError::Secret { field, message: format!("Secret {name:?} has no (or an empty) key `key`") }),
    }
}

/// Opens the repository at `location`, creating it when the location has none. `field` names
/// the spec field of the location in error messages (`spec.storage` or `spec.offsite`).
pub async fn open(
    tenant: &TenantClient,
    namespace: &str,
    location: &StorageLocation,
    field: &'static str,
) -> Result<Repository, RepositoryError> {
    let config = storage_config(tenant, namespace, location, field).await?;
    let key = repository_key(tenant, namespace, location, field).await?;
    let url = config.url();
    let unreachable = |message: String| RepositoryError::Unreachable { url: url.clone(), message };
    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
        let storage = Storage::connect(&config).await?;
        match storage.head("config").await? {
            Some(_) => Repository::open(storage, &key).await,
            None => {
                // Two controllers may find the location empty at once (a policy's bucket sync
                // and its first Backup): object storage has no create-if-absent here, so the
                // operator creates repositories one at a time and looks again under the lock.
                // Only the leader runs controllers, and agents never create repositories.
                let _guard = INIT_LOCK.lock().await;
                if storage.head("config").await?.is_some() {
                    return Repository::open(storage, &key).await;
                }
                storage.ensure_bucket().await?;
                Repository::init(storage.clone(), &key).await
            }
        }
    })
    .await;
    match opened {
        Err(_) => Err(unreachable(format!("no answer within {}s", OPEN_TIMEOUT.as_secs()))),
        Ok(Err(e @ (BackupError::Storage { .. } | BackupError::NoSuchBucket { .. }))) => {
            Err(unreachable(e.to_string()))
        }
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(repo)) => Ok(repo),
    }
}

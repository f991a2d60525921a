//! IRSA for the repository work the operator does itself (init, manifests, locks, retention,
//! replication, restore reads): when the tenant's ServiceAccount carries the
//! `eks.amazonaws.com/role-arn` annotation, the operator requests a short-lived token for that
//! account *as that account* (TokenRequest through the impersonating client, so the tenant's
//! Role must allow it) and exchanges it at STS (`AssumeRoleWithWebIdentity`) for temporary keys
//! of that role. The agent Jobs get the same identity from the pod identity webhook; the
//! operator never lends its own.
//!
//! The STS endpoint follows the AWS SDK's settings of the operator (`AWS_ENDPOINT_URL_STS` for a
//! regional or private endpoint). Keys are kept per account and role until shortly before they
//! expire; the token is used once and never stored or shown.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_sts::error::ProvideErrorMetadata;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use crate::runtime::impersonate::{Account, TenantClient};

/// The annotation of IAM roles for service accounts (EKS).
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The audience STS expects of a web identity token (as EKS's pod identity webhook requests it).
pub const AUDIENCE: &str = "sts.amazonaws.com";
/// Lifetime asked of the token: the shortest the API server grants. It is used once, at once.
const TOKEN_SECONDS: i64 = 600;
/// Keys are renewed this long before they expire, so that no request starts with keys that
/// run out during it.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Longest the token request and the STS call may each take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Temporary keys of an assumed role.
#[derive(Clone, PartialEq, Eq)]
pub struct Temporary {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for Temporary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Temporary").field("access_key_id", &self.access_key_id).field("expires", &self.expires).finish()
    }
}

/// Why no temporary keys could be had for an account's role.
#[derive(Debug, thiserror::Error)]
pub enum WebIdentityError {
    #[error(
        "{account} has annotation {ROLE_ARN_ANNOTATION}={value:?}, which is not an IAM role ARN; set it to arn:aws:iam::ACCOUNT_ID:role/NAME"
    )]
    InvalidRole { account: Account, value: String },
    #[error(
        "{account} has the IAM role annotation {ROLE_ARN_ANNOTATION}, but may not request a token for itself ({message}); add to its Role the rule {{apiGroups: [\"\"], resources: [serviceaccounts/token], verbs: [create], resourceNames: [{}]}} (deploy/tenant/berth-backup.yaml)",
        account.name
    )]
    TokenForbidden { account: Account, message: String },
    #[error(
        "STS refused AssumeRoleWithWebIdentity of role {role} for {account}: {message}; the role's trust policy must allow this cluster's OIDC provider with sub {} and aud {AUDIENCE}",
        account.username()
    )]
    Refused { account: Account, role: String, message: String },
    #[error("cannot reach STS to assume role {role} for {account}: {message}")]
    Unreachable { account: Account, role: String, message: String },
    #[error("no answer to the token request for {account} within {} s", REQUEST_TIMEOUT.as_secs())]
    TokenTimeout { account: Account },
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl WebIdentityError {
    /// `Reason` of the condition that reports this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidRole { .. } => "InvalidRoleAnnotation",
            Self::TokenForbidden { .. } => "Forbidden",
            Self::Refused { .. } => "WebIdentityRefused",
            Self::Unreachable { .. } => "StsUnreachable",
            Self::TokenTimeout { .. } | Self::Kube(_) => "KubernetesError",
        }
    }
}

/// The IAM role of `account` from its annotations: `None` without the annotation.
pub fn role_of(
    account: &Account,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<String>, WebIdentityError> {
    let Some(value) = annotations.and_then(|a| a.get(ROLE_ARN_ANNOTATION)) else { return Ok(None) };
    let role = value.trim();
    // arn:PARTITION:iam::ACCOUNT_ID:role/PATH/NAME
    let parts: Vec<&str> = role.splitn(6, ':').collect();
    let valid = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "iam"
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|n| !n.is_empty());
    if !valid {
        return Err(WebIdentityError::InvalidRole { account: account.clone(), value: value.clone() });
    }
    Ok(Some(role.to_string()))
}

/// The role session name, which CloudTrail shows: `berth-NAMESPACE-NAME`, within STS's 64
/// characters of `[\w+=,.@-]`.
pub fn session_name(account: &Account) -> String {
    let name: String = format!("berth-{}-{}", account.namespace, account.name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' })
        .collect();
    name.chars().take(64).collect()
}

/// Whether keys are still good for work that starts at `now`.
pub fn fresh(keys: &Temporary, now: SystemTime) -> bool {
    keys.expires > now + RENEW_BEFORE
}

type Cache = HashMap<(Account, String), Temporary>;
static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

/// Temporary keys of the IAM role of `tenant`'s account, or `None` when the account has no
/// role annotation. `region` picks the regional STS endpoint (the storage location's region).
pub async fn credentials(tenant: &TenantClient, region: Option<&str>) -> Result<Option<Temporary>, WebIdentityError> {
    let account = &tenant.account;
    // The operator reads the annotation with its own right (get on ServiceAccounts); the
    // account itself needs none.
    let accounts: Api<ServiceAccount> = Api::namespaced(tenant.operator.clone(), &account.namespace);
    let found = accounts.get_metadata_opt(&account.name).await?;
    let Some(role) = role_of(account, found.as_ref().and_then(|sa| sa.metadata.annotations.as_ref()))? else {
        return Ok(None);
    };
    let key = (account.clone(), role.clone());
    if let Some(keys) = CACHE.lock().expect("web identity cache poisoned").get(&key)
        && fresh(keys, SystemTime::now())
    {
        return Ok(Some(keys.clone()));
    }
    let token = token(tenant).await?;
    let keys = assume_role(account, &role, &token, region).await?;
    CACHE.lock().expect("web identity cache poisoned").insert(key, keys.clone());
    Ok(Some(keys))
}

/// A token of the account for STS, requested as the account.
async fn token(tenant: &TenantClient) -> Result<String, WebIdentityError> {
    let account = &tenant.account;
    let accounts: Api<ServiceAccount> = Api::namespaced(tenant.client.clone(), &account.namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.into()],
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        accounts.create_token_request(&account.name, &PostParams::default(), &request),
    )
    .await
    .map_err(|_| WebIdentityError::TokenTimeout { account: account.clone() })?;
    match answer {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            Err(WebIdentityError::TokenForbidden { account: account.clone(), message: s.message })
        }
        Err(e) => Err(e.into()),
        Ok(answer) => Ok(answer.status.map(|s| s.token).unwrap_or_default()),
    }
}

/// Exchanges `token` for temporary keys of `role` at STS, unsigned (the operator's own
/// credentials take no part).
async fn assume_role(
    account: &Account,
    role: &str,
    token: &str,
    region: Option<&str>,
) -> Result<Temporary, WebIdentityError> {
    let region = region
        .map(str::to_string)
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .no_credentials()
        .region(aws_config::Region::new(region))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(REQUEST_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&config);
    let answer = sts
        .assume_role_with_web_identity()
        .role_arn(role)
        .role_session_name(session_name(account))
        .web_identity_token(token)
        .send()
        .await;
    let output = match answer {
        Ok(output) => output,
        // The service's own words: code and message (never the request, which holds the token).
        Err(aws_sdk_sts::error::SdkError::ServiceError(e)) => {
            let e = e.into_err();
            let message = format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or("no message"));
            return Err(WebIdentityError::Refused { account: account.clone(), role: role.into(), message });
        }
        Err(e) => {
            let message = error_chain(&e);
            return Err(WebIdentityError::Unreachable { account: account.clone(), role: role.into(), message });
        }
    };
    let Some(keys) = output.credentials else {
        return Err(WebIdentityError::Refused {
            account: account.clone(),
            role: role.into(),
            message: "the answer holds no credentials".into(),
        });
    };
    Ok(Temporary {
        expires: SystemTime::try_from(keys.expiration).unwrap_or_else(|_| SystemTime::now() + RENEW_BEFORE),
        access_key_id: keys.access_key_id,
        secret_access_key: keys.secret_access_key,
        session_token: keys.session_token,
    })
}

/// The error and its sources joined by ": " (Display only: the SDK's Debug form dumps
/// requests).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Account {
        Account { namespace: "shop".into(), name: "berth-backup".into() }
    }

    fn annotated(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(ROLE_ARN_ANNOTATION.to_string(), value.to_string())])
    }

    #[test]
    fn the_role_comes_from_the_annotation_only() {
        assert_eq!(role_of(&shop(), None).unwrap(), None);
        assert_eq!(role_of(&shop(), Some(&BTreeMap::new())).unwrap(), None);
        let role = "arn:aws:iam::111122223333:role/teams/shop-backups";
        assert_eq!(role_of(&shop(), Some(&annotated(&format!(" {role}\n")))).unwrap().as_deref(), Some(role));
        let china = "arn:aws-cn:iam::111122223333:role/shop";
        assert_eq!(role_of(&shop(), Some(&annotated(china))).unwrap().as_deref(), Some(china));
    }

    #[test]
    fn a_value_that_is_no_role_arn_is_refused_with_the_fix() {
        for bad in
            ["shop-backups", "arn:aws:iam::1111:role/x", "arn:aws:s3:::bucket", "arn:aws:iam::111122223333:user/x"]
        {
            let e = role_of(&shop(), Some(&annotated(bad))).unwrap_err();
            let m = e.to_string();
            assert!(m.starts_with("ServiceAccount shop/berth-backup has annotation eks.amazonaws.com/role-arn"), "{m}");
            assert!(m.contains("arn:aws:iam::ACCOUNT_ID:role/NAME"), "{m}");
            assert_eq!(e.reason(), "InvalidRoleAnnotation");
        }
    }

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(session_name(&shop()), "berth-shop-berth-backup");
        let long = Account { namespace: "n".repeat(63), name: "a".repeat(63) };
        let name = session_name(&long);
        assert_eq!(name.len(), 64);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)));
    }

    #[test]
    fn keys_are_renewed_before_they_expire() {
        let now = SystemTime::now();
        let keys = |left: u64| Temporary {
            access_key_id: "AKIA".into(),
            secret_access_key: "secret".into(),
            session_token: "token".into(),
            expires: now + Duration::from_secs(left),
        };
        assert!(fresh(&keys(3600), now));
        assert!(!fresh(&keys(60), now));
        let shown = format!("{:?}", keys(1));
        assert!(!shown.contains("secret") && !shown.contains("token"), "Debug shows no secret: {shown}");
    }

    #[test]
    fn refusals_name_the_missing_rule_or_the_trust_policy() {
        let e = WebIdentityError::TokenForbidden { account: shop(), message: "forbidden".into() };
        let m = e.to_string();
        assert!(
            m.contains("resources: [serviceaccounts/token], verbs: [create], resourceNames: [berth-backup]"),
            "{m}"
        );
        assert_eq!(e.reason(), "Forbidden");
        let e = WebIdentityError::Refused {
            account: shop(),
            role: "arn:aws:iam::111122223333:role/shop".into(),
            message: "AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity".into(),
        };
        let m = e.to_string();
        assert!(m.contains("AccessDenied: Not authorized"), "{m}");
        assert!(m.contains("sub system:serviceaccount:shop:berth-backup and aud sts.amazonaws.com"), "{m}");
    }
}

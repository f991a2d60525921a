//! Tenancy by impersonation (Flux's model): BackupPolicies, Backups and Restores read and
//! write cluster objects as a ServiceAccount of their own namespace, so that the namespace's
//! RBAC, not the operator's, bounds what they reach.
//!
//! A client here sends `Impersonate-User: system:serviceaccount:NS:NAME` and no
//! `Impersonate-Group`: for a ServiceAccount user the API server adds the account's groups
//! itself (`system:serviceaccounts`, `system:serviceaccounts:NS`, `system:authenticated`), so
//! the operator needs `impersonate` on `serviceaccounts` only, never on `groups` or `users`.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::{Client, Config};

use crate::api::validation::FieldError;
use crate::resources::restore::Access;

/// The account a tenant's objects act as when their spec names none (`--default-service-account`).
pub const DEFAULT_ACCOUNT: &str = "berth-backup";

/// Reason of the condition of an object whose ServiceAccount does not exist.
pub const ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
/// Reason of the condition of an object that names an account the admin does not allow.
pub const ACCOUNT_NOT_ALLOWED: &str = "ServiceAccountNotAllowed";

/// A ServiceAccount of one namespace that Berth acts as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Account {
    pub namespace: String,
    pub name: String,
}

impl Account {
    /// The user name the API server knows the account by.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccount {}/{}", self.namespace, self.name)
    }
}

/// How accounts are chosen: the default, and whether specs may name another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountPolicy {
    pub default_account: String,
    /// `--enforce-default-service-account`: every object acts as the default account; a spec
    /// naming another is refused (not silently ignored, so that its author learns why).
    pub enforce: bool,
}

impl Default for AccountPolicy {
    fn default() -> Self {
        Self { default_account: DEFAULT_ACCOUNT.into(), enforce: false }
    }
}

impl AccountPolicy {
    /// The account an object of `namespace` acts as: the first of `requested` that is set
    /// (e.g. a Backup's own `serviceAccountName`, then its policy's), else the default. `field`
    /// names the spec field in the error.
    pub fn account(&self, namespace: &str, requested: &[Option<&str>], field: &str) -> Result<Account, FieldError> {
        let named = requested.iter().flatten().next().copied();
        let name = match named {
            Some(name) if self.enforce && name != self.default_account => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{name:?} is not allowed: the cluster admin enforces the ServiceAccount {:?} for every Berth object (--enforce-default-service-account); remove {field} or set it to {:?}",
                        self.default_account, self.default_account
                    ),
                ));
            }
            Some(name) => name,
            None => self.default_account.as_str(),
        };
        Ok(Account { namespace: namespace.into(), name: name.into() })
    }
}

/// The message of an object whose account does not exist, with the fix.
pub fn account_not_found_message(account: &Account) -> String {
    format!(
        "{account} does not exist: Berth reads and writes this namespace's objects as that account and never creates it. \
         The namespace's admin creates it and binds it to a Role (see deploy/tenant/ and the README, \"Tenancy\"): \
         kubectl create serviceaccount -n {} {}",
        account.namespace, account.name
    )
}

/// A client that acts as a tenant's account, with the account and the operator's own client
/// (storage credentials by web identity are asked for that account, after the operator reads
/// its role annotation). Derefs to the tenant's client.
#[derive(Clone)]
pub struct TenantClient {
    pub client: Client,
    pub account: Account,
    pub operator: Client,
}

impl std::ops::Deref for TenantClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Clients that impersonate tenants' accounts, made from the operator's own configuration and
/// kept per account (each holds a connection pool; accounts are few: one or two a namespace).
pub struct Tenants {
    base: Config,
    pub policy: AccountPolicy,
    clients: Mutex<HashMap<Account, Client>>,
}

impl Tenants {
    pub fn new(base: Config, policy: AccountPolicy) -> Self {
        Self { base, policy, clients: Mutex::default() }
    }

    /// A client that acts as `account`.
    pub fn client(&self, account: &Account) -> Result<Client, kube::Error> {
        let mut clients = self.clients.lock().expect("tenant clients poisoned");
        if let Some(client) = clients.get(account) {
            return Ok(client.clone());
        }
        let mut config = self.base.clone();
        config.auth_info.impersonate = Some(account.username());
        config.auth_info.impersonate_groups = None;
        let client = Client::try_from(config)?;
        clients.insert(account.clone(), client.clone());
        Ok(client)
    }
}

/// Whether `account` exists (read with the operator's own client: the account itself may not
/// be allowed to read ServiceAccounts).
pub async fn account_exists(operator: &Client, account: &Account) -> Result<bool, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(operator.clone(), &account.namespace);
    Ok(api.get_metadata_opt(&account.name).await?.is_some())
}

/// Asks the API server whether the client's user (an impersonated account) may do `access`: a
/// SelfSubjectAccessReview, which every authenticated user may create, so the operator needs
/// no right to review others.
pub async fn allowed(client: &Client, access: &Access) -> Result<bool, kube::Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.to_string()),
                group: Some(access.group.clone()),
                resource: Some(access.resource.clone()),
                namespace: (!access.namespace.is_empty()).then(|| access.namespace.clone()),
                name: access.name.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed && !s.denied.unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_named_account_wins_else_the_default() {
        let policy = AccountPolicy::default();
        let a = policy.account("shop", &[None, Some("backups")], "spec.serviceAccountName").unwrap();
        assert_eq!(a, Account { namespace: "shop".into(), name: "backups".into() });
        assert_eq!(a.username(), "system:serviceaccount:shop:backups");
        let a = policy.account("shop", &[Some("mine"), Some("policys")], "spec.serviceAccountName").unwrap();
        assert_eq!(a.name, "mine");
        let a = policy.account("shop", &[None, None], "spec.serviceAccountName").unwrap();
        assert_eq!(a.name, DEFAULT_ACCOUNT);
    }

    #[test]
    fn an_enforced_default_refuses_other_names_and_says_how_to_fix() {
        let policy = AccountPolicy { default_account: "tenant".into(), enforce: true };
        assert_eq!(policy.account("shop", &[None], "spec.serviceAccountName").unwrap().name, "tenant");
        assert_eq!(policy.account("shop", &[Some("tenant")], "spec.serviceAccountName").unwrap().name, "tenant");
        let e = policy.account("shop", &[Some("admin")], "spec.serviceAccountName").unwrap_err();
        assert_eq!(e.field, "spec.serviceAccountName");
        assert!(e.message.contains("\"admin\" is not allowed"), "{}", e.message);
        assert!(e.message.contains("--enforce-default-service-account"), "{}", e.message);
    }

    #[test]
    fn a_missing_account_message_names_it_and_the_fix() {
        let m = account_not_found_message(&Account { namespace: "shop".into(), name: "berth-backup".into() });
        assert!(m.starts_with("ServiceAccount shop/berth-backup does not exist"), "{m}");
        assert!(m.contains("kubectl create serviceaccount -n shop berth-backup"), "{m}");
    }
}

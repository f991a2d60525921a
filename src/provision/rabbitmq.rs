//! RabbitMQ vhosts, users and permissions over the management HTTP API.
//!
//! Drift is detected from what the API returns: missing vhosts/users, tags, the per-vhost
//! permissions of each declared user (undeclared ones are removed: the spec is authoritative
//! for the users it declares), and the password, checked locally against the user's
//! `password_hash` (RabbitMQ's salted SHA-256/512 or MD5). Vhosts are never deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{ProvisionError, ProvisionReport, Target, percent_encode};
use crate::api::databaseinstance::{DeletionPolicy, RabbitUser};

/// Tag that records `reclaimPolicy: Delete` on a user, so that the user is deleted once it
/// leaves the spec. RabbitMQ ignores tags it does not know.
pub const RECLAIM_TAG: &str = "berth-reclaim-delete";

/// A management API client for one RabbitMQ instance.
pub struct Management {
    http: reqwest::Client,
    base: String,
    target: Target,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct User {
    name: String,
    #[serde(default)]
    password_hash: String,
    #[serde(default)]
    hashing_algorithm: String,
    tags: Tags,
}

/// `tags` is a comma-separated string before RabbitMQ 3.9 and a list after.
#[derive(Deserialize)]
#[serde(untagged)]
enum Tags {
    List(Vec<String>),
    Text(String),
}

impl Tags {
    fn set(&self) -> BTreeSet<String> {
        match self {
            Tags::List(l) => l.iter().filter(|t| !t.is_empty()).cloned().collect(),
            Tags::Text(t) => t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
        }
    }
}

#[derive(Deserialize, PartialEq, Eq, Debug, Clone)]
struct Permission {
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

impl Management {
    /// A client for the management API at `http://host:port` with the administrative user.
    pub fn new(target: &Target) -> Result<Self, ProvisionError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProvisionError::Connect { target: target.host.clone(), message: e.to_string() })?;
        Ok(Self { http, base: format!("http://{}:{}/api", target.host, target.port), target: target.clone() })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        action: &str,
    ) -> Result<Option<String>, ProvisionError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.target.user, Some(&self.target.password));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| ProvisionError::Connect {
            target: format!("{}:{}", self.target.host, self.target.port),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ProvisionError::Connect {
                target: format!("{}:{}", self.target.host, self.target.port),
                message: format!("the management API refused user {:?} ({status})", self.target.user),
            });
        }
        if !status.is_success() {
            return Err(ProvisionError::Request { action: action.into(), message: format!("{status}: {text}") });
        }
        Ok(Some(text))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, action: &str) -> Result<Option<T>, ProvisionError> {
        match self.call(Method::GET, path, None, action).await? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| ProvisionError::Request {
                action: action.into(),
                message: format!("unexpected answer: {e}"),
            }),
        }
    }

    async fn put_user(&self, name: &str, password: &str, tags: &BTreeSet<String>) -> Result<(), ProvisionError> {
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let body = json!({ "password": password, "tags": tags.join(",") });
        self.call(Method::PUT, &format!("/users/{}", percent_encode(name)), Some(body), &format!("writing user/{name}"))
            .await
            .map(drop)
    }
}

/// The server's definitions document (`GET /api/definitions`), as a restore drill compares it.
pub async fn definitions(target: &Target) -> Result<serde_json::Value, ProvisionError> {
    let api = Management::new(target)?;
    api.get("/definitions", "reading the definitions").await?.ok_or_else(|| ProvisionError::Request {
        action: "reading the definitions".into(),
        message: "the management API has no /api/definitions".into(),
    })
}

/// Whether RabbitMQ's `password_hash` (base64 of a 4-byte salt and the digest of salt ‖
/// password) accepts `password`.
pub fn password_matches(password_hash: &str, algorithm: &str, password: &str) -> bool {
    use aws_lc_rs::digest;
    use base64::Engine;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(password_hash) else { return false };
    if raw.len() < 5 {
        return false;
    }
    let (salt, hash) = raw.split_at(4);
    let alg = match algorithm {
        "rabbit_password_hashing_sha512" => &digest::SHA512,
        "rabbit_password_hashing_md5" => return false, // legacy; reset the password instead
        _ => &digest::SHA256,
    };
    let mut ctx = digest::Context::new(alg);
    ctx.update(salt);
    ctx.update(password.as_bytes());
    ctx.finish().as_ref() == hash
}

fn declared_permissions(user: &RabbitUser) -> BTreeMap<String, Permission> {
    user.permissions
        .iter()
        .map(|p| {
            let regex = |r: &Option<String>| r.clone().unwrap_or_else(|| ".*".into());
            (
                p.vhost.clone(),
                Permission {
                    vhost: p.vhost.clone(),
                    configure: regex(&p.configure),
                    write: regex(&p.write),
                    read: regex(&p.read),
                },
            )
        })
        .collect()
}

/// Makes the server match `vhosts` and `users`; `passwords` holds every declared user's
/// password (from its Secret). Idempotent; vhosts are never deleted, users only when they
/// carry [`RECLAIM_TAG`] and left the spec.
pub async fn ensure(
    target: &Target,
    vhosts: &[String],
    users: &[RabbitUser],
    passwords: &BTreeMap<String, String>,
) -> Result<ProvisionReport, ProvisionError> {
    let api = Management::new(target)?;
    let mut report = ProvisionReport::default();

    let existing: BTreeSet<String> = api
        .get::<Vec<Named>>("/vhosts", "listing vhosts")
        .await?
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect();
    for vhost in vhosts {
        if !existing.contains(vhost) {
            let path = format!("/vhosts/{}", percent_encode(vhost));
            let body = json!({ "description": "Provisioned by Berth" });
            api.call(Method::PUT, &path, Some(body), &format!("creating vhost/{vhost}")).await?;
            report.created.push(format!("vhost/{vhost}"));
        }
    }

    for user in users {
        let item = format!("user/{}", user.name);
        let password = passwords.get(&user.name).map(String::as_str).unwrap_or_default();
        let mut tags: BTreeSet<String> = user.tags.iter().cloned().collect();
        if user.reclaim_policy == Some(DeletionPolicy::Delete) {
            tags.insert(RECLAIM_TAG.into());
        }
        let path = format!("/users/{}", percent_encode(&user.name));
        let mut changed = false;
        match api.get::<User>(&path, &format!("reading {item}")).await? {
            None => {
                api.put_user(&user.name, password, &tags).await?;
                report.created.push(item.clone());
            }
            Some(current) => {
                if current.tags.set() != tags
                    || !password_matches(&current.password_hash, &current.hashing_algorithm, password)
                {
                    api.put_user(&user.name, password, &tags).await?;
                    changed = true;
                }
            }
        }
        let perm_path = format!("/users/{}/permissions", percent_encode(&user.name));
        let current: BTreeMap<String, Permission> = api
            .get::<Vec<Permission>>(&perm_path, &format!("reading the permissions of {item}"))
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.vhost.clone(), p))
            .collect();
        let declared = declared_permissions(user);
        for (vhost, want) in &declared {
            if current.get(vhost) != Some(want) {
                let path = format!("/permissions/{}/{}", percent_encode(vhost), percent_encode(&user.name));
                let body = json!({ "configure": want.configure, "write": want.write, "read": want.read });
                api.call(Method::PUT, &path, Some(body), &format!("granting {item} on vhost/{vhost}")).await?;
                changed = true;
            }
        }
        for vhost in current.keys().filter(|v| !declared.contains_key(*v)) {
            let path = format!("/permissions/{}/{}", percent_encode(vhost), percent_encode(&user.name));
            api.call(Method::DELETE, &path, None, &format!("revoking {item} on vhost/{vhost}")).await?;
            changed = true;
        }
        if changed && !report.created.contains(&item) {
            report.changed.push(item);
        }
    }

    // Reclaim users that left the spec and carry the reclaim tag.
    let declared: BTreeSet<&str> = users.iter().map(|u| u.name.as_str()).collect();
    let all = api.get::<Vec<User>>("/users", "listing users").await?.unwrap_or_default();
    for u in all {
        if u.tags.set().contains(RECLAIM_TAG) && !declared.contains(u.name.as_str()) && u.name != target.user {
            let path = format!("/users/{}", percent_encode(&u.name));
            api.call(Method::DELETE, &path, None, &format!("deleting user/{}", u.name)).await?;
            report.deleted.push(format!("user/{}", u.name));
        }
    }
    Ok(report)
}

/// Sets a new password for `user`, keeping its tags.
pub async fn rotate_password(target: &Target, user: &str, new_password: &str) -> Result<(), ProvisionError> {
    let api = Management::new(target)?;
    let path = format!("/users/{}", percent_encode(user));
    let current =
        api.get::<User>(&path, &format!("reading user/{user}")).await?.ok_or_else(|| ProvisionError::Request {
            action: format!("rotating the password of user/{user}"),
            message: "no such user".into(),
        })?;
    api.put_user(user, new_password, &current.tags.set()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_check() {
        use aws_lc_rs::digest;
        use base64::Engine;
        let salt = [1u8, 2, 3, 4];
        let mut raw = salt.to_vec();
        raw.extend_from_slice(digest::digest(&digest::SHA256, &[&salt[..], b"pw"].concat()).as_ref());
        let h = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(password_matches(&h, "rabbit_password_hashing_sha256", "pw"));
        assert!(!password_matches(&h, "rabbit_password_hashing_sha256", "other"));
    }
}

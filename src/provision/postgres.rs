//! PostgreSQL roles and databases over `tokio-postgres`.
//!
//! Utility statements (`CREATE ROLE`, `ALTER ROLE … PASSWORD`) take no bind parameters, so
//! every identifier goes through [`quote_ident`] and every literal through [`quote_literal`];
//! nothing from a spec is ever formatted into SQL unquoted. Passwords are sent as SCRAM-SHA-256
//! verifiers computed here, so the plain text never reaches the server's logs.
//!
//! Drift is detected by reading the catalogs: login/createdb flags, memberships, owners,
//! and whether the stored SCRAM verifier matches the password in the Secret. Memberships that
//! are no longer declared are left alone (they may have been granted by hand).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{ProvisionError, ProvisionReport, Target};
use crate::api::databaseinstance::{DeletionPolicy, PostgresDatabase, PostgresRole};

/// Prefix of the comment Berth puts on the roles and databases it provisions.
const COMMENT_PREFIX: &str = "berth: reclaimPolicy=";
const SCRAM_ITERATIONS: u32 = 4096;

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal safe under any `standard_conforming_strings`: `'…'` with quotes doubled,
/// and the `E'…'` form with backslashes doubled when there are any.
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') { format!("E'{}'", quoted.replace('\\', "\\\\")) } else { format!("'{quoted}'") }
}

fn request(action: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
    let action = action.into();
    move |e| ProvisionError::Request { action, message: error_text(&e) }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Connects to `dbname` as the target's user; the connection task ends with the client.
pub async fn connect(target: &Target, dbname: &str) -> Result<Client, ProvisionError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .password(&target.password)
        .dbname(dbname)
        .application_name("berth-operator")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| ProvisionError::Connect {
        target: format!("{}:{}", target.host, target.port),
        message: error_text(&e),
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed with an error");
        }
    });
    Ok(client)
}

/// A SCRAM-SHA-256 verifier of `password` with a fresh salt, in PostgreSQL's stored format.
pub fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system RNG is available");
    scram_with_salt(password, &salt, SCRAM_ITERATIONS)
}

fn scram_keys(password: &str, salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations.max(1)).expect("non-zero"),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let server_key = hmac::sign(&key, b"Server Key");
    let stored = digest::digest(&digest::SHA256, client_key.as_ref());
    let mut s = [0u8; 32];
    let mut k = [0u8; 32];
    s.copy_from_slice(stored.as_ref());
    k.copy_from_slice(server_key.as_ref());
    (s, k)
}

fn scram_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (stored, server) = scram_keys(password, salt, iterations);
    format!("SCRAM-SHA-256${iterations}:{}${}:{}", b64.encode(salt), b64.encode(stored), b64.encode(server))
}

/// Whether the stored `verifier` (pg_authid.rolpassword) accepts `password`.
pub fn verifier_matches(verifier: &str, password: &str) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let parse = || -> Option<bool> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let salt = b64.decode(salt).ok()?;
        let (s, k) = scram_keys(password, &salt, iterations.parse().ok()?);
        Some(b64.decode(stored).ok()? == s && b64.decode(server).ok()? == k)
    };
    parse().unwrap_or(false)
}

fn reclaim_comment(policy: Option<DeletionPolicy>) -> String {
    let p = match policy.unwrap_or_default() {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete => "Delete",
    };
    format!("{COMMENT_PREFIX}{p}")
}

struct ExistingRole {
    login: bool,
    createdb: bool,
    password: Option<String>,
    comment: Option<String>,
    member_of: BTreeSet<String>,
}

async fn existing_roles(client: &Client) -> Result<BTreeMap<String, ExistingRole>, ProvisionError> {
    let rows = client
        .query(
            "SELECT r.rolname, r.rolcanlogin, r.rolcreatedb, r.rolpassword, \
                    shobj_description(r.oid, 'pg_authid'), \
                    ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                          WHERE m.member = r.oid) \
             FROM pg_authid r",
            &[],
        )
        .await
        .map_err(request("reading pg_authid"))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                ExistingRole {
                    login: row.get(1),
                    createdb: row.get(2),
                    password: row.get(3),
                    comment: row.get(4),
                    member_of: row.get::<_, Vec<String>>(5).into_iter().collect(),
                },
            )
        })
        .collect())
}

struct ExistingDatabase {
    owner: String,
    comment: Option<String>,
}

async fn existing_databases(client: &Client) -> Result<BTreeMap<String, ExistingDatabase>, ProvisionError> {
    let rows = client
        .query(
            "SELECT d.datname, pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database') FROM pg_database d",
            &[],
        )
        .await
        .map_err(request("reading pg_database"))?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get::<_, String>(0), ExistingDatabase { owner: row.get(1), comment: row.get(2) }))
        .collect())
}

async fn exec(client: &Client, sql: &str, action: String) -> Result<(), ProvisionError> {
    client.batch_execute(sql).await.map_err(request(action))
}

/// Makes the server match `roles` and `databases`. `passwords` holds the password of every
/// login role (from its Secret). Idempotent; see the module docs for what is never dropped.
pub async fn ensure(
    target: &Target,
    roles: &[PostgresRole],
    databases: &[PostgresDatabase],
    passwords: &BTreeMap<String, String>,
) -> Result<ProvisionReport, ProvisionError> {
    let client = connect(target, "postgres").await?;
    let mut report = ProvisionReport::default();
    let existing = existing_roles(&client).await?;

    // Roles first (they own databases), without memberships: a role may join one declared
    // after it.
    for role in roles {
        let item = format!("role/{}", role.name);
        let ident = quote_ident(&role.name);
        let login = role.login.unwrap_or(true);
        let createdb = role.createdb.unwrap_or(false);
        let flags =
            format!("{} {}", if login { "LOGIN" } else { "NOLOGIN" }, if createdb { "CREATEDB" } else { "NOCREATEDB" });
        let password = passwords.get(&role.name).filter(|_| login);
        let comment = reclaim_comment(role.reclaim_policy);
        match existing.get(&role.name) {
            None => {
                let pw =
                    password.map(|p| format!(" PASSWORD {}", quote_literal(&scram_verifier(p)))).unwrap_or_default();
                exec(&client, &format!("CREATE ROLE {ident} WITH {flags}{pw}"), format!("creating {item}")).await?;
                exec(
                    &client,
                    &format!("COMMENT ON ROLE {ident} IS {}", quote_literal(&comment)),
                    format!("commenting {item}"),
                )
                .await?;
                report.created.push(item);
            }
            Some(current) => {
                let mut changed = false;
                if current.login != login || current.createdb != createdb {
                    exec(&client, &format!("ALTER ROLE {ident} WITH {flags}"), format!("altering {item}")).await?;
                    changed = true;
                }
                if let Some(p) = password
                    && !current.password.as_deref().is_some_and(|v| verifier_matches(v, p))
                {
                    let sql = format!("ALTER ROLE {ident} WITH PASSWORD {}", quote_literal(&scram_verifier(p)));
                    exec(&client, &sql, format!("setting the password of {item}")).await?;
                    changed = true;
                }
                if current.comment.as_deref() != Some(comment.as_str()) {
                    exec(
                        &client,
                        &format!("COMMENT ON ROLE {ident} IS {}", quote_literal(&comment)),
                        format!("commenting {item}"),
                    )
                    .await?;
                    changed = true;
                }
                if changed {
                    report.changed.push(item);
                }
            }
        }
    }
    // Memberships: grant what is declared and missing.
    for role in roles {
        let current = existing.get(&role.name).map(|r| &r.member_of);
        for parent in &role.in_roles {
            if current.is_some_and(|c| c.contains(parent)) {
                continue;
            }
            let sql = format!("GRANT {} TO {}", quote_ident(parent), quote_ident(&role.name));
            exec(&client, &sql, format!("granting {parent} to role/{}", role.name)).await?;
            let item = format!("role/{}", role.name);
            if !report.created.contains(&item) && !report.changed.contains(&item) {
                report.changed.push(item);
            }
        }
    }

    let existing_dbs = existing_databases(&client).await?;
    for database in databases {
        let item = format!("database/{}", database.name);
        let ident = quote_ident(&database.name);
        let owner = database.owner.clone().unwrap_or_else(|| target.user.clone());
        let comment = reclaim_comment(database.reclaim_policy);
        match existing_dbs.get(&database.name) {
            None => {
                let sql = format!("CREATE DATABASE {ident} OWNER {}", quote_ident(&owner));
                exec(&client, &sql, format!("creating {item}")).await?;
                exec(
                    &client,
                    &format!("COMMENT ON DATABASE {ident} IS {}", quote_literal(&comment)),
                    format!("commenting {item}"),
                )
                .await?;
                report.created.push(item);
            }
            Some(current) => {
                let mut changed = false;
                if current.owner != owner {
                    let sql = format!("ALTER DATABASE {ident} OWNER TO {}", quote_ident(&owner));
                    exec(&client, &sql, format!("changing the owner of {item}")).await?;
                    changed = true;
                }
                if current.comment.as_deref() != Some(comment.as_str()) {
                    exec(
                        &client,
                        &format!("COMMENT ON DATABASE {ident} IS {}", quote_literal(&comment)),
                        format!("commenting {item}"),
                    )
                    .await?;
                    changed = true;
                }
                if changed {
                    report.changed.push(item);
                }
            }
        }
    }

    // Reclaim what left the spec and was provisioned with reclaimPolicy: Delete.
    let delete = reclaim_comment(Some(DeletionPolicy::Delete));
    let declared_dbs: BTreeSet<&str> = databases.iter().map(|d| d.name.as_str()).collect();
    for (name, db) in &existing_dbs {
        if db.comment.as_deref() == Some(delete.as_str()) && !declared_dbs.contains(name.as_str()) {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
            exec(&client, &sql, format!("dropping database/{name}")).await?;
            report.deleted.push(format!("database/{name}"));
        }
    }
    let declared_roles: BTreeSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    for (name, role) in &existing {
        if role.comment.as_deref() == Some(delete.as_str()) && !declared_roles.contains(name.as_str()) {
            let ident = quote_ident(name);
            let sql = format!("DROP OWNED BY {ident}; DROP ROLE IF EXISTS {ident}");
            exec(&client, &sql, format!("dropping role/{name}")).await?;
            report.deleted.push(format!("role/{name}"));
        }
    }
    Ok(report)
}

/// Sets a new password for `role` (a declared role or the administrative user itself).
pub async fn rotate_password(target: &Target, role: &str, new_password: &str) -> Result<(), ProvisionError> {
    let client = connect(target, "postgres").await?;
    let sql =
        format!("ALTER ROLE {} WITH PASSWORD {}", quote_ident(role), quote_literal(&scram_verifier(new_password)));
    exec(&client, &sql, format!("rotating the password of role/{role}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn scram_round_trip() {
        let v = scram_verifier("secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(verifier_matches(&v, "secret"));
        assert!(!verifier_matches(&v, "other"));
        assert!(!verifier_matches("md5abc", "secret"));
    }
}

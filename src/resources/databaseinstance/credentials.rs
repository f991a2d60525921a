//! Credentials are observed facts for the builders: read from the existing Secrets, generated
//! once from the operating system's RNG when missing, and never regenerated except on rotation.

use std::collections::BTreeMap;

use super::validate::ValidDatabase;

/// Length of generated passwords (alphanumeric: about 238 bits of entropy, and no character
/// that needs escaping in a URI, a connection string or a config file).
pub const PASSWORD_LENGTH: usize = 40;

/// What `berth render` shows in place of a password: render never prints a real secret.
pub const PLACEHOLDER: &str = "<generated-at-apply>";

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh alphanumeric password of [`PASSWORD_LENGTH`] characters from the OS RNG
/// (`getrandom`), by rejection sampling so that every character is equally likely.
/// Not pure: call it in the controller, never in a builder.
pub fn generate_password() -> String {
    let mut out = String::with_capacity(PASSWORD_LENGTH);
    // 248 = 4 * 62: bytes at or above it would bias the first characters.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    while out.len() < PASSWORD_LENGTH {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).expect("the operating system RNG is available");
        for b in buf {
            if b < limit && out.len() < PASSWORD_LENGTH {
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// Every secret value the children of one instance need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Password of the instance's administrative user (`postgres` / `admin`).
    pub admin_password: String,
    /// RabbitMQ Erlang cookie shared by the nodes of a cluster (unused for PostgreSQL).
    pub erlang_cookie: String,
    /// Password per declared login role (PostgreSQL) or user (RabbitMQ), by name.
    pub user_passwords: BTreeMap<String, String>,
}

impl Credentials {
    /// Placeholders for every credential (`berth render`).
    pub fn placeholder(valid: &ValidDatabase) -> Self {
        Self {
            admin_password: PLACEHOLDER.into(),
            erlang_cookie: PLACEHOLDER.into(),
            user_passwords: valid.login_users().map(|u| (u.to_string(), PLACEHOLDER.to_string())).collect(),
        }
    }

    /// Keeps every credential in `existing` and generates only the missing ones. Returns the
    /// credentials and whether anything was generated.
    pub fn complete(valid: &ValidDatabase, existing: Option<Credentials>) -> (Self, bool) {
        let mut generated = false;
        let mut fresh = || {
            generated = true;
            generate_password()
        };
        let existing = existing.unwrap_or_else(|| Credentials {
            admin_password: String::new(),
            erlang_cookie: String::new(),
            user_passwords: BTreeMap::new(),
        });
        let admin_password = if existing.admin_password.is_empty() { fresh() } else { existing.admin_password.clone() };
        let erlang_cookie = if existing.erlang_cookie.is_empty() && valid.is_rabbitmq() {
            fresh()
        } else {
            existing.erlang_cookie.clone()
        };
        let user_passwords = valid
            .login_users()
            .map(|u| {
                let pw = existing.user_passwords.get(u).filter(|p| !p.is_empty()).cloned().unwrap_or_else(&mut fresh);
                (u.to_string(), pw)
            })
            .collect();
        (Self { admin_password, erlang_cookie, user_passwords }, generated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert!(a.len() >= 32 && a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }
}

//! Credentials are observed facts for the builders: read from the existing Secrets, generated
//! once from the operating system's RNG when missing, and never regenerated except on rotation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::validate::ValidDatabase;

/// Annotation on the DatabaseInstance that asks for new passwords: set it to a new value
/// (e.g. a date) and every password of the instance is rotated once.
pub const ROTATE_ANNOTATION: &str = "berth.dev/rotate-credentials";
/// Annotation on the Secrets: the `ROTATE_ANNOTATION` value their passwords were made for.
pub const REVISION_ANNOTATION: &str = "berth.dev/credentials-revision";
/// Key of the administrative password being replaced while a rotation is under way, so that
/// the operator can still log in if it stops between writing the Secret and the server.
pub const PREVIOUS_PASSWORD_KEY: &str = "previous-password";

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
    /// The rotation request these passwords answer (`None` before the first rotation).
    pub revision: Option<String>,
    /// The administrative password before an unfinished rotation.
    pub previous_admin_password: Option<String>,
}

impl Credentials {
    /// Placeholders for every credential (`berth render`).
    pub fn placeholder(valid: &ValidDatabase) -> Self {
        Self {
            admin_password: PLACEHOLDER.into(),
            erlang_cookie: PLACEHOLDER.into(),
            user_passwords: valid.login_users().map(|u| (u.to_string(), PLACEHOLDER.to_string())).collect(),
            revision: None,
            previous_admin_password: None,
        }
    }

    /// The credentials stored in the instance's Secrets (as read from the API): the main
    /// Secret, the Secret of each login user (looked up by name) and the RabbitMQ server
    /// Secret. `None` when the main Secret does not exist yet.
    pub fn from_secrets<'a>(
        valid: &ValidDatabase,
        main: Option<&Secret>,
        user_secret: impl Fn(&str) -> Option<&'a Secret>,
        server: Option<&Secret>,
    ) -> Option<Self> {
        let main = main?;
        let user_passwords = valid
            .login_users()
            .filter_map(|u| Some((u.to_string(), secret_value(user_secret(&valid.user_secret_name(u))?, "password")?)))
            .collect();
        Some(Self {
            admin_password: secret_value(main, "password").unwrap_or_default(),
            erlang_cookie: server.and_then(|s| secret_value(s, "erlang-cookie")).unwrap_or_default(),
            user_passwords,
            revision: main.metadata.annotations.as_ref().and_then(|a| a.get(REVISION_ANNOTATION).cloned()),
            previous_admin_password: secret_value(main, PREVIOUS_PASSWORD_KEY),
        })
    }

    /// New passwords for the administrative user and every login user, for rotation request
    /// `revision`; the old administrative password is kept until the server has the new one.
    /// The Erlang cookie is not a password clients know and is kept.
    pub fn rotated(&self, valid: &ValidDatabase, revision: &str) -> Self {
        Self {
            admin_password: generate_password(),
            erlang_cookie: self.erlang_cookie.clone(),
            user_passwords: valid.login_users().map(|u| (u.to_string(), generate_password())).collect(),
            revision: Some(revision.to_string()),
            previous_admin_password: Some(
                self.previous_admin_password.clone().unwrap_or_else(|| self.admin_password.clone()),
            ),
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
            revision: None,
            previous_admin_password: None,
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
        let (revision, previous_admin_password) = (existing.revision, existing.previous_admin_password);
        (Self { admin_password, erlang_cookie, user_passwords, revision, previous_admin_password }, generated)
    }
}

/// Follows an administrative password kept in an external store (`spec.credentials.
/// externalSecret`): a `synced` value other than the stored one becomes the password, with the
/// stored one kept as the previous password until the server has the new one, exactly like a
/// rotation. `None` when the synced Secret has no `password` yet.
pub fn follow_external(stored: Credentials, synced: &Secret) -> Option<Credentials> {
    let password = secret_value(synced, "password")?;
    if stored.admin_password == password {
        return Some(stored);
    }
    let previous = stored.previous_admin_password.clone().or_else(|| Some(stored.admin_password.clone()));
    Some(Credentials {
        admin_password: password,
        previous_admin_password: previous.filter(|p| !p.is_empty()),
        ..stored
    })
}

/// A value of a Secret, from `data` (as the API returns it) or `stringData`.
fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok());
    from_data.or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key).cloned())).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_password_is_followed_like_a_rotation() {
        let stored = Credentials {
            admin_password: "old".into(),
            erlang_cookie: String::new(),
            user_passwords: BTreeMap::new(),
            revision: None,
            previous_admin_password: None,
        };
        let synced = |pw: &str| Secret {
            string_data: Some(BTreeMap::from([("password".to_string(), pw.to_string())])),
            ..Secret::default()
        };
        let same = follow_external(stored.clone(), &synced("old")).unwrap();
        assert_eq!(same, stored);
        let new = follow_external(stored.clone(), &synced("new")).unwrap();
        assert_eq!((new.admin_password.as_str(), new.previous_admin_password.as_deref()), ("new", Some("old")));
        // Still unfinished when the store changes again: the server has the first password.
        let again = follow_external(new, &synced("newer")).unwrap();
        assert_eq!(again.previous_admin_password.as_deref(), Some("old"));
        // A first sync before Berth stored anything: no previous password.
        let fresh = Credentials { admin_password: String::new(), ..stored };
        assert_eq!(follow_external(fresh, &synced("first")).unwrap().previous_admin_password, None);
        assert_eq!(follow_external(stored_empty(), &Secret::default()), None);
    }

    fn stored_empty() -> Credentials {
        Credentials {
            admin_password: String::new(),
            erlang_cookie: String::new(),
            user_passwords: BTreeMap::new(),
            revision: None,
            previous_admin_password: None,
        }
    }

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert!(a.len() >= 32 && a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }
}

//! Turns a raw DatabaseInstance into a [`ValidDatabase`]: defaults resolved (image, replicas,
//! ports, deletion policy) and every rule the CRD schema cannot express checked. Builders only
//! ever see a `ValidDatabase`.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use crate::api::databaseinstance::{
    DatabaseInstance, DeletionPolicy, Engine, PostgresDatabase, PostgresRole, RabbitPermission, RabbitUser,
};
use crate::api::validation::FieldError;

/// Administrative user of a PostgreSQL instance (the image's superuser).
pub const POSTGRES_ADMIN: &str = "postgres";
/// Administrative user of a RabbitMQ instance (`default_user`).
pub const RABBITMQ_ADMIN: &str = "admin";
pub const POSTGRES_PORT: i32 = 5432;
pub const AMQP_PORT: i32 = 5672;
pub const MANAGEMENT_PORT: i32 = 15672;
/// Longest instance name: pods are named `<name>-<ordinal>` and StatefulSets label them with
/// `controller-revision-hash: <name>-<10 chars>`, which must stay within 63 characters.
pub const MAX_NAME_LENGTH: usize = 52;

/// postgresql.conf parameters the operator sets itself; a user value would break the pod.
const RESERVED_PARAMETERS: &[&str] =
    &["listen_addresses", "port", "data_directory", "hba_file", "ident_file", "config_file", "unix_socket_directories"];
/// rabbitmq.conf keys (or key prefixes) the operator sets itself.
const RESERVED_CONFIG: &[&str] =
    &["listeners.tcp", "management.tcp", "cluster_formation.", "default_user", "default_pass"];

/// A DatabaseInstance whose spec passed validation, with every default resolved.
#[derive(Clone, Debug)]
pub struct ValidDatabase {
    /// The resource itself (metadata for names, owner references and labels).
    pub db: DatabaseInstance,
    pub engine: Engine,
    /// The version as written, e.g. `16` or `16.4`, `3.13`, `4.1`.
    pub version: String,
    /// Major version (PostgreSQL `16`; RabbitMQ `3` or `4`).
    pub major: u32,
    pub image: String,
    pub replicas: i32,
    pub deletion_policy: DeletionPolicy,
    pub databases: Vec<PostgresDatabase>,
    pub roles: Vec<PostgresRole>,
    pub vhosts: Vec<String>,
    pub users: Vec<RabbitUser>,
}

impl ValidDatabase {
    pub fn name(&self) -> String {
        self.db.name_any()
    }
    pub fn namespace(&self) -> String {
        self.db.namespace().unwrap_or_else(|| "default".into())
    }
    pub fn is_rabbitmq(&self) -> bool {
        self.engine == Engine::Rabbitmq
    }
    /// A RabbitMQ cluster (more than one node): peer discovery, RBAC and a PDB.
    pub fn is_cluster(&self) -> bool {
        self.is_rabbitmq() && self.replicas > 1
    }
    /// Client port: 5432 or 5672.
    pub fn port(&self) -> i32 {
        if self.is_rabbitmq() { AMQP_PORT } else { POSTGRES_PORT }
    }
    pub fn admin_user(&self) -> &'static str {
        if self.is_rabbitmq() { RABBITMQ_ADMIN } else { POSTGRES_ADMIN }
    }
    /// Host name of the client Service (without the cluster domain, which may differ).
    pub fn host(&self) -> String {
        format!("{}.{}.svc", self.name(), self.namespace())
    }
    /// Name of the headless Service that gives every pod a stable DNS name.
    pub fn headless_name(&self) -> String {
        format!("{}-headless", self.name())
    }
    /// Name of the credentials Secret (administrative user).
    pub fn secret_name(&self) -> String {
        format!("{}-credentials", self.name())
    }
    /// Name of the Secret of one declared role/user.
    pub fn user_secret_name(&self, user: &str) -> String {
        format!("{}-user-{}", self.name(), secret_suffix(user))
    }
    /// Roles (PostgreSQL, `login` defaulting to true) or users (RabbitMQ) that get a password.
    pub fn login_users(&self) -> impl Iterator<Item = &str> {
        let roles = self.roles.iter().filter(|r| r.login.unwrap_or(true)).map(|r| r.name.as_str());
        let users = self.users.iter().map(|u| u.name.as_str());
        roles.chain(users)
    }
}

/// A role/user name as a DNS-1123 label fragment: lowercase, `_` and `.` as `-`.
fn secret_suffix(user: &str) -> String {
    user.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// The official image of `engine` at `version`.
pub fn default_image(engine: Engine, version: &str) -> String {
    match engine {
        Engine::Postgres => format!("postgres:{version}"),
        Engine::Rabbitmq => format!("rabbitmq:{version}-management"),
    }
}

/// Validates `db` and resolves its defaults; every problem found is returned, not only the
/// first, so that a user fixes them in one round.
pub fn validate(db: &DatabaseInstance) -> Result<ValidDatabase, Vec<FieldError>> {
    let spec = &db.spec;
    let mut errors = Vec::new();
    let name = db.name_any();
    if name.len() > MAX_NAME_LENGTH || !is_dns_label(&name) || name.starts_with(|c: char| c.is_ascii_digit()) {
        errors.push(FieldError::new(
            "metadata.name",
            format!("{name:?} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters (lowercase letters, digits and '-', starting with a letter) because it names the Services and the StatefulSet's pods"),
        ));
    }
    let major = parse_version(spec.engine, &spec.version).unwrap_or_else(|message| {
        errors.push(FieldError::new("spec.version", message));
        0
    });
    if let Some(image) = &spec.image
        && (image.trim().is_empty() || image.chars().any(char::is_whitespace))
    {
        errors.push(FieldError::new("spec.image", "must be an image reference without spaces, e.g. postgres:16.4"));
    }
    let replicas = spec.replicas.unwrap_or(1);

    match spec.engine {
        Engine::Postgres => {
            for (field, present) in [
                ("spec.config", !spec.config.is_empty()),
                ("spec.vhosts", !spec.vhosts.is_empty()),
                ("spec.users", !spec.users.is_empty()),
            ] {
                if present {
                    errors.push(FieldError::new(field, "is a RabbitMQ setting; a PostgreSQL instance uses spec.parameters, spec.databases and spec.roles"));
                }
            }
            check_parameters(&spec.parameters, &mut errors);
            check_postgres_objects(&spec.databases, &spec.roles, &mut errors);
        }
        Engine::Rabbitmq => {
            for (field, present) in [
                ("spec.parameters", !spec.parameters.is_empty()),
                ("spec.databases", !spec.databases.is_empty()),
                ("spec.roles", !spec.roles.is_empty()),
            ] {
                if present {
                    errors.push(FieldError::new(
                        field,
                        "is a PostgreSQL setting; a RabbitMQ instance uses spec.config, spec.vhosts and spec.users",
                    ));
                }
            }
            check_config(&spec.config, &mut errors);
            check_rabbit_objects(&spec.vhosts, &spec.users, &mut errors);
            if spec.metrics.as_ref().is_some_and(|m| m.exporter_image.is_some()) {
                errors.push(FieldError::new(
                    "spec.metrics.exporterImage",
                    "RabbitMQ serves metrics itself (rabbitmq_prometheus) and runs no exporter; remove the field",
                ));
            }
        }
    }

    // Secret names of declared users must be distinct after lower-casing.
    let mut suffixes = BTreeMap::new();
    let login_names = spec
        .roles
        .iter()
        .enumerate()
        .filter(|(_, r)| r.login.unwrap_or(true))
        .map(|(i, r)| (format!("spec.roles[{i}].name"), &r.name))
        .chain(spec.users.iter().enumerate().map(|(i, u)| (format!("spec.users[{i}].name"), &u.name)));
    for (field, user) in login_names {
        if let Some(other) = suffixes.insert(secret_suffix(user), user.clone())
            && &other != user
        {
            errors.push(FieldError::new(
                field,
                format!(
                    "{user:?} and {other:?} would share the Secret {name}-user-{}; rename one",
                    secret_suffix(user)
                ),
            ));
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ValidDatabase {
        db: db.clone(),
        engine: spec.engine,
        version: spec.version.clone(),
        major,
        image: spec.image.clone().unwrap_or_else(|| default_image(spec.engine, &spec.version)),
        replicas,
        deletion_policy: spec.deletion_policy.unwrap_or_default(),
        databases: spec.databases.clone(),
        roles: spec.roles.clone(),
        vhosts: spec.vhosts.clone(),
        users: spec.users.clone(),
    })
}

/// Major version of `version` for `engine`, or why it is not supported.
pub fn parse_version(engine: Engine, version: &str) -> Result<u32, String> {
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let nums: Vec<u32> = if numeric { parts.iter().filter_map(|p| p.parse().ok()).collect() } else { Vec::new() };
    match engine {
        Engine::Postgres => match nums.as_slice() {
            [major @ 14..=17] | [major @ 14..=17, _] => Ok(*major),
            _ => Err(format!(
                "{version:?} is not a supported PostgreSQL version: use 14, 15, 16 or 17, optionally with a minor (16.4)"
            )),
        },
        Engine::Rabbitmq => match nums.as_slice() {
            [3, 13] | [3, 13, _] => Ok(3),
            [4, _] | [4, _, _] => Ok(4),
            _ => Err(format!(
                "{version:?} is not a supported RabbitMQ version: use 3.13 or 4.x (e.g. 4.1), optionally with a patch (3.13.7)"
            )),
        },
    }
}

fn check_parameters(parameters: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for (key, value) in parameters {
        let field = format!("spec.parameters.{key}");
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            errors.push(FieldError::new(field, "parameter names consist of letters, digits, '_' and '.'"));
        } else if RESERVED_PARAMETERS.contains(&key.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(
                field,
                "is set by the operator (the pod depends on it) and cannot be overridden",
            ));
        } else if value.contains(['\n', '\r']) {
            errors.push(FieldError::new(field, "values must be a single line"));
        }
    }
}

fn check_config(config: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for (key, value) in config {
        let field = format!("spec.config.{key}");
        if key.is_empty() || key.contains(['=', '\n', '\r', ' ', '#']) {
            errors.push(FieldError::new(field, "rabbitmq.conf keys are dotted names without spaces, '=' or '#'"));
        } else if RESERVED_CONFIG
            .iter()
            .any(|r| if r.ends_with('.') { key.starts_with(r) } else { key == r || key.starts_with(&format!("{r}.")) })
        {
            errors.push(FieldError::new(
                field,
                "is set by the operator (listeners, peer discovery, default user) and cannot be overridden",
            ));
        } else if value.contains(['\n', '\r']) {
            errors.push(FieldError::new(field, "values must be a single line"));
        }
    }
}

/// PostgreSQL identifiers Berth accepts: lowercase so that they need no case folding in the
/// URIs of the Secrets. They are still always quoted in SQL.
fn is_pg_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_postgres_objects(databases: &[PostgresDatabase], roles: &[PostgresRole], errors: &mut Vec<FieldError>) {
    let declared: BTreeSet<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (i, r) in roles.iter().enumerate() {
        let field = format!("spec.roles[{i}].name");
        if !is_pg_identifier(&r.name) {
            errors.push(FieldError::new(&field, format!("{:?} must start with a lowercase letter or '_' and contain only lowercase letters, digits, '_' and '-'", r.name)));
        } else if r.name == POSTGRES_ADMIN || r.name.starts_with("pg_") {
            errors
                .push(FieldError::new(&field, format!("{:?} is reserved (the superuser or a built-in role)", r.name)));
        }
        if !seen.insert(r.name.as_str()) {
            errors.push(FieldError::new(&field, format!("{:?} is declared twice", r.name)));
        }
        for (j, parent) in r.in_roles.iter().enumerate() {
            if parent == &r.name {
                errors.push(FieldError::new(
                    format!("spec.roles[{i}].inRoles[{j}]"),
                    "a role cannot be a member of itself",
                ));
            } else if !declared.contains(parent.as_str()) && !parent.starts_with("pg_") {
                errors.push(FieldError::new(
                    format!("spec.roles[{i}].inRoles[{j}]"),
                    format!("{parent:?} is neither declared in spec.roles nor a built-in pg_* role"),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, d) in databases.iter().enumerate() {
        if !is_pg_identifier(&d.name) {
            errors.push(FieldError::new(format!("spec.databases[{i}].name"), format!("{:?} must start with a lowercase letter or '_' and contain only lowercase letters, digits, '_' and '-'", d.name)));
        } else if matches!(d.name.as_str(), "postgres" | "template0" | "template1") {
            errors.push(FieldError::new(
                format!("spec.databases[{i}].name"),
                format!("{:?} is a built-in database", d.name),
            ));
        }
        if !seen.insert(d.name.as_str()) {
            errors
                .push(FieldError::new(format!("spec.databases[{i}].name"), format!("{:?} is declared twice", d.name)));
        }
        if let Some(owner) = &d.owner
            && owner != POSTGRES_ADMIN
            && !declared.contains(owner.as_str())
        {
            errors.push(FieldError::new(
                format!("spec.databases[{i}].owner"),
                format!("{owner:?} is not declared in spec.roles (or `postgres`)"),
            ));
        }
    }
}

fn check_rabbit_objects(vhosts: &[String], users: &[RabbitUser], errors: &mut Vec<FieldError>) {
    let mut seen = BTreeSet::new();
    for (i, v) in vhosts.iter().enumerate() {
        if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
            errors.push(FieldError::new(format!("spec.vhosts[{i}]"), "must be 1–255 printable characters"));
        }
        if !seen.insert(v.as_str()) {
            errors.push(FieldError::new(format!("spec.vhosts[{i}]"), format!("{v:?} is declared twice")));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, u) in users.iter().enumerate() {
        let field = format!("spec.users[{i}].name");
        if !u.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) || u.name.is_empty() {
            errors.push(FieldError::new(
                &field,
                format!("{:?} may contain only letters, digits, '_', '-' and '.'", u.name),
            ));
        } else if u.name == RABBITMQ_ADMIN || u.name == "guest" {
            errors.push(FieldError::new(
                &field,
                format!("{:?} is reserved (the operator's administrator or RabbitMQ's guest)", u.name),
            ));
        }
        if !seen.insert(u.name.as_str()) {
            errors.push(FieldError::new(&field, format!("{:?} is declared twice", u.name)));
        }
        for (j, tag) in u.tags.iter().enumerate() {
            if tag.is_empty() || tag.contains([',', ' ']) {
                errors.push(FieldError::new(
                    format!("spec.users[{i}].tags[{j}]"),
                    "a tag is one word without ',' or spaces",
                ));
            }
        }
        let mut on = BTreeSet::new();
        for (j, RabbitPermission { vhost, .. }) in u.permissions.iter().enumerate() {
            if vhost != "/" && !vhosts.contains(vhost) {
                errors.push(FieldError::new(
                    format!("spec.users[{i}].permissions[{j}].vhost"),
                    format!("{vhost:?} is not declared in spec.vhosts (nor the default vhost \"/\")"),
                ));
            }
            if !on.insert(vhost.as_str()) {
                errors.push(FieldError::new(
                    format!("spec.users[{i}].permissions[{j}].vhost"),
                    format!("{vhost:?} has permissions twice; RabbitMQ keeps one set per vhost"),
                ));
            }
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

//! What a restore's account must be allowed to do ([`required_access`]), and the condition of
//! a restore it is not allowed ([`authorization_refusal`]). The controller asks the API server
//! (access reviews as the account) and passes the answers in.

use std::collections::BTreeSet;

use serde_json::Value;

use super::mapping::{BERTH_GROUP, RestorePlan};

/// One request a restore's account would make: `verb` on `resource` (plural) of `group`, in
/// `namespace` (cluster-scoped when empty), on the object `name` when given. The controller
/// asks the API server (a SelfSubjectAccessReview as the account) about each.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: Option<String>,
}

impl Access {
    pub(super) fn new(verb: &'static str, group: &str, resource: &str, namespace: &str, name: Option<&str>) -> Self {
        Self {
            verb,
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.map(str::to_string),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource =
            if self.group.is_empty() { self.resource.clone() } else { format!("{}.{}", self.resource, self.group) };
        write!(f, "{} {resource}", self.verb)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if self.namespace.is_empty() {
            write!(f, " (cluster-wide)")
        } else {
            write!(f, " in namespace {:?}", self.namespace)
        }
    }
}

/// The API resource of an object: group, plural name, and whether it is namespaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub group: String,
    pub plural: String,
    pub namespaced: bool,
}

/// What the restore of one Backup writes besides its objects.
pub struct DataWrites<'a> {
    /// The Restore's namespace (where the account and the storage Secrets are).
    pub own_namespace: &'a str,
    /// Where the data Jobs run: the Backup's namespace after `spec.namespaceMapping`.
    pub target_namespace: &'a str,
    /// Names of the storage Secrets (credentials, CA, key) that the Jobs read.
    pub storage_secrets: Vec<&'a str>,
    /// The Backup's data snapshots: (kind, source), e.g. `("postgres", "orders-db")`.
    pub snapshots: Vec<(&'a str, &'a str)>,
}

/// Every request the restore makes as its account, deduplicated and in a stable order:
/// - each planned object: `create` (and `patch` with `existingResourcePolicy: update`) of its
///   resource in its namespace (cluster-wide for cluster-scoped kinds such as Namespace);
/// - each database dump: `update` of the target DatabaseInstance and `get` of its credentials
///   Secret, because `pg_restore --clean` rewrites the database behind it;
/// - each volume: `update` of the target claim, whose files the Job overwrites, and `list` of
///   pods (the Job runs beside the pod that mounts it);
/// - `create` of Jobs where data is restored, and for a target namespace other than the
///   Restore's, `get` and `create` of the storage Secrets there (they are copied as the
///   account).
///
/// `resource_of` resolves an object's kind (discovery); objects it cannot resolve are left
/// out here and fail on their own when created.
pub fn required_access(
    plan: &RestorePlan,
    update: bool,
    data: &DataWrites,
    resource_of: impl Fn(&Value) -> Option<ResourceName>,
) -> Vec<Access> {
    let mut wanted = BTreeSet::new();
    for obj in plan.stages.iter().flat_map(|(_, objects)| objects) {
        let Some(r) = resource_of(obj) else { continue };
        let namespace = if r.namespaced { obj.pointer("/metadata/namespace").and_then(Value::as_str) } else { None };
        let namespace = namespace.unwrap_or_default();
        wanted.insert(Access::new("create", &r.group, &r.plural, namespace, None));
        if update {
            let name = obj.pointer("/metadata/name").and_then(Value::as_str);
            wanted.insert(Access::new("patch", &r.group, &r.plural, namespace, name));
        }
    }
    let target = data.target_namespace;
    let mut jobs = false;
    for (kind, source) in &data.snapshots {
        match *kind {
            "postgres" | "rabbitmq" => {
                wanted.insert(Access::new("update", BERTH_GROUP, "databaseinstances", target, Some(source)));
                let credentials = crate::resources::backup::jobs::credentials_secret_name(source);
                wanted.insert(Access::new("get", "", "secrets", target, Some(&credentials)));
            }
            "dir" => {
                wanted.insert(Access::new("update", "", "persistentvolumeclaims", target, Some(source)));
                wanted.insert(Access::new("list", "", "pods", target, None));
            }
            _ => continue,
        }
        jobs = true;
    }
    if jobs {
        wanted.insert(Access::new("create", "batch", "jobs", target, None));
        if target != data.own_namespace {
            for secret in &data.storage_secrets {
                wanted.insert(Access::new("get", "", "secrets", target, Some(secret)));
                wanted.insert(Access::new("create", "", "secrets", target, None));
            }
        }
    }
    wanted.into_iter().collect()
}

/// Whether `answers` (the account's access reviews) refused the `create` of `obj`, whose API
/// resource is `resource`.
pub fn create_refused(answers: &[(Access, bool)], obj: &Value, resource: &ResourceName) -> bool {
    let namespace = if resource.namespaced { obj.pointer("/metadata/namespace").and_then(Value::as_str) } else { None };
    let wanted = Access::new("create", &resource.group, &resource.plural, namespace.unwrap_or_default(), None);
    answers.iter().any(|(access, allowed)| !allowed && *access == wanted)
}

/// Reason of a restore refused because its account may not make a request it needs.
pub const NOT_AUTHORIZED: &str = "NotAuthorized";

/// The condition of a restore whose account was refused one of the requests it needs
/// (`answers`: each request and whether the API server allows it), or `None` when all are
/// allowed. Nothing has been written when this is decided: the restore ends here.
pub fn authorization_refusal(account: &str, answers: &[(Access, bool)]) -> Option<(&'static str, String)> {
    let refused: Vec<&Access> = answers.iter().filter(|(_, allowed)| !allowed).map(|(a, _)| a).collect();
    let first = refused.first()?;
    let listed = refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let database = refused.iter().any(|a| a.resource == "databaseinstances" && a.verb == "update");
    let why = if database {
        " A database dump is restored (pg_restore --clean rewrites the database) only into a DatabaseInstance the \
         account may update and whose credentials Secret it may get."
    } else {
        ""
    };
    Some((
        NOT_AUTHORIZED,
        format!(
            "{account} may not {first}, which this restore needs; nothing was restored. Refused: {listed}.{why} \
             Grant the account these rights in a Role of that namespace (see deploy/tenant/), map the namespace \
             elsewhere with spec.namespaceMapping, or leave the kind out with spec.excludeKinds"
        ),
    ))
}

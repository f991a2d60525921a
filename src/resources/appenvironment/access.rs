//! `spec.access`: a team's access to its own app and nothing else of the namespace.
//!
//! Per level present in the spec, a Role `<app>-access-<level>` holds the rules RBAC can scope
//! by resourceNames (get, list and watch by name, update, patch and delete of the app's own
//! objects), bound to that level's groups and users. What RBAC cannot scope by name (pods,
//! whose names are generated; logs and exec; creating Backups and Restores) comes from the
//! chart's ClusterRoles [`POD_READER`], [`OPERATOR`] and [`EXEC`], bound in the app's
//! namespace only.
//!
//! Why ClusterRoles for those: Kubernetes lets an account write a Role only with rights it
//! holds itself. Berth holds read access to pods, but not `pods/log`, `pods/exec` or `create`
//! of Restores, and must not gain rights only to pass them on; instead the chart grants it
//! `bind` on exactly these three ClusterRoles (resourceNames), which lets it bind them without
//! holding what they grant. For the same reason the named rules carry only verbs Berth holds on
//! the kinds it manages: `patch` but not `update` (kubectl apply, edit, patch, scale and
//! rollout restart all PATCH; only `kubectl replace` is refused), and no `delete` of the
//! AppEnvironment itself (Berth would have to hold it on every AppEnvironment).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::build::{app, labels};
use super::external_secrets;
use super::validate::ValidApp;
use crate::api::appenvironment::{AccessGrant, AccessLevel};
use crate::resources::meta;

/// Component label of the Roles and RoleBindings.
pub const COMPONENT: &str = "access";
/// Chart ClusterRole: read the namespace's pods (every level).
pub const POD_READER: &str = "berth-access-view";
/// Chart ClusterRole: pod logs, Backups and Restores of the namespace (`operate`).
pub const OPERATOR: &str = "berth-access-operate";
/// Chart ClusterRole: `pods/exec` in the namespace (`operate` with `exec: true`).
pub const EXEC: &str = "berth-access-exec";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["get", "list", "watch", "patch", "delete"];

/// The Roles and RoleBindings of `spec.access` (both empty without it).
pub fn build(valid: &ValidApp) -> (Vec<Role>, Vec<RoleBinding>) {
    let grants = &app(valid).spec.access;
    let levels: BTreeSet<AccessLevel> = grants.iter().map(|g| g.level).collect();
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for level in &levels {
        let name = role_name(&app(valid).name_any(), *level);
        roles.push(Role { metadata: metadata(valid, &name), rules: Some(rules(valid, *level)) });
        let subjects = subjects(grants.iter().filter(|g| g.level == *level));
        bindings.push(binding(valid, &name, "Role", &name, subjects));
    }
    let app_name = app(valid).name_any();
    if !grants.is_empty() {
        bindings.push(binding(valid, &format!("{app_name}-access-pods"), "ClusterRole", POD_READER, subjects(grants)));
    }
    let operators: Vec<&AccessGrant> = grants.iter().filter(|g| g.level == AccessLevel::Operate).collect();
    if !operators.is_empty() {
        bindings.push(binding(
            valid,
            &format!("{app_name}-access-operate-namespace"),
            "ClusterRole",
            OPERATOR,
            subjects(operators.iter().copied()),
        ));
    }
    let exec: Vec<&AccessGrant> = operators.into_iter().filter(|g| g.exec).collect();
    if !exec.is_empty() {
        bindings.push(binding(valid, &format!("{app_name}-access-exec"), "ClusterRole", EXEC, subjects(exec)));
    }
    (roles, bindings)
}

pub fn role_name(app: &str, level: AccessLevel) -> String {
    format!("{app}-access-{}", level.as_str())
}

fn metadata(valid: &ValidApp, name: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut labels = labels(valid);
    labels.insert("app.kubernetes.io/component".into(), COMPONENT.into());
    meta::child_meta(app(valid), name, labels)
}

fn binding(valid: &ValidApp, name: &str, kind: &str, role: &str, subjects: Vec<Subject>) -> RoleBinding {
    RoleBinding {
        metadata: metadata(valid, name),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: role.into() },
        subjects: Some(subjects),
    }
}

/// The groups, then the users, of `grants`, each once.
fn subjects<'a>(grants: impl IntoIterator<Item = &'a AccessGrant>) -> Vec<Subject> {
    let mut groups = BTreeSet::new();
    let mut users = BTreeSet::new();
    for g in grants {
        groups.extend(g.groups.iter().cloned());
        users.extend(g.users.iter().cloned());
    }
    let subject = |kind: &str, name: String| Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name,
        namespace: None,
    };
    groups.into_iter().map(|n| subject("Group", n)).chain(users.into_iter().map(|n| subject("User", n))).collect()
}

/// The named rules of `level`. A rule with an empty resourceNames list would cover every
/// object of its kind, so a kind without names gets no rule.
fn rules(valid: &ValidApp, level: AccessLevel) -> Vec<PolicyRule> {
    let names = owned_names(valid);
    let (verbs, app_verbs): (&[&str], &[&str]) = match level {
        AccessLevel::View => (READ, READ),
        AccessLevel::Edit | AccessLevel::Operate => (WRITE, &["get", "list", "watch", "patch"]),
    };
    let mut rules = vec![rule("berth.dev", "appenvironments", app_verbs, &names.app)];
    for (group, resource, objects) in [
        ("apps", "deployments", &names.deployments),
        ("", "services", &names.app),
        ("networking.k8s.io", "ingresses", &names.app),
        ("autoscaling", "horizontalpodautoscalers", &names.app),
        ("policy", "poddisruptionbudgets", &names.app),
        ("batch", "cronjobs", &names.cron_jobs),
        ("", "configmaps", &names.config_maps),
    ] {
        if !objects.is_empty() {
            rules.push(rule(group, resource, verbs, objects));
        }
    }
    // Secrets are not for viewers, as in Kubernetes' own `view` role.
    if level != AccessLevel::View && !names.secrets.is_empty() {
        rules.push(rule("", "secrets", verbs, &names.secrets));
    }
    rules
}

fn rule(group: &str, resource: &str, verbs: &[&str], names: &BTreeSet<String>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: Some(names.iter().cloned().collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        non_resource_urls: None,
    }
}

/// The names of the app's own objects, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OwnedNames {
    /// The AppEnvironment, and its Service, Ingress, autoscaler and budget (all of its name).
    pub app: BTreeSet<String>,
    /// The app's Deployment and its workers'.
    pub deployments: BTreeSet<String>,
    pub cron_jobs: BTreeSet<String>,
    /// ConfigMaps the app's env, envFrom and volumes reference.
    pub config_maps: BTreeSet<String>,
    /// Secrets the app's env, envFrom and volumes reference, its TLS Secret and the targets of
    /// its external secrets. Not the DatabaseInstances' credentials (the instance's), nor
    /// image pull Secrets (usually shared by the namespace).
    pub secrets: BTreeSet<String>,
}

pub fn owned_names(valid: &ValidApp) -> OwnedNames {
    let a = app(valid);
    let spec = &a.spec;
    let name = a.name_any();
    let mut names = OwnedNames { app: BTreeSet::from([name.clone()]), ..OwnedNames::default() };
    names.deployments.insert(name.clone());
    names.deployments.extend(spec.workers.iter().map(|w| format!("{name}-{}", w.name)));
    names.cron_jobs.extend(spec.cron_jobs.iter().map(|c| format!("{name}-{}", c.name)));
    env_refs(&spec.env, &spec.env_from, &mut names);
    for v in &spec.volumes {
        names.config_maps.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        names.secrets.extend(v.secret.as_ref().map(|s| s.name.clone()));
    }
    names.secrets.extend(valid.ingress.as_ref().and_then(|i| i.tls.as_ref()).map(|t| t.secret_name.clone()));
    names.secrets.extend(spec.external_secrets.iter().map(|e| external_secrets::secret_name(&name, &e.name)));
    names
}

fn env_refs(env: &[EnvVar], env_from: &[EnvFromSource], names: &mut OwnedNames) {
    for source in env.iter().filter_map(|e| e.value_from.as_ref()) {
        names.config_maps.extend(source.config_map_key_ref.as_ref().map(|r| r.name.clone()));
        names.secrets.extend(source.secret_key_ref.as_ref().map(|r| r.name.clone()));
    }
    for source in env_from {
        names.config_maps.extend(source.config_map_ref.as_ref().map(|r| r.name.clone()));
        names.secrets.extend(source.secret_ref.as_ref().map(|r| r.name.clone()));
    }
}

/// `spec.access` problems the schema cannot see: a subject listed at two levels.
pub fn check(grants: &[AccessGrant], errors: &mut Vec<crate::api::validation::FieldError>) {
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, g) in grants.iter().enumerate() {
        let subjects =
            g.groups.iter().map(|n| ("group", n.as_str())).chain(g.users.iter().map(|n| ("user", n.as_str())));
        for (kind, subject) in subjects {
            if let Some(&j) = seen.get(&(kind, subject)) {
                if j != i {
                    errors.push(crate::api::validation::FieldError::new(
                        format!("spec.access[{i}]"),
                        format!("{kind} {subject:?} is already in spec.access[{j}]; list each {kind} once, at the highest level it needs (levels include the ones below)"),
                    ));
                }
            } else {
                seen.insert((kind, subject), i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppEnvironment;
    use crate::resources::appenvironment::validate;

    fn valid(spec: &str) -> ValidApp {
        let yaml = format!(
            "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata:\n  name: web\n  namespace: team\n  uid: u-1\nspec:\n  tier: development\n  image: x:1\n{spec}"
        );
        let app: AppEnvironment = serde_saphyr::from_str(&yaml).unwrap();
        validate(&app).expect("fixture is valid")
    }

    const SPEC: &str = "  envFrom: [{secretRef: {name: web-env}}]\n  volumes: [{name: c, mountPath: /c, configMap: {name: web-config}}]\n  workers: [{name: mailer}]\n  access:\n  - {level: view, groups: [readers]}\n  - {level: operate, users: [olga], exec: true}\n";

    #[test]
    fn a_named_role_per_level_and_namespace_wide_only_what_cannot_be_named() {
        let (roles, bindings) = build(&valid(SPEC));
        let names: Vec<String> = roles.iter().map(|r| r.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["web-access-view", "web-access-operate"]);
        // Every rule names its objects: an empty resourceNames would cover the whole kind.
        for role in &roles {
            for rule in role.rules.iter().flatten() {
                assert!(rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()), "{rule:?}");
            }
        }
        let rule = |role: &Role, resource: &str| {
            role.rules.iter().flatten().find(|r| r.resources.as_deref() == Some(&[resource.to_string()])).cloned()
        };
        let view = &roles[0];
        assert!(rule(view, "secrets").is_none(), "viewers read no Secrets");
        assert_eq!(rule(view, "deployments").unwrap().resource_names.unwrap(), ["web", "web-mailer"]);
        assert_eq!(rule(view, "configmaps").unwrap().verbs, ["get", "list", "watch"]);
        let operate = &roles[1];
        assert_eq!(rule(operate, "secrets").unwrap().resource_names.unwrap(), ["web-env"]);
        assert_eq!(rule(operate, "deployments").unwrap().verbs, ["get", "list", "watch", "patch", "delete"]);
        assert_eq!(rule(operate, "appenvironments").unwrap().verbs, ["get", "list", "watch", "patch"]);

        let refs: Vec<(String, String, String)> = bindings
            .iter()
            .map(|b| (b.metadata.name.clone().unwrap(), b.role_ref.kind.clone(), b.role_ref.name.clone()))
            .collect();
        let r = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            refs,
            [
                r("web-access-view", "Role", "web-access-view"),
                r("web-access-operate", "Role", "web-access-operate"),
                r("web-access-pods", "ClusterRole", POD_READER),
                r("web-access-operate-namespace", "ClusterRole", OPERATOR),
                r("web-access-exec", "ClusterRole", EXEC),
            ]
        );
        let subjects = |b: &RoleBinding| -> Vec<(String, String)> {
            b.subjects.iter().flatten().map(|s| (s.kind.clone(), s.name.clone())).collect()
        };
        assert_eq!(subjects(&bindings[0]), [("Group".to_string(), "readers".to_string())]);
        assert_eq!(subjects(&bindings[2]).len(), 2, "every level reads pods");
        assert_eq!(subjects(&bindings[4]), [("User".to_string(), "olga".to_string())]);
    }

    #[test]
    fn no_access_no_objects_and_a_subject_listed_twice_is_refused() {
        assert_eq!(build(&valid("")), (vec![], vec![]));
        let yaml = "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata: {name: web, namespace: team}\nspec:\n  tier: development\n  image: x:1\n  access:\n  - {level: view, groups: [devs]}\n  - {level: edit, groups: [devs]}\n";
        let errors = validate(&serde_saphyr::from_str(yaml).unwrap()).unwrap_err();
        assert_eq!(errors[0].field, "spec.access[1]");
        assert!(errors[0].message.contains("group \"devs\" is already in spec.access[0]"), "{}", errors[0].message);
    }
}

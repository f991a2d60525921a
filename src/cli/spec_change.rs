//! What `rollback` and `promote` share: the diff of two specs for people, the JSON merge patch
//! (RFC 7386) that turns one into the other, applying it with a field manager and a
//! resourceVersion precondition, and the GitOps owner that would revert it.

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Map, Value};

use super::{CliError, ExitKind};
use crate::api::AppEnvironment;
use crate::api::appenvironment::AppEnvironmentSpec;

/// One changed field: its path (`spec.env[1].value`), the value before and after (`None` when
/// absent).
#[derive(Debug, PartialEq)]
pub struct Change {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// The fields that differ between `before` and `after`, in path order. Objects are compared key
/// by key, lists element by element.
pub fn diff(before: &AppEnvironmentSpec, after: &AppEnvironmentSpec) -> Vec<Change> {
    let mut out = Vec::new();
    walk("spec", Some(&to_json(before)), Some(&to_json(after)), &mut out);
    out
}

fn to_json(spec: &AppEnvironmentSpec) -> Value {
    serde_json::to_value(spec).expect("specs serialize")
}

fn walk(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<Change>) {
    match (before, after) {
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                walk(&format!("{path}.{k}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                walk(&format!("{path}[{i}]"), a.get(i), b.get(i), out);
            }
        }
        (a, b) => out.push(Change { path: path.into(), before: a.cloned(), after: b.cloned() }),
    }
}

/// The diff as lines: `~ path: before -> after`, `+ path: value`, `- path: value`.
pub fn render(changes: &[Change]) -> String {
    let show = |v: &Value| serde_json::to_string(v).expect("JSON values serialize");
    changes
        .iter()
        .map(|c| match (&c.before, &c.after) {
            (Some(a), Some(b)) => format!("  ~ {}: {} -> {}\n", c.path, show(a), show(b)),
            (None, Some(b)) => format!("  + {}: {}\n", c.path, show(b)),
            (Some(a), None) => format!("  - {}: {}\n", c.path, show(a)),
            (None, None) => String::new(),
        })
        .collect()
}

/// The JSON merge patch that turns `before` into `after` (removed keys as `null`; a changed
/// list whole, as merge patches replace lists).
pub fn merge_patch(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = Map::new();
            for (k, old) in a {
                match b.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(new) if new != old => {
                        patch.insert(k.clone(), merge_patch(old, new));
                    }
                    Some(_) => {}
                }
            }
            for (k, new) in b.iter().filter(|(k, _)| !a.contains_key(*k)) {
                patch.insert(k.clone(), new.clone());
            }
            Value::Object(patch)
        }
        (_, b) => b.clone(),
    }
}

/// Field manager of the changes the CLI makes (visible in `managedFields`).
pub const FIELD_MANAGER: &str = "berth-cli";

/// Patches `app`'s spec from its current value to `spec`, only if nobody changed the object
/// since it was read (a 409 otherwise). Returns the patched object.
pub async fn apply(
    api: &Api<AppEnvironment>,
    app: &AppEnvironment,
    spec: &AppEnvironmentSpec,
) -> Result<AppEnvironment, CliError> {
    let ns = app.namespace().unwrap_or_default();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": app.resource_version()},
        "spec": merge_patch(&to_json(&app.spec), &to_json(spec)),
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(&app.name_any(), &params, &Patch::Merge(&patch)).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => CliError::new(
            ExitKind::Invalid,
            format!(
                "AppEnvironment {ns}/{} changed while this command ran; nothing was written. Run it again",
                app.name_any()
            ),
        ),
        e => CliError::api(e, &format!("patch appenvironments.berth.dev \"{}\" in namespace \"{ns}\"", app.name_any())),
    })
}

/// The GitOps tool that owns `app`, from the labels and annotations Argo CD and Flux set:
/// `(tool, evidence)`.
pub fn gitops_owner(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<(&'static str, String)> {
    let argo = annotations
        .get_key_value("argocd.argoproj.io/tracking-id")
        .or_else(|| labels.get_key_value("argocd.argoproj.io/instance"))
        .map(|(k, v)| ("Argo CD", format!("{k}={v}")));
    let flux = ["kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name"]
        .iter()
        .find_map(|key| labels.get_key_value(*key))
        .map(|(k, v)| ("Flux", format!("{k}={v}")));
    argo.or(flux)
}

/// The warning printed (on stderr) when a GitOps tool owns `app`.
pub fn gitops_warning(app: &AppEnvironment) -> Option<String> {
    let (tool, evidence) = gitops_owner(app.labels(), app.annotations())?;
    Some(format!(
        "warning: AppEnvironment {}/{} is managed by {tool} ({evidence}): it will revert this change at its next sync unless you commit the same change to its Git source",
        app.namespace().unwrap_or_default(),
        app.name_any()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> AppEnvironmentSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_diff_names_each_changed_field() {
        let before = spec(json!({"tier": "staging", "image": "web:1", "replicas": 2,
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}));
        let after = spec(json!({"tier": "staging", "image": "web:2",
            "env": [{"name": "A", "value": "9"}], "linkerd": true}));
        let text = render(&diff(&before, &after));
        let expected = [
            r#"  ~ spec.env[0].value: "1" -> "9""#,
            r#"  - spec.env[1]: {"name":"B","value":"2"}"#,
            r#"  ~ spec.image: "web:1" -> "web:2""#,
            "  + spec.linkerd: true",
            "  - spec.replicas: 2",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
        assert!(diff(&before, &before).is_empty());
    }

    #[test]
    fn the_merge_patch_turns_one_spec_into_the_other() {
        let before = json!({"image": "web:1", "replicas": 2, "service": {"port": 80, "type": "NodePort"},
            "env": [{"name": "A"}]});
        let after = json!({"image": "web:2", "service": {"port": 80}, "env": [], "linkerd": true});
        let patch = merge_patch(&before, &after);
        assert_eq!(
            patch,
            json!({"image": "web:2", "replicas": null, "service": {"type": null}, "env": [], "linkerd": true})
        );
        // Applied as RFC 7386 says, it yields `after`.
        fn apply(target: &mut Value, patch: &Value) {
            let (Value::Object(t), Value::Object(p)) = (&mut *target, patch) else {
                *target = patch.clone();
                return;
            };
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if v.is_object() && t.get(k).is_some_and(Value::is_object) {
                    apply(t.get_mut(k).unwrap(), v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        let mut patched = before.clone();
        apply(&mut patched, &patch);
        assert_eq!(patched, after);
    }

    #[test]
    fn argo_cd_and_flux_are_recognised_by_their_marks() {
        let none = BTreeMap::new();
        let argo = BTreeMap::from([(
            "argocd.argoproj.io/tracking-id".to_string(),
            "shop:berth.dev/AppEnvironment:shop/web".to_string(),
        )]);
        assert_eq!(gitops_owner(&none, &argo).unwrap().0, "Argo CD");
        let flux = BTreeMap::from([("kustomize.toolkit.fluxcd.io/name".to_string(), "apps".to_string())]);
        assert_eq!(gitops_owner(&flux, &none), Some(("Flux", "kustomize.toolkit.fluxcd.io/name=apps".into())));
        let helm_only = BTreeMap::from([("app.kubernetes.io/instance".to_string(), "web".to_string())]);
        assert_eq!(gitops_owner(&helm_only, &none), None, "Helm's instance label alone is no GitOps source");
    }
}

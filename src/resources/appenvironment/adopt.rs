//! Taking over a Deployment that Berth did not create (`spec.adopt`, written by `berth import
//! cluster --adopt`). A Deployment's selector is immutable, so the adopted app keeps it; the
//! takeover is a server-side apply, which leaves the pod template as it is when Berth's
//! template adds nothing to it and changes nothing in it. Any other difference would roll the
//! pods, so it happens only when the spec allows it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Resource, ResourceExt};
use serde_json::Value;

use super::build::COMPONENT;
use crate::api::appenvironment::AppEnvironment;
use crate::api::validation::FieldError;
use crate::resources::meta;

/// Labels of the app's pods that no adopted selector may set to other values: the API server
/// and Berth's own selectors (NetworkPolicy, pod cache, backups) rely on them.
const RESERVED: [&str; 2] = ["app.kubernetes.io/managed-by", "app.kubernetes.io/part-of"];

/// The labels that select the app's pods: the adopted Deployment's, else Berth's own.
pub fn selector_labels(app: &AppEnvironment) -> BTreeMap<String, String> {
    match app.spec.adopt.as_ref().filter(|a| !a.selector.is_empty()) {
        Some(adopt) => adopt.selector.clone(),
        None => meta::selector_labels(&app.name_any(), COMPONENT),
    }
}

/// `spec.adopt.selector`: label values the API server accepts, and none of the labels Berth
/// needs on every pod set to another value.
pub fn check(app: &AppEnvironment, errors: &mut Vec<FieldError>) {
    let Some(adopt) = &app.spec.adopt else { return };
    let owner_key = meta::owner_label_key("AppEnvironment");
    for (key, value) in &adopt.selector {
        let field = format!("spec.adopt.selector.{key}");
        if meta::label_value(value).as_deref() != Some(value.as_str()) {
            errors.push(FieldError::new(
                field,
                format!("{value:?} is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"),
            ));
        } else if RESERVED.contains(&key.as_str()) || key.starts_with("berth.dev/") || *key == owner_key {
            errors.push(FieldError::new(
                field,
                "is a label Berth sets on every pod of the app; a Deployment selecting on it is already Berth's, so leave it out of spec.adopt.selector",
            ));
        }
    }
}

/// What to do about the Deployment named like the app.
#[derive(Debug, PartialEq, Eq)]
pub enum Takeover {
    /// None exists, or it is this app's already: apply as usual.
    Proceed,
    /// Someone else's Deployment that the spec does not adopt, or one Berth cannot adopt: leave
    /// it alone and say why.
    Conflict(String),
    /// Adopting it would roll the pods and the spec does not allow that: the differences.
    NeedsRollout(Vec<String>),
}

/// Decides the takeover of `live` by `app`, whose desired Deployment is `desired`.
pub fn decide(app: &AppEnvironment, desired: &Deployment, live: Option<&Deployment>) -> Takeover {
    let Some(live) = live else { return Takeover::Proceed };
    let name = live.name_any();
    let uid = app.meta().uid.as_deref().unwrap_or_default();
    if let Some(owner) = live.owner_references().iter().find(|o| o.controller == Some(true)) {
        return if owner.uid == uid {
            Takeover::Proceed
        } else {
            Takeover::Conflict(format!(
                "Deployment {name} is controlled by {} {}; Berth takes over only Deployments no controller owns",
                owner.kind, owner.name
            ))
        };
    }
    let Some(adopt) = &app.spec.adopt else {
        return Takeover::Conflict(format!(
            "Deployment {name} exists and Berth did not create it; to take it over, set spec.adopt (`berth import cluster --adopt` writes it and shows what would change)"
        ));
    };
    let live_selector = live.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    let has_expressions =
        live.spec.as_ref().and_then(|s| s.selector.match_expressions.as_ref()).is_some_and(|e| !e.is_empty());
    if has_expressions || live_selector != selector_labels(app) {
        return Takeover::Conflict(format!(
            "Deployment {name} selects its pods with {}, and a selector cannot change; set spec.adopt.selector to exactly its matchLabels",
            serde_json::to_string(&live.spec.as_ref().map(|s| &s.selector)).unwrap_or_default()
        ));
    }
    let differences = template_differences(
        &serde_json::to_value(desired.spec.as_ref().map(|s| &s.template)).unwrap_or(Value::Null),
        &serde_json::to_value(live.spec.as_ref().map(|s| &s.template)).unwrap_or(Value::Null),
    );
    if differences.is_empty() || adopt.allow_rollout { Takeover::Proceed } else { Takeover::NeedsRollout(differences) }
}

/// Where the pod template Berth would apply differs from the live one, as `path: what`. Only
/// what the apply would change counts: fields the server defaulted in the live template, and
/// fields Berth does not set, stay as they are. Lists of named items (containers, env,
/// volumes, ports, mounts) are matched by name, because a server-side apply merges them so.
pub fn template_differences(desired: &Value, live: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff("template", desired, live, &mut out);
    out
}

fn diff(path: &str, desired: &Value, live: &Value, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (key, value) in d {
                match l.get(key) {
                    Some(lv) => diff(&format!("{path}.{key}"), value, lv, out),
                    None if value.is_null() => {}
                    None => out.push(format!("{path}.{key}: added {}", short(value))),
                }
            }
        }
        (Value::Array(d), Value::Array(l)) if d.iter().chain(l).all(|v| v.get("name").is_some()) => {
            for item in d {
                let key = item["name"].as_str().unwrap_or_default();
                match l.iter().find(|x| x["name"] == item["name"]) {
                    Some(found) => diff(&format!("{path}[{key}]"), item, found, out),
                    None => out.push(format!("{path}[{key}]: added")),
                }
            }
            let names = |v: &Vec<Value>| {
                v.iter().map(|x| x["name"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>()
            };
            let (wanted, live_names) = (names(d), names(l));
            let extra: Vec<&String> = live_names.iter().filter(|n| !wanted.contains(n)).collect();
            if !extra.is_empty() {
                // An apply would leave them with their previous manager: Berth's spec would not
                // describe the app.
                out.push(format!("{path}: the live template also has {extra:?}; add them to the spec or remove them from the Deployment"));
            } else if wanted.len() == live_names.len() && wanted != live_names {
                out.push(format!("{path}: order differs from the live list"));
            }
        }
        (Value::Array(d), Value::Array(l)) => {
            if d.len() != l.len() {
                out.push(format!("{path}: {} items, live has {}", d.len(), l.len()));
            } else {
                for (i, (x, y)) in d.iter().zip(l).enumerate() {
                    diff(&format!("{path}[{i}]"), x, y, out);
                }
            }
        }
        (Value::Number(d), Value::Number(l)) if d.as_f64() == l.as_f64() => {}
        (d, l) if d == l => {}
        (d, l) => out.push(format!("{path}: {} (live {})", short(d), short(l))),
    }
}

/// A value short enough for a condition message.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::appenvironment::{Adopt, AppEnvironmentSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn app(adopt: Option<Adopt>) -> AppEnvironment {
        let mut app = AppEnvironment::new(
            "shop",
            AppEnvironmentSpec { image: "ghcr.io/acme/shop:1".into(), adopt, ..AppEnvironmentSpec::default() },
        );
        app.metadata.namespace = Some("legacy".into());
        app.metadata.uid = Some("uid-app".into());
        app
    }

    fn deployment(selector: Value, template: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "legacy"},
            "spec": {"selector": {"matchLabels": selector}, "template": template}
        }))
        .unwrap()
    }

    fn adopt(selector: &[(&str, &str)], allow_rollout: bool) -> Option<Adopt> {
        Some(Adopt { selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), allow_rollout })
    }

    #[test]
    fn a_missing_or_own_deployment_is_applied_as_usual() {
        let desired = deployment(json!({"app": "shop"}), json!({}));
        assert_eq!(decide(&app(None), &desired, None), Takeover::Proceed);
        let mut own = desired.clone();
        own.metadata.owner_references =
            Some(vec![OwnerReference { uid: "uid-app".into(), controller: Some(true), ..OwnerReference::default() }]);
        assert_eq!(decide(&app(None), &desired, Some(&own)), Takeover::Proceed);
    }

    #[test]
    fn a_foreign_deployment_is_left_alone_without_adopt_or_with_another_controller() {
        let desired = deployment(json!({"app": "shop"}), json!({}));
        let live = deployment(json!({"app": "shop"}), json!({}));
        let Takeover::Conflict(message) = decide(&app(None), &desired, Some(&live)) else { panic!() };
        assert!(message.contains("spec.adopt"), "{message}");
        let mut helm = live.clone();
        helm.metadata.owner_references = Some(vec![OwnerReference {
            kind: "Rollout".into(),
            name: "shop".into(),
            uid: "other".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        let Takeover::Conflict(message) = decide(&app(adopt(&[("app", "shop")], true)), &desired, Some(&helm)) else {
            panic!()
        };
        assert!(message.contains("controlled by Rollout shop"), "{message}");
    }

    #[test]
    fn the_selector_must_be_kept_exactly() {
        let desired = deployment(json!({"app": "shop"}), json!({}));
        let live = deployment(json!({"app": "shop", "tier": "web"}), json!({}));
        let Takeover::Conflict(message) = decide(&app(adopt(&[("app", "shop")], true)), &desired, Some(&live)) else {
            panic!()
        };
        assert!(message.contains("spec.adopt.selector") && message.contains("\"tier\":\"web\""), "{message}");
    }

    #[test]
    fn an_equal_template_is_adopted_and_a_different_one_only_when_allowed() {
        let template = json!({"metadata": {"labels": {"app": "shop"}}, "spec": {"containers": [
            {"name": "app", "image": "shop:1", "env": [{"name": "A", "value": "1"}]}]}});
        // The server defaults fields Berth does not set: they are no difference.
        let mut live_template = template.clone();
        live_template["spec"]["containers"][0]["terminationMessagePath"] = json!("/dev/termination-log");
        live_template["spec"]["dnsPolicy"] = json!("ClusterFirst");
        let live = deployment(json!({"app": "shop"}), live_template);
        let desired = deployment(json!({"app": "shop"}), template.clone());
        let selector = [("app", "shop")];
        assert_eq!(decide(&app(adopt(&selector, false)), &desired, Some(&live)), Takeover::Proceed);

        let mut berth = template;
        berth["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("berth");
        berth["spec"]["containers"][0]["env"][0]["value"] = json!("2");
        berth["spec"]["containers"][0]["securityContext"] = json!({"runAsNonRoot": true});
        let desired = deployment(json!({"app": "shop"}), berth);
        let Takeover::NeedsRollout(differences) = decide(&app(adopt(&selector, false)), &desired, Some(&live)) else {
            panic!()
        };
        assert_eq!(
            differences,
            [
                "template.metadata.labels.app.kubernetes.io/managed-by: added \"berth\"",
                "template.spec.containers[app].env[A].value: \"2\" (live \"1\")",
                "template.spec.containers[app].securityContext: added {\"runAsNonRoot\":true}",
            ]
        );
        assert_eq!(decide(&app(adopt(&selector, true)), &desired, Some(&live)), Takeover::Proceed);
    }

    #[test]
    fn named_lists_compare_by_name_and_see_missing_items() {
        let d = json!([{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]);
        let reordered = json!([{"name": "b", "value": "2"}, {"name": "a", "value": "1"}]);
        assert_eq!(template_differences(&d, &reordered), ["template: order differs from the live list"]);
        let missing = json!([{"name": "a", "value": "1"}]);
        assert_eq!(template_differences(&d, &missing), ["template[b]: added"]);
        let extra = json!([{"name": "a", "value": "1"}, {"name": "b", "value": "2"}, {"name": "sidecar"}]);
        let [only] = template_differences(&d, &extra).try_into().unwrap();
        assert!(only.contains("[\"sidecar\"]"), "{only}");
        assert!(template_differences(&d, &d).is_empty());
    }

    #[test]
    fn selector_validation_names_the_label() {
        let mut errors = Vec::new();
        check(&app(adopt(&[("app.kubernetes.io/managed-by", "helm"), ("app", "bad value")], false)), &mut errors);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text.iter().any(|e| e.contains("spec.adopt.selector.app.kubernetes.io/managed-by")), "{text:?}");
        assert!(
            text.iter().any(|e| e.contains("spec.adopt.selector.app:") && e.contains("not a label value")),
            "{text:?}"
        );
        let mut errors = Vec::new();
        check(&app(adopt(&[("app", "shop")], false)), &mut errors);
        assert!(errors.is_empty());
    }
}

//! `berth import cluster`: the Deployments of a namespace (with the Service, Ingress,
//! HorizontalPodAutoscaler and PodDisruptionBudget in front of or around each) as the
//! AppEnvironments that reproduce them, and a report of what does not fit. Pure: the objects
//! are listed by the caller.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use super::report::Report;
use crate::api::appenvironment::{AppEnvironment, Tier};
use crate::resources::appenvironment::{
    self,
    adopt::{self, Takeover},
};

/// What a namespace holds.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub ingresses: Vec<Ingress>,
    pub autoscalers: Vec<HorizontalPodAutoscaler>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
}

fn selects(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One AppEnvironment per Deployment no AppEnvironment controls already. With `adopt`, each takes
/// its Deployment over (keeping the selector), and the report says whether that rolls the pods.
pub fn map(live: &Live, namespace: &str, tier: Tier, adopt: bool, report: &mut Report) -> Vec<Value> {
    let mut out = Vec::new();
    for d in &live.deployments {
        // The operator's own (a Deployment applied from `berth render` has Berth's labels but no
        // owner, and is imported like any other).
        if d.owner_references().iter().any(|o| o.kind == "AppEnvironment" && o.controller == Some(true)) {
            continue;
        }
        let name = d.name_any();
        let svc = format!("deployment/{name}");
        let Some(dspec) = &d.spec else { continue };
        let pod_labels = dspec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        let Some(pod) = &dspec.template.spec else { continue };
        let mut spec = Map::new();
        spec.insert("tier".into(), json!(tier.as_str()));
        let [container, rest @ ..] = pod.containers.as_slice() else { continue };
        for c in rest {
            report.unmapped(&svc, format!("containers.{}", c.name), "an AppEnvironment has one container: sidecars are not mapped (a mesh proxy is injected by its own webhook)");
        }
        spec.insert("image".into(), json!(container.image.clone().unwrap_or_default()));
        let copy = |spec: &mut Map<String, Value>, key: &str, v: Option<Value>| {
            if let Some(v) = v.filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
                spec.insert(key.into(), v);
            }
        };
        copy(&mut spec, "command", container.command.as_ref().map(to));
        copy(&mut spec, "args", container.args.as_ref().map(to));
        copy(&mut spec, "env", container.env.as_ref().map(to));
        copy(&mut spec, "envFrom", container.env_from.as_ref().map(to));
        copy(&mut spec, "resources", container.resources.as_ref().map(to));
        copy(&mut spec, "securityContext", container.security_context.as_ref().map(to));
        copy(&mut spec, "imagePullPolicy", container.image_pull_policy.clone().map(Value::String));
        let ports: Vec<Value> = container
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| json!({"name": p.name.clone().unwrap_or_else(|| if i == 0 { "http".into() } else { format!("port-{}", p.container_port) }), "containerPort": p.container_port, "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into())}))
            .collect();
        copy(&mut spec, "ports", Some(Value::Array(ports)));
        let mut probes = Map::new();
        for (key, probe) in [
            ("liveness", &container.liveness_probe),
            ("readiness", &container.readiness_probe),
            ("startup", &container.startup_probe),
        ] {
            if let Some(p) = probe {
                probes.insert(key.into(), to(p));
            }
        }
        if !probes.is_empty() {
            spec.insert("probes".into(), Value::Object(probes));
        }
        copy(&mut spec, "nodeSelector", pod.node_selector.as_ref().map(to));
        copy(&mut spec, "tolerations", pod.tolerations.as_ref().map(to));
        copy(
            &mut spec,
            "imagePullSecrets",
            pod.image_pull_secrets.as_ref().map(|s| json!(s.iter().map(|r| r.name.clone()).collect::<Vec<_>>())),
        );
        if let Some(strategy) = &dspec.strategy {
            match (strategy.type_.as_deref(), &strategy.rolling_update) {
                (Some("Recreate"), _) => {
                    spec.insert("rollout".into(), json!({"strategy": "Recreate"}));
                }
                (_, Some(ru)) => {
                    spec.insert(
                        "rollout".into(),
                        json!({"maxSurge": ru.max_surge, "maxUnavailable": ru.max_unavailable}),
                    );
                }
                _ => {}
            }
        }
        let hpa = live.autoscalers.iter().find(|h| {
            h.spec.as_ref().is_some_and(|s| s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == name)
        });
        match hpa.and_then(|h| h.spec.as_ref()) {
            Some(h) => {
                let target = |resource: &str| {
                    h.metrics.iter().flatten().find_map(|m| {
                        let r = m.resource.as_ref().filter(|r| r.name == resource)?;
                        r.target.average_utilization
                    })
                };
                let mut a = json!({"minReplicas": h.min_replicas.unwrap_or(1), "maxReplicas": h.max_replicas});
                if let Some(c) = target("cpu") {
                    a["targetCpuUtilization"] = json!(c);
                }
                if let Some(m) = target("memory") {
                    a["targetMemoryUtilization"] = json!(m);
                }
                spec.insert("autoscaling".into(), a);
                report.mapped(&svc, "HorizontalPodAutoscaler");
                if h.metrics.iter().flatten().any(|m| m.type_ != "Resource") || h.behavior.is_some() {
                    report.unmapped(
                        &svc,
                        "HorizontalPodAutoscaler",
                        "only cpu and memory utilization targets carry over; custom metrics and behavior do not",
                    );
                }
            }
            None => {
                spec.insert("replicas".into(), json!(dspec.replicas.unwrap_or(1)));
            }
        }
        // The Service in front of the pods, and the Ingress in front of it.
        let service = live
            .services
            .iter()
            .find(|s| s.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|sel| selects(sel, &pod_labels)));
        match service {
            Some(s) => {
                let sspec = s.spec.as_ref().expect("selected by spec");
                let port = sspec.ports.iter().flatten().next().map(|p| p.port);
                let mut settings = json!({});
                if let Some(p) = port.filter(|p| *p != 80) {
                    settings["port"] = json!(p);
                }
                if let Some(t) = sspec.type_.as_deref().filter(|t| *t != "ClusterIP") {
                    settings["type"] = json!(t);
                }
                spec.insert("service".into(), settings);
                report.mapped(&svc, &format!("service/{}", s.name_any()));
                if s.name_any() != name {
                    report.changed(&svc, format!("service/{}", s.name_any()), format!("Berth's Service is named {name}: clients of {} must follow (or keep that Service as it is)", s.name_any()));
                }
                let ingress = live.ingresses.iter().find(|i| {
                    i.spec.as_ref().is_some_and(|is| {
                        is.rules
                            .iter()
                            .flatten()
                            .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
                            .any(|p| p.backend.service.as_ref().is_some_and(|b| b.name == s.name_any()))
                    })
                });
                if let Some(i) = ingress.and_then(|i| Some((i, i.spec.as_ref()?))) {
                    let (ing, ispec) = i;
                    let hosts: Vec<String> = ispec.rules.iter().flatten().filter_map(|r| r.host.clone()).collect();
                    let paths: Vec<Value> = ispec
                        .rules
                        .iter()
                        .flatten()
                        .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
                        .filter_map(|p| Some(json!({"path": p.path.clone()?, "pathType": p.path_type})))
                        .collect();
                    let mut settings = json!({"hosts": hosts, "paths": paths});
                    if let Some(c) = &ispec.ingress_class_name {
                        settings["className"] = json!(c);
                    }
                    let annotations = ing.annotations();
                    if ispec.tls.is_some() {
                        let issuer = annotations
                            .get("cert-manager.io/cluster-issuer")
                            .map(|n| (n, "ClusterIssuer"))
                            .or(annotations.get("cert-manager.io/issuer").map(|n| (n, "Issuer")));
                        match issuer {
                            Some((n, kind)) => settings["tls"] = json!({"issuerRef": {"name": n, "kind": kind}}),
                            None => report.unmapped(&svc, format!("ingress/{}.tls", ing.name_any()), "TLS without a cert-manager issuer annotation: Berth issues certificates through cert-manager; set spec.ingress.tls.issuerRef"),
                        }
                    }
                    spec.insert("ingress".into(), settings);
                    report.mapped(&svc, &format!("ingress/{}", ing.name_any()));
                }
            }
            None => report.note(&svc, "Service", format!("no Service selects its pods: Berth creates Service {name}")),
        }
        let pdb = live.disruption_budgets.iter().find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|sel| selects(sel, &pod_labels))
        });
        match pdb.and_then(|p| p.spec.as_ref()) {
            Some(p) => {
                let mut b = json!({"enabled": true});
                if let Some(m) = &p.min_available {
                    b["minAvailable"] = json!(m);
                } else if let Some(m) = &p.max_unavailable {
                    b["maxUnavailable"] = json!(m);
                }
                spec.insert("disruptionBudget".into(), b);
                report.mapped(&svc, "PodDisruptionBudget");
            }
            None => {
                spec.insert("disruptionBudget".into(), json!({"enabled": false}));
            }
        }
        // What an AppEnvironment cannot say.
        let pod_json = serde_json::to_value(pod).unwrap_or_default();
        for key in [
            "initContainers",
            "affinity",
            "hostNetwork",
            "hostPID",
            "hostIPC",
            "priorityClassName",
            "dnsConfig",
            "hostAliases",
            "runtimeClassName",
        ] {
            if pod_json.get(key).is_some() {
                report.unmapped(&svc, format!("spec.template.spec.{key}"), "no AppEnvironment field for it");
            }
        }
        for v in pod.volumes.iter().flatten() {
            report.unmapped(&svc, format!("volumes.{}", v.name), "volumes are not imported: declare them in spec.volumes (a claim of the app is named <app>-<volume>; an existing PVC keeps its data only under that name)");
        }
        let selector = &dspec.selector;
        if adopt && selector.match_expressions.as_ref().is_none_or(Vec::is_empty) {
            spec.insert("adopt".into(), json!({"selector": selector.match_labels.clone().unwrap_or_default()}));
        } else if adopt {
            report.unmapped(&svc, "spec.selector.matchExpressions", "Berth keeps an adopted selector's matchLabels only: this Deployment cannot be adopted; delete it once Berth's is Ready");
        } else {
            report.changed(&svc, "spec.selector", "Berth's Deployment has this name and selects app.kubernetes.io/name, instance and component; a selector cannot change, so the operator leaves this Deployment alone (AdoptionConflict) until you delete it, or import with --adopt to take it over");
        }
        let app = json!({
            "apiVersion": "berth.dev/v1alpha1",
            "kind": "AppEnvironment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        if spec.contains_key("adopt") {
            adoption_report(&app, d, &svc, report);
        }
        out.push(app);
    }
    out
}

/// What taking `live` over with `app` does to its pods: nothing when Berth's template equals
/// the live one, else a rollout whose every difference is listed (Berth's defaults are never
/// weakened to avoid one).
fn adoption_report(app: &Value, live: &Deployment, svc: &str, report: &mut Report) {
    let built = serde_json::from_value::<AppEnvironment>(app.clone()).map_err(|e| e.to_string()).and_then(|a| {
        appenvironment::validate(&a)
            .map(|v| (a, v))
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    });
    let (app, valid) = match built {
        Ok(built) => built,
        Err(e) => {
            return report.unmapped(
                svc,
                "spec.adopt",
                format!("the imported spec does not validate, so the takeover cannot be judged: {e}"),
            );
        }
    };
    let desired = appenvironment::build(&valid, &appenvironment::link(&app, &[])).deployment;
    match adopt::decide(&app, &desired, Some(live)) {
        Takeover::Proceed => report.note(
            svc,
            "spec.adopt",
            "Berth's pod template equals the live one: the operator takes the Deployment over with no rollout",
        ),
        Takeover::Conflict(why) => report.unmapped(svc, "spec.adopt", why),
        Takeover::NeedsRollout(differences) => {
            for d in &differences {
                let (path, what) = d.split_once(": ").unwrap_or((d, ""));
                report.changed(svc, format!("adopt {path}"), what.to_string());
            }
            report.changed(svc, "spec.adopt.allowRollout", format!("taking the Deployment over rolls its pods ({} differences above): review them, then set spec.adopt.allowRollout: true; until then the operator leaves it as it is (AdoptionNeedsRollout)", differences.len()));
        }
    }
}

fn to<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

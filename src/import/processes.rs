//! Services that are another process of an app: a port-less service that runs the same image
//! (or build) with the same environment as a service with ports becomes that app's
//! `spec.workers` entry, and, when it runs a crontab (supercronic, crond) whose file the
//! project holds, one `spec.cronJobs` entry per crontab line.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::map::{environment, k8s_name, scalar, string_list, unmapped_reason, volume_source};
use super::model::{Project, Service};
use super::report::Report;

fn listens(s: &Service) -> bool {
    s.body.contains_key("ports") || s.body.contains_key("expose")
}

/// What must be equal for two services to be processes of one app.
fn identity(s: &Service, project: &Project) -> Option<String> {
    let source = s.body.get("image").or_else(|| s.body.get("build"))?;
    let env = environment(s, project, &mut Report::default()).ok()?;
    serde_json::to_string(&(source, env, s.body.get("user"))).ok()
}

/// Folded service name → the service (with ports) whose app it joins.
pub fn folds(apps: &[&Service], project: &Project) -> BTreeMap<String, String> {
    let hosts: Vec<(&Service, String)> =
        apps.iter().filter(|s| listens(s)).filter_map(|s| Some((*s, identity(s, project)?))).collect();
    let mut out = BTreeMap::new();
    for s in apps.iter().filter(|s| !listens(s)) {
        // Named volumes would need a shared (ReadWriteMany) claim: such a service stays an app.
        let named = s
            .body
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|v| volume_source(v).is_some_and(|(src, _)| !src.starts_with(['.', '/', '~'])));
        let Some(id) = identity(s, project) else { continue };
        if let Some((host, _)) = hosts.iter().find(|(_, h)| *h == id).filter(|_| !named) {
            out.insert(s.name.clone(), host.name.clone());
        }
    }
    out
}

/// The crontab a service runs (`supercronic FILE`, `crond` with /etc/crontabs/root), read from
/// the bind mount that provides it.
fn crontab(s: &Service) -> Option<(String, String)> {
    let words = string_list(s.body.get("command")?);
    let path = if let Some(i) = words.iter().position(|w| w.ends_with("supercronic")) {
        words[i + 1..].iter().find(|w| !w.starts_with('-'))?.clone()
    } else if words.iter().any(|w| w.ends_with("crond") || w == "cron") {
        "/etc/crontabs/root".to_string()
    } else {
        return None;
    };
    let (source, _) = s.body.get("volumes")?.as_array()?.iter().filter_map(volume_source).find(|(_, t)| *t == path)?;
    let file = s.file.parent().unwrap_or(Path::new(".")).join(&source);
    Some((source, std::fs::read_to_string(file).ok()?))
}

/// `(line, schedule, command)` of each job of a crontab (comments, blank lines and variable
/// assignments skipped).
pub fn parse_crontab(text: &str) -> Vec<(usize, String, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let fields = if l.starts_with('@') { 1 } else { 5 };
            let parts: Vec<&str> = l.splitn(fields + 1, char::is_whitespace).filter(|p| !p.is_empty()).collect();
            if parts.first().is_some_and(|p| p.contains('=')) || parts.len() <= fields {
                return None;
            }
            let rest = l.split_whitespace().skip(fields).collect::<Vec<_>>().join(" ");
            Some((i + 1, l.split_whitespace().take(fields).collect::<Vec<_>>().join(" "), rest))
        })
        .collect()
}

/// The `spec.workers` and `spec.cronJobs` entries of `host`'s app from its folded services.
pub fn entries(host: &str, folded: &[&Service], report: &mut Report) -> (Vec<Value>, Vec<Value>) {
    let (mut workers, mut cron_jobs) = (Vec::new(), Vec::new());
    for s in folded {
        let svc = s.name.as_str();
        let mut cron_source = None;
        match crontab(s) {
            Some((source, text)) => {
                let jobs = parse_crontab(&text);
                for (n, (line, schedule, command)) in jobs.iter().enumerate() {
                    let name = k8s_name(&format!("{svc}-{}", n + 1), 30);
                    cron_jobs.push(json!({"name": name, "schedule": schedule, "command": ["/bin/sh", "-c", command]}));
                    report.changed(svc, format!("command ({source}:{line})"), format!("crontab line {schedule:?} became spec.cronJobs {name} of {host}: a Job per run, in UTC unless you set timeZone"));
                }
                cron_source = Some(source);
            }
            None => {
                let mut w = json!({"name": k8s_name(svc, 30)});
                if let Some(e) = s.body.get("entrypoint") {
                    w["command"] = json!(string_list(e));
                }
                if let Some(c) = s.body.get("command") {
                    w["args"] = json!(string_list(c));
                }
                if let Some(n) = s.body.get("deploy").and_then(|d| d.get("replicas")).and_then(Value::as_i64) {
                    w["replicas"] = json!(n);
                }
                report.changed(svc, "(service)", format!("same image and environment as {host}, no port: became spec.workers {} of {host} (a Deployment without Service)", k8s_name(svc, 30)));
                workers.push(w);
            }
        }
        for (key, value) in &s.body {
            match key.as_str() {
                "image" | "build" | "environment" | "env_file" | "user" | "restart" | "depends_on" | "networks"
                | "command" | "entrypoint" => report.mapped(svc, key),
                "deploy" if value.as_object().is_some_and(|d| d.keys().all(|k| k == "replicas")) => {
                    report.mapped(svc, key)
                }
                "volumes" => {
                    for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                        let is_crontab = volume_source(v).is_some_and(|(src, _)| Some(&src) == cron_source.as_ref());
                        if is_crontab {
                            report.mapped(svc, &format!("volumes[{i}]"));
                        } else {
                            report.unmapped(
                                svc,
                                format!("volumes[{i}]"),
                                format!(
                                    "{}: a worker mounts only its app's volumes; list them in its volumes",
                                    scalar(v)
                                ),
                            );
                        }
                    }
                }
                k if k.starts_with("x-") => report.note(svc, k, "extension field: ignored"),
                other => report.unmapped(svc, other, unmapped_reason(other)),
            }
        }
    }
    (workers, cron_jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crontab_lines_become_schedules_and_commands() {
        let text = "# nightly jobs\nMAILTO=ops@example.com\n*/15 * * * * python manage.py clearsessions\n\n@daily  /app/bin/report --all\n";
        assert_eq!(
            parse_crontab(text),
            [
                (3, "*/15 * * * *".to_string(), "python manage.py clearsessions".to_string()),
                (5, "@daily".into(), "/app/bin/report --all".into()),
            ]
        );
    }
}

//! Reading a compose project: the files (with the line of every top-level key and service),
//! interpolation, merging of override files, `extends` and `profiles`, as `docker compose
//! config` would resolve them. Services stay JSON maps: compose allows several shapes for most
//! keys, and the mapper reads each shape it supports and reports the rest.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::interpolate::{Variables, interpolate, parse_env_file};
use super::report::Report;

/// A bad input: the file, the line (1-based; 0 when unknown) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportError {
    pub file: String,
    pub line: u64,
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

fn error(file: &Path, line: u64, message: impl Into<String>) -> ImportError {
    ImportError { file: file.display().to_string(), line, message: message.into() }
}

/// One service, resolved.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// Where it was first declared.
    pub file: PathBuf,
    pub line: u64,
    pub body: Map<String, Value>,
}

/// A compose project, resolved.
#[derive(Clone, Debug, Default)]
pub struct Project {
    pub name: Option<String>,
    /// The folder of the first file: relative paths (env_file, secrets, configs) start here.
    pub dir: PathBuf,
    pub services: Vec<Service>,
    pub volumes: Map<String, Value>,
    pub secrets: Map<String, Value>,
    pub configs: Map<String, Value>,
    pub networks: Map<String, Value>,
    pub vars: Variables,
}

const TOP_LEVEL: &[&str] = &["version", "name", "services", "networks", "volumes", "secrets", "configs", "include"];

/// A YAML mapping with the location of each key, in file order.
struct Entries(Vec<(Spanned<String>, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<Spanned<String>, Value>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
            fn visit_unit<E>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
        }
        d.deserialize_map(V)
    }
}

/// The top level of one file: its keys with their lines, the services with theirs.
struct File {
    path: PathBuf,
    top: Vec<(String, u64, Value)>,
    services: Vec<(String, u64, Value)>,
}

fn read_yaml(path: &Path) -> Result<File, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| error(path, 0, format!("cannot read: {e}")))?;
    if text.trim().is_empty() {
        return Err(error(path, 1, "the file is empty; a compose file needs at least `services:`"));
    }
    let located = |e: serde_saphyr::Error| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        let message = e.to_string();
        // The first line of saphyr's message is enough: the snippet repeats the input.
        let message = message.lines().next().unwrap_or_default().to_string();
        error(path, line, format!("invalid YAML: {message}"))
    };
    let top: Entries = serde_saphyr::from_str(&text).map_err(located)?;
    let mut file = File { path: path.to_path_buf(), top: Vec::new(), services: Vec::new() };
    for (key, value) in top.0 {
        let line = key.referenced.line();
        let key = key.value;
        if !TOP_LEVEL.contains(&key.as_str()) && !key.starts_with("x-") {
            return Err(error(
                path,
                line,
                format!(
                    "unknown top-level key {key:?}: a compose file has {} and x-* extensions",
                    TOP_LEVEL.join(", ")
                ),
            ));
        }
        if key == "services" {
            // Read again with locations (serde_json::Value has none).
            #[derive(Deserialize)]
            struct Services {
                services: Entries,
            }
            let services: Services = serde_saphyr::from_str(&text).map_err(located)?;
            for (name, body) in services.services.0 {
                if !body.is_object() {
                    return Err(error(
                        path,
                        name.referenced.line(),
                        format!("service {:?} must be a mapping", name.value),
                    ));
                }
                file.services.push((name.value, name.referenced.line(), body));
            }
        }
        file.top.push((key, line, value));
    }
    Ok(file)
}

/// Interpolates every string in `v` (not the keys).
fn interpolate_value(v: &mut Value, vars: &Variables) -> Result<(), String> {
    match v {
        Value::String(s) => *s = interpolate(s, vars)?,
        Value::Array(items) => items.iter_mut().try_for_each(|i| interpolate_value(i, vars))?,
        Value::Object(map) => map.values_mut().try_for_each(|i| interpolate_value(i, vars))?,
        _ => {}
    }
    Ok(())
}

/// `environment`/`labels` as a map, from either compose shape.
pub fn as_map(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                None => (s.to_string(), Value::Null),
            })
            .collect(),
        _ => Map::new(),
    }
}

/// Compose's merge of a service with an override (or with what it extends): mappings merge,
/// `environment` and `labels` merge by name, `command`, `entrypoint` and scalars are replaced,
/// other sequences are joined without duplicates.
pub fn merge_service(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        match (k.as_str(), base.get_mut(k)) {
            ("environment" | "labels", Some(existing)) => {
                let mut merged = as_map(existing);
                merged.extend(as_map(v));
                *existing = Value::Object(merged);
            }
            ("command" | "entrypoint", _) | (_, None) => {
                base.insert(k.clone(), v.clone());
            }
            (_, Some(Value::Object(existing))) if v.is_object() => {
                merge_service(existing, v.as_object().expect("checked"));
            }
            (_, Some(Value::Array(existing))) if v.is_array() => {
                for item in v.as_array().expect("checked") {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            (_, Some(existing)) => *existing = v.clone(),
        }
    }
}

/// Reads, interpolates and merges `files` (the first is the main one), resolves `extends` and
/// drops services of profiles that are not active (`COMPOSE_PROFILES`), reporting them.
pub fn load(
    files: &[PathBuf],
    process_env: &std::collections::BTreeMap<String, String>,
    report: &mut Report,
) -> Result<Project, ImportError> {
    let first = files.first().ok_or_else(|| error(Path::new("-f"), 0, "no compose file given"))?;
    let dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let mut vars = Variables { process: process_env.clone(), dotenv: Default::default() };
    let dotenv = dir.join(".env");
    if dotenv.is_file() {
        let text = std::fs::read_to_string(&dotenv).map_err(|e| error(&dotenv, 0, format!("cannot read: {e}")))?;
        let pairs = parse_env_file(&text, &vars).map_err(|(line, m)| error(&dotenv, line as u64, m))?;
        vars.dotenv = pairs.into_iter().collect();
    }
    let mut project = Project { dir, vars, ..Project::default() };
    for path in files {
        let file = read_yaml(path)?;
        for (key, line, mut value) in file.top {
            // Services are interpolated one by one below (their errors name the service's line);
            // x-* extensions only where they are used.
            if key == "services" || key.starts_with("x-") {
                continue;
            }
            interpolate_value(&mut value, &project.vars).map_err(|m| error(&file.path, line, m))?;
            let target = match key.as_str() {
                "name" => {
                    project.name = value.as_str().map(str::to_string);
                    continue;
                }
                "version" => {
                    report.note("(project)", "version", "obsolete in the compose specification; ignored");
                    continue;
                }
                "include" => {
                    report.unmapped("(project)", "include", "not followed: pass the included files with another -f");
                    continue;
                }
                "volumes" => &mut project.volumes,
                "secrets" => &mut project.secrets,
                "configs" => &mut project.configs,
                "networks" => &mut project.networks,
                "services" => continue,
                // x-* extensions: YAML anchors already copied what they hold where it is used.
                _ => continue,
            };
            if let Value::Object(map) = value {
                merge_service(target, &map);
            }
        }
        for (name, line, mut body) in file.services {
            interpolate_value(&mut body, &project.vars)
                .map_err(|m| error(&file.path, line, format!("service {name:?}: {m}")))?;
            let body = body.as_object().cloned().unwrap_or_default();
            match project.services.iter_mut().find(|s| s.name == name) {
                Some(existing) => merge_service(&mut existing.body, &body),
                None => project.services.push(Service { name, file: file.path.clone(), line, body }),
            }
        }
    }
    resolve_extends(&mut project)?;
    let active: BTreeSet<String> = project
        .vars
        .process
        .get("COMPOSE_PROFILES")
        .map(|p| p.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    project.services.retain(|s| {
        let profiles: Vec<String> =
            s.body.get("profiles").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
        if profiles.is_empty() || profiles.iter().any(|p| active.contains(p)) {
            return true;
        }
        report.unmapped(
            &s.name,
            "profiles",
            format!(
                "in profile {}, which compose starts only on request: not imported (set COMPOSE_PROFILES={} to import it)",
                profiles.join(", "),
                profiles[0]
            ),
        );
        false
    });
    for s in &project.services {
        if !s.body.contains_key("image") && !s.body.contains_key("build") {
            return Err(error(
                &s.file,
                s.line,
                format!(
                    "service {:?} has neither image nor build: compose cannot run it; add image: or build:",
                    s.name
                ),
            ));
        }
    }
    Ok(project)
}

/// `extends: base` and `extends: {service: base, file: other.yml}`: the base service merged
/// under the service (recursively; a cycle is an error).
fn resolve_extends(project: &mut Project) -> Result<(), ImportError> {
    for i in 0..project.services.len() {
        let mut seen = vec![project.services[i].name.clone()];
        loop {
            let s = &project.services[i];
            let Some(ext) = s.body.get("extends").cloned() else { break };
            let (base_name, base_file) = match &ext {
                Value::String(n) => (n.clone(), None),
                Value::Object(m) => (
                    m.get("service").and_then(Value::as_str).unwrap_or_default().to_string(),
                    m.get("file").and_then(Value::as_str).map(|f| s.file.parent().unwrap_or(Path::new(".")).join(f)),
                ),
                _ => return Err(error(&s.file, s.line, format!("service {:?}: extends must name a service", s.name))),
            };
            if seen.contains(&base_name) && base_file.is_none() {
                return Err(error(
                    &s.file,
                    s.line,
                    format!("service {:?}: extends forms a cycle through {base_name:?}", s.name),
                ));
            }
            seen.push(base_name.clone());
            let mut base = match &base_file {
                None => project.services.iter().find(|b| b.name == base_name).map(|b| b.body.clone()),
                Some(path) => {
                    let file = read_yaml(path)?;
                    let found = file.services.into_iter().find(|(n, _, _)| *n == base_name);
                    match found {
                        Some((_, line, mut body)) => {
                            interpolate_value(&mut body, &project.vars).map_err(|m| error(path, line, m))?;
                            Some(body.as_object().cloned().unwrap_or_default())
                        }
                        None => None,
                    }
                }
            }
            .ok_or_else(|| {
                error(
                    &s.file,
                    s.line,
                    format!(
                        "service {:?} extends {base_name:?}, which is not defined{}",
                        s.name,
                        base_file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default()
                    ),
                )
            })?;
            let mut own = s.body.clone();
            own.remove("extends");
            base.remove("depends_on");
            // A base that extends again keeps its `extends`: resolved on the next turn.
            merge_service(&mut base, &own);
            project.services[i].body = base;
        }
    }
    Ok(())
}

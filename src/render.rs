//! `berth render`: reads custom resources from YAML files and prints, in apply order, every
//! child object the operator would create. No cluster is involved: the same validation and
//! the same pure builders as the controllers.
//!
//! AppEnvironments are linked against the DatabaseInstances of the same input (same
//! namespace), which render treats as ready; a reference to an instance that is not in the
//! input is an error.

use std::fmt;
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use serde_json::Value;

use crate::api::validation::{self, FieldError};
use crate::api::{self as berth_api, AppEnvironment};
use crate::resources::backup::{AgentTask, JobSettings, agent_job, job_name, snapshot_tags};
use crate::resources::{appenvironment, backuppolicy, databaseinstance};

/// Namespace `render` assumes the operator runs in (the kustomize base installs it there); the
/// DatabaseInstance NetworkPolicy admits it.
pub const RENDER_OPERATOR_NAMESPACE: &str = "berth-system";

/// One problem in one input document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    pub error: FieldError,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.document, self.error)
    }
}

/// A parsed input document.
struct Document {
    file: PathBuf,
    index: usize,
    value: Value,
}

/// Renders every resource in `paths` (files, or directories of `*.yaml`/`*.yml` files, read in
/// name order). Returns the YAML stream, or every problem found; never a partial output.
pub fn render(paths: &[PathBuf]) -> Result<String, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut documents = Vec::new();
    for path in paths {
        match input_files(path) {
            Ok(files) => {
                for file in files {
                    read_documents(&file, &mut documents, &mut problems);
                }
            }
            Err(e) => problems.push(Problem { file: path.clone(), document: 0, error: FieldError::new("file", e) }),
        }
    }
    // Every DatabaseInstance of the input, for the AppEnvironments that reference one. Those
    // that do not parse are reported by their own document below.
    let instances: Vec<berth_api::DatabaseInstance> = documents
        .iter()
        .filter(|d| d.value.get("kind").and_then(Value::as_str) == Some("DatabaseInstance"))
        .filter_map(|d| serde_json::from_value(d.value.clone()).ok())
        .collect();
    let policies: Vec<berth_api::BackupPolicy> = documents
        .iter()
        .filter(|d| d.value.get("kind").and_then(Value::as_str) == Some("BackupPolicy"))
        .filter_map(|d| serde_json::from_value(d.value.clone()).ok())
        .collect();
    let inputs = Inputs { instances: &instances, policies: &policies };
    let mut objects = Vec::new();
    for doc in &documents {
        match render_document(doc, &inputs) {
            Ok(children) => objects.extend(children),
            Err(errors) => problems.extend(errors.into_iter().map(|error| Problem {
                file: doc.file.clone(),
                document: doc.index,
                error,
            })),
        }
    }
    if !problems.is_empty() {
        problems.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
        return Err(problems);
    }
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&object).expect("JSON values serialize to YAML"));
    }
    Ok(out)
}

fn input_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list {}: {e}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// Splits a YAML stream on `---` lines so that every document is parsed (and reported) on
/// its own.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(line.trim_start_matches("---").trim_start().to_string() + "\n");
        } else {
            let last = docs.last_mut().expect("never empty");
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

fn read_documents(file: &Path, out: &mut Vec<Document>, problems: &mut Vec<Problem>) {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem {
                file: file.to_path_buf(),
                document: 0,
                error: FieldError::new("file", format!("cannot read: {e}")),
            });
            return;
        }
    };
    let mut index = 0;
    for doc in split_documents(&text) {
        // Comment-only or empty documents are not counted, as kubectl does not count them.
        if doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        index += 1;
        match serde_saphyr::from_str::<Value>(&doc) {
            Ok(Value::Null) => {}
            Ok(value) => out.push(Document { file: file.to_path_buf(), index, value }),
            Err(e) => problems.push(Problem {
                file: file.to_path_buf(),
                document: index,
                error: FieldError::new(
                    "yaml",
                    format!(
                        "not valid YAML: {}",
                        e.to_string().lines().next().unwrap_or_default().trim_start_matches("error: ")
                    ),
                ),
            }),
        }
    }
}

/// The objects of the input that other documents refer to.
struct Inputs<'a> {
    instances: &'a [berth_api::DatabaseInstance],
    policies: &'a [berth_api::BackupPolicy],
}

fn render_document(doc: &Document, inputs: &Inputs) -> Result<Vec<Value>, Vec<FieldError>> {
    let instances = inputs.instances;
    let value = &doc.value;
    if !value.is_object() {
        return Err(vec![FieldError::new("document", "must be a YAML mapping (a Kubernetes object)")]);
    }
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let expected = format!("{}/{}", berth_api::GROUP, berth_api::VERSION);
    if api_version != expected {
        return Err(vec![FieldError::new(
            "apiVersion",
            format!("{api_version:?} is not a Berth resource; render reads {expected} objects"),
        )]);
    }
    let Some(crd) = berth_api::all_crds().into_iter().find(|c| c.spec.names.kind == kind) else {
        return Err(vec![FieldError::new(
            "kind",
            format!(
                "{kind:?} is not a Berth kind; use AppEnvironment, DatabaseInstance, BackupPolicy, Backup or Restore"
            ),
        )]);
    };
    if value.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(vec![FieldError::new("metadata.name", "is required")]);
    }
    let errors = validation::validate(&validation::crd_schema(&crd), value);
    if !errors.is_empty() {
        return Err(errors);
    }
    match kind {
        "AppEnvironment" => {
            let app: AppEnvironment = typed(value)?;
            let valid = appenvironment::validate(&app)?;
            let links = link_databases(&app, instances)?;
            Ok(appenvironment::build(&valid, &links).to_json())
        }
        "DatabaseInstance" => {
            let db: berth_api::DatabaseInstance = typed(value)?;
            let valid = databaseinstance::validate(&db)?;
            // Placeholders only: render never prints a real secret.
            let credentials = databaseinstance::Credentials::placeholder(&valid);
            Ok(databaseinstance::build(&valid, &credentials, RENDER_OPERATOR_NAMESPACE).to_json())
        }
        "BackupPolicy" => {
            // Its Backups depend on the clock; render checks the schedule, zone and storage.
            backuppolicy::validate(&typed(value)?)?;
            Ok(Vec::new())
        }
        "Backup" => backup_jobs(&typed(value)?, inputs),
        // A Restore's objects come from the bucket; its spec is validated above.
        _ => Ok(Vec::new()),
    }
}

/// The agent Jobs a Backup starts: one per DatabaseInstance of the input that its policy (also
/// in the input) selects. Volumes depend on PVCs in the cluster and are not shown.
fn backup_jobs(backup: &berth_api::Backup, inputs: &Inputs) -> Result<Vec<Value>, Vec<FieldError>> {
    let namespace = backup.namespace().unwrap_or_else(|| "default".into());
    let in_namespace = |ns: Option<String>| ns.unwrap_or_else(|| "default".into()) == namespace;
    let policy = inputs
        .policies
        .iter()
        .find(|p| p.name_any() == backup.spec.policy_name && in_namespace(p.namespace()))
        .ok_or_else(|| {
            vec![FieldError::new(
                "spec.policyName",
                format!(
                    "BackupPolicy {:?} is not in the rendered input (namespace {namespace:?}); pass its manifest with -f as well, or correct the name",
                    backup.spec.policy_name
                ),
            )]
        })?;
    let valid = backuppolicy::validate(policy).map_err(|_| {
        vec![FieldError::new("spec.policyName", "its BackupPolicy is invalid (see the errors of that document)")]
    })?;
    let scope = &valid.policy.spec.scope;
    if !scope.databases.unwrap_or(true) {
        return Ok(Vec::new());
    }
    let selector = match &scope.selector {
        Some(s) => Some(kube::core::Selector::try_from(s.clone()).map_err(|e| {
            vec![FieldError::new("spec.policyName", format!("its spec.scope.selector is invalid: {e}"))]
        })?),
        None => None,
    };
    let owner = crate::resources::meta::owner_reference(backup);
    let mut jobs = Vec::new();
    for db in inputs.instances.iter().filter(|i| in_namespace(i.namespace())) {
        use kube::core::SelectorExt;
        if selector.as_ref().is_some_and(|s| !s.matches(db.labels())) {
            continue;
        }
        let instance = db.name_any();
        let task = match db.spec.engine {
            berth_api::databaseinstance::Engine::Postgres => AgentTask::BackupPostgres { instance: instance.clone() },
            berth_api::databaseinstance::Engine::Rabbitmq => AgentTask::BackupRabbitmq { instance: instance.clone() },
        };
        let item = format!("database/{instance}");
        let name = job_name(&backup.name_any(), &item);
        let requested =
            [backup.spec.service_account_name.as_deref(), valid.policy.spec.service_account_name.as_deref()];
        let account = crate::runtime::impersonate::DEFAULT_ACCOUNT.to_string();
        let account = requested.into_iter().flatten().next().map_or(account, str::to_string);
        let settings = JobSettings {
            owner: &owner,
            namespace: &namespace,
            name: &name,
            image: crate::controllers::DEFAULT_AGENT_IMAGE,
            storage: &valid.policy.spec.storage,
            tags: snapshot_tags(&backup.name_any(), &item),
            consumer: None,
            deadline_seconds: 6 * 3600,
            backoff_limit: 2,
            service_account: Some(&account),
        };
        let mut job = serde_json::to_value(agent_job(&task, &settings)).expect("a Job serializes");
        if backup.uid().is_none() {
            // No uid before the Backup exists in a cluster: no owner reference to show.
            if let Some(meta) = job["metadata"].as_object_mut() {
                meta.remove("ownerReferences");
            }
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// `spec.databases` of `app` resolved against the DatabaseInstances of the input in the
/// app's namespace (a missing namespace meaning `default`, as for kubectl without `-n`).
fn link_databases(
    app: &AppEnvironment,
    instances: &[berth_api::DatabaseInstance],
) -> Result<appenvironment::DatabaseLinks, Vec<FieldError>> {
    let namespace = app.namespace().unwrap_or_else(|| "default".into());
    let same_namespace: Vec<berth_api::DatabaseInstance> = instances
        .iter()
        .filter(|i| i.namespace().unwrap_or_else(|| "default".into()) == namespace)
        .cloned()
        .map(|mut i| {
            // Namespace-less input counts as `default` on both sides. Readiness does not
            // matter: the builders treat a not-ready instance like a ready one.
            i.metadata.namespace = Some(namespace.clone());
            i
        })
        .collect();
    let mut app = app.clone();
    app.metadata.namespace = Some(namespace.clone());
    let links = appenvironment::link(&app, &same_namespace);
    let errors: Vec<FieldError> = app
        .spec
        .databases
        .iter()
        .enumerate()
        .filter(|(_, r)| links.missing.contains(&r.name))
        .map(|(i, r)| {
            FieldError::new(
                format!("spec.databases[{i}].name"),
                format!(
                    "DatabaseInstance {:?} is not in the rendered input (namespace {namespace:?}); pass its manifest with -f as well, or correct the name",
                    r.name
                ),
            )
        })
        .collect();
    if errors.is_empty() { Ok(links) } else { Err(errors) }
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| vec![FieldError::new(e.path().to_string(), e.inner().to_string())])
}

//! `berth import compose`: a docker-compose project to Berth resources and a migration
//! report. `model` reads and resolves the project (files, overrides, `extends`, profiles),
//! `interpolate` does compose's variable substitution and env files, `map` turns services
//! into AppEnvironments, DatabaseInstances, Secrets and ConfigMaps (`processes` folds worker
//! and cron services into their app), `report` says what was not carried over and why.

pub mod cluster;
pub mod interpolate;
pub mod map;
pub mod model;
pub mod processes;
pub mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::api::appenvironment::Tier;
pub use map::{Options, Resources};
pub use model::ImportError;
pub use report::Report;

/// What `berth import` reads.
#[derive(Subcommand, Debug)]
pub enum Source {
    /// A docker-compose project: Berth YAML to stdout (report on stderr) or into a folder.
    Compose(ComposeArgs),
    /// The Deployments of a namespace (and their Services, Ingresses, autoscalers and
    /// disruption budgets) as AppEnvironments, from the current kubeconfig's cluster.
    Cluster(ClusterArgs),
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Namespace to read.
    #[arg(long, required = true)]
    pub namespace: String,
    /// Folder to write berth.yaml and migration-report.md into.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Tier of every AppEnvironment.
    #[arg(long, default_value = "development", value_parser = parse_tier)]
    pub tier: Tier,
    /// Take the Deployments over instead of replacing them: keep each selector (`spec.adopt`)
    /// and report how Berth's pod template differs from the live one (a difference means the
    /// takeover rolls the pods, which the spec must then allow).
    #[arg(long)]
    pub adopt: bool,
}

/// Lists what `berth import cluster` reads.
async fn live(namespace: &str) -> anyhow::Result<cluster::Live> {
    use kube::api::{Api, ListParams};
    let client = kube::Client::try_default().await?;
    let lp = ListParams::default();
    Ok(cluster::Live {
        deployments: Api::namespaced(client.clone(), namespace).list(&lp).await?.items,
        services: Api::namespaced(client.clone(), namespace).list(&lp).await?.items,
        ingresses: Api::namespaced(client.clone(), namespace).list(&lp).await?.items,
        autoscalers: Api::namespaced(client.clone(), namespace).list(&lp).await?.items,
        disruption_budgets: Api::namespaced(client, namespace).list(&lp).await?.items,
    })
}

fn import_cluster(args: ClusterArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let live = match runtime.block_on(live(&args.namespace)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth import cluster: namespace {}: {e:#}", args.namespace);
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::default();
    let apps = cluster::map(&live, &args.namespace, args.tier, args.adopt, &mut report);
    let refs: Vec<&Value> = apps.iter().collect();
    let markdown = report.markdown(&[format!("namespace {}", args.namespace)], &objects(&refs));
    write_out(args.output.as_deref(), &Resources { berth: apps, ..Resources::default() }, &markdown)
}

#[derive(Args, Debug)]
pub struct ComposeArgs {
    /// Compose file; repeat for overrides (later files win), as `docker compose -f`.
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    /// Folder to write berth.yaml, secrets.yaml, configmaps.yaml and migration-report.md into
    /// (created if missing). Without it, everything goes to stdout and the report to stderr.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Namespace of the resources. Defaults to the compose project name.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Tier of every AppEnvironment: development, staging or production.
    #[arg(long, default_value = "development", value_parser = parse_tier)]
    pub tier: Tier,
    /// Image of a service built from source (`--image web=registry.example.com/shop/web:1.2`).
    #[arg(long = "image", value_parser = pair)]
    pub images: Vec<(String, String)>,
    /// Public host name of a service, which gets an Ingress (`--host web=shop.example.com`).
    #[arg(long = "host", value_parser = pair)]
    pub hosts: Vec<(String, String)>,
    /// PostgreSQL version of every PostgreSQL service, instead of the one from its image tag.
    #[arg(long)]
    pub postgres_version: Option<String>,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    match s {
        "development" => Ok(Tier::Development),
        "staging" => Ok(Tier::Staging),
        "production" => Ok(Tier::Production),
        _ => Err(format!("{s:?} is not a tier: use development, staging or production")),
    }
}

fn pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} must be SERVICE=VALUE")),
    }
}

/// The whole import in memory: the resources and the report, or the first bad input.
pub fn import_compose(
    args: &ComposeArgs,
    process_env: &BTreeMap<String, String>,
) -> Result<(Resources, Report), ImportError> {
    let mut report = Report::default();
    let project = model::load(&args.files, process_env, &mut report)?;
    let known: Vec<&str> = project.services.iter().map(|s| s.name.as_str()).collect();
    for (flag, pairs) in [("--image", &args.images), ("--host", &args.hosts)] {
        if let Some((svc, _)) = pairs.iter().find(|(s, _)| !known.contains(&s.as_str())) {
            return Err(ImportError {
                file: flag.into(),
                line: 0,
                message: format!("{svc:?} is not a service of the project ({})", known.join(", ")),
            });
        }
    }
    if let Some(v) = &args.postgres_version {
        crate::resources::databaseinstance::validate::parse_version(crate::api::databaseinstance::Engine::Postgres, v)
            .map_err(|m| ImportError { file: "--postgres-version".into(), line: 0, message: m })?;
    }
    let opts = Options {
        namespace: args.namespace.clone(),
        tier: args.tier,
        images: args.images.iter().cloned().collect(),
        hosts: args.hosts.iter().cloned().collect(),
        postgres_version: args.postgres_version.clone(),
    };
    let resources = map::map(&project, &opts, &mut report)?;
    Ok((resources, report))
}

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_saphyr::to_string(d).expect("JSON values serialize as YAML"))
        .map(|y| format!("---\n{y}"))
        .collect()
}

fn objects(docs: &[&Value]) -> Vec<(String, String)> {
    docs.iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `berth import …`: exit code 0, or 2 on bad input (nothing written).
pub fn main(source: Source) -> ExitCode {
    let args = match source {
        Source::Compose(args) => args,
        Source::Cluster(args) => return import_cluster(args),
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (resources, report) = match import_compose(&args, &env) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth import compose: {e}");
            return ExitCode::from(2);
        }
    };
    let all: Vec<&Value> = resources.berth.iter().chain(&resources.secrets).chain(&resources.config_maps).collect();
    let sources: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
    let markdown = report.markdown(&sources, &objects(&all));
    write_out(args.output.as_deref(), &resources, &markdown)
}

/// The resources and report to stdout and stderr, or into `dir`.
fn write_out(dir: Option<&std::path::Path>, resources: &Resources, markdown: &str) -> ExitCode {
    let count = resources.berth.len() + resources.secrets.len() + resources.config_maps.len();
    let Some(dir) = dir else {
        print!("{}{}{}", yaml(&resources.berth), yaml(&resources.config_maps), yaml(&resources.secrets));
        eprint!("{markdown}");
        return ExitCode::SUCCESS;
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("berth.yaml"), yaml(&resources.berth))?;
        for (file, docs) in [("secrets.yaml", &resources.secrets), ("configmaps.yaml", &resources.config_maps)] {
            let path = dir.join(file);
            if docs.is_empty() {
                // A stale file of an earlier import would be applied with the new ones.
                let _ = std::fs::remove_file(&path);
            } else {
                std::fs::write(path, yaml(docs))?;
            }
        }
        std::fs::write(dir.join("migration-report.md"), markdown)
    };
    if let Err(e) = write() {
        eprintln!("berth import: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let secrets =
        if resources.secrets.is_empty() { "" } else { " (secrets.yaml holds secret values: do not commit it)" };
    eprintln!("wrote {count} objects to {}{secrets}; see {}", dir.display(), dir.join("migration-report.md").display());
    ExitCode::SUCCESS
}

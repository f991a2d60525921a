//! `berth status [-n NS | -A] [-o json]`: fetches the five kinds and prints the report of
//! [`render::status_report`].

use kube::Api;
use kube::api::ListParams;

use super::render::{self, StatusInput};
use super::{CliError, Connection, ExitKind, Output};
use crate::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Every namespace (needs the right to list Berth's kinds cluster-wide).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub async fn run(args: StatusArgs) -> Result<ExitKind, CliError> {
    let session = args.connection.connect().await?;
    let scope = if args.all_namespaces { None } else { Some(session.namespace.as_str()) };
    let input = StatusInput {
        apps: list::<AppEnvironment>(&session.client, scope, "appenvironments").await?,
        databases: list::<DatabaseInstance>(&session.client, scope, "databaseinstances").await?,
        policies: list::<BackupPolicy>(&session.client, scope, "backuppolicies").await?,
        backups: list::<Backup>(&session.client, scope, "backups").await?,
        restores: list::<Restore>(&session.client, scope, "restores").await?,
    };
    let now = super::now();
    let report = render::status_report(&input, now);
    match args.output {
        Output::Json => {
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| CliError::new(ExitKind::Other, format!("cannot encode the report: {e}")))?;
            println!("{json}");
        }
        Output::Text if report.namespaces.is_empty() => {
            let where_ = scope.map_or("any namespace".to_string(), |ns| format!("namespace \"{ns}\""));
            println!("No AppEnvironments, DatabaseInstances, BackupPolicies or Restores in {where_}.");
        }
        Output::Text => print!("{}", render::status_text(&report, now, super::colour_stdout())),
    }
    Ok(ExitKind::Ok)
}

async fn list<K>(client: &kube::Client, namespace: Option<&str>, plural: &str) -> Result<Vec<K>, CliError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (api, where_): (Api<K>, String) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), format!("in namespace \"{ns}\"")),
        None => (Api::all(client.clone()), "in all namespaces (-A)".into()),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(CliError::new(
            ExitKind::NotFound,
            format!(
                "the cluster does not serve {plural}.berth.dev: Berth's CRDs are not installed (helm install berth, or kubectl apply -f crds/)"
            ),
        )),
        Err(e) => Err(CliError::api(e, &format!("list {plural}.berth.dev {where_}"))),
    }
}

//! `berth backup create|describe|logs`.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, ResourceExt};

use super::error::get_opt;
use super::render;
use super::{CliError, Connection, ExitKind, POLL};
use crate::api::backup::BackupSpec;
use crate::api::{Backup, BackupPolicy};
use crate::resources::backup::job_name;
use crate::resources::backup::jobs::CONTAINER_NAME;
use crate::resources::backuppolicy::backup_name;
use crate::resources::meta::owner_label_key;

/// Label of Backups naming their policy (what the operator sets; see controllers::backup).
const POLICY_LABEL: &str = "berth.dev/backuppolicy";
/// Label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

#[derive(clap::Subcommand, Debug)]
pub enum BackupCommand {
    /// Create an on-demand Backup of a BackupPolicy now.
    Create(CreateArgs),
    /// Items, sizes, durations, errors and snapshot ids of a Backup.
    Describe(NameArgs),
    /// The agent Jobs' logs while they exist; afterwards the per-item errors in status.
    Logs(NameArgs),
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The BackupPolicy whose storage and scope apply.
    #[arg(long)]
    pub policy: String,
    /// Name of the Backup (default: `<policy>-<UTC yyyymmddhhmmss>`, as the schedule names them).
    #[arg(long)]
    pub name: Option<String>,
    /// Wait until it ends, showing progress; the exit code follows its phase.
    #[arg(long)]
    pub wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The Backup's name.
    pub name: String,
}

pub async fn run(command: BackupCommand) -> Result<ExitKind, CliError> {
    match command {
        BackupCommand::Create(args) => create(args).await,
        BackupCommand::Describe(args) => describe(args).await,
        BackupCommand::Logs(args) => logs(args).await,
    }
}

async fn create(args: CreateArgs) -> Result<ExitKind, CliError> {
    let session = args.connection.connect().await?;
    let ns = session.namespace.as_str();
    let policies: Api<BackupPolicy> = Api::namespaced(session.client.clone(), ns);
    if get_opt(&policies, "BackupPolicy", &args.policy, ns).await?.is_none() {
        return Err(CliError::not_found(
            "BackupPolicy",
            &args.policy,
            ns,
            &format!("`kubectl get backuppolicies -n {ns}` lists them; -n picks another namespace"),
        ));
    }
    let name = args.name.clone().unwrap_or_else(|| backup_name(&args.policy, super::now()));
    let mut backup = Backup::new(
        &name,
        BackupSpec { policy_name: args.policy.clone(), delete_data: false, service_account_name: None },
    );
    backup.metadata.labels = Some(BTreeMap::from([(POLICY_LABEL.to_string(), args.policy.clone())]));
    let backups: Api<Backup> = Api::namespaced(session.client.clone(), ns);
    let action = format!("create backups.berth.dev in namespace \"{ns}\"");
    match backups.create(&PostParams::default(), &backup).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(CliError::new(
                ExitKind::Invalid,
                format!("Backup \"{name}\" already exists in namespace \"{ns}\": pick another --name"),
            ));
        }
        Err(e) => return Err(CliError::api(e, &action)),
    }
    println!("Backup {ns}/{name} created (policy {})", args.policy);
    if !args.wait {
        println!("Follow it with: berth backup describe {name} -n {ns}");
        return Ok(ExitKind::Ok);
    }
    let done = wait(&backups, &name, ns).await?;
    print!("{}", render::backup_outcome(&done));
    Ok(ExitKind::of_phase(done.status.as_ref().and_then(|s| s.phase.as_deref())))
}

/// Polls the Backup until its phase is terminal, printing each change of progress.
async fn wait(api: &Api<Backup>, name: &str, ns: &str) -> Result<Backup, CliError> {
    let mut last = String::new();
    loop {
        let Some(backup) = get_opt(api, "Backup", name, ns).await? else {
            return Err(CliError::new(ExitKind::Other, format!("Backup {ns}/{name} was deleted while waiting for it")));
        };
        let progress = render::backup_progress(&backup);
        if progress != last {
            println!("{progress}");
            last = progress;
        }
        let phase = backup.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Completed" | "PartiallyFailed" | "Failed")) {
            return Ok(backup);
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn get_backup(session: &super::Session, name: &str) -> Result<Backup, CliError> {
    let ns = session.namespace.as_str();
    let backups: Api<Backup> = Api::namespaced(session.client.clone(), ns);
    get_opt(&backups, "Backup", name, ns).await?.ok_or_else(|| {
        CliError::not_found(
            "Backup",
            name,
            ns,
            &format!("`kubectl get backups -n {ns}` lists them; -n picks another namespace"),
        )
    })
}

/// The agent Jobs of a Backup (they carry its name in a label).
async fn agent_jobs(session: &super::Session, backup: &str) -> Result<Vec<Job>, CliError> {
    let ns = session.namespace.as_str();
    let jobs: Api<Job> = Api::namespaced(session.client.clone(), ns);
    let selector = format!("{}={backup}", owner_label_key("Backup"));
    jobs.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .map_err(|e| CliError::api(e, &format!("list jobs.batch in namespace \"{ns}\"")))
}

async fn describe(args: NameArgs) -> Result<ExitKind, CliError> {
    let session = args.connection.connect().await?;
    let backup = get_backup(&session, &args.name).await?;
    // Durations come from the agent Jobs; without the right to read Jobs, they are left out.
    let jobs = match agent_jobs(&session, &args.name).await {
        Ok(jobs) => jobs,
        Err(e) if e.kind == ExitKind::Forbidden => Vec::new(),
        Err(e) => return Err(e),
    };
    print!("{}", render::backup_describe(&backup, &jobs, super::now(), super::colour_stdout()));
    Ok(ExitKind::Ok)
}

async fn logs(args: NameArgs) -> Result<ExitKind, CliError> {
    let session = args.connection.connect().await?;
    let ns = session.namespace.clone();
    let backup = get_backup(&session, &args.name).await?;
    let jobs = agent_jobs(&session, &args.name).await?;
    if jobs.is_empty() {
        print!("{}", render::backup_recorded_errors(&backup));
        return Ok(ExitKind::Ok);
    }
    let items: Vec<String> = backup.status.iter().flat_map(|s| s.items.iter().map(|i| i.name.clone())).collect();
    let item_of = |job: &str| items.iter().find(|i| job_name(&args.name, i) == job).cloned();
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), &ns);
    for job in &jobs {
        let job_name = job.name_any();
        let item = item_of(&job_name).unwrap_or_else(|| "?".into());
        let selector = format!("{JOB_NAME_LABEL}={job_name}");
        let mut list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| CliError::api(e, &format!("list pods in namespace \"{ns}\"")))?
            .items;
        list.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        if list.is_empty() {
            println!("==> {item}: Job {job_name} has no pods left <==");
        }
        for pod in list {
            println!("==> {item}: Job {job_name}, pod {} <==", pod.name_any());
            let params = LogParams { container: Some(CONTAINER_NAME.into()), ..LogParams::default() };
            match pods.logs(&pod.name_any(), &params).await {
                Ok(text) => print!("{text}{}", if text.ends_with('\n') || text.is_empty() { "" } else { "\n" }),
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    return Err(CliError::api(kube::Error::Api(s), &format!("get pods/log in namespace \"{ns}\"")));
                }
                Err(kube::Error::Api(s)) => {
                    println!("(cannot read the log of pod {}: {} ({}))", pod.name_any(), s.message, s.code)
                }
                Err(e) => println!("(cannot read the log of pod {}: {e})", pod.name_any()),
            }
        }
        if let Some(error) =
            backup.status.iter().flat_map(|s| &s.items).find(|i| i.name == item).and_then(|i| i.error.as_ref())
        {
            println!("recorded error of {item}: {error}");
        }
    }
    Ok(ExitKind::Ok)
}

//! `berth restore create --from-backup NAME | --policy P [--namespace-mapping a=b]
//! [--include-kinds ...] [--dry-run] [--wait]`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};

use super::error::get_opt;
use super::render::{self, NamespaceCheck, PlanInput};
use super::{CliError, Connection, ExitKind, POLL};
use crate::api::restore::RestoreSpec;
use crate::api::{Backup, BackupPolicy, Restore};
use crate::resources::backuppolicy::backup_name;

#[derive(clap::Subcommand, Debug)]
pub enum RestoreCommand {
    /// Create a Restore of a Backup, or of a policy's newest Completed Backup.
    Create(CreateArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["from_backup", "policy"])))]
pub struct CreateArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The Backup to restore.
    #[arg(long)]
    pub from_backup: Option<String>,
    /// Restore the newest Completed Backup of this BackupPolicy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Restore namespace SOURCE's objects into TARGET (repeatable, or comma-separated).
    #[arg(long, value_name = "SOURCE=TARGET", value_delimiter = ',')]
    pub namespace_mapping: Vec<String>,
    /// Restore only these kinds, e.g. `Secret,DatabaseInstance` (all when absent).
    #[arg(long, value_delimiter = ',')]
    pub include_kinds: Vec<String>,
    /// Never restore these kinds.
    #[arg(long, value_delimiter = ',')]
    pub exclude_kinds: Vec<String>,
    /// Print the plan, computed from the Backup's status, and create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until it ends, showing its stages; the exit code follows its phase.
    #[arg(long)]
    pub wait: bool,
    /// Name of the Restore (default: `restore-<UTC yyyymmddhhmmss>`).
    #[arg(long)]
    pub name: Option<String>,
}

pub async fn run(command: RestoreCommand) -> Result<ExitKind, CliError> {
    match command {
        RestoreCommand::Create(args) => create(args).await,
    }
}

/// `a=b` pairs of `--namespace-mapping`.
pub fn parse_mapping(entries: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
        let Some((from, to)) = entry.split_once('=').filter(|(a, b)| !a.trim().is_empty() && !b.trim().is_empty())
        else {
            return Err(CliError::new(
                ExitKind::Invalid,
                format!("--namespace-mapping {entry:?}: write SOURCE=TARGET, e.g. --namespace-mapping shop=shop-copy"),
            ));
        };
        if out.insert(from.trim().to_string(), to.trim().to_string()).is_some() {
            return Err(CliError::new(
                ExitKind::Invalid,
                format!("--namespace-mapping maps {from:?} twice; give each source namespace one target"),
            ));
        }
    }
    Ok(out)
}

/// The Restore the flags describe, checked by the same rules as the operator's plan (kinds,
/// namespace names), with the spec's field names turned back into flags.
pub fn build(args: &CreateArgs, name: &str) -> Result<Restore, CliError> {
    let spec = RestoreSpec {
        backup_name: args.from_backup.clone(),
        policy_name: args.policy.clone(),
        namespace_mapping: parse_mapping(&args.namespace_mapping)?,
        include_kinds: args.include_kinds.clone(),
        exclude_kinds: args.exclude_kinds.clone(),
        ..RestoreSpec::default()
    };
    let restore = Restore::new(name, spec);
    if let Err(errors) = crate::resources::restore::plan(&restore, Vec::new()) {
        let message = errors
            .iter()
            .map(|e| {
                e.to_string()
                    .replace("spec.includeKinds", "--include-kinds")
                    .replace("spec.excludeKinds", "--exclude-kinds")
                    .replace("spec.namespaceMapping", "--namespace-mapping")
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(CliError::new(ExitKind::Invalid, message));
    }
    Ok(restore)
}

async fn create(args: CreateArgs) -> Result<ExitKind, CliError> {
    let session = args.connection.connect().await?;
    let ns = session.namespace.clone();
    let name = args.name.clone().unwrap_or_else(|| backup_name("restore", super::now()));
    let mut restore = build(&args, &name)?;
    let backup = resolve_backup(&session.client, &ns, &args).await?;
    let restores: Api<Restore> = Api::namespaced(session.client.clone(), &ns);
    let action = format!("create restores.berth.dev in namespace \"{ns}\"");
    if args.dry_run {
        // The API server's dry run checks the schema, admission and the user's right to create
        // it, and stores nothing.
        let params = PostParams { dry_run: true, ..PostParams::default() };
        restores.create(&params, &restore).await.map_err(|e| CliError::api(e, &action))?;
        let policies: Api<BackupPolicy> = Api::namespaced(session.client.clone(), &ns);
        let policy = policies.get_opt(&backup.spec.policy_name).await.ok().flatten();
        let source = backup.namespace().unwrap_or_default();
        let target = crate::resources::restore::target_namespace(&restore, &source);
        let targets = if target == ns {
            Vec::new()
        } else {
            vec![(target.clone(), namespace_check(&session.client, &target).await)]
        };
        let input = PlanInput { restore: &restore, backup: &backup, policy: policy.as_ref(), targets };
        print!("{}", render::restore_plan(&input, super::now()));
        return Ok(ExitKind::Ok);
    }
    restore.metadata.namespace = Some(ns.clone());
    match restores.create(&PostParams::default(), &restore).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(CliError::new(
                ExitKind::Invalid,
                format!("Restore \"{name}\" already exists in namespace \"{ns}\": pick another --name"),
            ));
        }
        Err(e) => return Err(CliError::api(e, &action)),
    }
    println!("Restore {ns}/{name} created from Backup {}", backup.name_any());
    if !args.wait {
        println!("Follow it with: kubectl get restore {name} -n {ns} -w");
        return Ok(ExitKind::Ok);
    }
    let mut last = String::new();
    loop {
        let Some(current) = get_opt(&restores, "Restore", &name, &ns).await? else {
            return Err(CliError::new(
                ExitKind::Other,
                format!("Restore {ns}/{name} was deleted while waiting for it"),
            ));
        };
        let progress = render::restore_progress(&current);
        if progress != last {
            println!("{progress}");
            last = progress;
        }
        let phase = current.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Completed" | "PartiallyFailed" | "Failed")) {
            print!("{}", render::restore_outcome(&current));
            return Ok(ExitKind::of_phase(phase));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The Backup the restore reads: the named one, or the newest Completed Backup of the policy
/// (the operator's own rule). Refused early when it cannot be restored.
async fn resolve_backup(client: &kube::Client, ns: &str, args: &CreateArgs) -> Result<Backup, CliError> {
    let backups: Api<Backup> = Api::namespaced(client.clone(), ns);
    if let Some(name) = &args.from_backup {
        let backup = get_opt(&backups, "Backup", name, ns).await?.ok_or_else(|| {
            CliError::not_found(
                "Backup",
                name,
                ns,
                &format!("`kubectl get backups -n {ns}` lists them; -n picks another namespace"),
            )
        })?;
        let phase = backup.status.as_ref().and_then(|s| s.phase.clone());
        return match phase.as_deref() {
            Some("Completed" | "PartiallyFailed") => Ok(backup),
            Some("Failed") => Err(CliError::new(
                ExitKind::NoCompletedBackup,
                format!(
                    "Backup \"{name}\" Failed and cannot be restored; `berth backup describe {name} -n {ns}` says why; restore another with --from-backup or the newest of its policy with --policy {}",
                    backup.spec.policy_name
                ),
            )),
            other => Err(CliError::new(
                ExitKind::NoCompletedBackup,
                format!(
                    "Backup \"{name}\" is {} and cannot be restored yet; wait for it (`berth backup describe {name} -n {ns}`)",
                    other.unwrap_or("New")
                ),
            )),
        };
    }
    let policy = args.policy.as_deref().expect("clap requires --from-backup or --policy");
    let policies: Api<BackupPolicy> = Api::namespaced(client.clone(), ns);
    if get_opt(&policies, "BackupPolicy", policy, ns).await?.is_none() {
        return Err(CliError::not_found(
            "BackupPolicy",
            policy,
            ns,
            &format!("`kubectl get backuppolicies -n {ns}` lists them; -n picks another namespace"),
        ));
    }
    let list = backups
        .list(&ListParams::default().labels(&format!("berth.dev/backuppolicy={policy}")))
        .await
        .map_err(|e| CliError::api(e, &format!("list backups.berth.dev in namespace \"{ns}\"")))?;
    let completion = |b: &Backup| b.status.as_ref().and_then(|s| s.completion_time.clone()).map(|t| t.0);
    list.items
        .into_iter()
        .filter(|b| b.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Completed"))
        .max_by_key(completion)
        .ok_or_else(|| {
            CliError::new(
                ExitKind::NoCompletedBackup,
                format!("BackupPolicy \"{policy}\" in namespace \"{ns}\" has no Completed Backup yet: take one with `berth backup create --policy {policy} -n {ns} --wait`"),
            )
        })
}

async fn namespace_check(client: &kube::Client, name: &str) -> NamespaceCheck {
    match Api::<Namespace>::all(client.clone()).get_opt(name).await {
        Ok(Some(_)) => NamespaceCheck::Exists,
        Ok(None) => NamespaceCheck::Missing,
        Err(_) => NamespaceCheck::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mapping: &[&str], include: &[&str]) -> CreateArgs {
        CreateArgs {
            connection: Connection::default(),
            from_backup: Some("b".into()),
            policy: None,
            namespace_mapping: mapping.iter().map(|s| s.to_string()).collect(),
            include_kinds: include.iter().map(|s| s.to_string()).collect(),
            exclude_kinds: Vec::new(),
            dry_run: false,
            wait: false,
            name: None,
        }
    }

    #[test]
    fn flags_become_the_spec() {
        let r = build(&args(&["shop=shop-copy"], &["Secret"]), "r1").unwrap();
        assert_eq!(r.spec.backup_name.as_deref(), Some("b"));
        assert_eq!(r.spec.namespace_mapping, BTreeMap::from([("shop".to_string(), "shop-copy".to_string())]));
        assert_eq!(r.spec.include_kinds, ["Secret"]);
    }

    #[test]
    fn bad_flags_are_named_with_the_fix() {
        let e = build(&args(&["shop"], &[]), "r").unwrap_err();
        assert_eq!(e.kind, ExitKind::Invalid);
        assert!(e.message.contains("--namespace-mapping \"shop\": write SOURCE=TARGET"), "{}", e.message);
        let e = build(&args(&["a=b", "a=c"], &[]), "r").unwrap_err();
        assert!(e.message.contains("maps \"a\" twice"), "{}", e.message);
        let e = build(&args(&["shop=Shop_Copy"], &[]), "r").unwrap_err();
        assert!(e.message.starts_with("--namespace-mapping.shop:"), "{}", e.message);
        let e = build(&args(&[], &["not a kind!"]), "r").unwrap_err();
        assert!(e.message.starts_with("--include-kinds[0]:"), "{}", e.message);
    }
}

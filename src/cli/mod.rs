//! `berth` for people: `status`, `backup create/describe/logs`, `restore create`, `rollback`
//! and `promote`, in the
//! operator's binary. Installed as `kubectl-berth` (a symlink or copy on `PATH`) it is also the
//! kubectl plugin `kubectl berth ...`.
//!
//! Each command fetches the objects it needs (`status`, `backup`, `restore`) and hands them to
//! the pure formatting functions of [`render`]. Every failure is a [`CliError`] that names the
//! object and the fix, and exits with its own code ([`ExitKind`]).

pub mod backup;
pub mod error;
pub mod promote;
pub mod render;
pub mod restore;
pub mod rollback;
pub mod spec_change;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

pub use error::{CliError, ExitKind};

/// The name the binary has when kubectl runs it as a plugin.
pub const PLUGIN_NAME: &str = "kubectl-berth";

/// How often `--wait` looks at the object again.
const POLL: Duration = Duration::from_secs(1);

/// The commands for people, flattened into the binary's own subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show each AppEnvironment with its conditions, DatabaseInstances, BackupPolicy and last Restore.
    Status(status::StatusArgs),
    /// Take a backup now, describe one, or read its agents' logs.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Restore a Backup (or a policy's newest), in place or into other namespaces.
    #[command(subcommand)]
    Restore(restore::RestoreCommand),
    /// Re-apply a revision of an AppEnvironment recorded in status.history, as a normal change.
    Rollback(rollback::RollbackArgs),
    /// Copy an AppEnvironment's image (and chosen fields) from one namespace to another.
    Promote(promote::PromoteArgs),
}

/// Whether the process was started as `kubectl-berth` (kubectl's plugin name).
pub fn invoked_as_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|name| name == PLUGIN_NAME || name.to_string_lossy() == format!("{PLUGIN_NAME}.exe"))
}

/// The usual kubectl connection flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Connection {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// A client and the namespace commands work in.
pub struct Session {
    pub client: kube::Client,
    pub namespace: String,
}

impl Connection {
    /// Connects as kubectl would: the kubeconfig (or the in-cluster account), the context, the
    /// namespace of `-n` or the context's.
    pub async fn connect(&self) -> Result<Session, CliError> {
        let options = KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    CliError::new(
                        ExitKind::Connection,
                        format!("cannot read kubeconfig {}: {e}; fix the path given to --kubeconfig", path.display()),
                    )
                })?;
                kube::Config::from_custom_kubeconfig(file, &options).await.map_err(|e| kubeconfig_error(&e))?
            }
            None if self.context.is_some() => {
                kube::Config::from_kubeconfig(&options).await.map_err(|e| kubeconfig_error(&e))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                CliError::new(
                    ExitKind::Connection,
                    format!("no cluster to talk to: {e}; set KUBECONFIG or pass --kubeconfig and --context"),
                )
            })?,
        };
        let namespace = self.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config)
            .map_err(|e| CliError::new(ExitKind::Connection, format!("cannot build a client for the cluster: {e}")))?;
        Ok(Session { client, namespace })
    }
}

fn kubeconfig_error(e: &kube::config::KubeconfigError) -> CliError {
    CliError::new(
        ExitKind::Connection,
        format!("kubeconfig: {e}; check --kubeconfig and --context (`kubectl config get-contexts` lists them)"),
    )
}

/// Runs one command and returns the process's exit code; errors are printed, never a trace.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let result = match command {
        Command::Status(args) => status::run(args).await,
        Command::Backup(cmd) => backup::run(cmd).await,
        Command::Restore(cmd) => restore::run(cmd).await,
        Command::Rollback(args) => rollback::run(args).await,
        Command::Promote(args) => promote::run(args).await,
    };
    Ok(match result {
        Ok(kind) => kind.code(),
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.kind.code()
        }
    })
}

/// Whether stdout is a terminal that takes colours (not piped, `NO_COLOR` unset).
pub fn colour_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The current time (the one impure input of the formatters).
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Output format of commands that print objects.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// For people: a tree, problems coloured on a terminal.
    #[default]
    Text,
    /// Machine output.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_name_is_recognised_from_any_path() {
        for argv0 in ["kubectl-berth", "/usr/local/bin/kubectl-berth", "./kubectl-berth"] {
            assert!(invoked_as_plugin(Some(std::ffi::OsStr::new(argv0))), "{argv0}");
        }
        for argv0 in ["berth", "/usr/bin/berth", "kubectl-berthx", "kubectl"] {
            assert!(!invoked_as_plugin(Some(std::ffi::OsStr::new(argv0))), "{argv0}");
        }
        assert!(!invoked_as_plugin(None));
    }

    #[tokio::test]
    async fn a_bad_kubeconfig_or_context_is_named_with_the_fix() {
        let missing = Connection { kubeconfig: Some("/nonexistent/kubeconfig".into()), ..Default::default() };
        let e = missing.connect().await.err().expect("no such file");
        assert_eq!(e.kind, ExitKind::Connection);
        assert!(e.message.contains("/nonexistent/kubeconfig") && e.message.contains("--kubeconfig"), "{}", e.message);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: ctx\n  context: {cluster: c, user: u, namespace: shop}\ncurrent-context: ctx\n",
        )
        .unwrap();
        let wrong = Connection { kubeconfig: Some(path.clone()), context: Some("nope".into()), ..Default::default() };
        let e = wrong.connect().await.err().expect("no such context");
        assert_eq!(e.kind, ExitKind::Connection);
        assert!(e.message.contains("nope") && e.message.contains("--context"), "{}", e.message);

        let session = Connection { kubeconfig: Some(path.clone()), ..Default::default() }.connect().await.unwrap();
        assert_eq!(session.namespace, "shop", "the context's namespace");
        let session = Connection { kubeconfig: Some(path), namespace: Some("other".into()), ..Default::default() }
            .connect()
            .await
            .unwrap();
        assert_eq!(session.namespace, "other", "-n wins");
    }
}

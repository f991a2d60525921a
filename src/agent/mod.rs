//! The data path that runs inside Jobs (`berth agent …`). Filled in by the backup work.

/// Arguments of `berth agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {}

/// Runs one agent command; the returned code is the process exit status.
pub async fn run(_args: AgentArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("berth agent: no commands yet")
}

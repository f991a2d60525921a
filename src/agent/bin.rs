//! `berth-agent`: the agent CLI as its own binary (same as `berth agent …`), so that the
//! data path can be tested and benchmarked independently of the operator's `main.rs`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "Berth backup agent (same as `berth agent`)"
)]
struct Cli {
    #[command(flatten)]
    args: berth::agent::AgentArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(berth::agent::run(cli.args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

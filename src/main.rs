//! The `berth` binary: the operator, CRD printing, offline rendering, the data-path agent and
//! the commands for people (`status`, `backup`, `restore`; also `kubectl berth` as `kubectl-berth`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// The data path allocates and frees megabyte buffers per chunk on many threads; glibc returns
// them to the kernel and faults fresh zeroed pages in again, mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults for the whole process, set before its first allocation (an agent runs
/// under a Job's memory limit, which sees the peak RSS). Committing whole arenas up front and
/// holding freed pages kept 2.5-3x the live heap resident: a restore of 100k files peaked at
/// 500 MiB on an 86 MiB heap, 175 MiB without (`scripts/bench-scale.sh`). The
/// `MIMALLOC_ARENA_EAGER_COMMIT` and `MIMALLOC_PURGE_DELAY` environment variables still win.
#[used]
#[unsafe(link_section = ".init_array")]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    extern "C" fn set() {
        // `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc.h (the same
        // numbers in v2 and v3; libmimalloc-sys does not name them).
        for (option, env) in [(4, c"MIMALLOC_ARENA_EAGER_COMMIT"), (15, c"MIMALLOC_PURGE_DELAY")] {
            // SAFETY: getenv of a NUL-terminated name, and a plain integer option, both before
            // main (no other thread exists) and before any allocation reads the option.
            unsafe {
                if libc::getenv(env.as_ptr()).is_null() {
                    libmimalloc_sys::mi_option_set(option, 0);
                }
            }
        }
    }
    set
};

/// `berth --version`: the crate version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("BERTH_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "berth", version = VERSION, about = "Kubernetes operator for app environments, databases and backups")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every controller against the cluster of the current kubeconfig or service account.
    Operator(Box<berth::runtime::OperatorArgs>),
    /// Print every CRD as YAML, or write one file per kind into a directory.
    Crds {
        /// Directory to write `<plural>.berth.dev.yaml` files into (created if missing).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Directory to write the Helm chart's CRD templates into (`charts/berth/templates/crds`).
        #[arg(long)]
        chart_dir: Option<PathBuf>,
    },
    /// Print the child objects the operator would create for the given resources.
    Render {
        /// A YAML file (multi-document) or a directory of them; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Turn another tool's description of an app into Berth resources and a migration report.
    #[command(subcommand)]
    Import(berth::import::Source),
    /// Data-path commands that run inside backup and restore Jobs.
    Agent(Box<berth::agent::AgentArgs>),
    #[command(flatten)]
    People(berth::cli::Command),
}

fn main() -> ExitCode {
    let mut command = Cli::command();
    if berth::cli::invoked_as_plugin(std::env::args_os().next().as_deref()) {
        command = command.bin_name("kubectl berth");
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Crds { dir, chart_dir } => match berth::crds::write(dir.as_deref(), chart_dir.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth crds: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Render { files } => match berth::render::render(&files) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                ExitCode::from(2)
            }
        },
        Command::Import(source) => berth::import::main(source),
        Command::Operator(args) => run_async(berth::runtime::run(*args)),
        Command::People(command) => run_async(berth::cli::run(command)),
        Command::Agent(args) => run_async(berth::agent::run(*args)),
    }
}

fn run_async<F: Future<Output = anyhow::Result<ExitCode>>>(fut: F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(fut);
    // Dropping the runtime would wait for every blocking-pool thread; one stuck in a system
    // call must not keep a process alive that has to exit (an operator that lost its lease).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

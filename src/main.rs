//! The `berth` binary: the operator, CRD printing, offline rendering, the data-path agent and
//! the commands for people (`status`, `backup`, `restore`; also `kubectl berth` as `kubectl-berth`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// The allocator is chosen per process, before its first allocation, by what the process is:
// - mimalloc for everything but a restore. A backup allocates and frees megabyte buffers per
//   chunk on many threads; glibc returns them to the kernel and faults fresh zeroed pages in
//   again, mimalloc keeps and reuses them.
// - glibc malloc, with fixed thresholds, for `berth agent restore`. A restore hands its read
//   buffers from thread to thread, and mimalloc's per-thread pages then held twice the live
//   heap: a million-file restore peaked at 282 MiB under mimalloc and at 156 MiB here, as fast
//   (`scripts/bench-scale.sh`). An agent Job's memory limit sees the peak.
// `--features system-allocator` uses glibc throughout, for heap profilers (heaptrack).
#[global_allocator]
static ALLOCATOR: ProcessAllocator = ProcessAllocator;

/// Set once, before `main` and before any allocation (see [`CHOOSE_ALLOCATOR`]); never after.
static USE_SYSTEM: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(cfg!(feature = "system-allocator"));

struct ProcessAllocator;

impl ProcessAllocator {
    fn system() -> bool {
        USE_SYSTEM.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: every call goes to the allocator chosen before the first allocation, which never
// changes, so memory is always freed by the allocator that gave it.
unsafe impl std::alloc::GlobalAlloc for ProcessAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { if Self::system() { std::alloc::System.alloc(layout) } else { mimalloc::MiMalloc.alloc(layout) } }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe {
            if Self::system() {
                std::alloc::System.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as is, to the allocator that gave `ptr`.
        unsafe {
            if Self::system() {
                std::alloc::System.dealloc(ptr, layout)
            } else {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is, to the allocator that gave `ptr`.
        unsafe {
            if Self::system() {
                std::alloc::System.realloc(ptr, layout, new_size)
            } else {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}

/// Whether `argv` is `berth agent [flags] restore ...` (the agent's flags come before its
/// subcommand; none of them takes the value `restore`).
fn is_agent_restore(args: &[&[u8]]) -> bool {
    let mut words = args.iter().skip(1).filter(|a| !a.starts_with(b"-"));
    words.next() == Some(&&b"agent"[..]) && words.any(|w| *w == b"restore")
}

/// Runs before `main` (glibc passes `argc`/`argv` to `.init_array` functions), before the
/// first allocation: picks the allocator and sets its options. For mimalloc: no eager arena
/// commit and immediate purge (holding freed pages kept 2.5-3x the live heap resident). For
/// glibc: buffers below 32 MiB from the heap, trimmed above 128 MiB, at most 4 arenas. The
/// `MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY` and `GLIBC_TUNABLES` variables win.
#[used]
#[unsafe(link_section = ".init_array")]
static CHOOSE_ALLOCATOR: extern "C" fn(libc::c_int, *const *const libc::c_char) = {
    extern "C" fn choose(argc: libc::c_int, argv: *const *const libc::c_char) {
        let mut words: [&[u8]; 16] = [&[]; 16];
        let count = (argc.max(0) as usize).min(words.len());
        for (i, word) in words.iter_mut().enumerate().take(count) {
            // SAFETY: glibc passes the process's argc NUL-terminated strings in argv.
            *word = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) }.to_bytes();
        }
        if !argv.is_null() && is_agent_restore(&words[..count]) {
            USE_SYSTEM.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: getenv of NUL-terminated names and plain integer options, before main (no
        // other thread exists) and before any allocation reads them.
        unsafe {
            if ProcessAllocator::system() {
                if libc::getenv(c"GLIBC_TUNABLES".as_ptr()).is_null() {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
                    libc::mallopt(libc::M_ARENA_MAX, 4);
                }
                return;
            }
            // `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc.h (the
            // same numbers in v2 and v3; libmimalloc-sys does not name them).
            for (option, env) in [(4, c"MIMALLOC_ARENA_EAGER_COMMIT"), (15, c"MIMALLOC_PURGE_DELAY")] {
                if libc::getenv(env.as_ptr()).is_null() {
                    libmimalloc_sys::mi_option_set(option, 0);
                }
            }
        }
    }
    choose
};

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_agent_restore_uses_the_system_allocator() {
        let yes: [&[&[u8]]; 3] = [
            &[b"berth", b"agent", b"restore", b"latest"],
            &[b"/usr/bin/berth", b"agent", b"--json", b"restore", b"abc", b"--target", b"/data"],
            &[b"berth", b"--verbose", b"agent", b"restore"],
        ];
        for args in yes {
            assert!(super::is_agent_restore(args), "{args:?}");
        }
        let no: [&[&[u8]]; 4] =
            [&[b"berth", b"agent", b"backup-dir", b"/data"], &[b"berth", b"restore", b"create"], &[b"berth"], &[]];
        for args in no {
            assert!(!super::is_agent_restore(args), "{args:?}");
        }
    }
}

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

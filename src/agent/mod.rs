//! The data path that runs inside Jobs (`berth agent …`): database dumps, volume data,
//! restores and repository maintenance. An ordinary CLI over the library in
//! [`crate::backup`].
//!
//! Repository location and secrets come from flags or the environment:
//! `BERTH_REPOSITORY` (`s3://bucket/prefix`), `BERTH_S3_ENDPOINT`, `BERTH_S3_REGION`
//! (or `AWS_REGION`), `BERTH_S3_CA_FILE`, `BERTH_S3_INSECURE_HTTP` (a plain `http://`
//! endpoint is refused without it), `BERTH_S3_SSE` and `BERTH_S3_SSE_KMS_KEY_ID`
//! (server-side encryption of every written object), AWS credentials from the usual chain
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`, web
//! identity), and the repository key from `BERTH_REPOSITORY_KEY_FILE` (a mounted Secret) or
//! `BERTH_REPOSITORY_KEY`.

pub mod postgres;
pub mod progress;
pub mod rabbitmq;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::backup::{
    Repository, RetentionPolicy, S3Config, ServerSideEncryption, Storage, StorageConfig, WriteOptions, WriterStats,
    archiver, census::Census, lock, ops, prefetch::MetadataPrefetch,
};
use progress::{ProgressMode, Reporter, Source};

/// Arguments of `berth agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the repository is and how to open it.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArgs {
    /// Repository URL: s3://bucket/prefix (or file:///path).
    #[arg(long = "repo", env = "BERTH_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// S3 endpoint for non-AWS servers, e.g. https://minio:9000.
    #[arg(long, env = "BERTH_S3_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Allow a plain http:// endpoint (tests, an in-cluster MinIO): credentials and objects
    /// then travel unprotected on the network.
    #[arg(long, env = "BERTH_S3_INSECURE_HTTP", global = true)]
    pub insecure_http: bool,
    /// Seconds one S3 request may go without completing, retries included, before the work
    /// fails (a server that stops answering).
    #[arg(long, env = "BERTH_S3_NO_PROGRESS_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub no_progress_timeout: u64,
    /// S3 region (default: AWS_REGION, the AWS config files, then us-east-1).
    #[arg(long, env = "BERTH_S3_REGION", global = true)]
    pub region: Option<String>,
    /// Use virtual-hosted-style addressing instead of path style.
    #[arg(long, env = "BERTH_S3_VIRTUAL_HOSTED", global = true)]
    pub virtual_hosted: bool,
    /// Extra CA certificates (PEM) for the S3 endpoint.
    #[arg(long, env = "BERTH_S3_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// S3 server-side encryption of every object written: `aws:kms` (with --sse-kms-key-id)
    /// or `AES256`. `check` then reports objects stored without it.
    #[arg(long, env = "BERTH_S3_SSE", global = true)]
    pub sse: Option<String>,
    /// KMS key (id, ARN or alias/NAME) for `--sse aws:kms`.
    #[arg(long, env = "BERTH_S3_SSE_KMS_KEY_ID", global = true)]
    pub sse_kms_key_id: Option<String>,
    /// File holding the repository key (a mounted Secret); trailing newlines are ignored.
    #[arg(long, env = "BERTH_REPOSITORY_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16, global = true)]
    pub pack_size_mib: usize,
    /// Parallel uploads.
    #[arg(long, default_value_t = 4, global = true)]
    pub upload_concurrency: usize,
    /// zstd level for chunks. 3 is the default: on the benchmark's mixed data it stores about
    /// 1 % less than level 2 for about 10 % more CPU time; 4 saves 0.4 % more for 40 % more.
    /// Chunks that look random (sampled) are stored without trying.
    #[arg(long, default_value_t = 3, global = true)]
    pub compression_level: i32,
}

/// Output settings.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, env = "BERTH_PROGRESS", global = true)]
    pub progress: ProgressMode,
    /// Seconds between progress log lines when not on a terminal.
    #[arg(long, default_value_t = 10, global = true)]
    pub progress_interval: u64,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Retention flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KeepArgs {
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
}

/// Agent subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init,
    /// Back up a directory (files, directories, symlinks, FIFOs, modes, owners, mtimes).
    BackupDir {
        path: PathBuf,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Back up PostgreSQL databases with pg_dump (custom format, uncompressed so that days
    /// deduplicate) plus roles from pg_dumpall --globals-only.
    BackupPostgres {
        #[command(flatten)]
        conn: postgres::PgConn,
        /// Database to dump (repeatable); default: every connectable non-template database.
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Skip roles and tablespaces (for non-superusers).
        #[arg(long)]
        no_globals: bool,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Back up RabbitMQ definitions through the management API.
    BackupRabbitmq {
        #[command(flatten)]
        conn: rabbitmq::RabbitConn,
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Restore a snapshot (`latest`, an id or a unique id prefix): to a directory with
    /// --target, otherwise a postgres snapshot into the server and a rabbitmq snapshot into
    /// the node given by the connection flags.
    Restore {
        snapshot: String,
        /// Restore the files into this directory (any snapshot kind).
        #[arg(long)]
        target: Option<PathBuf>,
        /// Only these databases (postgres snapshots).
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Parallel pack downloads.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        #[command(flatten)]
        pg: postgres::PgConn,
        #[command(flatten)]
        rabbit: rabbitmq::RabbitConn,
    },
    /// Count the regular files, directories and bytes below a directory, as a `dir` snapshot's
    /// summary counts them, and fail when they differ from the given figures (restore drills).
    CountDir {
        path: PathBuf,
        #[arg(long)]
        files: u64,
        #[arg(long)]
        dirs: u64,
        #[arg(long)]
        bytes: u64,
    },
    /// List snapshots.
    Snapshots {
        /// Only this kind (dir, postgres, rabbitmq, kubernetes).
        #[arg(long)]
        kind: Option<String>,
    },
    /// Verify the repository structure; with --read-data every byte of every pack.
    Check {
        #[arg(long)]
        read_data: bool,
    },
    /// Remove snapshots by a GFS policy (the newest of each series always stays).
    Forget {
        #[command(flatten)]
        keep: KeepArgs,
        /// Run prune afterwards.
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete data no snapshot references (exclusive lock; crash-safe).
    Prune {
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove stale locks and locks that fail authentication (with --all: every lock).
    Unlock {
        #[arg(long)]
        all: bool,
    },
    /// Repository maintenance.
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
}

/// `berth agent repo …`.
#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
    /// Upgrade a format-1 repository: verify its config and backup manifests with the key and
    /// rewrite them with MACs (stop backups to it first). Manifests that fail verification are
    /// listed and stay refused.
    Migrate,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("BERTH_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

fn read_key(args: &RepoArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(path) = &args.key_file {
        let mut k =
            std::fs::read(path).with_context(|| format!("reading the repository key file {}", path.display()))?;
        while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            k.pop();
        }
        if k.is_empty() {
            bail!("the repository key file {} is empty", path.display());
        }
        return Ok(k);
    }
    if let Ok(k) = std::env::var("BERTH_REPOSITORY_KEY")
        && !k.is_empty()
    {
        return Ok(k.into_bytes());
    }
    bail!("no repository key: set BERTH_REPOSITORY_KEY_FILE (--key-file) or BERTH_REPOSITORY_KEY")
}

/// Builds the storage configuration from the flags.
pub fn storage_config(args: &RepoArgs) -> anyhow::Result<StorageConfig> {
    let url = args.repo.as_deref().context("no repository: set --repo or BERTH_REPOSITORY (s3://bucket/prefix)")?;
    let mut cfg = StorageConfig::parse(url)?;
    if let StorageConfig::S3(S3Config {
        endpoint,
        region,
        path_style,
        ca_file,
        insecure_http,
        no_progress_timeout,
        sse,
        ..
    }) = &mut cfg
    {
        *sse = match (&args.sse, &args.sse_kms_key_id) {
            (Some(kind), key) => Some(ServerSideEncryption::parse(kind, key.as_deref(), "--sse (BERTH_S3_SSE)")?),
            (None, Some(_)) => {
                bail!("--sse-kms-key-id (BERTH_S3_SSE_KMS_KEY_ID) needs --sse aws:kms (BERTH_S3_SSE=aws:kms)")
            }
            (None, None) => None,
        };
        *no_progress_timeout = std::time::Duration::from_secs(args.no_progress_timeout);
        endpoint.clone_from(&args.endpoint);
        *insecure_http = args.insecure_http;
        region.clone_from(&args.region);
        *path_style = !args.virtual_hosted;
        ca_file.clone_from(&args.ca_file);
    }
    Ok(cfg)
}

async fn open_repo(args: &RepoArgs) -> anyhow::Result<Repository> {
    let storage = Storage::connect(&storage_config(args)?).await?;
    let key = read_key(args)?;
    let mut repo = Repository::open(storage, &key).await?;
    repo.set_write_options(WriteOptions {
        pack_size: args.pack_size_mib.max(1) * 1024 * 1024,
        compression_level: args.compression_level,
        upload_concurrency: args.upload_concurrency.max(1),
        workers: 0,
    });
    Ok(repo)
}

/// Runs one agent command; the returned code is the process exit status.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    match execute(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("berth agent: error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

async fn execute(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let out = args.output.clone();
    let interval = Duration::from_secs(out.progress_interval.max(1));
    match args.command {
        Command::Init => {
            let storage = Storage::connect(&storage_config(&args.repo)?).await?;
            let key = read_key(&args.repo)?;
            let repo = Repository::init(storage, &key).await?;
            if out.json {
                print_json(repo.config());
            } else {
                println!("created repository {} at {}", repo.config().id, repo.url());
            }
        }
        Command::BackupDir { path, tags } => {
            // The source's metadata is read into the caches while the repository opens.
            let prefetch = MetadataPrefetch::start(&path, (crate::backup::cores() * 2).clamp(2, 8));
            let repo = open_repo(&args.repo).await?;
            let stats = Arc::new(WriterStats::default());
            let total = Arc::new(AtomicU64::new(0));
            if out.progress != ProgressMode::None {
                let (p, t) = (path.clone(), total.clone());
                std::thread::spawn(move || scan_size(&p, &t));
            }
            let rep =
                Reporter::start(out.progress, "backup", Source { stats: stats.clone(), total, done: None }, interval);
            let r = ops::backup_directory(&repo, &path, tags, stats, Some(prefetch)).await;
            rep.finish();
            let (id, snap) = r?;
            report_backup(&out, &id, &snap);
        }
        Command::BackupPostgres { conn, databases, no_globals, tags } => {
            // The first pg_dump starts while the repository is opened and locked.
            let source = conn.source();
            let start = tokio::task::spawn_blocking(move || postgres::Dump::start(&conn, &databases, !no_globals));
            let (repo, dump) = tokio::join!(open_repo(&args.repo), start);
            let dump = dump.context("pg_dump thread")??;
            let repo = repo?;
            let stats = Arc::new(WriterStats::default());
            let rep = Reporter::start(
                out.progress,
                "backup",
                Source { stats: stats.clone(), total: Arc::default(), done: None },
                interval,
            );
            let spec = ops::BackupSpec { kind: "postgres".into(), source, tags, parent: None };
            let r = ops::run_backup(&repo, spec, stats, move |w, _, _| {
                dump.write(w).map_err(|e| crate::backup::BackupError::Invalid(format!("{e:#}")))
            })
            .await;
            rep.finish();
            let (id, snap) = r?;
            report_backup(&out, &id, &snap);
        }
        Command::BackupRabbitmq { conn, tags } => {
            let repo = open_repo(&args.repo).await?;
            let defs = rabbitmq::export(&conn).await?;
            let stats = Arc::new(WriterStats::default());
            let spec = ops::BackupSpec { kind: "rabbitmq".into(), source: conn.source(), tags, parent: None };
            let (id, snap) = ops::run_backup(&repo, spec, stats, move |w, _, _| {
                archiver::backup_virtual(w, vec![("definitions.json".into(), defs)])
            })
            .await?;
            report_backup(&out, &id, &snap);
        }
        Command::CountDir { path, files, dirs, bytes } => {
            let recorded = Census { files, dirs, bytes };
            let root = path.clone();
            let found = tokio::task::spawn_blocking(move || Census::count(&root)).await.context("count thread")??;
            if let Some(difference) = found.mismatch(&recorded) {
                bail!("{}: {difference}", path.display());
            }
            if out.json {
                print_json(&found);
            } else {
                println!("{}: {found}, as the backup recorded", path.display());
            }
        }
        Command::Restore { snapshot, target, databases, parallel, pg, rabbit } => {
            let repo = open_repo(&args.repo).await?;
            let (id, snap) = repo.find_snapshot(&snapshot).await?;
            let started = std::time::Instant::now();
            if let Some(target) = target {
                let stats = Arc::new(WriterStats::default());
                let done = Arc::new(AtomicU64::new(0));
                let rep = Reporter::start(
                    out.progress,
                    "restore",
                    Source {
                        stats,
                        total: Arc::new(AtomicU64::new(snap.summary.bytes_total)),
                        done: Some(done.clone()),
                    },
                    interval,
                );
                let d2 = done.clone();
                let r = archiver::restore_dir(&repo, &snap.root, &target, parallel, &move |n| {
                    d2.fetch_add(n, Ordering::Relaxed);
                })
                .await;
                rep.finish();
                let st = r?;
                let secs = started.elapsed().as_secs_f64();
                if out.json {
                    print_json(&serde_json::json!({
                        "snapshot": id.to_hex(), "target": target, "files": st.files,
                        "dirs": st.dirs, "bytes": st.bytes, "durationMs": (secs * 1000.0) as u64,
                    }));
                } else {
                    println!(
                        "restored snapshot {} to {}: {} files, {} dirs, {} in {:.1}s",
                        id.short(),
                        target.display(),
                        st.files,
                        st.dirs,
                        indicatif::HumanBytes(st.bytes),
                        secs
                    );
                }
            } else {
                match snap.kind.as_str() {
                    "postgres" => {
                        let dbs = postgres::restore(&repo, &snap.root, &pg, &databases).await?;
                        if out.json {
                            print_json(&serde_json::json!({"snapshot": id.to_hex(), "databases": dbs}));
                        } else {
                            println!("restored databases {} from snapshot {}", dbs.join(", "), id.short());
                        }
                    }
                    "rabbitmq" => {
                        let node = archiver::lookup(&repo, &snap.root, "definitions.json").await?;
                        let defs = archiver::read_file(&repo, &node).await?;
                        rabbitmq::import(&rabbit, defs).await?;
                        if out.json {
                            print_json(&serde_json::json!({"snapshot": id.to_hex(), "restored": "definitions"}));
                        } else {
                            println!("restored RabbitMQ definitions from snapshot {}", id.short());
                        }
                    }
                    other => bail!("snapshot {} is of kind {other}; give --target DIR", id.short()),
                }
            }
        }
        Command::Snapshots { kind } => {
            let repo = open_repo(&args.repo).await?;
            let snaps: Vec<_> = repo
                .list_snapshots()
                .await?
                .into_iter()
                .filter(|(_, s)| kind.as_deref().is_none_or(|k| s.kind == k))
                .collect();
            if out.json {
                let v: Vec<_> =
                    snaps.iter().map(|(id, s)| serde_json::json!({"id": id.to_hex(), "snapshot": s})).collect();
                print_json(&v);
            } else {
                println!("{:<10} {:<26} {:<10} {:>12}  source", "id", "time", "kind", "size");
                for (id, s) in &snaps {
                    println!(
                        "{:<10} {:<26} {:<10} {:>12}  {}",
                        id.short(),
                        s.time.chars().take(26).collect::<String>(),
                        s.kind,
                        indicatif::HumanBytes(s.summary.bytes_total).to_string(),
                        s.source
                    );
                }
                println!("{} snapshots", snaps.len());
            }
        }
        Command::Check { read_data } => {
            let repo = open_repo(&args.repo).await?;
            let report = ops::check(&repo, read_data).await?;
            if out.json {
                print_json(&report);
            } else {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
                for e in &report.errors {
                    eprintln!("error: {e}");
                }
                println!(
                    "checked {} snapshots, {} trees, {} packs, {} blobs{}{}: {}",
                    report.snapshots,
                    report.trees_checked,
                    report.packs,
                    report.blobs,
                    if read_data {
                        format!(", read {} packs ({})", report.packs_read, indicatif::HumanBytes(report.bytes_read))
                    } else {
                        String::new()
                    },
                    if report.encryption_checked > 0 {
                        format!(", server-side encryption of {} objects", report.encryption_checked)
                    } else {
                        String::new()
                    },
                    if report.ok() { "no errors".to_string() } else { format!("{} errors", report.errors.len()) }
                );
            }
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Forget { keep, prune, dry_run } => {
            let repo = open_repo(&args.repo).await?;
            let policy = RetentionPolicy {
                keep_last: keep.keep_last,
                keep_hourly: keep.keep_hourly,
                keep_daily: keep.keep_daily,
                keep_weekly: keep.keep_weekly,
                keep_monthly: keep.keep_monthly,
                keep_yearly: keep.keep_yearly,
            };
            let (report, decisions) = ops::forget(&repo, &policy, dry_run).await?;
            if !out.json {
                for (group, ds) in &decisions {
                    println!("series {group}:");
                    for d in ds {
                        println!(
                            "  {} {} {}",
                            if d.keep { "keep  " } else { "remove" },
                            d.id.short(),
                            d.reasons.join(",")
                        );
                    }
                }
                println!(
                    "{} kept, {} {}",
                    report.kept.len(),
                    report.removed.len(),
                    if dry_run { "would be removed" } else { "removed" }
                );
            }
            let pr =
                if prune && !dry_run { Some(ops::prune(&repo, ops::PruneOptions::default()).await?) } else { None };
            if out.json {
                print_json(&serde_json::json!({"forget": report, "prune": pr}));
            } else if let Some(pr) = pr {
                print_prune(&pr);
            }
        }
        Command::Prune { dry_run } => {
            let repo = open_repo(&args.repo).await?;
            let pr = ops::prune(&repo, ops::PruneOptions { dry_run, ..Default::default() }).await?;
            if out.json {
                print_json(&pr);
            } else {
                print_prune(&pr);
            }
        }
        Command::Unlock { all } => {
            let repo = open_repo(&args.repo).await?;
            let n = lock::remove_locks(&repo, all).await?;
            println!("removed {n} lock(s)");
        }
        Command::Repo { command: RepoCommand::Migrate } => {
            let storage = Storage::connect(&storage_config(&args.repo)?).await?;
            let key = read_key(&args.repo)?;
            let report = crate::backup::migrate::migrate(storage, &key).await?;
            if out.json {
                print_json(&report);
            } else {
                for r in &report.refused {
                    eprintln!("warning: {} not authenticated, stays refused: {}", r.key, r.reason);
                }
                if report.already_current {
                    println!("repository already has format {}: nothing to migrate", crate::backup::repo::REPO_VERSION);
                } else {
                    println!(
                        "migrated the repository from format {} to {}: {} manifests authenticated, {} refused",
                        report.from_version,
                        crate::backup::repo::REPO_VERSION,
                        report.authenticated.len(),
                        report.refused.len()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_prune(pr: &ops::PruneReport) {
    println!(
        "prune: {} packs before, {} deleted, {} repacked into {}, {} orphans removed, {} blobs removed, {} freed",
        pr.packs_before,
        pr.packs_deleted,
        pr.packs_repacked,
        pr.packs_written,
        pr.orphan_packs_deleted,
        pr.blobs_removed,
        indicatif::HumanBytes(pr.bytes_freed)
    );
}

fn report_backup(out: &OutputArgs, id: &crate::backup::Id, snap: &crate::backup::Snapshot) {
    let line = progress::summary_line(&id.short(), &snap.summary);
    tracing::info!(
        snapshot = %id,
        files = snap.summary.files,
        bytes_read = snap.summary.bytes_read,
        bytes_uploaded = snap.summary.bytes_uploaded,
        dedup_ratio = snap.summary.dedup_ratio(),
        duration_ms = snap.summary.duration_ms,
        "backup finished"
    );
    if out.json {
        print_json(&serde_json::json!({"id": id.to_hex(), "snapshot": snap}));
    } else {
        println!("{line}");
    }
}

fn scan_size(path: &std::path::Path, total: &AtomicU64) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total.fetch_add(m.len(), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::{Args, Command};
        super::AgentArgs::augment_args(Command::new("agent")).debug_assert();
    }
}

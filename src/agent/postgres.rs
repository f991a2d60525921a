//! PostgreSQL dumps with Debian's `pg_dump`/`pg_restore`.
//!
//! Format: custom (`-Fc`) **without compression** (`-Z0`). pg_dump's own compression would
//! make every dump a new byte stream, so consecutive days would share nothing; uncompressed,
//! rows that did not change produce the same bytes, content-defined chunking finds the same
//! chunks, and the repository compresses each chunk with zstd anyway. The custom format (not
//! plain SQL) keeps `pg_restore`'s features: `--clean --if-exists --create`, selective and
//! reordered restore, error reporting per object. Roles and tablespaces come from
//! `pg_dumpall --globals-only`.
//!
//! Snapshot layout: `globals.sql`, `databases/<name>.dump` and `rowcounts.json`: each table's
//! row count, taken in the snapshot the database's `pg_dump` reads (`--snapshot`), which a
//! restore drill compares with the restored database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};

use crate::backup::snapshot::{Node, NodeKind, Tree};
use crate::backup::{Repository, archiver};

/// Connection settings (libpq environment variables work too: PGHOST, PGPORT, PGUSER,
/// PGPASSWORD, PGSSLMODE, …).
#[derive(Debug, Clone, clap::Args)]
pub struct PgConn {
    /// Server host or socket directory.
    #[arg(id = "pg_host", long = "pg-host", env = "PGHOST")]
    pub host: Option<String>,
    #[arg(id = "pg_port", long = "pg-port", env = "PGPORT")]
    pub port: Option<u16>,
    /// User (a superuser to dump roles and every database).
    #[arg(id = "pg_user", long = "pg-user", env = "PGUSER")]
    pub user: Option<String>,
    /// Directory of pg_dump/pg_restore/psql; default: /usr/lib/postgresql/<server major>/bin,
    /// the newest /usr/lib/postgresql/*/bin, then PATH.
    #[arg(id = "pg_bin_dir", long = "pg-bin-dir", env = "BERTH_PG_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

impl PgConn {
    fn command(&self, bin: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(bin);
        if let Some(h) = &self.host {
            c.env("PGHOST", h);
        }
        if let Some(p) = self.port {
            c.env("PGPORT", p.to_string());
        }
        if let Some(u) = &self.user {
            c.env("PGUSER", u);
        }
        c.stdin(Stdio::null());
        c
    }

    /// `postgres://host:port` without credentials, the snapshot source.
    pub fn source(&self) -> String {
        format!("postgres://{}:{}", self.host.as_deref().unwrap_or("localhost"), self.port.unwrap_or(5432))
    }
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().rev().map(|(_, p)| p).collect()
}

/// Finds a client tool: the flag/env directory, the server's major version, the newest
/// installed version, then PATH.
pub fn find_tool(conn: &PgConn, tool: &str, server_major: Option<u32>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &conn.bin_dir {
        let p = dir.join(tool);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{tool} not found in {} (--pg-bin-dir / BERTH_PG_BIN_DIR)", dir.display());
    }
    if let Some(m) = server_major {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{m}/bin/{tool}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    for d in candidates() {
        let p = d.join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = d.join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{tool} not found: install the Debian package postgresql-client-<version> or pass --pg-bin-dir")
}

fn run_psql(conn: &PgConn, psql: &Path, sql: &str) -> anyhow::Result<String> {
    let out = conn
        .command(psql)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql])
        .output()
        .with_context(|| format!("running {}", psql.display()))?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Server major version.
pub fn server_major(conn: &PgConn) -> anyhow::Result<u32> {
    let psql = find_tool(conn, "psql", None)?;
    let v = run_psql(conn, &psql, "SHOW server_version_num")?;
    let n: u32 = v.trim().parse().context("parsing server_version_num")?;
    Ok(n / 10000)
}

/// Major version of a PostgreSQL client tool from its `--version` line, e.g.
/// `pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)` → 17, `pg_dump (PostgreSQL) 18beta1` → 18.
pub fn parse_tool_major(version_line: &str) -> Option<u32> {
    let (_, rest) = version_line.split_once("(PostgreSQL) ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Refuses a `pg_dump` older than the server: it cannot dump a newer server (it stops with
/// "aborting because of server version mismatch"), so say which versions and what to change.
fn check_tool_version(tool: &Path, server_major: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", tool.display()))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let Some(client_major) = parse_tool_major(&line).filter(|_| out.status.success()) else {
        bail!("cannot read the version of {}: {:?}", tool.display(), line.trim());
    };
    if client_major < server_major {
        bail!(
            "{} is PostgreSQL {client_major}, older than the server's PostgreSQL {server_major}: it cannot dump a \
             newer server. Run the agent with PostgreSQL {server_major} client tools or newer: an agent image \
             that has them (operator flag --agent-image / BERTH_AGENT_IMAGE; Berth's image carries the newest \
             version a DatabaseInstance accepts), or --pg-bin-dir / BERTH_PG_BIN_DIR pointing at them",
            tool.display()
        );
    }
    Ok(())
}

/// A dump under way: tools found, databases listed, roles read, and the first `pg_dump`
/// already running, so that its start (connection, locks, catalog reads) overlaps opening and
/// locking the repository. Dropping it stops a `pg_dump` that was not read.
pub struct Dump {
    conn: PgConn,
    pg_dump: PathBuf,
    psql: PathBuf,
    globals: Option<Vec<u8>>,
    /// Databases still to dump, in order; the first one's `pg_dump` may be running.
    databases: std::collections::VecDeque<String>,
    running: Option<Running>,
}

struct Running {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
    /// Holds the snapshot pg_dump reads until the dump is done.
    session: SnapshotSession,
}

/// Counts every table's rows in one repeatable-read transaction and exports its snapshot, for
/// `pg_dump --snapshot`: the counts describe exactly the rows of the dump. The `psql` session
/// holds the transaction (and so the snapshot) open until it is dropped.
struct SnapshotSession {
    child: std::process::Child,
    id: String,
    counts: BTreeMap<String, u64>,
}

/// `schema.table|count` of every ordinary and partitioned table outside the system schemas.
pub const COUNT_ROWS: &str = "SELECT format('%s.%s', n.nspname, c.relname) || '|' || \
     (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1;";
const END_MARK: &str = "__berth_counted__";

impl SnapshotSession {
    fn open(conn: &PgConn, psql: &Path, db: &str) -> anyhow::Result<Self> {
        use std::io::{BufRead, Write};
        let mut child = conn
            .command(psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", "--dbname", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", psql.display()))?;
        let script = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_export_snapshot();\n{COUNT_ROWS}\n\\echo {END_MARK}\n"
        );
        child.stdin.as_mut().expect("piped").write_all(script.as_bytes()).context("writing to psql")?;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut output = Vec::new();
        for line in lines.by_ref() {
            let line = line.context("reading from psql")?;
            if line == END_MARK {
                break;
            }
            output.push(line);
        }
        if output.is_empty() {
            let _ = child.kill();
            let out = child.wait_with_output().context("waiting for psql")?;
            bail!("counting the rows of database {db:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let id = output.remove(0);
        let counts = parse_counts(&output).with_context(|| format!("row counts of database {db:?}"))?;
        Ok(Self { child, id, counts })
    }
}

impl Drop for SnapshotSession {
    fn drop(&mut self) {
        // Closing psql's input ends the (read-only) transaction.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// `schema.table|count` lines.
fn parse_counts(lines: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    lines
        .iter()
        .map(|line| {
            let (table, count) = line.rsplit_once('|').with_context(|| format!("unexpected line {line:?}"))?;
            let count = count.parse().with_context(|| format!("unexpected count in {line:?}"))?;
            Ok((table.to_string(), count))
        })
        .collect()
}

/// The path of the per-database row counts in a `postgres` snapshot: `{db: {schema.table: rows}}`.
pub const ROW_COUNTS: &str = "rowcounts.json";

fn spawn_pg_dump(conn: &PgConn, pg_dump: &Path, psql: &Path, db: &str) -> anyhow::Result<Running> {
    let session = SnapshotSession::open(conn, psql, db)?;
    let mut child = conn
        .command(pg_dump)
        .args(["--format=custom", "--compress=0", "--no-password", "--snapshot", &session.id, "--dbname", db])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", pg_dump.display()))?;
    // A 1 MiB pipe instead of 64 KiB: pg_dump and the chunker wake each other 16× less
    // often (on a busy 2-core node that is measurable). Best effort: the limit is
    // /proc/sys/fs/pipe-max-size.
    if let Some(out) = &child.stdout {
        // SAFETY: fcntl on a pipe descriptor this process owns.
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(out), libc::F_SETPIPE_SZ, 1 << 20) };
    }
    let mut stderr = child.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    Ok(Running { child, stderr, session })
}

impl Dump {
    /// Prepares a dump of `databases` (all connectable non-template ones when empty) and,
    /// with `globals`, of roles and tablespaces; starts the first `pg_dump`. Blocking.
    pub fn start(conn: &PgConn, databases: &[String], globals: bool) -> anyhow::Result<Self> {
        let major = server_major(conn)?;
        let pg_dump = find_tool(conn, "pg_dump", Some(major))?;
        check_tool_version(&pg_dump, major)?;
        let psql = find_tool(conn, "psql", Some(major))?;
        let dbs: Vec<String> = if databases.is_empty() {
            run_psql(
                conn,
                &psql,
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            )?
            .lines()
            .map(str::to_string)
            .filter(|s| !s.is_empty())
            .collect()
        } else {
            databases.to_vec()
        };
        let globals = if globals {
            let pg_dumpall = find_tool(conn, "pg_dumpall", Some(major))?;
            check_tool_version(&pg_dumpall, major)?;
            let out = conn
                .command(&pg_dumpall)
                .args(["--globals-only", "--no-password"])
                .output()
                .context("running pg_dumpall")?;
            if !out.status.success() {
                bail!(
                    "pg_dumpall --globals-only failed (needs a superuser; use --no-globals to skip roles): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Some(out.stdout)
        } else {
            None
        };
        let running = match dbs.first() {
            Some(db) => Some(spawn_pg_dump(conn, &pg_dump, &psql, db)?),
            None => None,
        };
        Ok(Self { conn: conn.clone(), pg_dump, psql, globals, databases: dbs.into(), running })
    }

    /// Streams every dump into the writer; returns the root node
    /// (`globals.sql`, `databases/<name>.dump`). Runs in a blocking thread.
    pub fn write(mut self, writer: &crate::backup::writer::BlobWriter) -> anyhow::Result<Node> {
        let count = |len: u64| {
            writer.stats().files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            writer.stats().bytes_total.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        };
        let mut root_nodes = Vec::new();
        if let Some(globals) = self.globals.take() {
            let mut n = Node::new("globals.sql", NodeKind::File);
            n.mode = 0o600;
            let (ids, len) = writer.add_stream(&globals[..], None)?;
            n.content = ids;
            n.size = len;
            count(len);
            root_nodes.push(n);
        }
        let mut db_nodes = Vec::new();
        let mut row_counts = BTreeMap::new();
        while let Some(db) = self.databases.pop_front() {
            tracing::info!(database = %db, "dumping");
            let mut run = match self.running.take() {
                Some(r) => r,
                None => spawn_pg_dump(&self.conn, &self.pg_dump, &self.psql, &db)?,
            };
            let stdout = run.child.stdout.take().expect("piped");
            let res = writer.add_stream(stdout, None);
            let status = run.child.wait().context("waiting for pg_dump")?;
            let err = run.stderr.join().unwrap_or_default();
            row_counts.insert(db.clone(), std::mem::take(&mut run.session.counts));
            drop(run.session);
            if !status.success() {
                bail!("pg_dump of database {db:?} failed ({status}): {}", err.trim());
            }
            let (ids, len) = res?;
            let mut n = Node::new(format!("{db}.dump"), NodeKind::File);
            n.mode = 0o600;
            n.content = ids;
            n.size = len;
            count(len);
            db_nodes.push(n);
        }
        db_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let db_tree = archiver::save_tree(writer, &Tree { nodes: db_nodes })?;
        let mut dbdir = Node::new("databases", NodeKind::Dir);
        dbdir.subtree = Some(db_tree);
        root_nodes.insert(0, dbdir);
        let counts = serde_json::to_vec_pretty(&row_counts)?;
        let mut n = Node::new(ROW_COUNTS, NodeKind::File);
        let (ids, len) = writer.add_stream(&counts[..], None)?;
        n.content = ids;
        n.size = len;
        root_nodes.push(n);
        let mut root = Node::new("/", NodeKind::Dir);
        root.subtree = Some(archiver::save_tree(writer, &Tree { nodes: root_nodes })?);
        Ok(root)
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

/// Restores a `postgres` snapshot into the server: globals first (errors about roles that
/// exist already are reported, not fatal), then each database with
/// `pg_restore --create --clean --if-exists` (an existing database is replaced).
pub async fn restore(repo: &Repository, root: &Node, conn: &PgConn, only: &[String]) -> anyhow::Result<Vec<String>> {
    let c2 = conn.clone();
    let major = tokio::task::spawn_blocking(move || server_major(&c2)).await??;
    let psql = find_tool(conn, "psql", Some(major))?;
    let pg_restore = find_tool(conn, "pg_restore", Some(major))?;
    let files = archiver::walk_files(repo, root).await?;
    if only.is_empty()
        && let Some((_, g)) = files.iter().find(|(p, _)| p == "globals.sql")
    {
        let mut cmd = tokio::process::Command::from(conn.command(&psql));
        cmd.args(["-X", "-q", "-d", "postgres", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting psql")?;
        let mut stdin = child.stdin.take().expect("piped");
        archiver::stream_file(repo, g, &mut stdin, 8).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        let err = String::from_utf8_lossy(&out.stderr);
        for line in err.lines().filter(|l| !l.contains("already exists")) {
            tracing::warn!(message = line, "globals");
        }
    }
    let mut restored = Vec::new();
    for (path, node) in &files {
        let Some(name) = path.strip_prefix("databases/").and_then(|p| p.strip_suffix(".dump")) else {
            continue;
        };
        if !only.is_empty() && !only.iter().any(|d| d == name) {
            continue;
        }
        tracing::info!(database = name, "restoring");
        let mut cmd = tokio::process::Command::from(conn.command(&pg_restore));
        cmd.args([
            "--create",
            "--clean",
            "--if-exists",
            "--exit-on-error",
            "--no-password",
            "--dbname",
            // pg_restore --create connects here to drop and recreate the target database.
            if name == "postgres" { "template1" } else { "postgres" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting pg_restore")?;
        let mut stdin = child.stdin.take().expect("piped");
        let streamed = archiver::stream_file(repo, node, &mut stdin, 8).await;
        drop(stdin);
        let out = child.wait_with_output().await?;
        streamed?;
        if !out.status.success() {
            bail!(
                "pg_restore of database {name:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        restored.push(name.to_string());
    }
    if restored.is_empty() && !only.is_empty() {
        bail!("none of the databases {only:?} is in the snapshot");
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::parse_tool_major;

    #[test]
    fn tool_major_versions() {
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)\n"), Some(17));
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"), Some(15));
        assert_eq!(parse_tool_major("pg_dumpall (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_major("pg_dump 17.2"), None);
        assert_eq!(parse_tool_major(""), None);
    }
}

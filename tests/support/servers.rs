//! Real PostgreSQL, RabbitMQ and S3-compatible servers on free loopback ports.
//!
//! Each launcher starts a private instance in a temporary directory, waits until it serves
//! requests, and stops it on `Drop` by the process ids it started (never by name).
//!
//! * [`Postgres::start`] — Debian's PostgreSQL 15 (`apt-get install postgresql-15`).
//! * [`RabbitMq::start`] — Debian's RabbitMQ with the management plugin
//!   (`apt-get install rabbitmq-server`).
//! * [`S3Server::start`] — the `s3s-fs` S3 implementation in-process (dev-dependency).
//!
//! A missing package panics with a message naming it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; the window for a race is tiny).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

fn require(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(p.exists(), "{path} not found: install the Debian package `{package}` (apt-get install -y {package})");
    p
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of a system user.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null result of getpwnam.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what} did not become ready within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_child(child: &mut Child, signal: i32, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(child.id() as i32, signal) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// A private PostgreSQL 15 server on 127.0.0.1.
pub struct Postgres {
    pub port: u16,
    pub superuser: String,
    pub password: String,
    /// Directory of the Unix socket (`host=` for libpq).
    pub socket_dir: PathBuf,
    pub bin_dir: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Debian's PostgreSQL 15 binaries.
    pub const BIN_DIR: &'static str = "/usr/lib/postgresql/15/bin";

    /// initdb + start; ≈1–2 s.
    pub fn start() -> Self {
        let bin_dir = require(Self::BIN_DIR, "postgresql-15");
        let dir = tempfile::Builder::new().prefix("berth-pg-").tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&data).expect("mkdir data");
        std::fs::create_dir(&socket_dir).expect("mkdir sock");
        let ids = if is_root() {
            let ids = user_ids("postgres").expect("system user postgres (package postgresql-15)");
            chown(&data, ids.0, ids.1);
            chown(&socket_dir, ids.0, ids.1);
            Some(ids)
        } else {
            None
        };
        let password = format!("pw-{}", std::process::id());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).expect("pwfile");
        if let Some((u, g)) = ids {
            chown(&pwfile, u, g);
        }
        let as_pg = |cmd: &mut Command| {
            if let Some((u, g)) = ids {
                cmd.uid(u).gid(g);
            }
            cmd.env_remove("PGHOST").env_remove("PGPORT").env_remove("PGUSER");
        };
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C"])
            .current_dir(dir.path());
        as_pg(&mut initdb);
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let mut cmd = Command::new(bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("server.log")).expect("log")));
        as_pg(&mut cmd);
        let child = cmd.spawn().expect("start postgres");
        let mut pg = Self { port, superuser: "postgres".into(), password, socket_dir, bin_dir, child, _dir: dir };
        let log = pg._dir.path().join("server.log");
        let isready = pg.bin_dir.join("pg_isready");
        wait_until("PostgreSQL", Duration::from_secs(60), || {
            if let Ok(Some(status)) = pg.child.try_wait() {
                panic!("postgres exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            Command::new(&isready)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        });
        // Ready for connections is not always ready for queries during recovery.
        wait_until("PostgreSQL queries", Duration::from_secs(30), || pg.try_psql("postgres", "SELECT 1").is_ok());
        let _ = &mut pg;
        pg
    }

    /// `postgres://postgres:…@127.0.0.1:port/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{}:{}@127.0.0.1:{}/postgres", self.superuser, self.password, self.port)
    }

    /// libpq environment for client tools (TCP, password auth).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), self.superuser.clone()),
            ("PGPASSWORD".into(), self.password.clone()),
        ]
    }

    /// A command for a client tool of this installation with [`env`](Self::env) set.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join(name));
        c.envs(self.env());
        c
    }

    /// Runs SQL with psql (`-XAt`, stop on error) and returns stdout.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .tool("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Like [`try_psql`](Self::try_psql), panicking on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| panic!("psql {db}: {sql}: {e}"))
    }

    /// Whether `user` logs in to `db` with `password` over TCP, as an app would.
    pub async fn can_login(&self, user: &str, password: &str, db: &str) -> bool {
        let url = format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port);
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT = fast shutdown.
        stop_child(&mut self.child, libc::SIGINT, Duration::from_secs(15));
    }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------------------------

/// A private RabbitMQ node (`rabbit@localhost`) with the management plugin on 127.0.0.1.
pub struct RabbitMq {
    pub amqp_port: u16,
    pub mgmt_port: u16,
    pub dist_port: u16,
    pub epmd_port: u16,
    pub user: String,
    pub password: String,
    server: Child,
    epmd: Child,
    dir: tempfile::TempDir,
}

impl RabbitMq {
    /// Boots a node; ≈3–10 s.
    pub fn start() -> Self {
        let server_bin = require("/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server");
        let epmd_bin = ["/usr/bin/epmd", "/usr/lib/erlang/bin/epmd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("epmd not found: install the Debian package `rabbitmq-server` (erlang-base)"));
        let dir = tempfile::Builder::new().prefix("berth-rabbit-").tempdir().expect("tempdir");
        let (amqp_port, mgmt_port, dist_port, epmd_port) = (free_port(), free_port(), free_port(), free_port());
        let user = "berth".to_string();
        let password = format!("pw-{}", std::process::id());
        let conf = dir.path().join("rabbitmq.conf");
        std::fs::write(
            &conf,
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                 management.tcp.port = {mgmt_port}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 default_user = {user}\n\
                 default_pass = {password}\n\
                 loopback_users = none\n"
            ),
        )
        .expect("write rabbitmq.conf");
        let plugins = dir.path().join("enabled_plugins");
        std::fs::write(&plugins, "[rabbitmq_management].\n").expect("enabled_plugins");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("home");
        let epmd = Command::new(&epmd_bin)
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start epmd");
        let mut cmd = Command::new(&server_bin);
        cmd.env("HOME", &home)
            .env("RABBITMQ_NODENAME", "rabbit@localhost")
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
            .env("RABBITMQ_PID_FILE", dir.path().join("rabbit.pid"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_LOGS", dir.path().join("rabbit.log"))
            .process_group(0)
            .stdout(Stdio::from(std::fs::File::create(dir.path().join("stdout.log")).expect("log")))
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("stderr.log")).expect("log")));
        let server = cmd.spawn().expect("start rabbitmq-server");
        let mut r = Self { amqp_port, mgmt_port, dist_port, epmd_port, user, password, server, epmd, dir };
        let logs = r.dir.path().to_path_buf();
        wait_until("RabbitMQ management API", Duration::from_secs(120), || {
            if let Ok(Some(status)) = r.server.try_wait() {
                panic!(
                    "rabbitmq-server exited ({status}): {}\n{}",
                    std::fs::read_to_string(logs.join("stderr.log")).unwrap_or_default(),
                    std::fs::read_to_string(logs.join("rabbit.log")).unwrap_or_default()
                );
            }
            r.api("GET", "/api/overview", None).is_ok_and(|(s, _)| s == 200)
        });
        let _ = &mut r;
        r
    }

    /// `http://127.0.0.1:<mgmt_port>`.
    pub fn mgmt_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.mgmt_port)
    }

    /// `amqp://user:password@127.0.0.1:<amqp_port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://{}:{}@127.0.0.1:{}/%2f", self.user, self.password, self.amqp_port)
    }

    /// One management API request (HTTP/1.1, basic auth); returns status and body.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password));
        let mut s = TcpStream::connect(("127.0.0.1", self.mgmt_port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:.200}")))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    }

    /// Like [`api`](Self::api), panicking unless the status is 2xx.
    pub fn api_ok(&self, method: &str, path: &str, body: Option<&str>) -> String {
        let (status, text) = self.api(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!((200..300).contains(&status), "{method} {path}: {status} {text}");
        text
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // The server runs in its own process group (the script, beam and its helpers).
        let pgid = self.server.id() as i32;
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.server.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above; whatever is left of our group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.server.wait();
        stop_child(&mut self.epmd, libc::SIGTERM, Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

/// The `s3s-fs` S3 server in-process on 127.0.0.1, on its own thread and runtime (so it
/// works from sync and async tests alike). Buckets are directories under [`root`](Self::root).
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::Builder::new().prefix("berth-s3-").tempdir().expect("tempdir");
        let access_key = "berth-test-ak".to_string();
        let secret_key = format!("berth-test-sk-{}", std::process::id());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let fs_root = root.path().to_path_buf();
        let (ak, sk) = (access_key.clone(), secret_key.clone());
        let thread = std::thread::Builder::new()
            .name("s3s-fs".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    use hyper_util::rt::{TokioExecutor, TokioIo};
                    let fs = s3s_fs::FileSystem::new(&fs_root).expect("s3s-fs root");
                    let mut b = s3s::service::S3ServiceBuilder::new(fs);
                    b.set_auth(s3s::auth::SimpleAuth::from_single(ak, sk));
                    let service = b.build();
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    loop {
                        tokio::select! {
                            r = listener.accept() => {
                                let Ok((sock, _)) = r else { continue };
                                let conn = http
                                    .serve_connection(TokioIo::new(sock), service.clone())
                                    .into_owned();
                                tokio::spawn(async move { let _ = conn.await; });
                            }
                            _ = &mut rx => break,
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn s3 thread");
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            region: "us-east-1".into(),
            root,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Creates a bucket (a directory of the store).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name)).expect("create bucket");
    }

    /// Where the objects live on disk (`<root>/<bucket>/<key>`), for fault injection.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Environment for `berth agent` and AWS tools. The server speaks plain HTTP on
    /// loopback, so this opts in with `BERTH_S3_INSECURE_HTTP` (the agent refuses an
    /// `http://` endpoint without it).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BERTH_S3_INSECURE_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("BERTH_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

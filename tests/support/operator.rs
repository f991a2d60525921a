//! The real `berth operator` binary as a child process, connected to a test API server
//! through its generated kubeconfig, with its metrics endpoint on a free loopback port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running operator; killed when dropped. Its log goes to a file at `info` and is printed
/// when the test fails (a flaky test's cause may show only at `info`); with `BERTH_TEST_LOG`
/// set it goes to the test's stderr at that level instead.
pub struct Operator {
    child: Child,
    pub metrics_addr: SocketAddr,
    log: Option<tempfile::NamedTempFile>,
}

/// The operator log lines printed when a test fails.
const FAILED_TEST_LOG_LINES: usize = 400;

/// A free port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Operator {
    /// Starts `berth operator` against `kubeconfig` with `extra` flags.
    pub fn start(kubeconfig: &Path, extra: &[&str]) -> Operator {
        Self::start_with_env(kubeconfig, extra, &[])
    }

    /// [`Operator::start`] with extra environment variables (e.g. the operator's own cloud
    /// credentials).
    pub fn start_with_env(kubeconfig: &Path, extra: &[&str], env: &[(&str, &str)]) -> Operator {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.envs(env.iter().copied())
            .arg("operator")
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", "berth-system")
            .stdin(Stdio::null());
        let log = match std::env::var("BERTH_TEST_LOG") {
            Ok(level) => {
                cmd.env("RUST_LOG", level);
                None
            }
            Err(_) => {
                let log = tempfile::NamedTempFile::new().expect("operator log file");
                cmd.env("RUST_LOG", "info,kube=warn")
                    .env("NO_COLOR", "1")
                    .stderr(log.reopen().expect("operator log file"));
                Some(log)
            }
        };
        let child = cmd.spawn().expect("start berth operator");
        Operator { child, metrics_addr, log }
    }

    /// Body and status of a GET on the metrics listener.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("berth operator exited early: {status}");
            }
            if matches!(self.http_get("/readyz"), Some((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("berth operator not ready within {timeout:?}");
    }

    /// The sum of a counter over all its label sets, from `/metrics`.
    pub fn counter(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").expect("metrics answer");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "operator did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as the OOM killer or a lost node ends it: no shutdown, nothing flushed.
    pub fn kill_9(&mut self) -> std::process::ExitStatus {
        self.child.kill().expect("SIGKILL the operator");
        self.child.wait().unwrap()
    }

    /// Process id of the operator.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size (VmHWM) so far, in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Some(log) = &self.log
        {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(FAILED_TEST_LOG_LINES)..];
            eprintln!(
                "--- the operator's log (pid {}), last {} of {} lines:",
                self.child.id(),
                tail.len(),
                lines.len()
            );
            tail.iter().for_each(|l| eprintln!("{l}"));
            eprintln!("--- end of the operator's log");
        }
    }
}

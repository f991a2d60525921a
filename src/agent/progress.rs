//! Progress output: a bar on a terminal, periodic structured log lines otherwise, and a final
//! summary always.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backup::WriterStats;
use crate::backup::snapshot::Summary;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
    None,
}

/// A running progress reporter; [`finish`](Reporter::finish) stops it.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the reporter reads.
pub struct Source {
    pub stats: Arc<WriterStats>,
    /// Total bytes expected (0 = unknown); may be filled in later by a scanner.
    pub total: Arc<AtomicU64>,
    /// Bytes done for restores (backups use `stats.bytes_read` + unchanged files).
    pub done: Option<Arc<AtomicU64>>,
}

impl Reporter {
    /// Starts reporting `what` (`backup`, `restore`) from `source`.
    pub fn start(
        mode: ProgressMode,
        what: &'static str,
        source: Source,
        interval: Duration,
    ) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Log,
            m => m,
        };
        let stop = Arc::new(AtomicBool::new(false));
        if mode == ProgressMode::None {
            return Self { stop, thread: None };
        }
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let bar = (mode == ProgressMode::Bar).then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                    )
                    .expect("template"),
                );
                b.set_prefix(what);
                b
            });
            let tick = if bar.is_some() {
                Duration::from_millis(200)
            } else {
                interval
            };
            let mut last_log = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100).min(tick));
                let s = &source.stats;
                let done = match &source.done {
                    Some(d) => d.load(Ordering::Relaxed),
                    None => s.bytes_read.load(Ordering::Relaxed),
                };
                let total = source.total.load(Ordering::Relaxed);
                if let Some(b) = &bar {
                    b.set_length(total.max(done));
                    b.set_position(done);
                    b.set_message(format!(
                        "{} files, {} uploaded",
                        s.files.load(Ordering::Relaxed),
                        indicatif::HumanBytes(s.bytes_uploaded.load(Ordering::Relaxed))
                    ));
                } else if last_log.elapsed() >= tick {
                    last_log = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(
                        operation = what,
                        bytes_done = done,
                        bytes_total = total,
                        files = s.files.load(Ordering::Relaxed),
                        bytes_uploaded = s.bytes_uploaded.load(Ordering::Relaxed),
                        rate_mib_s = format!("{:.1}", done as f64 / secs / 1048576.0),
                        "progress"
                    );
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the reporter.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The human-readable final summary of a backup.
pub fn summary_line(snapshot: &str, s: &Summary) -> String {
    let secs = s.duration_ms as f64 / 1000.0;
    format!(
        "snapshot {snapshot} saved: {} files ({} unchanged), {} dirs, {} read of {} total, {} new, {} uploaded, dedup ratio {:.2}, {:.1}s ({}/s)",
        s.files,
        s.files_unchanged,
        s.dirs,
        indicatif::HumanBytes(s.bytes_read),
        indicatif::HumanBytes(s.bytes_total),
        indicatif::HumanBytes(s.bytes_new),
        indicatif::HumanBytes(s.bytes_uploaded),
        s.dedup_ratio(),
        secs,
        indicatif::HumanBytes((s.bytes_read as f64 / secs.max(0.001)) as u64),
    )
}

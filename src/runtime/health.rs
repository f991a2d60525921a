//! `/metrics`, `/healthz` and `/readyz` on one HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::metrics::Metrics;

/// What the probes report. Liveness fails when a controller or the leader elector has died;
/// readiness needs leadership to be known and, on the leader, the caches to be synced.
#[derive(Default)]
pub struct Health {
    pub alive: AtomicBool,
    pub leadership_known: AtomicBool,
    pub leading: AtomicBool,
    pub caches_synced: AtomicBool,
}

impl Health {
    pub fn new() -> Self {
        Self { alive: AtomicBool::new(true), ..Self::default() }
    }

    pub fn is_ready(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
            && self.leadership_known.load(Ordering::SeqCst)
            && (!self.leading.load(Ordering::SeqCst) || self.caches_synced.load(Ordering::SeqCst))
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Serves until the listener fails; binding errors are returned at once.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--metrics-addr): {e}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics });
    Ok(tokio::spawn(async move { axum::serve(listener, app).await }))
}

async fn metrics_handler(State(s): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.alive.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "a controller or the leader elector stopped\n")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: leadership unknown or caches not synced\n")
    }
}

//! Operator wiring: command-line settings, logging, the Kubernetes client, leader election,
//! the health/metrics endpoint and the controllers, with a graceful shutdown on SIGTERM.

pub mod health;
pub mod impersonate;
pub mod leader;
pub mod metrics;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::controllers::{self, Context};
use crate::resources::appenvironment::external_secrets::ExternalSecret;
use crate::resources::certificate::Certificate;
use health::Health;
use leader::{LeaderElector, LeaseTimings};
use metrics::Metrics;

/// How long a stopping operator waits for in-flight reconciles.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `berth operator`; every flag has an environment variable for Helm and kustomize.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "BERTH_NAMESPACES", value_delimiter = ',', default_value = "")]
    pub namespaces: Vec<String>,
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(long, env = "BERTH_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a Lease so that several replicas can run.
    #[arg(long, env = "BERTH_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "BERTH_LEASE_NAME", default_value = "berth-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (defaults to the pod's namespace, else `default`).
    #[arg(long, env = "BERTH_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Seconds a standby waits, from the last change it saw of the Lease, before it takes over
    /// (client-go's LeaseDuration).
    #[arg(long, env = "BERTH_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Seconds the leader may go without a successful renewal before it stops; less than the
    /// lease duration (client-go's RenewDeadline).
    #[arg(long, env = "BERTH_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    pub lease_renew_deadline_seconds: u64,
    /// Seconds between attempts to acquire or renew the Lease (client-go's RetryPeriod).
    #[arg(long, env = "BERTH_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    pub lease_retry_period_seconds: u64,
    /// Log format.
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Seconds between looks at an up-to-date object (drift correction).
    #[arg(long, env = "BERTH_RESYNC_SECONDS", default_value_t = 600)]
    pub resync_seconds: u64,
    /// In-cluster addresses to reach elsewhere, comma-separated `host:port=host:port` (e.g.
    /// `orders-db.team-a.svc:5432=127.0.0.1:15432`), for an operator that runs outside the
    /// cluster network: development with port-forwards, and tests.
    #[arg(long, env = "BERTH_ENDPOINT_OVERRIDES", value_delimiter = ',', value_parser = parse_override)]
    pub endpoint_overrides: Vec<(String, String)>,
    /// Image of the `berth agent` Jobs that back up and restore data: the operator's own image
    /// (the Helm chart sets it).
    #[arg(long, env = "BERTH_AGENT_IMAGE", default_value = controllers::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// Let BackupPolicies without `credentialsSecret`, whose ServiceAccount has no IAM role
    /// annotation (IRSA), reach their storage with the operator's own cloud identity (its IRSA role or instance profile). Off by default: with it, every
    /// namespace that may create a BackupPolicy can use that identity on any bucket.
    #[arg(long, env = "BERTH_ALLOW_OPERATOR_STORAGE_IDENTITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_operator_storage_identity: bool,
    /// ServiceAccount (of each object's own namespace) that BackupPolicies, Backups and
    /// Restores act as when their `spec.serviceAccountName` is unset: Berth impersonates it to
    /// read Secrets, export and restore objects, so the namespace's RBAC bounds what they reach.
    #[arg(long, env = "BERTH_DEFAULT_SERVICE_ACCOUNT", default_value = impersonate::DEFAULT_ACCOUNT, value_parser = parse_account)]
    pub default_service_account: String,
    /// Act as `--default-service-account` for every object and refuse a
    /// `spec.serviceAccountName` that names another account.
    #[arg(long, env = "BERTH_ENFORCE_DEFAULT_SERVICE_ACCOUNT", default_value_t = false, action = clap::ArgAction::Set)]
    pub enforce_default_service_account: bool,
}

/// A ServiceAccount name: a DNS subdomain.
fn parse_account(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a ServiceAccount name (lowercase letters, digits, '-' and '.')"))
    }
}

/// Parses `host:port=host:port`.
fn parse_override(s: &str) -> Result<(String, String), String> {
    let (from, to) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected host:port=host:port"))?;
    for side in [from, to] {
        let port = side.rsplit_once(':').map(|(_, p)| p);
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(format!("{s:?}: {side:?} is not host:port"));
        }
    }
    Ok((from.to_string(), to.to_string()))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Whether the API of `K` (a CRD Berth uses but does not own: cert-manager's Certificate,
/// External Secrets' ExternalSecret) is served; without it Berth reports a condition instead of
/// failing watches forever. Asked in the first watched namespace when namespaces are given: the
/// operator may only have namespaced permissions then.
async fn api_served<K>(client: &kube::Client, namespace: Option<&str>) -> bool
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        // A watch the operator may not open would keep every cache from syncing (an older
        // chart's RBAC under a newer binary): treated as absent, with a warning.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(kind = %K::kind(&()), "the operator's RBAC does not allow listing this kind; treating its API as not installed");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, kind = %K::kind(&()), "cannot tell whether the API is installed; assuming it is");
            true
        }
    }
}

/// Cancels every controller task and waits (briefly) until they are gone: an aborted task is
/// dropped at its next await, so a reconcile stuck on a hung connection ends at once.
async fn stop_leading(controllers: &mut tokio::task::JoinSet<()>) {
    controllers.abort_all();
    let gone = tokio::time::timeout(Duration::from_secs(1), async { while controllers.join_next().await.is_some() {} });
    if gone.await.is_err() {
        warn!("controller tasks still running 1 s after they were cancelled; exiting anyway");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the operator until SIGTERM (exit 0) or a fatal error such as a lost lease (exit 1).
pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    let timings = LeaseTimings::from_seconds(
        args.lease_duration_seconds,
        args.lease_renew_deadline_seconds,
        args.lease_retry_period_seconds,
    )
    .map_err(|e| anyhow::anyhow!("invalid leader-election timings: {e}"))?;
    let config =
        kube::Config::infer().await.map_err(|e| anyhow::anyhow!("cannot configure the Kubernetes client: {e}"))?;
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| anyhow::anyhow!("cannot configure the Kubernetes client: {e}"))?;
    let account_policy = impersonate::AccountPolicy {
        default_account: args.default_service_account.clone(),
        enforce: args.enforce_default_service_account,
    };
    let tenants = Arc::new(impersonate::Tenants::new(config, account_policy));
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new());
    let server = health::serve(args.metrics_addr, health.clone(), metrics.clone()).await?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz and /readyz");

    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("berth-{}", std::process::id()));
    let mut elector = args.leader_election.then(|| {
        let ns = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        LeaderElector::new(Api::<Lease>::namespaced(client.clone(), &ns), &args.lease_name, &identity, timings)
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    if let Some(elector) = &mut elector {
        let h = health.clone();
        tokio::select! {
            _ = elector.acquire(move || h.leadership_known.store(true, Ordering::SeqCst)) => {}
            _ = stopped(stop_rx.clone()) => { info!("stopped before becoming leader"); return Ok(ExitCode::SUCCESS); }
        }
    } else {
        health.leadership_known.store(true, Ordering::SeqCst);
    }
    health.leading.store(true, Ordering::SeqCst);
    metrics.leader.set(1);
    info!(lease = %args.lease_name, %identity, monotonic_ns = leader::monotonic_ns(), "started leading");

    let first_namespace = args.namespaces.iter().find(|n| !n.is_empty()).map(String::as_str);
    let cert_manager = api_served::<Certificate>(&client, first_namespace).await;
    if !cert_manager {
        info!("cert-manager is not installed: AppEnvironments with TLS will report CertManagerMissing");
    }
    let external_secrets = api_served::<ExternalSecret>(&client, first_namespace).await;
    if !external_secrets {
        info!(
            "the External Secrets Operator is not installed: AppEnvironments with externalSecrets will report ExternalSecretsMissing"
        );
    }
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "berth".into(), instance: Some(identity.clone()) });
    let mut context = Context::new(
        client.clone(),
        tenants,
        metrics.clone(),
        recorder,
        Duration::from_secs(args.resync_seconds),
        cert_manager,
    );
    context.operator_namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "berth-system".into());
    context.endpoint_overrides = args.endpoint_overrides.iter().cloned().collect();
    context.agent_image = args.agent_image.clone();
    context.external_secrets = external_secrets;
    controllers::repository::allow_operator_identity(args.allow_operator_storage_identity);
    let ctx = Arc::new(context);

    let scopes: Vec<Option<String>> = {
        let named: Vec<String> = args.namespaces.iter().filter(|n| !n.is_empty()).cloned().collect();
        if named.is_empty() { vec![None] } else { named.into_iter().map(Some).collect() }
    };
    // The calls since acquiring did not renew the lease: start no controller on a lease that
    // may already be another replica's.
    if let Some(reason) = elector.as_ref().and_then(LeaderElector::lost) {
        error!(%reason, monotonic_ns = leader::monotonic_ns(), "stopped leading before starting the controllers");
        return Ok(ExitCode::FAILURE);
    }
    // Controllers per scope: AppEnvironment, DatabaseInstance, Backup, BackupPolicy, Restore.
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len() * 5));
    let mut controllers = tokio::task::JoinSet::new();
    for scope in scopes {
        let (h, p) = (health.clone(), pending.clone());
        let on_synced = move || {
            if p.fetch_sub(1, Ordering::SeqCst) == 1 {
                h.caches_synced.store(true, Ordering::SeqCst);
                info!("caches synced; ready");
            }
        };
        controllers.spawn(controllers::appenvironment::run(
            ctx.clone(),
            scope.clone(),
            stopped(stop_rx.clone()),
            on_synced.clone(),
        ));
        controllers.spawn(controllers::databaseinstance::run(
            ctx.clone(),
            scope.clone(),
            stopped(stop_rx.clone()),
            on_synced.clone(),
        ));
        controllers.spawn(controllers::backup::run(
            ctx.clone(),
            scope.clone(),
            stopped(stop_rx.clone()),
            on_synced.clone(),
        ));
        controllers.spawn(controllers::backuppolicy::run(
            ctx.clone(),
            scope.clone(),
            stopped(stop_rx.clone()),
            on_synced.clone(),
        ));
        controllers.spawn(controllers::restore::run(ctx.clone(), scope, stopped(stop_rx.clone()), on_synced));
    }

    let (code, still_leading) = {
        let leading = async {
            match &mut elector {
                Some(e) => e.hold().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(leading);
        tokio::select! {
            reason = &mut leading => {
                // The renew deadline has passed or another replica holds the lease: stop
                // reconciling now, well before a standby may take over (a lease duration after
                // our last renewal), and exit rather than wait for anything.
                stop_leading(&mut controllers).await;
                error!(%reason, monotonic_ns = leader::monotonic_ns(), "stopped leading; exiting so that a new leader takes over cleanly");
                (ExitCode::FAILURE, false)
            }
            finished = controllers.join_next() => {
                // Controllers end only on shutdown; one that ends (or panics) otherwise is fatal.
                let shutdown = *stop_rx.borrow();
                let mut still_leading = true;
                if shutdown {
                    // In-flight reconciles may wait on slow storage (an S3 retry loop); they are
                    // idempotent, so the next leader redoes them. Waiting longer than the grace
                    // period would only get the pod killed. The lease is still renewed meanwhile.
                    let drain = tokio::time::timeout(SHUTDOWN_GRACE, async {
                        while controllers.join_next().await.is_some() {}
                    });
                    tokio::select! {
                        drained = drain => if drained.is_err() {
                            warn!("abandoning reconciles still running after {}s", SHUTDOWN_GRACE.as_secs());
                        },
                        reason = &mut leading => {
                            warn!(%reason, "leadership lost while stopping");
                            still_leading = false;
                        }
                    }
                } else {
                    error!(result = ?finished.map(|r| r.map_err(|e| e.to_string())), "a controller stopped unexpectedly");
                }
                stop_leading(&mut controllers).await;
                info!(monotonic_ns = leader::monotonic_ns(), "stopped leading; controllers stopped");
                (if shutdown { ExitCode::SUCCESS } else { ExitCode::FAILURE }, still_leading)
            }
        }
    };
    health.alive.store(code == ExitCode::SUCCESS, Ordering::SeqCst);
    metrics.leader.set(0);
    if let Some(e) = &elector
        && still_leading
    {
        e.release().await;
    }
    signal.abort();
    server.abort();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_account_must_be_a_service_account_name() {
        assert_eq!(parse_account("berth-backup").unwrap(), "berth-backup");
        assert_eq!(parse_account("team.backup-1").unwrap(), "team.backup-1");
        for bad in ["", "Berth", "-x", "x-", "a_b", "system:serviceaccount:ns:x"] {
            let e = parse_account(bad).unwrap_err();
            assert!(e.contains("is not a ServiceAccount name"), "{bad}: {e}");
        }
    }
}

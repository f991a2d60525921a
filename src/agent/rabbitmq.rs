//! RabbitMQ definitions (users, vhosts, permissions, policies, queues, exchanges, bindings)
//! through the management API: `GET /api/definitions` to back up, `POST /api/definitions` to
//! restore. Snapshot layout: `definitions.json`.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Management API settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RabbitConn {
    /// Management API base URL, e.g. http://rabbitmq:15672.
    #[arg(id = "rabbitmq_url", long = "rabbitmq-url", env = "BERTH_RABBITMQ_URL")]
    pub url: Option<String>,
    #[arg(
        id = "rabbitmq_user",
        long = "rabbitmq-user",
        env = "BERTH_RABBITMQ_USER"
    )]
    pub user: Option<String>,
    /// Password (prefer the environment variable).
    #[arg(
        id = "rabbitmq_password",
        long = "rabbitmq-password",
        env = "BERTH_RABBITMQ_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// PEM file with CA certificates for an HTTPS management endpoint.
    #[arg(
        id = "rabbitmq_ca_file",
        long = "rabbitmq-ca-file",
        env = "BERTH_RABBITMQ_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
}

impl RabbitConn {
    fn base(&self) -> anyhow::Result<String> {
        let url = self
            .url
            .as_deref()
            .context("--rabbitmq-url (BERTH_RABBITMQ_URL) is required")?;
        Ok(url.trim_end_matches('/').to_string())
    }

    /// The URL without credentials, the snapshot source.
    pub fn source(&self) -> String {
        self.url.clone().unwrap_or_default()
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120));
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        Ok(b.build()?)
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.user {
            Some(u) => r.basic_auth(u, self.password.as_deref()),
            None => r,
        }
    }
}

/// Fetches the definitions document.
pub async fn export(conn: &RabbitConn) -> anyhow::Result<Vec<u8>> {
    let url = format!("{}/api/definitions", conn.base()?);
    let resp = conn
        .auth(conn.client()?.get(&url))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    // Validate and normalise to pretty JSON (readable when restored to a directory).
    let v: serde_json::Value = serde_json::from_slice(&body).context("definitions are not JSON")?;
    Ok(serde_json::to_vec_pretty(&v)?)
}

/// Loads a definitions document into the node.
pub async fn import(conn: &RabbitConn, definitions: Vec<u8>) -> anyhow::Result<()> {
    let url = format!("{}/api/definitions", conn.base()?);
    let resp = conn
        .auth(conn.client()?.post(&url))
        .header("content-type", "application/json")
        .body(definitions)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "POST {url}: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

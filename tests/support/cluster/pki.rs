//! The control plane's PKI, made in-process with rcgen: a CA, the API server's serving
//! certificate, and the service-account signing key. Clients authenticate with static tokens.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

/// PEM files on disk.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    /// Its public half (the API server reads public keys only from `--service-account-key-file`).
    pub service_account_public_key: PathBuf,
    /// The CA certificate's PEM, for kubeconfigs and clients.
    pub ca_pem: String,
}

impl Pki {
    /// Writes a fresh PKI into `dir`.
    pub fn create(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "berth-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);

        // Names the in-cluster clients use, and the loopback address the tests use.
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .unwrap();
        serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let serving_key = KeyPair::generate().unwrap();
        let serving_cert = serving.signed_by(&serving_key, &issuer).unwrap();

        let sa_key = KeyPair::generate().unwrap();

        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca_cert: write("ca.crt", ca_cert.pem()),
            ca_key: write("ca.key", ca_key.serialize_pem()),
            serving_cert: write("apiserver.crt", serving_cert.pem()),
            serving_key: write("apiserver.key", serving_key.serialize_pem()),
            service_account_key: write("sa.key", sa_key.serialize_pem()),
            service_account_public_key: write("sa.pub", sa_key.public_key_pem()),
            ca_pem: ca_cert.pem(),
        }
    }
}

/// A kubeconfig for `server` with bearer `token`, trusting `ca_pem`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth-test
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: {user}@berth-test
  context:
    cluster: berth-test
    user: {user}
current-context: {user}@berth-test
"
    )
}

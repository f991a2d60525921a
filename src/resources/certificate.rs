//! The cert-manager `Certificate` (cert-manager.io/v1), hand-written with only the fields
//! Berth sets or reads: a generated copy of cert-manager's full schema would be thousands of
//! lines we never use, and its schema is cert-manager's to install, not ours.

use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// Spec of a cert-manager Certificate (the subset Berth uses).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    namespaced,
    schema = "disabled",
    status = "CertificateStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub dns_names: Vec<String>,
    pub issuer_ref: CertificateIssuerRef,
}

/// Issuer of a Certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CertificateIssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

/// Status of a Certificate (the subset Berth reads).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    #[serde(default)]
    pub conditions: Vec<CertificateCondition>,
}

/// cert-manager's condition shape (like `metav1.Condition`, with optional fields).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

impl Certificate {
    /// The Ready condition, if cert-manager has reported one.
    pub fn ready(&self) -> Option<&CertificateCondition> {
        self.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")
    }
}

//! The custom resources of group `berth.dev`, version `v1alpha1`, and the helpers they
//! share (conditions, CRD listing).

// kube-derive takes one `printcolumn(...)` per column; clippy mistakes the repeats for duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod appenvironment;
pub mod backup;
pub mod backuppolicy;
pub mod conditions;
pub mod databaseinstance;
pub mod restore;
pub mod validation;

pub use appenvironment::AppEnvironment;
pub use backup::Backup;
pub use backuppolicy::BackupPolicy;
pub use databaseinstance::DatabaseInstance;
pub use restore::Restore;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every Berth resource.
pub const GROUP: &str = "berth.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Berth owns, in a stable order (the order `berth crds` prints them in).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![AppEnvironment::crd(), DatabaseInstance::crd(), BackupPolicy::crd(), Backup::crd(), Restore::crd()]
}

/// The file a CRD is written to by `berth crds --dir`: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

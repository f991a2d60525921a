//! Conditions of an AppEnvironment, computed from what was observed of its Deployment,
//! Certificate and referenced DatabaseInstances. Pure, so every rollout situation is a unit test.

use k8s_openapi::api::apps::v1::Deployment;

use kube::ResourceExt;

use super::databases::DatabaseLinks;
use super::validate::ValidApp;
use crate::api::conditions::{DEGRADED, DesiredCondition, PROGRESSING, READY};
use crate::resources::certificate::Certificate;

/// What the controller observed, and whether it has just changed the Deployment (then the
/// cached Deployment is older than the change and cannot prove readiness).
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    pub certificate: Option<&'a Certificate>,
    pub deployment_just_changed: bool,
    /// `spec.databases` resolved against the namespace's DatabaseInstances: while one is
    /// missing or not ready, the app is not Ready but Progressing (`WaitingForDatabase`).
    pub databases: &'a DatabaseLinks,
}

/// Reason of `Ready=False` and `Progressing=True` while a referenced DatabaseInstance is
/// missing or not ready.
pub const WAITING_FOR_DATABASE: &str = "WaitingForDatabase";

/// The computed part of the status.
#[derive(Debug, PartialEq)]
pub struct AppHealth {
    pub conditions: Vec<DesiredCondition>,
    pub ready_replicas: Option<i32>,
}

/// Ready, Progressing and Degraded from the rollout, the certificate and the databases.
pub fn health(valid: &ValidApp, observed: &Observed) -> AppHealth {
    let wants_tls = valid.ingress.as_ref().is_some_and(|i| i.tls.is_some());
    let ready_replicas = observed.deployment.and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas);

    let rollout = rollout_state(observed);
    let cert = if wants_tls { certificate_state(observed.certificate) } else { Part::Done };

    let namespace = valid.app.namespace().unwrap_or_else(|| "default".into());
    let waiting_for_database = observed.databases.waiting_message(&namespace);

    let (ready, ready_reason, ready_message) = match (&rollout, &cert, &waiting_for_database) {
        // An app without its database does not work, whatever the rollout says; a rollout or
        // certificate failure still shows as Degraded below.
        (_, _, Some(m)) => (false, WAITING_FOR_DATABASE, m.clone()),
        (Part::Done, Part::Done, None) => (true, "Available", "all replicas run the current spec".to_string()),
        (Part::Failed(m), _, None) => (false, "RolloutFailed", m.clone()),
        (_, Part::Failed(m), None) => (false, "CertificateFailed", m.clone()),
        (Part::Pending(m), _, None) => (false, "RollingOut", m.clone()),
        (_, Part::Pending(m), None) => (false, "CertificatePending", m.clone()),
    };
    let progressing =
        matches!(rollout, Part::Pending(_)) || matches!(cert, Part::Pending(_)) || waiting_for_database.is_some();
    let degraded = match (&rollout, &cert) {
        (Part::Failed(m), _) => Some(("RolloutFailed", m.clone())),
        (_, Part::Failed(m)) => Some(("CertificateFailed", m.clone())),
        _ => None,
    };
    AppHealth {
        conditions: vec![
            DesiredCondition::new(READY, ready, ready_reason, ready_message),
            if progressing {
                DesiredCondition::new(
                    PROGRESSING,
                    true,
                    ready_reason,
                    waiting_for_database
                        .clone()
                        .unwrap_or_else(|| "waiting for the rollout and certificate to finish".to_string()),
                )
            } else {
                DesiredCondition::new(PROGRESSING, false, "Idle", "nothing in flight")
            },
            match degraded {
                Some((reason, m)) => DesiredCondition::new(DEGRADED, true, reason, m),
                None => DesiredCondition::new(DEGRADED, false, "Healthy", "no failure observed"),
            },
        ],
        ready_replicas,
    }
}

enum Part {
    Done,
    Pending(String),
    Failed(String),
}

fn rollout_state(observed: &Observed) -> Part {
    let Some(d) = observed.deployment else { return Part::Pending("the Deployment does not exist yet".into()) };
    if observed.deployment_just_changed {
        return Part::Pending("the Deployment was just updated".into());
    }
    let Some(status) = d.status.as_ref() else { return Part::Pending("the Deployment has no status yet".into()) };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(c) =
        conditions.iter().find(|c| c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("False"))
    {
        return Part::Failed(format!(
            "rollout stalled: {}",
            c.message.clone().or_else(|| c.reason.clone()).unwrap_or_default()
        ));
    }
    if let Some(c) =
        conditions.iter().find(|c| c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True"))
    {
        return Part::Failed(format!("pods cannot be created: {}", c.message.clone().unwrap_or_default()));
    }
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Part::Pending("the Deployment controller has not seen the latest spec".into());
    }
    // The autoscaler owns spec.replicas when autoscaling; the status replicas field then
    // tells how many pods are wanted.
    let wanted = d.spec.replicas.unwrap_or_else(|| status.replicas.unwrap_or(1));
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < wanted || available < wanted || total > updated {
        return Part::Pending(format!("{updated}/{wanted} pods updated, {available} available"));
    }
    Part::Done
}

fn certificate_state(cert: Option<&Certificate>) -> Part {
    let Some(cert) = cert else { return Part::Pending("the Certificate does not exist yet".into()) };
    match cert.ready() {
        Some(c) if c.status == "True" => Part::Done,
        Some(c) if c.reason.as_deref().is_some_and(|r| r.contains("Fail") || r == "Denied") => {
            Part::Failed(format!("certificate not issued: {}", c.message.clone().unwrap_or_default()))
        }
        Some(c) => Part::Pending(format!("certificate not issued yet: {}", c.message.clone().unwrap_or_default())),
        None => Part::Pending("cert-manager has not reported on the certificate yet".into()),
    }
}

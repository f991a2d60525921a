//! Leader election through a `coordination.k8s.io/v1` Lease, so that two replicas can run and
//! only one reconciles. Losing the lease ends the process: a replica that cannot prove it
//! leads must not keep writing.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

/// Timings of the election (the usual client-go defaults).
#[derive(Clone, Debug)]
pub struct LeaseTimings {
    pub duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// One candidate for the lease `name`.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
}

/// How one attempt went.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    /// Another replica holds an unexpired lease.
    Following(String),
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timings: LeaseTimings) -> Self {
        Self { api, name: name.into(), identity: identity.into(), timings }
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    /// Acquires or renews the lease once. A lost write race (409) counts as following.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let now = Self::now();
        let secs = self.timings.duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following("unknown".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(d)) => renewed.0 + jiff::SignedDuration::from_secs(d.into()) < now.0,
            _ => true,
        };
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(Attempt::Following(holder));
        }
        if holder != self.identity {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(secs);
        // replace() carries the resourceVersion we read: a concurrent writer makes it fail with 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following(holder)),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads. `on_first_answer` runs once the first attempt has told
    /// whether someone leads (readiness needs leadership to be known).
    pub async fn acquire(&self, mut on_first_answer: impl FnMut()) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    on_first_answer();
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return;
                }
                Ok(Attempt::Following(holder)) => {
                    on_first_answer();
                    debug!(lease = %self.name, %holder, "another replica leads");
                }
                Err(e) => warn!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timings.retry_every).await;
        }
    }

    /// Renews the lease until it cannot be renewed within its duration; returns then.
    pub async fn hold(&self) -> String {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.timings.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::Following(holder)) => return format!("lease {} taken over by {holder}", self.name),
                Err(e) => warn!(lease = %self.name, error = %e, "lease renewal failed"),
            }
            if last_renewal.elapsed() >= self.timings.duration {
                return format!("lease {} not renewed for {:?}", self.name, self.timings.duration);
            }
        }
    }

    /// Gives the lease up on shutdown so that the other replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.identity)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            if let Err(e) = self.api.replace(&self.name, &PostParams::default(), &lease).await {
                warn!(error = %e, "could not release the lease; the other replica takes over when it expires");
            }
        }
    }
}

//! Leader election through a `coordination.k8s.io/v1` Lease, with client-go's semantics
//! (`k8s.io/client-go/tools/leaderelection`), so that two replicas can run and only one
//! reconciles.
//!
//! Timings (flags `--lease-duration-seconds`, `--lease-renew-deadline-seconds`,
//! `--lease-retry-period-seconds`; client-go's defaults 15 s, 10 s, 2 s):
//! - A candidate reads the Lease every retry period. It remembers the whole record it last saw
//!   and the instant, on its own MONOTONIC clock, at which that record last changed (client-go's
//!   `observedRecord` / `observedTime`). Another holder's lease has expired only when
//!   `leaseDurationSeconds` of the record have passed on that clock without the record changing.
//!   `renewTime` is never compared with the local wall clock, so clock skew between nodes does
//!   not matter; only the rates of the clocks do (and those differ by parts per million).
//! - Every API call has a deadline. The leader renews every retry period; each call may last
//!   only until `last successful renewal + renew deadline`, where a renewal counts from the
//!   instant its request was SENT. When that deadline passes (a hung connection, an API server
//!   that does not answer) or the record names another holder, the leader stops leading: the
//!   controllers are cancelled and the process exits (`runtime::run`).
//! - Writes carry the resourceVersion that was read, so of two candidates that act on the same
//!   record only one succeeds (the other gets 409 and reads again).
//!
//! Guarantee: a standby takes over only by replacing the record it observed, which the leader
//! wrote after the instant its renewal was sent; the standby waited a lease duration from a
//! moment after that write. The leader gave up by `sent + renew deadline`, so it has stopped
//! `lease duration - renew deadline` (5 s by default) before anyone else can lead. That margin
//! must cover cancelling the controllers, which takes milliseconds. A process that is frozen
//! (SIGSTOP, a suspended VM) is not covered, as in client-go: its clock stops with it.
//!
//! Written here rather than taken from a crate: `kube-lease-manager` 0.13 (kube 5),
//! `kube-leader-election` 0.44 and `kube-coordinate` 2.0 all judge expiry as
//! `renewTime + duration` against the local wall clock, and none bounds a renewal call by a
//! renew deadline.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Timings of the election (client-go's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a standby waits, from the last change it saw of the record, before it takes over.
    pub lease_duration: Duration,
    /// How long the leader may go without a successful renewal before it stops leading.
    pub renew_deadline: Duration,
    /// Pause between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// From the command line's seconds; refuses timings under which two leaders could overlap.
    pub fn from_seconds(lease_duration: u64, renew_deadline: u64, retry_period: u64) -> Result<Self, String> {
        if retry_period == 0 {
            return Err("--lease-retry-period-seconds must be at least 1".into());
        }
        if renew_deadline <= retry_period {
            return Err(format!(
                "--lease-renew-deadline-seconds ({renew_deadline}) must be greater than \
                 --lease-retry-period-seconds ({retry_period}), or the leader gets no second try"
            ));
        }
        if lease_duration <= renew_deadline {
            return Err(format!(
                "--lease-duration-seconds ({lease_duration}) must be greater than \
                 --lease-renew-deadline-seconds ({renew_deadline}): the leader must stop before a \
                 standby may take over"
            ));
        }
        if i32::try_from(lease_duration).is_err() {
            return Err(format!("--lease-duration-seconds ({lease_duration}) is too large"));
        }
        Ok(Self {
            lease_duration: Duration::from_secs(lease_duration),
            renew_deadline: Duration::from_secs(renew_deadline),
            retry_period: Duration::from_secs(retry_period),
        })
    }
}

/// What a candidate should do next, from what it has observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The lease is missing, free, ours, or expired by the local monotonic clock: write our record.
    Acquire,
    /// We lead: write our record again.
    Renew,
    /// Another candidate holds an unexpired lease.
    Wait { holder: String, expires_in: Duration },
    /// We led and no longer may.
    Lost(String),
}

/// The record last seen, and when (locally, monotonic) it last changed.
#[derive(Clone, Debug)]
struct Observed {
    record: Option<LeaseSpec>,
    changed_at: Instant,
}

/// The pure state of one candidate: no I/O, no wall clock (except to stamp records it writes).
#[derive(Clone, Debug)]
pub struct Candidate {
    identity: String,
    timings: LeaseTimings,
    observed: Option<Observed>,
    /// When the request of our last successful write was sent; `Some` while we lead.
    renewed_at: Option<Instant>,
}

impl Candidate {
    pub fn new(identity: &str, timings: LeaseTimings) -> Self {
        Self { identity: identity.into(), timings, observed: None, renewed_at: None }
    }

    pub fn is_leading(&self) -> bool {
        self.renewed_at.is_some()
    }

    /// Records what a read returned at `now` (`None`: no Lease). The observed instant moves
    /// only when the record differs from the last one, field by field.
    pub fn observe(&mut self, record: Option<&LeaseSpec>, now: Instant) {
        if self.observed.as_ref().is_some_and(|o| o.record.as_ref() == record) {
            return;
        }
        self.observed = Some(Observed { record: record.cloned(), changed_at: now });
    }

    /// When the leader must have renewed by; for a follower, a bound for one attempt's calls.
    pub fn deadline(&self, now: Instant) -> Instant {
        match self.renewed_at {
            Some(renewed) => renewed + self.timings.renew_deadline,
            None => now + self.timings.renew_deadline,
        }
    }

    /// The next step at `now`.
    pub fn decide(&self, now: Instant) -> Decision {
        let holder = self.observed_holder();
        if let Some(renewed) = self.renewed_at {
            if now >= renewed + self.timings.renew_deadline {
                return Decision::Lost(format!("lease not renewed within {:?}", self.timings.renew_deadline));
            }
            if let Some(other) = holder.filter(|h| *h != self.identity) {
                return Decision::Lost(format!("lease taken over by {other}"));
            }
        }
        let Some(observed) = &self.observed else { return Decision::Acquire };
        let Some(record) = &observed.record else { return Decision::Acquire };
        match holder {
            Some(h) if h == self.identity && self.is_leading() => Decision::Renew,
            None | Some("") => Decision::Acquire,
            Some(h) if h == self.identity => Decision::Acquire,
            Some(h) => {
                let duration = record
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(self.timings.lease_duration, Duration::from_secs);
                let expires = observed.changed_at + duration;
                if now >= expires {
                    Decision::Acquire
                } else {
                    Decision::Wait { holder: h.to_string(), expires_in: expires - now }
                }
            }
        }
    }

    fn observed_holder(&self) -> Option<&str> {
        self.observed.as_ref()?.record.as_ref()?.holder_identity.as_deref()
    }

    /// The record to write at wall-clock `now`: `renewTime` and `acquireTime` are for people
    /// (kubectl); no candidate judges expiry by them.
    pub fn record_to_write(&self, now: jiff::Timestamp) -> LeaseSpec {
        let current = self.observed.as_ref().and_then(|o| o.record.clone()).unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timings.lease_duration.as_secs() as i32),
            acquire_time: if ours { current.acquire_time.clone() } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(match (&self.observed, ours) {
                (Some(Observed { record: Some(_), .. }), false) => current.lease_transitions.unwrap_or(0) + 1,
                _ => current.lease_transitions.unwrap_or(0),
            }),
            ..current
        }
    }

    /// A write whose request was sent at `sent` succeeded and left `record`, seen at `now`.
    pub fn wrote(&mut self, record: &LeaseSpec, sent: Instant, now: Instant) {
        self.renewed_at = Some(sent);
        self.observe(Some(record), now);
    }
}

/// How one attempt went.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    /// Another replica holds an unexpired lease (or won the race to it).
    Following(String),
    Lost(String),
}

/// One candidate for the lease `name`, talking to the API server.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    candidate: Candidate,
    timings: LeaseTimings,
}

/// An API call that did not answer before its deadline.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer before the renew deadline")]
    Timeout,
}

async fn until<T>(deadline: Instant, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, CallError> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CallError::Timeout),
    }
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timings: LeaseTimings) -> Self {
        Self { api, name: name.into(), candidate: Candidate::new(identity, timings.clone()), timings }
    }

    pub fn identity(&self) -> &str {
        &self.candidate.identity
    }

    /// Reads the Lease and acquires or renews it once, every call bounded by the deadline.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, CallError> {
        let deadline = self.candidate.deadline(Instant::now());
        let lease = until(deadline, self.api.get_opt(&self.name)).await?;
        self.candidate.observe(lease.as_ref().and_then(|l| l.spec.as_ref()), Instant::now());
        let decision = self.candidate.decide(Instant::now());
        match decision {
            Decision::Lost(reason) => return Ok(Attempt::Lost(reason)),
            Decision::Wait { holder, expires_in } => {
                debug!(lease = %self.name, %holder, ?expires_in, "another replica leads");
                return Ok(Attempt::Following(holder));
            }
            Decision::Acquire | Decision::Renew => {}
        }
        let exists = lease.is_some();
        let mut lease = lease.unwrap_or_else(|| Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
            spec: None,
        });
        lease.spec = Some(self.candidate.record_to_write(jiff::Timestamp::now()));
        let sent = Instant::now();
        // replace() carries the resourceVersion we read: a concurrent writer makes it fail with
        // 409, as does a concurrent create.
        let written = if exists {
            until(deadline, self.api.replace(&self.name, &PostParams::default(), &lease)).await
        } else {
            until(deadline, self.api.create(&PostParams::default(), &lease)).await
        };
        match written {
            Ok(lease) => {
                self.candidate.wrote(&lease.spec.unwrap_or_default(), sent, Instant::now());
                Ok(Attempt::Leading)
            }
            Err(CallError::Api(kube::Error::Api(s))) if s.code == 409 => {
                Ok(Attempt::Following(format!("the writer that won the race to lease {}", self.name)))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads. `on_first_answer` runs once an attempt has told whether
    /// someone leads (readiness needs leadership to be known).
    pub async fn acquire(&mut self, mut on_first_answer: impl FnMut()) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    on_first_answer();
                    return;
                }
                Ok(Attempt::Following(_) | Attempt::Lost(_)) => on_first_answer(),
                Err(e) => warn!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
    }

    /// Why this replica may no longer lead, judged now without asking the API server.
    pub fn lost(&self) -> Option<String> {
        match self.candidate.decide(Instant::now()) {
            Decision::Lost(reason) => Some(reason),
            _ => None,
        }
    }

    /// Renews the lease every retry period; returns why once this replica may no longer lead.
    pub async fn hold(&mut self) -> String {
        loop {
            let deadline = self.candidate.deadline(Instant::now());
            tokio::time::sleep_until((Instant::now() + self.timings.retry_period).min(deadline)).await;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {}
                Ok(Attempt::Lost(reason)) => return reason,
                Ok(Attempt::Following(holder)) => warn!(lease = %self.name, %holder, "lease renewal lost a race"),
                Err(e) => warn!(lease = %self.name, error = %e, "lease renewal failed"),
            }
            if let Some(reason) = self.lost() {
                return reason;
            }
        }
    }

    /// Gives the lease up on shutdown, once the controllers have stopped, so that the other
    /// replica takes over at once (an empty holder is free to take). Bounded by the renew
    /// deadline: the lease expires by itself anyway.
    pub async fn release(&self) {
        let deadline = Instant::now() + self.timings.renew_deadline;
        let released = async {
            let Some(mut lease) = until(deadline, self.api.get_opt(&self.name)).await? else { return Ok(()) };
            let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
            if spec.holder_identity.as_deref() != Some(self.identity()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            until(deadline, self.api.replace(&self.name, &PostParams::default(), &lease)).await.map(|_| ())
        };
        match released.await {
            Ok(()) => info!(lease = %self.name, "released the lease"),
            Err(e) => warn!(error = %e, "could not release the lease; the other replica takes over when it expires"),
        }
    }
}

/// Nanoseconds on the system-wide monotonic clock (CLOCK_MONOTONIC), logged when leading starts
/// and stops so that the records of two processes on one host can be ordered.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> LeaseTimings {
        LeaseTimings::default()
    }

    fn record(holder: &str, renewed: jiff::Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(renewed)),
            renew_time: Some(MicroTime(renewed)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn wall(offset_secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::now() + jiff::SignedDuration::from_secs(offset_secs)
    }

    const SEC: Duration = Duration::from_secs(1);

    // The decisions take `now` as an argument: the tests move a monotonic instant by hand,
    // while the records' wall-clock times say whatever they like.

    #[test]
    fn another_holder_is_respected_for_a_lease_duration_whatever_its_wall_clock_says() {
        // A renewTime a day in the past (our clock ahead), a day in the future (behind), or now.
        for skew in [-86_400, 86_400, 0] {
            let held = record("a", wall(skew), 3);
            let mut me = Candidate::new("b", timings());
            let t0 = Instant::now();
            me.observe(Some(&held), t0);
            assert_eq!(me.decide(t0), Decision::Wait { holder: "a".into(), expires_in: 15 * SEC }, "skew {skew}");

            me.observe(Some(&held), t0 + 14 * SEC);
            assert_eq!(me.decide(t0 + 14 * SEC), Decision::Wait { holder: "a".into(), expires_in: SEC }, "skew {skew}");

            me.observe(Some(&held), t0 + 15 * SEC);
            assert_eq!(me.decide(t0 + 15 * SEC), Decision::Acquire, "skew {skew}: unchanged for 15 s");
        }
    }

    #[test]
    fn any_change_of_the_record_restarts_the_wait() {
        let base = record("a", wall(0), 3);
        let later = |t: &Option<MicroTime>, secs| {
            Some(MicroTime(t.as_ref().unwrap().0 + jiff::SignedDuration::from_secs(secs)))
        };
        let changes: Vec<(&str, LeaseSpec)> = vec![
            ("renewTime", LeaseSpec { renew_time: later(&base.renew_time, 2), ..base.clone() }),
            ("leaseTransitions", LeaseSpec { lease_transitions: Some(4), ..base.clone() }),
            ("acquireTime", LeaseSpec { acquire_time: later(&base.acquire_time, 1), ..base.clone() }),
            ("holderIdentity", LeaseSpec { holder_identity: Some("c".into()), ..base.clone() }),
            // An OLDER renewTime is a change too: only the local clock says how old a record is.
            ("renewTime backwards", LeaseSpec { renew_time: later(&base.renew_time, -60), ..base.clone() }),
        ];
        for (what, changed) in changes {
            let mut me = Candidate::new("b", timings());
            let t0 = Instant::now();
            me.observe(Some(&base), t0);
            me.observe(Some(&changed), t0 + 10 * SEC);
            me.observe(Some(&changed), t0 + 20 * SEC);
            let holder = changed.holder_identity.clone().unwrap();
            assert_eq!(me.decide(t0 + 20 * SEC), Decision::Wait { holder, expires_in: 5 * SEC }, "{what}");
        }
    }

    #[test]
    fn the_record_s_own_lease_duration_counts() {
        let mut me = Candidate::new("b", timings());
        let long = LeaseSpec { lease_duration_seconds: Some(60), ..record("a", wall(0), 0) };
        let t0 = Instant::now();
        me.observe(Some(&long), t0);
        assert_eq!(me.decide(t0 + 30 * SEC), Decision::Wait { holder: "a".into(), expires_in: 30 * SEC });
    }

    #[test]
    fn free_missing_or_own_leases_are_taken_at_once() {
        let mut me = Candidate::new("b", timings());
        let t0 = Instant::now();
        assert_eq!(me.decide(t0), Decision::Acquire, "nothing read yet");
        me.observe(None, t0);
        assert_eq!(me.decide(t0), Decision::Acquire, "no Lease");
        let released = LeaseSpec { holder_identity: None, ..record("a", wall(0), 2) };
        me.observe(Some(&released), t0);
        assert_eq!(me.decide(t0), Decision::Acquire, "released by its holder");
        me.observe(Some(&record("b", wall(0), 2)), t0);
        assert_eq!(me.decide(t0), Decision::Acquire, "ours from before a restart");
    }

    #[test]
    fn a_leader_that_cannot_renew_within_the_deadline_has_lost() {
        let mut me = Candidate::new("a", timings());
        let sent = Instant::now();
        me.wrote(&record("a", wall(0), 0), sent, sent + 3 * SEC); // a slow answer
        assert_eq!(me.decide(sent + 3 * SEC), Decision::Renew);
        assert_eq!(me.deadline(sent + 3 * SEC), sent + 10 * SEC, "counted from when the request was sent");

        assert_eq!(me.decide(sent + 10 * SEC - Duration::from_millis(1)), Decision::Renew);
        assert!(matches!(me.decide(sent + 10 * SEC), Decision::Lost(r) if r.contains("not renewed")));
        // ... strictly before a standby that saw that record may take it.
        let mut standby = Candidate::new("b", timings());
        standby.observe(Some(&record("a", wall(0), 0)), sent + 3 * SEC);
        assert!(matches!(standby.decide(sent + 10 * SEC), Decision::Wait { .. }));
    }

    #[test]
    fn a_leader_that_sees_another_holder_has_lost() {
        let mut me = Candidate::new("a", timings());
        let t0 = Instant::now();
        me.wrote(&record("a", wall(0), 0), t0, t0);
        me.observe(Some(&record("b", wall(0), 1)), t0 + SEC);
        assert_eq!(me.decide(t0 + SEC), Decision::Lost("lease taken over by b".into()));
    }

    #[test]
    fn written_records_keep_or_start_a_term() {
        let t = wall(0);
        let mut me = Candidate::new("b", timings());
        let new = me.record_to_write(t);
        assert_eq!((new.holder_identity.as_deref(), new.lease_transitions), (Some("b"), Some(0)));
        assert_eq!(new.lease_duration_seconds, Some(15));

        me.observe(Some(&record("a", wall(-100), 4)), Instant::now());
        let taken = me.record_to_write(t);
        assert_eq!((taken.lease_transitions, taken.acquire_time.map(|m| m.0)), (Some(5), Some(t)));

        let earlier = record("b", wall(-100), 5);
        me.observe(Some(&earlier), Instant::now());
        let renewed = me.record_to_write(t);
        assert_eq!(renewed.lease_transitions, Some(5));
        assert_eq!(renewed.acquire_time, earlier.acquire_time, "the term goes on");
        assert_eq!(renewed.renew_time.map(|m| m.0), Some(t));
    }

    #[test]
    fn timings_that_allow_two_leaders_are_refused() {
        assert_eq!(LeaseTimings::from_seconds(15, 10, 2), Ok(LeaseTimings::default()));
        let err = LeaseTimings::from_seconds(10, 10, 2).unwrap_err();
        assert!(err.contains("--lease-duration-seconds (10) must be greater than --lease-renew-deadline-seconds (10)"));
        assert!(LeaseTimings::from_seconds(15, 2, 2).unwrap_err().contains("--lease-retry-period-seconds"));
        assert!(LeaseTimings::from_seconds(15, 10, 0).is_err());
    }
}

//! `status.history`: the revisions of an AppEnvironment, for `berth rollback`, and the progress
//! deadline of the newest one. Pure: the controller hands in what it observed and writes what
//! comes out (the status, and the history ConfigMap when a spec is too large for the status).
//!
//! A revision is a distinct effective pod template: the app's, its workers', cron jobs' and
//! migration's, built from the spec. A spec change that leaves them alone (replicas, ingress)
//! is no new revision, like a Deployment's ReplicaSets.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::build::AppChildren;
use super::databases::CREDENTIALS_ANNOTATION_PREFIX;
use crate::api::appenvironment::{AppEnvironment, AppEnvironmentSpec, Revision, RevisionSpecRef};
use crate::resources::meta;

/// Revisions kept when `spec.revisionHistoryLimit` is not set.
pub const DEFAULT_LIMIT: i32 = 10;
/// Seconds a revision has to become Ready when `spec.progressDeadlineSeconds` is not set
/// (the Deployment's own default).
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
/// A spec of at most this many bytes of JSON stays in the status; a larger one goes to the
/// history ConfigMap, so that ten revisions never make the status large.
pub const INLINE_SPEC_LIMIT: usize = 1024;
/// Reason of `Progressing=False` (and of the Event) once the newest revision is past its
/// deadline without becoming Ready.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Component label of the history ConfigMap.
pub const HISTORY_COMPONENT: &str = "history";

/// The ConfigMap holding the specs too large for the status: `<app>-history`.
pub fn config_map_name(app: &str) -> String {
    format!("{app}-history")
}

fn key_of(revision: i64) -> String {
    format!("revision-{revision}.json.zst")
}

/// The hash of the effective pod templates of `children` (hex, 16 bytes of BLAKE3). The
/// credentials-revision annotations are left out: a rotated password rolls the pods but is
/// no change of the spec to roll back to.
pub fn template_hash(children: &AppChildren) -> String {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(a) = t.metadata.as_mut().and_then(|m| m.annotations.as_mut()) {
            a.retain(|k, _| !k.starts_with(CREDENTIALS_ANNOTATION_PREFIX));
        }
        serde_json::to_value(t).expect("pod templates serialize")
    };
    let deployments = std::iter::once(&children.deployment).chain(&children.workers);
    let mut templates: Vec<serde_json::Value> =
        deployments.filter_map(|d| d.spec.as_ref()).map(|s| strip(&s.template)).collect();
    templates.extend(
        children
            .cron_jobs
            .iter()
            .filter_map(|c| c.spec.as_ref()?.job_template.spec.as_ref())
            .map(|j| strip(&j.template)),
    );
    templates.extend(children.migration.iter().filter_map(|j| j.spec.as_ref()).map(|s| strip(&s.template)));
    let bytes = serde_json::to_vec(&templates).expect("JSON values serialize");
    hex::encode(&blake3::hash(&bytes).as_bytes()[..16])
}

/// What the controller saw of the current spec in this reconcile.
#[derive(Clone, Debug)]
pub struct Observation {
    pub generation: i64,
    pub hash: String,
    pub spec: AppEnvironmentSpec,
    /// `Ready=True` for the current spec (its Deployment was not just changed).
    pub ready: bool,
}

/// The history after an observation, and the spec to store in the ConfigMap when the new
/// revision's is too large for the status.
#[derive(Debug, PartialEq)]
pub struct Recorded {
    pub history: Vec<Revision>,
    /// The new revision's key and its spec, zstd-compressed JSON.
    pub stored: Option<(String, Vec<u8>)>,
}

/// Records `seen` in `history` (oldest first): the newest revision becomes Ready, or a new
/// revision supersedes it when the templates changed; then only the newest `limit` stay.
pub fn record(app: &str, history: &[Revision], seen: &Observation, limit: i32, now: &Time) -> Recorded {
    let mut history = history.to_vec();
    let mut stored = None;
    match history.last_mut() {
        Some(last) if last.hash == seen.hash => {
            if seen.ready && last.ready_at.is_none() {
                last.ready_at = Some(now.clone());
            }
        }
        last => {
            let number = last.as_ref().map_or(1, |l| l.revision + 1);
            if let Some(last) = last {
                last.superseded_at.get_or_insert_with(|| now.clone());
            }
            let json = serde_json::to_string(&seen.spec).expect("specs serialize");
            let (spec, spec_ref) = if json.len() <= INLINE_SPEC_LIMIT {
                (Some(json), None)
            } else {
                let key = key_of(number);
                stored = Some((key.clone(), compress(&json)));
                (None, Some(RevisionSpecRef { config_map: config_map_name(app), key }))
            };
            history.push(Revision {
                revision: number,
                generation: seen.generation,
                image: seen.spec.image.clone(),
                hash: seen.hash.clone(),
                created_at: now.clone(),
                ready_at: seen.ready.then(|| now.clone()),
                superseded_at: None,
                spec,
                spec_ref,
            });
        }
    }
    let keep = usize::try_from(limit.max(1)).unwrap_or(1);
    if history.len() > keep {
        history.drain(..history.len() - keep);
    }
    Recorded { history, stored }
}

/// zstd at its default level: a spec's JSON shrinks 3–6 times.
pub fn compress(json: &str) -> Vec<u8> {
    zstd::encode_all(json.as_bytes(), 0).expect("compressing into memory cannot fail")
}

/// The history ConfigMap of `app` after `stored` was added: the keys of the revisions still in
/// `history`, from `existing` (the ConfigMap's current `binaryData`) and `stored`.
pub fn config_map(
    app: &AppEnvironment,
    history: &[Revision],
    mut existing: BTreeMap<String, ByteString>,
    stored: Option<(String, Vec<u8>)>,
) -> ConfigMap {
    if let Some((key, bytes)) = stored {
        existing.insert(key, ByteString(bytes));
    }
    let wanted: Vec<&str> = history.iter().filter_map(|r| Some(r.spec_ref.as_ref()?.key.as_str())).collect();
    existing.retain(|k, _| wanted.contains(&k.as_str()));
    let name = config_map_name(&app.name_any());
    ConfigMap {
        metadata: meta::child_meta(app, &name, meta::standard_labels(app, HISTORY_COMPONENT)),
        binary_data: Some(existing),
        ..ConfigMap::default()
    }
}

/// The spec of `revision`, from the status or from the history ConfigMap's `binaryData`.
/// The error says what is missing and where.
pub fn spec_of(
    revision: &Revision,
    config_map: Option<&BTreeMap<String, ByteString>>,
) -> Result<AppEnvironmentSpec, String> {
    let json = match (&revision.spec, &revision.spec_ref) {
        (Some(json), _) => json.clone(),
        (None, Some(r)) => {
            let bytes = config_map.and_then(|d| d.get(&r.key)).ok_or_else(|| {
                format!(
                    "the spec of revision {} is missing from ConfigMap {} (key {})",
                    revision.revision, r.config_map, r.key
                )
            })?;
            let raw = zstd::decode_all(bytes.0.as_slice())
                .map_err(|e| format!("ConfigMap {} key {}: not zstd data: {e}", r.config_map, r.key))?;
            String::from_utf8(raw).map_err(|e| format!("ConfigMap {} key {}: not UTF-8: {e}", r.config_map, r.key))?
        }
        (None, None) => return Err(format!("revision {} has no recorded spec", revision.revision)),
    };
    serde_json::from_str(&json).map_err(|e| format!("the recorded spec of revision {}: {e}", revision.revision))
}

/// The newest revision before the newest one that became Ready: what `berth rollback` goes
/// back to without `--to-revision`.
pub fn last_good(history: &[Revision]) -> Option<&Revision> {
    let (_, older) = history.split_last()?;
    older.iter().rev().find(|r| r.ready_at.is_some())
}

/// Where the newest revision stands against its progress deadline.
#[derive(Debug, PartialEq)]
pub enum Deadline<'a> {
    /// Ready (or no revision): nothing to watch.
    Met,
    /// Not Ready yet; the deadline passes after this long.
    Pending(Duration),
    /// Not Ready past the deadline.
    Exceeded { stalled: &'a Revision, last_good: Option<&'a Revision> },
}

pub fn deadline<'a>(history: &'a [Revision], deadline_seconds: i32, now: &Time) -> Deadline<'a> {
    let Some(newest) = history.last().filter(|r| r.ready_at.is_none()) else { return Deadline::Met };
    let due = newest.created_at.0 + jiff::SignedDuration::from_secs(i64::from(deadline_seconds));
    match now.0.duration_until(due).try_into() {
        Ok(left) if left > Duration::ZERO => Deadline::Pending(left),
        _ => Deadline::Exceeded { stalled: newest, last_good: last_good(history) },
    }
}

/// The message of `Progressing=False ProgressDeadlineExceeded` and of its Event.
pub fn deadline_message(
    app: &AppEnvironment,
    stalled: &Revision,
    last_good: Option<&Revision>,
    seconds: i32,
) -> String {
    let (name, ns) = (app.name_any(), app.namespace().unwrap_or_default());
    let head = format!(
        "revision {} (generation {}, image {}) has not become Ready within {seconds}s (spec.progressDeadlineSeconds)",
        stalled.revision, stalled.generation, stalled.image
    );
    match last_good {
        Some(good) => format!(
            "{head}; the last good revision is {} (image {}): roll back with `berth rollback {name} -n {ns} --to-revision {}`, or fix the spec. Berth does not roll back by itself",
            good.revision, good.image, good.revision
        ),
        None => format!("{head}; no earlier revision became Ready: fix the spec"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn app() -> AppEnvironment {
        let mut app = AppEnvironment::new("web", AppEnvironmentSpec { image: "web:1".into(), ..Default::default() });
        app.metadata.namespace = Some("shop".into());
        app.metadata.uid = Some("uid-1".into());
        app
    }

    fn seen(generation: i64, image: &str, ready: bool) -> Observation {
        let spec = AppEnvironmentSpec { image: image.into(), ..Default::default() };
        Observation { generation, hash: format!("hash-of-{image}"), spec, ready }
    }

    fn replay(steps: &[(Observation, i64)], limit: i32) -> Vec<Revision> {
        steps.iter().fold(Vec::new(), |h, (s, at)| record("web", &h, s, limit, &t(*at)).history)
    }

    #[test]
    fn a_new_template_is_a_new_revision_and_readiness_is_recorded_once() {
        let history = replay(
            &[
                (seen(1, "web:1", false), 10),
                (seen(1, "web:1", true), 20),
                (seen(2, "web:1", true), 30), // same templates (say, replicas changed)
                (seen(3, "web:2", false), 40),
                (seen(4, "web:3", false), 50),
            ],
            10,
        );
        let rows: Vec<_> = history
            .iter()
            .map(|r| (r.revision, r.generation, r.image.as_str(), r.ready_at.clone(), r.superseded_at.clone()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (1, 1, "web:1", Some(t(20)), Some(t(40))),
                (2, 3, "web:2", None, Some(t(50))), // never became Ready
                (3, 4, "web:3", None, None),
            ]
        );
        let spec: AppEnvironmentSpec = serde_json::from_str(history[1].spec.as_ref().unwrap()).unwrap();
        assert_eq!(spec.image, "web:2");
    }

    #[test]
    fn only_the_newest_revisions_stay_and_numbers_keep_counting() {
        let steps: Vec<_> = (1..=12).map(|i| (seen(i, &format!("web:{i}"), true), i * 10)).collect();
        let history = replay(&steps, 3);
        assert_eq!(history.iter().map(|r| r.revision).collect::<Vec<_>>(), [10, 11, 12]);
        assert_eq!(replay(&steps, DEFAULT_LIMIT).len(), 10);
    }

    #[test]
    fn a_large_spec_goes_compressed_to_the_config_map_and_comes_back() {
        let mut big = seen(1, "web:1", false);
        big.spec.args = (0..200).map(|i| format!("--flag-{i}=value")).collect();
        let recorded = record("web", &[], &big, 10, &t(1));
        let revision = &recorded.history[0];
        assert_eq!(revision.spec, None);
        let r = revision.spec_ref.clone().unwrap();
        assert_eq!((r.config_map.as_str(), r.key.as_str()), ("web-history", "revision-1.json.zst"));
        let (key, bytes) = recorded.stored.clone().unwrap();
        let json = serde_json::to_string(&big.spec).unwrap();
        assert!(bytes.len() * 3 < json.len(), "{} compressed bytes of {}", bytes.len(), json.len());

        let cm = config_map(&app(), &recorded.history, BTreeMap::new(), recorded.stored);
        assert_eq!(cm.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let data = cm.binary_data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [&key]);
        assert_eq!(spec_of(revision, Some(&data)).unwrap(), big.spec);
        let missing = spec_of(revision, None).unwrap_err();
        assert!(missing.contains("web-history") && missing.contains("revision-1.json.zst"), "{missing}");
        // A small spec stays inline and needs no ConfigMap.
        let small = record("web", &[], &seen(1, "web:1", false), 10, &t(1));
        assert_eq!(small.stored, None);
        assert_eq!(spec_of(&small.history[0], None).unwrap().image, "web:1");
    }

    #[test]
    fn keys_of_revisions_that_left_the_history_leave_the_config_map() {
        let mut big = seen(1, "web:1", false);
        big.spec.args = (0..200).map(|i| format!("--flag-{i}")).collect();
        let first = record("web", &[], &big, 1, &t(1));
        let cm = config_map(&app(), &first.history, BTreeMap::new(), first.stored);
        let mut next = big.clone();
        next.hash = "other".into();
        let second = record("web", &first.history, &next, 1, &t(2));
        let cm = config_map(&app(), &second.history, cm.binary_data.unwrap(), second.stored);
        assert_eq!(cm.binary_data.unwrap().keys().collect::<Vec<_>>(), ["revision-2.json.zst"]);
    }

    #[test]
    fn the_deadline_counts_from_the_newest_revision_and_names_the_last_good_one() {
        let history = replay(&[(seen(1, "web:1", true), 100), (seen(2, "web:2", false), 200)], 10);
        assert_eq!(deadline(&history, 60, &t(230)), Deadline::Pending(Duration::from_secs(30)));
        let Deadline::Exceeded { stalled, last_good } = deadline(&history, 60, &t(260)) else { panic!("exceeded") };
        assert_eq!((stalled.revision, last_good.map(|r| r.revision)), (2, Some(1)));
        let message = deadline_message(&app(), stalled, last_good, 60);
        assert!(
            message.contains("revision 2 (generation 2, image web:2) has not become Ready within 60s"),
            "{message}"
        );
        assert!(message.contains("`berth rollback web -n shop --to-revision 1`"), "{message}");
        let ready = replay(&[(seen(1, "web:1", true), 100)], 10);
        assert_eq!(deadline(&ready, 60, &t(1000)), Deadline::Met);
        let first = replay(&[(seen(1, "web:1", false), 100)], 10);
        let Deadline::Exceeded { last_good: None, stalled } = deadline(&first, 60, &t(1000)) else { panic!() };
        assert!(deadline_message(&app(), stalled, None, 60).contains("no earlier revision became Ready"));
    }

    #[test]
    fn last_good_skips_the_newest_and_revisions_that_never_became_ready() {
        let history =
            replay(&[(seen(1, "web:1", true), 1), (seen(2, "web:2", false), 2), (seen(3, "web:3", true), 3)], 10);
        assert_eq!(last_good(&history).map(|r| r.revision), Some(1));
        assert_eq!(last_good(&history[..1]), None);
    }
}

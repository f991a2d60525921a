//! When a policy fires, which missed fire time to run now, what its Backup is called, and
//! whether the newest successful backup is fresh enough. All times are absolute
//! ([`Timestamp`]); the policy's zone only decides which instants the schedule names.

use jiff::{SignedDuration, Timestamp, Zoned};

use super::validate::ValidPolicy;

/// How late a missed fire time may still be started, like a CronJob's
/// `startingDeadlineSeconds`. Only the most recent missed fire time is ever considered (never a
/// burst of catch-up runs), so for schedules of a day or shorter this only matters after an
/// outage of the operator longer than the interval itself. A backup late by up to a day is
/// better than none (the recovery point matters more than the hour it ran at); one missed by
/// more than a day — a weekly schedule resumed mid-week, an operator down for days — waits for
/// the next fire time instead of starting at a surprising moment, and `BackupFresh` reports
/// the gap meanwhile.
pub const STARTING_DEADLINE: SignedDuration = SignedDuration::from_hours(24);

/// Longest name a Backup gets. Like a CronJob's 52, it leaves 11 characters for the suffixes
/// of the Jobs and labels derived from it (e.g. `-resources`) within the 63 of a label value.
pub const BACKUP_NAME_MAX: usize = 52;

/// Length of `-<yyyymmddhhmmss>`.
const STAMP_LEN: usize = 15;
/// Hex digits of the hash that keeps truncated policy names apart.
const HASH_LEN: usize = 6;

/// `BackupFresh` reason when the newest success is too old (or none came in time).
pub const REASON_STALE: &str = "BackupStale";
/// `BackupFresh` reason when the newest success is recent enough.
pub const REASON_RECENT: &str = "BackupRecent";
/// `BackupFresh` reason for a new policy that has not had two intervals yet.
pub const REASON_AWAITING: &str = "AwaitingFirstBackup";

fn zoned(valid: &ValidPolicy, at: Timestamp) -> Zoned {
    at.to_zoned(valid.time_zone.clone())
}

/// The first fire time strictly after `after` (DST-correct in the policy's zone), or `None`
/// when the schedule never fires again. Ignores `spec.suspend`: it answers "when would it run".
pub fn next_run(valid: &ValidPolicy, after: Timestamp) -> Option<Timestamp> {
    valid.schedule.find_next_occurrence(&zoned(valid, after), false).ok().map(|z| z.timestamp())
}

/// The last fire time at or before `at`.
pub fn previous_run(valid: &ValidPolicy, at: Timestamp) -> Option<Timestamp> {
    valid.schedule.find_previous_occurrence(&zoned(valid, at), true).ok().map(|z| z.timestamp())
}

/// The gap between the last fire time at or before `around` and the one after it: the
/// schedule's interval at that moment (24h for a daily schedule, 23h or 25h across a DST
/// change, 72h for a weekday schedule over a weekend). Zero if the schedule never fires.
pub fn schedule_interval(valid: &ValidPolicy, around: Timestamp) -> SignedDuration {
    let start = previous_run(valid, around).or_else(|| next_run(valid, around));
    start.and_then(|s| next_run(valid, s).map(|n| n.duration_since(s))).unwrap_or(SignedDuration::ZERO)
}

/// The span of the two schedule intervals that follow the last fire time at or before `at`.
/// For a regular schedule this is twice the interval; for an irregular one (weekdays only) it
/// counts two runs, not two multiples of whichever gap happens to be nearest.
fn two_intervals(valid: &ValidPolicy, at: Timestamp) -> Option<SignedDuration> {
    let start = previous_run(valid, at)?;
    let second = next_run(valid, next_run(valid, start)?)?;
    Some(second.duration_since(start))
}

/// The fire time a Backup should be created for now, if any: the most recent fire time after
/// both `last_schedule` (the fire time of the last Backup the schedule created, as stored in
/// `status.lastScheduleTime`) and `created` (the policy's creation), at most `now`, and no
/// older than [`STARTING_DEADLINE`]. Only the latest missed run is returned, never a burst.
/// `None` while the policy is suspended. Use the returned time (not `now`) for
/// [`backup_name`], so that a retried reconcile creates the same name and gets a conflict
/// instead of a second Backup.
pub fn due(
    valid: &ValidPolicy,
    last_schedule: Option<Timestamp>,
    created: Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    if valid.suspended() {
        return None;
    }
    let baseline = last_schedule.map_or(created, |l| l.max(created));
    let latest = previous_run(valid, now)?;
    (latest > baseline && now.duration_since(latest) <= STARTING_DEADLINE).then_some(latest)
}

/// `<policy>-<yyyymmddhhmmss>` with the time in UTC, at most [`BACKUP_NAME_MAX`] characters.
/// A longer policy name is cut and given a short hash of the whole name, so that two long
/// policy names with the same beginning still make different Backup names.
pub fn backup_name(policy: &str, at: Timestamp) -> String {
    let stamp = at.strftime("%Y%m%d%H%M%S");
    let room = BACKUP_NAME_MAX - STAMP_LEN;
    if policy.len() <= room {
        return format!("{policy}-{stamp}");
    }
    let hash = blake3::hash(policy.as_bytes()).to_hex();
    let keep = room - HASH_LEN - 1;
    let mut cut = &policy[..policy.floor_char_boundary(keep)];
    cut = cut.trim_end_matches(['-', '.']);
    format!("{cut}-{}-{stamp}", &hash[..HASH_LEN])
}

/// The `BackupFresh` verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub fresh: bool,
    /// [`REASON_STALE`], [`REASON_RECENT`] or [`REASON_AWAITING`].
    pub reason: &'static str,
    pub message: String,
}

/// Whether the newest successful backup is recent enough: it is stale (a breach of the
/// recovery point objective) once it is older than two schedule intervals, counted from the
/// last fire time at or before it; with no success at all, once the policy itself is that old.
/// One failed or missed run is tolerated, a second is not.
///
/// A suspended policy is judged the same way: a stopped schedule is exactly what must turn
/// `BackupFresh` False. The message then says that the policy is suspended.
pub fn freshness(
    valid: &ValidPolicy,
    last_success: Option<Timestamp>,
    created: Timestamp,
    now: Timestamp,
) -> Freshness {
    let reference = last_success.unwrap_or(created);
    let span = two_intervals(valid, reference).unwrap_or(SignedDuration::MAX);
    let deadline = reference.checked_add(span).unwrap_or(Timestamp::MAX);
    let suspended =
        if valid.suspended() { "; the policy is suspended (spec.suspend), no Backups are created" } else { "" };
    let age = human(now.duration_since(reference));
    match (last_success, now < deadline) {
        (Some(at), true) => Freshness {
            fresh: true,
            reason: REASON_RECENT,
            message: format!("last successful backup finished at {at} ({age} ago); stale after {deadline}{suspended}"),
        },
        (None, true) => Freshness {
            fresh: true,
            reason: REASON_AWAITING,
            message: format!("no backup has succeeded yet; stale after {deadline} if none does{suspended}"),
        },
        (Some(at), false) => Freshness {
            fresh: false,
            reason: REASON_STALE,
            message: format!(
                "last successful backup finished at {at}, {age} ago: older than two schedule intervals ({}){suspended}",
                human(span)
            ),
        },
        (None, false) => Freshness {
            fresh: false,
            reason: REASON_STALE,
            message: format!(
                "no backup has succeeded since the policy was created at {created}, {age} ago: more than two schedule intervals ({}){suspended}",
                human(span)
            ),
        },
    }
}

/// `1d 2h 3m`-style, whole seconds.
fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let mut parts = Vec::new();
    for (v, unit) in [(days, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if v != 0 {
            parts.push(format!("{v}{unit}"));
        }
    }
    if parts.is_empty() { "0s".into() } else { parts.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::backuppolicy::validate::validate;

    fn valid(schedule: &str, tz: Option<&str>, suspend: bool) -> ValidPolicy {
        let tz = tz.map(|z| format!("  timeZone: {z}\n")).unwrap_or_default();
        let yaml = format!(
            "apiVersion: berth.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {{name: nightly, namespace: shop}}\nspec:\n  schedule: \"{schedule}\"\n  suspend: {suspend}\n{tz}  storage: {{bucket: backups, encryptionKeySecret: key}}\n"
        );
        validate(&serde_saphyr::from_str(&yaml).unwrap()).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    #[test]
    fn next_run_in_utc() {
        let v = valid("0 3 * * *", None, false);
        assert_eq!(next_run(&v, at("2026-05-01T02:59:59Z")), Some(at("2026-05-01T03:00:00Z")));
        // Strictly after: the fire time itself gives the next one.
        assert_eq!(next_run(&v, at("2026-05-01T03:00:00Z")), Some(at("2026-05-02T03:00:00Z")));
        assert_eq!(next_run(&v, at("2026-05-01T03:00:00.5Z")), Some(at("2026-05-02T03:00:00Z")));
    }

    #[test]
    fn day_of_week_follows_vixie_cron() {
        // 2026-05-04 is a Monday; in the `cron` crate `1` would be Sunday.
        let v = valid("0 3 * * 1", None, false);
        assert_eq!(next_run(&v, at("2026-05-01T00:00:00Z")), Some(at("2026-05-04T03:00:00Z")));
    }

    #[test]
    fn next_run_follows_the_zone() {
        // 03:00 in Berlin is 01:00 UTC in summer (CEST, +2) and 02:00 UTC in winter (CET, +1).
        let v = valid("0 3 * * *", Some("Europe/Berlin"), false);
        assert_eq!(next_run(&v, at("2026-07-01T00:00:00Z")), Some(at("2026-07-01T01:00:00Z")));
        assert_eq!(next_run(&v, at("2026-01-10T00:00:00Z")), Some(at("2026-01-10T02:00:00Z")));
    }

    #[test]
    fn berlin_spring_forward_runs_a_skipped_fixed_time_once_right_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist that day.
        let v = valid("30 2 * * *", Some("Europe/Berlin"), false);
        let before = next_run(&v, at("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(before, at("2026-03-29T01:00:00Z"), "right after the gap (03:00 CEST)");
        assert_eq!(next_run(&v, before), Some(at("2026-03-30T00:30:00Z")), "02:30 CEST the next day");
        // The interval across the change is 23h30m, not 24h.
        assert_eq!(schedule_interval(&v, at("2026-03-29T12:00:00Z")), SignedDuration::from_mins(23 * 60 + 30));
    }

    #[test]
    fn berlin_fall_back_runs_a_fixed_time_in_the_repeated_hour_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
        let v = valid("30 2 * * *", Some("Europe/Berlin"), false);
        let first = next_run(&v, at("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        assert_eq!(next_run(&v, first), Some(at("2026-10-26T01:30:00Z")), "not again at 01:30 UTC the same day");
        assert_eq!(schedule_interval(&v, at("2026-10-25T12:00:00Z")), hours(25));
    }

    #[test]
    fn berlin_fall_back_runs_an_hourly_schedule_in_both_passes() {
        let v = valid("15 * * * *", Some("Europe/Berlin"), false);
        let mut t = at("2026-10-24T23:30:00Z");
        let mut runs = Vec::new();
        for _ in 0..4 {
            t = next_run(&v, t).unwrap();
            runs.push(t);
        }
        let want: Vec<Timestamp> =
            ["2026-10-25T00:15:00Z", "2026-10-25T01:15:00Z", "2026-10-25T02:15:00Z", "2026-10-25T03:15:00Z"]
                .map(at)
                .to_vec();
        assert_eq!(runs, want);
    }

    #[test]
    fn interval_of_regular_and_irregular_schedules() {
        assert_eq!(
            schedule_interval(&valid("*/15 * * * *", None, false), at("2026-05-01T10:07:00Z")),
            SignedDuration::from_mins(15)
        );
        assert_eq!(schedule_interval(&valid("0 3 * * *", None, false), at("2026-05-01T10:00:00Z")), hours(24));
        // Weekdays: Friday's run is followed by Monday's.
        let weekdays = valid("0 3 * * 1-5", None, false);
        assert_eq!(schedule_interval(&weekdays, at("2026-05-02T10:00:00Z")), hours(72));
        assert_eq!(schedule_interval(&weekdays, at("2026-05-05T10:00:00Z")), hours(24));
    }

    #[test]
    fn due_returns_only_the_latest_missed_run() {
        let v = valid("0 * * * *", None, false);
        let created = at("2026-05-01T00:30:00Z");
        // Never scheduled, several fire times missed: only 05:00.
        assert_eq!(due(&v, None, created, at("2026-05-01T05:10:00Z")), Some(at("2026-05-01T05:00:00Z")));
        // Already scheduled at 05:00: nothing until 06:00.
        assert_eq!(due(&v, Some(at("2026-05-01T05:00:00Z")), created, at("2026-05-01T05:59:59Z")), None);
        assert_eq!(
            due(&v, Some(at("2026-05-01T05:00:00Z")), created, at("2026-05-01T06:00:00Z")),
            Some(at("2026-05-01T06:00:00Z"))
        );
        // Fire times before the policy existed do not count.
        assert_eq!(due(&v, None, created, at("2026-05-01T00:45:00Z")), None);
    }

    #[test]
    fn due_respects_the_starting_deadline() {
        let v = valid("0 3 * * 0", None, false); // Sundays 03:00
        let created = at("2026-04-01T00:00:00Z");
        let sunday = at("2026-05-03T03:00:00Z");
        let last = Some(at("2026-04-26T03:00:00Z"));
        assert_eq!(due(&v, last, created, sunday + hours(23)), Some(sunday));
        assert_eq!(due(&v, last, created, sunday + STARTING_DEADLINE), Some(sunday));
        assert_eq!(due(&v, last, created, sunday + STARTING_DEADLINE + SignedDuration::from_secs(1)), None);
    }

    #[test]
    fn due_is_none_while_suspended() {
        let v = valid("0 * * * *", None, true);
        assert_eq!(due(&v, None, at("2026-05-01T00:30:00Z"), at("2026-05-01T05:10:00Z")), None);
    }

    #[test]
    fn backup_name_is_policy_and_utc_stamp() {
        assert_eq!(backup_name("nightly", at("2026-03-29T01:00:00Z")), "nightly-20260329010000");
        // A zoned fire time is named by its UTC instant.
        let berlin: Timestamp = "2026-07-01T03:00:00+02:00[Europe/Berlin]".parse::<Zoned>().unwrap().timestamp();
        assert_eq!(backup_name("nightly", berlin), "nightly-20260701010000");
    }

    #[test]
    fn backup_name_is_cut_to_the_limit_and_keeps_long_names_apart() {
        let t = at("2026-03-29T01:00:00Z");
        let exact = "p".repeat(BACKUP_NAME_MAX - STAMP_LEN);
        assert_eq!(backup_name(&exact, t).len(), BACKUP_NAME_MAX);
        assert!(backup_name(&exact, t).starts_with(&exact));
        let a = format!("{}-alpha", "x".repeat(60));
        let b = format!("{}-bravo", "x".repeat(60));
        let (na, nb) = (backup_name(&a, t), backup_name(&b, t));
        assert!(na.len() <= BACKUP_NAME_MAX && nb.len() <= BACKUP_NAME_MAX, "{na} {nb}");
        assert_ne!(na, nb);
        assert!(na.ends_with("-20260329010000"), "{na}");
        // A cut never leaves a dangling '-' or '.' before the hash.
        let dotted = format!("{}.{}", "y".repeat(29), "z".repeat(40));
        let n = backup_name(&dotted, t);
        assert!(!n.contains(".-") && !n.contains("--"), "{n}");
        assert!(n.len() <= BACKUP_NAME_MAX);
    }

    #[test]
    fn fresh_within_two_intervals() {
        let v = valid("0 3 * * *", None, false);
        let created = at("2026-04-01T00:00:00Z");
        let success = at("2026-05-01T03:10:00Z");
        let f = freshness(&v, Some(success), created, success + hours(47));
        assert!(f.fresh, "{f:?}");
        assert_eq!(f.reason, REASON_RECENT);
        assert!(f.message.contains("(1d 23h ago)"), "{}", f.message);
    }

    #[test]
    fn stale_after_two_intervals() {
        let v = valid("0 3 * * *", None, false);
        let created = at("2026-04-01T00:00:00Z");
        let success = at("2026-05-01T03:10:00Z");
        let f = freshness(&v, Some(success), created, success + hours(48));
        assert!(!f.fresh, "{f:?}");
        assert_eq!(f.reason, REASON_STALE);
        assert!(f.message.contains("2d"), "{}", f.message);
    }

    #[test]
    fn weekday_schedule_is_not_stale_over_a_weekend() {
        let v = valid("0 3 * * 1-5", None, false);
        let friday = at("2026-05-01T03:10:00Z");
        // Monday 12:00: Monday's run may have failed, one miss is tolerated.
        assert!(freshness(&v, Some(friday), at("2026-04-01T00:00:00Z"), at("2026-05-04T12:00:00Z")).fresh);
        // Tuesday 04:00: Monday's and Tuesday's runs are both missing.
        assert!(!freshness(&v, Some(friday), at("2026-04-01T00:00:00Z"), at("2026-05-05T04:00:00Z")).fresh);
    }

    #[test]
    fn no_success_is_judged_from_creation() {
        let v = valid("0 3 * * *", None, false);
        let created = at("2026-05-01T10:00:00Z");
        let young = freshness(&v, None, created, created + hours(20));
        assert!(young.fresh);
        assert_eq!(young.reason, REASON_AWAITING);
        let old = freshness(&v, None, created, created + hours(49));
        assert!(!old.fresh);
        assert_eq!(old.reason, REASON_STALE);
        assert!(old.message.contains("no backup has succeeded"), "{}", old.message);
    }

    #[test]
    fn suspended_policies_still_go_stale() {
        let v = valid("0 3 * * *", None, true);
        let success = at("2026-05-01T03:10:00Z");
        let f = freshness(&v, Some(success), at("2026-04-01T00:00:00Z"), success + hours(72));
        assert!(!f.fresh);
        assert_eq!(f.reason, REASON_STALE);
        assert!(f.message.contains("suspended"), "{}", f.message);
    }
}

//! Which Backup objects of a policy retention removes, using the repository's GFS arithmetic
//! ([`crate::backup::retention`]) over the Completed ones.
//!
//! Rules, in order of precedence:
//! - a policy without any retention rule keeps everything (nothing is returned);
//! - New, InProgress or otherwise unfinished Backups are never returned;
//! - the newest Completed Backup is never returned, whatever the rules say;
//! - only Completed Backups count as keepers; GFS decides among them, buckets (day, ISO week,
//!   month) taken in the policy's time zone;
//! - a Completed Backup whose offsite copy is still pending (`synced: false`) is held back
//!   even when GFS lets it go: removing it would race the copy;
//! - Failed and PartiallyFailed Backups that finished before the newest Completed one are
//!   returned: a later success supersedes them, and their partial data must not pile up. Those
//!   newer than the newest success are kept, as the evidence of what is going wrong (and,
//!   for PartiallyFailed, the newest data there is);
//! - a Backup without a completion time cannot be placed in time and is kept.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::backuppolicy::Retention;
use crate::backup::crypto::Id;
use crate::backup::retention::{RetentionPolicy, apply};

/// What retention needs to know about one Backup object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFact {
    pub name: String,
    /// `status.phase`: New, InProgress, Completed, PartiallyFailed or Failed (empty if unset).
    pub phase: String,
    /// `status.completionTime`.
    pub completion: Option<Timestamp>,
    /// Whether the backup is in every configured location (true when the policy has no
    /// offsite location).
    pub synced: bool,
}

/// Names of the Backups that retention removes, oldest first. `tz` is the policy's zone
/// ([`super::ValidPolicy::time_zone`]), which decides where a day, week or month begins.
pub fn retention_victims(retention: &Retention, backups: &[BackupFact], tz: &TimeZone) -> Vec<String> {
    let rules = [retention.keep_last, retention.keep_daily, retention.keep_weekly, retention.keep_monthly];
    if rules.iter().all(Option::is_none) {
        return Vec::new();
    }
    let mut completed: Vec<(&BackupFact, Timestamp)> =
        backups.iter().filter(|b| b.phase == "Completed").filter_map(|b| b.completion.map(|t| (b, t))).collect();
    // Oldest first; a tie is broken by name so that the outcome does not depend on list order.
    completed.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.name.cmp(&b.0.name)));
    let Some(&(newest, newest_at)) = completed.last() else {
        return Vec::new();
    };

    let policy = RetentionPolicy {
        keep_last: retention.keep_last.unwrap_or(0),
        keep_daily: retention.keep_daily.unwrap_or(0),
        keep_weekly: retention.keep_weekly.unwrap_or(0),
        keep_monthly: retention.keep_monthly.unwrap_or(0),
        ..RetentionPolicy::default()
    };
    // The GFS code speaks snapshot ids: the rank in `completed` stands in for one (a higher id
    // wins a tie there, as the later name does here).
    let snapshots: Vec<(Id, Timestamp)> = completed.iter().enumerate().map(|(i, (_, t))| (rank_id(i), *t)).collect();
    let mut victims: Vec<(Timestamp, &str)> = apply(&policy, &snapshots, tz)
        .into_iter()
        .filter(|d| !d.keep)
        .map(|d| completed[id_rank(&d.id)])
        .filter(|(b, _)| b.synced && b.name != newest.name)
        .map(|(b, t)| (t, b.name.as_str()))
        .collect();
    victims.extend(
        backups
            .iter()
            .filter(|b| b.phase == "Failed" || b.phase == "PartiallyFailed")
            .filter_map(|b| b.completion.filter(|t| *t < newest_at).map(|t| (t, b.name.as_str()))),
    );
    victims.sort();
    victims.into_iter().map(|(_, name)| name.to_string()).collect()
}

fn rank_id(rank: usize) -> Id {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(rank as u64).to_be_bytes());
    Id(bytes)
}

fn id_rank(id: &Id) -> usize {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes")) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn fact(name: &str, phase: &str, completion: Option<&str>) -> BackupFact {
        BackupFact {
            name: name.into(),
            phase: phase.into(),
            completion: completion.map(|c| c.parse().unwrap()),
            synced: true,
        }
    }

    fn daily(n: usize, phase: &str) -> Vec<BackupFact> {
        let start: Timestamp = "2026-05-01T03:10:00Z".parse().unwrap();
        (0..n)
            .map(|i| {
                let t = start + SignedDuration::from_hours(24 * i as i64);
                BackupFact { name: format!("b{i:02}"), phase: phase.into(), completion: Some(t), synced: true }
            })
            .collect()
    }

    fn keep_last(n: u32) -> Retention {
        Retention { keep_last: Some(n), ..Retention::default() }
    }

    #[test]
    fn no_rules_keep_everything() {
        let mut backups = daily(10, "Completed");
        backups.push(fact("failed", "Failed", Some("2026-04-01T00:00:00Z")));
        assert!(retention_victims(&Retention::default(), &backups, &TimeZone::UTC).is_empty());
    }

    #[test]
    fn keep_last_removes_the_oldest_completed() {
        let v = retention_victims(&keep_last(3), &daily(5, "Completed"), &TimeZone::UTC);
        assert_eq!(v, ["b00", "b01"]);
    }

    #[test]
    fn the_newest_completed_is_never_removed() {
        // keepDaily: 1 keeps the newest of the last day; the newest Completed is older than
        // the newer, unfinished attempts and must stay all the same.
        let mut backups = daily(4, "Completed");
        backups.push(fact("running", "InProgress", None));
        backups.push(fact("new", "New", None));
        let r = Retention { keep_monthly: Some(1), ..Retention::default() };
        let v = retention_victims(&r, &backups, &TimeZone::UTC);
        assert_eq!(v, ["b00", "b01", "b02"]);
        for rule in [keep_last(1), Retention { keep_daily: Some(1), ..Retention::default() }] {
            assert!(!retention_victims(&rule, &backups, &TimeZone::UTC).contains(&"b03".to_string()));
        }
    }

    #[test]
    fn unfinished_backups_are_never_removed() {
        let mut backups = daily(3, "Completed");
        backups.push(fact("old-running", "InProgress", Some("2026-04-01T00:00:00Z")));
        backups.push(fact("old-new", "New", Some("2026-04-01T00:00:00Z")));
        backups.push(fact("weird", "", Some("2026-04-01T00:00:00Z")));
        let v = retention_victims(&keep_last(1), &backups, &TimeZone::UTC);
        assert_eq!(v, ["b00", "b01"]);
    }

    #[test]
    fn failed_backups_older_than_the_newest_success_go_newer_ones_stay() {
        let mut backups = daily(2, "Completed"); // b00 May 1, b01 May 2
        backups.push(fact("failed-old", "Failed", Some("2026-05-01T12:00:00Z")));
        backups.push(fact("partial-old", "PartiallyFailed", Some("2026-05-01T13:00:00Z")));
        backups.push(fact("failed-new", "Failed", Some("2026-05-03T03:30:00Z")));
        backups.push(fact("failed-untimed", "Failed", None));
        let v = retention_victims(&keep_last(2), &backups, &TimeZone::UTC);
        assert_eq!(v, ["failed-old", "partial-old"]);
    }

    #[test]
    fn failed_backups_do_not_count_as_keepers() {
        // keepLast 2 with a failure in between still keeps two Completed ones.
        let mut backups = daily(3, "Completed");
        backups.push(fact("failed", "Failed", Some("2026-05-03T12:00:00Z")));
        let v = retention_victims(&keep_last(2), &backups, &TimeZone::UTC);
        assert_eq!(v, ["b00"]);
    }

    #[test]
    fn no_completed_backup_means_nothing_is_removed() {
        let backups = daily(4, "Failed");
        assert!(retention_victims(&keep_last(1), &backups, &TimeZone::UTC).is_empty());
    }

    #[test]
    fn unsynced_completed_backups_are_held() {
        let mut backups = daily(4, "Completed");
        backups[0].synced = false;
        assert_eq!(retention_victims(&keep_last(1), &backups, &TimeZone::UTC), ["b01", "b02"]);
    }

    #[test]
    fn days_are_bucketed_in_the_policy_zone() {
        // 23:30 UTC on May 1 is already May 2 in Berlin: in UTC the two are different days,
        // in Berlin the same day (and only the later one is kept).
        let backups = vec![
            fact("a", "Completed", Some("2026-05-01T23:30:00Z")),
            fact("b", "Completed", Some("2026-05-02T05:00:00Z")),
            fact("c", "Completed", Some("2026-05-03T05:00:00Z")),
        ];
        let r = Retention { keep_daily: Some(3), ..Retention::default() };
        assert!(retention_victims(&r, &backups, &TimeZone::UTC).is_empty());
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(retention_victims(&r, &backups, &berlin), ["a"]);
    }

    #[test]
    fn order_of_the_input_does_not_matter() {
        let mut backups = daily(6, "Completed");
        let r = Retention { keep_last: Some(2), keep_weekly: Some(2), ..Retention::default() };
        let want = retention_victims(&r, &backups, &TimeZone::UTC);
        backups.reverse();
        assert_eq!(retention_victims(&r, &backups, &TimeZone::UTC), want);
        // keepLast: May 5 and 6; keepWeekly: May 6 and Sunday May 3 (ISO weeks end on Sunday).
        assert_eq!(want, ["b00", "b01", "b03"]);
    }
}

//! Grandfather-father-son retention (pure arithmetic, no I/O).
//!
//! Within one series (same kind and source) snapshots are taken newest first. `keep_last`
//! keeps the newest N; `keep_hourly/daily/weekly/monthly/yearly` keep the newest snapshot of
//! each of the N most recent hours/days/ISO weeks/months/years that have one. The newest
//! snapshot of every series is always kept, whatever the policy.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::crypto::Id;

/// How many snapshots to keep; zero means "this rule keeps none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
}

impl RetentionPolicy {
    /// True when no rule is set (such a policy would remove everything but the newest).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The verdict for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    /// Which rules keep it (`last`, `daily`, …, `newest`).
    pub reasons: Vec<&'static str>,
}

/// Applies `policy` to one series of snapshots (any order); buckets in `tz`.
pub fn apply(
    policy: &RetentionPolicy,
    snapshots: &[(Id, Timestamp)],
    tz: &TimeZone,
) -> Vec<Decision> {
    let mut sorted: Vec<(Id, Timestamp)> = snapshots.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|(id, _)| Decision {
            id: *id,
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    if let Some(first) = decisions.first_mut() {
        first.keep = true;
        first.reasons.push("newest");
    }
    for (i, d) in decisions.iter_mut().enumerate() {
        if (i as u32) < policy.keep_last {
            d.keep = true;
            d.reasons.push("last");
        }
    }
    type BucketFn = fn(&jiff::Zoned) -> i64;
    let rules: [(&'static str, u32, BucketFn); 5] = [
        ("hourly", policy.keep_hourly, |z| {
            (z.year() as i64 * 10000 + z.month() as i64 * 100 + z.day() as i64) * 100
                + z.hour() as i64
        }),
        ("daily", policy.keep_daily, |z| {
            z.year() as i64 * 10000 + z.month() as i64 * 100 + z.day() as i64
        }),
        ("weekly", policy.keep_weekly, |z| {
            let w = z.date().iso_week_date();
            w.year() as i64 * 100 + w.week() as i64
        }),
        ("monthly", policy.keep_monthly, |z| {
            z.year() as i64 * 100 + z.month() as i64
        }),
        ("yearly", policy.keep_yearly, |z| z.year() as i64),
    ];
    for (name, count, bucket) in rules {
        if count == 0 {
            continue;
        }
        let mut kept = 0u32;
        let mut last: Option<i64> = None;
        for (i, (_, ts)) in sorted.iter().enumerate() {
            if kept >= count {
                break;
            }
            let b = bucket(&ts.to_zoned(tz.clone()));
            if last != Some(b) {
                last = Some(b);
                kept += 1;
                decisions[i].keep = true;
                decisions[i].reasons.push(name);
            }
        }
    }
    decisions
}

/// Applies `policy` to every series; `series` maps a group key to its snapshots.
pub fn apply_grouped(
    policy: &RetentionPolicy,
    series: &BTreeMap<String, Vec<(Id, Timestamp)>>,
    tz: &TimeZone,
) -> BTreeMap<String, Vec<Decision>> {
    series
        .iter()
        .map(|(k, v)| (k.clone(), apply(policy, v, tz)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn kept(d: &[Decision]) -> Vec<u8> {
        let mut v: Vec<u8> = d.iter().filter(|d| d.keep).map(|d| d.id.0[0]).collect();
        v.sort();
        v
    }

    #[test]
    fn newest_is_always_kept() {
        let snaps = vec![
            (id(1), at("2026-01-01T00:00:00Z")),
            (id(2), at("2026-01-02T00:00:00Z")),
        ];
        let d = apply(&RetentionPolicy::default(), &snaps, &TimeZone::UTC);
        assert_eq!(kept(&d), vec![2]);
        assert_eq!(d[0].reasons, vec!["newest"]);
    }

    #[test]
    fn keep_last() {
        let snaps: Vec<_> = (1..=5)
            .map(|i| (id(i), at(&format!("2026-01-0{i}T00:00:00Z"))))
            .collect();
        let p = RetentionPolicy {
            keep_last: 3,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&p, &snaps, &TimeZone::UTC)), vec![3, 4, 5]);
    }

    #[test]
    fn daily_keeps_newest_per_day() {
        // Three per day over four days, ids 1..=12 in time order.
        let mut snaps = Vec::new();
        let mut n = 0u8;
        for day in 1..=4 {
            for hour in [1, 12, 23] {
                n += 1;
                snaps.push((id(n), at(&format!("2026-03-0{day}T{hour:02}:00:00Z"))));
            }
        }
        let p = RetentionPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        // The newest of day 4 (12) and of day 3 (9).
        assert_eq!(kept(&apply(&p, &snaps, &TimeZone::UTC)), vec![9, 12]);
    }

    #[test]
    fn gfs_combination() {
        // One snapshot per day for 70 days from 2026-01-01.
        let start = at("2026-01-01T02:00:00Z");
        let snaps: Vec<_> = (0..70u8)
            .map(|i| {
                (
                    id(i),
                    start + jiff::SignedDuration::from_hours(24 * i as i64),
                )
            })
            .collect();
        let p = RetentionPolicy {
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 3,
            ..Default::default()
        };
        let k = kept(&apply(&p, &snaps, &TimeZone::UTC));
        // Day 0 is Thu 2026-01-01, so Sundays are days 3, 10, … 59 (Mar 1), 66 (Mar 8).
        // Daily: days 63..=69. Weekly (ISO weeks end on Sunday): 69 (Wed Mar 11), 66, 59, 52.
        // Monthly: 69 (March), 58 (Feb 28), 30 (Jan 31).
        assert_eq!(k, vec![30, 52, 58, 59, 63, 64, 65, 66, 67, 68, 69]);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_years() {
        // 2026-12-31 (Thu) and 2027-01-02 (Sat) are both ISO week 2026-W53.
        let snaps = vec![
            (id(1), at("2026-12-31T10:00:00Z")),
            (id(2), at("2027-01-02T10:00:00Z")),
            (id(3), at("2026-12-20T10:00:00Z")),
        ];
        let p = RetentionPolicy {
            keep_weekly: 2,
            ..Default::default()
        };
        assert_eq!(kept(&apply(&p, &snaps, &TimeZone::UTC)), vec![2, 3]);
    }
}

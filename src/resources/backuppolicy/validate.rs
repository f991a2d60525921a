//! Turns a raw BackupPolicy into a [`ValidPolicy`]: the cron schedule parsed, the time zone
//! looked up in the tz database, and every rule the CRD schema cannot express checked. The
//! scheduling, freshness and retention functions only ever see a `ValidPolicy`.
//!
//! # Schedules
//! `spec.schedule` has the five fields of crontab(5): minute, hour, day of month, month, day of
//! week (`0 3 * * *` is 03:00 every day). Parsing and the search for fire times use the
//! [`croner`] crate rather than `cron`:
//! - croner follows Vixie cron where `cron` does not: day of week `0`/`7` is Sunday and `1` is
//!   Monday (in `cron`, `1` is Sunday, so `0 3 * * 1` would silently run on Sundays), and a
//!   restricted day of month *or* day of week matches (the `cron` crate requires both);
//! - it works on [`jiff::Zoned`] directly (feature `jiff`, no chrono in the build), so the zone
//!   comes from jiff's tz database and daylight-saving transitions follow Vixie cron: a fixed
//!   time that falls into a skipped hour fires right after the gap, once; a fixed time in a
//!   repeated hour fires once, on its first pass; wildcard/step schedules (`*/15 * * * *`)
//!   skip the missing hour and fire in both passes of a repeated one;
//! - it also accepts the usual extensions (`@daily`, names like `MON`/`JAN`, `L`, `#`, `W`).
//!
//! Seconds are not accepted: six fields is an error, not a different meaning.
//!
//! # Retention
//! All retention fields absent (the default) keeps every backup: nothing is ever removed
//! automatically. Fields that are all set to 0 are rejected: that would keep only the newest
//! backup, which is almost certainly not what was meant.

use std::collections::BTreeSet;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;

use crate::api::backuppolicy::{BackupPolicy, Retention, ServerSideEncryptionType, StorageLocation, VerifySpec};
use crate::api::validation::FieldError;
use crate::resources::restore::waits::parse_duration;

/// A schedule users can copy when theirs is rejected.
pub const SCHEDULE_EXAMPLE: &str = "\"0 3 * * *\" (every day at 03:00) or \"30 1 * * 0\" (Sundays at 01:30)";

/// A BackupPolicy whose spec passed validation, with its schedule parsed and zone resolved.
#[derive(Clone, Debug)]
pub struct ValidPolicy {
    /// The resource itself (metadata for names, owner references and labels).
    pub policy: BackupPolicy,
    /// The parsed five-field schedule.
    pub schedule: Cron,
    /// `spec.timeZone` from the tz database, UTC when absent.
    pub time_zone: TimeZone,
    /// `spec.verify`, parsed.
    pub verify: Option<ValidVerify>,
}

/// `spec.verify` of a valid policy.
#[derive(Clone, Debug)]
pub struct ValidVerify {
    /// The drills' five-field schedule (in the policy's time zone).
    pub schedule: Cron,
    /// The pre-created drill namespace.
    pub namespace: String,
    /// How long a failed drill's namespace is kept as it is.
    pub keep_failed_for: std::time::Duration,
    /// Longest a drill may take.
    pub timeout: std::time::Duration,
}

/// Default of `spec.verify.keepFailedFor`.
pub const KEEP_FAILED_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Default of `spec.verify.timeout`.
pub const DRILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl ValidPolicy {
    /// Whether `spec.suspend` stops the schedule.
    pub fn suspended(&self) -> bool {
        self.policy.spec.suspend
    }
    /// The retention rules of the policy.
    pub fn retention(&self) -> &Retention {
        &self.policy.spec.retention
    }
}

/// Validates `policy`; every problem found is returned, not only the first, so that a user
/// fixes them in one round.
pub fn validate(policy: &BackupPolicy) -> Result<ValidPolicy, Vec<FieldError>> {
    let spec = &policy.spec;
    let mut errors = Vec::new();

    let schedule = match parse_schedule(&spec.schedule) {
        Ok(s) => Some(s),
        Err(message) => {
            errors.push(FieldError::new("spec.schedule", message));
            None
        }
    };

    let time_zone = match spec.time_zone.as_deref() {
        None => Some(TimeZone::UTC),
        Some(name) => match TimeZone::get(name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                errors.push(FieldError::new(
                    "spec.timeZone",
                    format!("{name:?} is not a time zone of the IANA tz database; use a name like \"Europe/Berlin\", \"America/New_York\" or \"UTC\""),
                ));
                None
            }
        },
    };

    check_location(&spec.storage, "spec.storage", &mut errors);
    if let Some(offsite) = &spec.offsite {
        check_location(offsite, "spec.offsite", &mut errors);
        if offsite.bucket == spec.storage.bucket
            && offsite.endpoint == spec.storage.endpoint
            && normalized_prefix(offsite) == normalized_prefix(&spec.storage)
        {
            errors.push(FieldError::new(
                "spec.offsite",
                "is the same location as spec.storage; an offsite copy must go to another bucket, prefix or endpoint",
            ));
        }
    }

    let mut seen = BTreeSet::new();
    for (i, resource) in spec.scope.extra_resources.iter().enumerate() {
        let field = format!("spec.scope.extraResources[{i}]");
        if !is_resource_name(resource) {
            errors.push(FieldError::new(
                field,
                format!("{resource:?} must be a lowercase plural resource name, optionally with its API group: e.g. \"configmaps\" or \"ingresses.networking.k8s.io\""),
            ));
        } else if !seen.insert(resource.as_str()) {
            errors.push(FieldError::new(field, format!("{resource:?} is listed twice")));
        }
    }

    let r = &spec.retention;
    let rules = [r.keep_last, r.keep_daily, r.keep_weekly, r.keep_monthly];
    if rules.iter().any(Option::is_some) && rules.iter().all(|v| v.unwrap_or(0) == 0) {
        errors.push(FieldError::new(
            "spec.retention",
            "every rule is 0, which would remove all backups but the newest; set at least one rule above 0, or remove spec.retention to keep every backup",
        ));
    }

    let verify = spec.verify.as_ref().and_then(|v| check_verify(v, policy, &mut errors));

    match (schedule, time_zone) {
        (Some(schedule), Some(time_zone)) if errors.is_empty() => {
            // A pattern such as `0 0 30 2 *` parses but never fires.
            let probe = jiff::Timestamp::UNIX_EPOCH.to_zoned(time_zone.clone());
            if schedule.find_next_occurrence(&probe, false).is_err() {
                return Err(vec![FieldError::new(
                    "spec.schedule",
                    format!("{:?} never fires (no such date); use e.g. {SCHEDULE_EXAMPLE}", spec.schedule),
                )]);
            }
            Ok(ValidPolicy { policy: policy.clone(), schedule, time_zone, verify })
        }
        _ => Err(errors),
    }
}

/// Parses a five-field cron schedule; the error is a message for the user.
pub fn parse_schedule(schedule: &str) -> Result<Cron, String> {
    let trimmed = schedule.trim();
    let fields = trimmed.split_whitespace().count();
    if !trimmed.starts_with('@') && fields != 5 {
        let hint = match fields {
            6 | 7 => "; seconds (and years) are not supported",
            _ => "",
        };
        return Err(format!(
            "{schedule:?} has {fields} fields, a schedule needs 5 (minute hour day-of-month month day-of-week){hint}; e.g. {SCHEDULE_EXAMPLE}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("{schedule:?} is not a valid cron schedule ({e}); e.g. {SCHEDULE_EXAMPLE}"))
}

/// `spec.verify`: its schedule parses, its durations are durations, and the drill namespace is
/// not the namespace the policy backs up (a drill empties its namespace).
fn check_verify(verify: &VerifySpec, policy: &BackupPolicy, errors: &mut Vec<FieldError>) -> Option<ValidVerify> {
    let before = errors.len();
    let schedule =
        parse_schedule(&verify.schedule).map_err(|m| errors.push(FieldError::new("spec.verify.schedule", m)));
    let source = policy.metadata.namespace.as_deref().unwrap_or_default();
    if verify.namespace == source {
        errors.push(FieldError::new(
            "spec.verify.namespace",
            format!("{:?} is the namespace this policy backs up; a drill empties its namespace, so name a separate, pre-created drill namespace (e.g. {:?})", verify.namespace, format!("{source}-drill")),
        ));
    }
    let mut duration = |text: Option<&str>, field: &str, default| match text {
        None => Some(default),
        Some(text) => {
            let parsed = parse_duration(text).filter(|d| !d.is_zero());
            if parsed.is_none() {
                errors.push(FieldError::new(
                    field,
                    format!("{text:?} is not a duration; write hours, minutes and seconds such as 24h, 90m or 2h30m"),
                ));
            }
            parsed
        }
    };
    let keep_failed_for = duration(verify.keep_failed_for.as_deref(), "spec.verify.keepFailedFor", KEEP_FAILED_FOR);
    let timeout = duration(verify.timeout.as_deref(), "spec.verify.timeout", DRILL_TIMEOUT);
    if errors.len() != before {
        return None;
    }
    Some(ValidVerify {
        schedule: schedule.ok()?,
        namespace: verify.namespace.clone(),
        keep_failed_for: keep_failed_for?,
        timeout: timeout?,
    })
}

fn normalized_prefix(location: &StorageLocation) -> &str {
    location.prefix.as_deref().unwrap_or("").trim_matches('/')
}

fn check_location(location: &StorageLocation, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(sse) = &location.server_side_encryption {
        let field = format!("{path}.serverSideEncryption.kmsKeyId");
        let key = sse.kms_key_id.as_deref().map(str::trim);
        match (sse.type_, key) {
            (ServerSideEncryptionType::AwsKms, None | Some("")) => errors.push(FieldError::new(
                field,
                "is required with type aws:kms: set it to the KMS key id, key ARN or alias/NAME that encrypts the bucket's objects",
            )),
            (ServerSideEncryptionType::Aes256, Some(_)) => errors.push(FieldError::new(
                field,
                "goes only with type aws:kms: remove kmsKeyId for AES256 (SSE-S3), or set type: aws:kms",
            )),
            _ => {}
        }
    }
    let bucket = &location.bucket;
    if let Some(rest) = bucket.strip_prefix("s3://") {
        errors.push(FieldError::new(
            format!("{path}.bucket"),
            format!(
                "{bucket:?} must be the bare bucket name: write {:?} and put any path into {path}.prefix",
                rest.split('/').next().unwrap_or("")
            ),
        ));
    } else if !is_bucket_name(bucket) {
        errors.push(FieldError::new(
            format!("{path}.bucket"),
            format!("{bucket:?} is not a valid bucket name: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit, no \"..\", not an IP address"),
        ));
    }
    if let Some(prefix) = &location.prefix {
        let field = format!("{path}.prefix");
        if prefix.starts_with('/') {
            errors.push(FieldError::new(
                field,
                format!(
                    "{prefix:?} must not start with '/': S3 keys are relative to the bucket (write {:?})",
                    prefix.trim_start_matches('/')
                ),
            ));
        } else if prefix.trim_end_matches('/').split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            errors.push(FieldError::new(
                field,
                format!("{prefix:?} must be a path like \"team/prod\": no empty, \".\" or \"..\" segments"),
            ));
        }
    }
}

/// AWS's rules for bucket names (which S3-compatible servers accept too).
fn is_bucket_name(b: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && edge_ok(b.chars().next())
        && edge_ok(b.chars().last())
        && !b.contains("..")
        && b.parse::<std::net::Ipv4Addr>().is_err()
}

/// `plural` or `plural.group`: dot-separated DNS labels.
fn is_resource_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn policy(yaml: &str) -> BackupPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn base() -> String {
        "apiVersion: berth.dev/v1alpha1\nkind: BackupPolicy\nmetadata: {name: nightly, namespace: shop}\nspec:\n  storage: {bucket: backups, encryptionKeySecret: key}\n".into()
    }

    fn with(extra: &str) -> BackupPolicy {
        policy(&format!("{}{extra}", base()))
    }

    fn errors(p: &BackupPolicy) -> Vec<FieldError> {
        validate(p).err().unwrap_or_default()
    }

    #[test]
    fn verify_is_parsed_and_its_errors_name_the_field() {
        let v =
            validate(&with("  schedule: \"0 3 * * *\"\n  verify: {schedule: \"0 5 * * 0\", namespace: shop-drill}\n"))
                .unwrap();
        let verify = v.verify.unwrap();
        assert_eq!(
            (verify.namespace.as_str(), verify.keep_failed_for, verify.timeout),
            ("shop-drill", KEEP_FAILED_FOR, DRILL_TIMEOUT)
        );
        let bad = with(
            "  schedule: \"0 3 * * *\"\n  verify: {schedule: \"5 * *\", namespace: shop, keepFailedFor: 1d, timeout: 0m}\n",
        );
        let fields: Vec<String> = errors(&bad).iter().map(|e| e.to_string()).collect();
        assert_eq!(fields.len(), 4, "{fields:?}");
        for (field, text) in [
            ("spec.verify.schedule", "has 3 fields"),
            ("spec.verify.namespace", "is the namespace this policy backs up"),
            ("spec.verify.keepFailedFor", "\"1d\" is not a duration"),
            ("spec.verify.timeout", "\"0m\" is not a duration"),
        ] {
            assert!(fields.iter().any(|f| f.starts_with(field) && f.contains(text)), "{field}: {fields:?}");
        }
    }

    #[test]
    fn a_five_field_schedule_in_a_zone_is_valid() {
        let v = validate(&with("  schedule: \"0 3 * * 1-5\"\n  timeZone: Europe/Berlin\n")).unwrap();
        assert_eq!(v.time_zone.iana_name(), Some("Europe/Berlin"));
        assert!(!v.suspended());
    }

    #[test]
    fn utc_is_the_default_zone() {
        let v = validate(&with("  schedule: \"0 3 * * *\"\n")).unwrap();
        assert_eq!(v.time_zone, TimeZone::UTC);
    }

    #[test]
    fn six_fields_name_the_schedule_and_show_an_example() {
        let e = errors(&with("  schedule: \"0 0 3 * * *\"\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "spec.schedule");
        assert!(e[0].message.contains("6 fields"), "{}", e[0].message);
        assert!(e[0].message.contains("seconds"), "{}", e[0].message);
        assert!(e[0].message.contains("0 3 * * *"), "{}", e[0].message);
    }

    #[test]
    fn four_fields_and_garbage_are_rejected() {
        for bad in ["0 3 * *", "61 3 * * *", "0 25 * * *", "0 3 * * MOX", "every day"] {
            let e = errors(&with(&format!("  schedule: \"{bad}\"\n")));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].field, "spec.schedule", "{bad}");
            assert!(e[0].message.contains("e.g. \"0 3 * * *\""), "{bad}: {}", e[0].message);
        }
    }

    #[test]
    fn a_schedule_that_never_fires_is_rejected() {
        let e = errors(&with("  schedule: \"0 0 30 2 *\"\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "spec.schedule");
        assert!(e[0].message.contains("never fires"), "{}", e[0].message);
    }

    #[test]
    fn unknown_zone_names_the_field() {
        let e = errors(&with("  schedule: \"0 3 * * *\"\n  timeZone: Europe/Berlln\n"));
        assert_eq!(e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["spec.timeZone"]);
        assert!(e[0].message.contains("Europe/Berlln"));
    }

    #[test]
    fn bucket_and_prefix_sanity() {
        let p = policy(&format!(
            "{}  schedule: \"0 3 * * *\"\n  offsite: {{bucket: \"s3://other/x\", prefix: \"/abs\", encryptionKeySecret: k}}\n",
            base().replace("bucket: backups", "bucket: My_Bucket, prefix: \"a//b\"")
        ));
        let e = errors(&p);
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.storage.bucket", "spec.storage.prefix", "spec.offsite.bucket", "spec.offsite.prefix"]
        );
        assert!(e[2].message.contains("\"other\""), "{}", e[2].message);
        assert!(e[3].message.contains("\"abs\""), "{}", e[3].message);
    }

    #[test]
    fn good_buckets_and_prefixes_pass() {
        for b in ["backups", "my.bucket-01", "abc"] {
            assert!(is_bucket_name(b), "{b}");
        }
        for b in ["ab", "-abc", "abc-", "a..b", "192.168.1.1", "ABC", "a_b"] {
            assert!(!is_bucket_name(b), "{b}");
        }
        assert!(
            validate(&policy(&format!(
                "{}  schedule: \"0 3 * * *\"\n",
                base().replace("bucket: backups", "bucket: backups, prefix: team/prod/")
            )))
            .is_ok()
        );
    }

    #[test]
    fn offsite_must_differ_from_storage() {
        let e = errors(&with("  schedule: \"0 3 * * *\"\n  offsite: {bucket: backups, encryptionKeySecret: key}\n"));
        assert_eq!(e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["spec.offsite"]);
    }

    #[test]
    fn extra_resources_must_be_plural_or_plural_group() {
        let e = errors(&with(
            "  schedule: \"0 3 * * *\"\n  scope:\n    extraResources: [configmaps, ingresses.networking.k8s.io, ConfigMap, \"secrets.\", configmaps]\n",
        ));
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.scope.extraResources[2]", "spec.scope.extraResources[3]", "spec.scope.extraResources[4]"]
        );
        assert!(e[2].message.contains("twice"));
    }

    #[test]
    fn empty_retention_is_allowed_all_zero_is_not() {
        assert!(validate(&with("  schedule: \"0 3 * * *\"\n")).is_ok());
        assert!(validate(&with("  schedule: \"0 3 * * *\"\n  retention: {keepDaily: 7, keepLast: 0}\n")).is_ok());
        let e = errors(&with("  schedule: \"0 3 * * *\"\n  retention: {keepLast: 0, keepDaily: 0}\n"));
        assert_eq!(e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["spec.retention"]);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let e = errors(&policy(&format!(
            "{}  schedule: \"* *\"\n  timeZone: Nowhere/Else\n",
            base().replace("bucket: backups", "bucket: \"x\"")
        )));
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.schedule", "spec.timeZone", "spec.storage.bucket"]);
    }

    #[test]
    fn server_side_encryption_needs_a_kms_key_exactly_with_aws_kms() {
        let location = |sse: &str| format!("{{bucket: offsite, encryptionKeySecret: k, serverSideEncryption: {sse}}}");
        let p = with(&format!(
            "  schedule: \"0 3 * * *\"\n  offsite: {}\n",
            location("{type: \"aws:kms\", kmsKeyId: alias/backups}")
        ));
        assert!(errors(&p).is_empty(), "{:?}", errors(&p));
        let p = with(&format!("  schedule: \"0 3 * * *\"\n  offsite: {}\n", location("{type: \"aws:kms\"}")));
        let e = errors(&p);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "spec.offsite.serverSideEncryption.kmsKeyId");
        assert!(e[0].message.contains("required with type aws:kms"), "{}", e[0].message);
        let p = with(&format!("  schedule: \"0 3 * * *\"\n  offsite: {}\n", location("{type: AES256, kmsKeyId: k1}")));
        let e = errors(&p);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("remove kmsKeyId for AES256"), "{}", e[0].message);
        // An unknown type does not even parse (the CRD schema's enum refuses it first).
        let yaml = format!("{}  schedule: \"0 3 * * *\"\n", base()).replace(
            "encryptionKeySecret: key}",
            "encryptionKeySecret: key, serverSideEncryption: {type: aws:kms:dsse}}",
        );
        assert!(serde_saphyr::from_str::<BackupPolicy>(&yaml).is_err());
    }

    /// The CRD's own rules, which the API server applies before the operator sees a policy.
    #[test]
    fn crd_rules_tie_kms_key_id_to_aws_kms() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(BackupPolicy::crd()).unwrap();
        let compiled = kube_cel::compile_schema(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
        let messages = |sse: serde_json::Value| -> Vec<String> {
            let location = serde_json::json!({"bucket": "b", "encryptionKeySecret": "k", "serverSideEncryption": sse});
            let obj = serde_json::json!({"spec": {"schedule": "0 3 * * *", "storage": location.clone(), "offsite": location}});
            match kube_cel::validate_compiled(&compiled, &obj, None) {
                Ok(()) => vec![],
                Err(e) => e.into_vec().into_iter().map(|e| format!("{} {}", e.field_path, e.message)).collect(),
            }
        };
        assert_eq!(messages(serde_json::json!({"type": "aws:kms", "kmsKeyId": "alias/x"})), Vec::<String>::new());
        assert_eq!(messages(serde_json::json!({"type": "AES256"})), Vec::<String>::new());
        let m = messages(serde_json::json!({"type": "aws:kms"}));
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.iter().all(|m| m.contains("serverSideEncryption.kmsKeyId") && m.contains("needs")), "{m:?}");
        assert!(m.iter().any(|m| m.contains("spec.offsite.serverSideEncryption")), "{m:?}");
        let m = messages(serde_json::json!({"type": "AES256", "kmsKeyId": "k"}));
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("remove kmsKeyId for AES256"), "{m:?}");
    }
}

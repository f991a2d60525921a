//! Backup and Restore: pure builders of the Jobs that run `berth agent` for each database and
//! volume (see DESIGN.md, "Backups"). The controllers decide *which* Jobs to create and read
//! their outcome; these functions only turn one task into one Job.

pub mod jobs;
pub mod phase;
pub mod plan;

pub use jobs::{AgentTask, JobSettings, agent_job};

/// The name of the agent Job of `item` (`database/<instance>`, `volume/<pvc>`) of the Backup
/// or Restore `owner`: unique per owner and item, within 63 characters.
pub fn job_name(owner: &str, item: &str) -> String {
    let hash = blake3::hash(item.as_bytes()).to_hex();
    let prefix: String = owner.chars().take(54).collect();
    format!("{}-{}", prefix.trim_end_matches('-'), &hash[..8])
}

/// The tags an agent Job gives its snapshot, by which the Backup finds it afterwards.
pub fn snapshot_tags(backup: &str, item: &str) -> Vec<String> {
    vec![format!("backup={backup}"), format!("item={item}")]
}

/// How an agent Job ended: `Some(Ok)` complete, `Some(Err(message))` failed (with the
/// reason and message of its condition), `None` while it runs.
pub fn job_outcome(job: &k8s_openapi::api::batch::v1::Job) -> Option<Result<(), String>> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for c in conditions.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return Some(Ok(())),
            "Failed" => {
                let name = job.metadata.name.as_deref().unwrap_or_default();
                let reason = c.reason.clone().unwrap_or_default();
                let message = c.message.clone().unwrap_or_default();
                return Some(Err(format!("agent Job {name} failed: {reason}: {message}")));
            }
            _ => {}
        }
    }
    None
}

/// Why the agent failed, from the termination message of the newest failed pod of its Job (the
/// agent's last stderr lines, `FallbackToLogsOnError`): the last line that says anything,
/// shortened. `None` when no pod says.
pub fn agent_error(pods: &[k8s_openapi::api::core::v1::Pod]) -> Option<String> {
    const LONGEST: usize = 512;
    let failed = pods.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
    let newest = failed.max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    let statuses = newest.status.as_ref()?.container_statuses.as_ref()?;
    let message = statuses
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone().filter(|m| !m.is_empty()))?;
    let line = message.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(LONGEST).collect())
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    #[test]
    fn job_names_are_unique_per_item_and_short() {
        let long = "x".repeat(80);
        assert!(job_name(&long, "database/a").len() <= 63);
        assert_ne!(job_name("nightly-20261122030000", "database/a"), job_name("nightly-20261122030000", "database/b"));
        assert!(job_name("nightly-20261122030000", "volume/data").starts_with("nightly-20261122030000-"));
    }

    #[test]
    fn job_outcome_follows_the_conditions() {
        let job = |conditions: serde_json::Value| -> k8s_openapi::api::batch::v1::Job {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}))
                .unwrap()
        };
        assert_eq!(job_outcome(&job(serde_json::json!([]))), None);
        assert_eq!(job_outcome(&job(serde_json::json!([{"type": "Complete", "status": "True"}]))), Some(Ok(())));
        let failed = job(
            serde_json::json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "boom"}]),
        );
        assert_eq!(job_outcome(&failed), Some(Err("agent Job j failed: BackoffLimitExceeded: boom".into())));
    }

    #[test]
    fn agent_error_is_the_last_line_of_the_newest_failed_pod() {
        let pod = |created: &str, phase: &str, message: &str| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": created, "creationTimestamp": created},
                "status": {"phase": phase, "containerStatuses": [{
                    "name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "message": message}}}]}
            }))
            .unwrap()
        };
        let pods = [
            pod("2026-01-01T00:00:00Z", "Failed", "old error\n"),
            pod("2026-01-01T00:00:20Z", "Failed", "progress 10%\nError: storage: connection refused\n\n"),
            pod("2026-01-01T00:00:30Z", "Running", ""),
        ];
        assert_eq!(agent_error(&pods).as_deref(), Some("Error: storage: connection refused"));
        assert_eq!(agent_error(&pods[2..]), None);
    }
}

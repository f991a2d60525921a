//! A restore drill of a BackupPolicy (`spec.verify`), run outside the reconcile by
//! [`super::maintenance::Tasks`]-like bookkeeping in the policy controller, within the drill's
//! timeout. In order: the policy's account must be allowed to empty the drill namespace; the
//! backup's packs are downloaded and verified (`check --read-data` limited to its snapshots);
//! the namespace is emptied; a child `Restore` (owned by the policy, acting as the policy's
//! account) brings back data only into the drill namespace and waits for its
//! DatabaseInstances to be Ready; each restored PostgreSQL database's row counts are compared
//! with those the backup recorded in the dump's snapshot, and each RabbitMQ instance's
//! definitions (vhosts, users, permissions, queues, exchanges, policies) with the backup's,
//! and each restored volume's files, directories and bytes (counted by an agent Job on the
//! claim) with its snapshot's summary; the namespace is emptied again
//! after a pass (a failed drill's is kept, see [`crate::resources::backuppolicy::drill`]).
//!
//! Row counts are read by the operator over the same connection it provisions the instance
//! with (the admin Secret read as the policy's account), not by an agent Job: counting is a
//! handful of queries, and the operator already reaches every instance it provisions.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::repository;
use crate::api::backup::Backup;
use crate::api::backuppolicy::BackupPolicy;
use crate::api::databaseinstance::DatabaseInstance;
use crate::api::restore::{Restore, RestoreSpec};
use crate::backup::Repository;
use crate::backup::archiver;
use crate::backup::census::Census;
use crate::backup::ops::check_snapshot_data;
use crate::provision::{self, Target};
use crate::resources::backup::jobs::COMPONENT as AGENT_COMPONENT;
use crate::resources::backup::{AgentTask, JobSettings, agent_job, job_name, job_outcome, phase};
use crate::resources::backuppolicy::drill::{
    DRILL_KINDS, DrillOutcome, StartDrill, compare_counts, compare_definitions,
};
use crate::resources::backuppolicy::plan::Refusal;
use crate::resources::databaseinstance::validate as validate_database;
use crate::resources::databaseinstance::validate::MANAGEMENT_PORT;
use crate::resources::restore::Access;
use crate::runtime::impersonate::{TenantClient, allowed};

/// How often the child Restore and the emptying namespace are looked at.
const POLL: Duration = Duration::from_secs(2);
/// Label of the child Restore: the policy it drills.
pub const DRILL_LABEL: &str = "berth.dev/drill-of";

/// What the drill needs besides the policy.
pub struct DrillRun {
    pub operator: kube::Client,
    pub tenant: TenantClient,
    pub policy: BackupPolicy,
    pub start: StartDrill,
    /// The operator's context, for its endpoint overrides (`--endpoint-overrides`).
    pub shared: std::sync::Arc<super::Context>,
}

/// Runs the drill; its result is `Ok` with what was checked or the failed check.
pub async fn run(d: DrillRun) -> DrillOutcome {
    let timeout = d.start.timeout;
    let result = match tokio::time::timeout(timeout, drill(&d)).await {
        Ok(result) => result,
        Err(_) => Err((
            "TimedOut",
            format!("the drill did not finish within spec.verify.timeout ({} minutes)", timeout.as_secs() / 60),
        )),
    };
    DrillOutcome { result }
}

fn kube_failed(what: &str) -> impl FnOnce(kube::Error) -> Refusal + '_ {
    move |e| ("KubernetesError", format!("{what}: {e}"))
}

async fn drill(d: &DrillRun) -> Result<String, Refusal> {
    let ns = d.start.namespace.as_str();
    let source = d.policy.namespace().unwrap_or_default();
    let policy_name = d.policy.name_any();
    check_access(&d.tenant, ns, &policy_name).await?;

    let backups: Api<Backup> = Api::namespaced(d.operator.clone(), &source);
    let backup = backups.get(&d.start.backup).await.map_err(kube_failed("reading the Backup"))?;
    let items = backup.status.map(|s| s.items).unwrap_or_default();
    let repo = repository::open(&d.tenant, &source, &d.policy.spec.storage, "spec.storage")
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;

    // The repository's data first: a damaged pack is named here, before a restore trips on it.
    let mut snapshots = Vec::new();
    for item in &items {
        let Some(id) = &item.snapshot else { continue };
        let (id, _) = repo.find_snapshot(id).await.map_err(|e| {
            ("SnapshotMissing", format!("snapshot {id} of {} in backup {}: {e}", item.name, d.start.backup))
        })?;
        snapshots.push(id);
    }
    let report = check_snapshot_data(&repo, &snapshots).await.map_err(|e| ("CheckFailed", e.to_string()))?;
    if !report.ok() {
        return Err((
            "RepositoryDataDamaged",
            format!(
                "check --read-data of backup {}: {} error(s) in {} packs: {}",
                d.start.backup,
                report.errors.len(),
                report.packs,
                report.errors.join("; ")
            ),
        ));
    }
    let mut checked = vec![format!("{} packs ({} bytes) read and verified", report.packs_read, report.bytes_read)];

    empty_namespace(&d.tenant, ns).await?;
    restore(d, &source).await?;

    for item in &items {
        let (Some(pvc), Some(snapshot)) = (item.name.strip_prefix("volume/"), &item.snapshot) else { continue };
        let (_, snap) = repo
            .find_snapshot(snapshot)
            .await
            .map_err(|e| ("SnapshotMissing", format!("snapshot {snapshot} of {}: {e}", item.name)))?;
        let recorded = Census::of_summary(&snap.summary);
        count_volume(d, pvc, recorded).await?;
        checked.push(format!("{pvc}: {recorded} as recorded"));
    }

    let instances: Api<DatabaseInstance> = Api::namespaced(d.tenant.client.clone(), ns);
    for item in &items {
        let (Some(name), Some(snapshot)) = (item.name.strip_prefix("database/"), &item.snapshot) else { continue };
        let Some(db) = instances.get_opt(name).await.map_err(kube_failed("reading a DatabaseInstance"))? else {
            return Err((
                "CheckFailed",
                format!("DatabaseInstance {ns}/{name} was not restored (backup item {})", item.name),
            ));
        };
        let Ok(valid) = validate_database(&db) else { continue };
        let password = admin_password(&d.tenant, ns, &valid.secret_name()).await?;
        if valid.is_rabbitmq() {
            let recorded = read_snapshot_file(&repo, snapshot, "definitions.json").await?.unwrap_or_default();
            let recorded: serde_json::Value = serde_json::from_slice(&recorded).map_err(|e| {
                ("CheckFailed", format!("the definitions of snapshot {snapshot} are not readable: {e}"))
            })?;
            let (host, port) = d.shared.endpoint(&valid.host(), MANAGEMENT_PORT as u16);
            let target = Target { host, port, user: valid.admin_user().into(), password };
            let object = format!("DatabaseInstance {ns}/{name}");
            let restored = provision::rabbitmq::definitions(&target)
                .await
                .map_err(|e| ("CheckFailed", format!("RabbitMQ definitions of {object}: {e}")))?;
            let found = compare_definitions(&object, &recorded, &restored).map_err(|m| ("CheckFailed", m))?;
            checked.push(format!("{name}: {found} RabbitMQ definitions as recorded"));
            continue;
        }
        let Some(recorded) = recorded_row_counts(&repo, snapshot).await? else {
            checked.push(format!("{name}: no row counts recorded (a backup made before drills)"));
            continue;
        };
        let (host, port) = d.shared.endpoint(&valid.host(), valid.port() as u16);
        let target = Target { host, port, user: valid.admin_user().into(), password };
        let (mut tables, mut rows) = (0, 0);
        for (database, recorded) in &recorded {
            let restored = count_rows(&target, database).await.map_err(|e| {
                ("CheckFailed", format!("row counts of database {database} in DatabaseInstance {ns}/{name}: {e}"))
            })?;
            compare_counts(
                "row counts",
                &format!("database {database} in DatabaseInstance {ns}/{name}"),
                recorded,
                &restored,
            )
            .map_err(|m| ("CheckFailed", m))?;
            tables += recorded.len();
            rows += recorded.values().sum::<u64>();
        }
        checked.push(format!("{name}: {} databases, {tables} tables, {rows} rows as recorded", recorded.len()));
    }

    empty_namespace(&d.tenant, ns).await?;
    let restores: Api<Restore> = Api::namespaced(d.operator.clone(), &source);
    let _ = restores.delete(&d.start.restore, &DeleteParams::background()).await;
    info!(backuppolicy = %format!("{source}/{policy_name}"), backup = %d.start.backup, "restore drill passed");
    Ok(checked.join("; "))
}

/// The policy's account must be allowed to empty the drill namespace; asked, never learnt from
/// a refused delete.
async fn check_access(tenant: &kube::Client, ns: &str, policy: &str) -> Result<(), Refusal> {
    let resources =
        [("berth.dev", "databaseinstances"), ("", "secrets"), ("", "persistentvolumeclaims"), ("batch", "jobs")];
    let mut missing = Vec::new();
    for (group, resource) in resources {
        for verb in ["list", "delete"] {
            let access =
                Access { verb, group: group.into(), resource: resource.into(), namespace: ns.into(), name: None };
            if !allowed(tenant, &access).await.map_err(kube_failed("asking for access"))? {
                missing.push(access.to_string());
            }
        }
    }
    // The volume counts run as agent Jobs there, as the restore's own do.
    let jobs =
        Access { verb: "create", group: "batch".into(), resource: "jobs".into(), namespace: ns.into(), name: None };
    if !allowed(tenant, &jobs).await.map_err(kube_failed("asking for access"))? {
        missing.push(jobs.to_string());
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err((
        "DrillNamespaceNotAllowed",
        format!(
            "the policy's ServiceAccount may not {}: the admin of {ns} grants it (deploy/tenant/berth-drill.yaml), as for a restore into {ns}, before {policy}'s spec.verify can run",
            missing.join(", ")
        ),
    ))
}

/// Deletes the DatabaseInstances, PersistentVolumeClaims, Secrets (but ServiceAccount tokens)
/// and agent Jobs of the drill namespace, and waits until they are gone. The Jobs go first: a
/// finished pod still mounting a claim keeps that claim (`pvc-protection`) until it is deleted.
pub async fn empty_namespace(tenant: &kube::Client, ns: &str) -> Result<(), Refusal> {
    let jobs: Api<Job> = Api::namespaced(tenant.clone(), ns);
    let agents = ListParams::default().labels(&format!("app.kubernetes.io/component={AGENT_COMPONENT}"));
    let instances: Api<DatabaseInstance> = Api::namespaced(tenant.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(tenant.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), ns);
    let lp = ListParams::default();
    loop {
        let mut left = 0;
        for job in jobs.list(&agents).await.map_err(kube_failed("listing the drill namespace"))? {
            left += 1;
            if job.meta().deletion_timestamp.is_none() {
                let _ = jobs.delete(&job.name_any(), &DeleteParams::background()).await;
            }
        }
        for db in instances.list(&lp).await.map_err(kube_failed("listing the drill namespace"))? {
            left += 1;
            if db.meta().deletion_timestamp.is_none() {
                let _ = instances.delete(&db.name_any(), &DeleteParams::background()).await;
            }
        }
        for claim in claims.list(&lp).await.map_err(kube_failed("listing the drill namespace"))? {
            left += 1;
            if claim.meta().deletion_timestamp.is_none() {
                let _ = claims.delete(&claim.name_any(), &DeleteParams::background()).await;
            }
        }
        for secret in secrets.list(&lp).await.map_err(kube_failed("listing the drill namespace"))? {
            if secret.type_.as_deref() == Some("kubernetes.io/service-account-token") {
                continue;
            }
            left += 1;
            let _ = secrets.delete(&secret.name_any(), &DeleteParams::background()).await;
        }
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Creates the child Restore (data only, into the drill namespace) and waits for its end.
async fn restore(d: &DrillRun, source: &str) -> Result<(), Refusal> {
    let restores: Api<Restore> = Api::namespaced(d.operator.clone(), source);
    let child = Restore {
        metadata: ObjectMeta {
            name: Some(d.start.restore.clone()),
            namespace: Some(source.into()),
            labels: Some([(DRILL_LABEL.to_string(), d.policy.name_any())].into()),
            owner_references: Some(vec![d.policy.owner_ref(&()).expect("a stored policy has a uid")]),
            ..ObjectMeta::default()
        },
        spec: RestoreSpec {
            backup_name: Some(d.start.backup.clone()),
            namespace_mapping: [(source.to_string(), d.start.namespace.clone())].into(),
            include_kinds: DRILL_KINDS.iter().map(|k| k.to_string()).collect(),
            timeout: Some(format!("{}s", d.start.timeout.as_secs())),
            service_account_name: d.policy.spec.service_account_name.clone(),
            ..RestoreSpec::default()
        },
        status: None,
    };
    match restores.create(&PostParams::default(), &child).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(kube_failed("creating the drill's Restore")(e)),
    }
    loop {
        let current = restores.get(&d.start.restore).await.map_err(kube_failed("reading the drill's Restore"))?;
        let status = current.status.unwrap_or_default();
        match status.phase.as_deref() {
            Some(phase::COMPLETED) => return Ok(()),
            Some(p @ (phase::FAILED | phase::PARTIALLY_FAILED)) => {
                let why = status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone());
                let errors = if status.errors.is_empty() { why.unwrap_or_default() } else { status.errors.join("; ") };
                return Err(("RestoreFailed", format!("Restore {source}/{} ended {p}: {errors}", d.start.restore)));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Counts the files of the restored claim `pvc` with an agent Job in the drill namespace
/// (created as the policy's account, like the restore's own Jobs; read-only mount), which
/// fails naming both counts when they differ from what the backup recorded.
async fn count_volume(d: &DrillRun, pvc: &str, recorded: Census) -> Result<(), Refusal> {
    let ns = d.start.namespace.as_str();
    let name = job_name(&d.start.restore, &format!("count/{pvc}"));
    let owner = d.policy.controller_owner_ref(&()).expect("a stored policy has a uid");
    let settings = JobSettings {
        owner: &owner,
        namespace: ns,
        name: &name,
        image: &d.shared.agent_image,
        storage: &d.policy.spec.storage,
        tags: Vec::new(),
        consumer: None,
        deadline_seconds: d.start.timeout.as_secs().max(1) as i64,
        backoff_limit: 1,
        service_account: None,
    };
    let mut job = agent_job(&AgentTask::CountVolume { pvc: pvc.into(), recorded }, &settings);
    // The policy lives in another namespace: emptying the drill namespace removes the Job.
    job.metadata.owner_references = None;
    job.labels_mut().insert(DRILL_LABEL.into(), d.policy.name_any());
    let jobs: Api<Job> = Api::namespaced(d.tenant.client.clone(), ns);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(kube_failed(&format!("creating Job {ns}/{name} to count volume {pvc}"))(e)),
    }
    let observed: Api<Job> = Api::namespaced(d.operator.clone(), ns);
    loop {
        let current = observed.get(&name).await.map_err(kube_failed("reading the drill's count Job"))?;
        match job_outcome(&current) {
            None => tokio::time::sleep(POLL).await,
            Some(Ok(())) => return Ok(()),
            Some(Err(message)) => {
                let message = super::backup::job_error(&d.operator, ns, &name, message)
                    .await
                    .map_err(|e| ("KubernetesError", e.to_string()))?;
                return Err(("CheckFailed", format!("volume {pvc} restored into {ns}: {message}")));
            }
        }
    }
}

/// The administrative password of a restored instance, read as the policy's account.
async fn admin_password(tenant: &kube::Client, ns: &str, secret: &str) -> Result<String, Refusal> {
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), ns);
    let secret = secrets.get(secret).await.map_err(kube_failed("reading the credentials Secret"))?;
    Ok(secret
        .data
        .as_ref()
        .and_then(|data| data.get("password"))
        .map(|p| String::from_utf8_lossy(&p.0).into_owned())
        .unwrap_or_default())
}

/// The file at `path` in a snapshot, `None` when there is none.
async fn read_snapshot_file(repo: &Repository, snapshot: &str, path: &str) -> Result<Option<Vec<u8>>, Refusal> {
    let (_, snap) =
        repo.find_snapshot(snapshot).await.map_err(|e| ("CheckFailed", format!("snapshot {snapshot}: {e}")))?;
    let Ok(node) = archiver::lookup(repo, &snap.root, path).await else { return Ok(None) };
    archiver::read_file(repo, &node)
        .await
        .map(Some)
        .map_err(|e| ("CheckFailed", format!("reading {path} of snapshot {snapshot}: {e}")))
}

/// `rowcounts.json` of a `postgres` snapshot: database → table → rows; `None` when the backup
/// recorded none.
async fn recorded_row_counts(
    repo: &Repository,
    snapshot: &str,
) -> Result<Option<BTreeMap<String, BTreeMap<String, u64>>>, Refusal> {
    let Some(bytes) = read_snapshot_file(repo, snapshot, crate::agent::postgres::ROW_COUNTS).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ("CheckFailed", format!("the row counts of snapshot {snapshot} are not readable: {e}")))
}

/// Each table's rows in `database`, as the agent counts them at backup.
async fn count_rows(target: &Target, database: &str) -> Result<BTreeMap<String, u64>, String> {
    let client = provision::postgres::connect(target, database).await.map_err(|e| e.to_string())?;
    let rows =
        client.query(crate::agent::postgres::COUNT_ROWS.trim_end_matches(';'), &[]).await.map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            let line: String = row.get(0);
            let (table, count) = line.rsplit_once('|').ok_or_else(|| format!("unexpected row {line:?}"))?;
            Ok((table.to_string(), count.parse().map_err(|_| format!("unexpected count in {line:?}"))?))
        })
        .collect()
}

//! Day-2 decisions, pure: what of a changed spec may be applied to a running instance, and
//! what is refused with a condition instead of being applied (or silently ignored).
//!
//! * A PostgreSQL major version change needs `pg_upgrade` or a dump and restore: refused, the
//!   pods keep the current version. Minor changes roll.
//! * A RabbitMQ cluster never shrinks by itself (quorum queues would lose members): refused.
//! * `storage.size` grows by patching every PVC (the StatefulSet's claim templates are
//!   immutable, so they keep the size they were created with); shrinking is refused.
//! * `storage.storageClassName` is part of the immutable claim template: a change is refused
//!   (`ImmutableFieldChanged`) and the StatefulSet keeps its class, instead of an apply that
//!   the API server answers with 422 on every retry.
//! * `engine` changes the StatefulSet's immutable fields (podManagementPolicy) and everything
//!   in it: refused (`ImmutableFieldChanged`) and nothing at all is applied ([`Plan::hold`]).
//!
//! [`plan`] returns the *effective* [`ValidDatabase`] — the spec with refused changes reverted
//! to what runs — so the builders produce children that keep the instance as it is.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::validate::{ValidDatabase, parse_version};

/// Pod template label holding the version the pods run.
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// A change the operator will not make, as a condition reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// A PVC to grow to `size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resize {
    pub pvc: String,
    pub storage_class: Option<String>,
    pub from: String,
    pub size: String,
}

/// What a reconcile does about the running instance.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The spec to build from: refused changes reverted.
    pub effective: ValidDatabase,
    pub refusals: Vec<Refusal>,
    pub resizes: Vec<Resize>,
    /// A refused change that no child can follow field by field (the engine): the controller
    /// applies nothing, reports it and waits for the spec to change.
    pub hold: Option<Refusal>,
}

/// Reason of a refused change of a field the StatefulSet cannot change after creation.
pub const IMMUTABLE_FIELD_CHANGED: &str = "ImmutableFieldChanged";
/// StatefulSet label naming the engine (see the builders' labels).
pub const ENGINE_LABEL: &str = "berth.dev/engine";

/// Bytes of a Kubernetes quantity as Berth accepts them (`20Gi`, `1.5Ti`, `500M`, `1024`).
pub fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => return None,
    };
    Some(n * factor)
}

fn requested_storage(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").map(|q| q.0.clone())
}

fn template_storage(sts: &StatefulSet) -> Option<String> {
    let claim = sts.spec.as_ref()?.volume_claim_templates.as_ref()?.first()?;
    requested_storage(claim)
}

/// The version the existing StatefulSet's pods run, from their version label.
pub fn running_version(sts: &StatefulSet) -> Option<String> {
    sts.spec.as_ref()?.template.metadata.as_ref()?.labels.as_ref()?.get(VERSION_LABEL).cloned()
}

/// The storage class of the StatefulSet's claim template (`None`: the cluster's default).
fn template_storage_class(sts: &StatefulSet) -> Option<Option<String>> {
    let claim = sts.spec.as_ref()?.volume_claim_templates.as_ref()?.first()?;
    Some(claim.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
}

fn class_name(class: &Option<String>) -> String {
    match class {
        Some(c) => format!("{c:?}"),
        None => "unset (the cluster's default class)".into(),
    }
}

fn running_image(sts: &StatefulSet) -> Option<String> {
    sts.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone()
}

/// Decides what may change. `existing` is the instance's StatefulSet and `pvcs` its data
/// volumes, as cached; both absent for a new instance.
pub fn plan(valid: &ValidDatabase, existing: Option<&StatefulSet>, pvcs: &[PersistentVolumeClaim]) -> Plan {
    let mut effective = valid.clone();
    let mut refusals = Vec::new();
    let mut resizes = Vec::new();
    let Some(sts) = existing else { return Plan { effective, refusals, resizes, hold: None } };

    let wanted_engine = if valid.is_rabbitmq() { "rabbitmq" } else { "postgres" };
    if let Some(running_engine) = sts.labels().get(ENGINE_LABEL)
        && running_engine != wanted_engine
    {
        let hold = Refusal {
            reason: IMMUTABLE_FIELD_CHANGED,
            message: format!(
                "spec.engine cannot change from {running_engine:?} to {wanted_engine:?} after creation: the \
                 StatefulSet and its data volumes belong to {running_engine}. Set it back to {running_engine:?}, or \
                 create a new DatabaseInstance for {wanted_engine} (a backup of one engine cannot be restored into the \
                 other)"
            ),
        };
        return Plan { effective, refusals, resizes, hold: Some(hold) };
    }

    // Claim templates cannot change: a new class would make every apply fail with 422.
    if let Some(running_class) = template_storage_class(sts)
        && running_class != valid.db.spec.storage.storage_class_name
    {
        refusals.push(Refusal {
            reason: IMMUTABLE_FIELD_CHANGED,
            message: format!(
                "spec.storage.storageClassName cannot change from {} to {} after creation: volumeClaimTemplates are \
                 immutable. Set it back, or create a new DatabaseInstance and restore a backup into it",
                class_name(&running_class),
                class_name(&valid.db.spec.storage.storage_class_name),
            ),
        });
        effective.db.spec.storage.storage_class_name = running_class;
    }

    if let Some(running) = running_version(sts)
        && let Ok(running_major) = parse_version(valid.engine, &running)
        && running_major != valid.major
        && !valid.is_rabbitmq()
    {
        refusals.push(Refusal {
            reason: "MajorUpgradeRefused",
            message: format!(
                "spec.version: PostgreSQL {running} -> {} is a major upgrade, which the data directory cannot follow \
                 in place; set spec.version back to {running_major}, or back up this instance and restore it into a \
                 new DatabaseInstance of version {}",
                valid.version, valid.major
            ),
        });
        effective.version = running;
        effective.major = running_major;
        if let Some(image) = running_image(sts) {
            effective.image = image;
        }
    }

    let current_replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if valid.is_rabbitmq() && valid.replicas < current_replicas {
        refusals.push(Refusal {
            reason: "ScaleDownRefused",
            message: format!(
                "spec.replicas: scaling RabbitMQ from {current_replicas} to {} nodes is refused: removing members can \
                 lose quorum-queue data; set spec.replicas back to {current_replicas}, or drain and forget the nodes \
                 with rabbitmq-queues and rabbitmqctl first and then recreate the instance",
                valid.replicas
            ),
        });
        effective.replicas = current_replicas;
    }

    // Claim templates cannot change: build with the size the StatefulSet was created with.
    let template_size = template_storage(sts);
    if let Some(size) = &template_size {
        effective.db.spec.storage.size = size.clone();
    }
    let desired = &valid.db.spec.storage.size;
    let desired_bytes = quantity_bytes(desired);
    let mut shrink = None;
    for pvc in pvcs {
        let Some(current) = requested_storage(pvc) else { continue };
        match (quantity_bytes(&current), desired_bytes) {
            (Some(c), Some(d)) if d > c => resizes.push(Resize {
                pvc: pvc.name_any(),
                storage_class: pvc.spec.as_ref().and_then(|s| s.storage_class_name.clone()),
                from: current,
                size: desired.clone(),
            }),
            (Some(c), Some(d)) if d < c => shrink = Some(current),
            _ => {}
        }
    }
    if let Some(current) = shrink {
        refusals.push(Refusal {
            reason: "StorageShrinkRefused",
            message: format!(
                "spec.storage.size: volumes cannot shrink from {current} to {desired}; set spec.storage.size to \
                 {current} or more (to use less space, restore a backup into a new, smaller instance)"
            ),
        });
    }
    Plan { effective, refusals, resizes, hold: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::databaseinstance::DatabaseInstance;
    use crate::resources::databaseinstance::credentials::Credentials;
    use crate::resources::databaseinstance::{build, validate};

    fn valid(yaml: &str) -> ValidDatabase {
        let db: DatabaseInstance = serde_saphyr::from_str(yaml).unwrap();
        validate(&db).unwrap()
    }

    const PG15: &str = "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata: {name: db, namespace: t}\nspec: {engine: postgres, version: '15', storage: {size: 10Gi}}\n";

    fn running(v: &ValidDatabase) -> StatefulSet {
        build(v, &Credentials::placeholder(v), "berth-system").stateful_set
    }

    fn pvc(name: &str, size: &str) -> PersistentVolumeClaim {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": size}}}
        }))
        .unwrap()
    }

    #[test]
    fn quantities_compare_across_units() {
        assert_eq!(quantity_bytes("1Gi"), Some(1073741824.0));
        assert!(quantity_bytes("1.5Gi").unwrap() > quantity_bytes("1500Mi").unwrap());
        assert!(quantity_bytes("2G").unwrap() < quantity_bytes("2Gi").unwrap());
        assert_eq!(quantity_bytes("10Xi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn new_instance_applies_the_spec_as_is() {
        let v = valid(PG15);
        let p = plan(&v, None, &[]);
        assert!(p.refusals.is_empty() && p.resizes.is_empty());
        assert_eq!(p.effective.version, "15");
    }

    #[test]
    fn postgres_major_bump_is_refused_and_minor_bump_rolls() {
        let sts = running(&valid(PG15));
        let major = valid(&PG15.replace("'15'", "'16'"));
        let p = plan(&major, Some(&sts), &[]);
        assert_eq!(p.refusals.len(), 1);
        assert_eq!(p.refusals[0].reason, "MajorUpgradeRefused");
        assert!(p.refusals[0].message.contains("spec.version"), "{}", p.refusals[0].message);
        assert_eq!((p.effective.version.as_str(), p.effective.image.as_str()), ("15", "postgres:15"));

        let minor = valid(&PG15.replace("'15'", "'15.8'"));
        let p = plan(&minor, Some(&sts), &[]);
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        assert_eq!(p.effective.image, "postgres:15.8");
    }

    #[test]
    fn rabbitmq_scale_down_is_refused_and_scale_up_allowed() {
        let three = valid(
            "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata: {name: mq, namespace: t}\nspec: {engine: rabbitmq, version: '4.1', replicas: 3, storage: {size: 5Gi}}\n",
        );
        let sts = running(&three);
        let mut one = three.clone();
        one.replicas = 1;
        let p = plan(&one, Some(&sts), &[]);
        assert_eq!(p.refusals[0].reason, "ScaleDownRefused");
        assert_eq!(p.effective.replicas, 3);
        let mut five = three.clone();
        five.replicas = 5;
        assert!(plan(&five, Some(&sts), &[]).refusals.is_empty());
    }

    #[test]
    fn a_new_storage_class_is_refused_and_the_claim_template_kept() {
        let standard = valid(&PG15.replace("size: 10Gi", "size: 10Gi, storageClassName: standard"));
        let sts = running(&standard);
        let fast = valid(&PG15.replace("size: 10Gi", "size: 10Gi, storageClassName: fast"));
        let p = plan(&fast, Some(&sts), &[]);
        assert_eq!(
            p.refusals,
            [Refusal {
                reason: IMMUTABLE_FIELD_CHANGED,
                message: "spec.storage.storageClassName cannot change from \"standard\" to \"fast\" after creation: \
                          volumeClaimTemplates are immutable. Set it back, or create a new DatabaseInstance and restore \
                          a backup into it"
                    .into(),
            }]
        );
        assert!(p.hold.is_none());
        // What is applied keeps every immutable field of the running StatefulSet.
        let applied = build(&p.effective, &Credentials::placeholder(&p.effective), "berth-system").stateful_set;
        assert_eq!(applied.spec.unwrap().volume_claim_templates, sts.spec.as_ref().unwrap().volume_claim_templates);

        // Removing the class is a change of the template too.
        let default_class = valid(PG15);
        let p = plan(&default_class, Some(&sts), &[]);
        assert_eq!(p.refusals[0].reason, IMMUTABLE_FIELD_CHANGED);
        assert!(p.refusals[0].message.contains("from \"standard\" to unset (the cluster's default class)"));
        // Unchanged: nothing to say.
        assert!(plan(&standard, Some(&sts), &[]).refusals.is_empty());
    }

    #[test]
    fn an_engine_change_holds_everything() {
        let sts = running(&valid(PG15));
        let mq = valid(
            "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata: {name: db, namespace: t}\nspec: {engine: rabbitmq, version: '4.1', storage: {size: 10Gi}}\n",
        );
        let p = plan(&mq, Some(&sts), &[]);
        let hold = p.hold.expect("an engine change is held");
        assert_eq!(hold.reason, IMMUTABLE_FIELD_CHANGED);
        assert!(
            hold.message.starts_with("spec.engine cannot change from \"postgres\" to \"rabbitmq\" after creation"),
            "{}",
            hold.message
        );
        assert!(plan(&valid(PG15), Some(&sts), &[]).hold.is_none());
    }

    #[test]
    fn storage_grows_per_pvc_and_never_shrinks() {
        let sts = running(&valid(PG15));
        let bigger = valid(&PG15.replace("10Gi", "20Gi"));
        let p = plan(&bigger, Some(&sts), &[pvc("data-db-0", "10Gi")]);
        assert_eq!(
            p.resizes,
            vec![Resize {
                pvc: "data-db-0".into(),
                storage_class: Some("fast".into()),
                from: "10Gi".into(),
                size: "20Gi".into()
            }]
        );
        // The claim template keeps its original size (it is immutable).
        assert_eq!(p.effective.db.spec.storage.size, "10Gi");
        assert!(p.refusals.is_empty());

        let smaller = valid(&PG15.replace("10Gi", "5Gi"));
        let p = plan(&smaller, Some(&sts), &[pvc("data-db-0", "10Gi")]);
        assert!(p.resizes.is_empty());
        assert_eq!(p.refusals[0].reason, "StorageShrinkRefused");
        assert!(p.refusals[0].message.contains("spec.storage.size"));
    }
}

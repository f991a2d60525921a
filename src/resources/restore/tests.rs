//! The restore plan, its waits and its access, without a cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::mapping::{BERTH_GROUP, plural};
use super::*;
use crate::api::restore::Restore;

fn restore(spec: &str) -> Restore {
    serde_saphyr::from_str(&format!(
        "apiVersion: berth.dev/v1alpha1\nkind: Restore\nmetadata: {{name: r, namespace: shop}}\nspec:\n  backupName: nightly-20260501030000\n{spec}"
    ))
    .unwrap()
}

fn obj(api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": "1111",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "labels": {"app": name},
        },
        "spec": {},
        "status": {"phase": "Ready"},
    })
}

fn names(plan: &RestorePlan, stage: Stage) -> Vec<String> {
    plan.objects(stage)
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect()
}

fn backup() -> Vec<Value> {
    vec![
        obj("berth.dev/v1alpha1", "AppEnvironment", "shop", "web"),
        obj("apps/v1", "Deployment", "shop", "legacy"),
        obj("v1", "PersistentVolumeClaim", "shop", "uploads"),
        obj("berth.dev/v1alpha1", "DatabaseInstance", "shop", "db"),
        obj("v1", "ConfigMap", "shop", "settings"),
        obj("v1", "Secret", "shop", "api-key"),
        obj("v1", "Namespace", "", "shop"),
        obj("v1", "Service", "shop", "legacy"),
    ]
}

#[test]
fn timeout_defaults_to_an_hour_and_reads_hours_minutes_and_seconds() {
    assert_eq!(timeout(&restore("")).unwrap(), DEFAULT_TIMEOUT);
    assert_eq!(timeout(&restore("  timeout: 90m\n")).unwrap(), Duration::from_secs(5400));
    assert_eq!(timeout(&restore("  timeout: 2h30m15s\n")).unwrap(), Duration::from_secs(9015));
    assert_eq!(timeout(&restore("  timeout: 45s\n")).unwrap(), Duration::from_secs(45));
    for bad in ["0m", "1d", "h", "1h30", "1.5h", "\"\""] {
        let err = timeout(&restore(&format!("  timeout: {bad}\n"))).unwrap_err();
        assert_eq!(err.field, "spec.timeout", "{bad}");
        assert!(err.message.contains("2h30m"), "{bad}: {}", err.message);
    }
}

#[test]
fn stages_follow_the_app_aware_order() {
    let plan = plan(&restore(""), backup()).unwrap();
    let order: Vec<Stage> = plan.stages.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, Stage::ALL);
    assert_eq!(names(&plan, Stage::ConfigAndSecrets), ["Namespace/shop", "Secret/api-key", "ConfigMap/settings"]);
    assert_eq!(names(&plan, Stage::Volumes), ["PersistentVolumeClaim/uploads"]);
    assert_eq!(names(&plan, Stage::Databases), ["DatabaseInstance/db"]);
    assert!(plan.objects(Stage::DatabaseData).is_empty());
    assert!(plan.objects(Stage::VolumeData).is_empty());
    assert_eq!(names(&plan, Stage::Apps), ["Deployment/legacy", "Service/legacy", "AppEnvironment/web"]);
    assert!(plan.dropped.is_empty(), "{:?}", plan.dropped);
}

#[test]
fn server_populated_metadata_and_status_are_stripped() {
    let mut dep = obj("apps/v1", "Deployment", "shop", "legacy");
    dep["metadata"]["ownerReferences"] = json!([{"apiVersion": "x/v1", "kind": "Thing", "name": "t", "uid": "9"}]);
    dep["metadata"]["annotations"] = json!({"keep": "me"});
    let plan = plan(&restore(""), vec![dep]).unwrap();
    let out = &plan.objects(Stage::Apps)[0];
    let meta = out["metadata"].as_object().unwrap();
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["annotations", "labels", "name", "namespace"]);
    assert!(out.get("status").is_none());
    assert_eq!(out["spec"], json!({}));
}

#[test]
fn services_and_claims_lose_what_the_source_cluster_allocated() {
    let mut svc = obj("v1", "Service", "shop", "web");
    svc["spec"] = json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "type": "NodePort",
        "ports": [{"port": 80, "nodePort": 30080}]});
    let mut headless = obj("v1", "Service", "shop", "db-headless");
    headless["spec"] = json!({"clusterIP": "None", "clusterIPs": ["None"]});
    let mut pvc = obj("v1", "PersistentVolumeClaim", "shop", "uploads");
    pvc["spec"] = json!({"volumeName": "pv-123", "resources": {"requests": {"storage": "1Gi"}}});
    pvc["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes", "team": "a"});
    let plan = plan(&restore(""), vec![svc, headless, pvc]).unwrap();
    let apps = plan.objects(Stage::Apps);
    assert_eq!(apps[1]["spec"], json!({"type": "NodePort", "ports": [{"port": 80}]}));
    assert_eq!(apps[0]["spec"], json!({"clusterIP": "None", "clusterIPs": ["None"]}));
    let claim = &plan.objects(Stage::Volumes)[0];
    assert_eq!(claim["spec"], json!({"resources": {"requests": {"storage": "1Gi"}}}));
    assert_eq!(claim["metadata"]["annotations"], json!({"team": "a"}));
}

#[test]
fn namespace_mapping_rewrites_namespaces_everywhere() {
    let mut app = obj("berth.dev/v1alpha1", "AppEnvironment", "shop", "web");
    app["spec"] = json!({"networkPolicy": {"allowFromNamespaces": ["shop", "monitoring"]}});
    let mut rb = obj("rbac.authorization.k8s.io/v1", "RoleBinding", "shop", "rb");
    rb["subjects"] = json!([{"kind": "ServiceAccount", "name": "web", "namespace": "shop"},
        {"kind": "User", "name": "alice", "namespace": "shop"}]);
    let objects = vec![app, rb, obj("v1", "Namespace", "", "shop"), obj("v1", "ConfigMap", "other", "c")];
    let plan = plan(&restore("  namespaceMapping: {shop: shop-restored}\n"), objects).unwrap();
    let ns = &plan.objects(Stage::ConfigAndSecrets)[0];
    assert_eq!(ns["metadata"]["name"], "shop-restored");
    let cm = &plan.objects(Stage::ConfigAndSecrets)[1];
    assert_eq!(cm["metadata"]["namespace"], "other", "unmapped namespaces stay");
    let apps = plan.objects(Stage::Apps);
    assert_eq!(apps[0]["metadata"]["namespace"], "shop-restored");
    assert_eq!(apps[0]["subjects"][0]["namespace"], "shop-restored");
    assert_eq!(apps[0]["subjects"][1]["namespace"], "shop", "only ServiceAccount subjects");
    assert_eq!(apps[1]["metadata"]["namespace"], "shop-restored");
    assert_eq!(apps[1]["spec"]["networkPolicy"]["allowFromNamespaces"], json!(["shop-restored", "monitoring"]));
}

#[test]
fn include_kinds_accepts_kind_plural_and_group_case_insensitively() {
    for include in ["[Secret, configmaps]", "[SECRETS, ConfigMap]", "[secret, configmap.]"] {
        let r = restore(&format!("  includeKinds: {include}\n"));
        let result = plan(&r, backup());
        if include.contains("configmap.") {
            let e = result.unwrap_err();
            assert_eq!(e[0].field, "spec.includeKinds[1]");
            continue;
        }
        let plan = result.unwrap();
        assert_eq!(names(&plan, Stage::ConfigAndSecrets), ["Secret/api-key", "ConfigMap/settings"], "{include}");
        assert!(plan.objects(Stage::Apps).is_empty(), "{include}");
        assert!(plan.dropped.iter().all(|d| d.reason == reason::NOT_INCLUDED));
    }
    let plan = plan(&restore("  includeKinds: [deployments.apps, appenvironments.berth.dev]\n"), backup()).unwrap();
    assert_eq!(names(&plan, Stage::Apps), ["Deployment/legacy", "AppEnvironment/web"]);
    let plan_wrong_group = super::plan(&restore("  includeKinds: [deployments.extensions]\n"), backup()).unwrap();
    assert!(plan_wrong_group.objects(Stage::Apps).is_empty());
}

#[test]
fn exclude_kinds_wins_and_must_not_contradict_include() {
    let plan = plan(&restore("  excludeKinds: [services, Namespace, persistentvolumeclaims]\n"), backup()).unwrap();
    assert_eq!(names(&plan, Stage::Apps), ["Deployment/legacy", "AppEnvironment/web"]);
    assert!(plan.objects(Stage::Volumes).is_empty());
    assert_eq!(plan.dropped.len(), 3);
    assert!(plan.dropped.iter().all(|d| d.reason == reason::EXCLUDED));
    let e =
        super::plan(&restore("  includeKinds: [Secret]\n  excludeKinds: [\"bad!\", secret]\n"), backup()).unwrap_err();
    assert_eq!(
        e.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
        ["spec.excludeKinds[0]", "spec.excludeKinds[1]"]
    );
    assert!(e[1].message.contains("\"secret\" is also in spec.includeKinds"), "{}", e[1].message);
}

#[test]
fn berth_children_are_dropped_but_database_credentials_come_back() {
    let managed = |kind: &str, api: &str, name: &str, owner_label: &str| {
        let mut o = obj(api, kind, "shop", name);
        o["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "berth", owner_label: "x"});
        o
    };
    let objects = vec![
        managed("Deployment", "apps/v1", "web", "berth.dev/appenvironment"),
        managed("ConfigMap", "v1", "db-config", "berth.dev/databaseinstance"),
        managed("Secret", "v1", "db-credentials", "berth.dev/databaseinstance"),
        managed("Secret", "v1", "web-extra", "berth.dev/appenvironment"),
        managed("StatefulSet", "apps/v1", "db", "berth.dev/databaseinstance"),
    ];
    let plan = plan(&restore(""), objects).unwrap();
    assert_eq!(names(&plan, Stage::ConfigAndSecrets), ["Secret/db-credentials"]);
    assert!(plan.objects(Stage::Apps).is_empty());
    assert_eq!(plan.dropped.len(), 4);
    assert!(plan.dropped.iter().all(|d| d.reason == reason::MANAGED_BY_BERTH));
    assert_eq!(plan.dropped[0].object, "Deployment shop/web");
}

#[test]
fn controller_output_tokens_and_backup_objects_are_dropped() {
    let mut token = obj("v1", "Secret", "shop", "sa-token");
    token["type"] = json!("kubernetes.io/service-account-token");
    let objects = vec![
        obj("v1", "Pod", "shop", "web-abc"),
        obj("apps/v1", "ReplicaSet", "shop", "web-123"),
        obj("v1", "Endpoints", "shop", "web"),
        obj("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-x"),
        obj("v1", "Event", "shop", "e1"),
        obj("events.k8s.io/v1", "Event", "shop", "e2"),
        token,
        obj("berth.dev/v1alpha1", "Backup", "shop", "nightly-1"),
        obj("berth.dev/v1alpha1", "Restore", "shop", "r"),
        obj("berth.dev/v1alpha1", "BackupPolicy", "shop", "nightly"),
    ];
    let plan = plan(&restore(""), objects.clone()).unwrap();
    assert!(plan.stages.iter().all(|(_, o)| o.is_empty()), "{:?}", plan.stages);
    let reasons: Vec<&str> = plan.dropped.iter().map(|d| d.reason).collect();
    assert_eq!(
        reasons,
        [
            reason::RECREATED_BY_CONTROLLER,
            reason::RECREATED_BY_CONTROLLER,
            reason::RECREATED_BY_CONTROLLER,
            reason::RECREATED_BY_CONTROLLER,
            reason::RECREATED_BY_CONTROLLER,
            reason::RECREATED_BY_CONTROLLER,
            reason::SERVICE_ACCOUNT_TOKEN,
            reason::BACKUP_MACHINERY,
            reason::BACKUP_MACHINERY,
            reason::POLICY_NOT_INCLUDED,
        ]
    );
    // Named in includeKinds, a BackupPolicy comes back; Pods never do.
    let plan = super::plan(&restore("  includeKinds: [backuppolicies, pods]\n"), objects).unwrap();
    assert_eq!(names(&plan, Stage::Apps), ["BackupPolicy/nightly"]);
}

#[test]
fn invalid_spec_and_objects_are_reported_together() {
    let r = restore("  namespaceMapping: {shop: Shop_Restored}\n  excludeKinds: [\"\"]\n");
    let e = plan(&r, vec![json!({"kind": "ConfigMap"}), obj("v1", "ConfigMap", "shop", "ok")]).unwrap_err();
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["spec.excludeKinds[0]", "spec.namespaceMapping.shop", "backup.objects[0]"]);
    assert!(e[1].message.contains("Shop_Restored"));
}

#[test]
fn target_namespaces_are_those_of_the_mapped_objects() {
    let r = restore("  namespaceMapping: {shop: shop-copy}\n");
    let plan = plan(&r, backup()).unwrap();
    assert_eq!(plan.namespaces().into_iter().collect::<Vec<_>>(), ["shop-copy"]);
    assert_eq!(target_namespace(&r, "shop"), "shop-copy");
    assert_eq!(target_namespace(&r, "other"), "other");
}

#[test]
fn a_missing_target_namespace_is_named_with_the_fix() {
    use NamespaceState::*;
    assert_eq!(namespace_problem(&[("shop-copy".into(), Active)]), None);
    let (reason, message) = namespace_problem(&[("a".into(), Active), ("shop-copy".into(), Missing)]).expect("missing");
    assert_eq!(reason, NAMESPACE_NOT_FOUND);
    assert_eq!(
        message,
        "target namespace \"shop-copy\" does not exist; create it (Berth does not create namespaces): kubectl \
         create namespace shop-copy. The restore starts once it exists (checked every 30 s)"
    );
    let (_, two) = namespace_problem(&[("a".into(), Missing), ("b".into(), Missing)]).unwrap();
    assert!(two.starts_with("target namespaces \"a\", \"b\" do not exist; create them"), "{two}");
    let (reason, gone) = namespace_problem(&[("old".into(), Terminating)]).unwrap();
    assert_eq!(reason, NAMESPACE_TERMINATING);
    assert!(gone.starts_with("target namespace \"old\" is being deleted"), "{gone}");
}

#[test]
fn waits_end_at_their_deadline() {
    let start = jiff::Timestamp::from_second(1_000_000).unwrap();
    let at = |secs: i64| jiff::Timestamp::from_second(1_000_000 + secs).unwrap();
    assert!(!deadline_passed(None, at(1_000_000), DATABASE_READY_DEADLINE), "an unknown start has just begun");
    assert!(!deadline_passed(Some(start), at(29 * 60), DATABASE_READY_DEADLINE));
    assert!(deadline_passed(Some(start), at(31 * 60), DATABASE_READY_DEADLINE));
    assert_eq!(
        database_not_ready_message("shop-copy", "orders-db", Some(("Starting", "0 of 1 pods ready")), None),
        "DatabaseInstance shop-copy/orders-db did not become Ready within 30 minutes: its Ready condition says \
         Starting: 0 of 1 pods ready. Its data was not restored; fix the instance (kubectl describe dbi -n \
         shop-copy orders-db) and create a new Restore"
    );
    assert!(database_not_ready_message("n", "db", None, Some("forbidden")).contains("it does not exist: forbidden"));
    assert!(jobs_timed_out_message(&["j1".into()], "n", Duration::from_secs(6 * 3600 + 900)).contains("6 h 15 min"));
}

fn resource_of(obj: &Value) -> Option<ResourceName> {
    let (group, plural, namespaced) = match obj["kind"].as_str()? {
        "Deployment" => ("apps", "deployments", true),
        "RoleBinding" => ("rbac.authorization.k8s.io", "rolebindings", true),
        "Secret" => ("", "secrets", true),
        "Namespace" => ("", "namespaces", false),
        "DatabaseInstance" => (BERTH_GROUP, "databaseinstances", true),
        _ => return None,
    };
    Some(ResourceName { group: group.into(), plural: plural.into(), namespaced })
}

fn data<'a>(target: &'a str, snapshots: Vec<(&'a str, &'a str)>) -> DataWrites<'a> {
    DataWrites {
        own_namespace: "shop",
        target_namespace: target,
        storage_secrets: vec!["s3-credentials", "repository-key"],
        snapshots,
    }
}

fn access(verb: &'static str, group: &str, resource: &str, ns: &str, name: Option<&str>) -> Access {
    Access::new(verb, group, resource, ns, name)
}

#[test]
fn every_object_is_a_create_in_its_own_namespace_and_cluster_scoped_ones_cluster_wide() {
    let objects = vec![
        obj("apps/v1", "Deployment", "kube-system", "evil"),
        obj("rbac.authorization.k8s.io/v1", "RoleBinding", "shop", "rb"),
        obj("apps/v1", "Deployment", "shop", "web"),
        obj("v1", "Namespace", "", "new-ns"),
        obj("example.com/v1", "Unknown", "shop", "u"),
    ];
    let plan = plan(&restore(""), objects).unwrap();
    let needed = required_access(&plan, false, &data("shop", vec![]), resource_of);
    assert_eq!(
        needed,
        [
            access("create", "", "namespaces", "", None),
            access("create", "apps", "deployments", "kube-system", None),
            access("create", "apps", "deployments", "shop", None),
            access("create", "rbac.authorization.k8s.io", "rolebindings", "shop", None),
        ]
    );
    // With existingResourcePolicy: update, each object is also patched, by name.
    let needed = required_access(&plan, true, &data("shop", vec![]), resource_of);
    assert!(needed.contains(&access("patch", "apps", "deployments", "kube-system", Some("evil"))), "{needed:?}");
}

#[test]
fn a_mapped_namespace_is_where_the_objects_are_checked() {
    let plan = plan(
        &restore("  namespaceMapping: {shop: kube-system}\n"),
        vec![obj("rbac.authorization.k8s.io/v1", "RoleBinding", "shop", "admin")],
    )
    .unwrap();
    let needed = required_access(&plan, false, &data("kube-system", vec![]), resource_of);
    assert_eq!(needed, [access("create", "rbac.authorization.k8s.io", "rolebindings", "kube-system", None)]);
}

#[test]
fn a_database_dump_needs_update_of_the_instance_and_get_of_its_credentials() {
    let empty = plan(&restore(""), vec![]).unwrap();
    let needed = required_access(&empty, false, &data("team-b", vec![("postgres", "orders-db")]), resource_of);
    assert_eq!(
        needed,
        [
            access("get", "", "secrets", "team-b", Some("orders-db-credentials")),
            access("get", "", "secrets", "team-b", Some("repository-key")),
            access("get", "", "secrets", "team-b", Some("s3-credentials")),
            access("create", "", "secrets", "team-b", None),
            access("update", BERTH_GROUP, "databaseinstances", "team-b", Some("orders-db")),
            access("create", "batch", "jobs", "team-b", None),
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    // In its own namespace no Secret is copied; a volume overwrites a claim.
    let needed = required_access(&empty, false, &data("shop", vec![("dir", "uploads")]), resource_of);
    assert_eq!(
        needed,
        [
            access("create", "batch", "jobs", "shop", None),
            access("list", "", "pods", "shop", None),
            access("update", "", "persistentvolumeclaims", "shop", Some("uploads")),
        ]
    );
    // The snapshot of the objects themselves starts no Job.
    assert!(required_access(&empty, false, &data("x", vec![("kubernetes", "")]), resource_of).is_empty());
}

#[test]
fn one_refused_request_refuses_the_restore_and_names_kind_namespace_and_verb() {
    let ok = access("create", "apps", "deployments", "shop", None);
    let bad = access("create", "apps", "deployments", "kube-system", None);
    assert_eq!(authorization_refusal("ServiceAccount shop/berth-backup", &[(ok.clone(), true)]), None);
    assert_eq!(authorization_refusal("ServiceAccount shop/berth-backup", &[]), None);
    let (reason, message) =
        authorization_refusal("ServiceAccount shop/berth-backup", &[(ok, true), (bad, false)]).unwrap();
    assert_eq!(reason, NOT_AUTHORIZED);
    assert!(
        message.starts_with(
            "ServiceAccount shop/berth-backup may not create deployments.apps in namespace \"kube-system\", which \
             this restore needs; nothing was restored."
        ),
        "{message}"
    );
    assert!(!message.contains("pg_restore"), "{message}");
    let db = access("update", BERTH_GROUP, "databaseinstances", "team-b", Some("orders-db"));
    let (_, message) = authorization_refusal("ServiceAccount team-a/berth-backup", &[(db, false)]).unwrap();
    assert!(
        message.contains("may not update databaseinstances.berth.dev \"orders-db\" in namespace \"team-b\""),
        "{message}"
    );
    assert!(message.contains("pg_restore --clean"), "{message}");
}

#[test]
fn a_dry_run_tells_refused_objects_apart() {
    let miner = obj("apps/v1", "Deployment", "kube-system", "miner");
    let deployments = resource_of(&miner).unwrap();
    let refused = access("create", "apps", "deployments", "kube-system", None);
    assert!(create_refused(&[(refused.clone(), false)], &miner, &deployments));
    assert!(!create_refused(&[(refused, true)], &miner, &deployments));
    let other = access("create", "apps", "deployments", "shop", None);
    assert!(!create_refused(&[(other, false)], &miner, &deployments));
}

#[test]
fn plurals_of_kubernetes_kinds() {
    for (kind, want) in [
        ("ingress", "ingresses"),
        ("networkpolicy", "networkpolicies"),
        ("endpoints", "endpoints"),
        ("gateway", "gateways"),
        ("deployment", "deployments"),
        ("poddisruptionbudget", "poddisruptionbudgets"),
        ("backuppolicy", "backuppolicies"),
    ] {
        assert_eq!(plural(kind), want);
    }
}

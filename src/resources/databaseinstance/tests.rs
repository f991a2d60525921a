//! Builder tests, starting from small YAML fixtures run through `validate`.

use k8s_openapi::api::core::v1::Secret;

use super::build::{CONTAINER, uses_label};
use super::*;
use crate::api::DatabaseInstance;

fn instance(spec: &str) -> DatabaseInstance {
    let yaml = format!(
        "apiVersion: berth.dev/v1alpha1\nkind: DatabaseInstance\nmetadata:\n  name: db\n  namespace: team\n  uid: u-1\n  generation: 1\nspec:\n{spec}"
    );
    serde_saphyr::from_str(&yaml).expect("fixture parses")
}

fn valid(spec: &str) -> ValidDatabase {
    validate(&instance(spec)).expect("fixture is valid")
}

fn errors(spec: &str) -> Vec<String> {
    validate(&instance(spec)).expect_err("fixture is invalid").into_iter().map(|e| e.to_string()).collect()
}

fn creds(valid: &ValidDatabase) -> Credentials {
    Credentials {
        admin_password: "adminpw".into(),
        erlang_cookie: "cookie".into(),
        user_passwords: valid.login_users().map(|u| (u.to_string(), format!("{u}-pw"))).collect(),
        revision: None,
        previous_admin_password: None,
    }
}

fn data(secret: &Secret) -> std::collections::BTreeMap<String, String> {
    secret.string_data.clone().expect("builders write stringData")
}

const PG: &str = "  engine: postgres\n  version: \"16\"\n  storage:\n    size: 5Gi\n";
const MQ: &str = "  engine: rabbitmq\n  version: \"3.13\"\n  storage:\n    size: 5Gi\n";

#[test]
fn postgres_defaults() {
    let v = valid(PG);
    let c = build(&v, &creds(&v), "berth-system");
    let sts = c.stateful_set.spec.as_ref().unwrap();
    assert_eq!(sts.replicas, Some(1));
    assert_eq!(sts.service_name.as_deref(), Some("db-headless"));
    let retention = sts.persistent_volume_claim_retention_policy.as_ref().unwrap();
    assert_eq!(retention.when_deleted.as_deref(), Some("Retain"), "data survives deletion by default");
    let claim = &sts.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "5Gi");
    let pod = sts.template.spec.as_ref().unwrap();
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(999));
    let server = pod.containers.iter().find(|c| c.name == CONTAINER).unwrap();
    assert_eq!(server.image.as_deref(), Some("postgres:16"));
    let probe = server.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap();
    assert_eq!(probe[0], "pg_isready");
    assert!(c.disruption_budget.is_none() && c.role.is_none() && c.server_secret.is_none());
    assert!(c.user_secrets.is_empty());
    assert_eq!(c.headless_service.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));

    let d = data(&c.credentials);
    let keys: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(keys, ["dbname", "host", "jdbc-uri", "password", "port", "uri", "username"]);
    assert_eq!(d["uri"], "postgresql://postgres:adminpw@db.team.svc:5432/postgres");
    assert_eq!(d["jdbc-uri"], "jdbc:postgresql://db.team.svc:5432/postgres?user=postgres&password=adminpw");
    assert_eq!(c.credentials.metadata.name.as_deref(), Some("db-credentials"));
}

#[test]
fn postgres_roles_databases_and_parameters() {
    let v = valid(&format!(
        "{PG}  deletionPolicy: Delete\n  parameters:\n    max_connections: \"50\"\n    search_path: \"'$user', public\"\n  roles:\n    - name: app_rw\n    - name: group\n      login: false\n  databases:\n    - name: orders\n      owner: app_rw\n"
    ));
    let c = build(&v, &creds(&v), "ops");
    assert_eq!(c.user_secrets.len(), 1, "only login roles get a Secret");
    let s = &c.user_secrets[0];
    assert_eq!(s.metadata.name.as_deref(), Some("db-user-app-rw"));
    assert_eq!(data(s)["dbname"], "orders", "a role connects to the database it owns");
    assert_eq!(data(s)["uri"], "postgresql://app_rw:app_rw-pw@db.team.svc:5432/orders");
    let conf = &c.config.data.as_ref().unwrap()["postgresql.conf"];
    assert!(conf.contains("max_connections = '50'\n"), "{conf}");
    assert!(conf.contains("search_path = '''$user'', public'\n"), "quotes are doubled: {conf}");
    let sts = c.stateful_set.spec.unwrap();
    assert_eq!(sts.persistent_volume_claim_retention_policy.unwrap().when_deleted.as_deref(), Some("Delete"));
}

#[test]
fn config_change_rolls_the_pods() {
    let hash = |spec: &str| {
        let v = valid(spec);
        let c = build(&v, &creds(&v), "ops");
        c.stateful_set.spec.unwrap().template.metadata.unwrap().annotations.unwrap()[build::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_eq!(hash(PG), hash(PG));
    assert_ne!(hash(PG), hash(&format!("{PG}  parameters:\n    work_mem: 8MB\n")));
}

#[test]
fn rabbitmq_single_node() {
    let v = valid(&format!(
        "{MQ}  vhosts: [orders]\n  users:\n    - name: Orders.App\n      tags: [management]\n      permissions:\n        - vhost: orders\n"
    ));
    let c = build(&v, &creds(&v), "ops");
    let d = data(&c.credentials);
    let keys: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(keys, ["host", "password", "port", "uri", "username"]);
    assert_eq!(d["uri"], "amqp://admin:adminpw@db.team.svc:5672/%2F");
    let user = &c.user_secrets[0];
    assert_eq!(user.metadata.name.as_deref(), Some("db-user-orders-app"));
    assert_eq!(data(user)["uri"], "amqp://Orders.App:Orders.App-pw@db.team.svc:5672/orders");
    let server = data(c.server_secret.as_ref().unwrap());
    assert_eq!(server["default-user.conf"], "default_user = admin\ndefault_pass = adminpw\n");
    assert!(c.disruption_budget.is_none() && c.role.is_none(), "one node needs no PDB or peer discovery");
    let pod = &c.stateful_set.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let server = &pod.containers[0];
    assert_eq!(server.image.as_deref(), Some("rabbitmq:3.13-management"));
    let live = server.liveness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.clone().unwrap();
    assert_eq!(live, ["rabbitmq-diagnostics", "-q", "ping"]);
    assert!(!c.config.data.as_ref().unwrap()["10-berth.conf"].contains("peer_discovery"));
    assert_eq!(pod.automount_service_account_token, Some(false));
}

#[test]
fn rabbitmq_cluster_gets_peer_discovery_rbac_and_pdb() {
    let v = valid(&format!("{MQ}  replicas: 3\n"));
    let c = build(&v, &creds(&v), "ops");
    let conf = &c.config.data.as_ref().unwrap()["10-berth.conf"];
    assert!(conf.contains("cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s"), "{conf}");
    assert!(conf.contains("cluster_formation.k8s.service_name = db-headless"), "{conf}");
    assert!(c.config.data.as_ref().unwrap()["enabled_plugins"].contains("rabbitmq_peer_discovery_k8s"));
    assert!(c.role.is_some() && c.role_binding.is_some());
    assert_eq!(c.service_account.automount_service_account_token, Some(true));
    let pdb = c.disruption_budget.unwrap().spec.unwrap();
    assert_eq!(pdb.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
    let sts = c.stateful_set.spec.unwrap();
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
    let env = sts.template.spec.unwrap().containers[0].env.clone().unwrap();
    let nodename = env.iter().find(|e| e.name == "RABBITMQ_NODENAME").unwrap();
    assert_eq!(nodename.value.as_deref(), Some("rabbit@$(MY_POD_NAME).db-headless.team.svc"));
}

#[test]
fn network_policy_admits_operator_backups_and_users() {
    let v = valid(PG);
    let np = build(&v, &creds(&v), "berth-ops").network_policy.spec.unwrap();
    let rules = np.ingress.unwrap();
    let from = rules[1].from.as_ref().unwrap();
    let ns = from[0].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(ns["kubernetes.io/metadata.name"], "berth-ops");
    assert_eq!(from[1].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["berth.dev/role"], "backup");
    assert_eq!(from[2].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[&uses_label("db")], "true");
    assert_eq!(
        rules[1].ports.as_ref().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(5432))
    );
}

#[test]
fn validation_names_the_field() {
    let e = errors("  engine: postgres\n  version: \"12\"\n  storage:\n    size: 1Gi\n  vhosts: [x]\n");
    assert!(e.iter().any(|e| e.starts_with("spec.version: ")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("spec.vhosts: ")), "{e:?}");

    let e = errors(&format!(
        "{PG}  parameters:\n    port: \"5433\"\n  roles:\n    - name: a\n      inRoles: [missing]\n    - name: a\n  databases:\n    - name: d\n      owner: nobody\n"
    ));
    assert!(e.iter().any(|e| e.starts_with("spec.parameters.port: ")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("spec.roles[0].inRoles[0]: ")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("spec.roles[1].name: ")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("spec.databases[0].owner: ")), "{e:?}");

    let e =
        errors(&format!("{MQ}  users:\n    - name: admin\n    - name: x\n      permissions:\n        - vhost: nope\n"));
    assert!(e.iter().any(|e| e.starts_with("spec.users[0].name: ")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("spec.users[1].permissions[0].vhost: ")), "{e:?}");

    let e = errors("  engine: rabbitmq\n  version: \"3.12\"\n  storage:\n    size: 1Gi\n");
    assert!(e.iter().any(|e| e.starts_with("spec.version: ")), "{e:?}");
    assert!(valid("  engine: rabbitmq\n  version: \"4.1.2\"\n  storage:\n    size: 1Gi\n").major == 4);
    assert_eq!(valid("  engine: postgres\n  version: \"17.2\"\n  storage:\n    size: 1Gi\n").major, 17);
}

#[test]
fn existing_credentials_are_kept() {
    let v = valid(&format!("{PG}  roles:\n    - name: app\n    - name: other\n"));
    let old = Credentials {
        admin_password: "keep".into(),
        erlang_cookie: String::new(),
        user_passwords: [("app".to_string(), "keep-app".to_string())].into(),
        revision: None,
        previous_admin_password: None,
    };
    let (c, generated) = Credentials::complete(&v, Some(old));
    assert!(generated, "`other` had no password yet");
    assert_eq!(c.admin_password, "keep");
    assert_eq!(c.user_passwords["app"], "keep-app");
    assert!(c.user_passwords["other"].len() >= 32);
    let (again, generated) = Credentials::complete(&v, Some(c.clone()));
    assert!(!generated);
    assert_eq!(again, c);
}

#[test]
fn render_placeholders_are_not_secrets() {
    let v = valid(&format!("{PG}  roles:\n    - name: app\n"));
    let c = build(&v, &Credentials::placeholder(&v), "ops");
    assert_eq!(data(&c.credentials)["password"], PLACEHOLDER);
    assert_eq!(data(&c.user_secrets[0])["password"], PLACEHOLDER);
}

#[test]
fn credentials_round_trip_through_the_built_secrets_and_rotate() {
    let v = valid(&format!("{PG}  roles:\n    - name: app\n"));
    let (c, _) = Credentials::complete(&v, None);
    // What the API returns: stringData folded into data.
    let stored = |s: &Secret| {
        let mut s = s.clone();
        let data = s.string_data.take().unwrap();
        s.data = Some(data.into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes()))).collect());
        s
    };
    let children = build(&v, &c, "berth-system");
    let main = stored(&children.credentials);
    let users: Vec<Secret> = children.user_secrets.iter().map(stored).collect();
    let lookup = |name: &str| users.iter().find(|s| s.metadata.name.as_deref() == Some(name));
    let read = Credentials::from_secrets(&v, Some(&main), lookup, None).unwrap();
    assert_eq!(read, c);

    let rotated = c.rotated(&v, "2026-11-22");
    assert_ne!(rotated.admin_password, c.admin_password);
    assert_ne!(rotated.user_passwords["app"], c.user_passwords["app"]);
    assert_eq!(rotated.previous_admin_password.as_deref(), Some(c.admin_password.as_str()));
    let children = build(&v, &rotated, "berth-system");
    let main = stored(&children.credentials);
    assert_eq!(main.metadata.annotations.as_ref().unwrap()["berth.dev/credentials-revision"], "2026-11-22");
    let users: Vec<Secret> = children.user_secrets.iter().map(stored).collect();
    let lookup = |name: &str| users.iter().find(|s| s.metadata.name.as_deref() == Some(name));
    assert_eq!(Credentials::from_secrets(&v, Some(&main), lookup, None).unwrap(), rotated);
    assert!(Credentials::from_secrets(&v, None, |_| None, None).is_none());
}

#[test]
fn metrics_add_an_exporter_a_service_port_and_a_scrape_rule() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let v = valid(&format!("{PG}  metrics:\n    enabled: true\n"));
    let children = build(&v, &creds(&v), "berth-system");
    let pod = children.stateful_set.spec.unwrap().template.spec.unwrap();
    let exporter = pod.containers.iter().find(|c| c.name == "metrics").expect("exporter sidecar");
    assert_eq!(exporter.ports.as_ref().unwrap()[0].container_port, 9187);
    let pass = exporter.env.as_ref().unwrap().iter().find(|e| e.name == "DATA_SOURCE_PASS").unwrap();
    assert_eq!(pass.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "db-credentials");
    let ports = children.service.spec.unwrap().ports.unwrap();
    assert!(ports.iter().any(|p| p.name.as_deref() == Some("metrics") && p.port == 9187));
    let rules = children.network_policy.spec.unwrap().ingress.unwrap();
    let scrape = rules.last().unwrap();
    assert_eq!(scrape.ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(9187)));
    let ns = scrape.from.as_ref().unwrap()[0].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(ns["kubernetes.io/metadata.name"], "monitoring");
    // Clients are not admitted to the metrics port.
    assert!(rules[1].ports.as_ref().unwrap().iter().all(|p| p.port != Some(IntOrString::Int(9187))));

    let plain = valid(PG);
    let children = build(&plain, &creds(&plain), "berth-system");
    assert_eq!(children.stateful_set.spec.unwrap().template.spec.unwrap().containers.len(), 1);
    assert!(children.service.spec.unwrap().ports.unwrap().iter().all(|p| p.name.as_deref() != Some("metrics")));
}

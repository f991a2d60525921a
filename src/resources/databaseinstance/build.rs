//! Pure builders: a [`ValidDatabase`] plus its observed [`Credentials`] in, the children of the
//! DatabaseInstance out.
//!
//! Network access: the NetworkPolicy admits the instance's own pods (clustering), the
//! operator's namespace (provisioning), backup Jobs (pods labelled `berth.dev/role: backup`)
//! and pods labelled [`uses_label`] (`berth.dev/uses-<instance>: "true"`), which is the label
//! AppEnvironments that reference the instance put on their pods. Nothing else may connect.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    KeyToPath, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, Service, ServiceAccount,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::credentials::{Credentials, PREVIOUS_PASSWORD_KEY, REVISION_ANNOTATION};
use super::validate::{AMQP_PORT, MANAGEMENT_PORT, POSTGRES_PORT, ValidDatabase};
use crate::api::databaseinstance::{DatabaseInstance, DeletionPolicy};
use crate::resources::meta;
use crate::resources::meta::{restricted_container_context, typed};

/// Component label of database pods.
pub const COMPONENT: &str = "database";
/// Name of the server container.
pub const CONTAINER: &str = "server";
/// Name of the volume claim template (PVCs are `data-<name>-<ordinal>`).
pub const DATA_VOLUME: &str = "data";
/// Label of backup Job pods, admitted by the NetworkPolicy.
pub const BACKUP_ROLE_LABEL: (&str, &str) = ("berth.dev/role", "backup");
/// Prefix of the label that marks pods allowed to connect: `berth.dev/uses-<instance>`.
pub const USES_LABEL_PREFIX: &str = "berth.dev/uses-";
/// Pod annotation holding a hash of the configuration, so that a config change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "berth.dev/config-hash";
/// Default postgres_exporter image of the PostgreSQL metrics sidecar.
pub const POSTGRES_EXPORTER_IMAGE: &str = "quay.io/prometheuscommunity/postgres-exporter:v0.17.1";
/// Metrics ports: postgres_exporter and RabbitMQ's `rabbitmq_prometheus`.
pub const POSTGRES_METRICS_PORT: i32 = 9187;
pub const RABBITMQ_METRICS_PORT: i32 = 15692;
/// Default user and group of the official postgres and rabbitmq images.
const IMAGE_UID: i64 = 999;
const PGDATA_MOUNT: &str = "/var/lib/postgresql/data";
const RABBIT_DATA_MOUNT: &str = "/var/lib/rabbitmq";

/// The label key marking pods that may connect to the instance `name`.
pub fn uses_label(name: &str) -> String {
    format!("{USES_LABEL_PREFIX}{name}")
}

/// Every child of a DatabaseInstance; `None` for those the engine or size does not need. The
/// controller's applier destructures this without `..`, so a new child kind that is built but
/// never applied does not compile.
#[derive(Clone, Debug)]
pub struct DatabaseChildren {
    pub service_account: ServiceAccount,
    /// Read access to Endpoints for RabbitMQ's Kubernetes peer discovery (clusters only).
    pub role: Option<Role>,
    pub role_binding: Option<RoleBinding>,
    /// Connection credentials of the administrative user.
    pub credentials: Secret,
    /// One Secret per declared login role (PostgreSQL) or user (RabbitMQ).
    pub user_secrets: Vec<Secret>,
    /// RabbitMQ only: the Erlang cookie and the default-user config fragment.
    pub server_secret: Option<Secret>,
    pub config: ConfigMap,
    pub headless_service: Service,
    pub service: Service,
    pub stateful_set: StatefulSet,
    /// RabbitMQ clusters only.
    pub disruption_budget: Option<PodDisruptionBudget>,
    pub network_policy: NetworkPolicy,
}

impl DatabaseChildren {
    /// Every present child as JSON, in apply order (ServiceAccount, Role, RoleBinding,
    /// Secrets, ConfigMap, Services, StatefulSet, PodDisruptionBudget, NetworkPolicy).
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        let Self {
            service_account,
            role,
            role_binding,
            credentials,
            user_secrets,
            server_secret,
            config,
            headless_service,
            service,
            stateful_set,
            disruption_budget,
            network_policy,
        } = self;
        let mut out = vec![typed(service_account)];
        out.extend(role.as_ref().map(typed));
        out.extend(role_binding.as_ref().map(typed));
        out.push(typed(credentials));
        out.extend(user_secrets.iter().map(typed));
        out.extend(server_secret.as_ref().map(typed));
        out.push(typed(config));
        out.push(typed(headless_service));
        out.push(typed(service));
        out.push(typed(stateful_set));
        out.extend(disruption_budget.as_ref().map(typed));
        out.push(typed(network_policy));
        out
    }
}

/// Builds every child of `valid`. `operator_namespace` is admitted by the NetworkPolicy.
pub fn build(valid: &ValidDatabase, credentials: &Credentials, operator_namespace: &str) -> DatabaseChildren {
    let config = config_map(valid);
    let config_hash = blake3::hash(serde_json::to_string(&config.data).unwrap_or_default().as_bytes()).to_hex();
    DatabaseChildren {
        service_account: service_account(valid),
        role: role(valid),
        role_binding: role_binding(valid),
        credentials: credentials_secret(valid, credentials),
        user_secrets: user_secrets(valid, credentials),
        server_secret: server_secret(valid, credentials),
        config,
        headless_service: headless_service(valid),
        service: service(valid),
        stateful_set: stateful_set(valid, &config_hash.as_str()[..16]),
        disruption_budget: disruption_budget(valid),
        network_policy: network_policy(valid, operator_namespace),
    }
}

fn db(valid: &ValidDatabase) -> &DatabaseInstance {
    &valid.db
}

fn labels(valid: &ValidDatabase) -> BTreeMap<String, String> {
    let mut labels = meta::standard_labels(db(valid), COMPONENT);
    labels.insert("berth.dev/engine".into(), if valid.is_rabbitmq() { "rabbitmq" } else { "postgres" }.into());
    labels
}

fn selector_labels(valid: &ValidDatabase) -> BTreeMap<String, String> {
    meta::selector_labels(&valid.name(), COMPONENT)
}

fn selector(valid: &ValidDatabase) -> LabelSelector {
    LabelSelector { match_labels: Some(selector_labels(valid)), ..LabelSelector::default() }
}

fn child_meta(valid: &ValidDatabase, name: &str) -> ObjectMeta {
    meta::child_meta(db(valid), name, labels(valid))
}

fn service_account(valid: &ValidDatabase) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(valid, &valid.name()),
        // Only RabbitMQ's peer discovery talks to the API server.
        automount_service_account_token: Some(valid.is_cluster()),
        ..ServiceAccount::default()
    }
}

fn role(valid: &ValidDatabase) -> Option<Role> {
    valid.is_cluster().then(|| Role {
        metadata: child_meta(valid, &format!("{}-peer-discovery", valid.name())),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["endpoints".into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
    })
}

fn role_binding(valid: &ValidDatabase) -> Option<RoleBinding> {
    let name = format!("{}-peer-discovery", valid.name());
    valid.is_cluster().then(|| RoleBinding {
        metadata: child_meta(valid, &name),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: valid.name(),
            namespace: Some(valid.namespace()),
            ..Subject::default()
        }]),
    })
}

/// Percent-encodes everything but unreserved URI characters (RFC 3986).
fn uri_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The keys of a connection Secret, as CloudNativePG (`…-app`) and the RabbitMQ cluster
/// operator (`…-default-user`) name them.
fn connection_data(valid: &ValidDatabase, user: &str, password: &str, target: &str) -> BTreeMap<String, String> {
    let host = valid.host();
    let port = valid.port();
    let (u, p) = (uri_escape(user), uri_escape(password));
    let mut data = BTreeMap::from([
        ("username".to_string(), user.to_string()),
        ("password".to_string(), password.to_string()),
        ("host".to_string(), host.clone()),
        ("port".to_string(), port.to_string()),
    ]);
    if valid.is_rabbitmq() {
        data.insert("uri".into(), format!("amqp://{u}:{p}@{host}:{port}/{}", uri_escape(target)));
    } else {
        let db = uri_escape(target);
        data.insert("dbname".into(), target.to_string());
        data.insert("uri".into(), format!("postgresql://{u}:{p}@{host}:{port}/{db}"));
        data.insert("jdbc-uri".into(), format!("jdbc:postgresql://{host}:{port}/{db}?user={u}&password={p}"));
    }
    data
}

fn secret(valid: &ValidDatabase, name: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: child_meta(valid, name),
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Secret::default()
    }
}

fn credentials_secret(valid: &ValidDatabase, credentials: &Credentials) -> Secret {
    let target = if valid.is_rabbitmq() { "/" } else { "postgres" };
    let mut data = connection_data(valid, valid.admin_user(), &credentials.admin_password, target);
    if let Some(previous) = &credentials.previous_admin_password {
        data.insert(PREVIOUS_PASSWORD_KEY.into(), previous.clone());
    }
    with_revision(secret(valid, &valid.secret_name(), data), credentials)
}

/// Marks a Secret with the rotation its passwords answer.
fn with_revision(mut secret: Secret, credentials: &Credentials) -> Secret {
    if let Some(revision) = &credentials.revision {
        secret.metadata.annotations.get_or_insert_default().insert(REVISION_ANNOTATION.into(), revision.clone());
    }
    secret
}

fn user_secrets(valid: &ValidDatabase, credentials: &Credentials) -> Vec<Secret> {
    valid
        .login_users()
        .map(|user| {
            let password = credentials.user_passwords.get(user).map(String::as_str).unwrap_or_default();
            // The database a role connects to: the first it owns, else the first declared one.
            let target = if valid.is_rabbitmq() {
                let u = valid.users.iter().find(|u| u.name == user);
                u.and_then(|u| u.permissions.first()).map(|p| p.vhost.clone()).unwrap_or_else(|| "/".into())
            } else {
                valid
                    .databases
                    .iter()
                    .find(|d| d.owner.as_deref() == Some(user))
                    .or(valid.databases.first())
                    .map(|d| d.name.clone())
                    .unwrap_or_else(|| "postgres".into())
            };
            let data = connection_data(valid, user, password, &target);
            with_revision(secret(valid, &valid.user_secret_name(user), data), credentials)
        })
        .collect()
}

fn server_secret(valid: &ValidDatabase, credentials: &Credentials) -> Option<Secret> {
    valid.is_rabbitmq().then(|| {
        let data = BTreeMap::from([
            ("erlang-cookie".to_string(), credentials.erlang_cookie.clone()),
            (
                "default-user.conf".to_string(),
                format!("default_user = {}\ndefault_pass = {}\n", valid.admin_user(), credentials.admin_password),
            ),
        ]);
        secret(valid, &format!("{}-server", valid.name()), data)
    })
}

/// Name of the ConfigMap and the config file keys in it.
fn config_name(valid: &ValidDatabase) -> String {
    format!("{}-config", valid.name())
}

/// Quotes a postgresql.conf value: single quotes, with `'` and `\` escaped.
fn pg_conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

fn config_map(valid: &ValidDatabase) -> ConfigMap {
    let spec = &db(valid).spec;
    let data = if valid.is_rabbitmq() {
        let mut conf = vec![
            "# Managed by Berth: spec.config of the DatabaseInstance, after the operator's settings.".to_string(),
            format!("listeners.tcp.default = {AMQP_PORT}"),
            format!("management.tcp.port = {MANAGEMENT_PORT}"),
            "loopback_users.guest = true".into(),
        ];
        if valid.is_cluster() {
            conf.push("cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s".into());
            // RabbitMQ 4 derives the seed node (`<name>-0`) from the node name and no longer
            // asks the API server; 3.13 lists the Endpoints of the headless Service.
            if valid.major < 4 {
                conf.extend([
                    "cluster_formation.k8s.host = kubernetes.default".into(),
                    "cluster_formation.k8s.address_type = hostname".into(),
                    format!("cluster_formation.k8s.service_name = {}", valid.headless_name()),
                    format!(
                        "cluster_formation.k8s.hostname_suffix = .{}.{}.svc",
                        valid.headless_name(),
                        valid.namespace()
                    ),
                    "cluster_formation.node_cleanup.only_log_warning = true".into(),
                ]);
            }
            conf.push("cluster_partition_handling = pause_minority".into());
        }
        conf.extend(spec.config.iter().map(|(k, v)| format!("{k} = {v}")));
        let plugins = if valid.is_cluster() {
            "[rabbitmq_management,rabbitmq_prometheus,rabbitmq_peer_discovery_k8s].\n"
        } else {
            "[rabbitmq_management,rabbitmq_prometheus].\n"
        };
        BTreeMap::from([
            ("10-berth.conf".to_string(), conf.join("\n") + "\n"),
            ("enabled_plugins".to_string(), plugins.to_string()),
        ])
    } else {
        let mut conf = vec![
            "# Managed by Berth: spec.parameters of the DatabaseInstance, after the operator's settings.".to_string(),
            "listen_addresses = '*'".into(),
            format!("port = {POSTGRES_PORT}"),
        ];
        conf.extend(spec.parameters.iter().map(|(k, v)| format!("{k} = {}", pg_conf_value(v))));
        BTreeMap::from([("postgresql.conf".to_string(), conf.join("\n") + "\n")])
    };
    ConfigMap { metadata: child_meta(valid, &config_name(valid)), data: Some(data), ..ConfigMap::default() }
}

/// The metrics port when metrics are enabled, and the namespace allowed to scrape it.
fn metrics(valid: &ValidDatabase) -> Option<(i32, String)> {
    let m = db(valid).spec.metrics.as_ref().filter(|m| m.enabled)?;
    let port = if valid.is_rabbitmq() { RABBITMQ_METRICS_PORT } else { POSTGRES_METRICS_PORT };
    Some((port, m.scraper_namespace.clone().unwrap_or_else(|| "monitoring".into())))
}

fn service_ports(valid: &ValidDatabase, peers: bool) -> Vec<ServicePort> {
    let port = |name: &str, p: i32| ServicePort {
        name: Some(name.into()),
        port: p,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    let mut ports = if valid.is_rabbitmq() {
        let mut ports = vec![port("amqp", AMQP_PORT), port("management", MANAGEMENT_PORT)];
        if peers {
            ports.extend([port("epmd", 4369), port("clustering", 25672)]);
        }
        ports
    } else {
        vec![port("postgres", POSTGRES_PORT)]
    };
    if let Some((p, _)) = metrics(valid) {
        ports.push(port("metrics", p));
    }
    ports
}

fn headless_service(valid: &ValidDatabase) -> Service {
    Service {
        metadata: child_meta(valid, &valid.headless_name()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must resolve each other before they are ready (cluster formation).
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(valid)),
            ports: Some(service_ports(valid, true)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn service(valid: &ValidDatabase) -> Service {
    Service {
        metadata: child_meta(valid, &valid.name()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(valid)),
            ports: Some(service_ports(valid, false)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn exec_probe(command: &[&str], period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction { command: Some(command.iter().map(|s| s.to_string()).collect()) }),
        period_seconds: Some(period),
        timeout_seconds: Some(10),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The postgres_exporter sidecar (PostgreSQL with metrics enabled); it logs in as the
/// administrative user over the pod's loopback. RabbitMQ serves metrics itself.
fn exporter_container(valid: &ValidDatabase) -> Option<Container> {
    let (port, _) = metrics(valid)?;
    if valid.is_rabbitmq() {
        return None;
    }
    let image = db(valid).spec.metrics.as_ref().and_then(|m| m.exporter_image.clone());
    let secret = valid.secret_name();
    Some(Container {
        name: "metrics".into(),
        image: Some(image.unwrap_or_else(|| POSTGRES_EXPORTER_IMAGE.into())),
        env: Some(vec![
            env("DATA_SOURCE_URI", &format!("127.0.0.1:{POSTGRES_PORT}/postgres?sslmode=disable")),
            env_from_secret("DATA_SOURCE_USER", &secret, "username"),
            env_from_secret("DATA_SOURCE_PASS", &secret, "password"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("64Mi".into()))])),
            ..Default::default()
        }),
        security_context: Some(restricted_container_context()),
        ..Container::default()
    })
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_from_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}

/// The server container and the pod volumes it needs (besides the claim template).
fn server_container(valid: &ValidDatabase) -> (Container, Vec<Volume>) {
    let spec = &db(valid).spec;
    let config_volume = Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource { name: config_name(valid), ..ConfigMapVolumeSource::default() }),
        ..Volume::default()
    };
    let container_port = |name: &str, p: i32| ContainerPort {
        name: Some(name.into()),
        container_port: p,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let security = restricted_container_context();
    let base = Container {
        name: CONTAINER.into(),
        image: Some(valid.image.clone()),
        resources: spec.resources.clone(),
        security_context: Some(security),
        ..Container::default()
    };
    if valid.is_rabbitmq() {
        let server_secret = format!("{}-server", valid.name());
        let mut vars = vec![
            env_from_field("MY_POD_NAME", "metadata.name"),
            env("RABBITMQ_CONFIG_FILES", "/etc/rabbitmq/conf.d"),
            env("RABBITMQ_ENABLED_PLUGINS_FILE", "/etc/rabbitmq/conf.d/enabled_plugins"),
            env_from_secret("RABBITMQ_ERLANG_COOKIE", &server_secret, "erlang-cookie"),
        ];
        if valid.is_cluster() {
            vars.extend([
                env("RABBITMQ_USE_LONGNAME", "true"),
                env(
                    "RABBITMQ_NODENAME",
                    &format!("rabbit@$(MY_POD_NAME).{}.{}.svc", valid.headless_name(), valid.namespace()),
                ),
                env("K8S_SERVICE_NAME", &valid.headless_name()),
            ]);
        }
        let secret_volume = Volume {
            name: "default-user".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(server_secret),
                items: Some(vec![KeyToPath {
                    key: "default-user.conf".into(),
                    path: "20-default-user.conf".into(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        };
        let container = Container {
            env: Some(vars),
            ports: Some(vec![
                container_port("amqp", AMQP_PORT),
                container_port("management", MANAGEMENT_PORT),
                container_port("metrics", RABBITMQ_METRICS_PORT),
                container_port("epmd", 4369),
                container_port("clustering", 25672),
            ]),
            startup_probe: Some(exec_probe(&["rabbitmq-diagnostics", "-q", "ping"], 10, 30)),
            liveness_probe: Some(exec_probe(&["rabbitmq-diagnostics", "-q", "ping"], 30, 6)),
            readiness_probe: Some(exec_probe(&["rabbitmq-diagnostics", "-q", "check_port_connectivity"], 10, 3)),
            volume_mounts: Some(vec![
                mount(DATA_VOLUME, RABBIT_DATA_MOUNT, false),
                mount("config", "/etc/rabbitmq/conf.d/10-berth.conf", true),
                mount("default-user", "/etc/rabbitmq/conf.d/20-default-user.conf", true),
                mount("tmp", "/tmp", false),
            ]),
            ..base
        };
        // The ConfigMap's files are mounted one by one (subPath) so that both config sources
        // share /etc/rabbitmq/conf.d.
        let mut container = container;
        if let Some(mounts) = container.volume_mounts.as_mut() {
            mounts[1].sub_path = Some("10-berth.conf".into());
            mounts[2].sub_path = Some("20-default-user.conf".into());
            mounts.push(VolumeMount {
                name: "config".into(),
                mount_path: "/etc/rabbitmq/conf.d/enabled_plugins".into(),
                sub_path: Some("enabled_plugins".into()),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        (container, vec![config_volume, secret_volume, empty_dir("tmp")])
    } else {
        let ready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres"];
        let container = Container {
            args: Some(vec!["-c".into(), "config_file=/etc/berth/postgresql.conf".into()]),
            env: Some(vec![
                env("PGDATA", &format!("{PGDATA_MOUNT}/pgdata")),
                env("POSTGRES_USER", valid.admin_user()),
                env_from_secret("POSTGRES_PASSWORD", &valid.secret_name(), "password"),
            ]),
            ports: Some(vec![container_port("postgres", POSTGRES_PORT)]),
            // initdb of a large volume can take a while: the startup probe allows 10 minutes.
            startup_probe: Some(exec_probe(&ready, 10, 60)),
            liveness_probe: Some(exec_probe(&ready, 30, 6)),
            readiness_probe: Some(exec_probe(&ready, 10, 3)),
            volume_mounts: Some(vec![
                mount(DATA_VOLUME, PGDATA_MOUNT, false),
                mount("config", "/etc/berth", true),
                mount("run", "/var/run/postgresql", false),
                mount("tmp", "/tmp", false),
            ]),
            ..base
        };
        (container, vec![config_volume, empty_dir("run"), empty_dir("tmp")])
    }
}

fn stateful_set(valid: &ValidDatabase, config_hash: &str) -> StatefulSet {
    let spec = &db(valid).spec;
    let (container, volumes) = server_container(valid);
    let mut pod_labels = labels(valid);
    if let Some(v) = meta::label_value(&valid.version) {
        pod_labels.insert("app.kubernetes.io/version".into(), v);
    }
    let retention = match valid.deletion_policy {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete => "Delete",
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(valid)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(spec.storage.size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: child_meta(valid, &valid.name()),
        spec: Some(StatefulSetSpec {
            replicas: Some(valid.replicas),
            service_name: Some(valid.headless_name()),
            selector: selector(valid),
            // RabbitMQ nodes must start together to form (or re-form) a cluster.
            pod_management_policy: Some(if valid.is_rabbitmq() { "Parallel" } else { "OrderedReady" }.into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(retention.into()),
                // Scale-down is refused for RabbitMQ and PostgreSQL has one replica: keep data.
                when_scaled: Some("Retain".into()),
            }),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(valid.name()),
                    automount_service_account_token: Some(valid.is_cluster()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(IMAGE_UID),
                        run_as_group: Some(IMAGE_UID),
                        fs_group: Some(IMAGE_UID),
                        fs_group_change_policy: Some("OnRootMismatch".into()),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(if valid.is_rabbitmq() { 600 } else { 60 }),
                    containers: std::iter::once(container).chain(exporter_container(valid)).collect(),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn disruption_budget(valid: &ValidDatabase) -> Option<PodDisruptionBudget> {
    valid.is_cluster().then(|| PodDisruptionBudget {
        metadata: child_meta(valid, &valid.name()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(valid)),
            // A quorum survives one node down at a time.
            max_unavailable: Some(IntOrString::Int(1)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

fn network_policy(valid: &ValidDatabase, operator_namespace: &str) -> NetworkPolicy {
    let pods = |labels: BTreeMap<String, String>| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }),
        ..NetworkPolicyPeer::default()
    };
    let metrics = metrics(valid);
    let client_ports: Vec<NetworkPolicyPort> = service_ports(valid, false)
        .into_iter()
        .filter(|p| metrics.as_ref().is_none_or(|(m, _)| p.port != *m))
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(p.port)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        })
        .collect();
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                operator_namespace.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let rules = vec![
        // Peers of the same instance (RabbitMQ clustering), on every port.
        NetworkPolicyIngressRule {
            from: Some(vec![pods(selector_labels(valid))]),
            ..NetworkPolicyIngressRule::default()
        },
        NetworkPolicyIngressRule {
            from: Some(vec![
                operator,
                pods(BTreeMap::from([(BACKUP_ROLE_LABEL.0.to_string(), BACKUP_ROLE_LABEL.1.to_string())])),
                pods(BTreeMap::from([(uses_label(&valid.name()), "true".to_string())])),
            ]),
            ports: Some(client_ports),
        },
    ];
    let mut rules = rules;
    if let Some((port, scraper)) = metrics {
        rules.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_string(), scraper)])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            }]),
        });
    }
    NetworkPolicy {
        metadata: child_meta(valid, &valid.name()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(valid)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

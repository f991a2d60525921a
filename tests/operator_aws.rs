//! The AWS platform pieces of issue 18, end to end: the real `berth operator` (as the chart's
//! ServiceAccount with only the chart's RBAC) on the real control plane (tests/support/cluster).
//! external-dns annotations on the Ingress; a team's access to its own app checked with
//! `kubectl auth can-i --as` (the API server's own RBAC authorizer, through impersonation);
//! secrets from AWS through ExternalSecrets, against a CRD written from the External Secrets
//! documentation (tests/fixtures/cluster/), with this test in the External Secrets Operator's
//! part: it fills the target Secret and sets the ExternalSecret's Ready condition.

use crate::support;

use std::time::Duration;

use berth::api::AppEnvironment;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::cluster::Cluster;
use support::external_secrets::{self, fill, set_ready};
use support::kubectl::Kubectl;
use support::objects::repo;
use support::operator::Operator;
use support::wait::eventually;

/// The app once its status for the current generation has Ready with `status` and `reason`.
async fn wait_ready(api: &Api<AppEnvironment>, name: &str, status: &str, reason: &str) -> String {
    eventually(&format!("{name} Ready={status} {reason}"), Duration::from_secs(90), || async {
        let app = api.get(name).await.ok()?;
        let s = app.status.as_ref()?;
        let c = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (s.observed_generation == app.metadata.generation && c.status == status && c.reason == reason)
            .then(|| c.message.clone())
    })
    .await
}

const SHOP: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: AppEnvironment
metadata:
  name: shop
  namespace: shop
spec:
  tier: production
  image: example.com/shop:1
  envFrom:
  - secretRef:
      name: shop-env
  volumes:
  - name: config
    mountPath: /etc/shop
    configMap:
      name: shop-config
  workers:
  - name: mailer
    args: [mailer]
  ingress:
    hosts: [shop.example.com, www.shop.example.com]
    dns:
      hostnames: [shop.example.com]
      target: k8s-shared-0123456789.eu-west-1.elb.amazonaws.com
      alias: true
  access:
  - level: view
    groups: [shop-viewers]
  - level: edit
    users: [erin]
  - level: operate
    groups: [shop-oncall]
    exec: true
  - level: operate
    users: [otto]
"#;

const BILLING: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: AppEnvironment
metadata:
  name: billing
  namespace: shop
spec:
  tier: staging
  image: example.com/billing:1
  envFrom:
  - secretRef:
      name: billing-env
  volumes:
  - name: config
    mountPath: /etc/billing
    configMap:
      name: billing-config
  ingress:
    hosts: [billing.example.com]
    dns: {}
  access:
  - level: operate
    groups: [billing-team]
"#;

/// `kubectl auth can-i` as `who` (`user` or `user:group`) in namespace shop: the API server's
/// RBAC authorizer answers for the impersonated identity.
fn can(kubectl: &Kubectl, who: &str, args: &[&str]) -> bool {
    let (user, group) = who.split_once(':').unwrap_or((who, ""));
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-n", "shop", "--as", user]);
    if !group.is_empty() {
        full.extend_from_slice(&["--as-group", group]);
    }
    let out = kubectl.run(&full);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {}: {other:?}", full.join(" ")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_dns_annotations_and_team_access_scoped_to_the_app() {
    let cluster = Cluster::start_control_plane().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    cluster.namespace("shop").await;
    let client = cluster.client();
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--resync-seconds", "2"]);
    operator.wait_ready(Duration::from_secs(60));
    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "shop");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "shop");
    let roles: Api<Role> = Api::namespaced(client.clone(), "shop");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), "shop");

    // A published name the Ingress does not route is refused, naming the field and the fix.
    let mut bad: AppEnvironment = serde_saphyr::from_str(BILLING).unwrap();
    bad.metadata.name = Some("bad".into());
    bad.spec.access.clear();
    bad.spec.ingress.as_mut().unwrap().dns.as_mut().unwrap().hostnames = vec!["shop.example.com".into()];
    apps.create(&PostParams::default(), &bad).await.unwrap();
    let message = wait_ready(&apps, "bad", "False", "InvalidSpec").await;
    assert!(
        message.contains("spec.ingress.dns.hostnames[0]: \"shop.example.com\" is not one of spec.ingress.hosts (billing.example.com); add it there or remove it here"),
        "{message}"
    );
    assert!(ingresses.get_opt("bad").await.unwrap().is_none());

    for app in [SHOP, BILLING] {
        apps.create(&PostParams::default(), &serde_saphyr::from_str(app).unwrap()).await.unwrap();
    }
    // external-dns: the name, the production TTL default, the load balancer as an alias target.
    let annotations = |ing: &Ingress| ing.metadata.annotations.clone().unwrap_or_default();
    let shop = eventually("the Ingress of shop", Duration::from_secs(60), || async {
        ingresses.get_opt("shop").await.ok().flatten()
    })
    .await;
    let a = annotations(&shop);
    assert_eq!(a["external-dns.alpha.kubernetes.io/hostname"], "shop.example.com");
    assert_eq!(a["external-dns.alpha.kubernetes.io/ttl"], "300");
    assert_eq!(a["external-dns.alpha.kubernetes.io/target"], "k8s-shared-0123456789.eu-west-1.elb.amazonaws.com");
    assert_eq!(a["external-dns.alpha.kubernetes.io/alias"], "true");
    // Defaults: every host, the staging TTL, no target or alias.
    let billing = eventually("the Ingress of billing", Duration::from_secs(60), || async {
        ingresses.get_opt("billing").await.ok().flatten()
    })
    .await;
    let b = annotations(&billing);
    assert_eq!(b["external-dns.alpha.kubernetes.io/hostname"], "billing.example.com");
    assert_eq!(b["external-dns.alpha.kubernetes.io/ttl"], "60");
    assert!(
        !b.contains_key("external-dns.alpha.kubernetes.io/target")
            && !b.contains_key("external-dns.alpha.kubernetes.io/alias")
    );

    // Access: a Role per level and its bindings, written by the operator with the chart's RBAC.
    for name in ["shop-access-view", "shop-access-edit", "shop-access-operate", "billing-access-operate"] {
        eventually(&format!("Role {name}"), Duration::from_secs(60), || async {
            roles.get_opt(name).await.ok().flatten()
        })
        .await;
    }
    for name in ["shop-access-pods", "shop-access-operate-namespace", "shop-access-exec", "billing-access-pods"] {
        eventually(&format!("RoleBinding {name}"), Duration::from_secs(60), || async {
            bindings.get_opt(name).await.ok().flatten()
        })
        .await;
    }

    let kubectl = Kubectl::new(cluster.kubeconfig_path());
    let viewer = "vera:shop-viewers";
    let editor = "erin";
    let oncall = "olga:shop-oncall";
    let operator_without_exec = "otto";
    // (who, can-i arguments, allowed)
    let expectations: &[(&str, &[&str], bool)] = &[
        // view: the app's named objects, read only; the namespace's pods; no Secrets.
        (viewer, &["get", "appenvironments.berth.dev/shop"], true),
        (viewer, &["watch", "appenvironments.berth.dev/shop"], true),
        (viewer, &["get", "deployments/shop"], true),
        (viewer, &["get", "deployments/shop-mailer"], true),
        (viewer, &["get", "services/shop"], true),
        (viewer, &["get", "ingresses/shop"], true),
        (viewer, &["get", "horizontalpodautoscalers/shop"], true),
        (viewer, &["get", "poddisruptionbudgets/shop"], true),
        (viewer, &["get", "configmaps/shop-config"], true),
        (viewer, &["list", "pods"], true),
        (viewer, &["patch", "deployments/shop"], false),
        (viewer, &["patch", "appenvironments.berth.dev/shop"], false),
        (viewer, &["get", "secrets/shop-env"], false),
        (viewer, &["get", "pods", "--subresource=log"], false),
        (viewer, &["create", "backups.berth.dev"], false),
        (viewer, &["list", "deployments"], false),
        (viewer, &["get", "deployments/billing"], false),
        (viewer, &["get", "appenvironments.berth.dev/billing"], false),
        (viewer, &["get", "configmaps/billing-config"], false),
        // edit: change and delete the app's own objects, its ConfigMaps and Secrets.
        (editor, &["patch", "appenvironments.berth.dev/shop"], true),
        (editor, &["patch", "deployments/shop"], true),
        (editor, &["delete", "services/shop"], true),
        (editor, &["patch", "ingresses/shop"], true),
        (editor, &["get", "secrets/shop-env"], true),
        (editor, &["patch", "secrets/shop-env"], true),
        (editor, &["delete", "configmaps/shop-config"], true),
        (editor, &["list", "pods"], true),
        // Berth holds neither, so it grants neither (README, "Team access").
        (editor, &["update", "appenvironments.berth.dev/shop"], false),
        (editor, &["delete", "appenvironments.berth.dev/shop"], false),
        (editor, &["get", "pods", "--subresource=log"], false),
        (editor, &["create", "restores.berth.dev"], false),
        (editor, &["list", "secrets"], false),
        (editor, &["create", "secrets"], false),
        (editor, &["get", "secrets/billing-env"], false),
        (editor, &["patch", "deployments/billing"], false),
        (editor, &["patch", "appenvironments.berth.dev/billing"], false),
        // operate: edit, logs, rollout restart, backups and restores; exec only when asked.
        (oncall, &["patch", "deployments/shop"], true),
        (oncall, &["get", "pods", "--subresource=log"], true),
        (oncall, &["create", "backups.berth.dev"], true),
        (oncall, &["create", "restores.berth.dev"], true),
        (oncall, &["get", "backups.berth.dev"], true),
        (oncall, &["create", "pods", "--subresource=exec"], true),
        (oncall, &["delete", "backups.berth.dev"], false),
        (oncall, &["delete", "pods"], false),
        (oncall, &["get", "secrets/billing-env"], false),
        (oncall, &["patch", "deployments/billing"], false),
        (operator_without_exec, &["get", "pods", "--subresource=log"], true),
        (operator_without_exec, &["create", "pods", "--subresource=exec"], false),
        // Nothing cluster-wide, nothing in another namespace.
        (oncall, &["list", "namespaces"], false),
        (oncall, &["list", "pods", "--all-namespaces"], false),
        // The neighbour's team has the same on billing, and nothing on shop.
        ("bill:billing-team", &["patch", "deployments/billing"], true),
        ("bill:billing-team", &["get", "secrets/billing-env"], true),
        ("bill:billing-team", &["get", "deployments/shop"], false),
        ("bill:billing-team", &["get", "secrets/shop-env"], false),
    ];
    let wrong: Vec<String> = expectations
        .iter()
        .filter(|(who, args, allowed)| can(&kubectl, who, args) != *allowed)
        .map(|(who, args, allowed)| {
            format!("{who} {}: expected {}", args.join(" "), if *allowed { "yes" } else { "no" })
        })
        .collect();
    assert!(wrong.is_empty(), "access differs from the levels:\n{}", wrong.join("\n"));
    // A namespaced check in another namespace (created so the API server knows it).
    cluster.namespace("other").await;
    let out =
        kubectl.run(&["auth", "can-i", "list", "pods", "-n", "other", "--as", "olga", "--as-group", "shop-oncall"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    // Dropping the edit entry removes its Role and binding; the others stay.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!([{"op": "remove", "path": "/spec/access/1"}])).unwrap()),
    )
    .await
    .unwrap();
    eventually("Role shop-access-edit deleted", Duration::from_secs(60), || async {
        roles.get_opt("shop-access-edit").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(bindings.get_opt("shop-access-edit").await.unwrap().is_none());
    assert!(roles.get_opt("shop-access-view").await.unwrap().is_some());
    assert!(!can(&kubectl, editor, &["patch", "deployments/shop"]));

    // The operator never needed more than the chart grants.
    cluster.assert_clean().await;
    let listed = bindings.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().all(|b| b.role_ref.kind == "Role" || b.role_ref.name.starts_with("berth-access-")));
}

const SECRETS_APP: &str = r#"
apiVersion: berth.dev/v1alpha1
kind: AppEnvironment
metadata:
  name: shop
  namespace: shop
spec:
  tier: development
  image: example.com/shop:1
  env:
  - name: STRIPE_KEY
    value: from-the-spec
  externalSecrets:
  - name: db
    store:
      name: aws-secrets-manager
      kind: ClusterSecretStore
    env: true
    data:
    - key: DB_PASSWORD
      remoteKey: prod/shop/db
      property: password
      version: AWSCURRENT
    - key: STRIPE_KEY
      remoteKey: prod/shop/stripe
  - name: certs
    store:
      name: shop-parameters
    refreshInterval: 15m
    mountPath: /etc/shop/certs
    data:
    - key: client.pem
      remoteKey: /shop/prod/client-cert
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_secrets_are_created_awaited_and_injected() {
    let cluster = Cluster::start().await;
    cluster.install_crds_from_dir(&repo().join("crds")).await;
    external_secrets::install_crd(&cluster).await;
    cluster.namespace("shop").await;
    let client = cluster.client();
    let kubeconfig = cluster.operator_kubeconfig(&[]).await;
    let mut operator = Operator::start(&kubeconfig, &["--resync-seconds", "2"]);
    operator.wait_ready(Duration::from_secs(60));
    let apps: Api<AppEnvironment> = Api::namespaced(client.clone(), "shop");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let es_api = external_secrets::api(&client, "shop");

    apps.create(&PostParams::default(), &serde_saphyr::from_str(SECRETS_APP).unwrap()).await.unwrap();
    // The ExternalSecrets as the CRD's schema accepted them (defaults of the fixture applied).
    let db = eventually("ExternalSecret shop-db", Duration::from_secs(60), || async {
        es_api.get_opt("shop-db").await.ok().flatten()
    })
    .await;
    let spec = &db.data["spec"];
    assert_eq!(spec["secretStoreRef"], json!({"name": "aws-secrets-manager", "kind": "ClusterSecretStore"}));
    assert_eq!(spec["target"]["name"], "shop-db");
    assert_eq!(spec["target"]["creationPolicy"], "Owner");
    assert_eq!(spec["refreshInterval"], "1h");
    assert_eq!(spec["data"][0]["secretKey"], "DB_PASSWORD");
    assert_eq!(spec["data"][0]["remoteRef"]["key"], "prod/shop/db");
    assert_eq!(spec["data"][0]["remoteRef"]["property"], "password");
    assert_eq!(spec["data"][0]["remoteRef"]["version"], "AWSCURRENT");
    assert_eq!(db.metadata.owner_references.as_ref().unwrap()[0].kind, "AppEnvironment");
    // Each entry's ExternalSecret is its own apply: the second may land a moment after the first.
    let certs = eventually("ExternalSecret shop-certs", Duration::from_secs(60), || async {
        es_api.get_opt("shop-certs").await.ok().flatten()
    })
    .await;
    assert_eq!(certs.data["spec"]["secretStoreRef"]["kind"], "SecretStore");
    assert_eq!(certs.data["spec"]["refreshInterval"], "15m");

    // Not synced yet: no Deployment (its pods could not start), and the app says why.
    let message = wait_ready(&apps, "shop", "False", "ExternalSecretNotReady").await;
    assert!(message.contains("ExternalSecret shop-db has not been synced yet"), "{message}");
    assert!(deployments.get_opt("shop").await.unwrap().is_none());
    // The External Secrets Operator fails: its own message is the app's.
    let denied = "could not get secret data from provider: AccessDeniedException: not authorized to perform secretsmanager:GetSecretValue";
    set_ready(&es_api, "shop-db", false, "SecretSyncedError", denied).await;
    eventually("the provider's error in the app's status", Duration::from_secs(60), || async {
        let app = apps.get("shop").await.ok()?;
        let c = app.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        c.message
            .contains(&format!(
                "spec.externalSecrets[0]: ExternalSecret shop-db is not synced (SecretSyncedError): {denied}"
            ))
            .then_some(())
    })
    .await;
    assert!(deployments.get_opt("shop").await.unwrap().is_none());

    // Synced: the Deployment references the Secrets, the app becomes ready.
    fill(&client, &db, json!({"DB_PASSWORD": "s3cr3t", "STRIPE_KEY": "sk_live"})).await;
    set_ready(&es_api, "shop-db", true, "SecretSynced", "secret synced").await;
    fill(&client, &certs, json!({"client.pem": "-----BEGIN CERTIFICATE-----"})).await;
    set_ready(&es_api, "shop-certs", true, "SecretSynced", "secret synced").await;
    wait_ready(&apps, "shop", "True", "Available").await;
    let deployment = deployments.get("shop").await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    // Each variable as `NAME=value` or `NAME<-secret/key`.
    let env: Vec<String> = container
        .env
        .iter()
        .flatten()
        .map(|e| match e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()) {
            Some(r) => format!("{}<-{}/{}", e.name, r.name, r.key),
            None => format!("{}={}", e.name, e.value.clone().unwrap_or_default()),
        })
        .collect();
    // STRIPE_KEY stays the spec's value; DB_PASSWORD comes from the synced Secret.
    assert_eq!(env, ["STRIPE_KEY=from-the-spec", "DB_PASSWORD<-shop-db/DB_PASSWORD"]);
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "external-certs").expect("the certs volume");
    assert_eq!(volume.secret.as_ref().unwrap().secret_name.as_deref(), Some("shop-certs"));
    let mount = container.volume_mounts.iter().flatten().find(|m| m.name == "external-certs").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/etc/shop/certs", Some(true)));

    // A later failed refresh: the Secret still exists, the pods keep running; the app is not
    // Ready and says why.
    set_ready(&es_api, "shop-db", false, "SecretSyncedError", denied).await;
    let message = wait_ready(&apps, "shop", "False", "ExternalSecretNotReady").await;
    assert!(message.contains(denied), "{message}");
    assert!(deployments.get_opt("shop").await.unwrap().is_some());

    // Removing an entry deletes its ExternalSecret (and, through its owner, the Secret).
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/spec/externalSecrets/1"}])).unwrap(),
        ),
    )
    .await
    .unwrap();
    eventually("ExternalSecret shop-certs deleted", Duration::from_secs(60), || async {
        es_api.get_opt("shop-certs").await.unwrap().is_none().then_some(())
    })
    .await;
    cluster.assert_clean().await;
}

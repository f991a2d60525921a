//! Provisioning against a real RabbitMQ (Debian's `rabbitmq-server`, management plugin) on
//! loopback ports: vhosts, users and permissions are created, a second run changes nothing,
//! password rotation changes what the server accepts, and only `reclaimPolicy: Delete` users
//! are deleted when they leave the spec.

use crate::support;

use std::collections::BTreeMap;

use berth::api::databaseinstance::{DeletionPolicy, RabbitPermission, RabbitUser};
use berth::provision::{Target, rabbitmq};
use support::servers::RabbitMq;

fn user(name: &str, tags: &[&str], vhosts: &[&str], reclaim: Option<DeletionPolicy>) -> RabbitUser {
    RabbitUser {
        name: name.into(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
        permissions: vhosts
            .iter()
            .map(|v| RabbitPermission {
                vhost: v.to_string(),
                configure: None,
                write: Some("^orders\\.".into()),
                read: None,
            })
            .collect(),
        reclaim_policy: reclaim,
    }
}

/// Status of an authenticated management call as `user` (200: accepted, 401: refused). The
/// user needs the `management` tag to use the API at all.
async fn whoami(mq: &RabbitMq, user: &str, password: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/whoami", mq.mgmt_port))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("management API answers")
        .status()
        .as_u16()
}

#[tokio::test]
async fn vhosts_users_permissions_converge_and_passwords_rotate() {
    let mq = RabbitMq::start();
    let target =
        Target { host: "127.0.0.1".into(), port: mq.mgmt_port, user: mq.user.clone(), password: mq.password.clone() };
    let vhosts = vec!["orders".to_string(), "a/b c".to_string()];
    let users = vec![
        user("orders-app", &["management"], &["orders", "a/b c"], None),
        user("temp", &[], &["/"], Some(DeletionPolicy::Delete)),
        user("kept", &[], &[], None),
    ];
    let passwords: BTreeMap<String, String> = ["orders-app", "temp", "kept"]
        .into_iter()
        .map(|u| (u.to_string(), berth::resources::databaseinstance::generate_password()))
        .collect();

    let report = rabbitmq::ensure(&target, &vhosts, &users, &passwords).await.expect("first run");
    assert_eq!(report.created, ["vhost/orders", "vhost/a/b c", "user/orders-app", "user/temp", "user/kept"]);
    assert!(report.changed.is_empty() && report.deleted.is_empty(), "{report:?}");

    let perms: serde_json::Value =
        serde_json::from_str(&mq.api_ok("GET", "/api/users/orders-app/permissions", None)).unwrap();
    let mut seen: Vec<(String, String)> = perms
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["vhost"].as_str().unwrap().to_string(), p["write"].as_str().unwrap().to_string()))
        .collect();
    seen.sort();
    assert_eq!(seen, [("a/b c".to_string(), "^orders\\.".to_string()), ("orders".into(), "^orders\\.".into())]);
    assert_eq!(
        whoami(&mq, "orders-app", &passwords["orders-app"]).await,
        200,
        "the user logs in with its Secret's password"
    );

    let again = rabbitmq::ensure(&target, &vhosts, &users, &passwords).await.expect("second run");
    assert!(again.is_empty(), "a second run changes nothing: {again:?}");

    // Drift in permissions is repaired; an undeclared grant is revoked.
    mq.api_ok("PUT", "/api/permissions/%2F/orders-app", Some(r#"{"configure":".*","write":".*","read":".*"}"#));
    let repaired = rabbitmq::ensure(&target, &vhosts, &users, &passwords).await.expect("repair run");
    assert_eq!(repaired.changed, ["user/orders-app"]);
    assert_eq!(mq.api("GET", "/api/permissions/%2F/orders-app", None).unwrap().0, 404);

    // Rotation: the new password works, the old one stops working.
    let new = berth::resources::databaseinstance::generate_password();
    rabbitmq::rotate_password(&target, "orders-app", &new).await.expect("rotate");
    assert_eq!(whoami(&mq, "orders-app", &new).await, 200);
    assert_eq!(whoami(&mq, "orders-app", &passwords["orders-app"]).await, 401, "old password refused");
    let mut passwords = passwords;
    passwords.insert("orders-app".into(), new);
    let after = rabbitmq::ensure(&target, &vhosts, &users, &passwords).await.expect("run after rotation");
    assert!(after.is_empty(), "the rotated password is what the Secret holds: {after:?}");

    // Users leave the spec: only reclaimPolicy Delete users are deleted; vhosts stay.
    let users: Vec<RabbitUser> = users.into_iter().filter(|u| u.name == "orders-app").collect();
    let report = rabbitmq::ensure(&target, &[], &users, &passwords).await.expect("reclaim run");
    assert_eq!(report.deleted, ["user/temp"], "{report:?}");
    assert_eq!(mq.api("GET", "/api/users/kept", None).unwrap().0, 200, "retained user stays");
    assert_eq!(mq.api("GET", "/api/vhosts/orders", None).unwrap().0, 200, "vhosts are never deleted");
}

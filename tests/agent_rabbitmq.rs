//! `berth agent backup-rabbitmq` → wipe → `restore` against a real RabbitMQ node.

use crate::agent_support;
use crate::support;

use agent_support::Agent;
use support::servers::RabbitMq;

/// Definitions without version fields, arrays sorted, for comparison.
fn normalised(r: &RabbitMq) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&r.api_ok("GET", "/api/definitions", None)).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("rabbit_version");
    obj.remove("rabbitmq_version");
    obj.remove("product_name");
    obj.remove("product_version");
    for (_, val) in obj.iter_mut() {
        if let Some(a) = val.as_array_mut() {
            a.sort_by_key(|x| x.to_string());
        }
    }
    v
}

#[test]
fn export_wipe_restore_gives_same_definitions() {
    let rabbit = RabbitMq::start();
    let mut agent = Agent::new();
    agent.extra_env = vec![
        ("BERTH_RABBITMQ_URL".into(), rabbit.mgmt_url()),
        ("BERTH_RABBITMQ_USER".into(), rabbit.user.clone()),
        ("BERTH_RABBITMQ_PASSWORD".into(), rabbit.password.clone()),
    ];
    rabbit.api_ok("PUT", "/api/vhosts/shop", Some("{}"));
    rabbit.api_ok("PUT", "/api/users/shop-app", Some(r#"{"password":"s3cret","tags":""}"#));
    rabbit.api_ok(
        "PUT",
        "/api/permissions/shop/shop-app",
        Some(r#"{"configure":"^shop\\.","write":".*","read":".*"}"#),
    );
    rabbit.api_ok("PUT", "/api/exchanges/shop/orders", Some(r#"{"type":"topic","durable":true}"#));
    rabbit.api_ok(
        "PUT",
        "/api/queues/shop/orders.created",
        Some(r#"{"durable":true,"arguments":{"x-queue-type":"classic","x-max-length":10000}}"#),
    );
    rabbit.api_ok("POST", "/api/bindings/shop/e/orders/q/orders.created", Some(r#"{"routing_key":"order.created.#"}"#));
    rabbit.api_ok(
        "PUT",
        "/api/policies/shop/ttl",
        Some(r#"{"pattern":"^orders\\.","definition":{"message-ttl":60000},"apply-to":"queues","priority":1}"#),
    );
    let before = normalised(&rabbit);
    assert!(before.to_string().contains("orders.created"), "{before}");

    agent.ok(&["backup-rabbitmq"]);

    // Wipe what the test declared.
    rabbit.api_ok("DELETE", "/api/vhosts/shop", None);
    rabbit.api_ok("DELETE", "/api/users/shop-app", None);
    let wiped = normalised(&rabbit);
    assert_ne!(wiped, before);

    agent.ok(&["restore", "latest"]);
    assert_eq!(normalised(&rabbit), before);

    let snaps = agent.json(&["snapshots", "--kind", "rabbitmq"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
}

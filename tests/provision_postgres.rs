//! Provisioning against a real PostgreSQL 15 (Debian's `postgresql-15`) on a loopback port:
//! roles, memberships and databases are created, a second run changes nothing, password
//! rotation changes what the server accepts, and only `reclaimPolicy: Delete` items are
//! dropped when they leave the spec.

use crate::support;

use std::collections::BTreeMap;

use berth::api::databaseinstance::{DeletionPolicy, PostgresDatabase, PostgresRole};
use berth::provision::{ProvisionError, Target, postgres};
use support::servers::Postgres;

fn role(name: &str, login: bool, in_roles: &[&str], reclaim: Option<DeletionPolicy>) -> PostgresRole {
    PostgresRole {
        name: name.into(),
        login: Some(login),
        createdb: None,
        in_roles: in_roles.iter().map(|s| s.to_string()).collect(),
        reclaim_policy: reclaim,
    }
}

fn database(name: &str, owner: &str, reclaim: Option<DeletionPolicy>) -> PostgresDatabase {
    PostgresDatabase { name: name.into(), owner: Some(owner.into()), reclaim_policy: reclaim }
}

fn admin(pg: &Postgres) -> Target {
    Target { host: "127.0.0.1".into(), port: pg.port, user: pg.superuser.clone(), password: pg.password.clone() }
}

async fn login(pg: &Postgres, user: &str, password: &str, db: &str) -> Result<(), ProvisionError> {
    let target = Target { host: "127.0.0.1".into(), port: pg.port, user: user.into(), password: password.into() };
    let client = postgres::connect(&target, db).await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| ProvisionError::Request { action: "select".into(), message: e.to_string() })?;
    Ok(())
}

#[tokio::test]
async fn roles_and_databases_converge_and_passwords_rotate() {
    let pg = Postgres::start();
    let target = admin(&pg);
    // "user" and a name with a quote prove identifiers are quoted, never formatted in raw.
    let roles = vec![
        role("app", true, &["readers"], None),
        role("readers", false, &[], None),
        role("user", true, &[], None),
        role("temp", true, &[], Some(DeletionPolicy::Delete)),
        role("kept", true, &[], None),
    ];
    let databases = vec![database("orders", "app", None), database("scratch", "temp", Some(DeletionPolicy::Delete))];
    let passwords: BTreeMap<String, String> = ["app", "user", "temp", "kept"]
        .into_iter()
        .map(|r| (r.to_string(), berth::resources::databaseinstance::generate_password()))
        .collect();

    let report = postgres::ensure(&target, &roles, &databases, &passwords).await.expect("first run");
    assert_eq!(
        report.created,
        ["role/app", "role/readers", "role/user", "role/temp", "role/kept", "database/orders", "database/scratch"]
    );
    assert!(report.changed.is_empty() && report.deleted.is_empty(), "{report:?}");

    assert_eq!(
        pg.psql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'orders'").trim(),
        "app"
    );
    assert_eq!(
        pg.psql("postgres", "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'app'").trim(),
        "readers"
    );
    assert_eq!(pg.psql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'readers'").trim(), "f");
    login(&pg, "app", &passwords["app"], "orders").await.expect("app logs in with its Secret's password");
    login(&pg, "user", &passwords["user"], "postgres").await.expect("a reserved word as role name works");

    let again = postgres::ensure(&target, &roles, &databases, &passwords).await.expect("second run");
    assert!(again.is_empty(), "a second run changes nothing: {again:?}");

    // Drift: a password changed by hand is put back to the Secret's.
    pg.psql("postgres", "ALTER ROLE app PASSWORD 'drifted'");
    let repaired = postgres::ensure(&target, &roles, &databases, &passwords).await.expect("repair run");
    assert_eq!(repaired.changed, ["role/app"]);
    login(&pg, "app", &passwords["app"], "orders").await.expect("password restored");

    // Rotation: the new password works, the old one stops working.
    let new = berth::resources::databaseinstance::generate_password();
    postgres::rotate_password(&target, "app", &new).await.expect("rotate");
    login(&pg, "app", &new, "orders").await.expect("new password accepted");
    let old = login(&pg, "app", &passwords["app"], "orders").await;
    assert!(matches!(old, Err(ProvisionError::Connect { .. })), "old password must be refused: {old:?}");

    // Items leave the spec: only those with reclaimPolicy Delete are dropped.
    let mut passwords = passwords;
    passwords.insert("app".into(), new);
    let roles: Vec<PostgresRole> = roles.into_iter().filter(|r| r.name != "temp" && r.name != "kept").collect();
    let databases: Vec<PostgresDatabase> = databases.into_iter().filter(|d| d.name == "orders").collect();
    let report = postgres::ensure(&target, &roles, &databases, &passwords).await.expect("reclaim run");
    assert_eq!(report.deleted, ["database/scratch", "role/temp"], "{report:?}");
    assert!(report.created.is_empty() && report.changed.is_empty(), "{report:?}");
    let left = pg.psql(
        "postgres",
        "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname IN ('kept', 'temp')",
    );
    assert_eq!(left.trim(), "kept", "a role without reclaimPolicy Delete is retained");
}

#[tokio::test]
async fn wrong_admin_password_is_a_connect_error() {
    let pg = Postgres::start();
    let mut target = admin(&pg);
    target.password = "wrong".into();
    let err = postgres::ensure(&target, &[], &[], &BTreeMap::new()).await.unwrap_err();
    assert_eq!(err.reason(), "ServerUnreachable", "{err}");
}

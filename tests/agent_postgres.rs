//! `berth agent backup-postgres` → drop → `restore` against a real PostgreSQL 15.

use crate::agent_support;
use crate::support;

use agent_support::Agent;
use support::servers::Postgres;

fn checksums(pg: &Postgres, db: &str) -> Vec<String> {
    let tables = pg.psql(
        db,
        "SELECT schemaname || '.' || tablename FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let sum = pg.psql(
                db,
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x"
                ),
            );
            format!("{t}={}", sum.trim())
        })
        .collect()
}

#[test]
fn dump_drop_restore_gives_same_tables_and_roles() {
    let pg = Postgres::start();
    let agent = {
        let mut a = Agent::new();
        a.extra_env = pg.env();
        a
    };
    pg.psql("postgres", "CREATE ROLE shop_app LOGIN PASSWORD 'app-secret'");
    pg.psql("postgres", "CREATE DATABASE shop OWNER shop_app");
    pg.psql("postgres", "CREATE DATABASE inventory");
    pg.psql(
        "shop",
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, created timestamptz DEFAULT now());
         CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers(id), total numeric(12,2), note jsonb);
         CREATE INDEX ON orders (customer);
         INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.test' FROM generate_series(1, 20000) g;
         INSERT INTO orders (customer, total, note) SELECT 1 + g % 20000, (g * 37 % 100000) / 100.0, jsonb_build_object('g', g) FROM generate_series(1, 100000) g;
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 900;
         ALTER TABLE customers OWNER TO shop_app;",
    );
    let pgbench = pg.tool("pgbench").args(["-i", "-s", "2", "-q", "inventory"]).output().unwrap();
    assert!(pgbench.status.success(), "{}", String::from_utf8_lossy(&pgbench.stderr));
    let shop_before = checksums(&pg, "shop");
    let inv_before = checksums(&pg, "inventory");
    assert!(shop_before.len() >= 2 && inv_before.len() >= 4, "{shop_before:?} {inv_before:?}");

    let first = agent.json(&["backup-postgres", "--pg-bin-dir", Postgres::BIN_DIR]);
    let s1 = &first["snapshot"]["summary"];
    assert!(s1["files"].as_u64().unwrap() >= 3, "{s1}"); // globals + shop + inventory + postgres

    // A second dump after a day's small changes uploads much less than the first. (Updates
    // scattered over a big table are not used here: where PostgreSQL puts the new row versions
    // depends on its free space map, and pg_dump writes rows in physical order, so how much
    // such a dump deduplicates varies from run to run; the backup benchmark measures that case.)
    pg.psql(
        "inventory",
        "UPDATE pgbench_tellers SET tbalance = tbalance + 1; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         SELECT 1, 1, g, 5, now() FROM generate_series(1, 4000) g",
    );
    let inv_changed = checksums(&pg, "inventory");
    let second = agent.json(&["backup-postgres"]);
    let s2 = &second["snapshot"]["summary"];
    assert!(
        s2["bytesNew"].as_u64().unwrap() * 2 < s1["bytesNew"].as_u64().unwrap(),
        "no deduplication between dumps: {s1} vs {s2}"
    );

    pg.psql("postgres", "DROP DATABASE shop");
    pg.psql("postgres", "DROP DATABASE inventory");
    pg.psql("postgres", "DROP ROLE shop_app");

    let out = agent.ok(&["restore", "latest"]);
    assert!(out.contains("shop") && out.contains("inventory"), "{out}");
    assert_eq!(checksums(&pg, "shop"), shop_before);
    assert_eq!(checksums(&pg, "inventory"), inv_changed);
    assert_eq!(
        pg.psql("shop", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'").trim(),
        "shop_app"
    );
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'shop_app'").trim(), "1");

    // The older snapshot restores the older data over the existing database.
    let id1 = first["id"].as_str().unwrap();
    agent.ok(&["restore", &id1[..12], "--database", "inventory"]);
    assert_eq!(checksums(&pg, "inventory"), inv_before);

    // Restoring to a directory yields the dump files.
    let dir = agent.dir.path().join("dumps");
    agent.ok(&["restore", "latest", "--target", dir.to_str().unwrap()]);
    assert!(dir.join("globals.sql").is_file());
    assert!(dir.join("databases/shop.dump").is_file());
    // Each table's rows, counted in the snapshot its dump read (a restore drill compares them).
    let counts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rowcounts.json")).unwrap()).unwrap();
    assert_eq!(counts["shop"]["public.customers"], 20000, "{counts}");
    assert_eq!(counts["shop"]["public.orders"], 100000, "{counts}");
    assert_eq!(counts["inventory"]["public.pgbench_history"], 4000, "{counts}");
    assert_eq!(counts["inventory"]["public.pgbench_accounts"], 200000, "{counts}");
    agent.ok(&["check", "--read-data"]);
}

/// A directory for `--pg-bin-dir` with the real psql and pg_dumpall of PostgreSQL 15 and a
/// `pg_dump` that reports `version` but dumps with the real pg_dump 15. (A stub on PATH would
/// not be used here: the agent prefers /usr/lib/postgresql/<server major>/bin to PATH.)
fn bin_dir_with_pg_dump_reporting(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in ["psql", "pg_dumpall"] {
        std::os::unix::fs::symlink(std::path::Path::new(Postgres::BIN_DIR).join(tool), dir.path().join(tool)).unwrap();
    }
    let stub = dir.path().join("pg_dump");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) {version}'; exit 0; fi\n\
             exec {}/pg_dump \"$@\"\n",
            Postgres::BIN_DIR
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn pg_dump_older_than_the_server_is_refused_with_both_versions() {
    let pg = Postgres::start();
    let agent = {
        let mut a = Agent::new();
        a.extra_env = pg.env();
        a
    };
    pg.psql("postgres", "CREATE DATABASE shop");

    let old = bin_dir_with_pg_dump_reporting("14.11");
    let err = agent.fails(&["backup-postgres", "--pg-bin-dir", old.path().to_str().unwrap()]);
    assert!(err.contains("is PostgreSQL 14, older than the server's PostgreSQL 15"), "{err}");
    assert!(err.contains("--agent-image") && err.contains("--pg-bin-dir"), "the fix is named: {err}");
    assert_eq!(agent.json(&["snapshots"]).as_array().map(Vec::len), Some(0), "nothing was backed up");

    // A newer client dumps an older server: accepted.
    let newer = bin_dir_with_pg_dump_reporting("17.2 (Debian 17.2-1)");
    let out = agent.json(&["backup-postgres", "--pg-bin-dir", newer.path().to_str().unwrap()]);
    assert!(out["snapshot"]["summary"]["files"].as_u64().unwrap() >= 2, "{out}");
    assert_eq!(agent.json(&["snapshots"]).as_array().map(Vec::len), Some(1));
}

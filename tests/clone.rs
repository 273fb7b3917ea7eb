//! `pgzfs clone` on real zfs-fuse and PostgreSQL 15: an operator gets a writable copy of
//! a snapshot to fetch a dropped table from, while the primary, its standby setup and its
//! snapshots stay as they were; `--drop` takes it away again.

mod common;

use common::{stderr_of, Lab};
use serde_json::Value;

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn userrefs(lab: &Lab, snapshot: &str) -> String {
    lab.zfs(&["get", "-H", "-o", "value", "userrefs", snapshot])
        .trim()
        .to_string()
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_table_dropped_on_the_primary_is_read_back_from_a_clone_of_last_nights_snapshot() {
    let lab = Lab::up("clonerestore");
    lab.sql(
        "db1",
        "CREATE TABLE invoices AS SELECT g AS id, g * 10 AS amount FROM generate_series(1, 500) g",
    );
    let out = lab.pgzfs("db1", &["snapshot"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let snapshot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let snap_name = snapshot.split_once('@').unwrap().1.to_string();
    // The accident.
    lab.sql("db1", "DROP TABLE invoices");

    let port = free_port();
    let out = lab.pgzfs(
        "db1",
        &[
            "clone",
            &snap_name,
            "--port",
            &port.to_string(),
            "--name",
            "restore1",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let created = json_of(&out);
    let dataset = created["dataset"].as_str().unwrap().to_string();
    assert_eq!(
        dataset,
        format!("{}-pgzfs-clone-restore1", lab.dataset("db1"))
    );
    let socket_dir = created["socket_dir"].as_str().unwrap().to_string();
    let on_clone = |sql: &str| {
        lab.try_sql_at(&socket_dir, &port.to_string(), sql)
            .unwrap_or_else(|e| panic!("SQL on the clone failed: {sql}: {e}"))
    };

    // The dropped table is there, the copy is writable, and it is nobody's standby or
    // archiver.
    assert_eq!(on_clone("SELECT sum(amount) FROM invoices"), "1252500");
    assert_eq!(on_clone("SELECT pg_is_in_recovery()"), "f");
    on_clone("CREATE TABLE scratch AS SELECT 1 AS x");
    assert_eq!(on_clone("SHOW archive_mode"), "off");
    assert_eq!(on_clone("SELECT count(*) FROM pg_replication_slots"), "0");
    assert_eq!(on_clone("SHOW listen_addresses"), "localhost");
    // The primary is untouched.
    assert!(lab.try_sql("db1", "SELECT count(*) FROM invoices").is_err());

    // The origin is held, so retention keeps it, and the listing shows the clone.
    assert_eq!(userrefs(&lab, &snapshot), "1");
    let out = lab.pgzfs("db1", &["snapshots", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let listing = json_of(&out);
    let clone = &listing["clones"][0];
    assert_eq!(clone["name"], "restore1", "{listing}");
    assert_eq!(clone["origin"].as_str(), Some(snapshot.as_str()));
    assert_eq!(clone["port"].as_str(), Some(port.to_string().as_str()));
    let text = lab.pgzfs("db1", &["snapshots"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("pgzfs clone --drop restore1"));
    // status shows it too, under the node it runs on (db2 is not set up in this lab,
    // so the cluster is degraded: only the listing matters here).
    let out = lab.pgzfs("db1", &["status", "--json"]);
    let status = json_of(&out);
    let db1 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "db1")
        .unwrap();
    assert_eq!(db1["clones"][0]["name"], "restore1", "{status}");
    assert_eq!(db1["clones"][0]["origin"].as_str(), Some(snapshot.as_str()));
    let text = lab.pgzfs("db1", &["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!(
        "clone restore1 on db1: of {snapshot} on localhost:{port}"
    )));

    // The same name twice is refused, and so is a port in use.
    let again = lab.pgzfs(
        "db1",
        &[
            "clone",
            &snap_name,
            "--port",
            &free_port().to_string(),
            "--name",
            "restore1",
        ],
    );
    assert_eq!(again.status.code(), Some(3), "{}", stderr_of(&again));
    let busy = lab.pgzfs(
        "db1",
        &[
            "clone",
            &snap_name,
            "--port",
            &port.to_string(),
            "--name",
            "other",
        ],
    );
    assert_eq!(busy.status.code(), Some(2), "{}", stderr_of(&busy));
    assert!(!lab.dataset_exists(&format!("{}-pgzfs-clone-other", lab.dataset("db1"))));

    // Done with it.
    let out = lab.pgzfs("db1", &["clone", "--drop", "restore1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(!lab.dataset_exists(&dataset), "the clone is destroyed");
    assert_eq!(userrefs(&lab, &snapshot), "0", "the hold is released");
    assert!(
        lab.try_sql_at(&socket_dir, &port.to_string(), "SELECT 1")
            .is_err(),
        "the clone's server is stopped"
    );
    assert!(!std::path::Path::new(&socket_dir).exists());
    // The primary carries on.
    assert_eq!(
        lab.sql("db1", "SELECT count(*) > 0 FROM pgbench_accounts"),
        "t"
    );
    let out = lab.pgzfs("db1", &["clone", "--drop", "restore1"]);
    assert_eq!(out.status.code(), Some(1), "no such clone any more");
}

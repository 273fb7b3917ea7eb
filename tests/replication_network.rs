//! A cluster on two networks, as appliance fleets run it: clients, PgBouncer and the
//! event hooks on one (`host`, `client_host`), the re-seed stream, SSH and the WAL stream
//! on the other (`replication_host`). Real hosts in the lab: every node a network
//! namespace on two bridges (`scripts/lab up --hosts 2 --replication-net`), each sshd
//! listening only on the replication network and known_hosts naming only those addresses,
//! so that an SSH connection to a client address could not even be made.

mod common;

use std::time::{Duration, Instant};

use common::{file_text, stderr_of, Lab};

/// One value from SQL on `node`, retried until it equals `want` or 30 s have passed
/// (the WAL receiver reconnects on its own schedule after a switchover).
fn wait_for_value(lab: &Lab, node: &str, sql: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = lab.try_sql_on(node, sql).unwrap_or_else(|e| e);
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Where `standby` streams WAL from (its WAL receiver's peer) and where its primary sees
/// it come from (`pg_stat_replication.client_addr`).
fn assert_wal_on_replication_network(lab: &Lab, primary: &str, standby: &str) {
    let primary_repl = lab.get(&format!("{}_REPL_ADDR", primary.to_uppercase()));
    let standby_repl = lab.get(&format!("{}_REPL_ADDR", standby.to_uppercase()));
    assert_eq!(
        wait_for_value(
            lab,
            standby,
            "SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            primary_repl
        ),
        primary_repl,
        "{standby} streams WAL from {primary}'s replication address"
    );
    assert_eq!(
        wait_for_value(
            lab,
            primary,
            &format!(
                "SELECT host(client_addr) FROM pg_stat_replication WHERE application_name = '{standby}'"
            ),
            standby_repl
        ),
        standby_repl,
        "{primary} sees {standby}'s WAL receiver come from its replication address"
    );
}

/// The address a client reaches through PgBouncer, asked from the client namespace.
fn server_behind_pgbouncer(lab: &Lab) -> String {
    let out = lab.exec(
        "client",
        &[
            &format!("{}/psql", lab.get("CLIENT_BIN")),
            "-X",
            "-w",
            "-At",
            "-h",
            &lab.addr("client"),
            "-p",
            lab.get("PGBOUNCER_PORT"),
            "-U",
            "app",
            "-d",
            "postgres",
            "-c",
            "SELECT host(inet_server_addr())",
        ],
    );
    assert!(
        out.status.success(),
        "psql through pgbouncer: {}",
        stderr_of(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_stream_and_the_wal_go_over_the_replication_network_and_pgbouncer_gets_the_client_address() {
    let lab = Lab::up_hosts_with("replnet", 2, &["--pgbouncer", "--replication-net"]);
    let (db1_client, db2_client) = (lab.addr("db1"), lab.addr("db2"));
    let (db1_repl, db2_repl) = (
        lab.get("DB1_REPL_ADDR").to_string(),
        lab.get("DB2_REPL_ADDR").to_string(),
    );
    assert_ne!(db1_client, db1_repl, "two networks, two addresses per node");

    // The PgBouncer repoint as the README sets it up, and what switchover needs.
    let hook = format!(
        "{}/contrib/pgbouncer-repoint --databases-file {} --admin-host {} --admin-port {} --admin-user postgres",
        common::repo().display(),
        lab.get("PGBOUNCER_DATABASES"),
        lab.get("PGBOUNCER_SOCK"),
        lab.get("PGBOUNCER_PORT")
    );
    let config = file_text(&lab.config()).replacen(
        "[defaults]\n",
        &format!(
            "[defaults]\nconnect_timeout = \"2s\"\nquarantine_dir = \"{}/quarantine\"\npgzfs_bin = \"{}\"\n",
            lab.dir.display(),
            common::pgzfs_bin().display()
        ),
        1,
    );
    lab.write_config(&format!(
        "{config}\n[events]\ncommand = \"{hook}\"\nonly = [\"promote\", \"switchover\"]\n"
    ));
    assert!(
        config.contains(&format!("replication_host = \"{db1_repl}\"")),
        "the lab's config names the replication network: {config}"
    );

    // 1. A full re-seed of db2: SSH (and the zfs send stream in it) goes to db1's
    // replication address, the only one its sshd listens on; the log says from where.
    let out = lab.pgzfs_in("db2", &["reset-secondary", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let sshd_log = file_text(&lab.dir.join("ssh-db1/sshd.log"));
    assert!(
        sshd_log.contains(&format!("Accepted publickey for root from {db2_repl} ")),
        "db2's pgzfs logged in to db1 over the replication network:\n{sshd_log}"
    );
    assert!(
        !sshd_log.contains(&format!("from {db2_client} ")),
        "no SSH connection came over the client network:\n{sshd_log}"
    );
    let auto_conf = file_text(&lab.data_dir("db2").join("postgresql.auto.conf"));
    assert!(
        auto_conf.contains(&format!("host={db1_repl} ")),
        "primary_conninfo names db1's replication address: {auto_conf}"
    );
    assert_wal_on_replication_network(&lab, "db1", "db2");
    assert_eq!(server_behind_pgbouncer(&lab), db1_client);

    // 2. A switchover: the hook gets db2's client address, so PgBouncer follows the
    // primary on the client network; the old primary streams from db2 over the
    // replication network.
    let out = lab.pgzfs_in("db1", &["switchover", "--to", "db2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["old_primary_rejoined"], true, "{done:#}");
    let databases = file_text(std::path::Path::new(lab.get("PGBOUNCER_DATABASES")));
    assert!(
        databases.contains(&format!("host={db2_client} ")),
        "PgBouncer points at db2's client address: {databases}"
    );
    assert!(
        !databases.contains(&db2_repl),
        "and not at its replication address: {databases}"
    );
    assert_eq!(server_behind_pgbouncer(&lab), db2_client);
    assert_eq!(lab.sql_on("db2", "SELECT pg_is_in_recovery()"), "f");
    assert_wal_on_replication_network(&lab, "db2", "db1");
}

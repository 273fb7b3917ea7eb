//! The same re-seed across PostgreSQL majors: 11 (recovery.conf, pg_start_backup), 14
//! (standby.signal, pg_start_backup), 15 (pg_backup_start) and 17. Debian ships 15; the
//! others come from the npm packages scripts/install-deps puts under /opt/pgzfs-pg.

mod common;

use common::Lab;

fn full_then_incremental_on(major: u32) {
    let lab = Lab::up_with(&format!("pg{major}"), major, 1);
    assert_eq!(
        lab.sql(
            "db1",
            "SELECT current_setting('server_version_num')::int / 10000"
        ),
        major.to_string()
    );

    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    let snapshot = full["snapshot"].as_str().unwrap();
    assert_eq!(
        lab.zfs(&["get", "-H", "-o", "value", "pgzfs:pg_major", snapshot])
            .trim(),
        major.to_string()
    );

    let data = lab.data_dir("db2");
    if major >= 12 {
        assert!(
            data.join("standby.signal").exists(),
            "PostgreSQL {major} uses standby.signal"
        );
        assert!(!data.join("recovery.conf").exists());
    } else {
        assert!(
            data.join("recovery.conf").exists(),
            "PostgreSQL {major} uses recovery.conf"
        );
        assert!(!data.join("standby.signal").exists());
    }

    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid <= 250",
    );
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
}

#[test]
fn postgresql_11_reseeds_with_recovery_conf_and_pg_start_backup() {
    full_then_incremental_on(11);
}

#[test]
fn postgresql_14_reseeds_with_standby_signal_and_pg_start_backup() {
    full_then_incremental_on(14);
}

#[test]
fn postgresql_15_reseeds_with_pg_backup_start() {
    full_then_incremental_on(15);
}

#[test]
fn postgresql_17_reseeds() {
    full_then_incremental_on(17);
}

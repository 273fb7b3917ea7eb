//! `pgzfs upgrade` on real zfs-fuse, PostgreSQL 15 (Debian) and PostgreSQL 18 (the PyPI
//! wheel, see scripts/install-deps): the fleet's major upgrade as an operator runs it,
//! and the two ways it can go wrong before the new server takes writes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{stderr_of, Lab};
use serde_json::Value;

const NEW_BIN: &str = "/opt/pgzfs-pg/18/bin";

fn new_bin() -> &'static str {
    assert!(
        Path::new(NEW_BIN).join("pg_upgrade").is_file(),
        "PostgreSQL 18 is not installed in {NEW_BIN}: run scripts/install-deps (the upgrade tests refuse to pass without it)"
    );
    NEW_BIN
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn major_of(lab: &Lab, node: &str) -> String {
    lab.sql(
        node,
        "SELECT current_setting('server_version_num')::int / 10000",
    )
}

fn pg_version_file(lab: &Lab, node: &str) -> String {
    std::fs::read_to_string(lab.data_dir(node).join("PG_VERSION"))
        .unwrap()
        .trim()
        .to_string()
}

fn userrefs(lab: &Lab, snapshot: &str) -> String {
    lab.zfs(&["get", "-H", "-o", "value", "userrefs", snapshot])
        .trim()
        .to_string()
}

fn sibling(lab: &Lab, node: &str, suffix: &str) -> std::path::PathBuf {
    let data = lab.data_dir(node);
    data.with_file_name(format!(
        "{}{suffix}",
        data.file_name().unwrap().to_string_lossy()
    ))
}

/// Wait for a server to be reachable again (a walreceiver retries every few seconds).
fn wait_for_streaming(lab: &Lab, standby: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = lab.try_sql(standby, "SELECT status FROM pg_stat_wal_receiver");
        if got.as_deref() == Ok("streaming") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{standby} does not stream again: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_15_primary_and_its_standby_move_to_18_and_the_standby_needs_only_the_changed_blocks() {
    let new_bin = new_bin();
    let lab = Lab::up_with("upgrade", 15, 20);
    let seeded = lab.reset_secondary("db2");
    assert_eq!(seeded["mode"], "full");
    let full_bytes = seeded["bytes"].as_u64().unwrap();
    lab.assert_streaming("db2");
    lab.sql(
        "db1",
        "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 10000) g",
    );
    let before = lab.contents("db1");
    let orders = lab.sql(
        "db1",
        "SELECT count(*) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM orders",
    );

    // The primary: preflight, rollback point, pg_upgrade --link, the new major up.
    let started = Instant::now();
    let out = lab.pgzfs("db1", &["upgrade", "--new-bin", new_bin, "--json"]);
    let upgrade_seconds = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let report = json_of(&out);
    assert_eq!(report["old_major"], 15, "{report}");
    assert_eq!(report["new_major"], 18, "{report}");
    assert_eq!(major_of(&lab, "db1"), "18");
    assert_eq!(pg_version_file(&lab, "db1"), "18");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(lab.contents("db1"), before, "every row came across");
    assert_eq!(
        lab.sql(
            "db1",
            "SELECT count(*) || ':' || md5(string_agg(note, ',' ORDER BY id)) FROM orders"
        ),
        orders
    );
    // The way back is kept and held, the new major is recorded on the first snapshot,
    // and the operator is told to analyze.
    let rollback = report["rollback_snapshot"].as_str().unwrap().to_string();
    assert_eq!(userrefs(&lab, &rollback), "1");
    let first = report["snapshot"]
        .as_str()
        .expect("a first snapshot of the 18 cluster");
    assert_eq!(
        lab.zfs(&["get", "-H", "-o", "value", "pgzfs:pg_major", first])
            .trim(),
        "18"
    );
    let follow_ups = report["follow_ups"].to_string();
    assert!(
        follow_ups.contains("vacuumdb --all --analyze-in-stages"),
        "{follow_ups}"
    );
    assert!(sibling(&lab, "db1", ".pgzfs-old-15")
        .join("PG_VERSION")
        .exists());
    assert!(!sibling(&lab, "db1", ".pgzfs-new").exists());

    // The new primary takes writes.
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 100",
    );

    // The standby: incremental from the snapshot it shares with the primary, run by the
    // new major's binaries.
    let out = lab.pgzfs(
        "db2",
        &["reset-secondary", "--yes", "--json", "--new-bin", new_bin],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let reseed = json_of(&out);
    assert_eq!(reseed["mode"], "incremental", "{reseed}");
    let bytes = reseed["bytes"].as_u64().unwrap();
    eprintln!(
        "MEASURED: full copy {full_bytes} bytes in {}s; upgrade {upgrade_seconds:.1}s (down {}s, steps {}); \
         incremental re-seed after the upgrade {bytes} bytes in {}s",
        seeded["seconds"], report["downtime_seconds"], report["steps"], reseed["seconds"]
    );
    assert!(
        bytes * 4 < full_bytes,
        "the re-seed after pg_upgrade --link sends far less than a full copy: {bytes} of {full_bytes} bytes"
    );
    assert_eq!(major_of(&lab, "db2"), "18");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    lab.sql("db1", "INSERT INTO orders VALUES (10001, 'after')");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab
        .try_sql("db2", "SELECT count(*) FROM orders WHERE id = 10001")
        .as_deref()
        != Ok("1")
    {
        assert!(
            Instant::now() < deadline,
            "db2 does not replay the 18 primary's writes"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn an_upgrade_that_fails_leaves_the_15_primary_running_with_every_row() {
    let new_bin = new_bin();
    let lab = Lab::up_with("upgfail", 15, 1);
    lab.reset_secondary("db2");
    lab.assert_streaming("db2");
    let rollback_points = |lab: &Lab| {
        lab.snapshots(&lab.dataset("db1"))
            .into_iter()
            .filter(|(name, _)| {
                lab.zfs(&["get", "-H", "-o", "value", "pgzfs:upgrade_rollback", name])
                    .trim()
                    != "-"
            })
            .count()
    };

    // 1. pg_upgrade --check refuses a column type it cannot carry across (reg*): nothing
    //    is stopped or changed, exit 3.
    lab.sql("db1", "CREATE TABLE hooks AS SELECT 'now'::regproc AS fn");
    let out = lab.pgzfs("db1", &["upgrade", "--new-bin", new_bin]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("pg_upgrade --check"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(major_of(&lab, "db1"), "15");
    assert!(
        !sibling(&lab, "db1", ".pgzfs-new").exists(),
        "the new cluster is removed"
    );
    assert_eq!(
        rollback_points(&lab),
        0,
        "nothing was stopped, so no rollback point"
    );
    lab.assert_streaming("db2");
    lab.sql("db1", "DROP TABLE hooks");

    // 2. pg_upgrade dies in the middle of the real run (after the shutdown and the
    //    rollback snapshot): the dataset goes back to the snapshot and 15 runs again.
    lab.sql(
        "db1",
        "CREATE TABLE ledger AS SELECT g AS id FROM generate_series(1, 777) g",
    );
    let before = lab.contents("db1");
    let dying_bin = bin_whose_pg_upgrade_dies_mid_link(&lab, new_bin);
    let out = lab.pgzfs("db1", &["upgrade", "--new-bin", &dying_bin]);
    eprintln!("{}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let said = stderr_of(&out);
    assert!(said.contains("pg_upgrade --link failed"), "{said}");
    // It died at the worst moment: the old cluster was disabled already.
    assert!(said.contains("Adding \".old\" suffix"), "{said}");
    assert!(said.contains("killed by signal 9"), "{said}");
    assert!(said.contains("rolled back to"), "{said}");
    assert_eq!(major_of(&lab, "db1"), "15");
    assert_eq!(pg_version_file(&lab, "db1"), "15");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(lab.contents("db1"), before, "no row is lost");
    assert_eq!(lab.sql("db1", "SELECT count(*) FROM ledger"), "777");
    lab.sql("db1", "INSERT INTO ledger VALUES (778)");
    assert!(!sibling(&lab, "db1", ".pgzfs-new").exists());
    assert!(!sibling(&lab, "db1", ".pgzfs-old-15").exists());
    // The rollback point stays, released: retention may expire it like any snapshot.
    let points: Vec<String> = lab
        .snapshots(&lab.dataset("db1"))
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            lab.zfs(&["get", "-H", "-o", "value", "pgzfs:upgrade_rollback", name])
                .trim()
                == "15-to-18"
        })
        .collect();
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(userrefs(&lab, &points[0]), "0");
    // The standby finds the same primary again.
    wait_for_streaming(&lab, "db2");
    lab.assert_same_contents("db1", "db2");
}

/// A copy of the new major's bin directory whose pg_upgrade is killed (SIGKILL, as an
/// OOM kill would) at the worst moment: its second hard link. The first is the link
/// support check; the second is the first relation file, made only after pg_upgrade has
/// disabled the old cluster (renamed its global/pg_control). strace injects the signal
/// at that system call, so the moment is the same however loaded the machine is.
fn bin_whose_pg_upgrade_dies_mid_link(lab: &Lab, new_bin: &str) -> String {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("strace is not installed: run scripts/install-deps (this test needs it to kill pg_upgrade at a fixed point)");
    let dir = lab.dir.join("pg18-dying-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(new_bin).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "pg_upgrade" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let real = std::fs::canonicalize(Path::new(new_bin).join("pg_upgrade")).unwrap();
    let wrapper = dir.join("pg_upgrade");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {strace} -qq -o /dev/null -e trace=link,linkat \\\n    -e inject=link,linkat:signal=KILL:when=2 {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir.display().to_string()
}

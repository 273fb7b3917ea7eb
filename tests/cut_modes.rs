//! Both ways of cutting the source (`cut = "backup"` and `cut = "atomic"`), proved the
//! way an operator would trust them: re-seeds taken while pgbench writes on the primary,
//! then amcheck on the standby and the same data on both sides once it caught up. Real
//! zfs-fuse, sshd and PostgreSQL 15.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr_of, Lab};

#[test]
fn backup_cut_reseeds_under_write_load_give_an_intact_equal_standby() {
    let lab = Lab::up_with("cutbackup", 15, 2);
    reseeds_under_write_load_give_an_intact_equal_standby(&lab, "backup");
}

#[test]
fn atomic_cut_reseeds_under_write_load_give_an_intact_equal_standby_without_a_backup_grant() {
    let lab = Lab::up_with("cutatomic", 15, 2);
    // The atomic cut needs no backup session, so the replication role may lose the
    // backup privilege altogether.
    lab.sql(
        "db1",
        "REVOKE EXECUTE ON FUNCTION pg_backup_start(text, boolean) FROM replicator; \
         REVOKE EXECUTE ON FUNCTION pg_backup_stop(boolean) FROM replicator; SELECT 1",
    );
    let summary = reseeds_under_write_load_give_an_intact_equal_standby(&lab, "atomic");
    let snapshot = summary["snapshot"].as_str().unwrap();
    assert_eq!(
        lab.zfs(&["get", "-H", "-o", "value", "pgzfs:cut", snapshot])
            .trim(),
        "atomic",
        "the snapshot says how it was cut"
    );

    // The operator adds a tablespace outside the dataset: one atomic snapshot of the
    // dataset no longer holds the whole cluster, so the atomic cut is refused, with the
    // standby left as it was.
    let outside = lab.dir.join("ts-outside");
    std::fs::create_dir_all(&outside).unwrap();
    let chown = Command::new("chown")
        .args(["postgres:postgres", outside.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(chown.success());
    lab.sql(
        "db1",
        &format!("CREATE TABLESPACE outside LOCATION '{}'", outside.display()),
    );
    let snapshots_before = lab.snapshots(&lab.dataset("db1"));
    let out = lab.pgzfs("db2", &["reset-secondary", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let why = stderr_of(&out);
    assert!(
        why.contains("tablespace") && why.contains(outside.to_str().unwrap()),
        "the refusal names the tablespace: {why}"
    );
    assert_eq!(
        lab.snapshots(&lab.dataset("db1")),
        snapshots_before,
        "a refused atomic cut takes no snapshot"
    );
    lab.assert_streaming("db2");
    lab.sql("db1", "DROP TABLESPACE outside");
}

/// A full and then an incremental re-seed of db2 with `cut`, each while pgbench writes
/// on db1; after each, db2 must stream, pass amcheck and, once the load stopped and it
/// caught up, hold exactly the primary's data. Returns the last re-seed's summary.
fn reseeds_under_write_load_give_an_intact_equal_standby(
    lab: &Lab,
    cut: &str,
) -> serde_json::Value {
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let db2 = "name = \"db2\"\n";
    assert!(config.contains(db2), "the lab config names db2");
    lab.write_config(&config.replacen(db2, &format!("{db2}cut = \"{cut}\"\n"), 1));
    lab.sql("db1", "CREATE EXTENSION IF NOT EXISTS amcheck; SELECT 1");

    let mut last = serde_json::Value::Null;
    for expected_mode in ["full", "incremental"] {
        let load = Pgbench::start(lab);
        // Let the writes get going, so the cut lands in the middle of them.
        std::thread::sleep(Duration::from_secs(3));
        let history = || -> u64 {
            lab.sql("db1", "SELECT count(*) FROM pgbench_history")
                .parse()
                .unwrap()
        };
        let before = history();
        let summary = lab.reset_secondary("db2");
        let after = history();
        load.stop(lab);
        assert!(
            after > before,
            "pgbench committed transactions while the {cut} re-seed ran ({before} → {after})"
        );
        assert_eq!(summary["mode"], expected_mode, "{summary}");
        let steps = &summary["steps"];
        match cut {
            // No backup session, so no forced checkpoint either.
            "atomic" => assert!(
                steps.get("backup start").is_none() && steps.get("backup stop").is_none(),
                "{summary}"
            ),
            _ => assert!(steps["backup start"].is_number(), "{summary}"),
        }
        lab.assert_streaming("db2");
        assert_caught_up_and_equal(lab);
        assert_amcheck_passes(lab, "db2");
        last = summary;
    }
    last
}

/// pgbench's TPC-B-like load on db1 in the background: two clients until stopped.
struct Pgbench {
    child: Child,
    lab_log: std::path::PathBuf,
}

impl Pgbench {
    fn start(lab: &Lab) -> Pgbench {
        let lab_log = lab.dir.join("pgbench-load.log");
        let log = std::fs::File::create(&lab_log).unwrap();
        let child = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{}/pgbench", lab.pg_bin()))
            .args(["-n", "-c", "2", "-T", "300", "-h"])
            .arg(lab.get("SOCK_DIR"))
            .args(["-p", lab.get("DB1_PORT"), "-U", "postgres", "postgres"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start pgbench");
        Pgbench { child, lab_log }
    }

    /// Stop the load and wait until its sessions on db1 are gone; it must not have
    /// failed meanwhile.
    fn stop(mut self, lab: &Lab) {
        // Its own process group: runuser and the pgbench it started, nothing else.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A killed client does not end its session at once: a backend that already had
        // the COMMIT finishes it, and on a busy zfs-fuse pool the WAL flush under it can
        // take seconds. Until those sessions are gone db1 may still commit, and a
        // comparison taken meanwhile would race it (CI saw db2 two transactions ahead).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sessions = lab.sql(
                "db1",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'",
            );
            if sessions == "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pgbench's {sessions} sessions on db1 outlived it by a minute"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.lab_log).unwrap_or_default();
        assert!(
            !log.contains("aborted") && !log.contains("FATAL"),
            "pgbench failed while the re-seed ran:\n{log}"
        );
    }
}

/// Every pgbench table, fingerprinted in key order.
const FINGERPRINT: &str = "SELECT string_agg(t, ' ') FROM (\
     SELECT 'accounts ' || count(*) || ':' || md5(string_agg(aid || '=' || abalance, ',' ORDER BY aid)) AS t FROM pgbench_accounts \
     UNION ALL SELECT 'branches ' || count(*) || ':' || md5(string_agg(bid || '=' || bbalance, ',' ORDER BY bid)) FROM pgbench_branches \
     UNION ALL SELECT 'tellers ' || count(*) || ':' || md5(string_agg(tid || '=' || tbalance, ',' ORDER BY tid)) FROM pgbench_tellers \
     UNION ALL SELECT 'history ' || count(*) || ':' || md5(string_agg(tid || '/' || bid || '/' || aid || '/' || delta || '/' || mtime, ',' ORDER BY mtime, tid, aid, delta)) FROM pgbench_history\
     ) f";

/// Wait until db2 has replayed everything db1 wrote, then compare every table.
fn assert_caught_up_and_equal(lab: &Lab) {
    // The insert position, not the write position: a commit already in the WAL
    // buffers counts too.
    let target = lab.sql("db1", "SELECT pg_current_wal_insert_lsn()");
    let history = lab.sql("db1", "SELECT count(*) FROM pgbench_history");
    assert_ne!(history, "0", "pgbench committed transactions on db1");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind = lab.try_sql(
            "db2",
            &format!("SELECT pg_last_wal_replay_lsn() < '{target}'::pg_lsn"),
        );
        if behind.as_deref() == Ok("f") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "db2 never replayed up to {target}: {behind:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let want = lab.sql("db1", FINGERPRINT);
    assert_eq!(lab.sql("db2", FINGERPRINT), want, "db2 holds db1's data");
}

/// amcheck on every B-tree index (with heapallindexed: every heap tuple is in its index)
/// and on every table's heap, as the standby sees them.
fn assert_amcheck_passes(lab: &Lab, node: &str) {
    let indexes = lab.sql(
        node,
        "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid AND n.nspname = 'public'",
    );
    assert!(
        indexes.parse::<u32>().unwrap() >= 3,
        "amcheck ran on the pgbench indexes: {indexes}"
    );
    let damaged = lab.sql(
        node,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, \
         LATERAL verify_heapam(c.oid) WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
         AND n.nspname IN ('public', 'pg_catalog')",
    );
    assert_eq!(
        damaged, "0",
        "verify_heapam finds no damaged tuple on {node}"
    );
}

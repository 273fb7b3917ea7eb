//! Scheduled-snapshot housekeeping on real zfs-fuse, sshd and PostgreSQL 15: taking
//! backup-safe snapshots by hand, listing them, and pruning them by the retention policy
//! without ever breaking a standby's incremental chain.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr_of, Lab};
use serde_json::Value;

/// The snapshot names (after '@') of a dataset, oldest first.
fn names(lab: &Lab, dataset: &str) -> Vec<String> {
    lab.snapshots(dataset)
        .into_iter()
        .map(|(name, _)| name.split_once('@').unwrap().1.to_string())
        .collect()
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json prints one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn snap_part(full: &str) -> String {
    full.split_once('@').unwrap().1.to_string()
}

/// What the policy in this test (hourly 1, daily 1, monthly 2) keeps besides held
/// snapshots, restated from the names alone: the newest snapshot overall, and the newest
/// of the second-newest month that has one. pgzfs names sort by time.
fn kept_by_policy(pgzfs_names: &[String]) -> BTreeSet<String> {
    let month = |name: &str| name["pgzfs-".len().."pgzfs-YYYYMM".len()].to_string();
    let months: BTreeSet<String> = pgzfs_names.iter().map(|n| month(n)).collect();
    let mut kept = BTreeSet::new();
    for wanted in months.iter().rev().take(2) {
        let newest = pgzfs_names
            .iter()
            .filter(|n| &month(n) == wanted)
            .max()
            .unwrap();
        kept.insert(newest.clone());
    }
    kept
}

const HOLDER: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885829734 AND objid = 1 AND granted";

/// A psql session on db1 that holds the re-seed advisory lock, as a re-seed in flight
/// does, until `release_reseed_lock`.
fn hold_reseed_lock(lab: &Lab) -> Child {
    let child = Command::new("/usr/lib/postgresql/15/bin/psql")
        .args([
            "-X",
            "-q",
            "-h",
            lab.get("SOCK_DIR"),
            "-p",
            lab.get("DB1_PORT"),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            // pgzfs's lock: class "pgzf" (0x70677a66), object 1.
            "SELECT pg_advisory_lock(1885829734, 1); SELECT pg_sleep(300);",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start psql");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.sql("db1", HOLDER).is_empty() {
        assert!(Instant::now() < deadline, "psql never took the lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// The server does not notice a vanished client while pg_sleep runs: end the backend too.
fn release_reseed_lock(lab: &Lab, mut psql: Child) {
    psql.kill().unwrap();
    psql.wait().unwrap();
    lab.sql(
        "db1",
        &format!("SELECT count(pg_terminate_backend(pid)) FROM ({HOLDER}) AS holder"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.sql("db1", HOLDER).is_empty() {
        assert!(Instant::now() < deadline, "the lock was never released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn snapshots_are_taken_listed_and_pruned_without_breaking_the_standbys_chain() {
    let lab = Lab::up("snaps");
    let db1 = lab.dataset("db1");
    let db2 = lab.dataset("db2");
    lab.append_config(
        "\n[retention]\nhourly = 1\ndaily = 1\nweekly = 0\nmonthly = 2\nyearly = 0\n",
    );

    // Snapshots from the past (as if the daemon had been running since January 2025),
    // and one an operator took by hand, which is not pgzfs's to prune.
    let old = [
        "pgzfs-20250101T000000Z",
        "pgzfs-20250215T000000Z",
        "pgzfs-20250216T000000Z",
        "pgzfs-20250301T000000Z",
    ];
    for name in old {
        lab.zfs(&["snapshot", &format!("{db1}@{name}")]);
    }
    lab.zfs(&["snapshot", &format!("{db1}@before-upgrade")]);

    // The standby gets its copy; reset-secondary holds the common base on both sides.
    let seeded = lab.reset_secondary("db2");
    let base = snap_part(seeded["snapshot"].as_str().unwrap());

    // Two snapshots taken by hand on the primary, the second one asked for as JSON.
    let out = lab.pgzfs("db1", &["snapshot"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let first = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        first.starts_with(&format!("{db1}@pgzfs-")),
        "prints the snapshot: {first}"
    );
    let out = lab.pgzfs("db1", &["snapshot", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let second = json_of(&out);
    let second_name = second["snapshot"].as_str().unwrap().to_string();
    assert_ne!(
        second_name, first,
        "two snapshots in one second get distinct names"
    );
    // Backup-safe: the snapshot records where its WAL replay must start.
    let lsn = lab.zfs(&["get", "-H", "-o", "value", "pgzfs:lsn", &second_name]);
    assert_eq!(lsn.trim(), second["start_lsn"].as_str().unwrap());
    assert!(
        second["stop_lsn"].as_str().is_some_and(|s| s.contains('/')),
        "{second}"
    );

    // On the standby, the command refuses: only a running primary is snapshotted.
    let standby_before = names(&lab, &db2);
    let out = lab.pgzfs("db2", &["snapshot"]);
    assert_eq!(out.status.code(), Some(3), "refused for safety");
    assert!(
        stderr_of(&out).contains("standby"),
        "says why: {}",
        stderr_of(&out)
    );
    assert_eq!(
        names(&lab, &db2),
        standby_before,
        "no snapshot was taken on db2"
    );

    // The listing shows what retention will go by.
    let out = lab.pgzfs("db1", &["snapshots", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let listing = json_of(&out);
    let entries = listing["snapshots"].as_array().unwrap();
    let entry = |snap: &str| {
        entries
            .iter()
            .find(|e| e["snapshot"] == format!("{db1}@{snap}"))
            .unwrap_or_else(|| panic!("{snap} is listed: {listing}"))
    };
    assert_eq!(entries.len(), old.len() + 1 + 3, "{listing}");
    assert_eq!(entry("before-upgrade")["pgzfs"], false);
    assert_eq!(entry(old[0])["taken"], "2025-01-01T00:00:00Z");
    assert_eq!(
        entry(old[0])["lsn"],
        Value::Null,
        "made by hand: no backup behind it"
    );
    let held = entry(&base);
    assert_eq!(held["held"], true, "{held}");
    assert_eq!(held["userrefs"], 1);
    assert_eq!(held["lsn"], seeded["start_lsn"]);
    // zfs-fuse cannot list hold tags; a ZFS that can names the standby.
    match &held["common_base_of"] {
        Value::Null => assert_eq!(held["hold_tags"], Value::Null),
        nodes => assert_eq!(nodes, &serde_json::json!(["db2"]), "{held}"),
    }
    assert_eq!(entry(&snap_part(&first))["held"], false);
    let out = lab.pgzfs("db1", &["snapshots"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let base_row = table
        .lines()
        .find(|l| l.starts_with(&base))
        .expect("the base has a row");
    assert!(
        base_row.contains("(tags unknown)") || base_row.contains("pgzfs-db2"),
        "{table}"
    );

    // What the policy must keep, worked out from the names; the held base comes on top.
    let all = names(&lab, &db1);
    let pgzfs: Vec<String> = all
        .iter()
        .filter(|n| n.starts_with("pgzfs-"))
        .cloned()
        .collect();
    let mut must_keep = kept_by_policy(&pgzfs);
    must_keep.insert(base.clone());
    let doomed: BTreeSet<String> = pgzfs
        .iter()
        .filter(|n| !must_keep.contains(*n))
        .cloned()
        .collect();
    assert!(
        doomed.contains(old[0]) && doomed.contains(&snap_part(&first)),
        "the scenario has something to prune: {doomed:?}"
    );

    // A dry run explains every decision and changes nothing.
    let out = lab.pgzfs("db1", &["prune", "--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let plan = json_of(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(names(&lab, &db1), all, "--dry-run destroyed nothing");
    let would: BTreeSet<String> = plan["destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| snap_part(v.as_str().unwrap()))
        .collect();
    assert_eq!(would, doomed, "{plan}");
    let reasons = |report: &Value, snap: &str| -> Vec<String> {
        report["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot"] == format!("{db1}@{snap}"))
            .unwrap_or_else(|| panic!("{snap} in {report}"))["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(reasons(&plan, &base)[0], "held", "{plan}");
    let newest = snap_part(&second_name);
    assert_eq!(
        reasons(&plan, &newest),
        ["newest", "hourly #1", "daily #1", "monthly #1"],
        "{plan}"
    );
    assert_eq!(
        plan["not_pgzfs"],
        serde_json::json!([format!("{db1}@before-upgrade")])
    );
    let out = lab.pgzfs("db1", &["prune", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dry run, nothing is destroyed"), "{text}");
    assert!(
        text.contains(&format!("{} to destroy", doomed.len())),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&base) && l.contains("keep") && l.contains("held")),
        "{text}"
    );

    // While a re-seed from db1 is in flight, prune refuses and touches nothing.
    let reseed = hold_reseed_lock(&lab);
    let out = lab.pgzfs("db1", &["prune"]);
    let dry = lab.pgzfs("db1", &["prune", "--dry-run", "--json"]);
    release_reseed_lock(&lab, reseed);
    assert_eq!(out.status.code(), Some(3), "refused while a re-seed runs");
    assert!(stderr_of(&out).contains("in flight"), "{}", stderr_of(&out));
    assert_eq!(
        names(&lab, &db1),
        all,
        "nothing destroyed during the re-seed"
    );
    assert_eq!(dry.status.code(), Some(0));
    assert_eq!(json_of(&dry)["reseed_in_flight"], true);

    // The real run destroys exactly those, and the held base survives.
    let out = lab.pgzfs("db1", &["prune", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let done = json_of(&out);
    let destroyed: BTreeSet<String> = done["destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| snap_part(v.as_str().unwrap()))
        .collect();
    assert_eq!(destroyed, doomed, "{done}");
    let left: Vec<String> = all
        .iter()
        .filter(|n| !doomed.contains(*n))
        .cloned()
        .collect();
    assert_eq!(names(&lab, &db1), left);
    assert!(left.contains(&base) && left.contains(&"before-upgrade".to_string()));
    let log = common::file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains(&format!("retention: destroyed {db1}@{}", old[0])),
        "logged"
    );

    // Pruning again finds nothing more to do.
    let out = lab.pgzfs("db1", &["prune", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_of(&out)["destroyed"], serde_json::json!([]));
    assert_eq!(names(&lab, &db1), left);

    // The standby's chain is intact: the next re-seed is incremental from the held base.
    lab.sql(
        "db1",
        "CREATE TABLE after_prune AS SELECT generate_series(1, 100) AS n",
    );
    let again = lab.reset_secondary("db2");
    assert_eq!(again["mode"], "incremental", "{again}");
    assert_eq!(again["base"], seeded["snapshot"]);
    lab.assert_streaming("db2");
    assert_eq!(lab.sql("db2", "SELECT count(*) FROM after_prune"), "100");
}

#[test]
fn snapshot_refuses_when_postgres_on_the_node_is_not_running() {
    let lab = Lab::up("snapstop");
    let db1 = lab.dataset("db1");
    let stop = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -m fast -w stop",
        lab.pg_bin(),
        lab.get("DB1_DATA")
    ));
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let before = names(&lab, &db1);
    let out = lab.pgzfs("db1", &["snapshot"]);
    assert_eq!(out.status.code(), Some(3), "refused for safety");
    assert!(
        stderr_of(&out).contains("not reachable"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        names(&lab, &db1),
        before,
        "no snapshot without a backup behind it"
    );
}

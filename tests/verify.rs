//! `pgzfs verify` on real zfs-fuse and PostgreSQL 15: a snapshot is proven restorable by
//! a throwaway server on its clone, a broken one fails with the reason, and whatever
//! happens (a failure, SIGTERM) no clone and no server are left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

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

/// Every dataset of the lab's pool whose name says it is a verify clone.
fn verify_clones(lab: &Lab) -> Vec<String> {
    lab.zfs(&["get", "-r", "-H", "-o", "name", "type", lab.pool()])
        .lines()
        .filter(|name| name.contains("-pgzfs-verify-"))
        .map(str::to_string)
        .collect()
}

/// Where this lab's verify runs make their private directories: TMPDIR is set per lab,
/// so that tests running in parallel never see each other's throwaway servers.
fn tmp_dir(lab: &Lab) -> PathBuf {
    let dir = lab.dir.join("tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// pgzfs on `node` as an operator runs it, with this lab's TMPDIR.
fn pgzfs(lab: &Lab, node: &str, args: &[&str]) -> std::process::Output {
    let out = lab
        .pgzfs_command(node, args)
        .env("TMPDIR", tmp_dir(lab))
        .output()
        .expect("run pgzfs");
    eprintln!(
        "$ pgzfs --node {node} {}\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What verify runs left in this lab's TMPDIR (their private directories).
fn leftovers(lab: &Lab) -> Vec<PathBuf> {
    std::fs::read_dir(tmp_dir(lab))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Processes whose command line mentions a verify clone's private directory of this lab.
fn verify_servers(lab: &Lab) -> Vec<String> {
    let needle = format!("{}/pgzfs-verify-", tmp_dir(lab).display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("postgres") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

fn verified_prop(lab: &Lab, snapshot: &str) -> String {
    lab.zfs(&["get", "-H", "-o", "value", "pgzfs:verified", snapshot])
        .trim()
        .to_string()
}

fn take_snapshot(lab: &Lab) -> String {
    let out = lab.pgzfs("db1", &["snapshot"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_good_snapshot_verifies_on_the_primary_and_on_a_streaming_standby() {
    let lab = Lab::up("verifyok");
    let seed = lab.reset_secondary("db2");
    lab.assert_streaming("db2");
    let receiver_before = lab.sql("db2", "SELECT pid FROM pg_stat_wal_receiver");

    // On the primary, the newest pgzfs snapshot is checked by default.
    let snapshot = take_snapshot(&lab);
    let out = pgzfs(&lab, "db1", &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let report = json_of(&out);
    assert_eq!(report["verdict"], "pass", "{report}");
    assert_eq!(report["snapshot"].as_str(), Some(snapshot.as_str()));
    assert_eq!(report["problems"].as_array().unwrap().len(), 0, "{report}");
    let postgres = report["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "postgres")
        .expect("the postgres database was checked");
    assert!(
        postgres["btree_indexes_checked"].as_u64().unwrap() >= 3,
        "amcheck ran on the pgbench indexes: {report}"
    );
    assert!(
        postgres["heaps_checked"].as_u64().unwrap() >= 4,
        "verify_heapam ran on PostgreSQL 15: {report}"
    );
    // The row counts are those of the primary when the snapshot was taken.
    assert_eq!(
        postgres["row_counts"]["public.pgbench_accounts"].as_i64(),
        Some(
            lab.sql("db1", "SELECT count(*) FROM pgbench_accounts")
                .parse()
                .unwrap()
        ),
        "{report}"
    );
    // The lab's cluster has no data checksums: said, not pretended.
    assert!(
        report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().contains("checksums are off")),
        "{report}"
    );
    let recorded = verified_prop(&lab, &snapshot);
    assert!(
        recorded.starts_with("20") && recorded.ends_with("Z/pass"),
        "pgzfs:verified = {recorded:?}"
    );
    assert!(verify_clones(&lab).is_empty(), "the clone is destroyed");
    assert!(verify_servers(&lab).is_empty(), "the server is stopped");
    assert_eq!(
        leftovers(&lab),
        Vec::<PathBuf>::new(),
        "no private directory left"
    );

    // On the standby: its copy of the seed snapshot, without disturbing its streaming.
    let out = pgzfs(&lab, "db2", &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let report = json_of(&out);
    assert_eq!(report["verdict"], "pass", "{report}");
    let standby_copy =
        seed["snapshot"]
            .as_str()
            .unwrap()
            .replacen(&lab.dataset("db1"), &lab.dataset("db2"), 1);
    assert_eq!(report["snapshot"].as_str(), Some(standby_copy.as_str()));
    assert!(verified_prop(&lab, &standby_copy).ends_with("/pass"));
    lab.assert_streaming("db2");
    assert_eq!(
        lab.sql("db2", "SELECT pid FROM pg_stat_wal_receiver"),
        receiver_before,
        "the standby's WAL receiver kept its connection"
    );
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 100",
    );
    lab.assert_same_contents("db1", "db2");
    assert!(verify_clones(&lab).is_empty());
    assert!(verify_servers(&lab).is_empty());
    assert_eq!(leftovers(&lab), Vec::<PathBuf>::new());

    // The text summary an operator reads names the verdict.
    let out = pgzfs(&lab, "db1", &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": PASS"), "{text}");
}

/// A copy of db1's snapshot as node `node`'s dataset, damaged by `damage` (given the
/// copy's data directory) and snapshotted under a pgzfs name, with a config entry.
fn broken_node(lab: &Lab, node: &str, snapshot: &str, damage: impl FnOnce(&Path)) -> String {
    let dataset = lab.dataset(node);
    let mountpoint = lab.dir.join(node);
    lab.zfs(&[
        "clone",
        "-o",
        &format!("mountpoint={}", mountpoint.display()),
        snapshot,
        &dataset,
    ]);
    damage(&mountpoint.join("data"));
    let broken = format!("{dataset}@pgzfs-20261201T000000Z");
    lab.zfs(&["snapshot", &broken]);
    lab.append_config_node(&format!(
        "[[nodes]]\nname = \"{node}\"\nhost = \"127.0.0.1\"\ndataset = \"{dataset}\"\n\
         data_dir = \"{}/data\"\nmountpoint = \"{}\"\npg_port = 1\nlock_file = \"{}/{node}.lock\"\n",
        mountpoint.display(),
        mountpoint.display(),
        lab.dir.display()
    ));
    broken
}

#[test]
fn a_snapshot_that_lacks_a_table_file_or_has_a_damaged_index_fails_and_leaves_no_clone() {
    let lab = Lab::up("verifybad");
    let snapshot = take_snapshot(&lab);
    let table_file = lab.sql("db1", "SELECT pg_relation_filepath('pgbench_accounts')");
    let index_file = lab.sql(
        "db1",
        "SELECT pg_relation_filepath('pgbench_accounts_pkey')",
    );

    // A table's data file is missing from the snapshot.
    let missing = broken_node(&lab, "db3", &snapshot, |data| {
        std::fs::remove_file(data.join(&table_file)).unwrap();
    });
    let out = pgzfs(&lab, "db3", &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report = json_of(&out);
    assert_eq!(report["verdict"], "fail", "{report}");
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("pgbench_accounts") && problems.contains("could not open file"),
        "the verdict names the table and what is wrong: {problems}"
    );
    assert!(verified_prop(&lab, &missing).ends_with("/fail"));
    assert!(verify_clones(&lab).is_empty(), "the clone is destroyed");
    assert!(verify_servers(&lab).is_empty(), "the server is stopped");
    assert_eq!(
        leftovers(&lab),
        Vec::<PathBuf>::new(),
        "no private directory left"
    );

    // An index page overwritten with zeros: the server starts, amcheck finds it.
    let damaged = broken_node(&lab, "db4", &snapshot, |data| {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(data.join(&index_file))
            .unwrap();
        file.seek(SeekFrom::Start(8192)).unwrap();
        file.write_all(&[0u8; 8192]).unwrap();
    });
    let out = pgzfs(
        &lab,
        "db4",
        &["verify", damaged.split('@').nth(1).unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report = json_of(&out);
    assert_eq!(report["verdict"], "fail", "{report}");
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("pgbench_accounts_pkey"),
        "amcheck names the damaged index: {problems}"
    );
    assert!(verified_prop(&lab, &damaged).ends_with("/fail"));
    assert!(verify_clones(&lab).is_empty());
    assert!(verify_servers(&lab).is_empty());
    assert_eq!(leftovers(&lab), Vec::<PathBuf>::new());
    // db1 itself was never touched.
    assert_eq!(
        lab.sql("db1", "SELECT count(*) > 0 FROM pgbench_accounts"),
        "t"
    );
}

#[test]
fn a_verify_stopped_by_sigterm_leaves_nothing_and_a_killed_ones_leftovers_go_with_the_next_run() {
    let lab = Lab::up("verifyterm");
    take_snapshot(&lab);
    // Enough rows that the checks take a moment after the server is up.
    lab.sql(
        "db1",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 400000) g; \
         CREATE INDEX big_v ON big (v)",
    );
    take_snapshot(&lab);
    let (child, socket) = start_verify(&lab);
    eprintln!("throwaway server up at {}", socket.display());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "an interrupted verify fails");
    assert!(verify_clones(&lab).is_empty(), "no clone is left");
    assert!(verify_servers(&lab).is_empty(), "no server is left");
    assert!(!socket.exists(), "the private directory is gone");
    assert_eq!(leftovers(&lab), Vec::<PathBuf>::new());
    // Interrupted is no verdict: nothing recorded on the newest snapshot.
    let newest = lab.snapshots(&lab.dataset("db1")).last().unwrap().0.clone();
    assert_eq!(verified_prop(&lab, &newest), "-");

    // SIGKILL gives no chance to clean up: the clone and its server stay behind...
    let (mut child, socket) = start_verify(&lab);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        verify_clones(&lab).len(),
        1,
        "the killed run's clone is still there"
    );
    assert!(socket.exists());
    // ... until the next verify, which removes them first and then does its work.
    let out = pgzfs(&lab, "db1", &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        common::file_text(&lab.dir.join("pgzfs.log"))
            .contains("left behind by a verify that did not finish"),
        "the removal is logged"
    );
    assert_eq!(json_of(&out)["verdict"], "pass");
    assert!(verify_clones(&lab).is_empty());
    assert!(verify_servers(&lab).is_empty());
    assert_eq!(leftovers(&lab), Vec::<PathBuf>::new());
}

/// Start `pgzfs verify` on db1 and wait until its throwaway server runs (its socket
/// exists): the moment to interrupt it.
fn start_verify(lab: &Lab) -> (std::process::Child, PathBuf) {
    let mut child = lab
        .pgzfs_command("db1", &["verify", "--json"])
        .env("TMPDIR", tmp_dir(lab))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgzfs verify");
    // Wait until the throwaway server runs (its socket exists), then stop pgzfs as an
    // init system would.
    let deadline = Instant::now() + Duration::from_secs(120);
    let socket = loop {
        if let Some(socket) = verify_socket(&tmp_dir(lab)) {
            break socket;
        }
        assert!(
            Instant::now() < deadline,
            "the throwaway server never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "verify ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (child, socket)
}

/// The socket of a running verify server: TMPDIR/pgzfs-verify-*/sock/.s.PGSQL.*
fn verify_socket(tmp: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(tmp).ok()?.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("pgzfs-verify-")
        {
            continue;
        }
        for sock in std::fs::read_dir(entry.path().join("sock")).ok()?.flatten() {
            let name = sock.file_name().to_string_lossy().into_owned();
            if name.starts_with(".s.PGSQL.") && !name.ends_with(".lock") {
                return Some(sock.path());
            }
        }
    }
    None
}

//! Re-seeding a standby, end to end on real zfs-fuse, sshd and PostgreSQL 15.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{file_text, stderr_of, wait_for_process, Lab};

#[test]
fn first_full_reseed_then_incremental_reseed_keep_the_standby_streaming_and_equal() {
    let lab = Lab::up("fullincr");
    assert!(
        !lab.dataset_exists(&lab.dataset("db2")),
        "db2 starts without a dataset"
    );

    // The operator previews first: nothing may change.
    let out = lab.pgzfs("db2", &["reset-secondary", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("full"),
        "a standby without a dataset gets a full copy: {plan}"
    );
    assert!(
        !lab.dataset_exists(&lab.dataset("db2")),
        "--dry-run created nothing"
    );
    assert!(
        lab.snapshots(&lab.dataset("db1")).is_empty(),
        "--dry-run took no snapshot on the primary"
    );

    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    assert!(
        full["bytes"].as_u64().unwrap() > 1_000_000,
        "a full stream carries the whole cluster: {full}"
    );
    for step in [
        "preflight",
        "lock",
        "slot",
        "backup start",
        "snapshot",
        "backup stop",
        "postgres stop",
        "send/receive",
        "postgres start",
        "catch-up",
    ] {
        assert!(
            full["steps"][step].is_number(),
            "the summary times step {step}: {full}"
        );
    }
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");

    // The snapshot explains itself.
    let snapshot = full["snapshot"].as_str().unwrap();
    assert!(
        snapshot.starts_with(&format!("{}@pgzfs-", lab.dataset("db1"))),
        "{snapshot}"
    );
    let lsn = lab.zfs(&["get", "-H", "-o", "value", "pgzfs:lsn", snapshot]);
    assert_eq!(lsn.trim(), full["start_lsn"].as_str().unwrap());
    let sysid = lab.zfs(&["get", "-H", "-o", "value", "pgzfs:sysid", snapshot]);
    assert_eq!(
        sysid.trim(),
        lab.sql("db1", "SELECT system_identifier FROM pg_control_system()")
    );
    // Per-node settings survived the copy of the primary's files.
    assert_eq!(lab.sql("db2", "SHOW port"), lab.get("DB2_PORT"));
    assert!(lab.data_dir("db2").join("standby.signal").exists());
    // The new common base is held on both sides.
    let held = |s: &str| {
        lab.zfs(&["get", "-H", "-o", "value", "userrefs", s])
            .trim()
            .to_string()
    };
    let standby_copy = snapshot.replacen(&lab.dataset("db1"), &lab.dataset("db2"), 1);
    assert_eq!(held(snapshot), "1");
    assert_eq!(held(&standby_copy), "1");

    // Writes on the primary, then an incremental re-seed.
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 10 = 0",
    );
    lab.sql(
        "db1",
        "CREATE TABLE after_first_seed AS SELECT generate_series(1, 1000) AS n",
    );
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    assert_eq!(
        incremental["base"].as_str(),
        Some(snapshot),
        "the base is the previous common snapshot"
    );
    // (Most of an incremental stream on a tiny database is WAL written since the last cut.)
    assert!(
        incremental["bytes"].as_u64().unwrap() < full["bytes"].as_u64().unwrap(),
        "the incremental stream follows the changed blocks: {} vs full {}",
        incremental["bytes"],
        full["bytes"]
    );
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    assert_eq!(
        lab.sql("db2", "SELECT count(*) FROM after_first_seed"),
        "1000"
    );
    // The hold moved to the new base; the old one is released on both sides.
    assert_eq!(held(snapshot), "0");
    assert_eq!(held(incremental["snapshot"].as_str().unwrap()), "1");

    // Everything was logged to the log file support reads.
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains("send/receive: done"),
        "log file has the steps:\n{log}"
    );
    assert!(
        !log.contains(&lab_password(&lab)),
        "the password never reaches the log"
    );
}

fn lab_password(lab: &Lab) -> String {
    let pgpass = file_text(std::path::Path::new(lab.get("PGPASSFILE")));
    pgpass
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_standby_that_wrote_its_own_files_is_rolled_back_by_the_incremental_reseed() {
    let lab = Lab::up("diverged");
    lab.reset_secondary("db2");
    // The standby has been running (restartpoints, its own WAL, its own postmaster.pid),
    // and someone left a file in its data directory.
    let stray = lab
        .data_dir("db2")
        .join("stray-file-written-on-the-standby");
    std::fs::write(&stray, "local only").unwrap();
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = 42 WHERE aid < 100",
    );

    let again = lab.reset_secondary("db2");
    assert_eq!(again["mode"], "incremental");
    assert!(
        !stray.exists(),
        "the standby's own changes since the common snapshot were rolled back"
    );
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
}

#[test]
fn the_standby_keeps_only_keep_common_snapshots_and_never_its_held_base() {
    let lab = Lab::up("keepcommon");
    // Also: no `mountpoint` for db2, as in the README's config shape. The new copy is
    // mounted so that PGDATA sits where the primary keeps it inside its dataset.
    let config = common::file_text(&lab.config())
        .replacen("[defaults]\n", "[defaults]\nkeep_common = 2\n", 1)
        .replace(&format!("mountpoint = \"{}/db2\"\n", lab.dir.display()), "");
    assert!(
        !config.contains("/db2\"\npg_port"),
        "db2's mountpoint line is gone"
    );
    lab.write_config(&config);
    let mut last = serde_json::Value::Null;
    for round in 0..4 {
        lab.sql(
            "db1",
            &format!("UPDATE pgbench_accounts SET abalance = {round} WHERE aid < 50"),
        );
        last = lab.reset_secondary("db2");
    }
    let mountpoint = lab.zfs(&[
        "get",
        "-H",
        "-o",
        "value",
        "mountpoint",
        &lab.dataset("db2"),
    ]);
    assert_eq!(mountpoint.trim(), format!("{}/db2", lab.dir.display()));
    let standby: Vec<String> = lab
        .snapshots(&lab.dataset("db2"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(standby.len(), 2, "keep_common = 2: {standby:?}");
    let newest =
        last["snapshot"]
            .as_str()
            .unwrap()
            .replacen(&lab.dataset("db1"), &lab.dataset("db2"), 1);
    assert_eq!(standby.last(), Some(&newest), "the newest is the held base");
    assert_eq!(
        lab.zfs(&["get", "-H", "-o", "value", "userrefs", &newest])
            .trim(),
        "1"
    );
    // The primary keeps its snapshots (retention there is the daemon's job), and only the
    // newest common base stays held.
    let primary = lab.snapshots(&lab.dataset("db1"));
    assert_eq!(primary.len(), 4);
    let held: Vec<_> = primary
        .iter()
        .filter(|(n, _)| lab.zfs(&["get", "-H", "-o", "value", "userrefs", n]).trim() != "0")
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    lab.assert_streaming("db2");
}

/// The standby's start, its catch-up and the holds run side by side; a catch-up that
/// never comes still ends the run with the reason, the new base held on both sides and
/// the copy left a standby, never a primary. Once the cause is gone a plain rerun streams.
#[test]
fn a_standby_that_cannot_stream_is_reported_left_a_standby_and_its_base_kept() {
    let lab = Lab::up("nostream");
    lab.reset_secondary("db2");
    // The primary refuses replication connections (the role lost REPLICATION), while
    // pgzfs's own session and the snapshot work as before. Without the attribute no
    // slot can be made either, so this standby runs without one; and it is cut
    // atomically, so that it starts (consistent from its own WAL) and only the stream
    // is missing.
    let config = file_text(&lab.config()).replacen(
        "name = \"db2\"\n",
        "name = \"db2\"\nuse_slots = false\ncut = \"atomic\"\nstreaming_timeout = \"8s\"\n",
        1,
    );
    lab.write_config(&config);
    lab.sql("db1", "ALTER ROLE replicator NOREPLICATION; SELECT 1");
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = 7 WHERE aid < 100",
    );

    let out = lab.pgzfs("db2", &["reset-secondary", "--yes", "--json"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let why = stderr_of(&out);
    assert!(
        why.contains("did not start streaming within") && why.contains("streaming_timeout"),
        "the failure says what did not happen: {why}"
    );
    assert!(
        why.contains("holds: done"),
        "the holds ran while the catch-up waited: {why}"
    );
    assert_eq!(
        lab.sql("db2", "SELECT pg_is_in_recovery()"),
        "t",
        "the copy runs as a standby"
    );
    // The new cut is the common base, held on both sides.
    let newest_on = |node: &str| lab.snapshots(&lab.dataset(node)).last().unwrap().0.clone();
    let (primary_base, standby_base) = (newest_on("db1"), newest_on("db2"));
    assert_eq!(
        primary_base.split_once('@').unwrap().1,
        standby_base.split_once('@').unwrap().1
    );
    for base in [&primary_base, &standby_base] {
        assert_eq!(
            lab.zfs(&["get", "-H", "-o", "value", "userrefs", base])
                .trim(),
            "1",
            "{base} is held"
        );
    }

    lab.sql("db1", "ALTER ROLE replicator REPLICATION; SELECT 1");
    let rerun = lab.reset_secondary("db2");
    assert_eq!(rerun["mode"], "incremental", "{rerun}");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
}

#[test]
fn a_copy_left_unconfigured_by_an_interrupted_run_is_reseeded_but_a_former_primary_is_not() {
    let lab = Lab::up("unfinished");
    let first = lab.reset_secondary("db2");
    // Put db2 back into the state an interruption right after the receive leaves: the
    // dataset at the received snapshot, a copy of a running primary, PostgreSQL stopped.
    let out = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -m fast -w stop",
        lab.pg_bin(),
        lab.data_dir("db2").display()
    ));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let received =
        first["snapshot"]
            .as_str()
            .unwrap()
            .replacen(&lab.dataset("db1"), &lab.dataset("db2"), 1);
    // (zfs-fuse answers "I/O error" or "busy" for a moment after an unmount.)
    for args in [
        vec!["unmount", &lab.dataset("db2")],
        vec!["rollback", &received],
        vec!["mount", &lab.dataset("db2")],
    ] {
        let ok = (0..20).any(|_| {
            let done = std::process::Command::new("zfs")
                .args(&args)
                .status()
                .unwrap()
                .success();
            if !done {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            done
        });
        assert!(ok, "zfs {args:?} kept failing");
    }
    let marker = lab.data_dir("db2").join("pgzfs.received-not-configured");

    // Without pgzfs's marker this looks like a former primary: refused, nothing changed.
    let out = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("rejoin"),
        "points to rejoin: {}",
        stderr_of(&out)
    );

    // With it (as the interrupted run left it), the rerun finishes the job.
    std::fs::write(
        &marker,
        "received by pgzfs reset-secondary, not yet a standby\n",
    )
    .unwrap();
    let rerun = lab.reset_secondary("db2");
    assert_eq!(rerun["mode"], "incremental");
    assert!(
        !marker.exists(),
        "the marker goes once the copy is a standby"
    );
    lab.assert_streaming("db2");
}

#[test]
fn reset_secondary_on_the_primary_is_refused_and_the_primary_is_untouched() {
    let lab = Lab::up("onprimary");
    let before = lab.snapshots(&lab.dataset("db1"));
    let out = lab.pgzfs("db1", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "refused for safety");
    assert!(
        stderr_of(&out).contains("primary"),
        "the message says why: {}",
        stderr_of(&out)
    );
    assert_eq!(
        lab.sql("db1", "SELECT pg_is_in_recovery()"),
        "f",
        "still a running primary"
    );
    lab.sql("db1", "CREATE TABLE still_writable (x int)");
    assert_eq!(
        lab.snapshots(&lab.dataset("db1")),
        before,
        "no snapshot was taken or destroyed"
    );
}

/// The preflight runs before the node lock (and before a y/N prompt). A promotion that
/// finishes while reset-secondary waits for the lock must be noticed: the re-seed would
/// otherwise stop the new primary and receive over it.
#[test]
fn a_standby_promoted_while_reset_secondary_waits_for_its_lock_is_not_overwritten() {
    let lab = Lab::up("promwait");
    lab.reset_secondary("db2");
    lab.assert_streaming("db2");
    let before = lab.snapshots(&lab.dataset("db2"));

    // Another pgzfs run (here: flock(1) on the same file) holds db2's lock. With -o only
    // flock itself holds it, so killing flock releases it.
    let lock_file = lab.dir.join("db2.lock");
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&lock_file)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reseed = lab
        .pgzfs_command("db2", &["reset-secondary", "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it pass its preflight and start waiting, then promote db2 behind its back.
    std::thread::sleep(Duration::from_secs(4));
    let promoted = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} promote -w",
        lab.pg_bin(),
        lab.data_dir("db2").display()
    ));
    assert!(promoted.status.success(), "{}", stderr_of(&promoted));
    holder.kill().unwrap();
    holder.wait().unwrap();

    let out = reseed.wait_with_output().unwrap();
    eprintln!("{}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(3), "refused once it held the lock");
    assert!(
        stderr_of(&out).contains("primary"),
        "the refusal says db2 is a primary now: {}",
        stderr_of(&out)
    );
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "f");
    lab.sql("db2", "CREATE TABLE written_after_the_promotion (x int)");
    assert_eq!(
        lab.snapshots(&lab.dataset("db2")),
        before,
        "nothing was received over the new primary"
    );
}

#[test]
fn an_unknown_or_changed_ssh_host_key_is_refused() {
    let lab = Lab::up("hostkey");
    let known_hosts = lab.dir.join("ssh/known_hosts");
    let genuine = file_text(&known_hosts);

    std::fs::write(&known_hosts, "").unwrap();
    let out = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(3));
    let said = stderr_of(&out);
    assert!(
        said.contains("SHA256:") && said.contains("ssh-keyscan"),
        "shows the fingerprint and how to accept it: {said}"
    );
    assert!(
        !lab.dataset_exists(&lab.dataset("db2")),
        "nothing was received"
    );

    // A different key recorded for the same host: a possible man in the middle.
    let impostor_dir = lab.dir.join("impostor");
    std::fs::create_dir_all(&impostor_dir).unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(impostor_dir.join("key"))
        .status()
        .unwrap();
    assert!(status.success());
    let impostor_key = file_text(&impostor_dir.join("key.pub"));
    let host = genuine.split_whitespace().next().unwrap();
    let key = impostor_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&known_hosts, format!("{host} {key}\n")).unwrap();
    let out = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_of(&out).contains("CHANGED"), "{}", stderr_of(&out));
    assert!(
        lab.snapshots(&lab.dataset("db1")).is_empty(),
        "refused before the primary was touched"
    );

    std::fs::write(&known_hosts, genuine).unwrap();
    lab.reset_secondary("db2");
}

/// The process's parent PID, from /proc.
fn parent_of(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// A standby with a full copy, and enough new writes on the primary that the next
/// incremental stream takes several seconds: time to interrupt it.
fn lab_with_a_long_incremental_ahead(name: &str) -> (Lab, Vec<(String, String)>) {
    let lab = Lab::up_with(name, 15, 5);
    lab.reset_secondary("db2");
    let before = lab.snapshots(&lab.dataset("db2"));
    lab.sql("db1", "UPDATE pgbench_accounts SET abalance = abalance + 1");
    (lab, before)
}

/// Start an incremental re-seed and wait until its stream is flowing.
fn start_reseed_and_wait_for_the_stream(lab: &Lab) -> (std::process::Child, i32) {
    // (zfs-fuse's zfs rewrites its argv, splitting "ds@snap" into "ds snap".)
    start_and_wait_for_the_stream(
        lab,
        &["reset-secondary", "--yes"],
        &format!("zfs send -i {}", lab.dataset("db1")),
        &format!("zfs receive -u -F {}", lab.dataset("db2")),
        Duration::from_millis(500),
    )
}

/// Start pgzfs on db2 with `args`; return it and the sender's pid once the sender and
/// the receiver (found by their command lines) have run for `flowing`.
fn start_and_wait_for_the_stream(
    lab: &Lab,
    args: &[&str],
    sender: &str,
    receiver: &str,
    flowing: Duration,
) -> (std::process::Child, i32) {
    let child = lab
        .pgzfs_command("db2", args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sender = wait_for_process(sender, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{sender:?} started on the primary"));
    wait_for_process(receiver, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{receiver:?} started on the standby"));
    std::thread::sleep(flowing);
    (child, sender)
}

/// Kill the sending side (zfs send and the SSH session carrying its stream), as a dying
/// primary host would: the run fails.
fn kill_the_sender(child: std::process::Child, sender: i32) {
    let session = parent_of(sender);
    kill(sender, nix::sys::signal::Signal::SIGKILL);
    kill(session, nix::sys::signal::Signal::SIGKILL);
    let out = child.wait_with_output().unwrap();
    eprintln!("interrupted run:\n{}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(1), "the interrupted run fails");
}

/// After an interrupted run: the standby is exactly as before and running again.
fn assert_standby_back_at_its_last_good_state(lab: &Lab, before: &[(String, String)]) {
    assert_eq!(
        lab.snapshots(&lab.dataset("db2")),
        before,
        "the standby's dataset is at its last good state"
    );
    assert_eq!(
        lab.zfs(&["get", "-H", "-o", "value", "mounted", &lab.dataset("db2")])
            .trim(),
        "yes"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.try_sql("db2", "SELECT 1").is_err() {
        assert!(
            Instant::now() < deadline,
            "the previous standby was not restarted"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        lab.sql("db2", "SELECT pg_is_in_recovery()"),
        "t",
        "it is still a standby"
    );
    // The non-exclusive backup ended with its session; no pgzfs session lingers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.sql(
        "db1",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgzfs'",
    ) != "0"
    {
        assert!(
            Instant::now() < deadline,
            "a pgzfs session is still open on the primary"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_sender_killed_mid_stream_leaves_the_standby_as_it_was_and_a_rerun_succeeds() {
    let (lab, before) = lab_with_a_long_incremental_ahead("killsend");
    let (child, sender) = start_reseed_and_wait_for_the_stream(&lab);
    kill_the_sender(child, sender);
    assert_standby_back_at_its_last_good_state(&lab, &before);

    let rerun = lab.reset_secondary("db2");
    assert_eq!(rerun["mode"], "incremental");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
}

#[test]
fn sigterm_during_the_transfer_aborts_cleanly_and_a_rerun_succeeds() {
    let (lab, before) = lab_with_a_long_incremental_ahead("sigterm");
    let (child, _) = start_reseed_and_wait_for_the_stream(&lab);
    kill(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    eprintln!("interrupted run:\n{}", stderr_of(&out));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("interrupted"),
        "says why it stopped"
    );
    assert_standby_back_at_its_last_good_state(&lab, &before);

    let rerun = lab.reset_secondary("db2");
    assert_eq!(rerun["mode"], "incremental");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
}

#[test]
fn a_full_reseed_killed_mid_stream_gives_the_previous_copy_its_name_and_its_boot_mount_back() {
    let lab = Lab::up_with("killfull", 15, 10);
    lab.reset_secondary("db2");
    let dataset = lab.dataset("db2");
    let before = lab.snapshots(&dataset);
    let canmount = |name: &str| {
        lab.zfs(&["get", "-H", "-o", "value", "canmount", name])
            .trim()
            .to_string()
    };
    assert_eq!(canmount(&dataset), "on");
    // The operator asks for a fresh copy; the primary's host dies mid-stream.
    let (child, sender) = start_and_wait_for_the_stream(
        &lab,
        &["reset-secondary", "--full", "--yes"],
        &format!("zfs send {} ", lab.dataset("db1")),
        &format!("zfs receive -u {dataset}"),
        Duration::from_millis(300),
    );
    kill_the_sender(child, sender);

    // The copy kept aside has its name back, and mounts at the next boot as before
    // (it was canmount=noauto while aside).
    assert_standby_back_at_its_last_good_state(&lab, &before);
    assert_eq!(canmount(&dataset), "on", "it mounts at boot again");
    let datasets = lab.zfs(&["list", "-H", "-o", "name", "-t", "filesystem"]);
    assert!(
        !datasets.contains("-pgzfs-old-"),
        "nothing is left aside: {datasets}"
    );

    let rerun = lab.reset_secondary("db2");
    assert_eq!(rerun["mode"], "incremental");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
}

/// A standby finds its source by asking every other node at once. Two that answer as
/// writable primaries (a split brain, or one server named twice) are refused, and so is
/// none at all: before anything changes, with what each node said.
#[test]
fn a_reseed_that_finds_two_primaries_or_none_refuses_and_copies_nothing() {
    let lab = Lab::up("whichprimary");
    // db3 is configured at db1's address and port: as db2 sees it, a second primary.
    lab.append_config_node(&format!(
        "[[nodes]]\nname = \"db3\"\nhost = \"127.0.0.1\"\ndataset = \"{pool}/db3\"\ndata_dir = \"{dir}/db3/data\"\n\
         mountpoint = \"{dir}/db3\"\npg_port = {port}\nlock_file = \"{dir}/db3.lock\"\n",
        pool = lab.pool(),
        dir = lab.dir.display(),
        port = lab.get("DB1_PORT"),
    ));
    let out = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "two primaries: refused");
    let said = stderr_of(&out);
    assert!(
        said.contains("more than one primary (db1, db3)") && said.contains("--from"),
        "the refusal names both and the way out: {said}"
    );
    assert!(
        !lab.dataset_exists(&lab.dataset("db2")),
        "nothing was received"
    );
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");

    // The primary is down, and db3 now names a port nothing listens on.
    let config = file_text(&lab.config()).replace(
        &format!(
            "pg_port = {}\nlock_file = \"{}/db3.lock\"",
            lab.get("DB1_PORT"),
            lab.dir.display()
        ),
        &format!(
            "pg_port = {}\nlock_file = \"{}/db3.lock\"",
            free_port(),
            lab.dir.display()
        ),
    );
    lab.write_config(&config);
    let stopped = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} stop -m fast -w",
        lab.pg_bin(),
        lab.data_dir("db1").display()
    ));
    assert!(stopped.status.success(), "db1 stopped");
    let out = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "no primary: refused");
    let said = stderr_of(&out);
    assert!(
        said.contains("found no reachable primary")
            && said.contains("db1:")
            && said.contains("db3:"),
        "the refusal says what each node answered: {said}"
    );
    assert!(
        !lab.dataset_exists(&lab.dataset("db2")),
        "nothing was received"
    );
}

/// db3, a second standby of db1 beside db2 (not yet copied), which waits at most
/// `lock_timeout` for a lock.
fn add_second_standby(lab: &Lab, lock_timeout: &str) {
    let sock3 = lab.dir.join("sock3");
    std::fs::create_dir_all(&sock3).unwrap();
    assert!(Command::new("chown")
        .arg("postgres:postgres")
        .arg(&sock3)
        .status()
        .unwrap()
        .success());
    let port3 = free_port();
    lab.append_config(&format!(
        "\n[[nodes]]\nname = \"db3\"\nhost = \"127.0.0.1\"\ndataset = \"{pool}/db3\"\ndata_dir = \"{dir}/db3/data\"\nmountpoint = \"{dir}/db3\"\n\
         pg_port = {port3}\nlock_file = \"{dir}/db3.lock\"\npg_log_file = \"{dir}/db3.log\"\nlock_timeout = \"{lock_timeout}\"\n[nodes.pg_settings]\nunix_socket_directories = \"{sock}\"\n",
        pool = lab.pool(),
        dir = lab.dir.display(),
        sock = sock3.display(),
    ));
    let config = file_text(&lab.config()).replace(
        "lock_timeout = \"20s\"",
        &format!("lock_timeout = \"{lock_timeout}\""),
    );
    lab.write_config(&config);
}

#[test]
fn two_reseeds_at_once_never_run_together() {
    let lab = Lab::up("twoatonce");
    // A third node, so that two standbys compete for the primary's re-seed lock.
    add_second_standby(&lab, "1s");

    let spawn = |node: &str| {
        lab.pgzfs_command(node, &["reset-secondary", "--yes"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("db2"), spawn("db3"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    eprintln!("db2:\n{}\ndb3:\n{}", stderr_of(&a), stderr_of(&b));
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(3)],
        "exactly one re-seed ran; the other refused after lock_timeout"
    );
    let loser = if a.status.code() == Some(3) { &a } else { &b };
    assert!(
        stderr_of(loser).contains("advisory lock"),
        "the refusal names the lock: {}",
        stderr_of(loser)
    );

    // The same node twice: the local lock file stops the second run.
    let first = spawn("db2");
    std::thread::sleep(Duration::from_millis(300));
    let second = lab.pgzfs("db2", &["reset-secondary", "--yes"]);
    let first = first.wait_with_output().unwrap();
    let codes = [first.status.code(), second.status.code()];
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(3)),
        "one ran, one was refused: {codes:?}\n{}",
        stderr_of(&second)
    );
}

/// A fleet re-seeding its standbys together: both cut within the same second, and the
/// one that waited for the primary's lock finds its planned name taken by the other's
/// cut (its own list of names is from before the wait). It cuts again under the next
/// free name; both stream, each from its own cut.
#[test]
fn two_standbys_reseeded_in_the_same_second_each_get_their_own_cut() {
    let lab = Lab::up("sameseconds");
    add_second_standby(&lab, "120s");
    lab.reset_secondary("db2");
    lab.reset_secondary("db3");

    let spawn = |node: &str| {
        lab.pgzfs_command(node, &["reset-secondary", "--yes", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Both start just after a second begins, so that both plan the same name; a round
    // in which a slow start still straddled two seconds is run again.
    let mut cut_again = 0;
    for round in 1..=5 {
        lab.sql(
            "db1",
            &format!(
                "UPDATE pgbench_accounts SET abalance = abalance + {round} WHERE aid % 50 = 0"
            ),
        );
        let into_second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        std::thread::sleep(Duration::from_millis(u64::from(1020 - into_second)));
        let (a, b) = (spawn("db2"), spawn("db3"));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let said = format!("db2:\n{}\ndb3:\n{}", stderr_of(&a), stderr_of(&b));
        assert!(
            a.status.success() && b.status.success(),
            "both re-seeds succeed, one after the other: {said}"
        );
        let cut = |out: &std::process::Output| {
            let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            summary["snapshot"].as_str().unwrap().to_string()
        };
        let (cut2, cut3) = (cut(&a), cut(&b));
        assert_ne!(cut2, cut3, "each standby has its own cut: {said}");
        for node in ["db2", "db3"] {
            lab.assert_streaming(node);
            lab.assert_same_contents("db1", node);
        }
        eprintln!("round {round}: db2 from {cut2}, db3 from {cut3}");
        if said.contains("cutting again under a name that is free now") {
            let (first, second) = if cut2 < cut3 {
                (&cut2, &cut3)
            } else {
                (&cut3, &cut2)
            };
            assert_eq!(
                *second,
                format!("{first}-2"),
                "the second cut is the first's second with a suffix: {said}"
            );
            cut_again += 1;
            break;
        }
        eprintln!("round {round}: no name was taken meanwhile; again");
    }
    assert_eq!(
        cut_again, 1,
        "in five rounds the two re-seeds never planned the same name"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

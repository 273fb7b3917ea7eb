//! `pgzfs check --setup` in the lab (real zfs-fuse, sshd, PostgreSQL 15): on a node set
//! up as the README says it finds nothing wrong; then the operator's usual mistakes,
//! one at a time, each put right before the next, and each must be the step named
//! first, with the command that fixes it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::Lab;

/// `check --setup --json` on db1: the exit code and the report.
fn setup_report(lab: &Lab) -> (Option<i32>, serde_json::Value) {
    let out = lab.pgzfs("db1", &["check", "--setup", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --setup --json printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), report)
}

/// The finding named `check`, which must be there.
fn finding<'a>(report: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no finding {check} in {report:#}"))
}

/// The report names `check` as the first wrong step, with a fix that says `fix_says`.
fn assert_first_wrong(report: &serde_json::Value, code: Option<i32>, check: &str, fix_says: &str) {
    assert_eq!(code, Some(1), "a wrong step fails the check: {report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_wrong"], check, "{report:#}");
    let found = finding(report, check);
    assert_eq!(found["verdict"], "wrong", "{found:#}");
    let fix = found["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains(fix_says),
        "the fix for {check} should say {fix_says:?}: {fix}"
    );
}

fn assert_all_right(lab: &Lab, after: &str) {
    let (code, report) = setup_report(lab);
    assert_eq!(code, Some(0), "after {after}, nothing is wrong: {report:#}");
    assert_eq!(report["first_wrong"], serde_json::Value::Null, "{report:#}");
}

fn restart_db1(lab: &Lab) {
    let out = lab.as_postgres(&format!(
        "{}/pg_ctl -w -t 60 -D {} restart -m fast -l {}",
        lab.pg_bin(),
        lab.data_dir("db1").display(),
        lab.dir.join("db1.log").display()
    ));
    assert!(
        out.status.success(),
        "restarting db1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_setup_names_each_broken_install_step_with_its_fix() {
    let lab = Lab::up("setup");

    // As scripts/lab sets it up, which is what the README asks for.
    let (code, report) = setup_report(&lab);
    assert_eq!(
        code,
        Some(0),
        "a lab set up as the README says passes: {report:#}"
    );
    for check in [
        "dataset",
        "dataset.mountpoint",
        "dataset.canmount",
        "pgpass.owner",
        "pgpass.mode",
        "known_hosts.db2",
        "postgres.wal_level",
        "postgres.max_wal_senders",
        "postgres.max_replication_slots",
        "postgres.role",
    ] {
        assert_eq!(
            finding(&report, check)["verdict"],
            "ok",
            "{check}: {report:#}"
        );
    }

    // 1. The pgpass file readable by everyone: libpq would ignore it.
    let pgpass = PathBuf::from(lab.get("PGPASSFILE"));
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, report) = setup_report(&lab);
    assert_first_wrong(
        &report,
        code,
        "pgpass.mode",
        &format!("chmod 0600 {}", pgpass.display()),
    );
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();

    // 2. The pgpass file created by root: postgres's WAL receiver cannot read it.
    nix::unistd::chown(&pgpass, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    let (code, report) = setup_report(&lab);
    assert_first_wrong(
        &report,
        code,
        "pgpass.owner",
        &format!("chown postgres {}", pgpass.display()),
    );
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    nix::unistd::chown(&pgpass, Some(postgres.uid), None).unwrap();
    assert_all_right(&lab, "the pgpass file is fixed");

    // 3. The peer's host key was never recorded: pgzfs would refuse to connect, and
    // the fix compares fingerprints rather than trusting the first key offered.
    let known_hosts = PathBuf::from(lab.get("KNOWN_HOSTS"));
    let saved = std::fs::read(&known_hosts).unwrap();
    std::fs::write(&known_hosts, "").unwrap();
    let (code, report) = setup_report(&lab);
    assert_first_wrong(&report, code, "known_hosts.db2", "ssh-keyscan");
    let fix = finding(&report, "known_hosts.db2")["fix"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fix.contains("ssh-keygen -lf"), "{fix}");
    assert!(
        std::fs::read(&known_hosts).unwrap().is_empty(),
        "check --setup trusts no key by itself"
    );
    std::fs::write(&known_hosts, &saved).unwrap();

    // 4. The backup function not granted to the replication role.
    lab.sql(
        "db1",
        "REVOKE EXECUTE ON FUNCTION pg_backup_start(text, boolean) FROM replicator",
    );
    let (code, report) = setup_report(&lab);
    assert_first_wrong(
        &report,
        code,
        "postgres.role",
        "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO replicator;",
    );
    lab.sql(
        "db1",
        "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO replicator",
    );
    assert_all_right(&lab, "the grants are back");

    // 5. A server that writes too little WAL for any standby.
    lab.sql("db1", "ALTER SYSTEM SET wal_level = minimal");
    lab.sql("db1", "ALTER SYSTEM SET max_wal_senders = 0");
    restart_db1(&lab);
    let (code, report) = setup_report(&lab);
    assert_first_wrong(
        &report,
        code,
        "postgres.wal_level",
        "ALTER SYSTEM SET wal_level = replica",
    );
    assert_eq!(
        finding(&report, "postgres.max_wal_senders")["verdict"],
        "wrong"
    );
    lab.sql("db1", "ALTER SYSTEM RESET wal_level");
    lab.sql("db1", "ALTER SYSTEM RESET max_wal_senders");
    restart_db1(&lab);
    assert_all_right(&lab, "the WAL settings are back");

    // 6. The dataset not there at all (a node whose zfs create was forgotten).
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let missing = format!("{}/forgotten", lab.pool());
    lab.write_config(&config.replacen(
        &format!("dataset = \"{}\"", lab.dataset("db1")),
        &format!("dataset = \"{missing}\""),
        1,
    ));
    let (code, report) = setup_report(&lab);
    assert_first_wrong(
        &report,
        code,
        "dataset",
        "zfs create -o recordsize=16k -o mountpoint=",
    );
    assert!(finding(&report, "dataset")["fix"]
        .as_str()
        .unwrap()
        .ends_with(&missing));
    lab.write_config(&config);
    assert_all_right(&lab, "the config names the dataset again");
}

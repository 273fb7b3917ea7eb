//! A primary laid out as people who tune PostgreSQL on ZFS lay it out: the data directory
//! on `db1` (16k records), pg_wal on the child `db1/wal` (128k records, its own dataset),
//! and a tablespace on a dataset outside that tree. End to end on real zfs-fuse, sshd and
//! PostgreSQL 15.

mod common;

use std::path::Path;
use std::process::Command;

use common::{stderr_of, Lab};

/// Move db1's pg_wal onto its own child dataset and give it a tablespace dataset, as an
/// operator would before adopting pgzfs; both nodes get the `tablespaces` entry.
fn lay_out_the_primary_as_a_tree(lab: &Lab) {
    let pool = lab.pool();
    let dir = lab.dir.display().to_string();
    let data = lab.data_dir("db1");
    let pg_ctl = format!("{}/pg_ctl", lab.pg_bin());
    let stop = lab.as_postgres(&format!("{pg_ctl} -D {} -w -t 60 stop", data.display()));
    assert!(stop.status.success(), "stop db1: {}", stderr_of(&stop));

    // pg_wal: moved aside, a dataset mounted in its place, the files copied back.
    let wal = data.join("pg_wal");
    let old = data.join("pg_wal.old");
    std::fs::rename(&wal, &old).unwrap();
    std::fs::create_dir(&wal).unwrap();
    lab.zfs(&[
        "create",
        "-o",
        "recordsize=128k",
        "-o",
        &format!("mountpoint={}", wal.display()),
        &format!("{pool}/db1/wal"),
    ]);
    run(
        "cp",
        &["-a", &format!("{}/.", old.display()), wal.to_str().unwrap()],
    );
    run("chown", &["postgres:postgres", wal.to_str().unwrap()]);
    run("chmod", &["0700", wal.to_str().unwrap()]);
    std::fs::remove_dir_all(&old).unwrap();

    // The tablespace: another dataset of the pool, outside db1's tree.
    let ts = format!("{dir}/db1-ts");
    lab.zfs(&[
        "create",
        "-o",
        "recordsize=16k",
        "-o",
        &format!("mountpoint={ts}"),
        &format!("{pool}/db1ts"),
    ]);
    std::fs::create_dir(format!("{ts}/pg")).unwrap();
    run("chown", &["postgres:postgres", &format!("{ts}/pg")]);

    let start = lab.as_postgres(&format!(
        "{pg_ctl} -D {} -l {dir}/db1.log -w -t 60 start",
        data.display()
    ));
    assert!(start.status.success(), "start db1: {}", stderr_of(&start));
    lab.sql("db1", &format!("CREATE TABLESPACE fast LOCATION '{ts}/pg'"));
    lab.sql(
        "db1",
        "CREATE TABLE orders TABLESPACE fast AS SELECT g AS id, md5(g::text) AS item FROM generate_series(1, 5000) g",
    );

    // Each node names the tablespace's dataset and where it mounts it.
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let mut text = config.clone();
    for node in ["db1", "db2"] {
        let line = format!("mountpoint = \"{dir}/{node}\"\n");
        assert!(text.contains(&line), "the lab config has {line}");
        text = text.replacen(
            &line,
            &format!(
                "{line}tablespaces = [{{ name = \"fast\", dataset = \"{pool}/{node}ts\", mountpoint = \"{dir}/{node}-ts\" }}]\n"
            ),
            1,
        );
    }
    lab.write_config(&text);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        stderr_of(&out)
    );
}

/// A property of a dataset or snapshot as `zfs get` shows it.
fn zfs_get(lab: &Lab, prop: &str, ds: &str) -> String {
    lab.zfs(&["get", "-H", "-o", "value", prop, ds])
        .trim()
        .to_string()
}

/// The snapshot name of the cut a re-seed's `--json` summary reports.
fn cut_of(summary: &serde_json::Value) -> String {
    summary["snapshot"]
        .as_str()
        .unwrap()
        .split('@')
        .nth(1)
        .unwrap()
        .to_string()
}

/// `send_pg_wal` in `[defaults]`: true, or (false) the default.
fn send_pg_wal(lab: &Lab, on: bool) {
    let line = "send_pg_wal = true\n";
    let config = std::fs::read_to_string(lab.config()).unwrap();
    let config = if on {
        config.replacen("[defaults]\n", &format!("[defaults]\n{line}"), 1)
    } else {
        config.replacen(line, "", 1)
    };
    lab.write_config(&config);
}

fn orders(lab: &Lab, node: &str) -> String {
    lab.sql(
        node,
        "SELECT count(*) || ':' || md5(string_agg(id || item, ',' ORDER BY id)) FROM orders",
    )
}

fn wait_same_orders(lab: &Lab) {
    let want = orders(lab, "db1");
    for _ in 0..240 {
        if lab.try_sql("db2", "SELECT count(*) || ':' || md5(string_agg(id || item, ',' ORDER BY id)) FROM orders").as_deref() == Ok(want.as_str()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("db2 never showed the primary's orders ({want})");
}

#[test]
fn a_tree_with_wal_and_a_tablespace_reseeds_full_then_incremental_and_refuses_a_child_without_the_base(
) {
    let lab = Lab::up("trees");
    lay_out_the_primary_as_a_tree(&lab);
    // pg_wal travels with the cut here, so that it is a member like the tablespace (the
    // default leaves it home: see the next test).
    send_pg_wal(&lab, true);
    let pool = lab.pool().to_string();
    let dir = lab.dir.display().to_string();

    // The preview names every dataset of the cluster.
    let out = lab.pgzfs("db2", &["reset-secondary", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&format!("child: full {pool}/db1/wal@")),
        "{plan}"
    );
    assert!(plan.contains(&format!("into {pool}/db2/wal")), "{plan}");
    assert!(
        plan.contains(&format!("tablespace fast: full {pool}/db1ts@")),
        "{plan}"
    );
    // zfs-fuse takes one snapshot per call: the plan says what the consistency rests on.
    assert!(plan.contains("backup_label and tablespace_map"), "{plan}");

    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    wait_same_orders(&lab);
    // pg_wal is its own dataset on the standby too, with the primary's record size, and
    // mounted at the standby's pg_wal.
    let get = |prop: &str, ds: &str| zfs_get(&lab, prop, ds);
    assert_eq!(get("recordsize", &format!("{pool}/db2/wal")), "128K");
    assert_eq!(get("recordsize", &format!("{pool}/db2")), "16K");
    assert_eq!(
        get("mountpoint", &format!("{pool}/db2/wal")),
        lab.data_dir("db2").join("pg_wal").display().to_string()
    );
    assert_eq!(get("mounted", &format!("{pool}/db2/wal")), "yes");
    // The tablespace link points where db2 keeps it, not at the primary's directory.
    let oid = lab.sql(
        "db1",
        "SELECT oid FROM pg_tablespace WHERE spcname = 'fast'",
    );
    let link = std::fs::read_link(lab.data_dir("db2").join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, Path::new(&format!("{dir}/db2-ts/pg")));
    assert_eq!(get("mounted", &format!("{pool}/db2ts")), "yes");

    // Writes into the tablespace, then an incremental of every dataset from one base.
    lab.sql(
        "db1",
        "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(5001, 7000) g",
    );
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    lab.assert_streaming("db2");
    wait_same_orders(&lab);
    assert_eq!(lab.sql("db2", "SELECT count(*) FROM orders"), "7000");
    let name = cut_of(&incremental);
    for ds in [
        format!("{pool}/db2"),
        format!("{pool}/db2/wal"),
        format!("{pool}/db2ts"),
    ] {
        assert_eq!(
            get("userrefs", &format!("{ds}@{name}")),
            "1",
            "the new base is held on {ds} like on the dataset"
        );
    }
    for ds in [format!("{pool}/db1/wal"), format!("{pool}/db1ts")] {
        assert_eq!(
            get("userrefs", &format!("{ds}@{name}")),
            "1",
            "held on the primary's {ds}"
        );
    }

    // Retention on the primary takes whole cuts: the first cut (no longer anyone's base)
    // goes from the dataset, its wal child and the tablespace together; the held one
    // stays on all three.
    let first = cut_of(&full);
    lab.append_config(
        "\n[retention]\nhourly = 1\ndaily = 0\nweekly = 0\nmonthly = 0\nyearly = 0\n",
    );
    let out = lab.pgzfs("db1", &["prune", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let on_primary = [
        format!("{pool}/db1"),
        format!("{pool}/db1/wal"),
        format!("{pool}/db1ts"),
    ];
    for ds in &on_primary {
        let names: Vec<String> = lab.snapshots(ds).into_iter().map(|(n, _)| n).collect();
        assert!(
            !names.contains(&format!("{ds}@{first}")),
            "{first} pruned from {ds}: {names:?}"
        );
        assert!(
            names.contains(&format!("{ds}@{name}")),
            "the held cut stays on {ds}: {names:?}"
        );
    }

    // Someone destroys the common base on the standby's wal dataset: the data directory
    // could go forward from it, pg_wal could not. The plan refuses, naming the dataset.
    let wal_base = format!("{pool}/db2/wal@{name}");
    lab.zfs(&["release", "pgzfs-db2", &wal_base]);
    lab.zfs(&["destroy", &wal_base]);
    let out = lab.pgzfs("db2", &["reset-secondary", "--dry-run"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("{pool}/db2/wal")),
        "{}",
        stderr_of(&out)
    );
    assert!(stderr_of(&out).contains("--full"), "{}", stderr_of(&out));
    // `snapshots` names the incomplete cut, `status` the dataset whose base is gone.
    let out = lab.pgzfs("db2", &["snapshots", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cut = listing["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot"] == format!("{pool}/db2@{name}"))
        .expect("the dataset keeps its part of the cut");
    assert_eq!(
        cut["missing_from"],
        serde_json::json!([format!("{pool}/db2/wal")])
    );
    let out = lab.pgzfs("db2", &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let db2 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "db2")
        .unwrap()
        .clone();
    assert_eq!(db2["dataset_bases"]["tablespace:fast"], name, "{db2}");
    assert_ne!(db2["dataset_bases"]["wal"], name, "{db2}");
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "incomplete_cut" && w["node"] == "db2"),
        "{status}"
    );

    // The way out the refusal names: --full keeps the old tree and tablespace aside and
    // copies everything again.
    let out = lab.pgzfs("db2", &["reset-secondary", "--full", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["mode"], "full");
    let aside = again["renamed_aside"].as_str().unwrap().to_string();
    assert!(
        lab.dataset_exists(&format!("{aside}/wal")),
        "the old wal moved aside with its parent"
    );
    assert_eq!(get("canmount", &format!("{aside}/wal")), "noauto");
    let all = lab.zfs(&["list", "-H", "-o", "name", "-t", "filesystem"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with(&format!("{pool}/db2ts-pgzfs-old-"))),
        "the old tablespace dataset is kept: {all}"
    );
    lab.assert_streaming("db2");
    wait_same_orders(&lab);
    assert_eq!(get("mounted", &format!("{pool}/db2/wal")), "yes");
    assert_eq!(get("mounted", &format!("{pool}/db2ts")), "yes");
}

/// The default: the standby's pg_wal is its own dataset, left out of every stream, and
/// the standby streams the WAL it needs from its slot, as one made by pg_basebackup would.
/// A standby that received pg_wal before (send_pg_wal = true) moves over with a plain
/// incremental; a --full makes a new pg_wal dataset of its own.
#[test]
fn a_standby_of_a_tree_gets_its_wal_from_the_slot_not_from_the_stream() {
    use std::os::unix::fs::MetadataExt;
    let lab = Lab::up("treewal");
    lay_out_the_primary_as_a_tree(&lab);
    let pool = lab.pool().to_string();
    let get = |prop: &str, ds: &str| zfs_get(&lab, prop, ds);
    send_pg_wal(&lab, true);
    let first = lab.reset_secondary("db2");
    let first_cut = cut_of(&first);
    let wal_first = |node: &str| format!("{pool}/{node}/wal@{first_cut}");
    assert_eq!(
        get("userrefs", &wal_first("db2")),
        "1",
        "sent, and held as a base"
    );
    wait_same_orders(&lab);

    // Back to the default. The plan says what does not travel.
    send_pg_wal(&lab, false);
    let out = lab.pgzfs("db2", &["reset-secondary", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains(&format!(
            "pg_wal: {pool}/db1/wal is not sent; {pool}/db2/wal is emptied"
        )),
        "{plan}"
    );
    assert!(!plan.contains("child: "), "{plan}");

    // What the old copy's pg_wal holds must not reach the new one.
    let leftover = lab
        .data_dir("db2")
        .join("pg_wal")
        .join("000000010000000000000099");
    std::fs::write(&leftover, b"WAL of the copy being replaced").unwrap();
    lab.sql(
        "db1",
        "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(5001, 9000) g",
    );
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    lab.assert_streaming("db2");
    wait_same_orders(&lab);
    assert_eq!(lab.sql("db2", "SELECT count(*) FROM orders"), "9000");
    assert!(!leftover.exists(), "the replaced copy's WAL is gone");
    assert_eq!(get("pgzfs:own_pg_wal", &format!("{pool}/db2/wal")), "yes");
    let cut = cut_of(&incremental);
    assert!(
        !lab.dataset_exists(&format!("{pool}/db2/wal@{cut}")),
        "nothing of the cut's pg_wal was received"
    );
    // The base db2 held on pg_wal is nobody's base now: released on both sides.
    assert_eq!(get("userrefs", &wal_first("db2")), "0");
    assert_eq!(get("userrefs", &wal_first("db1")), "0");
    // A pg_wal of its own is no gap in the cuts, for status nor for snapshots.
    let out = lab.pgzfs("db2", &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["code"] == "incomplete_cut"),
        "{status}"
    );
    let out = lab.pgzfs("db2", &["snapshots", "--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for entry in listing["snapshots"].as_array().unwrap() {
        assert!(entry.get("missing_from").is_none(), "{entry}");
    }
    // The received cut cannot be restored here without its WAL, and verify says why.
    let out = lab.pgzfs("db2", &["verify", &cut]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("own pg_wal"),
        "{}",
        stderr_of(&out)
    );

    // --full: a new dataset for the data directory, and a new empty pg_wal of its own
    // with the primary's tuning, owned by PostgreSQL's user.
    let full = {
        let out = lab.pgzfs("db2", &["reset-secondary", "--full", "--yes", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(full["mode"], "full");
    lab.assert_streaming("db2");
    wait_same_orders(&lab);
    let wal = format!("{pool}/db2/wal");
    assert_eq!(get("pgzfs:own_pg_wal", &wal), "yes");
    assert_eq!(get("recordsize", &wal), "128K");
    assert_eq!(get("mounted", &wal), "yes");
    let pg_wal = lab.data_dir("db2").join("pg_wal");
    assert_eq!(get("mountpoint", &wal), pg_wal.display().to_string());
    let meta = std::fs::metadata(&pg_wal).unwrap();
    let owner = std::fs::metadata(lab.data_dir("db2")).unwrap().uid();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (owner, 0o700));
    // What the full stream left out: the primary's pg_wal, more than half of what the
    // cluster's datasets reference after pgbench's initial load.
    let referenced = |ds: &str| -> u64 {
        lab.zfs(&["get", "-H", "-p", "-o", "value", "referenced", ds])
            .trim()
            .parse()
            .unwrap()
    };
    let sent = full["bytes"].as_u64().unwrap();
    let (root, ts, primary_wal) = (
        referenced(&format!("{pool}/db1")),
        referenced(&format!("{pool}/db1ts")),
        referenced(&format!("{pool}/db1/wal")),
    );
    assert!(
        sent < root + ts + primary_wal / 2,
        "sent {sent} bytes; the data directory {root}, the tablespace {ts}, pg_wal {primary_wal}"
    );
}

#[test]
fn a_tree_fails_over_and_the_old_primary_rejoins_keeping_the_diverged_writes_of_every_dataset() {
    let lab = Lab::up("treefail");
    lay_out_the_primary_as_a_tree(&lab);
    let pool = lab.pool().to_string();
    let dir = lab.dir.display().to_string();
    let config = std::fs::read_to_string(lab.config()).unwrap().replacen(
        "[defaults]\n",
        &format!(
            "[defaults]\npgzfs_bin = \"{}\"\nquarantine_dir = \"{dir}/quarantine\"\n",
            common::pgzfs_bin().display()
        ),
        1,
    );
    lab.write_config(&config);
    lab.reset_secondary("db2");
    wait_same_orders(&lab);

    // db1 is lost; the operator promotes db2 knowing db1 is down.
    let stop = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -m immediate -w stop",
        lab.pg_bin(),
        lab.data_dir("db1").display()
    ));
    assert!(stop.status.success(), "{}", stderr_of(&stop));
    let out = lab.pgzfs("db2", &["promote", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "f");
    // The undo point covers pg_wal's dataset and the tablespace too.
    for ds in [
        format!("{pool}/db2"),
        format!("{pool}/db2/wal"),
        format!("{pool}/db2ts"),
    ] {
        assert!(
            lab.snapshots(&ds)
                .iter()
                .any(|(n, _)| n.contains("@pgzfs-prepromote-")),
            "undo snapshot of {ds}"
        );
    }
    lab.sql(
        "db2",
        "INSERT INTO orders SELECT g, 'after failover' FROM generate_series(5001, 5100) g",
    );

    // db1 comes back as a primary and takes a write into the tablespace nobody else has.
    let start = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -l {dir}/db1.log -w start",
        lab.pg_bin(),
        lab.data_dir("db1").display()
    ));
    assert!(start.status.success(), "{}", stderr_of(&start));
    lab.sql("db1", "INSERT INTO orders VALUES (-1, 'diverged on db1')");
    let stop = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -m fast -w stop",
        lab.pg_bin(),
        lab.data_dir("db1").display()
    ));
    assert!(stop.status.success(), "{}", stderr_of(&stop));

    let out = lab.pgzfs("db1", &["rejoin", "--to", "db2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["mode"], "incremental",
        "the whole tree rolled back, not copied"
    );
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "t");
    let want = lab.sql("db2", "SELECT count(*) FROM orders");
    assert_eq!(want, "5100");
    let mut got = String::new();
    for _ in 0..120 {
        got = lab
            .try_sql("db1", "SELECT count(*) FROM orders")
            .unwrap_or_default();
        if got == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(got, want, "db1 follows db2's writes into the tablespace");
    assert_eq!(
        lab.sql("db1", "SELECT count(*) FROM orders WHERE id = -1"),
        "0"
    );
    // The diverged writes are kept: one stream file per dataset of the cluster.
    let kept: Vec<String> = std::fs::read_dir(lab.dir.join("quarantine"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(
        kept.iter()
            .any(|k| k.ends_with(&format!("{pool}_db1_wal.zfs.gz"))),
        "{kept:?}"
    );
    assert!(
        kept.iter()
            .any(|k| k.ends_with(&format!("{pool}_db1ts.zfs.gz"))),
        "{kept:?}"
    );
    // pg_wal is mounted on db1's own child dataset again.
    assert_eq!(
        lab.zfs(&[
            "get",
            "-H",
            "-o",
            "value",
            "mounted",
            &format!("{pool}/db1/wal")
        ])
        .trim(),
        "yes"
    );
}

/// The standby's tablespace dataset runs out of space halfway through an incremental of
/// the whole tree: the data directory and pg_wal have already gone forward. pgzfs takes
/// them back to the base they came from, so the tree never holds two different moments,
/// and once the operator has made room a plain rerun (no --full) brings everything up.
#[test]
fn a_tablespace_that_cannot_be_received_takes_the_whole_tree_back_and_a_plain_rerun_works() {
    let lab = Lab::up("treeundo");
    lay_out_the_primary_as_a_tree(&lab);
    let pool = lab.pool().to_string();
    let tree = [
        format!("{pool}/db2"),
        format!("{pool}/db2/wal"),
        format!("{pool}/db2ts"),
    ];
    lab.reset_secondary("db2");
    wait_same_orders(&lab);

    // Much more data in the tablespace on the primary than db2's tablespace dataset may
    // grow by: a quota a few MiB above what it uses now.
    lab.sql(
        "db1",
        "INSERT INTO orders SELECT g, repeat(md5(g::text), 8) FROM generate_series(5001, 150000) g",
    );
    let get = |prop: &str, ds: &str| {
        lab.zfs(&["get", "-H", "-p", "-o", "value", prop, ds])
            .trim()
            .to_string()
    };
    // The standby has replayed them into its own tablespace dataset first: the
    // incremental then needs about as much again, far more than the quota leaves.
    wait_same_orders(&lab);
    let quota_set = (0..10).any(|_| {
        let used: u64 = get("used", &format!("{pool}/db2ts")).parse().unwrap();
        let quota = used + 8 * 1024 * 1024;
        // The standby may still be writing (a restartpoint): read again and retry.
        Command::new("zfs")
            .args(["set", &format!("quota={quota}"), &format!("{pool}/db2ts")])
            .status()
            .unwrap()
            .success()
    });
    assert!(quota_set, "a quota just above what db2ts uses");
    let before: Vec<Vec<(String, String)>> = tree.iter().map(|ds| lab.snapshots(ds)).collect();

    let out = lab.pgzfs("db2", &["reset-secondary", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains(&format!("{pool}/db2ts")), "{err}");
    assert!(err.contains("back at its last good state"), "{err}");

    // Every dataset holds exactly the snapshots it held before (the base is the newest
    // again, the half-arrived cut is gone), and is mounted where it was.
    let after: Vec<Vec<(String, String)>> = tree.iter().map(|ds| lab.snapshots(ds)).collect();
    assert_eq!(after, before, "the same snapshots, by name and guid");
    for ds in &tree {
        assert_eq!(get("mounted", ds), "yes", "{ds} mounted again");
    }
    assert_eq!(
        get("mountpoint", &format!("{pool}/db2/wal")),
        lab.data_dir("db2").join("pg_wal").display().to_string()
    );
    // The standby's files are there: the data directory, its WAL, the tablespace's
    // directory; marked as a received copy, so the rerun may go on from it.
    let data = lab.data_dir("db2");
    assert!(data.join("PG_VERSION").exists());
    assert!(data.join("global/pg_control").exists());
    assert!(std::fs::read_dir(data.join("pg_wal")).unwrap().count() > 0);
    assert!(data.join("pgzfs.received-not-configured").exists());
    // That base is a copy of the primary, not yet a standby: pgzfs must not start it
    // (it would come up as a second primary), and says so.
    assert!(err.contains("PostgreSQL stays stopped"), "{err}");
    assert!(lab.try_sql("db2", "SELECT 1").is_err(), "db2 stays stopped");
    let ts = lab.dir.join("db2-ts/pg");
    assert!(
        std::fs::read_dir(&ts)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("PG_")),
        "the tablespace directory of db2 is intact"
    );
    let stray = lab.zfs(&["list", "-H", "-o", "name", "-t", "filesystem"]);
    assert!(
        !stray
            .lines()
            .any(|l| l.starts_with(&format!("{pool}/db2")) && !tree.iter().any(|t| t == l)),
        "nothing half-made beside the tree: {stray}"
    );

    // The operator makes room; the same command, no --full, goes forward from the base.
    lab.zfs(&["set", "quota=none", &format!("{pool}/db2ts")]);
    let rerun = lab.reset_secondary("db2");
    assert_eq!(rerun["mode"], "incremental");
    lab.assert_streaming("db2");
    wait_same_orders(&lab);
    assert_eq!(lab.sql("db2", "SELECT count(*) FROM orders"), "150000");
}

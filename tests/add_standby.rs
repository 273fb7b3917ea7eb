//! Adding a standby to a running cluster, as docs/operations.md ("Adding a standby")
//! tells the operator: db1 (primary) and db2 (standby) run with their daemons; db3 is a
//! fresh host. The config gains db3 on every node, the running daemons reload it
//! (SIGHUP, what `service pgzfs reload` sends), `pgzfs check --setup` on db3 finds
//! nothing wrong, `pgzfs reset-secondary` seeds it, and its daemon starts. Nothing that
//! was running is restarted: not db1's or db2's PostgreSQL, not their daemons.

mod common;

use std::time::{Duration, Instant};

use common::{file_text, stderr_of, Lab};

/// `pgzfs daemon` on a node, as rc.d runs it; stopped (SIGTERM) when dropped.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(lab: &Lab, node: &str) -> Daemon {
        Daemon(
            lab.pgzfs_in_command(node, &["daemon"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start pgzfs daemon"),
        )
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }

    /// `service pgzfs reload`: SIGHUP to the daemon itself.
    fn reload(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    }

    fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What `pgzfs status --json` on db1 says db1's daemon sees of the quorum.
fn db1_daemon_view(lab: &Lab) -> serde_json::Value {
    let out = lab
        .pgzfs_in_command("db1", &["status", "--json"])
        .output()
        .expect("run pgzfs status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    status["quorum"]
        .as_array()
        .and_then(|voters| voters.iter().find(|v| v["name"] == "db1"))
        .map(|v| v["view"].clone())
        .unwrap_or_default()
}

/// The voters db1's daemon is in contact with, sorted.
fn reachable(lab: &Lab) -> Vec<String> {
    let mut names: Vec<String> = db1_daemon_view(lab)["reachable_voters"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_third_node_joins_a_running_two_node_cluster_without_restarting_anything() {
    let lab = Lab::up_hosts("addstandby", 3, false, false);
    // The lab writes all three nodes; the cluster starts with two, and db3's entry is
    // what the operator adds later.
    let settings = format!(
        "[defaults]\nconnect_timeout = \"1s\"\nhttp_listen = \"0.0.0.0:8008\"\n\
         quarantine_dir = \"{}/quarantine\"\npgzfs_bin = \"{}\"\n",
        lab.dir.display(),
        common::pgzfs_bin().display()
    );
    let three_nodes = file_text(&lab.config()).replacen("[defaults]\n", &settings, 1);
    let db3_entry = three_nodes
        .find("\n[[nodes]]\nname = \"db3\"")
        .expect("the lab's config has db3");
    let two_nodes = three_nodes[..db3_entry].to_string() + "\n";
    lab.write_config(&two_nodes);

    let out = lab.pgzfs_in("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut daemons = vec![Daemon::start(&lab, "db1"), Daemon::start(&lab, "db2")];
    wait_until(
        "db1's daemon to see both voters",
        Duration::from_secs(30),
        || reachable(&lab) == ["db1", "db2"],
    );
    let started = "SELECT pg_postmaster_start_time()::text";
    let (db1_started, db2_started) = (lab.sql_on("db1", started), lab.sql_on("db2", started));

    // 1. Add db3 to the config on every node (one file here, as if copied to each),
    // and reload the daemons.
    lab.write_config(&three_nodes);
    for daemon in &daemons {
        daemon.reload();
    }
    wait_until(
        "db1's daemon to count db3 as a voter",
        Duration::from_secs(30),
        || db1_daemon_view(&lab)["voters"] == 3,
    );

    // 2. On db3: the setup check. A new standby has no dataset and no PostgreSQL yet,
    // which is as it should be; everything it needs from the others is there.
    let out = lab.pgzfs_in("db3", &["check", "--setup", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\n{}",
        stderr_of(&out)
    );
    assert_eq!(report["first_wrong"], serde_json::Value::Null, "{report:#}");
    let findings = report["findings"].as_array().unwrap();
    let verdict = |check: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .map(|f| f["verdict"].clone())
            .unwrap_or_else(|| panic!("no finding {check}: {report:#}"))
    };
    assert_eq!(
        verdict("dataset"),
        "ok",
        "a new standby's dataset is made by the re-seed"
    );
    for peer in ["db1", "db2"] {
        assert_eq!(verdict(&format!("ssh.{peer}")), "ok");
        assert_eq!(verdict(&format!("pg_hba.{peer}")), "ok");
        assert_eq!(verdict(&format!("pgzfs_bin.{peer}")), "ok");
    }

    // 3. Seed it, and start its daemon.
    let out = lab.pgzfs_in("db3", &["reset-secondary", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    daemons.push(Daemon::start(&lab, "db3"));

    wait_until(
        "db1 to stream to db2 and db3",
        Duration::from_secs(60),
        || {
            lab.try_sql_on(
                "db1",
                "SELECT string_agg(application_name, ',' ORDER BY application_name) \
                 FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .is_ok_and(|names| names == "db2,db3")
        },
    );
    wait_until(
        "db1's daemon to reach db3's",
        Duration::from_secs(30),
        || reachable(&lab) == ["db1", "db2", "db3"],
    );
    lab.sql_on("db1", "CREATE TABLE joined AS SELECT 3 AS nodes");
    wait_until("db3 to replay new writes", Duration::from_secs(30), || {
        lab.try_sql_on("db3", "SELECT nodes FROM joined")
            .is_ok_and(|v| v == "3")
    });

    // Nothing that ran before was restarted.
    assert_eq!(
        lab.sql_on("db1", started),
        db1_started,
        "db1's PostgreSQL kept running"
    );
    assert_eq!(
        lab.sql_on("db2", started),
        db2_started,
        "db2's PostgreSQL kept running"
    );
    assert_eq!(lab.sql_on("db1", "SELECT pg_is_in_recovery()"), "f");
    for daemon in &mut daemons {
        assert!(daemon.is_running(), "every daemon still runs");
    }
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.matches("SIGHUP: reloaded the config").count() >= 2,
        "db1's and db2's daemons reloaded the config:\n{log}"
    );
}

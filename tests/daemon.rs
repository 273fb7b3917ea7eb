//! The daemon on real zfs-fuse, sshd and PostgreSQL 15, as an operator runs it: it heals a
//! standby whose WAL is gone by re-seeding it, restarts a killed standby, survives a bad
//! reload, stops cleanly in the middle of a transfer, and answers status and health
//! checks truthfully on a primary, a standby and a stopped node, slowloris or not.

mod common;
mod slowloris;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{file_text, stderr_of, wait_for_process, Lab};
use nix::sys::signal::Signal;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Per-node settings, written into the node's `[[nodes]]` entry (before its
/// `[nodes.pg_settings]` table).
fn set_node(lab: &Lab, node: &str, lines: &str) {
    let config = file_text(&lab.config());
    let anchor = format!("name = \"{node}\"\n");
    assert!(config.contains(&anchor), "no node {node} in the lab config");
    lab.write_config(&config.replacen(&anchor, &format!("{anchor}{lines}\n"), 1));
}

/// A lab whose db2 re-seeds after `reseed_after` and serves HTTP on a free port.
fn daemon_lab(name: &str, scale: u32, reseed_after: &str) -> (Lab, u16) {
    let lab = Lab::up_with(name, 15, scale);
    let port = free_port();
    set_node(
        &lab,
        "db2",
        &format!("reseed_after = \"{reseed_after}\"\nhttp_listen = \"127.0.0.1:{port}\""),
    );
    (lab, port)
}

fn log_path(lab: &Lab) -> PathBuf {
    lab.dir.join("pgzfs.log")
}

fn log_text(lab: &Lab) -> String {
    std::fs::read_to_string(log_path(lab)).unwrap_or_default()
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running `pgzfs daemon`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    child: Option<Child>,
    node: String,
}

impl Daemon {
    fn start(lab: &Lab, node: &str) -> Daemon {
        let out = std::fs::File::create(lab.dir.join(format!("daemon-{node}.out"))).unwrap();
        let child = lab
            .pgzfs_command(node, &["daemon"])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start pgzfs daemon");
        Daemon {
            child: Some(child),
            node: node.to_string(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Wait for the daemon to exit on its own; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the daemon on {} did not exit within {timeout:?}",
                self.node
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// One HTTP request to a daemon: status and body; None while nothing listens.
fn try_http(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn http(port: u16, path: &str) -> (u16, String) {
    try_http(port, path).unwrap_or_else(|| panic!("no HTTP answer for {path} on port {port}"))
}

fn status_of(port: u16, path: &str) -> u16 {
    http(port, path).0
}

/// One sample's value from /metrics, by its name and labels as printed.
fn metric(port: u16, sample: &str) -> Option<f64> {
    let (status, text) = http(port, "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find(|line| line.starts_with(sample))
        .and_then(|line| line.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
}

fn pg_ctl(lab: &Lab, node: &str, action: &str) {
    let out = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -l {}/{node}.log -w -t 60 {action}",
        lab.pg_bin(),
        lab.data_dir(node).display(),
        lab.dir.display()
    ));
    assert!(
        out.status.success(),
        "pg_ctl {action} {node}: {}",
        stderr_of(&out)
    );
}

fn streaming(lab: &Lab, node: &str) -> bool {
    lab.try_sql(node, "SELECT status FROM pg_stat_wal_receiver")
        .as_deref()
        == Ok("streaming")
        && lab
            .try_sql(
                "db1",
                &format!("SELECT state FROM pg_stat_replication WHERE application_name = '{node}'"),
            )
            .as_deref()
            == Ok("streaming")
}

/// The classic way a standby breaks for good: it is down while its slot is dropped and
/// the primary recycles the WAL it would need. An operator then recreates the slot and
/// starts it; it asks for WAL that no longer exists.
fn lose_the_standbys_wal(lab: &Lab) {
    pg_ctl(lab, "db2", "-m fast stop");
    lab.sql("db1", "SELECT pg_drop_replication_slot('db2')");
    lab.sql("db1", "CREATE TABLE churn (n int)");
    for round in 0..4 {
        lab.sql(
            "db1",
            &format!("INSERT INTO churn SELECT generate_series(1, 20000) + {round}"),
        );
        lab.sql("db1", "SELECT pg_switch_wal()");
        lab.sql("db1", "CHECKPOINT");
    }
    lab.sql(
        "db1",
        "SELECT pg_create_physical_replication_slot('db2', true)",
    );
    pg_ctl(lab, "db2", "start");
    let db2_log = lab.dir.join("db2.log");
    wait_until(Duration::from_secs(60), "db2 to find its WAL gone", || {
        std::fs::read_to_string(&db2_log)
            .unwrap_or_default()
            .contains("has already been removed")
    });
    assert!(!streaming(lab, "db2"), "db2 cannot stream any more");
}

#[test]
fn a_standby_whose_wal_is_gone_is_reseeded_automatically_and_streams_again() {
    let (lab, port) = daemon_lab("autoreseed", 1, "3s");
    lab.reset_secondary("db2");
    lose_the_standbys_wal(&lab);

    let _daemon = Daemon::start(&lab, "db2");
    wait_until(Duration::from_secs(240), "the automatic re-seed", || {
        log_text(&lab).contains("automatic re-seed done")
    });
    wait_until(Duration::from_secs(60), "db2 to stream", || {
        streaming(&lab, "db2")
    });
    lab.assert_streaming("db2");
    lab.sql("db1", "INSERT INTO churn VALUES (-1)");
    lab.assert_same_contents("db1", "db2");
    wait_until(Duration::from_secs(30), "the new row on db2", || {
        lab.try_sql("db2", "SELECT count(*) FROM churn WHERE n = -1")
            .as_deref()
            == Ok("1")
    });

    let log = log_text(&lab);
    assert!(
        log.contains("streaming broken for"),
        "the log says why:\n{log}"
    );
    assert!(log.contains("re-seeding"), "{log}");
    let reseeds = metric(port, "pgzfs_reseeds_total{").expect("pgzfs_reseeds_total");
    assert!(reseeds >= 1.0, "the metrics count the re-seed: {reseeds}");
    assert!(metric(port, "pgzfs_last_reseed_bytes{").is_some_and(|b| b > 0.0));
    assert_eq!(status_of(port, "/replica"), 200);
}

#[test]
fn a_killed_standby_postgresql_is_started_again_and_streams() {
    // A long reseed_after: streaming must come back by the restart, not by a re-seed.
    let (lab, port) = daemon_lab("killed", 1, "10m");
    lab.reset_secondary("db2");
    let _daemon = Daemon::start(&lab, "db2");
    wait_until(
        Duration::from_secs(60),
        "the daemon to see db2 streaming",
        || try_http(port, "/replica").is_some_and(|(status, _)| status == 200),
    );

    let pid_file = lab.data_dir("db2").join("postmaster.pid");
    let postmaster: i32 = file_text(&pid_file)
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(postmaster), Signal::SIGKILL).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the health check to notice",
        || status_of(port, "/health") == 503,
    );

    wait_until(Duration::from_secs(120), "db2 to stream again", || {
        streaming(&lab, "db2")
    });
    let restarted: i32 = file_text(&pid_file)
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(restarted, postmaster, "a new postmaster runs");
    wait_until(Duration::from_secs(30), "/replica to answer 200", || {
        status_of(port, "/replica") == 200
    });
    lab.assert_same_contents("db1", "db2");
    let log = log_text(&lab);
    assert!(log.contains("is not running; starting it"), "{log}");
    assert!(
        log.contains("restarted PostgreSQL on this standby"),
        "{log}"
    );
    assert_eq!(
        metric(port, "pgzfs_reseeds_total{"),
        Some(0.0),
        "no re-seed was needed"
    );
}

#[test]
fn a_reload_with_a_broken_config_keeps_the_daemon_running_on_the_old_one() {
    let (lab, port) = daemon_lab("badreload", 1, "10m");
    lab.reset_secondary("db2");
    let mut daemon = Daemon::start(&lab, "db2");
    wait_until(Duration::from_secs(60), "the health endpoint", || {
        try_http(port, "/health").is_some_and(|(status, _)| status == 200)
    });

    // newsyslog rotates the log, then the operator breaks the config and reloads.
    std::fs::rename(log_path(&lab), lab.dir.join("pgzfs.log.0")).unwrap();
    let good = file_text(&lab.config());
    lab.write_config(&format!("{good}\nreseed_after = = \"broken\"\n"));
    daemon.signal(Signal::SIGHUP);
    wait_until(
        Duration::from_secs(30),
        "the refusal in the reopened log",
        || log_text(&lab).contains("is invalid, keeping the old one"),
    );
    assert!(daemon.is_running(), "the daemon keeps running");
    assert_eq!(status_of(port, "/health"), 200);
    assert_eq!(status_of(port, "/replica"), 200);
    assert!(
        file_text(&lab.dir.join("pgzfs.log.0")).contains("pgzfs daemon"),
        "the old lines stay in the rotated file"
    );

    // Fixed, and the health checks moved to another port: the next reload takes both,
    // without a restart.
    let new_port = free_port();
    lab.write_config(&good.replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{new_port}"),
    ));
    daemon.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(30), "the reload", || {
        log_text(&lab).contains("SIGHUP: reloaded the config")
    });
    assert!(daemon.is_running());
    assert_eq!(
        status_of(new_port, "/replica"),
        200,
        "served on the new port"
    );
    assert!(
        try_http(port, "/health").is_none(),
        "the old port {port} is closed"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "SIGTERM exits 0"
    );
}

#[test]
fn sigterm_during_an_automatic_reseed_leaves_the_standby_consistent_and_the_next_start_finishes() {
    // Enough changes on the primary that the incremental stream takes a while.
    let (lab, _port) = daemon_lab("daemonterm", 5, "3s");
    lab.reset_secondary("db2");
    let before = lab.snapshots(&lab.dataset("db2"));
    lab.sql("db1", "UPDATE pgbench_accounts SET abalance = abalance + 1");
    lose_the_standbys_wal(&lab);

    let mut daemon = Daemon::start(&lab, "db2");
    // (zfs-fuse's zfs rewrites its argv, splitting "ds@snap" into "ds snap".)
    wait_for_process(
        &format!("zfs send -i {}", lab.dataset("db1")),
        Duration::from_secs(120),
    )
    .expect("the daemon's re-seed started sending");
    wait_for_process(
        &format!("zfs receive -u -F {}", lab.dataset("db2")),
        Duration::from_secs(30),
    )
    .expect("the receive started on db2");
    std::thread::sleep(Duration::from_millis(500));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(120)),
        Some(0),
        "the daemon stops cleanly"
    );
    let log = log_text(&lab);
    assert!(
        log.contains("automatic re-seed aborted by a signal"),
        "{log}"
    );
    assert!(!log.contains("automatic re-seed done"), "{log}");

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
    assert_eq!(
        lab.sql("db2", "SELECT pg_is_in_recovery()"),
        "t",
        "still a standby"
    );

    let _again = Daemon::start(&lab, "db2");
    wait_until(Duration::from_secs(300), "the next start's re-seed", || {
        log_text(&lab).contains("automatic re-seed done")
    });
    wait_until(Duration::from_secs(60), "db2 to stream", || {
        streaming(&lab, "db2")
    });
    lab.assert_same_contents("db1", "db2");
}

fn status_json(lab: &Lab, from: &str) -> (Option<i32>, Value) {
    let out = lab.pgzfs(from, &["status", "--json"]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json prints one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), json)
}

fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

fn warning_codes(status: &Value) -> Vec<String> {
    status["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn status_and_health_endpoints_tell_primary_standby_and_stopped_nodes_apart() {
    let (lab, port2) = daemon_lab("status", 1, "10m");
    let port1 = free_port();
    set_node(
        &lab,
        "db1",
        &format!("snapshot_interval = \"2s\"\nhttp_listen = \"127.0.0.1:{port1}\""),
    );
    lab.reset_secondary("db2");

    // Healthy: from either node the same picture, exit 0.
    for from in ["db1", "db2"] {
        let (code, status) = status_json(&lab, from);
        assert_eq!(code, Some(0), "healthy: {status}");
        assert_eq!(status["healthy"], true);
        assert_eq!(status["primary"], "db1");
        assert_eq!(node(&status, "db1")["role"], "primary");
        assert_eq!(node(&status, "db1")["writable"], true);
        let db2 = node(&status, "db2");
        assert_eq!(db2["role"], "standby");
        assert_eq!(db2["replication_state"], "streaming");
        assert_eq!(db2["wal_receiver"], "streaming");
        assert!(
            db2["last_common_snapshot"]
                .as_str()
                .unwrap()
                .starts_with("pgzfs-"),
            "{db2}"
        );
        assert!(
            db2["pg_version"].as_str().unwrap().starts_with("15."),
            "{db2}"
        );
        assert!(db2["snapshots"].as_u64().unwrap() >= 1);
        let slot = &status["slots"].as_array().unwrap()[0];
        assert_eq!(
            (&slot["name"], &slot["active"]),
            (&Value::from("db2"), &Value::from(true))
        );
    }
    let table = lab.pgzfs("db2", &["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("healthy") && table.contains("streaming"),
        "{table}"
    );

    let _d1 = Daemon::start(&lab, "db1");
    let mut d2 = Daemon::start(&lab, "db2");
    for port in [port1, port2] {
        wait_until(Duration::from_secs(60), "the daemons to listen", || {
            try_http(port, "/liveness").is_some()
        });
    }
    // What HAProxy and Patroni-style checks see.
    assert_eq!(status_of(port1, "/primary"), 200);
    assert_eq!(status_of(port1, "/replica"), 503);
    assert_eq!(status_of(port1, "/health"), 200);
    assert_eq!(status_of(port2, "/primary"), 503);
    wait_until(Duration::from_secs(30), "db2's /replica", || {
        status_of(port2, "/replica") == 200
    });
    assert_eq!(status_of(port2, "/replica?lag=1GB"), 200);
    assert_eq!(status_of(port2, "/replica?lag=lots"), 400);
    assert_eq!(status_of(port2, "/health"), 200);
    assert_eq!(status_of(port2, "/nowhere"), 404);
    let (_, body) = http(port2, "/replica");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["role"],
        "standby"
    );
    let role_line = |port: u16, role: &str| {
        let (_, text) = http(port, "/metrics");
        text.lines()
            .find(|l| l.starts_with("pgzfs_role{") && l.contains(&format!("role=\"{role}\"")))
            .map(|l| l.ends_with(" 1"))
    };
    assert_eq!(role_line(port1, "primary"), Some(true));
    assert_eq!(role_line(port2, "standby"), Some(true));

    // A slowloris from 40 addresses holds as many connections to db1's port as it can,
    // dribbling a byte a second: the load balancer's checks still get the truth, promptly.
    let attack = slowloris::Slowloris::start(
        ([127, 0, 0, 1], port1).into(),
        &slowloris::loopback(20, 40),
        pgzfs::http::PER_CLIENT,
    );
    let until = Instant::now() + pgzfs::http::HEAD_DEADLINE + Duration::from_secs(2);
    while Instant::now() < until {
        for (path, want) in [("/liveness", 200), ("/health", 200), ("/primary", 200)] {
            let asked = Instant::now();
            assert_eq!(status_of(port1, path), want, "{path} during the attack");
            assert!(
                asked.elapsed() < Duration::from_secs(3),
                "{path} took {:?}",
                asked.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let fates = attack.stop();
    assert!(
        fates.iter().all(|f| f.held.is_some()),
        "no attacking connection outlives the head deadline"
    );

    // The primary's daemon snapshots every 2s and prunes by the retention policy: the
    // held base of db2 survives, older unheld daemon snapshots of the same hour go.
    wait_until(
        Duration::from_secs(90),
        "scheduled snapshots and retention",
        || log_text(&lab).contains("retention: destroyed"),
    );
    assert!(log_text(&lab).contains("scheduled snapshot"));
    let base = node(&status_json(&lab, "db2").1, "db2")["last_common_snapshot"].clone();
    assert!(
        lab.snapshots(&lab.dataset("db1"))
            .iter()
            .any(|(name, _)| name.ends_with(base.as_str().unwrap())),
        "the common base {base} is kept"
    );
    assert!(metric(port1, "pgzfs_last_snapshot_age_seconds{").is_some_and(|age| age < 120.0));
    // Both daemons have recorded an event that status shows (db2's over HTTP).
    let (_, status) = status_json(&lab, "db1");
    for name in ["db1", "db2"] {
        assert_eq!(
            node(&status, name)["last_event"]["event"],
            "daemon",
            "{status}"
        );
    }

    // db2 stopped (its daemon first, or it would start it again): degraded, exit 1.
    d2.signal(Signal::SIGTERM);
    assert_eq!(d2.wait_exit(Duration::from_secs(30)), Some(0));
    pg_ctl(&lab, "db2", "-m fast stop");
    let (code, status) = status_json(&lab, "db1");
    assert_eq!(code, Some(1), "degraded: {status}");
    assert_eq!(node(&status, "db2")["role"], "stopped");
    let codes = warning_codes(&status);
    assert!(codes.contains(&"stopped".to_string()), "{codes:?}");
    assert!(
        codes.contains(&"inactive_slot".to_string()),
        "the slot keeps WAL: {codes:?}"
    );

    // The primary stopped under its daemon: every check says so, and the daemon does not
    // start a primary by itself.
    pg_ctl(&lab, "db1", "-m fast stop");
    assert_eq!(status_of(port1, "/health"), 503);
    assert_eq!(status_of(port1, "/primary"), 503);
    assert_eq!(role_line(port1, "stopped"), Some(true));
    let (code, status) = status_json(&lab, "db2");
    assert_eq!(code, Some(1));
    assert_eq!(node(&status, "db1")["role"], "stopped");
    assert!(warning_codes(&status).contains(&"no_primary".to_string()));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(port1, "/health"), 503, "still stopped");
}

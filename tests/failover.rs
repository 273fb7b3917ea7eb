//! Failover with real CARP: every node is a host of its own (a network namespace with its
//! own address, sshd, PostgreSQL and ucarp), and ucarp's up/down scripts call
//! `pgzfs carp-event` as ifstated or devd do on FreeBSD.

mod common;

use std::time::{Duration, Instant};

use common::{file_text, stderr_of, Lab};

/// Settings for a quick failover in the lab: short connect timeouts (the dead host drops
/// packets), a few fast checks, fenced primaries that rejoin on their own, and daemons
/// that answer the quorum on port 8008. These labs have two data nodes and no witness:
/// automatic failover there needs `two_node_failover` (see docs/ha.md), which `top`
/// sets where a test wants it.
fn tune(lab: &Lab, check_attempts: u32, top: &str, extra: &str) {
    let settings = format!(
        "{top}isolation_timeout = \"4s\"\n\n[defaults]\nconnect_timeout = \"1s\"\npromote_check_attempts = {check_attempts}\npromote_check_interval = \"500ms\"\n\
         http_listen = \"0.0.0.0:8008\"\nquarantine_dir = \"{}/quarantine\"\n{extra}",
        lab.dir.display()
    );
    lab.write_config(&file_text(&lab.config()).replacen("[defaults]\n", &settings, 1));
}

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

    /// As a dying host would take it: no goodbye.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One INSERT through the CARP address, as an application would do it.
fn write_through_vip(lab: &Lab, note: &str) -> bool {
    let sql = format!("INSERT INTO probe (note) VALUES ('{note}')");
    let out = lab.exec(
        "client",
        &[
            "psql",
            "-X",
            "-q",
            "-h",
            lab.get("VIP"),
            "-U",
            "app",
            "-d",
            "postgres",
            "-c",
            &sql,
        ],
    );
    out.status.success()
}

fn carp_log(lab: &Lab, node: &str) -> String {
    std::fs::read_to_string(lab.dir.join(format!("carp/{node}-events.log"))).unwrap_or_default()
}

#[test]
fn the_primary_dies_the_standby_takes_over_and_the_old_primary_rejoins_when_it_returns() {
    let lab = Lab::up_hosts("failover", 2, true, false);
    // Two data nodes, no witness: automatic failover only by explicit choice.
    tune(
        &lab,
        3,
        "two_node_failover = true\n",
        "on_backup = \"rejoin\"\n",
    );
    let out = lab.pgzfs_in("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut db1_daemon = Daemon::start(&lab, "db1");
    let _db2_daemon = Daemon::start(&lab, "db2");
    lab.sql_on(
        "db1",
        "CREATE TABLE probe (id serial PRIMARY KEY, note text); ALTER TABLE probe OWNER TO app",
    );
    assert!(
        write_through_vip(&lab, "before"),
        "the VIP reaches the primary"
    );
    wait_for(
        "db2 to replay the probe table",
        Duration::from_secs(30),
        || {
            lab.try_sql_on("db2", "SELECT count(*) FROM probe")
                .ok()
                .filter(|n| n == "1")
        },
    );

    // The primary host dies: its CARP advertisements stop, PostgreSQL and the daemon
    // are gone.
    let killed = Instant::now();
    db1_daemon.kill();
    lab.script("carp-stop", &["db1"]);
    let out = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -m immediate stop",
        lab.pg_bin(),
        lab.get("DB1_DATA")
    ));
    assert!(out.status.success(), "{}", stderr_of(&out));

    wait_for(
        "a write through the VIP to succeed",
        Duration::from_secs(60),
        || write_through_vip(&lab, "after").then_some(()),
    );
    let failover = killed.elapsed();
    eprintln!(
        "FAILOVER: {:.1}s from the kill to the first successful write through the VIP",
        failover.as_secs_f64()
    );
    assert_eq!(lab.vip_holder().as_deref(), Some("db2"));
    assert_eq!(
        lab.sql_on("db2", "SELECT pg_is_in_recovery()"),
        "f",
        "db2 was promoted"
    );
    // The epoch is recorded right after the promotion (the write above may win the race).
    wait_for(
        "the new epoch on db2's dataset",
        Duration::from_secs(30),
        || {
            let epoch = lab.zfs(&[
                "get",
                "-H",
                "-o",
                "value",
                "pgzfs:epoch",
                lab.get("DB2_DATASET"),
            ]);
            (epoch.trim() == "1").then_some(())
        },
    );

    // The old primary host comes back: its PostgreSQL starts as a primary (it still
    // believes it is one) and takes a write nobody else has.
    // (Inside db1's namespace: it listens on db1's own address.)
    let start = format!(
        "{}/pg_ctl -D {} -l {}/db1.log -w start",
        lab.pg_bin(),
        lab.get("DB1_DATA"),
        lab.dir.display()
    );
    let out = lab
        .command_in("db1", "runuser")
        .args(["-u", "postgres", "--", "sh", "-c", &start])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    lab.sql_on("db1", "INSERT INTO probe (note) VALUES ('diverged on db1')");
    // Its CARP comes back as BACKUP: fenced, then rejoined to db2.
    lab.script("carp-start", &["db1"]);
    wait_for(
        "db1 to rejoin as a standby of db2",
        Duration::from_secs(180),
        || {
            let streaming = lab
                .try_sql_on(
                    "db2",
                    "SELECT state FROM pg_stat_replication WHERE application_name = 'db1'",
                )
                .ok();
            (streaming.as_deref() == Some("streaming")).then_some(())
        },
    );
    // A standby streams before it has replayed up to a consistent state, and accepts
    // connections only from there on: wait for that rather than ask too early.
    wait_for(
        "db1 to accept read-only connections",
        Duration::from_secs(60),
        || {
            lab.try_sql_on("db1", "SELECT pg_is_in_recovery()")
                .ok()
                .filter(|answer| answer == "t")
        },
    );
    assert_eq!(
        lab.vip_holder().as_deref(),
        Some("db2"),
        "the returning node did not take the address back"
    );
    assert_eq!(
        lab.sql_on(
            "db1",
            "SELECT count(*) FROM probe WHERE note = 'diverged on db1'"
        ),
        "0"
    );
    let kept: Vec<_> = std::fs::read_dir(lab.dir.join("quarantine"))
        .expect("quarantine dir")
        .flatten()
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "db1's diverged writes are kept in a stream file"
    );
    let log = wait_for(
        "db1's carp-event BACKUP to finish",
        Duration::from_secs(60),
        || {
            let log = carp_log(&lab, "db1");
            log.contains("carp-event BACKUP exited").then_some(log)
        },
    );
    assert!(log.contains("carp-event BACKUP exited 0"), "{log}");
    assert!(
        log.contains("fenced db1") && log.contains("rejoined as a standby of db2"),
        "{log}"
    );
}

#[test]
fn a_primary_that_comes_back_during_the_checks_prevents_the_promotion() {
    let lab = Lab::up_hosts("cameback", 2, true, false);
    // Enough checks to span the blip (the dead host costs a 1 s connect timeout each).
    tune(&lab, 10, "", "");
    let out = lab.pgzfs_in("db2", &["reset-secondary", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));

    // A network blip: db1 is cut off the switch (it stays MASTER on its side), so db2
    // stops hearing it and becomes MASTER too.
    lab.script("link-down", &["db1"]);
    wait_for("db2 to become CARP MASTER", Duration::from_secs(30), || {
        carp_log(&lab, "db2").contains("MASTER").then_some(())
    });
    // db1 is back before db2's checks are over: reachable and writable again.
    lab.script("link-up", &["db1"]);
    wait_for(
        "db2's carp-event MASTER to finish",
        Duration::from_secs(60),
        || {
            let log = carp_log(&lab, "db2");
            log.contains("carp-event MASTER exited").then_some(log)
        },
    );
    let log = carp_log(&lab, "db2");
    assert!(
        log.contains("carp-event MASTER exited 3"),
        "the promotion was refused: {log}"
    );
    assert!(
        log.contains("db1 answers as a writable primary"),
        "and says why: {log}"
    );
    assert_eq!(
        lab.sql_on("db2", "SELECT pg_is_in_recovery()"),
        "t",
        "no promotion: db1 came back during the checks"
    );
    assert_eq!(
        lab.sql_on("db1", "SELECT pg_is_in_recovery()"),
        "f",
        "db1 is still the primary"
    );
    wait_for("CARP to settle on db1", Duration::from_secs(30), || {
        (lab.vip_holder().as_deref() == Some("db1")).then_some(())
    });
}

/// An application in the client namespace committing one row at a time through
/// PgBouncer; returns the ids it saw committed and how many attempts failed.
fn client_through_pgbouncer(
    lab: &Lab,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<i64>, usize)> {
    let (ns, addr, port) = (
        lab.netns("client"),
        lab.addr("client"),
        lab.get("PGBOUNCER_PORT").to_string(),
    );
    let pgpass = lab.get("PGPASSFILE").to_string();
    std::thread::spawn(move || {
        let (mut committed, mut failures) = (Vec::new(), 0);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .args([
                    "--", "psql", "-X", "-At", "-h", &addr, "-p", &port, "-U", "app", "-d",
                    "postgres",
                ])
                .args([
                    "-c",
                    "INSERT INTO ledger (note) VALUES ('client') RETURNING id",
                ])
                .env("PGPASSFILE", &pgpass)
                .env("PGCONNECT_TIMEOUT", "2")
                .output()
                .unwrap();
            match String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
            {
                Some(id) if out.status.success() => committed.push(id),
                _ => {
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        (committed, failures)
    })
}

#[test]
fn a_switchover_round_trip_through_pgbouncer_loses_no_committed_transaction_and_the_third_host_follows(
) {
    let lab = Lab::up_hosts("switchover", 3, false, true);
    let hook = format!(
        "{}/contrib/pgbouncer-repoint --databases-file {} --admin-host {} --admin-port {} --admin-user postgres",
        common::repo().display(),
        lab.get("PGBOUNCER_DATABASES"),
        lab.get("PGBOUNCER_SOCK"),
        lab.get("PGBOUNCER_PORT")
    );
    tune(
        &lab,
        3,
        "",
        &format!("pgzfs_bin = \"{}\"\n", common::pgzfs_bin().display()),
    );
    lab.write_config(&format!(
        "{}\n[events]\ncommand = \"{hook}\"\nonly = [\"promote\", \"switchover\"]\n",
        file_text(&lab.config())
    ));
    for standby in ["db2", "db3"] {
        let out = lab.pgzfs_in(standby, &["reset-secondary", "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    }
    lab.sql_on(
        "db1",
        "CREATE TABLE ledger (id serial PRIMARY KEY, note text); ALTER TABLE ledger OWNER TO app",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = client_through_pgbouncer(&lab, stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    for (from, to) in [("db1", "db2"), ("db2", "db1")] {
        let out = lab.pgzfs_in(from, &["switchover", "--to", to, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
        let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!(
            "SWITCHOVER {from} -> {to}: writes unavailable for {}s, total {}s",
            done["write_unavailable_seconds"], done["total_seconds"]
        );
        assert_eq!(done["old_primary_rejoined"], true);
        assert_eq!(
            done["followed"],
            serde_json::json!(["db3"]),
            "the third host follows the new primary"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (committed, failures) = client.join().unwrap();
    eprintln!(
        "client through pgbouncer: {} commits, {failures} failed attempts",
        committed.len()
    );

    assert_eq!(lab.sql_on("db1", "SELECT pg_is_in_recovery()"), "f");
    let standbys = lab.sql_on("db1", "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming'");
    assert_eq!(standbys, "db2,db3");
    assert!(
        committed.len() > 20,
        "the client kept committing through PgBouncer ({} commits)",
        committed.len()
    );
    let ids = committed
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        lab.sql_on(
            "db1",
            &format!("SELECT count(*) FROM ledger WHERE id IN ({ids})")
        ),
        committed.len().to_string(),
        "every transaction the client saw committed is on the final primary"
    );
    let databases = file_text(std::path::Path::new(lab.get("PGBOUNCER_DATABASES")));
    assert!(
        databases.contains(&format!("host={}", lab.addr("db1"))),
        "PgBouncer points at db1 again: {databases}"
    );
}

//! The HA lifecycle on the loopback lab (db1 primary, db2 and db3 standbys on one
//! machine): promote with its safety checks, CARP events, rejoin of a former primary
//! without pg_rewind, follow, and a switchover round trip.

mod common;

use std::process::Command;

use common::{file_text, stderr_of, Lab};

/// A lab whose config lets pgzfs run pgzfs on the other nodes (switchover), with a
/// quarantine directory and an event hook that appends every event to a file.
fn ha_lab(name: &str) -> Lab {
    let lab = Lab::up(name);
    let extra = format!(
        "[defaults]\npgzfs_bin = \"{bin}\"\nquarantine_dir = \"{dir}/quarantine\"\npromote_check_attempts = 2\npromote_check_interval = \"200ms\"\n",
        bin = common::pgzfs_bin().display(),
        dir = lab.dir.display()
    );
    let hook = lab.dir.join("hook.sh");
    // Log every event; where the lab runs PgBouncer, repoint it like an operator would.
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$@\" >> {dir}/events.log\nif [ -f {dir}/pgbouncer/databases.ini ]; then\n  \
             {repo}/contrib/pgbouncer-repoint --databases-file {dir}/pgbouncer/databases.ini --admin-host {dir}/pgbouncer \
             --admin-port $(cat {dir}/pgbouncer/port) --admin-user postgres >> {dir}/pgbouncer/repoint.log 2>&1\nfi\n",
            dir = lab.dir.display(),
            repo = common::repo().display()
        ),
    )
    .unwrap();
    assert!(Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap()
        .success());
    let config = file_text(&lab.config()).replacen("[defaults]\n", &extra, 1);
    lab.write_config(&format!(
        "{config}\n[events]\ncommand = \"{} %e %n %s %p\"\n",
        hook.display()
    ));
    lab
}

fn events_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.join("events.log")).unwrap_or_default()
}

fn stop_immediately(lab: &Lab, node: &str) {
    let out = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -m immediate -w stop",
        lab.pg_bin(),
        lab.data_dir(node).display()
    ));
    assert!(out.status.success(), "stop {node}: {}", stderr_of(&out));
}

fn start(lab: &Lab, node: &str) {
    let out = lab.as_postgres(&format!(
        "{}/pg_ctl -D {} -l {}/{node}.log -w start",
        lab.pg_bin(),
        lab.data_dir(node).display(),
        lab.dir.display()
    ));
    assert!(out.status.success(), "start {node}: {}", stderr_of(&out));
}

#[test]
fn promote_is_refused_while_the_primary_still_accepts_writes() {
    let lab = ha_lab("promoterefused");
    lab.reset_secondary("db2");
    let out = lab.pgzfs("db2", &["promote"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "two primaries must never happen"
    );
    assert!(
        stderr_of(&out).contains("db1"),
        "names the primary it found: {}",
        stderr_of(&out)
    );
    assert_eq!(
        lab.sql("db2", "SELECT pg_is_in_recovery()"),
        "t",
        "db2 is still a standby"
    );

    // The same through CARP: db2 briefly gets MASTER while db1 is alive (repmgr #90).
    let out = lab.pgzfs("db2", &["carp-event", "MASTER"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
}

#[test]
fn failover_then_the_old_primary_rejoins_keeping_its_diverged_writes() {
    let lab = ha_lab("rejoin");
    lab.reset_secondary("db2");
    lab.sql(
        "db1",
        "CREATE TABLE before_failover AS SELECT generate_series(1, 100) AS n",
    );
    lab.assert_same_contents("db1", "db2");
    // Wait until db2 has the table too, then lose db1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lab
        .try_sql("db2", "SELECT count(*) FROM before_failover")
        .as_deref()
        != Ok("100")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "db2 never replayed before_failover"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // db1's daemon runs (as rc.d runs it) and answers on a port of its own: when its
    // PostgreSQL is gone but the host is up, the daemon's "not running" is the positive
    // evidence that lets db2 promote. A node that does not answer at all would be
    // unknown, and unknown is not "not a primary".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    lab.write_config(&file_text(&lab.config()).replacen(
        "name = \"db1\"\n",
        &format!("name = \"db1\"\nhttp_listen = \"127.0.0.1:{port}\"\n"),
        1,
    ));
    let mut db1_daemon = lab
        .pgzfs_command("db1", &["daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    stop_immediately(&lab, "db1");

    // CARP makes db2 MASTER: it is promoted, writable, with an undo snapshot and epoch 1.
    let out = lab.pgzfs(
        "db2",
        &["carp-event", "MASTER", "--iface", "veth0", "--vhid", "1"],
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(db1_daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = db1_daemon.wait();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "f");
    lab.sql("db2", "CREATE TABLE after_failover (x int)");
    assert_eq!(
        lab.zfs(&[
            "get",
            "-H",
            "-o",
            "value",
            "pgzfs:epoch",
            &lab.dataset("db2")
        ])
        .trim(),
        "1"
    );
    assert!(
        lab.snapshots(&lab.dataset("db2"))
            .iter()
            .any(|(n, _)| n.contains("@pgzfs-prepromote-")),
        "undo snapshot taken"
    );
    // The same event again does nothing.
    let again = lab.pgzfs("db2", &["carp-event", "MASTER"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    assert!(
        events_log(&lab).contains("promote db2 1"),
        "the hook saw the promotion: {}",
        events_log(&lab)
    );

    // The old primary comes back on its own (as after a reboot) and takes writes nobody
    // else has: the split brain pgzfs must clean up without losing them.
    start(&lab, "db1");
    lab.sql("db1", "CREATE TABLE diverged_on_db1 AS SELECT 42 AS answer");
    // CARP tells it that it is BACKUP: fenced.
    let out = lab.pgzfs("db1", &["carp-event", "BACKUP"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        lab.try_sql("db1", "SELECT 1").is_err(),
        "db1 no longer serves"
    );
    // Not as a primary again, even if CARP says MASTER to it.
    let out = lab.pgzfs("db1", &["carp-event", "MASTER"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a fenced former primary never starts as primary"
    );

    let out = lab.pgzfs("db1", &["rejoin", "--to", "db2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["mode"], "incremental", "no full copy, no pg_rewind");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        lab.sql(
            "db2",
            "SELECT state FROM pg_stat_replication WHERE application_name = 'db1'"
        ),
        "streaming"
    );
    assert_eq!(
        lab.sql("db1", "SELECT count(*) FROM before_failover"),
        "100"
    );
    lab.sql("db2", "INSERT INTO after_failover VALUES (1)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while lab
        .try_sql("db1", "SELECT count(*) FROM after_failover")
        .as_deref()
        != Ok("1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "db1 does not replay db2's writes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        lab.try_sql("db1", "SELECT * FROM diverged_on_db1").is_err(),
        "the diverged table is gone from the live data"
    );

    // ... but kept in the quarantine stream file.
    let kept: Vec<_> = std::fs::read_dir(lab.dir.join("quarantine"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].to_string_lossy().ends_with(".zfs.gz"));
    assert!(
        std::fs::metadata(&kept[0]).unwrap().len() > 1000,
        "the stream holds the diverged blocks"
    );
    let log = events_log(&lab);
    assert!(
        log.contains("fence db1 1") && log.contains("rejoin db1 1 db2"),
        "{log}"
    );
}

/// PgBouncer in front of db1, as an application would use it.
fn start_pgbouncer(lab: &Lab) -> u16 {
    let dir = lab.dir.join("pgbouncer");
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = file_text(std::path::Path::new(lab.get("PGPASSFILE")))
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("port"), port.to_string()).unwrap();
    std::fs::write(
        dir.join("databases.ini"),
        format!(
            "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n",
            lab.get("DB1_PORT")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("userlist.txt"),
        format!("\"replicator\" \"{password}\"\n\"postgres\" \"\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "%include {d}/databases.ini\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {d}\n\
             auth_type = trust\nauth_file = {d}/userlist.txt\nadmin_users = postgres\npool_mode = transaction\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\nserver_login_retry = 1\n",
            d = dir.display()
        ),
    )
    .unwrap();
    assert!(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let out = lab.as_postgres(&format!("pgbouncer -d {}/pgbouncer.ini", dir.display()));
    assert!(out.status.success(), "pgbouncer: {}", stderr_of(&out));
    port
}

/// A client that commits one row at a time through PgBouncer until told to stop, and
/// remembers which ids it saw committed.
fn client_through_pgbouncer(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<i64>, usize)> {
    std::thread::spawn(move || {
        let mut committed = Vec::new();
        let mut failures = 0;
        let mut client: Option<postgres::Client> = None;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if client.is_none() {
                client = postgres::Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user("replicator")
                    .dbname("postgres")
                    .connect(postgres::NoTls)
                    .ok();
            }
            let Some(c) = client.as_mut() else {
                failures += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            };
            match c.simple_query("INSERT INTO ledger (note) VALUES ('client') RETURNING id") {
                Ok(messages) => {
                    for m in messages {
                        if let postgres::SimpleQueryMessage::Row(row) = m {
                            committed.push(row.get(0).unwrap().parse().unwrap());
                        }
                    }
                }
                Err(_) => {
                    failures += 1;
                    client = None;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        (committed, failures)
    })
}

#[test]
fn switchover_round_trip_loses_nothing_and_the_third_node_follows() {
    let lab = ha_lab("switchover");
    // A third node, so that one standby has to follow the new primary.
    let sock3 = lab.dir.join("sock3");
    std::fs::create_dir_all(&sock3).unwrap();
    assert!(Command::new("chown")
        .arg("postgres:postgres")
        .arg(&sock3)
        .status()
        .unwrap()
        .success());
    let port3 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    lab.append_config_node(&format!(
        "[[nodes]]\nname = \"db3\"\nhost = \"127.0.0.1\"\ndataset = \"{pool}/db3\"\ndata_dir = \"{dir}/db3/data\"\nmountpoint = \"{dir}/db3\"\n\
         pg_port = {port3}\nlock_file = \"{dir}/db3.lock\"\npg_log_file = \"{dir}/db3.log\"\n[nodes.pg_settings]\nunix_socket_directories = \"{sock}\"\n",
        pool = lab.pool(),
        dir = lab.dir.display(),
        sock = sock3.display(),
    ));
    lab.reset_secondary("db2");
    lab.reset_secondary("db3");
    lab.sql(
        "db1",
        "CREATE TABLE ledger (id serial PRIMARY KEY, note text)",
    );
    lab.sql("db1", "GRANT ALL ON ledger, ledger_id_seq TO replicator");
    lab.sql(
        "db1",
        "INSERT INTO ledger (note) SELECT 'before' FROM generate_series(1, 500)",
    );
    let bouncer = start_pgbouncer(&lab);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = client_through_pgbouncer(bouncer, stop.clone());
    std::thread::sleep(std::time::Duration::from_secs(1));

    let out = lab.pgzfs("db1", &["switchover", "--to", "db2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["new_primary"], "db2");
    assert_eq!(done["old_primary_rejoined"], true);
    assert_eq!(done["followed"], serde_json::json!(["db3"]));
    eprintln!(
        "switchover db1 -> db2: writes unavailable for {}s, total {}s",
        done["write_unavailable_seconds"], done["total_seconds"]
    );
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        lab.sql("db1", "SELECT pg_is_in_recovery()"),
        "t",
        "the old primary is a standby now"
    );
    let standbys = lab.sql("db2", "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming'");
    assert_eq!(standbys, "db1,db3");
    std::thread::sleep(std::time::Duration::from_secs(1));

    // And back.
    let out = lab.pgzfs("db2", &["switchover", "--to", "db1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let back: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "switchover db2 -> db1: writes unavailable for {}s, total {}s",
        back["write_unavailable_seconds"], back["total_seconds"]
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (committed, failures) = client.join().unwrap();

    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    let standbys = lab.sql("db1", "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming'");
    assert_eq!(standbys, "db2,db3");
    // Every transaction the client saw committed is on the final primary.
    assert!(
        committed.len() > 20,
        "the client kept writing through PgBouncer: {} commits, {failures} failures",
        committed.len()
    );
    let ids = committed
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let present = lab.sql(
        "db1",
        &format!("SELECT count(*) FROM ledger WHERE id IN ({ids})"),
    );
    assert_eq!(
        present,
        committed.len().to_string(),
        "lost transactions after A -> B -> A"
    );
    assert_eq!(
        lab.sql("db1", "SELECT count(*) FROM ledger WHERE note = 'before'"),
        "500"
    );
    eprintln!(
        "client: {} commits, {failures} failed attempts during the round trip",
        committed.len()
    );
    // PgBouncer was repointed by the event hook each time.
    let repoint =
        std::fs::read_to_string(lab.dir.join("pgbouncer/repoint.log")).unwrap_or_default();
    assert!(
        repoint.contains(&format!(
            "now pointing at 127.0.0.1:{}",
            lab.get("DB1_PORT")
        )),
        "{repoint}"
    );
    let _ = lab.as_postgres(&format!(
        "kill $(cat {}/pgbouncer/pgbouncer.pid)",
        lab.dir.display()
    ));
}

#[test]
fn a_primary_fenced_read_only_keeps_serving_reads_and_then_rejoins() {
    let lab = ha_lab("readonly");
    let config = file_text(&lab.config()).replacen(
        "[defaults]\n",
        "[defaults]\nfence_mode = \"read-only\"\n",
        1,
    );
    lab.write_config(&config);
    lab.reset_secondary("db2");
    lab.sql("db1", "CREATE TABLE t (x int)");
    // An application session that is open when the fence comes down.
    let password = file_text(std::path::Path::new(lab.get("PGPASSFILE")))
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let mut app = postgres::Config::new()
        .host("127.0.0.1")
        .port(lab.get("DB1_PORT").parse().unwrap())
        .user("replicator")
        .password(password)
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    app.simple_query("SELECT 1").unwrap();

    let out = lab.pgzfs("db1", &["carp-event", "BACKUP"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("read-only"));
    assert!(
        app.simple_query("SELECT 1").is_err(),
        "the open session was ended"
    );
    assert_eq!(
        lab.sql("db1", "SELECT count(*) FROM t"),
        "0",
        "reads still work"
    );
    assert!(
        lab.try_sql("db1", "INSERT INTO t VALUES (1)").is_err(),
        "writes are refused"
    );
    // Fencing again changes nothing; MASTER is refused for a fenced primary.
    assert_eq!(
        lab.pgzfs("db1", &["carp-event", "BACKUP"]).status.code(),
        Some(0)
    );
    assert_eq!(
        lab.pgzfs("db1", &["carp-event", "MASTER"]).status.code(),
        Some(3)
    );

    // The standby may take over: a read-only primary is no writable primary.
    let out = lab.pgzfs("db2", &["carp-event", "MASTER"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let out = lab.pgzfs("db1", &["rejoin", "--to", "db2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        lab.sql(
            "db2",
            "SELECT state FROM pg_stat_replication WHERE application_name = 'db1'"
        ),
        "streaming"
    );
}

#[test]
fn carp_backup_fences_at_once_while_another_run_holds_the_nodes_lock() {
    let lab = ha_lab("backupnolock");
    // A long operation (a re-seed from this node, a switchover) holds db1's lock, as
    // flock(1) on the same file does here. The lab's lock_timeout is 20 s.
    let lock_file = lab.dir.join("db1.lock");
    let mut holder = Command::new("flock")
        .arg(&lock_file)
        .args(["sleep", "120"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(holder.try_wait().unwrap().is_none(), "flock holds the lock");
    let started = std::time::Instant::now();
    let out = lab.pgzfs("db1", &["carp-event", "BACKUP"]);
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        took < std::time::Duration::from_secs(10),
        "the fence waited for the lock: {took:?}"
    );
    assert!(
        lab.try_sql("db1", "SELECT 1").is_err(),
        "db1 no longer serves"
    );
    eprintln!(
        "carp-event BACKUP fenced db1 in {:.1}s while the lock was held",
        took.as_secs_f64()
    );
}

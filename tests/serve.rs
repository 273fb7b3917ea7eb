//! `pgzfs serve` as the forced command of the key standbys log in with: re-seeding works
//! through it unchanged, and everything else is refused, logged and changes nothing.
//! Real sshd, zfs-fuse and PostgreSQL 15 from scripts/lab.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{file_text, pgzfs_bin, stderr_of, Lab};

/// Force the lab's only key to `pgzfs serve` for node db1, as an operator would in
/// ~zfssync/.ssh/authorized_keys on the primary.
fn force_serve(lab: &Lab) {
    force_serve_with(lab, "");
}

/// The same, with extra `serve` flags.
fn force_serve_with(lab: &Lab, flags: &str) {
    let ssh = lab.dir.join("ssh");
    let pubkey = file_text(&ssh.join("id_ed25519.pub"));
    let line = format!(
        "command=\"{} serve{flags} --config {} --node db1\",restrict {}\n",
        pgzfs_bin().display(),
        lab.config().display(),
        pubkey.trim()
    );
    std::fs::write(ssh.join("authorized_keys"), line).unwrap();
}

/// Back to the key with no forced command, as the lab made it.
fn unforce(lab: &Lab, plain_keys: &str) {
    std::fs::write(lab.dir.join("ssh/authorized_keys"), plain_keys).unwrap();
}

/// What a client other than pgzfs could send over the same key: a raw command string.
fn ssh(lab: &Lab, remote_command: &str) -> Output {
    let ssh = lab.dir.join("ssh");
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            ssh.join("known_hosts").display()
        ))
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(ssh.join("id_ed25519"))
        .args(["-p", lab.get("SSH_PORT"), "root@127.0.0.1", remote_command])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    eprintln!(
        "$ ssh ... {remote_command:?}\n-- exit {:?}\n-- stdout: {}\n-- stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Everything a refusal could have changed: the datasets and snapshots of the pool (with
/// their holds), and the marker files the injection attempts would create.
fn state(lab: &Lab) -> String {
    lab.zfs(&[
        "get",
        "-H",
        "-r",
        "-o",
        "name,property,value",
        "type,userrefs",
        lab.pool(),
    ])
}

#[test]
fn standbys_reseed_through_the_forced_command_and_nothing_else_gets_through() {
    let lab = Lab::up("serve");
    force_serve(&lab);
    let db1 = lab.dataset("db1");

    // An operator's first and second re-seed work exactly as without the forced command.
    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0",
    );
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    assert_eq!(incremental["base"], full["snapshot"]);
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");

    // The forced command really was in the way: its log lines name the commands it ran.
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains("serve: 127.0.0.1 port") && log.contains("zfs snapshot -r"),
        "serve logged what it ran:\n{log}"
    );

    // A read the standby is allowed works over a plain ssh client too.
    let out = ssh(
        &lab,
        &format!("zfs get -H -p -o name,property,value type {db1}"),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{db1}\ttype\tfilesystem")
    );

    let before = state(&lab);
    let snapshot = full["snapshot"].as_str().unwrap().to_string();
    let standby_snapshot = snapshot.replacen(&db1, &lab.dataset("db2"), 1);
    let marker = lab.dir.join("injected");
    let attempts = [
        format!("zfs destroy -r {db1}"),
        format!("zfs destroy {snapshot}"),
        "rm -rf /".to_string(),
        format!("zfs send {standby_snapshot}"),
        format!("zfs snapshot -r {db1}@evil"),
        format!("zfs snapshot {db1}@pgzfs-x; touch {}", marker.display()),
        format!(
            "zfs get -H -p -o name,property,value type {db1} && touch {}",
            marker.display()
        ),
        format!("zfs send $(touch {}) {snapshot}", marker.display()),
        format!(
            "zfs release pgzfs-db2 {snapshot}\ntouch {}",
            marker.display()
        ),
        format!("zfs hold keep {snapshot}"),
        format!("zfs set pgzfs:lsn=0/0 {db1}"),
        "sh".to_string(),
    ];
    for attempt in &attempts {
        let out = ssh(&lab, attempt);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{attempt:?} must be refused with exit 3"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "the client is told: {attempt:?}"
        );
        assert!(
            out.stdout.is_empty(),
            "a refusal streams nothing: {attempt:?}"
        );
    }
    assert_eq!(
        state(&lab),
        before,
        "the refusals changed nothing in the pool"
    );
    assert!(!Path::new(&marker).exists(), "no injected command ran");
    let log = file_text(&lab.dir.join("pgzfs.log"));
    let refusals = log
        .lines()
        .filter(|l| l.contains("serve: refused") && l.contains("from 127.0.0.1 port"))
        .count();
    assert_eq!(
        refusals,
        attempts.len(),
        "every refusal is logged once with the client's address:\n{log}"
    );
    // The standby is untouched by all that.
    lab.assert_streaming("db2");
}

/// `backup_via = "ssh"`: the standby asks the primary's own pgzfs, through the forced
/// command, for the backup-safe cut, so the backup session lives next to the data. And a
/// switchover needs `serve --allow-orchestration` on the node it promotes: without it the
/// promotion is refused and the old primary carries on, nothing lost.
#[test]
fn the_cut_runs_on_the_source_and_switchover_needs_the_orchestration_flag() {
    let lab = Lab::up("serveha");
    let config = file_text(&lab.config()).replacen(
        "[defaults]\n",
        &format!(
            "[defaults]\npgzfs_bin = \"{}\"\nbackup_via = \"ssh\"\nquarantine_dir = \"{}/quarantine\"\n",
            pgzfs_bin().display(),
            lab.dir.display()
        ),
        1,
    );
    lab.write_config(&config);
    let plain_keys = file_text(&lab.dir.join("ssh/authorized_keys"));
    force_serve(&lab);

    // The re-seed: the cut is one `pgzfs snapshot` on db1, its steps timed there.
    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    for step in [
        "backup start",
        "snapshot",
        "backup stop",
        "backup record",
        "cut over ssh",
    ] {
        assert!(
            full["steps"][step].is_number(),
            "step {step:?} is reported: {}",
            full["steps"]
        );
    }
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains("pgzfs snapshot --json --for db2"),
        "serve ran the cut as db1's pgzfs:\n{log}"
    );
    lab.sql("db1", "CREATE TABLE marks (n int)");
    lab.sql("db1", "INSERT INTO marks SELECT generate_series(1, 100)");
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    lab.assert_same_contents("db1", "db2");

    // A switchover to db1 and back, driven from the other side: first without the keys
    // in the way, so that db2 is the primary that wants to hand back to db1.
    unforce(&lab, &plain_keys);
    let out = lab.pgzfs("db1", &["switchover", "--to", "db2", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "f");
    lab.sql("db2", "INSERT INTO marks SELECT generate_series(101, 200)");

    // db1's key cannot promote without --allow-orchestration: refused, and db2 is the
    // primary again with everything it had.
    force_serve(&lab);
    let out = lab.pgzfs("db2", &["switchover", "--to", "db1", "--json"]);
    assert_ne!(out.status.code(), Some(0), "the promotion must be refused");
    let why = stderr_of(&out);
    assert!(why.contains("--allow-orchestration"), "{why}");
    assert!(why.contains("restarted as the primary"), "{why}");
    assert_eq!(lab.sql("db2", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(lab.sql("db2", "SELECT count(*) FROM marks"), "200");
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "t");
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains("serve: refused") && log.contains("promote --force"),
        "the refusal is logged:\n{log}"
    );

    // db1 reconnects to the restarted db2 on its own (the WAL receiver retries).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lab.sql(
        "db2",
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'db1' AND state = 'streaming'",
    ) != "1"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "db1 did not stream from db2 again"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    // With the flag, the same switchover goes through, and db2 rejoins db1 through the
    // forced command, its cut taken by db1's pgzfs.
    force_serve_with(&lab, " --allow-orchestration");
    let out = lab.pgzfs("db2", &["switchover", "--to", "db1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["new_primary"], "db1");
    assert_eq!(done["old_primary_rejoined"], true);
    assert_eq!(lab.sql("db1", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(lab.sql("db1", "SELECT count(*) FROM marks"), "200");
    lab.assert_streaming("db2");
}

/// `ssh_compress = "zstd:3"`: the stream of a re-seed comes zstd-compressed by the
/// source's pgzfs. First with the lab's plain key, the stream over ssh(1); then through
/// the forced command with the stream on the libssh2 session, where serve runs the
/// compressed send as its own pgzfs only after checking the `zfs send` inside it.
#[test]
fn a_zstd_compressed_stream_reseeds_directly_and_through_the_forced_command() {
    let lab = Lab::up("zstd");
    let config = file_text(&lab.config()).replacen(
        "[defaults]\n",
        &format!(
            "[defaults]\npgzfs_bin = \"{}\"\nssh_compress = \"zstd:3\"\n",
            pgzfs_bin().display()
        ),
        1,
    );
    lab.write_config(&config);

    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains("the stream comes zstd-compressed at level 3"),
        "the re-seed used ssh_compress:\n{log}"
    );

    lab.write_config(&config.replacen("[defaults]\n", "[defaults]\nssh_data_path = \"ssh2\"\n", 1));
    force_serve(&lab);
    lab.sql(
        "db1",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0",
    );
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    assert_eq!(incremental["base"], full["snapshot"]);
    lab.assert_streaming("db2");
    lab.assert_same_contents("db1", "db2");
    let base = full["snapshot"].as_str().unwrap();
    let log = file_text(&lab.dir.join("pgzfs.log"));
    assert!(
        log.contains(&format!(
            "pgzfs compressed-send --zstd 3 -- zfs send -i {base} "
        )),
        "serve ran the compressed incremental send as db1's pgzfs:\n{log}"
    );

    // The send inside must be one serve would allow by itself: not another dataset's.
    let standby_snapshot = base.replacen(&lab.dataset("db1"), &lab.dataset("db2"), 1);
    let out = ssh(
        &lab,
        &format!(
            "{} --config {} --node db1 compressed-send --zstd 3 -- zfs send {standby_snapshot}",
            pgzfs_bin().display(),
            lab.config().display()
        ),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(out.stdout.is_empty(), "a refusal streams nothing");
    lab.assert_streaming("db2");
}

/// The feature probes against the real zfs-fuse: it has none of the modern abilities, so
/// pgzfs must keep using plain `zfs send [-i]` there.
#[test]
fn zfs_fuse_is_detected_as_having_no_modern_send_or_receive_features() {
    use pgzfs::zfs::cli::ZfsCli;
    use pgzfs::zfs::features::SendOptions;
    use pgzfs::zfs::names::DatasetName;
    use pgzfs::zfs::Zfs;

    let lab = Lab::up("feat");
    let zfs = ZfsCli::new(pgzfs::exec::Local);
    let dataset = DatasetName::parse(&lab.dataset("db1")).unwrap();
    let found = zfs.features_for(&dataset).unwrap();
    assert_eq!(
        found,
        pgzfs::zfs::Features::default(),
        "zfs-fuse (pool v23) has no written, resume, -L/-e/-c/-w or bookmarks"
    );
    assert!(!zfs.is_encrypted(&dataset).unwrap());
    assert!(SendOptions::choose(&found, &found, false).is_plain());
    assert_eq!(zfs.resume_token(&dataset).unwrap(), None);
    // The same probes through the forced command give the same answers.
    force_serve(&lab);
    let target = pgzfs::ssh::SshTarget {
        host: "127.0.0.1".into(),
        port: lab.get("SSH_PORT").parse().unwrap(),
        user: "root".into(),
        key: lab.dir.join("ssh/id_ed25519"),
        known_hosts: lab.dir.join("ssh/known_hosts"),
        connect_timeout: std::time::Duration::from_secs(5),
    };
    let remote = ZfsCli::new(pgzfs::ssh::SshHost::connect(&target).unwrap());
    assert_eq!(remote.features_for(&dataset).unwrap(), found);
}

/// issue 9: a standby's key could release another standby's base hold (retention may then
/// prune it, and that standby needs a full re-seed) or rewrite the backup_label of an
/// existing cut (a later resumed re-seed would start from the forged label). With
/// `serve --for db2` the key acts for db2 only: re-seeding db2 works unchanged, both
/// attacks are refused and change nothing.
#[test]
fn a_key_bound_to_one_standby_cannot_release_another_standbys_hold_or_relabel_a_cut() {
    let lab = Lab::up("servefor");
    force_serve_with(&lab, " --for db2");

    // db2's own re-seed: holds with its tag, snapshot and label over one connection.
    let full = lab.reset_secondary("db2");
    assert_eq!(full["mode"], "full");
    lab.assert_streaming("db2");
    let snapshot = full["snapshot"].as_str().unwrap().to_string();
    let label = lab.zfs(&["get", "-H", "-o", "value", "pgzfs:backup_label", &snapshot]);
    assert_ne!(
        label.trim(),
        "-",
        "the cut got its label through the bound key"
    );
    let taken_for = lab.zfs(&["get", "-H", "-o", "value", "pgzfs:taken_for", &snapshot]);
    assert!(
        taken_for.starts_with("db2/"),
        "serve marked the snapshot as db2's: {taken_for}"
    );

    // Another standby's base hold on the same snapshot, as its own re-seed left it.
    lab.zfs(&["hold", "pgzfs-db3", &snapshot]);
    let before = (
        state(&lab),
        lab.zfs(&["get", "-H", "-o", "value", "pgzfs:backup_label", &snapshot]),
    );
    for attempt in [
        format!("zfs release pgzfs-db3 {snapshot}"),
        format!("zfs hold pgzfs-db3 {snapshot}"),
        format!("zfs set pgzfs:backup_label=5354415254 {snapshot}"),
        format!("zfs set pgzfs:taken_for=db2/x {snapshot}"),
    ] {
        let out = ssh(&lab, &attempt);
        assert_eq!(out.status.code(), Some(3), "{attempt:?} must be refused");
        assert!(
            stderr_of(&out).contains("refused"),
            "the client is told: {attempt:?}"
        );
    }
    let after = (
        state(&lab),
        lab.zfs(&["get", "-H", "-o", "value", "pgzfs:backup_label", &snapshot]),
    );
    assert_eq!(after, before, "the hold and the label are unchanged");
    assert!(
        lab.zfs(&["get", "-H", "-o", "value", "userrefs", &snapshot])
            .trim()
            .parse::<u32>()
            .unwrap()
            >= 2,
        "db2's and db3's holds are both still there"
    );
    lab.zfs(&["release", "pgzfs-db3", &snapshot]);

    // The next re-seed of db2 (incremental, releasing its own older hold) still works.
    let incremental = lab.reset_secondary("db2");
    assert_eq!(incremental["mode"], "incremental");
    lab.assert_streaming("db2");
}

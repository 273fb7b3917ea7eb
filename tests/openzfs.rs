//! The OpenZFS tier: pgzfs against kernel OpenZFS 2.1 (Debian bookworm's zfs-dkms) in a
//! QEMU guest that `scripts/openzfs-vm` builds and boots. Inside one guest: two pools,
//! a PostgreSQL 15 primary db1 on pgzfs1/db1, and a standby db2 that pgzfs creates in
//! pgzfs2 over ssh to the guest's own sshd. The pgzfs under test is this build, copied in.
//!
//! Run with `scripts/test --openzfs`. Without a guest image every test here FAILS with
//! what to do; nothing is skipped. The guest runs under TCG (no KVM): slow, so the
//! databases are pgbench scale 1 and the tests run one at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vm_script() -> PathBuf {
    repo().join("scripts/openzfs-vm")
}

/// Single-quote `s` for the guest's shell.
fn shq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const CONTENTS_SQL: &str = "SELECT count(*) || ':' || md5(string_agg(aid || '=' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts";

/// One booted guest with a lab inside; stopped when dropped.
struct Guest {
    dir: PathBuf,
    env: HashMap<String, String>,
    keep: bool,
}

impl Guest {
    /// Boot a guest, copy this build's pgzfs in, set up the lab with `zfs_backend = backend`.
    fn up(test: &str, backend: &str) -> Guest {
        let mut guest = Guest::boot(test);
        let t1 = Instant::now();
        let out = guest.script(&["lab", guest.dir_str(), "--backend", backend]);
        guest.env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        eprintln!(
            "[{test}] lab (pools, db1, pgbench -s 1) in {:.0?}; OpenZFS {}",
            t1.elapsed(),
            guest.get("ZFS_VERSION")
        );
        guest
    }

    /// Boot a guest with this build's pgzfs in it, no lab yet.
    fn boot(test: &str) -> Guest {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the OpenZFS tier needs root (QEMU, the cache in /var/cache/pgzfs-vm)"
        );
        let dir = PathBuf::from(format!(
            "/tmp/pgzfs-vm/{test}{}",
            std::process::id() % 100000
        ));
        let t0 = Instant::now();
        let out = Command::new(vm_script())
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/openzfs-vm");
        if !out.status.success() {
            // Whatever half of it started must not outlive the test.
            let _ = Command::new(vm_script())
                .arg("down")
                .arg(&dir)
                .stdin(Stdio::null())
                .status();
        }
        assert!(
            out.status.success(),
            "no OpenZFS guest: `scripts/openzfs-vm up` failed (build the image with \
             `scripts/openzfs-vm build`, ~10 minutes from scratch):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let guest = Guest {
            dir,
            env: HashMap::new(),
            keep: std::env::var_os("PGZFS_KEEP_LAB").is_some(),
        };
        eprintln!("[{test}] guest booted in {:.0?}", t0.elapsed());
        guest.install(env!("CARGO_BIN_EXE_pgzfs"), "/usr/local/bin/pgzfs");
        let version = guest.run("pgzfs --version");
        assert!(version.contains("pgzfs"), "{version}");
        guest
    }

    fn dir_str(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("the guest's lab.env has no {key}"))
    }

    /// `scripts/openzfs-vm SUBCOMMAND ARGS...`, which must succeed.
    fn script(&self, args: &[&str]) -> Output {
        let out = Command::new(vm_script())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/openzfs-vm");
        assert!(
            out.status.success(),
            "scripts/openzfs-vm {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Copy a host-built binary into the guest without its debug info (it goes over ssh
    /// into a slow guest; the guest's glibc is the host's).
    fn install(&self, binary: &str, guest_path: &str) {
        let stripped = self.dir.join("binary.stripped");
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&stripped)
            .status()
            .expect("run objcopy");
        assert!(status.success(), "objcopy --strip-debug {binary} failed");
        self.script(&[
            "put",
            self.dir_str(),
            stripped.to_str().unwrap(),
            guest_path,
        ]);
        let _ = std::fs::remove_file(&stripped);
    }

    /// Run a shell command line in the guest as root.
    fn sh(&self, command: &str) -> Output {
        Command::new(vm_script())
            .args(["ssh", self.dir_str(), command])
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/openzfs-vm ssh")
    }

    /// Run a shell command line in the guest; it must succeed; its stdout.
    fn run(&self, command: &str) -> String {
        let out = self.sh(command);
        assert!(
            out.status.success(),
            "in the guest: {command}\nexit {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn zfs(&self, args: &str) -> String {
        self.run(&format!("zfs {args}"))
    }

    fn pgzfs(&self, node: &str, args: &str) -> Output {
        let out = self.sh(&format!(
            "pgzfs --config /lab/pgzfs.toml --node {node} {args} </dev/null"
        ));
        eprintln!(
            "$ [guest] pgzfs --node {node} {args}\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn reset_secondary(&self, node: &str) -> serde_json::Value {
        let t0 = Instant::now();
        let out = self.pgzfs(node, "reset-secondary --yes --json");
        assert_eq!(
            out.status.code(),
            Some(0),
            "reset-secondary on {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("reset-secondary took {:.0?}", t0.elapsed());
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
    }

    fn try_sql(&self, node: &str, sql: &str) -> Result<String, String> {
        let (sock, port) = match node {
            "db1" => (self.get("SOCK_DIR"), self.get("DB1_PORT")),
            "db2" => (self.get("SOCK2_DIR"), self.get("DB2_PORT")),
            other => panic!("no node {other} in the guest lab"),
        };
        let out = self.sh(&format!(
            "{}/psql -X -At -v ON_ERROR_STOP=1 -h {sock} -p {port} -U postgres -d postgres -c {}",
            self.get("PG_BIN"),
            shq(sql)
        ));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn sql(&self, node: &str, sql: &str) -> String {
        self.try_sql(node, sql)
            .unwrap_or_else(|e| panic!("SQL on {node} failed: {sql}: {e}"))
    }

    /// Some writes on the primary, so that the next re-seed has something to carry.
    fn write_on_primary(&self, transactions: u32) {
        self.run(&format!(
            "runuser -u postgres -- {}/pgbench -n -t {transactions} -h {} -p {} postgres >/dev/null",
            self.get("PG_BIN"),
            self.get("SOCK_DIR"),
            self.get("DB1_PORT")
        ));
    }

    fn assert_streaming(&self, standby: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.try_sql(standby, "SELECT status FROM pg_stat_wal_receiver");
            if status.as_deref() == Ok("streaming") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{standby} is not streaming: {status:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        assert_eq!(self.sql(standby, "SELECT pg_is_in_recovery()"), "t");
        assert_eq!(
            self.sql(
                "db1",
                &format!(
                    "SELECT state FROM pg_stat_replication WHERE application_name = '{standby}'"
                )
            ),
            "streaming",
            "the primary does not see {standby} streaming"
        );
    }

    /// Wait until the standby has replayed what the primary has now, then compare.
    fn assert_same_contents(&self, primary: &str, standby: &str) {
        let want = self.sql(primary, CONTENTS_SQL);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = self.try_sql(standby, CONTENTS_SQL);
            if got.as_deref() == Ok(want.as_str()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{standby} never caught up with {primary}: want {want}, got {got:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Change one line of /lab/pgzfs.toml in the guest (`sed` expression).
    fn edit_config(&self, sed: &str) {
        self.run(&format!("sed -i -e {} /lab/pgzfs.toml", shq(sed)));
    }

    fn resume_token(&self, dataset: &str) -> Option<String> {
        let out = self.sh(&format!(
            "zfs get -H -o value receive_resume_token {dataset}"
        ));
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !value.is_empty() && value != "-").then_some(value)
    }

    /// The size `zfs send -n -P` predicts for a full stream of `snapshot`.
    fn full_send_size(&self, snapshot: &str) -> u64 {
        let out = self.zfs(&format!("send -n -P {snapshot}"));
        out.lines()
            .find_map(|l| l.strip_prefix("size\t"))
            .unwrap_or_else(|| panic!("no size line in `zfs send -n -P`: {out}"))
            .trim()
            .parse()
            .expect("size is a number")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "PGZFS_KEEP_LAB: the guest keeps running: scripts/openzfs-vm ssh {0}; \
                 scripts/openzfs-vm down {0}",
                self.dir.display()
            );
            return;
        }
        let _ = Command::new(vm_script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A full re-seed, writes, an incremental one: the standby streams and has the primary's
/// data after each, and pgzfs used what only modern ZFS has (holds read back with
/// `zfs holds`, a bookmark of the new base).
fn full_then_incremental(test: &str, backend: &str) {
    let guest = Guest::up(test, backend);
    let db1 = guest.get("DB1_DATASET").to_string();
    let db2 = guest.get("DB2_DATASET").to_string();

    // The preview on real OpenZFS knows the stream's size (`zfs send -n -P`).
    let out = guest.pgzfs("db2", "reset-secondary --dry-run");
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("full"), "{plan}");
    assert!(
        plan.contains("estimated size") && !plan.contains("estimated size: unknown"),
        "OpenZFS can estimate the stream: {plan}"
    );

    let full = guest.reset_secondary("db2");
    assert_eq!(full["mode"], "full", "{full}");
    assert_eq!(full["resumed"], false, "{full}");
    let full_bytes = full["bytes"].as_u64().unwrap();
    assert!(full_bytes > 1_000_000, "a full stream: {full}");
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");

    // The common base is held on both sides, as `zfs holds` (broken on zfs-fuse) says,
    // and bookmarked on the primary.
    let snapshot = full["snapshot"].as_str().unwrap().to_string();
    let snap = snapshot.split_once('@').unwrap().1.to_string();
    let holds = guest.zfs(&format!("holds -H {snapshot}"));
    assert!(holds.contains("pgzfs"), "the base on db1 is held: {holds}");
    let holds = guest.zfs(&format!("holds -H {db2}@{snap}"));
    assert!(holds.contains("pgzfs"), "the base on db2 is held: {holds}");
    let bookmarks = guest.zfs(&format!("list -H -p -t bookmark -o name -r {db1}"));
    assert!(
        bookmarks.lines().any(|b| b == format!("{db1}#{snap}")),
        "the base is bookmarked on db1: {bookmarks}"
    );

    guest.write_on_primary(200);
    let incr = guest.reset_secondary("db2");
    assert_eq!(incr["mode"], "incremental", "{incr}");
    assert_eq!(incr["base"].as_str(), Some(snapshot.as_str()), "{incr}");
    // Only the changes travel; at scale 1 they are mostly the new WAL segments (16 MB
    // each) that the writes and the backup's checkpoint fill, so not a tiny stream.
    let incr_bytes = incr["bytes"].as_u64().unwrap();
    assert!(
        incr_bytes < full_bytes,
        "an incremental carries only the changes: {incr_bytes} vs full {full_bytes}"
    );
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");
    eprintln!("[{test}] full {full_bytes} bytes, incremental {incr_bytes} bytes");
}

#[test]
fn openzfs_cli_backend_full_then_incremental_reseed_keep_the_standby_streaming_and_equal() {
    full_then_incremental("ozcli", "cli");
}

#[test]
fn openzfs_lzc_backend_full_then_incremental_reseed_keep_the_standby_streaming_and_equal() {
    if !cfg!(feature = "libzfs-core") {
        panic!(
            "this test needs pgzfs built with the libzfs-core feature (scripts/test --openzfs builds it)"
        );
    }
    full_then_incremental("ozlzc", "lzc");
}

/// Start a full re-seed of db2 that receives at `bwlimit`, and stop it with SIGINT (an
/// operator's Ctrl-C) once `fraction` of the predicted stream has gone into `zfs receive`.
/// Returns the snapshot the interrupted run cut.
fn interrupt_full_reseed(guest: &Guest, fraction: f64) -> String {
    guest.edit_config(r#"/^name = "db2"/a bwlimit = "2M""#);
    guest.run(
        "nohup pgzfs --config /lab/pgzfs.toml --node db2 reset-secondary --yes \
         </dev/null >/lab/interrupted.log 2>&1 & echo $! >/lab/interrupted.pid",
    );
    let db1 = guest.get("DB1_DATASET");
    // Wait for the cut (the snapshot on db1), then for the receive to get far enough.
    let deadline = Instant::now() + Duration::from_secs(300);
    let snapshot = loop {
        let snaps = guest.zfs(&format!("list -H -o name -t snapshot -r {db1}"));
        if let Some(s) = snaps.lines().find(|s| s.contains("@pgzfs-")) {
            break s.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the re-seed never cut a snapshot: {}",
            guest.run("cat /lab/interrupted.log")
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let predicted = guest.full_send_size(&snapshot);
    let want = (predicted as f64 * fraction) as u64;
    loop {
        // What `zfs receive` has read from its stdin so far.
        let read = guest.run(
            "for p in $(pgrep -x zfs); do grep -q receive /proc/$p/cmdline && \
             sed -n 's/^rchar: //p' /proc/$p/io; done | sort -n | tail -n 1",
        );
        let read: u64 = read.trim().parse().unwrap_or(0);
        if read >= want {
            eprintln!("interrupting at {read} of {predicted} predicted bytes");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the receive never reached {want} bytes (at {read}): {}",
            guest.run("cat /lab/interrupted.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    guest.run("kill -INT $(cat /lab/interrupted.pid)");
    guest.run("for i in $(seq 120); do kill -0 $(cat /lab/interrupted.pid) 2>/dev/null || exit 0; sleep 1; done; exit 1");
    guest.edit_config("/^bwlimit = /d");
    eprintln!(
        "interrupted run:\n{}",
        guest.run("cat /lab/interrupted.log")
    );
    snapshot
}

#[test]
fn openzfs_an_interrupted_full_reseed_resumes_from_the_token_and_sends_far_less_than_a_full_copy() {
    let guest = Guest::up("ozresume", "cli");
    let db2 = guest.get("DB2_DATASET").to_string();
    let snapshot = interrupt_full_reseed(&guest, 0.6);
    let token = guest.resume_token(&db2);
    assert!(
        token.is_some(),
        "the interrupted receive left a resume token on {db2}"
    );
    let predicted = guest.full_send_size(&snapshot);

    let rerun = guest.reset_secondary("db2");
    assert_eq!(rerun["resumed"], true, "the rerun continued: {rerun}");
    assert_eq!(
        rerun["snapshot"].as_str(),
        Some(snapshot.as_str()),
        "{rerun}"
    );
    let sent = rerun["bytes"].as_u64().unwrap();
    assert!(
        sent > 0 && sent < predicted * 6 / 10,
        "the rerun sent only the rest: {sent} bytes of {predicted} for a full copy"
    );
    assert_eq!(guest.resume_token(&db2), None, "no token left behind");
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");
    eprintln!("resumed: {sent} of {predicted} bytes sent by the rerun");
}

#[test]
fn openzfs_a_stale_resume_token_is_discarded_and_the_reseed_starts_afresh() {
    let guest = Guest::up("ozstale", "cli");
    let db2 = guest.get("DB2_DATASET").to_string();
    let snapshot = interrupt_full_reseed(&guest, 0.3);
    assert!(guest.resume_token(&db2).is_some(), "a token to go stale");

    // The snapshot the partial stream came from goes away on the primary (an operator's
    // cleanup): the token can no longer be continued.
    for line in guest.zfs(&format!("holds -H {snapshot}")).lines() {
        let tag = line.split('\t').nth(1).expect("holds -H: name, tag, time");
        guest.zfs(&format!("release {tag} {snapshot}"));
    }
    guest.zfs(&format!("destroy {snapshot}"));

    let rerun = guest.reset_secondary("db2");
    assert_eq!(rerun["resumed"], false, "{rerun}");
    assert_eq!(rerun["mode"], "full", "{rerun}");
    assert_ne!(rerun["snapshot"].as_str(), Some(snapshot.as_str()));
    assert_eq!(
        guest.resume_token(&db2),
        None,
        "the stale partial was dropped"
    );
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");
}

#[test]
fn openzfs_a_non_root_zfssync_user_with_the_readme_delegation_serves_reseeds_and_refuses_a_forged_token(
) {
    let guest = Guest::up("ozserve", "cli");
    let db1 = guest.get("DB1_DATASET").to_string();
    // The sending side exactly as the README sets it up: a zfssync user whose key is
    // bound to `pgzfs serve`, with the README's `zfs allow` set and nothing more.
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let allow = readme
        .lines()
        .find(|l| l.starts_with("zfs allow -u zfssync "))
        .expect("the README documents the sending side's zfs allow");
    // zfs allow -u zfssync PERMISSIONS DATASET
    let perms = allow.split_whitespace().nth(4).expect("a permission list");
    guest.run("useradd -m -s /bin/sh zfssync");
    guest.zfs(&format!("allow -u zfssync {perms} {db1}"));
    guest.run(
        "install -d -o zfssync -g zfssync -m 0700 ~zfssync/.ssh && \
         printf 'from=\"127.0.0.1\",command=\"/usr/local/bin/pgzfs serve --config /lab/pgzfs.toml --node db1\",restrict %s\\n' \
           \"$(cat /lab/ssh/id_ed25519.pub)\" >~zfssync/.ssh/authorized_keys && \
         chown zfssync:zfssync ~zfssync/.ssh/authorized_keys && chmod 0600 ~zfssync/.ssh/authorized_keys",
    );
    guest.edit_config(r#"s/^ssh_user = "root"/ssh_user = "zfssync"/"#);

    let full = guest.reset_secondary("db2");
    assert_eq!(full["mode"], "full", "{full}");
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");
    // zfssync made the snapshot, its properties, the hold and the bookmark.
    let snapshot = full["snapshot"].as_str().unwrap();
    let snap = snapshot.split_once('@').unwrap().1;
    assert!(
        guest.zfs(&format!("holds -H {snapshot}")).contains("pgzfs"),
        "the base is held on db1"
    );
    let bookmarks = guest.zfs(&format!("list -H -t bookmark -o name -r {db1}"));
    assert!(
        bookmarks.lines().any(|b| b == format!("{db1}#{snap}")),
        "zfssync bookmarked the base: {bookmarks}"
    );
    guest.write_on_primary(100);
    let incr = guest.reset_secondary("db2");
    assert_eq!(incr["mode"], "incremental", "{incr}");
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");

    // A real token, but for another dataset of the primary's pool: a receiver that asks
    // the sender to continue it wants a stream it was never given (openzfs#14153).
    guest.run(
        "zfs create pgzfs1/other && dd if=/dev/urandom of=/pgzfs1-other.bin bs=1M count=4 2>/dev/null && \
         zfs set mountpoint=/lab/other pgzfs1/other && cp /pgzfs1-other.bin /lab/other/ && \
         zfs snapshot pgzfs1/other@s && \
         (zfs send pgzfs1/other@s | head -c 1000000 | zfs receive -s pgzfs2/other || true)",
    );
    let forged = guest
        .resume_token("pgzfs2/other")
        .expect("a cut stream leaves a token");
    let out = guest.sh(&format!(
        "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile=/lab/ssh/known_hosts -i /lab/ssh/id_ed25519 \
         zfssync@127.0.0.1 'zfs send -t {forged}' | wc -c"
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "serve streamed nothing for the forged token: {stderr}"
    );
    assert!(
        stderr.contains("refused"),
        "serve says it refused the forged token: {stderr}"
    );
}

/// The fixtures in tests/fixtures/openzfs-2.1 were recorded in this guest; what it prints
/// now still matches them where the output is deterministic, and pgzfs's parsers read
/// what it prints live.
#[test]
fn openzfs_recorded_fixtures_match_what_the_guest_prints() {
    let guest = Guest::up("ozfixtures", "cli");
    let fixtures = repo().join("tests/fixtures/openzfs-2.1");
    let fixture = |name: &str| -> String {
        std::fs::read_to_string(fixtures.join(name))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    };
    assert_eq!(guest.run("zfs send 2>&1; true"), fixture("send-usage.txt"));
    assert_eq!(
        guest.run("zfs get -H -o value receive_resume_token pgzfs1/db1"),
        fixture("get-receive_resume_token-none.txt")
    );
    assert_eq!(guest.run("zfs version"), fixture("zfs-version.txt"));
    let usage = pgzfs::zfs::features::parse_send_usage(&guest.run("zfs send 2>&1; true"));
    for flag in ['c', 'L', 'e', 'w', 'P', 'n'] {
        assert!(usage.has(flag), "zfs send -{flag} detected: {usage:?}");
    }
    // A live token decodes into what the parser expects.
    guest.run(
        "zfs snapshot pgzfs1/db1@fx && \
         (zfs send pgzfs1/db1@fx | head -c 3000000 | zfs receive -s pgzfs2/fx || true)",
    );
    let token = guest.resume_token("pgzfs2/fx").expect("a token");
    let contents = guest.run(&format!("zfs send -nv -t {token} 2>&1"));
    let info = pgzfs::zfs::features::parse_resume_token_contents(&contents)
        .unwrap_or_else(|e| panic!("parse {contents}: {e}"));
    assert_eq!(info.toname, "pgzfs1/db1@fx", "{info:?}");
    assert!(info.fromguid.is_none(), "a full stream's token: {info:?}");
}

/// The libzfs_core backend's own kernel test (snapshot with properties, holds, release,
/// destroy, send and receive through lzc_* calls), which needs /dev/zfs: the unit-test
/// binary built with the libzfs-core feature, run inside the guest. scripts/test
/// --openzfs builds it and names it in PGZFS_LZC_LIB_TESTS.
#[test]
fn openzfs_libzfs_core_kernel_test_passes_in_the_guest() {
    let binary = std::env::var("PGZFS_LZC_LIB_TESTS").unwrap_or_else(|_| {
        panic!(
            "PGZFS_LZC_LIB_TESTS must name the unit-test binary built with \
             --features libzfs-core (scripts/test --openzfs sets it)"
        )
    });
    let guest = Guest::boot("ozlzcunit");
    guest.install(&binary, "/usr/local/bin/pgzfs-lib-tests");
    guest.run("zpool create -f -m none pgzfs1 /dev/disk/by-id/virtio-pgzfs-pool1 && zfs create pgzfs1/lzctest");
    let out = guest.sh(
        "PGZFS_LZC_TEST_DATASET=pgzfs1/lzctest pgzfs-lib-tests zfs::lzc:: --test-threads=1 2>&1",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "the lzc tests failed in the guest");
    assert!(
        !text.contains("NOT RUN"),
        "the kernel test must have run: {text}"
    );
    assert!(
        text.contains("snapshot_hold_release_destroy_send_and_receive_on_kernel_zfs ... ok"),
        "{text}"
    );
}

/// db1 laid out as people who tune PostgreSQL on ZFS lay it out, inside the guest:
/// pg_wal on the child `pgzfs1/db1/wal` with 128k records (the data directory's dataset
/// has 16k), and a tablespace `fast` on `pgzfs1/db1ts`, outside that tree, holding a
/// table. Both nodes get the `tablespaces` entry in /lab/pgzfs.toml.
fn lay_out_db1_as_a_tree(guest: &Guest) {
    let pg_bin = guest.get("PG_BIN");
    guest.run(&format!(
        "set -e; cd /; \
         runuser -u postgres -- {pg_bin}/pg_ctl -D /lab/db1/data -w -t 300 stop >/dev/null; \
         mv /lab/db1/data/pg_wal /lab/db1/data/pg_wal.old; \
         mkdir /lab/db1/data/pg_wal; \
         zfs create -o recordsize=128k -o mountpoint=/lab/db1/data/pg_wal pgzfs1/db1/wal; \
         cp -a /lab/db1/data/pg_wal.old/. /lab/db1/data/pg_wal/; \
         chown postgres:postgres /lab/db1/data/pg_wal; chmod 0700 /lab/db1/data/pg_wal; \
         rm -rf /lab/db1/data/pg_wal.old; \
         zfs create -o recordsize=16k -o mountpoint=/lab/db1-ts pgzfs1/db1ts; \
         install -d -o postgres -g postgres -m 0700 /lab/db1-ts/pg; \
         runuser -u postgres -- {pg_bin}/pg_ctl -D /lab/db1/data -l /lab/db1.log -w -t 300 start >/dev/null"
    ));
    guest.sql("db1", "CREATE TABLESPACE fast LOCATION '/lab/db1-ts/pg'");
    guest.sql(
        "db1",
        "CREATE TABLE orders TABLESPACE fast AS SELECT g AS id, md5(g::text) AS item FROM generate_series(1, 5000) g",
    );
    for (node, pool) in [("db1", "pgzfs1"), ("db2", "pgzfs2")] {
        guest.edit_config(&format!(
            r#"s|^mountpoint = "/lab/{node}"$|&\ntablespaces = [{{ name = "fast", dataset = "{pool}/{node}ts", mountpoint = "/lab/{node}-ts" }}]|"#
        ));
    }
    let config = guest.run("cat /lab/pgzfs.toml");
    assert_eq!(
        config.matches("tablespaces = [").count(),
        2,
        "both nodes name the tablespace: {config}"
    );
}

const ORDERS_SQL: &str =
    "SELECT count(*) || ':' || md5(string_agg(id || item, ',' ORDER BY id)) FROM orders";

/// Wait until the standby's `orders` (in the tablespace) equal the primary's.
fn assert_same_orders(guest: &Guest) {
    let want = guest.sql("db1", ORDERS_SQL);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = guest.try_sql("db2", ORDERS_SQL);
        if got.as_deref() == Ok(want.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "db2 never showed the primary's orders: want {want}, got {got:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// On kernel OpenZFS the cut of a tree with a tablespace is ONE `zfs snapshot -r tree@s
/// ts@s` call: the three snapshots share a transaction group (`createtxg`), which no
/// sequence of separate calls guarantees. A full then an incremental re-seed carry the
/// tree and the tablespace; the standby's wal child keeps the primary's record size.
#[test]
fn openzfs_a_tree_with_wal_child_and_tablespace_is_cut_atomically_and_reseeds_full_then_incremental(
) {
    let guest = Guest::up("oztree", "cli");
    lay_out_db1_as_a_tree(&guest);
    // First with pg_wal sent along, a member of every cut like the tablespace.
    guest.edit_config(r"s|^\[defaults\]$|&\nsend_pg_wal = true|");
    let get = |prop: &str, ds: &str| -> String {
        guest
            .zfs(&format!("get -H -p -o value {prop} {ds}"))
            .trim()
            .to_string()
    };
    let primary = ["pgzfs1/db1", "pgzfs1/db1/wal", "pgzfs1/db1ts"];
    let standby = ["pgzfs2/db2", "pgzfs2/db2/wal", "pgzfs2/db2ts"];

    // The preview knows this ZFS cuts everything in one call.
    let out = guest.pgzfs("db2", "reset-secondary --dry-run");
    assert_eq!(out.status.code(), Some(0));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("child: full pgzfs1/db1/wal@"), "{plan}");
    assert!(
        plan.contains("tablespace fast: full pgzfs1/db1ts@"),
        "{plan}"
    );
    assert!(
        plan.contains("one atomic snapshot of pgzfs1/db1 (with -r) and pgzfs1/db1ts"),
        "OpenZFS takes the whole cut in one call: {plan}"
    );
    assert!(
        !plan.contains("snapshotted separately"),
        "OpenZFS takes the whole cut in one call: {plan}"
    );

    // The estimate covers the whole cut, not only pgzfs1/db1 (whose WAL lives in the
    // child): at least what the three datasets reference now, give or take the writes.
    let estimate = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("estimated size: "))
        .and_then(|v| v.strip_suffix(" MiB"))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("an estimate in MiB: {plan}"));
    let referenced: u64 = primary
        .iter()
        .map(|ds| get("referenced", ds).parse::<u64>().expect("referenced -p"))
        .sum();
    assert!(
        estimate * 1048576.0 >= referenced as f64 * 0.9,
        "the estimate ({estimate} MiB) covers all three datasets ({referenced} bytes)"
    );

    let full = guest.reset_secondary("db2");
    assert_eq!(full["mode"], "full", "{full}");
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");
    assert_same_orders(&guest);
    // The full receive gave the standby's datasets the primary's tuning.
    assert_eq!(get("recordsize", "pgzfs1/db1/wal"), "131072");
    assert_eq!(
        get("recordsize", "pgzfs2/db2/wal"),
        get("recordsize", "pgzfs1/db1/wal"),
        "the wal child keeps the primary's record size"
    );
    assert_eq!(get("recordsize", "pgzfs2/db2"), "16384");
    assert_eq!(get("mountpoint", "pgzfs2/db2/wal"), "/lab/db2/data/pg_wal");
    assert_eq!(get("mounted", "pgzfs2/db2/wal"), "yes");
    assert_eq!(get("mounted", "pgzfs2/db2ts"), "yes");

    guest.sql(
        "db1",
        "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(5001, 7000) g",
    );
    guest.write_on_primary(50);
    let incr = guest.reset_secondary("db2");
    assert_eq!(incr["mode"], "incremental", "{incr}");
    guest.assert_streaming("db2");
    guest.assert_same_contents("db1", "db2");
    assert_same_orders(&guest);
    assert_eq!(guest.sql("db2", "SELECT count(*) FROM orders"), "7000");

    // Each cut: the same snapshot name on all three datasets, one transaction group.
    for cut in [&full, &incr] {
        let snap = cut["snapshot"].as_str().unwrap().split_once('@').unwrap().1;
        let txgs: Vec<String> = primary
            .iter()
            .map(|ds| get("createtxg", &format!("{ds}@{snap}")))
            .collect();
        assert!(
            txgs.iter().all(|t| t == &txgs[0]),
            "the cut {snap} was taken in one call: createtxg {txgs:?} on {primary:?}"
        );
    }
    // The new base is held on all three datasets on both sides (`zfs holds`).
    let snap = incr["snapshot"]
        .as_str()
        .unwrap()
        .split_once('@')
        .unwrap()
        .1;
    for ds in primary.iter().chain(standby.iter()) {
        let holds = guest.zfs(&format!("holds -H {ds}@{snap}"));
        assert!(holds.contains("pgzfs"), "{ds}@{snap} is held: {holds}");
    }

    // Then the default, which leaves pg_wal home: the same standby goes on with a plain
    // incremental, its own pg_wal emptied, and streams the WAL from its slot.
    guest.edit_config("/^send_pg_wal = true$/d");
    guest.sql(
        "db1",
        "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(7001, 8000) g",
    );
    let streamed = guest.reset_secondary("db2");
    assert_eq!(streamed["mode"], "incremental", "{streamed}");
    guest.assert_streaming("db2");
    assert_same_orders(&guest);
    assert_eq!(guest.sql("db2", "SELECT count(*) FROM orders"), "8000");
    assert_eq!(get("pgzfs:own_pg_wal", "pgzfs2/db2/wal"), "yes");
    let new = streamed["snapshot"]
        .as_str()
        .unwrap()
        .split_once('@')
        .unwrap()
        .1;
    assert!(
        !guest
            .sh(&format!("zfs list -H pgzfs2/db2/wal@{new}"))
            .status
            .success(),
        "nothing of the cut's pg_wal was received"
    );
    // The earlier base on pg_wal is nobody's now: released on both sides.
    for ds in ["pgzfs1/db1/wal", "pgzfs2/db2/wal"] {
        let holds = guest.zfs(&format!("holds -H {ds}@{snap}"));
        assert!(
            !holds.contains("pgzfs-db2"),
            "{ds}@{snap} released: {holds}"
        );
    }
}

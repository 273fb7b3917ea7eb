//! The lab the integration tests run in: real zfs-fuse, real sshd, real PostgreSQL, set up
//! by `scripts/lab` (the same lab the demo uses). A machine that lacks any of them fails
//! the test loudly; nothing is skipped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn pgzfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgzfs"))
}

/// A throwaway two-node lab: db1 is a running primary with pgbench data, db2 has nothing
/// yet. Torn down when dropped.
pub struct Lab {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
    keep: bool,
}

fn require_lab_prerequisites() {
    assert!(nix_is_root(), "the lab tests need root (zfs-fuse, sshd, PostgreSQL as user postgres); run them via scripts/test as root");
    for tool in ["zfs", "zpool", "zfs-fuse", "/usr/sbin/sshd", "psql"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(found, "{tool} is not installed: run scripts/install-deps first (the lab tests refuse to pass without real components)");
    }
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Lab {
    pub fn up(test: &str) -> Lab {
        Lab::up_with(test, 15, 1)
    }

    /// `test` must be short: it names the pool and the lab directory.
    pub fn up_with(test: &str, pg_major: u32, scale: u32) -> Lab {
        require_lab_prerequisites();
        let name = lab_name(test);
        let dir = PathBuf::from(format!("/tmp/pgzfs-lab/{name}"));
        let out = Command::new(repo().join("scripts/lab"))
            .arg("up")
            .arg(&dir)
            .args([
                "--name",
                &name,
                "--pg-major",
                &pg_major.to_string(),
                "--scale",
                &scale.to_string(),
            ])
            .output()
            .expect("run scripts/lab");
        assert!(
            out.status.success(),
            "scripts/lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Lab::from_env_file(dir)
    }

    /// The lab `scripts/lab up` left in `dir`, described by its lab.env.
    fn from_env_file(dir: PathBuf) -> Lab {
        let env = std::fs::read_to_string(dir.join("lab.env"))
            .expect("lab.env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Lab {
            dir,
            env,
            keep: std::env::var_os("PGZFS_KEEP_LAB").is_some(),
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("lab.env has no {key}"))
    }

    pub fn config(&self) -> PathBuf {
        PathBuf::from(self.get("CONFIG"))
    }

    pub fn pool(&self) -> &str {
        self.get("POOL")
    }

    pub fn dataset(&self, node: &str) -> String {
        format!("{}/{node}", self.pool())
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("data")
    }

    /// Run pgzfs as an operator would on `node`.
    pub fn pgzfs(&self, node: &str, args: &[&str]) -> Output {
        let out = self.pgzfs_command(node, args).output().expect("run pgzfs");
        eprintln!(
            "$ pgzfs --node {node} {}\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn pgzfs_command(&self, node: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(pgzfs_bin());
        cmd.arg("--config")
            .arg(self.config())
            .arg("--node")
            .arg(node)
            .args(args)
            .stdin(Stdio::null());
        cmd.env_remove("PGZFS_CONFIG")
            .env_remove("PGZFS_NODE")
            .env_remove("PGPASSFILE");
        cmd
    }

    /// The re-seed every scenario starts from, with its JSON summary.
    pub fn reset_secondary(&self, node: &str) -> serde_json::Value {
        let out = self.pgzfs(node, &["reset-secondary", "--yes", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "reset-secondary on {node} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
    }

    fn socket_dir(&self, node: &str) -> String {
        match node {
            "db1" => self.get("SOCK_DIR").to_string(),
            other => format!(
                "{}/sock{}",
                self.dir.display(),
                other.trim_start_matches("db")
            ),
        }
    }

    fn port(&self, node: &str) -> String {
        match node {
            "db1" => self.get("DB1_PORT").to_string(),
            "db2" => self.get("DB2_PORT").to_string(),
            other => self.port_from_config(other),
        }
    }

    /// A node's pg_port as the config says (for nodes a test added itself).
    fn port_from_config(&self, node: &str) -> String {
        let config = std::fs::read_to_string(self.config()).unwrap();
        let entry = config
            .split("[[nodes]]")
            .find(|e| e.contains(&format!("name = \"{node}\"")))
            .unwrap_or_else(|| panic!("no node {node}"));
        let line = entry
            .lines()
            .find(|l| l.trim_start().starts_with("pg_port"))
            .expect("pg_port");
        line.split('=').nth(1).unwrap().trim().to_string()
    }

    /// One value from SQL run as the postgres superuser over the node's unix socket.
    pub fn try_sql(&self, node: &str, sql: &str) -> Result<String, String> {
        self.try_sql_at(&self.socket_dir(node), &self.port(node), sql)
    }

    pub fn try_sql_at(&self, socket_dir: &str, port: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(format!("{}/psql", "/usr/lib/postgresql/15/bin"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                socket_dir,
                "-p",
                port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    pub fn sql(&self, node: &str, sql: &str) -> String {
        self.try_sql(node, sql)
            .unwrap_or_else(|e| panic!("SQL on {node} failed: {sql}: {e}"))
    }

    /// A fingerprint of the data the tests change, to compare primary and standby.
    pub fn contents(&self, node: &str) -> String {
        self.sql(node, "SELECT count(*) || ':' || md5(string_agg(aid || '=' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts")
    }

    /// Wait until the standby has replayed everything the primary has now, then compare.
    pub fn assert_same_contents(&self, primary: &str, standby: &str) {
        let want = self.contents(primary);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.try_sql(standby, "SELECT count(*) || ':' || md5(string_agg(aid || '=' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts");
            if got.as_deref() == Ok(want.as_str()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{standby} never caught up with {primary}: want {want}, got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn assert_streaming(&self, standby: &str) {
        assert_eq!(
            self.sql(standby, "SELECT status FROM pg_stat_wal_receiver"),
            "streaming",
            "{standby} is not streaming"
        );
        assert_eq!(self.sql(standby, "SELECT pg_is_in_recovery()"), "t");
        let state = self.sql(
            "db1",
            &format!("SELECT state FROM pg_stat_replication WHERE application_name = '{standby}'"),
        );
        assert_eq!(
            state, "streaming",
            "the primary does not see {standby} streaming"
        );
    }

    pub fn zfs(&self, args: &[&str]) -> String {
        let out = Command::new("zfs").args(args).output().expect("run zfs");
        assert!(
            out.status.success(),
            "zfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (snapshot name, guid) of a dataset's snapshots, oldest first.
    pub fn snapshots(&self, dataset: &str) -> Vec<(String, String)> {
        let text = self.zfs(&[
            "get",
            "-H",
            "-p",
            "-d",
            "1",
            "-o",
            "name,property,value",
            "guid,createtxg",
            dataset,
        ]);
        let mut rows: HashMap<String, (String, u64)> = HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 3 || !f[0].contains('@') {
                continue;
            }
            let e = rows.entry(f[0].to_string()).or_default();
            match f[1] {
                "guid" => e.0 = f[2].to_string(),
                "createtxg" => e.1 = f[2].parse().unwrap(),
                _ => {}
            }
        }
        let mut v: Vec<(String, String, u64)> =
            rows.into_iter().map(|(n, (g, t))| (n, g, t)).collect();
        v.sort_by_key(|r| r.2);
        v.into_iter().map(|(n, g, _)| (n, g)).collect()
    }

    pub fn dataset_exists(&self, dataset: &str) -> bool {
        Command::new("zfs")
            .args(["get", "-H", "-o", "value", "type", dataset])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Run a shell command as the postgres OS user (pg_ctl and friends).
    pub fn as_postgres(&self, command: &str) -> Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", command])
            .output()
            .expect("runuser")
    }

    pub fn pg_bin(&self) -> &str {
        self.get("PG_BIN")
    }

    pub fn append_config(&self, text: &str) {
        let path = self.config();
        let mut config = std::fs::read_to_string(&path).unwrap();
        config.push_str(text);
        std::fs::write(&path, config).unwrap();
    }

    /// Add a `[[nodes]]` entry before any trailing top-level table such as `[events]`.
    pub fn append_config_node(&self, node: &str) {
        let config = std::fs::read_to_string(self.config()).unwrap();
        let text = match config.find("\n[events]") {
            Some(at) => format!("{}\n{node}{}", &config[..at], &config[at..]),
            None => format!("{config}\n{node}"),
        };
        self.write_config(&text);
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }
}

/// Hosts mode (`scripts/lab up --hosts N`): every node dbK is a network namespace with its
/// own address, sshd and (once it exists) PostgreSQL on port 5432. Run pgzfs for a node
/// inside that node's namespace (`pgzfs_in`): its PostgreSQL listens only on the node's
/// address, so `pg_ctl` started from anywhere else could not bind.
impl Lab {
    /// A lab of `hosts` (2 or 3) namespaced hosts; db1 is a running primary. `carp` adds
    /// ucarp with a virtual IP whose hooks call this build's pgzfs; `pgbouncer` adds
    /// pgbouncer in the client namespace.
    pub fn up_hosts(test: &str, hosts: u32, carp: bool, pgbouncer: bool) -> Lab {
        let mut flags = Vec::new();
        if carp {
            flags.push("--carp");
        }
        if pgbouncer {
            flags.push("--pgbouncer");
        }
        Lab::up_hosts_with(test, hosts, &flags)
    }

    /// A hosts-mode lab with `scripts/lab up --hosts` flags given as they are, e.g.
    /// `--replication-net` (a second network that each node's `replication_host` is on).
    pub fn up_hosts_with(test: &str, hosts: u32, flags: &[&str]) -> Lab {
        require_lab_prerequisites();
        let name = lab_name(test);
        let dir = PathBuf::from(format!("/tmp/pgzfs-lab/{name}"));
        let bin = pgzfs_bin();
        let mut cmd = Command::new(repo().join("scripts/lab"));
        cmd.arg("up")
            .arg(&dir)
            .args([
                "--name",
                &name,
                "--hosts",
                &hosts.to_string(),
                "--pgzfs-bin",
            ])
            .arg(&bin)
            .args(flags);
        let out = cmd.output().expect("run scripts/lab");
        assert!(
            out.status.success(),
            "scripts/lab up --hosts failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Lab::from_env_file(dir)
    }

    /// The network namespace of `node` ("db1", "db2", ... or "client").
    pub fn netns(&self, node: &str) -> String {
        match node {
            "client" => self.get("CLIENT_NS").to_string(),
            n => self.get(&format!("{}_NS", n.to_uppercase())).to_string(),
        }
    }

    /// The address of `node` ("db1", ... or "client") on the lab's private subnet.
    pub fn addr(&self, node: &str) -> String {
        match node {
            "client" => self.get("CLIENT_ADDR").to_string(),
            n => self.get(&format!("{}_ADDR", n.to_uppercase())).to_string(),
        }
    }

    /// A command that runs inside `node`'s network namespace. It enters only the network
    /// namespace (nsenter --net), not a private mount namespace as `ip netns exec` would:
    /// zfs-fuse unmounts done from a private mount namespace leave the dataset busy.
    pub fn command_in(&self, node: &str, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns(node)))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Run `cmd` (program and arguments) inside `node`'s namespace, PGPASSFILE set to the
    /// lab's pgpass.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        let (program, args) = cmd.split_first().expect("exec needs a command");
        self.command_in(node, program)
            .args(args)
            .env("PGPASSFILE", self.get("PGPASSFILE"))
            .output()
            .unwrap_or_else(|e| panic!("run {cmd:?} in {node}: {e}"))
    }

    /// One value from SQL run as postgres over `node`'s unix socket (hosts mode).
    pub fn try_sql_on(&self, node: &str, sql: &str) -> Result<String, String> {
        let n = node.to_uppercase();
        let sock = self.get(&format!("{n}_SOCK")).to_string();
        let port = self.get(&format!("{n}_PORT")).to_string();
        self.try_sql_at(&sock, &port, sql)
    }

    pub fn sql_on(&self, node: &str, sql: &str) -> String {
        self.try_sql_on(node, sql)
            .unwrap_or_else(|e| panic!("SQL on {node} failed: {sql}: {e}"))
    }

    /// pgzfs for `node`, run inside its namespace as that host's operator would.
    pub fn pgzfs_in_command(&self, node: &str, args: &[&str]) -> Command {
        let mut cmd = self.command_in(node, pgzfs_bin().to_str().expect("utf-8 path"));
        cmd.arg("--config")
            .arg(self.config())
            .arg("--node")
            .arg(node)
            .args(args);
        cmd.env_remove("PGZFS_CONFIG")
            .env_remove("PGZFS_NODE")
            .env_remove("PGPASSFILE");
        cmd
    }

    pub fn pgzfs_in(&self, node: &str, args: &[&str]) -> Output {
        let out = self
            .pgzfs_in_command(node, args)
            .output()
            .expect("run pgzfs");
        eprintln!(
            "$ [{}] pgzfs --node {node} {}\n-- exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
            self.netns(node),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `scripts/lab SUBCOMMAND DIR ARGS...`, e.g. `lab.script("carp-stop", &["db1"])`.
    pub fn script(&self, subcommand: &str, args: &[&str]) -> Output {
        let out = Command::new(repo().join("scripts/lab"))
            .arg(subcommand)
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/lab");
        assert!(
            out.status.success(),
            "scripts/lab {subcommand} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Which node's namespace holds the CARP virtual IP right now (None while nobody does).
    pub fn vip_holder(&self) -> Option<String> {
        let vip = format!("{}/24", self.get("VIP"));
        let hosts: u32 = self.get("HOSTS").parse().expect("HOSTS");
        (1..=hosts).map(|k| format!("db{k}")).find(|node| {
            let out = Command::new("ip")
                .args([
                    "-n",
                    &self.netns(node),
                    "-o",
                    "-4",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .output()
                .expect("run ip");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .any(|w| w == vip)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Every lab on the machine shares one zfs-fuse daemon: when a test fails, say
            // whether it was still answering, which pools it had and what it logged.
            eprintln!("{}", zfs_fuse_status());
        }
        if self.keep {
            eprintln!("PGZFS_KEEP_LAB: leaving the lab in {}", self.dir.display());
            return;
        }
        let _ = Command::new(repo().join("scripts/lab"))
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// `scripts/lab zfs-fuse-status`: the daemon's process, pools, whatever is stuck on it and
/// the last lines of its log, for a failing test's output.
pub fn zfs_fuse_status() -> String {
    match Command::new(repo().join("scripts/lab"))
        .arg("zfs-fuse-status")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => format!(
            "zfs-fuse when this test failed ({}):\n{}",
            if out.status.success() {
                "answering"
            } else {
                "NOT answering"
            },
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("could not run scripts/lab zfs-fuse-status: {e}"),
    }
}

/// A pool and lab name unique to this test and process: tests run in parallel and share
/// the one zfs-fuse daemon.
fn lab_name(test: &str) -> String {
    format!(
        "t{}{}",
        test.replace(|c: char| !c.is_ascii_alphanumeric(), ""),
        std::process::id() % 100000
    )
}

/// Wait for a process whose command line contains `needle`; return its pid. Shells
/// (`sh -c ...`) and the local ssh(1) of the OpenSSH data path, whose last argument is the
/// remote command, carry the same words but are not the process itself.
pub fn wait_for_process(needle: &str, timeout: std::time::Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle)
                && !cmdline.contains("sh -c")
                && !cmdline.starts_with("ssh ")
            {
                return Some(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn file_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

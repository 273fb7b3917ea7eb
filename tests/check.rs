//! `pgzfs check --config-only`, which the rc.d script runs as `configtest` before every
//! start and reload: exit 0 for a usable config, 2 naming the file and the key otherwise,
//! and never a side effect. No lab needed: it must not touch ZFS or PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pgzfs-check-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn config(&self, text: &str) -> PathBuf {
        let path = self.0.join("pgzfs.toml");
        std::fs::write(&path, text.replace("@DIR@", &self.0.display().to_string())).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const GOOD: &str = r#"
cluster = "haclu"
log_file = "@DIR@/pgzfs.log"
[defaults]
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data17"
snapshot_interval = "15m"
[[nodes]]
name = "db1"
host = "10.0.0.1"
[[nodes]]
name = "db2"
host = "10.0.0.2"
[retention]
daily = 14
"#;

fn check(config: &Path, node: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgzfs"));
    cmd.arg("--config").arg(config);
    if let Some(node) = node {
        cmd.args(["--node", node]);
    }
    cmd.args(["check", "--config-only"])
        .env_remove("PGZFS_CONFIG")
        .env_remove("PGZFS_NODE")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_valid_config_passes_and_nothing_is_written() {
    let scratch = Scratch::new("valid");
    let config = scratch.config(GOOD);
    let out = check(&config, Some("db2"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&config.display().to_string()), "{stdout}");
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains("this node is db2"), "{stdout}");
    assert!(
        !scratch.0.join("pgzfs.log").exists(),
        "a check does not even open the log file"
    );
}

#[test]
fn a_broken_config_fails_with_exit_2_naming_the_file_and_the_key() {
    let scratch = Scratch::new("broken");
    for (broken, key) in [
        (GOOD.replace("daily = 14", "daily = -1"), "retention.daily"),
        (GOOD.replace("daily = 14", "dayly = 14"), "dayly"),
        (
            GOOD.replace(
                "snapshot_interval = \"15m\"",
                "snapshot_interval = \"15 minutes\"",
            ),
            "defaults.snapshot_interval",
        ),
        (
            GOOD.replace("[retention]", "http_listen = \"localhost:80\"\n[retention]"),
            "http_listen",
        ),
    ] {
        let config = scratch.config(&broken);
        let out = check(&config, Some("db1"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(&config.display().to_string()), "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(out.stdout.is_empty(), "no \"valid\" on stdout");
    }
}

#[test]
fn a_config_that_does_not_name_this_node_fails_like_the_daemon_would() {
    let scratch = Scratch::new("node");
    let config = scratch.config(GOOD);
    let out = check(&config, Some("db9"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--node") && stderr.contains("db1, db2"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_fails_with_exit_2() {
    let scratch = Scratch::new("missing");
    let out = check(&scratch.0.join("nope.toml"), Some("db1"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read config file"),
        "{}",
        text(&out.stderr)
    );
}

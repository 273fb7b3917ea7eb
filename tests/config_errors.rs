//! Bad configs and bad names: exit 2, a message naming the file and the key, and nothing
//! touched. These need no lab: pgzfs must refuse before it reaches ZFS, SSH or PostgreSQL.

use std::path::PathBuf;
use std::process::{Command, Output};

fn pgzfs(config: &str, node: &str, args: &[&str]) -> (Output, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "pgzfs-config-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgzfs.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgzfs"))
        .arg("--config")
        .arg(&path)
        .arg("--node")
        .arg(node)
        .args(args)
        .env_remove("PGZFS_CONFIG")
        .env_remove("PGZFS_NODE")
        .output()
        .unwrap();
    // The config has been read by now; keep /tmp clean across many CI runs.
    let _ = std::fs::remove_dir_all(&dir);
    (out, path)
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

const GOOD: &str = r#"
cluster = "haclu"
log_file = "/tmp/pgzfs-config-test.log"
[defaults]
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data15"
[[nodes]]
name = "db1"
host = "10.0.0.1"
[[nodes]]
name = "db2"
host = "10.0.0.2"
"#;

fn assert_config_error(config: &str, node: &str, must_mention: &[&str]) {
    let (out, path) = pgzfs(config, node, &["reset-secondary", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "config errors exit 2: {stderr}");
    assert!(
        stderr.contains(&path.display().to_string())
            || must_mention.iter().any(|m| m.starts_with("--")),
        "names the file: {stderr}"
    );
    for word in must_mention {
        assert!(
            stderr.contains(word),
            "the message mentions {word:?}: {stderr}"
        );
    }
}

#[test]
fn a_misspelt_key_is_named() {
    assert_config_error(&GOOD.replace("dataset =", "datset ="), "db2", &["datset"]);
}

#[test]
fn an_unknown_key_in_a_node_is_named() {
    assert_config_error(&format!("{GOOD}pg_prot = 5433\n"), "db2", &["pg_prot"]);
}

#[test]
fn a_dataset_name_with_shell_metacharacters_is_refused() {
    assert_config_error(
        &GOOD.replace("tank/pgdata", "tank/pg;rm -rf /"),
        "db2",
        &["dataset", "tank/pg;rm -rf /"],
    );
}

#[test]
fn a_dataset_name_with_dot_dot_is_refused() {
    assert_config_error(
        &GOOD.replace("tank/pgdata", "tank/../pgdata"),
        "db2",
        &["dataset"],
    );
}

#[test]
fn a_bad_duration_names_its_key() {
    assert_config_error(
        &GOOD.replace(
            "[defaults]\n",
            "[defaults]\nlock_timeout = \"ten seconds\"\n",
        ),
        "db2",
        &["lock_timeout"],
    );
}

#[test]
fn a_node_missing_from_the_config_is_named() {
    let (out, _) = pgzfs(GOOD, "db9", &["reset-secondary", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("db9") && stderr.contains("db1"),
        "names the missing node and the configured ones: {stderr}"
    );
}

#[test]
fn a_from_node_that_does_not_exist_is_a_usage_error() {
    let (out, _) = pgzfs(
        GOOD,
        "db2",
        &["reset-secondary", "--yes", "--from", "nosuch"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--from") && stderr.contains("nosuch"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_a_usage_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgzfs"))
        .args(["--config", "/nonexistent/pgzfs.toml", "reset-secondary"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/pgzfs.toml"), "{stderr}");
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgzfs"))
        .args(["reset-secondary", "--fulll"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `zfs_backend` used to reach only reset-secondary: every other command built zfs(8)
/// itself. On a build without libzfs_core, "lzc" is a usage error wherever this node's
/// ZFS is opened, so each command that opens it must say so rather than run zfs(8).
#[test]
fn every_command_that_opens_this_nodes_zfs_honours_zfs_backend() {
    let lock_dir = std::env::temp_dir().join(format!("pgzfs-backend-test-{}", std::process::id()));
    std::fs::create_dir_all(&lock_dir).unwrap();
    // Loopback addresses with a port nothing listens on: nothing leaves this machine, and
    // a PostgreSQL probe fails at once.
    let config = format!(
        r#"
cluster = "haclu"
log_file = "{log}"
[defaults]
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data15"
zfs_backend = "lzc"
pg_port = 1
ssh_port = 1
connect_timeout = "1s"
lock_file = "{lock}"
[[nodes]]
name = "db1"
host = "127.0.0.1"
[[nodes]]
name = "db2"
host = "127.0.0.1"
"#,
        log = lock_dir.join("pgzfs.log").display(),
        lock = lock_dir.join("pgzfs.lock").display(),
    );
    if cfg!(feature = "libzfs-core") {
        panic!("this test checks the default build (no libzfs-core feature)");
    }
    for command in [
        &["snapshots"][..],
        &["check"],
        &["prune", "--dry-run"],
        &["reset-secondary", "--dry-run"],
    ] {
        let (out, _) = pgzfs(&config, "db2", command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let log = std::fs::read_to_string(lock_dir.join("pgzfs.log")).unwrap_or_default();
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(
            stderr.contains("zfs_backend = \"lzc\"") || log.contains("zfs_backend = \"lzc\""),
            "{command:?} names the setting it could not honour: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&lock_dir);
}

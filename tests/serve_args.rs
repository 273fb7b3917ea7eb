//! `pgzfs serve` refusals that need no lab: they happen before serve reaches ZFS.

use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output};

const CONFIG: &str = r#"
cluster = "servetest"
log_file = "/tmp/pgzfs-serve-args-test.log"
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

fn serve(flags: &[&str], original_command: &std::ffi::OsStr) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "pgzfs-serve-args-{}-{}",
        std::process::id(),
        flags.join("")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgzfs.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgzfs"))
        .arg("--config")
        .arg(&path)
        .args(["--node", "db1", "serve"])
        .args(flags)
        .env("SSH_ORIGINAL_COMMAND", original_command)
        .env("SSH_CONNECTION", "10.0.0.2 50000 10.0.0.1 22")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn a_command_that_is_not_utf8_is_refused_as_such_not_as_an_empty_login() {
    let out = serve(
        &[],
        std::ffi::OsStr::from_bytes(b"zfs send tank/pgdata@\xff"),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("not UTF-8"), "{said}");
    assert!(!said.contains("interactive login"), "{said}");
}

#[test]
fn a_key_bound_to_an_unknown_node_or_to_this_node_is_a_config_error() {
    for node in ["db9", "db1"] {
        let out = serve(&["--for", node], "zfs send".as_ref());
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--for {node}: {said}");
        assert!(said.contains("--for") && said.contains(node), "{said}");
    }
}

//! What the FreeBSD package installs besides the binary must agree with the program
//! and with the rc.d script it runs under. (That the daemon really reopens its log on
//! SIGHUP after a rotation is tested in the lab: tests/daemon.rs,
//! a_reload_with_a_broken_config_keeps_the_daemon_running_on_the_old_one.)

use std::path::{Path, PathBuf};

use pgzfs::config::Config;

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `name="value"` from the rc.d script, with `${name}` filled in.
fn rc_variable(rc: &str, variable: &str) -> String {
    let name = rc_raw(rc, "name");
    rc_raw(rc, variable).replace("${name}", &name)
}

fn rc_raw(rc: &str, variable: &str) -> String {
    let prefix = format!("{variable}=\"");
    rc.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("rc.d/pgzfs sets no {variable}=\"...\""))
        .to_string()
}

#[test]
fn newsyslog_rotates_the_default_log_file_and_signals_the_daemon_itself_with_sighup() {
    let sample = repo_file("contrib/freebsd-port/files/newsyslog-pgzfs.conf.sample");
    let entries: Vec<Vec<&str>> = sample
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(entries.len(), 1, "one entry: {entries:?}");
    let entry = &entries[0];
    // logfilename owner:group mode count size when flags pid_file sig_num
    assert_eq!(entry.len(), 9, "{entry:?}");

    let config = Config::parse(
        "cluster = \"t\"\n[defaults]\ndataset = \"tank/pg\"\ndata_dir = \"/var/db/pg\"\n\
         [[nodes]]\nname = \"db1\"\nhost = \"db1\"\n",
        &PathBuf::from("/test/pgzfs.toml"),
    )
    .unwrap();
    assert_eq!(Path::new(entry[0]), config.log_file, "the default log_file");

    // The pid daemon(8) writes for pgzfs itself (-p), not the supervisor's (-P): daemon(8)
    // does not pass SIGHUP on, and a supervisor that got it would not reopen the log.
    let rc = repo_file("rc.d/pgzfs");
    let child = rc_variable(&rc, "child_pidfile");
    let supervisor = rc_variable(&rc, "pidfile");
    assert!(
        rc.contains("-p ${child_pidfile}"),
        "rc.d/pgzfs hands child_pidfile to daemon -p"
    );
    assert_eq!(entry[7], child, "newsyslog signals the pid in {child}");
    assert_ne!(entry[7], supervisor);

    assert_eq!(entry[8], libc::SIGHUP.to_string(), "SIGHUP reopens the log");
    assert!(
        entry[6].contains('C'),
        "the file is created when missing, as pgzfs would"
    );
}

// ---------------------------------------------------------------------------------------
// The port: scripts/check-port stages it with bmake and compares pkg-plist with what was
// installed. These run it on the port as committed, and on copies with the mistakes a
// porter makes, each of which it must catch.

/// Runs scripts/check-port on `port_dir` (None: the committed port) with the binary
/// this test run built; its exit status and output.
fn check_port(port_dir: Option<&Path>) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(root.join("scripts/check-port"));
    cmd.arg(env!("CARGO_BIN_EXE_pgzfs"));
    if let Some(dir) = port_dir {
        cmd.env("PGZFS_PORT_DIR", dir);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/check-port: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A copy of contrib/freebsd-port with `change` applied to one of its files.
fn port_copy(name: &str, file: &str, change: impl Fn(String) -> String) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/freebsd-port");
    let copy = std::env::temp_dir().join(format!("pgzfs-port-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(copy.join("files")).unwrap();
    for entry in ["Makefile", "Makefile.crates", "pkg-descr", "pkg-plist"] {
        std::fs::copy(root.join(entry), copy.join(entry)).unwrap();
    }
    for entry in std::fs::read_dir(root.join("files")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join("files").join(entry.file_name())).unwrap();
    }
    let path = copy.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = change(text.clone());
    assert_ne!(changed, text, "the change to {file} changed nothing");
    std::fs::write(&path, changed).unwrap();
    copy
}

#[test]
fn the_committed_port_installs_exactly_what_pkg_plist_lists() {
    let (ok, out) = check_port(None);
    assert!(ok, "scripts/check-port:\n{out}");
    assert!(out.contains("pkg-plist matches"), "{out}");
}

#[test]
fn check_port_catches_an_installed_file_missing_from_pkg_plist() {
    let copy = port_copy("unlisted", "pkg-plist", |plist| {
        plist.replace("share/zsh/site-functions/_pgzfs\n", "")
    });
    let (ok, out) = check_port(Some(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("installed, not listed: share/zsh/site-functions/_pgzfs"),
        "{out}"
    );
}

#[test]
fn check_port_catches_a_listed_file_nothing_installs() {
    let copy = port_copy("phantom", "pkg-plist", |plist| {
        plist + "share/man/man8/pgzfs-serve.8.gz\n"
    });
    let (ok, out) = check_port(Some(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("listed, not installed: share/man/man8/pgzfs-serve.8.gz"),
        "{out}"
    );
}

#[test]
fn check_port_catches_an_rc_script_that_drifted_from_rc_d_pgzfs() {
    let copy = port_copy("rc", "files/pgzfs.in", |rc| {
        rc.replace("-r -t ${name}", "-t ${name}")
    });
    let (ok, out) = check_port(Some(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("files/pgzfs.in is not rc.d/pgzfs"), "{out}");
}

#[test]
fn check_port_catches_a_version_other_than_cargo_toml() {
    let copy = port_copy("version", "Makefile", |makefile| {
        makefile
            .lines()
            .map(|l| match l.starts_with("DISTVERSION=") {
                true => "DISTVERSION=\t0.0.0.9",
                false => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    });
    let (ok, out) = check_port(Some(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("DISTVERSION=0.0.0.9"), "{out}");
}

#[test]
fn check_port_catches_a_crate_list_out_of_step_with_cargo_lock() {
    // As after a `cargo update` without scripts/port-crates: one crate's version in the
    // port is not the one Cargo.lock builds with.
    let copy = port_copy("crates", "Makefile.crates", |crates| {
        let first = crates.lines().next().unwrap().to_string();
        let (name_version, rest) = first.split_once(' ').unwrap();
        crates.replacen(&first, &format!("{name_version}9 {rest}"), 1)
    });
    let (ok, out) = check_port(Some(&copy));
    std::fs::remove_dir_all(&copy).unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("Makefile.crates is out of step with Cargo.lock"),
        "{out}"
    );
    assert!(out.contains("scripts/port-crates"), "names the fix: {out}");
}

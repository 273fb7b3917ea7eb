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
    let sample = repo_file("packaging/freebsd/files/newsyslog-pgzfs.conf.sample");
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

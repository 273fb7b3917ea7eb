use super::*;
use crate::compress::SshCompress;
use crate::cut::BackupVia;
use crate::error::Kind;
use crate::failover::OnBackup;
use crate::pg::tls::{PgTls, SslMode};
use crate::ssh_openssh::SshDataPath;
use crate::zfs::ZfsBackend;
use std::num::NonZeroU64;
use std::time::Duration;

const SAMPLE: &str = r#"
cluster = "haclu"
[defaults]                       # every node inherits these; a node may override any of them
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data15"
pg_bin = "/usr/local/bin"
pg_os_user = "postgres"
pg_port = 5432
pg_user = "replicator"
pg_database = "postgres"
ssh_user = "zfssync"
ssh_port = 22
ssh_key = "/home/zfssync/.ssh/id_ed25519"
known_hosts = "/home/zfssync/.ssh/known_hosts"
[[nodes]]
name = "db1"
host = "10.0.0.1"
[[nodes]]
name = "db2"
host = "10.0.0.2"
pg_port = 5433                   # per-node override
"#;

/// Just what is required; everything else comes from the built-in defaults.
const MINIMAL: &str = r#"
cluster = "pg"
[defaults]
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data15"
[[nodes]]
name = "db1"
host = "db1.example.net"
"#;

fn parse(text: &str) -> Result<Config> {
    Config::parse_with_home(text, Path::new("/etc/pgzfs.toml"), Some(Path::new("/root")))
}

/// The message of a config error, after checking it is a usage error naming the file.
fn refusal(text: &str) -> String {
    let err = parse(text).expect_err("expected the config to be refused");
    assert_eq!(err.kind(), Kind::Usage, "config errors exit 2");
    assert!(
        err.message().starts_with("/etc/pgzfs.toml: "),
        "names the file: {}",
        err.message()
    );
    err.message().to_string()
}

/// MINIMAL with extra lines appended to the `[[nodes]]` entry of db1.
fn minimal_with_node_lines(lines: &str) -> String {
    format!("{MINIMAL}{lines}\n")
}

/// MINIMAL with extra lines in `[defaults]`.
fn minimal_with_default_lines(lines: &str) -> String {
    MINIMAL.replace("[defaults]\n", &format!("[defaults]\n{lines}\n"))
}

#[test]
fn failover_settings_have_safe_defaults_and_can_be_overridden() {
    let text = format!("{}\n[events]\ncommand = \"/usr/local/libexec/hook %e %n\"\nonly = [\"promote\", \"fence\"]\n", minimal_with_node_lines("on_backup = \"rejoin\"\nmax_lag_on_failover = 0"));
    let config = Config::parse(&text, Path::new("/etc/pgzfs.toml")).unwrap();
    let node = &config.nodes[0];
    assert_eq!(node.failover.on_backup, OnBackup::Rejoin);
    assert_eq!(node.failover.max_lag_on_failover, 0);
    assert_eq!(node.failover.promote_check_attempts, 3);
    assert_eq!(config.events.only, vec!["promote", "fence"]);
    let defaults =
        Config::parse(&minimal_with_node_lines(""), Path::new("/etc/pgzfs.toml")).unwrap();
    assert_eq!(
        defaults.nodes[0].failover.on_backup,
        OnBackup::Fence,
        "fencing alone is the default: rejoining is a choice"
    );
    assert_eq!(defaults.events, Events::default());
}

#[test]
fn bad_failover_settings_are_refused_by_name() {
    assert!(refusal(&minimal_with_node_lines("on_backup = \"promote\"")).contains("on_backup"));
    assert!(refusal(&minimal_with_node_lines("fence_mode = \"reboot\"")).contains("fence_mode"));
    assert!(
        refusal(&minimal_with_node_lines("promote_check_attempts = 0"))
            .contains("promote_check_attempts")
    );
    assert!(
        refusal(&minimal_with_node_lines("max_lag_on_failover = -1"))
            .contains("max_lag_on_failover")
    );
    let text = format!(
        "{}\n[events]\nonly = [\"reboot\"]\n",
        minimal_with_node_lines("")
    );
    assert!(Config::parse(&text, Path::new("/etc/pgzfs.toml"))
        .unwrap_err()
        .to_string()
        .contains("events.only"));
}

#[test]
fn the_daemons_state_changes_can_be_chosen_for_the_hook() {
    let text = format!("{}\n[events]\ncommand = \"/bin/true\"\nonly = [\"daemon\", \"reset_secondary\", \"failure\"]\n", minimal_with_node_lines(""));
    let config = Config::parse(&text, Path::new("/etc/pgzfs.toml")).unwrap();
    assert_eq!(
        config.events.only,
        vec!["daemon", "reset_secondary", "failure"]
    );
}

#[test]
fn the_documented_sample_parses_with_per_node_overrides() {
    let config = parse(SAMPLE).unwrap();
    assert_eq!(config.cluster, "haclu");
    assert_eq!(config.path, PathBuf::from("/etc/pgzfs.toml"));
    assert_eq!(config.nodes.len(), 2);
    let db1 = config.node("db1").unwrap();
    let db2 = config.node("db2").unwrap();
    assert_eq!(db1.pg.pg_port, 5432);
    assert_eq!(db2.pg.pg_port, 5433);
    assert_eq!(db1.host, "10.0.0.1");
    assert_eq!(db2.host, "10.0.0.2");
    for node in [db1, db2] {
        assert_eq!(node.dataset.as_str(), "tank/pgdata");
        assert_eq!(node.data_dir, PathBuf::from("/var/db/postgres/data15"));
        assert_eq!(
            node.ssh.ssh_key,
            PathBuf::from("/home/zfssync/.ssh/id_ed25519")
        );
        assert_eq!(
            node.ssh.known_hosts,
            PathBuf::from("/home/zfssync/.ssh/known_hosts")
        );
        assert_eq!(node.ssh.ssh_user, "zfssync");
    }
}

#[test]
fn unset_settings_get_the_documented_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.log_file, PathBuf::from("/var/log/pgzfs.log"));
    let node = &config.nodes[0];
    assert_eq!(node.mountpoint, None);
    assert_eq!(node.pg.pg_bin, PathBuf::from("/usr/local/bin"));
    assert_eq!(node.pg.pg_os_user, "postgres");
    assert_eq!(node.pg.pg_port, 5432);
    assert_eq!(node.pg.pg_user, "replicator");
    assert_eq!(node.pg.pg_database, "postgres");
    assert_eq!(node.pg.pg_passfile, None);
    assert_eq!(
        node.pg.pg_log_file,
        PathBuf::from("/var/db/postgres/data15/postmaster.log")
    );
    assert!(node.pg_settings.is_empty());
    assert_eq!(node.ssh.ssh_user, "zfssync");
    assert_eq!(node.ssh.ssh_port, 22);
    assert_eq!(node.ssh.ssh_key, PathBuf::from("/root/.ssh/id_ed25519"));
    assert_eq!(
        node.ssh.known_hosts,
        PathBuf::from("/root/.ssh/known_hosts")
    );
    assert!(node.reseed.use_slots);
    assert_eq!(node.reseed.slot_name, "db1");
    assert_eq!(node.reseed.keep_common, 3);
    assert_eq!(node.pg.streaming_timeout, Duration::from_secs(120));
    assert_eq!(node.lock_timeout, Duration::from_secs(60));
    assert_eq!(node.pg.stop_timeout, Duration::from_secs(60));
    assert_eq!(node.connect_timeout, Duration::from_secs(5));
    assert_eq!(node.lock_file, PathBuf::from("/var/run/pgzfs-db1.lock"));
}

#[test]
fn every_setting_can_be_given_per_node() {
    let config = parse(&minimal_with_node_lines(
        r#"
dataset = "zroot/pg"
data_dir = "/pg/data"
mountpoint = "/pg"
pg_bin = "/usr/lib/postgresql/16/bin"
pg_os_user = "pgsql"
pg_port = 6432
pg_user = "repl"
pg_database = "template1"
pg_passfile = "~/.pgpass-pgzfs"
pg_log_file = "/var/log/postgresql.log"
pg_settings = { listen_addresses = "10.0.0.1" }
ssh_user = "sync"
ssh_port = 2222
ssh_key = "/etc/pgzfs/key"
known_hosts = "/etc/pgzfs/known_hosts"
use_slots = false
slot_name = "standby_1"
keep_common = 5
streaming_timeout = "5m"
lock_timeout = "1m30s"
stop_timeout = "2m"
connect_timeout = "500ms"
lock_file = "/tmp/pgzfs.lock"
"#,
    ))
    .unwrap();
    let node = &config.nodes[0];
    assert_eq!(node.dataset.as_str(), "zroot/pg");
    assert_eq!(node.data_dir, PathBuf::from("/pg/data"));
    assert_eq!(node.mountpoint, Some(PathBuf::from("/pg")));
    assert_eq!(node.pg.pg_bin, PathBuf::from("/usr/lib/postgresql/16/bin"));
    assert_eq!(node.pg.pg_os_user, "pgsql");
    assert_eq!(node.pg.pg_port, 6432);
    assert_eq!(node.pg.pg_user, "repl");
    assert_eq!(node.pg.pg_database, "template1");
    assert_eq!(
        node.pg.pg_passfile,
        Some(PathBuf::from("/root/.pgpass-pgzfs"))
    );
    assert_eq!(
        node.pg.pg_log_file,
        PathBuf::from("/var/log/postgresql.log")
    );
    assert_eq!(node.pg_settings["listen_addresses"], "10.0.0.1");
    assert_eq!(node.ssh.ssh_user, "sync");
    assert_eq!(node.ssh.ssh_port, 2222);
    assert_eq!(node.ssh.ssh_key, PathBuf::from("/etc/pgzfs/key"));
    assert_eq!(
        node.ssh.known_hosts,
        PathBuf::from("/etc/pgzfs/known_hosts")
    );
    assert!(!node.reseed.use_slots);
    assert_eq!(node.reseed.slot_name, "standby_1");
    assert_eq!(node.reseed.keep_common, 5);
    assert_eq!(node.pg.streaming_timeout, Duration::from_secs(300));
    assert_eq!(node.lock_timeout, Duration::from_secs(90));
    assert_eq!(node.pg.stop_timeout, Duration::from_secs(120));
    assert_eq!(node.connect_timeout, Duration::from_millis(500));
    assert_eq!(node.lock_file, PathBuf::from("/tmp/pgzfs.lock"));
}

#[test]
fn a_top_level_log_file_is_honoured() {
    let config = parse(&format!("log_file = \"/var/log/pg/pgzfs.log\"\n{MINIMAL}")).unwrap();
    assert_eq!(config.log_file, PathBuf::from("/var/log/pg/pgzfs.log"));
    assert!(refusal(&format!("log_file = \"pgzfs.log\"\n{MINIMAL}")).contains("log_file"));
}

#[test]
fn an_unknown_top_level_key_is_refused_by_name() {
    let message = refusal(&format!("clustr = \"typo\"\n{MINIMAL}"));
    assert!(message.contains("clustr"), "{message}");
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn an_unknown_key_in_defaults_is_refused_by_name() {
    let message = refusal(&minimal_with_default_lines("pg_prot = 5433"));
    assert!(message.contains("pg_prot"), "{message}");
    // Node-only keys do not belong in [defaults] either.
    assert!(refusal(&minimal_with_default_lines("host = \"x\"")).contains("host"));
}

#[test]
fn an_unknown_key_in_a_node_is_refused_by_name() {
    let message = refusal(&minimal_with_node_lines("sshport = 2222"));
    assert!(message.contains("sshport"), "{message}");
    assert!(message.contains("line 9"), "{message}");
}

#[test]
fn a_value_of_the_wrong_type_is_refused_with_its_location() {
    let message = refusal(&minimal_with_node_lines("pg_port = \"5433\""));
    assert!(message.contains("pg_port"), "{message}");
    assert!(message.contains("line 9"), "{message}");
    assert!(refusal(&minimal_with_default_lines("use_slots = \"yes\"")).contains("use_slots"));
}

#[test]
fn a_file_that_is_not_toml_is_refused() {
    assert!(refusal("cluster = \n").contains("line 1"));
}

#[test]
fn asking_for_a_missing_node_lists_the_configured_ones() {
    let config = parse(SAMPLE).unwrap();
    let err = config.node("db3").unwrap_err();
    assert_eq!(err.kind(), Kind::Usage);
    assert_eq!(
        err.message(),
        "no node named \"db3\" in /etc/pgzfs.toml; configured: db1, db2"
    );
}

#[test]
fn a_bad_dataset_name_is_refused_naming_the_node_and_the_key() {
    let text = SAMPLE.replace(
        "pg_port = 5433 ",
        "dataset = \"tank/pg data\"\npg_port = 5433 ",
    );
    let message = refusal(&text);
    assert!(message.contains("nodes[2].dataset"), "{message}");
    assert!(message.contains("\"db2\""), "{message}");
    assert!(message.contains("\"tank/pg data\""), "{message}");
    assert!(message.contains("a space"), "{message}");
}

#[test]
fn a_bad_dataset_in_defaults_is_refused_naming_defaults() {
    let message = refusal(&MINIMAL.replace("tank/pgdata", "tank/pg;data"));
    assert!(message.contains("defaults.dataset"), "{message}");
}

#[test]
fn a_bad_duration_is_refused_naming_the_key() {
    let message = refusal(&minimal_with_default_lines("lock_timeout = \"1x\""));
    assert!(message.contains("defaults.lock_timeout"), "{message}");
    assert!(message.contains("unknown unit"), "{message}");
    let message = refusal(&minimal_with_node_lines("stop_timeout = \"-1s\""));
    assert!(
        message.contains("nodes[1].stop_timeout (node \"db1\")"),
        "{message}"
    );
}

#[test]
fn a_zero_connect_timeout_is_refused() {
    assert!(
        refusal(&minimal_with_node_lines("connect_timeout = \"0\"")).contains("connect_timeout")
    );
    // Zero is a sensible lock timeout: try once, do not wait.
    let config = parse(&minimal_with_node_lines("lock_timeout = \"0\"")).unwrap();
    assert_eq!(config.nodes[0].lock_timeout, Duration::ZERO);
}

#[test]
fn node_settings_override_defaults_but_pg_settings_merge_key_by_key() {
    let text = r#"
cluster = "pg"
[defaults]
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data15"
pg_settings = { max_connections = 200, listen_addresses = "*", "log_line_prefix" = "%m [%p] " }
[[nodes]]
name = "db1"
host = "10.0.0.1"
pg_settings = { listen_addresses = "10.0.0.1", hot_standby = true, "auto_explain.log_min_duration" = 2.5 }
[[nodes]]
name = "db2"
host = "10.0.0.2"
"#;
    let config = parse(text).unwrap();
    let db1 = &config.node("db1").unwrap().pg_settings;
    assert_eq!(db1.len(), 5);
    assert_eq!(db1["max_connections"], "200");
    assert_eq!(db1["listen_addresses"], "10.0.0.1");
    assert_eq!(db1["log_line_prefix"], "%m [%p] ");
    assert_eq!(db1["hot_standby"], "on");
    assert_eq!(db1["auto_explain.log_min_duration"], "2.5");
    let db2 = &config.node("db2").unwrap().pg_settings;
    assert_eq!(db2.len(), 3);
    assert_eq!(db2["listen_addresses"], "*");
}

#[test]
fn bad_pg_settings_are_refused_naming_the_setting() {
    let message = refusal(&minimal_with_node_lines(
        "pg_settings = { Listen_Addresses = \"*\" }",
    ));
    assert!(
        message.contains("pg_settings.Listen_Addresses"),
        "{message}"
    );
    let message = refusal(&minimal_with_node_lines("pg_settings = { \"1x\" = 1 }"));
    assert!(message.contains("pg_settings.1x"), "{message}");
    let message = refusal(&minimal_with_node_lines(
        "pg_settings = { shared_preload_libraries = [\"a\"] }",
    ));
    assert!(
        message.contains("array values are not allowed"),
        "{message}"
    );
    let message = refusal(&minimal_with_default_lines(
        "pg_settings = { work_mem = \"4MB\\nfsync = off\" }",
    ));
    assert!(
        message.contains("defaults.pg_settings.work_mem"),
        "{message}"
    );
    assert!(message.contains("control character"), "{message}");
    assert!(
        !message.contains('\n'),
        "the message does not carry the newline: {message:?}"
    );
}

#[test]
fn the_slot_name_is_derived_from_the_node_name() {
    assert_eq!(slot_name_for_node("db1"), "db1");
    assert_eq!(slot_name_for_node("DB-2.example.net"), "db_2_example_net");
    assert_eq!(slot_name_for_node(&"n".repeat(80)).len(), 63);
    let config = parse(&SAMPLE.replace("name = \"db2\"", "name = \"DB-2\"")).unwrap();
    assert_eq!(config.node("DB-2").unwrap().reseed.slot_name, "db_2");
}

#[test]
fn an_invalid_explicit_slot_name_is_refused() {
    for bad in ["Standby", "standby-1", "", "x".repeat(64).as_str()] {
        let message = refusal(&minimal_with_node_lines(&format!("slot_name = \"{bad}\"")));
        assert!(message.contains("nodes[1].slot_name"), "{message}");
    }
}

#[test]
fn two_nodes_that_would_share_a_slot_are_refused() {
    let text = SAMPLE
        .replace("name = \"db1\"", "name = \"db-x\"")
        .replace("name = \"db2\"", "name = \"db_x\"");
    assert!(refusal(&text).contains("slot_name \"db_x\""));
    // Without slots the clash does not matter.
    let without_slots = text.replace("[defaults]", "[defaults]\nuse_slots = false");
    parse(&without_slots).unwrap();
}

#[test]
fn data_dir_may_equal_or_lie_below_the_mountpoint() {
    let equal = parse(&minimal_with_node_lines(
        "mountpoint = \"/var/db/postgres/data15\"",
    ))
    .unwrap();
    assert_eq!(
        equal.nodes[0].mountpoint,
        Some(PathBuf::from("/var/db/postgres/data15"))
    );
    parse(&minimal_with_node_lines(
        "mountpoint = \"/var/db/postgres\"",
    ))
    .unwrap();
    parse(&minimal_with_node_lines(
        "mountpoint = \"/var/db/postgres/\"",
    ))
    .unwrap();
}

#[test]
fn data_dir_outside_the_mountpoint_is_refused() {
    let message = refusal(&minimal_with_node_lines("mountpoint = \"/tank/pg\""));
    assert!(message.contains("nodes[1] (node \"db1\")"), "{message}");
    assert!(message.contains("not inside mountpoint"), "{message}");
    // A common string prefix is not enough: /var/db/postgres/data1 is not inside .../data15.
    let message = refusal(&MINIMAL.replace(
        "data_dir = \"/var/db/postgres/data15\"",
        "data_dir = \"/var/db/postgres/data15\"\nmountpoint = \"/var/db/postgres/data1\"",
    ));
    assert!(message.contains("not inside mountpoint"), "{message}");
}

#[test]
fn paths_must_be_absolute_plain_and_free_of_dot_dot() {
    assert!(
        refusal(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"var/db\"")).contains("absolute")
    );
    assert!(
        refusal(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"/var/db/../etc\""))
            .contains("\"..\"")
    );
    assert!(
        refusal(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"/var/db/pg data\""))
            .contains("' '")
    );
    assert!(
        refusal(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"/var/db/$(reboot)\""))
            .contains("'$'")
    );
    assert!(refusal(&minimal_with_node_lines("pg_bin = \"bin\"")).contains("nodes[1].pg_bin"));
    assert!(
        refusal(&minimal_with_node_lines("lock_file = \"/var/run/x;y\"")).contains("lock_file")
    );
    let normalised =
        parse(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"/var//db/postgres/\"")).unwrap();
    assert_eq!(
        normalised.nodes[0].data_dir,
        PathBuf::from("/var/db/postgres")
    );
}

#[test]
fn tilde_paths_expand_to_the_home_of_the_user_running_pgzfs() {
    let config = parse(&minimal_with_node_lines("ssh_key = \"~/.ssh/pgzfs\"")).unwrap();
    assert_eq!(
        config.nodes[0].ssh.ssh_key,
        PathBuf::from("/root/.ssh/pgzfs")
    );
    assert!(
        refusal(&minimal_with_node_lines("ssh_key = \"~zfssync/.ssh/id\"")).contains("only \"~/\"")
    );
    let err = Config::parse_with_home(MINIMAL, Path::new("/etc/pgzfs.toml"), None).unwrap_err();
    assert!(
        err.message().contains("ssh_key is not set"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("HOME"), "{}", err.message());
    // With explicit key paths no home directory is needed.
    let explicit = MINIMAL.replace(
        "[defaults]",
        "[defaults]\nssh_key = \"/k\"\nknown_hosts = \"/kh\"",
    );
    Config::parse_with_home(&explicit, Path::new("/etc/pgzfs.toml"), None).unwrap();
}

#[test]
fn a_missing_cluster_name_is_refused() {
    let message = refusal(&MINIMAL.replace("cluster = \"pg\"", ""));
    assert!(message.contains("cluster is not set"), "{message}");
    assert!(
        refusal(&MINIMAL.replace("cluster = \"pg\"", "cluster = \"pg ha\"")).contains("cluster")
    );
    assert!(refusal(&MINIMAL.replace("cluster = \"pg\"", "cluster = \"\"")).contains("cluster"));
}

#[test]
fn a_config_without_nodes_is_refused() {
    let text = "cluster = \"pg\"\n[defaults]\ndataset = \"tank/pgdata\"\n";
    assert!(refusal(text).contains("no nodes"));
}

#[test]
fn duplicate_node_names_are_refused() {
    let message = refusal(&SAMPLE.replace("name = \"db2\"", "name = \"db1\""));
    assert!(message.contains("nodes[2].name"), "{message}");
    assert!(message.contains("more than once"), "{message}");
}

#[test]
fn a_node_without_name_or_host_is_refused() {
    assert!(refusal(&SAMPLE.replace("name = \"db2\"\n", "")).contains("nodes[2]: name is not set"));
    assert!(refusal(&SAMPLE.replace("host = \"10.0.0.2\"\n", ""))
        .contains("nodes[2] (node \"db2\"): host is not set"));
}

#[test]
fn node_names_and_hosts_that_could_be_abused_are_refused() {
    for bad in ["db 1", "db1;reboot", "-db1", "db/1", ""] {
        refusal(&SAMPLE.replace("name = \"db1\"", &format!("name = \"{bad}\"")));
    }
    for bad in [
        "-oProxyCommand=reboot",
        "10.0.0.1 ",
        "db1;reboot",
        "$(reboot)",
        "",
        "user@db1",
    ] {
        let message = refusal(&SAMPLE.replace("host = \"10.0.0.1\"", &format!("host = \"{bad}\"")));
        assert!(message.contains("nodes[1].host"), "{message}");
    }
    parse(&SAMPLE.replace("host = \"10.0.0.1\"", "host = \"fe80::1%em0\"")).unwrap();
}

#[test]
fn a_dataset_or_data_dir_missing_everywhere_is_refused() {
    let message = refusal(&MINIMAL.replace("dataset = \"tank/pgdata\"\n", ""));
    assert!(
        message.contains("nodes[1] (node \"db1\"): dataset is not set"),
        "{message}"
    );
    let message = refusal(&MINIMAL.replace("data_dir = \"/var/db/postgres/data15\"\n", ""));
    assert!(message.contains("data_dir is not set"), "{message}");
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_key() {
    assert!(refusal(&minimal_with_node_lines("pg_port = 0")).contains("nodes[1].pg_port"));
    assert!(refusal(&minimal_with_node_lines("pg_port = 70000")).contains("1-65535"));
    assert!(refusal(&minimal_with_default_lines("ssh_port = -22")).contains("defaults.ssh_port"));
    assert!(refusal(&minimal_with_node_lines("keep_common = 0")).contains("keep_common"));
    assert!(refusal(&minimal_with_node_lines("keep_common = -1")).contains("keep_common"));
}

#[test]
fn user_and_database_names_that_could_be_abused_are_refused() {
    assert!(
        refusal(&minimal_with_node_lines("pg_os_user = \"postgres;id\"")).contains("pg_os_user")
    );
    assert!(
        refusal(&minimal_with_node_lines("ssh_user = \"-oProxyCommand=x\"")).contains("ssh_user")
    );
    assert!(refusal(&minimal_with_node_lines("pg_user = \"\"")).contains("pg_user"));
    assert!(refusal(&minimal_with_node_lines("pg_database = \"a b\"")).contains("pg_database"));
}

fn two_nodes() -> Config {
    parse(SAMPLE).unwrap()
}

#[test]
fn the_local_node_is_the_one_named_on_the_command_line() {
    let config = two_nodes();
    let node = config
        .pick_local_node(Some("db2"), Some("db1".into()), Some("db1".into()))
        .unwrap();
    assert_eq!(node.name, "db2");
    let err = config.pick_local_node(Some("db9"), None, None).unwrap_err();
    assert!(err.message().contains("--node"), "{}", err.message());
    assert!(
        err.message().contains("configured: db1, db2"),
        "{}",
        err.message()
    );
}

#[test]
fn without_node_option_pgzfs_node_from_the_environment_is_used() {
    let config = two_nodes();
    assert_eq!(
        config
            .pick_local_node(None, Some("db2".into()), Some("db1".into()))
            .unwrap()
            .name,
        "db2"
    );
    let err = config
        .pick_local_node(None, Some("db9".into()), Some("db1".into()))
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("PGZFS_NODE: no node named \"db9\""),
        "{}",
        err.message()
    );
    // An empty variable counts as unset.
    assert_eq!(
        config
            .pick_local_node(None, Some(String::new()), Some("db1".into()))
            .unwrap()
            .name,
        "db1"
    );
}

#[test]
fn otherwise_the_hostname_or_its_short_form_picks_the_node() {
    let config = two_nodes();
    assert_eq!(
        config
            .pick_local_node(None, None, Some("db2".into()))
            .unwrap()
            .name,
        "db2"
    );
    assert_eq!(
        config
            .pick_local_node(None, None, Some("db2.example.net".into()))
            .unwrap()
            .name,
        "db2"
    );
    let fqdn_nodes =
        parse(&SAMPLE.replace("name = \"db1\"", "name = \"db1.example.net\"")).unwrap();
    assert_eq!(
        fqdn_nodes
            .pick_local_node(None, None, Some("db1.example.net".into()))
            .unwrap()
            .name,
        "db1.example.net"
    );
}

#[test]
fn an_unknown_host_is_refused_saying_what_was_tried() {
    let config = two_nodes();
    let err = config
        .pick_local_node(None, None, Some("web1.example.net".into()))
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Usage);
    let message = err.message();
    assert!(message.contains("\"web1.example.net\""), "{message}");
    assert!(message.contains("\"web1\""), "{message}");
    assert!(message.contains("PGZFS_NODE"), "{message}");
    assert!(message.contains("--node"), "{message}");
    assert!(message.contains("db1, db2"), "{message}");
    let unreadable = config.pick_local_node(None, None, None).unwrap_err();
    assert!(
        unreadable.message().contains("hostname could not be read"),
        "{}",
        unreadable.message()
    );
}

#[test]
fn the_other_nodes_are_all_but_the_local_one() {
    let config = parse(&format!(
        "{SAMPLE}[[nodes]]\nname = \"db3\"\nhost = \"10.0.0.3\"\n"
    ))
    .unwrap();
    let local = config.node("db2").unwrap();
    let others: Vec<&str> = config
        .other_nodes(local)
        .map(|node| node.name.as_str())
        .collect();
    assert_eq!(others, ["db1", "db3"]);
}

#[test]
fn the_config_path_comes_from_the_option_then_the_environment_then_the_default() {
    let option = Path::new("/tmp/test.toml");
    assert_eq!(
        choose_config_path(Some(option), Some("/env.toml".into())),
        PathBuf::from("/tmp/test.toml")
    );
    assert_eq!(
        choose_config_path(None, Some("/env.toml".into())),
        PathBuf::from("/env.toml")
    );
    assert_eq!(
        choose_config_path(None, Some(OsString::new())),
        PathBuf::from(DEFAULT_CONFIG_PATH)
    );
    assert_eq!(
        choose_config_path(None, None),
        PathBuf::from("/usr/local/etc/pgzfs.toml")
    );
}

#[test]
fn an_unreadable_config_file_is_a_usage_error_naming_it() {
    let path = std::env::temp_dir().join(format!(
        "pgzfs-config-test-missing-{}.toml",
        std::process::id()
    ));
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.kind(), Kind::Usage);
    assert!(
        err.message().contains(&path.display().to_string()),
        "{}",
        err.message()
    );
    assert!(err.message().contains("cannot read"), "{}", err.message());
}

#[test]
fn a_config_file_on_disk_loads() {
    let path = std::env::temp_dir().join(format!("pgzfs-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, SAMPLE).unwrap();
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).unwrap();
    let config = loaded.unwrap();
    assert_eq!(config.path, path);
    assert_eq!(config.nodes.len(), 2);
}

#[test]
fn without_a_retention_table_the_documented_policy_applies() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.retention,
        Retention {
            hourly: 24,
            daily: 7,
            weekly: 7,
            monthly: 12,
            yearly: 0,
        }
    );
}

#[test]
fn a_retention_table_overrides_only_the_counts_it_names() {
    let config = parse(&format!(
        "{MINIMAL}[retention]\ndaily = 30\nyearly = 5\nhourly = 0\n"
    ))
    .unwrap();
    assert_eq!(config.retention.hourly, 0);
    assert_eq!(config.retention.daily, 30);
    assert_eq!(config.retention.weekly, 7);
    assert_eq!(config.retention.monthly, 12);
    assert_eq!(config.retention.yearly, 5);
}

#[test]
fn a_typo_or_a_negative_count_in_retention_is_refused_by_name() {
    let message = refusal(&format!("{MINIMAL}[retention]\nmontly = 6\n"));
    assert!(message.contains("montly"), "{message}");
    let message = refusal(&format!("{MINIMAL}[retention]\nweekly = -1\n"));
    assert!(message.contains("retention.weekly"), "{message}");
    assert!(message.contains("-1"), "{message}");
    let message = refusal(&format!("{MINIMAL}[retention]\ndaily = \"7\"\n"));
    assert!(message.contains("daily"), "{message}");
    // The policy is cluster-wide: it has no place in [defaults] or a node.
    assert!(refusal(&minimal_with_default_lines("hourly = 3")).contains("hourly"));
}

#[test]
fn the_daemon_settings_default_to_hourly_snapshots_and_no_http() {
    let node = &parse(MINIMAL).unwrap().nodes[0];
    assert_eq!(node.daemon.snapshot_interval, Duration::from_secs(3600));
    assert_eq!(node.daemon.reseed_after, Duration::from_secs(300));
    assert_eq!(node.daemon.http_listen, None);
}

#[test]
fn the_daemon_settings_can_be_given_in_defaults_and_per_node() {
    let text = minimal_with_default_lines(
        "snapshot_interval = \"15m\"\nreseed_after = \"0\"\nhttp_listen = \"[::]:8008\"",
    );
    let text = format!("{text}http_listen = \"127.0.0.1:8009\"\n");
    let node = &parse(&text).unwrap().nodes[0];
    assert_eq!(node.daemon.snapshot_interval, Duration::from_secs(900));
    assert_eq!(
        node.daemon.reseed_after,
        Duration::ZERO,
        "0: re-seed as soon as streaming breaks"
    );
    assert_eq!(
        node.daemon.http_listen,
        Some("127.0.0.1:8009".parse().unwrap())
    );
    let from_defaults = parse(&minimal_with_default_lines("http_listen = \"[::]:8008\"")).unwrap();
    assert_eq!(
        from_defaults.nodes[0].daemon.http_listen,
        Some("[::]:8008".parse().unwrap())
    );
}

#[test]
fn scheduled_verification_is_off_unless_verify_every_is_set() {
    assert_eq!(parse(MINIMAL).unwrap().nodes[0].daemon.verify_every, None);
    let node = &parse(&minimal_with_default_lines("verify_every = \"1d\""))
        .unwrap()
        .nodes[0];
    assert_eq!(node.daemon.verify_every, Some(Duration::from_secs(86400)));
    let message = refusal(&minimal_with_node_lines("verify_every = \"0\""));
    assert!(message.contains("nodes[1].verify_every"), "{message}");
}

#[test]
fn a_listen_address_must_be_an_ip_and_a_port() {
    for bad in [
        "localhost:8008",
        "127.0.0.1",
        "8008",
        "127.0.0.1:0",
        "[::1]:99999",
        "",
    ] {
        let message = refusal(&minimal_with_node_lines(&format!(
            "http_listen = \"{bad}\""
        )));
        assert!(
            message.contains("nodes[1].http_listen"),
            "{bad:?}: {message}"
        );
    }
}

#[test]
fn a_snapshot_interval_below_one_second_is_refused() {
    for bad in ["0", "500ms"] {
        let message = refusal(&minimal_with_default_lines(&format!(
            "snapshot_interval = \"{bad}\""
        )));
        assert!(message.contains("defaults.snapshot_interval"), "{message}");
    }
    let message = refusal(&minimal_with_node_lines("reseed_after = \"soon\""));
    assert!(message.contains("nodes[1].reseed_after"), "{message}");
}

#[test]
fn the_zfs_backend_defaults_to_auto_and_can_be_chosen_per_node() {
    let config = parse(SAMPLE).unwrap();
    assert!(config
        .nodes
        .iter()
        .all(|n| n.zfs_backend == ZfsBackend::Auto));
    let text = SAMPLE.replace("[defaults]", "[defaults]\nzfs_backend = \"cli\"");
    let text = text.replace("name = \"db2\"", "name = \"db2\"\nzfs_backend = \"lzc\"");
    let config = parse(&text).unwrap();
    assert_eq!(config.node("db1").unwrap().zfs_backend, ZfsBackend::Cli);
    assert_eq!(config.node("db2").unwrap().zfs_backend, ZfsBackend::Lzc);
}

#[test]
fn the_ssh_data_path_defaults_to_openssh_and_can_be_chosen_per_node() {
    let config = parse(SAMPLE).unwrap();
    assert!(config
        .nodes
        .iter()
        .all(|n| n.ssh.ssh_data_path == SshDataPath::OpenSsh));
    let text = SAMPLE.replace("[defaults]", "[defaults]\nssh_data_path = \"ssh2\"");
    let text = text.replace(
        "name = \"db2\"",
        "name = \"db2\"\nssh_data_path = \"openssh\"",
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.node("db1").unwrap().ssh.ssh_data_path,
        SshDataPath::Ssh2
    );
    assert_eq!(
        config.node("db2").unwrap().ssh.ssh_data_path,
        SshDataPath::OpenSsh
    );
}

#[test]
fn the_backup_is_taken_over_postgres_unless_a_node_asks_for_ssh() {
    let config = parse(SAMPLE).unwrap();
    assert!(config
        .nodes
        .iter()
        .all(|n| n.reseed.backup_via == BackupVia::Postgres));
    let text = SAMPLE.replace("name = \"db2\"", "name = \"db2\"\nbackup_via = \"ssh\"");
    let config = parse(&text).unwrap();
    assert_eq!(
        config.node("db1").unwrap().reseed.backup_via,
        BackupVia::Postgres
    );
    assert_eq!(
        config.node("db2").unwrap().reseed.backup_via,
        BackupVia::Ssh
    );
    let message = refusal(&minimal_with_node_lines("backup_via = \"sql\""));
    assert!(message.contains("nodes[1].backup_via"), "{message}");
    assert!(message.contains("\"postgres\" or \"ssh\""), "{message}");
}

#[test]
fn an_unknown_ssh_data_path_is_refused_naming_the_key() {
    let message = refusal(&minimal_with_node_lines("ssh_data_path = \"libssh\""));
    assert!(message.contains("nodes[1].ssh_data_path"), "{message}");
    assert!(message.contains("\"ssh2\" or \"openssh\""), "{message}");
}

#[test]
fn the_stream_is_uncompressed_unless_a_node_asks_for_zstd() {
    let config = parse(SAMPLE).unwrap();
    assert!(config
        .nodes
        .iter()
        .all(|n| n.ssh.ssh_compress == SshCompress::None));
    let text = SAMPLE.replace("[defaults]", "[defaults]\nssh_compress = \"zstd:3\"");
    let text = text.replace("name = \"db2\"", "name = \"db2\"\nssh_compress = \"none\"");
    let config = parse(&text).unwrap();
    let level = |n: &Node| match n.ssh.ssh_compress {
        SshCompress::Zstd(level) => Some(level.get()),
        SshCompress::None => None,
    };
    assert_eq!(level(config.node("db1").unwrap()), Some(3));
    assert_eq!(level(config.node("db2").unwrap()), None);
    for (written, want) in [("zstd:1", 1), ("zstd:19", 19)] {
        let config = parse(&minimal_with_node_lines(&format!(
            "ssh_compress = \"{written}\""
        )))
        .unwrap();
        assert_eq!(level(&config.nodes[0]), Some(want), "{written}");
    }
}

#[test]
fn a_bad_ssh_compress_is_refused_naming_the_key() {
    for bad in [
        "\"zstd:0\"",
        "\"zstd:20\"",
        "\"zstd:22\"",
        "\"zstd:-1\"",
        "\"zstd:03\"",
        "\"zstd:+3\"",
        "\"zstd:\"",
        "\"zstd\"",
        "\"zstd: 3\"",
        "\"gzip:6\"",
        "\"lz4\"",
        "\"\"",
        "\"None\"",
    ] {
        let message = refusal(&minimal_with_node_lines(&format!("ssh_compress = {bad}")));
        assert!(
            message.contains("nodes[1].ssh_compress"),
            "{bad}: {message}"
        );
        assert!(message.contains("1 to 19"), "{bad}: {message}");
    }
    let message = refusal(&minimal_with_node_lines("ssh_compress = 3"));
    assert!(message.contains("ssh_compress"), "{message}");
    let message = refusal(&minimal_with_default_lines("ssh_compress = \"zstd:99\""));
    assert!(message.contains("defaults.ssh_compress"), "{message}");
}

#[test]
fn bwlimit_is_unlimited_unless_set_and_a_node_overrides_the_defaults() {
    let config = parse(SAMPLE).unwrap();
    assert!(config.nodes.iter().all(|n| n.reseed.bwlimit.is_none()));
    let text = SAMPLE.replace("[defaults]", "[defaults]\nbwlimit = \"50M\"");
    let config = parse(&text).unwrap();
    assert!(config
        .nodes
        .iter()
        .all(|n| n.reseed.bwlimit == NonZeroU64::new(50 << 20)));
    let text = text.replace("name = \"db2\"", "name = \"db2\"\nbwlimit = \"800K\"");
    let config = parse(&text).unwrap();
    assert_eq!(
        config.node("db1").unwrap().reseed.bwlimit,
        NonZeroU64::new(50 << 20)
    );
    assert_eq!(
        config.node("db2").unwrap().reseed.bwlimit,
        NonZeroU64::new(800 << 10)
    );
}

#[test]
fn bwlimit_zero_on_a_node_lifts_the_limit_of_the_defaults() {
    for zero in ["\"0\"", "0"] {
        let text = minimal_with_default_lines("bwlimit = \"1G\"");
        let config = parse(&format!("{text}bwlimit = {zero}\n")).unwrap();
        assert_eq!(config.nodes[0].reseed.bwlimit, None, "{zero}");
    }
}

#[test]
fn bwlimit_takes_binary_units_or_plain_bytes_per_second() {
    for (written, bytes) in [
        ("\"50MiB\"", 50 << 20),
        ("\"1G\"", 1 << 30),
        ("\"4096\"", 4096),
        ("1048576", 1 << 20),
    ] {
        let config = parse(&minimal_with_node_lines(&format!("bwlimit = {written}"))).unwrap();
        assert_eq!(
            config.nodes[0].reseed.bwlimit,
            NonZeroU64::new(bytes),
            "{written}"
        );
    }
}

#[test]
fn a_bad_bwlimit_is_refused_naming_the_key_and_the_problem() {
    for (bad, problem) in [
        ("\"\"", "empty"),
        ("\"-5M\"", "negative"),
        ("-5", "negative"),
        ("\"50X\"", "unknown unit"),
        ("\"50MB\"", "ambiguous"),
        ("\"1.5G\"", "whole numbers"),
        ("\"99999999999T\"", "too large"),
        ("\"18446744073709551616\"", "too large"),
        ("true", "not a rate"),
    ] {
        let message = refusal(&minimal_with_node_lines(&format!("bwlimit = {bad}")));
        assert!(message.contains("nodes[1].bwlimit"), "{bad}: {message}");
        assert!(message.contains(problem), "{bad}: {message}");
        assert!(message.contains("bytes per second"), "{bad}: {message}");
    }
    let message = refusal(&minimal_with_default_lines("bwlimit = \"fast\""));
    assert!(message.contains("defaults.bwlimit"), "{message}");
}

#[test]
fn an_unknown_zfs_backend_is_refused_naming_the_key() {
    let message = refusal(&minimal_with_node_lines("zfs_backend = \"libzfs\""));
    assert!(message.contains("nodes[1].zfs_backend"), "{message}");
    assert!(
        message.contains("\"auto\", \"cli\" or \"lzc\""),
        "{message}"
    );
}

#[test]
fn tls_settings_come_from_defaults_and_the_node_and_default_to_prefer() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.nodes[0].pg.tls(), PgTls::default());
    assert_eq!(config.nodes[0].pg.tls().mode, SslMode::Prefer);
    let text = format!(
        "{}pg_sslmode = \"verify-full\"\npg_sslcert = \"/etc/pgzfs/db1.crt\"\npg_sslkey = \"/etc/pgzfs/db1.key\"\n",
        minimal_with_default_lines("pg_sslrootcert = \"/etc/pgzfs/ca.crt\"")
    );
    let tls = &parse(&text).unwrap().nodes[0].pg.tls();
    assert_eq!(tls.mode, SslMode::VerifyFull);
    assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/pgzfs/ca.crt")));
    assert_eq!(tls.cert, Some(PathBuf::from("/etc/pgzfs/db1.crt")));
    assert_eq!(tls.key, Some(PathBuf::from("/etc/pgzfs/db1.key")));
}

#[test]
fn bad_tls_settings_are_refused_naming_the_key() {
    for (lines, key, problem) in [
        ("pg_sslmode = \"on\"", "nodes[1].pg_sslmode", "verify-full"),
        (
            "pg_sslmode = \"verify_full\"",
            "nodes[1].pg_sslmode",
            "not an sslmode",
        ),
        (
            "pg_sslrootcert = \"ca.crt\"",
            "nodes[1].pg_sslrootcert",
            "absolute path",
        ),
        (
            "pg_sslcert = \"~/db1.crt\"",
            "nodes[1].pg_sslcert",
            "absolute path",
        ),
        (
            "pg_sslkey = \"/etc/../db1.key\"",
            "nodes[1].pg_sslkey",
            "..",
        ),
        // A verifying mode with nothing to verify against.
        (
            "pg_sslmode = \"verify-ca\"",
            "pg_sslmode",
            "set pg_sslrootcert",
        ),
        (
            "pg_sslmode = \"verify-full\"",
            "pg_sslmode",
            "set pg_sslrootcert",
        ),
        // Half a client identity.
        (
            "pg_sslcert = \"/etc/pgzfs/db1.crt\"",
            "pg_sslkey is not",
            "needs its key",
        ),
        (
            "pg_sslkey = \"/etc/pgzfs/db1.key\"",
            "pg_sslcert is not",
            "client certificate",
        ),
    ] {
        let message = refusal(&minimal_with_node_lines(lines));
        assert!(message.contains(key), "{lines}: {message}");
        assert!(message.contains(problem), "{lines}: {message}");
    }
    let message = refusal(&minimal_with_default_lines("pg_sslmode = \"ssl\""));
    assert!(message.contains("defaults.pg_sslmode"), "{message}");
}

#[test]
fn a_quarantine_inside_the_replicated_dataset_is_refused_naming_the_key() {
    let inside_data = refusal(&minimal_with_node_lines(
        "quarantine_dir = \"/var/db/postgres/data15/quarantine\"",
    ));
    assert!(inside_data.contains("quarantine_dir"), "{inside_data}");
    assert!(inside_data.contains("data_dir"), "{inside_data}");
    let inside_mount = refusal(&minimal_with_node_lines(
        "mountpoint = \"/var/db/postgres\"\nquarantine_dir = \"/var/db/postgres/kept\"",
    ));
    assert!(inside_mount.contains("quarantine_dir"), "{inside_mount}");
    assert!(inside_mount.contains("mountpoint"), "{inside_mount}");
    let outside = parse(&minimal_with_node_lines(
        "mountpoint = \"/var/db/postgres\"\nquarantine_dir = \"/var/db/pgzfs/kept\"",
    ))
    .unwrap();
    assert_eq!(
        outside.nodes[0].failover.quarantine_dir,
        PathBuf::from("/var/db/pgzfs/kept")
    );
}

#[test]
fn an_events_command_with_an_unbalanced_quote_is_refused_at_load_not_when_it_fires() {
    let text = format!(
        "{}\n[events]\ncommand = \"/usr/local/libexec/hook '%e\"\n",
        minimal_with_node_lines("")
    );
    let why = refusal(&text);
    assert!(
        why.contains("events.command") && why.contains("quote"),
        "{why}"
    );
}

#[test]
fn the_hook_timeout_is_read_and_must_be_positive() {
    let with = |t: &str| {
        format!(
            "{}\n[events]\ncommand = \"/bin/true\"\ntimeout = \"{t}\"\n",
            minimal_with_node_lines("")
        )
    };
    assert_eq!(
        parse(&with("30s")).unwrap().events.timeout,
        Duration::from_secs(30)
    );
    assert!(refusal(&with("0s")).contains("events.timeout"));
    assert!(refusal(&with("36501d")).contains("events.timeout"));
}

#[test]
fn names_postgresql_would_cut_to_63_bytes_are_refused_at_load() {
    let long = "n".repeat(64);
    let why = refusal(&MINIMAL.replace("name = \"db1\"", &format!("name = \"{long}\"")));
    assert!(why.contains("name") && why.contains("63"), "{why}");
    assert!(
        parse(&MINIMAL.replace("name = \"db1\"", &format!("name = \"{}\"", &long[..63]))).is_ok()
    );
    for key in ["pg_user", "pg_database"] {
        let why = refusal(&minimal_with_node_lines(&format!("{key} = \"{long}\"")));
        assert!(why.contains(key) && why.contains("63"), "{why}");
    }
}

#[test]
fn the_quorum_settings_default_to_safety_and_a_witness_votes_without_data() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.isolation_timeout, Duration::from_secs(10));
    assert!(
        !config.two_node_failover,
        "two primaries are never the default"
    );
    assert!(config.witnesses.is_empty());

    let text = MINIMAL.replace(
        "cluster = \"pg\"\n",
        "cluster = \"pg\"\nisolation_timeout = \"4s\"\ntwo_node_failover = true\n",
    ) + "http_listen = \"0.0.0.0:8008\"\n[[nodes]]\nname = \"db2\"\nhost = \"db2.example.net\"\n\
          [[nodes]]\nname = \"w1\"\nhost = \"w1.example.net\"\nrole = \"witness\"\nhttp_listen = \"0.0.0.0:8009\"\n";
    let config = parse(&text).unwrap();
    assert_eq!(config.isolation_timeout, Duration::from_secs(4));
    assert!(config.two_node_failover);
    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["db1", "db2"], "a witness is no data node");
    assert_eq!(config.witnesses[0].name, "w1");
    // A witness is found the way a data node is: --node, PGZFS_NODE, then the hostname
    // in full and then its short form.
    let witness = |explicit: Option<&str>, env: Option<&str>, host: Option<&str>| {
        config
            .pick_local_witness(explicit, env.map(String::from), host.map(String::from))
            .map(|w| w.name.as_str())
    };
    assert_eq!(witness(Some("w1"), Some("db1"), None), Some("w1"));
    assert_eq!(witness(None, Some("w1"), Some("db1")), Some("w1"));
    assert_eq!(
        witness(None, Some(""), Some("w1")),
        Some("w1"),
        "an empty PGZFS_NODE is unset"
    );
    assert_eq!(witness(None, None, Some("w1.lab.example")), Some("w1"));
    assert_eq!(
        witness(Some("db1"), None, Some("w1")),
        None,
        "--node names a data node"
    );
    assert_eq!(witness(None, None, None), None);
    let voters: Vec<(String, Option<u16>)> = config
        .voters()
        .into_iter()
        .map(|v| (v.name, v.http_port))
        .collect();
    assert_eq!(
        voters,
        [
            ("db1".to_string(), Some(8008)),
            ("db2".to_string(), None),
            ("w1".to_string(), Some(8009))
        ]
    );
    let err = config.node("w1").unwrap_err();
    assert!(err.message().contains("witness"), "{}", err.message());

    for (text, key) in [
        (
            MINIMAL.replace(
                "cluster = \"pg\"\n",
                "cluster = \"pg\"\nisolation_timeout = \"1s\"\n",
            ),
            "isolation_timeout",
        ),
        (minimal_with_node_lines("role = \"arbiter\""), "role"),
        (
            format!("{MINIMAL}[[nodes]]\nname = \"w1\"\nhost = \"w1\"\nrole = \"witness\"\n"),
            "http_listen",
        ),
    ] {
        let message = refusal(&text);
        assert!(message.contains(key), "{key}: {message}");
    }
}

#[test]
fn a_node_on_two_networks_replicates_on_one_and_serves_clients_on_the_other() {
    let config = parse(&minimal_with_node_lines(
        "replication_host = \"10.1.0.1\"\nclient_host = \"db1.clients.example.net\"",
    ))
    .unwrap();
    let node = &config.nodes[0];
    assert_eq!(node.replication_host(), "10.1.0.1");
    assert_eq!(node.client_host(), "db1.clients.example.net");
    assert_eq!(crate::cluster::pg_target(node).host, "10.1.0.1");

    let single = parse(MINIMAL).unwrap();
    let node = &single.nodes[0];
    assert_eq!(node.replication_host(), "db1.example.net", "default: host");
    assert_eq!(node.client_host(), "db1.example.net", "default: host");

    let why = refusal(&minimal_with_node_lines(
        "replication_host = \"-oProxyCommand=x\"",
    ));
    assert!(why.contains("nodes[1].replication_host"), "{why}");
}

#[test]
fn tablespaces_are_read_per_node_and_a_bad_entry_names_the_key() {
    let config = parse(&format!(
        "{MINIMAL}tablespaces = [{{ name = \"fast\", dataset = \"tank/pgts/fast\", mountpoint = \"/var/db/pgts/fast\" }}]\n"
    ))
    .unwrap();
    let ts = &config.nodes[0].tablespaces;
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].dataset.as_str(), "tank/pgts/fast");
    assert_eq!(ts[0].mountpoint, Path::new("/var/db/pgts/fast"));
    assert!(parse(MINIMAL).unwrap().nodes[0].tablespaces.is_empty());
    let why = refusal(&format!(
        "{MINIMAL}tablespaces = [{{ name = \"fast\", dataset = \"tank/ts\", mountpoint = \"relative\" }}]\n"
    ));
    assert!(why.contains("tablespaces"), "{why}");
    assert!(why.contains("absolute"), "{why}");
}

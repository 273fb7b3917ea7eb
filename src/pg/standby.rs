//! Turning a freshly received copy of the primary's data directory into a standby:
//! backup_label from the backup-safe cut, no leftovers of the primary's running server,
//! and the standby configuration for the server's major version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::pg::tls::PgTls;
use crate::safe_dir::{Dir, Found};

/// Everything written into the standby's configuration.
#[derive(Debug, Clone)]
pub struct StandbySetup {
    pub major: u32,
    /// This node's name: application_name on the primary, so pg_stat_replication shows it.
    pub node_name: String,
    pub primary_host: String,
    pub primary_port: u16,
    pub user: String,
    pub passfile: Option<PathBuf>,
    /// How the walreceiver reaches the primary over TLS: sslmode and the certificates,
    /// read by PostgreSQL as its OS user.
    pub tls: PgTls,
    pub slot: Option<String>,
    /// This node's own settings (port, listen_addresses, ...) that must survive a re-seed.
    pub local_settings: BTreeMap<String, String>,
    /// Settings pgzfs manages on any node: they are removed from the copied
    /// postgresql.auto.conf before this node's own values are written, so a primary's
    /// per-node values never leak into a standby.
    pub managed_keys: BTreeSet<String>,
    pub labelfile: String,
    pub spcmapfile: String,
}

/// Written into a data directory right after a receive and removed once the copy is a
/// standby: a copy of a running primary looks exactly like a primary (its control file
/// says "in production"), and this marker is what tells an unfinished re-seed apart from a
/// former primary whose writes must not be overwritten.
pub const RECEIVED_NOT_CONFIGURED: &str = "pgzfs.received-not-configured";

/// Settings that only make sense on a standby; stripped from every copied auto.conf.
const STANDBY_KEYS: [&str; 3] = [
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
];

/// A single-quoted PostgreSQL configuration value.
pub fn guc_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq connection-string value, quoted only when it needs to be.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

pub fn primary_conninfo(setup: &StandbySetup) -> String {
    let mut parts = vec![
        format!("host={}", conninfo_value(&setup.primary_host)),
        format!("port={}", setup.primary_port),
        format!("user={}", conninfo_value(&setup.user)),
        format!("application_name={}", conninfo_value(&setup.node_name)),
    ];
    if let Some(passfile) = &setup.passfile {
        parts.push(format!(
            "passfile={}",
            conninfo_value(&passfile.display().to_string())
        ));
    }
    for (keyword, value) in setup.tls.conninfo() {
        parts.push(format!("{keyword}={}", conninfo_value(&value)));
    }
    parts.join(" ")
}

fn setting_key(line: &str) -> Option<String> {
    let line = line.trim_start();
    if line.starts_with('#') {
        return None;
    }
    let key: String = line
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    (!key.is_empty()).then(|| key.to_ascii_lowercase())
}

/// postgresql.auto.conf with every managed key removed and this node's values appended.
pub fn rewrite_auto_conf(existing: &str, setup: &StandbySetup) -> String {
    let mut managed: BTreeSet<String> = setup
        .managed_keys
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    managed.extend(STANDBY_KEYS.iter().map(|k| k.to_string()));
    managed.extend(setup.local_settings.keys().map(|k| k.to_ascii_lowercase()));
    let mut out: String = existing
        .lines()
        .filter(|line| !line.starts_with("# pgzfs:"))
        .filter(|line| setting_key(line).is_none_or(|key| !managed.contains(&key)))
        .map(|line| format!("{line}\n"))
        .collect();
    out.push_str(&format!(
        "# pgzfs: settings of node {}, rewritten after every re-seed\n",
        setup.node_name
    ));
    for (key, value) in &setup.local_settings {
        out.push_str(&format!("{key} = {}\n", guc_quote(value)));
    }
    if setup.major >= 12 {
        out.push_str(&format!(
            "primary_conninfo = {}\n",
            guc_quote(&primary_conninfo(setup))
        ));
        if let Some(slot) = &setup.slot {
            out.push_str(&format!("primary_slot_name = {}\n", guc_quote(slot)));
        }
        out.push_str("recovery_target_timeline = 'latest'\n");
    }
    out
}

/// recovery.conf for PostgreSQL 11 and older.
pub fn recovery_conf(setup: &StandbySetup) -> String {
    let mut out = format!(
        "# pgzfs: standby of {}:{}, written after every re-seed\n",
        setup.primary_host, setup.primary_port
    );
    out.push_str("standby_mode = 'on'\n");
    out.push_str(&format!(
        "primary_conninfo = {}\n",
        guc_quote(&primary_conninfo(setup))
    ));
    if let Some(slot) = &setup.slot {
        out.push_str(&format!("primary_slot_name = {}\n", guc_quote(slot)));
    }
    out.push_str("recovery_target_timeline = 'latest'\n");
    out
}

/// Writes files into the data directory through its handle (see [`crate::safe_dir`]),
/// owned like the directory itself (PostgreSQL refuses foreign files), mode 0600.
struct Writer {
    dir: Dir,
    owner: (u32, u32),
}

impl Writer {
    fn open(data_dir: &Path) -> Result<Writer> {
        let dir = Dir::open(data_dir)?;
        let owner = dir.owner()?;
        Ok(Writer { dir, owner })
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        self.dir
            .write(name, text.as_bytes(), 0o600, Some(self.owner))
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.dir.remove(name).map(drop)
    }

    /// postgresql.auto.conf as it is now. Anything but a regular file (a symbolic link the
    /// PostgreSQL user planted, say to a root-only file) is not read: it is replaced by a
    /// regular file holding only pgzfs's settings.
    fn auto_conf(&self) -> Result<String> {
        match self.dir.read(AUTO_CONF)? {
            Found::Missing => Ok(String::new()),
            Found::File(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Found::Other(what) => {
                tracing::warn!(
                    "{} is {what}, not a regular file: not followed; it is replaced by a regular file with pgzfs's settings only",
                    self.dir.path().join(AUTO_CONF).display()
                );
                Ok(String::new())
            }
        }
    }
}

const AUTO_CONF: &str = "postgresql.auto.conf";

/// Set one setting in postgresql.auto.conf (replacing any earlier value), keeping the
/// file's owner. For fencing a primary read-only without a superuser connection.
pub fn set_auto_conf(data_dir: &Path, key: &str, value: &str, why: &str) -> Result<()> {
    let writer = Writer::open(data_dir)?;
    let existing = writer.auto_conf()?;
    let mut text: String = existing
        .lines()
        .filter(|line| setting_key(line).as_deref() != Some(key))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!("{key} = {} # pgzfs: {why}\n", guc_quote(value)));
    writer.write(AUTO_CONF, &text)
}

/// Point an existing standby at a (new) primary: rewrite only its standby configuration.
pub fn repoint_standby(data_dir: &Path, setup: &StandbySetup) -> Result<()> {
    let writer = Writer::open(data_dir)?;
    let existing = writer.auto_conf()?;
    writer.write(AUTO_CONF, &rewrite_auto_conf(&existing, setup))?;
    if setup.major >= 12 {
        writer.write("standby.signal", "")
    } else {
        writer.write("recovery.conf", &recovery_conf(setup))
    }
}

/// Prepare a received data directory to start as a standby.
pub fn make_standby(data_dir: &Path, setup: &StandbySetup) -> Result<()> {
    let writer = Writer::open(data_dir).map_err(|e| {
        e.context(format!(
            "data directory {} after the receive",
            data_dir.display()
        ))
    })?;

    // The primary was running when the snapshot was taken: its lock and options files
    // would make our start refuse or behave like the primary.
    for leftover in [
        "postmaster.pid",
        "postmaster.opts",
        "recovery.signal",
        "recovery.done",
        "standby.signal",
        "recovery.conf",
    ] {
        writer.remove(leftover)?;
    }
    // The primary's slots (including the one for this very node) are meaningless here
    // and would pin WAL on the standby forever. A linked pg_replslot is refused: the
    // slots to remove would be somewhere else.
    if let Some(slots) = writer.dir.subdir("pg_replslot")? {
        slots.clear()?;
    }

    if setup.labelfile.is_empty() {
        // A crash-consistent cut: no backup, so recovery starts from pg_control's
        // checkpoint. A stale label would send it to the wrong redo point.
        writer.remove("backup_label")?;
    } else {
        writer.write("backup_label", &setup.labelfile)?;
    }
    if setup.spcmapfile.is_empty() {
        writer.remove("tablespace_map")?;
    } else {
        writer.write("tablespace_map", &setup.spcmapfile)?;
    }

    let existing = writer.auto_conf()?;
    writer.write(AUTO_CONF, &rewrite_auto_conf(&existing, setup))?;
    if setup.major >= 12 {
        writer.write("standby.signal", "")?;
    } else {
        writer.write("recovery.conf", &recovery_conf(setup))?;
    }
    // Last: from here on the directory is a standby's.
    writer.remove(RECEIVED_NOT_CONFIGURED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(major: u32) -> StandbySetup {
        StandbySetup {
            major,
            node_name: "db2".into(),
            primary_host: "10.0.0.1".into(),
            primary_port: 5432,
            user: "replicator".into(),
            passfile: Some(PathBuf::from("/home/pg/.pgpass")),
            tls: PgTls::default(),
            slot: Some("db2".into()),
            local_settings: BTreeMap::from([("port".to_string(), "5433".to_string())]),
            managed_keys: BTreeSet::from(["port".to_string(), "listen_addresses".to_string()]),
            labelfile: "START WAL LOCATION: 0/2000028\n".into(),
            spcmapfile: String::new(),
        }
    }

    #[test]
    fn the_primarys_node_settings_are_replaced_by_the_standbys() {
        let copied = "# Do not edit this file manually!\nport = '5432'\nlisten_addresses = '10.0.0.1'\nwork_mem = '64MB'\nprimary_conninfo = 'host=old'\n";
        let text = rewrite_auto_conf(copied, &setup(15));
        assert!(
            text.contains("work_mem = '64MB'"),
            "unmanaged settings survive: {text}"
        );
        assert!(text.contains("port = '5433'"));
        assert!(
            !text.contains("port = '5432'"),
            "the primary's port is gone: {text}"
        );
        assert!(
            !text.contains("listen_addresses"),
            "another node's managed key is dropped: {text}"
        );
        assert!(!text.contains("host=old"));
        assert!(text.contains("primary_conninfo = 'host=10.0.0.1 port=5432 user=replicator application_name=db2 passfile=/home/pg/.pgpass sslmode=prefer'"), "{text}");
        assert!(text.contains("primary_slot_name = 'db2'"));
    }

    #[test]
    fn rewriting_twice_gives_the_same_file() {
        let once = rewrite_auto_conf("work_mem = '1MB'\n", &setup(15));
        assert_eq!(rewrite_auto_conf(&once, &setup(15)), once);
    }

    #[test]
    fn postgresql_11_gets_recovery_conf_and_no_standby_keys_in_auto_conf() {
        let text = rewrite_auto_conf("", &setup(11));
        assert!(
            !text.contains("primary_conninfo"),
            "PostgreSQL 11 would refuse to start: {text}"
        );
        let recovery = recovery_conf(&setup(11));
        assert!(recovery.contains("standby_mode = 'on'"));
        assert!(recovery.contains("recovery_target_timeline = 'latest'"));
        assert!(recovery.contains("primary_slot_name = 'db2'"));
    }

    #[test]
    fn odd_characters_in_values_are_quoted_for_both_parsers() {
        assert_eq!(guc_quote("it's"), "'it''s'");
        let mut s = setup(15);
        s.passfile = Some(PathBuf::from("/home/my pg/.pgpass"));
        assert!(primary_conninfo(&s).contains(" passfile='/home/my pg/.pgpass' "));
        // libpq's quoting inside the conninfo (\' and \\), then the GUC's around all of it.
        s.tls.root_cert = Some(PathBuf::from(r"/etc/it's\ca.crt"));
        let conninfo = primary_conninfo(&s);
        assert!(
            conninfo.ends_with(r"sslmode=prefer sslrootcert='/etc/it\'s\\ca.crt'"),
            "{conninfo}"
        );
        assert_eq!(
            guc_quote(&conninfo),
            r"'host=10.0.0.1 port=5432 user=replicator application_name=db2 passfile=''/home/my pg/.pgpass'' sslmode=prefer sslrootcert=''/etc/it\\''s\\\\ca.crt'''"
        );
    }

    #[test]
    fn the_standby_streams_with_the_tls_settings_pgzfs_itself_uses() {
        let mut s = setup(15);
        s.tls = PgTls {
            mode: crate::pg::tls::SslMode::VerifyFull,
            root_cert: Some(PathBuf::from("/usr/local/etc/pgzfs/ca.crt")),
            cert: Some(PathBuf::from("/usr/local/etc/pgzfs/db2.crt")),
            key: Some(PathBuf::from("/usr/local/etc/pgzfs/db2.key")),
        };
        let text = rewrite_auto_conf("", &s);
        assert!(
            text.contains(
                "primary_conninfo = 'host=10.0.0.1 port=5432 user=replicator application_name=db2 \
                 passfile=/home/pg/.pgpass sslmode=verify-full sslrootcert=/usr/local/etc/pgzfs/ca.crt \
                 sslcert=/usr/local/etc/pgzfs/db2.crt sslkey=/usr/local/etc/pgzfs/db2.key'"
            ),
            "{text}"
        );
        assert!(recovery_conf(&setup(11)).contains(" sslmode=prefer'\n"));
    }

    #[test]
    fn a_received_directory_becomes_a_standby_without_the_primarys_leftovers() {
        let dir = std::env::temp_dir().join(format!("pgzfs-standby-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pg_replslot/db2")).unwrap();
        std::fs::write(dir.join("pg_replslot/db2/state"), "x").unwrap();
        std::fs::write(dir.join("postmaster.pid"), "123\n").unwrap();
        std::fs::write(dir.join("postmaster.opts"), "postgres\n").unwrap();
        std::fs::write(dir.join("postgresql.auto.conf"), "port = '5432'\n").unwrap();
        make_standby(&dir, &setup(15)).unwrap();
        assert!(!dir.join("postmaster.pid").exists());
        assert!(!dir.join("postmaster.opts").exists());
        assert_eq!(
            std::fs::read_dir(dir.join("pg_replslot")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("backup_label")).unwrap(),
            "START WAL LOCATION: 0/2000028\n"
        );
        assert!(dir.join("standby.signal").exists());
        assert!(!dir.join("tablespace_map").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_consistent_copy_starts_without_any_backup_label() {
        let dir = std::env::temp_dir().join(format!("pgzfs-atomic-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A label that somehow came along (an exclusive backup of old) would make
        // recovery start from its redo point instead of pg_control's checkpoint.
        std::fs::write(dir.join("backup_label"), "START WAL LOCATION: 0/1\n").unwrap();
        let mut atomic = setup(15);
        atomic.labelfile.clear();
        make_standby(&dir, &atomic).unwrap();
        assert!(!dir.join("backup_label").exists());
        assert!(dir.join("standby.signal").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A root-only file outside the data directory, and the files a postgres user could
    /// plant as links to it in a received copy of the primary.
    fn planted(test: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let root =
            std::env::temp_dir().join(format!("pgzfs-standby-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("data");
        std::fs::create_dir_all(dir.join("pg_replslot")).unwrap();
        let victim = root.join("master.passwd");
        std::fs::write(&victim, "root:secret\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        for name in [
            "postgresql.auto.conf",
            "backup_label",
            "tablespace_map",
            "standby.signal",
            "postmaster.pid",
            RECEIVED_NOT_CONFIGURED,
        ] {
            symlink(&victim, dir.join(name)).unwrap();
        }
        symlink(&victim, dir.join("pg_replslot/db2")).unwrap();
        (root, dir)
    }

    fn assert_root_file_untouched(root: &Path) {
        use std::os::unix::fs::MetadataExt;
        let victim = root.join("master.passwd");
        let meta = std::fs::symlink_metadata(&victim).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:secret\n");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "still root's");
        assert_eq!(meta.mode() & 0o7777, 0o600);
    }

    #[test]
    fn links_planted_by_postgres_are_replaced_and_their_root_owned_target_left_alone() {
        use std::os::unix::fs::MetadataExt;
        let (root, dir) = planted("links");
        // The data directory belongs to the PostgreSQL user (uid/gid 4321 here).
        nix::unistd::chown(&dir, Some(4321.into()), Some(4321.into())).unwrap();
        make_standby(&dir, &setup(15)).unwrap();
        assert_root_file_untouched(&root);
        for name in ["postgresql.auto.conf", "backup_label", "standby.signal"] {
            let meta = std::fs::symlink_metadata(dir.join(name)).unwrap();
            assert!(meta.file_type().is_file(), "{name} is a regular file now");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (4321, 4321),
                "{name} is postgres's"
            );
            assert_eq!(meta.mode() & 0o7777, 0o600);
        }
        let auto_conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(
            !auto_conf.contains("secret"),
            "the link's target was not read: {auto_conf}"
        );
        assert!(auto_conf.contains("primary_conninfo"), "{auto_conf}");
        for gone in ["tablespace_map", "postmaster.pid", RECEIVED_NOT_CONFIGURED] {
            assert!(
                std::fs::symlink_metadata(dir.join(gone)).is_err(),
                "{gone} removed"
            );
        }
        assert_eq!(
            std::fs::read_dir(dir.join("pg_replslot")).unwrap().count(),
            0
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn fencing_and_repointing_write_no_further_than_the_data_directory() {
        let (root, dir) = planted("fence");
        set_auto_conf(&dir, "default_transaction_read_only", "on", "fenced").unwrap();
        assert_root_file_untouched(&root);
        std::fs::remove_file(dir.join("postgresql.auto.conf")).unwrap();
        std::os::unix::fs::symlink(root.join("master.passwd"), dir.join("postgresql.auto.conf"))
            .unwrap();
        repoint_standby(&dir, &setup(15)).unwrap();
        assert_root_file_untouched(&root);
        let text = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(!text.contains("secret"), "{text}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_linked_pg_replslot_is_refused_and_nothing_is_removed_through_it() {
        let (root, dir) = planted("replslot");
        let elsewhere = root.join("slots-elsewhere");
        std::fs::create_dir_all(elsewhere.join("db9")).unwrap();
        std::fs::remove_dir_all(dir.join("pg_replslot")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("pg_replslot")).unwrap();
        let err = make_standby(&dir, &setup(15)).unwrap_err();
        assert!(
            err.to_string().contains("pg_replslot"),
            "names the path: {err}"
        );
        assert!(
            elsewhere.join("db9").is_dir(),
            "nothing removed through the link"
        );
        assert_root_file_untouched(&root);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! Turning a freshly received copy of the primary's data directory into a standby:
//! backup_label from the backup-safe cut, no leftovers of the primary's running server,
//! and the standby configuration for the server's major version.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pg::tls::PgTls;

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

/// Writes files owned like the data directory itself (PostgreSQL refuses foreign files).
struct Writer {
    uid: u32,
    gid: u32,
}

impl Writer {
    fn write(&self, path: &Path, text: &str) -> Result<()> {
        std::fs::write(path, text)
            .map_err(|e| Error::failed(format!("cannot write {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::failed(format!("cannot chmod {}: {e}", path.display())))?;
        nix::unistd::chown(path, Some(self.uid.into()), Some(self.gid.into()))
            .map_err(|e| Error::failed(format!("cannot chown {}: {e}", path.display())))
    }
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::failed(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
    }
}

/// Set one setting in postgresql.auto.conf (replacing any earlier value), keeping the
/// file's owner. For fencing a primary read-only without a superuser connection.
pub fn set_auto_conf(data_dir: &Path, key: &str, value: &str, why: &str) -> Result<()> {
    let meta = std::fs::metadata(data_dir)
        .map_err(|e| Error::failed(format!("cannot read {}: {e}", data_dir.display())))?;
    let writer = Writer {
        uid: meta.uid(),
        gid: meta.gid(),
    };
    let auto_conf = data_dir.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    let mut text: String = existing
        .lines()
        .filter(|line| setting_key(line).as_deref() != Some(key))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!("{key} = {} # pgzfs: {why}\n", guc_quote(value)));
    writer.write(&auto_conf, &text)
}

/// Point an existing standby at a (new) primary: rewrite only its standby configuration.
pub fn repoint_standby(data_dir: &Path, setup: &StandbySetup) -> Result<()> {
    let meta = std::fs::metadata(data_dir)
        .map_err(|e| Error::failed(format!("cannot read {}: {e}", data_dir.display())))?;
    let writer = Writer {
        uid: meta.uid(),
        gid: meta.gid(),
    };
    let auto_conf = data_dir.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    writer.write(&auto_conf, &rewrite_auto_conf(&existing, setup))?;
    if setup.major >= 12 {
        writer.write(&data_dir.join("standby.signal"), "")
    } else {
        writer.write(&data_dir.join("recovery.conf"), &recovery_conf(setup))
    }
}

/// Prepare a received data directory to start as a standby.
pub fn make_standby(data_dir: &Path, setup: &StandbySetup) -> Result<()> {
    let meta = std::fs::metadata(data_dir).map_err(|e| {
        Error::failed(format!(
            "data directory {} is missing after the receive: {e}",
            data_dir.display()
        ))
    })?;
    let writer = Writer {
        uid: meta.uid(),
        gid: meta.gid(),
    };

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
        remove_if_present(&data_dir.join(leftover))?;
    }
    // The primary's slots (including the one for this very node) are meaningless here
    // and would pin WAL on the standby forever.
    let slots = data_dir.join("pg_replslot");
    if let Ok(entries) = std::fs::read_dir(&slots) {
        for entry in entries.flatten() {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::failed(format!("cannot remove {}: {e}", path.display())))?;
        }
    }

    writer.write(&data_dir.join("backup_label"), &setup.labelfile)?;
    if setup.spcmapfile.is_empty() {
        remove_if_present(&data_dir.join("tablespace_map"))?;
    } else {
        writer.write(&data_dir.join("tablespace_map"), &setup.spcmapfile)?;
    }

    let auto_conf = data_dir.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    writer.write(&auto_conf, &rewrite_auto_conf(&existing, setup))?;
    if setup.major >= 12 {
        writer.write(&data_dir.join("standby.signal"), "")?;
    } else {
        writer.write(&data_dir.join("recovery.conf"), &recovery_conf(setup))?;
    }
    // Last: from here on the directory is a standby's.
    remove_if_present(&data_dir.join(RECEIVED_NOT_CONFIGURED))
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
}

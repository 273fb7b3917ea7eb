//! The per-node settings, each declared once: its key, how the file spells its value,
//! how that value is checked, and what a node gets when neither its own `[[nodes]]` entry
//! nor `[defaults]` sets it. From this one table come the `Node` fields, the raw
//! `[defaults]` and `[[nodes]]` sections (unknown keys refused), the layering of a node
//! over `[defaults]`, and the built-in defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::*;
use crate::compress::SshCompress;
use crate::cut::{BackupVia, CutMode};
use crate::datasets::{RawTablespace, Tablespace};
use crate::failover::{FenceMode, OnBackup};
use crate::pg::tls::{PgTls, SslMode};
use crate::ssh_openssh::SshDataPath;
use crate::zfs::names::DatasetName;
use crate::zfs::ZfsBackend;

/// Declares the per-node settings. Each entry reads
/// `key: <type in the file>, <check> => <checked type>, <when unset> => <field type>;`
/// where the check turns the file's value into the checked type (or says why not), and
/// "when unset" makes the field from the layered value: [`required`], [`optional`], or
/// [`or`] with a default. The entries of the `node` block are fields of `Node` itself;
/// each further block `part: Type { ... }` becomes a struct `Type` held in `Node::part`,
/// so that a layer can be given only the part it uses. The file stays flat: a key is
/// written the same whichever part it belongs to.
macro_rules! node_settings {
    (
        node {$(
            $(#[doc = $ndoc:literal])*
            $nkey:ident: $nraw:ty, $ncheck:expr => $nchecked:ty, $nunset:expr => $nfield:ty;
        )*}
        $(
            $(#[doc = $pdoc:literal])*
            $part:ident: $Part:ident {$(
                $(#[doc = $doc:literal])*
                $key:ident: $raw:ty, $check:expr => $checked:ty, $unset:expr => $field:ty;
            )*}
        )*
    ) => {
        /// One node with every setting resolved: its own entry, then `[defaults]`, then
        /// the built-in defaults.
        #[derive(Debug, Clone)]
        pub struct Node {
            pub name: String,
            pub host: String,
            /// PostgreSQL settings that belong to this node and must survive every
            /// re-seed from another node's snapshot (listen_addresses, ...).
            pub pg_settings: BTreeMap<String, String>,
            $($(#[doc = $ndoc])* pub $nkey: $nfield,)*
            $($(#[doc = $pdoc])* pub $part: $Part,)*
        }

        $(
            $(#[doc = $pdoc])*
            #[derive(Debug, Clone)]
            pub struct $Part {
                $($(#[doc = $doc])* pub $key: $field,)*
            }
        )*

        /// `[defaults]` as written. (serde cannot combine `flatten` with
        /// `deny_unknown_fields`, so `RawNode` repeats the keys instead of embedding this.)
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawSettings {
            pg_settings: Option<BTreeMap<String, toml::Value>>,
            $($nkey: Option<$nraw>,)*
            $($($key: Option<$raw>,)*)*
        }

        /// One `[[nodes]]` entry as written: the node-only keys plus every setting.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawNode {
            name: Option<String>,
            host: Option<String>,
            /// "data" (the default) or "witness".
            role: Option<String>,
            pg_settings: Option<BTreeMap<String, toml::Value>>,
            $($nkey: Option<$nraw>,)*
            $($($key: Option<$raw>,)*)*
        }

        impl RawNode {
            pub(super) fn split(self) -> (Option<String>, Option<String>, Option<String>, RawSettings) {
                let settings = RawSettings {
                    pg_settings: self.pg_settings,
                    $($nkey: self.$nkey,)*
                    $($($key: self.$key,)*)*
                };
                (self.name, self.host, self.role, settings)
            }
        }

        /// The settings of one section after checking; None where the section is silent.
        #[derive(Debug, Clone, Default)]
        pub(super) struct Settings {
            pg_settings: BTreeMap<String, String>,
            $($nkey: Option<$nchecked>,)*
            $($($key: Option<$checked>,)*)*
        }

        impl Settings {
            /// Check every value a section sets; an error names the section and the key.
            pub(super) fn check(
                raw: RawSettings,
                section: &Section,
                home: Option<&Path>,
            ) -> Result<Settings, String> {
                let reading = Reading { home };
                let at = |key: &'static str| move |why: String| format!("{}: {why}", section.key(key));
                Ok(Settings {
                    pg_settings: pg_settings(raw.pg_settings, section)?,
                    $($nkey: raw.$nkey
                        .map(|value| ($ncheck)(value, &reading).map_err(at(stringify!($nkey))))
                        .transpose()?,)*
                    $($($key: raw.$key
                        .map(|value| ($check)(value, &reading).map_err(at(stringify!($key))))
                        .transpose()?,)*)*
                })
            }

            /// This section's values where it has them, `base`'s otherwise. `pg_settings`
            /// are merged key by key, so a node can add listen_addresses without
            /// repeating the cluster-wide settings.
            pub(super) fn over(self, base: &Settings) -> Settings {
                let mut pg_settings = base.pg_settings.clone();
                pg_settings.extend(self.pg_settings);
                Settings {
                    pg_settings,
                    $($nkey: self.$nkey.or_else(|| base.$nkey.clone()),)*
                    $($($key: self.$key.or_else(|| base.$key.clone()),)*)*
                }
            }

            /// The node, with the built-in defaults where nothing was set.
            pub(super) fn complete(
                self,
                name: String,
                host: String,
                home: Option<&Path>,
            ) -> Result<Node, String> {
                let node = Unset {
                    name: &name,
                    data_dir: self.data_dir.clone().unwrap_or_default(),
                    home,
                };
                Ok(Node {
                    $($nkey: ($nunset)(self.$nkey, &node, stringify!($nkey))?,)*
                    $($part: $Part {
                        $($key: ($unset)(self.$key, &node, stringify!($key))?,)*
                    },)*
                    name,
                    host,
                    pg_settings: self.pg_settings,
                })
            }
        }

        /// Every key a `[[nodes]]` entry or `[defaults]` may set (`name`, `host` and
        /// `role` in `[[nodes]]` only).
        pub const NODE_KEYS: &[&str] = &[
            "name", "host", "role", "pg_settings",
            $(stringify!($nkey),)*
            $($(stringify!($key),)*)*
        ];
    };
}

impl Node {
    /// The address the other nodes use for this node's SSH transfers, its WAL stream
    /// (`primary_conninfo`) and pgzfs's PostgreSQL sessions: `replication_host`, else `host`.
    pub fn replication_host(&self) -> &str {
        self.replication_host.as_deref().unwrap_or(&self.host)
    }

    /// The address clients use for this node (given to event hooks, e.g. the PgBouncer
    /// repoint): `client_host`, else `host`.
    pub fn client_host(&self) -> &str {
        self.client_host.as_deref().unwrap_or(&self.host)
    }
}

impl PgConfig {
    /// TLS to this node's PostgreSQL (`pg_sslmode`, `pg_sslrootcert`, `pg_sslcert`,
    /// `pg_sslkey`); like `pg_user`, a standby's own values go into its `primary_conninfo`.
    pub fn tls(&self) -> PgTls {
        PgTls {
            mode: self.pg_sslmode,
            root_cert: self.pg_sslrootcert.clone(),
            cert: self.pg_sslcert.clone(),
            key: self.pg_sslkey.clone(),
        }
    }
}

impl Settings {
    /// A witness from its entry over `[defaults]`: only what a voter without data needs.
    pub(super) fn witness(
        self,
        name: String,
        host: String,
        section: &Section,
    ) -> Result<super::Witness, String> {
        let http_listen = self.http_listen.ok_or_else(|| {
            format!(
                "{}: a witness answers the other voters over HTTP; set http_listen",
                section.whole()
            )
        })?;
        Ok(super::Witness {
            lock_file: self
                .lock_file
                .unwrap_or_else(|| PathBuf::from(format!("/var/run/pgzfs-{name}.lock"))),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            name,
            host,
            http_listen,
        })
    }
}

/// What a default may depend on: the node's name, its data directory and the home
/// directory of the user running pgzfs.
pub(super) struct Unset<'a> {
    pub name: &'a str,
    pub data_dir: PathBuf,
    pub home: Option<&'a Path>,
}

/// A setting every node must have, from its entry or `[defaults]`.
fn required<T>(value: Option<T>, _: &Unset, key: &str) -> Result<T, String> {
    value
        .ok_or_else(|| format!("{key} is not set; set it in [defaults] or in this [[nodes]] entry"))
}

/// A setting whose absence means something (no limit, no listener, ...).
fn optional<T>(value: Option<T>, _: &Unset, _: &str) -> Result<Option<T>, String> {
    Ok(value)
}

/// A setting with a built-in default.
fn or<T>(default: impl Fn(&Unset) -> T) -> impl Fn(Option<T>, &Unset, &str) -> Result<T, String> {
    move |value, node, _| Ok(value.unwrap_or_else(|| default(node)))
}

/// A path below the home directory by default ("~/.ssh/..."): the default itself can
/// fail when HOME is unknown.
fn or_below_home(
    default: &'static str,
) -> impl Fn(Option<PathBuf>, &Unset, &str) -> Result<PathBuf, String> {
    move |value, node, key| match value {
        Some(path) => Ok(path),
        None => expand_home(default, node.home).map_err(|why| {
            format!("{key} is not set and its default {default:?} cannot be used: {why}")
        }),
    }
}

node_settings! {
    node {
        dataset: String, dataset_name => DatasetName, required => DatasetName;
        data_dir: String, path => PathBuf, required => PathBuf;
        /// Datasets outside `dataset`'s tree that hold tablespaces, each with its mountpoint here.
        tablespaces: Vec<RawTablespace>, |v, _: &Reading| Tablespace::parse_list(v) => Vec<Tablespace>, or(|_| Vec::new()) => Vec<Tablespace>;
        /// Where the dataset is mounted. None: keep the dataset's existing mountpoint, or use
        /// `data_dir` for a dataset pgzfs creates.
        mountpoint: String, path => PathBuf, optional => Option<PathBuf>;
        /// Where the other nodes reach this one for SSH transfers, `primary_conninfo` and
        /// pgzfs's own PostgreSQL sessions (see `Node::replication_host`). None: `host`.
        replication_host: String, host_address => String, optional => Option<String>;
        /// This node's address for clients: event hooks and the PgBouncer repoint (see
        /// `Node::client_host`). None: `host`.
        client_host: String, host_address => String, optional => Option<String>;
        /// Which ZFS interface local operations use.
        zfs_backend: String, |v: String, _: &Reading| ZfsBackend::parse(&v) => ZfsBackend,
            or(|_| ZfsBackend::default()) => ZfsBackend;
        lock_file: String, path => PathBuf,
            or(|node| PathBuf::from(format!("/var/run/pgzfs-{}.lock", node.name))) => PathBuf;
        lock_timeout: String, duration => Duration, or(|_| Duration::from_secs(60)) => Duration;
        connect_timeout: String, positive_duration => Duration,
            or(|_| Duration::from_secs(5)) => Duration;
    }
    /// PostgreSQL on this node: its binaries, how to reach it, TLS, its log, and how long
    /// it may take to stop and to start streaming.
    pg: PgConfig {
        pg_bin: String, path => PathBuf, or(|_| PathBuf::from("/usr/local/bin")) => PathBuf;
        pg_os_user: String, word => String, or(|_| "postgres".to_string()) => String;
        pg_port: i64, port => u16, or(|_| 5432) => u16;
        pg_user: String, identifier => String, or(|_| "replicator".to_string()) => String;
        pg_database: String, identifier => String, or(|_| "postgres".to_string()) => String;
        pg_passfile: String, home_path => PathBuf, optional => Option<PathBuf>;
        /// TLS to this node's PostgreSQL, with libpq's sslmode names (see `PgConfig::tls`).
        pg_sslmode: String, |v: String, _: &Reading| SslMode::parse(&v) => SslMode,
            or(|_| SslMode::default()) => SslMode;
        // Absolute paths, no "~": the standby's PostgreSQL reads them too, as another user
        // with another home.
        pg_sslrootcert: String, path => PathBuf, optional => Option<PathBuf>;
        pg_sslcert: String, path => PathBuf, optional => Option<PathBuf>;
        pg_sslkey: String, path => PathBuf, optional => Option<PathBuf>;
        /// Where `pg_ctl start` writes the server log.
        pg_log_file: String, path => PathBuf,
            or(|node| node.data_dir.join("postmaster.log")) => PathBuf;
        stop_timeout: String, duration => Duration, or(|_| Duration::from_secs(60)) => Duration;
        streaming_timeout: String, duration => Duration, or(|_| Duration::from_secs(120)) => Duration;
    }
    /// How other nodes are reached over SSH, and how a re-seed's stream travels.
    ssh: SshConfig {
        ssh_user: String, word => String, or(|_| "zfssync".to_string()) => String;
        ssh_port: i64, port => u16, or(|_| 22) => u16;
        ssh_key: String, home_path => PathBuf, or_below_home("~/.ssh/id_ed25519") => PathBuf;
        known_hosts: String, home_path => PathBuf, or_below_home("~/.ssh/known_hosts") => PathBuf;
        /// What carries the ZFS stream of a re-seed from the source.
        ssh_data_path: String, |v: String, _: &Reading| SshDataPath::parse(&v) => SshDataPath,
            or(|_| SshDataPath::default()) => SshDataPath;
        /// Whether the source compresses the ZFS stream of a re-seed of this node.
        ssh_compress: String, |v: String, _: &Reading| SshCompress::parse(&v) => SshCompress,
            or(|_| SshCompress::default()) => SshCompress;
        /// pgzfs on the other nodes, for steps that run there over SSH.
        pgzfs_bin: String, path => PathBuf,
            or(|_| PathBuf::from("/usr/local/bin/pgzfs")) => PathBuf;
    }
    /// How this node is re-seeded: its replication slot, who takes the cut, how fast the
    /// stream may come, how many common snapshots are kept.
    reseed: ReseedConfig {
        use_slots: bool, flag => bool, or(|_| true) => bool;
        /// The replication slot this node uses on whichever node is primary.
        slot_name: String, slot => String, or(|node| slot_name_for_node(node.name)) => String;
        /// How many common snapshots to keep between primary and standby.
        keep_common: i64, keep_count => usize, or(|_| 3) => usize;
        /// Who runs the backup-safe cut when this node is re-seeded.
        backup_via: String, |v: String, _: &Reading| BackupVia::parse(&v) => BackupVia,
            or(|_| BackupVia::default()) => BackupVia;
        /// How a re-seed makes the source's snapshot consistent: a backup session or one atomic snapshot.
        cut: String, |v: String, _: &Reading| CutMode::parse(&v) => CutMode, or(|_| CutMode::default()) => CutMode;
        /// Whether a re-seed with a backup cut sends the pg_wal child dataset too. Off: the
        /// standby's pg_wal is emptied and it streams the WAL from its slot on the primary.
        send_pg_wal: bool, flag => bool, or(|_| false) => bool;
        /// The most bytes per second this node receives a re-seed's stream at, whether
        /// `reset-secondary`, `rejoin` or the daemon started it. None: unlimited. (Checked as
        /// Some(0) for an explicit "unlimited", so a node can lift a limit of `[defaults]`.)
        bwlimit: toml::Value, bytes_per_second => u64,
            |v: Option<u64>, _: &Unset, _: &str| Ok::<_, String>(v.and_then(NonZeroU64::new)) => Option<NonZeroU64>;
    }
    /// promote, carp-event, rejoin and switchover.
    failover: FailoverConfig {
        /// promote: how many times, and how far apart, to ask every other node (on a fresh
        /// connection each time) whether it is a writable primary before promoting.
        promote_check_attempts: i64, check_attempts => u32, or(|_| 3) => u32;
        promote_check_interval: String, duration => Duration,
            or(|_| Duration::from_secs(1)) => Duration;
        /// promote: refuse when replay is this many bytes behind the last WAL received
        /// (1 MiB by default, like Patroni's maximum_lag_on_failover).
        max_lag_on_failover: i64, byte_count => u64, or(|_| 1 << 20) => u64;
        promote_timeout: String, duration => Duration, or(|_| Duration::from_secs(60)) => Duration;
        /// carp-event BACKUP on a primary: fence only, or fence and rejoin the new primary.
        on_backup: String, |v: String, _: &Reading| OnBackup::parse(&v) => OnBackup,
            or(|_| OnBackup::Fence) => OnBackup;
        /// How a primary is fenced: stopped, or kept running read-only with its sessions ended.
        fence_mode: String, |v: String, _: &Reading| FenceMode::parse(&v) => FenceMode,
            or(|_| FenceMode::Stop) => FenceMode;
        /// rejoin: where the diverged writes of a former primary are kept as a stream file.
        quarantine_dir: String, path => PathBuf,
            or(|_| PathBuf::from("/var/db/pgzfs/quarantine")) => PathBuf;
        /// switchover: the target may be at most this many bytes behind.
        switchover_max_lag: i64, byte_count => u64, or(|_| 16 << 20) => u64;
        /// switchover: run on the old primary so the CARP address moves too (via /bin/sh).
        carp_move_command: String, one_line => String, optional => Option<String>;
    }
    /// `pgzfs daemon`: its schedule, automatic re-seeds and its HTTP listener.
    daemon: DaemonConfig {
        /// daemon: how often to take a backup-safe snapshot on the primary.
        snapshot_interval: String, snapshot_interval => Duration,
            or(|_| Duration::from_secs(3600)) => Duration;
        /// daemon: verify the newest snapshot (`pgzfs verify`) when the last verification is
        /// this old; None: never (the default).
        verify_every: String, positive_duration => Duration, optional => Option<Duration>;
        /// daemon: how long streaming may stay broken before this standby is re-seeded.
        reseed_after: String, duration => Duration, or(|_| Duration::from_secs(300)) => Duration;
        /// daemon and status: after this many automatic re-seeds in a row have failed, warn
        /// that this standby's slot keeps WAL on the primary.
        reseed_failures_warn: i64, failure_count => u32, or(|_| 3) => u32;
        /// daemon: where to serve health checks and metrics; None: no HTTP at all.
        http_listen: String, listen_address => SocketAddr, optional => Option<SocketAddr>;
    }
}

/// Names one section in messages: `defaults` or `nodes[2]` (counted from 1, like the
/// `[[nodes]]` blocks in the file), with the node's name when it has a valid one.
pub(super) struct Section {
    pub label: String,
    pub node_name: Option<String>,
}

impl Section {
    pub(super) fn key(&self, key: &str) -> String {
        match &self.node_name {
            Some(name) => format!("{}.{key} (node {name:?})", self.label),
            None => format!("{}.{key}", self.label),
        }
    }

    pub(super) fn whole(&self) -> String {
        match &self.node_name {
            Some(name) => format!("{} (node {name:?})", self.label),
            None => self.label.clone(),
        }
    }
}

fn pg_settings(
    raw: Option<BTreeMap<String, toml::Value>>,
    section: &Section,
) -> Result<BTreeMap<String, String>, String> {
    let mut settings = BTreeMap::new();
    for (name, value) in raw.unwrap_or_default() {
        let at = |why: String| format!("{}: {why}", section.key(&format!("pg_settings.{name}")));
        check_pg_setting_name(&name).map_err(at)?;
        settings.insert(name.clone(), pg_setting_value(value).map_err(at)?);
    }
    Ok(settings)
}

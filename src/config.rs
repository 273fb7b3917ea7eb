//! The config file, identical on every node of a cluster.
//!
//! ```toml
//! cluster = "haclu"
//! [defaults]            # every node inherits these; a node may override any of them
//! dataset = "tank/pgdata"
//! data_dir = "/var/db/postgres/data15"
//! [[nodes]]
//! name = "db1"
//! host = "10.0.0.1"
//! [[nodes]]
//! name = "db2"
//! host = "10.0.0.2"
//! pg_port = 5433        # per-node override
//! [[nodes]]
//! name = "w1"
//! host = "10.0.0.9"
//! role = "witness"      # runs only `pgzfs daemon`: votes, holds no data
//! ```
//!
//! Everything is checked at load time, before any command runs: a typo found during a
//! failover is found too late. Values are validated where they are written (so an error
//! names `defaults.lock_timeout` or `nodes[2].dataset`), then each node's entry is laid
//! over `[defaults]`, then the built-in defaults fill the rest.
//!
//! Values that end up on remote command lines (paths, user names, hosts) are restricted
//! to characters no shell treats specially, on top of the quoting done when commands are
//! built.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_duration;
use crate::error::{Error, Result};
use crate::size::parse_size;
use crate::zfs::names::DatasetName;

pub const DEFAULT_CONFIG_PATH: &str = "/usr/local/etc/pgzfs.toml";
const DEFAULT_LOG_FILE: &str = "/var/log/pgzfs.log";

const DEFAULT_PG_BIN: &str = "/usr/local/bin";
const DEFAULT_PG_OS_USER: &str = "postgres";
const DEFAULT_PG_PORT: u16 = 5432;
const DEFAULT_PG_USER: &str = "replicator";
const DEFAULT_PG_DATABASE: &str = "postgres";
const DEFAULT_SSH_USER: &str = "zfssync";
const DEFAULT_SSH_PORT: u16 = 22;
const DEFAULT_SSH_KEY: &str = "~/.ssh/id_ed25519";
const DEFAULT_KNOWN_HOSTS: &str = "~/.ssh/known_hosts";
const DEFAULT_KEEP_COMMON: usize = 3;
const DEFAULT_STREAMING_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_RESEED_AFTER: Duration = Duration::from_secs(300);
const DEFAULT_ISOLATION_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL's NAMEDATALEN - 1: the longest replication slot name.
const MAX_SLOT_NAME_LEN: usize = 63;

#[derive(Debug, Clone)]
pub struct Config {
    /// `[events]`: the hook run on every role change.
    pub events: Events,
    /// The file this was read from, for messages.
    pub path: PathBuf,
    pub cluster: String,
    pub log_file: PathBuf,
    /// The data nodes (PostgreSQL and a dataset), in config order.
    pub nodes: Vec<Node>,
    /// `role = "witness"` entries: they run only `pgzfs daemon`, vote in the quorum and
    /// hold no data. Kept apart from `nodes` so that nothing looks for PostgreSQL there.
    pub witnesses: Vec<Witness>,
    /// `[retention]`: which scheduled snapshots the primary keeps.
    pub retention: Retention,
    /// `isolation_timeout`, one value for the whole cluster (the lease arithmetic needs
    /// every node to agree on it): a primary that has not reached a strict majority of
    /// the voters for this long fences itself, and a standby is promoted automatically
    /// only after a majority has not seen the primary for this long plus
    /// [`crate::quorum::LEASE_MARGIN`].
    pub isolation_timeout: Duration,
    /// `two_node_failover = true`: with exactly two voters (two data nodes, no witness)
    /// a standby may be promoted automatically on its own vote. A partition then gives
    /// TWO WRITABLE PRIMARIES: each side sees the other as gone. Off by default.
    pub two_node_failover: bool,
}

/// A witness: a voter without PostgreSQL or a dataset.
#[derive(Debug, Clone)]
pub struct Witness {
    pub name: String,
    pub host: String,
    /// Where its daemon answers the other voters (required for a witness).
    pub http_listen: SocketAddr,
    pub connect_timeout: Duration,
    /// Its runtime directory's files (state file) go next to this path.
    pub lock_file: PathBuf,
}

/// A node that votes in the quorum: every data node and every witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub name: String,
    pub host: String,
    /// The port its daemon serves /quorum on; None when it has no `http_listen` (it
    /// then cannot be asked, and counts as not agreeing to anything).
    pub http_port: Option<u16>,
}

/// How many snapshots to keep per grandfather-father-son class: the newest snapshot of
/// each of the last `hourly` hours that have one, of the last `daily` such days, and so
/// on. One policy for the cluster, because after a failover the new primary applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
}

impl Default for Retention {
    /// "No production without backup": a day of hourlies, a week of dailies, seven
    /// weeklies and a year of monthlies.
    fn default() -> Self {
        Retention {
            hourly: 24,
            daily: 7,
            weekly: 7,
            monthly: 12,
            yearly: 0,
        }
    }
}

/// One node with every setting resolved: its own entry, then `[defaults]`, then the
/// built-in defaults.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub dataset: DatasetName,
    pub data_dir: PathBuf,
    /// Where the dataset is mounted. None: keep the dataset's existing mountpoint, or use
    /// `data_dir` for a dataset pgzfs creates.
    pub mountpoint: Option<PathBuf>,
    pub pg_bin: PathBuf,
    pub pg_os_user: String,
    pub pg_port: u16,
    pub pg_user: String,
    pub pg_database: String,
    pub pg_passfile: Option<PathBuf>,
    /// Where `pg_ctl start` writes the server log.
    pub pg_log_file: PathBuf,
    /// PostgreSQL settings that belong to this node and must survive every re-seed from
    /// another node's snapshot (listen_addresses, ...).
    pub pg_settings: BTreeMap<String, String>,
    pub ssh_user: String,
    pub ssh_port: u16,
    pub ssh_key: PathBuf,
    pub known_hosts: PathBuf,
    pub use_slots: bool,
    /// The replication slot this node uses on whichever node is primary.
    pub slot_name: String,
    /// How many common snapshots to keep between primary and standby.
    pub keep_common: usize,
    pub streaming_timeout: Duration,
    pub lock_timeout: Duration,
    pub stop_timeout: Duration,
    pub connect_timeout: Duration,
    pub lock_file: PathBuf,
    /// Which ZFS interface local operations use (`zfs_backend`).
    pub zfs_backend: ZfsBackend,
    /// Who runs the backup-safe cut when this node is re-seeded (`backup_via`).
    pub backup_via: BackupVia,
    /// What carries the ZFS stream of a re-seed from the source (`ssh_data_path`).
    pub ssh_data_path: SshDataPath,
    /// Whether the source compresses the ZFS stream of a re-seed of this node
    /// (`ssh_compress`).
    pub ssh_compress: SshCompress,
    /// The most bytes per second this node receives a re-seed's stream at (`bwlimit`),
    /// whether `reset-secondary`, `rejoin` or the daemon started it. None: unlimited.
    pub bwlimit: Option<NonZeroU64>,
    /// daemon: how often to take a backup-safe snapshot on the primary.
    pub snapshot_interval: Duration,
    /// daemon: how long streaming may stay broken before this standby is re-seeded.
    pub reseed_after: Duration,
    /// daemon: where to serve health checks and metrics; None: no HTTP at all.
    pub http_listen: Option<SocketAddr>,
    /// promote: how many times, and how far apart, to ask every other node (on a fresh
    /// connection each time) whether it is a writable primary before promoting.
    pub promote_check_attempts: u32,
    pub promote_check_interval: Duration,
    /// promote: refuse when replay is this many bytes behind the last WAL received.
    pub max_lag_on_failover: u64,
    pub promote_timeout: Duration,
    /// carp-event BACKUP on a primary: fence only, or fence and rejoin the new primary.
    pub on_backup: OnBackup,
    /// How a primary is fenced: stopped, or kept running read-only with its sessions ended.
    pub fence_mode: FenceMode,
    /// rejoin: where the diverged writes of a former primary are kept as a stream file.
    pub quarantine_dir: PathBuf,
    /// switchover: the target may be at most this many bytes behind.
    pub switchover_max_lag: u64,
    /// switchover: run on the old primary so the CARP address moves too (via /bin/sh).
    pub carp_move_command: Option<String>,
    /// pgzfs on the other nodes, for steps that run there over SSH.
    pub pgzfs_bin: PathBuf,
}

/// `[events]`: `command` is a template with repmgr-compatible placeholders (%n node,
/// %e event, %s success 1/0, %t timestamp, %d details, %p the other node); `only`
/// limits which events run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub command: Option<String>,
    pub only: Vec<String>,
}

/// The events pgzfs emits. `daemon`: a state change the daemon saw or caused (streaming
/// broken or back, PostgreSQL restarted, a re-seed started).
pub const EVENT_NAMES: [&str; 8] = [
    "promote",
    "fence",
    "rejoin",
    "switchover",
    "follow",
    "reset_secondary",
    "failure",
    "daemon",
];

/// How a primary that must stop taking writes is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Stop PostgreSQL: the hard fence, and the default.
    Stop,
    /// Keep serving reads: default_transaction_read_only = on, reload, end client sessions.
    ReadOnly,
}

/// What a primary does when its CARP address goes to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackup {
    Fence,
    Rejoin,
}

impl Config {
    /// Read and check the config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::usage(format!("{}: cannot read config file: {e}", path.display()))
        })?;
        Config::parse(&text, path)
    }

    /// Check config text; `path` is only used in messages and kept in `Config::path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        Config::parse_with_home(text, path, crate::pgpass::home_dir().as_deref())
    }

    /// `parse` with the home directory used to expand "~/" given explicitly, so that
    /// tests do not depend on who runs them.
    fn parse_with_home(text: &str, path: &Path, home: Option<&Path>) -> Result<Config> {
        let in_file = |message: String| Error::usage(format!("{}: {message}", path.display()));
        let mut raw: RawConfig =
            toml::from_str(text).map_err(|e| in_file(e.to_string().trim_end().to_string()))?;
        let events = check_events(raw.events.take()).map_err(in_file)?;
        let retention = check_retention(raw.retention.take()).map_err(in_file)?;
        let resolved = resolve(raw, home).map_err(in_file)?;
        Ok(Config {
            path: path.to_path_buf(),
            events,
            cluster: resolved.cluster,
            log_file: resolved.log_file,
            nodes: resolved.nodes,
            witnesses: resolved.witnesses,
            retention,
            isolation_timeout: resolved.isolation_timeout,
            two_node_failover: resolved.two_node_failover,
        })
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        if self.witnesses.iter().any(|w| w.name == name) {
            return Err(Error::usage(format!(
                "{name} is a witness (role = \"witness\" in {}): it holds no data and runs only `pgzfs daemon`",
                self.path.display()
            )));
        }
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| {
                Error::usage(format!(
                    "no node named {name:?} in {}; configured: {}",
                    self.path.display(),
                    self.node_names()
                ))
            })
    }

    /// The node pgzfs runs on: `--node`, else `$PGZFS_NODE`, else the node named like
    /// this host (the full hostname first, then the part before the first '.').
    pub fn local_node(&self, explicit: Option<&str>) -> Result<&Node> {
        let from_env = std::env::var("PGZFS_NODE").ok();
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok());
        self.pick_local_node(explicit, from_env, hostname)
    }

    fn pick_local_node(
        &self,
        explicit: Option<&str>,
        from_env: Option<String>,
        hostname: Option<String>,
    ) -> Result<&Node> {
        if let Some(name) = explicit {
            return self.node(name).map_err(|e| e.context("--node"));
        }
        if let Some(name) = from_env.filter(|name| !name.is_empty()) {
            return self.node(&name).map_err(|e| e.context("PGZFS_NODE"));
        }
        let not_found = |tried: String| {
            Error::usage(format!(
                "cannot tell which node this is: no --node given, PGZFS_NODE is not set, and {tried}; \
                 configured nodes in {}: {}. Pass --node NAME or set PGZFS_NODE.",
                self.path.display(),
                self.node_names()
            ))
        };
        let Some(hostname) = hostname.filter(|name| !name.is_empty()) else {
            return Err(not_found("the hostname could not be read".to_string()));
        };
        if let Some(node) = self.nodes.iter().find(|node| node.name == hostname) {
            return Ok(node);
        }
        match hostname.split_once('.') {
            Some((short, _)) => match self.nodes.iter().find(|node| node.name == short) {
                Some(node) => Ok(node),
                None => Err(not_found(format!(
                    "neither the hostname {hostname:?} nor its short form {short:?} is a node"
                ))),
            },
            None => Err(not_found(format!(
                "the hostname {hostname:?} is not a node"
            ))),
        }
    }

    /// The witness this host is, if it is one: `--node`, else `$PGZFS_NODE`, else the
    /// hostname (full, then short), as for data nodes.
    pub fn local_witness(&self, explicit: Option<&str>) -> Option<&Witness> {
        let from_env = std::env::var("PGZFS_NODE").ok().filter(|n| !n.is_empty());
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok());
        let wanted: Vec<String> = match (explicit, from_env) {
            (Some(name), _) => vec![name.to_string()],
            (None, Some(name)) => vec![name],
            (None, None) => hostname
                .map(|h| {
                    let short = h.split('.').next().unwrap_or_default().to_string();
                    vec![h, short]
                })
                .unwrap_or_default(),
        };
        wanted
            .iter()
            .find_map(|name| self.witnesses.iter().find(|w| &w.name == name))
    }

    /// Every voter: the data nodes, then the witnesses, in config order.
    pub fn voters(&self) -> Vec<Voter> {
        // A daemon listening on every address is reached at the node's own.
        let voter = |name: &str, host: &str, listen: Option<SocketAddr>| Voter {
            name: name.to_string(),
            host: match listen {
                Some(a) if !a.ip().is_unspecified() => a.ip().to_string(),
                _ => host.to_string(),
            },
            http_port: listen.map(|a| a.port()),
        };
        let data = self
            .nodes
            .iter()
            .map(|n| voter(&n.name, &n.host, n.http_listen));
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| voter(&w.name, &w.host, Some(w.http_listen)));
        data.chain(witnesses).collect()
    }

    /// Every data node except `local`, in config order (witnesses are never included).
    pub fn other_nodes<'a>(&'a self, local: &'a Node) -> impl Iterator<Item = &'a Node> {
        self.nodes
            .iter()
            .filter(move |node| node.name != local.name)
    }

    fn node_names(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Which config file to read: `--config`, else `$PGZFS_CONFIG`, else the default.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    choose_config_path(explicit, std::env::var_os("PGZFS_CONFIG"))
}

fn choose_config_path(explicit: Option<&Path>, from_env: Option<OsString>) -> PathBuf {
    match (explicit, from_env) {
        (Some(explicit), _) => explicit.to_path_buf(),
        (None, Some(from_env)) if !from_env.is_empty() => PathBuf::from(from_env),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// `zfs_backend`: how pgzfs drives ZFS on this node. `auto` uses libzfs_core when pgzfs
/// was built with it (cargo feature `libzfs-core`) and /dev/zfs can be opened, and the
/// zfs(8) command otherwise; `cli` always uses zfs(8); `lzc` insists on libzfs_core and
/// fails if it is not there. Operations on other nodes always go through zfs(8) over SSH.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ZfsBackend {
    #[default]
    Auto,
    Cli,
    Lzc,
}

impl ZfsBackend {
    fn parse(value: &str) -> std::result::Result<ZfsBackend, String> {
        match value {
            "auto" => Ok(ZfsBackend::Auto),
            "cli" => Ok(ZfsBackend::Cli),
            "lzc" => Ok(ZfsBackend::Lzc),
            other => Err(format!(
                "{other:?} is not a ZFS backend; use \"auto\", \"cli\" or \"lzc\""
            )),
        }
    }
}

/// `backup_via`: how a standby's re-seed puts the source into backup mode around its
/// snapshot. A non-exclusive backup lives and dies with one PostgreSQL session, so start,
/// snapshot and stop must happen inside one process that holds that session.
/// - `postgres` (the default): the standby holds the session itself, over its own
///   connection to the source's PostgreSQL as `pg_user`, and snapshots over SSH. This is
///   what the shell scripts pgzfs replaces did, so existing grants keep working.
/// - `ssh`: the standby runs `pgzfs snapshot` on the source over SSH (a command
///   `pgzfs serve` allows), and the source's pgzfs holds the session with its local
///   PostgreSQL. The backup privilege then stays on the source: the standby's role needs
///   no `pg_backup_start` grant there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackupVia {
    #[default]
    Postgres,
    Ssh,
}

impl BackupVia {
    fn parse(value: &str) -> std::result::Result<BackupVia, String> {
        match value {
            "postgres" => Ok(BackupVia::Postgres),
            "ssh" => Ok(BackupVia::Ssh),
            other => Err(format!(
                "{other:?} is not a way to take the backup; use \"postgres\" or \"ssh\""
            )),
        }
    }
}

/// `ssh_data_path`: what carries the `zfs send` stream when this node is re-seeded.
/// `openssh` (the default) runs the system ssh(1) for the stream only, with the same
/// user, key, port and strict known_hosts file; `ssh2` keeps the stream on pgzfs's own
/// libssh2 session, which runs every other remote command either way. The default is
/// the faster one measured by bench/run: on the lab a full re-seed moved its stream about
/// 1.4x faster through ssh(1) than through libssh2 (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SshDataPath {
    Ssh2,
    #[default]
    OpenSsh,
}

impl SshDataPath {
    fn parse(value: &str) -> std::result::Result<SshDataPath, String> {
        match value {
            "ssh2" => Ok(SshDataPath::Ssh2),
            "openssh" => Ok(SshDataPath::OpenSsh),
            other => Err(format!(
                "{other:?} is not an SSH data path; use \"ssh2\" or \"openssh\""
            )),
        }
    }
}

/// `ssh_compress`: whether the `zfs send` stream of a re-seed of this node is compressed
/// on its way. `none` (the default) sends it as zfs writes it; `zstd:N` has the source's
/// pgzfs (`pgzfs_bin`) compress it with zstd at level N and this node decompress it. It
/// costs CPU on both ends, so it pays only on a link slower than the compressor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SshCompress {
    #[default]
    None,
    Zstd(ZstdLevel),
}

impl SshCompress {
    fn parse(value: &str) -> std::result::Result<SshCompress, String> {
        if value == "none" {
            return Ok(SshCompress::None);
        }
        match value.strip_prefix("zstd:") {
            Some(level) => ZstdLevel::parse(level).map(SshCompress::Zstd),
            None => Err(format!(
                "{value:?} is not a compression; use \"none\" or \"zstd:N\" with N from {} to {}",
                ZstdLevel::MIN,
                ZstdLevel::MAX
            )),
        }
    }
}

/// A zstd compression level pgzfs accepts: 1 to 19. Levels above 19 use windows of up to
/// 128 MiB, on the decompressing side too, which the decoder (crate::compress) refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdLevel(u8);

impl ZstdLevel {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 19;

    /// Only the plain decimal form ("3", not "03" or "+3"): the level also travels on
    /// command lines that `pgzfs serve` compares word for word.
    pub fn parse(text: &str) -> std::result::Result<ZstdLevel, String> {
        let level = text
            .parse::<u8>()
            .ok()
            .filter(|n| n.to_string() == text && (Self::MIN..=Self::MAX).contains(n))
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a zstd level from {} to {}",
                    Self::MIN,
                    Self::MAX
                )
            })?;
        Ok(ZstdLevel(level))
    }

    pub fn get(self) -> i32 {
        i32::from(self.0)
    }
}

impl std::fmt::Display for ZstdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<String>,
    log_file: Option<String>,
    isolation_timeout: Option<String>,
    two_node_failover: Option<bool>,
    #[serde(default)]
    defaults: RawSettings,
    #[serde(default)]
    nodes: Vec<RawNode>,
    retention: Option<RawRetention>,
    events: Option<RawEvents>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    command: Option<String>,
    only: Option<Vec<String>>,
}

/// `[retention]` as written; counts are read as i64 for the same reason as ports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    hourly: Option<i64>,
    daily: Option<i64>,
    weekly: Option<i64>,
    monthly: Option<i64>,
    yearly: Option<i64>,
}

/// Declares the per-node settings once for both places they may appear. serde cannot
/// combine `flatten` with `deny_unknown_fields`, so `[[nodes]]` entries repeat the fields
/// instead of embedding `RawSettings`.
macro_rules! per_node_settings {
    ($($key:ident: $type:ty,)*) => {
        /// `[defaults]` as written.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawSettings {
            $($key: Option<$type>,)*
        }

        /// One `[[nodes]]` entry as written: the node-only keys plus every setting.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawNode {
            name: Option<String>,
            host: Option<String>,
            role: Option<String>,
            $($key: Option<$type>,)*
        }

        impl RawNode {
            fn split(self) -> (Option<String>, Option<String>, Option<String>, RawSettings) {
                (self.name, self.host, self.role, RawSettings { $($key: self.$key,)* })
            }
        }
    };
}

// Ports and counts are read as i64 so that out-of-range values get our message, which
// names the key and the range, instead of a bare "invalid value".
per_node_settings! {
    dataset: String,
    data_dir: String,
    mountpoint: String,
    pg_bin: String,
    pg_os_user: String,
    pg_port: i64,
    pg_user: String,
    pg_database: String,
    pg_passfile: String,
    pg_log_file: String,
    pg_settings: BTreeMap<String, toml::Value>,
    ssh_user: String,
    ssh_port: i64,
    ssh_key: String,
    known_hosts: String,
    use_slots: bool,
    slot_name: String,
    keep_common: i64,
    streaming_timeout: String,
    lock_timeout: String,
    stop_timeout: String,
    connect_timeout: String,
    lock_file: String,
    zfs_backend: String,
    backup_via: String,
    ssh_data_path: String,
    ssh_compress: String,
    bwlimit: toml::Value,
    snapshot_interval: String,
    reseed_after: String,
    http_listen: String,
    promote_check_attempts: i64,
    promote_check_interval: String,
    max_lag_on_failover: i64,
    promote_timeout: String,
    on_backup: String,
    fence_mode: String,
    quarantine_dir: String,
    switchover_max_lag: i64,
    carp_move_command: String,
    pgzfs_bin: String,
}

// ---------------------------------------------------------------------------------------
// Checked, but not yet merged.

/// The settings of one section after checking; None where the section is silent.
#[derive(Debug, Clone, Default)]
struct Settings {
    dataset: Option<DatasetName>,
    data_dir: Option<PathBuf>,
    mountpoint: Option<PathBuf>,
    pg_bin: Option<PathBuf>,
    pg_os_user: Option<String>,
    pg_port: Option<u16>,
    pg_user: Option<String>,
    pg_database: Option<String>,
    pg_passfile: Option<PathBuf>,
    pg_log_file: Option<PathBuf>,
    pg_settings: BTreeMap<String, String>,
    ssh_user: Option<String>,
    ssh_port: Option<u16>,
    ssh_key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    use_slots: Option<bool>,
    slot_name: Option<String>,
    keep_common: Option<usize>,
    streaming_timeout: Option<Duration>,
    lock_timeout: Option<Duration>,
    stop_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    lock_file: Option<PathBuf>,
    zfs_backend: Option<ZfsBackend>,
    backup_via: Option<BackupVia>,
    ssh_data_path: Option<SshDataPath>,
    ssh_compress: Option<SshCompress>,
    /// Some(0) is an explicit "unlimited", so that a node can lift a limit set in
    /// `[defaults]`.
    bwlimit: Option<u64>,
    snapshot_interval: Option<Duration>,
    reseed_after: Option<Duration>,
    http_listen: Option<SocketAddr>,
    promote_check_attempts: Option<u32>,
    promote_check_interval: Option<Duration>,
    max_lag_on_failover: Option<u64>,
    promote_timeout: Option<Duration>,
    on_backup: Option<OnBackup>,
    fence_mode: Option<FenceMode>,
    quarantine_dir: Option<PathBuf>,
    switchover_max_lag: Option<u64>,
    carp_move_command: Option<String>,
    pgzfs_bin: Option<PathBuf>,
}

impl Settings {
    /// This section's values where it has them, `base`'s otherwise. `pg_settings` are
    /// merged key by key, so a node can add listen_addresses without repeating the
    /// cluster-wide settings.
    fn over(self, base: &Settings) -> Settings {
        let mut pg_settings = base.pg_settings.clone();
        pg_settings.extend(self.pg_settings);
        Settings {
            dataset: self.dataset.or_else(|| base.dataset.clone()),
            data_dir: self.data_dir.or_else(|| base.data_dir.clone()),
            mountpoint: self.mountpoint.or_else(|| base.mountpoint.clone()),
            pg_bin: self.pg_bin.or_else(|| base.pg_bin.clone()),
            pg_os_user: self.pg_os_user.or_else(|| base.pg_os_user.clone()),
            pg_port: self.pg_port.or(base.pg_port),
            pg_user: self.pg_user.or_else(|| base.pg_user.clone()),
            pg_database: self.pg_database.or_else(|| base.pg_database.clone()),
            pg_passfile: self.pg_passfile.or_else(|| base.pg_passfile.clone()),
            pg_log_file: self.pg_log_file.or_else(|| base.pg_log_file.clone()),
            pg_settings,
            ssh_user: self.ssh_user.or_else(|| base.ssh_user.clone()),
            ssh_port: self.ssh_port.or(base.ssh_port),
            ssh_key: self.ssh_key.or_else(|| base.ssh_key.clone()),
            known_hosts: self.known_hosts.or_else(|| base.known_hosts.clone()),
            use_slots: self.use_slots.or(base.use_slots),
            slot_name: self.slot_name.or_else(|| base.slot_name.clone()),
            keep_common: self.keep_common.or(base.keep_common),
            streaming_timeout: self.streaming_timeout.or(base.streaming_timeout),
            lock_timeout: self.lock_timeout.or(base.lock_timeout),
            stop_timeout: self.stop_timeout.or(base.stop_timeout),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            lock_file: self.lock_file.or_else(|| base.lock_file.clone()),
            zfs_backend: self.zfs_backend.or(base.zfs_backend),
            backup_via: self.backup_via.or(base.backup_via),
            ssh_data_path: self.ssh_data_path.or(base.ssh_data_path),
            ssh_compress: self.ssh_compress.or(base.ssh_compress),
            bwlimit: self.bwlimit.or(base.bwlimit),
            snapshot_interval: self.snapshot_interval.or(base.snapshot_interval),
            reseed_after: self.reseed_after.or(base.reseed_after),
            http_listen: self.http_listen.or(base.http_listen),
            promote_check_attempts: self.promote_check_attempts.or(base.promote_check_attempts),
            promote_check_interval: self.promote_check_interval.or(base.promote_check_interval),
            max_lag_on_failover: self.max_lag_on_failover.or(base.max_lag_on_failover),
            promote_timeout: self.promote_timeout.or(base.promote_timeout),
            on_backup: self.on_backup.or(base.on_backup),
            fence_mode: self.fence_mode.or(base.fence_mode),
            quarantine_dir: self.quarantine_dir.or_else(|| base.quarantine_dir.clone()),
            switchover_max_lag: self.switchover_max_lag.or(base.switchover_max_lag),
            carp_move_command: self
                .carp_move_command
                .or_else(|| base.carp_move_command.clone()),
            pgzfs_bin: self.pgzfs_bin.or_else(|| base.pgzfs_bin.clone()),
        }
    }
}

/// Names one section in messages: `defaults` or `nodes[2]` (counted from 1, like the
/// `[[nodes]]` blocks in the file), with the node's name when it has a valid one.
struct Section {
    label: String,
    node_name: Option<String>,
}

impl Section {
    fn key(&self, key: &str) -> String {
        match &self.node_name {
            Some(name) => format!("{}.{key} (node {name:?})", self.label),
            None => format!("{}.{key}", self.label),
        }
    }

    fn whole(&self) -> String {
        match &self.node_name {
            Some(name) => format!("{} (node {name:?})", self.label),
            None => self.label.clone(),
        }
    }
}

/// Attach the key to a problem with its value.
fn at_key<'a>(section: &'a Section, key: &'a str) -> impl Fn(String) -> String + 'a {
    move |why| format!("{}: {why}", section.key(key))
}

fn check_settings(
    raw: RawSettings,
    section: &Section,
    home: Option<&Path>,
) -> std::result::Result<Settings, String> {
    let at = |key: &'static str| at_key(section, key);
    let path = |key: &'static str, value: Option<String>| {
        value
            .map(|v| absolute_path(&v).map_err(at(key)))
            .transpose()
    };
    let home_path = |key: &'static str, value: Option<String>| {
        value
            .map(|v| expand_home(&v, home).map_err(at(key)))
            .transpose()
    };
    let word = |key: &'static str, value: Option<String>| {
        value.map(|v| plain_word(&v).map_err(at(key))).transpose()
    };
    let port = |key: &'static str, value: Option<i64>| {
        value.map(|v| port_number(v).map_err(at(key))).transpose()
    };
    let duration = |key: &'static str, value: Option<String>| {
        value
            .map(|v| parse_duration(&v).map_err(at(key)))
            .transpose()
    };

    let dataset = raw
        .dataset
        .map(|v| DatasetName::parse(&v).map_err(|e| at("dataset")(e.message().to_string())))
        .transpose()?;
    let keep_common = raw
        .keep_common
        .map(|v| match usize::try_from(v) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(at("keep_common")(format!(
                "{v} is not allowed; keep at least 1 common snapshot, or the next sync needs a full re-seed"
            ))),
        })
        .transpose()?;
    let connect_timeout = duration("connect_timeout", raw.connect_timeout)?;
    if connect_timeout == Some(Duration::ZERO) {
        return Err(at("connect_timeout")("must be longer than 0".to_string()));
    }
    let snapshot_interval = duration("snapshot_interval", raw.snapshot_interval)?;
    if snapshot_interval.is_some_and(|d| d < Duration::from_secs(1)) {
        // Snapshot names carry the time to the second.
        return Err(at("snapshot_interval")("must be at least 1s".to_string()));
    }
    let http_listen = raw
        .http_listen
        .map(|v| listen_address(&v).map_err(at("http_listen")))
        .transpose()?;
    let mut pg_settings = BTreeMap::new();
    for (name, value) in raw.pg_settings.unwrap_or_default() {
        let key = format!("pg_settings.{name}");
        check_pg_setting_name(&name).map_err(at_key(section, &key))?;
        pg_settings.insert(
            name,
            pg_setting_value(value).map_err(at_key(section, &key))?,
        );
    }

    Ok(Settings {
        dataset,
        data_dir: path("data_dir", raw.data_dir)?,
        mountpoint: path("mountpoint", raw.mountpoint)?,
        pg_bin: path("pg_bin", raw.pg_bin)?,
        pg_os_user: word("pg_os_user", raw.pg_os_user)?,
        pg_port: port("pg_port", raw.pg_port)?,
        pg_user: word("pg_user", raw.pg_user)?,
        pg_database: word("pg_database", raw.pg_database)?,
        pg_passfile: home_path("pg_passfile", raw.pg_passfile)?,
        pg_log_file: path("pg_log_file", raw.pg_log_file)?,
        pg_settings,
        ssh_user: word("ssh_user", raw.ssh_user)?,
        ssh_port: port("ssh_port", raw.ssh_port)?,
        ssh_key: home_path("ssh_key", raw.ssh_key)?,
        known_hosts: home_path("known_hosts", raw.known_hosts)?,
        use_slots: raw.use_slots,
        slot_name: raw
            .slot_name
            .map(|v| slot_name(&v).map_err(at("slot_name")))
            .transpose()?,
        keep_common,
        streaming_timeout: duration("streaming_timeout", raw.streaming_timeout)?,
        lock_timeout: duration("lock_timeout", raw.lock_timeout)?,
        stop_timeout: duration("stop_timeout", raw.stop_timeout)?,
        connect_timeout,
        lock_file: path("lock_file", raw.lock_file)?,
        zfs_backend: raw
            .zfs_backend
            .map(|v| ZfsBackend::parse(&v).map_err(at("zfs_backend")))
            .transpose()?,
        backup_via: raw
            .backup_via
            .map(|v| BackupVia::parse(&v).map_err(at("backup_via")))
            .transpose()?,
        ssh_data_path: raw
            .ssh_data_path
            .map(|v| SshDataPath::parse(&v).map_err(at("ssh_data_path")))
            .transpose()?,
        ssh_compress: raw
            .ssh_compress
            .map(|v| SshCompress::parse(&v).map_err(at("ssh_compress")))
            .transpose()?,
        bwlimit: raw
            .bwlimit
            .map(|v| bytes_per_second(v).map_err(at("bwlimit")))
            .transpose()?,
        snapshot_interval,
        reseed_after: duration("reseed_after", raw.reseed_after)?,
        http_listen,
        promote_check_attempts: raw
            .promote_check_attempts
            .map(|v| match u32::try_from(v) {
                Ok(n) if (1..=100).contains(&n) => Ok(n),
                _ => Err(at("promote_check_attempts")(format!(
                    "{v} is not between 1 and 100"
                ))),
            })
            .transpose()?,
        promote_check_interval: duration("promote_check_interval", raw.promote_check_interval)?,
        max_lag_on_failover: byte_count("max_lag_on_failover", raw.max_lag_on_failover, section)?,
        promote_timeout: duration("promote_timeout", raw.promote_timeout)?,
        fence_mode: raw
            .fence_mode
            .map(|v| match v.as_str() {
                "stop" => Ok(FenceMode::Stop),
                "read-only" => Ok(FenceMode::ReadOnly),
                _ => Err(at("fence_mode")(format!(
                    "{v:?} must be \"stop\" or \"read-only\""
                ))),
            })
            .transpose()?,
        on_backup: raw
            .on_backup
            .map(|v| match v.as_str() {
                "fence" => Ok(OnBackup::Fence),
                "rejoin" => Ok(OnBackup::Rejoin),
                _ => Err(at("on_backup")(format!(
                    "{v:?} must be \"fence\" or \"rejoin\""
                ))),
            })
            .transpose()?,
        quarantine_dir: path("quarantine_dir", raw.quarantine_dir)?,
        switchover_max_lag: byte_count("switchover_max_lag", raw.switchover_max_lag, section)?,
        carp_move_command: raw
            .carp_move_command
            .map(|v| {
                if v.trim().is_empty() || v.contains(['\n', '\r', '\0']) {
                    Err(at("carp_move_command")(
                        "must be one non-empty line".to_string(),
                    ))
                } else {
                    Ok(v)
                }
            })
            .transpose()?,
        pgzfs_bin: path("pgzfs_bin", raw.pgzfs_bin)?,
    })
}

fn check_events(raw: Option<RawEvents>) -> std::result::Result<Events, String> {
    let Some(raw) = raw else {
        return Ok(Events::default());
    };
    if let Some(command) = &raw.command {
        if command.trim().is_empty() || command.contains(['\n', '\r', '\0']) {
            return Err("events.command: must be one non-empty line".to_string());
        }
    }
    let only = raw.only.unwrap_or_default();
    if let Some(unknown) = only.iter().find(|e| !EVENT_NAMES.contains(&e.as_str())) {
        return Err(format!(
            "events.only: unknown event {unknown:?}; known: {}",
            EVENT_NAMES.join(", ")
        ));
    }
    Ok(Events {
        command: raw.command,
        only,
    })
}

/// `bwlimit`: a size per second such as "50M", or a plain integer of bytes per second.
/// Integers are taken too because `bwlimit = 0` is the obvious way to write "no limit".
fn bytes_per_second(value: toml::Value) -> std::result::Result<u64, String> {
    let parsed = match value {
        toml::Value::String(text) => parse_size(&text),
        toml::Value::Integer(n) => {
            u64::try_from(n).map_err(|_| format!("{n} must not be negative"))
        }
        other => Err(format!("a {} is not a rate", other.type_str())),
    };
    parsed.map_err(|why| {
        format!("{why}; write bytes per second such as \"50M\" (50 MiB/s), or \"0\" for no limit")
    })
}

fn byte_count(
    key: &'static str,
    value: Option<i64>,
    section: &Section,
) -> std::result::Result<Option<u64>, String> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| at_key(section, key)(format!("{v} must not be negative")))
        })
        .transpose()
}

/// `[retention]` with the built-in defaults for the counts it does not mention.
fn check_retention(raw: Option<RawRetention>) -> std::result::Result<Retention, String> {
    let raw = raw.unwrap_or_default();
    let defaults = Retention::default();
    let count = |key: &str, value: Option<i64>, default: usize| match value {
        None => Ok(default),
        Some(v) => usize::try_from(v).map_err(|_| {
            format!("retention.{key}: {v} is not a number of snapshots to keep (0 or more)")
        }),
    };
    Ok(Retention {
        hourly: count("hourly", raw.hourly, defaults.hourly)?,
        daily: count("daily", raw.daily, defaults.daily)?,
        weekly: count("weekly", raw.weekly, defaults.weekly)?,
        monthly: count("monthly", raw.monthly, defaults.monthly)?,
        yearly: count("yearly", raw.yearly, defaults.yearly)?,
    })
}

// ---------------------------------------------------------------------------------------
// Merged and complete.

struct Resolved {
    cluster: String,
    log_file: PathBuf,
    nodes: Vec<Node>,
    witnesses: Vec<Witness>,
    isolation_timeout: Duration,
    two_node_failover: bool,
}

fn resolve(raw: RawConfig, home: Option<&Path>) -> std::result::Result<Resolved, String> {
    let cluster = match raw.cluster {
        None => return Err("cluster is not set; add e.g. cluster = \"pg\" at the top".to_string()),
        Some(cluster) => {
            let valid = !cluster.is_empty()
                && cluster
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "cluster: {cluster:?} may only contain letters, digits, '_' and '-'"
                ));
            }
            cluster
        }
    };
    let log_file = match raw.log_file {
        Some(value) => absolute_path(&value).map_err(|why| format!("log_file: {why}"))?,
        None => PathBuf::from(DEFAULT_LOG_FILE),
    };
    let isolation_timeout = match raw.isolation_timeout {
        Some(value) => {
            let d = parse_duration(&value).map_err(|why| format!("isolation_timeout: {why}"))?;
            if d < Duration::from_secs(2) {
                // The daemons look at each other once a second: less than two looks
                // would fence a primary for one lost answer.
                return Err(format!(
                    "isolation_timeout: {value:?} is too short; use at least 2s"
                ));
            }
            d
        }
        None => DEFAULT_ISOLATION_TIMEOUT,
    };

    let defaults_section = Section {
        label: "defaults".to_string(),
        node_name: None,
    };
    let defaults = check_settings(raw.defaults, &defaults_section, home)?;

    if raw.nodes.is_empty() {
        return Err(
            "no nodes are configured; add a [[nodes]] entry with name and host for every node"
                .to_string(),
        );
    }
    let mut nodes: Vec<Node> = Vec::with_capacity(raw.nodes.len());
    let mut witnesses: Vec<Witness> = Vec::new();
    for (index, raw_node) in raw.nodes.into_iter().enumerate() {
        let mut section = Section {
            label: format!("nodes[{}]", index + 1),
            node_name: None,
        };
        let (name, host, role, raw_settings) = raw_node.split();

        let name = name.ok_or_else(|| format!("{}: name is not set", section.whole()))?;
        node_name(&name).map_err(|why| format!("{}: {why}", section.key("name")))?;
        if nodes.iter().any(|earlier| earlier.name == name)
            || witnesses.iter().any(|earlier| earlier.name == name)
        {
            return Err(format!(
                "{}: node name {name:?} is used more than once",
                section.key("name")
            ));
        }
        section.node_name = Some(name.clone());
        let host = host.ok_or_else(|| format!("{}: host is not set", section.whole()))?;
        host_name(&host).map_err(|why| format!("{}: {why}", section.key("host")))?;

        let settings = check_settings(raw_settings, &section, home)?.over(&defaults);
        match role.as_deref() {
            None | Some("data") => {}
            Some("witness") => {
                // Data settings inherited from [defaults] are simply not used here.
                let http_listen = settings.http_listen.ok_or_else(|| {
                    format!(
                        "{}: a witness answers the other voters over HTTP; set http_listen",
                        section.whole()
                    )
                })?;
                witnesses.push(Witness {
                    lock_file: settings
                        .lock_file
                        .unwrap_or_else(|| PathBuf::from(format!("/var/run/pgzfs-{name}.lock"))),
                    connect_timeout: settings.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                    name,
                    host,
                    http_listen,
                });
                continue;
            }
            Some(other) => {
                return Err(format!(
                    "{}: {other:?} must be \"data\" (the default) or \"witness\"",
                    section.key("role")
                ))
            }
        }
        let node = complete_node(name, host, settings, home)
            .map_err(|why| format!("{}: {why}", section.whole()))?;
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err("only witnesses are configured; add the data nodes".to_string());
    }

    // Two standbys sharing one slot on the primary would each see the other's progress
    // as their own, and WAL either one still needs could be removed.
    let mut slots = HashSet::new();
    for node in nodes.iter().filter(|node| node.use_slots) {
        if !slots.insert(node.slot_name.as_str()) {
            return Err(format!(
                "node {:?}: slot_name {:?} is also used by another node; set slot_name for one of them",
                node.name, node.slot_name
            ));
        }
    }

    Ok(Resolved {
        cluster,
        log_file,
        nodes,
        witnesses,
        isolation_timeout,
        two_node_failover: raw.two_node_failover.unwrap_or(false),
    })
}

/// Fill in the built-in defaults and check what can only be checked once the node's
/// entry and `[defaults]` are combined.
fn complete_node(
    name: String,
    host: String,
    settings: Settings,
    home: Option<&Path>,
) -> std::result::Result<Node, String> {
    let missing =
        |key: &str| format!("{key} is not set; set it in [defaults] or in this [[nodes]] entry");
    let dataset = settings.dataset.ok_or_else(|| missing("dataset"))?;
    let data_dir = settings.data_dir.ok_or_else(|| missing("data_dir"))?;
    if let Some(mountpoint) = &settings.mountpoint {
        if !data_dir.starts_with(mountpoint) {
            return Err(format!(
                "data_dir {:?} is not inside mountpoint {:?}; the data directory must live on the \
                 replicated dataset",
                data_dir.display().to_string(),
                mountpoint.display().to_string()
            ));
        }
    }
    let default_home_path = |key: &str, default: &str| {
        expand_home(default, home).map_err(|why| {
            format!("{key} is not set and its default {default:?} cannot be used: {why}")
        })
    };
    let ssh_key = match settings.ssh_key {
        Some(path) => path,
        None => default_home_path("ssh_key", DEFAULT_SSH_KEY)?,
    };
    let known_hosts = match settings.known_hosts {
        Some(path) => path,
        None => default_home_path("known_hosts", DEFAULT_KNOWN_HOSTS)?,
    };

    Ok(Node {
        pg_log_file: settings
            .pg_log_file
            .unwrap_or_else(|| data_dir.join("postmaster.log")),
        slot_name: settings
            .slot_name
            .unwrap_or_else(|| slot_name_for_node(&name)),
        lock_file: settings
            .lock_file
            .unwrap_or_else(|| PathBuf::from(format!("/var/run/pgzfs-{name}.lock"))),
        zfs_backend: settings.zfs_backend.unwrap_or_default(),
        backup_via: settings.backup_via.unwrap_or_default(),
        ssh_data_path: settings.ssh_data_path.unwrap_or_default(),
        ssh_compress: settings.ssh_compress.unwrap_or_default(),
        bwlimit: settings.bwlimit.and_then(NonZeroU64::new),
        name,
        host,
        dataset,
        data_dir,
        mountpoint: settings.mountpoint,
        pg_bin: settings
            .pg_bin
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN)),
        pg_os_user: settings
            .pg_os_user
            .unwrap_or_else(|| DEFAULT_PG_OS_USER.to_string()),
        pg_port: settings.pg_port.unwrap_or(DEFAULT_PG_PORT),
        pg_user: settings
            .pg_user
            .unwrap_or_else(|| DEFAULT_PG_USER.to_string()),
        pg_database: settings
            .pg_database
            .unwrap_or_else(|| DEFAULT_PG_DATABASE.to_string()),
        pg_passfile: settings.pg_passfile,
        pg_settings: settings.pg_settings,
        ssh_user: settings
            .ssh_user
            .unwrap_or_else(|| DEFAULT_SSH_USER.to_string()),
        ssh_port: settings.ssh_port.unwrap_or(DEFAULT_SSH_PORT),
        ssh_key,
        known_hosts,
        use_slots: settings.use_slots.unwrap_or(true),
        keep_common: settings.keep_common.unwrap_or(DEFAULT_KEEP_COMMON),
        streaming_timeout: settings
            .streaming_timeout
            .unwrap_or(DEFAULT_STREAMING_TIMEOUT),
        lock_timeout: settings.lock_timeout.unwrap_or(DEFAULT_LOCK_TIMEOUT),
        stop_timeout: settings.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
        connect_timeout: settings.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        snapshot_interval: settings
            .snapshot_interval
            .unwrap_or(DEFAULT_SNAPSHOT_INTERVAL),
        reseed_after: settings.reseed_after.unwrap_or(DEFAULT_RESEED_AFTER),
        http_listen: settings.http_listen,
        promote_check_attempts: settings.promote_check_attempts.unwrap_or(3),
        promote_check_interval: settings
            .promote_check_interval
            .unwrap_or(Duration::from_secs(1)),
        // 1 MiB, like Patroni's maximum_lag_on_failover: losing more needs --force.
        max_lag_on_failover: settings.max_lag_on_failover.unwrap_or(1 << 20),
        promote_timeout: settings.promote_timeout.unwrap_or(Duration::from_secs(60)),
        on_backup: settings.on_backup.unwrap_or(OnBackup::Fence),
        fence_mode: settings.fence_mode.unwrap_or(FenceMode::Stop),
        quarantine_dir: settings
            .quarantine_dir
            .unwrap_or_else(|| PathBuf::from("/var/db/pgzfs/quarantine")),
        switchover_max_lag: settings.switchover_max_lag.unwrap_or(16 << 20),
        carp_move_command: settings.carp_move_command,
        pgzfs_bin: settings
            .pgzfs_bin
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/pgzfs")),
    })
}

// ---------------------------------------------------------------------------------------
// Single values. Each returns why a value is wrong; the caller adds which key it was.

/// Characters a path may contain: enough for any sane installation, nothing a shell
/// would expand or split on.
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-' | '+' | ',' | ':' | '=' | '@')
}

/// An absolute path without "." or ".." components, returned in normal form (no
/// doubled or trailing '/'), so that "is data_dir inside mountpoint" compares what the
/// file system would.
fn absolute_path(value: &str) -> std::result::Result<PathBuf, String> {
    if !value.starts_with('/') {
        return Err(format!(
            "{value:?} must be an absolute path (starting with '/')"
        ));
    }
    if let Some(bad) = value.chars().find(|&c| !is_path_char(c)) {
        return Err(format!(
            "{value:?} contains {bad:?}; paths may only contain letters, digits and / _ . - + , : = @"
        ));
    }
    let mut normal = PathBuf::new();
    for component in Path::new(value).components() {
        match component {
            Component::RootDir | Component::Normal(_) => normal.push(component),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "{value:?} must not contain \".\" or \"..\" components"
                ))
            }
        }
    }
    Ok(normal)
}

/// Like `absolute_path`, but "~/..." is taken relative to the home directory of the
/// user pgzfs runs as.
fn expand_home(value: &str, home: Option<&Path>) -> std::result::Result<PathBuf, String> {
    let below_home = if value == "~" {
        Some("")
    } else {
        value.strip_prefix("~/")
    };
    match below_home {
        Some(relative) => {
            let home =
                home.ok_or_else(|| format!("{value:?} starts with '~' but HOME is not set"))?;
            let expanded = home.join(relative);
            let expanded = expanded
                .to_str()
                .ok_or_else(|| format!("{value:?} expands to a path that is not valid UTF-8"))?;
            absolute_path(expanded).map_err(|why| format!("{value:?} expands to {why}"))
        }
        None if value.starts_with('~') => Err(format!(
            "{value:?}: only \"~/\" (the current user's home) is supported"
        )),
        None => absolute_path(value),
    }
}

/// A user or database name that may appear on a command line: letters, digits, '_',
/// '.', '-', not starting with '-'.
fn plain_word(value: &str) -> std::result::Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.starts_with('-') {
        return Err(format!(
            "{value:?} starts with '-', which would look like a command-line option"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(value.to_string())
}

fn port_number(value: i64) -> std::result::Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port >= 1 => Ok(port),
        _ => Err(format!("{value} is not a port number (1-65535)")),
    }
}

/// An IP address and port to listen on. Host names are refused: the address a name
/// resolves to can change under a running daemon, and a health endpoint that moves is
/// one the load balancer stops finding.
fn listen_address(value: &str) -> std::result::Result<SocketAddr, String> {
    let address: SocketAddr = value.parse().map_err(|_| {
        format!(
            "{value:?} is not an IP address and port such as \"127.0.0.1:8008\" or \"[::]:8008\""
        )
    })?;
    if address.port() == 0 {
        return Err(format!(
            "{value:?}: port 0 is not allowed; name the port to listen on"
        ));
    }
    Ok(address)
}

fn node_name(value: &str) -> std::result::Result<(), String> {
    // Node names appear on command lines (--node) and in lock file paths, like user names.
    plain_word(value).map(drop)
}

/// A host for ssh and libpq: a name, an IPv4 address, or an IPv6 address (with an
/// optional %zone). Never starting with '-', which ssh would read as an option.
fn host_name(value: &str) -> std::result::Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.starts_with('-') {
        return Err(format!(
            "{value:?} starts with '-', which ssh would read as an option"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '%')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; a host is a name or an IP address (letters, digits, '_', '.', '-', ':', '%')"
        ));
    }
    Ok(())
}

fn slot_name(value: &str) -> std::result::Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= MAX_SLOT_NAME_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{value:?} is not a replication slot name: 1 to {MAX_SLOT_NAME_LEN} characters, only a-z, 0-9 and '_'"
        ))
    }
}

/// The slot a node uses when none is configured: its name made acceptable to PostgreSQL.
fn slot_name_for_node(node: &str) -> String {
    node.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_SLOT_NAME_LEN)
        .collect()
}

fn check_pg_setting_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err("is not a PostgreSQL setting name (lower case letters, digits, '_' and '.', not starting with a digit)".to_string())
    }
}

/// A setting's value as PostgreSQL reads it. Control characters are refused: a newline
/// in a value written to postgresql.auto.conf would start a setting of its own.
fn pg_setting_value(value: toml::Value) -> std::result::Result<String, String> {
    match value {
        toml::Value::String(text) => {
            if text.chars().any(char::is_control) {
                Err(format!(
                    "{text:?} contains a control character (such as a newline)"
                ))
            } else {
                Ok(text)
            }
        }
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(if flag { "on" } else { "off" }.to_string()),
        toml::Value::Float(number) if number.is_finite() => Ok(number.to_string()),
        toml::Value::Float(number) => Err(format!("{number} is not a usable number")),
        other => Err(format!(
            "{} values are not allowed; use a string, an integer, a float or a boolean",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

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
    fn failover_settings_have_safe_defaults_and_can_be_overridden() {
        let text = format!("{}\n[events]\ncommand = \"/usr/local/libexec/hook %e %n\"\nonly = [\"promote\", \"fence\"]\n", minimal_with_node_lines("on_backup = \"rejoin\"\nmax_lag_on_failover = 0"));
        let config = Config::parse(&text, Path::new("/etc/pgzfs.toml")).unwrap();
        let node = &config.nodes[0];
        assert_eq!(node.on_backup, OnBackup::Rejoin);
        assert_eq!(node.max_lag_on_failover, 0);
        assert_eq!(node.promote_check_attempts, 3);
        assert_eq!(config.events.only, vec!["promote", "fence"]);
        let defaults =
            Config::parse(&minimal_with_node_lines(""), Path::new("/etc/pgzfs.toml")).unwrap();
        assert_eq!(
            defaults.nodes[0].on_backup,
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
        assert_eq!(db1.pg_port, 5432);
        assert_eq!(db2.pg_port, 5433);
        assert_eq!(db1.host, "10.0.0.1");
        assert_eq!(db2.host, "10.0.0.2");
        for node in [db1, db2] {
            assert_eq!(node.dataset.as_str(), "tank/pgdata");
            assert_eq!(node.data_dir, PathBuf::from("/var/db/postgres/data15"));
            assert_eq!(node.ssh_key, PathBuf::from("/home/zfssync/.ssh/id_ed25519"));
            assert_eq!(
                node.known_hosts,
                PathBuf::from("/home/zfssync/.ssh/known_hosts")
            );
            assert_eq!(node.ssh_user, "zfssync");
        }
    }

    #[test]
    fn unset_settings_get_the_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.log_file, PathBuf::from("/var/log/pgzfs.log"));
        let node = &config.nodes[0];
        assert_eq!(node.mountpoint, None);
        assert_eq!(node.pg_bin, PathBuf::from("/usr/local/bin"));
        assert_eq!(node.pg_os_user, "postgres");
        assert_eq!(node.pg_port, 5432);
        assert_eq!(node.pg_user, "replicator");
        assert_eq!(node.pg_database, "postgres");
        assert_eq!(node.pg_passfile, None);
        assert_eq!(
            node.pg_log_file,
            PathBuf::from("/var/db/postgres/data15/postmaster.log")
        );
        assert!(node.pg_settings.is_empty());
        assert_eq!(node.ssh_user, "zfssync");
        assert_eq!(node.ssh_port, 22);
        assert_eq!(node.ssh_key, PathBuf::from("/root/.ssh/id_ed25519"));
        assert_eq!(node.known_hosts, PathBuf::from("/root/.ssh/known_hosts"));
        assert!(node.use_slots);
        assert_eq!(node.slot_name, "db1");
        assert_eq!(node.keep_common, 3);
        assert_eq!(node.streaming_timeout, Duration::from_secs(120));
        assert_eq!(node.lock_timeout, Duration::from_secs(60));
        assert_eq!(node.stop_timeout, Duration::from_secs(60));
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
        assert_eq!(node.pg_bin, PathBuf::from("/usr/lib/postgresql/16/bin"));
        assert_eq!(node.pg_os_user, "pgsql");
        assert_eq!(node.pg_port, 6432);
        assert_eq!(node.pg_user, "repl");
        assert_eq!(node.pg_database, "template1");
        assert_eq!(node.pg_passfile, Some(PathBuf::from("/root/.pgpass-pgzfs")));
        assert_eq!(node.pg_log_file, PathBuf::from("/var/log/postgresql.log"));
        assert_eq!(node.pg_settings["listen_addresses"], "10.0.0.1");
        assert_eq!(node.ssh_user, "sync");
        assert_eq!(node.ssh_port, 2222);
        assert_eq!(node.ssh_key, PathBuf::from("/etc/pgzfs/key"));
        assert_eq!(node.known_hosts, PathBuf::from("/etc/pgzfs/known_hosts"));
        assert!(!node.use_slots);
        assert_eq!(node.slot_name, "standby_1");
        assert_eq!(node.keep_common, 5);
        assert_eq!(node.streaming_timeout, Duration::from_secs(300));
        assert_eq!(node.lock_timeout, Duration::from_secs(90));
        assert_eq!(node.stop_timeout, Duration::from_secs(120));
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
        assert!(refusal(&minimal_with_node_lines("connect_timeout = \"0\""))
            .contains("connect_timeout"));
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
        assert_eq!(config.node("DB-2").unwrap().slot_name, "db_2");
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
            refusal(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"var/db\""))
                .contains("absolute")
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
            parse(&MINIMAL.replace("\"/var/db/postgres/data15\"", "\"/var//db/postgres/\""))
                .unwrap();
        assert_eq!(
            normalised.nodes[0].data_dir,
            PathBuf::from("/var/db/postgres")
        );
    }

    #[test]
    fn tilde_paths_expand_to_the_home_of_the_user_running_pgzfs() {
        let config = parse(&minimal_with_node_lines("ssh_key = \"~/.ssh/pgzfs\"")).unwrap();
        assert_eq!(config.nodes[0].ssh_key, PathBuf::from("/root/.ssh/pgzfs"));
        assert!(
            refusal(&minimal_with_node_lines("ssh_key = \"~zfssync/.ssh/id\""))
                .contains("only \"~/\"")
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
            refusal(&MINIMAL.replace("cluster = \"pg\"", "cluster = \"pg ha\""))
                .contains("cluster")
        );
        assert!(
            refusal(&MINIMAL.replace("cluster = \"pg\"", "cluster = \"\"")).contains("cluster")
        );
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
        assert!(
            refusal(&SAMPLE.replace("name = \"db2\"\n", "")).contains("nodes[2]: name is not set")
        );
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
            let message =
                refusal(&SAMPLE.replace("host = \"10.0.0.1\"", &format!("host = \"{bad}\"")));
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
        assert!(
            refusal(&minimal_with_default_lines("ssh_port = -22")).contains("defaults.ssh_port")
        );
        assert!(refusal(&minimal_with_node_lines("keep_common = 0")).contains("keep_common"));
        assert!(refusal(&minimal_with_node_lines("keep_common = -1")).contains("keep_common"));
    }

    #[test]
    fn user_and_database_names_that_could_be_abused_are_refused() {
        assert!(
            refusal(&minimal_with_node_lines("pg_os_user = \"postgres;id\""))
                .contains("pg_os_user")
        );
        assert!(
            refusal(&minimal_with_node_lines("ssh_user = \"-oProxyCommand=x\""))
                .contains("ssh_user")
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
        let path =
            std::env::temp_dir().join(format!("pgzfs-config-test-{}.toml", std::process::id()));
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
        assert_eq!(node.snapshot_interval, Duration::from_secs(3600));
        assert_eq!(node.reseed_after, Duration::from_secs(300));
        assert_eq!(node.http_listen, None);
    }

    #[test]
    fn the_daemon_settings_can_be_given_in_defaults_and_per_node() {
        let text = minimal_with_default_lines(
            "snapshot_interval = \"15m\"\nreseed_after = \"0\"\nhttp_listen = \"[::]:8008\"",
        );
        let text = format!("{text}http_listen = \"127.0.0.1:8009\"\n");
        let node = &parse(&text).unwrap().nodes[0];
        assert_eq!(node.snapshot_interval, Duration::from_secs(900));
        assert_eq!(
            node.reseed_after,
            Duration::ZERO,
            "0: re-seed as soon as streaming breaks"
        );
        assert_eq!(node.http_listen, Some("127.0.0.1:8009".parse().unwrap()));
        let from_defaults =
            parse(&minimal_with_default_lines("http_listen = \"[::]:8008\"")).unwrap();
        assert_eq!(
            from_defaults.nodes[0].http_listen,
            Some("[::]:8008".parse().unwrap())
        );
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
            .all(|n| n.ssh_data_path == SshDataPath::OpenSsh));
        let text = SAMPLE.replace("[defaults]", "[defaults]\nssh_data_path = \"ssh2\"");
        let text = text.replace(
            "name = \"db2\"",
            "name = \"db2\"\nssh_data_path = \"openssh\"",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.node("db1").unwrap().ssh_data_path, SshDataPath::Ssh2);
        assert_eq!(
            config.node("db2").unwrap().ssh_data_path,
            SshDataPath::OpenSsh
        );
    }

    #[test]
    fn the_backup_is_taken_over_postgres_unless_a_node_asks_for_ssh() {
        let config = parse(SAMPLE).unwrap();
        assert!(config
            .nodes
            .iter()
            .all(|n| n.backup_via == BackupVia::Postgres));
        let text = SAMPLE.replace("name = \"db2\"", "name = \"db2\"\nbackup_via = \"ssh\"");
        let config = parse(&text).unwrap();
        assert_eq!(config.node("db1").unwrap().backup_via, BackupVia::Postgres);
        assert_eq!(config.node("db2").unwrap().backup_via, BackupVia::Ssh);
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
            .all(|n| n.ssh_compress == SshCompress::None));
        let text = SAMPLE.replace("[defaults]", "[defaults]\nssh_compress = \"zstd:3\"");
        let text = text.replace("name = \"db2\"", "name = \"db2\"\nssh_compress = \"none\"");
        let config = parse(&text).unwrap();
        let level = |n: &Node| match n.ssh_compress {
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
        assert!(config.nodes.iter().all(|n| n.bwlimit.is_none()));
        let text = SAMPLE.replace("[defaults]", "[defaults]\nbwlimit = \"50M\"");
        let config = parse(&text).unwrap();
        assert!(config
            .nodes
            .iter()
            .all(|n| n.bwlimit == NonZeroU64::new(50 << 20)));
        let text = text.replace("name = \"db2\"", "name = \"db2\"\nbwlimit = \"800K\"");
        let config = parse(&text).unwrap();
        assert_eq!(
            config.node("db1").unwrap().bwlimit,
            NonZeroU64::new(50 << 20)
        );
        assert_eq!(
            config.node("db2").unwrap().bwlimit,
            NonZeroU64::new(800 << 10)
        );
    }

    #[test]
    fn bwlimit_zero_on_a_node_lifts_the_limit_of_the_defaults() {
        for zero in ["\"0\"", "0"] {
            let text = minimal_with_default_lines("bwlimit = \"1G\"");
            let config = parse(&format!("{text}bwlimit = {zero}\n")).unwrap();
            assert_eq!(config.nodes[0].bwlimit, None, "{zero}");
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
            assert_eq!(config.nodes[0].bwlimit, NonZeroU64::new(bytes), "{written}");
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
}

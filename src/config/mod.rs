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

mod settings;
mod values;

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::events::Events;
use crate::retention::Retention;
pub use settings::{
    DaemonConfig, FailoverConfig, Node, PgConfig, ReseedConfig, SshConfig, NODE_KEYS,
};
use settings::{RawNode, RawSettings, Section, Settings};
use values::*;

pub const DEFAULT_CONFIG_PATH: &str = "/usr/local/etc/pgzfs.toml";
const DEFAULT_LOG_FILE: &str = "/var/log/pgzfs.log";

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
    /// `[retention]`: which scheduled snapshots the primary keeps.
    pub retention: Retention,
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
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| in_file(e.to_string().trim_end().to_string()))?;
        resolve(raw, path, home).map_err(in_file)
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
        self.pick_local_node(explicit, std::env::var("PGZFS_NODE").ok(), hostname())
    }

    fn pick_local_node(
        &self,
        explicit: Option<&str>,
        from_env: Option<String>,
        hostname: Option<String>,
    ) -> Result<&Node> {
        let not_found = |tried: String| {
            Error::usage(format!(
                "cannot tell which node this is: no --node given, PGZFS_NODE is not set, and {tried}; \
                 configured nodes in {}: {}. Pass --node NAME or set PGZFS_NODE.",
                self.path.display(),
                self.node_names()
            ))
        };
        match identity(explicit, from_env, hostname) {
            Identity::Named { name, from } => self.node(&name).map_err(|e| e.context(from)),
            Identity::Host(None) => Err(not_found("the hostname could not be read".to_string())),
            Identity::Host(Some(host)) => {
                by_hostname(&self.nodes, |n| &n.name, &host).ok_or_else(|| {
                    not_found(match host.split_once('.') {
                        Some((short, _)) => format!(
                            "neither the hostname {host:?} nor its short form {short:?} is a node"
                        ),
                        None => format!("the hostname {host:?} is not a node"),
                    })
                })
            }
        }
    }

    /// The witness this host is, if it is one: `--node`, else `$PGZFS_NODE`, else the
    /// hostname (full, then short), as for data nodes.
    pub fn local_witness(&self, explicit: Option<&str>) -> Option<&Witness> {
        self.pick_local_witness(explicit, std::env::var("PGZFS_NODE").ok(), hostname())
    }

    fn pick_local_witness(
        &self,
        explicit: Option<&str>,
        from_env: Option<String>,
        hostname: Option<String>,
    ) -> Option<&Witness> {
        match identity(explicit, from_env, hostname) {
            Identity::Named { name, .. } => self.witnesses.iter().find(|w| w.name == name),
            Identity::Host(host) => {
                host.and_then(|host| by_hostname(&self.witnesses, |w| &w.name, &host))
            }
        }
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
            .map(|n| voter(&n.name, &n.host, n.daemon.http_listen));
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

// ---------------------------------------------------------------------------------------
// The file as written: the top-level keys and tables. The per-node keys of `[defaults]`
// and `[[nodes]]` are declared in `settings.rs`.

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
    retention: Option<crate::retention::RawRetention>,
    events: Option<crate::events::RawEvents>,
}

// ---------------------------------------------------------------------------------------
// Merged and complete.

const DEFAULT_ISOLATION_TIMEOUT: Duration = Duration::from_secs(10);

fn resolve(raw: RawConfig, path: &Path, home: Option<&Path>) -> Result<Config, String> {
    let events = Events::from_config(raw.events)?;
    let retention = Retention::from_config(raw.retention)?;
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
            let d = crate::duration::parse_duration(&value)
                .map_err(|why| format!("isolation_timeout: {why}"))?;
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
    let defaults = Settings::check(raw.defaults, &defaults_section, home)?;

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

        let settings = Settings::check(raw_settings, &section, home)?.over(&defaults);
        match role.as_deref() {
            None | Some("data") => {}
            Some("witness") => {
                // Data settings inherited from [defaults] are simply not used here.
                witnesses.push(settings.witness(name, host, &section)?);
                continue;
            }
            Some(other) => {
                return Err(format!(
                    "{}: {other:?} must be \"data\" (the default) or \"witness\"",
                    section.key("role")
                ))
            }
        }
        let node = settings
            .complete(name, host, home)
            .and_then(|node| data_dir_on_the_dataset(&node).map(|()| node))
            .and_then(|node| quarantine_outside_the_dataset(&node).map(|()| node))
            .and_then(|node| tls_settings_fit_together(&node.pg).map(|()| node))
            .map_err(|why| format!("{}: {why}", section.whole()))?;
        nodes.push(node);
    }

    // Two standbys sharing one slot on the primary would each see the other's progress
    // as their own, and WAL either one still needs could be removed.
    let mut slots = HashSet::new();
    for node in nodes.iter().filter(|node| node.reseed.use_slots) {
        if !slots.insert(node.reseed.slot_name.as_str()) {
            return Err(format!(
                "node {:?}: slot_name {:?} is also used by another node; set slot_name for one of them",
                node.name, node.reseed.slot_name
            ));
        }
    }

    if nodes.is_empty() {
        return Err("only witnesses are configured; add the data nodes".to_string());
    }
    Ok(Config {
        path: path.to_path_buf(),
        events,
        retention,
        cluster,
        log_file,
        nodes,
        witnesses,
        isolation_timeout,
        two_node_failover: raw.two_node_failover.unwrap_or(false),
    })
}

/// The data directory must live on the replicated dataset, or a re-seed would copy
/// everything but the data.
fn data_dir_on_the_dataset(node: &Node) -> Result<(), String> {
    match &node.mountpoint {
        Some(mountpoint) if !node.data_dir.starts_with(mountpoint) => Err(format!(
            "data_dir {:?} is not inside mountpoint {:?}; the data directory must live on the \
             replicated dataset",
            node.data_dir.display().to_string(),
            mountpoint.display().to_string()
        )),
        _ => Ok(()),
    }
}

/// The rollback that follows keeping a former primary's writes would destroy a
/// quarantine inside the dataset, and the PostgreSQL user can write there.
fn quarantine_outside_the_dataset(node: &Node) -> Result<(), String> {
    for (key, inside) in [
        ("data_dir", Some(&node.data_dir)),
        ("mountpoint", node.mountpoint.as_ref()),
    ] {
        if let Some(inside) = inside.filter(|dir| node.failover.quarantine_dir.starts_with(dir)) {
            return Err(format!(
                "quarantine_dir {:?} is inside {key} {:?}; it must be outside the replicated dataset \
                 (a rollback would destroy what it keeps, and the PostgreSQL user can write there)",
                node.failover.quarantine_dir.display().to_string(),
                inside.display().to_string()
            ));
        }
    }
    Ok(())
}

/// A verifying sslmode needs a CA to verify against, and a client certificate its key.
fn tls_settings_fit_together(pg: &PgConfig) -> Result<(), String> {
    if pg.pg_sslmode.needs_root_cert() && pg.pg_sslrootcert.is_none() {
        return Err(format!(
            "pg_sslmode = {:?} checks the server's certificate against a CA: set pg_sslrootcert \
             to the CA certificate that signed the servers' certificates",
            pg.pg_sslmode.as_str()
        ));
    }
    match (&pg.pg_sslcert, &pg.pg_sslkey) {
        (Some(_), None) => {
            Err("pg_sslcert is set but pg_sslkey is not; a client certificate needs its key".into())
        }
        (None, Some(_)) => {
            Err("pg_sslkey is set but pg_sslcert is not; a key needs its client certificate".into())
        }
        _ => Ok(()),
    }
}

/// Who this host is, as the operator says (`--node`, else a non-empty `$PGZFS_NODE`) or
/// else as the host says (its hostname, None when it cannot be read).
enum Identity {
    Named { name: String, from: &'static str },
    Host(Option<String>),
}

fn identity(
    explicit: Option<&str>,
    from_env: Option<String>,
    hostname: Option<String>,
) -> Identity {
    match (explicit, from_env.filter(|name| !name.is_empty())) {
        (Some(name), _) => Identity::Named {
            name: name.to_string(),
            from: "--node",
        },
        (None, Some(name)) => Identity::Named {
            name,
            from: "PGZFS_NODE",
        },
        (None, None) => Identity::Host(hostname.filter(|name| !name.is_empty())),
    }
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
}

/// The entry named like this host: its full hostname first, then the part before the
/// first '.'.
fn by_hostname<'a, T>(entries: &'a [T], name: impl Fn(&T) -> &str, host: &str) -> Option<&'a T> {
    let short = host.split('.').next().unwrap_or(host);
    [host, short]
        .into_iter()
        .find_map(|wanted| entries.iter().find(|e| name(e) == wanted))
}

#[cfg(test)]
mod tests;

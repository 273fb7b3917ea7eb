//! The daemon's state file: what `pgzfs daemon` last saw and did on this node, kept for
//! `pgzfs status` and for the daemon's own next start.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Node;

/// What the daemon records for `pgzfs status` and for its own next start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonState {
    pub node: String,
    pub pid: u32,
    /// The node as the daemon saw it last: primary, streaming, not streaming, ...
    pub state: String,
    pub since: Option<String>,
    pub updated: Option<String>,
    /// The last event the daemon emitted, as the hook and pg_notify got it.
    pub last_event: Option<serde_json::Value>,
    /// Since this daemon started, like the metrics.
    pub reseeds_total: u64,
    pub reseed_failures_total: u64,
    /// Automatic re-seeds that failed since the last one that succeeded: while they fail,
    /// this standby's slot on the primary keeps all WAL since its last success.
    #[serde(default)]
    pub reseed_failures_in_a_row: u32,
    /// This node's view of the quorum (live in `/state`, as of the last write in the
    /// file).
    #[serde(default)]
    pub quorum: Option<crate::quorum::View>,
    pub last_reseed_seconds: Option<f64>,
    pub last_reseed_bytes: Option<u64>,
}

/// Next to the node's lock file: both are per-node runtime files, and the lock file's
/// directory is known to be writable for pgzfs.
pub fn state_file(node: &Node) -> PathBuf {
    node.lock_file
        .with_file_name(format!("pgzfs-{}.state.json", node.name))
}

/// The daemon's last record for `node`, if a daemon ever ran here. Read without
/// following a link, and only a regular file: `/state` serves it over HTTP.
pub fn read_state(node: &Node) -> Option<DaemonState> {
    let (dir, name) = crate::safe_dir::parent_of(&state_file(node), None).ok()?;
    let bytes = dir.read_trusted(&name).ok()??;
    serde_json::from_slice(&bytes).ok()
}

pub fn write_state(node: &Node, state: &DaemonState) {
    let path = state_file(node);
    let text = serde_json::to_string_pretty(state).expect("the state serializes");
    // A fresh file (O_EXCL, O_NOFOLLOW, mode 0600) renamed over the old one: a reader
    // never sees half a file, and a link planted at the name is replaced, not followed.
    let written = crate::safe_dir::parent_of(&path, Some(0o755))
        .and_then(|(dir, name)| dir.write(&name, (text + "\n").as_bytes(), 0o600, None));
    if let Err(e) = written {
        tracing::warn!("cannot write the daemon state {}: {e}", path.display());
    }
}

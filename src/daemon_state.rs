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
    pub last_reseed_seconds: Option<f64>,
    pub last_reseed_bytes: Option<u64>,
}

/// Next to the node's lock file: both are per-node runtime files, and the lock file's
/// directory is known to be writable for pgzfs.
pub fn state_file(node: &Node) -> PathBuf {
    node.lock_file
        .with_file_name(format!("pgzfs-{}.state.json", node.name))
}

/// The daemon's last record for `node`, if a daemon ever ran here.
pub fn read_state(node: &Node) -> Option<DaemonState> {
    let text = std::fs::read_to_string(state_file(node)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_state(node: &Node, state: &DaemonState) {
    let path = state_file(node);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state).expect("the state serializes");
    // Write and rename, so a reader never sees half a file.
    let written = std::fs::write(&tmp, text + "\n").and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!("cannot write the daemon state {}: {e}", path.display());
    }
}

//! `pgzfs status`: the whole cluster as seen from this node, in one table or one JSON
//! object. Exit 0 when healthy, 1 when degraded, so that a cron job or a monitoring check
//! can run it as it is.
//!
//! Every node is asked the same things in parallel, each on its own connections, so a
//! dead node costs one connect timeout, not one per question: its PostgreSQL (role,
//! version, timeline, WAL position; on the primary its standbys and slots), its ZFS
//! (snapshots and cluster epoch: here directly, elsewhere over SSH), and its daemon's
//! last event (here from the state file, elsewhere from its HTTP endpoint if it has
//! one).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde::Serialize;

use crate::cluster::pg_target;
use crate::config::{Config, Node};
use crate::context::{Handles, Invocation};
use crate::datasets::{ClusterDatasets, MemberRole};
use crate::error::Result;
use crate::failover::seam::RealPostgres;
use crate::failover::{local_role, Role};
use crate::pg::ctl::PgCtl;
use crate::pg::{Pg, ServerState, SlotInfo, StandbyConnection, WalReceiver};
use crate::retention::taken_at;
use crate::timestamp::utc_rfc3339;
use crate::zfs::{newest_common, prop, Snapshot, Zfs};

#[derive(Debug, Args)]
pub struct Status {
    /// Print the status as one JSON object on stdout (keys: docs/operations.md)
    #[arg(long)]
    pub json: bool,
}

/// What `pgzfs status --json` prints. The keys are a stable interface.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The node status ran on.
    pub checked_from: String,
    pub checked_at: String,
    /// No warning that degrades the cluster (exit code 0).
    pub healthy: bool,
    /// The one writable primary; null when there is none, or more than one.
    pub primary: Option<String>,
    pub nodes: Vec<NodeStatus>,
    /// The primary's replication slots.
    pub slots: Vec<SlotStatus>,
    pub warnings: Vec<Warning>,
    /// Each voter's view of the quorum, from its daemon's `/quorum` (the data nodes, then
    /// the witnesses).
    pub quorum: Vec<QuorumStatus>,
}

/// One voter as its daemon sees the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct QuorumStatus {
    pub name: String,
    /// Its daemon's view; null when it could not be asked.
    pub view: Option<crate::quorum::View>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub host: String,
    /// PostgreSQL or SSH answered.
    pub reachable: bool,
    /// "primary", "standby", "stopped" or "unknown".
    pub role: &'static str,
    /// A primary that accepts writes (not fenced read-only); null when not asked.
    pub writable: Option<bool>,
    pub pg_version: Option<String>,
    pub timeline: Option<u32>,
    /// Current WAL position (primary) or last replayed one (standby).
    pub lsn: Option<String>,
    /// Standby: bytes between the primary's position and this node's replay.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// Standby: its state in the primary's pg_stat_replication ("streaming",
    /// "catchup", ...), or "not connected".
    pub replication_state: Option<String>,
    /// Standby: its own WAL receiver status; null when none runs.
    pub wal_receiver: Option<String>,
    /// Standby: the newest snapshot it shares with the primary (same GUID).
    pub last_common_snapshot: Option<String>,
    pub last_common_snapshot_age_seconds: Option<u64>,
    /// Standby whose cluster spans several datasets: the newest snapshot each child
    /// ("wal") and tablespace ("tablespace:fast") shares with the primary's.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dataset_bases: BTreeMap<String, Option<String>>,
    pub snapshots: Option<usize>,
    /// The newest snapshot that passed `pgzfs verify` (proven to restore), and its age.
    pub last_verified_snapshot: Option<String>,
    pub last_verified_snapshot_age_seconds: Option<u64>,
    /// `pgzfs clone` instances of the node's dataset (each holds its origin snapshot).
    pub clones: Vec<crate::throwaway::CloneInfo>,
    /// `pgzfs:epoch` of the node's dataset; null when unset or unreadable.
    pub epoch: Option<u64>,
    /// The last event the node's daemon recorded; null without a daemon.
    pub last_event: Option<serde_json::Value>,
    /// What could not be asked, and why.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// The node the slot is on (the primary).
    pub node: String,
    pub name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<String>,
    pub retained_bytes: Option<u64>,
    pub wal_status: Option<String>,
    /// Inactive but holding WAL back: the primary's disk fills until it is used or
    /// dropped.
    pub retains_wal_inactive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// unreachable, stopped, not_streaming, no_primary, split_brain, epoch_mismatch,
    /// inactive_slot, incomplete_cut.
    pub code: &'static str,
    pub node: Option<String>,
    pub message: String,
    /// Whether this warning alone makes the cluster degraded (exit code 1).
    pub degraded: bool,
}

impl Status {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let status = cluster_status(&ctx.config, &ctx.local, SystemTime::now());
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&status).expect("the status serializes")
            );
        } else {
            print!("{}", text(&status));
        }
        Ok(if status.healthy { 0 } else { 1 })
    }
}

/// What one node told us, before it is compared with the others.
#[derive(Default)]
pub struct Probe {
    pub pg: Option<PgProbe>,
    pub pg_error: Option<String>,
    /// Local node only: whether a postmaster runs in the data directory.
    pub postmaster_running: Option<bool>,
    /// Local node only: `failover::local_role`'s answer.
    pub local_role: Option<Role>,
    pub snapshots: Option<Vec<Snapshot>>,
    /// The snapshots of the cluster's children and tablespaces, by `member_key`.
    pub members: Vec<(String, Vec<Snapshot>)>,
    /// The `member_key`s of children that are this node's own (`pgzfs:own_pg_wal`): not
    /// copies of the primary's, so not expected to share its cuts.
    pub own_members: Vec<String>,
    pub epoch: Option<u64>,
    pub zfs_error: Option<String>,
    pub last_event: Option<serde_json::Value>,
    /// From the node's daemon: automatic re-seeds that failed since its last success.
    pub reseed_failures_in_a_row: Option<u32>,
    /// `pgzfs clone` instances next to the node's dataset (empty when unknown).
    pub clones: Vec<crate::throwaway::CloneInfo>,
}

pub struct PgProbe {
    pub state: ServerState,
    /// Primary only.
    pub connections: Vec<StandbyConnection>,
    pub slots: Vec<SlotInfo>,
    /// Standby only.
    pub receiver: Option<WalReceiver>,
    pub replay_delay_seconds: Option<f64>,
}

fn probe_pg(node: &Node) -> Result<PgProbe> {
    let mut pg = Pg::connect(&pg_target(node))?;
    let state = pg.server_state()?;
    let mut probe = PgProbe {
        state,
        connections: Vec::new(),
        slots: Vec::new(),
        receiver: None,
        replay_delay_seconds: None,
    };
    if probe.state.in_recovery {
        probe.receiver = pg.wal_receiver()?;
        probe.replay_delay_seconds = pg.replay_delay_seconds()?;
    } else {
        probe.connections = pg.standby_connections()?;
        probe.slots = pg.replication_slots()?;
    }
    Ok(probe)
}

type Members = Vec<(String, Vec<Snapshot>)>;
type ZfsProbe = (
    Vec<Snapshot>,
    Members,
    Vec<String>,
    Option<u64>,
    Vec<crate::throwaway::CloneInfo>,
);

fn probe_zfs(zfs: &dyn Zfs, node: &Node) -> Result<ZfsProbe> {
    let snapshots = zfs.snapshots(&node.dataset)?;
    let epoch = zfs.get_number(node.dataset.as_str(), prop::EPOCH)?;
    let cluster = ClusterDatasets::discover(zfs, &node.dataset, &node.tablespaces)?;
    let mut members = Vec::new();
    let mut own_members = Vec::new();
    for member in cluster.others() {
        if zfs.exists(&member.dataset)? {
            if member.is_own_pg_wal(zfs)? {
                own_members.push(member_key(&member.role));
            }
            members.push((member_key(&member.role), zfs.snapshots(&member.dataset)?));
        }
    }
    // A node whose `serve` allows only its own dataset cannot list its siblings: the
    // clones are then left out, not reported as an error.
    let clones = crate::throwaway::list_clones(zfs, &node.dataset).unwrap_or_else(|e| {
        tracing::debug!("{}: cannot list clones: {e}", node.name);
        Vec::new()
    });
    Ok((snapshots, members, own_members, epoch, clones))
}

/// What names the same member on every node: a child's path below the dataset, a
/// tablespace's name.
fn member_key(role: &MemberRole) -> String {
    match role {
        MemberRole::Root => String::new(),
        MemberRole::Child { relative } => relative.clone(),
        MemberRole::Tablespace { name } => format!("tablespace:{name}"),
    }
}

fn probe(handles: &Handles, local: &Node, node: &Node) -> Probe {
    let mut probe = Probe::default();
    match probe_pg(node) {
        Ok(pg) => probe.pg = Some(pg),
        Err(e) => probe.pg_error = Some(e.to_string()),
    }
    let is_local = node.name == local.name;
    let zfs_result = if is_local {
        let role = PgCtl::for_node(node).and_then(|ctl| local_role(&RealPostgres, &ctl, node));
        probe.postmaster_running = role
            .as_ref()
            .ok()
            .map(|role| !matches!(role, Role::Stopped(_)));
        probe.local_role = role.ok();
        handles.local_zfs().and_then(|zfs| probe_zfs(&*zfs, node))
    } else {
        handles
            .remote_zfs(node)
            .and_then(|zfs| probe_zfs(&zfs, node))
    };
    match zfs_result {
        Ok((snapshots, members, own_members, epoch, clones)) => {
            probe.snapshots = Some(snapshots);
            probe.members = members;
            probe.own_members = own_members;
            probe.epoch = epoch;
            probe.clones = clones;
        }
        Err(e) => probe.zfs_error = Some(e.to_string()),
    }
    let daemon_state = if is_local {
        crate::daemon_state::read_state(node).and_then(|s| serde_json::to_value(s).ok())
    } else {
        remote_daemon_state(node)
    };
    probe.last_event = daemon_state
        .as_ref()
        .and_then(|state| state.get("last_event").cloned())
        .filter(|event| !event.is_null());
    probe.reseed_failures_in_a_row = daemon_state
        .as_ref()
        .and_then(|state| state.get("reseed_failures_in_a_row")?.as_u64())
        .and_then(|n| u32::try_from(n).ok());
    probe
}

/// Another node's daemon state, from its `/state` endpoint.
fn remote_daemon_state(node: &Node) -> Option<serde_json::Value> {
    let listen = node.daemon.http_listen?;
    // A daemon listening on every address is reached at the node's own.
    let host = if listen.ip().is_unspecified() {
        node.host.clone()
    } else {
        listen.ip().to_string()
    };
    let timeout = node.connect_timeout.min(Duration::from_secs(3));
    match crate::http::get(&host, listen.port(), "/state", timeout) {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).ok(),
        Ok((status, _)) => {
            tracing::debug!("{}: /state answered {status}", node.name);
            None
        }
        Err(e) => {
            tracing::debug!("{}: no daemon state: {e}", node.name);
            None
        }
    }
}

/// Ask every node, in parallel, and put the answers together.
pub fn cluster_status(config: &Config, local: &Node, now: SystemTime) -> ClusterStatus {
    let outside = &Handles::new(local);
    let probes: Vec<Probe> = std::thread::scope(|scope| {
        let threads: Vec<_> = config
            .nodes
            .iter()
            .map(|node| scope.spawn(move || probe(outside, local, node)))
            .collect();
        threads
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut status = assemble(config, local, &probes, now);
    status.quorum = crate::quorum::ask_all(&config.voters(), None)
        .into_iter()
        .map(|(name, answer)| match answer {
            Ok(view) => QuorumStatus {
                name,
                view: Some(view),
                error: None,
            },
            Err(why) => QuorumStatus {
                name,
                view: None,
                error: Some(why),
            },
        })
        .collect();
    status
}

/// Compare what the nodes said. A pure function of the probes, so that every verdict
/// (split brain, epoch mismatch, degraded) is tested without a cluster.
pub fn assemble(config: &Config, local: &Node, probes: &[Probe], now: SystemTime) -> ClusterStatus {
    let mut warnings = Vec::new();
    let writable: Vec<usize> = probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.pg.as_ref().is_some_and(|pg| pg.state.writable))
        .map(|(i, _)| i)
        .collect();
    let primary_index = match writable.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let primary_probe = primary_index.map(|i| &probes[i]);
    let mut nodes = Vec::new();
    for (node, probe) in config.nodes.iter().zip(probes) {
        let mut status = NodeStatus {
            name: node.name.clone(),
            host: node.host.clone(),
            reachable: probe.pg.is_some()
                || probe.snapshots.is_some()
                || probe.postmaster_running.is_some(),
            role: "unknown",
            writable: None,
            pg_version: None,
            timeline: None,
            lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            replication_state: None,
            wal_receiver: None,
            last_common_snapshot: None,
            last_common_snapshot_age_seconds: None,
            dataset_bases: BTreeMap::new(),
            snapshots: probe.snapshots.as_ref().map(Vec::len),
            last_verified_snapshot: None,
            last_verified_snapshot_age_seconds: None,
            clones: probe.clones.clone(),
            epoch: probe.epoch,
            last_event: probe.last_event.clone(),
            errors: probe
                .pg_error
                .iter()
                .chain(&probe.zfs_error)
                .cloned()
                .collect(),
        };
        if let Some((verified, taken)) = probe
            .snapshots
            .as_deref()
            .and_then(crate::verify::newest_verified)
        {
            status.last_verified_snapshot = Some(verified.name.snap().to_string());
            status.last_verified_snapshot_age_seconds =
                Some(now.duration_since(taken).unwrap_or_default().as_secs());
        }
        match &probe.pg {
            Some(pg) => {
                status.role = if pg.state.in_recovery {
                    "standby"
                } else {
                    "primary"
                };
                status.writable = Some(pg.state.writable);
                status.pg_version = Some(pg.state.version.clone());
                status.timeline = pg.state.timeline;
                status.lsn = pg.state.lsn.clone();
            }
            // The node answers (over SSH, or it is this one) but its PostgreSQL does not.
            None if probe.postmaster_running == Some(false) => status.role = "stopped",
            None if probe.postmaster_running.is_none() && probe.snapshots.is_some() => {
                status.role = "stopped"
            }
            None => {}
        }
        // This node: the one answer of failover::role (running but not answering is
        // "unknown", never "not a primary").
        if let Some(role) = &probe.local_role {
            status.role = role.name();
        }
        if let Some(pg) = probe.pg.as_ref().filter(|pg| pg.state.in_recovery) {
            status.wal_receiver = pg.receiver.as_ref().and_then(|r| r.status.clone());
            let connection = primary_probe.and_then(|p| p.pg.as_ref()).and_then(|p| {
                p.connections
                    .iter()
                    .find(|c| c.application_name == node.name)
            });
            status.replication_state = Some(
                connection
                    .map(|c| c.state.clone())
                    .unwrap_or_else(|| "not connected".to_string()),
            );
            status.lag_bytes = connection
                .and_then(|c| c.lag_bytes)
                .map(|b| b.max(0) as u64);
            status.lag_seconds = if status.lag_bytes == Some(0) {
                Some(0.0)
            } else {
                pg.replay_delay_seconds
            };
            if status.replication_state.as_deref() != Some("streaming") {
                warnings.push(Warning {
                    code: "not_streaming",
                    node: Some(node.name.clone()),
                    message: format!(
                        "{} is a standby but not streaming from the primary ({}; WAL receiver: {})",
                        node.name,
                        status.replication_state.as_deref().unwrap_or("?"),
                        status.wal_receiver.as_deref().unwrap_or("none")
                    ),
                    degraded: true,
                });
            }
            if let (Some(mine), Some(theirs)) = (
                probe.snapshots.as_deref(),
                primary_probe.and_then(|p| p.snapshots.as_deref()),
            ) {
                if let Some(common) = newest_common(theirs, mine) {
                    status.last_common_snapshot = Some(common.name.snap().to_string());
                    status.last_common_snapshot_age_seconds = taken_at(common.name.snap())
                        .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
                }
            }
            // Every child and tablespace of the primary's cluster must share that base
            // too, or the next incremental re-seed refuses.
            if let Some(primary) = primary_probe {
                for (key, theirs) in &primary.members {
                    if probe.own_members.contains(key) {
                        // Its pg_wal is its own (send_pg_wal = false): not in the cuts.
                        continue;
                    }
                    let base = probe
                        .members
                        .iter()
                        .find(|(k, _)| k == key)
                        .and_then(|(_, mine)| newest_common(theirs, mine))
                        .map(|c| c.name.snap().to_string());
                    if base != status.last_common_snapshot {
                        warnings.push(Warning {
                            code: "incomplete_cut",
                            node: Some(node.name.clone()),
                            message: format!(
                                "{}'s {key} shares {} with the primary, its dataset {}: the next \
                                 incremental re-seed refuses; re-seed with --full",
                                node.name,
                                base.as_deref().unwrap_or("no snapshot"),
                                status.last_common_snapshot.as_deref().unwrap_or("none")
                            ),
                            degraded: true,
                        });
                    }
                    status.dataset_bases.insert(key.clone(), base);
                }
            }
        }
        if let Some(failed) = probe
            .reseed_failures_in_a_row
            .filter(|failed| *failed >= node.daemon.reseed_failures_warn)
        {
            warnings.push(Warning {
                code: "reseed_failing",
                node: Some(node.name.clone()),
                message: format!(
                    "{}'s automatic re-seed failed {failed} times in a row: its replication slot on the primary \
                     keeps every WAL segment since its last success. Fix the cause (see its log), or cap the \
                     slot with max_slot_wal_keep_size",
                    node.name
                ),
                degraded: true,
            });
        }
        match status.role {
            "stopped" => warnings.push(Warning {
                code: "stopped",
                node: Some(node.name.clone()),
                message: format!("PostgreSQL on {} is not running", node.name),
                degraded: true,
            }),
            "unknown" => warnings.push(Warning {
                code: "unreachable",
                node: Some(node.name.clone()),
                message: format!(
                    "{} cannot be reached: {}",
                    node.name,
                    status.errors.join("; ")
                ),
                degraded: true,
            }),
            _ => {}
        }
        nodes.push(status);
    }
    let mut slots = Vec::new();
    if let (Some(i), Some(pg)) = (primary_index, primary_probe.and_then(|p| p.pg.as_ref())) {
        for slot in &pg.slots {
            let retains = !slot.active && slot.restart_lsn.is_some();
            let retained_bytes = slot.retained_bytes.map(|b| b.max(0) as u64);
            if retains {
                warnings.push(Warning {
                    code: "inactive_slot",
                    node: Some(config.nodes[i].name.clone()),
                    message: format!(
                        "replication slot {} on {} is not in use and retains {} of WAL",
                        slot.name,
                        config.nodes[i].name,
                        crate::progress::human_bytes(retained_bytes.unwrap_or(0))
                    ),
                    degraded: false,
                });
            }
            slots.push(SlotStatus {
                node: config.nodes[i].name.clone(),
                name: slot.name.clone(),
                slot_type: slot.slot_type.clone(),
                active: slot.active,
                restart_lsn: slot.restart_lsn.clone(),
                retained_bytes,
                wal_status: slot.wal_status.clone(),
                retains_wal_inactive: retains,
            });
        }
    }
    let writable_names: Vec<&str> = writable
        .iter()
        .map(|&i| config.nodes[i].name.as_str())
        .collect();
    match writable_names.len() {
        0 => warnings.push(Warning {
            code: "no_primary",
            node: None,
            message: "no node is a writable primary".to_string(),
            degraded: true,
        }),
        1 => {}
        _ => warnings.push(Warning {
            code: "split_brain",
            node: None,
            message: format!(
                "split brain: {} all accept writes",
                writable_names.join(", ")
            ),
            degraded: true,
        }),
    }
    // A promotion raises the epoch; a writable node below the highest epoch lost a
    // failover and still takes writes that the cluster will not keep.
    let highest = probes.iter().filter_map(|p| p.epoch).max();
    if let Some(highest) = highest {
        for &i in &writable {
            let epoch = probes[i].epoch.unwrap_or(0);
            if epoch < highest {
                let newer: Vec<&str> = config
                    .nodes
                    .iter()
                    .zip(probes)
                    .filter(|(_, p)| p.epoch == Some(highest))
                    .map(|(n, _)| n.name.as_str())
                    .collect();
                warnings.push(Warning {
                    code: "epoch_mismatch",
                    node: Some(config.nodes[i].name.clone()),
                    message: format!(
                        "{} accepts writes at epoch {epoch}, but {} is at epoch {highest}: it lost a failover and must be fenced",
                        config.nodes[i].name,
                        newer.join(", ")
                    ),
                    degraded: true,
                });
            }
        }
    }
    ClusterStatus {
        cluster: config.cluster.clone(),
        checked_from: local.name.clone(),
        checked_at: utc_rfc3339(now),
        healthy: !warnings.iter().any(|w| w.degraded),
        primary: primary_index.map(|i| config.nodes[i].name.clone()),
        nodes,
        slots,
        warnings,
        quorum: Vec::new(),
    }
}

fn or_dash<T: ToString>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// The human table.
pub fn text(status: &ClusterStatus) -> String {
    let header = [
        "NODE",
        "ROLE",
        "PG",
        "TL",
        "LSN",
        "LAG",
        "REPLICATION",
        "COMMON SNAPSHOT",
        "SNAPS",
        "VERIFIED",
        "EPOCH",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for node in &status.nodes {
        let role = match (node.role, node.writable, node.reachable) {
            ("primary", Some(false), _) => "primary (read-only)".to_string(),
            ("unknown", _, false) => "unreachable".to_string(),
            (role, _, _) => role.to_string(),
        };
        let lag = match (node.lag_bytes, node.lag_seconds) {
            (None, None) => "-".to_string(),
            (bytes, seconds) => format!(
                "{} / {}",
                bytes.map_or_else(|| "?".into(), crate::progress::human_bytes),
                seconds.map_or_else(|| "?".into(), |s| format!("{s:.0}s"))
            ),
        };
        let replication = match (&node.replication_state, &node.wal_receiver) {
            (None, _) => "-".to_string(),
            (Some(state), receiver) if Some(state) == receiver.as_ref() => state.clone(),
            (Some(state), receiver) => format!(
                "{state} (receiver {})",
                receiver.as_deref().unwrap_or("none")
            ),
        };
        let common = match (
            &node.last_common_snapshot,
            node.last_common_snapshot_age_seconds,
        ) {
            (Some(name), Some(age)) => format!(
                "{name} ({} ago)",
                crate::duration::format_duration(Duration::from_secs(age))
            ),
            (Some(name), None) => name.clone(),
            (None, _) => "-".to_string(),
        };
        let version = node
            .pg_version
            .as_deref()
            .map(|v| v.split_whitespace().next().unwrap_or(v).to_string());
        rows.push(vec![
            node.name.clone(),
            role,
            or_dash(&version),
            or_dash(&node.timeline),
            or_dash(&node.lsn),
            lag,
            replication,
            common,
            or_dash(&node.snapshots),
            match node.last_verified_snapshot_age_seconds {
                Some(age) => format!(
                    "{} old",
                    crate::duration::format_duration(Duration::from_secs(age))
                ),
                None => "never".to_string(),
            },
            or_dash(&node.epoch),
        ]);
    }
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = format!(
        "cluster {} (checked from {} at {}): {}\n",
        status.cluster,
        status.checked_from,
        status.checked_at,
        if status.healthy {
            "healthy"
        } else {
            "DEGRADED"
        }
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for node in &status.nodes {
        for clone in &node.clones {
            out.push_str(&format!(
                "clone {} on {}: of {} on localhost:{} ({}); drop with: pgzfs clone --drop {}\n",
                clone.name,
                node.name,
                clone.origin.as_deref().unwrap_or("?"),
                clone.port.as_deref().unwrap_or("?"),
                clone.dataset,
                clone.name
            ));
        }
    }
    if !status.quorum.is_empty() {
        out.push_str("quorum (each voter's view):\n");
        for voter in &status.quorum {
            match &voter.view {
                Some(view) => out.push_str(&format!(
                    "  {}{}: reaches {} of {} voters ({}){}{}\n",
                    voter.name,
                    if view.role == "witness" {
                        " (witness)"
                    } else {
                        ""
                    },
                    view.reachable_voters.len(),
                    view.voters,
                    view.reachable_voters.join(", "),
                    if view.has_majority {
                        ""
                    } else {
                        ", NO MAJORITY"
                    },
                    if view.fenced_isolated {
                        ", FENCED: isolated"
                    } else {
                        ""
                    }
                )),
                None => out.push_str(&format!(
                    "  {}: no answer ({})\n",
                    voter.name,
                    voter.error.as_deref().unwrap_or("?")
                )),
            }
        }
    }
    if !status.slots.is_empty() {
        out.push_str("slots:\n");
        for slot in &status.slots {
            out.push_str(&format!(
                "  {} on {}: {}, restart {}, retains {}{}\n",
                slot.name,
                slot.node,
                if slot.active { "active" } else { "inactive" },
                slot.restart_lsn.as_deref().unwrap_or("-"),
                slot.retained_bytes
                    .map_or_else(|| "-".into(), crate::progress::human_bytes),
                slot.wal_status
                    .as_deref()
                    .map(|s| format!(" (wal_status {s})"))
                    .unwrap_or_default()
            ));
        }
    }
    let events: BTreeMap<&str, String> = status
        .nodes
        .iter()
        .filter_map(|n| {
            let event = n.last_event.as_ref()?;
            let field = |key: &str| event.get(key).and_then(|v| v.as_str()).unwrap_or("?");
            Some((
                n.name.as_str(),
                format!(
                    "{} {} {}",
                    field("timestamp"),
                    field("event"),
                    field("details")
                ),
            ))
        })
        .collect();
    if !events.is_empty() {
        out.push_str("last events:\n");
        for (node, event) in events {
            out.push_str(&format!("  {node}: {event}\n"));
        }
    }
    for warning in &status.warnings {
        out.push_str(&format!(
            "{}: {}\n",
            if warning.degraded { "WARNING" } else { "note" },
            warning.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::fake::snap;
    use std::path::Path;

    const CONFIG: &str = "cluster = \"pg\"\n[defaults]\ndataset = \"tank/pg\"\ndata_dir = \"/pg/data\"\nssh_key = \"/k\"\nknown_hosts = \"/kh\"\n\
        [[nodes]]\nname = \"db1\"\nhost = \"10.0.0.1\"\n[[nodes]]\nname = \"db2\"\nhost = \"10.0.0.2\"\n[[nodes]]\nname = \"db3\"\nhost = \"10.0.0.3\"\n";

    fn config() -> Config {
        Config::parse(CONFIG, Path::new("/etc/pgzfs.toml")).unwrap()
    }

    fn at(stamp: &str) -> SystemTime {
        crate::timestamp::parse_utc_compact(stamp).unwrap()
    }

    fn primary(writable: bool, epoch: Option<u64>) -> Probe {
        Probe {
            pg: Some(PgProbe {
                state: ServerState {
                    in_recovery: false,
                    writable,
                    version: "15.18 (Debian 15.18-0+deb12u1)".into(),
                    timeline: Some(2),
                    lsn: Some("0/5000060".into()),
                },
                connections: vec![StandbyConnection {
                    application_name: "db2".into(),
                    state: "streaming".into(),
                    lag_bytes: Some(0),
                    replay_lag_seconds: None,
                }],
                slots: vec![
                    SlotInfo {
                        name: "db2".into(),
                        slot_type: "physical".into(),
                        active: true,
                        restart_lsn: Some("0/5000060".into()),
                        retained_bytes: Some(0),
                        wal_status: Some("reserved".into()),
                    },
                    SlotInfo {
                        name: "db3".into(),
                        slot_type: "physical".into(),
                        active: false,
                        restart_lsn: Some("0/3000000".into()),
                        retained_bytes: Some(33_554_528),
                        wal_status: Some("reserved".into()),
                    },
                ],
                receiver: None,
                replay_delay_seconds: None,
            }),
            snapshots: Some(vec![
                snap("tank/pg@pgzfs-20261122T000000Z", 11, 1),
                snap("tank/pg@pgzfs-20261122T010000Z", 12, 2),
            ]),
            epoch,
            ..Probe::default()
        }
    }

    fn standby(receiver: &str) -> Probe {
        Probe {
            pg: Some(PgProbe {
                state: ServerState {
                    in_recovery: true,
                    writable: false,
                    version: "15.18".into(),
                    timeline: Some(2),
                    lsn: Some("0/5000060".into()),
                },
                connections: vec![],
                slots: vec![],
                receiver: Some(WalReceiver {
                    pid: 42,
                    status: Some(receiver.into()),
                }),
                replay_delay_seconds: Some(0.0),
            }),
            snapshots: Some(vec![snap("tank/pg@pgzfs-20261122T000000Z", 11, 7)]),
            epoch: Some(1),
            ..Probe::default()
        }
    }

    fn stopped_remote() -> Probe {
        Probe {
            pg_error: Some("cannot connect to PostgreSQL on db3: connection refused".into()),
            snapshots: Some(vec![]),
            ..Probe::default()
        }
    }

    fn codes(status: &ClusterStatus) -> Vec<&'static str> {
        status.warnings.iter().map(|w| w.code).collect()
    }

    #[test]
    fn a_standby_whose_wal_dataset_lacks_the_common_base_is_reported_per_dataset() {
        let config = config();
        let mut db1 = primary(true, Some(1));
        db1.members = vec![
            (
                "wal".into(),
                vec![snap("tank/pg/wal@pgzfs-20261122T000000Z", 21, 1)],
            ),
            (
                "tablespace:fast".into(),
                vec![snap("tank/ts@pgzfs-20261122T000000Z", 31, 1)],
            ),
        ];
        let mut db2 = standby("streaming");
        db2.members = vec![
            (
                "wal".into(),
                vec![snap("tank/pg/wal@pgzfs-20261122T000000Z", 21, 7)],
            ),
            // The tablespace's copy is another snapshot by the same name (GUID differs).
            (
                "tablespace:fast".into(),
                vec![snap("tank/ts2@pgzfs-20261122T000000Z", 99, 7)],
            ),
        ];
        let probes = [db1, db2, stopped_remote()];
        let status = assemble(&config, &config.nodes[0], &probes, at("20261122T020000Z"));
        let db2 = &status.nodes[1];
        assert_eq!(
            db2.dataset_bases.get("wal"),
            Some(&Some("pgzfs-20261122T000000Z".to_string()))
        );
        assert_eq!(db2.dataset_bases.get("tablespace:fast"), Some(&None));
        assert!(
            codes(&status).contains(&"incomplete_cut"),
            "{:?}",
            codes(&status)
        );
        let warning = status
            .warnings
            .iter()
            .find(|w| w.code == "incomplete_cut")
            .unwrap();
        assert!(
            warning.message.contains("tablespace:fast"),
            "{}",
            warning.message
        );
        assert!(warning.degraded);
    }

    #[test]
    fn a_primary_with_a_streaming_standby_is_healthy_and_the_common_base_is_found_by_guid() {
        let config = config();
        let probes = [
            primary(true, Some(1)),
            standby("streaming"),
            stopped_remote(),
        ];
        let status = assemble(&config, &config.nodes[0], &probes, at("20261122T020000Z"));
        assert_eq!(status.primary.as_deref(), Some("db1"));
        let db2 = &status.nodes[1];
        assert_eq!(db2.role, "standby");
        assert_eq!(db2.replication_state.as_deref(), Some("streaming"));
        assert_eq!((db2.lag_bytes, db2.lag_seconds), (Some(0), Some(0.0)));
        assert_eq!(
            db2.last_common_snapshot.as_deref(),
            Some("pgzfs-20261122T000000Z")
        );
        assert_eq!(db2.last_common_snapshot_age_seconds, Some(7200));
        // db3 answers over SSH but its PostgreSQL does not: stopped, and degraded.
        assert_eq!(status.nodes[2].role, "stopped");
        assert!(status.nodes[2].reachable);
        assert_eq!(codes(&status), ["stopped", "inactive_slot"]);
        assert!(!status.healthy);
        let slot = &status.slots[1];
        assert!(slot.retains_wal_inactive && !status.slots[0].retains_wal_inactive);
        assert_eq!(slot.retained_bytes, Some(33_554_528));
    }

    #[test]
    fn a_standby_whose_reseeds_keep_failing_is_flagged_for_the_wal_its_slot_keeps() {
        let config = config();
        let failing = |in_a_row| Probe {
            reseed_failures_in_a_row: Some(in_a_row),
            ..standby("stopping")
        };
        let now = at("20261122T020000Z");
        // reseed_failures_warn defaults to 3.
        let twice = assemble(
            &config,
            &config.nodes[1],
            &[primary(true, Some(1)), failing(2), stopped_remote()],
            now,
        );
        assert!(
            !codes(&twice).contains(&"reseed_failing"),
            "{:?}",
            codes(&twice)
        );
        let thrice = assemble(
            &config,
            &config.nodes[1],
            &[primary(true, Some(1)), failing(3), stopped_remote()],
            now,
        );
        let warning = thrice
            .warnings
            .iter()
            .find(|w| w.code == "reseed_failing")
            .expect("flagged after three failures in a row");
        assert_eq!(warning.node.as_deref(), Some("db2"));
        assert!(
            warning.message.contains("max_slot_wal_keep_size"),
            "{}",
            warning.message
        );
        assert!(warning.degraded && !thrice.healthy);
    }

    #[test]
    fn an_operators_clone_is_listed_under_its_node_with_how_to_drop_it() {
        let config = config();
        let db1 = Probe {
            clones: vec![crate::throwaway::CloneInfo {
                name: "orders".into(),
                dataset: "tank/pg-pgzfs-clone-orders".into(),
                origin: Some("tank/pg@pgzfs-20261122T000000Z".into()),
                port: Some("6543".into()),
            }],
            ..primary(true, Some(1))
        };
        let probes = [db1, standby("streaming"), stopped_remote()];
        let status = assemble(&config, &config.nodes[0], &probes, at("20261122T020000Z"));
        assert_eq!(status.nodes[0].clones.len(), 1);
        assert!(status.nodes[1].clones.is_empty());
        let shown = text(&status);
        assert!(
            shown.contains(
                "clone orders on db1: of tank/pg@pgzfs-20261122T000000Z on localhost:6543 \
                 (tank/pg-pgzfs-clone-orders); drop with: pgzfs clone --drop orders"
            ),
            "{shown}"
        );
    }

    #[test]
    fn the_newest_snapshot_proven_to_restore_is_shown_with_its_age() {
        let config = config();
        let mut db1 = primary(true, Some(1));
        if let Some(snapshots) = db1.snapshots.as_mut() {
            snapshots[0].props.insert(
                crate::zfs::prop::VERIFIED.into(),
                "2026-11-22T00:10:00Z/pass".into(),
            );
            snapshots[1].props.insert(
                crate::zfs::prop::VERIFIED.into(),
                "2026-11-22T01:10:00Z/fail".into(),
            );
        }
        let probes = [db1, standby("streaming"), stopped_remote()];
        let status = assemble(&config, &config.nodes[0], &probes, at("20261122T020000Z"));
        let db1 = &status.nodes[0];
        assert_eq!(
            db1.last_verified_snapshot.as_deref(),
            Some("pgzfs-20261122T000000Z"),
            "the failed newer one does not count"
        );
        assert_eq!(db1.last_verified_snapshot_age_seconds, Some(7200));
        assert_eq!(status.nodes[1].last_verified_snapshot, None);
        let table = text(&status);
        assert!(table.contains("VERIFIED"), "{table}");
        assert!(table.contains("2h old"), "{table}");
        assert!(table.contains("never"), "{table}");
    }

    #[test]
    fn an_inactive_slot_is_flagged_but_does_not_degrade_on_its_own() {
        let config = config();
        let probes = [
            primary(true, Some(1)),
            standby("streaming"),
            standby("streaming"),
        ];
        let status = assemble(&config, &config.nodes[0], &probes, at("20261122T020000Z"));
        // db3 is not in the primary's pg_stat_replication: not streaming.
        assert_eq!(codes(&status), ["not_streaming", "inactive_slot"]);
        let only_slot = [primary(true, Some(1)), standby("streaming")];
        let two = Config::parse(
            &CONFIG.replace("[[nodes]]\nname = \"db3\"\nhost = \"10.0.0.3\"\n", ""),
            Path::new("/etc/pgzfs.toml"),
        )
        .unwrap();
        let status = assemble(&two, &two.nodes[0], &only_slot, at("20261122T020000Z"));
        assert_eq!(codes(&status), ["inactive_slot"]);
        assert!(status.healthy, "{:?}", status.warnings);
    }

    #[test]
    fn two_writable_primaries_are_split_brain_and_the_older_epoch_is_named() {
        let config = config();
        let probes = [
            primary(true, Some(1)),
            primary(true, Some(2)),
            standby("streaming"),
        ];
        let status = assemble(&config, &config.nodes[2], &probes, at("20261122T020000Z"));
        assert_eq!(status.primary, None);
        assert!(codes(&status).contains(&"split_brain"));
        let mismatch: Vec<&Warning> = status
            .warnings
            .iter()
            .filter(|w| w.code == "epoch_mismatch")
            .collect();
        assert_eq!(mismatch.len(), 1);
        assert_eq!(mismatch[0].node.as_deref(), Some("db1"));
        assert!(
            mismatch[0].message.contains("db2 is at epoch 2"),
            "{}",
            mismatch[0].message
        );
        assert!(!status.healthy);
    }

    #[test]
    fn a_fenced_primary_is_no_primary_and_an_unreachable_node_is_unknown() {
        let config = config();
        let probes = [
            primary(false, Some(1)),
            standby("streaming"),
            Probe::default(),
        ];
        let status = assemble(&config, &config.nodes[1], &probes, at("20261122T020000Z"));
        assert_eq!(status.nodes[0].writable, Some(false));
        assert_eq!(status.nodes[2].role, "unknown");
        assert!(!status.nodes[2].reachable);
        let got = codes(&status);
        for code in ["not_streaming", "unreachable", "no_primary"] {
            assert!(got.contains(&code), "{got:?}");
        }
        let table = text(&status);
        assert!(table.contains("primary (read-only)"), "{table}");
        assert!(table.contains("unreachable"), "{table}");
        assert!(table.contains("DEGRADED"), "{table}");
    }

    #[test]
    fn the_local_node_with_no_postmaster_is_stopped_even_without_zfs() {
        let config = config();
        let local_down = Probe {
            pg_error: Some("refused".into()),
            postmaster_running: Some(false),
            ..Probe::default()
        };
        let probes = [primary(true, None), local_down, stopped_remote()];
        let status = assemble(&config, &config.nodes[1], &probes, at("20261122T020000Z"));
        assert_eq!(status.nodes[1].role, "stopped");
    }
}

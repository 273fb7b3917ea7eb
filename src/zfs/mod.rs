//! ZFS behind one narrow interface. The real implementation drives zfs(8) on this node or
//! over SSH (`cli`); tests of the planning logic use plain values instead.

pub mod cli;
pub mod names;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::Result;
use crate::transfer::{Sink, Source};
use names::{DatasetName, HoldTag, SnapshotName};

/// The user properties pgzfs records on every snapshot it takes, so that any snapshot
/// explains itself: which WAL position it is consistent from and to, on which timeline, of
/// which cluster.
pub mod prop {
    /// The backup's start LSN: replay must begin here (redo point of the backup checkpoint).
    pub const LSN: &str = "pgzfs:lsn";
    /// The backup's stop LSN: the copy is consistent once replay has passed it.
    pub const STOP_LSN: &str = "pgzfs:stop_lsn";
    pub const TIMELINE: &str = "pgzfs:timeline";
    pub const SYSTEM_ID: &str = "pgzfs:sysid";
    pub const PG_MAJOR: &str = "pgzfs:pg_major";
    /// backup_label as returned by pg_backup_stop, hex-encoded (it spans several lines).
    pub const BACKUP_LABEL: &str = "pgzfs:backup_label";
    pub const TABLESPACE_MAP: &str = "pgzfs:tablespace_map";
    /// The node that took the snapshot.
    pub const SOURCE_NODE: &str = "pgzfs:node";

    pub const ALL: [&str; 8] = [
        LSN,
        STOP_LSN,
        TIMELINE,
        SYSTEM_ID,
        PG_MAJOR,
        BACKUP_LABEL,
        TABLESPACE_MAP,
        SOURCE_NODE,
    ];
}

/// One snapshot as `zfs get` describes it. The GUID identifies the same snapshot on both
/// sides of a replication; names can lie (renamed, or recreated with the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: SnapshotName,
    pub guid: u64,
    pub createtxg: u64,
    /// Number of holds (`zfs holds` is broken on zfs-fuse; this property is not).
    pub userrefs: u64,
    /// pgzfs user properties that are set.
    pub props: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props.get(name).map(String::as_str)
    }

    pub fn is_held(&self) -> bool {
        self.userrefs > 0
    }
}

/// Optional abilities of the ZFS at hand, detected at run time: zfs-fuse (pool v23) lacks
/// what modern OpenZFS has, and we use each feature only where it exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// `written@snap` tells the size of an incremental stream without sending it.
    pub written_property: bool,
}

pub trait Zfs {
    /// "this node" or "root@db1:22", for messages.
    fn location(&self) -> String;
    fn features(&self) -> Result<Features>;
    fn exists(&self, dataset: &DatasetName) -> Result<bool>;
    /// The dataset's own snapshots, oldest first (by createtxg).
    fn snapshots(&self, dataset: &DatasetName) -> Result<Vec<Snapshot>>;
    /// Datasets below this one.
    fn children(&self, dataset: &DatasetName) -> Result<Vec<DatasetName>>;
    /// Take a snapshot of the dataset and, atomically with it, of all its descendants.
    fn snapshot_recursive(&self, snapshot: &SnapshotName) -> Result<()>;
    fn set_snapshot_props(&self, snapshot: &SnapshotName, props: &[(&str, String)]) -> Result<()>;
    /// A numeric property in parsable form; None when unset or unsupported.
    fn get_number(&self, object: &str, property: &str) -> Result<Option<u64>>;
    fn send(&self, snapshot: &SnapshotName, base: Option<&SnapshotName>)
        -> Result<Box<dyn Source>>;
    /// Receive without mounting. `rollback` (-F) discards changes made on the receiving
    /// side since the incremental's base; it is never used for a full stream, so a full
    /// receive can not overwrite an existing dataset.
    fn receive(&self, dataset: &DatasetName, rollback: bool) -> Result<Box<dyn Sink>>;
    fn hold(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<()>;
    /// Ok(false) when the snapshot carried no such hold.
    fn release(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<bool>;
    fn destroy_snapshot(&self, snapshot: &SnapshotName) -> Result<()>;
    fn rename(&self, from: &DatasetName, to: &DatasetName) -> Result<()>;
    fn is_mounted(&self, dataset: &DatasetName) -> Result<bool>;
    fn mount(&self, dataset: &DatasetName) -> Result<()>;
    fn unmount(&self, dataset: &DatasetName) -> Result<()>;
    /// None for `none`, `legacy` or unset.
    fn mountpoint(&self, dataset: &DatasetName) -> Result<Option<PathBuf>>;
    fn set_mountpoint(&self, dataset: &DatasetName, path: &std::path::Path) -> Result<()>;
    /// Keep a renamed-aside dataset from mounting over the live one at boot.
    fn set_canmount_noauto(&self, dataset: &DatasetName) -> Result<()>;
}

/// The newest snapshot present on both sides, matched by GUID.
pub fn newest_common<'a>(source: &'a [Snapshot], target: &[Snapshot]) -> Option<&'a Snapshot> {
    let on_target: std::collections::HashSet<u64> = target.iter().map(|s| s.guid).collect();
    source
        .iter()
        .filter(|s| on_target.contains(&s.guid))
        .max_by_key(|s| s.createtxg)
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    pub fn snap(name: &str, guid: u64, txg: u64) -> Snapshot {
        Snapshot {
            name: SnapshotName::parse(name).unwrap(),
            guid,
            createtxg: txg,
            userrefs: 0,
            props: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::snap;
    use super::*;

    #[test]
    fn the_common_base_is_found_by_guid_not_by_name() {
        let primary = vec![
            snap("tank/pg@pgzfs-1", 11, 10),
            snap("tank/pg@pgzfs-2", 22, 20),
            snap("tank/pg@pgzfs-3", 33, 30),
        ];
        // The standby has pgzfs-2 under another name, and a *different* pgzfs-3.
        let standby = vec![
            snap("tank/pg@pgzfs-1", 11, 5),
            snap("tank/pg@renamed", 22, 6),
            snap("tank/pg@pgzfs-3", 99, 7),
        ];
        assert_eq!(
            newest_common(&primary, &standby).unwrap().name.to_string(),
            "tank/pg@pgzfs-2"
        );
    }

    #[test]
    fn no_shared_guid_means_no_common_base() {
        let primary = vec![snap("tank/pg@pgzfs-1", 11, 10)];
        let standby = vec![snap("tank/pg@pgzfs-1", 12, 10)];
        assert!(newest_common(&primary, &standby).is_none());
    }
}

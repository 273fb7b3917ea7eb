//! ZFS behind one narrow interface. The real implementation drives zfs(8) on this node or
//! over SSH (`cli`); tests of the planning logic use plain values instead.

pub mod cli;
pub mod features;
#[cfg(feature = "libzfs-core")]
pub mod lzc;
pub mod lzc_common;
pub mod names;
pub mod replace;
pub mod survey;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::transfer::{Sink, Source};
use features::{ResumeToken, ResumeTokenInfo, SendOptions};
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
    /// How the cut was taken: `atomic` for a crash-consistent snapshot without a backup
    /// session (no backup_label; the standby replays from the last checkpoint). Unset:
    /// a backup-safe cut.
    pub const CUT: &str = "pgzfs:cut";

    /// On a dataset: the cluster epoch, raised by every promotion. A node whose epoch is
    /// older than another's lost a failover and must not act as primary again.
    pub const EPOCH: &str = "pgzfs:epoch";
    /// On a snapshot: when `pgzfs verify` last checked it and what it found, as
    /// `2026-12-01T19:30:00Z/pass` (or `/fail`).
    pub const VERIFIED: &str = "pgzfs:verified";
    /// On a throwaway clone: what it is for (`verify` or `clone:NAME`), so that a
    /// leftover of a killed run is recognisable.
    pub const THROWAWAY: &str = "pgzfs:throwaway";

    /// On a dataset: the WAL position at which this node was promoted (the fork point a
    /// former primary's writes diverge from) and the timeline it promoted from.
    pub const FORK_LSN: &str = "pgzfs:fork_lsn";
    pub const FORK_TIMELINE: &str = "pgzfs:fork_timeline";

    /// On a dataset kept aside (renamed, `canmount=noauto`): its `canmount` before, put
    /// back if it gets its name back after a failed re-seed, so that it mounts at boot
    /// as it did.
    pub const CANMOUNT_BEFORE: &str = "pgzfs:canmount_before";

    /// On a standby's pg_wal child dataset: `yes` when the dataset is this node's own,
    /// not a copy of the primary's (`send_pg_wal = false`: a re-seed empties it and the
    /// standby streams its WAL from the primary's slot). Its snapshots are not parts of
    /// the primary's cuts, so a cut that lacks it here is not incomplete.
    pub const OWN_PG_WAL: &str = "pgzfs:own_pg_wal";

    pub const ALL: [&str; 10] = [
        LSN,
        STOP_LSN,
        TIMELINE,
        SYSTEM_ID,
        PG_MAJOR,
        BACKUP_LABEL,
        TABLESPACE_MAP,
        SOURCE_NODE,
        VERIFIED,
        CUT,
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
    /// `zfs receive -s` and the `receive_resume_token` property: an interrupted receive
    /// keeps what arrived, and the sender can continue from there.
    pub resumable_receive: bool,
    /// `zfs send -t <token>`.
    pub send_resume: bool,
    /// `zfs send -L` (records over 128 KiB kept whole).
    pub send_large_blocks: bool,
    /// `zfs send -e` (embedded blocks kept embedded).
    pub send_embedded: bool,
    /// `zfs send -c` (blocks sent compressed as stored).
    pub send_compressed: bool,
    /// `zfs send -w` (raw: encrypted blocks sent as stored).
    pub send_raw: bool,
    /// The pool can hold bookmarks (`feature@bookmarks` enabled or active).
    pub bookmarks: bool,
    /// `zfs snapshot a@s b@s` takes several snapshots in one atomic call. Came with the
    /// same (libzfs_core era) ZFS as the `written` property; zfs-fuse has neither.
    pub multi_snapshot: bool,
    /// `zfs set a=1 b=2 name` sets several properties in one call (illumos 5745, 2015).
    pub multi_property_set: bool,
}

/// The values of the `canmount` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanMount {
    On,
    Off,
    NoAuto,
}

impl CanMount {
    pub fn parse(text: &str) -> Option<CanMount> {
        match text {
            "on" => Some(CanMount::On),
            "off" => Some(CanMount::Off),
            "noauto" => Some(CanMount::NoAuto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CanMount::On => "on",
            CanMount::Off => "off",
            CanMount::NoAuto => "noauto",
        }
    }
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
    /// The dataset, its children, where each is mounted and each one's snapshots; None
    /// if the dataset does not exist. One question where the backend can ask it so.
    fn survey(&self, dataset: &DatasetName) -> Result<Option<survey::Survey>> {
        if !self.exists(dataset)? {
            return Ok(None);
        }
        let children = self.children(dataset)?;
        let mut mountpoints = BTreeMap::new();
        let mut snapshots = BTreeMap::new();
        for member in std::iter::once(dataset).chain(children.iter()) {
            mountpoints.insert(member.clone(), self.mountpoint(member)?);
            snapshots.insert(member.clone(), self.snapshots(member)?);
        }
        let mut records = BTreeMap::new();
        for name in survey::DATASET_RECORDS {
            if let Some(value) = self.get_text(dataset.as_str(), name)? {
                records.insert(name.to_string(), value);
            }
        }
        Ok(Some(survey::Survey::from_parts(
            children,
            mountpoints,
            snapshots,
            records,
        )))
    }
    /// Take a snapshot of the dataset and, atomically with it, of all its descendants,
    /// with `props` (user properties) set in the same call: one round trip instead of one
    /// per property, and no moment at which the snapshot exists without them.
    fn snapshot_recursive(&self, snapshot: &SnapshotName, props: &[(&str, String)]) -> Result<()>;
    fn set_snapshot_props(&self, snapshot: &SnapshotName, props: &[(&str, String)]) -> Result<()>;
    /// A property's value as text; None when unset ("-") or when the object is missing.
    fn get_text(&self, object: &str, property: &str) -> Result<Option<String>>;
    /// A numeric property in parsable form; None when unset or unsupported.
    fn get_number(&self, object: &str, property: &str) -> Result<Option<u64>>;
    fn send(&self, snapshot: &SnapshotName, base: Option<&SnapshotName>)
        -> Result<Box<dyn Source>>;
    /// Receive without mounting. `rollback` (-F) discards changes made on the receiving
    /// side since the incremental's base; it is never used for a full stream, so a full
    /// receive can not overwrite an existing dataset.
    fn receive(&self, dataset: &DatasetName, rollback: bool) -> Result<Box<dyn Sink>>;
    fn hold(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<()>;
    /// [`Zfs::hold`] of each snapshot, in order (one already held with `tag` counts as
    /// held); Ok only when every one is held. A zfs that takes several snapshots per call
    /// does it in one round trip; otherwise the first failure stops the rest.
    fn hold_each(&self, tag: &HoldTag, snapshots: &[SnapshotName]) -> Result<()> {
        hold_one_by_one(self, tag, snapshots)
    }
    /// Ok(false) when the snapshot carried no such hold.
    fn release(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<bool>;
    /// [`Zfs::release`] of each snapshot, in order: whether each carried the hold. A zfs
    /// that takes several snapshots per call does it in one (one round trip to a source
    /// instead of one per snapshot). Every snapshot is tried, as zfs(8) does with several;
    /// the first failure is the error.
    fn release_each(&self, tag: &HoldTag, snapshots: &[SnapshotName]) -> Result<Vec<bool>> {
        release_one_by_one(self, tag, snapshots)
    }
    /// The tags of the holds on a snapshot; None when this ZFS cannot list them
    /// (`zfs holds` is broken on zfs-fuse), and callers go by `userrefs` alone.
    fn holds(&self, _snapshot: &SnapshotName) -> Result<Option<Vec<HoldTag>>> {
        Ok(None)
    }
    fn destroy_snapshot(&self, snapshot: &SnapshotName) -> Result<()>;
    /// `zfs rollback`: the dataset back to its newest snapshot `snapshot` (never `-r`:
    /// a newer snapshot makes it fail rather than be destroyed). Unmount first on
    /// zfs-fuse, whose page cache would otherwise show the old files.
    fn rollback(&self, snapshot: &SnapshotName) -> Result<()> {
        let _ = snapshot;
        Err(unsupported(self, "rollback"))
    }
    /// `zfs clone -o mountpoint=PATH -o NAME=VALUE...`: a writable dataset sharing the
    /// snapshot's blocks, with the user properties `props` set in the same call (so the
    /// clone never exists unmarked). The snapshot cannot be destroyed while it exists.
    fn clone_snapshot(
        &self,
        snapshot: &SnapshotName,
        clone: &DatasetName,
        mountpoint: &std::path::Path,
        props: &[(&str, String)],
    ) -> Result<()>;
    /// `zfs create`: a new file system mounted at `mountpoint`, with user properties.
    fn create_mounted_at(
        &self,
        dataset: &DatasetName,
        mountpoint: &std::path::Path,
        props: &[(&str, String)],
    ) -> Result<()>;
    /// `zfs destroy -r`: a dataset with its descendants and snapshots. Only for datasets
    /// pgzfs created itself (throwaway clones); callers check the name first.
    fn destroy_dataset_recursive(&self, dataset: &DatasetName) -> Result<()>;
    fn rename(&self, from: &DatasetName, to: &DatasetName) -> Result<()>;
    fn is_mounted(&self, dataset: &DatasetName) -> Result<bool>;
    fn mount(&self, dataset: &DatasetName) -> Result<()>;
    fn unmount(&self, dataset: &DatasetName) -> Result<()>;
    /// None for `none`, `legacy` or unset.
    fn mountpoint(&self, dataset: &DatasetName) -> Result<Option<PathBuf>>;
    fn set_mountpoint(&self, dataset: &DatasetName, path: &std::path::Path) -> Result<()>;
    /// `zfs set canmount=...`: `noauto` keeps a renamed-aside dataset from mounting over
    /// the live one at boot; the value it had is put back with its name.
    fn set_canmount(&self, dataset: &DatasetName, value: CanMount) -> Result<()>;
    /// Set pgzfs user properties on the dataset itself (the cluster epoch, the fork point).
    fn set_dataset_props(&self, dataset: &DatasetName, props: &[(&str, String)]) -> Result<()>;

    // Optional abilities (see `features`). The defaults describe a ZFS without them, so
    // a backend only implements what it can do, and callers check `Features` first.

    /// [`Zfs::features`] plus what depends on the pool holding `dataset` (resumable
    /// receive, bookmarks). `dataset` itself need not exist.
    fn features_for(&self, _dataset: &DatasetName) -> Result<Features> {
        self.features()
    }
    /// The permissions delegated on the dataset, as `zfs allow DATASET` shows them (for
    /// `check --setup`); an error when this zfs cannot show them.
    fn delegations(&self, _dataset: &DatasetName) -> Result<String> {
        Err(Error::failed(format!(
            "{} cannot show delegated permissions",
            self.location()
        )))
    }
    /// Whether the dataset is encrypted (then a raw send keeps it so).
    fn is_encrypted(&self, _dataset: &DatasetName) -> Result<bool> {
        Ok(false)
    }
    /// `send` with the flags chosen by [`SendOptions::choose`].
    fn send_with(
        &self,
        snapshot: &SnapshotName,
        base: Option<&SnapshotName>,
        options: &SendOptions,
    ) -> Result<Box<dyn Source>> {
        if options.is_plain() {
            self.send(snapshot, base)
        } else {
            Err(unsupported(self, "zfs send -L/-e/-c/-w"))
        }
    }
    /// `receive`, keeping a partial stream resumable (`zfs receive -s`).
    fn receive_resumable(&self, dataset: &DatasetName, rollback: bool) -> Result<Box<dyn Sink>> {
        let _ = (dataset, rollback);
        Err(unsupported(self, "zfs receive -s"))
    }
    /// The token a partial resumable receive left on `dataset`, if any.
    fn resume_token(&self, _dataset: &DatasetName) -> Result<Option<ResumeToken>> {
        Ok(None)
    }
    /// What a token continues, decoded by this node's zfs (`zfs send -nv -t`).
    fn describe_resume_token(&self, _token: &ResumeToken) -> Result<ResumeTokenInfo> {
        Err(unsupported(self, "zfs send -nv -t"))
    }
    /// Discard a partial resumable receive (`zfs receive -A`).
    fn abort_resumable(&self, _dataset: &DatasetName) -> Result<()> {
        Err(unsupported(self, "zfs receive -A"))
    }
    /// Continue a stream from a token (`zfs send -t`). Validate the token first
    /// ([`crate::replicate::resume`]): it was written by the receiving side.
    /// The stream flags come from the token itself (it records what the first attempt
    /// used), so there are no options here.
    fn send_resume(&self, _token: &ResumeToken) -> Result<Box<dyn Source>> {
        Err(unsupported(self, "zfs send -t"))
    }
    /// Bookmark a snapshot under its own name (`DATASET#SNAP`), so an incremental chain
    /// survives the snapshot's destruction on the sender.
    fn bookmark(&self, _snapshot: &SnapshotName) -> Result<()> {
        Err(unsupported(self, "zfs bookmark"))
    }
    /// Several snapshots, each with its descendants, in ONE atomic call
    /// (`zfs snapshot -r a@s b@s`), where [`Features::multi_snapshot`] says the ZFS can.
    fn snapshot_recursive_many(
        &self,
        snapshots: &[SnapshotName],
        props: &[(&str, String)],
    ) -> Result<()> {
        match snapshots {
            [one] => self.snapshot_recursive(one, props),
            _ => Err(unsupported(self, "zfs snapshot with several names")),
        }
    }
    /// Set the native properties of [`TUNING_PROPERTIES`] on a dataset (a received copy
    /// gets the source's recordsize, compression, logbias, ...).
    fn set_tuning_props(&self, _dataset: &DatasetName, _props: &[(&str, String)]) -> Result<()> {
        Err(unsupported(self, "zfs set of native properties"))
    }
}

/// The dataset properties a copy takes over from its source: they tune how PostgreSQL's
/// files are stored (records sized for 8 kB pages, or large for WAL; compression;
/// logbias=throughput for WAL), and a former standby that becomes primary should write
/// as the primary did. A plain `zfs send` does not carry them.
pub const TUNING_PROPERTIES: &[&str] = &[
    "recordsize",
    "compression",
    "logbias",
    "atime",
    "primarycache",
    "xattr",
];

fn unsupported<Z: Zfs + ?Sized>(zfs: &Z, what: &str) -> crate::error::Error {
    crate::error::Error::failed(format!(
        "{what} is not supported by the ZFS on {}",
        zfs.location()
    ))
}

/// Which backend drives this node's ZFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Cli,
    Lzc,
}

/// Apply `zfs_backend`: `auto` takes libzfs_core when it is compiled in and /dev/zfs
/// opens (zfs-fuse has no /dev/zfs), zfs(8) otherwise; `lzc` fails rather than quietly
/// falling back, since whoever set it wants to know.
pub fn choose_backend(
    configured: ZfsBackend,
    compiled_in: bool,
    dev_zfs_opens: impl FnOnce() -> bool,
) -> Result<BackendChoice> {
    match configured {
        ZfsBackend::Cli => Ok(BackendChoice::Cli),
        ZfsBackend::Auto => Ok(if compiled_in && dev_zfs_opens() {
            BackendChoice::Lzc
        } else {
            BackendChoice::Cli
        }),
        ZfsBackend::Lzc => {
            if !compiled_in {
                Err(crate::error::Error::usage(
                    "zfs_backend = \"lzc\", but this pgzfs was built without libzfs_core \
                     (cargo build --features libzfs-core); use \"auto\" or \"cli\"",
                ))
            } else if !dev_zfs_opens() {
                Err(crate::error::Error::failed(
                    "zfs_backend = \"lzc\", but /dev/zfs cannot be opened: no kernel ZFS here, or not allowed to use it",
                ))
            } else {
                Ok(BackendChoice::Lzc)
            }
        }
    }
}

/// The ZFS backend for operations on this node, as `zfs_backend` of `node` asks.
pub fn local_backend(node: &crate::config::Node) -> Result<Box<dyn Zfs>> {
    #[cfg(feature = "libzfs-core")]
    let (compiled_in, probe) = (true, lzc::dev_zfs_opens);
    #[cfg(not(feature = "libzfs-core"))]
    let (compiled_in, probe) = (false, || false);
    let choice = choose_backend(node.zfs_backend, compiled_in, probe)?;
    tracing::debug!(
        "ZFS backend on this node: {choice:?} (zfs_backend = {:?})",
        node.zfs_backend
    );
    match choice {
        BackendChoice::Cli => Ok(Box::new(cli::ZfsCli::new(crate::exec::Local))),
        #[cfg(feature = "libzfs-core")]
        BackendChoice::Lzc => Ok(Box::new(lzc::LzcZfs::open()?)),
        #[cfg(not(feature = "libzfs-core"))]
        BackendChoice::Lzc => {
            unreachable!("choose_backend never picks lzc when it is not compiled in")
        }
    }
}

/// The newest snapshot present on both sides, matched by GUID.
pub fn newest_common<'a>(source: &'a [Snapshot], target: &[Snapshot]) -> Option<&'a Snapshot> {
    let on_target: std::collections::HashSet<u64> = target.iter().map(|s| s.guid).collect();
    source
        .iter()
        .filter(|s| on_target.contains(&s.guid))
        .max_by_key(|s| s.createtxg)
}

/// [`Zfs::hold_each`] as one `hold` per snapshot, in order, up to the first failure.
pub fn hold_one_by_one<Z: Zfs + ?Sized>(
    zfs: &Z,
    tag: &HoldTag,
    snapshots: &[SnapshotName],
) -> Result<()> {
    snapshots.iter().try_for_each(|s| zfs.hold(tag, s))
}

/// [`Zfs::release_each`] as one `release` per snapshot: each tried, the first failure
/// returned after all.
pub fn release_one_by_one<Z: Zfs + ?Sized>(
    zfs: &Z,
    tag: &HoldTag,
    snapshots: &[SnapshotName],
) -> Result<Vec<bool>> {
    let outcomes: Vec<Result<bool>> = snapshots.iter().map(|s| zfs.release(tag, s)).collect();
    outcomes.into_iter().collect()
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
    pub(crate) fn parse(value: &str) -> Result<ZfsBackend, String> {
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
    fn auto_takes_libzfs_core_only_when_compiled_in_and_dev_zfs_opens() {
        use ZfsBackend::*;
        let pick = |configured, compiled, dev| choose_backend(configured, compiled, || dev);
        assert_eq!(pick(Auto, true, true).unwrap(), BackendChoice::Lzc);
        assert_eq!(pick(Auto, true, false).unwrap(), BackendChoice::Cli);
        assert_eq!(pick(Auto, false, true).unwrap(), BackendChoice::Cli);
        assert_eq!(pick(Cli, true, true).unwrap(), BackendChoice::Cli);
        assert_eq!(pick(Lzc, true, true).unwrap(), BackendChoice::Lzc);
    }

    #[test]
    fn asking_for_libzfs_core_where_it_cannot_work_is_an_error_not_a_fallback() {
        use ZfsBackend::Lzc;
        let err = choose_backend(Lzc, false, || true).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message().contains("--features libzfs-core"),
            "{}",
            err.message()
        );
        let err = choose_backend(Lzc, true, || false).unwrap_err();
        assert!(err.message().contains("/dev/zfs"), "{}", err.message());
        // /dev/zfs is not even probed when the answer cannot depend on it.
        choose_backend(ZfsBackend::Cli, true, || panic!("probed")).unwrap();
    }

    #[test]
    fn no_shared_guid_means_no_common_base() {
        let primary = vec![snap("tank/pg@pgzfs-1", 11, 10)];
        let standby = vec![snap("tank/pg@pgzfs-1", 12, 10)];
        assert!(newest_common(&primary, &standby).is_none());
    }
}

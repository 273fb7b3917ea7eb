//! After a re-seed: hold the new common base on both sides, release this standby's
//! hold on older ones, and trim the standby's own pgzfs snapshots.

use crate::config::Node;
use crate::error::Result;
use crate::zfs::names::{DatasetName, HoldTag, SnapName, SnapshotName};
use crate::zfs::{Snapshot, Zfs};

/// What the re-seed already knows about the source, so that the holds cost fewer round
/// trips (each one, over SSH to a zfs-fuse source, about 0.2 s: the holds outlasted the
/// standby's start).
#[derive(Debug, Clone, Copy, Default)]
pub struct SourceKnown<'a> {
    /// The source dataset's snapshots as read after the cut (None: read them here). Only
    /// the new snapshot's hold has changed since, and that one is never released.
    pub snapshots: Option<&'a [Snapshot]>,
    /// Release this node's tag on the source only on snapshots this node has a copy of
    /// (same GUID): the only ones it can have held as its bases, since a standby's base
    /// stays held here until the source's hold is released. Not after a full copy, whose
    /// predecessor (renamed aside) took its bases' copies with it.
    pub only_received: bool,
}

/// Hold the new common snapshot on both sides so neither retention nor an operator can
/// break the incremental chain, release this node's hold on older ones, and keep only the
/// newest `keep_common` pgzfs snapshots on the standby. Called for every dataset of the
/// cluster (the dataset, its children, the tablespaces) with the same snapshot name, so
/// every one of them keeps the same cuts.
pub fn protect_new_base(
    local: &Node,
    local_zfs: &dyn Zfs,
    remote_zfs: &dyn Zfs,
    source_dataset: &DatasetName,
    local_dataset: &DatasetName,
    snap: &SnapName,
    known: SourceKnown,
) -> Result<()> {
    let tag = HoldTag::parse(&format!("pgzfs-{}", local.reseed.slot_name))?;
    let local_new = local_dataset.snapshot(snap);
    let remote_new = source_dataset.snapshot(snap);
    remote_zfs.hold(&tag, &remote_new)?;
    // A bookmark keeps the incremental chain usable even if retention later destroys the
    // snapshot on the primary (where the ZFS has bookmarks; zfs-fuse has not).
    if remote_zfs
        .features_for(source_dataset)
        .map(|f| f.bookmarks)
        .unwrap_or(false)
    {
        if let Err(e) = remote_zfs.bookmark(&remote_new) {
            tracing::warn!("could not bookmark {remote_new}: {e}");
        }
    }
    local_zfs.hold(&tag, &local_new)?;
    // Each side's list is read at most once: every zfs call is a round trip (and on
    // zfs-fuse a slow one), and what the releases change is known here. The source's
    // holds go first: until they are released, the copies here stay held too, so a
    // failure half way is retried by the next run (see `only_received`).
    let local_snaps = local_zfs.snapshots(local_dataset)?;
    let read_here;
    let source_snaps = match known.snapshots {
        Some(snaps) => snaps,
        None => {
            read_here = remote_zfs.snapshots(source_dataset)?;
            &read_here
        }
    };
    let ours = |s: &Snapshot, keep: &SnapshotName| {
        s.is_held() && &s.name != keep && s.name.snap().is_pgzfs()
    };
    // `is_held` counts every tag (zfs-fuse cannot list them): on a node that other
    // standbys copy from, most of these carry only theirs. One call per side asks for
    // all of them, instead of a round trip each that mostly finds no hold of ours.
    let source_old: Vec<SnapshotName> = source_snaps
        .iter()
        .filter(|s| {
            ours(s, &remote_new)
                && (!known.only_received || local_snaps.iter().any(|l| l.guid == s.guid))
        })
        .map(|s| s.name.clone())
        .collect();
    let released_there = remote_zfs.release_each(&tag, &source_old)?;
    for (old, _) in source_old.iter().zip(released_there).filter(|(_, r)| *r) {
        tracing::info!("released {old} on {}", remote_zfs.location());
    }
    let local_old: Vec<SnapshotName> = local_snaps
        .iter()
        .filter(|s| ours(s, &local_new))
        .map(|s| s.name.clone())
        .collect();
    let released = local_zfs.release_each(&tag, &local_old)?;
    let released_here: Vec<SnapshotName> = local_old
        .into_iter()
        .zip(released)
        .filter_map(|(old, released)| released.then_some(old))
        .collect();
    for old in &released_here {
        tracing::info!("released {old} on {}", local_zfs.location());
    }
    let pgzfs_snaps: Vec<Snapshot> = local_snaps
        .into_iter()
        .filter(|s| s.name.snap().is_pgzfs())
        .collect();
    let excess = pgzfs_snaps.len().saturating_sub(local.reseed.keep_common);
    for old in pgzfs_snaps.iter().take(excess) {
        // Held by someone else still (our release took one reference off).
        let still_held = if released_here.contains(&old.name) {
            old.userrefs > 1
        } else {
            old.is_held()
        };
        if still_held || old.name == local_new {
            continue;
        }
        local_zfs.destroy_snapshot(&old.name)?;
        tracing::info!(
            "destroyed old standby snapshot {} (keep_common = {})",
            old.name,
            local.reseed.keep_common
        );
    }
    Ok(())
}

/// The pg_wal dataset a re-seed no longer sends (`send_pg_wal = false`) is nobody's base:
/// this node's holds on its snapshots, left by re-seeds that did send it, are released
/// here and on the source, so that retention can take those snapshots in time.
pub fn release_unsent(
    local: &Node,
    local_zfs: &dyn Zfs,
    remote_zfs: &dyn Zfs,
    source_dataset: &DatasetName,
    local_dataset: &DatasetName,
) -> Result<()> {
    let tag = HoldTag::parse(&format!("pgzfs-{}", local.reseed.slot_name))?;
    let held: Vec<SnapshotName> = local_zfs
        .snapshots(local_dataset)?
        .into_iter()
        .filter(|s| s.is_held() && s.name.snap().is_pgzfs())
        .map(|s| s.name)
        .collect();
    let released = local_zfs.release_each(&tag, &held)?;
    for (old, _) in held.iter().zip(released).filter(|(_, r)| *r) {
        tracing::info!("released {old} (pg_wal is no longer sent)");
    }
    // The source's copies of the same cuts: a missing one (retention took it) is no
    // reason to fail a re-seed that has already started its standby.
    let on_source: Vec<SnapshotName> = held
        .iter()
        .map(|old| source_dataset.snapshot(old.snap()))
        .collect();
    match remote_zfs.release_each(&tag, &on_source) {
        Ok(released) => {
            for (old, _) in on_source.iter().zip(released).filter(|(_, r)| *r) {
                tracing::info!("released {old} on {}", remote_zfs.location());
            }
        }
        Err(e) => tracing::warn!("could not release every pg_wal cut on the source: {e}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{Cmd, Output, Runner};
    use crate::transfer::{Sink, Source};
    use crate::zfs::cli::ZfsCli;
    use std::cell::RefCell;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;

    /// One side's zfs: answers `zfs get -d 1` with `rows` and every hold or release with
    /// success, and records what it was asked.
    struct Side {
        rows: &'static str,
        asked: RefCell<Vec<String>>,
    }

    impl Runner for Side {
        fn output(&self, cmd: &Cmd) -> Result<Output> {
            let line = cmd.display();
            self.asked.borrow_mut().push(line.clone());
            Ok(Output {
                status: std::process::ExitStatus::from_raw(0),
                stdout: if line.starts_with("zfs get") {
                    self.rows.to_string()
                } else {
                    String::new()
                },
                stderr: String::new(),
            })
        }
        fn source(&self, _: &Cmd) -> Result<Box<dyn Source>> {
            unreachable!()
        }
        fn sink(&self, _: &Cmd) -> Result<Box<dyn Sink>> {
            unreachable!()
        }
        fn describe(&self) -> String {
            "a recorded zfs".into()
        }
    }

    fn side(rows: &'static str) -> ZfsCli<Side> {
        ZfsCli::new(Side {
            rows,
            asked: RefCell::default(),
        })
    }

    /// The source: db2's old base (held by db2), db3's base (held by db3), and the new
    /// cut, read right after it was taken (not held yet).
    const SOURCE: &str = "\
tank/pg@pgzfs-1\tguid\t11\ntank/pg@pgzfs-1\tcreatetxg\t10\ntank/pg@pgzfs-1\tuserrefs\t1\n\
tank/pg@pgzfs-2\tguid\t22\ntank/pg@pgzfs-2\tcreatetxg\t20\ntank/pg@pgzfs-2\tuserrefs\t1\n\
tank/pg@pgzfs-3\tguid\t33\ntank/pg@pgzfs-3\tcreatetxg\t30\ntank/pg@pgzfs-3\tuserrefs\t0\n";

    /// db2: its old base (held) and the new cut it just received (held a moment ago).
    const STANDBY: &str = "\
tank/db2@pgzfs-1\tguid\t11\ntank/db2@pgzfs-1\tcreatetxg\t5\ntank/db2@pgzfs-1\tuserrefs\t1\n\
tank/db2@pgzfs-3\tguid\t33\ntank/db2@pgzfs-3\tcreatetxg\t6\ntank/db2@pgzfs-3\tuserrefs\t1\n";

    fn db2() -> Node {
        let text = r#"
cluster = "pg"
[defaults]
dataset = "tank/pg"
data_dir = "/var/db/postgres/data15"
[[nodes]]
name = "db1"
host = "db1.example.net"
[[nodes]]
name = "db2"
host = "db2.example.net"
dataset = "tank/db2"
"#;
        let config = crate::config::Config::parse(text, Path::new("/etc/pgzfs.toml")).unwrap();
        config.node("db2").unwrap().clone()
    }

    /// The holds of db2's new base pgzfs-3, with the source's list read beforehand (as
    /// the re-seed reads it after the cut) or not, and the source's releases limited to
    /// what db2 received or not.
    fn protect(
        source: &ZfsCli<Side>,
        standby: &ZfsCli<Side>,
        list_known: bool,
        only_received: bool,
    ) {
        let pg = DatasetName::parse("tank/pg").unwrap();
        let after_the_cut = list_known.then(|| source.snapshots(&pg).unwrap());
        source.runner().asked.borrow_mut().clear();
        protect_new_base(
            &db2(),
            standby,
            source,
            &pg,
            &DatasetName::parse("tank/db2").unwrap(),
            &SnapName::parse("pgzfs-3").unwrap(),
            SourceKnown {
                snapshots: after_the_cut.as_deref(),
                only_received,
            },
        )
        .unwrap();
    }

    #[test]
    fn after_an_incremental_the_source_is_asked_only_to_hold_the_new_base_and_release_the_old() {
        let (source, standby) = (side(SOURCE), side(STANDBY));
        protect(&source, &standby, true, true);
        assert_eq!(
            *source.runner().asked.borrow(),
            [
                "zfs hold pgzfs-db2 tank/pg@pgzfs-3",
                // whether it has bookmarks (a re-seed asked this before, for the stream)
                "zfs send",
                "zfs release pgzfs-db2 tank/pg@pgzfs-1"
            ],
            "no second list, and db3's base (pgzfs-2, never received here) is left alone"
        );
        assert!(standby
            .runner()
            .asked
            .borrow()
            .contains(&"zfs release pgzfs-db2 tank/db2@pgzfs-1".to_string()));
    }

    #[test]
    fn after_a_full_copy_every_held_pgzfs_snapshot_of_the_source_is_tried() {
        let (source, standby) = (side(SOURCE), side(STANDBY));
        protect(&source, &standby, false, false);
        let asked = source.runner().asked.borrow();
        assert!(asked.iter().any(|c| c.starts_with("zfs get")), "{asked:?}");
        assert!(
            asked.contains(&"zfs release pgzfs-db2 tank/pg@pgzfs-1 tank/pg@pgzfs-2".to_string()),
            "both held snapshots in one call: {asked:?}"
        );
        assert_eq!(
            asked
                .iter()
                .filter(|c| c.starts_with("zfs release"))
                .count(),
            1
        );
    }
}

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
    /// The source dataset's snapshots as the re-seed read them, after the cut or in its
    /// preflight (None: read them here). Only this node puts its tag on a snapshot, so
    /// one that was not held then carries no hold of ours now but the new cut's, which
    /// is never released.
    pub snapshots: Option<&'a [Snapshot]>,
    /// Release this node's tag on the source only on snapshots this node has a copy of
    /// (same GUID): the only ones it can have held as its bases, since a standby's base
    /// stays held here until the source's hold is released. Not after a full copy, whose
    /// predecessor (renamed aside) took its bases' copies with it.
    pub only_received: bool,
}

/// One dataset of the cluster whose new cut is to be held: the source's and this node's.
#[derive(Debug, Clone, Copy)]
pub struct NewBase<'a> {
    pub source_dataset: &'a DatasetName,
    pub local_dataset: &'a DatasetName,
    pub known: SourceKnown<'a>,
}

/// Hold the new common snapshot on both sides so neither retention nor an operator can
/// break the incremental chain, release this node's hold on older ones, and keep only the
/// newest `keep_common` pgzfs snapshots on the standby. `bases` are every dataset of the
/// cluster (its children, its tablespaces, the dataset itself last), cut under the same
/// snapshot name, so every one of them keeps the same cuts.
///
/// Each side is asked once to hold all the new cuts and once to release all the old
/// ones, whatever the number of datasets: every call to the source is a round trip, and
/// on a tree the holds used to outlast the standby's start. No old base is released
/// before every new one is held.
pub fn protect_new_bases(
    local: &Node,
    local_zfs: &dyn Zfs,
    remote_zfs: &dyn Zfs,
    bases: &[NewBase],
    snap: &SnapName,
) -> Result<()> {
    let tag = HoldTag::parse(&format!("pgzfs-{}", local.reseed.slot_name))?;
    let remote_new: Vec<SnapshotName> = bases
        .iter()
        .map(|b| b.source_dataset.snapshot(snap))
        .collect();
    let local_new: Vec<SnapshotName> = bases
        .iter()
        .map(|b| b.local_dataset.snapshot(snap))
        .collect();
    remote_zfs.hold_each(&tag, &remote_new)?;
    // A bookmark keeps the incremental chain usable even if retention later destroys the
    // snapshot on the primary (where the ZFS has bookmarks; zfs-fuse has not).
    for (base, new) in bases.iter().zip(&remote_new) {
        if remote_zfs
            .features_for(base.source_dataset)
            .map(|f| f.bookmarks)
            .unwrap_or(false)
        {
            if let Err(e) = remote_zfs.bookmark(new) {
                tracing::warn!("could not bookmark {new}: {e}");
            }
        }
    }
    local_zfs.hold_each(&tag, &local_new)?;
    // Each side's list is read at most once: every zfs call is a round trip (and on
    // zfs-fuse a slow one), and what the releases change is known here. The source's
    // holds go first: until they are released, the copies here stay held too, so a
    // failure half way is retried by the next run (see `only_received`).
    let ours = |s: &Snapshot, keep: &SnapshotName| {
        s.is_held() && &s.name != keep && s.name.snap().is_pgzfs()
    };
    let mut source_old = Vec::new();
    let mut local_old = Vec::new();
    let mut local_lists = Vec::new();
    for ((base, remote_new), local_new) in bases.iter().zip(&remote_new).zip(&local_new) {
        let local_snaps = local_zfs.snapshots(base.local_dataset)?;
        let read_here;
        let source_snaps = match base.known.snapshots {
            Some(snaps) => snaps,
            None => {
                read_here = remote_zfs.snapshots(base.source_dataset)?;
                &read_here
            }
        };
        // `is_held` counts every tag (zfs-fuse cannot list them): on a node that other
        // standbys copy from, most of these carry only theirs. One call per side asks for
        // all of them, instead of a round trip each that mostly finds no hold of ours.
        source_old.extend(
            source_snaps
                .iter()
                .filter(|s| {
                    ours(s, remote_new)
                        && (!base.known.only_received
                            || local_snaps.iter().any(|l| l.guid == s.guid))
                })
                .map(|s| s.name.clone()),
        );
        local_old.extend(
            local_snaps
                .iter()
                .filter(|s| ours(s, local_new))
                .map(|s| s.name.clone()),
        );
        local_lists.push(local_snaps);
    }
    let released_there = remote_zfs.release_each(&tag, &source_old)?;
    for (old, _) in source_old.iter().zip(released_there).filter(|(_, r)| *r) {
        tracing::info!("released {old} on {}", remote_zfs.location());
    }
    let released = local_zfs.release_each(&tag, &local_old)?;
    let released_here: Vec<SnapshotName> = local_old
        .into_iter()
        .zip(released)
        .filter_map(|(old, released)| released.then_some(old))
        .collect();
    for old in &released_here {
        tracing::info!("released {old} on {}", local_zfs.location());
    }
    for (local_snaps, local_new) in local_lists.into_iter().zip(&local_new) {
        trim(local, local_zfs, local_snaps, local_new, &released_here)?;
    }
    Ok(())
}

/// Keep the newest `keep_common` pgzfs snapshots of one of this node's datasets; older
/// ones go unless something still holds them.
fn trim(
    local: &Node,
    local_zfs: &dyn Zfs,
    local_snaps: Vec<Snapshot>,
    local_new: &SnapshotName,
    released_here: &[SnapshotName],
) -> Result<()> {
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
        if still_held || &old.name == local_new {
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
        protect_new_bases(
            &db2(),
            standby,
            source,
            &[NewBase {
                source_dataset: &pg,
                local_dataset: &DatasetName::parse("tank/db2").unwrap(),
                known: SourceKnown {
                    snapshots: after_the_cut.as_deref(),
                    only_received,
                },
            }],
            &SnapName::parse("pgzfs-3").unwrap(),
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

    /// A tree (pg_wal on its own child, sent with the atomic cut): the same cuts on both.
    const SOURCE_TREE: &str = "\
tank/pg@pgzfs-1\tguid\t11\ntank/pg@pgzfs-1\tcreatetxg\t10\ntank/pg@pgzfs-1\tuserrefs\t1\n\
tank/pg@pgzfs-3\tguid\t33\ntank/pg@pgzfs-3\tcreatetxg\t30\ntank/pg@pgzfs-3\tuserrefs\t0\n\
tank/pg/wal@pgzfs-1\tguid\t111\ntank/pg/wal@pgzfs-1\tcreatetxg\t10\ntank/pg/wal@pgzfs-1\tuserrefs\t1\n\
tank/pg/wal@pgzfs-3\tguid\t333\ntank/pg/wal@pgzfs-3\tcreatetxg\t30\ntank/pg/wal@pgzfs-3\tuserrefs\t0\n";
    const STANDBY_TREE: &str = "\
tank/db2@pgzfs-1\tguid\t11\ntank/db2@pgzfs-1\tcreatetxg\t5\ntank/db2@pgzfs-1\tuserrefs\t1\n\
tank/db2@pgzfs-3\tguid\t33\ntank/db2@pgzfs-3\tcreatetxg\t6\ntank/db2@pgzfs-3\tuserrefs\t1\n\
tank/db2/wal@pgzfs-1\tguid\t111\ntank/db2/wal@pgzfs-1\tcreatetxg\t5\ntank/db2/wal@pgzfs-1\tuserrefs\t1\n\
tank/db2/wal@pgzfs-3\tguid\t333\ntank/db2/wal@pgzfs-3\tcreatetxg\t6\ntank/db2/wal@pgzfs-3\tuserrefs\t1\n";

    #[test]
    fn a_tree_is_held_and_released_in_one_call_per_side_whatever_its_size() {
        let (source, standby) = (side(SOURCE_TREE), side(STANDBY_TREE));
        let (pg, wal) = (
            DatasetName::parse("tank/pg").unwrap(),
            DatasetName::parse("tank/pg/wal").unwrap(),
        );
        let (standby_pg, standby_wal) = (
            DatasetName::parse("tank/db2").unwrap(),
            DatasetName::parse("tank/db2/wal").unwrap(),
        );
        // What the re-seed knows: the child's list from its survey, the dataset's from
        // right after the cut.
        let (wal_known, pg_known) = (
            source.snapshots(&wal).unwrap(),
            source.snapshots(&pg).unwrap(),
        );
        source.runner().asked.borrow_mut().clear();
        let known = |snapshots| SourceKnown {
            snapshots: Some(snapshots),
            only_received: true,
        };
        protect_new_bases(
            &db2(),
            &standby,
            &source,
            &[
                NewBase {
                    source_dataset: &wal,
                    local_dataset: &standby_wal,
                    known: known(&wal_known),
                },
                NewBase {
                    source_dataset: &pg,
                    local_dataset: &standby_pg,
                    known: known(&pg_known),
                },
            ],
            &SnapName::parse("pgzfs-3").unwrap(),
        )
        .unwrap();
        assert_eq!(
            *source.runner().asked.borrow(),
            [
                "zfs hold pgzfs-db2 tank/pg/wal@pgzfs-3 tank/pg@pgzfs-3",
                "zfs send",
                "zfs release pgzfs-db2 tank/pg/wal@pgzfs-1 tank/pg@pgzfs-1"
            ],
            "the child before the dataset, and no list read"
        );
        let asked_here = standby.runner().asked.borrow();
        let here: Vec<&String> = asked_here
            .iter()
            .filter(|c| !c.starts_with("zfs get") && c.as_str() != "zfs send")
            .collect();
        assert_eq!(
            here,
            [
                "zfs hold pgzfs-db2 tank/db2/wal@pgzfs-3 tank/db2@pgzfs-3",
                "zfs release pgzfs-db2 tank/db2/wal@pgzfs-1 tank/db2@pgzfs-1"
            ]
        );
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

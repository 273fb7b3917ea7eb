//! After a re-seed: hold the new common base on both sides, release this standby's
//! hold on older ones, and trim the standby's own pgzfs snapshots.

use crate::config::Node;
use crate::error::Result;
use crate::zfs::names::{DatasetName, HoldTag, SnapName};
use crate::zfs::{Snapshot, Zfs};

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
    // Each side's list is read once: every zfs call is a round trip (and on zfs-fuse a
    // slow one), and what the releases change is known here.
    let mut released_here = Vec::new();
    let mut local_snaps = Vec::new();
    for (zfs, dataset, keep, is_local) in [
        (remote_zfs, source_dataset, &remote_new, false),
        (local_zfs, local_dataset, &local_new, true),
    ] {
        let snaps = zfs.snapshots(dataset)?;
        for old in snaps
            .iter()
            .filter(|s| s.is_held() && &s.name != keep && s.name.snap().is_pgzfs())
        {
            if zfs.release(&tag, &old.name)? {
                tracing::info!("released {} on {}", old.name, zfs.location());
                if is_local {
                    released_here.push(old.name.clone());
                }
            }
        }
        if is_local {
            local_snaps = snaps;
        }
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
    let held: Vec<Snapshot> = local_zfs
        .snapshots(local_dataset)?
        .into_iter()
        .filter(|s| s.is_held() && s.name.snap().is_pgzfs())
        .collect();
    for old in held {
        if local_zfs.release(&tag, &old.name)? {
            tracing::info!("released {} (pg_wal is no longer sent)", old.name);
        }
        let on_source = source_dataset.snapshot(old.name.snap());
        match remote_zfs.release(&tag, &on_source) {
            Ok(true) => tracing::info!("released {on_source} on {}", remote_zfs.location()),
            Ok(false) => {}
            Err(e) => tracing::warn!("could not release {on_source}: {e}"),
        }
    }
    Ok(())
}

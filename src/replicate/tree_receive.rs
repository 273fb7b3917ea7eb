//! The ZFS steps around receiving a cluster's children and tablespaces: unmount them
//! before anything is received (deepest first), keep a tablespace renamed aside for
//! `--full`, take over the source's tuning properties, mount parents before children
//! afterwards, and put everything back after a failure.

use std::path::Path;

use crate::error::Result;
use crate::zfs::names::DatasetName;
use crate::zfs::{Zfs, TUNING_PROPERTIES};

use super::tree::{MemberPlan, MountAt};

/// Unmount what the receive will touch: every descendant of the local dataset (also one
/// the source does not have: a mounted child keeps its parent busy), deepest first, and
/// the tablespaces of the plan.
pub(super) fn unmount_cluster(
    zfs: &dyn Zfs,
    root: &DatasetName,
    root_exists: bool,
    members: &[MemberPlan],
) -> Result<()> {
    let mut below = if root_exists {
        zfs.children(root)?
    } else {
        Vec::new()
    };
    below.sort_by(|a, b| b.as_str().cmp(a.as_str()));
    for child in &below {
        zfs.unmount(child)?;
    }
    for member in members.iter().rev() {
        if member.rename_aside.is_some() || member.is_incremental() {
            zfs.unmount(&member.local_dataset)?;
        }
    }
    Ok(())
}

/// `--full`: keep each existing tablespace dataset under its new name.
pub(super) fn rename_aside(zfs: &dyn Zfs, members: &[MemberPlan]) -> Result<()> {
    for member in members {
        if let Some(aside) = &member.rename_aside {
            zfs.rename(&member.local_dataset, aside)?;
            zfs.set_canmount_noauto(aside)?;
            tracing::info!("kept the previous {} as {aside}", member.local_dataset);
        }
    }
    Ok(())
}

/// A plain `zfs send` carries no properties: a new copy gets the source's recordsize,
/// compression, logbias, ... explicitly, so that it writes as the source did once it is
/// promoted. A property this ZFS does not know is skipped with a warning.
pub(super) fn copy_tuning(
    source_zfs: &dyn Zfs,
    local_zfs: &dyn Zfs,
    source: &DatasetName,
    local: &DatasetName,
) {
    for property in TUNING_PROPERTIES {
        let value = match source_zfs.get_text(source.as_str(), property) {
            Ok(Some(value)) => value,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("could not read {property} of {source}: {e}");
                continue;
            }
        };
        match local_zfs.set_tuning_props(local, &[(property, value.clone())]) {
            Ok(()) => tracing::info!("{local}: {property}={value} (as on the source)"),
            Err(e) => tracing::warn!("could not set {property}={value} on {local}: {e}"),
        }
    }
}

/// Mount every member where the plan says, parents first (the plan lists them so), once
/// the dataset itself is mounted at `root_mountpoint`.
pub(super) fn mount_members(
    zfs: &dyn Zfs,
    root_mountpoint: &Path,
    members: &[MemberPlan],
) -> Result<()> {
    for member in members {
        let wanted = match &member.mount {
            MountAt::BelowRoot { relative } => root_mountpoint.join(relative),
            MountAt::Path { path } => path.clone(),
            MountAt::Unmounted => continue,
        };
        if zfs.mountpoint(&member.local_dataset)?.as_deref() != Some(wanted.as_path()) {
            zfs.set_mountpoint(&member.local_dataset, &wanted)?;
        }
        zfs.mount(&member.local_dataset)?;
    }
    Ok(())
}

/// After a failed transfer: a tablespace renamed aside whose new copy never arrived gets
/// its name back, and whatever exists is mounted again, parents first.
pub(super) fn restore_after_failure(zfs: &dyn Zfs, members: &[MemberPlan]) -> Result<()> {
    for member in members {
        if let Some(aside) = &member.rename_aside {
            if !zfs.exists(&member.local_dataset).unwrap_or(true) {
                zfs.rename(aside, &member.local_dataset)?;
            }
        }
        if !matches!(member.mount, MountAt::Unmounted)
            && zfs.exists(&member.local_dataset).unwrap_or(false)
        {
            if let Err(e) = zfs.mount(&member.local_dataset) {
                tracing::warn!("could not mount {} again: {e}", member.local_dataset);
            }
        }
    }
    Ok(())
}

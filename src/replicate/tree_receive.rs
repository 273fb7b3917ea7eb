//! The ZFS steps around receiving a cluster's children and tablespaces: unmount them
//! before anything is received (deepest first), keep a tablespace renamed aside for
//! `--full`, take over the source's tuning properties, mount parents before children
//! afterwards, and put everything back after a failure: one member that cannot be
//! received takes back every dataset this run already received ([`undo_steps`]), so a
//! tree is never left half-new.

use std::path::Path;

use crate::error::{Error, Result};
use crate::safe_dir::Dir;
use crate::zfs::names::{DatasetName, SnapName};
use crate::zfs::{Zfs, TUNING_PROPERTIES};

use super::plan::{Mode, Plan};
use super::tree::{MemberPlan, MountAt, OwnPgWal};

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
            zfs.rename_aside(&member.local_dataset, aside)?;
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
        // A received dataset inherits the pool's defaults, which usually match: setting
        // an equal value would cost a `zfs set` (a second each on zfs-fuse) for nothing.
        if matches!(local_zfs.get_text(local.as_str(), property), Ok(Some(here)) if here == value) {
            continue;
        }
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

/// The standby's own pg_wal dataset, when the stream left the primary's out: mounted at
/// the place the plan names below `root_mountpoint` (created there, with the source's
/// tuning, if this node has none), emptied, and given to the data directory's owner.
/// The WAL in it belongs to the copy this re-seed replaced; replaying it into the new
/// one would be wrong, and PostgreSQL fetches what the new copy needs from the slot.
pub(super) fn make_own_pg_wal(
    zfs: &dyn Zfs,
    source_zfs: &dyn Zfs,
    root_mountpoint: &Path,
    wal: &OwnPgWal,
    data_dir: &Path,
) -> Result<()> {
    let wanted = root_mountpoint.join(&wal.relative);
    let mark = crate::datasets::own_pg_wal_mark();
    if zfs.exists(&wal.local_dataset)? {
        if zfs.mountpoint(&wal.local_dataset)?.as_deref() != Some(wanted.as_path()) {
            zfs.set_mountpoint(&wal.local_dataset, &wanted)?;
        }
        zfs.mount(&wal.local_dataset)?;
        if !crate::datasets::is_own_pg_wal(zfs, &wal.local_dataset)? {
            zfs.set_dataset_props(&wal.local_dataset, &mark)?;
        }
    } else {
        zfs.create_mounted_at(&wal.local_dataset, &wanted, &mark)?;
        copy_tuning(source_zfs, zfs, &wal.source_dataset, &wal.local_dataset);
    }
    // Every name in the data directory came from the primary: pg_wal itself must be a
    // real directory (the mounted dataset), and nothing in it is followed.
    let data = Dir::open(data_dir)?;
    let (uid, gid) = data.owner()?;
    let pg_wal = data.subdir("pg_wal")?.ok_or_else(|| {
        Error::failed(format!(
            "{} has no pg_wal directory after mounting {} there",
            data_dir.display(),
            wal.local_dataset
        ))
    })?;
    pg_wal.clear()?;
    pg_wal.set_owner(uid, gid)?;
    pg_wal.set_mode(0o700)?;
    tracing::info!(
        "{} (pg_wal) is empty; the standby fetches its WAL from the primary",
        wal.local_dataset
    );
    Ok(())
}

/// After a failed transfer: the standby's own pg_wal, unmounted with the rest of the
/// tree, goes back where it was (the previous standby needs it to start again).
pub(super) fn mount_own_pg_wal_again(zfs: &dyn Zfs, wal: Option<&OwnPgWal>) {
    let Some(wal) = wal else { return };
    if zfs.exists(&wal.local_dataset).unwrap_or(false) {
        if let Err(e) = zfs.mount(&wal.local_dataset) {
            tracing::warn!("could not mount {} again: {e}", wal.local_dataset);
        }
    }
}

/// After a failed transfer: a tablespace renamed aside whose new copy never arrived gets
/// its name back, and whatever exists is mounted again, parents first.
pub(super) fn restore_after_failure(zfs: &dyn Zfs, members: &[MemberPlan]) -> Result<()> {
    for member in members {
        if let Some(aside) = &member.rename_aside {
            if !zfs.exists(&member.local_dataset).unwrap_or(true) {
                zfs.put_back(aside, &member.local_dataset)?;
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

/// How one dataset that this run received whole is put back at its last good state
/// when a later member of the cluster fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Undo {
    /// An incremental: destroy the received snapshot, roll back to the base (still there).
    RollBack {
        dataset: DatasetName,
        received: SnapName,
        base: SnapName,
    },
    /// A full copy over a dataset kept aside: destroy the new copy, rename the kept one
    /// back.
    PutBack {
        dataset: DatasetName,
        aside: DatasetName,
    },
    /// A full copy into a dataset that did not exist: destroy it (the source has it all).
    DestroyNew { dataset: DatasetName },
    /// A full copy over an existing dataset that was not kept aside (continuing a
    /// partial full receive): nothing to go back to; left as received, and said so.
    Leave { dataset: DatasetName },
}

/// What to undo, in order, after the dataset itself and the first `received` members of
/// `plan` were received and the next member failed (that one ZFS left untouched). The
/// members go first, the last received first; the dataset last. A child of a dataset
/// copied in full goes with it (it lives inside the new copy).
pub(super) fn undo_steps(plan: &Plan, root_existed: bool, received: usize) -> Vec<Undo> {
    let root_full = !plan.is_incremental();
    let mut steps = Vec::new();
    for member in plan.members[..received.min(plan.members.len())]
        .iter()
        .rev()
    {
        let inside_root = member
            .local_dataset
            .as_str()
            .strip_prefix(plan.local_dataset.as_str())
            .is_some_and(|rest| rest.starts_with('/'));
        if root_full && inside_root {
            continue;
        }
        steps.push(undo_of(
            &member.local_dataset,
            &member.mode,
            member.rename_aside.as_ref(),
            true,
            &plan.snapshot,
        ));
    }
    steps.push(undo_of(
        &plan.local_dataset,
        &plan.mode,
        plan.rename_aside.as_ref(),
        !root_existed,
        &plan.snapshot,
    ));
    steps
}

fn undo_of(
    dataset: &DatasetName,
    mode: &Mode,
    aside: Option<&DatasetName>,
    new_unless_aside: bool,
    received: &SnapName,
) -> Undo {
    let dataset = dataset.clone();
    match (mode, aside) {
        (Mode::Incremental { base }, _) => Undo::RollBack {
            dataset,
            received: received.clone(),
            base: base.clone(),
        },
        (Mode::Full, Some(aside)) => Undo::PutBack {
            dataset,
            aside: aside.clone(),
        },
        (Mode::Full, None) if new_unless_aside => Undo::DestroyNew { dataset },
        (Mode::Full, None) => Undo::Leave { dataset },
    }
}

/// Carry out `steps` (from [`undo_steps`]) with every member and the dataset unmounted
/// first; then mount again, parents first, whatever exists. Returns what could not be
/// put back, one sentence each (empty when every dataset is at its last good state).
pub(super) fn undo_received(
    zfs: &dyn Zfs,
    root: &DatasetName,
    members: &[MemberPlan],
    steps: &[Undo],
) -> Vec<String> {
    let mut left = Vec::new();
    if let Err(e) = unmount_cluster(zfs, root, true, members).and_then(|()| zfs.unmount(root)) {
        left.push(format!(
            "could not unmount the cluster to undo the receive: {e}"
        ));
        return left;
    }
    for step in steps {
        let outcome = match step {
            Undo::RollBack {
                dataset,
                received,
                base,
            } => zfs.undo_incremental(dataset, received, base),
            Undo::PutBack { dataset, aside } => zfs.undo_full_aside(dataset, aside),
            Undo::DestroyNew { dataset } => zfs.undo_full_new(dataset),
            Undo::Leave { dataset } => {
                left.push(format!(
                    "{dataset} holds the full copy received by this run"
                ));
                continue;
            }
        };
        if let Err(e) = outcome {
            left.push(format!("{step:?} failed: {e}"));
        }
    }
    if zfs.exists(root).unwrap_or(false) {
        if let Err(e) = zfs.mount(root) {
            left.push(format!("could not mount {root} again: {e}"));
        }
    }
    if let Err(e) = restore_after_failure(zfs, members) {
        left.push(format!(
            "could not mount every child and tablespace again: {e}"
        ));
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::MemberRole;
    use std::path::PathBuf;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }
    fn sn(s: &str) -> SnapName {
        SnapName::parse(s).unwrap()
    }

    fn member(role: MemberRole, local: &str, mode: Mode, aside: Option<&str>) -> MemberPlan {
        MemberPlan {
            role,
            source_dataset: ds("tank/src"),
            local_dataset: ds(local),
            mode,
            rename_aside: aside.map(ds),
            rolled_back: Vec::new(),
            mount: MountAt::Path {
                path: PathBuf::from("/x"),
            },
        }
    }

    fn tree(mode: Mode, root_aside: Option<&str>, ts_aside: Option<&str>) -> Plan {
        Plan {
            source_dataset: ds("tank/db1"),
            local_dataset: ds("tank/db2"),
            snapshot: sn("pgzfs-new"),
            mode: mode.clone(),
            rename_aside: root_aside.map(ds),
            rolled_back: Vec::new(),
            members: vec![
                member(
                    MemberRole::Child {
                        relative: "wal".into(),
                    },
                    "tank/db2/wal",
                    mode.clone(),
                    None,
                ),
                member(
                    MemberRole::Tablespace {
                        name: "fast".into(),
                    },
                    "tank/db2ts",
                    mode,
                    ts_aside,
                ),
            ],
            pg_wal_not_sent: None,
            cut_note: None,
        }
    }

    fn incremental() -> Mode {
        Mode::Incremental {
            base: sn("pgzfs-base"),
        }
    }

    fn back_to_base(dataset: &str) -> Undo {
        Undo::RollBack {
            dataset: ds(dataset),
            received: sn("pgzfs-new"),
            base: sn("pgzfs-base"),
        }
    }

    #[test]
    fn a_failed_tablespace_takes_back_the_received_wal_child_then_the_dataset() {
        // db2 and db2/wal went forward to @pgzfs-new, db2ts did not arrive.
        let steps = undo_steps(&tree(incremental(), None, None), true, 1);
        assert_eq!(
            steps,
            [back_to_base("tank/db2/wal"), back_to_base("tank/db2")]
        );
    }

    #[test]
    fn a_failed_first_member_takes_back_only_the_dataset() {
        let steps = undo_steps(&tree(incremental(), None, None), true, 0);
        assert_eq!(steps, [back_to_base("tank/db2")]);
    }

    #[test]
    fn a_full_copy_puts_the_kept_datasets_back_and_the_child_goes_with_its_parent() {
        let plan = tree(Mode::Full, Some("tank/db2-old"), Some("tank/db2ts-old"));
        // Every member arrived, then something later failed: the new wal child is
        // inside the new copy of db2 and goes with it.
        let steps = undo_steps(&plan, true, 2);
        assert_eq!(
            steps,
            [
                Undo::PutBack {
                    dataset: ds("tank/db2ts"),
                    aside: ds("tank/db2ts-old"),
                },
                Undo::PutBack {
                    dataset: ds("tank/db2"),
                    aside: ds("tank/db2-old"),
                },
            ]
        );
    }

    #[test]
    fn a_first_copy_onto_a_new_node_leaves_nothing_half_made() {
        let steps = undo_steps(&tree(Mode::Full, None, None), false, 2);
        assert_eq!(
            steps,
            [
                Undo::DestroyNew {
                    dataset: ds("tank/db2ts"),
                },
                Undo::DestroyNew {
                    dataset: ds("tank/db2"),
                },
            ]
        );
    }

    #[test]
    fn a_full_copy_over_a_dataset_not_kept_aside_is_left_and_named() {
        // Continuing a partial full receive: there is no older copy to go back to.
        let steps = undo_steps(&tree(Mode::Full, None, None), true, 0);
        assert_eq!(
            steps,
            [Undo::Leave {
                dataset: ds("tank/db2"),
            }]
        );
    }
}

//! Planning the copy of a cluster that spans several datasets: the children of the data
//! directory's dataset and the tablespaces (`crate::datasets`). The dataset itself is
//! planned as before (`plan::plan`); every other member is copied from the SAME cut, and
//! incrementally only from the SAME base, so that after the receive every dataset holds
//! the same moment. A member that lacks that base makes the plan refuse.
//!
//! Each member travels as its own stream (`zfs send` of one snapshot, never `send -R`):
//! a replication stream received with `-F` destroys every snapshot the receiving side
//! has and the stream lacks, including a standby's own, and it cannot be planned, named
//! in the log or refused dataset by dataset as this is.

use std::path::PathBuf;

use serde::Serialize;

use crate::datasets::MemberRole;
use crate::error::{Error, Result};
use crate::zfs::names::{DatasetName, SnapName, SnapshotName};
use crate::zfs::Snapshot;

use super::plan::{rolled_back_after, Mode, Plan};

/// Where a received member is mounted on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "at")]
pub enum MountAt {
    /// At the same place below the dataset's mountpoint as on the source (a child such
    /// as `wal` at `<mountpoint>/data/pg_wal`).
    BelowRoot { relative: PathBuf },
    /// At this node's configured mountpoint (a tablespace).
    Path { path: PathBuf },
    /// Not mounted on the source (`mountpoint=none` or `legacy`): left as received.
    Unmounted,
}

/// The copy of one member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberPlan {
    #[serde(flatten)]
    pub role: MemberRole,
    pub source_dataset: DatasetName,
    pub local_dataset: DatasetName,
    pub mode: Mode,
    /// A tablespace's existing dataset kept under a new name (`--full`). Children need
    /// none: they move aside with the dataset they belong to.
    pub rename_aside: Option<DatasetName>,
    pub rolled_back: Vec<SnapName>,
    pub mount: MountAt,
}

/// The dataset that holds pg_wal, when a re-seed leaves it out of the stream (see
/// [`pg_wal_stays_home`]): nothing of it travels; the standby's own is created or
/// emptied, and the standby fetches the WAL from its backup's start onwards through its
/// replication slot, as a standby made by `pg_basebackup -X none` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnPgWal {
    pub source_dataset: DatasetName,
    pub local_dataset: DatasetName,
    /// Where it is mounted below the dataset's mountpoint, as on the source.
    pub relative: PathBuf,
    /// Whether the standby's own stays (an incremental over an existing one) or is made.
    pub kept: bool,
}

impl OwnPgWal {
    pub fn describe(&self) -> String {
        format!(
            "pg_wal: {} is not sent; {} {}, and the standby streams its WAL from its slot",
            self.source_dataset,
            self.local_dataset,
            if self.kept {
                "is emptied"
            } else {
                "is created empty"
            }
        )
    }
}

/// Whether a re-seed of this node leaves the pg_wal dataset out of the stream. The WAL
/// is the bulk of what changes, and pg_basebackup never copies the old segments either.
/// Only a backup cut can do without it (its backup_label names where replay starts and
/// the backup-end record where the copy is consistent; an atomic cut is consistent only
/// with the WAL of its own snapshot), and only with a slot, which keeps that WAL on the
/// primary from before the cut until the standby has fetched it.
pub fn pg_wal_stays_home(reseed: &crate::config::ReseedConfig) -> bool {
    !reseed.send_pg_wal && reseed.cut == crate::cut::CutMode::Backup && reseed.use_slots
}

/// What the planner knows about one member on both sides.
pub struct MemberInput<'a> {
    pub role: MemberRole,
    pub source_dataset: &'a DatasetName,
    pub source_snapshots: &'a [Snapshot],
    pub local_dataset: &'a DatasetName,
    /// None when the local dataset does not exist.
    pub local_snapshots: Option<&'a [Snapshot]>,
    pub mount: MountAt,
}

/// Plan every member after the dataset's own plan `root`.
pub fn plan_members(root: &Plan, inputs: &[MemberInput], stamp: &str) -> Result<Vec<MemberPlan>> {
    let mut plans = Vec::new();
    let mut lacking = Vec::new();
    for input in inputs {
        let mut member = MemberPlan {
            role: input.role.clone(),
            source_dataset: input.source_dataset.clone(),
            local_dataset: input.local_dataset.clone(),
            mode: Mode::Full,
            rename_aside: None,
            rolled_back: Vec::new(),
            mount: input.mount.clone(),
        };
        match &root.mode {
            Mode::Full => {
                let is_tablespace = matches!(input.role, MemberRole::Tablespace { .. });
                if is_tablespace && input.local_snapshots.is_some() {
                    if root.rename_aside.is_none() {
                        return Err(Error::refused(format!(
                            "{} already exists on this node, but {} is copied in full: the \
                             tablespace would not match the data directory. Re-run with --full to \
                             rename it aside to {}-pgzfs-old-<time> (nothing is destroyed)",
                            input.local_dataset, root.local_dataset, input.local_dataset
                        )));
                    }
                    member.rename_aside = Some(
                        input
                            .local_dataset
                            .renamed_aside(&format!("-pgzfs-old-{stamp}"))?,
                    );
                }
            }
            Mode::Incremental { base } => match incremental_from(input, base)? {
                Some(rolled_back) => {
                    member.mode = Mode::Incremental { base: base.clone() };
                    member.rolled_back = rolled_back;
                }
                None => lacking.push(input.local_dataset.to_string()),
            },
        }
        plans.push(member);
    }
    if !lacking.is_empty() {
        let base = match &root.mode {
            Mode::Incremental { base } => base.as_str(),
            Mode::Full => unreachable!("only an incremental needs a base"),
        };
        return Err(Error::refused(format!(
            "the common base {base} of {} is missing from {} (on this node or on the source), \
             so the cluster's datasets cannot all be brought to the same cut incrementally. \
             Re-run with --full to rename the local datasets aside (nothing is destroyed) and \
             copy everything",
            root.local_dataset,
            lacking.join(", ")
        )));
    }
    Ok(plans)
}

/// Some(snapshots rolled back) when both sides hold `base` of this member as the same
/// snapshot (by GUID); None when either lacks it.
fn incremental_from(input: &MemberInput, base: &SnapName) -> Result<Option<Vec<SnapName>>> {
    let Some(local) = input.local_snapshots else {
        return Ok(None);
    };
    let Some(source_base) = input
        .source_snapshots
        .iter()
        .find(|s| s.name.snap() == base)
    else {
        return Ok(None);
    };
    let Some(local_base) = local.iter().find(|s| s.guid == source_base.guid) else {
        return Ok(None);
    };
    rolled_back_after(local, local_base).map(Some)
}

impl MemberPlan {
    pub fn source_snapshot(&self, snap: &SnapName) -> SnapshotName {
        self.source_dataset.snapshot(snap)
    }

    pub fn base_snapshot(&self) -> Option<SnapshotName> {
        match &self.mode {
            Mode::Incremental { base } => Some(self.source_dataset.snapshot(base)),
            Mode::Full => None,
        }
    }

    pub fn is_incremental(&self) -> bool {
        matches!(self.mode, Mode::Incremental { .. })
    }

    pub fn describe(&self, snap: &SnapName) -> String {
        let what = match &self.role {
            MemberRole::Root => "dataset".to_string(),
            MemberRole::Child { .. } => "child".to_string(),
            MemberRole::Tablespace { name } => format!("tablespace {name}"),
        };
        let mut line = match &self.mode {
            Mode::Incremental { base } => format!(
                "{what}: incremental {}@{base} -> @{snap} into {}",
                self.source_dataset, self.local_dataset
            ),
            Mode::Full => format!(
                "{what}: full {}@{snap} into {}",
                self.source_dataset, self.local_dataset
            ),
        };
        match &self.mount {
            MountAt::BelowRoot { relative } => {
                line.push_str(&format!(", mounted at <mountpoint>/{}", relative.display()))
            }
            MountAt::Path { path } => line.push_str(&format!(", mounted at {}", path.display())),
            MountAt::Unmounted => {}
        }
        if let Some(aside) = &self.rename_aside {
            line.push_str(&format!(
                "; keep the current {} as {aside}",
                self.local_dataset
            ));
        }
        if !self.rolled_back.is_empty() {
            let names: Vec<&str> = self.rolled_back.iter().map(|s| s.as_str()).collect();
            line.push_str(&format!("; roll back {}", names.join(", ")));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::plan::{plan, PlanInput};
    use crate::zfs::fake::snap;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    struct Sides {
        root_source: Vec<Snapshot>,
        root_local: Option<Vec<Snapshot>>,
        wal_source: Vec<Snapshot>,
        wal_local: Option<Vec<Snapshot>>,
        ts_source: Vec<Snapshot>,
        ts_local: Option<Vec<Snapshot>>,
    }

    fn planned(sides: &Sides, full: bool) -> Result<Plan> {
        let names = (
            ds("tank/pgdata"),
            ds("backup/db2"),
            SnapName::parse("pgzfs-new").unwrap(),
        );
        let mut root = plan(&PlanInput {
            source_dataset: &names.0,
            source_snapshots: &sides.root_source,
            local_dataset: &names.1,
            local_snapshots: sides.root_local.as_deref(),
            snapshot: &names.2,
            full,
            stamp: "T",
        })?;
        let (wal_src, wal_local) = (ds("tank/pgdata/wal"), ds("backup/db2/wal"));
        let (ts_src, ts_local) = (ds("tank/pgts/fast"), ds("backup/db2-ts"));
        let inputs = [
            MemberInput {
                role: MemberRole::Child {
                    relative: "wal".into(),
                },
                source_dataset: &wal_src,
                source_snapshots: &sides.wal_source,
                local_dataset: &wal_local,
                local_snapshots: sides.wal_local.as_deref(),
                mount: MountAt::BelowRoot {
                    relative: "data/pg_wal".into(),
                },
            },
            MemberInput {
                role: MemberRole::Tablespace {
                    name: "fast".into(),
                },
                source_dataset: &ts_src,
                source_snapshots: &sides.ts_source,
                local_dataset: &ts_local,
                local_snapshots: sides.ts_local.as_deref(),
                mount: MountAt::Path {
                    path: "/db2-ts".into(),
                },
            },
        ];
        root.members = plan_members(&root, &inputs, "T")?;
        Ok(root)
    }

    /// Two cuts a and b taken on the primary, both received by the standby earlier.
    fn in_step() -> Sides {
        Sides {
            root_source: vec![
                snap("tank/pgdata@pgzfs-a", 1, 10),
                snap("tank/pgdata@pgzfs-b", 2, 20),
            ],
            root_local: Some(vec![
                snap("backup/db2@pgzfs-a", 1, 5),
                snap("backup/db2@pgzfs-b", 2, 6),
            ]),
            wal_source: vec![
                snap("tank/pgdata/wal@pgzfs-a", 11, 10),
                snap("tank/pgdata/wal@pgzfs-b", 12, 20),
            ],
            wal_local: Some(vec![
                snap("backup/db2/wal@pgzfs-a", 11, 5),
                snap("backup/db2/wal@pgzfs-b", 12, 6),
            ]),
            ts_source: vec![
                snap("tank/pgts/fast@pgzfs-a", 21, 10),
                snap("tank/pgts/fast@pgzfs-b", 22, 20),
            ],
            ts_local: Some(vec![
                snap("backup/db2-ts@pgzfs-a", 21, 5),
                snap("backup/db2-ts@pgzfs-b", 22, 6),
            ]),
        }
    }

    #[test]
    fn every_dataset_of_the_cluster_goes_incremental_from_the_same_base() {
        let plan = planned(&in_step(), false).unwrap();
        let base = SnapName::parse("pgzfs-b").unwrap();
        assert_eq!(plan.mode, Mode::Incremental { base: base.clone() });
        assert_eq!(plan.members.len(), 2);
        for member in &plan.members {
            assert_eq!(member.mode, Mode::Incremental { base: base.clone() });
        }
        assert_eq!(
            plan.members[0].base_snapshot().unwrap().to_string(),
            "tank/pgdata/wal@pgzfs-b"
        );
        let text = plan.describe();
        assert!(
            text.contains(
                "child: incremental tank/pgdata/wal@pgzfs-b -> @pgzfs-new into backup/db2/wal"
            ),
            "{text}"
        );
        assert!(text.contains("tablespace fast: incremental"), "{text}");
        // The dry run serializes each member with its own base.
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["members"][1]["role"], "tablespace");
        assert_eq!(json["members"][1]["mode"]["base"], "pgzfs-b");
    }

    #[test]
    fn a_child_that_lacks_the_common_base_makes_the_plan_refuse() {
        // The standby's wal dataset lost pgzfs-b (destroyed by hand): the data directory
        // would be at b while pg_wal could only be brought forward from a.
        let mut sides = in_step();
        sides.wal_local = Some(vec![snap("backup/db2/wal@pgzfs-a", 11, 5)]);
        let err = planned(&sides, false).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("backup/db2/wal"), "{err}");
        assert!(err.to_string().contains("--full"), "{err}");
        // A child new on the primary (no local copy at all) is refused the same way.
        let mut sides = in_step();
        sides.wal_local = None;
        assert_eq!(planned(&sides, false).unwrap_err().exit_code(), 3);
        // Same name, other snapshot (GUID differs): not a base.
        let mut sides = in_step();
        sides.ts_local = Some(vec![snap("backup/db2-ts@pgzfs-b", 99, 6)]);
        let err = planned(&sides, false).unwrap_err();
        assert!(err.to_string().contains("backup/db2-ts"), "{err}");
    }

    #[test]
    fn full_copies_the_tree_with_the_dataset_and_renames_an_existing_tablespace_aside() {
        let plan = planned(&in_step(), true).unwrap();
        assert_eq!(plan.mode, Mode::Full);
        assert!(plan.rename_aside.is_some());
        assert_eq!(plan.members[0].mode, Mode::Full);
        assert_eq!(
            plan.members[0].rename_aside, None,
            "the child moves aside with its parent"
        );
        assert_eq!(
            plan.members[1].rename_aside.as_ref().unwrap().as_str(),
            "backup/db2-ts-pgzfs-old-T"
        );
    }

    #[test]
    fn a_first_copy_is_full_everywhere_but_never_over_an_existing_tablespace() {
        let mut sides = in_step();
        sides.root_local = None;
        sides.wal_local = None;
        sides.ts_local = None;
        let plan = planned(&sides, false).unwrap();
        assert!(plan.members.iter().all(|m| m.mode == Mode::Full));
        sides.ts_local = Some(vec![]);
        let err = planned(&sides, false).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("backup/db2-ts"), "{err}");
    }

    #[test]
    fn a_foreign_snapshot_newer_than_the_base_on_a_child_is_refused() {
        let mut sides = in_step();
        sides
            .wal_local
            .as_mut()
            .unwrap()
            .push(snap("backup/db2/wal@by-hand", 50, 7));
        let err = planned(&sides, false).unwrap_err();
        assert!(err.to_string().contains("by-hand"), "{err}");
        // Our own newer snapshot is rolled back, and the plan says so.
        let mut sides = in_step();
        sides
            .wal_local
            .as_mut()
            .unwrap()
            .push(snap("backup/db2/wal@pgzfs-x", 50, 7));
        let plan = planned(&sides, false).unwrap();
        assert_eq!(
            plan.members[0].rolled_back,
            vec![SnapName::parse("pgzfs-x").unwrap()]
        );
    }
}

//! Planning a re-seed: a plain value computed from the two sides' snapshots, so that
//! `--dry-run` can print it and tests can check it without touching ZFS.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::zfs::names::{DatasetName, SnapName, SnapshotName};
use crate::zfs::{newest_common, Snapshot};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mode {
    /// Send only the blocks changed since `base`, a snapshot both sides have (same GUID).
    Incremental { base: SnapName },
    /// Send everything: there is no local copy, or `--full` was asked for.
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub source_dataset: DatasetName,
    pub local_dataset: DatasetName,
    /// The snapshot to take on the primary (or already taken) and send.
    pub snapshot: SnapName,
    pub mode: Mode,
    /// With `--full` over an existing dataset: where the old dataset is kept.
    pub rename_aside: Option<DatasetName>,
    /// Local snapshots newer than the base, which the receive rolls back (all of them are
    /// pgzfs snapshots: others make the plan refuse).
    pub rolled_back: Vec<SnapName>,
}

/// What the planner needs to know about this node.
pub struct PlanInput<'a> {
    pub source_dataset: &'a DatasetName,
    pub source_snapshots: &'a [Snapshot],
    pub local_dataset: &'a DatasetName,
    /// None when the local dataset does not exist.
    pub local_snapshots: Option<&'a [Snapshot]>,
    pub snapshot: &'a SnapName,
    pub full: bool,
    /// The timestamp used for a renamed-aside dataset's name.
    pub stamp: &'a str,
}

pub fn plan(input: &PlanInput) -> Result<Plan> {
    let mut plan = Plan {
        source_dataset: input.source_dataset.clone(),
        local_dataset: input.local_dataset.clone(),
        snapshot: input.snapshot.clone(),
        mode: Mode::Full,
        rename_aside: None,
        rolled_back: Vec::new(),
    };
    let Some(local) = input.local_snapshots else {
        return Ok(plan);
    };
    if input.full {
        plan.rename_aside = Some(
            input
                .local_dataset
                .renamed_aside(&format!("-pgzfs-old-{}", input.stamp))?,
        );
        return Ok(plan);
    }
    let Some(common) = newest_common(input.source_snapshots, local) else {
        return Err(Error::refused(format!(
            "{} exists but shares no snapshot (by GUID) with {} on the primary, so an incremental \
             re-seed is impossible. Re-run with --full to rename it aside to {}-pgzfs-old-<time> \
             (nothing is destroyed) and copy everything",
            input.local_dataset, input.source_dataset, input.local_dataset
        )));
    };
    let local_base = local
        .iter()
        .find(|s| s.guid == common.guid)
        .expect("common snapshot is local");
    let newer: Vec<&Snapshot> = local
        .iter()
        .filter(|s| s.createtxg > local_base.createtxg)
        .collect();
    let foreign: Vec<String> = newer
        .iter()
        .filter(|s| !s.name.snap().is_pgzfs())
        .map(|s| s.name.to_string())
        .collect();
    if !foreign.is_empty() {
        return Err(Error::refused(format!(
            "the incremental receive would destroy local snapshots newer than the common base {}: {}. \
             They were not made by pgzfs; keep them by renaming the dataset aside with --full, or \
             destroy them yourself if they are not needed",
            local_base.name,
            foreign.join(", ")
        )));
    }
    let held: Vec<String> = newer
        .iter()
        .filter(|s| s.is_held())
        .map(|s| s.name.to_string())
        .collect();
    if !held.is_empty() {
        return Err(Error::refused(format!(
            "local snapshots newer than the common base are held: {}; release them or use --full",
            held.join(", ")
        )));
    }
    plan.rolled_back = newer.iter().map(|s| s.name.snap().clone()).collect();
    plan.mode = Mode::Incremental {
        base: common.name.snap().clone(),
    };
    Ok(plan)
}

impl Plan {
    pub fn source_snapshot(&self) -> SnapshotName {
        self.source_dataset.snapshot(&self.snapshot)
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

    /// The plan as an operator reads it before saying yes.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        match &self.mode {
            Mode::Incremental { base } => lines.push(format!(
                "incremental: send {}@{base} -> @{} into {} (only the blocks changed since {base})",
                self.source_dataset, self.snapshot, self.local_dataset
            )),
            Mode::Full => lines.push(format!(
                "full: send {}@{} into {}",
                self.source_dataset, self.snapshot, self.local_dataset
            )),
        }
        if let Some(aside) = &self.rename_aside {
            lines.push(format!(
                "keep the current {} as {aside} (renamed, not destroyed)",
                self.local_dataset
            ));
        }
        if !self.rolled_back.is_empty() {
            let names: Vec<String> = self.rolled_back.iter().map(|s| s.to_string()).collect();
            lines.push(format!(
                "roll back local pgzfs snapshots newer than the base: {}",
                names.join(", ")
            ));
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::fake::snap;

    fn ds(name: &str) -> DatasetName {
        DatasetName::parse(name).unwrap()
    }

    fn input<'a>(
        source: &'a [Snapshot],
        local: Option<&'a [Snapshot]>,
        full: bool,
        names: &'a (DatasetName, DatasetName, SnapName),
    ) -> PlanInput<'a> {
        PlanInput {
            source_dataset: &names.0,
            source_snapshots: source,
            local_dataset: &names.1,
            local_snapshots: local,
            snapshot: &names.2,
            full,
            stamp: "20261122T010000Z",
        }
    }

    fn names() -> (DatasetName, DatasetName, SnapName) {
        (
            ds("tank/pgdata"),
            ds("tank/pgdata"),
            SnapName::parse("pgzfs-20261122T010000Z").unwrap(),
        )
    }

    #[test]
    fn a_standby_without_a_dataset_gets_a_full_copy() {
        let n = names();
        let primary = [snap("tank/pgdata@pgzfs-a", 1, 10)];
        let plan = plan(&input(&primary, None, false, &n)).unwrap();
        assert_eq!(plan.mode, Mode::Full);
        assert_eq!(plan.rename_aside, None);
    }

    #[test]
    fn a_standby_sharing_a_snapshot_gets_an_incremental_from_the_newest_common_one() {
        let n = names();
        let primary = [
            snap("tank/pgdata@pgzfs-a", 1, 10),
            snap("tank/pgdata@pgzfs-b", 2, 20),
            snap("tank/pgdata@pgzfs-c", 3, 30),
        ];
        let standby = [
            snap("tank/pgdata@pgzfs-a", 1, 5),
            snap("tank/pgdata@pgzfs-b", 2, 6),
        ];
        let plan = plan(&input(&primary, Some(&standby), false, &n)).unwrap();
        assert_eq!(
            plan.mode,
            Mode::Incremental {
                base: SnapName::parse("pgzfs-b").unwrap()
            }
        );
        assert_eq!(
            plan.base_snapshot().unwrap().to_string(),
            "tank/pgdata@pgzfs-b"
        );
        assert!(plan.rolled_back.is_empty());
    }

    #[test]
    fn an_unrelated_local_dataset_is_refused_without_full() {
        let n = names();
        let primary = [snap("tank/pgdata@pgzfs-a", 1, 10)];
        let standby = [snap("tank/pgdata@pgzfs-a", 99, 10)];
        let err = plan(&input(&primary, Some(&standby), false, &n)).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("--full"), "{err}");
    }

    #[test]
    fn full_keeps_the_old_dataset_under_a_new_name() {
        let n = names();
        let primary = [snap("tank/pgdata@pgzfs-a", 1, 10)];
        let standby = [snap("tank/pgdata@other", 99, 10)];
        let plan = plan(&input(&primary, Some(&standby), true, &n)).unwrap();
        assert_eq!(plan.mode, Mode::Full);
        assert_eq!(
            plan.rename_aside.unwrap().as_str(),
            "tank/pgdata-pgzfs-old-20261122T010000Z"
        );
    }

    #[test]
    fn someone_elses_newer_local_snapshot_is_never_rolled_back_silently() {
        let n = names();
        let primary = [snap("tank/pgdata@pgzfs-a", 1, 10)];
        let standby = [
            snap("tank/pgdata@pgzfs-a", 1, 10),
            snap("tank/pgdata@before-upgrade", 5, 11),
        ];
        let err = plan(&input(&primary, Some(&standby), false, &n)).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("before-upgrade"), "{err}");
    }

    #[test]
    fn newer_local_pgzfs_snapshots_are_listed_as_rolled_back() {
        let n = names();
        let primary = [snap("tank/pgdata@pgzfs-a", 1, 10)];
        let standby = [
            snap("tank/pgdata@pgzfs-a", 1, 10),
            snap("tank/pgdata@pgzfs-x", 5, 11),
        ];
        let plan = plan(&input(&primary, Some(&standby), false, &n)).unwrap();
        assert_eq!(plan.rolled_back, vec![SnapName::parse("pgzfs-x").unwrap()]);
        assert!(plan.describe().contains("pgzfs-x"));
    }
}

//! Planning a re-seed: a plain value computed from the two sides' snapshots, so that
//! `--dry-run` can print it and tests can check it without touching ZFS.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::zfs::features::{token_matches, PlannedTransfer, ResumeTokenInfo};
use crate::zfs::names::{DatasetName, SnapName, SnapshotName};
use crate::zfs::{newest_common, Snapshot};

use super::tree::MemberPlan;

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
    /// The cluster's other datasets (children of the dataset, tablespaces), each copied
    /// from the same cut after this one (`replicate::tree`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberPlan>,
    /// The pg_wal child, when it is not sent: the standby's own is emptied instead
    /// (`send_pg_wal = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_wal_not_sent: Option<super::tree::OwnPgWal>,
    /// Which part of the cut is atomic, where the cluster spans several datasets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_note: Option<String>,
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
        members: Vec::new(),
        pg_wal_not_sent: None,
        cut_note: None,
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
    plan.rolled_back = rolled_back_after(local, local_base)?;
    plan.mode = Mode::Incremental {
        base: common.name.snap().clone(),
    };
    Ok(plan)
}

/// The local snapshots newer than `local_base`, which an incremental receive from that
/// base rolls back; refused if any of them is not ours or is held.
pub(super) fn rolled_back_after(
    local: &[Snapshot],
    local_base: &Snapshot,
) -> Result<Vec<SnapName>> {
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
    Ok(newer.iter().map(|s| s.name.snap().clone()).collect())
}

/// A partial receive left on this node by an interrupted resumable re-seed.
pub struct ResumeInput<'a> {
    pub source_dataset: &'a DatasetName,
    pub source_snapshots: &'a [Snapshot],
    pub local_dataset: &'a DatasetName,
    /// The local dataset's snapshots: none at all after an interrupted full receive.
    pub local_snapshots: &'a [Snapshot],
    /// What the local `receive_resume_token` decodes to.
    pub token: &'a ResumeTokenInfo,
}

/// The transfer that continues the partial receive, and the source snapshot it ends at;
/// Err says why the partial state cannot be continued (it is then discarded and the
/// re-seed starts afresh). The token is data this node wrote, so nothing in it is taken
/// on trust: the snapshot must still exist on the source under the token's name *and*
/// GUID and be a complete cut, and the base must be a snapshot both sides still share.
pub fn resume<'a>(input: &ResumeInput<'a>) -> std::result::Result<(Plan, &'a Snapshot), String> {
    let token = input.token;
    let target = input
        .source_snapshots
        .iter()
        .find(|s| s.name.to_string() == token.toname)
        .ok_or_else(|| {
            format!(
                "the partial receive continues {}, which is no longer a snapshot of {}",
                token.toname, input.source_dataset
            )
        })?;
    if !target.name.snap().is_pgzfs() {
        return Err(format!("{} is not a pgzfs snapshot", target.name));
    }
    let (mode, base_guid) = match token.fromguid {
        None if input.local_snapshots.is_empty() => (Mode::Full, None),
        None => {
            return Err(format!(
                "a full receive was interrupted, but {} has snapshots of its own",
                input.local_dataset
            ))
        }
        Some(from) => {
            let local_base = input
                .local_snapshots
                .iter()
                .find(|s| s.guid == from)
                .ok_or_else(|| {
                    format!(
                        "the base (GUID {from:#x}) is gone from {}",
                        input.local_dataset
                    )
                })?;
            let source_base = input
                .source_snapshots
                .iter()
                .find(|s| s.guid == from)
                .ok_or_else(|| {
                    format!(
                        "the base (GUID {from:#x}) is gone from {}",
                        input.source_dataset
                    )
                })?;
            if let Some(newer) = input
                .local_snapshots
                .iter()
                .find(|s| s.createtxg > local_base.createtxg)
            {
                return Err(format!(
                    "{} appeared after the base {}; the stream no longer applies",
                    newer.name, local_base.name
                ));
            }
            let base = Mode::Incremental {
                base: source_base.name.snap().clone(),
            };
            (base, Some(source_base.guid))
        }
    };
    // The token must continue exactly this transfer: the name matched above, the GUID
    // is what tells a forged or recreated snapshot apart.
    token_matches(
        token,
        &PlannedTransfer {
            snapshot: &target.name,
            guid: target.guid,
            base_guid,
        },
    )?;
    let plan = Plan {
        source_dataset: input.source_dataset.clone(),
        local_dataset: input.local_dataset.clone(),
        snapshot: target.name.snap().clone(),
        mode,
        rename_aside: None,
        rolled_back: Vec::new(),
        members: Vec::new(),
        pg_wal_not_sent: None,
        cut_note: None,
    };
    Ok((plan, target))
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
        for member in &self.members {
            lines.push(member.describe(&self.snapshot));
        }
        if let Some(wal) = &self.pg_wal_not_sent {
            lines.push(wal.describe());
        }
        if let Some(note) = &self.cut_note {
            lines.push(format!("cut: {note}"));
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

    fn token(toname: &str, toguid: u64, fromguid: Option<u64>) -> ResumeTokenInfo {
        ResumeTokenInfo {
            toname: toname.to_string(),
            toguid,
            fromguid,
            compressed: false,
            raw: false,
            embedded: false,
            large_blocks: false,
        }
    }

    fn resumed(
        source: &[Snapshot],
        local: &[Snapshot],
        token: &ResumeTokenInfo,
    ) -> std::result::Result<Plan, String> {
        let n = names();
        resume(&ResumeInput {
            source_dataset: &n.0,
            source_snapshots: source,
            local_dataset: &n.1,
            local_snapshots: local,
            token,
        })
        .map(|(plan, target)| {
            assert_eq!(target.name.snap(), &plan.snapshot);
            plan
        })
    }

    #[test]
    fn an_interrupted_incremental_continues_from_the_same_base_to_the_same_snapshot() {
        let primary = [
            snap("tank/pgdata@pgzfs-a", 1, 10),
            snap("tank/pgdata@pgzfs-b", 2, 20),
            snap("tank/pgdata@pgzfs-c", 3, 30),
        ];
        let standby = [snap("tank/pgdata@pgzfs-a", 1, 5)];
        let plan = resumed(
            &primary,
            &standby,
            &token("tank/pgdata@pgzfs-b", 2, Some(1)),
        )
        .unwrap();
        assert_eq!(
            plan.snapshot.as_str(),
            "pgzfs-b",
            "the token's snapshot, not the newest"
        );
        assert_eq!(
            plan.mode,
            Mode::Incremental {
                base: SnapName::parse("pgzfs-a").unwrap()
            }
        );
        assert_eq!(plan.rename_aside, None);
        assert!(plan.rolled_back.is_empty());
    }

    #[test]
    fn an_interrupted_full_receive_continues_into_the_partial_dataset() {
        let primary = [snap("tank/pgdata@pgzfs-b", 2, 20)];
        let plan = resumed(&primary, &[], &token("tank/pgdata@pgzfs-b", 2, None)).unwrap();
        assert_eq!(plan.mode, Mode::Full);
        assert_eq!(
            plan.rename_aside, None,
            "the partial dataset is continued, not renamed"
        );
    }

    #[test]
    fn a_token_that_no_longer_fits_the_source_or_the_standby_is_not_followed() {
        let primary = [
            snap("tank/pgdata@pgzfs-a", 1, 10),
            snap("tank/pgdata@pgzfs-b", 2, 20),
            snap("tank/pgdata@manual", 4, 40),
        ];
        let standby = [snap("tank/pgdata@pgzfs-a", 1, 5)];
        for (token, local, why) in [
            (
                token("tank/pgdata@pgzfs-gone", 9, Some(1)),
                &standby[..],
                "no longer a snapshot",
            ),
            (
                token("tank/pgdata@pgzfs-b", 99, Some(1)),
                &standby[..],
                "different snapshot",
            ),
            (
                token("tank/other@pgzfs-b", 2, Some(1)),
                &standby[..],
                "no longer a snapshot",
            ),
            (
                token("tank/pgdata@manual", 4, Some(1)),
                &standby[..],
                "not a pgzfs snapshot",
            ),
            (
                token("tank/pgdata@pgzfs-b", 2, Some(77)),
                &standby[..],
                "base (GUID 0x4d) is gone",
            ),
            (
                token("tank/pgdata@pgzfs-b", 2, None),
                &standby[..],
                "has snapshots of its own",
            ),
        ] {
            let err = resumed(&primary, local, &token).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        // A local snapshot newer than the base appeared since (someone took one by hand).
        let moved_on = [
            snap("tank/pgdata@pgzfs-a", 1, 5),
            snap("tank/pgdata@pgzfs-local", 8, 6),
        ];
        let err = resumed(
            &primary,
            &moved_on,
            &token("tank/pgdata@pgzfs-b", 2, Some(1)),
        )
        .unwrap_err();
        assert!(err.contains("appeared after the base"), "{err}");
        // The base is gone from the source (pruned there).
        let pruned = [snap("tank/pgdata@pgzfs-b", 2, 20)];
        let err =
            resumed(&pruned, &standby, &token("tank/pgdata@pgzfs-b", 2, Some(1))).unwrap_err();
        assert!(err.contains("gone from tank/pgdata"), "{err}");
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

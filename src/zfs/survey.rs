//! A dataset and everything below it, learnt in one question.
//!
//! A re-seed needs to know of the source's dataset: that it exists, its snapshots, its
//! children, where each is mounted and each child's snapshots. Asked one at a time that
//! was six round trips before anything happened (about 0.7 s over SSH on the lab, where
//! every remote command pays for a session and a login shell). `zfs get -r` of every
//! property those questions need answers all of them at once, on zfs-fuse and OpenZFS
//! alike.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::cli::{children_from_rows, mountpoint_from_value, snapshots_from_rows};
use super::names::DatasetName;
use super::{prop, Snapshot};
use crate::error::Result;

/// What [`super::Zfs::survey`] found below (and including) one dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    /// Every dataset below the surveyed one (not itself), in `zfs get`'s order.
    pub children: Vec<DatasetName>,
    /// Where each dataset (the surveyed one too) is mounted; None for `none`, `legacy`
    /// or a dataset that cannot be mounted.
    mountpoints: BTreeMap<DatasetName, Option<PathBuf>>,
    /// Each dataset's own snapshots, oldest first.
    snapshots: BTreeMap<DatasetName, Vec<Snapshot>>,
    /// pgzfs's records on the surveyed dataset itself (the fork point of a promotion).
    records: BTreeMap<String, String>,
}

impl Survey {
    /// Where `dataset` is mounted; None also for a dataset this survey did not see.
    pub fn mountpoint(&self, dataset: &DatasetName) -> Option<PathBuf> {
        self.mountpoints.get(dataset).cloned().flatten()
    }

    /// `dataset`'s own snapshots, oldest first; empty for a dataset this survey did not see.
    pub fn snapshots(&self, dataset: &DatasetName) -> Vec<Snapshot> {
        self.snapshots.get(dataset).cloned().unwrap_or_default()
    }

    /// A pgzfs property set on the surveyed dataset itself ([`DATASET_RECORDS`]).
    pub fn record(&self, name: &str) -> Option<&str> {
        self.records.get(name).map(String::as_str)
    }

    /// Built from the answers of the one-by-one questions, for backends without a
    /// cheaper way.
    pub fn from_parts(
        children: Vec<DatasetName>,
        mountpoints: BTreeMap<DatasetName, Option<PathBuf>>,
        snapshots: BTreeMap<DatasetName, Vec<Snapshot>>,
        records: BTreeMap<String, String>,
    ) -> Survey {
        Survey {
            children,
            mountpoints,
            snapshots,
            records,
        }
    }

    /// From the rows of `zfs get -H -p -r -o name,property,value` with
    /// [`properties`] of `dataset`.
    pub fn from_rows(dataset: &DatasetName, rows: &[(String, String, String)]) -> Result<Survey> {
        let types: Vec<(String, String, String)> = rows
            .iter()
            .filter(|(_, property, _)| property == "type")
            .cloned()
            .collect();
        let children = children_from_rows(dataset, &types)?;
        // Only the snapshots' own properties: `type` and `mountpoint` would otherwise be
        // kept as if they were pgzfs's.
        let snapshot_rows: Vec<(String, String, String)> = rows
            .iter()
            .filter(|(name, property, _)| {
                name.contains('@') && property != "type" && property != "mountpoint"
            })
            .cloned()
            .collect();
        let mut mountpoints = BTreeMap::new();
        let mut snapshots = BTreeMap::new();
        for member in std::iter::once(dataset).chain(children.iter()) {
            let at = rows
                .iter()
                .find(|(name, property, _)| name == member.as_str() && property == "mountpoint")
                .and_then(|(_, _, value)| mountpoint_from_value(value));
            mountpoints.insert(member.clone(), at);
            snapshots.insert(member.clone(), snapshots_from_rows(member, &snapshot_rows)?);
        }
        let records = rows
            .iter()
            .filter(|(name, property, value)| {
                name == dataset.as_str()
                    && DATASET_RECORDS.contains(&property.as_str())
                    && value != "-"
            })
            .map(|(_, property, value)| (property.clone(), value.clone()))
            .collect();
        Ok(Survey {
            children,
            mountpoints,
            snapshots,
            records,
        })
    }
}

/// pgzfs's records on a dataset (not a snapshot) that a survey brings along: where the
/// promoted node forked, which a rejoin compares with the old primary's last checkpoint.
pub const DATASET_RECORDS: [&str; 2] = [prop::FORK_LSN, prop::FORK_TIMELINE];

/// The properties one `zfs get -r` asks for: the datasets' type and mountpoint, the
/// snapshots' identity and holds, and pgzfs's own records.
pub fn properties() -> Vec<&'static str> {
    let mut properties = vec!["type", "mountpoint", "guid", "createtxg", "userrefs"];
    properties.extend(prop::ALL);
    properties.extend(DATASET_RECORDS);
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, property: &str, value: &str) -> (String, String, String) {
        (name.into(), property.into(), value.into())
    }

    #[test]
    fn one_recursive_get_answers_for_the_dataset_its_children_and_their_snapshots() {
        let pg = DatasetName::parse("tank/pg").unwrap();
        let wal = DatasetName::parse("tank/pg/wal").unwrap();
        let rows = vec![
            row("tank/pg", "type", "filesystem"),
            row("tank/pg", "mountpoint", "/db/pg"),
            row("tank/pg", "guid", "11"),
            row("tank/pg", "pgzfs:fork_lsn", "0/5000060"),
            row("tank/pg", "pgzfs:fork_timeline", "-"),
            row("tank/pg@pgzfs-1", "type", "snapshot"),
            row("tank/pg@pgzfs-1", "mountpoint", "-"),
            row("tank/pg@pgzfs-1", "guid", "101"),
            row("tank/pg@pgzfs-1", "createtxg", "7"),
            row("tank/pg@pgzfs-1", "userrefs", "1"),
            row("tank/pg@pgzfs-1", "pgzfs:lsn", "0/3000028"),
            row("tank/pg/wal", "type", "filesystem"),
            row("tank/pg/wal", "mountpoint", "/db/pg/data/pg_wal"),
            row("tank/pg/wal@pgzfs-1", "type", "snapshot"),
            row("tank/pg/wal@pgzfs-1", "guid", "202"),
            row("tank/pg/wal@pgzfs-1", "createtxg", "7"),
            row("tank/pg/scratch", "type", "filesystem"),
            row("tank/pg/scratch", "mountpoint", "none"),
        ];
        let survey = Survey::from_rows(&pg, &rows).unwrap();
        assert_eq!(
            survey.children,
            vec![wal.clone(), DatasetName::parse("tank/pg/scratch").unwrap()]
        );
        assert_eq!(survey.mountpoint(&pg), Some(PathBuf::from("/db/pg")));
        assert_eq!(
            survey.mountpoint(&wal),
            Some(PathBuf::from("/db/pg/data/pg_wal"))
        );
        assert_eq!(
            survey.mountpoint(&DatasetName::parse("tank/pg/scratch").unwrap()),
            None,
            "mountpoint=none is not a path"
        );
        let own = survey.snapshots(&pg);
        assert_eq!(own.len(), 1, "the child's snapshot is the child's");
        assert_eq!(
            (own[0].guid, own[0].createtxg, own[0].userrefs),
            (101, 7, 1)
        );
        assert_eq!(own[0].prop("pgzfs:lsn"), Some("0/3000028"));
        assert!(
            own[0].props.keys().all(|k| k.starts_with("pgzfs:")),
            "type and mountpoint are not kept as pgzfs records: {:?}",
            own[0].props
        );
        assert_eq!(survey.snapshots(&wal)[0].guid, 202);
        assert_eq!(survey.record(prop::FORK_LSN), Some("0/5000060"));
        assert_eq!(survey.record(prop::FORK_TIMELINE), None, "unset is \"-\"");
    }
}

//! The backup-safe cut: a ZFS snapshot of the primary's data taken while PostgreSQL is in
//! (non-exclusive) backup mode, all within one session, so that the snapshot plus the
//! returned backup_label is a valid base backup. The snapshot records its own LSNs,
//! timeline and system identifier as user properties.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::pg::{BackupStop, Pg};
use crate::steps::Steps;
use crate::zfs::names::{DatasetName, SnapName, SnapshotName};
use crate::zfs::{prop, Snapshot, Zfs};

/// What the cut produced.
#[derive(Debug, Clone)]
pub struct Cut {
    pub snapshot: SnapshotName,
    pub start_lsn: String,
    pub stop: BackupStop,
    pub timeline: u32,
    pub system_identifier: u64,
}

/// Take a backup-safe snapshot of `dataset` (recursively) on the primary's ZFS. The
/// backup is always stopped, even when the snapshot fails; and if this process dies half
/// way, PostgreSQL ends the backup with the session.
pub fn take(
    steps: &mut Steps,
    primary: &mut Pg,
    zfs: &dyn Zfs,
    dataset: &DatasetName,
    name: &SnapName,
    label: &str,
    source_node: &str,
) -> Result<Cut> {
    let existing = zfs.snapshots(dataset)?;
    let snapshot = dataset.snapshot(&unique_snapshot_name(name, &existing)?);
    let label = format!("{label} {}", snapshot.snap());
    let start_lsn = steps.run("backup start", || primary.backup_start(&label))?;
    let snapped = steps.run("snapshot", || zfs.snapshot_recursive(&snapshot));
    let stop = steps.run("backup stop", || primary.backup_stop());
    snapped?;
    let stop = stop?;
    let timeline = primary.current_timeline()?;
    let system_identifier = primary.system_identifier()?;
    let mut props = vec![
        (prop::LSN, start_lsn.clone()),
        (prop::STOP_LSN, stop.stop_lsn.clone()),
        (prop::TIMELINE, timeline.to_string()),
        (prop::SYSTEM_ID, system_identifier.to_string()),
        (prop::PG_MAJOR, primary.major().to_string()),
        (prop::BACKUP_LABEL, hex(&stop.labelfile)),
        (prop::SOURCE_NODE, source_node.to_string()),
    ];
    if !stop.spcmapfile.is_empty() {
        props.push((prop::TABLESPACE_MAP, hex(&stop.spcmapfile)));
    }
    zfs.set_snapshot_props(&snapshot, &props)?;
    tracing::info!(
        "took {snapshot}: backup from {start_lsn} to {} on timeline {timeline}",
        stop.stop_lsn
    );
    Ok(Cut {
        snapshot,
        start_lsn,
        stop,
        timeline,
        system_identifier,
    })
}

/// Snapshot names carry the time to the second; a second re-seed within the same second
/// gets a suffix rather than a collision.
fn unique_snapshot_name(planned: &SnapName, existing: &[Snapshot]) -> Result<SnapName> {
    let taken: BTreeSet<&str> = existing.iter().map(|s| s.name.snap().as_str()).collect();
    if !taken.contains(planned.as_str()) {
        return Ok(planned.clone());
    }
    (2..100)
        .map(|n| format!("{planned}-{n}"))
        .find(|name| !taken.contains(name.as_str()))
        .map(|name| SnapName::parse(&name))
        .unwrap_or_else(|| Err(Error::failed("too many snapshots with the same timestamp")))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`hex`], for reading a stored backup_label back.
pub fn unhex(text: &str) -> Option<String> {
    if text.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::fake::snap;

    #[test]
    fn a_second_reseed_in_the_same_second_gets_its_own_snapshot_name() {
        let planned = SnapName::parse("pgzfs-20261122T010000Z").unwrap();
        let existing = [snap("tank/pg@pgzfs-20261122T010000Z", 1, 1)];
        assert_eq!(
            unique_snapshot_name(&planned, &existing).unwrap().as_str(),
            "pgzfs-20261122T010000Z-2"
        );
        assert_eq!(unique_snapshot_name(&planned, &[]).unwrap(), planned);
    }

    #[test]
    fn backup_labels_are_stored_in_a_property_safe_form() {
        assert_eq!(hex("START\n"), "53544152540a");
        assert_eq!(
            unhex(&hex("START WAL LOCATION: 0/2000028\n")).unwrap(),
            "START WAL LOCATION: 0/2000028\n"
        );
        assert_eq!(unhex("zz"), None);
    }
}

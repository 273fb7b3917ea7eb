//! The backup-safe cut: a ZFS snapshot of the primary's data taken while PostgreSQL is in
//! (non-exclusive) backup mode, all within one session, so that the snapshot plus the
//! returned backup_label is a valid base backup. The snapshot records its own LSNs,
//! timeline and system identifier as user properties.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Node;
use crate::datasets::ClusterDatasets;
use crate::error::{Error, Result};
use crate::exec::{remote_pgzfs, Runner};
use crate::pg::{BackupStop, Pg};
use crate::steps::{round, Steps};
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
///
/// `known`: the snapshots of the cluster's dataset and tablespaces as the caller read
/// them moments ago, so that a free name costs no round trip; None: read them here.
#[allow(clippy::too_many_arguments)]
pub fn take(
    steps: &mut Steps,
    primary: &mut Pg,
    zfs: &dyn Zfs,
    cluster: &ClusterDatasets,
    name: &SnapName,
    label: &str,
    source_node: &str,
    known: Option<&[Snapshot]>,
) -> Result<Cut> {
    let dataset = cluster.root();
    let read_names = || {
        let mut existing = zfs.snapshots(dataset)?;
        for ts in cluster.tablespaces() {
            existing.extend(zfs.snapshots(&ts.dataset)?);
        }
        Ok(existing)
    };
    // A primary's timeline and system identifier cannot change during its backup, so
    // they are asked first and travel with the snapshot itself.
    let timeline = primary.current_timeline()?;
    let system_identifier = primary.system_identifier()?;
    let (snapshot, start_lsn, stop) = under_a_free_name(name, known, read_names, |free| {
        let snapshot = dataset.snapshot(free);
        let named_label = format!("{label} {free}");
        let start_lsn = steps.run("backup start", || primary.backup_start(&named_label))?;
        let known_before = [
            (prop::LSN, start_lsn.clone()),
            (prop::TIMELINE, timeline.to_string()),
            (prop::SYSTEM_ID, system_identifier.to_string()),
            (prop::PG_MAJOR, primary.major().to_string()),
            (prop::SOURCE_NODE, source_node.to_string()),
        ];
        let snapped = steps.run("snapshot", || {
            // The tree in one `-r` call; tablespaces with it where the ZFS takes several
            // names at once, otherwise one by one, still inside the backup session.
            crate::datasets::snapshot_cut(zfs, cluster, free, &known_before)
        });
        // Ended whatever the snapshot did: a name taken meanwhile is tried again with a
        // backup of its own, whose label names the snapshot it belongs to.
        let stop = steps.run("backup stop", || primary.backup_stop());
        snapped?;
        Ok((snapshot, start_lsn, stop?))
    })?;
    // The backup_label is written last: a snapshot that has it is a complete cut, one
    // without it (the process died between snapshot and here) is never used as a seed.
    let mut known_after = vec![(prop::STOP_LSN, stop.stop_lsn.clone())];
    if !stop.spcmapfile.is_empty() {
        known_after.push((prop::TABLESPACE_MAP, hex(&stop.spcmapfile)));
    }
    known_after.push((prop::BACKUP_LABEL, hex(&stop.labelfile)));
    steps.run("backup record", || {
        zfs.set_snapshot_props(&snapshot, &known_after)
    })?;
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

/// Take a crash-consistent cut (`cut = "atomic"`): one atomic snapshot of `dataset`, no
/// backup session and no forced checkpoint. PostgreSQL treats such a snapshot like the
/// data of a crashed server: a standby started on it replays from the last checkpoint in
/// pg_control through the WAL in pg_wal, then streams. Only sound when every file of the
/// cluster is in this one snapshot, which [`atomic_snapshot_covers`] decides beforehand.
/// No backup_label exists, so the cut is recorded complete with the snapshot itself.
///
/// `known`: the dataset's snapshots as the caller read them moments ago (see [`take`]).
pub fn take_atomic(
    steps: &mut Steps,
    primary: &mut Pg,
    zfs: &dyn Zfs,
    dataset: &DatasetName,
    name: &SnapName,
    source_node: &str,
    known: Option<&[Snapshot]>,
) -> Result<Cut> {
    let timeline = primary.current_timeline()?;
    let system_identifier = primary.system_identifier()?;
    let read_names = || zfs.snapshots(dataset);
    let (snapshot, start_lsn) = under_a_free_name(name, known, read_names, |free| {
        let snapshot = dataset.snapshot(free);
        // WAL written before this position is in the snapshot; replay reaches at least
        // here.
        let start_lsn = primary.current_lsn()?.to_string();
        let props = [
            (prop::LSN, start_lsn.clone()),
            (prop::TIMELINE, timeline.to_string()),
            (prop::SYSTEM_ID, system_identifier.to_string()),
            (prop::PG_MAJOR, primary.major().to_string()),
            (prop::SOURCE_NODE, source_node.to_string()),
            (prop::CUT, ATOMIC.to_string()),
        ];
        steps.run("snapshot", || zfs.snapshot_recursive(&snapshot, &props))?;
        Ok((snapshot, start_lsn))
    })?;
    // Informational only (the summary's stop_lsn): an upper bound of what the snapshot
    // holds. Not recorded on the snapshot, which would cost another remote call.
    let stop_lsn = primary.current_lsn()?.to_string();
    tracing::info!(
        "took {snapshot}: crash-consistent, WAL up to about {stop_lsn} on timeline {timeline}"
    );
    Ok(Cut {
        snapshot,
        start_lsn,
        stop: BackupStop {
            stop_lsn,
            labelfile: String::new(),
            spcmapfile: String::new(),
        },
        timeline,
        system_identifier,
    })
}

/// The value of [`prop::CUT`] on a crash-consistent cut.
const ATOMIC: &str = "atomic";

/// `cut`: how a re-seed makes the snapshot of the source a consistent image.
/// - `backup` (the default): a backup-safe cut, the snapshot taken between
///   pg_backup_start (a forced checkpoint) and pg_backup_stop; the standby starts from
///   the backup_label. Works with any layout, needs the backup grant (see `backup_via`).
/// - `atomic`: the snapshot alone, crash-consistent, which PostgreSQL documents as a valid
///   base backup on a file system with atomic snapshots, provided that data, pg_wal and
///   every tablespace are in that one snapshot. No checkpoint, no backup session, no
///   backup grant; the standby replays from the source's last checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CutMode {
    #[default]
    Backup,
    Atomic,
}

impl CutMode {
    pub(crate) fn parse(value: &str) -> Result<CutMode, String> {
        match value {
            "backup" => Ok(CutMode::Backup),
            "atomic" => Ok(CutMode::Atomic),
            other => Err(format!(
                "{other:?} is not a way to cut; use \"backup\" or \"atomic\""
            )),
        }
    }
}

/// Where the parts of a source's cluster live, as far as an atomic cut cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The dataset holding the data directory; its children (pg_wal) are in the same
    /// `zfs snapshot -r`, which is atomic.
    pub dataset: DatasetName,
    /// Where it is mounted on the source; None: not known.
    pub mountpoint: Option<std::path::PathBuf>,
    /// The locations of the cluster's own tablespaces (not pg_default, pg_global).
    pub tablespaces: Vec<std::path::PathBuf>,
}

/// Whether one atomic snapshot of `layout.dataset` holds every file of the cluster: Err
/// says which part it would miss. The dataset and its children (pg_wal on a child, say)
/// are taken by one `zfs snapshot -r`, which is atomic; a tablespace outside the
/// dataset's mountpoint is refused, because nothing snapshots it in the same instant.
pub fn atomic_snapshot_covers(layout: &ClusterLayout) -> std::result::Result<(), String> {
    for location in &layout.tablespaces {
        let inside = layout.mountpoint.as_deref().is_some_and(|mountpoint| {
            location.is_absolute()
                && !location
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                && location.starts_with(mountpoint)
        });
        if !inside {
            return Err(format!(
                "the tablespace at {} lies outside {} (mounted at {}), so no atomic snapshot of that dataset covers it",
                location.display(),
                layout.dataset,
                layout
                    .mountpoint
                    .as_deref()
                    .map(|m| m.display().to_string())
                    .unwrap_or_else(|| "an unknown place".into())
            ));
        }
    }
    Ok(())
}

/// A cut as `pgzfs snapshot --json` prints it: everything a standby needs to start from
/// the snapshot, and the seconds each step of the cut took on the node that took it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub snapshot: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub system_identifier: u64,
    pub backup_label: String,
    #[serde(default)]
    pub tablespace_map: String,
    pub seconds: f64,
    #[serde(default)]
    pub steps: BTreeMap<String, f64>,
}

impl Report {
    pub fn new(node: &str, cut: &Cut, steps: &Steps) -> Report {
        Report {
            node: node.to_string(),
            snapshot: cut.snapshot.to_string(),
            start_lsn: cut.start_lsn.clone(),
            stop_lsn: cut.stop.stop_lsn.clone(),
            timeline: cut.timeline,
            system_identifier: cut.system_identifier,
            backup_label: cut.stop.labelfile.clone(),
            tablespace_map: cut.stop.spcmapfile.clone(),
            seconds: round(steps.total().as_secs_f64()),
            steps: steps.in_order().into_iter().collect(),
        }
    }

    /// The cut this report describes, which must be a snapshot of `dataset`.
    fn into_cut(self, dataset: &DatasetName) -> Result<Cut> {
        let snapshot = SnapshotName::parse(&self.snapshot)?;
        if snapshot.dataset() != dataset || !snapshot.snap().is_pgzfs() {
            return Err(Error::failed(format!(
                "the source reported the cut {snapshot}, which is not a pgzfs snapshot of {dataset}"
            )));
        }
        if self.backup_label.is_empty() {
            return Err(Error::failed(format!(
                "the source reported the cut {snapshot} without its backup_label"
            )));
        }
        Ok(Cut {
            snapshot,
            start_lsn: self.start_lsn,
            stop: BackupStop {
                stop_lsn: self.stop_lsn,
                labelfile: self.backup_label,
                spcmapfile: self.tablespace_map,
            },
            timeline: self.timeline,
            system_identifier: self.system_identifier,
        })
    }
}

/// The cut taken by the source node itself (`backup_via = "ssh"`): its pgzfs holds the
/// backup session with its local PostgreSQL, so the backup privilege never leaves it. One
/// SSH command, which `pgzfs serve` allows; the source's own step timings are recorded
/// under their usual names, and what is left of the wall time as "cut over ssh".
#[allow(clippy::too_many_arguments)]
pub fn take_on_source(
    steps: &mut Steps,
    ssh: &dyn Runner,
    pgzfs_bin: &Path,
    config: &Path,
    source_node: &str,
    dataset: &DatasetName,
    for_node: &str,
) -> Result<Cut> {
    let cmd = remote_pgzfs(pgzfs_bin, config, source_node)
        .args(["snapshot", "--json", "--for", for_node]);
    let started = Instant::now();
    let stdout = ssh
        .run(&cmd)
        .map_err(|e| e.context(format!("the backup-safe snapshot on {source_node}")))?;
    let wall = started.elapsed();
    let report: Report = serde_json::from_str(&stdout).map_err(|e| {
        Error::failed(format!(
            "{source_node} answered `pgzfs snapshot --json` with something else ({e}): {}",
            stdout.chars().take(200).collect::<String>()
        ))
    })?;
    let mut remote_total = 0.0;
    for name in REMOTE_STEPS {
        // The other node's numbers are data: 1e300, inf or NaN must not panic here.
        if let Some(took) = report.steps.get(name).and_then(|s| remote_seconds(*s)) {
            steps.record(name, took);
            remote_total += took.as_secs_f64();
        }
    }
    let overhead = (wall.as_secs_f64() - remote_total).max(0.0);
    if let Some(overhead) = remote_seconds(overhead) {
        steps.record("cut over ssh", overhead);
    }
    let cut = report.into_cut(dataset)?;
    tracing::info!(
        "{source_node} took {}: backup from {} to {} on timeline {}",
        cut.snapshot,
        cut.start_lsn,
        cut.stop.stop_lsn,
        cut.timeline
    );
    Ok(cut)
}

/// The steps of [`take`], as a source node reports them.
const REMOTE_STEPS: [&str; 4] = ["backup start", "snapshot", "backup stop", "backup record"];

impl Cut {
    /// The cut a snapshot recorded in its properties when it was taken: what a resumed
    /// re-seed starts from, since the backup it belongs to ended long ago. Only a complete
    /// cut (one with its backup_label, which is written last) qualifies.
    pub fn recorded(snapshot: &Snapshot) -> std::result::Result<Cut, String> {
        let name = &snapshot.name;
        let text = |prop: &str| {
            snapshot
                .prop(prop)
                .filter(|v| !v.is_empty() && *v != "-")
                .ok_or_else(|| format!("{name} has no {prop}, so it is not a complete pgzfs cut"))
        };
        let number = |prop: &str| {
            text(prop)?
                .parse::<u64>()
                .map_err(|_| format!("the {prop} of {name} is not a number"))
        };
        let timeline = |n: u64| {
            u32::try_from(n).map_err(|_| format!("the timeline of {name} is out of range"))
        };
        if snapshot.prop(prop::CUT) == Some(ATOMIC) {
            // Complete by construction: its properties were set with the snapshot.
            return Ok(Cut {
                snapshot: name.clone(),
                start_lsn: text(prop::LSN)?.to_string(),
                stop: BackupStop {
                    stop_lsn: text(prop::LSN)?.to_string(),
                    labelfile: String::new(),
                    spcmapfile: String::new(),
                },
                timeline: timeline(number(prop::TIMELINE)?)?,
                system_identifier: number(prop::SYSTEM_ID)?,
            });
        }
        let label = unhex(text(prop::BACKUP_LABEL)?)
            .ok_or_else(|| format!("the {} of {name} is not readable", prop::BACKUP_LABEL))?;
        let spcmapfile = match snapshot.prop(prop::TABLESPACE_MAP) {
            Some(map) if !map.is_empty() && map != "-" => unhex(map)
                .ok_or_else(|| format!("the {} of {name} is not readable", prop::TABLESPACE_MAP))?,
            _ => String::new(),
        };
        Ok(Cut {
            snapshot: name.clone(),
            start_lsn: text(prop::LSN)?.to_string(),
            stop: BackupStop {
                stop_lsn: text(prop::STOP_LSN)?.to_string(),
                labelfile: label,
                spcmapfile,
            },
            timeline: timeline(number(prop::TIMELINE)?)?,
            system_identifier: number(prop::SYSTEM_ID)?,
        })
    }
}

/// Run `cut` under `planned`, or under the first free name after it, judged by `known`
/// (the caller's list, read moments ago: no round trip) or else by `read`. When a stale
/// list led `cut` into a name taken since, by another cut in the same second, the names
/// are read afresh and `cut` runs once more; by then it must have undone what it began
/// (a backup session is ended before the snapshot's error is returned).
fn under_a_free_name<T>(
    planned: &SnapName,
    known: Option<&[Snapshot]>,
    read: impl FnOnce() -> Result<Vec<Snapshot>>,
    mut cut: impl FnMut(&SnapName) -> Result<T>,
) -> Result<T> {
    if let Some(known) = known {
        match cut(&unique_snapshot_name(planned, known)?) {
            Err(e) if name_taken(&e) => {
                tracing::info!("{e}; cutting again under a name that is free now")
            }
            done => return done,
        }
    }
    cut(&unique_snapshot_name(planned, &read()?)?)
}

/// Whether a `zfs snapshot` failed because a snapshot of that name exists (zfs-fuse and
/// OpenZFS: "dataset already exists").
fn name_taken(e: &Error) -> bool {
    e.message().contains("already exists")
}

/// Snapshot names carry the time to the second; a second re-seed within the same second
/// gets a suffix rather than a collision.
pub fn unique_snapshot_name(planned: &SnapName, existing: &[Snapshot]) -> Result<SnapName> {
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

/// The backup-safe cut of `local`'s dataset, named for `now`. The daemon calls this on
/// its schedule, with the session and the lock it already holds.
pub fn take_of_node(
    steps: &mut Steps,
    primary: &mut Pg,
    zfs: &dyn Zfs,
    local: &Node,
    now: SystemTime,
    label: &str,
) -> Result<Cut> {
    if !zfs.exists(&local.dataset)? {
        return Err(Error::failed(format!(
            "dataset {} does not exist on {}",
            local.dataset,
            zfs.location()
        )));
    }
    let cluster = ClusterDatasets::discover(zfs, &local.dataset, &local.tablespaces)?;
    take(
        steps,
        primary,
        zfs,
        &cluster,
        &SnapName::pgzfs_at(now),
        label,
        &local.name,
        None,
    )
}

/// `backup_via`: how a standby's re-seed puts the source into backup mode around its
/// snapshot. A non-exclusive backup lives and dies with one PostgreSQL session, so start,
/// snapshot and stop must happen inside one process that holds that session.
/// - `postgres` (the default): the standby holds the session itself, over its own
///   connection to the source's PostgreSQL as `pg_user`, and snapshots over SSH. This is
///   what the shell scripts pgzfs replaces did, so existing grants keep working.
/// - `ssh`: the standby runs `pgzfs snapshot` on the source over SSH (a command
///   `pgzfs serve` allows), and the source's pgzfs holds the session with its local
///   PostgreSQL. The backup privilege then stays on the source: the standby's role needs
///   no `pg_backup_start` grant there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackupVia {
    #[default]
    Postgres,
    Ssh,
}

impl BackupVia {
    pub(crate) fn parse(value: &str) -> Result<BackupVia, String> {
        match value {
            "postgres" => Ok(BackupVia::Postgres),
            "ssh" => Ok(BackupVia::Ssh),
            other => Err(format!(
                "{other:?} is not a way to take the backup; use \"postgres\" or \"ssh\""
            )),
        }
    }
}

/// A duration in seconds as another node reported it: None unless it is a number
/// between 0 and a day (no step of a cut takes longer; anything else is garbage).
pub fn remote_seconds(seconds: f64) -> Option<std::time::Duration> {
    const DAY: f64 = 86_400.0;
    if !(0.0..=DAY).contains(&seconds) {
        return None;
    }
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::fake::snap;

    #[test]
    fn absurd_step_times_from_the_other_node_are_ignored_not_a_panic() {
        for garbage in [1e300, f64::INFINITY, f64::NAN, -1.0, 86_401.0] {
            assert_eq!(remote_seconds(garbage), None, "{garbage}");
        }
        assert_eq!(
            remote_seconds(1.5),
            Some(std::time::Duration::from_millis(1500))
        );
    }

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
    fn a_name_taken_since_the_preflight_read_its_names_is_cut_again_under_a_free_one() {
        let planned = SnapName::parse("pgzfs-20261122T010000Z").unwrap();
        // The standby's preflight saw no cut of this second; another standby's re-seed,
        // ahead of it on the primary's lock, took one meanwhile.
        let now_there = vec![snap("tank/pg@pgzfs-20261122T010000Z", 1, 1)];
        let mut tried = Vec::new();
        let cut = under_a_free_name(&planned, Some(&[]), || Ok(now_there.clone()), |free| {
            tried.push(free.to_string());
            if free == &planned {
                Err(Error::failed(
                    "cannot create snapshot 'tank/pg@pgzfs-20261122T010000Z': dataset already exists",
                ))
            } else {
                Ok(free.clone())
            }
        })
        .unwrap();
        assert_eq!(cut.as_str(), "pgzfs-20261122T010000Z-2");
        assert_eq!(
            tried,
            ["pgzfs-20261122T010000Z", "pgzfs-20261122T010000Z-2"]
        );

        // Any other failure is the cut's failure, with no second try; and a list read
        // here (none known) is not second-guessed.
        let mut tries = 0;
        let failed = under_a_free_name(
            &planned,
            Some(&[]),
            || Ok(Vec::new()),
            |_| {
                tries += 1;
                Err::<(), _>(Error::failed("cannot create snapshot: out of space"))
            },
        );
        assert!(failed.is_err() && tries == 1);
        let mut tries = 0;
        let failed = under_a_free_name(
            &planned,
            None,
            || Ok(Vec::new()),
            |_| {
                tries += 1;
                Err::<(), _>(Error::failed("dataset already exists"))
            },
        );
        assert!(failed.is_err() && tries == 1, "read here, tried once");
    }

    /// The source node as seen over SSH: it answers every command with `stdout`.
    struct Answers(String, std::cell::RefCell<Vec<crate::exec::Cmd>>);

    impl Runner for Answers {
        fn output(&self, cmd: &crate::exec::Cmd) -> Result<crate::exec::Output> {
            use std::os::unix::process::ExitStatusExt;
            self.1.borrow_mut().push(cmd.clone());
            Ok(crate::exec::Output {
                status: std::process::ExitStatus::from_raw(0),
                stdout: self.0.clone(),
                stderr: String::new(),
            })
        }
        fn source(&self, _: &crate::exec::Cmd) -> Result<Box<dyn crate::transfer::Source>> {
            unreachable!("the cut streams nothing")
        }
        fn sink(&self, _: &crate::exec::Cmd) -> Result<Box<dyn crate::transfer::Sink>> {
            unreachable!("the cut streams nothing")
        }
        fn describe(&self) -> String {
            "db1".into()
        }
    }

    fn report(snapshot: &str, label: &str) -> String {
        serde_json::json!({
            "node": "db1",
            "snapshot": snapshot,
            "start_lsn": "0/5000028",
            "stop_lsn": "0/5000100",
            "timeline": 2,
            "system_identifier": 7301234567890123456u64,
            "backup_label": label,
            "seconds": 0.4,
            "steps": {"backup start": 0.1, "snapshot": 0.2, "backup stop": 0.05, "backup record": 0.05, "unknown": 9.0}
        })
        .to_string()
    }

    fn take_on_db1(stdout: String) -> (Result<Cut>, Steps, Vec<crate::exec::Cmd>) {
        let ssh = Answers(stdout, Default::default());
        let mut steps = Steps::default();
        let cut = take_on_source(
            &mut steps,
            &ssh,
            Path::new("/usr/local/bin/pgzfs"),
            Path::new("/usr/local/etc/pgzfs.toml"),
            "db1",
            &DatasetName::parse("tank/pg").unwrap(),
            "db2",
        );
        (cut, steps, ssh.1.into_inner())
    }

    #[test]
    fn a_cut_taken_by_the_source_carries_its_backup_label_and_step_times() {
        let (cut, steps, sent) = take_on_db1(report(
            "tank/pg@pgzfs-20261122T010000Z",
            "START WAL LOCATION: 0/5000028\n",
        ));
        let cut = cut.unwrap();
        assert_eq!(cut.snapshot.to_string(), "tank/pg@pgzfs-20261122T010000Z");
        assert_eq!(cut.start_lsn, "0/5000028");
        assert_eq!(cut.stop.stop_lsn, "0/5000100");
        assert_eq!(cut.stop.labelfile, "START WAL LOCATION: 0/5000028\n");
        assert_eq!(cut.timeline, 2);
        assert_eq!(cut.system_identifier, 7301234567890123456);
        assert_eq!(
            sent[0].argv,
            [
                "/usr/local/bin/pgzfs",
                "--config",
                "/usr/local/etc/pgzfs.toml",
                "--node",
                "db1",
                "snapshot",
                "--json",
                "--for",
                "db2"
            ]
        );
        let names: Vec<String> = steps.in_order().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "backup start",
                "snapshot",
                "backup stop",
                "backup record",
                "cut over ssh"
            ],
            "the source's steps by their usual names and in their order, unknown ones left out"
        );
    }

    #[test]
    fn a_source_reporting_a_foreign_or_incomplete_cut_is_not_believed() {
        for (stdout, why) in [
            (
                report("tank/other@pgzfs-1", "START"),
                "not a pgzfs snapshot of tank/pg",
            ),
            (
                report("tank/pg@manual", "START"),
                "not a pgzfs snapshot of tank/pg",
            ),
            (report("tank/pg@pgzfs-1", ""), "without its backup_label"),
            ("pgzfs: error: refused".to_string(), "something else"),
        ] {
            let (cut, _, _) = take_on_db1(stdout);
            let message = cut.unwrap_err().to_string();
            assert!(message.contains(why), "{message}");
        }
    }

    fn recorded_cut(props: &[(&str, &str)]) -> Snapshot {
        let mut s = snap("tank/pg@pgzfs-20261122T010000Z", 7, 70);
        for (k, v) in props {
            s.props.insert(k.to_string(), v.to_string());
        }
        s
    }

    const COMPLETE: [(&str, &str); 6] = [
        (prop::LSN, "0/5000028"),
        (prop::STOP_LSN, "0/5000100"),
        (prop::TIMELINE, "3"),
        (prop::SYSTEM_ID, "7301234567890123456"),
        (prop::PG_MAJOR, "17"),
        (prop::BACKUP_LABEL, "5354415254"),
    ];

    #[test]
    fn a_complete_cut_is_read_back_from_its_snapshot_properties() {
        let mut props = COMPLETE.to_vec();
        let label = hex("START WAL LOCATION: 0/5000028\n");
        let map = hex("16390 /srv/ts\n");
        props[5] = (prop::BACKUP_LABEL, &label);
        props.push((prop::TABLESPACE_MAP, &map));
        let cut = Cut::recorded(&recorded_cut(&props)).unwrap();
        assert_eq!(cut.snapshot.to_string(), "tank/pg@pgzfs-20261122T010000Z");
        assert_eq!(cut.start_lsn, "0/5000028");
        assert_eq!(cut.stop.stop_lsn, "0/5000100");
        assert_eq!(cut.stop.labelfile, "START WAL LOCATION: 0/5000028\n");
        assert_eq!(cut.stop.spcmapfile, "16390 /srv/ts\n");
        assert_eq!(cut.timeline, 3);
        assert_eq!(cut.system_identifier, 7301234567890123456);
    }

    #[test]
    fn a_snapshot_whose_cut_never_finished_is_not_a_cut() {
        // The process died between the snapshot and the backup record: the properties
        // set with the snapshot are there, the label is not.
        let unfinished: Vec<(&str, &str)> = COMPLETE[..5].to_vec();
        let why = Cut::recorded(&recorded_cut(&unfinished)).unwrap_err();
        assert!(why.contains("pgzfs:backup_label"), "{why}");
        let mut odd_label = COMPLETE.to_vec();
        odd_label[5] = (prop::BACKUP_LABEL, "zz");
        assert!(Cut::recorded(&recorded_cut(&odd_label)).is_err());
        let mut bad_timeline = COMPLETE.to_vec();
        bad_timeline[2] = (prop::TIMELINE, "three");
        assert!(Cut::recorded(&recorded_cut(&bad_timeline))
            .unwrap_err()
            .contains("timeline"));
        assert!(Cut::recorded(&recorded_cut(&[])).is_err());
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

    fn layout(tablespaces: &[&str]) -> ClusterLayout {
        ClusterLayout {
            dataset: DatasetName::parse("tank/pg").unwrap(),
            mountpoint: Some("/var/db/postgres".into()),
            tablespaces: tablespaces.iter().map(|t| t.into()).collect(),
        }
    }

    #[test]
    fn an_atomic_cut_is_allowed_only_where_one_snapshot_holds_the_whole_cluster() {
        // The dataset alone, or with children (pg_wal): one `zfs snapshot -r`.
        assert_eq!(atomic_snapshot_covers(&layout(&[])), Ok(()));
        // A tablespace inside the dataset (or a child mounted below it) is in the same
        // snapshot.
        assert_eq!(
            atomic_snapshot_covers(&layout(&["/var/db/postgres/ts1"])),
            Ok(())
        );
        for (tablespaces, why) in [
            (&["/srv/ts1"][..], "/srv/ts1"),
            (&["/var/db/postgres/../ts"][..], "outside"),
            (&["/var/db/postgresql/ts"][..], "outside"),
        ] {
            let refused = atomic_snapshot_covers(&layout(tablespaces)).unwrap_err();
            assert!(refused.contains(why), "{refused}");
        }
        let mut unknown = layout(&["/var/db/postgres/ts1"]);
        unknown.mountpoint = None;
        assert!(atomic_snapshot_covers(&unknown).is_err());
    }

    #[test]
    fn the_cut_mode_is_backup_unless_atomic_is_asked_for() {
        assert_eq!(CutMode::default(), CutMode::Backup);
        assert_eq!(CutMode::parse("atomic"), Ok(CutMode::Atomic));
        assert_eq!(CutMode::parse("backup"), Ok(CutMode::Backup));
        assert!(CutMode::parse("crash").unwrap_err().contains("atomic"));
    }

    #[test]
    fn an_atomic_cut_reads_back_without_a_backup_label() {
        let atomic = recorded_cut(&[
            (prop::LSN, "0/5000028"),
            (prop::TIMELINE, "3"),
            (prop::SYSTEM_ID, "7301234567890123456"),
            (prop::CUT, "atomic"),
        ]);
        let cut = Cut::recorded(&atomic).unwrap();
        assert_eq!(cut.stop.labelfile, "");
        assert_eq!(cut.start_lsn, "0/5000028");
        assert_eq!(cut.timeline, 3);
        // Any other value of pgzfs:cut is no licence to go without a label.
        let odd = recorded_cut(&[
            (prop::LSN, "0/5000028"),
            (prop::TIMELINE, "3"),
            (prop::SYSTEM_ID, "7301234567890123456"),
            (prop::CUT, "whatever"),
        ]);
        assert!(Cut::recorded(&odd).is_err());
    }
}

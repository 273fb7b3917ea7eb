//! Retention: which of a dataset's pgzfs snapshots to keep, and why.
//!
//! The policy is grandfather-father-son. For each class (hourly, daily, weekly, monthly,
//! yearly) the snapshots are grouped into calendar buckets in UTC (ISO weeks start on
//! Monday); the newest snapshot of a bucket represents it, and the newest `N` buckets that
//! contain a snapshot are kept. Counting buckets that exist, rather than the last `N`
//! hours or days before now, means an outage of the daemon never makes pgzfs destroy more:
//! after a week without snapshots, "7 daily" still keeps seven days' worth.
//!
//! Some snapshots are kept whatever the policy says: held ones (a hold is ZFS's own
//! "do not destroy", and reset-secondary holds every standby's common base), those the
//! caller protects (the newest common snapshot of each standby, by GUID), those taken
//! since the oldest re-seed still in flight, and the newest one, which the next
//! incremental re-seed builds on.
//!
//! [`decide`] is a pure function of the snapshots, the protections, the policy and the
//! time, so the daemon, `pgzfs prune` and the tests all go through the same rules.
//! [`prune_dataset`] applies it to a real dataset.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Node, ReseedConfig};
use crate::datasets::ClusterDatasets;
use crate::error::Result;
use crate::timestamp::{parse_utc_compact, utc_year_month};
use crate::zfs::names::{DatasetName, HoldTag, SnapName, SnapshotName, PGZFS_SNAPSHOT_PREFIX};
use crate::zfs::{Snapshot, Zfs};

/// A grandfather-father-son class, finest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Hourly,
        Class::Daily,
        Class::Weekly,
        Class::Monthly,
        Class::Yearly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Hourly => "hourly",
            Class::Daily => "daily",
            Class::Weekly => "weekly",
            Class::Monthly => "monthly",
            Class::Yearly => "yearly",
        }
    }

    /// How many buckets of this class the policy keeps.
    pub fn count(self, policy: &Retention) -> usize {
        match self {
            Class::Hourly => policy.hourly,
            Class::Daily => policy.daily,
            Class::Weekly => policy.weekly,
            Class::Monthly => policy.monthly,
            Class::Yearly => policy.yearly,
        }
    }

    /// The bucket `time` falls in: equal numbers mean the same hour, day, ISO week (Monday
    /// to Sunday), month or year in UTC, and a larger number is a later bucket.
    pub fn bucket(self, time: SystemTime) -> i64 {
        let seconds = signed_unix_seconds(time);
        let days = seconds.div_euclid(86_400);
        match self {
            Class::Hourly => seconds.div_euclid(3_600),
            Class::Daily => days,
            // 1970-01-01 was a Thursday: three days after the Monday that starts its week.
            Class::Weekly => (days + 3).div_euclid(7),
            Class::Monthly => {
                let (year, month) = utc_year_month(time);
                year * 12 + i64::from(month) - 1
            }
            Class::Yearly => utc_year_month(time).0,
        }
    }
}

fn signed_unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        // Rounded towards the past, like the timestamps in snapshot names.
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            if before.subsec_nanos() > 0 {
                -whole - 1
            } else {
                -whole
            }
        }
    }
}

/// When a pgzfs snapshot was taken, read from its name: `pgzfs-20261122T003412Z`, or
/// `pgzfs-20261122T003412Z-2` for a second snapshot within the same second. None for any
/// other name: a snapshot whose age is unknown cannot be placed in a bucket.
pub fn taken_at(snap: &SnapName) -> Option<SystemTime> {
    let rest = snap.as_str().strip_prefix(PGZFS_SNAPSHOT_PREFIX)?;
    let (stamp, suffix) = rest.split_at_checked(16)?;
    let suffix_ok = suffix.is_empty()
        || suffix
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if suffix_ok {
        parse_utc_compact(stamp)
    } else {
        None
    }
}

/// One pgzfs snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: SnapshotName,
    pub guid: u64,
    /// Creation order: the newest snapshot is the one with the highest createtxg, whatever
    /// its name says.
    pub createtxg: u64,
    /// When it was taken, from its name.
    pub taken: Option<SystemTime>,
    pub held: bool,
}

impl Candidate {
    /// None for snapshots pgzfs did not take: those are never ours to destroy.
    pub fn from_snapshot(snapshot: &Snapshot) -> Option<Candidate> {
        snapshot.name.snap().is_pgzfs().then(|| Candidate {
            name: snapshot.name.clone(),
            guid: snapshot.guid,
            createtxg: snapshot.createtxg,
            taken: taken_at(snapshot.name.snap()),
            held: snapshot.is_held(),
        })
    }
}

/// What must survive whatever the policy says, beyond holds and the newest snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// By GUID (names can be reused), each with why: "common base of db2".
    pub guids: BTreeMap<u64, Vec<String>>,
    /// When the oldest re-seed still in flight started: every snapshot taken since then
    /// may be the one it is sending.
    pub reseed_since: Option<SystemTime>,
}

impl Protection {
    pub fn protect(&mut self, guid: u64, why: impl Into<String>) {
        let why = why.into();
        let reasons = self.guids.entry(guid).or_default();
        if !reasons.contains(&why) {
            reasons.push(why);
        }
    }

    /// Record a re-seed in flight since `started`; the oldest one counts.
    pub fn reseed_in_flight_since(&mut self, started: SystemTime) {
        self.reseed_since = Some(match self.reseed_since {
            Some(earlier) => earlier.min(started),
            None => started,
        });
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The newest snapshot: the next incremental re-seed starts from it.
    Newest,
    Held,
    /// Protected by the caller, with the caller's words.
    Protected(String),
    ReseedInFlight,
    /// The name carries no time, so its age is unknown.
    Undated,
    /// Dated after `now`: a clock was wrong somewhere; better keep it than guess.
    DatedAfterNow,
    /// The newest snapshot of the n-th newest bucket of the class (counted from 1).
    Class(Class, usize),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest => f.write_str("newest"),
            Reason::Held => f.write_str("held"),
            Reason::Protected(why) => f.write_str(why),
            Reason::ReseedInFlight => f.write_str("in-flight re-seed"),
            Reason::Undated => f.write_str("no time in its name"),
            Reason::DatedAfterNow => f.write_str("dated in the future"),
            Reason::Class(class, n) => write!(f, "{} #{n}", class.name()),
        }
    }
}

impl Reason {
    /// Whether this reason alone forbids destroying the snapshot, whatever the policy.
    pub fn is_protection(&self) -> bool {
        !matches!(self, Reason::Class(..))
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub candidate: Candidate,
    /// Empty: destroy it.
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }

    pub fn reasons_text(&self) -> Vec<String> {
        self.reasons.iter().map(ToString::to_string).collect()
    }
}

/// Decide, for every candidate, whether to keep it and why. The result lists the
/// candidates oldest first (by createtxg).
pub fn decide(
    candidates: &[Candidate],
    protection: &Protection,
    policy: &Retention,
    now: SystemTime,
) -> Vec<Decision> {
    let mut decisions: Vec<Decision> = candidates
        .iter()
        .map(|candidate| Decision {
            candidate: candidate.clone(),
            reasons: Vec::new(),
        })
        .collect();
    decisions.sort_by(|a, b| {
        (a.candidate.createtxg, &a.candidate.name).cmp(&(b.candidate.createtxg, &b.candidate.name))
    });

    if let Some(newest) = decisions.last_mut() {
        newest.reasons.push(Reason::Newest);
    }
    for decision in &mut decisions {
        let c = &decision.candidate;
        let mut reasons = Vec::new();
        if c.held {
            reasons.push(Reason::Held);
        }
        for why in protection.guids.get(&c.guid).into_iter().flatten() {
            reasons.push(Reason::Protected(why.clone()));
        }
        match c.taken {
            None => reasons.push(Reason::Undated),
            Some(taken) => {
                if protection.reseed_since.is_some_and(|since| taken >= since) {
                    reasons.push(Reason::ReseedInFlight);
                }
                if taken > now {
                    reasons.push(Reason::DatedAfterNow);
                }
            }
        }
        decision.reasons.extend(reasons);
    }

    // Bucketing looks only at snapshots whose place in time is known and plausible;
    // newest first, the later createtxg winning within the same second.
    let mut dated: Vec<(SystemTime, u64, usize)> = decisions
        .iter()
        .enumerate()
        .filter_map(|(index, d)| {
            d.candidate
                .taken
                .filter(|&taken| taken <= now)
                .map(|taken| (taken, d.candidate.createtxg, index))
        })
        .collect();
    dated.sort_by_key(|&(taken, createtxg, _)| std::cmp::Reverse((taken, createtxg)));
    for class in Class::ALL {
        let wanted = class.count(policy);
        let mut seen = BTreeSet::new();
        for &(taken, _, index) in &dated {
            if seen.len() >= wanted {
                break;
            }
            if seen.insert(class.bucket(taken)) {
                decisions[index]
                    .reasons
                    .push(Reason::Class(class, seen.len()));
            }
        }
    }
    decisions
}

/// The holds on one snapshot, as far as this ZFS can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holds {
    None,
    /// The tags, with the nodes whose common base each one marks.
    Tags(Vec<(HoldTag, Vec<String>)>),
    /// Held `n` times, but this ZFS cannot list the tags (zfs-fuse).
    Unknown(u64),
}

impl Holds {
    /// The nodes this snapshot is the common base of; None when the tags are unknown.
    pub fn common_base_of(&self) -> Option<Vec<String>> {
        match self {
            Holds::None => Some(Vec::new()),
            Holds::Tags(tags) => Some(tags.iter().flat_map(|(_, nodes)| nodes.clone()).collect()),
            Holds::Unknown(_) => None,
        }
    }

    pub fn tags(&self) -> Option<Vec<String>> {
        match self {
            Holds::None => Some(Vec::new()),
            Holds::Tags(tags) => Some(tags.iter().map(|(tag, _)| tag.to_string()).collect()),
            Holds::Unknown(_) => None,
        }
    }
}

/// The hold tag reset-secondary puts on the common base of a standby (named for its
/// replication slot), on both sides.
pub fn common_base_tag(reseed: &ReseedConfig) -> Result<HoldTag> {
    HoldTag::parse(&format!("pgzfs-{}", reseed.slot_name))
}

/// Read the holds on a snapshot and name the standbys they stand for.
pub fn holds_of(zfs: &dyn Zfs, snapshot: &Snapshot, nodes: &[Node]) -> Result<Holds> {
    if !snapshot.is_held() {
        return Ok(Holds::None);
    }
    let Some(tags) = zfs.holds(&snapshot.name)? else {
        return Ok(Holds::Unknown(snapshot.userrefs));
    };
    if tags.is_empty() {
        // userrefs says held, the list says not: trust the count, which is what keeps
        // ZFS itself from destroying the snapshot.
        return Ok(Holds::Unknown(snapshot.userrefs));
    }
    let mut named = Vec::new();
    for tag in tags {
        let owners = nodes
            .iter()
            .filter(|node| common_base_tag(&node.reseed).is_ok_and(|t| t == tag))
            .map(|node| node.name.clone())
            .collect();
        named.push((tag, owners));
    }
    Ok(Holds::Tags(named))
}

/// What `prune_dataset` decided and did.
#[derive(Debug, Clone)]
pub struct PruneReport {
    pub dataset: DatasetName,
    pub dry_run: bool,
    pub policy: Retention,
    pub decisions: Vec<Decision>,
    /// Snapshots not taken by pgzfs: never considered.
    pub foreign: Vec<SnapshotName>,
    pub destroyed: Vec<SnapshotName>,
    /// Snapshots that were to be destroyed but could not be, with why.
    pub failed: Vec<(SnapshotName, String)>,
}

impl PruneReport {
    pub fn to_destroy(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep())
    }
}

/// Apply the policy to `dataset`'s pgzfs snapshots. Held snapshots are protected with
/// the names of the standbys whose common base they are, where this ZFS can tell; every
/// held snapshot is kept either way. With `dry_run` nothing is destroyed. A snapshot that
/// cannot be destroyed does not stop the others; the report lists it under `failed`.
pub fn prune_dataset(
    zfs: &dyn Zfs,
    dataset: &DatasetName,
    nodes: &[Node],
    policy: &Retention,
    protection: &Protection,
    now: SystemTime,
    dry_run: bool,
) -> Result<PruneReport> {
    let snapshots = zfs.snapshots(dataset)?;
    let mut protection = protection.clone();
    let mut candidates = Vec::new();
    let mut foreign = Vec::new();
    for snapshot in &snapshots {
        let Some(candidate) = Candidate::from_snapshot(snapshot) else {
            foreign.push(snapshot.name.clone());
            continue;
        };
        if let Holds::Tags(tags) = holds_of(zfs, snapshot, nodes)? {
            for (tag, owners) in tags {
                if owners.is_empty() {
                    protection.protect(snapshot.guid, format!("hold {tag}"));
                }
                for owner in owners {
                    protection.protect(snapshot.guid, format!("common base of {owner}"));
                }
            }
        }
        candidates.push(candidate);
    }
    let decisions = decide(&candidates, &protection, policy, now);
    let mut report = PruneReport {
        dataset: dataset.clone(),
        dry_run,
        policy: *policy,
        decisions,
        foreign,
        destroyed: Vec::new(),
        failed: Vec::new(),
    };
    if dry_run {
        return Ok(report);
    }
    let doomed: Vec<SnapshotName> = report
        .to_destroy()
        .map(|d| d.candidate.name.clone())
        .collect();
    for name in doomed {
        destroy_into_report(zfs, name, &mut report);
    }
    Ok(report)
}

/// [`prune_dataset`] for a whole cluster (`crate::datasets`): the policy decides on the
/// dataset's own snapshots, and each cut goes as a whole. A cut whose snapshot is held on
/// any member (a standby's common base of pg_wal or a tablespace) is kept on all. A
/// doomed cut is destroyed on the members first, deepest first, and on the dataset last:
/// if a member's snapshot cannot be destroyed, the dataset's stays and the cut is listed
/// under `failed`, so the next run finishes it instead of leaving a tree half-pruned.
pub fn prune_cluster(
    zfs: &dyn Zfs,
    cluster: &ClusterDatasets,
    nodes: &[Node],
    policy: &Retention,
    protection: &Protection,
    now: SystemTime,
    dry_run: bool,
) -> Result<PruneReport> {
    let root = cluster.root();
    if cluster.others().is_empty() {
        return prune_dataset(zfs, root, nodes, policy, protection, now, dry_run);
    }
    let root_snaps = zfs.snapshots(root)?;
    let mut protection = protection.clone();
    let mut members = Vec::new();
    for member in cluster.others() {
        let snaps = zfs.snapshots(&member.dataset)?;
        for held in snaps.iter().filter(|s| s.is_held()) {
            if let Some(cut) = root_snaps
                .iter()
                .find(|r| r.name.snap() == held.name.snap())
            {
                protection.protect(cut.guid, format!("held on {}", member.dataset));
            }
        }
        members.push((member.dataset.clone(), snaps));
    }
    let mut report = prune_dataset(zfs, root, nodes, policy, &protection, now, true)?;
    report.dry_run = dry_run;
    if dry_run {
        return Ok(report);
    }
    let doomed: Vec<SnapshotName> = report
        .to_destroy()
        .map(|d| d.candidate.name.clone())
        .collect();
    'cuts: for name in doomed {
        for (dataset, snaps) in members.iter().rev() {
            if !snaps.iter().any(|s| s.name.snap() == name.snap()) {
                continue;
            }
            let part = dataset.snapshot(name.snap());
            if let Err(e) = zfs.destroy_snapshot(&part) {
                tracing::warn!("retention: could not destroy {part}, so {name} stays: {e}");
                report.failed.push((name, format!("{part}: {e}")));
                continue 'cuts;
            }
            tracing::info!("retention: destroyed {part}");
        }
        destroy_into_report(zfs, name, &mut report);
    }
    Ok(report)
}

/// Destroy one snapshot the policy gave up, and record in `report` whether it went.
fn destroy_into_report(zfs: &dyn Zfs, name: SnapshotName, report: &mut PruneReport) {
    match zfs.destroy_snapshot(&name) {
        Ok(()) => {
            tracing::info!("retention: destroyed {name}");
            report.destroyed.push(name);
        }
        Err(e) => {
            tracing::warn!("retention: could not destroy {name}: {e}");
            report.failed.push((name, e.to_string()));
        }
    }
}

/// How many snapshots to keep per grandfather-father-son class: the newest snapshot of
/// each of the last `hourly` hours that have one, of the last `daily` such days, and so
/// on. One policy for the cluster, because after a failover the new primary applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
    pub yearly: usize,
}

impl Default for Retention {
    /// "No production without backup": a day of hourlies, a week of dailies, seven
    /// weeklies and a year of monthlies.
    fn default() -> Self {
        Retention {
            hourly: 24,
            daily: 7,
            weekly: 7,
            monthly: 12,
            yearly: 0,
        }
    }
}

/// `[retention]` as written; counts are read as i64 for the same reason as ports.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    hourly: Option<i64>,
    daily: Option<i64>,
    weekly: Option<i64>,
    monthly: Option<i64>,
    yearly: Option<i64>,
}

impl Retention {
    /// `[retention]` with the built-in defaults for the counts it does not mention.
    pub fn from_config(raw: Option<RawRetention>) -> std::result::Result<Retention, String> {
        let raw = raw.unwrap_or_default();
        let defaults = Retention::default();
        let count = |key: &str, value: Option<i64>, default: usize| match value {
            None => Ok(default),
            Some(v) => usize::try_from(v).map_err(|_| {
                format!("retention.{key}: {v} is not a number of snapshots to keep (0 or more)")
            }),
        };
        Ok(Retention {
            hourly: count("hourly", raw.hourly, defaults.hourly)?,
            daily: count("daily", raw.daily, defaults.daily)?,
            weekly: count("weekly", raw.weekly, defaults.weekly)?,
            monthly: count("monthly", raw.monthly, defaults.monthly)?,
            yearly: count("yearly", raw.yearly, defaults.yearly)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    const HOUR: u64 = 3_600;
    const DAY: u64 = 86_400;

    fn at(stamp: &str) -> SystemTime {
        parse_utc_compact(stamp).unwrap()
    }

    fn policy(
        hourly: usize,
        daily: usize,
        weekly: usize,
        monthly: usize,
        yearly: usize,
    ) -> Retention {
        Retention {
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
        }
    }

    /// A pgzfs snapshot taken at `time`, the `n`-th one created.
    fn taken(time: SystemTime, n: u64) -> Candidate {
        Candidate {
            name: DatasetName::parse("tank/pg")
                .unwrap()
                .snapshot(&SnapName::pgzfs_at(time)),
            guid: 1_000 + n,
            createtxg: 10 + n,
            taken: Some(time),
            held: false,
        }
    }

    /// One snapshot every `step` from `first`, `count` of them, oldest first.
    fn every(first: SystemTime, step: Duration, count: u64) -> Vec<Candidate> {
        (0..count)
            .map(|n| taken(first + step * n as u32, n))
            .collect()
    }

    fn kept_by(decisions: &[Decision], class: Class) -> Vec<&Decision> {
        decisions
            .iter()
            .filter(|d| {
                d.reasons
                    .iter()
                    .any(|r| matches!(r, Reason::Class(c, _) if *c == class))
            })
            .collect()
    }

    fn stamps(decisions: &[&Decision]) -> Vec<String> {
        decisions
            .iter()
            .map(|d| d.candidate.name.snap().to_string())
            .collect()
    }

    #[test]
    fn snapshot_names_give_their_time_and_same_second_suffixes_are_understood() {
        let name = |s: &str| SnapName::parse(s).unwrap();
        assert_eq!(
            taken_at(&name("pgzfs-20261122T003412Z")),
            Some(at("20261122T003412Z"))
        );
        assert_eq!(
            taken_at(&name("pgzfs-20261122T003412Z-2")),
            Some(at("20261122T003412Z"))
        );
        for other in [
            "pgzfs-20261122T003412Z-",
            "pgzfs-20261122T003412Z-x",
            "pgzfs-20261122T003412Zextra",
            "pgzfs-manual",
            "daily-20261122T003412Z",
            "pgzfs-20261131T003412Z",
        ] {
            assert_eq!(taken_at(&name(other)), None, "{other}");
        }
    }

    #[test]
    fn iso_weeks_start_on_monday_and_run_across_new_year() {
        let week = |s: &str| Class::Weekly.bucket(at(s));
        // 2024-12-29 is a Sunday, 12-30 a Monday; 2025-01-05 the following Sunday.
        assert_ne!(week("20241229T235959Z"), week("20241230T000000Z"));
        assert_eq!(week("20241230T000000Z"), week("20250105T235959Z"));
        assert_ne!(week("20250105T235959Z"), week("20250106T000000Z"));
        let month = |s: &str| Class::Monthly.bucket(at(s));
        assert_eq!(month("20250101T000000Z") - month("20241231T235959Z"), 1);
        assert_eq!(Class::Yearly.bucket(at("20250101T000000Z")), 2025);
        assert_eq!(
            Class::Daily.bucket(at("20261122T000000Z"))
                - Class::Daily.bucket(at("20261121T235959Z")),
            1
        );
    }

    #[test]
    fn a_year_of_hourly_snapshots_under_the_default_policy() {
        let now = at("20261122T123000Z");
        let first = now - Duration::from_secs(400 * DAY);
        let snapshots = every(first, Duration::from_secs(HOUR), 400 * 24);
        let decisions = decide(
            &snapshots,
            &Protection::default(),
            &Retention::default(),
            now,
        );
        assert_eq!(decisions.len(), snapshots.len());

        assert_eq!(kept_by(&decisions, Class::Hourly).len(), 24);
        assert_eq!(kept_by(&decisions, Class::Daily).len(), 7);
        assert_eq!(kept_by(&decisions, Class::Weekly).len(), 7);
        assert_eq!(kept_by(&decisions, Class::Monthly).len(), 12);
        assert!(kept_by(&decisions, Class::Yearly).is_empty());
        // Each daily keeper but today's is the last snapshot of its day.
        let dailies = kept_by(&decisions, Class::Daily);
        for daily in &dailies[..dailies.len() - 1] {
            assert!(
                daily.candidate.name.snap().as_str().contains("T23"),
                "{:?}",
                daily.candidate.name
            );
        }
        // The oldest survivor is the end of the month eleven months back.
        let oldest_kept = decisions.iter().find(|d| d.keep()).unwrap();
        assert_eq!(
            oldest_kept.candidate.name.snap().as_str(),
            "pgzfs-20251231T233000Z",
            "monthly #12 is December 2025's last snapshot"
        );
        assert_eq!(oldest_kept.reasons, vec![Reason::Class(Class::Monthly, 12)]);
        let kept = decisions.iter().filter(|d| d.keep()).count();
        assert!(
            kept <= 24 + 7 + 7 + 12,
            "overlapping classes share keepers: {kept}"
        );
        let newest = decisions.last().unwrap();
        assert_eq!(
            newest.reasons_text(),
            ["newest", "hourly #1", "daily #1", "weekly #1", "monthly #1"]
        );
    }

    #[test]
    fn held_and_protected_snapshots_are_kept_whatever_their_age() {
        let now = at("20261122T120000Z");
        let mut snapshots = every(at("20200101T000000Z"), Duration::from_secs(DAY), 2_000);
        snapshots[3].held = true;
        let mut protection = Protection::default();
        protection.protect(snapshots[10].guid, "common base of db2");
        protection.protect(snapshots[10].guid, "common base of db3");
        let decisions = decide(&snapshots, &protection, &policy(0, 0, 0, 0, 0), now);
        let kept: Vec<(&str, Vec<String>)> = decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| (d.candidate.name.snap().as_str(), d.reasons_text()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("pgzfs-20200104T000000Z", vec!["held".to_string()]),
                (
                    "pgzfs-20200111T000000Z",
                    vec![
                        "common base of db2".to_string(),
                        "common base of db3".to_string()
                    ]
                ),
                ("pgzfs-20250622T000000Z", vec!["newest".to_string()]),
            ],
            "a policy of all zeros keeps only what must be kept"
        );
    }

    #[test]
    fn everything_taken_since_a_reseed_began_is_kept() {
        let now = at("20261122T120000Z");
        let snapshots = every(at("20261122T100000Z"), Duration::from_secs(60), 60);
        let mut protection = Protection::default();
        protection.reseed_in_flight_since(at("20261122T105000Z"));
        protection.reseed_in_flight_since(at("20261122T104500Z"));
        let decisions = decide(&snapshots, &protection, &policy(1, 0, 0, 0, 0), now);
        for d in &decisions {
            let since_reseed = d.candidate.taken.unwrap() >= at("20261122T104500Z");
            assert_eq!(d.keep(), since_reseed, "{}", d.candidate.name);
        }
        assert!(decisions[45].reasons.contains(&Reason::ReseedInFlight));
    }

    #[test]
    fn after_an_outage_the_daily_count_still_keeps_seven_days() {
        // The daemon was down for ten days: no snapshots since the 12th.
        let now = at("20261122T120000Z");
        let snapshots = every(
            at("20261101T000000Z"),
            Duration::from_secs(6 * HOUR),
            11 * 4 + 4,
        );
        let decisions = decide(
            &snapshots,
            &Protection::default(),
            &policy(0, 7, 0, 0, 0),
            now,
        );
        let dailies = kept_by(&decisions, Class::Daily);
        assert_eq!(
            stamps(&dailies),
            [
                "pgzfs-20261106T180000Z",
                "pgzfs-20261107T180000Z",
                "pgzfs-20261108T180000Z",
                "pgzfs-20261109T180000Z",
                "pgzfs-20261110T180000Z",
                "pgzfs-20261111T180000Z",
                "pgzfs-20261112T180000Z",
            ]
        );
    }

    #[test]
    fn snapshots_without_a_plausible_time_are_kept_and_take_no_bucket() {
        let now = at("20261122T120000Z");
        let mut snapshots = every(at("20261122T080000Z"), Duration::from_secs(HOUR), 3);
        // Someone's clock ran a day ahead.
        snapshots.push(taken(at("20261123T090000Z"), 3));
        snapshots.push(Candidate {
            name: SnapshotName::parse("tank/pg@pgzfs-before-upgrade").unwrap(),
            guid: 7,
            createtxg: 1,
            taken: None,
            held: false,
        });
        let decisions = decide(
            &snapshots,
            &Protection::default(),
            &policy(1, 0, 0, 0, 0),
            now,
        );
        let by_name: HashMap<&str, Vec<String>> = decisions
            .iter()
            .map(|d| (d.candidate.name.snap().as_str(), d.reasons_text()))
            .collect();
        assert_eq!(by_name["pgzfs-before-upgrade"], ["no time in its name"]);
        assert_eq!(
            by_name["pgzfs-20261123T090000Z"],
            ["newest", "dated in the future"]
        );
        assert_eq!(by_name["pgzfs-20261122T100000Z"], ["hourly #1"]);
        assert!(by_name["pgzfs-20261122T090000Z"].is_empty());
        assert!(by_name["pgzfs-20261122T080000Z"].is_empty());
        assert_eq!(
            decisions[0].candidate.guid, 7,
            "listed oldest first by createtxg"
        );
    }

    #[test]
    fn within_one_second_the_later_snapshot_represents_the_bucket() {
        let now = at("20261122T120000Z");
        let second = at("20261122T110000Z");
        let first = taken(second, 0);
        let mut again = taken(second, 1);
        again.name = DatasetName::parse("tank/pg")
            .unwrap()
            .snapshot(&SnapName::parse("pgzfs-20261122T110000Z-2").unwrap());
        let older = taken(at("20261122T100000Z"), 2);
        let mut older = older;
        older.createtxg = 5;
        let decisions = decide(
            &[first, again, older],
            &Protection::default(),
            &policy(1, 0, 0, 0, 0),
            now,
        );
        let kept: Vec<String> = decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| format!("{} {:?}", d.candidate.name.snap(), d.reasons_text()))
            .collect();
        assert_eq!(
            kept,
            ["pgzfs-20261122T110000Z-2 [\"newest\", \"hourly #1\"]"]
        );
    }

    #[test]
    fn no_snapshots_no_decisions() {
        assert!(decide(
            &[],
            &Protection::default(),
            &Retention::default(),
            SystemTime::now()
        )
        .is_empty());
    }

    // -----------------------------------------------------------------------------------
    // Properties over synthetic timelines. A small deterministic generator keeps every
    // run identical, so a failure names a seed that reproduces it.

    /// SplitMix64: tiny, fast, and good enough to scatter test cases.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    struct Case {
        candidates: Vec<Candidate>,
        protection: Protection,
        policy: Retention,
        now: SystemTime,
    }

    fn synthetic_case(seed: u64) -> Case {
        let mut rng = Rng(seed);
        let mut time = at("20230101T000000Z") + Duration::from_secs(rng.below(400 * DAY));
        let count = rng.below(120);
        let mut candidates = Vec::new();
        let mut names = BTreeSet::new();
        for n in 0..count {
            // Mostly a steady schedule, with bursts, pauses and the odd long outage.
            let gap = match rng.below(20) {
                0 => 0,
                1..=11 => rng.below(2 * HOUR),
                12..=16 => rng.below(2 * DAY),
                17..=18 => rng.below(40 * DAY),
                _ => rng.below(400 * DAY),
            };
            time += Duration::from_secs(gap);
            // Now and then a snapshot is created out of order (named for an older time)
            // or under a name without a time.
            let when = if rng.chance(5) {
                time - Duration::from_secs(rng.below(60 * DAY))
            } else {
                time
            };
            let undated = rng.chance(3);
            let mut name = if undated {
                format!("pgzfs-manual{n}")
            } else {
                SnapName::pgzfs_at(when).to_string()
            };
            if !names.insert(name.clone()) {
                name = format!("{name}-{n}");
                names.insert(name.clone());
            }
            candidates.push(Candidate {
                name: DatasetName::parse("tank/pg")
                    .unwrap()
                    .snapshot(&SnapName::parse(&name).unwrap()),
                guid: rng.next(),
                createtxg: 100 + n,
                taken: if undated { None } else { Some(when) },
                held: rng.chance(10),
            });
        }
        // Shuffle: decide must not rely on the input order.
        for i in (1..candidates.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            candidates.swap(i, j);
        }
        let mut protection = Protection::default();
        for c in &candidates {
            if rng.chance(8) {
                protection.protect(c.guid, "common base of db2");
            }
        }
        protection.protect(rng.next(), "common base of a snapshot that is gone");
        if rng.chance(20) {
            protection.reseed_in_flight_since(time - Duration::from_secs(rng.below(3 * DAY)));
        }
        let mut count = || rng.below(9) as usize;
        let policy = policy(count(), count(), count(), count(), count());
        // Usually a little after the last snapshot; sometimes before some of them.
        let now = if rng.chance(10) {
            time - Duration::from_secs(rng.below(5 * DAY))
        } else {
            time + Duration::from_secs(rng.below(3 * DAY))
        };
        Case {
            candidates,
            protection,
            policy,
            now,
        }
    }

    const CASES: u64 = 600;

    fn for_every_case(check: impl Fn(u64, &Case, &[Decision])) {
        for seed in 0..CASES {
            let case = synthetic_case(seed);
            let decisions = decide(&case.candidates, &case.protection, &case.policy, case.now);
            assert_eq!(decisions.len(), case.candidates.len(), "seed {seed}");
            check(seed, &case, &decisions);
        }
    }

    #[test]
    fn property_held_protected_and_in_flight_snapshots_are_never_destroyed() {
        for_every_case(|seed, case, decisions| {
            for d in decisions {
                let c = &d.candidate;
                let protected = case.protection.guids.contains_key(&c.guid);
                let in_flight = case
                    .protection
                    .reseed_since
                    .zip(c.taken)
                    .is_some_and(|(since, taken)| taken >= since);
                if c.held || protected || in_flight {
                    assert!(d.keep(), "seed {seed}: {} was to be destroyed", c.name);
                    assert!(d.reasons.iter().any(Reason::is_protection), "seed {seed}");
                }
            }
        });
    }

    #[test]
    fn property_the_newest_snapshot_is_always_kept() {
        for_every_case(|seed, case, decisions| {
            if let Some(newest) = case.candidates.iter().max_by_key(|c| c.createtxg) {
                let d = decisions
                    .iter()
                    .find(|d| d.candidate.guid == newest.guid)
                    .unwrap();
                assert!(d.reasons.contains(&Reason::Newest), "seed {seed}");
            }
            assert_eq!(
                decisions
                    .iter()
                    .filter(|d| d.reasons.contains(&Reason::Newest))
                    .count(),
                usize::from(!case.candidates.is_empty()),
                "seed {seed}"
            );
        });
    }

    #[test]
    fn property_each_class_keeps_exactly_its_count_of_buckets_or_all_there_are() {
        for_every_case(|seed, case, decisions| {
            let dated: Vec<SystemTime> = case
                .candidates
                .iter()
                .filter_map(|c| c.taken)
                .filter(|&t| t <= case.now)
                .collect();
            for class in Class::ALL {
                let buckets: BTreeSet<i64> = dated.iter().map(|&t| class.bucket(t)).collect();
                let expected = class.count(&case.policy).min(buckets.len());
                let mut ranks: Vec<usize> = decisions
                    .iter()
                    .flat_map(|d| &d.reasons)
                    .filter_map(|r| match r {
                        Reason::Class(c, n) if *c == class => Some(*n),
                        _ => None,
                    })
                    .collect();
                ranks.sort_unstable();
                assert_eq!(
                    ranks,
                    (1..=expected).collect::<Vec<_>>(),
                    "seed {seed}: {class:?} policy {:?}",
                    case.policy
                );
            }
        });
    }

    #[test]
    fn property_a_destroyed_snapshot_was_needed_by_no_class() {
        // The rule restated independently: a snapshot is needed by a class when it is the
        // newest in its bucket and fewer than N newer buckets have snapshots.
        for_every_case(|seed, case, decisions| {
            let dated: Vec<(SystemTime, u64)> = case
                .candidates
                .iter()
                .filter_map(|c| c.taken.filter(|&t| t <= case.now).map(|t| (t, c.createtxg)))
                .collect();
            for d in decisions.iter().filter(|d| !d.keep()) {
                let c = &d.candidate;
                let me = (c.taken.expect("undated snapshots are kept"), c.createtxg);
                for class in Class::ALL {
                    let bucket = class.bucket(me.0);
                    let newest_in_bucket = dated
                        .iter()
                        .filter(|(t, _)| class.bucket(*t) == bucket)
                        .max()
                        .unwrap();
                    let newer_buckets: BTreeSet<i64> = dated
                        .iter()
                        .map(|(t, _)| class.bucket(*t))
                        .filter(|&b| b > bucket)
                        .collect();
                    let needed =
                        *newest_in_bucket == me && newer_buckets.len() < class.count(&case.policy);
                    assert!(!needed, "seed {seed}: {} is needed as {class:?}", c.name);
                }
            }
        });
    }

    #[test]
    fn property_pruning_twice_destroys_nothing_more() {
        for_every_case(|seed, case, decisions| {
            let survivors: Vec<Candidate> = decisions
                .iter()
                .filter(|d| d.keep())
                .map(|d| d.candidate.clone())
                .collect();
            let again = decide(&survivors, &case.protection, &case.policy, case.now);
            let kept: Vec<&Decision> = decisions.iter().filter(|d| d.keep()).collect();
            assert_eq!(again.len(), kept.len(), "seed {seed}");
            for (second, first) in again.iter().zip(kept) {
                assert!(
                    second.keep(),
                    "seed {seed}: {} destroyed the second time",
                    second.candidate.name
                );
                assert_eq!(
                    second, first,
                    "seed {seed}: the same reasons the second time"
                );
            }
        });
    }

    #[test]
    fn the_synthetic_cases_cover_what_the_properties_are_about() {
        // Guard against a generator that quietly stops producing interesting cases.
        let (mut destroyed, mut held_old, mut in_flight, mut future, mut undated) = (0, 0, 0, 0, 0);
        for seed in 0..CASES {
            let case = synthetic_case(seed);
            let decisions = decide(&case.candidates, &case.protection, &case.policy, case.now);
            destroyed += decisions.iter().filter(|d| !d.keep()).count();
            held_old += decisions
                .iter()
                .filter(|d| d.reasons == [Reason::Held])
                .count();
            in_flight += decisions
                .iter()
                .filter(|d| d.reasons.contains(&Reason::ReseedInFlight))
                .count();
            future += decisions
                .iter()
                .filter(|d| d.reasons.contains(&Reason::DatedAfterNow))
                .count();
            undated += decisions
                .iter()
                .filter(|d| d.reasons.contains(&Reason::Undated))
                .count();
        }
        assert!(destroyed > 1_000, "{destroyed}");
        assert!(
            held_old > 100,
            "held snapshots that only the hold saves: {held_old}"
        );
        assert!(in_flight > 10, "{in_flight}");
        assert!(future > 10, "{future}");
        assert!(undated > 10, "{undated}");
    }
}

//! Proving a snapshot restores: start a throwaway server on its clone
//! ([`crate::throwaway`]) and check what a restore would give. The verdict is recorded
//! on the snapshot (`pgzfs:verified`), the clone and its server are always gone after.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Node;
use crate::error::{Error, Result};
use crate::pg::{Pg, PgTarget};
use crate::steps::{round, Steps};
use crate::throwaway::{free_port, Purpose, Spec, Throwaway};
use crate::transfer::Interrupt;
use crate::zfs::names::SnapshotName;
use crate::zfs::{prop, Snapshot, Zfs};

/// What `pgzfs verify --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub snapshot: String,
    /// "pass" or "fail".
    pub verdict: String,
    pub verified_at: String,
    /// What failed, in the words of the server or the check; empty on a pass.
    pub problems: Vec<String>,
    /// Checks that could not run here (an extension not installed, checksums off).
    pub skipped: Vec<String>,
    pub major: u32,
    pub data_checksums: Option<bool>,
    pub databases: Vec<DatabaseReport>,
    /// The clone the checks ran on (destroyed since).
    pub clone: String,
    pub seconds: f64,
    pub steps: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct DatabaseReport {
    pub name: String,
    pub btree_indexes_checked: usize,
    pub heaps_checked: usize,
    /// Rows per table (`schema.table`), for comparing with the live cluster; null where
    /// the table could not be read.
    pub row_counts: BTreeMap<String, Option<i64>>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }
}

/// The newest pgzfs snapshot of the dataset (what `verify` checks by default).
pub fn newest_pgzfs(snapshots: &[Snapshot]) -> Option<&Snapshot> {
    snapshots
        .iter()
        .filter(|s| s.name.snap().is_pgzfs())
        .max_by_key(|s| s.createtxg)
}

/// `pgzfs:verified` as recorded: the time and the verdict.
pub fn verified_value(at: SystemTime, passed: bool) -> String {
    format!(
        "{}/{}",
        crate::timestamp::utc_rfc3339(at),
        if passed { "pass" } else { "fail" }
    )
}

/// Read `pgzfs:verified` back: (when, passed).
pub fn parse_verified(value: &str) -> Option<(SystemTime, bool)> {
    let (time, verdict) = value.rsplit_once('/')?;
    let passed = match verdict {
        "pass" => true,
        "fail" => false,
        _ => return None,
    };
    // 2026-12-01T19:30:00Z -> 20261201T193000Z
    let compact: String = time.chars().filter(|c| *c != '-' && *c != ':').collect();
    Some((crate::timestamp::parse_utc_compact(&compact)?, passed))
}

/// The newest snapshot that passed verification, and when it was taken (by its name),
/// among `snapshots`.
pub fn newest_verified(snapshots: &[Snapshot]) -> Option<(&Snapshot, SystemTime)> {
    snapshots
        .iter()
        .filter(|s| {
            s.prop(prop::VERIFIED)
                .and_then(parse_verified)
                .is_some_and(|(_, passed)| passed)
        })
        .max_by_key(|s| s.createtxg)
        .map(|s| {
            let taken = crate::retention::taken_at(s.name.snap()).unwrap_or(UNIX_EPOCH);
            (s, taken)
        })
}

/// The daemon's schedule (`verify_every`): the snapshot to verify now, if any. Due when
/// no snapshot was verified within `every`; then the newest pgzfs snapshot, unless it has
/// a verdict already (a failed one is not retried on every round: it stays failed, and
/// the next snapshot gets its turn).
pub fn verify_due(snapshots: &[Snapshot], every: Duration, now: SystemTime) -> Option<&Snapshot> {
    let last = snapshots
        .iter()
        .filter_map(|s| s.prop(prop::VERIFIED).and_then(parse_verified))
        .map(|(at, _)| at)
        .max();
    if last.is_some_and(|at| now < at + every) {
        return None;
    }
    newest_pgzfs(snapshots).filter(|s| s.prop(prop::VERIFIED).is_none())
}

/// Verify `snapshot` of `node`'s dataset. Err only when the verification itself could
/// not be done (no clone, interrupted); a snapshot that does not restore is an Ok report
/// with the verdict "fail".
/// The caller holds the node's lock (so that a clone left by a killed run can be told
/// from one in use, and removed first).
pub fn verify(
    zfs: &dyn Zfs,
    node: &Node,
    snapshot: &SnapshotName,
    interrupt: &Interrupt,
) -> Result<Report> {
    let mut steps = Steps::default();
    crate::throwaway::remove_leftover_verify_clones(zfs, node)?;
    let started_at = SystemTime::now();
    let stamp = format!(
        "{}-{}",
        crate::timestamp::utc_compact(started_at),
        std::process::id()
    );
    let throwaway = steps.run("clone", || {
        Throwaway::create(
            zfs,
            Spec {
                node,
                snapshot: snapshot.clone(),
                purpose: Purpose::Verify { stamp },
                port: free_port()?,
            },
        )
    })?;
    let mut report = Report {
        node: node.name.clone(),
        snapshot: snapshot.to_string(),
        verdict: "fail".into(),
        verified_at: String::new(),
        problems: Vec::new(),
        skipped: Vec::new(),
        major: throwaway.major,
        data_checksums: None,
        databases: Vec::new(),
        clone: throwaway.dataset.to_string(),
        seconds: 0.0,
        steps: BTreeMap::new(),
    };
    let checked = check(&mut steps, &throwaway, node, interrupt, &mut report);
    // Always: stop the server and destroy the clone, whatever happened above.
    let torn_down = steps.run("cleanup", || throwaway.teardown());
    checked?;
    torn_down?;
    interrupt.check()?;

    report.verdict = if report.problems.is_empty() {
        "pass"
    } else {
        "fail"
    }
    .into();
    let at = SystemTime::now();
    report.verified_at = crate::timestamp::utc_rfc3339(at);
    steps.run("record", || {
        zfs.set_snapshot_props(
            snapshot,
            &[(prop::VERIFIED, verified_value(at, report.passed()))],
        )
    })?;
    report.seconds = round(steps.total().as_secs_f64());
    report.steps = steps.in_order().into_iter().collect();
    Ok(report)
}

/// Start, check, stop, pg_checksums. Problems with the snapshot go into the report;
/// an Err means the verification could not be completed.
fn check(
    steps: &mut Steps,
    throwaway: &Throwaway,
    node: &Node,
    interrupt: &Interrupt,
    report: &mut Report,
) -> Result<()> {
    interrupt.check()?;
    let start_timeout = node.pg.streaming_timeout.max(Duration::from_secs(60));
    if let Err(e) = steps.run("start", || throwaway.start(start_timeout)) {
        interrupt.check()?;
        report.problems.push(format!(
            "the server on the clone did not reach a consistent state and accept connections: {}",
            e.message()
        ));
        return Ok(());
    }
    interrupt.check()?;
    steps.run("checks", || {
        check_databases(throwaway, node, interrupt, report)
    })?;
    interrupt.check()?;
    steps.run("stop", || throwaway.stop(node.pg.stop_timeout).map(drop))?;
    match report.data_checksums {
        Some(true) if throwaway.pgctl().tool("pg_checksums").is_some() => {
            match steps.run("pg_checksums", || throwaway.pgctl().check_checksums())? {
                Ok(()) => {}
                Err(said) => report
                    .problems
                    .push(format!("pg_checksums --check found bad blocks: {said}")),
            }
        }
        Some(true) => report
            .skipped
            .push("pg_checksums: not found in pg_bin".to_string()),
        Some(false) => report
            .skipped
            .push("pg_checksums: data checksums are off in this cluster".to_string()),
        None => {}
    }
    Ok(())
}

fn connect(throwaway: &Throwaway, node: &Node, database: &str) -> Result<Pg> {
    // Trust on the private socket (the verify hba file); the bootstrap superuser is
    // usually named like the OS user that runs the server, or "postgres".
    let mut last = None;
    let mut users = vec![node.pg.pg_os_user.clone()];
    if node.pg.pg_os_user != "postgres" {
        users.push("postgres".to_string());
    }
    for user in users {
        let target = PgTarget {
            node: format!("the clone of {}", throwaway.snapshot),
            host: throwaway.socket_dir.display().to_string(),
            port: throwaway.port,
            user,
            database: database.to_string(),
            passfile: None,
            connect_timeout: node.connect_timeout,
            // A private unix socket: nothing to encrypt, nobody in between.
            tls: crate::pg::tls::PgTls {
                mode: crate::pg::tls::SslMode::Disable,
                ..Default::default()
            },
        };
        match Pg::connect(&target) {
            Ok(pg) => return Ok(pg),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::failed("no user to connect as")))
}

fn check_databases(
    throwaway: &Throwaway,
    node: &Node,
    interrupt: &Interrupt,
    report: &mut Report,
) -> Result<()> {
    let mut pg = match connect(throwaway, node, "postgres")
        .or_else(|_| connect(throwaway, node, "template1"))
    {
        Ok(pg) => pg,
        Err(e) => {
            report.problems.push(format!(
                "the server started but does not accept connections: {}",
                e.message()
            ));
            return Ok(());
        }
    };
    if pg.is_in_recovery()? {
        report
            .problems
            .push("the server is still in recovery after it started".to_string());
        return Ok(());
    }
    report.data_checksums = Some(pg.data_checksums()?);
    let heapam = pg.major() >= 14;
    if !heapam {
        report.skipped.push(format!(
            "verify_heapam: PostgreSQL {} has none (14 and later)",
            pg.major()
        ));
    }
    for database in pg.connectable_databases()? {
        interrupt.check()?;
        let mut db = match connect(throwaway, node, &database) {
            Ok(db) => db,
            Err(e) => {
                report.problems.push(format!(
                    "database {database}: cannot connect: {}",
                    e.message()
                ));
                continue;
            }
        };
        let mut entry = DatabaseReport {
            name: database.clone(),
            btree_indexes_checked: 0,
            heaps_checked: 0,
            row_counts: BTreeMap::new(),
        };
        match db.ensure_amcheck()? {
            Ok(true) => {
                for index in db.btree_indexes()? {
                    interrupt.check()?;
                    if let Err(said) = db.bt_index_check(&index)? {
                        report
                            .problems
                            .push(format!("database {database}: index {}: {said}", index.name));
                    }
                    entry.btree_indexes_checked += 1;
                }
                if heapam {
                    for heap in db.heap_relations()? {
                        interrupt.check()?;
                        for said in db.verify_heapam(&heap)? {
                            report
                                .problems
                                .push(format!("database {database}: table {}: {said}", heap.name));
                        }
                        entry.heaps_checked += 1;
                    }
                }
            }
            Ok(false) => report.skipped.push(format!(
                "amcheck: the extension is not installed with this PostgreSQL (database {database})"
            )),
            Err(said) => report.problems.push(format!(
                "database {database}: cannot create the amcheck extension: {said}"
            )),
        }
        for table in db.user_tables()? {
            interrupt.check()?;
            let count = match db.row_count(&table)? {
                Ok(n) => Some(n),
                Err(said) => {
                    report
                        .problems
                        .push(format!("database {database}: table {}: {said}", table.name));
                    None
                }
            };
            entry.row_counts.insert(table.name.clone(), count);
        }
        report.databases.push(entry);
    }
    Ok(())
}

/// The summary an operator reads.
pub fn text(report: &Report) -> String {
    let mut out = format!(
        "{}: {} (PostgreSQL {}, {:.1}s, on the throwaway clone {}, destroyed)\n",
        report.snapshot,
        report.verdict.to_uppercase(),
        report.major,
        report.seconds,
        report.clone
    );
    for db in &report.databases {
        let rows: i64 = db.row_counts.values().flatten().sum();
        out.push_str(&format!(
            "  database {}: {} B-tree index(es) and {} heap(s) checked, {} table(s), {rows} row(s)\n",
            db.name,
            db.btree_indexes_checked,
            db.heaps_checked,
            db.row_counts.len()
        ));
    }
    for skipped in &report.skipped {
        out.push_str(&format!("  skipped: {skipped}\n"));
    }
    for problem in &report.problems {
        out.push_str(&format!("  PROBLEM: {problem}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::fake::snap;

    #[test]
    fn the_daemon_verifies_the_newest_snapshot_once_the_last_verification_is_old_enough() {
        let hour = Duration::from_secs(3600);
        let now = crate::timestamp::parse_utc_compact("20261201T120000Z").unwrap();
        let mut old = snap("tank/pg@pgzfs-20261201T080000Z", 1, 10);
        let new = snap("tank/pg@pgzfs-20261201T110000Z", 2, 20);
        // Never verified: the newest is due.
        let none = [old.clone(), new.clone()];
        assert_eq!(verify_due(&none, hour, now).unwrap().guid, 2);
        // Verified 30 minutes ago: not due within the hour.
        old.props
            .insert(prop::VERIFIED.into(), "2026-12-01T11:30:00Z/pass".into());
        let recent = [old.clone(), new.clone()];
        assert!(verify_due(&recent, hour, now).is_none());
        assert_eq!(verify_due(&recent, hour / 4, now).unwrap().guid, 2);
        // The newest already has a verdict: nothing to do until a newer snapshot exists.
        let mut failed = new.clone();
        failed
            .props
            .insert(prop::VERIFIED.into(), "2026-12-01T09:00:00Z/fail".into());
        let mut stale = old.clone();
        stale
            .props
            .insert(prop::VERIFIED.into(), "2026-12-01T09:00:00Z/pass".into());
        assert!(verify_due(&[stale, failed], hour, now).is_none());
        assert!(verify_due(&[], hour, now).is_none());
    }

    #[test]
    fn the_recorded_verdict_reads_back() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let value = verified_value(at, true);
        assert!(value.ends_with("Z/pass"), "{value}");
        assert_eq!(parse_verified(&value), Some((at, true)));
        assert_eq!(
            parse_verified(&verified_value(at, false)),
            Some((at, false))
        );
        assert_eq!(parse_verified("yesterday/pass"), None);
        assert_eq!(parse_verified("2026-12-01T19:30:00Z/maybe"), None);
    }

    #[test]
    fn the_default_is_the_newest_pgzfs_snapshot_and_the_age_counts_only_passes() {
        let mut a = snap("tank/pg@pgzfs-20261201T100000Z", 1, 10);
        let mut b = snap("tank/pg@pgzfs-20261201T110000Z", 2, 20);
        let c = snap("tank/pg@manual", 3, 30);
        assert_eq!(
            newest_pgzfs(&[a.clone(), b.clone(), c.clone()])
                .unwrap()
                .guid,
            2
        );
        assert!(newest_verified(&[a.clone(), b.clone()]).is_none());
        a.props
            .insert(prop::VERIFIED.into(), "2026-12-01T12:00:00Z/pass".into());
        b.props
            .insert(prop::VERIFIED.into(), "2026-12-01T12:05:00Z/fail".into());
        let all = [a, b, c];
        let (newest, taken) = newest_verified(&all).unwrap();
        assert_eq!(newest.guid, 1, "a failed verification does not count");
        assert_eq!(crate::timestamp::utc_compact(taken), "20261201T100000Z");
    }
}

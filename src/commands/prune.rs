//! `pgzfs prune`: apply `[retention]` to this node's pgzfs snapshots, saying what is kept
//! and why, and what goes.
//!
//! Two locks make it safe next to the other commands. The node's lock file keeps it apart
//! from anything else pgzfs does on this node, including a re-seed *into* this node (a
//! standby). On a primary, the re-seed advisory lock in PostgreSQL is held by every
//! re-seed *from* this node from before its cut until the new common base is held; while
//! prune holds it, no re-seed is in flight and none can start. When a re-seed is in
//! flight, prune cannot tell when it started (and so which snapshots it may be sending):
//! it refuses rather than guess.

use std::time::SystemTime;

use clap::Args;
use serde::Serialize;

use crate::cluster::pg_target;
use crate::config::Node;
use crate::context::Invocation;
use crate::datasets::ClusterDatasets;
use crate::error::{Error, Result};
use crate::lock::LocalLock;
use crate::pg::{Pg, RESEED_LOCK};
use crate::retention::Retention;
use crate::retention::{prune_cluster, Protection, PruneReport};
use crate::timestamp::utc_rfc3339;

#[derive(Debug, Args)]
pub struct Prune {
    /// Show what would be kept and destroyed, and destroy nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

impl Prune {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let local = &ctx.local;
        let _lock = LocalLock::acquire(&local.lock_file, local.lock_timeout, "prune")?;
        let guard = ReseedGuard::take(local)?;
        if guard.in_flight && !self.dry_run {
            return Err(Error::refused(
                "a re-seed from this node is in flight (PostgreSQL's re-seed lock is held); \
                 retention waits until it has finished. Nothing was destroyed",
            ));
        }
        let zfs = ctx.local_zfs()?;
        // Every dataset of the cluster (children, tablespaces) loses a cut together.
        let cluster = ClusterDatasets::discover(&*zfs, &local.dataset, &local.tablespaces)?;
        let report = prune_cluster(
            &*zfs,
            &cluster,
            &ctx.config.nodes,
            &ctx.config.retention,
            &Protection::default(),
            SystemTime::now(),
            self.dry_run,
        )
        .map_err(|e| e.context("prune"))?;
        let in_flight = guard.in_flight;
        guard.release();
        let view = ReportView::new(&report, in_flight);
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&view).expect("the report serializes")
            );
        } else {
            print!("{}", view.text());
        }
        if report.failed.is_empty() {
            Ok(0)
        } else {
            tracing::error!(
                "prune: {} snapshot(s) could not be destroyed",
                report.failed.len()
            );
            Ok(1)
        }
    }
}

/// The re-seed advisory lock on this node's PostgreSQL, held for as long as prune runs.
struct ReseedGuard {
    session: Option<Pg>,
    /// A re-seed holds the lock: one is in flight from this node.
    in_flight: bool,
}

impl ReseedGuard {
    fn take(local: &Node) -> Result<ReseedGuard> {
        let mut pg = match Pg::connect(&pg_target(local)) {
            Ok(pg) => pg,
            Err(e) => {
                // No server, no backup session: no re-seed can start from this node.
                tracing::info!("prune: PostgreSQL on this node is not reachable ({e})");
                return Ok(ReseedGuard {
                    session: None,
                    in_flight: false,
                });
            }
        };
        if pg.is_in_recovery()? {
            // A standby: re-seeds into it take the node's lock file, which prune holds.
            return Ok(ReseedGuard {
                session: None,
                in_flight: false,
            });
        }
        let locked = pg.try_advisory_lock(RESEED_LOCK)?;
        Ok(ReseedGuard {
            session: locked.then_some(pg),
            in_flight: !locked,
        })
    }

    fn release(self) {
        if let Some(mut pg) = self.session {
            // Closing the session would release it too; say so in the server's terms.
            let _ = pg.advisory_unlock(RESEED_LOCK);
        }
    }
}

/// What `pgzfs prune --json` prints.
#[derive(Debug, Serialize)]
pub struct ReportView {
    pub dataset: String,
    pub dry_run: bool,
    pub policy: Retention,
    /// A re-seed from this node was in flight (only ever true with --dry-run: without it,
    /// prune refuses).
    pub reseed_in_flight: bool,
    /// Every pgzfs snapshot, oldest first.
    pub snapshots: Vec<SnapshotView>,
    pub kept: usize,
    /// Destroyed, or with --dry-run the ones that would be.
    pub destroyed: Vec<String>,
    pub failed: Vec<FailureView>,
    /// Snapshots not taken by pgzfs, which retention never touches.
    pub not_pgzfs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotView {
    pub snapshot: String,
    pub taken: Option<String>,
    pub guid: String,
    pub keep: bool,
    /// Why it is kept; empty when it is destroyed.
    pub reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FailureView {
    pub snapshot: String,
    pub error: String,
}

impl ReportView {
    pub fn new(report: &PruneReport, reseed_in_flight: bool) -> ReportView {
        let destroyed = if report.dry_run {
            report
                .to_destroy()
                .map(|d| d.candidate.name.to_string())
                .collect()
        } else {
            report.destroyed.iter().map(ToString::to_string).collect()
        };
        ReportView {
            dataset: report.dataset.to_string(),
            dry_run: report.dry_run,
            policy: report.policy,
            reseed_in_flight,
            snapshots: report
                .decisions
                .iter()
                .map(|d| SnapshotView {
                    snapshot: d.candidate.name.to_string(),
                    taken: d.candidate.taken.map(utc_rfc3339),
                    guid: d.candidate.guid.to_string(),
                    keep: d.keep(),
                    reasons: d.reasons_text(),
                })
                .collect(),
            kept: report.decisions.iter().filter(|d| d.keep()).count(),
            destroyed,
            failed: report
                .failed
                .iter()
                .map(|(name, error)| FailureView {
                    snapshot: name.to_string(),
                    error: error.clone(),
                })
                .collect(),
            not_pgzfs: report.foreign.iter().map(ToString::to_string).collect(),
        }
    }

    pub fn text(&self) -> String {
        let p = &self.policy;
        let mut out = format!(
            "retention for {} (hourly {}, daily {}, weekly {}, monthly {}, yearly {}){}\n",
            self.dataset,
            p.hourly,
            p.daily,
            p.weekly,
            p.monthly,
            p.yearly,
            if self.dry_run {
                "; dry run, nothing is destroyed"
            } else {
                ""
            }
        );
        if self.reseed_in_flight {
            out.push_str(
                "  note: a re-seed from this node is in flight; without --dry-run prune would refuse\n",
            );
        }
        let width = self
            .snapshots
            .iter()
            .map(|s| short(&s.snapshot).len())
            .max()
            .unwrap_or(0);
        let failed: Vec<&str> = self.failed.iter().map(|f| f.snapshot.as_str()).collect();
        for s in &self.snapshots {
            let (action, why) = if s.keep {
                ("keep", s.reasons.join(", "))
            } else if failed.contains(&s.snapshot.as_str()) {
                ("FAILED", "could not be destroyed (see the log)".to_string())
            } else if self.dry_run {
                ("destroy", "needed by no retention class".to_string())
            } else {
                ("destroyed", "needed by no retention class".to_string())
            };
            out.push_str(&format!(
                "  {action:<9} {:width$}  {why}\n",
                short(&s.snapshot)
            ));
        }
        if !self.not_pgzfs.is_empty() {
            out.push_str(&format!(
                "  left alone: {} snapshot(s) not taken by pgzfs\n",
                self.not_pgzfs.len()
            ));
        }
        out.push_str(&format!(
            "{} kept, {} {}{}\n",
            self.kept,
            self.destroyed.len(),
            if self.dry_run {
                "to destroy"
            } else {
                "destroyed"
            },
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(", {} failed", self.failed.len())
            }
        ));
        out
    }
}

/// The part after '@': the header already names the dataset.
fn short(snapshot: &str) -> &str {
    snapshot.split_once('@').map_or(snapshot, |(_, snap)| snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::{Candidate, Decision, Reason};
    use crate::zfs::names::{DatasetName, SnapshotName};

    fn decision(name: &str, reasons: Vec<Reason>) -> Decision {
        Decision {
            candidate: Candidate {
                name: SnapshotName::parse(name).unwrap(),
                guid: 42,
                createtxg: 1,
                taken: crate::retention::taken_at(SnapshotName::parse(name).unwrap().snap()),
                held: false,
            },
            reasons,
        }
    }

    fn report(dry_run: bool) -> PruneReport {
        PruneReport {
            dataset: DatasetName::parse("tank/pg").unwrap(),
            dry_run,
            policy: Retention::default(),
            decisions: vec![
                decision(
                    "tank/pg@pgzfs-20250101T000000Z",
                    vec![Reason::Held, Reason::Protected("common base of db2".into())],
                ),
                decision("tank/pg@pgzfs-20250102T000000Z", vec![]),
                decision("tank/pg@pgzfs-20261122T003000Z", vec![Reason::Newest]),
            ],
            foreign: vec![SnapshotName::parse("tank/pg@manual").unwrap()],
            destroyed: if dry_run {
                vec![]
            } else {
                vec![SnapshotName::parse("tank/pg@pgzfs-20250102T000000Z").unwrap()]
            },
            failed: vec![],
        }
    }

    #[test]
    fn a_dry_run_report_lists_every_snapshot_with_its_reasons() {
        let view = ReportView::new(&report(true), false);
        let text = view.text();
        assert!(text.starts_with("retention for tank/pg (hourly 24, daily 7, weekly 7, monthly 12, yearly 0); dry run"), "{text}");
        assert!(
            text.contains("keep      pgzfs-20250101T000000Z  held, common base of db2"),
            "{text}"
        );
        assert!(
            text.contains("destroy   pgzfs-20250102T000000Z  needed by no retention class"),
            "{text}"
        );
        assert!(
            text.contains("left alone: 1 snapshot(s) not taken by pgzfs"),
            "{text}"
        );
        assert!(text.ends_with("2 kept, 1 to destroy\n"), "{text}");
        assert_eq!(view.destroyed, ["tank/pg@pgzfs-20250102T000000Z"]);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["snapshots"][0]["reasons"][1], "common base of db2");
        assert_eq!(json["snapshots"][1]["keep"], false);
        assert_eq!(json["policy"]["monthly"], 12);
        assert_eq!(json["snapshots"][0]["taken"], "2025-01-01T00:00:00Z");
    }

    #[test]
    fn a_real_run_reports_what_was_destroyed() {
        let view = ReportView::new(&report(false), false);
        assert!(
            view.text().contains("destroyed pgzfs-20250102T000000Z"),
            "{}",
            view.text()
        );
        assert!(view.text().ends_with("2 kept, 1 destroyed\n"));
    }
}

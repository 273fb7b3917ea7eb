//! `pgzfs verify [SNAPSHOT]`: prove that a snapshot restores. A throwaway PostgreSQL
//! starts on a clone of it, recovers to a consistent state, and is checked (amcheck,
//! pg_checksums, a row count per table); then the server stops and the clone is
//! destroyed, also when the run fails or is interrupted. The verdict is recorded on the
//! snapshot as `pgzfs:verified`. Exit 0: it restores; 1: it does not (or the check could
//! not be done).

use clap::Args;

use crate::context::Invocation;
use crate::error::{Error, Result};
use crate::transfer::Interrupt;
use crate::zfs::names::{SnapName, SnapshotName};

#[derive(Debug, Args)]
pub struct Verify {
    /// The snapshot: `pgzfs-...` or the full `dataset@pgzfs-...` of this node's dataset
    /// [default: the newest pgzfs snapshot]
    pub snapshot: Option<String>,
    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

impl Verify {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let interrupt = Interrupt::install()?;
        let zfs = ctx.local_zfs()?;
        let dataset = &ctx.local.dataset;
        let snapshot = match &self.snapshot {
            Some(text) if text.contains('@') => SnapshotName::parse(text)?,
            Some(text) => dataset.snapshot(&SnapName::parse(text)?),
            None => {
                let snapshots = zfs.snapshots(dataset)?;
                crate::verify::newest_pgzfs(&snapshots)
                    .map(|s| s.name.clone())
                    .ok_or_else(|| {
                        Error::failed(format!("{dataset} has no pgzfs snapshot to verify"))
                    })?
            }
        };
        if snapshot.dataset() != dataset {
            return Err(Error::usage(format!(
                "{snapshot} is not a snapshot of this node's dataset {dataset}"
            )));
        }
        // One thing at a time on this node: a re-seed trims snapshots, and a snapshot
        // with a clone cannot be destroyed.
        let _lock = crate::lock::LocalLock::acquire(
            &ctx.local.lock_file,
            ctx.local.lock_timeout,
            "verify",
        )?;
        let report = crate::verify::verify(&*zfs, &ctx.local, &snapshot, &interrupt)
            .map_err(|e| e.context(format!("verify {snapshot}")))?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("the report serializes")
            );
        } else {
            print!("{}", crate::verify::text(&report));
        }
        if report.passed() {
            tracing::info!("{snapshot} verified: it restores");
            Ok(0)
        } else {
            tracing::error!(
                "{snapshot} failed verification: {}",
                report.problems.join("; ")
            );
            Ok(1)
        }
    }
}

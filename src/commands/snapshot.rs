//! `pgzfs snapshot`: take a backup-safe snapshot of this node's dataset now.
//!
//! Only a running primary has anything worth a backup-safe snapshot: a standby's copy
//! arrives from the primary by reset-secondary, and a stopped server cannot be put into
//! backup mode. The snapshot is the same cut reset-secondary takes (see `crate::cut`), so
//! any of them can later seed a standby or be restored on its own.

use std::time::SystemTime;

use crate::cli::Global;
use crate::cluster::pg_target;
use crate::config::Node;
use crate::cut::{Cut, Report};
use crate::error::{Error, Result};
use crate::exec::Local;
use crate::lock::LocalLock;
use crate::pg::Pg;
use crate::steps::Steps;
use crate::zfs::cli::ZfsCli;
use crate::zfs::names::SnapName;
use crate::zfs::Zfs;
use clap::Args;

#[derive(Debug, Args)]
pub struct TakeSnapshot {
    /// Print the result as one JSON object on stdout (with the backup_label)
    #[arg(long)]
    pub json: bool,
    /// Take it for this standby's re-seed (backup_via = "ssh"): its name goes into the
    /// backup label
    #[arg(long, value_name = "NODE")]
    pub r#for: Option<String>,
}

impl TakeSnapshot {
    pub fn run(&self, global: &Global) -> Result<i32> {
        let ctx = global.load()?;
        let local = &ctx.local;
        let label = match &self.r#for {
            Some(standby) => {
                let standby = ctx.config.node(standby).map_err(|e| e.context("--for"))?;
                format!("pgzfs {}", standby.name)
            }
            None => "pgzfs snapshot".to_string(),
        };
        let _lock = LocalLock::acquire(&local.lock_file, local.lock_timeout, "snapshot")?;
        let mut primary = connect_local_primary(local)?;
        let zfs = ZfsCli::new(Local);
        let mut steps = Steps::default();
        let cut = take_snapshot(
            &mut steps,
            &mut primary,
            &zfs,
            local,
            SystemTime::now(),
            &label,
        )
        .map_err(|e| e.context("snapshot"))?;
        let taken = Report::new(&local.name, &cut, &steps);
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&taken).expect("the result serializes")
            );
        } else {
            println!("{}", taken.snapshot);
        }
        Ok(0)
    }
}

/// A session with this node's PostgreSQL, refused (exit 3) unless it is a running
/// primary.
pub fn connect_local_primary(local: &Node) -> Result<Pg> {
    let mut pg = Pg::connect(&pg_target(local)).map_err(|e| {
        Error::refused(format!(
            "PostgreSQL on this node ({}) is not reachable, so it is not a running primary: {e}. \
             Backup-safe snapshots are taken on the running primary",
            local.name
        ))
    })?;
    if pg.is_in_recovery()? {
        return Err(Error::refused(format!(
            "PostgreSQL on this node ({}) is a standby (in recovery); snapshots are taken on the \
             primary and reach standbys through reset-secondary",
            local.name
        )));
    }
    Ok(pg)
}

/// The backup-safe cut of `local`'s dataset, named for `now`. The daemon calls this on
/// its schedule, with the session and the lock it already holds.
pub fn take_snapshot(
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
    crate::cut::take(
        steps,
        primary,
        zfs,
        &local.dataset,
        &SnapName::pgzfs_at(now),
        label,
        &local.name,
    )
}

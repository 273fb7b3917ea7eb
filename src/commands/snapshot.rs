//! `pgzfs snapshot`: take a backup-safe snapshot of this node's dataset now.
//!
//! Only a running primary has anything worth a backup-safe snapshot: a standby's copy
//! arrives from the primary by reset-secondary, and a stopped server cannot be put into
//! backup mode. The snapshot is the same cut reset-secondary takes (see `crate::cut`), so
//! any of them can later seed a standby or be restored on its own.

use std::time::SystemTime;

use crate::context::Invocation;
use crate::cut::Report;
use crate::error::Result;
use crate::lock::LocalLock;
use crate::steps::Steps;
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
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let local = &ctx.local;
        let label = match &self.r#for {
            Some(standby) => {
                let standby = ctx.config.node(standby).map_err(|e| e.context("--for"))?;
                format!("pgzfs {}", standby.name)
            }
            None => "pgzfs snapshot".to_string(),
        };
        let _lock = LocalLock::acquire(&local.lock_file, local.lock_timeout, "snapshot")?;
        let mut primary = crate::cluster::connect_local_primary(local)?;
        let zfs = ctx.local_zfs()?;
        let mut steps = Steps::default();
        let cut = crate::cut::take_of_node(
            &mut steps,
            &mut primary,
            &*zfs,
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

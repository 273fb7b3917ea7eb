//! `pgzfs upgrade --new-bin DIR`: upgrade this primary to a new PostgreSQL major.
//! Argument handling and output only; the runbook is [`crate::upgrade`].

use std::path::PathBuf;

use clap::Args;

use crate::context::Invocation;
use crate::error::Result;

#[derive(Debug, Args)]
pub struct Upgrade {
    /// The new major's bin directory (pg_upgrade, initdb, pg_ctl, postgres, vacuumdb, psql)
    #[arg(long, value_name = "DIR")]
    pub new_bin: PathBuf,
    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

impl Upgrade {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let report = crate::upgrade::upgrade(&ctx, &self.new_bin)?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("the report serializes")
            );
            return Ok(0);
        }
        println!(
            "{}: PostgreSQL {} -> {} done; down for {:.1}s; rollback point {} (held {})",
            report.node,
            report.old_major,
            report.new_major,
            report.downtime_seconds,
            report.rollback_snapshot,
            crate::upgrade::HOLD
        );
        if let Some(snapshot) = &report.snapshot {
            println!("first snapshot of the new cluster: {snapshot}");
        }
        for warning in &report.warnings {
            println!("warning: {warning}");
        }
        println!("next:");
        for (i, step) in report.follow_ups.iter().enumerate() {
            println!("  {}. {step}", i + 1);
        }
        Ok(0)
    }
}

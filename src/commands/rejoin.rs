//! `pgzfs rejoin --to NODE`: turn a stopped or fenced former primary into a standby of
//! NODE without pg_rewind and without a full copy; its diverged writes are kept first.
//! The runbook is `failover::rejoin`.

use clap::Args;

use crate::context::Invocation;
use crate::error::Result;
use crate::failover::rejoin::rejoin_and_reseed;
use crate::lock::LocalLock;
use crate::replicate::report;

#[derive(Debug, Args)]
pub struct Rejoin {
    /// The node that is the primary now
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Copy everything when no common snapshot exists (the old dataset is renamed aside)
    #[arg(long)]
    pub full: bool,
    /// Do not keep the writes made after the fork point
    #[arg(long)]
    pub discard_diverged: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
}

impl Rejoin {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let _lock = LocalLock::acquire(&ctx.local.lock_file, ctx.local.lock_timeout, "rejoin")?;
        let outcome = rejoin_and_reseed(&ctx, &self.to, self.full, self.discard_diverged);
        let summary = report::announce(
            &ctx.config,
            &ctx.local.name,
            "rejoin",
            Some(&self.to),
            outcome,
        )?;
        summary.print(self.json);
        Ok(0)
    }
}

//! `pgzfs follow --to NODE`: point this standby at a new primary without copying
//! anything. The runbook is `failover::follow`.

use clap::Args;

use crate::context::Invocation;
use crate::error::Result;
use crate::events::{self, Event};
use crate::failover::follow::follow;
use crate::lock::LocalLock;

#[derive(Debug, Args)]
pub struct Follow {
    /// The new primary
    #[arg(long, value_name = "NODE")]
    pub to: String,
}

impl Follow {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let _lock = LocalLock::acquire(&ctx.local.lock_file, ctx.local.lock_timeout, "follow")?;
        match follow(&ctx, &self.to) {
            Ok(how) => {
                events::emit(
                    &ctx.config,
                    Event::new("follow", &ctx.local.name, true, how.clone(), Some(&self.to)),
                );
                println!("{} follows {}: {how}", ctx.local.name, self.to);
                Ok(0)
            }
            Err(e) => {
                events::emit_failure(&ctx.config, &ctx.local.name, "follow", &e, Some(&self.to));
                Err(e.context("follow"))
            }
        }
    }
}

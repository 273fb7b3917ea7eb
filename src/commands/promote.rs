//! `pgzfs promote`: turn this standby into the primary, but only after making sure no
//! other node still is one. The runbook and its checks are `failover::promote`.

use clap::Args;

use crate::context::Invocation;
use crate::error::Result;
use crate::failover::promote::promote;
use crate::lock::LocalLock;

#[derive(Debug, Args)]
pub struct Promote {
    /// Promote without asking the other nodes whether one is still a primary (reachable
    /// or not) and even if replay lags: the operator vouches that the old primary is gone
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

impl Promote {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let _lock = LocalLock::acquire(&ctx.local.lock_file, ctx.local.lock_timeout, "promote")?;
        let outcome = promote(&ctx, self.force);
        match outcome {
            Ok(done) => {
                if self.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&done).expect("serializes")
                    );
                } else if done.promoted {
                    println!(
                        "promoted {} in {:.1}s (epoch {}, undo snapshot {})",
                        done.node,
                        done.seconds,
                        done.epoch.unwrap_or_default(),
                        done.prepromote_snapshot.as_deref().unwrap_or("-")
                    );
                } else {
                    println!("{} already is the primary; nothing to do", done.node);
                }
                Ok(0)
            }
            Err(e) => Err(e.context("promote")),
        }
    }
}

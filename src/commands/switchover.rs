//! `pgzfs switchover --to NODE`, run on the primary: a planned role swap that loses no
//! transaction. The runbook is `failover::switchover`.

use clap::Args;

use crate::context::Invocation;
use crate::error::Result;
use crate::events::{self, Event};
use crate::failover::switchover::switchover;
use crate::lock::LocalLock;

#[derive(Debug, Args)]
pub struct Switchover {
    /// The standby that becomes the primary
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

impl Switchover {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let _lock = LocalLock::acquire(&ctx.local.lock_file, ctx.local.lock_timeout, "switchover")?;
        match switchover(&ctx, &self.to) {
            Ok(done) => {
                events::emit(
                    &ctx.config,
                    Event::new(
                        "switchover",
                        &done.new_primary,
                        true,
                        format!(
                            "writes unavailable for {:.1}s",
                            done.write_unavailable_seconds
                        ),
                        Some(&done.old_primary),
                    ),
                );
                if self.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&done).expect("serializes")
                    );
                } else {
                    println!(
                        "switched over from {} to {} in {:.1}s; writes were unavailable for {:.1}s{}",
                        done.old_primary,
                        done.new_primary,
                        done.total_seconds,
                        done.write_unavailable_seconds,
                        if done.not_followed.is_empty() { String::new() } else { format!("; NOT following yet: {}", done.not_followed.join(", ")) }
                    );
                }
                Ok(
                    if done.old_primary_rejoined && done.not_followed.is_empty() {
                        0
                    } else {
                        1
                    },
                )
            }
            Err(e) => {
                events::emit_failure(
                    &ctx.config,
                    &ctx.local.name,
                    "switchover",
                    &e,
                    Some(&self.to),
                );
                Err(e.context("switchover"))
            }
        }
    }
}

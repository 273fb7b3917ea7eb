//! `pgzfs follow --to NODE`: point this standby at a new primary without copying
//! anything: slot on the new primary first, then the standby configuration, then a reload
//! (PostgreSQL 13+) or a restart.

use std::time::{Duration, Instant};

use clap::Args;

use crate::cluster::{pg_target, standby_setup};
use crate::context::{Context, Invocation};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::lock::LocalLock;
use crate::pg::ctl::PgCtl;
use crate::pg::standby::repoint_standby;
use crate::pg::Pg;

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

pub fn follow(ctx: &Context, to: &str) -> Result<String> {
    let local = &ctx.local;
    let target = ctx.peer(to, "--to")?;
    let pgctl = PgCtl::for_node(local)?;
    let running = pgctl.is_running();
    if running {
        let mut pg = Pg::connect(&pg_target(local))?;
        if !pg.is_in_recovery()? {
            return Err(Error::refused(format!("{} is a primary; use `pgzfs rejoin --to {to}` to turn a former primary into a standby", local.name)));
        }
    }
    let mut primary = Pg::connect(&pg_target(&target))
        .map_err(|e| Error::refused(format!("the new primary {to} is not reachable: {e}")))?;
    if !primary.is_writable()? {
        return Err(Error::refused(format!("{to} is not a writable primary")));
    }
    if local.reseed.use_slots {
        let what = primary.ensure_physical_slot(&local.reseed.slot_name)?;
        tracing::info!(
            "replication slot {} on {to}: {what}",
            local.reseed.slot_name
        );
    }
    let major = primary.major();
    repoint_standby(
        &local.data_dir,
        &standby_setup(&ctx.config, local, &target, major),
    )?;
    let how = if !running {
        pgctl.start(local.pg.streaming_timeout)?;
        "started"
    } else if major >= 13 {
        pgctl.reload()?;
        "reloaded"
    } else {
        pgctl.stop(local.pg.stop_timeout)?;
        pgctl.start(local.pg.streaming_timeout)?;
        "restarted"
    };
    wait_streaming_from(&mut primary, &local.name, local.pg.streaming_timeout)?;
    Ok(format!("{how}; streaming"))
}

/// Wait until `primary` lists `node` as streaming.
pub fn wait_streaming_from(primary: &mut Pg, node: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(info) = primary.replication_info(node)? {
            if info.state == "streaming" {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(format!(
                "{node} does not stream from {} after {timeout:?}; if it had replayed past the new primary's fork point it needs `pgzfs rejoin`",
                primary.target().node
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

//! Follow: point this standby at a new primary without copying anything: slot on the
//! new primary first, then the standby configuration, then a reload (PostgreSQL 13+) or a
//! restart.

use std::time::{Duration, Instant};

use super::seam::{LocalServer, Postgres, RealPostgres, Session};
use crate::cluster::standby_setup;
use crate::config::Node;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pg::ctl::PgCtl;
use crate::pg::standby::repoint_standby;

/// Make this standby follow `to`; says how (started, reloaded, restarted). The caller
/// holds the node's lock.
pub fn follow(ctx: &Context, to: &str) -> Result<String> {
    let local = &ctx.local;
    let target = ctx.peer(to, "--to")?;
    let server = PgCtl::for_node(local)?;
    let running = server.is_running();
    let mut primary = check_follow(&RealPostgres, &server, local, &target)?;
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
        server.start(local.pg.streaming_timeout)?;
        "started"
    } else if major >= 13 {
        server.reload()?;
        "reloaded"
    } else {
        server.stop(local.pg.stop_timeout)?;
        server.start(local.pg.streaming_timeout)?;
        "restarted"
    };
    wait_streaming_from(&mut *primary, &local.name, local.pg.streaming_timeout)?;
    Ok(format!("{how}; streaming"))
}

/// Follow's safety checks: a running local server must answer that it is in recovery
/// (a primary rejoins instead; one that cannot be asked is not followed over), and `to`
/// must answer as a writable primary. Returns the session with the new primary.
pub fn check_follow(
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    local: &Node,
    target: &Node,
) -> Result<Box<dyn Session>> {
    let to = &target.name;
    if server.is_running() {
        let mut session = pg.connect(local)?;
        if !session.is_in_recovery()? {
            return Err(Error::refused(format!("{} is a primary; use `pgzfs rejoin --to {to}` to turn a former primary into a standby", local.name)));
        }
    }
    let mut primary = pg
        .connect(target)
        .map_err(|e| Error::refused(format!("the new primary {to} is not reachable: {e}")))?;
    if !primary.is_writable()? {
        return Err(Error::refused(format!("{to} is not a writable primary")));
    }
    Ok(primary)
}

/// Wait until `primary` lists `node` as streaming.
pub fn wait_streaming_from(primary: &mut dyn Session, node: &str, timeout: Duration) -> Result<()> {
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
                primary.node()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

//! Role changes that promote, carp-event, switchover and the daemon share: what this
//! node's PostgreSQL is now, how a primary is fenced, and the settings of both.

use std::time::{Duration, Instant};

use crate::cluster::pg_target;
use crate::context::Context;
use crate::error::Result;
use crate::pg::control;
use crate::pg::ctl::PgCtl;
use crate::pg::standby::set_auto_conf;
use crate::pg::Pg;

/// How a primary that must stop taking writes is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Stop PostgreSQL: the hard fence, and the default.
    Stop,
    /// Keep serving reads: default_transaction_read_only = on, reload, end client sessions.
    ReadOnly,
}

/// What a primary does when its CARP address goes to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackup {
    Fence,
    Rejoin,
}

impl FenceMode {
    pub(crate) fn parse(value: &str) -> Result<FenceMode, String> {
        match value {
            "stop" => Ok(FenceMode::Stop),
            "read-only" => Ok(FenceMode::ReadOnly),
            _ => Err(format!("{value:?} must be \"stop\" or \"read-only\"")),
        }
    }
}

impl OnBackup {
    pub(crate) fn parse(value: &str) -> Result<OnBackup, String> {
        match value {
            "fence" => Ok(OnBackup::Fence),
            "rejoin" => Ok(OnBackup::Rejoin),
            _ => Err(format!("{value:?} must be \"fence\" or \"rejoin\"")),
        }
    }
}

/// What this node's PostgreSQL is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// Running, not in recovery, but refusing writes: fenced read-only earlier.
    FencedPrimary,
    Standby,
    /// Not running; `was_primary` from its control file.
    Stopped {
        was_primary: bool,
    },
}

/// What this node's PostgreSQL is now; a server that runs but does not answer counts
/// as what its control file says, erring towards "primary".
pub fn role(ctx: &Context, pgctl: &PgCtl) -> Result<Role> {
    if !pgctl.is_running() {
        let was_primary =
            control::read_control(&ctx.local.data_dir)?.is_some_and(|c| c.state.was_primary());
        return Ok(Role::Stopped { was_primary });
    }
    let asked = Pg::connect(&pg_target(&ctx.local))
        .and_then(|mut pg| Ok((pg.is_in_recovery()?, pg.is_writable()?)));
    match asked {
        Ok((true, _)) => Ok(Role::Standby),
        Ok((false, true)) => Ok(Role::Primary),
        Ok((false, false)) => Ok(Role::FencedPrimary),
        // Running but not answering: its control file decides, erring towards "primary"
        // so that BACKUP fences it.
        Err(e) => {
            let in_recovery =
                control::read_control(&ctx.local.data_dir)?.is_some_and(|c| !c.state.was_primary());
            tracing::warn!(
                "cannot ask the local PostgreSQL its role ({e}); control file says {}",
                if in_recovery { "standby" } else { "primary" }
            );
            Ok(if in_recovery {
                Role::Standby
            } else {
                Role::Primary
            })
        }
    }
}

/// Make this primary stop taking writes, the way `fence_mode` says; `why` is written
/// next to the read-only setting.
pub fn fence(ctx: &Context, pgctl: &PgCtl, why: &str) -> Result<String> {
    let local = &ctx.local;
    match local.failover.fence_mode {
        FenceMode::Stop => Ok(format!(
            "PostgreSQL stopped, {}",
            pgctl.stop(local.pg.stop_timeout)?
        )),
        FenceMode::ReadOnly => {
            // New transactions start read-only after the reload; sessions that began
            // earlier are ended so none keeps writing. (A session could still SET
            // transaction_read_only = off: "stop" is the hard fence.)
            set_auto_conf(&local.data_dir, "default_transaction_read_only", "on", why)?;
            pgctl.reload()?;
            // The server ends the sessions itself: a PID read from a connection is never
            // signalled by root. If they cannot be ended, writes could go on: stop instead.
            let ended =
                Pg::connect(&pg_target(local)).and_then(|mut pg| pg.terminate_client_sessions());
            let (found, ended) = match ended {
                Ok(counts) => counts,
                Err(e) => {
                    pgctl.stop(local.pg.stop_timeout)?;
                    return Ok(format!(
                        "could not end the client sessions ({e}); PostgreSQL stopped instead"
                    ));
                }
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Pg::connect(&pg_target(local))
                .and_then(|mut pg| pg.is_writable())
                .unwrap_or(true)
            {
                if Instant::now() >= deadline {
                    pgctl.stop(local.pg.stop_timeout)?;
                    return Ok("read-only did not take effect; PostgreSQL stopped instead".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(format!(
                "read-only, {ended} of {found} client sessions ended"
            ))
        }
    }
}

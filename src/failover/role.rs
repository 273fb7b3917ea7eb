//! What this node's PostgreSQL is now, the one place that decides it, and how a primary
//! is fenced.
//!
//! The fallback policy, used by carp-event, the isolation fence, the re-seed preflight,
//! the daemon and status alike: **unknown is never "not a primary"**. A server that runs
//! but does not answer is reported as `Role::Unanswered`; whoever acts on the role treats
//! it as a standby only when its pg_control says it was in recovery
//! (`Role::assumed`), and as a primary otherwise. A stopped server is only ever *started*
//! as a standby when standby.signal (or recovery.conf) says it comes up in recovery.

use std::time::{Duration, Instant};

use super::seam::{LocalServer, Postgres};
use super::FenceMode;
use crate::config::Node;
use crate::error::Result;
use crate::pg::control::ControlData;
use crate::pg::standby::set_auto_conf;

/// What pg_control says about the data directory's last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastRan {
    /// Read-write (in production, or shut down as a primary).
    Primary,
    /// In recovery, or any state that is not a primary's.
    Standby,
    /// No pg_control: no data directory (yet).
    Nothing,
}

/// What the data directory says, for a server that cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDir {
    pub last_ran: LastRan,
    /// standby.signal or recovery.conf: a start comes up in recovery.
    pub starts_as_standby: bool,
}

impl DataDir {
    /// pg_control's verdict: Some(true) last ran as a primary, None no pg_control.
    pub fn last_state_was_primary(self) -> Option<bool> {
        match self.last_ran {
            LastRan::Primary => Some(true),
            LastRan::Standby => Some(false),
            LastRan::Nothing => None,
        }
    }
}

/// What this node's PostgreSQL is right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Running, answers, not in recovery, takes writes.
    Primary,
    /// Running, not in recovery, but refusing writes: fenced read-only earlier.
    FencedPrimary,
    /// Running, answers, in recovery.
    Standby,
    /// Not running.
    Stopped(DataDir),
    /// Running, but it could not be asked (why): only its data directory can be read.
    Unanswered(DataDir, String),
}

impl Role {
    /// The role to act on, by the one fallback policy: a server that does not answer
    /// counts as what its pg_control says, and as a primary unless pg_control says it was
    /// in recovery (so that BACKUP and the isolation fence fence it, and MASTER does not
    /// promote over it). Never returns `Unanswered`.
    pub fn assumed(self) -> Role {
        match self {
            Role::Unanswered(data, why) => {
                let standby = data.last_ran == LastRan::Standby;
                tracing::warn!(
                    "cannot ask the local PostgreSQL its role ({why}); its control file says {}",
                    if standby { "standby" } else { "primary" }
                );
                if standby {
                    Role::Standby
                } else {
                    Role::Primary
                }
            }
            known => known,
        }
    }

    /// Stopped, and pg_control says it last ran as a primary.
    pub fn is_stopped_former_primary(&self) -> bool {
        matches!(self, Role::Stopped(d) if d.last_ran == LastRan::Primary)
    }

    /// As `pgzfs status` and the health endpoint name it: primary, standby, stopped, or
    /// unknown (running but not answering: never reported as "not a primary").
    pub fn name(&self) -> &'static str {
        match self {
            Role::Primary | Role::FencedPrimary => "primary",
            Role::Standby => "standby",
            Role::Stopped(_) => "stopped",
            Role::Unanswered(..) => "unknown",
        }
    }
}

/// What this node's PostgreSQL is now: asked on a fresh connection when it runs, read
/// from its data directory otherwise (or when it does not answer).
pub fn local_role(pg: &dyn Postgres, server: &dyn LocalServer, local: &Node) -> Result<Role> {
    local_role_reading(pg, server, local, &|| server.control())
}

/// `local_role` with pg_control given by the caller (the re-seed preflight reads it
/// once, and not at all from the first part of an interrupted full receive).
pub fn local_role_reading(
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    local: &Node,
    control: &dyn Fn() -> Result<Option<ControlData>>,
) -> Result<Role> {
    let data_dir = || -> Result<DataDir> {
        let last_ran = match control()? {
            Some(c) if c.state.was_primary() => LastRan::Primary,
            Some(_) => LastRan::Standby,
            None => LastRan::Nothing,
        };
        Ok(DataDir {
            last_ran,
            starts_as_standby: server.starts_as_standby(),
        })
    };
    if !server.is_running() {
        return Ok(Role::Stopped(data_dir()?));
    }
    let asked = pg
        .connect(local)
        .and_then(|mut s| Ok((s.is_in_recovery()?, s.is_writable()?)));
    Ok(match asked {
        Ok((true, _)) => Role::Standby,
        Ok((false, true)) => Role::Primary,
        Ok((false, false)) => Role::FencedPrimary,
        Err(e) => Role::Unanswered(data_dir()?, e.to_string()),
    })
}

/// Make this primary stop taking writes, the way `fence_mode` says; `why` is written
/// next to the read-only setting.
pub fn fence(
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    local: &Node,
    why: &str,
) -> Result<String> {
    match local.failover.fence_mode {
        FenceMode::Stop => Ok(format!(
            "PostgreSQL stopped, {}",
            server.stop(local.pg.stop_timeout)?
        )),
        FenceMode::ReadOnly => {
            // New transactions start read-only after the reload; sessions that began
            // earlier are ended so none keeps writing. (A session could still SET
            // transaction_read_only = off: "stop" is the hard fence.)
            set_auto_conf(&local.data_dir, "default_transaction_read_only", "on", why)?;
            server.reload()?;
            // The server ends the sessions itself: a PID read from a connection is never
            // signalled by root. If they cannot be ended, writes could go on: stop instead.
            let ended = pg
                .connect(local)
                .and_then(|mut s| s.terminate_client_sessions());
            let (found, ended) = match ended {
                Ok(counts) => counts,
                Err(e) => {
                    server.stop(local.pg.stop_timeout)?;
                    return Ok(format!(
                        "could not end the client sessions ({e}); PostgreSQL stopped instead"
                    ));
                }
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while pg
                .connect(local)
                .and_then(|mut s| s.is_writable())
                .unwrap_or(true)
            {
                if Instant::now() >= deadline {
                    server.stop(local.pg.stop_timeout)?;
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

//! Switchover, run on the primary: a planned role swap that loses no
//! transaction. The old primary stops cleanly, the target replays up to the old primary's
//! shutdown checkpoint, and only then is promoted; the old primary rejoins incrementally
//! and the other standbys follow. It never ends with zero primaries or two: if the
//! promotion fails, the old primary starts again as the primary.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::promote::wait_until_writable;
use super::rejoin::rejoin_and_reseed;
use super::seam::{LocalServer, Postgres, RealPostgres, Session};
use crate::config::Node;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::exec::{remote_pgzfs, Cmd, Runner};
use crate::pg::control;
use crate::pg::ctl::PgCtl;
use crate::steps::round;

#[derive(Debug, Serialize)]
pub struct Switched {
    pub old_primary: String,
    pub new_primary: String,
    pub shutdown_checkpoint: String,
    /// From the old primary's stop until the new one accepted writes.
    pub write_unavailable_seconds: f64,
    pub total_seconds: f64,
    pub old_primary_rejoined: bool,
    pub followed: Vec<String>,
    pub not_followed: Vec<String>,
}

/// Hand the primary role to `to`. The caller holds the node's lock.
pub fn switchover(ctx: &Context, to: &str) -> Result<Switched> {
    let started = Instant::now();
    let local = &ctx.local;
    let target = ctx.peer(to, "--to")?;
    let pg = &RealPostgres;
    let server = &PgCtl::for_node(local)?;
    let mut session = check_switchover(pg, local, &target)?;
    // Check that we can reach the target over SSH before anything stops.
    let ssh = ctx.remote_shell(&target)?;

    // 2. A checkpoint first makes the shutdown checkpoint quick; it needs privileges
    //    the replication role may lack, and the clean stop writes one anyway.
    if let Err(e) = session.checkpoint() {
        tracing::info!(
            "CHECKPOINT before the stop was not possible ({e}); the shutdown checkpoint will do"
        );
    }
    drop(session);
    let unavailable_from = Instant::now();
    server.stop(local.pg.stop_timeout)?;

    // 3. The last thing the old primary wrote.
    let control = server
        .control()?
        .ok_or_else(|| Error::failed("no pg_control after the stop"))?;
    if control.state != control::ClusterState::ShutDown {
        restart_as_primary(server, local);
        return Err(Error::failed(format!(
            "{} did not shut down cleanly ({:?}); restarted it as the primary",
            local.name, control.state
        )));
    }
    let shutdown_lsn = control.checkpoint_lsn;
    tracing::info!(
        "{} stopped cleanly; shutdown checkpoint at {shutdown_lsn}",
        local.name
    );

    // 4. The target must have everything, up to and including that checkpoint.
    if let Err(e) = wait_for_replay(pg, &target, shutdown_lsn, local.pg.streaming_timeout) {
        restart_as_primary(server, local);
        return Err(e.context(format!("{} restarted as the primary", local.name)));
    }

    // 5. Promote the target with its own pgzfs (it takes the undo snapshot and the epoch).
    let promote = remote_pgzfs(&local.ssh.pgzfs_bin, &ctx.config.path, &target.name)
        .args(["promote", "--force"]);
    let promoted = ssh
        .run(&promote)
        .and_then(|_| wait_until_writable(pg, &target, local.failover.promote_timeout));
    if let Err(e) = promoted {
        // Restart the old primary only on proof that the target is still a standby: a
        // channel that broke after the remote promote succeeded looks just like a
        // promote that failed, and restarting then would make two primaries.
        let seen = target_seen(pg, &target);
        return match after_failed_promote(&seen, &local.name, to) {
            AfterFailedPromote::RestartOldPrimary => {
                restart_as_primary(server, local);
                Err(e.context(format!(
                    "promoting {to} failed and {to} is still in recovery; {} restarted as the primary",
                    local.name
                )))
            }
            AfterFailedPromote::StayStopped(what_to_do) => {
                tracing::error!("{what_to_do}");
                Err(Error::failed(format!("{e}; {what_to_do}")))
            }
        };
    }
    let write_unavailable = unavailable_from.elapsed();
    tracing::info!(
        "{to} accepts writes; writes were unavailable for {:.1}s",
        write_unavailable.as_secs_f64()
    );

    // 6. The old primary rejoins. Nothing diverged: the target replayed our last record.
    let rejoined = rejoin_and_reseed(ctx, &target.name, false, true);
    let old_primary_rejoined = match rejoined {
        Ok(summary) => {
            tracing::info!(
                "{} rejoined: {} re-seed of {} bytes",
                local.name,
                summary.mode,
                summary.bytes
            );
            true
        }
        Err(e) => {
            tracing::error!("{} could not rejoin as a standby of {to}: {e}; it stays stopped (run `pgzfs rejoin --to {to}`)", local.name);
            false
        }
    };

    // 7. Every other standby follows the new primary, each by its own pgzfs.
    let mut followed = Vec::new();
    let mut not_followed = Vec::new();
    for node in ctx
        .config
        .other_nodes(local)
        .filter(|n| n.name != target.name)
    {
        match follow_remotely(ctx, local, node, &target.name) {
            Ok(()) => followed.push(node.name.clone()),
            Err(e) => {
                tracing::error!("{} does not follow {to} yet: {e}", node.name);
                not_followed.push(node.name.clone());
            }
        }
    }

    // 8. Move the CARP address along.
    if let Some(command) = &local.failover.carp_move_command {
        match crate::exec::run(&Cmd::new("/bin/sh").arg("-c").arg(command.clone()), None) {
            Ok(_) => tracing::info!("carp_move_command ran: {command}"),
            Err(e) => tracing::error!("carp_move_command failed: {e}"),
        }
    }

    Ok(Switched {
        old_primary: local.name.clone(),
        new_primary: target.name.clone(),
        shutdown_checkpoint: shutdown_lsn.to_string(),
        write_unavailable_seconds: round(write_unavailable.as_secs_f64()),
        total_seconds: round(started.elapsed().as_secs_f64()),
        old_primary_rejoined,
        followed,
        not_followed,
    })
}

/// What the old primary learned about the target after its promotion seemed to fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSeen {
    InRecovery,
    /// Answers and is not in recovery: it was promoted.
    NotInRecovery,
    /// Does not answer (why).
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailedPromote {
    RestartOldPrimary,
    /// Stay stopped; the text says why and what the operator does next.
    StayStopped(String),
}

/// Only proof that the target is still in recovery brings the old primary back.
pub fn after_failed_promote(seen: &TargetSeen, old: &str, target: &str) -> AfterFailedPromote {
    match seen {
        TargetSeen::InRecovery => AfterFailedPromote::RestartOldPrimary,
        TargetSeen::NotInRecovery => AfterFailedPromote::StayStopped(format!(
            "{target} was promoted after all; {old} stays stopped. Make {old} a standby of {target} \
             with `pgzfs rejoin --to {target}` on {old}"
        )),
        TargetSeen::Unknown(why) => AfterFailedPromote::StayStopped(format!(
            "cannot tell whether {target} was promoted ({why}); {old} stays stopped so that there \
             are never two primaries. Look at {target}: if it is a primary, run `pgzfs rejoin --to {target}` \
             on {old}; if it is still a standby, start PostgreSQL on {old} again (it is the primary)"
        )),
    }
}

/// Switchover's checks before anything stops: this node must be the writable primary,
/// and `target` must stream from it within `switchover_max_lag` (a lag nobody reports
/// counts as too much). Returns the session with this primary.
pub fn check_switchover(
    pg: &dyn Postgres,
    local: &Node,
    target: &Node,
) -> Result<Box<dyn Session>> {
    let to = &target.name;
    let mut session = pg.connect(local)?;
    if !session.is_writable()? {
        return Err(Error::refused(format!(
            "run switchover on the primary; {} is not a writable primary",
            local.name
        )));
    }

    // 1. The target must be streaming and close behind.
    let info = session.replication_info(&target.name)?.ok_or_else(|| {
        Error::refused(format!(
            "{to} is not connected to {} as a standby",
            local.name
        ))
    })?;
    let lag = info.replay_lag_bytes.unwrap_or(i64::MAX).max(0) as u64;
    if info.state != "streaming" || lag > local.failover.switchover_max_lag {
        return Err(Error::refused(format!(
            "{to} is {} with {lag} bytes of replay lag (switchover_max_lag = {}); not switching over",
            info.state, local.failover.switchover_max_lag
        )));
    }
    Ok(session)
}

/// Whether the target is still in recovery, asked on a fresh connection.
pub fn target_seen(pg: &dyn Postgres, target: &Node) -> TargetSeen {
    match pg.connect(target).and_then(|mut p| p.is_in_recovery()) {
        Ok(true) => TargetSeen::InRecovery,
        Ok(false) => TargetSeen::NotInRecovery,
        Err(why) => TargetSeen::Unknown(why.to_string()),
    }
}

fn restart_as_primary(server: &dyn LocalServer, local: &Node) {
    if let Err(e) = server.start(local.pg.streaming_timeout) {
        tracing::error!("could not restart {} as the primary: {e}", local.name);
    }
}

fn wait_for_replay(
    pg: &dyn Postgres,
    target: &Node,
    lsn: control::Lsn,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let replayed = pg.connect(target).and_then(|mut s| s.replay_lsn());
        match replayed {
            // The replay position is the end of the last record replayed: past the start of
            // the shutdown checkpoint means the checkpoint itself was replayed.
            Ok(Some(at)) if at > lsn => return Ok(()),
            Ok(at) => tracing::debug!(
                "{} replayed {:?} of {lsn}",
                target.name,
                at.map(|l| l.to_string())
            ),
            Err(e) => tracing::debug!("asking {} for its replay position: {e}", target.name),
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(format!(
                "{} did not replay up to the shutdown checkpoint {lsn} within {timeout:?}",
                target.name
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn follow_remotely(ctx: &Context, local: &Node, node: &Node, new_primary: &str) -> Result<()> {
    let ssh = ctx.remote_shell(node)?;
    let cmd = remote_pgzfs(&local.ssh.pgzfs_bin, &ctx.config.path, &node.name).args([
        "follow",
        "--to",
        new_primary,
    ]);
    ssh.run(&cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_primary_restarts_only_when_the_target_is_proven_still_in_recovery() {
        let cases = [
            (TargetSeen::InRecovery, true),
            (TargetSeen::NotInRecovery, false),
            // The channel broke after the remote promote: unknown is not "not promoted".
            (TargetSeen::Unknown("connection refused".into()), false),
        ];
        for (seen, restart) in cases {
            let decided = after_failed_promote(&seen, "db1", "db2");
            assert_eq!(
                decided == AfterFailedPromote::RestartOldPrimary,
                restart,
                "{seen:?}: {decided:?}"
            );
            if let AfterFailedPromote::StayStopped(text) = decided {
                assert!(text.contains("db1 stays stopped"), "{text}");
                assert!(text.contains("pgzfs rejoin --to db2"), "{text}");
            }
        }
    }
}

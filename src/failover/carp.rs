//! What a CARP state change calls for on this node. MASTER, and the rejoin after
//! BACKUP, are serialized by the node's lock; fencing on BACKUP never waits for it. Every
//! decision is logged with its reason, and each state is handled idempotently: the same
//! event twice does nothing the second time, because each action first checks whether
//! it is needed.

use std::time::{Duration, Instant};

use super::promote::{local_epoch, promote};
use super::rejoin::rejoin_and_reseed;
use super::role::{fence, local_role, Role};
use super::seam::RealPostgres;
use super::OnBackup;
use crate::cluster::find_primary;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::lock::LocalLock;
use crate::pg::ctl::PgCtl;
use crate::replicate::report;

/// What CARP MASTER calls for, given this node's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAction {
    /// A writable primary already: nothing to do.
    Nothing,
    /// A running standby: promote it (promote asks every other node first).
    Promote,
    /// A primary fenced read-only: it does not take writes again; it rejoins.
    RefuseFencedPrimary,
    /// Stopped, last ran as a primary: never started as a primary again; it rejoins.
    RefuseFormerPrimary,
    /// Stopped standby: nothing to promote.
    RefuseStopped,
}

/// MASTER's decision. `role` is as `Role::assumed` gives it: a server that does not
/// answer and whose pg_control does not say "in recovery" counts as the primary, so
/// that MASTER never promotes over it.
pub fn master_action(role: &Role) -> MasterAction {
    match role {
        Role::Primary => MasterAction::Nothing,
        Role::Standby => MasterAction::Promote,
        Role::FencedPrimary => MasterAction::RefuseFencedPrimary,
        Role::Stopped(_) if role.is_stopped_former_primary() => MasterAction::RefuseFormerPrimary,
        Role::Stopped(_) => MasterAction::RefuseStopped,
        // Not given by `assumed`; if it were, unknown is not "not a primary".
        Role::Unanswered(..) => MasterAction::Nothing,
    }
}

/// CARP MASTER: this node holds the address now. The caller holds the node's lock.
pub fn on_master(ctx: &Context) -> Result<String> {
    let local = &ctx.local;
    let server = PgCtl::for_node(local)?;
    let role = local_role(&RealPostgres, &server, local)?.assumed();
    match master_action(&role) {
        MasterAction::Nothing => Ok(format!("{} already is the primary; nothing to do", local.name)),
        MasterAction::Promote => {
            let done = promote(ctx, false)?;
            Ok(format!("promoted {} (epoch {})", local.name, done.epoch.unwrap_or_default()))
        }
        MasterAction::RefuseFencedPrimary => Err(Error::refused(format!(
            "{} is a primary fenced read-only; it does not take writes again. Rejoin it with `pgzfs rejoin`",
            local.name
        ))),
        MasterAction::RefuseFormerPrimary => Err(Error::refused(format!(
            "{} holds a fenced former primary (epoch {}); it is not started as a primary again. Rejoin it with `pgzfs rejoin`",
            local.name,
            local_epoch(ctx).unwrap_or(0)
        ))),
        MasterAction::RefuseStopped => Err(Error::refused(format!("PostgreSQL on {} is not running; a stopped standby cannot be promoted", local.name))),
    }
}

/// What CARP BACKUP (or INIT) calls for, given this node's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupAction {
    /// A standby: nothing to fence and nothing to rejoin.
    Nothing(&'static str),
    /// A writable primary: fence it now, without waiting for anything.
    Fence,
    /// Takes no writes already; it may still rejoin.
    AlreadyFenced(&'static str),
}

/// BACKUP's decision. `role` is as `Role::assumed` gives it: a server that does not
/// answer is fenced unless its pg_control says it was in recovery.
pub fn backup_action(role: &Role) -> BackupAction {
    match role {
        Role::Standby => BackupAction::Nothing("is a standby"),
        Role::Primary | Role::Unanswered(..) => BackupAction::Fence,
        Role::FencedPrimary => BackupAction::AlreadyFenced("is a primary fenced read-only already"),
        Role::Stopped(_) if role.is_stopped_former_primary() => {
            BackupAction::AlreadyFenced("is a fenced former primary")
        }
        Role::Stopped(_) => BackupAction::Nothing("is a stopped standby"),
    }
}

/// CARP BACKUP or INIT: another node holds the address. Fences a primary at once; with
/// `OnBackup::Rejoin`, then waits for the lock and rejoins the new primary.
pub fn on_backup(ctx: &Context, then: OnBackup) -> Result<String> {
    let local = &ctx.local;
    let pg = RealPostgres;
    let server = PgCtl::for_node(local)?;
    let mut said = Vec::new();
    match backup_action(&local_role(&pg, &server, local)?.assumed()) {
        BackupAction::Nothing(what) => return Ok(format!("{} {what}; nothing to do", local.name)),
        BackupAction::Fence => {
            // Another node holds the address now: stop taking writes at once.
            let how = fence(&pg, &server, local, "fenced read-only by carp-event")?;
            said.push(format!("fenced {} ({how})", local.name));
            events::emit(
                &ctx.config,
                Event::new(
                    "fence",
                    &local.name,
                    true,
                    format!("CARP BACKUP: {how}"),
                    None,
                ),
            );
        }
        BackupAction::AlreadyFenced(what) => said.push(format!("{} {what}", local.name)),
    }
    if then == OnBackup::Rejoin {
        // Rejoining changes the data directory: that does wait for the lock.
        let _lock = LocalLock::acquire(&local.lock_file, local.lock_timeout, "carp-event rejoin")?;
        let new_primary = wait_for_new_primary(ctx, local.failover.promote_timeout)?;
        let outcome = rejoin_and_reseed(ctx, &new_primary, false, false);
        report::announce(
            &ctx.config,
            &ctx.local.name,
            "rejoin",
            Some(&new_primary),
            outcome,
        )?
        .print(false);
        said.push(format!("rejoined as a standby of {new_primary}"));
    }
    Ok(said.join("; "))
}

/// The one other node that is a writable primary, once it is reachable.
fn wait_for_new_primary(ctx: &Context, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match find_primary(&ctx.config, &ctx.local, None) {
            Ok((node, _)) => return Ok(node.name),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("waiting for the new primary to rejoin"))
            }
            Err(e) => tracing::debug!("no new primary yet: {e}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

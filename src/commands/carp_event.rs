//! `pgzfs carp-event MASTER|BACKUP|INIT`: the one hook for every CARP driver (ifstated,
//! devd, ucarp, keepalived). MASTER, and the rejoin after BACKUP, are serialized by the
//! node's lock; fencing on BACKUP never waits for it. Every decision is logged with its
//! reason, and each state is handled idempotently: the same event twice
//! does nothing the second time, because each action first checks whether it is needed.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::cluster::find_primary;
use crate::commands::promote::{local_epoch, promote};
use crate::commands::rejoin::rejoin;
use crate::context::{Context, Invocation};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::failover::{fence, role, OnBackup, Role};
use crate::lock::LocalLock;
use crate::pg::ctl::PgCtl;
use crate::replicate::{self, report, ReseedRequest};
use crate::transfer::Interrupt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum CarpState {
    Master,
    Backup,
    Init,
}

#[derive(Debug, Args)]
pub struct CarpEvent {
    /// The new CARP state of this node
    #[arg(value_enum, ignore_case = true)]
    pub state: CarpState,
    /// The CARP interface (for the log)
    #[arg(long)]
    pub iface: Option<String>,
    /// The virtual host id (for the log)
    #[arg(long)]
    pub vhid: Option<u32>,
    /// devd's "VHID@IFACE" subsystem, instead of --vhid and --iface
    #[arg(long, value_name = "VHID@IFACE", conflicts_with_all = ["iface", "vhid"])]
    pub subsystem: Option<String>,
}

impl CarpEvent {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let (vhid, iface) = match &self.subsystem {
            Some(subsystem) => {
                let (vhid, iface) = subsystem.split_once('@').ok_or_else(|| {
                    Error::usage(format!("--subsystem {subsystem:?} is not VHID@IFACE"))
                })?;
                (vhid.to_string(), iface.to_string())
            }
            None => (
                self.vhid
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into()),
                self.iface.clone().unwrap_or_else(|| "?".into()),
            ),
        };
        tracing::info!(
            "CARP {:?} on {} (iface {iface}, vhid {vhid})",
            self.state,
            ctx.local.name
        );
        let decision = match self.state {
            CarpState::Master => {
                LocalLock::acquire(&ctx.local.lock_file, ctx.local.lock_timeout, "carp-event")
                    .and_then(|_lock| on_master(&ctx))
            }
            // Fencing never waits for the lock: a re-seed, a switchover or a snapshot
            // holding it for minutes must not keep a demoted primary taking writes.
            CarpState::Backup => on_backup(&ctx, ctx.local.failover.on_backup),
            CarpState::Init => on_backup(&ctx, OnBackup::Fence),
        };
        match decision {
            Ok(what) => {
                tracing::info!("carp-event {:?}: {what}", self.state);
                println!("{what}");
                Ok(0)
            }
            Err(e) => Err(e.context(format!("carp-event {:?}", self.state))),
        }
    }
}

fn on_master(ctx: &Context) -> Result<String> {
    let local = &ctx.local;
    let pgctl = PgCtl::for_node(local)?;
    match role(ctx, &pgctl)? {
        Role::Primary => Ok(format!("{} already is the primary; nothing to do", local.name)),
        Role::Standby => {
            let done = promote(ctx, false)?;
            Ok(format!("promoted {} (epoch {})", local.name, done.epoch.unwrap_or_default()))
        }
        Role::FencedPrimary => Err(Error::refused(format!(
            "{} is a primary fenced read-only; it does not take writes again. Rejoin it with `pgzfs rejoin`",
            local.name
        ))),
        Role::Stopped { was_primary: true } => Err(Error::refused(format!(
            "{} holds a fenced former primary (epoch {}); it is not started as a primary again. Rejoin it with `pgzfs rejoin`",
            local.name,
            local_epoch(local).unwrap_or(0)
        ))),
        Role::Stopped { was_primary: false } => Err(Error::refused(format!("PostgreSQL on {} is not running; a stopped standby cannot be promoted", local.name))),
    }
}

/// What CARP BACKUP (or INIT) calls for, given this node's role.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BackupAction {
    /// A standby: nothing to fence and nothing to rejoin.
    Nothing(&'static str),
    /// A writable primary: fence it now, without waiting for anything.
    Fence,
    /// Takes no writes already; it may still rejoin.
    AlreadyFenced(&'static str),
}

fn backup_action(role: Role) -> BackupAction {
    match role {
        Role::Standby => BackupAction::Nothing("is a standby"),
        Role::Stopped { was_primary: false } => BackupAction::Nothing("is a stopped standby"),
        Role::Primary => BackupAction::Fence,
        Role::FencedPrimary => BackupAction::AlreadyFenced("is a primary fenced read-only already"),
        Role::Stopped { was_primary: true } => {
            BackupAction::AlreadyFenced("is a fenced former primary")
        }
    }
}

fn on_backup(ctx: &Context, then: OnBackup) -> Result<String> {
    let local = &ctx.local;
    let pgctl = PgCtl::for_node(local)?;
    let mut said = Vec::new();
    match backup_action(role(ctx, &pgctl)?) {
        BackupAction::Nothing(what) => return Ok(format!("{} {what}; nothing to do", local.name)),
        BackupAction::Fence => {
            // Another node holds the address now: stop taking writes at once.
            let how = fence(ctx, &pgctl, "fenced read-only by carp-event")?;
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
        let request = ReseedRequest::rejoin(&new_primary, false);
        let outcome = rejoin(ctx, &new_primary, false, false)
            .and_then(|_| Interrupt::install())
            .and_then(|interrupt| replicate::reseed_unattended(ctx, &request, interrupt));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_fences_exactly_the_nodes_that_take_writes() {
        let cases = [
            (Role::Primary, BackupAction::Fence),
            (Role::Standby, BackupAction::Nothing("is a standby")),
            (
                Role::Stopped { was_primary: false },
                BackupAction::Nothing("is a stopped standby"),
            ),
            (
                Role::FencedPrimary,
                BackupAction::AlreadyFenced("is a primary fenced read-only already"),
            ),
            (
                Role::Stopped { was_primary: true },
                BackupAction::AlreadyFenced("is a fenced former primary"),
            ),
        ];
        for (role, want) in cases {
            assert_eq!(backup_action(role), want, "{role:?}");
        }
    }
}

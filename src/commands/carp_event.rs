//! `pgzfs carp-event MASTER|BACKUP|INIT`: the one hook for every CARP driver (ifstated,
//! devd, ucarp, keepalived). MASTER takes the node's lock; fencing on BACKUP never waits
//! for it. What each state calls for is decided in `failover::carp`.

use clap::{Args, ValueEnum};

use crate::context::Invocation;
use crate::error::{Error, Result};
use crate::failover::carp::{on_backup, on_master};
use crate::failover::OnBackup;
use crate::lock::LocalLock;

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

//! The command line: one struct per subcommand, each knowing how to run itself.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::reset_secondary::ResetSecondary;
use crate::commands::serve::Serve;
use crate::config::{config_path, Config, Node};
use crate::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "pgzfs",
    version,
    about = "Keep PostgreSQL standbys in sync with ZFS snapshots"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand understands, before or after the subcommand's name.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Config file [default: $PGZFS_CONFIG, then /usr/local/etc/pgzfs.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// This node's name [default: $PGZFS_NODE, then the node named like the hostname]
    #[arg(long, global = true, value_name = "NAME")]
    pub node: Option<String>,
    /// Log debug details too
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Re-seed this standby from the primary with an incremental ZFS snapshot
    ResetSecondary(ResetSecondary),
    /// SSH forced command: run only the zfs commands a standby needs from this node
    Serve(Serve),
    /// Promote this standby, after checking that no other node is a writable primary
    Promote(crate::commands::promote::Promote),
    /// React to a CARP state change (ifstated, devd, ucarp or keepalived hook)
    CarpEvent(crate::commands::carp_event::CarpEvent),
    /// Turn a stopped or fenced former primary into a standby, keeping its diverged writes
    Rejoin(crate::commands::rejoin::Rejoin),
    /// Point this standby at a new primary
    Follow(crate::commands::follow::Follow),
    /// Planned role swap with zero data loss, run on the primary
    Switchover(crate::commands::switchover::Switchover),
    /// Take a backup-safe snapshot of this primary's dataset now
    Snapshot(crate::commands::snapshot::TakeSnapshot),
    /// List this node's snapshots with their holds and the standbys they are the base of
    Snapshots(crate::commands::snapshots::ListSnapshots),
    /// Apply [retention] to this node's pgzfs snapshots, showing what is kept and why
    Prune(crate::commands::prune::Prune),
    /// Check the config (and, without --config-only, this node's dataset and PostgreSQL)
    Check(crate::commands::check::Check),
    /// Show every node of the cluster: role, lag, common snapshot, slots, warnings
    Status(crate::commands::status::Status),
    /// Run as a service: scheduled snapshots on the primary, automatic re-seed on a standby
    Daemon(crate::commands::daemon::Daemon),
    /// Run `zfs send` here and write its stream zstd-compressed (asked by a standby with
    /// ssh_compress; not for operators)
    #[command(hide = true)]
    CompressedSend(crate::commands::compressed_send::CompressedSend),
}

impl Cli {
    pub fn run(self) -> Result<i32> {
        match self.command {
            Command::ResetSecondary(cmd) => cmd.run(&self.global),
            Command::Serve(cmd) => cmd.run(&self.global),
            Command::Promote(cmd) => cmd.run(&self.global),
            Command::CarpEvent(cmd) => cmd.run(&self.global),
            Command::Rejoin(cmd) => cmd.run(&self.global),
            Command::Follow(cmd) => cmd.run(&self.global),
            Command::Switchover(cmd) => cmd.run(&self.global),
            Command::Snapshot(cmd) => cmd.run(&self.global),
            Command::Snapshots(cmd) => cmd.run(&self.global),
            Command::Prune(cmd) => cmd.run(&self.global),
            Command::Check(cmd) => cmd.run(&self.global),
            Command::Status(cmd) => cmd.run(&self.global),
            Command::Daemon(cmd) => cmd.run(&self.global),
            Command::CompressedSend(cmd) => cmd.run(),
        }
    }
}

/// What a subcommand needs from the global flags: the parsed config and this node.
pub struct Context {
    pub config: Config,
    pub local: Node,
}

impl Context {
    /// Another configured node, named by `flag` (e.g. `--to`): a usage error when it is
    /// unknown or names this node.
    pub fn peer(&self, name: &str, flag: &str) -> Result<Node> {
        let node = self.config.node(name).map_err(|e| e.context(flag))?;
        if node.name == self.local.name {
            return Err(crate::error::Error::usage(format!(
                "{flag} {name} names this node"
            )));
        }
        Ok(node.clone())
    }
}

impl Global {
    /// Load the config, pick the local node and start logging to its log file.
    pub fn load(&self) -> Result<Context> {
        let path = config_path(self.config.as_deref());
        let config = Config::load(&path)?;
        let local = config.local_node(self.node.as_deref())?.clone();
        crate::log::init(&config.log_file, &local.name, self.verbose);
        Ok(Context { config, local })
    }
}

//! The command line: one struct per subcommand, each knowing how to run itself.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::commands::reset_secondary::ResetSecondary;
use crate::commands::serve::Serve;
use crate::context::Invocation;
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
    /// Prove a snapshot restores: start a throwaway server on a clone of it and check it
    Verify(crate::commands::verify::Verify),
    /// A writable throwaway PostgreSQL on a clone of a snapshot (or --drop one)
    Clone(crate::commands::clone::Clone),
    /// Upgrade this primary to a new PostgreSQL major with pg_upgrade --link, rolling
    /// back to a snapshot on any failure
    Upgrade(crate::commands::upgrade::Upgrade),
    /// Run as a service: scheduled snapshots on the primary, automatic re-seed on a standby
    Daemon(crate::commands::daemon::Daemon),
    /// Run `zfs send` here and write its stream zstd-compressed (asked by a standby with
    /// ssh_compress; not for operators)
    #[command(hide = true)]
    CompressedSend(crate::commands::compressed_send::CompressedSend),
    /// Print a shell completion script on stdout (installed by the package; see pgzfs(8))
    #[command(hide = true)]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell (sh has no programmable
        /// completion)
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    pub fn run(self) -> Result<i32> {
        let invocation = self.global.invocation();
        match self.command {
            Command::ResetSecondary(cmd) => cmd.run(&invocation),
            Command::Serve(cmd) => cmd.run(&invocation),
            Command::Promote(cmd) => cmd.run(&invocation),
            Command::CarpEvent(cmd) => cmd.run(&invocation),
            Command::Rejoin(cmd) => cmd.run(&invocation),
            Command::Follow(cmd) => cmd.run(&invocation),
            Command::Switchover(cmd) => cmd.run(&invocation),
            Command::Snapshot(cmd) => cmd.run(&invocation),
            Command::Snapshots(cmd) => cmd.run(&invocation),
            Command::Prune(cmd) => cmd.run(&invocation),
            Command::Check(cmd) => cmd.run(&invocation),
            Command::Status(cmd) => cmd.run(&invocation),
            Command::Daemon(cmd) => cmd.run(&invocation),
            Command::Verify(cmd) => cmd.run(&invocation),
            Command::Clone(cmd) => cmd.run(&invocation),
            Command::Upgrade(cmd) => cmd.run(&invocation),
            Command::CompressedSend(cmd) => cmd.run(),
            Command::Completions { shell } => {
                // Written from the clap definitions above, so it cannot miss a command.
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "pgzfs",
                    &mut std::io::stdout(),
                );
                Ok(0)
            }
        }
    }
}

impl Global {
    /// The flags as a plain value for the commands (clap structs stay up here).
    pub fn invocation(&self) -> Invocation {
        Invocation {
            config: self.config.clone(),
            node: self.node.clone(),
            verbose: self.verbose,
        }
    }
}

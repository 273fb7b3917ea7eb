//! The command line: one struct per subcommand, each knowing how to run itself.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::reset_secondary::ResetSecondary;
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
}

impl Cli {
    pub fn run(self) -> Result<i32> {
        match self.command {
            Command::ResetSecondary(cmd) => cmd.run(&self.global),
        }
    }
}

/// What a subcommand needs from the global flags: the parsed config and this node.
pub struct Context {
    pub config: Config,
    pub local: Node,
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

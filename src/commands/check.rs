//! `pgzfs check`: is this node set up to run pgzfs? With `--config-only` (what the rc.d
//! script's `configtest` runs before every start and reload) only the config file is read:
//! it parses, every value is valid, and this node is one of its nodes. Without it, this
//! node's dataset and PostgreSQL are looked at too.
//!
//! Nothing is written, not even the log file: a check must not need what it checks.

use clap::Args;

use crate::cli::Global;
use crate::cluster::pg_target;
use crate::config::{config_path, Config};
use crate::error::{Error, Result};
use crate::exec::Local;
use crate::pg::Pg;
use crate::zfs::cli::ZfsCli;
use crate::zfs::Zfs;

#[derive(Debug, Args)]
pub struct Check {
    /// Only read and validate the config file (exit 0 if valid, 2 if not)
    #[arg(long)]
    pub config_only: bool,
}

impl Check {
    pub fn run(&self, global: &Global) -> Result<i32> {
        let path = config_path(global.config.as_deref());
        let config = Config::load(&path)?;
        if let Some(witness) = config.local_witness(global.node.as_deref()) {
            // A witness has no dataset and no PostgreSQL: the config is all there is.
            println!(
                "{}: valid; cluster {}, {} voters; this node is the witness {} (answers on {})",
                path.display(),
                config.cluster,
                config.voters().len(),
                witness.name,
                witness.http_listen
            );
            return Ok(0);
        }
        let local = config.local_node(global.node.as_deref())?;
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        println!(
            "{}: valid; cluster {}, nodes {}; this node is {}",
            path.display(),
            config.cluster,
            names.join(", "),
            local.name
        );
        if self.config_only {
            return Ok(0);
        }
        let zfs = ZfsCli::new(Local);
        if !zfs.exists(&local.dataset)? {
            return Err(Error::failed(format!(
                "dataset {} does not exist on this node",
                local.dataset
            )));
        }
        println!("dataset {}: present", local.dataset);
        let mut pg = Pg::connect(&pg_target(local))?;
        let role = if pg.is_in_recovery()? {
            "standby"
        } else {
            "primary"
        };
        println!(
            "PostgreSQL {} on port {}: reachable as {}, {role}",
            pg.major(),
            local.pg_port,
            local.pg_user
        );
        Ok(0)
    }
}

//! `pgzfs clone SNAPSHOT --port N [--name NAME]`: a writable throwaway instance of a
//! snapshot for an operator (restore one dropped table, try a migration), and
//! `pgzfs clone --drop NAME` to stop and destroy it.
//!
//! The same machinery and safety as `verify` (`crate::throwaway`): a new dataset next to
//! this node's, never the dataset itself; no archiving, no replication, no standby
//! settings; the original's replication slots removed. It listens on localhost:N with the
//! cluster's own pg_hba.conf. The origin snapshot is held (`pgzfs-clone-NAME`), so
//! retention keeps it while the clone lives.

use clap::Args;
use serde::Serialize;

use crate::context::Invocation;
use crate::error::{Error, Result};
use crate::lock::LocalLock;
use crate::throwaway::{
    check_clone_name, drop_clone, hold_tag, Purpose, Spec, Throwaway, CLONE_PORT,
};
use crate::zfs::names::{SnapName, SnapshotName};

#[derive(Debug, Args)]
pub struct Clone {
    /// The snapshot: `pgzfs-...` or the full `dataset@...` of this node's dataset
    #[arg(required_unless_present = "drop", conflicts_with = "drop")]
    pub snapshot: Option<String>,
    /// The TCP port the clone listens on (localhost only)
    #[arg(long, required_unless_present = "drop", conflicts_with = "drop")]
    pub port: Option<u16>,
    /// The clone's name [default: the snapshot's time, e.g. 20261201T193000Z]
    #[arg(long, conflicts_with = "drop")]
    pub name: Option<String>,
    /// Stop the clone NAME and destroy it (releasing its snapshot)
    #[arg(long, value_name = "NAME")]
    pub drop: Option<String>,
    /// Print the result as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

/// What `pgzfs clone --json` prints.
#[derive(Debug, Serialize)]
pub struct Created {
    pub name: String,
    pub snapshot: String,
    pub dataset: String,
    pub data_dir: String,
    pub port: u16,
    pub socket_dir: String,
    pub log_file: String,
}

impl Clone {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let zfs = ctx.local_zfs()?;
        let node = &ctx.local;
        let _lock = LocalLock::acquire(&node.lock_file, node.lock_timeout, "clone")?;
        if let Some(name) = &self.drop {
            check_clone_name(name)?;
            drop_clone(&*zfs, node, name)?;
            if self.json {
                println!("{}", serde_json::json!({ "dropped": name }));
            } else {
                println!("clone {name} stopped and destroyed");
            }
            return Ok(0);
        }
        let (Some(text), Some(port)) = (&self.snapshot, self.port) else {
            return Err(Error::usage("SNAPSHOT and --port are required"));
        };
        let dataset = &node.dataset;
        let snapshot = if text.contains('@') {
            SnapshotName::parse(text)?
        } else {
            dataset.snapshot(&SnapName::parse(text)?)
        };
        if snapshot.dataset() != dataset {
            return Err(Error::usage(format!(
                "{snapshot} is not a snapshot of this node's dataset {dataset}"
            )));
        }
        let name = match &self.name {
            Some(name) => name.clone(),
            None => snapshot
                .snap()
                .as_str()
                .trim_start_matches("pgzfs-")
                .to_string(),
        };
        check_clone_name(&name)?;
        if port == node.pg.pg_port || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(Error::usage(format!(
                "--port {port} is in use (or is this node's pg_port); choose a free port"
            )));
        }
        let throwaway = Throwaway::create(
            &*zfs,
            Spec {
                node,
                snapshot: snapshot.clone(),
                purpose: Purpose::Clone { name: name.clone() },
                port,
            },
        )?;
        zfs.set_dataset_props(&throwaway.dataset, &[(CLONE_PORT, port.to_string())])?;
        let tag = hold_tag(&name)?;
        zfs.hold(&tag, &snapshot)?;
        if let Err(e) = throwaway.start(
            node.pg
                .streaming_timeout
                .max(std::time::Duration::from_secs(60)),
        ) {
            let _ = zfs.release(&tag, &snapshot);
            return Err(e.context(format!("starting the clone {name}")));
        }
        let created = Created {
            name: name.clone(),
            snapshot: snapshot.to_string(),
            dataset: throwaway.dataset.to_string(),
            data_dir: throwaway.data_dir.display().to_string(),
            port,
            socket_dir: throwaway.socket_dir.display().to_string(),
            log_file: throwaway.log_file.display().to_string(),
        };
        throwaway.keep();
        tracing::info!(
            "clone {name} of {snapshot} runs on localhost:{port} ({})",
            created.dataset
        );
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&created).expect("serializes")
            );
        } else {
            println!(
                "clone {name} of {snapshot}: PostgreSQL on localhost:{port} (dataset {}, data {}, log {})\n\
                 it does not archive or replicate; drop it with: pgzfs clone --drop {name}",
                created.dataset, created.data_dir, created.log_file
            );
        }
        Ok(0)
    }
}

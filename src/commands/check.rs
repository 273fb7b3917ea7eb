//! `pgzfs check`: is this node set up to run pgzfs? With `--config-only` (what the rc.d
//! script's `configtest` runs before every start and reload) only the config file is read:
//! it parses, every value is valid, and this node is one of its nodes. Without it, this
//! node's dataset and PostgreSQL are looked at too.
//!
//! Nothing is written, not even the log file: a check must not need what it checks.

use clap::Args;

use crate::cluster::pg_target;
use std::os::unix::fs::MetadataExt;

use crate::config::{config_path, Config, Node};
use crate::context::Invocation;
use crate::error::{Error, Result};
use crate::pg::Pg;
use crate::setup;

#[derive(Debug, Args)]
pub struct Check {
    /// Only read and validate the config file (exit 0 if valid, 2 if not)
    #[arg(long, conflicts_with = "setup")]
    pub config_only: bool,
    /// Walk the install steps on this node (dataset, pgpass, peers' host keys, the
    /// PostgreSQL settings and grants) and name what is wrong with the command to fix it
    /// (exit 1 if anything is)
    #[arg(long)]
    pub setup: bool,
    /// With --setup: print the findings as one JSON object on stdout
    #[arg(long, requires = "setup")]
    pub json: bool,
}

impl Check {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let path = config_path(invocation.config.as_deref());
        let config = Config::load(&path)?;
        if let Some(witness) = config.local_witness(invocation.node.as_deref()) {
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
        let local = config.local_node(invocation.node.as_deref())?;
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        let valid = format!(
            "{}: valid; cluster {}, nodes {}; this node is {}",
            path.display(),
            config.cluster,
            names.join(", "),
            local.name
        );
        // With --json, stdout carries the one JSON object and nothing else.
        if self.json {
            eprintln!("{valid}");
        } else {
            println!("{valid}");
        }
        if self.config_only {
            return Ok(0);
        }
        if self.setup {
            return setup(&config, local, self.json);
        }
        let zfs = crate::zfs::local_backend(local)?;
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
        let tls = if pg.session_encrypted()? {
            format!("over TLS (pg_sslmode {})", local.pg.tls().mode.as_str())
        } else {
            format!("without TLS (pg_sslmode {})", local.pg.tls().mode.as_str())
        };
        println!(
            "PostgreSQL {} on port {}: reachable as {} {tls}, {role}",
            pg.major(),
            local.pg.pg_port,
            local.pg.pg_user
        );
        Ok(0)
    }
}

/// `--setup`: gather the facts of each install step on this node and judge them.
fn setup(config: &Config, local: &Node, json: bool) -> Result<i32> {
    let mut findings = Vec::new();

    let zfs = crate::zfs::local_backend(local)?;
    let dataset = local.dataset.as_str();
    let facts = if zfs.exists(&local.dataset)? {
        Some(setup::DatasetFacts {
            mountpoint: zfs.mountpoint(&local.dataset)?,
            canmount: zfs.get_text(dataset, "canmount")?,
            recordsize: zfs.get_number(dataset, "recordsize")?,
        })
    } else {
        None
    };
    findings.extend(setup::dataset(
        dataset,
        &local.data_dir,
        local.mountpoint.as_deref(),
        facts.as_ref(),
    ));

    let passfile = crate::pgpass::passfile_path(local.pg.pg_passfile.as_deref());
    let file_facts = passfile.as_deref().and_then(|path| {
        std::fs::metadata(path).ok().map(|meta| setup::FileFacts {
            owner_uid: meta.uid(),
            mode: meta.mode(),
        })
    });
    let os_uid = nix::unistd::User::from_name(&local.pg.pg_os_user)
        .ok()
        .flatten()
        .map(|user| user.uid.as_raw());
    findings.extend(setup::pgpass(
        passfile.as_deref(),
        file_facts.as_ref(),
        &local.pg.pg_os_user,
        os_uid,
        local.pg.pg_port,
        &local.pg.pg_user,
    ));

    for peer in config.other_nodes(local) {
        let present = crate::ssh_openssh::known_host_present(
            &local.ssh.known_hosts,
            &peer.host,
            peer.ssh.ssh_port,
        )?;
        findings.push(setup::known_host(
            &peer.name,
            &peer.host,
            peer.ssh.ssh_port,
            &local.ssh.known_hosts,
            present,
        ));
    }

    let target = pg_target(local);
    match Pg::connect(&target) {
        Err(e) => findings.push(setup::unreachable(
            &target.describe(),
            &e.to_string(),
            &local.pg.pg_user,
            passfile.as_deref(),
        )),
        Ok(mut pg) => {
            let number = |pg: &mut Pg, name: &str| -> Result<u32> {
                let text = pg.setting(name)?;
                text.parse()
                    .map_err(|_| Error::failed(format!("{name} = {text:?} is not a number")))
            };
            let server = setup::ServerFacts {
                wal_level: pg.setting("wal_level")?,
                max_wal_senders: number(&mut pg, "max_wal_senders")?,
                max_replication_slots: number(&mut pg, "max_replication_slots")?,
            };
            let standbys = config.other_nodes(local).count() as u32;
            findings.extend(setup::server(&server, standbys, local.reseed.use_slots));
            let grants = pg.own_grants()?;
            findings.push(setup::role(&setup::RoleFacts {
                role: grants.role,
                superuser: grants.superuser,
                replication: grants.replication,
                pg_monitor: grants.pg_monitor,
                functions: grants.backup_functions,
            }));
        }
    }

    let first_wrong = findings
        .iter()
        .find(|f| f.verdict == setup::Verdict::Wrong)
        .cloned();
    if json {
        let report = serde_json::json!({
            "node": local.name,
            "ok": first_wrong.is_none(),
            "first_wrong": first_wrong.as_ref().map(|f| f.check.clone()),
            "findings": findings,
        });
        println!("{report}");
    } else {
        for finding in &findings {
            let label = match finding.verdict {
                setup::Verdict::Ok => "ok    ",
                setup::Verdict::Wrong => "WRONG ",
                setup::Verdict::Advice => "advice",
            };
            println!("{label} {}: {}", finding.check, finding.detail);
            if let Some(fix) = &finding.fix {
                println!("       fix: {fix}");
            }
        }
        match &first_wrong {
            None => println!("setup of {}: nothing wrong found", local.name),
            Some(f) => println!(
                "setup of {}: first wrong step: {}\n  fix: {}",
                local.name,
                f.check,
                f.fix.as_deref().unwrap_or("")
            ),
        }
    }
    Ok(if first_wrong.is_some() { 1 } else { 0 })
}

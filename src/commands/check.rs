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
use crate::context::{Handles, Invocation};
use crate::error::{Error, Result};
use crate::failover::seam::RealPostgres;
use crate::failover::{local_role, Role};
use crate::pg::ctl::PgCtl;
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
        let zfs = Handles::new(local).local_zfs()?;
        if !zfs.exists(&local.dataset)? {
            return Err(Error::failed(format!(
                "dataset {} does not exist on this node",
                local.dataset
            )));
        }
        println!("dataset {}: present", local.dataset);
        let mut pg = Pg::connect(&pg_target(local))?;
        let tls = if pg.session_encrypted()? {
            format!("over TLS (pg_sslmode {})", local.pg.tls().mode.as_str())
        } else {
            format!("without TLS (pg_sslmode {})", local.pg.tls().mode.as_str())
        };
        let role = PgCtl::for_node(local).and_then(|ctl| local_role(&RealPostgres, &ctl, local));
        println!(
            "PostgreSQL {} on port {}: reachable as {} {tls}, {}",
            pg.major(),
            local.pg.pg_port,
            local.pg.pg_user,
            role_word(&role)
        );
        Ok(0)
    }
}

/// The role `check` prints, from `failover::local_role`: primary (fenced or not),
/// standby, stopped, or unknown when it could not be told (never "not a primary").
fn role_word(role: &Result<Role>) -> &'static str {
    match role {
        Ok(role) => role.name(),
        Err(e) => {
            tracing::debug!("the local role could not be read: {e}");
            "unknown"
        }
    }
}

/// `--setup`: gather the facts of each install step on this node, then on each peer
/// (over SSH as pgzfs logs in, and its PostgreSQL over the replication network), and
/// judge them.
fn setup(config: &Config, local: &Node, json: bool) -> Result<i32> {
    let mut findings = Vec::new();
    let handles = Handles::new(local);

    let zfs = handles.local_zfs()?;
    let dataset = local.dataset.as_str();
    let exists = zfs.exists(&local.dataset)?;
    // A node about to join as a standby has neither yet; reset-secondary makes both.
    let new_standby = !exists && !local.data_dir.join("PG_VERSION").exists();
    if new_standby {
        let parent = dataset.rsplit_once('/').map(|(parent, _)| parent);
        let parent_exists = match parent {
            Some(parent) => crate::zfs::names::DatasetName::parse(parent)
                .map(|name| zfs.exists(&name))
                .unwrap_or(Ok(false))?,
            None => true,
        };
        findings.push(setup::new_standby_dataset(dataset, parent, parent_exists));
    } else {
        let facts = if exists {
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
    }
    if exists {
        // The other nodes log in here as ssh_user to re-seed from this dataset.
        findings.push(delegation_finding(&*zfs, &local.name, local));
    }

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
            peer.replication_host(),
            peer.ssh.ssh_port,
        )?;
        findings.push(setup::known_host(
            &peer.name,
            peer.replication_host(),
            peer.ssh.ssh_port,
            &local.ssh.known_hosts,
            present,
        ));
    }

    let target = pg_target(local);
    if new_standby {
        findings.push(setup::no_server_yet());
    } else {
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
    }

    findings.extend(setup::rc_d(
        &rc_conf_files(),
        &config.path,
        std::path::Path::new(crate::config::DEFAULT_CONFIG_PATH),
        &local.name,
    ));

    for peer in config.other_nodes(local) {
        findings.extend(peer_findings(&handles, local, peer));
    }

    let first_wrong = findings
        .iter()
        .find(|f| f.verdict == setup::Verdict::Wrong)
        .cloned();
    if json {
        let unknown: Vec<&str> = findings
            .iter()
            .filter(|f| f.verdict == setup::Verdict::Unknown)
            .map(|f| f.check.as_str())
            .collect();
        let report = serde_json::json!({
            "node": local.name,
            "ok": first_wrong.is_none(),
            "first_wrong": first_wrong.as_ref().map(|f| f.check.clone()),
            "unknown": unknown,
            "findings": findings,
        });
        println!("{report}");
    } else {
        for finding in &findings {
            let label = match finding.verdict {
                setup::Verdict::Ok => "ok    ",
                setup::Verdict::Wrong => "WRONG ",
                setup::Verdict::Advice => "advice",
                setup::Verdict::Unknown => "?     ",
                setup::Verdict::Skipped => "skip  ",
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

/// What ssh_user may do on `node`'s dataset, as `zfs` there shows it.
fn delegation_finding(zfs: &dyn crate::zfs::Zfs, node: &str, local: &Node) -> setup::Finding {
    let bookmarks = zfs
        .features_for(&local.dataset)
        .map(|f| f.bookmarks)
        .unwrap_or(true);
    let needed = setup::sending_permissions(bookmarks);
    let shown = zfs.delegations(&local.dataset).map_err(|e| e.to_string());
    setup::zfs_allow(
        node,
        local.dataset.as_str(),
        &local.ssh.ssh_user,
        &needed,
        shown.as_deref().map_err(String::as_str),
    )
}

/// A peer as this node uses it: logging in over SSH, ssh_user's delegation on its
/// dataset, pgzfs_bin there, and its pg_hba for this node's WAL receiver.
fn peer_findings(handles: &Handles, local: &Node, peer: &Node) -> Vec<setup::Finding> {
    let mut findings = Vec::new();
    let target = crate::cluster::ssh_target(local, peer);
    match handles.remote_zfs(peer) {
        Err(e) => {
            findings.push(setup::ssh_login(
                &peer.name,
                &target.describe(),
                Err(&e.to_string()),
            ));
            for check in ["zfs_allow", "pgzfs_bin"] {
                findings.push(setup::unreachable_peer(
                    &format!("{check}.{}", peer.name),
                    &peer.name,
                ));
            }
        }
        Ok(remote) => {
            findings.push(setup::ssh_login(&peer.name, &target.describe(), Ok(())));
            let session = remote.runner();
            match crate::zfs::Zfs::exists(&remote, &peer.dataset) {
                Ok(true) => {
                    let bookmarks = crate::zfs::Zfs::features_for(&remote, &peer.dataset)
                        .map(|f| f.bookmarks)
                        .unwrap_or(true);
                    let needed = setup::sending_permissions(bookmarks);
                    let shown = crate::zfs::Zfs::delegations(&remote, &peer.dataset)
                        .map_err(|e| e.to_string());
                    findings.push(setup::zfs_allow(
                        &peer.name,
                        peer.dataset.as_str(),
                        &local.ssh.ssh_user,
                        &needed,
                        shown.as_deref().map_err(String::as_str),
                    ));
                }
                Ok(false) => findings.push(setup::Finding {
                    check: format!("zfs_allow.{}", peer.name),
                    verdict: setup::Verdict::Skipped,
                    detail: format!(
                        "{} has no dataset {} yet (a standby still to be seeded)",
                        peer.name, peer.dataset
                    ),
                    fix: None,
                }),
                Err(e) => findings.push(setup::zfs_allow(
                    &peer.name,
                    peer.dataset.as_str(),
                    &local.ssh.ssh_user,
                    &[],
                    Err(&e.to_string()),
                )),
            }
            let version =
                crate::exec::Cmd::new(local.ssh.pgzfs_bin.display().to_string()).arg("--version");
            let run = crate::exec::Runner::output(session, &version);
            findings.push(match &run {
                Ok(out) => setup::pgzfs_bin(
                    &peer.name,
                    &local.ssh.pgzfs_bin,
                    setup::RemoteRun::Ran {
                        success: out.success(),
                        stdout: &out.stdout,
                        stderr: &out.stderr,
                    },
                ),
                Err(e) => setup::pgzfs_bin(
                    &peer.name,
                    &local.ssh.pgzfs_bin,
                    setup::RemoteRun::Failed(&e.to_string()),
                ),
            });
        }
    }

    let requires_tls = matches!(
        local.pg.pg_sslmode,
        crate::pg::tls::SslMode::Require
            | crate::pg::tls::SslMode::VerifyCa
            | crate::pg::tls::SslMode::VerifyFull
    );
    let answer = match crate::pg::hba::probe_replication(
        peer.replication_host(),
        peer.pg.pg_port,
        &local.pg.pg_user,
        local.connect_timeout,
    ) {
        Ok(crate::pg::hba::ReplicationAnswer::Accepted) => setup::HbaAnswer::Accepted,
        Ok(crate::pg::hba::ReplicationAnswer::Refused(message))
            if requires_tls && message.contains("no encryption") =>
        {
            setup::HbaAnswer::Unknown(format!(
                "{message} (asked without TLS; pg_sslmode requires it, so only a hostssl line matters)"
            ))
        }
        Ok(crate::pg::hba::ReplicationAnswer::Refused(message)) => setup::HbaAnswer::NoEntry(message),
        Ok(crate::pg::hba::ReplicationAnswer::Other(message)) => setup::HbaAnswer::Unknown(message),
        Err(why) => setup::HbaAnswer::Unknown(why),
    };
    findings.push(setup::pg_hba(
        &peer.name,
        &peer.data_dir,
        &local.pg.pg_user,
        local.replication_host(),
        answer,
    ));
    findings
}

/// The rc.conf files that exist here, in the order rc.subr reads them for pgzfs.
fn rc_conf_files() -> Vec<(std::path::PathBuf, String)> {
    [
        "/etc/rc.conf",
        "/etc/rc.conf.local",
        "/etc/rc.conf.d/pgzfs",
        "/usr/local/etc/rc.conf.d/pgzfs",
    ]
    .iter()
    .filter_map(|path| {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| (std::path::PathBuf::from(path), text))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::role::{DataDir, LastRan};

    #[test]
    fn check_names_the_role_as_local_role_tells_it_and_unknown_is_never_not_a_primary() {
        let data = |last_ran| DataDir {
            last_ran,
            starts_as_standby: true,
        };
        let rows: [(&str, Result<Role>, &str); 6] = [
            ("a primary", Ok(Role::Primary), "primary"),
            (
                "fenced read-only, still a primary",
                Ok(Role::FencedPrimary),
                "primary",
            ),
            ("in recovery", Ok(Role::Standby), "standby"),
            (
                "stopped since the connection",
                Ok(Role::Stopped(data(LastRan::Standby))),
                "stopped",
            ),
            (
                "running but not answering",
                Ok(Role::Unanswered(data(LastRan::Standby), "timeout".into())),
                "unknown",
            ),
            (
                "the role could not be read",
                Err(Error::failed("no pg_control")),
                "unknown",
            ),
        ];
        for (scenario, role, word) in rows {
            assert_eq!(role_word(&role), word, "{scenario}");
        }
    }
}

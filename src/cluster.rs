//! The cluster as a whole: how to reach each node, and which one is the primary.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, Node};
use crate::error::{Error, Result};
use crate::pg::standby::StandbySetup;
use crate::pg::{Pg, PgTarget};
use crate::ssh::SshTarget;

/// How to reach a node's PostgreSQL as the configured replication role (over the
/// replication network: `replication_host`).
pub fn pg_target(node: &Node) -> PgTarget {
    PgTarget {
        node: node.name.clone(),
        host: node.replication_host().to_string(),
        port: node.pg.pg_port,
        user: node.pg.pg_user.clone(),
        database: node.pg.pg_database.clone(),
        passfile: node.pg.pg_passfile.clone(),
        connect_timeout: node.connect_timeout,
        tls: node.pg.tls(),
    }
}

pub fn ssh_target(local: &Node, source: &Node) -> SshTarget {
    // SSH credentials are those of the node we log in *from*; the port and the address
    // (on the replication network) are the target's.
    SshTarget {
        host: source.replication_host().to_string(),
        port: source.ssh.ssh_port,
        user: local.ssh.ssh_user.clone(),
        key: local.ssh.ssh_key.clone(),
        known_hosts: local.ssh.known_hosts.clone(),
        connect_timeout: local.connect_timeout,
    }
}

/// The source: `--from`, or the one primary among the other configured nodes.
pub fn find_primary(config: &Config, local: &Node, from: Option<&str>) -> Result<(Node, Pg)> {
    if let Some(name) = from {
        let node = config.node(name)?.clone();
        if node.name == local.name {
            return Err(Error::usage(format!(
                "--from {name} names this node; re-seed from another node"
            )));
        }
        let mut pg = Pg::connect(&pg_target(&node))
            .map_err(|e| Error::refused(format!("the source {name} is not reachable: {e}")))?;
        if pg.is_in_recovery()? {
            return Err(Error::refused(format!(
                "the source {name} is not a primary: it is in recovery"
            )));
        }
        return Ok((node, pg));
    }
    let answers = ask_each_other_node(
        config,
        local,
        |node| {
            let mut pg = Pg::connect(&pg_target(node))?;
            let in_recovery = pg.is_in_recovery()?;
            Ok((pg, in_recovery))
        },
        || Err(Error::failed("the check of this node panicked")),
    );
    let mut primaries = Vec::new();
    let mut notes = Vec::new();
    for (node, answer) in answers {
        match answer {
            Ok((pg, false)) => primaries.push((node.clone(), pg)),
            Ok((_, true)) => notes.push(format!("{}: standby", node.name)),
            Err(e) => notes.push(format!("{}: {e}", node.name)),
        }
    }
    match primaries.len() {
        1 => Ok(primaries.pop().expect("one primary")),
        0 => Err(Error::refused(format!(
            "found no reachable primary among the other nodes ({})",
            notes.join("; ")
        ))),
        _ => {
            let names: Vec<&str> = primaries.iter().map(|(n, _)| n.name.as_str()).collect();
            Err(Error::refused(format!(
                "found more than one primary ({}): possible split brain. Name the source with --from once you know which one is right",
                names.join(", ")
            )))
        }
    }
}

/// `ask` put to every node but `local`, all at once, each on its own thread: with nine
/// standbys, or a dead host among them, the answers take as long as the slowest one (at
/// most one connect timeout), not the sum. A question that panicked is answered by
/// `panicked`. The answers come in the config's order.
pub fn ask_each_other_node<'a, T: Send>(
    config: &'a Config,
    local: &'a Node,
    ask: impl Fn(&'a Node) -> T + Sync,
    panicked: impl Fn() -> T,
) -> Vec<(&'a Node, T)> {
    let ask = &ask;
    std::thread::scope(|scope| {
        let asks: Vec<_> = config
            .other_nodes(local)
            .map(|node| (node, scope.spawn(move || ask(node))))
            .collect();
        asks.into_iter()
            .map(|(node, asked)| (node, asked.join().unwrap_or_else(|_| panicked())))
            .collect()
    })
}

/// The standby configuration `local` needs to follow `primary` (no backup_label: the
/// re-seed adds it).
pub fn standby_setup(config: &Config, local: &Node, primary: &Node, major: u32) -> StandbySetup {
    StandbySetup {
        major,
        node_name: local.name.clone(),
        primary_host: primary.replication_host().to_string(),
        primary_port: primary.pg.pg_port,
        user: local.pg.pg_user.clone(),
        passfile: crate::pgpass::passfile_path(local.pg.pg_passfile.as_deref()),
        tls: local.pg.tls(),
        slot: local
            .reseed
            .use_slots
            .then(|| local.reseed.slot_name.clone()),
        local_settings: local_settings(local),
        managed_keys: managed_keys(&config.nodes),
        labelfile: String::new(),
        spcmapfile: String::new(),
    }
}

/// This node's settings that must survive a re-seed: its port plus its `pg_settings`.
fn local_settings(node: &Node) -> BTreeMap<String, String> {
    let mut settings = node.pg_settings.clone();
    settings.insert("port".into(), node.pg.pg_port.to_string());
    settings
}

/// Every key any node manages, so one node's values never leak into another's copy.
fn managed_keys(nodes: &[Node]) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = nodes
        .iter()
        .flat_map(|n| n.pg_settings.keys().cloned())
        .collect();
    keys.insert("port".into());
    keys
}
/// A session with this node's PostgreSQL, refused (exit 3) unless it is a running
/// primary.
pub fn connect_local_primary(local: &Node) -> Result<Pg> {
    let mut pg = Pg::connect(&pg_target(local)).map_err(|e| {
        Error::refused(format!(
            "PostgreSQL on this node ({}) is not reachable, so it is not a running primary: {e}. \
             Backup-safe snapshots are taken on the running primary",
            local.name
        ))
    })?;
    if pg.is_in_recovery()? {
        return Err(Error::refused(format!(
            "PostgreSQL on this node ({}) is a standby (in recovery); snapshots are taken on the \
             primary and reach standbys through reset-secondary",
            local.name
        )));
    }
    Ok(pg)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// A cluster of db1 to db4, each on a host of its own.
    fn four_nodes() -> Config {
        let mut text = String::from(
            "cluster = \"pg\"\n[defaults]\ndataset = \"tank/pgdata\"\ndata_dir = \"/var/db/postgres/data15\"\n",
        );
        for name in ["db1", "db2", "db3", "db4"] {
            text += &format!("[[nodes]]\nname = \"{name}\"\nhost = \"{name}.example.net\"\n");
        }
        Config::parse(&text, Path::new("/etc/pgzfs.toml")).expect("test config")
    }

    #[test]
    fn every_other_node_is_asked_at_once_and_answers_come_in_config_order() {
        let config = four_nodes();
        let local = config.node("db2").unwrap().clone();
        // Each question waits (up to 10 s) until all three are being asked: asked one
        // after another, the first would see only itself.
        let being_asked = AtomicUsize::new(0);
        let answers = ask_each_other_node(
            &config,
            &local,
            |node| {
                being_asked.fetch_add(1, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(10);
                while being_asked.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                format!(
                    "{} answered with {} asked",
                    node.name,
                    being_asked.load(Ordering::SeqCst)
                )
            },
            || "panicked".to_string(),
        );
        let answers: Vec<(&str, String)> = answers
            .into_iter()
            .map(|(node, answer)| (node.name.as_str(), answer))
            .collect();
        assert_eq!(
            answers,
            vec![
                ("db1", "db1 answered with 3 asked".to_string()),
                ("db3", "db3 answered with 3 asked".to_string()),
                ("db4", "db4 answered with 3 asked".to_string()),
            ]
        );
    }

    #[test]
    fn a_question_that_panics_is_answered_by_the_fallback_and_the_others_still_count() {
        let config = four_nodes();
        let local = config.node("db1").unwrap().clone();
        let answers = ask_each_other_node(
            &config,
            &local,
            |node| {
                if node.name == "db3" {
                    panic!("a bug in one node's check");
                }
                "standby"
            },
            || "unknown",
        );
        let answers: Vec<(&str, &str)> = answers
            .into_iter()
            .map(|(node, answer)| (node.name.as_str(), answer))
            .collect();
        assert_eq!(
            answers,
            vec![("db2", "standby"), ("db3", "unknown"), ("db4", "standby")]
        );
    }
}

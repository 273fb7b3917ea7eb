//! `pgzfs snapshots`: this node's snapshots, with what retention and re-seeding care
//! about: when each was taken, its WAL position, its holds, and which standbys it is the
//! common base of.

use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use serde::Serialize;

use crate::context::Invocation;
use crate::datasets::ClusterDatasets;
use crate::error::Result;
use crate::retention::{holds_of, taken_at};
use crate::timestamp::utc_rfc3339;
use crate::zfs::{prop, Zfs};

#[derive(Debug, Args)]
pub struct ListSnapshots {
    /// Print the list as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

/// What `pgzfs snapshots --json` prints.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub node: String,
    pub dataset: String,
    /// Oldest first.
    pub snapshots: Vec<Entry>,
    /// `pgzfs clone` instances of this dataset, each held on its origin snapshot.
    pub clones: Vec<crate::throwaway::CloneInfo>,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub snapshot: String,
    /// Taken by pgzfs (named `pgzfs-...`): the only ones retention may destroy.
    pub pgzfs: bool,
    /// The time in the name (what retention goes by); null for other names.
    pub taken: Option<String>,
    /// ZFS's own creation time.
    pub created: Option<String>,
    /// A string: JSON numbers lose precision above 2^53.
    pub guid: String,
    pub createtxg: u64,
    pub lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub timeline: Option<String>,
    pub source_node: Option<String>,
    pub userrefs: u64,
    pub held: bool,
    /// null when this ZFS cannot list hold tags (zfs-fuse).
    pub hold_tags: Option<Vec<String>>,
    /// The nodes whose common base this is (their hold tag is on it); null when the
    /// tags cannot be read.
    pub common_base_of: Option<Vec<String>>,
    /// `pgzfs:verified`: when `pgzfs verify` last checked it and its verdict.
    pub verified: Option<String>,
    /// A pgzfs cut of a cluster that spans several datasets: the children and
    /// tablespaces that lack their part of it (an incremental from it would refuse).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_from: Vec<String>,
}

impl ListSnapshots {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let zfs = ctx.local_zfs()?;
        let cluster = ClusterDatasets::discover(&*zfs, &ctx.local.dataset, &ctx.local.tablespaces)?;
        let listing = list(&*zfs, &ctx.local.name, &cluster, &ctx.config.nodes)?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&listing).expect("the listing serializes")
            );
        } else {
            print!("{}", text(&listing));
        }
        Ok(0)
    }
}

pub fn list(
    zfs: &dyn Zfs,
    node: &str,
    cluster: &ClusterDatasets,
    nodes: &[crate::config::Node],
) -> Result<Listing> {
    let dataset = cluster.root();
    let mut members = Vec::new();
    for member in cluster.others() {
        let names: Vec<_> = if !zfs.exists(&member.dataset)? {
            Vec::new()
        } else if member.is_own_pg_wal(zfs)? {
            // This node's own pg_wal (send_pg_wal = false): the received cuts never had
            // it here, and its absence from them is no gap.
            continue;
        } else {
            zfs.snapshots(&member.dataset)?
                .into_iter()
                .map(|s| s.name.snap().clone())
                .collect()
        };
        members.push((member.dataset.to_string(), names));
    }
    let mut snapshots = Vec::new();
    for snapshot in zfs.snapshots(dataset)? {
        let missing_from = if snapshot.name.snap().is_pgzfs() {
            members
                .iter()
                .filter(|(_, names)| !names.contains(snapshot.name.snap()))
                .map(|(member, _)| member.clone())
                .collect()
        } else {
            Vec::new()
        };
        let holds = holds_of(zfs, &snapshot, nodes)?;
        let created = zfs
            .get_number(&snapshot.name.to_string(), "creation")?
            .map(|seconds| utc_rfc3339(UNIX_EPOCH + Duration::from_secs(seconds)));
        let owned = |name: &str| snapshot.prop(name).map(str::to_string);
        snapshots.push(Entry {
            snapshot: snapshot.name.to_string(),
            pgzfs: snapshot.name.snap().is_pgzfs(),
            taken: taken_at(snapshot.name.snap()).map(utc_rfc3339),
            created,
            guid: snapshot.guid.to_string(),
            createtxg: snapshot.createtxg,
            lsn: owned(prop::LSN),
            stop_lsn: owned(prop::STOP_LSN),
            timeline: owned(prop::TIMELINE),
            source_node: owned(prop::SOURCE_NODE),
            userrefs: snapshot.userrefs,
            held: snapshot.is_held(),
            hold_tags: holds.tags(),
            common_base_of: holds.common_base_of(),
            verified: owned(prop::VERIFIED),
            missing_from,
        });
    }
    Ok(Listing {
        node: node.to_string(),
        dataset: dataset.to_string(),
        snapshots,
        clones: crate::throwaway::list_clones(zfs, dataset)?,
    })
}

fn text(listing: &Listing) -> String {
    let mut rows = vec![[
        "SNAPSHOT".to_string(),
        "TAKEN".to_string(),
        "LSN".to_string(),
        "HOLDS".to_string(),
        "COMMON BASE OF".to_string(),
    ]];
    for entry in &listing.snapshots {
        let name = entry
            .snapshot
            .split_once('@')
            .map_or(entry.snapshot.as_str(), |(_, snap)| snap);
        let holds = match (&entry.hold_tags, entry.held) {
            (_, false) => "-".to_string(),
            (Some(tags), true) => tags.join(","),
            (None, true) => format!("{} (tags unknown)", entry.userrefs),
        };
        let common = match &entry.common_base_of {
            Some(nodes) if nodes.is_empty() => "-".to_string(),
            Some(nodes) => nodes.join(","),
            None => "unknown".to_string(),
        };
        rows.push([
            name.to_string(),
            entry
                .taken
                .clone()
                .or_else(|| entry.created.clone())
                .unwrap_or_else(|| "-".into()),
            entry.lsn.clone().unwrap_or_else(|| "-".into()),
            holds,
            common,
        ]);
    }
    let mut widths = [0; 5];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = format!(
        "{} on {}: {} snapshot(s)\n",
        listing.dataset,
        listing.node,
        listing.snapshots.len()
    );
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for entry in listing
        .snapshots
        .iter()
        .filter(|e| !e.missing_from.is_empty())
    {
        out.push_str(&format!(
            "incomplete cut {}: missing on {}\n",
            entry.snapshot,
            entry.missing_from.join(", ")
        ));
    }
    for entry in listing.snapshots.iter().filter(|e| e.verified.is_some()) {
        let verified = entry.verified.as_deref().unwrap_or_default();
        let (at, verdict) = verified.rsplit_once('/').unwrap_or((verified, "?"));
        out.push_str(&format!("verified {}: {verdict} at {at}\n", entry.snapshot));
    }
    for clone in &listing.clones {
        out.push_str(&format!(
            "clone {} of {} on localhost:{} ({}); drop with: pgzfs clone --drop {}\n",
            clone.name,
            clone.origin.as_deref().unwrap_or("?"),
            clone.port.as_deref().unwrap_or("?"),
            clone.dataset,
            clone.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        snapshot: &str,
        held: bool,
        tags: Option<Vec<&str>>,
        common: Option<Vec<&str>>,
    ) -> Entry {
        let strings = |v: Option<Vec<&str>>| v.map(|v| v.into_iter().map(String::from).collect());
        Entry {
            snapshot: snapshot.to_string(),
            pgzfs: true,
            taken: Some("2026-11-22T00:30:00Z".into()),
            created: Some("2026-11-22T00:30:01Z".into()),
            guid: "1".into(),
            createtxg: 1,
            lsn: Some("0/3000028".into()),
            stop_lsn: None,
            timeline: None,
            source_node: None,
            userrefs: u64::from(held),
            held,
            hold_tags: strings(tags),
            common_base_of: strings(common),
            verified: None,
            missing_from: Vec::new(),
        }
    }

    #[test]
    fn the_table_says_which_standby_a_snapshot_is_the_base_of_or_that_it_cannot_tell() {
        let listing = Listing {
            node: "db1".into(),
            dataset: "tank/pg".into(),
            snapshots: vec![
                entry(
                    "tank/pg@pgzfs-20261122T003000Z",
                    false,
                    Some(vec![]),
                    Some(vec![]),
                ),
                entry(
                    "tank/pg@pgzfs-20261122T013000Z",
                    true,
                    Some(vec!["pgzfs-db2"]),
                    Some(vec!["db2"]),
                ),
                entry("tank/pg@pgzfs-20261122T023000Z", true, None, None),
            ],
            clones: vec![],
        };
        let text = text(&listing);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "tank/pg on db1: 3 snapshot(s)");
        assert!(lines[1].starts_with("SNAPSHOT"), "{text}");
        let holds_and_base = |line: &str| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words[3..].join(" ")
        };
        assert_eq!(holds_and_base(lines[2]), "- -", "{text}");
        assert_eq!(holds_and_base(lines[3]), "pgzfs-db2 db2", "{text}");
        assert_eq!(
            holds_and_base(lines[4]),
            "1 (tags unknown) unknown",
            "{text}"
        );
        assert!(lines[4].contains("0/3000028"), "{text}");
        assert!(!text.contains("incomplete"), "{text}");
    }

    #[test]
    fn a_cut_that_a_child_lacks_is_named_as_incomplete() {
        let mut half = entry("tank/pg@pgzfs-20261122T003000Z", false, None, None);
        half.missing_from = vec!["tank/pg/wal".into()];
        let listing = Listing {
            node: "db1".into(),
            dataset: "tank/pg".into(),
            snapshots: vec![half],
            clones: vec![],
        };
        assert!(
            text(&listing)
                .contains("incomplete cut tank/pg@pgzfs-20261122T003000Z: missing on tank/pg/wal"),
            "{}",
            text(&listing)
        );
    }
}

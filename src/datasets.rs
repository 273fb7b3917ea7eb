//! Which datasets form one PostgreSQL cluster on a node: the `dataset` (the data
//! directory's), its children (such as `pgdata/wal` mounted at `$PGDATA/pg_wal`), and the
//! datasets of the `tablespaces` list, which live outside that tree. Every command that
//! snapshots, sends, holds, prunes or rolls back asks this module, so that a cut is always
//! taken, copied and kept as a whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::zfs::names::{DatasetName, SnapName, SnapshotName};
use crate::zfs::{prop, Zfs};

/// One entry of a node's `tablespaces` list: the dataset that holds a tablespace outside
/// the data directory's tree, and where this node mounts it. `name` matches the entries of
/// different nodes (each node may keep the same tablespace at another mountpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tablespace {
    pub name: String,
    pub dataset: DatasetName,
    pub mountpoint: PathBuf,
}

/// A `tablespaces` entry as the config file spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTablespace {
    name: String,
    dataset: String,
    mountpoint: String,
}

impl Tablespace {
    /// The `tablespaces` key: names unique plain words, datasets valid and distinct,
    /// mountpoints absolute and distinct.
    pub fn parse_list(raw: Vec<RawTablespace>) -> std::result::Result<Vec<Tablespace>, String> {
        let mut list: Vec<Tablespace> = Vec::new();
        for (i, entry) in raw.into_iter().enumerate() {
            let at = |why: String| format!("entry {}: {why}", i + 1);
            if entry.name.is_empty()
                || !entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(at(format!(
                    "name {:?} must be a plain word (letters, digits, '_', '-')",
                    entry.name
                )));
            }
            let dataset = DatasetName::parse(&entry.dataset)
                .map_err(|e| at(format!("dataset: {}", e.message())))?;
            let mountpoint = PathBuf::from(&entry.mountpoint);
            if !mountpoint.is_absolute()
                || mountpoint
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(at(format!(
                    "mountpoint {:?} must be an absolute path without '..'",
                    entry.mountpoint
                )));
            }
            for other in &list {
                if other.name == entry.name {
                    return Err(at(format!("name {:?} appears twice", entry.name)));
                }
                if within(&dataset, &other.dataset) || within(&other.dataset, &dataset) {
                    return Err(at(format!(
                        "dataset {dataset} overlaps {} of tablespace {:?}",
                        other.dataset, other.name
                    )));
                }
                if mountpoint.starts_with(&other.mountpoint)
                    || other.mountpoint.starts_with(&mountpoint)
                {
                    return Err(at(format!(
                        "mountpoint {} overlaps {} of tablespace {:?}",
                        mountpoint.display(),
                        other.mountpoint.display(),
                        other.name
                    )));
                }
            }
            list.push(Tablespace {
                name: entry.name,
                dataset,
                mountpoint,
            });
        }
        Ok(list)
    }
}

/// `inner` is `outer` or one of its descendants.
fn within(inner: &DatasetName, outer: &DatasetName) -> bool {
    inner == outer
        || inner
            .as_str()
            .strip_prefix(outer.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What a dataset is to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum MemberRole {
    /// The node's `dataset`: the data directory lives here.
    Root,
    /// A descendant of the root, named by its path below it ("wal", "wal/archive").
    Child { relative: String },
    /// A dataset of the `tablespaces` list.
    Tablespace { name: String },
}

/// The mark a re-seed that leaves the primary's pg_wal out (`send_pg_wal = false`) puts
/// on the standby's own pg_wal dataset.
pub fn own_pg_wal_mark() -> [(&'static str, String); 1] {
    [(prop::OWN_PG_WAL, "yes".to_string())]
}

/// Whether `dataset` carries [`own_pg_wal_mark`]: this node's own pg_wal, not a copy of
/// the primary's, so the primary's cuts are not expected on it.
pub fn is_own_pg_wal(zfs: &dyn Zfs, dataset: &DatasetName) -> Result<bool> {
    Ok(zfs.get_text(dataset.as_str(), prop::OWN_PG_WAL)?.as_deref() == Some("yes"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub dataset: DatasetName,
    #[serde(flatten)]
    pub role: MemberRole,
}

impl Member {
    /// A child that is this node's own pg_wal ([`is_own_pg_wal`]); the dataset exists.
    pub fn is_own_pg_wal(&self, zfs: &dyn Zfs) -> Result<bool> {
        Ok(matches!(self.role, MemberRole::Child { .. }) && is_own_pg_wal(zfs, &self.dataset)?)
    }
}

/// The datasets that form the cluster on one node: the root first, then its children
/// with every parent before its children, then the tablespaces in config order. That
/// order is the order to receive and mount in; its reverse the order to unmount in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterDatasets {
    pub members: Vec<Member>,
}

impl ClusterDatasets {
    /// The root, its `children` (as `Zfs::children` lists them) and the tablespaces.
    /// A tablespace inside the tree (or the tree inside a tablespace) is a config error:
    /// the same blocks would be copied twice, or not at all.
    pub fn new(
        root: &DatasetName,
        children: &[DatasetName],
        tablespaces: &[Tablespace],
    ) -> Result<ClusterDatasets> {
        let mut members = vec![Member {
            dataset: root.clone(),
            role: MemberRole::Root,
        }];
        let mut kids: Vec<&DatasetName> = children.iter().filter(|c| *c != root).collect();
        // Parents sort before their children ("a" < "a/b"), depth first where it matters.
        kids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        for child in kids {
            let relative = child
                .as_str()
                .strip_prefix(root.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .ok_or_else(|| Error::failed(format!("{child} is not below {root}")))?;
            members.push(Member {
                dataset: child.clone(),
                role: MemberRole::Child {
                    relative: relative.to_string(),
                },
            });
        }
        for ts in tablespaces {
            if within(&ts.dataset, root) || within(root, &ts.dataset) {
                return Err(Error::usage(format!(
                    "tablespaces: {} (tablespace {:?}) overlaps the dataset {root}; a tablespace \
                     inside the tree is copied with it and needs no entry",
                    ts.dataset, ts.name
                )));
            }
            members.push(Member {
                dataset: ts.dataset.clone(),
                role: MemberRole::Tablespace {
                    name: ts.name.clone(),
                },
            });
        }
        Ok(ClusterDatasets { members })
    }

    /// The cluster as it is now on the node `zfs` reaches: the children are asked for.
    pub fn discover(
        zfs: &dyn Zfs,
        root: &DatasetName,
        tablespaces: &[Tablespace],
    ) -> Result<ClusterDatasets> {
        let children = if zfs.exists(root)? {
            zfs.children(root)?
        } else {
            Vec::new()
        };
        ClusterDatasets::new(root, &children, tablespaces)
    }

    pub fn root(&self) -> &DatasetName {
        &self.members[0].dataset
    }

    /// Children and tablespaces: everything besides the root.
    pub fn others(&self) -> &[Member] {
        &self.members[1..]
    }

    pub fn tablespaces(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| matches!(m.role, MemberRole::Tablespace { .. }))
    }

    /// Is this one of the cluster's datasets?
    pub fn contains(&self, dataset: &DatasetName) -> bool {
        self.members.iter().any(|m| &m.dataset == dataset)
    }

    /// The snapshot commands to take one cut, as few as can be atomic: the root with `-r`
    /// (its whole tree at once) together with the tablespaces of the same pool when the
    /// ZFS takes several snapshots in one call (`multi`), and every other tablespace on
    /// its own. The bool says whether a group is recursive (only the root's is).
    pub fn snapshot_groups(&self, snap: &SnapName, multi: bool) -> Vec<SnapshotGroup> {
        let root = self.root();
        let mut first = vec![root.snapshot(snap)];
        let mut rest = Vec::new();
        for ts in self.tablespaces() {
            if multi && ts.dataset.pool() == root.pool() {
                first.push(ts.dataset.snapshot(snap));
            } else {
                rest.push(SnapshotGroup {
                    snapshots: vec![ts.dataset.snapshot(snap)],
                });
            }
        }
        let mut groups = vec![SnapshotGroup { snapshots: first }];
        groups.extend(rest);
        groups
    }

    /// For the plan: which part of the cut is one atomic snapshot, and which rests on the
    /// backup session. None for a single dataset or a tree (always atomic).
    pub fn cut_note(&self, multi: bool) -> Option<String> {
        let groups = self.snapshot_groups(&SnapName::parse("x").expect("valid"), multi);
        if groups.len() == 1 && groups[0].snapshots.len() == 1 {
            return None;
        }
        let mut parts = vec![format!(
            "one atomic snapshot of {} (with -r){}",
            self.root(),
            if groups[0].snapshots.len() > 1 {
                format!(
                    " and {}",
                    groups[0].snapshots[1..]
                        .iter()
                        .map(|s| s.dataset().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                String::new()
            }
        )];
        for group in &groups[1..] {
            let ds = group.snapshots[0].dataset();
            let why = if ds.pool() == self.root().pool() {
                "this ZFS takes one snapshot per call"
            } else {
                "another pool"
            };
            parts.push(format!(
                "{ds} snapshotted separately ({why}): not atomic with the rest; consistency \
                 rests on the backup session (backup_label and tablespace_map, WAL replayed \
                 from the backup's start)"
            ));
        }
        Some(parts.join("; "))
    }
}

/// Take one cut of the cluster named `snap`, with `props` on every snapshot: the tree with
/// `-r`, the tablespaces with it in one call where the ZFS can (see `snapshot_groups`).
pub fn snapshot_cut(
    zfs: &dyn Zfs,
    cluster: &ClusterDatasets,
    snap: &SnapName,
    props: &[(&str, String)],
) -> Result<()> {
    let multi = cluster.tablespaces().next().is_some() && zfs.features()?.multi_snapshot;
    for group in cluster.snapshot_groups(snap, multi) {
        zfs.snapshot_recursive_many(&group.snapshots, props)?;
    }
    Ok(())
}

/// Snapshots taken in one `zfs snapshot` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotGroup {
    pub snapshots: Vec<SnapshotName>,
}

/// The dataset on the local node that receives a source member: the same path below the
/// local root for a child, the local tablespace of the same name for a tablespace.
pub fn local_counterpart(
    member: &Member,
    local_root: &DatasetName,
    local_tablespaces: &[Tablespace],
) -> Result<DatasetName> {
    match &member.role {
        MemberRole::Root => Ok(local_root.clone()),
        MemberRole::Child { relative } => {
            let mut ds = local_root.clone();
            for part in relative.split('/') {
                ds = ds.child(part)?;
            }
            Ok(ds)
        }
        MemberRole::Tablespace { name } => local_tablespaces
            .iter()
            .find(|t| &t.name == name)
            .map(|t| t.dataset.clone())
            .ok_or_else(|| {
                Error::usage(format!(
                    "the source has tablespace {name:?} ({}), but this node's tablespaces list \
                     has no entry named {name:?}; add one with this node's dataset and mountpoint",
                    member.dataset
                ))
            }),
    }
}

/// The `tablespace_map` of a backup, rewritten for this node: each tablespace's path on
/// the source (below the source's mountpoint of that tablespace) becomes the same path
/// below this node's mountpoint for it. PostgreSQL (every version with non-exclusive
/// backups, 9.6 to 17) recreates the `pg_tblspc/<oid>` links from this file when it
/// starts from the backup, so the links follow. A tablespace the config does not name is
/// refused: its link would point at the source's directory, which on a shared host is
/// the primary's own data.
pub fn map_tablespace_map(
    map: &str,
    source: &[Tablespace],
    local: &[Tablespace],
) -> Result<String> {
    let mut out = String::new();
    for line in map.lines() {
        if line.is_empty() {
            continue;
        }
        let (oid, path) = line
            .split_once(' ')
            .filter(|(oid, _)| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                Error::failed(format!(
                    "tablespace_map line {line:?} is not \"<oid> <path>\""
                ))
            })?;
        let path_buf = Path::new(path);
        let (from, below) = source
            .iter()
            .filter_map(|t| {
                path_buf
                    .strip_prefix(&t.mountpoint)
                    .ok()
                    .map(|rest| (t, rest.to_path_buf()))
            })
            .next()
            .ok_or_else(|| {
                Error::refused(format!(
                    "the primary's tablespace {oid} lives at {path}, which is below none of the \
                     source node's tablespaces mountpoints; list its dataset in `tablespaces` of \
                     both nodes (a standby linked to the primary's path would share or miss its files)"
                ))
            })?;
        let to = local.iter().find(|t| t.name == from.name).ok_or_else(|| {
            Error::usage(format!(
                "tablespaces: this node has no entry named {:?} (the source keeps tablespace \
                 {oid} there)",
                from.name
            ))
        })?;
        let mapped = if below.as_os_str().is_empty() {
            to.mountpoint.clone()
        } else {
            to.mountpoint.join(below)
        };
        let mapped = mapped
            .to_str()
            .ok_or_else(|| Error::failed(format!("{} is not UTF-8", mapped.display())))?;
        if mapped.contains('\n') {
            return Err(Error::failed("a tablespace path with a newline"));
        }
        out.push_str(&format!("{oid} {mapped}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(s: &str) -> DatasetName {
        DatasetName::parse(s).unwrap()
    }

    fn ts(name: &str, dataset: &str, mountpoint: &str) -> Tablespace {
        Tablespace {
            name: name.into(),
            dataset: ds(dataset),
            mountpoint: mountpoint.into(),
        }
    }

    #[test]
    fn a_tree_is_listed_parents_first_then_the_tablespaces() {
        let set = ClusterDatasets::new(
            &ds("tank/pgdata"),
            &[ds("tank/pgdata/wal/archive"), ds("tank/pgdata/wal")],
            &[ts("fast", "tank/pgts/fast", "/var/db/pgts/fast")],
        )
        .unwrap();
        let names: Vec<&str> = set.members.iter().map(|m| m.dataset.as_str()).collect();
        assert_eq!(
            names,
            [
                "tank/pgdata",
                "tank/pgdata/wal",
                "tank/pgdata/wal/archive",
                "tank/pgts/fast"
            ]
        );
        assert_eq!(
            set.members[2].role,
            MemberRole::Child {
                relative: "wal/archive".into()
            }
        );
        let standby_wal = local_counterpart(&set.members[2], &ds("backup/db2"), &[]).unwrap();
        assert_eq!(standby_wal.as_str(), "backup/db2/wal/archive");
    }

    #[test]
    fn a_tablespace_inside_the_tree_is_a_config_error() {
        let err = ClusterDatasets::new(
            &ds("tank/pgdata"),
            &[],
            &[ts("fast", "tank/pgdata/ts", "/ts")],
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("overlaps"), "{err}");
    }

    #[test]
    fn the_cut_is_one_call_where_the_zfs_and_the_pool_allow_and_the_plan_says_where_not() {
        let set = ClusterDatasets::new(
            &ds("tank/pgdata"),
            &[ds("tank/pgdata/wal")],
            &[
                ts("fast", "tank/pgts/fast", "/ts/fast"),
                ts("cold", "slow/pgts/cold", "/ts/cold"),
            ],
        )
        .unwrap();
        let snap = SnapName::parse("pgzfs-a").unwrap();
        let groups = set.snapshot_groups(&snap, true);
        let names: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.snapshots.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec![
                    "tank/pgdata@pgzfs-a".to_string(),
                    "tank/pgts/fast@pgzfs-a".to_string()
                ],
                vec!["slow/pgts/cold@pgzfs-a".to_string()],
            ]
        );
        let note = set.cut_note(true).unwrap();
        assert!(
            note.contains("slow/pgts/cold snapshotted separately (another pool)"),
            "{note}"
        );
        assert!(!note.contains("tank/pgts/fast snapshotted"), "{note}");
        // zfs-fuse takes one snapshot per call: the same-pool tablespace is separate too.
        assert_eq!(set.snapshot_groups(&snap, false).len(), 3);
        let tree_only =
            ClusterDatasets::new(&ds("tank/pgdata"), &[ds("tank/pgdata/wal")], &[]).unwrap();
        assert_eq!(tree_only.cut_note(false), None);
    }

    #[test]
    fn the_tablespace_map_points_where_this_node_mounts_each_tablespace() {
        let source = [ts("fast", "tank/pgts/fast", "/lab/db1-ts")];
        let local = [ts("fast", "tank/db2-ts", "/lab/db2-ts")];
        let mapped = map_tablespace_map("16390 /lab/db1-ts/pg\n", &source, &local).unwrap();
        assert_eq!(mapped, "16390 /lab/db2-ts/pg\n");
        let at_root = map_tablespace_map("16391 /lab/db1-ts\n", &source, &local).unwrap();
        assert_eq!(at_root, "16391 /lab/db2-ts\n");
        // A tablespace the config does not know would keep the primary's path.
        let err = map_tablespace_map("16392 /elsewhere/ts\n", &source, &local).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        // The standby lacks an entry of that name.
        let err = map_tablespace_map("16390 /lab/db1-ts/pg\n", &source, &[]).unwrap_err();
        assert!(err.to_string().contains("\"fast\""), "{err}");
        assert!(map_tablespace_map("garbage\n", &source, &local).is_err());
        assert_eq!(map_tablespace_map("", &source, &local).unwrap(), "");
    }

    #[test]
    fn the_tablespaces_key_refuses_duplicates_and_relative_paths() {
        let raw = |name: &str, dataset: &str, mp: &str| RawTablespace {
            name: name.into(),
            dataset: dataset.into(),
            mountpoint: mp.into(),
        };
        assert!(Tablespace::parse_list(vec![raw("fast", "tank/ts", "/ts")]).is_ok());
        for (list, why) in [
            (vec![raw("a b", "tank/ts", "/ts")], "plain word"),
            (vec![raw("fast", "tank/ts", "ts")], "absolute"),
            (vec![raw("fast", "tank/ts@x", "/ts")], "dataset"),
            (
                vec![raw("a", "tank/ts", "/ts"), raw("a", "tank/ts2", "/ts2")],
                "twice",
            ),
            (
                vec![raw("a", "tank/ts", "/ts"), raw("b", "tank/ts/x", "/ts2")],
                "overlaps",
            ),
        ] {
            let err = Tablespace::parse_list(list).unwrap_err();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
    }
}

//! `pgzfs upgrade --new-bin DIR`: a PostgreSQL major upgrade of the primary with a
//! ZFS snapshot as the instant way back.
//!
//! The sequence:
//! 1. preflight, nothing changed yet: this node is the running primary, DIR holds a newer
//!    major's whole toolset, the data directory sits in a directory of the node's own
//!    dataset (no tree, no tablespaces: a rollback must cover everything), every
//!    configured standby streams, no re-seed from this node is in flight; initdb of the
//!    new cluster next to the data directory and `pg_upgrade --check` against the
//!    running server. A refusal removes the new cluster and exits 3.
//! 2. a clean (fast) shutdown, then the rollback snapshot of the stopped cluster, held
//!    with `pgzfs-upgrade`. It is taken after the shutdown, so nothing committed is
//!    missing from it.
//! 3. `pg_upgrade --link` into `<data_dir>.pgzfs-new`, the old directory renamed to
//!    `<data_dir>.pgzfs-old-<major>` and the new one to `data_dir`, the old cluster's
//!    configuration files copied over, the new major started and asked for a write.
//! 4. any failure in 2 or 3 stops whatever runs, rolls the dataset back to the snapshot
//!    and starts the old major: the cluster is exactly as before the run.
//! 5. a backup-safe snapshot of the new cluster (it records `pgzfs:pg_major`), and the
//!    follow-ups pg_upgrade asks for.
//!
//! Why a new directory on the same dataset, and not a new dataset or in place:
//! pg_upgrade needs two data directories; `--link` makes the new cluster's relation
//! files hard links to the old ones, which only works on one file system, and keeps the
//! very blocks the standbys already have, so their re-seed after the upgrade is an
//! incremental stream of the catalog and WAL only. The swap by rename keeps `data_dir`
//! (and so the config, rc.conf and every tool pointing at it) unchanged.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::lock::LocalLock;
use crate::pg::control::{self, ClusterState};
use crate::pg::ctl::PgCtl;
use crate::pg::upgrade::Upgrader;
use crate::pg::RESEED_LOCK;
use crate::steps::Steps;
use crate::zfs::names::{HoldTag, SnapName, SnapshotName};
use crate::zfs::{prop, Zfs};

/// The hold on the rollback snapshot: retention keeps it until the operator releases it.
pub const HOLD: &str = "pgzfs-upgrade";
/// On the rollback snapshot: which upgrade it is the way back from.
pub const ROLLBACK_PROP: &str = "pgzfs:upgrade_rollback";

/// What `pgzfs upgrade --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub old_major: u32,
    pub new_major: u32,
    pub new_bin: String,
    /// The snapshot of the stopped old cluster, held with `pgzfs-upgrade`.
    pub rollback_snapshot: String,
    /// The first backup-safe snapshot of the new cluster (None when it failed: see
    /// `warnings`).
    pub snapshot: Option<String>,
    pub data_dir: String,
    /// The old cluster's directory, kept until the operator removes it.
    pub old_data_dir: String,
    /// Seconds the server was down, from the shutdown to the new server's first write.
    pub downtime_seconds: f64,
    pub steps: Vec<(String, f64)>,
    /// What the operator does next, in order.
    pub follow_ups: Vec<String>,
    pub warnings: Vec<String>,
}

/// `--new-bin DIR`: an absolute directory with a postgres in it.
pub fn check_new_bin(dir: &Path) -> Result<PathBuf> {
    if !dir.is_absolute() {
        return Err(Error::usage(format!(
            "--new-bin {}: give an absolute path",
            dir.display()
        )));
    }
    if !dir.join("postgres").is_file() {
        return Err(Error::usage(format!(
            "--new-bin {}: no postgres there",
            dir.display()
        )));
    }
    Ok(dir.to_path_buf())
}

/// Where the new cluster is made, and where the old one is kept after the swap.
pub fn sibling(data_dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = data_dir
        .file_name()
        .ok_or_else(|| Error::usage(format!("data_dir {} has no name", data_dir.display())))?;
    let mut name = name.to_os_string();
    name.push(suffix);
    Ok(data_dir.with_file_name(name))
}

/// The layout the upgrade needs: `data_dir` strictly below the dataset's mountpoint, so
/// that its siblings (the new cluster, the old one kept aside) are on the same dataset
/// and inside the rollback snapshot.
pub fn check_layout(data_dir: &Path, mountpoint: &Path) -> Result<()> {
    if data_dir == mountpoint || !data_dir.starts_with(mountpoint) {
        return Err(Error::refused(format!(
            "data_dir {} must be a directory below the dataset's mountpoint {} (e.g. {}/data): \
             pg_upgrade --link needs the new cluster next to the old one on the same dataset, \
             inside the rollback snapshot",
            data_dir.display(),
            mountpoint.display(),
            mountpoint.display()
        )));
    }
    Ok(())
}

/// Run the upgrade on this node (the primary).
pub fn upgrade(ctx: &Context, new_bin: &Path) -> Result<Report> {
    let node = &ctx.local;
    let new_bin = check_new_bin(new_bin)?;
    let _lock = LocalLock::acquire(&node.lock_file, node.lock_timeout, "upgrade")?;
    let zfs = ctx.local_zfs()?;
    let zfs: &dyn Zfs = &*zfs;
    let mut steps = Steps::default();
    let old_ctl = ctx.pgctl()?;
    let new_ctl = PgCtl::new(
        &new_bin,
        &node.data_dir,
        &node.pg.pg_log_file,
        &node.pg.pg_os_user,
    )?;
    let new_dir = sibling(&node.data_dir, ".pgzfs-new")?;

    // 1. Preflight.
    let mut pg = crate::cluster::connect_local_primary(node)?;
    let old_major = pg.major();
    let new_major = new_ctl.binary_major()?;
    if new_major <= old_major {
        return Err(Error::refused(format!(
            "--new-bin {} is PostgreSQL {new_major}, this cluster runs {old_major}: not an upgrade",
            new_bin.display()
        )));
    }
    if control::read_major(&node.data_dir)? != Some(old_major) {
        return Err(Error::refused(format!(
            "{} is not the data directory of the PostgreSQL {old_major} server that runs here",
            node.data_dir.display()
        )));
    }
    if !zfs.children(&node.dataset)?.is_empty() {
        return Err(Error::refused(format!(
            "{} has child datasets: upgrading a dataset tree is not supported yet (the rollback would not cover it)",
            node.dataset
        )));
    }
    let mountpoint = match &node.mountpoint {
        Some(path) => path.clone(),
        None => zfs
            .mountpoint(&node.dataset)?
            .ok_or_else(|| Error::refused(format!("{} has no mountpoint", node.dataset)))?,
    };
    check_layout(&node.data_dir, &mountpoint)?;
    let tablespaces = std::fs::read_dir(node.data_dir.join("pg_tblspc"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    if tablespaces > 0 {
        return Err(Error::refused(
            "the cluster has tablespaces, which live outside the dataset: the rollback snapshot would not cover them",
        ));
    }
    let old_aside = sibling(&node.data_dir, &format!(".pgzfs-old-{old_major}"))?;
    for leftover in [&new_dir, &old_aside] {
        if std::fs::symlink_metadata(leftover).is_ok() {
            return Err(Error::refused(format!(
                "{} exists (left by an earlier upgrade?); look at it and remove it, then run upgrade again",
                leftover.display()
            )));
        }
    }
    let connections = pg.standby_connections()?;
    let not_streaming: Vec<String> = ctx
        .config
        .nodes
        .iter()
        .filter(|n| n.name != node.name)
        .filter(|n| {
            !connections
                .iter()
                .any(|c| c.application_name == n.name && c.state == "streaming")
        })
        .map(|n| n.name.clone())
        .collect();
    if !not_streaming.is_empty() {
        return Err(Error::refused(format!(
            "not streaming from this primary: {}. Every standby must be streaming before the upgrade: \
             it is re-seeded incrementally afterwards from the snapshot it shares with this node",
            not_streaming.join(", ")
        )));
    }
    if !pg.try_advisory_lock(RESEED_LOCK)? {
        return Err(Error::refused(
            "a re-seed from this node is in flight; upgrade when it has finished",
        ));
    }
    let identity = pg.cluster_identity()?;
    let work = WorkDir::create(&node.pg.pg_os_user)?;
    let upgrader = Upgrader::new(&node.pg.pg_bin, &new_bin, &node.pg.pg_os_user, &work.path)?;
    upgrader.check_tools()?;
    make_owned_dir(&new_dir, &node.pg.pg_os_user)?;
    let checked = steps.run("pg_upgrade --check", || {
        upgrader.initdb(&new_dir, &identity, new_major)?;
        upgrader.check(
            &node.data_dir,
            &new_dir,
            &identity.superuser,
            node.pg.pg_port,
        )
    });
    let refusal = match checked {
        Ok(Ok(())) => None,
        Ok(Err(said)) => {
            let findings = upgrader.check_findings(&new_dir);
            Some(Error::refused(format!(
                "pg_upgrade --check with PostgreSQL {new_major} refuses this cluster; nothing was changed:\n{said}{}",
                if findings.is_empty() { String::new() } else { format!("\nwhat it found:\n{findings}") }
            )))
        }
        Err(e) => Some(e.context("preflight (initdb and pg_upgrade --check); nothing was changed")),
    };
    if let Some(refusal) = refusal {
        if let Err(e) = upgrader.remove_dir(&new_dir) {
            tracing::warn!("could not remove {}: {e}", new_dir.display());
        }
        return Err(refusal);
    }
    tracing::info!("pg_upgrade --check passed for PostgreSQL {old_major} to {new_major}");

    // 2. Stop, and the rollback point.
    drop(pg);
    let down = std::time::Instant::now();
    let timeout = node.pg.streaming_timeout.max(Duration::from_secs(60));
    let way_back = Rollback {
        zfs,
        upgrader: &upgrader,
        old_ctl: &old_ctl,
        new_bin: &new_bin,
        node_bin: &node.pg.pg_bin,
        data_dir: &node.data_dir,
        new_dir: &new_dir,
        old_aside: &old_aside,
        os_user: &node.pg.pg_os_user,
        log_file: &node.pg.pg_log_file,
        dataset: &node.dataset,
        timeout,
    };
    steps
        .run("stop", || old_ctl.stop(timeout).map(drop))
        .map_err(|e| way_back.restart_old(None, "stop", e))?;
    let clean = control::read_control(&node.data_dir)?.map(|c| c.state);
    if clean != Some(ClusterState::ShutDown) {
        return Err(way_back.restart_old(
            None,
            "stop",
            Error::failed(format!(
                "the server did not shut down cleanly (pg_control says {clean:?})"
            )),
        ));
    }
    let existing = zfs.snapshots(&node.dataset)?;
    let snapshot = node.dataset.snapshot(&crate::cut::unique_snapshot_name(
        &SnapName::pgzfs_at(SystemTime::now()),
        &existing,
    )?);
    let tag = HoldTag::parse(HOLD)?;
    steps
        .run("rollback snapshot", || {
            zfs.snapshot_recursive(
                &snapshot,
                &[
                    (prop::PG_MAJOR, old_major.to_string()),
                    (prop::SOURCE_NODE, node.name.clone()),
                    (ROLLBACK_PROP, format!("{old_major}-to-{new_major}")),
                ],
            )?;
            zfs.hold(&tag, &snapshot)
        })
        .map_err(|e| {
            let taken = zfs
                .snapshots(&node.dataset)
                .map(|s| s.iter().any(|s| s.name == snapshot))
                .unwrap_or(false);
            way_back.restart_old(taken.then_some(&snapshot), "rollback snapshot", e)
        })?;
    tracing::info!("rollback point {snapshot} (held with {HOLD})");

    // 3. The upgrade proper: any failure rolls back.
    let upgraded = (|| -> Result<()> {
        let said = steps.run("pg_upgrade --link", || {
            upgrader
                .link(
                    &node.data_dir,
                    &new_dir,
                    &identity.superuser,
                    node.pg.pg_port,
                )?
                .map_err(|said| Error::failed(format!("pg_upgrade --link failed:\n{said}")))
        })?;
        tracing::debug!("pg_upgrade said:\n{said}");
        steps.run("swap", || {
            std::fs::rename(&node.data_dir, &old_aside).map_err(|e| {
                Error::failed(format!("renaming {} aside: {e}", node.data_dir.display()))
            })?;
            std::fs::rename(&new_dir, &node.data_dir).map_err(|e| {
                Error::failed(format!("renaming {} into place: {e}", new_dir.display()))
            })?;
            upgrader.copy_config(&old_aside, &node.data_dir)
        })?;
        steps.run("start", || new_ctl.start(timeout))?;
        steps.run("first write", || {
            let mut pg = ctx.pg(node)?;
            if pg.is_in_recovery()? || !pg.is_writable()? {
                return Err(Error::failed(
                    "the new server came up but does not accept writes",
                ));
            }
            Ok(())
        })
    })();
    if let Err(e) = upgraded {
        return Err(way_back.roll_back(&snapshot, e));
    }
    let downtime = down.elapsed().as_secs_f64();
    tracing::info!(
        "PostgreSQL {new_major} accepts writes on {} after {downtime:.1}s",
        node.name
    );

    // 4. From here on the new server is in use: failures are reported, not rolled back.
    let mut warnings = Vec::new();
    let cut = steps.run("snapshot", || {
        let mut primary = crate::cluster::connect_local_primary(node)?;
        crate::cut::take_of_node(
            &mut Steps::default(),
            &mut primary,
            zfs,
            node,
            SystemTime::now(),
            &format!("pgzfs upgrade to {new_major}"),
        )
    });
    let first = match cut {
        Ok(cut) => Some(cut.snapshot.to_string()),
        Err(e) => {
            warnings.push(format!(
                "the first snapshot of the new cluster failed ({e}); take one with `pgzfs snapshot`"
            ));
            None
        }
    };
    let mut follow_ups = vec![format!(
        "{}/vacuumdb --all --analyze-in-stages (as {}): the new cluster has no planner statistics yet",
        new_bin.display(),
        node.pg.pg_os_user
    )];
    for (name, text) in upgrader.scripts() {
        if name == "update_extensions.sql" {
            const KEPT: &str = "pgzfs-update_extensions.sql";
            let kept = node.data_dir.join(KEPT);
            // Through the directory's handle: a link the PostgreSQL user left under that
            // name is replaced, not followed.
            let written = crate::safe_dir::Dir::open(&node.data_dir)
                .and_then(|dir| dir.write(KEPT, text.as_bytes(), 0o644, None));
            match written {
                Ok(_) => follow_ups.push(format!(
                    "psql -f {} (as {}): pg_upgrade asks to update extensions",
                    kept.display(),
                    identity.superuser
                )),
                Err(e) => warnings.push(format!("could not keep {name}: {e}")),
            }
        }
    }
    follow_ups.push(format!(
        "on each standby: pgzfs reset-secondary --new-bin {} (incremental from the common base)",
        new_bin.display()
    ));
    follow_ups.push(format!(
        "set pg_bin = \"{}\" for every node in the config (or in [defaults])",
        new_bin.display()
    ));
    follow_ups.push(format!(
        "when satisfied: remove {} (the old cluster; pg_upgrade --link made it unusable) and \
         `zfs release {HOLD} {snapshot}` so retention can expire the rollback point",
        old_aside.display()
    ));
    Ok(Report {
        node: node.name.clone(),
        old_major,
        new_major,
        new_bin: new_bin.display().to_string(),
        rollback_snapshot: snapshot.to_string(),
        snapshot: first,
        data_dir: node.data_dir.display().to_string(),
        old_data_dir: old_aside.display().to_string(),
        downtime_seconds: crate::steps::round(downtime),
        steps: steps.in_order(),
        follow_ups,
        warnings,
    })
}

/// The way back to the old cluster, from wherever the upgrade stopped.
struct Rollback<'a> {
    zfs: &'a dyn Zfs,
    upgrader: &'a Upgrader,
    old_ctl: &'a PgCtl,
    new_bin: &'a Path,
    node_bin: &'a Path,
    data_dir: &'a Path,
    new_dir: &'a Path,
    old_aside: &'a Path,
    os_user: &'a str,
    log_file: &'a Path,
    dataset: &'a crate::zfs::names::DatasetName,
    timeout: Duration,
}

impl Rollback<'_> {
    /// Stop every server the attempt may have left running (the new one, or the ones a
    /// killed pg_upgrade started), immediately: the data is about to be rolled back.
    fn stop_everything(&self) {
        for dir in [self.data_dir, self.new_dir, self.old_aside] {
            if control::running_postmaster(dir).is_none() {
                continue;
            }
            let bin = match control::read_major(dir) {
                Ok(Some(major)) if self.bin_major(self.node_bin) == Some(major) => self.node_bin,
                _ => self.new_bin,
            };
            let stopped = PgCtl::new(bin, dir, self.log_file, self.os_user)
                .and_then(|ctl| ctl.stop_for_replacement());
            if let Err(e) = stopped {
                tracing::warn!("stopping the server in {}: {e}", dir.display());
            }
        }
    }

    fn bin_major(&self, bin: &Path) -> Option<u32> {
        PgCtl::new(bin, self.data_dir, self.log_file, self.os_user)
            .and_then(|ctl| ctl.binary_major())
            .ok()
    }

    /// Back to `snapshot` and the old major running; the error says what failed and
    /// that the cluster is as before (or, loudly, that the way back failed too).
    fn roll_back(&self, snapshot: &SnapshotName, cause: Error) -> Error {
        tracing::error!("the upgrade failed ({cause}); rolling back to {snapshot}");
        self.stop_everything();
        let rolled = (|| -> Result<()> {
            self.zfs.unmount(self.dataset)?;
            let back = self.zfs.rollback(snapshot);
            self.zfs.mount(self.dataset)?;
            back
        })();
        if let Err(e) = rolled {
            return Error::failed(format!(
                "{cause}\nROLLBACK FAILED: {e}. PostgreSQL is stopped; roll back by hand: \
                 zfs rollback {snapshot}, remove {}, start the old server",
                self.new_dir.display()
            ));
        }
        self.restart_old(
            Some(snapshot),
            "the upgrade (after the rollback snapshot)",
            cause,
        )
    }

    /// Remove the new cluster, start the old major again, and explain.
    fn restart_old(&self, snapshot: Option<&SnapshotName>, step: &str, cause: Error) -> Error {
        if let Err(e) = self.upgrader.remove_dir(self.new_dir) {
            tracing::warn!("could not remove {}: {e}", self.new_dir.display());
        }
        if let Some(snapshot) = snapshot {
            if let Ok(tag) = HoldTag::parse(HOLD) {
                let _ = self.zfs.release(&tag, snapshot);
            }
        }
        let back = match snapshot {
            Some(s) => format!("rolled back to {s}"),
            None => "nothing was changed".to_string(),
        };
        match self.old_ctl.start(self.timeout) {
            Ok(()) => Error::failed(format!(
                "upgrade failed at {step}: {cause}\n{back}; the old PostgreSQL runs again"
            )),
            Err(e) => Error::failed(format!(
                "upgrade failed at {step}: {cause}\n{back}, but the old PostgreSQL did not start: {e}"
            )),
        }
    }
}

/// pg_upgrade's private working directory: root's temporary directory, owned by the
/// PostgreSQL user, mode 0700; removed at the end.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(os_user: &str) -> Result<WorkDir> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let path = base.join(format!("pgzfs-upgrade-{}-{attempt}", std::process::id()));
            match make_owned_dir(&path, os_user) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(_) if std::fs::symlink_metadata(&path).is_ok() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::failed(
            "cannot create a working directory for pg_upgrade",
        ))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A new directory (never an existing one, never through a link) owned by `os_user`,
/// mode 0700.
fn make_owned_dir(path: &Path, os_user: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::failed(format!("creating {}: {e}", path.display())))?;
    let user = nix::unistd::User::from_name(os_user)
        .map_err(|e| Error::failed(format!("cannot look up {os_user}: {e}")))?
        .ok_or_else(|| Error::usage(format!("OS user {os_user:?} does not exist")))?;
    std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|e| Error::failed(format!("chown {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_and_the_old_cluster_sit_next_to_the_data_directory() {
        let data = Path::new("/var/db/postgres/data");
        assert_eq!(
            sibling(data, ".pgzfs-new").unwrap(),
            Path::new("/var/db/postgres/data.pgzfs-new")
        );
        assert_eq!(
            sibling(data, ".pgzfs-old-15").unwrap(),
            Path::new("/var/db/postgres/data.pgzfs-old-15")
        );
    }

    #[test]
    fn a_data_directory_that_is_the_mountpoint_itself_is_refused() {
        let mp = Path::new("/var/db/postgres");
        assert!(check_layout(Path::new("/var/db/postgres/data15"), mp).is_ok());
        let same = check_layout(mp, mp).unwrap_err();
        assert_eq!(same.exit_code(), 3);
        assert!(check_layout(Path::new("/srv/data"), mp).is_err());
    }

    #[test]
    fn new_bin_must_be_an_absolute_directory_with_a_server() {
        assert_eq!(check_new_bin(Path::new("bin")).unwrap_err().exit_code(), 2);
        assert_eq!(
            check_new_bin(Path::new("/nonexistent/bin"))
                .unwrap_err()
                .exit_code(),
            2
        );
    }
}

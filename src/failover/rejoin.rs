//! Rejoin: turn a stopped or fenced former primary into a standby of the new primary
//! without pg_rewind and without a full copy. Whatever it wrote after NODE took over
//! is kept first, as a compressed incremental ZFS stream in `quarantine_dir`; then the
//! dataset is rolled back to the newest snapshot both share and re-seeded from there.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::seam::{LocalServer, Postgres, RealPostgres, Session};
use crate::config::Node;
use crate::context::Context;
use crate::datasets::ClusterDatasets;
use crate::error::{Error, Result};
use crate::pg::control::{self, Lsn};
use crate::pg::ctl::PgCtl;
use crate::progress::{human_bytes, Progress};
use crate::replicate::{self, ReseedRequest, Summary};
use crate::safe_dir::Dir;
use crate::transfer::{self, Interrupt, Sink};
use crate::zfs::names::SnapName;
use crate::zfs::{newest_common, prop, Zfs};

/// What was kept of a former primary's own writes.
#[derive(Debug)]
pub struct Quarantine {
    pub file: PathBuf,
    pub bytes: u64,
    /// The diverged writes of the cluster's children and tablespaces, one file each.
    pub member_files: Vec<PathBuf>,
}

/// Everything before the re-seed: refuse what is unsafe, report the divergence and keep
/// the diverged writes. The caller then re-seeds with `Caller::Rejoin`.
pub fn rejoin(
    ctx: &Context,
    to: &str,
    full: bool,
    discard_diverged: bool,
) -> Result<Option<Quarantine>> {
    let local = &ctx.local;
    let target = ctx.peer(to, "--to")?;
    let server = PgCtl::for_node(local)?;
    let mut primary = check_rejoin(&RealPostgres, &server, local, &target)?;
    let new_timeline = primary.timeline()?;
    let remote = ctx.remote_zfs(&target)?;
    // One question for the fork point and the snapshots: every remote call is a round trip.
    let target_tree = remote.survey(&target.dataset)?.ok_or_else(|| {
        Error::failed(format!("dataset {} does not exist on {to}", target.dataset))
    })?;
    let fork_lsn: Option<Lsn> = target_tree
        .record(prop::FORK_LSN)
        .and_then(|t| t.parse().ok());
    let fork_timeline: Option<u64> = target_tree
        .record(prop::FORK_TIMELINE)
        .and_then(|t| t.parse().ok());

    let zfs = ctx.local_zfs()?;
    if zfs.exists(&local.dataset)? {
        zfs.mount(&local.dataset)?;
    }
    let ours = control::read_control(&local.data_dir)?;
    match (ours, fork_lsn) {
        (Some(c), Some(fork)) => {
            let diverged = Some(c.timeline as u64) == fork_timeline && c.checkpoint_lsn > fork;
            tracing::info!(
                "divergence: {} last wrote a checkpoint at {} on timeline {}; {to} forked from timeline {} at {fork} and is on timeline {new_timeline}: {}",
                local.name,
                c.checkpoint_lsn,
                c.timeline,
                fork_timeline.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                if diverged { "the former primary wrote past the fork point" } else { "no writes past the fork point" }
            );
        }
        (Some(c), None) => tracing::info!(
            "divergence: {} is at {} on timeline {}; {to} (timeline {new_timeline}) records no fork point, so assume writes diverged",
            local.name,
            c.checkpoint_lsn,
            c.timeline
        ),
        (None, _) => tracing::info!("{} holds no PostgreSQL data directory", local.name),
    }

    if !zfs.exists(&local.dataset)? {
        return Ok(None);
    }
    let local_snaps = zfs.snapshots(&local.dataset)?;
    let remote_snaps = target_tree.snapshots(&target.dataset);
    let Some(common) = newest_common(&remote_snaps, &local_snaps) else {
        if full {
            return Ok(None);
        }
        return Err(Error::refused(format!(
            "{} shares no snapshot with {to}; an incremental rejoin is impossible. Use --full to copy everything (the old dataset is renamed aside)",
            local.dataset
        )));
    };
    let base_snap = local_snaps
        .iter()
        .find(|s| s.guid == common.guid)
        .expect("common is local");
    let base = base_snap.name.clone();
    tracing::info!("newest common snapshot with {to}: {base}");
    release_obsolete_holds(ctx, &*zfs, &local_snaps, base_snap.createtxg)?;
    // The same on pg_wal's child and the tablespaces, each from its own part of the base
    // cut (a member without it is left to the re-seed's plan, which refuses).
    let cluster = ClusterDatasets::discover(&*zfs, &local.dataset, &local.tablespaces)?;
    for member in cluster.others() {
        let snaps = zfs.snapshots(&member.dataset)?;
        if let Some(member_base) = snaps.iter().find(|s| s.name.snap() == base.snap()) {
            release_obsolete_holds(ctx, &*zfs, &snaps, member_base.createtxg)?;
        }
    }
    if discard_diverged {
        tracing::warn!(
            "--discard-diverged: writes made on {} after {base} are not kept",
            local.name
        );
        return Ok(None);
    }
    keep_diverged_writes(ctx, &*zfs, &cluster, &base).map(Some)
}

/// Rejoin's safety checks: this node must take no writes (fence before rejoin: a server
/// that runs is accepted only when it answers that it is read-only; one that does not
/// answer may be a primary), and `target` must answer as a writable primary. Returns the
/// session with the new primary.
pub fn check_rejoin(
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    local: &Node,
    target: &Node,
) -> Result<Box<dyn Session>> {
    if server.is_running() {
        let writable = pg.connect(local).and_then(|mut s| s.is_writable());
        if !matches!(writable, Ok(false)) {
            return Err(Error::refused(format!(
                "PostgreSQL on {} is running and may be a primary; fence it first (stop it, or `pgzfs carp-event BACKUP`)",
                local.name
            )));
        }
    }
    let mut primary = pg
        .connect(target)
        .map_err(|e| Error::refused(format!("{} is not reachable: {e}", target.name)))?;
    if !primary.is_writable()? {
        return Err(Error::refused(format!(
            "{} is not a writable primary",
            target.name
        )));
    }
    Ok(primary)
}

/// The whole rejoin: the checks and the kept writes (`rejoin`), then the re-seed from
/// `to` with `Caller::Rejoin`. The caller holds the node's lock.
pub fn rejoin_and_reseed(
    ctx: &Context,
    to: &str,
    full: bool,
    discard_diverged: bool,
) -> Result<Summary> {
    let request = ReseedRequest::rejoin(to, full);
    rejoin(ctx, to, full, discard_diverged)
        .and_then(|_| Interrupt::install())
        .and_then(|interrupt| replicate::reseed_unattended(ctx, &request, interrupt))
}

/// As a primary, this node held its newer snapshots as incremental bases for its
/// standbys. Those standbys now follow the new primary, and each keeps its own copy of
/// its base, so pgzfs's holds here are obsolete and would block the rollback. Only
/// pgzfs's own tags are released: a hold anyone else placed still makes the re-seed
/// refuse.
fn release_obsolete_holds(
    ctx: &Context,
    zfs: &dyn Zfs,
    snapshots: &[crate::zfs::Snapshot],
    base_txg: u64,
) -> Result<()> {
    let held: Vec<crate::zfs::names::SnapshotName> = snapshots
        .iter()
        .filter(|s| s.createtxg > base_txg && s.is_held())
        .map(|s| s.name.clone())
        .collect();
    // One call per tag, all snapshots in it: most carry only some standbys' tags.
    for node in &ctx.config.nodes {
        let tag = crate::zfs::names::HoldTag::parse(&format!("pgzfs-{}", node.reseed.slot_name))?;
        for (snap, _) in held
            .iter()
            .zip(zfs.release_each(&tag, &held)?)
            .filter(|(_, r)| *r)
        {
            tracing::info!("released the obsolete hold {tag} on {snap} (a base {} had from this node as primary)", node.name);
        }
    }
    Ok(())
}

/// Snapshot what the former primary has now and save it, as an incremental stream from
/// the common base, to a gzip file.
fn keep_diverged_writes(
    ctx: &Context,
    zfs: &dyn Zfs,
    cluster: &ClusterDatasets,
    base: &crate::zfs::names::SnapshotName,
) -> Result<Quarantine> {
    let local = &ctx.local;
    // The config refuses a quarantine inside data_dir or a configured mountpoint; the
    // dataset's actual mountpoint is only known here.
    if let Some(mountpoint) = zfs.mountpoint(&local.dataset)? {
        if local.failover.quarantine_dir.starts_with(&mountpoint) {
            return Err(Error::refused(format!(
                "quarantine_dir {} is inside the mountpoint {} of {}: the rollback that follows would destroy it; set quarantine_dir outside the dataset",
                local.failover.quarantine_dir.display(),
                mountpoint.display(),
                local.dataset
            )));
        }
    }
    if let Some(ts) = local
        .tablespaces
        .iter()
        .find(|t| local.failover.quarantine_dir.starts_with(&t.mountpoint))
    {
        return Err(Error::refused(format!(
            "quarantine_dir {} is inside the mountpoint {} of tablespace {:?}: the rollback that follows would destroy it",
            local.failover.quarantine_dir.display(),
            ts.mountpoint.display(),
            ts.name
        )));
    }
    let stamp = crate::timestamp::utc_compact(SystemTime::now());
    let diverged_snap = SnapName::parse(&format!("pgzfs-diverged-{stamp}"))?;
    let diverged = local.dataset.snapshot(&diverged_snap);
    // One cut of every dataset of the cluster: the rollback that follows takes them all.
    crate::datasets::snapshot_cut(zfs, cluster, &diverged_snap, &[])?;
    // The quarantine holds the former primary's data: root's alone (0700, files 0600),
    // reached without following links, each file new (O_EXCL).
    let dir = Dir::open_or_create(&local.failover.quarantine_dir, 0o700)?;
    restrict_quarantine_dir(&dir)?;
    let name = format!(
        "{}-{}-diverged-{stamp}.zfs.gz",
        ctx.config.cluster, local.name
    );
    let file = local.failover.quarantine_dir.join(&name);
    let partial = format!("{name}.partial");
    let sink = GzipFile::create(dir.try_clone()?, &partial)?;
    // No bwlimit: this stream goes from the local pool to a local file and crosses no
    // link. The pull from the new primary that follows is limited (reset_secondary).
    let moved = transfer::copy(
        zfs.send(&diverged, Some(base))?,
        Box::new(sink),
        &Progress::new(None),
        &Interrupt::default(),
        None,
    )?;
    dir.rename(&partial, &name)?;
    // Each child and tablespace in a file of its own, from its part of the base cut (in
    // full where it has none).
    let mut member_files = Vec::new();
    for member in cluster.others() {
        let snaps = zfs.snapshots(&member.dataset)?;
        let member_base = snaps
            .iter()
            .find(|s| s.name.snap() == base.snap())
            .map(|s| s.name.clone());
        let member_name = format!(
            "{}-{}-diverged-{stamp}-{}.zfs.gz",
            ctx.config.cluster,
            local.name,
            member.dataset.as_str().replace('/', "_")
        );
        let member_partial = format!("{member_name}.partial");
        let sink = GzipFile::create(dir.try_clone()?, &member_partial)?;
        transfer::copy(
            zfs.send(
                &member.dataset.snapshot(&diverged_snap),
                member_base.as_ref(),
            )?,
            Box::new(sink),
            &Progress::new(None),
            &Interrupt::default(),
            None,
        )?;
        dir.rename(&member_partial, &member_name)?;
        let path = local.failover.quarantine_dir.join(&member_name);
        tracing::info!(
            "kept the writes on {} after {} in {}",
            member.dataset,
            member_base
                .map(|b| b.to_string())
                .unwrap_or_else(|| "its creation".into()),
            path.display()
        );
        member_files.push(path);
    }
    dir.sync()?;
    // Stderr and the log file: stdout carries only the summary (JSON with --json).
    tracing::info!(
        "kept the writes {} made after {base} in {} ({} of stream). To inspect them:\n  \
         zfs send {base} | zfs receive <pool>/inspect && gunzip -c {} | zfs receive <pool>/inspect",
        local.name,
        file.display(),
        human_bytes(moved.bytes),
        file.display()
    );
    Ok(Quarantine {
        file,
        bytes: moved.bytes,
        member_files,
    })
}

/// The quarantine directory must be root's and closed to everyone else: a directory
/// another user owns could have its files swapped under pgzfs.
fn restrict_quarantine_dir(dir: &Dir) -> Result<()> {
    let (uid, _) = dir.owner()?;
    let me = nix::unistd::geteuid().as_raw();
    if uid != me && uid != 0 {
        return Err(Error::refused(format!(
            "quarantine_dir {} belongs to uid {uid}, not to root: refusing to keep a former primary's data there",
            dir.path().display()
        )));
    }
    dir.set_mode(0o700)
}

/// A gzip file as the end of a ZFS stream; written to a `.partial` name and synced so
/// that a crash never leaves a truncated file looking complete.
struct GzipFile {
    encoder: Option<GzEncoder<File>>,
    dir: Dir,
    name: String,
}

impl GzipFile {
    fn create(dir: Dir, name: &str) -> Result<GzipFile> {
        let file = dir.create_new(name, 0o600)?;
        Ok(GzipFile {
            encoder: Some(GzEncoder::new(file, Compression::fast())),
            dir,
            name: name.to_string(),
        })
    }

    fn shown(&self) -> String {
        self.dir.path().join(&self.name).display().to_string()
    }
}

impl Sink for GzipFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.encoder.as_mut().expect("open").write_all(buf)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let file = self
            .encoder
            .take()
            .expect("open")
            .finish()
            .map_err(|e| Error::failed(format!("writing {}: {e}", self.shown())))?;
        file.sync_all()
            .map_err(|e| Error::failed(format!("syncing {}: {e}", self.shown())))
    }

    fn abort(mut self: Box<Self>) {
        drop(self.encoder.take());
        let _ = self.dir.remove(&self.name);
    }
}

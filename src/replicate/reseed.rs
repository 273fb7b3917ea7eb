//! The re-seed runbook: preflight (refuse anything unsafe, change nothing) → locks →
//! replication slot → backup-safe cut on the primary → plan → receive → make standby →
//! start and verify streaming → protect the new common base.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::{find_primary, pg_target, standby_setup};
use crate::config::Node;
use crate::context::Context;
use crate::cut::{BackupVia, ClusterLayout, CutMode};
use crate::datasets::{local_counterpart, map_tablespace_map, ClusterDatasets, MemberRole};
use crate::error::{Error, Result};
use crate::failover::role::{local_role_reading, Role};
use crate::failover::seam::RealPostgres;
use crate::lock::LocalLock;
use crate::pg::control::{self, ControlData};
use crate::pg::ctl::PgCtl;
use crate::pg::standby::{make_standby, RECEIVED_NOT_CONFIGURED};
use crate::pg::{Pg, RESEED_LOCK};
use crate::progress::{human_bytes, Progress};
use crate::safe_dir::Dir;
use crate::steps::{round, Steps};
use crate::transfer::{self, Interrupt};
use crate::zfs::features::{ResumeToken, SendOptions};
use crate::zfs::names::{DatasetName, SnapName, SnapshotName};
use crate::zfs::replace::{Kept, NotReplaced, Replaced, Replacement};
use crate::zfs::survey::Survey;
use crate::zfs::{Snapshot, Zfs};

use super::plan::{plan, Plan, PlanInput};
use super::protect::{protect_new_bases, NewBase, SourceKnown};
use super::report::{DryRun, Summary};
use super::tree::{pg_wal_stays_home, plan_members, MemberInput, MountAt, OwnPgWal};

/// Who asks for the re-seed. `rejoin` has already kept a former primary's diverged
/// writes, so the refusal to overwrite a former primary's data does not apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    ResetSecondary,
    Rejoin,
    /// `reset-secondary --new-bin` after `pgzfs upgrade` on the primary: this standby's
    /// data is still the old major (with the old cluster's system identifier), and the
    /// re-seed replaces it incrementally from the common base with the upgraded copy.
    MajorUpgrade,
}

/// What a re-seed is asked to do: a plain value each caller builds (the command line,
/// rejoin, carp-event, switchover, the daemon), so the engine behaves the same whoever
/// asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReseedRequest {
    /// The node to copy from; None: the one primary found among the configured nodes.
    pub from: Option<String>,
    /// Copy everything, keeping an existing local dataset renamed aside.
    pub full: bool,
    pub caller: Caller,
}

impl ReseedRequest {
    /// An incremental re-seed of a former primary from `to` (rejoin, switchover,
    /// carp-event with on_backup = "rejoin").
    pub fn rejoin(to: &str, full: bool) -> ReseedRequest {
        ReseedRequest {
            from: Some(to.to_string()),
            full,
            caller: Caller::Rejoin,
        }
    }
}

/// The plan the re-seed would carry out now, with nothing changed.
pub fn dry_run(ctx: &Context, request: &ReseedRequest) -> Result<DryRun> {
    let no_confirmation = |_: &Plan| -> Result<()> { Ok(()) };
    let reseed = Reseed {
        request,
        ctx,
        interrupt: Interrupt::default(),
        dry_run: true,
        confirm: &no_confirmation,
    };
    match reseed.execute()? {
        Outcome::DryRun(plan) => Ok(plan),
        Outcome::Done(_) => unreachable!("a dry run changes nothing"),
    }
}

/// Run the re-seed runbook on this node. `confirm` sees the plan before anything
/// changes; an Err from it stops the run with nothing changed.
pub fn reseed(
    ctx: &Context,
    request: &ReseedRequest,
    interrupt: Interrupt,
    confirm: &dyn Fn(&Plan) -> Result<()>,
) -> Result<Summary> {
    let reseed = Reseed {
        request,
        ctx,
        interrupt,
        dry_run: false,
        confirm,
    };
    match reseed.execute()? {
        Outcome::Done(summary) => Ok(summary),
        Outcome::DryRun(_) => unreachable!("only dry_run plans without acting"),
    }
}

/// [`reseed`] with no one to ask: rejoin, carp-event, switchover and the daemon.
pub fn reseed_unattended(
    ctx: &Context,
    request: &ReseedRequest,
    interrupt: Interrupt,
) -> Result<Summary> {
    reseed(ctx, request, interrupt, &|_| Ok(()))
}

enum Outcome {
    DryRun(DryRun),
    Done(Summary),
}

struct Reseed<'a> {
    request: &'a ReseedRequest,
    ctx: &'a Context,
    interrupt: Interrupt,
    /// Only plan and describe: change nothing.
    dry_run: bool,
    /// Asked once the plan is known, before anything changes; an Err stops the run.
    confirm: &'a dyn Fn(&Plan) -> Result<()>,
}

/// What preflight learned about this node.
struct LocalState {
    dataset_exists: bool,
    control: Option<ControlData>,
    running: bool,
    /// The resume token an interrupted resumable receive left on the dataset.
    partial: Option<ResumeToken>,
    /// That receive was a full one: the dataset holds no snapshot, nothing mountable.
    partial_full: bool,
}

/// Continuing the partial receive of an interrupted run instead of starting afresh.
struct Resumed {
    token: ResumeToken,
    plan: Plan,
    /// The cut of that run, read back from its snapshot's properties.
    cut: crate::cut::Cut,
}

impl Reseed<'_> {
    fn execute(&self) -> Result<Outcome> {
        let mut steps = Steps::default();
        let local = self.ctx.local.clone();
        if let Some(from) = &self.request.from {
            // A typo in --from is a usage error, reported before anything is inspected.
            self.ctx
                .config
                .node(from)
                .map_err(|e| e.context("--from"))?;
        }
        // zfs(8), or libzfs_core where it is compiled in and /dev/zfs opens (zfs_backend).
        let local_backend = self.ctx.local_zfs()?;
        let local_zfs: &dyn Zfs = &*local_backend;
        let pgctl = self.ctx.pgctl()?;

        // 1. Preflight: every refusal happens here, before anything changes.
        let (mut state, source, mut primary, remote_zfs, source_tree, local_snaps) =
            steps.run("preflight", || {
                let state = self.inspect_local(&local, local_zfs, &pgctl)?;
                let (source, mut primary) =
                    find_primary(&self.ctx.config, &local, self.request.from.as_deref())?;
                self.check_compatible(&local, &state, &pgctl, &mut primary)?;
                let remote_zfs = self.ctx.remote_zfs(&source)?;
                // What the source's zfs can do is wanted later (the cut's record, the
                // stream's flags): asked now, it is answered while the tree is listed.
                remote_zfs.ask_features_ahead();
                // One question for the source's whole tree: its snapshots, children
                // and mountpoints (the datasets step below reads the rest of it).
                let Some(source_tree) = remote_zfs.survey(&source.dataset)? else {
                    return Err(Error::failed(format!(
                        "dataset {} does not exist on {}",
                        source.dataset, source.name
                    )));
                };
                if local.reseed.cut == CutMode::Atomic {
                    let layout = ClusterLayout {
                        dataset: source.dataset.clone(),
                        mountpoint: source_tree.mountpoint(&source.dataset),
                        tablespaces: primary.tablespace_locations()?,
                    };
                    crate::cut::atomic_snapshot_covers(&layout).map_err(|why| {
                        Error::refused(format!(
                            "cut = \"atomic\" needs every part of the cluster in one atomic snapshot: {why}. \
                             Use cut = \"backup\" for {}",
                            local.name
                        ))
                    })?;
                }
                let local_snaps = if state.dataset_exists {
                    Some(local_zfs.snapshots(&local.dataset)?)
                } else {
                    None
                };
                Ok((
                    state,
                    source,
                    primary,
                    remote_zfs,
                    source_tree,
                    local_snaps,
                ))
            })?;
        let remote_snaps = source_tree.snapshots(&source.dataset);
        // The cluster's other datasets: children of the source's dataset, tablespaces.
        let (source_cluster, others) = steps.run("datasets", || {
            // The preflight's survey already knows the source's children: what is left
            // to ask is this node's side and the tablespaces.
            let cluster =
                ClusterDatasets::new(&source.dataset, &source_tree.children, &source.tablespaces)?;
            let others = tree_sides(
                &cluster,
                &local,
                &source,
                &source_tree,
                local_zfs,
                &remote_zfs,
            )?;
            Ok((cluster, others))
        })?;
        let multi_snapshot = source_cluster.tablespaces().next().is_some()
            && remote_zfs
                .features()
                .map(|f| f.multi_snapshot)
                .unwrap_or(false);

        // An interrupted resumable receive is continued when it still fits the source;
        // otherwise it is discarded (after the confirmation) and the re-seed starts afresh.
        let (resume, discard) = match &state.partial {
            None => (None, None),
            Some(token) => match self.resumable_partial(
                token,
                &state,
                &local,
                &source,
                local_zfs,
                &remote_zfs,
                &remote_snaps,
                local_snaps.as_deref(),
                &mut primary,
            ) {
                Ok(_) if !others.is_empty() => (
                    None,
                    Some("a cluster of several datasets is copied afresh, not resumed".to_string()),
                ),
                Ok(resumed) => (Some(resumed), None),
                Err(why) => (None, Some(why)),
            },
        };
        // Discarding a partial full receive removes the dataset it was creating.
        let local_snaps = if discard.is_some() && state.partial_full {
            None
        } else {
            local_snaps
        };
        let stamp = crate::timestamp::utc_compact(SystemTime::now());
        let planned_snapshot = SnapName::parse(&format!("pgzfs-{stamp}"))?;
        // The preview (before the cut) and the real plan (after it) differ only in the
        // source's list and the snapshot planned for.
        let plan_against = |source_snapshots: &[Snapshot], snapshot: &SnapName| {
            plan_cluster(
                &PlanInput {
                    source_dataset: &source.dataset,
                    source_snapshots,
                    local_dataset: &local.dataset,
                    local_snapshots: local_snaps.as_deref(),
                    snapshot,
                    full: self.request.full,
                    stamp: &stamp,
                },
                &others,
                &source_cluster,
                multi_snapshot,
                pg_wal_stays_home(&local.reseed),
            )
        };
        let preview = match &resume {
            Some(resumed) => resumed.plan.clone(),
            None => plan_against(&remote_snaps, &planned_snapshot)?,
        };
        if self.request.caller == Caller::MajorUpgrade
            && !self.request.full
            && preview.mode == super::plan::Mode::Full
        {
            return Err(Error::refused(format!(
                "{} shares no snapshot with {} on {}: a re-seed after a major upgrade is incremental from the common base; \
                 use --full to copy everything (the old dataset is renamed aside)",
                local.dataset, source.dataset, source.name
            )));
        }
        let partial_note = match (&resume, &discard) {
            (Some(resumed), _) => format!(
                "\n  resume the interrupted transfer of {} (the cut of that run, no new backup)",
                resumed.cut.snapshot
            ),
            (None, Some(why)) => format!(
                "\n  discard the partial receive on {} ({why})",
                local.dataset
            ),
            (None, None) => String::new(),
        };
        if self.dry_run {
            let estimated_bytes = estimate_cut(&remote_zfs, &preview);
            let text = format!(
                "plan for {} (nothing was changed):\n  source: {} ({}), PostgreSQL {}\n  {}\n  estimated size: {}\n  steps: lock, replication slot{}, {}, \
                 stop local PostgreSQL, {}receive, standby config, start, wait for streaming, hold the new base",
                local.name,
                source.name,
                source.replication_host(),
                primary.major(),
                preview.describe().replace('\n', "\n  ") + &partial_note,
                estimated_bytes.map(human_bytes).unwrap_or_else(|| "unknown (this ZFS cannot estimate incremental streams)".into()),
                if local.reseed.use_slots { format!(" {}", local.reseed.slot_name) } else { " (disabled)".into() },
                match local.reseed.cut {
                    CutMode::Backup => format!("backup start, snapshot {}, backup stop", preview.source_snapshot()),
                    CutMode::Atomic => format!("atomic snapshot {} (crash-consistent: no backup session, no checkpoint)", preview.source_snapshot()),
                },
                if preview.rename_aside.is_some() { "rename aside, " } else { "" },
            );
            return Ok(Outcome::DryRun(DryRun {
                node: local.name.clone(),
                source: source.name.clone(),
                plan: preview,
                estimated_bytes,
                text,
            }));
        }
        (self.confirm)(&preview)?;
        self.interrupt.check()?;
        // ssh_data_path and ssh_compress may give the stream (only) its own transport;
        // every other remote command stays on the libssh2 session. Made now, so that an
        // ssh(1) connection is opened while the locks are taken and the cut is made.
        let own_stream_transport = self.ctx.stream_zfs(&source, &remote_zfs);
        let stream_zfs: &dyn Zfs = own_stream_transport.as_deref().unwrap_or(&remote_zfs);

        // 2. Locks: one operation per node, one re-seed per primary.
        let _local_lock = steps.run("lock", || {
            let lock = LocalLock::acquire(&local.lock_file, local.lock_timeout, "reset-secondary")?;
            // The preflight ran before this lock (and before the confirmation): a
            // promotion may have finished in between. Ask again now that no other pgzfs
            // run can change this node, and refuse if the answer changed.
            let now = self.inspect_local(&local, local_zfs, &pgctl)?;
            if now.running != state.running {
                return Err(Error::refused(format!(
                    "PostgreSQL on this node ({}) was {} while reset-secondary waited for its lock; \
                     nothing was changed. Look at what started or stopped it, then run reset-secondary again",
                    local.name,
                    if now.running { "started" } else { "stopped" }
                )));
            }
            // And the other end: a source demoted (or gone) meanwhile is no primary to
            // copy from.
            source_still_primary(primary.is_in_recovery().map_err(|e| e.to_string()), &source.name)?;
            Ok(lock)
        })?;
        if let Some(why) = &discard {
            tracing::warn!(
                "discarding the partial receive on {} ({why}); starting afresh",
                local.dataset
            );
            local_zfs.abort_resumable(&local.dataset)?;
            state.dataset_exists = local_zfs.exists(&local.dataset)?;
        }
        steps.run("primary lock", || {
            wait_for_advisory_lock(&mut primary, local.lock_timeout, &self.interrupt)
        })?;

        // 3. Slot before snapshot: from now on the primary keeps the WAL we will need.
        if local.reseed.use_slots {
            let slot = local.reseed.slot_name.clone();
            let what = steps.run("slot", || primary.ensure_physical_slot(&slot))?;
            tracing::info!("replication slot {slot} on {}: {what}", source.name);
        }
        self.interrupt.check()?;

        // 4. The cut: one atomic snapshot (cut = "atomic"), or the backup-safe cut, all in
        //    one session on the primary: held by this process, or by the source's own
        //    pgzfs (backup_via).
        // The names already taken, from the preflight (the tablespaces' from their own
        // list): no round trip to pick a free one. A cut taken since under the same name
        // makes the cut read them afresh.
        let names_taken: Vec<Snapshot> = remote_snaps
            .iter()
            .chain(
                others
                    .iter()
                    .filter(|o| matches!(o.role, MemberRole::Tablespace { .. }))
                    .flat_map(|o| &o.source_snapshots),
            )
            .cloned()
            .collect();
        let cut = match (&resume, local.reseed.backup_via) {
            (None, _) if local.reseed.cut == CutMode::Atomic => crate::cut::take_atomic(
                &mut steps,
                &mut primary,
                &remote_zfs,
                &source.dataset,
                &planned_snapshot,
                &source.name,
                Some(&names_taken),
            )?,
            (Some(resumed), _) => {
                tracing::info!(
                    "resuming the transfer of {}, cut by the interrupted run",
                    resumed.cut.snapshot
                );
                resumed.cut.clone()
            }
            (None, BackupVia::Postgres) => crate::cut::take(
                &mut steps,
                &mut primary,
                &remote_zfs,
                &source_cluster,
                &planned_snapshot,
                &format!("pgzfs {}", local.name),
                &source.name,
                Some(&names_taken),
            )?,
            (None, BackupVia::Ssh) => crate::cut::take_on_source(
                &mut steps,
                remote_zfs.runner(),
                &local.ssh.pgzfs_bin,
                &self.ctx.config.path,
                &source.name,
                &source.dataset,
                &local.name,
            )?,
        };
        let snapshot_name = cut.snapshot.snap().clone();
        let new_snapshot = cut.snapshot.clone();
        let (start_lsn, stop, timeline) = (cut.start_lsn.clone(), cut.stop.clone(), cut.timeline);

        // 5. The real plan, against the snapshot that now exists.
        // The source's list read here also tells the holds which old bases are held.
        let (the_plan, source_snaps_after_cut) = match &resume {
            Some(resumed) => (resumed.plan.clone(), None),
            None => {
                let source_snaps = remote_zfs.snapshots(&source.dataset)?;
                let planned = plan_against(&source_snaps, &snapshot_name)?;
                (planned, Some(source_snaps))
            }
        };
        // Each tablespace where this node keeps it; refused before anything is received
        // when the backup names a tablespace the config does not.
        let spcmapfile =
            map_tablespace_map(&stop.spcmapfile, &source.tablespaces, &local.tablespaces)?;
        tracing::info!("plan: {}", the_plan.describe());
        let estimate = estimate(&remote_zfs, &the_plan, Some(&new_snapshot));

        // 6. Receive.
        self.interrupt.check()?;
        let was_running = state.running;
        steps.run("postgres stop", || {
            // Data the receive rolls back needs no clean shutdown; data renamed aside and
            // kept gets one.
            let stopped = if the_plan.rename_aside.is_some() {
                pgctl.stop(local.pg.stop_timeout)
            } else {
                pgctl.stop_for_replacement()
            };
            stopped.map(|how| tracing::info!("local PostgreSQL: {how}"))
        })?;
        let moved = steps.run("send/receive", || {
            self.receive(
                &local,
                &source,
                local_zfs,
                &remote_zfs,
                stream_zfs,
                &the_plan,
                state.dataset_exists,
                resume.as_ref().map(|r| &r.token),
                estimate,
            )
        });
        let transferred = match moved {
            Ok(t) => t,
            Err(e) => {
                // When in doubt (zfs not answering), assume the worst: received.
                let received = match local_zfs.exists(&local.dataset) {
                    Ok(false) => false,
                    Ok(true) => local_zfs
                        .snapshots(&local.dataset)
                        .map(|snaps| snaps.iter().any(|s| s.name.snap() == &snapshot_name))
                        .unwrap_or(true),
                    Err(_) => true,
                };
                if received {
                    // The new data is in place but not yet a standby: starting it now would
                    // start a copy of the primary. Leave it stopped; a rerun finishes the job.
                    return Err(e.context(format!(
                        "{} was received but not yet configured as a standby; PostgreSQL stays stopped. Run reset-secondary again",
                        snapshot_name
                    )));
                }
                if received_marker_present(&local.data_dir) {
                    // Taken back to a base an earlier run received (a tree whose member
                    // failed): a copy of the primary, not a standby. Starting it would
                    // start a second primary; the rerun goes on from it.
                    return Err(e.context(
                        "the data directory is back at the common base, a received copy not yet \
                         configured as a standby; PostgreSQL stays stopped. Run reset-secondary again",
                    ));
                }
                // (After a kept partial full receive there is no data directory to start.)
                let has_data = matches!(control::read_control(&local.data_dir), Ok(Some(_)));
                if was_running && has_data {
                    // The dataset is back at its last good state: bring the old standby back
                    // too, so a failed re-seed costs nothing but the time it took.
                    if let Err(start_err) = pgctl.start(local.pg.streaming_timeout) {
                        tracing::warn!("could not restart the previous PostgreSQL: {start_err}");
                    }
                }
                return Err(e);
            }
        };

        // 7. Make it a standby.
        steps.run("standby config", || {
            let mut setup = standby_setup(&self.ctx.config, &local, &source, primary.major());
            setup.labelfile = stop.labelfile.clone();
            setup.spcmapfile = spcmapfile.clone();
            warn_if_walreceiver_cannot_read(setup.passfile.as_deref(), &local.pg.pg_os_user);
            make_standby(&local.data_dir, &setup)
        })?;

        // 8. Start and wait for streaming, and meanwhile protect the new base on both
        //    sides, release the old one and trim the standby. The holds are ZFS calls
        //    (each a round trip, over SSH to the source, and on zfs-fuse each a txg
        //    commit) that need nothing from the server, and the received cut is the
        //    common base from now on whether or not the server comes up, so they need
        //    not wait for it, nor it for them: at small scales they take longer than
        //    the start and the catch-up together.
        let start_timeout = local.pg.streaming_timeout;
        let interrupt = &self.interrupt;
        let primary_session = &mut primary;
        let local_node = &local;
        let (started, held) = std::thread::scope(|scope| {
            tracing::info!("postgres start ...");
            let starting = scope.spawn(move || {
                let began = std::time::Instant::now();
                let start = pgctl.start(start_timeout);
                let start_took = began.elapsed();
                let caught_up = start.is_ok().then(|| {
                    tracing::info!("catch-up ...");
                    let began = std::time::Instant::now();
                    let result = wait_for_streaming(local_node, primary_session, interrupt);
                    (result, began.elapsed())
                });
                (start, start_took, caught_up)
            });
            let held = steps.run("holds", || {
                // The same cut on every dataset of the cluster, the dataset itself last.
                // A member's list comes from before the cut (the preflight's survey, or
                // the tablespace's own): only this node, under its lock, puts its tag on
                // a snapshot or takes it off, so what it may release is known from then.
                let mut bases: Vec<NewBase> = the_plan
                    .members
                    .iter()
                    .map(|member| NewBase {
                        source_dataset: &member.source_dataset,
                        local_dataset: &member.local_dataset,
                        known: SourceKnown {
                            snapshots: others
                                .iter()
                                .find(|o| o.source_dataset == member.source_dataset)
                                .map(|o| o.source_snapshots.as_slice()),
                            only_received: member.is_incremental(),
                        },
                    })
                    .collect();
                bases.push(NewBase {
                    source_dataset: &source.dataset,
                    local_dataset: &local.dataset,
                    known: SourceKnown {
                        snapshots: source_snaps_after_cut.as_deref(),
                        only_received: the_plan.is_incremental(),
                    },
                });
                protect_new_bases(&local, local_zfs, &remote_zfs, &bases, &snapshot_name)?;
                match &the_plan.pg_wal_not_sent {
                    Some(wal) => super::protect::release_unsent(
                        &local,
                        local_zfs,
                        &remote_zfs,
                        &wal.source_dataset,
                        &wal.local_dataset,
                    ),
                    None => Ok(()),
                }
            });
            (starting.join(), held)
        });
        let (start_result, start_took, caught_up) = started.map_err(|_| {
            Error::failed("starting PostgreSQL: the thread that ran pg_ctl panicked")
        })?;
        steps.record_outcome("postgres start", start_took, &start_result);
        start_result?;
        let (replication, catch_up_took) = caught_up.expect("the catch-up follows a start");
        steps.record_outcome("catch-up", catch_up_took, &replication);
        held?;
        let replication = replication?;
        let _ = primary_unlock(&mut primary);

        let total = steps.total();
        let secs = transferred.elapsed.as_secs_f64();
        Ok(Outcome::Done(Summary {
            node: local.name.clone(),
            source: source.name.clone(),
            mode: if the_plan.is_incremental() {
                "incremental"
            } else {
                "full"
            },
            resumed: resume.is_some(),
            snapshot: the_plan.source_snapshot().to_string(),
            base: the_plan.base_snapshot().map(|b| b.to_string()),
            renamed_aside: the_plan.rename_aside.as_ref().map(|d| d.to_string()),
            bytes: transferred.bytes,
            seconds: round(total.as_secs_f64()),
            transfer_seconds: round(secs),
            throughput_bytes_per_second: if secs > 0.0 {
                (transferred.bytes as f64 / secs) as u64
            } else {
                transferred.bytes
            },
            steps: steps.in_order().into_iter().collect(),
            start_lsn,
            stop_lsn: stop.stop_lsn,
            timeline,
            slot: local
                .reseed
                .use_slots
                .then(|| local.reseed.slot_name.clone()),
            replication_state: replication.state,
            lag_bytes: replication.replay_lag_bytes,
            step_order: steps.in_order(),
        }))
    }

    /// Learn what this node holds, and refuse to touch a primary.
    fn inspect_local(&self, local: &Node, zfs: &dyn Zfs, pgctl: &PgCtl) -> Result<LocalState> {
        let dataset_exists = zfs.exists(&local.dataset)?;
        // A resumable receive that was interrupted leaves a token. After a full receive the
        // dataset has no snapshot and nothing to mount or read yet.
        let partial = if dataset_exists && zfs.features_for(&local.dataset)?.resumable_receive {
            zfs.resume_token(&local.dataset)?
        } else {
            None
        };
        let partial_full = partial.is_some() && zfs.snapshots(&local.dataset)?.is_empty();
        if partial_full {
            tracing::info!(
                "{} holds the first part of an interrupted full receive",
                local.dataset
            );
        } else if dataset_exists && !zfs.is_mounted(&local.dataset)? {
            // Left unmounted by an interrupted run: mount it to read its pg_control. This
            // restores the normal state and changes no data.
            tracing::info!("mounting {} to inspect it", local.dataset);
            zfs.mount(&local.dataset)?;
        }
        let control = if partial_full {
            None
        } else {
            control::read_control(&local.data_dir)?
        };
        // failover::role's one answer, with pg_control as read above.
        let role = local_role_reading(&RealPostgres, pgctl, local, &|| Ok(control))?;
        let running = !matches!(role, Role::Stopped(_));
        let server = match role {
            Role::Standby => LocalServer::Answered {
                in_recovery: true,
                writable: false,
            },
            Role::Primary => LocalServer::Answered {
                in_recovery: false,
                writable: true,
            },
            Role::FencedPrimary => LocalServer::Answered {
                in_recovery: false,
                writable: false,
            },
            Role::Unanswered(data, e) => {
                tracing::warn!("cannot ask the local PostgreSQL whether it is a standby: {e}");
                LocalServer::Unanswered {
                    last_state_was_primary: data.last_state_was_primary(),
                }
            }
            Role::Stopped(data) => {
                let unfinished_reseed =
                    control.is_some() && received_marker_present(&local.data_dir);
                if unfinished_reseed {
                    tracing::info!(
                        "{} holds a received copy that an interrupted run did not finish configuring",
                        local.data_dir.display()
                    );
                }
                LocalServer::Stopped {
                    last_state_was_primary: data.last_state_was_primary(),
                    unfinished_reseed,
                }
            }
        };
        if let Some(refusal) = refusal(&server, self.request.full, self.request.caller) {
            return Err(Error::refused(refusal.explain(local, control)));
        }
        Ok(LocalState {
            dataset_exists,
            control,
            running,
            partial,
            partial_full,
        })
    }

    fn check_compatible(
        &self,
        local: &Node,
        state: &LocalState,
        pgctl: &PgCtl,
        primary: &mut Pg,
    ) -> Result<()> {
        let primary_major = primary.major();
        let binary_major = pgctl.binary_major()?;
        if binary_major != primary_major {
            return Err(Error::refused(format!(
                "the primary runs PostgreSQL {primary_major} but this node's binaries ({}) are {binary_major}",
                local.pg.pg_bin.display()
            )));
        }
        // After `pgzfs upgrade` the primary runs the new major with a new system
        // identifier; a standby's older copy of the same lineage is replaced from the
        // common base (checked with the plan: no common base, no major-upgrade re-seed).
        let upgrading = self.request.caller == Caller::MajorUpgrade;
        if let Some(data_major) = control::read_major(&local.data_dir)? {
            if upgrading && data_major > primary_major {
                return Err(Error::refused(format!(
                    "the local data directory is PostgreSQL {data_major}, newer than the primary's {primary_major}: not a major upgrade"
                )));
            }
            if data_major != primary_major && !self.request.full && !upgrading {
                return Err(Error::refused(format!(
                    "the local data directory is PostgreSQL {data_major}, the primary {primary_major}; use --full to replace it (the old dataset is kept)"
                )));
            }
        }
        if let Some(control) = state.control {
            let primary_id = primary.system_identifier()?;
            if control.system_identifier != primary_id && !self.request.full && !upgrading {
                return Err(Error::refused(format!(
                    "the local data directory belongs to another cluster (system identifier {} vs the primary's {primary_id}); \
                     use --full to replace it (the old dataset is renamed aside, not destroyed)",
                    control.system_identifier
                )));
            }
        }
        Ok(())
    }

    /// Stop using the old data, receive the new, and leave the dataset mounted at its
    /// mountpoint. On failure the dataset is left at its last good state, mounted.
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &self,
        local: &Node,
        source: &Node,
        local_zfs: &dyn Zfs,
        remote_zfs: &dyn Zfs,
        stream_zfs: &dyn Zfs,
        plan: &Plan,
        dataset_exists: bool,
        resume: Option<&ResumeToken>,
        estimate: Option<u64>,
    ) -> Result<transfer::Transferred> {
        let dataset = &local.dataset;
        // Where both ends can (never on zfs-fuse), receive with -s: an interrupted
        // transfer keeps what arrived, and the next run continues from the token.
        let resumable = local_zfs.features_for(dataset)?.resumable_receive
            && remote_zfs.features_for(&plan.source_dataset)?.send_resume;
        // -L -e -c (or -w for an encrypted dataset) where both ends have them; plain
        // sends on zfs-fuse.
        let options = SendOptions::choose(
            &remote_zfs.features_for(&plan.source_dataset)?,
            &local_zfs.features_for(dataset).unwrap_or_default(),
            remote_zfs.is_encrypted(&plan.source_dataset)?,
        );
        if let Some(limit) = local.reseed.bwlimit {
            tracing::info!("receiving at most {}/s (bwlimit)", human_bytes(limit.get()));
        }
        let replacement = Replacement {
            dataset,
            exists: dataset_exists,
            rename_aside: plan.rename_aside.as_ref(),
            newer_than_base: &plan.rolled_back,
            incremental: plan.is_incremental(),
            resumable,
            resume,
        };
        // Children first, deepest first (a parent with a mounted child is busy), and the
        // tablespaces: zfs-fuse serves stale data after receiving into a mounted dataset.
        super::tree_receive::unmount_cluster(local_zfs, dataset, dataset_exists, &plan.members)?;
        super::tree_receive::rename_aside(local_zfs, &plan.members)?;
        let replaced = local_zfs.receive_replacing(
            &replacement,
            &self.interrupt,
            // The stream alone may take another transport (ssh_data_path); a token
            // carries the send flags of the interrupted transfer.
            |token| match token {
                Some(token) => stream_zfs.send_resume(token),
                None => stream_zfs.send_with(
                    &plan.source_snapshot(),
                    plan.base_snapshot().as_ref(),
                    &options,
                ),
            },
            |source, sink| self.copy_stream(local, source, sink, estimate),
        );
        let Replaced {
            transferred: mut moved,
            old_mountpoint,
        } = match replaced {
            Ok(replaced) => replaced,
            Err(NotReplaced { error, kept }) => {
                if let Err(e) = super::tree_receive::restore_after_failure(local_zfs, &plan.members)
                {
                    tracing::warn!("could not restore every child and tablespace: {e}");
                }
                super::tree_receive::mount_own_pg_wal_again(
                    local_zfs,
                    plan.pg_wal_not_sent.as_ref(),
                );
                return Err(match kept {
                    Kept::Nothing => error,
                    Kept::PartialFull => error.context(format!(
                        "the partial full receive into {dataset} is kept{}; run reset-secondary again to resume it",
                        plan.rename_aside
                            .as_ref()
                            .map(|aside| format!(" and the previous dataset stays as {aside}"))
                            .unwrap_or_default()
                    )),
                    Kept::PartialIncremental => error.context(format!(
                        "the partial receive into {dataset} is kept; run reset-secondary again to resume it"
                    )),
                });
            }
        };
        if !plan.is_incremental() {
            super::tree_receive::copy_tuning(remote_zfs, local_zfs, &plan.source_dataset, dataset);
        }
        // Then every child (parents first) and tablespace, from the same cut.
        let members = self.receive_members(local, local_zfs, remote_zfs, stream_zfs, plan);
        match members {
            Ok(more) => {
                moved.bytes += more.bytes;
                moved.elapsed += more.elapsed;
            }
            Err((e, received)) => {
                // All or nothing: every dataset this run received goes back to its last
                // good state, so that a plain rerun finds the same base everywhere.
                tracing::error!("receiving the children and tablespaces failed: {e}");
                let steps = super::tree_receive::undo_steps(plan, dataset_exists, received);
                let left =
                    super::tree_receive::undo_received(local_zfs, dataset, &plan.members, &steps);
                super::tree_receive::mount_own_pg_wal_again(
                    local_zfs,
                    plan.pg_wal_not_sent.as_ref(),
                );
                let rolled_back = steps.iter().any(|s| {
                    matches!(s, super::tree_receive::Undo::RollBack { dataset: d, .. } if d == dataset)
                });
                if rolled_back && left.is_empty() {
                    // The base is the copy an earlier run received, before it was made a
                    // standby: it must not count as a primary's data (the rerun goes on
                    // from it, and nothing starts it as it is).
                    if let Err(e) = mark_received(&local.data_dir) {
                        tracing::warn!("{e}");
                    }
                }
                return Err(if left.is_empty() {
                    e.context(format!(
                        "not every child and tablespace of {dataset} could be received; every dataset \
                         this run received is back at its last good state: remove the cause and run \
                         reset-secondary again"
                    ))
                } else {
                    e.context(format!(
                        "not every child and tablespace of {dataset} could be received, and not \
                         everything received could be taken back: {}. Run reset-secondary --full to \
                         copy the cluster again",
                        left.join("; ")
                    ))
                });
            }
        }
        let transferred = moved;
        let same_layout_as_source = || {
            let source_mountpoint = remote_zfs.mountpoint(&source.dataset).ok().flatten()?;
            mountpoint_for(&local.data_dir, &source.data_dir, &source_mountpoint)
        };
        let wanted = local
            .mountpoint
            .clone()
            .or(old_mountpoint)
            .or_else(same_layout_as_source)
            .unwrap_or_else(|| local.data_dir.clone());
        local_zfs.mount_at(dataset, &wanted)?;
        // Parents before children, at the places the plan names.
        super::tree_receive::mount_members(local_zfs, &wanted, &plan.members)?;
        if !local.data_dir.starts_with(&wanted) {
            return Err(Error::usage(format!(
                "data_dir {} is not below the dataset's mountpoint {}",
                local.data_dir.display(),
                wanted.display()
            )));
        }
        // The copied lock file names the primary's postmaster; nothing may act on it here.
        // Through the directory's handle: every name in it came from the primary, where
        // the PostgreSQL user could have made it a link.
        let data_dir = Dir::open(&local.data_dir)?;
        for leftover in ["postmaster.pid", "postmaster.opts"] {
            data_dir.remove(leftover)?;
        }
        drop(data_dir);
        // Until make_standby is done, this copy of a primary must not count as one.
        mark_received(&local.data_dir)?;
        if let Some(wal) = &plan.pg_wal_not_sent {
            super::tree_receive::make_own_pg_wal(
                local_zfs,
                remote_zfs,
                &wanted,
                wal,
                &local.data_dir,
            )?;
        }
        Ok(transferred)
    }

    /// Move one stream into a receive, with progress and this node's bandwidth limit.
    fn copy_stream(
        &self,
        local: &Node,
        source: Box<dyn transfer::Source>,
        sink: Box<dyn transfer::Sink>,
        estimate: Option<u64>,
    ) -> Result<transfer::Transferred> {
        let progress = Progress::new(estimate);
        let moved = transfer::copy(
            source,
            sink,
            &progress,
            &self.interrupt,
            local.reseed.bwlimit,
        );
        progress.finish();
        moved
    }

    /// Every child (parents first) and tablespace of the plan, each from the same cut as
    /// the dataset itself, each received like the dataset (rollback of what is newer
    /// than its base, retries of passing failures); not resumable.
    fn receive_members(
        &self,
        local: &Node,
        local_zfs: &dyn Zfs,
        remote_zfs: &dyn Zfs,
        stream_zfs: &dyn Zfs,
        plan: &Plan,
    ) -> std::result::Result<transfer::Transferred, (Error, usize)> {
        let mut moved = transfer::Transferred::default();
        for (received, member) in plan.members.iter().enumerate() {
            let one = self
                .receive_member(local, local_zfs, remote_zfs, stream_zfs, plan, member)
                .map_err(|e| (e, received))?;
            moved.bytes += one.bytes;
            moved.elapsed += one.elapsed;
        }
        Ok(moved)
    }

    /// One member of the plan; on failure ZFS has left it as it was (not resumable).
    fn receive_member(
        &self,
        local: &Node,
        local_zfs: &dyn Zfs,
        remote_zfs: &dyn Zfs,
        stream_zfs: &dyn Zfs,
        plan: &Plan,
        member: &super::tree::MemberPlan,
    ) -> Result<transfer::Transferred> {
        self.interrupt.check()?;
        let options = SendOptions::choose(
            &remote_zfs.features_for(&member.source_dataset)?,
            &local_zfs
                .features_for(&member.local_dataset)
                .unwrap_or_default(),
            remote_zfs.is_encrypted(&member.source_dataset)?,
        );
        tracing::info!("{}", member.describe(&plan.snapshot));
        let replacement = Replacement {
            dataset: &member.local_dataset,
            // Unmounted already, and renamed aside where the plan says so.
            exists: false,
            rename_aside: None,
            newer_than_base: &member.rolled_back,
            incremental: member.is_incremental(),
            resumable: false,
            resume: None,
        };
        let source_snapshot = member.source_snapshot(&plan.snapshot);
        let base = member.base_snapshot();
        let one = local_zfs
            .receive_replacing(
                &replacement,
                &self.interrupt,
                |_| stream_zfs.send_with(&source_snapshot, base.as_ref(), &options),
                |source, sink| self.copy_stream(local, source, sink, None),
            )
            .map_err(|not| not.error)?
            .transferred;
        if !member.is_incremental() {
            super::tree_receive::copy_tuning(
                remote_zfs,
                local_zfs,
                &member.source_dataset,
                &member.local_dataset,
            );
        }
        Ok(one)
    }

    /// Whether the partial receive `token` left on this node can be continued now: it
    /// must still fit the source (see `replicate::resume`), the source must be able to
    /// continue a send, and the cut it belongs to must still start this cluster on the
    /// source's timeline. Err says why not; the partial state is then discarded.
    #[allow(clippy::too_many_arguments)]
    fn resumable_partial(
        &self,
        token: &ResumeToken,
        state: &LocalState,
        local: &Node,
        source: &Node,
        local_zfs: &dyn Zfs,
        remote_zfs: &dyn Zfs,
        remote_snaps: &[Snapshot],
        local_snaps: Option<&[Snapshot]>,
        primary: &mut Pg,
    ) -> std::result::Result<Resumed, String> {
        if self.request.full && !state.partial_full {
            return Err("--full asks for a new copy".to_string());
        }
        let sender = remote_zfs
            .features_for(&source.dataset)
            .map_err(|e| e.to_string())?;
        if !sender.send_resume {
            return Err(format!("zfs on {} cannot continue a send", source.name));
        }
        let info = local_zfs
            .describe_resume_token(token)
            .map_err(|e| e.to_string())?;
        let (plan, target) = crate::replicate::resume(&crate::replicate::ResumeInput {
            source_dataset: &source.dataset,
            source_snapshots: remote_snaps,
            local_dataset: &local.dataset,
            local_snapshots: local_snaps.unwrap_or_default(),
            token: &info,
        })?;
        let cut = crate::cut::Cut::recorded(target)?;
        let system_identifier = primary.system_identifier().map_err(|e| e.to_string())?;
        if cut.system_identifier != system_identifier {
            return Err(format!(
                "{} belongs to another cluster (system identifier {}, the source's {system_identifier})",
                cut.snapshot, cut.system_identifier
            ));
        }
        let timeline = primary.current_timeline().map_err(|e| e.to_string())?;
        if cut.timeline != timeline {
            return Err(format!(
                "{} was cut on timeline {}, the source is on timeline {timeline} now",
                cut.snapshot, cut.timeline
            ));
        }
        Ok(Resumed {
            token: token.clone(),
            plan,
            cut,
        })
    }
}

/// Until this standby streams: its WAL receiver says so, and the primary lists it as
/// streaming (within `streaming_timeout`).
fn wait_for_streaming(
    local: &Node,
    primary: &mut Pg,
    interrupt: &Interrupt,
) -> Result<crate::pg::ReplicationInfo> {
    let deadline = Instant::now() + local.pg.streaming_timeout;
    let target = pg_target(local);
    let mut last;
    loop {
        interrupt.check()?;
        let standby_status = Pg::connect(&target).and_then(|mut pg| pg.wal_receiver_status());
        match standby_status {
            Ok(Some(status)) if status == "streaming" => {
                if let Some(info) = primary.replication_info(&local.name)? {
                    if info.state == "streaming" {
                        return Ok(info);
                    }
                    last = format!("the primary sees {} in state {}", local.name, info.state);
                } else {
                    last = format!(
                        "the primary does not list {} in pg_stat_replication yet",
                        local.name
                    );
                }
            }
            Ok(Some(status)) => last = format!("WAL receiver status {status}"),
            Ok(None) => last = "no WAL receiver yet".into(),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(format!(
                    "the standby did not start streaming within {:?} (streaming_timeout): {last}. Check {}",
                    local.pg.streaming_timeout,
                    local.pg.pg_log_file.display()
                )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// This node's PostgreSQL as the preflight found it, as plain values: what the safety
/// decision rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalServer {
    /// Not running. `last_state_was_primary`: what its control file says (None: no data
    /// directory); `unfinished_reseed`: our own "received, not configured" marker is there.
    Stopped {
        last_state_was_primary: Option<bool>,
        unfinished_reseed: bool,
    },
    /// Running, and it answered.
    Answered { in_recovery: bool, writable: bool },
    /// Running, but it could not be asked.
    Unanswered {
        last_state_was_primary: Option<bool>,
    },
}

/// Why a re-seed must not touch this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    RunningPrimary,
    RunningAndUnknown,
    DataOfAFormerPrimary,
}

/// The preflight's safety decision. A running server is re-seeded only when it says it
/// is a standby (or, for rejoin, a primary fenced read-only, whose diverged writes rejoin
/// has kept); one that cannot be asked only when its control file says it was in
/// recovery. Stopped data last used by a primary is overwritten only by rejoin (which
/// kept its writes), with --full (which renames it aside), or when it is our own copy
/// that an interrupted run left unconfigured.
fn refusal(server: &LocalServer, full: bool, caller: Caller) -> Option<Refusal> {
    match *server {
        LocalServer::Answered {
            in_recovery: true, ..
        } => None,
        LocalServer::Answered {
            writable: false, ..
        } if caller == Caller::Rejoin => None,
        LocalServer::Answered { .. } => Some(Refusal::RunningPrimary),
        LocalServer::Unanswered {
            last_state_was_primary: Some(false),
        } => None,
        LocalServer::Unanswered { .. } => Some(Refusal::RunningAndUnknown),
        LocalServer::Stopped {
            last_state_was_primary: Some(true),
            unfinished_reseed: false,
        } if !full && caller != Caller::Rejoin => Some(Refusal::DataOfAFormerPrimary),
        LocalServer::Stopped { .. } => None,
    }
}

impl Refusal {
    fn explain(self, local: &Node, control: Option<ControlData>) -> String {
        match self {
            Refusal::RunningPrimary => format!(
                "PostgreSQL on this node ({}) is running as a primary (not in recovery); refusing to reset it. \
                 Run reset-secondary on a standby, or demote this node first",
                local.name
            ),
            Refusal::RunningAndUnknown => format!(
                "PostgreSQL on this node ({}) is running and could not be asked whether it is a standby; \
                 its control file does not say it is in recovery, so it may be a primary: refusing",
                local.name
            ),
            Refusal::DataOfAFormerPrimary => format!(
                "the data directory {} was last used by a primary (state {:?}); re-seeding it would discard writes \
                 that may exist nowhere else. Use `pgzfs rejoin` to keep them, or --full to rename the dataset aside",
                local.data_dir.display(),
                control.map(|c| c.state)
            ),
        }
    }
}

/// Whether an interrupted run of ours left its "received, not yet configured" marker.
/// Only a regular file that root (pgzfs) wrote counts: the PostgreSQL user cannot make
/// one, so it cannot plant the marker on a primary to get that primary's writes
/// overwritten as an "unfinished re-seed".
fn received_marker_present(data_dir: &Path) -> bool {
    let Ok(dir) = Dir::open(data_dir) else {
        return false;
    };
    let me = nix::unistd::geteuid().as_raw();
    matches!(
        dir.lstat(RECEIVED_NOT_CONFIGURED),
        Ok(Some(stat)) if stat.st_mode & libc::S_IFMT == libc::S_IFREG
            && (stat.st_uid == 0 || stat.st_uid == me)
    )
}

/// Whether the source still answers as a primary once the lock is held: only a positive
/// answer lets the re-seed go on.
fn source_still_primary(
    in_recovery: std::result::Result<bool, String>,
    source: &str,
) -> Result<()> {
    match in_recovery {
        Ok(false) => Ok(()),
        Ok(true) => Err(Error::refused(format!(
            "the source {source} is in recovery now, no longer a primary; nothing was changed"
        ))),
        Err(why) => Err(Error::refused(format!(
            "the source {source} no longer answers ({why}); nothing was changed"
        ))),
    }
}

fn primary_unlock(primary: &mut Pg) -> Result<()> {
    // Closing the session would release it too; unlocking explicitly keeps the log honest.
    primary.advisory_unlock(RESEED_LOCK)
}

fn wait_for_advisory_lock(
    primary: &mut Pg,
    timeout: Duration,
    interrupt: &Interrupt,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if primary.try_advisory_lock(RESEED_LOCK)? {
            return Ok(());
        }
        interrupt.check()?;
        if Instant::now() >= deadline {
            return Err(Error::refused(format!(
                "another standby is being re-seeded from {} (its advisory lock is held); waited {timeout:?} (lock_timeout)",
                primary.target().node
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Where to mount a brand-new copy so that PGDATA lands on `local_data_dir`: the data
/// directory sits at the same place inside the dataset as on the source (the dataset
/// root, or a subdirectory such as `data15`).
fn mountpoint_for(
    local_data_dir: &Path,
    source_data_dir: &Path,
    source_mountpoint: &Path,
) -> Option<PathBuf> {
    let inside = source_data_dir.strip_prefix(source_mountpoint).ok()?;
    if inside.as_os_str().is_empty() {
        return Some(local_data_dir.to_path_buf());
    }
    let mut mountpoint = local_data_dir.to_path_buf();
    for component in inside.components().rev() {
        if mountpoint.file_name() != Some(component.as_os_str()) {
            return None;
        }
        mountpoint.pop();
    }
    Some(mountpoint)
}

/// The standby's WAL receiver reads the password file as the PostgreSQL user, not as
/// the root that runs pgzfs: say so before streaming fails to authenticate for no visible
/// reason.
fn warn_if_walreceiver_cannot_read(passfile: Option<&Path>, os_user: &str) {
    use std::os::unix::fs::MetadataExt;
    let (Some(passfile), Ok(Some(user))) = (passfile, nix::unistd::User::from_name(os_user)) else {
        return;
    };
    if let Ok(meta) = std::fs::metadata(passfile) {
        if meta.uid() != user.uid.as_raw() {
            tracing::warn!(
                "{} belongs to uid {}, not to {os_user}: the standby's WAL receiver (running as {os_user}) \
                 cannot read it if it is mode 0600; give {os_user} its own copy or set pg_passfile",
                passfile.display(),
                meta.uid()
            );
        }
    }
}

/// One member of the source's cluster (not its dataset itself) as both sides hold it.
struct MemberSides {
    role: MemberRole,
    source_dataset: DatasetName,
    source_snapshots: Vec<Snapshot>,
    local_dataset: DatasetName,
    local_snapshots: Option<Vec<Snapshot>>,
    mount: MountAt,
    /// The child mounted at the source's `<data_dir>/pg_wal`.
    holds_pg_wal: bool,
}

/// Both sides of every child and tablespace of the source's cluster, and where each is
/// to be mounted here.
fn tree_sides(
    cluster: &ClusterDatasets,
    local: &Node,
    source: &Node,
    source_tree: &Survey,
    local_zfs: &dyn Zfs,
    remote_zfs: &dyn Zfs,
) -> Result<Vec<MemberSides>> {
    let source_root_mountpoint = source_tree.mountpoint(&source.dataset);
    let mut sides = Vec::new();
    for member in cluster.others() {
        let local_dataset = local_counterpart(member, &local.dataset, &local.tablespaces)?;
        // Every zfs call is a round trip (over SSH, and slow on zfs-fuse): a child's
        // mountpoint and snapshots come from the survey; a tablespace, a dataset of its
        // own, is asked for.
        let (mount, holds_pg_wal, source_snapshots) = match &member.role {
            MemberRole::Root => unreachable!("others() leaves out the root"),
            MemberRole::Child { .. } => {
                let at = source_tree.mountpoint(&member.dataset);
                let holds_pg_wal = at.as_deref() == Some(source.data_dir.join("pg_wal").as_path());
                let mount = match (at, &source_root_mountpoint) {
                    (None, _) => MountAt::Unmounted,
                    (Some(at), Some(root_at)) if at.starts_with(root_at) => MountAt::BelowRoot {
                        relative: at.strip_prefix(root_at).expect("checked").to_path_buf(),
                    },
                    (Some(at), _) => {
                        return Err(Error::refused(format!(
                            "{} on {} is mounted at {}, outside its parent {}'s mountpoint; pgzfs \
                             maps a child's mountpoint only below its parent's. Mount it below, or \
                             make it a separate dataset listed in tablespaces",
                            member.dataset,
                            source.name,
                            at.display(),
                            source.dataset
                        )))
                    }
                };
                (mount, holds_pg_wal, source_tree.snapshots(&member.dataset))
            }
            MemberRole::Tablespace { name } => {
                if !remote_zfs.exists(&member.dataset)? {
                    return Err(Error::failed(format!(
                        "dataset {} (tablespaces) does not exist on {}",
                        member.dataset, source.name
                    )));
                }
                let path = local
                    .tablespaces
                    .iter()
                    .find(|t| &t.name == name)
                    .map(|t| t.mountpoint.clone())
                    .expect("local_counterpart found it");
                (
                    MountAt::Path { path },
                    false,
                    remote_zfs.snapshots(&member.dataset)?,
                )
            }
        };
        let local_snapshots = if local_zfs.exists(&local_dataset)? {
            Some(local_zfs.snapshots(&local_dataset)?)
        } else {
            None
        };
        sides.push(MemberSides {
            role: member.role.clone(),
            source_snapshots,
            source_dataset: member.dataset.clone(),
            local_dataset,
            local_snapshots,
            mount,
            holds_pg_wal,
        });
    }
    Ok(sides)
}

/// The plan of the dataset itself, then of every child and tablespace from the same cut
/// and base, and what the plan says about the cut's atomicity.
fn plan_cluster(
    input: &PlanInput,
    others: &[MemberSides],
    cluster: &ClusterDatasets,
    multi_snapshot: bool,
    pg_wal_stays_home: bool,
) -> Result<Plan> {
    let mut the_plan = plan(input)?;
    // pg_wal's dataset left out of the stream is not a member: it needs no common base,
    // is not received, rolled back or held.
    let (own_wal, sent): (Vec<&MemberSides>, Vec<&MemberSides>) = others
        .iter()
        .partition(|side| pg_wal_stays_home && side.holds_pg_wal);
    the_plan.members = plan_members(&the_plan, &member_inputs(sent), input.stamp)?;
    the_plan.pg_wal_not_sent = own_wal.first().map(|side| OwnPgWal {
        source_dataset: side.source_dataset.clone(),
        local_dataset: side.local_dataset.clone(),
        relative: match &side.mount {
            MountAt::BelowRoot { relative } => relative.clone(),
            _ => unreachable!("holds_pg_wal is a child mounted below the dataset"),
        },
        kept: the_plan.is_incremental() && side.local_snapshots.is_some(),
    });
    the_plan.cut_note = cluster.cut_note(multi_snapshot);
    Ok(the_plan)
}

fn member_inputs<'a>(sides: impl IntoIterator<Item = &'a MemberSides>) -> Vec<MemberInput<'a>> {
    sides
        .into_iter()
        .map(|s| MemberInput {
            role: s.role.clone(),
            source_dataset: &s.source_dataset,
            source_snapshots: &s.source_snapshots,
            local_dataset: &s.local_dataset,
            local_snapshots: s.local_snapshots.as_deref(),
            mount: s.mount.clone(),
        })
        .collect()
}

/// What the whole cut will send: the dataset's stream and every member's (children,
/// tablespaces), before the cut is taken. Unknown if any part of it is.
fn estimate_cut(zfs: &dyn Zfs, plan: &Plan) -> Option<u64> {
    let member = |m: &super::tree::MemberPlan| {
        let object = m.source_dataset.to_string();
        match m.base_snapshot() {
            None => zfs.get_number(&object, "referenced").ok().flatten(),
            Some(base) if zfs.features().ok()?.written_property => zfs
                .get_number(&object, &format!("written@{}", base.snap()))
                .ok()
                .flatten(),
            Some(_) => None,
        }
    };
    sum_if_all_known(
        std::iter::once(estimate(zfs, plan, None)).chain(plan.members.iter().map(member)),
    )
}

/// The sum of the parts, or None when any part is unknown (a total that silently leaves
/// out a child or a tablespace would understate the transfer).
fn sum_if_all_known(parts: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    parts
        .into_iter()
        .try_fold(0u64, |total, part| part.map(|p| total.saturating_add(p)))
}

/// The stream size of the dataset itself when the sending side can tell it without sending.
fn estimate(zfs: &dyn Zfs, plan: &Plan, taken: Option<&SnapshotName>) -> Option<u64> {
    let object = taken
        .map(|s| s.to_string())
        .unwrap_or_else(|| plan.source_dataset.to_string());
    match plan.base_snapshot() {
        None => zfs.get_number(&object, "referenced").ok().flatten(),
        Some(base) if zfs.features().ok()?.written_property => zfs
            .get_number(&object, &format!("written@{}", base.snap()))
            .ok()
            .flatten(),
        Some(_) => None,
    }
}

/// Mark the data directory as a received copy not yet made a standby: until make_standby
/// is done, this copy of a primary must not count as one.
fn mark_received(data_dir: &Path) -> Result<()> {
    Dir::open(data_dir)?
        .write(
            RECEIVED_NOT_CONFIGURED,
            b"received by pgzfs reset-secondary, not yet a standby\n",
            0o600,
            None,
        )
        .map_err(|e| e.context(format!("marking {} as received", data_dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// db2 received cut a of the primary's tree (dataset, pg_wal child, tablespace) and
    /// now re-seeds to cut new.
    fn tree_with_pg_wal(local_wal: Option<Vec<Snapshot>>) -> Vec<MemberSides> {
        use crate::zfs::fake::snap;
        let ds = |s: &str| DatasetName::parse(s).unwrap();
        vec![
            MemberSides {
                role: MemberRole::Child {
                    relative: "wal".into(),
                },
                source_dataset: ds("tank/pgdata/wal"),
                source_snapshots: vec![snap("tank/pgdata/wal@pgzfs-a", 11, 10)],
                local_dataset: ds("backup/db2/wal"),
                local_snapshots: local_wal,
                mount: MountAt::BelowRoot {
                    relative: "data/pg_wal".into(),
                },
                holds_pg_wal: true,
            },
            MemberSides {
                role: MemberRole::Tablespace {
                    name: "fast".into(),
                },
                source_dataset: ds("tank/pgts"),
                source_snapshots: vec![snap("tank/pgts@pgzfs-a", 21, 10)],
                local_dataset: ds("backup/db2ts"),
                local_snapshots: Some(vec![snap("backup/db2ts@pgzfs-a", 21, 5)]),
                mount: MountAt::Path {
                    path: "/db2-ts".into(),
                },
                holds_pg_wal: false,
            },
        ]
    }

    fn plan_tree(others: &[MemberSides], pg_wal_stays_home: bool) -> Result<Plan> {
        use crate::zfs::fake::snap;
        let (source, local) = (
            DatasetName::parse("tank/pgdata").unwrap(),
            DatasetName::parse("backup/db2").unwrap(),
        );
        let new = SnapName::parse("pgzfs-new").unwrap();
        let cluster = ClusterDatasets::new(&source, &[], &[]).unwrap();
        plan_cluster(
            &PlanInput {
                source_dataset: &source,
                source_snapshots: &[snap("tank/pgdata@pgzfs-a", 1, 10)],
                local_dataset: &local,
                local_snapshots: Some(&[snap("backup/db2@pgzfs-a", 1, 5)]),
                snapshot: &new,
                full: false,
                stamp: "T",
            },
            others,
            &cluster,
            false,
            pg_wal_stays_home,
        )
    }

    #[test]
    fn pg_wal_left_home_is_neither_sent_nor_asked_for_a_common_base() {
        use crate::zfs::fake::snap;
        // The standby's pg_wal shares no cut with the primary's (its own since the last
        // re-seed): the plan goes on, incremental, without it.
        let plan = plan_tree(&tree_with_pg_wal(Some(vec![])), true).unwrap();
        assert!(plan.is_incremental());
        assert_eq!(plan.members.len(), 1, "only the tablespace travels");
        assert_eq!(plan.members[0].local_dataset.as_str(), "backup/db2ts");
        let wal = plan.pg_wal_not_sent.as_ref().unwrap();
        assert_eq!(wal.local_dataset.as_str(), "backup/db2/wal");
        assert_eq!(wal.relative, Path::new("data/pg_wal"));
        assert!(wal.kept);
        let text = plan.describe();
        assert!(
            text.contains("pg_wal: tank/pgdata/wal is not sent; backup/db2/wal is emptied"),
            "{text}"
        );
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["pg_wal_not_sent"]["local_dataset"], "backup/db2/wal");
        // A standby that has no pg_wal dataset yet gets one made.
        let plan = plan_tree(&tree_with_pg_wal(None), true).unwrap();
        assert!(!plan.pg_wal_not_sent.unwrap().kept);

        // Sent (send_pg_wal = true, an atomic cut, no slot): pg_wal is a member like the
        // tablespace, and without the common base the plan refuses.
        let err = plan_tree(&tree_with_pg_wal(Some(vec![])), false).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("backup/db2/wal"), "{err}");
        let in_step = Some(vec![snap("backup/db2/wal@pgzfs-a", 11, 5)]);
        let plan = plan_tree(&tree_with_pg_wal(in_step), false).unwrap();
        assert_eq!(plan.members.len(), 2);
        assert!(plan.pg_wal_not_sent.is_none());
    }

    #[test]
    fn pg_wal_stays_home_only_with_a_backup_cut_a_slot_and_send_pg_wal_off() {
        use crate::cut::CutMode;
        let node = |line: &str| {
            let text = format!(
                "cluster = \"pg\"\n[defaults]\ndataset = \"tank/pgdata\"\n\
                 data_dir = \"/var/db/postgres/data15\"\n{line}\n\
                 [[nodes]]\nname = \"db1\"\nhost = \"db1.example.net\"\n"
            );
            let config = crate::config::Config::parse(&text, Path::new("/etc/pgzfs.toml")).unwrap();
            config.node("db1").unwrap().reseed.clone()
        };
        let default = node("");
        assert_eq!(default.cut, CutMode::Backup);
        assert!(pg_wal_stays_home(&default));
        assert!(!pg_wal_stays_home(&node("send_pg_wal = true\n")));
        assert!(!pg_wal_stays_home(&node("cut = \"atomic\"\n")));
        assert!(!pg_wal_stays_home(&node("use_slots = false\n")));
    }

    #[test]
    fn a_cut_estimate_adds_every_member_and_is_unknown_if_one_is() {
        // The dataset, its wal child and a tablespace.
        assert_eq!(
            sum_if_all_known([Some(40 << 20), Some(33 << 20), Some(3 << 20)]),
            Some(76 << 20)
        );
        assert_eq!(sum_if_all_known([Some(40 << 20), None, Some(1)]), None);
        assert_eq!(sum_if_all_known([Some(7)]), Some(7));
    }

    #[test]
    fn a_source_demoted_or_gone_while_the_reseed_waited_stops_it() {
        assert!(source_still_primary(Ok(false), "db1").is_ok());
        for answer in [Ok(true), Err("connection reset".to_string())] {
            let e = source_still_primary(answer, "db1").unwrap_err();
            assert_eq!(e.exit_code(), 3, "{e}");
            assert!(e.to_string().contains("db1"), "{e}");
        }
    }

    #[test]
    fn the_preflight_refuses_every_node_that_is_or_may_be_a_primary() {
        use Caller::{Rejoin, ResetSecondary as Reseed};
        use LocalServer::*;
        let answered = |in_recovery, writable| Answered {
            in_recovery,
            writable,
        };
        let stopped = |was_primary, unfinished_reseed| Stopped {
            last_state_was_primary: was_primary,
            unfinished_reseed,
        };
        let unanswered = |was_primary| Unanswered {
            last_state_was_primary: was_primary,
        };
        // (what the preflight found, --full, who asks) => the verdict
        let rows = [
            (answered(true, false), false, Reseed, None),
            // A standby after its primary's major upgrade is re-seeded like any other;
            // a primary, or data last used by one, is refused just the same.
            (answered(true, false), false, Caller::MajorUpgrade, None),
            (
                answered(false, true),
                false,
                Caller::MajorUpgrade,
                Some(Refusal::RunningPrimary),
            ),
            (
                stopped(Some(true), false),
                false,
                Caller::MajorUpgrade,
                Some(Refusal::DataOfAFormerPrimary),
            ),
            (
                answered(false, true),
                false,
                Reseed,
                Some(Refusal::RunningPrimary),
            ),
            (
                answered(false, true),
                true,
                Reseed,
                Some(Refusal::RunningPrimary),
            ),
            (
                answered(false, true),
                false,
                Rejoin,
                Some(Refusal::RunningPrimary),
            ),
            // A primary fenced read-only: only rejoin, which kept its writes.
            (
                answered(false, false),
                false,
                Reseed,
                Some(Refusal::RunningPrimary),
            ),
            (answered(false, false), false, Rejoin, None),
            // Unknown is not "no": a server that does not answer is a standby only if its
            // control file says so.
            (unanswered(Some(false)), false, Reseed, None),
            (
                unanswered(Some(true)),
                false,
                Reseed,
                Some(Refusal::RunningAndUnknown),
            ),
            (
                unanswered(Some(true)),
                true,
                Rejoin,
                Some(Refusal::RunningAndUnknown),
            ),
            (
                unanswered(None),
                false,
                Reseed,
                Some(Refusal::RunningAndUnknown),
            ),
            (stopped(None, false), false, Reseed, None),
            (stopped(Some(false), false), false, Reseed, None),
            (
                stopped(Some(true), false),
                false,
                Reseed,
                Some(Refusal::DataOfAFormerPrimary),
            ),
            (stopped(Some(true), false), true, Reseed, None),
            (stopped(Some(true), false), false, Rejoin, None),
            (stopped(Some(true), true), false, Reseed, None),
        ];
        for (server, full, caller, verdict) in rows {
            assert_eq!(
                refusal(&server, full, caller),
                verdict,
                "{server:?}, full {full}, {caller:?}"
            );
        }
    }

    #[test]
    fn a_new_copy_is_mounted_so_that_pgdata_sits_where_the_source_keeps_it() {
        let p = |s: &str| PathBuf::from(s);
        // PGDATA at the dataset root on the source: mount the copy at data_dir.
        assert_eq!(
            mountpoint_for(&p("/db/b"), &p("/db/a"), &p("/db/a")),
            Some(p("/db/b"))
        );
        // PGDATA in a subdirectory: mount one level up.
        assert_eq!(
            mountpoint_for(
                &p("/var/db/postgres/data15"),
                &p("/var/db/postgres/data15"),
                &p("/var/db/postgres")
            ),
            Some(p("/var/db/postgres"))
        );
        assert_eq!(
            mountpoint_for(&p("/lab/db2/data"), &p("/lab/db1/data"), &p("/lab/db1")),
            Some(p("/lab/db2"))
        );
        // Layouts that do not match: no guess.
        assert_eq!(
            mountpoint_for(&p("/lab/db2/pgdata"), &p("/lab/db1/data"), &p("/lab/db1")),
            None
        );
        assert_eq!(
            mountpoint_for(&p("/x"), &p("/elsewhere"), &p("/lab/db1")),
            None
        );
    }
}

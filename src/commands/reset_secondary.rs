//! `pgzfs reset-secondary`: re-seed this standby from the primary.
//!
//! The runbook: preflight (refuse anything unsafe, change nothing) → locks → replication
//! slot → backup-safe cut on the primary → plan → receive → make standby → start and
//! verify streaming → protect the new common base.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde::Serialize;

use crate::cli::{Context, Global};
use crate::cluster::{find_primary, pg_target, ssh_target, standby_setup};
use crate::compress::Compressing;
use crate::config::{BackupVia, Node, SshCompress, SshDataPath};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::exec::remote_pgzfs;
use crate::lock::LocalLock;
use crate::pg::control::{self, ControlData};
use crate::pg::ctl::PgCtl;
use crate::pg::standby::{make_standby, RECEIVED_NOT_CONFIGURED};
use crate::pg::{Pg, RESEED_LOCK};
use crate::progress::{human_bytes, Progress};
use crate::replicate::{plan, Plan, PlanInput};
use crate::ssh::SshHost;
use crate::ssh_openssh::OpenSshHost;
use crate::steps::{round, Steps};
use crate::transfer::{self, Interrupt};
use crate::zfs::cli::ZfsCli;
use crate::zfs::features::{ResumeToken, SendOptions};
use crate::zfs::names::{DatasetName, HoldTag, SnapName, SnapshotName};
use crate::zfs::{Snapshot, Zfs};

#[derive(Debug, Args)]
pub struct ResetSecondary {
    /// Re-seed from this node [default: the one primary found among the configured nodes]
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
    /// Copy everything, keeping an existing local dataset renamed aside
    #[arg(long)]
    pub full: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on a terminal
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

impl ResetSecondary {
    pub fn run(&self, global: &Global) -> Result<i32> {
        let ctx = global.load()?;
        let outcome = reseed(&ctx, self, Caller::ResetSecondary);
        report(&ctx, self, outcome, "reset_secondary")
    }
}

/// Who asks for the re-seed. `rejoin` has already kept a former primary's diverged
/// writes, so the refusal to overwrite a former primary's data does not apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    ResetSecondary,
    Rejoin,
}

/// Run the re-seed runbook on this node.
pub fn reseed(ctx: &Context, args: &ResetSecondary, caller: Caller) -> Result<Outcome> {
    reseed_with(ctx, args, caller, Interrupt::install()?)
}

/// `reseed` watching an interrupt flag the caller already has: the daemon installs its
/// SIGTERM handler once, rather than once more for every re-seed it runs.
pub fn reseed_with(
    ctx: &Context,
    args: &ResetSecondary,
    caller: Caller,
    interrupt: Interrupt,
) -> Result<Outcome> {
    let reseed = Reseed {
        args,
        ctx,
        interrupt,
        caller,
    };
    reseed.execute()
}

/// Print the outcome, emit the event, map it to an exit code.
pub fn report(
    ctx: &Context,
    args: &ResetSecondary,
    outcome: Result<Outcome>,
    event: &'static str,
) -> Result<i32> {
    let command = event.replace('_', "-");
    match outcome {
        Ok(Outcome::DryRun(plan)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serializes")
                );
            } else {
                println!("{}", plan.text);
            }
            Ok(0)
        }
        Ok(Outcome::Done(summary)) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).expect("summary serializes")
                );
            } else {
                println!("{}", summary.text());
            }
            let details = format!(
                "{} from {} ({} bytes)",
                summary.mode, summary.snapshot, summary.bytes
            );
            events::emit(
                &ctx.config,
                Event::new(event, &ctx.local.name, true, details, Some(&summary.source)),
            );
            Ok(0)
        }
        Err(e) => {
            events::emit_failure(
                &ctx.config,
                &ctx.local.name,
                &command,
                &e,
                args.from.as_deref(),
            );
            Err(e.context(command))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DryRun {
    node: String,
    source: String,
    #[serde(flatten)]
    plan: Plan,
    estimated_bytes: Option<u64>,
    #[serde(skip)]
    text: String,
}

/// What a finished re-seed reports (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub node: String,
    pub source: String,
    pub mode: &'static str,
    /// The transfer continued the partial receive of an interrupted run.
    pub resumed: bool,
    pub snapshot: String,
    pub base: Option<String>,
    pub renamed_aside: Option<String>,
    pub bytes: u64,
    pub seconds: f64,
    pub transfer_seconds: f64,
    pub throughput_bytes_per_second: u64,
    pub steps: BTreeMap<String, f64>,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub slot: Option<String>,
    pub replication_state: String,
    pub lag_bytes: Option<i64>,
    /// The steps in the order they ran, for the human summary.
    #[serde(skip)]
    pub step_order: Vec<(String, f64)>,
}

impl Summary {
    fn text(&self) -> String {
        let mut out = format!(
            "re-seeded {} from {}: {}{} ({}{}) of {}\n  {} in {:.1}s ({}/s); total {:.1}s\n  replication: {}, lag {}\n",
            self.node,
            self.source,
            self.mode,
            if self.resumed { ", resumed" } else { "" },
            self.snapshot,
            self.base.as_ref().map(|b| format!(" since {b}")).unwrap_or_default(),
            human_bytes(self.bytes),
            human_bytes(self.bytes),
            self.transfer_seconds,
            human_bytes(self.throughput_bytes_per_second),
            self.seconds,
            self.replication_state,
            self.lag_bytes.map(|b| human_bytes(b.max(0) as u64)).unwrap_or_else(|| "unknown".into()),
        );
        if let Some(aside) = &self.renamed_aside {
            out.push_str(&format!("  the previous dataset is kept as {aside}\n"));
        }
        out.push_str("  steps:");
        for (name, secs) in &self.step_order {
            out.push_str(&format!(" {name} {secs:.1}s;"));
        }
        out
    }
}

pub enum Outcome {
    DryRun(DryRun),
    Done(Summary),
}

struct Reseed<'a> {
    args: &'a ResetSecondary,
    ctx: &'a Context,
    interrupt: Interrupt,
    caller: Caller,
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
        if let Some(from) = &self.args.from {
            // A typo in --from is a usage error, reported before anything is inspected.
            self.ctx
                .config
                .node(from)
                .map_err(|e| e.context("--from"))?;
        }
        // zfs(8), or libzfs_core where it is compiled in and /dev/zfs opens (zfs_backend).
        let local_backend = crate::zfs::local_backend(&local)?;
        let local_zfs: &dyn Zfs = &*local_backend;
        let pgctl = PgCtl::for_node(&local)?;

        // 1. Preflight: every refusal happens here, before anything changes.
        let (mut state, source, mut primary, remote_zfs, remote_snaps, local_snaps) = steps.run("preflight", || {
            let state = self.inspect_local(&local, local_zfs, &pgctl)?;
            let (source, mut primary) = find_primary(&self.ctx.config, &local, self.args.from.as_deref())?;
            self.check_compatible(&local, &state, &pgctl, &mut primary)?;
            let ssh = SshHost::connect(&ssh_target(&local, &source))?;
            let remote_zfs = ZfsCli::new(ssh);
            if !remote_zfs.exists(&source.dataset)? {
                return Err(Error::failed(format!("dataset {} does not exist on {}", source.dataset, source.name)));
            }
            let children = remote_zfs.children(&source.dataset)?;
            if !children.is_empty() {
                let names: Vec<String> = children.iter().map(|c| c.to_string()).collect();
                return Err(Error::refused(format!(
                    "{} on {} has child datasets ({}); re-seeding dataset trees is not supported yet, and sending only the top would leave the standby incomplete",
                    source.dataset,
                    source.name,
                    names.join(", ")
                )));
            }
            let remote_snaps = remote_zfs.snapshots(&source.dataset)?;
            let local_snaps = if state.dataset_exists { Some(local_zfs.snapshots(&local.dataset)?) } else { None };
            Ok((state, source, primary, remote_zfs, remote_snaps, local_snaps))
        })?;

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
        let preview = match &resume {
            Some(resumed) => resumed.plan.clone(),
            None => plan(&PlanInput {
                source_dataset: &source.dataset,
                source_snapshots: &remote_snaps,
                local_dataset: &local.dataset,
                local_snapshots: local_snaps.as_deref(),
                snapshot: &planned_snapshot,
                full: self.args.full,
                stamp: &stamp,
            })?,
        };
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
        if self.args.dry_run {
            let estimated_bytes = estimate(&remote_zfs, &preview, None);
            let text = format!(
                "plan for {} (nothing was changed):\n  source: {} ({}), PostgreSQL {}\n  {}\n  estimated size: {}\n  steps: lock, replication slot{}, backup start, snapshot {}, backup stop, \
                 stop local PostgreSQL, {}receive, standby config, start, wait for streaming, hold the new base",
                local.name,
                source.name,
                source.host,
                primary.major(),
                preview.describe().replace('\n', "\n  ") + &partial_note,
                estimated_bytes.map(human_bytes).unwrap_or_else(|| "unknown (this ZFS cannot estimate incremental streams)".into()),
                if local.use_slots { format!(" {}", local.slot_name) } else { " (disabled)".into() },
                preview.source_snapshot(),
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
        self.confirm(&preview)?;
        self.interrupt.check()?;
        if let Some(why) = &discard {
            tracing::warn!(
                "discarding the partial receive on {} ({why}); starting afresh",
                local.dataset
            );
            local_zfs.abort_resumable(&local.dataset)?;
            state.dataset_exists = local_zfs.exists(&local.dataset)?;
        }

        // 2. Locks: one operation per node, one re-seed per primary.
        let _local_lock = steps.run("lock", || {
            let lock = LocalLock::acquire(&local.lock_file, local.lock_timeout, "reset-secondary")?;
            // The preflight ran before the lock (and before the prompt): a promotion that
            // finished in between would make this re-seed stop a new primary and receive
            // over it. Ask both ends again, now that nothing else can run here.
            self.recheck_under_lock(&local, &pgctl, &mut primary, &source.name)?;
            wait_for_advisory_lock(&mut primary, local.lock_timeout, &self.interrupt)?;
            Ok(lock)
        })?;

        // 3. Slot before snapshot: from now on the primary keeps the WAL we will need.
        if local.use_slots {
            let slot = local.slot_name.clone();
            let what = steps.run("slot", || primary.ensure_physical_slot(&slot))?;
            tracing::info!("replication slot {slot} on {}: {what}", source.name);
        }
        self.interrupt.check()?;

        // 4. The backup-safe cut, all in one session on the primary: held by this
        //    process, or by the source's own pgzfs (backup_via).
        let cut = match (&resume, local.backup_via) {
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
                &source.dataset,
                &planned_snapshot,
                &format!("pgzfs {}", local.name),
                &source.name,
            )?,
            (None, BackupVia::Ssh) => crate::cut::take_on_source(
                &mut steps,
                remote_zfs.runner(),
                &local.pgzfs_bin,
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
        let the_plan = match &resume {
            Some(resumed) => resumed.plan.clone(),
            None => plan(&PlanInput {
                source_dataset: &source.dataset,
                source_snapshots: &remote_zfs.snapshots(&source.dataset)?,
                local_dataset: &local.dataset,
                local_snapshots: local_snaps.as_deref(),
                snapshot: &snapshot_name,
                full: self.args.full,
                stamp: &stamp,
            })?,
        };
        tracing::info!("plan: {}", the_plan.describe());
        let estimate = estimate(&remote_zfs, &the_plan, Some(&new_snapshot));

        // 6. Receive.
        self.interrupt.check()?;
        // ssh_data_path: with "openssh" the zfs send stream (only) goes through ssh(1);
        // every other remote command stays on the libssh2 session.
        let openssh_zfs = (local.ssh_data_path == SshDataPath::OpenSsh)
            .then(|| ZfsCli::new(OpenSshHost::new(ssh_target(&local, &source))));
        let stream_zfs: &dyn Zfs = match &openssh_zfs {
            Some(zfs) => zfs,
            None => &remote_zfs,
        };
        // ssh_compress: the source's pgzfs compresses the stream, on either path.
        let compressed_zfs: Option<Box<dyn Zfs + '_>> = match local.ssh_compress {
            SshCompress::None => None,
            SshCompress::Zstd(level) => {
                let remote_pgzfs =
                    remote_pgzfs(&local.pgzfs_bin, &self.ctx.config.path, &source.name);
                tracing::info!("the stream comes zstd-compressed at level {level} (ssh_compress)");
                Some(match &openssh_zfs {
                    Some(zfs) => Box::new(ZfsCli::new(Compressing::new(
                        zfs.runner(),
                        remote_pgzfs,
                        level,
                    ))),
                    None => Box::new(ZfsCli::new(Compressing::new(
                        remote_zfs.runner(),
                        remote_pgzfs,
                        level,
                    ))),
                })
            }
        };
        let stream_zfs = compressed_zfs.as_deref().unwrap_or(stream_zfs);
        let was_running = state.running;
        steps.run("postgres stop", || {
            pgctl
                .stop(local.stop_timeout)
                .map(|how| tracing::info!("local PostgreSQL: {how}"))
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
                // (After a kept partial full receive there is no data directory to start.)
                let has_data = matches!(control::read_control(&local.data_dir), Ok(Some(_)));
                if was_running && has_data {
                    // The dataset is back at its last good state: bring the old standby back
                    // too, so a failed re-seed costs nothing but the time it took.
                    if let Err(start_err) = pgctl.start(local.streaming_timeout) {
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
            setup.spcmapfile = stop.spcmapfile.clone();
            warn_if_walreceiver_cannot_read(setup.passfile.as_deref(), &local.pg_os_user);
            make_standby(&local.data_dir, &setup)
        })?;

        // 8. Start and verify.
        steps.run("postgres start", || pgctl.start(local.streaming_timeout))?;
        let replication =
            steps.run("catch-up", || self.wait_for_streaming(&local, &mut primary))?;

        // 9. Protect the new base on both sides, release the old one, trim the standby.
        steps.run("holds", || {
            protect_new_base(
                &local,
                local_zfs,
                &remote_zfs,
                &source.dataset,
                &snapshot_name,
            )
        })?;
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
            slot: local.use_slots.then(|| local.slot_name.clone()),
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
        let running = pgctl.is_running();
        if running {
            let target = pg_target(local);
            let asked = Pg::connect(&target)
                .and_then(|mut pg| Ok((pg.is_in_recovery()?, pg.is_writable()?)));
            match asked.map(|(in_recovery, writable)| in_recovery || (!writable && self.caller == Caller::Rejoin)) {
                // (A primary fenced read-only may be rejoined: its diverged writes are kept.)
                Ok(false) => {
                    return Err(Error::refused(format!(
                        "PostgreSQL on this node ({}) is running as a primary (not in recovery); refusing to reset it. \
                         Run reset-secondary on a standby, or demote this node first",
                        local.name
                    )))
                }
                Ok(true) => {}
                Err(e) => {
                    // Cannot ask the server; its control file still tells a primary apart.
                    if control.is_none_or(|c| c.state.was_primary()) {
                        return Err(Error::refused(format!(
                            "PostgreSQL on this node ({}) is running and could not be asked whether it is a standby ({e}); \
                             its control file does not say it is in recovery, so it may be a primary: refusing",
                            local.name
                        )));
                    }
                    tracing::warn!("cannot connect to the local standby ({e}); its control file says it is in recovery");
                }
            }
        } else if let Some(c) = control {
            let unfinished_reseed = local.data_dir.join(RECEIVED_NOT_CONFIGURED).exists();
            if unfinished_reseed {
                tracing::info!(
                    "{} holds a received copy that an interrupted run did not finish configuring",
                    local.data_dir.display()
                );
            }
            if c.state.was_primary()
                && !unfinished_reseed
                && !self.args.full
                && self.caller != Caller::Rejoin
            {
                return Err(Error::refused(format!(
                    "the data directory {} was last used by a primary (state {:?}); re-seeding it would discard writes \
                     that may exist nowhere else. Use `pgzfs rejoin` to keep them, or --full to rename the dataset aside",
                    local.data_dir.display(),
                    c.state
                )));
            }
        }
        Ok(LocalState {
            dataset_exists,
            control,
            running,
            partial,
            partial_full,
        })
    }

    /// The role checks of the preflight, asked again under the lock.
    fn recheck_under_lock(
        &self,
        local: &Node,
        pgctl: &PgCtl,
        primary: &mut Pg,
        source: &str,
    ) -> Result<()> {
        let local_answer = if pgctl.is_running() {
            Some(
                Pg::connect(&pg_target(local))
                    .and_then(|mut pg| Ok((pg.is_in_recovery()?, pg.is_writable()?)))
                    .map_err(|e| e.to_string()),
            )
        } else {
            None
        };
        let source_in_recovery = primary.is_in_recovery().map_err(|e| e.to_string());
        still_safe_to_reseed(
            &local_answer,
            &source_in_recovery,
            self.caller,
            &local.name,
            source,
        )
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
                local.pg_bin.display()
            )));
        }
        if let Some(data_major) = control::read_major(&local.data_dir)? {
            if data_major != primary_major && !self.args.full {
                return Err(Error::refused(format!(
                    "the local data directory is PostgreSQL {data_major}, the primary {primary_major}; use --full to replace it (the old dataset is kept)"
                )));
            }
        }
        if let Some(control) = state.control {
            let primary_id = primary.system_identifier()?;
            if control.system_identifier != primary_id && !self.args.full {
                return Err(Error::refused(format!(
                    "the local data directory belongs to another cluster (system identifier {} vs the primary's {primary_id}); \
                     use --full to replace it (the old dataset is renamed aside, not destroyed)",
                    control.system_identifier
                )));
            }
        }
        Ok(())
    }

    fn confirm(&self, plan: &Plan) -> Result<()> {
        if self.args.yes || !std::io::stdin().is_terminal() {
            return Ok(());
        }
        eprint!(
            "{}\nRe-seed {} now? [y/N] ",
            plan.describe(),
            self.ctx.local.name
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| Error::failed(format!("reading the answer: {e}")))?;
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(Error::refused("not confirmed; nothing was changed"))
        }
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
        let old_mountpoint = if dataset_exists {
            local_zfs.mountpoint(dataset)?
        } else {
            None
        };
        if dataset_exists {
            // zfs-fuse serves stale data after receiving into a mounted dataset, and
            // PostgreSQL must not see files change underneath it anyway.
            local_zfs.unmount(dataset)?;
        }
        if let Some(aside) = &plan.rename_aside {
            local_zfs.rename(dataset, aside)?;
            local_zfs.set_canmount_noauto(aside)?;
            tracing::info!("kept the previous dataset as {aside}");
        }
        let result = (|| {
            // Snapshots newer than the base go with the rollback. Destroying them here,
            // rather than leaving it to `recv -F`, works the same on every ZFS (zfs-fuse
            // refuses instead) and names each one in the log.
            for snap in &plan.rolled_back {
                local_zfs.destroy_snapshot(&dataset.snapshot(snap))?;
                tracing::info!("destroyed {dataset}@{snap}, newer than the common base");
            }
            // -L -e -c (or -w for an encrypted dataset) where both ends have them; plain
            // sends on zfs-fuse.
            let options = SendOptions::choose(
                &remote_zfs.features_for(&plan.source_dataset)?,
                &local_zfs.features_for(dataset).unwrap_or_default(),
                remote_zfs.is_encrypted(&plan.source_dataset)?,
            );
            if let Some(limit) = local.bwlimit {
                tracing::info!("receiving at most {}/s (bwlimit)", human_bytes(limit.get()));
            }
            let mut attempt = 1;
            let mut token = resume.cloned();
            loop {
                // The stream alone may take another transport (ssh_data_path).
                let source = match &token {
                    // The token carries the send flags of the interrupted transfer.
                    Some(token) => stream_zfs.send_resume(token)?,
                    None => stream_zfs.send_with(
                        &plan.source_snapshot(),
                        plan.base_snapshot().as_ref(),
                        &options,
                    )?,
                };
                let sink = if resumable {
                    local_zfs.receive_resumable(dataset, plan.is_incremental())?
                } else {
                    local_zfs.receive(dataset, plan.is_incremental())?
                };
                let progress = Progress::new(estimate);
                let moved = transfer::copy(source, sink, &progress, &self.interrupt, local.bwlimit);
                progress.finish();
                match moved {
                    Err(e)
                        if attempt < RECEIVE_ATTEMPTS
                            && is_transient_receive_error(&e)
                            && !self.interrupt.is_set() =>
                    {
                        // The failed receive committed nothing, so sending again is safe; a
                        // resumable one kept what arrived, so continue from there.
                        tracing::warn!("attempt {attempt} of the transfer failed ({e}); retrying");
                        std::thread::sleep(Duration::from_secs(attempt as u64));
                        attempt += 1;
                        if resumable {
                            token = local_zfs.resume_token(dataset)?;
                        }
                    }
                    other => break other,
                }
            }
        })();
        let transferred = match result {
            Ok(transferred) => transferred,
            Err(e) => {
                return Err(self.after_failed_receive(e, local_zfs, dataset, plan, resumable)?)
            }
        };
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
        if local_zfs.mountpoint(dataset)?.as_deref() != Some(wanted.as_path()) {
            local_zfs.set_mountpoint(dataset, &wanted)?;
        }
        local_zfs.mount(dataset)?;
        // The copied lock file names the primary's postmaster; nothing may act on it here.
        for leftover in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(local.data_dir.join(leftover));
        }
        // Until make_standby is done, this copy of a primary must not count as one.
        std::fs::write(
            local.data_dir.join(RECEIVED_NOT_CONFIGURED),
            "received by pgzfs reset-secondary, not yet a standby\n",
        )
        .map_err(|e| {
            Error::failed(format!(
                "cannot mark {} as received: {e}",
                local.data_dir.display()
            ))
        })?;
        if !local.data_dir.starts_with(&wanted) {
            return Err(Error::usage(format!(
                "data_dir {} is not below the dataset's mountpoint {}",
                local.data_dir.display(),
                wanted.display()
            )));
        }
        Ok(transferred)
    }

    /// After a failed transfer: back to the last good state, or, where ZFS kept a partial
    /// receive, leave that for the next run. The error to report, or one met on the way.
    fn after_failed_receive(
        &self,
        e: Error,
        local_zfs: &dyn Zfs,
        dataset: &DatasetName,
        plan: &Plan,
        resumable: bool,
    ) -> Result<Error> {
        let kept = resumable && matches!(local_zfs.resume_token(dataset), Ok(Some(_)));
        if kept && local_zfs.snapshots(dataset).is_ok_and(|s| s.is_empty()) {
            // A full receive: nothing to mount yet, and the previous dataset (if any)
            // stays renamed aside, whole, until the rerun has finished.
            return Ok(e.context(format!(
                "the partial full receive into {dataset} is kept{}; run reset-secondary again to resume it",
                plan.rename_aside
                    .as_ref()
                    .map(|aside| format!(" and the previous dataset stays as {aside}"))
                    .unwrap_or_default()
            )));
        }
        tracing::error!("the transfer failed, restoring the last good state: {e}");
        if let Some(aside) = &plan.rename_aside {
            if !local_zfs.exists(dataset).unwrap_or(true) {
                local_zfs.rename(aside, dataset)?;
            }
        }
        if local_zfs.exists(dataset).unwrap_or(false) {
            local_zfs.mount(dataset)?;
        }
        if kept {
            // An incremental: the dataset itself is untouched; the partial state waits
            // beside it (`zfs receive -A` drops it).
            return Ok(e.context(format!(
                "the partial receive into {dataset} is kept; run reset-secondary again to resume it"
            )));
        }
        Ok(e)
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
        if self.args.full && !state.partial_full {
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

    fn wait_for_streaming(
        &self,
        local: &Node,
        primary: &mut Pg,
    ) -> Result<crate::pg::ReplicationInfo> {
        let deadline = Instant::now() + local.streaming_timeout;
        let target = pg_target(local);
        let mut last;
        loop {
            self.interrupt.check()?;
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
                    local.streaming_timeout,
                    local.pg_log_file.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Whether a re-seed may go on, from what the local PostgreSQL (None: not running;
/// Some((in_recovery, writable)) or why it could not be asked) and the source (in
/// recovery or not) answer once the lock is held. Only positive evidence lets it go on.
pub fn still_safe_to_reseed(
    local: &Option<std::result::Result<(bool, bool), String>>,
    source_in_recovery: &std::result::Result<bool, String>,
    caller: Caller,
    local_name: &str,
    source: &str,
) -> Result<()> {
    match local {
        None | Some(Ok((true, _))) => {}
        // A primary fenced read-only may be rejoined: its diverged writes are kept.
        Some(Ok((false, false))) if caller == Caller::Rejoin => {}
        Some(Ok((false, _))) => {
            return Err(Error::refused(format!(
                "PostgreSQL on this node ({local_name}) became a primary while this re-seed waited \
                 (it was a standby at the preflight); nothing was changed"
            )))
        }
        Some(Err(why)) => {
            return Err(Error::refused(format!(
            "PostgreSQL on this node ({local_name}) no longer answers ({why}); it may have become \
                 a primary while this re-seed waited, so nothing was changed"
        )))
        }
    }
    match source_in_recovery {
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

/// How often a receive that failed for a passing reason is tried.
const RECEIVE_ATTEMPTS: u32 = 3;

/// zfs-fuse briefly answers "busy" or fails a receive with an I/O error right after the
/// dataset was unmounted; both pass within a second or two.
fn is_transient_receive_error(e: &Error) -> bool {
    let text = e.to_string();
    text.contains("the receiver failed") && (text.contains("I/O error") || text.contains("busy"))
}

/// The stream size when the sending side can tell it without sending.
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

/// Hold the new common snapshot on both sides so neither retention nor an operator can
/// break the incremental chain, release this node's hold on older ones, and keep only the
/// newest `keep_common` pgzfs snapshots on the standby.
fn protect_new_base(
    local: &Node,
    local_zfs: &dyn Zfs,
    remote_zfs: &dyn Zfs,
    source_dataset: &DatasetName,
    snap: &SnapName,
) -> Result<()> {
    let tag = HoldTag::parse(&format!("pgzfs-{}", local.slot_name))?;
    let local_new = local.dataset.snapshot(snap);
    let remote_new = source_dataset.snapshot(snap);
    remote_zfs.hold(&tag, &remote_new)?;
    // A bookmark keeps the incremental chain usable even if retention later destroys the
    // snapshot on the primary (where the ZFS has bookmarks; zfs-fuse has not).
    if remote_zfs
        .features_for(source_dataset)
        .map(|f| f.bookmarks)
        .unwrap_or(false)
    {
        if let Err(e) = remote_zfs.bookmark(&remote_new) {
            tracing::warn!("could not bookmark {remote_new}: {e}");
        }
    }
    local_zfs.hold(&tag, &local_new)?;
    // Each side's list is read once: every zfs call is a round trip (and on zfs-fuse a
    // slow one), and what the releases change is known here.
    let mut released_here = Vec::new();
    let mut local_snaps = Vec::new();
    for (zfs, dataset, keep, is_local) in [
        (remote_zfs, source_dataset, &remote_new, false),
        (local_zfs, &local.dataset, &local_new, true),
    ] {
        let snaps = zfs.snapshots(dataset)?;
        for old in snaps
            .iter()
            .filter(|s| s.is_held() && &s.name != keep && s.name.snap().is_pgzfs())
        {
            if zfs.release(&tag, &old.name)? {
                tracing::info!("released {} on {}", old.name, zfs.location());
                if is_local {
                    released_here.push(old.name.clone());
                }
            }
        }
        if is_local {
            local_snaps = snaps;
        }
    }
    let pgzfs_snaps: Vec<Snapshot> = local_snaps
        .into_iter()
        .filter(|s| s.name.snap().is_pgzfs())
        .collect();
    let excess = pgzfs_snaps.len().saturating_sub(local.keep_common);
    for old in pgzfs_snaps.iter().take(excess) {
        // Held by someone else still (our release took one reference off).
        let still_held = if released_here.contains(&old.name) {
            old.userrefs > 1
        } else {
            old.is_held()
        };
        if still_held || old.name == local_new {
            continue;
        }
        local_zfs.destroy_snapshot(&old.name)?;
        tracing::info!(
            "destroyed old standby snapshot {} (keep_common = {})",
            old.name,
            local.keep_common
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_promotion_during_the_wait_for_the_lock_stops_the_reseed() {
        let ok: std::result::Result<bool, String> = Ok(false);
        type Answer = Option<std::result::Result<(bool, bool), String>>;
        let cases: Vec<(Answer, std::result::Result<bool, String>, Caller, bool)> = vec![
            (
                Some(Ok((true, false))),
                ok.clone(),
                Caller::ResetSecondary,
                true,
            ),
            (None, ok.clone(), Caller::ResetSecondary, true),
            // Promoted between the preflight and the lock.
            (
                Some(Ok((false, true))),
                ok.clone(),
                Caller::ResetSecondary,
                false,
            ),
            (Some(Ok((false, true))), ok.clone(), Caller::Rejoin, false),
            (
                Some(Ok((false, false))),
                ok.clone(),
                Caller::ResetSecondary,
                false,
            ),
            (Some(Ok((false, false))), ok.clone(), Caller::Rejoin, true),
            // Unknown is not "still a standby".
            (
                Some(Err("timeout".into())),
                ok.clone(),
                Caller::ResetSecondary,
                false,
            ),
            // The source was demoted meanwhile, or is gone.
            (
                Some(Ok((true, false))),
                Ok(true),
                Caller::ResetSecondary,
                false,
            ),
            (
                Some(Ok((true, false))),
                Err("reset".into()),
                Caller::ResetSecondary,
                false,
            ),
        ];
        for (local, source, caller, go_on) in cases {
            let decided = still_safe_to_reseed(&local, &source, caller, "db2", "db1");
            assert_eq!(
                decided.is_ok(),
                go_on,
                "{local:?} {source:?} {caller:?}: {decided:?}"
            );
            if let Err(e) = decided {
                assert_eq!(e.exit_code(), 3);
            }
        }
    }

    #[test]
    fn only_a_receivers_passing_trouble_is_retried() {
        let io = Error::failed("the receiver failed: `zfs receive -u -F tank/pg` failed (exit status 1): cannot receive incremental stream: I/O error");
        assert!(is_transient_receive_error(&io));
        let busy = Error::failed("the receiver failed: cannot unmount: dataset is busy");
        assert!(is_transient_receive_error(&busy));
        let sender = Error::failed(
            "the sender failed: zfs send: I/O error; so the receiver discarded the partial stream",
        );
        assert!(
            !is_transient_receive_error(&sender),
            "a dead sender is not retried"
        );
        let refused = Error::failed(
            "the receiver failed: destination has been modified since most recent snapshot",
        );
        assert!(!is_transient_receive_error(&refused));
    }
}

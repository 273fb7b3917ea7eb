//! `pgzfs daemon`: the long-running service rc.d starts under daemon(8).
//!
//! Once a second it looks at this node's PostgreSQL and does what the role calls for:
//!
//! - **Primary**: a backup-safe snapshot every `snapshot_interval` (the same cut as
//!   reset-secondary), then retention. The schedule goes by the newest snapshot's time,
//!   so a restarted daemon does not snapshot again at once, and retention waits while a
//!   re-seed from this node holds the re-seed lock.
//! - **Standby**: watch the WAL receiver. Once streaming has been broken for longer than
//!   `reseed_after`, re-seed with reset-secondary, backing off exponentially after
//!   failures. The primary's advisory lock keeps re-seeds one at a time cluster-wide.
//! - **Stopped standby**: start it again (a killed postmaster). A stopped primary is left
//!   alone: starting it could make a second primary, which is for the operator or the
//!   HA tooling to decide.
//!
//! Every change of state is logged, written to a small state file (`pgzfs status` shows
//! its last event), and emitted as a `daemon` event (hook and `pg_notify('pgzfs', ...)`).
//!
//! Signals: SIGHUP re-reads the config (an invalid one is logged and the old one kept)
//! and reopens the log file; SIGTERM or SIGINT end the daemon after the current step, and
//! a transfer in flight is aborted cleanly (ZFS discards the partial receive and the
//! standby is restarted as it was). Then it exits 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use crate::clock::{Clock, SystemClock};
use crate::cluster::pg_target;
use crate::config::{config_path, Config, Node};
use crate::context::{Context, Invocation};
use crate::daemon_state::{read_state, write_state, DaemonState};
use crate::datasets::ClusterDatasets;
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::failover::seam::RealPostgres;
use crate::failover::{local_role, Role};
use crate::http::{Request, Response};
use crate::isolation::{fence_if_primary, run_witness, spawn_watch, Fencer, QuorumState};
use crate::lock::LocalLock;
use crate::pg::ctl::PgCtl;
use crate::pg::{Pg, ServerState, RESEED_LOCK};
use crate::quorum::View;
use crate::replicate::{self, Caller, ReseedRequest};
use crate::retention::{prune_cluster, taken_at, Protection};
use crate::steps::Steps;
use crate::timestamp::utc_rfc3339;
use crate::transfer::Interrupt;
use crate::zfs::Zfs;

#[derive(Debug, Args)]
pub struct Daemon {}

/// How often the daemon looks at PostgreSQL.
const POLL: Duration = Duration::from_secs(1);
/// After a failed snapshot, try again this much later rather than every poll.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(60);
/// The first wait after a failed re-seed; it doubles with every further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// The longest wait between re-seed attempts.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30 * 60);
/// The daemon's own operations wait this long for the node's lock, then try again at
/// the next poll: an operator's command comes first, and SIGTERM stays prompt.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// The longest a restart of the local standby may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Daemon {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        // A witness runs only the quorum part: no PostgreSQL, no dataset.
        let config = Config::load(&config_path(invocation.config.as_deref()))?;
        if let Some(witness) = config.local_witness(invocation.node.as_deref()).cloned() {
            install_panic_hook();
            return run_witness(invocation, config, witness);
        }
        let ctx = invocation.load()?;
        install_panic_hook();
        let interrupt = Interrupt::install()?;
        let hangup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
            .map_err(|e| Error::failed(format!("cannot install the SIGHUP handler: {e}")))?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut quorum =
            QuorumState::new(&ctx.local.name, "data", &ctx.config, &ctx.local.lock_file);
        let (pg_bin, data_dir, log, user) = (
            ctx.local.pg.pg_bin.clone(),
            ctx.local.data_dir.clone(),
            ctx.local.pg.pg_log_file.clone(),
            ctx.local.pg.pg_os_user.clone(),
        );
        quorum.postmaster = Some(Box::new(move || {
            // Unknown counts as running: only a positive "stopped" is evidence.
            PgCtl::new(&pg_bin, &data_dir, &log, &user).map_or(true, |ctl| ctl.is_running())
        }));
        let quorum = Arc::new(quorum);
        let shared = Arc::new(Shared {
            node: Mutex::new(ctx.local.clone()),
            config: Mutex::new(ctx.config.clone()),
            cluster: ctx.config.cluster.clone(),
            metrics: Mutex::new(Metrics::default()),
            clock: Arc::clone(&clock),
            quorum: Arc::clone(&quorum),
        });
        let handler_shared = Arc::clone(&shared);
        let handler: Arc<crate::http::Handler> =
            Arc::new(move |request: &Request| respond(&handler_shared, request));
        let http = match ctx.local.daemon.http_listen {
            Some(address) => Some(crate::http::spawn(address, Arc::clone(&handler))?),
            None => None,
        };
        // The isolation watch runs on a thread of its own: a snapshot or a re-seed in
        // the main loop must never delay the fence of an isolated primary.
        let fencing = Arc::clone(&shared);
        let fencer: Box<Fencer> = Box::new(move |view: &View| {
            let ctx = Context {
                config: fencing
                    .config
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                local: fencing
                    .node
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            };
            fence_if_primary(&ctx, view)
        });
        if let Some(why) = crate::quorum::not_configured(&ctx.config.voters()) {
            tracing::warn!("{why}; a partitioned primary does not fence itself");
        }
        spawn_watch(quorum, Some(fencer), interrupt.clone())?;
        tracing::info!(
            "pgzfs daemon {} started on {} (pid {}): snapshot_interval {}, reseed_after {}",
            env!("CARGO_PKG_VERSION"),
            ctx.local.name,
            std::process::id(),
            crate::duration::format_duration(ctx.local.daemon.snapshot_interval),
            crate::duration::format_duration(ctx.local.daemon.reseed_after)
        );
        let mut runner = Runner {
            ctx,
            invocation: invocation.clone(),
            clock,
            interrupt,
            hangup,
            shared,
            handler,
            http,
            watch: Watch::default(),
            state: None,
            next_snapshot_check: None,
            next_verify_check: None,
            record: DaemonState::default(),
        };
        // The last event survives a restart: it is often the reason for the restart.
        runner.record = DaemonState {
            node: runner.ctx.local.name.clone(),
            pid: std::process::id(),
            last_event: read_state(&runner.ctx.local).and_then(|s| s.last_event),
            ..DaemonState::default()
        };
        runner.run();
        Ok(0)
    }
}

// ---------------------------------------------------------------------------------------
// The replication watch: a pure state machine over observations and times, so that the
// re-seed decision and its back-off are tested with a synthetic clock.

/// What the standby's WAL receiver looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Streaming, by the WAL receiver process with this pid.
    Streaming(i32),
    /// Not streaming, and why.
    Broken(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Broken, but not for long enough yet.
    Waiting,
    /// Broken for long enough, but the last re-seed failed too recently.
    BackingOff,
    Reseed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// The WAL receiver seen streaming at the previous observation.
    streaming_pid: Option<i32>,
    /// Since when streaming has been broken; None while it works.
    pub broken_since: Option<SystemTime>,
    /// Re-seeds failed in a row.
    pub failures: u32,
    pub next_attempt: Option<SystemTime>,
}

impl Watch {
    /// Take one observation. A receiver counts as streaming only when the same process
    /// was streaming at the previous look too: a receiver whose primary lacks the WAL it
    /// asks for is briefly "streaming" on every retry, each time as a new process, and
    /// such flickers must not make a broken standby look healthy.
    pub fn observe(&mut self, link: &Link, now: SystemTime, reseed_after: Duration) -> Verdict {
        match link {
            Link::Streaming(pid) if self.streaming_pid == Some(*pid) => {
                self.broken_since = None;
                self.failures = 0;
                self.next_attempt = None;
                Verdict::Healthy
            }
            Link::Streaming(pid) => {
                self.streaming_pid = Some(*pid);
                if self.broken_since.is_none() {
                    Verdict::Healthy
                } else {
                    Verdict::Waiting
                }
            }
            Link::Broken(_) => {
                self.streaming_pid = None;
                let since = *self.broken_since.get_or_insert(now);
                let broken_for = now.duration_since(since).unwrap_or_default();
                if broken_for < reseed_after {
                    Verdict::Waiting
                } else if self.next_attempt.is_some_and(|at| now < at) {
                    Verdict::BackingOff
                } else {
                    Verdict::Reseed
                }
            }
        }
    }

    pub fn is_streaming(&self) -> bool {
        self.broken_since.is_none()
    }

    pub fn reseed_failed(&mut self, now: SystemTime) {
        self.failures += 1;
        self.next_attempt = Some(now + backoff(self.failures));
    }

    pub fn reseed_succeeded(&mut self) {
        *self = Watch::default();
    }
}

/// The wait after `failures` failed re-seeds in a row: 30s, 1m, 2m, ... up to 30m.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

// ---------------------------------------------------------------------------------------
// The state file and the metrics.

/// What the metrics endpoint reports besides live PostgreSQL values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub reseeds_total: u64,
    pub reseed_failures_total: u64,
    pub reseed_failures_in_a_row: u32,
    pub last_reseed_seconds: Option<f64>,
    pub last_reseed_bytes: Option<u64>,
    pub snapshots: Option<usize>,
    /// When the newest pgzfs snapshot on this node was taken.
    pub newest_snapshot: Option<SystemTime>,
    /// When the newest snapshot that passed `pgzfs verify` was taken.
    pub newest_verified: Option<SystemTime>,
    /// The state file's content, served as `/state`.
    pub state: DaemonState,
}

/// What the HTTP thread shares with the main loop.
pub struct Shared {
    node: Mutex<Node>,
    config: Mutex<Config>,
    cluster: String,
    metrics: Mutex<Metrics>,
    clock: Arc<dyn Clock>,
    quorum: Arc<QuorumState>,
}

impl Shared {
    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// ---------------------------------------------------------------------------------------
// The main loop.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Primary,
    ReadOnlyPrimary,
    Streaming,
    NotStreaming,
    Stopped,
    Unknown,
    Reseeding,
}

impl NodeState {
    fn name(self) -> &'static str {
        match self {
            NodeState::Primary => "primary",
            NodeState::ReadOnlyPrimary => "primary (read-only)",
            NodeState::Streaming => "streaming",
            NodeState::NotStreaming => "not streaming",
            NodeState::Stopped => "stopped",
            NodeState::Unknown => "unknown",
            NodeState::Reseeding => "re-seeding",
        }
    }

    fn is_good(self) -> bool {
        matches!(self, NodeState::Primary | NodeState::Streaming)
    }
}

/// What the local PostgreSQL is, as far as one look tells.
enum Observed {
    Primary {
        writable: bool,
    },
    Standby {
        link: Link,
    },
    /// No postmaster; whether the data directory is set up as a standby.
    Stopped {
        standby: bool,
    },
    /// A postmaster runs but does not answer.
    Unanswered(String),
}

struct Runner {
    ctx: Context,
    invocation: Invocation,
    clock: Arc<dyn Clock>,
    interrupt: Interrupt,
    hangup: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// The HTTP endpoints' handler, and the server while `http_listen` is set.
    handler: Arc<crate::http::Handler>,
    http: Option<crate::http::Server>,
    watch: Watch,
    state: Option<NodeState>,
    next_snapshot_check: Option<SystemTime>,
    /// `verify_every`: when to look at the snapshots' verdicts again.
    next_verify_check: Option<SystemTime>,
    record: DaemonState,
}

impl Runner {
    fn run(&mut self) {
        while !self.interrupt.is_set() {
            if self.hangup.swap(false, Ordering::SeqCst) {
                self.reload();
            }
            if let Err(e) = self.tick() {
                tracing::warn!("daemon: {e}");
            }
            self.sleep(POLL);
        }
        tracing::info!(
            "pgzfs daemon on {} stopping: SIGTERM or SIGINT received",
            self.ctx.local.name
        );
    }

    /// Sleep, but wake at once for a signal.
    fn sleep(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.interrupt.is_set() || self.hangup.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn reload(&mut self) {
        let path = config_path(self.invocation.config.as_deref());
        let loaded = Config::load(&path).and_then(|config| {
            let local = config.local_node(self.invocation.node.as_deref())?.clone();
            Ok((config, local))
        });
        // Reopen first, so that what follows lands in the new file.
        let log_path = match &loaded {
            Ok((config, _)) => Some(config.log_file.clone()),
            Err(_) => None,
        };
        match crate::log::reopen(log_path.as_deref()) {
            Ok(path) => tracing::info!("SIGHUP: reopened the log file {}", path.display()),
            Err(e) => tracing::warn!("SIGHUP: cannot reopen the log file: {e}"),
        }
        match loaded {
            Ok((config, local)) => {
                if local.daemon.http_listen != self.ctx.local.daemon.http_listen {
                    self.move_http(local.daemon.http_listen);
                }
                *self.shared.node.lock().unwrap_or_else(|p| p.into_inner()) = local.clone();
                *self.shared.config.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
                self.shared.quorum.reconfigure(&config);
                self.ctx = Context { config, local };
                self.next_snapshot_check = None;
                tracing::info!("SIGHUP: reloaded the config from {}", path.display());
            }
            Err(e) => tracing::error!(
                "SIGHUP: the config at {} is invalid, keeping the old one: {e}",
                path.display()
            ),
        }
    }

    /// `http_listen` changed: the new address is bound before the old one is given up,
    /// so a port that cannot be bound leaves health checks answering where they were.
    /// Only the same port on another address (127.0.0.1:8008 to 0.0.0.0:8008) has to
    /// give the old one up first, and takes it back if the new one still fails.
    fn move_http(&mut self, address: Option<std::net::SocketAddr>) {
        let spawn = |address| crate::http::spawn(address, Arc::clone(&self.handler));
        let new = match address {
            Some(address) => match spawn(address) {
                Ok(server) => Some(server),
                Err(_)
                    if self
                        .http
                        .as_ref()
                        .is_some_and(|old| old.bound.port() == address.port()) =>
                {
                    let old = self.http.take().expect("checked above");
                    let old_address = old.bound;
                    old.stop();
                    match spawn(address) {
                        Ok(server) => Some(server),
                        Err(e) => {
                            tracing::error!("SIGHUP: {e}; back on {old_address}");
                            self.http = spawn(old_address)
                                .map_err(|e| tracing::error!("SIGHUP: {e}; no HTTP endpoint now"))
                                .ok();
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("SIGHUP: {e}; still serving on the old address");
                    return;
                }
            },
            None => None,
        };
        if let Some(old) = std::mem::replace(&mut self.http, new) {
            old.stop();
        }
        tracing::info!(
            "SIGHUP: http_listen is now {}",
            address.map_or_else(|| "off".to_string(), |a| a.to_string())
        );
    }

    fn pgctl(&self) -> Result<PgCtl> {
        let node = &self.ctx.local;
        PgCtl::new(
            &node.pg.pg_bin,
            &node.data_dir,
            &node.pg.pg_log_file,
            &node.pg.pg_os_user,
        )
    }

    fn observe(&self, pgctl: &PgCtl) -> Observed {
        let node = &self.ctx.local;
        let role = match self.ctx.local_role(pgctl) {
            Ok(role) => role,
            Err(e) => return Observed::Unanswered(e.to_string()),
        };
        match role {
            // The daemon only ever starts a server that comes up in recovery.
            Role::Stopped(data) => Observed::Stopped {
                standby: data.starts_as_standby,
            },
            Role::Primary => Observed::Primary { writable: true },
            Role::FencedPrimary => Observed::Primary { writable: false },
            // Unknown is not "standby" and not "primary": the daemon does nothing.
            Role::Unanswered(_, why) => Observed::Unanswered(why),
            Role::Standby => {
                let link = Pg::connect(&pg_target(node)).and_then(|mut pg| pg.wal_receiver());
                match link {
                    Ok(Some(r)) if r.status.as_deref() == Some("streaming") => Observed::Standby {
                        link: Link::Streaming(r.pid),
                    },
                    Ok(Some(r)) => Observed::Standby {
                        link: Link::Broken(format!(
                            "WAL receiver {}",
                            r.status.as_deref().unwrap_or("status unknown")
                        )),
                    },
                    Ok(None) => Observed::Standby {
                        link: Link::Broken("no WAL receiver".to_string()),
                    },
                    Err(e) => Observed::Unanswered(e.to_string()),
                }
            }
        }
    }

    fn tick(&mut self) -> Result<()> {
        let now = self.clock.now();
        let pgctl = self.pgctl()?;
        let reseed_after = self.ctx.local.daemon.reseed_after;
        match self.observe(&pgctl) {
            Observed::Primary { writable } => {
                self.watch = Watch::default();
                let state = if writable {
                    NodeState::Primary
                } else {
                    NodeState::ReadOnlyPrimary
                };
                self.set_state(state, "PostgreSQL is the primary".to_string());
                if writable {
                    self.scheduled_snapshot(now);
                } else {
                    self.count_snapshots(now);
                }
            }
            Observed::Standby { link } => {
                // Rejoined: the isolation fence has done its work.
                self.shared
                    .quorum
                    .fenced_isolated
                    .store(false, Ordering::SeqCst);
                let verdict = self.watch.observe(&link, now, reseed_after);
                let why = match &link {
                    Link::Streaming(_) => "streaming from the primary".to_string(),
                    Link::Broken(why) => why.clone(),
                };
                let state = if self.watch.is_streaming() {
                    NodeState::Streaming
                } else {
                    NodeState::NotStreaming
                };
                self.set_state(state, why.clone());
                self.count_snapshots(now);
                if verdict == Verdict::Reseed {
                    self.reseed(&why);
                }
            }
            Observed::Stopped { standby: true } => {
                self.set_state(
                    NodeState::Stopped,
                    "no postmaster in the data directory".into(),
                );
                tracing::warn!(
                    "PostgreSQL on this standby ({}) is not running; starting it",
                    self.ctx.local.name
                );
                let started = pgctl.start(START_TIMEOUT);
                let link = match &started {
                    Ok(()) => {
                        self.emit(
                            "daemon",
                            true,
                            "restarted PostgreSQL on this standby".into(),
                        );
                        Link::Broken("PostgreSQL just restarted".into())
                    }
                    Err(e) => {
                        tracing::warn!("could not start PostgreSQL: {e}");
                        Link::Broken(format!("PostgreSQL does not start: {e}"))
                    }
                };
                let verdict = self.watch.observe(&link, now, reseed_after);
                if verdict == Verdict::Reseed && started.is_err() {
                    self.reseed("PostgreSQL does not start");
                }
            }
            Observed::Stopped { standby: false } => {
                self.watch = Watch::default();
                self.set_state(
                    NodeState::Stopped,
                    "PostgreSQL is not running and the data directory is not a standby's; \
                     the daemon does not start a primary"
                        .into(),
                );
            }
            Observed::Unanswered(why) => self.set_state(NodeState::Unknown, why),
        }
        if matches!(
            self.state,
            Some(NodeState::Primary | NodeState::ReadOnlyPrimary | NodeState::Streaming)
        ) {
            self.scheduled_verify(now);
        }
        Ok(())
    }

    /// `verify_every`: prove the newest snapshot restores when the last proof is that
    /// old (on a standby too: the clone leaves its streaming alone).
    fn scheduled_verify(&mut self, now: SystemTime) {
        let Some(every) = self.ctx.local.daemon.verify_every else {
            return;
        };
        if self.next_verify_check.is_some_and(|at| now < at) {
            return;
        }
        self.next_verify_check = Some(now + Duration::from_secs(60));
        let node = self.ctx.local.clone();
        let outcome = self.ctx.local_zfs().and_then(|zfs| {
            let snapshots = zfs.snapshots(&node.dataset)?;
            let Some(due) = crate::verify::verify_due(&snapshots, every, now) else {
                return Ok(None);
            };
            let _lock = LocalLock::acquire(&node.lock_file, LOCK_WAIT, "daemon verify")?;
            crate::verify::verify(&*zfs, &node, &due.name, &self.interrupt).map(Some)
        });
        match outcome {
            Ok(None) => {}
            Ok(Some(report)) => {
                let details = if report.passed() {
                    format!("{} restores ({:.0}s)", report.snapshot, report.seconds)
                } else {
                    format!("{} FAILED: {}", report.snapshot, report.problems.join("; "))
                };
                self.emit("verify", report.passed(), details);
                self.next_snapshot_check = None; // refresh the metrics
            }
            Err(e) if e.exit_code() == 1 && !self.interrupt.is_set() => {
                self.emit("verify", false, format!("scheduled verify: {e}"));
            }
            Err(e) => tracing::warn!("scheduled verify: {e}"),
        }
    }

    fn set_state(&mut self, state: NodeState, why: String) {
        if self.state == Some(state) {
            return;
        }
        let details = match self.state {
            Some(old) => format!("{} -> {}: {why}", old.name(), state.name()),
            None => format!("{}: {why}", state.name()),
        };
        self.state = Some(state);
        self.record.state = state.name().to_string();
        self.record.since = Some(utc_rfc3339(self.clock.now()));
        self.emit("daemon", state.is_good(), details);
    }

    /// Log, hook and notify, and keep it as the last event.
    fn emit(&mut self, name: &'static str, success: bool, details: String) {
        let event = Event::new(name, &self.ctx.local.name, success, details, None);
        self.record.last_event = serde_json::to_value(&event).ok();
        events::emit(&self.ctx.config, event);
        self.save();
    }

    fn save(&mut self) {
        self.record.updated = Some(utc_rfc3339(self.clock.now()));
        self.record.quorum = Some(self.shared.quorum.view(Instant::now()));
        self.record.pid = std::process::id();
        write_state(&self.ctx.local, &self.record);
        self.shared.metrics().state = self.record.clone();
    }

    /// Keep the snapshot metrics current without listing snapshots every second.
    fn count_snapshots(&mut self, now: SystemTime) {
        if self.next_snapshot_check.is_some_and(|at| now < at) {
            return;
        }
        self.next_snapshot_check = Some(now + Duration::from_secs(30));
        let snapshots = self
            .ctx
            .local_zfs()
            .and_then(|zfs| zfs.snapshots(&self.ctx.local.dataset));
        match snapshots {
            Ok(snapshots) => {
                let mut metrics = self.shared.metrics();
                metrics.snapshots = Some(snapshots.len());
                metrics.newest_snapshot = snapshots
                    .iter()
                    .filter_map(|s| taken_at(s.name.snap()))
                    .max();
                metrics.newest_verified =
                    crate::verify::newest_verified(&snapshots).map(|(_, taken)| taken);
            }
            Err(e) => tracing::debug!("cannot list snapshots: {e}"),
        }
    }

    /// On a writable primary: a snapshot when one is due, then retention.
    fn scheduled_snapshot(&mut self, now: SystemTime) {
        if self.next_snapshot_check.is_some_and(|at| now < at) {
            return;
        }
        let node = self.ctx.local.clone();
        let interval = node.daemon.snapshot_interval;
        let zfs = match self.ctx.local_zfs() {
            Ok(zfs) => zfs,
            Err(e) => {
                tracing::warn!("cannot open this node's ZFS: {e}");
                self.next_snapshot_check = Some(now + SNAPSHOT_RETRY);
                return;
            }
        };
        let newest = match zfs.snapshots(&node.dataset) {
            Ok(snapshots) => {
                let newest = snapshots
                    .iter()
                    .filter_map(|s| taken_at(s.name.snap()))
                    .max();
                let mut metrics = self.shared.metrics();
                metrics.snapshots = Some(snapshots.len());
                metrics.newest_snapshot = newest;
                metrics.newest_verified =
                    crate::verify::newest_verified(&snapshots).map(|(_, taken)| taken);
                newest
            }
            Err(e) => {
                tracing::warn!("cannot list the snapshots of {}: {e}", node.dataset);
                self.next_snapshot_check = Some(now + SNAPSHOT_RETRY);
                return;
            }
        };
        if let Some(due) = newest.map(|t| t + interval).filter(|due| *due > now) {
            // Not due: look again when it is (a reload also looks again).
            self.next_snapshot_check = Some(due);
            return;
        }
        match self.snapshot_and_prune(&node, &*zfs, now) {
            Ok(()) => self.next_snapshot_check = None,
            Err(e) => {
                tracing::warn!("scheduled snapshot on {}: {e}", node.name);
                if e.exit_code() == 1 {
                    self.emit("failure", false, format!("scheduled snapshot: {e}"));
                }
                self.next_snapshot_check = Some(now + SNAPSHOT_RETRY);
            }
        }
    }

    fn snapshot_and_prune(&mut self, node: &Node, zfs: &dyn Zfs, now: SystemTime) -> Result<()> {
        let _lock = LocalLock::acquire(&node.lock_file, LOCK_WAIT, "daemon snapshot")?;
        let mut primary = crate::cluster::connect_local_primary(node)?;
        let mut steps = Steps::default();
        let cut =
            crate::cut::take_of_node(&mut steps, &mut primary, zfs, node, now, "pgzfs daemon")?;
        tracing::info!("scheduled snapshot {} taken", cut.snapshot);
        {
            let mut metrics = self.shared.metrics();
            metrics.newest_snapshot = taken_at(cut.snapshot.snap()).or(Some(now));
        }
        // Retention only while no re-seed from this node is in flight: the re-seed lock
        // is held from a re-seed's cut until its new base is held.
        if !primary.try_advisory_lock(RESEED_LOCK)? {
            tracing::info!("retention waits: a re-seed from this node is in flight");
            return Ok(());
        }
        let pruned =
            ClusterDatasets::discover(zfs, &node.dataset, &node.tablespaces).and_then(|cluster| {
                prune_cluster(
                    zfs,
                    &cluster,
                    &self.ctx.config.nodes,
                    &self.ctx.config.retention,
                    &Protection::default(),
                    now,
                    false,
                )
            });
        let _ = primary.advisory_unlock(RESEED_LOCK);
        let report = pruned?;
        self.shared.metrics().snapshots =
            Some(report.decisions.len() - report.destroyed.len() + report.foreign.len());
        for (name, why) in &report.failed {
            tracing::warn!("retention could not destroy {name}: {why}");
        }
        Ok(())
    }

    fn reseed(&mut self, why: &str) {
        let node = self.ctx.local.clone();
        let broken_for = self
            .watch
            .broken_since
            .and_then(|since| self.clock.now().duration_since(since).ok())
            .unwrap_or_default();
        self.state = Some(NodeState::Reseeding);
        self.record.state = NodeState::Reseeding.name().to_string();
        self.emit(
            "daemon",
            false,
            format!(
                "streaming broken for {} ({why}; reseed_after {}): re-seeding",
                crate::duration::format_duration(Duration::from_secs(broken_for.as_secs())),
                crate::duration::format_duration(node.daemon.reseed_after)
            ),
        );
        let request = ReseedRequest {
            from: None,
            full: false,
            caller: Caller::ResetSecondary,
        };
        let outcome = replicate::reseed_unattended(&self.ctx, &request, self.interrupt.clone());
        let now = self.clock.now();
        match outcome {
            Ok(summary) => {
                self.watch.reseed_succeeded();
                self.record.reseed_failures_in_a_row = 0;
                self.shared.metrics().reseed_failures_in_a_row = 0;
                self.record.reseeds_total += 1;
                self.record.last_reseed_seconds = Some(summary.seconds);
                self.record.last_reseed_bytes = Some(summary.bytes);
                {
                    let mut metrics = self.shared.metrics();
                    metrics.reseeds_total = self.record.reseeds_total;
                    metrics.last_reseed_seconds = Some(summary.seconds);
                    metrics.last_reseed_bytes = Some(summary.bytes);
                }
                tracing::info!(
                    "automatic re-seed done: {} from {} ({} bytes in {:.1}s)",
                    summary.mode,
                    summary.snapshot,
                    summary.bytes,
                    summary.seconds
                );
                self.emit(
                    "reset_secondary",
                    true,
                    format!(
                        "automatic {} re-seed from {} ({} bytes)",
                        summary.mode, summary.snapshot, summary.bytes
                    ),
                );
                self.next_snapshot_check = None;
            }
            Err(e) => {
                self.record.reseed_failures_total += 1;
                self.shared.metrics().reseed_failures_total = self.record.reseed_failures_total;
                if self.interrupt.is_set() {
                    tracing::warn!("automatic re-seed aborted by a signal: {e}");
                    self.emit("failure", false, format!("automatic re-seed aborted: {e}"));
                    return;
                }
                self.watch.reseed_failed(now);
                self.record.reseed_failures_in_a_row = self.watch.failures;
                self.shared.metrics().reseed_failures_in_a_row = self.watch.failures;
                if self.watch.failures >= self.ctx.local.daemon.reseed_failures_warn {
                    tracing::error!(
                        "{} automatic re-seeds in a row failed: this standby's replication slot on the primary \
                         keeps every WAL segment since the last success, and the primary's disk fills until one \
                         succeeds. Fix the cause, or cap the slot with max_slot_wal_keep_size (docs/operations.md)",
                        self.watch.failures
                    );
                }
                let wait = backoff(self.watch.failures);
                tracing::error!(
                    "automatic re-seed failed ({} in a row); next attempt in {}: {e}",
                    self.watch.failures,
                    crate::duration::format_duration(wait)
                );
                self.emit(
                    "failure",
                    false,
                    format!(
                        "automatic re-seed failed, retrying in {}: {e}",
                        crate::duration::format_duration(wait)
                    ),
                );
            }
        }
    }
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // rc.d runs the daemon with stderr on /dev/null: the log file is the only place
        // a panic can be read afterwards.
        let text = format!(
            "{} pgzfs daemon panicked: {info}\n{}\n",
            utc_rfc3339(SystemTime::now()),
            std::backtrace::Backtrace::force_capture()
        );
        crate::log::write_raw(&text);
        previous(info);
    }));
}

// ---------------------------------------------------------------------------------------
// Health checks and metrics.

/// This node's PostgreSQL, asked live for every health check: a load balancer must not
/// route by what was true a poll ago.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalProbe {
    pub up: bool,
    pub in_recovery: bool,
    pub writable: bool,
    pub streaming: bool,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub version: Option<String>,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
    /// primary, standby, stopped or unknown.
    pub role: &'static str,
}

fn probe_local(node: &Node) -> LocalProbe {
    // A health check answers within seconds, whatever the node's connect_timeout.
    let mut node = node.clone();
    node.connect_timeout = node.connect_timeout.min(Duration::from_secs(3));
    let role = PgCtl::for_node(&node).and_then(|ctl| local_role(&RealPostgres, &ctl, &node));
    let answered = match &role {
        Ok(Role::Primary | Role::FencedPrimary | Role::Standby) => ask_local(&node)
            .map_err(|e| tracing::debug!("health check: {} stopped answering: {e}", node.name))
            .ok(),
        _ => None,
    };
    local_probe(role.ok().as_ref(), answered)
}

/// What a health check reports beyond the role, from a server that answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub state: ServerState,
    pub streaming: bool,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
}

fn ask_local(node: &Node) -> Result<Answered> {
    let mut pg = Pg::connect(&pg_target(node))?;
    let state = pg.server_state()?;
    if !state.in_recovery {
        return Ok(Answered {
            state,
            streaming: false,
            lag_bytes: None,
            lag_seconds: None,
        });
    }
    Ok(Answered {
        streaming: pg
            .wal_receiver()?
            .is_some_and(|r| r.status.as_deref() == Some("streaming")),
        lag_bytes: Some(pg.replay_lag_bytes()?),
        lag_seconds: pg.replay_delay_seconds()?,
        state,
    })
}

/// The health checks' view of this node, from `failover::local_role` (None: it could not
/// be read) and, when the server answered, what it said. A server that runs but does not
/// answer, or whose role could not be read, is "unknown", never "not a primary"; only a
/// server that is not running is "stopped".
pub fn local_probe(role: Option<&Role>, answered: Option<Answered>) -> LocalProbe {
    match answered {
        // The answer is newer than the role asked a moment before it.
        Some(a) => LocalProbe {
            up: true,
            in_recovery: a.state.in_recovery,
            writable: a.state.writable,
            streaming: a.streaming,
            lag_bytes: a.lag_bytes,
            lag_seconds: a.lag_seconds,
            version: Some(a.state.version),
            timeline: a.state.timeline,
            lsn: a.state.lsn,
            role: if a.state.in_recovery {
                Role::Standby.name()
            } else {
                Role::Primary.name()
            },
        },
        None => LocalProbe {
            role: match role {
                Some(stopped @ Role::Stopped(_)) => stopped.name(),
                _ => "unknown",
            },
            ..LocalProbe::default()
        },
    }
}

/// `?lag=` as Patroni takes it: bytes, or a number with kB, MB, GB or TB (powers of
/// 1024, as PostgreSQL's units).
pub fn parse_lag(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// The status code of a Patroni-compatible check, None for paths that are not checks.
pub fn check_status(path: &str, lag: Option<u64>, probe: &LocalProbe) -> Option<u16> {
    let ok = match path {
        "/" | "/primary" | "/master" | "/leader" | "/read-write" => probe.up && probe.writable,
        "/replica" => {
            probe.up
                && probe.in_recovery
                && probe.streaming
                && lag.is_none_or(|max| probe.lag_bytes.is_some_and(|l| l <= max))
        }
        "/read-only" => probe.up && (probe.writable || (probe.in_recovery && probe.streaming)),
        "/health" => probe.up,
        _ => return None,
    };
    Some(if ok { 200 } else { 503 })
}

fn respond(shared: &Shared, request: &Request) -> Response {
    let node = shared
        .node
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match request.path.as_str() {
        "/quorum" => shared.quorum.respond(request),
        "/promotion-grant" => shared.quorum.respond_grant(request),
        "/state" => {
            let mut state = shared.metrics().state.clone();
            state.quorum = Some(shared.quorum.view(Instant::now()));
            Response::json(200, &serde_json::to_value(state).expect("state serializes"))
        }
        "/metrics" => {
            let probe = probe_local(&node);
            let mut metrics = shared.metrics().clone();
            metrics.state.quorum = Some(shared.quorum.view(Instant::now()));
            Response::new(
                200,
                "text/plain; version=0.0.4",
                metrics_text(
                    &shared.cluster,
                    &node.name,
                    &probe,
                    &metrics,
                    shared.clock.now(),
                ),
            )
        }
        path => {
            let lag = match request.param("lag") {
                Some(text) => match parse_lag(text) {
                    Some(bytes) => Some(bytes),
                    None => {
                        return Response::new(
                            400,
                            "text/plain",
                            format!(
                                "lag={text:?}: give bytes, or a number with kB, MB, GB or TB\n"
                            ),
                        )
                    }
                },
                None => None,
            };
            let probe = probe_local(&node);
            match check_status(path, lag, &probe) {
                Some(status) => Response::json(
                    status,
                    &serde_json::json!({
                        "node": node.name,
                        "role": probe.role,
                        "state": if probe.up { "running" } else { "stopped" },
                        "writable": probe.writable,
                        "streaming": probe.streaming,
                        "lag_bytes": probe.lag_bytes,
                        "lag_seconds": probe.lag_seconds,
                        "server_version": probe.version,
                        "timeline": probe.timeline,
                        "lsn": probe.lsn,
                    }),
                ),
                None => Response::new(404, "text/plain", "Not Found\n"),
            }
        }
    }
}

/// Prometheus text format. A value nobody knows (lag on a primary, the age of a snapshot
/// that does not exist) is left out rather than reported as 0.
pub fn metrics_text(
    cluster: &str,
    node: &str,
    probe: &LocalProbe,
    metrics: &Metrics,
    now: SystemTime,
) -> String {
    let labels = format!("cluster=\"{cluster}\",node=\"{node}\"");
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (extra, value) in samples {
            out.push_str(&format!("{name}{{{labels}{extra}}} {value}\n"));
        }
    };
    family(
        "pgzfs_role",
        "gauge",
        "1 for the role this node's PostgreSQL has now (primary, standby, stopped, unknown).",
        ["primary", "standby", "stopped", "unknown"]
            .iter()
            .map(|role| {
                (
                    format!(",role=\"{role}\""),
                    u8::from(probe.role == *role).to_string(),
                )
            })
            .collect(),
    );
    let one = |value: Option<String>| value.map(|v| (String::new(), v)).into_iter().collect();
    family(
        "pgzfs_lag_bytes",
        "gauge",
        "Standby: WAL received from the primary but not replayed yet, in bytes.",
        one(probe.lag_bytes.map(|v| v.to_string())),
    );
    family(
        "pgzfs_lag_seconds",
        "gauge",
        "Standby: how far replay is behind, in seconds (0 when all received WAL is replayed).",
        one(probe.lag_seconds.map(|v| v.to_string())),
    );
    family(
        "pgzfs_last_snapshot_age_seconds",
        "gauge",
        "Age of the newest pgzfs snapshot of this node's dataset.",
        one(metrics.newest_snapshot.map(|t| {
            now.duration_since(t)
                .unwrap_or_default()
                .as_secs()
                .to_string()
        })),
    );
    family(
        "pgzfs_last_verified_snapshot_age_seconds",
        "gauge",
        "Age of the newest snapshot that passed pgzfs verify (proven to restore).",
        one(metrics.newest_verified.map(|t| {
            now.duration_since(t)
                .unwrap_or_default()
                .as_secs()
                .to_string()
        })),
    );
    family(
        "pgzfs_snapshots",
        "gauge",
        "Snapshots of this node's dataset.",
        one(metrics.snapshots.map(|n| n.to_string())),
    );
    family(
        "pgzfs_last_reseed_duration_seconds",
        "gauge",
        "Duration of the last automatic re-seed.",
        one(metrics.last_reseed_seconds.map(|v| v.to_string())),
    );
    family(
        "pgzfs_last_reseed_bytes",
        "gauge",
        "Bytes the last automatic re-seed transferred.",
        one(metrics.last_reseed_bytes.map(|v| v.to_string())),
    );
    family(
        "pgzfs_reseeds_total",
        "counter",
        "Automatic re-seeds that succeeded since the daemon started.",
        one(Some(metrics.reseeds_total.to_string())),
    );
    family(
        "pgzfs_reseed_failures_total",
        "counter",
        "Automatic re-seeds that failed since the daemon started.",
        one(Some(metrics.reseed_failures_total.to_string())),
    );
    family(
        "pgzfs_reseed_failures_in_a_row",
        "gauge",
        "Automatic re-seeds that failed since the last success; while above 0 this standby's slot keeps WAL on the primary.",
        one(Some(metrics.reseed_failures_in_a_row.to_string())),
    );
    let view = metrics.state.quorum.as_ref();
    family(
        "pgzfs_quorum_voters",
        "gauge",
        "Voters in the cluster (data nodes and witnesses).",
        one(view.map(|v| v.voters.to_string())),
    );
    family(
        "pgzfs_quorum_reachable_voters",
        "gauge",
        "Voters this node is in contact with within isolation_timeout, itself included.",
        one(view.map(|v| v.reachable_voters.len().to_string())),
    );
    family(
        "pgzfs_quorum_has_majority",
        "gauge",
        "1 while this node is in contact with a strict majority of the voters.",
        one(view.map(|v| u8::from(v.has_majority).to_string())),
    );
    family(
        "pgzfs_fenced_isolated",
        "gauge",
        "1 when this node's primary fenced itself because it lost the majority.",
        one(view.map(|v| u8::from(v.fenced_isolated).to_string())),
    );
    family(
        "pgzfs_quorum_unseen_seconds",
        "gauge",
        "Seconds since this node was last in contact with each other voter.",
        view.map(|v| {
            v.unseen_seconds
                .iter()
                .map(|(peer, s)| (format!(",peer=\"{peer}\""), s.to_string()))
                .collect()
        })
        .unwrap_or_default(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn broken() -> Link {
        Link::Broken("no WAL receiver".into())
    }

    #[test]
    fn a_standby_that_keeps_streaming_is_never_reseeded() {
        let mut watch = Watch::default();
        for s in 0..1000 {
            assert_eq!(
                watch.observe(&Link::Streaming(7), t(s), SECOND * 3),
                Verdict::Healthy
            );
        }
    }

    #[test]
    fn streaming_broken_longer_than_reseed_after_asks_for_a_reseed_once_the_time_is_up() {
        let mut watch = Watch::default();
        let after = SECOND * 300;
        assert_eq!(
            watch.observe(&Link::Streaming(7), t(0), after),
            Verdict::Healthy
        );
        assert_eq!(watch.observe(&broken(), t(10), after), Verdict::Waiting);
        assert_eq!(watch.observe(&broken(), t(309), after), Verdict::Waiting);
        assert_eq!(watch.observe(&broken(), t(310), after), Verdict::Reseed);
    }

    #[test]
    fn a_short_outage_that_heals_starts_the_count_afresh() {
        let mut watch = Watch::default();
        let after = SECOND * 60;
        watch.observe(&broken(), t(0), after);
        // The receiver comes back and stays: healthy at the second look.
        assert_eq!(
            watch.observe(&Link::Streaming(8), t(30), after),
            Verdict::Waiting
        );
        assert_eq!(
            watch.observe(&Link::Streaming(8), t(31), after),
            Verdict::Healthy
        );
        assert_eq!(watch.observe(&broken(), t(40), after), Verdict::Waiting);
        assert_eq!(watch.observe(&broken(), t(99), after), Verdict::Waiting);
        assert_eq!(watch.observe(&broken(), t(100), after), Verdict::Reseed);
    }

    #[test]
    fn a_receiver_that_flickers_to_streaming_on_each_retry_is_still_broken() {
        // "requested WAL segment has already been removed": every retry is a new
        // receiver process that is "streaming" for an instant, then gone.
        let mut watch = Watch::default();
        let after = SECOND * 20;
        let mut verdicts = Vec::new();
        for (s, pid) in (0..=24).zip(100..) {
            let link = if s % 5 == 0 {
                Link::Streaming(pid)
            } else {
                broken()
            };
            verdicts.push(watch.observe(&link, t(s), after));
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Reseed), "{verdicts:?}");
        assert!(!verdicts[1..].contains(&Verdict::Healthy), "{verdicts:?}");
    }

    #[test]
    fn failed_reseeds_back_off_exponentially_up_to_the_cap() {
        assert_eq!(backoff(1), SECOND * 30);
        assert_eq!(backoff(2), SECOND * 60);
        assert_eq!(backoff(3), SECOND * 120);
        assert_eq!(backoff(7), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);

        let mut watch = Watch::default();
        let after = SECOND * 5;
        watch.observe(&broken(), t(0), after);
        assert_eq!(watch.observe(&broken(), t(5), after), Verdict::Reseed);
        watch.reseed_failed(t(65));
        assert_eq!(watch.observe(&broken(), t(94), after), Verdict::BackingOff);
        assert_eq!(watch.observe(&broken(), t(95), after), Verdict::Reseed);
        watch.reseed_failed(t(100));
        assert_eq!(watch.observe(&broken(), t(159), after), Verdict::BackingOff);
        assert_eq!(watch.observe(&broken(), t(160), after), Verdict::Reseed);
        // Success forgets the failures: the next outage starts from scratch.
        watch.reseed_succeeded();
        assert_eq!(watch, Watch::default());
    }

    #[test]
    fn the_health_role_comes_from_local_role_and_unknown_is_never_not_a_primary() {
        use crate::failover::role::{DataDir, LastRan};
        let data = |last_ran| DataDir {
            last_ran,
            starts_as_standby: false,
        };
        let answer = |in_recovery: bool, writable: bool| Answered {
            state: ServerState {
                in_recovery,
                writable,
                version: "15.18".into(),
                timeline: Some(2),
                lsn: Some("0/3000060".into()),
            },
            streaming: in_recovery,
            lag_bytes: in_recovery.then_some(0),
            lag_seconds: None,
        };
        // (scenario, local_role's answer, what the server said, role, up, writable)
        let rows = [
            (
                "a primary that answers",
                Some(Role::Primary),
                Some(answer(false, true)),
                "primary",
                true,
                true,
            ),
            (
                "a fenced primary is still a primary",
                Some(Role::FencedPrimary),
                Some(answer(false, false)),
                "primary",
                true,
                false,
            ),
            (
                "a streaming standby",
                Some(Role::Standby),
                Some(answer(true, false)),
                "standby",
                true,
                false,
            ),
            (
                "promoted between the two questions: the later answer wins",
                Some(Role::Standby),
                Some(answer(false, true)),
                "primary",
                true,
                true,
            ),
            (
                "not running",
                Some(Role::Stopped(data(LastRan::Primary))),
                None,
                "stopped",
                false,
                false,
            ),
            (
                "running, not answering, last ran as a standby",
                Some(Role::Unanswered(data(LastRan::Standby), "timeout".into())),
                None,
                "unknown",
                false,
                false,
            ),
            (
                "running, not answering, last ran as a primary",
                Some(Role::Unanswered(data(LastRan::Primary), "timeout".into())),
                None,
                "unknown",
                false,
                false,
            ),
            (
                "answered the role, then stopped answering",
                Some(Role::Primary),
                None,
                "unknown",
                false,
                false,
            ),
            (
                "the role could not be read at all",
                None,
                None,
                "unknown",
                false,
                false,
            ),
        ];
        for (scenario, role, answered, name, up, writable) in rows {
            let probe = local_probe(role.as_ref(), answered);
            assert_eq!(
                (probe.role, probe.up, probe.writable),
                (name, up, writable),
                "{scenario}"
            );
        }
    }

    fn standby(streaming: bool, lag: u64) -> LocalProbe {
        LocalProbe {
            up: true,
            in_recovery: true,
            streaming,
            lag_bytes: Some(lag),
            role: "standby",
            ..LocalProbe::default()
        }
    }

    #[test]
    fn health_checks_answer_like_patroni_for_each_role() {
        let primary = LocalProbe {
            up: true,
            writable: true,
            role: "primary",
            ..LocalProbe::default()
        };
        let fenced = LocalProbe {
            writable: false,
            ..primary.clone()
        };
        let stopped = LocalProbe {
            role: "stopped",
            ..LocalProbe::default()
        };
        let cases = [
            ("/primary", None, &primary, 200),
            ("/", None, &primary, 200),
            ("/read-write", None, &fenced, 503),
            ("/replica", None, &primary, 503),
            ("/health", None, &primary, 200),
            ("/primary", None, &standby(true, 0), 503),
            ("/replica", None, &standby(true, 0), 200),
            ("/replica", None, &standby(false, 0), 503),
            ("/replica", Some(1024), &standby(true, 1024), 200),
            ("/replica", Some(1023), &standby(true, 1024), 503),
            ("/read-only", None, &standby(true, 0), 200),
            ("/read-only", None, &fenced, 503),
            ("/health", None, &standby(false, 0), 200),
            ("/health", None, &stopped, 503),
            ("/primary", None, &stopped, 503),
            ("/replica", None, &stopped, 503),
        ];
        for (path, lag, probe, want) in cases {
            assert_eq!(
                check_status(path, lag, probe),
                Some(want),
                "{path} lag {lag:?} on {probe:?}"
            );
        }
        assert_eq!(check_status("/metrics2", None, &primary), None);
    }

    #[test]
    fn lag_limits_are_read_like_patroni_reads_them() {
        assert_eq!(parse_lag("0"), Some(0));
        assert_eq!(parse_lag("1048576"), Some(1 << 20));
        assert_eq!(parse_lag("16MB"), Some(16 << 20));
        assert_eq!(parse_lag("64kB"), Some(64 << 10));
        assert_eq!(parse_lag("1GB"), Some(1 << 30));
        for bad in [
            "",
            "MB",
            "-1",
            "1.5MB",
            "10 MB",
            "1PB",
            "99999999999999999999",
        ] {
            assert_eq!(parse_lag(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn metrics_are_prometheus_text_and_unknown_values_are_left_out() {
        let metrics = Metrics {
            reseeds_total: 2,
            reseed_failures_total: 1,
            reseed_failures_in_a_row: 0,
            last_reseed_seconds: Some(12.5),
            last_reseed_bytes: Some(4096),
            snapshots: Some(3),
            newest_snapshot: Some(t(0)),
            newest_verified: Some(t(30)),
            state: DaemonState::default(),
        };
        let text = metrics_text("pg", "db2", &standby(true, 8192), &metrics, t(90));
        for line in [
            "pgzfs_role{cluster=\"pg\",node=\"db2\",role=\"standby\"} 1",
            "pgzfs_role{cluster=\"pg\",node=\"db2\",role=\"primary\"} 0",
            "pgzfs_lag_bytes{cluster=\"pg\",node=\"db2\"} 8192",
            "pgzfs_last_snapshot_age_seconds{cluster=\"pg\",node=\"db2\"} 90",
            "pgzfs_snapshots{cluster=\"pg\",node=\"db2\"} 3",
            "pgzfs_last_verified_snapshot_age_seconds{cluster=\"pg\",node=\"db2\"} 60",
            "pgzfs_last_reseed_duration_seconds{cluster=\"pg\",node=\"db2\"} 12.5",
            "pgzfs_last_reseed_bytes{cluster=\"pg\",node=\"db2\"} 4096",
            "pgzfs_reseeds_total{cluster=\"pg\",node=\"db2\"} 2",
            "pgzfs_reseed_failures_total{cluster=\"pg\",node=\"db2\"} 1",
            "pgzfs_reseed_failures_in_a_row{cluster=\"pg\",node=\"db2\"} 0",
            "# TYPE pgzfs_reseeds_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // No lag_seconds sample: the probe did not know it.
        assert!(!text.contains("pgzfs_lag_seconds{"), "{text}");
        // Without a quorum view (no daemon answering yet) the quorum gauges are left out.
        assert!(!text.contains("pgzfs_quorum_voters{"), "{text}");
    }

    #[test]
    fn metrics_show_this_nodes_view_of_the_quorum() {
        let mut metrics = Metrics::default();
        metrics.state.quorum = Some(View {
            node: "db1".into(),
            role: "data".into(),
            unseen_seconds: [("db2".to_string(), 0.4), ("w1".to_string(), 12.0)].into(),
            reachable_voters: vec!["db1".into(), "db2".into()],
            voters: 3,
            has_majority: true,
            fenced_isolated: false,
            postgres: Some("running".into()),
        });
        let text = metrics_text("pg", "db1", &LocalProbe::default(), &metrics, t(0));
        for line in [
            "pgzfs_quorum_voters{cluster=\"pg\",node=\"db1\"} 3",
            "pgzfs_quorum_reachable_voters{cluster=\"pg\",node=\"db1\"} 2",
            "pgzfs_quorum_has_majority{cluster=\"pg\",node=\"db1\"} 1",
            "pgzfs_fenced_isolated{cluster=\"pg\",node=\"db1\"} 0",
            "pgzfs_quorum_unseen_seconds{cluster=\"pg\",node=\"db1\",peer=\"w1\"} 12",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

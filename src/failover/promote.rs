//! Promotion: turn this standby into the primary, but only after making sure no other
//! node still is one (the check repmgr #90 lacked), with a snapshot to undo a wrong
//! promotion and a new cluster epoch that marks every older primary as outdated.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::seam::{LocalServer, Postgres, RealPostgres, Session};
use crate::config::{Config, Node};
use crate::context::{Context, Handles};
use crate::datasets::ClusterDatasets;
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::pg::ctl::PgCtl;
use crate::promotion_grant::START_WITHIN;
use crate::quorum::{LeaseVerdict, PeerQuorum, Quorum};
use crate::zfs::names::SnapName;
use crate::zfs::{prop, Zfs};

#[derive(Debug, Serialize)]
pub struct Promoted {
    pub node: String,
    /// False when this node already was the primary (nothing was done).
    pub promoted: bool,
    pub prepromote_snapshot: Option<String>,
    pub epoch: Option<u64>,
    pub fork_lsn: Option<String>,
    pub lag_bytes: u64,
    pub seconds: f64,
}

impl Promoted {
    fn nothing_done(node: &str) -> Promoted {
        Promoted {
            node: node.to_string(),
            promoted: false,
            prepromote_snapshot: None,
            epoch: None,
            fork_lsn: None,
            lag_bytes: 0,
            seconds: 0.0,
        }
    }
}

/// What one other node answered to "are you a writable primary?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAnswer {
    /// It answered and accepts writes.
    Writable,
    /// It answered and is in recovery, or a primary fenced read-only: positive evidence
    /// that it takes no writes.
    NotPrimary,
    /// It could not be asked, and why. Unknown is not "no": a partitioned primary looks
    /// exactly like a dead one from here.
    Unknown(String),
}

/// Every other data node's answer, each asked on a fresh connection (a pooled one could
/// be the very connection that hides a comeback).
pub fn ask_peers(config: &Config, local: &Node, pg: &dyn Postgres) -> Vec<(String, PeerAnswer)> {
    // All nodes at once: a dead host costs one connect timeout per round, not one each.
    crate::cluster::ask_each_other_node(
        config,
        local,
        |node| {
            // The node's daemon is asked alongside, so that an unreachable node costs one
            // timeout, not two.
            std::thread::scope(|inner| {
                let daemon = inner.spawn(|| stopped_says_its_daemon(config, node));
                match pg.connect(node).and_then(|mut s| s.is_writable()) {
                    Ok(true) => PeerAnswer::Writable,
                    Ok(false) => PeerAnswer::NotPrimary,
                    Err(e) => daemon
                        .join()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| PeerAnswer::Unknown(e.to_string())),
                }
            })
        },
        // A check that panicked is not an answer.
        || PeerAnswer::Unknown("the check panicked".into()),
    )
    .into_iter()
    .map(|(node, answer)| (node.name.clone(), answer))
    .collect()
}

/// PostgreSQL does not answer, but the node's daemon may: when it says no postmaster runs
/// there, that is positive evidence (the daemon never starts a primary by itself).
fn stopped_says_its_daemon(config: &Config, node: &Node) -> Option<PeerAnswer> {
    let voter = config.voters().into_iter().find(|v| v.name == node.name)?;
    let view = crate::quorum::ask(&voter, None).ok()?;
    (view.postgres.as_deref() == Some("stopped")).then(|| {
        tracing::info!(
            "{}: PostgreSQL does not answer, and its daemon says it is not running",
            node.name
        );
        PeerAnswer::NotPrimary
    })
}

/// What one round of answers means for a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerVerdict {
    /// Every other node answered, and none takes writes.
    Clear,
    /// These nodes answered as writable primaries: promoting would make two.
    Writable(Vec<String>),
    /// Nobody answered as writable, but these could not be asked (name, why). They may
    /// be primaries still; only other evidence (the quorum's lease, the operator's
    /// --force) can settle that.
    Unknown(Vec<(String, String)>),
}

/// Judge one round of answers. Only positive evidence counts as "not a primary".
pub fn judge(answers: &[(String, PeerAnswer)]) -> PeerVerdict {
    let writable: Vec<String> = answers
        .iter()
        .filter(|(_, a)| *a == PeerAnswer::Writable)
        .map(|(n, _)| n.clone())
        .collect();
    if !writable.is_empty() {
        return PeerVerdict::Writable(writable);
    }
    let unknown: Vec<(String, String)> = answers
        .iter()
        .filter_map(|(n, a)| match a {
            PeerAnswer::Unknown(why) => Some((n.clone(), why.clone())),
            _ => None,
        })
        .collect();
    if unknown.is_empty() {
        PeerVerdict::Clear
    } else {
        PeerVerdict::Unknown(unknown)
    }
}

/// The refusal for nodes nobody could ask, naming what the operator can do.
pub fn unknown_refusal(unknown: &[(String, String)], local: &str, why_not_settled: &str) -> Error {
    let names: Vec<String> = unknown
        .iter()
        .map(|(n, why)| format!("{n} ({why})"))
        .collect();
    Error::refused(format!(
        "cannot tell whether {} is still a primary: it does not answer, and an unreachable node \
         is not thereby \"not a primary\" (a partitioned primary keeps taking writes). {why_not_settled}. \
         Not promoting {local}. Make sure it is down or fenced, then use --force",
        names.join(", ")
    ))
}

/// Wait until the quorum's lease on every node in `unknown` has expired, for at most
/// the lease plus a few looks (a primary that really is gone is missed by then); refuse
/// when a majority does not agree by then.
fn wait_for_leases(ctx: &Context, unknown: &[(String, String)], checks: &PeerChecks) -> Result<()> {
    let quorum = checks.quorum;
    let lease = crate::quorum::lease(ctx.config.isolation_timeout);
    let deadline = Instant::now() + lease + Duration::from_secs(5);
    let names: Vec<&str> = unknown.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(
        "{} do not answer; waiting for a majority of the voters to agree they have been out of contact \
         for longer than the lease ({:.0}s: isolation_timeout {:.0}s plus {:.0}s)",
        names.join(", "),
        lease.as_secs_f64(),
        ctx.config.isolation_timeout.as_secs_f64(),
        crate::quorum::LEASE_MARGIN.as_secs_f64()
    );
    loop {
        // Ask again each time: a node that answers as a writable primary ends the wait
        // at once, and one that answers as no primary needs no lease.
        // The voters are asked at the same time, so that one round costs one timeout.
        let (answers, leases) = std::thread::scope(|scope| {
            let leases = scope.spawn(|| {
                names
                    .iter()
                    .map(|n| (*n, quorum.primary_lease(n)))
                    .collect::<Vec<(&str, LeaseVerdict)>>()
            });
            let answers = (checks.ask)();
            (answers, leases.join().unwrap_or_default())
        });
        let still_unknown: Vec<String> = match judge(&answers) {
            PeerVerdict::Writable(others) => {
                return Err(Error::refused(format!(
                    "{} answers as a writable primary again; promoting {} would make two",
                    others.join(", "),
                    ctx.local.name
                )))
            }
            PeerVerdict::Clear => Vec::new(),
            // Every node that cannot be asked now, including one that answered before.
            PeerVerdict::Unknown(now) => now.into_iter().map(|(n, _)| n).collect(),
        };
        match leases_settle(&still_unknown, &leases) {
            Ok(()) => {
                for (node, verdict) in leases
                    .iter()
                    .filter(|(n, _)| still_unknown.iter().any(|u| u == n))
                {
                    tracing::info!("lease on {node} expired: {}", verdict.describe(node));
                }
                return Ok(());
            }
            Err(why) if Instant::now() >= deadline => {
                return Err(unknown_refusal(
                    unknown,
                    &ctx.local.name,
                    &format!(
                        "No majority of the voters agrees it is gone: {}",
                        why.join("; ")
                    ),
                ));
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Whether every node that cannot be asked now has a lease the majority says expired.
/// A node without a verdict (its lease could not be judged, or it stopped answering only
/// after the verdicts were asked for) is not settled: unknown is not "gone". Err lists
/// what is missing.
fn leases_settle(
    still_unknown: &[String],
    leases: &[(&str, LeaseVerdict)],
) -> std::result::Result<(), Vec<String>> {
    let missing: Vec<String> = still_unknown
        .iter()
        .filter_map(|node| match leases.iter().find(|(n, _)| n == node) {
            Some((_, verdict)) if verdict.expired => None,
            Some((_, verdict)) => Some(verdict.describe(node)),
            None => Some(format!("no verdict on the lease of {node}")),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

/// How promote finds out whether another node is a primary: every other node asked
/// (`ask_peers` in real life), and the voters' verdict on the leases of those that do
/// not answer.
pub struct PeerChecks<'a> {
    pub ask: &'a (dyn Fn() -> Vec<(String, PeerAnswer)> + Sync),
    pub quorum: &'a (dyn Quorum + Sync),
    /// How long to keep asking for the promotion grant ([`GRANT_RACE`] in real life).
    pub grant_race: Duration,
}

/// Promote this node. The caller holds the node's lock.
pub fn promote(ctx: &Context, force: bool) -> Result<Promoted> {
    let pg = RealPostgres;
    let server = match PgCtl::for_node(&ctx.local) {
        Ok(server) => server,
        Err(e) => {
            events::emit_failure(&ctx.config, &ctx.local.name, "promote", &e, None);
            return Err(e);
        }
    };
    let ask = || ask_peers(&ctx.config, &ctx.local, &pg);
    let checks = PeerChecks {
        ask: &ask,
        quorum: &PeerQuorum::new(&ctx.config),
        grant_race: GRANT_RACE,
    };
    promote_with(ctx, force, &pg, &server, &checks)
}

/// `promote` over the seams given.
pub fn promote_with(
    ctx: &Context,
    force: bool,
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    checks: &PeerChecks,
) -> Result<Promoted> {
    let started = Instant::now();
    let local = &ctx.local;
    let result = match preflight(ctx, force, pg, server, checks) {
        Ok(Preflight::AlreadyPrimary) => Ok(Promoted::nothing_done(&local.name)),
        Ok(Preflight::Go {
            session,
            lag_bytes,
            settled,
        }) => match claim_grant(ctx, force, checks, &settled) {
            Ok(grant) => {
                let made = make_primary(ctx, pg, server, session, lag_bytes, started, grant);
                if grant.is_some() {
                    // Promoted or not, the next candidate need not wait for the ttl: a
                    // new primary answers as writable to its checks from now on.
                    checks.quorum.release_grant(&local.name);
                }
                made
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match &result {
        Ok(done) if done.promoted => events::emit(
            &ctx.config,
            Event::new(
                "promote",
                &local.name,
                true,
                format!(
                    "epoch {}, fork at {}",
                    done.epoch.unwrap_or_default(),
                    done.fork_lsn.as_deref().unwrap_or("?")
                ),
                None,
            ),
        ),
        Ok(_) => {}
        Err(e) => events::emit_failure(&ctx.config, &local.name, "promote", e, None),
    }
    result
}

/// What the checks before a promotion found.
pub enum Preflight {
    /// This node already is the primary: nothing to do.
    AlreadyPrimary,
    /// Safe to promote: the session with this standby, and its replay lag.
    Go {
        session: Box<dyn Session>,
        lag_bytes: u64,
        /// Nodes that did not answer and whose lease the majority said expired.
        settled: Vec<String>,
    },
}

/// Everything that decides whether this node may be promoted; changes nothing.
pub fn preflight(
    ctx: &Context,
    force: bool,
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    checks: &PeerChecks,
) -> Result<Preflight> {
    let local = &ctx.local;
    if !server.is_running() {
        return Err(Error::refused(format!(
            "PostgreSQL on {} is not running; only a running standby can be promoted",
            local.name
        )));
    }
    let mut session = pg.connect(local)?;
    if !session.is_in_recovery()? {
        tracing::info!("{} already is the primary", local.name);
        return Ok(Preflight::AlreadyPrimary);
    }

    // Nobody else may be a primary: ask every node, several times, on fresh connections.
    // --force skips the asking (switchover uses it after stopping the old primary itself).
    let attempts = if force {
        0
    } else {
        local.failover.promote_check_attempts
    };
    // Nodes that do not answer are settled only by the quorum's lease: a majority of
    // the voters has missed them for longer than isolation_timeout plus the margin, so
    // that, had one of them been a primary, it has fenced itself by now.
    let mut settled: Vec<String> = Vec::new();
    for attempt in 1..=attempts {
        match judge(&(checks.ask)()) {
            PeerVerdict::Writable(others) => {
                return Err(Error::refused(format!(
                    "{} answers as a writable primary (check {attempt} of {}); promoting {} would make two. \
                     Fence it first, or use --force if you are sure it is gone",
                    others.join(", "),
                    local.failover.promote_check_attempts,
                    local.name
                )))
            }
            PeerVerdict::Unknown(unknown) => {
                let unsettled: Vec<(String, String)> = unknown
                    .into_iter()
                    .filter(|(n, _)| !settled.contains(n))
                    .collect();
                if !unsettled.is_empty() {
                    wait_for_leases(ctx, &unsettled, checks)?;
                    settled.extend(unsettled.into_iter().map(|(n, _)| n));
                }
            }
            PeerVerdict::Clear => {}
        }
        tracing::info!(
            "check {attempt}/{}: no other node is a writable primary{}",
            local.failover.promote_check_attempts,
            if settled.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} unreachable, and the majority's lease on it expired)",
                    settled.join(", ")
                )
            }
        );
        if attempt < local.failover.promote_check_attempts {
            std::thread::sleep(local.failover.promote_check_interval);
        }
    }
    if force {
        tracing::warn!(
            "--force: not asking the other nodes whether one of them is still a primary"
        );
    }

    let lag_bytes = session.replay_lag_bytes()?;
    lag_allows(
        &local.name,
        lag_bytes,
        local.failover.max_lag_on_failover,
        force,
    )?;
    Ok(Preflight::Go {
        session,
        lag_bytes,
        settled,
    })
}

/// How long a candidate keeps asking for the grant when the vote is split or another
/// candidate holds it: long enough for a rival to finish promoting (its last look then
/// finds it writable), short enough for a CARP event.
pub const GRANT_RACE: Duration = Duration::from_secs(10);

/// Collect a majority of the voters' promotion grants (see [`crate::promotion_grant`]):
/// with two standbys deciding at the same moment, only one goes on. Ok(None) when the
/// quorum is off (nothing but CARP's election keeps two candidates apart then), or
/// when --force goes on without voters to ask. Ok(Some(when the grant was asked for))
/// otherwise; the promotion must start within [`START_WITHIN`] of it.
pub fn claim_grant(
    ctx: &Context,
    force: bool,
    checks: &PeerChecks,
    settled: &[String],
) -> Result<Option<Instant>> {
    let me = &ctx.local.name;
    let deadline = Instant::now() + checks.grant_race;
    let mut round = 0u32;
    loop {
        round += 1;
        let asked_at = Instant::now();
        let Some(verdict) = checks.quorum.request_grant(me) else {
            tracing::warn!(
                "the quorum is off: no promotion grant is asked for, so nothing but CARP's election \
                 keeps two standbys from promoting at the same moment (docs/ha.md)"
            );
            return Ok(None);
        };
        if verdict.won() {
            tracing::info!("promotion grant: {}", verdict.describe());
            if !force {
                // A last look: a rival that held the grant before may be a primary now.
                if let Err(e) = last_look(me, checks, settled) {
                    checks.quorum.release_grant(me);
                    return Err(e);
                }
            }
            return Ok(Some(asked_at));
        }
        // Give back what was granted, so that a split vote can resolve.
        checks.quorum.release_grant(me);
        let rivals = verdict.rivals();
        if force && rivals.is_empty() {
            tracing::warn!(
                "--force: promoting without a majority of promotion grants: {}",
                verdict.describe()
            );
            return Ok(None);
        }
        if Instant::now() >= deadline {
            let why = if rivals.is_empty() {
                "no majority of the voters could grant it (is pgzfs daemon running on \
                 them? --force goes on without it)"
                    .to_string()
            } else {
                format!("{} is being promoted", rivals.join(", "))
            };
            return Err(Error::refused(format!(
                "{me} did not get the promotion grant: {why} ({}). Not promoting {me}",
                verdict.describe()
            )));
        }
        tracing::info!(
            "promotion grant not won (round {round}): {}; asking again",
            verdict.describe()
        );
        std::thread::sleep(jitter(round));
    }
}

/// A random pause between rounds of asking for the grant: two candidates that split the
/// vote must not keep asking in step.
fn jitter(round: u32) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = nanos ^ std::process::id().wrapping_mul(2_654_435_761) ^ round;
    Duration::from_millis(200 + u64::from(seed % 800))
}

/// With the grant held: every other node asked once more. One that answers as writable,
/// or one that stopped answering and has no expired lease, ends the promotion.
fn last_look(me: &str, checks: &PeerChecks, settled: &[String]) -> Result<()> {
    match judge(&(checks.ask)()) {
        PeerVerdict::Writable(others) => Err(Error::refused(format!(
            "{} answers as a writable primary now; promoting {me} would make two",
            others.join(", ")
        ))),
        PeerVerdict::Unknown(unknown) => {
            let new: Vec<(String, String)> = unknown
                .into_iter()
                .filter(|(n, _)| !settled.contains(n))
                .collect();
            if new.is_empty() {
                Ok(())
            } else {
                Err(unknown_refusal(
                    &new,
                    me,
                    "It stopped answering after the checks",
                ))
            }
        }
        PeerVerdict::Clear => Ok(()),
    }
}

/// Replay must be within `max_lag_on_failover` of the WAL received, or the operator
/// vouches for the loss with --force.
pub fn lag_allows(node: &str, lag_bytes: u64, max_lag: u64, force: bool) -> Result<()> {
    if lag_bytes > max_lag {
        if !force {
            return Err(Error::refused(format!(
                "replay on {node} is {lag_bytes} bytes behind the last WAL received (max_lag_on_failover = {max_lag}); \
                 promoting now would lose those transactions. Wait for replay, or use --force"
            )));
        }
        tracing::warn!("--force: promoting with {lag_bytes} bytes not replayed");
    }
    Ok(())
}

/// The promotion itself, once the preflight allowed it: undo snapshot, promote, wait for
/// writes, new epoch.
fn make_primary(
    ctx: &Context,
    pg: &dyn Postgres,
    server: &dyn LocalServer,
    mut session: Box<dyn Session>,
    lag_bytes: u64,
    started: Instant,
    grant: Option<Instant>,
) -> Result<Promoted> {
    let local = &ctx.local;
    // The other nodes' epochs are asked for while PostgreSQL promotes: a dead node costs
    // a connect timeout, which must not delay the failover, and the epoch should be on
    // the dataset moments after the server accepts writes.
    let epoch_lookup = {
        let (config, local, handles) = (ctx.config.clone(), local.clone(), ctx.handles());
        std::thread::spawn(move || next_epoch(&config, &local, &handles))
    };
    let zfs = ctx.local_zfs()?;

    // An undo point: the standby exactly as it was before it became a primary.
    let snap = SnapName::parse(&format!(
        "pgzfs-prepromote-{}",
        crate::timestamp::utc_compact(SystemTime::now())
    ))?;
    let prepromote = local.dataset.snapshot(&snap);
    // Of every dataset of the cluster: pg_wal's child and the tablespaces go back too.
    let cluster = ClusterDatasets::discover(&*zfs, &local.dataset, &local.tablespaces)?;
    crate::datasets::snapshot_cut(&*zfs, &cluster, &snap, &[])?;

    let fork_lsn = session
        .replay_lsn()?
        .map(|l| l.to_string())
        .unwrap_or_default();
    let fork_timeline = session.timeline()?;
    let major = session.major();
    if let Some(asked) = grant {
        // The voters keep to this grant for a limited time; promoting on one that may
        // run out while PostgreSQL promotes would let another candidate in.
        if asked.elapsed() > START_WITHIN {
            return Err(Error::refused(format!(
                "{} took {:.1}s from the promotion grant to the promotion (at most {:.0}s): \
                 not promoting on a grant that may run out; try again",
                local.name,
                asked.elapsed().as_secs_f64(),
                START_WITHIN.as_secs_f64()
            )));
        }
    }
    if major >= 12 {
        if let Err(e) = session.promote(local.failover.promote_timeout) {
            // pg_promote() needs a grant the replication role may lack; pg_ctl does not.
            tracing::info!("pg_promote() was refused ({e}); using pg_ctl promote");
            server.promote(local.failover.promote_timeout)?;
        }
    } else {
        server.promote(local.failover.promote_timeout)?;
    }
    drop(session);
    wait_until_writable(pg, local, local.failover.promote_timeout)?;

    let epoch = epoch_lookup
        .join()
        .map_err(|_| Error::failed("the epoch lookup panicked"))??;
    zfs.set_dataset_props(
        &local.dataset,
        &[
            (prop::EPOCH, epoch.to_string()),
            (prop::FORK_LSN, fork_lsn.clone()),
            (prop::FORK_TIMELINE, fork_timeline.to_string()),
        ],
    )?;
    tracing::info!(
        "{} is the primary now: epoch {epoch}, forked from timeline {fork_timeline} at {fork_lsn}",
        local.name
    );
    Ok(Promoted {
        node: local.name.clone(),
        promoted: true,
        prepromote_snapshot: Some(prepromote.to_string()),
        epoch: Some(epoch),
        fork_lsn: Some(fork_lsn),
        lag_bytes,
        seconds: crate::steps::round(started.elapsed().as_secs_f64()),
    })
}

/// Wait until `node` accepts writes, asking on a fresh connection each time.
pub fn wait_until_writable(pg: &dyn Postgres, node: &Node, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match pg.connect(node).and_then(|mut s| s.is_writable()) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => tracing::debug!("waiting for {} to accept writes: {e}", node.name),
        }
        if Instant::now() >= deadline {
            return Err(Error::failed(format!(
                "{} did not become writable within {timeout:?}",
                node.name
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One more than the highest epoch this node can see: its own, and every reachable
/// node's (over SSH, best effort: an unreachable node cannot hold a newer epoch than the
/// one that is being superseded right now without also being the primary we checked for).
fn next_epoch(config: &Config, local: &Node, handles: &Handles) -> Result<u64> {
    let mut highest = handles
        .local_zfs()?
        .get_number(local.dataset.as_str(), prop::EPOCH)?
        .unwrap_or(0);
    for node in config.other_nodes(local) {
        match handles
            .remote_zfs(node)
            .and_then(|zfs| zfs.get_number(node.dataset.as_str(), prop::EPOCH))
        {
            Ok(Some(epoch)) => highest = highest.max(epoch),
            Ok(None) => {}
            Err(e) => tracing::debug!("epoch of {} unknown: {e}", node.name),
        }
    }
    Ok(highest + 1)
}

/// This node's epoch, from its dataset.
pub fn local_epoch(ctx: &Context) -> Result<u64> {
    Ok(ctx
        .local_zfs()?
        .get_number(ctx.local.dataset.as_str(), prop::EPOCH)?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_promotion_waits_until_every_unknown_node_has_an_expired_lease() {
        let verdict = |expired| LeaseVerdict {
            expired,
            agreeing: vec![],
            needed: 2,
            unanswered: vec![],
        };
        let unknown = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(
            leases_settle(&unknown(&[]), &[]).is_ok(),
            "everyone answered"
        );
        assert!(leases_settle(&unknown(&["db1"]), &[("db1", verdict(true))]).is_ok());
        assert!(leases_settle(&unknown(&["db1"]), &[("db1", verdict(false))]).is_err());
        // The verdicts could not be had (their thread died): nothing is settled.
        assert!(leases_settle(&unknown(&["db1"]), &[]).is_err());
        // db3 answered before and stops answering now: it has no verdict yet.
        let why = leases_settle(&unknown(&["db1", "db3"]), &[("db1", verdict(true))]).unwrap_err();
        assert_eq!(why, ["no verdict on the lease of db3"]);
    }

    use super::*;

    fn answers(list: &[(&str, PeerAnswer)]) -> Vec<(String, PeerAnswer)> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect()
    }

    fn unknown(why: &str) -> PeerAnswer {
        PeerAnswer::Unknown(why.into())
    }

    #[test]
    fn only_an_answer_proves_a_node_is_not_a_primary() {
        use PeerAnswer::*;
        let cases = [
            // Everyone answers, nobody writable: the only clear case.
            (
                vec![("db1", NotPrimary), ("db3", NotPrimary)],
                PeerVerdict::Clear,
            ),
            (vec![], PeerVerdict::Clear),
            // The partitioned primary: no answer is not "no" (issue 16).
            (
                vec![("db1", unknown("timeout")), ("db3", NotPrimary)],
                PeerVerdict::Unknown(vec![("db1".into(), "timeout".into())]),
            ),
            // A writable answer wins over any unknown: there is a primary for sure.
            (
                vec![("db1", unknown("refused")), ("db3", Writable)],
                PeerVerdict::Writable(vec!["db3".into()]),
            ),
            (
                vec![("db1", Writable), ("db3", Writable)],
                PeerVerdict::Writable(vec!["db1".into(), "db3".into()]),
            ),
        ];
        for (list, want) in cases {
            assert_eq!(judge(&answers(&list)), want, "{list:?}");
        }
    }

    #[test]
    fn the_refusal_for_an_unreachable_node_names_it_and_the_way_out() {
        let e = unknown_refusal(
            &[("db1".into(), "connect timeout".into())],
            "db2",
            "no majority agrees it is gone",
        );
        assert_eq!(e.exit_code(), 3);
        for part in [
            "db1 (connect timeout)",
            "not promoting db2",
            "--force",
            "no majority",
        ] {
            assert!(
                e.message().to_lowercase().contains(&part.to_lowercase()),
                "{part:?} in {}",
                e.message()
            );
        }
    }
}

//! The safety decisions of the failover runbooks, scenario by scenario, over fakes of the
//! PostgreSQL seam. Each row is one situation an operator can meet, named so that a
//! failure reads as the scenario that broke. The fakes answer at once: the whole file
//! runs in well under a second.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::carp::{backup_action, master_action, BackupAction, MasterAction};
use super::follow::check_follow;
use super::promote::{claim_grant, preflight, PeerAnswer, PeerChecks, Preflight};
use super::rejoin::check_rejoin;
use super::role::{local_role, LastRan, Role};
use super::seam::fake::{FakeLocal, FakePostgres, FakeServer};
use super::switchover::{after_failed_promote, check_switchover, target_seen, AfterFailedPromote};
use crate::config::{Config, Node};
use crate::context::Context;
use crate::error::{Kind, Result};
use crate::pg::control::ClusterState;
use crate::promotion_grant::GrantVerdict;
use crate::quorum::{LeaseVerdict, Quorum, View};

/// Three data nodes. One check round (no sleeping between rounds), 1 KiB of replay lag
/// allowed on failover, 4 KiB for a switchover.
fn cluster(local: &str) -> Context {
    let text = r#"
cluster = "pg"
[defaults]
dataset = "tank/pgdata"
data_dir = "/var/db/postgres/data15"
promote_check_attempts = 1
max_lag_on_failover = 1024
switchover_max_lag = 4096
[[nodes]]
name = "db1"
host = "db1.example.net"
[[nodes]]
name = "db2"
host = "db2.example.net"
[[nodes]]
name = "db3"
host = "db3.example.net"
"#;
    let config = Config::parse(text, Path::new("/etc/pgzfs.toml")).expect("test config");
    let local = config.node(local).expect("local node").clone();
    Context { config, local }
}

fn node(ctx: &Context, name: &str) -> Node {
    ctx.config.node(name).expect("node").clone()
}

/// An outcome as a line to compare: "ok", or "refused: ...", "failed: ..." (exit 3 or 1).
fn said<T>(result: &Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => match e.kind() {
            Kind::Refused => format!("refused: {}", e.message()),
            Kind::Failed => format!("failed: {}", e.message()),
            Kind::Usage => format!("usage: {}", e.message()),
        },
    }
}

/// `want` is "ok", or the kind and a part of the message ("refused: fence it first").
fn assert_said<T>(scenario: &str, result: &Result<T>, want: &str) {
    let got = said(result);
    let (kind, part) = want.split_once(": ").unwrap_or((want, ""));
    assert!(
        got.starts_with(kind) && got.contains(part),
        "{scenario}: wanted {want:?}, got {got:?}"
    );
}

fn local(running: bool, control: Option<ClusterState>) -> FakeLocal {
    FakeLocal {
        running,
        control,
        ..FakeLocal::default()
    }
}

const PRODUCTION: Option<ClusterState> = Some(ClusterState::InProduction);
const RECOVERY: Option<ClusterState> = Some(ClusterState::InArchiveRecovery);
const SHUT_DOWN: Option<ClusterState> = Some(ClusterState::ShutDown);
const SHUT_DOWN_IN_RECOVERY: Option<ClusterState> = Some(ClusterState::ShutDownInRecovery);

#[test]
fn local_role_never_takes_an_unanswered_server_for_a_standby_without_its_control_file() {
    // (scenario, this node's server, what its PostgreSQL answers (None: nothing),
    //  the role acted on, the name status shows)
    let rows: Vec<(&str, FakeLocal, Option<FakeServer>, Role, &str)> = vec![
        (
            "a running standby that answers",
            local(true, RECOVERY),
            Some(FakeServer::standby()),
            Role::Standby,
            "standby",
        ),
        (
            "a running primary that answers",
            local(true, PRODUCTION),
            Some(FakeServer::primary()),
            Role::Primary,
            "primary",
        ),
        (
            "a primary fenced read-only",
            local(true, PRODUCTION),
            Some(FakeServer::fenced_primary()),
            Role::FencedPrimary,
            "primary",
        ),
        (
            "running, not answering, pg_control says in production: a primary",
            local(true, PRODUCTION),
            None,
            Role::Primary,
            "unknown",
        ),
        (
            "running, not answering, no pg_control at all: a primary",
            local(true, None),
            None,
            Role::Primary,
            "unknown",
        ),
        (
            "running, not answering, pg_control says in recovery: a standby",
            local(true, RECOVERY),
            None,
            Role::Standby,
            "unknown",
        ),
    ];
    let ctx = cluster("db2");
    for (scenario, server, answers, want, name) in rows {
        let pg = FakePostgres::with(&[("db2", answers)]);
        let role = local_role(&pg, &server, &ctx.local).expect(scenario);
        assert_eq!(role.name(), name, "{scenario}");
        assert_eq!(role.assumed(), want, "{scenario}");
    }
}

#[test]
fn a_stopped_server_is_judged_by_its_data_directory_and_an_unreadable_one_is_not_guessed() {
    // (scenario, pg_control state, standby.signal, last ran as, starts in recovery)
    let rows = [
        (
            "a stopped standby",
            SHUT_DOWN_IN_RECOVERY,
            true,
            LastRan::Standby,
            true,
        ),
        (
            "a former primary, stopped by its fence",
            SHUT_DOWN,
            false,
            LastRan::Primary,
            false,
        ),
        (
            "a primary that crashed",
            PRODUCTION,
            false,
            LastRan::Primary,
            false,
        ),
        (
            "a received copy of a primary, configured as a standby",
            PRODUCTION,
            true,
            LastRan::Primary,
            true,
        ),
        (
            "no data directory yet",
            None,
            false,
            LastRan::Nothing,
            false,
        ),
    ];
    let ctx = cluster("db2");
    let pg = FakePostgres::default();
    for (scenario, control, signal, last_ran, starts_as_standby) in rows {
        let server = FakeLocal {
            standby_signal: signal,
            ..local(false, control)
        };
        match local_role(&pg, &server, &ctx.local).expect(scenario) {
            Role::Stopped(data) => {
                assert_eq!(data.last_ran, last_ran, "{scenario}");
                assert_eq!(data.starts_as_standby, starts_as_standby, "{scenario}");
            }
            other => panic!("{scenario}: {other:?}"),
        }
    }
    let unreadable = FakeLocal {
        control_unreadable: true,
        ..local(false, PRODUCTION)
    };
    assert!(
        local_role(&pg, &unreadable, &ctx.local).is_err(),
        "an unreadable pg_control is an error, not a guess"
    );
}

#[test]
fn carp_master_promotes_only_a_standby_and_never_over_a_server_it_cannot_ask() {
    // (scenario, this node's server, what it answers, MASTER's decision)
    let rows: Vec<(&str, FakeLocal, Option<FakeServer>, MasterAction)> = vec![
        (
            "a standby takes over the address: promote (after promote's own checks)",
            local(true, RECOVERY),
            Some(FakeServer::standby()),
            MasterAction::Promote,
        ),
        (
            "the primary gets MASTER again: nothing to do",
            local(true, PRODUCTION),
            Some(FakeServer::primary()),
            MasterAction::Nothing,
        ),
        (
            "a primary fenced read-only does not take writes again",
            local(true, PRODUCTION),
            Some(FakeServer::fenced_primary()),
            MasterAction::RefuseFencedPrimary,
        ),
        (
            "a fenced former primary is not started as a primary",
            local(false, SHUT_DOWN),
            None,
            MasterAction::RefuseFormerPrimary,
        ),
        (
            "a stopped standby cannot be promoted",
            local(false, SHUT_DOWN_IN_RECOVERY),
            None,
            MasterAction::RefuseStopped,
        ),
        (
            "running, not answering, pg_control in production: treated as the primary, not promoted",
            local(true, PRODUCTION),
            None,
            MasterAction::Nothing,
        ),
        (
            "running, not answering, pg_control in recovery: a standby, promote decides",
            local(true, RECOVERY),
            None,
            MasterAction::Promote,
        ),
    ];
    let ctx = cluster("db2");
    for (scenario, server, answers, want) in rows {
        let pg = FakePostgres::with(&[("db2", answers)]);
        let role = local_role(&pg, &server, &ctx.local)
            .expect(scenario)
            .assumed();
        assert_eq!(master_action(&role), want, "{scenario}");
    }
}

#[test]
fn carp_backup_fences_every_server_that_takes_or_may_take_writes() {
    // (scenario, this node's server, what it answers, BACKUP's decision)
    let rows: Vec<(&str, FakeLocal, Option<FakeServer>, BackupAction)> = vec![
        (
            "the primary loses the address: fence at once",
            local(true, PRODUCTION),
            Some(FakeServer::primary()),
            BackupAction::Fence,
        ),
        (
            "running, not answering, pg_control in production: fence it",
            local(true, PRODUCTION),
            None,
            BackupAction::Fence,
        ),
        (
            "running, not answering, no pg_control: fence it",
            local(true, None),
            None,
            BackupAction::Fence,
        ),
        (
            "running, not answering, pg_control in recovery: a standby, nothing to fence",
            local(true, RECOVERY),
            None,
            BackupAction::Nothing("is a standby"),
        ),
        (
            "a standby gets BACKUP: nothing to do",
            local(true, RECOVERY),
            Some(FakeServer::standby()),
            BackupAction::Nothing("is a standby"),
        ),
        (
            "a stopped standby: nothing to do",
            local(false, SHUT_DOWN_IN_RECOVERY),
            None,
            BackupAction::Nothing("is a stopped standby"),
        ),
        (
            "BACKUP twice: fenced read-only the first time, it may still rejoin",
            local(true, PRODUCTION),
            Some(FakeServer::fenced_primary()),
            BackupAction::AlreadyFenced("is a primary fenced read-only already"),
        ),
        (
            "BACKUP twice: stopped by the first fence, it may still rejoin",
            local(false, SHUT_DOWN),
            None,
            BackupAction::AlreadyFenced("is a fenced former primary"),
        ),
    ];
    let ctx = cluster("db1");
    for (scenario, server, answers, want) in rows {
        let pg = FakePostgres::with(&[("db1", answers)]);
        let role = local_role(&pg, &server, &ctx.local)
            .expect(scenario)
            .assumed();
        assert_eq!(backup_action(&role), want, "{scenario}");
    }
}

/// The voters' verdict on every lease: expired or not; and their answers to the
/// promotion grant, round by round (the last round repeats).
struct Leases {
    expired: bool,
    grants: Vec<Option<GrantVerdict>>,
    asked: AtomicUsize,
    released: AtomicUsize,
}

impl Leases {
    fn expired(expired: bool) -> Leases {
        Leases::granting(expired, vec![Some(won())])
    }

    fn granting(expired: bool, grants: Vec<Option<GrantVerdict>>) -> Leases {
        Leases {
            expired,
            grants,
            asked: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
        }
    }
}

fn won() -> GrantVerdict {
    GrantVerdict {
        granted_by: vec!["db1".into(), "db2".into(), "db3".into()],
        needed: 2,
        ..GrantVerdict::default()
    }
}

fn lost_to(rival: &str) -> GrantVerdict {
    GrantVerdict {
        granted_by: vec!["db2".into()],
        held_by_other: vec![("db1".into(), rival.into()), ("db3".into(), rival.into())],
        needed: 2,
        ..GrantVerdict::default()
    }
}

fn nobody_answers() -> GrantVerdict {
    GrantVerdict {
        unanswered: vec![
            ("db1".into(), "timed out".into()),
            ("db3".into(), "timed out".into()),
        ],
        granted_by: vec!["db2".into()],
        needed: 2,
        ..GrantVerdict::default()
    }
}

impl Quorum for Leases {
    fn views(&self) -> Vec<(String, std::result::Result<View, String>)> {
        Vec::new()
    }
    fn has_majority(&self, _: &str) -> bool {
        true
    }
    fn primary_lease(&self, _: &str) -> LeaseVerdict {
        LeaseVerdict {
            expired: self.expired,
            agreeing: vec!["db2".into(), "db3".into()],
            needed: 2,
            unanswered: vec![],
        }
    }
    fn request_grant(&self, _: &str) -> Option<GrantVerdict> {
        let round = self
            .asked
            .fetch_add(1, Ordering::SeqCst)
            .min(self.grants.len() - 1);
        self.grants[round].clone()
    }
    fn release_grant(&self, _: &str) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn of_two_standbys_promoting_at_once_only_the_one_with_a_majority_of_grants_goes_on() {
    use PeerAnswer::{NotPrimary, Unknown, Writable};
    // (scenario, --force, the grant rounds, the others' answers at the last look, nodes
    //  whose lease expired before, the outcome, grant rounds given back)
    type Row = (
        &'static str,
        bool,
        Vec<Option<GrantVerdict>>,
        Vec<(&'static str, PeerAnswer)>,
        Vec<&'static str>,
        &'static str,
        usize,
    );
    let clear = || vec![("db1", NotPrimary), ("db3", NotPrimary)];
    let rows: Vec<Row> = vec![
        (
            "a majority grants it and nobody took writes meanwhile: promote",
            false,
            vec![Some(won())],
            clear(),
            vec![],
            "ok",
            0,
        ),
        (
            "db3 holds the grant (it is promoting): refuse, give back the own vote",
            false,
            vec![Some(lost_to("db3"))],
            clear(),
            vec![],
            "refused: db3 is being promoted",
            1,
        ),
        (
            "a split vote resolves on the next round: promote",
            false,
            vec![Some(lost_to("db3")), Some(won())],
            clear(),
            vec![],
            "ok",
            1,
        ),
        (
            "won, but the rival that held the grant before is writable now: refuse",
            false,
            vec![Some(won())],
            vec![("db1", NotPrimary), ("db3", Writable)],
            vec![],
            "refused: db3 answers as a writable primary now",
            1,
        ),
        (
            "won, but a node stopped answering after the checks: refuse",
            false,
            vec![Some(won())],
            vec![("db1", NotPrimary), ("db3", Unknown("timed out".into()))],
            vec![],
            "refused: db3 (timed out)",
            1,
        ),
        (
            "won; the old primary still does not answer, but its lease expired before: promote",
            false,
            vec![Some(won())],
            vec![("db1", Unknown("timed out".into())), ("db3", NotPrimary)],
            vec!["db1"],
            "ok",
            0,
        ),
        (
            "the voters cannot be asked: no grant, refuse",
            false,
            vec![Some(nobody_answers())],
            clear(),
            vec![],
            "refused: no majority of the voters could grant it",
            1,
        ),
        (
            "the quorum is off: nothing to ask, promote (CARP alone separates candidates)",
            false,
            vec![None],
            clear(),
            vec![],
            "ok",
            0,
        ),
        (
            "--force with the voters unreachable: the operator vouches, promote",
            true,
            vec![Some(nobody_answers())],
            clear(),
            vec![],
            "ok",
            1,
        ),
        (
            "--force while db3 holds the grant: another promotion runs, refuse even so",
            true,
            vec![Some(lost_to("db3"))],
            clear(),
            vec![],
            "refused: db3 is being promoted",
            1,
        ),
    ];
    let ctx = cluster("db2");
    for (scenario, force, grants, last_look, settled, want, released) in rows {
        let quorum = Leases::granting(false, grants);
        let ask = || {
            last_look
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect()
        };
        let checks = PeerChecks {
            ask: &ask,
            quorum: &quorum,
            // One round, but for the split vote, which needs a second.
            grant_race: if scenario.contains("split") {
                std::time::Duration::from_secs(5)
            } else {
                std::time::Duration::ZERO
            },
        };
        let settled: Vec<String> = settled.iter().map(|s| s.to_string()).collect();
        let outcome = claim_grant(&ctx, force, &checks, &settled);
        assert_said(scenario, &outcome, want);
        assert_eq!(
            quorum.released.load(Ordering::SeqCst),
            released,
            "{scenario}: grants given back"
        );
    }
}

#[test]
fn promote_refuses_while_another_node_is_or_may_be_a_writable_primary() {
    use PeerAnswer::{NotPrimary, Unknown, Writable};
    let unknown = || Unknown("connection timed out".into());
    // (scenario, this server running, what it answers, the other nodes' answers round
    //  by round (the last round repeats), the leases expired, --force, the outcome)
    type Row = (
        &'static str,
        bool,
        FakeServer,
        Vec<Vec<(&'static str, PeerAnswer)>>,
        bool,
        bool,
        &'static str,
    );
    let rows: Vec<Row> = vec![
        (
            "the old primary is down and says so through its daemon: promote",
            true,
            FakeServer::standby(),
            vec![vec![("db1", NotPrimary), ("db3", NotPrimary)]],
            false,
            false,
            "ok",
        ),
        (
            "the old primary still answers as writable: two primaries, refuse",
            true,
            FakeServer::standby(),
            vec![vec![("db1", Writable), ("db3", NotPrimary)]],
            false,
            false,
            "refused: db1 answers as a writable primary",
        ),
        (
            "the old primary cannot be asked and the majority's lease on it expired: promote",
            true,
            FakeServer::standby(),
            vec![vec![("db1", unknown()), ("db3", NotPrimary)]],
            true,
            false,
            "ok",
        ),
        (
            "the old primary cannot be asked, then answers as writable during the lease wait: refuse",
            true,
            FakeServer::standby(),
            vec![
                vec![("db1", unknown()), ("db3", NotPrimary)],
                vec![("db1", Writable), ("db3", NotPrimary)],
            ],
            false,
            false,
            "refused: db1 answers as a writable primary again",
        ),
        (
            "replay is further behind than max_lag_on_failover: refuse",
            true,
            FakeServer::lagging(4096),
            vec![vec![("db1", NotPrimary), ("db3", NotPrimary)]],
            false,
            false,
            "refused: max_lag_on_failover",
        ),
        (
            "replay lags but the operator vouches with --force: promote",
            true,
            FakeServer::lagging(4096),
            vec![vec![("db1", NotPrimary)]],
            false,
            true,
            "ok",
        ),
        (
            "--force does not ask the other nodes at all (switchover stopped the old primary)",
            true,
            FakeServer::standby(),
            vec![vec![("db1", Writable)]],
            false,
            true,
            "ok",
        ),
        (
            "this node already is the primary: nothing to do, nobody asked",
            true,
            FakeServer::primary(),
            vec![vec![("db1", Writable)]],
            false,
            false,
            "ok",
        ),
        (
            "PostgreSQL here is not running: only a running standby is promoted",
            false,
            FakeServer::standby(),
            vec![vec![("db1", NotPrimary)]],
            false,
            false,
            "refused: is not running",
        ),
    ];
    let ctx = cluster("db2");
    for (scenario, running, me, rounds, expired, force, want) in rows {
        let pg = FakePostgres::with(&[("db2", Some(me.clone()))]);
        let server = local(running, RECOVERY);
        let asked = AtomicUsize::new(0);
        let ask = || {
            let round = asked.fetch_add(1, Ordering::SeqCst).min(rounds.len() - 1);
            rounds[round]
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect()
        };
        let checks = PeerChecks {
            ask: &ask,
            quorum: &Leases::expired(expired),
            grant_race: std::time::Duration::ZERO,
        };
        let outcome = preflight(&ctx, force, &pg, &server, &checks);
        assert_said(scenario, &outcome, want);
        match outcome {
            Ok(Preflight::AlreadyPrimary) => {
                assert!(!me.in_recovery, "{scenario}");
                assert_eq!(asked.load(Ordering::SeqCst), 0, "{scenario}: asked");
            }
            Ok(Preflight::Go { lag_bytes, .. }) => {
                assert_eq!(lag_bytes, me.replay_lag, "{scenario}");
                if force {
                    assert_eq!(asked.load(Ordering::SeqCst), 0, "{scenario}: asked");
                }
            }
            Err(_) => {}
        }
        // The preflight decides; it never promotes, stops or starts anything.
        assert!(pg.orders().is_empty(), "{scenario}: {:?}", pg.orders());
        assert!(server.actions().is_empty(), "{scenario}");
    }
}

/// (scenario, this server running, what it answers, what the named node answers, the
/// outcome); `None`: does not answer.
type PeerRow = (
    &'static str,
    bool,
    Option<FakeServer>,
    Option<FakeServer>,
    &'static str,
);

#[test]
fn rejoin_needs_this_node_fenced_and_the_new_primary_writable() {
    // (scenario, this server running, what it answers, what db2 answers, the outcome)
    let rows: Vec<PeerRow> = vec![
        (
            "a former primary stopped by its fence rejoins the new primary",
            false,
            None,
            Some(FakeServer::primary()),
            "ok",
        ),
        (
            "a primary fenced read-only, still serving reads, rejoins",
            true,
            Some(FakeServer::fenced_primary()),
            Some(FakeServer::primary()),
            "ok",
        ),
        (
            "still a writable primary: fence before rejoin",
            true,
            Some(FakeServer::primary()),
            Some(FakeServer::primary()),
            "refused: fence it first",
        ),
        (
            "running but not answering: it may be a primary, fence first",
            true,
            None,
            Some(FakeServer::primary()),
            "refused: fence it first",
        ),
        (
            "the new primary cannot be reached",
            false,
            None,
            None,
            "refused: db2 is not reachable",
        ),
        (
            "the node named as the new primary is a standby",
            false,
            None,
            Some(FakeServer::standby()),
            "refused: db2 is not a writable primary",
        ),
    ];
    let ctx = cluster("db1");
    let target = node(&ctx, "db2");
    for (scenario, running, me, new_primary, want) in rows {
        let pg = FakePostgres::with(&[("db1", me), ("db2", new_primary)]);
        let server = local(running, SHUT_DOWN);
        let outcome = check_rejoin(&pg, &server, &ctx.local, &target);
        assert_said(scenario, &outcome, want);
        assert!(server.actions().is_empty(), "{scenario}");
    }
}

#[test]
fn follow_repoints_only_a_standby_and_only_at_a_writable_primary() {
    // (scenario, this server running, what it answers, what db2 answers, the outcome)
    let rows: Vec<PeerRow> = vec![
        (
            "a streaming standby follows the new primary",
            true,
            Some(FakeServer::standby()),
            Some(FakeServer::primary()),
            "ok",
        ),
        (
            "a stopped standby follows (and is started afterwards)",
            false,
            None,
            Some(FakeServer::primary()),
            "ok",
        ),
        (
            "a primary does not follow: it rejoins",
            true,
            Some(FakeServer::primary()),
            Some(FakeServer::primary()),
            "refused: use `pgzfs rejoin --to db2`",
        ),
        (
            "running but not answering: not repointed (it could be a primary)",
            true,
            None,
            Some(FakeServer::primary()),
            "failed: connecting to db3",
        ),
        (
            "the new primary cannot be reached",
            true,
            Some(FakeServer::standby()),
            None,
            "refused: the new primary db2 is not reachable",
        ),
        (
            "the node named as the new primary is still a standby",
            true,
            Some(FakeServer::standby()),
            Some(FakeServer::standby()),
            "refused: db2 is not a writable primary",
        ),
    ];
    let ctx = cluster("db3");
    let target = node(&ctx, "db2");
    for (scenario, running, me, new_primary, want) in rows {
        let pg = FakePostgres::with(&[("db3", me), ("db2", new_primary)]);
        let server = local(running, RECOVERY);
        let outcome = check_follow(&pg, &server, &ctx.local, &target);
        assert_said(scenario, &outcome, want);
        assert!(server.actions().is_empty(), "{scenario}");
    }
}

#[test]
fn switchover_starts_only_from_the_primary_towards_a_close_streaming_standby() {
    // (scenario, what this node answers, the outcome)
    let rows: Vec<(&str, Option<FakeServer>, &str)> = vec![
        (
            "db2 streams 1 KiB behind: switch over",
            Some(FakeServer::primary().with_standby("db2", "streaming", Some(1024))),
            "ok",
        ),
        (
            "run on a standby: refuse",
            Some(FakeServer::standby()),
            "refused: run switchover on the primary",
        ),
        (
            "run on a primary fenced read-only: refuse",
            Some(FakeServer::fenced_primary().with_standby("db2", "streaming", Some(0))),
            "refused: run switchover on the primary",
        ),
        (
            "db2 is not connected: refuse",
            Some(FakeServer::primary().with_standby("db3", "streaming", Some(0))),
            "refused: db2 is not connected to db1 as a standby",
        ),
        (
            "db2 is still catching up: refuse",
            Some(FakeServer::primary().with_standby("db2", "catchup", Some(0))),
            "refused: db2 is catchup",
        ),
        (
            "db2 is further behind than switchover_max_lag: refuse",
            Some(FakeServer::primary().with_standby("db2", "streaming", Some(8192))),
            "refused: switchover_max_lag = 4096",
        ),
        (
            "db2's lag is not reported: counted as too much",
            Some(FakeServer::primary().with_standby("db2", "streaming", None)),
            "refused: switchover_max_lag",
        ),
        (
            "this node's PostgreSQL does not answer: nothing is stopped",
            None,
            "failed: connecting to db1",
        ),
    ];
    let ctx = cluster("db1");
    let target = node(&ctx, "db2");
    for (scenario, me, want) in rows {
        let pg = FakePostgres::with(&[("db1", me)]);
        let outcome = check_switchover(&pg, &ctx.local, &target);
        assert_said(scenario, &outcome, want);
        assert!(pg.orders().is_empty(), "{scenario}: {:?}", pg.orders());
    }
}

#[test]
fn after_a_failed_remote_promote_the_old_primary_restarts_only_on_proof() {
    // (scenario, what db2 answers now, the old primary restarts)
    let rows: Vec<(&str, Option<FakeServer>, bool)> = vec![
        (
            "db2 is still in recovery: the promotion really failed, db1 is the primary again",
            Some(FakeServer::standby()),
            true,
        ),
        (
            "db2 answers as a primary: it was promoted after all, db1 stays stopped",
            Some(FakeServer::primary()),
            false,
        ),
        (
            "db2 does not answer: unknown is not \"not promoted\", db1 stays stopped",
            None,
            false,
        ),
    ];
    let ctx = cluster("db1");
    let target = node(&ctx, "db2");
    for (scenario, answers, restart) in rows {
        let pg = FakePostgres::with(&[("db2", answers)]);
        let decided = after_failed_promote(&target_seen(&pg, &target), "db1", "db2");
        assert_eq!(
            decided == AfterFailedPromote::RestartOldPrimary,
            restart,
            "{scenario}: {decided:?}"
        );
    }
}

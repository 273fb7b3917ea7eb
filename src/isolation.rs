//! The daemon's part in the quorum: keep in contact with the other voters, answer
//! `GET /quorum`, and fence this node's primary when it has lost the majority for
//! `isolation_timeout` (the isolated primary of issue 16). A witness runs only this.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Voter, Witness};
use crate::context::{Context, Invocation};
use crate::error::{Error, Result};
use crate::events::{self, Event};
use crate::exec::Cmd;
use crate::failover::seam::RealPostgres;
use crate::failover::{fence, local_role, Role};
use crate::http::{Request, Response};
use crate::pg::ctl::PgCtl;
use crate::promotion_grant::{grant_ttl, Grants};
use crate::quorum::{ask_all, majority, must_fence, Contacts, View};
use crate::transfer::Interrupt;

/// How long the fence of an isolated primary waits for a fast shutdown before it stops
/// PostgreSQL immediately.
const ISOLATED_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the voters look at each other.
pub const LOOK: Duration = Duration::from_secs(1);

/// What the quorum part of a daemon knows; shared by its watch thread and its HTTP thread.
pub struct QuorumState {
    pub me: String,
    pub role: &'static str,
    pub contacts: Contacts,
    voters: Mutex<(Vec<Voter>, Duration)>,
    /// This node's primary fenced itself for isolation; it stays so until rejoined.
    pub fenced_isolated: AtomicBool,
    /// On a data node: whether its postmaster runs, for `View::postgres`.
    pub postmaster: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// This voter's promotion grant: one candidate at a time, among these data nodes.
    pub grants: Grants,
    data_nodes: Mutex<Vec<String>>,
}

/// Where a voter keeps the grant it gave: next to its lock file, with its other runtime
/// files.
pub fn grant_file(lock_file: &Path, me: &str) -> PathBuf {
    lock_file.with_file_name(format!("pgzfs-{me}.grant.json"))
}

/// The grant's time to live under `config`: the longest promotion any node may take.
fn config_grant_ttl(config: &Config) -> Duration {
    grant_ttl(
        config
            .nodes
            .iter()
            .map(|n| n.failover.promote_timeout)
            .max()
            .unwrap_or_default(),
    )
}

impl QuorumState {
    /// `lock_file`: this voter's lock file, next to which its grant is kept.
    pub fn new(me: &str, role: &'static str, config: &Config, lock_file: &Path) -> QuorumState {
        QuorumState {
            me: me.to_string(),
            role,
            contacts: Contacts::default(),
            voters: Mutex::new((config.voters(), config.isolation_timeout)),
            fenced_isolated: AtomicBool::new(false),
            postmaster: None,
            data_nodes: Mutex::new(config.nodes.iter().map(|n| n.name.clone()).collect()),
            grants: Grants::load(
                me,
                &grant_file(lock_file, me),
                config_grant_ttl(config),
                Instant::now(),
            ),
        }
    }

    /// After SIGHUP: the voters and the timeouts as the new config says.
    pub fn reconfigure(&self, config: &Config) {
        *self.voters.lock().unwrap_or_else(|p| p.into_inner()) =
            (config.voters(), config.isolation_timeout);
        self.grants.set_ttl(config_grant_ttl(config));
        *self.data_nodes.lock().unwrap_or_else(|p| p.into_inner()) =
            config.nodes.iter().map(|n| n.name.clone()).collect();
    }

    /// `GET /promotion-grant?candidate=NODE[&release=yes]`: give the grant to a data node
    /// that asks, or take it back from the one that holds it. (A forged request can only
    /// hold the grant for a while, which delays a promotion; it can never cause one.)
    pub fn respond_grant(&self, request: &Request) -> Response {
        let Some(candidate) = request.param("candidate") else {
            return Response::new(400, "text/plain", "candidate= is required\n");
        };
        let is_data_node = self
            .data_nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n == candidate);
        if !is_data_node {
            return Response::new(
                400,
                "text/plain",
                "candidate= must name a configured data node\n",
            );
        }
        let answer = match request.param("release") {
            Some("yes") => self.grants.release(candidate, Instant::now()),
            None => self.grants.request(candidate, Instant::now()),
            Some(_) => return Response::new(400, "text/plain", "release= takes only yes\n"),
        };
        Response::json(
            200,
            &serde_json::to_value(answer).expect("the answer serializes"),
        )
    }

    fn settings(&self) -> (Vec<Voter>, Duration) {
        self.voters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This node's view now.
    pub fn view(&self, now: Instant) -> View {
        let (voters, timeout) = self.settings();
        let names: Vec<String> = voters.iter().map(|v| v.name.clone()).collect();
        let unseen = self.contacts.unseen(&names, &self.me, now);
        // What is shown is actual contact; the start's grace only delays the fence.
        let seen = self.contacts.in_contact(&names, &self.me, now, timeout);
        let reachable_voters: Vec<String> = names
            .iter()
            .filter(|n| **n == self.me || seen.contains(n))
            .cloned()
            .collect();
        View {
            node: self.me.clone(),
            role: self.role.to_string(),
            unseen_seconds: unseen
                .iter()
                .map(|(n, d)| (n.clone(), (d.as_secs_f64() * 10.0).round() / 10.0))
                .collect(),
            has_majority: reachable_voters.len() >= majority(names.len()),
            reachable_voters,
            voters: names.len(),
            fenced_isolated: self.fenced_isolated.load(Ordering::SeqCst),
            postgres: self
                .postmaster
                .as_ref()
                .map(|running| if running() { "running" } else { "stopped" }.to_string()),
        }
    }

    /// `GET /quorum[?from=VOTER]`. A `from` naming another voter records the contact:
    /// the request reached us, so that voter can reach this node right now. (A forged
    /// `from` can only make a node look reachable, which delays a promotion; it can
    /// never cause one.)
    pub fn respond(&self, request: &Request) -> Response {
        if let Some(from) = request.param("from") {
            let known = self
                .settings()
                .0
                .iter()
                .any(|v| v.name == from && v.name != self.me);
            if !known {
                return Response::new(
                    400,
                    "text/plain",
                    "from= must name another configured voter\n",
                );
            }
            self.contacts.saw(from, Instant::now());
        }
        Response::json(
            200,
            &serde_json::to_value(self.view(Instant::now())).expect("the view serializes"),
        )
    }

    /// One look: ask every other voter (which tells them about us too), and record who
    /// answered.
    fn look(&self) {
        let (voters, _) = self.settings();
        let others: Vec<Voter> = voters.into_iter().filter(|v| v.name != self.me).collect();
        for (name, answer) in ask_all(&others, Some(&self.me)) {
            match answer {
                Ok(_) => self.contacts.saw(&name, Instant::now()),
                Err(why) => tracing::debug!("quorum: {name} does not answer: {why}"),
            }
        }
    }

    /// Whether a primary here must fence itself now.
    fn isolated(&self) -> bool {
        let (voters, timeout) = self.settings();
        if crate::quorum::not_configured(&voters).is_some() {
            return false;
        }
        let names: Vec<String> = voters.iter().map(|v| v.name.clone()).collect();
        let unseen = self.contacts.unseen(&names, &self.me, Instant::now());
        must_fence(&names, &self.me, &unseen, timeout)
    }
}

/// What a data node's watch does once it is isolated: fence a writable primary. Returns
/// what it did, None when there was nothing to fence.
pub type Fencer = dyn Fn(&View) -> Option<String> + Send + Sync;

/// Look at the other voters once a second until `interrupt`; on a data node, call
/// `fencer` every second while isolated, until it has fenced.
pub fn spawn_watch(
    state: Arc<QuorumState>,
    fencer: Option<Box<Fencer>>,
    interrupt: Interrupt,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pgzfs-quorum".into())
        .spawn(move || {
            let mut was_isolated = false;
            while !interrupt.is_set() {
                let started = Instant::now();
                state.look();
                let isolated = state.isolated();
                if isolated != was_isolated {
                    let view = state.view(Instant::now());
                    if isolated {
                        tracing::warn!(
                            "quorum: {} is in contact with {} of {} voters ({}), fewer than a majority",
                            state.me,
                            view.reachable_voters.len(),
                            view.voters,
                            view.reachable_voters.join(", ")
                        );
                    } else {
                        tracing::info!("quorum: {} reaches a majority of the voters again", state.me);
                    }
                    was_isolated = isolated;
                }
                if isolated && !state.fenced_isolated.load(Ordering::SeqCst) {
                    if let Some(fencer) = &fencer {
                        if let Some(done) = fencer(&state.view(Instant::now())) {
                            state.fenced_isolated.store(true, Ordering::SeqCst);
                            tracing::error!("quorum: {done}");
                        }
                    }
                }
                let spent = started.elapsed();
                if spent < LOOK {
                    std::thread::sleep(LOOK - spent);
                }
            }
        })
        .map_err(|e| Error::failed(format!("cannot start the quorum thread: {e}")))
}

/// The fence of an isolated data node: a writable primary is fenced per `fence_mode`, a
/// `fence` event with the reason "isolated" is emitted, and `carp_move_command` moves the
/// CARP address away so that it follows the writable primary. Standbys are left alone.
pub fn fence_if_primary(ctx: &Context, view: &View) -> Option<String> {
    let local = &ctx.local;
    let pgctl = match PgCtl::for_node(local) {
        Ok(pgctl) => pgctl,
        Err(e) => {
            tracing::error!("quorum: isolated, and cannot look at PostgreSQL: {e}");
            return None;
        }
    };
    match local_role(&RealPostgres, &pgctl, local).map(Role::assumed) {
        Ok(Role::Primary) => {}
        Ok(_) => return None,
        Err(e) => {
            tracing::error!("quorum: isolated, and cannot tell this node's role: {e}");
            return None;
        }
    }
    let why = format!(
        "isolated: in contact with {} of {} voters ({}) for isolation_timeout {}",
        view.reachable_voters.len(),
        view.voters,
        view.reachable_voters.join(", "),
        crate::duration::format_duration(ctx.config.isolation_timeout)
    );
    tracing::error!("quorum: fencing {}: {why}", local.name);
    // A fast shutdown refuses new work at once, but then waits for the WAL senders to
    // hand the shutdown checkpoint to standbys this side of the partition cannot reach.
    // The node will be rejoined anyway: give that wait only a few seconds.
    let mut ctx = Context {
        config: ctx.config.clone(),
        local: ctx.local.clone(),
    };
    ctx.local.pg.stop_timeout = ctx.local.pg.stop_timeout.min(ISOLATED_STOP_TIMEOUT);
    let ctx = &ctx;
    let local = &ctx.local;
    let fenced = fence(
        &RealPostgres,
        &pgctl,
        local,
        "fenced read-only: isolated from the quorum",
    );
    let (success, details) = match &fenced {
        Ok(how) => (true, format!("{why}; {how}")),
        Err(e) => (false, format!("{why}; the fence failed: {e}")),
    };
    events::emit(
        &ctx.config,
        Event::new("fence", &local.name, success, details.clone(), None),
    );
    if fenced.is_err() {
        // Try again at the next look.
        return None;
    }
    if let Some(command) = &local.failover.carp_move_command {
        match crate::exec::run(&Cmd::new("/bin/sh").arg("-c").arg(command.clone()), None) {
            Ok(_) => tracing::info!("carp_move_command ran after the fence: {command}"),
            Err(e) => tracing::error!("carp_move_command failed after the fence: {e}"),
        }
    }
    Some(format!("fenced {} ({details})", local.name))
}

/// `pgzfs daemon` on a witness: answer the voters and keep in contact, nothing else.
pub fn run_witness(invocation: &Invocation, config: Config, witness: Witness) -> Result<i32> {
    crate::log::init(&config.log_file, &witness.name, invocation.verbose);
    let interrupt = Interrupt::install()?;
    let state = Arc::new(QuorumState::new(
        &witness.name,
        "witness",
        &config,
        &witness.lock_file,
    ));
    let answering = Arc::clone(&state);
    let handler: Arc<crate::http::Handler> =
        Arc::new(move |request: &Request| match request.path.as_str() {
            "/quorum" => answering.respond(request),
            "/promotion-grant" => answering.respond_grant(request),
            "/liveness" => Response::new(200, "text/plain", "alive\n"),
            _ => Response::new(404, "text/plain", "Not Found\n"),
        });
    let server = crate::http::spawn(witness.http_listen, handler)?;
    if let Some(why) = crate::quorum::not_configured(&config.voters()) {
        tracing::warn!("{why}");
    }
    tracing::info!(
        "pgzfs daemon {} started on witness {} (pid {}): voting among {} voters",
        env!("CARGO_PKG_VERSION"),
        witness.name,
        std::process::id(),
        config.voters().len()
    );
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
        .map_err(|e| Error::failed(format!("cannot install the SIGHUP handler: {e}")))?;
    let watch = spawn_watch(Arc::clone(&state), None, interrupt.clone())?;
    let path = crate::config::config_path(invocation.config.as_deref());
    while !interrupt.is_set() {
        if hangup.swap(false, Ordering::SeqCst) {
            // The voters and isolation_timeout may change; the address does not (restart
            // the witness for that).
            match Config::load(&path) {
                Ok(config) => {
                    state.reconfigure(&config);
                    tracing::info!("SIGHUP: reloaded the config from {}", path.display());
                }
                Err(e) => tracing::error!(
                    "SIGHUP: the config at {} is invalid, keeping the old one: {e}",
                    path.display()
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watch.join();
    server.stop();
    tracing::info!("pgzfs daemon on witness {} stopping", witness.name);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "cluster = \"pg\"\nisolation_timeout = \"4s\"\n[defaults]\ndataset = \"tank/pg\"\n\
             data_dir = \"/var/db/pg\"\nhttp_listen = \"0.0.0.0:8008\"\nssh_key = \"/k\"\nknown_hosts = \"/kh\"\n\
             [[nodes]]\nname = \"db1\"\nhost = \"10.0.0.1\"\n[[nodes]]\nname = \"db2\"\nhost = \"10.0.0.2\"\n\
             [[nodes]]\nname = \"w1\"\nhost = \"10.0.0.9\"\nrole = \"witness\"\n",
            std::path::Path::new("/etc/pgzfs.toml"),
        )
        .unwrap()
    }

    fn get(query: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/quorum".into(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_question_from_another_voter_counts_as_contact_and_strangers_are_refused() {
        let state = QuorumState::new("db1", "data", &config(), &scratch_lock("contact"));
        let before = state.view(Instant::now());
        assert_eq!(before.reachable_voters, vec!["db1".to_string()]);
        assert_eq!(before.voters, 3);
        assert!(!before.has_majority);

        assert_eq!(state.respond(&get(&[("from", "w1")])).status, 200);
        let after = state.view(Instant::now());
        assert_eq!(
            after.reachable_voters,
            vec!["db1".to_string(), "w1".to_string()]
        );
        assert!(after.has_majority, "db1 and the witness are two of three");

        for from in ["db9", "db1", "w1;rm"] {
            assert_eq!(
                state.respond(&get(&[("from", from)])).status,
                400,
                "from={from}"
            );
        }
        // Asking without from= records nothing and answers the view.
        let answer = state.respond(&get(&[]));
        let view: View = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(view.node, "db1");
        assert_eq!(view.role, "data");
    }

    fn scratch_lock(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgzfs-isolation-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("pgzfs.lock")
    }

    fn grant_request(query: &[(&str, &str)]) -> Request {
        Request {
            path: "/promotion-grant".into(),
            ..get(query)
        }
    }

    #[test]
    fn the_witness_grants_one_data_node_and_refuses_strangers_and_itself() {
        let lock = scratch_lock("grant");
        let witness = QuorumState::new("w1", "witness", &config(), &lock);
        let asked = |query: &[(&str, &str)]| {
            let response = witness.respond_grant(&grant_request(query));
            (response.status, response.body)
        };
        let (status, body) = asked(&[("candidate", "db2")]);
        assert_eq!(status, 200);
        let answer: crate::promotion_grant::GrantAnswer = serde_json::from_str(&body).unwrap();
        assert!(answer.granted, "{answer:?}");
        assert_eq!(answer.voter, "w1");
        assert!(
            grant_file(&lock, "w1").exists(),
            "the grant is on disk before the answer"
        );
        let (_, body) = asked(&[("candidate", "db1")]);
        let answer: crate::promotion_grant::GrantAnswer = serde_json::from_str(&body).unwrap();
        assert!(!answer.granted);
        assert_eq!(answer.holder.as_deref(), Some("db2"));
        // A witness is never a candidate; neither is a name nobody configured.
        for candidate in ["w1", "db9", "db1&x"] {
            assert_eq!(asked(&[("candidate", candidate)]).0, 400, "{candidate}");
        }
        assert_eq!(asked(&[]).0, 400);
        assert_eq!(asked(&[("candidate", "db2"), ("release", "no")]).0, 400);
        // db2 gives it back: db1 may have it now.
        assert_eq!(asked(&[("candidate", "db2"), ("release", "yes")]).0, 200);
        let (_, body) = asked(&[("candidate", "db1")]);
        assert!(body.contains("\"granted\":true"), "{body}");
    }
}

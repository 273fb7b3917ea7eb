//! The quorum: who can see whom, whether this node reaches a strict majority of the
//! voters, and whether a majority agrees that the primary has been out of contact for
//! longer than the lease. Automatic promotion and the isolated primary's self-fence both
//! rest on it; see docs/ha.md for the rule and the arithmetic.
//!
//! Callers use the [`Quorum`] trait only. The built-in implementation, [`PeerQuorum`],
//! asks the voters' daemons over HTTP (`GET /quorum`): every daemon keeps a table of
//! when it last was in contact with each other voter ([`Contacts`]), in either
//! direction, measured on its own monotonic clock and served as ages, so no two clocks
//! are ever compared. An etcd v3 lease could implement the same trait: "primary unseen
//! for longer than the lease" becomes "the leader key's lease expired".

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Voter};
use crate::promotion_grant::{grant_verdict, GrantAnswer, GrantVerdict};

/// How much longer than `isolation_timeout` a majority must have missed the primary
/// before a standby is promoted. It covers, in the worst case: one poll interval of the
/// primary's isolation check (1 s), the skew between the two ends' records of the last
/// exchange (one poll interval plus one request timeout, 2 s), and the moment the fence
/// needs to stop writes (a fast shutdown refuses new work at once; 1 s).
pub const LEASE_MARGIN: Duration = Duration::from_secs(4);

/// How long one voter waits for another's answer.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// A strict majority of `voters`.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The time a standby's promotion waits after the majority last saw the primary.
pub fn lease(isolation_timeout: Duration) -> Duration {
    isolation_timeout + LEASE_MARGIN
}

/// One voter's view, as its daemon serves it at `/quorum`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub node: String,
    /// "data" or "witness".
    pub role: String,
    /// Seconds since this voter was last in contact with each other voter. A voter not
    /// seen since this daemon started is reported with the daemon's uptime: it has
    /// certainly not been seen for that long, and no claim is made beyond.
    pub unseen_seconds: BTreeMap<String, f64>,
    /// The voters this one is in contact with (within `isolation_timeout`), itself
    /// included.
    pub reachable_voters: Vec<String>,
    pub voters: usize,
    pub has_majority: bool,
    /// This node's primary fenced itself because it lost the majority; it stays fenced
    /// until it is rejoined.
    pub fenced_isolated: bool,
    /// On a data node: whether a postmaster runs there, looked at when asked
    /// ("running" or "stopped"); None on a witness.
    #[serde(default)]
    pub postgres: Option<String>,
}

/// When this node was last in contact with each other voter: it reached them, or they
/// reached it. Shared by the daemon's poller and its HTTP thread.
#[derive(Debug)]
pub struct Contacts {
    started: Instant,
    last: Mutex<BTreeMap<String, Instant>>,
}

impl Default for Contacts {
    fn default() -> Self {
        Contacts::new(Instant::now())
    }
}

impl Contacts {
    pub fn new(started: Instant) -> Contacts {
        Contacts {
            started,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn saw(&self, voter: &str, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let entry = last.entry(voter.to_string()).or_insert(at);
        if at > *entry {
            *entry = at;
        }
    }

    /// The voters (but `me`) actually in contact within `timeout` of `now`: unlike
    /// [`Contacts::unseen`], a voter never seen since the start is not among them.
    pub fn in_contact(
        &self,
        voters: &[String],
        me: &str,
        now: Instant,
        timeout: Duration,
    ) -> Vec<String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        voters
            .iter()
            .filter(|v| v.as_str() != me)
            .filter(|v| {
                last.get(*v)
                    .is_some_and(|at| now.saturating_duration_since(*at) < timeout)
            })
            .cloned()
            .collect()
    }

    /// How long each of `voters` (but `me`) has not been in contact, at `now`. A voter
    /// never seen counts from the start: that gives a starting daemon `timeout` to make
    /// contact before it takes itself for isolated.
    pub fn unseen(&self, voters: &[String], me: &str, now: Instant) -> BTreeMap<String, Duration> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        voters
            .iter()
            .filter(|v| v.as_str() != me)
            .map(|v| {
                let since = last.get(v).copied().unwrap_or(self.started);
                (v.clone(), now.saturating_duration_since(since))
            })
            .collect()
    }
}

/// The voters in contact within `timeout`: `me` and everyone seen more recently.
pub fn reachable(
    voters: &[String],
    me: &str,
    unseen: &BTreeMap<String, Duration>,
    timeout: Duration,
) -> Vec<String> {
    voters
        .iter()
        .filter(|v| v.as_str() == me || unseen.get(*v).is_some_and(|d| *d < timeout))
        .cloned()
        .collect()
}

/// Whether a primary on `me` must fence itself: it has not been in contact with a strict
/// majority of the voters for `timeout`. Never with fewer than three voters: two voters
/// cannot promote without the primary (so there is nothing to make way for), unless
/// `two_node_failover` was chosen, which keeps the primary writing by design.
pub fn must_fence(
    voters: &[String],
    me: &str,
    unseen: &BTreeMap<String, Duration>,
    timeout: Duration,
) -> bool {
    voters.len() >= 3 && reachable(voters, me, unseen, timeout).len() < majority(voters.len())
}

/// The voters' verdict on one primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseVerdict {
    pub expired: bool,
    /// The voters that have not seen the primary for longer than the lease.
    pub agreeing: Vec<String>,
    /// The votes needed.
    pub needed: usize,
    /// Voters that could not be asked, and why.
    pub unanswered: Vec<(String, String)>,
}

impl LeaseVerdict {
    pub fn describe(&self, primary: &str) -> String {
        let mut text = format!(
            "{} of the {} votes needed agree that {primary} has been out of contact for longer than the lease ({})",
            self.agreeing.len(),
            self.needed,
            names_or_none(&self.agreeing)
        );
        if !self.unanswered.is_empty() {
            text.push_str(&format!("; not answering: {}", reasons(&self.unanswered)));
        }
        text
    }
}

/// "db1, db2", or "none".
pub fn names_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// "db1: timed out; db3: HTTP 404".
pub fn reasons(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Count the votes: each answering voter other than the primary agrees when it has not
/// seen the primary for longer than `lease`. A strict majority of all voters must agree;
/// with exactly two voters and `two_node_failover`, one vote is enough.
pub fn lease_verdict(
    voters: &[String],
    primary: &str,
    views: &[(String, Result<View, String>)],
    lease: Duration,
    two_node_failover: bool,
) -> LeaseVerdict {
    let mut agreeing = Vec::new();
    let mut unanswered = Vec::new();
    for (voter, view) in views {
        if voter == primary || !voters.contains(voter) {
            continue;
        }
        match view {
            Ok(view) => {
                let unseen = view.unseen_seconds.get(primary).copied().unwrap_or(0.0);
                if unseen > lease.as_secs_f64() {
                    agreeing.push(voter.clone());
                }
            }
            Err(why) => unanswered.push((voter.clone(), why.clone())),
        }
    }
    let needed = if voters.len() == 2 && two_node_failover {
        1
    } else {
        majority(voters.len())
    };
    LeaseVerdict {
        expired: agreeing.len() >= needed,
        agreeing,
        needed,
        unanswered,
    }
}

/// Whether the built-in quorum can work: every voter's daemon must be reachable over
/// HTTP (`http_listen`). Until then nobody fences itself for isolation (a primary could
/// never see the voters that have no endpoint, and would fence itself for nothing), and
/// no lease expires, so a node that does not answer stays unknown.
pub fn not_configured(voters: &[Voter]) -> Option<String> {
    let missing: Vec<&str> = voters
        .iter()
        .filter(|v| v.http_port.is_none())
        .map(|v| v.name.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the quorum is off: {} {} no http_listen, so {} daemon cannot vote",
            missing.join(", "),
            if missing.len() == 1 { "has" } else { "have" },
            if missing.len() == 1 { "its" } else { "their" }
        )
    })
}

/// The narrow interface every quorum source implements.
pub trait Quorum {
    /// Who can see whom: each voter's view, or why it could not be asked.
    fn views(&self) -> Vec<(String, Result<View, String>)>;
    /// Whether `me` is in contact with a strict majority of the voters.
    fn has_majority(&self, me: &str) -> bool;
    /// Whether a majority agrees that `primary` has been out of contact for longer than
    /// `isolation_timeout` plus the margin, so that it has fenced itself by now.
    fn primary_lease(&self, primary: &str) -> LeaseVerdict;
    /// Ask every voter for its promotion grant for `candidate` (see
    /// [`crate::promotion_grant`]); None when the quorum is off and there is nobody to ask.
    fn request_grant(&self, candidate: &str) -> Option<GrantVerdict>;
    /// Give back whatever grants `candidate` holds (best effort: they run out anyway).
    fn release_grant(&self, candidate: &str);
}

/// The built-in quorum: the voters' daemons, asked over HTTP.
pub struct PeerQuorum {
    pub voters: Vec<Voter>,
    pub isolation_timeout: Duration,
    pub two_node_failover: bool,
}

impl PeerQuorum {
    pub fn new(config: &Config) -> PeerQuorum {
        PeerQuorum {
            voters: config.voters(),
            isolation_timeout: config.isolation_timeout,
            two_node_failover: config.two_node_failover,
        }
    }

    fn names(&self) -> Vec<String> {
        self.voters.iter().map(|v| v.name.clone()).collect()
    }
}

/// What a voter's daemon answers with: each answer names the voter that gave it.
trait VoterAnswer: serde::de::DeserializeOwned {
    fn voter(&self) -> &str;
}

impl VoterAnswer for View {
    fn voter(&self) -> &str {
        &self.node
    }
}

impl VoterAnswer for GrantAnswer {
    fn voter(&self) -> &str {
        &self.voter
    }
}

/// GET `path` from one voter's daemon; an answer from a daemon that names another voter
/// (a wrong address in the config) is no answer.
fn ask_voter<T: VoterAnswer>(voter: &Voter, path: &str) -> Result<T, String> {
    let port = voter
        .http_port
        .ok_or_else(|| "no http_listen configured, so it cannot be asked".to_string())?;
    match crate::http::get(&voter.host, port, path, ASK_TIMEOUT) {
        Ok((200, body)) => {
            let answer: T =
                serde_json::from_str(&body).map_err(|e| format!("unreadable answer: {e}"))?;
            if answer.voter() != voter.name {
                return Err(format!(
                    "the daemon there says it is {:?}, not {}",
                    answer.voter(),
                    voter.name
                ));
            }
            Ok(answer)
        }
        Ok((status, body)) => Err(format!("HTTP {status}: {}", body.trim())),
        Err(e) => Err(e.message().to_string()),
    }
}

/// Ask every voter at once: one round costs one timeout, however many do not answer.
fn ask_each<T: VoterAnswer + Send>(
    voters: &[Voter],
    ask: impl Fn(&Voter) -> Result<T, String> + Sync,
) -> Vec<(String, Result<T, String>)> {
    std::thread::scope(|scope| {
        let asks: Vec<_> = voters
            .iter()
            .map(|v| (v.name.clone(), scope.spawn(|| ask(v))))
            .collect();
        asks.into_iter()
            .map(|(name, asked)| {
                (
                    name,
                    asked
                        .join()
                        .unwrap_or_else(|_| Err("the question panicked".into())),
                )
            })
            .collect()
    })
}

/// Ask one voter's daemon for its view; `from` names the asking voter, so that the
/// answering daemon records the contact too.
pub fn ask(voter: &Voter, from: Option<&str>) -> Result<View, String> {
    match from {
        Some(me) => ask_voter(voter, &format!("/quorum?from={me}")),
        None => ask_voter(voter, "/quorum"),
    }
}

/// Ask every voter for its view at once.
pub fn ask_all(voters: &[Voter], from: Option<&str>) -> Vec<(String, Result<View, String>)> {
    ask_each(voters, |v| ask(v, from))
}

/// Every voter's answer about `candidate`'s promotion grant (`release` gives it back).
fn ask_grant_all(
    voters: &[Voter],
    candidate: &str,
    release: bool,
) -> Vec<(String, Result<GrantAnswer, String>)> {
    let path = format!(
        "/promotion-grant?candidate={candidate}{}",
        if release { "&release=yes" } else { "" }
    );
    ask_each(voters, |v| ask_voter(v, &path))
}

impl Quorum for PeerQuorum {
    fn views(&self) -> Vec<(String, Result<View, String>)> {
        ask_all(&self.voters, None)
    }

    fn has_majority(&self, me: &str) -> bool {
        match self.voters.iter().find(|v| v.name == me) {
            Some(voter) => ask(voter, None).is_ok_and(|view| view.has_majority),
            None => false,
        }
    }

    fn primary_lease(&self, primary: &str) -> LeaseVerdict {
        if let Some(why) = not_configured(&self.voters) {
            return LeaseVerdict {
                expired: false,
                agreeing: Vec::new(),
                needed: majority(self.voters.len()),
                unanswered: vec![("quorum".to_string(), why)],
            };
        }
        lease_verdict(
            &self.names(),
            primary,
            &self.views(),
            lease(self.isolation_timeout),
            self.two_node_failover,
        )
    }

    fn request_grant(&self, candidate: &str) -> Option<GrantVerdict> {
        if not_configured(&self.voters).is_some() {
            return None;
        }
        Some(grant_verdict(
            &self.names(),
            candidate,
            &ask_grant_all(&self.voters, candidate, false),
            self.two_node_failover,
        ))
    }

    fn release_grant(&self, candidate: &str) {
        if not_configured(&self.voters).is_some() {
            return;
        }
        for (voter, answer) in ask_grant_all(&self.voters, candidate, true) {
            if let Err(why) = answer {
                tracing::debug!("giving the promotion grant of {voter} back: {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn unseen(list: &[(&str, u64)]) -> BTreeMap<String, Duration> {
        list.iter()
            .map(|(n, s)| (n.to_string(), S * *s as u32))
            .collect()
    }

    #[test]
    fn a_strict_majority_is_more_than_half() {
        for (voters, needed) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (10, 6)] {
            assert_eq!(majority(voters), needed, "{voters} voters");
        }
    }

    #[test]
    fn a_primary_fences_itself_only_when_it_has_lost_the_majority_for_the_timeout() {
        let three = names(&["db1", "db2", "db3"]);
        let with_witness = names(&["db1", "db2", "w1"]);
        let two = names(&["db1", "db2"]);
        let timeout = S * 5;
        let cases = [
            // Everyone in contact.
            (&three, unseen(&[("db2", 1), ("db3", 1)]), false),
            // One standby gone: db1 and db3 are still two of three.
            (&three, unseen(&[("db2", 60), ("db3", 1)]), false),
            // Partitioned: nobody for 5 s (the timeout itself counts as lost).
            (&three, unseen(&[("db2", 5), ("db3", 5)]), true),
            (&three, unseen(&[("db2", 4), ("db3", 30)]), false),
            // The witness alone keeps the primary of a two-data-node cluster writable.
            (&with_witness, unseen(&[("db2", 60), ("w1", 0)]), false),
            (&with_witness, unseen(&[("db2", 60), ("w1", 60)]), true),
            // Two voters: the standby cannot promote alone, so the primary never fences.
            (&two, unseen(&[("db2", 600)]), false),
        ];
        for (voters, unseen, fence) in cases {
            assert_eq!(
                must_fence(voters, "db1", &unseen, timeout),
                fence,
                "{voters:?} {unseen:?}"
            );
        }
    }

    fn view(node: &str, unseen_primary: f64) -> (String, Result<View, String>) {
        (
            node.to_string(),
            Ok(View {
                node: node.to_string(),
                unseen_seconds: [("db1".to_string(), unseen_primary)].into(),
                ..View::default()
            }),
        )
    }

    fn silent(node: &str) -> (String, Result<View, String>) {
        (node.to_string(), Err("timed out".into()))
    }

    #[test]
    fn a_standby_is_promoted_only_when_a_majority_has_missed_the_primary_past_the_lease() {
        let three = names(&["db1", "db2", "db3"]);
        let with_witness = names(&["db1", "db2", "w1"]);
        let two = names(&["db1", "db2"]);
        let lease = S * 9;
        let cases = [
            // The partition of issue 16: db2 and db3 both miss db1 for 10 s.
            (
                &three,
                vec![view("db2", 10.0), view("db3", 10.0), silent("db1")],
                false,
                true,
            ),
            // Not long enough yet: the old primary may still be writing.
            (
                &three,
                vec![view("db2", 10.0), view("db3", 8.5), silent("db1")],
                false,
                false,
            ),
            // db3 still sees db1: db1 is not isolated, it has not fenced.
            (
                &three,
                vec![view("db2", 30.0), view("db3", 0.5), silent("db1")],
                false,
                false,
            ),
            // A standby cut off alone has only its own vote.
            (
                &three,
                vec![view("db3", 30.0), silent("db1"), silent("db2")],
                false,
                false,
            ),
            // The primary's own answer never counts for its expiry.
            (
                &three,
                vec![view("db2", 30.0), view("db1", 30.0), silent("db3")],
                false,
                false,
            ),
            // The witness makes two of three.
            (
                &with_witness,
                vec![view("db2", 10.0), view("w1", 10.0)],
                false,
                true,
            ),
            (
                &with_witness,
                vec![view("db2", 10.0), silent("w1")],
                false,
                false,
            ),
            // Two data nodes: never alone, unless explicitly accepted.
            (&two, vec![view("db2", 60.0)], false, false),
            (&two, vec![view("db2", 60.0)], true, true),
            (&two, vec![view("db2", 5.0)], true, false),
        ];
        for (voters, views, two_node, expired) in cases {
            let verdict = lease_verdict(voters, "db1", &views, lease, two_node);
            assert_eq!(
                verdict.expired, expired,
                "{voters:?} {views:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn the_quorum_is_off_until_every_voter_has_an_endpoint() {
        let voter = |name: &str, port: Option<u16>| Voter {
            name: name.into(),
            host: "10.0.0.1".into(),
            http_port: port,
        };
        assert_eq!(
            not_configured(&[voter("db1", Some(8008)), voter("w1", Some(8008))]),
            None
        );
        let why = not_configured(&[voter("db1", Some(8008)), voter("db2", None)]).unwrap();
        assert!(why.contains("db2 has no http_listen"), "{why}");
        let quorum = PeerQuorum {
            voters: vec![voter("db1", None), voter("db2", None), voter("db3", None)],
            isolation_timeout: S * 10,
            two_node_failover: false,
        };
        let verdict = quorum.primary_lease("db1");
        assert!(!verdict.expired, "{verdict:?}");
        assert!(verdict.describe("db1").contains("quorum is off"));
    }

    #[test]
    fn contacts_count_from_the_daemon_start_for_voters_never_seen() {
        let start = Instant::now();
        let contacts = Contacts::new(start);
        contacts.saw("db2", start + S * 3);
        contacts.saw("db2", start + S * 2); // an older answer arriving late changes nothing
        let unseen = contacts.unseen(&names(&["db1", "db2", "db3"]), "db1", start + S * 10);
        assert_eq!(unseen, unseen_map(&[("db2", 7), ("db3", 10)]));
        let verdict_text = LeaseVerdict {
            expired: false,
            agreeing: vec!["db3".into()],
            needed: 2,
            unanswered: vec![("db2".into(), "timed out".into())],
        }
        .describe("db1");
        assert!(verdict_text.contains("1 of the 2 votes"), "{verdict_text}");
        assert!(verdict_text.contains("db2: timed out"), "{verdict_text}");
    }

    fn unseen_map(list: &[(&str, u64)]) -> BTreeMap<String, Duration> {
        unseen(list)
    }
}

//! The promotion grant: one candidate at a time. Before a standby promotes itself it
//! asks every voter for its grant, and goes ahead only with a strict majority of them.
//! A voter grants one candidate at a time and keeps to it for [`grant_ttl`] (or until
//! that candidate gives it back), so two standbys that both decide to promote at the same
//! moment (both became CARP MASTER, each saw the other still in recovery) cannot both
//! collect a majority: at most one promotes, the other refuses.
//!
//! The quorum's lease settles whether the *old* primary is gone; the grant settles which
//! of the *new* candidates goes. Neither replaces the other. See docs/ha.md.
//!
//! A voter writes every grant it gives to a file before it answers, so that a daemon that
//! restarts in the middle of a promotion does not hand a second candidate the vote it
//! already gave to the first.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::quorum::{majority, names_or_none, reasons};

/// Beyond the longest `promote_timeout`: the time between the grant and the call that
/// promotes (a last look at the other nodes, the pre-promote snapshot), and the skew
/// between the voter's and the candidate's measurement of the start.
pub const GRANT_MARGIN: Duration = Duration::from_secs(20);

/// How long after asking for the grants a candidate may still start the promotion: the
/// rest of the margin covers the skew. A candidate that took longer gives up (and gives
/// the grants back) instead of promoting on a grant that may be running out.
pub const START_WITHIN: Duration = Duration::from_secs(10);

/// How long a voter keeps to the candidate it granted: long enough for the candidate to
/// finish promoting (it then answers as a writable primary, which every other candidate's
/// own check sees), whatever the node's `promote_timeout`.
pub fn grant_ttl(longest_promote_timeout: Duration) -> Duration {
    longest_promote_timeout + GRANT_MARGIN
}

/// One voter's answer to "may I promote?".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantAnswer {
    pub voter: String,
    pub granted: bool,
    /// The candidate this voter's grant belongs to now, if any.
    pub holder: Option<String>,
    /// How long the holder keeps it unless it gives it back.
    pub remaining_seconds: f64,
    /// Why it could not grant, when it is not another holder (its grant file).
    #[serde(default)]
    pub error: Option<String>,
}

/// The grant a voter gave, as its file keeps it (wall clock: it must survive a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct GrantRecord {
    candidate: String,
    until_unix: f64,
}

/// A voter's side: who holds its grant, until when.
#[derive(Debug)]
pub struct Grants {
    me: String,
    file: PathBuf,
    ttl: Mutex<Duration>,
    held: Mutex<Option<(String, Instant)>>,
}

impl Grants {
    /// The grants of voter `me`, kept in `file`: a grant given before a restart and not
    /// yet run out is still honoured. A file that cannot be read is taken as a grant to
    /// somebody unknown for a whole `ttl`: refusing for a while is safe, forgetting is not.
    pub fn load(me: &str, file: &Path, ttl: Duration, now: Instant) -> Grants {
        let unreadable = |why: String| {
            tracing::warn!(
                "promotion grant file {}: {why}; granting nobody for {ttl:?}",
                file.display()
            );
            Some(("(unreadable grant file)".to_string(), now + ttl))
        };
        // Never through a link or anything but a regular file (see safe_dir).
        let read =
            crate::safe_dir::parent_of(file, None).and_then(|(dir, name)| dir.read_trusted(&name));
        let held = match read {
            Ok(None) => None,
            // No directory yet: nothing was ever granted from here.
            Err(_) if !file.parent().is_some_and(Path::exists) => None,
            Err(e) => unreadable(e.to_string()),
            Ok(Some(bytes)) => match serde_json::from_slice::<GrantRecord>(&bytes) {
                Ok(record) => {
                    let left = record.until_unix - unix_now();
                    (left > 0.0).then(|| {
                        // Never longer than the ttl, whatever the clock did meanwhile.
                        let left = Duration::try_from_secs_f64(left).unwrap_or(ttl).min(ttl);
                        (record.candidate, now + left)
                    })
                }
                Err(e) => unreadable(e.to_string()),
            },
        };
        Grants {
            me: me.to_string(),
            file: file.to_path_buf(),
            ttl: Mutex::new(ttl),
            held: Mutex::new(held),
        }
    }

    pub fn set_ttl(&self, ttl: Duration) {
        *self.ttl.lock().unwrap_or_else(|p| p.into_inner()) = ttl;
    }

    /// `candidate` asks for this voter's grant at `now`.
    pub fn request(&self, candidate: &str, now: Instant) -> GrantAnswer {
        let ttl = *self.ttl.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((holder, until)) = held.as_ref() {
            if holder != candidate && now < *until {
                return self.answer(false, Some(holder.as_str()), *until - now, None);
            }
        }
        let until = now + ttl;
        let record = GrantRecord {
            candidate: candidate.to_string(),
            until_unix: unix_now() + ttl.as_secs_f64(),
        };
        if let Err(e) = self.write(Some(&record)) {
            // Unrecorded, the grant could be given twice across a restart: refuse.
            return self.answer(false, None, Duration::ZERO, Some(e));
        }
        *held = Some((candidate.to_string(), until));
        tracing::info!("promotion grant to {candidate} for {ttl:?}");
        self.answer(true, Some(candidate), ttl, None)
    }

    /// `candidate` gives the grant back (it promoted, or it gave up): the next candidate
    /// need not wait for the ttl. Only the holder can give it back.
    pub fn release(&self, candidate: &str, now: Instant) -> GrantAnswer {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_ref() {
            Some((holder, until)) if holder == candidate => {
                if let Err(e) = self.write(None) {
                    return self.answer(
                        false,
                        Some(holder.as_str()),
                        until.saturating_duration_since(now),
                        Some(e),
                    );
                }
                *held = None;
                tracing::info!("promotion grant given back by {candidate}");
                self.answer(false, None, Duration::ZERO, None)
            }
            Some((holder, until)) => self.answer(
                false,
                Some(holder.as_str()),
                until.saturating_duration_since(now),
                None,
            ),
            None => self.answer(false, None, Duration::ZERO, None),
        }
    }

    fn answer(
        &self,
        granted: bool,
        holder: Option<&str>,
        remaining: Duration,
        error: Option<String>,
    ) -> GrantAnswer {
        GrantAnswer {
            voter: self.me.clone(),
            granted,
            holder: holder.map(str::to_string),
            remaining_seconds: (remaining.as_secs_f64() * 10.0).round() / 10.0,
            error,
        }
    }

    /// Write (or, with None, remove) the record, durably enough for a daemon restart, and
    /// never through a link planted at its name (see safe_dir).
    fn write(&self, record: Option<&GrantRecord>) -> std::result::Result<(), String> {
        let describe =
            |e: crate::error::Error| format!("promotion grant file {}: {e}", self.file.display());
        let (dir, name) = crate::safe_dir::parent_of(&self.file, Some(0o755)).map_err(describe)?;
        match record {
            None => dir.remove(&name).map(drop).map_err(describe),
            Some(record) => {
                let text = serde_json::to_vec(record).expect("a grant record serializes");
                dir.write(&name, &text, 0o600, None).map_err(describe)
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The candidate's side: what the voters answered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrantVerdict {
    pub granted_by: Vec<String>,
    /// Voters whose grant another candidate holds: (voter, holder).
    pub held_by_other: Vec<(String, String)>,
    /// Voters that could not be asked or could not grant, and why.
    pub unanswered: Vec<(String, String)>,
    pub needed: usize,
}

impl GrantVerdict {
    pub fn won(&self) -> bool {
        self.granted_by.len() >= self.needed
    }

    /// The other candidates that hold grants, each named once.
    pub fn rivals(&self) -> Vec<String> {
        let mut rivals: Vec<String> = self.held_by_other.iter().map(|(_, h)| h.clone()).collect();
        rivals.sort();
        rivals.dedup();
        rivals
    }

    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} granted, {} needed ({})",
            self.granted_by.len(),
            self.needed,
            names_or_none(&self.granted_by)
        );
        if !self.held_by_other.is_empty() {
            let held: Vec<String> = self
                .held_by_other
                .iter()
                .map(|(voter, holder)| format!("{voter} granted {holder}"))
                .collect();
            text.push_str(&format!("; {}", held.join(", ")));
        }
        if !self.unanswered.is_empty() {
            text.push_str(&format!("; no grant from {}", reasons(&self.unanswered)));
        }
        text
    }
}

/// Count the grants `candidate` got: a strict majority of all voters must grant (one is
/// enough only for two voters with `two_node_failover`, as for the lease).
pub fn grant_verdict(
    voters: &[String],
    candidate: &str,
    answers: &[(String, std::result::Result<GrantAnswer, String>)],
    two_node_failover: bool,
) -> GrantVerdict {
    let mut verdict = GrantVerdict {
        needed: if voters.len() == 2 && two_node_failover {
            1
        } else {
            majority(voters.len())
        },
        ..GrantVerdict::default()
    };
    for (voter, answer) in answers {
        if !voters.contains(voter) {
            continue;
        }
        match answer {
            Ok(a) if a.granted && a.holder.as_deref() == Some(candidate) => {
                verdict.granted_by.push(voter.clone())
            }
            Ok(GrantAnswer {
                holder: Some(holder),
                ..
            }) if holder != candidate => {
                verdict.held_by_other.push((voter.clone(), holder.clone()))
            }
            Ok(a) => verdict.unanswered.push((
                voter.clone(),
                a.error
                    .clone()
                    .unwrap_or_else(|| "it did not grant".to_string()),
            )),
            Err(why) => verdict.unanswered.push((voter.clone(), why.clone())),
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn voter_in(dir: &Path, name: &str, now: Instant) -> Grants {
        Grants::load(name, &dir.join(format!("{name}.grant.json")), S * 80, now)
    }

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgzfs-grant-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_voter_grants_one_candidate_at_a_time_until_it_is_given_back_or_runs_out() {
        let dir = scratch("one");
        let start = Instant::now();
        let db1 = voter_in(&dir, "db1", start);
        // db2 asks first and gets it; db3, a moment later, does not.
        assert!(db1.request("db2", start).granted);
        let refused = db1.request("db3", start + S);
        assert!(!refused.granted);
        assert_eq!(refused.holder.as_deref(), Some("db2"));
        assert_eq!(refused.remaining_seconds, 79.0);
        // Asking again changes nothing for the holder.
        assert!(db1.request("db2", start + S * 2).granted);
        // Only the holder can give it back.
        db1.release("db3", start + S * 3);
        assert!(!db1.request("db3", start + S * 3).granted);
        db1.release("db2", start + S * 4);
        assert!(db1.request("db3", start + S * 4).granted);
        // Run out: the next candidate gets it without anything given back.
        assert!(db1.request("db2", start + S * 90).granted);
    }

    #[test]
    fn a_grant_survives_the_voters_restart() {
        let dir = scratch("restart");
        let start = Instant::now();
        assert!(voter_in(&dir, "w1", start).request("db2", start).granted);
        // The daemon restarts: the new one still holds to db2.
        let restarted = voter_in(&dir, "w1", Instant::now());
        let answer = restarted.request("db3", Instant::now());
        assert!(!answer.granted, "{answer:?}");
        assert_eq!(answer.holder.as_deref(), Some("db2"));
        // A grant recorded as lasting for ages lasts one ttl at most.
        std::fs::write(
            dir.join("w3.grant.json"),
            br#"{"candidate":"db2","until_unix":1e300}"#,
        )
        .unwrap();
        let far = voter_in(&dir, "w3", start);
        assert!(!far.request("db3", start + S).granted);
        assert!(far.request("db3", start + S * 81).granted);
        // A link planted at the name is not read through (it counts as unreadable), and
        // the next grant replaces the link instead of writing where it points.
        let target = dir.join("elsewhere");
        std::fs::write(&target, br#"{"candidate":"db3","until_unix":0}"#).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("w4.grant.json")).unwrap();
        let linked = voter_in(&dir, "w4", start);
        assert!(!linked.request("db2", start + S).granted);
        assert!(linked.request("db2", start + S * 81).granted);
        assert!(std::fs::symlink_metadata(dir.join("w4.grant.json"))
            .unwrap()
            .is_file());
        assert_eq!(
            std::fs::read(&target).unwrap(),
            br#"{"candidate":"db3","until_unix":0}"#
        );
        // A file nobody can read: nobody gets the grant for a whole ttl.
        std::fs::write(dir.join("w2.grant.json"), b"{ torn").unwrap();
        let torn = voter_in(&dir, "w2", start);
        assert!(!torn.request("db2", start + S).granted);
        assert!(torn.request("db2", start + S * 81).granted);
    }

    #[test]
    fn a_voter_that_cannot_record_its_grant_does_not_give_it() {
        let start = Instant::now();
        // Its directory goes away after the start, and a plain file takes its place.
        let dir = scratch("unrecorded").join("run");
        std::fs::create_dir(&dir).unwrap();
        let nowhere = Grants::load("db1", &dir.join("db1.grant.json"), S * 80, start);
        std::fs::remove_dir(&dir).unwrap();
        std::fs::write(&dir, b"").unwrap();
        let answer = nowhere.request("db2", start);
        assert!(!answer.granted);
        assert!(answer.error.unwrap().contains("db1.grant.json"));
    }

    fn granted(voter: &str, to: &str) -> (String, std::result::Result<GrantAnswer, String>) {
        (
            voter.to_string(),
            Ok(GrantAnswer {
                voter: voter.to_string(),
                granted: true,
                holder: Some(to.to_string()),
                remaining_seconds: 80.0,
                error: None,
            }),
        )
    }

    fn refused(voter: &str, holder: &str) -> (String, std::result::Result<GrantAnswer, String>) {
        (
            voter.to_string(),
            Ok(GrantAnswer {
                voter: voter.to_string(),
                granted: false,
                holder: Some(holder.to_string()),
                remaining_seconds: 60.0,
                error: None,
            }),
        )
    }

    fn silent(voter: &str) -> (String, std::result::Result<GrantAnswer, String>) {
        (voter.to_string(), Err("timed out".to_string()))
    }

    #[test]
    fn a_candidate_needs_a_strict_majority_of_all_voters() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let three = names(&["db1", "db2", "db3"]);
        let two = names(&["db1", "db2"]);
        let rows = [
            // Two standbys race; db1's daemon (the old primary's host) granted db3 first.
            (
                "db2 wins db2 and db3",
                &three,
                vec![
                    granted("db2", "db2"),
                    granted("db3", "db2"),
                    refused("db1", "db3"),
                ],
                false,
                true,
            ),
            (
                "db3 has only its own",
                &three,
                vec![
                    refused("db2", "db2"),
                    granted("db3", "db3"),
                    refused("db1", "db2"),
                ],
                false,
                false,
            ),
            // A split with the third voter gone: neither goes.
            (
                "split, db1 dead",
                &three,
                vec![refused("db2", "db2"), granted("db3", "db3"), silent("db1")],
                false,
                false,
            ),
            // A voter's grant given to somebody else is no grant, whatever it says.
            (
                "a grant to another",
                &three,
                vec![granted("db2", "db2"), granted("db1", "db3"), silent("db3")],
                false,
                false,
            ),
            (
                "two voters need both",
                &two,
                vec![granted("db2", "db2"), silent("db1")],
                false,
                false,
            ),
            (
                "two voters, two_node_failover",
                &two,
                vec![granted("db2", "db2"), silent("db1")],
                true,
                true,
            ),
            // Someone answering who is no voter counts for nothing.
            (
                "not a voter",
                &three,
                vec![granted("db2", "db2"), granted("db9", "db2")],
                false,
                false,
            ),
        ];
        for (scenario, voters, answers, two_node, won) in rows {
            let verdict = grant_verdict(voters, "db2", &answers, two_node);
            assert_eq!(verdict.won(), won, "{scenario}: {verdict:?}");
        }
        let verdict = grant_verdict(
            &three,
            "db3",
            &[refused("db2", "db2"), granted("db3", "db3"), silent("db1")],
            false,
        );
        assert_eq!(verdict.rivals(), vec!["db2".to_string()]);
        let said = verdict.describe();
        assert!(said.contains("1 granted, 2 needed (db3)"), "{said}");
        assert!(said.contains("db2 granted db2"), "{said}");
        assert!(said.contains("db1: timed out"), "{said}");
    }
}

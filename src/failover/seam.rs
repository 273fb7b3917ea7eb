//! The PostgreSQL seam of the failover runbooks: exactly the questions and orders that
//! promote, rejoin, follow, switchover and carp-event put to a server, and nothing else.
//! The real implementation, `RealPostgres` over `pg::Pg` and `LocalServer` for
//! `pg::ctl::PgCtl`, sits beside the traits;
//! the unit tests give the runbooks fakes instead, so that every safety decision can be
//! tried without a server.

use std::time::Duration;

use crate::cluster::pg_target;
use crate::config::Node;
use crate::error::Result;
use crate::pg::control::{self, ControlData, Lsn};
use crate::pg::ctl::PgCtl;
use crate::pg::{Pg, ReplicationInfo};

/// One session with one node's PostgreSQL.
pub trait Session: Send {
    /// The node's name, for messages.
    fn node(&self) -> &str;
    fn major(&self) -> u32;
    fn is_in_recovery(&mut self) -> Result<bool>;
    /// Not in recovery and not fenced read-only.
    fn is_writable(&mut self) -> Result<bool>;
    /// Bytes received but not replayed yet (a standby).
    fn replay_lag_bytes(&mut self) -> Result<u64>;
    /// The end of the last record replayed (a standby).
    fn replay_lsn(&mut self) -> Result<Option<Lsn>>;
    /// The timeline of the latest checkpoint.
    fn timeline(&mut self) -> Result<u32>;
    /// pg_promote(): true when the promotion completed within `timeout`.
    fn promote(&mut self, timeout: Duration) -> Result<bool>;
    fn checkpoint(&mut self) -> Result<()>;
    /// How this primary sees the standby that connects as `standby`.
    fn replication_info(&mut self, standby: &str) -> Result<Option<ReplicationInfo>>;
    fn ensure_physical_slot(&mut self, name: &str) -> Result<&'static str>;
    /// Have the server end every client session; (found, ended).
    fn terminate_client_sessions(&mut self) -> Result<(i64, i64)>;
}

/// How the runbooks reach any node's PostgreSQL: always on a fresh connection, so that
/// an answer is never a pooled connection's memory of the past.
pub trait Postgres: Sync {
    fn connect(&self, node: &Node) -> Result<Box<dyn Session>>;
}

/// This node's server as pg_ctl and its data directory see it, whether or not it runs.
pub trait LocalServer {
    /// A postmaster runs in the data directory.
    fn is_running(&self) -> bool;
    fn start(&self, timeout: Duration) -> Result<()>;
    /// Stop it (fast, then immediate); says how it stopped.
    fn stop(&self, timeout: Duration) -> Result<&'static str>;
    fn reload(&self) -> Result<()>;
    /// pg_ctl promote.
    fn promote(&self, timeout: Duration) -> Result<()>;
    /// pg_control, None when the data directory has none.
    fn control(&self) -> Result<Option<ControlData>>;
    /// standby.signal or recovery.conf is there: a start comes up in recovery.
    fn starts_as_standby(&self) -> bool;
}

/// Every node's PostgreSQL, reached as `pg_target` says (the replication role, TLS and
/// pgpass as configured).
pub struct RealPostgres;

impl Postgres for RealPostgres {
    fn connect(&self, node: &Node) -> Result<Box<dyn Session>> {
        Ok(Box::new(Pg::connect(&pg_target(node))?))
    }
}

impl Session for Pg {
    fn node(&self) -> &str {
        &self.target().node
    }
    fn major(&self) -> u32 {
        Pg::major(self)
    }
    fn is_in_recovery(&mut self) -> Result<bool> {
        Pg::is_in_recovery(self)
    }
    fn is_writable(&mut self) -> Result<bool> {
        Pg::is_writable(self)
    }
    fn replay_lag_bytes(&mut self) -> Result<u64> {
        Pg::replay_lag_bytes(self)
    }
    fn replay_lsn(&mut self) -> Result<Option<Lsn>> {
        Pg::replay_lsn(self)
    }
    fn timeline(&mut self) -> Result<u32> {
        Pg::checkpoint_timeline(self)
    }
    fn promote(&mut self, timeout: Duration) -> Result<bool> {
        Pg::promote(self, timeout)
    }
    fn checkpoint(&mut self) -> Result<()> {
        Pg::checkpoint(self)
    }
    fn replication_info(&mut self, standby: &str) -> Result<Option<ReplicationInfo>> {
        Pg::replication_info(self, standby)
    }
    fn ensure_physical_slot(&mut self, name: &str) -> Result<&'static str> {
        Pg::ensure_physical_slot(self, name)
    }
    fn terminate_client_sessions(&mut self) -> Result<(i64, i64)> {
        Pg::terminate_client_sessions(self)
    }
}

/// This node's server: pg_ctl, and pg_control read from its data directory.
impl LocalServer for PgCtl {
    fn is_running(&self) -> bool {
        PgCtl::is_running(self)
    }
    fn start(&self, timeout: Duration) -> Result<()> {
        PgCtl::start(self, timeout)
    }
    fn stop(&self, timeout: Duration) -> Result<&'static str> {
        PgCtl::stop(self, timeout)
    }
    fn reload(&self) -> Result<()> {
        PgCtl::reload(self)
    }
    fn promote(&self, timeout: Duration) -> Result<()> {
        PgCtl::promote(self, timeout)
    }
    fn control(&self) -> Result<Option<ControlData>> {
        control::read_control(self.data_dir())
    }
    fn starts_as_standby(&self) -> bool {
        starts_as_standby(self.data_dir())
    }
}

/// standby.signal (PostgreSQL 12+) or recovery.conf (11) in `data_dir`, found without
/// following links.
pub fn starts_as_standby(data_dir: &std::path::Path) -> bool {
    crate::safe_dir::Dir::open(data_dir)
        .is_ok_and(|dir| dir.exists("standby.signal") || dir.exists("recovery.conf"))
}

#[cfg(test)]
pub mod fake {
    //! Fakes of the seam for the unit tests: each node is a row of what it answers.

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::Error;
    use crate::pg::control::ClusterState;

    /// What one node's PostgreSQL answers. `None` in `answers` means it cannot be reached.
    #[derive(Debug, Clone)]
    pub struct FakeServer {
        pub in_recovery: bool,
        pub writable: bool,
        pub replay_lag: u64,
        pub replay_lsn: Option<Lsn>,
        pub timeline: u32,
        pub major: u32,
        /// As a primary: how each standby is connected (state, replay lag).
        pub standbys: Vec<(String, String, Option<i64>)>,
    }

    impl FakeServer {
        pub fn primary() -> FakeServer {
            FakeServer {
                in_recovery: false,
                writable: true,
                replay_lag: 0,
                replay_lsn: None,
                timeline: 2,
                major: 15,
                standbys: Vec::new(),
            }
        }
        pub fn fenced_primary() -> FakeServer {
            FakeServer {
                writable: false,
                ..FakeServer::primary()
            }
        }
        pub fn standby() -> FakeServer {
            FakeServer {
                in_recovery: true,
                writable: false,
                timeline: 1,
                ..FakeServer::primary()
            }
        }
        pub fn lagging(bytes: u64) -> FakeServer {
            FakeServer {
                replay_lag: bytes,
                ..FakeServer::standby()
            }
        }
        pub fn with_standby(mut self, name: &str, state: &str, lag: Option<i64>) -> FakeServer {
            self.standbys.push((name.into(), state.into(), lag));
            self
        }
    }

    /// The cluster's servers by node name; a node missing from the map does not answer.
    /// Orders given to a session (promote, checkpoint, slots) are recorded.
    #[derive(Default, Clone)]
    pub struct FakePostgres {
        pub servers: HashMap<String, FakeServer>,
        pub orders: Arc<Mutex<Vec<String>>>,
    }

    impl FakePostgres {
        pub fn with(nodes: &[(&str, Option<FakeServer>)]) -> FakePostgres {
            FakePostgres {
                servers: nodes
                    .iter()
                    .filter_map(|(n, s)| s.clone().map(|s| (n.to_string(), s)))
                    .collect(),
                orders: Arc::default(),
            }
        }
        pub fn orders(&self) -> Vec<String> {
            self.orders.lock().unwrap().clone()
        }
    }

    impl Postgres for FakePostgres {
        fn connect(&self, node: &Node) -> Result<Box<dyn Session>> {
            match self.servers.get(&node.name) {
                Some(server) => Ok(Box::new(FakeSession {
                    node: node.name.clone(),
                    server: server.clone(),
                    orders: self.orders.clone(),
                })),
                None => Err(Error::failed(format!(
                    "connecting to {}: connection timed out",
                    node.name
                ))),
            }
        }
    }

    struct FakeSession {
        node: String,
        server: FakeServer,
        orders: Arc<Mutex<Vec<String>>>,
    }

    impl FakeSession {
        fn order(&self, what: &str) {
            self.orders
                .lock()
                .unwrap()
                .push(format!("{}: {what}", self.node));
        }
    }

    impl Session for FakeSession {
        fn node(&self) -> &str {
            &self.node
        }
        fn major(&self) -> u32 {
            self.server.major
        }
        fn is_in_recovery(&mut self) -> Result<bool> {
            Ok(self.server.in_recovery)
        }
        fn is_writable(&mut self) -> Result<bool> {
            Ok(self.server.writable)
        }
        fn replay_lag_bytes(&mut self) -> Result<u64> {
            Ok(self.server.replay_lag)
        }
        fn replay_lsn(&mut self) -> Result<Option<Lsn>> {
            Ok(self.server.replay_lsn)
        }
        fn timeline(&mut self) -> Result<u32> {
            Ok(self.server.timeline)
        }
        fn promote(&mut self, _: Duration) -> Result<bool> {
            self.order("pg_promote");
            Ok(true)
        }
        fn checkpoint(&mut self) -> Result<()> {
            self.order("checkpoint");
            Ok(())
        }
        fn replication_info(&mut self, standby: &str) -> Result<Option<ReplicationInfo>> {
            Ok(self
                .server
                .standbys
                .iter()
                .find(|(n, _, _)| n == standby)
                .map(|(_, state, lag)| ReplicationInfo {
                    state: state.clone(),
                    replay_lag_bytes: *lag,
                }))
        }
        fn ensure_physical_slot(&mut self, name: &str) -> Result<&'static str> {
            self.order(&format!("slot {name}"));
            Ok("created")
        }
        fn terminate_client_sessions(&mut self) -> Result<(i64, i64)> {
            self.order("terminate sessions");
            Ok((0, 0))
        }
    }

    /// This node's server: running or not, and what its data directory says.
    #[derive(Default)]
    pub struct FakeLocal {
        pub running: bool,
        /// pg_control's state; None: no pg_control.
        pub control: Option<ClusterState>,
        pub control_unreadable: bool,
        pub standby_signal: bool,
        pub actions: RefCell<Vec<&'static str>>,
    }

    impl FakeLocal {
        pub fn running() -> FakeLocal {
            FakeLocal {
                running: true,
                ..FakeLocal::default()
            }
        }
        pub fn stopped(control: Option<ClusterState>) -> FakeLocal {
            FakeLocal {
                control,
                ..FakeLocal::default()
            }
        }
        pub fn actions(&self) -> Vec<&'static str> {
            self.actions.borrow().clone()
        }
    }

    impl LocalServer for FakeLocal {
        fn is_running(&self) -> bool {
            self.running
        }
        fn start(&self, _: Duration) -> Result<()> {
            self.actions.borrow_mut().push("start");
            Ok(())
        }
        fn stop(&self, _: Duration) -> Result<&'static str> {
            self.actions.borrow_mut().push("stop");
            Ok("fast")
        }
        fn reload(&self) -> Result<()> {
            self.actions.borrow_mut().push("reload");
            Ok(())
        }
        fn promote(&self, _: Duration) -> Result<()> {
            self.actions.borrow_mut().push("pg_ctl promote");
            Ok(())
        }
        fn control(&self) -> Result<Option<ControlData>> {
            if self.control_unreadable {
                return Err(Error::failed("pg_control: bad CRC"));
            }
            Ok(self.control.map(|state| ControlData {
                system_identifier: 7,
                state,
                checkpoint_lsn: Lsn(0x3000028),
                timeline: 1,
            }))
        }
        fn starts_as_standby(&self) -> bool {
            self.standby_signal
        }
    }
}

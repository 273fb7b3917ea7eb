//! The failover runbooks: promote, carp-event, rejoin, follow and switchover, with the
//! safety decisions they rest on, over a narrow PostgreSQL seam.
//!
//! - `seam`: the PostgreSQL calls the runbooks make (`Postgres`, `Session`,
//!   `LocalServer`), the real implementation over `pg::Pg` and `PgCtl` beside them.
//! - `role`: `local_role()`, the one answer to "am I a primary, a standby, or unknown?"
//!   with its one fallback policy (unknown is never "not a primary"), and `fence`.
//! - `promote`, `carp`, `rejoin`, `follow`, `switchover`: each runbook, its decisions as
//!   plain functions with table-driven tests over fakes of the seam.
//!
//! The commands of the same names parse arguments and print; they call in here.

pub mod carp;
pub mod follow;
pub mod promote;
pub mod rejoin;
pub mod role;
pub mod seam;
pub mod switchover;
#[cfg(test)]
mod tests;

pub use role::{fence, local_role, Role};

use crate::error::Result;

/// How a primary that must stop taking writes is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Stop PostgreSQL: the hard fence, and the default.
    Stop,
    /// Keep serving reads: default_transaction_read_only = on, reload, end client sessions.
    ReadOnly,
}

/// What a primary does when its CARP address goes to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackup {
    Fence,
    Rejoin,
}

impl FenceMode {
    pub(crate) fn parse(value: &str) -> Result<FenceMode, String> {
        match value {
            "stop" => Ok(FenceMode::Stop),
            "read-only" => Ok(FenceMode::ReadOnly),
            _ => Err(format!("{value:?} must be \"stop\" or \"read-only\"")),
        }
    }
}

impl OnBackup {
    pub(crate) fn parse(value: &str) -> Result<OnBackup, String> {
        match value {
            "fence" => Ok(OnBackup::Fence),
            "rejoin" => Ok(OnBackup::Rejoin),
            _ => Err(format!("{value:?} must be \"fence\" or \"rejoin\"")),
        }
    }
}

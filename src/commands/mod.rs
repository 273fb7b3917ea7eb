//! One file per subcommand. They orchestrate the runbook; the ZFS, SQL and SSH details
//! live in the layers below.

pub mod carp_event;
pub mod check;
pub mod clone;
pub mod compressed_send;
pub mod daemon;
pub mod follow;
pub mod promote;
pub mod prune;
pub mod rejoin;
pub mod reset_secondary;
pub mod serve;
pub mod snapshot;
pub mod snapshots;
pub mod status;
pub mod switchover;
pub mod upgrade;
pub mod verify;

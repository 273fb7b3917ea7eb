//! pgzfs keeps PostgreSQL standbys in sync with ZFS snapshots.
//!
//! Layers, top to bottom (a module only uses what sits below it):
//! `cli` → `commands` → domain logic (`replicate`, `transfer`, `ratelimit`, `compress`, `quorum`) → narrow
//! interfaces to the outside world (`zfs`, `ssh`, `pg`, `exec`, `clock`) → `config`,
//! `error`.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod compress;
pub mod config;
pub mod cut;
pub mod duration;
pub mod error;
pub mod events;
pub mod exec;
pub mod http;
pub mod lock;
pub mod log;
pub mod pg;
pub mod pgpass;
pub mod progress;
pub mod quorum;
pub mod ratelimit;
pub mod replicate;
pub mod retention;
pub mod shell;
pub mod size;
pub mod ssh;
pub mod ssh_openssh;
pub mod steps;
pub mod timestamp;
pub mod transfer;
pub mod zfs;

//! pgzfs keeps PostgreSQL standbys in sync with ZFS snapshots.
//!
//! Layers, top to bottom; a module only uses what sits below it (docs/architecture.md):
//! `main` → `cli` → `context` (the composition root) → `commands` (one file per
//! subcommand, never importing each other) → domain logic (`replicate`, `failover`,
//! `cut`, `datasets`, `retention`, `events`, `quorum`, `isolation`, `cluster`,
//! `daemon_state`, `transfer`, `ratelimit`, `compress`, `throwaway`, `verify`, `upgrade`)
//! → narrow interfaces to the outside world (`zfs`, `pg`, `ssh`, `ssh_openssh`, `exec`,
//! `clock`, `lock`, `http`, `safe_dir`) → `config`, `error`.
//!
//! `failover` holds the promote, carp-event, rejoin, follow and switchover runbooks and
//! their safety decisions over a narrow PostgreSQL seam (`failover::seam`), and the one
//! `local_role()` with its fallback policy: unknown is never "not a primary".

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod compress;
pub mod config;
pub mod context;
pub mod cut;
pub mod daemon_state;
pub mod datasets;
pub mod duration;
pub mod error;
pub mod events;
pub mod exec;
pub mod failover;
pub mod http;
pub mod isolation;
pub mod lock;
pub mod log;
pub mod pg;
pub mod pgpass;
pub mod progress;
pub mod promotion_grant;
pub mod quorum;
pub mod ratelimit;
pub mod replicate;
pub mod retention;
pub mod safe_dir;
pub mod setup;
pub mod shell;
pub mod size;
pub mod ssh;
pub mod ssh_openssh;
pub mod steps;
pub mod throwaway;
pub mod timestamp;
pub mod transfer;
pub mod upgrade;
pub mod verify;
pub mod zfs;

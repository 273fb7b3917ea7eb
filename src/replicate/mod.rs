//! Re-seeding a standby from another node's snapshots: the plan (a plain value computed
//! from both sides' snapshots, shown by `--dry-run`), the runbook that carries it out,
//! what protects the new common base afterwards, and what a run reports.

pub mod plan;
pub mod protect;
pub mod report;
pub mod reseed;
pub mod tree;
mod tree_receive;

pub use plan::{plan, resume, Mode, Plan, PlanInput, ResumeInput};
pub use report::{DryRun, Summary};
pub use reseed::{dry_run, reseed, reseed_unattended, Caller, ReseedRequest};

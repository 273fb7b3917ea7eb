//! One file per subcommand. They orchestrate the runbook; the ZFS, SQL and SSH details
//! live in the layers below.

pub mod reset_secondary;

//! `pgzfs reset-secondary`: re-seed this standby from the primary. Argument handling
//! and output only; the runbook is [`crate::replicate::reseed`].

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use crate::context::{Context, Invocation};
use crate::error::{Error, Result};
use crate::replicate::{self, report, Caller, Plan, ReseedRequest};
use crate::transfer::Interrupt;

#[derive(Debug, Args)]
pub struct ResetSecondary {
    /// Re-seed from this node [default: the one primary found among the configured nodes]
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
    /// Copy everything, keeping an existing local dataset renamed aside
    #[arg(long)]
    pub full: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on a terminal
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the summary as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
    /// After `pgzfs upgrade` on the primary: re-seed this standby's older major
    /// incrementally and run it with the new major's binaries from DIR (then set
    /// pg_bin = DIR in the config)
    #[arg(long, value_name = "DIR")]
    pub new_bin: Option<std::path::PathBuf>,
}

impl ResetSecondary {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let mut ctx = invocation.load()?;
        let caller = match &self.new_bin {
            Some(dir) => {
                ctx.local.pg.pg_bin = crate::upgrade::check_new_bin(dir)?;
                Caller::MajorUpgrade
            }
            None => Caller::ResetSecondary,
        };
        let request = ReseedRequest {
            from: self.from.clone(),
            full: self.full,
            caller,
        };
        if self.dry_run {
            let plan =
                replicate::dry_run(&ctx, &request).map_err(|e| e.context("reset-secondary"))?;
            if self.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serializes")
                );
            } else {
                println!("{}", plan.text);
            }
            return Ok(0);
        }
        let confirm = |plan: &Plan| self.confirm(&ctx, plan);
        let outcome = Interrupt::install()
            .and_then(|interrupt| replicate::reseed(&ctx, &request, interrupt, &confirm));
        let summary = report::announce(
            &ctx.config,
            &ctx.local.name,
            "reset_secondary",
            self.from.as_deref(),
            outcome,
        )?;
        summary.print(self.json);
        Ok(0)
    }

    /// On a terminal, and without --yes: show the plan and ask before anything changes.
    fn confirm(&self, ctx: &Context, plan: &Plan) -> Result<()> {
        if self.yes || !std::io::stdin().is_terminal() {
            return Ok(());
        }
        eprint!(
            "{}\nRe-seed {} now? [y/N] ",
            plan.describe(),
            ctx.local.name
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(|e| Error::failed(format!("reading the answer: {e}")))?;
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(Error::refused("not confirmed; nothing was changed"))
        }
    }
}

//! What a re-seed reports: the plan a dry run shows, the summary of a finished run (the
//! `--json` output), and the event that announces either ending.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::error::Result;
use crate::events::{self, Event};
use crate::progress::human_bytes;

use super::plan::Plan;

#[derive(Debug, Serialize)]
pub struct DryRun {
    pub node: String,
    pub source: String,
    #[serde(flatten)]
    pub plan: Plan,
    pub estimated_bytes: Option<u64>,
    /// The plan for a person to read.
    #[serde(skip)]
    pub text: String,
}

/// What a finished re-seed reports (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub node: String,
    pub source: String,
    pub mode: &'static str,
    /// The transfer continued the partial receive of an interrupted run.
    pub resumed: bool,
    pub snapshot: String,
    pub base: Option<String>,
    pub renamed_aside: Option<String>,
    pub bytes: u64,
    pub seconds: f64,
    pub transfer_seconds: f64,
    pub throughput_bytes_per_second: u64,
    pub steps: BTreeMap<String, f64>,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub slot: Option<String>,
    pub replication_state: String,
    pub lag_bytes: Option<i64>,
    /// The steps in the order they ran, for the human summary.
    #[serde(skip)]
    pub step_order: Vec<(String, f64)>,
}

impl Summary {
    /// On stdout, for a person or (`json`) for a program.
    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(self).expect("summary serializes")
            );
        } else {
            println!("{}", self.text());
        }
    }

    /// The summary for a person to read.
    pub fn text(&self) -> String {
        let mut out = format!(
            "re-seeded {} from {}: {}{} ({}{}) of {}\n  {} in {:.1}s ({}/s); total {:.1}s\n  replication: {}, lag {}\n",
            self.node,
            self.source,
            self.mode,
            if self.resumed { ", resumed" } else { "" },
            self.snapshot,
            self.base.as_ref().map(|b| format!(" since {b}")).unwrap_or_default(),
            human_bytes(self.bytes),
            human_bytes(self.bytes),
            self.transfer_seconds,
            human_bytes(self.throughput_bytes_per_second),
            self.seconds,
            self.replication_state,
            self.lag_bytes.map(|b| human_bytes(b.max(0) as u64)).unwrap_or_else(|| "unknown".into()),
        );
        if let Some(aside) = &self.renamed_aside {
            out.push_str(&format!("  the previous dataset is kept as {aside}\n"));
        }
        out.push_str("  steps:");
        for (name, secs) in &self.step_order {
            out.push_str(&format!(" {name} {secs:.1}s;"));
        }
        out
    }
}

/// Announce how a re-seed ended (hook and NOTIFY) as `event` ("reset_secondary",
/// "rejoin"), and pass the outcome on.
pub fn announce(
    config: &Config,
    node: &str,
    event: &'static str,
    from: Option<&str>,
    outcome: Result<Summary>,
) -> Result<Summary> {
    match outcome {
        Ok(summary) => {
            let details = format!(
                "{} from {} ({} bytes)",
                summary.mode, summary.snapshot, summary.bytes
            );
            events::emit(
                config,
                Event::new(event, node, true, details, Some(&summary.source)),
            );
            Ok(summary)
        }
        Err(e) => {
            let command = event.replace('_', "-");
            events::emit_failure(config, node, &command, &e, from);
            Err(e.context(command))
        }
    }
}

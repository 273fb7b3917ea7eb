//! Events: every role change is logged, handed to the configured hook command and sent as
//! `pg_notify('pgzfs', <json>)` on the primary. A failing hook is logged and never stops
//! the role change it reports on.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::exec::{self, Cmd};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// One of `config::EVENT_NAMES`.
    pub event: &'static str,
    pub node: String,
    pub success: bool,
    pub details: String,
    /// The other node involved: the new primary for `rejoin`/`follow`, the target of a
    /// `switchover`, ...
    pub other: Option<String>,
    pub timestamp: String,
}

impl Event {
    pub fn new(
        event: &'static str,
        node: &str,
        success: bool,
        details: impl Into<String>,
        other: Option<&str>,
    ) -> Event {
        Event {
            event,
            node: node.to_string(),
            success,
            details: details.into(),
            other: other.map(str::to_string),
            timestamp: crate::timestamp::utc_rfc3339(SystemTime::now()),
        }
    }
}

/// Split a command template into words the way a shell would for plain words and
/// quotes, *before* placeholders are filled in: a detail text can then never become a
/// second word, let alone a second command.
pub fn split_template(template: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.push(chars.next().ok_or("unterminated \" quote")?),
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("trailing backslash")?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("empty command".into());
    }
    Ok(words)
}

/// Fill the repmgr-compatible placeholders into one word.
pub fn expand(word: &str, event: &Event) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(&event.node),
            Some('e') => out.push_str(event.event),
            Some('s') => out.push(if event.success { '1' } else { '0' }),
            Some('t') => out.push_str(&event.timestamp),
            Some('d') => out.push_str(&event.details),
            Some('p') => out.push_str(event.other.as_deref().unwrap_or("")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

pub fn hook_command(events: &Events, event: &Event) -> Option<std::result::Result<Cmd, String>> {
    let template = events.command.as_ref()?;
    if !events.only.is_empty() && !events.only.iter().any(|e| e == event.event) {
        return None;
    }
    Some(split_template(template).map(|words| Cmd {
        argv: words.iter().map(|w| expand(w, event)).collect(),
    }))
}

/// Log the event, run the hook, notify the primary. Never fails.
pub fn emit(config: &Config, event: Event) {
    let json = serde_json::to_string(&event).expect("event serializes");
    if event.success {
        tracing::info!("event {}: {json}", event.event);
    } else {
        tracing::warn!("event {}: {json}", event.event);
    }
    if let Some(cmd) = hook_command(&config.events, &event) {
        match cmd
            .map_err(|e| Error::usage(format!("events.command: {e}")))
            .and_then(|cmd| run_hook(config, &cmd, &event))
        {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                "event hook for {} failed (the {} itself is not affected): {e}",
                event.event,
                event.event
            ),
        }
    }
    if let Err(e) = notify_primary(config, &json) {
        tracing::debug!("no pg_notify for {}: {e}", event.event);
    }
}

/// A `failure` event for a command that failed while doing its work. A refusal (exit 3)
/// or a usage error (exit 2) changed nothing, so it is logged but is no failure event.
pub fn emit_failure(
    config: &Config,
    node: &str,
    command: &str,
    error: &Error,
    other: Option<&str>,
) {
    if error.exit_code() == 1 {
        emit(
            config,
            Event::new("failure", node, false, format!("{command}: {error}"), other),
        );
    }
}

fn run_hook(config: &Config, cmd: &Cmd, event: &Event) -> Result<()> {
    // The hook also gets the event as environment variables, with the addresses of the
    // nodes involved, so that hooks like contrib/pgbouncer-repoint need no config parsing.
    let mut command = std::process::Command::new(cmd.program());
    command
        .args(&cmd.argv[1..])
        .stdin(std::process::Stdio::null());
    command
        .env("PGZFS_EVENT", event.event)
        .env("PGZFS_NODE", &event.node)
        .env("PGZFS_SUCCESS", if event.success { "1" } else { "0" });
    command
        .env("PGZFS_DETAILS", &event.details)
        .env("PGZFS_TIMESTAMP", &event.timestamp)
        .env("PGZFS_CLUSTER", &config.cluster);
    for (prefix, name) in [
        ("PGZFS_NODE", Some(&event.node)),
        ("PGZFS_OTHER", event.other.as_ref()),
    ] {
        if let Some(node) = name.and_then(|n| config.node(n).ok()) {
            command
                .env(format!("{prefix}_HOST"), &node.host)
                .env(format!("{prefix}_PORT"), node.pg_port.to_string());
        }
    }
    if let Some(other) = &event.other {
        command.env("PGZFS_OTHER_NODE", other);
    }
    tracing::debug!("event hook: {}", cmd.display());
    let out = command
        .output()
        .map_err(|e| Error::failed(format!("cannot run {}: {e}", cmd.program())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "`{}` failed ({}): {}",
            cmd.display(),
            exec::describe_status(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `pg_notify('pgzfs', json)` on whichever configured node is a reachable primary.
fn notify_primary(config: &Config, json: &str) -> Result<()> {
    for node in &config.nodes {
        let Ok(mut pg) = crate::pg::Pg::connect(&crate::cluster::pg_target(node)) else {
            continue;
        };
        if pg.is_in_recovery().unwrap_or(true) {
            continue;
        }
        return pg.notify("pgzfs", json);
    }
    Err(Error::failed("no reachable primary"))
}

/// `[events]`: `command` is a template with repmgr-compatible placeholders (%n node,
/// %e event, %s success 1/0, %t timestamp, %d details, %p the other node); `only`
/// limits which events run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub command: Option<String>,
    pub only: Vec<String>,
}

/// The events pgzfs emits. `daemon`: a state change the daemon saw or caused (streaming
/// broken or back, PostgreSQL restarted, a re-seed started). `verify`: a scheduled
/// `pgzfs verify` (verify_every) ended, with its verdict.
pub const EVENT_NAMES: [&str; 9] = [
    "promote",
    "fence",
    "rejoin",
    "switchover",
    "follow",
    "reset_secondary",
    "failure",
    "daemon",
    "verify",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            event: "promote",
            node: "db2".into(),
            success: true,
            details: "promoted; was 0 B behind; x'; rm -rf / #".into(),
            other: Some("db1".into()),
            timestamp: "2026-11-22T01:00:00Z".into(),
        }
    }

    #[test]
    fn placeholders_are_filled_like_repmgr_does() {
        let e = event();
        assert_eq!(
            expand("%n:%e:%s:%t:%p:100%%", &e),
            "db2:promote:1:2026-11-22T01:00:00Z:db1:100%"
        );
    }

    #[test]
    fn a_detail_text_stays_one_argument_whatever_it_contains() {
        let events = Events {
            command: Some("/usr/local/libexec/notify --event %e 'details: %d'".into()),
            only: vec![],
        };
        let cmd = hook_command(&events, &event()).unwrap().unwrap();
        assert_eq!(cmd.argv.len(), 4);
        assert_eq!(
            cmd.argv[3],
            "details: promoted; was 0 B behind; x'; rm -rf / #"
        );
    }

    #[test]
    fn only_the_listed_events_run_the_hook() {
        let events = Events {
            command: Some("/bin/true %e".into()),
            only: vec!["fence".into()],
        };
        assert!(hook_command(&events, &event()).is_none());
        let events = Events {
            command: Some("/bin/true %e".into()),
            only: vec!["promote".into()],
        };
        assert!(hook_command(&events, &event()).is_some());
        assert!(
            hook_command(&Events::default(), &event()).is_none(),
            "no command, no hook"
        );
    }

    #[test]
    fn templates_split_like_a_shell_for_quotes_and_refuse_broken_ones() {
        assert_eq!(
            split_template(r#"a "b c" 'd e' f\ g"#).unwrap(),
            vec!["a", "b c", "d e", "f g"]
        );
        assert!(split_template("a 'b").is_err());
        assert!(split_template("   ").is_err());
    }
}

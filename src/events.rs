//! Events: every role change is logged, handed to the configured hook command and sent as
//! `pg_notify('pgzfs', <json>)` on the primary. A failing hook is logged and never stops
//! the role change it reports on.

use std::time::{Duration, SystemTime};

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
    // A clean environment (nothing of what started pgzfs, e.g. PGPASSWORD), plus the
    // event as variables with the client addresses of the nodes involved, so that hooks like
    // contrib/pgbouncer-repoint need no config parsing.
    let mut command = std::process::Command::new(cmd.program());
    command
        .args(&cmd.argv[1..])
        .stdin(std::process::Stdio::null());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".to_string());
    exec::clean_env(&mut command, Some(&home));
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
                .env(format!("{prefix}_HOST"), node.client_host())
                .env(format!("{prefix}_PORT"), node.pg.pg_port.to_string());
        }
    }
    if let Some(other) = &event.other {
        command.env("PGZFS_OTHER_NODE", other);
    }
    tracing::debug!("event hook: {}", cmd.display());
    let timeout = config.events.timeout;
    run_with_timeout(command, cmd, timeout)
}

/// Run a hook, killing it (and whatever it started in its process group) once `timeout`
/// has passed: a hung hook must not freeze the daemon or a promote.
fn run_with_timeout(
    mut command: std::process::Command,
    cmd: &Cmd,
    timeout: std::time::Duration,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| Error::failed(format!("cannot run {}: {e}", cmd.program())))?;
    let mut stderr = exec::StderrDrain::spawn(child.stderr.take().expect("piped stderr"));
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Ok(None) => {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                // Not waiting for its stderr: something that left the group may hold it.
                return Err(Error::failed(format!(
                    "`{}` was still running after {}; killed",
                    cmd.display(),
                    crate::duration::format_duration(timeout)
                )));
            }
            Err(e) => return Err(Error::failed(format!("waiting for {}: {e}", cmd.program()))),
        }
    };
    if status.success() {
        Ok(())
    } else {
        let said: String = stderr.take().chars().take(2000).collect();
        Err(Error::failed(format!(
            "`{}` failed ({}): {said}",
            cmd.display(),
            exec::describe_status(status),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events {
    pub command: Option<String>,
    pub only: Vec<String>,
    /// `events.timeout`: how long a hook may run before it is killed. A hung hook must
    /// not hold up a promote or the daemon.
    pub timeout: Duration,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            command: None,
            only: Vec::new(),
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

/// `[events]` as written in the config file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    command: Option<String>,
    only: Option<Vec<String>>,
    timeout: Option<String>,
}

impl Events {
    /// `[events]` checked, with the defaults for what it leaves out; an error names the key.
    pub fn from_config(raw: Option<RawEvents>) -> std::result::Result<Events, String> {
        let Some(raw) = raw else {
            return Ok(Events::default());
        };
        if let Some(command) = &raw.command {
            if command.trim().is_empty() || command.contains(['\n', '\r', '\0']) {
                return Err("events.command: must be one non-empty line".to_string());
            }
            // Split now, as it will be when an event fires: a broken template must be found
            // when the configuration is read, not in the middle of a failover.
            split_template(command).map_err(|why| format!("events.command: {why}"))?;
        }
        let timeout = match raw.timeout {
            Some(text) => {
                let timeout = crate::duration::parse_duration(&text)
                    .map_err(|why| format!("events.timeout: {why}"))?;
                if timeout.is_zero() {
                    return Err("events.timeout: must be more than 0s".to_string());
                }
                timeout
            }
            None => DEFAULT_HOOK_TIMEOUT,
        };
        let only = raw.only.unwrap_or_default();
        if let Some(unknown) = only.iter().find(|e| !EVENT_NAMES.contains(&e.as_str())) {
            return Err(format!(
                "events.only: unknown event {unknown:?}; known: {}",
                EVENT_NAMES.join(", ")
            ));
        }
        Ok(Events {
            command: raw.command,
            only,
            timeout,
        })
    }
}

/// How long an event hook may run when `events.timeout` is not set.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

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
            ..Events::default()
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
            ..Events::default()
        };
        assert!(hook_command(&events, &event()).is_none());
        let events = Events {
            command: Some("/bin/true %e".into()),
            only: vec!["promote".into()],
            ..Events::default()
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

    #[test]
    fn a_hung_hook_is_killed_after_its_timeout_with_what_it_started() {
        let dir = std::env::temp_dir().join(format!("pgzfs-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("still-running");
        // The hook starts a child that would write the marker after 3 s, then hangs.
        let script = format!("(sleep 3; touch {}) & sleep 600", marker.display());
        let cmd = Cmd::new("/bin/sh").arg("-c").arg(script);
        let mut command = std::process::Command::new("/bin/sh");
        command.args(&cmd.argv[1..]);
        let started = std::time::Instant::now();
        let err =
            run_with_timeout(command, &cmd, std::time::Duration::from_millis(300)).unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "did not wait for it"
        );
        std::thread::sleep(std::time::Duration::from_millis(3500));
        assert!(!marker.exists(), "the hook's own child was killed too");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hook_runs_with_a_clean_environment() {
        let dir = std::env::temp_dir().join(format!("pgzfs-hook-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let cmd = Cmd::new("/bin/sh")
            .arg("-c")
            .arg(format!("env > {}", out.display()));
        let mut command = std::process::Command::new("/bin/sh");
        command.args(&cmd.argv[1..]);
        // What pgzfs itself might have been started with.
        command
            .env("PGPASSWORD", "secret")
            .env("LD_PRELOAD", "/tmp/evil.so");
        exec::clean_env(&mut command, Some("/root"));
        run_with_timeout(command, &cmd, std::time::Duration::from_secs(10)).unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        for line in env.lines() {
            let name = line.split('=').next().unwrap();
            assert!(
                ["PATH", "HOME", "PWD", "SHLVL", "_", "LANG", "TZ"].contains(&name)
                    || name.starts_with("LC_"),
                "{name} leaked into the hook's environment:\n{env}"
            );
        }
        assert!(env.contains(&format!("PATH={}", exec::CLEAN_PATH)), "{env}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

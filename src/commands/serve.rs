//! `pgzfs serve`: the SSH forced command on a node that other nodes pull snapshots from.
//!
//! ```text
//! command="/usr/local/bin/pgzfs serve",restrict ssh-ed25519 AAAA... zfssync@db2
//! ```
//!
//! sshd runs it instead of whatever the client asked for and passes the client's command
//! in `SSH_ORIGINAL_COMMAND`, as one string. pgzfs's own client builds that string with
//! [`crate::shell::join`]; [`split`] reads back exactly that quoting and nothing more, and
//! [`check`] allows exactly the zfs(8) commands [`crate::zfs::cli::ZfsCli`] issues to a
//! source node, on this node's configured dataset and its snapshots. The allowed command
//! is then executed directly (no shell), with the SSH channel as its stdin and stdout.
//! Anything else is refused with exit code 3 and logged with the client's address.
//!
//! `serve --for NODE` binds a key to one standby ([`Binding`]): holds and releases only
//! with that node's tag, `zfs set` only on a snapshot this key created over the same SSH
//! connection (marked [`TAKEN_FOR`] by serve) and only once, `snapshot --for` only for
//! that node. Without it, any standby's key may act for any standby.
//!
//! Two kinds of pgzfs's own commands get through too, always run as this node's pgzfs
//! with the configuration and node serve itself runs with (the client's `--config` is
//! replaced, its `--node` must name this node):
//! - `pgzfs snapshot --json --for STANDBY`, the backup-safe cut of a standby's re-seed
//!   with `backup_via = "ssh"`: backup start and stop through this node's own PostgreSQL
//!   session, so the standby needs no backup privilege here;
//! - with `serve --allow-orchestration` only, what `switchover` asks of the other nodes:
//!   `pgzfs promote --force` and `pgzfs follow --to NODE`. A key that can promote a node
//!   can make a second primary, so it is not given to every key that may pull snapshots;
//! - `pgzfs compressed-send --zstd N -- zfs send ...`, a standby's stream compressed
//!   (`ssh_compress`), where the `zfs send` must be one [`check`] allows by itself, and
//!   its resume token is verified just the same.

use std::os::unix::process::CommandExt;
use std::path::Path;

use clap::Args;

use crate::compress::ZstdLevel;
use crate::context::Invocation;
use crate::error::{Error, Result};
use crate::zfs::features::ResumeToken;
use crate::zfs::names::{DatasetName, HoldTag, SnapName, SnapshotName};

#[derive(Debug, Args)]
pub struct Serve {
    /// Also allow `pgzfs promote --force` and `pgzfs follow --to NODE` on this node, as
    /// `pgzfs switchover` run on another node asks
    #[arg(long)]
    pub allow_orchestration: bool,
    /// Bind this key to one standby: holds and releases only with that node's tag,
    /// `zfs set` only on a snapshot this key created over the same SSH connection,
    /// `snapshot --for` only for that node
    #[arg(long = "for", value_name = "NODE")]
    pub for_node: Option<String>,
}

impl Serve {
    pub fn run(&self, invocation: &Invocation) -> Result<i32> {
        let ctx = invocation.load()?;
        let dataset = ctx.local.dataset.clone();
        let scope = Scope::new(&dataset, &ctx.local.tablespaces);
        let client = client_address();
        let line = match std::env::var("SSH_ORIGINAL_COMMAND") {
            Ok(line) => line,
            Err(std::env::VarError::NotPresent) => String::new(),
            Err(std::env::VarError::NotUnicode(raw)) => {
                return Err(Error::refused(format!(
                    "serve: refused a command from {client}: it is not UTF-8 ({} bytes), and pgzfs sends only UTF-8",
                    raw.len()
                )))
            }
        };
        let refuse = |why: String| {
            Error::refused(format!(
                "serve: refused {} from {client}: {}",
                shown(&line),
                bounded(&why)
            ))
        };
        if line.is_empty() {
            return Err(refuse(
                "no command (an interactive login, or pgzfs serve run outside sshd)".to_string(),
            ));
        }
        let argv = split(&line).map_err(&refuse)?;
        let binding = match &self.for_node {
            Some(node) => Some(Binding::new(&ctx.config, &ctx.local.name, node)?),
            None => None,
        };
        if is_pgzfs(&argv) {
            let nodes: Vec<&str> = ctx.config.nodes.iter().map(|n| n.name.as_str()).collect();
            let allowed = check_pgzfs_in(
                &argv,
                &ctx.local.name,
                &nodes,
                &scope,
                self.allow_orchestration,
            )
            .map_err(&refuse)?;
            if let Some(binding) = &binding {
                binding.check_pgzfs(&allowed).map_err(&refuse)?;
            }
            if let Some(token) = &allowed.resume {
                verify_resume_token(token, &dataset).map_err(&refuse)?;
            }
            let verb = allowed.argv;
            let program = std::env::current_exe()
                .map_err(|e| Error::failed(format!("serve: cannot find its own binary: {e}")))?;
            tracing::debug!("serve: {client}: pgzfs {}", crate::shell::join(&verb));
            let err = std::process::Command::new(&program)
                .arg("--config")
                .arg(&ctx.config.path)
                .arg("--node")
                .arg(&ctx.local.name)
                .args(&verb)
                .exec();
            return Err(Error::failed(format!(
                "serve: cannot run {}: {err}",
                program.display()
            )));
        }
        let mut allowed = check_in(&argv, &scope).map_err(&refuse)?;
        if let Some(binding) = &binding {
            allowed = binding.bind(allowed).map_err(&refuse)?;
        }
        if let Some(token) = &allowed.resume {
            verify_resume_token(token, &dataset).map_err(&refuse)?;
        }
        if let (Some(binding), Some(set)) = (&binding, &allowed.set) {
            verify_set(binding, set).map_err(&refuse)?;
        }
        tracing::debug!("serve: {client}: {}", crate::shell::join(&allowed.argv));
        let program = crate::exec::find_program(&allowed.argv[0]);
        // exec replaces this process: zfs gets the channel as stdin/stdout, and its exit
        // status (or the signal that killed it) goes back to the client unchanged.
        let err = std::process::Command::new(&program)
            .args(&allowed.argv[1..])
            .exec();
        Err(Error::failed(format!("serve: cannot run {program}: {err}")))
    }
}

/// Who is asking, for the log: sshd's `SSH_CONNECTION` ("addr port localaddr localport")
/// or the older `SSH_CLIENT` ("addr port localport").
fn client_address() -> String {
    let from = |var: &str| {
        std::env::var(var).ok().and_then(|v| {
            let mut words = v.split_whitespace();
            Some(format!("{} port {}", words.next()?, words.next()?))
        })
    };
    from("SSH_CONNECTION")
        .or_else(|| from("SSH_CLIENT"))
        .unwrap_or_else(|| "an unknown client (not run by sshd)".to_string())
}

/// The command as logged: quoted (so control characters cannot forge log lines) and cut
/// short (so a hostile client cannot fill the disk one refusal at a time).
fn shown(line: &str) -> String {
    const MAX: usize = 300;
    if line.chars().count() > MAX {
        let head: String = line.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", line.len())
    } else {
        format!("{line:?}")
    }
}

/// A reason for the log, cut short and without control characters: it may quote parts of
/// the client's command.
fn bounded(why: &str) -> String {
    const MAX: usize = 300;
    let clean: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if why.chars().count() > MAX {
        format!("{clean}...")
    } else {
        clean
    }
}

/// Characters [`crate::shell::quote`] leaves unquoted.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_./:=@%,+".contains(c)
}

/// Split a command line quoted by [`crate::shell::join`], accepting exactly what it
/// produces: words separated by single spaces, each either plain characters only or one
/// single-quoted string in which a quote is written `'\''`. Every word must be in the
/// form `quote` gives it, so `'-i'` or `a'b'` are refused although a shell would accept
/// them. Nothing a shell would interpret — `;`, `|`, `$`, backquotes, double quotes,
/// globs, redirections, tabs or newlines outside quotes — can get through.
pub fn split(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.char_indices().peekable();
    loop {
        let start = chars.peek().map(|(i, _)| *i).unwrap_or(line.len());
        let mut word = String::new();
        loop {
            match chars.peek().copied() {
                None | Some((_, ' ')) => break,
                Some((_, '\'')) => {
                    chars.next();
                    loop {
                        match chars.next() {
                            Some((_, '\'')) => break,
                            Some((_, c)) => word.push(c),
                            None => return Err("unterminated single quote".to_string()),
                        }
                    }
                }
                Some((_, '\\')) => {
                    chars.next();
                    match chars.next() {
                        Some((_, '\'')) => word.push('\''),
                        other => {
                            return Err(format!(
                                "a backslash may only escape a single quote, not {:?}",
                                other.map(|(_, c)| c)
                            ))
                        }
                    }
                }
                Some((_, c)) if is_plain(c) => {
                    chars.next();
                    word.push(c);
                }
                Some((_, c)) => return Err(format!("{c:?} outside quotes")),
            }
        }
        let end = chars.peek().map(|(i, _)| *i).unwrap_or(line.len());
        let raw = &line[start..end];
        if raw.is_empty() {
            return Err("empty word (leading, trailing or doubled space)".to_string());
        }
        if crate::shell::quote(&word) != raw {
            return Err(format!("{raw:?} is not quoted the way pgzfs quotes"));
        }
        words.push(word);
        // Past the single space between words, or done.
        if chars.next().is_none() {
            return Ok(words);
        }
    }
}

/// A command [`check`] or [`check_pgzfs`] allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// What to execute: from [`check`], starting with the program name ("zfs" or
    /// "zpool"); from [`check_pgzfs`], the pgzfs verb and its arguments.
    pub argv: Vec<String>,
    /// For `zfs send -t TOKEN`, also inside `compressed-send`: the token, which must be
    /// verified against this node's ZFS before the send runs (see [`verify_resume_token`]).
    pub resume: Option<ResumeToken>,
    /// For `zfs set` under `serve --for`: the snapshot and its properties, each of which
    /// must be checked against this node's ZFS before the set runs (see
    /// [`Binding::may_set`]).
    pub set: Option<(SnapshotName, Vec<String>)>,
}

/// Properties a client may read: what pgzfs needs, nothing that lists other datasets.
const READABLE: &[&str] = &[
    "type",
    "guid",
    "createtxg",
    "userrefs",
    "referenced",
    "used",
    "written",
    "mounted",
    "mountpoint",
    "receive_resume_token",
    "encryption",
];

/// Properties probed with `zfs get -H -o value PROP [OBJECT]` to detect features.
const PROBES: &[&str] = &["written", "receive_resume_token", "encryption"];

/// Pool features probed with `zpool get -H -o value feature@NAME POOL`.
const POOL_FEATURES: &[&str] = &[
    "bookmarks",
    "encryption",
    "large_blocks",
    "embedded_data",
    "lz4_compress",
    "extensible_dataset",
];

/// Flags `zfs send` may carry, as [`crate::zfs::features::SendOptions::flags`] emits them.
const SEND_FLAGS: &[&str] = &["-L", "-e", "-c", "-w"];

/// Decide whether `argv` is one of the commands a standby needs from this node, on
/// `dataset` (the local node's configured dataset) and its snapshots only. Err says why
/// not, for the log.
pub fn check(argv: &[String], dataset: &DatasetName) -> std::result::Result<Allowed, String> {
    check_in(argv, &Scope::new(dataset, &[]))
}

/// The datasets a standby may reach here: this node's dataset, every dataset below it
/// (pg_wal and other children travel as their own streams), and its tablespaces.
pub struct Scope<'a> {
    pub dataset: &'a DatasetName,
    pub tablespaces: Vec<DatasetName>,
}

impl<'a> Scope<'a> {
    pub fn new(dataset: &'a DatasetName, tablespaces: &[crate::datasets::Tablespace]) -> Scope<'a> {
        Scope {
            dataset,
            tablespaces: tablespaces.iter().map(|t| t.dataset.clone()).collect(),
        }
    }

    fn covers(&self, other: &DatasetName) -> bool {
        other == self.dataset
            || other
                .as_str()
                .strip_prefix(self.dataset.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
            || self.tablespaces.contains(other)
    }

    fn covers_name(&self, name: &str) -> bool {
        DatasetName::parse(name).is_ok_and(|d| self.covers(&d))
    }

    fn has_pool(&self, pool: &str) -> bool {
        pool == self.dataset.pool() || self.tablespaces.iter().any(|t| t.pool() == pool)
    }
}

/// [`check`] within the whole `scope`.
pub fn check_in(argv: &[String], scope: &Scope) -> std::result::Result<Allowed, String> {
    let dataset = scope.dataset;
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let allow = |argv: Vec<&str>| Allowed {
        argv: argv.into_iter().map(String::from).collect(),
        resume: None,
        set: None,
    };
    let ours = |name: &str| -> std::result::Result<SnapshotName, String> {
        let snapshot = SnapshotName::parse(name).map_err(|e| e.message().to_string())?;
        if !scope.covers(snapshot.dataset()) {
            return Err(format!("{name} is not a snapshot of {dataset}"));
        }
        Ok(snapshot)
    };
    let ours_pgzfs = |name: &str| -> std::result::Result<SnapshotName, String> {
        let snapshot = ours(name)?;
        if !snapshot.snap().is_pgzfs() {
            return Err(format!("{name} is not a pgzfs- snapshot"));
        }
        Ok(snapshot)
    };
    match words.as_slice() {
        // Rows of properties: ZfsCli::get_rows.
        ["zfs", "get", "-H", "-p", rest @ ..] => {
            let (depth, rest): (&[&str], &[&str]) = match rest {
                ["-d", "1", rest @ ..] => (&["-d", "1"], rest),
                ["-r", rest @ ..] => (&["-r"], rest),
                rest => (&[], rest),
            };
            let ["-o", "name,property,value", props, object] = rest else {
                return Err("not a zfs get form pgzfs uses".to_string());
            };
            check_props(props)?;
            if !scope.covers_name(object) {
                if !depth.is_empty() {
                    return Err(format!("{object}: only {dataset} may be listed"));
                }
                ours(object)?;
            }
            let mut argv = vec!["zfs", "get", "-H", "-p"];
            argv.extend_from_slice(depth);
            argv.extend(["-o", "name,property,value", props, object]);
            Ok(allow(argv))
        }
        // Feature probes: ZfsCli::features, features_for, is_encrypted, resume_token.
        ["zfs", "get", "-H", "-o", "value", prop, object @ ..] => {
            if !PROBES.contains(prop) {
                return Err(format!("property {prop:?} is not probed by pgzfs"));
            }
            let object = match object {
                // Without an object zfs would answer for every dataset on the node; the
                // answer for ours tells the same about the feature.
                [] => dataset.as_str(),
                [object] if scope.covers_name(object) || scope.has_pool(object) => object,
                [object] => {
                    ours(object)?;
                    object
                }
                _ => return Err("more than one object".to_string()),
            };
            Ok(allow(vec!["zfs", "get", "-H", "-o", "value", prop, object]))
        }
        ["zpool", "get", "-H", "-o", "value", feature, pool] => {
            let known = feature
                .strip_prefix("feature@")
                .is_some_and(|f| POOL_FEATURES.contains(&f));
            if !known {
                return Err(format!("{feature:?} is not a pool feature pgzfs probes"));
            }
            if !scope.has_pool(pool) {
                return Err(format!("{pool} is not the pool of {dataset}"));
            }
            Ok(allow(vec![
                "zpool", "get", "-H", "-o", "value", feature, pool,
            ]))
        }
        ["zfs", "snapshot", "-r", rest @ ..] => {
            let mut argv = vec!["zfs", "snapshot", "-r"];
            let mut options = rest;
            while let ["-o", assignment, tail @ ..] = options {
                check_pgzfs_assignment(assignment)?;
                argv.extend(["-o", assignment]);
                options = tail;
            }
            // One cut: the dataset and its tablespaces in one call, where zfs can.
            if options.is_empty() {
                return Err("not a zfs snapshot form pgzfs uses".to_string());
            }
            for name in options {
                if name.starts_with('-') {
                    return Err("not a zfs snapshot form pgzfs uses".to_string());
                }
                ours_pgzfs(name)?;
                argv.push(name);
            }
            Ok(allow(argv))
        }
        // A cut's record, in one call where the zfs takes several properties.
        ["zfs", "set", assignments @ .., name] if !assignments.is_empty() => {
            ours_pgzfs(name)?;
            let mut argv = vec!["zfs", "set"];
            let mut seen = Vec::new();
            for assignment in assignments {
                let prop = check_pgzfs_assignment(assignment)?;
                if seen.contains(&prop) {
                    return Err(format!("{prop} is set twice in one call"));
                }
                seen.push(prop);
                argv.push(assignment);
            }
            argv.push(name);
            Ok(allow(argv))
        }
        // The usage text, which lists the flags this zfs knows (ZfsCli::features).
        ["zfs", "send"] => Ok(allow(vec!["zfs", "send"])),
        ["zfs", "send", "-t", token] => {
            let token = ResumeToken::parse(token).map_err(|e| e.message().to_string())?;
            Ok(Allowed {
                argv: vec![
                    "zfs".into(),
                    "send".into(),
                    "-t".into(),
                    token.as_str().into(),
                ],
                resume: Some(token),
                set: None,
            })
        }
        ["zfs", "send", rest @ ..] => {
            let mut argv = vec!["zfs", "send"];
            let mut rest = rest;
            while let [flag, tail @ ..] = rest {
                if !SEND_FLAGS.contains(flag) {
                    break;
                }
                if argv.contains(flag) {
                    return Err(format!("{flag} given twice"));
                }
                argv.push(flag);
                rest = tail;
            }
            let (base, target) = match rest {
                ["-i", base, target] => (Some(*base), *target),
                [target] => (None, *target),
                _ => return Err("not a zfs send form pgzfs uses".to_string()),
            };
            let target_snapshot = ours(target)?;
            if let Some(base) = base {
                if ours(base)? == target_snapshot {
                    return Err("an incremental from a snapshot to itself".to_string());
                }
                argv.extend(["-i", base]);
            }
            argv.push(target);
            Ok(allow(argv))
        }
        // One snapshot, or several in one call (a tree's new cut held at once, a node's
        // old bases released at once).
        ["zfs", verb @ ("hold" | "release"), tag, names @ ..] if !names.is_empty() => {
            let tag = HoldTag::parse(tag).map_err(|e| e.message().to_string())?;
            if !tag.as_str().starts_with("pgzfs-") {
                return Err(format!("hold tag {tag} does not start with pgzfs-"));
            }
            let mut argv = vec!["zfs", verb, tag.as_str()];
            for name in names {
                if name.starts_with('-') {
                    return Err(format!("not a zfs {verb} form pgzfs uses"));
                }
                ours_pgzfs(name)?;
                if argv[3..].contains(name) {
                    return Err(format!("{name} is named twice in one call"));
                }
                argv.push(name);
            }
            Ok(allow(argv))
        }
        // Reading the hold tags (ZfsCli::holds); zfs-fuse's is broken, OpenZFS's works.
        ["zfs", "holds", "-H", name] => {
            ours(name)?;
            Ok(allow(vec!["zfs", "holds", "-H", name]))
        }
        ["zfs", "bookmark", name, bookmark] => {
            let snapshot = ours_pgzfs(name)?;
            if *bookmark != format!("{}#{}", snapshot.dataset(), snapshot.snap()) {
                return Err(format!(
                    "the bookmark of {name} must be named {}#{}",
                    snapshot.dataset(),
                    snapshot.snap()
                ));
            }
            Ok(allow(vec!["zfs", "bookmark", name, bookmark]))
        }
        [] => Err("empty command".to_string()),
        [program, ..] if *program != "zfs" && *program != "zpool" => {
            Err(format!("{program:?} is not zfs"))
        }
        _ => Err("not a command a standby needs from this node".to_string()),
    }
}

/// A pgzfs command line (`.../pgzfs --config PATH --node NODE VERB ...`), as
/// `reset-secondary` and `switchover` send them, by the program's file name.
fn is_pgzfs(argv: &[String]) -> bool {
    argv.first()
        .is_some_and(|program| Path::new(program).file_name() == Some("pgzfs".as_ref()))
}

/// The pgzfs commands another node may run here: the verb and its arguments, to run with
/// serve's own `--config` and `--node`. `this_node` is the node serve runs as; `nodes`
/// every configured node; `dataset` this node's dataset, the only one a `compressed-send`
/// may send from. Err says why not, for the log.
pub fn check_pgzfs(
    argv: &[String],
    this_node: &str,
    nodes: &[&str],
    dataset: &DatasetName,
    allow_orchestration: bool,
) -> std::result::Result<Allowed, String> {
    check_pgzfs_in(
        argv,
        this_node,
        nodes,
        &Scope::new(dataset, &[]),
        allow_orchestration,
    )
}

/// [`check_pgzfs`] with a `compressed-send` of any dataset in `scope`.
pub fn check_pgzfs_in(
    argv: &[String],
    this_node: &str,
    nodes: &[&str],
    scope: &Scope,
    allow_orchestration: bool,
) -> std::result::Result<Allowed, String> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    let [_program, "--config", _client_config, "--node", node, verb @ ..] = words.as_slice() else {
        return Err("not a pgzfs command form other nodes send".to_string());
    };
    if *node != this_node {
        return Err(format!(
            "--node {node:?}: this key reaches node {this_node} only"
        ));
    }
    let other_node = |name: &str| -> std::result::Result<(), String> {
        if !nodes.contains(&name) {
            return Err(format!("{name:?} is not a configured node"));
        }
        if name == this_node {
            return Err(format!("{name:?} is this node itself"));
        }
        Ok(())
    };
    match verb {
        ["snapshot", "--json", "--for", standby] => other_node(standby)?,
        ["promote", "--force"] | ["follow", "--to", _] if !allow_orchestration => {
            return Err(format!(
                "{} is orchestration; this key's forced command lacks --allow-orchestration",
                verb[0]
            ))
        }
        ["promote", "--force"] => {}
        ["follow", "--to", primary] => other_node(primary)?,
        ["compressed-send", "--zstd", level, "--", send @ ..] => {
            ZstdLevel::parse(level)?;
            let send: Vec<String> = send.iter().map(|w| w.to_string()).collect();
            let inner = check_in(&send, scope)?;
            if !crate::compress::is_zfs_send(&inner.argv) {
                return Err("compressed-send runs a zfs send of a snapshot only".to_string());
            }
            let mut argv: Vec<String> = ["compressed-send", "--zstd", level, "--"]
                .iter()
                .map(|w| w.to_string())
                .collect();
            argv.extend(inner.argv);
            return Ok(Allowed {
                argv,
                resume: inner.resume,
                set: None,
            });
        }
        _ => return Err("not a pgzfs command other nodes may run here".to_string()),
    }
    Ok(Allowed {
        argv: verb.iter().map(|w| w.to_string()).collect(),
        resume: None,
        set: None,
    })
}

/// A comma-separated property list of readable properties, `written@SNAP` and pgzfs user
/// properties.
fn check_props(list: &str) -> std::result::Result<(), String> {
    for prop in list.split(',') {
        // The tuning properties a new copy takes over (recordsize, logbias, ...).
        let fine = READABLE.contains(&prop)
            || crate::zfs::TUNING_PROPERTIES.contains(&prop)
            || prop
                .strip_prefix("written@")
                .is_some_and(|snap| SnapName::parse(snap).is_ok())
            || prop.strip_prefix("pgzfs:").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
            });
        if !fine {
            return Err(format!("property {prop:?} may not be read"));
        }
    }
    Ok(())
}

/// `pgzfs:name=value`, a user property pgzfs sets, with a value it could have written.
fn check_pgzfs_assignment(assignment: &str) -> std::result::Result<&str, String> {
    let (prop, value) = assignment
        .split_once('=')
        .ok_or_else(|| format!("{assignment:?} is not property=value"))?;
    if !prop.starts_with("pgzfs:") {
        return Err(format!(
            "only pgzfs: user properties may be set, not {prop:?}"
        ));
    }
    crate::zfs::cli::validate_user_prop(prop, value).map_err(|e| e.message().to_string())?;
    Ok(prop)
}

/// The user property `serve --for` adds to every snapshot a bound key creates: which node
/// it was created for, over which SSH connection. Only that node's key, over that same
/// connection, may then `zfs set` a property on it.
pub const TAKEN_FOR: &str = "pgzfs:taken_for";

/// A key bound to one standby by `serve --for NODE` in authorized_keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The standby this key acts for.
    pub node: String,
    /// That standby's hold tag (`pgzfs-SLOT`): the only one it may place or release.
    pub tag: HoldTag,
    /// [`TAKEN_FOR`]'s value for snapshots created over this connection.
    pub taken_for: String,
}

impl Binding {
    /// The binding for `node`, which must be another configured node than `this_node`
    /// (a configuration error otherwise: the forced command is wrong).
    pub fn new(config: &crate::config::Config, this_node: &str, node: &str) -> Result<Binding> {
        let standby = config
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| {
                Error::usage(format!(
                    "serve --for {node:?}: not a configured node (fix the forced command in authorized_keys)"
                ))
            })?;
        if node == this_node {
            return Err(Error::usage(format!(
                "serve --for {node:?}: that is this node itself"
            )));
        }
        let tag = crate::retention::common_base_tag(&standby.reseed)?;
        Ok(Binding::with(node, tag, &connection_id()))
    }

    pub fn with(node: &str, tag: HoldTag, connection: &str) -> Binding {
        Binding {
            node: node.to_string(),
            tag,
            taken_for: format!("{node}/{connection}"),
        }
    }

    /// Narrow a command [`check`] allowed to what this node's key may do.
    pub fn bind(&self, mut allowed: Allowed) -> std::result::Result<Allowed, String> {
        let words: Vec<&str> = allowed.argv.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["zfs", "hold" | "release", tag, ..] if *tag != self.tag.as_str() => {
                return Err(format!(
                    "this key acts for {} only; hold tag {tag} is not its tag {}",
                    self.node, self.tag
                ));
            }
            ["zfs", "snapshot", "-r", options @ .., name] => {
                if options
                    .iter()
                    .any(|o| o.starts_with(&format!("{TAKEN_FOR}=")))
                {
                    return Err(format!("{TAKEN_FOR} is set by serve, not by the client"));
                }
                let mut argv: Vec<String> = words[..words.len() - 1]
                    .iter()
                    .map(|w| w.to_string())
                    .collect();
                argv.push("-o".into());
                argv.push(format!("{TAKEN_FOR}={}", self.taken_for));
                argv.push(name.to_string());
                allowed.argv = argv;
            }
            ["zfs", "set", assignments @ .., name] => {
                let mut props = Vec::new();
                for assignment in assignments {
                    let (prop, _) = assignment.split_once('=').unwrap_or((assignment, ""));
                    if prop == TAKEN_FOR {
                        return Err(format!("{TAKEN_FOR} is set by serve, not by the client"));
                    }
                    props.push(prop.to_string());
                }
                let snapshot = SnapshotName::parse(name).map_err(|e| e.message().to_string())?;
                allowed.set = Some((snapshot, props));
            }
            _ => {}
        }
        Ok(allowed)
    }

    /// `pgzfs snapshot --json --for STANDBY`: only for this key's own node.
    pub fn check_pgzfs(&self, allowed: &Allowed) -> std::result::Result<(), String> {
        match allowed.argv.as_slice() {
            [snapshot, json, flag, standby]
                if snapshot == "snapshot" && json == "--json" && flag == "--for" =>
            {
                if *standby != self.node {
                    return Err(format!(
                        "this key acts for {} only, not for {standby}",
                        self.node
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether `zfs set PROP=...` may touch a snapshot whose [`TAKEN_FOR`] is `taken_for`
    /// and whose PROP is `current` now: only one this key created over this connection,
    /// and only a property not set yet (a complete cut is never rewritten).
    pub fn may_set(
        &self,
        snapshot: &SnapshotName,
        prop: &str,
        taken_for: Option<&str>,
        current: Option<&str>,
    ) -> std::result::Result<(), String> {
        if taken_for != Some(self.taken_for.as_str()) {
            return Err(format!(
                "{snapshot} was not created by this key ({}) over this connection",
                self.node
            ));
        }
        if current.is_some() {
            return Err(format!(
                "{prop} of {snapshot} is already set; it is not rewritten"
            ));
        }
        Ok(())
    }
}

/// This SSH connection, as sshd describes it to every command run over it ("client
/// port server port", made property-safe). The same for every channel of one connection.
fn connection_id() -> String {
    let raw = std::env::var("SSH_CONNECTION").unwrap_or_default();
    let words: Vec<String> = raw
        .split_whitespace()
        .map(|w| {
            w.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".:-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .collect();
    if words.is_empty() {
        "no-ssh-connection".to_string()
    } else {
        words.join("/")
    }
}

/// Read what [`Binding::may_set`] needs from this node's ZFS and decide.
fn verify_set(
    binding: &Binding,
    set: &(SnapshotName, Vec<String>),
) -> std::result::Result<(), String> {
    use crate::zfs::Zfs;
    let (snapshot, props) = set;
    let zfs =
        crate::zfs::cli::ZfsCli::with_program(crate::exec::Local, crate::exec::find_program("zfs"));
    let name = snapshot.to_string();
    let taken_for = zfs
        .get_text(&name, TAKEN_FOR)
        .map_err(|e| e.message().to_string())?;
    for prop in props {
        let current = zfs
            .get_text(&name, prop)
            .map_err(|e| e.message().to_string())?;
        binding.may_set(snapshot, prop, taken_for.as_deref(), current.as_deref())?;
    }
    Ok(())
}

/// `zfs send -t` streams whatever snapshot the token names *by GUID*, and the token comes
/// from the client (openzfs#14153). Decode it here and allow it only when it continues a
/// snapshot of our dataset that really has the GUID the token claims.
fn verify_resume_token(
    token: &ResumeToken,
    dataset: &DatasetName,
) -> std::result::Result<(), String> {
    use crate::zfs::Zfs;
    let zfs =
        crate::zfs::cli::ZfsCli::with_program(crate::exec::Local, crate::exec::find_program("zfs"));
    let info = zfs
        .describe_resume_token(token)
        .map_err(|e| e.message().to_string())?;
    let snapshot = SnapshotName::parse(&info.toname).map_err(|e| e.message().to_string())?;
    if snapshot.dataset() != dataset {
        return Err(format!(
            "the token continues {}, not a snapshot of {dataset}",
            info.toname
        ));
    }
    let actual = zfs
        .get_number(&info.toname, "guid")
        .map_err(|e| e.message().to_string())?;
    if actual != Some(info.toguid) {
        return Err(format!(
            "the token's GUID {:#x} is not that of {} ({})",
            info.toguid,
            info.toname,
            actual
                .map(|g| format!("{g:#x}"))
                .unwrap_or_else(|| "not found".into())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::join;

    fn dataset() -> DatasetName {
        DatasetName::parse("tank/pgdata").unwrap()
    }

    /// What pgzfs's client sends, as sshd hands it over.
    fn line(argv: &[&str]) -> String {
        join(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn allowed(argv: &[&str]) -> Allowed {
        let words = split(&line(argv)).expect("our own quoting splits back");
        assert_eq!(words, argv, "split inverts join");
        check(&words, &dataset()).unwrap_or_else(|why| panic!("{argv:?} was refused: {why}"))
    }

    fn refused(text: &str) -> String {
        match split(text) {
            Err(why) => why,
            Ok(words) => match check(&words, &dataset()) {
                Err(why) => why,
                Ok(allowed) => panic!("{text:?} was allowed as {:?}", allowed.argv),
            },
        }
    }

    #[test]
    fn split_reads_back_exactly_what_the_client_quotes() {
        for argv in [
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "guid",
                "tank/pg",
            ],
            vec!["a b", "it's", "", "$(reboot)", "x'y'z", "''", "a\nb"],
        ] {
            let owned: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            assert_eq!(split(&join(&owned)).unwrap(), owned);
        }
    }

    #[test]
    fn split_refuses_everything_a_shell_would_interpret() {
        for text in [
            "zfs get; reboot",
            "zfs get | sh",
            "zfs get && reboot",
            "zfs $(reboot)",
            "zfs `reboot`",
            "zfs \"send\"",
            "zfs send > /etc/passwd",
            "zfs send < /dev/zero",
            "zfs send *",
            "zfs send ~root",
            "zfs  send",
            " zfs send",
            "zfs send ",
            "zfs\tsend",
            "zfs send\nreboot",
            "zfs 'send",
            "zfs se\\nd",
            "zfs send #comment",
            "zfs send !1",
            "zfs {send,destroy}",
            "",
        ] {
            assert!(split(text).is_err(), "{text:?} must not split");
        }
    }

    #[test]
    fn every_command_reset_secondary_sends_to_the_source_is_allowed() {
        let all = "guid,createtxg,userrefs,pgzfs:lsn,pgzfs:stop_lsn,pgzfs:timeline,pgzfs:sysid,pgzfs:pg_major,pgzfs:backup_label,pgzfs:tablespace_map,pgzfs:node";
        let snap = "tank/pgdata@pgzfs-20261122T003000Z";
        let base = "tank/pgdata@pgzfs-20261121T003000Z";
        for argv in [
            // exists, snapshots, children, get_number, is_mounted, mountpoint
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "type",
                "tank/pgdata",
            ],
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-d",
                "1",
                "-o",
                "name,property,value",
                all,
                "tank/pgdata",
            ],
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-r",
                "-o",
                "name,property,value",
                "type",
                "tank/pgdata",
            ],
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "referenced",
                snap,
            ],
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "written@pgzfs-20261121T003000Z",
                snap,
            ],
            vec![
                "zfs",
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "mounted",
                "tank/pgdata",
            ],
            // the cut
            vec!["zfs", "snapshot", "-r", snap],
            vec![
                "zfs",
                "snapshot",
                "-r",
                "-o",
                "pgzfs:lsn=0/3000028",
                "-o",
                "pgzfs:node=db1",
                snap,
            ],
            vec!["zfs", "set", "pgzfs:lsn=0/3000028", snap],
            vec!["zfs", "set", "pgzfs:backup_label=5354415254", snap],
            // the same record in one call, where the zfs takes several properties
            vec![
                "zfs",
                "set",
                "pgzfs:stop_lsn=0/3000138",
                "pgzfs:backup_label=5354415254",
                snap,
            ],
            // transfers
            vec!["zfs", "send", snap],
            vec!["zfs", "send", "-i", base, snap],
            vec!["zfs", "send", "-L", "-e", "-c", "-i", base, snap],
            vec!["zfs", "send", "-w", snap],
            // protecting the common base
            vec!["zfs", "hold", "pgzfs-db2", snap],
            vec!["zfs", "release", "pgzfs-db2", base],
            // a node's old bases released in one call, a tree's new cut held in one
            vec!["zfs", "release", "pgzfs-db2", base, snap],
            vec![
                "zfs",
                "hold",
                "pgzfs-db2",
                "tank/pgdata/wal@pgzfs-20261122T003000Z",
                snap,
            ],
            vec!["zfs", "holds", "-H", snap],
            vec![
                "zfs",
                "bookmark",
                snap,
                "tank/pgdata#pgzfs-20261122T003000Z",
            ],
            // feature probes
            vec!["zfs", "send"],
            vec![
                "zfs",
                "get",
                "-H",
                "-o",
                "value",
                "receive_resume_token",
                "tank",
            ],
            vec![
                "zfs",
                "get",
                "-H",
                "-o",
                "value",
                "encryption",
                "tank/pgdata",
            ],
            vec![
                "zpool",
                "get",
                "-H",
                "-o",
                "value",
                "feature@bookmarks",
                "tank",
            ],
        ] {
            let allowed = allowed(&argv);
            assert_eq!(allowed.argv, argv, "run exactly as asked");
            assert_eq!(allowed.resume, None);
        }
    }

    #[test]
    fn a_probe_without_object_is_answered_for_our_dataset_only() {
        let allowed = allowed(&["zfs", "get", "-H", "-o", "value", "written"]);
        assert_eq!(
            allowed.argv,
            ["zfs", "get", "-H", "-o", "value", "written", "tank/pgdata"]
        );
    }

    #[test]
    fn a_resumed_send_is_allowed_only_pending_the_token_check() {
        let allowed = allowed(&["zfs", "send", "-t", "1-e604ea4bf-e0-789c6360"]);
        assert_eq!(
            allowed.resume.as_ref().map(ResumeToken::as_str),
            Some("1-e604ea4bf-e0-789c6360")
        );
        assert!(refused("zfs send -t '1-e6-e0-78; reboot'").contains("receive_resume_token"));
    }

    #[test]
    fn destroying_renaming_receiving_or_changing_anything_is_refused() {
        for text in [
            "zfs destroy tank/pgdata@pgzfs-1",
            "zfs destroy -r tank/pgdata",
            "zfs rename tank/pgdata tank/x",
            "zfs receive -F tank/pgdata",
            "zfs rollback tank/pgdata@pgzfs-1",
            "zfs set mountpoint=/ tank/pgdata",
            "zfs set readonly=off tank/pgdata@pgzfs-1",
            "zfs set pgzfs:lsn=0/1 tank/pgdata",
            "zfs set pgzfs:lsn='0/1 x' tank/pgdata@pgzfs-1",
            "zfs set pgzfs:lsn=0/1 readonly=on tank/pgdata@pgzfs-1",
            "zfs set pgzfs:lsn=0/1 pgzfs:lsn=0/2 tank/pgdata@pgzfs-1",
            "zfs set -u pgzfs:lsn=0/1 tank/pgdata@pgzfs-1",
            "zfs set pgzfs:lsn=0/1 tank/pgdata@pgzfs-1 tank/pgdata@pgzfs-2",
            "zfs release pgzfs-db2",
            "zfs release -r pgzfs-db2 tank/pgdata@pgzfs-1",
            "zfs release pgzfs-db2 tank/pgdata@pgzfs-1 -r",
            "zfs release pgzfs-db2 tank/pgdata@pgzfs-1 tank/pgdata@pgzfs-1",
            "zfs release pgzfs-db2 tank/pgdata@pgzfs-1 tank/pgdata@manual",
            "zfs release pgzfs-db2 tank/pgdata@pgzfs-1 tank/other@pgzfs-1",
            "zfs release pgzfs-db2 tank/pgdata@pgzfs-1 tank/pgdata",
            "zfs hold pgzfs-db2 tank/pgdata@pgzfs-1 tank/other@pgzfs-2",
            "zfs inherit pgzfs:lsn tank/pgdata",
            "zfs allow -u evil send tank/pgdata",
            "zfs unmount tank/pgdata",
            "zfs create tank/evil",
            "zfs clone tank/pgdata@pgzfs-1 tank/evil",
            "zfs promote tank/pgdata",
            "zpool destroy tank",
            "zpool export tank",
            "zpool get -H -o value feature@bookmarks other",
            "zpool get -H -o value all tank",
            "rm -rf /",
            "sh -c id",
            "/sbin/zfs send tank/pgdata@pgzfs-1",
            "pgzfs serve",
            "scp -t /root/.ssh/authorized_keys",
        ] {
            let why = refused(text);
            assert!(!why.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn the_children_and_tablespaces_of_the_dataset_are_within_reach_and_nothing_else() {
        let ts = crate::datasets::Tablespace {
            name: "fast".into(),
            dataset: DatasetName::parse("fast/ts").unwrap(),
            mountpoint: "/ts".into(),
        };
        let ds = dataset();
        let scope = Scope::new(&ds, std::slice::from_ref(&ts));
        let words = |text: &str| split(text).unwrap();
        for text in [
            "zfs send tank/pgdata/wal@pgzfs-1",
            "zfs send -i tank/pgdata/wal@pgzfs-1 tank/pgdata/wal@pgzfs-2",
            "zfs get -H -p -o name,property,value recordsize tank/pgdata/wal",
            "zfs get -H -p -o name,property,value logbias fast/ts",
            "zfs send fast/ts@pgzfs-1",
            "zfs get -H -p -d 1 -o name,property,value guid fast/ts",
            "zfs get -H -o value receive_resume_token fast",
            "zpool get -H -o value feature@bookmarks fast",
            "zfs hold pgzfs-db2 fast/ts@pgzfs-1",
            "zfs snapshot -r -o pgzfs:lsn=0/1 tank/pgdata@pgzfs-1 fast/ts@pgzfs-1",
        ] {
            check_in(&words(text), &scope).unwrap_or_else(|why| panic!("{text}: {why}"));
        }
        for text in [
            "zfs send fast/other@pgzfs-1",
            "zfs send fast@pgzfs-1",
            "zfs send tank/pgdataX/wal@pgzfs-1",
            "zfs get -H -p -r -o name,property,value type fast",
            "zpool get -H -o value feature@bookmarks other",
            "zfs snapshot -r tank/pgdata@pgzfs-1 fast/other@pgzfs-1",
        ] {
            assert!(
                check_in(&words(text), &scope).is_err(),
                "{text} was allowed"
            );
        }
        // Without tablespaces, the tablespace's dataset is another dataset.
        assert!(check(&words("zfs send fast/ts@pgzfs-1"), &ds).is_err());
    }

    #[test]
    fn other_datasets_and_foreign_snapshots_are_out_of_reach() {
        for text in [
            "zfs send tank/other@pgzfs-1",
            "zfs send -i tank/other@a tank/pgdata@pgzfs-2",
            "zfs send tank/pgdataX@pgzfs-1",
            "zfs send -R tank/pgdata@pgzfs-1",
            "zfs send -I tank/pgdata@a tank/pgdata@pgzfs-2",
            "zfs send -i tank/pgdata@pgzfs-1 tank/pgdata@pgzfs-1",
            "zfs send -L -L tank/pgdata@pgzfs-1",
            "zfs send -p tank/pgdata@pgzfs-1",
            "zfs send tank/pgdata",
            "zfs send -nv -t 1-a-b-c",
            "zfs get -H -p -o name,property,value guid tank/other",
            "zfs get -H -p -r -o name,property,value type tank",
            "zfs get -H -p -d 1 -o name,property,value guid tank/pgdata@pgzfs-1",
            "zfs get -H -p -d 2 -o name,property,value guid tank/pgdata",
            "zfs get -H -p -o name,property,value all tank/pgdata",
            "zfs get -H -p -o name,property,value guid,keylocation tank/pgdata",
            "zfs get -H -p -o name,property,value guid tank/pgdata tank/other",
            "zfs get -H -o value written tank/other",
            "zfs get -H -o value mountpoint",
            "zfs get all",
            "zfs list",
            "zfs snapshot -r tank/pgdata@evil",
            "zfs snapshot tank/pgdata@pgzfs-1",
            "zfs snapshot -r tank/other@pgzfs-1",
            "zfs snapshot -r tank@pgzfs-1",
            "zfs snapshot -r -o mountpoint=/ tank/pgdata@pgzfs-1",
            "zfs snapshot -r -o readonly=off tank/pgdata@pgzfs-1",
            "zfs snapshot -r -o pgzfs:lsn='0/1 x' tank/pgdata@pgzfs-1",
            "zfs snapshot -r -o tank/pgdata@pgzfs-1",
            "zfs snapshot -r -o pgzfs:lsn=0/1 -p tank/pgdata@pgzfs-1",
            "zfs snapshot -o pgzfs:lsn=0/1 -r tank/pgdata@pgzfs-1",
            "zfs snapshot -r -o pgzfs:lsn=0/1 tank/pgdata@pgzfs-1 tank/other@pgzfs-1",
            "zfs hold keep tank/pgdata@pgzfs-1",
            "zfs hold pgzfs-db2 tank/pgdata@manual",
            "zfs hold -r pgzfs-db2 tank/pgdata@pgzfs-1",
            "zfs release pgzfs-db2 tank/other@pgzfs-1",
            "zfs bookmark tank/pgdata@pgzfs-1 tank/pgdata#other",
            "zfs bookmark tank/pgdata@pgzfs-1 tank/other#pgzfs-1",
        ] {
            refused(text);
        }
    }

    #[test]
    fn injection_attempts_through_names_and_values_are_refused() {
        for text in [
            "zfs send 'tank/pgdata@pgzfs-1;reboot'",
            "zfs send 'tank/pgdata@pgzfs-1 tank/other@x'",
            "zfs send '-i' 'tank/pgdata@pgzfs-1' 'tank/pgdata@pgzfs-2'x",
            "zfs send 'tank/pgdata@pgzfs-2'",
            "zfs 'send' tank/pgdata@pgzfs-2",
            "zfs hold 'pgzfs-x;id' tank/pgdata@pgzfs-1",
            "zfs set 'pgzfs:lsn=$(reboot)' tank/pgdata@pgzfs-1",
            "zfs set 'pgzfs:lsn=0/1'\\''x' tank/pgdata@pgzfs-1",
            "zfs get -H -p -o name,property,value 'guid tank/other' tank/pgdata",
            "zfs get -H -p -o name,property,value guid '-rtank/pgdata'",
            "zfs send '--' tank/pgdata@pgzfs-1",
            "zfs send ../tank/pgdata@pgzfs-1",
            "zfs send 'tank/pgdata@pgzfs-1\n'",
        ] {
            refused(text);
        }
        // A properly quoted word is still only data: a space inside it does not split it.
        let words = split("zfs send 'tank/pgdata@pgzfs-1 tank/other@x'").unwrap();
        assert_eq!(words.len(), 3);
    }

    const NODES: [&str; 3] = ["db1", "db2", "db3"];

    /// What serve on db1 makes of a pgzfs command line another node sends.
    fn pgzfs_allowed_on_db1(
        text: &str,
        orchestration: bool,
    ) -> std::result::Result<Allowed, String> {
        let words = split(text)?;
        assert!(is_pgzfs(&words), "{text:?} is a pgzfs command");
        check_pgzfs(&words, "db1", &NODES, &dataset(), orchestration)
    }

    /// The verb serve on db1 runs for a pgzfs command line another node sends.
    fn pgzfs_on_db1(text: &str, orchestration: bool) -> std::result::Result<Vec<String>, String> {
        pgzfs_allowed_on_db1(text, orchestration).map(|allowed| allowed.argv)
    }

    #[test]
    fn the_commands_other_nodes_send_to_pgzfs_pass_exactly_as_built() {
        use crate::exec::remote_pgzfs;
        let bin = Path::new("/usr/local/bin/pgzfs");
        let config = Path::new("/usr/local/etc/pgzfs.toml");
        for (cmd, orchestration) in [
            (
                remote_pgzfs(bin, config, "db1").args(["snapshot", "--json", "--for", "db2"]),
                false,
            ),
            (
                remote_pgzfs(bin, config, "db1").args(["promote", "--force"]),
                true,
            ),
            (
                remote_pgzfs(bin, config, "db1").args(["follow", "--to", "db3"]),
                true,
            ),
        ] {
            let verb = pgzfs_on_db1(&cmd.display(), orchestration)
                .unwrap_or_else(|why| panic!("{} refused: {why}", cmd.display()));
            assert_eq!(verb, cmd.argv[5..], "the verb runs unchanged");
        }
    }

    #[test]
    fn a_key_without_orchestration_may_cut_but_never_promote_or_repoint() {
        let cut = "/usr/local/bin/pgzfs --config /etc/p.toml --node db1 snapshot --json --for db2";
        assert!(pgzfs_on_db1(cut, false).is_ok());
        for text in [
            "pgzfs --config /etc/p.toml --node db1 promote --force",
            "pgzfs --config /etc/p.toml --node db1 follow --to db2",
        ] {
            let why = pgzfs_on_db1(text, false).unwrap_err();
            assert!(why.contains("--allow-orchestration"), "{why}");
            assert!(pgzfs_on_db1(text, true).is_ok(), "{text}");
        }
    }

    #[test]
    fn other_pgzfs_commands_other_nodes_and_odd_forms_are_refused() {
        for text in [
            // another node's name: this key reaches db1 only
            "pgzfs --config /etc/p.toml --node db2 snapshot --json --for db3",
            "pgzfs --config /etc/p.toml --node db2 promote --force",
            // targets that are not other configured nodes
            "pgzfs --config /etc/p.toml --node db1 snapshot --json --for db1",
            "pgzfs --config /etc/p.toml --node db1 snapshot --json --for evil",
            "pgzfs --config /etc/p.toml --node db1 follow --to db1",
            "pgzfs --config /etc/p.toml --node db1 follow --to nowhere",
            // verbs nobody sends here
            "pgzfs --config /etc/p.toml --node db1 reset-secondary --full --yes",
            "pgzfs --config /etc/p.toml --node db1 rejoin --to db2",
            "pgzfs --config /etc/p.toml --node db1 prune",
            "pgzfs --config /etc/p.toml --node db1 promote",
            "pgzfs --config /etc/p.toml --node db1 serve",
            "pgzfs --config /etc/p.toml --node db1 daemon",
            "pgzfs --config /etc/p.toml --node db1 snapshot --json",
            "pgzfs --config /etc/p.toml --node db1 snapshot --json --for db2 --for db3",
            "pgzfs --config /etc/p.toml --node db1 promote --force -v",
            // global options other than --config/--node, in other places
            "pgzfs --node db1 --config /etc/p.toml promote --force",
            "pgzfs -v --config /etc/p.toml --node db1 promote --force",
            "pgzfs --config /etc/p.toml --node db1",
            "pgzfs snapshot --json --for db2",
            "/tmp/evil/pgzfs --config /etc/p.toml --node db1 prune",
        ] {
            assert!(
                pgzfs_on_db1(text, true).is_err(),
                "{text:?} must be refused"
            );
        }
        assert!(!is_pgzfs(
            &split("pgzfsx --config a --node db1 promote --force").unwrap()
        ));
        assert!(!is_pgzfs(&split("sh -c pgzfs").unwrap()));
    }

    #[test]
    fn a_compressed_send_is_allowed_where_the_send_alone_would_be() {
        let prefix = "/usr/local/bin/pgzfs --config /etc/p.toml --node db1";
        let snap = "tank/pgdata@pgzfs-20261122T003000Z";
        let base = "tank/pgdata@pgzfs-20261121T003000Z";
        for (level, send) in [
            ("3", format!("zfs send {snap}")),
            ("1", format!("zfs send -i {base} {snap}")),
            ("19", format!("zfs send -L -e -c -i {base} {snap}")),
            ("3", format!("zfs send -w {snap}")),
        ] {
            for orchestration in [false, true] {
                let text = format!("{prefix} compressed-send --zstd {level} -- {send}");
                let allowed = pgzfs_allowed_on_db1(&text, orchestration)
                    .unwrap_or_else(|why| panic!("{text:?} refused: {why}"));
                assert_eq!(
                    allowed.argv.join(" "),
                    format!("compressed-send --zstd {level} -- {send}"),
                    "the verb runs unchanged"
                );
                assert_eq!(allowed.resume, None);
            }
        }
        // A resumed send carries its token out, to be verified before anything runs.
        let allowed = pgzfs_allowed_on_db1(
            &format!("{prefix} compressed-send --zstd 3 -- zfs send -t 1-e604ea4bf-e0-789c6360"),
            false,
        )
        .unwrap();
        assert_eq!(
            allowed.resume.as_ref().map(ResumeToken::as_str),
            Some("1-e604ea4bf-e0-789c6360")
        );
        assert_eq!(
            allowed.argv[4..],
            ["zfs", "send", "-t", "1-e604ea4bf-e0-789c6360"]
        );
    }

    #[test]
    fn a_compressed_send_is_refused_whenever_the_send_alone_would_be_or_the_form_is_off() {
        let snap = "tank/pgdata@pgzfs-20261122T003000Z";
        for text in [
            // levels outside 1..=19, or not written the way the client writes them
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 0 -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 20 -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 22 -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 03 -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd fast -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd=3 -- zfs send {snap}"),
            // the inner command must be a send serve allows by itself
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs destroy -r tank/pgdata".to_string(),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs destroy {snap}"),
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs send tank/other@pgzfs-1".to_string(),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs send -i tank/other@a {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs send -R {snap}"),
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs send -t '1-e6-e0-78; reboot'".to_string(),
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs send".to_string(),
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs get -H -o value written".to_string(),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- zfs hold pgzfs-db2 {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- /sbin/zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- sh -c 'zfs send {snap}'"),
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- pgzfs --config /etc/p.toml --node db1 promote --force".to_string(),
            "pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 --".to_string(),
            // odd forms
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -v -- zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send -- --zstd 3 zfs send {snap}"),
            format!("pgzfs --config /etc/p.toml --node db1 compressed-send --zstd 3 -- -- zfs send {snap}"),
            // another node's name: this key reaches db1 only
            format!("pgzfs --config /etc/p.toml --node db2 compressed-send --zstd 3 -- zfs send {snap}"),
        ] {
            for orchestration in [false, true] {
                let got = pgzfs_on_db1(&text, orchestration);
                assert!(got.is_err(), "{text:?} must be refused, got {got:?}");
            }
        }
    }

    /// Records what ZfsCli would run on the source node, and answers "success, nothing";
    /// `zfs send` without a snapshot gets OpenZFS's usage, so that every feature probe
    /// that follows from it is asked too.
    #[derive(Clone, Default)]
    struct Recorder(std::rc::Rc<std::cell::RefCell<Vec<crate::exec::Cmd>>>);

    struct NoStream;

    impl crate::transfer::Source for NoStream {
        fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        fn abort(self: Box<Self>) {}
    }

    impl crate::exec::Runner for Recorder {
        fn output(&self, cmd: &crate::exec::Cmd) -> Result<crate::exec::Output> {
            use std::os::unix::process::ExitStatusExt;
            self.0.borrow_mut().push(cmd.clone());
            let usage = if cmd.display() == "zfs send" {
                include_str!("../../tests/fixtures/openzfs-2.1/send-usage.txt")
            } else {
                ""
            };
            Ok(crate::exec::Output {
                status: std::process::ExitStatus::from_raw(0),
                stdout: String::new(),
                stderr: usage.to_string(),
            })
        }
        fn source(&self, cmd: &crate::exec::Cmd) -> Result<Box<dyn crate::transfer::Source>> {
            self.0.borrow_mut().push(cmd.clone());
            Ok(Box::new(NoStream))
        }
        fn sink(&self, _cmd: &crate::exec::Cmd) -> Result<Box<dyn crate::transfer::Sink>> {
            panic!("nothing is ever received on the source node")
        }
        fn describe(&self) -> String {
            "recorder".to_string()
        }
    }

    /// The contract between the client and this endpoint: every command the zfs(8)
    /// backend issues to a source node, exactly as it crosses SSH, is allowed unchanged.
    /// A new remote operation in ZfsCli fails here until serve knows it.
    #[test]
    fn every_command_the_zfs_backend_issues_to_a_source_passes_serve() {
        use crate::zfs::features::SendOptions;
        use crate::zfs::{prop, Zfs};
        let recorder = Recorder::default();
        // A unit test over a recording runner: the ZfsCli is built here on purpose, so
        // that the commands it records are exactly those a real transport would carry.
        let zfs = crate::zfs::cli::ZfsCli::new(recorder.clone());
        let ds = dataset();
        let snap = ds.snapshot(&SnapName::parse("pgzfs-20261122T003000Z").unwrap());
        let base = ds.snapshot(&SnapName::parse("pgzfs-20261121T003000Z").unwrap());
        let tag = HoldTag::parse("pgzfs-db2").unwrap();
        zfs.exists(&ds).unwrap();
        zfs.snapshots(&ds).unwrap();
        zfs.children(&ds).unwrap();
        zfs.survey(&ds).unwrap();
        zfs.snapshot_recursive(&snap, &[(prop::LSN, "0/3000028".to_string())])
            .unwrap();
        let props: Vec<(&str, String)> = prop::ALL
            .iter()
            .map(|p| (*p, "0/3000028".to_string()))
            .collect();
        zfs.set_snapshot_props(&snap, &props).unwrap();
        zfs.get_number(ds.as_str(), "referenced").unwrap();
        zfs.get_number(&snap.to_string(), "referenced").unwrap();
        zfs.get_number(&snap.to_string(), &format!("written@{}", base.snap()))
            .unwrap();
        zfs.send(&snap, None).unwrap();
        zfs.send(&snap, Some(&base)).unwrap();
        let all = SendOptions {
            large_blocks: true,
            embedded: true,
            compressed: true,
            raw: false,
        };
        zfs.send_with(&snap, Some(&base), &all).unwrap();
        zfs.send_with(
            &snap,
            None,
            &SendOptions {
                raw: true,
                ..SendOptions::plain()
            },
        )
        .unwrap();
        zfs.send_resume(&ResumeToken::parse("1-e604ea4bf-e0-789c").unwrap())
            .unwrap();
        zfs.hold(&tag, &snap).unwrap();
        zfs.release(&tag, &base).unwrap();
        zfs.bookmark(&snap).unwrap();
        zfs.holds(&snap).unwrap();
        zfs.get_text(&snap.to_string(), prop::SOURCE_NODE).unwrap();
        zfs.features().unwrap();
        zfs.features_for(&ds).unwrap();
        zfs.is_encrypted(&ds).unwrap();

        // The stream again as a standby with ssh_compress asks for it: through the
        // source's pgzfs, compressed.
        let compressing = crate::zfs::cli::ZfsCli::new(crate::compress::Compressing::new(
            recorder.clone(),
            crate::exec::remote_pgzfs(
                Path::new("/usr/local/bin/pgzfs"),
                Path::new("/usr/local/etc/pgzfs.toml"),
                "db1",
            ),
            crate::compress::ZstdLevel::parse("3").unwrap(),
        ));
        let sent_before = recorder.0.borrow().len();
        compressing.send(&snap, None).unwrap();
        compressing.send(&snap, Some(&base)).unwrap();
        compressing.send_with(&snap, Some(&base), &all).unwrap();
        compressing
            .send_resume(&ResumeToken::parse("1-e604ea4bf-e0-789c").unwrap())
            .unwrap();
        let compressed = recorder.0.borrow().len() - sent_before;
        assert_eq!(compressed, 4);

        let issued = recorder.0.borrow();
        assert!(issued.len() >= 26, "recorded {} commands", issued.len());
        // This zfs (OpenZFS 2.1's usage) takes the whole record in one `zfs set`.
        assert!(
            issued
                .iter()
                .any(|cmd| cmd.argv.len() == 3 + prop::ALL.len() && cmd.argv[1] == "set"),
            "one zfs set for the record"
        );
        for cmd in issued.iter() {
            let line = crate::shell::join(&cmd.argv);
            let words = split(&line).unwrap_or_else(|why| panic!("{line}: {why}"));
            if is_pgzfs(&words) {
                check_pgzfs(&words, "db1", &NODES, &ds, false)
                    .unwrap_or_else(|why| panic!("serve refuses {line}: {why}"));
            } else {
                check(&words, &ds).unwrap_or_else(|why| panic!("serve refuses {line}: {why}"));
            }
        }
        assert_eq!(
            issued
                .iter()
                .filter(|cmd| cmd.argv.contains(&"compressed-send".to_string()))
                .count(),
            compressed,
            "every compressed stream went through compressed-send"
        );
    }

    fn bound(node: &str) -> Binding {
        Binding::with(
            node,
            HoldTag::parse(&format!("pgzfs-{node}")).unwrap(),
            "10.213.1.2/51234/10.213.1.1/22",
        )
    }

    fn bound_check(binding: &Binding, argv: &[&str]) -> std::result::Result<Allowed, String> {
        let words = split(&line(argv)).unwrap();
        binding.bind(check(&words, &dataset())?)
    }

    #[test]
    fn a_refusal_reason_is_one_short_log_line() {
        let long = format!(
            "{:?} is not quoted the way pgzfs quotes\nFAKE LOG LINE",
            "x".repeat(5000)
        );
        let shown = bounded(&long);
        assert!(shown.chars().count() <= 303, "{}", shown.len());
        assert!(!shown.contains('\n'));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn a_bound_key_cannot_release_or_hold_with_another_standbys_tag() {
        let db2 = bound("db2");
        let snap = "tank/pgdata@pgzfs-20261122T003000Z";
        for verb in ["hold", "release"] {
            let why = bound_check(&db2, &["zfs", verb, "pgzfs-db3", snap]).unwrap_err();
            assert!(why.contains("db2") && why.contains("pgzfs-db3"), "{why}");
            assert!(bound_check(&db2, &["zfs", verb, "pgzfs-db2", snap]).is_ok());
            // Several snapshots in one call: the same tag rule.
            let other = "tank/pgdata@pgzfs-20261121T003000Z";
            assert!(bound_check(&db2, &["zfs", verb, "pgzfs-db3", other, snap]).is_err());
            assert!(bound_check(&db2, &["zfs", verb, "pgzfs-db2", other, snap]).is_ok());
        }
        // Unbound keys keep today's behaviour: any pgzfs- tag.
        assert!(check(
            &split(&line(&["zfs", "release", "pgzfs-db3", snap])).unwrap(),
            &dataset()
        )
        .is_ok());
    }

    #[test]
    fn a_bound_keys_snapshot_is_marked_with_its_node_and_connection() {
        let db2 = bound("db2");
        let snap = "tank/pgdata@pgzfs-20261122T003000Z";
        let allowed = bound_check(
            &db2,
            &["zfs", "snapshot", "-r", "-o", "pgzfs:lsn=0/3000028", snap],
        )
        .unwrap();
        assert_eq!(
            allowed.argv,
            vec![
                "zfs",
                "snapshot",
                "-r",
                "-o",
                "pgzfs:lsn=0/3000028",
                "-o",
                "pgzfs:taken_for=db2/10.213.1.2/51234/10.213.1.1/22",
                snap
            ]
        );
        let forged = format!("{TAKEN_FOR}=db3/x");
        assert!(bound_check(&db2, &["zfs", "snapshot", "-r", "-o", &forged, snap]).is_err());
        assert!(bound_check(&db2, &["zfs", "set", &forged, snap]).is_err());
        assert!(
            bound_check(&db2, &["zfs", "set", "pgzfs:stop_lsn=0/1", &forged, snap]).is_err(),
            "not even beside a property it may set"
        );
    }

    #[test]
    fn a_bound_key_sets_a_label_only_once_on_its_own_snapshot_of_this_connection() {
        let db2 = bound("db2");
        let snap = SnapshotName::parse("tank/pgdata@pgzfs-20261122T003000Z").unwrap();
        let label = "pgzfs:backup_label";
        let allowed = bound_check(
            &db2,
            &["zfs", "set", "pgzfs:backup_label=5354", &snap.to_string()],
        )
        .unwrap();
        assert_eq!(allowed.set, Some((snap.clone(), vec![label.to_string()])));
        let ours = db2.taken_for.clone();
        assert!(db2.may_set(&snap, label, Some(&ours), None).is_ok());
        // Forging the label of an existing cut: already set.
        assert!(db2
            .may_set(&snap, label, Some(&ours), Some("5354"))
            .is_err());
        // Another standby's cut, or one made over an earlier connection, or by hand.
        let db3s = bound("db3").taken_for;
        assert!(db2.may_set(&snap, label, Some(&db3s), None).is_err());
        let other_connection =
            Binding::with("db2", db2.tag.clone(), "10.213.1.2/40000/10.213.1.1/22");
        assert!(other_connection
            .may_set(&snap, label, Some(&ours), None)
            .is_err());
        assert!(db2.may_set(&snap, label, None, None).is_err());

        // A whole record in one call: every property in it is checked.
        let allowed = bound_check(
            &db2,
            &[
                "zfs",
                "set",
                "pgzfs:stop_lsn=0/3000138",
                "pgzfs:backup_label=5354",
                &snap.to_string(),
            ],
        )
        .unwrap();
        assert_eq!(
            allowed.set,
            Some((
                snap.clone(),
                vec!["pgzfs:stop_lsn".to_string(), label.to_string()]
            ))
        );
    }

    #[test]
    fn a_bound_key_asks_for_cuts_for_its_own_node_only() {
        let db2 = bound("db2");
        let words = |standby: &str| -> Vec<String> {
            [
                "/usr/local/bin/pgzfs",
                "--config",
                "/c",
                "--node",
                "db1",
                "snapshot",
                "--json",
                "--for",
                standby,
            ]
            .iter()
            .map(|w| w.to_string())
            .collect()
        };
        let nodes = ["db1", "db2", "db3"];
        let for_db3 = check_pgzfs(&words("db3"), "db1", &nodes, &dataset(), false).unwrap();
        let why = db2.check_pgzfs(&for_db3).unwrap_err();
        assert!(why.contains("db3"), "{why}");
        let for_db2 = check_pgzfs(&words("db2"), "db1", &nodes, &dataset(), false).unwrap();
        assert!(db2.check_pgzfs(&for_db2).is_ok());
    }
}

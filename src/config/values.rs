//! Single values of the config file. Each check says why a value is wrong; the caller
//! adds which key it was.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::duration::parse_duration;
use crate::size::parse_size;
use crate::zfs::names::DatasetName;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer slot name would be cut.
pub(super) const MAX_SLOT_NAME_LEN: usize = 63;

/// What a check may need besides the value: the home directory for "~/".
pub(super) struct Reading<'a> {
    pub home: Option<&'a Path>,
}

// The checks a per-node key names in the settings table (`settings.rs`).

pub(super) fn dataset_name(value: String, _: &Reading) -> Result<DatasetName, String> {
    DatasetName::parse(&value).map_err(|e| e.message().to_string())
}

pub(super) fn path(value: String, _: &Reading) -> Result<PathBuf, String> {
    absolute_path(&value)
}

pub(super) fn home_path(value: String, reading: &Reading) -> Result<PathBuf, String> {
    expand_home(&value, reading.home)
}

pub(super) fn host_address(value: String, _: &Reading) -> Result<String, String> {
    host_name(&value).map(|()| value)
}

pub(super) fn word(value: String, _: &Reading) -> Result<String, String> {
    plain_word(&value)
}

/// A role or database name: a plain word PostgreSQL will not cut short.
pub(super) fn identifier(value: String, _: &Reading) -> Result<String, String> {
    plain_word(&value).and_then(|v| pg_identifier(&v).map(|()| v))
}

// Ports and counts are read as i64 so that out-of-range values get our message, which
// names the key and the range, instead of a bare "invalid value".
pub(super) fn flag(value: bool, _: &Reading) -> Result<bool, String> {
    Ok(value)
}

pub(super) fn keep_count(value: i64, _: &Reading) -> Result<usize, String> {
    match usize::try_from(value) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value} is not allowed; keep at least 1 common snapshot, or the next sync needs a full re-seed"
        )),
    }
}

pub(super) fn duration(value: String, _: &Reading) -> Result<Duration, String> {
    parse_duration(&value)
}

pub(super) fn positive_duration(value: String, reading: &Reading) -> Result<Duration, String> {
    match duration(value, reading)? {
        Duration::ZERO => Err("must be longer than 0".to_string()),
        positive => Ok(positive),
    }
}

/// Snapshot names carry the time to the second.
pub(super) fn snapshot_interval(value: String, reading: &Reading) -> Result<Duration, String> {
    match duration(value, reading)? {
        short if short < Duration::from_secs(1) => Err("must be at least 1s".to_string()),
        interval => Ok(interval),
    }
}

pub(super) fn check_attempts(value: i64, _: &Reading) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!("{value} is not between 1 and 100")),
    }
}

pub(super) fn failure_count(value: i64, _: &Reading) -> Result<u32, String> {
    match u32::try_from(value) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{value} is not a number of failures (1 or more)")),
    }
}

pub(super) fn byte_count(value: i64, _: &Reading) -> Result<u64, String> {
    u64::try_from(value).map_err(|_| format!("{value} must not be negative"))
}

/// A command run through /bin/sh: one line, or a newline would start a second command.
pub(super) fn one_line(value: String, _: &Reading) -> Result<String, String> {
    if value.trim().is_empty() || value.contains(['\n', '\r', '\0']) {
        Err("must be one non-empty line".to_string())
    } else {
        Ok(value)
    }
}

/// `bwlimit`: a size per second such as "50M", or a plain integer of bytes per second.
/// Integers are taken too because `bwlimit = 0` is the obvious way to write "no limit".
pub(super) fn bytes_per_second(value: toml::Value, _: &Reading) -> Result<u64, String> {
    let parsed = match value {
        toml::Value::String(text) => parse_size(&text),
        toml::Value::Integer(n) => {
            u64::try_from(n).map_err(|_| format!("{n} must not be negative"))
        }
        other => Err(format!("a {} is not a rate", other.type_str())),
    };
    parsed.map_err(|why| {
        format!("{why}; write bytes per second such as \"50M\" (50 MiB/s), or \"0\" for no limit")
    })
}

/// Characters a path may contain: enough for any sane installation, nothing a shell
/// would expand or split on.
pub(super) fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-' | '+' | ',' | ':' | '=' | '@')
}

/// An absolute path without "." or ".." components, returned in normal form (no
/// doubled or trailing '/'), so that "is data_dir inside mountpoint" compares what the
/// file system would.
pub(super) fn absolute_path(value: &str) -> Result<PathBuf, String> {
    if !value.starts_with('/') {
        return Err(format!(
            "{value:?} must be an absolute path (starting with '/')"
        ));
    }
    if let Some(bad) = value.chars().find(|&c| !is_path_char(c)) {
        return Err(format!(
            "{value:?} contains {bad:?}; paths may only contain letters, digits and / _ . - + , : = @"
        ));
    }
    let mut normal = PathBuf::new();
    for component in Path::new(value).components() {
        match component {
            Component::RootDir | Component::Normal(_) => normal.push(component),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!(
                    "{value:?} must not contain \".\" or \"..\" components"
                ))
            }
        }
    }
    Ok(normal)
}

/// Like `absolute_path`, but "~/..." is taken relative to the home directory of the
/// user pgzfs runs as.
pub(super) fn expand_home(value: &str, home: Option<&Path>) -> Result<PathBuf, String> {
    let below_home = if value == "~" {
        Some("")
    } else {
        value.strip_prefix("~/")
    };
    match below_home {
        Some(relative) => {
            let home =
                home.ok_or_else(|| format!("{value:?} starts with '~' but HOME is not set"))?;
            let expanded = home.join(relative);
            let expanded = expanded
                .to_str()
                .ok_or_else(|| format!("{value:?} expands to a path that is not valid UTF-8"))?;
            absolute_path(expanded).map_err(|why| format!("{value:?} expands to {why}"))
        }
        None if value.starts_with('~') => Err(format!(
            "{value:?}: only \"~/\" (the current user's home) is supported"
        )),
        None => absolute_path(value),
    }
}

/// A user or database name that may appear on a command line: letters, digits, '_',
/// '.', '-', not starting with '-'.
pub(super) fn plain_word(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.starts_with('-') {
        return Err(format!(
            "{value:?} starts with '-', which would look like a command-line option"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(value.to_string())
}

pub(super) fn port(value: i64, _: &Reading) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port >= 1 => Ok(port),
        _ => Err(format!("{value} is not a port number (1-65535)")),
    }
}

/// An IP address and port to listen on. Host names are refused: the address a name
/// resolves to can change under a running daemon, and a health endpoint that moves is
/// one the load balancer stops finding.
pub(super) fn listen_address(value: String, _: &Reading) -> Result<SocketAddr, String> {
    let address: SocketAddr = value.parse().map_err(|_| {
        format!(
            "{value:?} is not an IP address and port such as \"127.0.0.1:8008\" or \"[::]:8008\""
        )
    })?;
    if address.port() == 0 {
        return Err(format!(
            "{value:?}: port 0 is not allowed; name the port to listen on"
        ));
    }
    Ok(address)
}

pub(super) fn node_name(value: &str) -> Result<(), String> {
    // Node names appear on command lines (--node) and in lock file paths, like user names.
    plain_word(value)?;
    // And as application_name and (by default) slot name, which PostgreSQL cuts to 63
    // bytes: the standby would then never be recognised as streaming.
    pg_identifier(value)
}

/// PostgreSQL cuts identifiers (and application_name) longer than 63 bytes, so a longer
/// name would silently become another one.
pub(super) fn pg_identifier(value: &str) -> Result<(), String> {
    if value.len() > MAX_SLOT_NAME_LEN {
        return Err(format!(
            "{value:?} is {} bytes long; PostgreSQL cuts names to {MAX_SLOT_NAME_LEN} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// A host for ssh and libpq: a name, an IPv4 address, or an IPv6 address (with an
/// optional %zone). Never starting with '-', which ssh would read as an option.
pub(super) fn host_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_string());
    }
    if value.starts_with('-') {
        return Err(format!(
            "{value:?} starts with '-', which ssh would read as an option"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '%')))
    {
        return Err(format!(
            "{value:?} contains {bad:?}; a host is a name or an IP address (letters, digits, '_', '.', '-', ':', '%')"
        ));
    }
    Ok(())
}

pub(super) fn slot(value: String, _: &Reading) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= MAX_SLOT_NAME_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(value)
    } else {
        Err(format!(
            "{value:?} is not a replication slot name: 1 to {MAX_SLOT_NAME_LEN} characters, only a-z, 0-9 and '_'"
        ))
    }
}

/// The slot a node uses when none is configured: its name made acceptable to PostgreSQL.
pub(super) fn slot_name_for_node(node: &str) -> String {
    node.chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_SLOT_NAME_LEN)
        .collect()
}

pub(super) fn check_pg_setting_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err("is not a PostgreSQL setting name (lower case letters, digits, '_' and '.', not starting with a digit)".to_string())
    }
}

/// A setting's value as PostgreSQL reads it. Control characters are refused: a newline
/// in a value written to postgresql.auto.conf would start a setting of its own.
pub(super) fn pg_setting_value(value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => {
            if text.chars().any(char::is_control) {
                Err(format!(
                    "{text:?} contains a control character (such as a newline)"
                ))
            } else {
                Ok(text)
            }
        }
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(if flag { "on" } else { "off" }.to_string()),
        toml::Value::Float(number) if number.is_finite() => Ok(number.to_string()),
        toml::Value::Float(number) => Err(format!("{number} is not a usable number")),
        other => Err(format!(
            "{} values are not allowed; use a string, an integer, a float or a boolean",
            other.type_str()
        )),
    }
}

//! The libpq password file (`~/.pgpass`), read by pgzfs itself.
//!
//! The Rust PostgreSQL client does not read it, and the alternatives are worse: a
//! password on a command line is visible in `ps` on every node, one in the config file
//! is copied to every node and into every bug report. So pgzfs looks passwords up in the
//! same file, with the same rules, that `psql` and `pg_basebackup` use, and keeps the
//! result out of argv and out of every message it prints.
//!
//! Format, one entry per line: `hostname:port:database:username:password`. A field that
//! is exactly `*` matches anything (the password excepted); `\:` and `\\` stand for a
//! literal ':' and '\'; lines starting with '#' and empty lines are skipped; the first
//! matching line wins.

use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// libpq matches an empty host (a connection over the default Unix socket) against
/// entries for this name.
const DEFAULT_HOST: &str = "localhost";

/// Look up the password for a connection. `host` is the name pgzfs connects to, written
/// the way the pgpass entry writes it; an empty host counts as "localhost", as in libpq.
///
/// A missing file is not an error (there may be no password, e.g. with `trust` or
/// certificate authentication). A file that group or others can read is refused rather
/// than ignored: libpq silently skips it, which turns into a baffling authentication
/// failure hours later, during a failover.
pub fn find_password(
    file: &Path,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Result<Option<String>> {
    let mut opened = match File::open(file) {
        Ok(opened) => opened,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::failed(format!(
                "cannot open password file {}: {e}",
                file.display()
            )))
        }
    };
    // Check the file we actually opened, not the path, so a swap in between changes nothing.
    let metadata = opened.metadata().map_err(|e| {
        Error::failed(format!(
            "cannot inspect password file {}: {e}",
            file.display()
        ))
    })?;
    if !metadata.is_file() {
        return Err(Error::usage(format!(
            "password file {} is not a plain file; libpq would ignore it",
            file.display()
        )));
    }
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::usage(format!(
            "password file {} has mode {:04o}, so group or others can access it; libpq ignores \
             such files and so does pgzfs. Fix it with: chmod 0600 {} (owner uid {})",
            file.display(),
            mode & 0o7777,
            file.display(),
            metadata.uid()
        )));
    }

    let mut contents = Vec::new();
    opened
        .read_to_end(&mut contents)
        .map_err(|e| Error::failed(format!("cannot read password file {}: {e}", file.display())))?;

    let host = if host.is_empty() { DEFAULT_HOST } else { host };
    let port = port.to_string();
    let wanted = [
        host.as_bytes(),
        port.as_bytes(),
        database.as_bytes(),
        user.as_bytes(),
    ];

    for (index, line) in contents.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        if let Some(password) = password_if_matching(line, &wanted) {
            // The password itself never appears in a message, only where it was found.
            return String::from_utf8(password).map(Some).map_err(|_| {
                Error::usage(format!(
                    "password file {}, line {}: the password is not valid UTF-8",
                    file.display(),
                    index + 1
                ))
            });
        }
    }
    Ok(None)
}

/// Where the password file is: the configured `pg_passfile`, else `$PGPASSFILE`, else
/// `~/.pgpass` of the user pgzfs runs as — the order libpq uses.
pub fn passfile_path(configured: Option<&Path>) -> Option<PathBuf> {
    choose_passfile_path(configured, std::env::var_os("PGPASSFILE"), home_dir())
}

/// The home directory of the user pgzfs runs as: `$HOME`, else the password database,
/// like libpq (rc scripts and cron jobs do not always set HOME).
pub fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|user| user.dir)
            .filter(|dir| !dir.as_os_str().is_empty()),
    }
}

fn choose_passfile_path(
    configured: Option<&Path>,
    env_passfile: Option<OsString>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(configured) = configured {
        return Some(configured.to_path_buf());
    }
    match env_passfile {
        Some(from_env) if !from_env.is_empty() => Some(PathBuf::from(from_env)),
        _ => home.map(|home| home.join(".pgpass")),
    }
}

/// Match the first four fields of one line against `wanted`; on success return the
/// unescaped password (everything up to the next unescaped ':' or the end of the line).
/// A line with fewer than five fields matches nothing.
fn password_if_matching(line: &[u8], wanted: &[&[u8]; 4]) -> Option<Vec<u8>> {
    let mut rest = line;
    for expected in wanted {
        rest = field_matches(rest, expected)?;
    }
    let mut password = Vec::new();
    let mut bytes = rest.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b':' => break,
            // A trailing lone backslash is kept, as libpq does.
            b'\\' => password.push(bytes.next().copied().unwrap_or(b'\\')),
            _ => password.push(b),
        }
    }
    Some(password)
}

/// If the field at the start of `line` matches `expected`, return what follows the
/// field's terminating ':'. A field that is exactly `*` matches anything. Like libpq, an
/// unescaped ':' may still match a ':' in `expected` (an IPv6 address written without
/// escapes); it ends the field only once `expected` is used up.
fn field_matches<'a>(line: &'a [u8], expected: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = line.strip_prefix(b"*:") {
        return Some(rest);
    }
    let mut expected = expected.iter().peekable();
    let mut position = 0;
    while position < line.len() {
        let escaped = line[position] == b'\\' && position + 1 < line.len();
        if escaped {
            position += 1;
        }
        let b = line[position];
        if b == b':' && !escaped && expected.peek().is_none() {
            return Some(&line[position + 1..]);
        }
        if expected.next() != Some(&b) {
            return None;
        }
        position += 1;
    }
    // The line ended inside this field: there is no ':' and hence no password after it.
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A password file in the temp directory, removed when dropped.
    struct TempPassfile(PathBuf);

    impl TempPassfile {
        fn with(contents: &str, mode: u32) -> TempPassfile {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "pgzfs-pgpass-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            ));
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            TempPassfile(path)
        }

        fn lookup(&self, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
            find_password(&self.0, host, port, database, user).unwrap()
        }
    }

    impl Drop for TempPassfile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_entry_for_the_replication_user_is_found() {
        let file = TempPassfile::with(
            "10.0.0.1:5432:postgres:replicator:s3cret\n10.0.0.2:5432:postgres:replicator:other\n",
            0o600,
        );
        assert_eq!(
            file.lookup("10.0.0.1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            file.lookup("10.0.0.2", 5432, "postgres", "replicator")
                .as_deref(),
            Some("other")
        );
    }

    #[test]
    fn no_matching_entry_means_no_password() {
        let file = TempPassfile::with("db1:5432:postgres:replicator:s3cret\n", 0o600);
        assert_eq!(file.lookup("db2", 5432, "postgres", "replicator"), None);
        assert_eq!(file.lookup("db1", 5433, "postgres", "replicator"), None);
        assert_eq!(file.lookup("db1", 5432, "template1", "replicator"), None);
        assert_eq!(file.lookup("db1", 5432, "postgres", "admin"), None);
        assert_eq!(
            file.lookup("db", 5432, "postgres", "replicator"),
            None,
            "no prefix matches"
        );
        assert_eq!(file.lookup("db11", 5432, "postgres", "replicator"), None);
    }

    #[test]
    fn a_missing_password_file_is_not_an_error() {
        let path =
            std::env::temp_dir().join(format!("pgzfs-pgpass-test-missing-{}", std::process::id()));
        assert_eq!(
            find_password(&path, "db1", 5432, "postgres", "replicator").unwrap(),
            None
        );
    }

    #[test]
    fn wildcards_match_any_host_port_database_and_user() {
        let file = TempPassfile::with("*:*:*:replicator:for-replicator\n*:*:*:*:fallback\n", 0o600);
        assert_eq!(
            file.lookup("anywhere", 1, "db", "replicator").as_deref(),
            Some("for-replicator")
        );
        assert_eq!(
            file.lookup("anywhere", 65535, "db", "someone").as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn a_star_inside_a_field_is_literal() {
        let file = TempPassfile::with("db*:5432:postgres:replicator:pw\n", 0o600);
        assert_eq!(file.lookup("db1", 5432, "postgres", "replicator"), None);
        assert_eq!(
            file.lookup("db*", 5432, "postgres", "replicator")
                .as_deref(),
            Some("pw")
        );
        let escaped = TempPassfile::with("\\*:5432:postgres:replicator:pw\n", 0o600);
        assert_eq!(escaped.lookup("db1", 5432, "postgres", "replicator"), None);
        assert_eq!(
            escaped
                .lookup("*", 5432, "postgres", "replicator")
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn the_first_matching_line_wins() {
        let file = TempPassfile::with(
            "db1:5432:postgres:replicator:first\n*:*:*:*:second\n",
            0o600,
        );
        assert_eq!(
            file.lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("first")
        );
    }

    #[test]
    fn escaped_colons_and_backslashes_are_unescaped_in_fields_and_password() {
        let file = TempPassfile::with(
            "fe80\\:\\:1:5432:postgres:rep\\\\l:pa\\:ss\\\\word\n",
            0o600,
        );
        assert_eq!(
            file.lookup("fe80::1", 5432, "postgres", "rep\\l")
                .as_deref(),
            Some("pa:ss\\word")
        );
    }

    #[test]
    fn an_ipv6_host_matches_even_with_unescaped_colons_as_in_libpq() {
        let file = TempPassfile::with("fe80::1:5432:postgres:replicator:v6\n", 0o600);
        assert_eq!(
            file.lookup("fe80::1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("v6")
        );
    }

    #[test]
    fn the_password_ends_at_an_unescaped_colon() {
        let file = TempPassfile::with("db1:5432:postgres:replicator:pass:ignored\n", 0o600);
        assert_eq!(
            file.lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("pass")
        );
    }

    #[test]
    fn comments_blank_lines_and_crlf_line_ends_are_handled() {
        let file = TempPassfile::with(
            "# db1:5432:postgres:replicator:commented-out\n\n\r\ndb1:5432:postgres:replicator:real\r\n",
            0o600,
        );
        assert_eq!(
            file.lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("real")
        );
    }

    #[test]
    fn a_line_without_a_password_field_matches_nothing() {
        let file = TempPassfile::with("db1:5432:postgres:replicator\n*:*:*:*:fallback\n", 0o600);
        assert_eq!(
            file.lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn an_empty_password_field_is_an_empty_password() {
        let file = TempPassfile::with("db1:5432:postgres:replicator:\n", 0o600);
        assert_eq!(
            file.lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("")
        );
    }

    #[test]
    fn an_empty_host_matches_localhost_entries_like_libpq() {
        let file = TempPassfile::with("localhost:5432:postgres:replicator:local\n", 0o600);
        assert_eq!(
            file.lookup("", 5432, "postgres", "replicator").as_deref(),
            Some("local")
        );
    }

    #[test]
    fn the_last_line_needs_no_newline() {
        let file = TempPassfile::with("db1:5432:postgres:replicator:pw", 0o600);
        assert_eq!(
            file.lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn a_group_or_world_readable_password_file_is_refused_with_the_fix() {
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            let file = TempPassfile::with("*:*:*:*:s3cret\n", mode);
            let err = find_password(&file.0, "db1", 5432, "postgres", "replicator").unwrap_err();
            assert_eq!(err.kind(), Kind::Usage);
            assert!(err.message().contains("chmod 0600"), "{}", err.message());
            assert!(err.message().contains(&file.0.display().to_string()));
            assert!(
                !err.message().contains("s3cret"),
                "never print the password"
            );
        }
        let owner_only = TempPassfile::with("*:*:*:*:s3cret\n", 0o400);
        assert_eq!(
            owner_only
                .lookup("db1", 5432, "postgres", "replicator")
                .as_deref(),
            Some("s3cret")
        );
    }

    #[test]
    fn a_directory_is_not_a_password_file() {
        let dir =
            std::env::temp_dir().join(format!("pgzfs-pgpass-test-dir-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let err = find_password(&dir, "db1", 5432, "postgres", "replicator").unwrap_err();
        fs::remove_dir(&dir).unwrap();
        assert!(
            err.message().contains("not a plain file"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn a_password_that_is_not_utf8_is_reported_without_being_printed() {
        let file = TempPassfile::with("", 0o600);
        fs::write(&file.0, b"db1:5432:postgres:replicator:\xff\xfe\n").unwrap();
        let err = find_password(&file.0, "db1", 5432, "postgres", "replicator").unwrap_err();
        assert!(err.message().contains("line 1"), "{}", err.message());
    }

    #[test]
    fn the_configured_password_file_wins_over_the_environment_and_home() {
        let chosen = choose_passfile_path(
            Some(Path::new("/etc/pgzfs/pgpass")),
            Some(OsString::from("/env/pgpass")),
            Some(PathBuf::from("/home/zfssync")),
        );
        assert_eq!(chosen, Some(PathBuf::from("/etc/pgzfs/pgpass")));
    }

    #[test]
    fn pgpassfile_in_the_environment_wins_over_home() {
        let chosen = choose_passfile_path(
            None,
            Some(OsString::from("/env/pgpass")),
            Some(PathBuf::from("/home/zfssync")),
        );
        assert_eq!(chosen, Some(PathBuf::from("/env/pgpass")));
    }

    #[test]
    fn without_configuration_the_password_file_is_dot_pgpass_in_home() {
        let chosen = choose_passfile_path(None, None, Some(PathBuf::from("/home/zfssync")));
        assert_eq!(chosen, Some(PathBuf::from("/home/zfssync/.pgpass")));
        let empty_env =
            choose_passfile_path(None, Some(OsString::new()), Some(PathBuf::from("/root")));
        assert_eq!(empty_env, Some(PathBuf::from("/root/.pgpass")));
        assert_eq!(choose_passfile_path(None, None, None), None);
    }
}

//! pg_ctl and postgres on this node, run as the PostgreSQL OS user.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exec::{self, Cmd, RunAs};

pub struct PgCtl {
    bin: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    run_as: Option<RunAs>,
}

impl PgCtl {
    pub fn new(bin: &Path, data_dir: &Path, log_file: &Path, os_user: &str) -> Result<PgCtl> {
        Ok(PgCtl {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            log_file: log_file.to_path_buf(),
            run_as: RunAs::user(os_user)?,
        })
    }

    /// pg_ctl for a configured node's data directory, as its PostgreSQL OS user.
    pub fn for_node(node: &crate::config::Node) -> Result<PgCtl> {
        PgCtl::new(
            &node.pg.pg_bin,
            &node.data_dir,
            &node.pg.pg_log_file,
            &node.pg.pg_os_user,
        )
    }

    fn program(&self, name: &str) -> Result<String> {
        let path = self.bin.join(name);
        if !path.exists() {
            return Err(Error::usage(format!(
                "{} not found (check pg_bin)",
                path.display()
            )));
        }
        Ok(path.display().to_string())
    }

    fn pg_ctl(&self) -> Result<Cmd> {
        Ok(Cmd::new(self.program("pg_ctl")?)
            .arg("-D")
            .arg(self.data_dir.display().to_string()))
    }

    /// The major version of the installed server binaries.
    pub fn binary_major(&self) -> Result<u32> {
        let text = exec::run(
            &Cmd::new(self.program("postgres")?).arg("--version"),
            self.run_as.as_ref(),
        )?;
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        text.split_whitespace()
            .find_map(|word| {
                word.chars()
                    .next()
                    .filter(char::is_ascii_digit)
                    .and_then(|_| super::control::parse_major(word))
            })
            .ok_or_else(|| Error::failed(format!("cannot tell the version from {text:?}")))
    }

    pub fn is_running(&self) -> bool {
        super::control::running_postmaster(&self.data_dir).is_some()
    }

    pub fn start(&self, timeout: Duration) -> Result<()> {
        self.start_with(timeout, &[])
    }

    /// Start with `settings` given on the server's command line (`pg_ctl -o "-c k=v"`),
    /// where they override every configuration file in the data directory. pg_ctl hands
    /// `-o` to /bin/sh, so only plain values are accepted (see [`server_options`]).
    pub fn start_with(&self, timeout: Duration, settings: &[(&str, String)]) -> Result<()> {
        self.prepare_log_file()?;
        let mut cmd = self
            .pg_ctl()?
            .args(["-w", "-t"])
            .arg(timeout.as_secs().max(1).to_string())
            .arg("-l")
            .arg(self.log_file.display().to_string());
        if !settings.is_empty() {
            cmd = cmd.arg("-o").arg(server_options(settings)?);
        }
        let cmd = cmd.arg("start");
        exec::run(&cmd, self.run_as.as_ref())
            .map(drop)
            .map_err(|e| {
                e.context(format!(
                    "starting PostgreSQL (log: {})",
                    self.log_file.display()
                ))
            })
    }

    /// Stop a standby whose data the receive that follows replaces: immediately. A fast
    /// shutdown of a standby writes a restartpoint (on a busy standby, seconds of
    /// flushing) into files the rollback to the common base discards a moment later. If
    /// the receive fails and the old data is kept, the standby starts again with the
    /// ordinary crash recovery a standby does after any power loss.
    pub fn stop_for_replacement(&self) -> Result<&'static str> {
        if !self.is_running() {
            return Ok("already stopped");
        }
        let immediate = self
            .pg_ctl()?
            .args(["-w", "-t", "60", "-m", "immediate", "stop"]);
        exec::run(&immediate, self.run_as.as_ref())?;
        Ok("immediate")
    }

    /// Stop fast (abort transactions, clean shutdown); if that does not finish within the
    /// timeout, stop immediately. Immediate is safe here: the data is about to be replaced
    /// by the primary's snapshot anyway, or recovers on the next start.
    pub fn stop(&self, timeout: Duration) -> Result<&'static str> {
        if !self.is_running() {
            return Ok("already stopped");
        }
        let fast = self
            .pg_ctl()?
            .args(["-w", "-t"])
            .arg(timeout.as_secs().max(1).to_string())
            .args(["-m", "fast", "stop"]);
        match exec::run(&fast, self.run_as.as_ref()) {
            Ok(_) => Ok("fast"),
            Err(e) => {
                tracing::warn!("fast shutdown did not finish ({e}); stopping immediately");
                let immediate = self
                    .pg_ctl()?
                    .args(["-w", "-t", "60", "-m", "immediate", "stop"]);
                exec::run(&immediate, self.run_as.as_ref())?;
                Ok("immediate")
            }
        }
    }
}

/// `-c key=value ...` for the server's command line. pg_ctl runs the server through
/// /bin/sh, so keys and values are limited to characters no shell interprets; an empty
/// value clears a setting.
pub fn server_options(settings: &[(&str, String)]) -> Result<String> {
    let plain = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    let mut words = Vec::new();
    for (key, value) in settings {
        if key.is_empty() || !plain(key, b"_.") || !plain(value, b"/_.:,-") {
            return Err(Error::failed(format!(
                "refusing to pass the server setting {key}={value:?}: only letters, digits and / _ . : , - are passed to pg_ctl -o"
            )));
        }
        words.push(format!("-c {key}={value}"));
    }
    Ok(words.join(" "))
}

impl PgCtl {
    /// The PostgreSQL OS user the server runs as (None: we are that user).
    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    /// A program from the same `pg_bin` (pg_checksums, ...), None when it is not there.
    pub fn tool(&self, name: &str) -> Option<String> {
        self.program(name).ok()
    }

    /// `pg_checksums --check` on this (stopped) data directory: Ok(Ok(())) when every
    /// block's checksum is right, Ok(Err(what it said)) when not.
    pub fn check_checksums(&self) -> Result<std::result::Result<(), String>> {
        let cmd = Cmd::new(self.program("pg_checksums")?)
            .arg("--check")
            .arg("-D")
            .arg(self.data_dir.display().to_string());
        let out = exec::output(&cmd, self.run_as.as_ref())?;
        if out.success() {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("{} {}", out.stdout.trim(), out.stderr.trim())
                .trim()
                .to_string()))
        }
    }

    /// `pg_ctl promote -w`: how PostgreSQL 11 and older are promoted, and the fallback when
    /// the replication role may not call pg_promote().
    pub fn promote(&self, timeout: Duration) -> Result<()> {
        let cmd = self
            .pg_ctl()?
            .args(["-w", "-t"])
            .arg(timeout.as_secs().max(1).to_string())
            .arg("promote");
        exec::run(&cmd, self.run_as.as_ref()).map(drop)
    }

    /// Re-read the configuration (primary_conninfo is reloadable from PostgreSQL 13 on).
    pub fn reload(&self) -> Result<()> {
        exec::run(&self.pg_ctl()?.arg("reload"), self.run_as.as_ref()).map(drop)
    }

    /// pg_ctl opens its log as the PostgreSQL user, who often may not create files where
    /// operators keep logs; create it for them, owned by that user. Anything already at
    /// that name (a link too) is left as it is: pg_ctl opens it with that user's rights,
    /// not root's. A new file is created with O_EXCL|O_NOFOLLOW in a directory reached
    /// without following links another user planted, and chowned through its handle.
    fn prepare_log_file(&self) -> Result<()> {
        let (dir, name) = crate::safe_dir::parent_of(&self.log_file, None)
            .map_err(|e| e.context("the PostgreSQL log file's directory"))?;
        if dir.exists(&name) {
            return Ok(());
        }
        let file = match dir.create_new(&name, 0o600) {
            Ok(file) => file,
            // Created meanwhile by someone else: theirs to open, as above.
            Err(_) if dir.exists(&name) => return Ok(()),
            Err(e) => return Err(e.context("creating the PostgreSQL log")),
        };
        if let Some(user) = &self.run_as {
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                Some(user.uid.into()),
                Some(user.gid.into()),
            )
            .map_err(|e| Error::failed(format!("cannot chown {}: {e}", self.log_file.display())))?;
        }
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_pass_plain_values_and_refuse_anything_a_shell_would_read() {
        let ok = server_options(&[
            ("port", "54321".to_string()),
            ("listen_addresses", String::new()),
            (
                "unix_socket_directories",
                "/tmp/pgzfs-verify-x/sock".to_string(),
            ),
        ])
        .unwrap();
        assert_eq!(
            ok,
            "-c port=54321 -c listen_addresses= -c unix_socket_directories=/tmp/pgzfs-verify-x/sock"
        );
        for bad in ["a b", "$(id)", "x;y", "'", "a\nb"] {
            assert!(
                server_options(&[("port", bad.to_string())]).is_err(),
                "{bad}"
            );
        }
        assert!(server_options(&[("a=b", "1".to_string())]).is_err());
    }
}

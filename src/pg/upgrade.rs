//! The new major's tools for `pgzfs upgrade`: initdb of the new cluster, `pg_upgrade`
//! (`--check` and `--link`), copying the configuration files across, and removing a
//! directory the upgrade made. Everything runs as the PostgreSQL OS user, in a private
//! working directory (pg_upgrade writes its scripts and sockets into the directory it
//! runs in), so no file in a data directory is ever touched with root's rights.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::exec::{self, Cmd, RunAs};

use super::ClusterIdentity;

/// The configuration files pg_upgrade leaves behind in the old data directory: the new
/// cluster starts with the old one's settings and access rules.
pub const CONFIG_FILES: [&str; 4] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
];

pub struct Upgrader {
    old_bin: PathBuf,
    new_bin: PathBuf,
    run_as: Option<RunAs>,
    /// Owned by the PostgreSQL OS user, mode 0700: pg_upgrade's working directory and
    /// the sockets of the servers it starts.
    work_dir: PathBuf,
}

impl Upgrader {
    pub fn new(old_bin: &Path, new_bin: &Path, os_user: &str, work_dir: &Path) -> Result<Upgrader> {
        Ok(Upgrader {
            old_bin: old_bin.to_path_buf(),
            new_bin: new_bin.to_path_buf(),
            run_as: RunAs::user(os_user)?,
            work_dir: work_dir.to_path_buf(),
        })
    }

    fn new_tool(&self, name: &str) -> Result<String> {
        let path = self.new_bin.join(name);
        if !path.is_file() {
            return Err(Error::usage(format!(
                "{} not found: --new-bin must hold the new major's whole toolset",
                path.display()
            )));
        }
        Ok(path.display().to_string())
    }

    /// The tools the upgrade and its follow-ups need, all present.
    pub fn check_tools(&self) -> Result<()> {
        for tool in [
            "initdb",
            "pg_ctl",
            "postgres",
            "pg_upgrade",
            "vacuumdb",
            "psql",
        ] {
            self.new_tool(tool)?;
        }
        Ok(())
    }

    /// initdb of an empty new cluster that pg_upgrade accepts for `old`: the same
    /// bootstrap superuser, encoding, locale and data checksum setting.
    pub fn initdb(&self, dir: &Path, old: &ClusterIdentity, new_major: u32) -> Result<()> {
        let mut cmd = Cmd::new(self.new_tool("initdb")?)
            .arg("-D")
            .arg(dir.display().to_string())
            .arg("-U")
            .arg(old.superuser.clone())
            .arg("-E")
            .arg(old.encoding.clone())
            .arg(format!("--lc-collate={}", old.collate))
            .arg(format!("--lc-ctype={}", old.ctype))
            .arg("--auth-local=trust")
            .arg("--auth-host=reject");
        if old.checksums {
            cmd = cmd.arg("--data-checksums");
        } else if new_major >= 18 {
            // From 18 on, initdb turns checksums on by default; pg_upgrade needs them equal.
            cmd = cmd.arg("--no-data-checksums");
        }
        let out = exec::output_in(&cmd, self.run_as.as_ref(), Some(&self.work_dir))?;
        if out.success() {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "initdb of the new cluster failed: {}",
                tail(&out.stderr, 20)
            )))
        }
    }

    fn pg_upgrade(&self, old_data: &Path, new_data: &Path, superuser: &str) -> Result<Cmd> {
        Ok(Cmd::new(self.new_tool("pg_upgrade")?)
            .arg("-b")
            .arg(self.old_bin.display().to_string())
            .arg("-B")
            .arg(self.new_bin.display().to_string())
            .arg("-d")
            .arg(old_data.display().to_string())
            .arg("-D")
            .arg(new_data.display().to_string())
            .arg("-U")
            .arg(superuser.to_string())
            .arg("-s")
            .arg(self.work_dir.display().to_string()))
    }

    /// `pg_upgrade --check` against the running old server (on `old_port`): Ok(Err(what
    /// it reported)) when the cluster cannot be upgraded as it is.
    pub fn check(
        &self,
        old_data: &Path,
        new_data: &Path,
        superuser: &str,
        old_port: u16,
    ) -> Result<std::result::Result<(), String>> {
        let cmd = self
            .pg_upgrade(old_data, new_data, superuser)?
            .arg("--check")
            .arg("--link")
            .arg("-p")
            .arg(old_port.to_string())
            .arg("-P")
            .arg(private_port(old_port).to_string());
        let out = exec::output_in(&cmd, self.run_as.as_ref(), Some(&self.work_dir))?;
        Ok(verdict(&out))
    }

    /// `pg_upgrade --link` with both servers stopped: the new cluster's relation files
    /// become hard links to the old ones (same blocks, nothing copied).
    pub fn link(
        &self,
        old_data: &Path,
        new_data: &Path,
        superuser: &str,
        old_port: u16,
    ) -> Result<std::result::Result<String, String>> {
        let cmd = self
            .pg_upgrade(old_data, new_data, superuser)?
            .arg("--link")
            .arg("-p")
            .arg(private_port(old_port).to_string())
            .arg("-P")
            .arg(private_port(old_port.wrapping_add(1)).to_string());
        let out = exec::output_in(&cmd, self.run_as.as_ref(), Some(&self.work_dir))?;
        Ok(match verdict(&out) {
            Ok(()) => Ok(out.stdout),
            Err(e) => Err(e),
        })
    }

    /// Copy the configuration files of `from` (the old data directory) over the new
    /// cluster's defaults in `to`, as the PostgreSQL user (`cp` does not need root).
    pub fn copy_config(&self, from: &Path, to: &Path) -> Result<()> {
        for name in CONFIG_FILES {
            let source = from.join(name);
            if std::fs::symlink_metadata(&source).is_err() {
                continue;
            }
            let cmd = Cmd::new("cp")
                .arg("-p")
                .arg(source.display().to_string())
                .arg(to.join(name).display().to_string());
            exec::run(&cmd, self.run_as.as_ref())
                .map_err(|e| e.context(format!("copying {name} to the new cluster")))?;
        }
        Ok(())
    }

    /// Remove a directory the upgrade created (the new cluster of a failed attempt): its
    /// contents as the PostgreSQL user, then the emptied directory itself (its parent
    /// may belong to root), never through a link.
    pub fn remove_dir(&self, dir: &Path) -> Result<()> {
        if std::fs::symlink_metadata(dir).is_err() {
            return Ok(());
        }
        let cmd =
            Cmd::new("find")
                .arg(dir.display().to_string())
                .args(["-mindepth", "1", "-delete"]);
        exec::run(&cmd, self.run_as.as_ref())?;
        std::fs::remove_dir(dir)
            .map_err(|e| Error::failed(format!("removing {}: {e}", dir.display())))
    }

    /// The lists pg_upgrade wrote next to a failed check (the problem columns, ...), read
    /// as the PostgreSQL user: they are removed with the new cluster.
    pub fn check_findings(&self, new_data: &Path) -> String {
        let cmd = Cmd::new("find")
            .arg(new_data.join("pg_upgrade_output.d").display().to_string())
            .args(["-name", "*.txt", "-type", "f", "-exec", "cat", "{}", "+"]);
        match exec::output(&cmd, self.run_as.as_ref()) {
            Ok(out) => tail(&out.stdout, 40),
            Err(_) => String::new(),
        }
    }

    /// Scripts pg_upgrade left in its working directory for the operator
    /// (update_extensions.sql, delete_old_cluster.sh), with their text.
    pub fn scripts(&self) -> Vec<(String, String)> {
        // pg_upgrade ran as the PostgreSQL user, who owns the work directory: read only
        // regular files there, never through a link it may have put in their place.
        let Ok(dir) = crate::safe_dir::Dir::open(&self.work_dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for name in ["update_extensions.sql", "delete_old_cluster.sh"] {
            if let Ok(crate::safe_dir::Found::File(bytes)) = dir.read(name) {
                found.push((
                    name.to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        found
    }
}

/// The port a server pg_upgrade starts listens on: only its socket in the private work
/// directory is used (no TCP), so it just must differ from the other one.
fn private_port(port: u16) -> u16 {
    if port >= 60000 {
        50432
    } else {
        port + 1000
    }
}

fn verdict(out: &exec::Output) -> std::result::Result<(), String> {
    if out.success() {
        return Ok(());
    }
    let said = format!("{}\n{}", out.stdout.trim(), out.stderr.trim());
    Err(format!(
        "{} ({})",
        tail(&said, 25),
        exec::describe_status(out.status)
    ))
}

/// The last `lines` non-empty lines of `text`, joined: what pg_upgrade says last is why
/// it stopped.
fn tail(text: &str, lines: usize) -> String {
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_pg_upgrade_gives_last_is_kept() {
        let text = "Performing Consistency Checks\n\nChecking for reg* data types   fatal\n\nYour installation contains \"reg*\" data types\n";
        assert_eq!(
            tail(text, 2),
            "Checking for reg* data types   fatal\nYour installation contains \"reg*\" data types"
        );
    }

    #[test]
    fn the_servers_pg_upgrade_starts_get_ports_of_their_own() {
        assert_eq!(private_port(5432), 6432);
        assert_ne!(private_port(5432), private_port(5433));
        assert_eq!(private_port(65000), 50432);
    }
}

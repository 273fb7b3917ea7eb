//! Commands on another node through the system's OpenSSH client, for the bulk data path
//! (`ssh_data_path = "openssh"`). Control commands keep using the libssh2 session in
//! `ssh`; only the `zfs send` stream of a re-seed takes this route.
//!
//! The client runs with the same user, key, port and known_hosts file as the libssh2
//! session, and just as strictly: no ssh_config, no global known_hosts, no prompts, and
//! an unknown or changed host key is a refusal, never a question.

use crate::error::Result;
use crate::exec::{self, Cmd, Output, Runner};
use crate::ssh::SshTarget;
use crate::transfer::{Sink, Source};

/// Ciphers offered, best first. OpenSSH's own default puts chacha20-poly1305 first; on
/// CPUs with AES instructions AES-GCM costs less per byte (docs/benchmarks.md). Both
/// are authenticated ciphers that every supported OpenSSH server enables by default.
const CIPHERS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com";

/// A node reached through ssh(1).
pub struct OpenSshHost {
    target: SshTarget,
    ssh: String,
}

impl OpenSshHost {
    pub fn new(target: SshTarget) -> OpenSshHost {
        OpenSshHost {
            target,
            ssh: "ssh".to_string(),
        }
    }

    /// The ssh(1) command line that runs `cmd` on the node.
    pub fn command(&self, cmd: &Cmd) -> Cmd {
        let t = &self.target;
        let option = |o: String| ["-o".to_string(), o];
        Cmd::new(self.ssh.clone())
            // Only what is written here counts: no user or system ssh_config, whose
            // Host blocks could redirect the connection or loosen host key checking.
            .args(["-F", "/dev/null"])
            .args(option("BatchMode=yes".into()))
            .args(option("StrictHostKeyChecking=yes".into()))
            .args(option(format!(
                "UserKnownHostsFile={}",
                t.known_hosts.display()
            )))
            .args(option("GlobalKnownHostsFile=/dev/null".into()))
            .args(option("UpdateHostKeys=no".into()))
            .args(option("IdentitiesOnly=yes".into()))
            .args(option(format!("IdentityFile={}", t.key.display())))
            .args(option(format!(
                "ConnectTimeout={}",
                t.connect_timeout.as_secs().max(1)
            )))
            // The libssh2 session's keepalive, so a dead peer ends the stream too.
            .args(option("ServerAliveInterval=15".into()))
            .args(option("ServerAliveCountMax=4".into()))
            .args(option("Compression=no".into()))
            .args(option(format!("Ciphers={CIPHERS}")))
            .args(option("ForwardAgent=no".into()))
            .args(option("ClearAllForwardings=yes".into()))
            .args([
                "-T",
                "-p",
                &t.port.to_string(),
                "-l",
                &t.user,
                "--",
                &t.host,
            ])
            // ssh(1) hands the remote shell one line, as the libssh2 exec channel does.
            .arg(crate::shell::join(&cmd.argv))
    }
}

impl Runner for OpenSshHost {
    fn output(&self, cmd: &Cmd) -> Result<Output> {
        exec::output(&self.command(cmd), None)
    }

    fn source(&self, cmd: &Cmd) -> Result<Box<dyn Source>> {
        // stderr is drained on its own thread (exec::spawn_source), so ssh's and the
        // sender's complaints reach the error message and never stall the stream.
        Ok(Box::new(exec::spawn_source(&self.command(cmd))?))
    }

    fn sink(&self, cmd: &Cmd) -> Result<Box<dyn Sink>> {
        Ok(Box::new(exec::spawn_sink(&self.command(cmd))?))
    }

    fn describe(&self) -> String {
        format!("{} (OpenSSH)", self.target.describe())
    }
}

/// `ssh_data_path`: what carries the `zfs send` stream when this node is re-seeded.
/// `openssh` (the default) runs the system ssh(1) for the stream only, with the same
/// user, key, port and strict known_hosts file; `ssh2` keeps the stream on pgzfs's own
/// libssh2 session, which runs every other remote command either way. The default is
/// the faster one measured by bench/run: on the lab a full re-seed moved its stream about
/// 1.4x faster through ssh(1) than through libssh2 (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SshDataPath {
    Ssh2,
    #[default]
    OpenSsh,
}

impl SshDataPath {
    pub(crate) fn parse(value: &str) -> Result<SshDataPath, String> {
        match value {
            "ssh2" => Ok(SshDataPath::Ssh2),
            "openssh" => Ok(SshDataPath::OpenSsh),
            other => Err(format!(
                "{other:?} is not an SSH data path; use \"ssh2\" or \"openssh\""
            )),
        }
    }
}

/// Whether `known_hosts` already has a key for `host` on `port` (hashed entries
/// included), asked of ssh-keygen(1) without contacting the host or trusting anything.
pub fn known_host_present(known_hosts: &std::path::Path, host: &str, port: u16) -> Result<bool> {
    if !known_hosts.exists() {
        return Ok(false);
    }
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let cmd = Cmd::new("ssh-keygen")
        .arg("-F")
        .arg(name)
        .arg("-f")
        .arg(known_hosts.display().to_string());
    // Exit 0 with the entry when found, 1 when not; anything else is a real failure.
    let out = exec::output(&cmd, None)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(crate::error::Error::failed(format!(
            "{} failed: {}",
            cmd.display(),
            exec::describe_status(out.status)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn host() -> OpenSshHost {
        OpenSshHost::new(SshTarget {
            host: "db1.example.net".into(),
            port: 2222,
            user: "zfssync".into(),
            key: "/root/.ssh/id_ed25519".into(),
            known_hosts: "/etc/pgzfs/known_hosts".into(),
            connect_timeout: Duration::from_secs(5),
        })
    }

    #[test]
    fn the_stream_goes_through_ssh_with_strict_host_keys_and_our_files_only() {
        let cmd = host().command(&Cmd::new("zfs").args(["send", "tank/pg@a b"]));
        let line = cmd.argv.join(" ");
        for wanted in [
            "-F /dev/null",
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/etc/pgzfs/known_hosts",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o IdentitiesOnly=yes",
            "-o IdentityFile=/root/.ssh/id_ed25519",
            "-o ConnectTimeout=5",
            "-p 2222 -l zfssync -- db1.example.net",
        ] {
            assert!(line.contains(wanted), "{wanted:?} missing from {line}");
        }
        assert_eq!(cmd.program(), "ssh");
        // The remote command is one shell-quoted argument, last.
        assert_eq!(cmd.argv.last().unwrap(), "zfs send 'tank/pg@a b'");
    }

    #[test]
    fn messages_say_which_transport_was_used() {
        assert_eq!(host().describe(), "zfssync@db1.example.net:2222 (OpenSSH)");
    }
}

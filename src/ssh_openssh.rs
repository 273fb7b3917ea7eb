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
    master: Option<ControlMaster>,
}

/// An ssh(1) connection opened ahead of the stream (`ssh -M -N`): the stream's own
/// ssh(1) then runs as a session of it, so the key exchange and login (about a third of
/// a second on the lab, more over a long link) happen while the cut is being taken
/// instead of before the first byte moves. Its socket lives in a directory only root
/// (this process's user) can enter, made afresh for this run and removed with it:
/// whoever can reach the socket can run commands on the other node.
struct ControlMaster {
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
    /// `ssh -O exit`: ends the master, which has gone to the background once logged in.
    exit: Cmd,
    /// ssh(1) as started; it exits when the master goes to the background.
    process: std::process::Child,
}

/// How long the master waits for a session when none is running. It ends with the run
/// (`Drop`); this bounds how long it outlives a run that was killed outright, and is
/// longer than the cut usually takes (a stream that finds it gone connects on its own).
const MASTER_IDLE: &str = "ControlPersist=60";

impl Drop for ControlMaster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(self.exit.program())
            .args(&self.exit.argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl OpenSshHost {
    pub fn new(target: SshTarget) -> OpenSshHost {
        OpenSshHost {
            target,
            ssh: "ssh".to_string(),
            master: None,
        }
    }

    /// The same, with the connection opened now in the background. Until it is up (or
    /// if it never comes up), each command connects on its own, as without it.
    pub fn connecting_ahead(target: SshTarget) -> OpenSshHost {
        let mut host = OpenSshHost::new(target);
        match host.start_master() {
            Ok(master) => host.master = Some(master),
            Err(e) => tracing::debug!("ssh: no connection opened ahead: {e}"),
        }
        host
    }

    fn start_master(&self) -> std::io::Result<ControlMaster> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "pgzfs-ssh-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        // create, never reuse: a directory someone else made there is not ours.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let socket = dir.join("control");
        let master = self
            .base()
            .args(["-M", "-N", "-S"])
            .arg(socket.display().to_string())
            .args(["-o", MASTER_IDLE])
            .args(self.destination());
        let exit = Cmd::new(self.ssh.clone())
            .args(["-F", "/dev/null", "-S"])
            .arg(socket.display().to_string())
            .args(["-O", "exit"])
            .args(self.destination());
        let process = std::process::Command::new(master.program())
            .args(&master.argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match process {
            Ok(process) => Ok(ControlMaster {
                dir,
                socket,
                exit,
                process,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// ssh(1) with every option pgzfs sets, up to the destination.
    fn base(&self) -> Cmd {
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
    }

    /// `-T -p PORT -l USER -- HOST`: no terminal, and where to log in.
    fn destination(&self) -> Vec<String> {
        let t = &self.target;
        vec![
            "-T".to_string(),
            "-p".to_string(),
            t.port.to_string(),
            "-l".to_string(),
            t.user.clone(),
            "--".to_string(),
            t.host.clone(),
        ]
    }

    /// The ssh(1) command line that runs `cmd` on the node.
    pub fn command(&self, cmd: &Cmd) -> Cmd {
        let mut ssh = self.base();
        if let Some(master) = &self.master {
            // A session of the connection opened ahead; ssh(1) connects on its own
            // when the socket is not there (yet).
            ssh = ssh
                .arg("-S")
                .arg(master.socket.display().to_string())
                .args(["-o", "ControlMaster=no"]);
        }
        ssh.args(self.destination())
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
    fn a_connection_opened_ahead_carries_the_stream_through_a_socket_only_root_can_reach() {
        use std::os::unix::fs::PermissionsExt;
        // `true` stands in for ssh(1): what matters is the command lines and the socket's
        // directory, not a login.
        let mut host = host();
        host.ssh = "true".to_string();
        let master = host.start_master().expect("spawn the master");
        let dir = master.dir.clone();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is reachable by others", dir.display());
        host.master = Some(master);
        let line = host
            .command(&Cmd::new("zfs").args(["send", "tank/pg@a"]))
            .argv
            .join(" ");
        let socket = dir.join("control");
        assert!(
            line.contains(&format!("-S {} -o ControlMaster=no", socket.display())),
            "{line}"
        );
        assert!(
            line.ends_with("-- db1.example.net zfs send tank/pg@a"),
            "{line}"
        );
        drop(host);
        assert!(!dir.exists(), "{} outlived the run", dir.display());
    }

    #[test]
    fn messages_say_which_transport_was_used() {
        assert_eq!(host().describe(), "zfssync@db1.example.net:2222 (OpenSSH)");
    }
}

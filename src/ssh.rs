//! SSH to other nodes with libssh2 (the ssh2 crate): key authentication, strict
//! known_hosts checking, and commands on exec channels whose stdout can be a ZFS stream.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use ssh2::{CheckResult, HashType, KnownHostFileKind, Session};

use crate::error::{Error, Result};
use crate::exec::{Cmd, Output, Runner, Started};
use crate::transfer::{Sink, Source};

/// Where and how to log in.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
}

impl SshTarget {
    pub fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }

    /// How known_hosts names this host: OpenSSH writes `[host]:port` for ports other than 22.
    fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// A logged-in session to one node.
pub struct SshHost {
    session: Session,
    target: SshTarget,
}

/// Probe an idle connection after 15 s, every 5 s, and give up after 4 unanswered probes:
/// a peer that vanished (power loss, a cable) is found within about 35 s.
fn enable_tcp_keepalive(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = setsockopt(tcp, sockopt::KeepAlive, &true)
        .and_then(|_| setsockopt(tcp, sockopt::TcpKeepIdle, &15))
        .and_then(|_| setsockopt(tcp, sockopt::TcpKeepInterval, &5))
        .and_then(|_| setsockopt(tcp, sockopt::TcpKeepCount, &4));
    if let Err(e) = set {
        tracing::debug!("ssh: TCP keepalive not set: {e}");
    }
}

/// A blocking read of a ZFS stream may legitimately wait while the sender walks metadata;
/// a dead peer is caught by keepalives long before this.
const IO_TIMEOUT_MS: u32 = 600_000;

impl SshHost {
    pub fn connect(target: &SshTarget) -> Result<SshHost> {
        let who = target.describe();
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| Error::failed(format!("cannot resolve {}: {e}", target.host)))?
            .next()
            .ok_or_else(|| Error::failed(format!("{} resolves to no address", target.host)))?;
        let tcp = TcpStream::connect_timeout(&addr, target.connect_timeout)
            .map_err(|e| Error::failed(format!("cannot reach {who}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        enable_tcp_keepalive(&tcp);
        let mut session = Session::new().map_err(|e| Error::failed(format!("ssh: {e}")))?;
        session.set_tcp_stream(tcp);
        session.set_timeout(target.connect_timeout.as_millis().min(u32::MAX as u128) as u32);
        session
            .handshake()
            .map_err(|e| Error::failed(format!("ssh handshake with {who} failed: {e}")))?;
        check_host_key(&session, target)?;
        session
            .userauth_pubkey_file(&target.user, None, &target.key, None)
            .map_err(|e| {
                Error::failed(format!(
                    "ssh key authentication as {who} with {} failed: {e}",
                    target.key.display()
                ))
            })?;
        if !session.authenticated() {
            return Err(Error::failed(format!(
                "ssh: {who} did not accept key {}",
                target.key.display()
            )));
        }
        // No libssh2 keepalive: in blocking mode a keepalive that comes due while a read
        // waits fails that read with "Timed out waiting on socket" (a remote `zfs hold`
        // slowed by load failed a re-seed that way). The kernel's TCP keepalive finds a
        // dead peer instead, and the session timeout still bounds every call.
        session.set_keepalive(false, 0);
        session.set_timeout(IO_TIMEOUT_MS);
        tracing::debug!("ssh: logged in to {who}");
        Ok(SshHost {
            session,
            target: target.clone(),
        })
    }

    fn exec(&self, cmd: &Cmd) -> Result<ssh2::Channel> {
        let line = crate::shell::join(&cmd.argv);
        tracing::debug!("ssh {}: {line}", self.target.describe());
        let mut channel = self.session.channel_session().map_err(|e| {
            Error::failed(format!(
                "ssh {}: cannot open a channel: {e}",
                self.target.describe()
            ))
        })?;
        channel.exec(&line).map_err(|e| {
            Error::failed(format!(
                "ssh {}: cannot run {}: {e}",
                self.target.describe(),
                cmd.program()
            ))
        })?;
        Ok(channel)
    }
}

/// Refuse unknown and changed host keys. Accepting a key is an operator decision, made
/// once, after comparing the fingerprint out of band.
fn check_host_key(session: &Session, target: &SshTarget) -> Result<()> {
    let (key, key_type) = session
        .host_key()
        .ok_or_else(|| Error::failed("ssh: the server sent no host key"))?;
    let fingerprint = session
        .host_key_hash(HashType::Sha256)
        .map(|h| format!("SHA256:{}", base64_unpadded(h)))
        .unwrap_or_default();
    let key_type = format!("{key_type:?}");
    let name = target.known_hosts_name();
    let file = &target.known_hosts;
    let mut known = session
        .known_hosts()
        .map_err(|e| Error::failed(format!("ssh: {e}")))?;
    if file.exists() {
        known
            .read_file(file, KnownHostFileKind::OpenSSH)
            .map_err(|e| {
                Error::usage(format!("cannot read known_hosts {}: {e}", file.display()))
            })?;
    }
    match known.check_port(&target.host, target.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound => Err(Error::refused(format!(
            "the host key of {name} is not in {known}: {key_type} {fingerprint}\n  \
             Compare this fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on that host; \
             if it matches, accept it with:\n    ssh-keyscan -p {port} {host} >> {known}",
            known = file.display(),
            port = target.port,
            host = target.host,
        ))),
        CheckResult::Mismatch => Err(Error::refused(changed_host_key_message(
            &name,
            &key_type,
            &fingerprint,
            file,
        ))),
        CheckResult::Failure => Err(Error::failed(format!("ssh: checking the host key of {name} against {} failed", file.display()))),
    }
}

/// What to tell the operator when a host presents another key than the recorded one. It
/// must not suggest fetching the key over the network again (`ssh-keyscan >>
/// known_hosts`): on an intercepted connection that records the interceptor's key. The new
/// key is copied from the host itself.
fn changed_host_key_message(
    name: &str,
    key_type: &str,
    fingerprint: &str,
    known: &std::path::Path,
) -> String {
    format!(
        "THE HOST KEY OF {name} HAS CHANGED: it now presents {key_type} {fingerprint}, which differs from \
         the key recorded in {known}. Someone may be intercepting the connection. If the host was \
         legitimately reinstalled: on the host's console (not over this network), print its key and \
         fingerprint with `cat /etc/ssh/ssh_host_ed25519_key.pub; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`; \
         if the fingerprint is {fingerprint}, remove the old entry with `ssh-keygen -R '{name}' -f {known}` \
         and add the line `{name} <that key>` to {known}",
        known = known.display(),
    )
}

fn base64_unpadded(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 4);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        let emit = chunk.len() + 1;
        for i in 0..emit {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The remote command's end: its exit status, or the signal that killed it.
fn remote_status(channel: &mut ssh2::Channel) -> Result<ExitStatus> {
    let _ = channel.wait_close();
    if let Ok(signal) = channel.exit_signal() {
        if let Some(name) = signal.exit_signal {
            // libssh2 reports 0 as the exit status when the command died from a signal, so
            // the signal must be checked first or a killed sender would look successful.
            let number = match name.as_str() {
                "KILL" => 9,
                "TERM" => 15,
                "INT" => 2,
                "PIPE" => 13,
                "HUP" => 1,
                _ => 6,
            };
            return Ok(ExitStatus::from_raw(number));
        }
    }
    let code = channel
        .exit_status()
        .map_err(|e| Error::failed(format!("ssh: no exit status: {e}")))?;
    Ok(ExitStatus::from_raw((code & 0xff) << 8))
}

/// The most of a remote command's stderr kept for messages; the rest is read and dropped.
const MAX_REMOTE_STDERR: u64 = 64 << 10;

/// The most of a remote command's stdout pgzfs reads (the longest legitimate answer, a
/// `zfs get` of every snapshot's properties, is far below this).
const MAX_REMOTE_STDOUT: u64 = 64 << 20;

/// Bounded: the other end decides how much it writes, not how much memory we use.
fn read_stderr(channel: &mut ssh2::Channel) -> String {
    let mut stderr = channel.stderr();
    let mut bytes = Vec::new();
    let _ = (&mut stderr)
        .take(MAX_REMOTE_STDERR)
        .read_to_end(&mut bytes);
    let dropped = std::io::copy(&mut stderr, &mut std::io::sink()).unwrap_or(0);
    let mut text = String::from_utf8_lossy(&bytes).trim().to_string();
    if dropped > 0 {
        text.push_str(&format!(" ... ({dropped} more bytes)"));
    }
    text
}

/// Read `reader` to the end, refusing more than `max` bytes.
fn read_bounded(reader: impl Read, max: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    reader.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "more than {max} bytes of output; refusing the rest"
        )));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A remote command under way on its own channel of the session.
struct RemoteCommand {
    channel: ssh2::Channel,
    cmd: Cmd,
    who: String,
}

impl Started for RemoteCommand {
    fn finish(mut self: Box<Self>) -> Result<Output> {
        let stdout = read_bounded(&mut self.channel, MAX_REMOTE_STDOUT).map_err(|e| {
            Error::failed(format!(
                "ssh {}: reading output of {}: {e}",
                self.who,
                self.cmd.program()
            ))
        })?;
        let stderr = read_stderr(&mut self.channel);
        let status = remote_status(&mut self.channel)?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl Runner for SshHost {
    fn output(&self, cmd: &Cmd) -> Result<Output> {
        self.start(cmd)?.finish()
    }

    /// The command runs on a channel of its own; libssh2 keeps what arrives for it while
    /// other channels of the session are read.
    fn start(&self, cmd: &Cmd) -> Result<Box<dyn Started>> {
        Ok(Box::new(RemoteCommand {
            channel: self.exec(cmd)?,
            cmd: cmd.clone(),
            who: self.target.describe(),
        }))
    }

    fn source(&self, cmd: &Cmd) -> Result<Box<dyn Source>> {
        let channel = self.exec(cmd)?;
        Ok(Box::new(RemoteSource {
            session: self.session.clone(),
            channel,
            cmd: cmd.clone(),
            who: self.target.describe(),
            stderr: Vec::new(),
            reads: 0,
        }))
    }

    fn sink(&self, cmd: &Cmd) -> Result<Box<dyn Sink>> {
        let channel = self.exec(cmd)?;
        Ok(Box::new(RemoteSink {
            channel,
            cmd: cmd.clone(),
            who: self.target.describe(),
        }))
    }

    fn describe(&self) -> String {
        self.target.describe()
    }
}

struct RemoteSource {
    session: Session,
    channel: ssh2::Channel,
    cmd: Cmd,
    who: String,
    stderr: Vec<u8>,
    reads: u32,
}

impl RemoteSource {
    /// Drain whatever stderr has arrived without waiting for more. The stream and stderr
    /// share one SSH flow-control window, so stderr left unread could stall the stream.
    fn drain_stderr_now(&mut self) {
        self.session.set_blocking(false);
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.channel.stderr().read(&mut buf) {
            if n == 0 {
                break;
            }
            // Kept up to a bound; the rest is read (the window needs it) and dropped.
            let room = (MAX_REMOTE_STDERR as usize).saturating_sub(self.stderr.len());
            self.stderr.extend_from_slice(&buf[..n.min(room)]);
        }
        self.session.set_blocking(true);
    }
}

impl Source for RemoteSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads = self.reads.wrapping_add(1);
        if self.reads % 64 == 0 {
            self.drain_stderr_now();
        }
        self.channel.read(buf)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let rest = read_stderr(&mut self.channel);
        let status = remote_status(&mut self.channel)?;
        let mut said = String::from_utf8_lossy(&self.stderr).trim().to_string();
        if said.len() < MAX_REMOTE_STDERR as usize && !rest.is_empty() {
            said = format!("{said} {rest}").trim().to_string();
        }
        if status.success() {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "`{}` on {} failed ({}): {said}",
                self.cmd.display(),
                self.who,
                crate::exec::describe_status(status)
            )))
        }
    }

    fn abort(mut self: Box<Self>) {
        // Closing the channel makes sshd hang up on the sender, which then dies of SIGPIPE.
        let _ = self.channel.close();
    }
}

struct RemoteSink {
    channel: ssh2::Channel,
    cmd: Cmd,
    who: String,
}

impl Sink for RemoteSink {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.channel.write_all(buf)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let _ = self.channel.send_eof();
        let said = read_stderr(&mut self.channel);
        let status = remote_status(&mut self.channel)?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "`{}` on {} failed ({}): {said}",
                self.cmd.display(),
                self.who,
                crate::exec::describe_status(status)
            )))
        }
    }

    fn abort(mut self: Box<Self>) {
        let _ = self.channel.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_output_beyond_the_limit_is_refused_not_buffered() {
        let flood = std::io::repeat(b'x').take(1_000);
        let err = read_bounded(flood, 999).unwrap_err();
        assert!(err.to_string().contains("more than 999 bytes"), "{err}");
        assert_eq!(read_bounded(&b"ok\n"[..], 999).unwrap(), "ok\n");
    }

    #[test]
    fn a_changed_host_key_is_never_answered_with_a_keyscan_into_known_hosts() {
        let said = changed_host_key_message(
            "[10.213.1.1]:2222",
            "Ed255219",
            "SHA256:abc",
            std::path::Path::new("/root/.ssh/known_hosts"),
        );
        assert!(
            said.contains("CHANGED") && said.contains("SHA256:abc"),
            "{said}"
        );
        assert!(!said.contains("ssh-keyscan"), "{said}");
        assert!(said.contains("ssh-keygen -R '[10.213.1.1]:2222'"), "{said}");
    }

    #[test]
    fn fingerprints_are_printed_like_openssh_does() {
        // OpenSSH prints SHA256 fingerprints as unpadded base64.
        assert_eq!(
            base64_unpadded(b"any carnal pleasure."),
            "YW55IGNhcm5hbCBwbGVhc3VyZS4"
        );
        assert_eq!(base64_unpadded(b"ab"), "YWI");
        assert_eq!(base64_unpadded(b""), "");
    }

    #[test]
    fn known_hosts_names_non_standard_ports_in_brackets() {
        let mut t = SshTarget {
            host: "10.0.0.1".into(),
            port: 22,
            user: "zfssync".into(),
            key: "k".into(),
            known_hosts: "kh".into(),
            connect_timeout: Duration::from_secs(1),
        };
        assert_eq!(t.known_hosts_name(), "10.0.0.1");
        t.port = 2222;
        assert_eq!(t.known_hosts_name(), "[10.0.0.1]:2222");
    }
}

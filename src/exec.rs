//! Running programs on this machine. Every child's stderr is drained on its own thread, so
//! a chatty child can never block on a full pipe, and its words end up in our error message.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// A program and its arguments, built only from validated parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            argv: vec![program.into()],
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn program(&self) -> &str {
        &self.argv[0]
    }

    pub fn display(&self) -> String {
        crate::shell::join(&self.argv)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]);
        command
    }
}

/// pgzfs on another node (`pgzfs_bin`), for `node` of the same configuration: the
/// beginning of every pgzfs command sent over SSH, in the one form `pgzfs serve` checks.
pub fn remote_pgzfs(pgzfs_bin: &std::path::Path, config: &std::path::Path, node: &str) -> Cmd {
    Cmd::new(pgzfs_bin.display().to_string())
        .arg("--config")
        .arg(config.display().to_string())
        .arg("--node")
        .arg(node)
}

/// Who a local child runs as. PostgreSQL refuses to run as root, so pg_ctl runs as the
/// configured OS user.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl RunAs {
    /// `None` when we already are that user; an error when we would need root and are not.
    pub fn user(name: &str) -> Result<Option<RunAs>> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| Error::failed(format!("cannot look up OS user {name}: {e}")))?
            .ok_or_else(|| {
                Error::usage(format!("OS user {name:?} does not exist on this machine"))
            })?;
        let me = nix::unistd::geteuid();
        if me == user.uid {
            return Ok(None);
        }
        if !me.is_root() {
            return Err(Error::usage(format!(
                "pgzfs must run as root or as {name} to control PostgreSQL"
            )));
        }
        Ok(Some(RunAs {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir.display().to_string(),
        }))
    }

    fn apply(&self, command: &mut Command) {
        // std drops root's supplementary groups itself when it changes the uid, so the
        // server runs with the user's primary group only. The environment is a clean one:
        // nothing of root's (PGOPTIONS, PGPASSWORD, LD_PRELOAD, ...) reaches the server.
        clean_env(command, Some(&self.home));
        command.uid(self.uid).gid(self.gid).current_dir("/");
    }
}

/// The PATH children get: the system's directories, FreeBSD ports' and Debian's.
pub const CLEAN_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin";

/// Names kept from pgzfs's own environment: the locale and time zone only.
fn kept_from_environment(name: &str) -> bool {
    name == "LANG" || name == "TZ" || name.starts_with("LC_")
}

/// Give `command` a clean environment: a fixed PATH, HOME (when given), the locale and
/// the time zone, and nothing else of what pgzfs was started with.
pub fn clean_env(command: &mut Command, home: Option<&str>) {
    command.env_clear().env("PATH", CLEAN_PATH);
    for (name, value) in std::env::vars_os() {
        if name.to_str().is_some_and(kept_from_environment) {
            command.env(name, value);
        }
    }
    if let Some(home) = home {
        command.env("HOME", home);
    }
}

/// Collects a child's stderr on a thread of its own.
pub struct StderrDrain(Option<JoinHandle<String>>);

impl StderrDrain {
    pub fn spawn(mut stderr: impl Read + Send + 'static) -> Self {
        StderrDrain(Some(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).trim().to_string()
        })))
    }

    pub fn take(&mut self) -> String {
        self.0
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// What a finished program said.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Run to completion and capture everything, whatever the exit status.
pub fn output(cmd: &Cmd, run_as: Option<&RunAs>) -> Result<Output> {
    output_in(cmd, run_as, None)
}

/// [`output`] in the working directory `dir` (pg_upgrade writes its scripts and logs
/// into the directory it runs in).
pub fn output_in(
    cmd: &Cmd,
    run_as: Option<&RunAs>,
    dir: Option<&std::path::Path>,
) -> Result<Output> {
    let mut command = cmd.command();
    if let Some(run_as) = run_as {
        run_as.apply(&mut command);
    }
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!("run: {}", cmd.display());
    let mut child = command
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {}: {e}", cmd.program())))?;
    let mut drain = StderrDrain::spawn(child.stderr.take().expect("piped stderr"));
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut stdout)
        .map_err(|e| Error::failed(format!("reading from {}: {e}", cmd.program())))?;
    let status = child
        .wait()
        .map_err(|e| Error::failed(format!("waiting for {}: {e}", cmd.program())))?;
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: drain.take(),
    })
}

/// Run to completion; a non-zero exit becomes an error carrying the child's stderr.
pub fn run(cmd: &Cmd, run_as: Option<&RunAs>) -> Result<String> {
    let out = output(cmd, run_as)?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(Error::failed(format!(
            "`{}` failed ({}): {}",
            cmd.display(),
            describe_status(out.status),
            out.stderr
        )))
    }
}

/// A running local program whose stdout we read as a stream.
pub struct LocalSource {
    cmd: Cmd,
    child: Child,
    stdout: ChildStdout,
    stderr: StderrDrain,
}

/// A running local program whose stdin we feed as a stream.
pub struct LocalSink {
    cmd: Cmd,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: StderrDrain,
}

pub fn spawn_source(cmd: &Cmd) -> Result<LocalSource> {
    let mut command = cmd.command();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::debug!("stream from: {}", cmd.display());
    let mut child = command
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {}: {e}", cmd.program())))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = StderrDrain::spawn(child.stderr.take().expect("piped stderr"));
    Ok(LocalSource {
        cmd: cmd.clone(),
        child,
        stdout,
        stderr,
    })
}

pub fn spawn_sink(cmd: &Cmd) -> Result<LocalSink> {
    let mut command = cmd.command();
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    tracing::debug!("stream into: {}", cmd.display());
    let mut child = command
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {}: {e}", cmd.program())))?;
    let stdin = child.stdin.take();
    let stderr = StderrDrain::spawn(child.stderr.take().expect("piped stderr"));
    Ok(LocalSink {
        cmd: cmd.clone(),
        child,
        stdin,
        stderr,
    })
}

fn finish(cmd: &Cmd, child: &mut Child, stderr: &mut StderrDrain) -> Result<()> {
    let status = child
        .wait()
        .map_err(|e| Error::failed(format!("waiting for {}: {e}", cmd.program())))?;
    let said = stderr.take();
    if status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "`{}` failed ({}): {said}",
            cmd.display(),
            describe_status(status)
        )))
    }
}

impl crate::transfer::Source for LocalSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        finish(&self.cmd, &mut self.child, &mut self.stderr)
    }
    fn abort(mut self: Box<Self>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl crate::transfer::Sink for LocalSink {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(buf),
            None => Err(std::io::Error::other("stdin already closed")),
        }
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        drop(self.stdin.take()); // EOF tells zfs recv the stream is complete
        finish(&self.cmd, &mut self.child, &mut self.stderr)
    }
    fn abort(mut self: Box<Self>) {
        // Killing zfs recv before it saw the end of the stream makes ZFS discard the partial
        // receive: the dataset stays at its last good snapshot.
        let _ = self.child.kill();
        drop(self.stdin.take());
        let _ = self.child.wait();
        let said = self.stderr.take();
        if !said.is_empty() {
            tracing::debug!("{} said while being aborted: {said}", self.cmd.program());
        }
    }
}

/// A command begun by [`Runner::start`], whose output is collected when it is wanted.
pub trait Started: Send {
    /// Wait for it to end and return what it said, as [`Runner::output`] would have.
    fn finish(self: Box<Self>) -> Result<Output>;
}

/// A command that ran to completion when it was started (the default [`Runner::start`]).
struct AlreadyFinished(Result<Output>);

impl Started for AlreadyFinished {
    fn finish(self: Box<Self>) -> Result<Output> {
        self.0
    }
}

/// Where a command runs: on this machine, or on another node over SSH. zfs(8) goes through
/// this, so the same ZFS code drives both ends of a transfer.
pub trait Runner {
    /// Run to completion and capture what it said, whatever the exit status.
    fn output(&self, cmd: &Cmd) -> Result<Output>;
    /// Begin `cmd` and collect its output later: over SSH the other end runs it while
    /// this side goes on with other commands (each remote command costs a session and a
    /// login shell there, so questions that do not wait for each other overlap). Here it
    /// runs to completion at once, which is what a local command costs anyway.
    fn start(&self, cmd: &Cmd) -> Result<Box<dyn Started>> {
        Ok(Box::new(AlreadyFinished(self.output(cmd))))
    }
    /// Start a program whose stdout is a byte stream.
    fn source(&self, cmd: &Cmd) -> Result<Box<dyn crate::transfer::Source>>;
    /// Start a program that consumes a byte stream on stdin.
    fn sink(&self, cmd: &Cmd) -> Result<Box<dyn crate::transfer::Sink>>;
    /// "local" or "root@db1:22", for messages.
    fn describe(&self) -> String;

    /// Run to completion; a non-zero exit becomes an error carrying stderr.
    fn run(&self, cmd: &Cmd) -> Result<String> {
        let out = self.output(cmd)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(Error::failed(format!(
                "`{}` on {} failed ({}): {}",
                cmd.display(),
                self.describe(),
                describe_status(out.status),
                out.stderr
            )))
        }
    }
}

/// A borrowed runner runs the same commands: a wrapper such as compress::Compressing can
/// then borrow a session that other code keeps using.
impl<R: Runner + ?Sized> Runner for &R {
    fn output(&self, cmd: &Cmd) -> Result<Output> {
        (**self).output(cmd)
    }
    fn start(&self, cmd: &Cmd) -> Result<Box<dyn Started>> {
        (**self).start(cmd)
    }
    fn source(&self, cmd: &Cmd) -> Result<Box<dyn crate::transfer::Source>> {
        (**self).source(cmd)
    }
    fn sink(&self, cmd: &Cmd) -> Result<Box<dyn crate::transfer::Sink>> {
        (**self).sink(cmd)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// This machine.
pub struct Local;

impl Runner for Local {
    fn output(&self, cmd: &Cmd) -> Result<Output> {
        output(cmd, None)
    }
    fn source(&self, cmd: &Cmd) -> Result<Box<dyn crate::transfer::Source>> {
        Ok(Box::new(spawn_source(cmd)?))
    }
    fn sink(&self, cmd: &Cmd) -> Result<Box<dyn crate::transfer::Sink>> {
        Ok(Box::new(spawn_sink(cmd)?))
    }
    fn describe(&self) -> String {
        "this node".to_string()
    }
}

/// zfs and zpool from the system's own directories first: the PATH sshd gives a forced
/// command is sane, but a fixed place is one assumption fewer.
pub fn find_program(name: &str) -> String {
    ["/sbin", "/usr/sbin", "/usr/local/sbin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| std::path::Path::new(path).is_file())
        .unwrap_or_else(|| name.to_string())
}

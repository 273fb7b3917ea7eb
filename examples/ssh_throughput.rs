//! Data-path benchmark: run one command on a node over pgzfs's ssh2 channel and
//! discard its stdout, reporting bytes, seconds and MiB/s as one JSON line.
//!
//! bench/run feeds it the same `zfs send` it pipes through OpenSSH, so the two
//! numbers compare transports and nothing else.
//!
//!   ssh_throughput HOST PORT USER KEY KNOWN_HOSTS [--read-size BYTES] -- CMD [ARGS...]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgzfs::exec::{Cmd, Runner};
use pgzfs::ssh::{SshHost, SshTarget};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .unwrap_or_else(|| usage());
    let (head, cmd) = (&args[..split], &args[split + 1..]);
    if head.len() < 5 || cmd.is_empty() {
        usage();
    }
    // 1 MiB is what transfer::copy reads with; other sizes are for tuning runs.
    let mut read_size = 1usize << 20;
    let mut rest = head[5..].iter();
    while let Some(opt) = rest.next() {
        match opt.as_str() {
            "--read-size" => {
                read_size = rest
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let target = SshTarget {
        host: head[0].clone(),
        port: head[1].parse().unwrap_or_else(|_| usage()),
        user: head[2].clone(),
        key: PathBuf::from(&head[3]),
        known_hosts: PathBuf::from(&head[4]),
        connect_timeout: Duration::from_secs(10),
    };
    let host = SshHost::connect(&target).unwrap_or_else(|e| fail(&e.to_string()));
    let cmd = Cmd::new(cmd[0].clone()).args(cmd[1..].iter().cloned());
    // The clock starts before the channel opens, as `time ssh ... | cat >/dev/null`
    // would count it for OpenSSH (minus the login, which both sides do once).
    let started = Instant::now();
    let mut source = host.source(&cmd).unwrap_or_else(|e| fail(&e.to_string()));
    let mut buf = vec![0u8; read_size];
    let mut bytes = 0u64;
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => fail(&format!("read: {e}")),
        }
    }
    if let Err(e) = source.finish() {
        fail(&e.to_string());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\":{bytes},\"seconds\":{secs:.3},\"mib_per_second\":{:.1}}}",
        bytes as f64 / secs / (1 << 20) as f64
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: ssh_throughput HOST PORT USER KEY KNOWN_HOSTS [--read-size BYTES] -- CMD [ARGS...]"
    );
    std::process::exit(2);
}

fn fail(msg: &str) -> ! {
    eprintln!("ssh_throughput: {msg}");
    std::process::exit(1);
}

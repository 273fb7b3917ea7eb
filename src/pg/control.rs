//! What a data directory says about itself, read straight from its files so that it works
//! while the server is down and without pg_controldata (which not every install ships).

use std::path::Path;

use crate::error::{Error, Result};
use crate::safe_dir::Dir;

/// `DBState` from pg_control. The numbering has been stable since PostgreSQL 9.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    Startup,
    ShutDown,
    ShutDownInRecovery,
    ShuttingDown,
    InCrashRecovery,
    InArchiveRecovery,
    InProduction,
    Unknown(u32),
}

impl ClusterState {
    fn from_raw(raw: u32) -> ClusterState {
        match raw {
            0 => ClusterState::Startup,
            1 => ClusterState::ShutDown,
            2 => ClusterState::ShutDownInRecovery,
            3 => ClusterState::ShuttingDown,
            4 => ClusterState::InCrashRecovery,
            5 => ClusterState::InArchiveRecovery,
            6 => ClusterState::InProduction,
            other => ClusterState::Unknown(other),
        }
    }

    /// Whether this data directory was last used as a primary (read-write).
    pub fn was_primary(self) -> bool {
        matches!(
            self,
            ClusterState::InProduction | ClusterState::ShutDown | ClusterState::ShuttingDown
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlData {
    pub system_identifier: u64,
    pub state: ClusterState,
    /// Where the latest checkpoint record is; after a clean shutdown, the shutdown
    /// checkpoint (the last thing this server wrote).
    pub checkpoint_lsn: Lsn,
    /// The timeline of that checkpoint.
    pub timeline: u32,
}

/// A WAL position, printed as PostgreSQL does (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(text: &str) -> Result<Lsn, String> {
        let (high, low) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not an LSN"))?;
        let high = u64::from_str_radix(high, 16).map_err(|_| format!("{text:?} is not an LSN"))?;
        let low = u64::from_str_radix(low, 16).map_err(|_| format!("{text:?} is not an LSN"))?;
        Ok(Lsn(high << 32 | low))
    }
}

/// Parse the head of `global/pg_control`: the system identifier (u64), the control file
/// version (u32), the catalog version (u32) and the state (enum, u32), in the machine's
/// byte order; those leading fields have kept their place in every release since 9.0.
/// Then the checkpoint location (u64 at 32) and the checkpoint's copy, whose redo (u64)
/// is followed by its timeline (u32); PostgreSQL 10 (control version 1002) still had a
/// "previous checkpoint" field in between, which 11 removed.
pub fn parse_control(bytes: &[u8]) -> Result<ControlData> {
    if bytes.len() < 20 {
        return Err(Error::failed("pg_control is truncated"));
    }
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if !(900..=2000).contains(&version) {
        return Err(Error::failed(format!(
            "pg_control has unexpected version {version} (wrong byte order or not a control file)"
        )));
    }
    if bytes.len() < 64 {
        return Err(Error::failed("pg_control is truncated"));
    }
    let copy_at = if version < 1100 { 48 } else { 40 };
    Ok(ControlData {
        system_identifier: u64_at(0),
        state: ClusterState::from_raw(u32_at(16)),
        checkpoint_lsn: Lsn(u64_at(32)),
        timeline: u32_at(copy_at + 8),
    })
}

/// The data directory's handle, or None when there is no directory at all.
fn open_data_dir(data_dir: &Path) -> Result<Option<Dir>> {
    match std::fs::symlink_metadata(data_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => Dir::open(data_dir).map(Some),
    }
}

/// None when the directory holds no cluster. Read without following links: `global` and
/// `pg_control` must be the directory's own.
pub fn read_control(data_dir: &Path) -> Result<Option<ControlData>> {
    let path = data_dir.join("global/pg_control");
    let Some(dir) = open_data_dir(data_dir)? else {
        return Ok(None);
    };
    let Some(global) = dir.subdir("global")? else {
        return Ok(None);
    };
    match global.read_trusted("pg_control")? {
        Some(bytes) => parse_control(&bytes)
            .map(Some)
            .map_err(|e| e.context(path.display())),
        None => Ok(None),
    }
}

/// The major version in PG_VERSION ("15", or "9.6" for old clusters).
pub fn read_major(data_dir: &Path) -> Result<Option<u32>> {
    let path = data_dir.join("PG_VERSION");
    let Some(dir) = open_data_dir(data_dir)? else {
        return Ok(None);
    };
    match dir.read_trusted("PG_VERSION")? {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            parse_major(text.trim()).map(Some).ok_or_else(|| {
                Error::failed(format!("{}: odd version {:?}", path.display(), text.trim()))
            })
        }
        None => Ok(None),
    }
}

/// "15" → 15, "9.6" → 9, "15.18 (Debian 15.18-0+deb12u1)" → 15.
pub fn parse_major(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The postmaster's PID when postmaster.pid names a live PostgreSQL server of *this* data
/// directory. A received copy of the primary's files carries the primary's postmaster.pid,
/// whose PID may belong to any process here; believing it would make `pg_ctl stop` signal
/// a stranger. So the PID must be alive, be a postgres process, and the file must name
/// this directory.
pub fn running_postmaster(data_dir: &Path) -> Option<i32> {
    // Not through a link: a planted postmaster.pid must not make root read elsewhere.
    let dir = Dir::open(data_dir).ok()?;
    let bytes = dir.read_trusted("postmaster.pid").ok()??;
    let text = String::from_utf8_lossy(&bytes);
    let (pid, dir) = parse_pid_file(&text)?;
    if !same_dir(Path::new(&dir), data_dir) {
        return None;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    is_postgres_process(pid).then_some(pid)
}

/// (PID, data directory) from the first two lines of postmaster.pid.
pub fn parse_pid_file(text: &str) -> Option<(i32, String)> {
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let dir = lines.next()?.trim().to_string();
    Some((pid, dir))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn is_postgres_process(pid: i32) -> bool {
    // Linux has /proc; FreeBSD's ps(1) answers the same question without procfs.
    let name = match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(name) => name,
        Err(_) => std::process::Command::new("ps")
            .args(["-o", "comm=", "-p", &pid.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default(),
    };
    matches!(name.trim(), "postgres" | "postmaster")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_of(version: u32, sysid: u64, state: u32, checkpoint: u64, timeline: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&sysid.to_ne_bytes());
        bytes.extend_from_slice(&version.to_ne_bytes());
        bytes.extend_from_slice(&202209061u32.to_ne_bytes());
        bytes.extend_from_slice(&state.to_ne_bytes());
        bytes.resize(32, 0);
        bytes.extend_from_slice(&checkpoint.to_ne_bytes());
        if version < 1100 {
            bytes.extend_from_slice(&0u64.to_ne_bytes()); // prevCheckPoint
        }
        bytes.extend_from_slice(&(checkpoint - 40).to_ne_bytes()); // redo
        bytes.extend_from_slice(&timeline.to_ne_bytes());
        bytes.resize(8192, 0);
        bytes
    }

    fn control(sysid: u64, state: u32) -> Vec<u8> {
        control_of(1300, sysid, state, 0x3000_0100, 1)
    }

    #[test]
    fn the_shutdown_checkpoint_and_timeline_are_read_for_every_layout() {
        for version in [1002, 1100, 1201, 1300, 1700] {
            let c = parse_control(&control_of(version, 9, 1, 0x1_0300_0028, 3)).unwrap();
            assert_eq!(
                c.checkpoint_lsn,
                Lsn(0x1_0300_0028),
                "control version {version}"
            );
            assert_eq!(c.timeline, 3, "control version {version}");
        }
    }

    #[test]
    fn lsns_print_and_parse_like_postgresql() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("0/3000028".parse::<Lsn>().unwrap(), Lsn(0x300_0028));
        assert!("nonsense".parse::<Lsn>().is_err());
    }

    #[test]
    fn a_running_primary_and_a_standby_are_told_apart() {
        let primary = parse_control(&control(7_300_000_000_000_000_001, 6)).unwrap();
        assert_eq!(primary.system_identifier, 7_300_000_000_000_000_001);
        assert!(primary.state.was_primary());
        let standby = parse_control(&control(1, 5)).unwrap();
        assert_eq!(standby.state, ClusterState::InArchiveRecovery);
        assert!(!standby.state.was_primary());
        assert!(
            !parse_control(&control(1, 2)).unwrap().state.was_primary(),
            "shut down in recovery = standby"
        );
    }

    #[test]
    fn garbage_is_not_mistaken_for_a_control_file() {
        assert!(parse_control(&[0u8; 8]).is_err());
        assert!(parse_control(&[0xffu8; 64]).is_err());
    }

    #[test]
    fn a_copied_pid_file_of_another_directory_does_not_count_as_running() {
        let dir = std::env::temp_dir().join(format!("pgzfs-pid-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Our own PID is certainly alive, but it is neither postgres nor of this directory.
        let me = std::process::id();
        std::fs::write(
            dir.join("postmaster.pid"),
            format!("{me}\n/var/db/postgres/data15\n"),
        )
        .unwrap();
        assert_eq!(running_postmaster(&dir), None);
        std::fs::write(
            dir.join("postmaster.pid"),
            format!("{me}\n{}\n", dir.display()),
        )
        .unwrap();
        assert_eq!(
            running_postmaster(&dir),
            None,
            "alive, right directory, but not postgres"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_linked_pg_version_or_global_dir_is_refused_not_read_through() {
        let root = std::env::temp_dir().join(format!("pgzfs-control-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("data");
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(elsewhere.join("pg_control"), control(1, 6)).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("PG_VERSION"), dir.join("PG_VERSION")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("global")).unwrap();
        let err = read_major(&dir).unwrap_err();
        assert!(err.to_string().contains("PG_VERSION"), "{err}");
        let err = read_control(&dir).unwrap_err();
        assert!(err.to_string().contains("global"), "{err}");
        // The real thing still reads.
        std::fs::remove_file(dir.join("PG_VERSION")).unwrap();
        std::fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(read_major(&dir).unwrap(), Some(15));
        assert_eq!(read_major(&root.join("missing")).unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn major_versions_parse_from_every_format() {
        assert_eq!(parse_major("15"), Some(15));
        assert_eq!(parse_major("9.6"), Some(9));
        assert_eq!(parse_major("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
        assert_eq!(parse_major("x"), None);
    }
}

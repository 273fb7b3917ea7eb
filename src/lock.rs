//! The local lock file: one pgzfs operation per node at a time. flock(2) is released by
//! the kernel when the process dies, so a killed run never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub struct LocalLock {
    file: Option<Flock<File>>,
    path: PathBuf,
}

/// Lock files this process holds. A command that runs another in-process (carp-event
/// running promote or rejoin) must not wait for its own lock: flock(2) would make it.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

impl Drop for LocalLock {
    fn drop(&mut self) {
        if self.file.is_some() {
            HELD.lock()
                .expect("lock registry")
                .retain(|p| p != &self.path);
        }
    }
}

impl LocalLock {
    /// Wait up to `timeout` for the lock, then refuse (exit 3).
    pub fn acquire(path: &Path, timeout: Duration, what: &str) -> Result<LocalLock> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        if HELD
            .lock()
            .expect("lock registry")
            .contains(&path.to_path_buf())
        {
            // Already ours, further up this process: the outer guard keeps it.
            return Ok(LocalLock {
                file: None,
                path: path.to_path_buf(),
            });
        }
        let started = Instant::now();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::failed(format!("cannot open lock file {}: {e}", path.display())))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut locked) => {
                    let _ = locked.set_len(0);
                    let _ = writeln!(locked, "{} {what}", std::process::id());
                    HELD.lock().expect("lock registry").push(path.to_path_buf());
                    return Ok(LocalLock {
                        file: Some(locked),
                        path: path.to_path_buf(),
                    });
                }
                Err((returned, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    if started.elapsed() >= timeout {
                        let holder = std::fs::read_to_string(path).unwrap_or_default();
                        return Err(Error::refused(format!(
                            "another pgzfs run holds {} ({}); waited {:?}",
                            path.display(),
                            holder.trim(),
                            timeout
                        )));
                    }
                    file = returned;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err((_, errno)) => {
                    return Err(Error::failed(format!(
                        "cannot lock {}: {errno}",
                        path.display()
                    )))
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_run_inside_another_shares_its_lock() {
        let path = std::env::temp_dir().join(format!("pgzfs-lock-nested-{}", std::process::id()));
        let outer = LocalLock::acquire(&path, Duration::ZERO, "carp-event").unwrap();
        let inner = LocalLock::acquire(&path, Duration::ZERO, "promote").expect("re-entrant");
        drop(inner);
        // Another process (here: a separate open of the file) still cannot take it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(
            Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
            "the outer lock is still held"
        );
        drop(outer);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_second_run_on_the_same_node_is_refused_after_the_timeout() {
        let path = std::env::temp_dir().join(format!("pgzfs-lock-test-{}", std::process::id()));
        let first = LocalLock::acquire(&path, Duration::ZERO, "reset-secondary").unwrap();
        // A second process is simulated by locking a separate open of the file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err());
        drop(first);
        let first = LocalLock::acquire(&path, Duration::ZERO, "reset-secondary").unwrap();
        HELD.lock().unwrap().clear(); // pretend the holder is another process
        let second = LocalLock::acquire(&path, Duration::from_millis(300), "reset-secondary");
        let err = second.err().expect("the second run must not get the lock");
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "names the holder: {err}"
        );
        drop(first);
        assert!(
            LocalLock::acquire(&path, Duration::ZERO, "reset-secondary").is_ok(),
            "released on drop"
        );
        let _ = std::fs::remove_file(path);
    }
}

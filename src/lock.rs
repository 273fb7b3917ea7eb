//! The local lock file: one pgzfs operation per node at a time. flock(2) is released by
//! the kernel when the process dies, so a killed run never leaves a stale lock behind.

use std::fs::File;
#[cfg(test)]
use std::fs::OpenOptions;
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
        // Never through a link: the lock file's directory may be one others can write
        // (/tmp), and root would otherwise create or truncate whatever a link names.
        let (dir, name) = crate::safe_dir::parent_of(path, Some(0o755))?;
        let mut file = dir
            .open_rw(&name, 0o600)
            .map_err(|e| e.context("the lock file"))?;
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
                        let holder = read_holder(&returned);
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

/// "PID what" as the holder wrote it, read from our own open file (not the path again).
fn read_holder(file: &File) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 256];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
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

    #[test]
    fn a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("pgzfs-lock-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let victim = root.join("shadow");
        std::fs::write(&victim, "root:x:0\n").unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        let path = root.join("pgzfs-db1.lock");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = LocalLock::acquire(&path, Duration::ZERO, "daemon")
            .err()
            .expect("a link is not a lock file");
        assert!(err.to_string().contains("pgzfs-db1.lock"), "{err}");
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:x:0\n");
        assert_eq!((after.uid(), after.mode()), (before.uid(), before.mode()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_new_lock_file_is_mode_0600() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("pgzfs-lock-mode-{}", std::process::id()));
        let path = dir.join("sub/pgzfs.lock");
        let lock = LocalLock::acquire(&path, Duration::ZERO, "test").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

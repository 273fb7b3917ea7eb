//! Logging to stderr and to the log file support reads (`log_file`, default
//! /var/log/pgzfs.log). A log file we cannot open is reported but never fatal: refusing to
//! re-seed because /var/log is read-only would help nobody.
//!
//! The file sits behind a global lock so that the daemon can reopen it on SIGHUP
//! (newsyslog renames the file and expects the next line in a new one) and can write a
//! panic into it (under daemon(8) stderr goes to /dev/null).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::fmt::writer::{MakeWriter, MakeWriterExt};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// The open log file and the path it was opened from; None until `init` opens it, or
/// when it could not be opened.
static LOG_FILE: Mutex<Option<OpenLog>> = Mutex::new(None);

struct OpenLog {
    path: PathBuf,
    file: File,
}

pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

/// Never through a link: a log in a directory another user can write must not make root
/// append to (or create) whatever that user points it at.
fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A poisoned lock only means a thread panicked mid-line; the file is still good.
fn log_file() -> MutexGuard<'static, Option<OpenLog>> {
    LOG_FILE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands tracing the current log file, whichever that is after the latest reopen.
struct FileWriter;

struct FileGuard(MutexGuard<'static, Option<OpenLog>>);

impl Write for FileGuard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.as_mut() {
            Some(log) => log.file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.as_mut() {
            Some(log) => log.file.flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = FileGuard;

    fn make_writer(&'a self) -> FileGuard {
        FileGuard(log_file())
    }
}

pub fn init(log_file_path: &Path, node: &str, verbose: bool) {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return;
    }
    let level = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let stderr = std::io::stderr.with_max_level(level);
    let result = match open(log_file_path) {
        Ok(file) => {
            *log_file() = Some(OpenLog {
                path: log_file_path.to_path_buf(),
                file,
            });
            // The file always gets debug detail: it is what support reads afterwards.
            let file = FileWriter.with_max_level(tracing::Level::DEBUG);
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_target(false)
                .with_ansi(false)
                .with_writer(stderr.and(file))
                .try_init()
        }
        Err(err) => {
            eprintln!(
                "pgzfs: cannot open log file {}: {err}; logging to stderr only",
                log_file_path.display()
            );
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_target(false)
                .with_writer(stderr)
                .try_init()
        }
    };
    if result.is_ok() {
        tracing::debug!(
            node,
            pid = std::process::id(),
            "pgzfs {} started: {:?}",
            env!("CARGO_PKG_VERSION"),
            std::env::args().collect::<Vec<_>>()
        );
    }
}

/// Reopen the log file by name, at `path` (a reloaded config may name another one) or
/// where it was. Until the new file is open the old one keeps receiving lines, and if
/// it cannot be opened the old one stays in use. Without a file from `init` there is no
/// file layer to hand a new one to: the caller is told.
pub fn reopen(path: Option<&Path>) -> std::io::Result<PathBuf> {
    let mut current = log_file();
    let Some(log) = current.as_mut() else {
        return Err(std::io::Error::other(
            "no log file was opened at start-up (logging goes to stderr only)",
        ));
    };
    let path = path.map_or_else(|| log.path.clone(), Path::to_path_buf);
    let file = open(&path)?;
    *log = OpenLog {
        path: path.clone(),
        file,
    };
    Ok(path)
}

/// Write text straight into the log file, bypassing tracing: for a panic, which may
/// happen while tracing itself is in a bad state. Never blocks on the lock (the
/// panicking thread may hold it) and never fails.
pub fn write_raw(text: &str) {
    if let Ok(mut current) = LOG_FILE.try_lock() {
        if let Some(log) = current.as_mut() {
            let _ = log.file.write_all(text.as_bytes());
            let _ = log.file.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_rotation_lines_go_to_the_new_file_and_none_are_lost() {
        let dir = std::env::temp_dir().join(format!("pgzfs-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgzfs.log");
        *log_file() = Some(OpenLog {
            path: path.clone(),
            file: open(&path).unwrap(),
        });
        FileWriter.make_writer().write_all(b"before\n").unwrap();
        // What newsyslog does: rename, then signal.
        std::fs::rename(&path, dir.join("pgzfs.log.0")).unwrap();
        FileWriter.make_writer().write_all(b"in between\n").unwrap();
        assert_eq!(reopen(None).unwrap(), path);
        FileWriter.make_writer().write_all(b"after\n").unwrap();
        write_raw("panicked\n");
        let rotated = std::fs::read_to_string(dir.join("pgzfs.log.0")).unwrap();
        let fresh = std::fs::read_to_string(&path).unwrap();
        *log_file() = None;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rotated, "before\nin between\n");
        assert_eq!(fresh, "after\npanicked\n");
    }

    #[test]
    fn a_log_file_planted_as_a_link_is_not_opened() {
        let dir = std::env::temp_dir().join(format!("pgzfs-log-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("cron-job");
        let path = dir.join("pgzfs.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(open(&path).is_err(), "the link is not followed");
        assert!(!target.exists(), "nothing was created through it");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

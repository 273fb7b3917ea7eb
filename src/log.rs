//! Logging to stderr and to the log file support reads (`log_file`, default
//! /var/log/pgzfs.log). A log file we cannot open is reported but never fatal: refusing to
//! re-seed because /var/log is read-only would help nobody.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::MakeWriterExt;

static INITIALIZED: AtomicBool = AtomicBool::new(false);

pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

pub fn init(log_file: &Path, node: &str, verbose: bool) {
    if INITIALIZED.swap(true, Ordering::SeqCst) {
        return;
    }
    let level = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let stderr = std::io::stderr.with_max_level(level);
    let file = OpenOptions::new().create(true).append(true).open(log_file);
    let result = match file {
        Ok(file) => {
            // The file always gets debug detail: it is what support reads afterwards.
            let file = Mutex::new(file).with_max_level(tracing::Level::DEBUG);
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
                log_file.display()
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

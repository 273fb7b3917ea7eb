//! Transfer progress: a bar with bytes, rate and ETA on a terminal, plain log lines
//! otherwise (rc.d, cron and CI logs should not fill up with carriage returns).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    log_every: Option<Mutex<Instant>>,
}

impl Progress {
    /// `estimate` is the expected stream size in bytes, when known.
    pub fn new(estimate: Option<u64>) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = match estimate {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "{bar:40} {bytes}/~{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .expect("valid template"),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec}")
                        .expect("valid template"),
                ),
            };
            Progress {
                bar: Some(bar),
                log_every: None,
            }
        } else {
            Progress {
                bar: None,
                log_every: Some(Mutex::new(Instant::now())),
            }
        }
    }

    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            log_every: None,
        }
    }

    pub fn set(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        } else if let Some(last) = &self.log_every {
            let mut last = last.lock().expect("progress lock");
            if last.elapsed() >= Duration::from_secs(10) {
                *last = Instant::now();
                tracing::info!("received {} so far", human_bytes(bytes));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_like_an_operator_expects() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(580 * 1024 * 1024), "580.0 MiB");
    }
}

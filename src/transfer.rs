//! Moving a ZFS stream from a source (`zfs send`, here or over SSH) into a sink
//! (`zfs recv`). Bounded buffers keep memory flat whatever the stream size; an interrupt
//! (SIGINT/SIGTERM) or any error aborts the receiver, which makes ZFS throw away the
//! partial receive. A rate limit (`bwlimit`) paces every chunk through a token bucket.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::ratelimit::{RealClock, TokenBucket};

/// Where stream bytes come from.
pub trait Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Wait for the producer to exit and report its failure with its stderr.
    fn finish(self: Box<Self>) -> Result<()>;
    fn abort(self: Box<Self>);
}

/// Where stream bytes go.
pub trait Sink {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()>;
    /// Close the input and wait for the consumer to accept the stream.
    fn finish(self: Box<Self>) -> Result<()>;
    fn abort(self: Box<Self>);
}

/// Set by SIGINT/SIGTERM; long-running steps poll it.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Route SIGINT and SIGTERM into the flag, so that we can clean up instead of dying
    /// half-way through a receive.
    pub fn install() -> Result<Interrupt> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, Arc::clone(&flag))
                .map_err(|e| Error::failed(format!("cannot install signal handler: {e}")))?;
        }
        Ok(Interrupt(flag))
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::failed("interrupted by a signal"))
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Transferred {
    pub bytes: u64,
    pub elapsed: Duration,
}

/// 1 MiB: large enough for SSH and pipe throughput, small enough to keep RSS flat.
const CHUNK: usize = 1 << 20;

/// Move the whole stream from `source` to `sink`, at most `bwlimit` bytes per second
/// (None: as fast as both ends go).
pub fn copy(
    mut source: Box<dyn Source>,
    mut sink: Box<dyn Sink>,
    progress: &Progress,
    interrupt: &Interrupt,
    bwlimit: Option<NonZeroU64>,
) -> Result<Transferred> {
    let started = Instant::now();
    // Pacing the writes is enough: while we wait we do not read, so the sender blocks on
    // its full pipe or SSH window and slows to the same rate; nothing piles up here.
    let mut pace = TokenBucket::new(bwlimit, CHUNK, RealClock);
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let outcome: Result<()> = loop {
        if interrupt.is_set() {
            break Err(Error::failed("transfer interrupted by a signal"));
        }
        match source.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if pace.take(n, || interrupt.is_set()).is_err() {
                    break Err(Error::failed("transfer interrupted by a signal"));
                }
                if let Err(e) = sink.write_all(&buf[..n]) {
                    // The receiver quit early: its own words say why (finish collects them).
                    source.abort();
                    let said = match sink.finish() {
                        Err(why) => why.to_string(),
                        Ok(()) => e.to_string(),
                    };
                    return Err(Error::failed(format!(
                        "the receiver stopped accepting the stream: {said}"
                    )));
                }
                bytes += n as u64;
                progress.set(bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Error::failed(format!("reading the stream failed: {e}"))),
        }
    };
    match outcome {
        Ok(()) => {
            // The receiver is the judge: a ZFS stream carries checksums and an end record,
            // and zfs recv commits nothing unless the stream is complete and intact. So a
            // receiver that succeeded holds the whole snapshot, even if the sender then
            // reported trouble (with zfs-fuse the daemon writes the stream, and a killed
            // zfs(8) client may still have delivered all of it).
            let received = sink.finish();
            let sent = source.finish();
            match (received, sent) {
                (Ok(()), Ok(())) => Ok(Transferred { bytes, elapsed: started.elapsed() }),
                (Ok(()), Err(e)) => {
                    tracing::warn!("the sender reported an error after a complete, verified stream: {e}");
                    Ok(Transferred { bytes, elapsed: started.elapsed() })
                }
                (Err(e), Ok(())) => Err(e.context("the receiver failed")),
                (Err(received), Err(sent)) => Err(Error::failed(format!(
                    "the sender failed: {sent}; so the receiver discarded the partial stream: {received}"
                ))),
            }
        }
        Err(e) => {
            sink.abort();
            source.abort();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    struct Bytes(Vec<u8>, bool);
    impl Source for Bytes {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
        fn finish(self: Box<Self>) -> Result<()> {
            if self.1 {
                Ok(())
            } else {
                Err(Error::failed("zfs send: killed by signal 9"))
            }
        }
        fn abort(self: Box<Self>) {}
    }

    #[derive(Default, Clone)]
    struct Recorder(Rc<RefCell<(Vec<u8>, &'static str)>>, bool);
    impl Recorder {
        fn refusing() -> Recorder {
            Recorder(Rc::default(), true)
        }
    }
    impl Sink for Recorder {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0.borrow_mut().0.extend_from_slice(buf);
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<()> {
            if self.1 {
                self.0.borrow_mut().1 = "refused";
                return Err(Error::failed(
                    "cannot receive: invalid stream (checksum mismatch)",
                ));
            }
            self.0.borrow_mut().1 = "finished";
            Ok(())
        }
        fn abort(self: Box<Self>) {
            self.0.borrow_mut().1 = "aborted";
        }
    }

    #[test]
    fn a_complete_stream_is_handed_over_and_committed() {
        let sink = Recorder::default();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let done = copy(
            Box::new(Bytes(data.clone(), true)),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &Interrupt::default(),
            None,
        )
        .unwrap();
        assert_eq!(done.bytes, data.len() as u64);
        assert_eq!(sink.0.borrow().0, data);
        assert_eq!(sink.0.borrow().1, "finished");
    }

    #[test]
    fn a_failing_receiver_fails_the_transfer_and_names_the_sender() {
        let sink = Recorder::refusing();
        let err = copy(
            Box::new(Bytes(vec![1; 10], false)),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &Interrupt::default(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("sender failed"), "{err}");
        assert!(err.to_string().contains("discarded"), "{err}");
        assert!(!err.is_transient(), "a dead sender is not tried again");
    }

    #[test]
    fn a_receivers_passing_trouble_stays_marked_when_the_sender_was_fine() {
        struct Busy;
        impl Sink for Busy {
            fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
                Ok(())
            }
            fn finish(self: Box<Self>) -> Result<()> {
                Err(Error::failed("cannot unmount: dataset is busy").transient())
            }
            fn abort(self: Box<Self>) {}
        }
        let err = copy(
            Box::new(Bytes(vec![1; 10], true)),
            Box::new(Busy),
            &Progress::hidden(),
            &Interrupt::default(),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("the receiver failed"), "{err}");
        assert!(err.is_transient(), "{err}");
    }

    #[test]
    fn a_receiver_that_verified_the_whole_stream_wins_over_a_sender_complaint() {
        let sink = Recorder::default();
        let done = copy(
            Box::new(Bytes(vec![1; 10], false)),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &Interrupt::default(),
            None,
        )
        .unwrap();
        assert_eq!(done.bytes, 10);
        assert_eq!(sink.0.borrow().1, "finished");
    }

    #[test]
    fn an_interrupt_aborts_the_receiver() {
        let sink = Recorder::default();
        let interrupt = Interrupt::default();
        interrupt.0.store(true, Ordering::SeqCst);
        assert!(copy(
            Box::new(Bytes(vec![1; 10], true)),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &interrupt,
            None,
        )
        .is_err());
        assert_eq!(sink.0.borrow().1, "aborted");
    }

    /// Zeros, `left` bytes of them, without holding them in memory.
    struct Zeros {
        left: usize,
    }
    impl Source for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.left.min(buf.len());
            buf[..n].fill(0);
            self.left -= n;
            Ok(n)
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        fn abort(self: Box<Self>) {}
    }

    /// Notes when each write arrived and how many bytes had arrived by then.
    #[derive(Default, Clone)]
    struct Arrivals(Rc<RefCell<Vec<(Instant, u64)>>>);
    impl Sink for Arrivals {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let mut arrivals = self.0.borrow_mut();
            let before = arrivals.last().map_or(0, |&(_, bytes)| bytes);
            arrivals.push((Instant::now(), before + buf.len() as u64));
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        fn abort(self: Box<Self>) {}
    }

    #[test]
    fn a_bwlimit_holds_the_stream_to_its_rate_within_five_percent() {
        const MIB: u64 = 1 << 20;
        let rate = 20 * MIB;
        // The bucket starts with a quarter second (5 MiB) that goes out at once; the
        // 15 MiB after it take 0.75 s at 20 MiB/s.
        let initial_bucket = rate / 4;
        let total = initial_bucket + 15 * MIB;
        let sink = Arrivals::default();
        let done = copy(
            Box::new(Zeros {
                left: total as usize,
            }),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &Interrupt::default(),
            NonZeroU64::new(rate),
        )
        .unwrap();
        assert_eq!(done.bytes, total);

        let arrivals = sink.0.borrow();
        let &(bucket_spent_at, bytes_then) = arrivals
            .iter()
            .find(|&&(_, bytes)| bytes >= initial_bucket)
            .expect("the stream is longer than the bucket");
        let &(ended_at, bytes_at_end) = arrivals.last().unwrap();
        let achieved =
            (bytes_at_end - bytes_then) as f64 / (ended_at - bucket_spent_at).as_secs_f64();
        let off = (achieved - rate as f64).abs() / rate as f64;
        assert!(
            off <= 0.05,
            "{:.2} MiB/s after the initial bucket is {:.1}% off 20 MiB/s",
            achieved / MIB as f64,
            off * 100.0
        );
    }

    #[test]
    fn an_interrupt_during_a_rate_limited_wait_aborts_the_receiver() {
        // 1 KiB/s: after the first chunk the next one would wait for about 17 minutes.
        let sink = Recorder::default();
        let interrupt = Interrupt::default();
        let signal = interrupt.clone();
        let raised = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            signal.0.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let err = copy(
            Box::new(Bytes(vec![1; 3 * CHUNK], true)),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &interrupt,
            NonZeroU64::new(1024),
        )
        .unwrap_err();
        raised.join().unwrap();
        assert!(err.to_string().contains("interrupted"), "{err}");
        assert_eq!(sink.0.borrow().1, "aborted");
        assert_eq!(
            sink.0.borrow().0.len(),
            CHUNK,
            "only the first chunk went out"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the wait noticed the signal within a sleep slice: {:?}",
            started.elapsed()
        );
    }
}

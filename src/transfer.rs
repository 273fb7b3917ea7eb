//! Moving a ZFS stream from a source (`zfs send`, here or over SSH) into a sink
//! (`zfs recv`). Bounded buffers keep memory flat whatever the stream size; an interrupt
//! (SIGINT/SIGTERM) or any error aborts the receiver, which makes ZFS throw away the
//! partial receive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::progress::Progress;

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

#[derive(Debug, Clone, Copy)]
pub struct Transferred {
    pub bytes: u64,
    pub elapsed: Duration,
}

/// 1 MiB: large enough for SSH and pipe throughput, small enough to keep RSS flat.
const CHUNK: usize = 1 << 20;

pub fn copy(
    mut source: Box<dyn Source>,
    mut sink: Box<dyn Sink>,
    progress: &Progress,
    interrupt: &Interrupt,
) -> Result<Transferred> {
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    let outcome: Result<()> = loop {
        if interrupt.is_set() {
            break Err(Error::failed("transfer interrupted by a signal"));
        }
        match source.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
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
        )
        .unwrap_err();
        assert!(err.to_string().contains("sender failed"), "{err}");
        assert!(err.to_string().contains("discarded"), "{err}");
    }

    #[test]
    fn a_receiver_that_verified_the_whole_stream_wins_over_a_sender_complaint() {
        let sink = Recorder::default();
        let done = copy(
            Box::new(Bytes(vec![1; 10], false)),
            Box::new(sink.clone()),
            &Progress::hidden(),
            &Interrupt::default(),
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
            &interrupt
        )
        .is_err());
        assert_eq!(sink.0.borrow().1, "aborted");
    }
}

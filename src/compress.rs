//! Optional zstd compression of a re-seed's `zfs send` stream (`ssh_compress`).
//!
//! The source's pgzfs compresses: the client asks it for `pgzfs compressed-send --zstd N
//! -- zfs send ...`, the one form `pgzfs serve` allows for it, instead of the bare `zfs
//! send`. This node decompresses as it reads, so the receiver, the progress bar and
//! `bwlimit` all see the stream as zfs wrote it. Memory stays bounded on both ends like
//! the rest of the data path: the compressor takes one chunk at a time, and the decoder
//! refuses a frame that asks for a bigger window than any level pgzfs sends with.

use std::io::{BufReader, Read, Write};

use crate::error::{Error, Result};
use crate::exec::{Cmd, Output, Runner};
use crate::transfer::{Sink, Source};

/// What the compressor takes from zfs send at a time, as transfer::copy does.
const CHUNK: usize = 1 << 20;

/// The largest window a frame of levels 1 to 19 declares (2^23, 8 MiB, at levels 18 and
/// 19, from zstd's table of level parameters). A frame asking for more did not come from
/// `compressed-send`; zstd refuses it before allocating the window.
const WINDOW_LOG_MAX: u32 = 23;

/// `zfs send` of a snapshot or a resume token: the commands whose output is a stream
/// worth compressing. The bare `zfs send`, whose usage text is a feature probe, is not.
pub fn is_zfs_send(argv: &[String]) -> bool {
    argv.len() > 2 && argv[0] == "zfs" && argv[1] == "send"
}

/// A runner for the source node that has every `zfs send` stream compressed there and
/// decompressed here; all other commands go to `inner` unchanged.
pub struct Compressing<R> {
    inner: R,
    /// `<pgzfs_bin> --config <path> --node <source>` (exec::remote_pgzfs).
    remote_pgzfs: Cmd,
    level: ZstdLevel,
}

impl<R: Runner> Compressing<R> {
    pub fn new(inner: R, remote_pgzfs: Cmd, level: ZstdLevel) -> Self {
        Compressing {
            inner,
            remote_pgzfs,
            level,
        }
    }

    /// The source's pgzfs running `send` and compressing what it writes.
    pub fn command(&self, send: &Cmd) -> Cmd {
        self.remote_pgzfs
            .clone()
            .args(["compressed-send", "--zstd", &self.level.to_string(), "--"])
            .args(send.argv.iter().cloned())
    }
}

impl<R: Runner> Runner for Compressing<R> {
    fn output(&self, cmd: &Cmd) -> Result<Output> {
        self.inner.output(cmd)
    }

    fn source(&self, cmd: &Cmd) -> Result<Box<dyn Source>> {
        if !is_zfs_send(&cmd.argv) {
            return self.inner.source(cmd);
        }
        let compressed = self.inner.source(&self.command(cmd))?;
        Ok(Box::new(Decompressing::new(compressed)?))
    }

    fn sink(&self, cmd: &Cmd) -> Result<Box<dyn Sink>> {
        self.inner.sink(cmd)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A [`Source`] as `std::io::Read`, for the zstd decoder to pull from.
struct Compressed(Box<dyn Source>);

impl Read for Compressed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// The stream of a compressed source, decompressed as it is read.
pub struct Decompressing {
    decoder: zstd::stream::read::Decoder<'static, BufReader<Compressed>>,
}

impl Decompressing {
    pub fn new(compressed: Box<dyn Source>) -> Result<Decompressing> {
        let input =
            BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), Compressed(compressed));
        let mut decoder = match zstd::stream::read::Decoder::try_with_buffer(input) {
            Ok(decoder) => decoder,
            Err((input, e)) => {
                input.into_inner().0.abort();
                return Err(Error::failed(format!("cannot start a zstd decoder: {e}")));
            }
        };
        if let Err(e) = decoder.window_log_max(WINDOW_LOG_MAX) {
            decoder.into_inner().into_inner().0.abort();
            return Err(Error::failed(format!(
                "cannot set up the zstd decoder: {e}"
            )));
        }
        Ok(Decompressing { decoder })
    }

    fn into_source(self) -> Box<dyn Source> {
        // into_inner, not finish: finish would read on to the end of the frame.
        self.decoder.into_inner().into_inner().0
    }
}

impl Source for Decompressing {
    /// Ok(0) only at the end of a complete frame whose checksum matched: a stream cut
    /// short (a dropped connection, a killed sender) or damaged is an error here, before
    /// the receiver could take a shorter stream for the whole one.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.decoder
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("zstd-compressed stream: {e}")))
    }

    /// The sender's verdict: the remote pgzfs's exit status, with zfs send's stderr.
    fn finish(self: Box<Self>) -> Result<()> {
        self.into_source().finish()
    }

    fn abort(self: Box<Self>) {
        self.into_source().abort()
    }
}

/// Compress everything `source` yields into one zstd frame on `output`, then report how
/// `source` ended. The frame is closed whenever the source reached its end, even when it
/// then reports failure: the bytes zfs send wrote go on as they are, and the receiver
/// judges them, as it does an uncompressed stream (transfer::copy), while the failure
/// and its stderr still reach the client through our exit status. When reading or
/// writing fails instead, the source is aborted and the frame left unfinished, so the
/// client's decoder cannot mistake what arrived for a complete stream.
pub fn compress(mut source: Box<dyn Source>, output: impl Write, level: ZstdLevel) -> Result<u64> {
    let mut encoder = match zstd::stream::write::Encoder::new(output, level.get()) {
        Ok(encoder) => encoder,
        Err(e) => {
            source.abort();
            return Err(Error::failed(format!("cannot start a zstd encoder: {e}")));
        }
    };
    // A content checksum makes damage in transit an error at the receiving decoder, not
    // silently different bytes; xxhash64 costs little next to the compression itself.
    if let Err(e) = encoder.include_checksum(true) {
        source.abort();
        return Err(Error::failed(format!(
            "cannot set up the zstd encoder: {e}"
        )));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                source.abort();
                return Err(Error::failed(format!(
                    "reading the stream to compress: {e}"
                )));
            }
        };
        if let Err(e) = encoder.write_all(&buf[..n]) {
            source.abort();
            return Err(Error::failed(format!("writing the compressed stream: {e}")));
        }
        total += n as u64;
    }
    let closed = encoder.finish().and_then(|mut output| output.flush());
    let ended = source.finish();
    closed.map_err(|e| Error::failed(format!("writing the compressed stream: {e}")))?;
    ended?;
    Ok(total)
}

/// `ssh_compress`: whether the `zfs send` stream of a re-seed of this node is compressed
/// on its way. `none` (the default) sends it as zfs writes it; `zstd:N` has the source's
/// pgzfs (`pgzfs_bin`) compress it with zstd at level N and this node decompress it. It
/// costs CPU on both ends, so it pays only on a link slower than the compressor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SshCompress {
    #[default]
    None,
    Zstd(ZstdLevel),
}

impl SshCompress {
    pub(crate) fn parse(value: &str) -> std::result::Result<SshCompress, String> {
        if value == "none" {
            return Ok(SshCompress::None);
        }
        match value.strip_prefix("zstd:") {
            Some(level) => ZstdLevel::parse(level).map(SshCompress::Zstd),
            None => Err(format!(
                "{value:?} is not a compression; use \"none\" or \"zstd:N\" with N from {} to {}",
                ZstdLevel::MIN,
                ZstdLevel::MAX
            )),
        }
    }
}

/// A zstd compression level pgzfs accepts: 1 to 19. Levels above 19 use windows of up to
/// 128 MiB, on the decompressing side too, which the decoder (crate::compress) refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdLevel(u8);

impl ZstdLevel {
    pub const MIN: u8 = 1;
    pub const MAX: u8 = 19;

    /// Only the plain decimal form ("3", not "03" or "+3"): the level also travels on
    /// command lines that `pgzfs serve` compares word for word.
    pub fn parse(text: &str) -> std::result::Result<ZstdLevel, String> {
        let level = text
            .parse::<u8>()
            .ok()
            .filter(|n| n.to_string() == text && (Self::MIN..=Self::MAX).contains(n))
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a zstd level from {} to {}",
                    Self::MIN,
                    Self::MAX
                )
            })?;
        Ok(ZstdLevel(level))
    }

    pub fn get(self) -> i32 {
        i32::from(self.0)
    }
}

impl std::fmt::Display for ZstdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// An in-memory sender: hands out `data` in reads of at most `step` bytes, then
    /// finishes as `status` says. Records whether it was finished or aborted.
    struct Fake {
        data: Vec<u8>,
        at: usize,
        step: usize,
        status: std::result::Result<(), &'static str>,
        ended: Rc<RefCell<&'static str>>,
    }

    impl Fake {
        fn new(data: Vec<u8>) -> (Box<Fake>, Rc<RefCell<&'static str>>) {
            let ended = Rc::new(RefCell::new("running"));
            let fake = Fake {
                data,
                at: 0,
                step: 7919,
                status: Ok(()),
                ended: Rc::clone(&ended),
            };
            (Box::new(fake), ended)
        }

        fn failing(data: Vec<u8>, stderr: &'static str) -> (Box<Fake>, Rc<RefCell<&'static str>>) {
            let (mut fake, ended) = Fake::new(data);
            fake.status = Err(stderr);
            (fake, ended)
        }
    }

    impl Source for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
        fn finish(self: Box<Self>) -> Result<()> {
            *self.ended.borrow_mut() = "finished";
            self.status.map_err(|said| {
                Error::failed(format!(
                    "`zfs send tank/pg@a` on db1 failed (exit status 1): {said}"
                ))
            })
        }
        fn abort(self: Box<Self>) {
            *self.ended.borrow_mut() = "aborted";
        }
    }

    /// Something like a ZFS stream: compressible, but not one byte repeated.
    fn stream(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i % 64 < 40 {
                    (i / 4096) as u8
                } else {
                    (state % 16) as u8
                }
            })
            .collect()
    }

    fn level(n: u8) -> ZstdLevel {
        ZstdLevel::parse(&n.to_string()).unwrap()
    }

    /// Read a Source to its end, as transfer::copy does, in 1 MiB reads.
    fn drain(source: &mut dyn Source) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match source.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn compressed_by_us(data: &[u8]) -> Vec<u8> {
        let (fake, _) = Fake::new(data.to_vec());
        let mut out = Vec::new();
        compress(fake, &mut out, level(3)).unwrap();
        out
    }

    #[test]
    fn a_stream_compressed_by_the_zstd_crate_reads_back_byte_for_byte() {
        let data = stream(3 * CHUNK + 12345);
        let compressed = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert!(
            compressed.len() < data.len() / 2,
            "the test data compresses"
        );
        let (fake, ended) = Fake::new(compressed);
        let mut source = Box::new(Decompressing::new(fake).unwrap());
        assert_eq!(drain(&mut *source).unwrap(), data);
        source.finish().unwrap();
        assert_eq!(*ended.borrow(), "finished");
    }

    #[test]
    fn what_compress_writes_decompresses_to_the_same_stream() {
        let data = stream(2 * CHUNK + 1);
        let (fake, ended) = Fake::new(data.clone());
        let mut compressed = Vec::new();
        assert_eq!(
            compress(fake, &mut compressed, level(1)).unwrap(),
            data.len() as u64
        );
        assert_eq!(*ended.borrow(), "finished");
        let mut decoded = Vec::new();
        zstd::stream::read::Decoder::new(&compressed[..])
            .unwrap()
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, data, "any zstd decoder reads it");
        let (fake, _) = Fake::new(compressed);
        let mut source = Decompressing::new(fake).unwrap();
        assert_eq!(drain(&mut source).unwrap(), data);
    }

    #[test]
    fn the_senders_failure_and_its_stderr_come_through_finish() {
        let compressed = compressed_by_us(&stream(100_000));
        let (fake, ended) = Fake::failing(
            compressed,
            "cannot open 'tank/pg@a': dataset does not exist",
        );
        let mut source = Box::new(Decompressing::new(fake).unwrap());
        drain(&mut *source).unwrap();
        let err = source.finish().unwrap_err().to_string();
        assert!(err.contains("exit status 1"), "{err}");
        assert!(err.contains("dataset does not exist"), "{err}");
        assert_eq!(*ended.borrow(), "finished");
    }

    #[test]
    fn abort_aborts_the_remote_sender() {
        let (fake, ended) = Fake::new(compressed_by_us(&stream(1000)));
        Box::new(Decompressing::new(fake).unwrap()).abort();
        assert_eq!(*ended.borrow(), "aborted");
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_shorter_success() {
        let data = stream(CHUNK + 777);
        let compressed = compressed_by_us(&data);
        for cut in [
            0,
            3,
            compressed.len() / 2,
            compressed.len() - 4,
            compressed.len() - 1,
        ] {
            let (fake, _) = Fake::new(compressed[..cut].to_vec());
            let mut source = Decompressing::new(fake).unwrap();
            let err =
                drain(&mut source).expect_err(&format!("cut at {cut} of {}", compressed.len()));
            assert!(err.to_string().contains("zstd"), "{err}");
        }
    }

    #[test]
    fn a_damaged_stream_is_an_error() {
        let data = stream(CHUNK);
        let compressed = compressed_by_us(&data);
        for at in [20, compressed.len() / 2, compressed.len() - 2] {
            let mut damaged = compressed.clone();
            damaged[at] ^= 0x10;
            let (fake, _) = Fake::new(damaged);
            let mut source = Decompressing::new(fake).unwrap();
            let got = drain(&mut source);
            assert!(got.is_err(), "a flipped bit at {at} went unnoticed");
        }
        let mut garbage = compressed.clone();
        garbage.extend_from_slice(b"trailing bytes");
        let (fake, _) = Fake::new(garbage);
        assert!(drain(&mut Decompressing::new(fake).unwrap()).is_err());
    }

    #[test]
    fn the_window_limit_admits_level_19_and_nothing_bigger() {
        let data = stream(64 * 1024);
        let mut level_19 = Vec::new();
        compress(Fake::new(data.clone()).0, &mut level_19, level(19)).unwrap();
        let (fake, _) = Fake::new(level_19.clone());
        assert_eq!(drain(&mut Decompressing::new(fake).unwrap()).unwrap(), data);
        // The limit is tight: level 19 really declares the 8 MiB window.
        let mut smaller = zstd::stream::read::Decoder::new(&level_19[..]).unwrap();
        smaller.window_log_max(WINDOW_LOG_MAX - 1).unwrap();
        assert!(smaller.read_to_end(&mut Vec::new()).is_err());

        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::WindowLog(WINDOW_LOG_MAX + 4))
            .unwrap();
        encoder.write_all(&data).unwrap();
        let (fake, _) = Fake::new(encoder.finish().unwrap());
        let err = drain(&mut Decompressing::new(fake).unwrap()).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn a_sender_that_fails_at_the_end_still_gets_its_frame_closed() {
        let data = stream(50_000);
        let (fake, ended) = Fake::failing(data.clone(), "internal error: Broken pipe");
        let mut compressed = Vec::new();
        let err = compress(fake, &mut compressed, level(3))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Broken pipe"), "{err}");
        assert_eq!(*ended.borrow(), "finished");
        // What zfs send wrote arrives whole, for the receiver to judge.
        let (fake, _) = Fake::new(compressed);
        assert_eq!(drain(&mut Decompressing::new(fake).unwrap()).unwrap(), data);
    }

    /// A client that went away after `left` bytes.
    struct HangsUp {
        left: usize,
    }

    impl Write for HangsUp {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_client_that_hangs_up_aborts_the_sender() {
        // Noise does not compress, so the encoder must write long before the end.
        let mut state = 88172645463325252u64;
        let noise: Vec<u8> = (0..8 * CHUNK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let (fake, ended) = Fake::new(noise);
        let err = compress(fake, HangsUp { left: 1000 }, level(1)).unwrap_err();
        assert!(
            err.to_string().contains("writing the compressed stream"),
            "{err}"
        );
        assert_eq!(*ended.borrow(), "aborted");
    }

    /// Records the commands, streams nothing.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<Vec<String>>>);

    impl Runner for Recorder {
        fn output(&self, cmd: &Cmd) -> Result<Output> {
            self.0.borrow_mut().push(cmd.argv.clone());
            Err(Error::failed("not in this test"))
        }
        fn source(&self, cmd: &Cmd) -> Result<Box<dyn Source>> {
            self.0.borrow_mut().push(cmd.argv.clone());
            Ok(Fake::new(Vec::new()).0)
        }
        fn sink(&self, cmd: &Cmd) -> Result<Box<dyn Sink>> {
            self.0.borrow_mut().push(cmd.argv.clone());
            Err(Error::failed("not in this test"))
        }
        fn describe(&self) -> String {
            "zfssync@db1:22".to_string()
        }
    }

    #[test]
    fn only_zfs_send_streams_go_through_the_sources_pgzfs() {
        let remote = crate::exec::remote_pgzfs(
            std::path::Path::new("/usr/local/bin/pgzfs"),
            std::path::Path::new("/usr/local/etc/pgzfs.toml"),
            "db1",
        );
        let runner = Compressing::new(Recorder::default(), remote, level(3));
        let send = Cmd::new("zfs").args(["send", "-i", "tank/pg@a", "tank/pg@b"]);
        drop(runner.source(&send).unwrap());
        drop(runner.source(&Cmd::new("zfs").arg("send")).unwrap());
        let _ = runner.output(&Cmd::new("zfs").args(["send", "-nv", "-t", "1-x"]));
        let _ = runner.sink(&Cmd::new("zfs").args(["receive", "tank/pg"]));
        assert_eq!(runner.describe(), "zfssync@db1:22");
        let issued = runner.inner.0.borrow();
        assert_eq!(
            issued[0],
            [
                "/usr/local/bin/pgzfs",
                "--config",
                "/usr/local/etc/pgzfs.toml",
                "--node",
                "db1",
                "compressed-send",
                "--zstd",
                "3",
                "--",
                "zfs",
                "send",
                "-i",
                "tank/pg@a",
                "tank/pg@b"
            ]
        );
        assert_eq!(issued[1], ["zfs", "send"], "the usage probe is no stream");
        assert_eq!(issued[2], ["zfs", "send", "-nv", "-t", "1-x"]);
        assert_eq!(issued[3], ["zfs", "receive", "tank/pg"]);
    }
}

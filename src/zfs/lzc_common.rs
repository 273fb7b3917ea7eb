//! The parts of the libzfs_core backend that need no library and no /dev/zfs, so that
//! they are built and tested in every configuration: reading a send stream's BEGIN
//! record (lzc_receive wants the snapshot name before it reads the stream, zfs(8) reads
//! it from the stream itself), and turning errno values into messages an operator can
//! act on.

use crate::error::{Error, Result};

/// `struct dmu_replay_record` up to the end of its BEGIN payload: drr_type and
/// drr_payloadlen (4 + 4), then drr_begin: magic, versioninfo, creation_time (3 × 8),
/// type and flags (2 × 4), toguid and fromguid (2 × 8), toname[MAXNAMELEN = 256].
pub const BEGIN_RECORD_LEN: usize = 8 + 24 + 8 + 16 + 256;

const DRR_BEGIN: u32 = 0;
const DMU_BACKUP_MAGIC: u64 = 0x2F5B_ACBAC;
/// The low two bits of versioninfo: a plain stream, or a compound (`send -R`) one.
const DMU_SUBSTREAM: u64 = 1;
/// A feature flag; the flags live in bits 2..32 of versioninfo (DMU_GET_FEATUREFLAGS).
const DMU_BACKUP_FEATURE_RAW: u64 = 1 << 24;

/// What the BEGIN record says about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBegin {
    /// The sender's snapshot name, e.g. `tank/pgdata@pgzfs-20261122T003000Z`.
    pub toname: String,
    pub toguid: u64,
    /// 0 for a full stream.
    pub fromguid: u64,
    /// A raw (`send -w`) stream, which lzc_receive must be told about.
    pub raw: bool,
}

/// Parse the first [`BEGIN_RECORD_LEN`] bytes of a send stream. Streams are written in
/// the sender's byte order; the magic number tells which one.
pub fn parse_begin_record(bytes: &[u8]) -> Result<StreamBegin> {
    if bytes.len() < BEGIN_RECORD_LEN {
        return Err(Error::failed(format!(
            "the stream ended after {} bytes, before its BEGIN record was complete",
            bytes.len()
        )));
    }
    let field = |at: usize, len: usize| &bytes[at..at + len];
    let magic_le = u64::from_le_bytes(field(8, 8).try_into().expect("8 bytes"));
    let little = if magic_le == DMU_BACKUP_MAGIC {
        true
    } else if magic_le.swap_bytes() == DMU_BACKUP_MAGIC {
        false
    } else {
        return Err(Error::failed(
            "this is not a ZFS send stream (no DMU_BACKUP_MAGIC in its first record)",
        ));
    };
    let u32_at = |at: usize| {
        let raw: [u8; 4] = field(at, 4).try_into().expect("4 bytes");
        if little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        }
    };
    let u64_at = |at: usize| {
        let raw: [u8; 8] = field(at, 8).try_into().expect("8 bytes");
        if little {
            u64::from_le_bytes(raw)
        } else {
            u64::from_be_bytes(raw)
        }
    };
    if u32_at(0) != DRR_BEGIN {
        return Err(Error::failed(
            "the stream does not start with a BEGIN record",
        ));
    }
    let versioninfo = u64_at(16);
    if versioninfo & 3 != DMU_SUBSTREAM {
        return Err(Error::failed(
            "this is a replication stream (zfs send -R); the libzfs_core backend receives single snapshots only",
        ));
    }
    let features = (versioninfo >> 2) & ((1 << 30) - 1);
    let name = field(56, 256);
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let toname = std::str::from_utf8(&name[..end])
        .map_err(|_| Error::failed("the stream's snapshot name is not UTF-8"))?
        .to_string();
    Ok(StreamBegin {
        toname,
        toguid: u64_at(40),
        fromguid: u64_at(48),
        raw: features & DMU_BACKUP_FEATURE_RAW != 0,
    })
}

/// A libzfs_core failure as an operator reads it: what was done, to what, and what the
/// errno means for ZFS in particular (the generic strerror text is often misleading:
/// ETXTBSY from a receive is not about a busy text file).
pub fn errno_error(op: &str, object: &str, errno: i32) -> Error {
    let what = match errno {
        libc::ENOENT => format!("{object} does not exist"),
        libc::EEXIST => format!("{object} already exists"),
        libc::EBUSY => format!("{object} is busy (mounted, held or in use); try again"),
        libc::EPERM | libc::EACCES => {
            "permission denied: run as root, or delegate the permission with `zfs allow`".to_string()
        }
        libc::ENOSPC => "the pool is out of space".to_string(),
        libc::EDQUOT => "a quota would be exceeded".to_string(),
        libc::EXDEV => "the snapshots of one call must all be in the same pool".to_string(),
        libc::EINVAL => format!("ZFS refused the arguments for {object} (invalid name, property or stream)"),
        libc::ENAMETOOLONG => format!("{object}: name too long"),
        libc::ENOTSUP => "not supported by this pool (upgrade it, or set zfs_backend = \"cli\")".to_string(),
        libc::ESRCH => format!("{object} has no such hold"),
        libc::ETXTBSY => format!(
            "{object} was modified since the incremental stream's base snapshot (a receive with rollback discards that)"
        ),
        libc::EPIPE => "the other end of the stream went away".to_string(),
        libc::ENODEV | libc::ENXIO => "/dev/zfs is not available on this machine".to_string(),
        libc::E2BIG => "the argument list is too large for one call".to_string(),
        other => std::io::Error::from_raw_os_error(other).to_string(),
    };
    Error::failed(format!("libzfs_core {op} {object}: {what} (errno {errno})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BEGIN record as a little-endian sender writes it.
    fn begin(toname: &str, versioninfo: u64, fromguid: u64, little: bool) -> Vec<u8> {
        let mut b = Vec::new();
        let put32 = |b: &mut Vec<u8>, v: u32| {
            b.extend(if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        let put64 = |b: &mut Vec<u8>, v: u64| {
            b.extend(if little {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            })
        };
        put32(&mut b, DRR_BEGIN);
        put32(&mut b, 0);
        put64(&mut b, DMU_BACKUP_MAGIC);
        put64(&mut b, versioninfo);
        put64(&mut b, 1_763_771_400);
        put32(&mut b, 2);
        put32(&mut b, 0);
        put64(&mut b, 0xabcdef);
        put64(&mut b, fromguid);
        let mut name = [0u8; 256];
        name[..toname.len()].copy_from_slice(toname.as_bytes());
        b.extend(name);
        b
    }

    #[test]
    fn a_full_stream_names_its_snapshot() {
        let bytes = begin(
            "tank/pgdata@pgzfs-20261122T003000Z",
            DMU_SUBSTREAM | (1 << (18 + 2)),
            0,
            true,
        );
        assert_eq!(bytes.len(), BEGIN_RECORD_LEN);
        let parsed = parse_begin_record(&bytes).unwrap();
        assert_eq!(parsed.toname, "tank/pgdata@pgzfs-20261122T003000Z");
        assert_eq!(parsed.toguid, 0xabcdef);
        assert_eq!(parsed.fromguid, 0);
        assert!(!parsed.raw);
    }

    #[test]
    fn a_big_endian_raw_incremental_stream_is_read_too() {
        let versioninfo = DMU_SUBSTREAM | (DMU_BACKUP_FEATURE_RAW << 2);
        let parsed = parse_begin_record(&begin("tank/pg@b", versioninfo, 77, false)).unwrap();
        assert_eq!(parsed.toname, "tank/pg@b");
        assert_eq!(parsed.fromguid, 77);
        assert!(parsed.raw);
    }

    #[test]
    fn short_foreign_and_replication_streams_are_refused() {
        let bytes = begin("tank/pg@a", DMU_SUBSTREAM, 0, true);
        assert!(parse_begin_record(&bytes[..100])
            .unwrap_err()
            .message()
            .contains("ended"));
        let mut foreign = bytes.clone();
        foreign[8..16].copy_from_slice(&[0; 8]);
        assert!(parse_begin_record(&foreign)
            .unwrap_err()
            .message()
            .contains("not a ZFS send stream"));
        let compound = begin("tank/pg@a", 2, 0, true);
        assert!(parse_begin_record(&compound)
            .unwrap_err()
            .message()
            .contains("send -R"));
    }

    #[test]
    fn errno_values_become_zfs_specific_messages() {
        let e = errno_error("receive", "tank/pg@b", libc::ETXTBSY);
        assert!(e.message().contains("modified since"), "{}", e.message());
        assert!(e.message().contains("errno"), "{}", e.message());
        assert!(errno_error("hold", "tank/pg@a", libc::EPERM)
            .message()
            .contains("zfs allow"));
        assert!(errno_error("snapshot", "tank/pg@a", libc::EEXIST)
            .message()
            .contains("already exists"));
        assert!(errno_error("release", "tank/pg@a", libc::ESRCH)
            .message()
            .contains("no such hold"));
        assert!(errno_error("init", "/dev/zfs", libc::ENOENT)
            .message()
            .contains("does not exist"));
        // Anything else falls back to the system's text, still naming op and object.
        let other = errno_error("send", "tank/pg@a", libc::EIO);
        assert!(
            other.message().starts_with("libzfs_core send tank/pg@a:"),
            "{}",
            other.message()
        );
    }
}

//! What the ZFS at each end can do, read from what its commands print, and the checks
//! that decide whether an interrupted receive may be resumed.
//!
//! zfs-fuse (pool v23) knows none of the modern abilities; OpenZFS 2.x knows all of them.
//! We never assume either: every ability is probed, and every probe fails closed (an
//! answer we cannot read means "not supported", so pgzfs falls back to the plain
//! `zfs send [-i]` that works everywhere).
//!
//! Everything here is a pure function of command output, so it is tested against
//! recorded outputs (tests/fixtures/).

use std::collections::BTreeSet;

use super::names::SnapshotName;
use crate::error::{Error, Result};

/// What `zfs send` without arguments tells about the sender: the usage text lists every
/// flag the binary knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendUsage {
    /// Single-letter flags in any `send [-...]` usage line.
    pub flags: BTreeSet<char>,
    /// `send ... -t <receive_resume_token>` is listed.
    pub resume: bool,
}

impl SendUsage {
    pub fn has(&self, flag: char) -> bool {
        self.flags.contains(&flag)
    }
}

/// Read the flags out of the usage text `zfs send` prints (on stderr, exit 2) when called
/// without a snapshot. Only lines that start with `send` count, so the flags of other
/// subcommands in a full usage dump never leak in.
pub fn parse_send_usage(text: &str) -> SendUsage {
    let mut usage = SendUsage::default();
    for line in text.lines() {
        let line = line.trim_start();
        if !line.starts_with("send ") && !line.starts_with("[-") {
            continue;
        }
        // `[-DLPbcehnpsVvw]` style groups: letters right after "[-" up to "]". A group such
        // as zfs-fuse's `[-[iI] snapshot]` starts with '[' after the '-' and lists flags
        // that take arguments, which we do not use from here.
        let mut rest = line;
        while let Some(start) = rest.find("[-") {
            rest = &rest[start + 2..];
            let group: String = rest.chars().take_while(|c| *c != ']').collect();
            if !group.is_empty() && group.chars().all(|c| c.is_ascii_alphabetic()) {
                usage.flags.extend(group.chars());
            }
        }
        if line.contains("-t <receive_resume_token>") {
            usage.resume = true;
        }
    }
    usage
}

/// Whether `zfs get -H -o value PROP OBJECT` (or `zpool get`) knew the property. zfs-fuse
/// answers an unknown property with "bad property list: invalid property 'x'" and exit 2;
/// an OpenZFS that knows it prints a value, "-" when unset.
pub fn property_known(success: bool, stdout: &str, stderr: &str) -> bool {
    success
        && !stderr.contains("invalid property")
        && !stderr.contains("bad property list")
        && !stdout.trim().is_empty()
}

/// A pool feature's state as `zpool get -H -o value feature@NAME POOL` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFeature {
    /// The zpool binary or the pool does not know the feature (zfs-fuse, old pools).
    Unknown,
    Disabled,
    Enabled,
    Active,
}

impl PoolFeature {
    pub fn parse(success: bool, stdout: &str, stderr: &str) -> PoolFeature {
        if !property_known(success, stdout, stderr) {
            return PoolFeature::Unknown;
        }
        match stdout.trim() {
            "active" => PoolFeature::Active,
            "enabled" => PoolFeature::Enabled,
            "disabled" => PoolFeature::Disabled,
            _ => PoolFeature::Unknown,
        }
    }

    /// Enabled features become active on first use, so both are usable.
    pub fn usable(self) -> bool {
        matches!(self, PoolFeature::Enabled | PoolFeature::Active)
    }
}

/// The value of `receive_resume_token`: None when unset ("-") or unsupported.
pub fn parse_resume_token_value(
    success: bool,
    stdout: &str,
    stderr: &str,
) -> Result<Option<ResumeToken>> {
    if !property_known(success, stdout, stderr) {
        return Ok(None);
    }
    match stdout.trim() {
        "-" | "" => Ok(None),
        token => ResumeToken::parse(token).map(Some),
    }
}

/// A `receive_resume_token` value, checked to have the shape ZFS produces
/// (`<version>-<hex>-<hex>-<hex>`), so that it can cross a shell and never be read as an
/// option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken(String);

/// Tokens are a few hundred characters; a limit keeps a hostile value from growing
/// without bound in logs and command lines.
const MAX_TOKEN_LEN: usize = 16 * 1024;

impl ResumeToken {
    pub fn parse(text: &str) -> Result<ResumeToken> {
        let parts: Vec<&str> = text.split('-').collect();
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = text.len() <= MAX_TOKEN_LEN
            && parts.len() == 4
            && !parts[0].is_empty()
            && parts[0].bytes().all(|b| b.is_ascii_digit())
            && parts[1..].iter().all(|p| hex(p));
        if valid {
            Ok(ResumeToken(text.to_string()))
        } else {
            let shown: String = text.chars().take(80).collect();
            Err(Error::failed(format!(
                "{shown:?} is not a ZFS receive_resume_token (expected <version>-<hex>-<hex>-<hex>)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a resume token says it continues: decoded by `zfs send -nv -t TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeTokenInfo {
    pub toname: String,
    pub toguid: u64,
    /// Present for an incremental stream: the base snapshot's GUID.
    pub fromguid: Option<u64>,
    pub compressed: bool,
    pub raw: bool,
    pub embedded: bool,
    pub large_blocks: bool,
}

/// Parse the "resume token contents:" block that `zfs send -nv -t TOKEN` prints before it
/// looks for the snapshot (so the block is there even when the send itself then fails,
/// e.g. when decoding on the receiving side, where the snapshot has another name).
pub fn parse_resume_token_contents(text: &str) -> Result<ResumeTokenInfo> {
    let Some(start) = text.find("resume token contents:") else {
        return Err(Error::failed(
            "zfs send -nv -t printed no \"resume token contents\"; this zfs cannot decode resume tokens"
                .to_string(),
        ));
    };
    let mut toname = None;
    let mut toguid = None;
    let mut fromguid = None;
    let mut flags = BTreeSet::new();
    // The block is `nvlist version: 0` then tab-indented `name = value` lines; it ends at
    // the first line that is not indented (the dry-run size lines). Only the top level
    // (exactly one tab) counts: zfs send -t reads toname and toguid from there, and a
    // token is data the other side wrote, so a decoy `toname` in an embedded nvlist (two
    // tabs) must not pass for the real one. A name seen twice at the top level (a token
    // packed without unique names, or a string value with a newline in it) is refused.
    let mut seen = BTreeSet::new();
    for line in text[start..].lines().skip(1) {
        if line.starts_with("nvlist version") {
            continue;
        }
        let Some(entry) = line.strip_prefix('\t') else {
            break;
        };
        if entry.starts_with(|c: char| c.is_whitespace()) {
            continue; // inside an embedded nvlist
        }
        let Some((name, value)) = entry.split_once(" = ") else {
            continue;
        };
        if !seen.insert(name.to_string()) {
            return Err(Error::failed(format!(
                "resume token: {name} appears twice; refusing a token that is not a plain nvlist"
            )));
        }
        let number = |v: &str| -> Result<u64> {
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed
                .map_err(|_| Error::failed(format!("resume token: {name} = {v:?} is not a number")))
        };
        match name.trim() {
            "toname" => toname = Some(value.trim().to_string()),
            "toguid" => toguid = Some(number(value.trim())?),
            "fromguid" => fromguid = Some(number(value.trim())?),
            flag if value.trim() == "1" => {
                flags.insert(flag.to_string());
            }
            _ => {}
        }
    }
    let toname = toname.ok_or_else(|| Error::failed("resume token has no toname"))?;
    let toguid = toguid.ok_or_else(|| Error::failed("resume token has no toguid"))?;
    Ok(ResumeTokenInfo {
        toname,
        toguid,
        fromguid,
        compressed: flags.contains("compressok"),
        raw: flags.contains("rawok"),
        embedded: flags.contains("embedok"),
        large_blocks: flags.contains("largeblockok"),
    })
}

/// The transfer the caller is about to make, which a token must continue exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTransfer<'a> {
    pub snapshot: &'a SnapshotName,
    pub guid: u64,
    /// The incremental base's GUID; None for a full stream.
    pub base_guid: Option<u64>,
}

/// Whether a decoded token continues exactly the planned transfer. Name *and* GUID must
/// match: the name alone can be reused by a different snapshot, and a token is data the
/// receiving side wrote, which a compromised receiver can forge (openzfs#14153) to make
/// the sender stream something else. Err carries the reason to log.
pub fn token_matches(info: &ResumeTokenInfo, planned: &PlannedTransfer) -> Result<(), String> {
    let want = planned.snapshot.to_string();
    if info.toname != want {
        return Err(format!(
            "the token continues {} but the plan is {want}",
            info.toname
        ));
    }
    if info.toguid != planned.guid {
        return Err(format!(
            "the token's snapshot GUID {:#x} is not the GUID of {want} ({:#x}): same name, different snapshot",
            info.toguid, planned.guid
        ));
    }
    match (info.fromguid, planned.base_guid) {
        (None, None) => Ok(()),
        (Some(from), Some(base)) if from == base => Ok(()),
        (Some(from), Some(base)) => Err(format!(
            "the token is incremental from GUID {from:#x}, the plan from {base:#x}"
        )),
        (Some(from), None) => Err(format!(
            "the token is incremental (from GUID {from:#x}) but the plan is a full stream"
        )),
        (None, Some(_)) => {
            Err("the token is a full stream but the plan is incremental".to_string())
        }
    }
}

/// The `zfs send` flags to use, chosen from what both ends support. Plain (no flags) is
/// what zfs-fuse gets and what every ZFS can receive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// `-L`: keep records larger than 128 KiB as they are.
    pub large_blocks: bool,
    /// `-e`: send embedded (tiny, compressed-into-the-block-pointer) blocks as such.
    pub embedded: bool,
    /// `-c`: send blocks compressed as they are on disk instead of decompressing them.
    pub compressed: bool,
    /// `-w`: raw, for encrypted datasets: the blocks stay encrypted and the key never
    /// has to be loaded on the sender nor known by the receiver.
    pub raw: bool,
}

impl SendOptions {
    pub fn plain() -> SendOptions {
        SendOptions::default()
    }

    /// A flag is used only when both the sender's and the receiver's zfs know it: a zfs
    /// that can send a stream feature can also receive it, and one that cannot send it
    /// may well refuse to receive it. Raw replaces the others for an encrypted dataset
    /// (a raw stream carries the blocks exactly as stored).
    pub fn choose(sender: &super::Features, receiver: &super::Features, encrypted: bool) -> Self {
        if encrypted && sender.send_raw && receiver.send_raw {
            return SendOptions {
                raw: true,
                ..SendOptions::default()
            };
        }
        SendOptions {
            large_blocks: sender.send_large_blocks && receiver.send_large_blocks,
            embedded: sender.send_embedded && receiver.send_embedded,
            compressed: sender.send_compressed && receiver.send_compressed,
            raw: false,
        }
    }

    pub fn is_plain(&self) -> bool {
        *self == SendOptions::plain()
    }

    /// The flags as separate words, in a fixed order (the serve endpoint checks them).
    pub fn flags(&self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if self.large_blocks {
            flags.push("-L");
        }
        if self.embedded {
            flags.push("-e");
        }
        if self.compressed {
            flags.push("-c");
        }
        if self.raw {
            flags.push("-w");
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zfs::Features;

    macro_rules! fixture {
        ($path:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $path
            ))
        };
    }

    #[test]
    fn zfs_fuse_send_knows_no_modern_flag_and_cannot_resume() {
        let usage = parse_send_usage(fixture!("zfs-fuse/send-usage.txt"));
        assert_eq!(usage.flags, BTreeSet::from(['R', 'D', 'p']));
        assert!(!usage.resume);
        for flag in ['L', 'e', 'c', 'w'] {
            assert!(!usage.has(flag), "zfs-fuse has no -{flag}");
        }
    }

    #[test]
    fn openzfs_send_knows_large_blocks_embedded_compressed_raw_and_resume() {
        let usage = parse_send_usage(fixture!("openzfs-2.1/send-usage.txt"));
        for flag in ['L', 'e', 'c', 'w', 'n', 'v', 'P'] {
            assert!(usage.has(flag), "OpenZFS 2.1 has -{flag}: {usage:?}");
        }
        assert!(usage.resume);
        // "-X dataset" is an option with an argument, not part of a flag group.
        assert!(!usage.has('X'));
    }

    #[test]
    fn flags_of_other_subcommands_do_not_count() {
        let text = "usage:\n\treceive [-vnFsuA] <filesystem>\n\tsend [-Rp] <snapshot>\n";
        let usage = parse_send_usage(text);
        assert_eq!(usage.flags, BTreeSet::from(['R', 'p']));
    }

    #[test]
    fn an_unknown_property_on_zfs_fuse_means_unsupported() {
        let said = fixture!("zfs-fuse/get-receive_resume_token-head.txt");
        assert!(!property_known(false, "", said));
        assert_eq!(parse_resume_token_value(false, "", said).unwrap(), None);
        let written = fixture!("zfs-fuse/get-written-head.txt");
        assert!(!property_known(false, "", written));
    }

    #[test]
    fn an_unset_token_on_openzfs_is_supported_but_empty() {
        let out = fixture!("openzfs-2.1/get-receive_resume_token-none.txt");
        assert!(property_known(true, out, ""));
        assert_eq!(parse_resume_token_value(true, out, "").unwrap(), None);
    }

    #[test]
    fn openzfs_knows_the_written_property() {
        assert!(property_known(
            true,
            fixture!("openzfs-2.1/get-written.txt"),
            ""
        ));
    }

    #[test]
    fn a_set_token_on_openzfs_is_read_and_checked() {
        let out = fixture!("openzfs-2.1/get-receive_resume_token.txt");
        let token = parse_resume_token_value(true, out, "").unwrap().unwrap();
        assert!(token.as_str().starts_with("1-1103df68a8-108-"));
        assert!(parse_resume_token_value(true, "1-abc-; reboot\n", "").is_err());
    }

    #[test]
    fn resume_tokens_must_have_the_zfs_shape() {
        ResumeToken::parse("1-e604ea4bf-e0-789c6360").unwrap();
        for bad in [
            "",
            "-",
            "1-abc",
            "-1-ab-cd-ef",
            "1-ab-cd-ef; rm -rf /",
            "1-ab-cd-e f",
            "1-ab-cd-xyz",
            "x-ab-cd-ef",
            "1-ab--ef",
            "1-ab-cd-ef-00",
        ] {
            assert!(ResumeToken::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(ResumeToken::parse(&format!("1-a-b-{}", "0".repeat(MAX_TOKEN_LEN))).is_err());
    }

    #[test]
    fn bookmarks_come_from_the_pool_feature_state() {
        let fuse = fixture!("zfs-fuse/zpool-get-feature-bookmarks-head.txt");
        assert_eq!(PoolFeature::parse(false, "", fuse), PoolFeature::Unknown);
        let openzfs = fixture!("openzfs-2.1/zpool-get-feature-bookmarks.txt");
        assert_eq!(PoolFeature::parse(true, openzfs, ""), PoolFeature::Active);
        let fresh = fixture!("openzfs-2.1/zpool-get-feature-bookmarks-enabled.txt");
        assert!(PoolFeature::parse(true, fresh, "").usable());
        assert!(PoolFeature::parse(true, "enabled\n", "").usable());
        assert!(!PoolFeature::parse(true, "disabled\n", "").usable());
        assert!(!PoolFeature::parse(true, "something new\n", "").usable());
    }

    #[test]
    fn zfs_fuse_cannot_decode_tokens() {
        let said = fixture!("zfs-fuse/send-nvt.txt");
        let err = parse_resume_token_contents(said).unwrap_err();
        assert!(err.message().contains("cannot decode"), "{}", err.message());
    }

    #[test]
    fn a_full_stream_token_is_decoded() {
        let info = parse_resume_token_contents(fixture!("openzfs-2.1/send-nvt-full.txt")).unwrap();
        assert_eq!(info.toname, "tank/pgdata@pgzfs-20261122T003000Z");
        assert_eq!(info.toguid, 0xcbacbe33cd2cad0f);
        assert_eq!(info.fromguid, None);
        // Sent with -L -e -c; a dataset without large blocks gets no largeblockok.
        assert!(info.compressed && info.embedded && !info.large_blocks && !info.raw);
    }

    #[test]
    fn an_incremental_token_carries_its_base() {
        let info =
            parse_resume_token_contents(fixture!("openzfs-2.1/send-nvt-incremental.txt")).unwrap();
        assert_eq!(info.toname, "tank/pgdata@pgzfs-20261122T013000Z");
        assert_eq!(info.toguid, 0x44f414f9b09512f4);
        assert_eq!(info.fromguid, Some(0xcbacbe33cd2cad0f));
        // Sent with -w: an unencrypted dataset's raw stream carries no rawok.
        assert!(!info.raw);
        assert!(!info.large_blocks);
    }

    #[test]
    fn a_decoy_toname_in_a_nested_nvlist_does_not_pass_for_the_real_one() {
        // A forged token whose top level names another dataset's snapshot, with our
        // snapshot's name and GUID hidden in an embedded nvlist.
        let text = "resume token contents:\nnvlist version: 0\n\tobject = 0x1\n\tdecoy = (embedded nvlist)\n\tnvlist version: 0\n\t\ttoname = tank/pgdata@pgzfs-20261122T003000Z\n\t\ttoguid = 0x9f3b2c1d4e5a6b7c\n\t(end decoy)\n\ttoguid = 0x1111\n\ttoname = tank/secret@s\n";
        let info = parse_resume_token_contents(text).unwrap();
        assert_eq!(info.toname, "tank/secret@s");
        assert_eq!(info.toguid, 0x1111);
        // Only nested: there is no top-level toname at all.
        let nested_only = "resume token contents:\nnvlist version: 0\n\tdecoy = (embedded nvlist)\n\t\ttoname = tank/pgdata@pgzfs-20261122T003000Z\n\t\ttoguid = 0x9f3b2c1d4e5a6b7c\n\t(end decoy)\n";
        assert!(parse_resume_token_contents(nested_only).is_err());
    }

    #[test]
    fn a_token_naming_its_snapshot_twice_is_refused() {
        let text = "resume token contents:\nnvlist version: 0\n\ttoname = tank/secret@s\n\ttoguid = 0x1111\n\ttoname = tank/pgdata@pgzfs-20261122T003000Z\n";
        let err = parse_resume_token_contents(text).unwrap_err();
        assert!(err.to_string().contains("toname appears twice"), "{err}");
        let guid_twice = "resume token contents:\nnvlist version: 0\n\ttoname = tank/pgdata@pgzfs-20261122T003000Z\n\ttoguid = 0x1111\n\ttoguid = 0x9f3b2c1d4e5a6b7c\n";
        assert!(parse_resume_token_contents(guid_twice).is_err());
    }

    #[test]
    fn a_token_without_name_or_guid_is_corrupt() {
        let text = "resume token contents:\nnvlist version: 0\n\tobject = 0x1\n";
        assert!(parse_resume_token_contents(text).is_err());
        let text = "resume token contents:\nnvlist version: 0\n\ttoname = a/b@c\n\ttoguid = 0xzz\n";
        assert!(parse_resume_token_contents(text).is_err());
    }

    fn planned(name: &str, guid: u64, base: Option<u64>) -> (SnapshotName, u64, Option<u64>) {
        (SnapshotName::parse(name).unwrap(), guid, base)
    }

    #[test]
    fn only_a_token_for_exactly_the_planned_snapshot_is_resumed() {
        let info = parse_resume_token_contents(fixture!("openzfs-2.1/send-nvt-full.txt")).unwrap();
        let (snap, guid, base) = planned(
            "tank/pgdata@pgzfs-20261122T003000Z",
            0xcbacbe33cd2cad0f,
            None,
        );
        let plan = PlannedTransfer {
            snapshot: &snap,
            guid,
            base_guid: base,
        };
        assert_eq!(token_matches(&info, &plan), Ok(()));
    }

    #[test]
    fn a_forged_token_naming_our_snapshot_with_another_guid_is_aborted() {
        // openzfs#14153: the name is right, the GUID points at some other snapshot.
        let mut info =
            parse_resume_token_contents(fixture!("openzfs-2.1/send-nvt-full.txt")).unwrap();
        info.toguid = 0x1111;
        let (snap, guid, _) = planned(
            "tank/pgdata@pgzfs-20261122T003000Z",
            0xcbacbe33cd2cad0f,
            None,
        );
        let plan = PlannedTransfer {
            snapshot: &snap,
            guid,
            base_guid: None,
        };
        let why = token_matches(&info, &plan).expect_err("a forged token must not be resumed");
        assert!(why.contains("GUID"), "{why}");
    }

    #[test]
    fn a_token_for_an_older_plan_or_another_base_is_aborted() {
        let info =
            parse_resume_token_contents(fixture!("openzfs-2.1/send-nvt-incremental.txt")).unwrap();
        // A newer snapshot was planned: the leftover belongs to an earlier run.
        let (snap, guid, base) = planned(
            "tank/pgdata@pgzfs-20261122T020000Z",
            5,
            Some(0xcbacbe33cd2cad0f),
        );
        let plan = PlannedTransfer {
            snapshot: &snap,
            guid,
            base_guid: base,
        };
        assert!(token_matches(&info, &plan).is_err());
        // Same snapshot, but the plan is a full stream now (e.g. --full).
        let (snap, guid, _) = planned(
            "tank/pgdata@pgzfs-20261122T013000Z",
            0x44f414f9b09512f4,
            None,
        );
        let plan = PlannedTransfer {
            snapshot: &snap,
            guid,
            base_guid: None,
        };
        assert!(token_matches(&info, &plan).is_err());
        // Same snapshot, other base.
        let plan = PlannedTransfer {
            snapshot: &snap,
            guid,
            base_guid: Some(7),
        };
        assert!(token_matches(&info, &plan).is_err());
    }

    fn features_of(usage: &str) -> Features {
        let usage = parse_send_usage(usage);
        Features {
            send_large_blocks: usage.has('L'),
            send_embedded: usage.has('e'),
            send_compressed: usage.has('c'),
            send_raw: usage.has('w'),
            ..Features::default()
        }
    }

    #[test]
    fn send_flags_are_used_only_when_both_ends_know_them() {
        let fuse = features_of(fixture!("zfs-fuse/send-usage.txt"));
        let openzfs = features_of(fixture!("openzfs-2.1/send-usage.txt"));
        assert!(SendOptions::choose(&fuse, &fuse, false).is_plain());
        assert!(SendOptions::choose(&openzfs, &fuse, false).is_plain());
        assert!(SendOptions::choose(&fuse, &openzfs, false).is_plain());
        assert_eq!(
            SendOptions::choose(&openzfs, &openzfs, false).flags(),
            ["-L", "-e", "-c"]
        );
        assert_eq!(
            SendOptions::choose(&openzfs, &openzfs, true).flags(),
            ["-w"]
        );
        // An encrypted dataset on a sender without -w goes the plain way (its key must be
        // loaded), never half raw.
        assert!(SendOptions::choose(&fuse, &fuse, true).is_plain());
    }
}

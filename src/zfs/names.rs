//! Validated ZFS names. Every `zfs` command pgzfs runs, locally or across SSH, is built
//! from these types, so a name that reaches a command line has already been checked.
//!
//! The rules are deliberately stricter than ZFS's own: only ASCII letters, digits and
//! `_ . : -` are accepted. ZFS would also take spaces, '%' in some places and non-ASCII
//! names, but none of those is worth the risk of a name being split, globbed or
//! interpreted by a remote shell. A component may not start with '-' either, so that no
//! name can ever be mistaken for an option.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::{Error, Result};

/// ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL. It bounds full dataset
/// and snapshot names as well as hold tags.
const MAX_NAME_LEN: usize = 255;

/// Prefix of every snapshot pgzfs creates; snapshots without it belong to someone else.
pub const PGZFS_SNAPSHOT_PREFIX: &str = "pgzfs-";

const ALLOWED_CHARS: &str = "letters, digits and _ . : -";

/// A dataset such as `tank/pgdata`: a pool name, then zero or more child components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct DatasetName(String);

/// The part of a snapshot name after '@', e.g. `pgzfs-20261122T003412Z`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct SnapName(String);

/// A full snapshot name such as `tank/pgdata@pgzfs-20261122T003412Z`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct SnapshotName {
    dataset: DatasetName,
    snap: SnapName,
}

/// A tag for `zfs hold` / `zfs release`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct HoldTag(String);

impl DatasetName {
    pub fn parse(text: &str) -> Result<DatasetName> {
        match dataset_problem(text) {
            None => Ok(DatasetName(text.to_string())),
            Some(why) => Err(invalid("dataset name", text, &why)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pool the dataset lives in: the first component.
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The last component, e.g. `pgdata` for `tank/db/pgdata`.
    pub fn last_component(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// A direct child. `name` is one component; use repeated calls for deeper levels so
    /// that a caller's "child" can never silently become a grandchild.
    pub fn child(&self, name: &str) -> Result<DatasetName> {
        if name.contains('/') {
            return Err(invalid(
                "child dataset name",
                name,
                "must be a single component without '/'",
            ));
        }
        DatasetName::parse(&format!("{}/{}", self.0, name))
    }

    /// The parent dataset; None for a pool's root dataset.
    pub fn parent(&self) -> Option<DatasetName> {
        // Every prefix of a valid name ending before a '/' is valid too: same pool name,
        // same components, shorter.
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| DatasetName(parent.to_string()))
    }

    pub fn snapshot(&self, snap: &SnapName) -> SnapshotName {
        SnapshotName {
            dataset: self.clone(),
            snap: snap.clone(),
        }
    }

    /// The name to move this dataset to while a replacement takes its place, e.g.
    /// `tank/pgdata-pgzfs-old-20261122T003412Z`. It stays next to the original (same
    /// parent) so that `zfs rename` never has to move it between pools or parents.
    pub fn renamed_aside(&self, suffix: &str) -> Result<DatasetName> {
        if suffix.is_empty() {
            return Err(invalid(
                "rename suffix",
                suffix,
                "is empty, so the new name would equal the old one",
            ));
        }
        if suffix.contains('/') {
            return Err(invalid(
                "rename suffix",
                suffix,
                "contains '/', which would move the dataset to another parent",
            ));
        }
        if self.parent().is_none() {
            return Err(Error::usage(format!(
                "cannot rename {:?} aside: it is the root dataset of pool {:?}; \
                 configure a child dataset such as \"{}/pgdata\"",
                self.0,
                self.pool(),
                self.0
            )));
        }
        DatasetName::parse(&format!("{}{}", self.0, suffix))
    }
}

impl SnapName {
    pub fn parse(text: &str) -> Result<SnapName> {
        match snap_problem(text) {
            None => Ok(SnapName(text.to_string())),
            Some(why) => Err(invalid("snapshot name", text, &why)),
        }
    }

    /// The name of a snapshot pgzfs takes at `time`: `pgzfs-20261122T003412Z`.
    pub fn pgzfs_at(time: SystemTime) -> SnapName {
        SnapName(format!(
            "{PGZFS_SNAPSHOT_PREFIX}{}",
            crate::timestamp::utc_compact(time)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether pgzfs created this snapshot (and may therefore destroy it).
    pub fn is_pgzfs(&self) -> bool {
        self.0.starts_with(PGZFS_SNAPSHOT_PREFIX)
    }
}

impl SnapshotName {
    pub fn parse(text: &str) -> Result<SnapshotName> {
        let fail = |why: &str| Err(invalid("snapshot name", text, why));
        let Some((dataset, snap)) = text.split_once('@') else {
            return fail("has no '@' separating dataset and snapshot, e.g. \"tank/pgdata@pgzfs-20261122T003412Z\"");
        };
        if snap.contains('@') {
            return fail("contains more than one '@'");
        }
        if text.len() > MAX_NAME_LEN {
            return fail(&too_long(text));
        }
        if let Some(why) = dataset_problem(dataset) {
            return fail(&format!("dataset part: {why}"));
        }
        if let Some(why) = snap_problem(snap) {
            return fail(&format!("part after '@': {why}"));
        }
        Ok(SnapshotName {
            dataset: DatasetName(dataset.to_string()),
            snap: SnapName(snap.to_string()),
        })
    }

    pub fn dataset(&self) -> &DatasetName {
        &self.dataset
    }

    pub fn snap(&self) -> &SnapName {
        &self.snap
    }
}

impl HoldTag {
    pub fn parse(text: &str) -> Result<HoldTag> {
        match component_problem(text) {
            None if text.len() > MAX_NAME_LEN => Err(invalid("hold tag", text, &too_long(text))),
            None => Ok(HoldTag(text.to_string())),
            Some(why) => Err(invalid("hold tag", text, &why)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.dataset, self.snap)
    }
}

impl FromStr for SnapshotName {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        SnapshotName::parse(text)
    }
}

impl TryFrom<String> for SnapshotName {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        SnapshotName::parse(&text)
    }
}

impl Serialize for SnapshotName {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The plumbing shared by the single-string names: printing, `FromStr`, serde.
macro_rules! string_name_impls {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(text: &str) -> Result<Self> {
                $name::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(text: String) -> Result<Self> {
                $name::parse(&text)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    )*};
}

string_name_impls!(DatasetName, SnapName, HoldTag);

/// The message every name error uses. `{:?}` quotes the offending text and escapes
/// control characters, so a newline in a name cannot forge an extra log line.
fn invalid(what: &str, text: &str, why: &str) -> Error {
    Error::usage(format!("invalid {what} {text:?}: {why}"))
}

fn too_long(text: &str) -> String {
    format!(
        "is {} characters long; ZFS allows at most {MAX_NAME_LEN}",
        text.len()
    )
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_string(),
        '\t' => "a tab".to_string(),
        '\n' => "a newline".to_string(),
        '\r' => "a carriage return".to_string(),
        c if c.is_control() => format!("the control character {c:?}"),
        c => format!("{c:?}"),
    }
}

/// Why one '/'-free piece of a name is unacceptable, or None if it is fine.
fn component_problem(component: &str) -> Option<String> {
    if component.is_empty() {
        return Some("is empty".to_string());
    }
    if let Some(bad) = component.chars().find(|&c| !is_name_char(c)) {
        let hint = match bad {
            '@' => " ('@' only separates a dataset from a snapshot name)",
            '#' => " ('#' only separates a dataset from a bookmark name)",
            _ => "",
        };
        return Some(format!(
            "{:?} contains {}{hint}; only {ALLOWED_CHARS} are allowed",
            component,
            describe_char(bad)
        ));
    }
    if component == "." || component == ".." {
        return Some(format!("{component:?} is not allowed as a name"));
    }
    if component.starts_with('-') {
        return Some(format!(
            "{component:?} starts with '-', which would look like a command-line option"
        ));
    }
    None
}

fn dataset_problem(text: &str) -> Option<String> {
    if text.is_empty() {
        return Some("is empty".to_string());
    }
    if text.len() > MAX_NAME_LEN {
        return Some(too_long(text));
    }
    let component_count = text.split('/').count();
    for (index, component) in text.split('/').enumerate() {
        if component.is_empty() {
            let why = if index == 0 {
                "starts with '/'; that looks like a mountpoint, a dataset name starts with its \
                 pool, e.g. \"tank/pgdata\""
            } else if index == component_count - 1 {
                "ends with '/'"
            } else {
                "contains an empty component (\"//\")"
            };
            return Some(why.to_string());
        }
        if let Some(why) = component_problem(component) {
            return Some(format!("component {why}"));
        }
        if index == 0 {
            if let Some(why) = pool_problem(component) {
                return Some(why);
            }
        }
    }
    None
}

/// Pool names have rules of their own: `zpool create` refuses names it could confuse
/// with vdev types or (on illumos) disk devices.
fn pool_problem(pool: &str) -> Option<String> {
    if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some(format!("pool name {pool:?} must start with a letter"));
    }
    let reserved_prefix = ["mirror", "raidz", "draid", "spare"]
        .into_iter()
        .find(|prefix| pool.starts_with(prefix));
    if let Some(prefix) = reserved_prefix {
        return Some(format!(
            "pool name {pool:?} is reserved (names starting with {prefix:?} name vdev types)"
        ));
    }
    if pool == "log" {
        return Some("pool name \"log\" is reserved (it names a vdev type)".to_string());
    }
    let mut chars = pool.chars();
    if chars.next() == Some('c') && chars.next().is_some_and(|c| c.is_ascii_digit()) {
        return Some(format!(
            "pool name {pool:?} is reserved (names like c0t0d0 look like disk devices)"
        ));
    }
    None
}

fn snap_problem(text: &str) -> Option<String> {
    if text.contains('/') {
        return Some("contains '/'; a snapshot name is only the part after '@'".to_string());
    }
    if text.len() > MAX_NAME_LEN {
        return Some(too_long(text));
    }
    component_problem(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    const SHELL_METACHARACTERS: &[char] = &[
        ';', '|', '&', '$', '`', '(', ')', '<', '>', '\'', '"', '\\', ' ', '\t', '\n', '*', '?',
        '[', ']', '{', '}', '!', '~', '#',
    ];

    fn dataset(text: &str) -> DatasetName {
        DatasetName::parse(text).unwrap()
    }

    fn refusal(result: Result<impl fmt::Debug>) -> String {
        let err = result.expect_err("expected the name to be refused");
        assert_eq!(
            err.kind(),
            Kind::Usage,
            "name errors are usage errors (exit 2)"
        );
        err.message().to_string()
    }

    #[test]
    fn ordinary_dataset_names_are_accepted() {
        for name in [
            "tank",
            "tank/pgdata",
            "zroot/var/db/postgres",
            "p_1/a-b.c:d",
            "Tank2/PG_15",
            "tank/pg.data",
            "tank/...dots",
            "tank/x-",
        ] {
            assert_eq!(dataset(name).as_str(), name);
        }
    }

    #[test]
    fn a_dataset_name_with_a_semicolon_is_refused() {
        let message = refusal(DatasetName::parse("tank/pg;rm -rf /"));
        assert!(
            message.contains("\"tank/pg;rm -rf /\""),
            "names the bad name: {message}"
        );
        assert!(message.contains("';'"), "says which character: {message}");
    }

    #[test]
    fn no_shell_metacharacter_is_accepted_anywhere_in_any_name() {
        for &c in SHELL_METACHARACTERS {
            for text in [
                format!("tank/pg{c}data"),
                format!("tank{c}/pgdata"),
                format!("tank/{c}"),
            ] {
                refusal(DatasetName::parse(&text));
            }
            refusal(SnapName::parse(&format!("pgzfs{c}1")));
            refusal(SnapshotName::parse(&format!("tank/pgdata@pgzfs{c}1")));
            refusal(HoldTag::parse(&format!("pgzfs{c}")));
        }
    }

    #[test]
    fn refusals_describe_invisible_characters_in_words() {
        assert!(refusal(DatasetName::parse("tank/pg data")).contains("a space"));
        assert!(refusal(DatasetName::parse("tank/pg\tdata")).contains("a tab"));
        let newline = refusal(DatasetName::parse("tank/pg\ndata"));
        assert!(newline.contains("a newline"));
        assert!(
            !newline.contains('\n'),
            "the message stays on one line: {newline:?}"
        );
        assert!(refusal(DatasetName::parse("tank/pg\u{7}")).contains("control character"));
    }

    #[test]
    fn non_ascii_letters_are_refused() {
        refusal(DatasetName::parse("tank/pgdätä"));
        refusal(DatasetName::parse("tank/pg\u{200b}data"));
        refusal(SnapName::parse("snäp"));
    }

    #[test]
    fn dot_and_dot_dot_components_are_refused() {
        assert!(refusal(DatasetName::parse("tank/..")).contains("\"..\""));
        refusal(DatasetName::parse("tank/../other"));
        refusal(DatasetName::parse("tank/."));
        refusal(SnapName::parse(".."));
        refusal(SnapName::parse("."));
    }

    #[test]
    fn a_component_starting_with_a_dash_is_refused_because_it_looks_like_an_option() {
        assert!(refusal(DatasetName::parse("tank/-R")).contains("option"));
        refusal(DatasetName::parse("-tank"));
        assert!(refusal(SnapName::parse("-F")).contains("option"));
        assert!(refusal(HoldTag::parse("-r")).contains("option"));
    }

    #[test]
    fn empty_names_and_empty_components_are_refused() {
        assert!(refusal(DatasetName::parse("")).contains("empty"));
        assert!(refusal(DatasetName::parse("tank//pgdata")).contains("empty component"));
        assert!(refusal(DatasetName::parse("tank/")).contains("ends with '/'"));
        assert!(refusal(DatasetName::parse("/tank/pgdata")).contains("mountpoint"));
        refusal(SnapName::parse(""));
        refusal(HoldTag::parse(""));
        refusal(SnapshotName::parse("tank/pgdata@"));
        refusal(SnapshotName::parse("@snap"));
    }

    #[test]
    fn an_at_sign_inside_a_dataset_name_is_refused_with_a_hint() {
        let message = refusal(DatasetName::parse("tank/pgdata@snap"));
        assert!(
            message.contains("separates a dataset from a snapshot"),
            "{message}"
        );
        assert!(refusal(DatasetName::parse("tank/pgdata#mark")).contains("bookmark"));
    }

    #[test]
    fn overly_long_names_are_refused() {
        let longest = format!("tank/{}", "a".repeat(MAX_NAME_LEN - 5));
        assert_eq!(longest.len(), 255);
        dataset(&longest);
        let message = refusal(DatasetName::parse(&format!("{longest}a")));
        assert!(message.contains("at most 255"), "{message}");

        SnapName::parse(&"s".repeat(255)).unwrap();
        refusal(SnapName::parse(&"s".repeat(256)));
        HoldTag::parse(&"h".repeat(255)).unwrap();
        refusal(HoldTag::parse(&"h".repeat(256)));
        // The limit applies to the whole snapshot name, not to each half.
        let half = "a".repeat(130);
        refusal(SnapshotName::parse(&format!("tank/{half}@{half}")));
    }

    #[test]
    fn pool_names_must_start_with_a_letter() {
        assert!(refusal(DatasetName::parse("1tank/pgdata")).contains("start with a letter"));
        refusal(DatasetName::parse("_tank"));
        refusal(DatasetName::parse(".tank"));
        // Child components may start with a digit.
        dataset("tank/15");
    }

    #[test]
    fn reserved_pool_names_are_refused() {
        for pool in [
            "mirror", "mirror2", "raidz", "raidz2-0", "draid", "draid1", "spare", "spares", "log",
            "c0", "c1t0d0",
        ] {
            let message = refusal(DatasetName::parse(&format!("{pool}/pgdata")));
            assert!(message.contains("reserved"), "{pool}: {message}");
        }
        // Only the exact word "log" and "c" followed by a digit are reserved.
        for pool in ["logs", "logpool", "catalog", "c", "cx0", "tankmirror"] {
            dataset(&format!("{pool}/pgdata"));
        }
    }

    #[test]
    fn a_dataset_knows_its_pool_parent_and_last_component() {
        let ds = dataset("zroot/var/db/postgres");
        assert_eq!(ds.pool(), "zroot");
        assert_eq!(ds.last_component(), "postgres");
        assert_eq!(ds.parent(), Some(dataset("zroot/var/db")));
        assert_eq!(dataset("zroot").parent(), None);
        assert_eq!(dataset("zroot").pool(), "zroot");
        assert_eq!(dataset("zroot").last_component(), "zroot");
    }

    #[test]
    fn children_are_single_validated_components() {
        let ds = dataset("tank/pg");
        assert_eq!(ds.child("wal").unwrap(), dataset("tank/pg/wal"));
        assert!(refusal(ds.child("a/b")).contains("single component"));
        refusal(ds.child(""));
        refusal(ds.child(".."));
        refusal(ds.child("x;y"));
        refusal(ds.child("-x"));
    }

    #[test]
    fn a_dataset_is_renamed_aside_next_to_itself() {
        let ds = dataset("tank/pgdata");
        let aside = ds.renamed_aside("-pgzfs-old-20261122T003412Z").unwrap();
        assert_eq!(aside.as_str(), "tank/pgdata-pgzfs-old-20261122T003412Z");
        assert_eq!(aside.parent(), ds.parent());
    }

    #[test]
    fn renaming_aside_refuses_suffixes_that_would_move_or_break_the_name() {
        let ds = dataset("tank/pgdata");
        refusal(ds.renamed_aside(""));
        assert!(refusal(ds.renamed_aside("/../x")).contains("another parent"));
        refusal(ds.renamed_aside(" x"));
        refusal(ds.renamed_aside(&"x".repeat(250)));
        assert!(refusal(dataset("tank").renamed_aside("-old")).contains("root dataset"));
    }

    #[test]
    fn snapshot_names_join_and_split_at_the_at_sign() {
        let snap = SnapName::parse("pgzfs-20261122T003412Z").unwrap();
        let full = dataset("tank/pgdata").snapshot(&snap);
        assert_eq!(full.to_string(), "tank/pgdata@pgzfs-20261122T003412Z");
        let parsed = SnapshotName::parse("tank/pgdata@pgzfs-20261122T003412Z").unwrap();
        assert_eq!(parsed, full);
        assert_eq!(parsed.dataset().as_str(), "tank/pgdata");
        assert_eq!(parsed.snap().as_str(), "pgzfs-20261122T003412Z");
    }

    #[test]
    fn malformed_snapshot_names_are_refused() {
        assert!(refusal(SnapshotName::parse("tank/pgdata")).contains("no '@'"));
        assert!(refusal(SnapshotName::parse("tank@a@b")).contains("more than one '@'"));
        assert!(refusal(SnapshotName::parse("tank/pg data@s")).contains("dataset part"));
        assert!(refusal(SnapshotName::parse("tank@s/x")).contains("'/'"));
        assert!(refusal(SnapName::parse("a/b")).contains("'/'"));
        refusal(SnapshotName::parse("mirror@s"));
    }

    #[test]
    fn only_snapshots_with_our_prefix_count_as_ours() {
        assert!(SnapName::parse("pgzfs-20261122T003412Z")
            .unwrap()
            .is_pgzfs());
        assert!(!SnapName::parse("daily-2026-11-22").unwrap().is_pgzfs());
        assert!(!SnapName::parse("pgzfs").unwrap().is_pgzfs());
        assert!(!SnapName::parse("PGZFS-1").unwrap().is_pgzfs());
    }

    #[test]
    fn a_new_pgzfs_snapshot_is_named_after_its_utc_time() {
        let time = UNIX_EPOCH + Duration::from_secs(1_795_307_652);
        let snap = SnapName::pgzfs_at(time);
        assert_eq!(snap.as_str(), "pgzfs-20261122T003412Z");
        assert!(snap.is_pgzfs());
        assert_eq!(SnapName::parse(snap.as_str()).unwrap(), snap);
    }

    #[test]
    fn hold_tags_use_the_name_charset() {
        assert_eq!(HoldTag::parse("pgzfs:db2").unwrap().as_str(), "pgzfs:db2");
        HoldTag::parse("pgzfs-keep_1.0").unwrap();
        refusal(HoldTag::parse("a/b"));
        refusal(HoldTag::parse("a@b"));
    }

    #[test]
    fn names_work_as_set_members_and_sort_as_strings() {
        let mut snaps: Vec<SnapName> = [
            "pgzfs-20261122T003412Z",
            "pgzfs-20251122T003412Z",
            "pgzfs-20261121T235959Z",
        ]
        .into_iter()
        .map(|s| SnapName::parse(s).unwrap())
        .collect();
        snaps.sort();
        assert_eq!(snaps[0].as_str(), "pgzfs-20251122T003412Z");
        assert_eq!(snaps[2].as_str(), "pgzfs-20261122T003412Z");
        let set: HashSet<DatasetName> =
            [dataset("tank/a"), dataset("tank/a"), dataset("tank/b")].into();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn from_str_and_display_round_trip() {
        let ds: DatasetName = "tank/pgdata".parse().unwrap();
        assert_eq!(format!("{ds}"), "tank/pgdata");
        let full: SnapshotName = "tank/pgdata@s1".parse().unwrap();
        assert_eq!(format!("{full}"), "tank/pgdata@s1");
        assert!("tank/pg data".parse::<DatasetName>().is_err());
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct Settings {
        dataset: DatasetName,
        snapshot: SnapshotName,
        tag: HoldTag,
    }

    #[test]
    fn names_deserialize_through_validation_and_serialize_as_plain_strings() {
        let text =
            "dataset = \"tank/pgdata\"\nsnapshot = \"tank/pgdata@pgzfs-1\"\ntag = \"pgzfs\"\n";
        let settings: Settings = toml::from_str(text).unwrap();
        assert_eq!(settings.dataset.as_str(), "tank/pgdata");
        assert_eq!(toml::to_string(&settings).unwrap(), text);

        let err = toml::from_str::<Settings>(
            "dataset = \"tank/pg data\"\nsnapshot = \"t@s\"\ntag = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("invalid dataset name \\\"tank/pg data\\\"")
                || err.contains("invalid dataset name \"tank/pg data\""),
            "{err}"
        );
    }
}

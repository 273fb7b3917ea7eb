//! The zfs(8) implementation of [`Zfs`], on this node or over SSH. It only parses
//! `zfs get -H -p` output, which zfs-fuse and every OpenZFS print the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::features::{self, ResumeToken, ResumeTokenInfo, SendOptions};
use super::names::{DatasetName, HoldTag, SnapshotName};
use super::{prop, CanMount, Features, Snapshot, Zfs};
use crate::error::{Error, Result};
use crate::exec::{Cmd, Output, Runner, Started};
use crate::transfer::{Sink, Source};

pub struct ZfsCli<R: Runner> {
    runner: R,
    zfs: String,
    /// Answers of `features` and `features_for` (by pool), kept for the life of this
    /// value: what zfs(8) on a node can do does not change while one command runs, and
    /// over SSH every probe is a round trip (a re-seed asked the same four questions
    /// three times, about a second of its wall time on the lab).
    probed: Mutex<Option<Features>>,
    probed_pools: Mutex<BTreeMap<String, Features>>,
    /// The usage question of `features`, asked ahead (see `ask_features_ahead`) and not
    /// yet read.
    usage_asked: Mutex<Option<Box<dyn Started>>>,
}

impl<R: Runner> ZfsCli<R> {
    pub fn new(runner: R) -> Self {
        ZfsCli {
            runner,
            zfs: "zfs".to_string(),
            probed: Mutex::new(None),
            probed_pools: Mutex::new(BTreeMap::new()),
            usage_asked: Mutex::new(None),
        }
    }

    /// `zfs hold|release TAG SNAP...`, whatever it answers.
    fn tag_call(&self, verb: &str, tag: &HoldTag, snapshots: &[SnapshotName]) -> Result<Output> {
        self.runner.output(
            &self
                .cmd()
                .arg(verb)
                .arg(tag.as_str())
                .args(snapshots.iter().map(|s| s.to_string())),
        )
    }

    /// Ask what zfs(8) can do now, and read the answer when `features` first wants it.
    /// A re-seed asks right after logging in to its source: the other end answers while
    /// the source's datasets are listed, instead of in a round trip of its own later.
    pub fn ask_features_ahead(&self) {
        if self
            .probed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        let mut asked = self.usage_asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.is_none() {
            // A question that cannot be asked now is asked again when it is wanted.
            *asked = self.runner.start(&self.cmd().arg("send")).ok();
        }
    }

    /// The same, running zfs(8) from `program` (a full path) rather than from PATH.
    pub fn with_program(runner: R, program: impl Into<String>) -> Self {
        ZfsCli {
            zfs: program.into(),
            ..ZfsCli::new(runner)
        }
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(self.zfs.clone())
    }

    /// Run, retrying while zfs says the dataset is busy: right after an unmount or a
    /// process exit, zfs-fuse (and sometimes FreeBSD) still holds the dataset briefly.
    fn run_retrying_busy(&self, cmd: &Cmd) -> Result<String> {
        self.run_retrying(cmd, &["busy"])
    }

    /// Run, retrying while zfs's complaint contains one of `transient`.
    fn run_retrying(&self, cmd: &Cmd, transient: &[&str]) -> Result<String> {
        let mut delay = Duration::from_millis(200);
        for attempt in 1.. {
            let out = self.runner.output(cmd)?;
            if out.success() {
                return Ok(out.stdout);
            }
            if attempt < 10 && transient.iter().any(|t| out.stderr.contains(t)) {
                tracing::debug!(
                    "{}: {}; retrying in {delay:?}",
                    cmd.display(),
                    out.stderr.trim()
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            return Err(failure(cmd, &self.runner.describe(), &out));
        }
        unreachable!()
    }

    /// `zfs get -H -p -o name,property,value` rows: (name, property, value) with "-" as unset.
    fn get_rows(
        &self,
        args: &[&str],
        properties: &[&str],
        object: &str,
    ) -> Result<Option<Vec<(String, String, String)>>> {
        let cmd = self
            .cmd()
            .arg("get")
            .arg("-H")
            .arg("-p")
            .args(args.iter().copied())
            .args(["-o", "name,property,value"])
            .arg(properties.join(","))
            .arg(object);
        let out = self.runner.output(&cmd)?;
        if !out.success() {
            if out.stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(failure(&cmd, &self.runner.describe(), &out));
        }
        Ok(Some(parse_get_rows(&out.stdout)))
    }
}

/// A mountpoint as a `zfs` argument: absolute, without spaces.
fn mountpoint_arg(path: &Path) -> Result<&str> {
    path.to_str()
        .filter(|p| p.starts_with('/') && !p.contains(char::is_whitespace))
        .ok_or_else(|| {
            Error::usage(format!(
                "mountpoint {} must be an absolute path without spaces",
                path.display()
            ))
        })
}

/// `-o mountpoint=... -o pgzfs:...=...` of a new file system (`create`, `clone`), each
/// value checked before it reaches the command line.
fn mounted_with_props(cmd: Cmd, mountpoint: &Path, props: &[(&str, String)]) -> Result<Cmd> {
    let mut cmd = cmd
        .arg("-o")
        .arg(format!("mountpoint={}", mountpoint_arg(mountpoint)?));
    for (name, value) in props {
        validate_user_prop(name, value)?;
        cmd = cmd.arg("-o").arg(format!("{name}={value}"));
    }
    Ok(cmd)
}

fn failure(cmd: &Cmd, location: &str, out: &Output) -> Error {
    Error::failed(format!(
        "`{}` on {location} failed ({}): {}",
        cmd.display(),
        crate::exec::describe_status(out.status),
        out.stderr
    ))
}

/// The `mountpoint` property as a path: None for `none`, `legacy` and `-` (a snapshot,
/// or a dataset that cannot be mounted).
pub fn mountpoint_from_value(value: &str) -> Option<PathBuf> {
    value.starts_with('/').then(|| PathBuf::from(value))
}

pub fn parse_get_rows(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            Some((
                fields.next()?.to_string(),
                fields.next()?.to_string(),
                fields.next()?.to_string(),
            ))
        })
        .collect()
}

/// Turn `zfs get` rows of one dataset's snapshots into [`Snapshot`]s, oldest first.
/// The descendant datasets in `zfs get -r type` rows: filesystems and volumes. OpenZFS
/// lists snapshots (`@`) and bookmarks (`#`) there too; neither is a dataset.
pub fn children_from_rows(
    dataset: &DatasetName,
    rows: &[(String, String, String)],
) -> Result<Vec<DatasetName>> {
    rows.iter()
        .filter(|(name, _, value)| {
            value != "snapshot"
                && value != "bookmark"
                && name != dataset.as_str()
                && !name.contains('@')
                && !name.contains('#')
        })
        .map(|(name, _, _)| DatasetName::parse(name))
        .collect()
}

pub fn snapshots_from_rows(
    dataset: &DatasetName,
    rows: &[(String, String, String)],
) -> Result<Vec<Snapshot>> {
    let prefix = format!("{dataset}@");
    let mut by_name: BTreeMap<&str, Snapshot> = BTreeMap::new();
    for (name, property, value) in rows {
        if !name.starts_with(&prefix) {
            continue; // the dataset itself, or a child's snapshot
        }
        let entry = match by_name.get_mut(name.as_str()) {
            Some(entry) => entry,
            None => {
                let Ok(parsed) = SnapshotName::parse(name) else {
                    // A snapshot someone named outside our rules is not ours to touch.
                    tracing::debug!("ignoring snapshot with unusual name {name:?}");
                    continue;
                };
                by_name.entry(name).or_insert(Snapshot {
                    name: parsed,
                    guid: 0,
                    createtxg: 0,
                    userrefs: 0,
                    props: BTreeMap::new(),
                })
            }
        };
        let number = || {
            value.parse::<u64>().map_err(|_| {
                Error::failed(format!(
                    "zfs get: {name} {property} is not a number: {value:?}"
                ))
            })
        };
        match property.as_str() {
            "guid" => entry.guid = number()?,
            "createtxg" => entry.createtxg = number()?,
            "userrefs" => entry.userrefs = if value == "-" { 0 } else { number()? },
            _ if value != "-" => {
                entry.props.insert(property.clone(), value.clone());
            }
            _ => {}
        }
    }
    let mut snapshots: Vec<Snapshot> = by_name.into_values().collect();
    snapshots.sort_by_key(|s| s.createtxg);
    Ok(snapshots)
}

impl<R: Runner> ZfsCli<R> {
    /// What zfs(8) here can do, from one question: the usage `zfs send` prints. Every
    /// probe is a round trip (over SSH a session and a login shell each), and the usage
    /// settles the rest. `send -t` (resumable streams) came to OpenZFS together with the
    /// `receive_resume_token` property, and long after the `written` property and
    /// multi-snapshot calls; `send -w` came with encryption. So a zfs that lists `-t` has
    /// `written`, and one that lists none of `-t`, `-e`, `-L` predates both (zfs-fuse).
    /// Only in between (illumos and FreeBSD of about 2012 to 2014, long unsupported) is
    /// `written` asked for.
    fn probe_features(&self) -> Result<Features> {
        // `zfs send` without a snapshot prints its usage, which lists every flag it knows.
        let asked = self
            .usage_asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let usage = match asked {
            Some(asked) => asked.finish()?,
            None => self.runner.output(&self.cmd().arg("send"))?,
        };
        let send = features::parse_send_usage(&format!("{}\n{}", usage.stdout, usage.stderr));
        let written = if send.resume {
            true
        } else if send.has('e') || send.has('L') {
            // Ask for the property on the pool's root: an unknown property is an error
            // ("bad property list") on zfs-fuse, a value on OpenZFS.
            let out = self
                .runner
                .output(&self.cmd().args(["get", "-H", "-o", "value", "written"]))?;
            out.success() && !out.stderr.contains("invalid property")
        } else {
            false
        };
        Ok(Features {
            written_property: written,
            multi_snapshot: written,
            // Several properties per `zfs set` came in late 2015, a few months before
            // `send -t` on every line of ZFS: a zfs with `-t` has it; an older one that
            // may have it too is given one call per property, which always works.
            multi_property_set: send.resume,
            send_resume: send.resume,
            // The same change brought `send -t` and the property `receive -s` fills.
            resumable_receive: send.resume,
            send_large_blocks: send.has('L'),
            send_embedded: send.has('e'),
            send_compressed: send.has('c'),
            send_raw: send.has('w'),
            ..Features::default()
        })
    }

    /// User properties on a dataset or snapshot: in one `zfs set` where this zfs takes
    /// several (each call is a round trip, over SSH a session), else one call each, as
    /// zfs-fuse needs. Every name and value is checked before the first call.
    fn set_props(&self, object: &str, props: &[(&str, String)]) -> Result<()> {
        for (name, value) in props {
            validate_user_prop(name, value)?;
        }
        let assignments: Vec<String> = props
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if props.len() > 1 && self.features()?.multi_property_set {
            let all_at_once = self
                .runner
                .run(&self.cmd().arg("set").args(assignments.clone()).arg(object));
            match all_at_once {
                Ok(_) => return Ok(()),
                // A source's `pgzfs serve` from before this form refuses it (a fleet is
                // upgraded one node at a time); one property per call it allows. A
                // multi-property set is one ioctl: nothing of it was applied.
                Err(e) => tracing::info!(
                    "one zfs set for {} properties failed on {} ({e}); setting them one by one",
                    props.len(),
                    self.location()
                ),
            }
        }
        for assignment in assignments {
            self.runner
                .run(&self.cmd().arg("set").arg(assignment).arg(object))?;
        }
        Ok(())
    }

    /// The pool's own part: whether `feature@bookmarks` is enabled. A zfs without
    /// resumable streams has no bookmarks either, and is not asked.
    fn probe_features_for(&self, dataset: &DatasetName) -> Result<Features> {
        let mut found = self.features()?;
        if !found.send_resume {
            return Ok(found);
        }
        let pool = dataset.pool();
        let bookmarks = self.runner.output(&Cmd::new("zpool").args([
            "get",
            "-H",
            "-o",
            "value",
            "feature@bookmarks",
            pool,
        ]))?;
        found.bookmarks =
            features::PoolFeature::parse(bookmarks.success(), &bookmarks.stdout, &bookmarks.stderr)
                .usable();
        Ok(found)
    }
}

impl<R: Runner> Zfs for ZfsCli<R> {
    fn location(&self) -> String {
        self.runner.describe()
    }

    fn features(&self) -> Result<Features> {
        if let Some(known) = *self.probed.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(known);
        }
        let found = self.probe_features()?;
        *self.probed.lock().unwrap_or_else(|e| e.into_inner()) = Some(found);
        Ok(found)
    }

    fn features_for(&self, dataset: &DatasetName) -> Result<Features> {
        let pool = dataset.pool().to_string();
        if let Some(known) = self
            .probed_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pool)
        {
            return Ok(*known);
        }
        let found = self.probe_features_for(dataset)?;
        self.probed_pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pool, found);
        Ok(found)
    }

    fn is_encrypted(&self, dataset: &DatasetName) -> Result<bool> {
        // Encryption and `send -w` came together: a zfs without raw sends has no
        // encrypted datasets, and the round trip is saved.
        if !self.features()?.send_raw {
            return Ok(false);
        }
        let out = self.runner.output(&self.cmd().args([
            "get",
            "-H",
            "-o",
            "value",
            "encryption",
            dataset.as_str(),
        ]))?;
        Ok(
            features::property_known(out.success(), &out.stdout, &out.stderr)
                && !matches!(out.stdout.trim(), "off" | "-"),
        )
    }

    fn send_with(
        &self,
        snapshot: &SnapshotName,
        base: Option<&SnapshotName>,
        options: &SendOptions,
    ) -> Result<Box<dyn Source>> {
        if options.is_plain() {
            // Exactly the command line every ZFS (and the serve endpoint) knows.
            return self.send(snapshot, base);
        }
        let mut cmd = self.cmd().arg("send").args(options.flags());
        if let Some(base) = base {
            cmd = cmd.arg("-i").arg(base.to_string());
        }
        self.runner.source(&cmd.arg(snapshot.to_string()))
    }

    fn receive_resumable(&self, dataset: &DatasetName, rollback: bool) -> Result<Box<dyn Sink>> {
        let mut cmd = self.cmd().args(["receive", "-s", "-u"]);
        if rollback {
            cmd = cmd.arg("-F");
        }
        Ok(Box::new(ReceiveSink(
            self.runner.sink(&cmd.arg(dataset.as_str()))?,
        )))
    }

    fn resume_token(&self, dataset: &DatasetName) -> Result<Option<ResumeToken>> {
        let out = self.runner.output(&self.cmd().args([
            "get",
            "-H",
            "-o",
            "value",
            "receive_resume_token",
            dataset.as_str(),
        ]))?;
        if !out.success() && out.stderr.contains("does not exist") {
            return Ok(None);
        }
        features::parse_resume_token_value(out.success(), &out.stdout, &out.stderr)
    }

    fn describe_resume_token(&self, token: &ResumeToken) -> Result<ResumeTokenInfo> {
        // The exit status is not looked at: zfs prints the contents first and then fails
        // when the snapshot is not on this node under the token's name, which is normal
        // when decoding on the receiving side.
        let out = self
            .runner
            .output(&self.cmd().args(["send", "-nv", "-t", token.as_str()]))?;
        features::parse_resume_token_contents(&format!("{}\n{}", out.stdout, out.stderr))
            .map_err(|e| e.context(format!("decoding a resume token on {}", self.location())))
    }

    fn abort_resumable(&self, dataset: &DatasetName) -> Result<()> {
        self.run_retrying_busy(&self.cmd().args(["receive", "-A", dataset.as_str()]))
            .map(drop)
    }

    fn send_resume(&self, token: &ResumeToken) -> Result<Box<dyn Source>> {
        self.runner
            .source(&self.cmd().args(["send", "-t", token.as_str()]))
    }

    fn bookmark(&self, snapshot: &SnapshotName) -> Result<()> {
        let bookmark = format!("{}#{}", snapshot.dataset(), snapshot.snap());
        self.runner
            .run(
                &self
                    .cmd()
                    .arg("bookmark")
                    .arg(snapshot.to_string())
                    .arg(bookmark),
            )
            .map(drop)
    }

    fn exists(&self, dataset: &DatasetName) -> Result<bool> {
        Ok(self.get_rows(&[], &["type"], dataset.as_str())?.is_some())
    }

    fn snapshots(&self, dataset: &DatasetName) -> Result<Vec<Snapshot>> {
        let mut properties = vec!["guid", "createtxg", "userrefs"];
        properties.extend(prop::ALL);
        let rows = self
            .get_rows(&["-d", "1"], &properties, dataset.as_str())?
            .ok_or_else(|| {
                Error::failed(format!(
                    "dataset {dataset} does not exist on {}",
                    self.location()
                ))
            })?;
        snapshots_from_rows(dataset, &rows)
    }

    fn children(&self, dataset: &DatasetName) -> Result<Vec<DatasetName>> {
        let rows = self
            .get_rows(&["-r"], &["type"], dataset.as_str())?
            .unwrap_or_default();
        children_from_rows(dataset, &rows)
    }

    fn survey(&self, dataset: &DatasetName) -> Result<Option<super::survey::Survey>> {
        match self.get_rows(&["-r"], &super::survey::properties(), dataset.as_str())? {
            Some(rows) => Ok(Some(super::survey::Survey::from_rows(dataset, &rows)?)),
            None => Ok(None),
        }
    }

    fn snapshot_recursive(&self, snapshot: &SnapshotName, props: &[(&str, String)]) -> Result<()> {
        // `-o` takes one property each, and zfs-fuse (pool v23) accepts it too.
        let mut cmd = self.cmd().args(["snapshot", "-r"]);
        for (name, value) in props {
            validate_user_prop(name, value)?;
            cmd = cmd.arg("-o").arg(format!("{name}={value}"));
        }
        self.runner.run(&cmd.arg(snapshot.to_string())).map(drop)
    }

    fn snapshot_recursive_many(
        &self,
        snapshots: &[SnapshotName],
        props: &[(&str, String)],
    ) -> Result<()> {
        if snapshots.len() > 1 && !self.features()?.multi_snapshot {
            return Err(Error::failed(format!(
                "zfs on {} takes one snapshot per call",
                self.location()
            )));
        }
        let mut cmd = self.cmd().args(["snapshot", "-r"]);
        for (name, value) in props {
            validate_user_prop(name, value)?;
            cmd = cmd.arg("-o").arg(format!("{name}={value}"));
        }
        for snapshot in snapshots {
            cmd = cmd.arg(snapshot.to_string());
        }
        self.runner.run(&cmd).map(drop)
    }

    fn set_tuning_props(&self, dataset: &DatasetName, props: &[(&str, String)]) -> Result<()> {
        // One `zfs set` per property: zfs-fuse takes only one property=value per call.
        for (name, value) in props {
            let plain = !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !super::TUNING_PROPERTIES.contains(name) || !plain {
                return Err(Error::failed(format!(
                    "refusing to set {name}={value:?} on {dataset}: not a tuning property or an unexpected value"
                )));
            }
            self.runner.run(
                &self
                    .cmd()
                    .arg("set")
                    .arg(format!("{name}={value}"))
                    .arg(dataset.as_str()),
            )?;
        }
        Ok(())
    }

    fn set_snapshot_props(&self, snapshot: &SnapshotName, props: &[(&str, String)]) -> Result<()> {
        self.set_props(&snapshot.to_string(), props)
    }

    fn get_text(&self, object: &str, property: &str) -> Result<Option<String>> {
        let rows = self.get_rows(&[], &[property], object)?;
        Ok(rows
            .and_then(|rows| rows.first().map(|(_, _, v)| v.clone()))
            .filter(|v| v != "-"))
    }

    fn delegations(&self, dataset: &DatasetName) -> Result<String> {
        self.runner
            .run(&self.cmd().arg("allow").arg(dataset.to_string()))
    }

    fn get_number(&self, object: &str, property: &str) -> Result<Option<u64>> {
        let rows = self.get_rows(&[], &[property], object)?;
        Ok(rows.and_then(|rows| rows.first().and_then(|(_, _, v)| v.parse().ok())))
    }

    fn send(
        &self,
        snapshot: &SnapshotName,
        base: Option<&SnapshotName>,
    ) -> Result<Box<dyn Source>> {
        let mut cmd = self.cmd().arg("send");
        if let Some(base) = base {
            cmd = cmd.arg("-i").arg(base.to_string());
        }
        self.runner.source(&cmd.arg(snapshot.to_string()))
    }

    fn receive(&self, dataset: &DatasetName, rollback: bool) -> Result<Box<dyn Sink>> {
        let mut cmd = self.cmd().arg("receive").arg("-u");
        if rollback {
            cmd = cmd.arg("-F");
        }
        Ok(Box::new(ReceiveSink(
            self.runner.sink(&cmd.arg(dataset.as_str()))?,
        )))
    }

    fn hold(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<()> {
        let out = self.tag_call("hold", tag, std::slice::from_ref(snapshot))?;
        if out.success() || out.stderr.contains("tag already exists") {
            Ok(())
        } else {
            Err(Error::failed(format!(
                "cannot hold {snapshot} on {}: {}",
                self.location(),
                out.stderr
            )))
        }
    }

    fn hold_each(&self, tag: &HoldTag, snapshots: &[SnapshotName]) -> Result<()> {
        if snapshots.len() < 2 {
            return super::hold_one_by_one(self, tag, snapshots);
        }
        // As with release: zfs(8) holds each snapshot named on its own, goes on after a
        // failure and prints one line per failure that names the snapshot.
        let out = self.tag_call("hold", tag, snapshots)?;
        if out.success() {
            return Ok(());
        }
        match failures_by_snapshot(snapshots, &out.stderr) {
            Some(failures) => snapshots
                .iter()
                .zip(failures)
                .try_for_each(|(snapshot, failure)| match failure {
                    Some(line) if !line.contains("tag already exists") => Err(Error::failed(
                        format!("cannot hold {snapshot} on {}: {line}", self.location()),
                    )),
                    _ => Ok(()),
                }),
            // Which ones were held is not known (a `pgzfs serve` from before this form
            // refuses it; a pool-wide error): each is asked on its own, and one already
            // held counts as held.
            None => {
                tracing::info!(
                    "one zfs hold of {} snapshots failed on {} ({}); holding them one by one",
                    snapshots.len(),
                    self.location(),
                    out.stderr.trim()
                );
                super::hold_one_by_one(self, tag, snapshots)
            }
        }
    }

    fn release(&self, tag: &HoldTag, snapshot: &SnapshotName) -> Result<bool> {
        let out = self.tag_call("release", tag, std::slice::from_ref(snapshot))?;
        if out.success() {
            Ok(true)
        } else if out.stderr.contains("no such tag") || out.stderr.contains("no such") {
            Ok(false)
        } else {
            Err(Error::failed(format!(
                "cannot release {snapshot} on {}: {}",
                self.location(),
                out.stderr
            )))
        }
    }

    fn release_each(&self, tag: &HoldTag, snapshots: &[SnapshotName]) -> Result<Vec<bool>> {
        if snapshots.len() < 2 {
            return super::release_one_by_one(self, tag, snapshots);
        }
        // zfs(8) releases each snapshot named on its own and goes on after a failure,
        // printing one line per failure that names the snapshot (zfs-fuse and OpenZFS).
        let out = self.tag_call("release", tag, snapshots)?;
        if out.success() {
            return Ok(vec![true; snapshots.len()]);
        }
        match failures_by_snapshot(snapshots, &out.stderr) {
            Some(failures) => snapshots
                .iter()
                .zip(failures)
                .map(|(snapshot, failure)| match failure {
                    None => Ok(true),
                    Some(line) if line.contains("no such") => Ok(false),
                    Some(line) => Err(Error::failed(format!(
                        "cannot release {snapshot} on {}: {line}",
                        self.location()
                    ))),
                })
                .collect(),
            // A failure that names no snapshot (a `pgzfs serve` from before this form
            // refuses it; a pool-wide error): which ones were released is not known, so
            // each is asked on its own. A second release of one is harmless.
            None => {
                tracing::info!(
                    "one zfs release of {} snapshots failed on {} ({}); releasing them one by one",
                    snapshots.len(),
                    self.location(),
                    out.stderr.trim()
                );
                super::release_one_by_one(self, tag, snapshots)
            }
        }
    }

    fn holds(&self, snapshot: &SnapshotName) -> Result<Option<Vec<HoldTag>>> {
        let out = self
            .runner
            .output(&self.cmd().args(["holds", "-H"]).arg(snapshot.to_string()))?;
        if !out.success() {
            tracing::debug!(
                "zfs holds does not work on {}: {}",
                self.location(),
                out.stderr
            );
            return Ok(None);
        }
        Ok(parse_holds(snapshot, &out.stdout))
    }

    fn destroy_snapshot(&self, snapshot: &SnapshotName) -> Result<()> {
        self.run_retrying_busy(&self.cmd().arg("destroy").arg(snapshot.to_string()))
            .map(drop)
    }

    fn rollback(&self, snapshot: &SnapshotName) -> Result<()> {
        // zfs-fuse answers a rollback right after the unmount with EIO ("I/O error")
        // while its daemon still tears the mount down (seen under load in CI); the
        // rollback itself is idempotent, so asking again is safe.
        self.run_retrying(
            &self.cmd().arg("rollback").arg(snapshot.to_string()),
            &["busy", "I/O error"],
        )
        .map(drop)
    }

    fn clone_snapshot(
        &self,
        snapshot: &SnapshotName,
        clone: &DatasetName,
        mountpoint: &Path,
        props: &[(&str, String)],
    ) -> Result<()> {
        let cmd = mounted_with_props(self.cmd().arg("clone"), mountpoint, props)?;
        self.runner
            .run(&cmd.arg(snapshot.to_string()).arg(clone.as_str()))
            .map(drop)
    }

    fn create_mounted_at(
        &self,
        dataset: &DatasetName,
        mountpoint: &Path,
        props: &[(&str, String)],
    ) -> Result<()> {
        let cmd = mounted_with_props(self.cmd().arg("create"), mountpoint, props)?;
        self.runner.run(&cmd.arg(dataset.as_str())).map(drop)
    }

    fn destroy_dataset_recursive(&self, dataset: &DatasetName) -> Result<()> {
        self.run_retrying_busy(&self.cmd().args(["destroy", "-r"]).arg(dataset.as_str()))
            .map(drop)
    }

    fn rename(&self, from: &DatasetName, to: &DatasetName) -> Result<()> {
        self.run_retrying_busy(&self.cmd().arg("rename").arg(from.as_str()).arg(to.as_str()))
            .map(drop)
    }

    fn is_mounted(&self, dataset: &DatasetName) -> Result<bool> {
        let rows = self.get_rows(&[], &["mounted"], dataset.as_str())?;
        Ok(rows.is_some_and(|rows| rows.iter().any(|(_, _, v)| v == "yes")))
    }

    fn mount(&self, dataset: &DatasetName) -> Result<()> {
        if self.is_mounted(dataset)? {
            return Ok(());
        }
        self.run_retrying_busy(&self.cmd().arg("mount").arg(dataset.as_str()))
            .map(drop)
    }

    fn unmount(&self, dataset: &DatasetName) -> Result<()> {
        if !self.is_mounted(dataset)? {
            return Ok(());
        }
        self.run_retrying_busy(&self.cmd().arg("unmount").arg(dataset.as_str()))
            .map(drop)
    }

    fn mountpoint(&self, dataset: &DatasetName) -> Result<Option<PathBuf>> {
        let rows = self
            .get_rows(&[], &["mountpoint"], dataset.as_str())?
            .unwrap_or_default();
        Ok(rows.first().and_then(|(_, _, v)| mountpoint_from_value(v)))
    }

    fn set_mountpoint(&self, dataset: &DatasetName, path: &Path) -> Result<()> {
        let text = mountpoint_arg(path)?;
        self.runner
            .run(
                &self
                    .cmd()
                    .arg("set")
                    .arg(format!("mountpoint={text}"))
                    .arg(dataset.as_str()),
            )
            .map(drop)
    }

    fn set_dataset_props(&self, dataset: &DatasetName, props: &[(&str, String)]) -> Result<()> {
        self.set_props(dataset.as_str(), props)
    }

    fn set_canmount(&self, dataset: &DatasetName, value: CanMount) -> Result<()> {
        self.runner
            .run(
                &self
                    .cmd()
                    .arg("set")
                    .arg(format!("canmount={}", value.as_str()))
                    .arg(dataset.as_str()),
            )
            .map(drop)
    }
}

/// `zfs holds -H` output: one "NAME<TAB>TAG<TAB>TIMESTAMP" line per hold. Anything else
/// (another snapshot's name, a tag we could not use, a line of a different shape) makes
/// the whole answer unusable: None, "tags unknown", rather than a partial list that
/// could be mistaken for the full one.
pub fn parse_holds(snapshot: &SnapshotName, text: &str) -> Option<Vec<HoldTag>> {
    let name = snapshot.to_string();
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let (Some(of), Some(tag), Some(_when)) = (fields.next(), fields.next(), fields.next())
            else {
                return None;
            };
            if of != name {
                return None;
            }
            HoldTag::parse(tag).ok()
        })
        .collect()
}

/// User property values cross a shell on the remote side; keep them to a safe alphabet.
pub(crate) fn validate_user_prop(name: &str, value: &str) -> Result<()> {
    let safe = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    if name.starts_with("pgzfs:")
        && safe(name, b":_.-")
        && !value.is_empty()
        && value.len() <= 8000
        && safe(value, b"/:._-")
    {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "refusing to set user property {name}={value:?}: unexpected characters"
        )))
    }
}

/// A receive whose failure says whether it passes by itself: zfs-fuse briefly answers
/// "busy", or fails a receive with an I/O error, right after the dataset was unmounted.
/// Both pass within a second or two, and the failed receive committed nothing, so the
/// caller may send the stream again.
struct ReceiveSink(Box<dyn Sink>);

impl Sink for ReceiveSink {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.0.finish().map_err(mark_passing_receive_trouble)
    }

    fn abort(self: Box<Self>) {
        self.0.abort()
    }
}

fn mark_passing_receive_trouble(e: Error) -> Error {
    let text = e.to_string();
    if text.contains("I/O error") || text.contains("busy") {
        e.transient()
    } else {
        e
    }
}

/// Which of `snapshots` a failed multi-snapshot `zfs hold` or `zfs release` reported, by
/// the line that names it ('pool/ds@snap' in quotes, as zfs-fuse and OpenZFS print it):
/// None for one it did. None as a whole when a line names none of them or more than one,
/// or no line names any: then the outcome of some is unknown.
fn failures_by_snapshot<'a>(
    snapshots: &[SnapshotName],
    stderr: &'a str,
) -> Option<Vec<Option<&'a str>>> {
    let quoted: Vec<String> = snapshots.iter().map(|s| format!("'{s}'")).collect();
    let mut failures = vec![None; snapshots.len()];
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut named = quoted
            .iter()
            .enumerate()
            .filter(|(_, q)| line.contains(q.as_str()));
        match (named.next(), named.next()) {
            (Some((i, _)), None) => failures[i] = Some(line),
            _ => return None,
        }
    }
    // It failed, so at least one line must say where.
    failures.iter().any(Option::is_some).then_some(failures)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_receivers_passing_trouble_may_be_tried_again() {
        let io = Error::failed("`zfs receive -u -F tank/pg` failed (exit status 1): cannot receive incremental stream: I/O error");
        assert!(mark_passing_receive_trouble(io).is_transient());
        let busy = Error::failed("cannot unmount: dataset is busy");
        assert!(mark_passing_receive_trouble(busy).is_transient());
        let refused = Error::failed("destination has been modified since most recent snapshot");
        assert!(!mark_passing_receive_trouble(refused).is_transient());
    }

    use super::*;

    /// Answers each zfs call with the next scripted stderr ("" for success) and records
    /// the calls.
    struct Scripted {
        answers: std::sync::Mutex<Vec<&'static str>>,
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl Runner for Scripted {
        fn output(&self, cmd: &Cmd) -> Result<crate::exec::Output> {
            use std::os::unix::process::ExitStatusExt;
            self.calls.lock().unwrap().push(cmd.display());
            let stderr = self.answers.lock().unwrap().remove(0);
            Ok(crate::exec::Output {
                status: std::process::ExitStatus::from_raw(if stderr.is_empty() { 0 } else { 256 }),
                stdout: String::new(),
                stderr: stderr.to_string(),
            })
        }
        fn source(&self, _: &Cmd) -> Result<Box<dyn crate::transfer::Source>> {
            unreachable!()
        }
        fn sink(&self, _: &Cmd) -> Result<Box<dyn crate::transfer::Sink>> {
            unreachable!()
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    #[test]
    fn a_rollback_that_zfs_fuse_answers_with_eio_is_asked_again_and_a_refusal_is_not() {
        let snapshot = SnapshotName::parse("tank/pg@pgzfs-20261202T012058Z").unwrap();
        let zfs = ZfsCli::new(Scripted {
            answers: std::sync::Mutex::new(vec!["cannot rollback 'tank/pg': I/O error", ""]),
            calls: std::sync::Mutex::new(Vec::new()),
        });
        zfs.rollback(&snapshot).expect("the second try succeeds");
        assert_eq!(zfs.runner().calls.lock().unwrap().len(), 2);
        let refusing = ZfsCli::new(Scripted {
            answers: std::sync::Mutex::new(vec![
                "cannot rollback to 'tank/pg@a': more recent snapshots or bookmarks exist",
            ]),
            calls: std::sync::Mutex::new(Vec::new()),
        });
        let e = refusing.rollback(&snapshot).unwrap_err();
        assert!(e.message().contains("more recent snapshots"), "{e}");
        assert_eq!(refusing.runner().calls.lock().unwrap().len(), 1);
    }

    fn scripted(answers: Vec<&'static str>) -> ZfsCli<Scripted> {
        ZfsCli::new(Scripted {
            answers: std::sync::Mutex::new(answers),
            calls: std::sync::Mutex::new(Vec::new()),
        })
    }

    #[test]
    fn old_bases_are_released_in_one_call_and_each_ones_outcome_read_from_its_line() {
        let tag = HoldTag::parse("pgzfs-db1").unwrap();
        let snaps: Vec<SnapshotName> = ["pgzfs-1", "pgzfs-2", "pgzfs-3"]
            .iter()
            .map(|s| SnapshotName::parse(&format!("tank/pg@{s}")).unwrap())
            .collect();
        // zfs-fuse 0.7: pgzfs-2 carries only another standby's hold.
        let zfs_fuse = scripted(vec![
            "cannot release 'pgzfs-db1' from 'tank/pg@pgzfs-2': no such tag on this dataset",
        ]);
        assert_eq!(
            zfs_fuse.release_each(&tag, &snaps).unwrap(),
            [true, false, true]
        );
        assert_eq!(
            *zfs_fuse.runner().calls.lock().unwrap(),
            ["zfs release pgzfs-db1 tank/pg@pgzfs-1 tank/pg@pgzfs-2 tank/pg@pgzfs-3"]
        );
        // OpenZFS words it otherwise.
        let openzfs = scripted(vec![
            "cannot release hold from snapshot 'tank/pg@pgzfs-1': no such tag on this dataset\n\
             cannot release hold from snapshot 'tank/pg@pgzfs-3': no such tag on this dataset",
        ]);
        assert_eq!(
            openzfs.release_each(&tag, &snaps).unwrap(),
            [false, true, false]
        );
        // Any other failure of one is the error, as it would be one call each.
        let gone = scripted(vec![
            "cannot open 'tank/pg@pgzfs-2': dataset does not exist",
        ]);
        let e = gone.release_each(&tag, &snaps).unwrap_err();
        assert!(
            e.message().contains("tank/pg@pgzfs-2") && e.message().contains("does not exist"),
            "{e}"
        );
    }

    #[test]
    fn a_release_refused_or_failed_without_naming_a_snapshot_is_asked_again_one_by_one() {
        let tag = HoldTag::parse("pgzfs-db1").unwrap();
        let snaps: Vec<SnapshotName> = ["pgzfs-1", "pgzfs-2"]
            .iter()
            .map(|s| SnapshotName::parse(&format!("tank/pg@{s}")).unwrap())
            .collect();
        for failure in [
            // a source's pgzfs serve from before the form
            "pgzfs: serve: refused zfs release pgzfs-db1 tank/pg@pgzfs-1 tank/pg@pgzfs-2 from 10.0.0.2: not a command a standby needs from this node",
            // OpenZFS, when the failure is not one snapshot's
            "cannot release: pool I/O is currently suspended",
        ] {
            let zfs = scripted(vec![
                failure,
                "",
                "cannot release 'pgzfs-db1' from 'tank/pg@pgzfs-2': no such tag on this dataset",
            ]);
            assert_eq!(zfs.release_each(&tag, &snaps).unwrap(), [true, false]);
            assert_eq!(
                zfs.runner().calls.lock().unwrap()[1..],
                [
                    "zfs release pgzfs-db1 tank/pg@pgzfs-1",
                    "zfs release pgzfs-db1 tank/pg@pgzfs-2"
                ]
            );
        }
        // One by one, a snapshot that fails does not keep the next from its release.
        let zfs = scripted(vec![
            "pgzfs: serve: refused zfs release pgzfs-db1 tank/pg@pgzfs-1 tank/pg@pgzfs-2 from 10.0.0.2: not a command a standby needs from this node",
            "cannot open 'tank/pg@pgzfs-1': dataset does not exist",
            "",
        ]);
        let e = zfs.release_each(&tag, &snaps).unwrap_err();
        assert!(e.message().contains("does not exist"), "{e}");
        assert_eq!(
            zfs.runner()
                .calls
                .lock()
                .unwrap()
                .last()
                .map(String::as_str),
            Some("zfs release pgzfs-db1 tank/pg@pgzfs-2")
        );
        // A failure with no words at all names nothing either.
        assert_eq!(failures_by_snapshot(&snaps, ""), None);
        assert_eq!(failures_by_snapshot(&snaps, "\n  \n"), None);
    }

    #[test]
    fn new_bases_are_held_in_one_call_and_a_hold_already_there_counts_as_held() {
        let tag = HoldTag::parse("pgzfs-db2").unwrap();
        let snaps: Vec<SnapshotName> = ["tank/pg/wal@pgzfs-3", "tank/pg@pgzfs-3"]
            .iter()
            .map(|s| SnapshotName::parse(s).unwrap())
            .collect();
        let fresh = scripted(vec![""]);
        fresh.hold_each(&tag, &snaps).unwrap();
        assert_eq!(
            *fresh.runner().calls.lock().unwrap(),
            ["zfs hold pgzfs-db2 tank/pg/wal@pgzfs-3 tank/pg@pgzfs-3"]
        );
        // A rerun after a failure later on: the holds it took are still there (zfs-fuse
        // 0.7 and OpenZFS wordings).
        for already in [
            "cannot hold 'tank/pg/wal@pgzfs-3': tag already exists on this dataset",
            "cannot hold snapshot 'tank/pg@pgzfs-3': tag already exists on this dataset",
        ] {
            let zfs = scripted(vec![already]);
            zfs.hold_each(&tag, &snaps).unwrap();
            assert_eq!(zfs.runner().calls.lock().unwrap().len(), 1);
        }
        // Any other failure is the error, and names the snapshot.
        let gone = scripted(vec![
            "cannot hold 'tank/pg/wal@pgzfs-3': dataset does not exist",
        ]);
        let e = gone.hold_each(&tag, &snaps).unwrap_err();
        assert!(
            e.message().contains("tank/pg/wal@pgzfs-3") && e.message().contains("does not exist"),
            "{e}"
        );
        // Refused without naming a snapshot (a serve from before the form): one by one,
        // and the first failure stops the rest.
        let old_serve = scripted(vec![
            "pgzfs: serve: refused zfs hold pgzfs-db2 tank/pg/wal@pgzfs-3 tank/pg@pgzfs-3 from 10.0.0.2: not a command a standby needs from this node",
            "cannot hold 'tank/pg/wal@pgzfs-3': dataset does not exist",
            "",
        ]);
        assert!(old_serve.hold_each(&tag, &snaps).is_err());
        assert_eq!(
            old_serve.runner().calls.lock().unwrap()[1..],
            ["zfs hold pgzfs-db2 tank/pg/wal@pgzfs-3"]
        );
    }

    #[test]
    fn a_new_pg_wal_dataset_is_created_mounted_and_marked_in_one_call() {
        let zfs = ZfsCli::new(Scripted {
            answers: std::sync::Mutex::new(vec![""]),
            calls: std::sync::Mutex::new(Vec::new()),
        });
        let wal = DatasetName::parse("tank/db2/wal").unwrap();
        let mark = [(prop::OWN_PG_WAL, "yes".to_string())];
        zfs.create_mounted_at(&wal, Path::new("/pg/data/pg_wal"), &mark)
            .unwrap();
        let calls = zfs.runner().calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert!(
            calls[0].ends_with(
                "create -o mountpoint=/pg/data/pg_wal -o pgzfs:own_pg_wal=yes tank/db2/wal"
            ),
            "{calls:?}"
        );
        // A mountpoint zfs would split on, or a value outside pgzfs's own, never runs.
        let calls_before = zfs.runner().calls.lock().unwrap().len();
        assert!(zfs
            .create_mounted_at(&wal, Path::new("/pg/my data/pg_wal"), &mark)
            .is_err());
        assert!(zfs
            .create_mounted_at(
                &wal,
                Path::new("/pg/data/pg_wal"),
                &[("mountpoint", "/".into())]
            )
            .is_err());
        assert_eq!(zfs.runner().calls.lock().unwrap().len(), calls_before);
    }

    // Recorded from zfs-fuse 0.7 (pool v23): `zfs get -H -p -d 1 -o name,property,value
    // guid,createtxg,userrefs,pgzfs:lsn tank/pg`.
    const ZFS_FUSE_ROWS: &str = "tank/pg\tguid\t14462023164387696891\n\
tank/pg\tcreatetxg\t7\n\
tank/pg\tuserrefs\t-\n\
tank/pg\tpgzfs:lsn\t-\n\
tank/pg@pgzfs-20261122T003000Z\tguid\t7041035076462376051\n\
tank/pg@pgzfs-20261122T003000Z\tcreatetxg\t18\n\
tank/pg@pgzfs-20261122T003000Z\tuserrefs\t1\n\
tank/pg@pgzfs-20261122T003000Z\tpgzfs:lsn\t0/3000028\n\
tank/pg@manual\tguid\t13960306488084262339\n\
tank/pg@manual\tcreatetxg\t13\n\
tank/pg@manual\tuserrefs\t0\n\
tank/pg@manual\tpgzfs:lsn\t-\n\
tank/pg/wal@manual\tguid\t99\n";

    #[test]
    fn snapshots_are_read_oldest_first_with_holds_and_pgzfs_properties() {
        let rows = parse_get_rows(ZFS_FUSE_ROWS);
        let snaps = snapshots_from_rows(&DatasetName::parse("tank/pg").unwrap(), &rows).unwrap();
        assert_eq!(
            snaps.len(),
            2,
            "the child's snapshot and the dataset itself are not ours"
        );
        assert_eq!(snaps[0].name.to_string(), "tank/pg@manual");
        assert_eq!(snaps[0].guid, 13960306488084262339);
        assert!(!snaps[0].is_held());
        assert_eq!(snaps[1].createtxg, 18);
        assert!(snaps[1].is_held());
        assert_eq!(snaps[1].prop(prop::LSN), Some("0/3000028"));
        assert_eq!(snaps[0].prop(prop::LSN), None);
    }

    #[test]
    fn hold_tags_are_read_from_zfs_holds_and_garbage_means_unknown() {
        let snap = SnapshotName::parse("tank/pg@pgzfs-20261122T003000Z").unwrap();
        // OpenZFS 2.x: `zfs holds -H tank/pg@pgzfs-20261122T003000Z`.
        let text = "tank/pg@pgzfs-20261122T003000Z\tpgzfs-db2\tSun Nov 22 00:30 2026\n\
tank/pg@pgzfs-20261122T003000Z\tpgzfs-db3\tSun Nov 22 00:31 2026\n";
        let tags: Vec<String> = parse_holds(&snap, text)
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(tags, ["pgzfs-db2", "pgzfs-db3"]);
        // Recorded on OpenZFS 2.1.11 (the QEMU guest).
        let recorded = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openzfs-2.1/holds-H.txt"
        ));
        let snap = SnapshotName::parse("tank/pgdata@pgzfs-20261122T003000Z").unwrap();
        let tags: Vec<String> = parse_holds(&snap, recorded)
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(tags, ["pgzfs-db2"]);
        assert_eq!(parse_holds(&snap, ""), Some(vec![]), "no holds at all");
        // zfs-fuse prints an error instead; anything of another shape is not a list.
        assert_eq!(
            parse_holds(&snap, "internal error: /usr/lib/zfs/pyzfs.py not found\n"),
            None
        );
        assert_eq!(
            parse_holds(&snap, "tank/other@x\tpgzfs-db2\tSun Nov 22 00:30 2026\n"),
            None
        );
        assert_eq!(
            parse_holds(
                &snap,
                "tank/pg@pgzfs-20261122T003000Z\tbad tag\tSun Nov 22\n"
            ),
            None
        );
    }

    /// Answers feature probes as a recorded zfs(8) did (tests/fixtures/), and counts them.
    struct Recorded {
        zfs: &'static str,
        asked: std::cell::RefCell<Vec<String>>,
    }
    impl Recorded {
        fn new(zfs: &'static str) -> Recorded {
            Recorded {
                zfs,
                asked: Default::default(),
            }
        }
        fn asked(&self) -> Vec<String> {
            self.asked.borrow().clone()
        }
    }
    impl Runner for Recorded {
        fn output(&self, cmd: &Cmd) -> Result<Output> {
            let line = cmd.display();
            self.asked.borrow_mut().push(line.clone());
            let fixture = |name: &str| {
                let path = format!(
                    "{}/tests/fixtures/{}/{name}",
                    env!("CARGO_MANIFEST_DIR"),
                    self.zfs
                );
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
            };
            let status = |code: i32| std::os::unix::process::ExitStatusExt::from_raw(code << 8);
            Ok(match line.as_str() {
                // zfs send prints its usage on stderr and exits 2.
                "zfs send" => Output {
                    status: status(2),
                    stdout: String::new(),
                    stderr: fixture("send-usage.txt"),
                },
                "zfs get -H -o value written" => Output {
                    status: status(0),
                    stdout: fixture("get-written.txt"),
                    stderr: String::new(),
                },
                l if l.starts_with("zpool get -H -o value feature@bookmarks ") => Output {
                    status: status(0),
                    stdout: fixture("zpool-get-feature-bookmarks.txt"),
                    stderr: String::new(),
                },
                l if l.starts_with("zfs get -H -o value encryption ") => Output {
                    status: status(0),
                    stdout: "off\n".into(),
                    stderr: String::new(),
                },
                l if l.starts_with("zfs set ") => Output {
                    status: status(0),
                    stdout: String::new(),
                    stderr: String::new(),
                },
                other => panic!("not a probe this test expects: {other}"),
            })
        }
        fn source(&self, _: &Cmd) -> Result<Box<dyn Source>> {
            unreachable!()
        }
        fn sink(&self, _: &Cmd) -> Result<Box<dyn Sink>> {
            unreachable!()
        }
        fn describe(&self) -> String {
            format!("recorded {}", self.zfs)
        }
    }

    #[test]
    fn zfs_fuse_is_known_from_its_send_usage_alone() {
        let zfs = ZfsCli::new(Recorded::new("zfs-fuse"));
        let pg = DatasetName::parse("tank/pg").unwrap();
        let found = zfs.features_for(&pg).unwrap();
        assert_eq!(found, Features::default(), "zfs-fuse 0.7 has none of them");
        assert!(!zfs.is_encrypted(&pg).unwrap());
        assert_eq!(zfs.runner().asked(), ["zfs send"], "one round trip in all");
    }

    /// A runner whose `start` is seen: what it was asked to begin, apart from what it ran.
    struct Begun {
        inner: Recorded,
        begun: std::cell::RefCell<Vec<String>>,
    }
    struct Answer(Result<Output>);
    impl crate::exec::Started for Answer {
        fn finish(self: Box<Self>) -> Result<Output> {
            self.0
        }
    }
    impl Runner for Begun {
        fn output(&self, cmd: &Cmd) -> Result<Output> {
            self.inner.output(cmd)
        }
        fn start(&self, cmd: &Cmd) -> Result<Box<dyn crate::exec::Started>> {
            self.begun.borrow_mut().push(cmd.display());
            Ok(Box::new(Answer(self.inner.output(cmd))))
        }
        fn source(&self, _: &Cmd) -> Result<Box<dyn crate::transfer::Source>> {
            unreachable!()
        }
        fn sink(&self, _: &Cmd) -> Result<Box<dyn crate::transfer::Sink>> {
            unreachable!()
        }
        fn describe(&self) -> String {
            "begun".into()
        }
    }

    #[test]
    fn the_usage_asked_ahead_is_the_answer_features_reads_and_is_asked_once() {
        let zfs = ZfsCli::new(Begun {
            inner: Recorded::new("zfs-fuse"),
            begun: Default::default(),
        });
        zfs.ask_features_ahead();
        zfs.ask_features_ahead();
        assert_eq!(*zfs.runner().begun.borrow(), ["zfs send"], "asked once");
        assert_eq!(zfs.features().unwrap(), Features::default());
        assert_eq!(
            zfs.runner().inner.asked(),
            ["zfs send"],
            "the answer begun ahead, not a second question"
        );
        zfs.ask_features_ahead();
        assert_eq!(
            zfs.runner().begun.borrow().len(),
            1,
            "known: not asked again"
        );
    }

    #[test]
    fn openzfs_is_asked_its_send_usage_and_each_pool_its_bookmarks_once() {
        let zfs = ZfsCli::new(Recorded::new("openzfs-2.1"));
        let pg = DatasetName::parse("tank/pg").unwrap();
        let found = zfs.features_for(&pg).unwrap();
        assert_eq!(
            found,
            Features {
                written_property: true,
                resumable_receive: true,
                send_resume: true,
                send_large_blocks: true,
                send_embedded: true,
                send_compressed: true,
                send_raw: true,
                bookmarks: true,
                multi_snapshot: true,
                multi_property_set: true,
            }
        );
        assert_eq!(zfs.features_for(&pg).unwrap(), found);
        assert_eq!(
            zfs.features().unwrap(),
            Features {
                bookmarks: false,
                ..found
            },
            "the pool's features are not the program's"
        );
        assert_eq!(
            zfs.runner().asked(),
            ["zfs send", "zpool get -H -o value feature@bookmarks tank"],
            "no second round trip"
        );
        // Another pool has its own pool features, but the zfs(8) answers are reused.
        zfs.features_for(&DatasetName::parse("other/pg").unwrap())
            .unwrap();
        assert_eq!(zfs.runner().asked().len(), 3);
        // An OpenZFS with raw sends may hold encrypted datasets: that one is asked.
        assert!(!zfs.is_encrypted(&pg).unwrap());
        assert_eq!(zfs.runner().asked().len(), 4);
    }

    /// The cut's record (stop LSN, backup_label) is several properties set at once on
    /// a snapshot of the source, over SSH: one round trip where the zfs takes them all.
    #[test]
    fn a_cuts_record_is_one_zfs_set_on_openzfs_and_one_per_property_on_zfs_fuse() {
        let snap = SnapshotName::parse("tank/pg@pgzfs-20261202T150000Z").unwrap();
        let record = [
            ("pgzfs:stop_lsn", "0/3000138".to_string()),
            ("pgzfs:backup_label", "5354415254".to_string()),
        ];
        let openzfs = ZfsCli::new(Recorded::new("openzfs-2.1"));
        openzfs.set_snapshot_props(&snap, &record).unwrap();
        assert_eq!(
            openzfs.runner().asked(),
            [
                "zfs send",
                "zfs set pgzfs:stop_lsn=0/3000138 pgzfs:backup_label=5354415254 tank/pg@pgzfs-20261202T150000Z"
            ]
        );
        // The answer is kept: the next record costs one call, the single property too.
        openzfs.set_snapshot_props(&snap, &record).unwrap();
        openzfs.set_snapshot_props(&snap, &record[..1]).unwrap();
        assert_eq!(openzfs.runner().asked().len(), 4);

        let fuse = ZfsCli::new(Recorded::new("zfs-fuse"));
        fuse.set_snapshot_props(&snap, &record).unwrap();
        assert_eq!(
            fuse.runner().asked(),
            [
                "zfs send",
                "zfs set pgzfs:stop_lsn=0/3000138 tank/pg@pgzfs-20261202T150000Z",
                "zfs set pgzfs:backup_label=5354415254 tank/pg@pgzfs-20261202T150000Z"
            ]
        );
        // An older `pgzfs serve` on the source refuses the new form: one call each.
        let old_serve = ZfsCli::new(Scripted {
            answers: std::sync::Mutex::new(vec![
                include_str!("../../tests/fixtures/openzfs-2.1/send-usage.txt"),
                "pgzfs serve: refused: not a command pgzfs uses",
                "",
                "",
            ]),
            calls: std::sync::Mutex::new(Vec::new()),
        });
        old_serve.set_snapshot_props(&snap, &record).unwrap();
        assert_eq!(
            old_serve.runner().calls.lock().unwrap()[2..],
            [
                "zfs set pgzfs:stop_lsn=0/3000138 tank/pg@pgzfs-20261202T150000Z",
                "zfs set pgzfs:backup_label=5354415254 tank/pg@pgzfs-20261202T150000Z"
            ]
        );
        // A bad name is refused before any call sets the good one before it.
        let fuse = ZfsCli::new(Recorded::new("zfs-fuse"));
        let bad = [("pgzfs:ok", "1".to_string()), ("no-colon", "2".to_string())];
        assert!(fuse.set_snapshot_props(&snap, &bad).is_err());
        assert!(
            fuse.runner().asked().is_empty(),
            "{:?}",
            fuse.runner().asked()
        );
    }

    #[test]
    fn children_leave_out_snapshots_and_bookmarks() {
        // Recorded on OpenZFS 2.1.11 (the QEMU guest of scripts/openzfs-vm) after a
        // bookmark was made: `zfs get -H -p -r -o name,property,value type tank/pgdata`.
        let mut rows = parse_get_rows(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/openzfs-2.1/get-r-type-with-bookmark.txt"
        )));
        rows.push((
            "tank/pgdata/wal".to_string(),
            "type".to_string(),
            "filesystem".to_string(),
        ));
        let children =
            children_from_rows(&DatasetName::parse("tank/pgdata").unwrap(), &rows).unwrap();
        assert_eq!(
            children.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            ["tank/pgdata/wal"]
        );
    }

    #[test]
    fn a_garbled_guid_is_an_error_not_a_zero() {
        let rows = parse_get_rows("tank/pg@a\tguid\tabc\n");
        assert!(snapshots_from_rows(&DatasetName::parse("tank/pg").unwrap(), &rows).is_err());
    }

    #[test]
    fn user_property_values_are_kept_to_a_shell_safe_alphabet() {
        assert!(validate_user_prop(prop::LSN, "0/3000028").is_ok());
        assert!(validate_user_prop(prop::BACKUP_LABEL, "5354415254").is_ok());
        assert!(validate_user_prop(prop::LSN, "0/1; reboot").is_err());
        assert!(validate_user_prop("mountpoint", "/x").is_err());
    }
}

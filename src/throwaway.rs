//! A throwaway PostgreSQL on a clone of a snapshot: what `pgzfs verify` checks and what
//! `pgzfs clone` hands to an operator.
//!
//! The clone is a new dataset next to this node's own (`<dataset>-pgzfs-verify-...` or
//! `<dataset>-pgzfs-clone-NAME`), with each descendant of a dataset tree cloned below it,
//! mounted under a private directory. It is never the node's dataset, and it never
//! replicates or archives: the server starts with its settings on the command line
//! (which overrides every configuration file in the copy), without standby.signal or
//! recovery.signal, so it runs crash recovery to the end of the snapshot's own WAL (a ZFS
//! snapshot is an atomic image, like a power cut) and comes up as a primary of its own.
//!
//! The copy's data directory was written by the PostgreSQL OS user: every change pgzfs
//! makes there goes through [`crate::safe_dir`], so a planted symlink is never followed.
//! Symlinks that PostgreSQL itself follows (pg_wal, pg_tblspc/*) must point into the
//! cloned datasets; a link into the live datasets is re-pointed at its clone, and a link
//! anywhere else is refused, since the throwaway server would write through it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Node;
use crate::error::{Error, Result};
use crate::pg::ctl::PgCtl;
use crate::safe_dir::{parent_of, Dir};
use crate::zfs::names::{DatasetName, HoldTag, SnapshotName};
use crate::zfs::{prop, Zfs};

/// What a throwaway is for; it names the clone and goes into its `pgzfs:throwaway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// `pgzfs verify`: trust on a private socket only, no TCP, small shared_buffers.
    Verify { stamp: String },
    /// `pgzfs clone`: the cluster's own pg_hba.conf, listening on localhost.
    Clone { name: String },
}

impl Purpose {
    fn suffix(&self) -> String {
        match self {
            Purpose::Verify { stamp } => format!("-pgzfs-verify-{stamp}"),
            Purpose::Clone { name } => format!("-pgzfs-clone-{name}"),
        }
    }

    /// The start of its private directory's name (then random characters).
    fn dir_prefix(&self) -> String {
        match self {
            Purpose::Verify { .. } => "pgzfs-verify-".to_string(),
            Purpose::Clone { name } => format!("pgzfs-clone-{name}-"),
        }
    }

    pub fn marker(&self) -> String {
        match self {
            Purpose::Verify { stamp } => format!("verify:{stamp}"),
            Purpose::Clone { name } => format!("clone:{name}"),
        }
    }

    /// The clone's root dataset for `dataset`: a sibling, so it is never the dataset
    /// itself nor inside it.
    pub fn clone_name(&self, dataset: &DatasetName) -> Result<DatasetName> {
        dataset.renamed_aside(&self.suffix())
    }
}

/// A name for `pgzfs clone --name`: one plain word, so that it fits a dataset name.
pub fn check_clone_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid clone name {name:?}: use up to 40 letters, digits, '_' and '-', starting with a letter or digit"
        )))
    }
}

/// One dataset of the tree: where the live one is mounted and where its clone is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub live: PathBuf,
    pub clone: PathBuf,
}

/// Where a symlink found in the copy must point instead: the same place in the clone when
/// it points into a cloned dataset; an error when it points anywhere else.
pub fn relink(target: &Path, mappings: &[Mapping], what: &str) -> Result<Option<PathBuf>> {
    if target.is_relative() {
        if target
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::refused(format!(
                "{what} is a symlink to {} (with '..'), which may lead out of the snapshot; \
                 the throwaway server could write through it",
                target.display()
            )));
        }
        return Ok(None);
    }
    let best = mappings
        .iter()
        .filter(|m| target.starts_with(&m.live))
        .max_by_key(|m| m.live.components().count());
    match best {
        Some(m) => {
            let rest = target.strip_prefix(&m.live).expect("checked prefix");
            if rest
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Error::refused(format!(
                    "{what} is a symlink to {}, which is not a plain path",
                    target.display()
                )));
            }
            Ok(Some(m.clone.join(rest)))
        }
        None => Err(Error::refused(format!(
            "{what} is a symlink to {}, outside the snapshot's datasets: the throwaway \
             server would write there; refusing",
            target.display()
        ))),
    }
}

/// The throwaway while it exists. [`Throwaway::teardown`] stops the server and destroys
/// the clone; dropping it without does the same (an error path, a panic).
pub struct Throwaway<'z> {
    zfs: &'z dyn Zfs,
    node_dataset: DatasetName,
    pub purpose: Purpose,
    pub snapshot: SnapshotName,
    /// The clone's root dataset.
    pub dataset: DatasetName,
    /// root-owned, 0711: `mnt/` (the clone), `sock/` (0700, the server's socket),
    /// `server.log`, and for verify `pg_hba.conf`.
    pub private_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub port: u16,
    pub major: u32,
    pgctl: PgCtl,
    /// Whether pgzfs created the clone (and so must destroy it).
    cloned: bool,
    done: bool,
}

/// Where and how to make one.
pub struct Spec<'a> {
    pub node: &'a Node,
    pub snapshot: SnapshotName,
    pub purpose: Purpose,
    pub port: u16,
}

impl<'z> Throwaway<'z> {
    /// Clone the snapshot (tree) and make its data directory safe to start. The server
    /// is not started yet.
    pub fn create(zfs: &'z dyn Zfs, spec: Spec<'_>) -> Result<Throwaway<'z>> {
        let node = spec.node;
        let dataset = &node.dataset;
        if spec.snapshot.dataset() != dataset {
            return Err(Error::usage(format!(
                "{} is not a snapshot of this node's dataset {dataset}",
                spec.snapshot
            )));
        }
        let clone_root = spec.purpose.clone_name(dataset)?;
        if zfs.exists(&clone_root)? {
            return Err(Error::refused(format!(
                "{clone_root} already exists; drop it first (pgzfs clone --drop) or choose another name"
            )));
        }
        let user = nix::unistd::User::from_name(&node.pg.pg_os_user)
            .map_err(|e| Error::failed(format!("cannot look up {}: {e}", node.pg.pg_os_user)))?
            .ok_or_else(|| {
                Error::usage(format!("OS user {:?} does not exist", node.pg.pg_os_user))
            })?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());

        // The live tree and where each of its datasets is mounted.
        let live_root = match &node.mountpoint {
            Some(path) => path.clone(),
            None => zfs.mountpoint(dataset)?.ok_or_else(|| {
                Error::failed(format!(
                    "{dataset} has no mountpoint, so the data directory cannot be found in its clone"
                ))
            })?,
        };
        let private_dir = make_private_dir(&spec.purpose)?;
        let mut this = Throwaway {
            zfs,
            node_dataset: dataset.clone(),
            purpose: spec.purpose.clone(),
            snapshot: spec.snapshot.clone(),
            dataset: clone_root.clone(),
            socket_dir: private_dir.join("sock"),
            log_file: private_dir.join("server.log"),
            data_dir: PathBuf::new(),
            port: spec.port,
            major: 0,
            pgctl: PgCtl::new(
                &node.pg.pg_bin,
                &private_dir,
                &private_dir.join("server.log"),
                &node.pg.pg_os_user,
            )?,
            private_dir,
            cloned: false,
            done: false,
        };
        // From here on, a failure tears down what exists (Drop).
        let mnt = this.private_dir.join("mnt");
        let mut mappings = vec![Mapping {
            live: live_root.clone(),
            clone: mnt.clone(),
        }];
        let marker = [(prop::THROWAWAY, spec.purpose.marker())];
        zfs.clone_snapshot(&spec.snapshot, &clone_root, &mnt, &marker)
            .map_err(|e| e.context(format!("cloning {}", spec.snapshot)))?;
        this.cloned = true;
        for (i, child) in zfs.children(dataset)?.into_iter().enumerate() {
            let relative = child
                .as_str()
                .strip_prefix(&format!("{dataset}/"))
                .ok_or_else(|| Error::failed(format!("{child} is not below {dataset}")))?;
            let mut clone_child = clone_root.clone();
            for part in relative.split('/') {
                clone_child = clone_child.child(part)?;
            }
            let live = zfs.mountpoint(&child)?;
            let clone_mp = match live.as_ref().and_then(|l| l.strip_prefix(&live_root).ok()) {
                Some(rest) => mnt.join(rest),
                None => this.private_dir.join(format!("tree{i}")),
            };
            let child_snapshot = child.snapshot(spec.snapshot.snap());
            zfs.clone_snapshot(&child_snapshot, &clone_child, &clone_mp, &[])
                .map_err(|e| match crate::datasets::is_own_pg_wal(zfs, &child) {
                    // A standby that streams its WAL holds no pg_wal of the primary's cuts.
                    Ok(true) => Error::refused(format!(
                        "{child} is this node's own pg_wal (send_pg_wal = false): the WAL of \
                         {} was never received here, so the copy cannot start from it. Use the \
                         snapshot on the primary, or set send_pg_wal = true and re-seed with --full",
                        spec.snapshot
                    )),
                    _ => e.context(format!("cloning {child_snapshot} (part of the tree)")),
                })?;
            if let Some(live) = live {
                mappings.push(Mapping {
                    live,
                    clone: clone_mp,
                });
            }
        }

        // The data directory: in whichever dataset of the tree holds it.
        let holder = mappings
            .iter()
            .filter(|m| node.data_dir.starts_with(&m.live))
            .max_by_key(|m| m.live.components().count())
            .ok_or_else(|| {
                Error::usage(format!(
                    "data_dir {} is not below the mountpoint {} of {dataset} (or of a dataset below it)",
                    node.data_dir.display(),
                    live_root.display()
                ))
            })?
            .clone();
        let relative = node
            .data_dir
            .strip_prefix(&holder.live)
            .expect("checked prefix")
            .to_path_buf();
        let data = Dir::open_beneath(&holder.clone, &relative).map_err(|e| {
            e.context(format!(
                "the data directory in the clone of {}",
                spec.snapshot
            ))
        })?;
        this.data_dir = data.path().to_path_buf();
        // Recorded on the clone, so that a later run can stop its server (a clone's
        // --drop, or the removal of a killed verify's leftover).
        zfs.set_dataset_props(
            &clone_root,
            &[(CLONE_DATA_DIR, this.data_dir.display().to_string())],
        )?;
        this.pgctl = PgCtl::new(
            &node.pg.pg_bin,
            &this.data_dir,
            &this.log_file,
            &node.pg.pg_os_user,
        )?;
        this.major = prepare_data_dir(&data, &mappings, &spec.purpose)?;
        let binary = this.pgctl.binary_major()?;
        if binary != this.major {
            return Err(Error::failed(format!(
                "the snapshot holds a PostgreSQL {} cluster, but pg_bin {} is PostgreSQL {binary}",
                this.major,
                node.pg.pg_bin.display()
            )));
        }

        // The private files: the socket directory only the server's user may enter, its
        // log, and for verify an hba file that lets only local socket connections in.
        std::fs::create_dir(&this.socket_dir).map_err(|e| {
            Error::failed(format!("cannot create {}: {e}", this.socket_dir.display()))
        })?;
        nix::unistd::chown(&this.socket_dir, Some(uid.into()), Some(gid.into())).map_err(|e| {
            Error::failed(format!("cannot chown {}: {e}", this.socket_dir.display()))
        })?;
        set_mode(&this.socket_dir, 0o700)?;
        let (private, log_name) = parent_of(&this.log_file, None)?;
        private.create_file(&log_name, b"", 0o600, Some((uid, gid)))?;
        if matches!(spec.purpose, Purpose::Verify { .. }) {
            private.create_file(
                "pg_hba.conf",
                b"# pgzfs verify: the private socket only\nlocal all all trust\n",
                0o644,
                None,
            )?;
        }
        Ok(this)
    }

    /// The settings the server starts with, over anything the copy's files say.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut s = vec![
            ("data_directory", self.data_dir.display().to_string()),
            ("port", self.port.to_string()),
            (
                "unix_socket_directories",
                self.socket_dir.display().to_string(),
            ),
            ("archive_mode", "off".to_string()),
            ("synchronous_standby_names", String::new()),
            ("logging_collector", "off".to_string()),
            ("log_destination", "stderr".to_string()),
        ];
        if self.major >= 12 {
            s.push(("primary_conninfo", String::new()));
            s.push(("primary_slot_name", String::new()));
            s.push(("restore_command", String::new()));
        }
        match &self.purpose {
            Purpose::Verify { .. } => {
                s.push(("listen_addresses", String::new()));
                s.push((
                    "hba_file",
                    self.private_dir.join("pg_hba.conf").display().to_string(),
                ));
                s.push(("shared_buffers", "128MB".to_string()));
                s.push(("cluster_name", "pgzfs-verify".to_string()));
            }
            Purpose::Clone { name } => {
                s.push(("listen_addresses", "localhost".to_string()));
                s.push(("cluster_name", format!("pgzfs-clone-{name}")));
            }
        }
        s
    }

    /// Start the server and wait until it accepts connections (recovery done).
    pub fn start(&self, timeout: Duration) -> Result<()> {
        self.pgctl
            .start_with(timeout, &self.settings())
            .map_err(|e| Error::failed(format!("{}\n{}", e.message(), self.log_tail())))
    }

    pub fn stop(&self, timeout: Duration) -> Result<&'static str> {
        self.pgctl.stop(timeout)
    }

    pub fn pgctl(&self) -> &PgCtl {
        &self.pgctl
    }

    /// The end of the server's log, for a failure message (control characters dropped).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log_file).unwrap_or_default();
        let start = text.len().saturating_sub(1500);
        let tail: String = String::from_utf8_lossy(&text[start..])
            .chars()
            .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
            .collect();
        format!("server log ({}):\n{}", self.log_file.display(), tail.trim())
    }

    /// Keep the clone and its server (`pgzfs clone`): nothing is torn down on drop.
    pub fn keep(mut self) {
        self.done = true;
    }

    /// Stop the server and destroy the clone and the private directory.
    pub fn teardown(mut self) -> Result<()> {
        self.done = true;
        teardown_parts(
            self.zfs,
            &self.node_dataset,
            &self.dataset,
            &self.purpose,
            self.cloned,
            &self.pgctl,
            &self.private_dir,
        )
    }
}

impl Drop for Throwaway<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Err(e) = teardown_parts(
            self.zfs,
            &self.node_dataset,
            &self.dataset,
            &self.purpose,
            self.cloned,
            &self.pgctl,
            &self.private_dir,
        ) {
            tracing::error!("cleaning up the throwaway clone {}: {e}", self.dataset);
        }
    }
}

/// Stop a throwaway's server (if it runs) and destroy its clone, after checking that the
/// dataset is one: never the node's own dataset, named and marked as a throwaway.
pub fn teardown_parts(
    zfs: &dyn Zfs,
    node_dataset: &DatasetName,
    clone: &DatasetName,
    purpose: &Purpose,
    cloned: bool,
    pgctl: &PgCtl,
    private_dir: &Path,
) -> Result<()> {
    let stopped = pgctl.stop(Duration::from_secs(30));
    if let Err(e) = &stopped {
        tracing::error!("stopping the throwaway server: {e}");
    }
    if cloned {
        ensure_throwaway(zfs, node_dataset, clone, purpose)?;
        zfs.destroy_dataset_recursive(clone)
            .map_err(|e| e.context(format!("destroying the throwaway clone {clone}")))?;
        tracing::info!("destroyed the throwaway clone {clone}");
    }
    std::fs::remove_dir_all(private_dir)
        .map_err(|e| Error::failed(format!("cannot remove {}: {e}", private_dir.display())))?;
    stopped.map(drop)
}

/// Refuse to touch a dataset that is not exactly the throwaway `purpose` names.
pub fn ensure_throwaway(
    zfs: &dyn Zfs,
    node_dataset: &DatasetName,
    clone: &DatasetName,
    purpose: &Purpose,
) -> Result<()> {
    let expected = purpose.clone_name(node_dataset)?;
    let marker = zfs.get_text(clone.as_str(), prop::THROWAWAY)?;
    if clone == node_dataset
        || clone != &expected
        || clone.as_str().starts_with(&format!("{node_dataset}/"))
        || marker.as_deref() != Some(purpose.marker().as_str())
    {
        return Err(Error::refused(format!(
            "{clone} is not a pgzfs throwaway clone of {node_dataset} ({} is {marker:?}); not destroying it",
            prop::THROWAWAY
        )));
    }
    Ok(())
}

/// Remove what would make the copy act as the server it was taken from, re-point its
/// links into the clone, and return its major version (from PG_VERSION).
fn prepare_data_dir(data: &Dir, mappings: &[Mapping], purpose: &Purpose) -> Result<u32> {
    let version = data.read_trusted("PG_VERSION")?.ok_or_else(|| {
        Error::failed(format!(
            "{} has no PG_VERSION: the snapshot holds no PostgreSQL data directory there",
            data.path().display()
        ))
    })?;
    let version = String::from_utf8_lossy(&version);
    let major = crate::pg::control::parse_major(version.trim()).ok_or_else(|| {
        Error::failed(format!(
            "{}/PG_VERSION says {:?}",
            data.path().display(),
            version.trim()
        ))
    })?;
    // The running server's lock file would make the start refuse (or worse, name a live
    // process); the signal files and recovery.conf would make it a standby.
    for leftover in [
        "postmaster.pid",
        "postmaster.opts",
        "standby.signal",
        "recovery.signal",
        "recovery.conf",
    ] {
        data.remove(leftover)?;
    }
    if matches!(purpose, Purpose::Clone { .. }) {
        // A long-lived clone would keep the original's slots, and their WAL, for ever.
        if let Some(slots) = data.subdir("pg_replslot")? {
            slots.clear()?;
        }
    }
    if let Some(target) = data.read_link("pg_wal")? {
        if let Some(new) = relink(&target, mappings, "pg_wal")? {
            data.replace_link("pg_wal", &new)?;
        }
    }
    if let Some(tablespaces) = data.subdir("pg_tblspc")? {
        for entry in tablespaces.names()? {
            if let Some(target) = tablespaces.read_link(&entry)? {
                let what = format!("pg_tblspc/{entry}");
                if let Some(new) = relink(&target, mappings, &what)? {
                    tablespaces.replace_link(&entry, &new)?;
                }
            }
        }
    }
    Ok(major)
}

fn make_private_dir(purpose: &Purpose) -> Result<PathBuf> {
    let template = std::env::temp_dir().join(format!("{}XXXXXX", purpose.dir_prefix()));
    let dir = nix::unistd::mkdtemp(&template)
        .map_err(|e| Error::failed(format!("cannot create {}: {e}", template.display())))?;
    // Others may pass through (the server's user reaches sock/ and mnt/), not list it.
    set_mode(&dir, 0o711)?;
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::failed(format!("cannot chmod {}: {e}", path.display())))
}

/// A TCP port nobody listens on right now (for verify, whose server listens on no TCP
/// address at all, it only names the socket file).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::failed(format!("cannot find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::failed(format!("cannot find a free port: {e}")))
}

/// Where a clone's server keeps its data directory and which port it listens on,
/// recorded on the clone dataset (by root, so `--drop` can trust them).
pub const CLONE_DATA_DIR: &str = "pgzfs:clone_data_dir";
pub const CLONE_PORT: &str = "pgzfs:clone_port";

/// The hold that keeps a clone's origin snapshot from retention.
pub fn hold_tag(name: &str) -> Result<HoldTag> {
    HoldTag::parse(&format!("pgzfs-clone-{name}"))
}

/// Stop and destroy the clone `name` of this node, and release its snapshot.
pub fn drop_clone(zfs: &dyn Zfs, node: &crate::config::Node, name: &str) -> Result<()> {
    let purpose = Purpose::Clone {
        name: name.to_string(),
    };
    let clone = purpose.clone_name(&node.dataset)?;
    if !zfs.exists(&clone)? {
        return Err(Error::failed(format!("there is no clone {name} ({clone})")));
    }
    if let Some(origin) = remove_existing(zfs, node, &purpose)? {
        zfs.release(&hold_tag(name)?, &origin)?;
    }
    Ok(())
}

/// Verify clones of this node's dataset left by a run that was killed (SIGKILL, a
/// crash) before it could clean up: stop their servers and destroy them. The caller
/// holds the node's lock, which every verify holds, so none of them is in use.
pub fn remove_leftover_verify_clones(zfs: &dyn Zfs, node: &crate::config::Node) -> Result<()> {
    let Some(parent) = node.dataset.parent() else {
        return Ok(());
    };
    let prefix = format!("{}-pgzfs-verify-", node.dataset);
    for sibling in zfs.children(&parent)? {
        let Some(stamp) = sibling.as_str().strip_prefix(&prefix) else {
            continue;
        };
        if stamp.contains('/') {
            continue;
        }
        let purpose = Purpose::Verify {
            stamp: stamp.to_string(),
        };
        tracing::warn!("removing {sibling}, left behind by a verify that did not finish");
        remove_existing(zfs, node, &purpose)?;
    }
    Ok(())
}

/// Stop the server of an existing throwaway and destroy it, after checking it is one;
/// returns its origin snapshot.
fn remove_existing(
    zfs: &dyn Zfs,
    node: &crate::config::Node,
    purpose: &Purpose,
) -> Result<Option<SnapshotName>> {
    let clone = purpose.clone_name(&node.dataset)?;
    ensure_throwaway(zfs, &node.dataset, &clone, purpose)?;
    let mountpoint = zfs
        .mountpoint(&clone)?
        .ok_or_else(|| Error::failed(format!("{clone} has no mountpoint")))?;
    // The private directory pgzfs made for it: the mountpoint's parent, named for it.
    let private_dir = mountpoint
        .parent()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&purpose.dir_prefix()))
        })
        .ok_or_else(|| {
            Error::refused(format!(
                "{clone} is mounted at {}, not in a directory pgzfs made for it; not touching it",
                mountpoint.display()
            ))
        })?
        .to_path_buf();
    // Without a recorded data directory (killed before it was known) no server ran.
    let data_dir = zfs
        .get_text(clone.as_str(), CLONE_DATA_DIR)?
        .map(PathBuf::from)
        .filter(|d| d.starts_with(&private_dir))
        .unwrap_or_else(|| private_dir.clone());
    let origin = zfs
        .get_text(clone.as_str(), "origin")?
        .map(|o| SnapshotName::parse(&o))
        .transpose()?;
    let pgctl = PgCtl::new(
        &node.pg.pg_bin,
        &data_dir,
        &private_dir.join("server.log"),
        &node.pg.pg_os_user,
    )?;
    teardown_parts(
        zfs,
        &node.dataset,
        &clone,
        purpose,
        true,
        &pgctl,
        &private_dir,
    )?;
    Ok(origin)
}

/// One `pgzfs clone` of this node's dataset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloneInfo {
    pub name: String,
    pub dataset: String,
    pub origin: Option<String>,
    pub port: Option<String>,
}

/// The clones of this node's dataset that exist now.
pub fn list_clones(zfs: &dyn Zfs, dataset: &DatasetName) -> Result<Vec<CloneInfo>> {
    let Some(parent) = dataset.parent() else {
        return Ok(Vec::new());
    };
    let prefix = format!("{dataset}-pgzfs-clone-");
    let mut clones = Vec::new();
    for sibling in zfs.children(&parent)? {
        let Some(name) = sibling.as_str().strip_prefix(&prefix) else {
            continue;
        };
        if name.contains('/') {
            continue; // a dataset inside a clone's tree
        }
        clones.push(CloneInfo {
            name: name.to_string(),
            dataset: sibling.to_string(),
            origin: zfs.get_text(sibling.as_str(), "origin")?,
            port: zfs.get_text(sibling.as_str(), CLONE_PORT)?,
        });
    }
    Ok(clones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Vec<Mapping> {
        vec![
            Mapping {
                live: PathBuf::from("/srv/pg"),
                clone: PathBuf::from("/tmp/v/mnt"),
            },
            Mapping {
                live: PathBuf::from("/srv/pg/wal"),
                clone: PathBuf::from("/tmp/v/mnt/wal"),
            },
            Mapping {
                live: PathBuf::from("/var/db/ts"),
                clone: PathBuf::from("/tmp/v/tree1"),
            },
        ]
    }

    #[test]
    fn links_into_the_live_tree_are_repointed_at_the_clone() {
        assert_eq!(
            relink(Path::new("/srv/pg/wal/pg_wal"), &maps(), "pg_wal").unwrap(),
            Some(PathBuf::from("/tmp/v/mnt/wal/pg_wal"))
        );
        assert_eq!(
            relink(Path::new("/var/db/ts/PG_15"), &maps(), "pg_tblspc/16390").unwrap(),
            Some(PathBuf::from("/tmp/v/tree1/PG_15"))
        );
        assert_eq!(relink(Path::new("wal"), &maps(), "pg_wal").unwrap(), None);
    }

    #[test]
    fn links_out_of_the_snapshot_are_refused_not_followed() {
        for target in [
            "/var/lib/live_wal",
            "../../etc",
            "/srv/pg/../etc",
            "/srv/pgother",
        ] {
            let err = relink(Path::new(target), &maps(), "pg_wal").unwrap_err();
            assert_eq!(err.exit_code(), 3, "{target}: {err}");
        }
    }

    #[test]
    fn the_clone_is_a_sibling_named_for_its_purpose_never_the_dataset() {
        let ds = DatasetName::parse("tank/pg").unwrap();
        let v = Purpose::Verify {
            stamp: "20261201T193000Z-42".into(),
        };
        assert_eq!(
            v.clone_name(&ds).unwrap().as_str(),
            "tank/pg-pgzfs-verify-20261201T193000Z-42"
        );
        let c = Purpose::Clone {
            name: "fix1".into(),
        };
        assert_eq!(
            c.clone_name(&ds).unwrap().as_str(),
            "tank/pg-pgzfs-clone-fix1"
        );
        assert!(c.clone_name(&DatasetName::parse("tank").unwrap()).is_err());
    }

    #[test]
    fn clone_names_are_plain_words() {
        check_clone_name("restore-orders_1").unwrap();
        for bad in ["", "-x", "a/b", "a b", "a@b", &"x".repeat(41)] {
            assert_eq!(check_clone_name(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }
}

//! Every file pgzfs touches in a directory that a less trusted user can write, reached
//! without following links.
//!
//! pgzfs runs as root. The data directory belongs to the PostgreSQL OS user, and a
//! standby's data directory is a copy of the primary's, so whatever that user planted on
//! the primary (a symbolic link named `postgresql.auto.conf` pointing at a root-only file,
//! a FIFO named `postmaster.pid`, a linked `pg_replslot`) arrives on every standby. The
//! same holds for the directories of the lock, state and quarantine files when an operator
//! puts them somewhere another user can write.
//!
//! So a directory is opened once, as a handle, and everything inside it goes through that
//! handle one name at a time:
//! - the directory itself: resolved from `/` one component at a time; a symbolic link on
//!   the way is followed only where no one but root could have placed it (see
//!   [`Dir::open`]);
//! - reading: `openat(O_NOFOLLOW|O_NONBLOCK)`, then only a regular file with one link is
//!   believed; a symbolic link, FIFO, device or hard link is reported, never read through;
//! - writing: a fresh name created with `O_EXCL|O_NOFOLLOW`, owner and mode set with
//!   `fchown`/`fchmod` on that open file, then `renameat` over the target: a symbolic link
//!   at the target is replaced by the regular file, never followed;
//! - removing: `unlinkat`, which removes a link and never what it points to;
//! - subdirectories (`pg_replslot`, `global`): opened with `O_DIRECTORY|O_NOFOLLOW`; a
//!   linked one is refused with a message naming it;
//! - links pgzfs itself rewrites (`pg_wal`, `pg_tblspc/*` in a throwaway clone): read
//!   with `readlinkat` and replaced with `unlinkat` + `symlinkat`, the link itself.

use std::collections::VecDeque;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fsync, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{Error, Result};

/// No file pgzfs reads from a data directory or its own runtime directories is anywhere
/// near this big; a bigger one is someone trying to make root allocate memory.
const MAX_READ: u64 = 16 << 20;

/// How many symbolic links (root's own) [`Dir::open`] follows on the way, like the kernel.
const MAX_LINKS: usize = 40;

/// The names of `path` to resolve one by one ("." dropped, ".." kept).
fn names_of(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// How deep [`Dir::remove_tree`] descends (a replication slot is one directory of files).
const MAX_DEPTH: usize = 8;

/// An open directory. Nothing in it is reached by path again.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What is found under a name, without following it.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    /// A regular file with exactly one link, and its content.
    File(Vec<u8>),
    /// Anything else, described ("a symbolic link", "a directory", ...): not read.
    Other(&'static str),
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open/openat and is owned by no one
    // else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn describe(stat: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
        SFlag::S_IFREG if stat.st_nlink > 1 => "a hard link",
        SFlag::S_IFREG => "a regular file",
        _ => "something unknown",
    }
}

fn is_kind(stat: &FileStat, kind: SFlag) -> bool {
    stat.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// A single name inside a directory: no separators, not "." or "..".
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::failed(format!(
            "internal: {name:?} is not a single file name"
        )));
    }
    Ok(())
}

/// Could anyone but root (or this process's own user) have put `link` into `dir`? A
/// directory that only root can write, or a sticky one and a link root owns (nobody else
/// can replace it there), holds only links root made.
fn placed_by_root(dir: &FileStat, link: &FileStat) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let others_write = dir.st_mode & 0o022 != 0;
    let sticky = dir.st_mode & 0o1000 != 0;
    trusted(dir.st_uid) && (!others_write || (sticky && trusted(link.st_uid)))
}

impl Dir {
    /// Open the directory `path`. It is resolved one component at a time from `/` (or the
    /// current directory for a relative path). A symbolic link on the way is followed only
    /// where no one but root could have placed it (`/home -> /usr/home` on FreeBSD), so a
    /// link the PostgreSQL user made in its own directory is refused, naming it.
    pub fn open(path: &Path) -> Result<Dir> {
        Dir::walk(path, None)
    }

    /// Like [`Dir::open`], creating missing directories with `mode` (owned by this process).
    pub fn open_or_create(path: &Path, mode: u32) -> Result<Dir> {
        Dir::walk(path, Some(Mode::from_bits_truncate(mode)))
    }

    /// Open `root` (a directory pgzfs made, such as a clone's mountpoint) as
    /// [`Dir::open`] does, then walk down `relative` one subdirectory at a time: below
    /// `root` no link is followed at all.
    pub fn open_beneath(root: &Path, relative: &Path) -> Result<Dir> {
        let mut dir = Dir::open(root)?;
        for component in relative.components() {
            let name = match component {
                Component::Normal(name) => name.to_str(),
                Component::CurDir => continue,
                _ => None,
            }
            .ok_or_else(|| {
                Error::failed(format!(
                    "{} is not a plain relative path",
                    relative.display()
                ))
            })?;
            dir = dir
                .subdir(name)?
                .ok_or_else(|| Error::failed(format!("{} does not exist", dir.shown(name))))?;
        }
        Ok(dir)
    }

    fn walk(path: &Path, create: Option<Mode>) -> Result<Dir> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let start = |at: &str| -> Result<Dir> {
            let fd = openat(None, at, flags, Mode::empty())
                .map_err(|e| Error::failed(format!("cannot open {at}: {e}")))?;
            Ok(Dir {
                fd: own(fd),
                path: PathBuf::from(at),
            })
        };
        let mut dir = start(if path.is_absolute() { "/" } else { "." })?;
        // The names still to resolve. A link root made puts its target's names in front,
        // so what the link points through is checked the same way, one name at a time.
        let mut pending: VecDeque<OsString> = names_of(path);
        let mut links_followed = 0;
        while let Some(name) = pending.pop_front() {
            let shown = dir.path.join(&name);
            let nofollow = flags | OFlag::O_NOFOLLOW;
            let opened = match openat(Some(dir.raw()), name.as_os_str(), nofollow, Mode::empty()) {
                Err(Errno::ENOENT) if create.is_some() => {
                    match mkdirat(Some(dir.raw()), name.as_os_str(), create.expect("some")) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(Error::failed(format!(
                                "cannot create {}: {e}",
                                shown.display()
                            )))
                        }
                    }
                    openat(Some(dir.raw()), name.as_os_str(), nofollow, Mode::empty())
                }
                other => other,
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(e) => {
                    let stat = fstatat(
                        Some(dir.raw()),
                        name.as_os_str(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                    match stat {
                        Ok(link) if is_kind(&link, SFlag::S_IFLNK) => {
                            if !placed_by_root(&dir.stat()?, &link) {
                                return Err(Error::refused(format!(
                                    "{} is a symbolic link in a directory that a user other than root can write; pgzfs does not follow it (use the real path in the configuration)",
                                    shown.display()
                                )));
                            }
                            links_followed += 1;
                            if links_followed > MAX_LINKS {
                                return Err(Error::failed(format!(
                                    "{}: more than {MAX_LINKS} symbolic links",
                                    path.display()
                                )));
                            }
                            let target =
                                readlinkat(Some(dir.raw()), name.as_os_str()).map_err(|e| {
                                    Error::failed(format!("cannot read {}: {e}", shown.display()))
                                })?;
                            let target = PathBuf::from(target);
                            if target.is_absolute() {
                                dir = start("/")?;
                            }
                            for part in names_of(&target).into_iter().rev() {
                                pending.push_front(part);
                            }
                            continue;
                        }
                        Ok(other) => {
                            return Err(Error::failed(format!(
                                "{} is {}, not a directory",
                                shown.display(),
                                describe(&other)
                            )))
                        }
                        Err(_) => {
                            return Err(Error::failed(format!(
                                "cannot open {}: {e}",
                                shown.display()
                            )))
                        }
                    }
                }
            };
            dir = Dir {
                fd: own(fd),
                path: shown,
            };
        }
        dir.path = path.to_path_buf();
        Ok(dir)
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Dir> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| Error::failed(format!("cannot dup {}: {e}", self.path.display())))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    fn stat(&self) -> Result<FileStat> {
        fstat(self.raw())
            .map_err(|e| Error::failed(format!("cannot stat {}: {e}", self.path.display())))
    }

    /// (uid, gid) of the directory itself: files pgzfs writes into a data directory get
    /// these, as PostgreSQL refuses files it does not own.
    pub fn owner(&self) -> Result<(u32, u32)> {
        let stat = self.stat()?;
        Ok((stat.st_uid, stat.st_gid))
    }

    /// Give the directory itself to `uid`:`gid` (through the handle, not the path).
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<()> {
        fchown(
            self.raw(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(|e| Error::failed(format!("cannot chown {}: {e}", self.path.display())))
    }

    /// Set the directory's own mode (through the handle, not the path).
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        fchmod(self.raw(), Mode::from_bits_truncate(mode))
            .map_err(|e| Error::failed(format!("cannot chmod {}: {e}", self.path.display())))
    }

    /// What is under `name`, not following a link.
    pub fn lstat(&self, name: &str) -> Result<Option<FileStat>> {
        check_name(name)?;
        match fstatat(Some(self.raw()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::failed(format!(
                "cannot stat {}: {e}",
                self.shown(name)
            ))),
        }
    }

    /// Whether anything at all (a link too) is under `name`.
    pub fn exists(&self, name: &str) -> bool {
        matches!(self.lstat(name), Ok(Some(_)))
    }

    /// A subdirectory, opened without following a link: a linked one is refused.
    pub fn subdir(&self, name: &str) -> Result<Option<Dir>> {
        check_name(name)?;
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        match openat(Some(self.raw()), name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd: own(fd),
                path: self.path.join(name),
            })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => match self.lstat(name)? {
                Some(stat) if !is_kind(&stat, SFlag::S_IFDIR) => Err(Error::refused(format!(
                    "{} is {}, not a directory; pgzfs does not follow or replace it",
                    self.shown(name),
                    describe(&stat)
                ))),
                _ => Err(Error::failed(format!(
                    "cannot open {}: {e}",
                    self.shown(name)
                ))),
            },
        }
    }

    /// Read `name` if it is a regular file with one link; anything else is described.
    pub fn read(&self, name: &str) -> Result<Found> {
        check_name(name)?;
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(Some(self.raw()), name, flags, Mode::empty()) {
            Ok(fd) => own(fd),
            Err(Errno::ENOENT) => return Ok(Found::Missing),
            Err(e) => {
                return match self.lstat(name)? {
                    None => Ok(Found::Missing),
                    Some(stat) if !is_kind(&stat, SFlag::S_IFREG) => {
                        Ok(Found::Other(describe(&stat)))
                    }
                    Some(_) => Err(Error::failed(format!(
                        "cannot read {}: {e}",
                        self.shown(name)
                    ))),
                }
            }
        };
        let stat = fstat(fd.as_raw_fd())
            .map_err(|e| Error::failed(format!("cannot stat {}: {e}", self.shown(name))))?;
        if !is_kind(&stat, SFlag::S_IFREG) || stat.st_nlink != 1 {
            return Ok(Found::Other(describe(&stat)));
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_READ + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::failed(format!("cannot read {}: {e}", self.shown(name))))?;
        if bytes.len() as u64 > MAX_READ {
            return Err(Error::failed(format!(
                "{} is larger than {MAX_READ} bytes; not read",
                self.shown(name)
            )));
        }
        Ok(Found::File(bytes))
    }

    /// The content of a regular file `name` (None when absent); anything else is an error
    /// naming the path. For files whose content pgzfs acts on.
    pub fn read_trusted(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.read(name)? {
            Found::Missing => Ok(None),
            Found::File(bytes) => Ok(Some(bytes)),
            Found::Other(what) => Err(Error::refused(format!(
                "{} is {what}, not a regular file; pgzfs does not read through it",
                self.shown(name)
            ))),
        }
    }

    /// Replace `name` by a regular file holding `bytes`, with `mode` and (when given)
    /// `owner`. Written to a fresh name first and renamed over the target, so a reader
    /// never sees half a file and a link at the target is replaced, not followed.
    pub fn write(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        check_name(name)?;
        let tmp = format!(".{name}.pgzfs-{}.tmp", std::process::id());
        let written = self.create_file(&tmp, bytes, mode, owner).and_then(|file| {
            file.sync_all()
                .map_err(|e| Error::failed(format!("cannot write {}: {e}", self.shown(&tmp))))?;
            self.rename(&tmp, name)
        });
        if written.is_err() {
            let _ = self.remove(&tmp);
        }
        written?;
        self.sync()
    }

    /// Create `name` holding `bytes`, with `mode` and (when given) `owner`; it must not
    /// exist yet, not even as a link (see [`Dir::create_new`]).
    pub fn create_file(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<File> {
        let mut file = self.create_new(name, mode)?;
        if let Some((uid, gid)) = owner {
            fchown(
                file.as_raw_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            )
            .map_err(|e| Error::failed(format!("cannot chown {}: {e}", self.shown(name))))?;
        }
        file.write_all(bytes)
            .map_err(|e| Error::failed(format!("cannot write {}: {e}", self.shown(name))))?;
        Ok(file)
    }

    /// Create `name`, which must not exist yet (not even as a link), with `mode` exactly
    /// (fchmod: the umask does not apply). A leftover of an earlier run under a name only
    /// pgzfs uses is removed first (the link itself, never its target).
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File> {
        check_name(name)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(mode);
        let fd = match openat(Some(self.raw()), name, flags, mode) {
            Err(Errno::EEXIST) if name.ends_with(".tmp") || name.ends_with(".partial") => {
                self.remove(name)?;
                openat(Some(self.raw()), name, flags, mode)
            }
            other => other,
        }
        .map_err(|e| Error::failed(format!("cannot create {}: {e}", self.shown(name))))?;
        let fd = own(fd);
        fchmod(fd.as_raw_fd(), mode)
            .map_err(|e| Error::failed(format!("cannot chmod {}: {e}", self.shown(name))))?;
        Ok(File::from(fd))
    }

    /// Open `name` for reading and writing, creating it with `mode` when missing; never
    /// through a link, and only a regular file. For the lock file, which stays in place
    /// between runs.
    pub fn open_rw(&self, name: &str, mode: u32) -> Result<File> {
        check_name(name)?;
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = openat(
            Some(self.raw()),
            name,
            flags,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| match self.lstat(name) {
            Ok(Some(stat)) if !is_kind(&stat, SFlag::S_IFREG) => Error::refused(format!(
                "{} is {}, not a regular file; pgzfs does not open it",
                self.shown(name),
                describe(&stat)
            )),
            _ => Error::failed(format!("cannot open {}: {e}", self.shown(name))),
        })?;
        let fd = own(fd);
        let stat = fstat(fd.as_raw_fd())
            .map_err(|e| Error::failed(format!("cannot stat {}: {e}", self.shown(name))))?;
        if !is_kind(&stat, SFlag::S_IFREG) {
            return Err(Error::refused(format!(
                "{} is {}, not a regular file; pgzfs does not use it",
                self.shown(name),
                describe(&stat)
            )));
        }
        Ok(File::from(fd))
    }

    /// Rename within this directory; a link at `to` is replaced.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        check_name(from)?;
        check_name(to)?;
        renameat(Some(self.raw()), from, Some(self.raw()), to).map_err(|e| {
            Error::failed(format!(
                "cannot rename {} to {}: {e}",
                self.shown(from),
                self.shown(to)
            ))
        })
    }

    /// Remove the file or link `name`; false when there was none. A directory is an error.
    pub fn remove(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        match unlinkat(Some(self.raw()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(Error::failed(format!(
                "cannot remove {}: {e}",
                self.shown(name)
            ))),
        }
    }

    /// Where the symbolic link `name` points; None when `name` is not a symbolic link.
    pub fn read_link(&self, name: &str) -> Result<Option<PathBuf>> {
        match self.lstat(name)? {
            Some(stat) if is_kind(&stat, SFlag::S_IFLNK) => readlinkat(Some(self.raw()), name)
                .map(|target| Some(PathBuf::from(target)))
                .map_err(|e| Error::failed(format!("cannot read {}: {e}", self.shown(name)))),
            _ => Ok(None),
        }
    }

    /// Make `name` a symbolic link to `target`, removing what was there (a link itself,
    /// never what it points to).
    pub fn replace_link(&self, name: &str, target: &Path) -> Result<()> {
        self.remove(name)?;
        symlinkat(target, Some(self.raw()), name).map_err(|e| {
            Error::failed(format!(
                "cannot link {} to {}: {e}",
                self.shown(name),
                target.display()
            ))
        })
    }

    /// Remove `name` and, if it is a real directory, everything in it, all through
    /// handles: a link anywhere inside is removed, never followed.
    pub fn remove_tree(&self, name: &str) -> Result<bool> {
        self.remove_tree_at(name, 0)
    }

    fn remove_tree_at(&self, name: &str, depth: usize) -> Result<bool> {
        let Some(stat) = self.lstat(name)? else {
            return Ok(false);
        };
        if !is_kind(&stat, SFlag::S_IFDIR) {
            return self.remove(name);
        }
        if depth >= MAX_DEPTH {
            return Err(Error::refused(format!(
                "{} is nested deeper than {MAX_DEPTH} directories; not removed",
                self.shown(name)
            )));
        }
        let sub = self.subdir(name)?.expect("it was there a moment ago");
        sub.clear_at(depth + 1)?;
        drop(sub);
        unlinkat(Some(self.raw()), name, UnlinkatFlags::RemoveDir)
            .map_err(|e| Error::failed(format!("cannot remove {}: {e}", self.shown(name))))?;
        Ok(true)
    }

    /// The names in this directory (not "." and "..").
    pub fn names(&self) -> Result<Vec<String>> {
        let mut listing = nix::dir::Dir::openat(
            Some(self.raw()),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::failed(format!("cannot list {}: {e}", self.path.display())))?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry
                .map_err(|e| Error::failed(format!("cannot list {}: {e}", self.path.display())))?;
            let name: &CStr = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            names.push(
                std::str::from_utf8(bytes)
                    .map_err(|_| {
                        Error::failed(format!(
                            "{} holds a name that is not UTF-8: {:?}",
                            self.path.display(),
                            OsStr::from_bytes(bytes)
                        ))
                    })?
                    .to_string(),
            );
        }
        Ok(names)
    }

    /// Remove everything in this directory, keeping the directory.
    pub fn clear(&self) -> Result<()> {
        self.clear_at(0)
    }

    fn clear_at(&self, depth: usize) -> Result<()> {
        for name in self.names()? {
            self.remove_tree_at(&name, depth)?;
        }
        Ok(())
    }

    /// Make the directory's entries durable (a rename is only safe after this).
    pub fn sync(&self) -> Result<()> {
        fsync(self.raw())
            .map_err(|e| Error::failed(format!("cannot sync {}: {e}", self.path.display())))
    }
}

/// `path`'s directory, opened as [`Dir::open`] does (created with `mode` when `create`),
/// and its file name.
pub fn parent_of(path: &Path, create: Option<u32>) -> Result<(Dir, String)> {
    let name = path
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| Error::usage(format!("{} does not name a file", path.display())))?
        .to_string();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = match create {
        Some(mode) => Dir::open_or_create(parent, mode)?,
        None => Dir::open(parent)?,
    };
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    /// A scratch directory standing for a data directory, and beside it (outside) a file
    /// the planted links point at: the file every test checks stays exactly as it was.
    struct Scene {
        root: PathBuf,
        inside: PathBuf,
        victim: PathBuf,
        victim_owner: (u32, u32),
    }

    const VICTIM_TEXT: &str = "root-only secret\n";

    impl Scene {
        fn new(test: &str) -> Scene {
            let root =
                std::env::temp_dir().join(format!("pgzfs-safe-dir-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let inside = root.join("data");
            std::fs::create_dir_all(&inside).unwrap();
            let victim = root.join("victim");
            std::fs::write(&victim, VICTIM_TEXT).unwrap();
            std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
            let meta = std::fs::metadata(&victim).unwrap();
            Scene {
                root,
                inside,
                victim,
                victim_owner: (meta.uid(), meta.gid()),
            }
        }

        fn plant(&self, name: &str) {
            symlink(&self.victim, self.inside.join(name)).unwrap();
        }

        fn dir(&self) -> Dir {
            Dir::open(&self.inside).unwrap()
        }

        /// Content, owner and mode of the file outside are what they were.
        fn assert_victim_untouched(&self) {
            let meta = std::fs::symlink_metadata(&self.victim).unwrap();
            assert!(meta.file_type().is_file(), "the target is still a file");
            assert_eq!(std::fs::read_to_string(&self.victim).unwrap(), VICTIM_TEXT);
            assert_eq!(
                (meta.uid(), meta.gid()),
                self.victim_owner,
                "owner unchanged"
            );
            assert_eq!(meta.mode() & 0o7777, 0o640, "mode unchanged");
        }
    }

    impl Drop for Scene {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn writing_over_a_planted_link_replaces_the_link_and_leaves_its_target_alone() {
        let scene = Scene::new("write");
        scene.plant("postgresql.auto.conf");
        let dir = scene.dir();
        // Owner: some other uid, as the data directory's owner would be.
        dir.write(
            "postgresql.auto.conf",
            b"port = '5433'\n",
            0o600,
            Some((4321, 4321)),
        )
        .unwrap();
        scene.assert_victim_untouched();
        let path = scene.inside.join("postgresql.auto.conf");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "the link became a regular file");
        assert_eq!((meta.uid(), meta.gid()), (4321, 4321));
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "port = '5433'\n");
        assert_eq!(
            dir.names().unwrap(),
            vec!["postgresql.auto.conf"],
            "no temp file left"
        );
    }

    #[test]
    fn a_planted_link_is_never_read_through() {
        let scene = Scene::new("read");
        scene.plant("postmaster.pid");
        let dir = scene.dir();
        assert_eq!(
            dir.read("postmaster.pid").unwrap(),
            Found::Other("a symbolic link")
        );
        let err = dir.read_trusted("postmaster.pid").unwrap_err();
        assert!(err.to_string().contains("postmaster.pid"), "{err}");
        scene.assert_victim_untouched();
    }

    #[test]
    fn a_hard_link_or_a_fifo_is_not_believed_and_a_fifo_does_not_hang_the_read() {
        let scene = Scene::new("hardlink");
        std::fs::hard_link(&scene.victim, scene.inside.join("PG_VERSION")).unwrap();
        nix::unistd::mkfifo(
            &scene.inside.join("backup_label"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let dir = scene.dir();
        assert_eq!(dir.read("PG_VERSION").unwrap(), Found::Other("a hard link"));
        assert_eq!(dir.read("backup_label").unwrap(), Found::Other("a FIFO"));
        // Writing replaces the FIFO by a file.
        dir.write("backup_label", b"START WAL LOCATION: 0/1\n", 0o600, None)
            .unwrap();
        assert!(std::fs::symlink_metadata(scene.inside.join("backup_label"))
            .unwrap()
            .file_type()
            .is_file());
        scene.assert_victim_untouched();
    }

    #[test]
    fn removing_a_planted_link_removes_the_link_only() {
        let scene = Scene::new("remove");
        scene.plant("tablespace_map");
        let dir = scene.dir();
        assert!(dir.remove("tablespace_map").unwrap());
        assert!(!dir.exists("tablespace_map"));
        assert!(!dir.remove("tablespace_map").unwrap(), "already gone");
        scene.assert_victim_untouched();
    }

    #[test]
    fn a_linked_pg_replslot_is_refused_naming_it() {
        let scene = Scene::new("replslot-link");
        let elsewhere = scene.root.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("state"), "keep me").unwrap();
        symlink(&elsewhere, scene.inside.join("pg_replslot")).unwrap();
        let err = scene.dir().subdir("pg_replslot").unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("pg_replslot"), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            std::fs::read_to_string(elsewhere.join("state")).unwrap(),
            "keep me"
        );
    }

    #[test]
    fn clearing_slots_removes_links_inside_without_following_them() {
        let scene = Scene::new("replslot-entries");
        let slots = scene.inside.join("pg_replslot");
        std::fs::create_dir_all(slots.join("db2")).unwrap();
        std::fs::write(slots.join("db2/state"), "x").unwrap();
        // A slot that is a link to a directory outside, and a link inside a slot.
        let outside = scene.root.join("outside-dir");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep").unwrap();
        symlink(&outside, slots.join("db3")).unwrap();
        symlink(&scene.victim, slots.join("db2/xid")).unwrap();
        let dir = scene.dir();
        dir.subdir("pg_replslot").unwrap().unwrap().clear().unwrap();
        assert_eq!(std::fs::read_dir(&slots).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "keep"
        );
        scene.assert_victim_untouched();
    }

    #[test]
    fn a_leftover_temp_link_is_removed_not_followed() {
        let scene = Scene::new("tmp");
        let tmp = format!(".standby.signal.pgzfs-{}.tmp", std::process::id());
        scene.plant(&tmp);
        scene
            .dir()
            .write("standby.signal", b"", 0o600, None)
            .unwrap();
        scene.assert_victim_untouched();
        assert!(scene.inside.join("standby.signal").is_file());
    }

    #[test]
    fn a_new_file_is_created_with_exactly_its_mode_and_never_over_a_link() {
        let scene = Scene::new("create");
        let dir = scene.dir();
        let _file = dir.create_new("quarantine.zfs.gz.partial", 0o600).unwrap();
        let meta = std::fs::metadata(scene.inside.join("quarantine.zfs.gz.partial")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        scene.plant("pg.log");
        assert!(
            dir.create_new("pg.log", 0o600).is_err(),
            "a link is not created through"
        );
        scene.assert_victim_untouched();
    }

    #[test]
    fn a_lock_file_that_is_a_link_is_refused() {
        let scene = Scene::new("lock");
        scene.plant("pgzfs.lock");
        let err = scene.dir().open_rw("pgzfs.lock", 0o600).unwrap_err();
        assert!(err.to_string().contains("pgzfs.lock"), "{err}");
        scene.assert_victim_untouched();
    }

    #[test]
    fn a_linked_directory_in_a_directory_others_can_write_is_refused() {
        let scene = Scene::new("walk");
        // The data directory's parent belongs to someone else (the postgres user's home)
        // and holds a link where the data directory should be.
        let home = scene.root.join("home");
        std::fs::create_dir(&home).unwrap();
        nix::unistd::chown(&home, Some(Uid::from_raw(4321)), None).unwrap();
        symlink(&scene.inside, home.join("data15")).unwrap();
        let err = Dir::open(&home.join("data15")).unwrap_err();
        assert!(err.to_string().contains("data15"), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // The same link where only root can write is root's own doing and is followed.
        let trusted = scene.root.join("trusted");
        std::fs::create_dir(&trusted).unwrap();
        std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink(&scene.inside, trusted.join("data15")).unwrap();
        std::fs::write(scene.inside.join("PG_VERSION"), "15\n").unwrap();
        let dir = Dir::open(&trusted.join("data15")).unwrap();
        assert_eq!(
            dir.read("PG_VERSION").unwrap(),
            Found::File(b"15\n".to_vec())
        );
    }

    #[test]
    fn a_root_made_link_is_followed_only_as_far_as_its_target_is_trusted() {
        let scene = Scene::new("chain");
        // root: /srv/pg -> home/data15 (relative); postgres (uid 4321) owns home and has
        // replaced data15 by a link to a directory of its choosing.
        let srv = scene.root.join("srv");
        let home = srv.join("home");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("home/data15", srv.join("pg")).unwrap();
        nix::unistd::chown(&home, Some(Uid::from_raw(4321)), None).unwrap();
        symlink(&scene.inside, home.join("data15")).unwrap();
        let err = Dir::open(&srv.join("pg")).unwrap_err();
        assert!(err.to_string().contains("data15"), "{err}");
        // With the real directory there, the same root link works.
        std::fs::remove_file(home.join("data15")).unwrap();
        std::fs::create_dir(home.join("data15")).unwrap();
        std::fs::write(home.join("data15/PG_VERSION"), "17\n").unwrap();
        let dir = Dir::open(&srv.join("pg")).unwrap();
        assert_eq!(
            dir.read("PG_VERSION").unwrap(),
            Found::File(b"17\n".to_vec())
        );
    }

    #[test]
    fn missing_directories_are_created_with_the_given_mode() {
        let scene = Scene::new("mkdir");
        let path = scene.root.join("quarantine/deeper");
        let dir = Dir::open_or_create(&path, 0o700).unwrap();
        dir.set_mode(0o700).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
    }

    /// A scratch directory of its own for the tests below.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgzfs-safe-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn below_a_clones_mountpoint_no_link_is_followed_on_the_way_to_the_data_directory() {
        let root = scratch("beneath");
        let elsewhere = scratch("beneath-target");
        symlink(&elsewhere, root.join("data")).unwrap();
        let err = Dir::open_beneath(&root, Path::new("data")).err().unwrap();
        assert!(err.message().contains("symbolic link"), "{err}");
        std::fs::create_dir_all(root.join("real/data")).unwrap();
        let data = Dir::open_beneath(&root, Path::new("real/data")).unwrap();
        assert_eq!(data.path(), root.join("real/data"));
        assert!(Dir::open_beneath(&root, Path::new("../x")).is_err());
        assert!(Dir::open_beneath(&root, Path::new("missing")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn a_clones_links_are_read_and_replaced_in_place() {
        let root = scratch("links");
        symlink("/srv/live/pg_wal", root.join("pg_wal")).unwrap();
        std::fs::write(root.join("PG_VERSION"), "15\n").unwrap();
        let dir = Dir::open(&root).unwrap();
        assert_eq!(
            dir.read_link("pg_wal").unwrap(),
            Some(PathBuf::from("/srv/live/pg_wal"))
        );
        dir.replace_link("pg_wal", Path::new("/tmp/clone/pg_wal"))
            .unwrap();
        assert_eq!(
            std::fs::read_link(root.join("pg_wal")).unwrap(),
            PathBuf::from("/tmp/clone/pg_wal")
        );
        assert_eq!(dir.read_link("missing").unwrap(), None);
        assert_eq!(dir.read_link("PG_VERSION").unwrap(), None, "not a link");
        dir.create_file("new", b"t", 0o600, None).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("new")).unwrap(), "t");
        assert!(dir.create_file("new", b"t", 0o600, None).is_err());
        symlink(root.join("x"), root.join("planted")).unwrap();
        assert!(dir.create_file("planted", b"t", 0o600, None).is_err());
        assert!(!root.join("x").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! The few file operations pgzfs does as root inside a data directory that the
//! PostgreSQL OS user can write, without ever following a symlink that user planted:
//! every path is walked one component at a time with `O_NOFOLLOW`, and what is removed
//! or replaced is named relative to a directory descriptor (`unlinkat`, `symlinkat`),
//! which acts on the link itself, never on what it points to.
//!
//! (Small on purpose: a general safe-file module is being written elsewhere; this one
//! covers only what the throwaway clones of `verify` and `clone` need.)

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};

/// An open directory, reached without following any symlink below `root`.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// nix 0.29 hands out raw descriptors; own them at once so that every path closes them.
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and belongs to nobody else.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl Dir {
    /// Open `root` (a path pgzfs itself made, e.g. a clone's mountpoint) and walk down
    /// `relative` component by component; a symlink anywhere on the way is an error.
    pub fn open_beneath(root: &Path, relative: &Path) -> Result<Dir> {
        let fd = nix::fcntl::open(root, dir_flags(), Mode::empty())
            .map(owned)
            .map_err(|e| Error::failed(format!("cannot open {}: {e}", root.display())))?;
        let mut dir = Dir {
            fd,
            path: root.to_path_buf(),
        };
        for component in relative.components() {
            match component {
                Component::Normal(name) => dir = dir.subdir(name)?,
                Component::CurDir => {}
                _ => {
                    return Err(Error::failed(format!(
                        "{} is not a plain relative path",
                        relative.display()
                    )))
                }
            }
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, not following a symlink.
    pub fn subdir(&self, name: &OsStr) -> Result<Dir> {
        let path = self.path.join(name);
        let fd = openat(Some(self.fd.as_raw_fd()), name, dir_flags(), Mode::empty())
            .map(owned)
            .map_err(|e| match e {
                nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => Error::failed(format!(
                    "{} is not a directory (a symlink or another file there is not followed)",
                    path.display()
                )),
                e => Error::failed(format!("cannot open {}: {e}", path.display())),
            })?;
        Ok(Dir { fd, path })
    }

    /// A subdirectory if there is one; None when missing.
    pub fn subdir_if_present(&self, name: &str) -> Result<Option<Dir>> {
        match self.kind(name)? {
            None => Ok(None),
            Some(_) => self.subdir(OsStr::new(name)).map(Some),
        }
    }

    /// What `name` is (without following it); None when it does not exist.
    pub fn kind(&self, name: &str) -> Result<Option<SFlag>> {
        match nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::failed(format!(
                "cannot stat {}: {e}",
                self.path.join(name).display()
            ))),
        }
    }

    /// Remove a file or symlink (the link itself); Ok(false) when it was not there.
    pub fn remove_file(&self, name: &str) -> Result<bool> {
        match unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(Error::failed(format!(
                "cannot remove {}: {e}",
                self.path.join(name).display()
            ))),
        }
    }

    /// Remove a directory and what is in it, never leaving this directory's tree.
    pub fn remove_tree(&self, name: &str) -> Result<()> {
        if self.kind(name)? == Some(SFlag::S_IFDIR) {
            let sub = self.subdir(OsStr::new(name))?;
            for entry in sub.entries()? {
                sub.remove_tree(&entry)?;
            }
            unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::RemoveDir).map_err(|e| {
                Error::failed(format!(
                    "cannot remove {}: {e}",
                    self.path.join(name).display()
                ))
            })
        } else {
            self.remove_file(name).map(drop)
        }
    }

    /// The names in this directory (without "." and "..").
    pub fn entries(&self) -> Result<Vec<String>> {
        let fd = openat(Some(self.fd.as_raw_fd()), ".", dir_flags(), Mode::empty())
            .map_err(|e| Error::failed(format!("cannot list {}: {e}", self.path.display())))?;
        let mut listing = nix::dir::Dir::from_fd(fd)
            .map_err(|e| Error::failed(format!("cannot list {}: {e}", self.path.display())))?;
        let mut names = Vec::new();
        for entry in listing.iter() {
            let entry = entry
                .map_err(|e| Error::failed(format!("cannot list {}: {e}", self.path.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Where a symlink points; None when `name` is not a symlink.
    pub fn link_target(&self, name: &str) -> Result<Option<PathBuf>> {
        if self.kind(name)? != Some(SFlag::S_IFLNK) {
            return Ok(None);
        }
        readlinkat(Some(self.fd.as_raw_fd()), name)
            .map(|t| Some(PathBuf::from(t)))
            .map_err(|e| {
                Error::failed(format!(
                    "cannot read the link {}: {e}",
                    self.path.join(name).display()
                ))
            })
    }

    /// Replace the symlink `name` by one pointing at `target`.
    pub fn replace_link(&self, name: &str, target: &Path) -> Result<()> {
        self.remove_file(name)?;
        symlinkat(target, Some(self.fd.as_raw_fd()), name).map_err(|e| {
            Error::failed(format!(
                "cannot link {} to {}: {e}",
                self.path.join(name).display(),
                target.display()
            ))
        })
    }

    /// The first `limit` bytes of a regular file (not a symlink, FIFO or device: opening
    /// one of those could follow a link or block for ever).
    pub fn read_small(&self, name: &str, limit: usize) -> Result<Option<String>> {
        let path = self.path.join(name);
        let fd = match openat(
            Some(self.fd.as_raw_fd()),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => owned(fd),
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(Error::failed(format!(
                    "cannot open {}: {e}",
                    path.display()
                )))
            }
        };
        let st = fstat(fd.as_raw_fd())
            .map_err(|e| Error::failed(format!("cannot stat {}: {e}", path.display())))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(Error::failed(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let mut buf = vec![0u8; limit];
        let mut file = std::fs::File::from(fd);
        let n = std::io::Read::read(&mut file, &mut buf)
            .map_err(|e| Error::failed(format!("cannot read {}: {e}", path.display())))?;
        buf.truncate(n);
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// Create a new file (never an existing one, never through a symlink) with `mode`, owned
/// by `owner` (uid, gid) when given, holding `text`.
pub fn create_new_file(
    path: &Path,
    text: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::failed(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::failed(format!("cannot write {}: {e}", path.display())))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(file.as_raw_fd(), Some(uid.into()), Some(gid.into()))
            .map_err(|e| Error::failed(format!("cannot chown {}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pgzfs-nofollow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlink_on_the_way_into_the_data_directory_is_refused() {
        let root = scratch("walk");
        let elsewhere = scratch("walk-target");
        std::os::unix::fs::symlink(&elsewhere, root.join("data")).unwrap();
        let err = Dir::open_beneath(&root, Path::new("data")).err().unwrap();
        assert!(err.message().contains("not a directory"), "{err}");
        std::fs::create_dir(root.join("real")).unwrap();
        std::fs::create_dir(root.join("real/data")).unwrap();
        assert!(Dir::open_beneath(&root, Path::new("real/data")).is_ok());
        assert!(Dir::open_beneath(&root, Path::new("../x")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&elsewhere).unwrap();
    }

    #[test]
    fn removing_a_planted_symlink_removes_the_link_not_its_target() {
        let root = scratch("unlink");
        std::fs::write(root.join("precious"), "keep me").unwrap();
        std::fs::create_dir(root.join("data")).unwrap();
        std::os::unix::fs::symlink(root.join("precious"), root.join("data/postmaster.pid"))
            .unwrap();
        let dir = Dir::open_beneath(&root, Path::new("data")).unwrap();
        assert!(
            dir.read_small("postmaster.pid", 100).is_err(),
            "not read through a link"
        );
        assert!(dir.remove_file("postmaster.pid").unwrap());
        assert!(!dir.remove_file("postmaster.pid").unwrap());
        assert_eq!(
            std::fs::read_to_string(root.join("precious")).unwrap(),
            "keep me"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tree_with_a_link_to_outside_is_removed_without_touching_the_outside() {
        let root = scratch("tree");
        let outside = scratch("tree-outside");
        std::fs::write(outside.join("file"), "x").unwrap();
        std::fs::create_dir_all(root.join("slots/db2")).unwrap();
        std::fs::write(root.join("slots/db2/state"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("slots/evil")).unwrap();
        let dir = Dir::open_beneath(&root, Path::new("")).unwrap();
        dir.remove_tree("slots").unwrap();
        assert!(!root.join("slots").exists());
        assert!(outside.join("file").exists());
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn links_are_read_and_replaced_in_place() {
        let root = scratch("links");
        std::os::unix::fs::symlink("/srv/live/pg_wal", root.join("pg_wal")).unwrap();
        let dir = Dir::open_beneath(&root, Path::new("")).unwrap();
        assert_eq!(
            dir.link_target("pg_wal").unwrap(),
            Some(PathBuf::from("/srv/live/pg_wal"))
        );
        dir.replace_link("pg_wal", Path::new("/tmp/clone/pg_wal"))
            .unwrap();
        assert_eq!(
            std::fs::read_link(root.join("pg_wal")).unwrap(),
            PathBuf::from("/tmp/clone/pg_wal")
        );
        assert_eq!(dir.link_target("missing").unwrap(), None);
        create_new_file(&root.join("new"), "t", 0o600, None).unwrap();
        assert!(create_new_file(&root.join("new"), "t", 0o600, None).is_err());
        std::os::unix::fs::symlink(root.join("x"), root.join("planted")).unwrap();
        assert!(create_new_file(&root.join("planted"), "t", 0o600, None).is_err());
        assert!(!root.join("x").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

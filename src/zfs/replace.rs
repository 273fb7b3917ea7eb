//! ZFS-level sequences that belong together, for any backend ([`Zfs`]): replacing a
//! dataset's contents with a received stream (unmount → keep the old data aside or
//! destroy what the rollback discards → receive, retried while the failure passes by
//! itself → or back to the last good state), and mounting the result where it belongs.
//! The re-seed runbook calls these as single steps.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::features::ResumeToken;
use super::names::{DatasetName, SnapName};
use super::{prop, CanMount, Zfs};
use crate::error::{Error, Result};
use crate::transfer::{Interrupt, Sink, Source};

/// How often a receive that failed for a passing reason is tried.
pub const RECEIVE_ATTEMPTS: u32 = 3;

/// Whether attempt number `attempt` (from 1) of a receive that failed with `error` is
/// tried again, and after how long. Only a failure the zfs layer marked transient (the
/// failed receive committed nothing), only a few times, and never once the operator
/// asked to stop.
pub fn receive_retry_delay(attempt: u32, error: &Error, interrupted: bool) -> Option<Duration> {
    (attempt < RECEIVE_ATTEMPTS && error.is_transient() && !interrupted)
        .then(|| Duration::from_secs(u64::from(attempt)))
}

/// A receive that replaces the contents of `dataset`.
pub struct Replacement<'a> {
    pub dataset: &'a DatasetName,
    /// Whether `dataset` exists now (then it is unmounted first).
    pub exists: bool,
    /// Keep the old dataset under this name instead of receiving over it.
    pub rename_aside: Option<&'a DatasetName>,
    /// Snapshots newer than the incremental's base, which the rollback discards.
    pub newer_than_base: &'a [SnapName],
    /// An incremental stream (received with rollback, -F).
    pub incremental: bool,
    /// Receive with -s, so that an interrupted stream can be continued.
    pub resumable: bool,
    /// Continue the partial receive this token describes.
    pub resume: Option<&'a ResumeToken>,
}

/// A replacement that went through: what the stream copy returned, and the dataset's
/// mountpoint from before (None for a new dataset or an unset one).
pub struct Replaced<T> {
    pub transferred: T,
    pub old_mountpoint: Option<PathBuf>,
}

/// What a failed replacement left behind for the next run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Nothing partial: the dataset is at its last good state (mounted, renamed back).
    Nothing,
    /// The first part of a full receive; the old dataset (if any) stays renamed aside.
    PartialFull,
    /// The partial state of an incremental, beside the untouched dataset.
    PartialIncremental,
}

/// A replacement that failed: the error to report (the transfer's, or one met while
/// restoring), and what was kept.
pub struct NotReplaced {
    pub error: Error,
    pub kept: Kept,
}

impl From<Error> for NotReplaced {
    fn from(error: Error) -> Self {
        NotReplaced {
            error,
            kept: Kept::Nothing,
        }
    }
}

impl<'z> dyn Zfs + 'z {
    /// Replace the contents of `r.dataset` with a received stream, leaving it unmounted
    /// (see [`mount_at`](Self::mount_at)). `send` starts the stream (from the token when
    /// continuing one), `copy` moves it into the receive. On failure the dataset is back
    /// at its last good state, mounted, unless ZFS kept a partial receive to resume.
    pub fn receive_replacing<T>(
        &self,
        r: &Replacement,
        interrupt: &Interrupt,
        mut send: impl FnMut(Option<&ResumeToken>) -> Result<Box<dyn Source>>,
        mut copy: impl FnMut(Box<dyn Source>, Box<dyn Sink>) -> Result<T>,
    ) -> std::result::Result<Replaced<T>, NotReplaced> {
        let dataset = r.dataset;
        let old_mountpoint = if r.exists {
            self.mountpoint(dataset)?
        } else {
            None
        };
        if r.exists {
            // zfs-fuse serves stale data after receiving into a mounted dataset, and
            // PostgreSQL must not see files change underneath it anyway.
            self.unmount(dataset)?;
        }
        if let Some(aside) = r.rename_aside {
            self.rename_aside(dataset, aside)?;
        }
        let result = self
            .destroy_newer_than(dataset, r.newer_than_base)
            .and_then(|()| {
                let mut attempt = 1;
                let mut token = r.resume.cloned();
                loop {
                    let source = send(token.as_ref())?;
                    let sink = if r.resumable {
                        self.receive_resumable(dataset, r.incremental)?
                    } else {
                        self.receive(dataset, r.incremental)?
                    };
                    match copy(source, sink) {
                        Err(e) => {
                            let Some(delay) = receive_retry_delay(attempt, &e, interrupt.is_set())
                            else {
                                break Err(e);
                            };
                            // The failed receive committed nothing, so sending again is
                            // safe; a resumable one kept what arrived: continue from there.
                            tracing::warn!(
                                "attempt {attempt} of the transfer failed ({e}); retrying"
                            );
                            std::thread::sleep(delay);
                            attempt += 1;
                            if r.resumable {
                                token = self.resume_token(dataset)?;
                            }
                        }
                        Ok(transferred) => break Ok(transferred),
                    }
                }
            });
        match result {
            Ok(transferred) => Ok(Replaced {
                transferred,
                old_mountpoint,
            }),
            Err(error) => match self.restore_after_failed_receive(&error, r) {
                Ok(kept) => Err(NotReplaced { error, kept }),
                Err(restoring) => Err(restoring.into()),
            },
        }
    }

    /// Keep a dataset under another name, and keep it from mounting over the live one
    /// at boot.
    pub fn rename_aside(&self, dataset: &DatasetName, aside: &DatasetName) -> Result<()> {
        self.rename(dataset, aside)?;
        self.keep_from_mounting_at_boot(aside)?;
        // Its children too: at boot they would mount over the new copy's (pg_wal).
        for child in self.children(aside)? {
            self.keep_from_mounting_at_boot(&child)?;
        }
        tracing::info!("kept the previous dataset as {aside}");
        Ok(())
    }

    /// `canmount=noauto`, with the value it had recorded on the dataset.
    fn keep_from_mounting_at_boot(&self, dataset: &DatasetName) -> Result<()> {
        let before = self
            .get_text(dataset.as_str(), "canmount")?
            .as_deref()
            .and_then(CanMount::parse);
        if let Some(before) = before {
            self.set_dataset_props(
                dataset,
                &[(prop::CANMOUNT_BEFORE, before.as_str().to_string())],
            )?;
        }
        self.set_canmount(dataset, CanMount::NoAuto)
    }

    /// A dataset kept aside gets its name back, and with it (and its children) the
    /// `canmount` it had before: without that it would not mount at the next boot.
    pub fn put_back(&self, aside: &DatasetName, dataset: &DatasetName) -> Result<()> {
        self.rename(aside, dataset)?;
        let mut members = vec![dataset.clone()];
        members.extend(self.children(dataset)?);
        for member in &members {
            let before = self
                .get_text(member.as_str(), prop::CANMOUNT_BEFORE)?
                .as_deref()
                .and_then(CanMount::parse);
            if let Some(before) = before {
                self.set_canmount(member, before)?;
            }
        }
        tracing::info!("{aside} has its name {dataset} back");
        Ok(())
    }

    /// Destroy the snapshots of `dataset` that are newer than an incremental's base.
    /// Doing it here, rather than leaving it to `recv -F`, works the same on every ZFS
    /// (zfs-fuse refuses instead) and names each one in the log.
    pub fn destroy_newer_than(&self, dataset: &DatasetName, newer: &[SnapName]) -> Result<()> {
        for snap in newer {
            self.destroy_snapshot(&dataset.snapshot(snap))?;
            tracing::info!("destroyed {dataset}@{snap}, newer than the common base");
        }
        Ok(())
    }

    /// Take back an incremental that was received whole: destroy the received snapshot
    /// `received` and roll `dataset` back to `base`, which it still holds (the receive
    /// only added `received` on top of it). Left unmounted.
    pub fn undo_incremental(
        &self,
        dataset: &DatasetName,
        received: &SnapName,
        base: &SnapName,
    ) -> Result<()> {
        // zfs-fuse serves stale files after a rollback under a mounted dataset.
        self.unmount(dataset)?;
        self.destroy_snapshot(&dataset.snapshot(received))?;
        self.rollback(&dataset.snapshot(base))?;
        tracing::info!("{dataset} back at @{base}: destroyed @{received}, received by this run");
        Ok(())
    }

    /// Take back a full receive over a dataset kept aside: destroy the new copy (with
    /// its descendants, all received by this run) and give the kept one its name back.
    /// The kept one gets its `canmount` back too.
    pub fn undo_full_aside(&self, dataset: &DatasetName, aside: &DatasetName) -> Result<()> {
        if self.exists(dataset)? {
            self.unmount(dataset)?;
            self.destroy_dataset_recursive(dataset)?;
            tracing::info!("destroyed {dataset}, received by this run");
        }
        self.put_back(aside, dataset)
    }

    /// Take back a full receive into a dataset that did not exist before this run:
    /// destroy it with its descendants (a copy of the source's, kept there).
    pub fn undo_full_new(&self, dataset: &DatasetName) -> Result<()> {
        if self.exists(dataset)? {
            self.unmount(dataset)?;
            self.destroy_dataset_recursive(dataset)?;
            tracing::info!("destroyed {dataset}, new in this run");
        }
        Ok(())
    }

    /// Set the mountpoint to `wanted` where it differs, and mount.
    pub fn mount_at(&self, dataset: &DatasetName, wanted: &Path) -> Result<()> {
        if self.mountpoint(dataset)?.as_deref() != Some(wanted) {
            self.set_mountpoint(dataset, wanted)?;
        }
        self.mount(dataset)
    }

    /// After a failed receive: back to the last good state, or, where ZFS kept a partial
    /// receive, leave that for the next run.
    fn restore_after_failed_receive(&self, e: &Error, r: &Replacement) -> Result<Kept> {
        let dataset = r.dataset;
        let kept = r.resumable && matches!(self.resume_token(dataset), Ok(Some(_)));
        if kept && self.snapshots(dataset).is_ok_and(|s| s.is_empty()) {
            // A full receive: nothing to mount yet, and the previous dataset (if any)
            // stays renamed aside, whole, until the rerun has finished.
            return Ok(Kept::PartialFull);
        }
        tracing::error!("the transfer failed, restoring the last good state: {e}");
        if let Some(aside) = r.rename_aside {
            if !self.exists(dataset).unwrap_or(true) {
                self.put_back(aside, dataset)?;
            }
        }
        if self.exists(dataset).unwrap_or(false) {
            self.mount(dataset)?;
        }
        // An incremental: the dataset itself is untouched; the partial state waits
        // beside it (`zfs receive -A` drops it).
        Ok(if kept {
            Kept::PartialIncremental
        } else {
            Kept::Nothing
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    use super::*;
    use crate::exec::{Cmd, Output, Runner};
    use crate::zfs::cli::ZfsCli;

    #[test]
    fn only_a_passing_failure_is_tried_again_and_only_twice() {
        let transient = Error::failed("cannot receive: I/O error").transient();
        let lasting = Error::failed("cannot receive: destination has been modified");
        assert_eq!(
            receive_retry_delay(1, &transient, false),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            receive_retry_delay(2, &transient, false),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            receive_retry_delay(RECEIVE_ATTEMPTS, &transient, false),
            None
        );
        assert_eq!(receive_retry_delay(1, &lasting, false), None);
        // Ctrl-C during a transfer stops it; it does not start it again.
        assert_eq!(receive_retry_delay(1, &transient, true), None);
    }

    /// zfs(8) as a script: each command that changes something is recorded; `get`
    /// answers from what the script has done so far; the receives finish as
    /// `receives` says, in turn, and create nothing.
    struct Scripted {
        log: Rc<RefCell<Vec<String>>>,
        mounted: RefCell<bool>,
        existing: RefCell<Vec<String>>,
        receives: RefCell<VecDeque<Result<()>>>,
        /// (object, property) → value, as `zfs set` left them.
        props: RefCell<std::collections::HashMap<(String, String), String>>,
    }

    impl Scripted {
        fn new(receives: Vec<Result<()>>) -> (Scripted, Rc<RefCell<Vec<String>>>) {
            let log = Rc::new(RefCell::new(Vec::new()));
            let zfs = Scripted {
                log: log.clone(),
                mounted: RefCell::new(true),
                existing: RefCell::new(vec!["tank/pg".to_string()]),
                receives: RefCell::new(receives.into()),
                props: RefCell::default(),
            };
            (zfs, log)
        }
    }

    struct FinishesAs(Option<Result<()>>);
    impl Sink for FinishesAs {
        fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn finish(mut self: Box<Self>) -> Result<()> {
            self.0.take().unwrap()
        }
        fn abort(self: Box<Self>) {}
    }

    impl Runner for Scripted {
        fn output(&self, cmd: &Cmd) -> Result<Output> {
            let args = &cmd.argv[1..];
            let answer = |stdout: String, code: i32, stderr: &str| {
                Ok(Output {
                    status: std::os::unix::process::ExitStatusExt::from_raw(code << 8),
                    stdout,
                    stderr: stderr.to_string(),
                })
            };
            if args[0] == "get" {
                let (property, object) = (&args[args.len() - 2], &args[args.len() - 1]);
                if !self.existing.borrow().contains(object) {
                    return answer(String::new(), 1, "dataset does not exist");
                }
                let set = self
                    .props
                    .borrow()
                    .get(&(object.clone(), property.clone()))
                    .cloned();
                let value = match property.as_str() {
                    _ if set.is_some() => set.unwrap(),
                    "mounted" if *self.mounted.borrow() => "yes".into(),
                    "mounted" => "no".into(),
                    "mountpoint" => "/lab/db2".into(),
                    "canmount" => "on".into(),
                    p if p.starts_with("pgzfs:") => "-".into(),
                    _ => "filesystem".into(),
                };
                return answer(format!("{object}\t{property}\t{value}\n"), 0, "");
            }
            match args[0].as_str() {
                "set" => {
                    let (name, value) = args[1].split_once('=').unwrap();
                    self.props
                        .borrow_mut()
                        .insert((args[2].clone(), name.to_string()), value.to_string());
                }
                "unmount" => *self.mounted.borrow_mut() = false,
                "mount" => *self.mounted.borrow_mut() = true,
                "rename" => {
                    let mut existing = self.existing.borrow_mut();
                    existing.retain(|d| d != &args[1]);
                    existing.push(args[2].clone());
                    // Properties travel with the dataset.
                    let mut props = self.props.borrow_mut();
                    let moved: Vec<_> = props
                        .iter()
                        .filter(|((object, _), _)| object == &args[1])
                        .map(|((_, name), value)| (name.clone(), value.clone()))
                        .collect();
                    props.retain(|(object, _), _| object != &args[1]);
                    for (name, value) in moved {
                        props.insert((args[2].clone(), name), value);
                    }
                }
                _ => {}
            }
            self.log.borrow_mut().push(args.join(" "));
            answer(String::new(), 0, "")
        }
        fn source(&self, _: &Cmd) -> Result<Box<dyn Source>> {
            unreachable!("the test sends nothing")
        }
        fn sink(&self, cmd: &Cmd) -> Result<Box<dyn Sink>> {
            self.log.borrow_mut().push(cmd.argv[1..].join(" "));
            let outcome = self.receives.borrow_mut().pop_front().unwrap();
            Ok(Box::new(FinishesAs(Some(outcome))))
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    struct Nothing;
    impl Source for Nothing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        fn abort(self: Box<Self>) {}
    }

    fn replace(zfs: &dyn Zfs, r: &Replacement) -> std::result::Result<Replaced<u32>, NotReplaced> {
        let sends = std::cell::Cell::new(0);
        zfs.receive_replacing(
            r,
            &Interrupt::default(),
            |token| {
                assert!(token.is_none());
                sends.set(sends.get() + 1);
                Ok(Box::new(Nothing))
            },
            |_source, sink| sink.finish().map(|()| sends.get()),
        )
    }

    #[test]
    fn an_incremental_unmounts_destroys_the_newer_snapshots_and_retries_a_busy_receive() {
        let busy = Error::failed("`zfs receive -u -F tank/pg` failed: cannot receive incremental stream: dataset is busy");
        let (runner, log) = Scripted::new(vec![Err(busy), Ok(())]);
        let zfs = ZfsCli::new(runner);
        let dataset = DatasetName::parse("tank/pg").unwrap();
        let newer = [SnapName::parse("pgzfs-3").unwrap()];
        let replaced = replace(
            &zfs,
            &Replacement {
                dataset: &dataset,
                exists: true,
                rename_aside: None,
                newer_than_base: &newer,
                incremental: true,
                resumable: false,
                resume: None,
            },
        )
        .map_err(|e| e.error)
        .unwrap();
        assert_eq!(
            replaced.transferred, 2,
            "sent once more after the busy receive"
        );
        assert_eq!(replaced.old_mountpoint, Some(PathBuf::from("/lab/db2")));
        assert_eq!(
            *log.borrow(),
            [
                "unmount tank/pg",
                "destroy tank/pg@pgzfs-3",
                "receive -u -F tank/pg",
                "receive -u -F tank/pg",
            ]
        );
        // Mounted where it belongs afterwards, the mountpoint changed only when it differs.
        let zfs: &dyn Zfs = &zfs;
        zfs.mount_at(&dataset, Path::new("/lab/db2")).unwrap();
        zfs.mount_at(&dataset, Path::new("/lab/other")).unwrap();
        assert_eq!(
            log.borrow()[4..],
            ["mount tank/pg", "set mountpoint=/lab/other tank/pg"]
        );
    }

    #[test]
    fn a_failed_full_receive_puts_the_renamed_dataset_back_and_mounts_it() {
        let refused = Error::failed("cannot receive new filesystem stream: out of space");
        let (runner, log) = Scripted::new(vec![Err(refused)]);
        let zfs = ZfsCli::new(runner);
        let dataset = DatasetName::parse("tank/pg").unwrap();
        let aside = DatasetName::parse("tank/pg-old-20261201").unwrap();
        let failed = replace(
            &zfs,
            &Replacement {
                dataset: &dataset,
                exists: true,
                rename_aside: Some(&aside),
                newer_than_base: &[],
                incremental: false,
                resumable: false,
                resume: None,
            },
        )
        .err()
        .unwrap();
        assert_eq!(failed.kept, Kept::Nothing);
        assert!(failed.error.to_string().contains("out of space"));
        let log = log.borrow();
        assert_eq!(
            log[..5],
            [
                "unmount tank/pg",
                "rename tank/pg tank/pg-old-20261201",
                "set pgzfs:canmount_before=on tank/pg-old-20261201",
                "set canmount=noauto tank/pg-old-20261201",
                "receive -u tank/pg",
            ],
            "no second attempt of a lasting failure"
        );
        // The failed full receive created nothing: the old dataset goes back under its
        // name, mounted, and mounting at boot, as it was before the run.
        assert_eq!(
            log[5..],
            [
                "rename tank/pg-old-20261201 tank/pg",
                "set canmount=on tank/pg",
                "mount tank/pg"
            ]
        );
    }

    #[test]
    fn taking_back_an_incremental_destroys_the_received_snapshot_and_rolls_back_to_the_base() {
        let (runner, log) = Scripted::new(vec![]);
        let zfs = ZfsCli::new(runner);
        let zfs: &dyn Zfs = &zfs;
        let dataset = DatasetName::parse("tank/pg").unwrap();
        zfs.undo_incremental(
            &dataset,
            &SnapName::parse("pgzfs-new").unwrap(),
            &SnapName::parse("pgzfs-base").unwrap(),
        )
        .unwrap();
        // Never `rollback -r`: the received snapshot is destroyed by name, so a snapshot
        // nobody expected makes the rollback fail instead of vanishing.
        assert_eq!(
            *log.borrow(),
            [
                "unmount tank/pg",
                "destroy tank/pg@pgzfs-new",
                "rollback tank/pg@pgzfs-base",
            ]
        );
    }

    #[test]
    fn taking_back_a_full_copy_destroys_it_and_gives_the_kept_one_its_name_back() {
        let (runner, log) = Scripted::new(vec![]);
        let zfs = ZfsCli::new(runner);
        let zfs: &dyn Zfs = &zfs;
        let dataset = DatasetName::parse("tank/pg").unwrap();
        let aside = DatasetName::parse("tank/pg-old-20261201").unwrap();
        zfs.undo_full_aside(&dataset, &aside).unwrap();
        assert_eq!(
            *log.borrow(),
            [
                "unmount tank/pg",
                "destroy -r tank/pg",
                "rename tank/pg-old-20261201 tank/pg",
            ]
        );
    }
}

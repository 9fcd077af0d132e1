//! The receiving side's blocking half: a state machine that takes frames (after `Hello`), writes
//! files into a private staging directory, verifies each one and the final manifest, and commits
//! by renaming staging to final in one step. Runs on a blocking thread (file writes, hashing,
//! fsync). Dropping it uncommitted removes the staging directory, whatever the reason (error,
//! peer gone, cancel), so no half-received dump is ever left behind or mistaken for a complete one.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::protocol::{validate_name, Frame, Hash, Hasher, ManifestEntry};
use crate::receiver::{Limits, RecvError};
use crate::Progress;
use tokio::sync::mpsc;

/// Result of one frame.
pub enum Step {
    /// Keep reading.
    More,
    /// `Done` arrived, everything verified, staging renamed to final.
    Committed(Committed),
}

/// What was committed.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub files: u64,
    pub bytes: u64,
    /// Time spent after `Done`: manifest check, fsync of the directory, rename.
    pub commit: Duration,
}

/// With fsync on, writeback of a growing file is started every this many bytes, so the fsync
/// at its end (on the critical path after the dump) has little left to write.
const WRITE_BEHIND: u64 = 8 << 20;

struct Incoming {
    name: String,
    file: File,
    written: u64,
    /// Bytes whose writeback was started.
    flushed: u64,
    declared: Option<u64>,
    hasher: Hasher,
}

struct Received {
    len: u64,
    hash: Hash,
}

pub struct Staging {
    staging: PathBuf,
    final_dir: PathBuf,
    limits: Limits,
    fsync: bool,
    progress: Progress,
    open: HashMap<u32, Incoming>,
    /// Every name announced (open or complete): duplicates are refused.
    names: HashSet<String>,
    done: HashMap<String, Received>,
    used_ids: HashSet<u32>,
    total: u64,
    committed: bool,
    /// Written payloads go back here to be read into again.
    recycle: Option<mpsc::UnboundedSender<Bytes>>,
}

impl Staging {
    /// Creates the staging directory (mode 0700; it must not exist) after checking that the
    /// final directory does not exist either. `recycle`, if given, gets every `Data` payload
    /// back once it is written and hashed, so the reader can read the next frames into it.
    pub fn create(
        staging: &Path,
        final_dir: &Path,
        limits: Limits,
        fsync: bool,
        progress: Progress,
        recycle: Option<mpsc::UnboundedSender<Bytes>>,
    ) -> Result<Staging, RecvError> {
        if final_dir.symlink_metadata().is_ok() {
            return Err(RecvError::FinalExists(final_dir.to_owned()));
        }
        match std::fs::DirBuilder::new().mode(0o700).create(staging) {
            Ok(()) => {}
            // Never reuse or remove a directory we did not create: it may be someone else's.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RecvError::StagingExists(staging.to_owned()))
            }
            Err(e) => {
                return Err(RecvError::io(
                    format!("create staging dir {}", staging.display()),
                    e,
                ))
            }
        }
        Ok(Staging {
            staging: staging.to_owned(),
            final_dir: final_dir.to_owned(),
            limits,
            fsync,
            progress,
            open: HashMap::new(),
            names: HashSet::new(),
            done: HashMap::new(),
            used_ids: HashSet::new(),
            total: 0,
            committed: false,
            recycle,
        })
    }

    pub fn handle(&mut self, frame: Frame) -> Result<Step, RecvError> {
        match frame {
            Frame::FileStart {
                id,
                name,
                mode,
                len,
            } => self.file_start(id, name, mode, len).map(|()| Step::More),
            Frame::Data { id, offset, bytes } => self.data(id, offset, bytes).map(|()| Step::More),
            Frame::FileEnd {
                id,
                len,
                mode,
                hash,
            } => self.file_end(id, len, mode, hash).map(|()| Step::More),
            Frame::Done { manifest } => self.commit(&manifest).map(Step::Committed),
            Frame::Abort { reason } => Err(RecvError::PeerAborted(reason)),
            Frame::Keepalive => Ok(Step::More),
            other @ (Frame::Hello { .. } | Frame::Ack { .. }) => Err(RecvError::UnexpectedFrame {
                got: other.kind_name(),
                expected: "file-start, data, file-end, done or abort",
            }),
        }
    }

    fn file_start(
        &mut self,
        id: u32,
        name: String,
        mode: u32,
        len: Option<u64>,
    ) -> Result<(), RecvError> {
        if let Err(reason) = validate_name(&name) {
            return Err(RecvError::InvalidName { name, reason });
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            // A symlink, device, fifo or directory: images are plain files, nothing else.
            return Err(RecvError::NotRegularFile { name, mode });
        }
        if self.names.contains(&name) {
            return Err(RecvError::DuplicateName(name));
        }
        if !self.used_ids.insert(id) {
            return Err(RecvError::DuplicateFileId(id));
        }
        if self.names.len() as u64 >= self.limits.max_files {
            return Err(RecvError::TooManyFiles(self.limits.max_files));
        }
        if self.open.len() >= self.limits.max_open_files {
            return Err(RecvError::TooManyOpenFiles(self.limits.max_open_files));
        }
        if let Some(len) = len {
            // A declared length is reserved against the total at once.
            self.check_size(&name, len, len)?;
            self.total += len;
        }
        let path = self.staging.join(&name);
        // create_new + O_NOFOLLOW: never write through anything that appeared in staging.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| RecvError::io(format!("create {}", path.display()), e))?;
        self.names.insert(name.clone());
        self.open.insert(
            id,
            Incoming {
                name,
                file,
                written: 0,
                flushed: 0,
                declared: len,
                hasher: Hasher::new(),
            },
        );
        Ok(())
    }

    /// Refuses a file that would end at `file_len` when the total grows by `added`.
    fn check_size(&self, name: &str, file_len: u64, added: u64) -> Result<(), RecvError> {
        if file_len > self.limits.max_file_bytes {
            return Err(RecvError::FileTooLarge {
                name: name.to_owned(),
                limit: self.limits.max_file_bytes,
            });
        }
        if self.total.saturating_add(added) > self.limits.max_total_bytes {
            return Err(RecvError::TotalTooLarge {
                limit: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    fn data(&mut self, id: u32, offset: u64, bytes: Bytes) -> Result<(), RecvError> {
        let f = self.open.get(&id).ok_or(RecvError::UnknownFileId(id))?;
        if offset != f.written {
            return Err(RecvError::OutOfOrder {
                name: f.name.clone(),
                expected: f.written,
                got: offset,
            });
        }
        let n = bytes.len() as u64;
        let end = f.written.saturating_add(n);
        if let Some(d) = f.declared {
            if end > d {
                return Err(RecvError::LengthMismatch {
                    name: f.name.clone(),
                    expected: d,
                    got: end,
                });
            }
        } else {
            // A declared length was already checked whole at FileStart.
            self.check_size(&f.name, end, n)?;
        }
        let f = self.open.get_mut(&id).ok_or(RecvError::UnknownFileId(id))?;
        f.file
            .write_all(&bytes)
            .map_err(|e| RecvError::io(format!("write {}", f.name), e))?;
        f.written = end;
        if self.fsync && f.written - f.flushed >= WRITE_BEHIND {
            // SAFETY: plain syscall on our open file; advisory, so its result is not needed.
            let r = unsafe {
                libc::sync_file_range(
                    f.file.as_raw_fd(),
                    f.flushed as libc::off64_t,
                    (f.written - f.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if r != 0 {
                log::debug!("sync_file_range {}: {}", f.name, io::Error::last_os_error());
            }
            f.flushed = f.written;
        }
        // Hashed here, while the payload is still in the cache from the write: XXH3 costs less
        // than handing the chunk to another thread did.
        f.hasher.update(&bytes);
        if f.declared.is_none() {
            self.total += n;
        }
        self.progress.add_bytes(n);
        if let Some(r) = &self.recycle {
            // The reader may have stopped: then the buffer is just freed.
            let _ = r.send(bytes);
        }
        Ok(())
    }

    fn file_end(&mut self, id: u32, len: u64, mode: u32, hash: Hash) -> Result<(), RecvError> {
        let f = self.open.remove(&id).ok_or(RecvError::UnknownFileId(id))?;
        if len != f.written || f.declared.is_some_and(|d| d != len) {
            return Err(RecvError::LengthMismatch {
                name: f.name,
                expected: f.declared.unwrap_or(len),
                got: f.written,
            });
        }
        if f.hasher.finish() != hash {
            return Err(RecvError::ChecksumMismatch { name: f.name });
        }
        // Permission bits only: no setuid/setgid/sticky from the wire.
        f.file
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| RecvError::io(format!("chmod {}", f.name), e))?;
        if self.fsync {
            f.file
                .sync_all()
                .map_err(|e| RecvError::io(format!("fsync {}", f.name), e))?;
        }
        self.progress.add_file();
        self.done.insert(f.name, Received { len, hash });
        Ok(())
    }

    fn commit(&mut self, manifest: &[ManifestEntry]) -> Result<Committed, RecvError> {
        let start = Instant::now();
        if !self.open.is_empty() {
            let mut names: Vec<_> = self.open.values().map(|f| f.name.clone()).collect();
            names.sort();
            return Err(RecvError::FilesStillOpen(names));
        }
        let mut listed = HashSet::new();
        for e in manifest {
            if !listed.insert(e.name.as_str()) {
                return Err(RecvError::ManifestMismatch(format!(
                    "{} listed twice",
                    e.name
                )));
            }
            match self.done.get(&e.name) {
                None => {
                    return Err(RecvError::ManifestMismatch(format!(
                        "{} is listed but was not received",
                        e.name
                    )))
                }
                Some(r) if r.len != e.len || r.hash != e.hash => {
                    return Err(RecvError::ManifestMismatch(format!(
                        "{}: received {} bytes with another checksum than listed ({} bytes)",
                        e.name, r.len, e.len
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self.done.keys().find(|n| !listed.contains(n.as_str())) {
            return Err(RecvError::ManifestMismatch(format!(
                "{extra} was received but is not listed"
            )));
        }
        if self.fsync {
            sync_dir(&self.staging)?;
        }
        // RENAME_NOREPLACE: the final directory appears complete or not at all, and an
        // existing one (another migration, a stale run) is never replaced.
        renameat2(
            AT_FDCWD,
            &self.staging,
            AT_FDCWD,
            &self.final_dir,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => {
                RecvError::FinalExists(self.final_dir.clone())
            }
            e => RecvError::io(
                format!(
                    "rename {} to {}",
                    self.staging.display(),
                    self.final_dir.display()
                ),
                io::Error::from(e),
            ),
        })?;
        self.committed = true;
        if self.fsync {
            if let Some(parent) = self.final_dir.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                sync_dir(parent)?;
            }
        }
        Ok(Committed {
            files: self.done.len() as u64,
            bytes: self.done.values().map(|r| r.len).sum(),
            commit: start.elapsed(),
        })
    }
}

fn sync_dir(dir: &Path) -> Result<(), RecvError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RecvError::io(format!("fsync {}", dir.display()), e))
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            self.open.clear();
            if let Err(e) = std::fs::remove_dir_all(&self.staging) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::error!(
                        "removing staging dir {} failed: {e}",
                        self.staging.display()
                    );
                }
            }
        }
    }
}

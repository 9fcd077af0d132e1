//! The sending side's blocking half: inotify on the image directory plus all file reading and
//! hashing, on a thread of its own so that no blocking syscall runs on an async worker. It turns
//! the directory into a sequence of frames handed to the async writer through a bounded channel
//! (the bound is the backpressure: a slow link stalls the reads, not memory).
//!
//! When a file is sent:
//! - `pages-*.img` is tailed: `FileStart` (length unknown) as soon as it appears, `Data` for every
//!   appended range, `FileEnd` at its `IN_CLOSE_WRITE` (CRIU appends sequentially and closes once).
//! - any other file whole, at its `IN_CLOSE_WRITE` (or `IN_MOVED_TO`).
//! - files that existed before the watch (runc's `descriptors.json`), or whose close we missed
//!   (queue overflow), at the end of the dump, when nothing is written any more.
//!
//! At the end (the async side writes `WAKE_DONE` on the wake socket once CRIU exited with
//! success) the collector drains the events, scans the directory, sends whatever is not sent yet,
//! checks that no sent file changed size since, and sends `Done` with the manifest.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use bytes::Bytes;
use inotify::{EventMask, Inotify};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::mpsc;

use crate::protocol::{validate_name, Frame, Hasher, ManifestEntry, MAX_DATA};
use crate::sender::SendError;

/// Byte the async side writes on the wake socket when the dump ended with success. Closing the
/// socket instead (the async side gave up or was dropped) stops the collector.
pub(crate) const WAKE_DONE: u8 = b'D';

/// Most bytes read from one tailed file before events are looked at again, so that a pages
/// file growing faster than the link does not starve the other files.
const TAIL_BUDGET: u64 = 64 << 20;

/// `pages-N.img` holds the memory pages: it is large and appended sequentially, so it is
/// streamed while it grows; every other image is small and sent once it is closed.
pub fn is_tailed(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// What was sent, for the stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Collected {
    pub files: u64,
    pub bytes: u64,
}

enum State {
    /// Seen but not known to be complete: sent at its close or at the end of the dump.
    Pending,
    /// A pages file being streamed as it grows.
    Tailing(Box<OpenFile>),
    /// Sent completely with this length (checked again at the end).
    Sent { len: u64 },
}

struct OpenFile {
    id: u32,
    file: File,
    offset: u64,
    hasher: Hasher,
}

pub(crate) struct Collector {
    dir: PathBuf,
    inotify: Inotify,
    wake: UnixStream,
    tx: mpsc::Sender<Frame>,
    /// Buffers of `Data` frames already written, to read the next chunks into.
    spare: mpsc::UnboundedReceiver<Vec<u8>>,
    chunk: usize,
    files: HashMap<String, State>,
    manifest: Vec<ManifestEntry>,
    next_id: u32,
    bytes: u64,
    /// Names neither sent nor refused ([`crate::SendOptions::ignore`]).
    ignore: Vec<String>,
}

impl Collector {
    pub(crate) fn new(
        dir: PathBuf,
        inotify: Inotify,
        wake: UnixStream,
        tx: mpsc::Sender<Frame>,
        spare: mpsc::UnboundedReceiver<Vec<u8>>,
        chunk: usize,
        ignore: Vec<String>,
    ) -> Self {
        Collector {
            dir,
            inotify,
            wake,
            tx,
            spare,
            chunk: chunk.clamp(4096, MAX_DATA),
            files: HashMap::new(),
            manifest: Vec::new(),
            next_id: 0,
            bytes: 0,
            ignore,
        }
    }

    /// Runs until the end of the dump (or a failure). On failure it tries to tell the peer
    /// with an `Abort` frame before returning the error. Everything it holds is closed on
    /// return but the watch, handed back: closing an inotify instance waits for an SRCU grace
    /// period (0-20 ms measured here), which need not delay the outcome.
    pub(crate) fn run(mut self) -> (Result<Collected, SendError>, Inotify) {
        let res = match self.run_inner() {
            Ok(c) => Ok(c),
            Err(e) => {
                if !matches!(e, SendError::Cancelled) {
                    let _ = self.tx.blocking_send(Frame::Abort {
                        reason: format!("sender: {e}"),
                    });
                }
                Err(e)
            }
        };
        let Collector { inotify, .. } = self;
        (res, inotify)
    }

    fn run_inner(&mut self) -> Result<Collected, SendError> {
        // The watch is already in place (Sender::new), so this scan plus the events cover every
        // file: one that exists now is seen here, one created later raises an event.
        self.scan(false)?;
        let mut events = vec![0u8; 64 * 1024];
        loop {
            let more = self.pump_tails()?;
            // With data left in a tail, only look at what is ready; else sleep until an event.
            let (ino, wake) = self.wait(more)?;
            if ino {
                self.drain_events(&mut events)?;
            }
            if wake {
                let mut b = [0u8; 1];
                match (&self.wake).read(&mut b) {
                    Ok(1) if b[0] == WAKE_DONE => break,
                    Ok(_) => return Err(SendError::Cancelled),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(SendError::Cancelled),
                }
            }
        }
        // CRIU has exited: every file is closed. Take the last events (closes we have not
        // seen yet), then whatever the directory holds that was not sent.
        self.drain_events(&mut events)?;
        self.scan(true)?;
        self.verify_unchanged()?;
        let manifest = std::mem::take(&mut self.manifest);
        let files = manifest.len() as u64;
        self.send(Frame::Done { manifest })?;
        Ok(Collected {
            files,
            bytes: self.bytes,
        })
    }

    fn wait(&self, nonblocking: bool) -> Result<(bool, bool), SendError> {
        let timeout = if nonblocking {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        let mut fds = [
            PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        loop {
            match poll(&mut fds, timeout) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SendError::Watch(io::Error::from(e))),
            }
        }
        let ready = |fd: &PollFd| {
            fd.revents().is_some_and(|r| {
                !(r & (PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)).is_empty()
            })
        };
        Ok((ready(&fds[0]), ready(&fds[1])))
    }

    fn drain_events(&mut self, buf: &mut [u8]) -> Result<(), SendError> {
        loop {
            let events: Vec<_> = match self.inotify.read_events(buf) {
                Ok(evs) => evs.map(|e| (e.mask, e.name.map(os_name))).collect(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SendError::Watch(e)),
            };
            if events.is_empty() {
                return Ok(());
            }
            for (mask, name) in events {
                let name = name.transpose().map_err(|n| SendError::UnsupportedName {
                    name: n,
                    reason: "not UTF-8".into(),
                })?;
                self.handle_event(mask, name)?;
            }
        }
    }

    fn handle_event(&mut self, mask: EventMask, name: Option<String>) -> Result<(), SendError> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            // Lost events only delay files (they are sent at the end): rescan to tail what grows.
            log::warn!(
                "inotify queue overflow on {}: rescanning",
                self.dir.display()
            );
            return self.scan(false);
        }
        if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
            return Err(SendError::DirGone(self.dir.clone()));
        }
        let Some(name) = name else { return Ok(()) };
        if self.ignore.contains(&name) {
            return Ok(());
        }
        if mask.contains(EventMask::ISDIR) {
            return Err(SendError::NotRegular { name });
        }
        if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            return match self.files.get(&name) {
                Some(State::Pending) => {
                    self.files.remove(&name);
                    Ok(())
                }
                Some(_) => Err(SendError::FileRemoved { name }),
                None => Ok(()),
            };
        }
        if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO) {
            return self.complete(&name);
        }
        if mask.intersects(EventMask::CREATE | EventMask::MODIFY) {
            return self.seen(&name);
        }
        Ok(())
    }

    /// A file exists and may still be written.
    fn seen(&mut self, name: &str) -> Result<(), SendError> {
        if self.files.contains_key(name) {
            return Ok(());
        }
        check_name(name)?;
        if is_tailed(name) {
            if let Some((open, _)) = self.open_and_start(name, false)? {
                self.files
                    .insert(name.to_owned(), State::Tailing(Box::new(open)));
            }
        } else {
            self.files.insert(name.to_owned(), State::Pending);
        }
        Ok(())
    }

    /// A file was closed after writing (or moved in): it is complete.
    fn complete(&mut self, name: &str) -> Result<(), SendError> {
        match self.files.remove(name) {
            Some(State::Sent { .. }) => Err(SendError::Rewritten {
                name: name.to_owned(),
            }),
            Some(State::Tailing(open)) => self.finish(name, *open, None),
            Some(State::Pending) | None => self.send_whole(name),
        }
    }

    /// Opens a file and announces it. `Ok(None)`: it vanished before we got to it (created and
    /// removed while we looked): nothing to send.
    /// `whole`: the file is complete and its length is announced. Returns the size at open.
    fn open_and_start(
        &mut self,
        name: &str,
        whole: bool,
    ) -> Result<Option<(OpenFile, u64)>, SendError> {
        check_name(name)?;
        let path = self.dir.join(name);
        // O_NOFOLLOW: a symlink in the image dir is refused, never followed.
        let file = match File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(SendError::NotRegular {
                    name: name.to_owned(),
                })
            }
            Err(e) => return Err(SendError::io(format!("open {}", path.display()), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| SendError::io(format!("stat {}", path.display()), e))?;
        if !meta.file_type().is_file() {
            return Err(SendError::NotRegular {
                name: name.to_owned(),
            });
        }
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).ok_or(SendError::TooManyFiles)?;
        self.send(Frame::FileStart {
            id,
            name: name.to_owned(),
            mode: meta.mode(),
            len: whole.then_some(meta.len()),
        })?;
        let open = OpenFile {
            id,
            file,
            offset: 0,
            hasher: Hasher::new(),
        };
        Ok(Some((open, meta.len())))
    }

    fn send_whole(&mut self, name: &str) -> Result<(), SendError> {
        let Some((open, len)) = self.open_and_start(name, true)? else {
            return Ok(());
        };
        // The length announced is the size at open; the file is complete, so reading to EOF
        // must give exactly that (checked in finish).
        self.finish(name, open, Some(len))
    }

    /// Reads the rest of the file, sends `FileEnd` and records it as sent.
    fn finish(
        &mut self,
        name: &str,
        mut open: OpenFile,
        declared: Option<u64>,
    ) -> Result<(), SendError> {
        while self.read_some(&mut open, u64::MAX)? {}
        if let Some(d) = declared {
            if d != open.offset {
                return Err(SendError::FileChanged {
                    name: name.to_owned(),
                    sent: open.offset,
                    now: d,
                });
            }
        }
        let hash = open.hasher.finish();
        // The mode now, not at FileStart: a tailed file may have been chmod'ed meanwhile.
        let mode = open
            .file
            .metadata()
            .map_err(|e| SendError::io(format!("stat {name}"), e))?
            .mode();
        self.send(Frame::FileEnd {
            id: open.id,
            len: open.offset,
            mode,
            hash,
        })?;
        self.manifest.push(ManifestEntry {
            name: name.to_owned(),
            len: open.offset,
            hash,
        });
        self.files
            .insert(name.to_owned(), State::Sent { len: open.offset });
        Ok(())
    }

    /// Sends what was appended to every tailed file since the last look.
    /// `Ok(true)`: a file had more than its budget, so there is more to read right away.
    fn pump_tails(&mut self) -> Result<bool, SendError> {
        let mut tails: Vec<(String, Box<OpenFile>)> = Vec::new();
        for (name, state) in self.files.iter_mut() {
            if matches!(state, State::Tailing(_)) {
                if let State::Tailing(open) = std::mem::replace(state, State::Pending) {
                    tails.push((name.clone(), open));
                }
            }
        }
        let mut result = Ok(false);
        for (name, mut open) in tails {
            if result.is_ok() {
                let mut budget = TAIL_BUDGET;
                loop {
                    let before = open.offset;
                    match self.read_some(&mut open, budget) {
                        Ok(true) => budget = budget.saturating_sub(open.offset - before),
                        Ok(false) => break,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                    if budget == 0 {
                        result = Ok(true);
                        break;
                    }
                }
            }
            self.files.insert(name, State::Tailing(open));
        }
        result
    }

    /// Reads one chunk (at most `budget` bytes) at the file's offset and sends it. `false` at EOF.
    fn read_some(&mut self, open: &mut OpenFile, budget: u64) -> Result<bool, SendError> {
        let want = (self.chunk as u64).min(budget) as usize;
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.reserve_exact(want);
        while buf.len() < want {
            let max = want - buf.len();
            let n = read_into_spare(&open.file, &mut buf, max)
                .map_err(|e| SendError::io("read image file".to_owned(), e))?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(false);
        }
        open.hasher.update(&buf);
        let len = buf.len() as u64;
        self.send(Frame::Data {
            id: open.id,
            offset: open.offset,
            bytes: Bytes::from(buf),
        })?;
        open.offset += len;
        self.bytes += len;
        Ok(true)
    }

    /// Scans the directory. Before the end: start tailing pages files, remember the rest.
    /// At the end (`last`): everything not sent yet is complete now and is sent.
    fn scan(&mut self, last: bool) -> Result<(), SendError> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| SendError::io(format!("read dir {}", self.dir.display()), e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry =
                entry.map_err(|e| SendError::io(format!("read dir {}", self.dir.display()), e))?;
            let name = os_name(&entry.file_name()).map_err(|n| SendError::UnsupportedName {
                name: n,
                reason: "not UTF-8".into(),
            })?;
            if self.ignore.contains(&name) {
                continue;
            }
            let ft = entry
                .file_type()
                .map_err(|e| SendError::io(format!("stat {name}"), e))?;
            // file_type() does not follow symlinks: a symlink is refused here too.
            if !ft.is_file() {
                return Err(SendError::NotRegular { name });
            }
            names.push(name);
        }
        names.sort();
        for name in &names {
            if last {
                match self.files.remove(name) {
                    Some(State::Sent { len }) => {
                        self.files.insert(name.clone(), State::Sent { len });
                    }
                    Some(State::Tailing(open)) => self.finish(name, *open, None)?,
                    Some(State::Pending) | None => self.send_whole(name)?,
                }
            } else {
                self.seen(name)?;
            }
        }
        if last {
            // A file we streamed part of is gone from the directory: the dump is not what we sent.
            if let Some(name) = self.files.iter().find_map(|(n, s)| match s {
                State::Tailing(_) => Some(n.clone()),
                _ => None,
            }) {
                return Err(SendError::FileRemoved { name });
            }
        }
        Ok(())
    }

    /// CRIU never writes a file after closing it; if one changed size after we sent it, the
    /// peer has a wrong image: fail rather than let it restore from that.
    fn verify_unchanged(&self) -> Result<(), SendError> {
        for (name, state) in &self.files {
            if let State::Sent { len } = state {
                match std::fs::symlink_metadata(self.dir.join(name)) {
                    Ok(m) if m.len() == *len => {}
                    Ok(m) => {
                        return Err(SendError::FileChanged {
                            name: name.clone(),
                            sent: *len,
                            now: m.len(),
                        })
                    }
                    Err(_) => return Err(SendError::FileRemoved { name: name.clone() }),
                }
            }
        }
        Ok(())
    }

    fn send(&self, frame: Frame) -> Result<(), SendError> {
        // A closed channel means the async side stopped (stream error or cancel): just stop.
        self.tx
            .blocking_send(frame)
            .map_err(|_| SendError::Cancelled)
    }
}

fn check_name(name: &str) -> Result<(), SendError> {
    validate_name(name).map_err(|e| SendError::UnsupportedName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn os_name(n: &OsStr) -> Result<String, String> {
    n.to_str()
        .map(str::to_owned)
        .ok_or_else(|| n.to_string_lossy().into_owned())
}

/// One read(2) of at most `max` bytes into the vector's unused capacity: no zeroing of
/// multi-MiB buffers and no growth (std's read_to_end would probe in small steps).
fn read_into_spare(file: &File, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = (buf.capacity() - buf.len()).min(max);
    if spare == 0 {
        return Ok(0);
    }
    loop {
        // SAFETY: the kernel writes at most `spare` bytes into the allocated, unused tail of
        // the vector; the length then grows by exactly the number of bytes written.
        let n = unsafe {
            libc::read(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(buf.len()).cast(),
                spare,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        // SAFETY: see above, n <= spare bytes were initialised by read(2).
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn read_into_spare_stops_at_max_and_capacity() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[9; 100]).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        // A recycled buffer larger than the budget reads no more than the budget.
        let mut buf = Vec::with_capacity(4096);
        assert_eq!(read_into_spare(&f, &mut buf, 30).unwrap(), 30);
        assert_eq!(read_into_spare(&f, &mut buf, 1000).unwrap(), 70);
        assert_eq!(buf, vec![9; 100]);
        assert_eq!(read_into_spare(&f, &mut buf, 1000).unwrap(), 0);
        let mut full = Vec::with_capacity(1);
        full.push(1);
        assert_eq!(read_into_spare(&f, &mut full, 10).unwrap(), 0);
    }
}

//! CRIU's image streamer protocol (the `stream` option, criu/img-streamer.c), so that the
//! images of a pre-copy dump go from the source's CRIU to the destination's without a file, a
//! copy or a page-cache page on either side, and the memory pages cross the link while the
//! destination restores. Blocking code: run it on threads of its own.
//!
//! - [`capture`] (source): CRIU connects to [`CAPTURE_SOCKET`] in its images dir and, for each
//!   image it writes, sends the name and the read end of a pipe it writes the image into. Every
//!   image but the pages is spliced into the socket to the destination as it fills, in frames
//!   ([`Kind`]); the pages (`pages-*.img`) are moved into pipes of its own (references to the
//!   frozen service's memory: no copy), so the dump ends without waiting for the link. Told to
//!   go on once the dump succeeded, it sends [`Kind::Ready`], then the pages, then
//!   [`Kind::End`].
//! - [`hold`] (destination): splices each image off that socket into pipes of its own
//!   (references to the received buffers: 1 GiB in ~0.2 s and ~17 MiB here, where a file write
//!   allocated and copied every page) and hands the images over at [`Kind::Ready`], the pages
//!   still arriving: each image is a channel of its pipes, published as they are filled.
//! - [`serve`] (destination): the restore's CRIU connects to [`SERVE_SOCKET`], asks for images
//!   by name and gets each spliced into a pipe it reads from, the pages as they arrive: the
//!   restore copies them into the service's memory while the rest are on the way. CRIU reads an
//!   image once; one asked for again fails the serve (it was consumed), never silently. An
//!   image whose stream broke is cut short: CRIU fails on its early end.
//!
//! On the wire, after [`write_hello`]: frames of a 13-byte header (kind, image id u32 LE,
//! length u64 LE) and `length` bytes. The source sends Ready and End only once its dump
//! succeeded: a stream that ends before Ready holds nothing; one that ends before End leaves
//! an image short, and the restore fails.
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::protocol::validate_name;
use crate::Progress;

/// The socket the dumping CRIU connects to, in its images dir.
pub const CAPTURE_SOCKET: &str = "streamer-capture.sock";
/// The socket the restoring CRIU connects to, in its images dir.
pub const SERVE_SOCKET: &str = "streamer-serve.sock";
/// First bytes of a stream, before the token.
const MAGIC: &[u8; 8] = b"UMSIMG1\n";
/// Size the pipes are grown to (up to fs.pipe-max-size): fewer, larger splices.
const PIPE_BYTES: i32 = 4 << 20;
const HEADER: usize = 13;
/// Longest image name, and longest CRIU request (a name in a protobuf message).
const MAX_NAME: usize = 4096;
const MAX_TOKEN: usize = 4096;
/// Byte the caller of [`capture`] writes on its control socket once the dump succeeded.
pub const GO: u8 = b'g';
/// Descriptors a stream's pipes may hold at once (one per [`PIPE_BYTES`] of pages: 64 GiB).
const RESERVED_FDS: libc::rlim_t = 16384;

/// Why streaming failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("the image stream ended before the source said it was complete")]
    Truncated,
    #[error("the image stream is malformed: {0}")]
    Malformed(String),
    #[error("the stream's token is not this migration's")]
    BadToken,
    #[error("the images exceed the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("CRIU's request is malformed: {0}")]
    BadRequest(String),
    #[error("CRIU asked for {0} again, which was served already")]
    ServedTwice(String),
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> StreamError {
    move |source| StreamError::Io { context, source }
}

fn errno_err(context: &'static str) -> impl FnOnce(nix::Error) -> StreamError {
    move |e| StreamError::Io {
        context,
        source: io::Error::from(e),
    }
}

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An image begins; the payload is its name.
    Open = 1,
    /// Bytes of an image.
    Data = 2,
    /// An image is complete.
    Close = 3,
    /// The pages are complete too: the stream ends.
    End = 4,
    /// The dump succeeded: every image is complete but the pages, which follow.
    Ready = 5,
}

impl Kind {
    fn of(b: u8) -> Option<Kind> {
        [Kind::Open, Kind::Data, Kind::Close, Kind::End, Kind::Ready]
            .into_iter()
            .find(|k| *k as u8 == b)
    }
}

fn header(kind: Kind, id: u32, len: u64) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    h[0] = kind as u8;
    h[1..5].copy_from_slice(&id.to_le_bytes());
    h[5..].copy_from_slice(&len.to_le_bytes());
    h
}

/// The first bytes a source sends: the magic and the migration's token.
pub fn write_hello(out: &mut impl Write, token: &str) -> Result<(), StreamError> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&(token.len() as u32).to_le_bytes());
    b.extend_from_slice(token.as_bytes());
    out.write_all(&b).map_err(io_err("send the hello"))
}

/// Reads a source's hello and checks its token.
pub fn read_hello(input: &mut impl Read, token: &str) -> Result<(), StreamError> {
    let mut b = [0; 12];
    input.read_exact(&mut b).map_err(io_err("read the hello"))?;
    if &b[..8] != MAGIC {
        return Err(StreamError::Malformed("not an image stream".into()));
    }
    let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
    if len > MAX_TOKEN {
        return Err(StreamError::BadToken);
    }
    let mut t = vec![0; len];
    input.read_exact(&mut t).map_err(io_err("read the hello"))?;
    if t != token.as_bytes() {
        return Err(StreamError::BadToken);
    }
    Ok(())
}

/// What one side streamed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Streamed {
    pub files: u64,
    pub bytes: u64,
}

/// True once `cancel` is readable or closed (the async side gave up).
fn cancelled(fds: &[PollFd]) -> bool {
    fds[0].revents().is_some_and(|r| !r.is_empty())
}

fn wait(fds: &mut [PollFd]) -> Result<(), StreamError> {
    loop {
        match poll(fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(errno_err("poll")(e)),
        }
    }
}

/// Waits until `fd` is readable (or closed), unless `cancel` comes first.
fn readable(fd: BorrowedFd, cancel: &UnixStream) -> Result<(), StreamError> {
    let mut fds = [
        PollFd::new(cancel.as_fd(), PollFlags::POLLIN),
        PollFd::new(fd, PollFlags::POLLIN),
    ];
    wait(&mut fds)?;
    if cancelled(&fds) {
        return Err(StreamError::Cancelled);
    }
    Ok(())
}

/// Accepts CRIU's connection on `listener`, unless `cancel` comes first.
fn accept(listener: &UnixListener, cancel: &UnixStream) -> Result<UnixStream, StreamError> {
    loop {
        readable(listener.as_fd(), cancel)?;
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(io_err("CRIU's connection"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io_err("accept CRIU's connection")(e)),
        }
    }
}

/// The memory pages: moved into pipes at the source during the dump, sent after it.
fn is_pages(name: &str) -> bool {
    name.starts_with("pages-")
}

/// Pipes an image is kept in, in order, each published as soon as it is made: its reader
/// splices from it until its writer is closed (the pipe full, or the image complete).
enum Piece {
    Pipe(OwnedFd),
    /// The image is complete.
    Done,
}

/// An image being received (or, at the source, the pages being taken from CRIU).
struct Receiving {
    tx: mpsc::Sender<Piece>,
    /// Write end of the last pipe, while it has room.
    writer: Option<OwnedFd>,
}

impl Receiving {
    fn new() -> (Receiving, mpsc::Receiver<Piece>) {
        let (tx, rx) = mpsc::channel();
        (Receiving { tx, writer: None }, rx)
    }

    /// Splices `len` bytes (which `from` has or will have) into the image's pipes, a new one
    /// whenever the last is full.
    fn splice_in(&mut self, from: BorrowedFd, mut len: u64) -> Result<(), StreamError> {
        while len > 0 {
            if self.writer.is_none() {
                let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(errno_err("create a pipe"))?;
                grow_pipe(wr.as_fd());
                // The reader goes on once the writer is gone: send failing only means nobody
                // reads this image (any more).
                let _ = self.tx.send(Piece::Pipe(rd));
                self.writer = Some(wr);
            }
            let w = self.writer.as_ref().expect("set above");
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
            match splice(from, w.as_fd(), len.min(isize::MAX as u64) as usize, flags) {
                Ok(0) => return Err(StreamError::Truncated),
                Ok(n) => len -= n as u64,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    let mut fds = [
                        PollFd::new(w.as_fd(), PollFlags::POLLOUT),
                        PollFd::new(from, PollFlags::POLLIN),
                    ];
                    wait(&mut fds)?;
                    if !fds[0]
                        .revents()
                        .is_some_and(|r| r.contains(PollFlags::POLLOUT))
                    {
                        // No room, and `from` has bytes: the next go to a new pipe.
                        self.writer = None;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(io_err("receive an image")(e)),
            }
        }
        Ok(())
    }

    /// The image is complete.
    fn close(self) {
        drop(self.writer);
        let _ = self.tx.send(Piece::Done);
    }
}

/// Source: streams the images CRIU sends to `listener` (bound to [`CAPTURE_SOCKET`] in its
/// images dir, non-blocking) to `out`, after the hello, the pages held back. Once CRIU closed
/// its connection and every image, reports what it took (`captured`) and waits on `ctl`:
/// [`GO`] (the dump succeeded) sends Ready, the pages and End; anything else, or `ctl`
/// readable earlier, cancels. Returns what it sent.
pub fn capture(
    listener: &UnixListener,
    out: &TcpStream,
    ctl: &mut UnixStream,
    progress: &Progress,
    captured: impl FnOnce(Streamed),
) -> Result<Streamed, StreamError> {
    reserve_fds(out.as_fd());
    let mut criu = Some(accept(listener, ctl)?);
    // Bytes move from CRIU's pipe into this one, then into the socket: a splice into a socket
    // holds its pipe's lock while TCP sends (and, over a veth, while the peer's stack takes
    // it in), and CRIU spun on that lock (perf: ~12% of its time) to write the next pages.
    let (staged, staging) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(errno_err("create a pipe"))?;
    grow_pipe(staging.as_fd());
    let mut open: Vec<(u32, OwnedFd)> = Vec::new();
    let mut pages: HashMap<u32, Receiving> = HashMap::new();
    let mut held: Vec<(u32, mpsc::Receiver<Piece>)> = Vec::new();
    let mut next_id = 0u32;
    let mut stats = Streamed::default();
    let sock = out.as_fd();
    while criu.is_some() || !open.is_empty() {
        let mut fds = vec![PollFd::new(ctl.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &criu {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        let first_pipe = fds.len();
        fds.extend(
            open.iter()
                .map(|(_, p)| PollFd::new(p.as_fd(), PollFlags::POLLIN)),
        );
        wait(&mut fds)?;
        if cancelled(&fds) {
            return Err(StreamError::Cancelled);
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut done = Vec::new();
        for (i, (id, pipe)) in open.iter().enumerate() {
            if !ready[first_pipe + i] {
                continue;
            }
            let n = bytes_in(pipe.as_fd())?;
            if n == 0 {
                // Readable with nothing in it: every writer closed it, the image is complete.
                match pages.remove(id) {
                    Some(r) => r.close(),
                    None => send_all(sock, &header(Kind::Close, *id, 0))?,
                }
                stats.files += 1;
                done.push(i);
                continue;
            }
            if let Some(r) = pages.get_mut(id) {
                r.splice_in(pipe.as_fd(), n as u64)?;
                stats.bytes += n as u64;
                continue;
            }
            // As much as the staging pipe takes (it is empty here, and as large as CRIU's).
            let n = loop {
                match splice(pipe.as_fd(), staging.as_fd(), n, libc::SPLICE_F_MOVE) {
                    Ok(0) => return Err(StreamError::Malformed("an image pipe ran dry".into())),
                    Ok(k) => break k,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(io_err("take an image from CRIU")(e)),
                }
            };
            stats.bytes += n as u64;
            send_more(sock, &header(Kind::Data, *id, n as u64))?;
            splice_exact(staged.as_fd(), sock, n)?;
            progress.add_bytes(n as u64);
        }
        for i in done.into_iter().rev() {
            open.swap_remove(i);
            progress.add_file();
        }
        if first_pipe == 2 && ready[1] {
            let c = criu.as_mut().expect("polled");
            match read_request(c)? {
                None => criu = None,
                Some(name) => {
                    validate_name(&name)
                        .map_err(|e| StreamError::BadRequest(format!("image {name:?}: {e}")))?;
                    let pipe = recv_fd(c)?;
                    grow_pipe(pipe.as_fd());
                    let id = next_id;
                    next_id = next_id
                        .checked_add(1)
                        .ok_or_else(|| StreamError::BadRequest("too many images".into()))?;
                    send_more(sock, &header(Kind::Open, id, name.len() as u64))?;
                    send_all(sock, name.as_bytes())?;
                    if is_pages(&name) {
                        let (r, rx) = Receiving::new();
                        pages.insert(id, r);
                        held.push((id, rx));
                    }
                    open.push((id, pipe));
                }
            }
        }
    }
    captured(stats);
    let mut go = [0u8; 1];
    match ctl.read(&mut go) {
        Ok(1) if go[0] == GO => {}
        _ => return Err(StreamError::Cancelled),
    }
    send_all(sock, &header(Kind::Ready, 0, 0))?;
    for (id, rx) in held {
        for piece in rx.try_iter() {
            if let Piece::Pipe(p) = piece {
                let mut n = bytes_in(p.as_fd())?;
                while n > 0 {
                    send_more(sock, &header(Kind::Data, id, n as u64))?;
                    splice_exact(p.as_fd(), sock, n)?;
                    progress.add_bytes(n as u64);
                    n = bytes_in(p.as_fd())?;
                }
            }
        }
        send_all(sock, &header(Kind::Close, id, 0))?;
        progress.add_file();
    }
    send_all(sock, &header(Kind::End, 0, 0))?;
    Ok(stats)
}

/// The images of a stream, at its Ready: each a channel of the pipes it is kept in, the pages
/// still arriving.
#[derive(Default)]
pub struct HeldImages {
    files: HashMap<String, mpsc::Receiver<Piece>>,
    bytes: u64,
}

impl HeldImages {
    /// Bytes received by the Ready.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn files(&self) -> usize {
        self.files.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }
}

impl std::fmt::Debug for HeldImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} images, {} bytes", self.files.len(), self.bytes)
    }
}

/// Destination: reads a stream (after its hello) from `input`, at most `max_bytes` of images
/// (0: no limit), and hands them to `ready` at its Ready, then goes on receiving the pages
/// into them until its End. Shutting `input` down from another thread stops it
/// ([`StreamError::Truncated`]); an image cut short by that, or by any error, ends early
/// where it is read.
pub fn hold(
    input: &TcpStream,
    max_bytes: u64,
    progress: &Progress,
    ready: impl FnOnce(HeldImages),
) -> Result<Streamed, StreamError> {
    reserve_fds(input.as_fd());
    let mut reader = input;
    let mut ready = Some(ready);
    let mut held = HeldImages::default();
    let mut open: HashMap<u32, Receiving> = HashMap::new();
    let mut stats = Streamed::default();
    loop {
        let mut h = [0; HEADER];
        read_exact_or_truncated(&mut reader, &mut h)?;
        let id = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        let len = u64::from_le_bytes(h[5..].try_into().expect("8 bytes"));
        let kind =
            Kind::of(h[0]).ok_or_else(|| StreamError::Malformed(format!("frame kind {}", h[0])))?;
        match kind {
            Kind::Open => {
                if len as usize > MAX_NAME || open.contains_key(&id) || ready.is_none() {
                    return Err(StreamError::Malformed(format!("image {id} opened badly")));
                }
                let mut name = vec![0; len as usize];
                read_exact_or_truncated(&mut reader, &mut name)?;
                let name = String::from_utf8(name)
                    .map_err(|_| StreamError::Malformed("an image name is not UTF-8".into()))?;
                validate_name(&name)
                    .map_err(|e| StreamError::Malformed(format!("image {name:?}: {e}")))?;
                let (r, rx) = Receiving::new();
                if held.files.insert(name.clone(), rx).is_some() {
                    log::warn!("the image stream sent {name} twice: the last one kept");
                }
                open.insert(id, r);
            }
            Kind::Data => {
                let r = open
                    .get_mut(&id)
                    .ok_or_else(|| StreamError::Malformed(format!("data of image {id}")))?;
                if max_bytes > 0 && stats.bytes.saturating_add(len) > max_bytes {
                    return Err(StreamError::TooLarge { limit: max_bytes });
                }
                r.splice_in(input.as_fd(), len)?;
                stats.bytes += len;
                progress.add_bytes(len);
            }
            Kind::Close => {
                let r = open
                    .remove(&id)
                    .ok_or_else(|| StreamError::Malformed(format!("close of image {id}")))?;
                r.close();
                stats.files += 1;
                progress.add_file();
            }
            Kind::Ready => {
                let Some(ready) = ready.take() else {
                    return Err(StreamError::Malformed("a second Ready".into()));
                };
                held.bytes = stats.bytes;
                ready(std::mem::take(&mut held));
            }
            Kind::End => {
                if ready.is_some() || !open.is_empty() {
                    return Err(StreamError::Malformed(format!(
                        "the stream ended with {} images incomplete",
                        open.len()
                    )));
                }
                return Ok(stats);
            }
        }
    }
}

fn read_exact_or_truncated(r: &mut impl Read, buf: &mut [u8]) -> Result<(), StreamError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => StreamError::Truncated,
        _ => io_err("read the image stream")(e),
    })
}

/// What [`serve`] did.
#[derive(Debug, Default, Clone)]
pub struct Served {
    pub files: u64,
    /// Images CRIU did not ask for.
    pub unread: Vec<String>,
}

/// Destination: answers the restoring CRIU's requests on `listener` (bound to
/// [`SERVE_SOCKET`] in its images dir, non-blocking) from `images`, until CRIU closed its
/// connection and has read every image it asked for, or `cancel`.
pub fn serve(
    listener: &UnixListener,
    mut images: HeldImages,
    cancel: &UnixStream,
) -> Result<Served, StreamError> {
    let mut ctl = accept(listener, cancel)?;
    let mut served = Served::default();
    let mut given = HashSet::new();
    let mut feeders: Vec<JoinHandle<()>> = Vec::new();
    loop {
        readable(ctl.as_fd(), cancel)?;
        let Some(name) = read_request(&mut ctl)? else {
            break;
        };
        let Some(file) = images.files.remove(&name) else {
            if given.contains(&name) {
                return Err(StreamError::ServedTwice(name));
            }
            write_reply(&mut ctl, false)?;
            continue;
        };
        write_reply(&mut ctl, true)?;
        let pipe = recv_fd(&mut ctl)?;
        served.files += 1;
        given.insert(name.clone());
        grow_pipe(pipe.as_fd());
        if let Fed::Stopped(rest) = feed(None, &file, pipe.as_fd(), &name, false)? {
            // CRIU reads images in an order of its own, several at once, and the pages may
            // still be arriving: each image that is not in its pipe at once is fed by a
            // thread of its own.
            feeders.push(std::thread::spawn(move || {
                if let Err(e) = feed(rest, &file, pipe.as_fd(), &name, true) {
                    log::debug!("feeding {name} to CRIU: {e}");
                }
            }));
        }
    }
    for f in feeders {
        let _ = f.join();
    }
    served.unread = images.files.into_keys().collect();
    served.unread.sort();
    Ok(served)
}

/// How far [`feed`] got with an image.
enum Fed {
    /// All of it went in (or none can any more: cut short, or CRIU gone).
    All,
    /// Not waiting: CRIU's pipe is full or the rest has not arrived; go on from this pipe.
    Stopped(Option<OwnedFd>),
}

/// Splices an image into CRIU's pipe, from `current` on. `wait`: all of it, as CRIU reads it
/// and as it arrives (a feeder thread's); else only what is there and fits right away.
fn feed(
    mut current: Option<OwnedFd>,
    file: &mpsc::Receiver<Piece>,
    to: BorrowedFd,
    name: &str,
    wait: bool,
) -> Result<Fed, StreamError> {
    let flags = if wait {
        libc::SPLICE_F_MOVE
    } else {
        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK
    };
    loop {
        let next = match current.take() {
            Some(p) => Ok(Piece::Pipe(p)),
            None if wait => file.recv().map_err(|_| mpsc::TryRecvError::Disconnected),
            None => file.try_recv(),
        };
        let p = match next {
            Ok(Piece::Pipe(p)) => p,
            Ok(Piece::Done) => return Ok(Fed::All),
            Err(mpsc::TryRecvError::Empty) => return Ok(Fed::Stopped(None)),
            Err(mpsc::TryRecvError::Disconnected) => {
                // Cut short: CRIU fails on its early end.
                log::warn!("serving {name}: its stream broke; the restore gets it short");
                return Ok(Fed::All);
            }
        };
        loop {
            match splice(p.as_fd(), to, PIPE_BYTES as usize, flags) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if !wait && e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Ok(Fed::Stopped(Some(p)))
                }
                // CRIU closed it (it failed): its restore says why.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(Fed::All),
                Err(e) => return Err(io_err("serve an image")(e)),
            }
        }
    }
}

fn splice(from: BorrowedFd, to: BorrowedFd, len: usize, flags: u32) -> io::Result<usize> {
    // SAFETY: both fds are open for the call; null offsets: pipes and sockets have none.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Splices exactly `n` bytes (that are in the pipe) from `pipe` into the socket.
fn splice_exact(pipe: BorrowedFd, sock: BorrowedFd, mut n: usize) -> Result<(), StreamError> {
    while n > 0 {
        match splice(pipe, sock, n, libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE) {
            Ok(0) => return Err(StreamError::Malformed("an image pipe ran dry".into())),
            Ok(k) => n -= k,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(io_err("send an image")(e)),
        }
    }
    Ok(())
}

fn send_flags(sock: BorrowedFd, mut buf: &[u8], flags: i32) -> Result<(), StreamError> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length; sock is open.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(io_err("send to the destination")(e));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Sends a header the data spliced next completes (one segment, not two).
fn send_more(sock: BorrowedFd, buf: &[u8]) -> Result<(), StreamError> {
    send_flags(sock, buf, libc::MSG_MORE)
}

fn send_all(sock: BorrowedFd, buf: &[u8]) -> Result<(), StreamError> {
    send_flags(sock, buf, 0)
}

/// Bytes waiting in a pipe.
fn bytes_in(pipe: BorrowedFd) -> Result<usize, StreamError> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(io_err("FIONREAD on an image pipe")(
            io::Error::last_os_error(),
        ));
    }
    Ok(n.max(0) as usize)
}

/// Grows this process's descriptor table to [`RESERVED_FDS`] (within RLIMIT_NOFILE) now, before
/// the dump, not while a stream makes its pipes: in a multi-threaded process each doubling of
/// the table waits for an RCU grace period (~10 ms here), which stalled a 1 GiB dump's pages
/// three times (~45 ms in all) and their receipt. The table never shrinks: once per process.
fn reserve_fds(any: BorrowedFd) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let top = RESERVED_FDS.min(lim.rlim_cur).saturating_sub(1) as libc::c_int;
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, the lowest free one >= top (no other is
    // touched), closed at once.
    let fd = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if fd >= 0 {
        // SAFETY: the descriptor made just above, used by nothing else.
        unsafe { libc::close(fd) };
    }
}

/// Grows a pipe to [`PIPE_BYTES`], or as far as fs.pipe-max-size lets it (best effort: a
/// smaller pipe only means more splices).
fn grow_pipe(pipe: BorrowedFd) {
    // SAFETY: F_SETPIPE_SZ takes an int.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
}

/// A CRIU request: u32 size (host order) and an `img_streamer_request_entry` (field 1, the
/// image name). None: CRIU closed the connection.
fn read_request(ctl: &mut UnixStream) -> Result<Option<String>, StreamError> {
    let mut size = [0; 4];
    let mut got = 0;
    while got < 4 {
        match ctl.read(&mut size[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(StreamError::BadRequest("cut short".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read CRIU's request")(e)),
        }
    }
    let size = u32::from_ne_bytes(size) as usize;
    if size > MAX_NAME + 16 {
        return Err(StreamError::BadRequest(format!("{size} bytes")));
    }
    let mut msg = vec![0; size];
    ctl.read_exact(&mut msg)
        .map_err(io_err("read CRIU's request"))?;
    decode_request(&msg).map(Some)
}

/// The name in an `img_streamer_request_entry`.
fn decode_request(mut msg: &[u8]) -> Result<String, StreamError> {
    let bad = |what: &str| StreamError::BadRequest(what.to_string());
    let mut name = None;
    while !msg.is_empty() {
        let key = varint(&mut msg).ok_or_else(|| bad("a bad field key"))?;
        match key & 7 {
            0 => {
                varint(&mut msg).ok_or_else(|| bad("a bad varint"))?;
            }
            2 => {
                let len = varint(&mut msg).ok_or_else(|| bad("a bad length"))? as usize;
                if len > msg.len() {
                    return Err(bad("a field past its end"));
                }
                let (v, rest) = msg.split_at(len);
                if key >> 3 == 1 {
                    name = Some(
                        String::from_utf8(v.to_vec())
                            .map_err(|_| bad("an image name that is not UTF-8"))?,
                    );
                }
                msg = rest;
            }
            t => return Err(StreamError::BadRequest(format!("wire type {t}"))),
        }
    }
    name.ok_or_else(|| bad("no image name"))
}

fn varint(msg: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = msg.split_first()?;
        *msg = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// An `img_streamer_reply_entry` (field 1, exists), size first.
fn write_reply(ctl: &mut UnixStream, exists: bool) -> Result<(), StreamError> {
    let mut b = 2u32.to_ne_bytes().to_vec();
    b.extend_from_slice(&[0x08, exists as u8]);
    ctl.write_all(&b).map_err(io_err("answer CRIU"))
}

/// The pipe end CRIU sends after a request (SCM_RIGHTS with one byte).
fn recv_fd(ctl: &mut UnixStream) -> Result<OwnedFd, StreamError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        ctl.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(errno_err("receive CRIU's pipe"))?;
    let mut fd = None;
    for c in msg.cmsgs().map_err(errno_err("receive CRIU's pipe"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel just installed f in this process for us.
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    fd.ok_or_else(|| StreamError::BadRequest("no pipe came with the request".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::net::TcpListener;

    /// What CRIU's img-streamer.c does for one image: request, (reply,) pipe.
    fn criu_open(ctl: &mut UnixStream, name: &str, restore: bool) -> Option<OwnedFd> {
        let mut msg = vec![0x0a, name.len() as u8];
        msg.extend_from_slice(name.as_bytes());
        let mut b = (msg.len() as u32).to_ne_bytes().to_vec();
        b.extend_from_slice(&msg);
        ctl.write_all(&b).unwrap();
        if restore {
            let mut r = [0; 6];
            ctl.read_exact(&mut r).unwrap();
            assert_eq!(&r[..4], &2u32.to_ne_bytes());
            if r[5] == 0 {
                return None;
            }
        }
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let (mine, theirs) = if restore { (rd, wr) } else { (wr, rd) };
        let fds = [theirs.as_raw_fd()];
        sendmsg::<()>(
            ctl.as_raw_fd(),
            &[io::IoSlice::new(&[0])],
            &[ControlMessage::ScmRights(&fds)],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        Some(mine)
    }

    fn listener(dir: &std::path::Path, name: &str) -> UnixListener {
        let l = UnixListener::bind(dir.join(name)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    fn connected() -> (TcpStream, TcpStream) {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let out = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let (input, _) = tcp.accept().unwrap();
        (out, input)
    }

    /// The table is grown at once; nothing open is touched.
    #[test]
    fn descriptors_are_reserved() {
        let (a, b) = UnixStream::pair().unwrap();
        reserve_fds(a.as_fd());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let size: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert!(size >= RESERVED_FDS.min(lim.rlim_cur), "FDSize {size}");
        (&a).write_all(b"x").unwrap();
        let mut got = [0];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    #[test]
    fn request_decoding() {
        assert_eq!(decode_request(b"\x0a\x03abc").unwrap(), "abc");
        // Unknown fields are skipped.
        assert_eq!(decode_request(b"\x10\x05\x0a\x01x").unwrap(), "x");
        assert!(decode_request(b"\x0a\x09abc").is_err());
        assert!(decode_request(b"").is_err());
    }

    #[test]
    fn hello_checks_the_token() {
        let mut b = Vec::new();
        write_hello(&mut b, "t-1").unwrap();
        read_hello(&mut b.as_slice(), "t-1").unwrap();
        assert!(matches!(
            read_hello(&mut b.as_slice(), "t-2"),
            Err(StreamError::BadToken)
        ));
        assert!(read_hello(&mut &b"HTTP/1.1 200 OK"[..], "t-1").is_err());
    }

    /// Capture, hold and serve as CRIU would drive them: two images written interleaved, the
    /// pages larger than several pipes; the pages are held at the source until the go, the
    /// destination hands the images over at Ready and the restore reads them in another
    /// order; a missing image is reported absent, one asked for twice fails the serve.
    #[test]
    fn images_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (mut out, mut input) = connected();
        let big: Vec<u8> = (0..(12u32 << 20))
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let small = b"inventory".to_vec();

        let cap = listener(dir.path(), CAPTURE_SOCKET);
        let (mut go, mut ctl) = UnixStream::pair().unwrap();
        let (big2, small2) = (big.clone(), small.clone());
        let criu_path = dir.path().join(CAPTURE_SOCKET);
        let criu = std::thread::spawn(move || {
            let mut ctl = UnixStream::connect(criu_path).unwrap();
            let mut p = std::fs::File::from(criu_open(&mut ctl, "pages-1.img", false).unwrap());
            let mut s = std::fs::File::from(criu_open(&mut ctl, "inventory.img", false).unwrap());
            p.write_all(&big2[..1 << 20]).unwrap();
            s.write_all(&small2).unwrap();
            drop(s);
            p.write_all(&big2[1 << 20..]).unwrap();
        });
        let (captured_tx, captured_rx) = mpsc::channel();
        let sender = std::thread::spawn(move || {
            write_hello(&mut out, "tok").unwrap();
            capture(&cap, &out, &mut ctl, &Progress::new(), |s| {
                captured_tx.send(s).unwrap()
            })
            .unwrap()
        });
        // The dump ends with the pages still at the source.
        let captured = captured_rx.recv().unwrap();
        criu.join().unwrap();
        assert_eq!(
            (captured.files, captured.bytes),
            (2, (big.len() + small.len()) as u64)
        );
        read_hello(&mut input, "tok").unwrap();
        go.write_all(&[GO]).unwrap();
        let (held_tx, held_rx) = mpsc::channel();
        let holder = std::thread::spawn(move || {
            hold(&input, 0, &Progress::new(), |h| held_tx.send(h).unwrap()).unwrap()
        });
        let held = held_rx.recv().unwrap();
        assert!(held.contains("pages-1.img") && held.contains("inventory.img"));
        assert_eq!(
            held.bytes(),
            small.len() as u64,
            "only the pages follow Ready"
        );

        let srv = listener(dir.path(), SERVE_SOCKET);
        let (_keep, cancel) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || serve(&srv, held, &cancel));
        let mut ctl = UnixStream::connect(dir.path().join(SERVE_SOCKET)).unwrap();
        assert!(criu_open(&mut ctl, "core-1.img", true).is_none());
        let p = criu_open(&mut ctl, "pages-1.img", true).unwrap();
        let s = criu_open(&mut ctl, "inventory.img", true).unwrap();
        let mut got = Vec::new();
        std::fs::File::from(s).read_to_end(&mut got).unwrap();
        assert_eq!(got, small);
        got.clear();
        std::fs::File::from(p).read_to_end(&mut got).unwrap();
        assert!(got == big, "the pages came back different");
        let sent = sender.join().unwrap();
        let received = holder.join().unwrap();
        assert_eq!((sent.files, sent.bytes), (received.files, received.bytes));
        // Asked again: consumed, so the serve fails rather than answer wrongly.
        let mut msg = vec![0x0a, 11];
        msg.extend_from_slice(b"pages-1.img");
        let mut b = (msg.len() as u32).to_ne_bytes().to_vec();
        b.extend_from_slice(&msg);
        ctl.write_all(&b).unwrap();
        let err = server.join().unwrap().unwrap_err();
        assert!(matches!(err, StreamError::ServedTwice(_)), "{err}");
    }

    /// A connected pair, `a.img` opened on it.
    fn opened() -> (TcpStream, TcpStream) {
        let (mut out, input) = connected();
        out.write_all(&header(Kind::Open, 0, 5)).unwrap();
        out.write_all(b"a.img").unwrap();
        (out, input)
    }

    #[test]
    fn a_stream_without_its_ready_holds_nothing() {
        let (mut out, input) = opened();
        out.write_all(&header(Kind::Data, 0, 3)).unwrap();
        out.write_all(b"abc").unwrap();
        drop(out);
        let mut handed = false;
        let res = hold(&input, 0, &Progress::new(), |_| handed = true);
        assert!(matches!(res, Err(StreamError::Truncated)) && !handed);
    }

    /// Cut after Ready: the image being received ends short where it is read.
    #[test]
    fn an_image_cut_short_ends_early() {
        let (mut out, input) = opened();
        out.write_all(&header(Kind::Ready, 0, 0)).unwrap();
        out.write_all(&header(Kind::Data, 0, 3)).unwrap();
        out.write_all(b"abc").unwrap();
        drop(out);
        let (tx, rx) = mpsc::channel();
        let res = hold(&input, 0, &Progress::new(), |h| tx.send(h).unwrap());
        assert!(matches!(res, Err(StreamError::Truncated)));
        let mut held = rx.recv().unwrap();
        let file = held.files.remove("a.img").unwrap();
        let (rd, wr) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            feed(None, &file, wr.as_fd(), "a.img", false).unwrap(),
            Fed::All
        ));
        drop(wr);
        let mut got = Vec::new();
        std::fs::File::from(rd).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abc");
    }

    #[test]
    fn the_limit_is_enforced() {
        let (mut out, input) = opened();
        out.write_all(&header(Kind::Data, 0, 100)).unwrap();
        assert!(matches!(
            hold(&input, 10, &Progress::new(), |_| ()),
            Err(StreamError::TooLarge { limit: 10 })
        ));
    }
}

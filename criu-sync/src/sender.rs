//! The sending side: watches an image directory while CRIU writes it and streams the files.
//!
//! [`Sender::new`] sets the inotify watch up (do it BEFORE starting the dump, so no close is
//! missed; files already there are found by a scan after the watch exists). [`Sender::run`]
//! streams until the caller's `done` future says the dump ended, then sends the rest and the
//! manifest. [`send_over`] does the same on a bidirectional stream and waits for the receiver's
//! verdict (`Ack` once the receiver committed, or its reason to refuse).

use std::fmt::Display;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchMask};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::collector::{Collector, WAKE_DONE};
use crate::protocol::{read_frame, write_frame, Frame, ProtocolError, MAX_DATA, VERSION};
use crate::Progress;

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot watch the image directory: {0}")]
    Watch(#[source] io::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("stream to the receiver failed: {0}")]
    Stream(#[from] ProtocolError),
    #[error("the dump failed: {0}")]
    DumpFailed(String),
    #[error("the receiver refused the images: {0}")]
    PeerRefused(String),
    #[error("the receiver closed the stream without confirming")]
    NoAck,
    #[error("the receiver answered with an unexpected {0} frame")]
    UnexpectedReply(&'static str),
    #[error("image directory {} was removed or moved while streaming", .0.display())]
    DirGone(PathBuf),
    #[error("{name:?} in the image directory is not a regular file")]
    NotRegular { name: String },
    #[error("file name {name:?} cannot be sent: {reason}")]
    UnsupportedName { name: String, reason: String },
    #[error("{name} was removed after part of it was sent")]
    FileRemoved { name: String },
    #[error("{name} was opened for writing again after it was sent (CRIU never does that)")]
    Rewritten { name: String },
    #[error("{name} changed while or after it was sent ({sent} bytes sent, {now} bytes on disk)")]
    FileChanged { name: String, sent: u64, now: u64 },
    #[error("the receiver took no data for {0:?}: peer gone?")]
    Stalled(Duration),
    #[error("more than 2^32 files")]
    TooManyFiles,
    #[error("sending was cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl SendError {
    pub(crate) fn io(context: String, source: io::Error) -> Self {
        SendError::Io { context, source }
    }
}

/// Sender settings.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Migration token the receiver expects.
    pub token: String,
    /// Largest read and `Data` frame (clamped to 4 KiB..=4 MiB).
    pub chunk_size: usize,
    /// Frames read ahead of the socket: memory in flight is about `queue_depth * chunk_size`.
    pub queue_depth: usize,
    /// Updated while sending (bytes written to the stream, files completed).
    pub progress: Progress,
    /// A keepalive frame goes out when nothing else was sent for this long, so the receiver's
    /// idle timeout tells a quiet dump from a dead sender.
    pub keepalive: Duration,
    /// Longest a frame write may block, and longest wait for the receiver's verdict after
    /// `Done`: a receiver that vanished without closing is given up after this.
    pub idle_timeout: Option<Duration>,
    /// Names in the image dir that are neither sent nor refused as not regular files (the
    /// socket CRIU's image streamer is reached at, [`crate::streamer::CAPTURE_SOCKET`]).
    pub ignore: Vec<String>,
}

impl SendOptions {
    pub fn new(token: impl Into<String>) -> Self {
        SendOptions {
            token: token.into(),
            chunk_size: 1 << 20,
            queue_depth: 8,
            progress: Progress::new(),
            keepalive: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(30)),
            ignore: Vec::new(),
        }
    }
}

/// What a successful send did.
#[derive(Debug, Clone, Copy)]
pub struct SendStats {
    pub files: u64,
    /// File bytes sent.
    pub bytes: u64,
    /// File bytes already written to the stream when `done` resolved: the overlap with the dump.
    pub bytes_before_done: u64,
    /// From `run` to the `Done` frame flushed.
    pub elapsed: Duration,
    /// From `done` resolving to the `Done` frame flushed: what the stream adds after the dump.
    pub after_done: Duration,
}

/// A watch on an image directory, ready to stream it.
pub struct Sender {
    dir: PathBuf,
    inotify: Inotify,
    opts: SendOptions,
}

impl Sender {
    /// Starts watching `dir` (which must exist). Nothing is read yet; events from now on are
    /// queued by the kernel until [`Sender::run`]. Two quick syscalls: fine on an async thread.
    pub fn new(dir: impl Into<PathBuf>, opts: SendOptions) -> Result<Sender, SendError> {
        let dir = dir.into();
        let inotify = Inotify::init().map_err(SendError::Watch)?;
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR
            | WatchMask::DONT_FOLLOW;
        inotify
            .watches()
            .add(&dir, mask)
            .map_err(SendError::Watch)?;
        Ok(Sender { dir, inotify, opts })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Streams the directory to `writer` until `done` resolves and everything is sent.
    ///
    /// `done` resolves `Ok` when the dump ended with success (CRIU/runc exited 0): the rest is
    /// sent, then `Done` with the manifest. `Err(reason)`: the dump failed; an `Abort` frame is
    /// sent and [`SendError::DumpFailed`] returned. If the stream fails first, `run` returns at
    /// once and `done` is dropped: run the dump in a task of its own (`tokio::spawn`) and pass a
    /// future that waits for it, so that dropping the future does not cancel the dump.
    pub async fn run<W, F, E>(self, mut writer: W, done: F) -> Result<SendStats, SendError>
    where
        W: AsyncWrite + Unpin,
        F: Future<Output = Result<(), E>>,
        E: Display,
    {
        let start = Instant::now();
        let progress = self.opts.progress.clone();
        let hello = Frame::Hello {
            version: VERSION,
            token: self.opts.token.clone(),
        };
        put(&mut writer, &hello, self.opts.idle_timeout).await?;

        let (tx, rx) = mpsc::channel(self.opts.queue_depth.max(1));
        let (wake, wake_peer) =
            UnixStream::pair().map_err(|e| SendError::io("socketpair".into(), e))?;
        for s in [&wake, &wake_peer] {
            s.set_nonblocking(true)
                .map_err(|e| SendError::io("socketpair".into(), e))?;
        }
        // Data buffers go back to the collector once written: reading into memory that is
        // already mapped costs no page faults (a fresh multi-MiB buffer per chunk did: on a
        // fast link the faults and zeroing cost as much as the read itself).
        let (recycle, spare) = mpsc::unbounded_channel();
        let chunk = self.opts.chunk_size.min(MAX_DATA);
        let opts = self.opts;
        let collector = Collector::new(
            self.dir,
            self.inotify,
            wake_peer,
            tx,
            spare,
            chunk,
            opts.ignore.clone(),
        );
        let (collected_tx, collected_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let (res, watch) = collector.run();
            let _ = collected_tx.send(res);
            // Closed after the outcome is out: it may wait for an SRCU grace period.
            drop(watch);
        });

        let (abort_tx, abort_rx) = watch::channel(None::<String>);
        let mut wake = Some(wake);
        let mut done_at: Option<(Instant, u64)> = None;
        let mut dump_failed = false;
        let writing = write_loop(&mut writer, rx, abort_rx, &recycle, &progress, &opts);
        tokio::pin!(writing);
        tokio::pin!(done);
        let ended = loop {
            tokio::select! {
                r = &mut done, if done_at.is_none() && !dump_failed => match r {
                    Ok(()) => {
                        done_at = Some((Instant::now(), progress.bytes()));
                        if let Some(w) = &wake {
                            // One byte into an empty socket buffer: cannot block.
                            if let Err(e) = (&*w).write_all(&[WAKE_DONE]) {
                                log::warn!("waking the collector failed: {e}");
                            }
                        }
                    }
                    Err(e) => {
                        dump_failed = true;
                        // Closing the wake socket stops the collector; the writer finishes the
                        // frame in flight and sends Abort.
                        wake = None;
                        let _ = abort_tx.send(Some(e.to_string()));
                    }
                },
                r = &mut writing => break r,
            }
        };
        drop(wake);
        // The writer is finished, so its channel is closed: the collector stops soon. Wait
        // for it so its open images are closed when we return (the watch may outlive it).
        let collected = match collected_rx.await {
            Ok(r) => r,
            Err(_) => Err(SendError::Internal("the collector thread panicked".into())),
        };
        match ended? {
            Ended::DumpFailed(reason) => Err(SendError::DumpFailed(reason)),
            Ended::Done => {
                let c = collected?;
                let (done_at, before) = done_at
                    .ok_or_else(|| SendError::Internal("Done sent before the dump ended".into()))?;
                Ok(SendStats {
                    files: c.files,
                    bytes: c.bytes,
                    bytes_before_done: before,
                    elapsed: start.elapsed(),
                    after_done: done_at.elapsed(),
                })
            }
            Ended::CollectorStopped => Err(collected
                .err()
                .unwrap_or_else(|| SendError::Internal("collector ended without Done".into()))),
        }
    }
}

enum Ended {
    Done,
    DumpFailed(String),
    CollectorStopped,
}

/// Writes one frame (flushed when it ends a phase) within the idle timeout.
async fn put<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    idle: Option<Duration>,
) -> Result<(), SendError> {
    let io = async {
        write_frame(w, frame).await?;
        if !matches!(
            frame,
            Frame::FileStart { .. } | Frame::Data { .. } | Frame::FileEnd { .. }
        ) {
            w.flush().await.map_err(ProtocolError::Io)?;
        }
        Ok::<(), ProtocolError>(())
    };
    match idle {
        None => Ok(io.await?),
        Some(d) => match tokio::time::timeout(d, io).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SendError::Stalled(d)),
        },
    }
}

/// Writes the collector's frames until `Done` (or its `Abort`), or writes `Abort` when the
/// dump failed, and keepalives while there is nothing to write. Frames are never cut: the abort
/// check happens between frames. The buffers of written `Data` frames go back through
/// `recycle`.
async fn write_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut rx: mpsc::Receiver<Frame>,
    mut abort: watch::Receiver<Option<String>>,
    recycle: &mpsc::UnboundedSender<Vec<u8>>,
    progress: &Progress,
    opts: &SendOptions,
) -> Result<Ended, SendError> {
    let idle = opts.idle_timeout;
    loop {
        let frame = tokio::select! {
            biased;
            Ok(()) = abort.changed() => {
                let reason = abort.borrow().clone().unwrap_or_default();
                let frame = Frame::Abort { reason: format!("dump failed: {reason}") };
                put(w, &frame, idle).await?;
                return Ok(Ended::DumpFailed(reason));
            }
            f = rx.recv() => f,
            () = tokio::time::sleep(opts.keepalive) => {
                put(w, &Frame::Keepalive, idle).await?;
                continue;
            }
        };
        let Some(frame) = frame else {
            return Ok(Ended::CollectorStopped);
        };
        put(w, &frame, idle).await?;
        match frame {
            Frame::Data { bytes, .. } => {
                progress.add_bytes(bytes.len() as u64);
                if let Ok(b) = bytes.try_into_mut() {
                    // The collector may be gone already: then the buffer is just freed.
                    let _ = recycle.send(Vec::from(b));
                }
            }
            Frame::FileEnd { .. } => progress.add_file(),
            Frame::Done { .. } => return Ok(Ended::Done),
            Frame::Abort { .. } => return Ok(Ended::CollectorStopped),
            _ => {}
        }
    }
}

/// [`Sender::run`] on a bidirectional stream (TCP, unix socket), then waits for the receiver's
/// verdict: `Ok` only once the receiver verified and committed every file. A refusal that comes
/// while still sending (bad token, checksum, limits) stops the send at once with its reason.
pub async fn send_over<S, F, E>(sender: Sender, stream: S, done: F) -> Result<SendStats, SendError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let idle = sender.opts.idle_timeout;
    let (mut rd, wr) = tokio::io::split(stream);
    // Kept pinned across the select: a half-read reply frame is never lost.
    let reply = async move { read_frame(&mut rd).await };
    tokio::pin!(reply);
    let run = sender.run(wr, done);
    tokio::pin!(run);
    tokio::select! {
        biased;
        r = &mut run => {
            let stats = r?;
            let answer = match idle {
                None => reply.await,
                Some(d) => tokio::time::timeout(d, reply)
                    .await
                    .map_err(|_| SendError::Stalled(d))?,
            };
            verdict(answer).map(|()| stats)
        }
        early = &mut reply => {
            let echo = matches!(&early, Ok(Some(Frame::Abort { reason })) if reason.starts_with(ECHO));
            match verdict(early) {
                // Committed on the other side, so our Done is out: `run` is just finishing.
                Ok(()) => run.await,
                // An echo of our own abort (dump failed, a bad file): give `run` a moment to
                // report that cause, which says more.
                Err(refused) if echo => {
                    match tokio::time::timeout(Duration::from_millis(200), &mut run).await {
                        Ok(Err(e)) if !matches!(e, SendError::Stream(_)) => Err(e),
                        _ => Err(refused),
                    }
                }
                // The receiver's own refusal (e.g. what it receives beside the stream failed),
                // or the receiver gone: the cause of whatever fails here next.
                Err(e) => Err(e),
            }
        }
    }
}

/// How the receiver's refusal of a stream that the sender aborted begins
/// ([`crate::receiver::RecvError::PeerAborted`]).
const ECHO: &str = "sender aborted: ";

fn verdict(reply: Result<Option<Frame>, ProtocolError>) -> Result<(), SendError> {
    match reply? {
        Some(Frame::Ack { .. }) => Ok(()),
        Some(Frame::Abort { reason }) => Err(SendError::PeerRefused(reason)),
        Some(other) => Err(SendError::UnexpectedReply(other.kind_name())),
        None => Err(SendError::NoAck),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::{receive_over, RecvError, RecvOptions};
    use bytes::Bytes;
    use std::future::pending;

    #[test]
    fn echo_is_how_the_receiver_words_a_sender_abort() {
        let e = RecvError::PeerAborted("criu failed".into()).to_string();
        assert!(e.starts_with(ECHO), "{e:?} does not start with {ECHO:?}");
    }

    struct Setup {
        tmp: tempfile::TempDir,
        src: PathBuf,
    }

    impl Setup {
        fn new() -> Setup {
            let tmp = tempfile::tempdir().unwrap();
            let src = tmp.path().join("img");
            std::fs::create_dir(&src).unwrap();
            Setup { tmp, src }
        }
        fn staging(&self) -> PathBuf {
            self.tmp.path().join("in.staging")
        }
        fn fin(&self) -> PathBuf {
            self.tmp.path().join("in")
        }
    }

    /// Streams `s.src` through an in-memory pipe into `s.fin()`.
    async fn transfer<F>(
        s: &Setup,
        recv_token: &str,
        done: F,
    ) -> (Result<SendStats, SendError>, Result<(), RecvError>)
    where
        F: Future<Output = Result<(), String>>,
    {
        let (a, b) = tokio::io::duplex(256 << 10);
        let sender = Sender::new(&s.src, SendOptions::new("tok")).unwrap();
        let opts = RecvOptions::new(recv_token);
        let (staging, fin) = (s.staging(), s.fin());
        let recv = async move { receive_over(b, &staging, &fin, &opts).await.map(|_| ()) };
        tokio::join!(send_over(sender, a, done), recv)
    }

    fn assert_same(a: &Path, b: &Path) {
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(a), names(b));
        for n in names(a) {
            assert_eq!(
                std::fs::read(a.join(&n)).unwrap(),
                std::fs::read(b.join(&n)).unwrap(),
                "{n:?}"
            );
        }
    }

    #[tokio::test]
    async fn complete_dir_is_sent_whole() {
        let s = Setup::new();
        std::fs::write(s.src.join("descriptors.json"), b"[]").unwrap();
        std::fs::write(s.src.join("pages-1.img"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(s.src.join("inventory.img"), b"inv").unwrap();
        std::fs::write(s.src.join("empty.img"), b"").unwrap();
        let (sent, recv) = transfer(&s, "tok", async { Ok(()) }).await;
        recv.unwrap();
        let st = sent.unwrap();
        assert_eq!(st.files, 4);
        assert_eq!(st.bytes, (3 << 20) + 5);
        assert_same(&s.src, &s.fin());
    }

    #[tokio::test]
    async fn symlink_in_dir_is_refused() {
        let s = Setup::new();
        std::fs::write(s.src.join("core-1.img"), b"c").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.src.join("files.img")).unwrap();
        let (sent, recv) = transfer(&s, "tok", async { Ok(()) }).await;
        assert!(
            matches!(sent, Err(SendError::NotRegular { ref name }) if name == "files.img"),
            "{sent:?}"
        );
        assert!(matches!(recv, Err(RecvError::PeerAborted(_))), "{recv:?}");
        assert!(!s.staging().exists() && !s.fin().exists());
    }

    #[tokio::test]
    async fn failed_dump_aborts_both_sides() {
        let s = Setup::new();
        std::fs::write(s.src.join("core-1.img"), b"c").unwrap();
        let (sent, recv) = transfer(&s, "tok", async { Err("criu exited 1".to_string()) }).await;
        assert!(
            matches!(sent, Err(SendError::DumpFailed(ref r)) if r == "criu exited 1"),
            "{sent:?}"
        );
        assert!(
            matches!(recv, Err(RecvError::PeerAborted(ref r)) if r.contains("criu exited 1")),
            "{recv:?}"
        );
        assert!(!s.staging().exists() && !s.fin().exists());
    }

    #[tokio::test]
    async fn refusal_stops_the_sender_even_while_the_dump_runs() {
        let s = Setup::new();
        // `done` never resolves: only the receiver's refusal can end the send.
        let never = pending::<Result<(), String>>();
        let (sent, recv) = tokio::time::timeout(
            Duration::from_secs(10),
            transfer(&s, "another-token", never),
        )
        .await
        .expect("sender hung after a refusal");
        assert!(
            matches!(sent, Err(SendError::PeerRefused(ref r)) if r.contains("token")),
            "{sent:?}"
        );
        assert!(matches!(recv, Err(RecvError::TokenMismatch)));
    }

    #[tokio::test]
    async fn vanished_receiver_stops_the_sender() {
        let s = Setup::new();
        std::fs::write(s.src.join("pages-1.img"), vec![1u8; 8 << 20]).unwrap();
        let (a, b) = tokio::io::duplex(64 << 10);
        let sender = Sender::new(&s.src, SendOptions::new("tok")).unwrap();
        // The peer reads a little and goes away.
        let peer = async move {
            let mut b = b;
            let mut buf = vec![0u8; 100 << 10];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut b, &mut buf).await;
            drop(b);
        };
        let never = pending::<Result<(), String>>();
        let (sent, ()) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(send_over(sender, a, never), peer)
        })
        .await
        .expect("sender hung after the peer vanished");
        assert!(
            matches!(sent, Err(SendError::Stream(_)) | Err(SendError::NoAck)),
            "{sent:?}"
        );
    }

    #[tokio::test]
    async fn file_written_after_its_close_is_an_error() {
        let s = Setup::new();
        let progress = Progress::new();
        let mut opts = SendOptions::new("tok");
        opts.progress = progress.clone();
        let sender = Sender::new(&s.src, opts).unwrap();
        let src = s.src.clone();
        let writer = async move {
            let path = src.join("core-1.img");
            tokio::task::spawn_blocking({
                let path = path.clone();
                move || std::fs::write(path, b"first").unwrap()
            })
            .await
            .unwrap();
            while progress.files() < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(b" and more").unwrap();
            })
            .await
            .unwrap();
            Ok::<(), String>(())
        };
        let (a, b) = tokio::io::duplex(256 << 10);
        let opts = RecvOptions::new("tok");
        let (staging, fin) = (s.staging(), s.fin());
        let recv = async move { receive_over(b, &staging, &fin, &opts).await };
        let (sent, recv) = tokio::join!(send_over(sender, a, writer), recv);
        assert!(
            matches!(
                sent,
                Err(SendError::Rewritten { .. }) | Err(SendError::FileChanged { .. })
            ),
            "{sent:?}"
        );
        assert!(recv.is_err());
        assert!(!s.staging().exists() && !s.fin().exists());
    }

    #[tokio::test]
    async fn keepalives_carry_a_quiet_dump_past_the_idle_timeout() {
        let s = Setup::new();
        std::fs::write(s.src.join("core-1.img"), b"c").unwrap();
        let (a, b) = tokio::io::duplex(64 << 10);
        let mut so = SendOptions::new("tok");
        so.keepalive = Duration::from_millis(50);
        let sender = Sender::new(&s.src, so).unwrap();
        let mut ro = RecvOptions::new("tok");
        ro.idle_timeout = Some(Duration::from_millis(400));
        let (staging, fin) = (s.staging(), s.fin());
        let recv = async move { receive_over(b, &staging, &fin, &ro).await };
        // The dump says nothing for three idle timeouts.
        let done = async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok::<(), String>(())
        };
        let (sent, recv) = tokio::join!(send_over(sender, a, done), recv);
        sent.unwrap();
        recv.unwrap();
        assert_same(&s.src, &s.fin());
    }

    #[tokio::test]
    async fn written_data_buffers_go_back_to_the_collector() {
        let (tx, rx) = mpsc::channel(4);
        let (recycle, mut spare) = mpsc::unbounded_channel();
        let (_abort_tx, abort_rx) = watch::channel(None::<String>);
        let buf = Vec::with_capacity(8192);
        let ptr = buf.as_ptr();
        let mut buf = buf;
        buf.extend_from_slice(&[3; 5000]);
        tx.send(Frame::Data {
            id: 0,
            offset: 0,
            bytes: Bytes::from(buf),
        })
        .await
        .unwrap();
        tx.send(Frame::Done { manifest: vec![] }).await.unwrap();
        let mut out = Vec::new();
        let progress = Progress::new();
        let opts = SendOptions::new("tok");
        let ended = write_loop(&mut out, rx, abort_rx, &recycle, &progress, &opts)
            .await
            .unwrap();
        assert!(matches!(ended, Ended::Done));
        assert_eq!(progress.bytes(), 5000);
        let back = spare.try_recv().expect("buffer not recycled");
        assert_eq!((back.as_ptr(), back.capacity()), (ptr, 8192));
    }

    #[tokio::test]
    async fn silent_sender_hits_the_idle_timeout() {
        let s = Setup::new();
        let (mut a, b) = tokio::io::duplex(64 << 10);
        let hello = Frame::Hello {
            version: VERSION,
            token: "tok".into(),
        };
        write_frame(&mut a, &hello).await.unwrap();
        let mut ro = RecvOptions::new("tok");
        ro.idle_timeout = Some(Duration::from_millis(200));
        // `a` stays open but says nothing more: a peer gone without closing.
        let err = receive_over(b, &s.staging(), &s.fin(), &ro)
            .await
            .unwrap_err();
        assert!(matches!(err, RecvError::Idle(_)), "{err}");
        assert!(!s.staging().exists() && !s.fin().exists());
        drop(a);
    }
}

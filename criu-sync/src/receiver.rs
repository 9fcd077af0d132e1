//! The receiving side: reads frames from any stream, checks `Hello` (version and migration token)
//! before touching the disk, then feeds a [`Staging`] on a blocking thread. [`receive_over`] also
//! answers the sender on the same stream: `Ack` after the commit, `Abort` with the reason.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::protocol::{read_frame_into, write_frame, Frame, NameError, ProtocolError, VERSION};
use crate::staging::{Staging, Step};
use crate::Progress;

/// Why receiving failed. In every case the staging directory is gone and the final directory
/// was not created.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("stream from the sender is broken: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("stream ended before the sender's done frame: peer vanished")]
    Truncated,
    #[error("expected {expected}, got a {got} frame")]
    UnexpectedFrame {
        got: &'static str,
        expected: &'static str,
    },
    #[error("sender speaks protocol version {0}, this receiver {VERSION}")]
    VersionMismatch(u16),
    #[error("migration token mismatch")]
    TokenMismatch,
    #[error("refused file name {name:?}: {reason}")]
    InvalidName { name: String, reason: NameError },
    #[error("refused {name:?}: not a regular file (mode {mode:o})")]
    NotRegularFile { name: String, mode: u32 },
    #[error("refused {0:?}: sent twice")]
    DuplicateName(String),
    #[error("file id {0} used twice")]
    DuplicateFileId(u32),
    #[error("data or end for unknown file id {0}")]
    UnknownFileId(u32),
    #[error("{name}: data at offset {got}, expected {expected}")]
    OutOfOrder {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("{name}: over the per-file limit of {limit} bytes")]
    FileTooLarge { name: String, limit: u64 },
    #[error("images over the total limit of {limit} bytes")]
    TotalTooLarge { limit: u64 },
    #[error("more than {0} files")]
    TooManyFiles(u64),
    #[error("more than {0} files open at once")]
    TooManyOpenFiles(usize),
    #[error("{name}: length {got}, expected {expected}")]
    LengthMismatch {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("{name}: checksum mismatch")]
    ChecksumMismatch { name: String },
    #[error("done while files are still open: {0:?}")]
    FilesStillOpen(Vec<String>),
    #[error("manifest does not match what arrived: {0}")]
    ManifestMismatch(String),
    #[error("sender aborted: {0}")]
    PeerAborted(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("final directory {} already exists", .0.display())]
    FinalExists(PathBuf),
    #[error("staging directory {} already exists (left by another run?)", .0.display())]
    StagingExists(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("nothing from the sender for {0:?}: peer gone?")]
    Idle(Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RecvError {
    pub(crate) fn io(context: String, source: io::Error) -> Self {
        RecvError::Io { context, source }
    }
}

/// Bounds on what a sender may make us write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
    pub max_files: u64,
    pub max_open_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 64 << 30,
            max_total_bytes: 64 << 30,
            max_files: 65_536,
            max_open_files: 256,
        }
    }
}

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct RecvOptions {
    /// The migration token the sender must present.
    pub token: String,
    pub limits: Limits,
    /// fsync every file (as it ends, overlapping the transfer), the staging directory before
    /// the rename and the parent after it: the images survive a crash of the destination.
    pub fsync: bool,
    /// Updated while receiving (bytes written to staging, files completed).
    pub progress: Progress,
    /// Longest wait for the next frame (the sender sends keepalives while the dump is quiet):
    /// a peer that vanished without closing (host down, partition) is given up after this.
    pub idle_timeout: Option<Duration>,
    /// Gives the stream up once it holds a reason, which the sender is told (e.g. what else
    /// the destination receives beside the stream failed).
    pub cancel: Option<watch::Receiver<Option<String>>>,
}

impl RecvOptions {
    pub fn new(token: impl Into<String>) -> Self {
        RecvOptions {
            token: token.into(),
            limits: Limits::default(),
            fsync: true,
            progress: Progress::new(),
            idle_timeout: Some(Duration::from_secs(30)),
            cancel: None,
        }
    }
}

/// What a successful receive did.
#[derive(Debug, Clone)]
pub struct RecvStats {
    pub files: u64,
    pub bytes: u64,
    /// From the first frame read to the rename done.
    pub elapsed: Duration,
    /// After `Done` arrived: manifest check, fsync, rename.
    pub commit: Duration,
    pub dir: PathBuf,
}

/// Frames decoded ahead of the disk writer.
const QUEUE_DEPTH: usize = 8;

/// Receives one stream into `staging`, then renames it to `final_dir` (same filesystem; both
/// must not exist).
pub struct Receiver;

impl Receiver {
    pub async fn run<R: AsyncRead + Unpin>(
        mut reader: R,
        staging: &Path,
        final_dir: &Path,
        opts: &RecvOptions,
    ) -> Result<RecvStats, RecvError> {
        let start = Instant::now();
        // Hello first: a stranger or another migration never gets a staging directory.
        match next_frame(&mut reader, BytesMut::new(), opts.idle_timeout).await? {
            Some(Frame::Hello { version, token }) => {
                if version != VERSION {
                    return Err(RecvError::VersionMismatch(version));
                }
                // Compared through blake3: constant time whatever the lengths.
                if blake3::hash(token.as_bytes()) != blake3::hash(opts.token.as_bytes()) {
                    return Err(RecvError::TokenMismatch);
                }
            }
            Some(Frame::Abort { reason }) => return Err(RecvError::PeerAborted(reason)),
            Some(other) => {
                return Err(RecvError::UnexpectedFrame {
                    got: other.kind_name(),
                    expected: "hello",
                })
            }
            None => return Err(RecvError::Truncated),
        }

        let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE_DEPTH);
        // Written payloads come back to be read into again: no fresh memory per frame.
        let (recycle, mut spare) = mpsc::unbounded_channel::<Bytes>();
        let (staging_p, final_p) = (staging.to_owned(), final_dir.to_owned());
        let (limits, fsync, progress) = (opts.limits, opts.fsync, opts.progress.clone());
        let writer = tokio::task::spawn_blocking(move || {
            let mut st =
                Staging::create(&staging_p, &final_p, limits, fsync, progress, Some(recycle))?;
            while let Some(frame) = rx.blocking_recv() {
                if let Step::Committed(c) = st.handle(frame)? {
                    return Ok(c);
                }
            }
            // The reader stopped (its error is reported) or the stream ended early; dropping
            // `st` removes the staging directory.
            Err(RecvError::Truncated)
        });

        let mut cancel = opts.cancel.clone();
        let read_err = loop {
            let buf = spare
                .try_recv()
                .ok()
                .and_then(|b| b.try_into_mut().ok())
                .unwrap_or_default();
            let next = tokio::select! {
                biased;
                reason = cancelled(&mut cancel) => break Some(RecvError::Cancelled(reason)),
                next = next_frame(&mut reader, buf, opts.idle_timeout) => next,
            };
            let frame = match next {
                Ok(Some(Frame::Keepalive)) => continue,
                Ok(Some(f)) => f,
                Ok(None) => break Some(RecvError::Truncated),
                Err(e) => break Some(e),
            };
            let last = matches!(frame, Frame::Done { .. } | Frame::Abort { .. });
            if tx.send(frame).await.is_err() {
                // The writer stopped on an error: that error is the answer.
                break None;
            }
            if last {
                break None;
            }
        };
        drop(tx);
        // Waiting here means the staging directory is gone (or renamed) when we return.
        let written = writer
            .await
            .map_err(|e| RecvError::Internal(format!("staging thread: {e}")))?;
        match (read_err, written) {
            (_, Ok(c)) => Ok(RecvStats {
                files: c.files,
                bytes: c.bytes,
                elapsed: start.elapsed(),
                commit: c.commit,
                dir: final_dir.to_owned(),
            }),
            // A writer error that is not just "the reader stopped" came first.
            (_, Err(e)) if !matches!(e, RecvError::Truncated) => Err(e),
            (Some(read_err), Err(_)) => Err(read_err),
            (None, Err(e)) => Err(e),
        }
    }
}

/// The reason once `cancel` holds one; never without a `cancel` (or once its sender is gone).
async fn cancelled(cancel: &mut Option<watch::Receiver<Option<String>>>) -> String {
    if let Some(rx) = cancel {
        if let Ok(r) = rx.wait_for(Option::is_some).await {
            return r.clone().unwrap_or_default();
        }
    }
    std::future::pending().await
}

async fn next_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: BytesMut,
    idle: Option<Duration>,
) -> Result<Option<Frame>, RecvError> {
    match idle {
        None => Ok(read_frame_into(r, buf).await?),
        Some(d) => match tokio::time::timeout(d, read_frame_into(r, buf)).await {
            Ok(f) => Ok(f?),
            Err(_) => Err(RecvError::Idle(d)),
        },
    }
}

/// [`Receiver::run`] on a bidirectional stream, answering the sender: `Ack` once committed,
/// `Abort` with the reason otherwise (then the rest of the input is drained briefly so that
/// closing does not reset the connection before the reason is read).
pub async fn receive_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    staging: &Path,
    final_dir: &Path,
    opts: &RecvOptions,
) -> Result<RecvStats, RecvError> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let res = Receiver::run(&mut rd, staging, final_dir, opts).await;
    let reply = match &res {
        Ok(s) => Frame::Ack {
            files: s.files,
            bytes: s.bytes,
        },
        Err(e) => Frame::Abort {
            reason: e.to_string(),
        },
    };
    let sent = async {
        write_frame(&mut wr, &reply).await?;
        wr.flush().await?;
        wr.shutdown().await?;
        Ok::<(), ProtocolError>(())
    }
    .await;
    match (&res, sent) {
        (Ok(_), Err(e)) => {
            // Committed; the sender will report a missing ack, the images are here.
            log::warn!("committed but could not acknowledge to the sender: {e}");
        }
        // A peer that went silent will not read the reason either: no point draining.
        (Err(RecvError::Idle(_)), _) => {}
        (Err(_), _) => {
            let mut sink = tokio::io::sink();
            let drain = tokio::io::copy(&mut rd, &mut sink);
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
        (Ok(_), Ok(())) => {}
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{hash, read_frame, ManifestEntry, MAX_DATA};
    use bytes::Bytes;

    const TOKEN: &str = "mig-1";

    fn hello() -> Frame {
        Frame::Hello {
            version: VERSION,
            token: TOKEN.into(),
        }
    }

    fn start(id: u32, name: &str, len: Option<u64>) -> Frame {
        Frame::FileStart {
            id,
            name: name.into(),
            mode: libc::S_IFREG | 0o640,
            len,
        }
    }

    fn data(id: u32, offset: u64, b: &[u8]) -> Frame {
        Frame::Data {
            id,
            offset,
            bytes: Bytes::copy_from_slice(b),
        }
    }

    fn end(id: u32, content: &[u8]) -> Frame {
        Frame::FileEnd {
            id,
            len: content.len() as u64,
            mode: libc::S_IFREG | 0o640,
            hash: hash(content),
        }
    }

    fn entry(name: &str, content: &[u8]) -> ManifestEntry {
        ManifestEntry {
            name: name.into(),
            len: content.len() as u64,
            hash: hash(content),
        }
    }

    /// A whole file: start (length declared), one data frame, end.
    fn file(id: u32, name: &str, content: &[u8]) -> Vec<Frame> {
        vec![
            start(id, name, Some(content.len() as u64)),
            data(id, 0, content),
            end(id, content),
        ]
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        staging: PathBuf,
        fin: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        Dirs {
            staging: tmp.path().join("in.staging"),
            fin: tmp.path().join("in"),
            _tmp: tmp,
        }
    }

    fn wire(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.encode().unwrap()).collect()
    }

    async fn recv_wire(bytes: &[u8], opts: &RecvOptions) -> (Result<RecvStats, RecvError>, Dirs) {
        let d = dirs();
        let res = Receiver::run(bytes, &d.staging, &d.fin, opts).await;
        (res, d)
    }

    /// Runs the frames and expects a refusal that leaves neither directory behind.
    async fn refused_with(frames: &[Frame], opts: &RecvOptions) -> RecvError {
        let (res, d) = recv_wire(&wire(frames), opts).await;
        let err = res.expect_err("receiver accepted a bad stream");
        assert!(!d.staging.exists(), "staging left after: {err}");
        assert!(!d.fin.exists(), "final created after: {err}");
        err
    }

    async fn refused(frames: &[Frame]) -> RecvError {
        refused_with(frames, &RecvOptions::new(TOKEN)).await
    }

    fn good_stream() -> Vec<Frame> {
        let mut f = vec![hello()];
        // A tailed pages file interleaved with a small file, as the sender does.
        f.push(start(0, "pages-1.img", None));
        f.push(data(0, 0, b"aaaa"));
        f.extend(file(1, "core-1.img", b"core"));
        f.push(data(0, 4, b"bbbb"));
        f.push(end(0, b"aaaabbbb"));
        f.extend(file(2, "inventory.img", b""));
        f.push(Frame::Done {
            manifest: vec![
                entry("pages-1.img", b"aaaabbbb"),
                entry("core-1.img", b"core"),
                entry("inventory.img", b""),
            ],
        });
        f
    }

    #[tokio::test]
    async fn accepts_and_commits() {
        use std::os::unix::fs::PermissionsExt;
        for fsync in [true, false] {
            let mut opts = RecvOptions::new(TOKEN);
            opts.fsync = fsync;
            let (res, d) = recv_wire(&wire(&good_stream()), &opts).await;
            let st = res.unwrap();
            assert_eq!((st.files, st.bytes), (3, 12));
            assert_eq!(opts.progress.bytes(), 12);
            assert!(!d.staging.exists());
            assert_eq!(
                std::fs::read(d.fin.join("pages-1.img")).unwrap(),
                b"aaaabbbb"
            );
            assert_eq!(std::fs::read(d.fin.join("core-1.img")).unwrap(), b"core");
            assert_eq!(std::fs::read(d.fin.join("inventory.img")).unwrap(), b"");
            let mode = std::fs::metadata(d.fin.join("core-1.img"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o640);
        }
    }

    #[tokio::test]
    async fn bad_token_and_version_and_missing_hello() {
        let mut f = good_stream();
        f[0] = Frame::Hello {
            version: VERSION,
            token: "other".into(),
        };
        assert!(matches!(refused(&f).await, RecvError::TokenMismatch));
        f[0] = Frame::Hello {
            version: VERSION + 1,
            token: TOKEN.into(),
        };
        assert!(matches!(
            refused(&f).await,
            RecvError::VersionMismatch(v) if v == VERSION + 1
        ));
        let f = good_stream()[1..].to_vec();
        assert!(matches!(
            refused(&f).await,
            RecvError::UnexpectedFrame {
                expected: "hello",
                ..
            }
        ));
        assert!(matches!(refused(&[]).await, RecvError::Truncated));
        // Not a criu-sync stream at all.
        let (res, d) = recv_wire(b"GET / HTTP/1.1\r\n\r\n", &RecvOptions::new(TOKEN)).await;
        assert!(matches!(res, Err(RecvError::Protocol(_))));
        assert!(!d.staging.exists() && !d.fin.exists());
    }

    #[tokio::test]
    async fn refuses_bad_names() {
        for name in [
            "..",
            "../x",
            "a/../../etc",
            "/etc/passwd",
            "a/b",
            "",
            ".",
            "x y",
        ] {
            let mut f = vec![hello()];
            f.extend(file(0, name, b"x"));
            let err = refused(&f).await;
            assert!(
                matches!(err, RecvError::InvalidName { .. }),
                "{name:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_symlinks_and_other_types() {
        for mode in [
            libc::S_IFLNK | 0o777,
            libc::S_IFDIR | 0o755,
            libc::S_IFCHR | 0o600,
            libc::S_IFIFO | 0o600,
            0o600,
        ] {
            let f = vec![
                hello(),
                Frame::FileStart {
                    id: 0,
                    name: "core-1.img".into(),
                    mode,
                    len: Some(0),
                },
            ];
            let err = refused(&f).await;
            assert!(
                matches!(err, RecvError::NotRegularFile { .. }),
                "{mode:o}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn refuses_duplicates_and_unknown_ids() {
        let mut f = vec![hello()];
        f.extend(file(0, "core-1.img", b"a"));
        f.extend(file(1, "core-1.img", b"a"));
        assert!(matches!(refused(&f).await, RecvError::DuplicateName(n) if n == "core-1.img"));

        let mut f = vec![hello()];
        f.extend(file(0, "core-1.img", b"a"));
        f.extend(file(0, "core-2.img", b"a"));
        assert!(matches!(refused(&f).await, RecvError::DuplicateFileId(0)));

        let f = vec![hello(), data(9, 0, b"x")];
        assert!(matches!(refused(&f).await, RecvError::UnknownFileId(9)));
        let f = vec![hello(), end(9, b"")];
        assert!(matches!(refused(&f).await, RecvError::UnknownFileId(9)));
        // Data for a file that already ended.
        let mut f = vec![hello()];
        f.extend(file(0, "core-1.img", b"a"));
        f.push(data(0, 1, b"b"));
        assert!(matches!(refused(&f).await, RecvError::UnknownFileId(0)));
    }

    #[tokio::test]
    async fn refuses_out_of_order_data() {
        let f = vec![
            hello(),
            start(0, "pages-1.img", None),
            data(0, 0, b"aa"),
            data(0, 3, b"bb"),
        ];
        assert!(matches!(
            refused(&f).await,
            RecvError::OutOfOrder {
                expected: 2,
                got: 3,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn refuses_oversize() {
        let mut opts = RecvOptions::new(TOKEN);
        opts.limits.max_file_bytes = 10;
        opts.limits.max_total_bytes = 15;
        // Declared too large: refused at start, before any byte is written.
        let f = vec![hello(), start(0, "core-1.img", Some(11))];
        assert!(matches!(
            refused_with(&f, &opts).await,
            RecvError::FileTooLarge { limit: 10, .. }
        ));
        // Tailed file growing past the limit.
        let f = vec![
            hello(),
            start(0, "pages-1.img", None),
            data(0, 0, &[0; 8]),
            data(0, 8, &[0; 8]),
        ];
        assert!(matches!(
            refused_with(&f, &opts).await,
            RecvError::FileTooLarge { .. }
        ));
        // Each file fits, the sum does not.
        let mut f = vec![hello()];
        f.extend(file(0, "a.img", &[1; 8]));
        f.extend(file(1, "b.img", &[2; 8]));
        assert!(matches!(
            refused_with(&f, &opts).await,
            RecvError::TotalTooLarge { limit: 15 }
        ));
        let mut f = vec![hello(), start(0, "pages-1.img", None), data(0, 0, &[0; 8])];
        f.push(start(1, "pages-2.img", None));
        f.push(data(1, 0, &[0; 8]));
        assert!(matches!(
            refused_with(&f, &opts).await,
            RecvError::TotalTooLarge { .. }
        ));
        // File count.
        let mut opts = RecvOptions::new(TOKEN);
        opts.limits.max_files = 2;
        let mut f = vec![hello()];
        for i in 0..3 {
            f.extend(file(i, &format!("core-{i}.img"), b"x"));
        }
        assert!(matches!(
            refused_with(&f, &opts).await,
            RecvError::TooManyFiles(2)
        ));
        // A frame over the protocol bound is refused by the decoder.
        let mut w = wire(&[hello()]);
        w.extend([3u8]);
        w.extend(((MAX_DATA + 13) as u32).to_be_bytes());
        let (res, d) = recv_wire(&w, &RecvOptions::new(TOKEN)).await;
        assert!(matches!(
            res,
            Err(RecvError::Protocol(ProtocolError::FrameTooLarge { .. }))
        ));
        assert!(!d.staging.exists() && !d.fin.exists());
    }

    #[tokio::test]
    async fn refuses_length_mismatch() {
        let f = vec![
            hello(),
            start(0, "core-1.img", Some(10)),
            data(0, 0, b"abc"),
            end(0, b"abc"),
        ];
        assert!(matches!(
            refused(&f).await,
            RecvError::LengthMismatch { .. }
        ));
        let f = vec![hello(), start(0, "core-1.img", Some(2)), data(0, 0, b"abc")];
        assert!(matches!(
            refused(&f).await,
            RecvError::LengthMismatch { .. }
        ));
        let f = vec![
            hello(),
            start(0, "pages-1.img", None),
            data(0, 0, b"abc"),
            Frame::FileEnd {
                id: 0,
                len: 4,
                mode: 0o100600,
                hash: hash(b"abc"),
            },
        ];
        assert!(matches!(
            refused(&f).await,
            RecvError::LengthMismatch { .. }
        ));
    }

    #[tokio::test]
    async fn refuses_checksum_mismatch() {
        let f = vec![
            hello(),
            start(0, "pages-1.img", None),
            data(0, 0, b"abc"),
            end(0, b"abd"),
        ];
        assert!(matches!(
            refused(&f).await,
            RecvError::ChecksumMismatch { name } if name == "pages-1.img"
        ));
    }

    #[tokio::test]
    async fn refuses_truncated_stream() {
        let w = wire(&good_stream());
        // Cut anywhere after the hello: mid-frame is a protocol truncation, at a frame
        // boundary an early end; both leave nothing behind.
        let hello_len = wire(&[hello()]).len();
        for cut in [hello_len, hello_len + 3, w.len() / 2, w.len() - 1] {
            let (res, d) = recv_wire(&w[..cut], &RecvOptions::new(TOKEN)).await;
            match res {
                Err(RecvError::Truncated)
                | Err(RecvError::Protocol(ProtocolError::Truncated(_))) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert!(!d.staging.exists() && !d.fin.exists(), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn refuses_done_with_open_files_and_bad_manifests() {
        let f = vec![
            hello(),
            start(0, "pages-1.img", None),
            data(0, 0, b"a"),
            Frame::Done { manifest: vec![] },
        ];
        assert!(matches!(refused(&f).await, RecvError::FilesStillOpen(n) if n == ["pages-1.img"]));

        let body = {
            let mut f = vec![hello()];
            f.extend(file(0, "core-1.img", b"core"));
            f
        };
        let manifests = [
            vec![],                                                           // missing entry
            vec![entry("core-1.img", b"core"), entry("x.img", b"")],          // extra entry
            vec![entry("core-1.img", b"cord")],                               // other checksum
            vec![entry("core-1.img", b"core"), entry("core-1.img", b"core")], // twice
        ];
        for m in manifests {
            let mut f = body.clone();
            f.push(Frame::Done {
                manifest: m.clone(),
            });
            let err = refused(&f).await;
            assert!(
                matches!(err, RecvError::ManifestMismatch(_)),
                "{m:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn peer_abort_and_unexpected_frames() {
        let mut f = good_stream();
        f.truncate(4);
        f.push(Frame::Abort {
            reason: "criu failed".into(),
        });
        assert!(matches!(refused(&f).await, RecvError::PeerAborted(r) if r == "criu failed"));
        let mut f = good_stream();
        f.insert(2, hello());
        assert!(matches!(
            refused(&f).await,
            RecvError::UnexpectedFrame { got: "hello", .. }
        ));
    }

    #[test]
    fn written_payloads_come_back_hashed() {
        let d = dirs();
        let (tx, mut back) = mpsc::unbounded_channel();
        let mut st = Staging::create(
            &d.staging,
            &d.fin,
            Limits::default(),
            false,
            Progress::new(),
            Some(tx),
        )
        .unwrap();
        let chunks: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        let ptrs: Vec<_> = chunks.iter().map(|b| b.as_ptr()).collect();
        let all: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
        assert!(matches!(
            st.handle(start(0, "pages-1.img", None)).unwrap(),
            Step::More
        ));
        for (i, b) in chunks.into_iter().enumerate() {
            let f = Frame::Data {
                id: 0,
                offset: i as u64 * 1000,
                bytes: b,
            };
            st.handle(f).unwrap();
        }
        // The digest waits for every update: all payloads are back by then, in order, unique.
        st.handle(end(0, &all)).unwrap();
        for p in ptrs {
            let b = back.try_recv().expect("payload not handed back");
            assert_eq!(b.as_ptr(), p);
            assert!(b.try_into_mut().is_ok(), "payload still shared");
        }
        assert!(back.try_recv().is_err());
        let done = Frame::Done {
            manifest: vec![entry("pages-1.img", &all)],
        };
        assert!(matches!(st.handle(done).unwrap(), Step::Committed(_)));
        assert_eq!(std::fs::read(d.fin.join("pages-1.img")).unwrap(), all);
    }

    #[tokio::test]
    async fn final_dir_is_never_touched() {
        let d = dirs();
        std::fs::create_dir(&d.fin).unwrap();
        std::fs::write(d.fin.join("keep"), b"mine").unwrap();
        let res = Receiver::run(
            &wire(&good_stream())[..],
            &d.staging,
            &d.fin,
            &RecvOptions::new(TOKEN),
        )
        .await;
        assert!(matches!(res, Err(RecvError::FinalExists(_))));
        assert!(!d.staging.exists());
        assert_eq!(std::fs::read(d.fin.join("keep")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(&d.fin).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn existing_staging_is_refused_and_left_alone() {
        let d = dirs();
        std::fs::create_dir(&d.staging).unwrap();
        std::fs::write(d.staging.join("other"), b"x").unwrap();
        let res = Receiver::run(
            &wire(&good_stream())[..],
            &d.staging,
            &d.fin,
            &RecvOptions::new(TOKEN),
        )
        .await;
        assert!(matches!(res, Err(RecvError::StagingExists(_))));
        assert!(d.staging.join("other").exists());
        assert!(!d.fin.exists());
    }

    #[tokio::test]
    async fn receive_over_answers_ack_or_reason() {
        // Good stream: the reply is an Ack.
        let d = dirs();
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        ours.write_all(&wire(&good_stream())).await.unwrap();
        let opts = RecvOptions::new(TOKEN);
        let recv = tokio::spawn({
            let (s, f) = (d.staging.clone(), d.fin.clone());
            async move { receive_over(theirs, &s, &f, &opts).await }
        });
        let reply = read_frame(&mut ours).await.unwrap();
        assert_eq!(
            reply,
            Some(Frame::Ack {
                files: 3,
                bytes: 12
            })
        );
        recv.await.unwrap().unwrap();

        // Bad checksum: the reply is an Abort naming the file.
        let d = dirs();
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        let mut f = good_stream();
        f[7] = end(0, b"xxxxxxxx");
        ours.write_all(&wire(&f)).await.unwrap();
        let opts = RecvOptions::new(TOKEN);
        let recv = tokio::spawn({
            let (s, f) = (d.staging.clone(), d.fin.clone());
            async move { receive_over(theirs, &s, &f, &opts).await }
        });
        match read_frame(&mut ours).await.unwrap() {
            Some(Frame::Abort { reason }) => assert!(reason.contains("pages-1.img"), "{reason}"),
            other => panic!("{other:?}"),
        }
        drop(ours);
        assert!(matches!(
            recv.await.unwrap(),
            Err(RecvError::ChecksumMismatch { .. })
        ));
        assert!(!d.staging.exists() && !d.fin.exists());
    }

    #[tokio::test]
    async fn cancel_gives_up_and_tells_the_sender_why() {
        // Half a stream, the sender still connected: the cancel's reason ends it.
        let d = dirs();
        let (mut ours, theirs) = tokio::io::duplex(1 << 20);
        ours.write_all(&wire(&good_stream()[..4])).await.unwrap();
        let (cancel, cancelled) = watch::channel(None);
        let mut opts = RecvOptions::new(TOKEN);
        opts.cancel = Some(cancelled);
        let recv = tokio::spawn({
            let (s, f) = (d.staging.clone(), d.fin.clone());
            async move { receive_over(theirs, &s, &f, &opts).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!recv.is_finished(), "gave up before the cancel");
        cancel.send_replace(Some("the page server failed".into()));
        match read_frame(&mut ours).await.unwrap() {
            Some(Frame::Abort { reason }) => assert_eq!(reason, "the page server failed"),
            other => panic!("{other:?}"),
        }
        drop(ours);
        assert!(matches!(
            recv.await.unwrap(),
            Err(RecvError::Cancelled(r)) if r == "the page server failed"
        ));
        assert!(!d.staging.exists() && !d.fin.exists());
    }
}

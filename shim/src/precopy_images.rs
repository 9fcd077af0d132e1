//! Pre-copy's images: the source's CRIU dumps with the `stream` option (CRIU patch 0007 lets
//! runc's RPC dump and restore use it) into [`streamer::capture`], which splices them into a
//! second connection to the port the criu-sync stream came in on, but for the memory pages:
//! those it keeps in pipes (references to the frozen service's memory) until the dump
//! succeeded ([`Capture::go`]), so the dump ends without waiting for the link, and sends them
//! while the destination restores ([`PagesOut`]). The destination holds the images in pipes
//! ([`streamer::hold`]) and serves them to the restoring CRIU ([`streamer::serve`]), the pages
//! as they arrive. No side writes an image to a file, and no page is copied before the
//! restore's own copy into the service's memory; criu-sync carries the files runc writes and
//! the writable layer.
use std::{
    io::Write,
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use criu_sync::{
    streamer::{self, HeldImages, StreamError, Streamed},
    Progress,
};
use log::{info, warn};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};

use crate::{
    error::{Error, Result},
    migration::wait_outcome,
};

/// Among the files criu-sync sends: the images come by the image stream; the destination
/// holds them before the restore.
pub const MARKER: &str = "ums-images-by-stream";
/// Appended to the migration's CRIU configuration at the dump and at the restore.
pub const CRIU_CONF: &str = "stream\n";
/// How long the destination waits for the end of the image stream once criu-sync's stream
/// ended: the source sends it before it ends that one, so only a broken source makes this wait.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Ends a blocking streamer: writes on its cancel socket and shuts its TCP socket down (which
/// ends a splice blocked on it).
struct Stopper {
    cancel: UnixStream,
    sock: Option<TcpStream>,
}

impl Stopper {
    fn stop(&mut self) {
        let _ = self.cancel.write_all(b"x");
        if let Some(s) = &self.sock {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

async fn joined<T>(
    task: JoinHandle<std::result::Result<T, StreamError>>,
) -> std::result::Result<T, StreamError> {
    task.await.unwrap_or_else(|e| {
        Err(StreamError::Io {
            context: "the image streamer's thread",
            source: std::io::Error::other(e),
        })
    })
}

/// A blocking streamer's task.
type Streaming = JoinHandle<std::result::Result<Streamed, StreamError>>;

/// What the streamer `task` hands over on `rx`, the task going on; if it ends first, why
/// (`ended`: said when it ended well).
async fn handed<T>(
    rx: oneshot::Receiver<T>,
    task: Streaming,
    ended: &str,
) -> std::result::Result<(T, Streaming), String> {
    match rx.await {
        Ok(v) => Ok((v, task)),
        Err(_) => Err(match joined(task).await {
            Err(e) => e.to_string(),
            Ok(_) => ended.into(),
        }),
    }
}

/// A non-blocking listener on socket `name` in `dir`, bound through /proc/self/fd: a bundle's
/// image dir is often longer than a socket path may be (108 bytes). CRIU reaches it the same
/// way, through the /proc/<runc>/fd path runc gives it for the dir.
fn listen_in(dir: &Path, name: &str) -> Result<UnixListener> {
    let what = || format!("listen on {}", dir.join(name).display());
    let d = std::fs::File::open(dir).map_err(Error::io(what()))?;
    let path = format!(
        "/proc/self/fd/{}/{name}",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    );
    UnixListener::bind(path)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(Error::io(what()))
}

/// Source: CRIU's images on their way to the destination.
pub struct Capture {
    stopper: Stopper,
    captured: oneshot::Receiver<Streamed>,
    task: Streaming,
}

impl Capture {
    /// Listens for the dump's CRIU in `images` and connects to the destination's `peer` (where
    /// criu-sync's stream goes); before the dump starts.
    pub async fn start(
        images: &Path,
        peer: SocketAddr,
        token: &str,
        progress: Progress,
    ) -> Result<Capture> {
        let listener = listen_in(images, streamer::CAPTURE_SOCKET)?;
        let sock = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(peer),
        )
        .await
        .map_err(|_| Error::FailedPrecondition(format!("peer {peer} did not answer")))?
        .map_err(Error::io(format!("connect to peer {peer} for the images")))?
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .map_err(Error::io("the image stream's socket"))?;
        let _ = sock.set_nodelay(true);
        let (cancel, mut ctl) = UnixStream::pair().map_err(Error::io("socketpair"))?;
        let keep = sock
            .try_clone()
            .map_err(Error::io("the image stream's socket"))?;
        let token = token.to_string();
        let (captured_tx, captured) = oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let mut out = &sock;
            streamer::write_hello(&mut out, &token)?;
            streamer::capture(&listener, &sock, &mut ctl, &progress, |s| {
                let _ = captured_tx.send(s);
            })
        });
        Ok(Capture {
            stopper: Stopper {
                cancel,
                sock: Some(keep),
            },
            captured,
            task,
        })
    }

    /// Once the dump succeeded: waits until every image but the pages has left, and lets the
    /// pages follow in the background.
    pub async fn go(mut self) -> std::result::Result<(Streamed, PagesOut), String> {
        let (streamed, task) =
            handed(self.captured, self.task, "the image streamer ended early").await?;
        self.stopper
            .cancel
            .write_all(&[streamer::GO])
            .map_err(|e| format!("start the pages: {e}"))?;
        let (tx, done) = watch::channel(None);
        tokio::spawn(async move {
            let res = joined(task).await.map(|_| ()).map_err(|e| e.to_string());
            tx.send_replace(Some(res));
        });
        let pages = PagesOut {
            stopper: Arc::new(Mutex::new(self.stopper)),
            done,
        };
        Ok((streamed, pages))
    }

    /// The dump failed: stops the stream (the destination holds nothing of an unended one).
    /// Returns why the stream itself failed, if it did.
    pub async fn abort(mut self) -> Option<String> {
        self.stopper.stop();
        match joined(self.task).await {
            Err(StreamError::Cancelled) | Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

/// Source, after a dump: its memory pages on their way (references to the frozen service's
/// memory, so it stays frozen until they are gone or stopped). Dropping the last clone stops
/// them.
#[derive(Clone)]
pub struct PagesOut {
    stopper: Arc<Mutex<Stopper>>,
    done: watch::Receiver<Option<std::result::Result<(), String>>>,
}

impl std::fmt::Debug for PagesOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PagesOut({:?})", *self.done.borrow())
    }
}

impl PagesOut {
    /// Waits (up to [`FINISH_TIMEOUT`]) for the last page to leave.
    pub async fn wait(&self) -> std::result::Result<(), String> {
        tokio::time::timeout(FINISH_TIMEOUT, wait_outcome(self.done.clone(), "the pages"))
            .await
            .unwrap_or_else(|_| Err(format!("not sent within {FINISH_TIMEOUT:?}")))
    }

    /// Stops sending (Abort) and waits for the sender's end.
    pub async fn stop(&self) {
        if let Ok(mut s) = self.stopper.lock() {
            s.stop();
        }
        let _ = self.wait().await;
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Destination: the images of a stream at its Ready, the pages still arriving into them.
pub struct Held {
    pub images: HeldImages,
    pub rest: Rest,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}, the pages following", self.images)
    }
}

/// The pages of a held stream, still arriving. Dropping it stops them.
pub struct Rest {
    _stopper: Stopper,
    task: Streaming,
}

impl Rest {
    /// After a restore that read every page: waits for the stream's end.
    pub async fn finish(self) -> std::result::Result<Streamed, String> {
        tokio::time::timeout(FINISH_TIMEOUT, joined(self.task))
            .await
            .map_err(|_| format!("not ended within {FINISH_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }
}

/// Destination: takes the image stream's connection on `listener`, from `source` only (any
/// other is closed), and holds the images: at most `max_bytes` (0: no limit). Returns at the
/// stream's Ready, the pages still arriving. Dropping the future stops the stream.
pub async fn hold(
    listener: TcpListener,
    source: IpAddr,
    token: &str,
    max_bytes: u64,
    progress: Progress,
    mid: &str,
) -> std::result::Result<Held, String> {
    let (stream, peer) = loop {
        let (s, peer) = listener
            .accept()
            .await
            .map_err(|e| format!("accept the image stream's connection: {e}"))?;
        if peer.ip() == source {
            break (s, peer);
        }
        warn!("migration {mid}: refused a connection from {peer}: only the source ({source}) sends images");
    };
    let sock = stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .map_err(|e| format!("the image stream's connection: {e}"))?;
    let keep = sock
        .try_clone()
        .map_err(|e| format!("the image stream's connection: {e}"))?;
    let (cancel, _unused) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let stopper = Stopper {
        cancel,
        sock: Some(keep),
    };
    info!("migration {mid}: holding the images {peer} streams");
    let token = token.to_string();
    let (tx, ready) = oneshot::channel();
    let task = tokio::task::spawn_blocking(move || {
        let mut input = &sock;
        streamer::read_hello(&mut input, &token)?;
        streamer::hold(&sock, max_bytes, &progress, |h| {
            let _ = tx.send(h);
        })
    });
    let (images, task) = handed(ready, task, "the image stream ended without its images").await?;
    Ok(Held {
        images,
        rest: Rest {
            _stopper: stopper,
            task,
        },
    })
}

/// Destination: serves held images to the restore's CRIU, at [`streamer::SERVE_SOCKET`] in
/// the images dir.
pub struct Server {
    stopper: Stopper,
    task: JoinHandle<std::result::Result<streamer::Served, StreamError>>,
}

impl Server {
    /// Before the restore starts.
    pub fn start(images: &Path, held: HeldImages) -> Result<Server> {
        let _ = std::fs::remove_file(images.join(streamer::SERVE_SOCKET));
        let listener = listen_in(images, streamer::SERVE_SOCKET)?;
        let (cancel, cancelled) = UnixStream::pair().map_err(Error::io("socketpair"))?;
        let task =
            tokio::task::spawn_blocking(move || streamer::serve(&listener, held, &cancelled));
        Ok(Server {
            stopper: Stopper { cancel, sock: None },
            task,
        })
    }

    /// After the restore: what was served, or why serving failed (a restore that failed
    /// because of it says so).
    pub async fn finish(mut self, mid: &str) -> std::result::Result<(), String> {
        self.stopper.stop();
        match joined(self.task).await {
            Ok(s) => {
                info!(
                    "migration {mid}: served {} images to the restore{}",
                    s.files,
                    if s.unread.is_empty() {
                        String::new()
                    } else {
                        format!("; not asked for: {}", s.unread.join(", "))
                    }
                );
                Ok(())
            }
            Err(StreamError::Cancelled) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

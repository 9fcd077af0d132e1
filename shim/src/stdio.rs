//! Bridges a container process's stdio to what containerd gave for it: fifos (ctr, CRI), a
//! `file://` log URI, or a terminal (runc's console socket hands us the pty master).
//! The service's stdout/stderr are always pipes owned by the shim: CRIU cannot dump a
//! process whose fd 1 is a host file, and a pipe lets the shim drain output before it
//! reports an exit.
use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixListener,
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use log::warn;
use nix::{
    fcntl::OFlag,
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::pipe2,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::unix::pipe,
    sync::oneshot,
    task::JoinHandle,
};

use crate::{
    error::{Error, Result},
    runc::ChildStdio,
};

/// Where containerd wants a process's stdio.
#[derive(Debug, Clone, Default)]
pub struct IoPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

type Sink = Box<dyn AsyncWrite + Unpin + Send>;

/// The shim's side of one process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    stdin_close: Mutex<Option<(oneshot::Sender<()>, String)>>,
    copies: Mutex<Vec<JoinHandle<()>>>,
    console: Mutex<Option<OwnedFd>>,
}

/// A console socket runc connects to in order to hand over the pty master.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn new() -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // Socket paths are limited to 108 bytes: keep them short and out of the bundle.
        let dir = Path::new("/run/ums/console");
        std::fs::create_dir_all(dir).map_err(Error::io("create /run/ums/console"))?;
        let path = dir.join(format!(
            "{}-{}.sock",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(Error::io(format!("bind console socket {}", path.display())))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master runc sent (it connected during create/exec).
    async fn receive(self) -> Result<OwnedFd> {
        let listener = self
            .listener
            .try_clone()
            .map_err(Error::io("console socket"))?;
        let fd = tokio::task::spawn_blocking(move || -> Result<OwnedFd> {
            listener
                .set_nonblocking(true)
                .map_err(Error::io("console socket"))?;
            // runc has already connected and sent the fd before it exited.
            let (stream, _) = listener
                .accept()
                .map_err(Error::io("accept on console socket"))?;
            stream
                .set_nonblocking(false)
                .map_err(Error::io("console socket"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(Error::io("console socket"))?;
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    if let Some(&fd) = fds.first() {
                        // SAFETY: the kernel just installed this fd for us.
                        return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                    }
                }
            }
            Err(Error::FailedPrecondition(
                "runc sent no pty master on the console socket".into(),
            ))
        })
        .await
        .map_err(|e| Error::FailedPrecondition(format!("console task: {e}")))?;
        let _ = std::fs::remove_file(&self.path);
        fd
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `prepare` hands back: the child's stdio for runc, and for a terminal the console
/// socket to pass to runc and to `ProcessIo::attach_console` afterwards.
pub struct Prepared {
    pub child: ChildStdio,
    pub console: Option<ConsoleSocket>,
}

impl ProcessIo {
    /// Sets up the pipes (or console socket) for a process and starts the copies.
    pub async fn prepare(paths: &IoPaths) -> Result<(Prepared, ProcessIo)> {
        let io = ProcessIo::default();
        if paths.terminal {
            let console = ConsoleSocket::new()?;
            return Ok((
                Prepared {
                    child: ChildStdio::null(),
                    console: Some(console),
                },
                io,
            ));
        }
        // Where containerd gives no stdio, the process still gets pipes, never the host's
        // /dev/null: CRIU cannot dump an fd of a mount outside the container. An empty stdin
        // is a pipe already closed at its other end: reads see EOF, as from /dev/null.
        let stdin = if paths.stdin.is_empty() {
            let (r, _closed) = pipe2(OFlag::O_CLOEXEC)?;
            Stdio::from(r)
        } else {
            let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
            let dst = pipe::Sender::from_owned_fd(w).map_err(Error::io("stdin pipe"))?;
            io.start_stdin(&paths.stdin, Box::new(dst));
            Stdio::from(r)
        };
        let stdout = io.output_pipe(&paths.stdout).await?;
        let stderr = io.output_pipe(&paths.stderr).await?;
        Ok((
            Prepared {
                child: ChildStdio {
                    stdin,
                    stdout,
                    stderr,
                },
                console: None,
            },
            io,
        ))
    }

    async fn output_pipe(&self, target: &str) -> Result<Stdio> {
        let sink: Sink = if target.is_empty() {
            Box::new(tokio::io::sink())
        } else {
            open_sink(target).await?
        };
        let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
        let src = pipe::Receiver::from_owned_fd(r).map_err(Error::io("output pipe"))?;
        self.copies
            .lock()
            .expect("lock")
            .push(tokio::spawn(copy_out(src, sink)));
        Ok(Stdio::from(w))
    }

    fn start_stdin(&self, fifo: &str, dst: Sink) {
        let (tx, rx) = oneshot::channel();
        *self.stdin_close.lock().expect("lock") = Some((tx, fifo.to_string()));
        tokio::spawn(copy_stdin(fifo.to_string(), dst, rx));
    }

    /// Terminal mode: takes the pty master from runc and relays it to the fifos.
    pub async fn attach_console(&self, socket: ConsoleSocket, paths: &IoPaths) -> Result<()> {
        let master = socket.receive().await?;
        if !paths.stdin.is_empty() {
            let w = master.try_clone().map_err(Error::io("dup pty master"))?;
            let dst = pipe::Sender::from_owned_fd_unchecked(w).map_err(Error::io("pty master"))?;
            self.start_stdin(&paths.stdin, Box::new(dst));
        }
        if !paths.stdout.is_empty() {
            let r = master.try_clone().map_err(Error::io("dup pty master"))?;
            let src =
                pipe::Receiver::from_owned_fd_unchecked(r).map_err(Error::io("pty master"))?;
            let sink = open_sink(&paths.stdout).await?;
            self.copies
                .lock()
                .expect("lock")
                .push(tokio::spawn(copy_out(src, sink)));
        }
        *self.console.lock().expect("lock") = Some(master);
        Ok(())
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let guard = self.console.lock().expect("lock");
        let master = guard
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("process has no terminal".into()))?;
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(Error::io("resize pty")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// CloseIO: the stdin copy drains what is buffered, then closes the process's stdin.
    pub fn close_stdin(&self) {
        if let Some((tx, fifo)) = self.stdin_close.lock().expect("lock").take() {
            let _ = tx.send(());
            // Now, while containerd still has the fifo: a copy that waits in open() for a
            // client that never came must not keep a blocking thread forever.
            unblock_open(&fifo);
        }
    }

    /// Waits (bounded) until all output was copied, so containerd gets it before the exit.
    pub async fn wait_output(&self, limit: Duration) {
        let copies: Vec<_> = std::mem::take(&mut *self.copies.lock().expect("lock"));
        let all = futures_join(copies);
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!("output of an exited process still open after {limit:?}; not waiting longer");
        }
    }

    /// Stops every copy (delete of the process).
    pub fn close(&self) {
        self.close_stdin();
        for c in self.copies.lock().expect("lock").drain(..) {
            c.abort();
        }
        self.console.lock().expect("lock").take();
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

async fn open_sink(target: &str) -> Result<Sink> {
    if let Some(path) = target.strip_prefix("file://") {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(Error::io(format!("open log file {path}")))?;
        return Ok(Box::new(file));
    }
    if target.contains("://") {
        return Err(Error::Unimplemented(format!(
            "log URI {target}: the ums runtime supports fifos and file:// only"
        )));
    }
    // read_write: opening never blocks or fails for want of a reader.
    let fifo = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(target)
        .map_err(Error::io(format!("open output fifo {target}")))?;
    Ok(Box::new(fifo))
}

async fn copy_out(mut src: impl AsyncRead + Unpin, mut sink: Sink) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match src.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = sink.write_all(&buf[..n]).await {
                    warn!("stdio copy: write: {e}");
                    break;
                }
            }
            // A pty master reads EIO once the last slave closed: that is its EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                warn!("stdio copy: read: {e}");
                break;
            }
        }
    }
    let _ = sink.flush().await;
}

/// Copies containerd's stdin fifo into the process's stdin until the client closes the fifo
/// (EOF) or CloseIO. The fifo is opened read-only, in blocking mode as containerd's own shim
/// does, so that the client's close is seen as EOF; the open waits for the client.
async fn copy_stdin(fifo: String, mut dst: Sink, mut close: oneshot::Receiver<()>) {
    let path = fifo.clone();
    let open = tokio::task::spawn_blocking(move || std::fs::File::open(path));
    let file = tokio::select! {
        r = open => r,
        _ = &mut close => {
            let _ = dst.shutdown().await;
            return;
        }
    };
    let mut src = match file.map_err(std::io::Error::other).and_then(|f| f) {
        Ok(f) => match pipe::Receiver::from_file(f) {
            Ok(r) => r,
            Err(e) => return warn!("stdin fifo {fifo}: {e}"),
        },
        Err(e) => return warn!("open stdin fifo {fifo}: {e}"),
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => if dst.write_all(&buf[..n]).await.is_err() { return },
            },
            _ = &mut close => {
                // Take what the client left in the fifo before it asked to close.
                while let Ok(n) = src.try_read(&mut buf) {
                    if n == 0 || dst.write_all(&buf[..n]).await.is_err() { break }
                }
                break;
            }
        }
    }
    let _ = dst.shutdown().await;
}

/// Completes a blocked read-only open of a fifo by briefly opening its write side.
fn unblock_open(fifo: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}

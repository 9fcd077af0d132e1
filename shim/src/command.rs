//! Runs helper programs (runc) inside the shim. containerd-shim's SIGCHLD handler reaps every
//! child of the shim, so a child's exit status comes from its monitor, which we subscribe to
//! before the spawn so that no exit can be missed.
use std::{
    os::fd::OwnedFd,
    process::{Command, Stdio},
};

use containerd_shim::monitor::{monitor_subscribe, monitor_unsubscribe, Subject, Topic};
use tokio::{io::AsyncReadExt, net::unix::pipe};

use crate::error::{Error, Result};

/// What a finished command left: its exit code (128+signal when killed) and captured output.
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` with stdout and stderr captured and stdin from /dev/null.
pub async fn output(mut cmd: Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut sub = monitor_subscribe(Topic::Pid).await?;
    let spawned = cmd.spawn();
    let result = async {
        let mut child = spawned.map_err(Error::io(format!("spawn {:?}", cmd.get_program())))?;
        let pid = child.id() as i32;
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        let (stdout, stderr) = tokio::join!(read_all(stdout), read_all(stderr));
        let code = wait_pid(&mut sub.rx, pid).await?;
        Ok(Output {
            code,
            stdout: stdout?,
            stderr: stderr?,
        })
    }
    .await;
    let _ = monitor_unsubscribe(sub.id).await;
    result
}

/// Runs `cmd` with the stdio the caller set up (e.g. a container's pipes) and returns its
/// exit code. The caller keeps no pipe to it, so nothing here waits for EOF.
pub async fn status(mut cmd: Command) -> Result<i32> {
    let mut sub = monitor_subscribe(Topic::Pid).await?;
    let result = async {
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("spawn {:?}", cmd.get_program())))?;
        // The Command holds the child's ends of the stdio pipes: close them now.
        drop(cmd);
        wait_pid(&mut sub.rx, child.id() as i32).await
    }
    .await;
    let _ = monitor_unsubscribe(sub.id).await;
    result
}

/// Spawns `cmd` (stdio as the caller set it) and returns its pid and a future of its exit
/// code, for children that outlive the call (a daemon).
pub async fn spawn(
    mut cmd: Command,
) -> Result<(i32, impl std::future::Future<Output = Result<i32>> + Send)> {
    let mut sub = monitor_subscribe(Topic::Pid).await?;
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = monitor_unsubscribe(sub.id).await;
            return Err(Error::io(format!("spawn {:?}", cmd.get_program()))(e));
        }
    };
    drop(cmd);
    let pid = child.id() as i32;
    Ok((pid, async move {
        let r = wait_pid(&mut sub.rx, pid).await;
        let _ = monitor_unsubscribe(sub.id).await;
        r
    }))
}

async fn read_all(fd: Option<OwnedFd>) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(fd) = fd {
        let mut rx = pipe::Receiver::from_owned_fd(fd).map_err(Error::io("pipe of a child"))?;
        rx.read_to_end(&mut buf)
            .await
            .map_err(Error::io("read a child's output"))?;
    }
    Ok(buf)
}

async fn wait_pid(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<containerd_shim::monitor::ExitEvent>,
    pid: i32,
) -> Result<i32> {
    while let Some(ev) = rx.recv().await {
        if matches!(ev.subject, Subject::Pid(p) if p == pid) {
            return Ok(ev.exit_code);
        }
    }
    Err(Error::FailedPrecondition(format!(
        "exit monitor closed before pid {pid} exited"
    )))
}

/// CRIU run directly (not through runc): `$UMS_CRIU`, else `criu` from the PATH.
pub fn criu() -> Command {
    Command::new(std::env::var("UMS_CRIU").unwrap_or_else(|_| "criu".into()))
}

/// The fd number a child gets its "ready" pipe as (`--status-fd 3` of runc and CRIU).
pub const STATUS_FD: i32 = 3;

/// A pipe on which a child (CRIU, through runc or directly) writes one byte once it is ready:
/// a lazy dump's page server listens, a lazy-pages daemon takes restores.
pub struct ReadyPipe {
    rx: pipe::Receiver,
}

impl ReadyPipe {
    /// Makes the pipe and hands its write end to `cmd` as fd [`STATUS_FD`]. Our own copy of
    /// the write end is close-on-exec and dropped here, so other children never hold it.
    pub fn attach(cmd: &mut Command) -> Result<ReadyPipe> {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("status pipe")(std::io::Error::from(e)))?;
        let rx = pipe::Receiver::from_owned_fd(rx).map_err(Error::io("status pipe"))?;
        pass_fd(cmd, tx, STATUS_FD);
        Ok(ReadyPipe { rx })
    }

    /// Resolves true once the child said it is ready, false if the pipe closed first (the
    /// child exited without getting ready).
    pub async fn ready(mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.rx.read(&mut b).await, Ok(1))
    }
}

/// Hands `fd` to `cmd`'s child as fd number `target`. Our copy stays close-on-exec and lives
/// in `cmd` (dropped with it), so no other child ever holds it.
pub fn pass_fd(cmd: &mut Command, fd: OwnedFd, target: i32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    // dup2 clears close-on-exec on the new fd, except when it is the same fd.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd.as_raw_fd() == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd.as_raw_fd(), target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child gets SIGKILL when the shim dies (a helper that must not outlive the migration it
/// serves). Tied to the spawning thread: call from a tokio worker, which lives as long as the
/// shim, not from a blocking-pool thread.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

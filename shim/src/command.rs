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

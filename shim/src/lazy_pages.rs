//! CRIU's lazy pages (post-copy) on this host: the pipe size CRIU needs, and the
//! destination's lazy-pages daemon, which fetches the restored service's memory from the
//! source's page server, on fault and in the background, and exits once it has it all.
use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use log::info;
use tokio::sync::watch;

use crate::{
    command::{self, ReadyPipe, STATUS_FD},
    error::{Error, Result},
    runc::with_criu_errors,
};

const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";
/// CRIU's lazy dump and daemon move pages through pipes of up to 4 MiB.
const PIPE_BYTES: u64 = 4 << 20;
/// The daemon's log, in its work dir.
const LOG: &str = "lazy-pages.log";

/// Raises fs.pipe-max-size to what CRIU's lazy pages need: growing one pipe beyond it takes
/// CAP_SYS_RESOURCE, which root lacks in some sandboxes (CRIU then fails with
/// "splice: Bad file descriptor").
pub fn raise_pipe_max_size() -> Result<()> {
    let text = std::fs::read_to_string(PIPE_MAX_SIZE).map_err(Error::io(PIPE_MAX_SIZE))?;
    let now: u64 = text.trim().parse().unwrap_or(0);
    if now >= PIPE_BYTES {
        return Ok(());
    }
    std::fs::write(PIPE_MAX_SIZE, PIPE_BYTES.to_string()).map_err(Error::io(format!(
        "raise {PIPE_MAX_SIZE} from {now} to {PIPE_BYTES} (CRIU's lazy pages need it)"
    )))?;
    info!("raised {PIPE_MAX_SIZE} from {now} to {PIPE_BYTES} for CRIU's lazy pages");
    Ok(())
}

/// A running lazy-pages daemon.
pub struct Daemon {
    pid: i32,
    /// Its exit code once it has exited.
    exit: watch::Receiver<Option<std::result::Result<i32, String>>>,
}

impl Daemon {
    /// Starts `criu lazy-pages` for the images in `images`, fetching from `page_server`;
    /// returns once it takes restores (on its socket in `work`, the restore's work dir).
    pub async fn start(page_server: SocketAddr, images: &Path, work: &Path) -> Result<Daemon> {
        raise_pipe_max_size()?;
        let mut cmd = Command::new(std::env::var("UMS_CRIU").unwrap_or_else(|_| "criu".into()));
        cmd.args(["lazy-pages", "--page-server", "--address"])
            .arg(page_server.ip().to_string())
            .arg("--port")
            .arg(page_server.port().to_string())
            .arg("--images-dir")
            .arg(images)
            .arg("--work-dir")
            .arg(work)
            .args(["--log-file", LOG, "-v4", "--status-fd"])
            .arg(STATUS_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ready = ReadyPipe::attach(&mut cmd)?;
        let (pid, exited) = command::spawn(cmd).await?;
        let (tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            tx.send_replace(Some(exited.await.map_err(|e| e.to_string())));
        });
        let daemon = Daemon { pid, exit };
        if !ready.ready().await {
            let code = daemon.wait().await;
            return Err(Error::FailedPrecondition(with_criu_errors(
                format!("criu lazy-pages did not start ({code:?})"),
                &work.join(LOG),
            )));
        }
        info!("lazy-pages daemon (pid {pid}) fetches from {page_server}");
        Ok(daemon)
    }

    /// Waits for the daemon to exit: Ok once it had every page, Err(reason) otherwise.
    pub async fn wait(&self) -> std::result::Result<(), String> {
        let mut rx = self.exit.clone();
        let code = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err("no exit status".into()))?,
            Err(_) => return Err("its monitor went away".into()),
        };
        match code {
            0 => Ok(()),
            c => Err(format!("criu lazy-pages exited {c}")),
        }
    }

    /// Stops a daemon whose restore failed (it would wait for the restore forever).
    pub fn kill(&self) {
        if self.exit.borrow().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

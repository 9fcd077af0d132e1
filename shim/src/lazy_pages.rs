//! CRIU's lazy pages (post-copy) on this host: the pipe size CRIU needs, the source's page
//! server once Dump returned ([`Serving`]), and the destination's lazy-pages daemon, which
//! fetches the restored service's memory from it, on fault and in the background, and exits
//! once it has it all ([`Daemon`], [`PagesIn`]).
use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use log::info;
use tokio::{net::TcpStream, sync::watch};

use crate::{
    command::{self, ReadyPipe, STATUS_FD},
    error::{Error, Result},
    migration::{wait_outcome, DumpStats},
    runc::with_criu_errors,
};

const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";
/// CRIU's lazy dump and daemon move pages through pipes of up to 4 MiB.
const PIPE_BYTES: u64 = 4 << 20;
/// The daemon's log, in its work dir.
const LOG: &str = "lazy-pages.log";

/// A post-copy dump after Dump returned: CRIU serves the pages from the frozen service until
/// the destination has them all. Its end changes nothing here: the service stays frozen
/// until Commit or Abort, since only the destination knows whether every page arrived (CRIU's
/// page server takes a peer that hangs up early for one that is done).
#[derive(Debug, Clone)]
pub struct Serving {
    /// Where CRIU's page server listens.
    pub page_server: SocketAddr,
    /// Set once the lazy dump has ended: its figures, or why it failed.
    pub(crate) done: watch::Receiver<Option<std::result::Result<DumpStats, String>>>,
}

impl Serving {
    /// Whether the lazy dump has ended.
    pub fn ended(&self) -> bool {
        self.done.borrow().is_some()
    }

    /// Waits for the lazy dump's end.
    pub async fn wait(&self) -> std::result::Result<DumpStats, String> {
        wait_outcome(self.done.clone(), "the lazy dump's task").await
    }

    /// Ends the page server early (Abort): a connection that closes at once ends it.
    pub async fn cancel(&self) {
        if !self.ended() {
            let _ = TcpStream::connect(self.page_server).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.wait()).await;
    }
}

/// Destination, post-copy: the restored service's pages arriving through the lazy-pages
/// daemon.
#[derive(Debug, Clone)]
pub struct PagesIn {
    pub migration_id: String,
    /// Set once the daemon has exited: Ok with every page in, or why not (the restored
    /// service is killed by then).
    pub(crate) done: watch::Receiver<Option<std::result::Result<(), String>>>,
}

impl PagesIn {
    pub async fn wait(&self) -> std::result::Result<(), String> {
        wait_outcome(self.done.clone(), "the lazy-pages daemon's task").await
    }
}

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
        let mut cmd = command::criu();
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
        match wait_outcome(self.exit.clone(), "the lazy-pages daemon's monitor").await? {
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

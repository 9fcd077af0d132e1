//! Pre-copy's memory pages: the source's CRIU sends them straight from its pipes to a CRIU
//! page server on the destination (`runc checkpoint --page-server`), over a second connection
//! to the port the criu-sync stream came in on, while criu-sync carries the other images. No
//! side writes the pages to a file only to read them back for the stream.
use std::{
    net::IpAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use log::{info, warn};
use tokio::net::TcpListener;

use crate::{command, runc::with_criu_errors};

/// Among the images of a source whose pages go to the page server: the destination waits for
/// the page server's images before the restore.
pub const MARKER: &str = "ums-pages-by-page-server";
/// The page server's log, in its work dir.
const LOG: &str = "page-server.log";
/// The fd number CRIU gets the accepted connection as (`--ps-socket`).
const PS_FD: i32 = 3;
/// How long the page server may take to end once the stream has: the source's dump, which
/// ends the page transfer first, was over before the stream's end was sent.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the size of the page server's images is checked against the limit.
const SIZE_POLL: Duration = Duration::from_millis(100);

/// Where a migration's pages land, beside the directory its images are received into.
pub struct PagesDir {
    pub dir: PathBuf,
    pub work: PathBuf,
}

impl PagesDir {
    pub fn beside(images: &Path) -> PagesDir {
        PagesDir {
            dir: images.with_extension("pages"),
            work: images.with_extension("pages-work"),
        }
    }

    pub async fn remove(&self) {
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        let _ = tokio::fs::remove_dir_all(&self.work).await;
    }

    /// Takes the page server's connection on `listener`, from `source` only (any other is
    /// closed), and runs CRIU's page server on it. Resolves once that has exited: Ok only if
    /// the source's dump ended the transfer properly (CRIU's page server fails on a
    /// connection closed before that). Dropping the future kills the page server, and so
    /// do the shim's death and images beyond `max_bytes` (the stream's limit).
    pub async fn serve(
        &self,
        listener: TcpListener,
        source: IpAddr,
        max_bytes: u64,
        mid: &str,
    ) -> Result<(), String> {
        let (stream, peer) = loop {
            let (s, peer) = listener
                .accept()
                .await
                .map_err(|e| format!("accept the page server's connection: {e}"))?;
            if peer.ip() == source {
                break (s, peer);
            }
            warn!("migration {mid}: refused a connection from {peer}: only the source ({source}) sends pages");
        };
        self.remove().await;
        for d in [&self.dir, &self.work] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        // CRIU reads it with blocking calls.
        let sock = stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(|e| format!("the page server's connection: {e}"))?;
        let mut cmd = command::criu();
        cmd.args(["page-server", "--images-dir"])
            .arg(&self.dir)
            .arg("--work-dir")
            .arg(&self.work)
            .args(["--log-file", LOG, "-v4", "--ps-socket"])
            .arg(PS_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command::pass_fd(&mut cmd, OwnedFd::from(sock), PS_FD);
        command::die_with_parent(&mut cmd);
        let (pid, exited) = command::spawn(cmd).await.map_err(|e| e.to_string())?;
        info!("migration {mid}: CRIU page server (pid {pid}) takes the pages from {peer}");
        let mut child = KillOnDrop(Some(pid));
        tokio::pin!(exited);
        let mut tick = tokio::time::interval(SIZE_POLL);
        let code = loop {
            tokio::select! {
                code = &mut exited => break code.map_err(|e| e.to_string()),
                _ = tick.tick() => {
                    let size = dir_bytes(&self.dir).await;
                    if size > max_bytes {
                        // Returning kills it.
                        return Err(format!(
                            "the pages exceed the limit of {max_bytes} bytes ({size} bytes so far)"
                        ));
                    }
                }
            }
        };
        child.0 = None;
        match code? {
            0 => Ok(()),
            c => Err(with_criu_errors(
                format!("criu page-server exited {c}"),
                &self.work.join(LOG),
            )),
        }
    }

    /// Moves the page server's images into `images` (the received ones), refusing to replace
    /// any, and removes what is left of the page server.
    pub async fn merge_into(&self, images: &Path) -> Result<(), String> {
        let res = async {
            let mut rd = tokio::fs::read_dir(&self.dir)
                .await
                .map_err(|e| format!("read {}: {e}", self.dir.display()))?;
            while let Some(e) = rd
                .next_entry()
                .await
                .map_err(|e| format!("read {}: {e}", self.dir.display()))?
            {
                let to = images.join(e.file_name());
                if tokio::fs::symlink_metadata(&to).await.is_ok() {
                    return Err(format!(
                        "{} came both from the stream and from the page server",
                        to.display()
                    ));
                }
                tokio::fs::rename(e.path(), &to)
                    .await
                    .map_err(|err| format!("move {} into the images: {err}", e.path().display()))?;
            }
            Ok(())
        }
        .await;
        self.remove().await;
        res
    }
}

/// Bytes of the files in `dir` (unreadable entries count as empty).
async fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            total += e.metadata().await.map_or(0, |m| m.len());
        }
    }
    total
}

/// SIGKILLs the pid it holds when dropped (a page server whose migration was given up).
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn merge_moves_pages_and_refuses_to_replace() {
        let tmp = std::env::temp_dir().join(format!("ums-merge-{}", std::process::id()));
        let images = tmp.join("in-m1");
        let pages = PagesDir::beside(&images);
        for d in [&images, &pages.dir, &pages.work] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(images.join("core-1.img"), b"core").unwrap();
        std::fs::write(pages.dir.join("pages-1025.img"), b"pages").unwrap();
        pages.merge_into(&images).await.unwrap();
        assert_eq!(
            std::fs::read(images.join("pages-1025.img")).unwrap(),
            b"pages"
        );
        assert!(!pages.dir.exists() && !pages.work.exists());

        std::fs::create_dir_all(&pages.dir).unwrap();
        std::fs::write(pages.dir.join("core-1.img"), b"other").unwrap();
        let err = pages.merge_into(&images).await.unwrap_err();
        assert!(
            err.contains("both from the stream and from the page server"),
            "{err}"
        );
        assert_eq!(std::fs::read(images.join("core-1.img")).unwrap(), b"core");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

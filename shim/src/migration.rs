//! Live migration of a task's service, the runtime side of the migration API
//! (proto/ums/v1/migration.proto).
//!
//! Source: the service is frozen (cgroup freezer), checkpointed by CRIU with
//! `--leave-running` (so it stays frozen and can resume), and the images plus the changes of
//! its writable layer are streamed by criu-sync while CRIU writes them. It stays frozen until
//! Commit (killed: the destination runs it) or Abort (resumed: nothing lost).
//! Destination: a task created with the restore marker has an outer but no service; Prepare
//! receives the images, and containerd's Start restores the service into the fresh outer.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use criu_sync::{receiver, sender, RecvOptions, SendOptions, Sender};
use log::{info, warn};
use tokio::{net::TcpStream, sync::watch, task::JoinHandle};

use crate::{
    command,
    container::SERVICE,
    criu_stats,
    error::{Error, Result},
    runc::{CheckpointOpts, ChildStdio, Runc},
};

/// Annotation of a task that is the destination of migration `<value>`.
pub const RESTORE_ANNOTATION: &str = "io.ums.restore";
/// The writable layer's changes, sent beside CRIU's images.
pub const ROOTFS_DIFF: &str = "ums-rootfs.tar";
/// How long a destination waits for a source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The source side of a migration in progress.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub migration_id: String,
    pub phase: &'static str,
    /// Bytes streamed so far (for Status while dumping).
    pub progress: criu_sync::Progress,
}

/// The destination side: images expected for a task created with the restore marker.
pub struct Incoming {
    pub migration_id: String,
    pub phase: &'static str,
    /// Ok once the images are received and verified; Err(reason) if that failed.
    result: watch::Sender<Option<std::result::Result<(), String>>>,
    receiver: Option<JoinHandle<()>>,
    progress: criu_sync::Progress,
    /// Where the images are received (set by `listen`).
    images: Option<PathBuf>,
}

impl Incoming {
    pub fn new(migration_id: &str) -> Self {
        Incoming {
            migration_id: migration_id.to_string(),
            phase: "created",
            result: watch::channel(None).0,
            receiver: None,
            progress: criu_sync::Progress::new(),
            images: None,
        }
    }

    /// The directory the images are received into.
    pub fn images(&self) -> Result<PathBuf> {
        self.images.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "migration {} was never prepared (no image dir)",
                self.migration_id
            ))
        })
    }

    pub fn bytes(&self) -> u64 {
        self.progress.bytes()
    }

    /// Resolves once the images are in (Ok) or will never be (Err).
    pub fn wait(&self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let mut rx = self.result.subscribe();
        async move {
            let r = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| Error::FailedPrecondition("migration went away".into()))?
                .clone();
            match r {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(Error::FailedPrecondition(format!(
                    "the migration's images did not arrive: {e}"
                ))),
                None => unreachable!("waited for Some"),
            }
        }
    }

    pub fn abort(&mut self, reason: &str) {
        if let Some(h) = self.receiver.take() {
            h.abort();
        }
        self.phase = "aborted";
        self.result.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(Err(reason.to_string()));
                true
            } else {
                false
            }
        });
    }

    /// Listens on `listen` and receives one stream into `dir` (renamed into place only when
    /// complete and verified). Returns the address to give the source.
    pub async fn listen(
        &mut self,
        listen: &str,
        token: &str,
        max_bytes: u64,
        dir: PathBuf,
    ) -> Result<SocketAddr> {
        if self.receiver.is_some() {
            return Err(Error::AlreadyExists(format!(
                "migration {} is already receiving",
                self.migration_id
            )));
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(Error::io(format!("listen on {listen}")))?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("listener address"))?;
        let mut opts = RecvOptions::new(token);
        opts.progress = self.progress.clone();
        // The source keeps its frozen service until the restore here is confirmed: the images
        // need not survive a crash of this host, so skip the fsyncs.
        opts.fsync = false;
        if max_bytes > 0 {
            opts.limits.max_total_bytes = max_bytes;
            opts.limits.max_file_bytes = max_bytes;
        }
        let result = self.result.clone();
        let mid = self.migration_id.clone();
        self.phase = "receiving";
        self.images = Some(dir.clone());
        self.receiver = Some(tokio::spawn(async move {
            let staging = dir.with_extension("staging");
            let res = async {
                let (stream, peer) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept())
                    .await
                    .map_err(|_| format!("no source connected within {ACCEPT_TIMEOUT:?}"))?
                    .map_err(|e| format!("accept: {e}"))?;
                let _ = stream.set_nodelay(true);
                info!("migration {mid}: receiving images from {peer}");
                receiver::receive_over(stream, &staging, &dir, &opts)
                    .await
                    .map(|s| {
                        info!(
                            "migration {mid}: received {} files, {} bytes in {:?}",
                            s.files, s.bytes, s.elapsed
                        )
                    })
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = &res {
                warn!("migration {mid}: receive failed: {e}");
            }
            result.send_replace(Some(res));
        }));
        Ok(addr)
    }
}

/// Figures of a finished dump.
#[derive(Debug, Default, Clone)]
pub struct DumpStats {
    pub bytes: u64,
    pub files: u64,
    pub checkpoint_ms: u64,
    pub transfer_ms: u64,
    pub frozen_ms: u64,
}

/// What a dump needs from its container, taken under the container's lock.
pub struct DumpJob {
    pub progress: criu_sync::Progress,
    pub runc: Runc,
    pub dir: PathBuf,
    pub upperdir: Option<PathBuf>,
    pub migration_id: String,
}

impl DumpJob {
    /// Freezes the service, checkpoints it and streams everything to `peer`. On error the
    /// service is resumed before returning; on success it stays frozen.
    pub async fn run(self, peer: &str, token: &str) -> Result<DumpStats> {
        let images = self.dir.join(format!("out-{}", self.migration_id));
        let work = self.dir.join(format!("out-{}.work", self.migration_id));
        for d in [&images, &work] {
            let _ = tokio::fs::remove_dir_all(d).await;
            tokio::fs::create_dir_all(d)
                .await
                .map_err(Error::io(format!("create {}", d.display())))?;
        }
        let res = self.stream(&images, &work, peer, token).await;
        let _ = tokio::fs::remove_dir_all(&images).await;
        if res.is_err() {
            if let Err(e) = self.runc.resume(SERVICE).await {
                warn!(
                    "migration {}: resume after a failed dump: {e}",
                    self.migration_id
                );
            }
        }
        let _ = tokio::fs::remove_dir_all(&work).await;
        res
    }

    async fn stream(
        &self,
        images: &Path,
        work: &Path,
        peer: &str,
        token: &str,
    ) -> Result<DumpStats> {
        let mid = &self.migration_id;
        // Watch before anything is written, and reach the peer before freezing anything.
        let mut opts = SendOptions::new(token);
        opts.progress = self.progress.clone();
        let sender = Sender::new(images, opts)
            .map_err(|e| Error::FailedPrecondition(format!("watch {}: {e}", images.display())))?;
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(peer))
            .await
            .map_err(|_| Error::FailedPrecondition(format!("peer {peer} did not answer")))?
            .map_err(Error::io(format!("connect to peer {peer}")))?;
        let _ = stream.set_nodelay(true);

        let t0 = Instant::now();
        self.runc.pause(SERVICE).await?;
        info!("migration {mid}: service frozen, dumping");
        let runc = self.runc.clone();
        let opts = CheckpointOpts {
            image_path: images.to_path_buf(),
            work_path: work.to_path_buf(),
            leave_running: true,
            ..Default::default()
        };
        let diff = self.upperdir.clone().map(|u| (u, images.join(ROOTFS_DIFF)));
        // In a task of its own: if the stream fails first, the dump still runs to its end,
        // and the service may only be resumed after that (CRIU restores the frozen state).
        let (fin_tx, fin_rx) = watch::channel(None::<std::result::Result<Duration, String>>);
        tokio::spawn(async move {
            let (ckpt, tar) = tokio::join!(runc.checkpoint(SERVICE, &opts), async {
                match diff {
                    Some((upper, out)) => tar_layer(&upper, &out).await,
                    None => Ok(()),
                }
            });
            let r = ckpt
                .and(tar)
                .map(|()| t0.elapsed())
                .map_err(|e| e.to_string());
            fin_tx.send_replace(Some(r));
        });
        let finished = |mut rx: watch::Receiver<Option<std::result::Result<Duration, String>>>| async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_else(|| Err("no result".into())),
                Err(_) => Err("dump task vanished".to_string()),
            }
        };
        let done = {
            let f = finished(fin_rx.clone());
            async move { f.await.map(drop) }
        };
        let sent = sender::send_over(sender, stream, done).await;
        let checkpoint = finished(fin_rx).await;
        let stats = match (sent, checkpoint) {
            (Ok(s), Ok(elapsed)) => (s, elapsed),
            (_, Err(e)) => {
                return Err(Error::FailedPrecondition(format!("checkpoint failed: {e}")))
            }
            (Err(e), _) => {
                return Err(Error::FailedPrecondition(format!(
                    "stream to {peer} failed: {e}"
                )))
            }
        };
        let (sent, checkpoint) = stats;
        let frozen = criu_stats::read(work, "stats-dump")
            .or_else(|| criu_stats::read(images, "stats-dump"))
            .map(|s| s.frozen_us / 1000)
            .unwrap_or(0);
        let out = DumpStats {
            bytes: sent.bytes,
            files: sent.files,
            checkpoint_ms: checkpoint.as_millis() as u64,
            transfer_ms: t0.elapsed().as_millis() as u64,
            frozen_ms: frozen,
        };
        info!("migration {mid}: dumped and sent {out:?}");
        Ok(out)
    }
}

/// GNU tar archiving an overlay upper dir (whiteouts and opaque-dir xattrs included). Also
/// run by the coordinator for containers on containerd's runc runtime.
pub fn archive_layer_command(upper: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--xattrs",
        "--xattrs-include=trusted.*",
        "--numeric-owner",
        "-C",
    ])
    .arg(upper)
    .arg("-cf")
    .arg(out)
    .arg(".");
    cmd
}

/// GNU tar applying a layer archive onto the destination's upper dir.
pub fn apply_layer_command(archive: &Path, upper: &Path) -> Command {
    let mut cmd = Command::new("tar");
    cmd.args([
        "--xattrs",
        "--xattrs-include=trusted.*",
        "--numeric-owner",
        "--same-owner",
        "-p",
        "-C",
    ])
    .arg(upper)
    .arg("-xf")
    .arg(archive);
    cmd
}

/// Archives an overlay upper dir.
async fn tar_layer(upper: &Path, out: &Path) -> Result<()> {
    run_tar(
        archive_layer_command(upper, out),
        "archive the writable layer",
    )
    .await
}

/// Applies a layer archive onto the destination's upper dir.
pub async fn untar_layer(archive: &Path, upper: &Path) -> Result<()> {
    run_tar(
        apply_layer_command(archive, upper),
        "apply the writable layer",
    )
    .await
}

async fn run_tar(cmd: Command, what: &str) -> Result<()> {
    let out = command::output(cmd).await?;
    if out.code != 0 {
        return Err(Error::FailedPrecondition(format!(
            "{what}: tar exited {}: {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Restores the service from received images into the (fresh) outer of this task.
pub struct RestoreJob<'a> {
    pub runc: &'a Runc,
    /// The received images.
    pub images: &'a Path,
    /// The bundle's ums dir (CRIU's work dir goes there).
    pub dir: &'a Path,
    pub service_bundle: &'a Path,
    pub upperdir: Option<&'a Path>,
    pub migration_id: &'a str,
}

impl RestoreJob<'_> {
    pub async fn run(self, stdio: ChildStdio) -> Result<i32> {
        let images = self.images;
        let work = self.dir.join(format!("in-{}.work", self.migration_id));
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(Error::io("create restore work dir"))?;
        let diff = images.join(ROOTFS_DIFF);
        if diff.exists() {
            match self.upperdir {
                Some(upper) => untar_layer(&diff, upper).await?,
                None => warn!(
                    "migration {}: the source sent its writable layer but this task has no overlay rootfs; not applied",
                    self.migration_id
                ),
            }
        }
        let t0 = Instant::now();
        let pid = self
            .runc
            .restore(
                SERVICE,
                self.service_bundle,
                images,
                &work,
                &self.service_bundle.join("pid"),
                stdio,
            )
            .await?;
        // The service was dumped frozen: CRIU restores the freezer state too.
        self.runc.resume_if_paused(SERVICE).await?;
        info!(
            "migration {}: service restored (pid {pid}) in {:?}",
            self.migration_id,
            t0.elapsed()
        );
        let _ = tokio::fs::remove_dir_all(images).await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        Ok(pid)
    }
}

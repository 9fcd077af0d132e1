//! Live migration of a task's service, the runtime side of the migration API
//! (proto/ums/v1/migration.proto).
//!
//! Source: the service is frozen (cgroup freezer), checkpointed by CRIU with
//! `--leave-running` (so it stays frozen and can resume), its images go through CRIU's image
//! streamer to the destination, which holds them in pipes until the restore reads them
//! ([`precopy_images`]), and the files runc writes plus the changes of its writable layer are
//! streamed by criu-sync (post-copy: CRIU writes all but the pages to files criu-sync sends,
//! and the destination fetches the pages later, [`lazy_pages`]). It stays frozen until Commit
//! (killed: the destination runs it) or Abort (resumed: nothing lost).
//! Destination: a task created with the restore marker has an outer but no service; Prepare
//! receives the images, and containerd's Start restores the service into the fresh outer.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criu_sync::{receiver, sender, RecvOptions, SendOptions, Sender};
use log::{info, warn};
use tokio::{
    net::TcpStream,
    sync::{oneshot, watch},
    task::JoinHandle,
};

use crate::{
    command,
    container::SERVICE,
    criu_stats,
    error::{Error, Result},
    lazy_pages::{self, PagesIn, Serving},
    precopy_images::{self, Capture, Held, PagesOut},
    runc::{CheckpointOpts, ChildStdio, RestoreOpts, Runc},
};

/// Annotation of a task that is the destination of migration `<value>`.
pub const RESTORE_ANNOTATION: &str = "io.ums.restore";
/// The writable layer's changes, sent beside CRIU's images.
pub const ROOTFS_DIFF: &str = "ums-rootfs.tar";
/// CRIU's configuration file for the service (runc passes it, see `spec.rs`), in its bundle.
pub const CRIU_CONF: &str = "criu.conf";
/// What a migration's dump and restore tell CRIU beyond runc's options.
/// - No network lock: the service's netns is the outer's, which outlives the dump; no
///   established TCP connection is dumped (no --tcp-established), so there is nothing the
///   lock would protect, while its two iptables-restore runs at each of dump and restore cost
///   ~80 ms of the freeze apiece. The restore takes the method from the dump's inventory.
/// - Cgroups left to runc (runc 1.1 has no `--manage-cgroups-mode ignore`): runc puts CRIU
///   into the service's cgroups, so the restored tasks land there, with the limits of the
///   destination's own container; CRIU's soft mode mounted every controller and read every
///   property inside the freeze (~12-15 ms here), for settings the destination must not take.
const MIGRATION_CRIU_CONF: &str = "network-lock skip\nmanage-cgroups=ignore\n";
/// Post-copy: sent beside the images, names the source's page server (`ip:port`).
pub const PAGE_SERVER_FILE: &str = "ums-page-server";
/// Post-copy, held: sent beside the images, tells the destination to keep the restored
/// service frozen until its last page is in.
pub const HOLD_FILE: &str = "ums-hold-until-pages";
/// Appended to [`MIGRATION_CRIU_CONF`] at a held restore: CRIU patch 0006 leaves the restored
/// service in its frozen freezer cgroup (runc then sees it paused).
const HOLD_CRIU_CONF: &str = "freeze-restored\n";

/// How a dump's memory pages move to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageMode {
    /// Streamed by the dump with the other images and held by the destination; the restore
    /// starts once they are all there.
    PreCopy,
    /// Served from the frozen source to the destination's restore (CRIU lazy pages). `hold`:
    /// the restored service stays frozen until the last page is in (else it runs at once).
    PostCopy { hold: bool },
}

impl PageMode {
    pub fn of(post_copy: bool, hold: bool) -> Result<PageMode> {
        match (post_copy, hold) {
            (false, false) => Ok(PageMode::PreCopy),
            (true, hold) => Ok(PageMode::PostCopy { hold }),
            (false, true) => Err(Error::InvalidArgument(
                "hold applies to post-copy only".into(),
            )),
        }
    }

    fn post_copy(self) -> bool {
        matches!(self, PageMode::PostCopy { .. })
    }
}
/// How long a destination waits for a source to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The source side of a migration in progress.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub migration_id: String,
    /// Bytes streamed so far (for Status while dumping).
    pub progress: criu_sync::Progress,
    /// Once Dump returned: what its dump left going on.
    pub in_flight: Option<InFlight>,
}

impl Outgoing {
    /// The phase: "dumping" until Dump returned, then "dumped"; a post-copy dump is "serving"
    /// until its page server ended.
    pub fn phase(&self) -> &'static str {
        match &self.in_flight {
            None => "dumping",
            Some(InFlight::Serving(s)) if !s.ended() => "serving",
            Some(_) => "dumped",
        }
    }

    /// Post-copy, once Dump returned: the page server still serving.
    pub fn serving(&self) -> Option<&Serving> {
        match &self.in_flight {
            Some(InFlight::Serving(s)) => Some(s),
            _ => None,
        }
    }

    /// Pre-copy, once Dump returned: the memory pages still on their way.
    pub fn sending(&self) -> Option<&PagesOut> {
        match &self.in_flight {
            Some(InFlight::Sending(p)) => Some(p),
            _ => None,
        }
    }
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
    /// Pre-copy: CRIU's images, held for the restore once all but the pages are in.
    held: Arc<Mutex<Option<Held>>>,
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
            held: Arc::default(),
        }
    }

    /// Pre-copy: CRIU's images, once all but the pages are in (for the restore, which
    /// consumes them).
    pub fn take_held(&self) -> Option<Held> {
        self.held.lock().ok()?.take()
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
        let rx = self.result.subscribe();
        async move {
            wait_outcome(rx, "the migration").await.map_err(|e| {
                Error::FailedPrecondition(format!("the migration's images did not arrive: {e}"))
            })
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
        let slot = self.held.clone();
        self.phase = "receiving";
        self.images = Some(dir.clone());
        self.receiver = Some(tokio::spawn(async move {
            let res = receive(listener, &dir, opts, &mid).await;
            let res = match res {
                Ok(held) => {
                    if let Ok(mut s) = slot.lock() {
                        *s = held;
                    }
                    Ok(())
                }
                Err(e) => {
                    warn!("migration {mid}: receive failed: {e}");
                    Err(e)
                }
            };
            result.send_replace(Some(res));
        }));
        Ok(addr)
    }
}

/// Destination: takes the source's stream on `listener` and receives it into `dir` (through
/// its staging dir); pre-copy, also the images of the source's CRIU, on a second connection,
/// held in memory ([`precopy_images`]) and returned once both are complete but for the
/// memory pages, which keep arriving. On error nothing is left.
async fn receive(
    listener: tokio::net::TcpListener,
    dir: &Path,
    mut opts: RecvOptions,
    mid: &str,
) -> std::result::Result<Option<Held>, String> {
    let res = async {
        let (stream, peer) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept())
            .await
            .map_err(|_| format!("no source connected within {ACCEPT_TIMEOUT:?}"))?
            .map_err(|e| format!("accept: {e}"))?;
        let _ = stream.set_nodelay(true);
        info!("migration {mid}: receiving images from {peer}");
        // A failed image stream ends criu-sync's too, telling the source why.
        let (cancel, cancelled) = watch::channel(None);
        opts.cancel = Some(cancelled);
        let held = precopy_images::hold(
            listener,
            peer.ip(),
            &opts.token,
            opts.limits.max_total_bytes,
            opts.progress.clone(),
            mid,
        );
        let staging = staging_dir(dir);
        let received = receiver::receive_over(stream, &staging, dir, &opts);
        tokio::pin!(held, received);
        let mut held_done = None;
        let received = loop {
            tokio::select! {
                r = &mut received => break r,
                h = &mut held, if held_done.is_none() => {
                    if let Err(e) = &h {
                        cancel.send_replace(Some(format!("the image stream: {e}")));
                    }
                    held_done = Some(h);
                }
            }
        };
        let s = received.map_err(|e| e.to_string())?;
        info!(
            "migration {mid}: received {} files, {} bytes in {:?}",
            s.files, s.bytes, s.elapsed
        );
        if !dir.join(precopy_images::MARKER).exists() {
            // Post-copy: CRIU's images were files criu-sync sent (an unasked stream is dropped).
            return Ok(None);
        }
        let held = match held_done {
            Some(h) => h,
            None => tokio::time::timeout(precopy_images::FINISH_TIMEOUT, held)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "the images did not arrive within {:?} of the other files",
                        precopy_images::FINISH_TIMEOUT
                    ))
                }),
        };
        let held = held.map_err(|e| format!("the image stream: {e}"))?;
        info!("migration {mid}: the images are in: {held:?}");
        Ok(Some(held))
    }
    .await;
    if res.is_err() {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
    res
}

/// Every directory that receiving into `images` makes, `images` last: what a deleted or
/// given-up destination leaves to remove (a killed shim cannot clean up itself).
pub fn received_dirs(images: &Path) -> [PathBuf; 2] {
    [staging_dir(images), images.to_path_buf()]
}

/// Where the stream is received before it is complete and renamed to `images`.
fn staging_dir(images: &Path) -> PathBuf {
    images.with_extension("staging")
}

/// What a dump leaves going on once Dump returned.
#[derive(Debug, Clone)]
pub enum InFlight {
    /// Post-copy: CRIU's page server.
    Serving(Serving),
    /// Pre-copy: the memory pages on their way.
    Sending(PagesOut),
}

/// Figures of a finished dump.
#[derive(Debug, Default, Clone)]
pub struct DumpStats {
    pub bytes: u64,
    pub files: u64,
    pub checkpoint_ms: u64,
    pub transfer_ms: u64,
    pub frozen_ms: u64,
    /// Post-copy: bytes of the pages served by CRIU's page server.
    pub pages_bytes: u64,
}

/// How a dump's CRIU ended: its elapsed time since the freeze, or why it failed.
type Finish = Option<std::result::Result<Duration, String>>;

/// Where a dump's memory pages are once everything else is in.
enum PagesLeft {
    /// Post-copy: CRIU's page server serves them until its dump ends.
    Served {
        page_server: SocketAddr,
        finish: watch::Receiver<Finish>,
    },
    /// Pre-copy: on their way.
    Sending(PagesOut),
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
    /// service is resumed before returning; on success it stays frozen. Returns once
    /// everything but the memory pages is in: post-copy, the page server still serving them;
    /// pre-copy, the pages still on their way.
    pub async fn run(
        self,
        peer: &str,
        token: &str,
        mode: PageMode,
    ) -> Result<(DumpStats, InFlight)> {
        let images = self.dir.join(format!("out-{}", self.migration_id));
        let work = self.dir.join(format!("out-{}.work", self.migration_id));
        for d in [&images, &work] {
            let _ = tokio::fs::remove_dir_all(d).await;
            tokio::fs::create_dir_all(d)
                .await
                .map_err(Error::io(format!("create {}", d.display())))?;
        }
        let service = self.dir.join(SERVICE);
        let streamed = self.stream(&images, &work, peer, token, mode);
        let conf = match mode {
            PageMode::PreCopy => precopy_images::CRIU_CONF,
            PageMode::PostCopy { .. } => "",
        };
        let res = match with_criu_conf(&service, conf, streamed).await {
            Ok((
                stats,
                PagesLeft::Served {
                    page_server,
                    finish,
                },
            )) => {
                let done = self.serve_pages(stats.clone(), finish, images, work);
                return Ok((stats, InFlight::Serving(Serving { page_server, done })));
            }
            Ok((stats, PagesLeft::Sending(pages))) => Ok((stats, InFlight::Sending(pages))),
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(&images).await;
        if res.is_err() {
            self.resume_after_failure().await;
        }
        let _ = tokio::fs::remove_dir_all(&work).await;
        res
    }

    async fn resume_after_failure(&self) {
        if let Err(e) = self.runc.resume(SERVICE).await {
            warn!(
                "migration {}: resume after a failed dump: {e}",
                self.migration_id
            );
        }
    }

    /// Post-copy, after Dump returned: waits in the background for CRIU's lazy dump to end
    /// and cleans up.
    fn serve_pages(
        self,
        mut stats: DumpStats,
        finish: watch::Receiver<Finish>,
        images: PathBuf,
        work: PathBuf,
    ) -> watch::Receiver<Option<std::result::Result<DumpStats, String>>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mid = &self.migration_id;
            let res = match finished(finish).await {
                Ok(elapsed) => {
                    // Frozen here from the freeze until the last page left (CRIU's own
                    // frozen_time of a lazy dump does not start at the freeze).
                    stats.frozen_ms = elapsed.as_millis() as u64;
                    stats.transfer_ms = elapsed.as_millis() as u64;
                    info!("migration {mid}: every page served, {stats:?}");
                    Ok(stats)
                }
                Err(e) => {
                    warn!("migration {mid}: CRIU's page server failed: {e}; the service stays frozen until Commit or Abort");
                    Err(format!("CRIU's page server failed: {e}"))
                }
            };
            let _ = tokio::fs::remove_dir_all(&images).await;
            let _ = tokio::fs::remove_dir_all(&work).await;
            tx.send_replace(Some(res));
        });
        rx
    }

    async fn stream(
        &self,
        images: &Path,
        work: &Path,
        peer: &str,
        token: &str,
        mode: PageMode,
    ) -> Result<(DumpStats, PagesLeft)> {
        let mid = &self.migration_id;
        let post_copy = mode.post_copy();
        // Watch before anything is written, and reach the peer before freezing anything.
        let mut opts = SendOptions::new(token);
        opts.progress = self.progress.clone();
        opts.ignore = vec![criu_sync::streamer::CAPTURE_SOCKET.to_string()];
        let sender = Sender::new(images, opts)
            .map_err(|e| Error::FailedPrecondition(format!("watch {}: {e}", images.display())))?;
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(peer))
            .await
            .map_err(|_| Error::FailedPrecondition(format!("peer {peer} did not answer")))?
            .map_err(Error::io(format!("connect to peer {peer}")))?;
        let _ = stream.set_nodelay(true);
        let page_server = if post_copy {
            // On the address the peer already reaches us at.
            let local = stream.local_addr().map_err(Error::io("stream address"))?;
            let ps = page_server_address(local.ip())?;
            lazy_pages::raise_pipe_max_size()?;
            tokio::fs::write(images.join(PAGE_SERVER_FILE), ps.to_string())
                .await
                .map_err(Error::io("write the page server's address"))?;
            if mode == (PageMode::PostCopy { hold: true }) {
                tokio::fs::write(images.join(HOLD_FILE), b"")
                    .await
                    .map_err(Error::io("write the hold marker"))?;
            }
            Some(ps)
        } else {
            None
        };
        // Pre-copy: CRIU's images go through its image streamer to the peer, behind the same
        // port (no file of them written here); the marker tells the peer to wait for them.
        let capture = match page_server {
            Some(_) => None,
            None => {
                tokio::fs::write(images.join(precopy_images::MARKER), b"")
                    .await
                    .map_err(Error::io("write the image stream marker"))?;
                let to = stream.peer_addr().map_err(Error::io("stream address"))?;
                Some(Capture::start(images, to, token, self.progress.clone()).await?)
            }
        };

        let t0 = Instant::now();
        self.runc.pause(SERVICE).await?;
        info!(
            "migration {mid}: service frozen, dumping{}",
            match mode {
                PageMode::PreCopy => "",
                PageMode::PostCopy { hold: false } => " (post-copy)",
                PageMode::PostCopy { hold: true } => " (post-copy, held)",
            }
        );
        let opts = CheckpointOpts {
            image_path: images.to_path_buf(),
            work_path: work.to_path_buf(),
            leave_running: true,
            page_server: page_server.map(|ps| ps.to_string()),
            lazy_pages: post_copy,
            ..Default::default()
        };
        type Checkpoint = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;
        let (ready, checkpoint): (_, Checkpoint) = match page_server {
            Some(_) => {
                let (ready, ckpt) = self.runc.checkpoint_lazy(SERVICE, &opts)?;
                (Some(ready), Box::pin(ckpt))
            }
            None => {
                let runc = self.runc.clone();
                (
                    None,
                    Box::pin(async move { runc.checkpoint(SERVICE, &opts).await }),
                )
            }
        };
        let diff = self.upperdir.clone().map(|u| (u, images.join(ROOTFS_DIFF)));
        // In tasks of their own: if the stream fails first, the dump still runs to its end,
        // and the service may only be resumed after that (CRIU restores the frozen state).
        let ckpt_done = spawn_finish(t0, checkpoint);
        let tar_done = spawn_finish(t0, async move {
            match diff {
                Some((upper, out)) => tar_layer(&upper, &out).await,
                None => Ok(()),
            }
        });
        let (captured_tx, mut captured_rx) = oneshot::channel();
        let dumped = {
            let (ckpt, tar) = (ckpt_done.clone(), tar_done.clone());
            async move {
                match ready {
                    // Post-copy: the images are complete once the page server is ready.
                    Some(ready) => {
                        if !ready.ready().await {
                            finished(ckpt).await?;
                            return Err("CRIU ended before its page server was ready".into());
                        }
                    }
                    None => {
                        if let Err(e) = finished(ckpt).await {
                            return Err(match capture {
                                Some(c) => match c.abort().await {
                                    Some(why) => format!("{e} (the image stream: {why})"),
                                    None => e,
                                },
                                None => e,
                            });
                        }
                    }
                }
                finished(tar).await?;
                // Pre-copy: the peer has every image but the pages before criu-sync's stream
                // ends; the pages follow.
                if let Some(c) = capture {
                    let streamed = c.go().await.map_err(|e| format!("the image stream: {e}"))?;
                    let _ = captured_tx.send(streamed);
                }
                Ok(())
            }
        };
        let (dumped_tx, dumped_rx) = watch::channel(None::<Duration>);
        let dumped = async {
            let r = dumped.await;
            dumped_tx.send_replace(Some(t0.elapsed()));
            r
        };
        let sent = sender::send_over(sender, stream, dumped).await;
        let checkpoint = match (page_server, &sent) {
            // The page server waits for a peer that will never come: end it.
            (Some(ps), Err(_)) => {
                let _ = TcpStream::connect(ps).await;
                finished(ckpt_done.clone()).await
            }
            (Some(_), Ok(_)) => Ok(dumped_rx.borrow().unwrap_or_else(|| t0.elapsed())),
            (None, _) => finished(ckpt_done.clone()).await,
        };
        let tar = finished(tar_done).await;
        let (sent, checkpoint) = match (sent, checkpoint.and_then(|c| tar.map(|_| c))) {
            (Ok(s), Ok(elapsed)) => (s, elapsed),
            // Unless it only echoes the dump's failure, the stream's says why the dump failed
            // too: the peer refused (e.g. the image stream failed there) or vanished.
            (Err(e), Err(c)) if !matches!(e, criu_sync::SendError::DumpFailed(_)) => {
                return Err(Error::FailedPrecondition(format!(
                    "checkpoint failed: {c}; the stream to {peer} failed: {e}"
                )))
            }
            (_, Err(e)) => {
                return Err(Error::FailedPrecondition(format!("checkpoint failed: {e}")))
            }
            (Err(e), _) => {
                return Err(Error::FailedPrecondition(format!(
                    "stream to {peer} failed: {e}"
                )))
            }
        };
        let stats = if post_copy {
            None
        } else {
            dump_stats(work, images)
        };
        let (captured, sending) = captured_rx.try_recv().ok().unzip();
        let out = DumpStats {
            // Pre-copy: CRIU's images went through the image stream, beside criu-sync's.
            bytes: sent.bytes + captured.map_or(0, |c| c.bytes),
            files: sent.files,
            checkpoint_ms: checkpoint.as_millis() as u64,
            transfer_ms: t0.elapsed().as_millis() as u64,
            frozen_ms: stats.map_or(0, |s| s.frozen_us / 1000),
            // Post-copy: what the destination will fetch (CRIU 4.2's stats do not count it).
            pages_bytes: if post_copy {
                criu_stats::lazy_pages(images) * page_size()
            } else {
                0
            },
        };
        match (page_server, sending) {
            (Some(page_server), _) => {
                info!("migration {mid}: dumped and sent all but the pages {out:?}; serving pages on {page_server}");
                Ok((
                    out,
                    PagesLeft::Served {
                        page_server,
                        finish: ckpt_done,
                    },
                ))
            }
            (None, Some(pages)) => {
                info!(
                    "migration {mid}: dumped and sent all but the pages {out:?}; the pages follow"
                );
                Ok((out, PagesLeft::Sending(pages)))
            }
            // A dump that succeeded has started its pages (Capture::go).
            (None, None) => Err(Error::FailedPrecondition(
                "the image stream ended without sending the pages".into(),
            )),
        }
    }
}

/// Runs `f` with the migration's CRIU configuration in the service's bundle, where runc hands
/// it to the CRIU it starts; removed afterwards (CRIU read it when it started), since a plain
/// checkpoint of the task takes CRIU's defaults.
async fn with_criu_conf<T>(
    service_bundle: &Path,
    extra: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let conf = service_bundle.join(CRIU_CONF);
    tokio::fs::write(&conf, format!("{MIGRATION_CRIU_CONF}{extra}"))
        .await
        .map_err(Error::io(format!("write {}", conf.display())))?;
    let res = f.await;
    let _ = tokio::fs::remove_file(&conf).await;
    res
}

/// CRIU's stats-dump (in the work dir, or the image dir).
fn dump_stats(work: &Path, images: &Path) -> Option<criu_stats::CriuStats> {
    criu_stats::read(work, "stats-dump").or_else(|| criu_stats::read(images, "stats-dump"))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

/// Runs `f` in a task of its own; the receiver holds its outcome (time since `t0`) once done.
fn spawn_finish(
    t0: Instant,
    f: impl std::future::Future<Output = Result<()>> + Send + 'static,
) -> watch::Receiver<Finish> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let r = f.await.map(|()| t0.elapsed()).map_err(|e| e.to_string());
        tx.send_replace(Some(r));
    });
    rx
}

async fn finished(rx: watch::Receiver<Finish>) -> std::result::Result<Duration, String> {
    wait_outcome(rx, "the dump's task").await
}

/// The outcome a task sends on `rx` (Some once it ended), or why it will never come.
pub(crate) async fn wait_outcome<T: Clone>(
    mut rx: watch::Receiver<Option<std::result::Result<T, String>>>,
    what: &str,
) -> std::result::Result<T, String> {
    let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
    match outcome {
        Ok(Some(r)) => r,
        Ok(None) => Err(format!("{what} gave no result")),
        Err(_) => Err(format!("{what} vanished")),
    }
}

/// A free port on `ip` for CRIU's page server (CRIU binds it itself, moments later).
fn page_server_address(ip: std::net::IpAddr) -> Result<SocketAddr> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(Error::io(format!("find a free port on {ip}")))
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
    /// Pre-copy: CRIU's images, served to the restore through CRIU's image streamer, the
    /// pages as they arrive.
    pub held: Option<Held>,
}

impl RestoreJob<'_> {
    /// Restores; returns the service's pid and, post-copy, its pages still arriving.
    pub async fn run(self, stdio: ChildStdio) -> Result<(i32, Option<PagesIn>)> {
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
        let service = self.service_bundle;
        let hold = images.join(HOLD_FILE).exists();
        let conf = match (hold, self.held.is_some()) {
            (true, _) => HOLD_CRIU_CONF,
            (false, true) => precopy_images::CRIU_CONF,
            (false, false) => "",
        };
        with_criu_conf(service, conf, self.restore(stdio, work, hold)).await
    }

    /// The restore proper, with the migration's CRIU configuration in place.
    /// `hold`: post-copy, the service is restored frozen and thawed once every page is in.
    async fn restore(
        mut self,
        stdio: ChildStdio,
        work: PathBuf,
        hold: bool,
    ) -> Result<(i32, Option<PagesIn>)> {
        let images = self.images;
        let (server, rest) = match self.held.take() {
            Some(Held { images: held, rest }) => (
                Some(precopy_images::Server::start(images, held)?),
                Some(rest),
            ),
            None => (None, None),
        };
        let t0 = Instant::now();
        // Post-copy: the pages come from the source's page server through a lazy-pages
        // daemon, which must take restores before the restore starts.
        let daemon = match read_page_server(images).await? {
            Some(ps) => Some(lazy_pages::Daemon::start(ps, images, &work).await?),
            None if hold => {
                return Err(Error::InvalidArgument(format!(
                    "the source sent {HOLD_FILE} without {PAGE_SERVER_FILE}: hold is for post-copy"
                )))
            }
            None => None,
        };
        let pid_file = self.service_bundle.join("pid");
        let opts = RestoreOpts {
            image_path: images,
            work_path: &work,
            pid_file: &pid_file,
            lazy_pages: daemon.is_some(),
        };
        let restored = async {
            let pid = self
                .runc
                .restore(SERVICE, self.service_bundle, &opts, stdio)
                .await?;
            // The service was dumped frozen: CRIU restores the freezer state too. Held: it
            // stays frozen (CRIU froze it) until its last page is in.
            if !hold {
                self.runc.resume_if_paused(SERVICE).await?;
            }
            Ok::<_, Error>(pid)
        }
        .await;
        // Failed: the pages still on their way are of no use, and feeding them kept the serve
        // going. Restored: CRIU read every page; the stream's end is right behind them.
        let rest = rest.filter(|_| restored.is_ok());
        let served = match server {
            Some(s) => s.finish(self.migration_id).await,
            None => Ok(()),
        };
        if let Some(r) = rest {
            match r.finish().await {
                Ok(s) => info!(
                    "migration {}: the image stream ended: {} images, {} bytes",
                    self.migration_id, s.files, s.bytes
                ),
                Err(e) => warn!(
                    "migration {}: the image stream ended badly after a restore that read all of it: {e}",
                    self.migration_id
                ),
            }
        }
        let restored = match (restored, served) {
            (Err(e), Err(why)) => Err(Error::FailedPrecondition(format!(
                "{e} (serving the images to CRIU: {why})"
            ))),
            (r, _) => r,
        };
        let pid = match restored {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(d) = &daemon {
                    d.kill();
                }
                return Err(e);
            }
        };
        info!(
            "migration {}: service restored (pid {pid}) in {:?}{}",
            self.migration_id,
            t0.elapsed(),
            match (&daemon, hold) {
                (None, _) => "",
                (Some(_), false) => ", its pages follow",
                (Some(_), true) => ", frozen until its pages are in",
            }
        );
        let images = images.to_path_buf();
        let Some(d) = daemon else {
            // Not on the restore's path: freeing a GiB of tmpfs pages takes ~0.1 s here.
            tokio::spawn(async move {
                let _ = tokio::fs::remove_dir_all(&images).await;
                let _ = tokio::fs::remove_dir_all(&work).await;
            });
            return Ok((pid, None));
        };
        let (tx, done) = watch::channel(None);
        let (runc, mid) = (self.runc.clone(), self.migration_id.to_string());
        tokio::spawn(async move {
            let mut res = d.wait().await.map_err(|e| e.to_string());
            if hold && res.is_ok() {
                res = runc
                    .resume_if_paused(SERVICE)
                    .await
                    .map_err(|e| format!("thawing the held service: {e}"));
            }
            match &res {
                Ok(()) => info!(
                    "migration {mid}: every page in{}, {:?} after the restore began",
                    if hold { ", service thawed" } else { "" },
                    t0.elapsed()
                ),
                // Its memory has holes: it must not run on (the source resumes its copy).
                // Held, it never ran: runc kill --all thaws a frozen container to kill it.
                Err(e) => {
                    warn!("migration {mid}: the page transfer failed ({e}): killing the restored service");
                    let _ = runc.kill(SERVICE, libc::SIGKILL as u32, true).await;
                }
            }
            let _ = tokio::fs::remove_dir_all(&images).await;
            let _ = tokio::fs::remove_dir_all(&work).await;
            tx.send_replace(Some(res.map_err(|e| {
                format!("the page transfer failed ({e}); the restored service was killed")
            })));
        });
        let pages = PagesIn {
            migration_id: self.migration_id.to_string(),
            done,
        };
        Ok((pid, Some(pages)))
    }
}

/// Post-copy: the source's page server, named by the file it sent beside the images.
async fn read_page_server(images: &Path) -> Result<Option<SocketAddr>> {
    let text = match tokio::fs::read_to_string(images.join(PAGE_SERVER_FILE)).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {PAGE_SERVER_FILE}"))(e)),
    };
    text.trim().parse().map(Some).map_err(|_| {
        Error::InvalidArgument(format!(
            "the source's {PAGE_SERVER_FILE} holds {text:?}, not an address"
        ))
    })
}

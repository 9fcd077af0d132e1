//! The orchestrator-level approach (paper, section III-C): a container on containerd's own runc
//! runtime (`io.containerd.runc.v2`) moved with containerd's native checkpoint/restore, with the
//! same phases, stream and rollback as the container-level approach.
//!
//! - source ([`NativeSource`]): Tasks.Pause, then Tasks.Checkpoint with runc's
//!   `CheckpointOptions {exit: false, image_path, work_path}` (the images stay in our dir, the
//!   task stays frozen and resumable) while criu-sync streams the image dir to the destination
//!   as CRIU writes it, with the writable layer's changes (the snapshot's overlay upper dir);
//!   commit: SIGKILL and thaw (the frozen task dies without running again); abort:
//!   Tasks.Resume;
//! - destination ([`NativeIncoming`]): the coordinator receives the stream itself (there is no
//!   ums shim); the task is created with runc's `Options {criu_image_path, criu_work_path}`
//!   (containerd 1.6 and 2.1 take the restore path from there when the request has no
//!   checkpoint descriptor; their runc shim then runs `runc restore` on Start); restore:
//!   the layer changes applied to the new snapshot's upper dir, Tasks.Start, and a thaw (CRIU
//!   restores the frozen state the task was dumped in, which containerd's runc shim does not
//!   know about).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criu_sync::{sender, SendOptions, Sender};
use log::{info, warn};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::watch;
use ums_shim::api::migration::{DumpResponse, StatusResponse};
use ums_shim::migration::{apply_layer_command, archive_layer_command, Incoming, ROOTFS_DIFF};

use crate::api::AnyJson;
use crate::containerd::{Containerd, TaskState};
use crate::error::{Error, Result};
use crate::refs::ContainerRef;

/// containerd's runc shim options (`containerd.runc.v1.Options`, runtime/v2/runc/options/
/// oci.proto), the fields containerd 1.6 and 2.1 share (2.x reserves 8, `criu_path`).
#[derive(Clone, PartialEq, Message)]
pub struct RuncOptions {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
    #[prost(string, tag = "11")]
    pub criu_work_path: String,
}

/// `containerd.runc.v1.CheckpointOptions`: the fields we set.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointOptions {
    #[prost(bool, tag = "1")]
    pub exit: bool,
    #[prost(string, tag = "8")]
    pub image_path: String,
    #[prost(string, tag = "9")]
    pub work_path: String,
}

pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
pub const CHECKPOINT_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

/// Where this coordinator keeps the runc state of the containers it restores natively:
/// `<state dir>/runc` (the shim adds `/<namespace>`). Never the source's root: on one host, a
/// container and its migrated copy would share a runc state dir.
pub fn runc_root(state_dir: &Path) -> PathBuf {
    state_dir.join("runc")
}

/// The runtime options of the destination container: the source's runc options with this
/// system's runc root (and no restore paths).
pub fn destination_runtime_options(
    source: Option<&AnyJson>,
    state_dir: &Path,
) -> Result<prost_types::Any> {
    let mut opts = match source {
        Some(a) => decode_runc_options(&a.to_any()?)?,
        None => RuncOptions::default(),
    };
    opts.root = runc_root(state_dir).to_string_lossy().into_owned();
    opts.criu_image_path.clear();
    opts.criu_work_path.clear();
    Ok(any(RUNC_OPTIONS_TYPE, &opts))
}

fn decode_runc_options(a: &prost_types::Any) -> Result<RuncOptions> {
    if a.type_url.trim_start_matches("types.googleapis.com/") != RUNC_OPTIONS_TYPE {
        return Err(Error::Unsupported(format!(
            "runtime options of type {} (expected {RUNC_OPTIONS_TYPE})",
            a.type_url
        )));
    }
    RuncOptions::decode(a.value.as_slice())
        .map_err(|e| Error::BadRequest(format!("runc runtime options: {e}")))
}

fn any(type_url: &str, m: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

/// The `upperdir=` of an overlay rootfs (the container's writable layer).
fn upperdir(mounts: &[containerd_client::types::Mount]) -> Option<PathBuf> {
    mounts.iter().find(|m| m.r#type == "overlay").and_then(|m| {
        m.options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir=").map(PathBuf::from))
    })
}

async fn run_tar(cmd: std::process::Command, what: &str) -> Result<()> {
    let out = tokio::process::Command::from(cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io(format!("{what}: running tar"), e))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "{what}: tar {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The source side: the container's task on this system's containerd.
#[derive(Clone)]
pub struct NativeSource {
    containerd: Containerd,
    container: ContainerRef,
    snapshotter: String,
    snapshot_key: String,
    /// `<state dir>/orchestrator/out/<ns>/<id>`: images and CRIU's work dir while dumping.
    dir: PathBuf,
    progress: criu_sync::Progress,
}

type Finished = watch::Receiver<Option<std::result::Result<Duration, String>>>;

impl NativeSource {
    pub fn new(
        containerd: Containerd,
        container: ContainerRef,
        snapshotter: &str,
        snapshot_key: &str,
        state_dir: &Path,
    ) -> NativeSource {
        let dir = state_dir
            .join("orchestrator/out")
            .join(&container.namespace)
            .join(&container.id);
        NativeSource {
            containerd,
            container,
            snapshotter: snapshotter.to_string(),
            snapshot_key: snapshot_key.to_string(),
            dir,
            progress: criu_sync::Progress::new(),
        }
    }

    /// Freezes the task, checkpoints it and streams the images to `peer`. On error the task
    /// is resumed before returning (once the checkpoint has ended); on success it stays frozen.
    pub async fn dump(
        &self,
        migration_id: &str,
        peer: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<DumpResponse> {
        let base = self.dir.join(migration_id);
        let images = base.join("images");
        let work = base.join("work");
        let _ = tokio::fs::remove_dir_all(&base).await;
        for d in [&images, &work] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let res = match tokio::time::timeout(
            timeout,
            self.stream(migration_id, &images, &work, peer, token),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "the native checkpoint and stream did not end within {}s",
                timeout.as_secs()
            ))),
        };
        if res.is_err() {
            if let Err(e) = self.abort().await {
                warn!("migration {migration_id}: resuming after a failed dump: {e}");
            }
        }
        let _ = tokio::fs::remove_dir_all(&base).await;
        res
    }

    async fn stream(
        &self,
        mid: &str,
        images: &Path,
        work: &Path,
        peer: &str,
        token: &str,
    ) -> Result<DumpResponse> {
        let (ns, id) = (&self.container.namespace, &self.container.id);
        let cd = &self.containerd;
        let upper = if self.snapshot_key.is_empty() {
            None
        } else {
            upperdir(
                &cd.snapshot_mounts(ns, &self.snapshotter, &self.snapshot_key)
                    .await?,
            )
        };
        // Watch before anything is written, and reach the peer before freezing anything.
        let mut opts = SendOptions::new(token);
        opts.progress = self.progress.clone();
        let sender = Sender::new(images, opts)
            .map_err(|e| Error::Internal(format!("watching {}: {e}", images.display())))?;
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(peer))
            .await
            .map_err(|_| Error::Timeout(format!("the image stream peer {peer} did not answer")))?
            .map_err(|e| Error::io(format!("connecting to the image stream peer {peer}"), e))?;
        let _ = stream.set_nodelay(true);

        let t0 = Instant::now();
        cd.pause_task(ns, id).await?;
        info!("migration {mid}: {} paused, checkpointing", self.container);
        let checkpoint = any(
            CHECKPOINT_OPTIONS_TYPE,
            &CheckpointOptions {
                exit: false,
                image_path: images.to_string_lossy().into_owned(),
                work_path: work.to_string_lossy().into_owned(),
            },
        );
        // In a task of its own: if the stream fails first, the checkpoint still runs to its
        // end, and the task may only be resumed after that.
        let (fin_tx, fin_rx) = watch::channel(None);
        let (cd2, ns2, id2) = (cd.clone(), ns.clone(), id.clone());
        let diff = upper.map(|u| (u, images.join(ROOTFS_DIFF)));
        tokio::spawn(async move {
            let (ckpt, tar) = tokio::join!(cd2.checkpoint_task(&ns2, &id2, checkpoint), async {
                match diff {
                    Some((upper, out)) => {
                        run_tar(
                            archive_layer_command(&upper, &out),
                            "archiving the writable layer",
                        )
                        .await
                    }
                    None => Ok(()),
                }
            });
            let r = ckpt
                .and(tar)
                .map(|()| t0.elapsed())
                .map_err(|e| e.to_string());
            fin_tx.send_replace(Some(r));
        });
        let done = {
            let f = finished(fin_rx.clone());
            async move { f.await.map(drop) }
        };
        let sent = sender::send_over(sender, stream, done).await;
        let checkpointed = finished(fin_rx).await;
        let (sent, checkpoint_time) = match (sent, checkpointed) {
            (Ok(s), Ok(t)) => (s, t),
            (_, Err(e)) => {
                return Err(Error::Containerd {
                    op: "tasks checkpoint".into(),
                    code: containerd_client::tonic::Code::Unknown,
                    message: e,
                })
            }
            (Err(e), _) => {
                return Err(Error::Internal(format!(
                    "image stream to {peer} failed: {e}"
                )))
            }
        };
        let frozen_ms = ums_shim::criu_stats::read(work, "stats-dump")
            .or_else(|| ums_shim::criu_stats::read(images, "stats-dump"))
            .map(|s| s.frozen_us / 1000)
            .unwrap_or(0);
        let out = DumpResponse {
            bytes: sent.bytes,
            files: sent.files,
            checkpoint_ms: ms(checkpoint_time),
            transfer_ms: ms(t0.elapsed()),
            frozen_ms,
            ..Default::default()
        };
        info!(
            "migration {mid}: {} checkpointed natively and sent: {} bytes, {} files, checkpoint {} ms, frozen {} ms",
            self.container, out.bytes, out.files, out.checkpoint_ms, out.frozen_ms
        );
        Ok(out)
    }

    /// The service runs at the destination: the frozen task ends here without running again
    /// (the SIGKILL is pending when it thaws).
    pub async fn commit(&self) -> Result<()> {
        let (ns, id) = (&self.container.namespace, &self.container.id);
        self.containerd.kill_task(ns, id, 9, true).await?;
        if let Err(e) = self.containerd.resume_task(ns, id).await {
            // runc's kill --all thaws by itself: the task may be gone already.
            info!("{}: thaw after SIGKILL: {e}", self.container);
        }
        Ok(())
    }

    /// Resumes the frozen task (nothing to do if it runs).
    pub async fn abort(&self) -> Result<()> {
        let (ns, id) = (&self.container.namespace, &self.container.id);
        match self.containerd.task(ns, id).await? {
            Some(t) if t.state == TaskState::Running => Ok(()),
            Some(t) if matches!(t.state, TaskState::Paused | TaskState::Pausing) => {
                self.containerd.resume_task(ns, id).await
            }
            Some(t) => Err(Error::Conflict(format!(
                "the task of {} is {}: it cannot be resumed",
                self.container,
                t.state.as_str()
            ))),
            None => Err(Error::NotFound(format!(
                "the task of {} is gone",
                self.container
            ))),
        }
    }

    /// Bytes streamed so far; phase `idle` when the task runs (nothing to resume).
    pub async fn status(&self) -> Result<StatusResponse> {
        let (ns, id) = (&self.container.namespace, &self.container.id);
        let phase = match self.containerd.task(ns, id).await? {
            Some(t) if t.state == TaskState::Running => "idle".to_string(),
            Some(t) => t.state.as_str().to_lowercase(),
            None => "gone".to_string(),
        };
        Ok(StatusResponse {
            phase,
            bytes: self.progress.bytes(),
            ..Default::default()
        })
    }
}

async fn finished(mut rx: Finished) -> std::result::Result<Duration, String> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(|| Err("no result".into())),
        Err(_) => Err("the checkpoint task vanished".to_string()),
    }
}

/// `<state dir>/orchestrator/in/<ns>/<id>/<migration>`: what the destination receives.
pub fn incoming_dir(state_dir: &Path, r: &ContainerRef, migration_id: &str) -> PathBuf {
    state_dir
        .join("orchestrator/in")
        .join(&r.namespace)
        .join(&r.id)
        .join(migration_id)
}

/// The destination side of a native migration: the stream received by this coordinator, the
/// task created to restore from it.
pub struct NativeIncoming {
    incoming: Mutex<Incoming>,
    dir: PathBuf,
    upperdir: Option<PathBuf>,
    /// runc binary and root (with the namespace) of the container's task.
    runc: String,
    runc_root: PathBuf,
}

/// What [`NativeIncoming::prepare`] needs.
pub struct PrepareNative<'a> {
    pub containerd: &'a Containerd,
    pub container: &'a ContainerRef,
    pub migration_id: &'a str,
    pub state_dir: &'a Path,
    /// The container's runtime options (see [`destination_runtime_options`]).
    pub runtime_options: &'a prost_types::Any,
    pub rootfs: Vec<containerd_client::types::Mount>,
    pub log: &'a str,
    pub listen: &'a str,
    pub token: &'a str,
    pub max_bytes: u64,
}

impl NativeIncoming {
    /// Listens for the images and creates the task that will restore from them. Returns the
    /// task's pid (0: nothing runs before the restore), the entry and the stream address.
    pub async fn prepare(p: PrepareNative<'_>) -> Result<(u32, NativeIncoming, String)> {
        let dir = incoming_dir(p.state_dir, p.container, p.migration_id);
        let images = dir.join("images");
        let work = dir.join("work");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
        let mut incoming = Incoming::new(p.migration_id);
        let addr = match incoming
            .listen(p.listen, p.token, p.max_bytes, images.clone())
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(Error::Internal(format!(
                    "listening for the image stream on {}: {e}",
                    p.listen
                )));
            }
        };
        let mut opts = decode_runc_options(p.runtime_options)?;
        opts.criu_image_path = images.to_string_lossy().into_owned();
        opts.criu_work_path = work.to_string_lossy().into_owned();
        let upperdir = upperdir(&p.rootfs);
        let r = p.container;
        let created = p
            .containerd
            .create_task_with_options(
                &r.namespace,
                &r.id,
                p.rootfs,
                p.log,
                p.log,
                Some(any(RUNC_OPTIONS_TYPE, &opts)),
            )
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                incoming.abort("the task could not be created");
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let runc = if opts.binary_name.is_empty() {
            "runc".to_string()
        } else {
            opts.binary_name.clone()
        };
        Ok((
            pid,
            NativeIncoming {
                incoming: Mutex::new(incoming),
                dir,
                upperdir,
                runc,
                runc_root: Path::new(&opts.root).join(&r.namespace),
            },
            addr.to_string(),
        ))
    }

    /// Once the images are in: the layer changes applied, Tasks.Start (runc restore), the
    /// restored task thawed. Returns its pid.
    pub async fn restore(&self, cd: &Containerd, r: &ContainerRef) -> Result<u32> {
        let arrived = self
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait();
        tokio::time::timeout(Duration::from_secs(60), arrived)
            .await
            .map_err(|_| Error::Timeout("the images did not arrive within 60 s".into()))?
            .map_err(|e| Error::Precondition(e.to_string()))?;
        let images = self.dir.join("images");
        let diff = images.join(ROOTFS_DIFF);
        if tokio::fs::try_exists(&diff).await.unwrap_or(false) {
            match &self.upperdir {
                Some(upper) => {
                    run_tar(
                        apply_layer_command(&diff, upper),
                        "applying the writable layer",
                    )
                    .await?
                }
                None => warn!(
                    "{r}: the source sent its writable layer, but this container's rootfs is \
                     not an overlay: not applied"
                ),
            }
        }
        let pid = match cd.start_task(&r.namespace, &r.id).await {
            Ok(pid) => pid,
            Err(e) => return Err(self.with_criu_cause(e).await),
        };
        self.thaw(r).await?;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        Ok(pid)
    }

    /// containerd's runc shim reports a failed restore as CRIU's exit only ("criu failed: type
    /// NOTIFY"): add CRIU's own errors from restore.log in our work dir.
    async fn with_criu_cause(&self, e: Error) -> Error {
        // The work dir we gave; CRIU falls back to the image dir.
        let mut found = None;
        for log in [
            self.dir.join("work/restore.log"),
            self.dir.join("images/restore.log"),
        ] {
            if let Ok(text) = tokio::fs::read_to_string(&log).await {
                found = Some((log, text));
                break;
            }
        }
        let Some((log, text)) = found else {
            warn!("no CRIU restore.log in {}", self.dir.display());
            return e;
        };
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error (") || l.contains("Error:"))
            .collect();
        let tail = errors[errors.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            return e;
        }
        let cause = format!("; CRIU {}: {}", log.display(), tail);
        match e {
            Error::Containerd { op, code, message } => Error::Containerd {
                op,
                code,
                message: message + &cause,
            },
            other => Error::Internal(format!("{other}{cause}")),
        }
    }

    /// CRIU restores the task frozen, as it was dumped; containerd's runc shim takes it for
    /// running (and refuses Resume): thaw it with runc itself.
    async fn thaw(&self, r: &ContainerRef) -> Result<()> {
        let runc = |args: &[&str]| {
            let mut c = tokio::process::Command::new(&self.runc);
            c.arg("--root")
                .arg(&self.runc_root)
                .args(args)
                .arg(&r.id)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            c
        };
        let state = runc(&["state"])
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} state", self.runc), e))?;
        let status = serde_json::from_slice::<serde_json::Value>(&state.stdout)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(String::from))
            .unwrap_or_default();
        if status != "paused" {
            return Ok(());
        }
        let out = runc(&["resume"])
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} resume", self.runc), e))?;
        if !out.status.success() {
            return Err(Error::Internal(format!(
                "thawing the restored {r}: runc resume {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        info!("{r}: restored frozen (as dumped), thawed");
        Ok(())
    }

    /// Stops receiving; the caller removes the task and container.
    pub async fn abort(&self, reason: &str) {
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort(reason);
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_options_get_this_systems_root() {
        let src = RuncOptions {
            root: "/run/a/runc".into(),
            binary_name: "runc".into(),
            systemd_cgroup: false,
            criu_image_path: "/x".into(),
            ..Default::default()
        };
        let a = AnyJson::from_any(&any(RUNC_OPTIONS_TYPE, &src));
        let out = destination_runtime_options(Some(&a), Path::new("/run/b/coord")).unwrap();
        assert_eq!(out.type_url, RUNC_OPTIONS_TYPE);
        let o = RuncOptions::decode(out.value.as_slice()).unwrap();
        assert_eq!(o.root, "/run/b/coord/runc");
        assert_eq!(o.binary_name, "runc");
        assert!(o.criu_image_path.is_empty());
        let none = destination_runtime_options(None, Path::new("/s")).unwrap();
        assert_eq!(
            RuncOptions::decode(none.value.as_slice()).unwrap().root,
            "/s/runc"
        );
        let other = AnyJson::from_any(&prost_types::Any {
            type_url: "io.containerd.runc.v1.CreateOptions".into(),
            value: vec![],
        });
        assert!(destination_runtime_options(Some(&other), Path::new("/s")).is_err());
    }

    #[test]
    fn checkpoint_options_wire_format() {
        // exit=false is not on the wire; image_path is field 8, work_path 9 (oci.proto).
        let v = CheckpointOptions {
            exit: false,
            image_path: "/i".into(),
            work_path: "/w".into(),
        }
        .encode_to_vec();
        assert_eq!(v, vec![0x42, 2, b'/', b'i', 0x4a, 2, b'/', b'w']);
    }

    #[test]
    fn overlay_upperdir() {
        let m = containerd_client::types::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "workdir=/s/work".into(),
                "upperdir=/s/fs".into(),
                "lowerdir=/l".into(),
            ],
            ..Default::default()
        };
        assert_eq!(upperdir(&[m]), Some(PathBuf::from("/s/fs")));
        assert_eq!(upperdir(&[]), None);
    }
}

//! The calls the coordinator makes to its system's containerd (gRPC over its unix socket).
//! Every call carries the namespace of the container it is about.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::{
    container::Runtime,
    containers_client::ContainersClient,
    content_client::ContentClient,
    images_client::ImagesClient,
    namespaces_client::NamespacesClient,
    snapshots::{
        snapshots_client::SnapshotsClient, MountsRequest, PrepareSnapshotRequest,
        RemoveSnapshotRequest, StatSnapshotRequest,
    },
    tasks_client::TasksClient,
    CheckpointTaskRequest, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetImageRequest, GetRequest,
    KillRequest, ListContainersRequest, ListNamespacesRequest, PauseTaskRequest,
    ReadContentRequest, ResumeTaskRequest, StartRequest, UpdateContainerRequest, WaitRequest,
};
use containerd_client::tonic::{transport::Channel, Code, Request, Status};
use containerd_client::types::{v1::Status as TaskStatus, Mount};

use crate::error::{Error, Result};
use crate::image::{self, Blob};

/// The largest image index, manifest or config we read (they are small JSON documents).
const MAX_METADATA_BYTES: usize = 4 << 20;

/// A task's state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

impl TaskState {
    fn from_i32(v: i32) -> TaskState {
        match TaskStatus::try_from(v) {
            Ok(TaskStatus::Created) => TaskState::Created,
            Ok(TaskStatus::Running) => TaskState::Running,
            Ok(TaskStatus::Stopped) => TaskState::Stopped,
            Ok(TaskStatus::Paused) => TaskState::Paused,
            Ok(TaskStatus::Pausing) => TaskState::Pausing,
            _ => TaskState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Unknown => "UNKNOWN",
            TaskState::Created => "CREATED",
            TaskState::Running => "RUNNING",
            TaskState::Stopped => "STOPPED",
            TaskState::Paused => "PAUSED",
            TaskState::Pausing => "PAUSING",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub pid: u32,
    pub state: TaskState,
    pub exit_status: u32,
}

/// A connection to one containerd.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
}

fn request<T>(namespace: &str, msg: T) -> Result<Request<T>> {
    let mut req = Request::new(msg);
    let value = namespace
        .parse()
        .map_err(|_| Error::BadRequest(format!("namespace {namespace:?} is not a valid header")))?;
    req.metadata_mut().insert("containerd-namespace", value);
    Ok(req)
}

/// NotFound as `None`, other errors as errors.
fn optional<T>(r: std::result::Result<T, Status>, op: &str) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(Error::containerd(op, s)),
    }
}

impl Containerd {
    pub async fn connect(socket: &Path) -> Result<Containerd> {
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            Error::Internal(format!(
                "connecting to containerd at {}: {e}",
                socket.display()
            ))
        })?;
        Ok(Containerd {
            channel,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn namespaces(&self) -> Result<Vec<String>> {
        let mut c = NamespacesClient::new(self.channel.clone());
        let r = c
            .list(Request::new(ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| Error::containerd("namespaces list", s))?;
        Ok(r.into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// The containers of `ns` that carry label `label`.
    pub async fn containers_with_label(&self, ns: &str, label: &str) -> Result<Vec<Container>> {
        let mut c = ContainersClient::new(self.channel.clone());
        let r = c
            .list(request(
                ns,
                ListContainersRequest {
                    filters: vec![format!("labels.\"{label}\"")],
                },
            )?)
            .await
            .map_err(|s| Error::containerd("containers list", s))?;
        Ok(r.into_inner().containers)
    }

    /// Whether namespace `ns` exists (Namespaces.Get answers for any name, so: List).
    pub async fn namespace_exists(&self, ns: &str) -> Result<bool> {
        let mut c = NamespacesClient::new(self.channel.clone());
        let r = c
            .list(Request::new(ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| Error::containerd("namespaces list", s))?;
        Ok(r.into_inner().namespaces.iter().any(|n| n.name == ns))
    }

    pub async fn container(&self, ns: &str, id: &str) -> Result<Option<Container>> {
        let mut c = ContainersClient::new(self.channel.clone());
        let r = c
            .get(request(ns, GetContainerRequest { id: id.into() })?)
            .await;
        Ok(optional(r, "containers get")?.and_then(|r| r.into_inner().container))
    }

    pub async fn create_container(&self, ns: &str, container: Container) -> Result<()> {
        let mut c = ContainersClient::new(self.channel.clone());
        c.create(request(
            ns,
            CreateContainerRequest {
                container: Some(container),
            },
        )?)
        .await
        .map_err(|s| Error::containerd("containers create", s))?;
        Ok(())
    }

    /// Replaces a container's spec (Containers.Update with the mask `spec`).
    pub async fn update_container_spec(
        &self,
        ns: &str,
        id: &str,
        spec: prost_types::Any,
    ) -> Result<()> {
        let mut c = ContainersClient::new(self.channel.clone());
        c.update(request(
            ns,
            UpdateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    spec: Some(spec),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["spec".into()],
                }),
            },
        )?)
        .await
        .map_err(|s| Error::containerd("containers update", s))?;
        Ok(())
    }

    /// Deletes a container; an absent one is fine.
    pub async fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        let mut c = ContainersClient::new(self.channel.clone());
        let r = c
            .delete(request(ns, DeleteContainerRequest { id: id.into() })?)
            .await;
        optional(r, "containers delete").map(|_| ())
    }

    pub async fn task(&self, ns: &str, id: &str) -> Result<Option<TaskInfo>> {
        let mut c = TasksClient::new(self.channel.clone());
        let r = c
            .get(request(
                ns,
                GetRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
            )?)
            .await;
        Ok(optional(r, "tasks get")?
            .and_then(|r| r.into_inner().process)
            .map(|p| TaskInfo {
                pid: p.pid,
                state: TaskState::from_i32(p.status),
                exit_status: p.exit_status,
            }))
    }

    pub async fn create_task(
        &self,
        ns: &str,
        id: &str,
        rootfs: Vec<Mount>,
        stdout: &str,
        stderr: &str,
    ) -> Result<u32> {
        self.create_task_with_options(ns, id, rootfs, stdout, stderr, None)
            .await
    }

    /// Tasks.Create with task options (runc's `Options`: with `criu_image_path`, containerd's
    /// runc shim restores from those images on Start instead of starting the process).
    pub async fn create_task_with_options(
        &self,
        ns: &str,
        id: &str,
        rootfs: Vec<Mount>,
        stdout: &str,
        stderr: &str,
        options: Option<prost_types::Any>,
    ) -> Result<u32> {
        let mut c = TasksClient::new(self.channel.clone());
        let r = c
            .create(request(
                ns,
                CreateTaskRequest {
                    container_id: id.into(),
                    rootfs,
                    stdin: String::new(),
                    stdout: stdout.into(),
                    stderr: stderr.into(),
                    terminal: false,
                    options,
                    ..Default::default()
                },
            )?)
            .await
            .map_err(|s| Error::containerd("tasks create", s))?;
        Ok(r.into_inner().pid)
    }

    pub async fn start_task(&self, ns: &str, id: &str) -> Result<u32> {
        let mut c = TasksClient::new(self.channel.clone());
        let r = c
            .start(request(
                ns,
                StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
            )?)
            .await
            .map_err(|s| Error::containerd("tasks start", s))?;
        Ok(r.into_inner().pid)
    }

    /// Freezes the task (Tasks.Pause).
    pub async fn pause_task(&self, ns: &str, id: &str) -> Result<()> {
        let mut c = TasksClient::new(self.channel.clone());
        c.pause(request(
            ns,
            PauseTaskRequest {
                container_id: id.into(),
            },
        )?)
        .await
        .map_err(|s| Error::containerd("tasks pause", s))?;
        Ok(())
    }

    /// Thaws a paused task (Tasks.Resume).
    pub async fn resume_task(&self, ns: &str, id: &str) -> Result<()> {
        let mut c = TasksClient::new(self.channel.clone());
        c.resume(request(
            ns,
            ResumeTaskRequest {
                container_id: id.into(),
            },
        )?)
        .await
        .map_err(|s| Error::containerd("tasks resume", s))?;
        Ok(())
    }

    /// Tasks.Checkpoint with runtime-specific `options` (runc's `CheckpointOptions`: with an
    /// `image_path`, the images stay there instead of going into the content store).
    pub async fn checkpoint_task(
        &self,
        ns: &str,
        id: &str,
        options: prost_types::Any,
    ) -> Result<()> {
        let mut c = TasksClient::new(self.channel.clone());
        c.checkpoint(request(
            ns,
            CheckpointTaskRequest {
                container_id: id.into(),
                parent_checkpoint: String::new(),
                options: Some(options),
            },
        )?)
        .await
        .map_err(|s| Error::containerd("tasks checkpoint", s))?;
        Ok(())
    }

    /// Signals the task's init (or all its processes); an absent task is fine.
    pub async fn kill_task(&self, ns: &str, id: &str, signal: u32, all: bool) -> Result<()> {
        let mut c = TasksClient::new(self.channel.clone());
        let r = c
            .kill(request(
                ns,
                KillRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
            )?)
            .await;
        optional(r, "tasks kill").map(|_| ())
    }

    /// Waits for the task's init to exit: `Some(exit status)`, `None` if it did not within
    /// `timeout` or there is no task.
    pub async fn wait_task(&self, ns: &str, id: &str, timeout: Duration) -> Result<Option<u32>> {
        let mut c = TasksClient::new(self.channel.clone());
        let req = request(
            ns,
            WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            },
        )?;
        match tokio::time::timeout(timeout, c.wait(req)).await {
            Err(_) => Ok(None),
            Ok(r) => Ok(optional(r, "tasks wait")?.map(|r| r.into_inner().exit_status)),
        }
    }

    /// Deletes a stopped task; an absent one is fine.
    pub async fn delete_task(&self, ns: &str, id: &str) -> Result<()> {
        let mut c = TasksClient::new(self.channel.clone());
        let r = c
            .delete(request(
                ns,
                DeleteTaskRequest {
                    container_id: id.into(),
                },
            )?)
            .await;
        optional(r, "tasks delete").map(|_| ())
    }

    pub async fn image_target(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<containerd_client::types::Descriptor>> {
        let mut c = ImagesClient::new(self.channel.clone());
        let r = c
            .get(request(ns, GetImageRequest { name: name.into() })?)
            .await;
        Ok(optional(r, "images get")?
            .and_then(|r| r.into_inner().image)
            .and_then(|i| i.target))
    }

    /// Reads a (small) blob from the content store.
    pub async fn read_content(&self, ns: &str, digest: &str) -> Result<Vec<u8>> {
        let mut c = ContentClient::new(self.channel.clone());
        let mut stream = c
            .read(request(
                ns,
                ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
            )?)
            .await
            .map_err(|s| Error::containerd(format!("content read {digest}"), s))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| Error::containerd(format!("content read {digest}"), s))?
        {
            data.extend_from_slice(&chunk.data);
            if data.len() > MAX_METADATA_BYTES {
                return Err(Error::Internal(format!(
                    "content {digest} is larger than {MAX_METADATA_BYTES} bytes: not image metadata"
                )));
            }
        }
        Ok(data)
    }

    /// The chain id of the image's rootfs for this machine's platform: the name of the
    /// snapshot that unpacking the image committed, the parent of a container's snapshot.
    /// `Ok(None)` if the image is not present.
    pub async fn image_chain_id(&self, ns: &str, name: &str) -> Result<Option<String>> {
        let Some(target) = self.image_target(ns, name).await? else {
            return Ok(None);
        };
        let mut media_type = target.media_type;
        let mut digest = target.digest;
        // index -> manifest -> config; an index of indexes is followed a few levels at most.
        for _ in 0..4 {
            let data = self.read_content(ns, &digest).await?;
            match image::parse_blob(&media_type, &data)? {
                Blob::Index(ms) => {
                    let arch = image::host_architecture();
                    let m = image::select_manifest(&ms, arch).ok_or_else(|| {
                        Error::Precondition(format!(
                            "image {name} has no manifest for linux/{arch}"
                        ))
                    })?;
                    media_type = m.media_type.clone();
                    digest = m.digest.clone();
                }
                Blob::Manifest { config } => {
                    let cfg = self.read_content(ns, &config.digest).await?;
                    let ids = image::diff_ids(&cfg)?;
                    return image::chain_id(&ids)
                        .map(Some)
                        .ok_or_else(|| Error::Precondition(format!("image {name} has no layers")));
                }
            }
        }
        Err(Error::Internal(format!(
            "image {name}: indexes nested too deeply"
        )))
    }

    pub async fn snapshot_exists(&self, ns: &str, snapshotter: &str, key: &str) -> Result<bool> {
        let mut c = SnapshotsClient::new(self.channel.clone());
        let r = c
            .stat(request(
                ns,
                StatSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
            )?)
            .await;
        Ok(optional(r, "snapshots stat")?.is_some())
    }

    /// Prepares an active snapshot `key` on `parent` and returns its mounts.
    pub async fn prepare_snapshot(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let mut c = SnapshotsClient::new(self.channel.clone());
        let r = c
            .prepare(request(
                ns,
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                    parent: parent.into(),
                    labels,
                },
            )?)
            .await
            .map_err(|s| Error::containerd("snapshots prepare", s))?;
        Ok(r.into_inner().mounts)
    }

    pub async fn snapshot_mounts(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<Mount>> {
        let mut c = SnapshotsClient::new(self.channel.clone());
        let r = c
            .mounts(request(
                ns,
                MountsRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
            )?)
            .await
            .map_err(|s| Error::containerd("snapshots mounts", s))?;
        Ok(r.into_inner().mounts)
    }

    /// Removes a snapshot; an absent one is fine.
    pub async fn remove_snapshot(&self, ns: &str, snapshotter: &str, key: &str) -> Result<()> {
        let mut c = SnapshotsClient::new(self.channel.clone());
        let r = c
            .remove(request(
                ns,
                RemoveSnapshotRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                },
            )?)
            .await;
        optional(r, "snapshots remove").map(|_| ())
    }
}

/// The parts of a source container that the destination recreates it from.
pub fn runtime_of(c: &Container) -> &str {
    c.runtime.as_ref().map(|r| r.name.as_str()).unwrap_or("")
}

/// A container as the destination creates it.
#[allow(clippy::too_many_arguments)]
pub fn new_container(
    id: &str,
    image: &str,
    runtime: &str,
    runtime_options: Option<prost_types::Any>,
    spec_type_url: &str,
    spec: Vec<u8>,
    snapshotter: &str,
    labels: HashMap<String, String>,
) -> Container {
    Container {
        id: id.into(),
        labels,
        image: image.into(),
        runtime: Some(Runtime {
            name: runtime.into(),
            options: runtime_options,
        }),
        spec: Some(prost_types::Any {
            type_url: spec_type_url.into(),
            value: spec,
        }),
        snapshotter: snapshotter.into(),
        snapshot_key: id.into(),
        ..Default::default()
    }
}

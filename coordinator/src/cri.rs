//! The CRI runtime and image services (`runtime.v1`) of this system's containerd, over the
//! same socket. On the source, a migrating CRI container's pod and container configs are read
//! through it, and once it migrated away it is removed through it (deleting it through
//! containerd's own API would leave the CRI plugin with a stale record: ListContainers would
//! still show it until containerd restarts), with its pod if that held nothing else. On the
//! destination, the CRI adapter ([`crate::dest_cri`]) creates the pod and container with it.

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// One CRI call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn cri_error(op: &str, s: Status) -> Error {
    Error::Containerd {
        op: format!("CRI {op}"),
        code: s.code(),
        message: s.message().to_string(),
    }
}

async fn timed<T>(
    op: &str,
    f: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
) -> Result<std::result::Result<T, Status>> {
    timed_for(op, CALL_TIMEOUT, f).await
}

async fn timed_for<T>(
    op: &str,
    limit: Duration,
    f: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
) -> Result<std::result::Result<T, Status>> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r.map(tonic::Response::into_inner)),
        Err(_) => Err(Error::Timeout(format!(
            "CRI {op} did not answer within {}s",
            limit.as_secs()
        ))),
    }
}

/// The `config` containerd keeps in a verbose status's `info["info"]` (Go JSON).
fn config_in_info<T: serde::de::DeserializeOwned>(
    what: &str,
    info: &std::collections::HashMap<String, String>,
) -> Result<T> {
    let raw = info.get("info").ok_or_else(|| {
        Error::Internal(format!(
            "CRI {what}: no verbose info (this CRI does not report the original config)"
        ))
    })?;
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| Error::Internal(format!("CRI {what}: verbose info is not JSON: {e}")))?;
    let config = v
        .get("config")
        .ok_or_else(|| Error::Internal(format!("CRI {what}: the verbose info has no config")))?;
    crate::go_json::from_value(config)
        .map_err(|e| Error::Internal(format!("CRI {what}: reading its config: {e}")))
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            Error::Internal(format!("connecting to CRI at {}: {e}", socket.display()))
        })?;
        Ok(Cri {
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Whether this containerd serves CRI (its CRI plugin may be disabled).
    pub async fn available(&mut self) -> bool {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        matches!(
            timed_for("Version", Duration::from_secs(5), self.client.version(req)).await,
            Ok(Ok(_))
        )
    }

    /// The config a pod sandbox was created with.
    pub async fn pod_config(&mut self, pod_id: &str) -> Result<cri::PodSandboxConfig> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let r = timed("PodSandboxStatus", self.client.pod_sandbox_status(req))
            .await?
            .map_err(|s| cri_error("PodSandboxStatus", s))?;
        config_in_info(&format!("PodSandboxStatus {pod_id}"), &r.info)
    }

    /// The config a container was created with.
    pub async fn container_config(&mut self, id: &str) -> Result<cri::ContainerConfig> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let r = timed("ContainerStatus", self.client.container_status(req))
            .await?
            .map_err(|s| cri_error("ContainerStatus", s))?;
        config_in_info(&format!("ContainerStatus {id}"), &r.info)
    }

    /// Whether the image service has the image.
    pub async fn image_present(&mut self, image: &cri::ImageSpec) -> Result<bool> {
        let req = cri::ImageStatusRequest {
            image: Some(image.clone()),
            verbose: false,
        };
        match timed("ImageStatus", self.images.image_status(req)).await? {
            Ok(r) => Ok(r.image.is_some()),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(cri_error("ImageStatus", s)),
        }
    }

    /// RunPodSandbox with `handler`; the pod sandbox id.
    pub async fn run_pod(
        &mut self,
        config: cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        };
        // Pulls nothing (the pause image is local) but runs CNI.
        timed_for(
            "RunPodSandbox",
            Duration::from_secs(120),
            self.client.run_pod_sandbox(req),
        )
        .await?
        .map(|r| r.pod_sandbox_id)
        .map_err(|s| cri_error("RunPodSandbox", s))
    }

    /// CreateContainer in pod `pod_id`; the container id.
    pub async fn create_container(
        &mut self,
        pod_id: &str,
        config: cri::ContainerConfig,
        pod_config: cri::PodSandboxConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        };
        timed("CreateContainer", self.client.create_container(req))
            .await?
            .map(|r| r.container_id)
            .map_err(|s| cri_error("CreateContainer", s))
    }

    /// StartContainer, waiting up to `limit` (a restore waits for the images first).
    pub async fn start_container(&mut self, id: &str, limit: Duration) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        timed_for("StartContainer", limit, self.client.start_container(req))
            .await?
            .map(drop)
            .map_err(|s| cri_error("StartContainer", s))
    }

    /// The ids of the pod's containers, whatever their state.
    pub async fn pod_containers(&mut self, pod_id: &str) -> Result<Vec<String>> {
        let req = cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod_id.into(),
                ..Default::default()
            }),
        };
        timed("ListContainers", self.client.list_containers(req))
            .await?
            .map(|r| r.containers.into_iter().map(|c| c.id).collect())
            .map_err(|s| cri_error("ListContainers", s))
    }

    /// StopPodSandbox and RemovePodSandbox (which removes the pod's containers too).
    /// `Ok(false)`: CRI does not know the pod.
    pub async fn remove_pod(&mut self, pod_id: &str) -> Result<bool> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        match timed("StopPodSandbox", self.client.stop_pod_sandbox(req)).await? {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => return Ok(false),
            Err(s) => return Err(cri_error("StopPodSandbox", s)),
        }
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        match timed("RemovePodSandbox", self.client.remove_pod_sandbox(req)).await? {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(cri_error("RemovePodSandbox", s)),
        }
    }

    /// Removes the pod if it has no container left. `Ok(true)`: removed.
    pub async fn remove_pod_if_empty(&mut self, pod_id: &str) -> Result<bool> {
        if !self.pod_containers(pod_id).await?.is_empty() {
            return Ok(false);
        }
        self.remove_pod(pod_id).await
    }

    /// The container's CRI state, `None` if CRI does not know it.
    pub async fn container_state(&mut self, id: &str) -> Result<Option<cri::ContainerState>> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        match timed("ContainerStatus", self.client.container_status(req)).await? {
            Ok(r) => Ok(Some(
                r.status
                    .and_then(|s| cri::ContainerState::try_from(s.state).ok())
                    .unwrap_or(cri::ContainerState::ContainerUnknown),
            )),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(cri_error("ContainerStatus", s)),
        }
    }

    /// StopContainer (a no-op for an exited container; CRI then has handled its exit).
    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        timed("StopContainer", self.client.stop_container(req))
            .await?
            .map(drop)
            .map_err(|s| cri_error("StopContainer", s))
    }

    /// RemoveContainer: CRI deletes the containerd container, its snapshot and its own files
    /// and forgets it.
    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        timed("RemoveContainer", self.client.remove_container(req))
            .await?
            .map(drop)
            .map_err(|s| cri_error("RemoveContainer", s))
    }

    /// Stops (CRI has seen the task end) and removes a container whose task has exited.
    /// `Ok(false)`: CRI does not know the container.
    pub async fn stop_and_remove(&mut self, id: &str) -> Result<bool> {
        if self.container_state(id).await?.is_none() {
            return Ok(false);
        }
        // CRI refuses to remove a container it still thinks is running: its exit may be a
        // moment behind the stop. The stop itself may meet the task's shim connection closing
        // as the task ends ("ttrpc: closed"): tried again too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let removed = match self.stop_container(id, 0).await {
                Ok(()) => self.remove_container(id).await,
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) => return Ok(true),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    log::debug!("CRI StopContainer/RemoveContainer {id}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

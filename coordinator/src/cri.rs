//! The CRI runtime service (`runtime.v1.RuntimeService`) of this system's containerd, over the
//! same socket. A CRI container that migrated away is removed through it: deleting it through
//! containerd's own API would leave the CRI plugin with a stale record (ListContainers would
//! still show it until containerd restarts).

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// One CRI call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Cri {
    client: RuntimeServiceClient<Channel>,
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
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => Ok(r.map(tonic::Response::into_inner)),
        Err(_) => Err(Error::Timeout(format!(
            "CRI {op} did not answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            Error::Internal(format!("connecting to CRI at {}: {e}", socket.display()))
        })?;
        Ok(Cri {
            client: RuntimeServiceClient::new(channel),
        })
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
        self.stop_container(id, 0).await?;
        // CRI refuses to remove a container it still thinks is running: its exit may be a
        // moment behind the stop.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.remove_container(id).await {
                Ok(()) => return Ok(true),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    log::debug!("CRI RemoveContainer {id}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

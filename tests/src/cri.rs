//! A blocking CRI (runtime.v1) client over containerd's unix socket, with helpers for the pod
//! lifecycle the tests need.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub use k8s_cri::v1::{ContainerState, LinuxContainerResources, PodSandboxConfig};

/// A blocking CRI client: every call runs on a private current-thread tokio runtime.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

pub type CriResult<T> = Result<T, String>;

fn status_msg(what: &str, s: tonic::Status) -> String {
    format!(
        "CRI {what} failed: code={:?} message={}",
        s.code(),
        s.message()
    )
}

/// Runs one CRI call to completion; the error names the call.
fn call<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> CriResult<T> {
    rt.block_on(fut)
        .map(tonic::Response::into_inner)
        .map_err(|s| status_msg(what, s))
}

/// A created pod: its id and the config that created it (needed again for CreateContainer).
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Cri {
    pub fn connect(socket: &Path) -> CriResult<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let channel = rt
            .block_on(containerd_client::connect(socket))
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
        })
    }

    pub fn version(&mut self) -> CriResult<cri::VersionResponse> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        call(&self.rt, "Version", self.runtime.version(req))
    }

    /// Runtime conditions (RuntimeReady, NetworkReady) as name -> (status, message).
    pub fn conditions(&mut self) -> CriResult<HashMap<String, (bool, String)>> {
        let req = cri::StatusRequest { verbose: false };
        let resp = call(&self.rt, "Status", self.runtime.status(req))?;
        Ok(resp
            .status
            .map(|s| {
                s.conditions
                    .into_iter()
                    .map(|c| (c.r#type, (c.status, c.message)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One entry of the verbose Status info (`crictl info`), parsed: e.g. "config", the CRI
    /// plugin's effective config.
    pub fn info(&mut self, key: &str) -> CriResult<serde_json::Value> {
        let req = cri::StatusRequest { verbose: true };
        let resp = call(&self.rt, "Status", self.runtime.status(req))?;
        let raw = resp
            .info
            .get(key)
            .ok_or_else(|| format!("no {key:?} in the Status info: {:?}", resp.info.keys()))?;
        serde_json::from_str(raw).map_err(|e| format!("Status info {key:?} is not JSON: {e}"))
    }

    /// Waits until CRI reports RuntimeReady and NetworkReady (the CNI config is loaded).
    pub fn wait_ready(&mut self, timeout: Duration) -> CriResult<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = match self.conditions() {
                Ok(c) => {
                    let ok = |k: &str| c.get(k).map(|v| v.0).unwrap_or(false);
                    if ok("RuntimeReady") && ok("NetworkReady") {
                        return Ok(());
                    }
                    format!("{c:?}")
                }
                Err(e) => e,
            };
            if std::time::Instant::now() > deadline {
                return Err(format!("CRI not ready after {timeout:?}: {last}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the image service knows `image`.
    pub fn image_present(&mut self, image: &str) -> CriResult<bool> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let resp = call(&self.rt, "ImageStatus", self.images.image_status(req))?;
        Ok(resp.image.is_some())
    }

    /// A pod config with its cgroups under `cgroup_parent` and logs in `log_dir`.
    pub fn pod_config(
        name: &str,
        uid: &str,
        cgroup_parent: &str,
        log_dir: &Path,
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "ums-test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn run_pod(&mut self, config: PodSandboxConfig, handler: &str) -> CriResult<Pod> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let id = call(&self.rt, "RunPodSandbox", self.runtime.run_pod_sandbox(req))?.pod_sandbox_id;
        Ok(Pod { id, config })
    }

    /// Creates a container of `image` running `command` in the pod (log at `<name>.log` in the pod's log dir).
    pub fn create_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> CriResult<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        call(
            &self.rt,
            "CreateContainer",
            self.runtime.create_container(req),
        )
        .map(|r| r.container_id)
    }

    pub fn start_container(&mut self, id: &str) -> CriResult<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        call(
            &self.rt,
            "StartContainer",
            self.runtime.start_container(req),
        )
        .map(drop)
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> CriResult<(i32, String, String)> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        let r = call(&self.rt, "ExecSync", self.runtime.exec_sync(req))?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// Container state and the pid containerd got from the runtime (verbose info), if any.
    pub fn container_status(
        &mut self,
        id: &str,
    ) -> CriResult<(ContainerState, Option<i32>, cri::ContainerStatus)> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let r = call(
            &self.rt,
            "ContainerStatus",
            self.runtime.container_status(req),
        )?;
        let status = r.status.ok_or("ContainerStatus without status")?;
        let state =
            ContainerState::try_from(status.state).unwrap_or(ContainerState::ContainerUnknown);
        Ok((state, info_pid(&r.info), status))
    }

    /// The pod's IP address (from its CNI network).
    pub fn pod_ip(&mut self, pod_id: &str) -> CriResult<String> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        };
        let r = call(
            &self.rt,
            "PodSandboxStatus",
            self.runtime.pod_sandbox_status(req),
        )?;
        Ok(r.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// The pod sandbox's pid (the pause container's task pid) from verbose info.
    pub fn pod_pid(&mut self, pod_id: &str) -> CriResult<Option<i32>> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: true,
        };
        let r = call(
            &self.rt,
            "PodSandboxStatus",
            self.runtime.pod_sandbox_status(req),
        )?;
        Ok(info_pid(&r.info))
    }

    pub fn update_resources(&mut self, id: &str, res: LinuxContainerResources) -> CriResult<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(res),
            ..Default::default()
        };
        call(
            &self.rt,
            "UpdateContainerResources",
            self.runtime.update_container_resources(req),
        )
        .map(drop)
    }

    pub fn stop_container(&mut self, id: &str, timeout_s: i64) -> CriResult<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        call(&self.rt, "StopContainer", self.runtime.stop_container(req)).map(drop)
    }

    pub fn remove_container(&mut self, id: &str) -> CriResult<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        call(
            &self.rt,
            "RemoveContainer",
            self.runtime.remove_container(req),
        )
        .map(drop)
    }

    pub fn stop_pod(&mut self, id: &str) -> CriResult<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        call(
            &self.rt,
            "StopPodSandbox",
            self.runtime.stop_pod_sandbox(req),
        )
        .map(drop)
    }

    pub fn remove_pod(&mut self, id: &str) -> CriResult<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        call(
            &self.rt,
            "RemovePodSandbox",
            self.runtime.remove_pod_sandbox(req),
        )
        .map(drop)
    }

    /// Ids of all pods and containers CRI knows.
    pub fn list(&mut self) -> CriResult<(Vec<String>, Vec<String>)> {
        let req = cri::ListPodSandboxRequest { filter: None };
        let pods = call(
            &self.rt,
            "ListPodSandbox",
            self.runtime.list_pod_sandbox(req),
        )?
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
        let req = cri::ListContainersRequest { filter: None };
        let ctrs = call(
            &self.rt,
            "ListContainers",
            self.runtime.list_containers(req),
        )?
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
        Ok((pods, ctrs))
    }
}

fn info_pid(info: &HashMap<String, String>) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")
        .and_then(|p| p.as_i64())
        .map(|p| p as i32)
        .filter(|p| *p > 0)
}

/// containerd's own Tasks API (what ctr lacks: Update, Wait).
pub mod tasks_api {
    use containerd_client::services::v1::tasks_client::TasksClient;
    use containerd_client::services::v1::{UpdateTaskRequest, WaitRequest};
    use std::path::Path;
    use std::time::Duration;

    fn request<T>(namespace: &str, msg: T) -> Result<tonic::Request<T>, String> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            "containerd-namespace",
            namespace.parse().map_err(|_| "bad namespace")?,
        );
        Ok(req)
    }

    /// Tasks.Wait: the exit status of the task's init process (`exec_id` empty) or of an exec.
    pub fn wait(
        socket: &Path,
        namespace: &str,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<u32, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let channel = containerd_client::connect(socket)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut client = TasksClient::new(channel);
            let req = request(
                namespace,
                WaitRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
            )?;
            match tokio::time::timeout(timeout, client.wait(req)).await {
                Err(_) => Err(format!(
                    "Tasks.Wait({id}) did not return within {timeout:?}"
                )),
                Ok(Err(s)) => Err(format!(
                    "Tasks.Wait failed: code={:?} message={}",
                    s.code(),
                    s.message()
                )),
                Ok(Ok(r)) => Ok(r.into_inner().exit_status),
            }
        })
    }

    /// The typeurl containerd registers for runtime-spec LinuxResources (a JSON payload).
    pub const LINUX_RESOURCES_URL: &str =
        "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

    /// Tasks.Update with OCI `LinuxResources` given as JSON (e.g. `{"memory":{"limit":67108864}}`).
    pub fn update_task(
        socket: &Path,
        namespace: &str,
        id: &str,
        resources: &serde_json::Value,
    ) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let channel = containerd_client::connect(socket)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut client = TasksClient::new(channel);
            let req = UpdateTaskRequest {
                container_id: id.into(),
                resources: Some(prost_types::Any {
                    type_url: LINUX_RESOURCES_URL.into(),
                    value: serde_json::to_vec(resources).map_err(|e| e.to_string())?,
                }),
                ..Default::default()
            };
            let req = request(namespace, req)?;
            client.update(req).await.map(|_| ()).map_err(|s| {
                format!(
                    "Tasks.Update failed: code={:?} message={}",
                    s.code(),
                    s.message()
                )
            })
        })
    }
}

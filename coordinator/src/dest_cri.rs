//! The CRI adapter of the destination (`Adapter::Cri`): the migrated container is created as
//! kubelet would create it, through this system's CRI, so that this system's orchestrator sees
//! an ordinary pod:
//!
//! 1. RunPodSandbox with runtime handler `ums` and the source pod's config (metadata, labels,
//!    annotations, hostname, DNS, ports, namespace options; namespace/name as the user chose,
//!    the log directory and a cgroup parent of this system);
//! 2. CreateContainer with the source container's config plus the restore marker annotation
//!    `io.ums.restore=<migration>` (CRI passes it into the OCI spec when the runtime lists it in
//!    `container_annotations`) and the label `io.ums.migration=<migration>`;
//! 3. StartContainer, left running: CRI creates the task (the shim sees the marker: an outer
//!    and no service) and starts it, and the shim's Start waits for the images; meanwhile the
//!    shim's Prepare gives the stream address. The restore is that StartContainer returning.
//!
//! Removal (abort, failure): the container, then the pod, through CRI; nothing is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use log::{info, warn};
use tokio::task::JoinHandle;

use crate::adapter::Adapter;
use crate::api::{validate_pod_name, CriSource, IncomingRequest, IncomingResponse, PodLocation};
use crate::containerd::Containerd;
use crate::coordinator::Coordinator;
use crate::cri::Cri;
use crate::dest::{wait_running, DestEntry, DestPhase, SHIM_ADDRESS_WAIT};
use crate::error::{Error, Result};
use crate::refs::ContainerRef;
use crate::shim::Shim;
use crate::spec::{restore_marker, MIGRATION_LABEL, RESTORE_ANNOTATION};

/// The CRI runtime handler of the ums shim.
pub const UMS_HANDLER: &str = "ums";
/// CRI containers live in containerd's namespace `k8s.io`.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long a StartContainer whose task was never prepared may take to fail after an abort.
const START_SETTLE: Duration = Duration::from_secs(30);

/// A pod and container created through CRI for an incoming migration.
pub(crate) struct CriPlacement {
    pub(crate) pod: PodLocation,
    /// The pod's log directory, made by this coordinator.
    log_dir: Option<PathBuf>,
    /// StartContainer, in flight from Prepare until the restore.
    start: tokio::sync::Mutex<Option<JoinHandle<Result<()>>>>,
}

/// The destination pod's config: the source's, with the pod's namespace and name as the user
/// chose, this system's log directory, a cgroup parent under this system's parent when the
/// source's was under the source's, and the migration's label.
pub fn destination_pod_config(
    src: &CriSource,
    migration_id: &str,
    log_dir: Option<&Path>,
    source_parent: &str,
    dest_parent: &str,
) -> Result<cri::PodSandboxConfig> {
    let mut pod = src.pod.clone();
    let meta = pod.metadata.get_or_insert_with(Default::default);
    if let Some(ns) = &src.pod_namespace {
        meta.namespace = ns.clone();
    }
    if let Some(n) = &src.pod_name {
        meta.name = n.clone();
    }
    validate_pod_name("the pod's namespace", &meta.namespace)?;
    validate_pod_name("the pod's name", &meta.name)?;
    pod.log_directory = log_dir
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(linux) = pod.linux.as_mut() {
        if let Some(rest) = (!source_parent.is_empty())
            .then(|| linux.cgroup_parent.strip_prefix(source_parent))
            .flatten()
            .filter(|r| r.is_empty() || r.starts_with('/'))
        {
            linux.cgroup_parent = format!("{dest_parent}{rest}");
        }
    }
    pod.labels
        .insert(MIGRATION_LABEL.into(), migration_id.into());
    Ok(pod)
}

/// The destination container's config: the source's with the restore marker and the
/// migration's label.
pub fn destination_container_config(src: &CriSource, migration_id: &str) -> cri::ContainerConfig {
    let mut c = src.container.clone();
    c.annotations
        .insert(RESTORE_ANNOTATION.into(), migration_id.into());
    c.labels.insert(MIGRATION_LABEL.into(), migration_id.into());
    c
}

impl Coordinator {
    /// Step 1-3 above; the entry and the answer for the source.
    pub(crate) async fn prepare_cri(
        &self,
        req: &IncomingRequest,
    ) -> Result<(Arc<DestEntry>, IncomingResponse)> {
        let me = self.name();
        let id = &req.migration_id;
        let src = req.cri.as_ref().ok_or_else(|| {
            Error::BadRequest("the cri interface needs the source's CRI configs".into())
        })?;
        let mut cri = Cri::connect(&self.cfg.containerd_socket).await?;
        let mut config = destination_container_config(src, id);
        let image = config.image.get_or_insert_with(Default::default);
        if image.image.is_empty() {
            image.image = req.image.clone();
        }
        if !cri.image_present(image).await? {
            return Err(Error::Precondition(format!(
                "image {} not present on system {me} (CRI)",
                image.image
            )));
        }
        let missing: Vec<String> = config
            .mounts
            .iter()
            .filter(|m| !Path::new(&m.host_path).exists())
            .map(|m| format!("{} ({})", m.host_path, m.container_path))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Precondition(format!(
                "host path(s) of the container's mounts missing on system {me}: {}",
                missing.join(", ")
            )));
        }
        let log_dir = match src.pod.log_directory.is_empty() {
            true => None,
            false => {
                let meta = src.pod.metadata.clone().unwrap_or_default();
                let ns = src.pod_namespace.as_ref().unwrap_or(&meta.namespace);
                let name = src.pod_name.as_ref().unwrap_or(&meta.name);
                validate_pod_name("the pod's namespace", ns)?;
                validate_pod_name("the pod's name", name)?;
                Some(
                    self.cfg
                        .state_dir
                        .join("pods")
                        .join(format!("{ns}_{name}_{id}")),
                )
            }
        };
        let pod_config = destination_pod_config(
            src,
            id,
            log_dir.as_deref(),
            &req.source_cgroup_parent,
            &self.cfg.cgroup_parent,
        )?;
        let meta = pod_config.metadata.clone().unwrap_or_default();
        if let Some(d) = &log_dir {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let pod_id = match cri.run_pod(pod_config.clone(), UMS_HANDLER).await {
            Ok(p) => p,
            Err(e) => {
                remove_log_dir(log_dir.as_deref()).await;
                return Err(e);
            }
        };
        let pod = PodLocation {
            sandbox_id: pod_id.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
        };
        info!(
            "migration {id}: pod {}/{} created through CRI (sandbox {pod_id}, handler {UMS_HANDLER})",
            pod.namespace, pod.name
        );
        let placement = CriPlacement {
            pod,
            log_dir,
            start: tokio::sync::Mutex::new(None),
        };
        let cid = match cri.create_container(&pod_id, config, pod_config).await {
            Ok(c) => c,
            Err(e) => {
                self.remove_cri(id, None, &placement).await;
                return Err(e);
            }
        };
        let r = ContainerRef {
            namespace: CRI_NAMESPACE.into(),
            id: cid.clone(),
        };
        info!("migration {id}: container {r} created through CRI in sandbox {pod_id}");
        let mut shim = None;
        let made = self
            .start_and_prepare(req, &mut cri, &r, &placement, &mut shim)
            .await;
        match made {
            Ok((pid, address)) => {
                let resp = IncomingResponse {
                    migration_id: id.clone(),
                    address,
                    destination: me.to_string(),
                    pid,
                    interface: crate::api::DestInterface::Cri,
                    container: Some(r.clone()),
                    pod: Some(placement.pod.clone()),
                };
                let shim = shim.ok_or_else(|| Error::Internal("prepared without a shim".into()))?;
                Ok((
                    Arc::new(DestEntry {
                        container: r,
                        adapter: Adapter::Cri(placement),
                        receiver: crate::engine::DestReceiver::Shim(shim),
                        state: tokio::sync::Mutex::new(DestPhase::Prepared),
                        post_copy: req.post_copy,
                    }),
                    resp,
                ))
            }
            Err(e) => {
                warn!("migration {id}: preparing {r} failed: {e}; removing the pod and container");
                if let Some(s) = &shim {
                    if let Err(e) = s.abort(id).await {
                        warn!("migration {id}: shim Abort: {e}");
                    }
                }
                self.remove_cri(id, Some(&r), &placement).await;
                Err(e)
            }
        }
    }

    /// Checks the marker reached the spec, starts the container in the background and, once
    /// its task exists, has its shim listen for the images. `(outer pid, stream address)`.
    async fn start_and_prepare(
        &self,
        req: &IncomingRequest,
        cri: &mut Cri,
        r: &ContainerRef,
        placement: &CriPlacement,
        shim_out: &mut Option<Shim>,
    ) -> Result<(u32, String)> {
        let id = &req.migration_id;
        let cd = self.containerd().await?;
        let c = cd
            .container(&r.namespace, &r.id)
            .await?
            .ok_or_else(|| Error::Internal(format!("CRI created {r} but containerd has none")))?;
        let spec: serde_json::Value = c
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .unwrap_or_default();
        if restore_marker(&spec) != Some(id.as_str()) {
            return Err(Error::Precondition(format!(
                "system {}'s CRI did not put the annotation {RESTORE_ANNOTATION} into the \
                 container's spec: its runtime {UMS_HANDLER} needs container_annotations = \
                 [\"io.ums.*\"] in containerd's CRI config",
                self.name()
            )));
        }
        let mut starter = cri.clone();
        let cid = r.id.clone();
        // The restore may wait for the whole dump; the watchdog bounds an abandoned one.
        let limit = self.cfg.incoming_timeout + Duration::from_secs(300);
        let mut start = tokio::spawn(async move { starter.start_container(&cid, limit).await });
        let shim = tokio::select! {
            s = Shim::connect(&self.cfg.containerd_state, r, SHIM_ADDRESS_WAIT) => s,
            done = &mut start => Err(match done {
                Ok(Ok(())) => Error::Internal(format!(
                    "StartContainer of {r} returned before the images were sent (did the \
                     shim see the restore marker?)"
                )),
                Ok(Err(e)) => e,
                Err(e) => Error::Internal(format!("StartContainer of {r}: {e}")),
            }),
        };
        *placement.start.lock().await = Some(start);
        let shim = shim?;
        let address = shim
            .prepare(
                id,
                &self.cfg.stream_listen(),
                &req.token,
                self.cfg.max_stream_bytes,
                &self.cfg.images_dir(),
            )
            .await;
        *shim_out = Some(shim);
        let address = address?;
        let pid = cd
            .task(&r.namespace, &r.id)
            .await?
            .map(|t| t.pid)
            .unwrap_or_default();
        info!("migration {id}: task {r} created by CRI (outer pid {pid}), images expected at {address}");
        Ok((pid, address))
    }

    /// The restore: StartContainer returns once the shim restored the service; CRI must then
    /// see the container RUNNING. The restored task's pid.
    pub(crate) async fn start_cri(
        &self,
        cd: &Containerd,
        r: &ContainerRef,
        p: &CriPlacement,
    ) -> Result<u32> {
        let start = p.start.lock().await.take().ok_or_else(|| {
            Error::Conflict(format!("the StartContainer of {r} was already waited for"))
        })?;
        match start.await {
            Ok(res) => res?,
            Err(e) => return Err(Error::Internal(format!("StartContainer of {r}: {e}"))),
        }
        wait_running(cd, r).await?;
        let state = Cri::connect(cd.socket())
            .await?
            .container_state(&r.id)
            .await?;
        if state != Some(cri::ContainerState::ContainerRunning) {
            return Err(Error::Internal(format!(
                "CRI reports {r} as {state:?} after its restore, not RUNNING"
            )));
        }
        let pid = cd.task(&r.namespace, &r.id).await?.map(|t| t.pid);
        pid.ok_or_else(|| Error::Internal(format!("the task of {r} vanished after its restore")))
    }

    /// Removes what [`Coordinator::prepare_cri`] made: the container (`r`, if created), the
    /// pod and its log directory. The shim must have been told to abort (a StartContainer
    /// waiting for images then fails). Returns what failed.
    pub(crate) async fn remove_cri(
        &self,
        id: &str,
        r: Option<&ContainerRef>,
        p: &CriPlacement,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        let mut note = |what: String| {
            warn!("migration {id}: removing pod {}: {what}", p.pod.sandbox_id);
            failed.push(what);
        };
        if let Some(mut start) = p.start.lock().await.take() {
            match tokio::time::timeout(START_SETTLE, &mut start).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => info!("migration {id}: StartContainer ended: {e}"),
                Ok(Err(e)) => note(format!("StartContainer: {e}")),
                Err(_) => {
                    start.abort();
                    note(format!(
                        "StartContainer did not end within {}s of the abort",
                        START_SETTLE.as_secs()
                    ));
                }
            }
        }
        match Cri::connect(&self.cfg.containerd_socket).await {
            Ok(mut cri) => {
                if let Some(r) = r {
                    if let Err(e) = cri.stop_and_remove(&r.id).await {
                        note(format!("container {r}: {e}"));
                    }
                }
                if let Err(e) = cri.remove_pod(&p.pod.sandbox_id).await {
                    note(format!("pod: {e}"));
                }
            }
            Err(e) => note(format!("CRI: {e}")),
        }
        remove_log_dir(p.log_dir.as_deref()).await;
        failed
    }

    /// At start-up: a CRI container of an earlier run's migration that never started goes
    /// through CRI, with its pod if that holds nothing else. `false`: something failed.
    pub(crate) async fn sweep_cri_container(
        &self,
        mid: &str,
        r: &ContainerRef,
        pod_id: Option<&str>,
    ) -> bool {
        let mut cri = match Cri::connect(&self.cfg.containerd_socket).await {
            Ok(c) => c,
            Err(e) => {
                warn!("migration {mid}: {r}: {e}");
                return false;
            }
        };
        if let Err(e) = cri.stop_and_remove(&r.id).await {
            warn!("migration {mid}: removing {r} through CRI: {e}");
            return false;
        }
        if let Some(pod) = pod_id {
            if let Err(e) = cri.remove_pod_if_empty(pod).await {
                warn!("migration {mid}: removing the pod {pod} of {r}: {e}");
                return false;
            }
        }
        true
    }
}

async fn remove_log_dir(d: Option<&Path>) {
    if let Some(d) = d {
        if let Err(e) = tokio::fs::remove_dir_all(d).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("removing {}: {e}", d.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> CriSource {
        CriSource {
            pod: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u-1".into(),
                    namespace: "shop".into(),
                    attempt: 0,
                }),
                hostname: "web".into(),
                log_directory: "/var/log/pods/shop_web_u-1".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                linux: Some(cri::LinuxPodSandboxConfig {
                    cgroup_parent: "/ums-a/pods".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            container: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "svc".into(),
                    attempt: 0,
                }),
                annotations: [("keep".to_string(), "me".to_string())].into(),
                ..Default::default()
            },
            pod_namespace: None,
            pod_name: None,
        }
    }

    #[test]
    fn pod_config_for_the_destination() {
        let dir = Path::new("/run/b/pods/shop_web_m-1");
        let p = destination_pod_config(&source(), "m-1", Some(dir), "/ums-a", "/ums-b").unwrap();
        assert_eq!(p.log_directory, dir.to_string_lossy());
        assert_eq!(p.linux.as_ref().unwrap().cgroup_parent, "/ums-b/pods");
        assert_eq!(p.labels[MIGRATION_LABEL], "m-1");
        assert_eq!(p.labels["app"], "web");
        assert_eq!(p.hostname, "web");
        // Another parent than the source's: kept (kubelet's /kubepods/... on a real node).
        let p = destination_pod_config(&source(), "m-1", None, "/ums", "/ums-b").unwrap();
        assert_eq!(p.linux.as_ref().unwrap().cgroup_parent, "/ums-a/pods");
        assert_eq!(p.log_directory, "");
        // The user's namespace and name.
        let mut s = source();
        s.pod_namespace = Some("shop-2".into());
        s.pod_name = Some("web-b".into());
        let p = destination_pod_config(&s, "m-1", None, "", "").unwrap();
        let m = p.metadata.unwrap();
        assert_eq!((m.namespace.as_str(), m.name.as_str()), ("shop-2", "web-b"));
        s.pod_name = Some("../x".into());
        assert!(destination_pod_config(&s, "m-1", None, "", "").is_err());
    }

    #[test]
    fn container_config_carries_the_marker() {
        let c = destination_container_config(&source(), "m-9");
        assert_eq!(c.annotations[RESTORE_ANNOTATION], "m-9");
        assert_eq!(c.annotations["keep"], "me");
        assert_eq!(c.labels[MIGRATION_LABEL], "m-9");
        assert_eq!(c.metadata.unwrap().name, "svc");
    }
}

//! Destination adapters: the interface through which the destination system's control plane
//! creates, starts and removes the migrated container.
//!
//! - containerd's containers and tasks API ([`dest`](crate::dest)): the source container is
//!   recreated as a plain containerd container from its OCI spec (a CRI container lands in
//!   namespace `k8s.io`, outside any pod);
//! - CRI ([`dest_cri`](crate::dest_cri)): a pod sandbox with runtime handler `ums` and a
//!   container in it, created as kubelet would from the source pod's and container's CRI
//!   configs; the destination's CRI and whatever watches it see an ordinary pod.
//!
//! Either way the container carries the restore marker and its task's shim receives the images
//! (Prepare) before it is started; only creation, start and removal differ.

use crate::api::{DestInterface, IncomingRequest};
use crate::coordinator::Coordinator;
use crate::cri::Cri;
use crate::dest_cri::CriPlacement;
use crate::error::{Error, Result};

/// How a prepared destination container was made, hence how it is started and removed.
pub(crate) enum Adapter {
    Containerd { snapshotter: String },
    Cri(CriPlacement),
}

impl Adapter {
    pub(crate) fn interface(&self) -> DestInterface {
        match self {
            Adapter::Containerd { .. } => DestInterface::Containerd,
            Adapter::Cri(_) => DestInterface::Cri,
        }
    }
}

/// The interface for an incoming migration: the one the user chose, else CRI when the source
/// sent CRI configs (a CRI container) and this system serves CRI, else containerd.
pub(crate) fn choose(
    chosen: Option<DestInterface>,
    has_cri_source: bool,
    cri_here: bool,
    me: &str,
) -> Result<DestInterface> {
    match chosen {
        Some(DestInterface::Containerd) => Ok(DestInterface::Containerd),
        Some(DestInterface::Cri) if !has_cri_source => Err(Error::Unsupported(
            "the cri interface recreates a pod's container from its pod's and its own CRI \
             configs: the source container is not a CRI container (use the containerd interface)"
                .into(),
        )),
        Some(DestInterface::Cri) if !cri_here => Err(Error::Precondition(format!(
            "system {me}'s containerd serves no CRI: use the containerd interface"
        ))),
        Some(DestInterface::Cri) => Ok(DestInterface::Cri),
        None if has_cri_source && cri_here => Ok(DestInterface::Cri),
        None => Ok(DestInterface::Containerd),
    }
}

impl Coordinator {
    pub(crate) async fn choose_interface(&self, req: &IncomingRequest) -> Result<DestInterface> {
        let wants_cri = req.interface != Some(DestInterface::Containerd) && req.cri.is_some();
        let cri_here = wants_cri
            && match Cri::connect(&self.cfg.containerd_socket).await {
                Ok(mut c) => c.available().await,
                Err(_) => false,
            };
        choose(req.interface, req.cri.is_some(), cri_here, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DestInterface::*;

    #[test]
    fn interface_choice() {
        // Default: CRI for a CRI container when the destination has CRI.
        assert_eq!(choose(None, true, true, "b").unwrap(), Cri);
        assert_eq!(choose(None, true, false, "b").unwrap(), Containerd);
        assert_eq!(choose(None, false, true, "b").unwrap(), Containerd);
        // Forced.
        assert_eq!(
            choose(Some(Containerd), true, true, "b").unwrap(),
            Containerd
        );
        assert_eq!(choose(Some(Cri), true, true, "b").unwrap(), Cri);
        let e = choose(Some(Cri), false, true, "b").unwrap_err();
        assert_eq!(e.http_status(), 422, "{e}");
        let e = choose(Some(Cri), true, false, "b").unwrap_err();
        assert_eq!(e.http_status(), 412, "{e}");
        assert!(e.to_string().contains("system b"), "{e}");
    }
}

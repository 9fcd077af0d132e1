//! The Frontman's part in a migration (paper, III-B), driven by the source coordinator:
//!
//! 1. pre-migration (`Coordinator::endpoint_prepare`): the destination coordinator binds the
//!    service's endpoint there, holding (so that a taken port fails the migration before the
//!    service is frozen);
//! 2. before the freeze (`Coordinator::endpoint_hold`): our endpoint stops handing
//!    connections to the service (held or 503) and waits, bounded, until the open ones ended
//!    and the service holds no connection on the port: CRIU cannot dump established TCP
//!    connections;
//! 3. once the service runs at the destination (`Coordinator::endpoint_commit`): the
//!    destination's endpoint forwards to it, ours forwards to the destination's endpoint until
//!    removed or for its grace period, and the report names the new endpoint;
//!    on a failure instead (`Coordinator::endpoint_abort`): ours forwards to the service here
//!    again and the destination's endpoint is removed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::containerd::Containerd;
use crate::coordinator::Coordinator;
use crate::error::{Error, Result};
use crate::expose::{EndpointOptions, EndpointReport, ExposeRequest, ExposureInfo, MovedTo};
use crate::exposures::Exposure;
use crate::refs::{ContainerRef, PeerUrl};
use crate::sockets;
use crate::source::stream_address;

const PEER_TIMEOUT: Duration = Duration::from_secs(30);
const SOCKET_POLL: Duration = Duration::from_millis(20);

/// A migration's endpoints: ours (if the container is exposed here) and the destination's.
#[derive(Clone)]
pub(crate) struct Handover {
    source: Option<Arc<Exposure>>,
    peer: PeerUrl,
    peer_name: String,
    dest: ExposureInfo,
    /// The destination's endpoint as we reach it.
    endpoint: SocketAddr,
}

/// `addr` with this system's addresses (`here`) replaced by the destination's (`there`).
pub fn map_addr(addr: SocketAddr, here: &[IpAddr], there: IpAddr) -> SocketAddr {
    if here.contains(&addr.ip()) {
        SocketAddr::new(there, addr.port())
    } else {
        addr
    }
}

/// Checks `ums migrate`'s endpoint options before anything is touched.
pub fn check_options(o: Option<&EndpointOptions>) -> Result<()> {
    let Some(o) = o else { return Ok(()) };
    for (what, v) in [
        ("endpoint listen", &o.listen),
        ("endpoint target", &o.target),
    ] {
        if let Some(v) = v {
            v.parse::<SocketAddr>()
                .map_err(|e| Error::BadRequest(format!("{what} {v:?} must be IP:PORT: {e}")))?;
        }
    }
    Ok(())
}

/// The IP of a coordinator URL's host (resolved if it is a name).
async fn peer_ip(to: &PeerUrl) -> Result<IpAddr> {
    let host = to.host().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    tokio::net::lookup_host((host, to.port()))
        .await
        .map_err(|e| Error::io(format!("resolving {host}"), e))?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| Error::BadRequest(format!("{host} has no address")))
}

impl Coordinator {
    /// This system's own addresses, as endpoints and targets name them.
    fn own_ips(&self, exposure: Option<&Exposure>) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = [Some(self.cfg.listen.ip()), self.cfg.advertise_ip]
            .into_iter()
            .flatten()
            .collect();
        if let Some(e) = exposure {
            v.push(e.frontman.local_addr().ip());
        }
        v.retain(|ip| !ip.is_unspecified() && !ip.is_loopback());
        v
    }

    /// Pre-migration: the destination binds the service's endpoint (holding). Nothing to do
    /// for a container without an endpoint here and without endpoint options.
    pub(crate) async fn endpoint_prepare(
        &self,
        id: &str,
        container: &ContainerRef,
        to: &PeerUrl,
        peer_name: &str,
        opts: Option<&EndpointOptions>,
    ) -> Result<()> {
        let source = self.exposures.of_container(container);
        let opts = opts.cloned().unwrap_or_default();
        if source.is_none() && opts.is_empty() {
            return Ok(());
        }
        let there = peer_ip(to).await?;
        let here = self.own_ips(source.as_deref());
        let req = match &source {
            Some(s) => {
                let info = s.info();
                let mapped = |a: &str| -> Result<String> {
                    let a: SocketAddr = a
                        .parse()
                        .map_err(|e| Error::Internal(format!("endpoint address {a}: {e}")))?;
                    Ok(map_addr(a, &here, there).to_string())
                };
                ExposeRequest {
                    container: container.to_string(),
                    listen: opts
                        .listen
                        .clone()
                        .map_or_else(|| mapped(&info.listen), Ok)?,
                    target: opts
                        .target
                        .clone()
                        .map_or_else(|| mapped(&info.target), Ok)?,
                    mode: opts.mode.unwrap_or(info.mode),
                    hold_timeout_secs: info.hold_timeout_secs,
                    drain_timeout_secs: info.drain_timeout_secs,
                    grace_secs: info.grace_secs,
                    retry_after_secs: info.retry_after_secs,
                    held: true,
                }
            }
            None => {
                let (Some(listen), Some(target)) = (&opts.listen, &opts.target) else {
                    return Err(Error::BadRequest(format!(
                        "{container} has no endpoint on system {}: the destination's endpoint \
                         needs both its listen address and the service's address there",
                        self.name()
                    )));
                };
                let mut r = ExposeRequest::new(
                    &container.to_string(),
                    listen,
                    target,
                    opts.mode.unwrap_or_default(),
                );
                r.held = true;
                r
            }
        };
        if let Some(s) = &source {
            s.begin_migration(id)?;
        }
        let dest: ExposureInfo = match self
            .peers
            .post(&to.join("/v1/expose"), &req, PEER_TIMEOUT)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                if let Some(s) = &source {
                    s.resume();
                }
                return Err(e);
            }
        };
        let endpoint: SocketAddr = stream_address(&dest.listen, &there.to_string())
            .parse()
            .map_err(|e| {
                Error::Internal(format!("the destination's endpoint {}: {e}", dest.listen))
            })?;
        info!(
            "migration {id}: frontman: {peer_name} holds the endpoint {endpoint} ({}) for {container} -> {}",
            dest.id, dest.target
        );
        self.exposures.insert_handover(
            id,
            Handover {
                source,
                peer: to.clone(),
                peer_name: peer_name.to_string(),
                dest,
                endpoint,
            },
        );
        Ok(())
    }

    /// Before the freeze: our endpoint holds new connections and the open ones end (cut after
    /// the drain timeout); then the service's own side of them must be gone.
    pub(crate) async fn endpoint_hold(
        &self,
        id: &str,
        cd: &Containerd,
        container: &ContainerRef,
    ) -> Result<()> {
        let Some(src) = self.exposures.handover(id).and_then(|h| h.source) else {
            return Ok(());
        };
        let t0 = Instant::now();
        src.hold();
        let drained = src.frontman.drain(src.drain_timeout).await;
        if drained.cut > 0 {
            warn!(
                "migration {id}: frontman {}: {} connection(s) still open after {}s: cut",
                src.id,
                drained.cut,
                src.drain_timeout.as_secs()
            );
        }
        let port = src.target().port();
        let pid = cd
            .task(&container.namespace, &container.id)
            .await?
            .map(|t| t.pid)
            .ok_or_else(|| Error::Conflict(format!("{container} has no task any more")))?;
        let deadline = Instant::now() + src.drain_timeout.max(Duration::from_secs(1));
        loop {
            let busy = sockets::busy_in_netns_of(pid, port).await?;
            if busy.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Conflict(format!(
                    "{container} still has {} TCP connection(s) on port {port} ({}) after the \
                     endpoint's drain: CRIU cannot checkpoint established connections (clients \
                     that bypass the endpoint {}?)",
                    busy.len(),
                    busy.join(", "),
                    src.frontman.local_addr()
                )));
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
        info!(
            "migration {id}: frontman {}: holding new connections to {container}; {} open \
             connection(s) drained ({} cut) in {} ms",
            src.id,
            drained.open,
            drained.cut,
            t0.elapsed().as_millis()
        );
        Ok(())
    }

    /// A failed migration: our endpoint forwards to the service here again, the destination's
    /// goes. Returns what could not be cleaned up.
    pub(crate) async fn endpoint_abort(&self, id: &str) -> Vec<String> {
        let Some(h) = self.exposures.take_handover(id) else {
            return Vec::new();
        };
        if let Some(s) = &h.source {
            s.resume();
            info!(
                "migration {id}: frontman {}: forwards to {} again",
                s.id,
                s.target()
            );
        }
        let url = h.peer.join(&format!("/v1/expose/{}", h.dest.id));
        match self.peers.delete::<ExposureInfo>(&url, PEER_TIMEOUT).await {
            Ok(_) => Vec::new(),
            Err(e) => {
                warn!("migration {id}: removing the destination's endpoint: {e}");
                vec![format!(
                    "destination endpoint {} not removed: {e}",
                    h.dest.id
                )]
            }
        }
    }

    /// The service runs at the destination: the endpoints follow it.
    pub(crate) async fn endpoint_commit(&self, id: &str) -> Option<EndpointReport> {
        let h = self.exposures.take_handover(id)?;
        let mut warnings = Vec::new();
        let url = h.peer.join(&format!("/v1/expose/{}/resume", h.dest.id));
        let forward_to = match self
            .peers
            .post::<_, ExposureInfo>(&url, &serde_json::json!({}), PEER_TIMEOUT)
            .await
        {
            Ok(_) => h.endpoint,
            Err(e) => {
                // Straight to the service there rather than to an endpoint that holds.
                let w = format!(
                    "the destination's endpoint {} does not forward ({e}); forwarding to the \
                     service's address there, {}",
                    h.endpoint, h.dest.target
                );
                warn!("migration {id}: {w}");
                warnings.push(w);
                h.dest.target.parse().unwrap_or(h.endpoint)
            }
        };
        let mut report = EndpointReport {
            endpoint: h.endpoint.to_string(),
            system: h.peer_name.clone(),
            exposure: h.dest.id.clone(),
            mode: h.dest.mode,
            target: h.dest.target.clone(),
            previous: None,
            previous_exposure: None,
            forwards_for_secs: 0,
            warnings,
        };
        if let Some(s) = &h.source {
            let generation = s.moved(
                MovedTo {
                    system: h.peer_name.clone(),
                    coordinator: h.peer.base().to_string(),
                    endpoint: h.endpoint.to_string(),
                    exposure: h.dest.id.clone(),
                },
                forward_to,
            );
            self.exposures.remove_later(&s.id, generation, s.grace);
            report.previous = Some(s.frontman.local_addr().to_string());
            report.previous_exposure = Some(s.id.clone());
            report.forwards_for_secs = s.grace.as_secs();
            info!(
                "migration {id}: frontman {}: {} forwards to {forward_to} on {} for {}s",
                s.id,
                s.frontman.local_addr(),
                h.peer_name,
                s.grace.as_secs()
            );
        }
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_this_system_become_the_destinations() {
        let here: Vec<IpAddr> = vec!["10.77.0.1".parse().unwrap()];
        let there: IpAddr = "10.77.0.2".parse().unwrap();
        let m = |a: &str| map_addr(a.parse().unwrap(), &here, there).to_string();
        assert_eq!(m("10.77.0.1:8080"), "10.77.0.2:8080");
        assert_eq!(m("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(m("0.0.0.0:18080"), "0.0.0.0:18080");
        assert_eq!(m("10.78.1.5:80"), "10.78.1.5:80");
    }

    #[test]
    fn options_are_checked() {
        assert!(check_options(None).is_ok());
        let mut o = EndpointOptions {
            listen: Some("10.77.0.2:18080".into()),
            ..Default::default()
        };
        assert!(check_options(Some(&o)).is_ok());
        o.target = Some("b:8080".into());
        let e = check_options(Some(&o)).unwrap_err();
        assert!(e.to_string().contains("endpoint target"), "{e}");
    }
}

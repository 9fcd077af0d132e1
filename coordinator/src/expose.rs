//! The Frontman's HTTP API bodies and its client calls (`ums expose`, `ums unexpose`).
//!
//! - `POST /v1/expose` [`ExposeRequest`] -> 201 [`ExposureInfo`]: a stable endpoint for a
//!   container of this system
//! - `GET /v1/expose`, `GET /v1/expose/{id}` -> [`ExposureInfo`]s
//! - `DELETE /v1/expose/{id}` -> [`ExposureInfo`]: the endpoint goes away
//! - `POST /v1/expose/{id}/resume` -> [`ExposureInfo`]: a held endpoint forwards to its target
//!   again (the source coordinator, once the service runs at the destination)
//!
//! `ums migrate` carries [`EndpointOptions`]; its report an [`EndpointReport`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::refusal;
use crate::error::{Error, Result};
pub use crate::frontman::{Mode, Stats};
use crate::http::HttpClient;
use crate::refs::PeerUrl;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn default_hold() -> u64 {
    30
}
fn default_drain() -> u64 {
    10
}
fn default_grace() -> u64 {
    300
}
fn default_retry_after() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExposeRequest {
    /// `namespace/name` of the container on this system.
    #[serde(rename = "ref")]
    pub container: String,
    /// The stable endpoint, `IP:PORT`.
    pub listen: String,
    /// The service's address on this system, `IP:PORT`.
    pub target: String,
    #[serde(default)]
    pub mode: Mode,
    /// TCP mode: the longest a connection is held while the service is frozen.
    #[serde(default = "default_hold")]
    pub hold_timeout_secs: u64,
    /// Before a migration freezes the service: the longest open connections may take to end
    /// (then they are cut).
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
    /// After the service moved away: how long this endpoint forwards to the new one.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// HTTP mode: the `Retry-After` of the 503 answers.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
    /// Start holding (a destination's endpoint before its service runs there).
    #[serde(default)]
    pub held: bool,
}

impl ExposeRequest {
    /// A request with the default timeouts.
    pub fn new(container: &str, listen: &str, target: &str, mode: Mode) -> ExposeRequest {
        ExposeRequest {
            container: container.to_string(),
            listen: listen.to_string(),
            target: target.to_string(),
            mode,
            hold_timeout_secs: default_hold(),
            drain_timeout_secs: default_drain(),
            grace_secs: default_grace(),
            retry_after_secs: default_retry_after(),
            held: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExposureState {
    /// Forwarding to the service on this system.
    Forwarding,
    /// No connection reaches the service (a migration freezes it, or it is not running here
    /// yet): held or answered 503.
    Holding,
    /// The service runs on another system: forwarding to its endpoint there until removed.
    Moved,
}

/// Where a moved service's endpoint is now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MovedTo {
    pub system: String,
    pub coordinator: String,
    /// The stable endpoint there.
    pub endpoint: String,
    /// Its exposure id there.
    pub exposure: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExposureInfo {
    pub id: String,
    #[serde(rename = "ref")]
    pub container: String,
    pub mode: Mode,
    /// The address the endpoint listens on.
    pub listen: String,
    /// The service's address on this system.
    pub target: String,
    pub state: ExposureState,
    /// Where new connections go now (none while holding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_to: Option<String>,
    /// The migration that holds the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<MovedTo>,
    /// A moved endpoint is removed in this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal_in_secs: Option<u64>,
    pub hold_timeout_secs: u64,
    pub drain_timeout_secs: u64,
    pub grace_secs: u64,
    pub retry_after_secs: u32,
    pub stats: Stats,
}

/// `ums migrate`'s choice of the destination's stable endpoint. Without it the destination's
/// endpoint listens on the source endpoint's port, and source-system addresses (the source
/// coordinator's IP, the source endpoint's IP) become the destination's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointOptions {
    /// The endpoint on the destination, `IP:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The service's address on the destination, `IP:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl EndpointOptions {
    pub fn is_empty(&self) -> bool {
        self.listen.is_none() && self.target.is_none() && self.mode.is_none()
    }
}

/// The service's endpoints after a migration: what the requesters are told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointReport {
    /// The stable endpoint on the destination: the service's address from now on.
    pub endpoint: String,
    pub system: String,
    /// Its exposure id on the destination.
    pub exposure: String,
    pub mode: Mode,
    /// The service's address behind it.
    pub target: String,
    /// The source's endpoint, which forwards to `endpoint` until it is removed
    /// (`ums unexpose`) or for `forwards_for_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_exposure: Option<String>,
    #[serde(default)]
    pub forwards_for_secs: u64,
    /// What did not go cleanly (the service runs at the destination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl EndpointReport {
    /// The line `ums migrate` prints after its summary.
    pub fn line(&self) -> String {
        let mut s = format!(
            "endpoint: {} on {} ({} mode, exposure {})",
            self.endpoint,
            self.system,
            self.mode.as_str(),
            self.exposure
        );
        if let Some(p) = &self.previous {
            s.push_str(&format!(
                "; {p} forwards there for {} s or until `ums unexpose`",
                self.forwards_for_secs
            ));
        }
        if !self.warnings.is_empty() {
            s.push_str(&format!("; warnings: {}", self.warnings.join("; ")));
        }
        s
    }
}

/// `POST /v1/expose` at `coordinator`.
pub async fn expose(
    http: &HttpClient,
    coordinator: &str,
    req: &ExposeRequest,
) -> Result<ExposureInfo> {
    let at = PeerUrl::parse(coordinator)?;
    http.post(&at.join("/v1/expose"), req, CALL_TIMEOUT)
        .await
        .map_err(|e| refusal(e, &at, "to expose", "coordinator"))
}

/// `GET /v1/expose` at `coordinator`.
pub async fn list(http: &HttpClient, coordinator: &str) -> Result<Vec<ExposureInfo>> {
    let at = PeerUrl::parse(coordinator)?;
    http.get(&at.join("/v1/expose"), CALL_TIMEOUT)
        .await
        .map_err(|e| refusal(e, &at, "to list the endpoints", "coordinator"))
}

/// `DELETE /v1/expose/{id}` at `coordinator`; `which` is an exposure id or the container's
/// `namespace/name`.
pub async fn unexpose(http: &HttpClient, coordinator: &str, which: &str) -> Result<ExposureInfo> {
    let at = PeerUrl::parse(coordinator)?;
    let id = if which.contains('/') {
        list(http, coordinator)
            .await?
            .into_iter()
            .find(|e| e.container == which)
            .map(|e| e.id)
            .ok_or_else(|| Error::NotFound(format!("{at} has no endpoint for container {which}")))?
    } else {
        which.to_string()
    };
    http.delete(&at.join(&format!("/v1/expose/{id}")), CALL_TIMEOUT)
        .await
        .map_err(|e| refusal(e, &at, "to unexpose", "coordinator"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_body;

    #[test]
    fn request_defaults() {
        let r: ExposeRequest = parse_body(
            br#"{"ref":"default/web","listen":"10.77.0.1:18080","target":"10.77.0.1:8080"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ExposeRequest::new(
                "default/web",
                "10.77.0.1:18080",
                "10.77.0.1:8080",
                Mode::Tcp
            )
        );
        let r: ExposeRequest =
            parse_body(br#"{"ref":"default/web","listen":"a","target":"b","mode":"http"}"#)
                .unwrap();
        assert_eq!(r.mode, Mode::Http);
        let e = parse_body::<ExposeRequest>(
            br#"{"ref":"default/web","listen":"a","target":"b","mode":"udp"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("udp"), "{e}");
    }

    #[test]
    fn report_line() {
        let r = EndpointReport {
            endpoint: "10.77.0.2:18080".into(),
            system: "b".into(),
            exposure: "x-2".into(),
            mode: Mode::Tcp,
            target: "10.77.0.2:8080".into(),
            previous: Some("10.77.0.1:18080".into()),
            previous_exposure: Some("x-1".into()),
            forwards_for_secs: 300,
            warnings: vec![],
        };
        assert_eq!(
            r.line(),
            "endpoint: 10.77.0.2:18080 on b (tcp mode, exposure x-2); 10.77.0.1:18080 forwards \
             there for 300 s or until `ums unexpose`"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mode"], "tcp");
        assert!(v.get("warnings").is_none());
    }
}

//! The JSON bodies of the coordinator's HTTP API.
//!
//! Client -> source coordinator:
//! - `POST /v1/migrate` [`MigrateRequest`] -> 202 [`MigrateAccepted`]
//! - `GET /v1/migrations`, `GET /v1/migrations/{id}` -> [`Record`]s (phase, bytes, timings,
//!   and once completed the [`Report`])
//!
//! Source coordinator -> destination coordinator (bearer token):
//! - `POST /v1/migrations/incoming` [`IncomingRequest`] -> [`IncomingResponse`]
//! - `POST /v1/migrations/{id}/restore` -> [`RestoreResponse`]
//! - `POST /v1/migrations/{id}/abort` -> [`AbortResponse`]
//!
//! Errors: a 4xx/5xx status with [`crate::error::ErrorBody`] `{"error": "...", "kind": "..."}`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::approach::{Approach, Capabilities};
use crate::error::{Error, Result};
use crate::refs::ContainerRef;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrateRequest {
    /// `namespace/name` of the container on the source system.
    #[serde(rename = "ref")]
    pub container: String,
    /// The destination coordinator's URL, `http://host:port`.
    pub to: String,
    /// Where and how the destination creates the container.
    #[serde(flatten)]
    pub placement: Placement,
    /// The service's stable endpoint on the destination (the Frontman, `expose.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<crate::expose::EndpointOptions>,
    /// Force an approach (`container`, `orchestrator`, `service`); default: the first feasible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approach: Option<Approach>,
    /// Only say which approach would be used and why the others cannot (200 with a
    /// [`crate::approach::Survey`]); nothing is touched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Post-copy (CRIU lazy pages; container-level only): the service restarts at the
    /// destination before its memory arrives, which it then fetches from the frozen source.
    /// The source stays frozen until every page is in and resumes if the transfer fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_copy: bool,
    /// With `post_copy`: the restored service stays frozen at the destination until its last
    /// page is in, so it runs nowhere with memory missing: a pre-copy's guarantee (a failure
    /// resumes the source, nothing lost) with the restore overlapping the page transfer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
}

/// The interface through which the destination creates the container (see
/// [`crate::adapter`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DestInterface {
    /// containerd's containers and tasks API: a plain container (a CRI one lands in `k8s.io`).
    #[default]
    Containerd,
    /// CRI, as kubelet: a pod sandbox with runtime handler `ums` and a container in it.
    Cri,
}

impl DestInterface {
    pub fn as_str(self) -> &'static str {
        match self {
            DestInterface::Containerd => "containerd",
            DestInterface::Cri => "cri",
        }
    }
}

impl std::fmt::Display for DestInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DestInterface {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "containerd" => Ok(DestInterface::Containerd),
            "cri" => Ok(DestInterface::Cri),
            _ => Err(format!("{s:?}: the interface is cri or containerd")),
        }
    }
}

/// The user's choice of destination interface and pod (all optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Placement {
    /// Default: CRI when the source container is a CRI one and the destination has CRI,
    /// else containerd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_interface: Option<DestInterface>,
    /// CRI: the new pod's namespace and name (default: the source pod's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl Placement {
    /// Pod names go into CRI metadata and the pod's log directory name: DNS labels only.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("pod_namespace", &self.pod_namespace),
            ("pod_name", &self.pod_name),
        ] {
            if let Some(v) = v {
                validate_pod_name(what, v)?;
            }
        }
        if self.to_interface == Some(DestInterface::Containerd)
            && (self.pod_namespace.is_some() || self.pod_name.is_some())
        {
            return Err(Error::BadRequest(
                "pod_namespace/pod_name place the container into a CRI pod: they need the cri \
                 interface"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A Kubernetes name as CRI metadata and a path component take it: 1-63 lowercase letters,
/// digits, '-' and '.', starting and ending with a letter or digit.
pub fn validate_pod_name(what: &str, v: &str) -> Result<()> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = (1..=63).contains(&v.len())
        && edge(v.chars().next())
        && edge(v.chars().last())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "{what} {v:?} must be 1-63 lowercase letters, digits, '-' or '.' (a Kubernetes name)"
        )))
    }
}

/// What the destination needs to create a CRI container as kubelet would: the source pod's and
/// container's configs as the source's CRI keeps them, and where the pod goes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CriSource {
    pub pod: k8s_cri::v1::PodSandboxConfig,
    pub container: k8s_cri::v1::ContainerConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrateAccepted {
    pub migration_id: String,
    #[serde(rename = "ref")]
    pub container: String,
    /// The source system's name.
    pub source_system: String,
    /// The destination system's name (from its /healthz).
    pub destination_system: String,
    pub destination: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub name: String,
    pub version: String,
    /// What this system can do for migrations (CRIU, runc, runtimes); peers decide on it.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
}

/// An `Any` carried over JSON (containerd's runtime options).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnyJson {
    pub type_url: String,
    /// The value's bytes in hex.
    pub value_hex: String,
}

impl AnyJson {
    pub fn from_any(a: &prost_types::Any) -> AnyJson {
        AnyJson {
            type_url: a.type_url.clone(),
            value_hex: crate::image::hex(&a.value),
        }
    }

    pub fn to_any(&self) -> Result<prost_types::Any> {
        Ok(prost_types::Any {
            type_url: self.type_url.clone(),
            value: unhex(&self.value_hex)
                .ok_or_else(|| Error::BadRequest("runtime_options.value_hex is not hex".into()))?,
        })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// The OCI spec type containerd stores container specs under.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Step 3 of the pre-migration: create the container on the destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncomingRequest {
    pub migration_id: String,
    #[serde(rename = "ref")]
    pub container: ContainerRef,
    /// The source system's name.
    pub source: String,
    /// The source container's OCI spec, as stored by the source containerd.
    pub spec: Value,
    #[serde(default = "default_spec_type_url")]
    pub spec_type_url: String,
    pub image: String,
    #[serde(default)]
    pub snapshotter: String,
    #[serde(default)]
    pub runtime_options: Option<AnyJson>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// The source coordinator's cgroup parent (see `--cgroup-parent`).
    #[serde(default)]
    pub source_cgroup_parent: String,
    /// Bind mounts whose source exists on the source system only (the files the CRI plugin
    /// made for the container's pod): the destination recreates them in its state dir.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_mounts: Vec<LocalMount>,
    /// Binds the image stream to this migration (passed to both shims).
    pub token: String,
    /// The interface the user chose (`None`: the destination picks, see [`Placement`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<DestInterface>,
    /// A CRI container's pod and container configs (for the CRI interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cri: Option<CriSource>,
    /// How the destination recreates and restores the container.
    #[serde(default)]
    pub approach: Approach,
    /// Post-copy: the restore is confirmed once the restored service has every page.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_copy: bool,
}

/// A bind mount of the source container whose source the destination recreates (see
/// [`crate::mounts`]): a file with its content, or an empty directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalMount {
    /// The mount's destination in the container (`/etc/hosts`).
    pub destination: String,
    pub kind: LocalMountKind,
    /// Permission bits of the source.
    #[serde(default)]
    pub mode: u32,
    /// A file's content in hex.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_hex: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LocalMountKind {
    File,
    Dir,
}

impl LocalMount {
    pub fn content(&self) -> Result<Vec<u8>> {
        unhex(&self.content_hex).ok_or_else(|| {
            Error::BadRequest(format!(
                "local mount {}: content_hex is not hex",
                self.destination
            ))
        })
    }
}

fn default_spec_type_url() -> String {
    SPEC_TYPE_URL.to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IncomingResponse {
    pub migration_id: String,
    /// host:port the source shim streams the images to.
    pub address: String,
    /// The destination system's name.
    pub destination: String,
    /// The pid of the destination task's outer (created, not started).
    pub pid: u32,
    /// The interface the destination created the container through.
    #[serde(default)]
    pub interface: DestInterface,
    /// The destination container, when its reference differs from the source's (CRI gives
    /// it a new id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// CRI: the pod the container was created in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodLocation>,
}

/// A pod created through CRI at the destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodLocation {
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreResponse {
    pub migration_id: String,
    /// The restored task's pid on the destination.
    pub pid: u32,
    /// containerd Start (restore) until the task is RUNNING, as measured by the destination.
    pub restore_ms: u64,
    /// Post-copy: from RUNNING until the restored service had every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_copy_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AbortResponse {
    pub migration_id: String,
    pub aborted: bool,
    /// What was cleaned up or failed to be.
    #[serde(default)]
    pub detail: Vec<String>,
}

/// Which side of a migration a record is on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Destination,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Completed,
    Failed,
    Aborted,
}

/// The phases of a migration, in order. Source: pre_migration, checkpoint (freeze, dump and
/// stream), restore, post_copy (with --post-copy only), post_migration. Destination: preparing, prepared, restoring, restored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    PreMigration,
    Checkpoint,
    Restore,
    /// Post-copy: the destination runs the service and fetches its pages.
    PostCopy,
    PostMigration,
    Preparing,
    Prepared,
    Restoring,
    Restored,
    Aborting,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreMigration => "pre_migration",
            Phase::Checkpoint => "checkpoint",
            Phase::Restore => "restore",
            Phase::PostCopy => "post_copy",
            Phase::PostMigration => "post_migration",
            Phase::Preparing => "preparing",
            Phase::Prepared => "prepared",
            Phase::Restoring => "restoring",
            Phase::Restored => "restored",
            Phase::Aborting => "aborting",
            Phase::Done => "done",
        }
    }
}

/// Phase durations of a finished migration. `checkpoint` and `transfer` split the shim's Dump:
/// `checkpoint` is the shim's freeze-to-CRIU-done, `transfer` the rest of the Dump call (the
/// part of the stream that did not overlap the checkpoint); the five add up to about `total_ms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhasesMs {
    pub pre_migration: u64,
    pub checkpoint: u64,
    pub transfer: u64,
    pub restore: u64,
    /// Post-copy: from the restore's end until the destination had every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_copy: Option<u64>,
    pub post_migration: u64,
}

/// Phase durations while a migration runs (a phase not reached yet is absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartialPhasesMs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_migration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_copy: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_migration: Option<u64>,
}

impl PartialPhasesMs {
    /// The phases measured so far, in order, with their names.
    pub fn measured(&self) -> Vec<(&'static str, u64)> {
        [
            ("pre_migration", self.pre_migration),
            ("checkpoint", self.checkpoint),
            ("transfer", self.transfer),
            ("restore", self.restore),
            ("post_copy", self.post_copy),
            ("post_migration", self.post_migration),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect()
    }
}

fn default_approach() -> String {
    Approach::Container.as_str().to_string()
}

/// The shim's own figures for the dump.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpFigures {
    /// Freeze to CRIU done.
    pub checkpoint_ms: u64,
    /// Freeze to the destination's verified receipt (overlaps checkpoint_ms).
    pub transfer_ms: u64,
    /// CRIU's frozen_time.
    pub frozen_ms: u64,
    /// The Dump call as the coordinator saw it.
    pub wall_ms: u64,
    pub files: u64,
}

/// Where the service runs after the migration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Location {
    pub system: String,
    pub url: String,
    #[serde(rename = "ref")]
    pub container: String,
    pub pid: u32,
    /// The interface the destination created the container through.
    #[serde(default)]
    pub interface: DestInterface,
    /// CRI: the pod the container runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodLocation>,
}

/// The outcome of a completed migration: what `ums migrate --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub approach: String,
    /// The source coordinator's URL (as the client named it) and system name.
    pub source: String,
    pub source_system: String,
    /// The destination coordinator's URL and system name.
    pub destination: String,
    pub destination_system: String,
    #[serde(rename = "ref")]
    pub container: String,
    pub migration_id: String,
    pub phases_ms: PhasesMs,
    pub total_ms: u64,
    /// CRIU's frozen time as the source shim reports it.
    pub frozen_ms: u64,
    /// Upper bound of the service's unavailability: the Dump call (freeze to verified receipt)
    /// plus the restore until RUNNING at the destination.
    pub downtime_ms: u64,
    /// Bytes moved: the stream (images + rootfs changes) and, post-copy, the pages.
    pub bytes: u64,
    /// Post-copy: of `bytes`, the memory pages the destination fetched from the source's CRIU
    /// page server (`None` if that could not be told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_bytes: Option<u64>,
    /// Post-copy was asked for (`phases_ms.post_copy` says how long the pages took).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_copy: bool,
    /// Post-copy, held: the service was frozen at the destination until every page was in
    /// (`downtime_ms` includes `phases_ms.post_copy`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    pub dump: DumpFigures,
    pub location: Location,
    /// Post-migration steps that did not go cleanly (the service runs at the destination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the user should know, e.g. that a CRI container's pod stays on the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The service's stable endpoint on the destination, for an exposed service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<crate::expose::EndpointReport>,
}

/// One migration as a coordinator tracks it (`GET /v1/migrations`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub migration_id: String,
    #[serde(rename = "ref")]
    pub container: String,
    /// The approach (see [`Approach`]); records of older coordinators have none.
    #[serde(default = "default_approach")]
    pub approach: String,
    pub role: Role,
    /// The other coordinator: its URL (source side) or system name (destination side).
    pub peer: String,
    pub phase: Phase,
    pub state: State,
    pub bytes: u64,
    /// Unix time in ms.
    pub started_at_ms: u64,
    pub elapsed_ms: u64,
    pub phases_ms: PartialPhasesMs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// How a migration completed without `result`: its source coordinator restarted after the
    /// destination had restored the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Report>,
}

/// Parses a JSON request body into `T` with a clear error.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.is_empty() {
        return Err(Error::BadRequest(
            "empty request body: JSON expected".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

/// A migration id as the coordinators make them; checked where one arrives from outside.
pub fn validate_migration_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "migration id {id:?} must be 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Human-readable byte count.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Report {
    /// The final line `ums migrate` prints without --json.
    pub fn summary(&self) -> String {
        format!(
            "migrated {} from {} to {} in {} ms (frozen {} ms, downtime {} ms, {}; pre {} / \
             checkpoint {} / transfer {} / restore {}{} / post {} ms); migration {}{}{}",
            self.container,
            self.source_system,
            self.destination_system,
            self.total_ms,
            self.frozen_ms,
            self.downtime_ms,
            human_bytes(self.bytes),
            self.phases_ms.pre_migration,
            self.phases_ms.checkpoint,
            self.phases_ms.transfer,
            self.phases_ms.restore,
            match self.phases_ms.post_copy {
                Some(ms) => format!(" / pages (post-copy) {ms}"),
                None => String::new(),
            },
            self.phases_ms.post_migration,
            self.migration_id,
            if self.warnings.is_empty() {
                String::new()
            } else {
                format!("; warnings: {}", self.warnings.join("; "))
            },
            if self.notes.is_empty() {
                String::new()
            } else {
                format!("; notes: {}", self.notes.join("; "))
            }
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample_report() -> Report {
        Report {
            approach: Approach::Container.as_str().into(),
            source: "http://10.77.0.1:7400".into(),
            source_system: "a".into(),
            destination: "http://10.77.0.2:7400".into(),
            destination_system: "b".into(),
            container: "default/web1".into(),
            migration_id: "m-1".into(),
            phases_ms: PhasesMs {
                pre_migration: 100,
                checkpoint: 300,
                transfer: 50,
                restore: 200,
                post_copy: None,
                post_migration: 40,
            },
            total_ms: 700,
            frozen_ms: 280,
            downtime_ms: 560,
            bytes: 134217728,
            pages_bytes: None,
            post_copy: false,
            hold: false,
            dump: DumpFigures {
                checkpoint_ms: 300,
                transfer_ms: 340,
                frozen_ms: 280,
                wall_ms: 350,
                files: 12,
            },
            location: Location {
                system: "b".into(),
                url: "http://10.77.0.2:7400".into(),
                container: "default/web1".into(),
                pid: 4242,
                interface: DestInterface::Containerd,
                pod: None,
            },
            warnings: vec![],
            notes: vec![],
            endpoint: None,
        }
    }

    #[test]
    fn report_json_shape() {
        let v = serde_json::to_value(sample_report()).unwrap();
        for k in [
            "approach",
            "source",
            "destination",
            "migration_id",
            "phases_ms",
            "total_ms",
            "frozen_ms",
            "bytes",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["approach"], "container-level");
        assert_eq!(v["ref"], "default/web1");
        assert_eq!(
            v["phases_ms"],
            json!({"pre_migration": 100, "checkpoint": 300, "transfer": 50, "restore": 200,
                   "post_migration": 40})
        );
        assert!(v.get("warnings").is_none());
        assert_eq!(v["location"]["system"], "b");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample_report());
    }

    #[test]
    fn summary_line() {
        let s = sample_report().summary();
        assert!(
            s.starts_with("migrated default/web1 from a to b in 700 ms"),
            "{s}"
        );
        assert!(s.contains("128.0 MiB"), "{s}");
    }

    #[test]
    fn migrate_request_parsing() {
        let r: MigrateRequest =
            parse_body(br#"{"ref":"default/web1","to":"http://10.77.0.2:7400"}"#).unwrap();
        assert_eq!(r.container, "default/web1");
        assert_eq!(r.placement, Placement::default());
        let r: MigrateRequest = parse_body(
            br#"{"ref":"k8s.io/c","to":"http://b","to_interface":"cri","pod_name":"web-2"}"#,
        )
        .unwrap();
        assert_eq!(r.placement.to_interface, Some(DestInterface::Cri));
        assert_eq!(r.placement.pod_name.as_deref(), Some("web-2"));
        r.placement.validate().unwrap();
        assert!(
            parse_body::<MigrateRequest>(br#"{"ref":"a/b","to":"x","to_interface":"k8s"}"#)
                .is_err()
        );
        for bad in ["", "Web", "-a", "a/b", "..", &"x".repeat(64)] {
            let p = Placement {
                pod_name: Some(bad.to_string()),
                ..Default::default()
            };
            assert!(p.validate().is_err(), "{bad:?}");
        }
        let p = Placement {
            to_interface: Some(DestInterface::Containerd),
            pod_namespace: Some("shop".into()),
            ..Default::default()
        };
        assert!(p.validate().is_err());
        assert!(matches!(
            parse_body::<MigrateRequest>(b"{"),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            parse_body::<MigrateRequest>(b""),
            Err(Error::BadRequest(_))
        ));
        let e = parse_body::<MigrateRequest>(br#"{"ref":"default/web1"}"#).unwrap_err();
        assert!(e.to_string().contains("to"), "{e}");
    }

    #[test]
    fn incoming_request_parsing() {
        let body = json!({
            "migration_id": "m-1", "ref": "default/web1", "source": "a",
            "spec": {"ociVersion": "1.0.2"}, "image": "localhost/ums/busybox:1",
            "snapshotter": "overlayfs", "token": "t"
        });
        let r: IncomingRequest = parse_body(body.to_string().as_bytes()).unwrap();
        assert_eq!(r.container.to_string(), "default/web1");
        assert_eq!(r.spec_type_url, SPEC_TYPE_URL);
        assert!(r.labels.is_empty() && r.runtime_options.is_none());
        let mut bad = body.clone();
        bad["ref"] = json!("web1");
        assert!(parse_body::<IncomingRequest>(bad.to_string().as_bytes()).is_err());
    }

    #[test]
    fn any_roundtrip() {
        let a = prost_types::Any {
            type_url: "x".into(),
            value: vec![0, 1, 0xfe, 0xff],
        };
        let j = AnyJson::from_any(&a);
        assert_eq!(j.value_hex, "0001feff");
        assert_eq!(j.to_any().unwrap(), a);
        assert!(AnyJson {
            type_url: "x".into(),
            value_hex: "0g".into()
        }
        .to_any()
        .is_err());
    }

    #[test]
    fn migration_ids() {
        assert!(validate_migration_id("m-0123abcd").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_migration_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn record_shape() {
        let r = Record {
            migration_id: "m".into(),
            container: "default/web1".into(),
            approach: Approach::Container.as_str().into(),
            role: Role::Source,
            peer: "http://b".into(),
            phase: Phase::Checkpoint,
            state: State::Running,
            bytes: 10,
            started_at_ms: 1,
            elapsed_ms: 2,
            phases_ms: PartialPhasesMs {
                pre_migration: Some(5),
                ..Default::default()
            },
            error: None,
            error_kind: None,
            note: None,
            result: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["phase"], "checkpoint");
        assert_eq!(v["state"], "running");
        assert_eq!(v["role"], "source");
        assert_eq!(v["phases_ms"], json!({"pre_migration": 5}));
        assert_eq!(v["approach"], "container-level");
        assert_eq!(r.phases_ms.measured(), vec![("pre_migration", 5)]);
        assert!(v.get("error").is_none());
    }
}

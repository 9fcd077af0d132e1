//! The figures of one migration (one method, size, process count, repetition).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const UMS: &str = "ums";
/// UMS container-level with post-copy: `ums migrate --post-copy` (CRIU lazy pages: the service
/// runs at the destination before its memory has arrived; the pages follow).
pub const UMS_POSTCOPY: &str = "ums-postcopy";
/// UMS container-level, post-copy held: `ums migrate --post-copy --hold` (the service is
/// restored at the destination while its pages stream in, and held frozen until the last one
/// is in: it runs nowhere with memory missing, as in pre-copy).
pub const UMS_HELD: &str = "ums-held";
pub const STOP_AND_COPY: &str = "stop-and-copy";
pub const PAGE_SERVER: &str = "page-server";
/// UMS orchestrator-level: `ums migrate --approach orchestrator` of a plain runc container.
pub const ORCHESTRATOR: &str = "orchestrator";
/// Every method, in the order of the tables.
pub const METHODS: &[&str] = &[
    UMS,
    UMS_HELD,
    UMS_POSTCOPY,
    STOP_AND_COPY,
    PAGE_SERVER,
    ORCHESTRATOR,
];
/// The UMS methods (the ratio table has a row for each against the baselines).
pub const UMS_METHODS: &[&str] = &[UMS, UMS_HELD, UMS_POSTCOPY, ORCHESTRATOR];
/// The container-level UMS methods: the ones issue 4's targets are about (and the idle shim,
/// ours; orchestrator-level runs under runc's shim).
pub const CONTAINER_LEVEL: &[&str] = &[UMS, UMS_HELD, UMS_POSTCOPY];
/// The phases in the order they happen (the stacked bars).
pub const PHASES: &[&str] = &[
    "pre_migration",
    "checkpoint",
    "transfer",
    "restore",
    "post_copy",
    "post_migration",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRecord {
    pub method: String,
    pub size_mib: u64,
    pub procs: u64,
    pub rep: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Realtime (ns since the epoch) of the migration request.
    pub started_at_ns: u64,
    /// pre_migration, checkpoint, transfer, restore, post_copy (ums-postcopy: the restore's end to
    /// the last page in), post_migration (ms).
    pub phases_ms: BTreeMap<String, f64>,
    /// Request to done, as measured by the method (ums: its total_ms; baselines: the harness).
    pub total_ms: Option<f64>,
    /// CRIU's frozen_time of the dump (stats-dump), or what `ums migrate` reports.
    pub frozen_ms: Option<f64>,
    /// The tool's own downtime: freeze to running at the destination (baselines: checkpoint
    /// start to `runc restore -d` returned).
    pub downtime_ms: Option<f64>,
    /// Service-visible downtime: largest gap of memhog's realtime ticks around the migration.
    pub tick_gap_ms: Option<f64>,
    /// Bytes moved to the destination (images + files of the writable layer).
    pub bytes: Option<u64>,
    /// bytes / the time the transfer was active (MB/s, 1e6).
    pub throughput_mb_s: Option<f64>,
    /// CPU seconds of the processes involved (best effort, see README).
    pub cpu_s: Option<f64>,
    /// Peak RSS (VmHWM, KiB) of the source and destination shims (ums only) and of CRIU.
    pub shim_src_hwm_kib: Option<u64>,
    pub shim_dst_hwm_kib: Option<u64>,
    /// RSS of the source shim before the migration (idle, holding the service; container-level
    /// once settled, see `shim_idle_after_ms`).
    pub shim_idle_rss_kib: Option<u64>,
    /// Its anonymous part (RssAnon): what the shim itself allocated.
    pub shim_idle_anon_kib: Option<u64>,
    /// When the idle RSS was sampled: ms after the task started (`ctr run -d` returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shim_idle_after_ms: Option<f64>,
    pub criu_hwm_kib: Option<u64>,
    /// memhog's re-verification of its memory at the destination: "ok", "BAD" or None.
    pub verify: Option<String>,
    /// Raw CRIU stats (stats-dump / stats-restore) where the harness could read them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub criu_stats: BTreeMap<String, BTreeMap<String, u64>>,
    /// Extra figures of the method (e.g. rsync's bytes sent, ums migrate's raw JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

impl RunRecord {
    pub fn new(method: &str, size_mib: u64, procs: u64, rep: u32) -> RunRecord {
        RunRecord {
            method: method.to_string(),
            size_mib,
            procs,
            rep,
            ..Default::default()
        }
    }

    pub fn phase(&mut self, name: &str, ms: f64) {
        *self.phases_ms.entry(name.to_string()).or_insert(0.0) += ms;
    }
}

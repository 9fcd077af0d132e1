//! Task stats: `runc events --stats` of the outer (whose cgroup contains the service's)
//! converted into containerd's cgroup metrics types.
use containerd_shim::util::convert_to_any;
use containerd_shim_protos::{
    cgroups::metrics as v1, cgroups_v2::metrics as v2, protobuf::well_known_types::any::Any,
};
use serde_json::Value;

use crate::error::Result;

fn u(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

/// True on a host with only the unified (v2) cgroup hierarchy.
pub fn unified_only() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// `events` is the JSON object `runc events --stats` prints.
pub fn to_any(events: &Value, unified: bool) -> Result<Any> {
    let d = events.get("data").unwrap_or(&Value::Null);
    if unified {
        let mut m = v2::Metrics::new();
        let pids = m.pids.mut_or_insert_default();
        pids.current = u(d, "/pids/current");
        pids.limit = u(d, "/pids/limit");
        let cpu = m.cpu.mut_or_insert_default();
        cpu.usage_usec = u(d, "/cpu/usage/total") / 1000;
        cpu.user_usec = u(d, "/cpu/usage/user") / 1000;
        cpu.system_usec = u(d, "/cpu/usage/kernel") / 1000;
        cpu.nr_periods = u(d, "/cpu/throttling/periods");
        cpu.nr_throttled = u(d, "/cpu/throttling/throttledPeriods");
        cpu.throttled_usec = u(d, "/cpu/throttling/throttledTime") / 1000;
        let mem = m.memory.mut_or_insert_default();
        mem.usage = u(d, "/memory/usage/usage");
        mem.usage_limit = u(d, "/memory/usage/limit");
        mem.max_usage = u(d, "/memory/usage/max");
        mem.swap_usage = u(d, "/memory/swap/usage");
        mem.swap_limit = u(d, "/memory/swap/limit");
        mem.anon = u(d, "/memory/raw/anon");
        mem.file = u(d, "/memory/raw/file");
        return Ok(convert_to_any(Box::new(m))?);
    }
    let mut m = v1::Metrics::new();
    let pids = m.pids.mut_or_insert_default();
    pids.current = u(d, "/pids/current");
    pids.limit = u(d, "/pids/limit");
    let cpu = m.cpu.mut_or_insert_default();
    let usage = cpu.usage.mut_or_insert_default();
    usage.total = u(d, "/cpu/usage/total");
    usage.kernel = u(d, "/cpu/usage/kernel");
    usage.user = u(d, "/cpu/usage/user");
    usage.per_cpu = d
        .pointer("/cpu/usage/percpu")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let thr = cpu.throttling.mut_or_insert_default();
    thr.periods = u(d, "/cpu/throttling/periods");
    thr.throttled_periods = u(d, "/cpu/throttling/throttledPeriods");
    thr.throttled_time = u(d, "/cpu/throttling/throttledTime");
    let mem = m.memory.mut_or_insert_default();
    mem.cache = u(d, "/memory/cache");
    mem.rss = u(d, "/memory/raw/rss");
    mem.total_rss = u(d, "/memory/raw/total_rss");
    mem.total_cache = u(d, "/memory/raw/total_cache");
    mem.total_inactive_file = u(d, "/memory/raw/total_inactive_file");
    for (entry, key) in [
        (mem.usage.mut_or_insert_default(), "usage"),
        (mem.swap.mut_or_insert_default(), "swap"),
        (mem.kernel.mut_or_insert_default(), "kernel"),
    ] {
        entry.usage = u(d, &format!("/memory/{key}/usage"));
        entry.limit = u(d, &format!("/memory/{key}/limit"));
        entry.max = u(d, &format!("/memory/{key}/max"));
        entry.failcnt = u(d, &format!("/memory/{key}/failcnt"));
    }
    Ok(convert_to_any(Box::new(m))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn v1_metrics_carry_runc_figures() {
        let ev = serde_json::json!({"type": "stats", "data": {
            "cpu": {"usage": {"total": 5000, "percpu": [2000, 3000], "kernel": 10, "user": 20}},
            "memory": {"usage": {"usage": 4096, "limit": 8192, "max": 5000}, "cache": 7},
            "pids": {"current": 3}}});
        let any = to_any(&ev, false).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage.total, 5000);
        assert_eq!(m.cpu.usage.per_cpu, vec![2000, 3000]);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 8192);
        assert_eq!(m.memory.cache, 7);
        let any = to_any(&ev, true).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.cpu.usage_usec, 5);
    }
}

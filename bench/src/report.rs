//! The result file (JSON), the per-configuration summary and the Markdown table with ratios.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::record::{RunRecord, CONTAINER_LEVEL, METHODS, PAGE_SERVER, STOP_AND_COPY, UMS_METHODS};
use crate::stats::{summarize, Summary};

pub const SCHEMA: &str = "ums-bench/1";
/// Table I of the paper: container-level, 128 MiB, 1 Gbit/s.
pub const PAPER_128_MS: f64 = 14_710.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchFile {
    pub schema: String,
    pub started_at: String,
    pub command: String,
    pub machine: Machine,
    /// `off` (unshaped) or the tc rate of the link (e.g. `1gbit`).
    pub rate: String,
    /// Raw TCP a->b measured with tcpblast before the runs (MB/s, 1e6; median of the probe).
    pub raw_tcp_mb_s: Option<f64>,
    /// The criu-sync binary streaming a pre-written directory a->b (MB/s; median of the probe).
    #[serde(default)]
    pub criu_sync_mb_s: Option<f64>,
    /// The link probe's samples.
    #[serde(default)]
    pub link: LinkProbe,
    /// The memory probe's samples.
    #[serde(default)]
    pub memory: crate::memory::MemoryProbe,
    pub sizes_mib: Vec<u64>,
    pub procs: Vec<u64>,
    pub reps: u32,
    pub child_mib: u64,
    pub methods: Vec<String>,
    pub runs: Vec<RunRecord>,
    /// Methods asked for but skipped, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Filled from `runs` when written (re-computable).
    #[serde(default)]
    pub summary: Vec<Group>,
}

/// The link probe before the runs (link.rs): raw TCP and criu-sync a->b, alternated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinkProbe {
    pub raw_tcp_mb_s: Vec<f64>,
    pub criu_sync_mb_s: Vec<f64>,
    /// Size of the random pages-1.img streamed (MiB; tmpfs on both sides).
    pub criu_sync_mib: u64,
    pub error: Option<String>,
}

/// min/median/max of each figure over the successful repetitions of one configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Group {
    pub method: String,
    pub size_mib: u64,
    pub procs: u64,
    pub runs: usize,
    pub ok: usize,
    pub figures: BTreeMap<String, Summary>,
}

impl Group {
    pub fn median(&self, k: &str) -> Option<f64> {
        self.figures.get(k).map(|s| s.median)
    }
}

fn figures_of(r: &RunRecord) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    for (k, x) in &r.phases_ms {
        v.push((format!("phase.{k}"), *x));
    }
    let mut opt = |k: &str, x: Option<f64>| {
        if let Some(x) = x {
            v.push((k.to_string(), x));
        }
    };
    opt("total_ms", r.total_ms);
    opt("frozen_ms", r.frozen_ms);
    opt("downtime_ms", r.downtime_ms);
    opt("tick_gap_ms", r.tick_gap_ms);
    opt("bytes", r.bytes.map(|b| b as f64));
    opt("throughput_mb_s", r.throughput_mb_s);
    opt("cpu_s", r.cpu_s);
    opt("shim_src_hwm_kib", r.shim_src_hwm_kib.map(|b| b as f64));
    opt("shim_dst_hwm_kib", r.shim_dst_hwm_kib.map(|b| b as f64));
    opt("shim_idle_rss_kib", r.shim_idle_rss_kib.map(|b| b as f64));
    opt("shim_idle_anon_kib", r.shim_idle_anon_kib.map(|b| b as f64));
    opt("shim_idle_after_ms", r.shim_idle_after_ms);
    opt("criu_hwm_kib", r.criu_hwm_kib.map(|b| b as f64));
    v
}

/// Groups by (procs, size, method), in the order of the configuration.
pub fn summarize_runs(runs: &[RunRecord]) -> Vec<Group> {
    let mut keys: Vec<(u64, u64, String)> = Vec::new();
    for r in runs {
        let k = (r.procs, r.size_mib, r.method.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|(p, s, m)| (*p, *s, METHODS.iter().position(|x| x == m).unwrap_or(99)));
    keys.into_iter()
        .map(|(p, s, m)| {
            let rs: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.procs == p && r.size_mib == s && r.method == m)
                .collect();
            let ok: Vec<&&RunRecord> = rs.iter().filter(|r| r.ok).collect();
            let mut vals: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in &ok {
                for (k, x) in figures_of(r) {
                    vals.entry(k).or_default().push(x);
                }
            }
            Group {
                method: m,
                size_mib: s,
                procs: p,
                runs: rs.len(),
                ok: ok.len(),
                figures: vals
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, summarize(&v)?)))
                    .collect(),
            }
        })
        .collect()
}

fn fmt_s(s: Option<&Summary>, scale: f64, prec: usize) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 || (s.min == s.max) => format!("{:.*}", prec, s.median * scale),
        Some(s) => format!(
            "{:.*} ({:.*}-{:.*})",
            prec,
            s.median * scale,
            prec,
            s.min * scale,
            prec,
            s.max * scale
        ),
    }
}

pub fn find<'a>(g: &'a [Group], method: &str, size: u64, procs: u64) -> Option<&'a Group> {
    g.iter()
        .find(|x| x.method == method && x.size_mib == size && x.procs == procs)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fr(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.2}"))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    }
}

/// The process count issue 4's targets are stated for.
pub const TARGET_K: u64 = 1;
/// The size of the total target (and of the 1024 MiB downtime target).
pub const TOTAL_TARGET_MIB: u64 = 1024;
/// The size whose total is the fixed cost in the total target.
pub const FIXED_COST_MIB: u64 = 0;

/// The methods of `wanted` that were asked for or ran, in that order.
fn present<'a>(f: &BenchFile, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|m| f.methods.iter().any(|x| x == m) || f.runs.iter().any(|r| r.method == *m))
        .collect()
}

/// The largest max of a figure over the groups of a method (all sizes and K).
fn max_over(g: &[Group], method: &str, k: &str) -> Option<f64> {
    g.iter()
        .filter(|x| x.method == method)
        .filter_map(|x| x.figures.get(k))
        .map(|s| s.max)
        .reduce(f64::max)
}

fn min_over(g: &[Group], method: &str, k: &str) -> Option<f64> {
    g.iter()
        .filter(|x| x.method == method)
        .filter_map(|x| x.figures.get(k))
        .map(|s| s.min)
        .reduce(f64::min)
}

/// The Markdown report: one row per configuration (median (min-max)), the ratios of each UMS
/// method to the baselines, and issue 4's targets for each container-level UMS method.
pub fn markdown(f: &BenchFile) -> String {
    let g = summarize_runs(&f.runs);
    let mut s = String::new();
    let rate = if f.rate == "off" { "unshaped" } else { &f.rate };
    let _ = writeln!(
        s,
        "Link: {rate}, raw TCP a->b {} MB/s, criu-sync a->b {} MB/s. Machine: {} cores ({}), kernel {}, load {} -> {}. {} repetitions, median (min-max) of the successful ones.\n",
        f.raw_tcp_mb_s.map_or("?".into(), |x| format!("{x:.0}")),
        f.criu_sync_mb_s.map_or("?".into(), |x| format!("{x:.0}")),
        f.machine.cores,
        f.machine.cpu,
        f.machine.kernel,
        f.machine.loadavg_start,
        f.machine.loadavg_end,
        f.reps
    );
    for n in &f.notes {
        let _ = writeln!(s, "Note: {n}.\n");
    }
    // the post-copy phase only when some method has it
    let post_copy = g.iter().any(|x| x.figures.contains_key("phase.post_copy"));
    let mut head = vec![
        "K",
        "MiB",
        "method",
        "ok",
        "total ms",
        "tick-gap downtime ms",
        "tool downtime ms",
        "frozen ms (CRIU)",
        "checkpoint ms",
        "transfer ms",
        "restore ms",
    ];
    if post_copy {
        head.push("post-copy ms");
    }
    head.extend([
        "MB moved",
        "MB/s",
        "CPU s",
        "shim src/dst peak RSS MiB",
        "criu peak RSS MiB",
    ]);
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for x in &g {
        let fg = |k: &str| x.figures.get(k);
        let mib = |k: &str| fg(k).map(|v| format!("{:.1}", v.median / 1024.0));
        let shim = match (mib("shim_src_hwm_kib"), mib("shim_dst_hwm_kib")) {
            (None, None) => "-".to_string(),
            (a, b) => format!("{}/{}", a.unwrap_or("-".into()), b.unwrap_or("-".into())),
        };
        let mut row = vec![
            x.procs.to_string(),
            x.size_mib.to_string(),
            x.method.clone(),
            format!("{}/{}", x.ok, x.runs),
            fmt_s(fg("total_ms"), 1.0, 0),
            fmt_s(fg("tick_gap_ms"), 1.0, 0),
            fmt_s(fg("downtime_ms"), 1.0, 0),
            fmt_s(fg("frozen_ms"), 1.0, 0),
            fmt_s(fg("phase.checkpoint"), 1.0, 0),
            fmt_s(fg("phase.transfer"), 1.0, 0),
            fmt_s(fg("phase.restore"), 1.0, 0),
        ];
        if post_copy {
            row.push(fmt_s(fg("phase.post_copy"), 1.0, 0));
        }
        row.extend([
            fmt_s(fg("bytes"), 1e-6, 1),
            fmt_s(fg("throughput_mb_s"), 1.0, 0),
            fmt_s(fg("cpu_s"), 1.0, 2),
            shim,
            mib("criu_hwm_kib").unwrap_or("-".into()),
        ]);
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    let _ = writeln!(
        s,
        "\nRatios of each UMS method to the baselines of this run (medians; downtime = tick gap):\n"
    );
    let _ = writeln!(s, "| K | MiB | method | downtime / page-server | downtime / stop-and-copy | total / page-server | total / stop-and-copy |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let mut confs: Vec<(u64, u64)> = g.iter().map(|x| (x.procs, x.size_mib)).collect();
    confs.dedup();
    for &(p, z) in &confs {
        let m = |meth: &str, k: &str| find(&g, meth, z, p).and_then(|x| x.median(k));
        // e.g. the 0 MiB calibration: nothing to compare with
        if find(&g, PAGE_SERVER, z, p).is_none() && find(&g, STOP_AND_COPY, z, p).is_none() {
            continue;
        }
        for &u in UMS_METHODS {
            if find(&g, u, z, p).is_none() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {p} | {z} | {u} | {} | {} | {} | {} |",
                fr(ratio(m(u, "tick_gap_ms"), m(PAGE_SERVER, "tick_gap_ms"))),
                fr(ratio(m(u, "tick_gap_ms"), m(STOP_AND_COPY, "tick_gap_ms"))),
                fr(ratio(m(u, "total_ms"), m(PAGE_SERVER, "total_ms"))),
                fr(ratio(m(u, "total_ms"), m(STOP_AND_COPY, "total_ms"))),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nIssue 4's targets (K={TARGET_K}), for each container-level UMS method:\n"
    );
    let m = |meth: &str, z: u64, k: &str| find(&g, meth, z, TARGET_K).and_then(|x| x.median(k));
    let ums_methods = present(f, CONTAINER_LEVEL);
    let shaped = f.rate != "off";
    if !shaped {
        for (z, limit) in [(128, 0.7), (TOTAL_TARGET_MIB, 0.85)] {
            for &u in &ums_methods {
                let r = ratio(m(u, z, "tick_gap_ms"), m(PAGE_SERVER, z, "tick_gap_ms"));
                let _ = writeln!(
                    s,
                    "- {z} MiB, unshaped: {u} downtime / page-server = {} (target <= {limit:.2}): {}",
                    fr(r),
                    verdict(r.map(|x| x <= limit))
                );
            }
        }
        for &u in &ums_methods {
            let (bytes, fixed) = (
                m(u, TOTAL_TARGET_MIB, "bytes"),
                m(u, FIXED_COST_MIB, "total_ms"),
            );
            // the 0 MiB total of a run without 0 in its sizes comes from the calibration runs
            let fixed_from = match (f.sizes_mib.contains(&FIXED_COST_MIB), fixed) {
                (_, None) => ", no 0 MiB run",
                (true, Some(_)) => "",
                (false, Some(_)) => ", 0 MiB from the calibration runs",
            };
            let bound = match (bytes, f.raw_tcp_mb_s, fixed) {
                (Some(b), Some(r), Some(fixed)) => Some(b / 1e6 / r * 1e3 + fixed),
                _ => None,
            };
            let total = m(u, TOTAL_TARGET_MIB, "total_ms");
            let rt = ratio(total, bound);
            let _ = writeln!(
                s,
                "- {TOTAL_TARGET_MIB} MiB, unshaped: {u} total / (bytes / raw link + {FIXED_COST_MIB} MiB total) = {} / ({} MB / {} MB/s + {} ms{fixed_from}) = {} (target <= 1.30): {}",
                total.map_or("-".into(), |x| format!("{x:.0}")),
                bytes.map_or("-".into(), |x| format!("{:.1}", x / 1e6)),
                f.raw_tcp_mb_s.map_or("-".into(), |x| format!("{x:.0}")),
                fixed.map_or("-".into(), |x| format!("{x:.0}")),
                fr(rt),
                verdict(rt.map(|x| x <= 1.3))
            );
        }
        let mem = &f.memory;
        let touch = summarize(&mem.touch_ms).map(|s| s.median);
        let free = summarize(&mem.free_ms).map(|s| s.median);
        if let (Some(touch), Some(free)) = (touch, free) {
            let wire = f
                .raw_tcp_mb_s
                .map(|r| (mem.mib << 20) as f64 / 1e6 / r * 1e3);
            let _ = writeln!(
                s,
                "  - for scale (memory probe, medians of {}): first touch of {} MiB (no MADV_HUGEPAGE, as memhog's) {touch:.0} ms, freeing it {free:.0} ms, beside its wire time {} ms: a restore allocates every page, the source's teardown frees them, on the CPUs that also carry the link",
                mem.touch_ms.len(),
                mem.mib,
                wire.map_or("-".into(), |x| format!("{x:.0}")),
            );
        }
    } else {
        for &u in &ums_methods {
            let t = m(u, 128, "total_ms");
            let _ = writeln!(
                s,
                "- {rate}, 128 MiB: {u} total = {} ms (target <= 1400): {}; {} x faster than the paper's 14.71 s (target >= 10): {}",
                t.map_or("-".into(), |x| format!("{x:.0}")),
                verdict(t.map(|x| x <= 1400.0)),
                fr(t.map(|x| PAPER_128_MS / x)),
                verdict(t.map(|x| PAPER_128_MS / x >= 10.0))
            );
        }
    }
    let tp = ratio(f.criu_sync_mb_s, f.raw_tcp_mb_s);
    let _ = writeln!(
        s,
        "- criu-sync throughput / raw TCP = {} / {} MB/s = {} (target >= 0.90; the criu-sync binary streaming a complete {} MiB random pages-1.img a->b, tmpfs both sides, vs tcpblast, medians of {} alternated probes): {}",
        f.criu_sync_mb_s.map_or("-".into(), |x| format!("{x:.0}")),
        f.raw_tcp_mb_s.map_or("-".into(), |x| format!("{x:.0}")),
        fr(tp),
        f.link.criu_sync_mib,
        f.link.criu_sync_mb_s.len(),
        verdict(tp.map(|x| x >= 0.9))
    );
    for &u in &ums_methods {
        let idle = max_over(&g, u, "shim_idle_rss_kib");
        let anon = max_over(&g, u, "shim_idle_anon_kib");
        let when = match (
            min_over(&g, u, "shim_idle_after_ms"),
            max_over(&g, u, "shim_idle_after_ms"),
        ) {
            (Some(a), Some(b)) if (b - a) < 50.0 => {
                format!("{:.1} s after the task started", a / 1e3)
            }
            (Some(a), Some(b)) => {
                format!("{:.1}-{:.1} s after the task started", a / 1e3, b / 1e3)
            }
            // result files written before the time was recorded
            _ => "when the migration started".into(),
        };
        let _ = writeln!(
            s,
            "- idle shim RSS, {u}: {when} (source shim, max over runs) = {} MiB, of which anonymous {} MiB (target <= 5 MiB RSS): {}",
            idle.map_or("-".into(), |x| format!("{:.1}", x / 1024.0)),
            anon.map_or("-".into(), |x| format!("{:.1}", x / 1024.0)),
            verdict(idle.map(|x| x / 1024.0 <= 5.0))
        );
    }
    let fails: Vec<&RunRecord> = f.runs.iter().filter(|r| !r.ok).collect();
    if !fails.is_empty() {
        let _ = writeln!(s, "\nFailed runs:\n");
        for r in fails {
            let _ = writeln!(
                s,
                "- {} {} MiB K={} rep {}: {}",
                r.method,
                r.size_mib,
                r.procs,
                r.rep,
                r.error.as_deref().unwrap_or("?")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(m: &str, size: u64, gap: f64, total: f64, ok: bool) -> RunRecord {
        let mut r = RunRecord::new(m, size, 1, 0);
        r.ok = ok;
        r.tick_gap_ms = Some(gap);
        r.total_ms = Some(total);
        r.phase("checkpoint", total / 2.0);
        r
    }

    #[test]
    fn summary_and_ratios() {
        let runs = vec![
            rec("ums", 128, 300.0, 600.0, true),
            rec("ums", 128, 500.0, 700.0, true),
            rec("ums", 128, 400.0, 650.0, true),
            rec("ums", 128, 9.0, 9.0, false),
            rec("page-server", 128, 800.0, 900.0, true),
            rec("stop-and-copy", 128, 1600.0, 1700.0, true),
        ];
        let g = summarize_runs(&runs);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].method, "ums");
        assert_eq!((g[0].runs, g[0].ok), (4, 3));
        assert_eq!(g[0].median("tick_gap_ms"), Some(400.0));
        assert_eq!(g[0].figures["phase.checkpoint"].max, 350.0);
        let f = BenchFile {
            rate: "off".into(),
            reps: 3,
            runs,
            raw_tcp_mb_s: Some(2000.0),
            criu_sync_mb_s: Some(1900.0),
            link: LinkProbe {
                criu_sync_mib: 512,
                criu_sync_mb_s: vec![1900.0, 1800.0, 1950.0],
                ..Default::default()
            },
            ..Default::default()
        };
        let md = markdown(&f);
        assert!(
            md.contains("| 1 | 128 | ums | 3/4 | 650 (600-700) | 400 (300-500) |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 128 | ums | 0.50 | 0.25 | 0.72 | 0.38 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "- 128 MiB, unshaped: ums downtime / page-server = 0.50 (target <= 0.70): met"
            ),
            "{md}"
        );
        // no post-copy run: no post-copy column, no line for ums-postcopy
        assert!(!md.contains("post-copy ms"), "{md}");
        assert!(!md.contains("ums-postcopy"), "{md}");
        assert!(
            md.contains("criu-sync throughput / raw TCP = 1900 / 2000 MB/s = 0.95 (target >= 0.90; the criu-sync binary streaming a complete 512 MiB"),
            "{md}"
        );
        assert!(md.contains("of 3 alternated probes): met"), "{md}");
        assert!(md.contains("Failed runs"));
    }

    /// A run of the issue's command (`--sizes 128,1024`, so with the 0 MiB calibration of the
    /// container-level methods) with all five methods; figures made up.
    fn issue_run() -> BenchFile {
        let mut runs = Vec::new();
        let mut add = |m: &str, size: u64, gap: f64, total: f64, post_copy: Option<f64>| {
            for rep in 0..3 {
                let mut r = rec(m, size, gap + rep as f64, total + rep as f64, true);
                r.rep = rep;
                r.bytes = Some(size * 1_048_576 + 2_000_000);
                if let Some(pc) = post_copy {
                    r.phase("post_copy", pc);
                }
                if m == "ums" || m == "ums-postcopy" {
                    r.shim_idle_rss_kib = Some(4400 + rep as u64 * 10);
                    r.shim_idle_anon_kib = Some(1380);
                    r.shim_idle_after_ms = Some(2000.0 + 200.0 * rep as f64);
                }
                runs.push(r);
            }
        };
        add("ums", 0, 150.0, 300.0, None);
        add("ums-postcopy", 0, 160.0, 320.0, Some(5.0));
        for (z, k) in [(128, 1.0), (1024, 8.0)] {
            add("ums", z, 400.0 * k, 600.0 * k, None);
            add("ums-postcopy", z, 200.0 * k, 700.0 * k, Some(300.0 * k));
            add("orchestrator", z, 500.0 * k, 650.0 * k, None);
            add("page-server", z, 800.0 * k, 900.0 * k, None);
            add("stop-and-copy", z, 1000.0 * k, 1100.0 * k, None);
        }
        BenchFile {
            rate: "off".into(),
            reps: 3,
            sizes_mib: vec![128, 1024],
            procs: vec![1],
            methods: [
                "ums",
                "ums-postcopy",
                "orchestrator",
                "stop-and-copy",
                "page-server",
            ]
            .map(String::from)
            .to_vec(),
            raw_tcp_mb_s: Some(2000.0),
            criu_sync_mb_s: Some(1900.0),
            memory: crate::memory::MemoryProbe {
                mib: 1024,
                touch_ms: vec![340.0, 330.0, 350.0],
                free_ms: vec![60.0, 70.0, 65.0],
                error: None,
            },
            runs,
            ..Default::default()
        }
    }

    #[test]
    fn every_ums_method_against_the_baselines() {
        let f = issue_run();
        let md = markdown(&f);
        // the table: the calibration rows, ums-postcopy after ums, a post-copy column
        assert!(
            md.contains("| restore ms | post-copy ms | MB moved |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 0 | ums | 3/3 | 301 (300-302) | 151 (150-152) |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 0 | ums-postcopy | 3/3 |"), "{md}");
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| 1 | 128 |"))
            .map(|l| l.split(" | ").nth(2).unwrap())
            .collect();
        assert_eq!(
            rows[..5],
            [
                "ums",
                "ums-postcopy",
                "stop-and-copy",
                "page-server",
                "orchestrator"
            ]
        );
        // ums-postcopy's post-copy phase, ums without one
        assert!(
            md.lines()
                .any(|l| l.starts_with("| 1 | 1024 | ums-postcopy |")
                    && l.contains("| - | - | 2400 | 1075.7 |")),
            "{md}"
        );
        // ratios: one row per UMS method and size, the calibration rows without baselines
        for row in [
            "| 1 | 128 | ums | 0.50 | 0.40 | 0.67 | 0.55 |",
            "| 1 | 128 | ums-postcopy | 0.25 | 0.20 | 0.78 | 0.64 |",
            "| 1 | 128 | orchestrator | 0.63 | 0.50 | 0.72 | 0.59 |",
            "| 1 | 1024 | ums-postcopy | 0.25 | 0.20 | 0.78 | 0.64 |",
        ] {
            assert!(md.contains(row), "{row}\n{md}");
        }
        // no baseline at 0 MiB (calibration only): no ratio row
        assert!(!md.contains("| 1 | 0 | ums | - |"), "{md}");
        // the targets, labelled by method, for both container-level methods (not orchestrator)
        for line in [
            "- 128 MiB, unshaped: ums downtime / page-server = 0.50 (target <= 0.70): met",
            "- 128 MiB, unshaped: ums-postcopy downtime / page-server = 0.25 (target <= 0.70): met",
            "- 1024 MiB, unshaped: ums downtime / page-server = 0.50 (target <= 0.85): met",
            "- 1024 MiB, unshaped: ums-postcopy downtime / page-server = 0.25 (target <= 0.85): met",
            // 4801 / (1075.7 MB / 2000 MB/s * 1e3 + 301) = 4801 / 838.9
            "- 1024 MiB, unshaped: ums total / (bytes / raw link + 0 MiB total) = 4801 / (1075.7 MB / 2000 MB/s + 301 ms, 0 MiB from the calibration runs) = 5.72 (target <= 1.30): MISSED",
            "- 1024 MiB, unshaped: ums-postcopy total / (bytes / raw link + 0 MiB total) = 5601 / (1075.7 MB / 2000 MB/s + 321 ms, 0 MiB from the calibration runs) = 6.52 (target <= 1.30): MISSED",
            // 1024 MiB = 1073.7 MB, / 2000 MB/s
            "  - for scale (memory probe, medians of 3): first touch of 1024 MiB (no MADV_HUGEPAGE, as memhog's) 340 ms, freeing it 65 ms, beside its wire time 537 ms",
            "- idle shim RSS, ums: 2.0-2.4 s after the task started (source shim, max over runs) = 4.3 MiB, of which anonymous 1.3 MiB (target <= 5 MiB RSS): met",
            "- idle shim RSS, ums-postcopy: 2.0-2.4 s after the task started",
        ] {
            assert!(md.contains(line), "{line}\n{md}");
        }
        assert!(!md.contains("orchestrator downtime /"), "{md}");
        assert!(!md.contains("idle shim RSS, orchestrator"), "{md}");
        assert!(!md.contains("n/a"), "{md}");

        // re-read from the JSON: the same report
        let json = serde_json::to_vec(&f).unwrap();
        let back: BenchFile = serde_json::from_slice(&json).unwrap();
        assert_eq!(markdown(&back), md);
    }

    #[test]
    fn total_target_without_a_0_mib_run_is_not_computed() {
        let mut f = issue_run();
        f.runs.retain(|r| r.size_mib != 0);
        let md = markdown(&f);
        assert!(
            md.contains("ums total / (bytes / raw link + 0 MiB total) = 4801 / (1075.7 MB / 2000 MB/s + - ms, no 0 MiB run) = - (target <= 1.30): n/a"),
            "{md}"
        );
    }

    #[test]
    fn total_target_with_0_mib_asked_for() {
        let mut f = issue_run();
        f.sizes_mib = vec![0, 128, 1024];
        let md = markdown(&f);
        assert!(
            md.contains("ums total / (bytes / raw link + 0 MiB total) = 4801 / (1075.7 MB / 2000 MB/s + 301 ms) = 5.72 (target <= 1.30): MISSED"),
            "{md}"
        );
    }

    #[test]
    fn shaped_targets_for_each_container_level_method() {
        let mut f = issue_run();
        f.rate = "1gbit".into();
        f.runs.retain(|r| r.size_mib == 128);
        let md = markdown(&f);
        for line in [
            "- 1gbit, 128 MiB: ums total = 601 ms (target <= 1400): met; 24.48 x faster than the paper's 14.71 s (target >= 10): met",
            "- 1gbit, 128 MiB: ums-postcopy total = 701 ms (target <= 1400): met",
        ] {
            assert!(md.contains(line), "{line}\n{md}");
        }
        assert!(!md.contains("unshaped:"), "{md}");
    }

    #[test]
    fn several_k() {
        let mut runs = Vec::new();
        for k in [1, 2, 4, 8] {
            for (m, gap) in [("ums", 100.0), ("page-server", 200.0)] {
                let mut r = rec(m, 128, gap * k as f64, 2.0 * gap * k as f64, true);
                r.procs = k;
                runs.push(r);
            }
        }
        let f = BenchFile {
            rate: "off".into(),
            reps: 1,
            sizes_mib: vec![128],
            procs: vec![1, 2, 4, 8],
            methods: vec!["ums".into(), "page-server".into()],
            runs,
            ..Default::default()
        };
        let md = markdown(&f);
        for k in [1, 2, 4, 8] {
            assert!(
                md.contains(&format!(
                    "| {k} | 128 | ums | 1/1 | {} | {} |",
                    200 * k,
                    100 * k
                )),
                "K={k}\n{md}"
            );
            assert!(
                md.contains(&format!("| {k} | 128 | ums | 0.50 | - | 0.50 | - |")),
                "{md}"
            );
        }
        // the targets are K=1's
        assert!(md.contains("Issue 4's targets (K=1)"), "{md}");
        assert!(
            md.contains("- 128 MiB, unshaped: ums downtime / page-server = 0.50"),
            "{md}"
        );
    }
}

//! The result file (JSON), the per-configuration summary and the Markdown table with ratios.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::record::{RunRecord, METHODS, PHASES};
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

/// The Markdown report: one row per configuration (median (min-max)), then the ratios.
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
    let _ = writeln!(s, "| K | MiB | method | ok | total ms | tick-gap downtime ms | tool downtime ms | frozen ms (CRIU) | checkpoint ms | transfer ms | restore ms | MB moved | MB/s | CPU s | shim src/dst peak RSS MiB | criu peak RSS MiB |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for x in &g {
        let fg = |k: &str| x.figures.get(k);
        let mib = |k: &str| fg(k).map(|v| format!("{:.1}", v.median / 1024.0));
        let shim = match (mib("shim_src_hwm_kib"), mib("shim_dst_hwm_kib")) {
            (None, None) => "-".to_string(),
            (a, b) => format!("{}/{}", a.unwrap_or("-".into()), b.unwrap_or("-".into())),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.procs,
            x.size_mib,
            x.method,
            x.ok,
            x.runs,
            fmt_s(fg("total_ms"), 1.0, 0),
            fmt_s(fg("tick_gap_ms"), 1.0, 0),
            fmt_s(fg("downtime_ms"), 1.0, 0),
            fmt_s(fg("frozen_ms"), 1.0, 0),
            fmt_s(fg("phase.checkpoint"), 1.0, 0),
            fmt_s(fg("phase.transfer"), 1.0, 0),
            fmt_s(fg("phase.restore"), 1.0, 0),
            fmt_s(fg("bytes"), 1e-6, 1),
            fmt_s(fg("throughput_mb_s"), 1.0, 0),
            fmt_s(fg("cpu_s"), 1.0, 2),
            shim,
            mib("criu_hwm_kib").unwrap_or("-".into()),
        );
    }
    let _ = writeln!(
        s,
        "\nRatios against the baselines of this run (medians; downtime = tick gap):\n"
    );
    let _ = writeln!(s, "| K | MiB | UMS/page-server downtime | UMS/stop-and-copy downtime | UMS/page-server total | UMS/stop-and-copy total |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let mut confs: Vec<(u64, u64)> = g.iter().map(|x| (x.procs, x.size_mib)).collect();
    confs.dedup();
    for &(p, z) in &confs {
        let m = |meth: &str, k: &str| find(&g, meth, z, p).and_then(|x| x.median(k));
        let _ = writeln!(
            s,
            "| {p} | {z} | {} | {} | {} | {} |",
            fr(ratio(
                m("ums", "tick_gap_ms"),
                m("page-server", "tick_gap_ms")
            )),
            fr(ratio(
                m("ums", "tick_gap_ms"),
                m("stop-and-copy", "tick_gap_ms")
            )),
            fr(ratio(m("ums", "total_ms"), m("page-server", "total_ms"))),
            fr(ratio(m("ums", "total_ms"), m("stop-and-copy", "total_ms"))),
        );
    }
    let _ = writeln!(s, "\nIssue 4's targets (K=1):\n");
    let m = |meth: &str, z: u64, k: &str| find(&g, meth, z, 1).and_then(|x| x.median(k));
    let shaped = f.rate != "off";
    if !shaped {
        let r128 = ratio(
            m("ums", 128, "tick_gap_ms"),
            m("page-server", 128, "tick_gap_ms"),
        );
        let _ = writeln!(
            s,
            "- 128 MiB, unshaped: UMS downtime / page-server = {} (target <= 0.70): {}",
            fr(r128),
            verdict(r128.map(|x| x <= 0.7))
        );
        let r1g = ratio(
            m("ums", 1024, "tick_gap_ms"),
            m("page-server", 1024, "tick_gap_ms"),
        );
        let _ = writeln!(
            s,
            "- 1024 MiB, unshaped: UMS downtime / page-server = {} (target <= 0.85): {}",
            fr(r1g),
            verdict(r1g.map(|x| x <= 0.85))
        );
        let bound = match (
            m("ums", 1024, "bytes"),
            f.raw_tcp_mb_s,
            m("ums", 0, "total_ms"),
        ) {
            (Some(b), Some(r), Some(fixed)) => Some(b / 1e6 / r * 1e3 + fixed),
            _ => None,
        };
        let rt = ratio(m("ums", 1024, "total_ms"), bound);
        let _ = writeln!(
            s,
            "- 1024 MiB, unshaped: UMS total / (bytes / raw link + 0 MiB total) = {} (target <= 1.30): {}",
            fr(rt),
            verdict(rt.map(|x| x <= 1.3))
        );
    } else {
        let t = m("ums", 128, "total_ms");
        let _ = writeln!(
            s,
            "- {rate}, 128 MiB: UMS total = {} ms (target <= 1400): {}; {} x faster than the paper's 14.71 s (target >= 10): {}",
            t.map_or("-".into(), |x| format!("{x:.0}")),
            verdict(t.map(|x| x <= 1400.0)),
            fr(t.map(|x| PAPER_128_MS / x)),
            verdict(t.map(|x| PAPER_128_MS / x >= 10.0))
        );
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
    let idle = g
        .iter()
        .filter(|x| x.method == "ums")
        .filter_map(|x| x.figures.get("shim_idle_rss_kib"))
        .map(|s| s.max)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let anon = g
        .iter()
        .filter(|x| x.method == "ums")
        .filter_map(|x| x.figures.get("shim_idle_anon_kib"))
        .map(|s| s.max)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let _ = writeln!(
        s,
        "- idle shim RSS (source shim before the migration, max over runs) = {} MiB, of which anonymous {} MiB (target <= 5 MiB RSS): {}",
        idle.map_or("-".into(), |x| format!("{:.1}", x / 1024.0)),
        anon.map_or("-".into(), |x| format!("{:.1}", x / 1024.0)),
        verdict(idle.map(|x| x / 1024.0 <= 5.0))
    );
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
    let _ = PHASES;
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
            md.contains("| 1 | 128 | 0.50 | 0.25 | 0.72 | 0.38 |"),
            "{md}"
        );
        assert!(
            md.contains("UMS downtime / page-server = 0.50 (target <= 0.70): met"),
            "{md}"
        );
        assert!(
            md.contains("criu-sync throughput / raw TCP = 1900 / 2000 MB/s = 0.95 (target >= 0.90; the criu-sync binary streaming a complete 512 MiB"),
            "{md}"
        );
        assert!(md.contains("of 3 alternated probes): met"), "{md}");
        assert!(md.contains("Failed runs"));
    }
}

//! ums-bench: UMS live migration against plain runc + CRIU baselines on the test bed
//! (hack/testbed.sh), interleaved per repetition; JSON, a Markdown table and PNG plots.
//! Driven by hack/bench.sh (which installs, builds and brings the test bed up).

mod criu_stats;
mod link;
mod memory;
mod methods;
mod plan;
mod plot;
mod record;
mod report;
mod stats;
mod sys;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

use methods::{Approach, Ctx, Spec, Ssh};
use record::{METHODS, PAGE_SERVER, STOP_AND_COPY};
use report::BenchFile;

#[derive(Parser, Debug)]
#[command(
    name = "ums-bench",
    about = "Migrates memhog services a->b on the test bed with UMS and with plain runc+CRIU baselines; prints and writes figures",
    long_about = None
)]
struct Cli {
    /// Memory sizes (MiB), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,128")]
    sizes: Vec<u64>,
    /// Process counts K, comma-separated (memhog --procs K).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    procs: Vec<u64>,
    /// Repetitions of each (size, K, method).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Methods, comma-separated: ums, ums-held (`ums migrate --post-copy --hold`),
    /// ums-postcopy (`ums migrate --post-copy`), orchestrator (UMS orchestrator-level),
    /// stop-and-copy, page-server. ums-held, ums-postcopy and orchestrator are skipped with a
    /// note when `ums migrate` lacks --hold / --post-copy / --approach.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ums,ums-held,ums-postcopy,orchestrator,stop-and-copy,page-server"
    )]
    methods: Vec<String>,
    /// MiB held by each of the K-1 children (memhog --child-mib).
    #[arg(long, default_value_t = 0)]
    child_mib: u64,
    /// Where result files go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The harness's scratch dir (runc roots, bundles, images, ssh keys).
    #[arg(long, default_value = "/run/ums-bench")]
    work: PathBuf,
    /// Static memhog (default: $UMS_WORKLOADS_DIR/memhog).
    #[arg(long)]
    workloads_dir: Option<PathBuf>,
    /// Only re-render the table and plots of an existing result file.
    #[arg(long)]
    render: Option<PathBuf>,
    /// MiB of random pages-1.img the link probe streams a->b with the criu-sync binary
    /// (tmpfs both sides), next to raw TCP (tcpblast); 0: raw TCP only.
    #[arg(long, default_value_t = 512)]
    sync_mib: u64,
    /// Repetitions of the link probe (raw TCP and criu-sync alternated; medians reported).
    #[arg(long, default_value_t = 3)]
    link_reps: u32,
    /// The command line to record in the result (hack/bench.sh passes its own).
    #[arg(long, default_value = "")]
    command: String,
}

fn env(k: &str, default: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| default.to_string())
}

fn machine(load_start: bool) -> report::Machine {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    report::Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu,
        loadavg_start: if load_start {
            load.clone()
        } else {
            String::new()
        },
        loadavg_end: if load_start { String::new() } else { load },
    }
}

fn write_outputs(f: &mut BenchFile, out: &std::path::Path, stem: &str) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| e.to_string())?;
    f.summary = report::summarize_runs(&f.runs);
    let json = out.join(format!("{stem}.json"));
    fs::write(
        &json,
        serde_json::to_vec_pretty(f).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let md = report::markdown(f);
    let head = format!(
        "# ums-bench {}\n\nCommand: `{}`\n\n",
        f.started_at, f.command
    );
    fs::write(out.join("latest.md"), format!("{head}{md}")).map_err(|e| e.to_string())?;
    println!("{md}");
    let plots = plot::render_all(f, out).map_err(|e| format!("plots: {e}"))?;
    eprintln!(
        "ums-bench: wrote {} and {}/latest.md",
        json.display(),
        out.display()
    );
    for p in plots {
        eprintln!("ums-bench: wrote {}", p.display());
    }
    Ok(())
}

/// Re-renders the table and plots of a result file next to it.
fn render(p: &std::path::Path) -> Result<(), String> {
    let raw = fs::read(p).map_err(|e| e.to_string())?;
    let mut f: BenchFile =
        serde_json::from_slice(&raw).map_err(|e| format!("not a ums-bench result file: {e}"))?;
    let out = p
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let stem = p
        .file_stem()
        .ok_or("no file name")?
        .to_string_lossy()
        .into_owned();
    write_outputs(&mut f, &out, &stem)
}

fn main() {
    let cli = Cli::parse();
    if let Some(p) = &cli.render {
        if let Err(e) = render(p) {
            eprintln!("ums-bench: --render {}: {e}", p.display());
            std::process::exit(1);
        }
        return;
    }
    for m in &cli.methods {
        if !METHODS.contains(&m.as_str()) {
            eprintln!("ums-bench: unknown method {m}");
            std::process::exit(2);
        }
    }
    let mut cli = cli;
    let mut notes = Vec::new();
    let bin_dir = PathBuf::from(env("UMS_BIN_DIR", "target/release"));
    cli.methods.retain(|m| {
        let Some(a) = Approach::of_method(m) else {
            return true;
        };
        match methods::approach_available(&bin_dir, a) {
            Ok(()) => true,
            Err(e) => {
                let note = format!("method {m} skipped: {e}");
                eprintln!("ums-bench: {note}");
                notes.push(note);
                false
            }
        }
    });
    let calibrate = plan::calibration(
        &cli.sizes,
        &cli.procs,
        &cli.methods,
        env("UMS_TESTBED_RATE", "off") != "off",
    );
    if !calibrate.is_empty() {
        let note = format!(
            "0 MiB calibration: {} at K={} ({} repetitions) run as ordinary 0 MiB runs (the table's 0 MiB rows), as the sizes have no 0 and the {} MiB total target needs the 0 MiB run's total",
            calibrate.join(", "),
            report::TARGET_K,
            cli.reps,
            report::TOTAL_TARGET_MIB
        );
        eprintln!("ums-bench: {note}");
        notes.push(note);
    }
    let Some(wl) = cli
        .workloads_dir
        .clone()
        .or_else(|| std::env::var("UMS_WORKLOADS_DIR").ok().map(PathBuf::from))
    else {
        eprintln!(
            "ums-bench: no workloads: give --workloads-dir or UMS_WORKLOADS_DIR (hack/build-workloads.sh prints it)"
        );
        std::process::exit(2);
    };
    let split = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let now = sys::realtime_ns();
    let mut ctx = Ctx {
        bin_dir,
        memhog: wl.join("memhog"),
        work: cli.work.clone(),
        testbed_dir: PathBuf::from(env("UMS_TESTBED_DIR", "/run/ums-testbed")),
        ctr_a: split(env(
            "UMS_A_CTR",
            "ctr --address /run/ums-testbed/a/containerd.sock",
        )),
        ctr_b: split(env(
            "UMS_B_CTR",
            "/opt/ums/containerd2/usr/bin/ctr --address /run/ums-testbed/b/containerd.sock",
        )),
        url_a: env("UMS_A_URL", "http://10.77.0.1:7400"),
        url_b: env("UMS_B_URL", "http://10.77.0.2:7400"),
        ns_a: env("UMS_A_NETNS", "ums-a"),
        ns_b: env("UMS_B_NETNS", "ums-b"),
        ip_b: env("UMS_B_IP", "10.77.0.2"),
        child_mib: cli.child_mib,
        tag: format!("{:x}", (now / 1_000_000_000) % 0x10000),
        ssh: None,
        port_seq: 0,
    };
    let rate = env("UMS_TESTBED_RATE", "off");
    let started = String::from_utf8_lossy(
        &Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%dT%H:%M:%SZ")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_string();
    let stem = format!(
        "{}-{}",
        started.replace(':', ""),
        if rate == "off" { "unshaped" } else { &rate }
    );
    let mut f = BenchFile {
        schema: report::SCHEMA.into(),
        started_at: started,
        command: if cli.command.is_empty() {
            std::env::args().collect::<Vec<_>>().join(" ")
        } else {
            cli.command.clone()
        },
        machine: machine(true),
        rate: rate.clone(),
        sizes_mib: cli.sizes.clone(),
        procs: cli.procs.clone(),
        reps: cli.reps,
        child_mib: cli.child_mib,
        methods: cli.methods.clone(),
        notes,
        ..Default::default()
    };
    if let Err(e) = fs::create_dir_all(&cli.work) {
        eprintln!("ums-bench: work dir {}: {e}", cli.work.display());
        std::process::exit(1);
    }
    let baselines = cli
        .methods
        .iter()
        .any(|m| m == STOP_AND_COPY || m == PAGE_SERVER);
    if baselines {
        if let Err(e) = methods::prepare_rootfs(&ctx) {
            eprintln!("ums-bench: rootfs: {e}");
            std::process::exit(1);
        }
        match Ssh::start(&cli.work, &ctx.ns_a, &ctx.ns_b, &ctx.ip_b) {
            Ok(s) => ctx.ssh = Some(s),
            Err(e) => {
                eprintln!("ums-bench: ssh: {e}");
                std::process::exit(1);
            }
        }
    }
    let probe = link::probe(
        &wl.join("tcpblast"),
        &ctx.bin_dir.join("criu-sync"),
        &ctx.ns_a,
        &ctx.ns_b,
        &ctx.ip_b,
        std::path::Path::new("/dev/shm/ums-bench-link"),
        cli.sync_mib,
        cli.link_reps,
        2,
    );
    let med = |v: &[f64]| stats::summarize(v).map(|s| s.median);
    f.raw_tcp_mb_s = med(&probe.raw_tcp_mb_s);
    f.criu_sync_mb_s = med(&probe.criu_sync_mb_s);
    f.link = report::LinkProbe {
        raw_tcp_mb_s: probe.raw_tcp_mb_s,
        criu_sync_mb_s: probe.criu_sync_mb_s,
        criu_sync_mib: cli.sync_mib,
        error: probe.error,
    };
    let show = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.0}"));
    eprintln!(
        "ums-bench: link {rate}, raw TCP a->b {} MB/s, criu-sync a->b ({} MiB) {} MB/s{}",
        show(f.raw_tcp_mb_s),
        cli.sync_mib,
        show(f.criu_sync_mb_s),
        f.link
            .error
            .as_deref()
            .map_or(String::new(), |e| format!(" ({e})"))
    );
    f.memory = memory::probe(report::TOTAL_TARGET_MIB, cli.link_reps);
    eprintln!(
        "ums-bench: memory, {} MiB: first touch {} ms, freeing {} ms{}",
        f.memory.mib,
        show(med(&f.memory.touch_ms)),
        show(med(&f.memory.free_ms)),
        f.memory
            .error
            .as_deref()
            .map_or(String::new(), |e| format!(" ({e})"))
    );
    let steps = plan::plan(&cli.sizes, &cli.procs, cli.reps, &cli.methods, &calibrate);
    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        let (m, size, procs, rep) = (&step.method, step.size_mib, step.procs, step.rep);
        let spec = Spec {
            size_mib: size,
            procs,
            rep,
        };
        let r = match (Approach::of_method(m), m.as_str()) {
            (Some(a), _) => methods::ums(&mut ctx, &spec, a),
            (None, STOP_AND_COPY) => methods::baseline(&mut ctx, &spec, false),
            (None, _) => methods::baseline(&mut ctx, &spec, true),
        };
        eprintln!(
            "ums-bench: [{}/{total}] {m:<13} {size:>5} MiB K={procs} rep {rep}: {}",
            i + 1,
            if r.ok {
                format!(
                    "total {:.0} ms, tick gap {:.0} ms, frozen {:.0} ms, {:.1} MB",
                    r.total_ms.unwrap_or(f64::NAN),
                    r.tick_gap_ms.unwrap_or(f64::NAN),
                    r.frozen_ms.unwrap_or(f64::NAN),
                    r.bytes.unwrap_or(0) as f64 / 1e6
                )
            } else {
                format!("FAILED: {}", r.error.as_deref().unwrap_or("?"))
            }
        );
        f.runs.push(r);
    }
    if let Some(s) = ctx.ssh.take() {
        s.stop();
    }
    f.machine.loadavg_end = machine(false).loadavg_end;
    if let Err(e) = write_outputs(&mut f, &cli.out, &stem) {
        eprintln!("ums-bench: {e}");
        std::process::exit(1);
    }
}

//! The methods (UMS container-level with or without post-copy, UMS orchestrator-level, and the
//! two runc + CRIU baselines), each migrating one memhog service from system a to system b.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::criu_stats;
use crate::record::RunRecord;
use crate::stats;
use crate::sys::{self, in_netns, run, run_out, wait_for, Result, Sampler};

/// The test bed and the harness's own directories.
pub struct Ctx {
    pub bin_dir: PathBuf,
    pub memhog: PathBuf,
    pub work: PathBuf,
    pub testbed_dir: PathBuf,
    pub ctr_a: Vec<String>,
    pub ctr_b: Vec<String>,
    pub url_a: String,
    pub url_b: String,
    pub ns_a: String,
    pub ns_b: String,
    pub ip_b: String,
    pub child_mib: u64,
    pub tag: String,
    pub ssh: Option<Ssh>,
    pub port_seq: u16,
}

/// One service to migrate.
pub struct Spec {
    pub size_mib: u64,
    pub procs: u64,
    pub rep: u32,
}

impl Spec {
    fn memhog_args(&self, tick: &str) -> Vec<String> {
        vec![
            "/usr/local/bin/memhog".into(),
            "--mib".into(),
            self.size_mib.to_string(),
            "--procs".into(),
            self.procs.to_string(),
            "--child-mib".into(),
            String::new(), // filled by the caller
            "--tick".into(),
            tick.into(),
        ]
    }
}

fn ctr(args: &[String]) -> Command {
    let mut c = Command::new(&args[0]);
    c.args(&args[1..]);
    c
}

/// Ticks readable at a path; waits until at least `n` exist after `after_ns`.
fn wait_ticks(path: &Path, after_ns: u64, n: usize, timeout: Duration) -> Result<Vec<u64>> {
    wait_for(timeout, Duration::from_millis(20), || {
        let t = stats::parse_ticks(&fs::read_to_string(path).ok()?);
        (stats::ticks_after(&t, after_ns) >= n).then_some(t)
    })
    .ok_or_else(|| format!("no ticks after the migration in {}", path.display()))
}

/// Waits for memhog's `verify ok|BAD` line in the tick file.
fn wait_verify(path: &Path) -> Option<String> {
    wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
        let s = fs::read_to_string(path).ok()?;
        s.lines().rev().find_map(|l| {
            l.strip_prefix("verify ")
                .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        })
    })
}

fn finish_gap(r: &mut RunRecord, ticks: &[u64], t0: u64, t1: u64) {
    r.tick_gap_ms = stats::tick_gap_ms(ticks, t0, t1);
}

// ---------------------------------------------------------------- UMS

fn ums_matcher(name: &str, testbed: &Path) -> sys::Matcher {
    let id = format!(" -id {name} ");
    let a = format!("{}/a/", testbed.display());
    let b = format!("{}/b/", testbed.display());
    Box::new(move |_pid, comm, cl| {
        if comm == "criu" {
            return Some("criu".into());
        }
        if comm.starts_with("containerd-shim") && format!("{cl} ").contains(&id) {
            if cl.contains(&a) {
                return Some("shim-a".into());
            }
            if cl.contains(&b) {
                return Some("shim-b".into());
            }
        }
        None
    })
}

fn task_pid(ctr_args: &[String], name: &str) -> Option<i32> {
    let mut c = ctr(ctr_args);
    c.args(["task", "ps", name]);
    let out = run_out(&mut c).ok()?;
    out.lines().nth(1)?.split_whitespace().next()?.parse().ok()
}

fn ums_cleanup(ctr_args: &[String], name: &str) {
    let mut c = ctr(ctr_args);
    c.args(["task", "kill", "-s", "SIGKILL", name]);
    if run(&mut c).is_ok() {
        std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..20 {
        let mut c = ctr(ctr_args);
        c.args(["task", "rm", "-f", name]);
        let _ = run(&mut c);
        let mut c = ctr(ctr_args);
        c.args(["container", "rm", name]);
        match run(&mut c) {
            Ok(_) => return,
            Err(e) if e.contains("not found") => return,
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn coordinator_cpu(ctx: &Ctx) -> f64 {
    ["a", "b"]
        .iter()
        .filter_map(|s| {
            let p = fs::read_to_string(ctx.testbed_dir.join(s).join("coordinator.pid")).ok()?;
            sys::proc_cpu_s(p.trim().parse().ok()?)
        })
        .sum()
}

/// How `ums migrate` moves the service: which runtime the container is created with and
/// which flags are asked for. Everything else is the same code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approach {
    /// Container-level (the ums shim, `io.containerd.ums.v1`): the default approach.
    Container,
    /// Container-level with `--post-copy` (CRIU lazy pages: the service restarts at b before
    /// its memory has arrived; the pages follow).
    ContainerPostCopy,
    /// Container-level with `--post-copy --hold` (lazy pages, the restored service held frozen
    /// until every page is in).
    ContainerHeld,
    /// Orchestrator-level: a plain runc container (`io.containerd.runc.v2`),
    /// `--approach orchestrator`.
    Orchestrator,
}

impl Approach {
    /// The approach of a UMS method name (None for the baselines).
    pub fn of_method(m: &str) -> Option<Approach> {
        match m {
            crate::record::UMS => Some(Approach::Container),
            crate::record::UMS_POSTCOPY => Some(Approach::ContainerPostCopy),
            crate::record::UMS_HELD => Some(Approach::ContainerHeld),
            crate::record::ORCHESTRATOR => Some(Approach::Orchestrator),
            _ => None,
        }
    }

    fn method(self) -> &'static str {
        match self {
            Approach::Container => crate::record::UMS,
            Approach::ContainerPostCopy => crate::record::UMS_POSTCOPY,
            Approach::ContainerHeld => crate::record::UMS_HELD,
            Approach::Orchestrator => crate::record::ORCHESTRATOR,
        }
    }

    fn runtime(self) -> &'static str {
        match self {
            Approach::Container | Approach::ContainerPostCopy | Approach::ContainerHeld => {
                "io.containerd.ums.v1"
            }
            Approach::Orchestrator => "io.containerd.runc.v2",
        }
    }

    fn migrate_args(self) -> &'static [&'static str] {
        match self {
            Approach::Container => &[],
            Approach::ContainerPostCopy => &["--post-copy"],
            Approach::ContainerHeld => &["--post-copy", "--hold"],
            Approach::Orchestrator => &["--approach", "orchestrator"],
        }
    }

    /// The flag of `ums migrate` this approach needs beyond the default one, and what it is.
    pub fn needs_flag(self) -> Option<(&'static str, &'static str)> {
        match self {
            Approach::Container => None,
            Approach::ContainerPostCopy => Some(("--post-copy", "post-copy migration")),
            Approach::ContainerHeld => Some(("--hold", "held post-copy migration")),
            Approach::Orchestrator => Some(("--approach", "orchestrator-level migration")),
        }
    }

    /// Container-level: the ums shim holds the service and drops its clean pages once settled
    /// (shim/src/resident.rs), so its idle RSS is sampled after that.
    fn ums_shim(self) -> bool {
        self != Approach::Orchestrator
    }
}

/// Whether `ums migrate` can do this approach (knows its flag): `Err` says why not.
pub fn approach_available(bin_dir: &Path, approach: Approach) -> Result<()> {
    let Some((flag, what)) = approach.needs_flag() else {
        return Ok(());
    };
    let out = Command::new(bin_dir.join("ums"))
        .args(["migrate", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", bin_dir.join("ums").display()))?;
    let help = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if help.contains(flag) {
        Ok(())
    } else {
        Err(format!(
            "this `ums migrate` has no {flag} ({what} not built in)"
        ))
    }
}

/// The shim drops its clean file pages 1 s after a Start (shim/src/resident.rs, SETTLE): the
/// idle figure is sampled no earlier than this after the task started...
pub const IDLE_MIN_AGE: Duration = Duration::from_secs(2);
/// ...once its VmRSS did not fall between two samples this far apart...
pub const IDLE_STEP: Duration = Duration::from_millis(200);
/// ...or at this age at the latest (the last sample is taken then, whatever it is).
pub const IDLE_MAX_AGE: Duration = Duration::from_secs(5);

/// Decides when the source shim's VmRSS is its idle figure, from samples taken every
/// [`IDLE_STEP`] after the task started. Waiting for the age alone could sample a drop still
/// in progress, and "not falling" alone would accept the plateau before the drop.
#[derive(Debug, Default)]
pub struct IdleSettle {
    prev_kib: Option<u64>,
}

impl IdleSettle {
    /// Feeds one VmRSS sample taken `age` after the task started: true when it is the idle
    /// figure (old enough and not below the sample before it, or [`IDLE_MAX_AGE`] reached).
    pub fn settled(&mut self, age: Duration, rss_kib: u64) -> bool {
        let steady = self.prev_kib.is_some_and(|p| rss_kib >= p);
        self.prev_kib = Some(rss_kib);
        (age >= IDLE_MIN_AGE && steady) || age >= IDLE_MAX_AGE
    }
}

/// VmRSS / RssAnon (KiB) of a's shim of the service and when they were read (ms after the
/// task started). Container-level: waits until the shim has settled ([`IdleSettle`]);
/// otherwise reads them at once. None when the shim is not found.
fn idle_shim(ctx: &Ctx, name: &str, task_started: Instant, settle: bool) -> Option<IdleShim> {
    let matcher = ums_matcher(name, &ctx.testbed_dir);
    let pid = sys::find_pid(&matcher, "shim-a")?;
    let mut s = IdleSettle::default();
    loop {
        let age = task_started.elapsed();
        let rss = sys::proc_status_kib(pid, "VmRSS:")?;
        if !settle || s.settled(age, rss) {
            return Some(IdleShim {
                rss_kib: rss,
                anon_kib: sys::proc_status_kib(pid, "RssAnon:"),
                after_ms: age.as_secs_f64() * 1e3,
            });
        }
        std::thread::sleep(IDLE_STEP);
    }
}

struct IdleShim {
    rss_kib: u64,
    anon_kib: Option<u64>,
    after_ms: f64,
}

pub fn ums(ctx: &mut Ctx, spec: &Spec, approach: Approach) -> RunRecord {
    let name = format!(
        "bench-{}-{}m{}p{}-{}",
        approach.method(),
        spec.size_mib,
        spec.procs,
        spec.rep,
        ctx.tag
    );
    let mut r = RunRecord::new(approach.method(), spec.size_mib, spec.procs, spec.rep);
    let res = ums_inner(ctx, spec, &name, approach, &mut r);
    ums_cleanup(&ctx.ctr_b, &name);
    ums_cleanup(&ctx.ctr_a, &name);
    if let Err(e) = res {
        r.ok = false;
        r.error = Some(e);
    }
    r
}

fn ums_inner(
    ctx: &Ctx,
    spec: &Spec,
    name: &str,
    approach: Approach,
    r: &mut RunRecord,
) -> Result<()> {
    ums_cleanup(&ctx.ctr_a, name);
    ums_cleanup(&ctx.ctr_b, name);
    let mut args = spec.memhog_args("/tmp/ticks");
    args[6] = ctx.child_mib.to_string();
    let err = ctx.work.join(format!("{name}.ctr.err"));
    let mut c = ctr(&ctx.ctr_a);
    c.args([
        "run",
        "--runtime",
        approach.runtime(),
        "-d",
        "localhost/ums/memhog:1",
        name,
    ])
    .args(&args)
    .stdout(Stdio::null())
    .stderr(fs::File::create(&err).map_err(|e| e.to_string())?);
    // stdin /dev/null and stdout/stderr to a file: the detached task inherits ctr's stdio.
    run(&mut c).map_err(|e| format!("{e}: {}", fs::read_to_string(&err).unwrap_or_default()))?;
    // `ctr run -d` returns once the task is started
    let task_started = Instant::now();
    let _ = fs::remove_file(&err);
    let pid = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        task_pid(&ctx.ctr_a, name)
    })
    .ok_or("no pid for the service on a")?;
    let ticks_a = PathBuf::from(format!("/proc/{pid}/root/tmp/ticks"));
    wait_ticks(&ticks_a, 0, 3, Duration::from_secs(180))?;
    if let Some(idle) = idle_shim(ctx, name, task_started, approach.ums_shim()) {
        r.shim_idle_rss_kib = Some(idle.rss_kib);
        r.shim_idle_anon_kib = idle.anon_kib;
        r.shim_idle_after_ms = Some(idle.after_ms);
    }

    let sampler = Sampler::start(
        ums_matcher(name, &ctx.testbed_dir),
        Duration::from_millis(20),
    );
    let coord0 = coordinator_cpu(ctx);
    let cpu0 = sys::children_cpu_s();
    r.started_at_ns = sys::realtime_ns();
    let mut c = in_netns(&ctx.ns_a, &ctx.bin_dir.join("ums").to_string_lossy());
    c.args([
        "migrate",
        "--from",
        &ctx.url_a,
        "--to",
        &ctx.url_b,
        &format!("default/{name}"),
        "--json",
    ])
    .args(approach.migrate_args());
    let out = run(&mut c);
    let t_end = sys::realtime_ns();
    let cpu1 = sys::children_cpu_s();
    let coord1 = coordinator_cpu(ctx);
    let samples = sampler.finish();
    let out = out?;
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "ums migrate --json: {e}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    let f = |k: &str| j.get(k).and_then(|v| v.as_f64());
    if let Some(p) = j.get("phases_ms").and_then(|p| p.as_object()) {
        for (k, v) in p {
            if let Some(v) = v.as_f64() {
                r.phase(k, v);
            }
        }
    }
    r.total_ms = f("total_ms");
    r.frozen_ms = f("frozen_ms");
    r.downtime_ms = f("downtime_ms");
    r.bytes = j.get("bytes").and_then(|v| v.as_u64());
    let flag = |k: &str| j.get(k).and_then(|v| v.as_bool()) == Some(true);
    let (post_copy, hold) = (flag("post_copy"), flag("hold"));
    // Where the pages cross: post-copy's after the restore, container-level pre-copy's during
    // it, the orchestrator-level's in the dump.
    let active: &[&str] = match (post_copy, approach) {
        (true, _) => &["checkpoint", "transfer", "post_copy"],
        (false, Approach::Container) => &["checkpoint", "transfer", "restore"],
        _ => &["checkpoint", "transfer"],
    };
    let xfer = active
        .iter()
        .filter_map(|p| r.phases_ms.get(*p))
        .sum::<f64>();
    if let (Some(b), true) = (r.bytes, xfer > 0.0) {
        r.throughput_mb_s = Some(b as f64 / 1e6 / (xfer / 1e3));
    }
    r.cpu_s =
        Some(sys::cpu_sum_s(&samples) - cpu_sum_criu(&samples) + (cpu1 - cpu0) + (coord1 - coord0));
    r.shim_src_hwm_kib = sys::peak_kib(&samples, "shim-a");
    r.shim_dst_hwm_kib = sys::peak_kib(&samples, "shim-b");
    r.criu_hwm_kib = sys::peak_kib(&samples, "criu");
    r.extra = Some(j);
    let want = match approach {
        Approach::ContainerPostCopy => (true, false),
        Approach::ContainerHeld => (true, true),
        Approach::Container | Approach::Orchestrator => (false, false),
    };
    if (post_copy, hold) != want {
        // the figures would be filed under the wrong method
        return Err(format!(
            "ums migrate {:?} reported post_copy: {post_copy}, hold: {hold}",
            approach.migrate_args()
        ));
    }

    let pid_b = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        task_pid(&ctx.ctr_b, name)
    })
    .ok_or("no pid for the service on b")?;
    let ticks_b = PathBuf::from(format!("/proc/{pid_b}/root/tmp/ticks"));
    let ticks = wait_ticks(&ticks_b, t_end, 5, Duration::from_secs(15))?;
    finish_gap(r, &ticks, r.started_at_ns, t_end);
    let mut c = ctr(&ctx.ctr_b);
    c.args(["task", "kill", "-s", "SIGUSR1", name]);
    run(&mut c)?;
    r.verify = wait_verify(&ticks_b);
    r.ok = r.verify.as_deref() == Some("ok");
    if !r.ok {
        r.error = Some(format!("memory verification at b: {:?}", r.verify));
    }
    Ok(())
}

/// criu runs as a child of runc, itself a child of the shim: its CPU is already in the shim's
/// cutime/cstime once waited for; the criu samples only serve the peak RSS.
fn cpu_sum_criu(s: &std::collections::HashMap<i32, sys::ProcSample>) -> f64 {
    s.values()
        .filter(|p| p.label == "criu")
        .map(sys::ProcSample::cpu_in_window_s)
        .sum()
}

// ---------------------------------------------------------------- ssh for the baselines

/// An sshd inside b's namespace with a throwaway host key and an authorized key made for the
/// run, and one ssh master connection from a that the baselines' rsync/tar go through.
pub struct Ssh {
    dir: PathBuf,
    sshd: Child,
    master: Child,
    pub ip: String,
}

pub const SSH_PORT: u16 = 2222;

impl Ssh {
    pub fn start(work: &Path, ns_a: &str, ns_b: &str, ip_b: &str) -> Result<Ssh> {
        let dir = work.join("ssh");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;
        for k in ["host_key", "id"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(k)))?;
        }
        fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).map_err(|e| e.to_string())?;
        let cfg = format!(
            "ListenAddress {ip_b}\nPort {SSH_PORT}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile none\nSubsystem sftp internal-sftp\n",
            d = dir.display()
        );
        fs::write(dir.join("sshd_config"), cfg).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("sshd.log")).map_err(|e| e.to_string())?;
        let sshd = in_netns(ns_b, "/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("sshd: {e}"))?;
        let mut s = Ssh {
            dir: dir.clone(),
            sshd,
            // placeholder replaced below
            master: Command::new("true").spawn().map_err(|e| e.to_string())?,
            ip: ip_b.to_string(),
        };
        let _ = s.master.wait();
        std::thread::sleep(Duration::from_millis(300));
        s.master = in_netns(ns_a, "ssh")
            .args(s.opts())
            .args(["-M", "-N"])
            .arg(format!("root@{ip_b}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("master.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("ssh master: {e}"))?;
        let ok = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            let mut c = in_netns(ns_a, "ssh");
            c.args(s.opts())
                .args(["-O", "check"])
                .arg(format!("root@{ip_b}"));
            run(&mut c).ok()
        });
        if ok.is_none() {
            return Err(format!(
                "ssh to {ip_b}:{SSH_PORT} did not come up: {} {}",
                fs::read_to_string(dir.join("sshd.log")).unwrap_or_default(),
                fs::read_to_string(dir.join("master.log")).unwrap_or_default()
            ));
        }
        Ok(s)
    }

    /// ssh options (through the master connection).
    pub fn opts(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            "-i".into(),
            format!("{d}/id"),
            "-p".into(),
            SSH_PORT.to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-S".into(),
            format!("{d}/master.sock"),
        ]
    }

    /// The `-e` of rsync / the prefix of a shell pipeline.
    pub fn command_line(&self) -> String {
        format!("ssh {}", self.opts().join(" "))
    }

    pub fn stop(mut self) {
        for c in [&mut self.master, &mut self.sshd] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- runc baselines

/// The stdio of a runc container: pipes (a host file there fails the dump), kept open by the
/// harness and drained into a buffer.
struct Pipes {
    _stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
}

/// Runs a `runc run -d` / `runc restore -d` whose container inherits pipes from us.
fn runc_detached(mut c: Command) -> Result<Pipes> {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = sys::show(&c);
    let mut child = c.spawn().map_err(|e| format!("{desc}: {e}"))?;
    let out = Arc::new(Mutex::new(Vec::new()));
    for mut rd in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let o = out.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = rd.read(&mut b) {
                if n == 0 {
                    break;
                }
                o.lock().expect("lock").extend_from_slice(&b[..n]);
            }
        });
    }
    let stdin = child.stdin.take();
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        std::thread::sleep(Duration::from_millis(100));
        let o = String::from_utf8_lossy(&out.lock().expect("lock")).into_owned();
        return Err(format!("{desc} failed ({st}): {}", o.trim()));
    }
    Ok(Pipes { _stdin: stdin, out })
}

/// The busybox + static memhog rootfs of each system (made once per run of the harness).
pub fn prepare_rootfs(ctx: &Ctx) -> Result<()> {
    for s in ["a", "b"] {
        let root = ctx.work.join(s).join("rootfs");
        for d in [
            "bin",
            "tmp",
            "proc",
            "dev",
            "sys/fs/cgroup",
            "usr/local/bin",
            "etc",
        ] {
            fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
        }
        fs::copy("/bin/busybox", root.join("bin/busybox"))
            .map_err(|e| format!("/bin/busybox: {e}"))?;
        fs::copy(&ctx.memhog, root.join("usr/local/bin/memhog"))
            .map_err(|e| format!("{}: {e}", ctx.memhog.display()))?;
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin/sh"));
    }
    Ok(())
}

/// config.json for one container on one system: memhog, no terminal, the caller's network
/// namespace (the system's: runc runs under `nsenter --net`), no /sys mounts, its own cgroup.
fn write_bundle(ctx: &Ctx, sys_name: &str, id: &str, args: &[String]) -> Result<PathBuf> {
    let bundle = ctx.work.join(sys_name).join("bundles").join(id);
    let _ = fs::remove_dir_all(&bundle);
    fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    run(Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle))?;
    let p = bundle.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&p).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = args.into();
    c["root"]["path"] = ctx
        .work
        .join(sys_name)
        .join("rootfs")
        .to_string_lossy()
        .into();
    c["root"]["readonly"] = false.into();
    if let Some(ns) = c["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    if let Some(m) = c["mounts"].as_array_mut() {
        m.retain(|m| !m["destination"].as_str().unwrap_or("").starts_with("/sys"));
    }
    c["linux"]["cgroupsPath"] = format!("/ums-bench-{sys_name}/{id}").into();
    fs::write(
        &p,
        serde_json::to_vec_pretty(&c).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(bundle)
}

fn runc_root(ctx: &Ctx, s: &str) -> PathBuf {
    ctx.work.join(s).join("runc")
}

fn runc_cleanup(ctx: &Ctx, id: &str) {
    for s in ["a", "b"] {
        let root = runc_root(ctx, s);
        let _ = run(Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["kill", id, "KILL"]));
        std::thread::sleep(Duration::from_millis(100));
        let _ = run(Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", id]));
        let w = ctx.work.join(s);
        let _ = fs::remove_dir_all(w.join("bundles").join(id));
        let _ = fs::remove_dir_all(w.join("img").join(id));
        let _ = fs::remove_file(w.join("rootfs/tmp").join(format!("ticks-{id}")));
        for c in [
            "cpu",
            "memory",
            "pids",
            "devices",
            "freezer",
            "blkio",
            "cpuset",
            "cpuacct",
            "systemd",
            "net_cls",
            "perf_event",
            "hugetlb",
            "unified",
        ] {
            let _ = fs::remove_dir(format!("/sys/fs/cgroup/{c}/ums-bench-{s}/{id}"));
        }
    }
}

fn criu_matcher() -> sys::Matcher {
    Box::new(|_pid, comm, _cl| (comm == "criu").then(|| "criu".to_string()))
}

/// Is something listening on `port` in the network namespace of `pid`?
fn listening(pid: u32, port: u16) -> bool {
    let t = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let p = format!(":{port:04X}");
    t.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&p) && f[3] == "0A"
    })
}

pub fn baseline(ctx: &mut Ctx, spec: &Spec, page_server: bool) -> RunRecord {
    let method = if page_server {
        crate::record::PAGE_SERVER
    } else {
        crate::record::STOP_AND_COPY
    };
    let id = format!(
        "bench-{}-{}m{}p{}-{}",
        if page_server { "ps" } else { "sc" },
        spec.size_mib,
        spec.procs,
        spec.rep,
        ctx.tag
    );
    let mut r = RunRecord::new(method, spec.size_mib, spec.procs, spec.rep);
    runc_cleanup(ctx, &id);
    ctx.port_seq = ctx.port_seq.wrapping_add(1);
    let port = 27100 + (ctx.port_seq % 500);
    let res = baseline_inner(ctx, spec, &id, page_server, port, &mut r);
    runc_cleanup(ctx, &id);
    if let Err(e) = res {
        r.ok = false;
        r.error = Some(e);
    }
    r
}

fn baseline_inner(
    ctx: &Ctx,
    spec: &Spec,
    id: &str,
    page_server: bool,
    port: u16,
    r: &mut RunRecord,
) -> Result<()> {
    let ssh = ctx.ssh.as_ref().ok_or("no ssh connection to b")?;
    let tick = format!("/tmp/ticks-{id}");
    let mut args = spec.memhog_args(&tick);
    args[6] = ctx.child_mib.to_string();
    let bundle_a = write_bundle(ctx, "a", id, &args)?;
    let bundle_b = write_bundle(ctx, "b", id, &args)?;
    let (root_a, root_b) = (runc_root(ctx, "a"), runc_root(ctx, "b"));
    let img_a = ctx.work.join("a/img").join(id);
    let img_b = ctx.work.join("b/img").join(id);
    fs::create_dir_all(&img_a).map_err(|e| e.to_string())?;
    fs::create_dir_all(&img_b).map_err(|e| e.to_string())?;
    let ticks_a = ctx.work.join("a/rootfs").join(&tick[1..]);
    let ticks_b = ctx.work.join("b/rootfs").join(&tick[1..]);

    let mut c = in_netns(&ctx.ns_a, "runc");
    c.arg("--root")
        .arg(&root_a)
        .args(["run", "-d", "--bundle"])
        .arg(&bundle_a)
        .arg(id);
    let _pipes_a = runc_detached(c)?;
    wait_ticks(&ticks_a, 0, 3, Duration::from_secs(180))?;

    let sampler = Sampler::start(criu_matcher(), Duration::from_millis(20));
    let cpu0 = sys::children_cpu_s();
    r.started_at_ns = sys::realtime_ns();
    let t_all = Instant::now();
    let res = (|| -> Result<Pipes> {
        // pre-migration: the page server on b, listening before the freeze
        let mut ps_child = None;
        if page_server {
            let t = Instant::now();
            let child = in_netns(&ctx.ns_b, "criu")
                .args(["page-server", "--images-dir"])
                .arg(&img_b)
                .args(["--address", &ctx.ip_b, "--port", &port.to_string(), "-o"])
                .arg(ctx.work.join("b").join(format!("page-server-{id}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("criu page-server: {e}"))?;
            let pid = child.id();
            ps_child = Some(child);
            wait_for(Duration::from_secs(5), Duration::from_millis(5), || {
                listening(pid, port).then_some(())
            })
            .ok_or("criu page-server did not listen")?;
            r.phase("pre_migration", sys::ms_since(t));
        }
        // checkpoint (the freeze starts here)
        let t_frozen = Instant::now();
        let mut c = in_netns(&ctx.ns_a, "runc");
        c.arg("--root").arg(&root_a).arg("checkpoint");
        if page_server {
            c.args(["--page-server", &format!("{}:{port}", ctx.ip_b)]);
        }
        c.arg("--image-path").arg(&img_a).arg(id);
        let ck = run(&mut c);
        if let Some(mut ch) = ps_child {
            if ck.is_err() {
                let _ = ch.kill();
            }
            let st = ch.wait().map_err(|e| e.to_string())?;
            if ck.is_ok() && !st.success() {
                return Err(format!("criu page-server exited with {st}"));
            }
        }
        ck?;
        r.phase("checkpoint", sys::ms_since(t_frozen));
        // transfer: the images (page-server: those left on a) and the tick file of the rootfs
        let t = Instant::now();
        let w = ctx.work.join("a");
        let rel_img = format!("img/{id}");
        let rel_tick = format!("rootfs{tick}");
        if page_server {
            let script = format!(
                "tar -C {w} -cf - {rel_img} {rel_tick} | {ssh} root@{ip} tar -C {wb} -xf -",
                w = w.display(),
                ssh = ssh.command_line(),
                ip = ssh.ip,
                wb = ctx.work.join("b").display()
            );
            run(in_netns(&ctx.ns_a, "sh").args(["-c", &script]))?;
        } else {
            let out = run_out(
                in_netns(&ctx.ns_a, "rsync")
                    .args(["-aR", "--stats", "-e", &ssh.command_line()])
                    .arg(format!("{}/./{rel_img}", w.display()))
                    .arg(format!("{}/./{rel_tick}", w.display()))
                    .arg(format!("root@{}:{}/", ssh.ip, ctx.work.join("b").display())),
            )?;
            let sent = out
                .lines()
                .find_map(|l| l.strip_prefix("Total bytes sent: "))
                .map(|s| s.replace(',', ""))
                .and_then(|s| s.trim().parse::<u64>().ok());
            r.extra = Some(serde_json::json!({ "rsync_bytes_sent": sent }));
        }
        let transfer_ms = sys::ms_since(t);
        r.phase("transfer", transfer_ms);
        r.bytes =
            Some(sys::dir_bytes(&img_b) + fs::metadata(&ticks_b).map(|m| m.len()).unwrap_or(0));
        let active = if page_server {
            r.phases_ms["checkpoint"] + transfer_ms
        } else {
            transfer_ms
        };
        r.throughput_mb_s = r.bytes.map(|b| b as f64 / 1e6 / (active / 1e3));
        // restore at b
        let t = Instant::now();
        let mut c = in_netns(&ctx.ns_b, "runc");
        c.arg("--root")
            .arg(&root_b)
            .args(["restore", "-d", "--image-path"])
            .arg(&img_b)
            .arg("--bundle")
            .arg(&bundle_b)
            .arg(id);
        let pipes = runc_detached(c)?;
        r.phase("restore", sys::ms_since(t));
        r.downtime_ms = Some(sys::ms_since(t_frozen));
        r.total_ms = Some(sys::ms_since(t_all));
        Ok(pipes)
    })();
    let t_end = sys::realtime_ns();
    let cpu1 = sys::children_cpu_s();
    let samples = sampler.finish();
    let _pipes_b = res?;
    r.cpu_s = Some(cpu1 - cpu0);
    r.criu_hwm_kib = sys::peak_kib(&samples, "criu");
    if let Some(d) = criu_stats::read(&img_a.join("stats-dump")) {
        r.frozen_ms = d.get("frozen_time").map(|&us| us as f64 / 1e3);
        r.criu_stats.insert("dump".into(), d);
    }
    if let Some(d) = criu_stats::read(&img_b.join("stats-restore")) {
        r.criu_stats.insert("restore".into(), d);
    }
    let ticks = wait_ticks(&ticks_b, t_end, 5, Duration::from_secs(15))?;
    finish_gap(r, &ticks, r.started_at_ns, t_end);
    run(Command::new("runc")
        .arg("--root")
        .arg(&root_b)
        .args(["kill", id, "USR1"]))?;
    r.verify = wait_verify(&ticks_b);
    r.ok = r.verify.as_deref() == Some("ok");
    if !r.ok {
        r.error = Some(format!("memory verification at b: {:?}", r.verify));
    }
    let _ = &_pipes_b.out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn idle_waits_for_the_drop_and_a_steady_sample() {
        // the shim as seen from 0.2 s: steady at 8.6 MiB, drops ~1 s after the start
        let mut s = IdleSettle::default();
        let seen: Vec<bool> = [
            (200, 8800),
            (400, 8800),
            (600, 8800),
            (800, 8800),
            (1000, 8800),
            (1200, 6000),
            (1400, 4400),
            (1600, 4400),
            (1800, 4400),
            (2000, 4400),
        ]
        .iter()
        .map(|&(t, kib)| s.settled(ms(t), kib))
        .collect();
        // a steady RSS before 2 s is not the idle figure (the plateau before the drop)
        assert_eq!(seen.iter().position(|&x| x), Some(9));
    }

    #[test]
    fn idle_after_2_s_needs_two_samples_not_falling() {
        // first seen late (a 1024 MiB memhog fills for seconds): one more sample
        let mut s = IdleSettle::default();
        assert!(!s.settled(ms(3000), 4400));
        assert!(s.settled(ms(3200), 4400));
        // still falling at 2 s: waits until it stops
        let mut s = IdleSettle::default();
        assert!(!s.settled(ms(2000), 6000));
        assert!(!s.settled(ms(2200), 5000));
        assert!(s.settled(ms(2400), 5000));
        // growing is not falling
        let mut s = IdleSettle::default();
        assert!(!s.settled(ms(2000), 4400));
        assert!(s.settled(ms(2200), 4404));
    }

    #[test]
    fn idle_bounded() {
        let mut s = IdleSettle::default();
        let mut kib = 9000;
        let mut t = 2000;
        while !s.settled(ms(t), kib) {
            kib -= 100;
            t += 200;
        }
        assert_eq!(t, 5000);
    }

    #[test]
    fn approaches_differ_only_in_flags_and_names() {
        let pc = Approach::of_method("ums-postcopy").unwrap();
        let c = Approach::of_method("ums").unwrap();
        assert_eq!(pc.runtime(), c.runtime());
        assert_eq!(c.migrate_args(), &[] as &[&str]);
        assert_eq!(pc.migrate_args(), &["--post-copy"]);
        assert_eq!(pc.method(), crate::record::UMS_POSTCOPY);
        assert!(pc.ums_shim() && c.ums_shim());
        let o = Approach::of_method("orchestrator").unwrap();
        assert!(!o.ums_shim());
        assert_eq!(o.needs_flag().map(|x| x.0), Some("--approach"));
        assert_eq!(pc.needs_flag().map(|x| x.0), Some("--post-copy"));
        assert_eq!(c.needs_flag(), None);
        for m in crate::record::METHODS {
            assert_eq!(
                Approach::of_method(m).is_some(),
                crate::record::UMS_METHODS.contains(m),
                "{m}"
            );
        }
    }
}

//! The shared test bed (brought up once, torn down at exit), services, migrations and the checks
//! the scenarios share.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use ums_tests::testbed::{Bed, Migration, System};
use ums_tests::{criu_check, util, wait_for, Output};

/// The private test bed: namespaces `<prefix>-a`/`<prefix>-b`, base dir /run/<prefix> (short:
/// unix socket paths live below it). The prefix is `umst` unless `UMS_TESTBED_TEST_PREFIX` names
/// another, so that two checkouts can run this binary at once, each on its own test bed.
fn prefix() -> String {
    std::env::var("UMS_TESTBED_TEST_PREFIX")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "umst".into())
}
pub const NS: &str = "default";
pub const MIB: u64 = 1024 * 1024;

/// A shell service whose count lives in its memory (a shell variable), rewritten to /tmp/c.
pub const SH_COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done";

static SERIAL: Mutex<()> = Mutex::new(());
static BED: OnceLock<Bed> = OnceLock::new();
static UP: OnceLock<Result<(), String>> = OnceLock::new();
static FAILED: AtomicBool = AtomicBool::new(false);
static FIGURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A line on stderr that libtest does not capture (progress and figures of passing tests too).
pub fn say(msg: impl AsRef<str>) {
    let mut e = std::io::stderr().lock();
    for l in msg.as_ref().lines() {
        let _ = writeln!(e, "[testbed] {l}");
    }
}

/// Runs one scenario on the shared test bed (brought up by the first caller), one at a time.
/// A failure keeps a copy of the test bed's logs and is re-raised for libtest.
pub fn with_bed(name: &str, f: impl FnOnce(&Bed)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let up = UP.get_or_init(bring_up);
    if let Err(e) = up {
        panic!("the test bed could not be brought up, so {name} could not run:\n{e}");
    }
    let bed = BED.get().expect("the test bed");
    say(format!("--- {name}"));
    let t0 = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| f(bed)));
    let secs = t0.elapsed().as_secs_f64();
    match r {
        Ok(()) => say(format!("--- {name}: ok in {secs:.1} s")),
        Err(p) => {
            FAILED.store(true, Ordering::SeqCst);
            let dest = util::failure_log_dir().join(format!("testbed-{name}"));
            let _ = std::fs::remove_dir_all(&dest);
            match bed.save_logs(&dest) {
                Ok(()) => say(format!(
                    "--- {name}: FAILED after {secs:.1} s; test bed logs copied to {}",
                    dest.display()
                )),
                Err(e) => say(format!(
                    "--- {name}: FAILED after {secs:.1} s; copying the logs to {} failed: {e}",
                    dest.display()
                )),
            }
            resume_unwind(p)
        }
    }
}

/// The shim and `ums` under test: target/debug (the dir of [`util::shim_bin`]).
fn bin_dir() -> PathBuf {
    util::shim_bin()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| util::workspace_dir().join("target/debug"))
}

/// Preconditions (each missing one fails every test with the reason), the run lock, then
/// `hack/testbed.sh up`; `down` is registered to run at exit before anything is made.
fn bring_up() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the test bed needs root (network namespaces, containerd, CRIU)".into());
    }
    criu_check()?;
    let bins = bin_dir();
    for b in ["containerd-shim-ums-v1", "ums"] {
        if !bins.join(b).is_file() {
            return Err(format!(
                "{} is missing: run `cargo build --workspace` first",
                bins.join(b).display()
            ));
        }
    }
    match std::process::Command::new("nsenter")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        other => return Err(format!("nsenter (util-linux) is not usable: {other:?}")),
    }
    take_run_lock()?;
    let prefix = prefix();
    let dir = PathBuf::from(format!("/run/{prefix}"));
    let bed = BED.get_or_init(|| Bed::new(&prefix, &dir, &bins));
    unsafe {
        libc::atexit(tear_down);
    }
    say(format!(
        "bringing up the test bed {} (namespaces {prefix}-a/{prefix}-b, binaries {})",
        bed.dir.display(),
        bins.display()
    ));
    let t0 = Instant::now();
    bed.up()
        .map_err(|e| format!("hack/testbed.sh up failed for {}:\n{e}", bed.dir.display()))?;
    say(format!(
        "test bed up in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// An exclusive lock on /run/<prefix>.run.lock, held until the process exits (waits up to 10
/// minutes for another run on the same test bed to finish).
fn take_run_lock() -> Result<(), String> {
    static LOCK: OnceLock<std::fs::File> = OnceLock::new();
    let lock_path = format!("/run/{}.run.lock", prefix());
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("opening {lock_path}: {e}"))?;
    let got = wait_for(Duration::from_secs(600), Duration::from_millis(500), || {
        (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(())
    });
    if got.is_none() {
        return Err(format!(
            "another run of this test binary holds {lock_path} (10 minutes)"
        ));
    }
    let _ = LOCK.set(f);
    Ok(())
}

/// At exit: the figures of every migration, then `hack/testbed.sh down` (a failing down makes
/// the process exit 1).
extern "C" fn tear_down() {
    let Some(bed) = BED.get() else { return };
    let figs = FIGURES.lock().map(|v| v.clone()).unwrap_or_default();
    if !figs.is_empty() {
        say("figures of the migrations (ums migrate --json):");
        for f in figs {
            say(format!("  {f}"));
        }
    }
    let t0 = Instant::now();
    match bed.down() {
        Ok(_) => say(format!(
            "test bed {} down in {:.1} s",
            bed.dir.display(),
            t0.elapsed().as_secs_f64()
        )),
        Err(e) => {
            say(format!(
                "ERROR: hack/testbed.sh down failed for {}:\n{e}",
                bed.dir.display()
            ));
            let _ = std::io::stderr().flush();
            unsafe { libc::_exit(1) };
        }
    }
    if FAILED.load(Ordering::SeqCst) {
        say(format!(
            "logs of the failed tests: {}/testbed-*",
            util::failure_log_dir().display()
        ));
    }
}

/// The tails of both coordinators' logs, for failure messages.
pub fn diag(bed: &Bed) -> String {
    let mut s = String::new();
    for sys in [&bed.a, &bed.b] {
        s.push_str(&format!(
            "\n--- {} (tail) ---\n{}\n",
            bed.coordinator_log(sys).display(),
            util::tail(&bed.coordinator_log(sys), 25)
        ));
    }
    s
}

/// `ns/id`.
pub fn reference(id: &str) -> String {
    format!("{NS}/{id}")
}

/// A service of one test, by container id. Dropping it removes the container from both systems,
/// whatever the test's outcome (best effort).
pub struct Svc<'a> {
    pub bed: &'a Bed,
    pub id: String,
}

impl<'a> Svc<'a> {
    /// `ctr run --runtime io.containerd.ums.v1 -d --log-uri file://... IMAGE ID ARGS` on `sys`,
    /// waited for RUNNING.
    #[track_caller]
    pub fn start(bed: &'a Bed, sys: &System, id: &str, image: &str, args: &[&str]) -> Svc<'a> {
        let svc = Svc { bed, id: id.into() };
        // Leftovers of an earlier, interrupted test of the same name.
        bed.a.ctr().remove_best_effort(id);
        bed.b.ctr().remove_best_effort(id);
        sys.ctr()
            .run_image_detached(id, image, &[], args)
            .expect_ok(&format!("ctr run {image} {id} on system {}", sys.name));
        sys.ctr()
            .wait_status(id, "RUNNING", Duration::from_secs(30));
        svc
    }

    pub fn reference(&self) -> String {
        reference(&self.id)
    }

    /// `ctr tasks exec` in the service on `sys`.
    pub fn exec(&self, sys: &System, args: &[&str]) -> Output {
        sys.ctr().exec(&self.id, args)
    }

    /// `sh -c SCRIPT` in the service on `sys`; panics unless it exits 0.
    #[track_caller]
    pub fn sh(&self, sys: &System, script: &str) -> String {
        let out = self.exec(sys, &["/bin/sh", "-c", script]);
        if !out.success() {
            panic!("exec in {} on system {} failed\n{out}", self.id, sys.name);
        }
        out.stdout
    }

    /// The number in file `path` of the service on `sys` (None: no task, no file, no number).
    pub fn read_u64(&self, sys: &System, path: &str) -> Option<u64> {
        let out = self.exec(sys, &["cat", path]);
        out.success()
            .then(|| out.stdout.trim().parse().ok())
            .flatten()
    }

    /// Waits until the number in `path` on `sys` satisfies `pred`; returns it.
    #[track_caller]
    pub fn wait_u64(
        &self,
        sys: &System,
        path: &str,
        timeout: Duration,
        pred: impl Fn(u64) -> bool,
    ) -> u64 {
        let mut last = None;
        let got = wait_for(timeout, Duration::from_millis(100), || {
            let v = self.read_u64(sys, path);
            last = v;
            v.filter(|&v| pred(v))
        });
        got.unwrap_or_else(|| {
            panic!(
                "{} on system {}: {path} did not reach the expected value within {timeout:?} (last read: {last:?})\n{}\n{}",
                self.id,
                sys.name,
                self.exec(sys, &["cat", path]),
                sys.ctr().cmd(&["tasks", "ls"])
            )
        })
    }

    /// The task on `sys` is RUNNING.
    #[track_caller]
    pub fn assert_running(&self, sys: &System, what: &str) {
        let ctr = sys.ctr();
        match ctr.task(&self.id) {
            Some(t) if t.status == "RUNNING" => {}
            other => panic!(
                "{what}: task {} on system {} is {other:?}, not RUNNING\n{}",
                self.id,
                sys.name,
                ctr.cmd(&["tasks", "ls"])
            ),
        }
    }

    /// The service on `sys` runs on with its state: the number in `path` goes on from above
    /// `before` (not reset) and keeps growing (not frozen).
    #[track_caller]
    pub fn assert_counts_on(&self, sys: &System, path: &str, before: u64, what: &str) -> u64 {
        self.assert_running(sys, what);
        let v1 = self.wait_u64(sys, path, Duration::from_secs(10), |v| v > before);
        let v2 = self.wait_u64(sys, path, Duration::from_secs(10), |v| v > v1);
        say(format!(
            "{what}: {} on system {} counts on: {before} before, then {v1}, {v2}",
            self.id, sys.name
        ));
        v2
    }
}

impl Drop for Svc<'_> {
    fn drop(&mut self) {
        self.bed.a.ctr().remove_best_effort(&self.id);
        self.bed.b.ctr().remove_best_effort(&self.id);
    }
}

/// `sys` holds nothing of container `id` (waits up to 15 s for asynchronous clean-up).
/// `ctr_cgroup`: also the ctr-style cgroup `/<ns>/<id>` (not when the service still runs on the
/// other system under that cgroup).
#[track_caller]
pub fn assert_nothing_left(bed: &Bed, sys: &System, id: &str, ctr_cgroup: bool, what: &str) {
    let mut left = Vec::new();
    let clean = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        left = bed.leftovers(sys, NS, id, ctr_cgroup);
        left.is_empty().then_some(())
    });
    if clean.is_none() {
        panic!(
            "{what}: system {} still holds {id}:\n  {}\n{}\n{}\n{}{}",
            sys.name,
            left.join("\n  "),
            sys.ctr().cmd(&["containers", "ls"]),
            sys.ctr().cmd(&["tasks", "ls"]),
            sys.ctr().cmd(&["snapshots", "ls"]),
            diag(bed)
        );
    }
}

/// The figures of a migration's `--json` report.
#[derive(Clone, Debug)]
pub struct Figures {
    pub approach: String,
    pub phases: Vec<(&'static str, u64)>,
    pub total_ms: u64,
    pub frozen_ms: u64,
    pub downtime_ms: u64,
    pub bytes: u64,
}

impl Figures {
    pub fn line(&self) -> String {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "approach {}, total_ms {}, frozen_ms {}, downtime_ms {}, bytes {} ({:.1} MiB); phases_ms: {}",
            self.approach,
            self.total_ms,
            self.frozen_ms,
            self.downtime_ms,
            self.bytes,
            self.bytes as f64 / MIB as f64,
            phases.join(", ")
        )
    }
}

pub const PHASES: [&str; 5] = [
    "pre_migration",
    "checkpoint",
    "transfer",
    "restore",
    "post_migration",
];

fn num(v: &Value, ptr: &str) -> Result<u64, String> {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{ptr} is missing or not a non-negative integer"))
}

fn text<'v>(v: &'v Value, ptr: &str) -> Result<&'v str, String> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{ptr} is missing or not a string"))
}

/// Everything wrong with a report of a migration of `reference` from `from` to `to`.
pub fn report_problems(v: &Value, reference: &str, from: &System, to: &System) -> Vec<String> {
    let mut bad = Vec::new();
    let mut expect = |what: &str, ok: Result<bool, String>| match ok {
        Ok(true) => {}
        Ok(false) => bad.push(what.to_string()),
        Err(e) => bad.push(e),
    };
    expect(
        "approach is empty",
        text(v, "/approach").map(|s| !s.trim().is_empty()),
    );
    expect(
        "source is not the --from URL",
        text(v, "/source").map(|s| s.trim_end_matches('/') == from.url),
    );
    expect(
        "destination is not the --to URL",
        text(v, "/destination").map(|s| s.trim_end_matches('/') == to.url),
    );
    expect(
        "ref is not the migrated container",
        text(v, "/ref").map(|s| s == reference),
    );
    expect(
        "migration_id is empty",
        text(v, "/migration_id").map(|s| !s.is_empty()),
    );
    expect(
        "source_system is not the source's name",
        text(v, "/source_system").map(|s| s == from.name),
    );
    expect(
        "destination_system is not the destination's name",
        text(v, "/destination_system").map(|s| s == to.name),
    );
    expect(
        "location.system is not the destination",
        text(v, "/location/system").map(|s| s == to.name),
    );
    let total = num(v, "/total_ms");
    let frozen = num(v, "/frozen_ms");
    let downtime = num(v, "/downtime_ms");
    let bytes = num(v, "/bytes");
    let phases: Vec<Result<u64, String>> = PHASES
        .iter()
        .map(|p| num(v, &format!("/phases_ms/{p}")))
        .collect();
    for r in [&total, &frozen, &downtime, &bytes]
        .into_iter()
        .chain(phases.iter())
    {
        if let Err(e) = r {
            bad.push(e.clone());
        }
    }
    if let (Ok(total), Ok(frozen), Ok(downtime), Ok(bytes)) = (&total, &frozen, &downtime, &bytes) {
        let (total, frozen, downtime, bytes) = (*total, *frozen, *downtime, *bytes);
        if total == 0 || total > 300_000 {
            bad.push(format!("total_ms {total} is not in (0, 300000]"));
        }
        if bytes == 0 {
            bad.push("bytes is 0".into());
        }
        if frozen == 0 || frozen > total {
            bad.push(format!(
                "frozen_ms {frozen} is not in (0, total_ms {total}]"
            ));
        }
        // Post-copy: the service runs at the destination while the source, still frozen,
        // serves its pages: the downtime ends before the source's freeze does. Held: the
        // service runs nowhere until every page is in, so the downtime spans the page phase.
        let post_copy = v.pointer("/post_copy").and_then(Value::as_bool) == Some(true);
        let hold = v.pointer("/hold").and_then(Value::as_bool) == Some(true);
        let pages_ms = num(v, "/phases_ms/post_copy");
        if hold {
            match &pages_ms {
                Ok(p) if *p <= downtime && downtime <= total => {}
                Ok(p) => bad.push(format!(
                    "held post-copy: downtime_ms {downtime} is not in [phases_ms.post_copy {p}, total_ms {total}]"
                )),
                Err(e) => bad.push(format!("held post-copy: {e}")),
            }
        } else if post_copy {
            match &pages_ms {
                Ok(_) if downtime <= frozen && downtime <= total => {}
                Ok(_) => bad.push(format!(
                    "post-copy: downtime_ms {downtime} is not in (0, min(frozen_ms {frozen}, total_ms {total})]"
                )),
                Err(e) => bad.push(format!("post-copy: {e}")),
            }
        } else if downtime < frozen || downtime > total {
            bad.push(format!(
                "downtime_ms {downtime} is not in [frozen_ms {frozen}, total_ms {total}]"
            ));
        }
        if phases.iter().all(Result::is_ok) {
            let ph: Vec<u64> = phases.iter().map(|p| *p.as_ref().unwrap()).collect();
            let sum: u64 = ph.iter().sum::<u64>() + pages_ms.as_ref().copied().unwrap_or(0);
            // The README: the phases add up to about total_ms.
            let slack = (total / 10).max(100);
            if sum.abs_diff(total) > slack {
                bad.push(format!(
                    "the phases add up to {sum} ms, total_ms is {total} (more than {slack} ms apart)"
                ));
            }
            if ph[1] == 0 {
                bad.push("phases_ms.checkpoint is 0".into());
            }
            if ph[3] == 0 {
                bad.push("phases_ms.restore is 0".into());
            }
        }
    }
    bad
}

/// Figures of a report (after [`report_problems`] found none).
pub fn figures(v: &Value) -> Figures {
    Figures {
        approach: text(v, "/approach").unwrap_or("").to_string(),
        phases: PHASES
            .iter()
            .map(|p| (*p, num(v, &format!("/phases_ms/{p}")).unwrap_or(0)))
            .collect(),
        total_ms: num(v, "/total_ms").unwrap_or(0),
        frozen_ms: num(v, "/frozen_ms").unwrap_or(0),
        downtime_ms: num(v, "/downtime_ms").unwrap_or(0),
        bytes: num(v, "/bytes").unwrap_or(0),
    }
}

/// The `ums migrate` flags of a post-copy migration, held or not.
pub fn post_copy_flags(hold: bool) -> &'static [&'static str] {
    if hold {
        &["--post-copy", "--hold"]
    } else {
        &["--post-copy"]
    }
}

/// `ums migrate --from <from> --to <to> default/<id> --json`, which must succeed with a sane
/// report; prints and records the figures under `label`.
#[track_caller]
pub fn migrate_ok(bed: &Bed, from: &System, to: &System, id: &str, label: &str) -> Figures {
    let m = bed.migrate(from, to, &reference(id));
    check_migration(bed, &m, from, to, id, label)
}

/// The checks of [`migrate_ok`] on a migration that ran.
#[track_caller]
pub fn check_migration(
    bed: &Bed,
    m: &Migration,
    from: &System,
    to: &System,
    id: &str,
    label: &str,
) -> Figures {
    let Some(report) = m.report.as_ref().filter(|_| m.out.success()) else {
        panic!(
            "{label}: ums migrate {} {}->{} failed\n{}{}",
            reference(id),
            from.name,
            to.name,
            m.out,
            diag(bed)
        );
    };
    let bad = report_problems(report, &reference(id), from, to);
    if !bad.is_empty() {
        panic!(
            "{label}: the --json report is not sane:\n  {}\nreport: {report}",
            bad.join("\n  ")
        );
    }
    let f = figures(report);
    let line = format!("{label} ({}->{}): {}", from.name, to.name, f.line());
    say(&line);
    if let Ok(mut v) = FIGURES.lock() {
        v.push(line);
    }
    f
}

/// A `ums migrate` that must fail: non-zero exit, no report, and stderr containing every one
/// of `reasons` (case-insensitive). Returns stderr.
#[track_caller]
pub fn assert_refused(bed: &Bed, m: &Migration, reasons: &[&str], what: &str) -> String {
    if m.out.timed_out || m.out.code == 0 || m.report.is_some() {
        panic!(
            "{what}: ums migrate should have failed\n{}{}",
            m.out,
            diag(bed)
        );
    }
    let err = m.out.stderr.to_lowercase();
    let missing: Vec<&&str> = reasons
        .iter()
        .filter(|r| !err.contains(&r.to_lowercase()))
        .collect();
    if !missing.is_empty() {
        panic!(
            "{what}: ums migrate failed, but its message does not name the cause (missing {missing:?})\n{}{}",
            m.out,
            diag(bed)
        );
    }
    let reason = m
        .out
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ums: ") && !l.contains("] "))
        .unwrap_or("")
        .to_string();
    say(format!("{what}: refused as expected: {reason}"));
    m.out.stderr.clone()
}

/// The first line of `path` that is a number.
pub fn first_number_in(path: &Path) -> Option<u64> {
    util::read_lossy(path)
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

/// The last line of `path` that is a number.
pub fn last_number_in(path: &Path) -> Option<u64> {
    util::read_lossy(path)
        .lines()
        .rev()
        .find_map(|l| l.trim().parse().ok())
}

/// memhog with its ticks in /tmp/ticks and `--verify` (verification on `touch /tmp/verify`).
#[track_caller]
pub fn start_memhog<'a>(bed: &'a Bed, sys: &System, id: &str, mib: u64) -> (Svc<'a>, String) {
    let mib = mib.to_string();
    let svc = Svc::start(
        bed,
        sys,
        id,
        ums_tests::testbed::MEMHOG_IMAGE,
        &[
            "/usr/local/bin/memhog",
            "--mib",
            &mib,
            "--tick",
            "/tmp/ticks",
            "--verify",
        ],
    );
    let log = sys.ctr().log_file(id);
    let sum = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        util::read_lossy(&log).lines().find_map(|l| {
            l.starts_with("memhog ready")
                .then(|| {
                    l.split_whitespace()
                        .find_map(|f| f.strip_prefix("checksum=").map(String::from))
                })
                .flatten()
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "memhog {id} did not print `memhog ready` within 30 s; log {}:\n{}",
            log.display(),
            util::read_lossy(&log)
        )
    });
    (svc, sum)
}

/// One line of memhog's tick file: `<mono ns> <seq> <checksum> <realtime ns>`.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub seq: u64,
    pub realtime_ns: u64,
}

/// memhog's /tmp/ticks on `sys`: the ticks and the verify lines (`ok`/`BAD`, checksum), in order.
#[track_caller]
pub fn read_ticks(svc: &Svc, sys: &System) -> (Vec<Tick>, Vec<(String, String)>) {
    let out = svc.exec(sys, &["cat", "/tmp/ticks"]);
    if !out.success() {
        panic!(
            "reading /tmp/ticks of {} on system {}\n{out}",
            svc.id, sys.name
        );
    }
    let mut ticks = Vec::new();
    let mut verifies = Vec::new();
    for l in out.stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first() == Some(&"verify") && f.len() == 3 {
            verifies.push((f[1].to_string(), f[2].to_string()));
        } else if f.len() == 4 {
            match (f[1].parse(), f[3].parse()) {
                (Ok(seq), Ok(realtime_ns)) => ticks.push(Tick { seq, realtime_ns }),
                _ => panic!("a torn or unknown line in /tmp/ticks of {}: {l:?}", svc.id),
            }
        } else if !l.trim().is_empty() {
            panic!("a torn or unknown line in /tmp/ticks of {}: {l:?}", svc.id);
        }
    }
    (ticks, verifies)
}

/// Asks memhog on `sys` to re-checksum its memory (`touch /tmp/verify`) and returns its answer
/// (`ok`/`BAD`, checksum).
#[track_caller]
pub fn memhog_verify(svc: &Svc, sys: &System) -> (String, String) {
    let before = read_ticks(svc, sys).1.len();
    svc.exec(sys, &["touch", "/tmp/verify"])
        .expect_ok("touch /tmp/verify");
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let v = read_ticks(svc, sys).1;
        (v.len() > before).then(|| v.last().cloned()).flatten()
    })
    .unwrap_or_else(|| {
        panic!(
            "memhog {} on system {} did not answer the verification within 20 s",
            svc.id, sys.name
        )
    })
}

/// memhog on `sys` re-reads its memory and finds the checksum it had at the start (`sum`).
#[track_caller]
pub fn assert_memhog_sum(svc: &Svc, sys: &System, sum: &str, what: &str) {
    let (ok, got) = memhog_verify(svc, sys);
    assert!(
        ok == "ok" && got == sum,
        "{what}: verify {ok} {got}, checksum at the start {sum}"
    );
}

/// Ticks numbered without a gap or a repeat (nothing lost, nothing replayed); returns the largest
/// gap between two ticks on CLOCK_REALTIME in ms (the service-visible downtime).
#[track_caller]
pub fn check_ticks(ticks: &[Tick], what: &str) -> u64 {
    let mut max_gap = 0;
    for w in ticks.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            panic!(
                "{what}: tick {} follows tick {} (lost or replayed ticks)",
                w[1].seq, w[0].seq
            );
        }
        max_gap = max_gap.max(w[1].realtime_ns.saturating_sub(w[0].realtime_ns) / 1_000_000);
    }
    max_gap
}

/// Runs `f` on a thread inside the network namespace `netns` (a file under /run/netns).
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns =
        std::fs::File::open(netns).unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("setns into the system's network namespace");
        f()
    })
    .join()
    .expect("the thread in the network namespace panicked")
}

/// Bytes `sys` has received over the link (its netns's interfaces but loopback) so far: a
/// migration's progress as the destination sees it (its images are held in memory, not in
/// files to measure).
pub fn link_rx_bytes(bed: &Bed, sys: &System) -> u64 {
    in_netns(&bed.netns(sys), || {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("read net/dev");
        dev.lines()
            .skip(2)
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| name.trim() != "lo")
            .filter_map(|(_, v)| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    })
}

/// The shim processes of container `id` on `sys` (argv `-id <id>` and `-address <sys socket>`).
pub fn shim_pids(sys: &System, id: &str) -> Vec<i32> {
    let sock = sys.socket().to_string_lossy().into_owned();
    ums_tests::procfs::pids_with_arg_pair("-id", id)
        .into_iter()
        .filter(|&p| {
            ums_tests::procfs::cmdline(p)
                .windows(2)
                .any(|w| w[0] == "-address" && w[1] == sock)
        })
        .collect()
}

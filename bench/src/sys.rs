//! Processes: running commands, /proc sampling (peak RSS, CPU), rusage of children.

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub type Result<T> = std::result::Result<T, String>;

pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A readable one-line form of a command for error messages.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs to completion with stdin from /dev/null; Err with the stderr tail on failure.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", show(cmd)))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(format!("{} failed ({}): {tail}", show(cmd), out.status));
    }
    Ok(out)
}

/// Runs and returns its stdout as a string.
pub fn run_out(cmd: &mut Command) -> Result<String> {
    run(cmd).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `nsenter --net=/run/netns/NS -- PROG`: the test bed's way into a system (the host's mounts).
pub fn in_netns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(prog);
    c
}

/// CPU seconds (user + system) of the waited-for children of this process so far.
pub fn children_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime + cutime + cstime of a process, in seconds (its waited-for children included).
pub fn proc_cpu_s(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after the comm: state(3) ... utime is field 14 overall = index 11 here
    let sum: u64 = f
        .get(11..15)?
        .iter()
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    Some(sum as f64 / clk_tck())
}

/// A `Vm*:` line of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: i32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn cmdline(pid: i32) -> Option<String> {
    let b = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if b.is_empty() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&b)
            .split('\0')
            .collect::<Vec<_>>()
            .join(" "),
    )
}

pub fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// What the sampler saw of one process.
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    pub label: String,
    /// Present when the sampler started (its CPU before the window is subtracted).
    pub existed_at_start: bool,
    pub hwm_kib: u64,
    pub cpu_first_s: f64,
    pub cpu_last_s: f64,
}

impl ProcSample {
    /// CPU spent inside the window (a process born in it counts whole).
    pub fn cpu_in_window_s(&self) -> f64 {
        if self.existed_at_start {
            self.cpu_last_s - self.cpu_first_s
        } else {
            self.cpu_last_s
        }
    }
}

/// Classifies a process (pid, comm, cmdline) into a label, or None to ignore it.
pub type Matcher = Box<dyn Fn(i32, &str, &str) -> Option<String> + Send>;

/// Polls /proc every `period` for the processes the matcher names: peak RSS (VmHWM) and CPU.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<HashMap<i32, ProcSample>>,
}

impl Sampler {
    pub fn start(matcher: Matcher, period: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: HashMap<i32, ProcSample> = HashMap::new();
            let mut first = true;
            let mut known: HashMap<i32, Option<String>> = HashMap::new();
            loop {
                let last = st.load(Ordering::Relaxed);
                for pid in pids() {
                    let label = known
                        .entry(pid)
                        .or_insert_with(|| {
                            let c = comm(pid)?;
                            let cl = cmdline(pid).unwrap_or_default();
                            matcher(pid, &c, &cl)
                        })
                        .clone();
                    let Some(label) = label else { continue };
                    let (Some(hwm), Some(cpu)) = (proc_status_kib(pid, "VmHWM:"), proc_cpu_s(pid))
                    else {
                        continue;
                    };
                    let e = seen.entry(pid).or_insert_with(|| ProcSample {
                        label,
                        existed_at_start: first,
                        cpu_first_s: cpu,
                        ..Default::default()
                    });
                    e.hwm_kib = e.hwm_kib.max(hwm);
                    e.cpu_last_s = cpu;
                }
                first = false;
                if last {
                    return seen;
                }
                std::thread::sleep(period);
            }
        });
        Sampler { stop, handle }
    }

    /// One last pass, then everything seen.
    pub fn finish(self) -> HashMap<i32, ProcSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// The first process (lowest pid) the matcher gives this label.
pub fn find_pid(matcher: &Matcher, label: &str) -> Option<i32> {
    let mut ps = pids();
    ps.sort_unstable();
    ps.into_iter().find(|&pid| {
        comm(pid).is_some_and(|c| {
            matcher(pid, &c, &cmdline(pid).unwrap_or_default()).as_deref() == Some(label)
        })
    })
}

/// Peak VmHWM (KiB) over the processes with this label.
pub fn peak_kib(s: &HashMap<i32, ProcSample>, label: &str) -> Option<u64> {
    s.values()
        .filter(|p| p.label == label)
        .map(|p| p.hwm_kib)
        .max()
}

/// CPU seconds in the window over all sampled processes.
pub fn cpu_sum_s(s: &HashMap<i32, ProcSample>) -> f64 {
    s.values().map(ProcSample::cpu_in_window_s).sum()
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(
    timeout: Duration,
    period: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(period);
    }
}

/// Total size of the regular files under a directory (recursively), in bytes.
pub fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_pid_by_label() {
        let me = std::process::id() as i32;
        let m: Matcher =
            Box::new(move |pid, _comm, cl| (pid == me && !cl.is_empty()).then(|| "me".to_string()));
        assert_eq!(find_pid(&m, "me"), Some(me));
        assert_eq!(find_pid(&m, "other"), None);
        assert!(proc_status_kib(me, "VmRSS:").is_some_and(|k| k > 0));
    }
}

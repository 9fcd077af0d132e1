//! Process running with timeouts, polling, and the paths the harness derives from the workspace.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Root of the cargo workspace (the parent of this crate's manifest dir).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The shim binary under test: `$UMS_SHIM_BIN`, else `<workspace>/target/debug/containerd-shim-ums-v1`.
pub fn shim_bin() -> PathBuf {
    match std::env::var_os("UMS_SHIM_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_dir().join("target"));
            let target = if target.is_absolute() {
                target
            } else {
                workspace_dir().join(target)
            };
            target.join("debug").join("containerd-shim-ums-v1")
        }
    }
}

/// Where failing tests copy their containerd logs: `<workspace>/target/ums-test-logs`.
pub fn failure_log_dir() -> PathBuf {
    workspace_dir().join("target").join("ums-test-logs")
}

/// Poll `f` every `every` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// The result of a finished (or timed out) command.
#[derive(Clone)]
pub struct Output {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit code; 128+N when killed by signal N; -1 when it timed out.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0 && !self.timed_out
    }

    /// Panics with the full output unless the command exited 0.
    #[track_caller]
    pub fn expect_ok(self, what: &str) -> Self {
        if !self.success() {
            panic!("{what}: command failed\n{self}");
        }
        self
    }

    /// Panics unless the command finished (no timeout) with a non-zero exit code.
    #[track_caller]
    pub fn expect_err(self, what: &str) -> Self {
        if self.timed_out || self.code == 0 {
            panic!("{what}: expected a non-zero exit\n{self}");
        }
        self
    }

    /// Panics unless the exit code is exactly `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32, what: &str) -> Self {
        if self.timed_out || self.code != code {
            panic!("{what}: expected exit code {code}\n{self}");
        }
        self
    }

    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  $ {}", self.cmdline)?;
        if self.timed_out {
            writeln!(f, "  TIMED OUT (killed)")?;
        } else {
            writeln!(f, "  exit code: {}", self.code)?;
        }
        writeln!(f, "  stdout: {}", indent(&self.stdout))?;
        write!(f, "  stderr: {}", indent(&self.stderr))
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn indent(s: &str) -> String {
    let s = s.trim_end();
    if s.is_empty() {
        return "(empty)".into();
    }
    const MAX: usize = 8000;
    let s = if s.len() > MAX {
        let mut cut = s.len() - MAX;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        format!("...[{} bytes cut]...{}", cut, &s[cut..])
    } else {
        s.to_string()
    };
    s.replace('\n', "\n          ")
}

pub fn exit_code(st: ExitStatus) -> i32 {
    match st.code() {
        Some(c) => c,
        None => 128 + st.signal().unwrap_or(0),
    }
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

fn shell_quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh path for scratch files of this test process (under /tmp/ums-test-io).
pub fn scratch_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("ums-test-io");
    let _ = fs::create_dir_all(&dir);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{}-{}", std::process::id(), n, tag))
}

/// Runs `cmd` to completion with stdin from `input` (or /dev/null) and stdout/stderr captured
/// through files, never pipes: a process that leaks our pipe to a long-lived child (a detached
/// container, a shim) cannot make us wait forever. Kills the command's process group after `timeout`.
pub fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let out_p = scratch_path("out");
    let err_p = scratch_path("err");
    let in_p = scratch_path("in");
    let cmdline = describe(cmd);
    let result = (|| -> std::io::Result<Output> {
        let stdin = match input {
            Some(data) => {
                fs::File::create(&in_p)?.write_all(data)?;
                Stdio::from(fs::File::open(&in_p)?)
            }
            None => Stdio::null(),
        };
        cmd.stdin(stdin)
            .stdout(fs::File::create(&out_p)?)
            .stderr(fs::File::create(&err_p)?)
            .process_group(0);
        let mut child = cmd.spawn()?;
        let (code, timed_out) = match wait_child(&mut child, timeout) {
            Some(st) => (exit_code(st), false),
            None => {
                kill_group(&child);
                let _ = child.wait();
                (-1, true)
            }
        };
        Ok(Output {
            cmdline: cmdline.clone(),
            code,
            stdout: read_lossy(&out_p),
            stderr: read_lossy(&err_p),
            timed_out,
        })
    })();
    for p in [&out_p, &err_p, &in_p] {
        let _ = fs::remove_file(p);
    }
    result.unwrap_or_else(|e| Output {
        cmdline,
        code: -1,
        stdout: String::new(),
        stderr: format!("could not run the command: {e}"),
        timed_out: false,
    })
}

/// A command running in the background, stdin from /dev/null, stdout and stderr in files
/// (never pipes), in its own process group. Dropping it kills the group if it still runs.
pub struct Spawned {
    pub cmdline: String,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// Starts `cmd` in the background (see [`Spawned`]).
pub fn spawn(cmd: &mut Command) -> std::io::Result<Spawned> {
    let out = scratch_path("bg-out");
    let err = scratch_path("bg-err");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?)
        .process_group(0);
    let cmdline = describe(cmd);
    let child = cmd.spawn()?;
    Ok(Spawned {
        cmdline,
        child: Some(child),
        out,
        err,
    })
}

impl Spawned {
    /// What the command wrote to stdout so far.
    pub fn stdout_now(&self) -> String {
        read_lossy(&self.out)
    }

    /// What the command wrote to stderr so far.
    pub fn stderr_now(&self) -> String {
        read_lossy(&self.err)
    }

    /// The command has exited.
    pub fn finished(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits up to `timeout` for the exit (then kills the group: `timed_out`).
    pub fn wait(mut self, timeout: Duration) -> Output {
        let (code, timed_out) = match self.child.as_mut() {
            Some(child) => match wait_child(child, timeout) {
                Some(st) => (exit_code(st), false),
                None => {
                    kill_group(child);
                    let _ = child.wait();
                    (-1, true)
                }
            },
            None => (-1, false),
        };
        self.child = None;
        Output {
            cmdline: self.cmdline.clone(),
            code,
            stdout: self.stdout_now(),
            stderr: self.stderr_now(),
            timed_out,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                kill_group(&c);
            }
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.out);
        let _ = fs::remove_file(&self.err);
    }
}

/// Waits for a child up to `timeout`; `None` on timeout (the child is left running).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut every = Duration::from_millis(5);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
        every = (every * 2).min(Duration::from_millis(100));
    }
}

/// SIGKILL to the child's process group (it was spawned with `process_group(0)`) and the child.
pub fn kill_group(child: &Child) {
    let pid = child.id() as i32;
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

pub fn read_lossy(p: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(p) {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of a file (lossy UTF-8).
pub fn tail(p: &Path, n: usize) -> String {
    let s = read_lossy(p);
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Sends `sig` to `pid`; false when the process does not exist.
pub fn signal(pid: i32, sig: i32) -> bool {
    unsafe { libc::kill(pid, sig) == 0 }
}

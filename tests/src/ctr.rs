//! `ctr` for one instance: the right binary for the version, `--address`, `-n`, timeouts, and
//! stdio through files (never inherited pipes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::containerd::Runtime;
use crate::util::{self, wait_for, Output};

/// Default timeout of one ctr command.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Ctr {
    bin: PathBuf,
    socket: PathBuf,
    namespace: String,
    runtime: Runtime,
    instance_dir: PathBuf,
}

/// One row of `ctr tasks ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: String,
    pub pid: i32,
    pub status: String,
}

impl Ctr {
    pub fn new(
        bin: PathBuf,
        socket: PathBuf,
        namespace: String,
        runtime: Runtime,
        instance_dir: PathBuf,
    ) -> Ctr {
        Ctr {
            bin,
            socket,
            namespace,
            runtime,
            instance_dir,
        }
    }

    pub fn with_namespace(&self, ns: &str) -> Ctr {
        Ctr {
            namespace: ns.into(),
            ..self.clone()
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// `ctr --address SOCK -n NS` with nothing else; stdio is the caller's business.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace);
        c.env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        c
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        self.cmd_full(args, None, CTR_TIMEOUT)
    }

    pub fn cmd_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        self.cmd_full(args, None, timeout)
    }

    pub fn cmd_input(&self, args: &[&str], input: &[u8]) -> Output {
        self.cmd_full(args, Some(input), CTR_TIMEOUT)
    }

    pub fn cmd_full(&self, args: &[&str], input: Option<&[u8]>, timeout: Duration) -> Output {
        let mut c = self.command();
        c.args(args);
        util::run(&mut c, input, timeout)
    }

    /// Spawns ctr in the background with stdout+stderr to `out_file` and stdin from /dev/null.
    pub fn spawn(&self, args: &[&str], out_file: &Path) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let f = std::fs::File::create(out_file)?;
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0);
        c.spawn()
    }

    /// Where the service output of detached containers goes (`--log-uri file://...`).
    pub fn log_file(&self, id: &str) -> PathBuf {
        self.instance_dir
            .join("logs")
            .join(format!("{}-{id}.log", self.namespace))
    }

    /// A fifo dir inside the instance (`--fifo-dir`): ctr leaves the fifos of detached processes
    /// behind, by default in /run/containerd/fifo.
    pub fn fifo_dir(&self) -> String {
        self.instance_dir
            .join("fifo")
            .to_string_lossy()
            .into_owned()
    }

    /// The runtime flags for `ctr run`: `--runtime`, and for runc a runc root inside the instance dir.
    pub fn runtime_args(&self) -> Vec<String> {
        let mut v = vec![
            "--runtime".to_string(),
            self.runtime.runtime_type().to_string(),
        ];
        if self.runtime == Runtime::Runc {
            v.push("--runc-root".into());
            v.push(
                self.instance_dir
                    .join("runc")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        v
    }

    /// `ctr run -d` of `args` on a `--rootfs` dir, service output to [`Ctr::log_file`]. Returns the
    /// ctr output (ctr returns once the task started).
    pub fn run_detached(&self, id: &str, rootfs: &Path, args: &[&str]) -> Output {
        self.run_detached_with(id, rootfs, &[], args)
    }

    pub fn run_detached_with(
        &self,
        id: &str,
        rootfs: &Path,
        extra: &[&str],
        args: &[&str],
    ) -> Output {
        let log = format!("file://{}", self.log_file(id).display());
        let rootfs = rootfs.to_string_lossy().into_owned();
        let rt = self.runtime_args();
        let mut a: Vec<&str> = vec!["run", "-d", "--log-uri", &log];
        a.extend(rt.iter().map(String::as_str));
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--rootfs", &rootfs, id]);
        a.extend_from_slice(args);
        self.cmd(&a)
    }

    /// `ctr run -d` of image `image` (it must be in the namespace) as container `id`, service
    /// output to [`Ctr::log_file`]; `extra` are more `ctr run` flags, `args` replace the image's
    /// entrypoint and command when not empty. Returns once the task started.
    pub fn run_image_detached(
        &self,
        id: &str,
        image: &str,
        extra: &[&str],
        args: &[&str],
    ) -> Output {
        let log = format!("file://{}", self.log_file(id).display());
        let rt = self.runtime_args();
        let mut a: Vec<&str> = vec!["run", "-d", "--log-uri", &log];
        a.extend(rt.iter().map(String::as_str));
        a.extend_from_slice(extra);
        a.extend_from_slice(&[image, id]);
        a.extend_from_slice(args);
        self.cmd(&a)
    }

    /// `ctr tasks exec` of `args` in task `id` (a fresh exec id each time), output captured.
    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        use std::sync::atomic::{AtomicU64, Ordering};
        static EXEC: AtomicU64 = AtomicU64::new(0);
        let exec_id = format!(
            "x{}-{}",
            std::process::id(),
            EXEC.fetch_add(1, Ordering::Relaxed)
        );
        let mut a: Vec<&str> = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        a.extend_from_slice(args);
        self.cmd(&a)
    }

    /// Container ids (`ctr containers ls -q`); Err with ctr's output when it fails.
    pub fn container_ids(&self) -> Result<Vec<String>, Output> {
        let out = self.cmd_timeout(&["containers", "ls", "-q"], Duration::from_secs(20));
        if !out.success() {
            return Err(out);
        }
        Ok(out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// Snapshot keys of the default snapshotter (`ctr snapshots ls`, first column); Err with
    /// ctr's output when it fails.
    pub fn snapshot_keys(&self) -> Result<Vec<String>, Output> {
        let out = self.cmd_timeout(&["snapshots", "ls"], Duration::from_secs(20));
        if !out.success() {
            return Err(out);
        }
        Ok(out
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect())
    }

    /// Image names of the namespace (`ctr images ls -q`; empty on error).
    pub fn image_names(&self) -> Vec<String> {
        let out = self.cmd_timeout(&["images", "ls", "-q"], Duration::from_secs(20));
        out.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Kills (SIGKILL) and deletes task `id` and deletes its container, if they exist; ignores
    /// errors and is bounded in time. For clean-up after a test, failed or not.
    pub fn remove_best_effort(&self, id: &str) {
        if let Some(t) = self.task(id) {
            if t.status == "PAUSED" {
                self.cmd_timeout(&["tasks", "resume", id], Duration::from_secs(10));
            }
            if t.status != "STOPPED" {
                self.cmd_timeout(
                    &["tasks", "kill", "--all", "-s", "SIGKILL", id],
                    Duration::from_secs(10),
                );
                wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
                    self.task(id)
                        .filter(|t| t.status != "STOPPED")
                        .is_none()
                        .then_some(())
                });
            }
            self.cmd_timeout(&["tasks", "delete", "--force", id], Duration::from_secs(15));
        }
        self.cmd_timeout(&["containers", "delete", id], Duration::from_secs(15));
    }

    /// The arguments of `ctr run --rm` of `args` on a `--rootfs` dir with this ctr's runtime.
    fn run_rm_args(&self, id: &str, rootfs: &Path, args: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), "--rm".into()];
        a.extend(self.runtime_args());
        a.extend([
            "--rootfs".into(),
            rootfs.to_string_lossy().into_owned(),
            id.into(),
        ]);
        a.extend(args.iter().map(|s| s.to_string()));
        a
    }

    /// `ctr run --rm` (attached, ctr waits for the exit and returns its code), stdin from `input`.
    pub fn run_rm(
        &self,
        id: &str,
        rootfs: &Path,
        input: Option<&[u8]>,
        args: &[&str],
        timeout: Duration,
    ) -> Output {
        let owned = self.run_rm_args(id, rootfs, args);
        let a: Vec<&str> = owned.iter().map(String::as_str).collect();
        self.cmd_full(&a, input, timeout)
    }

    /// `ctr run --rm` with `input` on a stdin pipe that is written only once the task runs, then
    /// closed. (ctr closes the task's stdin when its own stdin hits EOF, but only if the task
    /// already exists then: input that is complete before the task is created is never closed.)
    pub fn run_rm_stdin(
        &self,
        id: &str,
        rootfs: &Path,
        input: &[u8],
        args: &[&str],
        timeout: Duration,
    ) -> Output {
        use std::os::unix::process::CommandExt;
        let owned = self.run_rm_args(id, rootfs, args);
        let a: Vec<&str> = owned.iter().map(String::as_str).collect();
        let out_p = util::scratch_path("stdin-out");
        let err_p = util::scratch_path("stdin-err");
        let mut c = self.command();
        c.args(&a);
        let cmdline = util::describe(&c);
        let spawned = (|| -> std::io::Result<Child> {
            c.stdin(Stdio::piped())
                .stdout(std::fs::File::create(&out_p)?)
                .stderr(std::fs::File::create(&err_p)?)
                .process_group(0);
            c.spawn()
        })();
        let mut child = match spawned {
            Ok(ch) => ch,
            Err(e) => {
                return Output {
                    cmdline,
                    code: -1,
                    stdout: String::new(),
                    stderr: format!("spawn: {e}"),
                    timed_out: false,
                }
            }
        };
        let mut stdin = child.stdin.take();
        let running = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            self.task(id).filter(|t| t.status == "RUNNING").map(|_| ())
        });
        if running.is_some() {
            if let Some(mut w) = stdin.take() {
                use std::io::Write;
                let data = input.to_vec();
                // A writer thread: a full pipe must not block us past the timeout.
                std::thread::spawn(move || {
                    let _ = w.write_all(&data);
                });
            }
        }
        drop(stdin);
        let (code, timed_out) = match util::wait_child(&mut child, timeout) {
            Some(st) => (util::exit_code(st), false),
            None => {
                util::kill_group(&child);
                let _ = child.wait();
                (-1, true)
            }
        };
        let mut stderr = util::read_lossy(&err_p);
        if running.is_none() {
            stderr.push_str("\n[harness] the task never showed RUNNING; stdin was not written");
        }
        let out = Output {
            cmdline,
            code,
            stdout: util::read_lossy(&out_p),
            stderr,
            timed_out,
        };
        let _ = std::fs::remove_file(&out_p);
        let _ = std::fs::remove_file(&err_p);
        out
    }

    /// `ctr content get DIGEST > path` (binary-safe).
    pub fn content_to_file(&self, digest: &str, path: &Path) -> Output {
        let mut c = self.command();
        c.args(["content", "get", digest]);
        let cmdline = util::describe(&c);
        let res = (|| -> std::io::Result<std::process::Output> {
            c.stdout(std::fs::File::create(path)?)
                .stderr(Stdio::piped())
                .stdin(Stdio::null());
            c.output()
        })();
        match res {
            Ok(o) => Output {
                cmdline,
                code: util::exit_code(o.status),
                stdout: String::new(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                timed_out: false,
            },
            Err(e) => Output {
                cmdline,
                code: -1,
                stdout: String::new(),
                stderr: e.to_string(),
                timed_out: false,
            },
        }
    }

    /// The target digest of image `name` (from `ctr images ls`).
    pub fn image_digest(&self, name: &str) -> Option<String> {
        let out = self.cmd(&["images", "ls"]);
        out.stdout.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&name))
                .then(|| f.get(2).map(|d| d.to_string()))
                .flatten()
        })
    }

    /// Parsed `ctr tasks ls` (empty on error).
    pub fn tasks(&self) -> Vec<TaskInfo> {
        let out = self.cmd_timeout(&["tasks", "ls"], Duration::from_secs(20));
        if !out.success() {
            return Vec::new();
        }
        parse_tasks(&out.stdout)
    }

    pub fn task(&self, id: &str) -> Option<TaskInfo> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// The task row, panicking with `ctr t ls` output if the task is missing.
    #[track_caller]
    pub fn expect_task(&self, id: &str) -> TaskInfo {
        let out = self.cmd(&["tasks", "ls"]);
        parse_tasks(&out.stdout)
            .into_iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("task {id} not listed by ctr tasks ls\n{out}"))
    }

    /// Waits until the task shows `status` in `ctr tasks ls`.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> TaskInfo {
        match wait_for(timeout, Duration::from_millis(100), || {
            self.task(id).filter(|t| t.status == status)
        }) {
            Some(t) => t,
            None => panic!(
                "task {id} did not reach {status} within {timeout:?}\n{}",
                self.cmd(&["tasks", "ls"])
            ),
        }
    }

    /// Pids from `ctr tasks ps`.
    #[track_caller]
    pub fn task_pids(&self, id: &str) -> Vec<i32> {
        let out = self.cmd(&["tasks", "ps", id]).expect_ok("ctr tasks ps");
        out.stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().and_then(|p| p.parse().ok()))
            .collect()
    }

    /// Kills the task with SIGKILL, waits for it to stop, deletes task and container; panics on error.
    #[track_caller]
    pub fn kill_and_remove(&self, id: &str) {
        if let Some(t) = self.task(id) {
            if t.status != "STOPPED" {
                self.cmd(&["tasks", "kill", "-s", "SIGKILL", id])
                    .expect_ok("ctr tasks kill -s SIGKILL");
                self.wait_status(id, "STOPPED", Duration::from_secs(20));
            }
            self.delete_task(id);
        }
        self.cmd(&["containers", "delete", id])
            .expect_ok("ctr containers delete");
    }

    /// `ctr tasks delete` of a stopped task. ctr exits with the task's exit status (with no
    /// message) when that is non-zero, so success here is: no error message and the task is gone.
    /// Returns the exit status ctr reported.
    #[track_caller]
    pub fn delete_task(&self, id: &str) -> i32 {
        let out = self.cmd(&["tasks", "delete", id]);
        if out.timed_out
            || (out.code != 0 && !out.stderr.trim().is_empty())
            || self.task(id).is_some()
        {
            panic!(
                "ctr tasks delete {id} failed\n{out}\n{}",
                self.cmd(&["tasks", "ls"])
            );
        }
        out.code
    }

    /// Kills (SIGKILL, after a resume of paused ones) and deletes every task, then deletes every
    /// container of this namespace. Best effort, bounded in time: for teardown.
    pub fn remove_all_tasks(&self) {
        for t in self.tasks() {
            if t.status == "PAUSED" {
                self.cmd_timeout(&["tasks", "resume", &t.id], Duration::from_secs(10));
            }
            self.cmd_timeout(
                &["tasks", "kill", "--all", "-s", "SIGKILL", &t.id],
                Duration::from_secs(10),
            );
        }
        for t in self.tasks() {
            self.cmd_timeout(
                &["tasks", "delete", "--force", &t.id],
                Duration::from_secs(15),
            );
        }
        let ids = self.cmd_timeout(&["containers", "ls", "-q"], Duration::from_secs(10));
        for id in ids.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            self.cmd_timeout(&["containers", "delete", id], Duration::from_secs(10));
        }
    }

    /// The containerd namespaces (`ctr namespaces ls -q`; empty on error).
    pub fn namespaces(&self) -> Vec<String> {
        let out = self.cmd_timeout(&["namespaces", "ls", "-q"], Duration::from_secs(10));
        if !out.success() {
            return Vec::new();
        }
        out.stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// `ctr images import` of a tarball; panics with ctr's output on failure.
    #[track_caller]
    pub fn import_image(&self, tar: &Path) {
        let t = tar.to_string_lossy().into_owned();
        self.cmd_timeout(&["images", "import", &t], Duration::from_secs(120))
            .expect_ok("ctr images import");
    }
}

pub fn parse_tasks(s: &str) -> Vec<TaskInfo> {
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 3 {
                return None;
            }
            Some(TaskInfo {
                id: f[0].into(),
                pid: f[1].parse().unwrap_or(0),
                status: f[2].into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_list() {
        let s = "TASK    PID      STATUS    \nc1      12345    RUNNING\nc2      0        STOPPED\n";
        let t = parse_tasks(s);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            TaskInfo {
                id: "c1".into(),
                pid: 12345,
                status: "RUNNING".into()
            }
        );
        assert_eq!(t[1].status, "STOPPED");
    }
}

//! A thin async wrapper over the runc command line. Each container keeps its own runc root
//! (inside its bundle), so private containerds and pods never share runc state.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize;

use crate::{
    command,
    error::{Error, Result},
};

/// stdio handed to a container process that runc starts.
pub struct ChildStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl ChildStdio {
    pub fn null() -> Self {
        ChildStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct State {
    pub pid: i32,
    pub status: String,
}

/// Options of `runc checkpoint`, mirroring containerd's CheckpointOptions.
#[derive(Debug, Default, Clone)]
pub struct CheckpointOpts {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub empty_ns: Vec<String>,
    pub cgroups_mode: Option<String>,
    /// With `lazy_pages`: the `ip:port` CRIU's own page server listens on. Without: the
    /// `ip:port` of a page server CRIU sends the memory pages to, instead of the image dir.
    pub page_server: Option<String>,
    /// Post-copy: dump all but the memory pages, then serve those from the frozen service on
    /// `page_server` until the destination has them all.
    pub lazy_pages: bool,
}

/// Where `runc restore` finds its images and leaves its pid.
pub struct RestoreOpts<'a> {
    pub image_path: &'a Path,
    pub work_path: &'a Path,
    pub pid_file: &'a Path,
    /// The memory pages come from a lazy-pages daemon listening in `work_path`.
    pub lazy_pages: bool,
}

/// What runc needs to leave a container process behind and tell its pid.
struct ProcessArgs<'a> {
    id: &'a str,
    pid_file: &'a Path,
    console_socket: Option<&'a Path>,
    log: &'a Path,
}

#[derive(Debug, Clone)]
pub struct Runc {
    binary: String,
    root: PathBuf,
}

impl Runc {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let binary = std::env::var("UMS_RUNC").unwrap_or_else(|_| "runc".into());
        Runc {
            binary,
            root: root.into(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self, log: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        cmd
    }

    async fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        let mut cmd = self.command(None);
        cmd.args(args);
        let out = command::output(cmd).await?;
        if out.code != 0 {
            return Err(Error::Runc {
                cmd: args.join(" "),
                msg: String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', "; "),
            });
        }
        Ok(out.stdout)
    }

    /// Runs a runc command whose stdio belongs to a container process; runc's own errors
    /// then go to the json log file, which is read back on failure.
    async fn run_with_stdio(
        &self,
        what: &str,
        args: Vec<String>,
        log: &Path,
        stdio: ChildStdio,
    ) -> Result<()> {
        let _ = std::fs::remove_file(log);
        let mut cmd = self.command(Some(log));
        cmd.args(&args)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let code = command::status(cmd).await?;
        if code != 0 {
            return Err(Error::Runc {
                cmd: what.to_string(),
                msg: last_log_error(log).unwrap_or_else(|| format!("exit status {code}")),
            });
        }
        Ok(())
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdio: ChildStdio,
    ) -> Result<i32> {
        let args = vec!["create".to_string(), "--bundle".into(), path_arg(bundle)];
        let log = bundle.join("runc-create.log");
        let process = ProcessArgs {
            id,
            pid_file,
            console_socket,
            log: &log,
        };
        self.run_process(args, process, stdio).await
    }

    pub async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        log: &Path,
        stdio: ChildStdio,
    ) -> Result<i32> {
        let args = vec![
            "exec".to_string(),
            "--detach".into(),
            "--process".into(),
            path_arg(process_json),
        ];
        let process = ProcessArgs {
            id,
            pid_file,
            console_socket,
            log,
        };
        self.run_process(args, process, stdio).await
    }

    /// `runc restore --detach` of CRIU images into the container described by `bundle`.
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        opts: &RestoreOpts<'_>,
        stdio: ChildStdio,
    ) -> Result<i32> {
        let work_path = opts.work_path;
        let mut args = vec![
            "restore".to_string(),
            "--detach".into(),
            "--bundle".into(),
            path_arg(bundle),
            "--image-path".into(),
            path_arg(opts.image_path),
            "--work-path".into(),
            path_arg(work_path),
        ];
        if opts.lazy_pages {
            // Pages come from the lazy-pages daemon listening in `work_path`.
            args.push("--lazy-pages".into());
        }
        let log = bundle.join("runc-restore.log");
        let process = ProcessArgs {
            id,
            pid_file: opts.pid_file,
            console_socket: None,
            log: &log,
        };
        self.run_process(args, process, stdio)
            .await
            .map_err(|e| match e {
                Error::Runc { cmd, msg } => Error::Runc {
                    cmd,
                    msg: with_criu_errors(msg, &work_path.join("restore.log")),
                },
                e => e,
            })
    }

    /// Runs a runc command that leaves a container process behind (create, exec, restore)
    /// and returns that process's pid.
    async fn run_process(
        &self,
        mut args: Vec<String>,
        p: ProcessArgs<'_>,
        stdio: ChildStdio,
    ) -> Result<i32> {
        let what = args[0].clone();
        args.extend(["--pid-file".into(), path_arg(p.pid_file)]);
        if let Some(sock) = p.console_socket {
            args.extend(["--console-socket".into(), path_arg(sock)]);
        }
        args.push(p.id.into());
        self.run_with_stdio(&what, args, p.log, stdio).await?;
        read_pid(p.pid_file).await
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.run(&["start", id]).await.map(drop)
    }

    pub async fn state(&self, id: &str) -> Result<State> {
        let out = self.run(&["state", id]).await?;
        serde_json::from_slice(&out).map_err(Error::json("runc state output"))
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.run(&args).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run(&args).await.map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.run(&["pause", id]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.run(&["resume", id]).await.map(drop)
    }

    /// Resumes a container only if runc sees it paused (some operations thaw it already).
    pub async fn resume_if_paused(&self, id: &str) -> Result<()> {
        if self.state(id).await.is_ok_and(|s| s.status == "paused") {
            self.resume(id).await?;
        }
        Ok(())
    }

    pub async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let out = self.run(&["ps", "--format", "json", id]).await?;
        serde_json::from_slice::<Option<Vec<i32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(Error::json("runc ps output"))
    }

    pub async fn update(&self, id: &str, resources_json: &Path) -> Result<()> {
        let res = path_arg(resources_json);
        self.run(&["update", "--resources", &res, id])
            .await
            .map(drop)
    }

    /// `runc events --stats`: one JSON object with cgroup statistics.
    pub async fn stats(&self, id: &str) -> Result<serde_json::Value> {
        let out = self.run(&["events", "--stats", id]).await?;
        serde_json::from_slice(&out).map_err(Error::json("runc events --stats output"))
    }

    pub async fn checkpoint(&self, id: &str, opts: &CheckpointOpts) -> Result<()> {
        let (cmd, args) = self.checkpoint_command(id, opts);
        self.checkpoint_result(command::output(cmd).await, args, opts)
    }

    /// A lazy checkpoint (`opts.lazy_pages` and `opts.page_server` set): resolves `ready`
    /// once CRIU's page server listens (everything but the pages is written), and the
    /// returned future once the destination has fetched every page (or the transfer failed;
    /// CRIU then thaws the service's tasks, the cgroup stays as runc left it).
    pub fn checkpoint_lazy(
        &self,
        id: &str,
        opts: &CheckpointOpts,
    ) -> Result<(
        command::ReadyPipe,
        impl std::future::Future<Output = Result<()>> + Send + 'static,
    )> {
        let (mut cmd, args) = self.checkpoint_command(id, opts);
        let ready = command::ReadyPipe::attach(&mut cmd)?;
        let this = self.clone();
        let opts = opts.clone();
        Ok((ready, async move {
            this.checkpoint_result(command::output(cmd).await, args, &opts)
        }))
    }

    fn checkpoint_command(&self, id: &str, opts: &CheckpointOpts) -> (Command, Vec<String>) {
        let mut args = vec![
            "checkpoint".to_string(),
            "--image-path".into(),
            path_arg(&opts.image_path),
            "--work-path".into(),
            path_arg(&opts.work_path),
        ];
        for (set, flag) in [
            (opts.leave_running, "--leave-running"),
            (opts.tcp_established, "--tcp-established"),
            (opts.ext_unix_sk, "--ext-unix-sk"),
            (opts.shell_job, "--shell-job"),
            (opts.file_locks, "--file-locks"),
        ] {
            if set {
                args.push(flag.into());
            }
        }
        for ns in &opts.empty_ns {
            args.extend(["--empty-ns".into(), ns.clone()]);
        }
        if let Some(mode) = &opts.cgroups_mode {
            args.extend(["--manage-cgroups-mode".into(), mode.clone()]);
        }
        if opts.lazy_pages {
            args.extend([
                "--lazy-pages".into(),
                "--status-fd".into(),
                command::STATUS_FD.to_string(),
            ]);
        }
        if let Some(ps) = &opts.page_server {
            args.extend(["--page-server".into(), ps.clone()]);
        }
        args.push(id.into());
        let mut cmd = self.command(None);
        cmd.args(&args);
        (cmd, args)
    }

    fn checkpoint_result(
        &self,
        out: Result<command::Output>,
        args: Vec<String>,
        opts: &CheckpointOpts,
    ) -> Result<()> {
        let out = out?;
        if out.code == 0 {
            return Ok(());
        }
        Err(Error::Runc {
            cmd: args.join(" "),
            msg: with_criu_errors(
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .replace('\n', "; "),
                &opts.work_path.join("dump.log"),
            ),
        })
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

async fn read_pid(pid_file: &Path) -> Result<i32> {
    let s = tokio::fs::read_to_string(pid_file)
        .await
        .map_err(Error::io(format!("read {}", pid_file.display())))?;
    s.trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("bad pid file {}: {s:?}", pid_file.display())))
}

/// Appends CRIU's own error lines to a runc error: runc only says "criu failed", and the work
/// dir holding CRIU's log may be removed right after (a failed migration cleans up).
pub(crate) fn with_criu_errors(msg: String, criu_log: &Path) -> String {
    // "(00.012345)   1: Error (criu/x.c:12): text" -> "criu/x.c:12: text"; the first errors
    // name the cause, the later ones the unwinding.
    let errors: Vec<String> = std::fs::read_to_string(criu_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once("Error (")
                .map(|(_, rest)| rest.replacen("): ", ": ", 1))
        })
        .take(3)
        .collect();
    if errors.is_empty() {
        return format!("{msg} (CRIU log: {})", criu_log.display());
    }
    format!("{msg}; CRIU: {}", errors.join("; "))
}

/// The last error message runc wrote to its json log.
fn last_log_error(log: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct Line {
        level: String,
        msg: String,
    }
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .find(|l| l.level == "error" || l.level == "fatal")
        // One line: callers (containerd, coordinators) often show only the first.
        .map(|l| l.msg.trim().replace('\n', "; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_errors_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("restore.log");
        std::fs::write(
            &log,
            "(00.001) Warn  (criu/a.c:1): meh\n(00.002)      1: Error (criu/files-reg.c:2353): Can't open file usr/local/bin/counter on restore: No such file or directory\n",
        )
        .unwrap();
        let m = with_criu_errors("criu failed".into(), &log);
        assert_eq!(
            m,
            "criu failed; CRIU: criu/files-reg.c:2353: Can't open file usr/local/bin/counter on restore: No such file or directory"
        );
        let m = with_criu_errors("criu failed".into(), &dir.path().join("none.log"));
        assert!(m.contains("CRIU log:"), "{m}");
    }

    #[test]
    fn log_error_is_the_last_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"first\"}\nnot json\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_log_error(&log).as_deref(),
            Some("exec: \"nope\": not found")
        );
        assert_eq!(last_log_error(&dir.path().join("missing")), None);
    }
}

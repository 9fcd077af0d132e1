//! `criu-sync send|recv`: the library on TCP, for tests, benchmarks and debugging (the shim
//! uses the library directly).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use criu_sync::{receiver, sender, Limits, RecvOptions, SendOptions, Sender};
use tokio::net::{TcpListener, TcpStream};

const HELP: &str = "\
criu-sync: stream a CRIU image directory to a peer while the dump is being written

USAGE:
  criu-sync send --dir DIR --to HOST:PORT [--token T] [--chunk BYTES]
                 [--wait-pid PID | --until-file FILE | -- CMD [ARGS...]]
  criu-sync recv --listen ADDR --dir FINAL [--staging DIR] [--token T]
                 [--max-bytes N] [--max-file-bytes N] [--no-fsync]

send: watches DIR (start it BEFORE the dump), streams small files as they are closed and
  pages-*.img while they grow. The end of the dump is:
    --wait-pid PID     that process exited (its status is unknown: taken as success)
    --until-file FILE  FILE appeared
    -- CMD ARGS...     run CMD (e.g. criu dump ...) after the watch is set; exit 0 = success,
                       anything else aborts the stream
    (none)             DIR is already complete
  Prints one JSON line with the stats; exits non-zero with the reason on failure.

recv: accepts ONE connection on ADDR, writes into --staging (default FINAL.staging), verifies
  every file and the manifest, renames staging to FINAL (neither may exist). Prints the
  listening address on stderr, one JSON line on success; on failure removes staging, leaves
  FINAL absent, exits non-zero with the reason.

  --token T   migration token (default: $CRIU_SYNC_TOKEN, else empty); both sides must agree
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprint!("{HELP}");
        return ExitCode::from(2);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    // One thread drives the stream and its socket: with a multi-thread runtime the stream
    // task was woken across threads (and moved between workers) at every socket wait, which
    // costs CPU a fast link does not have to spare. The blocking work (file reads, writes,
    // hashing) has threads of its own anyway.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("criu-sync: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = match args[0].as_str() {
        "send" => parse_send(&args[1..]).and_then(|a| rt.block_on(send(a))),
        "recv" => parse_recv(&args[1..]).and_then(|a| rt.block_on(recv(a))),
        other => Err(format!("unknown command {other:?} (send or recv; --help)")),
    };
    match res {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("criu-sync: error: {e}");
            ExitCode::FAILURE
        }
    }
}

enum End {
    Now,
    Pid(i32),
    File(PathBuf),
    Command(Vec<String>),
}

struct SendArgs {
    dir: PathBuf,
    to: String,
    token: String,
    chunk: Option<usize>,
    end: End,
}

struct RecvArgs {
    listen: String,
    dir: PathBuf,
    staging: Option<PathBuf>,
    token: String,
    limits: Limits,
    fsync: bool,
}

fn default_token() -> String {
    std::env::var("CRIU_SYNC_TOKEN").unwrap_or_default()
}

/// Pulls `--flag VALUE` pairs; returns the value of a flag or an error naming it.
fn value<'a>(it: &mut std::slice::Iter<'a, String>, flag: &str) -> Result<&'a str, String> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: {s:?} is not a valid number"))
}

fn parse_send(args: &[String]) -> Result<SendArgs, String> {
    let (mut dir, mut to, mut token, mut chunk) = (None, None, default_token(), None);
    let mut end = End::Now;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value(&mut it, a)?)),
            "--to" => to = Some(value(&mut it, a)?.to_owned()),
            "--token" => token = value(&mut it, a)?.to_owned(),
            "--chunk" => chunk = Some(number(value(&mut it, a)?, a)?),
            "--wait-pid" => end = End::Pid(number(value(&mut it, a)?, a)?),
            "--until-file" => end = End::File(PathBuf::from(value(&mut it, a)?)),
            "--" => {
                let cmd: Vec<String> = it.by_ref().cloned().collect();
                if cmd.is_empty() {
                    return Err("-- needs a command".into());
                }
                end = End::Command(cmd);
            }
            other => return Err(format!("send: unknown argument {other:?}")),
        }
    }
    Ok(SendArgs {
        dir: dir.ok_or("send needs --dir")?,
        to: to.ok_or("send needs --to")?,
        token,
        chunk,
        end,
    })
}

fn parse_recv(args: &[String]) -> Result<RecvArgs, String> {
    let (mut listen, mut dir, mut staging, mut token) = (None, None, None, default_token());
    let mut limits = Limits::default();
    let mut fsync = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = Some(value(&mut it, a)?.to_owned()),
            "--dir" => dir = Some(PathBuf::from(value(&mut it, a)?)),
            "--staging" => staging = Some(PathBuf::from(value(&mut it, a)?)),
            "--token" => token = value(&mut it, a)?.to_owned(),
            "--max-bytes" => limits.max_total_bytes = number(value(&mut it, a)?, a)?,
            "--max-file-bytes" => limits.max_file_bytes = number(value(&mut it, a)?, a)?,
            "--no-fsync" => fsync = false,
            other => return Err(format!("recv: unknown argument {other:?}")),
        }
    }
    Ok(RecvArgs {
        listen: listen.ok_or("recv needs --listen")?,
        dir: dir.ok_or("recv needs --dir")?,
        staging,
        token,
        limits,
        fsync,
    })
}

async fn send(a: SendArgs) -> Result<String, String> {
    let mut opts = SendOptions::new(a.token);
    if let Some(c) = a.chunk {
        opts.chunk_size = c;
    }
    // Watch before anything else, in particular before a command that writes the dump starts.
    let s = Sender::new(&a.dir, opts).map_err(|e| e.to_string())?;
    let stream = TcpStream::connect(&a.to)
        .await
        .map_err(|e| format!("connect {}: {e}", a.to))?;
    let _ = stream.set_nodelay(true);
    let dump = tokio::spawn(wait_end(a.end));
    let done = async move {
        match dump.await {
            Ok(r) => r,
            Err(e) => Err(format!("end-of-dump task: {e}")),
        }
    };
    let st = sender::send_over(s, stream, done)
        .await
        .map_err(|e| e.to_string())?;
    let secs = st.elapsed.as_secs_f64();
    Ok(serde_json::json!({
        "ok": true,
        "files": st.files,
        "bytes": st.bytes,
        "bytes_before_done": st.bytes_before_done,
        "elapsed_ms": st.elapsed.as_millis() as u64,
        "after_done_ms": st.after_done.as_millis() as u64,
        "mb_per_s": if secs > 0.0 { st.bytes as f64 / 1e6 / secs } else { 0.0 },
    })
    .to_string())
}

/// Resolves when the dump ended: `Ok` for success.
async fn wait_end(end: End) -> Result<(), String> {
    match end {
        End::Now => Ok(()),
        End::File(f) => loop {
            if tokio::fs::try_exists(&f).await.unwrap_or(false) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        },
        End::Pid(pid) => wait_pid(pid).await,
        End::Command(cmd) => {
            let status = tokio::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .status()
                .await
                .map_err(|e| format!("run {}: {e}", cmd[0]))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{} exited with {status}", cmd[0]))
            }
        }
    }
}

/// Waits for a process that is not our child: a pidfd becomes readable when it exits.
async fn wait_pid(pid: i32) -> Result<(), String> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain syscall; the returned descriptor is owned right below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(()); // already gone
        }
        return Err(format!("pidfd_open {pid}: {e}"));
    }
    // SAFETY: fd is a fresh descriptor returned by pidfd_open, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // A pidfd polls readable once the process exited; poll(2) blocks, so off the async threads.
    tokio::task::spawn_blocking(move || {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll pidfd: {e}")),
            }
        }
    })
    .await
    .map_err(|e| format!("wait for pid {pid}: {e}"))?
}

async fn recv(a: RecvArgs) -> Result<String, String> {
    let staging = a.staging.unwrap_or_else(|| {
        let mut s = a.dir.clone().into_os_string();
        s.push(".staging");
        PathBuf::from(s)
    });
    let listener = TcpListener::bind(&a.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", a.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("criu-sync: listening on {addr}");
    let (stream, peer) = listener
        .accept()
        .await
        .map_err(|e| format!("accept: {e}"))?;
    drop(listener);
    let _ = stream.set_nodelay(true);
    let mut opts = RecvOptions::new(a.token);
    opts.limits = a.limits;
    opts.fsync = a.fsync;
    let st = receiver::receive_over(stream, &staging, &a.dir, &opts)
        .await
        .map_err(|e| format!("from {peer}: {e}"))?;
    let secs = st.elapsed.as_secs_f64();
    Ok(serde_json::json!({
        "ok": true,
        "dir": st.dir.display().to_string(),
        "peer": peer.to_string(),
        "files": st.files,
        "bytes": st.bytes,
        "elapsed_ms": st.elapsed.as_millis() as u64,
        "commit_ms": st.commit.as_millis() as u64,
        "fsync": a.fsync,
        "mb_per_s": if secs > 0.0 { st.bytes as f64 / 1e6 / secs } else { 0.0 },
    })
    .to_string())
}

//! A real CRIU dump streamed while it is written: a process holding 64 MiB of patterned memory
//! is dumped with `criu dump`, the image directory goes over loopback TCP as CRIU writes it, the
//! received directory must be byte-identical, and `criu restore` from the RECEIVED directory must
//! bring the process back with the same memory checksum. Skipped (with the reason printed) only
//! when criu is not installed or we are not root.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criu_sync::{receiver, sender, RecvOptions, SendOptions, Sender};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "criu-test";

/// The dumped process: 64 MiB of patterned data; on SIGUSR1 it writes "<len> <checksum>" of it to
/// `<dir>/sum` (the checksum is computed from memory, so it proves the pages came back).
const PERL: &str = r#"
my $dir = shift;
my $x = join("", map { chr(($_ * 7 + 3) % 251) } 0..65535) x 1024;
$SIG{USR1} = sub {
    open(my $f, ">", "$dir/sum.tmp") or die; print $f length($x) . " " . unpack("%32C*", $x); close $f;
    rename("$dir/sum.tmp", "$dir/sum");
};
open(my $r, ">", "$dir/ready") or die; close $r;
while (1) { sleep 1 }
"#;

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (criu dump needs root)".into());
    }
    match Command::new("criu").arg("--version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("criu is not installed (hack/install-deps.sh builds it)".into())
        }
        _ => None,
    }
}

/// Kills and reaps a pid if the test ends early.
struct Reap(i32);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on a pid this test started (ours or restored as our child).
        unsafe {
            if libc::kill(self.0, libc::SIGKILL) == 0 {
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn wait_file(p: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn checksum(pid: i32, dir: &Path) -> String {
    let _ = std::fs::remove_file(dir.join("sum"));
    // SAFETY: signalling our own test process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_file(&dir.join("sum"), "the checksum")
}

fn files(d: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn log_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_real_criu_dump_and_restores_from_it() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED streams_a_real_criu_dump_and_restores_from_it: {why}");
        return;
    }
    // The restored process is re-parented to us (criu restore -d exits), so we can reap it.
    // SAFETY: prctl with constant arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let tmp = tempfile::Builder::new()
        .prefix("criu-sync-test")
        .tempdir()
        .unwrap();
    let work = tmp.path().join("work");
    let images = tmp.path().join("images");
    let (staging, fin) = (tmp.path().join("recv.staging"), tmp.path().join("recv"));
    std::fs::create_dir(&work).unwrap();
    std::fs::create_dir(&images).unwrap();

    // Its own session and /dev/null stdio: a self-contained tree CRIU dumps without --shell-job.
    let mut cmd = Command::new("perl");
    cmd.arg("-e")
        .arg(PERL)
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe, called between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn perl");
    let pid = child.id() as i32;
    let _reap = Reap(pid);
    wait_file(&work.join("ready"), "the process to fill its memory");
    let before = checksum(pid, &work);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recv_opts = RecvOptions::new(TOKEN);
    let recv_progress = recv_opts.progress.clone();
    let recv = tokio::spawn({
        let (staging, fin) = (staging.clone(), fin.clone());
        async move {
            let (stream, _) = listener.accept().await.unwrap();
            receiver::receive_over(stream, &staging, &fin, &recv_opts).await
        }
    });

    // Watch first, then dump.
    let sender = Sender::new(&images, SendOptions::new(TOKEN)).unwrap();
    let dump = tokio::spawn({
        let images = images.clone();
        let p = recv_progress.clone();
        async move {
            let t = Instant::now();
            let status = tokio::process::Command::new("criu")
                .args(["dump", "-t", &pid.to_string(), "-D"])
                .arg(&images)
                .args(["-o", "dump.log", "-v2"])
                .status()
                .await
                .map_err(|e| format!("run criu: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "criu dump: {status}\n{}",
                    log_tail(&images.join("dump.log"))
                ));
            }
            Ok((t.elapsed(), p.bytes()))
        }
    });
    let (dump_tx, dump_rx) = tokio::sync::oneshot::channel();
    let done = async move {
        let r = dump.await.map_err(|e| e.to_string())?;
        let (elapsed, received) = r.clone()?;
        let _ = dump_tx.send((elapsed, received));
        Ok::<(), String>(())
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let sent = sender::send_over(sender, stream, done).await;
    let received = recv.await.unwrap();
    let sent = sent.expect("send");
    let received = received.expect("receive");
    let (dump_time, received_at_exit) = dump_rx.await.unwrap();
    // criu dump killed the process; reap it so its pid is free for the restore.
    let mut child = child;
    child.wait().unwrap();

    let src = files(&images);
    assert!(
        src.iter().any(|(n, _)| n == "pages-1.img"),
        "no pages image"
    );
    assert!(src.iter().any(|(n, _)| n == "inventory.img"));
    assert_eq!(src, files(&fin), "received images differ from the dump");
    assert!(!staging.exists());
    let pages = src
        .iter()
        .find(|(n, _)| n == "pages-1.img")
        .map_or(0, |(_, d)| d.len() as u64);
    eprintln!(
        "criu dump {dump_time:?}; {} files, {} bytes ({pages} of pages); {} received before criu \
         exited (sender: {} written), stream finished {:?} after; receiver commit {:?}",
        received.files,
        received.bytes,
        received_at_exit,
        sent.bytes_before_done,
        sent.after_done,
        received.commit
    );
    assert!(
        pages >= 64 << 20,
        "pages image of {pages} bytes for 64 MiB of data"
    );
    // The transfer overlapped the dump: pages were on the receiver before CRIU exited.
    assert!(
        received_at_exit > 0,
        "nothing received before criu exited: no overlap"
    );

    // The received images restore: same pid, same memory.
    let out = Command::new("criu")
        .args(["restore", "-d", "-D"])
        .arg(&fin)
        .args(["-o", "restore.log", "-v2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "criu restore from the received dir failed: {}\n{}",
        out.status,
        log_tail(&fin.join("restore.log"))
    );
    let after = checksum(pid, &work);
    assert_eq!(
        before, after,
        "memory checksum changed across dump/stream/restore"
    );
    eprintln!("restored pid {pid} from the received images, checksum {after}");
}

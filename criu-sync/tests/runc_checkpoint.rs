//! `runc checkpoint` of a busybox container (what the shim does to the nested service) streamed
//! while runc and CRIU write it; the received directory must be byte-identical and `runc restore`
//! from it must bring the container back. Skipped (reason printed) only when runc or criu is not
//! installed or we are not root. Own test binary: the CRIU test makes its process a subreaper,
//! which would adopt runc's detached containers.

use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criu_sync::{receiver, sender, RecvOptions, SendOptions, Sender};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "runc-test";

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["runc", "criu"] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            if e.kind() == std::io::ErrorKind::NotFound {
                return Some(format!("{tool} is not installed (hack/install-deps.sh)"));
            }
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is not installed (busybox-static)".into());
    }
    None
}

/// Deletes the container (whatever state it is in) and the runc root at the end.
struct Container {
    root: PathBuf,
    id: String,
}

impl Container {
    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    /// `runc run -d` / `runc restore -d`: the container inherits runc's stdio, so stdout and
    /// stderr are pipes we hold (a host file there would fail the dump; waiting for EOF on
    /// them would never end).
    /// Returns the read ends of those pipes: keep them until the container is gone.
    fn start_detached(&self, args: &[&str]) -> (Option<ChildStdout>, Option<ChildStderr>) {
        let mut child = self
            .runc()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runc");
        let status = child.wait().unwrap();
        assert!(status.success(), "runc {args:?}: {status}");
        (child.stdout.take(), child.stderr.take())
    }

    fn status(&self) -> String {
        let out = self.runc().args(["state", &self.id]).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        s.split("\"status\": \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("absent")
            .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "-f", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
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

fn bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "runc spec failed");
    let spec = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    // 24 MB in a shell variable, then /ready in the rootfs, then idle.
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "/bin/busybox",
        "sh",
        "-c",
        "x=$(/bin/busybox head -c 24000000 /dev/zero | /bin/busybox tr '\\0' a); \
         /bin/busybox touch /ready; while true; do /bin/busybox sleep 1; done"
    ]);
    spec["root"]["readonly"] = false.into();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_runc_checkpoint_and_restores_from_it() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED streams_a_runc_checkpoint_and_restores_from_it: {why}");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("criu-sync-runc")
        .tempdir()
        .unwrap();
    let b = tmp.path().join("bundle");
    bundle(&b);
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let (staging, fin) = (tmp.path().join("recv.staging"), tmp.path().join("recv"));
    let ct = Container {
        root: tmp.path().join("runc-root"),
        id: format!("criu-sync-test-{}", std::process::id()),
    };
    let bundle_arg = b.to_str().unwrap().to_owned();
    let _stdio = ct.start_detached(&["run", "-d", "--bundle", &bundle_arg, &ct.id]);
    wait_for("the container to fill its memory", || {
        b.join("rootfs/ready").exists()
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recv_opts = RecvOptions::new(TOKEN);
    let recv = tokio::spawn({
        let (staging, fin) = (staging.clone(), fin.clone());
        async move {
            let (stream, _) = listener.accept().await.unwrap();
            receiver::receive_over(stream, &staging, &fin, &recv_opts).await
        }
    });

    // Watch before runc starts: runc's descriptors.json and CRIU's images all raise events.
    let sender = Sender::new(&images, SendOptions::new(TOKEN)).unwrap();
    let mut checkpoint = tokio::process::Command::from(ct.runc());
    checkpoint
        .args(["checkpoint", "--image-path"])
        .arg(&images)
        .arg(&ct.id);
    let dump = tokio::spawn(async move {
        let t = Instant::now();
        let out = checkpoint
            .output()
            .await
            .map_err(|e| format!("runc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "runc checkpoint: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(t.elapsed())
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = async move {
        let elapsed = dump.await.map_err(|e| e.to_string())??;
        let _ = tx.send(elapsed);
        Ok::<(), String>(())
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let sent = sender::send_over(sender, stream, done).await.expect("send");
    let received = recv.await.unwrap().expect("receive");
    let dump_time = rx.await.unwrap();

    let src = files(&images);
    for must in [
        "descriptors.json",
        "inventory.img",
        "pages-1.img",
        "dump.log",
    ] {
        assert!(src.iter().any(|(n, _)| n == must), "no {must} in the dump");
    }
    assert_eq!(
        src,
        files(&fin),
        "received images differ from the checkpoint"
    );
    assert!(!staging.exists());
    eprintln!(
        "runc checkpoint {dump_time:?}: {} files, {} bytes, {} sent before runc exited, stream \
         done {:?} after",
        received.files, received.bytes, sent.bytes_before_done, sent.after_done
    );
    assert_eq!(ct.status(), "absent", "checkpoint left the container");

    // What the destination shim does: restore from the received images.
    std::fs::remove_file(b.join("rootfs/ready")).unwrap();
    let fin_arg = fin.to_str().unwrap().to_owned();
    let _stdio2 = ct.start_detached(&[
        "restore",
        "-d",
        "--image-path",
        &fin_arg,
        "--bundle",
        &bundle_arg,
        &ct.id,
    ]);
    assert_eq!(ct.status(), "running");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ct.status(),
        "running",
        "restored container did not keep running"
    );
    // It resumed inside its loop: it did not start over (which would recreate /ready).
    assert!(!b.join("rootfs/ready").exists());
}

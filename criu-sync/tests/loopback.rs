//! Sender and receiver over loopback TCP, with a writer that behaves like CRIU: small images
//! written and closed, `pages-N.img` appended over time through one open descriptor, `files.img`
//! open across the whole dump, `inventory.img` last, `descriptors.json` there before the watch.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_sync::{receiver, sender, Progress, RecvError, RecvOptions, SendOptions, Sender};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "loopback-test";

fn random(seed: &str, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut buf);
    buf
}

fn write_small(dir: &Path, name: &str, content: &[u8]) {
    let mut f = File::create(dir.join(name)).unwrap();
    f.write_all(content).unwrap();
}

/// Waits (blocking) until `p` counts more than `min` bytes received, or panics.
fn wait_received(p: &Progress, min: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.bytes() <= min {
        assert!(
            Instant::now() < deadline,
            "receiver got only {} bytes while the dump was still running",
            p.bytes()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the fake CRIU observed: received bytes when it "exited".
struct DumpReport {
    received_before_exit: u64,
}

fn fake_criu(dir: PathBuf, recv_progress: Progress) -> DumpReport {
    // files.img stays open for the whole dump (CRIU closes it at the end).
    let mut files_img = File::create(dir.join("files.img")).unwrap();
    for (i, name) in ["pstree.img", "core-1.img", "mm-1.img", "pagemap-1.img"]
        .iter()
        .enumerate()
    {
        write_small(&dir, name, &random(name, 100 + i * 1000));
        files_img.write_all(&random(name, 64)).unwrap();
    }
    for (pid, chunks) in [(1, 24usize), (2, 6)] {
        let name = format!("pages-{pid}.img");
        let mut pages = File::create(dir.join(&name)).unwrap();
        std::fs::set_permissions(dir.join(&name), std::fs::Permissions::from_mode(0o600)).unwrap();
        for c in 0..chunks {
            pages
                .write_all(&random(&format!("{name}-{c}"), 1 << 20))
                .unwrap();
            std::thread::sleep(Duration::from_millis(5));
            if pid == 1 && c == 8 {
                // The receiver has bytes while pages-1.img is still open and growing.
                wait_received(&recv_progress, 0);
            }
        }
        // A partial page-sized tail, so the total is not a multiple of the chunk size.
        pages.write_all(&random(&name, 4096 + 17)).unwrap();
        drop(pages);
        write_small(&dir, &format!("core-{}.img", pid + 10), b"core");
    }
    drop(files_img);
    write_small(&dir, "stats-dump", &random("stats", 40));
    write_small(&dir, "inventory.img", &random("inventory", 300));
    DumpReport {
        received_before_exit: recv_progress.bytes(),
    }
}

fn assert_same_dir(a: &Path, b: &Path) {
    let list = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(a), list(b), "different file sets");
    for n in list(a) {
        let (pa, pb) = (a.join(&n), b.join(&n));
        assert_eq!(
            std::fs::read(&pa).unwrap(),
            std::fs::read(&pb).unwrap(),
            "{n:?} differs"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pa), mode(&pb), "{n:?} mode differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_while_the_dump_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dump");
    std::fs::create_dir(&src).unwrap();
    // runc writes descriptors.json before CRIU starts: it is there before the watch.
    write_small(
        &src,
        "descriptors.json",
        br#"["/dev/null","pipe:[1]","pipe:[2]"]"#,
    );
    let (staging, fin) = (tmp.path().join("recv.staging"), tmp.path().join("recv"));

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

    let sender = Sender::new(&src, SendOptions::new(TOKEN)).unwrap();
    let dump = tokio::task::spawn_blocking({
        let (src, p) = (src.clone(), recv_progress.clone());
        move || fake_criu(src, p)
    });
    let (report_tx, report_rx) = tokio::sync::oneshot::channel();
    let done = async move {
        let report = dump.await.map_err(|e| e.to_string())?;
        let _ = report_tx.send(report);
        Ok::<(), String>(())
    };
    let stream = TcpStream::connect(addr).await.unwrap();
    let sent = sender::send_over(sender, stream, done).await.unwrap();
    let received = recv.await.unwrap().unwrap();
    let report = report_rx.await.unwrap();

    assert_same_dir(&src, &fin);
    assert!(!staging.exists());
    let total: u64 = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(sent.bytes, total);
    assert_eq!(received.bytes, total);
    assert_eq!(sent.files, 12);
    assert_eq!(received.files, 12);
    // Overlap: most of the pages were across before the dump ended.
    assert!(
        report.received_before_exit >= 8 << 20,
        "only {} bytes received before the dump ended",
        report.received_before_exit
    );
    assert!(sent.bytes_before_done >= 8 << 20, "{sent:?}");
    eprintln!(
        "sent {} bytes, {} before the dump ended (receiver had {}), {:?} after it",
        sent.bytes, sent.bytes_before_done, report.received_before_exit, sent.after_done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_vanishing_mid_stream_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (staging, fin) = (tmp.path().join("recv.staging"), tmp.path().join("recv"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recv = tokio::spawn({
        let (staging, fin) = (staging.clone(), fin.clone());
        async move {
            let (stream, _) = listener.accept().await.unwrap();
            receiver::receive_over(stream, &staging, &fin, &RecvOptions::new(TOKEN)).await
        }
    });
    // A real sender streaming a directory that never completes...
    let src = tmp.path().join("dump");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("pages-1.img"), random("p", 3 << 20)).unwrap();
    let sender = Sender::new(&src, SendOptions::new(TOKEN)).unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let never = std::future::pending::<Result<(), String>>();
    // ...whose process dies after a moment: the future is dropped, the socket closed.
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        sender::send_over(sender, &mut stream, never),
    )
    .await;
    let _ = stream.shutdown().await;
    drop(stream);
    let err = tokio::time::timeout(Duration::from_secs(10), recv)
        .await
        .expect("receiver hung")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, RecvError::Truncated | RecvError::Protocol(_)),
        "{err}"
    );
    assert!(!staging.exists() && !fin.exists());
}

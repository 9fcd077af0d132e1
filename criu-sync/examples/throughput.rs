//! Throughput of criu-sync over loopback TCP next to raw TCP measured the same way.
//!
//! `cargo run --release -p criu-sync --example throughput -- [MiB] [--dir BASE]`
//! (default 512 MiB under /tmp). Prints MB/s (10^6 bytes per second) for:
//! - raw tcp mem: bytes from memory to a socket, read and discarded (the loopback ceiling)
//! - raw tcp file: file read in 1 MiB chunks -> socket -> file written, no framing or hashing
//! - criu-sync: a complete directory (one pages file of that size + small files) streamed,
//!   hashed on both sides, verified and committed, with and without fsync
//! - overlap: a writer appends the pages file at full speed while criu-sync streams it; the
//!   figure is the total from the first byte written to the commit, next to writing first and
//!   sending after
//!
//! `CHUNK=bytes` sets the sender's chunk size; `REPEAT=n` only runs the criu-sync directory
//! stream n times (to see the spread on a shared machine). Not a test: numbers depend on the
//! machine, and both ends share its cores here. The payload is blake3-XOF output.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criu_sync::{receiver, sender, RecvOptions, SendOptions, Sender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 1 << 20;

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn fill(seed: u64, buf: &mut [u8]) {
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(buf);
}

fn write_pages(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        fill(i, &mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
        i += 1;
    }
}

fn small_files(dir: &Path) {
    for name in [
        "core-1.img",
        "mm-1.img",
        "pagemap-1.img",
        "files.img",
        "inventory.img",
    ] {
        std::fs::write(dir.join(name), vec![1u8; 2000]).unwrap();
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

async fn raw_mem(size: u64) -> Duration {
    let (mut a, mut b) = pair().await;
    let t = Instant::now();
    let w = tokio::spawn(async move {
        let buf = vec![7u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            a.write_all(&buf[..n]).await.unwrap();
            left -= n as u64;
        }
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < size {
        got += b.read(&mut buf).await.unwrap() as u64;
    }
    w.await.unwrap();
    t.elapsed()
}

/// File -> socket -> file, blocking file I/O on blocking threads as criu-sync does.
async fn raw_file(src: PathBuf, dst: PathBuf, size: u64) -> Duration {
    let (mut a, mut b) = pair().await;
    let t = Instant::now();
    let w = tokio::spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
        let rd = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(src).unwrap();
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                tx.blocking_send(buf).unwrap();
            }
        });
        while let Some(b) = rx.recv().await {
            a.write_all(&b).await.unwrap();
        }
        rd.await.unwrap();
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let wr = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(dst).unwrap();
        while let Some(b) = rx.blocking_recv() {
            f.write_all(&b).unwrap();
        }
    });
    let mut got = 0u64;
    while got < size {
        // Fill whole chunks (as criu-sync's frames are) before handing them to the writer.
        let want = (size - got).min(CHUNK as u64) as usize;
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            if (&mut b)
                .take((want - buf.len()) as u64)
                .read_buf(&mut buf)
                .await
                .unwrap()
                == 0
            {
                panic!("raw stream ended early");
            }
        }
        got += want as u64;
        tx.send(buf).await.unwrap();
    }
    drop(tx);
    wr.await.unwrap();
    w.await.unwrap();
    t.elapsed()
}

/// Streams `src` (its end signalled by `done`) into `base/NAME`; returns (elapsed, after_done,
/// received bytes).
async fn criu_sync_run<F>(
    src: &Path,
    base: &Path,
    name: &str,
    fsync: bool,
    done: F,
) -> (Duration, Duration, u64)
where
    F: std::future::Future<Output = Result<(), String>>,
{
    let (a, b) = pair().await;
    let (staging, fin) = (base.join(format!("{name}.staging")), base.join(name));
    let mut opts = RecvOptions::new("bench");
    opts.fsync = fsync;
    let recv = tokio::spawn(async move { receiver::receive_over(b, &staging, &fin, &opts).await });
    let t = Instant::now();
    let mut so = SendOptions::new("bench");
    if let Some(c) = std::env::var("CHUNK").ok().and_then(|c| c.parse().ok()) {
        so.chunk_size = c;
    }
    let s = Sender::new(src, so).unwrap();
    let st = sender::send_over(s, a, done).await.unwrap();
    let r = recv.await.unwrap().unwrap();
    (t.elapsed(), st.after_done, r.bytes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut mib: u64 = 512;
    let mut base = PathBuf::from("/tmp");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => base = PathBuf::from(args.next().expect("--dir needs a value")),
            n => mib = n.parse().expect("size in MiB"),
        }
    }
    let size = mib << 20;
    let tmp = tempfile::Builder::new()
        .prefix("criu-sync-bench")
        .tempdir_in(&base)
        .unwrap();
    let root = tmp.path().to_owned();
    let src = root.join("src");
    std::fs::create_dir(&src).unwrap();
    write_pages(&src.join("pages-1.img"), size);
    small_files(&src);
    let total: u64 = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "payload {mib} MiB pages + 5 small files under {}",
        base.display()
    );

    if let Some(n) = std::env::var("REPEAT")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        for i in 0..n {
            let name = format!("rep-{i}");
            let (d, _, b) = criu_sync_run(&src, &root, &name, false, async { Ok(()) }).await;
            println!("repeat {i}: {:.0} MB/s", mbps(b, d));
            std::fs::remove_dir_all(root.join(&name)).unwrap();
        }
        return;
    }
    let buf = std::fs::read(src.join("pages-1.img")).unwrap();
    let t = Instant::now();
    let h = blake3::hash(&buf);
    let d = t.elapsed();
    drop(buf);
    println!(
        "blake3, one core           {:8.0} MB/s  ({})",
        mbps(size, d),
        &h.to_hex()[..8]
    );
    let d = raw_mem(size).await;
    println!("raw tcp mem->mem          {:8.0} MB/s", mbps(size, d));
    let d = raw_file(src.join("pages-1.img"), root.join("raw.out"), size).await;
    println!("raw tcp file->file        {:8.0} MB/s", mbps(size, d));
    std::fs::remove_file(root.join("raw.out")).unwrap();

    for (i, fsync) in [false, true, false, true].into_iter().enumerate() {
        let name = format!("recv-{i}");
        let (d, _, bytes) = criu_sync_run(&src, &root, &name, fsync, async { Ok(()) }).await;
        assert_eq!(bytes, total);
        println!(
            "criu-sync dir, fsync={:<5}  {:8.0} MB/s  ({:?} for {} bytes)",
            fsync,
            mbps(bytes, d),
            d,
            bytes
        );
        std::fs::remove_dir_all(root.join(&name)).unwrap();
    }

    // Overlap: a fake dump writes the pages file at full speed while it streams.
    let live = root.join("live");
    std::fs::create_dir(&live).unwrap();
    let t = Instant::now();
    let writer = tokio::task::spawn_blocking({
        let live = live.clone();
        move || {
            let t = Instant::now();
            write_pages(&live.join("pages-1.img"), size);
            small_files(&live);
            t.elapsed()
        }
    });
    let done = async move { writer.await.map(|_| ()).map_err(|e| e.to_string()) };
    let (d, after, bytes) = criu_sync_run(&live, &root, "recv-live", false, done).await;
    let total_overlap = t.elapsed().max(d);
    // Sequential: write the dump, then send it.
    std::fs::remove_dir_all(root.join("recv-live")).unwrap();
    let t = Instant::now();
    let seq = root.join("seq");
    std::fs::create_dir(&seq).unwrap();
    write_pages(&seq.join("pages-1.img"), size);
    small_files(&seq);
    let write_time = t.elapsed();
    let (send_time, _, _) = criu_sync_run(&seq, &root, "recv-seq", false, async { Ok(()) }).await;
    println!(
        "overlap: write+stream {:?} total ({:.0} MB/s end to end, {:?} after the writer ended) \
         vs write {:?} then stream {:?} = {:?}",
        total_overlap,
        mbps(bytes, total_overlap),
        after,
        write_time,
        send_time,
        write_time + send_time
    );
}

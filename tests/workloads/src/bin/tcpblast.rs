//! tcpblast: a tiny TCP throughput probe for the test bed's link (static, so it also runs in a
//! busybox container). `tcpblast recv --listen IP:PORT` accepts one connection and counts what
//! arrives until EOF; `tcpblast send --to IP:PORT [--seconds S]` sends as fast as it can for S
//! seconds (default 3). Both print `<side> <bytes> bytes in <secs> s = <MB/s> MB/s (<Mbit/s> Mbit/s)`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ums_workloads::{self as wl, Args};

const USAGE: &str = "\
usage: tcpblast recv --listen IP:PORT
       tcpblast send --to IP:PORT [--seconds S]

Measures TCP throughput: recv accepts one connection and reads until EOF (timed from the
first byte); send writes 1 MiB buffers for S seconds (default 3), then closes.
Each side prints: <recv|send> <bytes> bytes in <secs> s = <MB/s> MB/s (<Mbit/s> Mbit/s)";

fn report(side: &str, bytes: u64, d: Duration) {
    let s = d.as_secs_f64().max(1e-9);
    let mbs = bytes as f64 / s / 1e6;
    println!(
        "{side} {bytes} bytes in {s:.3} s = {mbs:.1} MB/s ({:.0} Mbit/s)",
        mbs * 8.0
    );
}

fn main() {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv[0] == "-h" || argv[0] == "--help" {
        println!("{USAGE}");
        return;
    }
    let mode = argv.remove(0);
    let mut a = Args::parse_from("tcpblast", USAGE, argv);
    let mut buf = vec![0u8; 1 << 20];
    match mode.as_str() {
        "recv" => {
            let listen = a.string("listen", "0.0.0.0:5201");
            a.finish();
            let l = TcpListener::bind(&listen)
                .unwrap_or_else(|e| wl::die("tcpblast", &format!("bind {listen}: {e}")));
            let (mut s, _) = l
                .accept()
                .unwrap_or_else(|e| wl::die("tcpblast", &format!("accept: {e}")));
            let mut total = 0u64;
            let mut start = None;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        start.get_or_insert_with(Instant::now);
                        total += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => wl::die("tcpblast", &format!("read: {e}")),
                }
            }
            report(
                "recv",
                total,
                start.map(|t| t.elapsed()).unwrap_or_default(),
            );
        }
        "send" => {
            let to = a.string("to", "");
            let secs = a.u64("seconds", 3);
            a.finish();
            if to.is_empty() {
                wl::die("tcpblast", "send needs --to IP:PORT");
            }
            wl::Rng::new(1).fill(bytemuck_u64(&mut buf));
            let mut s = TcpStream::connect(&to)
                .unwrap_or_else(|e| wl::die("tcpblast", &format!("connect {to}: {e}")));
            let start = Instant::now();
            let end = start + Duration::from_secs(secs);
            let mut total = 0u64;
            while Instant::now() < end {
                match s.write(&buf) {
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => wl::die("tcpblast", &format!("write: {e}")),
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Wait for the receiver to close, so the time covers delivery.
            let _ = s.read(&mut buf[..1]);
            report("send", total, start.elapsed());
        }
        _ => wl::die("tcpblast", &format!("unknown mode `{mode}`\n{USAGE}")),
    }
}

/// The buffer as u64 words (it is 1 MiB, 8-byte aligned by the allocator for this size).
fn bytemuck_u64(b: &mut [u8]) -> &mut [u64] {
    let (pre, words, _) = unsafe { b.align_to_mut::<u64>() };
    assert!(pre.is_empty(), "buffer not 8-byte aligned");
    words
}

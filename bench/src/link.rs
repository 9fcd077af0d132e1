//! The link probe (issue 4's "criu-sync moves >= 90 % of raw TCP throughput on the link"):
//! raw TCP a->b with `tcpblast`, and the `criu-sync` binary itself streaming a pre-written
//! directory of random pages (tmpfs on both sides) a->b, alternated, each repeated.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::sys;

/// A deterministic non-compressible byte stream (xorshift64*), so the probe does not depend on
/// /dev/urandom's speed and a re-run moves the same bytes.
pub struct Xorshift(u64);

impl Xorshift {
    pub fn new(seed: u64) -> Self {
        Xorshift(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The MB/s (1e6) of a tcpblast line `recv <bytes> bytes in <secs> s = <MB/s> MB/s (...)`.
pub fn parse_tcpblast(out: &str) -> Option<f64> {
    let f: Vec<&str> = out.split_whitespace().collect();
    let i = f.iter().position(|x| *x == "=")?;
    f.get(i + 1)?.parse().ok()
}

/// The `bytes` of a criu-sync JSON result line when it says `"ok":true`.
pub fn parse_sync_ok(out: &str) -> Option<u64> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("ok")?.as_bool()? {
        v.get("bytes")?.as_u64()
    } else {
        None
    }
}

/// MB/s (1e6) of `bytes` moved in `ms`.
pub fn mb_s(bytes: u64, ms: f64) -> Option<f64> {
    (ms > 0.0).then(|| bytes as f64 / 1e6 / (ms / 1e3))
}

/// Raw TCP a->b with tcpblast for `secs` seconds: the receiver's MB/s (first byte to EOF).
pub fn raw_tcp(blast: &Path, ns_a: &str, ns_b: &str, addr: &str, secs: u32) -> Option<f64> {
    let blast = blast.to_string_lossy().into_owned();
    let mut recv = sys::in_netns(ns_b, &blast)
        .args(["recv", "--listen", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let send = sys::run(sys::in_netns(ns_a, &blast).args([
        "send",
        "--to",
        addr,
        "--seconds",
        &secs.to_string(),
    ]));
    if send.is_err() {
        let _ = recv.kill();
    }
    let out = recv.wait_with_output().ok()?;
    parse_tcpblast(&String::from_utf8_lossy(&out.stdout))
}

/// Writes `mib` MiB of random bytes as `dir/pages-1.img` (plus a small inventory.img).
pub fn write_images(dir: &Path, mib: u64) -> sys::Result<u64> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = Xorshift::new(0x5eed_0004);
    let mut buf = vec![0u8; 1 << 20];
    let p = dir.join("pages-1.img");
    let mut f = fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    for _ in 0..mib {
        rng.fill(&mut buf);
        f.write_all(&buf)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    rng.fill(&mut buf[..4096]);
    fs::write(dir.join("inventory.img"), &buf[..4096]).map_err(|e| e.to_string())?;
    Ok(mib * (1 << 20) + 4096)
}

/// One `criu-sync send --dir SRC` (a) -> `criu-sync recv --dir DST` (b) of a complete directory;
/// MB/s = bytes / (send spawned .. send exited), the receiver having reported ok. DST is
/// removed afterwards.
pub fn criu_sync_once(
    bin: &Path,
    ns_a: &str,
    ns_b: &str,
    addr: &str,
    src: &Path,
    dst: &Path,
) -> sys::Result<f64> {
    let bin = bin.to_string_lossy().into_owned();
    let _ = fs::remove_dir_all(dst);
    let mut recv = sys::in_netns(ns_b, &bin)
        .arg("recv")
        .arg("--listen")
        .arg(addr)
        .arg("--dir")
        .arg(dst)
        .env("CRIU_SYNC_TOKEN", "bench-link")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("criu-sync recv: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let send = sys::run(
        sys::in_netns(ns_a, &bin)
            .arg("send")
            .arg("--dir")
            .arg(src)
            .arg("--to")
            .arg(addr)
            .env("CRIU_SYNC_TOKEN", "bench-link"),
    );
    let ms = sys::ms_since(t0);
    if send.is_err() {
        let _ = recv.kill();
    }
    let out = recv
        .wait_with_output()
        .map_err(|e| format!("criu-sync recv: {e}"))?;
    let _ = fs::remove_dir_all(dst);
    let send = send?;
    let rs = String::from_utf8_lossy(&out.stdout);
    let bytes = parse_sync_ok(&rs).ok_or_else(|| {
        format!(
            "criu-sync recv: {} {}",
            rs.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if parse_sync_ok(&String::from_utf8_lossy(&send.stdout)) != Some(bytes) {
        return Err(format!(
            "criu-sync send: {}",
            String::from_utf8_lossy(&send.stdout).trim()
        ));
    }
    mb_s(bytes, ms).ok_or_else(|| "criu-sync: zero time".into())
}

#[derive(Debug, Default)]
pub struct Probe {
    pub raw_tcp_mb_s: Vec<f64>,
    pub criu_sync_mb_s: Vec<f64>,
    pub error: Option<String>,
}

/// `reps` x (raw TCP for `secs`, criu-sync of `mib` MiB), alternated; scratch under `scratch`
/// (tmpfs), removed afterwards. `mib` = 0: raw TCP only.
#[allow(clippy::too_many_arguments)]
pub fn probe(
    blast: &Path,
    criu_sync: &Path,
    ns_a: &str,
    ns_b: &str,
    ip_b: &str,
    scratch: &Path,
    mib: u64,
    reps: u32,
    secs: u32,
) -> Probe {
    let mut p = Probe::default();
    let src = scratch.join("src");
    let dst = scratch.join("dst");
    if mib > 0 {
        if let Err(e) = write_images(&src, mib) {
            p.error = Some(e);
        }
    }
    for rep in 0..reps.max(1) {
        if let Some(x) = raw_tcp(blast, ns_a, ns_b, &format!("{ip_b}:5299"), secs) {
            p.raw_tcp_mb_s.push(x);
        }
        if mib > 0 && p.error.is_none() {
            let addr = format!("{ip_b}:{}", 5300 + rep);
            match criu_sync_once(criu_sync, ns_a, ns_b, &addr, &src, &dst) {
                Ok(x) => p.criu_sync_mb_s.push(x),
                Err(e) => p.error = Some(e),
            }
        }
    }
    let _ = fs::remove_dir_all(scratch);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpblast_line() {
        assert_eq!(
            parse_tcpblast("recv 4294967296 bytes in 2.001 s = 2146.4 MB/s (17171 Mbit/s)\n"),
            Some(2146.4)
        );
        assert_eq!(parse_tcpblast("garbage"), None);
    }

    #[test]
    fn sync_json() {
        let ok = r#"{"bytes":67108864,"elapsed_ms":49,"ok":true}"#;
        assert_eq!(parse_sync_ok(&format!("noise\n{ok}\n")), Some(67108864));
        assert_eq!(parse_sync_ok(r#"{"bytes":5,"ok":false}"#), None);
        assert_eq!(parse_sync_ok(""), None);
    }

    #[test]
    fn rate() {
        assert_eq!(mb_s(1_000_000_000, 500.0), Some(2000.0));
        assert_eq!(mb_s(1, 0.0), None);
    }

    #[test]
    fn random_bytes_are_deterministic_and_not_constant() {
        let (mut a, mut b) = (Xorshift::new(7), Xorshift::new(7));
        let (mut x, mut y) = (vec![0u8; 4099], vec![0u8; 4099]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        let zeros = x.iter().filter(|&&c| c == 0).count();
        assert!(zeros < 100, "{zeros}");
        assert_ne!(x[..8], x[8..16]);
    }
}

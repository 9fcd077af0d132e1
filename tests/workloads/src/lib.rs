//! Shared pieces of the UMS test workloads (`memhog`, `counter`, `multiproc`): a tiny argument
//! parser, the monotonic clock, absolute-deadline sleeps, a seeded PRNG and a memory checksum,
//! signal flags, atomic file rewrites and fork helpers.
//!
//! The workloads run as static binaries in busybox-only images and are checkpointed and restored
//! by CRIU: they keep all their state in memory, use only plain fds (pipes, unix sockets, regular
//! files in the container's rootfs) and no threads.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// `--name value` / `--name=value` / `--flag` arguments, nothing positional.
pub struct Args {
    prog: &'static str,
    usage: &'static str,
    rest: Vec<(String, Option<String>)>,
}

impl Args {
    /// Parses `std::env::args()`; `-h`/`--help` prints `usage` and exits 0.
    pub fn parse(prog: &'static str, usage: &'static str) -> Args {
        Self::parse_from(prog, usage, std::env::args().skip(1))
    }

    pub fn parse_from(
        prog: &'static str,
        usage: &'static str,
        args: impl IntoIterator<Item = String>,
    ) -> Args {
        let mut rest = Vec::new();
        let mut it = args.into_iter().peekable();
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = a.strip_prefix("--") else {
                die(prog, &format!("unexpected argument `{a}`\n{usage}"));
            };
            if let Some((k, v)) = name.split_once('=') {
                rest.push((k.to_string(), Some(v.to_string())));
            } else {
                // A value follows unless the next word is another option ("-" alone is a value).
                let v = match it.peek() {
                    Some(n) if !n.starts_with("--") => it.next(),
                    _ => None,
                };
                rest.push((name.to_string(), v));
            }
        }
        Args { prog, usage, rest }
    }

    fn take(&mut self, name: &str) -> Option<Option<String>> {
        let i = self.rest.iter().position(|(k, _)| k == name)?;
        Some(self.rest.remove(i).1)
    }

    /// A flag without value (`--verify`), or with an optional value (`--verify=/tmp/x`).
    pub fn flag(&mut self, name: &str) -> Option<Option<String>> {
        self.take(name)
    }

    pub fn string(&mut self, name: &str, default: &str) -> String {
        match self.take(name) {
            None => default.to_string(),
            Some(Some(v)) => v,
            Some(None) => die(self.prog, &format!("--{name} needs a value")),
        }
    }

    pub fn u64(&mut self, name: &str, default: u64) -> u64 {
        match self.take(name) {
            None => default,
            Some(Some(v)) => v
                .parse()
                .unwrap_or_else(|_| die(self.prog, &format!("--{name}: `{v}` is not a number"))),
            Some(None) => die(self.prog, &format!("--{name} needs a value")),
        }
    }

    /// Fails on any option not consumed.
    pub fn finish(self) {
        if let Some((k, _)) = self.rest.first() {
            die(self.prog, &format!("unknown option --{k}\n{}", self.usage));
        }
    }
}

/// Prints `prog: msg` to stderr and exits 2.
pub fn die(prog: &str, msg: &str) -> ! {
    eprintln!("{prog}: {msg}");
    std::process::exit(2)
}

/// CLOCK_MONOTONIC in nanoseconds, as the task sees it (a restored task may live in a time
/// namespace with an offset: see [`realtime_ns`]).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME in nanoseconds. Unlike CLOCK_MONOTONIC it is not shifted by a time namespace:
/// CRIU restores a task into a new time namespace whose offsets make CLOCK_MONOTONIC continue
/// from the dump (hiding the time the task was away), so gaps across a migration between two
/// systems of one host are measured on this clock.
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`; returns early when a signal arrives.
pub fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// A periodic schedule that never bursts to catch up: after a stall (a freeze, a migration) the
/// next period starts from now, so a stall shows up as exactly one long gap.
pub struct Ticker {
    period_ns: u64,
    next: u64,
}

impl Ticker {
    pub fn new(period_ms: u64) -> Ticker {
        let period_ns = period_ms.max(1) * 1_000_000;
        Ticker {
            period_ns,
            next: monotonic_ns() + period_ns,
        }
    }

    /// Sleeps until the next period (or a signal); true when the period was reached.
    pub fn wait(&mut self) -> bool {
        sleep_until(self.next);
        let now = monotonic_ns();
        if now < self.next {
            return false; // interrupted by a signal
        }
        self.next += self.period_ns;
        if self.next <= now {
            self.next = now + self.period_ns;
        }
        true
    }
}

/// wyrand: a fast 64-bit PRNG (one multiply per word), seeded.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }

    pub fn fill(&mut self, words: &mut [u64]) {
        for w in words {
            *w = self.next_u64();
        }
    }
}

/// A 64-bit checksum of memory words: four independent multiply-xor lanes (several GB/s),
/// position-dependent, folded at the end.
pub fn checksum(words: &[u64]) -> u64 {
    const K: [u64; 4] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x85eb_ca77_c2b2_ae63,
    ];
    let mut h = [K[0], K[1], K[2], K[3]];
    let mut chunks = words.chunks_exact(4);
    for c in &mut chunks {
        for i in 0..4 {
            h[i] = (h[i] ^ c[i]).wrapping_mul(K[i]).rotate_left(29);
        }
    }
    for (i, w) in chunks.remainder().iter().enumerate() {
        h[i] = (h[i] ^ w).wrapping_mul(K[i]).rotate_left(29);
    }
    let mut out = words.len() as u64;
    for (i, x) in h.iter().enumerate() {
        out = (out ^ x.rotate_left(i as u32 * 16)).wrapping_mul(K[0]);
        out ^= out >> 31;
    }
    out
}

/// `mib` MiB of words filled from `Rng::new(seed)` (all pages touched).
pub fn random_memory(mib: u64, seed: u64) -> Vec<u64> {
    let words = (mib as usize) * (1 << 20) / 8;
    let mut v = vec![0u64; words];
    Rng::new(seed).fill(&mut v);
    v
}

/// Rewrites `path` atomically (a temp file in the same dir, then rename): readers never see a
/// partial or empty file, and no fd stays open between writes.
pub fn write_atomic(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

static SIGUSR1_SEEN: AtomicBool = AtomicBool::new(false);
static SIGTERM_SEEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    match sig {
        libc::SIGUSR1 => SIGUSR1_SEEN.store(true, Ordering::SeqCst),
        _ => SIGTERM_SEEN.store(true, Ordering::SeqCst),
    }
}

fn install(sig: libc::c_int) {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        // No SA_RESTART: a blocking sleep or read returns EINTR so the loop sees the flag.
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Handlers for SIGTERM/SIGINT (a workload is pid 1 of its container: without a handler these
/// signals would be ignored) and SIGUSR1.
pub fn install_signal_handlers() {
    install(libc::SIGTERM);
    install(libc::SIGINT);
    install(libc::SIGUSR1);
}

/// SIGTERM or SIGINT arrived.
pub fn terminated() -> bool {
    SIGTERM_SEEN.load(Ordering::SeqCst)
}

/// SIGUSR1 arrived since the last call.
pub fn take_usr1() -> bool {
    SIGUSR1_SEEN.swap(false, Ordering::SeqCst)
}

/// In a child: die with SIGKILL when the parent dies, and default signal dispositions for
/// SIGTERM/SIGINT (the parent's handlers are inherited otherwise).
pub fn child_setup() {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
    }
}

/// fork(); in the child runs `f` and exits with its return code. Returns the child's pid.
pub fn fork_child(f: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    // Nothing buffered may be written twice.
    let _ = io::stdout().flush();
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child_setup();
        let code = f();
        let _ = io::stdout().flush();
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// A pipe: (read end, write end), close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of unix stream sockets.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads exactly `buf.len()` bytes, retrying on EINTR. `Ok(false)` on EOF before the first byte.
pub fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut got = 0;
    while got < buf.len() {
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n as usize;
    }
    Ok(true)
}

/// Writes all of `buf`, retrying on EINTR.
pub fn write_full(fd: &OwnedFd, buf: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < buf.len() {
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Where a workload writes its lines: stdout (`-`) or a file opened for appending.
pub enum Sink {
    Stdout,
    File(fs::File),
}

impl Sink {
    pub fn open(spec: &str) -> io::Result<Sink> {
        if spec == "-" {
            return Ok(Sink::Stdout);
        }
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec)?;
        Ok(Sink::File(f))
    }

    pub fn is_stdout(&self) -> bool {
        matches!(self, Sink::Stdout)
    }

    /// One line in one write(2); errors are ignored (a workload keeps running when nobody reads).
    pub fn line(&mut self, s: &str) {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(b'\n');
        match self {
            Sink::Stdout => {
                let mut o = io::stdout().lock();
                let _ = o.write_all(&b);
                let _ = o.flush();
            }
            Sink::File(f) => {
                let _ = f.write_all(&b);
            }
        }
    }
}

/// Closes every fd above 2 except `keep` (in a fresh child: fds of siblings must not keep their
/// pipes open).
pub fn close_other_fds(keep: &[RawFd]) {
    let fds: Vec<RawFd> = fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_word_and_position() {
        let mut m = random_memory(1, 7);
        let a = checksum(&m);
        assert_eq!(a, checksum(&random_memory(1, 7)));
        assert_ne!(a, checksum(&random_memory(1, 8)));
        m[12345] ^= 1;
        assert_ne!(a, checksum(&m));
        m[12345] ^= 1;
        m.swap(0, 1);
        assert_ne!(a, checksum(&m));
        assert_ne!(checksum(&[]), checksum(&[0]));
        assert_ne!(checksum(&[1, 2, 3]), checksum(&[1, 2, 3, 0]));
    }

    #[test]
    fn args() {
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let mut a = Args::parse_from("t", "", v("--mib 5 --tick - --verify --x=1"));
        assert_eq!(a.u64("mib", 0), 5);
        assert_eq!(a.string("tick", "f"), "-");
        assert_eq!(a.flag("verify"), Some(None));
        assert_eq!(a.string("x", ""), "1");
        assert_eq!(a.u64("procs", 1), 1);
        a.finish();
    }

    #[test]
    fn ticker_does_not_burst() {
        let mut t = Ticker::new(5);
        assert!(t.wait());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let before = monotonic_ns();
        assert!(t.wait()); // late: returns at once
        assert!(t.wait()); // then a full period
        assert!(monotonic_ns() - before >= 4_000_000);
    }

    #[test]
    fn atomic_write() {
        let p = std::env::temp_dir().join(format!("ums-wl-{}", std::process::id()));
        write_atomic(&p, b"1\n").unwrap();
        write_atomic(&p, b"2\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2\n");
        fs::remove_file(&p).unwrap();
    }
}

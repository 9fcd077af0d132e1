//! memhog: holds N MiB of random data and ticks every 10 ms, so that the downtime a migration
//! causes is the largest gap between tick timestamps, and the memory can be re-verified after a
//! restore.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use ums_workloads::{self as wl, Args, Sink, Ticker};

const USAGE: &str = "\
usage: memhog --mib N [--procs K] [--child-mib M] [--tick FILE|-] [--interval-ms MS]
              [--seed S] [--verify[=FILE]]

Allocates N MiB, fills them with random bytes (wyrand seeded with S, default 1), prints
`memhog ready mib=N procs=K checksum=<hex> fill_ms=<ms>` on stdout, forks K-1 children
(default K=1) that stay idle, each holding M MiB of its own random data (default 0), then
writes a tick line every MS ms (default 10) to FILE (appended) or stdout (`-`, default):
    <CLOCK_MONOTONIC ns> <seq> <checksum hex> <CLOCK_REALTIME ns>
The service-visible downtime of a migration is the largest gap between two ticks, measured on
the 4th field: CRIU restores a task into a new time namespace whose CLOCK_MONOTONIC offset
hides the time it was away, so the 1st field understates a migration's gap.

Verification: on SIGUSR1 (always), or when FILE (default /tmp/verify) appears if --verify is
given (the file is removed), memhog re-computes the checksum of its memory and of every
child's and writes `verify <ok|BAD> <checksum hex>` to the tick output (and to stdout too when
ticks go to a file). Verifying 1 GiB takes ~0.2 s during which no tick is written.
SIGTERM/SIGINT: exit 0 (children die with their parent).";

struct Child {
    cmd: OwnedFd,
    reply: OwnedFd,
}

fn main() {
    let mut a = Args::parse("memhog", USAGE);
    let mib = a.u64("mib", u64::MAX);
    let procs = a.u64("procs", 1).max(1);
    let child_mib = a.u64("child-mib", 0);
    let tick = a.string("tick", "-");
    let interval = a.u64("interval-ms", 10);
    let seed = a.u64("seed", 1);
    let verify_file = a
        .flag("verify")
        .map(|v| PathBuf::from(v.unwrap_or_else(|| "/tmp/verify".into())));
    a.finish();
    if mib == u64::MAX {
        wl::die("memhog", &format!("--mib is required\n{USAGE}"));
    }
    wl::install_signal_handlers();
    let mut sink =
        Sink::open(&tick).unwrap_or_else(|e| wl::die("memhog", &format!("opening {tick}: {e}")));

    // Children first: they must not share the parent's pages copy-on-write.
    let mut children = Vec::new();
    for i in 1..procs {
        let (cmd_r, cmd_w) = wl::pipe().expect("pipe");
        let (rep_r, rep_w) = wl::pipe().expect("pipe");
        let child_seed = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9));
        wl::fork_child(move || {
            wl::close_other_fds(&[cmd_r.as_raw_fd(), rep_w.as_raw_fd()]);
            child_main(child_mib, child_seed, cmd_r, rep_w)
        })
        .unwrap_or_else(|e| wl::die("memhog", &format!("fork: {e}")));
        children.push(Child {
            cmd: cmd_w,
            reply: rep_r,
        });
    }

    let t0 = wl::monotonic_ns();
    let mem = wl::random_memory(mib, seed);
    let sum = wl::checksum(&mem);
    let fill_ms = (wl::monotonic_ns() - t0) / 1_000_000;
    let hex = format!("{sum:016x}");
    println!("memhog ready mib={mib} procs={procs} child_mib={child_mib} checksum={hex} fill_ms={fill_ms}");

    let mut ticker = Ticker::new(interval);
    let mut seq: u64 = 0;
    loop {
        if wl::terminated() {
            return;
        }
        let mut verify = wl::take_usr1();
        if let Some(f) = &verify_file {
            if fs::symlink_metadata(f).is_ok() {
                let _ = fs::remove_file(f);
                verify = true;
            }
        }
        if verify {
            let now = wl::checksum(&mem);
            let mut ok = now == sum;
            for c in &children {
                ok &= ask_child(c);
            }
            let line = format!("verify {} {now:016x}", if ok { "ok" } else { "BAD" });
            sink.line(&line);
            if !sink.is_stdout() {
                println!("{line}");
            }
        }
        if ticker.wait() {
            seq += 1;
            sink.line(&format!(
                "{} {seq} {hex} {}",
                wl::monotonic_ns(),
                wl::realtime_ns()
            ));
        }
    }
}

/// Asks a child to verify its memory; false when it reports BAD or is gone.
fn ask_child(c: &Child) -> bool {
    if wl::write_full(&c.cmd, b"v").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(wl::read_full(&c.reply, &mut b), Ok(true) if b[0] == b'+')
}

fn child_main(mib: u64, seed: u64, cmd: OwnedFd, reply: OwnedFd) -> i32 {
    let mem = wl::random_memory(mib, seed);
    let sum = wl::checksum(&mem);
    let mut b = [0u8; 1];
    // Idle until the parent asks; EOF means the parent is gone.
    while let Ok(true) = wl::read_full(&cmd, &mut b) {
        let ok = wl::checksum(&mem) == sum;
        if wl::write_full(&reply, if ok { b"+" } else { b"-" }).is_err() {
            break;
        }
    }
    0
}

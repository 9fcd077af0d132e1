//! counter: counts in memory every 100 ms, rewrites /tmp/counter and prints the value, so that a
//! restored service visibly continues from where it was (not from 0).

use std::path::PathBuf;

use ums_workloads::{self as wl, Args, Ticker};

const USAGE: &str = "\
usage: counter [--interval-ms MS] [--file PATH] [--start N]

Every MS ms (default 100) increments a counter kept in memory (starting after N, default 0),
rewrites PATH (default /tmp/counter; temp file + rename) with the value and a newline, and
prints the value on stdout. SIGTERM/SIGINT: exit 0.";

fn main() {
    let mut a = Args::parse("counter", USAGE);
    let interval = a.u64("interval-ms", 100);
    let file = PathBuf::from(a.string("file", "/tmp/counter"));
    let mut n = a.u64("start", 0);
    a.finish();
    wl::install_signal_handlers();
    let mut ticker = Ticker::new(interval);
    let mut warned = false;
    while !wl::terminated() {
        if !ticker.wait() {
            continue;
        }
        n += 1;
        if let Err(e) = wl::write_atomic(&file, format!("{n}\n").as_bytes()) {
            if !warned {
                eprintln!("counter: writing {}: {e}", file.display());
                warned = true;
            }
        }
        println!("{n}");
    }
}

//! multiproc: a parent and 4 children in a ring joined by pipes and unix sockets pass a token
//! around; the parent counts rounds and rewrites /tmp/rounds. Every process checks the token it
//! receives against its own in-memory count, so a restore that lost or mixed up a process's
//! state, or a link, breaks the ring visibly.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use ums_workloads::{self as wl, Args, Ticker};

const USAGE: &str = "\
usage: multiproc [--children N] [--interval-ms MS] [--file PATH]

A ring of the parent and N children (default 4): parent -> c1 -> ... -> cN -> parent. Links
alternate between pipes (even links, starting with parent -> c1) and unix stream socketpairs
(odd links); with N >= 1 the last link cN -> parent is a socketpair when N is odd, a pipe when
N is even. The parent sends round number r, each child checks it got its previous value + 1 and
passes it on; when r returns the parent rewrites PATH (default /tmp/rounds) with r, prints r on
stdout every 100 rounds, waits MS ms (default 10) and starts round r+1.
A broken ring (a child died, a wrong token) is reported on stderr and exits 1.
SIGTERM/SIGINT: exit 0 (children die with their parent).";

fn link(i: usize) -> (OwnedFd, OwnedFd) {
    if i % 2 == 0 {
        wl::pipe().expect("pipe")
    } else {
        wl::socketpair().expect("socketpair")
    }
}

fn main() {
    let mut a = Args::parse("multiproc", USAGE);
    let n = a.u64("children", 4) as usize;
    let interval = a.u64("interval-ms", 10);
    let file = PathBuf::from(a.string("file", "/tmp/rounds"));
    a.finish();
    wl::install_signal_handlers();

    // links[i] = (read end, write end) from process i to process i+1 (process 0 is the parent,
    // process n+1 wraps to it). Child c keeps links[c-1].0 and links[c].1.
    let mut links: Vec<(Option<OwnedFd>, Option<OwnedFd>)> = (0..=n)
        .map(|i| {
            let (r, w) = link(i);
            (Some(r), Some(w))
        })
        .collect();
    for c in 1..=n {
        let rx = links[c - 1].0.take().unwrap();
        let tx = links[c].1.take().unwrap();
        let (rx_fd, tx_fd) = (rx.as_raw_fd(), tx.as_raw_fd());
        wl::fork_child(move || {
            wl::close_other_fds(&[rx_fd, tx_fd]);
            child_main(c, rx, tx)
        })
        .unwrap_or_else(|e| wl::die("multiproc", &format!("fork: {e}")));
        // rx and tx were moved into the closure and are dropped here, in the parent.
    }
    let to_first = links[0].1.take().unwrap();
    let from_last = links[n].0.take().unwrap();
    drop(links);

    println!("multiproc ready children={n}");
    let mut ticker = Ticker::new(interval);
    let mut round: u64 = 0;
    while !wl::terminated() {
        round += 1;
        if let Err(e) = wl::write_full(&to_first, &round.to_le_bytes()) {
            ring_broken(&format!("sending round {round}: {e}"));
        }
        let mut b = [0u8; 8];
        match wl::read_full(&from_last, &mut b) {
            Ok(true) => {}
            Ok(false) => ring_broken(&format!("ring closed while waiting for round {round}")),
            Err(e) => ring_broken(&format!("receiving round {round}: {e}")),
        }
        let got = u64::from_le_bytes(b);
        if got != round {
            ring_broken(&format!("token {got} came back for round {round}"));
        }
        let _ = wl::write_atomic(&file, format!("{round}\n").as_bytes());
        if round % 100 == 0 {
            println!("{round}");
        }
        while !ticker.wait() && !wl::terminated() {}
    }
}

fn ring_broken(msg: &str) -> ! {
    if wl::terminated() {
        std::process::exit(0);
    }
    eprintln!("multiproc: ring broken: {msg}");
    std::process::exit(1)
}

fn child_main(idx: usize, rx: OwnedFd, tx: OwnedFd) -> i32 {
    let mut last: u64 = 0;
    let mut b = [0u8; 8];
    loop {
        match wl::read_full(&rx, &mut b) {
            Ok(true) => {}
            Ok(false) => return 0, // the ring closed: the parent is gone
            Err(e) => {
                eprintln!("multiproc child {idx}: read: {e}");
                return 1;
            }
        }
        let got = u64::from_le_bytes(b);
        if got != last + 1 {
            eprintln!(
                "multiproc child {idx}: got token {got}, expected {}",
                last + 1
            );
            return 3;
        }
        last = got;
        if let Err(e) = wl::write_full(&tx, &b) {
            eprintln!("multiproc child {idx}: write: {e}");
            return 1;
        }
    }
}

//! Integration-test harness for the UMS shim (`containerd-shim-ums-v1`, runtime `io.containerd.ums.v1`).
//!
//! Every test starts its own [`Containerd`] (1.6 or 2.1) with a private root, state, socket, config
//! and CNI network under `/run/ums-test/<name>`, drives it with [`ctr::Ctr`] and the CRI client
//! [`cri::Cri`], checks nesting through /proc ([`nesting`]) and leaks after deletion ([`leaks`]).
//! Dropping the handle stops containerd and sweeps everything the instance left ([`sweep`]).
//!
//! `UMS_TEST_RUNTIME=runc` runs the same tests against containerd's runc shim (nesting checks
//! are then skipped) to validate the harness itself.
//!
//! [`testbed`] serves `hack/testbed.sh` (two systems in network namespaces, for migrations) and
//! tests that run on it.

pub mod config;
pub mod containerd;
pub mod cri;
pub mod ctr;
pub mod image;
pub mod leaks;
pub mod nesting;
pub mod net;
pub mod procfs;
pub mod pty;
pub mod rootfs;
pub mod sweep;
pub mod testbed;
pub mod util;

pub use containerd::{Containerd, Runtime, Version};
pub use ctr::Ctr;
pub use util::{wait_for, Output};

use std::process::Command;

/// `criu check` passes (needed by checkpoint tests); Err has CRIU's own words.
pub fn criu_check() -> Result<(), String> {
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    match Command::new("criu").arg("check").env("PATH", path).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`criu check` failed ({}): {}{} -- run hack/install-deps.sh (it builds CRIU >= 4.1 when needed)",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("criu not found ({e}); run hack/install-deps.sh")),
    }
}

/// Prints a note into the test's output (shown for failing tests, or with --nocapture).
pub fn note(msg: impl AsRef<str>) {
    eprintln!("[ums-tests] {}", msg.as_ref());
}

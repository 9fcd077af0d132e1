//! Integration tests of the UMS shim (runtime `io.containerd.ums.v1`, CRI handler `ums`) on
//! containerd 1.6 and 2.1. Each test runs its own private containerd, so they run in parallel.
//! `UMS_TEST_RUNTIME=runc` runs them against containerd's runc shim (nesting checks skipped).

#[macro_use]
mod common;

mod bad_input;
mod checkpoint;
mod cri;
mod events;
mod exec;
mod io;
mod lifecycle;
mod migration;
mod restart;
mod stress;

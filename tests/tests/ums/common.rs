//! Shared helpers of the UMS integration tests.

use std::path::PathBuf;
use std::time::Duration;

use ums_tests::ctr::Ctr;
use ums_tests::{nesting, note, procfs, wait_for, Containerd};

/// Defines `mod <name> { #[test] fn v1_6(); #[test] fn v2_1(); }` calling `<name>(Version)`.
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn v1_6() {
                    super::$name(ums_tests::Version::V1_6)
                }
                #[test]
                fn v2_1() {
                    super::$name(ums_tests::Version::V2_1)
                }
            }
        )*
    };
}

/// The long-running service of most tests: appends the date to /tmp/t five times a second.
pub const LOOP: &str = "while :; do date >> /tmp/t; sleep 0.2; done";
/// A substring of the service's argv to find it by.
pub const LOOP_NEEDLE: &str = "date >> /tmp/t";

/// A running container: its task pid (the outer holder under UMS) and its service process.
pub struct Service {
    pub rootfs: PathBuf,
    pub outer: i32,
    pub service: i32,
}

/// `ctr run -d` of `sh -c <script>` on a fresh busybox rootfs; waits for RUNNING and finds the
/// service process (below the outer's cgroup, argv containing `needle`).
#[track_caller]
pub fn start_service(c: &Containerd, ctr: &Ctr, id: &str, script: &str, needle: &str) -> Service {
    let rootfs = c.rootfs(id);
    ctr.run_detached(id, &rootfs, &["/bin/sh", "-c", script])
        .expect_ok("ctr run -d");
    let task = ctr.wait_status(id, "RUNNING", Duration::from_secs(30));
    assert!(task.pid > 0, "task {id} has no pid: {task:?}");
    let service = if c.runtime().nested() {
        nesting::find_service(task.pid, needle, Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "no service process running {needle:?} below the outer's cgroup\n  outer: {}\n  processes: {}",
                nesting::describe(task.pid),
                procfs::pids_in_cgroup_tree(&c.cgroup_root())
                    .iter()
                    .map(|&p| nesting::describe(p))
                    .collect::<Vec<_>>()
                    .join("\n    ")
            )
        })
    } else {
        task.pid
    };
    Service {
        rootfs,
        outer: task.pid,
        service,
    }
}

/// The default looping service.
#[track_caller]
pub fn start_loop(c: &Containerd, ctr: &Ctr, id: &str) -> Service {
    start_service(c, ctr, id, LOOP, LOOP_NEEDLE)
}

/// Lines in the service's /tmp/t, read through /proc/<pid>/root (the service's own view).
pub fn lines_of_t(svc: &Service) -> usize {
    let via_proc = PathBuf::from(format!("/proc/{}/root/tmp/t", svc.service));
    let p = if via_proc.exists() {
        via_proc
    } else {
        svc.rootfs.join("tmp/t")
    };
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// The service keeps writing: /tmp/t grows within a few seconds.
#[track_caller]
pub fn assert_growing(svc: &Service, what: &str) {
    let before = lines_of_t(svc);
    let grew = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        (lines_of_t(svc) > before).then_some(())
    });
    assert!(
        grew.is_some(),
        "{what}: the service stopped writing /tmp/t (stuck at {before} lines)"
    );
}

/// The service does not write at all for a second (it is frozen).
#[track_caller]
pub fn assert_not_growing(svc: &Service, what: &str) {
    let before = lines_of_t(svc);
    std::thread::sleep(Duration::from_millis(1200));
    let after = lines_of_t(svc);
    assert_eq!(
        before, after,
        "{what}: the service kept writing /tmp/t ({before} -> {after} lines)"
    );
}

/// Checks nesting when the runtime promises it (UMS), else says it was skipped.
#[track_caller]
pub fn assert_nested_if_ums(c: &Containerd, svc: &Service) {
    if c.runtime().nested() {
        nesting::assert_nested(svc.outer, svc.service);
        note(format!(
            "nested as promised:\n  outer:   {}\n  service: {}",
            nesting::describe(svc.outer),
            nesting::describe(svc.service)
        ));
    } else {
        note(format!(
            "runtime {:?}: nesting assertions skipped",
            c.runtime()
        ));
    }
}

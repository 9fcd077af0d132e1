//! `ctr t exec`: lands in the service (its pid and mount namespaces), output and exit codes come back.

use std::time::Duration;

use ums_tests::{leaks, procfs, Containerd, Version};

use crate::common::*;

fn exec_lands_in_service(v: Version) {
    let c = Containerd::start("exec", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");

    let script = "echo hi; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; readlink /proc/self/ns/net; \
                  test -f /tmp/t && echo has-t";
    let out = ctr
        .cmd(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "c1",
            "/bin/sh",
            "-c",
            script,
        ])
        .expect_ok("ctr t exec e1");
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&"hi"), "exec output:\n{out}");
    let want_pid = procfs::ns(svc.service, "pid").unwrap();
    let want_mnt = procfs::ns(svc.service, "mnt").unwrap();
    let want_net = procfs::ns(svc.service, "net").unwrap();
    assert!(
        lines.contains(&want_pid.as_str()),
        "exec is not in the service's pid namespace {want_pid}:\n{out}"
    );
    assert!(
        lines.contains(&want_mnt.as_str()),
        "exec is not in the service's mount namespace {want_mnt}:\n{out}"
    );
    assert!(
        lines.contains(&want_net.as_str()),
        "exec is not in the service's network namespace {want_net}:\n{out}"
    );
    assert!(
        lines.contains(&"has-t"),
        "exec does not see the service's /tmp/t:\n{out}"
    );
    if c.runtime().nested() {
        let outer_pid_ns = procfs::ns(svc.outer, "pid").unwrap();
        assert!(
            !lines.contains(&outer_pid_ns.as_str()),
            "exec landed in the outer's pid namespace:\n{out}"
        );
    }

    // Exit codes come back exactly; the same exec id can be used again once the first is gone.
    ctr.cmd(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "c1",
        "/bin/sh",
        "-c",
        "exit 7",
    ])
    .expect_code(7, "exec exit 7");
    ctr.cmd(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "c1",
        "/bin/sh",
        "-c",
        "kill -9 $$",
    ])
    .expect_code(137, "exec killed by SIGKILL");
    ctr.cmd(&["tasks", "exec", "--exec-id", "e3", "c1", "/bin/true"])
        .expect_code(0, "exec true");

    // stderr is relayed separately from stdout.
    let out = ctr
        .cmd(&[
            "tasks",
            "exec",
            "--exec-id",
            "e4",
            "c1",
            "/bin/sh",
            "-c",
            "echo to-out; echo to-err >&2",
        ])
        .expect_ok("exec with stderr");
    assert!(
        out.stdout.contains("to-out") && !out.stdout.contains("to-err"),
        "stdout mixed up:\n{out}"
    );
    assert!(out.stderr.contains("to-err"), "stderr not relayed:\n{out}");

    // A missing binary is an error and leaves the task running.
    ctr.cmd(&[
        "tasks",
        "exec",
        "--exec-id",
        "e5",
        "c1",
        "/bin/does-not-exist",
    ])
    .expect_err("exec of a missing binary");
    assert_eq!(ctr.expect_task("c1").status, "RUNNING");
    assert!(
        procfs::alive(svc.service),
        "the service died after a failed exec"
    );
    assert_growing(&svc, "after execs");

    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

both_versions!(exec_lands_in_service);

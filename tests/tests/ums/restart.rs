//! containerd restarts while a service runs: the task survives and stays manageable.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use ums_tests::procfs::ProcId;
use ums_tests::{leaks, procfs, Containerd, Version};

use crate::common::*;

fn containerd_restart(v: Version) {
    let mut c = Containerd::start("restart", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    let fp = leaks::footprint(&c, &ctr, "c1");
    let outer_id = ProcId::of(svc.outer).unwrap();
    let service_id = ProcId::of(svc.service).unwrap();

    c.stop_daemon();
    assert!(
        outer_id.alive() && service_id.alive(),
        "the container died with containerd"
    );
    assert_growing(&svc, "while containerd is down");
    assert_shim_reachable(&fp, "while containerd is down");
    c.restart();

    let task = ctr.wait_status("c1", "RUNNING", Duration::from_secs(30));
    assert_eq!(task.pid, svc.outer, "task pid after the restart");
    let out = ctr
        .cmd(&[
            "tasks",
            "exec",
            "--exec-id",
            "after",
            "c1",
            "/bin/sh",
            "-c",
            "echo alive; readlink /proc/self/ns/pid",
        ])
        .expect_ok("exec after restart");
    assert!(
        out.stdout.contains("alive"),
        "exec output after restart:\n{out}"
    );
    assert!(
        out.stdout
            .contains(&procfs::ns(svc.service, "pid").unwrap()),
        "exec after restart is not in the service's pid namespace:\n{out}"
    );
    let pids = ctr.task_pids("c1");
    assert!(
        pids.contains(&svc.service),
        "ctr t ps after restart: {pids:?}, service {}",
        svc.service
    );
    ctr.cmd(&["tasks", "pause", "c1"])
        .expect_ok("pause after restart");
    ctr.wait_status("c1", "PAUSED", Duration::from_secs(10));
    ctr.cmd(&["tasks", "resume", "c1"])
        .expect_ok("resume after restart");
    ctr.wait_status("c1", "RUNNING", Duration::from_secs(10));
    assert_growing(&svc, "after restart");

    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

both_versions!(containerd_restart);

/// The shim of `fp`'s task is alive, its bundle's `address` file still names its socket, and
/// it accepts there: all containerd needs to reconnect at its restart. Checked while containerd
/// is down, a task lost at the restart then tells on which side it was lost.
#[track_caller]
fn assert_shim_reachable(fp: &leaks::Footprint, what: &str) {
    assert!(
        !fp.shim_pids.is_empty() && fp.shim_pids.iter().all(|p| p.alive()),
        "{what}: the shim of {} is gone: {:?}",
        fp.id,
        fp.shim_pids
    );
    let address = std::fs::read_to_string(fp.bundle.join("address"));
    let Some(socket) = address
        .as_deref()
        .ok()
        .and_then(ums_tests::sweep::socket_path_of)
        .filter(|s| fp.shim_socket.as_ref() == Some(s))
    else {
        panic!(
            "{what}: the address file of {} is {address:?}, the shim's socket {:?}",
            fp.id, fp.shim_socket
        );
    };
    if let Err(e) = UnixStream::connect(&socket) {
        panic!(
            "{what}: the shim of {} does not accept on {}: {e}",
            fp.id,
            socket.display()
        );
    }
}

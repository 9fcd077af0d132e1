//! Self-test of the harness against containerd's own runc shim (io.containerd.runc.v2): when these
//! fail, the harness or the machine is broken, not the UMS shim.

use std::time::Duration;

use ums_tests::leaks;
use ums_tests::{Containerd, Runtime, Version};

fn ctr_runc(v: Version) {
    let c = Containerd::start_with("harness-ctr", v, Runtime::Runc);
    let ctr = c.ctr();
    let rootfs = c.rootfs("r1");
    let out = ctr.run_rm(
        "h1",
        &rootfs,
        None,
        &["/bin/sh", "-c", "echo hello-$((6*7)); exit 3"],
        Duration::from_secs(60),
    );
    let out = out.expect_code(3, "ctr run --rm exit code");
    assert!(out.stdout.contains("hello-42"), "output missing:\n{out}");
    ctr.run_detached(
        "h2",
        &rootfs,
        &["/bin/sh", "-c", "while :; do sleep 1; done"],
    )
    .expect_ok("ctr run -d");
    let t = ctr.wait_status("h2", "RUNNING", Duration::from_secs(20));
    assert!(t.pid > 0);
    let fp = leaks::footprint(&c, &ctr, "h2");
    assert!(
        !fp.cgroup_dirs.is_empty(),
        "no cgroup dirs recorded: {fp:?}"
    );
    // The leak checks must see a running container: its process, cgroups, shim and runc state.
    let left = leaks::check_instance_clean(&c, std::slice::from_ref(&fp), &[]);
    for what in [
        "task h2",
        "container h2",
        "shim process",
        "still runs",
        "cgroup dir",
        "runc state left",
        "bundle dir",
    ] {
        assert!(
            left.iter().any(|l| l.contains(what)),
            "leak check misses {what:?} of a running container: {left:#?}"
        );
    }
    assert!(!leaks::check_footprint_gone(&fp).is_empty());
    ctr.kill_and_remove("h2");
    leaks::assert_footprint_gone(&fp, Duration::from_secs(10));
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

#[test]
fn ctr_runc_v1_6() {
    ctr_runc(Version::V1_6);
}

#[test]
fn ctr_runc_v2_1() {
    ctr_runc(Version::V2_1);
}

fn cri_runc(v: Version) {
    let c = Containerd::start_with("harness-cri", v, Runtime::Runc);
    c.import_test_images();
    let mut cri = c.cri();
    cri.wait_ready(Duration::from_secs(30)).unwrap();
    assert!(
        cri.image_present(ums_tests::config::PAUSE_IMAGE).unwrap(),
        "CRI does not see the pause image"
    );
    let logs = c.dir().join("logs");
    let cfg = ums_tests::cri::Cri::pod_config("p1", "uid-p1", &c.cgroup_root(), &logs);
    let pod = cri.run_pod(cfg, "runc").unwrap_or_else(|e| panic!("{e}"));
    let ip = cri.pod_ip(&pod.id).unwrap();
    let prefix = c.subnet().unwrap().trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "pod IP {ip:?} not in {:?}",
        c.subnet()
    );
    let id = cri
        .create_container(
            &pod,
            "c1",
            ums_tests::config::BUSYBOX_IMAGE,
            &["/bin/sh", "-c", "while :; do sleep 1; done"],
        )
        .unwrap();
    cri.start_container(&id).unwrap();
    let (code, out, _) = cri
        .exec_sync(&id, &["sh", "-c", "echo hi; exit 3"], 10)
        .unwrap();
    assert_eq!((code, out.as_str()), (3, "hi\n"));
    let (_, pid, _) = cri.container_status(&id).unwrap();
    let pid = pid.expect("container pid");
    let fp = leaks::footprint_of_pid(&c, "k8s.io", &id, pid, &[]);
    cri.stop_container(&id, 2).unwrap();
    cri.remove_container(&id).unwrap();
    cri.stop_pod(&pod.id).unwrap();
    cri.remove_pod(&pod.id).unwrap();
    leaks::assert_instance_clean(&c, &[fp], &[id, pod.id.clone()], Duration::from_secs(15));
}

#[test]
fn cri_runc_v1_6() {
    cri_runc(Version::V1_6);
}

#[test]
fn cri_runc_v2_1() {
    cri_runc(Version::V2_1);
}

//! The CRI path: a pod with runtime handler `ums`, a busybox container, ExecSync, resource update,
//! stop and removal, with the service nested in its outer and nothing left behind.

use std::time::Duration;

use ums_tests::config::{BUSYBOX_IMAGE, PAUSE_IMAGE};
use ums_tests::cri::{ContainerState, Cri, LinuxContainerResources};
use ums_tests::{leaks, nesting, note, procfs, Containerd, Version};

use crate::common::*;

#[track_caller]
fn ok<T>(r: Result<T, String>, c: &Containerd) -> T {
    r.unwrap_or_else(|e| {
        panic!(
            "{e}\n(containerd {} log: {})",
            c.name(),
            c.log_path().display()
        )
    })
}

fn cri_pod_lifecycle(v: Version) {
    let c = Containerd::start("cri", v);
    c.import_test_images();
    let mut cri = c.cri();
    ok(cri.wait_ready(Duration::from_secs(30)), &c);
    assert!(
        ok(cri.image_present(PAUSE_IMAGE), &c),
        "CRI does not know the pause image {PAUSE_IMAGE}"
    );
    let handler = c.runtime().cri_handler();

    let cfg = Cri::pod_config("pod1", "uid-pod1", &c.cgroup_root(), &c.dir().join("logs"));
    let pod = ok(cri.run_pod(cfg, handler), &c);
    let pod_pid = ok(cri.pod_pid(&pod.id), &c).expect("the pod sandbox has a pid");
    let ip = ok(cri.pod_ip(&pod.id), &c);
    assert!(
        ip.starts_with("10.213."),
        "pod IP {ip:?} is not from the instance's CNI subnet {:?}",
        c.subnet()
    );

    let id = ok(
        cri.create_container(&pod, "svc", BUSYBOX_IMAGE, &["/bin/sh", "-c", LOOP]),
        &c,
    );
    ok(cri.start_container(&id), &c);
    let (state, pid, _) = ok(cri.container_status(&id), &c);
    assert_eq!(state, ContainerState::ContainerRunning);
    let outer = pid.expect("the container's task pid in ContainerStatus info");

    let service = if c.runtime().nested() {
        let s = nesting::find_service(outer, LOOP_NEEDLE, Duration::from_secs(15)).unwrap_or_else(
            || {
                panic!(
                    "no nested service below the outer: {}",
                    nesting::describe(outer)
                )
            },
        );
        nesting::assert_nested(outer, s);
        s
    } else {
        note("runtime runc: nesting assertions skipped");
        outer
    };
    // Pod semantics: the container shares the sandbox's network namespace.
    assert_eq!(
        procfs::ns(service, "net"),
        procfs::ns(pod_pid, "net"),
        "the container's service is not in the pod's network namespace"
    );

    let (code, out, err) = ok(
        cri.exec_sync(
            &id,
            &[
                "/bin/sh",
                "-c",
                "echo hi; readlink /proc/self/ns/pid; exit 3",
            ],
            10,
        ),
        &c,
    );
    assert_eq!(
        code, 3,
        "ExecSync exit code (stdout {out:?}, stderr {err:?})"
    );
    assert!(out.starts_with("hi\n"), "ExecSync stdout: {out:?}");
    let svc_ns = procfs::ns(service, "pid").unwrap();
    assert!(
        out.contains(&svc_ns),
        "ExecSync did not run in the service's pid namespace {svc_ns}: {out:?}"
    );
    let (code, out, _) = ok(cri.exec_sync(&id, &["/bin/cat", "/tmp/t"], 10), &c);
    assert_eq!(code, 0);
    assert!(!out.is_empty(), "the service has not written /tmp/t");

    // UpdateContainerResources reaches the outer's cgroup.
    let limit = 96 * 1024 * 1024;
    let res = LinuxContainerResources {
        memory_limit_in_bytes: limit,
        ..Default::default()
    };
    ok(cri.update_resources(&id, res), &c);
    let f =
        procfs::cgroup_file(outer, "memory", "memory.limit_in_bytes").expect("outer memory cgroup");
    assert_eq!(
        std::fs::read_to_string(&f).unwrap().trim(),
        limit.to_string(),
        "{}",
        f.display()
    );

    let fp = leaks::footprint_of_pid(&c, "k8s.io", &id, outer, &[service]);
    let pod_fp = leaks::footprint_of_pid(&c, "k8s.io", &pod.id, pod_pid, &[]);
    ok(cri.stop_container(&id, 2), &c);
    let (state, _, _) = ok(cri.container_status(&id), &c);
    assert_eq!(state, ContainerState::ContainerExited);
    ok(cri.remove_container(&id), &c);
    leaks::assert_footprint_gone(&fp, Duration::from_secs(10));
    ok(cri.stop_pod(&pod.id), &c);
    ok(cri.remove_pod(&pod.id), &c);
    let (pods, ctrs) = ok(cri.list(), &c);
    assert!(
        pods.is_empty() && ctrs.is_empty(),
        "CRI still lists pods {pods:?} / containers {ctrs:?}"
    );
    leaks::assert_instance_clean(
        &c,
        &[fp, pod_fp],
        &[id, pod.id.clone()],
        Duration::from_secs(20),
    );
}

both_versions!(cri_pod_lifecycle);

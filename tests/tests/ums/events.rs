//! Task events: `ctr events` during a full lifecycle sees every task topic for the container.

use std::time::Duration;

use ums_tests::{criu_check, leaks, util, Containerd, Version};

use crate::common::*;

/// Lines of `ctr events` output for topic `topic` that name container `id`.
fn lines_for<'a>(events: &'a str, topic: &str, id: &str) -> Vec<&'a str> {
    let quoted = format!("\"{id}\"");
    events
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == topic) && l.contains(&quoted))
        .collect()
}

fn events_published(v: Version) {
    if let Err(e) = criu_check() {
        panic!("this test checkpoints the service and needs CRIU: {e}");
    }
    let c = Containerd::start("events", v);
    let ctr = c.ctr();
    let ev_file = c.dir().join("events.txt");
    let mut ev = ctr.spawn(&["events"], &ev_file).expect("spawn ctr events");
    std::thread::sleep(Duration::from_millis(500));

    let svc = start_loop(&c, &ctr, "c1");
    ctr.cmd(&["tasks", "exec", "--exec-id", "e1", "c1", "/bin/true"])
        .expect_ok("ctr t exec");
    ctr.cmd(&["tasks", "pause", "c1"]).expect_ok("ctr t pause");
    ctr.wait_status("c1", "PAUSED", Duration::from_secs(10));
    ctr.cmd(&["tasks", "resume", "c1"])
        .expect_ok("ctr t resume");
    ctr.wait_status("c1", "RUNNING", Duration::from_secs(10));
    ctr.cmd_timeout(&["tasks", "checkpoint", "c1"], Duration::from_secs(120))
        .expect_ok("ctr t checkpoint");
    assert_growing(&svc, "after checkpoint");
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.kill_and_remove("c1");

    let mut topics = vec![
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    if c.runtime().nested() {
        topics.push("/tasks/checkpointed");
    } else {
        // containerd's Go runc shim (v2) never publishes TaskCheckpointed; the UMS shim must.
        ums_tests::note("runtime runc: /tasks/checkpointed not required");
    }
    let all_seen = ums_tests::wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = util::read_lossy(&ev_file);
        topics
            .iter()
            .all(|t| !lines_for(&s, t, "c1").is_empty())
            .then_some(())
    });
    util::kill_group(&ev);
    let _ = ev.wait();
    let s = util::read_lossy(&ev_file);
    let missing: Vec<&&str> = topics
        .iter()
        .filter(|t| lines_for(&s, t, "c1").is_empty())
        .collect();
    assert!(
        all_seen.is_some(),
        "topics never published for c1: {missing:?}\n--- ctr events ---\n{s}"
    );

    // The init's exit event carries the task pid containerd was told (ctr t ls) and status 137.
    let exits = lines_for(&s, "/tasks/exit", "c1");
    let init_exit = exits
        .iter()
        .find(|l| l.contains("\"exit_status\":137"))
        .unwrap_or_else(|| {
            panic!(
                "no /tasks/exit with exit_status 137 for c1:\n{}",
                exits.join("\n")
            )
        });
    assert!(
        init_exit.contains(&format!("\"pid\":{},", svc.outer))
            || init_exit.contains(&format!("\"pid\":{}}}", svc.outer)),
        "the init's exit event does not carry the task pid {}: {init_exit}",
        svc.outer
    );
    // The exec's events name the exec id.
    assert!(
        lines_for(&s, "/tasks/exec-started", "c1")
            .iter()
            .any(|l| l.contains("\"e1\"")),
        "exec-started does not name exec e1:\n{s}"
    );
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

both_versions!(events_published);

/// A service that outgrows the memory limit (set on the outer's cgroup) is OOM-killed: the
/// shim publishes /tasks/oom for the container and the task exits with 137.
fn oom_event_published(v: Version) {
    let c = Containerd::start("oom", v);
    let ctr = c.ctr();
    let ev_file = c.dir().join("events.txt");
    let mut ev = ctr.spawn(&["events"], &ev_file).expect("spawn ctr events");
    std::thread::sleep(Duration::from_millis(500));

    let rootfs = c.rootfs("hog");
    // 32 MiB limit; the shell keeps ~60 MiB of `seq` output in one variable.
    ctr.run_detached_with(
        "hog",
        &rootfs,
        &["--memory-limit", "33554432"],
        &[
            "/bin/sh",
            "-c",
            "sleep 0.5; x=$(/bin/busybox seq 1 8000000); sleep 100",
        ],
    )
    .expect_ok("ctr run -d hog");
    let task = ctr.wait_status("hog", "STOPPED", Duration::from_secs(60));
    let oom_seen = ums_tests::wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let s = util::read_lossy(&ev_file);
        (!lines_for(&s, "/tasks/oom", "hog").is_empty()).then_some(())
    });
    util::kill_group(&ev);
    let _ = ev.wait();
    let s = util::read_lossy(&ev_file);
    assert!(
        oom_seen.is_some(),
        "no /tasks/oom for hog (task {task:?})\n--- ctr events ---\n{s}"
    );
    assert!(
        lines_for(&s, "/tasks/exit", "hog")
            .iter()
            .any(|l| l.contains("\"exit_status\":137")),
        "the OOM-killed task did not exit with 137:\n{s}"
    );
    let fp = leaks::footprint(&c, &ctr, "hog");
    ctr.kill_and_remove("hog");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

both_versions!(oom_event_published);

//! Task lifecycle through ctr: nesting of the service, exit codes, signals, pause/resume,
//! metrics, update, and deletion without leaks.

use std::time::Duration;

use serde_json::Value;
use ums_tests::cri::tasks_api;
use ums_tests::{leaks, nesting, procfs, Containerd, Version};

use crate::common::*;

/// `ctr run -d` of a long service: RUNNING in `ctr t ls`, its pid is the outer holder, the
/// service runs in a sibling pid namespace with its cgroup below the outer's and the outer's
/// network namespace, `ctr t ps` lists it, and deletion leaves nothing behind.
fn service_runs_nested(v: Version) {
    let c = Containerd::start("nested", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    let task = ctr.expect_task("c1");
    assert_eq!(task.status, "RUNNING");
    assert_nested_if_ums(&c, &svc);
    if c.runtime().nested() {
        assert_ne!(
            task.pid, svc.service,
            "containerd was told the service's pid, not the outer's"
        );
        // The host must see the same holder that containerd was told about.
        let nspid = procfs::nspid(svc.outer);
        assert_eq!(
            nspid.first(),
            Some(&svc.outer),
            "outer pid {} as seen by the host: {nspid:?}",
            svc.outer
        );
    }
    assert_growing(&svc, "running service");

    let pids = ctr.task_pids("c1");
    assert!(!pids.is_empty(), "ctr t ps lists no pids");
    assert!(
        pids.contains(&svc.service),
        "ctr t ps {pids:?} does not list the service {}",
        svc.service
    );
    let outer_tree = procfs::cgroup_path(svc.outer, "memory").unwrap_or_default();
    for p in &pids {
        let mine = *p == svc.outer
            || procfs::cgroup_path(*p, "memory")
                .map(|cg| cg == outer_tree || procfs::cgroup_is_under(&cg, &outer_tree))
                .unwrap_or(false);
        assert!(
            mine,
            "ctr t ps lists pid {p} that is not in the container: {}",
            nesting::describe(*p)
        );
    }

    let fp = leaks::footprint(&c, &ctr, "c1");
    assert!(
        fp.procs.iter().any(|(p, _)| p.pid == svc.service),
        "footprint misses the service: {fp:?}"
    );
    ctr.kill_and_remove("c1");
    leaks::assert_footprint_gone(&fp, Duration::from_secs(10));
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

/// `ctr run --rm ... sh -c 'exit 3'` exits 3, `true` exits 0, and `--rm` leaves nothing behind.
fn run_rm_exit_code(v: Version) {
    let c = Containerd::start("exitcode", v);
    let ctr = c.ctr();
    let rootfs = c.rootfs("r");
    let out = ctr.run_rm(
        "x3",
        &rootfs,
        None,
        &["/bin/sh", "-c", "echo out-$((1+2)); exit 3"],
        Duration::from_secs(60),
    );
    let out = out.expect_code(3, "ctr run --rm sh -c 'exit 3'");
    assert!(
        out.stdout.contains("out-3"),
        "service stdout not relayed:\n{out}"
    );
    ctr.run_rm("x0", &rootfs, None, &["/bin/true"], Duration::from_secs(60))
        .expect_code(0, "ctr run --rm true");
    leaks::assert_instance_clean(&c, &[], &[], Duration::from_secs(15));
}

/// SIGKILL of the service: the task stops with exit status 137 (Tasks.Wait and `ctr t ls`).
fn sigkill_exit_status_137(v: Version) {
    let c = Containerd::start("sigkill", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.cmd(&["tasks", "kill", "-s", "SIGKILL", "c1"])
        .expect_ok("ctr t kill -s SIGKILL");
    let st = tasks_api::wait(
        c.socket(),
        ctr.namespace(),
        "c1",
        "",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(st, 137, "exit status after SIGKILL");
    ctr.wait_status("c1", "STOPPED", Duration::from_secs(10));
    assert!(
        !procfs::alive(svc.service),
        "service {} survived SIGKILL",
        svc.service
    );
    ctr.delete_task("c1");
    ctr.cmd(&["containers", "delete", "c1"])
        .expect_ok("ctr c rm");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

/// `ctr t kill` (SIGTERM) reaches the service's trap: it prints and exits 42.
fn sigterm_reaches_trap(v: Version) {
    let c = Containerd::start("sigterm", v);
    let ctr = c.ctr();
    let script = "trap 'echo got-TERM; exit 42' TERM; echo ready; while :; do sleep 0.2; done";
    let svc = start_service(&c, &ctr, "c1", script, "got-TERM");
    let log = ctr.log_file("c1");
    let ready = ums_tests::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        ums_tests::util::read_lossy(&log)
            .contains("ready")
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "service output never reached the log {}",
        log.display()
    );
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.cmd(&["tasks", "kill", "c1"])
        .expect_ok("ctr t kill (SIGTERM)");
    let st = tasks_api::wait(
        c.socket(),
        ctr.namespace(),
        "c1",
        "",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(st, 42, "exit status of the TERM trap");
    let got = ums_tests::wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        ums_tests::util::read_lossy(&log)
            .contains("got-TERM")
            .then_some(())
    });
    assert!(
        got.is_some(),
        "trap output missing from {}:\n{}",
        log.display(),
        ums_tests::util::read_lossy(&log)
    );
    assert!(!procfs::alive(svc.service));
    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

/// `ctr t kill --all -s SIGKILL` kills the service and a detached exec; the task exits 137.
fn kill_all(v: Version) {
    let c = Containerd::start("killall", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    let before = ctr.task_pids("c1");
    let fifo_dir = ctr.fifo_dir();
    ctr.cmd(&[
        "tasks",
        "exec",
        "-d",
        "--fifo-dir",
        &fifo_dir,
        "--exec-id",
        "sleeper",
        "c1",
        "/bin/sleep",
        "1000",
    ])
    .expect_ok("ctr t exec -d");
    let sleeper = ums_tests::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        ctr.task_pids("c1")
            .into_iter()
            .find(|p| !before.contains(p) && procfs::cmdline_str(*p).contains("sleep 1000"))
    })
    .unwrap_or_else(|| {
        panic!(
            "the exec'd sleep 1000 does not show in ctr t ps: {:?}",
            ctr.task_pids("c1")
        )
    });
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.cmd(&["tasks", "kill", "--all", "-s", "SIGKILL", "c1"])
        .expect_ok("ctr t kill --all");
    let st = tasks_api::wait(
        c.socket(),
        ctr.namespace(),
        "c1",
        "",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(st, 137, "task exit status after kill --all -s SIGKILL");
    let dead = ums_tests::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (!procfs::alive(sleeper) && !procfs::alive(svc.service)).then_some(())
    });
    assert!(
        dead.is_some(),
        "kill --all left processes: exec {sleeper} alive={}, service alive={}",
        procfs::alive(sleeper),
        procfs::alive(svc.service)
    );
    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

/// `ctr t pause` freezes the service (PAUSED, no writes), `ctr t resume` thaws it (RUNNING, writes).
fn pause_resume(v: Version) {
    let c = Containerd::start("pause", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    assert_growing(&svc, "before pause");
    ctr.cmd(&["tasks", "pause", "c1"]).expect_ok("ctr t pause");
    ctr.wait_status("c1", "PAUSED", Duration::from_secs(10));
    assert_not_growing(&svc, "paused");
    ctr.cmd(&["tasks", "resume", "c1"])
        .expect_ok("ctr t resume");
    ctr.wait_status("c1", "RUNNING", Duration::from_secs(10));
    assert_growing(&svc, "resumed");
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.as_f64()
}

/// `ctr t metrics --format json` returns memory, cpu and pids data of the container.
fn metrics(v: Version) {
    let c = Containerd::start("metrics", v);
    let ctr = c.ctr();
    let _svc = start_loop(&c, &ctr, "c1");
    std::thread::sleep(Duration::from_millis(500));
    let out = ctr
        .cmd(&["tasks", "metrics", "--format", "json", "c1"])
        .expect_ok("ctr t metrics");
    let j: Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("metrics are not JSON ({e}):\n{out}"));
    // ctr 1.6 prints the cgroup v1 Metrics message itself; 2.x may wrap it.
    let m = j.get("Data").or_else(|| j.get("data")).unwrap_or(&j);
    let mem = num(m, &["memory", "usage", "usage"]);
    let cpu = num(m, &["cpu", "usage", "total"]);
    let pids = num(m, &["pids", "current"]);
    assert!(
        mem.unwrap_or(0.0) > 0.0,
        "no memory usage in metrics:\n{out}"
    );
    assert!(cpu.unwrap_or(0.0) > 0.0, "no cpu usage in metrics:\n{out}");
    assert!(
        pids.unwrap_or(0.0) >= 1.0,
        "no pids count in metrics:\n{out}"
    );
    let table = ctr
        .cmd(&["tasks", "metrics", "c1"])
        .expect_ok("ctr t metrics (table)");
    assert!(
        table.stdout.contains("memory"),
        "table metrics without memory:\n{table}"
    );
    ctr.kill_and_remove("c1");
}

/// Tasks.Update (what `ctr t update` would do; this ctr lacks it) sets memory and pids limits on
/// the outer's cgroups, which bound the service below it.
fn update_resources(v: Version) {
    let c = Containerd::start("update", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    let limit: u64 = 64 * 1024 * 1024;
    let res = serde_json::json!({ "memory": { "limit": limit }, "pids": { "limit": 77 } });
    tasks_api::update_task(c.socket(), ctr.namespace(), "c1", &res)
        .unwrap_or_else(|e| panic!("{e}"));
    let mem_file = procfs::cgroup_file(svc.outer, "memory", "memory.limit_in_bytes")
        .expect("outer memory cgroup");
    let got: u64 = std::fs::read_to_string(&mem_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, limit, "{} after update", mem_file.display());
    let pids_file = procfs::cgroup_file(svc.outer, "pids", "pids.max").expect("outer pids cgroup");
    let got = std::fs::read_to_string(&pids_file).unwrap();
    assert_eq!(got.trim(), "77", "{} after update", pids_file.display());
    if c.runtime().nested() {
        // The service sits below the outer, so the outer's limit bounds it.
        let svc_cg = procfs::cgroup_path(svc.service, "memory").unwrap();
        let outer_cg = procfs::cgroup_path(svc.outer, "memory").unwrap();
        assert!(
            procfs::cgroup_is_under(&svc_cg, &outer_cg),
            "service cgroup {svc_cg} not under {outer_cg}"
        );
    }
    assert_growing(&svc, "after update");
    ctr.kill_and_remove("c1");
}

both_versions!(
    service_runs_nested,
    run_rm_exit_code,
    sigkill_exit_status_137,
    sigterm_reaches_trap,
    kill_all,
    pause_resume,
    metrics,
    update_resources,
);

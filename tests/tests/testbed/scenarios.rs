//! Migrations that must succeed: the service goes on at the destination from the state it had.

use std::time::{Duration, Instant};

use ums_tests::cri::Cri;
use ums_tests::testbed::{Bed, System, BUSYBOX_IMAGE, COUNTER_IMAGE, MULTIPROC_IMAGE};

use crate::common::*;

/// The counter migrates a->b and counts on from where it was; A holds nothing of it; B's
/// containerd manages it (SIGTERM through `ctr t kill` reaches the restored service, which exits
/// 0; `ctr t delete` and `ctr c delete` remove it).
pub fn counter_a_to_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = Svc::start(bed, a, "tbt-counter", COUNTER_IMAGE, &[]);
    let id = svc.id.clone();
    // At 100 ms a count, 30 is 3 s: a counter restarted on B could not be past it in the ~1 s
    // the migration and the first read take.
    let before = svc.wait_u64(a, "/tmp/counter", Duration::from_secs(20), |v| v >= 30);
    let t0 = Instant::now();
    migrate_ok(bed, a, b, &id, "counter");

    assert_nothing_left(bed, a, &id, true, "the source after the migration");

    let t = b.ctr().expect_task(&id);
    assert_eq!(t.status, "RUNNING", "task {id} on B: {t:?}");
    let row = b
        .ctr()
        .cmd(&["containers", "ls"])
        .expect_ok("ctr c ls on B");
    assert!(
        row.stdout.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[0] == id && f[1] == COUNTER_IMAGE && f[2] == "io.containerd.ums.v1"
        }),
        "B's containerd does not list {id} with image {COUNTER_IMAGE} and runtime io.containerd.ums.v1\n{row}"
    );

    std::thread::sleep(Duration::from_millis(500));
    let after = svc.read_u64(b, "/tmp/counter").unwrap_or_else(|| {
        panic!(
            "no /tmp/counter on B\n{}",
            svc.exec(b, &["cat", "/tmp/counter"])
        )
    });
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    assert!(
        after > before,
        "the counter on B ({after}) is not past its value on A before the migration ({before}): reset or stuck"
    );
    assert!(
        after <= before + elapsed_ms / 100 + 5,
        "the counter on B ({after}) is further than {elapsed_ms} ms of counting from {before}"
    );
    // What the restored service printed first (its stdout on B): the next value, not 1.
    let last_a = last_number_in(&a.ctr().log_file(&id));
    let log_b = bed.restored_log(b, NS, &id);
    let first_b = first_number_in(&log_b).unwrap_or_else(|| {
        panic!(
            "the restored counter printed nothing to {}",
            log_b.display()
        )
    });
    assert!(
        first_b > before && first_b <= after,
        "the restored counter's first output on B is {first_b}; before the migration it was at {before}, now {after}"
    );
    say(format!(
        "counter: {before} on A before, last printed on A {last_a:?}, first printed on B {first_b}, {after} on B after {elapsed_ms} ms"
    ));

    let ctr = b.ctr();
    ctr.cmd(&["tasks", "kill", "-s", "SIGTERM", &id])
        .expect_ok("ctr t kill -s SIGTERM on B");
    ctr.wait_status(&id, "STOPPED", Duration::from_secs(20));
    let code = ctr.delete_task(&id);
    assert_eq!(
        code, 0,
        "the restored counter should exit 0 on SIGTERM (ctr t delete on B reported {code})"
    );
    ctr.cmd(&["containers", "delete", &id])
        .expect_ok("ctr c delete on B");
    assert_nothing_left(bed, b, &id, true, "B after ctr t kill/delete and c delete");
}

/// memhog --mib 128 migrates with its memory intact: it verifies its checksum on B.
pub fn memhog_128mib(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let (svc, sum) = start_memhog(bed, a, "tbt-memhog", 128);
    let id = svc.id.clone();
    assert_memhog_sum(&svc, a, &sum, "memhog on A before the migration");
    let f = migrate_ok(bed, a, b, &id, "memhog 128 MiB");
    assert!(
        f.bytes >= 128 * MIB,
        "bytes {} < 128 MiB: the memory was not all sent",
        f.bytes
    );
    assert_nothing_left(bed, a, &id, true, "the source after the migration");
    svc.assert_running(b, "memhog on B");
    assert_memhog_sum(&svc, b, &sum, "memhog on B after the migration");
    let (ticks, verifies) = read_ticks(&svc, b);
    let gap = check_ticks(&ticks, "memhog's ticks across the migration");
    say(format!(
        "memhog 128 MiB: verify ok {sum} on A and B ({} verifications, {} ticks without a gap in numbering); largest tick gap {gap} ms (CLOCK_REALTIME) vs frozen_ms {} / downtime_ms {}",
        verifies.len(),
        ticks.len(),
        f.frozen_ms,
        f.downtime_ms
    ));
    assert!(
        verifies.iter().all(|(ok, s)| ok == "ok" && s == &sum),
        "a verification failed: {verifies:?}"
    );
}

/// The number of multiproc processes in the service on `sys` (parent + children).
fn multiproc_procs(svc: &Svc, sys: &ums_tests::testbed::System) -> usize {
    svc.sh(sys, "ps -o pid,args")
        .lines()
        .filter(|l| l.contains("/usr/local/bin/multiproc"))
        .count()
}

/// multiproc (parent + 4 children in a ring of pipes and unix socketpairs) migrates; its rounds
/// go on on B (a broken ring would end it with exit 1).
pub fn multiproc(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = Svc::start(bed, a, "tbt-multiproc", MULTIPROC_IMAGE, &[]);
    let id = svc.id.clone();
    let before = svc.wait_u64(a, "/tmp/rounds", Duration::from_secs(20), |v| v >= 50);
    assert_eq!(multiproc_procs(&svc, a), 5, "parent + 4 children on A");
    migrate_ok(bed, a, b, &id, "multiproc");
    assert_nothing_left(bed, a, &id, true, "the source after the migration");
    let after = svc.assert_counts_on(b, "/tmp/rounds", before, "multiproc on B");
    std::thread::sleep(Duration::from_millis(500));
    svc.assert_running(b, "multiproc on B after more rounds");
    let n = multiproc_procs(&svc, b);
    assert_eq!(
        n,
        5,
        "parent + 4 children on B:\n{}",
        svc.sh(b, "ps -o pid,args")
    );
    let later = svc.wait_u64(b, "/tmp/rounds", Duration::from_secs(10), |v| v > after);
    say(format!(
        "multiproc: {before} rounds on A, {after} then {later} on B, 5 processes"
    ));
}

/// What the files service made, as the service sees it (one `key=value` per line).
const FILES_CHECK: &str = r#"
for f in /data/x /tmp/y /dev/shm/z; do printf '%s=%s\n' "$f" "$(cat "$f" 2>&1)"; done
printf 'link=%s\n' "$(readlink /data/link)"
printf 'blob=%s\n' "$(md5sum /data/blob | cut -d' ' -f1)"
printf 'blob.md5=%s\n' "$(cut -d' ' -f1 /data/blob.md5)"
printf 'mode=%s\n' "$(stat -c %a /data/x)"
printf 'passwd=%s\n' "$(tail -n1 /etc/passwd)"
for f in /etc/group /root; do if [ -e "$f" ]; then echo "$f=present"; else echo "$f=deleted"; fi; done
printf 'run=%s %s\n' "$(stat -c '%a %u:%g' /run)" "$(ls -A /run | wc -l)"
printf 'run-writable=%s\n' "$(touch /run/w 2>&1 && rm /run/w && echo yes)"
"#;

/// Files the service wrote into its rootfs (new dir, file, symlink, 1 MiB blob, a changed and a
/// deleted file of the image, a deleted dir of the image) and into its /dev/shm tmpfs are on B as
/// they were (the writable-layer diff, ums-rootfs.tar, applied on B's upperdir; shm by CRIU), and
/// its empty /run tmpfs (which CRIU patch 0004 sends as a 0-byte image, no tar) is there, empty,
/// with the same mode and owner, and writable.
pub fn files_written(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let script = "mkdir -p /data && echo data-x > /data/x && chmod 640 /data/x \
        && ln -s x /data/link && head -c 1048576 /dev/urandom > /data/blob \
        && md5sum /data/blob > /data/blob.md5 && echo tmp-y > /tmp/y && echo shm-z > /dev/shm/z \
        && echo 'extra:x:1000:1000::/:/bin/sh' >> /etc/passwd && rm /etc/group && rmdir /root \
        && touch /tmp/ready && while :; do sleep 1; done";
    let svc = Svc::start(
        bed,
        a,
        "tbt-files",
        BUSYBOX_IMAGE,
        &["/bin/sh", "-c", script],
    );
    let id = svc.id.clone();
    ums_tests::wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        svc.exec(a, &["test", "-e", "/tmp/ready"])
            .success()
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the files service did not finish writing; log:\n{}",
            ums_tests::util::read_lossy(&a.ctr().log_file(&id))
        )
    });
    let on_a = svc.sh(a, FILES_CHECK);
    let want = [
        "/data/x=data-x",
        "/tmp/y=tmp-y",
        "/dev/shm/z=shm-z",
        "link=x",
        "mode=640",
        "passwd=extra:x:1000:1000::/:/bin/sh",
        "/etc/group=deleted",
        "/root=deleted",
        "run=755 0:0 0",
        "run-writable=yes",
    ];
    for w in want {
        assert!(
            on_a.lines().any(|l| l == w),
            "on A before the migration, {w:?} expected in:\n{on_a}"
        );
    }
    migrate_ok(bed, a, b, &id, "files");
    assert_nothing_left(bed, a, &id, true, "the source after the migration");
    svc.assert_running(b, "files service on B");
    let on_b = svc.sh(b, FILES_CHECK);
    let a_lines: Vec<&str> = on_a.lines().collect();
    let b_lines: Vec<&str> = on_b.lines().collect();
    let differ: Vec<String> = a_lines
        .iter()
        .zip(b_lines.iter())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("A: {x}  B: {y}"))
        .collect();
    assert!(
        differ.is_empty() && a_lines.len() == b_lines.len(),
        "the service's files differ on B:\n  {}\n--- A:\n{on_a}--- B:\n{on_b}",
        differ.join("\n  ")
    );
    let blob_ok = a_lines.iter().any(|l| l.starts_with("blob=")) && {
        let get = |k: &str| {
            b_lines
                .iter()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
                .to_string()
        };
        get("blob=") == get("blob.md5=")
    };
    assert!(
        blob_ok,
        "the 1 MiB blob on B does not match its md5:\n{on_b}"
    );
    say(format!(
        "files: identical on A and B: {}",
        b_lines.join("; ")
    ));
}

/// The same counter goes a->b->a->b... 10 migrations in all; it never goes back and each source
/// is left with nothing.
pub fn ping_pong_10(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = Svc::start(bed, a, "tbt-pingpong", COUNTER_IMAGE, &[]);
    let id = svc.id.clone();
    let mut last = svc.wait_u64(a, "/tmp/counter", Duration::from_secs(20), |v| v >= 10);
    let mut values = vec![last];
    let mut totals = Vec::new();
    let mut frozen = Vec::new();
    for i in 1..=10 {
        let (from, to) = if i % 2 == 1 { (a, b) } else { (b, a) };
        let f = migrate_ok(bed, from, to, &id, &format!("ping-pong {i}/10"));
        totals.push(f.total_ms);
        frozen.push(f.frozen_ms);
        assert_nothing_left(
            bed,
            from,
            &id,
            true,
            &format!("the source after migration {i}"),
        );
        let now = svc.wait_u64(to, "/tmp/counter", Duration::from_secs(10), |v| v > last);
        assert!(
            now > last,
            "migration {i}: the counter went from {last} to {now}"
        );
        last = now;
        values.push(now);
    }
    svc.assert_running(a, "the counter back on A after 10 migrations");
    let stat = |v: &[u64]| {
        format!(
            "min {} / avg {} / max {}",
            v.iter().min().unwrap_or(&0),
            v.iter().sum::<u64>() / v.len().max(1) as u64,
            v.iter().max().unwrap_or(&0)
        )
    };
    say(format!(
        "ping-pong: counter {values:?}; total_ms {}; frozen_ms {}",
        stat(&totals),
        stat(&frozen)
    ));
}

/// A CRI pod with runtime handler `ums` on `sys` and a counter container in it, with a pid
/// namespace of its own as kubelet gives by default (`ums_tests::cri::Cri::create_container`
/// sets no namespace options: CRI would join the pod's pid namespace). Dropping it removes the
/// pod (through CRI) and the container from both systems, whatever the test's outcome.
pub(crate) struct CriCounter<'a> {
    bed: &'a Bed,
    sys: &'a System,
    pub(crate) pod: String,
    pub(crate) cid: String,
}

impl<'a> CriCounter<'a> {
    #[track_caller]
    pub(crate) fn start(bed: &'a Bed, sys: &'a System, name: &str) -> CriCounter<'a> {
        Self::start_image(bed, sys, name, COUNTER_IMAGE)
    }

    /// The same with another image (the counter's, under another name).
    #[track_caller]
    pub(crate) fn start_image(
        bed: &'a Bed,
        sys: &'a System,
        name: &str,
        image: &str,
    ) -> CriCounter<'a> {
        use k8s_cri::v1 as cri;
        let mut client = sys.cri().expect("CRI client");
        client
            .wait_ready(Duration::from_secs(30))
            .expect("CRI ready");
        let log_dir = sys.dir.join("logs").join(format!("pod-{name}"));
        std::fs::create_dir_all(&log_dir).expect("pod log dir");
        let mut config = Cri::pod_config(
            name,
            &format!("{name}-uid"),
            &bed.cgroup_parent(sys),
            &log_dir,
        );
        let ns = cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        };
        if let Some(l) = config.linux.as_mut() {
            l.security_context = Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(ns.clone()),
                ..Default::default()
            });
        }
        let pod = client
            .run_pod(config, "ums")
            .unwrap_or_else(|e| panic!("RunPodSandbox {name} on system {}: {e}", sys.name));
        let mut me = CriCounter {
            bed,
            sys,
            pod: pod.id.clone(),
            cid: String::new(),
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "svc".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                log_path: "svc.log".into(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: Some(ns),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        };
        let socket = sys.socket();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        me.cid = rt
            .block_on(async {
                let ch = containerd_client::connect(&socket)
                    .await
                    .map_err(|e| e.to_string())?;
                cri::runtime_service_client::RuntimeServiceClient::new(ch)
                    .create_container(req)
                    .await
                    .map(|r| r.into_inner().container_id)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            })
            .unwrap_or_else(|e| {
                panic!("CreateContainer in pod {name} on system {}: {e}", sys.name)
            });
        client
            .start_container(&me.cid)
            .unwrap_or_else(|e| panic!("StartContainer {}: {e}", me.cid));
        me
    }

    /// The counter of the container on `sys` (ctr exec in namespace k8s.io).
    fn read(&self, sys: &System) -> Option<u64> {
        let out = sys.ctr_k8s().exec(&self.cid, &["cat", "/tmp/counter"]);
        out.success()
            .then(|| out.stdout.trim().parse().ok())
            .flatten()
    }

    #[track_caller]
    fn wait(&self, sys: &System, what: &str, pred: impl Fn(u64) -> bool) -> u64 {
        ums_tests::wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
            self.read(sys).filter(|&v| pred(v))
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: the counter of {} on system {} (last read {:?})\n{}",
                self.cid,
                sys.name,
                self.read(sys),
                sys.ctr_k8s().cmd(&["tasks", "ls"])
            )
        })
    }
}

impl Drop for CriCounter<'_> {
    fn drop(&mut self) {
        if !self.cid.is_empty() {
            self.bed.b.ctr_k8s().remove_best_effort(&self.cid);
        }
        if let Ok(mut c) = self.sys.cri() {
            let _ = c.stop_pod(&self.pod);
            let _ = c.remove_pod(&self.pod);
        }
        if !self.cid.is_empty() {
            self.sys.ctr_k8s().remove_best_effort(&self.cid);
        }
    }
}

/// A container started through CRI on A (pod with handler `ums`) migrates to B with
/// `--to-interface containerd` as a plain container of namespace k8s.io, same image: it counts
/// on there from where it was, with its pod's hostname, without CRI labels and annotations, its
/// cgroup under B's parent, unknown to B's CRI; on A, CRI no longer lists it nor its pod (it
/// was the pod's only container; removed through CRI) and containerd holds nothing of it. The
/// sandbox itself is refused (422). Then back to A, as the plain container it now is.
pub fn cri_container_a_to_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = CriCounter::start(bed, a, "tbt-cri");
    let cid = svc.cid.clone();
    let before = svc.wait(a, "on A", |v| v >= 30);

    let m = bed.migrate(a, b, &format!("k8s.io/{}", svc.pod));
    assert_refused(
        bed,
        &m,
        &["pod sandbox", "422"],
        "migrating the pod sandbox",
    );

    let reference = format!("k8s.io/{cid}");
    let t0 = Instant::now();
    let m = bed.migrate_with(a, b, &reference, &["--to-interface", "containerd"]);
    let Some(report) = m.report.as_ref().filter(|_| m.out.success()) else {
        panic!(
            "ums migrate {reference} a->b failed\n{}{}",
            m.out,
            diag(bed)
        );
    };
    let bad = report_problems(report, &reference, a, b);
    assert!(
        bad.is_empty(),
        "the --json report is not sane:\n  {}\nreport: {report}",
        bad.join("\n  ")
    );
    say(format!("cri container (a->b): {}", figures(report).line()));
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("pod ums-test/tbt-cri") && notes.contains("removed through CRI"),
        "the report should note that the emptied pod left A: {report}"
    );
    assert_eq!(report["location"]["interface"], "containerd", "{report}");

    // B: a plain container of k8s.io, counting on.
    let ctr_b = b.ctr_k8s();
    assert_eq!(ctr_b.expect_task(&cid).status, "RUNNING", "task {cid} on B");
    let after = svc.wait(b, "on B", |v| v > before);
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    assert!(
        after <= before + elapsed_ms / 100 + 5,
        "the counter on B ({after}) is further than {elapsed_ms} ms of counting from {before}: restarted?"
    );
    let later = svc.wait(b, "on B, later", |v| v > after);
    let info = ctr_b
        .cmd(&["containers", "info", &cid])
        .expect_ok("ctr -n k8s.io c info on B");
    let info: serde_json::Value = serde_json::from_str(&info.stdout).expect("c info JSON");
    assert_eq!(info["Image"], COUNTER_IMAGE, "{info}");
    assert_eq!(info["Runtime"]["Name"], "io.containerd.ums.v1", "{info}");
    let labels = info["Labels"].to_string();
    assert!(
        !labels.contains("io.cri-containerd") && !labels.contains("io.kubernetes"),
        "CRI labels on B: {labels}"
    );
    assert_eq!(
        info["Labels"]["io.ums.cri.pod"], "ums-test/tbt-cri",
        "{labels}"
    );
    let spec = &info["Spec"];
    assert!(
        !spec["annotations"].to_string().contains("io.kubernetes"),
        "CRI annotations on B: {}",
        spec["annotations"]
    );
    assert_eq!(
        spec["linux"]["cgroupsPath"],
        format!("{}/k8s.io/{cid}", bed.cgroup_parent(b))
    );
    assert!(
        spec["linux"]["namespaces"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n.get("path").is_none())),
        "namespaces joined by path on B: {}",
        spec["linux"]["namespaces"]
    );
    let etc = ctr_b.exec(
        &cid,
        &[
            "sh",
            "-c",
            "hostname; cat /etc/hostname; test -s /etc/hosts && echo hosts",
        ],
    );
    assert_eq!(
        etc.stdout.split_whitespace().collect::<Vec<_>>(),
        ["tbt-cri", "tbt-cri", "hosts"],
        "{etc}"
    );
    let (_, b_ctrs) = b.cri().and_then(|mut c| c.list()).expect("CRI list on B");
    assert!(!b_ctrs.contains(&cid), "B's CRI lists {cid}");

    // A: CRI forgot it and its pod, containerd holds nothing of it.
    let (pods, ctrs) = a.cri().and_then(|mut c| c.list()).expect("CRI list on A");
    assert!(!ctrs.contains(&cid), "A's CRI still lists {cid}: {ctrs:?}");
    assert!(
        !pods.contains(&svc.pod),
        "the emptied pod sandbox {} is still on A: {pods:?}",
        svc.pod
    );
    let mut left = Vec::new();
    let clean = ums_tests::wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        left = bed.leftovers(a, "k8s.io", &cid, false);
        let cri_cgroup = format!("{}/{cid}", bed.cgroup_parent(a));
        for m in ums_tests::procfs::cgroup_mounts() {
            let d = m.join(cri_cgroup.trim_start_matches('/'));
            if d.is_dir() {
                left.push(format!("cgroup {}", d.display()));
            }
        }
        left.is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "A still holds {cid}:\n  {}{}",
        left.join("\n  "),
        diag(bed)
    );
    say(format!(
        "cri container: {before} on A before, {after} then {later} on B; A's CRI lists neither pod nor container"
    ));

    // Back to A: a plain container there too.
    let m = bed.migrate(b, a, &reference);
    assert!(
        m.ok(),
        "ums migrate {reference} b->a failed\n{}{}",
        m.out,
        diag(bed)
    );
    let report = m.report.as_ref().expect("report");
    let bad = report_problems(report, &reference, b, a);
    assert!(bad.is_empty(), "report b->a: {}\n{report}", bad.join("; "));
    assert_eq!(report["location"]["interface"], "containerd", "{report}");
    let back = svc.wait(a, "back on A", |v| v > later);
    assert_eq!(a.ctr_k8s().expect_task(&cid).status, "RUNNING");
    let mut left = Vec::new();
    let clean = ums_tests::wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        left = bed.leftovers(b, "k8s.io", &cid, false);
        left.is_empty().then_some(())
    });
    assert!(
        clean.is_some(),
        "B still holds {cid}:\n  {}{}",
        left.join("\n  "),
        diag(bed)
    );
    say(format!(
        "cri container: back on A at {back}, B holds nothing"
    ));
}

/// `ums migrate --post-copy` (CRIU lazy pages): memhog --mib 256 restarts on B before its
/// memory is there, fetches every page from the frozen source, and verifies its checksum on B;
/// the stream carried everything but the pages.
pub fn memhog_post_copy(bed: &Bed) {
    memhog_lazy(bed, "tbt-postcopy", false);
}

/// `ums migrate --post-copy --hold`: as post-copy, but memhog stays frozen on B until its last
/// page is in (CRIU patch 0006 restores it into its frozen cgroup, WaitPages thaws it): it
/// ticks nowhere meanwhile, so its largest tick gap spans the whole page transfer, and the
/// report's downtime counts it.
pub fn memhog_held(bed: &Bed) {
    memhog_lazy(bed, "tbt-held", true);
}

fn memhog_lazy(bed: &Bed, name: &str, hold: bool) {
    let (a, b) = (&bed.a, &bed.b);
    let what = if hold { "post-copy, held" } else { "post-copy" };
    let (svc, sum) = start_memhog(bed, a, name, 256);
    let id = svc.id.clone();
    let flags = post_copy_flags(hold);
    let m = bed.migrate_with(a, b, &svc.reference(), flags);
    let f = check_migration(bed, &m, a, b, &id, &format!("memhog 256 MiB, {what}"));
    let report = m.report.as_ref().expect("a report");
    for (key, want) in [("/post_copy", Some(true)), ("/hold", hold.then_some(true))] {
        assert_eq!(
            report.pointer(key).and_then(|v| v.as_bool()),
            want,
            "{key} in the report of a {what} migration: {report}"
        );
    }
    let pages_ms = report
        .pointer("/phases_ms/post_copy")
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no phases_ms.post_copy in {report}"));
    let pages = report
        .pointer("/pages_bytes")
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no pages_bytes in {report}"));
    assert!(
        pages >= 256 * MIB && f.bytes >= pages && f.bytes - pages < 64 * MIB,
        "{what}: {pages} bytes of pages of {} moved: the 256 MiB should have come as pages, the rest in the stream",
        f.bytes
    );
    assert_nothing_left(bed, a, &id, true, "the source after the migration");
    svc.assert_running(b, "memhog on B");
    assert_memhog_sum(
        &svc,
        b,
        &sum,
        &format!("memhog on B after the {what} migration"),
    );
    let (ticks, _) = read_ticks(&svc, b);
    let gap = check_ticks(
        &ticks,
        &format!("memhog's ticks across the {what} migration"),
    );
    if hold {
        // Frozen from the dump at A to the thaw after the last page at B: no tick meanwhile.
        assert!(
            gap >= pages_ms && f.downtime_ms >= pages_ms,
            "held: the largest tick gap ({gap} ms) and downtime_ms ({}) should span the page transfer ({pages_ms} ms)",
            f.downtime_ms
        );
    }
    say(format!(
        "memhog 256 MiB {what}: verify ok on B; {} bytes streamed, {pages} bytes of pages in {pages_ms} ms after the restore; largest tick gap {gap} ms vs downtime_ms {}",
        f.bytes - pages, f.downtime_ms
    ));
}

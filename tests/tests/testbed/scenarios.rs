//! Migrations that must succeed: the service goes on at the destination from the state it had.

use std::time::{Duration, Instant};

use ums_tests::testbed::{Bed, BUSYBOX_IMAGE, COUNTER_IMAGE, MULTIPROC_IMAGE};

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
    let (ok, got) = memhog_verify(&svc, a);
    assert!(
        ok == "ok" && got == sum,
        "memhog on A before the migration: verify {ok} {got}, checksum at start {sum}"
    );
    let f = migrate_ok(bed, a, b, &id, "memhog 128 MiB");
    assert!(
        f.bytes >= 128 * MIB,
        "bytes {} < 128 MiB: the memory was not all sent",
        f.bytes
    );
    assert_nothing_left(bed, a, &id, true, "the source after the migration");
    svc.assert_running(b, "memhog on B");
    let (ok, got) = memhog_verify(&svc, b);
    assert!(
        ok == "ok" && got == sum,
        "memhog on B after the migration: verify {ok} {got}, checksum on A {sum}"
    );
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
"#;

/// Files the service wrote into its rootfs (new dir, file, symlink, 1 MiB blob, a changed and a
/// deleted file of the image, a deleted dir of the image) and into its /dev/shm tmpfs are on B as
/// they were (the writable-layer diff, ums-rootfs.tar, applied on B's upperdir; shm by CRIU).
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

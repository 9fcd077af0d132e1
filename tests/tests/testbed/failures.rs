//! Migrations that must fail ("Nothing lost"): each failure injected once; `ums migrate` exits
//! non-zero naming the cause, the service runs on at A with its state, B holds nothing of it.

use std::time::{Duration, Instant};

use ums_tests::testbed::{Bed, System, BUSYBOX_IMAGE, COUNTER_IMAGE};
use ums_tests::wait_for;

use crate::common::*;

/// An image name tagged on a system for one test; untagged when dropped.
pub struct Tag<'a> {
    sys: &'a System,
    name: String,
}

impl<'a> Tag<'a> {
    #[track_caller]
    pub fn new(sys: &'a System, source: &str, name: &str) -> Tag<'a> {
        sys.ctr()
            .cmd(&["images", "tag", "--force", source, name])
            .expect_ok(&format!("ctr images tag {source} {name} on {}", sys.name));
        Tag {
            sys,
            name: name.into(),
        }
    }
}

impl Drop for Tag<'_> {
    fn drop(&mut self) {
        self.sys
            .ctr()
            .cmd_timeout(&["images", "rm", &self.name], Duration::from_secs(20));
    }
}

/// After a failed migration: the service runs on at A from its state, B holds nothing.
#[track_caller]
fn assert_survived(bed: &Bed, svc: &Svc, path: &str, before: u64, what: &str) {
    svc.assert_counts_on(&bed.a, path, before, what);
    assert_nothing_left(bed, &bed.b, &svc.id, false, what);
}

/// The image exists only on A: refused in pre-migration, naming the image and B.
pub fn image_not_on_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let image = "localhost/ums/only-a:1";
    let _tag = Tag::new(a, BUSYBOX_IMAGE, image);
    assert!(
        !b.ctr().image_names().iter().any(|i| i == image),
        "{image} must not exist on B"
    );
    let svc = Svc::start(bed, a, "tbt-onlya", image, &["/bin/sh", "-c", SH_COUNTER]);
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 10);
    let m = bed.migrate(a, b, &svc.reference());
    assert_refused(
        bed,
        &m,
        &[image, "not present on system b"],
        "image only on A",
    );
    assert_survived(bed, &svc, "/tmp/c", before, "image only on A");
}

/// B's shim of the container is killed (SIGKILL) while memhog 512 MiB streams to it (its pages
/// stream while B restores, so the kill lands in the restore, or in the Dump before them): the
/// migration fails, A resumes the service with its memory intact, B removes what it made. The
/// kill comes once B received `threshold` bytes of it; an attempt whose migration ended before
/// the kill is retried with a new service and a lower threshold (never passes vacuously).
pub fn destination_vanishes(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let mut threshold = 32 * MIB;
    for attempt in 1..=3 {
        let (svc, sum) = start_memhog(bed, a, &format!("tbt-vanish{attempt}"), 512);
        let id = svc.id.clone();
        let rx0 = link_rx_bytes(bed, b);
        let mut mig = bed
            .spawn_migrate(a, b, &svc.reference())
            .expect("spawn ums migrate");
        let t0 = Instant::now();
        let mut killed: Option<(u64, Vec<i32>)> = None;
        while !mig.finished() && t0.elapsed() < Duration::from_secs(120) {
            let got = link_rx_bytes(bed, b) - rx0;
            if got >= threshold {
                let pids = shim_pids(b, &id);
                for &p in &pids {
                    ums_tests::util::signal(p, libc::SIGKILL);
                }
                if !pids.is_empty() {
                    killed = Some((got, pids));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let m = bed.finish_migrate(mig);
        let Some((at, pids)) = killed else {
            say(format!(
                "destination vanishes, attempt {attempt}: the migration ended before B received {} MiB (exit {}); retrying with a lower threshold",
                threshold / MIB,
                m.out.code
            ));
            threshold /= 4;
            continue;
        };
        say(format!(
            "destination vanishes: killed B's shim {pids:?} of {id} with {:.1} MiB of 512 received",
            at as f64 / MIB as f64
        ));
        let err = assert_refused(
            bed,
            &m,
            &["runs on at the source"],
            "B's shim killed mid-stream",
        );
        assert!(
            (err.contains("phase checkpoint") && err.contains("stream"))
                || (err.contains("phase restore") && err.contains("tasks start")),
            "B's shim killed mid-stream: the message names neither the stream nor the restore:\n{err}"
        );
        assert!(
            !err.contains("may be frozen"),
            "the source says the service may be frozen:\n{err}"
        );
        assert_memhog_survived(&svc, a, &sum, "memhog on A after B's shim vanished");
        assert_nothing_left(bed, b, &id, false, "B after its shim was killed");
        return;
    }
    panic!(
        "could not kill B's shim while the stream ran, in 3 attempts: the injection never happened"
    );
}

/// An established TCP connection inside the service: CRIU refuses to dump it (the shim does not
/// pass --tcp-established), so the dump fails on A; the service and its connection go on.
pub fn criu_dump_on_a(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let script = format!(
        "sleep 100000 | nc -l -p 7000 >/dev/null & sleep 0.3; \
         sleep 100000 | nc 127.0.0.1 7000 & {SH_COUNTER}"
    );
    let svc = Svc::start(
        bed,
        a,
        "tbt-conn",
        BUSYBOX_IMAGE,
        &["/bin/sh", "-c", &script],
    );
    let established = || {
        svc.sh(a, "netstat -tn")
            .lines()
            .filter(|l| l.contains("ESTABLISHED") && l.contains(":7000"))
            .count()
    };
    wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        (established() == 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no established TCP connection in the service:\n{}",
            svc.sh(a, "netstat -tn; ps")
        )
    });
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 10);
    let m = bed.migrate(a, b, &svc.reference());
    let err = assert_refused(
        bed,
        &m,
        &[
            "phase checkpoint",
            "checkpoint failed",
            "criu",
            "runs on at the source",
        ],
        "CRIU dump failure on A",
    );
    assert_survived(bed, &svc, "/tmp/c", before, "CRIU dump failure on A");
    assert_eq!(
        established(),
        2,
        "the service's TCP connection is gone after the failed dump"
    );
    // Last: the reason names CRIU's cause (the connected TCP socket), in the message or in the
    // CRIU log the message points at.
    assert_criu_cause(&err, "dump.log", "TCP socket", "CRIU dump failure on A");
}

/// `ums migrate`'s reason for a CRIU failure names CRIU's cause (`needle`, case-insensitive):
/// in the message itself, or in the CRIU log (`log_name`) the message points at, which must
/// then still exist.
#[track_caller]
fn assert_criu_cause(err: &str, log_name: &str, needle: &str, what: &str) {
    let lower = needle.to_lowercase();
    if err.to_lowercase().contains(&lower) {
        say(format!("{what}: the reason names the cause ({needle})"));
        return;
    }
    let log = err
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '"')
        .find(|w| w.ends_with(log_name))
        .map(std::path::PathBuf::from);
    let Some(log) = log else {
        panic!(
            "{what}: the reason names neither CRIU's cause ({needle}) nor a CRIU log ({log_name})\nreason:\n{err}"
        );
    };
    let exists = log.exists();
    let text = ums_tests::util::read_lossy(&log);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.to_lowercase().contains(&lower))
        .map(str::trim)
        .collect();
    if lines.is_empty() {
        panic!(
            "{what}: the reason does not name CRIU's cause ({needle}), and the CRIU log it points at, {}, {}\nreason:\n{err}",
            log.display(),
            if exists {
                "does not name it either"
            } else {
                "no longer exists"
            }
        );
    }
    say(format!(
        "{what}: the CRIU log {} names the cause: {}",
        log.display(),
        lines.join(" | ")
    ));
}

/// CRIU fails to restore on B: the image has the same name on both systems but other content
/// (B's lacks /usr/local/bin/counter, which the service holds open), so CRIU cannot reopen the
/// file on B. A's service, frozen through the dump, is resumed.
pub fn criu_restore_on_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let image = "localhost/ums/skew:1";
    let _ta = Tag::new(a, COUNTER_IMAGE, image);
    let _tb = Tag::new(b, BUSYBOX_IMAGE, image);
    let script = format!("exec 3</usr/local/bin/counter; {SH_COUNTER}");
    let svc = Svc::start(bed, a, "tbt-skew", image, &["/bin/sh", "-c", &script]);
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 10);
    let m = bed.migrate(a, b, &svc.reference());
    let err = assert_refused(
        bed,
        &m,
        &[
            "phase restore",
            "restore failed",
            "criu",
            "runs on at the source",
        ],
        "CRIU restore failure on B",
    );
    assert_survived(bed, &svc, "/tmp/c", before, "CRIU restore failure on B");
    let fd = svc.sh(a, "readlink /proc/1/fd/3");
    assert_eq!(
        fd.trim(),
        "/usr/local/bin/counter",
        "the service's open file after the failed restore"
    );
    // Last: the reason names CRIU's cause (the file it could not open on B).
    assert_criu_cause(
        &err,
        "restore.log",
        "usr/local/bin/counter",
        "CRIU restore failure on B",
    );
}

/// While a migration of memhog 512 MiB runs, a second one of the same container is refused by
/// A (the source) and by B (where it is arriving); the first completes with the memory intact.
pub fn second_migration(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let (svc, sum) = start_memhog(bed, a, "tbt-twice", 512);
    let id = svc.id.clone();
    let rx0 = link_rx_bytes(bed, b);
    let mut first = bed
        .spawn_migrate(a, b, &svc.reference())
        .expect("spawn ums migrate");
    wait_for(Duration::from_secs(30), Duration::from_millis(5), || {
        (first.stderr_now().contains(" started") || first.finished()).then_some(())
    });
    assert!(
        !first.finished(),
        "the first migration ended before the second was tried:\n{}",
        first.stderr_now()
    );
    let second = bed.migrate(a, b, &svc.reference());
    let running = !first.finished();
    assert_refused(
        bed,
        &second,
        &["already in progress"],
        "a second migration at the source",
    );
    assert!(
        running,
        "the first migration had ended when the second was refused"
    );
    wait_for(Duration::from_secs(30), Duration::from_millis(5), || {
        (link_rx_bytes(bed, b) > rx0 + MIB || first.finished()).then_some(())
    });
    assert!(
        !first.finished(),
        "the first migration ended before B could be asked:\n{}",
        first.stderr_now()
    );
    let third = bed.migrate(b, a, &svc.reference());
    let running = !first.finished();
    assert_refused(
        bed,
        &third,
        &["already in progress"],
        "a migration from the destination while the service arrives there",
    );
    assert!(running, "the first migration had ended when B refused");
    let m = bed.finish_migrate(first);
    let f = check_migration(bed, &m, a, b, &id, "memhog 512 MiB (the first of two)");
    assert!(f.bytes >= 512 * MIB, "bytes {} < 512 MiB", f.bytes);
    assert_nothing_left(bed, a, &id, true, "the source after the migration");
    assert_memhog_sum(&svc, b, &sum, "memhog on B");
}

/// Bad references: clear errors, nothing done.
pub fn bad_refs(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let cases: [(&str, &[&str]); 5] = [
        (
            "default/tbt-nope",
            &["container default/tbt-nope not found on system a"],
        ),
        ("tbtnons/web1", &["namespace tbtnons not found on system a"]),
        ("web1", &["\"web1\"", "NAMESPACE/NAME"]),
        ("default/bad name", &["\"bad name\"", "may only contain"]),
        ("default/", &["container name", "is empty"]),
    ];
    for (r, reasons) in cases {
        let m = bed.migrate(a, b, r);
        assert_refused(bed, &m, reasons, &format!("ums migrate {r:?}"));
    }
    assert_nothing_left(bed, b, "tbt-nope", true, "B after the refusals");
    assert_nothing_left(bed, a, "tbt-nope", true, "A after the refusals");
}

/// Starts `sys`'s coordinator again when dropped (after a test stopped or killed it), whatever
/// the test's outcome.
struct CoordinatorBack<'a> {
    bed: &'a Bed,
    sys: &'a System,
}

impl Drop for CoordinatorBack<'_> {
    fn drop(&mut self) {
        if self.bed.coordinator_pid(self.sys).is_none() {
            let out = self.bed.coordinator(self.sys, "start");
            if !out.success() {
                say(format!(
                    "starting the coordinator of {} again failed:\n{out}",
                    self.sys.name
                ));
            }
        }
    }
}

/// SIGKILLs `sys`'s coordinator (a crash) and waits until it is gone; returns its pid.
#[track_caller]
fn kill_coordinator(bed: &Bed, sys: &System) -> Option<i32> {
    let pid = bed.coordinator_pid(sys)?;
    ums_tests::util::signal(pid, libc::SIGKILL);
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        bed.coordinator_pid(sys).is_none().then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the coordinator of {} (pid {pid}) survived SIGKILL",
            sys.name
        )
    });
    Some(pid)
}

/// SIGKILLs `victim`'s coordinator once the migration `mig` of memhog 512 MiB (spawned when B
/// had received `rx0` bytes) was announced and B received `threshold` bytes more; returns those
/// bytes and the pid. None: the stream was over before (no kill, or one that did not land
/// mid-stream).
fn kill_coordinator_mid_stream(
    bed: &Bed,
    victim: &System,
    mig: &mut ums_tests::util::Spawned,
    rx0: u64,
    threshold: u64,
) -> Option<(u64, i32)> {
    let t0 = Instant::now();
    while !mig.finished() && t0.elapsed() < Duration::from_secs(120) {
        let got = link_rx_bytes(bed, &bed.b) - rx0;
        if got >= threshold && mig.stderr_now().contains(" started") {
            return kill_coordinator(bed, victim)
                .map(|pid| (got, pid))
                .filter(|(at, _)| *at < 512 * MIB);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The migration id `ums migrate` announced on stderr (`ums: migration m-... of ... started`).
fn announced_id(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        l.strip_prefix("ums: migration ")
            .filter(|_| l.ends_with(" started"))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    })
}

/// memhog on `sys` after a failed migration: running, its memory intact (`sum`), its ticks
/// without a gap or a repeat and going on.
#[track_caller]
fn assert_memhog_survived(svc: &Svc, sys: &System, sum: &str, what: &str) {
    svc.assert_running(sys, what);
    assert_memhog_sum(svc, sys, sum, what);
    let (ticks, _) = read_ticks(svc, sys);
    let gap = check_ticks(&ticks, what);
    let n = ticks.len();
    wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        (read_ticks(svc, sys).0.len() > n).then_some(())
    })
    .unwrap_or_else(|| panic!("{what}: memhog on {} does not tick on", sys.name));
    say(format!(
        "{what}: memhog verify ok {sum} on {}, {n} ticks without a gap or repeat and going on (largest gap {gap} ms)",
        sys.name
    ));
}

/// B's coordinator is down when the migration is asked for: refused in pre-migration, naming
/// B's address; nothing was touched.
pub fn destination_down_at_start(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = Svc::start(
        bed,
        a,
        "ufa-bdown",
        BUSYBOX_IMAGE,
        &["/bin/sh", "-c", SH_COUNTER],
    );
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 10);
    let _back = CoordinatorBack { bed, sys: b };
    bed.coordinator(b, "stop")
        .expect_ok("hack/testbed.sh coordinator b stop");
    assert!(
        bed.coordinator_pid(b).is_none(),
        "B's coordinator still runs"
    );
    let m = bed.migrate(a, b, &svc.reference());
    assert_refused(
        bed,
        &m,
        &["10.77.0.2:7400", "unreachable", "connection refused"],
        "B's coordinator down at the start",
    );
    assert_survived(
        bed,
        &svc,
        "/tmp/c",
        before,
        "B's coordinator down at the start",
    );
}

/// B's coordinator is killed (SIGKILL) while memhog 512 MiB streams to B. The stream runs
/// between the shims and completes, but B cannot be asked to restore: A resumes the service.
/// B's prepared container stays until its coordinator starts again and removes it. The kill
/// comes once B holds `threshold` bytes of the stream; an attempt whose stream ended first is
/// retried with a lower threshold (never passes vacuously).
pub fn destination_killed_mid_stream(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let mut threshold = 32 * MIB;
    for attempt in 1..=3 {
        let (svc, sum) = start_memhog(bed, a, &format!("ufa-bkill{attempt}"), 512);
        let id = svc.id.clone();
        let back = CoordinatorBack { bed, sys: b };
        let rx0 = link_rx_bytes(bed, b);
        let mut mig = bed
            .spawn_migrate(a, b, &svc.reference())
            .expect("spawn ums migrate");
        let Some((at, pid)) = kill_coordinator_mid_stream(bed, b, &mut mig, rx0, threshold) else {
            let m = bed.finish_migrate(mig);
            say(format!(
                "destination killed, attempt {attempt}: the kill did not land mid-stream (stream \
                 over before B held {} MiB; ums migrate exit {}); retrying with a lower threshold",
                threshold / MIB,
                m.out.code
            ));
            drop(back);
            threshold /= 4;
            continue;
        };
        say(format!(
            "destination killed: B's coordinator (pid {pid}) killed with {:.1} MiB of 512 at B",
            at as f64 / MIB as f64
        ));
        let m = bed.finish_migrate(mig);
        let err = assert_refused(
            bed,
            &m,
            &[
                "phase restore",
                "10.77.0.2:7400",
                "unreachable",
                "runs on at the source (resumed)",
            ],
            "B's coordinator killed mid-stream",
        );
        assert!(!err.contains("may be frozen"), "{err}");
        assert_memhog_survived(&svc, a, &sum, "memhog on A after B's coordinator died");
        let left = bed.leftovers(b, NS, &id, false);
        say(format!(
            "destination killed: while its coordinator is down, B holds: {}",
            if left.is_empty() {
                "nothing".to_string()
            } else {
                left.join(", ")
            }
        ));
        drop(back);
        assert!(
            bed.coordinator_pid(b).is_some(),
            "B's coordinator did not start again"
        );
        assert_nothing_left(bed, b, &id, false, "B once its coordinator started again");
        let log = ums_tests::util::read_lossy(&bed.coordinator_log(b));
        assert!(
            log.contains(&format!("{id} was prepared by an earlier run")),
            "B's coordinator did not say it removed {id} at start-up:\n{}",
            ums_tests::util::tail(&bed.coordinator_log(b), 20)
        );
        return;
    }
    panic!("could not kill B's coordinator while the stream ran, in 3 attempts");
}

/// A's coordinator is killed (SIGKILL) while memhog 512 MiB streams to B and started again:
/// at start-up it finds the migration in its journal and waits for its shim's dump to end.
/// Killed in the checkpoint phase, it resumes the service (Abort) and has B abort: reported
/// failed. Killed in the restore phase (pre-copy's pages stream while B restores, so most of
/// the bytes cross then), B's restore went on without it: it asks B, finds the service
/// restored there and removes its copy: reported completed, the service at B with its memory
/// intact. Either way `ums migrate`, which outlives the restart, and `GET /v1/migrations/{id}`
/// name the cause.
pub fn source_restarted(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let mut threshold = 32 * MIB;
    for attempt in 1..=3 {
        let (svc, sum) = start_memhog(bed, a, &format!("ufa-arst{attempt}"), 512);
        let id = svc.id.clone();
        let back = CoordinatorBack { bed, sys: a };
        let rx0 = link_rx_bytes(bed, b);
        let mut mig = bed
            .spawn_migrate(a, b, &svc.reference())
            .expect("spawn ums migrate");
        let Some((at, pid)) = kill_coordinator_mid_stream(bed, a, &mut mig, rx0, threshold) else {
            drop(back);
            let m = bed.finish_migrate(mig);
            say(format!(
                "source restarted, attempt {attempt}: the kill did not land mid-stream (stream \
                 over before B held {} MiB; ums migrate exit {}); retrying with a lower threshold",
                threshold / MIB,
                m.out.code
            ));
            threshold /= 4;
            continue;
        };
        say(format!(
            "source restarted: A's coordinator (pid {pid}) killed with {:.1} MiB of 512 at B",
            at as f64 / MIB as f64
        ));
        bed.coordinator(a, "start")
            .expect_ok("hack/testbed.sh coordinator a start");
        let m = bed.finish_migrate(mig);
        let in_restore = m
            .out
            .stderr
            .contains("coordinator of system a restarted during phase restore");
        let reasons: &[&str] = if in_restore {
            &[
                "completed, but the source has no figures of it",
                "coordinator of system a restarted during phase restore",
                "b had restored the service: it runs there, the source's copy was removed",
            ]
        } else {
            &[
                "coordinator of system a restarted during phase checkpoint",
                "runs on at the source (resumed)",
                "destination was cleaned up",
            ]
        };
        let err = assert_refused(bed, &m, reasons, "A's coordinator restarted mid-migration");
        let mid = announced_id(&err).expect("ums migrate announced the migration id");
        let list = bed.ums(
            a,
            &["ls", "--json", "--at", &a.url],
            Duration::from_secs(20),
        );
        let records: serde_json::Value =
            serde_json::from_str(&list.stdout).unwrap_or_else(|e| panic!("ums list: {e}\n{list}"));
        let rec = records
            .as_array()
            .and_then(|v| v.iter().find(|r| r["migration_id"] == mid.as_str()))
            .unwrap_or_else(|| panic!("A's coordinator has no record of {mid}:\n{list}"));
        assert_eq!(
            rec["state"],
            if in_restore { "completed" } else { "failed" },
            "{rec}"
        );
        // Completed: how, in its note (it has no error); failed: why, in its error.
        let cause = if in_restore { "note" } else { "error" };
        assert!(
            rec[cause].as_str().unwrap_or("").contains("restarted")
                && (in_restore == rec["error"].is_null()),
            "the record does not name the cause in its {cause}: {rec}"
        );
        say(format!("source restarted: GET /v1/migrations/{mid}: {rec}"));
        let journals = a.dir.join("coordinator/migrations");
        let left: Vec<_> = std::fs::read_dir(&journals)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            left.is_empty(),
            "journals left in {}: {left:?}",
            journals.display()
        );
        if in_restore {
            let what = "memhog on B after A's coordinator restarted";
            svc.assert_running(b, what);
            assert_memhog_sum(&svc, b, &sum, what);
            assert_nothing_left(bed, a, &id, false, "A after its coordinator restarted");
        } else {
            assert_memhog_survived(&svc, a, &sum, "memhog on A after its coordinator restarted");
            assert_nothing_left(bed, b, &id, false, "B after A's coordinator restarted");
        }
        return;
    }
    panic!("could not kill A's coordinator while the stream ran, in 3 attempts");
}

/// A small tmpfs mounted on a dir for one test; unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    #[track_caller]
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let out = ums_tests::util::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "ufa-full"])
                .arg(dir),
            None,
            Duration::from_secs(20),
        );
        assert!(out.success(), "mount a tmpfs on {}:\n{out}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = ums_tests::util::run(
            std::process::Command::new("umount").arg(&self.0),
            None,
            Duration::from_secs(20),
        );
        if !out.success() {
            say(format!("umount {}: {out}; lazily", self.0.display()));
            let _ = ums_tests::util::run(
                std::process::Command::new("umount").arg("-l").arg(&self.0),
                None,
                Duration::from_secs(20),
            );
        }
    }
}

/// B's image dir is a 32 MiB tmpfs and memhog 128 MiB, with 48 MiB written to its writable
/// layer, migrates: B runs out of space receiving the layer's changes (CRIU's images, the
/// pages among them, are held in memory, not written there); A resumes the service and B
/// removes everything (the partial files too).
pub fn disk_full_on_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let _tmpfs = Tmpfs::mount(&b.image_dir(), "32m");
    let (svc, sum) = start_memhog(bed, a, "ufa-full", 128);
    svc.sh(a, "dd if=/dev/urandom of=/big bs=1M count=48 2>/dev/null");
    let m = bed.migrate(a, b, &svc.reference());
    assert_refused(
        bed,
        &m,
        &["phase checkpoint", "no space left", "runs on at the source"],
        "disk full on B",
    );
    assert_memhog_survived(&svc, a, &sum, "memhog on A after B's disk filled up");
    assert_nothing_left(bed, b, &svc.id, false, "B after its disk filled up");
}

/// Post-copy: B's lazy-pages daemon is killed while it fetches the pages of a running restored
/// service. B's copy (with holes in its memory) is killed, the source's CRIU page server fails
/// and the source resumes its service, memory intact; B holds nothing of it.
pub fn post_copy_pages_lost(bed: &Bed) {
    pages_lost(bed, "tbt-pclost", false);
}

/// Held post-copy: the same loss while B's restored copy is still frozen, waiting for its
/// pages. B's copy, which never ran, is killed (thawed to die), and the source resumes.
pub fn held_pages_lost(bed: &Bed) {
    pages_lost(bed, "tbt-hlost", true);
}

fn pages_lost(bed: &Bed, name: &str, hold: bool) {
    let (a, b) = (&bed.a, &bed.b);
    let (svc, sum) = start_memhog(bed, a, name, 1024);
    let id = svc.id.clone();
    let flags = post_copy_flags(hold);
    let mut mig = bed
        .spawn_migrate_with(a, b, &svc.reference(), flags)
        .expect("spawn ums migrate");
    let state = b.state().to_string_lossy().into_owned();
    let daemon = || {
        ums_tests::procfs::all_pids().into_iter().find(|&p| {
            let c = ums_tests::procfs::cmdline(p);
            c.iter().any(|a| a == "lazy-pages")
                && c.iter().any(|a| a.starts_with(&state) && a.contains(&id))
        })
    };
    let t0 = Instant::now();
    let mut killed = None;
    while !mig.finished() && t0.elapsed() < Duration::from_secs(120) {
        if let Some(p) = daemon() {
            // Some pages in, most not yet (1 GiB takes seconds).
            std::thread::sleep(Duration::from_millis(300));
            ums_tests::util::signal(p, libc::SIGKILL);
            killed = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = bed.finish_migrate(mig);
    let pid = killed.unwrap_or_else(|| {
        panic!(
            "B's lazy-pages daemon never showed up (ums migrate exit {}):\n{}",
            m.out.code, m.out
        )
    });
    say(format!(
        "post-copy pages lost: killed B's criu lazy-pages (pid {pid}) of {id}"
    ));
    let err = assert_refused(
        bed,
        &m,
        &[
            "phase restore",
            "page transfer failed",
            "runs on at the source",
        ],
        "B's lazy-pages daemon killed mid-transfer",
    );
    assert!(
        !err.contains("may be frozen"),
        "the source says the service may be frozen:\n{err}"
    );
    assert_memhog_survived(
        &svc,
        a,
        &sum,
        "memhog on A after the failed post-copy migration",
    );
    assert_nothing_left(
        bed,
        b,
        &id,
        false,
        "B after its lazy-pages daemon was killed",
    );
}

//! UMS where the user controls nothing (issue 6): the outer image (`outer-image/`) runs as an
//! ordinary privileged container (runtime io.containerd.runc.v2, host network of the system's
//! namespace, a state volume) in system a's containerd and in system b's; the counter runs
//! NESTED in the one on a (its own containerd + ums shim + CRIU); `ums migrate`, run inside the
//! outer container on a, moves it to the coordinator inside the one on b. Neither test-bed
//! containerd is asked for anything besides running its outer container.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ums_tests::ctr::Ctr;
use ums_tests::testbed::{Bed, Migration, System};
use ums_tests::{util, wait_for, Output};

use crate::common::*;

/// The image reference the test builds and imports.
const IMAGE: &str = "localhost/ums/outer:test";
/// The coordinators inside the outer containers (the test bed's own listen on 7400 of the same
/// namespaces).
const INNER_PORT: u16 = 7401;
/// The nested service.
const SERVICE: &str = "uou-counter";

/// The outer image tarball: `UMS_OUTER_IMAGE` (hack/test.sh builds it before the test-bed
/// tests), else built here with outer-image/build.sh from the binaries under test (stripped).
fn outer_image(bed: &Bed) -> PathBuf {
    if let Some(p) = std::env::var_os("UMS_OUTER_IMAGE").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "UMS_OUTER_IMAGE={} is not a file", p.display());
        return p;
    }
    let out = util::workspace_dir().join("target/outer-image-test.tar");
    let mut c = std::process::Command::new(util::workspace_dir().join("outer-image/build.sh"));
    c.arg("--bin-dir")
        .arg(&bed.bin_dir)
        .arg("--strip")
        .arg("--out")
        .arg(&out)
        .arg("--name")
        .arg(IMAGE);
    say("building the outer image (outer-image/build.sh; the Debian base is cached)");
    util::run(&mut c, None, Duration::from_secs(900)).expect_ok("outer-image/build.sh");
    out
}

/// The IP of system `sys` (its test-bed coordinator's, whatever its scheme).
fn system_ip(sys: &System) -> String {
    let host = sys.url.split("://").last().unwrap_or(&sys.url);
    host.split(':').next().unwrap_or(host).to_string()
}

/// The address of the coordinator inside the outer container on `sys` (plain HTTP: the outer
/// image's coordinator runs without TLS options).
fn inner_url(sys: &System) -> String {
    format!("http://{}:{INNER_PORT}", system_ip(sys))
}

/// `sys` as its inner coordinator names itself and is reached (for the report's checks).
fn inner_system(sys: &System) -> System {
    System {
        url: inner_url(sys),
        ..sys.clone()
    }
}

static EXEC_SEQ: AtomicU64 = AtomicU64::new(0);

/// One outer container on a test-bed system. Dropping it removes it (best effort) and its volume.
struct Outer<'a> {
    sys: &'a System,
    id: String,
    /// Mounted at /var/lib/ums (the state volume).
    volume: PathBuf,
    log: PathBuf,
}

impl<'a> Outer<'a> {
    /// `ctr run --privileged --net-host` of the outer image on `sys`, with the state volume, the
    /// test bed's images (/images) and peer token (/etc/ums/token) mounted and `env` added.
    #[track_caller]
    fn start(bed: &Bed, sys: &'a System, env: &[&str]) -> Outer<'a> {
        let id = format!("uou-outer-{}", sys.name);
        let ctr = sys.ctr();
        ctr.remove_best_effort(&id);
        let volume = bed.dir.join("outer").join(&sys.name);
        let _ = std::fs::remove_dir_all(&volume);
        std::fs::create_dir_all(&volume).expect("creating the outer's volume");
        let log = bed.dir.join("outer").join(format!("{}.log", sys.name));
        let _ = std::fs::remove_file(&log);
        let ip = system_ip(sys);
        let mount = |src: &Path, dst: &str, mode: &str| {
            format!(
                "type=bind,src={},dst={dst},options=rbind:{mode}",
                src.display()
            )
        };
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--privileged",
            "--net-host",
            // The inner runc and CRIU need the cgroup hierarchies (ctr mounts none by itself):
            // runc shows the outer's own cgroup there, so the nested ones go below it.
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=rw:nosuid:nodev:noexec",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--cgroup".into(),
            format!("{}/{id}", bed.cgroup_parent(sys)),
            "--mount".into(),
            mount(&volume, "/var/lib/ums", "rw"),
            "--mount".into(),
            mount(&bed.dir.join("images"), "/images", "ro"),
            "--mount".into(),
            mount(&bed.dir.join("token"), "/etc/ums/token", "ro"),
            "--env".into(),
            format!("UMS_NAME={}", sys.name),
            "--env".into(),
            format!("UMS_LISTEN={ip}:{INNER_PORT}"),
            "--env".into(),
            "UMS_PEER_TOKEN_FILE=/etc/ums/token".into(),
            "--log-uri".into(),
            format!("file://{}", log.display()),
        ]);
        for e in env {
            args.extend(["--env".into(), e.to_string()]);
        }
        args.extend([IMAGE.into(), id.clone()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ctr.cmd(&a)
            .expect_ok(&format!("ctr run of the outer image on {}", sys.name));
        let outer = Outer {
            sys,
            id,
            volume,
            log,
        };
        outer.wait_ready();
        outer
    }

    fn ctr(&self) -> Ctr {
        self.sys.ctr()
    }

    /// `ctr tasks exec` in the outer container.
    fn exec(&self, args: &[&str]) -> Output {
        let eid = format!("uou-x{}", EXEC_SEQ.fetch_add(1, Ordering::SeqCst));
        let mut a = vec!["tasks", "exec", "--exec-id", &eid, &self.id];
        a.extend_from_slice(args);
        self.ctr().cmd(&a)
    }

    /// The inner containerd's ctr (namespace default), run inside the outer container.
    fn inner_ctr(&self, args: &[&str]) -> Output {
        let mut a = vec!["ctr", "-n", NS];
        a.extend_from_slice(args);
        self.exec(&a)
    }

    /// The nested counter's /tmp/counter (None: no task, no number).
    fn counter(&self) -> Option<u64> {
        let eid = format!("uou-r{}", EXEC_SEQ.fetch_add(1, Ordering::SeqCst));
        let out = self.inner_ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            &eid,
            SERVICE,
            "cat",
            "/tmp/counter",
        ]);
        out.success()
            .then(|| out.stdout.trim().parse().ok())
            .flatten()
    }

    #[track_caller]
    fn wait_counter(&self, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        wait_for(timeout, Duration::from_millis(200), || {
            self.counter().filter(|&v| pred(v))
        })
        .unwrap_or_else(|| {
            panic!(
                "the nested counter in {} did not reach the expected value within {timeout:?} (last: {:?})\n{}",
                self.id,
                self.counter(),
                self.diag()
            )
        })
    }

    /// The inner containerd's container ids.
    fn inner_containers(&self) -> Vec<String> {
        let out = self.inner_ctr(&["containers", "ls", "-q"]);
        assert!(out.success(), "ctr c ls inside {}\n{out}", self.id);
        out.stdout.lines().map(str::to_string).collect()
    }

    /// The coordinator inside answers GET /healthz (busybox wget in the system's namespace).
    fn healthz(&self, bed: &Bed) -> Output {
        let url = format!("{}/healthz", inner_url(self.sys));
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={}", bed.netns(self.sys).display()))
            .args(["--", "busybox", "wget", "-q", "-O", "-", &url]);
        util::run(&mut c, None, Duration::from_secs(10))
    }

    #[track_caller]
    fn wait_ready(&self) {
        let ready = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
            util::read_lossy(&self.log)
                .contains("[ums-outer] ready")
                .then_some(())
        });
        if ready.is_none() {
            panic!(
                "the outer container {} did not get ready within 60 s\n{}",
                self.id,
                self.diag()
            );
        }
    }

    /// The outer container's task as its (test-bed) containerd sees it.
    fn task(&self) -> Option<ums_tests::ctr::TaskInfo> {
        self.ctr().task(&self.id)
    }

    /// The outer's log and the inner containerd's log tail, for failure messages.
    fn diag(&self) -> String {
        format!(
            "--- {} ---\n{}\n--- {} (tail) ---\n{}",
            self.log.display(),
            util::read_lossy(&self.log),
            self.volume.join("logs/containerd.log").display(),
            util::tail(&self.volume.join("logs/containerd.log"), 20)
        )
    }
}

impl Drop for Outer<'_> {
    fn drop(&mut self) {
        self.ctr().remove_best_effort(&self.id);
        let _ = std::fs::remove_dir_all(&self.volume);
    }
}

/// The row of container `id` in `ctr c ls` of `ctr`: (image, runtime).
fn container_row(ctr: &Ctr, id: &str) -> Option<(String, String)> {
    let out = ctr.cmd(&["containers", "ls"]);
    out.stdout.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == id).then(|| (f[1].to_string(), f[2].to_string()))
    })
}

/// Each test-bed containerd runs one ordinary runc container of the outer image, RUNNING
/// with the pid it started with, and knows nothing of the nested service.
#[track_caller]
fn assert_ordinary(o: &Outer, pid: i32, what: &str) {
    let t = o.task();
    assert!(
        matches!(&t, Some(t) if t.status == "RUNNING" && t.pid == pid),
        "{what}: the outer container {} on {} is {t:?}, not RUNNING with pid {pid}",
        o.id,
        o.sys.name
    );
    let ctr = o.ctr();
    assert_eq!(
        container_row(&ctr, &o.id),
        Some((IMAGE.to_string(), "io.containerd.runc.v2".to_string())),
        "{what}: {}'s containerd should list {} as an ordinary runc container of {IMAGE}",
        o.sys.name,
        o.id
    );
    let ours: Vec<String> = ctr
        .container_ids()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.starts_with("uou"))
        .collect();
    assert_eq!(
        ours,
        vec![o.id.clone()],
        "{what}: {}'s containerd should hold only the outer container (the service is nested)",
        o.sys.name
    );
}

/// SIGTERM to the outer container: it stops the nested tasks, the coordinator and containerd,
/// and exits 0.
#[track_caller]
fn stop_cleanly(o: &Outer) {
    let ctr = o.ctr();
    ctr.cmd(&["tasks", "kill", "-s", "SIGTERM", &o.id])
        .expect_ok("ctr t kill -s SIGTERM of the outer");
    ctr.wait_status(&o.id, "STOPPED", Duration::from_secs(60));
    let code = ctr.delete_task(&o.id);
    assert_eq!(
        code,
        0,
        "the outer container {} should exit 0 on SIGTERM\n{}",
        o.id,
        o.diag()
    );
    let log = util::read_lossy(&o.log);
    assert!(
        log.contains("[ums-outer] stopped"),
        "the outer container {}'s log does not show a complete stop\n{log}",
        o.id
    );
}

pub fn nested_counter_a_to_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let image = outer_image(bed);
    for sys in [a, b] {
        sys.ctr()
            .cmd_timeout(
                &["images", "import", &image.to_string_lossy()],
                Duration::from_secs(300),
            )
            .expect_ok(&format!(
                "ctr images import of the outer image on {}",
                sys.name
            ));
    }
    let counter_tar = "UMS_IMAGE=/images/counter.tar";
    let service = format!("UMS_SERVICE_ID={SERVICE}");
    let outer_a = Outer::start(bed, a, &[counter_tar, &service]);
    // b's outer only imports the image: the destination must have it.
    let outer_b = Outer::start(bed, b, &[counter_tar, "UMS_STANDBY=1"]);
    for o in [&outer_a, &outer_b] {
        let h = o.healthz(bed);
        assert!(
            h.success() && h.stdout.contains("\"status\""),
            "GET /healthz of the coordinator in {}\n{h}",
            o.id
        );
    }
    let pid_a = outer_a.task().map(|t| t.pid).unwrap_or(0);
    let pid_b = outer_b.task().map(|t| t.pid).unwrap_or(0);
    assert_ordinary(&outer_a, pid_a, "before the migration");
    assert_ordinary(&outer_b, pid_b, "before the migration");
    assert_eq!(outer_b.inner_containers(), Vec::<String>::new());

    // At 100 ms a count, 30 is 3 s: a counter restarted on b could not be past it so soon.
    let before = outer_a.wait_counter(Duration::from_secs(30), |v| v >= 30);
    let (from, to) = (inner_system(a), inner_system(b));
    let out = outer_a.exec(&[
        "ums",
        "migrate",
        "--from",
        &from.url,
        "--to",
        &to.url,
        &reference(SERVICE),
        "--json",
        "--token-file",
        "/etc/ums/token",
    ]);
    let m = Migration::of(out);
    if !m.ok() {
        panic!(
            "ums migrate inside the outer container on a failed\n{}\n{}\n{}",
            m.out,
            outer_a.diag(),
            outer_b.diag()
        );
    }
    check_migration(bed, &m, &from, &to, SERVICE, "nested counter (outer image)");

    let after = outer_b.wait_counter(Duration::from_secs(10), |v| v > before);
    let later = outer_b.wait_counter(Duration::from_secs(10), |v| v > after);
    say(format!(
        "outer image: the nested counter was at {before} in a's outer container, counts on in b's: {after}, {later}"
    ));
    assert_eq!(
        outer_a.inner_containers(),
        Vec::<String>::new(),
        "a's inner containerd still holds the service after the migration"
    );
    assert_eq!(outer_b.inner_containers(), vec![SERVICE.to_string()]);
    assert_ordinary(&outer_a, pid_a, "after the migration");
    assert_ordinary(&outer_b, pid_b, "after the migration");

    stop_cleanly(&outer_b);
    stop_cleanly(&outer_a);
    let log_b = util::read_lossy(&outer_b.log);
    assert!(
        log_b.contains(&format!("stopping task {NS}/{SERVICE}")),
        "b's outer container did not stop the migrated service at SIGTERM\n{log_b}"
    );
}

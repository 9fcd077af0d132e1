//! Migration of a nested service between two containerds through the shims' migration API
//! (proto/ums/v1/migration.proto), driven directly: source on containerd 1.6, destination on
//! 2.1 (a task created with the restore marker). The coordinator drives the same calls.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use ums_shim::api::{migration::*, migration_ttrpc::MigrationClient};
use ums_tests::{criu_check, leaks, util, wait_for, Containerd, Version};

use crate::common::*;

/// A shell counter whose state lives in its memory; /tmp/c shows the latest value.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c; sleep 0.05; done";
const NEEDLE: &str = "echo $i > /tmp/c";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The task's shim migration API; the connection lives in `rt`.
fn client(rt: &tokio::runtime::Runtime, c: &Containerd, id: &str) -> MigrationClient {
    let file = c
        .bundle_dir(c.namespace(), id)
        .join("ums/migration.address");
    let addr = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        std::fs::read_to_string(&file).ok()
    })
    .unwrap_or_else(|| panic!("{} never appeared", file.display()));
    let client = rt
        .block_on(ttrpc::asynchronous::Client::connect(addr.trim()))
        .unwrap_or_else(|e| panic!("connect to the migration API at {addr}: {e}"));
    MigrationClient::new(client)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(120))
}

fn counter_value(root: &Path) -> u64 {
    std::fs::read_to_string(root.join("tmp/c"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// On B: `ctr run -d` of a task created with the restore marker; ctr returns once the shim's
/// Start restored the service (it waits for the images).
fn start_destination(b: &Containerd, id: &str, mid: &str) -> Child {
    let ctr = b.ctr();
    let rootfs = b.rootfs(id);
    // A `--rootfs` container's files do not travel (no snapshot, no upper dir): the
    // destination needs the file the counter may hold open at the freeze (mid `echo > /tmp/c`),
    // or CRIU cannot reopen it there. A host that shares or copies the rootfs would have it.
    let c = rootfs.join("tmp/c");
    if !c.exists() {
        std::fs::write(&c, "").unwrap_or_else(|e| panic!("create {}: {e}", c.display()));
    }
    let rootfs = rootfs.to_string_lossy().into_owned();
    let log = format!("file://{}", ctr.log_file(id).display());
    let ann = format!("io.ums.restore={mid}");
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--log-uri".into(), log];
    args.extend(ctr.runtime_args());
    args.extend([
        "--annotation".into(),
        ann,
        "--rootfs".into(),
        rootfs,
        id.into(),
    ]);
    args.extend(["/bin/sh".into(), "-c".into(), COUNTER.into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = b.dir().join(format!("ctr-run-{id}.out"));
    ctr.spawn(&a, &out)
        .expect("spawn ctr run on the destination")
}

fn migrate_between_containerds(v: Version) {
    if let Err(e) = criu_check() {
        panic!("migration needs CRIU: {e}");
    }
    // The source runs on `v`, the destination on the other version.
    let other = match v {
        Version::V1_6 => Version::V2_1,
        Version::V2_1 => Version::V1_6,
    };
    let a = Containerd::start("mig-a", v);
    let b = Containerd::start("mig-b", other);
    let (ctr_a, ctr_b) = (a.ctr(), b.ctr());
    let svc = start_service(&a, &ctr_a, "web", COUNTER, NEEDLE);
    std::thread::sleep(Duration::from_millis(500));

    // 1. A wrong token: the destination refuses the stream, the source resumes.
    let mut dest = start_destination(&b, "web", "m1");
    ctr_b.wait_status("web", "CREATED", Duration::from_secs(30));
    let rt = rt();
    let (src, dst) = (client(&rt, &a, "web"), client(&rt, &b, "web"));
    let peer = rt
        .block_on(dst.prepare(
            ctx(),
            &PrepareRequest {
                id: "web".into(),
                migration_id: "m1".into(),
                listen: "127.0.0.1:0".into(),
                token: "right".into(),
                ..Default::default()
            },
        ))
        .expect("prepare on the destination")
        .address;
    let before = counter_value(&svc.rootfs);
    let err = rt
        .block_on(src.dump(
            ctx(),
            &DumpRequest {
                id: "web".into(),
                migration_id: "m1".into(),
                peer: peer.clone(),
                token: "wrong".into(),
                ..Default::default()
            },
        ))
        .expect_err("a dump with a wrong token must fail");
    assert!(
        format!("{err:?}").contains("token"),
        "error does not name the token: {err:?}"
    );
    assert!(
        wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            (counter_value(&svc.rootfs) > before + 5).then_some(())
        })
        .is_some(),
        "the source's service did not resume after the failed dump"
    );
    let status = dest.wait().expect("ctr run on the destination");
    assert!(
        !status.success(),
        "the destination's start must fail without images"
    );
    ctr_b.kill_and_remove("web");

    // 2. The real migration, and back: the counter goes on from where it was each time, so
    //    a restored service can be dumped again.
    let at_b = hop(&rt, (&a, &svc.rootfs), &b, "m2");
    let svc_b = nesting_service(&b, ctr_b.expect_task("web").pid, NEEDLE);
    let root_b = Path::new("/proc").join(svc_b.to_string()).join("root");
    let fp_a = leaks::footprint(&a, &ctr_a, "web");
    ctr_a.kill_and_remove("web");
    leaks::assert_instance_clean(&a, &[fp_a], &[], Duration::from_secs(15));
    let at_a = hop(&rt, (&b, &root_b), &a, "m3");
    assert!(
        at_a > at_b,
        "the counter went back: {at_b} at B, then {at_a} at A"
    );

    let fp_b = leaks::footprint(&b, &ctr_b, "web");
    ctr_b.kill_and_remove("web");
    let fp_a = leaks::footprint(&a, &ctr_a, "web");
    ctr_a.kill_and_remove("web");
    leaks::assert_instance_clean(&a, &[fp_a], &[], Duration::from_secs(15));
    leaks::assert_instance_clean(&b, &[fp_b], &[], Duration::from_secs(15));
}

/// Migrates task "web" from `from` (whose service sees `root`) to `to`: destination task with
/// the restore marker, Prepare, Dump, restore by containerd's Start, Commit. Checks that kill
/// is refused while migrating, the source task ends, and the counter goes on at the
/// destination from the source's value; returns that value.
fn hop(
    rt: &tokio::runtime::Runtime,
    (from, root): (&Containerd, &Path),
    to: &Containerd,
    mid: &str,
) -> u64 {
    let (ctr_from, ctr_to) = (from.ctr(), to.ctr());
    let src = client(rt, from, "web");
    let mut dest = start_destination(to, "web", mid);
    ctr_to.wait_status("web", "CREATED", Duration::from_secs(30));
    let dst = client(rt, to, "web");
    let token = format!("token-{mid}");
    let peer = rt
        .block_on(dst.prepare(
            ctx(),
            &PrepareRequest {
                id: "web".into(),
                migration_id: mid.into(),
                listen: "127.0.0.1:0".into(),
                token: token.clone(),
                ..Default::default()
            },
        ))
        .expect("prepare")
        .address;
    let dumped = rt
        .block_on(src.dump(
            ctx(),
            &DumpRequest {
                id: "web".into(),
                migration_id: mid.into(),
                peer,
                token,
                ..Default::default()
            },
        ))
        .unwrap_or_else(|e| panic!("dump {mid}: {e:?}"));
    assert!(
        dumped.bytes > 0 && dumped.files > 0,
        "nothing sent: {dumped:?}"
    );
    let frozen_at = counter_value(root);
    // Until the migration ends, containerd's kill of the source is refused.
    let refused = ctr_from.cmd(&["tasks", "kill", "-s", "SIGKILL", "web"]);
    assert!(
        refused.code != 0 && refused.stderr.contains("migrat"),
        "kill of a migrating task must be refused with a clear error: {refused}"
    );
    let status = dest.wait().expect("ctr run on the destination");
    assert!(
        status.success(),
        "the destination's start (restore) failed: {}",
        util::read_lossy(&to.dir().join("ctr-run-web.out"))
    );
    let task = ctr_to.wait_status("web", "RUNNING", Duration::from_secs(30));
    rt.block_on(src.commit(
        ctx(),
        &MigrationRef {
            id: "web".into(),
            migration_id: mid.into(),
            ..Default::default()
        },
    ))
    .expect("commit on the source");
    ctr_from.wait_status("web", "STOPPED", Duration::from_secs(20));

    // The service is nested in the destination's outer and counts on from the source's value
    // (its memory came along).
    let svc = nesting_service(to, task.pid, NEEDLE);
    let root_to = Path::new("/proc").join(svc.to_string()).join("root");
    let resumed = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let n = counter_value(&root_to);
        (n > frozen_at).then_some(n)
    })
    .unwrap_or_else(|| panic!("{mid}: the counter did not go on from {frozen_at}"));
    assert!(
        resumed < frozen_at + 1000,
        "{mid}: the counter ({resumed}) did not continue from the source's ({frozen_at})"
    );
    resumed
}

fn nesting_service(c: &Containerd, outer: i32, needle: &str) -> i32 {
    ums_tests::nesting::find_service(outer, needle, Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "no restored service below the outer {outer} on {}",
            c.name()
        )
    })
}

both_versions!(migrate_between_containerds);

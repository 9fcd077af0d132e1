//! Bad input: each is a clear non-zero error from ctr, and nothing is left behind.

use std::time::Duration;

use serde_json::Value;
use ums_tests::{leaks, procfs, Containerd, Output, Version};

use crate::common::*;

/// A failed command: non-zero, and ctr said something (not a silent exit status).
#[track_caller]
fn expect_clear_error(out: Output, what: &str) -> Output {
    let out = out.expect_err(what);
    assert!(
        !out.stderr.trim().is_empty() || !out.stdout.trim().is_empty(),
        "{what}: no error message\n{out}"
    );
    out
}

/// Removes what a failed `ctr run` may leave in containerd's metadata (ctr keeps the container
/// record when the task fails without --rm), then checks nothing else of it exists.
#[track_caller]
fn clean_failed(c: &Containerd, id: &str) {
    let ctr = c.ctr();
    if ctr.task(id).is_some() {
        ctr.cmd(&["tasks", "delete", "--force", id]);
    }
    ctr.cmd(&["containers", "delete", id]);
    assert!(
        ctr.task(id).is_none(),
        "task {id} still listed after its failure"
    );
    let bundle = c.bundle_dir(ctr.namespace(), id);
    assert!(
        !bundle.exists(),
        "bundle {} left after a failed create",
        bundle.display()
    );
}

/// `ctr oci spec` (the default spec of this ctr) with our rootfs and args.
fn spec(c: &Containerd, rootfs: &std::path::Path, args: &[&str]) -> Value {
    let out = c.ctr().cmd(&["oci", "spec"]).expect_ok("ctr oci spec");
    let mut s: Value = serde_json::from_str(&out.stdout).expect("ctr oci spec prints JSON");
    s["root"] = serde_json::json!({ "path": rootfs.to_string_lossy(), "readonly": false });
    s["process"]["args"] = serde_json::json!(args);
    s["process"]["terminal"] = Value::Bool(false);
    let cg = format!("{}/{}", c.cgroup_root(), "cfg");
    s["linux"]["cgroupsPath"] = Value::String(cg);
    s
}

fn run_with_config(c: &Containerd, id: &str, config: &std::path::Path) -> Output {
    let ctr = c.ctr();
    let log = format!("file://{}", ctr.log_file(id).display());
    let cfg = config.to_string_lossy().into_owned();
    let rt = ctr.runtime_args();
    let mut a: Vec<&str> = vec!["run", "-d", "--log-uri", &log];
    a.extend(rt.iter().map(String::as_str));
    a.extend_from_slice(&["--config", &cfg, id]);
    ctr.cmd(&a)
}

fn bad_input(v: Version) {
    let c = Containerd::start("badinput", v);
    let ctr = c.ctr();
    let rootfs = c.rootfs("good");

    // 1. Missing rootfs dir.
    let missing = c.dir().join("no-such-rootfs");
    let out = ctr.run_detached("b1", &missing, &["/bin/sh", "-c", "sleep 100"]);
    expect_clear_error(out, "ctr run with a missing rootfs dir");
    clean_failed(&c, "b1");

    // 2. The spec names a binary that does not exist.
    let out = ctr.run_detached("b2", &rootfs, &["/bin/no-such-binary"]);
    expect_clear_error(out, "ctr run of a missing binary");
    clean_failed(&c, "b2");

    // 3. Broken JSON as --config (ctr rejects it before containerd).
    let broken = c.dir().join("broken.json");
    std::fs::write(&broken, "{ \"ociVersion\": \"1.0.2\", \"process\": ").unwrap();
    expect_clear_error(
        run_with_config(&c, "b3", &broken),
        "ctr run --config with broken JSON",
    );
    clean_failed(&c, "b3");

    // 4. A well-formed spec with an invalid field (unknown namespace type) reaches the runtime.
    let mut s = spec(&c, &rootfs, &["/bin/sleep", "100"]);
    s["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(serde_json::json!({ "type": "bogus" }));
    let bad = c.dir().join("bad-field.json");
    std::fs::write(&bad, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    expect_clear_error(
        run_with_config(&c, "b4", &bad),
        "ctr run --config with an unknown namespace type",
    );
    clean_failed(&c, "b4");

    // 5. The same spec without the bad field runs: the harness's spec is fine otherwise.
    let good = c.dir().join("good.json");
    let s = spec(&c, &rootfs, &["/bin/sh", "-c", LOOP]);
    std::fs::write(&good, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    run_with_config(&c, "g1", &good).expect_ok("ctr run --config with a valid spec");
    ctr.wait_status("g1", "RUNNING", Duration::from_secs(30));
    let fp_g1 = leaks::footprint(&c, &ctr, "g1");
    ctr.kill_and_remove("g1");

    // With a running task: unknown exec id, unknown task, double start.
    let svc = start_loop(&c, &ctr, "c1");
    expect_clear_error(
        ctr.cmd(&["tasks", "kill", "--exec-id", "nope", "c1"]),
        "kill of an unknown exec id",
    );
    expect_clear_error(
        ctr.cmd(&["tasks", "kill", "nope"]),
        "kill of an unknown task",
    );
    expect_clear_error(
        ctr.cmd(&["tasks", "start", "c1"]),
        "second start of a running task",
    );
    expect_clear_error(
        ctr.cmd(&["tasks", "pause", "nope"]),
        "pause of an unknown task",
    );
    expect_clear_error(
        ctr.cmd(&["tasks", "delete", "c1"]),
        "delete of a running task without --force",
    );
    let task = ctr.expect_task("c1");
    assert_eq!(
        (task.status.as_str(), task.pid),
        ("RUNNING", svc.outer),
        "the task changed after bad requests"
    );
    assert!(
        procfs::alive(svc.service),
        "the service died after bad requests"
    );
    assert_growing(&svc, "after bad requests");
    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.kill_and_remove("c1");

    leaks::assert_instance_clean(&c, &[fp_g1, fp], &[], Duration::from_secs(15));
}

both_versions!(bad_input);

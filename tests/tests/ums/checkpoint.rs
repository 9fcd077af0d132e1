//! Checkpoint of the running service with leave-running semantics: CRIU dumps the service (never
//! the outer), the outer and the service keep running, and the checkpoint lands in an image.

use std::time::Duration;

use ums_tests::procfs::ProcId;
use ums_tests::{criu_check, leaks, procfs, Containerd, Version};

use crate::common::*;

fn checkpoint_leave_running(v: Version) {
    if let Err(e) = criu_check() {
        panic!("checkpoint needs a working CRIU: {e}");
    }
    let c = Containerd::start("ckpt", v);
    let ctr = c.ctr();
    let svc = start_loop(&c, &ctr, "c1");
    assert_growing(&svc, "before checkpoint");
    let outer_id = ProcId::of(svc.outer).unwrap();
    let service_id = ProcId::of(svc.service).unwrap();

    let out = ctr
        .cmd_timeout(&["tasks", "checkpoint", "c1"], Duration::from_secs(120))
        .expect_ok("ctr t checkpoint");
    let name = out
        .stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string();
    assert!(
        !name.is_empty(),
        "ctr t checkpoint printed no image name:\n{out}"
    );
    let images = ctr.cmd(&["images", "ls", "-q"]).expect_ok("ctr images ls");
    assert!(
        images.stdout.lines().any(|l| l.trim() == name),
        "checkpoint image {name} not listed:\n{images}"
    );

    assert_criu_checkpoint(&c, &name);

    let task = ctr.expect_task("c1");
    assert_eq!(
        task.status, "RUNNING",
        "task after a leave-running checkpoint"
    );
    assert_eq!(task.pid, svc.outer, "task pid changed by the checkpoint");
    assert!(
        outer_id.alive(),
        "the outer {} did not survive the checkpoint",
        svc.outer
    );
    assert!(
        service_id.alive(),
        "the service {} is not the same process after the checkpoint",
        svc.service
    );
    assert_growing(&svc, "after checkpoint");
    assert_nested_if_ums(&c, &svc);

    // A second checkpoint of the same task works too. (ctr names checkpoints by the second, and
    // ctr 1.6 fails on blobs identical to those of an existing checkpoint: drop the first.)
    ctr.cmd(&["images", "rm", "--sync", &name])
        .expect_ok("ctr images rm of the first checkpoint");
    std::thread::sleep(Duration::from_millis(1100));
    ctr.cmd_timeout(&["tasks", "checkpoint", "c1"], Duration::from_secs(120))
        .expect_ok("second ctr t checkpoint");
    assert!(procfs::alive(svc.service));
    assert_growing(&svc, "after the second checkpoint");

    let fp = leaks::footprint(&c, &ctr, "c1");
    ctr.kill_and_remove("c1");
    leaks::assert_instance_clean(&c, &[fp], &[], Duration::from_secs(15));
}

/// The checkpoint image holds a CRIU image tarball (inventory and memory pages).
#[track_caller]
fn assert_criu_checkpoint(c: &Containerd, name: &str) {
    let ctr = c.ctr();
    let digest = ctr
        .image_digest(name)
        .unwrap_or_else(|| panic!("no digest for checkpoint image {name}"));
    let idx_file = c.dir().join("ckpt-index.json");
    ctr.content_to_file(&digest, &idx_file)
        .expect_ok("ctr content get (checkpoint index)");
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_file).unwrap()).expect("index JSON");
    let manifests = idx["manifests"].as_array().cloned().unwrap_or_default();
    let criu = manifests
        .iter()
        .find(|m| {
            m["mediaType"]
                .as_str()
                .unwrap_or("")
                .contains("criu.checkpoint")
        })
        .unwrap_or_else(|| panic!("checkpoint {name} has no CRIU checkpoint layer: {idx}"));
    let criu_digest = criu["digest"].as_str().unwrap().to_string();
    let tar_file = c.dir().join("ckpt-criu.tar");
    ctr.content_to_file(&criu_digest, &tar_file)
        .expect_ok("ctr content get (CRIU tar)");
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&tar_file).unwrap());
    for e in ar.entries().expect("CRIU checkpoint is a tar") {
        let e = e.expect("tar entry");
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    let has = |pat: &str| {
        names
            .iter()
            .any(|n| n.trim_start_matches("./").starts_with(pat))
    };
    assert!(
        has("inventory.img") && has("pages-") && has("pstree.img"),
        "the CRIU checkpoint lacks inventory/pages/pstree images: {names:?}"
    );
}

both_versions!(checkpoint_leave_running);

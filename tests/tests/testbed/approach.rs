//! Approach detection and the orchestrator-level approach (issue 5): `ums migrate --dry-run`
//! names the approach and why the others cannot move a container; the same counter service
//! migrates a->b with the container-level approach (ums runtime) and the orchestrator-level one
//! (containerd's runc runtime, native checkpoint/restore); a forced infeasible approach is
//! refused before anything is touched; a failed native restore on B rolls back.

use std::time::Duration;

use serde_json::Value;
use ums_tests::containerd::Runtime;
use ums_tests::ctr::Ctr;
use ums_tests::testbed::{Bed, Migration, System, BUSYBOX_IMAGE, COUNTER_IMAGE};

use crate::common::*;
use crate::failures::Tag;

const RUNC_V2: &str = "io.containerd.runc.v2";
const RUNC_V1: &str = "io.containerd.runc.v1";

/// ctr of `sys` with containerd's runc runtime (`--runc-root` in the system's dir).
fn runc_ctr(sys: &System) -> Ctr {
    Ctr::new(
        sys.version.ctr_bin(),
        sys.socket(),
        NS.into(),
        Runtime::Runc,
        sys.dir.clone(),
    )
}

/// `ctr run -d` of `image` as `id` on `sys` with runtime `runtime` (`io.containerd.runc.v2`
/// gets its runc root in the system's dir), waited for RUNNING. Removed from both systems when
/// dropped.
#[track_caller]
fn start_on<'a>(
    bed: &'a Bed,
    sys: &System,
    runtime: &str,
    id: &str,
    image: &str,
    args: &[&str],
) -> Svc<'a> {
    let svc = Svc { bed, id: id.into() };
    bed.a.ctr().remove_best_effort(id);
    bed.b.ctr().remove_best_effort(id);
    let out = if runtime == RUNC_V2 {
        runc_ctr(sys).run_image_detached(id, image, &[], args)
    } else {
        let ctr = sys.ctr();
        let log = format!("file://{}", ctr.log_file(id).display());
        let mut a = vec![
            "run",
            "-d",
            "--log-uri",
            &log,
            "--runtime",
            runtime,
            image,
            id,
        ];
        a.extend_from_slice(args);
        ctr.cmd(&a)
    };
    out.expect_ok(&format!(
        "ctr run --runtime {runtime} {image} {id} on system {}",
        sys.name
    ));
    sys.ctr()
        .wait_status(id, "RUNNING", Duration::from_secs(30));
    svc
}

/// The container's runtime as `ctr containers ls` on `sys` shows it.
fn runtime_on(sys: &System, id: &str) -> Option<String> {
    let out = sys.ctr().cmd(&["containers", "ls"]);
    out.stdout.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == id).then(|| f[2].to_string())
    })
}

/// `ums migrate --dry-run --json [EXTRA]` of `svc` a->b: the survey it printed.
#[track_caller]
fn dry_run(bed: &Bed, svc: &Svc, extra: &[&str], feasible: bool) -> Value {
    let mut args = vec!["--dry-run"];
    args.extend_from_slice(extra);
    let m = bed.migrate_with(&bed.a, &bed.b, &svc.reference(), &args);
    let Some(v) = m.report.clone() else {
        panic!("the dry run of {} printed no JSON\n{}", svc.id, m.out);
    };
    assert_eq!(
        m.out.success(),
        feasible,
        "the dry run of {} should exit {} (feasible: {feasible})\n{}",
        svc.id,
        if feasible { "0" } else { "non-zero" },
        m.out
    );
    assert_eq!(v["feasible"], feasible, "dry run of {}: {v}", svc.id);
    assert_eq!(v["ref"], svc.reference().as_str(), "{v}");
    v
}

/// The reasons one approach of a survey is not feasible, joined.
fn reasons(survey: &Value, approach: &str) -> String {
    survey["approaches"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["approach"] == approach))
        .map(|x| {
            assert_eq!(
                x["feasible"], false,
                "{approach} should not be feasible: {x}"
            );
            x["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default()
        })
        .unwrap_or_else(|| panic!("no {approach} in the survey: {survey}"))
}

#[track_caller]
fn assert_contains(hay: &str, needle: &str, what: &str) {
    assert!(
        hay.contains(needle),
        "{what}: {needle:?} not in the reasons: {hay}"
    );
}

/// Dry runs: a ums container is container-level, a runc container orchestrator-level, a runc v1
/// container neither (each with the reasons); a forced infeasible approach is reported as
/// such. Nothing is touched: the services run on at A, B holds nothing.
pub fn dry_runs(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let ums = start_on(
        bed,
        a,
        "io.containerd.ums.v1",
        "uap-dry-ums",
        COUNTER_IMAGE,
        &[],
    );
    let runc = start_on(bed, a, RUNC_V2, "uap-dry-runc", COUNTER_IMAGE, &[]);
    let v1 = start_on(bed, a, RUNC_V1, "uap-dry-v1", COUNTER_IMAGE, &[]);

    let s = dry_run(bed, &ums, &[], true);
    assert_eq!(s["approach"], "container-level", "{s}");
    assert_contains(
        &reasons(&s, "orchestrator-level"),
        "not on containerd's runc runtime",
        "ums container, orchestrator-level",
    );
    assert_contains(
        &reasons(&s, "service-level"),
        "migratable image",
        "ums container, service-level",
    );
    for caps in ["source_capabilities", "destination_capabilities"] {
        assert!(
            s[caps]["criu"].is_string() && s[caps]["runc"].is_string(),
            "{caps}: CRIU and runc should be reported: {s}"
        );
        let rts = s[caps]["runtimes"].to_string();
        assert!(
            rts.contains("io.containerd.ums.v1") && rts.contains(RUNC_V2),
            "{caps}: runtimes {rts}"
        );
    }

    let s = dry_run(bed, &runc, &[], true);
    assert_eq!(s["approach"], "orchestrator-level", "{s}");
    assert_eq!(s["runtime"], RUNC_V2, "{s}");
    assert_contains(
        &reasons(&s, "container-level"),
        "not on the ums runtime",
        "runc container, container-level",
    );

    let s = dry_run(bed, &v1, &[], false);
    assert!(s["approach"].is_null(), "{s}");
    let reason = s["reason"].as_str().unwrap_or_default();
    assert_contains(reason, "no approach can migrate", "runc v1 container");
    assert_contains(
        &reasons(&s, "container-level"),
        RUNC_V1,
        "runc v1 container, container-level",
    );
    assert_contains(
        &reasons(&s, "orchestrator-level"),
        "not on containerd's runc runtime",
        "runc v1 container, orchestrator-level",
    );

    // Forced: the orchestrator-level approach for the ums container.
    let s = dry_run(bed, &ums, &["--approach", "orchestrator"], false);
    assert_eq!(s["forced"], "orchestrator-level", "{s}");
    assert_contains(
        s["reason"].as_str().unwrap_or_default(),
        "orchestrator-level approach (--approach) cannot migrate",
        "forced orchestrator-level",
    );
    // The human form names the chosen approach.
    let text = bed.ums(
        a,
        &[
            "migrate",
            "--from",
            &a.url,
            "--to",
            &b.url,
            &runc.reference(),
            "--dry-run",
        ],
        Duration::from_secs(60),
    );
    assert!(
        text.success()
            && text
                .stdout
                .contains("orchestrator-level  feasible (chosen)"),
        "ums migrate --dry-run (text):\n{text}"
    );
    say(format!("dry run of {} (text):\n{}", runc.id, text.stdout));

    for svc in [&ums, &runc, &v1] {
        svc.assert_running(a, "after the dry runs");
        assert_nothing_left(bed, b, &svc.id, false, "B after the dry runs");
    }
}

/// The counter migrates a->b with each approach (forced with --approach) and counts on at B from
/// where it was; A holds nothing of it; B's containerd lists it with the source's runtime.
pub fn both_approaches(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    for (approach, runtime, id) in [
        ("container", "io.containerd.ums.v1", "uap-both-ums"),
        ("orchestrator", RUNC_V2, "uap-both-runc"),
    ] {
        let svc = start_on(bed, a, runtime, id, COUNTER_IMAGE, &[]);
        // At 100 ms a count, 30 is 3 s: a counter restarted on B could not be past it.
        let before = svc.wait_u64(a, "/tmp/counter", Duration::from_secs(20), |v| v >= 30);
        let m = bed.migrate_with(a, b, &svc.reference(), &["--approach", approach]);
        let label = format!("counter, {approach}-level");
        let f = check_migration(bed, &m, a, b, id, &label);
        assert_eq!(f.approach, format!("{approach}-level"), "{label}");
        assert_nothing_left(bed, a, id, true, &format!("A after the {label} migration"));
        assert_eq!(
            runtime_on(b, id).as_deref(),
            Some(runtime),
            "{label}: B's runtime of {id}"
        );
        svc.assert_counts_on(b, "/tmp/counter", before, &label);
    }
}

/// `--approach orchestrator` for a ums container: refused before anything is touched (the
/// service runs on at A, unfrozen, B holds nothing).
pub fn forced_infeasible_refused(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = start_on(
        bed,
        a,
        "io.containerd.ums.v1",
        "uap-forced",
        COUNTER_IMAGE,
        &[],
    );
    let before = svc.wait_u64(a, "/tmp/counter", Duration::from_secs(20), |v| v >= 5);
    let m: Migration = bed.migrate_with(a, b, &svc.reference(), &["--approach", "orchestrator"]);
    assert_refused(
        bed,
        &m,
        &[
            "orchestrator-level approach (--approach) cannot migrate",
            "not on containerd's runc runtime",
        ],
        "forced orchestrator-level for a ums container",
    );
    assert!(
        !m.out.stderr.contains("] checkpoint"),
        "the refused migration reached the checkpoint:\n{}",
        m.out
    );
    svc.assert_counts_on(a, "/tmp/counter", before, "after the refused migration");
    assert_nothing_left(bed, b, &svc.id, false, "B after the refused migration");
}

/// An orchestrator-level migration whose native restore fails on B (the image has the same
/// name on both systems but other content: B's lacks /usr/local/bin/counter, which the service
/// holds open): A's task, frozen through the checkpoint, is resumed with its state; B removes
/// everything it made.
pub fn orchestrator_rollback(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let image = "localhost/ums/uap-skew:1";
    let _ta = Tag::new(a, COUNTER_IMAGE, image);
    let _tb = Tag::new(b, BUSYBOX_IMAGE, image);
    let script = format!("exec 3</usr/local/bin/counter; {SH_COUNTER}");
    let svc = start_on(
        bed,
        a,
        RUNC_V2,
        "uap-rollback",
        image,
        &["/bin/sh", "-c", &script],
    );
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 10);
    let m = bed.migrate_with(a, b, &svc.reference(), &["--approach", "orchestrator"]);
    assert_refused(
        bed,
        &m,
        &[
            "phase restore",
            "restore",
            "runs on at the source (resumed)",
        ],
        "native restore failure on B",
    );
    svc.assert_counts_on(a, "/tmp/c", before, "A after the failed native restore");
    assert_eq!(
        svc.sh(a, "readlink /proc/1/fd/3").trim(),
        "/usr/local/bin/counter",
        "the service's open file after the rollback"
    );
    assert_nothing_left(bed, b, &svc.id, false, "B after the failed native restore");
}

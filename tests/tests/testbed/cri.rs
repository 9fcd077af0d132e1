//! CRI on both systems (issue 5, "heterogeneous control planes"): a container started through
//! CRI on A (containerd 1.6, pod with handler `ums`, a pid namespace of its own) migrates into
//! a pod that B's coordinator creates through B's CRI (containerd 2.1), as kubelet would, and
//! back; each orchestrator then sees its pod and a RUNNING container, the other holds nothing.
//! A failure (image missing on B, CRIU restore failing on B) leaves the service on A and B's
//! CRI as it was.

use std::time::{Duration, Instant};

use k8s_cri::v1::ContainerState;
use serde_json::Value;
use ums_tests::testbed::{Bed, Migration, System, BUSYBOX_IMAGE, COUNTER_IMAGE};
use ums_tests::wait_for;

use crate::common::*;
use crate::scenarios::CriCounter;

/// Pods a migration created: removed through CRI when dropped, whatever the test's outcome.
struct Pods<'a>(Vec<(&'a System, String)>);

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        for (sys, id) in &self.0 {
            if let Ok(mut c) = sys.cri() {
                let _ = c.stop_pod(id);
                let _ = c.remove_pod(id);
            }
        }
    }
}

/// An image name tagged in `k8s.io` of a system for one test; untagged when dropped.
struct K8sTag<'a> {
    sys: &'a System,
    name: String,
}

impl<'a> K8sTag<'a> {
    #[track_caller]
    fn new(sys: &'a System, source: &str, name: &str) -> K8sTag<'a> {
        sys.ctr_k8s()
            .cmd(&["images", "tag", "--force", source, name])
            .expect_ok(&format!(
                "ctr -n k8s.io images tag {source} {name} on {}",
                sys.name
            ));
        K8sTag {
            sys,
            name: name.into(),
        }
    }
}

impl Drop for K8sTag<'_> {
    fn drop(&mut self) {
        self.sys
            .ctr_k8s()
            .cmd_timeout(&["images", "rm", &self.name], Duration::from_secs(20));
    }
}

/// The counter of CRI container `cid` on `sys`.
fn counter(sys: &System, cid: &str) -> Option<u64> {
    let out = sys.ctr_k8s().exec(cid, &["cat", "/tmp/counter"]);
    out.success()
        .then(|| out.stdout.trim().parse().ok())
        .flatten()
}

#[track_caller]
fn wait_counter(bed: &Bed, sys: &System, cid: &str, what: &str, pred: impl Fn(u64) -> bool) -> u64 {
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        counter(sys, cid).filter(|&v| pred(v))
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: the counter of {cid} on system {} (last read {:?}){}",
            sys.name,
            counter(sys, cid),
            diag(bed)
        )
    })
}

/// The pods and containers `sys`'s CRI lists.
#[track_caller]
fn cri_list(sys: &System) -> (Vec<String>, Vec<String>) {
    sys.cri()
        .and_then(|mut c| c.list())
        .unwrap_or_else(|e| panic!("CRI list on {}: {e}", sys.name))
}

/// `sys`'s CRI sees pod `pod` and its container `cid` RUNNING.
#[track_caller]
fn assert_cri_running(sys: &System, pod: &str, cid: &str, what: &str) {
    let (pods, ctrs) = cri_list(sys);
    assert!(
        pods.iter().any(|p| p == pod),
        "{what}: {}'s CRI does not list pod {pod}: {pods:?}",
        sys.name
    );
    assert!(
        ctrs.iter().any(|c| c == cid),
        "{what}: {}'s CRI does not list container {cid}: {ctrs:?}",
        sys.name
    );
    let (state, pid, st) = sys
        .cri()
        .and_then(|mut c| c.container_status(cid))
        .unwrap_or_else(|e| panic!("{what}: ContainerStatus {cid} on {}: {e}", sys.name));
    assert_eq!(
        state,
        ContainerState::ContainerRunning,
        "{what}: CRI state of {cid} on {}: {st:?}",
        sys.name
    );
    assert!(pid.is_some(), "{what}: CRI knows no pid of {cid}");
}

/// `sys` holds nothing of CRI pod `pod` and container `cid`: neither CRI nor containerd lists
/// them, no task, snapshot, bundle or shim is left.
#[track_caller]
fn assert_cri_gone(bed: &Bed, sys: &System, pod: &str, cid: &str, what: &str) {
    let mut left = Vec::new();
    let gone = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        let (pods, ctrs) = cri_list(sys);
        left = bed.leftovers(sys, "k8s.io", cid, false);
        left.extend(bed.leftovers(sys, "k8s.io", pod, false));
        if pods.iter().any(|p| p == pod) {
            left.push(format!("CRI pod {pod}"));
        }
        if ctrs.iter().any(|c| c == cid) {
            left.push(format!("CRI container {cid}"));
        }
        left.is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "{what}: {} still holds:\n  {}{}",
        sys.name,
        left.join("\n  "),
        diag(bed)
    );
}

/// A successful migration of CRI container `cid`: its sane report.
#[track_caller]
fn report_of<'m>(bed: &Bed, m: &'m Migration, from: &System, to: &System, cid: &str) -> &'m Value {
    let reference = format!("k8s.io/{cid}");
    let Some(report) = m.report.as_ref().filter(|_| m.out.success()) else {
        panic!(
            "ums migrate {reference} {}->{} failed\n{}{}",
            from.name,
            to.name,
            m.out,
            diag(bed)
        );
    };
    let bad = report_problems(report, &reference, from, to);
    assert!(
        bad.is_empty(),
        "the --json report is not sane:\n  {}\nreport: {report}",
        bad.join("\n  ")
    );
    report
}

/// Where the report says the container went through CRI: (pod sandbox id, container id).
#[track_caller]
fn cri_location(report: &Value, pod_ns: &str, pod_name: &str) -> (String, String) {
    let loc = &report["location"];
    assert_eq!(loc["interface"], "cri", "location: {report}");
    assert_eq!(loc["pod"]["namespace"], pod_ns, "location: {report}");
    assert_eq!(loc["pod"]["name"], pod_name, "location: {report}");
    let pod = loc["pod"]["sandbox_id"].as_str().unwrap_or_default();
    let cid = loc["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("k8s.io/"))
        .unwrap_or_default();
    assert!(!pod.is_empty() && !cid.is_empty(), "location: {report}");
    (pod.to_string(), cid.to_string())
}

/// `ums migrate k8s.io/<cid> [extra]` from `from` to `to`, which must go through CRI into pod
/// `ums-test/<pod_name>` and leave that pod and container RUNNING to `to`'s CRI (the pod is
/// added to `pods`): (pod sandbox id, container id) at `to`.
#[track_caller]
fn migrate_into_pod<'b>(
    bed: &'b Bed,
    from: &System,
    to: &'b System,
    cid: &str,
    extra: &[&str],
    pod_name: &str,
    pods: &mut Pods<'b>,
) -> (String, String) {
    let m = bed.migrate_with(from, to, &format!("k8s.io/{cid}"), extra);
    let report = report_of(bed, &m, from, to, cid);
    let (pod, new_cid) = cri_location(report, "ums-test", pod_name);
    pods.0.push((to, pod.clone()));
    say(format!(
        "cri->cri ({}->{}): {}",
        from.name,
        to.name,
        figures(report).line()
    ));
    assert!(
        report["notes"]
            .to_string()
            .contains(&format!("pod ums-test/{pod_name}")),
        "the report should say where the container went: {report}"
    );
    assert_cri_running(
        to,
        &pod,
        &new_cid,
        &format!("on {} after the migration", to.name),
    );
    (pod, new_cid)
}

/// A -> B -> A, CRI -> CRI: by default a CRI container goes into a pod created through the
/// destination's CRI (here renamed with --pod-name on the way to B); the counter goes on from
/// where it was each time; the source's CRI and containerd hold nothing afterwards.
pub fn cri_to_cri_and_back(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = CriCounter::start(bed, a, "ucr-web");
    let (pod_a, cid_a) = (svc.pod.clone(), svc.cid.clone());
    let mut pods = Pods(Vec::new());
    let before = wait_counter(bed, a, &cid_a, "on A", |v| v >= 20);

    let t0 = Instant::now();
    let (pod_b, cid_b) = migrate_into_pod(
        bed,
        a,
        b,
        &cid_a,
        &["--pod-name", "ucr-web-b"],
        "ucr-web-b",
        &mut pods,
    );
    let after = wait_counter(bed, b, &cid_b, "on B", |v| v > before);
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    assert!(
        after <= before + elapsed_ms / 100 + 5,
        "the counter on B ({after}) is further than {elapsed_ms} ms of counting from {before}: restarted?"
    );
    assert_cri_gone(bed, a, &pod_a, &cid_a, "A after a->b");

    let t0 = Instant::now();
    let after = counter(b, &cid_b).unwrap_or(after);
    let (pod_a2, cid_a2) = migrate_into_pod(bed, b, a, &cid_b, &[], "ucr-web-b", &mut pods);
    let back = wait_counter(bed, a, &cid_a2, "back on A", |v| v > after);
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    assert!(
        back <= after + elapsed_ms / 100 + 5,
        "the counter back on A ({back}) is further than {elapsed_ms} ms of counting from {after}: restarted?"
    );
    assert_cri_gone(bed, b, &pod_b, &cid_b, "B after b->a");
    say(format!(
        "cri->cri: {before} on A, {after} on B (pod {pod_b}), {back} back on A (pod {pod_a2})"
    ));
}

/// A migration that fails on B: B's CRI lists the same pods and containers as before (what
/// the migration created there was removed through CRI), the service counts on at A, RUNNING
/// to A's CRI.
#[track_caller]
fn assert_cri_failure_clean(
    bed: &Bed,
    svc: &CriCounter,
    before_b: &(Vec<String>, Vec<String>),
    before: u64,
    what: &str,
) {
    let (a, b) = (&bed.a, &bed.b);
    let mut now = cri_list(b);
    let clean = wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        now = cri_list(b);
        (now == *before_b).then_some(())
    });
    assert!(
        clean.is_some(),
        "{what}: B's CRI lists {now:?}, before the migration {before_b:?}{}",
        diag(bed)
    );
    assert_cri_running(a, &svc.pod, &svc.cid, what);
    wait_counter(bed, a, &svc.cid, what, |v| v > before);
}

/// The image exists on A only: B refuses before creating anything (412, naming the image).
pub fn cri_image_not_on_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let image = "localhost/ucr/only-a:1";
    let _tag = K8sTag::new(a, COUNTER_IMAGE, image);
    let svc = CriCounter::start_image(bed, a, "ucr-onlya", image);
    let before = wait_counter(bed, a, &svc.cid, "on A", |v| v >= 10);
    let before_b = cri_list(b);
    let m = bed.migrate(a, b, &format!("k8s.io/{}", svc.cid));
    assert_refused(
        bed,
        &m,
        &[image, "not present on system b"],
        "cri: image only on A",
    );
    assert_cri_failure_clean(bed, &svc, &before_b, before, "cri: image only on A");
}

/// CRIU fails to restore on B (B's image of the same name lacks the counter's executable):
/// the pod and container B created through CRI are removed again, A resumes the service.
pub fn cri_restore_fails_on_b(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let image = "localhost/ucr/skew:1";
    let _ta = K8sTag::new(a, COUNTER_IMAGE, image);
    let _tb = K8sTag::new(b, BUSYBOX_IMAGE, image);
    let svc = CriCounter::start_image(bed, a, "ucr-skew", image);
    let before = wait_counter(bed, a, &svc.cid, "on A", |v| v >= 10);
    let before_b = cri_list(b);
    let m = bed.migrate(a, b, &format!("k8s.io/{}", svc.cid));
    assert_refused(
        bed,
        &m,
        &["restore", "runs on at the source"],
        "cri: CRIU restore failure on B",
    );
    assert_cri_failure_clean(
        bed,
        &svc,
        &before_b,
        before,
        "cri: CRIU restore failure on B",
    );
}

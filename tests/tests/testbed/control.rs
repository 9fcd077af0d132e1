//! The coordinator's API refusing bad input, and the control plane while a container migrates:
//! each refusal is a clear JSON error with its status, and changes nothing.

use std::time::Duration;

use serde_json::Value;
use ums_tests::testbed::{Bed, System, BUSYBOX_IMAGE};
use ums_tests::wait_for;

use crate::common::*;

/// One HTTP call to `sys`'s coordinator with curl inside its network namespace: the status and
/// the JSON body (Null when the body is not JSON).
fn call(bed: &Bed, sys: &System, path: &str, body: &[u8], token: Option<&str>) -> (u16, Value) {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={}", bed.netns(sys).display()))
        .args(["--", "curl", "-sS", "-X", "POST"])
        .args(["-H", "Content-Type: application/json"])
        .args(["--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if sys.url.starts_with("https://") {
        c.arg("--cacert").arg(bed.tls_ca());
    }
    c.arg(format!("{}{path}", sys.url));
    let out = ums_tests::util::run(&mut c, Some(body), Duration::from_secs(30));
    assert!(out.success(), "curl {path}:\n{out}");
    let (json, code) = out
        .stdout
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl printed no status:\n{out}"));
    let status = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl's status {code:?}:\n{out}"));
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// `call` answered `status` with a JSON error whose message contains every one of `needles`.
#[track_caller]
fn assert_json_error(got: (u16, Value), status: u16, kind: &str, needles: &[&str], what: &str) {
    let (code, body) = got;
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        code == status && body["kind"] == kind && needles.iter().all(|n| error.contains(n)),
        "{what}: expected {status} {kind} naming {needles:?}, got {code} {body}"
    );
    say(format!("{what}: {code} {body}"));
}

/// How many migrations `sys`'s coordinator knows, and how many of them are running.
fn records(bed: &Bed, sys: &System) -> (usize, usize) {
    let out = bed.ums(
        sys,
        &["ls", "--json", "--at", &sys.url],
        Duration::from_secs(20),
    );
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("ums list: {e}\n{out}"));
    let all = v.as_array().cloned().unwrap_or_default();
    let running = all.iter().filter(|r| r["state"] == "running").count();
    (all.len(), running)
}

/// Bad JSON, an unknown container, an unknown namespace, a wrong peer token, an oversized
/// body: each refused with its status and a JSON error naming the cause; the service on A
/// counts on, B holds nothing and its coordinator recorded nothing.
pub fn bad_input(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let svc = Svc::start(
        bed,
        a,
        "ufa-api",
        BUSYBOX_IMAGE,
        &["/bin/sh", "-c", SH_COUNTER],
    );
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 10);
    let b_before = records(bed, b);
    let token = std::fs::read_to_string(bed.dir.join("token")).expect("the test bed's token");
    let token = token.trim();
    let to = &b.url;

    assert_json_error(
        call(
            bed,
            a,
            "/v1/migrate",
            br#"{"ref": "default/ufa-api", "to": "#,
            Some(token),
        ),
        400,
        "bad_request",
        &["invalid JSON"],
        "bad JSON",
    );
    let req = format!(r#"{{"ref": "default/ufa-nope", "to": "{to}"}}"#);
    assert_json_error(
        call(bed, a, "/v1/migrate", req.as_bytes(), Some(token)),
        404,
        "not_found",
        &["container default/ufa-nope not found on system a"],
        "unknown container",
    );
    let req = format!(r#"{{"ref": "ufanons/ufa-api", "to": "{to}"}}"#);
    assert_json_error(
        call(bed, a, "/v1/migrate", req.as_bytes(), Some(token)),
        404,
        "not_found",
        &["namespace ufanons not found on system a"],
        "unknown namespace",
    );
    for (path, body) in [
        ("/v1/migrations/incoming", &b"{}"[..]),
        ("/v1/migrations/m-ufa/restore", b"{}"),
        ("/v1/migrations/m-ufa/abort", b"{}"),
    ] {
        assert_json_error(
            call(bed, b, path, body, Some("ufa-wrong-token")),
            403,
            "forbidden",
            &["wrong token"],
            &format!("wrong token on {path}"),
        );
        assert_json_error(
            call(bed, b, path, body, None),
            401,
            "unauthorized",
            &["needs the coordinators' token"],
            &format!("no token on {path}"),
        );
    }
    // The right token gets past authorization, and then bad input is still bad input.
    assert_json_error(
        call(
            bed,
            b,
            "/v1/migrations/incoming",
            b"{\"migration_id\": 7}",
            Some(token),
        ),
        400,
        "bad_request",
        &["invalid JSON"],
        "bad JSON with the right token",
    );
    let big = format!(
        r#"{{"ref": "default/ufa-api", "to": "{to}", "pad": "{}"}}"#,
        "x".repeat(9 << 20)
    );
    assert_json_error(
        call(bed, a, "/v1/migrate", big.as_bytes(), Some(token)),
        413,
        "payload_too_large",
        &["larger than"],
        "oversized body",
    );

    assert_eq!(
        records(bed, b),
        b_before,
        "B's coordinator recorded migrations from refused calls"
    );
    assert_eq!(records(bed, a).1, 0, "A has a running migration");
    svc.assert_counts_on(a, "/tmp/c", before, "the service after the refused calls");
    assert_nothing_left(bed, b, &svc.id, false, "B after the refused calls");
}

/// While memhog 512 MiB migrates, `ctr tasks kill` (SIGTERM, SIGKILL), `ctr tasks delete`
/// (with and without --force) and `ctr containers delete` of it on A are refused with a clear
/// error (the shim refuses control requests while a migration runs; containerd a running task
/// or a container with a task); the migration then completes with the memory intact.
pub fn control_plane_during_migration(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let (svc, sum) = start_memhog(bed, a, "ufa-ctl", 512);
    let id = svc.id.clone();
    let rx0 = link_rx_bytes(bed, b);
    let mut mig = bed
        .spawn_migrate(a, b, &svc.reference())
        .expect("spawn ums migrate");
    wait_for(Duration::from_secs(60), Duration::from_millis(5), || {
        let streaming = link_rx_bytes(bed, b) > rx0 + MIB && mig.stderr_now().contains(" started");
        (streaming || mig.finished()).then_some(())
    });
    assert!(
        !mig.finished(),
        "the migration ended before the control requests could be tried:\n{}",
        mig.stderr_now()
    );
    let ctr = a.ctr();
    // containerd itself refuses to delete a running task (with --force too: the task is still
    // RUNNING, since the shim refused to kill it) or a container whose task runs.
    let attempts: [(&[&str], &str); 5] = [
        (&["tasks", "kill", &id], "being migrated"),
        (&["tasks", "kill", "-s", "SIGKILL", &id], "being migrated"),
        (&["tasks", "delete", &id], "must be stopped"),
        (&["tasks", "delete", "--force", &id], "must be stopped"),
        (
            &["containers", "delete", &id],
            "cannot delete a non stopped container",
        ),
    ];
    for (args, needle) in attempts {
        let out = ctr.cmd(args);
        let running = !mig.finished();
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !out.success() && text.contains(needle),
            "ctr {} during the migration: expected a refusal naming {needle:?}\n{out}",
            args.join(" ")
        );
        assert!(
            running,
            "the migration had ended when ctr {} was refused",
            args.join(" ")
        );
        say(format!(
            "ctr {} during the migration: refused: {}",
            args.join(" "),
            text.trim()
        ));
    }
    let m = bed.finish_migrate(mig);
    check_migration(
        bed,
        &m,
        a,
        b,
        &id,
        "memhog 512 MiB (control requests refused)",
    );
    assert_nothing_left(bed, a, &id, true, "A after the migration");
    assert_memhog_sum(&svc, b, &sum, "memhog on B");
}

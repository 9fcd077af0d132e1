//! Operations (issue 5): the coordinators talk TLS (the test bed's CA) and require the token
//! (401 without it, 403 with a wrong one, nothing changed); the image stream is bound to its
//! migration; `ums ls` / `ums status`, `/metrics`, `/openapi.json` and the migration id on the
//! coordinators' log lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use ums_tests::testbed::{Bed, System, BUSYBOX_IMAGE, COUNTER_IMAGE};
use ums_tests::util::{self, Output};

use crate::common::*;

const T: Duration = Duration::from_secs(60);

/// An HTTP call with curl from `from`'s network namespace: the answer's status (0: no answer,
/// e.g. a refused TLS handshake) and the curl output. `token`: sent as a bearer token; `ca`:
/// the CA curl trusts (None: its defaults, which do not include the test bed's).
fn curl(
    bed: &Bed,
    from: &System,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
    ca: Option<&Path>,
) -> (u16, Output) {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={}", bed.netns(from).display())).args([
        "--",
        "curl",
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let payload = body.map(|b| b.to_string().into_bytes());
    if payload.is_some() {
        c.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    c.arg(url);
    let out = util::run(&mut c, payload.as_deref(), T);
    let code = out
        .stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn token(bed: &Bed) -> String {
    std::fs::read_to_string(bed.token_file())
        .expect("the test bed's token")
        .trim()
        .to_string()
}

/// `ums ARGS` from `from`'s namespace with the test bed's token and CA; must succeed.
#[track_caller]
fn ums_ok(bed: &Bed, from: &System, args: &[&str]) -> String {
    bed.ums(from, args, T)
        .expect_ok(&format!("ums {}", args.join(" ")))
        .stdout
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(bed: &Bed, sys: &System) -> String {
    let (code, out) = curl(
        bed,
        sys,
        "GET",
        &format!("{}/metrics", sys.url),
        None,
        None,
        Some(&bed.tls_ca()),
    );
    assert_eq!(code, 200, "GET /metrics on {}\n{out}", sys.name);
    out.stdout
}

/// The migrations `sys`'s coordinator knows (`ums ls --json`).
fn records(bed: &Bed, sys: &System) -> Vec<Value> {
    let out = ums_ok(bed, &bed.a, &["ls", "--json", "--at", &sys.url]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ums ls --json: {e}\n{out}"))
}

/// Every line of `sys`'s coordinator log that names migration `id` carries its `[id]` field,
/// and there are some.
#[track_caller]
fn assert_log_lines_carry(bed: &Bed, sys: &System, id: &str) {
    let log = util::read_lossy(&bed.coordinator_log(sys));
    let field = format!("[{id}]");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
    let bare: Vec<&&str> = lines.iter().filter(|l| !l.contains(&field)).collect();
    assert!(
        lines.len() >= 3 && bare.is_empty(),
        "system {}'s coordinator log: {} line(s) name {id}, without the {field} field: {bare:#?}",
        sys.name,
        lines.len()
    );
    say(format!(
        "system {}: {} log lines of {id}, each with {field}, e.g. {:?}",
        sys.name,
        lines.len(),
        lines[0]
    ));
}

/// A counter migrates a->b over TLS (the coordinators' URLs are https://, `ums migrate` trusts
/// the test bed's CA); `ums ls` and `ums status` on both systems show it, `/metrics` counts it,
/// `/openapi.json` is served, and the coordinators' log lines of it carry its id.
pub fn tls_migration(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    for s in [a, b] {
        assert!(
            s.url.starts_with("https://"),
            "system {}'s coordinator is not on TLS: {}",
            s.name,
            s.url
        );
    }
    let src = [("role", "source"), ("outcome", "completed")];
    let dst = [("role", "destination"), ("outcome", "completed")];
    let (done_a, done_b) = (
        metric(&metrics(bed, a), "ums_migrations_total", &src),
        metric(&metrics(bed, b), "ums_migrations_total", &dst),
    );
    let svc = Svc::start(bed, a, "uop-tls", COUNTER_IMAGE, &[]);
    let before = svc.wait_u64(a, "/tmp/counter", Duration::from_secs(20), |v| v >= 10);
    let from = a.url.clone();
    let to = b.url.clone();
    let reference = svc.reference();
    let out = bed.ums(
        a,
        &[
            "migrate", "--from", &from, "--to", &to, &reference, "--json",
        ],
        Duration::from_secs(300),
    );
    let report: Value = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("ums migrate over TLS printed no report\n{out}{}", diag(bed)));
    assert!(
        out.success(),
        "ums migrate over TLS failed\n{out}{}",
        diag(bed)
    );
    let mid = report["migration_id"]
        .as_str()
        .expect("migration_id")
        .to_string();
    assert_eq!(report["source"], json!(from), "{report}");
    assert_eq!(report["location"]["url"], json!(to), "{report}");
    svc.assert_counts_on(b, "/tmp/counter", before, "after the migration over TLS");
    assert_nothing_left(
        bed,
        a,
        &svc.id,
        true,
        "the source after the migration over TLS",
    );

    // ums ls: the migration on both sides, with approach, state and phase.
    let ls = ums_ok(bed, a, &["ls", "--at", &from]);
    let row = ls
        .lines()
        .find(|l| l.starts_with(&mid))
        .unwrap_or_else(|| panic!("ums ls at a does not list {mid}:\n{ls}"));
    for w in [
        &reference,
        "container-level",
        "source",
        "completed",
        "done",
        "pre ",
    ] {
        assert!(row.contains(w), "ums ls at a: no {w:?} in {row:?}\n{ls}");
    }
    let ls_b = ums_ok(bed, a, &["ls", "--at", &to]);
    let row = ls_b
        .lines()
        .find(|l| l.starts_with(&mid))
        .unwrap_or_else(|| panic!("ums ls at b does not list {mid}:\n{ls_b}"));
    assert!(
        row.contains("destination") && row.contains("completed"),
        "ums ls at b: {row:?}"
    );
    say(format!("ums ls at a:\n{ls}"));

    // ums status ID: phases with their timings and where the service went.
    let st = ums_ok(bed, a, &["status", &mid, "--at", &from]);
    for w in [
        "state           completed".to_string(),
        format!("now at          b ({to}) {reference} pid "),
    ] {
        assert!(st.contains(&w), "ums status {mid}: no {w:?} in\n{st}");
    }
    for p in PHASES {
        assert!(
            st.lines().any(|l| l.starts_with(p) && l.ends_with(" ms")),
            "ums status {mid}: no timing of phase {p}\n{st}"
        );
    }
    say(format!("ums status {mid}:\n{st}"));
    let st = ums_ok(bed, a, &["status", "--at", &to]);
    assert!(
        st.starts_with(&format!("coordinator b (TLS) at {to}: ok")),
        "ums status at b:\n{st}"
    );

    // /metrics: counted once on each side, with its bytes and phase durations.
    let (ma, mb) = (metrics(bed, a), metrics(bed, b));
    assert_eq!(
        metric(&ma, "ums_migrations_total", &src),
        done_a + 1.0,
        "a's completed source migrations\n{ma}"
    );
    assert_eq!(
        metric(&mb, "ums_migrations_total", &dst),
        done_b + 1.0,
        "b's completed destination migrations\n{mb}"
    );
    assert!(
        metric(&ma, "ums_stream_bytes_sent_total", &[("system", "a")])
            >= report["bytes"].as_f64().unwrap_or(f64::MAX),
        "bytes sent\n{ma}"
    );
    for p in PHASES {
        assert!(
            metric(
                &ma,
                "ums_migration_phase_duration_seconds_count",
                &[("phase", p)]
            ) >= 1.0,
            "no duration of phase {p}\n{ma}"
        );
    }

    // The OpenAPI document.
    let (code, out) = curl(
        bed,
        a,
        "GET",
        &format!("{from}/openapi.json"),
        None,
        None,
        Some(&bed.tls_ca()),
    );
    assert_eq!(code, 200, "GET /openapi.json\n{out}");
    let body = out.stdout.rsplit_once('\n').map(|(b, _)| b).unwrap_or("");
    let doc: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3."))
            && doc["paths"].get("/v1/migrate").is_some(),
        "not the OpenAPI document: {body}"
    );

    // Logs: the migration's lines carry its id on both systems.
    assert_log_lines_carry(bed, a, &mid);
    assert_log_lines_carry(bed, b, &mid);
}

/// A file holding a token that is not the test bed's.
fn wrong_token_file(bed: &Bed) -> PathBuf {
    let f = bed.dir.join("uop-wrong-token");
    std::fs::write(&f, "0123456789abcdef-not-the-token\n").expect("write the wrong token");
    f
}

/// A CA the coordinators' certificates are not signed by.
fn other_ca(bed: &Bed) -> PathBuf {
    let dir = bed.dir.join("uop-other-ca");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = util::run(
        std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=not the test bed CA", "-keyout"])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.pem")),
        None,
        T,
    );
    out.expect_ok("openssl: another CA");
    dir.join("ca.pem")
}

/// Migrating with a wrong token (403) or none (401) is refused before anything is touched: the
/// service counts on at A, neither coordinator records a migration, B holds nothing; the same
/// for a direct peer call to B. A client that does not trust the test bed's CA gets no answer.
pub fn auth_refused(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    assert!(
        a.url.starts_with("https://") && bed.tls_ca().is_file(),
        "the test bed's coordinators are not on TLS ({}; UMS_TESTBED_TLS=0?)",
        a.url
    );
    let svc = Svc::start(
        bed,
        a,
        "uop-auth",
        BUSYBOX_IMAGE,
        &["/bin/sh", "-c", SH_COUNTER],
    );
    let before = svc.wait_u64(a, "/tmp/c", Duration::from_secs(20), |v| v >= 5);
    let (known_a, known_b) = (records(bed, a).len(), records(bed, b).len());
    let refused = |m: &str, code: &str| metric(m, "ums_http_refused_total", &[("code", code)]);
    let (ma0, mb0) = (metrics(bed, a), metrics(bed, b));

    let reference = svc.reference();
    let args = [
        "migrate", "--from", &a.url, "--to", &b.url, &reference, "--json",
    ];
    let wrong = wrong_token_file(bed);
    let mut c = bed.ums_command(a, &args);
    c.env("UMS_TOKEN_FILE", &wrong);
    let out = util::run(&mut c, None, T);
    assert!(
        !out.success() && out.stderr.contains("403") && out.stderr.contains("wrong token"),
        "ums migrate with a wrong token must be refused with 403\n{out}"
    );
    let mut c = bed.ums_command(a, &args);
    c.env_remove("UMS_TOKEN_FILE");
    let out = util::run(&mut c, None, T);
    assert!(
        !out.success() && out.stderr.contains("401") && out.stderr.contains("token"),
        "ums migrate without a token must be refused with 401\n{out}"
    );

    // The peer endpoint, called as a source would: refused the same way.
    let spec = json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/sh"], "cwd": "/"},
                      "root": {"path": "rootfs"}, "linux": {}});
    let incoming = json!({"migration_id": "m-uopt-auth", "ref": reference, "source": "a",
                          "spec": spec, "image": BUSYBOX_IMAGE, "snapshotter": "overlayfs",
                          "token": "t"});
    let url = format!("{}/v1/migrations/incoming", b.url);
    let ca = bed.tls_ca();
    for (tok, want) in [(Some("not-the-token"), 403), (None, 401)] {
        let (code, out) = curl(bed, a, "POST", &url, tok, Some(&incoming), Some(&ca));
        assert_eq!(
            code, want,
            "POST /v1/migrations/incoming with {tok:?}\n{out}"
        );
    }

    // Nothing changed.
    svc.assert_counts_on(a, "/tmp/c", before, "after the refused requests");
    assert_nothing_left(bed, b, &svc.id, false, "B after the refused requests");
    assert_eq!(
        records(bed, a).len(),
        known_a,
        "a recorded a refused migration"
    );
    assert_eq!(
        records(bed, b).len(),
        known_b,
        "b recorded a refused migration"
    );
    let (ma, mb) = (metrics(bed, a), metrics(bed, b));
    assert_eq!(
        refused(&ma, "403"),
        refused(&ma0, "403") + 1.0,
        "a's 403s\n{ma}"
    );
    assert_eq!(
        refused(&ma, "401"),
        refused(&ma0, "401") + 1.0,
        "a's 401s\n{ma}"
    );
    assert_eq!(
        refused(&mb, "403"),
        refused(&mb0, "403") + 1.0,
        "b's 403s\n{mb}"
    );
    assert_eq!(
        refused(&mb, "401"),
        refused(&mb0, "401") + 1.0,
        "b's 401s\n{mb}"
    );

    // Clients that do not trust the test bed's CA.
    let health = format!("{}/healthz", a.url);
    let (code, out) = curl(bed, a, "GET", &health, None, None, None);
    assert!(
        code == 0 && out.code == 60,
        "curl without the test bed's CA must fail the certificate check (exit 60)\n{out}"
    );
    let (code, out) = curl(bed, a, "GET", &health, None, None, Some(&other_ca(bed)));
    assert!(code == 0 && out.code == 60, "curl with another CA\n{out}");
    let mut c = bed.ums_command(a, &["ls", "--at", &a.url]);
    c.env("UMS_TLS_CA", other_ca(bed));
    let out = util::run(&mut c, None, T);
    assert!(
        !out.success() && out.stderr.to_lowercase().contains("certificate"),
        "ums ls with another CA must fail the certificate check\n{out}"
    );
    let mut c = bed.ums_command(a, &["ls", "--at", &a.url]);
    c.env_remove("UMS_TLS_CA");
    let out = util::run(&mut c, None, T);
    assert!(
        !out.success() && out.stderr.contains("--tls-ca"),
        "ums ls without a CA must say it needs one\n{out}"
    );
    let (code, out) = curl(bed, a, "GET", &health, None, None, Some(&ca));
    assert_eq!(code, 200, "with the CA, /healthz answers\n{out}");
}

/// Creates the destination of migration `mid` of `default/<id>` on B through its peer
/// endpoint, as A would, with stream token `token`; returns the stream address.
fn prepare_on_b(bed: &Bed, spec: &Value, mid: &str, id: &str, stream_token: &str) -> String {
    let body = json!({"migration_id": mid, "ref": reference(id), "source": "a", "spec": spec,
                      "image": BUSYBOX_IMAGE, "snapshotter": "overlayfs", "token": stream_token});
    let url = format!("{}/v1/migrations/incoming", bed.b.url);
    let (code, out) = curl(
        bed,
        &bed.a,
        "POST",
        &url,
        Some(&token(bed)),
        Some(&body),
        Some(&bed.tls_ca()),
    );
    assert_eq!(code, 201, "incoming {mid} on b\n{out}");
    let v: Value = serde_json::from_str(out.stdout.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("incoming {mid}: {e}\n{out}"));
    v["address"].as_str().expect("address").to_string()
}

/// `criu-sync send` of `dir` to `addr` with `token`, from A's namespace.
fn send(bed: &Bed, dir: &Path, addr: &str, token: &str) -> Output {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={}", bed.netns(&bed.a).display()))
        .arg("--")
        .arg(bed.bin_dir.join("criu-sync"))
        .arg("send")
        .arg("--dir")
        .arg(dir)
        .args(["--to", addr, "--token", token]);
    util::run(&mut c, None, T)
}

/// The image stream is bound to its migration: B's shim, prepared for a migration with its
/// token, refuses a stream that presents another migration's token, and takes one stream only
/// (a second one with the right token finds nobody listening).
pub fn stream_token_bound(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    // A spec as A's containerd stores it.
    let model = "uop-strm0";
    a.ctr().remove_best_effort(model);
    a.ctr()
        .cmd(&["containers", "create", BUSYBOX_IMAGE, model, "/bin/sh"])
        .expect_ok("ctr containers create on a");
    let info = a
        .ctr()
        .cmd(&["containers", "info", model])
        .expect_ok("ctr c info");
    a.ctr().remove_best_effort(model);
    let info: Value = serde_json::from_str(&info.stdout).expect("ctr c info is JSON");
    let spec = info["Spec"].clone();
    assert!(spec.is_object(), "no Spec in ctr c info: {info}");

    let images = bed.dir.join("uop-images");
    std::fs::create_dir_all(&images).expect("mkdir");
    std::fs::write(images.join("inventory.img"), b"not really an image").expect("write");

    let (m1, m2) = ("m-uopt-strm1", "m-uopt-strm2");
    let (id1, id2) = ("uop-strm1", "uop-strm2");
    for id in [id1, id2] {
        b.ctr().remove_best_effort(id);
    }
    let (t1, t2) = ("token-of-migration-1", "token-of-migration-2");
    let addr1 = prepare_on_b(bed, &spec, m1, id1, t1);
    let addr2 = prepare_on_b(bed, &spec, m2, id2, t2);

    let out = send(bed, &images, &addr1, t2);
    assert!(
        !out.success() && out.stderr.contains("token"),
        "a stream with migration 2's token to migration 1 must be refused\n{out}"
    );
    let out = send(bed, &images, &addr2, t2);
    assert!(
        out.success(),
        "the stream of migration 2 with its token\n{out}"
    );
    let out = send(bed, &images, &addr2, t2);
    assert!(
        !out.success(),
        "a second stream with migration 2's token must be refused (single use)\n{out}"
    );
    say(format!("second stream refused: {}", out.stderr.trim()));

    // The source gives up on both: B removes everything.
    for m in [m1, m2] {
        let url = format!("{}/v1/migrations/{m}/abort", b.url);
        let (code, out) = curl(
            bed,
            a,
            "POST",
            &url,
            Some(&token(bed)),
            Some(&json!({})),
            Some(&bed.tls_ca()),
        );
        assert_eq!(code, 200, "abort {m}\n{out}");
    }
    for id in [id1, id2] {
        assert_nothing_left(bed, b, id, false, "B after the aborted stream tests");
    }
    let _ = std::fs::remove_dir_all(&images);
}

//! The Frontman (paper, III-B) on the test bed: a stateful HTTP service (busybox httpd whose
//! CGI script counts requests in a file of the container's rootfs) runs on system a with the
//! system's host network, published with `ums expose`; a client in a's network namespace
//! requests it through a's endpoint in a steady loop while it migrates a->b. TCP mode: no
//! request fails (the endpoint holds new connections while the service is frozen). HTTP mode:
//! every refusal is a 503 with Retry-After, after which the client retries. In both, the count
//! goes on without a gap or a step back, the requests reach b after the migration, the report
//! names b's endpoint, and once unexposed the endpoints are gone.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use ums_tests::testbed::{Bed, System, BUSYBOX_IMAGE};
use ums_tests::wait_for;

use crate::common::*;

const A_IP: &str = "10.77.0.1";
const B_IP: &str = "10.77.0.2";
/// Longer than the endpoint's hold timeout (30 s): a held request is answered or closed first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The service: a CGI script that adds one to /data/count (in the rootfs: it travels with the
/// writable layer) and answers the new count; httpd on every address of the system (host
/// network: a's address on a, b's on b).
fn httpd_script(port: u16) -> String {
    format!(
        "mkdir -p /www/cgi-bin /data && printf '%s\\n' '#!/bin/sh' \
         'n=$(cat /data/count 2>/dev/null || echo 0)' 'n=$((n+1))' \
         'echo $n > /data/count.tmp && mv /data/count.tmp /data/count' \
         'printf \"Content-Type: text/plain\\r\\n\\r\\n%s\\n\" \"$n\"' > /www/cgi-bin/count \
         && chmod 755 /www/cgi-bin/count && exec httpd -f -p 0.0.0.0:{port} -h /www"
    )
}

/// One answer of the service, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    /// 200 with the count.
    Count(u64),
    /// 503 with its Retry-After (None: without one).
    Unavailable(Option<u64>),
    /// Anything else: connection refused, reset, closed without an answer, another status.
    Failed(String),
}

/// `GET /cgi-bin/count` at `at` on a fresh connection (HTTP/1.0: the server closes).
fn request(at: SocketAddr) -> Answer {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(10))?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.write_all(b"GET /cgi-bin/count HTTP/1.0\r\nHost: ufm\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let text = match attempt() {
        Ok(t) => t,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if status.contains(" 200 ") {
        match body.trim().parse() {
            Ok(n) => Answer::Count(n),
            Err(_) => Answer::Failed(format!("200 without a count: {text:?}")),
        }
    } else if status.contains(" 503 ") {
        let retry = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("retry-after")
                .then(|| v.trim().parse().ok())
                .flatten()
        });
        Answer::Unavailable(retry)
    } else {
        Answer::Failed(format!("unexpected answer: {text:?}"))
    }
}

/// A client requesting `at` in a loop from inside a network namespace until stopped; after a
/// 503 it waits Retry-After seconds and retries.
struct Client {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(netns: &Path, at: SocketAddr) -> Client {
        let ns = File::open(netns).unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&answers));
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the system's network namespace");
            while !s.load(Ordering::SeqCst) {
                let ans = request(at);
                if let Answer::Unavailable(Some(secs)) = ans {
                    std::thread::sleep(Duration::from_secs(secs));
                }
                a.lock().unwrap().push(ans);
            }
        });
        Client {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> usize {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| matches!(a, Answer::Count(_)))
            .count()
    }

    /// Waits until the client has `n` more counts than now.
    #[track_caller]
    fn wait_more(&self, n: usize, what: &str) {
        let want = self.counts() + n;
        wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
            (self.counts() >= want).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{what}: the client did not get {n} more counts within 60 s; its last answers: {:?}",
                self.answers.lock().unwrap().iter().rev().take(5).collect::<Vec<_>>()
            )
        });
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the client thread panicked");
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Removes the service's endpoints on both systems, whatever the test's outcome.
struct Endpoints<'a> {
    bed: &'a Bed,
    reference: String,
}

impl Drop for Endpoints<'_> {
    fn drop(&mut self) {
        for sys in [&self.bed.a, &self.bed.b] {
            let _ = unexpose(self.bed, sys, &self.reference);
        }
    }
}

fn unexpose(bed: &Bed, sys: &System, which: &str) -> ums_tests::Output {
    bed.ums(
        sys,
        &["unexpose", "--coordinator", &sys.url, which],
        Duration::from_secs(30),
    )
}

/// The service on a's host network, listening on `port`.
fn start_httpd<'a>(bed: &'a Bed, id: &str, port: u16) -> Svc<'a> {
    let a = &bed.a;
    a.ctr().remove_best_effort(id);
    bed.b.ctr().remove_best_effort(id);
    let svc = Svc {
        bed,
        id: id.to_string(),
    };
    let script = httpd_script(port);
    a.ctr()
        .run_image_detached(
            id,
            BUSYBOX_IMAGE,
            &["--net-host"],
            &["/bin/sh", "-c", &script],
        )
        .expect_ok(&format!("ctr run --net-host {id} on a"));
    a.ctr().wait_status(id, "RUNNING", Duration::from_secs(30));
    svc
}

/// The endpoints `sys`'s coordinator lists.
#[track_caller]
fn endpoints(bed: &Bed, sys: &System) -> Vec<Value> {
    let out = bed
        .ums(
            sys,
            &["expose", "--coordinator", &sys.url],
            Duration::from_secs(30),
        )
        .expect_ok(&format!("ums expose (list) on {}", sys.name));
    match serde_json::from_str(&out.stdout) {
        Ok(Value::Array(v)) => v,
        _ => panic!("ums expose (list) printed no JSON array\n{out}"),
    }
}

#[track_caller]
fn endpoint_of(bed: &Bed, sys: &System, reference: &str) -> Value {
    endpoints(bed, sys)
        .into_iter()
        .find(|e| e["ref"] == reference)
        .unwrap_or_else(|| panic!("system {} lists no endpoint for {reference}", sys.name))
}

/// The scenario, in `mode` (tcp or http), with the service on `port` and the endpoints on
/// `endpoint_port` of each system.
fn scenario(bed: &Bed, mode: &str, id: &str, port: u16, endpoint_port: u16) {
    let (a, b) = (&bed.a, &bed.b);
    let reference = reference(id);
    let svc = start_httpd(bed, id, port);

    let a_endpoint: SocketAddr = format!("{A_IP}:{endpoint_port}").parse().unwrap();
    let b_endpoint: SocketAddr = format!("{B_IP}:{endpoint_port}").parse().unwrap();
    let _cleanup = Endpoints {
        bed,
        reference: reference.clone(),
    };
    let target = format!("{A_IP}:{port}");
    let out = bed
        .ums(
            a,
            &[
                "expose",
                "--coordinator",
                &a.url,
                &reference,
                "--listen",
                &a_endpoint.to_string(),
                "--target",
                &target,
                "--mode",
                mode,
            ],
            Duration::from_secs(30),
        )
        .expect_ok("ums expose on a");
    say(format!("{mode}: exposed: {}", out.stdout.trim()));

    // httpd may still be starting: the first count through the endpoint.
    let netns_a = bed.netns(a);
    let first = wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match in_netns(&netns_a, move || request(a_endpoint)) {
            Answer::Count(n) => Some(n),
            _ => None,
        },
    )
    .unwrap_or_else(|| {
        panic!(
            "{mode}: no count through a's endpoint {a_endpoint} within 20 s; service log:\n{}",
            ums_tests::util::read_lossy(&a.ctr().log_file(id))
        )
    });
    assert_eq!(first, 1, "{mode}: the first request's count");

    let client = Client::start(&netns_a, a_endpoint);
    client.wait_more(20, "before the migration");
    let m = bed.migrate(a, b, &reference);
    let f = check_migration(
        bed,
        &m,
        a,
        b,
        id,
        &format!("httpd behind the frontman ({mode})"),
    );
    // Requests through a's endpoint go on after the migration (the service is gone from a).
    client.wait_more(20, "after the migration");
    let answers = client.finish();

    let report = m.report.as_ref().expect("a report");
    let ep = &report["endpoint"];
    assert_eq!(
        (
            ep["endpoint"].as_str(),
            ep["system"].as_str(),
            ep["previous"].as_str()
        ),
        (
            Some(b_endpoint.to_string().as_str()),
            Some("b"),
            Some(a_endpoint.to_string().as_str())
        ),
        "{mode}: the report's endpoint: {report}"
    );
    assert_eq!(ep["target"], format!("{B_IP}:{port}"), "{mode}: {report}");
    assert_nothing_left(bed, a, id, false, "a after the migration");
    svc.assert_running(b, "httpd on b");

    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| matches!(a, Answer::Failed(_) | Answer::Unavailable(None)))
        .collect();
    let counts: Vec<u64> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Count(n) => Some(*n),
            _ => None,
        })
        .collect();
    let unavailable = answers
        .iter()
        .filter(|a| matches!(a, Answer::Unavailable(Some(_))))
        .count();
    let a_info = endpoint_of(bed, a, &reference);
    let b_info = endpoint_of(bed, b, &reference);
    say(format!(
        "{mode}: {} requests during the migration loop: {} counted ({}..={}), {unavailable} \
         answered 503 with Retry-After, {} failed; a's endpoint: {} ({}), b's: {}; downtime_ms {}",
        answers.len(),
        counts.len(),
        counts.first().copied().unwrap_or(0),
        counts.last().copied().unwrap_or(0),
        failed.len(),
        a_info["stats"],
        a_info["state"],
        b_info["stats"],
        f.downtime_ms
    ));
    assert!(
        failed.is_empty(),
        "{mode}: requests failed during the migration: {failed:?}"
    );
    if mode == "tcp" {
        assert_eq!(unavailable, 0, "{mode}: the tcp endpoint answered 503");
    }
    // Every counted request added exactly one: nothing lost, nothing counted twice, no step
    // back to an older state.
    for (i, w) in counts.windows(2).enumerate() {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{mode}: answer {} counted {} after {}",
            i + 1,
            w[1],
            w[0]
        );
    }
    assert_eq!(
        counts.first(),
        Some(&(first + 1)),
        "{mode}: the loop's first count"
    );

    // a's endpoint forwards to b's, which forwards to the service on b.
    assert_eq!(a_info["state"], "moved", "{mode}: a's endpoint {a_info}");
    assert_eq!(
        a_info["forwarding_to"],
        b_endpoint.to_string(),
        "{mode}: {a_info}"
    );
    assert_eq!(
        b_info["state"], "forwarding",
        "{mode}: b's endpoint {b_info}"
    );
    assert!(
        b_info["stats"]["forwarded"].as_u64().unwrap_or(0) >= 20,
        "{mode}: the requests after the migration did not reach b: {b_info}"
    );
    let last = *counts.last().unwrap();
    assert_eq!(
        in_netns(&netns_a, move || request(b_endpoint)),
        Answer::Count(last + 1),
        "{mode}: a request to b's endpoint"
    );
    assert_eq!(
        svc.read_u64(b, "/data/count"),
        Some(last + 1),
        "{mode}: /data/count on b"
    );

    // Told the new endpoint, the requester lets a's go; then b's.
    unexpose(bed, a, &reference).expect_ok("ums unexpose on a");
    assert!(
        matches!(
            in_netns(&netns_a, move || request(a_endpoint)),
            Answer::Failed(_)
        ),
        "{mode}: a's endpoint still answers after ums unexpose"
    );
    assert_eq!(
        in_netns(&netns_a, move || request(b_endpoint)),
        Answer::Count(last + 2),
        "{mode}: b's endpoint after a's was removed"
    );
    let b_id = b_info["id"].as_str().unwrap_or_default().to_string();
    unexpose(bed, b, &b_id).expect_ok("ums unexpose on b");
    for at in [a_endpoint, b_endpoint] {
        let refused = in_netns(&netns_a, move || TcpStream::connect(at))
            .err()
            .map(|e| e.kind());
        assert_eq!(
            refused,
            Some(std::io::ErrorKind::ConnectionRefused),
            "{mode}: the endpoint {at} is not gone"
        );
    }
    assert!(endpoints(bed, a).is_empty() && endpoints(bed, b).is_empty());
}

pub fn tcp_mode(bed: &Bed) {
    scenario(bed, "tcp", "ufm-tcp", 8080, 18080);
}

pub fn http_mode(bed: &Bed) {
    scenario(bed, "http", "ufm-http", 8081, 18081);
}

/// A client connected to the service directly (bypassing the endpoint) holds an established
/// connection that CRIU cannot dump: the migration is refused before the freeze with that
/// reason, the service runs on at a with its count, a's endpoint forwards to it again and b
/// holds nothing (no container, no endpoint).
pub fn bypass_refused(bed: &Bed) {
    let (a, b) = (&bed.a, &bed.b);
    let (id, port, endpoint_port) = ("ufm-bypass", 8082, 18082);
    let reference = reference(id);
    let svc = start_httpd(bed, id, port);
    let _cleanup = Endpoints {
        bed,
        reference: reference.clone(),
    };
    let a_endpoint: SocketAddr = format!("{A_IP}:{endpoint_port}").parse().unwrap();
    let service: SocketAddr = format!("{A_IP}:{port}").parse().unwrap();
    bed.ums(
        a,
        &[
            "expose",
            "--coordinator",
            &a.url,
            &reference,
            "--listen",
            &a_endpoint.to_string(),
            "--target",
            &service.to_string(),
            "--drain-timeout",
            "1",
        ],
        Duration::from_secs(30),
    )
    .expect_ok("ums expose on a");
    let netns_a = bed.netns(a);
    let before = wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match in_netns(&netns_a, move || request(a_endpoint)) {
            Answer::Count(n) => Some(n),
            _ => None,
        },
    )
    .expect("a count through a's endpoint");
    // Half a request straight to the service (for a page that does not count): httpd's child
    // waits for the rest.
    let direct = in_netns(&netns_a, move || {
        let mut s = TcpStream::connect(service).expect("connecting to the service directly");
        s.write_all(b"GET /index.html HTTP/1.0\r\n").unwrap();
        s
    });
    let m = bed.migrate(a, b, &reference);
    assert_refused(
        bed,
        &m,
        &[
            "CRIU cannot checkpoint established connections",
            "ESTABLISHED",
        ],
        "a migration with a connection bypassing the endpoint",
    );
    drop(direct);
    svc.assert_running(a, "httpd on a after the refused migration");
    assert_nothing_left(bed, b, id, false, "b after the refused migration");
    assert!(
        endpoints(bed, b).is_empty(),
        "b kept an endpoint: {:?}",
        endpoints(bed, b)
    );
    let info = endpoint_of(bed, a, &reference);
    assert_eq!(info["state"], "forwarding", "a's endpoint: {info}");
    assert_eq!(
        in_netns(&netns_a, move || request(a_endpoint)),
        Answer::Count(before + 1),
        "a's endpoint after the refused migration"
    );
}

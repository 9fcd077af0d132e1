//! The Frontman (paper, III-B): a stable TCP endpoint in front of a service, run inside the
//! coordinator. It forwards every connection to the service's address (a spliced
//! `copy_bidirectional`); while the service is frozen for a migration it hands no connection to
//! it: TCP mode accepts and holds new connections until it may forward again (up to the hold
//! timeout), HTTP mode answers them `503 Service Unavailable` with `Retry-After`. Once the
//! service runs elsewhere it forwards to the new location.
//!
//! This module is the proxy alone; `exposures.rs` ties it to containers and migrations.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a connection to the service may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP mode: the most of a request head read before answering it, and how long it may take.
const MAX_HEAD: usize = 16 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP mode: how long an answered connection is read (and discarded) before it is closed, so
/// that closing with unread bytes does not reset it before the client read the answer.
const LINGER: Duration = Duration::from_secs(1);

/// What the Frontman does with the connections it cannot hand over.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Hold them (accepted, not answered) until the service is back, up to the hold timeout.
    #[default]
    Tcp,
    /// Answer `503` with `Retry-After`.
    Http,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Http => "http",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "tcp" => Ok(Mode::Tcp),
            "http" => Ok(Mode::Http),
            other => Err(format!("mode {other:?} must be tcp or http")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    /// TCP mode: the longest a connection is held before it is closed.
    pub hold_timeout: Duration,
    /// HTTP mode: the `Retry-After` value, in seconds.
    pub retry_after_secs: u32,
}

/// Where new connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Forward(SocketAddr),
    Hold,
}

/// The shared state, changed atomically (a connection claims a route and counts itself active
/// in one step, so that once [`Frontman::hold`] returned no new connection reaches the
/// service).
#[derive(Debug, Clone, Copy)]
struct State {
    route: Route,
    /// Connections open to a service.
    active: usize,
    /// Raised to cut every active connection.
    cut: u64,
}

/// Counters of one Frontman (since it was made).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    /// Connections handed to a service.
    pub forwarded: u64,
    /// Connections that waited (TCP mode).
    pub held: u64,
    /// Connections answered 503 (HTTP mode).
    pub unavailable: u64,
    /// Connections that could not be handed over (hold timeout, service unreachable) or were
    /// cut by a drain timeout.
    pub failed: u64,
    /// Connections open to a service now.
    pub active: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    held: AtomicU64,
    unavailable: AtomicU64,
    failed: AtomicU64,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections that were open to the service when the drain began.
    pub open: usize,
    /// Of those, the ones still open at the drain timeout and cut.
    pub cut: usize,
}

struct Shared {
    state: watch::Sender<State>,
    settings: Settings,
    counters: Counters,
}

/// One stable endpoint: its listener and the connections it serves. Dropping it closes the
/// listener and every connection.
pub struct Frontman {
    local: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Frontman {
    /// Listens on `listen` and routes connections to `route`.
    pub async fn bind(
        listen: SocketAddr,
        route: Route,
        settings: Settings,
    ) -> std::io::Result<Frontman> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            route,
            active: 0,
            cut: 0,
        });
        let shared = Arc::new(Shared {
            state,
            settings,
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Frontman {
            local,
            shared,
            accept,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn settings(&self) -> Settings {
        self.shared.settings
    }

    pub fn route(&self) -> Route {
        self.shared.state.borrow().route
    }

    /// New connections go to `to` from now on; held ones go there too.
    pub fn forward(&self, to: SocketAddr) {
        self.shared
            .state
            .send_modify(|s| s.route = Route::Forward(to));
    }

    /// No new connection reaches a service from now on (held or answered 503). Connections
    /// already open go on: see [`Frontman::drain`].
    pub fn hold(&self) {
        self.shared.state.send_modify(|s| s.route = Route::Hold);
    }

    /// Waits until no connection is open to a service; those still open after `timeout` are
    /// cut (their clients see the connection close). Call after [`Frontman::hold`].
    pub async fn drain(&self, timeout: Duration) -> Drained {
        let mut rx = self.shared.state.subscribe();
        let open = rx.borrow().active;
        if tokio::time::timeout(timeout, rx.wait_for(|s| s.active == 0))
            .await
            .is_ok()
        {
            return Drained { open, cut: 0 };
        }
        let mut cut = 0;
        self.shared.state.send_modify(|s| {
            cut = s.active;
            s.cut += 1;
        });
        // A cut connection ends at its next poll.
        let _ = rx.wait_for(|s| s.active == 0).await;
        Drained { open, cut }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            active: self.shared.state.borrow().active as u64,
        }
    }
}

impl Drop for Frontman {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends every connection: active ones are cut, held ones stop waiting.
        self.shared.state.send_modify(|s| {
            s.route = Route::Hold;
            s.cut += 1;
        });
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve(conn, peer, Arc::clone(&shared)));
            }
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                warn!("frontman: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts a connection to a service as active until dropped.
struct Active<'a>(&'a watch::Sender<State>);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|s| s.active -= 1);
    }
}

/// Claims the current route for a new connection: its target and the cut generation, with the
/// connection counted active; None while holding.
fn claim(state: &watch::Sender<State>) -> Option<(SocketAddr, u64)> {
    let mut claimed = None;
    state.send_if_modified(|s| match s.route {
        Route::Forward(to) => {
            s.active += 1;
            claimed = Some((to, s.cut));
            true
        }
        Route::Hold => false,
    });
    claimed
}

async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let settings = shared.settings;
    let counters = &shared.counters;
    let deadline = Instant::now() + settings.hold_timeout;
    let mut rx = shared.state.subscribe();
    let mut waited = false;
    let (to, cut) = loop {
        if let Some(c) = claim(&shared.state) {
            break c;
        }
        match settings.mode {
            Mode::Http => {
                counters.unavailable.fetch_add(1, Ordering::Relaxed);
                answer(
                    &mut client,
                    "503 Service Unavailable",
                    Some(settings.retry_after_secs),
                )
                .await;
                return;
            }
            Mode::Tcp => {
                if !waited {
                    waited = true;
                    counters.held.fetch_add(1, Ordering::Relaxed);
                }
                let back = tokio::time::timeout_at(
                    deadline,
                    rx.wait_for(|s| matches!(s.route, Route::Forward(_))),
                )
                .await;
                match back {
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            "frontman: a connection from {peer} was held {}s without the \
                             service coming back: closed",
                            settings.hold_timeout.as_secs()
                        );
                        return;
                    }
                }
            }
        }
    };
    let _active = Active(&shared.state);
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        failed => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            };
            warn!("frontman: connecting {peer} to {to}: {why}");
            if settings.mode == Mode::Http {
                answer(&mut client, "502 Bad Gateway", None).await;
            }
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    if waited {
        debug!("frontman: a held connection from {peer} goes to {to}");
    }
    let mut upstream = upstream;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                debug!("frontman: {peer} <-> {to}: {e}");
            }
        }
        _ = rx.wait_for(|s| s.cut != cut) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            info!("frontman: the connection {peer} <-> {to} was cut");
        }
    }
}

/// HTTP mode: reads the request head, answers `status` (with `Retry-After`) and closes.
async fn answer(client: &mut TcpStream, status: &str, retry_after: Option<u32>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(HEAD_TIMEOUT, read_head).await;
    let body = format!("{status}: the service is moving, retry shortly\n");
    let retry = retry_after
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 {status}\r\n{retry}Content-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    if client.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const T: Duration = Duration::from_secs(10);

    fn settings(mode: Mode) -> Settings {
        Settings {
            mode,
            hold_timeout: Duration::from_secs(20),
            retry_after_secs: 2,
        }
    }

    /// A service answering each connection with its name once the client half-closed.
    async fn service(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = c.read_to_end(&mut sink).await;
                    let _ = c.write_all(name.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// One request through the Frontman on a blocking thread: the answer.
    async fn request(at: SocketAddr) -> std::io::Result<String> {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(at)?;
            s.set_read_timeout(Some(T))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn forwards_holds_and_retargets() {
        let a = service("a").await;
        let b = service("b").await;
        let f = Frontman::bind(
            "127.0.0.1:0".parse().unwrap(),
            Route::Forward(a),
            settings(Mode::Tcp),
        )
        .await
        .unwrap();
        let at = f.local_addr();
        assert_eq!(request(at).await.unwrap(), "a");
        f.hold();
        assert_eq!(f.drain(T).await, Drained { open: 0, cut: 0 });
        // Held: the request is accepted, and answered by b once the route moves.
        let held = tokio::spawn(request(at));
        let waited = tokio::time::timeout(T, async {
            while f.stats().held == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "the connection was not held: {:?}",
            f.stats()
        );
        assert!(!held.is_finished());
        f.forward(b);
        assert_eq!(held.await.unwrap().unwrap(), "b");
        let st = f.stats();
        assert_eq!(
            (st.accepted, st.forwarded, st.held, st.failed),
            (2, 2, 1, 0)
        );
        drop(f);
        assert!(
            request(at).await.is_err(),
            "the endpoint outlived its Frontman"
        );
    }

    #[tokio::test]
    async fn http_mode_answers_503_with_retry_after() {
        let a = service("a").await;
        let f = Frontman::bind(
            "127.0.0.1:0".parse().unwrap(),
            Route::Hold,
            settings(Mode::Http),
        )
        .await
        .unwrap();
        let r = request(f.local_addr()).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains("\r\nRetry-After: 2\r\n"), "{r}");
        f.forward(a);
        assert_eq!(request(f.local_addr()).await.unwrap(), "a");
        assert_eq!(f.stats().unavailable, 1);
    }

    #[tokio::test]
    async fn drain_waits_for_open_connections_and_cuts_at_the_timeout() {
        // A service that never answers: the connection stays open.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let svc = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut keep = Vec::new();
            loop {
                let (c, _) = l.accept().await.unwrap();
                keep.push(c);
            }
        });
        let f = Frontman::bind(
            "127.0.0.1:0".parse().unwrap(),
            Route::Forward(svc),
            settings(Mode::Tcp),
        )
        .await
        .unwrap();
        let stuck = tokio::spawn(request(f.local_addr()));
        tokio::time::timeout(T, async {
            while f.stats().active == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        f.hold();
        let d = f.drain(Duration::from_millis(200)).await;
        assert_eq!(d, Drained { open: 1, cut: 1 });
        assert_eq!(f.stats().active, 0);
        // The client sees its connection end without an answer.
        assert_eq!(stuck.await.unwrap().unwrap_or_default(), "");
    }

    #[tokio::test]
    async fn held_connections_give_up_after_the_hold_timeout() {
        let mut s = settings(Mode::Tcp);
        s.hold_timeout = Duration::from_millis(100);
        let f = Frontman::bind("127.0.0.1:0".parse().unwrap(), Route::Hold, s)
            .await
            .unwrap();
        assert_eq!(request(f.local_addr()).await.unwrap_or_default(), "");
        let st = f.stats();
        assert_eq!((st.held, st.failed, st.forwarded), (1, 1, 0));
    }
}

//! The per-system coordinator: its configuration and shared state. The source side of a
//! migration is in `source.rs`, the destination side in `dest.rs`, the HTTP API in `server.rs`.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::containerd::Containerd;
use crate::dest::DestEntry;
use crate::error::{Error, Result};
use crate::exposures::Exposures;
use crate::http::HttpClient;
use crate::registry::Registry;

#[derive(Debug, Clone)]
pub struct Config {
    /// This system's name (`a`, `b`): in errors, logs and reports.
    pub name: String,
    pub listen: SocketAddr,
    /// The address the destination shim listens on for image streams; default: the listen
    /// address's IP (any address if that is unspecified; the source then uses the host of the
    /// destination's URL).
    pub advertise_ip: Option<IpAddr>,
    pub containerd_socket: PathBuf,
    /// containerd's state dir (`--state` / `state = ...`): where the shims' bundles and their
    /// `ums/migration.address` files are.
    pub containerd_state: PathBuf,
    /// The coordinator's own files (the stdout/stderr logs of restored services).
    pub state_dir: PathBuf,
    /// Shared secret between coordinators and their clients (bearer token, required on every
    /// `/v1` endpoint); `None`: requests are not checked.
    pub peer_token: Option<String>,
    /// Verifies the peers' certificates on https:// calls (from `--tls-ca`).
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// The API is served over TLS (`--tls-cert`): reports name this coordinator https://.
    pub https: bool,
    /// How long the source shim's Dump may take.
    pub dump_timeout: Duration,
    /// How long a destination keeps a prepared container that the source neither restores nor
    /// aborts (the source vanished).
    pub incoming_timeout: Duration,
    /// Refuse image streams larger than this (0: no limit).
    pub max_stream_bytes: u64,
    /// Cgroup parent of the ctr-style containers this coordinator creates (`<parent>/<ns>/<id>`;
    /// empty: `/<ns>/<id>` as ctr does). For systems sharing one cgroup hierarchy.
    pub cgroup_parent: String,
    /// Where the destination shims receive images (`<dir>/in-<migration>`); `None`: in the
    /// task's bundle under containerd's state dir (often a tmpfs in RAM).
    pub image_dir: Option<PathBuf>,
}

impl Config {
    /// A config with the defaults for everything but the required settings.
    pub fn new(
        name: &str,
        listen: SocketAddr,
        containerd_socket: PathBuf,
        containerd_state: PathBuf,
    ) -> Config {
        Config {
            name: name.to_string(),
            listen,
            advertise_ip: None,
            containerd_socket,
            containerd_state,
            state_dir: PathBuf::from("/run/ums/coordinator").join(name),
            peer_token: None,
            peer_tls: None,
            https: false,
            dump_timeout: Duration::from_secs(600),
            incoming_timeout: Duration::from_secs(900),
            max_stream_bytes: 0,
            cgroup_parent: String::new(),
            image_dir: None,
        }
    }

    /// The image dir a destination shim is given (empty: its bundle).
    pub fn images_dir(&self) -> String {
        self.image_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }

    /// The `listen` value for the destination shim's Prepare: `ip:0`.
    pub fn stream_listen(&self) -> String {
        let ip = self.advertise_ip.unwrap_or(self.listen.ip());
        SocketAddr::new(ip, 0).to_string()
    }
}

pub struct Coordinator {
    pub(crate) cfg: Config,
    pub(crate) registry: Registry,
    /// Calls to peer coordinators (with the bearer token).
    pub(crate) peers: HttpClient,
    /// Destination-side migrations with resources on this system.
    pub(crate) incoming: Mutex<HashMap<String, Arc<DestEntry>>>,
    /// The stable endpoints of services of this system (the Frontman).
    pub(crate) exposures: Exposures,
}

impl Coordinator {
    pub fn new(cfg: Config) -> Arc<Coordinator> {
        let peers = HttpClient::with_tls(cfg.peer_token.clone(), cfg.peer_tls.clone());
        Arc::new(Coordinator {
            cfg,
            registry: Registry::new(),
            peers,
            incoming: Mutex::new(HashMap::new()),
            exposures: Exposures::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) async fn containerd(&self) -> Result<Containerd> {
        Containerd::connect(&self.cfg.containerd_socket).await
    }

    /// Checks an `Authorization` header value: none (or not a bearer token) is Unauthorized
    /// (401), a token that is not ours Forbidden (403).
    pub fn authorize(&self, header: Option<&str>) -> Result<()> {
        let Some(expected) = &self.cfg.peer_token else {
            return Ok(());
        };
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthorized(
                    "this endpoint needs the coordinators' token (Authorization: Bearer)".into(),
                )
            })?;
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(Error::Forbidden("wrong token".into()))
        }
    }

    /// How clients reach this coordinator: `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.cfg.https {
            "https"
        } else {
            "http"
        }
    }

    pub(crate) fn incoming_entry(&self, id: &str) -> Option<Arc<DestEntry>> {
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub(crate) fn insert_incoming(&self, id: &str, e: Arc<DestEntry>) {
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), e);
    }

    pub(crate) fn remove_incoming(&self, id: &str) {
        self.incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the peer token file (trimmed; empty is an error).
pub fn read_token_file(path: &std::path::Path) -> Result<String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?;
    let t = s.trim();
    if t.is_empty() {
        return Err(Error::BadRequest(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    if t.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::BadRequest(format!(
            "the token file {} must hold one token without spaces",
            path.display()
        )));
    }
    Ok(t.to_string())
}

/// `n` random bytes in hex, from the kernel.
pub fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(crate::image::hex(&buf))
}

/// A fresh migration id: `m-` and 16 hex digits.
pub fn new_migration_id() -> Result<String> {
    Ok(format!("m-{}", random_hex(8)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(
            "a",
            "10.77.0.1:7400".parse().unwrap(),
            "/run/c.sock".into(),
            "/run/state".into(),
        )
    }

    #[test]
    fn stream_listen() {
        let mut c = cfg();
        assert_eq!(c.stream_listen(), "10.77.0.1:0");
        c.listen = "0.0.0.0:7400".parse().unwrap();
        assert_eq!(c.stream_listen(), "0.0.0.0:0");
        c.advertise_ip = Some("10.77.0.2".parse().unwrap());
        assert_eq!(c.stream_listen(), "10.77.0.2:0");
        c.advertise_ip = Some("::1".parse().unwrap());
        assert_eq!(c.stream_listen(), "[::1]:0");
    }

    #[test]
    fn authorization() {
        let mut c = cfg();
        c.peer_token = Some("s3cret".into());
        let co = Coordinator::new(c);
        assert!(co.authorize(Some("Bearer s3cret")).is_ok());
        for missing in [None, Some("s3cret"), Some("Basic s3cret"), Some("Bearer ")] {
            let e = co.authorize(missing).unwrap_err();
            assert_eq!(e.http_status(), 401, "{missing:?}");
        }
        for wrong in ["Bearer nope", "Bearer s3cret2", "Bearer s3cre"] {
            let e = co.authorize(Some(wrong)).unwrap_err();
            assert_eq!(e.http_status(), 403, "{wrong:?}");
        }
        let open = Coordinator::new(cfg());
        assert!(open.authorize(None).is_ok());
    }

    #[test]
    fn ids_and_tokens() {
        let a = new_migration_id().unwrap();
        let b = new_migration_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
        crate::api::validate_migration_id(&a).unwrap();
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }

    #[test]
    fn token_files() {
        let dir = std::env::temp_dir().join(format!("ums-coord-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "abc123\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "abc123");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_token_file(&f).is_err());
        std::fs::write(&f, "a b").unwrap();
        assert!(read_token_file(&f).is_err());
        assert!(read_token_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

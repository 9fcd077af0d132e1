//! TLS between coordinators and for `ums` clients (rustls with ring): the server's certificate
//! and key (`--tls-cert`, `--tls-key`), the CA that signs the peers' certificates (`--tls-ca`),
//! and a listener that serves the API over TLS. Peers authenticate with the bearer token inside
//! the TLS session; the CA authenticates the server to its callers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, warn};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// A client that opens a connection and never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!("TLS: {what} {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error("reading certificates from", path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error("parsing certificates in", path, e))?;
    if certs.is_empty() {
        return Err(tls_error("no certificate in", path, "empty PEM"));
    }
    Ok(certs)
}

/// The server side: certificate chain and private key, PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain = read_certs(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error("reading the key", key, e))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls_error("certificate and key", cert, e))?;
    Ok(Arc::new(cfg))
}

/// The client side: trusts the certificates signed by the CA in `ca` (PEM) only.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| tls_error("CA certificate", ca, e))?;
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Accepts TCP connections and hands over those whose TLS handshake succeeded. Handshakes run
/// in their own tasks, so a slow or silent client never holds up the others.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, cfg: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let tls = TlsAcceptor::from(cfg);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: wait a little rather than spin.
                        warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, peer)).await;
                        }
                        // A client that does not trust our CA ends here (it sends an alert).
                        Ok(Err(e)) => warn!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor task only ends when aborted, which happens with us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI in a
    /// scratch dir (removed on drop).
    pub(crate) struct TestPki {
        dir: PathBuf,
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (hack/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    impl TestPki {
        pub(crate) fn new(name: &str) -> TestPki {
            let dir = std::env::temp_dir().join(format!(
                "ums-tls-{name}-{}-{}",
                std::process::id(),
                crate::coordinator::random_hex(4).unwrap()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ];
            let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=test CA"];
            ca.extend(ec);
            ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
            openssl(&dir, &ca);
            let mut csr = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
            csr.extend(ec);
            csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
            openssl(&dir, &csr);
            std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                    "-out",
                    "server.pem",
                ],
            );
            TestPki {
                ca: dir.join("ca.pem"),
                cert: dir.join("server.pem"),
                key: dir.join("server.key"),
                dir,
            }
        }
    }

    impl Drop for TestPki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn configs_from_pem_files() {
        let pki = TestPki::new("cfg");
        assert!(super::server_config(&pki.cert, &pki.key).is_ok());
        assert!(super::client_config(&pki.ca).is_ok());
        // A key where the certificate should be, a missing file: clear errors.
        let e = super::client_config(&pki.key).unwrap_err();
        assert!(e.to_string().contains("TLS:"), "{e}");
        let e = super::server_config(&pki.cert, &pki.dir.join("nope")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}

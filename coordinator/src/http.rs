//! A small JSON-over-HTTP/1.1 client (http:// and, with a CA, https://): coordinator -> peer
//! coordinator, and `ums migrate` -> its coordinator.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, ErrorBody, Result};

/// The largest answer we read (records lists included).
const MAX_RESPONSE: usize = 16 << 20;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    bearer: Option<String>,
    /// Whether https:// URLs can be verified (a CA was given).
    tls: bool,
}

impl HttpClient {
    /// `bearer`: sent as `Authorization: Bearer <token>` on every request. http:// only.
    pub fn new(bearer: Option<String>) -> HttpClient {
        HttpClient::with_tls(bearer, None)
    }

    /// Also https:// when `tls` is given (see [`crate::tls::client_config`]: servers must
    /// present a certificate signed by its CA).
    pub fn with_tls(bearer: Option<String>, tls: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let has_tls = tls.is_some();
        // Without a CA nothing is trusted: https:// is refused in `call` before connecting.
        let cfg = tls.map(|c| (*c).clone()).unwrap_or_else(|| {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        });
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(https),
            bearer,
            tls: has_tls,
        }
    }

    pub async fn get<R: DeserializeOwned>(&self, url: &str, timeout: Duration) -> Result<R> {
        self.call::<(), R>(Method::GET, url, None, timeout).await
    }

    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R> {
        self.call(Method::POST, url, Some(body), timeout).await
    }

    /// GET of a text answer (`/metrics`).
    pub async fn get_text(&self, url: &str, timeout: Duration) -> Result<String> {
        let body = self.exchange(Method::GET, url, None, timeout).await?.1;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn delete<R: DeserializeOwned>(&self, url: &str, timeout: Duration) -> Result<R> {
        self.call::<(), R>(Method::DELETE, url, None, timeout).await
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R> {
        let payload = match body {
            Some(b) => Some(
                serde_json::to_vec(b)
                    .map_err(|e| Error::Internal(format!("encoding a request to {url}: {e}")))?,
            ),
            None => None,
        };
        let (status, body) = self.exchange(method, url, payload, timeout).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Peer {
            url: url.to_string(),
            status: Some(status),
            message: format!("unexpected answer: {e}"),
        })
    }

    /// One request; a non-2xx answer is an error with the server's message.
    async fn exchange(
        &self,
        method: Method,
        url: &str,
        payload: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes)> {
        let peer_err = |status: Option<u16>, message: String| Error::Peer {
            url: url.to_string(),
            status,
            message,
        };
        if url.starts_with("https://") && !self.tls {
            return Err(Error::BadRequest(format!(
                "{url}: https needs the CA certificate that signed the coordinators' \
                 certificates (--tls-ca, UMS_TLS_CA)"
            )));
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json");
        if payload.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = builder
            .body(Full::new(Bytes::from(payload.unwrap_or_default())))
            .map_err(|e| Error::BadRequest(format!("request to {url}: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| peer_err(None, format!("unreachable: {}", error_chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| peer_err(Some(status.as_u16()), format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| peer_err(None, format!("no answer within {}s", timeout.as_secs())))??;
        if !status.is_success() {
            let message = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => e.error,
                Err(_) => {
                    let text = String::from_utf8_lossy(&body);
                    let text = text.trim();
                    if text.is_empty() {
                        status.to_string()
                    } else {
                        format!("{status}: {}", text.chars().take(500).collect::<String>())
                    }
                }
            };
            return Err(peer_err(Some(status.as_u16()), message));
        }
        Ok((status.as_u16(), body))
    }
}

/// An error with its sources, `a: b: c`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

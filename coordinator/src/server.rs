//! The coordinator's HTTP/JSON API (see `api.rs` for the bodies, `openapi.json` for the
//! document served at `/openapi.json`), over plain HTTP or TLS.
//!
//! Every `/v1` endpoint needs the coordinators' bearer token when one is configured (401
//! without one, 403 with a wrong one, checked before the request is read); `/healthz`,
//! `/metrics` and `/openapi.json` are open.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use log::{info, warn};
use tokio::net::TcpListener;

use crate::api::{parse_body, validate_migration_id, Health, IncomingRequest, MigrateRequest};
use crate::approach::Capabilities;
use crate::coordinator::Coordinator;
use crate::error::{Error, ErrorBody};
use crate::expose_api;
use crate::logger::in_migration;
use crate::tls::TlsListener;

/// The OpenAPI 3 document of this API (kept next to the code: a unit test checks that it
/// names exactly the routes of [`routes`]).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Request bodies carry at most a spec: small.
const MAX_BODY: usize = 8 << 20;

type Shared = Arc<Coordinator>;

/// An error answered as JSON with its status.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody::from(&self.0))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// Runs `f` to completion even if the client goes away: hyper drops a handler's future when
/// its connection closes, which would leave a half-created container or a container marked as
/// migrating forever.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(f)
        .await
        .map_err(|e| ApiError(Error::Internal(format!("request handler failed: {e}"))))?
        .map_err(ApiError)
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> ApiResult {
    Ok((status, Json(v)).into_response())
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks, scrapers, API browsers).
    Open,
    /// Bearer token (when the coordinator has one).
    Token,
}

/// Every route of the API: path, method (as in the OpenAPI document), who may call it, handler.
/// A new endpoint is one line here and its operation in `openapi.json`.
pub fn routes() -> Vec<(&'static str, &'static str, Access, MethodRouter<Shared>)> {
    use Access::*;
    vec![
        ("/healthz", "get", Open, get(healthz)),
        ("/metrics", "get", Open, get(metrics)),
        ("/openapi.json", "get", Open, get(openapi)),
        ("/v1/migrate", "post", Token, post(migrate)),
        ("/v1/migrations", "get", Token, get(list)),
        ("/v1/migrations/incoming", "post", Token, post(incoming)),
        ("/v1/migrations/{id}", "get", Token, get(show)),
        ("/v1/migrations/{id}/restore", "post", Token, post(restore)),
        ("/v1/migrations/{id}/abort", "post", Token, post(abort)),
        ("/v1/expose", "get", Token, get(expose_api::list)),
        ("/v1/expose", "post", Token, post(expose_api::expose)),
        ("/v1/expose/{id}", "get", Token, get(expose_api::show)),
        (
            "/v1/expose/{id}",
            "delete",
            Token,
            delete(expose_api::unexpose),
        ),
        (
            "/v1/expose/{id}/resume",
            "post",
            Token,
            post(expose_api::resume),
        ),
    ]
}

pub fn router(c: Shared) -> Router {
    let (mut open, mut guarded) = (Router::new(), Router::new());
    for (path, _, access, handler) in routes() {
        match access {
            Access::Open => open = open.route(path, handler),
            Access::Token => guarded = guarded.route(path, handler),
        }
    }
    // route_layer: unknown paths stay 404 whatever the credentials.
    let guarded = guarded.route_layer(middleware::from_fn_with_state(c.clone(), require_token));
    open.merge(guarded)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(json_rejections))
        .with_state(c)
}

/// axum's own rejections (a body over [`MAX_BODY`]: 413, a malformed path, ...) are plain
/// text: answered as JSON errors like every other.
async fn json_rejections(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (error, kind) = if status == StatusCode::PAYLOAD_TOO_LARGE {
        (
            format!("the request body is larger than {MAX_BODY} bytes ({text})"),
            "payload_too_large",
        )
    } else if text.is_empty() {
        (status.to_string(), "bad_request")
    } else {
        (text, "bad_request")
    };
    let body = ErrorBody {
        error,
        kind: kind.into(),
    };
    (status, Json(body)).into_response()
}

/// Serves the API on `listener` until `shutdown` resolves; over TLS with `tls`.
pub async fn serve(
    c: Shared,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(c);
    match tls {
        Some(cfg) => {
            axum::serve(TlsListener::new(listener, cfg)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Refuses a request without the right token before its handler (and body) is touched.
async fn require_token(State(c): State<Shared>, req: Request, next: Next) -> Response {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match c.authorize(h) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            warn!("refused {} {}: {e}", req.method(), req.uri().path());
            let status = e.http_status();
            c.registry().metrics().refused(status);
            let mut resp = ApiError(e).into_response();
            if status == 401 {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(c): State<Shared>) -> Response {
    let text = c
        .registry()
        .metrics()
        .render(c.name(), &c.registry().running());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(c): State<Shared>) -> ApiResult {
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            name: c.name().to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Some(Capabilities::local().await),
        },
    )
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound("no such endpoint".into()))
}

async fn migrate(State(c): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: MigrateRequest = parse_body(&body)?;
    if req.dry_run {
        let survey = detached(async move { c.dry_run(req).await }).await?;
        return json(StatusCode::OK, &survey);
    }
    // How the client reached us, for the report's `source`.
    let source_url = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("{}://{h}", c.scheme()))
        .unwrap_or_else(|| format!("{}://{}", c.scheme(), c.config().listen));
    let accepted = detached(async move { c.start_migration(req, source_url).await }).await?;
    json(StatusCode::ACCEPTED, &accepted)
}

async fn list(State(c): State<Shared>) -> ApiResult {
    json(StatusCode::OK, &c.registry().list())
}

async fn show(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    validate_migration_id(&id)?;
    match c.registry().get(&id) {
        Some(r) => json(StatusCode::OK, &r),
        None => Err(Error::NotFound(format!("no migration {id} on system {}", c.name())).into()),
    }
}

async fn incoming(State(c): State<Shared>, body: Bytes) -> ApiResult {
    let req: IncomingRequest = parse_body(&body)?;
    validate_migration_id(&req.migration_id)?;
    let id = req.migration_id.clone();
    let resp = detached(async move { in_migration(&id, c.incoming(req)).await }).await?;
    json(StatusCode::CREATED, &resp)
}

async fn restore(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    validate_migration_id(&id)?;
    let resp = detached(async move { in_migration(&id, c.restore(&id)).await }).await?;
    json(StatusCode::OK, &resp)
}

async fn abort(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    validate_migration_id(&id)?;
    let scope = id.clone();
    let work = async move {
        let resp = c.abort_incoming(&id).await?;
        info!(
            "migration {}: abort answered: {}",
            resp.migration_id,
            resp.detail.join("; ")
        );
        Ok(resp)
    };
    let resp = detached(async move { in_migration(&scope, work).await }).await?;
    json(StatusCode::OK, &resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Config;
    use crate::http::HttpClient;
    use std::collections::BTreeSet;
    use std::time::Duration;

    /// A coordinator on loopback whose containerd socket does not exist; over TLS with `tls`.
    async fn start_with(
        token: Option<&str>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = Config::new(
            "t",
            addr,
            "/nonexistent/ums-test/containerd.sock".into(),
            "/nonexistent/ums-test/state".into(),
        );
        cfg.peer_token = token.map(str::to_string);
        cfg.https = tls.is_some();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let c = Coordinator::new(cfg);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(c, listener, tls, async {
            let _ = rx.await;
        }));
        (format!("{scheme}://{addr}"), tx)
    }

    async fn start(token: Option<&str>) -> (String, tokio::sync::oneshot::Sender<()>) {
        start_with(token, None).await
    }

    const T: Duration = Duration::from_secs(10);

    fn status_of(e: &Error) -> Option<u16> {
        match e {
            Error::Peer { status, .. } => *status,
            _ => None,
        }
    }

    #[tokio::test]
    async fn health_and_errors_are_json() {
        let (base, _stop) = start(Some("tok")).await;
        let open = HttpClient::new(None);
        let h: Health = open.get(&format!("{base}/healthz"), T).await.unwrap();
        assert_eq!(h.name, "t");
        assert_eq!(h.status, "ok");
        let peer = HttpClient::new(Some("tok".into()));

        // Bad JSON.
        let e = peer
            .post::<_, serde_json::Value>(&format!("{base}/v1/migrate"), &"not an object", T)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(400), "{e}");
        assert!(e.to_string().contains("invalid JSON body"), "{e}");

        // Bad reference.
        let e = peer
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrate"),
                &serde_json::json!({"ref": "web1", "to": "http://127.0.0.1:1"}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(400), "{e}");
        assert!(e.to_string().contains("NAMESPACE/NAME"), "{e}");

        // Bad destination URL.
        let e = peer
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrate"),
                &serde_json::json!({"ref": "default/web1", "to": "b:7400"}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(400), "{e}");

        // With the token: bad JSON is 400, unknown migrations 404.
        let e = peer
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrations/incoming"),
                &serde_json::json!({"migration_id": "m-1"}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(400), "{e}");
        let e = peer
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrations/m-1/restore"),
                &serde_json::json!({}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(404), "{e}");
        let e = peer
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrations/m-1/abort"),
                &serde_json::json!({}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(404), "{e}");

        // Listing and unknown paths.
        let l: Vec<crate::api::Record> =
            peer.get(&format!("{base}/v1/migrations"), T).await.unwrap();
        assert!(l.is_empty());
        let e = peer
            .get::<serde_json::Value>(&format!("{base}/v1/migrations/m-404"), T)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(404), "{e}");
        let e = open
            .get::<serde_json::Value>(&format!("{base}/nope"), T)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(404), "{e}");
    }

    #[tokio::test]
    async fn missing_token_is_401_and_wrong_token_403_before_anything_runs() {
        let (base, _stop) = start(Some("tok")).await;
        let clients = [
            (HttpClient::new(None), 401),
            (HttpClient::new(Some("nope".into())), 403),
        ];
        // A valid request: it would start a migration (and fail on containerd) with the token.
        let migrate = serde_json::json!({"ref": "default/web1", "to": "http://127.0.0.1:1"});
        for (client, want) in &clients {
            for (method, path) in [
                ("post", "/v1/migrate"),
                ("get", "/v1/migrations"),
                ("get", "/v1/migrations/m-1"),
                ("post", "/v1/migrations/incoming"),
                ("post", "/v1/migrations/m-1/restore"),
                ("post", "/v1/migrations/m-1/abort"),
            ] {
                let url = format!("{base}{path}");
                let e = if method == "get" {
                    client.get::<serde_json::Value>(&url, T).await
                } else {
                    client.post::<_, serde_json::Value>(&url, &migrate, T).await
                }
                .unwrap_err();
                assert_eq!(status_of(&e), Some(*want), "{method} {path}: {e}");
            }
        }
        // Nothing was started, and the refusals are counted.
        let peer = HttpClient::new(Some("tok".into()));
        let l: Vec<crate::api::Record> =
            peer.get(&format!("{base}/v1/migrations"), T).await.unwrap();
        assert!(l.is_empty(), "{l:?}");
        let open = HttpClient::new(None);
        let m = open.get_text(&format!("{base}/metrics"), T).await.unwrap();
        assert!(
            m.contains("ums_http_refused_total{system=\"t\",code=\"401\"} 6"),
            "{m}"
        );
        assert!(
            m.contains("ums_http_refused_total{system=\"t\",code=\"403\"} 6"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn oversized_bodies_are_json_413() {
        let (base, _stop) = start(None).await;
        let big = serde_json::json!({
            "ref": "default/web1", "to": "http://127.0.0.1:1", "pad": "x".repeat(MAX_BODY)
        });
        let e = HttpClient::new(None)
            .post::<_, serde_json::Value>(&format!("{base}/v1/migrate"), &big, T)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(413), "{e}");
        // The client found a JSON error body (it quotes a text body with its status).
        assert!(
            e.to_string().contains("is larger than 8388608 bytes"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn containerd_down_is_a_clear_error_and_frees_the_container() {
        let (base, _stop) = start(None).await;
        let open = HttpClient::new(None);
        let req = serde_json::json!({"ref": "default/web1", "to": "http://127.0.0.1:1"});
        for _ in 0..2 {
            // Not 409 the second time: a refused migration does not hold the container.
            let e = open
                .post::<_, serde_json::Value>(&format!("{base}/v1/migrate"), &req, T)
                .await
                .unwrap_err();
            assert_eq!(status_of(&e), Some(500), "{e}");
            assert!(e.to_string().contains("containerd"), "{e}");
        }
        let l: Vec<crate::api::Record> =
            open.get(&format!("{base}/v1/migrations"), T).await.unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|r| r.state == crate::api::State::Failed));
        // Counted as failed source migrations.
        let m = open.get_text(&format!("{base}/metrics"), T).await.unwrap();
        assert!(
            m.contains(
                "ums_migrations_total{system=\"t\",approach=\"container-level\",role=\"source\",outcome=\"failed\"} 2"
            ),
            "{m}"
        );
    }

    /// `{path: {method: operation}}` of the OpenAPI document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                ops.insert((path.clone(), method.clone()));
            }
        }
        ops
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let routed: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|(p, m, _, _)| (p.to_string(), m.to_string()))
            .collect();
        let documented = documented();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from coordinator/openapi.json: {undocumented:?}; documented but not \
             routed: {unrouted:?}"
        );
        // Each operation's security says what the router enforces, and every $ref resolves.
        for (path, method, access, _) in routes() {
            let op = &doc["paths"][path][method];
            let secured = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            assert_eq!(
                secured,
                access == Access::Token,
                "{method} {path}: security"
            );
            if secured {
                for code in ["401", "403"] {
                    assert!(
                        op["responses"].get(code).is_some(),
                        "{method} {path}: {code}"
                    );
                }
            }
        }
        let text = OPENAPI;
        for r in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref {name}"
            );
        }
    }

    #[test]
    fn openapi_schemas_name_the_fields_we_send() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let check = |schema: &str, v: serde_json::Value| {
            let props = doc["components"]["schemas"][schema]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("schema {schema}"));
            for k in v.as_object().unwrap().keys() {
                assert!(props.contains_key(k), "{schema}: field {k} not documented");
            }
            for r in doc["components"]["schemas"][schema]["required"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                assert!(v.get(r).is_some(), "{schema}: required {r} not sent");
            }
        };
        let report = crate::api::tests::sample_report();
        check("Report", serde_json::to_value(&report).unwrap());
        let rec = crate::api::Record {
            migration_id: "m".into(),
            container: "default/web1".into(),
            approach: crate::approach::Approach::Container.as_str().into(),
            role: crate::api::Role::Source,
            peer: "b".into(),
            phase: crate::api::Phase::Done,
            state: crate::api::State::Completed,
            bytes: 1,
            started_at_ms: 1,
            elapsed_ms: 1,
            phases_ms: Default::default(),
            error: Some("x".into()),
            error_kind: Some("y".into()),
            note: Some("z".into()),
            result: Some(report),
        };
        check("Record", serde_json::to_value(&rec).unwrap());
        check(
            "Health",
            serde_json::to_value(Health {
                status: "ok".into(),
                name: "a".into(),
                version: "1".into(),
                capabilities: None,
            })
            .unwrap(),
        );
        check(
            "Error",
            serde_json::to_value(ErrorBody::from(&Error::Forbidden("x".into()))).unwrap(),
        );
    }

    #[tokio::test]
    async fn serves_its_openapi_document_and_every_documented_route() {
        let (base, _stop) = start(Some("tok")).await;
        let peer = HttpClient::new(Some("tok".into()));
        let doc: serde_json::Value = peer.get(&format!("{base}/openapi.json"), T).await.unwrap();
        assert_eq!(
            doc,
            serde_json::from_str::<serde_json::Value>(OPENAPI).unwrap()
        );
        // Every documented operation reaches a handler: never the fallback's "no such
        // endpoint", never 405.
        for (path, method) in documented() {
            let url = format!("{base}{}", path.replace("{id}", "m-1"));
            let res = match method.as_str() {
                "get" if path == "/metrics" => Ok(serde_json::Value::Null),
                "get" => peer.get::<serde_json::Value>(&url, T).await,
                "post" => peer.post::<_, serde_json::Value>(&url, &"x", T).await,
                "delete" => peer.delete::<serde_json::Value>(&url, T).await,
                other => panic!("method {other} not exercised here"),
            };
            if let Err(e) = res {
                let s = e.to_string();
                assert!(
                    !s.contains("no such endpoint") && status_of(&e) != Some(405),
                    "{method} {path}: {s}"
                );
            }
        }
    }

    #[tokio::test]
    async fn tls_with_the_ca_and_refused_without_it() {
        let dir = crate::tls::tests::TestPki::new("server");
        let cfg = crate::tls::server_config(&dir.cert, &dir.key).unwrap();
        let (base, _stop) = start_with(Some("tok"), Some(cfg)).await;
        assert!(base.starts_with("https://127.0.0.1:"), "{base}");
        let ca = crate::tls::client_config(&dir.ca).unwrap();
        let good = HttpClient::with_tls(Some("tok".into()), Some(ca));
        let h: Health = good.get(&format!("{base}/healthz"), T).await.unwrap();
        assert_eq!(h.name, "t");
        let l: Vec<crate::api::Record> =
            good.get(&format!("{base}/v1/migrations"), T).await.unwrap();
        assert!(l.is_empty());

        // No CA configured: refused locally with a clear error.
        let e = HttpClient::new(Some("tok".into()))
            .get::<Health>(&format!("{base}/healthz"), T)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--tls-ca"), "{e}");
        // Another CA: the handshake fails.
        let other = crate::tls::tests::TestPki::new("other");
        let stranger = HttpClient::with_tls(
            Some("tok".into()),
            Some(crate::tls::client_config(&other.ca).unwrap()),
        );
        let e = stranger
            .get::<Health>(&format!("{base}/healthz"), T)
            .await
            .unwrap_err();
        assert!(
            status_of(&e).is_none() && e.to_string().to_lowercase().contains("certificate"),
            "{e}"
        );
        // Plain HTTP to the TLS port gets no answer it can read.
        let plain = base.replace("https://", "http://");
        assert!(HttpClient::new(None)
            .get::<Health>(&format!("{plain}/healthz"), T)
            .await
            .is_err());
        // Over TLS, the token is still needed.
        let e = HttpClient::with_tls(None, Some(crate::tls::client_config(&dir.ca).unwrap()))
            .get::<serde_json::Value>(&format!("{base}/v1/migrations"), T)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(401), "{e}");
    }
}

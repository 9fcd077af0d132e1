//! The coordinator's HTTP/JSON API (see `api.rs` for the bodies).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use log::{info, warn};
use tokio::net::TcpListener;

use crate::api::{parse_body, validate_migration_id, Health, IncomingRequest, MigrateRequest};
use crate::coordinator::Coordinator;
use crate::error::{Error, ErrorBody};

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

pub fn router(c: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/migrate", post(migrate))
        .route("/v1/migrations", get(list))
        .route("/v1/migrations/incoming", post(incoming))
        .route("/v1/migrations/{id}", get(show))
        .route("/v1/migrations/{id}/restore", post(restore))
        .route("/v1/migrations/{id}/abort", post(abort))
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

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    c: Shared,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(c))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz(State(c): State<Shared>) -> ApiResult {
    json(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            name: c.name().to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
    )
}

async fn not_found() -> ApiError {
    ApiError(Error::NotFound("no such endpoint".into()))
}

fn authorize(c: &Coordinator, headers: &HeaderMap) -> Result<(), ApiError> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    c.authorize(h).map_err(|e| {
        warn!("refused a peer call: {e}");
        ApiError(e)
    })
}

async fn migrate(State(c): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: MigrateRequest = parse_body(&body)?;
    // How the client reached us, for the report's `source`.
    let source_url = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| format!("http://{}", c.config().listen));
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

async fn incoming(State(c): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&c, &headers)?;
    let req: IncomingRequest = parse_body(&body)?;
    let resp = detached(async move { c.incoming(req).await }).await?;
    json(StatusCode::CREATED, &resp)
}

async fn restore(State(c): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&c, &headers)?;
    let resp = detached(async move { c.restore(&id).await }).await?;
    json(StatusCode::OK, &resp)
}

async fn abort(State(c): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    authorize(&c, &headers)?;
    let resp = detached(async move { c.abort_incoming(&id).await }).await?;
    info!(
        "migration {}: abort answered: {}",
        resp.migration_id,
        resp.detail.join("; ")
    );
    json(StatusCode::OK, &resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::Config;
    use crate::http::HttpClient;
    use std::time::Duration;

    /// A coordinator on loopback whose containerd socket does not exist.
    async fn start(token: Option<&str>) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = Config::new(
            "t",
            addr,
            "/nonexistent/ums-test/containerd.sock".into(),
            "/nonexistent/ums-test/state".into(),
        );
        cfg.peer_token = token.map(str::to_string);
        let c = Coordinator::new(cfg);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(c, listener, async {
            let _ = rx.await;
        }));
        (format!("http://{addr}"), tx)
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

        // Bad JSON.
        let e = open
            .post::<_, serde_json::Value>(&format!("{base}/v1/migrate"), &"not an object", T)
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(400), "{e}");
        assert!(e.to_string().contains("invalid JSON body"), "{e}");

        // Bad reference.
        let e = open
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
        let e = open
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrate"),
                &serde_json::json!({"ref": "default/web1", "to": "b:7400"}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(400), "{e}");

        // Peer endpoints need the token.
        let e = open
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrations/incoming"),
                &serde_json::json!({}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(401), "{e}");
        let e = open
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrations/m-1/abort"),
                &serde_json::json!({}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(401), "{e}");
        let wrong = HttpClient::new(Some("nope".into()));
        let e = wrong
            .post::<_, serde_json::Value>(
                &format!("{base}/v1/migrations/m-1/restore"),
                &serde_json::json!({}),
                T,
            )
            .await
            .unwrap_err();
        assert_eq!(status_of(&e), Some(401), "{e}");

        // With the token: bad JSON is 400, unknown migrations 404.
        let peer = HttpClient::new(Some("tok".into()));
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
            open.get(&format!("{base}/v1/migrations"), T).await.unwrap();
        assert!(l.is_empty());
        let e = open
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
    }
}

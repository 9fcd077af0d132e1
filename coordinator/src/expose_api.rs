//! The HTTP routes of the Frontman's API (bodies in `expose.rs`), merged into the
//! coordinator's router (`server::routes`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::parse_body;
use crate::coordinator::Coordinator;
use crate::expose::ExposeRequest;
use crate::server::ApiError;

type Shared = Arc<Coordinator>;
type ApiResult = Result<Response, ApiError>;

pub(crate) async fn expose(State(c): State<Shared>, body: Bytes) -> ApiResult {
    let req: ExposeRequest = parse_body(&body)?;
    let info = c.expose(req).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub(crate) async fn list(State(c): State<Shared>) -> ApiResult {
    Ok(Json(c.exposures().list()).into_response())
}

pub(crate) async fn show(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(c.exposure(&id)?).into_response())
}

pub(crate) async fn unexpose(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(c.unexpose(&id)?).into_response())
}

pub(crate) async fn resume(State(c): State<Shared>, Path(id): Path<String>) -> ApiResult {
    Ok(Json(c.resume_exposure(&id)?).into_response())
}

//! Process calls: register (`PUT`), show (`GET`) and finish.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{read_body, ProcessPath};
use super::AppState;
use crate::domain::{FinishStatus, ProcessInfo};
use crate::ports::{Registration, StoreError};

/// The contract's view of a process.
#[derive(Serialize)]
pub struct ProcessView {
    process_id: String,
    status: String,
    last_stream_id: String,
    message_count: u64,
    created_at: String,
    finished_at: Option<String>,
}

impl From<&ProcessInfo> for ProcessView {
    fn from(info: &ProcessInfo) -> Self {
        let timestamp = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        Self {
            process_id: info.process_id.to_string(),
            status: info.status.as_str().to_owned(),
            last_stream_id: info.last_stream_id().to_string(),
            message_count: info.last_seq,
            created_at: timestamp(info.created_at),
            finished_at: info.finished_at.map(timestamp),
        }
    }
}

pub async fn show(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
) -> Result<Json<ProcessView>, ApiError> {
    let info = state
        .store
        .process(&process)
        .await?
        .ok_or(StoreError::UnknownProcess(process))?;
    Ok(Json(ProcessView::from(&info)))
}

pub async fn register(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
) -> Result<Response, ApiError> {
    Ok(match state.writer.register(&process).await? {
        Registration::Created(info) => {
            (StatusCode::CREATED, Json(ProcessView::from(&info))).into_response()
        }
        Registration::Existing(info) => {
            (StatusCode::OK, Json(ProcessView::from(&info))).into_response()
        }
    })
}

#[derive(Deserialize)]
struct FinishRequest {
    status: String,
}

/// A finish body is a few bytes; anything much larger is not one.
const MAX_FINISH_BODY: usize = 64 * 1024;

pub async fn finish(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
    body: Body,
) -> Result<Json<ProcessView>, ApiError> {
    let body = read_body(body, MAX_FINISH_BODY).await?;
    let request: FinishRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected {{\"status\": \"succeeded\"}} (or failed, cancelled, …): {e}"),
        )
    })?;
    let status = FinishStatus::parse(&request.status)?;
    let info = state.writer.finish(&process, &status).await?;
    Ok(Json(ProcessView::from(&info)))
}

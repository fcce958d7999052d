//! Process calls: register (`PUT`), show (`GET`), finish, and the list of the
//! processes last active (`GET /processes`, JSON; the viewer's page is `viewer`'s).

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{read_body, MessagesQuery, ProcessPath};
use super::openapi::{ProcessIdParam, Refusals};
use super::AppState;
use crate::auth::{Grant, Processes};
use crate::domain::{wire_timestamp, FinishStatus, ProcessId, ProcessInfo, RecentProcess};
use crate::ports::{Registration, StoreError};

/// `GET /processes` lists this many processes unless `limit` says otherwise…
const DEFAULT_LIST_LIMIT: usize = 100;
/// …and never more than this.
const MAX_LIST_LIMIT: usize = 1000;

/// The contract's view of a process.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"process_id": "3f2b7c1e-issue-42", "status": "running",
    "last_stream_id": "42-0", "message_count": 42, "created_at": "2026-11-27T10:12:00.000000Z",
    "finished_at": null}))]
pub struct ProcessView {
    process_id: String,
    /// `running`, or the status it was finished with (`succeeded`, `failed`, …).
    status: String,
    /// The stream ID of its last message; `0-0` before the first.
    #[schema(pattern = "^[0-9]+-0$")]
    last_stream_id: String,
    message_count: u64,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
}

impl From<&ProcessInfo> for ProcessView {
    fn from(info: &ProcessInfo) -> Self {
        Self {
            process_id: info.process_id.to_string(),
            status: info.status.as_str().to_owned(),
            last_stream_id: info.last_stream_id().to_string(),
            message_count: info.last_seq,
            created_at: wire_timestamp(info.created_at),
            finished_at: info.finished_at.map(wire_timestamp),
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

#[utoipa::path(
    put,
    path = "/processes/{id}",
    tag = "processes",
    operation_id = "register_process",
    summary = "Register a process",
    description = "Idempotent: 201 when new, 200 when already known (running or finished). \
        Optional: the first append registers the process too.",
    params(ProcessIdParam),
    responses(
        (status = 201, description = "Registered.", body = ProcessView),
        (status = 200, description = "Already known.", body = ProcessView),
        (status = 400, description = "Malformed process id.", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = [])),
)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "succeeded"}))]
struct FinishRequest {
    /// `succeeded`, `failed`, `cancelled`, or another word: 1 to 64 characters of
    /// `A-Z a-z 0-9 . _ -`, not `running`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    status: String,
}

/// A finish body is a few bytes; anything much larger is not one.
const MAX_FINISH_BODY: usize = 64 * 1024;

#[utoipa::path(
    post,
    path = "/processes/{id}/finish",
    tag = "processes",
    operation_id = "finish_process",
    summary = "Finish a process",
    description = "Followers get the end event and their responses end; appends are refused from \
        now on (409). The same status again is a no-op (200); another status is a 409.",
    params(ProcessIdParam),
    request_body = FinishRequest,
    responses(
        (status = 200, description = "Finished (now, or before with the same status).",
            body = ProcessView),
        (status = 400, description = "Malformed process id, body or status.", body = ErrorBody),
        (status = 404, description = "No such process.", body = ErrorBody),
        (status = 409, description = "Already finished with another status (`status_conflict`).",
            body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB.", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = [])),
)]
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

/// One process in `GET /processes`.
#[derive(Serialize, utoipa::ToSchema)]
struct RecentView {
    #[serde(flatten)]
    process: ProcessView,
    /// When its last message was appended, or it was registered or finished.
    #[schema(format = DateTime)]
    last_activity_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProcessList {
    processes: Vec<RecentView>,
}

impl ProcessList {
    /// The list as shown, from the processes last active. The one place a listing is
    /// built, so that a filter (such as the caller's access) goes here.
    fn new(recent: Vec<RecentProcess>) -> Self {
        let processes = recent
            .iter()
            .map(|recent| RecentView {
                process: ProcessView::from(&recent.info),
                last_activity_at: wire_timestamp(recent.last_activity),
            })
            .collect();
        Self { processes }
    }
}

/// `GET /processes?limit=`: the processes last active, most recent first, as JSON.
#[utoipa::path(
    get,
    path = "/processes",
    tag = "processes",
    operation_id = "list_processes",
    summary = "The processes last active",
    description = "Most recent activity first; only the processes the token covers.",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
        description = "At most this many (1 to 1000, default 100).")),
    responses(
        (status = 200, description = "The list.", body = ProcessList),
        (status = 400, description = "Malformed `limit` or query string.", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    RawQuery(query): RawQuery,
) -> Result<Json<ProcessList>, ApiError> {
    let limit = MessagesQuery::parse(query.as_deref())?
        .limit(MAX_LIST_LIMIT)?
        .unwrap_or(DEFAULT_LIST_LIMIT);
    // A caller sees only the processes its token names: no way to learn of the others.
    let only: Option<Vec<ProcessId>> = match grant.processes() {
        Processes::All => None,
        Processes::Only(ids) => Some(ids.iter().cloned().collect()),
    };
    let recent = state.store.recent(limit, only.as_deref()).await?;
    Ok(Json(ProcessList::new(recent)))
}

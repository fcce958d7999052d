//! [`ApiError`]: the one error type of the HTTP layer, rendered as the contract's
//! `{"error": {"code": "…", "message": "…"}}`. Client mistakes say what to fix;
//! infrastructure failures are logged here and answered without internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::domain::DomainError;
use crate::ports::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        let code = match error {
            DomainError::InvalidProcessId => "invalid_process_id",
            DomainError::InvalidCursor(_) => "invalid_cursor",
            DomainError::InvalidStatus(_) => "invalid_status",
            DomainError::InvalidMessage(_) => "invalid_message",
            DomainError::TooManyMessages { .. } => {
                return Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_messages",
                    error.to_string(),
                )
            }
            DomainError::MessageTooLarge { .. } => {
                return Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "message_too_large",
                    error.to_string(),
                )
            }
        };
        Self::bad_request(code, error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::UnknownProcess(_) => Self::new(
                StatusCode::NOT_FOUND,
                "process_not_found",
                error.to_string(),
            ),
            StoreError::Finished { .. } => {
                Self::new(StatusCode::CONFLICT, "process_finished", error.to_string())
            }
            StoreError::StatusConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "status_conflict", error.to_string())
            }
            StoreError::Busy => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_busy",
                "every connection to the message store is busy; nothing was stored; retry later",
            ),
            StoreError::Unavailable(ref source) => {
                // The outage is logged once, when it starts, by the store's health.
                tracing::debug!(error = format!("{source:#}"), "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the message store is unavailable; nothing was stored; retry later",
                )
            }
        }
    }
}

/// Every error's body, as the OpenAPI document names it.
pub type ErrorBody = Body<'static>;

/// The contract's error body: `{"error": {"code": "…", "message": "…"}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = ErrorBody, example = json!({"error": {"code": "invalid_cursor",
    "message": "the cursor must be a stream ID such as 42-0"}}))]
pub struct Body<'a> {
    error: Detail<'a>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
struct Detail<'a> {
    /// Stable, for programs: `invalid_process_id`, `invalid_cursor`, `process_not_found`,
    /// `process_finished`, `unauthorized`, `store_unavailable`, …
    code: &'a str,
    /// For people: what went wrong and what to do.
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(Body {
                error: Detail {
                    code: self.code,
                    message: &self.message,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

//! `GET /metrics`: the process's metrics in the Prometheus text format (the list is in
//! [`crate::metrics`] and docs/operating.md). Open without a token: it names no process.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Reads the gauges that describe a state (pools, backends, degraded follows) as of
/// now, then renders every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    summary = "Prometheus metrics",
    description = "The process's metrics in the Prometheus text format (listed in \
        docs/operating.md). Names no process, so open without a token.",
    responses((status = 200, description = "The metrics.", body = String,
        content_type = "text/plain; version=0.0.4")),
    security(()),
)]
pub async fn scrape(State(state): State<AppState>) -> Response {
    state.store.record_metrics();
    state.feed.record_metrics();
    let open = state
        .config
        .limits
        .max_follows
        .saturating_sub(state.follows.available_permits());
    // Every follow polls the store while the feed is down (see `follow::Follower::quiet`).
    crate::metrics::follows_degraded(if state.feed.is_live() { 0 } else { open });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        state.metrics.render(),
    )
        .into_response()
}

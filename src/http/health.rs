//! `/healthz` (the process is up) and `/readyz` (its backing stores answer).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    summary = "The process is up",
    responses((status = 200, description = "Always, while the process serves.", body = Object,
        example = json!({"status": "ok"}))),
    security(()),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    summary = "PostgreSQL and Redis answer",
    description = "200 when the store and the live feed both answer (within 2 s), else 503 naming \
        which does not. `checks` names each backend with `up` or `down`.",
    responses(
        (status = 200, description = "Ready.", body = Object, example = json!({"status": "ready",
            "checks": {"postgres": "up", "redis": "up"}})),
        (status = 503,
            description = "A backend does not answer: the contract's error, plus `status` and \
            `checks`.", body = Object, example = json!({"error": {"code": "not_ready",
            "message": "redis does not answer"}, "status": "not_ready", "checks": {"postgres": "up",
            "redis": "down"}})),
    ),
    security(()),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (store, feed) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.feed.ping()),
    );
    let store_up = matches!(store, Ok(Ok(())));
    let feed_up = matches!(feed, Ok(Ok(())));
    let word = |up: bool| if up { "up" } else { "down" };
    let mut checks = serde_json::Map::new();
    checks.insert(state.store.name().into(), word(store_up).into());
    checks.insert(state.feed.name().into(), word(feed_up).into());
    if store_up && feed_up {
        return Json(json!({ "status": "ready", "checks": checks })).into_response();
    }
    let down: Vec<&str> = [(store_up, state.store.name()), (feed_up, state.feed.name())]
        .into_iter()
        .filter(|(up, _)| !up)
        .map(|(_, name)| name)
        .collect();
    let message = format!("{} does not answer", down.join(" and "));
    let body = json!({ "error": { "code": "not_ready", "message": message }, "status": "not_ready",
        "checks": checks });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

//! `GET /openapi.json`: the contract as an OpenAPI 3.1 document, generated from the code
//! (utoipa): each handler carries its `#[utoipa::path]` (route, parameters, headers,
//! media types, statuses), and the bodies are the schemas of the types the handlers
//! serialize. A test holds the router and the document to the same routes and methods,
//! so a route added without its description fails the suite.
//!
//! What one schema cannot say is said in the descriptions: a message's JSON is stored
//! and sent as the writer's bytes (the service never builds it as a struct), so
//! [`Message`] and [`NewMessage`] describe that JSON; a follow is a stream whose items
//! are described per media type.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use super::error::ErrorBody;
use super::{health, messages, metrics, processes, viewer};

/// Names of the security schemes (one per place a token may come from).
pub const BEARER: &str = "bearer";
pub const QUERY_TOKEN: &str = "access_token";
pub const COOKIE_TOKEN: &str = "cookie";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-stream",
        description = "Follow a coding agent's messages live: durable append to PostgreSQL, live \
            delivery over Redis Streams, exact resumable follows over Server-Sent Events and \
            NDJSON, and the JSON array the existing API answers. The contract is in \
            docs/contract.md; this document is generated from the code that serves it.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        health::healthz,
        health::readyz,
        metrics::scrape,
        document,
        viewer::index,
        viewer::asset,
        processes::list,
        viewer::show,
        processes::register,
        processes::finish,
        messages::read,
        messages::append,
        messages::read_ndjson,
        messages::webhook,
    ),
    components(schemas(Message, NewMessage, super::error::ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "probes", description = "Open to all: orchestrators and scrapers carry no token."),
        (name = "processes", description = "A process: one run of a coding agent."),
        (name = "messages",
            description = "What the agent said and did, in order, as a JSON array or a follow."),
        (name = "viewer", description = "The web viewer's pages and assets."),
    ),
)]
pub struct ApiDoc;

/// The security schemes: a token (a JWT signed by the service's secret) as a bearer
/// header, an `access_token` query parameter (for a browser's EventSource), or the
/// viewer's cookie (reads only).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token minted with `agent-stream token` (HS256, the \
                        service's secret): `read` or `write` scope, for some processes or all.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                super::ACCESS_TOKEN,
                "The same token as a query parameter, for clients that cannot set headers (a \
                    browser's EventSource).",
            ))),
        );
        components.add_security_scheme(
            COOKIE_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::config::COOKIE,
                "Set by a page opened with `?access_token=`; authorizes reads only.",
            ))),
        );
    }
}

/// What any route behind a token may answer besides its own statuses.
#[derive(IntoResponses)]
#[allow(dead_code)] // the statuses `auth`, `head_limit` and `time_limit` answer with
pub enum Refusals {
    /// No token, or not a valid one; `WWW-Authenticate: Bearer` says which. A browser
    /// opening a page (`Accept` ranking `text/html` first) gets an HTML page that says how
    /// to get a token instead.
    #[response(status = 401, content_type = "application/json")]
    Unauthorized(ErrorBody),
    /// The token does not cover this process, or a `read` token asks to write.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The request head is over `--max-header-bytes` or 100 fields.
    #[response(status = 431)]
    HeadersTooLarge(ErrorBody),
    /// A backing store the call needs is down or busy, or the call took longer than
    /// `--request-timeout`; with `Retry-After`. Nothing was stored.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// A stored message as every read sends it: the writer's six fields as they were sent,
/// then the service's `stream_id` and `created_at`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "6f0c1b3e-8a1d-4f5e-9b7a-0c2d4e6f8a1b", "type": "AssistantMessage",
    "turn": 7, "agent": "CLAUDE_CODE", "model": "claude-sonnet-4-5-20250929",
    "payload": {"content": [{"type": "text", "text": "Running the tests."}]}, "stream_id": "42-0",
    "created_at": "2026-11-27T10:15:03.123456Z"}))]
#[allow(dead_code)] // the JSON is the writer's bytes plus two fields, never this struct
pub struct Message {
    /// The writer's id, or a UUID made when it sent none.
    id: String,
    /// The agent SDK's message type (`AssistantMessage`, `UserMessage`, `SystemMessage`,
    /// `ResultMessage`, …).
    #[serde(rename = "type")]
    kind: String,
    turn: Option<i64>,
    /// As sent: a string, or any JSON value.
    agent: Option<serde_json::Value>,
    /// As sent: a string, or any JSON value (the existing worker sends `{"ai_model": …, "version":
    /// …}`).
    model: Option<serde_json::Value>,
    /// The message itself, never altered.
    payload: serde_json::Map<String, serde_json::Value>,
    /// `<seq>-0`: the message's position in its process, and the resume cursor.
    #[schema(pattern = "^[0-9]+-0$")]
    stream_id: String,
    /// When PostgreSQL stored it (RFC 3339, microseconds, UTC).
    #[schema(format = DateTime)]
    created_at: String,
}

/// A message to append: the existing API's `AgentMessage`. Numbers beyond a double,
/// lone surrogates and nesting deeper than 64 are refused (I-JSON), so that every
/// client can read back what is stored.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "m1", "type": "AssistantMessage", "turn": 7, "agent": "CLAUDE_CODE",
    "model": "claude-sonnet-4-5-20250929", "payload": {"content": [{"type": "text",
    "text": "Running the tests."}]}}))]
#[allow(dead_code)] // parsed by `domain::NewMessage`, which keeps the payload's bytes
pub struct NewMessage {
    /// The writer's id: sending one makes the append idempotent (the same id again
    /// stores nothing and answers the first `stream_id`). A UUID is made when absent.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    turn: Option<i64>,
    agent: Option<serde_json::Value>,
    model: Option<serde_json::Value>,
    payload: serde_json::Map<String, serde_json::Value>,
}

/// An append's body: one message, or an array of at least one of them, in order.
pub struct AppendBody;

impl utoipa::PartialSchema for AppendBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder};
        use utoipa::openapi::Ref;
        OneOfBuilder::new()
            .description(Some(
                "One message, or an array of at least one of them, in order.",
            ))
            .item(Ref::from_schema_name("NewMessage"))
            .item(
                ArrayBuilder::new()
                    .items(Ref::from_schema_name("NewMessage"))
                    .min_items(Some(1)),
            )
            .into()
    }
}

impl ToSchema for AppendBody {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            "NewMessage".into(),
            <NewMessage as utoipa::PartialSchema>::schema(),
        ));
        NewMessage::schemas(schemas);
    }
}

/// The existing worker's notification: one message for the process it names.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"process_id": "3f2b7c1e-issue-42", "agent_message": {"id": "m1",
    "type": "AssistantMessage", "turn": 7, "agent": "CLAUDE_CODE",
    "model": {"ai_model": "claude-sonnet-4-5", "version": "20250929"},
    "payload": {"content": []}}}))]
#[allow(dead_code)] // parsed by `domain::NewMessage::parse_notification`
pub struct WebhookBody {
    /// The process (`processId` is accepted too).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    process_id: String,
    /// The message (`agentMessage` is accepted too).
    agent_message: NewMessage,
}

/// An append's answer: one `{id, stream_id}` for a message, an array of them (in the
/// body's order) for an array.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // built by `messages::append` from `AppendedView`s
pub enum AppendAnswer {
    One(super::messages::Appended),
    Many(Vec<super::messages::Appended>),
}

/// The viewer's assets.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // matched by `viewer::asset`
pub enum AssetName {
    #[serde(rename = "viewer.js")]
    Script,
    #[serde(rename = "viewer.css")]
    Style,
}

/// The `{id}` of every `/processes/{id}…` route.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by `extract::ProcessPath`
pub struct ProcessIdParam {
    /// The process: 1 to 128 characters of `A-Z a-z 0-9 . _ -` (UUIDs fit). Anything
    /// else is a 400.
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$", example = "3f2b7c1e-issue-42")]
    id: String,
}

/// Where a read starts, and how much it takes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by `extract::MessagesQuery`
pub struct ReadParams {
    /// The cursor: only messages with a greater stream ID are sent. `<seq>-0`, or a bare
    /// `<seq>`; none, `0` or `0-0` is the beginning. Wins over `Last-Event-ID`.
    #[param(pattern = "^[0-9]+(-[0-9]+)?$", example = "41-0")]
    after: Option<String>,
    /// At most this many messages (1 to 10000) in a JSON array; the next page starts
    /// `after` the last one. Without it, every message after the cursor.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// `false`: the JSON array whatever `Accept` says. `true`: a follow (SSE when
    /// `Accept` names `text/event-stream`, NDJSON otherwise).
    follow: Option<bool>,
}

/// The headers a read takes.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `extract::MessagesQuery::cursor`, `Format::negotiate`, the
                    // snapshot's `Validator` and the compression layer
pub struct ReadHeaders {
    /// The cursor as a browser's EventSource resends it on reconnecting; `after` wins
    /// when both are given.
    #[param(
        rename = "Last-Event-ID",
        nullable = false,
        pattern = "^[0-9]+(-[0-9]+)?$"
    )]
    last_event_id: Option<String>,
    /// `text/event-stream`: an SSE follow. `application/x-ndjson`: an NDJSON follow. None,
    /// `*/*` or `application/json` (with `follow` not `true`): the JSON array.
    #[param(rename = "Accept", nullable = false)]
    accept: Option<String>,
    /// The `ETag` of a JSON array read before (`*`, or a list; a `W/` tag matches its
    /// identity form): 304 if the array would be the same.
    #[param(rename = "If-None-Match", nullable = false)]
    if_none_match: Option<String>,
    /// `gzip`, `br` or `zstd` (by preference and q-values): the JSON array and the
    /// follows come compressed with it, each live event flushed at once. `/metrics` and
    /// answers under 32 bytes go as they are.
    #[param(rename = "Accept-Encoding", nullable = false)]
    accept_encoding: Option<String>,
}

/// The rendered document, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    summary = "This document",
    description = "The contract as an OpenAPI 3.1 document, generated from the code. Open, like \
        the probes.",
    responses((status = 200, description = "The OpenAPI document.",
        content_type = "application/json", body = Object)),
    security(()),
)]
pub async fn document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOCUMENT.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use crate::http::{router, AppState, HttpConfig};
    use crate::startup::Backends;

    /// The route patterns of a router. axum lists them nowhere but in its `Debug`
    /// output (`node: Node { paths: {RouteId(0): "/healthz", …} }`), so they are read
    /// from there; should axum change that output, no route is found and the test says so.
    fn routes_of(app: &axum::Router) -> BTreeSet<String> {
        let debug = format!("{app:?}");
        let Some(after) = debug.split_once("paths: {").map(|(_, after)| after) else {
            return BTreeSet::new();
        };
        // The quoted strings up to the `}` that closes the map.
        let mut routes = BTreeSet::new();
        let mut quoted: Option<String> = None;
        for c in after.chars() {
            match (&mut quoted, c) {
                (None, '}') => break,
                (None, '"') => quoted = Some(String::new()),
                (Some(route), '"') => {
                    routes.insert(std::mem::take(route));
                    quoted = None;
                }
                (Some(route), c) => route.push(c),
                (None, _) => {}
            }
        }
        routes
    }

    /// A request to `route` with its parameters filled in.
    fn request(method: &Method, route: &str) -> Request<Body> {
        let uri = route.replace("{id}", "p1").replace("{name}", "viewer.js");
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("a valid request")
    }

    #[tokio::test]
    async fn every_route_of_the_router_is_in_the_document_with_exactly_its_methods() {
        let backends = Backends::embedded(16);
        let app = router(AppState::new(
            backends.store,
            backends.feed,
            HttpConfig::default(),
            CancellationToken::new(),
        ));
        let routes = routes_of(&app);
        assert!(
            routes.len() > 5,
            "the router's routes could not be read from its Debug output (did axum change it?): \
                {routes:?}"
        );
        let document = ApiDoc::openapi();
        let documented: BTreeSet<String> = document.paths.paths.keys().cloned().collect();
        assert_eq!(
            routes, documented,
            "each route is described in the OpenAPI document (a #[utoipa::path] on its handler, \
                listed in ApiDoc)"
        );

        // Each method a route answers is described, and each described method is answered.
        for route in &routes {
            let item = &document.paths.paths[route];
            for (method, described) in [
                (Method::GET, item.get.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::DELETE, item.delete.is_some()),
                (Method::PATCH, item.patch.is_some()),
            ] {
                let response = app
                    .clone()
                    .oneshot(request(&method, route))
                    .await
                    .expect("the router answers");
                let answered = response.status() != StatusCode::METHOD_NOT_ALLOWED;
                assert_eq!(
                    answered,
                    described,
                    "{method} {route}: answered {}, described {described}",
                    response.status()
                );
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_contract_headers_and_media_types() {
        let document: serde_json::Value =
            serde_json::from_str(&DOCUMENT).expect("the document is JSON");
        assert_eq!(document["openapi"], "3.1.0");
        let read = &document["paths"]["/processes/{id}/messages"]["get"];
        let parameters: Vec<&str> = read["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            parameters,
            [
                "id",
                "after",
                "limit",
                "follow",
                "Last-Event-ID",
                "Accept",
                "If-None-Match",
                "Accept-Encoding"
            ]
        );
        // The cache validator and its 304.
        assert!(read["responses"]["200"]["headers"]["ETag"].is_object());
        assert!(read["responses"]["304"]["headers"]["ETag"].is_object());
        let media: Vec<&String> = read["responses"]["200"]["content"]
            .as_object()
            .expect("content")
            .keys()
            .collect();
        assert_eq!(
            media,
            [
                "application/json",
                "application/x-ndjson",
                "text/event-stream"
            ]
        );
        for status in ["400", "401", "403", "503"] {
            assert_eq!(
                read["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{status}"
            );
        }
        for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            assert_eq!(
                document["paths"][open]["get"]["security"],
                serde_json::json!([{}]),
                "{open} needs no token"
            );
        }
    }
}

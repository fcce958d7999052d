//! Message calls: append (`POST`, and the existing worker's webhook), and read (`GET`)
//! as a follow over SSE or NDJSON, or as the JSON array of the messages.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tracing::{Instrument, Span};

use super::auth::require;
use super::compression;
use super::error::{ApiError, ErrorBody};
use super::extract::{read_body, Format, MessagesQuery, ProcessPath};
use super::openapi::{
    AppendAnswer, AppendBody, Message, ProcessIdParam, ReadHeaders, ReadParams, Refusals,
    WebhookBody,
};
use super::AppState;
use crate::auth::{Grant, Scope};
use crate::domain::{end_json, end_line, Cursor, NewMessage, ProcessId, ProcessInfo};
use crate::follow::{FollowEvent, HistoryReader};
use crate::metrics::FollowMetrics;
use crate::ports::{AppendOutcome, StoreError};

/// A snapshot's `limit` may not exceed this.
const MAX_LIMIT: usize = 10_000;
/// The `retry:` hint of an SSE follow that the server's shutdown ended.
const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);
/// Bytes of NDJSON gathered into one piece of the body when several messages are ready
/// at once (a catch-up): past it the piece goes, so a piece holds at most this plus one
/// message.
const NDJSON_PIECE_BYTES: usize = 64 * 1024;

/// What an append answers per message.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Appended, example = json!({"id": "m1", "stream_id": "1-0"}))]
pub struct AppendedView<'a> {
    id: &'a str,
    #[schema(pattern = "^[0-9]+-0$")]
    stream_id: String,
}

/// The OpenAPI document's name for [`AppendedView`].
pub type Appended = AppendedView<'static>;

#[utoipa::path(
    post,
    path = "/processes/{id}/messages",
    tag = "messages",
    operation_id = "append_messages",
    summary = "Append one message, or an array of them in order",
    description = "One transaction: each message gets the next seq of its process, then goes to \
        the live feed. The process is registered if new. A message whose `id` is already stored \
        for this process is not stored again: its first `stream_id` is answered (200 when every \
        message was already stored). A rejected body stores nothing.",
    params(ProcessIdParam),
    request_body(description = "One message, or a JSON array of them (at most \
        `--max-batch-messages`, 1000 by default).", content = AppendBody),
    responses(
        (status = 201,
            description = "Stored: one `{id, stream_id}`, or an array of them in the body's order.",
            body = AppendAnswer),
        (status = 200,
            description = "Every message was stored before (same ids): their first stream IDs.",
            body = AppendAnswer),
        (status = 400,
            description = "Malformed process id or body: not a message or an array of them, or \
            not I-JSON.", body = ErrorBody),
        (status = 409, description = "The process is finished (`process_finished`).",
            body = ErrorBody),
        (status = 413,
            description = "A message over `--max-message-bytes` (1 MiB), a body over \
            `--max-body-bytes`, or too many messages.", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = [])),
)]
pub async fn append(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, state.config.limits.max_body_bytes).await?;
    let (messages, is_batch) = NewMessage::parse_body(
        &body,
        state.config.limits.max_message_bytes,
        state.config.limits.max_batch_messages,
    )?;
    let outcome = state.writer.append(&process, &messages).await?;
    Ok(appended(&outcome, is_batch))
}

/// `POST /webhooks/messages`: the existing worker's notification of one message,
/// appended exactly as `POST /processes/{id}/messages` appends it. The body names the
/// process, so the token is checked against it here, after parsing and before storing.
#[utoipa::path(
    post,
    path = "/webhooks/messages",
    tag = "messages",
    operation_id = "webhook_message",
    summary = "The existing worker's notification of one message",
    description = "Appends `agent_message` to `process_id` exactly as `POST \
        /processes/{id}/messages` would (registering the process if new; an `id` already stored \
        answers its first `stream_id` with 200). `processId` and `agentMessage` (camelCase) are \
        accepted too. The token must allow writing the process the body names.",
    request_body = WebhookBody,
    responses(
        (status = 201, description = "Stored.", body = Appended),
        (status = 200, description = "Already stored (same id): its first stream ID.",
            body = Appended),
        (status = 400, description = "Malformed body, process id or message, or not I-JSON.",
            body = ErrorBody),
        (status = 409, description = "The process is finished (`process_finished`).",
            body = ErrorBody),
        (status = 413, description = "The message or the body is over the limit.",
            body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = [])),
)]
pub async fn webhook(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(body, state.config.limits.max_body_bytes).await?;
    let (process, message) =
        NewMessage::parse_notification(&body, state.config.limits.max_message_bytes)?;
    require(&grant, &process, Scope::Write)?;
    let outcome = state
        .writer
        .append(&process, std::slice::from_ref(&message))
        .await?;
    Ok(appended(&outcome, false))
}

/// 201 when anything was stored, else 200 (every id was already stored), with each
/// message's `{id, stream_id}`: an array for a batch.
fn appended(outcome: &AppendOutcome, is_batch: bool) -> Response {
    let status = if outcome.results.iter().any(|r| r.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let views: Vec<AppendedView> = outcome
        .results
        .iter()
        .map(|r| AppendedView {
            id: &r.id,
            stream_id: r.stream_id.to_string(),
        })
        .collect();
    match (is_batch, views.first()) {
        (false, Some(view)) => (status, Json(view)).into_response(),
        _ => (status, Json(views)).into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/processes/{id}/messages",
    tag = "messages",
    operation_id = "read_messages",
    summary = "The messages after a cursor: a JSON array, or a follow",
    description = "By `Accept` and `follow`:\n\n- no `Accept`, `*/*` or `application/json` (and \
        `follow` not `true`), or `follow=false`: the JSON array of the messages after the cursor, \
        in order (what the existing API answers here). Without `limit`, every message after the \
        cursor.\n- `text/event-stream`: an SSE follow. Per message `id: <stream_id>`, `event: \
        message`, `data: <message JSON>`; then, once the process is finished, `event: end`, \
        `data: {\"status\": \"…\"}` with the id `<last seq>-1`, and the response ends. A comment \
        line at least every 15 s while idle. Reconnecting with the end's id gets 204.\n- \
        `application/x-ndjson`, or `follow=true` with any other `Accept`: an NDJSON follow, one \
        message per line, then `{\"event\": \"end\", \"status\": \"…\", \"stream_id\": \"<last seq>-1\"}`. An empty line at least every 15 s while idle.\n\nA process not known yet reads as empty: `[]`, or a follow that stays open and delivers from its first message on.",
    params(ProcessIdParam, ReadParams, ReadHeaders),
    responses(
        (status = 200,
            description = "The JSON array, or a follow (a stream that lasts until the process's \
            end or the client leaves). The array carries an `ETag` and a `Cache-Control` \
            (`immutable` once the process is finished, `no-cache` while it runs; `private` with \
            auth on).", headers(
            ("ETag" = String,
                description = "The JSON array's tag (strong; weak, `W/`, when compressed): send \
                it back in `If-None-Match`."),
            ("Cache-Control" = String,
                description = "`[private, ]max-age=31536000, immutable` for a finished process's \
                array, `[private, ]no-cache` for a running one's; `no-cache` for a follow."),
        ), content(
            (Vec<Message> = "application/json"),
            (String = "text/event-stream"),
            (String = "application/x-ndjson"),
        )),
        (status = 304,
            description = "The JSON array named by `If-None-Match` is still the same (nothing \
            appended, same cursor and limit): no body.", headers(
            ("ETag" = String, description = "The tag that matched."),
        )),
        (status = 204,
            description = "An SSE follow of a finished process from its end's id: nothing more \
            will come (a browser's EventSource stops for good)."),
        (status = 400,
            description = "Malformed process id, cursor (`after` or `Last-Event-ID`), `limit` or \
            `follow`.", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
pub async fn read(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = MessagesQuery::parse(query.as_deref())?;
    let format = Format::negotiate(&headers, query.follow()?);
    respond(state, process, &query, &headers, format).await
}

/// `/messages/stream`: the existing API's NDJSON path; `follow=false` still snapshots.
#[utoipa::path(
    get,
    path = "/processes/{id}/messages/stream",
    tag = "messages",
    operation_id = "follow_messages_ndjson",
    summary = "An NDJSON follow, whatever `Accept` says",
    description = "The existing API's streaming path: one message per line, then the end line \
        `{\"event\": \"end\", \"status\": \"…\", \"stream_id\": \"<last seq>-1\"}`; an empty line \
        at least every 15 s while idle. `follow=false` answers the JSON array instead.",
    params(ProcessIdParam, ReadParams, ReadHeaders),
    responses(
        (status = 200,
            description = "The follow (or, with `follow=false`, the JSON array, with its `ETag` \
            and `Cache-Control` as on `/messages`).", content(
            (String = "application/x-ndjson"),
            (Vec<Message> = "application/json"),
        )),
        (status = 304,
            description = "With `follow=false`: the JSON array named by `If-None-Match` is still \
            the same.", headers(
            ("ETag" = String, description = "The tag that matched."),
        )),
        (status = 400, description = "Malformed process id, cursor, `limit` or `follow`.",
            body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
pub async fn read_ndjson(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = MessagesQuery::parse(query.as_deref())?;
    let format = if query.follow()? == Some(false) {
        Format::Snapshot
    } else {
        Format::Ndjson
    };
    respond(state, process, &query, &headers, format).await
}

async fn respond(
    state: AppState,
    process: ProcessId,
    query: &MessagesQuery,
    headers: &HeaderMap,
    format: Format,
) -> Result<Response, ApiError> {
    let cursor = query.cursor(headers)?;
    let limit = query.limit(MAX_LIMIT)?;
    // A process not known yet reads as an empty running one: its snapshot is `[]`, and
    // a follow waits for its first message (the platform opens a process's page before
    // its agent has started).
    let info = state
        .store
        .process(&process)
        .await?
        .unwrap_or_else(|| ProcessInfo::not_known_yet(process));
    match format {
        Format::Snapshot => {
            let validator = Validator::of(&info, cursor, limit, state.config.auth.is_some());
            if validator.matches(headers) {
                return Ok(validator.not_modified(headers));
            }
            let mut response = snapshot(&state, info, cursor, limit).await?;
            validator.stamp(response.headers_mut());
            Ok(response)
        }
        Format::Sse if info.status.finished().is_some() && cursor.has_seen_end(info.last_seq) => {
            // The client has the end: 204 stops a browser's EventSource for good.
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Format::Sse => Ok(sse(&state, info, cursor)?),
        Format::Ndjson => Ok(ndjson(&state, info, cursor)?),
    }
}

/// The JSON array of the messages after `cursor`, up to the last one committed when
/// the call came in (`info.last_seq`), at most `limit`. It is read from the store as a
/// follow catches up ([`crate::follow::HistoryReader`], adr/0022): a history longer than
/// a first page as one stream of the store's while a stream slot is free, else in pages
/// that grow, as the client takes the body. So a response holds at most a few batches
/// or two pages in memory, however long the process, and a client that stops reading
/// stops the reads (its stream gives up its connection past the stall limit, and the
/// client is cut off by the write timeout). The first read happens before the head goes
/// out, so a store that is down is a 503 (where a follower would wait for it); a later
/// read that fails ends the body early, which the client sees as JSON that does not
/// parse (and asks again).
async fn snapshot(
    state: &AppState,
    info: ProcessInfo,
    cursor: Cursor,
    limit: Option<usize>,
) -> Result<Response, ApiError> {
    let mut pages = SnapshotBody {
        process: info.process_id.clone(),
        history: state.followers.read_history(
            info.process_id,
            cursor.after_seq(),
            info.last_seq,
            limit,
        ),
        opened: false,
        closed: false,
    };
    let first = pages.next_chunk().await?;
    if pages.finished() {
        // All of it in one piece: sent with its length, which also leaves a tiny one
        // (`[]`) uncompressed.
        let mut response = Response::new(Body::from(first.unwrap_or_default()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    let rest = futures::stream::unfold(Some(pages), |pages| async move {
        let mut pages = pages?;
        match pages.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(pages))),
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(process = %pages.process, error = format!("{:#}",
                    anyhow::Error::new(error)),
                    "a snapshot could not read the store: ending the body early");
                Some((
                    Err(std::io::Error::other("the store failed mid-snapshot")),
                    None,
                ))
            }
        }
    });
    let body = futures::stream::iter(first.map(Ok)).chain(rest);
    // Fused, here and in the follows: the compression layer polls a body once more after
    // its end (for trailers), which an `unfold` does not allow.
    let mut response = Response::new(Body::from_stream(body.fuse()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// How long a browser may keep a finished process's snapshot: a year, the longest
/// `max-age` caches are asked to honour.
const FINISHED_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Bumped if the snapshot's bytes for the same messages ever change (its framing), so
/// that no cache keeps the old form.
const SNAPSHOT_FORM: &str = "a1";
/// What a snapshot's answer varies with besides its URL: the format (`Accept`), the
/// cursor (`Last-Event-ID`), and the encoding (tower-http would add it, but not to a 304).
const SNAPSHOT_VARY: &str = "accept, last-event-id, accept-encoding";

/// The snapshot's cache validator, computed before anything is read. A snapshot holds
/// the messages after the cursor up to `last_seq` as it was when the call came in, at
/// most `limit`; a stored message never changes, and a process id is reused only by a
/// new registration (a new `created_at`: a recreated store or a process that retention
/// removed). So these name the content, for a running process as for a finished one;
/// the status is in it so that a finish turns a `no-cache` answer into an immutable one.
/// The tag is strong, made on the identity body (`compression::weaken_etag` makes it weak
/// on a compressed answer).
struct Validator {
    etag: String,
    cache_control: String,
}

impl Validator {
    fn of(info: &ProcessInfo, cursor: Cursor, limit: Option<usize>, private: bool) -> Self {
        let etag = format!(
            "\"{SNAPSHOT_FORM}.{}.{}.{}.{}.{}\"",
            info.created_at.timestamp_micros(),
            info.last_seq,
            info.status.as_str(),
            cursor.after_seq(),
            limit.map_or_else(|| "all".to_owned(), |limit| limit.to_string()),
        );
        // Only the caller's browser may keep what a token let it read.
        let scope = if private { "private, " } else { "" };
        let cache_control = if info.status.finished().is_some() {
            format!("{scope}max-age={}, immutable", FINISHED_MAX_AGE.as_secs())
        } else {
            // Kept, but asked about each time: a 304 while nothing was appended.
            format!("{scope}no-cache")
        };
        Self {
            etag,
            cache_control,
        }
    }

    /// Whether `If-None-Match` names this snapshot (`compression::matching_tag`).
    fn matches(&self, headers: &HeaderMap) -> bool {
        self.matching_tag(headers).is_some()
    }

    fn matching_tag<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        compression::matching_tag(headers, &self.etag)
    }

    /// The 304: the tag as the client holds it (weak if its copy was compressed), and
    /// the headers a 200 would carry.
    fn not_modified(&self, headers: &HeaderMap) -> Response {
        let etag = match self.matching_tag(headers) {
            Some(tag) if tag != "*" => tag,
            _ => &self.etag,
        };
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        self.stamp(response.headers_mut());
        if let Ok(etag) = HeaderValue::from_str(etag) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        response
    }

    fn stamp(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            (header::ETAG, &self.etag),
            (header::CACHE_CONTROL, &self.cache_control),
        ] {
            // Made of digits, a status word (`A-Z a-z 0-9 . _ -`) and ASCII punctuation.
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        headers.insert(header::VARY, HeaderValue::from_static(SNAPSHOT_VARY));
    }
}

/// Where a snapshot's body has got to: the history being read, and which of the
/// array's brackets went out.
struct SnapshotBody {
    history: HistoryReader,
    process: ProcessId,
    /// Whether `[` went out.
    opened: bool,
    /// Whether `]` went out.
    closed: bool,
}

impl SnapshotBody {
    /// Whether `]` went out.
    fn finished(&self) -> bool {
        self.closed
    }

    /// The next piece of the array: `[` and the first batch, then `,`-led batches, then
    /// `]` with the last (or alone); `None` once `]` went out.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.closed {
            return Ok(None);
        }
        let batch = self.history.next_batch().await?.unwrap_or_default();
        let mut chunk =
            BytesMut::with_capacity(batch.iter().map(|m| m.json.len() + 1).sum::<usize>() + 2);
        if !self.opened {
            chunk.put_u8(b'[');
        }
        for (i, message) in batch.iter().enumerate() {
            if self.opened || i > 0 {
                chunk.put_u8(b',');
            }
            chunk.put_slice(&message.json);
        }
        self.opened = true;
        if self.history.finished() {
            chunk.put_u8(b']');
            self.closed = true;
        }
        Ok(Some(chunk.freeze()))
    }
}

/// The follow behind a streaming response. It holds one of the instance's follow
/// slots for as long as the response lives, and runs in a span of its own (process,
/// format, cursor) that logs, at debug, when it starts and when it ends: how many
/// messages it sent and why it ended. (Debug, not info: ten thousand clients that
/// reconnect would drown everything else.)
fn events(
    state: &AppState,
    info: ProcessInfo,
    cursor: Cursor,
    format: &'static str,
) -> Result<impl Stream<Item = FollowEvent> + Send + 'static, ApiError> {
    let slot = state.follows.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_follows",
            format!(
                "this instance already serves {} follows; retry later or on another instance",
                state.config.limits.max_follows
            ),
        )
    })?;
    let span =
        tracing::debug_span!("follow", process = %info.process_id, format, cursor = %cursor.0);
    span.in_scope(|| tracing::debug!("follow started"));
    let events = state
        .followers
        .follow(info.process_id, cursor, info.last_seq);
    let log = FollowLog {
        span,
        sent: 0,
        ended: EndReason::ClientLeft,
        metrics: FollowMetrics::start(format),
    };
    Ok(futures::stream::unfold(
        (Box::pin(events), log, slot),
        |(mut events, mut log, slot)| {
            let span = log.span.clone();
            async move {
                let event = events.next().await;
                match &event {
                    Some(FollowEvent::Message(_)) => {
                        log.sent += 1;
                        log.metrics.delivered();
                    }
                    Some(FollowEvent::End { .. }) => log.ended = EndReason::ProcessFinished,
                    None if log.ended != EndReason::ProcessFinished => {
                        log.ended = EndReason::ServerShutdown
                    }
                    None => {}
                }
                event.map(|event| (event, (events, log, slot)))
            }
            .instrument(span)
        },
    ))
}

/// Logs the end of a follow, however it ends: the response stream is dropped with it
/// (and with it the follow leaves the active-follows gauge).
struct FollowLog {
    span: Span,
    sent: u64,
    ended: EndReason,
    metrics: FollowMetrics,
}

/// Why a follow ended, as its log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    /// The response was dropped before the end: the client went away.
    ClientLeft,
    /// The end event was sent.
    ProcessFinished,
    /// The instance's shutdown ended the follow; the client resumes elsewhere.
    ServerShutdown,
}

impl EndReason {
    /// The label logs (and any metric) carry.
    fn as_str(self) -> &'static str {
        match self {
            Self::ClientLeft => "the client left",
            Self::ProcessFinished => "the process finished",
            Self::ServerShutdown => "the server is shutting down",
        }
    }
}

impl Drop for FollowLog {
    fn drop(&mut self) {
        self.span.in_scope(|| {
            tracing::debug!(
                sent = self.sent,
                reason = self.ended.as_str(),
                "follow ended"
            );
        });
    }
}

fn sse(state: &AppState, info: ProcessInfo, cursor: Cursor) -> Result<Response, ApiError> {
    let shutdown = state.shutdown.clone();
    // A follow cut short by shutdown ends with a `retry:` hint: reconnect soon, and
    // (with `Last-Event-ID`) exactly where it stopped, on another instance.
    let retry_hint = futures::stream::once(async move {
        shutdown
            .is_cancelled()
            .then(|| Event::default().retry(RECONNECT_AFTER_SHUTDOWN))
    })
    .filter_map(|event| async move { event.map(Ok::<_, Infallible>) });
    let stream = events(state, info, cursor, "sse")?.map(|event| {
        Ok::<_, Infallible>(match event {
            FollowEvent::Message(message) => Event::default()
                .id(message.stream_id().to_string())
                .event("message")
                .data(String::from_utf8_lossy(&message.json)),
            FollowEvent::End { stream_id, status } => Event::default()
                .id(stream_id.to_string())
                .event("end")
                .data(end_json(status.as_str())),
        })
    });
    let mut response = Sse::new(stream.chain(retry_hint).fuse())
        .keep_alive(KeepAlive::new().interval(state.config.follow.heartbeat))
        .into_response();
    no_buffering(response.headers_mut());
    Ok(response)
}

fn ndjson(state: &AppState, info: ProcessInfo, cursor: Cursor) -> Result<Response, ApiError> {
    let events = with_heartbeat(
        events(state, info, cursor, "ndjson")?,
        state.config.follow.heartbeat,
    );
    let lines = ready_lines(Box::pin(events.fuse())).map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(lines.fuse()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    no_buffering(response.headers_mut());
    Ok(response)
}

/// The NDJSON lines of `events`, those that are ready together (a catch-up page) in one
/// piece of up to about [`NDJSON_PIECE_BYTES`]: one body frame, one chunk and one write
/// per piece rather than per message. A live event, alone, still goes at once.
fn ready_lines(
    mut events: std::pin::Pin<Box<dyn Stream<Item = Option<FollowEvent>> + Send>>,
) -> impl Stream<Item = Bytes> + Send {
    futures::stream::poll_fn(move |cx| {
        let mut piece = BytesMut::new();
        loop {
            match events.as_mut().poll_next(cx) {
                std::task::Poll::Ready(Some(event)) => {
                    match event {
                        Some(FollowEvent::Message(message)) => {
                            if !piece.is_empty() {
                                // Several ready together (a catch-up): room for the whole
                                // piece at once, not a doubling at a time (each one a copy).
                                piece.reserve(NDJSON_PIECE_BYTES.saturating_sub(piece.len()));
                            }
                            piece.reserve(message.json.len() + 1);
                            piece.put_slice(&message.json);
                            piece.put_u8(b'\n');
                        }
                        Some(FollowEvent::End { stream_id, status }) => {
                            piece.put_slice(end_line(status.as_str(), stream_id).as_bytes());
                            piece.put_u8(b'\n');
                        }
                        None => piece.put_u8(b'\n'),
                    }
                    if piece.len() >= NDJSON_PIECE_BYTES {
                        return std::task::Poll::Ready(Some(piece.freeze()));
                    }
                }
                // Whatever was gathered goes now; the end comes at the next call.
                std::task::Poll::Ready(None) if piece.is_empty() => {
                    return std::task::Poll::Ready(None)
                }
                std::task::Poll::Pending if piece.is_empty() => return std::task::Poll::Pending,
                std::task::Poll::Ready(None) | std::task::Poll::Pending => {
                    return std::task::Poll::Ready(Some(piece.freeze()))
                }
            }
        }
    })
}

/// Proxies must pass each event on as it comes.
fn no_buffering(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// Yields `None` (a heartbeat) whenever `events` is silent for `every`.
fn with_heartbeat<S>(
    events: S,
    every: Duration,
) -> impl Stream<Item = Option<FollowEvent>> + Send + 'static
where
    S: Stream<Item = FollowEvent> + Send + 'static,
{
    futures::stream::unfold(Box::pin(events), move |mut events| async move {
        // Dropping `next()` on timeout loses nothing: the stream keeps its state.
        match tokio::time::timeout(every, events.next()).await {
            Ok(Some(event)) => Some((Some(event), events)),
            Ok(None) => None,
            Err(_) => Some((None, events)),
        }
    })
}

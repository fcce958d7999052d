//! The client side of the drills: appends, snapshots, `/readyz`, and followers that
//! record every message they receive (and when), how each connection ended, and, when
//! told to, reconnect with the last stream ID they saw, as a real client does.
//!
//! Nothing here panics on what the server does: it records it, and the drill (or the
//! bench) judges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fixtures::{message, seq_of};
pub use crate::frame::End;
use crate::frame::{
    parse_ndjson, parse_sse, take_frame, Frame, SseEvent, NDJSON_SEPARATOR, SSE_SEPARATOR,
};

/// A process id no other drill uses.
pub fn process_id(label: &str) -> String {
    format!("drill-{label}-{}", uuid::Uuid::new_v4().simple())
}

// --- calls -------------------------------------------------------------------------

/// What one HTTP call got.
#[derive(Debug, Clone)]
pub enum Attempt {
    Answered {
        status: u16,
        body: Value,
        retry_after: Option<String>,
        at: Instant,
    },
    /// No answer: refused connection, reset, timeout…
    Failed { error: String, at: Instant },
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

/// Bound on a non-streaming call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("build the HTTP client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn answer(request: reqwest::RequestBuilder) -> Attempt {
        match request.timeout(CALL_TIMEOUT).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = match response.bytes().await {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }),
                    Err(error) => {
                        return Attempt::Failed {
                            error: format!("reading the answer: {error}"),
                            at: Instant::now(),
                        }
                    }
                };
                Attempt::Answered {
                    status,
                    body,
                    retry_after,
                    at: Instant::now(),
                }
            }
            Err(error) => Attempt::Failed {
                error: format!("{error:?}"),
                at: Instant::now(),
            },
        }
    }

    pub async fn put_process(&self, process: &str) -> Attempt {
        Self::answer(self.http.put(self.url(&format!("/processes/{process}")))).await
    }

    pub async fn append(&self, process: &str, body: &Value) -> Attempt {
        Self::answer(
            self.http
                .post(self.url(&format!("/processes/{process}/messages")))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// Appends `body` with a request whose body is sent in two halves: the second only
    /// once `release` resolves, so the request is in flight on the server meanwhile.
    pub async fn append_in_two_halves(
        &self,
        process: &str,
        body: &Value,
        release: tokio::sync::oneshot::Receiver<()>,
    ) -> Attempt {
        let text = body.to_string().into_bytes();
        let (first, second) = text.split_at(text.len() / 2);
        let (first, second) = (
            bytes::Bytes::copy_from_slice(first),
            bytes::Bytes::copy_from_slice(second),
        );
        let chunks = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(
            futures::stream::once(async move {
                let _ = release.await;
                Ok::<_, std::io::Error>(second)
            }),
        );
        Self::answer(
            self.http
                .post(self.url(&format!("/processes/{process}/messages")))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await
    }

    /// Finishes the process, retrying while the server does not answer or answers 503,
    /// for up to `patience`.
    pub async fn finish(&self, process: &str, status: &str, patience: Duration) -> Attempt {
        let deadline = Instant::now() + patience;
        loop {
            let attempt = Self::answer(
                self.http
                    .post(self.url(&format!("/processes/{process}/finish")))
                    .json(&serde_json::json!({ "status": status })),
            )
            .await;
            let retry = match &attempt {
                Attempt::Answered { status, .. } => *status == 503,
                Attempt::Failed { .. } => true,
            };
            if !retry || Instant::now() > deadline {
                return attempt;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every stored message of the process (JSON snapshot pages), retrying while the
    /// server does not answer or answers 503, for up to `patience`.
    pub async fn snapshot(&self, process: &str, patience: Duration) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + patience;
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all
                .last()
                .and_then(|m| m["stream_id"].as_str())
                .unwrap_or("0")
                .to_owned();
            let attempt = Self::answer(self.http.get(self.url(&format!(
                "/processes/{process}/messages?follow=false&limit=10000&after={after}"
            ))))
            .await;
            match attempt {
                Attempt::Answered {
                    status: 200,
                    body: Value::Array(page),
                    ..
                } => {
                    if page.is_empty() {
                        return Ok(all);
                    }
                    all.extend(page);
                }
                other if Instant::now() > deadline => {
                    return Err(format!("snapshot of {process} failed: {other:?}"))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `GET /readyz`: its status and body, or `None` when the server does not answer.
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        match Self::answer(self.http.get(self.url("/readyz"))).await {
            Attempt::Answered { status, body, .. } => Some((status, body)),
            Attempt::Failed { .. } => None,
        }
    }

    /// Polls `/readyz` until it answers `status` (and, when given, its body mentions
    /// `naming`); the last answer on timeout.
    pub async fn wait_readyz(
        &self,
        status: u16,
        naming: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some((got, body)) = self.readyz().await {
                if got == status && naming.is_none_or(|name| body.to_string().contains(name)) {
                    return Ok(body);
                }
                last = Some((got, body));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/readyz did not answer {status}{} within {timeout:?}; last answer: {last:?}",
                    naming.map(|n| format!(" naming {n}")).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// --- appender ----------------------------------------------------------------------

/// How one append ended, from the writer's side.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 201: stored now, at this seq.
    Created { seq: u64 },
    /// 200: a retry found the message already stored by an earlier attempt whose answer
    /// was lost.
    AlreadyStored { seq: u64 },
    /// Any other answer: nothing may have been stored.
    Refused {
        status: u16,
        retry_after: Option<String>,
        body: Value,
    },
    /// No answer, and not retried (or retries ran out): stored or not, nobody knows.
    Unknown { error: String },
}

impl Outcome {
    pub fn seq(&self) -> Option<u64> {
        match self {
            Outcome::Created { seq } | Outcome::AlreadyStored { seq } => Some(*seq),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppendRecord {
    pub n: usize,
    pub id: String,
    /// When the first attempt was sent.
    pub sent: Instant,
    /// When the outcome was known.
    pub answered: Instant,
    pub outcome: Outcome,
    /// Attempts that got no answer before the outcome.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AppenderConfig {
    /// Time between the starts of two appends (one at a time, in order).
    pub interval: Duration,
    /// Appends at most.
    pub max: usize,
    /// Resend the same message (same id) after an attempt without an answer, as an
    /// idempotent writer does; otherwise its outcome is `Unknown`.
    pub retry_failures: bool,
    /// How long to keep resending one message.
    pub give_up_after: Duration,
}

/// Statuses a load balancer answers when the service did not (bad gateway, gateway
/// timeout): for an idempotent writer, the same as a broken connection.
const GATEWAY_LOST_ANSWER: [u16; 2] = [502, 504];

/// A writer appending message after message to one process, in the background.
pub struct Appender {
    log: Arc<Mutex<Vec<AppendRecord>>>,
    /// When the append in progress (not yet answered) was first sent.
    pending: Arc<Mutex<Option<Instant>>>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Appender {
    /// Appends [`message`]`(tag, n)` for n = 1, 2, 3, …
    pub fn spawn(api: Api, process: String, tag: String, config: AppenderConfig) -> Self {
        Self::spawn_with(api, process, tag, config, message)
    }

    /// Appends `make(tag, n)` for n = 1, 2, 3, … (each with a distinct `id`, as
    /// [`message`] does).
    pub fn spawn_with(
        api: Api,
        process: String,
        tag: String,
        config: AppenderConfig,
        make: fn(&str, usize) -> Value,
    ) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let pending = Arc::new(Mutex::new(None));
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let (log, stop, pending) = (log.clone(), stop.clone(), pending.clone());
            async move {
                let mut ticks = tokio::time::interval(config.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for n in 1..=config.max {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticks.tick() => {}
                    }
                    let body = make(&tag, n);
                    let sent = Instant::now();
                    *pending.lock().unwrap() = Some(sent);
                    let mut failures = Vec::new();
                    let (outcome, answered) = loop {
                        match api.append(&process, &body).await {
                            Attempt::Answered {
                                status, body, at, ..
                            } if config.retry_failures && GATEWAY_LOST_ANSWER.contains(&status) => {
                                // A load balancer's 502/504: the service's answer (if
                                // any) was lost on the way, as when the connection breaks.
                                // The service itself never answers these.
                                failures.push(format!("{status} from the gateway: {body}"));
                                if sent.elapsed() > config.give_up_after {
                                    break (
                                        Outcome::Unknown {
                                            error: format!("{status} from the gateway"),
                                        },
                                        at,
                                    );
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Attempt::Answered {
                                status,
                                body,
                                retry_after,
                                at,
                            } => {
                                let seq = body["stream_id"].as_str().and_then(seq_of);
                                break match (status, seq) {
                                    (201, Some(seq)) => (Outcome::Created { seq }, at),
                                    (200, Some(seq)) => (Outcome::AlreadyStored { seq }, at),
                                    _ => (
                                        Outcome::Refused {
                                            status,
                                            retry_after,
                                            body,
                                        },
                                        at,
                                    ),
                                };
                            }
                            Attempt::Failed { error, at } => {
                                failures.push(error.clone());
                                if !config.retry_failures || sent.elapsed() > config.give_up_after {
                                    break (Outcome::Unknown { error }, at);
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    };
                    let mut log = log.lock().unwrap();
                    *pending.lock().unwrap() = None;
                    log.push(AppendRecord {
                        n,
                        id: body["id"].as_str().unwrap_or_default().to_owned(),
                        sent,
                        answered,
                        outcome,
                        failures,
                    });
                }
            }
        });
        Self {
            log,
            pending,
            stop,
            handle,
        }
    }

    /// When the append in progress was sent, if one is waiting for its answer.
    pub fn pending_since(&self) -> Option<Instant> {
        *self.pending.lock().unwrap()
    }

    pub fn records(&self) -> Vec<AppendRecord> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The highest seq an append got so far.
    pub fn max_seq(&self) -> u64 {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.outcome.seq())
            .max()
            .unwrap_or(0)
    }

    /// Appends whose outcome matches `pred`.
    pub fn count_where(&self, pred: impl Fn(&AppendRecord) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|r| pred(r)).count()
    }

    /// Stops after the append in progress (which is carried to its outcome).
    pub async fn stop(self) -> Vec<AppendRecord> {
        self.stop.cancel();
        let _ = self.handle.await;
        Arc::try_unwrap(self.log)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|log| log.lock().unwrap().clone())
    }
}

// --- follower ----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `GET /messages` with `Accept: text/event-stream`; resumes with `Last-Event-ID`.
    Sse,
    /// `GET /messages` with `Accept: application/x-ndjson`; resumes with `?after=`.
    Ndjson,
    /// `GET /messages/stream` (NDJSON whatever `Accept` says); resumes with `?after=`.
    NdjsonStream,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Sse => "SSE",
            Format::Ndjson => "NDJSON",
            Format::NdjsonStream => "NDJSON /stream",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub seq: u64,
    pub id: String,
    /// The whole message, when the follower keeps values.
    pub value: Option<Value>,
    pub at: Instant,
}

/// A follow response that ended without the end event.
#[derive(Debug, Clone)]
pub struct Break {
    pub at: Instant,
    /// The last seq received before it.
    pub after_seq: u64,
    /// The response ended properly (the body completed) rather than with an error.
    pub clean: bool,
    /// The `retry:` field of the last SSE frame before the break, if it had one.
    pub last_frame_retry: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FollowState {
    pub received: Vec<Received>,
    pub end: Option<End>,
    /// Responses that were opened (200).
    pub connections: u32,
    /// When each of them was opened (its 200 arrived).
    pub opened: Vec<Instant>,
    pub breaks: Vec<Break>,
    /// Connects that failed or were not answered 200, while (re)connecting.
    pub refusals: Vec<String>,
    /// Protocol breaches: out-of-order or duplicate seq, malformed frames, anything
    /// after the end, being dropped when not allowed to reconnect, the deadline.
    pub violations: Vec<String>,
    pub done: bool,
    /// The last stream ID received, sent back when reconnecting.
    pub last_id: Option<String>,
}

impl FollowState {
    pub fn last_seq(&self) -> u64 {
        self.received.last().map(|r| r.seq).unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct FollowSpec {
    pub base: String,
    pub process: String,
    pub format: Format,
    /// The cursor of the first request: messages with a greater seq are expected.
    pub after: u64,
    /// Reconnect with the last stream ID when a response ends without the end event
    /// (or the server cannot be reached); otherwise that is a violation.
    pub reconnect: bool,
    /// Give up (a violation) when no end came by then.
    pub deadline: Instant,
    pub keep_values: bool,
    /// `Some(backoff)`: reconnect as a browser's `EventSource` does, after the last
    /// `retry:` hint the server sent (on any connection), else after `backoff`.
    /// `None`: after a fixed 50 ms.
    pub eventsource_backoff: Option<Duration>,
}

pub struct Follower {
    pub spec: FollowSpec,
    state: Arc<Mutex<FollowState>>,
    handle: JoinHandle<()>,
}

impl Follower {
    pub fn spawn(http: reqwest::Client, spec: FollowSpec) -> Self {
        let state = Arc::new(Mutex::new(FollowState::default()));
        let handle = tokio::spawn(run_follower(http, spec.clone(), state.clone()));
        Self {
            spec,
            state,
            handle,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.state.lock().unwrap().last_seq()
    }

    pub fn connections(&self) -> u32 {
        self.state.lock().unwrap().connections
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&FollowState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    pub fn is_done(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the follow to end (end event, violation or deadline).
    pub async fn join(self) -> FollowState {
        let _ = self.handle.await;
        let mut state = self.state.lock().unwrap();
        state.done = true;
        std::mem::take(&mut *state)
    }
}

/// The complete frames in `buffer`, cut off it, each parsed (with the SSE `retry:`
/// field it carried).
fn frames(buffer: &mut Vec<u8>, format: Format) -> Vec<Result<SseEvent, String>> {
    let separator = match format {
        Format::Sse => SSE_SEPARATOR,
        Format::Ndjson | Format::NdjsonStream => NDJSON_SEPARATOR,
    };
    let mut out = Vec::new();
    while let Some(frame) = take_frame(buffer, separator) {
        let text = String::from_utf8_lossy(&frame);
        out.push(match format {
            Format::Sse => parse_sse(&text),
            _ => parse_ndjson(&text).map(|frame| (frame, None)),
        });
    }
    out
}

/// Where a follower is: the stream ID to resume after, the last seq it has, and how
/// long it waits before reconnecting.
struct Position {
    cursor: Option<String>,
    last_seq: u64,
    /// An EventSource's reconnection time: the default until a `retry:` field sets it.
    reconnect_after: Duration,
}

/// What opening a follow came to.
enum Opened {
    Response(reqwest::Response),
    /// Refused or failed, recorded: try again.
    Again,
    /// Refused or failed (a violation when the follower does not reconnect), or the
    /// deadline passed: stop.
    Stop,
}

/// Connects, reads, and (when told to) reconnects from the last stream ID, until the
/// end event or the deadline; records everything in `state`.
async fn run_follower(http: reqwest::Client, spec: FollowSpec, state: Arc<Mutex<FollowState>>) {
    let mut position = Position {
        cursor: (spec.after > 0).then(|| format!("{}-0", spec.after)),
        last_seq: spec.after,
        reconnect_after: spec
            .eventsource_backoff
            .unwrap_or(Duration::from_millis(50)),
    };
    loop {
        let response = match open(&http, &spec, &position, &state).await {
            Opened::Response(response) => response,
            Opened::Again => continue,
            Opened::Stop => return,
        };
        let Some(broke) = read(response, &spec, &mut position, &state).await else {
            return;
        };
        let (clean, error) = (broke.clean, broke.error.clone());
        state.lock().unwrap().breaks.push(broke);
        if !spec.reconnect {
            violation(
                &state,
                format!(
                    "the follow was dropped after seq {} ({})",
                    position.last_seq,
                    error.unwrap_or_else(|| if clean {
                        "the response ended".into()
                    } else {
                        "error".into()
                    })
                ),
            );
            return;
        }
        tokio::time::sleep(position.reconnect_after).await;
    }
}

fn violation(state: &Mutex<FollowState>, text: String) {
    state.lock().unwrap().violations.push(text);
}

/// The follow request from `position`: SSE resumes with `Last-Event-ID`, NDJSON with
/// `?after=`.
fn request(
    http: &reqwest::Client,
    spec: &FollowSpec,
    position: &Position,
) -> reqwest::RequestBuilder {
    let path = match spec.format {
        Format::NdjsonStream => "messages/stream",
        _ => "messages",
    };
    let mut url = format!("{}/processes/{}/{path}", spec.base, spec.process);
    match spec.format {
        Format::Sse => {
            let request = http.get(&url).header("accept", "text/event-stream");
            match &position.cursor {
                Some(cursor) => request.header("last-event-id", cursor),
                None => request,
            }
        }
        Format::Ndjson | Format::NdjsonStream => {
            if let Some(cursor) = &position.cursor {
                url.push_str(&format!("?after={cursor}"));
            }
            http.get(&url).header("accept", "application/x-ndjson")
        }
    }
}

/// Opens the follow, recording a refusal (and pausing before the next try) or the
/// connection.
async fn open(
    http: &reqwest::Client,
    spec: &FollowSpec,
    position: &Position,
    state: &Mutex<FollowState>,
) -> Opened {
    let deadline = tokio::time::Instant::from_std(spec.deadline);
    if tokio::time::Instant::now() >= deadline {
        violation(
            state,
            format!(
                "no end event by the deadline (last seq {})",
                position.last_seq
            ),
        );
        return Opened::Stop;
    }
    let sent = tokio::time::timeout_at(deadline, request(http, spec, position).send()).await;
    match sent {
        Err(_) => Opened::Again, // the deadline check above reports it
        Ok(Err(error)) => {
            state
                .lock()
                .unwrap()
                .refusals
                .push(format!("connect: {error}"));
            if !spec.reconnect {
                violation(state, format!("could not open the follow: {error}"));
                return Opened::Stop;
            }
            // A network error: an EventSource tries again after its reconnection time.
            let pause = match spec.eventsource_backoff {
                Some(_) => position.reconnect_after,
                None => Duration::from_millis(100),
            };
            tokio::time::sleep(pause).await;
            Opened::Again
        }
        Ok(Ok(response)) if response.status() != 200 => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            state
                .lock()
                .unwrap()
                .refusals
                .push(format!("{status}: {body}"));
            if !spec.reconnect {
                violation(state, format!("the follow was refused: {status} {body}"));
                return Opened::Stop;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Opened::Again
        }
        Ok(Ok(response)) => {
            let mut state = state.lock().unwrap();
            state.connections += 1;
            state.opened.push(Instant::now());
            Opened::Response(response)
        }
    }
}

/// Reads one response, recording each message; returns how it broke, or `None` once
/// the follower is done (the end came, or the deadline passed).
async fn read(
    response: reqwest::Response,
    spec: &FollowSpec,
    position: &mut Position,
    state: &Mutex<FollowState>,
) -> Option<Break> {
    let deadline = tokio::time::Instant::from_std(spec.deadline);
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut last_retry: Option<String> = None;
    loop {
        let Ok(chunk) = tokio::time::timeout_at(deadline, body.next()).await else {
            let last_seq = position.last_seq;
            violation(
                state,
                format!("no end event by the deadline (last seq {last_seq})"),
            );
            return None;
        };
        let broke = |clean, error| Break {
            at: Instant::now(),
            after_seq: position.last_seq,
            clean,
            last_frame_retry: last_retry.clone(),
            error,
        };
        match chunk {
            None => {
                if !buffer.is_empty() {
                    violation(
                        state,
                        format!(
                            "the response ended mid-frame: {:?}",
                            String::from_utf8_lossy(&buffer)
                        ),
                    );
                }
                return Some(broke(buffer.is_empty(), None));
            }
            Some(Err(error)) => return Some(broke(false, Some(format!("{error:?}")))),
            Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
        }
        let at = Instant::now();
        let mut ended: Option<End> = None;
        for parsed in frames(&mut buffer, spec.format) {
            let (frame, retry) = match parsed {
                Ok(parsed) => parsed,
                Err(error) => {
                    violation(state, error);
                    continue;
                }
            };
            if spec.eventsource_backoff.is_some() {
                if let Some(ms) = retry.as_deref().and_then(|r| r.parse::<u64>().ok()) {
                    position.reconnect_after = Duration::from_millis(ms);
                }
            }
            last_retry = retry;
            if let Some(end) = &ended {
                violation(state, format!("{frame:?} after the end {end:?}"));
                continue;
            }
            match frame {
                Frame::Heartbeat => {}
                Frame::Message { stream_id, value } => {
                    record(spec, position, state, stream_id, value, at)
                }
                Frame::End(end) => ended = Some(end),
            }
        }
        if let Some(end) = ended {
            state.lock().unwrap().end = Some(end);
            // Nothing may follow the end: the response must close.
            if let Err(problem) = closes_after_end(body, buffer).await {
                violation(state, problem);
            }
            return None;
        }
    }
}

/// Records a message received at `at`, checking that it is the next seq.
fn record(
    spec: &FollowSpec,
    position: &mut Position,
    state: &Mutex<FollowState>,
    stream_id: String,
    value: Value,
    at: Instant,
) {
    let Some(seq) = seq_of(&stream_id) else {
        violation(state, format!("a message with stream_id {stream_id:?}"));
        return;
    };
    if seq != position.last_seq + 1 {
        violation(state, format!("seq {seq} after seq {}", position.last_seq));
    }
    position.last_seq = seq;
    let mut state = state.lock().unwrap();
    state.received.push(Received {
        seq,
        id: value["id"].as_str().unwrap_or_default().to_owned(),
        value: spec.keep_values.then_some(value),
        at,
    });
    state.last_id = Some(stream_id.clone());
    position.cursor = Some(stream_id);
}

/// Checks that the response closes, with nothing more, within 5 s of the end event
/// (`rest`: what was left in the buffer after it).
async fn closes_after_end(
    mut body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    rest: Vec<u8>,
) -> Result<(), String> {
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut extra = rest;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => extra.extend_from_slice(&bytes),
                Err(error) => return Err(format!("{error:?}")),
            }
        }
        Ok(extra)
    })
    .await;
    match rest {
        Ok(Ok(extra)) if extra.is_empty() => Ok(()),
        Ok(Ok(extra)) => Err(format!(
            "data after the end: {:?}",
            String::from_utf8_lossy(&extra)
        )),
        Ok(Err(error)) => Err(format!("the response failed after the end: {error}")),
        Err(_) => Err("the response stayed open after the end".to_owned()),
    }
}

// --- judging -----------------------------------------------------------------------

/// Checks that a follower got exactly the stored messages with seq > `after`, in
/// order, each once, then the end with `status`, and no protocol breach.
pub fn verify_exact(
    state: &FollowState,
    after: u64,
    stored: &[Value],
    status: &str,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if !state.violations.is_empty() {
        problems.push(format!("violations: {:?}", state.violations));
    }
    let expected: Vec<&Value> = stored
        .iter()
        .filter(|m| {
            m["stream_id"]
                .as_str()
                .and_then(seq_of)
                .is_some_and(|s| s > after)
        })
        .collect();
    let expected_seqs: Vec<u64> = expected
        .iter()
        .map(|m| m["stream_id"].as_str().and_then(seq_of).unwrap_or(0))
        .collect();
    let got_seqs: Vec<u64> = state.received.iter().map(|r| r.seq).collect();
    if got_seqs != expected_seqs {
        let first_difference = got_seqs
            .iter()
            .zip(&expected_seqs)
            .position(|(a, b)| a != b)
            .unwrap_or(got_seqs.len().min(expected_seqs.len()));
        problems.push(format!(
            "received {} messages, expected {} (seqs {}..={}); first difference at index {first_difference}: got {:?}, expected {:?}",
            got_seqs.len(),
            expected_seqs.len(),
            after + 1,
            expected_seqs.last().copied().unwrap_or(after),
            got_seqs.get(first_difference..(first_difference + 5).min(got_seqs.len())),
            expected_seqs.get(first_difference..(first_difference + 5).min(expected_seqs.len())),
        ));
    } else {
        for (got, want) in state.received.iter().zip(&expected) {
            if got.id != want["id"].as_str().unwrap_or_default() {
                problems.push(format!(
                    "seq {} has id {:?}, stored {:?}",
                    got.seq, got.id, want["id"]
                ));
                break;
            }
            if let Some(value) = &got.value {
                if value != *want {
                    problems.push(format!("seq {} differs from the stored message", got.seq));
                    break;
                }
            }
        }
    }
    let last = stored
        .last()
        .and_then(|m| m["stream_id"].as_str())
        .and_then(seq_of)
        .unwrap_or(0);
    let want_end = End {
        status: status.to_owned(),
        stream_id: format!("{last}-1"),
    };
    if state.end.as_ref() != Some(&want_end) {
        problems.push(format!("end {:?}, expected {want_end:?}", state.end));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Checks the writer's side against what is stored: every 201 (and every 200 on a
/// retry) is stored at its seq, nothing refused is stored, no id is stored twice.
pub fn verify_appends(records: &[AppendRecord], stored: &[Value]) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut by_id: HashMap<&str, u64> = HashMap::new();
    for message in stored {
        let id = message["id"].as_str().unwrap_or_default();
        let seq = message["stream_id"].as_str().and_then(seq_of).unwrap_or(0);
        if by_id.insert(id, seq).is_some() {
            problems.push(format!("id {id} is stored twice"));
        }
    }
    let seqs: Vec<u64> = stored
        .iter()
        .map(|m| m["stream_id"].as_str().and_then(seq_of).unwrap_or(0))
        .collect();
    if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
        problems.push("the stored seqs are not 1, 2, 3, … without holes".to_owned());
    }
    for record in records {
        let stored_at = by_id.get(record.id.as_str()).copied();
        match (&record.outcome, stored_at) {
            (Outcome::Created { seq } | Outcome::AlreadyStored { seq }, Some(at)) if *seq == at => {
            }
            (Outcome::Created { seq } | Outcome::AlreadyStored { seq }, got) => {
                problems.push(format!(
                    "{} was answered with seq {seq} but is stored at {got:?}",
                    record.id
                ))
            }
            (Outcome::Refused { status, .. }, Some(at)) => problems.push(format!(
                "{} was refused ({status}) but is stored at seq {at}",
                record.id
            )),
            (Outcome::Refused { .. }, None) | (Outcome::Unknown { .. }, _) => {}
        }
    }
    let known: std::collections::HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    for id in by_id.keys() {
        if !known.contains(id) {
            problems.push(format!("{id} is stored but was never appended"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Waits until `condition` holds, checking every 20 ms, for up to `timeout`.
pub async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

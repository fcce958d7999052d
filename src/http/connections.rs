//! How many connections the server holds, and when it lets one go.
//!
//! A connection costs a file descriptor. Without limits, sockets that never send a byte
//! (or only HTTP/2's preface) would be held for good, and a few hundred of them would
//! use up the descriptors the server needs for PostgreSQL, Redis and new clients
//! (`os error 24`). So:
//! - **a cap** ([`ConnectionCap`]): at most `max_connections` open at once, by default
//!   the process's descriptor limit (`RLIMIT_NOFILE`) less [`headroom`] for the store's
//!   and Redis's connections and for files. A connection past the cap is accepted and
//!   closed at once: the client sees a reset right away instead of waiting in the
//!   listen backlog, and the descriptor comes straight back.
//! - **a first-request limit**: a connection that has not started a request within
//!   `header_read_timeout` of being accepted is closed, whatever the protocol
//!   (hyper's own header timeout starts only once HTTP/1 is detected, and protocol
//!   detection waits for bytes for ever).
//! - **an idle limit**: a connection with no request in flight for `idle_timeout` is
//!   closed, HTTP/1 keep-alive and HTTP/2 alike (an HTTP/2 client answers the
//!   keep-alive pings, so without this a silent one stays for good). A follow is a
//!   request in flight for as long as its response streams.
//! - **a stall limit**: a connection with a response that hyper (or, for a follow over
//!   HTTP/1.1, [`lean`](super::lean)) took a piece of and has not come back to for more
//!   within `write_timeout` is closed at once. Over HTTP/1 the socket's
//!   [`WriteTimeout`](super::WriteTimeout) sees the same client; over HTTP/2 it cannot:
//!   a client that keeps a stream's flow-control window at zero makes hyper stop
//!   writing that stream (no write is ever blocked, and keep-alive PINGs still flow),
//!   while the piece hyper holds and the response's state stay in memory for good.
//!   Measured at the response rather than the socket, an idle follow (hyper waiting on
//!   the body) is never stalled, however long its heartbeat.
//!
//! [`Tracked`] counts a connection's requests in flight (a request ends when its
//! response body is dropped) and times each response's pieces, and [`drive`] runs
//! the connection under the limits.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Descriptors kept aside, beyond the store's and Redis's connections, for what else the
/// process opens: the listener, the runtime's own, standard streams, files read at
/// start, DNS lookups.
pub const SPARE_DESCRIPTORS: usize = 64;

/// How long a connection closed for idleness may take to go: HTTP/2's graceful close
/// waits for the client to answer a PING, which a silent client never does.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Fewest connections the cap allows, however low the descriptor limit.
pub const MIN_CONNECTIONS: usize = 16;

/// Streams an HTTP/2 client may have open at once on one connection (hyper's default
/// is 200; RFC 9113 advises no fewer than 100). With [`HTTP2_MAX_SEND_BUF_BYTES`] and
/// the stall limit it bounds what one connection can make the server hold.
pub const HTTP2_MAX_STREAMS: u32 = 100;

/// Bytes hyper queues per HTTP/2 stream ahead of the socket (hyper's default is
/// 400 KiB): with [`HTTP2_MAX_STREAMS`], at most 6.4 MiB per connection whose socket
/// is slow, on top of one piece taken per stream.
pub const HTTP2_MAX_SEND_BUF_BYTES: usize = 64 * 1024;

/// Descriptors to keep aside for the backends: `database_connections` PostgreSQL
/// connections, `redis_connections` Redis ones, and [`SPARE_DESCRIPTORS`].
pub fn headroom(database_connections: usize, redis_connections: usize) -> usize {
    database_connections + redis_connections + SPARE_DESCRIPTORS
}

/// The descriptor limit of this process (the soft `RLIMIT_NOFILE`), if known.
pub fn descriptor_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        match limit.current {
            None => Some(usize::MAX),
            Some(current) => usize::try_from(current).ok(),
        }
    }
    #[cfg(not(unix))]
    None
}

/// The connections a process may hold with `headroom` descriptors kept aside: the
/// descriptor limit less the headroom, at least [`MIN_CONNECTIONS`]; with no known
/// limit, [`MIN_CONNECTIONS`] times 1024.
pub fn connections_for(headroom: usize) -> usize {
    match descriptor_limit() {
        Some(limit) => limit.saturating_sub(headroom).max(MIN_CONNECTIONS),
        None => MIN_CONNECTIONS * 1024,
    }
}

/// At most `max` connections open at once.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }

    /// A slot for one more connection, held until the connection ends; `None` at the cap.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// The protocol a connection speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// With prior knowledge: the client opens with [`HTTP2_PREFACE`] (no TLS, so no ALPN).
    Http2,
}

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to wait before looking again at a connection that sent part of the
/// HTTP/2 preface: a peek does not wait for more bytes than it already saw.
const PREFACE_PEEK_AGAIN: Duration = Duration::from_millis(5);

/// The protocol `stream`'s client speaks, read from its first bytes without taking
/// them (`peek`), so hyper reads the request itself into its own buffer from the
/// start; `None` if the client closed first. hyper-util's detecting builder read them
/// (up to 24 bytes) and handed them back, and hyper's first read was then those few
/// bytes, which doubled its read buffer to 16 KiB for the connection's life.
pub async fn protocol(stream: &tokio::net::TcpStream) -> std::io::Result<Option<Protocol>> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Ok(None);
        }
        if first[..n] != HTTP2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        if n == HTTP2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        tokio::time::sleep(PREFACE_PEEK_AGAIN).await;
    }
}

/// What [`drive`] needs to know about a connection's requests.
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Whether a request ever started, and when the connection last became idle.
    state: Mutex<Idle>,
    /// The responses hyper took a piece of and has not asked again since, by number,
    /// with when it took it.
    waiting: Mutex<HashMap<u64, Instant>>,
    responses: AtomicU64,
    /// Whether [`drive`] asked the connection to close (idle, or the server stops):
    /// the lean responder serves no request after it.
    closing: AtomicBool,
}

#[derive(Default)]
struct Idle {
    served: bool,
    since: Option<Instant>,
}

impl Activity {
    /// Asks the connection to close: what [`drive`]'s `close` does for a connection
    /// served by [`lean`](super::lean).
    pub fn ask_to_close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    pub fn asked_to_close(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Resolves once [`ask_to_close`](Self::ask_to_close) was called. It registers no
    /// waker: [`drive`] polls the connection right after asking it to close, which is
    /// when this is looked at again.
    pub async fn until_asked_to_close(&self) {
        std::future::poll_fn(|_| {
            if self.asked_to_close() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn begin(self: &Arc<Self>) -> Ongoing {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.lock().served = true;
        Ongoing(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        crate::sync::lock(&self.state)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the connection counts as stalled, `limit` after the oldest piece a
    /// response handed hyper without hyper coming back for more; `None` if none waits.
    fn stalls_at(&self, limit: Duration) -> Option<Instant> {
        self.waiting().values().min().map(|since| *since + limit)
    }

    /// When the connection may be closed as idle: `None` while a request is in flight.
    fn closes_at(
        &self,
        accepted: Instant,
        first_request: Duration,
        idle: Duration,
    ) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let state = self.lock();
        Some(match (state.served, state.since) {
            (false, _) => accepted + first_request,
            (true, Some(since)) => since + idle,
            // A request began and its end is not recorded yet: look again soon.
            (true, None) => Instant::now() + idle,
        })
    }
}

/// One request in flight, until its response body is dropped.
struct Ongoing(Arc<Activity>);

impl Drop for Ongoing {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.lock().since = Some(Instant::now());
        }
    }
}

/// A service that counts its requests in flight on `activity`.
#[derive(Clone)]
pub struct Tracked<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Tracked<S>
where
    S: tower_service::Service<
        axum::http::Request<B>,
        Response = axum::http::Response<Body>,
        Error = std::convert::Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let ongoing = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(Timed::new(body, ongoing))))
        })
    }
}

/// A response body that records, on its connection's [`Activity`], when hyper took a
/// piece of it and had not yet asked for the next: hyper asks again as soon as it
/// can send more, so a piece left waiting is a stream (or socket) that makes no
/// progress. It counts as a request in flight until dropped.
struct Timed {
    body: Body,
    number: u64,
    /// Whether a piece waits, so that a body polled while nothing waits (an idle
    /// follow) does not take the lock.
    handed: bool,
    ongoing: Ongoing,
}

impl Timed {
    fn new(body: Body, ongoing: Ongoing) -> Self {
        Self {
            body,
            number: ongoing.0.responses.fetch_add(1, Ordering::Relaxed),
            handed: false,
            ongoing,
        }
    }

    fn taken(&mut self) {
        if std::mem::take(&mut self.handed) {
            self.ongoing.0.waiting().remove(&self.number);
        }
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.taken();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.handed = true;
            this.ongoing.0.waiting().insert(this.number, Instant::now());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.taken();
    }
}

/// `body`, holding `guard` until the body is dropped: a response keeps what it
/// counts against (a request in flight, a follow slot) for as long as it streams.
pub fn hold_until_dropped<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Body::new(Guarded {
        body,
        _guard: guard,
    })
}

struct Guarded<G> {
    body: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The limits [`drive`] applies to each connection.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// From accept to the first request's start.
    pub first_request: Duration,
    /// With no request in flight.
    pub idle: Duration,
    /// With a piece of a response taken by hyper and no call for the next one
    /// (`--write-timeout`).
    pub stall: Duration,
    /// From being asked to close (idle, or the server shutting down) to being dropped.
    pub close_grace: Duration,
}

/// Runs `connection` (accepted at `accepted`) until it ends, closing it (with `close`: hyper's
/// graceful
/// shutdown) once idle past `lifetime`'s limits or when `stop` is cancelled; then
/// requests in flight get `close_grace` to finish. A stalled connection is dropped
/// at once: a graceful close would wait for the very streams that make no progress.
pub async fn drive<C: Future>(
    connection: C,
    close: impl FnOnce(Pin<&mut C>),
    activity: Arc<Activity>,
    lifetime: Lifetime,
    accepted: Instant,
    stop: CancellationToken,
) -> Option<C::Output> {
    tokio::pin!(connection);
    let grace = loop {
        let closes_at = activity.closes_at(accepted, lifetime.first_request, lifetime.idle);
        // With a request in flight, look again after the idle limit at the earliest.
        let wake = closes_at.unwrap_or_else(|| Instant::now() + lifetime.idle);
        // A piece that starts waiting after this wakes us no later than `stall` from
        // now, which is never earlier than the limit it sets.
        let wake = wake
            .min(activity.stalls_at(lifetime.stall).unwrap_or(wake))
            .min(Instant::now() + lifetime.stall);
        tokio::select! {
            ended = connection.as_mut() => return Some(ended),
            _ = stop.cancelled() => break lifetime.close_grace,
            _ = tokio::time::sleep_until(wake) => {
                if activity
                    .stalls_at(lifetime.stall)
                    .is_some_and(|at| at <= Instant::now())
                {
                    crate::metrics::connection_closed_stalled();
                    tracing::debug!(stall = ?lifetime.stall,
                        "connection closed: a response made no progress");
                    return None;
                }
                if activity
                    .closes_at(accepted, lifetime.first_request, lifetime.idle)
                    .is_some_and(|at| at <= Instant::now())
                {
                    crate::metrics::connection_closed_idle();
                    break lifetime.close_grace.min(IDLE_CLOSE_GRACE);
                }
            }
        }
    };
    // Protocol detection (and `Activity::until_asked_to_close`) notices the request to
    // close only when polled again: the wait below does that at once.
    close(connection.as_mut());
    tokio::time::timeout(grace, connection).await.ok()
}

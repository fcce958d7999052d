//! The lean HTTP/1.1 responder: serves follows on plain TCP without hyper's HTTP/1
//! connection (adr/0018).
//!
//! hyper's HTTP/1 connection holds an 8 KiB read buffer and an 8 KiB header buffer for
//! as long as the connection lives, and no option shrinks them. A follow reads one
//! request head, then only writes, for minutes or hours: those 16 KiB were two thirds
//! of what an idle follow cost. A follow needs little of HTTP/1.1 (a `GET` without a
//! body, and a response streamed in chunks), so this module serves exactly that:
//! - It looks at the next request head without taking it (`peek`, into a buffer freed
//!   right after). Only a head that came whole, for an HTTP/1.1 `GET` of a follow
//!   ([`is_follow`]), with no body, no `Expect` and no `Upgrade`, is served here.
//!   Anything else (another call, a head split across TCP segments, HTTP/1.0, `HEAD`)
//!   goes to hyper with the connection as it is, its bytes untouched, for good.
//! - The request goes through the very service hyper calls (`Tracked` around the
//!   router), so auth, CORS, compression, the request log, metrics and the
//!   connection's idle and stall limits apply as they do there.
//! - The response is written as hyper writes it: the same head (`date` included),
//!   `content-length` when the body's size is known, else one chunk per body frame,
//!   written at once, through the same [`WriteTimeout`] socket.
//! - While the response waits for its body, the socket is watched for the client's
//!   close (a one-byte peek on the stack) and the response is dropped when the client
//!   leaves, as hyper does.
//! - The connection is kept for the next request unless the client sent
//!   `Connection: close` or [`drive`](super::connections::drive) asked it to close
//!   (idle, or the server stops).
//!
//! Between two writes a follow served here holds no buffer: its own state and the
//! connection's task.

use std::convert::Infallible;
use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use http_body::{Body as _, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_service::Service;

use super::connections::Activity;
use super::extract::{Format, MessagesQuery};
use super::{WriteTimeout, MAX_HEADER_FIELDS};

/// Largest request head served here (a follow's is a few hundred bytes, a token and a
/// cookie included); a larger one goes to hyper. The buffer lives while the head is
/// read, not while the response streams.
pub const HEAD_BYTES: usize = 8 * 1024;

/// The longest chunk-size line: a `usize` in hex, then CRLF.
const CHUNK_SIZE_LINE: usize = 2 * std::mem::size_of::<usize>() + 2;

/// How the lean responder let go of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Closed: the client left, asked to close, or [`Activity::ask_to_close`] was called.
    Closed,
    /// Its next request is not a follow's: hyper serves the connection from here on.
    ToHyper,
}

/// The socket of a connection: writes time out, and reads can look without taking.
type Socket = WriteTimeout<TcpStream>;

/// Serves `io`'s follows with `service` until the connection closes or its next
/// request is for hyper. `activity` is the connection's, as `service` sees it.
pub async fn serve<S>(io: &mut Socket, service: &mut S, activity: &Activity) -> io::Result<Ended>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    loop {
        // Between requests nothing is held but the socket.
        let open = tokio::select! {
            biased;
            () = activity.until_asked_to_close() => return Ok(Ended::Closed),
            open = has_bytes(io) => open?,
        };
        if !open {
            return Ok(Ended::Closed);
        }
        let Some(head) = take_head(io).await? else {
            return Ok(Ended::ToHyper);
        };
        if !respond(io, service, head, activity).await? {
            return Ok(Ended::Closed);
        }
    }
}

/// Waits for the client to send something: `true` once bytes wait, `false` if it
/// closed.
async fn has_bytes(io: &Socket) -> io::Result<bool> {
    let mut first = [0u8; 1];
    Ok(io.get_ref().peek(&mut first).await? > 0)
}

/// Whether the client went away (closed, or reset): `false` as soon as it sent
/// something instead (a pipelined request), which then waits its turn. It waits for
/// the socket's readiness first, which costs no system call, because a follow makes
/// this future anew for each event it sends.
async fn client_gone(io: &Socket) -> bool {
    if std::future::poll_fn(|cx| io.get_ref().poll_read_ready(cx))
        .await
        .is_err()
    {
        return true;
    }
    let mut first = [0u8; 1];
    !matches!(io.get_ref().peek(&mut first).await, Ok(n) if n > 0)
}

/// A request head served here, taken from the socket.
struct Head {
    request: Request<Body>,
    keep_alive: bool,
}

/// The next request head, taken from the socket if it is a follow's and came whole;
/// `None` (and nothing taken) otherwise.
async fn take_head(io: &mut Socket) -> io::Result<Option<Head>> {
    let mut buffer = vec![0; HEAD_BYTES];
    let seen = io.get_ref().peek(&mut buffer).await?;
    let Some((head, length)) = follow_head(&buffer[..seen]) else {
        return Ok(None);
    };
    // The head's bytes are in the socket already: this takes them and nothing more.
    io.read_exact(&mut buffer[..length]).await?;
    Ok(Some(head))
}

/// The request in `bytes` and the length of its head, if the head is whole and asks
/// for a follow with nothing hyper would have to handle.
fn follow_head(bytes: &[u8]) -> Option<(Head, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(length) = parsed.parse(bytes).ok()? else {
        return None;
    };
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    // Origin form only (`/path?query`), as browsers and our clients send it.
    let target = parsed.path.filter(|target| target.starts_with('/'))?;
    let uri: Uri = target.parse().ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        headers.append(
            HeaderName::from_bytes(field.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(field.value).ok()?,
        );
    }
    let no_body = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|value| value == "0");
    if !no_body
        || headers.contains_key(header::EXPECT)
        || headers.contains_key(header::UPGRADE)
        || !is_follow(&uri, &headers)
    {
        return None;
    }
    let keep_alive = !asks_to_close(&headers);
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some((
        Head {
            request,
            keep_alive,
        },
        length,
    ))
}

/// Whether a `GET` of `uri` with `headers` opens a follow (by the rules of
/// `messages::read` and `messages::read_ndjson`): a request those answer otherwise
/// (a snapshot, a 400) is left to hyper.
fn is_follow(uri: &Uri, headers: &HeaderMap) -> bool {
    let Some((process, route)) = uri
        .path()
        .strip_prefix("/processes/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    let Some(follow) = MessagesQuery::parse(uri.query())
        .and_then(|query| query.follow())
        .ok()
    else {
        return false;
    };
    !process.is_empty()
        && match route {
            "messages" => Format::negotiate(headers, follow) != Format::Snapshot,
            "messages/stream" => follow != Some(false),
            _ => false,
        }
}

/// Whether `headers` carry `Connection: close`.
fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// How a response's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// A 204 or a 304: no body, whatever the response holds.
    Nothing,
    /// A body that ended before it began: `content-length: 0`.
    Empty,
    /// `content-length`, of a body whose size is known.
    Length(u64),
    /// `transfer-encoding: chunked`, one chunk per frame.
    Chunked,
}

impl Framing {
    /// hyper's rule: from the status and the body (whose size is exact for a body
    /// known in advance, such as an error's JSON, and unknown for a follow).
    fn of(status: StatusCode, body: &Body) -> Self {
        if matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
            Self::Nothing
        } else if body.is_end_stream() {
            Self::Empty
        } else {
            body.size_hint().exact().map_or(Self::Chunked, Self::Length)
        }
    }
}

/// Serves one request and writes its response; whether the connection may serve
/// another.
async fn respond<S>(
    io: &mut Socket,
    service: &mut S,
    head: Head,
    activity: &Activity,
) -> io::Result<bool>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
    let Ok(()) = ready;
    // Whether to look for the client's close: not once it sent more (it waits its turn).
    let mut watching = true;
    // In a block of its own, so that the call's future is freed once it answered.
    let response = {
        let call = service.call(head.request);
        tokio::pin!(call);
        loop {
            tokio::select! {
                response = &mut call => {
                    let Ok(response) = response;
                    break response;
                }
                gone = client_gone(io), if watching => {
                    if gone {
                        return Ok(false);
                    }
                    watching = false;
                }
            }
        }
    };
    let (parts, mut body) = response.into_parts();
    if parts.status.is_informational() {
        return Err(io::Error::other("a 1xx response has no place here"));
    }
    let keep_alive =
        head.keep_alive && !activity.asked_to_close() && !asks_to_close(&parts.headers);
    let framing = Framing::of(parts.status, &body);
    io.write_all(&response_head(
        parts.status,
        &parts.headers,
        framing,
        keep_alive,
    ))
    .await?;
    drop(parts);
    let mut left = match framing {
        Framing::Nothing | Framing::Empty | Framing::Length(0) => return Ok(keep_alive),
        Framing::Length(length) => length,
        Framing::Chunked => u64::MAX,
    };
    loop {
        let frame = tokio::select! {
            frame = next_frame(&mut body) => frame,
            gone = client_gone(io), if watching => {
                if gone {
                    return Ok(false);
                }
                watching = false;
                continue;
            }
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: hyper sends them only to a client that asks (`TE: trailers`),
                // and nothing here makes them.
                Err(_) => continue,
            },
            Some(Err(error)) => {
                // Cut short: the client sees a body without its end.
                tracing::debug!(%error, "a response body failed mid-way");
                return Ok(false);
            }
            None if framing == Framing::Chunked => {
                io.write_all(b"0\r\n\r\n").await?;
                return Ok(keep_alive);
            }
            // The body ended before its length: the connection cannot go on.
            None => return Ok(false),
        };
        let last = body.is_end_stream();
        if framing == Framing::Chunked {
            // An empty chunk would end the body.
            if !data.is_empty() || last {
                write_chunk(io, &data, last).await?;
            }
            if last {
                return Ok(keep_alive);
            }
            continue;
        }
        let length = data.len() as u64;
        if length > left {
            return Err(io::Error::other("a response body over its content-length"));
        }
        io.write_all(&data).await?;
        left -= length;
        if left == 0 {
            return Ok(keep_alive);
        }
        if last {
            return Ok(false);
        }
    }
}

async fn next_frame(body: &mut Body) -> Option<Result<Frame<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// The status line and headers, as hyper writes them: the response's headers in
/// order (its `content-length` in place when the body has a length: axum's routes set
/// it from the body), then `connection: close` if the connection ends after this, the
/// length (if not written yet) or `transfer-encoding: chunked`, and `date`. The
/// framing is the body's: nothing in the router sets `transfer-encoding`.
fn response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    keep_alive: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(
        64 + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>(),
    );
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut length_written = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            if length_written || !matches!(framing, Framing::Length(_)) {
                continue;
            }
            length_written = true;
        } else if name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !asks_to_close(headers) {
        head.extend_from_slice(b"connection: close\r\n");
    }
    match framing {
        Framing::Nothing => {}
        Framing::Length(_) if length_written => {}
        Framing::Empty => head.extend_from_slice(b"content-length: 0\r\n"),
        Framing::Length(length) => {
            head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(SystemTime::now());
        head.extend_from_slice(format!("date: {now}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Writes `data` as one chunk, with the last (empty) chunk after it if `last`, in
/// one write when the socket takes it.
async fn write_chunk(io: &mut Socket, data: &[u8], last: bool) -> io::Result<()> {
    if data.is_empty() {
        // The end alone: an empty chunk is the end.
        return io.write_all(b"0\r\n\r\n").await;
    }
    let mut size = [0u8; CHUNK_SIZE_LINE];
    let unused = {
        let mut line = &mut size[..];
        write!(line, "{:X}\r\n", data.len())?;
        line.len()
    };
    let end: &[u8] = if last { b"\r\n0\r\n\r\n" } else { b"\r\n" };
    let mut slices = [
        IoSlice::new(&size[..CHUNK_SIZE_LINE - unused]),
        IoSlice::new(data),
        IoSlice::new(end),
    ];
    let mut parts = &mut slices[..];
    while !parts.is_empty() {
        let n = io.write_vectored(parts).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::net::TcpListener;

    use super::*;

    const FOLLOW: &str =
        "GET /processes/p1/messages HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n";

    #[test]
    fn a_whole_follow_head_is_taken_up_to_its_end_and_no_further() {
        let pipelined = format!("{FOLLOW}GET /healthz HTTP/1.1\r\n\r\n");
        let (head, length) = follow_head(pipelined.as_bytes()).expect("a follow");
        assert_eq!(length, FOLLOW.len());
        assert_eq!(head.request.uri(), "/processes/p1/messages");
        assert_eq!(head.request.headers()["accept"], "text/event-stream");
        assert_eq!(head.request.headers()["host"], "a");
        assert!(head.keep_alive);
    }

    #[test]
    fn follows_asked_for_by_accept_by_query_or_by_path_are_served_here() {
        for head in [
            "GET /processes/p1/messages?follow=true HTTP/1.1\r\n\r\n",
            "GET /processes/p1/messages?after=3-0 HTTP/1.1\r\nAccept: application/x-ndjson\r\n\r\n",
            "GET /processes/p1/messages/stream HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(follow_head(head.as_bytes()).is_some(), "{head:?}");
        }
        let (head, _) = follow_head(
            b"GET /processes/p1/messages/stream HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n",
        )
        .expect("a follow");
        assert!(!head.keep_alive);
    }

    #[test]
    fn anything_but_a_whole_bodiless_http_1_1_follow_head_is_left_to_hyper() {
        let sse = "Accept: text/event-stream\r\n";
        for head in [
            FOLLOW[..FOLLOW.len() - 2].to_owned(),
            format!("GET /processes/p1/messages HTTP/1.0\r\n{sse}\r\n"),
            format!("HEAD /processes/p1/messages HTTP/1.1\r\n{sse}\r\n"),
            format!("POST /processes/p1/messages HTTP/1.1\r\n{sse}\r\n"),
            format!("GET http://a/processes/p1/messages HTTP/1.1\r\n{sse}\r\n"),
            format!("GET /processes//messages HTTP/1.1\r\n{sse}\r\n"),
            format!("GET /processes/p1/messages/ HTTP/1.1\r\n{sse}\r\n"),
            format!("GET /healthz HTTP/1.1\r\n{sse}\r\n"),
            // Snapshots, and a query the handler refuses.
            "GET /processes/p1/messages HTTP/1.1\r\n\r\n".to_owned(),
            "GET /processes/p1/messages HTTP/1.1\r\nAccept: application/json\r\n\r\n".to_owned(),
            "GET /processes/p1/messages/stream?follow=false HTTP/1.1\r\n\r\n".to_owned(),
            format!("GET /processes/p1/messages?follow=maybe HTTP/1.1\r\n{sse}\r\n"),
            // Bodies, and what only hyper handles.
            format!("GET /processes/p1/messages HTTP/1.1\r\n{sse}Content-Length: 3\r\n\r\nabc"),
            format!(
                "GET /processes/p1/messages HTTP/1.1\r\n{sse}Transfer-Encoding: chunked\r\n\r\n"
            ),
            format!("GET /processes/p1/messages HTTP/1.1\r\n{sse}Expect: 100-continue\r\n\r\n"),
            format!("GET /processes/p1/messages HTTP/1.1\r\n{sse}Upgrade: h2c\r\n\r\n"),
            // More fields than the router takes.
            format!(
                "GET /processes/p1/messages HTTP/1.1\r\n{sse}{}\r\n",
                "x-a: 1\r\n".repeat(MAX_HEADER_FIELDS)
            ),
        ] {
            assert!(follow_head(head.as_bytes()).is_none(), "{head:?}");
        }
    }

    #[test]
    fn the_response_head_is_written_as_hyper_writes_it() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let head = response_head(StatusCode::OK, &headers, Framing::Chunked, true);
        let head = String::from_utf8(head).unwrap();
        let (head, date) = head.split_once("date: ").expect("a date");
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-a: 1\r\nx-a: 2\r\n\
            transfer-encoding: chunked\r\n"
        );
        let date = date.strip_suffix("\r\n\r\n").expect("the head's end");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");

        let head = response_head(
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            Framing::Nothing,
            false,
        );
        assert!(String::from_utf8(head)
            .unwrap()
            .starts_with("HTTP/1.1 204 No Content\r\nconnection: close\r\ndate: "));
        let head = response_head(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            Framing::Length(12),
            true,
        );
        assert!(String::from_utf8(head)
            .unwrap()
            .starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\ndate: "));
        // A length the route set stays in its place, before `connection: close`.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        let head = response_head(
            StatusCode::BAD_REQUEST,
            &headers,
            Framing::Length(12),
            false,
        );
        assert!(String::from_utf8(head).unwrap().starts_with(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nx-request-id: r1\r\n\
            connection: close\r\ndate: "
        ));
    }

    /// A loopback connection served by [`serve`] with `service`, and its end.
    async fn served<S>(service: S) -> (TcpStream, tokio::task::JoinHandle<io::Result<Ended>>)
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Send + 'static,
        S::Future: Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let ended = tokio::spawn(async move {
            let mut service = service;
            let mut io = WriteTimeout::new(stream, Duration::from_secs(5));
            serve(&mut io, &mut service, &Activity::default()).await
        });
        (client, ended)
    }

    #[tokio::test]
    async fn each_frame_is_one_chunk_empty_ones_skipped_then_the_next_request_goes_to_hyper() {
        let service = tower::service_fn(|_request: Request<Body>| async {
            let frames = ["abc", "", "0123456789abcdef"].map(Ok::<_, Infallible>);
            Ok::<_, Infallible>(Response::new(Body::from_stream(futures::stream::iter(
                frames,
            ))))
        });
        let (mut client, ended) = served(service).await;
        client
            .write_all(format!("{FOLLOW}GET /healthz HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("served within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(ended, Ended::ToHyper);
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        let body = answer.split_once("\r\n\r\n").expect("a head").1;
        assert_eq!(body, "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_body_drops_the_body() {
        let (dropped, on_drop) = tokio::sync::oneshot::channel::<()>();
        let dropped = std::sync::Mutex::new(Some(dropped));
        let service = tower::service_fn(move |_request: Request<Body>| {
            let guard = dropped.lock().unwrap().take();
            async move {
                // A first frame, then nothing for good; `guard` goes with the body.
                let never = futures::stream::unfold(guard, |guard| async move {
                    std::future::pending::<()>().await;
                    Some((Ok::<_, Infallible>(""), guard))
                });
                let body = futures::stream::iter([Ok("event")]).chain(never);
                Ok::<_, Infallible>(Response::new(Body::from_stream(body)))
            }
        });
        let (mut client, ended) = served(service).await;
        client.write_all(FOLLOW.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let mut seen = 0;
        while !String::from_utf8_lossy(&answer[..seen]).contains("event") {
            seen += client.read(&mut answer[seen..]).await.unwrap();
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), on_drop)
            .await
            .expect("the body is dropped within 5 s of the client's close")
            .unwrap_err();
        assert_eq!(ended.await.unwrap().unwrap(), Ended::Closed);
    }
}

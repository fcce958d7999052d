//! The lean SSE followers: many in one process, each checking that it gets exactly
//! seqs 1, 2, … then the end, and timing each message's receipt.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::client::{connect, find, io_error, read_head, reserve, Chunked, Routes};

/// Followers connect this many at a time.
pub const CONNECT_BATCH: usize = 500;

/// Counters the followers share with the driver.
#[derive(Default)]
pub struct Tally {
    /// Follows whose `200` head arrived.
    pub opened: AtomicUsize,
    /// Follows answered 503 (busy) and tried again, as EventSource does.
    pub open_retries: AtomicUsize,
    /// Messages received, all followers together.
    pub delivered: AtomicU64,
    pub notify: Notify,
}

impl Tally {
    /// Waits until `delivered` reaches `target`, up to `timeout`.
    pub async fn wait_delivered(&self, target: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.delivered.load(Ordering::SeqCst) >= target {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.delivered.load(Ordering::SeqCst) >= target;
            }
        }
    }

    /// Waits until `opened` reaches `target`, up to `timeout`.
    pub async fn wait_opened(&self, target: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.opened.load(Ordering::SeqCst) < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// What one SSE follower saw.
#[derive(Debug, Default)]
pub struct Followed {
    pub process: usize,
    pub received: u64,
    pub last_seq: u64,
    /// Messages at or below a seq already received.
    pub duplicates: u64,
    /// The end event's id.
    pub end: Option<String>,
    pub problems: Vec<String>,
    /// Seq and receipt time of each message, when recorded.
    pub times: Vec<(u32, Instant)>,
}

impl Followed {
    /// Exactly seqs 1..=`last`, then the end `<last>-1`, and nothing wrong.
    pub fn verify(&self, last: u64) -> Result<(), String> {
        let mut wrong = self.problems.clone();
        if self.received != last || self.last_seq != last {
            wrong.push(format!(
                "received {} messages up to seq {}, expected {last}",
                self.received, self.last_seq
            ));
        }
        if self.end.as_deref() != Some(format!("{last}-1").as_str()) {
            wrong.push(format!("end {:?}, expected {last}-1", self.end));
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

/// Where agent-stream's SSE follow of `name` is.
pub fn follow_path(name: &str) -> String {
    Routes::AgentStream.follow(name)
}

/// Follows `path` over SSE from the beginning until the end event and the end of the
/// response, or `deadline`.
pub async fn follow_sse(
    port: u16,
    path: String,
    process: usize,
    tally: Arc<Tally>,
    record: bool,
    deadline: tokio::time::Instant,
) -> Followed {
    let mut out = Followed {
        process,
        ..Default::default()
    };
    match tokio::time::timeout_at(
        deadline,
        follow_sse_inner(port, &path, &tally, record, &mut out),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => out.problems.push(format!("{path}: {error}")),
        Err(_) => out.problems.push(format!(
            "{path}: no end by the deadline (last seq {})",
            out.last_seq
        )),
    }
    out
}

async fn follow_sse_inner(
    port: u16,
    path: &str,
    tally: &Tally,
    record: bool,
    out: &mut Followed,
) -> io::Result<()> {
    let (mut stream, mut raw) = open_sse(port, path, tally).await?;
    tally.opened.fetch_add(1, Ordering::SeqCst);
    let mut chunked = Chunked::default();
    let mut data = Vec::with_capacity(2048);
    let mut at = Instant::now();
    loop {
        chunked.decode(&mut raw, &mut data)?;
        let delivered = take_frames(&mut data, at, record, out);
        if delivered > 0 {
            tally.delivered.fetch_add(delivered, Ordering::SeqCst);
            tally.notify.notify_one();
        }
        if chunked.done() {
            break;
        }
        if data.capacity() > 64 * 1024 && data.len() < 1024 {
            data.shrink_to(4096);
        }
        reserve(&mut raw);
        let n = stream.read_buf(&mut raw).await?;
        at = Instant::now();
        if n == 0 {
            return Err(io_error(format!(
                "the response ended without its last chunk (last seq {}, end {:?})",
                out.last_seq, out.end
            )));
        }
    }
    if out.end.is_none() {
        return Err(io_error(format!(
            "the response ended without the end event (last seq {})",
            out.last_seq
        )));
    }
    if !data.is_empty() {
        out.problems.push(format!(
            "bytes after the last frame: {:?}",
            String::from_utf8_lossy(&data)
        ));
    }
    Ok(())
}

/// Sends the follow's request and reads its head: the stream and the bytes after the
/// head. A 503 (busy) is tried again a second later, as EventSource does, 30 times at
/// most; any other answer than a chunked 200 is an error.
async fn open_sse(port: u16, path: &str, tally: &Tally) -> io::Result<(TcpStream, Vec<u8>)> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n");
    let mut tries = 0;
    loop {
        let mut stream = connect(port).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(2048);
        let head = read_head(&mut stream, &mut raw).await?;
        if head.status == 503 && tries < 30 {
            tries += 1;
            tally.open_retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if head.status != 200 || !head.chunked {
            let mut body = raw.clone();
            let _ =
                tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut body)).await;
            return Err(io_error(format!(
                "follow answered {} (chunked: {}): {}",
                head.status,
                head.chunked,
                String::from_utf8_lossy(&body)
            )));
        }
        return Ok((stream, raw));
    }
}

/// Handles every complete frame at the start of `data` and drops them; how many were
/// messages.
fn take_frames(data: &mut Vec<u8>, at: Instant, record: bool, out: &mut Followed) -> u64 {
    let mut start = 0;
    let mut delivered = 0;
    while let Some(i) = find(&data[start..], b"\n\n") {
        if sse_frame(&data[start..start + i], at, record, out) {
            delivered += 1;
        }
        start += i + 2;
    }
    data.drain(..start);
    delivered
}

/// One SSE frame's fields.
#[derive(Default)]
struct Frame<'a> {
    id: Option<&'a [u8]>,
    event: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
}

/// Splits a frame into its fields; an unknown field is a problem.
fn parse_frame<'a>(frame: &'a [u8], out: &mut Followed) -> Frame<'a> {
    let mut fields = Frame::default();
    for line in frame.split(|b| *b == b'\n') {
        if line.is_empty() || line.starts_with(b":") {
            continue;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" => fields.id = Some(value),
            b"event" => fields.event = Some(value),
            b"data" => fields.data = Some(value),
            b"retry" => {}
            _ => out.problems.push(format!(
                "unexpected SSE line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
    fields
}

/// Handles one SSE frame; true when it was a message.
fn sse_frame(frame: &[u8], at: Instant, record: bool, out: &mut Followed) -> bool {
    let fields = parse_frame(frame, out);
    if out.end.is_some() && (fields.id.is_some() || fields.event.is_some()) {
        out.problems.push(format!(
            "a frame after the end: {:?}",
            String::from_utf8_lossy(frame)
        ));
        return false;
    }
    match fields.event {
        None if fields.id.is_none() => false,
        Some(b"message") => message_frame(&fields, at, record, out),
        Some(b"end") => {
            out.end = Some(String::from_utf8_lossy(fields.id.unwrap_or_default()).into_owned());
            false
        }
        other => {
            out.problems.push(format!(
                "unexpected SSE event {:?}",
                other.map(String::from_utf8_lossy)
            ));
            false
        }
    }
}

/// A message frame: its seq must follow the last one, its data carry its stream_id.
fn message_frame(fields: &Frame, at: Instant, record: bool, out: &mut Followed) -> bool {
    let id = fields.id.unwrap_or_default();
    let seq = std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.strip_suffix("-0"))
        .and_then(|s| s.parse::<u64>().ok());
    let Some(seq) = seq else {
        out.problems
            .push(format!("message id {:?}", String::from_utf8_lossy(id)));
        return false;
    };
    if seq != out.last_seq + 1 {
        out.problems
            .push(format!("seq {seq} after seq {}", out.last_seq));
        if seq <= out.last_seq {
            out.duplicates += 1;
            return true;
        }
    }
    let mut tag = Vec::with_capacity(id.len() + 16);
    tag.extend_from_slice(b"\"stream_id\":\"");
    tag.extend_from_slice(id);
    tag.push(b'"');
    if fields.data.is_none_or(|d| find(d, &tag).is_none()) {
        out.problems
            .push(format!("the data of {seq}-0 does not carry its stream_id"));
    }
    out.last_seq = seq;
    out.received += 1;
    if record {
        out.times.push((seq as u32, at));
    }
    true
}

/// Opens `count` SSE follows, `CONNECT_BATCH` at a time, each of `paths[i % paths.len()]`
/// (its `process` is `i % paths.len()`); waits for every head. Returns the handles.
pub async fn open_followers(
    port: u16,
    paths: &[String],
    count: usize,
    tally: &Arc<Tally>,
    record: bool,
    deadline: tokio::time::Instant,
) -> Result<Vec<tokio::task::JoinHandle<Followed>>, String> {
    let mut handles = Vec::with_capacity(count);
    let base = tally.opened.load(Ordering::SeqCst);
    for i in 0..count {
        let process = i % paths.len();
        handles.push(tokio::spawn(follow_sse(
            port,
            paths[process].clone(),
            process,
            tally.clone(),
            record,
            deadline,
        )));
        if ((i + 1) % CONNECT_BATCH == 0 || i + 1 == count)
            && !tally
                .wait_opened(base + i + 1, Duration::from_secs(60))
                .await
        {
            return Err(format!(
                "only {} of {} follows opened within 60 s",
                tally.opened.load(Ordering::SeqCst) - base,
                i + 1
            ));
        }
    }
    Ok(handles)
}

pub async fn join_all(handles: Vec<tokio::task::JoinHandle<Followed>>) -> Vec<Followed> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap_or_else(|e| Followed {
            problems: vec![format!("follower task failed: {e}")],
            ..Default::default()
        }));
    }
    out
}

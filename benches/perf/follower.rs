//! The lean SSE followers: many in one process, each checking that it gets exactly
//! seqs 1, 2, … then the end, and timing each message's receipt.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::client::{connect, find, io_error, read_head, reserve, Chunked};

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

/// Follows `/processes/{name}/messages` over SSE from the beginning until the end
/// event and the end of the response, or `deadline`.
pub async fn follow_sse(
    port: u16,
    name: String,
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
        follow_sse_inner(port, &name, &tally, record, &mut out),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => out.problems.push(format!("{name}: {error}")),
        Err(_) => out.problems.push(format!(
            "{name}: no end by the deadline (last seq {})",
            out.last_seq
        )),
    }
    out
}

pub async fn follow_sse_inner(
    port: u16,
    name: &str,
    tally: &Tally,
    record: bool,
    out: &mut Followed,
) -> io::Result<()> {
    let mut tries = 0;
    let (mut stream, mut raw, head) = loop {
        let mut stream = connect(port).await?;
        stream
            .write_all(
                format!("GET /processes/{name}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::with_capacity(2048);
        let head = read_head(&mut stream, &mut raw).await?;
        // A busy instance says so with a 503; a client tries again a second later.
        if head.status == 503 && tries < 30 {
            tries += 1;
            tally.open_retries.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        break (stream, raw, head);
    };
    if head.status != 200 || !head.chunked {
        let mut body = raw.clone();
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read_buf(&mut body)).await;
        return Err(io_error(format!(
            "follow answered {} (chunked: {}): {}",
            head.status,
            head.chunked,
            String::from_utf8_lossy(&body)
        )));
    }
    tally.opened.fetch_add(1, Ordering::SeqCst);
    let mut chunked = Chunked::default();
    let mut data = Vec::with_capacity(2048);
    let mut at = Instant::now();
    loop {
        chunked.decode(&mut raw, &mut data)?;
        let mut start = 0;
        let mut delivered = 0;
        while let Some(i) = find(&data[start..], b"\n\n") {
            if sse_frame(&data[start..start + i], at, record, out) {
                delivered += 1;
            }
            start += i + 2;
        }
        data.drain(..start);
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

/// Handles one SSE frame; true when it was a message.
pub fn sse_frame(frame: &[u8], at: Instant, record: bool, out: &mut Followed) -> bool {
    let mut id: Option<&[u8]> = None;
    let mut event: Option<&[u8]> = None;
    let mut data: Option<&[u8]> = None;
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
            b"id" => id = Some(value),
            b"event" => event = Some(value),
            b"data" => data = Some(value),
            b"retry" => {}
            _ => out.problems.push(format!(
                "unexpected SSE line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
    if out.end.is_some() && (id.is_some() || event.is_some()) {
        out.problems.push(format!(
            "a frame after the end: {:?}",
            String::from_utf8_lossy(frame)
        ));
        return false;
    }
    match event {
        None if id.is_none() => false,
        Some(b"message") => {
            let id = id.unwrap_or_default();
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
            if data.is_none_or(|d| find(d, &tag).is_none()) {
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
        Some(b"end") => {
            out.end = Some(String::from_utf8_lossy(id.unwrap_or_default()).into_owned());
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

/// Opens `count` SSE follows, `CONNECT_BATCH` at a time, each of the process
/// `names[i % names.len()]`; waits for every head. Returns the handles.
pub async fn open_followers(
    port: u16,
    names: &[String],
    count: usize,
    tally: &Arc<Tally>,
    record: bool,
    deadline: tokio::time::Instant,
) -> Result<Vec<tokio::task::JoinHandle<Followed>>, String> {
    let mut handles = Vec::with_capacity(count);
    let base = tally.opened.load(Ordering::SeqCst);
    for i in 0..count {
        let process = i % names.len();
        handles.push(tokio::spawn(follow_sse(
            port,
            names[process].clone(),
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

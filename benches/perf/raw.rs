//! The raw baselines: a bare INSERT + XADD, read back with XREAD BLOCK by one reader or
//! written by it to many sockets: the floor agent-stream's figures are held against.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::streams::StreamReadReply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{find, io_error};
use crate::env::{bench_redis, Env};
use crate::follower::{join_all, open_followers, Tally};
use crate::latency::LATENCY_WARMUP;
use crate::messages::{message, with_stream_id};
use crate::report::{Report, Scenario};

/// The raw baseline's append: a bare `INSERT` (autocommit) into `perf.messages`, then
/// the `XADD` agent-stream would make.
pub async fn raw_append(
    env: &Env,
    redis: &mut redis::aio::MultiplexedConnection,
    key: &str,
    stream_key: &str,
    seq: u64,
    body: &str,
) {
    sqlx::query("INSERT INTO perf.messages (process_id, seq, id, body) VALUES ($1, $2, $3, $4)")
        .bind(key)
        .bind(seq as i64)
        .bind(format!("{key}-{seq}"))
        .bind(body)
        .execute(&env.db)
        .await
        .expect("raw INSERT");
    let _: String = redis::cmd("XADD")
        .arg(stream_key)
        .arg("MAXLEN")
        .arg("~")
        .arg(1000)
        .arg(format!("{seq}-0"))
        .arg("message")
        .arg(body)
        .query_async(redis)
        .await
        .expect("raw XADD");
}

/// The floor of fan-out on this machine: `INSERT` + `XADD` → one raw `XREAD BLOCK`
/// reader in this process, which writes each entry as an SSE frame (one chunk) to
/// `followers` plain TCP connections in turn, read by the same lean SSE clients as the
/// server's followers. Each (message, follower)'s time from before the INSERT. Sorted.
pub async fn raw_fanout_latency(
    env: &Env,
    report: &mut Report,
    key: &str,
    followers: usize,
    samples: u64,
) -> Vec<Duration> {
    // Set up: a listener that answers each follow's head, and the followers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the raw fan-out listener");
    let port = listener.local_addr().expect("local address").port();
    let acceptor = tokio::spawn(accept_sse(listener, followers));
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let handles = open_followers(port, &[key.to_owned()], followers, &tally, true, deadline)
        .await
        .unwrap_or_else(|e| panic!("raw fan-out: {e}"));
    let sockets = tokio::time::timeout(Duration::from_secs(60), acceptor)
        .await
        .expect("raw fan-out: accept timed out")
        .expect("raw fan-out: acceptor")
        .expect("raw fan-out: accept");

    // Drive: the reader fans out what the writer appends, one at a time.
    let total = LATENCY_WARMUP + samples;
    let stream_key = format!("perf:{key}:stream");
    let fan = tokio::spawn(fan_out_entries(
        env.redis.url(),
        stream_key.clone(),
        sockets,
        total,
    ));
    let mut writer = env.redis().await;
    let mut sent = Vec::with_capacity(total as usize + 1);
    sent.push(Instant::now());
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 1..=total {
        let body = with_stream_id(&message(key, seq), seq);
        let started = Instant::now();
        raw_append(env, &mut writer, key, &stream_key, seq, &body).await;
        sent.push(started);
        if !tally
            .wait_delivered(seq * followers as u64, Duration::from_secs(10))
            .await
        {
            panic!("raw fan-out: message {seq} did not reach every follower in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), fan).await;

    // Measure.
    let states = join_all(handles).await;
    let mut delays = Vec::with_capacity(samples as usize * followers);
    for state in &states {
        if let Err(e) = state.verify(total) {
            report.problem(Scenario::Latency, format!("raw fan-out follower: {e}"));
        }
        for &(seq, at) in &state.times {
            if u64::from(seq) > LATENCY_WARMUP {
                delays.push(at.duration_since(sent[seq as usize]));
            }
        }
    }
    delays.sort();
    delays
}

/// Accepts `followers` connections, reads each one's request head and answers it with
/// an SSE response head (chunked); the sockets.
async fn accept_sse(listener: TcpListener, followers: usize) -> io::Result<Vec<TcpStream>> {
    let mut sockets = Vec::with_capacity(followers);
    // Bounded by the count, and by the timeout around the task.
    while sockets.len() < followers {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut head = Vec::with_capacity(512);
        while find(&head, b"\r\n\r\n").is_none() {
            if socket.read_buf(&mut head).await? == 0 || head.len() > 8192 {
                return Err(io_error("a raw follower sent no request head"));
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One `XREAD BLOCK` reader of `stream_key` writing each of `total` entries as an SSE
/// frame to every socket in turn; then the end event and the last chunk.
async fn fan_out_entries(url: String, stream_key: String, mut sockets: Vec<TcpStream>, total: u64) {
    let mut conn = bench_redis(&url, Duration::from_secs(10)).await;
    let mut last = "0-0".to_owned();
    let mut seen = 0;
    let stop = Instant::now() + Duration::from_secs(300);
    while seen < total && Instant::now() < stop {
        let Some(reply) = xread(&mut conn, &stream_key, &last).await else {
            continue;
        };
        for entry in reply.keys.into_iter().flat_map(|stream| stream.ids) {
            let chunk = sse_chunk(&entry);
            for socket in sockets.iter_mut() {
                let _ = socket.write_all(&chunk).await;
            }
            last = entry.id.clone();
            seen += 1;
        }
    }
    let frame = format!("id: {seen}-1\nevent: end\ndata: {{\"status\":\"succeeded\"}}\n\n");
    let chunk = format!("{:x}\r\n{frame}\r\n0\r\n\r\n", frame.len());
    for socket in sockets.iter_mut() {
        let _ = socket.write_all(chunk.as_bytes()).await;
    }
}

/// `XREAD COUNT 100 BLOCK 1000 STREAMS key last`: None on a timeout or an error.
async fn xread(
    conn: &mut redis::aio::MultiplexedConnection,
    stream_key: &str,
    last: &str,
) -> Option<StreamReadReply> {
    let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(100)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(stream_key)
        .arg(last)
        .query_async(conn)
        .await;
    reply.ok().flatten()
}

/// An entry as the chunk of one SSE message frame.
fn sse_chunk(entry: &redis::streams::StreamId) -> Vec<u8> {
    let body = match entry.map.get("message") {
        Some(redis::Value::BulkString(body)) => body.clone(),
        _ => Vec::new(),
    };
    let mut frame = format!("id: {}\nevent: message\ndata: ", entry.id).into_bytes();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b"\n\n");
    let mut chunk = format!("{:x}\r\n", frame.len()).into_bytes();
    chunk.extend_from_slice(&frame);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// `INSERT` (autocommit) into `perf.messages` + `XADD` → a raw `XREAD BLOCK` reader on
/// its own connection, one at a time: each sample's time from before the INSERT to the
/// reader's receipt. Sorted.
pub async fn raw_latency(env: &Env, key: &str, samples: u64) -> Vec<Duration> {
    let stream_key = format!("perf:{key}:stream");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let total = LATENCY_WARMUP + samples;
    let reader = tokio::spawn(read_entries(
        env.redis.url(),
        stream_key.clone(),
        total,
        sender,
    ));
    let mut writer = env.redis().await;
    let mut delays = Vec::with_capacity(samples as usize);
    // Let the reader block first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 1..=total {
        let body = with_stream_id(&message(key, seq), seq);
        let started = Instant::now();
        raw_append(env, &mut writer, key, &stream_key, seq, &body).await;
        match tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await {
            Ok(Some((got, at))) if got == seq => {
                if seq > LATENCY_WARMUP {
                    delays.push(at.duration_since(started));
                }
            }
            other => panic!("raw reader: expected seq {seq}, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    reader.abort();
    delays.sort();
    delays
}

/// One `XREAD BLOCK` reader of `stream_key`: each of `total` entries' seq and receipt
/// time goes to `sender` (120 s at most).
async fn read_entries(
    url: String,
    stream_key: String,
    total: u64,
    sender: tokio::sync::mpsc::UnboundedSender<(u64, Instant)>,
) {
    let mut conn = bench_redis(&url, Duration::from_secs(10)).await;
    let mut last = "0-0".to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while seen < total && Instant::now() < deadline {
        let reply = xread(&mut conn, &stream_key, &last).await;
        let at = Instant::now();
        let Some(reply) = reply else { continue };
        for entry in reply.keys.into_iter().flat_map(|stream| stream.ids) {
            let seq = entry
                .id
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            last = entry.id.clone();
            seen += 1;
            let _ = sender.send((seq, at));
        }
    }
}

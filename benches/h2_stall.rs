//! Measures what HTTP/2 streams whose client keeps its window shut cost a server (issue
//! 10, F2): appends a 10,000-message process, opens 100 snapshots of it on one HTTP/2
//! connection that never gives the server a byte of window, and samples the server's
//! resident memory until the server closes the connection (or 120 s pass).
//!
//! ```text
//! agent-stream serve --no-auth --listen 127.0.0.1:8099 &
//! cargo bench --bench h2_stall -- 127.0.0.1:8099 $!
//! ```

use std::time::{Duration, Instant};

const MESSAGES: usize = 10_000;
const BATCH: usize = 1_000;
const STREAMS: usize = 100;
const WATCH: Duration = Duration::from_secs(120);

fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this with no
    // arguments, as a check that it builds.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let [address, pid] = args.as_slice() else {
        println!(
            "h2_stall: cargo bench --bench h2_stall -- <host:port of a --no-auth server> <its pid>"
        );
        return;
    };
    let (address, pid) = (address.clone(), pid.clone());
    let http = reqwest::Client::new();
    let process = format!("stall-{}", std::process::id());
    let url = format!("http://{address}/processes/{process}");
    http.put(&url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let text = "x".repeat(1_000);
    for batch in 0..MESSAGES / BATCH {
        let messages: Vec<_> = (0..BATCH)
            .map(|i| serde_json::json!({ "id": format!("m-{batch}-{i}"), "type": "AssistantMessage", "payload": { "text": text } }))
            .collect();
        http.post(format!("{url}/messages"))
            .json(&messages)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    let before = rss_mib(&pid);

    let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let closed = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let opened = Instant::now();
    let mut heads = Vec::new();
    for _ in 0..STREAMS {
        let request = axum::http::Request::get(format!(
            "http://{address}/processes/{process}/messages?follow=false&limit={MESSAGES}"
        ))
        .body(())
        .unwrap();
        client = client.ready().await.unwrap();
        heads.push(client.send_request(request, true).unwrap().0);
    }
    // The responses are kept unread: a client that drops one resets its stream.
    let mut responses = Vec::new();
    for head in heads {
        if let Ok(response) = head.await {
            responses.push(response);
        }
    }
    let answered = responses.len();
    let mut peak = before;
    let mut held = None;
    while opened.elapsed() < WATCH {
        peak = peak.max(rss_mib(&pid));
        if closed.is_finished() {
            held = Some(opened.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "{answered} of {STREAMS} snapshot heads; RSS {before:.0} MiB before, {peak:.0} MiB peak, {:.0} MiB 1 s after; connection {}",
        rss_mib(&pid),
        match held {
            Some(held) => format!("closed by the server after {:.1} s", held.as_secs_f64()),
            None => format!("still open after {} s", WATCH.as_secs()),
        }
    );
}

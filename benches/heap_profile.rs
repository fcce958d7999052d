//! The heap profile of one idle connection and one idle follow (issue 12, adr/0015):
//!
//! ```sh
//! CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench --bench heap_profile
//! cargo bench --bench heap_profile -- follows 2000   # one phase, another count
//! ```
//!
//! Each phase runs in a child process of its own under dhat's allocator: the server
//! (`startup::serve`, the embedded store and feed, logs at `info` as the binary does)
//! starts in-process, a client opens `N` connections with plain blocking sockets (so
//! that the client allocates next to nothing) and leaves them idle, and the profile
//! is taken while they are open. Printed: the heap bytes and blocks per connection
//! (dhat's live totals before and after, divided by `N`), and the allocation sites
//! that hold at least one block per two connections, in bytes per connection. Phases:
//! - `connections`: a keep-alive connection that served one `GET /healthz`;
//! - `follows`: an SSE follow that received its process's first message and waits
//!   (ten follows per process, as in the fan-out bench);
//! - `hyper-follows`: the same, its request head sent in two writes, so that hyper
//!   serves it rather than the lean responder (adr/0018); hyper's read buffer then
//!   grows to 16 KiB (its first read holds part of the head);
//! - `session-follows`, then `-gzip`, `-br` and `-zstd`: an SSE follow of a process
//!   holding the fixture session (32 messages, 62 KB), caught up to its end and
//!   waiting, as it is and in each encoding (one tenth of `N`: a compressed follow
//!   holds its encoder, hundreds of KiB). zstd's encoder is C code whose allocations
//!   dhat does not see: the RSS figure printed beside the heap one shows it.
//!
//! These are heap bytes as asked of the allocator; RSS adds the allocator's rounding
//! and fragmentation (the fan-out bench measures the real binary from outside). Under
//! `cargo test` (no `--bench` argument) it does nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_stream::cli::{init_logging, LogFormat};
use agent_stream::config::FOLLOWER_BUFFER;
use agent_stream::http::{HttpConfig, Limits};
use agent_stream::startup::{self, Backends};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Connections (or follows) per phase unless one is given.
const DEFAULT_COUNT: usize = 2_000;
/// Follows per process in the `follows` phase.
const FOLLOWS_PER_PROCESS: usize = 10;
/// How long the client waits for any one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the server to settle once every connection is open (timers armed, the
/// follows' first looks done).
const SETTLE: Duration = Duration::from_millis(1_500);
/// Sites below this many blocks per connection are start-up and shared state.
const MIN_BLOCKS_PER_CONNECTION: f64 = 0.5;
/// Between the two writes of a head in the `hyper-follows` phase.
const SPLIT_PAUSE: Duration = Duration::from_millis(20);
/// The phases, in the order they run.
const PHASES: [&str; 7] = [
    "connections",
    "follows",
    "hyper-follows",
    "session-follows",
    "session-follows-gzip",
    "session-follows-br",
    "session-follows-zstd",
];
/// The session phases open this share of `N`.
const SESSION_SHARE: usize = 10;
/// A session follow is idle once nothing came for this long.
const QUIET: Duration = Duration::from_millis(300);
/// The environment variable that makes a child run one phase.
const PHASE_VAR: &str = "AGENT_STREAM_HEAP_PHASE";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(phase) = std::env::var(PHASE_VAR) {
        let count = args
            .iter()
            .find_map(|a| a.parse().ok())
            .unwrap_or(DEFAULT_COUNT);
        run_phase(&phase, count);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("heap_profile: a benchmark; run it with `cargo bench --bench heap_profile`");
        return;
    }
    let words: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let count = words
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_COUNT);
    let phases: Vec<&str> = PHASES
        .into_iter()
        .filter(|p| words.is_empty() || words.iter().any(|w| w.as_str() == *p))
        .collect();
    let phases = if phases.is_empty() {
        PHASES.to_vec()
    } else {
        phases
    };
    for phase in phases {
        let status = Command::new(std::env::current_exe().expect("own path"))
            .env(PHASE_VAR, phase)
            .arg(count.to_string())
            .status()
            .expect("start a phase");
        assert!(status.success(), "phase {phase}: {status}");
    }
}

fn run_phase(phase: &str, count: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    init_logging("info", LogFormat::Text);
    let file = std::env::temp_dir().join(format!("dhat-{phase}-{}.json", std::process::id()));
    let profiler = dhat::Profiler::builder().file_name(&file).build();
    let address = runtime.block_on(async {
        let listener = startup::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let config = HttpConfig {
            limits: Limits {
                max_follows: count * 2,
                ..Limits::default()
            },
            ..HttpConfig::default()
        };
        tokio::spawn(startup::serve(
            listener,
            Backends::embedded(FOLLOWER_BUFFER),
            config,
            std::future::pending(),
        ));
        address
    });
    let session = phase.starts_with("session-follows");
    let count = if session {
        (count / SESSION_SHARE).max(1)
    } else {
        count
    };
    let processes = count.div_ceil(FOLLOWS_PER_PROCESS);
    // Warm-up: what the first request of each kind sets up once (lazies, caches, the
    // processes' first messages) is not per connection.
    for process in 0..processes {
        let body = if session {
            serde_json::to_string(&agent_stream_testkit::fixtures::session()).expect("JSON")
        } else {
            r#"{"id":"m1","type":"text","payload":{"text":"hello"}}"#.to_owned()
        };
        append(address, &format!("heap-{process}"), &body);
    }
    drop(open(address, phase, 0));
    std::thread::sleep(SETTLE);

    let (before, rss_before) = (dhat::HeapStats::get(), resident_bytes());
    let connections: Vec<TcpStream> = (0..count)
        .map(|i| open(address, phase, i % processes))
        .collect();
    std::thread::sleep(SETTLE);
    let (after, rss_after) = (dhat::HeapStats::get(), resident_bytes());
    let per = |after: usize, before: usize| (after as f64 - before as f64) / count as f64;
    println!(
        "heap_profile: {phase}: {count} open: {:.0} bytes and {:.1} blocks of heap per {} \
        ({:.0} bytes of RSS, dhat's own bookkeeping included)",
        per(after.curr_bytes, before.curr_bytes),
        per(after.curr_blocks, before.curr_blocks),
        if phase != "connections" {
            "follow (connection included)"
        } else {
            "idle connection"
        },
        per(rss_after, rss_before),
    );
    drop(profiler);
    print_sites(&file, count);
    drop(connections);
}

/// Opens one connection of the phase's kind and reads until it is idle.
fn open(address: SocketAddr, phase: &str, process: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    let follow = |encoding: &str| {
        format!(
            "GET /processes/heap-{process}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{encoding}\r\n"
        )
    };
    let request = match phase {
        "connections" => "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
        "follows" | "hyper-follows" | "session-follows" => follow(""),
        other => match other.strip_prefix("session-follows-") {
            Some(codec) => follow(&format!("Accept-Encoding: {codec}\r\n")),
            None => panic!("no phase {other}: {}", PHASES.join(", ")),
        },
    };
    if phase == "hyper-follows" {
        // A head that is not whole at first goes to hyper.
        let (first, rest) = request.split_at(request.find("Host").expect("a Host line"));
        stream.write_all(first.as_bytes()).expect("request");
        std::thread::sleep(SPLIT_PAUSE);
        stream.write_all(rest.as_bytes()).expect("request");
    } else {
        stream.write_all(request.as_bytes()).expect("request");
    }
    if phase.starts_with("session-follows") {
        read_until_quiet(&mut stream);
        return stream;
    }
    // A whole answer (healthz), or the head and the first event (a follow).
    let follow = phase != "connections";
    let until: &[u8] = if follow { b"\n\n" } else { b"ok" };
    let mut seen = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !seen.windows(until.len()).any(|w| w == until)
        || (follow && !contains(&seen, b"event: message"))
    {
        let n = stream.read(&mut buffer).expect("answer");
        assert!(n > 0, "the server closed the connection");
        seen.extend_from_slice(&buffer[..n]);
    }
    stream
}

/// Reads the head and whatever follows until nothing comes for [`QUIET`] (a
/// compressed follow's bytes cannot be searched for an event).
fn read_until_quiet(stream: &mut TcpStream) {
    let mut seen = Vec::with_capacity(1024);
    let mut buffer = [0u8; 4096];
    while !contains(&seen, b"\r\n\r\n") {
        let n = stream.read(&mut buffer).expect("answer");
        assert!(n > 0, "the server closed the connection");
        seen.extend_from_slice(&buffer[..n]);
    }
    stream.set_read_timeout(Some(QUIET)).expect("timeout");
    while let Ok(n) = stream.read(&mut buffer) {
        assert!(n > 0, "the server closed the connection");
    }
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
}

/// This process's resident memory (`VmRSS`), in bytes.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| {
            kib.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Appends `body` (a message or an array of them) to `process` (creating it).
fn append(address: SocketAddr, process: &str, body: &str) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("timeout");
    let request = format!(
        "POST /processes/{process}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("append");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 20"),
        "append refused: {answer}"
    );
}

/// Allocation sites live at the profile's end, by bytes per connection: the first
/// frame of each that is neither the allocator nor a collection of std.
fn print_sites(file: &Path, count: usize) {
    let text = std::fs::read_to_string(file).expect("dhat output");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("dhat JSON");
    let frames: Vec<&str> = profile["ftbl"]
        .as_array()
        .expect("frame table")
        .iter()
        .map(|f| f.as_str().unwrap_or("?"))
        .collect();
    let mut sites: HashMap<String, (u64, u64)> = HashMap::new();
    for point in profile["pps"].as_array().expect("program points") {
        let (bytes, blocks) = (
            point["eb"].as_u64().unwrap_or(0),
            point["ebk"].as_u64().unwrap_or(0),
        );
        if blocks == 0 {
            continue;
        }
        let chain: Vec<&str> = point["fs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| frames.get(i.as_u64()? as usize).copied())
            .map(name)
            .filter(|f| !plumbing(f))
            .take(frames_per_site())
            .collect();
        let site = sites.entry(chain.join(" ← ")).or_default();
        site.0 += bytes;
        site.1 += blocks;
    }
    let mut sites: Vec<_> = sites
        .into_iter()
        .filter(|(_, (_, blocks))| *blocks as f64 / count as f64 >= MIN_BLOCKS_PER_CONNECTION)
        .collect();
    sites.sort_by_key(|(_, (bytes, _))| std::cmp::Reverse(*bytes));
    let mut total = 0.0;
    println!("| bytes per connection | blocks | site (first frames outside the allocator) |");
    println!("|---:|---:|---|");
    for (site, (bytes, blocks)) in &sites {
        let per = *bytes as f64 / count as f64;
        total += per;
        println!(
            "| {per:.0} | {:.1} | `{site}` |",
            *blocks as f64 / count as f64
        );
    }
    println!("| {total:.0} | | in all, sites of at least {MIN_BLOCKS_PER_CONNECTION} block per connection |");
    let _ = std::fs::remove_file(file);
}

/// A frame without its address, source location and generic arguments' noise.
fn name(frame: &str) -> &str {
    let frame = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    frame.split(" (").next().unwrap_or(frame)
}

/// Frames of the allocator and of std's collections, skipped to reach the caller.
fn plumbing(frame: &str) -> bool {
    const SKIPPED: &[&str] = &[
        "[root]",
        "alloc::",
        "<alloc::",
        "dhat::",
        "<dhat::",
        "core::",
        "<core::",
        "std::",
        "<std::",
        "__rust",
        "bytes::",
        "<bytes::",
        "hashbrown::",
        "<hashbrown::",
        "<T as ",
        "smallvec::",
        "<smallvec::",
    ];
    SKIPPED.iter().any(|prefix| frame.starts_with(prefix))
}

/// Frames named per site: 2, or `AGENT_STREAM_HEAP_FRAMES`.
fn frames_per_site() -> usize {
    std::env::var("AGENT_STREAM_HEAP_FRAMES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2)
}

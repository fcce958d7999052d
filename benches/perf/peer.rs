//! `peer`: the fan-out workload issue 12 measured from outside, run on agent-stream and on
//! the peer users pick for this job today, Vercel's `resumable-stream` (npm 2.2.x, on
//! Node, behind the small server in `peer/server.mjs`), side by side on the same Redis:
//! one producer emitting 2,000 small events 1 ms apart, K SSE followers attached first,
//! K = 1, 50 and 200. agent-stream's producer appends over HTTP, each append committed to
//! PostgreSQL before its answer; the peer's enqueues in memory and publishes through Redis
//! pub/sub (it stores nothing). The same lean SSE followers read both and check that each
//! gets every event once, in order, then the end.
//!
//! The peer's packages come from `peer/package-lock.json`: `npm ci` runs when its
//! `node_modules` lacks them. A machine without `node` and `npm` fails the scenario.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Conn, Routes};
use crate::env::Env;
use crate::figures::{mib, ms, quantile, ratio, thousands};
use crate::follower::{join_all, open_followers, Tally};
use crate::instances::{self, TempDir};
use crate::messages::small_message;
use crate::report::{Report, Scenario};
use crate::usage::RssSampler;

const PEER_EVENTS: u64 = 2000;
const PEER_SPACING: Duration = Duration::from_millis(1);
const PEER_FOLLOWERS: [usize; 3] = [1, 50, 200];
/// Events of the unmeasured run each side gets first (connections, JIT, caches).
const PEER_WARMUP_EVENTS: u64 = 300;
/// How long one run's followers may take to get everything: the peer's p99 with 200
/// followers was 7.7 s when issue 12 measured it.
const PEER_RUN_DEADLINE: Duration = Duration::from_secs(180);
/// How long the peer's server may take to answer `/healthz`.
const PEER_START_TIMEOUT: Duration = Duration::from_secs(30);
const PEER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/perf/peer");

/// One side of the comparison: where its calls go, and the process whose memory is its.
struct Side {
    port: u16,
    pid: u32,
    routes: Routes,
}

/// What one run on one side measured.
struct Run {
    /// Event sent → follower received, every (event, follower). Sorted.
    delays: Vec<Duration>,
    peak_rss_kib: u64,
    exact: usize,
    followers: usize,
    problems: Vec<String>,
}

pub async fn run(report: &mut Report) {
    let scenario = Scenario::Peer;
    let env = Env::start(false, &[]).await;
    let peer = match PeerServer::start(&env.redis.url()).await {
        Ok(peer) => peer,
        Err(e) => return report.problem(scenario, e),
    };
    let ours = Side {
        port: env.port,
        pid: env.server_pid(),
        routes: Routes::AgentStream,
    };
    let theirs = Side {
        port: peer.port,
        pid: peer.pid(),
        routes: Routes::Peer,
    };
    report.note(scenario, peer.describe());
    for side in [&ours, &theirs] {
        fan_out(side, 1, PEER_WARMUP_EVENTS).await;
    }
    for followers in PEER_FOLLOWERS {
        let ours_run = fan_out(&ours, followers, PEER_EVENTS).await;
        let peer_run = fan_out(&theirs, followers, PEER_EVENTS).await;
        for problem in &ours_run.problems {
            report.problem(scenario, problem.clone());
        }
        rows(report, followers, &ours_run, &peer_run);
    }
    drop(peer);
    drop(env);
}

/// One run: a stream, `followers` SSE follows of it, then `events` appends 1 ms apart
/// from one producer, then the end.
async fn fan_out(side: &Side, followers: usize, events: u64) -> Run {
    // Set up: the stream, its followers, a watch on the server's memory.
    let name = format!("peer-{followers}-{}", uuid::Uuid::new_v4().simple());
    let mut problems = Vec::new();
    let mut conn = match Conn::open(side.port).await {
        Ok(conn) => conn,
        Err(e) => return Run::failed(followers, format!("connect: {e}")),
    };
    if let Err(e) = conn.put_at(&side.routes.register(&name)).await {
        return Run::failed(followers, e);
    }
    let sampler = RssSampler::spawn(side.pid, Duration::from_millis(10));
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + PEER_RUN_DEADLINE;
    let paths = [side.routes.follow(&name)];
    let handles = match open_followers(side.port, &paths, followers, &tally, true, deadline).await {
        Ok(handles) => handles,
        Err(e) => return Run::failed(followers, e),
    };

    // Drive: the producer, then the end once every follower has every event.
    let sent = match produce(&mut conn, &side.routes.append(&name), events).await {
        Ok(sent) => sent,
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    let expected = (sent.len() as u64).saturating_sub(1) * followers as u64;
    tally.wait_delivered(expected, PEER_RUN_DEADLINE).await;
    let last = conn
        .finish_at(&side.routes.finish(&name))
        .await
        .unwrap_or_else(|e| {
            problems.push(e);
            0
        });
    let states = join_all(handles).await;
    let peak_rss_kib = sampler.stop().await;

    // Measure: every follower exact, each (event, follower)'s delay.
    let mut delays = Vec::with_capacity(expected as usize);
    let mut exact = 0;
    for state in &states {
        match state.verify(last) {
            Ok(()) => exact += 1,
            Err(e) if problems.len() < 10 => problems.push(e),
            Err(_) => {}
        }
        for &(seq, at) in &state.times {
            if let Some(sent) = sent.get(seq as usize) {
                delays.push(at.duration_since(*sent));
            }
        }
    }
    delays.sort();
    Run {
        delays,
        peak_rss_kib,
        exact,
        followers,
        problems,
    }
}

/// Appends `events` small messages at `path`, one every `PEER_SPACING` (or as soon as
/// the previous one is answered, when that takes longer): each seq's send time, by seq.
async fn produce(conn: &mut Conn, path: &str, events: u64) -> Result<Vec<Instant>, String> {
    let mut sent = Vec::with_capacity(events as usize + 1);
    sent.push(Instant::now());
    let start = tokio::time::Instant::now();
    for n in 1..=events {
        tokio::time::sleep_until(start + PEER_SPACING * n as u32).await;
        let at = Instant::now();
        let seq = conn
            .append_at(path, small_message("e", n).as_bytes())
            .await?;
        if seq != n {
            return Err(format!("{path}: event {n} stored as seq {seq}"));
        }
        sent.push(at);
    }
    Ok(sent)
}

/// The rows of one K: p50 and p99 delay, and the server's memory, ours beside the peer's.
fn rows(report: &mut Report, followers: usize, ours: &Run, peer: &Run) {
    let scenario = Scenario::Peer;
    let label = if followers == 1 {
        "1 SSE follower".to_owned()
    } else {
        format!("{followers} SSE followers")
    };
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (value, base) = (quantile(&ours.delays, q), quantile(&peer.delays, q));
        report.row(
            scenario,
            format!(
                "event sent → follower received, {name}, {label} (one producer, {} events 1 ms apart)",
                thousands(PEER_EVENTS as f64)
            ),
            ms(value),
            format!("{} (resumable-stream)", ms(base)),
            ratio(value.as_secs_f64(), base.as_secs_f64()),
            "–",
            None,
        );
    }
    report.row(
        scenario,
        format!("server peak RSS, {label}"),
        mib(ours.peak_rss_kib),
        format!("{} (resumable-stream on Node)", mib(peer.peak_rss_kib)),
        ratio(ours.peak_rss_kib as f64, peer.peak_rss_kib as f64),
        "–",
        None,
    );
    let peer_problems = if peer.problems.is_empty() {
        String::new()
    } else {
        format!(" (resumable-stream: {})", peer.problems.join("; "))
    };
    report.note(
        scenario,
        format!(
            "{label}: followers exact: agent-stream {}/{}, resumable-stream {}/{}{peer_problems}; max delay agent-stream {}, resumable-stream {}",
            ours.exact,
            ours.followers,
            peer.exact,
            peer.followers,
            ms(ours.delays.last().copied().unwrap_or_default()),
            ms(peer.delays.last().copied().unwrap_or_default()),
        ),
    );
}

impl Run {
    fn failed(followers: usize, problem: String) -> Self {
        Self {
            delays: Vec::new(),
            peak_rss_kib: 0,
            exact: 0,
            followers,
            problems: vec![problem],
        }
    }
}

/// The peer's Node server on a free port of 127.0.0.1, killed when dropped.
struct PeerServer {
    child: Child,
    port: u16,
    node: String,
    version: String,
    /// Holds its log.
    dir: TempDir,
}

impl PeerServer {
    async fn start(redis_url: &str) -> Result<Self, String> {
        let node = tool_version("node")?;
        install()?;
        let dir = TempDir::new("peer");
        let log = std::fs::File::create(dir.path().join("peer.log"))
            .map_err(|e| format!("the peer's log: {e}"))?;
        let port = instances::free_port();
        let child = Command::new("node")
            .arg("server.mjs")
            .current_dir(PEER_DIR)
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis_url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("node server.mjs: {e}"))?;
        let server = Self {
            child,
            port,
            node,
            version: installed_version()?,
            dir,
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn describe(&self) -> String {
        format!(
            "the peer is resumable-stream {} with redis (node-redis) from peer/package-lock.json, on Node {}, in one process like agent-stream's; agent-stream's appends are each committed to PostgreSQL (fsync on) before their answer, the peer stores nothing",
            self.version, self.node
        )
    }

    async fn wait_healthy(&self) -> Result<(), String> {
        let deadline = Instant::now() + PEER_START_TIMEOUT;
        // Bounded by the deadline.
        while Instant::now() < deadline {
            if let Ok(mut conn) = Conn::open(self.port).await {
                if let Ok((200, _)) = conn.call("GET", "/healthz", b"").await {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the peer's server did not answer /healthz in {PEER_START_TIMEOUT:?} (its log: {})",
            instances::tail(&self.dir.path().join("peer.log"), 20)
        ))
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `npm ci` in `peer/` when its packages are not installed yet.
fn install() -> Result<(), String> {
    let dir = Path::new(PEER_DIR);
    if dir
        .join("node_modules/resumable-stream/package.json")
        .exists()
    {
        return Ok(());
    }
    tool_version("npm")?;
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("npm ci: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "npm ci in {PEER_DIR} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn installed_version() -> Result<String, String> {
    let path = Path::new(PEER_DIR).join("node_modules/resumable-stream/package.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(manifest["version"].as_str().unwrap_or("?").to_owned())
}

/// `program --version`, or why the peer cannot run without it.
fn tool_version(program: &str) -> Result<String, String> {
    let output = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| format!("the peer scenario needs `{program}` (Node 20 and npm: apt-get install nodejs npm): {e}"))?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

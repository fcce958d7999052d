//! Fleet-wide cost grows with processes, not instances × processes (issue 11, item 2):
//! quiet followers of the same processes on three instances cost PostgreSQL at most half
//! again what they cost on one, and a message stored but never published (its `XADD`
//! lost) still reaches the followers on every instance, through the one republisher of
//! the fleet (adr/0014).
//!
//! The instances run on the suite's PostgreSQL and Redis (DATABASE_URL, REDIS_URL), each
//! test on a database and a Redis prefix of its own, so that PostgreSQL's transaction
//! counts (`pg_stat_database`) are this test's alone.

use std::io::Write;
use std::time::{Duration, Instant};

use agent_stream::adapters::postgres::PostgresStore;
use agent_stream::domain::{FinishStatus, NewMessage, ProcessId};
use agent_stream::ports::MessageStore;
use serde_json::Value;
use sqlx::Connection;
use tokio::task::JoinHandle;

use agent_stream_testkit::client::{process_id, Api, Attempt};
use agent_stream_testkit::fixtures::message;
use agent_stream_testkit::instances::Server;
use agent_stream_testkit::rig::serial;

/// Processes followed, each by one follower on every instance.
const PROCESSES: usize = 200;
/// Instances of the fleet, against the one that is measured alone.
const FLEET: usize = 3;
/// Between the follows opening and the measurement: every follower has caught up and is
/// quiet, and PostgreSQL's statistics have caught up too (a backend that goes idle
/// reports its counts up to 10 s later, so the setup's transactions must not land in
/// the window).
const SETTLE: Duration = Duration::from_secs(13);
/// How long transactions are counted, for each of the two setups, per window.
const WINDOW: Duration = Duration::from_secs(10);
/// Windows counted for each setup; the lowest is its rate.
const WINDOWS: usize = 2;
/// Attempts at opening a follow that the instance answers 503 (busy), as a client
/// retries them: a loaded machine opening hundreds at once may see a few.
const FOLLOW_ATTEMPTS: usize = 20;
/// The most the fleet may cost PostgreSQL, as a multiple of one instance's cost.
const MAX_RATIO: f64 = 1.5;
/// The bound on a lost publish's delay is two sweeps (2 × `--idle-poll`, 1 s) and a
/// sweep's own time; a follower that waits this long without it fails the test.
const LOST_PUBLISH_PATIENCE: Duration = Duration::from_secs(10);

/// The suite's shared server named by `name`; the test fails without it.
fn shared(name: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!("the fleet-cost drills run their instances on the suite's PostgreSQL and Redis: set {name} (`bash .ci/test` starts both and sets DATABASE_URL and REDIS_URL)")
    })
}

/// Prints a figure even when the test passes (libtest captures `eprintln!`).
fn report(line: String) {
    let _ = writeln!(std::io::stderr(), "[fleet cost] {line}");
}

/// A fresh database on the suite's PostgreSQL, with its URL.
async fn fresh_database() -> String {
    let admin = shared("DATABASE_URL");
    let name = format!("agent_stream_fleet_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the suite's PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("create the drill's database");
    let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let (server, _) = base
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{name}{query}")
}

/// Starts an instance on the drill's database and Redis prefix.
fn instance(database_url: &str, prefix: &str) -> Server {
    Server::start(
        database_url,
        Some(&shared("REDIS_URL")),
        &["--redis-prefix", prefix],
    )
}

/// Transactions PostgreSQL has counted for the database so far (committed and rolled
/// back), as its statistics say now.
async fn transactions(connection: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(connection)
    .await
    .expect("read pg_stat_database")
}

/// Transactions per second on the database over [`WINDOW`], less the one the first
/// reading itself makes: the lower of [`WINDOWS`] windows in a row, since the work
/// being measured is steady and anything else (a setup whose counts PostgreSQL
/// reported late, on a loaded machine) only adds to a window.
async fn rate(connection: &mut sqlx::PgConnection) -> f64 {
    let mut lowest = f64::MAX;
    for _ in 0..WINDOWS {
        let before = transactions(connection).await;
        tokio::time::sleep(WINDOW).await;
        let after = transactions(connection).await;
        lowest = lowest.min((after - before - 1).max(0) as f64 / WINDOW.as_secs_f64());
    }
    lowest
}

/// A follow of `process` (NDJSON) on `base`, read until its end line or until the test
/// drops it. Sends each message's seq (and 0 for the end) into `seen` when given.
fn follow(
    http: &reqwest::Client,
    base: &str,
    process: &str,
    seen: Option<tokio::sync::mpsc::UnboundedSender<u64>>,
) -> JoinHandle<()> {
    let url = format!("{base}/processes/{process}/messages/stream");
    let request = http.get(&url);
    tokio::spawn(async move {
        let mut attempts = 1;
        let mut response = loop {
            let request = request.try_clone().expect("a GET clones");
            let response = request.send().await.expect("open a follow");
            if response.status() != 503 || attempts == FOLLOW_ATTEMPTS {
                break response;
            }
            attempts += 1;
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map_or(Duration::from_millis(250), Duration::from_secs);
            tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
        };
        let status = response.status();
        assert_eq!(
            status,
            200,
            "{url} (attempt {attempts}): {:?}",
            response.text().await
        );
        let mut line = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            for byte in chunk {
                if byte != b'\n' {
                    line.push(byte);
                    continue;
                }
                let text = std::mem::take(&mut line);
                let Ok(value) = serde_json::from_slice::<Value>(&text) else {
                    continue; // a heartbeat
                };
                let end = value["event"] == "end";
                if let Some(seen) = &seen {
                    let seq = value["stream_id"]
                        .as_str()
                        .and_then(|id| id.split_once('-'))
                        .and_then(|(seq, _)| seq.parse().ok())
                        .unwrap_or(u64::MAX);
                    let _ = seen.send(if end { 0 } else { seq });
                }
                if end {
                    return;
                }
            }
        }
    })
}

fn follows_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("build the HTTP client")
}

async fn put_process(api: &Api, process: &str) {
    match api.put_process(process).await {
        Attempt::Answered { status: 201, .. } => {}
        other => panic!("PUT /processes/{process} answered {other:?}"),
    }
}

async fn append(api: &Api, process: &str, body: &Value) {
    match api.append(process, body).await {
        Attempt::Answered { status: 201, .. } => {}
        other => panic!("appending to {process} answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_followers_on_three_instances_cost_postgresql_at_most_half_again_one_instance() {
    let _serial = serial().await;
    let database_url = fresh_database().await;
    let prefix = format!("fleet-cost-{}:", uuid::Uuid::new_v4().simple());
    // The first instance takes the republisher lease before the others start.
    let mut servers = vec![instance(&database_url, &prefix)];
    let api = Api::new(&servers[0].base());
    // Running processes with a message each, then nothing: followers that only wait.
    let processes: Vec<String> = (0..PROCESSES).map(|_| process_id("quiet")).collect();
    for process in &processes {
        put_process(&api, process).await;
        append(&api, process, &message(process, 1)).await;
    }
    while servers.len() < FLEET {
        servers.push(instance(&database_url, &prefix));
    }
    let http = follows_client();
    let follows: Vec<Vec<JoinHandle<()>>> = servers
        .iter()
        .map(|server| {
            processes
                .iter()
                .map(|process| follow(&http, &server.base(), process, None))
                .collect()
        })
        .collect();
    let mut stats = sqlx::PgConnection::connect(&database_url)
        .await
        .expect("connect to the drill's database");

    tokio::time::sleep(SETTLE).await;
    let fleet = rate(&mut stats).await;
    let open = |follows: &[JoinHandle<()>]| follows.iter().all(|follow| !follow.is_finished());
    assert!(
        follows.iter().all(|f| open(f)),
        "every follow is still open"
    );

    // Then the first instance alone: the others go, and their connections with them
    // (a backend that exits reports its counts at once).
    for (server, follows) in servers.iter_mut().zip(&follows).skip(1) {
        follows.iter().for_each(JoinHandle::abort);
        server.kill9();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let one = rate(&mut stats).await;
    assert!(
        open(&follows[0]),
        "the first instance's follows are still open"
    );
    follows[0].iter().for_each(JoinHandle::abort);

    let ratio = fleet / one.max(f64::MIN_POSITIVE);
    report(format!(
        "{PROCESSES} quiet processes, one follower each per instance: 1 instance {one:.1} PostgreSQL transactions/s, {FLEET} instances {fleet:.1}/s, ratio {ratio:.2} (at most {MAX_RATIO})"
    ));
    assert!(
        ratio <= MAX_RATIO,
        "{FLEET} instances cost PostgreSQL {fleet:.1} transactions/s, {ratio:.2} × one instance's {one:.1}/s (at most {MAX_RATIO} ×)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_but_never_published_reaches_the_followers_on_every_instance() {
    let _serial = serial().await;
    let database_url = fresh_database().await;
    let prefix = format!("fleet-lost-{}:", uuid::Uuid::new_v4().simple());
    let servers: Vec<Server> = (0..FLEET)
        .map(|_| instance(&database_url, &prefix))
        .collect();
    let api = Api::new(&servers[0].base());
    let process = process_id("lost");
    put_process(&api, &process).await;
    append(&api, &process, &message(&process, 1)).await;

    let http = follows_client();
    let (seen, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let follows: Vec<_> = servers
        .iter()
        .map(|server| follow(&http, &server.base(), &process, Some(seen.clone())))
        .collect();
    for _ in 0..FLEET {
        let seq = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await;
        assert_eq!(
            seq.ok().flatten(),
            Some(1),
            "each follower first gets seq 1"
        );
    }

    // Stored by the store alone: committed in PostgreSQL, never published to Redis, as
    // when an instance dies between its commit and its XADD.
    let store = PostgresStore::connect_lazy(&database_url, 2, Duration::from_secs(10))
        .expect("a store on the drill's database");
    let id = ProcessId::parse(&process).expect("a valid process id");
    let lost = NewMessage::parse(message(&process, 2).to_string().as_bytes(), 1 << 20)
        .expect("a valid message");
    let stored_at = Instant::now();
    let outcome = store.append(&id, &[lost]).await.expect("store the message");
    assert_eq!(outcome.stored.len(), 1);
    for instance in 1..=FLEET {
        let seq = tokio::time::timeout(LOST_PUBLISH_PATIENCE, heard.recv()).await;
        assert_eq!(
            seq.ok().flatten(),
            Some(2),
            "follower {instance} of {FLEET} gets the message whose publish was lost"
        );
    }
    let message_delay = stored_at.elapsed();

    // The same for the end marker: finished in PostgreSQL alone.
    let finished_at = Instant::now();
    store
        .finish(
            &id,
            &FinishStatus::parse("succeeded").expect("a valid status"),
        )
        .await
        .expect("finish the process");
    for instance in 1..=FLEET {
        let seq = tokio::time::timeout(LOST_PUBLISH_PATIENCE, heard.recv()).await;
        assert_eq!(
            seq.ok().flatten(),
            Some(0),
            "follower {instance} of {FLEET} gets the end whose publish was lost"
        );
    }
    let end_delay = finished_at.elapsed();
    for follow in follows {
        tokio::time::timeout(Duration::from_secs(5), follow)
            .await
            .expect("every follow ends after its end line")
            .expect("a follow that did not panic");
    }
    report(format!(
        "a lost publish reached the followers on all {FLEET} instances in {message_delay:?} (a message) and {end_delay:?} (the end); the bound is 2 × --idle-poll (1 s) and a sweep"
    ));
}

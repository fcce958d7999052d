//! Model check. Invariant: every follower receives exactly the messages with seq > its
//! cursor, in order, each once, then the end iff the process finished — whatever the
//! interleaving of appends and joins, whatever the live feed loses, trims, refuses,
//! duplicates or reorders, through live-feed and store outages and server restarts
//! (after which a follower resumes from the last stream ID it saw, as a client does).
//!
//! On the memory backend the faults come from [`ChaosFeed`], which wraps the
//! in-process feed and can go down, and [`FaultyStore`], which fails calls; on the real
//! backend they are done to Redis itself (DEL, XTRIM, an entry that makes Redis refuse
//! XADDs, old entries replayed into a fresh key). Restarts happen on both.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_stream::adapters::memory::{InProcessFeed, MemoryStore};
use agent_stream::domain::{
    FinishStatus, NewMessage, ProcessId, ProcessInfo, RecentProcess, StoredMessage,
};
use agent_stream::ports::{
    AppendOutcome, FeedError, FeedSubscription, LiveFeed, MessageStore, Registration, StoreError,
};
use agent_stream::startup::Backends;
use async_trait::async_trait;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{messages, process_id, seqs, Backend, End, Follow, Format, Item, TestApp};

#[derive(Debug, Clone)]
enum Step {
    /// Append `n` messages, as one array or one request each.
    Append {
        n: usize,
        batch: bool,
    },
    /// A follower joins at a cursor picked among the seqs so far.
    Join {
        pick: u16,
        format: Format,
        bare: bool,
        header: bool,
    },
    /// Something happens to the live feed (real backend: to Redis).
    Fault(RedisFault),
    /// The live feed goes down (memory backend): it delivers nothing.
    FeedDown,
    FeedUp,
    /// The next `calls` store calls fail (memory backend), as PostgreSQL down would.
    StoreOutage {
        calls: usize,
    },
    /// The server shuts down and a new one starts on the same backends.
    Restart,
}

#[derive(Debug, Clone, Copy)]
enum RedisFault {
    Lose,
    Trim,
    Refuse,
    Replay,
}

/// What the chaos feed does to one publish.
#[derive(Debug, Clone, Copy)]
enum Chaos {
    Deliver,
    Drop,
    Duplicate,
    /// Held back and delivered after the next publish: out of order.
    Delay,
}

#[derive(Debug, Clone)]
struct Case {
    steps: Vec<Step>,
    chaos: Vec<Chaos>,
    finish: bool,
}

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Sse), Just(Format::Ndjson)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..4usize, any::<bool>()).prop_map(|(n, batch)| Step::Append { n, batch }),
        3 => (any::<u16>(), format(), any::<bool>(), any::<bool>()).prop_map(|(pick, format, bare, header)| Step::Join { pick, format, bare, header }),
        2 => prop_oneof![Just(RedisFault::Lose), Just(RedisFault::Trim), Just(RedisFault::Refuse), Just(RedisFault::Replay)].prop_map(Step::Fault),
        1 => prop_oneof![Just(Step::FeedDown), Just(Step::FeedUp)],
        1 => (1..6usize).prop_map(|calls| Step::StoreOutage { calls }),
        1 => Just(Step::Restart),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let chaos = prop_oneof![4 => Just(Chaos::Deliver), 2 => Just(Chaos::Drop), 1 => Just(Chaos::Duplicate), 1 => Just(Chaos::Delay)];
    (
        prop::collection::vec(step(), 1..14),
        prop::collection::vec(chaos, 1..8),
        any::<bool>(),
    )
        .prop_map(|(steps, chaos, finish)| Case {
            steps,
            chaos,
            finish,
        })
}

/// A live feed that loses, duplicates and reorders what it publishes, on a schedule.
struct ChaosFeed {
    inner: InProcessFeed,
    schedule: Mutex<(Vec<Chaos>, usize, VecDeque<StoredMessage>)>,
    down: AtomicBool,
}

impl ChaosFeed {
    fn set_schedule(&self, chaos: Vec<Chaos>) {
        *self.schedule.lock().unwrap() = (chaos, 0, VecDeque::new());
        self.down.store(false, Ordering::SeqCst);
    }

    fn next_chaos(&self) -> Chaos {
        let mut schedule = self.schedule.lock().unwrap();
        let chaos = schedule
            .0
            .get(schedule.1 % schedule.0.len().max(1))
            .copied()
            .unwrap_or(Chaos::Deliver);
        schedule.1 += 1;
        chaos
    }
}

#[async_trait]
impl LiveFeed for ChaosFeed {
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(FeedError(anyhow::anyhow!("the chaos feed is down")));
        }
        let held: Vec<StoredMessage> = self.schedule.lock().unwrap().2.drain(..).collect();
        match self.next_chaos() {
            Chaos::Deliver => self.inner.publish(process, messages).await?,
            Chaos::Drop => {}
            Chaos::Duplicate => {
                self.inner.publish(process, messages).await?;
                self.inner.publish(process, messages).await?;
            }
            Chaos::Delay => self
                .schedule
                .lock()
                .unwrap()
                .2
                .extend(messages.iter().cloned()),
        }
        self.inner.publish(process, &held).await
    }

    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        status: &str,
    ) -> Result<(), FeedError> {
        match self.next_chaos() {
            _ if self.down.load(Ordering::SeqCst) => Ok(()),
            Chaos::Drop => Ok(()),
            _ => self.inner.publish_end(process, last_seq, status).await,
        }
    }

    fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription {
        self.inner.subscribe(process, after)
    }

    async fn ping(&self) -> Result<(), FeedError> {
        Ok(())
    }

    fn is_live(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    fn name(&self) -> &'static str {
        "chaos"
    }
}

/// A store that fails its next `failures` calls, as a PostgreSQL outage would.
struct FaultyStore {
    inner: MemoryStore,
    failures: AtomicUsize,
}

impl FaultyStore {
    fn fail_next(&self, calls: usize) {
        self.failures.store(calls, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        match self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        {
            Ok(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
                "injected store outage"
            ))),
            Err(_) => Ok(()),
        }
    }
}

#[async_trait]
impl MessageStore for FaultyStore {
    async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError> {
        self.check()?;
        self.inner.register(process).await
    }

    async fn append(
        &self,
        process: &ProcessId,
        messages: &[NewMessage],
    ) -> Result<AppendOutcome, StoreError> {
        self.check()?;
        self.inner.append(process, messages).await
    }

    async fn finish(
        &self,
        process: &ProcessId,
        status: &FinishStatus,
    ) -> Result<ProcessInfo, StoreError> {
        self.check()?;
        self.inner.finish(process, status).await
    }

    async fn process(&self, process: &ProcessId) -> Result<Option<ProcessInfo>, StoreError> {
        self.check()?;
        self.inner.process(process).await
    }

    async fn read_after(
        &self,
        process: &ProcessId,
        after: u64,
        known: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.check()?;
        self.inner
            .read_after(process, after, known, limit, max_bytes)
            .await
    }

    async fn recent(
        &self,
        limit: usize,
        only: Option<&[ProcessId]>,
    ) -> Result<Vec<RecentProcess>, StoreError> {
        self.check()?;
        self.inner.recent(limit, only).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }

    fn name(&self) -> &'static str {
        "faulty"
    }
}

/// The faults the memory backend can be put through.
struct Faults {
    feed: Arc<ChaosFeed>,
    store: Arc<FaultyStore>,
}

/// A client following one process: it keeps what it received, and when its response
/// ends without the end event (a server shut down), it reconnects from the last stream
/// ID it saw.
struct Follower {
    cursor: u64,
    format: Format,
    follow: Follow,
    got: Vec<serde_json::Value>,
}

impl Follower {
    fn last_id(&self) -> String {
        match self.got.last() {
            Some(message) => message["stream_id"].as_str().unwrap().to_owned(),
            None => self.cursor.to_string(),
        }
    }

    /// Reads until the end event (returned) or, when `until_end` is false, until it
    /// holds `want` messages.
    async fn read(
        &mut self,
        app: &TestApp,
        process: &str,
        want: usize,
        until_end: bool,
    ) -> Option<End> {
        loop {
            if !until_end && self.got.len() >= want {
                return None;
            }
            match self.follow.next().await {
                Some(Item::Message(message)) => self.got.push(message),
                Some(Item::Heartbeat) => {}
                Some(Item::End(end)) => return Some(end),
                Some(Item::Retry(_)) | None => {
                    self.follow = open(
                        app,
                        process,
                        self.format,
                        &self.last_id(),
                        self.format == Format::Sse,
                    )
                    .await
                    .expect("a reconnect after the outages is served");
                }
            }
        }
    }
}

/// Opens a follow; `None` when the server answers 503 (the store is down).
async fn open(
    app: &TestApp,
    process: &str,
    format: Format,
    cursor: &str,
    header: bool,
) -> Option<Follow> {
    let url = app.url(&format!("/processes/{process}/messages"));
    let request = if header {
        app.http.get(url).header("last-event-id", cursor)
    } else {
        app.http.get(url).query(&[("after", cursor)])
    };
    match app.try_follow_request(format, request).await {
        Ok(follow) => Some(follow),
        Err(refused) if refused.status() == 503 => None,
        Err(refused) => panic!("a follow answered {}", refused.status()),
    }
}

async fn run_case(app: &mut TestApp, faults: Option<&Faults>, case: &Case) {
    let process = process_id();
    app.put_process(&process).await;
    let mut last = 0u64;
    let mut followers: Vec<Follower> = Vec::new();
    for step in &case.steps {
        match *step {
            Step::Append { n, batch } => {
                let sent = messages(&format!("s{last}"), n);
                let bodies = if batch {
                    vec![serde_json::Value::from(sent).to_string()]
                } else {
                    sent.iter().map(|m| m.to_string()).collect()
                };
                let per_body = if batch { n } else { 1 };
                for body in bodies {
                    let response = app.post_messages(&process, body).await;
                    match response.status().as_u16() {
                        201 => last += per_body as u64,
                        503 => assert!(
                            response.headers().contains_key("retry-after"),
                            "a 503 says when to retry"
                        ),
                        other => panic!(
                            "append answered {other}: {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                }
            }
            Step::Join {
                pick,
                format,
                bare,
                header,
            } => {
                let cursor = u64::from(pick) % (last + 1);
                let written = if bare {
                    cursor.to_string()
                } else {
                    format!("{cursor}-0")
                };
                if let Some(follow) = open(app, &process, format, &written, header).await {
                    followers.push(Follower {
                        cursor,
                        format,
                        follow,
                        got: Vec::new(),
                    });
                }
            }
            Step::Fault(fault) if app.backend == Backend::Real => {
                redis_fault(app, &process, fault, last).await
            }
            Step::Fault(_) => {}
            Step::FeedDown | Step::FeedUp => {
                if let Some(faults) = faults {
                    faults
                        .feed
                        .down
                        .store(matches!(step, Step::FeedDown), Ordering::SeqCst);
                }
            }
            Step::StoreOutage { calls } => {
                if let Some(faults) = faults {
                    faults.store.fail_next(calls);
                }
            }
            Step::Restart => app.restart().await,
        }
    }
    if let Some(faults) = faults {
        faults.store.fail_next(0);
        faults.feed.down.store(false, Ordering::SeqCst);
    }
    if case.finish {
        assert_eq!(app.finish(&process, "succeeded").await.status(), 200);
    }
    let all: Vec<serde_json::Value> = app
        .snapshot(&process, "&limit=10000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        seqs(&all),
        (1..=last).collect::<Vec<_>>(),
        "exactly the appends answered 201 are stored"
    );
    for mut follower in followers {
        let cursor = follower.cursor;
        let expected = &all[cursor as usize..];
        let end = follower
            .read(app, &process, expected.len(), case.finish)
            .await;
        assert_eq!(
            follower.got, expected,
            "follower from {cursor}: exactly seq > cursor, in order, once"
        );
        if case.finish {
            assert_eq!(end.map(|end| end.stream_id), Some(format!("{last}-1")));
        } else {
            match follower
                .follow
                .next_within(Duration::from_millis(300))
                .await
            {
                None | Some(Some(Item::Heartbeat)) | Some(Some(Item::Retry(_))) | Some(None) => {}
                Some(other) => panic!(
                    "nothing may follow the last message of a running process, got {other:?}"
                ),
            }
        }
    }
}

async fn redis_fault(app: &mut TestApp, process: &str, fault: RedisFault, last: u64) {
    let key = app.redis().key(process);
    match fault {
        RedisFault::Lose => {
            let _: i64 = app.redis().run(redis::cmd("DEL").arg(&key)).await;
        }
        RedisFault::Trim => {
            let _: i64 = app
                .redis()
                .run(redis::cmd("XTRIM").arg(&key).arg("MAXLEN").arg(0))
                .await;
        }
        RedisFault::Refuse => {
            // Every XADD up to seq last + 5 is now refused.
            // Refused itself when an earlier Refuse already went higher: fine.
            let _ = app
                .redis()
                .try_run(
                    redis::cmd("XADD")
                        .arg(&key)
                        .arg(format!("{}-0", last + 5))
                        .arg("other")
                        .arg("x"),
                )
                .await;
        }
        RedisFault::Replay => {
            let _: i64 = app.redis().run(redis::cmd("DEL").arg(&key)).await;
            let stored: Vec<serde_json::Value> = app
                .snapshot(process, "&limit=10000")
                .await
                .json()
                .await
                .unwrap();
            for message in stored {
                let id = message["stream_id"].as_str().unwrap().to_owned();
                let _ = app
                    .redis()
                    .try_run(
                        redis::cmd("XADD")
                            .arg(&key)
                            .arg(id)
                            .arg("message")
                            .arg(message.to_string()),
                    )
                    .await;
            }
        }
    }
}

fn check(backend: Backend, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let faults = Faults {
        feed: Arc::new(ChaosFeed {
            inner: InProcessFeed::new(64),
            schedule: Mutex::default(),
            down: AtomicBool::new(false),
        }),
        store: Arc::new(FaultyStore {
            inner: MemoryStore::new(),
            failures: AtomicUsize::new(0),
        }),
    };
    let tune = |config: &mut agent_stream::http::HttpConfig| {
        config.follow.idle_poll = Duration::from_millis(100);
        config.follow.degraded_poll = Duration::from_millis(50);
    };
    let app = runtime.block_on(async {
        match backend {
            Backend::Memory => {
                let backends = Backends {
                    store: faults.store.clone(),
                    feed: faults.feed.clone(),
                };
                TestApp::spawn_on(Backend::Memory, backends, None, tune).await
            }
            Backend::Real | Backend::Cluster => TestApp::spawn_with(backend, tune).await,
        }
    });
    let app = std::cell::RefCell::new(app);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        faults.feed.set_schedule(case.chaos.clone());
        let faults = (backend == Backend::Memory).then_some(&faults);
        runtime.block_on(run_case(&mut app.borrow_mut(), faults, &case));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn every_follower_receives_exactly_what_follows_its_cursor_through_chaos_outages_and_restarts() {
    check(Backend::Memory, 48);
}

#[test]
fn every_follower_receives_exactly_what_follows_its_cursor_through_redis_faults_and_restarts() {
    check(Backend::Real, 32);
}

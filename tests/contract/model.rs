//! Model check. Invariant: every follower receives exactly the messages with seq > its
//! cursor, in order, each once, then the end iff the process finished — whatever the
//! interleaving of appends and joins, and whatever the live feed loses, trims, refuses,
//! duplicates or reorders.
//!
//! On the memory backend the faults come from [`ChaosFeed`], which wraps the
//! in-process feed; on the real backend they are done to Redis itself (DEL, XTRIM, an
//! entry that makes Redis refuse XADDs, old entries replayed into a fresh key).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_stream::adapters::memory::{InProcessFeed, MemoryStore};
use agent_stream::domain::{ProcessId, StoredMessage};
use agent_stream::ports::{FeedError, FeedSubscription, LiveFeed};
use agent_stream::startup::Backends;
use async_trait::async_trait;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{messages, process_id, seqs, Backend, Follow, Format, Item, TestApp};

#[derive(Debug, Clone)]
enum Step {
    /// Append `n` messages, as one array or one request each.
    Append { n: usize, batch: bool },
    /// A follower joins at a cursor picked among the seqs so far.
    Join {
        pick: u16,
        format: Format,
        bare: bool,
        header: bool,
    },
    /// Something happens to the live feed (real backend: to Redis).
    Fault(RedisFault),
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
}

impl ChaosFeed {
    fn set_schedule(&self, chaos: Vec<Chaos>) {
        *self.schedule.lock().unwrap() = (chaos, 0, VecDeque::new());
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
        true
    }

    fn name(&self) -> &'static str {
        "chaos"
    }
}

async fn run_case(app: &mut TestApp, case: &Case) {
    let process = process_id();
    app.put_process(&process).await;
    let mut last = 0u64;
    let mut followers: Vec<(u64, Follow)> = Vec::new();
    for step in &case.steps {
        match *step {
            Step::Append { n, batch } => {
                let sent = messages(&format!("s{last}"), n);
                if batch {
                    app.append_batch(&process, &sent).await;
                } else {
                    app.append(&process, &sent).await;
                }
                last += n as u64;
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
                let url = app.url(&format!("/processes/{process}/messages"));
                let request = if header {
                    app.http.get(url).header("last-event-id", written)
                } else {
                    app.http.get(url).query(&[("after", written)])
                };
                followers.push((cursor, app.follow_request(format, request).await));
            }
            Step::Fault(fault) if app.backend == Backend::Real => {
                redis_fault(app, &process, fault, last).await
            }
            Step::Fault(_) => {}
        }
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
    assert_eq!(seqs(&all), (1..=last).collect::<Vec<_>>());
    for (cursor, mut follow) in followers {
        let expected = &all[cursor as usize..];
        if case.finish {
            let (got, end) = follow.until_end().await;
            assert_eq!(
                got, expected,
                "follower from {cursor}: exactly seq > cursor, in order, once"
            );
            assert_eq!(end.stream_id, format!("{last}-1"));
        } else {
            let got = follow.take_messages(expected.len()).await;
            assert_eq!(got, expected, "follower from {cursor}");
            match follow.next_within(Duration::from_millis(300)).await {
                None | Some(Some(Item::Heartbeat)) => {}
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
    let chaos = Arc::new(ChaosFeed {
        inner: InProcessFeed::new(64),
        schedule: Mutex::default(),
    });
    let tune = |config: &mut agent_stream::http::HttpConfig| {
        config.follow.idle_poll = Duration::from_millis(100)
    };
    let app = runtime.block_on(async {
        match backend {
            Backend::Memory => {
                let backends = Backends {
                    store: Arc::new(MemoryStore::new()),
                    feed: chaos.clone(),
                };
                TestApp::spawn_on(Backend::Memory, backends, None, tune).await
            }
            Backend::Real => TestApp::spawn_with(Backend::Real, tune).await,
        }
    });
    let app = std::cell::RefCell::new(app);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        chaos.set_schedule(case.chaos.clone());
        runtime.block_on(run_case(&mut app.borrow_mut(), &case));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn every_follower_receives_exactly_what_follows_its_cursor_through_a_chaotic_feed() {
    check(Backend::Memory, 48);
}

#[test]
fn every_follower_receives_exactly_what_follows_its_cursor_through_redis_faults() {
    check(Backend::Real, 32);
}

//! The ports' own contract, below HTTP: the same tests on each adapter of a port.
//! `MessageStore` on the memory store and on PostgreSQL (append, read, finish and the
//! refusals); `LiveFeed` in-process and on Redis (subscribe, publish, resume from a
//! cursor, the end). A server on either adapter relies on exactly these.

use std::sync::Arc;

use agent_stream::domain::{FinishStatus, NewMessage, ProcessId, ProcessStatus, StoredMessage};
use agent_stream::ports::{
    Appended, FeedEvent, FeedNext, FeedSubscription, LiveFeed, MessageStore, Registration,
    StoreError,
};
use agent_stream_testkit::app::WAIT;
use agent_stream_testkit::fixtures::{messages, process_id};

/// Runs each listed `async fn name(port)` once per adapter: `module::name` on
/// `connect_backends(Backend::…)`'s `field`.
macro_rules! on_each_adapter {
    ($field:ident: ; $($name:ident),+ $(,)?) => {};
    ($field:ident: $module:ident = $backend:ident $(, $more:ident = $others:ident)*;
        $($name:ident),+ $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backends = agent_stream_testkit::app::connect_backends(
                        agent_stream_testkit::app::Backend::$backend,
                    )
                    .await;
                    super::$name(backends.$field).await
                }
            )+
        }
        on_each_adapter!($field: $($more = $others),*; $($name),+);
    };
}

mod store {
    use super::*;

    on_each_adapter!(
        store: memory = Memory, postgres = Postgres;
        an_unknown_process_is_none_until_registered_and_registering_again_finds_it,
        each_new_message_takes_the_next_seq_and_reads_back_in_order,
        a_message_id_already_stored_keeps_its_seq_and_is_stored_once,
        a_read_returns_what_follows_the_cursor_up_to_the_limit,
        finishing_again_with_the_same_status_changes_nothing_and_another_is_a_conflict,
        a_finished_process_refuses_new_messages_and_answers_a_retry_as_before,
        finishing_an_unknown_process_is_refused,
    );

    async fn an_unknown_process_is_none_until_registered_and_registering_again_finds_it(
        store: Arc<dyn MessageStore>,
    ) {
        let process = process();
        assert!(store.process(&process).await.expect("process").is_none());
        let created = store.register(&process).await.expect("register");
        assert!(matches!(created, Registration::Created(ref info) if info.last_seq == 0));
        let found = store.register(&process).await.expect("register again");
        assert!(matches!(found, Registration::Existing(_)));
        let info = store
            .process(&process)
            .await
            .expect("process")
            .expect("known");
        assert_eq!(info.status, ProcessStatus::Running);
    }

    async fn each_new_message_takes_the_next_seq_and_reads_back_in_order(
        store: Arc<dyn MessageStore>,
    ) {
        let process = process();
        let first = store
            .append(&process, &batch("m", 1..=3))
            .await
            .expect("append");
        let second = store
            .append(&process, &batch("m", 4..=5))
            .await
            .expect("append");
        let seqs = |results: &[Appended]| {
            results
                .iter()
                .map(|r| (r.stream_id.seq, r.created))
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&first.results), [(1, true), (2, true), (3, true)]);
        assert_eq!(seqs(&second.results), [(4, true), (5, true)]);
        assert_eq!(stored_seqs(&second.stored), [4, 5]);
        let read = store
            .read_after(&process, 0, 5, 100, 1 << 20)
            .await
            .expect("read");
        assert_eq!(stored_seqs(&read), [1, 2, 3, 4, 5]);
        assert_eq!(ids(&read), ["m-1", "m-2", "m-3", "m-4", "m-5"]);
        // What was read is what the append handed to the live feed.
        assert_eq!(read[3..], second.stored[..]);
        let info = store
            .process(&process)
            .await
            .expect("process")
            .expect("known");
        assert_eq!(info.last_seq, 5);
    }

    async fn a_message_id_already_stored_keeps_its_seq_and_is_stored_once(
        store: Arc<dyn MessageStore>,
    ) {
        let process = process();
        store
            .append(&process, &batch("m", 1..=2))
            .await
            .expect("append");
        let again = store
            .append(&process, &batch("m", 2..=3))
            .await
            .expect("append");
        let results: Vec<_> = again
            .results
            .iter()
            .map(|r| (r.id.as_str(), r.stream_id.seq, r.created))
            .collect();
        assert_eq!(results, [("m-2", 2, false), ("m-3", 3, true)]);
        assert_eq!(stored_seqs(&again.stored), [3]);
        let read = store
            .read_after(&process, 0, 3, 100, 1 << 20)
            .await
            .expect("read");
        assert_eq!(ids(&read), ["m-1", "m-2", "m-3"]);
    }

    async fn a_read_returns_what_follows_the_cursor_up_to_the_limit(store: Arc<dyn MessageStore>) {
        let process = process();
        store
            .append(&process, &batch("m", 1..=6))
            .await
            .expect("append");
        let page = store
            .read_after(&process, 2, 6, 3, 1 << 20)
            .await
            .expect("read");
        assert_eq!(stored_seqs(&page), [3, 4, 5]);
        let last = store
            .read_after(&process, 6, 6, 3, 1 << 20)
            .await
            .expect("read");
        assert!(last.is_empty(), "nothing follows the last message");
        // Past the first message, a page stops before `max_bytes`; the first always comes.
        let one = store
            .read_after(&process, 0, 6, 100, 1)
            .await
            .expect("read");
        assert_eq!(stored_seqs(&one), [1]);
    }

    async fn finishing_again_with_the_same_status_changes_nothing_and_another_is_a_conflict(
        store: Arc<dyn MessageStore>,
    ) {
        let process = process();
        store
            .append(&process, &batch("m", 1..=2))
            .await
            .expect("append");
        let finished = store
            .finish(&process, &status("succeeded"))
            .await
            .expect("finish");
        assert_eq!(
            finished.status,
            ProcessStatus::Finished(status("succeeded"))
        );
        assert_eq!(finished.last_seq, 2);
        let again = store
            .finish(&process, &status("succeeded"))
            .await
            .expect("finish again");
        assert_eq!(again.status, finished.status);
        assert_eq!(again.finished_at, finished.finished_at);
        match store.finish(&process, &status("failed")).await {
            Err(StoreError::StatusConflict { current, .. }) => {
                assert_eq!(current, status("succeeded"))
            }
            other => panic!("finishing as another status: {other:?}"),
        }
    }

    async fn a_finished_process_refuses_new_messages_and_answers_a_retry_as_before(
        store: Arc<dyn MessageStore>,
    ) {
        let process = process();
        store
            .append(&process, &batch("m", 1..=2))
            .await
            .expect("append");
        store
            .finish(&process, &status("failed"))
            .await
            .expect("finish");
        match store.append(&process, &batch("m", 2..=3)).await {
            Err(StoreError::Finished {
                status: refused, ..
            }) => {
                assert_eq!(refused, status("failed"))
            }
            other => panic!("a new message after the finish: {other:?}"),
        }
        let retry = store
            .append(&process, &batch("m", 1..=2))
            .await
            .expect("a retry");
        assert!(retry.stored.is_empty());
        assert!(retry.results.iter().all(|r| !r.created));
        let read = store
            .read_after(&process, 0, 2, 100, 1 << 20)
            .await
            .expect("read");
        assert_eq!(
            ids(&read),
            ["m-1", "m-2"],
            "the refused append stored nothing"
        );
    }

    async fn finishing_an_unknown_process_is_refused(store: Arc<dyn MessageStore>) {
        let process = process();
        match store.finish(&process, &status("succeeded")).await {
            Err(StoreError::UnknownProcess(unknown)) => assert_eq!(unknown, process),
            other => panic!("finishing an unknown process: {other:?}"),
        }
    }
}

mod feed {
    use super::*;

    on_each_adapter!(
        feed: in_process = Memory, redis = Real;
        a_subscriber_gets_what_is_published_after_it_subscribed_in_order,
        a_subscriber_gets_the_end_after_the_last_message,
        a_subscriber_from_a_cursor_gets_what_follows_it,
        a_subscriber_sees_only_its_own_process,
        the_feed_answers_and_is_live,
    );

    async fn a_subscriber_gets_what_is_published_after_it_subscribed_in_order(
        feed: Arc<dyn LiveFeed>,
    ) {
        let process = process();
        let mut subscription = feed.subscribe(&process, 0);
        let sent = rendered(1..=3);
        feed.publish(&process, &sent[..2]).await.expect("publish");
        feed.publish(&process, &sent[2..]).await.expect("publish");
        for message in &sent {
            assert_eq!(
                next_event(&mut subscription).await,
                FeedEvent::Message(message.clone())
            );
        }
    }

    async fn a_subscriber_gets_the_end_after_the_last_message(feed: Arc<dyn LiveFeed>) {
        let process = process();
        let mut subscription = feed.subscribe(&process, 0);
        let sent = rendered(1..=2);
        feed.publish(&process, &sent).await.expect("publish");
        feed.publish_end(&process, 2, "succeeded")
            .await
            .expect("publish the end");
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(next_event(&mut subscription).await);
        }
        assert_eq!(
            events,
            [
                FeedEvent::Message(sent[0].clone()),
                FeedEvent::Message(sent[1].clone()),
                FeedEvent::End { last_seq: 2 },
            ]
        );
    }

    /// A feed may deliver events from before the cursor (readers drop them), never
    /// fewer than those after it, in order.
    async fn a_subscriber_from_a_cursor_gets_what_follows_it(feed: Arc<dyn LiveFeed>) {
        let process = process();
        let mut subscription = feed.subscribe(&process, 2);
        let sent = rendered(1..=4);
        feed.publish(&process, &sent).await.expect("publish");
        let mut after_cursor = Vec::new();
        while after_cursor.len() < 2 {
            match next_event(&mut subscription).await {
                FeedEvent::Message(message) if message.seq > 2 => after_cursor.push(message),
                FeedEvent::Message(_) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
        assert_eq!(after_cursor, sent[2..]);
    }

    async fn a_subscriber_sees_only_its_own_process(feed: Arc<dyn LiveFeed>) {
        let (mine, other) = (process(), process());
        let mut subscription = feed.subscribe(&mine, 0);
        feed.publish(&other, &rendered(1..=2))
            .await
            .expect("publish");
        feed.publish_end(&other, 2, "succeeded")
            .await
            .expect("publish the end");
        let sent = rendered(1..=1);
        feed.publish(&mine, &sent).await.expect("publish");
        assert_eq!(
            next_event(&mut subscription).await,
            FeedEvent::Message(sent[0].clone())
        );
    }

    async fn the_feed_answers_and_is_live(feed: Arc<dyn LiveFeed>) {
        feed.ping().await.expect("ping");
        assert!(feed.is_live());
    }
}

/// The next event of a subscription, within [`WAIT`]; a subscriber that lagged fails
/// the test (these tests publish far less than any buffer holds). The one place that
/// knows the subscription's type.
async fn next_event(subscription: &mut FeedSubscription) -> FeedEvent {
    let next = tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("the feed delivered nothing in time");
    match next {
        FeedNext::Event(event) => event,
        other => panic!("the subscription stays open and keeps up, but got {other:?}"),
    }
}

fn process() -> ProcessId {
    ProcessId::parse(&process_id()).expect("a valid process id")
}

fn status(raw: &str) -> FinishStatus {
    FinishStatus::parse(raw).expect("a valid status")
}

/// Messages `<prefix>-<n>` for each `n` of `range`, as the HTTP layer parses them.
fn batch(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<NewMessage> {
    let (first, last) = (*range.start(), *range.end());
    messages(prefix, last)[first - 1..]
        .iter()
        .map(|message| {
            NewMessage::parse(message.to_string().as_bytes(), 1 << 20).expect("a valid message")
        })
        .collect()
}

/// Stored messages `m-<seq>` for each seq of `range`, as a store hands them to the feed.
fn rendered(range: std::ops::RangeInclusive<usize>) -> Vec<StoredMessage> {
    let created_at = chrono::Utc::now();
    batch("m", range.clone())
        .iter()
        .zip(range)
        .map(|(message, seq)| message.render(seq as u64, created_at))
        .collect()
}

fn stored_seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|message| message.seq).collect()
}

fn ids(messages: &[StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|message| {
            let value: serde_json::Value =
                serde_json::from_slice(&message.json).expect("stored JSON");
            value["id"].as_str().expect("an id").to_owned()
        })
        .collect()
}

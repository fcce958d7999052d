//! The append rule in its two languages: `AppendOutcome::plan` (Rust, the memory
//! store's) and `append_messages_v2` (PL/pgSQL, PostgreSQL's) are fed the same batches and
//! must answer the same seqs, the same "created" flags, the same stored messages and
//! the same refusal once the process is finished.

use std::collections::HashMap;
use std::time::Duration;

use agent_stream::adapters::postgres::PostgresStore;
use agent_stream::domain::{FinishStatus, NewMessage, ProcessId, ProcessStatus};
use agent_stream::ports::{AppendOutcome, MessageStore, StoreError};
use chrono::Utc;

use agent_stream_testkit::app::fresh_database;
use agent_stream_testkit::fixtures::process_id;

/// One step of a case: a batch of message ids to append, or the process finishing.
enum Step {
    Append(&'static [&'static str]),
    Finish,
}

use Step::{Append, Finish};

/// Batches that exercise each clause of the rule: new ids, ids already stored, an id
/// repeated within a batch, a mix, an empty batch, and each of them after the finish;
/// and new batches after each mix, which PostgreSQL first tries as if all new and then
/// undoes, so that the seqs after it are seen to follow on.
const CASES: &[&[Step]] = &[
    &[Append(&["a", "b", "c"]), Append(&["d"])],
    &[
        Append(&["a", "b"]),
        Append(&["b", "a"]),
        Append(&["a", "c", "b"]),
    ],
    &[Append(&["a", "a", "b", "a"]), Append(&["b", "c", "c"])],
    &[
        Append(&["a", "b"]),
        Append(&["c", "a", "d"]),
        Append(&["e"]),
        Append(&["f", "f"]),
        Append(&["g", "h"]),
        Append(&["h", "i"]),
        Append(&["j"]),
    ],
    &[Append(&[]), Append(&["a"]), Append(&[])],
    &[
        Append(&["a", "b"]),
        Finish,
        Append(&["a", "b"]),
        Append(&["b"]),
    ],
    &[
        Append(&["a"]),
        Finish,
        Append(&["a", "z"]),
        Append(&["z"]),
        Append(&["a"]),
    ],
    &[Finish, Append(&["a"]), Append(&[])],
];

/// What both sides are compared on: per message (id, seq, created), the stored
/// (seq, id), or the refusal's status.
type Answer = Result<(Vec<(String, u64, bool)>, Vec<(u64, String)>), String>;

fn answer(outcome: Result<AppendOutcome, StoreError>) -> Answer {
    match outcome {
        Ok(outcome) => Ok((
            outcome
                .results
                .iter()
                .map(|r| (r.id.clone(), r.stream_id.seq, r.created))
                .collect(),
            outcome
                .stored
                .iter()
                .map(|m| {
                    let json: serde_json::Value = serde_json::from_slice(&m.json).unwrap();
                    (m.seq, json["id"].as_str().unwrap().to_owned())
                })
                .collect(),
        )),
        Err(StoreError::Finished { status, .. }) => Err(status.as_str().to_owned()),
        Err(other) => panic!("unexpected store error: {other}"),
    }
}

fn batch(ids: &[&str]) -> Vec<NewMessage> {
    ids.iter()
        .map(|id| {
            let json = serde_json::json!({ "id": id, "type": "AssistantMessage", "payload": { "text": id } }).to_string();
            NewMessage::parse(json.as_bytes(), 1 << 20).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn plan_and_append_messages_answer_every_batch_alike() {
    let store =
        PostgresStore::connect_lazy(&fresh_database().await, 4, Duration::from_secs(5)).unwrap();
    store.migrate().await.unwrap();
    let status = FinishStatus::parse("succeeded").unwrap();
    for (number, case) in CASES.iter().enumerate() {
        let process = ProcessId::parse(&process_id()).unwrap();
        store.register(&process).await.unwrap();
        // The memory side: the state `plan` reads, kept as the memory store keeps it.
        let mut seqs: HashMap<String, u64> = HashMap::new();
        let mut planned_status = ProcessStatus::Running;
        for (step, what) in case.iter().enumerate() {
            let ids = match what {
                Finish => {
                    store.finish(&process, &status).await.unwrap();
                    planned_status = ProcessStatus::Finished(status.clone());
                    continue;
                }
                Append(ids) => ids,
            };
            let messages = batch(ids);
            let planned = AppendOutcome::plan(
                &process,
                &planned_status,
                &messages,
                seqs.len() as u64,
                Utc::now(),
                |id| seqs.get(id).copied(),
            );
            if let Ok(outcome) = &planned {
                for appended in outcome.results.iter().filter(|r| r.created) {
                    seqs.insert(appended.id.clone(), appended.stream_id.seq);
                }
            }
            let planned = answer(planned);
            let outcome = store.append(&process, &messages).await;
            // The bytes the live feed gets are the ones PostgreSQL stored.
            for message in outcome.iter().flat_map(|o| &o.stored) {
                let page = store
                    .read_after(&process, message.seq - 1, message.seq, 1, 1 << 20)
                    .await
                    .unwrap();
                assert_eq!(
                    page.first().map(|m| &m.json),
                    Some(&message.json),
                    "case {number}, step {step}: seq {} as stored",
                    message.seq
                );
            }
            let stored = answer(outcome);
            assert_eq!(
                stored, planned,
                "case {number}, step {step}: append_messages_v2 and plan disagree"
            );
        }
    }
}

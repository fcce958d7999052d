//! The connections the write path keeps between appends (adr/0024): an append whose
//! statement is cut short does not leave its connection to the next one, and a kept
//! connection PostgreSQL closed meanwhile is replaced, not used.

use std::time::Duration;

use agent_stream::adapters::postgres::PostgresStore;
use agent_stream::domain::{NewMessage, ProcessId};
use agent_stream::ports::MessageStore;
use sqlx::{Connection, PgConnection};

use agent_stream_testkit::app::fresh_database;
use agent_stream_testkit::fixtures::process_id;

/// A migrated fresh database and a store of 4 connections on it.
async fn store() -> (String, PostgresStore) {
    let url = fresh_database().await;
    let store = PostgresStore::connect_lazy(&url, 4, Duration::from_secs(5)).unwrap();
    store.migrate().await.unwrap();
    (url, store)
}

fn message(id: &str) -> NewMessage {
    NewMessage::parse(
        format!(r#"{{"id":"{id}","type":"T","payload":{{}}}}"#).as_bytes(),
        1 << 20,
    )
    .unwrap()
}

/// The seqs `append` gave, in order.
async fn append(store: &PostgresStore, process: &ProcessId, ids: &[&str]) -> Vec<u64> {
    let messages: Vec<NewMessage> = ids.iter().map(|id| message(id)).collect();
    let outcome = store.append(process, &messages).await.unwrap();
    outcome.results.iter().map(|r| r.stream_id.seq).collect()
}

#[tokio::test]
async fn an_append_cut_short_leaves_the_next_one_exact() {
    let (url, store) = store().await;
    let process = ProcessId::parse(&process_id()).unwrap();
    assert_eq!(append(&store, &process, &["m1"]).await, [1]);
    // Another session holds the process's row, so the next append waits for its lock
    // until its caller gives up on it.
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM processes WHERE process_id = $1 FOR UPDATE")
        .bind(process.as_str())
        .execute(&mut *lock)
        .await
        .unwrap();
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        store.append(&process, &[message("m2")]),
    )
    .await;
    assert!(cut.is_err(), "the append waited for the row lock");
    lock.rollback().await.unwrap();
    // Whether or not the cut append's statement went on to commit, m2 has seq 2 and m3
    // the next, and the history holds each once.
    assert_eq!(append(&store, &process, &["m2", "m3"]).await, [2, 3]);
    assert_eq!(append(&store, &process, &["m4"]).await, [4]);
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM messages WHERE process_id = $1 ORDER BY seq")
            .bind(process.as_str())
            .fetch_all(&mut holder)
            .await
            .unwrap();
    assert_eq!(ids, ["m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn a_kept_connection_postgres_closed_is_replaced_once_it_sat_idle() {
    let (url, store) = store().await;
    let process = ProcessId::parse(&process_id()).unwrap();
    assert_eq!(append(&store, &process, &["m1"]).await, [1]);
    // Every other session on the database ends: the kept connection's too.
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty(), "the store held a connection");
    // Idle past a second, a kept connection is pinged before it is lent, as the pool
    // pings its own: the closed one is found out and another opened.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(append(&store, &process, &["m2"]).await, [2]);
    assert_eq!(append(&store, &process, &["m3"]).await, [3]);
}

//! How PostgreSQL keeps a process's row (adr/0023): an append rewrites it heap-only (no
//! index entry written, none left dead), and the list of recent processes and the
//! republisher's sweep read the activity index by range, whatever the table's size.

use std::time::{Duration, Instant};

use agent_stream::adapters::postgres::{sql, PostgresStore};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

use agent_stream_testkit::app::fresh_database;
use agent_stream_testkit::fixtures::process_id;

const APPENDS: usize = 50;

/// A migrated fresh database, and a connection of the test's own to it.
async fn migrated() -> PgConnection {
    let url = fresh_database().await;
    let store = PostgresStore::connect_lazy(&url, 2, Duration::from_secs(5)).unwrap();
    store.migrate().await.unwrap();
    PgConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn appends_rewrite_their_process_row_without_touching_its_indexes() {
    let mut db = migrated().await;
    let process = process_id();
    // In one transaction, whose own counters PostgreSQL reports at once.
    let mut tx = db.begin().await.unwrap();
    let started = Instant::now();
    for i in 0..APPENDS {
        let id = format!("m{i}");
        let head = format!(r#"{{"id":"{id}","payload":{{}}"#);
        sqlx::query(sql::APPEND)
            .bind(&process)
            .bind(vec![id])
            .bind(vec![head])
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let seconds = started.elapsed().as_secs() as i64;
    let (updated, heap_only): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('processes'::regclass), \
                pg_stat_get_xact_tuples_hot_updated('processes'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(updated, APPENDS as i64, "one update of the row per append");
    // `updated_second`, the indexed column, moves once a second at most: only then
    // does an update write index entries.
    assert!(
        updated - heap_only <= 1 + seconds,
        "{heap_only} of {updated} updates heap-only, in {seconds} s"
    );
}

/// `EXPLAIN (FORMAT JSON)` of `statement`, to be bound as the statement is.
fn explain(statement: &str) -> String {
    format!("EXPLAIN (FORMAT JSON) {statement}")
}

/// The plan's nodes, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut all = vec![plan];
    for child in plan["Plans"].as_array().into_iter().flatten() {
        all.extend(nodes(child));
    }
    all
}

#[tokio::test]
async fn the_recent_list_and_the_republisher_sweep_read_a_range_of_the_activity_index() {
    let mut db = migrated().await;
    // Sequential scans priced out of the planner's choice, so that the plans show
    // whether the index can serve each statement at all.
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut db)
        .await
        .unwrap();
    let recent: Value = sqlx::query_scalar(&explain(sql::RECENT))
        .bind(100_i64)
        .bind(None::<Vec<String>>)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let sweep: Value = sqlx::query_scalar(&explain(sql::CHANGED_PROCESSES))
        .bind(60.0_f64)
        .bind(10_000_i64)
        .fetch_one(&mut db)
        .await
        .unwrap();
    for (statement, plan, bounded) in [
        (sql::RECENT, recent, false),
        (sql::CHANGED_PROCESSES, sweep, true),
    ] {
        let nodes = nodes(&plan[0]["Plan"]);
        assert!(
            nodes.iter().all(|node| node["Node Type"] != "Seq Scan"),
            "{statement}: {plan:#}"
        );
        let index = nodes
            .iter()
            .find(|node| node["Index Name"] == "processes_recent_activity")
            .unwrap_or_else(|| panic!("{statement} does not read the index: {plan:#}"));
        if bounded {
            // Bounded by the window, not filtered row by row over the whole index.
            assert!(
                index["Index Cond"].is_string(),
                "{statement} scans the whole index: {plan:#}"
            );
        }
    }
}

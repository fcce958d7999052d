//! `agent-stream append`: a worker in any language pipes NDJSON into it; readers of
//! the service follow what it wrote, live, through Redis.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use agent_stream_testkit::app::{Backend, Format, TestApp};
use agent_stream_testkit::fixtures::{process_id, seqs, session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_pipes_ndjson_into_a_process_that_followers_see_live() {
    let app = TestApp::spawn(Backend::Real).await;
    let config = app.backend_config.clone().expect("real backends");
    let process = process_id();
    app.put_process(&process).await;
    let follow = app.follow(&process, Format::Sse, None).await;
    let follow = tokio::spawn(follow.until_end());

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-stream"))
        .args([
            "append",
            "--process",
            &process,
            "--finish",
            "succeeded",
            "--redis-readers",
            "1",
        ])
        .env("DATABASE_URL", config.database_url.as_deref().unwrap())
        .env("REDIS_URL", config.redis_url.as_deref().unwrap())
        .env("AGENT_STREAM_REDIS_PREFIX", &config.redis_prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent-stream append");
    let mut stdin = child.stdin.take().unwrap();
    let input = agent_stream::demo::SESSION;
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "append failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let sent = session();
    let printed: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), sent.len());
    for (i, (line, message)) in printed.iter().zip(&sent).enumerate() {
        assert_eq!(line["id"], message["id"]);
        assert_eq!(line["stream_id"], format!("{}-0", i + 1));
    }

    let (followed, end) = follow.await.unwrap();
    assert_eq!(seqs(&followed), (1..=sent.len() as u64).collect::<Vec<_>>());
    assert_eq!(end.status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_stops_at_a_bad_line_and_names_it() {
    let app = TestApp::spawn(Backend::Real).await;
    let config = app.backend_config.clone().expect("real backends");
    let process = process_id();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-stream"))
        .args(["append", "--process", &process])
        .env("DATABASE_URL", config.database_url.as_deref().unwrap())
        .env_remove("REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"{\"type\":\"T\",\"payload\":{}}\n\n{\"type\":\"T\"}\n{\"type\":\"T\",\"payload\":{}}\n").await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("payload"),
        "{stderr}"
    );
    let stored: Vec<Value> = app.snapshot(&process, "").await.json().await.unwrap();
    assert_eq!(
        seqs(&stored),
        vec![1],
        "lines before the bad one are stored, none after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_of_nothing_registers_and_finishes_the_process() {
    let app = TestApp::spawn(Backend::Real).await;
    let config = app.backend_config.clone().expect("real backends");
    let process = process_id();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-stream"))
        .args([
            "append",
            "--process",
            &process,
            "--finish",
            "cancelled",
            "-",
        ])
        .env("DATABASE_URL", config.database_url.as_deref().unwrap())
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: Value = app.get_process(&process).await.json().await.unwrap();
    assert_eq!(shown["status"], "cancelled");
    assert_eq!(shown["message_count"], 0);
}

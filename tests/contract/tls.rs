//! TLS to PostgreSQL and Redis, on the TLS servers `bash .ci/test` starts (a throwaway
//! CA whose server certificate is for the name `localhost` only; see
//! `start_tls_servers` there). Without their AGENT_STREAM_TEST_TLS_* variables these
//! tests fail, they are never skipped.

use std::process::Stdio;
use std::time::Duration;

use agent_stream::adapters::postgres::PostgresStore;
use agent_stream::adapters::redis::{RedisFeed, RedisFeedConfig};
use agent_stream::ports::Epoch;
use url::Url;

use agent_stream_testkit::app::{fresh_database_on, required_env, Format, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};

/// The TLS PostgreSQL's URL (`sslmode=verify-full`, `sslrootcert` = the test CA).
fn tls_database_url() -> Url {
    Url::parse(&required_env("AGENT_STREAM_TEST_TLS_DATABASE_URL"))
        .expect("AGENT_STREAM_TEST_TLS_DATABASE_URL is a URL")
}

/// The TLS PostgreSQL's URL with `host` and these parameters instead of its own.
fn database_url_with(host: &str, parameters: &[(&str, &str)]) -> String {
    let mut url = tls_database_url();
    url.set_host(Some(host)).unwrap();
    url.set_query(None);
    if !parameters.is_empty() {
        url.query_pairs_mut().extend_pairs(parameters);
    }
    url.to_string()
}

fn ca() -> String {
    required_env("AGENT_STREAM_TEST_TLS_CA")
}

fn wrong_ca() -> String {
    required_env("AGENT_STREAM_TEST_TLS_WRONG_CA")
}

/// `host:port` of the TLS PostgreSQL, as errors name it.
fn database_server(host: &str) -> String {
    format!("{host}:{}", tls_database_url().port().expect("a port"))
}

/// Whether a connection with `url` is encrypted, as PostgreSQL itself reports it.
async fn connection_is_encrypted(url: &str) -> bool {
    let store = PostgresStore::connect_lazy(url, 1, Duration::from_secs(5)).unwrap();
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|error| panic!("connecting with {url}: {error}"))
}

/// The error of the first use of PostgreSQL with `url`.
async fn start_error(url: &str) -> String {
    let store = PostgresStore::connect_lazy(url, 1, Duration::from_secs(5)).unwrap();
    let error = store.migrate().await.expect_err("the connection must fail");
    format!("{error:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_verify_full_to_both_appends_are_followed_live_and_resumed_exactly() {
    let app = TestApp::spawn_tls().await;
    assert!(
        app.feed_is_live_redis(),
        "the live feed is Redis, answering over TLS"
    );
    let process = process_id();
    app.append(&process, &messages("before", 3)).await;
    let mut sse = app.follow(&process, Format::Sse, None).await;
    let mut ndjson = app.follow(&process, Format::Ndjson, Some("2")).await;
    assert_eq!(seqs(&sse.take_messages(3).await), [1, 2, 3]);
    assert_eq!(seqs(&ndjson.take_messages(1).await), [3]);

    app.append(&process, &messages("live", 2)).await;
    assert_eq!(seqs(&sse.take_messages(2).await), [4, 5]);
    assert_eq!(seqs(&ndjson.take_messages(2).await), [4, 5]);
    app.finish(&process, "succeeded").await;
    let (_, end) = sse.until_end().await;
    assert_eq!(end.stream_id, "5-1");

    let (resumed, end) = app.follow_to_end(&process, Format::Sse, Some("3")).await;
    assert_eq!(
        seqs(&resumed),
        [4, 5],
        "a resume from 3 gets exactly what follows"
    );
    assert_eq!(end.status, "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_as_libpq_does() {
    let (ca, wrong) = (ca(), wrong_ca());
    let cases = [
        ("127.0.0.1", vec![("sslmode", "disable")], false),
        ("127.0.0.1", vec![], true),
        ("127.0.0.1", vec![("sslmode", "require")], true),
        // verify-ca checks the chain. (It should not check the name, but sqlx 0.8's
        // does: launchbadge/sqlx#3793. So no case here connects by 127.0.0.1 with it.)
        (
            "localhost",
            vec![("sslmode", "verify-ca"), ("sslrootcert", &ca)],
            true,
        ),
        (
            "localhost",
            vec![("sslmode", "verify-full"), ("sslrootcert", &ca)],
            true,
        ),
        (
            "localhost",
            vec![
                ("sslmode", "verify-full"),
                ("sslrootcert", &ca),
                ("sslpassword", "unused"),
            ],
            true,
        ),
    ];
    for (host, parameters, encrypted) in cases {
        let url = database_url_with(host, &parameters);
        assert_eq!(connection_is_encrypted(&url).await, encrypted, "{url}");
    }

    let untrusted = |host: &str| {
        format!(
            "could not connect to PostgreSQL at {} over TLS: its certificate is signed by an authority that is not trusted here (give its CA with sslrootcert=FILE in DATABASE_URL)",
            database_server(host)
        )
    };
    let refused = [
        (
            "127.0.0.1",
            vec![("sslmode", "verify-full"), ("sslrootcert", &ca)],
            format!(
                "could not connect to PostgreSQL at {} over TLS: its certificate is not valid for the name 127.0.0.1 (it is for localhost)",
                database_server("127.0.0.1")
            ),
        ),
        ("localhost", vec![("sslmode", "verify-full"), ("sslrootcert", &wrong)], untrusted("localhost")),
        ("localhost", vec![("sslmode", "verify-ca"), ("sslrootcert", &wrong)], untrusted("localhost")),
        // libpq's rule: `require` with a root certificate verifies the chain.
        ("127.0.0.1", vec![("sslmode", "require"), ("sslrootcert", &wrong)], untrusted("127.0.0.1")),
        // The system's roots do not hold the test CA.
        ("localhost", vec![("sslrootcert", "system")], untrusted("localhost")),
    ];
    for (host, parameters, expected) in refused {
        let url = database_url_with(host, &parameters);
        assert_eq!(start_error(&url).await, expected, "{url}");
    }
}

fn feed_config(tls_ca: Option<String>) -> RedisFeedConfig {
    RedisFeedConfig {
        url: required_env("AGENT_STREAM_TEST_TLS_REDIS_URL"),
        tls_ca: tls_ca.map(Into::into),
        prefix: format!("test-{}:", uuid::Uuid::new_v4().simple()),
        stream_maxlen: 1000,
        finished_ttl: Duration::from_secs(60),
        running_ttl: Duration::from_secs(60),
        inline_bytes: 64 * 1024,
        epoch: Epoch::generate(),
        readers: 1,
        follower_buffer: 16,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_trusts_the_given_ca_and_refuses_a_server_it_cannot_verify() {
    let with_ca = RedisFeed::connect_lazy(feed_config(Some(ca()))).unwrap();
    assert!(
        with_ca.check_at_start().await.unwrap().is_none(),
        "AUTH with the URL's user and password, over TLS to a server the CA signed"
    );

    let redis_url = Url::parse(&required_env("AGENT_STREAM_TEST_TLS_REDIS_URL")).unwrap();
    let expected = format!(
        "could not connect to Redis at localhost:{} over TLS: its certificate is signed by an authority that is not trusted here (give its CA with --redis-tls-ca FILE)",
        redis_url.port().unwrap()
    );
    for tls_ca in [None, Some(wrong_ca())] {
        let feed = RedisFeed::connect_lazy(feed_config(tls_ca.clone())).unwrap();
        let error = feed
            .check_at_start()
            .await
            .expect_err("no start without a verified certificate");
        assert_eq!(format!("{error:#}"), expected, "--redis-tls-ca {tls_ca:?}");
    }
}

/// Runs `agent-stream serve` with these environment variables and flags, expecting it
/// to stop at start; returns what it printed on stderr.
async fn failed_start(env: &[(&str, String)], args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-stream"));
    for (name, _) in std::env::vars() {
        if name.starts_with("AGENT_STREAM_") || name == "DATABASE_URL" || name == "REDIS_URL" {
            command.env_remove(name);
        }
    }
    let child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth"])
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run agent-stream serve");
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the server stops at start")
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_stops_the_start_with_one_sentence_naming_server_and_reason(
) {
    let database = fresh_database_on(tls_database_url().as_str()).await;
    let mut wrong_root = Url::parse(&database).unwrap();
    let parameters: Vec<(String, String)> = wrong_root
        .query_pairs()
        .into_owned()
        .map(|(key, value)| match key.as_str() {
            "sslrootcert" => (key, wrong_ca()),
            _ => (key, value),
        })
        .collect();
    wrong_root
        .query_pairs_mut()
        .clear()
        .extend_pairs(&parameters);
    let stderr = failed_start(&[("DATABASE_URL", wrong_root.to_string())], &[]).await;
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!(
                "error: could not connect to PostgreSQL at {} over TLS: its certificate is signed by an authority that is not trusted here (give its CA with sslrootcert=FILE in DATABASE_URL)",
                database_server("localhost")
            )
            .as_str()
        ),
        "{stderr}"
    );

    let redis_url = required_env("AGENT_STREAM_TEST_TLS_REDIS_URL");
    let port = Url::parse(&redis_url).unwrap().port().unwrap();
    let stderr = failed_start(
        &[("DATABASE_URL", database), ("REDIS_URL", redis_url.clone())],
        &["--redis-tls-ca", &wrong_ca()],
    )
    .await;
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!(
                "error: could not connect to Redis at localhost:{port} over TLS: its certificate is signed by an authority that is not trusted here (give its CA with --redis-tls-ca FILE)"
            )
            .as_str()
        ),
        "{stderr}"
    );
    let password = Url::parse(&redis_url)
        .unwrap()
        .password()
        .unwrap()
        .to_owned();
    assert!(!stderr.contains(&password), "{stderr}");
}

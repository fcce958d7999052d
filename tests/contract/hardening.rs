//! What an outside probe found open (issue 10), closed: DNS rebinding on a server
//! without auth (F6), and the minor ones: request ids echoed as sent, tokens that never
//! expire or carry `crit`, weak secrets, one token taking every follow slot.

use std::sync::Arc;
use std::time::Duration;

use agent_stream::auth::{Claims, Minter, Processes, Scope, Secret, Verifier};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::Value;

use crate::auth::{refused, started};
use agent_stream_testkit::app::{Backend, Format, TestApp};
use agent_stream_testkit::fixtures::process_id;

const SECRET: &str = "hardening-test-secret-0123456789abcdef";

fn secret() -> Secret {
    Secret::new(SECRET).expect("a strong enough secret")
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error");
    body["error"]["code"].as_str().expect("a code").to_owned()
}

#[tokio::test]
async fn without_auth_only_requests_sent_to_a_loopback_name_are_answered() {
    let (mut child, address) = started(&["--listen", "127.0.0.1:0", "--no-auth"]).await;
    let port = address.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let process = process_id();
    let put = |host: String| {
        client
            .put(format!("http://{address}/processes/{process}"))
            .header("host", host)
            .send()
    };
    let rebound = put("rebind.attacker.example".to_owned()).await.unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(error_code(rebound).await, "misdirected_request");
    let rebound = put(format!("rebind.attacker.example:{port}"))
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    let probe = client
        .get(format!("http://{address}/healthz"))
        .header("host", "rebind.attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::MISDIRECTED_REQUEST);

    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let answer = put(host.clone()).await.unwrap();
        assert!(answer.status().is_success(), "{host}: {}", answer.status());
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn with_auth_or_insecure_no_auth_any_host_is_answered() {
    let (mut child, address) = started(&["--listen", "127.0.0.1:0", "--insecure-no-auth"]).await;
    let answer = reqwest::Client::new()
        .put(format!("http://{address}/processes/{}", process_id()))
        .header("host", "agent-stream.internal.example")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_echoed_only_when_it_is_a_short_plain_id() {
    let app = TestApp::spawn(Backend::Memory).await;
    let echoed = |id: &'static str| {
        let request = app.http.get(app.url("/healthz")).header("x-request-id", id);
        async move {
            let response = request.send().await.unwrap();
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(echoed("lb-7f3a.9_X").await, "lb-7f3a.9_X");
    for bad in [
        "id with spaces",
        "a\"b",
        "x\tlevel=error",
        "0123456789012345678901234567890123456789012345678901234567890123456789",
    ] {
        let got = echoed(bad).await;
        assert_ne!(got, bad);
        assert!(
            uuid::Uuid::parse_str(&got).is_ok(),
            "a fresh UUID, not {got:?}"
        );
    }
}

fn claims(exp: u64) -> Claims {
    Claims {
        processes: Processes::All,
        scope: Scope::Read,
        exp,
        iat: None,
        nbf: None,
        sub: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_past_the_longest_lifetime_or_with_crit_are_refused() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.auth = Some(Arc::new(Verifier::new(&secret())));
    })
    .await;
    let now = jsonwebtoken::get_current_timestamp();
    let minter = Minter::new(&secret());
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let mut critical = Header::new(jsonwebtoken::Algorithm::HS256);
    critical.crit = Some(vec!["exp".to_owned()]);
    for (what, token) in [
        ("exp = 2^64 - 1", minter.sign(&claims(u64::MAX)).unwrap()),
        (
            "exp in 31 days",
            minter.sign(&claims(now + 31 * 86_400)).unwrap(),
        ),
        (
            "a crit header",
            jsonwebtoken::encode(&critical, &claims(now + 60), &key).unwrap(),
        ),
    ] {
        let response = app
            .http
            .get(app.url("/processes"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    let fine = minter.sign(&claims(now + 29 * 86_400)).unwrap();
    let response = app
        .http
        .get(app.url("/processes"))
        .bearer_auth(fine)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_secret_of_one_repeated_byte_or_little_variety_is_refused_at_start() {
    for weak in [" ".repeat(32), "ab".repeat(16), "abcdefgh".repeat(4)] {
        let stderr = refused(&["--listen", "127.0.0.1:0", "--auth-secret", &weak]).await;
        assert!(stderr.contains("too little variety"), "{weak:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cannot_take_more_than_its_share_of_follows() {
    let app = TestApp::spawn_with(Backend::Memory, |config| {
        config.auth = Some(Arc::new(Verifier::new(&secret())));
        config.limits.max_follows_per_token = 2;
    })
    .await;
    let process = process_id();
    let minter = Minter::new(&secret());
    let writer = minter
        .mint(Processes::All, Scope::Write, Duration::from_secs(600), None)
        .unwrap();
    let reader = |sub: &str| {
        minter
            .mint(
                Processes::All,
                Scope::Read,
                Duration::from_secs(600),
                Some(sub.to_owned()),
            )
            .unwrap()
    };
    let (greedy, other) = (reader("greedy"), reader("other"));
    let registered = app
        .http
        .put(app.url(&format!("/processes/{process}")))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let follow = |token: &str| {
        app.try_follow_request(
            Format::Ndjson,
            app.http
                .get(app.url(&format!("/processes/{process}/messages")))
                .bearer_auth(token),
        )
    };
    let first = follow(&greedy).await.expect("first follow");
    let _second = follow(&greedy).await.expect("second follow");
    let refused = follow(&greedy)
        .await
        .err()
        .expect("a third follow is refused");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(refused).await, "too_many_follows_for_token");
    let _others = follow(&other).await.expect("another token still follows");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match follow(&greedy).await {
            Ok(_) => break,
            Err(refused) => {
                assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed follow gave its slot back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

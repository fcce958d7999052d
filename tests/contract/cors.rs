//! CORS (`--allow-origin`): a page of a listed origin may call the API from a browser,
//! with a preflight for `Authorization` and `Last-Event-ID`; any other origin gets no
//! CORS header, so the browser keeps the answer from it. These tests read the headers a
//! browser decides on; the TypeScript client's suite (clients/typescript) runs the same
//! from real pages in headless chromium.

use std::process::Stdio;

use axum::http::HeaderValue;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use agent_stream_testkit::app::{Backend, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id};
use agent_stream_testkit::on_every_backend;

const ALLOWED: &str = "http://app.example.test:3000";
const ALSO_ALLOWED: &str = "https://other.example.test";
const NOT_ALLOWED: &str = "http://evil.example.test:3000";

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |config| {
        config.allowed_origins = [ALLOWED, ALSO_ALLOWED]
            .map(HeaderValue::from_static)
            .to_vec();
    })
    .await
}

on_every_backend!(
    spawn = super::spawn;
    a_listed_origin_gets_a_preflight_for_the_token_and_the_cursor,
    a_listed_origin_may_read_a_follow_and_its_errors,
    an_origin_not_listed_gets_no_cors_header,
);

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("an ASCII header"))
}

/// The comma-separated names of a header, lowercased.
fn names(response: &reqwest::Response, name: &str) -> Vec<String> {
    header(response, name)
        .unwrap_or_default()
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

async fn preflight(app: &TestApp, origin: &str, path: &str) -> reqwest::Response {
    app.http
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,last-event-id",
        )
        .send()
        .await
        .expect("send a preflight")
}

async fn a_listed_origin_gets_a_preflight_for_the_token_and_the_cursor(app: TestApp) {
    let process = process_id();
    for origin in [ALLOWED, ALSO_ALLOWED] {
        // The preflight carries no token: it is answered before auth would look.
        let response = preflight(
            &app,
            origin,
            &format!("/processes/{process}/messages/stream"),
        )
        .await;
        assert!(response.status().is_success(), "{}", response.status());
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some(origin)
        );
        let allowed = names(&response, "access-control-allow-headers");
        for wanted in ["authorization", "last-event-id"] {
            assert!(
                allowed.contains(&wanted.to_owned()),
                "{allowed:?} lacks {wanted}"
            );
        }
        assert!(names(&response, "access-control-allow-methods").contains(&"get".to_owned()));
        assert_eq!(header(&response, "access-control-allow-credentials"), None);
        assert!(names(&response, "vary").contains(&"origin".to_owned()));
    }
}

async fn a_listed_origin_may_read_a_follow_and_its_errors(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    app.finish(&process, "succeeded").await;
    let response = app
        .http
        .get(app.url(&format!("/processes/{process}/messages/stream")))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let exposed = names(&response, "access-control-expose-headers");
    for wanted in ["retry-after", "www-authenticate", "x-request-id"] {
        assert!(
            exposed.contains(&wanted.to_owned()),
            "{exposed:?} lacks {wanted}"
        );
    }
    // The process is finished: the follow sends both messages and the end, and ends.
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the follow of a finished process ends")
        .unwrap();
    let lines: Vec<Value> = body
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[2]["event"], "end");

    // An error must be readable too, or the page cannot tell a 404 from a network fault.
    let response = app
        .http
        .get(app.url("/processes/bad%20id/messages"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(ALLOWED)
    );
}

async fn an_origin_not_listed_gets_no_cors_header(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 1)).await;
    let response = preflight(&app, NOT_ALLOWED, &format!("/processes/{process}/messages")).await;
    // Without its origin named, the browser refuses the preflight, whatever else the
    // answer says (the allowed headers are the same for everyone).
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let response = app
        .http
        .get(app.url(&format!("/processes/{process}/messages?follow=false")))
        .header("origin", NOT_ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_allowed_origins_no_cors_header_is_sent() {
    let app = TestApp::spawn(Backend::Memory).await;
    let response = preflight(&app, ALLOWED, "/processes/p1/messages").await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let response = app
        .http
        .get(app.url("/healthz"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .keys()
        .all(|name| !name.as_str().starts_with("access-control-")));
}

#[tokio::test]
async fn serve_refuses_an_allowed_origin_that_is_no_exact_origin() {
    for bad in ["*", "https://app.example.com/", "app.example.com"] {
        let output = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_agent-stream"))
                .args(["serve", "--listen", "127.0.0.1:0", "--no-auth"])
                .env_remove("DATABASE_URL")
                .env_remove("REDIS_URL")
                .env("AGENT_STREAM_ALLOW_ORIGINS", format!("{ALLOWED},{bad}"))
                .stdout(Stdio::null())
                .output(),
        )
        .await
        .expect("serve exits in time")
        .expect("run serve");
        assert!(!output.status.success(), "serve started with {bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--allow-origin") && stderr.contains(bad),
            "{stderr}"
        );
    }
}

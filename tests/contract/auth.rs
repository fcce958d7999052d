//! Auth: a token names the processes its bearer may touch and whether it may only read
//! them or also write them. No token or a bad one is a 401, a token that does not
//! cover the call a 403, and the check comes before the process is looked up, so only
//! a caller whose token covers a process can tell whether it exists.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agent_stream::auth::{Claims, Minter, Processes, Scope, Secret, Verifier};
use agent_stream::domain::ProcessId;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use agent_stream_testkit::app::{Backend, Format, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

const SECRET: &str = "contract-test-secret-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_agent-stream");

pub(crate) fn secret() -> Secret {
    Secret::new(SECRET).expect("a long enough secret")
}

/// A server that checks tokens signed with [`SECRET`].
pub(crate) async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |config| {
        config.auth = Some(Arc::new(Verifier::new(&secret())));
    })
    .await
}

fn ids<S: AsRef<str>>(processes: &[S]) -> Processes {
    Processes::Only(
        processes
            .iter()
            .map(|id| ProcessId::parse(id.as_ref()).expect("a process id"))
            .collect(),
    )
}

pub(crate) fn token<S: AsRef<str>>(processes: &[S], scope: Scope) -> String {
    Minter::new(&secret())
        .mint(ids(processes), scope, Duration::from_secs(600), None)
        .expect("mint")
}

fn token_for_all(scope: Scope) -> String {
    Minter::new(&secret())
        .mint(Processes::All, scope, Duration::from_secs(600), None)
        .expect("mint")
}

/// How a request carries its token.
#[derive(Debug, Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Query(&'a str),
    Cookie(&'a str),
}

fn request(app: &TestApp, method: Method, path: &str, auth: Auth) -> reqwest::RequestBuilder {
    let url = app.url(path);
    let request = match auth {
        Auth::Query(token) => {
            let separator = if path.contains('?') { '&' } else { '?' };
            app.http
                .request(method, format!("{url}{separator}access_token={token}"))
        }
        _ => app.http.request(method, url),
    };
    match auth {
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Cookie(token) => {
            request.header("cookie", format!("theme=dark; agent_stream_token={token}"))
        }
        Auth::None | Auth::Query(_) => request,
    }
}

/// Sends and returns the status and JSON body (`Null` when there is none).
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = request(app, method, path, auth);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Every protected call on `process`, with the body it needs.
fn protected_calls(process: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/processes/{process}"), None),
        (Method::PUT, format!("/processes/{process}"), None),
        (Method::GET, format!("/processes/{process}/messages"), None),
        (
            Method::GET,
            format!("/processes/{process}/messages?follow=false"),
            None,
        ),
        (
            Method::GET,
            format!("/processes/{process}/messages/stream"),
            None,
        ),
        (
            Method::POST,
            format!("/processes/{process}/messages"),
            Some(messages("m", 1)[0].clone()),
        ),
        (
            Method::POST,
            format!("/processes/{process}/finish"),
            Some(json!({ "status": "succeeded" })),
        ),
    ]
}

/// A process with three messages, finished, set up with a write token.
async fn finished_process(app: &TestApp) -> String {
    let process = process_id();
    let writer = token(&[&process], Scope::Write);
    let (status, body) = call(
        app,
        Method::POST,
        &format!("/processes/{process}/messages"),
        Auth::Bearer(&writer),
        Some(Value::from(messages("m", 3))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        app,
        Method::POST,
        &format!("/processes/{process}/finish"),
        Auth::Bearer(&writer),
        Some(json!({ "status": "succeeded" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    process
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn every_protected_call_without_a_token_is_a_401_whether_or_not_the_process_exists(
    app: TestApp,
) {
    let known = finished_process(&app).await;
    let unknown = process_id();
    for process in [&known, &unknown] {
        for (method, path, body) in protected_calls(process) {
            let mut request = request(&app, method.clone(), &path, Auth::None);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path}"
            );
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                body,
                json!({ "error": { "code": "unauthorized", "message": "no token: send `Authorization: Bearer <token>`, the `access_token` query parameter or the `agent_stream_token` cookie" } }),
                "{method} {path}: the same answer for a known and an unknown process"
            );
        }
    }
}

async fn bad_expired_foreign_or_unsigned_tokens_are_a_401(app: TestApp) {
    let process = finished_process(&app).await;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |exp: u64| Claims {
        processes: Processes::All,
        scope: Scope::Write,
        exp,
        iat: None,
        nbf: None,
        sub: None,
    };
    let other_secret = Minter::new(&Secret::new("another-secret-that-is-long-enough-too").unwrap())
        .sign(&claims(now + 600))
        .unwrap();
    let expired = Minter::new(&secret()).sign(&claims(now - 120)).unwrap();
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // {"alg":"none","typ":"JWT"} . {"processes":"*","scope":"write","exp":4102444800} . (no signature)
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJwcm9jZXNzZXMiOiIqIiwic2NvcGUiOiJ3cml0ZSIsImV4cCI6NDEwMjQ0NDgwMH0.";
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "processes": "*", "scope": "write" }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bad_scope = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "processes": "*", "scope": "admin", "exp": now + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases = [
        ("another secret", other_secret.as_str(), "signed"),
        ("expired", expired.as_str(), "expired"),
        ("HS512", hs512.as_str(), "HS256"),
        ("alg none", unsigned, "malformed"),
        ("no exp", no_exp.as_str(), "exp"),
        ("unknown scope", bad_scope.as_str(), "admin"),
        ("garbage", "not-a-token", "malformed"),
    ];
    for (what, bad, says) in cases {
        for auth in [Auth::Bearer(bad), Auth::Query(bad), Auth::Cookie(bad)] {
            let response = request(&app, Method::GET, &format!("/processes/{process}"), auth)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{what} by {auth:?}"
            );
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"agent-stream\", error=\"invalid_token\"",
                "{what}"
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{what}: {message}");
        }
    }
}

async fn a_read_token_follows_snapshots_and_shows_its_process_by_header_query_or_cookie(
    app: TestApp,
) {
    let process = finished_process(&app).await;
    let reader = token(&[&process], Scope::Read);
    for auth in [
        Auth::Bearer(&reader),
        Auth::Query(&reader),
        Auth::Cookie(&reader),
    ] {
        let (status, shown) = call(
            &app,
            Method::GET,
            &format!("/processes/{process}"),
            auth,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{auth:?}: {shown}");
        assert_eq!(shown["message_count"], 3);

        // `access_token` sits beside the other parameters, which keep their meaning.
        let (status, page) = call(
            &app,
            Method::GET,
            &format!("/processes/{process}/messages?follow=false&after=1-0&limit=1"),
            auth,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{auth:?}: {page}");
        assert_eq!(seqs(page.as_array().unwrap()), vec![2], "{auth:?}");

        for (path, format) in [
            ("messages", Format::Sse),
            ("messages/stream", Format::Ndjson),
        ] {
            let follow = app
                .follow_request(
                    format,
                    request(
                        &app,
                        Method::GET,
                        &format!("/processes/{process}/{path}?after=1"),
                        auth,
                    ),
                )
                .await;
            let (followed, end) = follow.until_end().await;
            assert_eq!(seqs(&followed), vec![2, 3], "{auth:?} {path}");
            assert_eq!(end.status, "succeeded");
        }
    }
}

async fn a_read_token_is_403_on_other_processes_and_on_every_write(app: TestApp) {
    let mine = finished_process(&app).await;
    let other = finished_process(&app).await;
    let reader = token(&[&mine], Scope::Read);
    for (method, path, body) in protected_calls(&other) {
        let (status, answer) = call(&app, method.clone(), &path, Auth::Bearer(&reader), body).await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&other),
            "{method} {path}: {answer}"
        );
    }
    for (method, path, body) in protected_calls(&mine) {
        if method == Method::GET {
            continue;
        }
        let (status, answer) = call(&app, method.clone(), &path, Auth::Bearer(&reader), body).await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("write"),
            "{method} {path}: {answer}"
        );
    }
    let (_, stored) = call(
        &app,
        Method::GET,
        &format!("/processes/{mine}/messages?follow=false"),
        Auth::Bearer(&reader),
        None,
    )
    .await;
    assert_eq!(
        seqs(stored.as_array().unwrap()),
        vec![1, 2, 3],
        "a refused write stores nothing"
    );
}

async fn a_write_token_registers_appends_finishes_and_reads_its_process_only(app: TestApp) {
    let (mine, other) = (process_id(), process_id());
    let writer = token(&[&mine], Scope::Write);
    let (status, _) = call(
        &app,
        Method::PUT,
        &format!("/processes/{mine}"),
        Auth::Bearer(&writer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, appended) = call(
        &app,
        Method::POST,
        &format!("/processes/{mine}/messages"),
        Auth::Bearer(&writer),
        Some(messages("w", 1)[0].clone()),
    )
    .await;
    assert_eq!(
        (status, appended["stream_id"].clone()),
        (StatusCode::CREATED, json!("1-0"))
    );
    let (status, shown) = call(
        &app,
        Method::GET,
        &format!("/processes/{mine}"),
        Auth::Bearer(&writer),
        None,
    )
    .await;
    assert_eq!(
        (status, shown["message_count"].clone()),
        (StatusCode::OK, json!(1)),
        "write includes read"
    );
    let (status, finished) = call(
        &app,
        Method::POST,
        &format!("/processes/{mine}/finish"),
        Auth::Bearer(&writer),
        Some(json!({ "status": "failed" })),
    )
    .await;
    assert_eq!(
        (status, finished["status"].clone()),
        (StatusCode::OK, json!("failed"))
    );

    for (method, path, body) in protected_calls(&other) {
        let (status, answer) = call(&app, method.clone(), &path, Auth::Bearer(&writer), body).await;
        assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
    }
    let (status, answer) = call(
        &app,
        Method::GET,
        &format!("/processes/{other}"),
        Auth::Bearer(&token_for_all(Scope::Read)),
        None,
    )
    .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "process_not_found");
}

async fn star_tokens_cover_every_process(app: TestApp) {
    let process = process_id();
    let (status, _) = call(
        &app,
        Method::PUT,
        &format!("/processes/{process}"),
        Auth::Bearer(&token_for_all(Scope::Write)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let reader = token_for_all(Scope::Read);
    let (status, shown) = call(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Query(&reader),
        None,
    )
    .await;
    assert_eq!(
        (status, shown["status"].clone()),
        (StatusCode::OK, json!("running"))
    );
    let (status, answer) = call(
        &app,
        Method::PUT,
        &format!("/processes/{}", process_id()),
        Auth::Bearer(&reader),
        None,
    )
    .await;
    assert_error(status, &answer, StatusCode::FORBIDDEN, "forbidden");
}

async fn an_unknown_process_is_403_for_a_token_that_does_not_cover_it_and_reads_as_empty_for_one_that_does(
    app: TestApp,
) {
    let known = finished_process(&app).await;
    let unknown = process_id();
    let stranger = token(&["someone-else"], Scope::Read);
    let mut answers = Vec::new();
    for process in [&known, &unknown] {
        let (status, body) = call(
            &app,
            Method::GET,
            &format!("/processes/{process}/messages?follow=false"),
            Auth::Bearer(&stranger),
            None,
        )
        .await;
        answers.push((status, body.to_string().replace(process.as_str(), "<id>")));
    }
    assert_eq!(answers[0].0, StatusCode::FORBIDDEN);
    assert_eq!(
        answers[0], answers[1],
        "a stranger cannot tell a known process from an unknown one"
    );

    let covering = token(&[&known, &unknown], Scope::Read);
    let (status, answer) = call(
        &app,
        Method::GET,
        &format!("/processes/{unknown}"),
        Auth::Bearer(&covering),
        None,
    )
    .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "process_not_found");
    let (status, answer) = call(
        &app,
        Method::GET,
        &format!("/processes/{unknown}/messages"),
        Auth::Bearer(&covering),
        None,
    )
    .await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, serde_json::json!([])),
        "a process not known yet reads as empty to a caller allowed to read it"
    );
}

async fn a_malformed_id_is_a_400_for_any_valid_token_and_a_401_without_one(app: TestApp) {
    let stranger = token(&["someone-else"], Scope::Read);
    for path in ["/processes/bad%20id", "/processes/bad%20id/messages"] {
        let (status, answer) = call(&app, Method::GET, path, Auth::Bearer(&stranger), None).await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_process_id",
        );
        let (status, answer) = call(&app, Method::GET, path, Auth::None, None).await;
        assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

async fn the_probes_need_no_token(app: TestApp) {
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

async fn a_cookie_never_authorizes_a_write(app: TestApp) {
    let process = process_id();
    let writer = token(&[&process], Scope::Write);
    for (method, path, body) in protected_calls(&process) {
        if method == Method::GET {
            continue;
        }
        let (status, answer) = call(&app, method.clone(), &path, Auth::Cookie(&writer), body).await;
        assert_error(status, &answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let (status, answer) = call(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Bearer(&writer),
        None,
    )
    .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "process_not_found");
}

async fn the_first_token_present_is_the_one_checked(app: TestApp) {
    let process = finished_process(&app).await;
    let reader = token(&[&process], Scope::Read);
    let response = request(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Query(&reader),
    )
    .bearer_auth("not-a-token")
    .send()
    .await
    .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a bad header is not rescued by a good query"
    );
    let response = request(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Cookie(&reader),
    )
    .header("authorization", "Basic dXNlcjpwYXNz")
    .send()
    .await
    .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "another scheme than Bearer is not a token"
    );
}

async fn a_page_opened_with_an_access_token_hands_it_to_the_browser_as_a_strict_http_only_cookie(
    app: TestApp,
) {
    let process = finished_process(&app).await;
    let reader = token(&[&process], Scope::Read);
    let response = request(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Query(&reader),
    )
    .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.starts_with(&format!("agent_stream_token={reader};")),
        "{cookie}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");

    let response = request(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Query(&reader),
    )
    .send()
    .await
    .unwrap();
    assert!(
        response.headers().get("set-cookie").is_none(),
        "only pages get the cookie"
    );
    let response = request(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Bearer(&reader),
    )
    .header("accept", "text/html")
    .send()
    .await
    .unwrap();
    assert!(
        response.headers().get("set-cookie").is_none(),
        "only a token from the URL is moved"
    );
}

/// `GET /processes` (and the page at `/` built on it) lists only what the token names:
/// the list is no way to learn of other processes.
async fn the_process_list_shows_a_token_only_its_processes(app: TestApp) {
    let writer = token_for_all(Scope::Write);
    let (mine, other) = (process_id(), process_id());
    for process in [&mine, &other] {
        let created = request(
            &app,
            Method::PUT,
            &format!("/processes/{process}"),
            Auth::Bearer(&writer),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let listed = |token: String| {
        let app = &app;
        async move {
            let list: Value = request(app, Method::GET, "/processes", Auth::Bearer(&token))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            list["processes"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|p| p["process_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(token(&[&mine], Scope::Read)).await,
        vec![mine.clone()]
    );
    let all = listed(token_for_all(Scope::Read)).await;
    assert!(all.contains(&mine) && all.contains(&other), "{all:?}");
    let none = request(&app, Method::GET, "/processes", Auth::None)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
}

/// A page's `<script src>` cannot carry a token; the script and style hold no data.
async fn the_viewer_assets_need_no_token(app: TestApp) {
    for asset in ["/assets/viewer.js", "/assets/viewer.css"] {
        let response = request(&app, Method::GET, asset, Auth::None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
}

/// The worker's webhook names its process in the body: a `write` token for that very
/// process, checked before anything is stored.
async fn the_webhook_needs_a_write_token_for_the_process_its_body_names(app: TestApp) {
    let (process, other) = (process_id(), process_id());
    let notification = json!({
        "process_id": process,
        "agent_message": messages("w", 1)[0].clone(),
    });
    let (reader, stranger) = (
        token(&[&process], Scope::Read),
        token(&[&other], Scope::Write),
    );
    for (auth, expected, code) in [
        (Auth::None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Auth::Bearer("not-a-token"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (Auth::Bearer(&reader), StatusCode::FORBIDDEN, "forbidden"),
        (Auth::Bearer(&stranger), StatusCode::FORBIDDEN, "forbidden"),
    ] {
        let (status, body) = call(
            &app,
            Method::POST,
            "/webhooks/messages",
            auth,
            Some(notification.clone()),
        )
        .await;
        assert_error(status, &body, expected, code);
    }
    let writer = token(&[&process], Scope::Write);
    let (status, _) = call(
        &app,
        Method::GET,
        &format!("/processes/{process}"),
        Auth::Bearer(&writer),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused notification stores nothing"
    );
    let (status, body) = call(
        &app,
        Method::POST,
        "/webhooks/messages",
        Auth::Bearer(&writer),
        Some(notification),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({ "id": "w-1", "stream_id": "1-0" }));
}

on_every_backend!(
    spawn = crate::auth::spawn;
    the_webhook_needs_a_write_token_for_the_process_its_body_names,
    every_protected_call_without_a_token_is_a_401_whether_or_not_the_process_exists,
    bad_expired_foreign_or_unsigned_tokens_are_a_401,
    a_read_token_follows_snapshots_and_shows_its_process_by_header_query_or_cookie,
    a_read_token_is_403_on_other_processes_and_on_every_write,
    a_write_token_registers_appends_finishes_and_reads_its_process_only,
    star_tokens_cover_every_process,
    an_unknown_process_is_403_for_a_token_that_does_not_cover_it_and_reads_as_empty_for_one_that_does,
    a_malformed_id_is_a_400_for_any_valid_token_and_a_401_without_one,
    the_probes_need_no_token,
    a_cookie_never_authorizes_a_write,
    the_first_token_present_is_the_one_checked,
    a_page_opened_with_an_access_token_hands_it_to_the_browser_as_a_strict_http_only_cookie,
    the_process_list_shows_a_token_only_its_processes,
    the_viewer_assets_need_no_token,
    a_browser_without_a_token_gets_a_page_that_says_how_to_get_one,
);

async fn a_browser_without_a_token_gets_a_page_that_says_how_to_get_one(app: TestApp) {
    let process = finished_process(&app).await;
    for path in ["/".to_owned(), format!("/processes/{process}")] {
        let page = request(&app, Method::GET, &path, Auth::None)
            .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            page.headers()["content-type"],
            "text/html; charset=utf-8",
            "{path}"
        );
        assert!(page.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer "));
        assert!(page.headers().contains_key("content-security-policy"));
        let html = page.text().await.unwrap();
        for words in [
            "?access_token=",
            "agent-stream token --all --scope read",
            "agent-stream demo",
            &format!("<code>{path}?access_token=TOKEN</code>"),
        ] {
            assert!(html.contains(words), "{path}: {words:?} in {html}");
        }
        assert!(
            !html.contains("{reason}") && !html.contains("{root}"),
            "{html}"
        );

        let expired = Minter::new(&secret())
            .sign(&Claims {
                processes: ids(&[&process]),
                scope: Scope::Read,
                exp: jsonwebtoken::get_current_timestamp() - 120,
                iat: None,
                nbf: None,
                sub: None,
            })
            .unwrap();
        let page = request(&app, Method::GET, &path, Auth::Query(&expired))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
        assert!(
            page.text()
                .await
                .unwrap()
                .contains("The token has expired."),
            "{path}: the page says why the token was refused"
        );

        // A program keeps the contract's JSON.
        let response = request(&app, Method::GET, &path, Auth::None)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
}

/// The binary with none of the environment's configuration.
fn binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("AGENT_STREAM_") || name == "DATABASE_URL" || name == "REDIS_URL" {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// Runs `serve` with `args` and returns its stderr; it must exit (refuse) in time.
pub(crate) async fn refused(args: &[&str]) -> String {
    let output = tokio::time::timeout(WAIT, binary().arg("serve").args(args).output())
        .await
        .expect("serve exits in time")
        .expect("run serve");
    assert!(!output.status.success(), "serve {args:?} started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Starts `serve` with `args` and returns the child and the address it listens on.
pub(crate) async fn started(args: &[&str]) -> (tokio::process::Child, String) {
    let mut child = binary()
        .arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("agent-stream listening") {
                let address = line
                    .split("address=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next());
                return address.expect("the address in the log line").to_owned();
            }
        }
        panic!("serve {args:?} exited without listening");
    })
    .await
    .expect("serve listens in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

#[tokio::test]
async fn serve_without_a_secret_refuses_to_start_and_names_the_flags() {
    let stderr = refused(&["--listen", "127.0.0.1:0"]).await;
    for flag in [
        "--auth-secret",
        "AGENT_STREAM_AUTH_SECRET",
        "--no-auth",
        "--insecure-no-auth",
    ] {
        assert!(stderr.contains(flag), "{flag} in {stderr}");
    }
    let stderr = refused(&["--listen", "127.0.0.1:0", "--auth-secret", "too-short"]).await;
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
}

#[tokio::test]
async fn serve_without_auth_refuses_a_non_loopback_address_unless_told_it_is_insecure() {
    let stderr = refused(&["--listen", "0.0.0.0:0", "--no-auth"]).await;
    assert!(
        stderr.contains("refusing to serve 0.0.0.0:0 without auth")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    let (mut child, _) = started(&["--listen", "0.0.0.0:0", "--insecure-no-auth"]).await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn serve_with_no_auth_on_loopback_lets_every_call_through() {
    let (mut child, address) = started(&["--listen", "127.0.0.1:0", "--no-auth"]).await;
    let client = reqwest::Client::new();
    let process = process_id();
    let response = client
        .put(format!("http://{address}/processes/{process}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .get(format!("http://{address}/processes/{process}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_token_command_mints_tokens_that_a_server_with_the_same_secret_accepts() {
    let (mut child, address) = started(&["--listen", "127.0.0.1:0", "--auth-secret", SECRET]).await;
    let process = process_id();
    let mint = |args: Vec<&str>| {
        let mut command = binary();
        command
            .arg("token")
            .args(args)
            .env("AGENT_STREAM_AUTH_SECRET", SECRET);
        async move {
            let output = command.output().await.expect("run token");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        }
    };
    let writer = mint(vec![
        "--process",
        &process,
        "--scope",
        "write",
        "--ttl",
        "1h",
        "--subject",
        "ci",
    ])
    .await;
    let reader = mint(vec!["--all", "--scope", "read"]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{address}/processes/{process}");
    let response = client.put(&url).bearer_auth(&writer).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client.get(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client.put(&url).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let output = binary()
        .args(["token", "--process", &process, "--scope", "read"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--auth-secret"),
        "without a secret it says which flag to set"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn demo_prints_a_read_token_that_follows_its_process_and_nothing_else() {
    let mut child = binary()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--start-delay",
            "0s",
            "--pace",
            "1ms",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (token, process_url) = tokio::time::timeout(WAIT, async {
        let mut token = None;
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let line = line.trim();
            if let Some(value) = line.strip_prefix("TOKEN=") {
                token = Some(value.to_owned());
            }
            if let Some(url) = line.strip_prefix("curl -H \"Authorization: Bearer $TOKEN\" ") {
                return (token.expect("the token comes first"), url.to_owned());
            }
        }
        panic!("demo exited before printing its commands");
    })
    .await
    .expect("demo prints its commands in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let client = reqwest::Client::new();
    let response = client
        .get(format!("{process_url}/messages/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the demo session ends")
        .unwrap();
    let lines: Vec<Value> = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 33, "32 messages and the end");
    assert_eq!(lines[32]["event"], "end");

    let response = client.get(&process_url).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the demo's server checks tokens"
    );
    let response = client
        .put(&process_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "the printed token only reads"
    );
    let other = process_url.rsplit_once('/').unwrap().0.to_owned() + "/someone-else";
    let response = client.get(&other).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "the printed token covers the demo's process only"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn demo_waits_for_its_first_follower_and_says_so() {
    let mut child = binary()
        .args(["demo", "--listen", "127.0.0.1:0", "--pace", "1ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let (token, process_url) = tokio::time::timeout(WAIT, async {
        let mut token = None;
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            printed.push(line.clone());
            let line = line.trim();
            if let Some(value) = line.strip_prefix("TOKEN=") {
                token = Some(value.to_owned());
            }
            if let Some(url) = line.strip_prefix("curl -H \"Authorization: Bearer $TOKEN\" ") {
                return (token.expect("the token comes first"), url.to_owned());
            }
        }
        panic!("demo exited before printing its commands");
    })
    .await
    .expect("demo prints its commands in time");
    let lines = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });

    // The default start delay is a minute: only the follow can start the session here.
    let body = tokio::time::timeout(WAIT, async {
        reqwest::Client::new()
            .get(format!("{process_url}/messages/stream"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .expect("the first follower starts the session, which ends");
    let followed: Vec<Value> = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(followed.len(), 33, "32 messages and the end");
    child.kill().await.unwrap();
    let rest = lines.await.unwrap();
    let all = printed
        .into_iter()
        .chain(rest)
        .collect::<Vec<_>>()
        .join("\n");
    for words in [
        "The session starts when the first of these follows the process (or in 1m)",
        "/?access_token=",
        "A follower is here: playing the session (32 messages).",
    ] {
        assert!(all.contains(words), "{words:?} in {all}");
    }
}

#[tokio::test]
async fn serve_on_a_taken_port_names_the_listen_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let stderr = refused(&["--no-auth", "--listen", &address]).await;
    assert!(
        stderr.contains(&format!("could not listen on {address}"))
            && stderr.contains("choose another address with --listen"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_says_once_that_postgresql_refuses_connections_and_what_to_check() {
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let url = format!("postgres://agent:secret@{address}/db");
    let stderr = refused(&[
        "--no-auth",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ])
    .await;
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line in {stderr}"));
    assert_eq!(
        error,
        format!("error: could not prepare PostgreSQL (postgres://***@{address}/db): connection refused at {address}: is PostgreSQL running, on that port?")
    );
}

#[tokio::test]
async fn serve_says_a_malformed_database_url_once() {
    let stderr = refused(&[
        "--no-auth",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "localhost/db",
    ])
    .await;
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("an error line in {stderr}"));
    assert_eq!(
        error.matches("relative URL without a base").count(),
        1,
        "{error}"
    );
    assert!(
        error.contains("postgres://user:password@host:port/database"),
        "{error}"
    );
}

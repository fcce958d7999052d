//! The live web viewer: `GET /processes/{id}` for a browser is a page that follows the
//! process, resumes exactly after a drop and shows each message once; `GET /` lists the
//! processes last active. Driven in a real headless chromium (see `browser.rs`); API
//! clients keep the JSON they had.
//!
//! `AGENT_STREAM_TEST_SCREENSHOTS=<dir>` saves what the browser showed, as PNGs.

use reqwest::header;
use serde_json::{json, Value};

use crate::browser::{Browser, Proxy};
use agent_stream::auth::Scope;
use agent_stream_testkit::app::TestApp;
use agent_stream_testkit::fixtures::{messages, process_id, session};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    the_viewer_follows_live_and_a_dropped_connection_loses_or_doubles_nothing,
    the_list_shows_the_processes_last_active_first_and_links_to_each,
    a_browser_gets_the_viewer_and_an_api_client_the_json_as_before,
    the_list_as_json_is_ordered_by_last_activity_and_bounded,
    the_viewer_of_a_process_not_known_yet_waits_for_its_agent_then_follows_it,
);

mod with_auth {
    agent_stream_testkit::on_every_backend!(
        spawn = crate::auth::spawn;
        a_page_opened_with_a_token_follows_by_its_cookie_with_the_token_gone_from_the_address,
    );
    use super::*;
}

/// The stream IDs of the timeline's items, in page order.
const STREAM_IDS: &str =
    "return [...document.querySelectorAll('#timeline > li')].map(li => li.dataset.streamId)";
/// The connection state the page shows: connecting, live, reconnecting, finished, closed.
const CONNECTION: &str = "return document.getElementById('connection').dataset.state";
/// What a browser sends when it opens a page.
const BROWSER_ACCEPT: &str =
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

fn stream_ids(seqs: std::ops::RangeInclusive<u64>) -> Value {
    seqs.map(|seq| format!("{seq}-0")).collect()
}

async fn the_viewer_follows_live_and_a_dropped_connection_loses_or_doubles_nothing(
    mut app: TestApp,
) {
    let session = session();
    assert_eq!(session.len(), 32);
    let process = process_id();
    app.put_process(&process).await;
    let proxy = Proxy::start(&app.base).await;
    let browser = Browser::launch().await;
    browser
        .open(&format!("{}/processes/{process}", proxy.base))
        .await;
    browser
        .wait_until("the follow to be live", CONNECTION, json!("live"))
        .await;

    app.append(&process, &session[..12]).await;
    browser
        .wait_until(
            "the first messages to appear",
            STREAM_IDS,
            stream_ids(1..=12),
        )
        .await;
    browser.screenshot("viewer-live").await;

    // The connection drops and the server restarts; messages come while the page is away.
    proxy.cut();
    app.restart().await;
    browser
        .wait_until(
            "the page to see the drop",
            CONNECTION,
            json!("reconnecting"),
        )
        .await;
    app.append(&process, &session[12..24]).await;
    browser.screenshot("viewer-reconnecting").await;
    proxy.restore(&app.base);
    browser
        .wait_until(
            "the messages sent while away, once each",
            STREAM_IDS,
            stream_ids(1..=24),
        )
        .await;
    browser
        .wait_until("the follow to be live again", CONNECTION, json!("live"))
        .await;

    app.append(&process, &session[24..]).await;
    assert_eq!(app.finish(&process, "succeeded").await.status(), 200);
    browser
        .wait_until("the end", CONNECTION, json!("finished"))
        .await;
    assert_eq!(
        browser.eval(STREAM_IDS).await,
        stream_ids(1..=32),
        "every message exactly once, in order"
    );

    let error_seq = session
        .iter()
        .position(|m| m["payload"]["content"][0]["is_error"] == true)
        .expect("the fixture has a failed tool call") as u64
        + 1;
    let shown = browser
        .eval(
            "const li = (id) => document.querySelector(`#timeline > li[data-stream-id='${id}']`);
             return {
               text: li('2-0').querySelector('.text').textContent,
               first_call: li('3-0').querySelector('.tool .tool-name').textContent,
               grep_call: li('5-0').querySelector('.tool .tool-head').textContent,
               todo_call: li('10-0').querySelector('.tool .tool-head').textContent,
               todos: [...li('10-0').querySelectorAll('.todos > li')].map(li => li.textContent),
               its_result_from: li('3-0').querySelector('.tool .tool-result').dataset.fromStreamId,
               result_item_hidden: li('4-0').hidden,
               thinking_folded: !li('9-0').querySelector('details.thinking').open,
               errors_from: [...document.querySelectorAll('.tool-result.error')].map(d => d.dataset.fromStreamId),
               error_summary: document.querySelector('.tool-result.error > summary').textContent,
               waiting: document.querySelectorAll('.pending').length,
               outcome: li('32-0').querySelector('.outcome').textContent,
               status: document.getElementById('process-status').textContent,
               connection: document.getElementById('connection').textContent,
             };",
        )
        .await;
    browser.screenshot("viewer-finished").await;
    // Unfolded, a failed call's output is there verbatim, marked as an error.
    let output = browser
        .eval(
            "const fold = document.querySelector('.tool-result.error');
             fold.open = true;
             fold.scrollIntoView();
             return fold.querySelector('pre').textContent;",
        )
        .await;
    assert_eq!(
        output,
        session[error_seq as usize - 1]["payload"]["content"][0]["content"]
    );
    browser.screenshot("viewer-error-unfolded").await;
    let expected_outcome = "✓ Done (success) · took 3 min 4 s · cost $0.42 · 32 turns";
    assert_eq!(
        shown,
        json!({
            "text": session[1]["payload"]["content"][0]["text"],
            "first_call": "LS",
            "grep_call": "Grep def compute_total in src",
            "todo_call": "TodoWrite 3 todos: 1 in progress, 2 pending",
            "todos": [
                "◐ Reproduce rounding drift with a failing test (in progress)",
                "☐ Round once on the invoice total (pending)",
                "☐ Run the billing test suite (pending)",
            ],
            "its_result_from": "4-0",
            "result_item_hidden": true,
            "thinking_folded": true,
            "errors_from": [format!("{error_seq}-0")],
            "error_summary": format!("✗ Error · {} lines", session[error_seq as usize - 1]["payload"]["content"][0]["content"].as_str().unwrap().split('\n').count()),
            "waiting": 0,
            "outcome": expected_outcome,
            "status": "succeeded",
            "connection": "Finished: succeeded. Nothing more will come.",
        })
    );

    // The viewer's one-line summaries of tool calls are tail's: both are held to the
    // same cases (tail's in its unit tests).
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("../fixtures/tool-summaries.json")).unwrap();
    let shown = browser
        .eval(&format!(
            "return {}.map(input => toolSubject(input));",
            Value::from(
                cases
                    .iter()
                    .map(|case| case["input"].clone())
                    .collect::<Vec<_>>()
            )
        ))
        .await;
    let expected: Vec<Value> = cases.iter().map(|case| case["subject"].clone()).collect();
    assert_eq!(
        shown,
        Value::from(expected),
        "the viewer summarises tool calls as tail does"
    );
    browser.close().await;
}

/// The platform opens a process's page before its agent has started.
async fn the_viewer_of_a_process_not_known_yet_waits_for_its_agent_then_follows_it(app: TestApp) {
    let process = process_id();
    let browser = Browser::launch().await;
    browser
        .open(&format!("{}/processes/{process}", app.base))
        .await;
    browser
        .wait_until(
            "the page to wait for the agent",
            CONNECTION,
            json!("waiting"),
        )
        .await;
    let said = browser
        .eval("return document.getElementById('connection').textContent")
        .await;
    assert!(
        said.as_str()
            .unwrap()
            .starts_with("Waiting for the agent to start"),
        "{said}"
    );
    browser.screenshot("viewer-waiting").await;

    app.append(&process, &session()[..3]).await;
    browser
        .wait_until("the first messages", STREAM_IDS, stream_ids(1..=3))
        .await;
    browser
        .wait_until("the follow to be live", CONNECTION, json!("live"))
        .await;
    assert_eq!(app.finish(&process, "succeeded").await.status(), 200);
    browser
        .wait_until("the end", CONNECTION, json!("finished"))
        .await;
    assert_eq!(browser.eval(STREAM_IDS).await, stream_ids(1..=3));
    browser.close().await;
}

async fn the_list_shows_the_processes_last_active_first_and_links_to_each(app: TestApp) {
    let (first, second, third) = (process_id(), process_id(), process_id());
    app.put_process(&first).await;
    app.put_process(&second).await;
    app.append(&third, &messages("m", 2)).await;
    assert_eq!(app.finish(&third, "failed").await.status(), 200);
    // Activity, not creation, orders the list: the first process is the latest active.
    app.append(&first, &messages("m", 3)).await;
    let unsafe_text = r#"<img src=x onerror="document.body.dataset.injected=1"><b>not bold</b>"#;
    app.append(
        &first,
        &[
            json!({"type": "AssistantMessage", "payload": {"content": [{"text": unsafe_text}]}}),
            json!({"type": "SomethingNew", "payload": {"detail": "<script>alert(1)</script>"}}),
        ],
    )
    .await;

    let browser = Browser::launch().await;
    // A token in the page's address leaves it at once: the page's calls and links carry
    // none (with auth on, the cookie the page was served with does).
    browser.open(&app.url("/?access_token=t0ken")).await;
    let rows = browser
        .wait_until(
            "the list",
            "return [...document.querySelectorAll('#processes tbody tr')].map(tr => [...tr.cells].slice(0, 3).map(td => td.textContent))",
            json!([
                [first, "running", "5"],
                [third, "failed", "2"],
                [second, "running", "0"],
            ]),
        )
        .await;
    assert_eq!(rows.as_array().unwrap().len(), 3);
    browser.screenshot("list").await;

    let link = browser
        .eval("return document.querySelector('#processes tbody a').href")
        .await;
    assert_eq!(link, json!(app.url(&format!("/processes/{first}"))));
    assert_eq!(
        browser.eval("return location.href").await,
        json!(app.url("/")),
        "the token is gone from the address (and so from the history)"
    );
    browser
        .client
        .find(fantoccini::Locator::LinkText(&first))
        .await
        .expect("the process's link")
        .click()
        .await
        .expect("follow the link");
    browser
        .wait_until("the process's messages", STREAM_IDS, stream_ids(1..=5))
        .await;
    // Finished, the follow's response completes and shows among the page's requests.
    assert_eq!(app.finish(&first, "succeeded").await.status(), 200);
    browser
        .wait_until("the end", CONNECTION, json!("finished"))
        .await;
    let shown = browser
        .eval(
            "const li = (id) => document.querySelector(`#timeline > li[data-stream-id='${id}']`);
             return {
               text: li('4-0').querySelector('.text').textContent,
               injected: document.body.dataset.injected ?? null,
               images: document.querySelectorAll('#timeline img, #timeline b, #timeline script').length,
               unknown: li('5-0').querySelector('details > summary').textContent,
               unknown_json: JSON.parse(li('5-0').querySelector('details > pre').textContent).payload,
               calls: performance.getEntriesByType('resource')
                 .filter(e => e.name.includes('/processes/'))
                 .map(e => e.name),
               back_link: document.querySelector('nav a').href,
             };",
        )
        .await;
    assert_eq!(
        shown,
        json!({
            "text": unsafe_text,
            "injected": null,
            "images": 0,
            "unknown": "SomethingNew (shown as JSON)",
            "unknown_json": {"detail": "<script>alert(1)</script>"},
            "calls": [
                app.url(&format!("/processes/{first}")),
                app.url(&format!("/processes/{first}/messages")),
            ],
            "back_link": app.url("/"),
        }),
        "message content is text, never HTML"
    );
    browser.close().await;
}

async fn a_browser_gets_the_viewer_and_an_api_client_the_json_as_before(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let url = app.url(&format!("/processes/{process}"));

    let page = app
        .http
        .get(&url)
        .header(header::ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["vary"], "accept");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("script-src 'self'"),
        "{policy}"
    );
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<ol id="timeline""#), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing loads from elsewhere"
    );

    let json = app
        .get_process(&process)
        .await
        .json::<Value>()
        .await
        .unwrap();
    for accept in [Some("*/*"), Some("application/json"), None] {
        let request = app.http.get(&url);
        let request = match accept {
            Some(accept) => request.header(header::ACCEPT, accept),
            None => request,
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{accept:?}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.json::<Value>().await.unwrap(), json, "{accept:?}");
    }
    assert_eq!(json["message_count"], 2);

    // A process not known yet: the page (which waits for its agent), but no record.
    let not_known_yet = app.url(&format!("/processes/{}", process_id()));
    let page = app
        .http
        .get(&not_known_yet)
        .header(header::ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let record = app.http.get(&not_known_yet).send().await.unwrap();
    assert_eq!(record.status(), 404);
    let body: Value = record.json().await.unwrap();
    assert_eq!(body["error"]["code"], "process_not_found");

    let index = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    assert!(index.headers().contains_key("content-security-policy"));

    for (asset, content_type) in [
        ("viewer.js", "text/javascript; charset=utf-8"),
        ("viewer.css", "text/css; charset=utf-8"),
    ] {
        let url = app.url(&format!("/assets/{asset}"));
        let response = app.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type);
        let etag = response.headers()["etag"].clone();
        let again = app
            .http
            .get(&url)
            .header(header::IF_NONE_MATCH, etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{asset} revalidates by ETag");
    }
    let missing = app
        .http
        .get(app.url("/assets/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}

async fn the_list_as_json_is_ordered_by_last_activity_and_bounded(app: TestApp) {
    let processes: Vec<String> = (0..3).map(|_| process_id()).collect();
    for process in &processes {
        app.put_process(process).await;
    }
    app.append(&processes[0], &messages("m", 1)).await;
    let list = |query: &'static str| {
        let request = app.http.get(app.url(&format!("/processes{query}")));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = list("").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = body["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["process_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [&processes[0], &processes[2], &processes[1]]);
    let first = &body["processes"][0];
    assert_eq!(first["message_count"], 1);
    assert_eq!(first["status"], "running");
    assert!(first["last_activity_at"].as_str().unwrap() > first["created_at"].as_str().unwrap());

    let (status, body) = list("?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(body["processes"].as_array().unwrap().len(), 2);
    for bad in ["?limit=0", "?limit=1001", "?limit=x"] {
        let (status, body) = list(bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "invalid_limit");
    }
}

/// The token a page was opened with becomes an HttpOnly cookie; the page strips it from
/// its address (so from the history) and sends it in no link or request.
async fn a_page_opened_with_a_token_follows_by_its_cookie_with_the_token_gone_from_the_address(
    app: TestApp,
) {
    let process = process_id();
    let writer = crate::auth::token(&[&process], Scope::Write);
    let reader = crate::auth::token(&[&process], Scope::Read);
    let appended = app
        .http
        .post(app.url(&format!("/processes/{process}/messages")))
        .bearer_auth(&writer)
        .json(&messages("m", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 201);

    let browser = Browser::launch().await;
    browser
        .open(&app.url(&format!("/processes/{process}?access_token={reader}")))
        .await;
    browser
        .wait_until(
            "the messages, read with the cookie",
            STREAM_IDS,
            stream_ids(1..=3),
        )
        .await;
    // No request the page made carries the token (the follow, closed by the page on its
    // end, may be missing from the list: an aborted request has no timing entry).
    let calls = browser
        .eval(
            "return performance.getEntriesByType('resource')
               .filter(e => e.name.includes('/processes/'))
               .map(e => e.name)",
        )
        .await;
    let calls = calls.as_array().expect("a list");
    assert!(
        calls.contains(&json!(app.url(&format!("/processes/{process}")))),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|call| !call.to_string().contains("access_token")),
        "{calls:?}"
    );
    let seen = browser
        .eval("return { address: location.href, back_link: document.querySelector('nav a').href };")
        .await;
    assert_eq!(
        seen,
        json!({
            "address": app.url(&format!("/processes/{process}")),
            "back_link": app.url("/"),
        })
    );
    browser.close().await;
}

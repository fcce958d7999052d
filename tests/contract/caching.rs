//! Caching snapshots: an `ETag` that names the content, `If-None-Match` answered with
//! 304, and a finished process's snapshot kept by the browser for good.

use reqwest::header::{ACCEPT_ENCODING, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

use agent_stream_testkit::app::TestApp;
use agent_stream_testkit::fixtures::{messages, process_id, seqs};
use agent_stream_testkit::on_every_backend;

on_every_backend!(
    a_finished_processs_snapshot_is_immutable_and_revalidates_to_304,
    a_running_processs_snapshot_is_304_until_a_message_is_appended,
    the_etag_differs_by_cursor_limit_and_encoding,
    a_tag_that_does_not_match_or_parse_gets_the_whole_snapshot,
);
mod with_auth {
    agent_stream_testkit::on_every_backend!(
        spawn = crate::auth::spawn;
        with_auth_on_only_the_browser_may_keep_a_snapshot,
    );
    use super::*;
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name}"))
        .to_str()
        .expect("text")
        .to_owned()
}

/// A snapshot read as it crosses the wire (identity unless `encoding` says otherwise).
async fn read(
    app: &TestApp,
    path: &str,
    encoding: &str,
    if_none_match: Option<&str>,
) -> reqwest::Response {
    let mut request = reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("a client")
        .get(app.url(path))
        .header(ACCEPT_ENCODING, encoding);
    if let Some(tag) = if_none_match {
        request = request.header(IF_NONE_MATCH, tag);
    }
    request.send().await.expect("GET snapshot")
}

async fn a_finished_processs_snapshot_is_immutable_and_revalidates_to_304(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 3)).await;
    app.finish(&process, "succeeded").await;
    let path = format!("/processes/{process}/messages");
    let first = read(&app, &path, "identity", None).await;
    assert_eq!(first.status(), 200);
    let etag = header(&first, ETAG);
    assert!(etag.starts_with('"'), "a strong tag: {etag}");
    let cache_control = header(&first, CACHE_CONTROL);
    assert!(cache_control.contains("immutable"), "{cache_control}");
    assert!(cache_control.contains("max-age="), "{cache_control}");
    assert!(
        !cache_control.contains("private"),
        "no auth: {cache_control}"
    );

    let again = read(&app, &path, "identity", Some(&etag)).await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, ETAG), etag);
    assert_eq!(header(&again, CACHE_CONTROL), cache_control);
    assert!(again.bytes().await.expect("body").is_empty());
    // Among other tags, and as `*`.
    for tags in [format!("\"other\", {etag}"), "*".to_owned()] {
        assert_eq!(
            read(&app, &path, "identity", Some(&tags)).await.status(),
            304,
            "{tags}"
        );
    }
}

async fn a_running_processs_snapshot_is_304_until_a_message_is_appended(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("a", 2)).await;
    let path = format!("/processes/{process}/messages");
    let first = read(&app, &path, "identity", None).await;
    let etag = header(&first, ETAG);
    assert_eq!(header(&first, CACHE_CONTROL), "no-cache");
    assert_eq!(
        read(&app, &path, "identity", Some(&etag)).await.status(),
        304
    );

    app.append(&process, &messages("b", 1)).await;
    let changed = read(&app, &path, "identity", Some(&etag)).await;
    assert_eq!(changed.status(), 200);
    let new_etag = header(&changed, ETAG);
    assert_ne!(new_etag, etag);
    let body: Vec<serde_json::Value> = changed.json().await.expect("JSON");
    assert_eq!(body.len(), 3);

    // Finishing changes the tag too: the next answer may be kept for good.
    app.finish(&process, "failed").await;
    let finished = read(&app, &path, "identity", Some(&new_etag)).await;
    assert_eq!(finished.status(), 200);
    assert!(header(&finished, CACHE_CONTROL).contains("immutable"));
}

async fn the_etag_differs_by_cursor_limit_and_encoding(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 40)).await;
    app.finish(&process, "succeeded").await;
    let base = format!("/processes/{process}/messages");
    let mut tags = Vec::new();
    for query in ["", "?after=1", "?limit=2", "?after=1&limit=2"] {
        let response = read(&app, &format!("{base}{query}"), "identity", None).await;
        tags.push(header(&response, ETAG));
    }
    let mut unique = tags.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), tags.len(), "{tags:?}");

    // A compressed answer carries the weak form of the identity tag, which revalidates.
    let identity = &tags[0];
    for codec in ["gzip", "br", "zstd"] {
        let compressed = read(&app, &base, codec, None).await;
        assert_eq!(
            header(&compressed, "content-encoding".parse().unwrap()),
            codec
        );
        let weak = header(&compressed, ETAG);
        assert_eq!(weak, format!("W/{identity}"), "{codec}");
        let again = read(&app, &base, codec, Some(&weak)).await;
        assert_eq!(again.status(), 304, "{codec}");
        assert_eq!(header(&again, ETAG), weak);
    }
}

async fn a_tag_that_does_not_match_or_parse_gets_the_whole_snapshot(app: TestApp) {
    let process = process_id();
    app.append(&process, &messages("m", 2)).await;
    let path = format!("/processes/{process}/messages");
    for tag in ["\"nope\"", "W/\"nope\"", "garbage, ,,", "\"unclosed"] {
        let response = read(&app, &path, "identity", Some(tag)).await;
        assert_eq!(response.status(), 200, "{tag}");
        let body: Vec<serde_json::Value> = response.json().await.expect("JSON");
        assert_eq!(seqs(&body), [1, 2], "{tag}");
    }
}

async fn with_auth_on_only_the_browser_may_keep_a_snapshot(app: TestApp) {
    let process = process_id();
    let token = crate::auth::token(&[&process], agent_stream::auth::Scope::Write);
    let http = reqwest::Client::new();
    let url = app.url(&format!("/processes/{process}/messages"));
    let appended = http
        .post(&url)
        .bearer_auth(&token)
        .json(&messages("m", 1)[0])
        .send()
        .await
        .expect("append");
    assert_eq!(appended.status(), 201);
    let running = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(header(&running, CACHE_CONTROL), "private, no-cache");
    let finished = http
        .post(app.url(&format!("/processes/{process}/finish")))
        .bearer_auth(&token)
        .json(&serde_json::json!({"status": "succeeded"}))
        .send()
        .await
        .expect("finish");
    assert_eq!(finished.status(), 200);
    let kept = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    let cache_control = header(&kept, CACHE_CONTROL);
    assert!(
        cache_control.starts_with("private, ") && cache_control.contains("immutable"),
        "{cache_control}"
    );
    // Without a token, the 401 comes first: a tag tells nothing.
    let etag = header(&kept, ETAG);
    let anonymous = http
        .get(&url)
        .header(IF_NONE_MATCH, etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), 401);
}

//! Fuzz. Invariant: whatever a client puts in the process id, the query string, `after`,
//! `Last-Event-ID`, `Accept` or the body, the server answers; never with a 5xx; every
//! 4xx is the contract's JSON error `{"error": {"code", "message"}}` with a code of the
//! the error table's (docs/contract.md) and that code's status; a refused write stores nothing; and the
//! server still answers `/healthz` afterwards.
//!
//! One server per backend serves every case, so that what one case leaves behind (a
//! registered process, a follow left open) is part of what the next one meets.

use std::fmt;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::HeaderValue;
use serde_json::{json, Map, Value};

use agent_stream_testkit::app::{Backend, TestApp, WAIT};
use agent_stream_testkit::fixtures::{messages, process_id};

/// The server's limits in these tests, small so that random bodies cross them.
const MAX_MESSAGE_BYTES: usize = 4 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024;
const MAX_BATCH_MESSAGES: usize = 3;

/// The error table of docs/contract.md: every code a 4xx may carry, with its status.
const ERROR_CODES: &[(&str, u16)] = &[
    ("invalid_process_id", 400),
    ("invalid_cursor", 400),
    ("invalid_limit", 400),
    ("invalid_query", 400),
    ("invalid_message", 400),
    ("invalid_body", 400),
    ("invalid_status", 400),
    ("process_not_found", 404),
    ("not_found", 404),
    ("method_not_allowed", 405),
    ("process_finished", 409),
    ("status_conflict", 409),
    ("message_too_large", 413),
    ("body_too_large", 413),
    ("too_many_messages", 413),
];

/// Which process a case's path names.
#[derive(Debug, Clone)]
enum Target {
    /// A valid id no one has used: it must stay unknown unless a write succeeds.
    Fresh,
    /// A process registered for this case, with two messages, running.
    Running,
    /// One process shared by every case, finished as `succeeded`.
    Finished,
    /// Arbitrary bytes, percent-encoded into the path segment.
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Show,
    Register,
    Read,
    ReadStream,
    Append,
    Finish,
    /// A method no route of the process takes (or HEAD, which GET routes take).
    OtherMethod(&'static str),
    /// A path under the process that is no route, or is one with a suffix.
    OtherPath(&'static str),
}

impl Call {
    fn method(self) -> &'static str {
        match self {
            Call::Show | Call::Read | Call::ReadStream => "GET",
            Call::Register => "PUT",
            Call::Append | Call::Finish => "POST",
            Call::OtherMethod(method) => method,
            Call::OtherPath(_) => "POST",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Call::Read | Call::Append => "/messages",
            Call::ReadStream => "/messages/stream",
            Call::Finish => "/finish",
            Call::OtherPath(suffix) => suffix,
            Call::Show | Call::Register | Call::OtherMethod(_) => "",
        }
    }

    /// Whether a refusal of this call must leave the process as it was.
    fn writes(self) -> bool {
        !matches!(self.method(), "GET" | "HEAD")
    }
}

#[derive(Debug, Clone)]
enum Query {
    None,
    /// Typed as is into the URL (the URL parser encodes what it must).
    Raw(String),
    /// The messages parameters, each value percent-encoded from arbitrary bytes.
    Params {
        after: Option<Vec<u8>>,
        limit: Option<Vec<u8>>,
        follow: Option<Vec<u8>>,
    },
}

#[derive(Clone)]
struct Case {
    call: Call,
    target: Target,
    query: Query,
    last_event_id: Option<Vec<u8>>,
    accept: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
}

// ---- Percent-encoding ---------------------------------------------------------------

fn encode(bytes: &[u8], keep: impl Fn(u8) -> bool) -> String {
    bytes
        .iter()
        .map(|&b| {
            if keep(b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A path segment: what RFC 3986 allows in one is kept, the rest escaped.
fn encode_segment(bytes: &[u8]) -> String {
    encode(bytes, |b| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
    })
}

/// A query value: only unreserved characters are kept, so `&`, `=`, `+`, `%` arrive as sent.
fn encode_value(bytes: &[u8]) -> String {
    encode(bytes, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl Case {
    fn path(&self, target: &str) -> String {
        let mut path = format!("/processes/{target}{}", self.call.suffix());
        match &self.query {
            Query::None => {}
            Query::Raw(raw) => {
                path.push('?');
                path.push_str(raw);
            }
            Query::Params {
                after,
                limit,
                follow,
            } => {
                let params: Vec<String> = [("after", after), ("limit", limit), ("follow", follow)]
                    .into_iter()
                    .filter_map(|(name, value)| {
                        value
                            .as_ref()
                            .map(|v| format!("{name}={}", encode_value(v)))
                    })
                    .collect();
                path.push('?');
                path.push_str(&params.join("&"));
            }
        }
        path
    }
}

/// Shows a case as the request it makes, bytes shown as text where they are text.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Fresh => "<fresh id>".to_owned(),
            Target::Running => "<running process>".to_owned(),
            Target::Finished => "<finished process>".to_owned(),
            Target::Raw(bytes) => encode_segment(bytes),
        };
        write!(f, "{} {}", self.call.method(), self.path(&target))?;
        let lossy = |bytes: &[u8]| format!("{:?}", String::from_utf8_lossy(bytes));
        if let Some(value) = &self.last_event_id {
            write!(f, "\n  Last-Event-ID: {} (bytes {value:?})", lossy(value))?;
        }
        if let Some(value) = &self.accept {
            write!(f, "\n  Accept: {} (bytes {value:?})", lossy(value))?;
        }
        if let Some(body) = &self.body {
            match std::str::from_utf8(body) {
                Ok(text) => write!(f, "\n  body: {text:?}")?,
                Err(_) => write!(f, "\n  body (not UTF-8): {body:?}")?,
            }
        }
        Ok(())
    }
}

// ---- Strategies ---------------------------------------------------------------------

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        2 => Just(Call::Show),
        2 => Just(Call::Register),
        3 => Just(Call::Read),
        1 => Just(Call::ReadStream),
        6 => Just(Call::Append),
        4 => Just(Call::Finish),
        1 => prop::sample::select(vec!["DELETE", "PATCH", "OPTIONS", "HEAD"]).prop_map(Call::OtherMethod),
        1 => prop::sample::select(vec!["/", "/nothing", "/messages/x", "/finish/x", "/messages/stream/x"]).prop_map(Call::OtherPath),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    let valid = "[A-Za-z0-9._-]{1,128}".prop_map(String::into_bytes);
    prop_oneof![
        3 => Just(Target::Fresh),
        6 => Just(Target::Running),
        3 => Just(Target::Finished),
        2 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Target::Raw),
        1 => "[A-Za-z0-9._-]{127,130}".prop_map(|id| Target::Raw(id.into_bytes())),
        // A valid id with one arbitrary byte put in.
        2 => (valid, any::<u8>(), any::<prop::sample::Index>()).prop_map(|(mut id, b, at)| {
            id.insert(at.index(id.len() + 1), b);
            Target::Raw(id)
        }),
    ]
}

/// Text that looks like a cursor, and text that does not.
fn cursor_like() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => "[0-9]{1,2}(-[0-9]{1,2})?".prop_map(String::into_bytes),
        1 => "[0-9]{18,22}(-[0-9]{1,22})?".prop_map(String::into_bytes),
        2 => "[ \t]{0,2}[-+0-9.ex ]{0,10}[ \t]{0,2}".prop_map(String::into_bytes),
        1 => prop::sample::select(vec!["0-0", "", "9223372036854775807-18446744073709551615", "9223372036854775808", "1-1"])
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::collection::vec(any::<u8>(), 0..24),
    ]
    .boxed()
}

/// Bytes a header value may hold (visible ASCII, space, tab, obs-text): reqwest refuses
/// the others.
fn header_bytes() -> BoxedStrategy<Vec<u8>> {
    let byte = prop_oneof![8 => 0x20u8..=0x7e, 2 => 0x80u8..=0xff, 1 => Just(b'\t')];
    prop_oneof![cursor_like(), prop::collection::vec(byte, 0..40),]
        .prop_filter("a header value reqwest sends", |bytes| {
            HeaderValue::from_bytes(bytes).is_ok()
        })
        .boxed()
}

fn accept() -> impl Strategy<Value = Option<Vec<u8>>> {
    let known = prop::sample::select(vec![
        "text/event-stream",
        "application/x-ndjson",
        "application/json",
        "*/*",
        "TEXT/EVENT-STREAM;q=0",
        "application/json, text/event-stream",
        "text/html, application/json;q=0.9, */*;q=0.1",
        ",;,",
        "",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    proptest::option::of(prop_oneof![3 => known, 1 => header_bytes()])
}

fn query() -> impl Strategy<Value = Query> {
    let limit = prop_oneof![
        "[0-9]{1,6}".prop_map(String::into_bytes),
        prop::sample::select(vec![
            "0", "1", "10000", "10001", "-1", "+5", "1.5", "", "1e3"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    let follow = prop_oneof![
        prop::sample::select(vec!["true", "false", "1", "0", "TRUE", "yes", "", " 1"])
            .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    // Mostly absent, so that one odd parameter at a time meets the server.
    let sometimes = |strategy: BoxedStrategy<Vec<u8>>| proptest::option::weighted(0.3, strategy);
    prop_oneof![
        2 => Just(Query::None),
        // Anything visible but `#` (which would start a fragment), stray `%` included.
        1 => "[ -\"$-~]{0,40}".prop_map(Query::Raw),
        1 => prop::collection::vec(any::<u8>(), 0..30).prop_map(|bytes| Query::Raw(encode(&bytes, |b| b.is_ascii_alphanumeric() || b"=&".contains(&b)))),
        6 => (sometimes(cursor_like()), sometimes(limit.boxed()), sometimes(follow.boxed()))
            .prop_map(|(after, limit, follow)| Query::Params { after, limit, follow }),
    ]
}

fn json_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[ \t\r\n\"\\\\{}\\[\\]:,/\u{0}\u{1f}\u{7f}\u{85}\u{2028}é😀a-]{0,12}",
    ]
    .boxed()
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        json_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(json_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A message that follows the contract, ids from a small set so that some repeat.
fn valid_message() -> BoxedStrategy<Value> {
    (
        proptest::option::of(prop_oneof![
            "m-[0-9]".prop_map(Value::from),
            json_string().prop_map(Value::from),
        ]),
        json_string(),
        proptest::option::of(any::<i64>()),
        proptest::option::of(json_string()),
        prop::collection::btree_map(json_string(), json_value(), 0..4),
    )
        .prop_map(|(id, kind, turn, model, payload)| {
            let mut message = Map::new();
            if let Some(id) = id {
                message.insert("id".into(), id);
            }
            message.insert("type".into(), kind.into());
            if let Some(turn) = turn {
                message.insert("turn".into(), turn.into());
            }
            message.insert("agent".into(), "CLAUDE_CODE".into());
            if let Some(model) = model {
                message.insert("model".into(), model.into());
            }
            message.insert(
                "payload".into(),
                Value::Object(payload.into_iter().collect()),
            );
            Value::Object(message)
        })
        .boxed()
}

/// A valid message with one field removed or replaced, or one added.
fn near_valid_message() -> BoxedStrategy<Value> {
    let field = prop::sample::select(vec![
        "id", "type", "turn", "agent", "model", "payload", "status", "extra",
    ]);
    let value = prop_oneof![
        json_value(),
        Just(json!("")),
        Just(json!(null)),
        Just(json!(1.5)),
        Just(json!(u64::MAX)),
        Just(json!("x".repeat(257))),
        Just(json!("a\u{1}b")),
        Just(json!([1])),
        Just(json!({})),
    ];
    prop_oneof![
        2 => valid_message(),
        1 => (valid_message(), field.clone()).prop_map(|(mut message, field)| {
            message.as_object_mut().unwrap().remove(field);
            message
        }),
        3 => (valid_message(), field, value).prop_map(|(mut message, field, value)| {
            message.as_object_mut().unwrap().insert(field.into(), value);
            message
        }),
    ]
    .boxed()
}

/// A finish body, valid or one step away.
fn near_valid_finish() -> BoxedStrategy<Value> {
    let status = prop_oneof![
        prop::sample::select(vec![
            "succeeded",
            "failed",
            "cancelled",
            "running",
            "",
            "a b",
            "x:y"
        ])
        .prop_map(Value::from),
        "[A-Za-z0-9._-]{60,68}".prop_map(Value::from),
        json_string().prop_map(Value::from),
        json_value(),
    ];
    prop_oneof![
        3 => status.prop_map(|status| json!({ "status": status })),
        1 => (json_string(), json_value()).prop_map(|(key, value)| json!({ "status": "succeeded", key: value })),
        1 => json_value().prop_map(|value| json!({ "state": value })),
    ]
    .boxed()
}

fn write(value: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(value).unwrap()
    } else {
        serde_json::to_vec(value).unwrap()
    }
}

/// A body for `call`: mostly what that call takes, give or take one mistake, and now and
/// then anything at all.
fn body(call: Call) -> BoxedStrategy<Option<Vec<u8>>> {
    let layout = any::<bool>();
    let message = (near_valid_message(), layout).prop_map(|(value, pretty)| write(&value, pretty));
    let batch = (prop::collection::vec(near_valid_message(), 0..4), layout)
        .prop_map(|(items, pretty)| write(&Value::Array(items), pretty));
    let finish = (near_valid_finish(), layout).prop_map(|(value, pretty)| write(&value, pretty));
    let any_json = (json_value(), layout).prop_map(|(value, pretty)| write(&value, pretty));
    let bytes = prop::collection::vec(any::<u8>(), 0..200);
    // JSON with arbitrary bytes spliced in, or cut short.
    let spliced = (
        prop_oneof![near_valid_message(), near_valid_finish()],
        prop::collection::vec(any::<u8>(), 1..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(value, noise, at)| {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, noise);
            bytes
        });
    let cut = (near_valid_message(), any::<prop::sample::Index>()).prop_map(|(value, at)| {
        let bytes = serde_json::to_vec(&value).unwrap();
        bytes[..at.index(bytes.len())].to_vec()
    });
    // Around the message and body limits.
    let large =
        (MAX_MESSAGE_BYTES - 64..MAX_MESSAGE_BYTES + 64, 1..6usize).prop_map(|(size, n)| {
            let message = json!({ "type": "T", "payload": { "t": "x".repeat(size - 30) } });
            let items = vec![message; n];
            write(
                &if n == 1 {
                    items[0].clone()
                } else {
                    Value::Array(items)
                },
                false,
            )
        });
    // Deep nesting, where a recursive parser would overflow its stack.
    let deep = (1usize..5000).prop_map(|depth| {
        format!(
            r#"{{"type":"T","payload":{{"a":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    });
    match call {
        Call::Append => prop_oneof![
            8 => message,
            4 => batch,
            1 => finish,
            1 => any_json,
            1 => bytes,
            1 => spliced,
            1 => cut,
            1 => large,
            1 => deep,
        ]
        .prop_map(Some)
        .boxed(),
        Call::Finish => prop_oneof![
            8 => finish.prop_map(Some),
            1 => message.prop_map(Some),
            1 => any_json.prop_map(Some),
            1 => bytes.prop_map(Some),
            1 => spliced.prop_map(Some),
            1 => Just(None),
        ]
        .boxed(),
        _ => prop_oneof![
            4 => Just(None),
            1 => prop_oneof![message, bytes].prop_map(Some),
        ]
        .boxed(),
    }
}

fn case() -> impl Strategy<Value = Case> {
    call()
        .prop_flat_map(|call| {
            (
                Just(call),
                target(),
                query(),
                proptest::option::weighted(0.3, header_bytes()),
                accept(),
                body(call),
            )
        })
        .prop_map(|(call, target, query, last_event_id, accept, body)| Case {
            call,
            target,
            query,
            last_event_id,
            accept,
            body,
        })
}

// ---- Running a case -----------------------------------------------------------------

/// What `GET /processes/{id}` says, but for the timestamps of a known process.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    body: Value,
}

async fn seen(app: &TestApp, url: &str) -> Result<Seen, TestCaseError> {
    let response = app
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("GET {url} got no answer: {e}")))?;
    let status = response.status().as_u16();
    let mut body: Value = response
        .json()
        .await
        .map_err(|e| TestCaseError::fail(format!("GET {url} answered no JSON: {e}")))?;
    if let Some(process) = body.as_object_mut() {
        process.remove("created_at");
    }
    Ok(Seen { status, body })
}

async fn run_case(app: &TestApp, finished: &str, case: &Case) -> Result<(), TestCaseError> {
    let id = match &case.target {
        Target::Fresh => process_id(),
        Target::Running => {
            let process = process_id();
            app.append_batch(&process, &messages("m", 2)).await;
            process
        }
        Target::Finished => finished.to_owned(),
        Target::Raw(bytes) => encode_segment(bytes),
    };
    let url = reqwest::Url::parse(&app.url(&case.path(&id)))
        .map_err(|e| TestCaseError::fail(format!("test bug, not a URL: {e}")))?;
    // The process as `GET /processes/{id}` names it, through the same URL normalisation.
    let mut show_url = url.clone();
    show_url.set_query(None);
    let show_url = show_url
        .as_str()
        .strip_suffix(case.call.suffix())
        .filter(|_| !case.call.suffix().is_empty())
        .unwrap_or(show_url.as_str())
        .to_owned();
    let before = seen(app, &show_url).await?;

    let mut request = app
        .http
        .request(case.call.method().parse().unwrap(), url.clone());
    if let Some(value) = &case.last_event_id {
        request = request.header("last-event-id", HeaderValue::from_bytes(value).unwrap());
    }
    if let Some(value) = &case.accept {
        request = request.header("accept", HeaderValue::from_bytes(value).unwrap());
    }
    if let Some(body) = &case.body {
        request = request
            .header("content-type", "application/json")
            .body(body.clone());
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .map_err(|_| TestCaseError::fail("no answer within 20 s"))?
        .map_err(|e| TestCaseError::fail(format!("no answer: {e:#}")))?;
    let status = response.status();
    prop_assert!(!status.is_server_error(), "a {} for client input", status);
    prop_assert!(
        status.is_success() || status.is_client_error(),
        "status {}",
        status
    );
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
    if status.is_client_error() {
        prop_assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "a {} error is JSON",
            status
        );
        if case.call.method() != "HEAD" {
            let body = tokio::time::timeout(WAIT, response.bytes())
                .await
                .map_err(|_| TestCaseError::fail("the error body did not come within 20 s"))?
                .map_err(|e| TestCaseError::fail(format!("the error body broke off: {e}")))?;
            let error: Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!(
                    "a {status} body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                ))
            })?;
            let code = error["error"]["code"].as_str().unwrap_or_default();
            let expected = ERROR_CODES
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, s)| *s);
            prop_assert_eq!(
                expected,
                Some(status.as_u16()),
                "code {:?} is in the error table (docs/contract.md) with that status: {}",
                code,
                error
            );
            prop_assert!(
                error["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "the error has a message: {}",
                error
            );
            prop_assert_eq!(error.as_object().map(Map::len), Some(1), "{}", error);
        }
        if case.call.writes() {
            let after = seen(app, &show_url).await?;
            prop_assert_eq!(
                &after,
                &before,
                "a refused write ({}) stores nothing",
                status
            );
        }
    } else {
        let streaming = matches!(
            content_type.as_deref(),
            Some("text/event-stream" | "application/x-ndjson")
        );
        // The viewer's page, for an Accept that ranks HTML first.
        let page = content_type.as_deref() == Some("text/html; charset=utf-8");
        // (HEAD, which GET routes take, gets the page's head, for a process not known
        // yet too: its page waits for the agent to start.)
        prop_assert!(
            !page || (matches!(case.call, Call::Show | Call::OtherMethod("HEAD")) && status == 200),
            "only a process's page is HTML: {} {}",
            case.call.method(),
            status
        );
        // A follow of a running process does not end: dropping it leaves it.
        if !streaming && !page && case.call.method() != "HEAD" && status != 204 {
            let body = tokio::time::timeout(WAIT, response.bytes())
                .await
                .map_err(|_| TestCaseError::fail("the body did not come within 20 s"))?
                .map_err(|e| TestCaseError::fail(format!("the body broke off: {e}")))?;
            prop_assert!(
                serde_json::from_slice::<Value>(&body).is_ok(),
                "a {} answer is JSON: {:?}",
                status,
                String::from_utf8_lossy(&body)
            );
        }
    }

    let health = tokio::time::timeout(WAIT, app.http.get(app.url("/healthz")).send())
        .await
        .map_err(|_| TestCaseError::fail("/healthz did not answer within 20 s"))?
        .map_err(|e| TestCaseError::fail(format!("/healthz got no answer: {e}")))?;
    prop_assert_eq!(health.status(), 200, "the server still answers /healthz");
    Ok(())
}

fn check(backend: Backend, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, finished) = runtime.block_on(async {
        let app = TestApp::spawn_with(backend, |config| {
            config.limits.max_message_bytes = MAX_MESSAGE_BYTES;
            config.limits.max_body_bytes = MAX_BODY_BYTES;
            config.limits.max_batch_messages = MAX_BATCH_MESSAGES;
            config.follow.heartbeat = Duration::from_secs(1);
        })
        .await;
        let finished = process_id();
        app.append(&finished, &messages("m", 1)).await;
        assert_eq!(app.finish(&finished, "succeeded").await.status(), 200);
        (app, finished)
    });
    // PROPTEST_CASES=10000 for a longer hunt.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        runtime.block_on(run_case(&app, &finished, &case))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

mod memory {
    #[test]
    fn random_client_input_gets_a_json_4xx_or_a_success_and_never_a_5xx() {
        super::check(super::Backend::Memory, 128);
    }
}

mod real {
    #[test]
    fn random_client_input_gets_a_json_4xx_or_a_success_and_never_a_5xx() {
        super::check(super::Backend::Real, 96);
    }
}

// ---- Below the router: what the HTTP parser refuses ---------------------------------

/// Checks that `answer` is a 4xx with the contract's JSON error; says what it is if not.
fn json_error_or_why(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<(), String> {
    let error: Option<Value> = serde_json::from_slice(body).ok();
    let shaped = error.as_ref().is_some_and(|e| {
        e["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
            && e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
    });
    if (400..500).contains(&status) && content_type == Some("application/json") && shaped {
        Ok(())
    } else {
        Err(format!(
            "{status}, content-type {content_type:?}, body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_header_limit_gets_a_json_error_too() {
    let app = TestApp::spawn(Backend::Memory).await;
    // The head is limited to --max-header-bytes (64 KiB by default); reqwest itself
    // refuses a URI over 64 KiB, so the long ones here stay under that.
    let long = "a".repeat(70_000);
    let id = "a".repeat(60_000);
    let many = (0..120).fold(app.http.get(app.url("/healthz")), |request, i| {
        request.header(format!("x-field-{i}"), "v")
    });
    let requests = [
        (
            "a 70,000-byte Last-Event-ID",
            app.http
                .get(app.url("/processes/p1/messages"))
                .header("last-event-id", long.as_str()),
        ),
        (
            "a 60,000-character process id and a 6,000-byte Accept",
            app.http
                .get(app.url(&format!("/processes/{id}")))
                .header("accept", "a".repeat(6_000)),
        ),
        (
            "a 60,000-character after= and a 6,000-byte Accept",
            app.http
                .get(app.url(&format!("/processes/p1/messages?after={id}")))
                .header("accept", "a".repeat(6_000)),
        ),
        ("120 header fields", many),
    ];
    let mut failures = Vec::new();
    for (what, request) in requests {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                failures.push(format!(
                    "{what}: no answer ({:?})",
                    error.to_string().chars().take(200).collect::<String>()
                ));
                continue;
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.unwrap_or_default();
        if let Err(why) = json_error_or_why(status, content_type.as_deref(), &body) {
            failures.push(format!("{what}: {why}"));
        }
    }
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        failures.is_empty(),
        "every error is JSON, but:\n{}",
        failures.join("\n")
    );
}

/// Requests no well-behaved client sends (reqwest refuses to), written on the socket.
/// They are not HTTP, so no route sees them: the connection layer answers a bare 400
/// and closes the connection (as docs/contract.md says), and the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_a_400_and_a_closed_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::spawn(Backend::Memory).await;
    let requests: [(&str, &[u8]); 5] = [
        (
            "a control byte in Last-Event-ID",
            b"GET /processes/p1/messages HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 1\x01\r\n\r\n",
        ),
        (
            "a NUL byte in Accept",
            b"GET /processes/p1/messages HTTP/1.1\r\nHost: t\r\nAccept: a\x00b\r\n\r\n",
        ),
        (
            "a raw non-ASCII byte in the process id",
            b"GET /processes/\xff HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (
            "a raw non-ASCII byte in after=",
            b"GET /processes/p1/messages?after=\xff HTTP/1.1\r\nHost: t\r\n\r\n",
        ),
        (
            "a Content-Length that is no number",
            b"POST /processes/p1/messages HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}",
        ),
    ];
    for (what, request) in requests {
        let mut socket = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        socket.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "{what}: the connection is closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{what}: {text}");
    }
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

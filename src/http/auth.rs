//! Who may call what: the middleware in front of every route, and the one place that
//! says which routes need which token ([`needs`]).
//!
//! A token comes from `Authorization: Bearer`, else the `access_token` query parameter
//! (for a browser's `EventSource`, which cannot set headers), else the
//! `agent_stream_token` cookie (reads only: a cookie rides along on requests a browser
//! makes for other sites' pages, so it never authorizes a write). The first one present
//! is the one checked.
//!
//! The check runs before a handler looks the process up, so a caller learns whether a
//! process exists only if its token covers that process: without a token every
//! protected call is a 401, with one that does not cover the process a 403, known or
//! not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};

use super::connections;
use super::error::ApiError;
use super::viewer::{prefers_html, token_page};
use super::AppState;
use crate::auth::config::COOKIE;
use crate::auth::{AuthError, Claims, Grant, Processes, Scope};
use crate::domain::ProcessId;

/// The query parameter a token may come in.
pub const ACCESS_TOKEN: &str = "access_token";

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Nothing: probes for orchestrators and scrapers, which carry no tokens.
    Nothing,
    /// A valid token, whatever it covers. Such a route must itself show only what the
    /// request's [`Grant`] covers (a list of processes, say).
    Token,
    /// A token that grants `Scope` on the route's `{id}`.
    Process(Scope),
    /// A token that grants `Scope` on the process the request's body names (the
    /// worker's webhook): the middleware checks the token, and the handler checks its
    /// [`Grant`] with [`require`] once it has parsed the body, before it stores anything.
    BodyProcess(Scope),
}

/// The rule, by the route's pattern and method. Routes under `/processes/{id}` need a
/// token for that process: `read` to `GET` them, `write` for anything else. The
/// probes and the OpenAPI document are open. The worker's webhook needs a `write` token
/// for the process its body names. Every other route, including any added later, needs
/// a valid token.
/// `/metrics` carries no process ids and is scraped without tokens.
pub fn needs(route: &str, method: &Method) -> Needs {
    match route {
        // The viewer's script and style: the same for everyone, no data in them.
        // The contract's document: the same for everyone, no data in it.
        "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/assets/{name}" => Needs::Nothing,
        route if route == "/processes/{id}" || route.starts_with("/processes/{id}/") => {
            Needs::Process(if method == Method::GET || method == Method::HEAD {
                Scope::Read
            } else {
                Scope::Write
            })
        }
        "/webhooks/messages" => Needs::BodyProcess(Scope::Write),
        _ => Needs::Token,
    }
}

/// The check of a [`Needs::BodyProcess`] route, once its handler knows the process:
/// the same 403 as a `/processes/{id}` route's, and nothing about whether it exists.
pub fn require(grant: &Grant, process: &ProcessId, needed: Scope) -> Result<(), ApiError> {
    if grant.allows(process, needed) {
        Ok(())
    } else {
        Err(forbidden(grant.processes(), grant.scope(), process, needed))
    }
}

/// The middleware: checks the token the route [`needs`], and puts the caller's
/// [`Grant`] on the request for the handler. Without auth (no verifier configured),
/// every request gets [`Grant::unrestricted`], once its `Host` passes
/// [`addressed_to_loopback`] when the server was told to check it (`--no-auth`).
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(verifier) = state.config.auth.clone() else {
        if state.config.only_loopback_hosts && !addressed_to_loopback(&request) {
            return misdirected(&request);
        }
        let mut request = request;
        request.extensions_mut().insert(Grant::unrestricted());
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|matched| matched.as_str().to_owned())
        .unwrap_or_default();
    let needs = needs(&route, &parts.method);
    if needs == Needs::Nothing {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let Some((token, source)) = token(&parts) else {
        return unauthorized(AuthError::Missing, false, &parts);
    };
    let claims = match verifier.verify(&token) {
        Ok(claims) => claims,
        Err(error) => return unauthorized(error, true, &parts),
    };
    if let Needs::Process(scope) = needs {
        match process_id(&mut parts).await {
            Ok(Some(process)) => {
                if !claims.processes.covers(&process) || !claims.scope.includes(scope) {
                    return forbidden(&claims.processes, claims.scope, &process, scope)
                        .into_response();
                }
            }
            // A malformed id matches no claim and tells nothing: the handler answers
            // its 400.
            Ok(None) => {}
            Err(refusal) => return refusal,
        }
    }
    let cookie = (source == Source::Query && wants_html(&parts))
        .then(|| session_cookie(&token, &claims, &parts))
        .flatten();
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(Grant::from(claims));
    let mut response = next.run(request).await;
    if is_follow(&response) {
        let Some(slot) = state.token_follows.take(&token) else {
            // Dropping the follow gives its instance-wide slot back.
            return too_many_follows(state.config.limits.max_follows_per_token);
        };
        response = response.map(|body| connections::hold_until_dropped(body, slot));
    }
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Follows open per token, each at most `max` (`--max-follows-per-token`), so that one
/// token cannot take every one of the instance's follow slots.
pub struct TokenFollows {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One of a token's follows, given back when dropped.
pub struct TokenFollow {
    key: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl TokenFollows {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A follow for `token`, unless it already has `max` open.
    fn take(&self, token: &str) -> Option<TokenFollow> {
        // The signature names the token: an HMAC of everything else in it.
        let key = token.rsplit('.').next().unwrap_or(token).to_owned();
        let mut open = lock(&self.open);
        let count = open.entry(key.clone()).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(TokenFollow {
            key,
            open: self.open.clone(),
        })
    }
}

impl Drop for TokenFollow {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

fn lock(open: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    crate::sync::lock(open)
}

/// Whether `response` streams a follow (SSE or NDJSON).
fn is_follow(response: &Response) -> bool {
    response.status() == StatusCode::OK
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|kind| {
                kind.starts_with("text/event-stream") || kind.starts_with("application/x-ndjson")
            })
}

/// A 429, not a 503: the limit is this token's, and the instance has room for others.
fn too_many_follows(max: usize) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_follows_for_token",
        format!(
            "this token already has {max} follows open on this instance \
            (--max-follows-per-token); close one first"
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The names a loopback server without auth answers to, before any `:port`.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether the request names a loopback host, in its `Host` header and in its URI's
/// authority (HTTP/2's `:authority`, or an absolute-form HTTP/1 target), whichever it
/// carries; a request with neither is not.
///
/// This is what stops DNS rebinding: a web page the developer opens can make the
/// browser resolve the page's own name to 127.0.0.1 and send requests here, but the
/// browser still sends that name as the `Host`.
pub fn addressed_to_loopback<B>(request: &Request<B>) -> bool {
    let authority = request.uri().authority().map(|a| a.as_str());
    let hosts = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|value| value.to_str().ok());
    let mut named = authority.map(Some).into_iter().chain(hosts).peekable();
    named.peek().is_some() && named.all(|host| host.is_some_and(is_loopback_name))
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]` has colons of its own: a port comes only after its `]`.
        Some((name, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    LOOPBACK_NAMES
        .iter()
        .any(|loopback| name.eq_ignore_ascii_case(loopback))
}

/// A 421: this server does not answer for the name the request was sent to.
fn misdirected<B>(request: &Request<B>) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("(none)");
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected_request",
        format!(
            "this server runs without auth (--no-auth) and answers only requests sent to \
                localhost, 127.0.0.1 or [::1], not to {:?}: a web page could otherwise reach it \
                through DNS rebinding. Use one of those names, or run with --auth-secret",
            host.chars().take(64).collect::<String>()
        ),
    )
    .into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Cookie,
}

/// The token of the first source present.
fn token(parts: &Parts) -> Option<(String, Source)> {
    let bearer = parts
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    if let Some(token) = bearer {
        return Some((token, Source::Header));
    }
    if let Some(token) = parts.uri.query().and_then(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find_map(|(name, value)| (name == ACCESS_TOKEN).then_some(value))
    }) {
        return Some((token, Source::Query));
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return None;
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == COOKIE)
        .map(|cookie| (cookie.value().to_owned(), Source::Cookie))
}

/// The route's `{id}` as a process id; `None` when it is not one (a malformed id, or
/// one that is not UTF-8 once percent-decoded).
async fn process_id(parts: &mut Parts) -> Result<Option<ProcessId>, Response> {
    let Ok(params) = RawPathParams::from_request_parts(parts, &()).await else {
        return Ok(None);
    };
    match params.iter().find(|(name, _)| *name == "id") {
        Some((_, raw)) => Ok(ProcessId::parse(raw).ok()),
        // A route that `needs` a process always has an `{id}`; if one ever did not,
        // refuse rather than let it through.
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route names no process to check the token against",
        )
        .into_response()),
    }
}

/// The contract's JSON 401; a browser opening a page gets a page that says how to get a
/// token instead of raw JSON.
fn unauthorized(error: AuthError, presented: bool, parts: &Parts) -> Response {
    let mut response = if parts.method == Method::GET && prefers_html(&parts.headers) {
        token_page(parts.uri.path(), &error.to_string())
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", error.to_string()).into_response()
    };
    // RFC 6750 §3: say which scheme, and whether the token given was the problem.
    let challenge = if presented {
        "Bearer realm=\"agent-stream\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"agent-stream\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// A 403 that says only what the token and the request say: nothing about whether the
/// process exists.
fn forbidden(processes: &Processes, scope: Scope, process: &ProcessId, needed: Scope) -> ApiError {
    let message = if processes.covers(process) {
        format!(
            "this token's scope is {scope}; this call needs a {needed} token for process {process}"
        )
    } else {
        format!("this token does not cover process {process}")
    };
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Whether the request is a browser loading a page.
fn wants_html(parts: &Parts) -> bool {
    parts.method == Method::GET
        && parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.to_ascii_lowercase().contains("text/html"))
}

/// A page opened with `?access_token=` hands the token to the browser as a cookie, so
/// that the page's `EventSource` (same origin) carries it without the token in its
/// URL. HttpOnly (scripts cannot read it), SameSite=Strict (other sites' pages cannot
/// send it), for as long as the token is valid; Secure when the proxy in front says
/// the request came over HTTPS.
fn session_cookie(token: &str, claims: &Claims, parts: &Parts) -> Option<HeaderValue> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let lifetime = claims.exp.saturating_sub(now).min(i64::MAX as u64) as i64;
    let https = parts
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = Cookie::build((COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(https)
        .max_age(cookie::time::Duration::seconds(lifetime))
        .build();
    // A verified JWT is base64url and dots, so this is always a valid header value.
    HeaderValue::from_str(&cookie.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_the_no_auth_host_check() {
        let with_host = |host: &str| {
            axum::http::Request::builder()
                .uri("/healthz")
                .header(header::HOST, host)
                .body(())
                .unwrap()
        };
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(addressed_to_loopback(&with_host(host)), "{host}");
        }
        for host in [
            "rebind.attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "127.0.0.2",
            "[::1]x",
            "localhost:80:80",
            "",
        ] {
            assert!(!addressed_to_loopback(&with_host(host)), "{host}");
        }
        let no_host = axum::http::Request::builder()
            .uri("/healthz")
            .body(())
            .unwrap();
        assert!(!addressed_to_loopback(&no_host));
        let absolute = axum::http::Request::builder()
            .uri("http://rebind.attacker.example/healthz")
            .header(header::HOST, "localhost")
            .body(())
            .unwrap();
        assert!(!addressed_to_loopback(&absolute));
    }

    #[test]
    fn process_routes_need_read_to_get_and_write_for_the_rest_and_probes_are_open() {
        assert_eq!(needs("/healthz", &Method::GET), Needs::Nothing);
        assert_eq!(needs("/readyz", &Method::GET), Needs::Nothing);
        assert_eq!(needs("/assets/{name}", &Method::GET), Needs::Nothing);
        assert_eq!(needs("/openapi.json", &Method::GET), Needs::Nothing);
        assert_eq!(
            needs("/processes/{id}", &Method::GET),
            Needs::Process(Scope::Read)
        );
        assert_eq!(
            needs("/processes/{id}/messages/stream", &Method::GET),
            Needs::Process(Scope::Read)
        );
        assert_eq!(
            needs("/processes/{id}", &Method::PUT),
            Needs::Process(Scope::Write)
        );
        assert_eq!(
            needs("/processes/{id}/messages", &Method::POST),
            Needs::Process(Scope::Write)
        );
        assert_eq!(
            needs("/processes/{id}/finish", &Method::POST),
            Needs::Process(Scope::Write)
        );
        assert_eq!(needs("/", &Method::GET), Needs::Token);
        assert_eq!(needs("/processes", &Method::GET), Needs::Token);
        assert_eq!(
            needs("/webhooks/messages", &Method::POST),
            Needs::BodyProcess(Scope::Write)
        );
    }
}

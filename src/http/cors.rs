//! CORS: which other origins' pages a browser lets call the API (`--allow-origin`).
//!
//! A UI at `https://app.example.com` that follows `https://stream.example.com` directly
//! makes cross-origin requests: `fetch` with `Authorization` (which a browser first
//! asks about in a preflight `OPTIONS`), or an `EventSource` with the token in
//! `access_token` and, on reconnect, `Last-Event-ID`. The browser shows the page an
//! answer only if the response names the page's origin.
//!
//! Origins are listed exactly (scheme, host, port): never `*`, and no credentials
//! (cookies) are allowed across origins, so a listed page authenticates with a token it
//! holds, and a page not listed gets nothing it could read. With no origin listed (the
//! default) no CORS header is sent at all and only same-origin pages can read answers.

use std::time::Duration;

use axum::http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// Request headers a cross-origin page may send: the token, the SSE cursor, and what a
/// writer or a format choice needs, and a poller's snapshot tag.
const ALLOWED_HEADERS: [HeaderName; 5] = [
    AUTHORIZATION,
    HeaderName::from_static("last-event-id"),
    CONTENT_TYPE,
    ACCEPT,
    IF_NONE_MATCH,
];

/// Response headers a cross-origin page may read beyond the safelisted ones
/// (`Content-Type`, `Cache-Control`, …): when to retry a 503, why a 401, and the
/// request's id to quote in a report, and a snapshot's tag for a poller to send back.
const EXPOSED_HEADERS: [HeaderName; 4] = [
    ETAG,
    RETRY_AFTER,
    WWW_AUTHENTICATE,
    HeaderName::from_static("x-request-id"),
];

/// Checks that `origin` is one exact origin as a browser sends it in `Origin`:
/// `http` or `https`, a host, an optional port, and nothing after (no path, not even
/// `/`, which would never match).
pub fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let explain = |why: &str| {
        format!(
            "{origin:?} is not an origin ({why}); write it as the browser's address bar shows \
            it, without path, e.g. https://app.example.com or http://localhost:3000"
        )
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| explain("it must start with http:// or https://"))?;
    if rest.is_empty() {
        return Err(explain("no host"));
    }
    if rest.contains(['/', '?', '#', '@', '*']) || rest.chars().any(|c| c.is_whitespace()) {
        return Err(explain("only scheme, host and port"));
    }
    if let Some((_, port)) = rest.rsplit_once(':').filter(|_| !rest.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(explain("the port must be a number up to 65535"));
        }
    }
    HeaderValue::from_str(origin).map_err(|_| explain("not a valid header value"))
}

/// The layer for these origins; `None` without any, so that no CORS header is sent.
pub fn layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT])
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_origin;

    #[test]
    fn an_origin_is_a_scheme_a_host_and_maybe_a_port_and_nothing_else() {
        for good in [
            "https://app.example.com",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
            "http://[::1]",
        ] {
            assert!(parse_origin(good).is_ok(), "{good} should be an origin");
        }
        for bad in [
            "*",
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/ui",
            "https://*.example.com",
            "https://",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "http://localhost:99999",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} should be refused");
        }
    }
}

//! The live web viewer: `GET /` lists the processes last active, and `GET /processes/{id}`
//! asked for by a browser (`Accept` ranking `text/html` above JSON) shows one process as a
//! timeline that follows it over SSE. API clients (`application/json`, `*/*`, no `Accept`)
//! keep getting the process's JSON.
//!
//! The pages are static shells with no data in them: the script (`viewer/viewer.js`)
//! fetches everything through the JSON and SSE calls and builds the DOM with text nodes
//! only, so no message content is ever parsed as HTML, and a strict Content-Security-Policy
//! allows nothing but this service's own script and style. The assets are embedded in the
//! binary: nothing is fetched from elsewhere, so the viewer works offline.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::compression;
use super::error::{ApiError, ErrorBody};
use super::extract::ProcessPath;
use super::openapi::{AssetName, ProcessIdParam, Refusals};
use super::processes::{self, ProcessView};
use super::AppState;

const INDEX_PAGE: &str = include_str!("viewer/index.html");
const PROCESS_PAGE: &str = include_str!("viewer/process.html");
/// What a browser gets instead of a 401's JSON: how to get a token. `{root}` (the way
/// back to `/` from the page, for its stylesheet), `{path}` and `{reason}` are filled in.
const TOKEN_PAGE: &str = include_str!("viewer/token.html");

/// Nothing but this service's own script, style and calls; no frames, no forms, no base.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// A static asset, with the ETag of its content.
struct Asset {
    content_type: &'static str,
    body: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(content_type: &'static str, body: &'static str) -> Self {
        let mut hasher = DefaultHasher::new();
        body.hash(&mut hasher);
        let etag = HeaderValue::try_from(format!("\"{:016x}\"", hasher.finish()))
            .expect("a hex ETag is a valid header value");
        Self {
            content_type,
            body,
            etag,
        }
    }
}

static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "text/javascript; charset=utf-8",
        include_str!("viewer/viewer.js"),
    )
});
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/css; charset=utf-8", include_str!("viewer/viewer.css")));

/// `GET /`: the list of recent processes.
#[utoipa::path(
    get,
    path = "/",
    tag = "viewer",
    summary = "The viewer: recent processes",
    description = "An HTML page that lists the processes last active (it reads `GET /processes`). \
        Opened without a token, a browser gets a page that says how to get one.",
    responses(
        (status = 200, description = "The page.", body = String,
            content_type = "text/html; charset=utf-8"),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
pub async fn index() -> Response {
    page(StatusCode::OK, INDEX_PAGE)
}

/// `GET /processes/{id}`: the viewer for a browser, the process's JSON for anyone else.
/// A process not known yet gets the page (which waits for its agent to start) but the
/// contract's JSON 404 for its record.
#[utoipa::path(
    get,
    path = "/processes/{id}",
    tag = "processes",
    operation_id = "show_process",
    summary = "A process and its status",
    description = "The process's JSON; a browser (`Accept` ranking `text/html` above \
        `application/json`) gets the viewer's page, which follows the process live. `Vary: \
        Accept`.",
    params(ProcessIdParam),
    responses(
        (status = 200, description = "The process (JSON), or the viewer's page (HTML).", content(
            (ProcessView = "application/json"),
            (String = "text/html; charset=utf-8"),
        )),
        (status = 400, description = "Malformed process id.", body = ErrorBody),
        (status = 404, description = "No such process (`process_not_found`).", body = ErrorBody),
        Refusals,
    ),
    security(("bearer" = []), ("access_token" = []), ("cookie" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    ProcessPath(process): ProcessPath,
    headers: HeaderMap,
) -> Response {
    let mut response = if prefers_html(&headers) {
        // Served for a process not known yet too: the page waits for its agent to start.
        page(StatusCode::OK, PROCESS_PAGE)
    } else {
        processes::show(State(state), ProcessPath(process))
            .await
            .into_response()
    };
    // One URL, two representations: caches must key on Accept.
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// `GET /assets/{name}`: the viewer's script and style, revalidated by ETag.
#[utoipa::path(
    get,
    path = "/assets/{name}",
    tag = "viewer",
    summary = "The viewer's script and style",
    params(
        ("name" = inline(AssetName), Path,
            description = "`viewer.js` or `viewer.css`; any other name is a 404."),
        ("If-None-Match" = Option<String>, Header,
            description = "An ETag seen before: 304 when it still matches."),
    ),
    responses(
        (status = 200, description = "The asset, with its `ETag`.", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
        )),
        (status = 304, description = "Not modified since the ETag given."),
        (status = 404, description = "No such asset.", body = ErrorBody),
        (status = 431, description = "The request head is too large.", body = ErrorBody),
        (status = 503, description = "The call took too long.", body = ErrorBody),
    ),
    security(()),
)]
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let asset: &Asset = match name.as_str() {
        "viewer.js" => &SCRIPT,
        "viewer.css" => &STYLE,
        _ => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such asset; the viewer has viewer.js and viewer.css",
            )
            .into_response()
        }
    };
    // Weakly: a compressed answer carried the tag as `W/"…"`.
    let matched = asset
        .etag
        .to_str()
        .ok()
        .and_then(|etag| compression::matching_tag(&headers, etag));
    let cached = matched.is_some();
    let status = if cached {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    // A 304 names the copy the client holds.
    let etag = matched
        .filter(|tag| *tag != "*")
        .and_then(|tag| HeaderValue::from_str(tag).ok())
        .unwrap_or_else(|| asset.etag.clone());
    let headers = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if cached {
        (status, headers).into_response()
    } else {
        (
            status,
            headers,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    }
}

/// The 401 of a page opened without a (valid) token: how to get one, and why this one
/// was refused.
pub fn token_page(path: &str, reason: &str) -> Response {
    let depth = path.matches('/').count().saturating_sub(1);
    let fields = [
        ("{root}", "../".repeat(depth)),
        ("{path}", escape_html(path)),
        ("{reason}", escape_html(&capitalized(reason))),
    ];
    // One pass over the template: a value is never searched for the other fields.
    let mut body = String::with_capacity(TOKEN_PAGE.len() + 256);
    let mut rest = TOKEN_PAGE;
    while let Some(start) = rest.find('{') {
        body.push_str(&rest[..start]);
        rest = &rest[start..];
        match fields.iter().find(|(name, _)| rest.starts_with(name)) {
            Some((name, value)) => {
                body.push_str(value);
                rest = &rest[name.len()..];
            }
            None => {
                body.push('{');
                rest = &rest[1..];
            }
        }
    }
    body.push_str(rest);
    page(StatusCode::UNAUTHORIZED, body)
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `no token given` as a sentence: `No token given.`
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    let mut sentence: String = chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    if !sentence.ends_with('.') {
        sentence.push('.');
    }
    sentence
}

/// An HTML page with the headers that keep it to its own assets. `no-referrer` keeps an
/// `access_token` in the page's URL from leaving in a Referer.
fn page(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body.into(),
    )
        .into_response()
}

/// Whether `Accept` ranks `text/html` above `application/json`, each taking the `q` of
/// its most specific matching range (RFC 9110 §12.5.1). A browser's
/// `text/html,…,*/*;q=0.8` does; `*/*`, `application/json` and no `Accept` do not.
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let ranges: Vec<(&str, f32)> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim();
            let q = parts
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok())?;
            Some((media, q.clamp(0.0, 1.0)))
        })
        .collect();
    let quality = |kind: &str, subtype: &str| {
        ranges
            .iter()
            .filter_map(|&(media, q)| {
                let (t, s) = media.split_once('/')?;
                let specificity = match (t.trim(), s.trim()) {
                    (t, s) if t.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => 2,
                    (t, "*") if t.eq_ignore_ascii_case(kind) => 1,
                    ("*", "*") => 0,
                    _ => return None,
                };
                Some((specificity, q))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .map_or(0.0, |(_, q)| q)
    };
    quality("text", "html") > quality("application", "json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_get_the_page_and_api_clients_the_json() {
        for browser in [
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
            "text/html",
            "TEXT/HTML;q=0.5, application/json;q=0.4",
            "text/*",
            "application/json;q=0, */*",
        ] {
            assert!(prefers_html(&accept(browser)), "{browser}");
        }
        for client in [
            "*/*",
            "application/json",
            "application/json, text/html",
            "text/html;q=0.5, application/json",
            "text/html;q=0, */*",
            "text/html;q=oops",
            "text/event-stream",
            ",;,",
            "",
        ] {
            assert!(!prefers_html(&accept(client)), "{client}");
        }
        assert!(!prefers_html(&HeaderMap::new()), "no Accept");
    }
}

//! `agent-stream tail PROCESS`: follows a process of a running server in the terminal,
//! like `tail -f`. It is an HTTP client of the NDJSON follow
//! (`GET /processes/{id}/messages/stream`): it prints one line per message
//! ([`format`]), or the messages' JSON with `--json`, and exits with the process's
//! status when the end line comes.
//!
//! It remembers the stream ID of the last message it printed. When the connection
//! drops (the server restarts, a proxy cuts it, the network goes away) or the server
//! answers 5xx, it asks again with `?after=<that ID>` after a short backoff, so it
//! prints every message once and in order however often it has to reconnect: the
//! contract's cursor does the work. Only whole lines count; a line cut by the drop is
//! asked for again.
//!
//! A server it has never reached is another matter: a wrong `--url` or a server not
//! started yet. It says so and exits at once, unless `--wait` asks it to wait for the
//! server to come up.

pub mod format;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use reqwest::{header, StatusCode, Url};
use serde_json::Value;
use tokio::time::Instant;

use crate::domain::{ProcessId, StreamId};

/// Exit status when the process ended `succeeded`.
pub const EXIT_SUCCEEDED: u8 = 0;
/// Exit status when the process ended with any other status (`failed`, `cancelled`, …).
pub const EXIT_OTHER_STATUS: u8 = 1;
/// Exit status when the process could not be followed: bad arguments, a refusal by the
/// server (bad token, …), a server never reached (without `--wait`), or one unreachable
/// for `--retry-for`. (A process not known yet is waited for: its agent may not have
/// started.)
pub const EXIT_CANNOT_FOLLOW: u8 = 2;

/// First wait before reconnecting; it doubles on each failure in a row…
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// …up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A follow that sends nothing, not even a heartbeat (every 15 s by default), for this
/// long is taken as dropped.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Line width when stdout is not a terminal.
const PIPE_WIDTH: usize = 220;

#[derive(Debug, Args)]
#[command(after_help = "\
Exit status: 0 when the process ends `succeeded`, 1 when it ends with any other status \
(`failed`, `cancelled`, …), 2 when it cannot be followed (bad arguments, the server \
refuses: bad token, …, the server cannot be reached at all (without --wait), or it stays \
unreachable for --retry-for). A process not known yet is waited for, as its agent may not \
have started.")]
pub struct TailArgs {
    /// The process to follow.
    pub process: String,

    /// Base URL of the agent-stream server.
    #[arg(
        long,
        env = "AGENT_STREAM_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,

    /// Bearer token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "AGENT_STREAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Start after this stream ID: `0` (the default) shows the whole history first,
    /// `41-0` starts at message 42.
    #[arg(long, default_value = "0")]
    pub from: String,

    /// Print each message's JSON as the server sent it, one per line, instead of a
    /// readable line (the end is not printed: it is the exit status).
    #[arg(long)]
    pub json: bool,

    /// Once a follow has been cut (or, with --wait, before the first), give up (exit 2)
    /// when the server stays unreachable this long, e.g. `30s`, `1h`.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,

    /// Wait (up to --retry-for) for a server that cannot be reached yet, instead of
    /// exiting at once: for a server that is still starting.
    #[arg(long)]
    pub wait: bool,
}

/// Follows the process until its end; prints what goes wrong on stderr.
pub async fn run(args: TailArgs) -> ExitCode {
    match follow(&args).await {
        Ok(Outcome::Ended { status }) if status == "succeeded" => ExitCode::from(EXIT_SUCCEEDED),
        Ok(Outcome::Ended { .. }) => ExitCode::from(EXIT_OTHER_STATUS),
        // Whoever read our output (`| head`) has what they wanted.
        Ok(Outcome::OutputClosed) => ExitCode::from(EXIT_SUCCEEDED),
        Err(error) => {
            eprintln!("error: {}", crate::report::one_line(&error));
            ExitCode::from(EXIT_CANNOT_FOLLOW)
        }
    }
}

enum Outcome {
    Ended { status: String },
    OutputClosed,
}

/// What one request of the follow came to.
enum Attempt {
    Ended {
        status: String,
    },
    OutputClosed,
    /// Worth asking again: the connection failed or dropped, or the server had a
    /// passing problem. `connected` when the follow had started streaming, `reached`
    /// when the server answered at all.
    Dropped {
        connected: bool,
        reached: bool,
        reason: String,
    },
}

async fn follow(args: &TailArgs) -> anyhow::Result<Outcome> {
    let process = ProcessId::parse(&args.process)?;
    let mut after = StreamId::parse(&args.from).context("--from")?;
    let base = Url::parse(&args.url).with_context(|| format!("--url {:?}", args.url))?;
    anyhow::ensure!(
        matches!(base.scheme(), "http" | "https"),
        "--url must be an http:// or https:// URL, not {:?}",
        args.url
    );
    let endpoint = format!(
        "{}/processes/{process}/messages/stream",
        base.as_str().trim_end_matches('/')
    );
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .context("could not set up the HTTP client")?;
    let mut output = Output::new(args.json);
    let mut backoff = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    let mut ever_reached = false;
    loop {
        let mut request = client
            .get(&endpoint)
            .query(&[("after", after.to_string())])
            .header(header::ACCEPT, "application/x-ndjson");
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        match attempt(request, &process, args, &mut after, &mut output).await? {
            Attempt::Ended { status } => return Ok(Outcome::Ended { status }),
            Attempt::OutputClosed => return Ok(Outcome::OutputClosed),
            Attempt::Dropped {
                connected,
                reached,
                reason,
            } => {
                ever_reached |= reached;
                if !ever_reached && !args.wait {
                    bail!(
                        "{reason}. Is the server running there? Check --url (or \
                        AGENT_STREAM_URL), or pass --wait to wait for it to start"
                    );
                }
                if connected {
                    backoff = FIRST_BACKOFF;
                    failing_since = None;
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= args.retry_for {
                    bail!(
                        "gave up after {}: {reason}",
                        humantime::format_duration(args.retry_for)
                    );
                }
                eprintln!(
                    "agent-stream tail: {reason}; reconnecting in {} to resume after {after}…",
                    humantime::format_duration(backoff)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One request: prints what it brings after `after`, moving `after` along.
async fn attempt(
    request: reqwest::RequestBuilder,
    process: &ProcessId,
    args: &TailArgs,
    after: &mut StreamId,
    output: &mut Output,
) -> anyhow::Result<Attempt> {
    let response = match tokio::time::timeout(SILENCE_TIMEOUT, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return Ok(Attempt::Dropped {
                connected: false,
                reached: false,
                reason: format!("could not reach {}: {}", args.url, root_cause(&error)),
            })
        }
        Err(_) => {
            return Ok(Attempt::Dropped {
                connected: false,
                reached: false,
                reason: format!("{} did not answer in {SILENCE_TIMEOUT:?}", args.url),
            })
        }
    };
    let status = response.status();
    if status != StatusCode::OK {
        let message = error_message(response).await;
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Ok(Attempt::Dropped {
                connected: false,
                reached: true,
                reason: format!("the server answered {status}: {message}"),
            });
        }
        bail!("{}", refusal(status, &message, process, args));
    }

    let mut body = response.bytes_stream();
    let mut lines = Lines::default();
    loop {
        let chunk = match tokio::time::timeout(SILENCE_TIMEOUT, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(error))) => {
                return Ok(Attempt::Dropped {
                    connected: true,
                    reached: true,
                    reason: format!("the follow broke off: {}", root_cause(&error)),
                })
            }
            Ok(None) => {
                return Ok(Attempt::Dropped {
                    connected: true,
                    reached: true,
                    reason: "the server ended the follow before the process's end".into(),
                })
            }
            Err(_) => {
                return Ok(Attempt::Dropped {
                    connected: true,
                    reached: true,
                    reason: format!("nothing came for {SILENCE_TIMEOUT:?}, not even a heartbeat"),
                })
            }
        };
        lines.extend(&chunk);
        while let Some(line) = lines.next_line() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // a heartbeat
            }
            let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                // A line this client cannot parse (JSON stored before the server
                // refused what common parsers cannot read back, say) is shown as it
                // came, and the follow goes on.
                let stream_id = raw_stream_id(&line);
                if stream_id.as_ref().is_some_and(|id| id <= after) {
                    continue; // already printed: never twice
                }
                if !output.raw(&line, stream_id.as_ref()) {
                    return Ok(Attempt::OutputClosed);
                }
                if let Some(stream_id) = stream_id {
                    *after = stream_id;
                }
                continue;
            };
            if value["event"] == "end" {
                let status = value["status"].as_str().unwrap_or("unknown").to_owned();
                let stream_id = value["stream_id"].as_str().unwrap_or("?");
                if !output.end(&status, stream_id) {
                    return Ok(Attempt::OutputClosed);
                }
                return Ok(Attempt::Ended { status });
            }
            let stream_id = value["stream_id"]
                .as_str()
                .and_then(|raw| StreamId::parse(raw).ok())
                .with_context(|| {
                    format!(
                        "the server sent a message without a stream ID: {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    )
                })?;
            if stream_id <= *after {
                continue; // already printed: never twice
            }
            if !output.message(&line, &value) {
                return Ok(Attempt::OutputClosed);
            }
            *after = stream_id;
        }
    }
}

/// The stream ID of a message line that does not parse, read from the service's own
/// field, which the wire JSON writes last but one: `…,"stream_id":"42-0","created_at":…}`.
fn raw_stream_id(line: &[u8]) -> Option<StreamId> {
    const FIELD: &[u8] = b"\"stream_id\":\"";
    let at = line
        .windows(FIELD.len())
        .rposition(|window| window == FIELD)?
        + FIELD.len();
    let len = line[at..].iter().position(|&b| b == b'"')?;
    StreamId::parse(std::str::from_utf8(&line[at..at + len]).ok()?).ok()
}

/// A clear sentence for a 4xx that asking again would not change.
fn refusal(status: StatusCode, message: &str, process: &ProcessId, args: &TailArgs) -> String {
    match status {
        StatusCode::UNAUTHORIZED if args.token.is_none() => format!(
            "the server wants a token ({message}): pass it with --token or AGENT_STREAM_TOKEN"
        ),
        StatusCode::UNAUTHORIZED => format!("the server did not accept the token: {message}"),
        StatusCode::FORBIDDEN => {
            format!("the token does not allow following process {process}: {message}")
        }
        StatusCode::NOT_FOUND => format!("{message} (at {})", args.url),
        _ => format!("the server refused the follow ({status}): {message}"),
    }
}

/// The `message` of the contract's JSON error, or the start of whatever body came.
async fn error_message(response: reqwest::Response) -> String {
    let body = response.bytes().await.unwrap_or_default();
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|error| error["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            if text.trim().is_empty() {
                "no details".to_owned()
            } else {
                text.trim().to_owned()
            }
        })
}

/// reqwest's own message names the URL; the innermost cause says what went wrong
/// (`Connection refused`, `connection reset`, …).
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Splits a byte stream into whole lines; a partial last line waits for the rest.
#[derive(Default)]
struct Lines {
    buffer: Vec<u8>,
    /// Bytes of `buffer` known to hold no `\n`: a long line arriving in many chunks is
    /// scanned once.
    scanned: usize,
}

impl Lines {
    fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole line, without its `\n`.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let Some(at) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = self.buffer.len();
            return None;
        };
        let mut line: Vec<u8> = self.buffer.drain(..=self.scanned + at).collect();
        line.pop();
        self.scanned = 0;
        Some(line)
    }
}

/// stdout: raw JSON, or readable lines (coloured on a terminal unless `NO_COLOR`).
struct Output {
    json: bool,
    colour: bool,
    stdout: std::io::Stdout,
}

impl Output {
    fn new(json: bool) -> Self {
        let stdout = std::io::stdout();
        let colour = stdout.is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
        Self {
            json,
            colour,
            stdout,
        }
    }

    fn width(&self) -> usize {
        terminal_size::terminal_size_of(&self.stdout)
            .map_or(PIPE_WIDTH, |(width, _)| usize::from(width.0))
    }

    /// Prints a message; `false` when stdout is closed.
    fn message(&mut self, raw: &[u8], value: &Value) -> bool {
        if self.json {
            let mut out = self.stdout.lock();
            return out
                .write_all(raw)
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
                .is_ok();
        }
        let line = format::message(value).render(self.width(), self.colour);
        self.print(&line)
    }

    /// Prints a line that does not parse as it came (lossy UTF-8); `false` when stdout
    /// is closed.
    fn raw(&mut self, line: &[u8], stream_id: Option<&StreamId>) -> bool {
        let text = String::from_utf8_lossy(line);
        if self.json {
            return self.print(&text);
        }
        let mut line = format::unparsed(&text);
        if let Some(stream_id) = stream_id {
            line.stream_id = stream_id.to_string();
        }
        let line = line.render(self.width(), self.colour);
        self.print(&line)
    }

    /// Prints the end (readable output only); `false` when stdout is closed.
    fn end(&mut self, status: &str, stream_id: &str) -> bool {
        if self.json {
            return true;
        }
        let line = format::end(status, stream_id).render(self.width(), self.colour);
        self.print(&line)
    }

    fn print(&mut self, line: &str) -> bool {
        let mut out = self.stdout.lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn a_line_cut_by_a_drop_is_never_taken_for_a_whole_one() {
        let mut lines = Lines::default();
        lines.extend(b"{\"a\":1}\n\n{\"b\":");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lines.next_line().as_deref(), Some(&b""[..]));
        assert_eq!(lines.next_line(), None, "half a line waits for the rest");
        lines.extend(b"2}\n");
        assert_eq!(lines.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(lines.next_line(), None);
    }
}

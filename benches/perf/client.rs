//! The lean HTTP/1.1 client: keep-alive calls, response heads, chunked bodies decoded
//! by hand.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one HTTP call of the lean client.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn io_error(text: impl Into<String>) -> io::Error {
    io::Error::other(text.into())
}

pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

/// Reads a response head into `buf` and parses it; the bytes after it stay in `buf`.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Head> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io_error(format!("bad status line in {text:?}")))?;
            let (mut chunked, mut content_length) = (false, None);
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if name == "content-length" {
                    content_length = value.parse().ok();
                }
            }
            return Ok(Head {
                status,
                chunked,
                content_length,
            });
        }
        if buf.len() > 64 * 1024 {
            return Err(io_error("response head over 64 KiB"));
        }
        reserve(buf);
        if stream.read_buf(buf).await? == 0 {
            return Err(io_error(CLOSED_BEFORE_HEAD));
        }
    }
}

pub const CLOSED_BEFORE_HEAD: &str = "connection closed before the response head";

pub fn reserve(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(8192);
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
pub struct Chunked {
    pub state: ChunkState,
}

impl Chunked {
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Moves the payload bytes of `raw` to `out`, leaving in `raw` what is incomplete.
    pub fn decode(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(i) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&raw[pos..pos + i])
                        .map_err(|_| io_error("chunk size is not text"))?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| io_error(format!("bad chunk size {line:?}")))?;
                    pos += i + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(raw.len() - pos);
                    out.extend_from_slice(&raw[pos..pos + take]);
                    pos += take;
                    if take < left {
                        self.state = ChunkState::Data(left - take);
                        break;
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd | ChunkState::Trailer => {
                    if raw.len() - pos < 2 {
                        break;
                    }
                    if &raw[pos..pos + 2] != b"\r\n" {
                        return Err(io_error("chunk not followed by CRLF (or a trailer)"));
                    }
                    pos += 2;
                    self.state = if self.state == ChunkState::Trailer {
                        ChunkState::Done
                    } else {
                        ChunkState::Size
                    };
                }
                ChunkState::Done => break,
            }
        }
        raw.drain(..pos);
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection for plain calls. The server closes a keep-alive
/// connection that stays idle past `--header-read-timeout`: a call that finds it closed
/// before any answer is sent again once on a new connection (appends carry ids, so a
/// resend stores nothing twice).
pub struct Conn {
    pub port: u16,
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

pub async fn connect(port: u16) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| io_error("connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Conn {
    pub async fn open(port: u16) -> io::Result<Self> {
        Ok(Self {
            port,
            stream: connect(port).await?,
            buf: Vec::with_capacity(4096),
        })
    }

    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let answer = tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| io_error(format!("{method} {path}: no answer in {CALL_TIMEOUT:?}")))?;
        match answer {
            Err(e) if e.to_string().contains(CLOSED_BEFORE_HEAD) => {
                self.stream = connect(self.port).await?;
                self.buf.clear();
                tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body))
                    .await
                    .map_err(|_| {
                        io_error(format!("{method} {path}: no answer in {CALL_TIMEOUT:?}"))
                    })?
            }
            answer => answer,
        }
    }

    pub async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let mut request = Vec::with_capacity(body.len() + 160);
        request.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes(),
        );
        if method != "GET" {
            request.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        let head = read_head(&mut self.stream, &mut self.buf).await?;
        let mut out = Vec::new();
        if head.chunked {
            let mut chunked = Chunked::default();
            loop {
                chunked.decode(&mut self.buf, &mut out)?;
                if chunked.done() {
                    break;
                }
                reserve(&mut self.buf);
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io_error("connection closed mid-body"));
                }
            }
        } else {
            let length = head.content_length.unwrap_or(0);
            while self.buf.len() < length {
                reserve(&mut self.buf);
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(io_error("connection closed mid-body"));
                }
            }
            out.extend(self.buf.drain(..length));
        }
        Ok((head.status, out))
    }

    /// Appends to agent-stream's process; the seq of the (last) message stored.
    pub async fn append(&mut self, process: &str, body: &[u8]) -> Result<u64, String> {
        self.append_at(&Routes::AgentStream.append(process), body)
            .await
    }

    /// `POST path` with a message or an array of them; the seq of the (last) one stored.
    pub async fn append_at(&mut self, path: &str, body: &[u8]) -> Result<u64, String> {
        let (status, answer) = self
            .call("POST", path, body)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        if status != 201 && status != 200 {
            return Err(format!(
                "POST {path}: {status} {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        last_stream_seq(&answer).ok_or_else(|| {
            format!(
                "POST {path}: no stream_id in {}",
                String::from_utf8_lossy(&answer)
            )
        })
    }

    /// Registers agent-stream's process.
    pub async fn put(&mut self, process: &str) -> Result<(), String> {
        self.put_at(&Routes::AgentStream.register(process)).await
    }

    /// `PUT path`: 201 or 200.
    pub async fn put_at(&mut self, path: &str) -> Result<(), String> {
        match self.call("PUT", path, b"").await {
            Ok((201 | 200, _)) => Ok(()),
            Ok((status, body)) => Err(format!(
                "PUT {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
            Err(e) => Err(format!("PUT {path}: {e}")),
        }
    }

    /// Finishes agent-stream's process; its last seq (from `last_stream_id`).
    pub async fn finish(&mut self, process: &str) -> Result<u64, String> {
        self.finish_at(&Routes::AgentStream.finish(process)).await
    }

    /// `POST path` with `{"status":"succeeded"}`; the last seq (from `last_stream_id`).
    pub async fn finish_at(&mut self, path: &str) -> Result<u64, String> {
        let (status, body) = self
            .call("POST", path, br#"{"status":"succeeded"}"#)
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match (status, value["last_stream_id"].as_str()) {
            (200, Some(id)) => id
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("POST {path}: last_stream_id {id:?}")),
            _ => Err(format!(
                "POST {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}

/// Where a stream's calls go: agent-stream's routes, or those of the peer's server
/// (`peer/server.mjs`), which answer alike.
#[derive(Debug, Clone, Copy)]
pub enum Routes {
    AgentStream,
    Peer,
}

impl Routes {
    pub fn register(self, name: &str) -> String {
        match self {
            Routes::AgentStream => format!("/processes/{name}"),
            Routes::Peer => format!("/streams/{name}"),
        }
    }

    pub fn append(self, name: &str) -> String {
        match self {
            Routes::AgentStream => format!("/processes/{name}/messages"),
            Routes::Peer => format!("/streams/{name}/events"),
        }
    }

    /// The SSE follow.
    pub fn follow(self, name: &str) -> String {
        match self {
            Routes::AgentStream => format!("/processes/{name}/messages"),
            Routes::Peer => format!("/streams/{name}"),
        }
    }

    pub fn finish(self, name: &str) -> String {
        match self {
            Routes::AgentStream => format!("/processes/{name}/finish"),
            Routes::Peer => format!("/streams/{name}/finish"),
        }
    }
}

/// The seq of the last `"stream_id":"N-0"` in an append's answer.
pub fn last_stream_seq(answer: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(answer).ok()?;
    let at = text.rfind("\"stream_id\":\"")? + "\"stream_id\":\"".len();
    text[at..].split('-').next()?.parse().ok()
}

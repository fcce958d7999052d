//! One readable line per message, for `agent-stream tail`: the stream ID, a label for
//! what the agent did, and a one-line summary of it. Pure functions of the message JSON,
//! so the look of a session is tested without a server.
//!
//! Messages are the Claude Code SDK's (`AssistantMessage`, `UserMessage`,
//! `SystemMessage`, `ResultMessage`) as the agent sends them. Their content blocks are
//! recognised by their `type` when they carry one (`text`, `thinking`, `tool_use`,
//! `tool_result`, as in the Anthropic API) and by their shape when they do not (the
//! Python SDK's dataclasses serialise without it): `text`, `thinking`, `name` +
//! `input`, `tool_use_id`. Anything else is shown as its type and compact JSON.

use anstyle::{AnsiColor, Style};
use serde_json::Value;

/// How a line is coloured on a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    /// Thinking and other asides.
    Quiet,
    Tool,
    User,
    System,
    Ok,
    Error,
}

impl Tone {
    fn style(self) -> Style {
        match self {
            Tone::Plain => Style::new().bold(),
            Tone::Quiet => Style::new().dimmed().italic(),
            Tone::Tool => AnsiColor::Cyan.on_default(),
            Tone::User => AnsiColor::Blue.on_default(),
            Tone::System => AnsiColor::Magenta.on_default(),
            Tone::Ok => AnsiColor::Green.on_default(),
            Tone::Error => AnsiColor::Red.on_default().bold(),
        }
    }
}

/// One message (or the end), ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub stream_id: String,
    pub label: String,
    pub tone: Tone,
    pub text: String,
}

/// Width of the stream ID column (`12345-0` fits).
const ID_WIDTH: usize = 7;
/// Width of the label column (`assistant` fits).
const LABEL_WIDTH: usize = 9;
/// Keys of a tool's input that say what the call is about, most telling first.
const TOOL_SUBJECTS: [&str; 9] = [
    "command",
    "file_path",
    "notebook_path",
    "pattern",
    "path",
    "url",
    "query",
    "description",
    "prompt",
];

impl Line {
    /// The line at most `width` characters wide (the summary is cut with `…`), with ANSI
    /// colours when `colour` is set.
    pub fn render(&self, width: usize, colour: bool) -> String {
        let prefix_width = ID_WIDTH.max(self.stream_id.len())
            + 2
            + LABEL_WIDTH.max(self.label.chars().count())
            + 2;
        let text = truncate(&self.text, width.saturating_sub(prefix_width).max(16));
        let (id_style, label_style) = if colour {
            (Style::new().dimmed(), self.tone.style())
        } else {
            (Style::new(), Style::new())
        };
        format!(
            "{}{:>ID_WIDTH$}{}  {}{:<LABEL_WIDTH$}{}  {text}",
            id_style.render(),
            self.stream_id,
            id_style.render_reset(),
            label_style.render(),
            self.label,
            label_style.render_reset(),
        )
        .trim_end()
        .to_owned()
    }
}

/// The line of one message as a follow sends it.
pub fn message(message: &Value) -> Line {
    let stream_id = message["stream_id"].as_str().unwrap_or("?").to_owned();
    let kind = message["type"].as_str().unwrap_or("message");
    let payload = &message["payload"];
    let (label, tone, text) = match kind {
        "AssistantMessage" | "assistant" | "UserMessage" | "user" => {
            let is_user = kind.starts_with('U') || kind.starts_with('u');
            match content(payload) {
                Some(content) => blocks(content, is_user),
                None => other(kind, payload),
            }
        }
        "SystemMessage" | "system" => ("system".into(), Tone::System, system(payload)),
        "ResultMessage" | "result" => result(payload),
        _ => other(kind, payload),
    };
    Line {
        stream_id,
        label,
        tone,
        text,
    }
}

/// The line of the end of a finished process.
pub fn end(status: &str, stream_id: &str) -> Line {
    Line {
        stream_id: stream_id.to_owned(),
        label: "end".into(),
        tone: if status == "succeeded" {
            Tone::Ok
        } else {
            Tone::Error
        },
        text: status.to_owned(),
    }
}

/// The line of a message this client could not parse: its text as it came.
pub fn unparsed(raw: &str) -> Line {
    Line {
        stream_id: "?".into(),
        label: "raw".into(),
        tone: Tone::Quiet,
        text: raw.to_owned(),
    }
}

/// The content of an SDK message (`payload.content`), or of an API-shaped one
/// (`payload.message.content`).
fn content(payload: &Value) -> Option<&Value> {
    [&payload["content"], &payload["message"]["content"]]
        .into_iter()
        .find(|content| content.is_array() || content.is_string())
}

/// Assistant or user content: the label and tone of the first block, the summaries of
/// all of them; an error in any tool result colours the line.
fn blocks(content: &Value, is_user: bool) -> (String, Tone, String) {
    let plain = if is_user {
        ("user", Tone::User)
    } else {
        ("assistant", Tone::Plain)
    };
    let Value::Array(items) = content else {
        let text = one_line(content.as_str().unwrap_or_default());
        return (plain.0.into(), plain.1, text);
    };
    let mut summaries = Vec::with_capacity(items.len());
    let mut head: Option<(&str, Tone)> = None;
    let mut failed = false;
    for block in items {
        let (label, tone, summary) = match block_kind(block) {
            BlockKind::Text => (plain.0, plain.1, one_line(str_field(block, "text"))),
            BlockKind::Thinking => (
                "thinking",
                Tone::Quiet,
                one_line(str_field(block, "thinking")),
            ),
            BlockKind::ToolUse => ("tool", Tone::Tool, tool_use(block)),
            BlockKind::ToolResult => {
                let (tone, summary) = tool_result(block);
                failed |= tone == Tone::Error;
                ("result", tone, summary)
            }
            BlockKind::Other => (plain.0, plain.1, compact(block)),
        };
        head.get_or_insert((label, tone));
        summaries.push(summary);
    }
    let (label, tone) = head.unwrap_or(plain);
    let tone = if failed { Tone::Error } else { tone };
    (label.into(), tone, summaries.join(" · "))
}

enum BlockKind {
    Text,
    Thinking,
    ToolUse,
    ToolResult,
    Other,
}

fn block_kind(block: &Value) -> BlockKind {
    match block["type"].as_str() {
        Some("text") => BlockKind::Text,
        Some("thinking" | "redacted_thinking") => BlockKind::Thinking,
        Some("tool_use" | "server_tool_use") => BlockKind::ToolUse,
        Some("tool_result") => BlockKind::ToolResult,
        Some(_) => BlockKind::Other,
        None if block.get("tool_use_id").is_some() => BlockKind::ToolResult,
        None if block.get("name").is_some() && block.get("input").is_some() => BlockKind::ToolUse,
        None if block.get("thinking").is_some() => BlockKind::Thinking,
        None if block.get("text").is_some() => BlockKind::Text,
        None => BlockKind::Other,
    }
}

/// `Bash: cargo test`: the tool and what the call is about ([`tool_subject`]).
fn tool_use(block: &Value) -> String {
    let name = block["name"].as_str().unwrap_or("tool");
    match tool_subject(&block["input"]) {
        Some(subject) => format!("{name}: {subject}"),
        None => name.to_owned(),
    }
}

/// What a tool call is about, in one line: the command, the file, the pattern (`def
/// compute_total in src` when it has a path), … (the first of [`TOOL_SUBJECTS`]), the
/// counts of a todo list, or the input as compact JSON; `None` for an empty input.
///
/// The viewer (`http/viewer/viewer.js`, `toolSubject`) shows the same: both are held to
/// the cases of `tests/fixtures/tool-summaries.json` (this module's tests, and the
/// viewer's browser test).
pub fn tool_subject(input: &Value) -> Option<String> {
    if let Some(todos) = input["todos"].as_array() {
        return Some(todo_counts(todos));
    }
    let subject = TOOL_SUBJECTS
        .iter()
        .find_map(|key| input[*key].as_str())
        .map(one_line);
    match subject {
        Some(subject) if input["pattern"].is_string() && input["path"].is_string() => Some(
            format!("{subject} in {}", one_line(str_field(input, "path"))),
        ),
        Some(subject) => Some(subject),
        None if input.as_object().is_some_and(|o| o.is_empty()) || input.is_null() => None,
        None => Some(compact(input)),
    }
}

/// `3 todos: 1 in progress, 2 pending`.
fn todo_counts(todos: &[Value]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for todo in todos {
        let status = todo["status"].as_str().unwrap_or("unknown");
        match counts.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => counts.push((status, 1)),
        }
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(status, n)| format!("{n} {}", status.replace('_', " ")))
        .collect();
    format!("{} todos: {}", todos.len(), counts.join(", "))
}

/// `ok (3.2 KB)`, or `error: <its first words>`.
fn tool_result(block: &Value) -> (Tone, String) {
    let text = match &block["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if block["is_error"].as_bool() == Some(true) {
        (Tone::Error, format!("error: {}", one_line(&text)))
    } else {
        (Tone::Ok, format!("ok ({})", size(text.len())))
    }
}

/// `init: claude-sonnet-4-5 in /tmp/repo, 11 tools`, or the subtype and its data.
fn system(payload: &Value) -> String {
    let subtype = payload["subtype"].as_str().unwrap_or("system");
    let data = if payload["data"].is_object() {
        &payload["data"]
    } else {
        payload
    };
    if subtype == "init" {
        let mut text = String::from("init");
        if let Some(model) = data["model"].as_str() {
            text.push_str(&format!(": {model}"));
        }
        if let Some(cwd) = data["cwd"].as_str() {
            text.push_str(&format!(" in {cwd}"));
        }
        if let Some(tools) = data["tools"].as_array() {
            text.push_str(&format!(", {} tools", tools.len()));
        }
        return text;
    }
    format!("{subtype}: {}", compact(data))
}

/// `success in 3m04s, 32 turns, $0.42: <the result>`.
fn result(payload: &Value) -> (String, Tone, String) {
    let failed = payload["is_error"].as_bool() == Some(true);
    let mut facts = vec![payload["subtype"]
        .as_str()
        .unwrap_or(if failed { "error" } else { "done" })
        .to_owned()];
    if let Some(ms) = payload["duration_ms"].as_u64() {
        facts[0].push_str(&format!(" in {}", duration(ms)));
    }
    if let Some(turns) = payload["num_turns"].as_u64() {
        facts.push(format!("{turns} turns"));
    }
    if let Some(cost) = payload["total_cost_usd"].as_f64() {
        facts.push(format!("${cost:.2}"));
    }
    let mut text = facts.join(", ");
    if let Some(result) = payload["result"].as_str() {
        text.push_str(&format!(": {}", one_line(result)));
    }
    let tone = if failed { Tone::Error } else { Tone::Ok };
    ("done".into(), tone, text)
}

/// A message of a type this module does not know: its type and its payload.
fn other(kind: &str, payload: &Value) -> (String, Tone, String) {
    (one_line(kind), Tone::Plain, compact(payload))
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

/// Whitespace (newlines included) collapsed to single spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn compact(value: &Value) -> String {
    value.to_string()
}

/// At most `max` characters: longer text is cut and ends with `…`.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `512 B`, `3.2 KB`, `1.5 MB`.
fn size(bytes: usize) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MB", bytes as f64 / 1_048_576.0),
    }
}

/// `850ms`, `12.3s`, `4m12s`, `1h02m`.
fn duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The recorded session as a follow sends it: each message with its stream ID.
    fn session() -> Vec<Value> {
        crate::demo::SESSION
            .lines()
            .filter(|line| !line.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                let mut message: Value = serde_json::from_str(line).expect("fixture line");
                message["stream_id"] = json!(format!("{}-0", i + 1));
                message
            })
            .collect()
    }

    fn rendered(message_json: &Value) -> String {
        message(message_json).render(120, false)
    }

    #[test]
    fn a_recorded_session_reads_one_line_per_message() {
        let lines: Vec<String> = session().iter().map(rendered).collect();
        let expected = [
            "    1-0  system     init: claude-sonnet-4-5-20250929 in \
                /tmp/repo/bed8374f-535e-4e50-a7d9-49346eb8263c, 11 tools",
            "    2-0  assistant  I'll start by exploring the repository structure to understand \
                how invoices are computed.",
            "    3-0  tool       LS: /tmp/repo",
            "    4-0  result     ok (115 B)",
            "    5-0  tool       Grep: def compute_total in src",
            "    6-0  result     ok (61 B)",
            "    7-0  tool       Read: /tmp/repo/src/billing/invoice.py",
        ];
        assert_eq!(lines[..expected.len()], expected);
        assert_eq!(lines[8].split_whitespace().nth(1), Some("thinking"));
        assert_eq!(
            lines[9],
            "   10-0  tool       TodoWrite: 3 todos: 1 in progress, 2 pending"
        );
        assert_eq!(
            lines[15],
            "   16-0  tool       Bash: cd /tmp/repo && python -m pytest tests/billing -q"
        );
        assert_eq!(
            lines[31],
            "   32-0  done       success in 3m04s, 32 turns, $0.42: Fixed the invoice rounding \
                drift and added a regression test."
        );
        for line in &lines {
            assert!(!line.contains('\n'), "one line: {line:?}");
            assert!(line.chars().count() <= 120, "at most the width: {line:?}");
        }
    }

    #[test]
    fn tool_calls_read_as_the_shared_cases_say() {
        let cases: Vec<Value> =
            serde_json::from_str(include_str!("../../tests/fixtures/tool-summaries.json"))
                .expect("the cases are JSON");
        assert!(
            cases.len() >= TOOL_SUBJECTS.len(),
            "a case per subject key at least"
        );
        for key in TOOL_SUBJECTS {
            assert!(
                cases.iter().any(|case| case["input"].get(key).is_some()),
                "a case for {key}"
            );
        }
        for case in &cases {
            assert_eq!(
                tool_subject(&case["input"]).as_deref(),
                case["subject"].as_str(),
                "{case}"
            );
        }
    }

    #[test]
    fn long_text_is_cut_to_the_width_with_an_ellipsis() {
        let thinking = &session()[8];
        let line = message(thinking).render(80, false);
        assert_eq!(line.chars().count(), 80);
        assert!(line.ends_with('…'), "{line}");
        assert!(line.starts_with("    9-0  thinking   The discount is applied"));
    }

    #[test]
    fn a_failed_tool_result_shows_its_error_in_red() {
        let message_json = json!({"type": "UserMessage", "stream_id": "14-0",
            "payload": {"content": [
            {"tool_use_id": "t1", "content": "Exit code 101\nerror[E0308]: mismatched types",
                "is_error": true}
        ]}});
        let line = message(&message_json);
        assert_eq!(line.tone, Tone::Error);
        assert_eq!(
            line.render(200, false),
            "   14-0  result     error: Exit code 101 error[E0308]: mismatched types"
        );
        let coloured = line.render(200, true);
        assert!(coloured.contains("\u{1b}["), "{coloured:?}");
        assert!(coloured.contains("error: Exit code 101"));
    }

    #[test]
    fn api_shaped_blocks_with_types_read_the_same() {
        let message_json = json!({"type": "AssistantMessage", "stream_id": "3-0",
            "payload": {"message": {"content": [
            {"type": "text", "text": "Running the tests."},
            {"type": "tool_use", "id": "t", "name": "Bash",
                "input": {"command": "cargo test -p foo"}}
        ]}}});
        assert_eq!(
            rendered(&message_json),
            "    3-0  assistant  Running the tests. · Bash: cargo test -p foo"
        );
    }

    #[test]
    fn unknown_types_and_tools_show_their_json() {
        let event =
            json!({"type": "ProgressEvent", "stream_id": "5-0", "payload": {"percent": 40}});
        assert_eq!(rendered(&event), "    5-0  ProgressEvent  {\"percent\":40}");
        let tool = json!({"type": "AssistantMessage", "stream_id": "6-0", "payload": {"content": [
            {"id": "t", "name": "mcp__jira__get", "input": {"key": "ABC-1"}}
        ]}});
        assert_eq!(
            rendered(&tool),
            "    6-0  tool       mcp__jira__get: {\"key\":\"ABC-1\"}"
        );
    }

    #[test]
    fn a_user_prompt_and_the_end_have_their_own_labels() {
        let prompt = json!({"type": "UserMessage", "stream_id": "1-0",
            "payload": {"content": "Fix the\nrounding bug"}});
        assert_eq!(
            rendered(&prompt),
            "    1-0  user       Fix the rounding bug"
        );
        assert_eq!(
            end("succeeded", "32-1").render(80, false),
            "   32-1  end        succeeded"
        );
        assert_eq!(end("failed", "3-1").tone, Tone::Error);
    }

    #[test]
    fn sizes_and_durations_read_like_a_person_would_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3277), "3.2 KB");
        assert_eq!(size(3 << 20), "3.0 MB");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_300), "12.3s");
        assert_eq!(duration(252_000), "4m12s");
        assert_eq!(duration(3_720_000), "1h02m");
    }
}

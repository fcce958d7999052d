//! The table: one row per figure, with its baseline, ratio and target, the notes under it,
//! the machine it ran on; and the section of docs/performance.md it can rewrite.

use std::fmt::Write as _;

use crate::figures::thousands;
use crate::instances::{Postgres, Redis};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    Fanout,
    Catchup,
    Throughput,
    Polling,
    Peer,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Latency,
        Scenario::Fanout,
        Scenario::Catchup,
        Scenario::Throughput,
        Scenario::Polling,
        Scenario::Peer,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Catchup => "catchup",
            Scenario::Throughput => "throughput",
            Scenario::Polling => "polling",
            Scenario::Peer => "peer",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.key() == key)
    }
}

/// A ratio as `1.96x`; one under 0.01 as `1/1,889x`, which `0.00x` would hide.
fn show_ratio(r: f64) -> String {
    if r >= 0.01 || r <= 0.0 {
        format!("{r:.2}x")
    } else {
        format!("1/{}x", thousands(1.0 / r))
    }
}

/// One line of the table.
pub struct Row {
    pub scenario: Scenario,
    pub figure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn markdown(&self) -> String {
        let ratio = self.ratio.map(show_ratio).unwrap_or_else(|| "–".to_owned());
        let met = match self.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        format!(
            "| {}: {} | {} | {} | {} | {} | {} |",
            self.scenario.key(),
            self.figure,
            self.value,
            self.baseline,
            ratio,
            self.target,
            met
        )
    }
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<(Scenario, String)>,
    /// Follower or append problems: the bench exits 1 when there are any.
    pub problems: Vec<String>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        scenario: Scenario,
        figure: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        ratio: Option<f64>,
        target: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            scenario,
            figure: figure.into(),
            value: value.into(),
            baseline: baseline.into(),
            ratio,
            target: target.into(),
            met,
        });
    }

    pub fn note(&mut self, scenario: Scenario, text: impl Into<String>) {
        let text = text.into();
        eprintln!("perf: {}: {text}", scenario.key());
        self.notes.push((scenario, text));
    }

    pub fn problem(&mut self, scenario: Scenario, text: impl Into<String>) {
        let text = format!("{}: {}", scenario.key(), text.into());
        eprintln!("perf: PROBLEM {text}");
        self.problems.push(text);
    }
}

pub fn first_line(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l.split_once(':').map_or(l, |(_, v)| v).trim().to_owned())
}

pub fn version(program: &std::path::Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".to_owned());
    let memory = first_line("/proc/meminfo", "MemTotal")
        .and_then(|m| m.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.0} GiB", kib as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "?".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned());
    format!(
        "{cpus} CPUs ({cpu}), {memory} RAM, Linux {kernel} (load average {load} at the end); {}; {}; agent-stream release build; the server, PostgreSQL (run as production runs it: fsync on, synchronous_commit on, full_page_writes on, shared_buffers 512MB, max_wal_size 4GB; its WAL segments recycled, as in a server in service), Redis and the bench's clients all share the machine, on 127.0.0.1",
        version(&Postgres::bindir().join("postgres")),
        version(&Redis::binary()),
    )
}

pub fn table_head() -> [&'static str; 2] {
    [
        "| figure | agent-stream | baseline (raw, same run) | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
}

pub fn render(machine: &str, rows: &[Row], notes: &[(Scenario, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {machine}.");
    let _ = writeln!(out);
    for line in table_head() {
        let _ = writeln!(out, "{line}");
    }
    for row in rows {
        let _ = writeln!(out, "{}", row.markdown());
    }
    let _ = writeln!(out);
    for (scenario, note) in notes {
        let _ = writeln!(out, "- {}: {note}", scenario.key());
    }
    out
}

pub const BEGIN: &str = "<!-- perf:begin -->";
pub const END: &str = "<!-- perf:end -->";

/// Rewrites docs/performance.md between the markers: the rows and notes of the scenarios that
/// ran replace theirs; those of the others stay.
pub fn write_docs_section(
    machine: &str,
    ran: &[Scenario],
    report: &Report,
) -> Result<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/performance.md");
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let (start, end) = match (text.find(BEGIN), text.find(END)) {
        (Some(start), Some(end)) if start < end => (start + BEGIN.len(), end),
        _ => return Err(format!("{path} has no {BEGIN} … {END} markers")),
    };
    let old = &text[start..end];
    let scenario_of = |line: &str| -> Option<Scenario> {
        let body = line
            .strip_prefix("| ")
            .or_else(|| line.strip_prefix("- "))?;
        Scenario::from_key(body.split(':').next()?.trim())
    };
    let mut rows: Vec<(Scenario, String)> = Vec::new();
    let mut notes: Vec<(Scenario, String)> = Vec::new();
    for line in old.lines() {
        let Some(scenario) = scenario_of(line) else {
            continue;
        };
        if ran.contains(&scenario) {
            continue;
        }
        if line.starts_with("| ") {
            rows.push((scenario, line.to_owned()));
        } else {
            notes.push((scenario, line.to_owned()));
        }
    }
    rows.extend(report.rows.iter().map(|r| (r.scenario, r.markdown())));
    notes.extend(
        report
            .notes
            .iter()
            .map(|(s, n)| (*s, format!("- {}: {n}", s.key()))),
    );
    let order = |s: &Scenario| Scenario::ALL.iter().position(|x| x == s).unwrap_or(0);
    rows.sort_by_key(|(s, _)| order(s));
    notes.sort_by_key(|(s, _)| order(s));
    let mut section = String::from("\n");
    let _ = writeln!(section, "Machine: {machine}.");
    let _ = writeln!(section);
    for line in table_head() {
        let _ = writeln!(section, "{line}");
    }
    for (_, row) in &rows {
        let _ = writeln!(section, "{row}");
    }
    let _ = writeln!(section);
    for (_, note) in &notes {
        let _ = writeln!(section, "{note}");
    }
    let updated = format!("{}{section}{}", &text[..start], &text[end..]);
    std::fs::write(path, updated).map_err(|e| format!("{path}: {e}"))?;
    Ok(path.to_owned())
}

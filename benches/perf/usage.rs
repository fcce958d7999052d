//! CPU and memory of the processes a scenario runs, read from /proc.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::instances;

/// utime + stime of a process, in clock ticks (1/100 s on Linux).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of a process and of each of its children (PostgreSQL's postmaster and
/// backends), by pid.
pub fn tree_cpu_ticks(root: u32) -> HashMap<u32, u64> {
    let mut total = HashMap::new();
    total.insert(root, cpu_ticks(root).unwrap_or(0));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(root) {
            total.insert(pid, cpu_ticks(pid).unwrap_or(0));
        }
    }
    total
}

#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub at: Instant,
    pub server: u64,
    /// By pid: a backend that exits in between loses its share, never goes negative.
    pub postgres: HashMap<u32, u64>,
    pub redis: u64,
    pub bench: u64,
}

impl CpuSnapshot {
    /// CPU used from `self` to `later`, in % of one core, per process.
    pub fn describe(&self, later: &CpuSnapshot) -> String {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        format!(
            "CPU (% of one core; 2 cores in all): agent-stream {:.0}%, PostgreSQL {:.0}%, Redis {:.0}%, bench clients {:.0}%",
            pct(self.server, later.server),
            later
                .postgres
                .iter()
                .map(|(pid, ticks)| ticks.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0)))
                .sum::<u64>() as f64
                / seconds,
            pct(self.redis, later.redis),
            pct(self.bench, later.bench),
        )
    }
}

/// Samples a process's VmRSS until stopped; returns the highest.
pub struct RssSampler {
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn spawn(pid: u32, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peak = 0;
                // Bounded: at most 20,000 samples.
                for _ in 0..20_000 {
                    if let Some(rss) = instances::vm_rss_kib(pid) {
                        peak = peak.max(rss);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
                peak
            }
        });
        Self { stop, handle }
    }

    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.handle.await.unwrap_or(0)
    }
}

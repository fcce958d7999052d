//! A fleet behind a real load balancer: agent-stream instances on one PostgreSQL and
//! one Redis, HAProxy in front of them, SSE followers that reconnect as a browser's
//! `EventSource` does; and [`FleetFigures`], what a kill and a drain cost the followers.
//! The fleet drill (tests/drills) judges a run; the fleet bench (benches/fault_drills)
//! prints its figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::client::{process_id, Api, Attempt, FollowSpec, FollowState, Follower, Format};
use crate::instances::{Haproxy, HaproxyTimeouts, Server};

/// The instances (named `a1`, `a2`, …), HAProxy, a client of HAProxy and one process.
/// Fields drop in order: HAProxy goes before the instances.
pub struct Fleet {
    pub haproxy: Haproxy,
    pub servers: Vec<Server>,
    pub names: Vec<String>,
    pub api: Api,
    pub process: String,
}

impl Fleet {
    /// Starts `instances` servers on `database_url` and `redis_url` with `args` for
    /// `serve`, HAProxy in front of them, and registers a process through HAProxy.
    pub async fn start(
        database_url: &str,
        redis_url: &str,
        instances: usize,
        args: &[&str],
        timeouts: HaproxyTimeouts,
    ) -> Self {
        let servers: Vec<Server> = (0..instances)
            .map(|_| Server::start(database_url, Some(redis_url), args))
            .collect();
        let names: Vec<String> = (1..=instances).map(|i| format!("a{i}")).collect();
        let haproxy = Haproxy::start(
            &names
                .iter()
                .cloned()
                .zip(servers.iter().map(Server::port))
                .collect::<Vec<_>>(),
            timeouts,
        );
        let api = Api::new(&haproxy.base());
        let process = process_id("fleet");
        match api.put_process(&process).await {
            Attempt::Answered { status: 201, .. } => {}
            other => panic!("PUT /processes/{process} through HAProxy answered {other:?}"),
        }
        Self {
            haproxy,
            servers,
            names,
            api,
            process,
        }
    }

    /// `count` SSE followers of the process from the start, through HAProxy, that
    /// reconnect as an `EventSource` does (after `backoff`, or the server's `retry:`)
    /// until `deadline`.
    pub fn sse_followers(
        &self,
        count: usize,
        deadline: Instant,
        backoff: Duration,
    ) -> Vec<Follower> {
        (0..count)
            .map(|_| {
                Follower::spawn(
                    self.api.http.clone(),
                    FollowSpec {
                        base: self.api.base.clone(),
                        process: self.process.clone(),
                        format: Format::Sse,
                        after: 0,
                        reconnect: true,
                        deadline,
                        keep_values: false,
                        eventsource_backoff: Some(backoff),
                    },
                )
            })
            .collect()
    }
}

/// What the faults cost the followers of a fleet, from every follower's record.
pub struct FleetFigures {
    pub reconnects: u32,
    /// Breaks without the end: the response failed (SIGKILL)…
    pub broken: usize,
    /// …or ended cleanly, its last frame a `retry:` hint (SIGTERM).
    pub drained: usize,
    /// "min–max" reconnects per follower.
    pub per_follower: String,
    pub reconnect_median: Duration,
    pub reconnect_worst: Duration,
    pub gap_worst: Duration,
    pub gap_worst_seq: u64,
    pub gap_p99: Duration,
}

impl FleetFigures {
    /// `answered`: when each seq's append was answered.
    pub fn of(states: &[FollowState], answered: &HashMap<u64, Instant>) -> Self {
        let per: Vec<u32> = states
            .iter()
            .map(|s| s.connections.saturating_sub(1))
            .collect();
        let mut reconnect_times = Vec::new();
        let (mut broken, mut drained) = (0, 0);
        for state in states {
            for broke in &state.breaks {
                if broke.clean && broke.last_frame_retry.is_some() {
                    drained += 1;
                } else {
                    broken += 1;
                }
                // From the drop to the next response opened (its 200).
                if let Some(opened) = state.opened.iter().find(|at| **at >= broke.at) {
                    reconnect_times.push(*opened - broke.at);
                }
            }
        }
        reconnect_times.sort();
        let mut gaps: Vec<(Duration, u64)> = states
            .iter()
            .flat_map(|s| &s.received)
            .filter_map(|r| {
                answered
                    .get(&r.seq)
                    .map(|at| (r.at.saturating_duration_since(*at), r.seq))
            })
            .collect();
        gaps.sort();
        let (gap_worst, gap_worst_seq) = gaps.last().copied().unwrap_or_default();
        Self {
            reconnects: per.iter().sum(),
            broken,
            drained,
            per_follower: format!(
                "{}–{}",
                per.iter().min().unwrap_or(&0),
                per.iter().max().unwrap_or(&0)
            ),
            reconnect_median: reconnect_times
                .get(reconnect_times.len() / 2)
                .copied()
                .unwrap_or_default(),
            reconnect_worst: reconnect_times.last().copied().unwrap_or_default(),
            gap_worst,
            gap_worst_seq,
            gap_p99: gaps
                .get(gaps.len() * 99 / 100)
                .map(|g| g.0)
                .unwrap_or_default(),
        }
    }
}

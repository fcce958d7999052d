//! Redis Cluster failover (issue 11, adr/0013): a master SIGKILLed mid-stream, its
//! replica promoted by the cluster, and every follower still ends with every message
//! exactly once, in order.
//!
//! The drill starts its own cluster (six `redis-server`s on loopback, 3 masters and 3
//! replicas, `redis-cli --cluster create`), beside its own PostgreSQL and server, as
//! every drill starts its own servers. redis-cli comes from AGENT_STREAM_TEST_REDIS_CLI,
//! else beside the redis-server binary, else PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_stream::adapters::redis::keys::Keys;
use agent_stream::domain::ProcessId;

use agent_stream_testkit::client::{
    process_id, verify_appends, verify_exact, wait_for, Api, Appender, AppenderConfig, Attempt,
    FollowSpec, Follower, Format, Outcome,
};
use agent_stream_testkit::instances::{free_port, Postgres, Redis, Server, TempDir};
use agent_stream_testkit::rig::{outcome_summary, serial, Checks};

/// `--idle-poll` of the server: far above the degraded poll (500 ms) and the delays
/// the drill allows once the replica took over, so that only Redis explains them.
const IDLE_POLL: &str = "5s";
/// `cluster-node-timeout` of every node: how long a master may be silent before the
/// others hold it failed and its replica takes over.
const NODE_TIMEOUT_MS: u64 = 2000;
/// Processes followed, spread so that every master holds at least two.
const PROCESSES: usize = 6;
/// The longest the cluster may take to promote the replica.
const FAILOVER_WITHIN: Duration = Duration::from_secs(15);
/// After the failover, each append must reach its followers this fast: live, through
/// the promoted replica, well under the idle poll.
const LIVE_DELAY: Duration = Duration::from_millis(1000);

/// A node of the drill's cluster.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// Six `redis-server`s in cluster mode, 3 masters and 3 replicas, killed on drop.
struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
    cli: PathBuf,
}

impl RedisCluster {
    fn start() -> Self {
        let binary = Redis::binary();
        let cli = std::env::var("AGENT_STREAM_TEST_REDIS_CLI")
            .ok()
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
            .or_else(|| Some(binary.with_file_name("redis-cli")).filter(|path| path.is_file()))
            .unwrap_or_else(|| PathBuf::from("redis-cli"));
        let dir = TempDir::new("redis-cluster");
        let mut nodes = Vec::new();
        while nodes.len() < 6 {
            let port = free_port();
            // The cluster bus listens on port + 10000.
            if port > 55_535 || std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let node_dir = dir.path().join(port.to_string());
            fs::create_dir_all(&node_dir).expect("make a node's directory");
            let log = fs::File::create(node_dir.join("redis.log")).expect("a node's log");
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                ])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // Replicas sync at once (not 5 s later): a replica that never synced
                // cannot be promoted.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&node_dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = Self { nodes, dir, cli };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster
            .nodes
            .iter()
            .all(|n| cluster.cli(n.port, &["ping"]) == "PONG")
        {
            assert!(
                Instant::now() < deadline,
                "the cluster's nodes did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(&cluster.cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("run {} --cluster create: {e}", cluster.cli.display()));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster.nodes.iter().all(|n| {
            cluster
                .cli(n.port, &["cluster", "info"])
                .contains("cluster_state:ok")
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok on every node within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Every replica in sync with its master, so that any of them can take over.
        while !cluster.nodes.iter().all(|n| {
            let replication = cluster.cli(n.port, &["info", "replication"]);
            replication.contains("role:master") || replication.contains("master_link_status:up")
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster's replicas are not in sync within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// What redis-cli prints for a command to the node on `port` ("" if it fails).
    fn cli(&self, port: u16, args: &[&str]) -> String {
        Command::new(&self.cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default()
    }

    /// The URL of the first node: the service finds the others by itself.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.nodes[0].port)
    }

    /// Slot ranges by master port, as the node on `asked` sees them (`CLUSTER NODES`),
    /// leaving out masters flagged `fail` and masters without slots.
    fn masters_seen_by(&self, asked: u16) -> BTreeMap<u16, Vec<(u16, u16)>> {
        let mut masters = BTreeMap::new();
        for line in self.cli(asked, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(port) = fields[1]
                .split('@')
                .next()
                .and_then(|address| address.rsplit(':').next())
                .and_then(|port| port.parse().ok())
            else {
                continue;
            };
            let ranges: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter_map(|range| {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    Some((start.parse().ok()?, end.parse().ok()?))
                })
                .collect();
            // A node not yet told it is a replica shows as a master without slots.
            if !ranges.is_empty() {
                masters.insert(port, ranges);
            }
        }
        masters
    }

    /// The port of the master serving `slot`, as the node on `asked` sees it.
    fn master_of(&self, asked: u16, slot: u16) -> Option<u16> {
        self.masters_seen_by(asked)
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|(s, e)| (*s..=*e).contains(&slot)))
            .map(|(port, _)| port)
    }

    fn slot_of(&self, key: &str) -> u16 {
        self.cli(self.nodes[0].port, &["cluster", "keyslot", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    fn kill9(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self, port: u16) -> String {
        agent_stream_testkit::instances::tail(
            &self.dir.path().join(port.to_string()).join("redis.log"),
            15,
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Process ids whose streams spread over every master, at least two per master.
fn processes_on_every_master(cluster: &RedisCluster) -> Vec<(String, u16, u16)> {
    let keys = Keys::cluster("");
    let asked = cluster.nodes[0].port;
    let masters: Vec<u16> = cluster.masters_seen_by(asked).into_keys().collect();
    assert_eq!(masters.len(), 3, "3 masters");
    let mut chosen: Vec<(String, u16, u16)> = Vec::new();
    for _ in 0..1000 {
        if chosen.len() == PROCESSES {
            break;
        }
        let id = process_id("cluster");
        let key = keys.stream(&ProcessId::parse(&id).expect("a process id"));
        let slot = cluster.slot_of(&key);
        let master = cluster
            .master_of(asked, slot)
            .expect("a master for the slot");
        let on_master = chosen.iter().filter(|(_, _, m)| *m == master).count();
        if on_master < PROCESSES / masters.len() {
            chosen.push((id, slot, master));
        }
    }
    assert_eq!(chosen.len(), PROCESSES, "processes on every master");
    chosen
}

/// `agent_stream_redis_write_failures_total` of the server's `/metrics`.
async fn xadds_failed(api: &Api) -> u64 {
    let Ok(response) = api.http.get(api.url("/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|line| line.starts_with("agent_stream_redis_write_failures_total"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_and_its_replica_promoted_costs_no_message() {
    let _serial = serial().await;
    let mut checks = Checks::new("redis cluster failover");
    let started = Instant::now();
    let pg = Postgres::start();
    let mut cluster = RedisCluster::start();
    checks.note(format!(
        "cluster of 3 masters and 3 replicas ready in {:?}",
        started.elapsed()
    ));
    let server = Server::start(&pg.url(), Some(&cluster.url()), &["--idle-poll", IDLE_POLL]);
    let api = Api::new(&server.base());
    let deadline = Instant::now() + Duration::from_secs(90);
    let processes = processes_on_every_master(&cluster);
    let victim = processes[0].2;
    checks.note(format!(
        "processes by master: {:?}",
        processes
            .iter()
            .map(|(id, slot, master)| format!("{id} slot {slot} on :{master}"))
            .collect::<Vec<_>>()
    ));

    let follower = |process: &str, format, after| {
        Follower::spawn(
            api.http.clone(),
            FollowSpec {
                base: api.base.clone(),
                process: process.to_owned(),
                format,
                after,
                reconnect: false,
                deadline,
                keep_values: true,
                eventsource_backoff: None,
            },
        )
    };
    let mut followers: Vec<(usize, Follower)> = Vec::new();
    let mut appenders = Vec::new();
    for (i, (process, _, _)) in processes.iter().enumerate() {
        match api.put_process(process).await {
            Attempt::Answered { status: 201, .. } => {}
            other => panic!("PUT /processes/{process} answered {other:?}"),
        }
        for format in [Format::Sse, Format::Ndjson] {
            followers.push((i, follower(process, format, 0)));
        }
        appenders.push(Appender::spawn(
            api.clone(),
            process.clone(),
            "m".to_owned(),
            AppenderConfig {
                interval: Duration::from_millis(100),
                max: 10_000,
                retry_failures: false,
                give_up_after: Duration::from_secs(20),
            },
        ));
    }
    let min_received = |followers: &[(usize, Follower)]| {
        followers
            .iter()
            .map(|(_, f)| f.last_seq())
            .min()
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(15), || {
            appenders.iter().all(|a| a.max_seq() >= 10) && min_received(&followers) >= 5
        })
        .await,
        "before the kill, every follower must be live: appended {:?}, received {:?}",
        appenders.iter().map(Appender::max_seq).collect::<Vec<_>>(),
        followers
            .iter()
            .map(|(_, f)| f.last_seq())
            .collect::<Vec<_>>()
    );
    let failed_before = xadds_failed(&api).await;

    // The fault: SIGKILL the master of the first process's slot.
    cluster.kill9(victim);
    let killed_at = Instant::now();
    checks.note(format!(
        "master :{victim} killed with SIGKILL at seqs {:?}",
        appenders.iter().map(Appender::max_seq).collect::<Vec<_>>()
    ));

    // The cluster promotes the replica: every victim slot gets a live master again.
    let survivor = cluster
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|port| *port != victim)
        .expect("a surviving node");
    let victim_slots: Vec<u16> = processes
        .iter()
        .filter(|(_, _, master)| *master == victim)
        .map(|(_, slot, _)| *slot)
        .collect();
    let promoted = wait_for(FAILOVER_WITHIN, || {
        victim_slots.iter().all(|slot| {
            cluster
                .master_of(survivor, *slot)
                .is_some_and(|port| port != victim)
        }) && cluster
            .cli(survivor, &["cluster", "info"])
            .contains("cluster_state:ok")
    })
    .await;
    let failover_took = killed_at.elapsed();
    checks.check(
        promoted,
        format!(
            "the replica of :{victim} is promoted within {FAILOVER_WITHIN:?}\n{}",
            cluster.log_tail(survivor)
        ),
    );
    let new_master = cluster.master_of(survivor, victim_slots[0]);
    checks.note(format!(
        "replica :{new_master:?} promoted {failover_took:?} after the kill"
    ));

    // Recovered: an append to a process of the killed master reaches its followers
    // live again (well under the idle poll), through the promoted replica.
    let victim_process = 0;
    let recovered = wait_for(Duration::from_secs(20), || {
        let records = appenders[victim_process].records();
        let Some(last) = records
            .iter()
            .rev()
            .find(|r| r.sent > killed_at + failover_took && r.outcome.seq().is_some())
        else {
            return false;
        };
        let seq = last.outcome.seq().unwrap_or(0);
        followers
            .iter()
            .filter(|(i, _)| *i == victim_process)
            .all(|(_, f)| {
                f.with_state(|state| {
                    state
                        .received
                        .iter()
                        .find(|r| r.seq == seq)
                        .is_some_and(|r| r.at.duration_since(last.answered) < LIVE_DELAY)
                })
            })
    })
    .await;
    let recover_took = killed_at.elapsed();
    checks.check(
        recovered,
        "live delivery on the killed master's slots comes back (within 20 s of the failover)",
    );
    checks.note(format!(
        "live delivery back on the killed master's processes {recover_took:?} after the kill"
    ));

    // New followers of every process, from seq 5, after the failover.
    for (i, (process, _, _)) in processes.iter().enumerate() {
        followers.push((i, follower(process, Format::Sse, 5)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measured_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut all_records = Vec::new();
    for appender in appenders {
        all_records.push(appender.stop().await);
    }
    let xadds_failed = xadds_failed(&api).await - failed_before;
    let mut worst_after = Duration::ZERO;
    let mut worst_during = Duration::ZERO;
    let mut messages = 0;
    let mut states_by_process: Vec<Vec<(u64, agent_stream_testkit::client::FollowState)>> =
        processes.iter().map(|_| Vec::new()).collect();
    for (i, (process, _, _)) in processes.iter().enumerate() {
        match api
            .finish(process, "succeeded", Duration::from_secs(15))
            .await
        {
            Attempt::Answered { status: 200, .. } => {}
            other => {
                checks.check(false, format!("finish {process} answered {other:?}"));
            }
        }
        let stored = api
            .snapshot(process, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        messages += stored.len();
        let records = &all_records[i];
        checks.check_result(
            verify_appends(records, &stored),
            &format!("appends vs snapshot of {process}"),
        );
        checks.check(
            records
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Created { .. })),
            format!(
                "every append to {process} is answered 201, master killed or not: {}",
                outcome_summary(records)
            ),
        );
        let mine: Vec<Follower> = {
            let (mine, rest): (Vec<_>, Vec<_>) = followers.into_iter().partition(|(j, _)| *j == i);
            followers = rest;
            mine.into_iter().map(|(_, f)| f).collect()
        };
        for follower in mine {
            let (format, after) = (follower.spec.format, follower.spec.after);
            let state = follower.join().await;
            checks.check_result(
                verify_exact(&state, after, &stored, "succeeded"),
                &format!("{} follower of {process} after {after}", format.name()),
            );
            states_by_process[i].push((after, state));
        }
        // Delivery delays, from each append's 201 to each receipt by a follower that
        // was there all along (one that joined later got the past at once, late).
        for (_, state) in states_by_process[i].iter().filter(|(after, _)| *after == 0) {
            let at: BTreeMap<&str, Instant> = state
                .received
                .iter()
                .map(|r| (r.id.as_str(), r.at))
                .collect();
            for record in records {
                let Some(received) = at.get(record.id.as_str()) else {
                    continue;
                };
                let delay = received.saturating_duration_since(record.answered);
                if record.answered >= measured_from {
                    worst_after = worst_after.max(delay);
                } else if record.answered >= killed_at {
                    worst_during = worst_during.max(delay);
                }
            }
        }
    }
    let follower_count: usize = states_by_process.iter().map(Vec::len).sum();
    let masters: BTreeSet<u16> = processes.iter().map(|(_, _, m)| *m).collect();
    checks.check(
        worst_after < LIVE_DELAY,
        format!(
            "after the failover every append reaches every follower live (within {LIVE_DELAY:?}, the idle poll is {IDLE_POLL}): worst {worst_after:?}"
        ),
    );
    checks.note(format!(
        "figures: {messages} messages over {PROCESSES} processes on {} masters, {follower_count} followers each exact; failover (kill to replica promoted) {failover_took:?}; live again {recover_took:?} after the kill; {xadds_failed} XADDs failed or skipped; worst delivery delay while failing over {worst_during:?}, after {worst_after:?}",
        masters.len()
    ));
    drop(server);
    checks.finish();
}

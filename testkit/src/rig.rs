//! One drill's world: a private PostgreSQL, a private Redis and an agent-stream server
//! on top of them, a process, followers and an appender; and [`Checks`], which collects
//! every failed expectation of a drill so that one run reports them all.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{
    process_id, verify_appends, verify_exact, wait_for, Api, AppendRecord, Appender,
    AppenderConfig, Attempt, FollowSpec, FollowState, Follower, Format, Outcome,
};
use crate::instances::{Postgres, Redis, Server, TlsFiles};

/// The drills run one at a time: each starts a PostgreSQL, a Redis and a server, and
/// their timing assertions should not depend on how many others share the CPU.
/// (A tokio mutex: it is held across awaits, and a failed drill does not poison it.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Failed expectations of one drill, reported together at the end.
pub struct Checks {
    drill: &'static str,
    failures: Vec<String>,
}

impl Checks {
    pub fn new(drill: &'static str) -> Self {
        Self {
            drill,
            failures: Vec::new(),
        }
    }

    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        if !ok {
            let what = what.into();
            eprintln!("[{}] FAILED: {what}", self.drill);
            self.failures.push(what);
        }
        ok
    }

    pub fn check_result(&mut self, result: Result<impl std::fmt::Debug, String>, what: &str) {
        if let Err(error) = result {
            self.check(false, format!("{what}: {error}"));
        }
    }

    pub fn note(&self, what: impl AsRef<str>) {
        eprintln!("[{}] {}", self.drill, what.as_ref());
    }

    /// Panics with every failed expectation, if any.
    pub fn finish(self) {
        if !self.failures.is_empty() {
            panic!(
                "{}: {} expectation(s) failed:\n  - {}",
                self.drill,
                self.failures.len(),
                self.failures.join("\n  - ")
            );
        }
        eprintln!("[{}] all expectations held", self.drill);
    }
}

/// Fields drop in order: the server goes before the stores it uses.
pub struct Rig {
    pub server: Server,
    pub redis: Redis,
    pub pg: Postgres,
    pub api: Api,
    pub process: String,
    /// Followers give up (a violation) at this time.
    pub deadline: Instant,
}

impl Rig {
    /// PostgreSQL, Redis (running unless `redis_up` is false: then its port is reserved
    /// and it can be started later) and the server, with `args` for `serve`.
    pub fn start(label: &str, redis_up: bool, args: &[&str]) -> Self {
        let pg = Postgres::start();
        let redis = if redis_up {
            Redis::start()
        } else {
            Redis::reserve()
        };
        let server = Server::start(&pg.url(), Some(&redis.url()), args);
        Self::around(server, redis, pg, label)
    }

    /// The rig of a started `server` on `redis` and `pg`, for a process named after
    /// `label`; followers give up a minute from now.
    fn around(server: Server, redis: Redis, pg: Postgres, label: &str) -> Self {
        let api = Api::new(&server.base());
        Self {
            server,
            redis,
            pg,
            api,
            process: process_id(label),
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    /// Like [`Rig::start`] with Redis running, over TLS: PostgreSQL with ssl on and a
    /// TLS-only Redis with a password, both with the test certificate, and the server
    /// on `sslmode=verify-full` and `rediss://` with `--redis-tls-ca`.
    pub fn start_tls(label: &str, args: &[&str]) -> Self {
        let tls = TlsFiles::from_env();
        let pg = Postgres::start_tls(&tls);
        let redis = Redis::start_tls(tls.clone());
        let ca = tls.ca.display().to_string();
        let args: Vec<&str> = ["--redis-tls-ca", ca.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let server = Server::start(&pg.verify_full_url(&tls), Some(&redis.url()), &args);
        Self::around(server, redis, pg, label)
    }

    pub async fn register(&self) {
        match self.api.put_process(&self.process).await {
            Attempt::Answered { status: 201, .. } => {}
            other => panic!("PUT /processes/{} answered {other:?}", self.process),
        }
    }

    /// A follow of the rig's process from `after`, until the rig's deadline, keeping
    /// each message's JSON.
    pub fn follow_spec(&self, format: Format, after: u64, reconnect: bool) -> FollowSpec {
        FollowSpec {
            base: self.api.base.clone(),
            process: self.process.clone(),
            format,
            after,
            reconnect,
            deadline: self.deadline,
            keep_values: true,
            eventsource_backoff: None,
        }
    }

    pub fn follower(&self, format: Format, after: u64, reconnect: bool) -> Follower {
        Follower::spawn(
            self.api.http.clone(),
            self.follow_spec(format, after, reconnect),
        )
    }

    /// Four followers from the beginning, of every format.
    pub fn followers(&self, reconnect: bool) -> Vec<Follower> {
        [
            Format::Sse,
            Format::Ndjson,
            Format::NdjsonStream,
            Format::Sse,
        ]
        .into_iter()
        .map(|format| self.follower(format, 0, reconnect))
        .collect()
    }

    /// Two followers from a cursor: SSE (`Last-Event-ID`) and NDJSON (`?after=`).
    pub fn followers_from(&self, after: u64, reconnect: bool) -> Vec<Follower> {
        [Format::Sse, Format::Ndjson]
            .into_iter()
            .map(|format| self.follower(format, after, reconnect))
            .collect()
    }

    /// One append every 50 ms (20/s), one at a time.
    pub fn appender(&self, retry_failures: bool) -> Appender {
        Appender::spawn(
            self.api.clone(),
            self.process.clone(),
            "m".to_owned(),
            AppenderConfig {
                interval: Duration::from_millis(50),
                max: 10_000,
                retry_failures,
                give_up_after: Duration::from_secs(20),
            },
        )
    }

    /// Finishes the process, then checks the writer's outcomes against the snapshot and
    /// every follower against it.
    pub async fn finish_and_verify(
        &self,
        checks: &mut Checks,
        followers: Vec<Follower>,
        records: &[AppendRecord],
    ) -> Vec<FollowState> {
        match self
            .api
            .finish(&self.process, "succeeded", Duration::from_secs(15))
            .await
        {
            Attempt::Answered { status: 200, .. } => {}
            other => {
                checks.check(false, format!("finish answered {other:?}"));
            }
        }
        let stored = self
            .api
            .snapshot(&self.process, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        checks.note(format!(
            "{} messages stored; {} appends: {}",
            stored.len(),
            records.len(),
            outcome_summary(records)
        ));
        checks.check_result(verify_appends(records, &stored), "appends vs snapshot");
        let mut states = Vec::new();
        for follower in followers {
            let (format, after) = (follower.spec.format, follower.spec.after);
            let state = follower.join().await;
            checks.check_result(
                verify_exact(&state, after, &stored, "succeeded"),
                &format!(
                    "{} follower after {after} ({} connection(s))",
                    format.name(),
                    state.connections
                ),
            );
            states.push(state);
        }
        states
    }

    /// Starts the followers (from the start) and the appender, waits until they are
    /// live (`appended` appended, `received` received by every follower), then adds
    /// followers from seq 5 and waits until they are live too. `resume`: followers
    /// reconnect and the appender resends, as clients of a server that may die do.
    pub async fn go_live(
        &self,
        resume: bool,
        appended: u64,
        received: u64,
    ) -> (Vec<Follower>, Appender) {
        let mut followers = self.followers(resume);
        let appender = self.appender(resume);
        assert!(
            wait_for(Duration::from_secs(10), || appender.max_seq() >= appended
                && Rig::min_received(&followers) >= received)
            .await,
            "before the fault, followers must be live: appended {}, received {}",
            appender.max_seq(),
            Rig::received_summary(&followers)
        );
        followers.extend(self.followers_from(5, resume));
        assert!(
            wait_for(Duration::from_secs(5), || Rig::min_received(&followers)
                >= received.max(10))
            .await,
            "the cursor followers must be live: {}",
            Rig::received_summary(&followers)
        );
        (followers, appender)
    }

    pub fn min_received(followers: &[Follower]) -> u64 {
        followers.iter().map(Follower::last_seq).min().unwrap_or(0)
    }

    /// Whether at least three appends sent at or after `since` are answered 201 within
    /// `within`: the service takes appends again.
    pub async fn appends_created_again(
        appender: &Appender,
        since: Instant,
        within: Duration,
    ) -> bool {
        wait_for(within, || {
            appender
                .count_where(|r| r.sent >= since && matches!(r.outcome, Outcome::Created { .. }))
                >= 3
        })
        .await
    }

    /// Checks that every follower receives up to `seq` within `within`; `what` says
    /// when, for the failure.
    pub async fn check_followers_reach(
        checks: &mut Checks,
        followers: &[Follower],
        seq: u64,
        within: Duration,
        what: &str,
    ) {
        let reached = wait_for(within, || Self::min_received(followers) >= seq).await;
        checks.check(
            reached,
            format!(
                "{what} (up to seq {seq}): {}",
                Self::received_summary(followers)
            ),
        );
    }

    pub fn received_summary(followers: &[Follower]) -> String {
        followers
            .iter()
            .map(|f| format!("{} {}", f.spec.format.name(), f.last_seq()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// "31 created, 2 refused (503), …" for notes.
pub fn outcome_summary(records: &[AppendRecord]) -> String {
    use crate::client::Outcome::*;
    let mut created = 0;
    let mut already = 0;
    let mut refused: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut unknown = 0;
    let mut retried = 0;
    for record in records {
        if !record.failures.is_empty() {
            retried += 1;
        }
        match &record.outcome {
            Created { .. } => created += 1,
            AlreadyStored { .. } => already += 1,
            Refused { status, .. } => *refused.entry(*status).or_default() += 1,
            Unknown { .. } => unknown += 1,
        }
    }
    format!(
        "{created} created (201), {already} found stored on retry (200), refused {refused:?}, {unknown} unknown, {retried} needed a retry"
    )
}

/// The `error.code` of a JSON error body.
pub fn error_code(body: &Value) -> Option<&str> {
    body.get("error")?.get("code")?.as_str()
}

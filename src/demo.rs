//! `agent-stream demo`: serves the API and plays a recorded Claude Code session into a
//! fresh process at a human pace, so a newcomer can watch a follow work live. Auth is on
//! as in `serve`, with a secret made for the run (unless one is given, or auth is
//! disabled with the same flags as `serve`): it prints a read token for the process
//! and the commands that use it.
//!
//! The session waits for its audience: it starts when the first follow of the demo's
//! process opens (a `curl -N`, `tail`, the viewer's page), or after `--start-delay`,
//! whichever comes first. A first build takes minutes; a session that started on its
//! own clock would often be over before anyone looked.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{Minter, Processes, Scope};
use crate::config::ServeConfig;
use crate::domain::{FinishStatus, NewMessage, ProcessId, StoredMessage};
use crate::http::HttpConfig;
use crate::ports::{FeedError, FeedSubscription, LiveFeed};
use crate::startup::{self, Backends};

/// How long the token printed by the demo is valid.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The recorded session (32 messages, 0.3 to 34 KB), built into the binary; the tests
/// read it here too, so there is one copy.
pub const SESSION: &str = include_str!("demo/claude-code-session.ndjson");

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeConfig,

    // Each with its heading: clap keeps the last flattened struct's heading for the
    // flags that follow it.
    /// Pause between two messages.
    #[arg(long, help_heading = "Demo", default_value = DEFAULT_PACE,
        value_parser = humantime::parse_duration)]
    pub pace: Duration,

    /// The session starts when its first follow opens, or after this long without one.
    #[arg(long, help_heading = "Demo", default_value = DEFAULT_START_DELAY,
        value_parser = humantime::parse_duration)]
    pub start_delay: Duration,
}

/// Pause between two messages of the session.
pub const DEFAULT_PACE: &str = "700ms";

/// How long the session waits for a first follow before it plays anyway.
pub const DEFAULT_START_DELAY: &str = "60s";

/// The live feed of the demo's server, which also notices the first follow of the demo's
/// process: every follow subscribes to the feed of its process before it reads anything.
struct Audience {
    feed: Arc<dyn LiveFeed>,
    process: ProcessId,
    arrived: Arc<Notify>,
}

#[async_trait]
impl LiveFeed for Audience {
    async fn publish(
        &self,
        process: &ProcessId,
        messages: &[StoredMessage],
    ) -> Result<(), FeedError> {
        self.feed.publish(process, messages).await
    }

    async fn publish_end(
        &self,
        process: &ProcessId,
        last_seq: u64,
        status: &str,
    ) -> Result<(), FeedError> {
        self.feed.publish_end(process, last_seq, status).await
    }

    fn subscribe(&self, process: &ProcessId, after: u64) -> FeedSubscription {
        if *process == self.process {
            // A permit is kept until the player waits for it: a follow that opens
            // before the player starts waiting still counts.
            self.arrived.notify_one();
        }
        self.feed.subscribe(process, after)
    }

    async fn ping(&self) -> Result<(), FeedError> {
        self.feed.ping().await
    }

    fn is_live(&self) -> bool {
        self.feed.is_live()
    }

    fn name(&self) -> &'static str {
        self.feed.name()
    }

    fn record_metrics(&self) {
        self.feed.record_metrics()
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    args.serve.validate()?;
    let messages = SESSION
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| NewMessage::parse(line.as_bytes(), usize::MAX))
        .collect::<Result<Vec<_>, _>>()
        .context("the built-in session does not parse")?;
    let secret = args.serve.auth.demo_secret(args.serve.listen)?;
    let http = HttpConfig {
        auth: secret
            .as_ref()
            .map(|secret| Arc::new(args.serve.auth.verifier_for(secret))),
        ..args.serve.http()
    };
    let process = ProcessId::parse(&format!(
        "demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let mut backends = Backends::connect(&args.serve.backend).await?;
    let arrived = Arc::new(Notify::new());
    backends.feed = Arc::new(Audience {
        feed: backends.feed,
        process: process.clone(),
        arrived: arrived.clone(),
    });
    let writer = backends.writer();
    let listener = startup::bind(args.serve.listen).await?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(startup::serve(listener, backends, http, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    writer.register(&process).await?;
    let base = format!("http://{address}/processes/{process}");
    let token = secret
        .map(|secret| {
            Minter::new(&secret).mint(
                Processes::Only([process.clone()].into_iter().collect()),
                Scope::Read,
                DEMO_TOKEN_TTL,
                Some("demo".to_owned()),
            )
        })
        .transpose()?;
    let tail_token = if token.is_some() {
        " --token \"$TOKEN\""
    } else {
        ""
    };
    let (intro, bearer, browser) = match &token {
        Some(token) => (
            format!("Auth is on, with a secret made for this run. First, in the other terminal, \
                keep a read token for this process (valid 24 h):\n    TOKEN={token}\n\n"),
            " -H \"Authorization: Bearer $TOKEN\"",
            format!("In a browser (the token moves from the URL to a cookie), the process, then \
                the list of \
                processes:\n    {base}?access_token={token}\n    http://{address}/?access_token={token}\n\n"),
        ),
        None => (
            String::new(),
            "",
            format!("In a browser, the process, then the list of \
                processes:\n    {base}\n    http://{address}/\n\n"),
        ),
    };
    println!(
        "\nagent-stream demo: a recorded Claude Code session ({} messages) will play into process {process}\n\n\
         {intro}\
         Follow it live (NDJSON, one message per line):\n    curl -N{bearer} \
             {base}/messages/stream\n\n\
         Or as Server-Sent Events:\n    curl -N -H 'Accept: text/event-stream'{bearer} \
             {base}/messages\n\n\
         Resume from a stream ID you saw (nothing missed, nothing twice):\n    curl -N{bearer} \
             '{base}/messages/stream?after=10-0'\n\n\
         The process and its status:\n    curl{bearer} {base}\n\n\
         Every message so far, as one JSON array (what the existing UI's poller \
             reads):\n    curl{bearer} {base}/messages\n\n\
         In a terminal, one line per message (resumes by itself after a drop):\n    cargo run \
             --release -- tail --url http://{address}{tail_token} {process}\n\n\
         {browser}\
         The session starts when the first of these follows the process (or in {}), then one \
             message every {}. Ctrl-C stops the server.\n",
        messages.len(),
        humantime::format_duration(args.start_delay),
        humantime::format_duration(args.pace),
    );

    let play = async {
        tokio::select! {
            _ = arrived.notified() => println!("A follower is here: playing the session ({} \
                messages).", messages.len()),
            _ = tokio::time::sleep(args.start_delay) => println!(
                "No follower after {}: playing the session anyway ({} messages); a follow opened \
                    later gets them from the first.",
                humantime::format_duration(args.start_delay),
                messages.len()
            ),
        }
        for (i, message) in messages.iter().enumerate() {
            let outcome = writer
                .append(&process, std::slice::from_ref(message))
                .await?;
            tracing::info!(stream_id = %outcome.results[0].stream_id, kind = %message.kind,
                "demo: appended {}/{}", i + 1, messages.len());
            tokio::time::sleep(args.pace).await;
        }
        let info = writer
            .finish(&process, &FinishStatus::parse("succeeded")?)
            .await?;
        println!(
            "\nDemo process {process} finished ({} messages). Follows end with the end \
            event; the server keeps running until Ctrl-C.\n",
            info.last_seq
        );
        anyhow::Ok(())
    };
    tokio::select! {
        played = play => played?,
        _ = startup::shutdown_signal() => {
            stop.cancel();
            return server.await?;
        }
    }
    startup::shutdown_signal().await;
    stop.cancel();
    server.await?
}

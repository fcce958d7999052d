//! `agent-stream demo`: serves the API and plays a recorded Claude Code session into a
//! fresh process at a human pace, so a newcomer can watch a follow work live. Auth is on
//! as in `serve`, with a secret made for the run (unless one is given, or auth is
//! disabled with the same flags as `serve`): it prints a read token for the process
//! and the commands that use it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Minter, Processes, Scope};
use crate::config::ServeConfig;
use crate::domain::{FinishStatus, NewMessage, ProcessId};
use crate::http::HttpConfig;
use crate::startup::{self, Backends};

/// How long the token printed by the demo is valid.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The recorded session (32 messages, 0.3 to 34 KB), built into the binary.
pub const SESSION: &str = include_str!("../tests/fixtures/claude-code-session.ndjson");

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeConfig,

    /// Pause between two messages.
    #[arg(long, default_value = "700ms", value_parser = humantime::parse_duration)]
    pub pace: Duration,

    /// Time to open a follow before the first message.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub start_delay: Duration,
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
    let backends = Backends::connect(&args.serve.backend).await?;
    let writer = backends.writer();
    let listener = TcpListener::bind(args.serve.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.serve.listen))?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(startup::serve(listener, backends, http, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    let process = ProcessId::parse(&format!(
        "demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
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
            format!("Auth is on, with a secret made for this run. First, in the other terminal, keep a read token for this process (valid 24 h):\n    TOKEN={token}\n\n"),
            " -H \"Authorization: Bearer $TOKEN\"",
            format!("In a browser (the token moves from the URL to a cookie):\n    {base}?access_token={token}\n\n"),
        ),
        None => (String::new(), "", format!("In a browser:\n    {base}\n\n")),
    };
    println!(
        "\nagent-stream demo: playing a recorded Claude Code session ({} messages) into process {process}\n\n\
         {intro}\
         Follow it live (NDJSON, one message per line):\n    curl -N{bearer} {base}/messages/stream\n\n\
         Or as Server-Sent Events:\n    curl -N -H 'Accept: text/event-stream'{bearer} {base}/messages\n\n\
         Resume from a stream ID you saw (nothing missed, nothing twice):\n    curl -N{bearer} '{base}/messages/stream?after=10-0'\n\n\
         The process and its status:\n    curl{bearer} {base}\n\n\
         Every message so far, as one JSON array (what the existing UI's poller reads):\n    curl{bearer} {base}/messages\n\n\
         In a terminal, one line per message (resumes by itself after a drop):\n    cargo run --release -- tail --url http://{address}{tail_token} {process}\n\n\
         {browser}\
         First message in {:?}, then one every {:?}. Ctrl-C stops the server.\n",
        messages.len(),
        args.start_delay,
        args.pace,
    );

    let play = async {
        tokio::time::sleep(args.start_delay).await;
        for (i, message) in messages.iter().enumerate() {
            let outcome = writer
                .append(&process, std::slice::from_ref(message))
                .await?;
            tracing::info!(stream_id = %outcome.results[0].stream_id, kind = %message.kind, "demo: appended {}/{}", i + 1, messages.len());
            tokio::time::sleep(args.pace).await;
        }
        let info = writer
            .finish(&process, &FinishStatus::parse("succeeded")?)
            .await?;
        println!("\nDemo process {process} finished ({} messages). Follows end with the end event; the server keeps running until Ctrl-C.\n", info.last_seq);
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

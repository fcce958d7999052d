//! `agent-stream demo`: serves the API and plays a recorded Claude Code session into a
//! fresh process at a human pace, so a newcomer can watch a follow work live.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::domain::{FinishStatus, NewMessage, ProcessId};
use crate::startup::{self, Backends};

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
    let backends = Backends::connect(&args.serve.backend).await?;
    let writer = backends.writer();
    let listener = TcpListener::bind(args.serve.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.serve.listen))?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(startup::serve(listener, backends, args.serve.http(), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    let process = ProcessId::parse(&format!(
        "demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    writer.register(&process).await?;
    let base = format!("http://{address}/processes/{process}");
    println!(
        "\nagent-stream demo: playing a recorded Claude Code session ({} messages) into process {process}\n\n\
         Watch it in a browser:\n    {base}\n\n\
         Follow it live (NDJSON, one message per line):\n    curl -N {base}/messages\n\n\
         Or as Server-Sent Events:\n    curl -N -H 'Accept: text/event-stream' {base}/messages\n\n\
         Resume from a stream ID you saw (nothing missed, nothing twice):\n    curl -N '{base}/messages?after=10-0'\n\n\
         The process and its status:\n    curl {base}\n\n\
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

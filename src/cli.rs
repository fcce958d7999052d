//! The command line: `serve`, `migrate`, `append`, `tail`, `demo` and `token`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::auth::TokenArgs;
use crate::config::{BackendConfig, ServeConfig};
use crate::demo::{self, DemoArgs};
use crate::domain::{FinishStatus, NewMessage, ProcessId};
use crate::http::HttpConfig;
use crate::startup::{self, Backends};
use crate::tail::{self, TailArgs};

#[derive(Debug, Parser)]
#[command(
    name = "agent-stream",
    version,
    about = "Watch a remote coding agent work, live: durable, exact, resumable message streams."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info`, `agent_stream=debug`.
    #[arg(
        long,
        global = true,
        help_heading = "Logs",
        env = "AGENT_STREAM_LOG",
        default_value = "info,sqlx=warn"
    )]
    pub log: String,

    /// Log lines as readable text, or as one JSON object per line (for a log collector).
    #[arg(
        long,
        global = true,
        help_heading = "Logs",
        env = "AGENT_STREAM_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Under `-h`, which shows the flags a first run needs; `--help` shows them all.
const SHORT_HELP_NOTE: &str =
    "These are the flags a first run needs; --help lists every flag (limits, follow tuning, Redis \
        and PostgreSQL tuning) with its environment variable.";

/// Under `--help`.
const LONG_HELP_NOTE: &str =
    "Each flag can also be set by the environment variable shown; a flag wins over its variable.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    #[command(after_help = SHORT_HELP_NOTE, after_long_help = LONG_HELP_NOTE)]
    Serve(ServeConfig),
    /// Apply the PostgreSQL migrations and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Append NDJSON messages (one per line) from FILE or stdin to a process, each as
    /// it is read, printing `{"id", "stream_id"}` per message.
    Append(AppendArgs),
    /// Follow a process of a running server in the terminal, like `tail -f`: one line
    /// per message, resuming by itself after a drop, exiting with the process's status.
    Tail(TailArgs),
    /// Serve, and play a recorded agent session into a fresh process at a human pace.
    #[command(after_help = SHORT_HELP_NOTE, after_long_help = LONG_HELP_NOTE)]
    Demo(DemoArgs),
    /// Mint a token (printed on stdout) for the processes and scope given, signed with
    /// the secret the service runs with.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The process to append to (registered if new).
    #[arg(long)]
    pub process: String,

    /// NDJSON file of messages; stdin when absent or `-`.
    pub file: Option<PathBuf>,

    /// Finish the process with this status after the last message (e.g. `succeeded`).
    #[arg(long)]
    pub finish: Option<String>,

    /// Largest message, in bytes of its JSON.
    #[arg(long, env = "AGENT_STREAM_MAX_MESSAGE_BYTES",
        default_value_t = crate::http::MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    #[command(flatten)]
    pub backend: BackendConfig,
}

/// Logs go to stderr. Message payloads and tokens are never logged above `debug`.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        // `spans` lists every open span (request, follow): the current one alone would
        // repeat its last entry.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    init_logging(&cli.log, cli.log_format);
    match cli.command {
        Command::Tail(args) => return Ok(tail::run(args).await),
        Command::Serve(config) => serve(config).await,
        Command::Migrate { database_url } => {
            Backends::migrate(&database_url).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Append(args) => append(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Token(args) => {
            println!("{}", args.mint()?);
            Ok(())
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    config.validate()?;
    let http = HttpConfig {
        auth: config.auth.verifier(config.listen)?,
        ..config.http()
    };
    let backends = Backends::connect(&config.backend).await?;
    let listener = startup::bind(config.listen).await?;
    // The bound address, which differs from `--listen` for port 0.
    let address = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%address, store = backends.store.name(), feed = backends.feed.name(),
        auth = http.auth.is_some(), "agent-stream listening");
    startup::serve(listener, backends, http, startup::shutdown_signal()).await
}

async fn append(args: AppendArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.backend.database_url().is_some(),
        "append writes to PostgreSQL directly: set DATABASE_URL (and REDIS_URL for live \
            delivery). A server on the embedded in-memory store takes messages at POST \
            /processes/{{id}}/messages instead"
    );
    let process = ProcessId::parse(&args.process)?;
    let finish = args
        .finish
        .as_deref()
        .map(FinishStatus::parse)
        .transpose()?;
    let writer = Backends::connect(&args.backend).await?.writer();
    writer
        .register(&process)
        .await
        .context("could not register the process")?;
    let input: Box<dyn AsyncBufRead + Unpin + Send> =
        match args.file.as_ref().filter(|f| f.as_os_str() != "-") {
            Some(path) => Box::new(BufReader::new(
                tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("could not open {}", path.display()))?,
            )),
            None => Box::new(BufReader::new(tokio::io::stdin())),
        };
    let mut lines = input.lines();
    let mut number = 0;
    while let Some(line) = lines
        .next_line()
        .await
        .context("could not read the input")?
    {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let message = NewMessage::parse(line.trim().as_bytes(), args.max_message_bytes)
            .with_context(|| format!("line {number}"))?;
        let outcome = writer
            .append(&process, std::slice::from_ref(&message))
            .await
            .with_context(|| format!("line {number}: append failed"))?;
        for appended in outcome.results {
            println!(
                "{}",
                serde_json::json!({ "id": appended.id,
                    "stream_id": appended.stream_id.to_string() })
            );
        }
    }
    if let Some(status) = finish {
        let info = writer
            .finish(&process, &status)
            .await
            .context("finish failed")?;
        tracing::info!(%process, status = info.status.as_str(), messages = info.last_seq,
            "process finished");
    }
    Ok(())
}

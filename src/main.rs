//! The `agent-stream` binary: parses the command line and hands over to the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = agent_stream::cli::Cli::parse();
    match agent_stream::cli::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", agent_stream::report::one_line(&error));
            ExitCode::FAILURE
        }
    }
}

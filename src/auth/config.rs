//! Auth on the command line: where the secret comes from, when the service may run
//! without auth, and the `token` command.
//!
//! Auth is off only when explicitly disabled: `serve` without a secret refuses to
//! start unless given `--no-auth` (loopback addresses only) or `--insecure-no-auth`
//! (any address, for a service that something else in front of it guards).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args};

use super::claims::{Processes, Scope};
use super::keys::{Minter, Secret, Verifier};
use crate::domain::ProcessId;

/// Name of the cookie a browser may carry its token in.
pub const COOKIE: &str = "agent_stream_token";

/// Where the HS256 secret comes from.
#[derive(Debug, Clone, Default, Args)]
pub struct SecretArgs {
    /// HS256 secret that signs and checks tokens, at least 32 bytes (e.g. the output of
    /// `openssl rand -hex 32`).
    #[arg(
        long,
        env = "AGENT_STREAM_AUTH_SECRET",
        hide_env_values = true,
        conflicts_with = "auth_secret_file"
    )]
    pub auth_secret: Option<String>,

    /// File holding the secret (a trailing newline is ignored), e.g. a Docker or
    /// Kubernetes secret.
    #[arg(long, env = "AGENT_STREAM_AUTH_SECRET_FILE", value_name = "PATH")]
    pub auth_secret_file: Option<PathBuf>,
}

impl SecretArgs {
    /// The secret, if one was given. An empty `AGENT_STREAM_AUTH_SECRET=` counts as none.
    pub fn secret(&self) -> anyhow::Result<Option<Secret>> {
        let raw = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(secret), _) if !secret.is_empty() => secret.clone().into_bytes(),
            (_, Some(path)) => {
                let mut bytes = std::fs::read(path).with_context(|| {
                    format!("could not read --auth-secret-file {}", path.display())
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            _ => return Ok(None),
        };
        Ok(Some(Secret::new(raw)?))
    }
}

/// The auth flags of `serve` and `demo`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Auth")]
pub struct AuthConfig {
    #[command(flatten)]
    pub secret: SecretArgs,

    /// Serve without auth: every caller may read and write every process. Allowed on a
    /// loopback address only (127.0.0.1, ::1).
    #[arg(long, env = "AGENT_STREAM_NO_AUTH")]
    pub no_auth: bool,

    /// Serve without auth on any address: only when something in front of the service
    /// (a proxy that authenticates, a private network) decides who gets in.
    #[arg(long, env = "AGENT_STREAM_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Longest token lifetime accepted: a token whose `exp` lies further ahead is
    /// refused (401), e.g. `30d`, `12h`.
    #[arg(long, hide_short_help = true, env = "AGENT_STREAM_MAX_TOKEN_TTL", default_value = "30d",
        value_parser = humantime::parse_duration)]
    pub max_token_ttl: Duration,
}

const NO_SECRET: &str = "no auth secret: set --auth-secret (or AGENT_STREAM_AUTH_SECRET; at least \
    32 bytes, e.g. `openssl rand -hex 32`) or --auth-secret-file, and mint tokens with \
    `agent-stream token`. To serve without auth, pass --no-auth (loopback addresses only) or \
    --insecure-no-auth (any address)";

impl AuthConfig {
    /// Auth for serving on `listen`: the verifier, or `None` when auth was explicitly
    /// disabled and may be there. Errors name the flags that fix them.
    pub fn verifier(&self, listen: SocketAddr) -> anyhow::Result<Option<Arc<Verifier>>> {
        if let Some(secret) = self.given_secret()? {
            return Ok(Some(Arc::new(self.verifier_for(&secret))));
        }
        anyhow::ensure!(self.no_auth || self.insecure_no_auth, NO_SECRET);
        self.check_open(listen)?;
        Ok(None)
    }

    /// The verifier of tokens signed with `secret`, with this configuration's limits.
    pub fn verifier_for(&self, secret: &Secret) -> Verifier {
        Verifier::new(secret).with_max_ttl(self.max_token_ttl)
    }

    /// The secret `demo` serves with: the one given, none when auth was explicitly
    /// disabled (and may be on `listen`), else a fresh random one for this run.
    pub fn demo_secret(&self, listen: SocketAddr) -> anyhow::Result<Option<Secret>> {
        if let Some(secret) = self.given_secret()? {
            return Ok(Some(secret));
        }
        if self.no_auth || self.insecure_no_auth {
            self.check_open(listen)?;
            return Ok(None);
        }
        Ok(Some(Secret::generate()?))
    }

    /// The secret given, which may not come with a flag that disables auth. (Checked
    /// here rather than by clap, so that an empty `AGENT_STREAM_AUTH_SECRET=` counts as
    /// none.)
    fn given_secret(&self) -> anyhow::Result<Option<Secret>> {
        let secret = self.secret.secret()?;
        anyhow::ensure!(
            secret.is_none() || !(self.no_auth || self.insecure_no_auth),
            "an auth secret is set and auth is disabled (--no-auth or --insecure-no-auth): choose \
                one"
        );
        Ok(secret)
    }

    fn check_open(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if self.insecure_no_auth {
            tracing::warn!(address = %listen,
                "auth is disabled (--insecure-no-auth): every caller may read and write every \
                process");
            return Ok(());
        }
        anyhow::ensure!(
            listen.ip().is_loopback(),
            "refusing to serve {listen} without auth: --no-auth is for loopback addresses \
                (127.0.0.1, ::1) only. Set --auth-secret (or AGENT_STREAM_AUTH_SECRET) to require \
                tokens, or pass --insecure-no-auth if something in front of the service decides \
                who gets in"
        );
        tracing::info!(address = %listen, "auth is disabled (--no-auth) on a loopback address");
        Ok(())
    }
}

/// `agent-stream token`: mints a token for operators to hand out.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("covers").required(true).args(["processes", "all"])))]
pub struct TokenArgs {
    /// A process the token covers; repeat for more.
    #[arg(long = "process", value_name = "ID")]
    pub processes: Vec<String>,

    /// Cover every process (`"processes": "*"`).
    #[arg(long)]
    pub all: bool,

    /// `read` (follow, snapshot, show) or `write` (register, append, finish, and read).
    #[arg(long, value_enum)]
    pub scope: Scope,

    /// How long the token is valid, e.g. `1h`, `24h`, `30d`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// Who the token is for (its `sub` claim), for your records.
    #[arg(long)]
    pub subject: Option<String>,

    #[command(flatten)]
    pub secret: SecretArgs,
}

impl TokenArgs {
    /// The token the arguments ask for.
    pub fn mint(&self) -> anyhow::Result<String> {
        let secret = self.secret.secret()?.context(
            "no auth secret: set --auth-secret (or AGENT_STREAM_AUTH_SECRET) or \
                --auth-secret-file to the secret the service runs with",
        )?;
        anyhow::ensure!(
            self.ttl >= Duration::from_secs(1),
            "--ttl must be at least 1s"
        );
        let processes = if self.all {
            Processes::All
        } else {
            Processes::Only(
                self.processes
                    .iter()
                    .map(|id| ProcessId::parse(id).with_context(|| format!("--process {id:?}")))
                    .collect::<anyhow::Result<_>>()?,
            )
        };
        Ok(Minter::new(&secret).mint(processes, self.scope, self.ttl, self.subject.clone())?)
    }
}

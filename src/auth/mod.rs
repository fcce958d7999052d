//! Authentication and authorization: HS256 JWTs that name the processes a caller may
//! touch and whether it may only read them or also write them.
//!
//! - [`claims`]: what a token says ([`Claims`]) and what a verified token allows
//!   ([`Grant`]), which the HTTP layer puts on every request it lets through.
//! - [`keys`]: the shared secret, and [`Verifier`] / [`Minter`] on top of `jsonwebtoken`
//!   with the algorithm pinned to HS256.
//! - [`config`]: the `--auth-secret` flags, the refusal to serve without auth unless
//!   told so, and the `token` command that mints tokens for operators.
//!
//! The reasons are in `adr/0004-auth.md`.

pub mod claims;
pub mod config;
pub mod keys;

pub use claims::{Claims, Grant, Processes, Scope};
pub use config::{AuthConfig, SecretArgs, TokenArgs};
pub use keys::{Minter, Secret, Verifier, MAX_TOKEN_TTL, MIN_SECRET_BITS, MIN_SECRET_BYTES};

/// Why a token was refused or could not be made. Every variant is the caller's (or
/// the operator's) to fix, so each message says what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "no token: send `Authorization: Bearer <token>`, the `access_token` query parameter \
        or the `{}` cookie",
        config::COOKIE
    )]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token is not signed with HS256 by this service's secret")]
    BadSignature,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
    #[error(
        "the auth secret (--auth-secret, AGENT_STREAM_AUTH_SECRET or --auth-secret-file) must \
        be at least {MIN_SECRET_BYTES} bytes, not {0}; generate one with e.g. `openssl rand -hex \
        32`"
    )]
    SecretTooShort(usize),
    #[error(
        "the auth secret (--auth-secret, AGENT_STREAM_AUTH_SECRET or --auth-secret-file) has \
        too little variety: {0}. Generate one with e.g. `openssl rand -hex 32`"
    )]
    SecretTooWeak(String),
    #[error(
        "the token is valid for longer than this service accepts ({max_days} days, \
        --max-token-ttl): mint one with a shorter --ttl"
    )]
    LifetimeTooLong { max_days: u64 },
    #[error("could not sign the token: {0}")]
    Signing(String),
}

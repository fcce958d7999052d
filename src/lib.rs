//! agent-stream: watch a remote coding agent work, live.
//!
//! Every message an agent produces is appended durably to a store (PostgreSQL, or the
//! in-memory default) with a gap-free `seq`, then pushed to a live feed (Redis Streams,
//! or in-process) under the stream ID `<seq>-0`. Readers follow a process over HTTP and
//! resume from any stream ID they saw, exactly. See `adr/0001` for why.
//!
//! The modules follow the architecture: [`domain`] (what things are), [`ports`] (what
//! the core needs from storage and live delivery), [`adapters`] (PostgreSQL, Redis,
//! memory), [`writer`] (the write path), [`follow`] (the read path), [`republish`] (the
//! safety net for a lost publish), [`http`] and
//! [`cli`] on top (with [`tail`], an HTTP client of the follow), [`startup`] wiring it all
//! from [`config`]. [`auth`] checks the tokens that say who may read and write which
//! processes. [`metrics`] names what `/metrics` reports. [`report`] says errors in one line.
//! [`sync`] takes locks.

#![forbid(unsafe_code)]

pub mod adapters;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod follow;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod report;
pub mod republish;
pub mod startup;
pub mod sync;
pub mod tail;
pub mod writer;

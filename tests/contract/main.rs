//! The contract (../shared/CONTRACT.md, restated in docs/contract.md), call by call, through
//! the public HTTP surface of a server bound to port 0. Most tests run on each backend
//! (`on_every_backend!`, from the test kit): the embedded memory backend, a real
//! PostgreSQL with the in-process feed, and PostgreSQL + Redis (`bash .ci/test` starts
//! them; without DATABASE_URL and REDIS_URL the real runs fail, they are never skipped).
//! `ports.rs` holds each port's adapters to the same tests below HTTP.

mod browser;

mod append;
mod append_rule;
mod auth;
mod bad_input;
mod caching;
mod catch_up;
mod cli;
mod compression;
mod concurrency;
mod connections;
mod cors;
mod follow;
mod foreign_entries;
mod fuzz;
mod hardening;
mod http1_follows;
mod kept_connections;
mod limits;
mod logs;
mod metrics;
mod model;
mod platform;
mod ports;
mod process_row;
mod processes;
mod redis_faults;
mod replica;
mod retention;
mod snapshot;
mod tail;
mod tls;
mod viewer;

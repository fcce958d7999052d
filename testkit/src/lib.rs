//! agent-stream's test kit: what the contract suite (tests/contract), the fault drills
//! (tests/drills) and the benches (benches/) share, in one crate instead of files
//! included by `#[path]`.
//!
//! - [`frame`]: the one reader of the follow wire formats (SSE, NDJSON);
//! - [`app`]: the contract suite's in-process server on each [`app::Backend`], its
//!   helpers that speak the contract, and [`app::Follow`], a strict follow read item by
//!   item; [`on_every_backend!`] runs a test once per backend;
//! - [`client`]: the drills' and benches' clients, which record what the server does
//!   (appenders, and followers that reconnect as real clients do) and judge it after;
//! - [`instances`]: throwaway PostgreSQL, Redis, HAProxy and agent-stream processes;
//! - [`rig`]: one drill's world built from those, and [`rig::Checks`]; [`fleet`]: several
//!   instances behind HAProxy, and what a kill and a drain cost their followers;
//! - [`fixtures`]: messages to append.

pub mod app;
pub mod client;
pub mod fixtures;
pub mod fleet;
pub mod frame;
pub mod instances;
pub mod rig;

/// Runs each listed `async fn name(app: TestApp)` once per backend, on a server from
/// `TestApp::spawn` or from `spawn = path;` (an `async fn(Backend) -> TestApp`, e.g. one
/// that turns auth on): `memory::name` (the memory store and in-process feed),
/// `postgres::name` (PostgreSQL with the in-process feed) and `real::name` (PostgreSQL
/// and Redis).
#[macro_export]
macro_rules! on_every_backend {
    (spawn = $spawn:path; $($name:ident),* $(,)?) => {
        $crate::on_every_backend!(@backend memory, Memory, $spawn; $($name),*);
        $crate::on_every_backend!(@backend postgres, Postgres, $spawn; $($name),*);
        $crate::on_every_backend!(@backend real, Real, $spawn; $($name),*);
    };
    (@backend $module:ident, $backend:ident, $spawn:path; $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($spawn($crate::app::Backend::$backend).await).await
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_every_backend!(spawn = $crate::app::TestApp::spawn; $($name),*);
    };
}

/// Runs each named test on the Redis Cluster backend too, in a `cluster` module (the
/// subset chosen in adr/0013: append, follow, resume, many followers, trims, refused
/// and lost entries). `spawn = path;` spawns the app otherwise.
#[macro_export]
macro_rules! on_the_cluster {
    (spawn = $spawn:path; $($name:ident),* $(,)?) => {
        $crate::on_every_backend!(@backend cluster, Cluster, $spawn; $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::on_the_cluster!(spawn = $crate::app::TestApp::spawn; $($name),*);
    };
}

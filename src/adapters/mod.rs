//! Adapters: the ports implemented on real infrastructure ([`postgres`], [`redis`]) and
//! in memory ([`memory`], the embedded default and the fast unit-test backend), and the
//! TLS both real ones use ([`tls`]).

pub mod health;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod tls;

//! Adapters: the ports implemented on real infrastructure ([`postgres`], [`redis`]) and
//! in memory ([`memory`], the embedded default and the fast unit-test backend).

pub mod health;
pub mod memory;
pub mod postgres;
pub mod redis;

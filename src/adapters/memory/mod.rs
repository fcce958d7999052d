//! The embedded default: a store and a live feed that live in the server's memory.
//! Nothing survives a restart, and only one instance sees them; they exist so that the
//! service runs with nothing installed, and so the contract tests run fast.

mod feed;
mod store;

pub use feed::InProcessFeed;
pub use store::MemoryStore;

//! Ports: what the write and read paths need from the outside world, as traits. The
//! store is the truth; the live feed only makes delivery fast. Each has a PostgreSQL or
//! Redis adapter and an in-memory one (see [`crate::adapters`]).

mod feed;
mod store;

pub use feed::{FeedError, FeedEvent, FeedNext, FeedSender, FeedSubscription, LiveFeed, Published};
pub use store::{
    AppendOutcome, Appended, Epoch, MessageSink, MessageStore, Registration, StoreError,
};

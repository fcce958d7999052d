//! The domain: what a process, a message and a stream ID are, and the rules that make
//! client input acceptable. Nothing here knows about HTTP, PostgreSQL or Redis.

mod error;
pub mod ijson;
mod message;
mod process;
mod stream_id;

pub use error::DomainError;
pub use message::{
    end_json, end_line, wire_timestamp, NewMessage, StoredMessage, MAX_MESSAGE_ID_BYTES,
};
pub use process::{FinishStatus, ProcessId, ProcessInfo, ProcessStatus, RecentProcess};
pub use stream_id::{Cursor, StreamId};

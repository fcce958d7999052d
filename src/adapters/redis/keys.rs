//! Every Redis key and stream-entry field agent-stream uses, in one place.
//!
//! One key per process, `<prefix>process:<process_id>:stream`, so every command touches
//! a single key (and a single slot in Redis Cluster). The prefix is empty by default and
//! set when Redis is shared. A process id is only `A-Z a-z 0-9 . _ -`
//! ([`ProcessId`] checks it), so no client input can name another key.

use crate::domain::ProcessId;

/// The entry field that carries a message's wire JSON; the entry ID is `<seq>-0`.
pub const MESSAGE_FIELD: &str = "message";

/// The entry field that carries the store's epoch (adr/0007), on every entry this
/// service writes: followers deliver only entries of their own store's epoch.
pub const EPOCH_FIELD: &str = "epoch";

/// The entry field of a message too large to go through Redis (over
/// `--stream-inline-bytes`): its value is the size of the message's JSON, and
/// followers read the message itself from the store. The entry ID is `<seq>-0`.
pub const STORED_FIELD: &str = "stored";

/// The entry field of the end marker, `{"status": "…"}`; the entry ID is `<last seq>-1`.
pub const END_FIELD: &str = "end";

/// Names the keys of one deployment.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The stream of one process.
    pub fn stream(&self, process: &ProcessId) -> String {
        format!("{}process:{}:stream", self.prefix, process)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_key_is_the_contract_s() {
        let process = ProcessId::parse("p-1").unwrap();
        assert_eq!(Keys::default().stream(&process), "process:p-1:stream");
        assert_eq!(
            Keys::new("tenant:").stream(&process),
            "tenant:process:p-1:stream"
        );
    }
}

//! Errors of client input: each one is the client's to fix, so each becomes a 4xx.

/// Why a process id, cursor, status or message body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("process id must be 1 to 128 characters of A-Z a-z 0-9 . _ -")]
    InvalidProcessId,
    #[error(
        "cursor must be a stream ID `<seq>-<n>` or a bare `<seq>` (decimal, at most \
        9223372036854775807): got {0:?}"
    )]
    InvalidCursor(String),
    #[error("{0}")]
    InvalidStatus(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("message is {size} bytes, over the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("the array holds more than {limit} messages; send them in several requests")]
    TooManyMessages { limit: usize },
}

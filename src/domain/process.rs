//! A process: one run of a coding agent, identified by a [`ProcessId`], `running` until
//! finished with a [`FinishStatus`].

use std::fmt;

use chrono::{DateTime, Utc};

use super::{DomainError, StreamId};

/// A validated process id: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
///
/// The character set is what keeps a client from naming a Redis key outside its process:
/// no `:`, `*`, `{`, space or control character can reach a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId(String);

impl ProcessId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.chars().all(valid_char) {
            return Err(DomainError::InvalidProcessId);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The status a process is finished with, such as `succeeded`, `failed` or `cancelled`:
/// 1 to 64 characters of `A-Z a-z 0-9 . _ -`, anything but `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishStatus(String);

impl FinishStatus {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if raw.is_empty() || raw.len() > 64 || !raw.chars().all(valid_char) {
            return Err(DomainError::InvalidStatus(
                "status must be 1 to 64 characters of A-Z a-z 0-9 . _ -, such as \"succeeded\""
                    .into(),
            ));
        }
        if raw == ProcessStatus::RUNNING {
            return Err(DomainError::InvalidStatus(
                "a process cannot be finished as \"running\"; use a final status such as \
                    \"succeeded\", \"failed\" or \"cancelled\""
                    .into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FinishStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessStatus {
    Running,
    Finished(FinishStatus),
}

impl ProcessStatus {
    pub const RUNNING: &'static str = "running";

    /// Reads a status as stored: `running`, or the status the process was finished with.
    pub fn from_stored(raw: &str) -> Self {
        if raw == Self::RUNNING {
            Self::Running
        } else {
            Self::Finished(FinishStatus(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Running => Self::RUNNING,
            Self::Finished(status) => status.as_str(),
        }
    }

    pub fn finished(&self) -> Option<&FinishStatus> {
        match self {
            Self::Running => None,
            Self::Finished(status) => Some(status),
        }
    }
}

/// What is known of a process: its status and how far its stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub process_id: ProcessId,
    pub status: ProcessStatus,
    /// The seq of the last message appended; 0 when there is none.
    pub last_seq: u64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl ProcessInfo {
    /// How a process that is not known yet reads to a caller allowed to read it: running,
    /// with no messages. The platform opens a process's page before its agent has
    /// started, and that page must wait for the first message, not fail.
    pub fn not_known_yet(process_id: ProcessId) -> Self {
        Self {
            process_id,
            status: ProcessStatus::Running,
            last_seq: 0,
            created_at: Utc::now(),
            finished_at: None,
        }
    }

    pub fn last_stream_id(&self) -> StreamId {
        StreamId::message(self.last_seq)
    }

    /// The stream ID of the end event: it sorts right after the last message.
    pub fn end_stream_id(&self) -> StreamId {
        StreamId::end(self.last_seq)
    }
}

/// A process as the list of recent processes shows it: with when it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentProcess {
    pub info: ProcessInfo,
    /// When it was last registered, appended to or finished.
    pub last_activity: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ids_of_the_allowed_characters_are_accepted() {
        for ok in [
            "a",
            "A-z_0.9",
            "6f1c2d4e-1b2a-4c3d-9e8f-0a1b2c3d4e5f",
            &"x".repeat(128),
        ] {
            assert_eq!(ProcessId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn process_ids_that_could_name_another_key_are_refused() {
        for bad in [
            "",
            "a:b",
            "a b",
            "*",
            "{a}",
            "é",
            "a\n",
            "../x",
            &"x".repeat(129),
        ] {
            assert_eq!(
                ProcessId::parse(bad),
                Err(DomainError::InvalidProcessId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn running_is_not_a_finish_status() {
        assert!(FinishStatus::parse("running").is_err());
        assert!(FinishStatus::parse("").is_err());
        assert!(FinishStatus::parse("no spaces").is_err());
        assert_eq!(
            FinishStatus::parse("succeeded").unwrap().as_str(),
            "succeeded"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn allowed(c: char) -> bool {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
        }

        /// Strings near the rule: allowed characters of about the right length, with now
        /// and then one character from anywhere.
        fn id_like(max: usize) -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{0,{}}}", max + 3))
                    .unwrap(),
                (
                    proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{max}}}")).unwrap(),
                    any::<char>(),
                    any::<prop::sample::Index>(),
                )
                    .prop_map(|(id, c, at)| {
                        let mut chars: Vec<char> = id.chars().collect();
                        chars.insert(at.index(chars.len() + 1), c);
                        chars.into_iter().collect()
                    }),
                Just("running".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None,
                ..ProptestConfig::default() })]

            #[test]
            fn a_process_id_is_accepted_exactly_when_it_is_1_to_128_allowed_characters(raw in id_like(ProcessId::MAX_LEN)) {
                // Invariant: ProcessId::parse never panics, accepts iff 1..=128 chars of `A-Z a-z
                // 0-9 . _ -`, and keeps the text as is.
                let expected = (1..=128).contains(&raw.chars().count()) && raw.chars().all(allowed);
                match ProcessId::parse(&raw) {
                    Ok(id) => {
                        prop_assert!(expected, "{:?} was accepted", raw);
                        prop_assert_eq!(id.as_str(), raw.as_str());
                        prop_assert_eq!(id.to_string(), raw.clone());
                        prop_assert_eq!(ProcessId::parse(id.as_str()), Ok(id.clone()));
                    }
                    Err(error) => {
                        prop_assert!(!expected, "{:?} was refused", raw);
                        prop_assert_eq!(error, DomainError::InvalidProcessId);
                    }
                }
            }

            #[test]
            fn no_accepted_process_id_can_reach_outside_its_redis_key(raw in id_like(ProcessId::MAX_LEN)) {
                // Invariant: an accepted id holds no `:`, `*`, `{`, `}`, `[`, `?`, `/`, whitespace
                // or control character.
                if let Ok(id) = ProcessId::parse(&raw) {
                    let special = |c: char| ":*{}[]?/\\".contains(c) || c.is_whitespace() || c.is_control();
                    prop_assert!(!id.as_str().chars().any(special), "{:?}", id);
                }
            }

            #[test]
            fn a_finish_status_is_accepted_exactly_when_it_is_1_to_64_allowed_characters_other_than_running(raw in id_like(64)) {
                // Invariant: FinishStatus::parse never panics, accepts iff 1..=64 chars of `A-Z a-z
                // 0-9 . _ -` and not `running`, and keeps the text.
                let expected = (1..=64).contains(&raw.chars().count()) && raw.chars().all(allowed) && raw != "running";
                match FinishStatus::parse(&raw) {
                    Ok(status) => {
                        prop_assert!(expected, "{:?} was accepted", raw);
                        prop_assert_eq!(status.as_str(), raw.as_str());
                        let stored = ProcessStatus::from_stored(status.as_str());
                        prop_assert_eq!(stored.finished(), Some(&status));
                    }
                    Err(error) => {
                        prop_assert!(!expected, "{:?} was refused", raw);
                        prop_assert!(matches!(error, DomainError::InvalidStatus(_)));
                    }
                }
            }
        }
    }
}

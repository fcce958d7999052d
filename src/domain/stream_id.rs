//! Stream IDs: `<seq>-<n>`. A message's stream ID is `<seq>-0`, where `seq` is its
//! durable position in its process; the end event's is `<last seq>-1`, so it sorts right
//! after the last message. The same value is the Redis entry ID, the SSE `id:` and the
//! resume cursor, which is why a client can resume from any ID whether or not Redis
//! still holds it.

use std::fmt;

use super::DomainError;

/// A position in a process's stream, ordered as Redis orders entry IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub seq: u64,
    pub n: u64,
}

impl StreamId {
    /// Before the first message: "from the beginning".
    pub const ZERO: StreamId = StreamId { seq: 0, n: 0 };

    /// Seqs are PostgreSQL `bigint`s: nothing above this is a position.
    pub const MAX_SEQ: u64 = i64::MAX as u64;

    pub const fn message(seq: u64) -> Self {
        Self { seq, n: 0 }
    }

    pub const fn end(last_seq: u64) -> Self {
        Self {
            seq: last_seq,
            n: 1,
        }
    }

    /// Parses `<seq>-<n>` or a bare `<seq>`: plain decimal digits, nothing else.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let invalid = || DomainError::InvalidCursor(truncate(raw));
        let (seq, n) = match raw.split_once('-') {
            Some((seq, n)) => (seq, Some(n)),
            None => (raw, None),
        };
        let seq = parse_decimal(seq)
            .filter(|seq| *seq <= Self::MAX_SEQ)
            .ok_or_else(invalid)?;
        let n = match n {
            Some(n) => parse_decimal(n).ok_or_else(invalid)?,
            None => 0,
        };
        Ok(Self { seq, n })
    }
}

/// Only ASCII digits: `u64::from_str` would also take a leading `+`.
fn parse_decimal(raw: &str) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Leading zeros are fine (`007` is 7); what remains must fit a u64.
    let significant = raw.trim_start_matches('0');
    if significant.len() > 20 {
        return None;
    }
    significant
        .parse()
        .ok()
        .or(significant.is_empty().then_some(0))
}

/// Keeps error messages small whatever a client sends.
fn truncate(raw: &str) -> String {
    raw.chars().take(64).collect()
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.seq, self.n)
    }
}

/// Where a reader resumes: it is sent exactly what sorts after this stream ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor(pub StreamId);

impl Cursor {
    pub const START: Cursor = Cursor(StreamId::ZERO);

    /// Reads the cursor of a request. `after` (the query parameter) wins over
    /// `last_event_id` (the header); an empty value counts as not given, and none
    /// means from the beginning.
    pub fn from_request(
        after: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<Self, DomainError> {
        let after = after.filter(|value| !value.is_empty());
        let last_event_id = last_event_id.filter(|value| !value.is_empty());
        match after.or(last_event_id) {
            None => Ok(Self::START),
            Some(raw) => StreamId::parse(raw).map(Self),
        }
    }

    /// Messages with a seq above this one sort after the cursor: `<seq>-0 > cursor`.
    pub fn after_seq(self) -> u64 {
        self.0.seq
    }

    /// Whether a reader at this cursor has already seen the end of a process finished
    /// after `last_seq`.
    pub fn has_seen_end(self, last_seq: u64) -> bool {
        self.0 >= StreamId::end(last_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_and_bare_seqs_parse() {
        assert_eq!(StreamId::parse("42-0").unwrap(), StreamId::message(42));
        assert_eq!(StreamId::parse("42").unwrap(), StreamId::message(42));
        assert_eq!(StreamId::parse("7-1").unwrap(), StreamId::end(7));
        assert_eq!(StreamId::parse("0-0").unwrap(), StreamId::ZERO);
        assert_eq!(
            StreamId::parse("9223372036854775807").unwrap().seq,
            StreamId::MAX_SEQ
        );
    }

    #[test]
    fn malformed_cursors_are_refused() {
        assert_eq!(
            StreamId::parse("007-01").unwrap(),
            StreamId { seq: 7, n: 1 }
        );
        assert_eq!(
            StreamId::parse("000000000000000000000000042").unwrap(),
            StreamId::message(42)
        );
        for bad in [
            "",
            "-",
            "-1",
            "1-",
            "+1",
            "1-+0",
            "a",
            "1-0-0",
            " 1",
            "1.5",
            "0x10",
            "9223372036854775808",
            "99999999999999999999999",
        ] {
            assert!(StreamId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_query_parameter_wins_over_the_header() {
        let cursor = Cursor::from_request(Some("5-0"), Some("9-0")).unwrap();
        assert_eq!(cursor.after_seq(), 5);
        assert_eq!(
            Cursor::from_request(None, Some("9")).unwrap().after_seq(),
            9
        );
        assert_eq!(Cursor::from_request(None, None).unwrap(), Cursor::START);
        assert_eq!(
            Cursor::from_request(Some(""), Some("9-0"))
                .unwrap()
                .after_seq(),
            9,
            "an empty after is not given"
        );
    }

    #[test]
    fn the_end_id_sorts_after_the_last_message_and_before_the_next() {
        assert!(StreamId::message(5) < StreamId::end(5));
        assert!(StreamId::end(5) < StreamId::message(6));
        assert!(Cursor(StreamId::end(5)).has_seen_end(5));
        assert!(!Cursor(StreamId::message(5)).has_seen_end(5));
        assert_eq!(StreamId::end(5).to_string(), "5-1");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Strings that look like cursors: digits, dashes, signs, dots, spaces, letters.
        fn cursor_like() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[0-9]{0,22}",
                "[0-9]{1,22}-[0-9]{0,22}",
                "[0-9 +.x-]{0,12}",
                "[ \t]{0,2}[0-9]{1,4}(-[0-9]{1,4})?[ \t]{0,2}",
            ]
        }

        /// The documented grammar: `<seq>` or `<seq>-<n>`, each one or more ASCII digits,
        /// `seq` at most 9223372036854775807 and `n` a u64.
        fn accepted_by_grammar(raw: &str) -> Option<StreamId> {
            let number = |part: &str| {
                let significant = part.trim_start_matches('0');
                (!part.is_empty()
                    && significant.len() <= 20
                    && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| {
                    if significant.is_empty() {
                        Some(0)
                    } else {
                        significant.parse::<u128>().ok()
                    }
                })
                .flatten()
            };
            let (seq, n) = match raw.split_once('-') {
                Some((seq, n)) => (number(seq)?, number(n)?),
                None => (number(raw)?, 0),
            };
            Some(StreamId {
                seq: u64::try_from(seq)
                    .ok()
                    .filter(|seq| *seq <= StreamId::MAX_SEQ)?,
                n: u64::try_from(n).ok()?,
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None,
                ..ProptestConfig::default() })]

            #[test]
            fn a_stream_id_is_accepted_exactly_when_it_follows_the_grammar(raw in cursor_like()) {
                // Invariant: StreamId::parse never panics, and accepts exactly `<seq>[-<n>]`.
                let parsed = StreamId::parse(&raw);
                prop_assert_eq!(parsed.as_ref().ok().copied(), accepted_by_grammar(&raw), "{:?}",
                    raw);
                if let Err(error) = parsed {
                    prop_assert!(matches!(error, DomainError::InvalidCursor(_)));
                }
            }

            #[test]
            fn every_stream_id_round_trips_through_its_text(seq in 0..=StreamId::MAX_SEQ,
                n in any::<u64>()) {
                // Invariant: StreamId::parse(&id.to_string()) == id for any valid id, and a bare
                // seq is `<seq>-0`.
                let id = StreamId { seq, n };
                prop_assert_eq!(StreamId::parse(&id.to_string()), Ok(id));
                prop_assert_eq!(StreamId::parse(&seq.to_string()), Ok(StreamId::message(seq)));
            }

            #[test]
            fn seqs_above_the_bigint_range_are_refused(seq in (StreamId::MAX_SEQ + 1)..=u64::MAX,
                n in any::<u64>()) {
                // Invariant: no seq above i64::MAX is ever a position, bare or with an `n`.
                prop_assert!(StreamId::parse(&seq.to_string()).is_err());
                let with_n = format!("{seq}-{n}");
                prop_assert!(StreamId::parse(&with_n).is_err());
            }

            #[test]
            fn a_refusal_message_stays_small_whatever_was_sent(raw in ".{0,400}") {
                // Invariant: the error quotes at most 64 characters of the input.
                if let Err(DomainError::InvalidCursor(quoted)) = StreamId::parse(&raw) {
                    prop_assert!(quoted.chars().count() <= 64);
                    prop_assert!(raw.starts_with(&quoted));
                }
            }

            #[test]
            fn the_cursor_is_the_parameter_else_the_header_else_the_start(
                after in proptest::option::of(cursor_like()),
                header in proptest::option::of(cursor_like()),
            ) {
                // Invariant: Cursor::from_request never panics; it reads `after` if given
                // (non-empty), else the header, else the start.
                let cursor = Cursor::from_request(after.as_deref(), header.as_deref());
                let given = |value: Option<String>| value.filter(|value| !value.is_empty());
                let chosen = given(after).or(given(header));
                match chosen.as_deref() {
                    None => prop_assert_eq!(&cursor, &Ok(Cursor::START)),
                    Some(raw) => prop_assert_eq!(&cursor, &StreamId::parse(raw).map(Cursor)),
                }
                if let Ok(cursor) = cursor {
                    prop_assert!(cursor.after_seq() <= StreamId::MAX_SEQ);
                }
            }

            #[test]
            fn the_end_id_is_seen_exactly_from_itself_onwards(last in 0..StreamId::MAX_SEQ,
                seq in 0..=StreamId::MAX_SEQ, n in 0u64..4) {
                // Invariant: a cursor has seen the end of `last` iff it sorts at or after
                // `<last>-1`.
                let cursor = Cursor(StreamId { seq, n });
                prop_assert_eq!(cursor.has_seen_end(last), seq > last || (seq == last && n >= 1));
            }
        }
    }
}

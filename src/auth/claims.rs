//! What a token says and what it allows.
//!
//! A token's claims (its JWT payload):
//!
//! ```json
//! {"processes": ["p1", "p2"], "scope": "read", "exp": 1796000000, "iat": 1795913600, "sub": "ci"}
//! ```
//!
//! - `processes`: the process ids it covers, or the string `"*"` for every process.
//! - `scope`: `read` (follow, snapshot, show) or `write` (register, append, finish, and
//!   everything `read` allows: a writer already knows what it wrote, and a worker that
//!   restarts needs to see where its process stands).
//! - `exp` (required), `nbf`, `iat`, `sub` (who it was minted for, for the operator's
//!   records): the registered JWT claims. Other claims are ignored.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::ProcessId;

/// What a token lets its bearer do to the processes it covers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Follow, snapshot and show.
    Read,
    /// Register, append and finish, and everything `Read` allows.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    /// Whether a token of this scope may do what `needed` asks.
    pub fn includes(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The processes a token covers: `"*"` on the wire for all, else an array of ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawProcesses", into = "RawProcesses")]
pub enum Processes {
    All,
    Only(BTreeSet<ProcessId>),
}

impl Processes {
    pub fn covers(&self, process: &ProcessId) -> bool {
        match self {
            Self::All => true,
            Self::Only(ids) => ids.contains(process),
        }
    }
}

/// The wire form of [`Processes`], checked by `TryFrom`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawProcesses {
    Star(String),
    Ids(Vec<String>),
}

/// The one value `processes` may take as a string.
pub const ALL_PROCESSES: &str = "*";

impl TryFrom<RawProcesses> for Processes {
    type Error = String;

    fn try_from(raw: RawProcesses) -> Result<Self, Self::Error> {
        match raw {
            RawProcesses::Star(star) if star == ALL_PROCESSES => Ok(Self::All),
            RawProcesses::Star(other) => Err(format!(
                "processes must be \"*\" or an array of process ids, not the string {:?}",
                other.chars().take(32).collect::<String>()
            )),
            RawProcesses::Ids(ids) => ids
                .iter()
                .map(|id| {
                    ProcessId::parse(id).map_err(|_| {
                        format!(
                            "processes holds {:?}, which is not a process id (for every process, \
                                processes is the string \"*\")",
                            id.chars().take(32).collect::<String>()
                        )
                    })
                })
                .collect::<Result<BTreeSet<_>, _>>()
                .map(Self::Only),
        }
    }
}

impl From<Processes> for RawProcesses {
    fn from(processes: Processes) -> Self {
        match processes {
            Processes::All => Self::Star(ALL_PROCESSES.to_owned()),
            Processes::Only(ids) => {
                Self::Ids(ids.iter().map(|id| id.as_str().to_owned()).collect())
            }
        }
    }
}

/// A token's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub processes: Processes,
    pub scope: Scope,
    /// Expiry, in seconds since the Unix epoch. Required.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Who the token was minted for; informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// What a verified token (or a server without auth) allows. The HTTP layer puts one on
/// every request it checked, as a request extension: handlers that list processes
/// filter by it (`Extension<Grant>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    processes: Processes,
    scope: Scope,
}

impl Grant {
    pub fn new(processes: Processes, scope: Scope) -> Self {
        Self { processes, scope }
    }

    /// Everything: what a server without auth grants every caller.
    pub fn unrestricted() -> Self {
        Self::new(Processes::All, Scope::Write)
    }

    /// Whether it covers every process (a `"*"` token, or no auth).
    pub fn all(&self) -> bool {
        self.processes == Processes::All
    }

    pub fn processes(&self) -> &Processes {
        &self.processes
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Whether it may do what `needed` asks to `process`.
    pub fn allows(&self, process: &ProcessId, needed: Scope) -> bool {
        self.scope.includes(needed) && self.processes.covers(process)
    }

    /// May follow, snapshot and show `process`.
    pub fn can_read(&self, process: &ProcessId) -> bool {
        self.allows(process, Scope::Read)
    }

    /// May register, append to and finish `process`.
    pub fn can_write(&self, process: &ProcessId) -> bool {
        self.allows(process, Scope::Write)
    }
}

impl From<Claims> for Grant {
    fn from(claims: Claims) -> Self {
        Self::new(claims.processes, claims.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> ProcessId {
        ProcessId::parse(raw).unwrap()
    }

    fn parse(json: &str) -> Result<Claims, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn claims_name_processes_as_an_array_of_ids_or_a_star() {
        let some = parse(r#"{"processes":["p1","p-2"],"scope":"read","exp":10}"#).unwrap();
        assert_eq!(
            some.processes,
            Processes::Only([id("p1"), id("p-2")].into_iter().collect())
        );
        assert_eq!(some.scope, Scope::Read);
        let all =
            parse(r#"{"processes":"*","scope":"write","exp":10,"sub":"ci","jti":"x"}"#).unwrap();
        assert_eq!(all.processes, Processes::All);
        assert_eq!(all.sub.as_deref(), Some("ci"));
    }

    #[test]
    fn claims_that_are_not_the_contract_are_refused_with_a_reason() {
        let refused = |json: &str, says: &str| {
            let error = parse(json).expect_err(json);
            assert!(error.contains(says), "{json}: {error}");
        };
        refused(r#"{"processes":"p1","scope":"read","exp":10}"#, "\"*\"");
        refused(
            r#"{"processes":["p 1"],"scope":"read","exp":10}"#,
            "not a process id",
        );
        refused(
            r#"{"processes":["*"],"scope":"read","exp":10}"#,
            "not a process id",
        );
        refused(r#"{"processes":["p1"],"scope":"admin","exp":10}"#, "admin");
        refused(r#"{"processes":["p1"],"scope":"read"}"#, "exp");
        refused(r#"{"scope":"read","exp":10}"#, "processes");
    }

    #[test]
    fn claims_round_trip_through_their_wire_form() {
        for claims in [
            Claims {
                processes: Processes::All,
                scope: Scope::Write,
                exp: 5,
                iat: Some(1),
                nbf: None,
                sub: None,
            },
            Claims {
                processes: Processes::Only([id("a"), id("b")].into_iter().collect()),
                scope: Scope::Read,
                exp: 5,
                iat: None,
                nbf: Some(2),
                sub: Some("me".into()),
            },
        ] {
            let json = serde_json::to_string(&claims).unwrap();
            assert_eq!(parse(&json).unwrap(), claims, "{json}");
        }
        let all = serde_json::to_value(Processes::All).unwrap();
        assert_eq!(all, serde_json::json!("*"));
    }

    #[test]
    fn write_implies_read_and_neither_reaches_past_its_processes() {
        let reader = Grant::new(
            Processes::Only([id("a")].into_iter().collect()),
            Scope::Read,
        );
        assert!(reader.can_read(&id("a")) && !reader.can_write(&id("a")));
        assert!(!reader.can_read(&id("b")) && !reader.all());
        let writer = Grant::new(
            Processes::Only([id("a")].into_iter().collect()),
            Scope::Write,
        );
        assert!(writer.can_read(&id("a")) && writer.can_write(&id("a")));
        assert!(!writer.can_write(&id("b")));
        let everything = Grant::unrestricted();
        assert!(everything.all() && everything.can_write(&id("zzz")));
    }
}

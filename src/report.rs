//! Errors as one line for people (the terminal, a log line), each cause said once.
//!
//! Libraries often end their message with their source's, which an error chain then
//! says again (`relative URL without a base: relative URL without a base`, `Connection
//! refused (os error 111): Connection refused (os error 111)`): [`one_line`] leaves out
//! a cause whose text was already said.

/// The error and its causes, joined with `: `, each said once.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || said.iter().any(|earlier| earlier.contains(text)) {
            continue;
        }
        said.push(text.to_owned());
    }
    said.join(": ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("relative URL without a base")]
    struct Parse;

    /// Says its source's text in its own message too, as `sqlx::Error::Configuration` does.
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Repeats(#[source] Parse);

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let error = anyhow::Error::new(Repeats(Parse)).context("DATABASE_URL is not a valid URL");
        assert_eq!(
            format!("{error:#}"),
            "DATABASE_URL is not a valid URL: relative URL without a base: relative URL without a \
                base"
        );
        assert_eq!(
            one_line(&error),
            "DATABASE_URL is not a valid URL: relative URL without a base"
        );
    }

    #[test]
    fn distinct_causes_are_all_said_in_order() {
        let error = anyhow::anyhow!("connection refused")
            .context("could not reach 127.0.0.1:5432")
            .context("could not prepare PostgreSQL");
        assert_eq!(
            one_line(&error),
            "could not prepare PostgreSQL: could not reach 127.0.0.1:5432: connection refused"
        );
    }

    #[test]
    fn a_cause_repeated_in_its_wrapper_s_message_is_said_once() {
        let io = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let wrapped = anyhow::Error::new(sqlx::Error::Io(io)).context("migrating");
        assert_eq!(
            one_line(&wrapped),
            "migrating: error communicating with database: invalid peer certificate: UnknownIssuer"
        );
    }
}

//! `DATABASE_URL` (and `DATABASE_READ_URL`) read as libpq reads it, as far as sqlx allows.
//!
//! sqlx parses the URL (and libpq's `PG*` variables) itself; this module adds what
//! libpq does and sqlx does not:
//! - `sslmode=require` with a root certificate (`sslrootcert`, or `PGSSLROOTCERT`)
//!   verifies the chain, as `verify-ca` (libpq's rule; sqlx would not verify).
//! - `sslrootcert=system` (libpq 16) trusts the system's roots and means
//!   `sslmode=verify-full`; a weaker `sslmode` with it is an error, as in libpq.
//! - A root certificate file that cannot be read is an error at start that names it.
//! - A parameter sqlx does not know (libpq's `sslpassword`, `connect_timeout`, …) is
//!   dropped with a warning that names it: sqlx would log its value, which may be a
//!   secret.
//!
//! Two differences remain: sqlx trusts `sslrootcert` *beside* the system's roots,
//! where libpq trusts it alone; and sqlx 0.8's `verify-ca` checks the host name too,
//! as `verify-full` does (launchbadge/sqlx#3793: it misses the error rustls ≥ 0.23.24
//! gives for a name mismatch), which fails safe and is warned of at start.

use std::str::FromStr;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use url::Url;

use crate::adapters::tls;

/// What a malformed URL is told with, after the variable's name (never the URL
/// itself: it may hold a password).
pub const INVALID_URL: &str =
    "is not a valid PostgreSQL URL (postgres://user:password@host:port/database)";

/// The query parameters sqlx reads (besides `options[…]`); see its `PgConnectOptions`.
const SQLX_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The names of the root certificate parameter.
const ROOT_CERT_PARAMETERS: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];
const SSL_MODE_PARAMETERS: &[&str] = &["sslmode", "ssl-mode"];

/// `sslrootcert=system`: the system's trusted roots (libpq 16).
const SYSTEM_ROOTS: &str = "system";

/// The connect options of `database_url`, which messages call `variable`
/// (`DATABASE_URL`, or `DATABASE_READ_URL` for a read replica: the same rules apply).
pub fn connect_options(database_url: &str, variable: &str) -> anyhow::Result<PgConnectOptions> {
    // url's errors name the rule broken, never the URL (which may hold a password).
    let mut url = Url::parse(database_url)
        .map_err(|error| anyhow::anyhow!("{variable} {INVALID_URL}: {error}"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "postgres" | "postgresql"),
        "{variable} {INVALID_URL}"
    );
    let mut parameters: Vec<(String, String)> = Vec::new();
    for (key, value) in url.query_pairs().into_owned() {
        if SQLX_PARAMETERS.contains(&key.as_str()) || key.starts_with("options[") {
            parameters.push((key, value));
        } else {
            tracing::warn!(parameter = %key,
                "ignoring a {variable} parameter agent-stream does not use");
        }
    }
    let last = |names: &[&str], parameters: &[(String, String)]| {
        parameters
            .iter()
            .rev()
            .find(|(key, _)| names.contains(&key.as_str()))
            .map(|(_, value)| value.clone())
    };
    let root_cert = last(ROOT_CERT_PARAMETERS, &parameters)
        .or_else(|| std::env::var("PGSSLROOTCERT").ok())
        .filter(|path| !path.is_empty());
    let system_roots = root_cert.as_deref() == Some(SYSTEM_ROOTS);
    if system_roots {
        // sqlx trusts the system's roots in any case: only the mode is left to settle.
        parameters.retain(|(key, _)| !ROOT_CERT_PARAMETERS.contains(&key.as_str()));
        let mode =
            last(SSL_MODE_PARAMETERS, &parameters).or_else(|| std::env::var("PGSSLMODE").ok());
        anyhow::ensure!(
            mode.as_deref()
                .is_none_or(|mode| mode.eq_ignore_ascii_case("verify-full")),
            "{variable}: sslrootcert=system needs sslmode=verify-full (or no sslmode), as in libpq"
        );
        parameters.push(("sslmode".to_owned(), "verify-full".to_owned()));
    }
    url.set_query(None);
    if !parameters.is_empty() {
        url.query_pairs_mut().extend_pairs(&parameters);
    }
    let mut options = PgConnectOptions::from_str(url.as_str())
        .map_err(|error| anyhow::anyhow!("{variable} {INVALID_URL}: {error}"))?;
    if matches!(options.get_ssl_mode(), PgSslMode::Require) && root_cert.is_some() {
        options = options.ssl_mode(PgSslMode::VerifyCa);
    }
    if matches!(options.get_ssl_mode(), PgSslMode::VerifyCa) {
        tracing::warn!(
            "{variable}: sslmode=verify-ca checks the server's host name too (a known \
            sqlx 0.8 bug), as verify-full does: connect by a name its certificate is for"
        );
    }
    if let Some(root_cert) = root_cert.filter(|_| !system_roots) {
        if matches!(
            options.get_ssl_mode(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull
        ) {
            check_root_cert(&root_cert, variable)?;
        }
    }
    Ok(options)
}

/// Checks that a root certificate is usable before the first connection would find
/// out: a file (or, from `PGSSLROOTCERT`, PEM text as sqlx takes it there) with at
/// least one certificate.
fn check_root_cert(root_cert: &str, variable: &str) -> anyhow::Result<()> {
    if root_cert.trim_start().starts_with("-----BEGIN") {
        tls::pem_certificates(root_cert.as_bytes())
            .context("the root certificate given as PEM text in PGSSLROOTCERT is not usable")?;
        return Ok(());
    }
    let pem = std::fs::read(root_cert).with_context(|| {
        format!("the root certificate of {variable} (sslrootcert={root_cert}) cannot be read")
    })?;
    tls::pem_certificates(&pem).with_context(|| {
        format!("the root certificate of {variable} (sslrootcert={root_cert}) is not usable")
    })?;
    Ok(())
}

/// The server `options` connect to, for messages: `host:port`, or the socket.
pub fn server(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn mode(url: &str) -> PgSslMode {
        connect_options(url, "DATABASE_URL").unwrap().get_ssl_mode()
    }

    #[test]
    fn sslmode_is_read_from_the_url_and_prefer_is_the_default() {
        assert!(matches!(mode("postgres://u@db/x"), PgSslMode::Prefer));
        assert!(matches!(
            mode("postgres://u@db/x?sslmode=disable"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@db/x?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgresql://u@db/x?sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        let ca = std::env::temp_dir().join(format!("ca-{}.pem", uuid::Uuid::new_v4()));
        // PEM framing around bytes that are no certificate: only the framing is read
        // at start; the chain is checked by the handshake.
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(b"not checked here")
        );
        std::fs::write(&ca, pem).unwrap();
        let url = format!(
            "postgres://u@db/x?sslmode=require&sslrootcert={}",
            ca.display()
        );
        let verified = mode(&url);
        std::fs::remove_file(&ca).unwrap();
        assert!(matches!(verified, PgSslMode::VerifyCa));
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_a_weaker_mode() {
        assert!(matches!(
            mode("postgres://u@db/x?sslrootcert=system"),
            PgSslMode::VerifyFull
        ));
        let weaker = connect_options(
            "postgres://u@db/x?sslrootcert=system&sslmode=require",
            "DATABASE_URL",
        );
        assert!(weaker.unwrap_err().to_string().contains("verify-full"));
    }

    #[test]
    fn a_root_certificate_that_cannot_be_read_is_named_at_start() {
        let error = connect_options(
            "postgres://u@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "DATABASE_READ_URL",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}")
                .contains("of DATABASE_READ_URL (sslrootcert=/nonexistent/ca.pem) cannot be read"),
            "{error:#}"
        );
    }

    #[test]
    fn a_malformed_url_is_refused_without_repeating_it() {
        for url in [
            "not a url",
            "mysql://u:hunter2@db/x",
            "postgres://u:hunter2@db:port/x",
        ] {
            let error = format!("{:#}", connect_options(url, "DATABASE_URL").unwrap_err());
            assert!(
                error.starts_with(&format!("DATABASE_URL {INVALID_URL}")),
                "{error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn unknown_parameters_are_dropped_and_known_ones_kept() {
        let options = connect_options(
            "postgres://u@db:6543/x?sslpassword=hunter2&application_name=app&connect_timeout=3",
            "DATABASE_URL",
        )
        .unwrap();
        assert_eq!(options.get_application_name(), Some("app"));
        assert_eq!(server(&options), "db:6543");
    }
}

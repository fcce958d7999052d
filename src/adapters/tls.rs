//! TLS to PostgreSQL and Redis, as both adapters share it: rustls on ring (no OpenSSL
//! to build or link), trusting the system's roots (`/etc/ssl/certs`, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus a private CA when one is given.
//!
//! A handshake that fails is told in one sentence that names the server and the
//! reason ([`failure`]); sqlx and redis bury the rustls error under wrappers whose
//! messages repeat it, so it is dug out here.

use std::error::Error;
use std::io;
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::CertificateError;

/// Makes ring the process's rustls provider, which redis takes (sqlx names its own):
/// the build has only ring, but a dependency that brought in a second provider would
/// otherwise make redis's first TLS connection panic.
pub fn use_ring() {
    // An error means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a TLS handshake failed, when `error` or one of its causes says so.
pub fn failure(error: &anyhow::Error) -> Option<TlsFailure> {
    error.chain().find_map(tls_cause)
}

/// A TLS handshake that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate is signed by no authority we trust: its CA is missing.
    UntrustedIssuer,
    /// Any other reason, in words.
    Other(String),
}

impl TlsFailure {
    /// The reason in words; `how_to_trust` says how to give the CA an untrusted
    /// certificate needs (e.g. `sslrootcert=FILE in DATABASE_URL`).
    pub fn explain(&self, how_to_trust: &str) -> String {
        match self {
            Self::UntrustedIssuer => format!(
                "its certificate is signed by an authority that is not trusted here (give its CA \
                    with {how_to_trust})"
            ),
            Self::Other(reason) => reason.clone(),
        }
    }
}

/// `error` itself as a TLS failure: a rustls error (bare, inside an `io::Error`, or
/// inside the `Arc` redis keeps its causes in), or sqlx's own TLS error.
fn tls_cause(error: &(dyn Error + 'static)) -> Option<TlsFailure> {
    if let Some(shared) = error.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
        return tls_cause(&**shared);
    }
    if let Some(rustls) = rustls_error(error) {
        return Some(describe(rustls));
    }
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Tls(cause)) => {
            Some(tls_cause(&**cause).unwrap_or_else(|| TlsFailure::Other(cause.to_string())))
        }
        _ => None,
    }
}

fn rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    error.downcast_ref::<rustls::Error>().or_else(|| {
        error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

fn describe(error: &rustls::Error) -> TlsFailure {
    let certificate = match error {
        rustls::Error::InvalidCertificate(certificate) => certificate,
        other => return TlsFailure::Other(format!("the TLS handshake failed ({other})")),
    };
    let reason = match certificate {
        CertificateError::UnknownIssuer => return TlsFailure::UntrustedIssuer,
        CertificateError::NotValidForName => {
            "its certificate is not valid for the host name".to_owned()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "its certificate is not valid for the name {} (it is for {})",
            expected.to_str(),
            if presented.is_empty() {
                "no name".to_owned()
            } else {
                presented
                    .iter()
                    .map(|name| bare_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "its certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "its certificate is not valid yet (or this machine's clock is wrong)".to_owned()
        }
        CertificateError::Revoked => "its certificate has been revoked".to_owned(),
        other => format!("its certificate does not verify ({other})"),
    };
    TlsFailure::Other(reason)
}

/// `localhost` for rustls's `DnsName("localhost")`, `10.0.0.1` for `IpAddress(10.0.0.1)`.
fn bare_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

/// The certificates of a PEM file's text; an error says what is wrong with it.
pub fn pem_certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow::anyhow!("it is not valid PEM ({error})"))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    );
    Ok(certificates)
}

/// The system's trusted roots and `extra`, as one PEM bundle: what redis needs to trust
/// a private CA *beside* the system's roots (given a root certificate, it trusts only
/// that one).
pub fn system_roots_and(extra: &[CertificateDer<'_>]) -> Vec<u8> {
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::warn!(%error, "could not read some of the system's trusted certificates");
    }
    let mut pem = Vec::new();
    for certificate in system
        .certs
        .iter()
        .map(|c| &**c)
        .chain(extra.iter().map(|c| &**c))
    {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(certificate);
        for line in encoded.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_is_found_under_the_wrappers_of_sqlx_and_redis() {
        let rustls = || rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let in_io = || io::Error::new(io::ErrorKind::InvalidData, rustls());
        let from_sqlx = anyhow::Error::new(sqlx::Error::Io(in_io())).context("migrating");
        let from_redis = anyhow::Error::new(redis::RedisError::from(in_io())).context("PING");
        assert_eq!(failure(&from_sqlx), Some(TlsFailure::UntrustedIssuer));
        assert_eq!(failure(&from_redis), Some(TlsFailure::UntrustedIssuer));
    }

    #[test]
    fn sqlx_s_own_tls_errors_and_other_handshake_failures_are_told_in_words() {
        let refused = anyhow::Error::new(sqlx::Error::Tls("server does not support TLS".into()));
        assert_eq!(
            failure(&refused),
            Some(TlsFailure::Other("server does not support TLS".into()))
        );
        let expired = anyhow::Error::new(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        ));
        assert_eq!(
            failure(&expired).unwrap().explain("x"),
            "its certificate has expired"
        );
    }

    #[test]
    fn errors_that_are_not_about_tls_are_left_alone() {
        let refused = anyhow::Error::new(sqlx::Error::Io(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(failure(&refused), None);
        assert_eq!(failure(&anyhow::anyhow!("invalid peer certificate")), None);
    }

    #[test]
    fn the_bundle_holds_the_extra_certificate_after_the_system_s_roots() {
        let extra = CertificateDer::from(vec![1u8, 2, 3, 4, 5]);
        let bundle = system_roots_and(std::slice::from_ref(&extra));
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(&bundle)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.last(), Some(&extra));
    }

    #[test]
    fn a_name_mismatch_says_which_names_the_certificate_is_for() {
        let mismatch = anyhow::Error::new(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("db.example").unwrap(),
                presented: vec![
                    "DnsName(\"db.internal\")".into(),
                    "IpAddress(10.0.0.7)".into(),
                ],
            },
        ));
        assert_eq!(
            failure(&mismatch).unwrap().explain("x"),
            "its certificate is not valid for the name db.example (it is for db.internal, 10.0.0.7)"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        assert!(pem_certificates(b"not a certificate").is_err());
        assert!(pem_certificates(b"").is_err());
    }
}

//! The shared secret, and tokens made and checked with it. The algorithm is pinned to
//! HS256: a token whose header names another (`none`, `RS256`, `HS512`, …) is refused
//! before its signature is looked at, and so is one with a `crit` header (extensions
//! this service does not implement, which RFC 7515 §4.1.11 says must then be refused).
//! `jsonwebtoken` compares HMACs in constant time (RustCrypto's `Mac::verify_slice`),
//! so timing tells nothing about the secret.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::claims::{Claims, Processes, Scope};
use super::AuthError;

/// Shortest secret accepted: HS256's own output size (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// Least material a secret must have, estimated as its length times log2 of the number
/// of distinct bytes in it (an upper bound of its entropy): 32 bytes of 16 different
/// characters (hex) are just enough, 32 spaces or `abab…` are not.
pub const MIN_SECRET_BITS: f64 = 128.0;
/// Default of `--max-token-ttl`: a token whose `exp` lies further ahead is refused.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew allowed between the minting and the checking machine.
pub const LEEWAY: Duration = Duration::from_secs(30);
const ALGORITHM: Algorithm = Algorithm::HS256;

/// The HMAC secret. Never printed: its `Debug` hides it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, AuthError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(AuthError::SecretTooShort(bytes.len()));
        }
        let mut seen = [false; 256];
        for byte in &bytes {
            seen[usize::from(*byte)] = true;
        }
        let distinct = seen.iter().filter(|seen| **seen).count();
        if distinct == 1 {
            return Err(AuthError::SecretTooWeak(
                "it is one byte repeated".to_owned(),
            ));
        }
        let bits = bytes.len() as f64 * (distinct as f64).log2();
        if bits < MIN_SECRET_BITS {
            return Err(AuthError::SecretTooWeak(format!(
                "{} bytes of only {distinct} different values hold at most {bits:.0} bits, under \
                    {MIN_SECRET_BITS}",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret (256 bits, as 64 hex characters), for a run that mints
    /// its own tokens (`demo`).
    pub fn generate() -> anyhow::Result<Self> {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|e| anyhow::anyhow!("could not get random bytes for a secret: {e}"))?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(hex.into_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Checks tokens: HS256 only and no `crit`, signature, then `exp` (required, and at
/// most `max_ttl` ahead) and `nbf`, then claims.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    max_ttl: Duration,
}

impl Verifier {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: DecodingKey::from_secret(&secret.0),
            validation,
            max_ttl: MAX_TOKEN_TTL,
        }
    }

    /// Refuses tokens whose `exp` lies more than `max_ttl` ahead (default
    /// [`MAX_TOKEN_TTL`]): a token that never expires cannot be taken back.
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        // The header first, so that a JSON error below can only be the claims'.
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            AuthError::Malformed(match e.kind() {
                ErrorKind::Json(_) => {
                    "its header is not a JWT header of a known algorithm".to_owned()
                }
                _ => "it is not three base64url parts separated by dots".to_owned(),
            })
        })?;
        if header.alg != ALGORITHM {
            return Err(AuthError::Malformed(format!(
                "its algorithm is {:?}; this service takes HS256 only",
                header.alg
            )));
        }
        if header.crit.is_some() {
            return Err(AuthError::Malformed(
                "its header has `crit`, naming extensions this service does not implement"
                    .to_owned(),
            ));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.into_kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::Json(e) => AuthError::InvalidClaims(e.to_string()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::InvalidClaims(format!("{claim} is required"))
                }
                ErrorKind::InvalidClaimFormat(claim) => {
                    AuthError::InvalidClaims(format!("{claim} has the wrong type"))
                }
                other => AuthError::Malformed(format!("{other:?}")),
            })?;
        let latest = jsonwebtoken::get_current_timestamp()
            .saturating_add(self.max_ttl.as_secs())
            .saturating_add(LEEWAY.as_secs());
        if claims.exp > latest {
            return Err(AuthError::LifetimeTooLong {
                max_days: self.max_ttl.as_secs() / (24 * 3600),
            });
        }
        Ok(claims)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

/// Makes tokens: what the `token` command and `demo` use.
pub struct Minter {
    key: EncodingKey,
}

impl Minter {
    pub fn new(secret: &Secret) -> Self {
        Self {
            key: EncodingKey::from_secret(&secret.0),
        }
    }

    /// A token for `processes` with `scope`, valid for `ttl` from now.
    pub fn mint(
        &self,
        processes: Processes,
        scope: Scope,
        ttl: Duration,
        subject: Option<String>,
    ) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        self.sign(&Claims {
            processes,
            scope,
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
            nbf: None,
            sub: subject,
        })
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(ALGORITHM), claims, &self.key)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProcessId;

    /// A valid secret, different for each `seed`.
    fn secret(seed: u8) -> Secret {
        Secret::new(
            (0..MIN_SECRET_BYTES as u8)
                .map(|i| i ^ seed)
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn only(id: &str) -> Processes {
        Processes::Only([ProcessId::parse(id).unwrap()].into_iter().collect())
    }

    #[test]
    fn a_minted_token_verifies_to_its_claims() {
        let token = Minter::new(&secret(1))
            .mint(
                only("p1"),
                Scope::Read,
                Duration::from_secs(60),
                Some("me".into()),
            )
            .unwrap();
        let claims = Verifier::new(&secret(1)).verify(&token).unwrap();
        assert_eq!((claims.processes, claims.scope), (only("p1"), Scope::Read));
        assert_eq!(claims.sub.as_deref(), Some("me"));
    }

    #[test]
    fn tokens_of_another_secret_another_algorithm_or_past_their_time_are_refused() {
        let verifier = Verifier::new(&secret(1));
        let other = Minter::new(&secret(2))
            .mint(only("p1"), Scope::Read, Duration::from_secs(60), None)
            .unwrap();
        assert_eq!(verifier.verify(&other), Err(AuthError::BadSignature));

        let now = jsonwebtoken::get_current_timestamp();
        let expired = Minter::new(&secret(1))
            .sign(&Claims {
                processes: only("p1"),
                scope: Scope::Read,
                exp: now - 2 * LEEWAY.as_secs(),
                iat: None,
                nbf: None,
                sub: None,
            })
            .unwrap();
        assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));
        let early = Minter::new(&secret(1))
            .sign(&Claims {
                processes: only("p1"),
                scope: Scope::Read,
                exp: now + 600,
                iat: None,
                nbf: Some(now + 300),
                sub: None,
            })
            .unwrap();
        assert_eq!(verifier.verify(&early), Err(AuthError::NotYetValid));

        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                processes: only("p1"),
                scope: Scope::Read,
                exp: now + 600,
                iat: None,
                nbf: None,
                sub: None,
            },
            &EncodingKey::from_secret(&secret(1).0),
        )
        .unwrap();
        assert!(
            matches!(verifier.verify(&hs512), Err(AuthError::Malformed(m)) if m.contains("HS256"))
        );
        assert!(matches!(
            verifier.verify("garbage"),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn secrets_of_one_repeated_byte_or_little_variety_are_refused() {
        assert_eq!(
            Secret::new(vec![b' '; 32]).unwrap_err(),
            AuthError::SecretTooWeak("it is one byte repeated".to_owned())
        );
        assert!(matches!(
            Secret::new(b"abababababababababababababababab".to_vec()),
            Err(AuthError::SecretTooWeak(why)) if why.contains("2 different")
        ));
        assert!(Secret::new(b"0123456789abcdef0123456789abcdef".to_vec()).is_ok());
    }

    #[test]
    fn tokens_with_a_crit_header_or_a_lifetime_past_the_maximum_are_refused() {
        let verifier = Verifier::new(&secret(1)).with_max_ttl(Duration::from_secs(3600));
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |exp| Claims {
            processes: only("p1"),
            scope: Scope::Read,
            exp,
            iat: None,
            nbf: None,
            sub: None,
        };
        let key = EncodingKey::from_secret(&secret(1).0);
        let mut critical = Header::new(ALGORITHM);
        critical.crit = Some(vec!["b64".to_owned()]);
        let token = jsonwebtoken::encode(&critical, &claims(now + 60), &key).unwrap();
        assert!(
            matches!(verifier.verify(&token), Err(AuthError::Malformed(m)) if m.contains("crit"))
        );

        let minter = Minter::new(&secret(1));
        let forever = minter.sign(&claims(u64::MAX)).unwrap();
        assert_eq!(
            verifier.verify(&forever),
            Err(AuthError::LifetimeTooLong { max_days: 0 })
        );
        let two_hours = minter.sign(&claims(now + 7200)).unwrap();
        assert!(matches!(
            verifier.verify(&two_hours),
            Err(AuthError::LifetimeTooLong { .. })
        ));
        let within = minter.sign(&claims(now + 3000)).unwrap();
        assert!(verifier.verify(&within).is_ok());
    }

    #[test]
    fn short_secrets_are_refused_and_generated_ones_are_long_enough() {
        assert_eq!(
            Secret::new(b"short".to_vec()).unwrap_err(),
            AuthError::SecretTooShort(5)
        );
        let generated = Secret::generate().unwrap();
        assert!(Secret::new(generated.0.clone()).is_ok());
        assert_eq!(format!("{generated:?}"), "Secret(***)");
    }
}

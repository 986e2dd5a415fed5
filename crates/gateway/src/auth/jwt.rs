//! JWT bearer tokens: signature by a key of the issuer's JWKS under an allow-listed asymmetric
//! algorithm, then `iss`, `aud`, `exp` and `nbf` (with a small leeway). The caller is `sub`;
//! the configured groups and team claims become its attributes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, Key};
use super::{AuthError, AuthMethod, Caller};
use crate::config::JwtSettings;
use crate::tasks::Tasks;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// An accepted algorithm name (the list and its reasons are configuration's,
/// [`crate::config::check_jwt_algorithm`]).
pub(crate) fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    crate::config::check_jwt_algorithm(name)?;
    Algorithm::from_str(name).map_err(|_| format!("'{name}' is not a JWS algorithm"))
}

pub(super) struct JwtVerifier {
    jwks: Arc<Jwks>,
    algorithms: Vec<Algorithm>,
    issuer: String,
    audiences: Vec<String>,
    leeway: u64,
    groups_claim: String,
    team_claim: String,
    /// Tokens already verified, by digest: a caller that sends the same token on every call
    /// pays for one signature check, not one per call.
    verified: moka::future::Cache<[u8; 32], Arc<Verified>>,
}

/// A verified token: its caller, until when it is valid, and the key that signed it. The entry
/// counts only while that very key is still in the JWKS: a refresh that drops (or replaces) the
/// key ends it, and the token is verified again.
struct Verified {
    caller: Arc<Caller>,
    expires: SystemTime,
    kid: Option<String>,
    key: Arc<Key>,
}

/// The key that signed a caller's token, held so that a stream opened with the token can end
/// when the key leaves the JWKS.
#[derive(Clone)]
pub(crate) struct SigningKeyHold {
    jwks: Arc<Jwks>,
    kid: Option<String>,
    key: Arc<Key>,
}

impl SigningKeyHold {
    /// Whether the very key that signed the token is still in the JWKS.
    pub(crate) fn still_trusted(&self) -> bool {
        self.jwks.lookup(self.kid.as_deref()).is_some_and(|key| Arc::ptr_eq(&key, &self.key))
    }

    /// Changes whenever the JWKS takes new keys.
    pub(crate) fn changes(&self) -> &crate::bell::Generation {
        self.jwks.changes()
    }
}

/// Verified tokens kept at most; a token is kept at most this long even if it expires later.
const VERIFIED_CAPACITY: u64 = 10_000;
const VERIFIED_TTL: Duration = Duration::from_secs(300);

impl JwtVerifier {
    pub(crate) async fn new(settings: &JwtSettings, tasks: &Tasks) -> anyhow::Result<JwtVerifier> {
        let algorithms = settings
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        Ok(JwtVerifier {
            jwks: Jwks::new(settings, tasks).await?,
            algorithms,
            issuer: settings.issuer.clone(),
            audiences: settings.audiences.clone(),
            leeway: settings.leeway_secs,
            groups_claim: settings.groups_claim.clone(),
            team_claim: settings.team_claim.clone(),
            verified: moka::future::Cache::builder().max_capacity(VERIFIED_CAPACITY).time_to_live(VERIFIED_TTL).build(),
        })
    }

    /// Verifies `token` and returns, with its caller, what says later whether the key that
    /// signed it is still in the JWKS.
    pub(super) async fn verify_holding(&self, token: &str) -> Result<(Arc<Caller>, Option<SigningKeyHold>), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken("too long".into()));
        }
        let digest = super::token_digest(token);
        if let Some(known) = self.verified.get(&digest).await {
            let key_in_hand = self.jwks.lookup(known.kid.as_deref()).is_some_and(|key| Arc::ptr_eq(&key, &known.key));
            if key_in_hand && SystemTime::now() < known.expires {
                return Ok((known.caller.clone(), Some(self.hold(&known))));
            }
            self.verified.invalidate(&digest).await;
        }
        let (caller, verified) = self.verify_signature(token).await?;
        let hold = match verified {
            Some(verified) => {
                let hold = self.hold(&verified);
                self.verified.insert(digest, Arc::new(verified)).await;
                Some(hold)
            }
            None => None,
        };
        Ok((caller, hold))
    }

    fn hold(&self, verified: &Verified) -> SigningKeyHold {
        SigningKeyHold { jwks: self.jwks.clone(), kid: verified.kid.clone(), key: verified.key.clone() }
    }

    async fn verify_signature(&self, token: &str) -> Result<(Arc<Caller>, Option<Verified>), AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => invalid("unsupported algorithm"),
            _ => invalid("malformed"),
        })?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let key = self.jwks.find(header.kid.as_deref()).await.ok_or_else(|| invalid("unknown signing key"))?;
        if key.algorithm.is_some_and(|a| a != header.alg) {
            return Err(invalid("the signing key is not for the token's algorithm"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not yet valid",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud, sub) is missing",
                ErrorKind::InvalidAlgorithm => "the signing key is not for the token's algorithm",
                _ => "malformed",
            })
        })?;
        let claims = data.claims;
        let sub =
            claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| invalid("no sub"))?;
        let groups = match claims.get(&self.groups_claim) {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        // Shared by every call that brings the token while it is kept (and by their streams).
        let caller = Arc::new(Caller {
            id: sub.to_owned(),
            method: AuthMethod::Jwt,
            groups,
            team: claims.get(&self.team_claim).and_then(Value::as_str).map(str::to_owned),
            issuer: Some(self.issuer.clone()),
        });
        // Kept until the token expires (without the leeway), when its claims say when.
        let expires = claims.get("exp").and_then(Value::as_u64).map(|exp| UNIX_EPOCH + Duration::from_secs(exp));
        let verified =
            expires.map(|expires| Verified { caller: caller.clone(), expires, kid: header.kid.clone(), key });
        Ok((caller, verified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        assert_eq!(parse_algorithm("RS256"), Ok(Algorithm::RS256));
        assert_eq!(parse_algorithm("EdDSA"), Ok(Algorithm::EdDSA));
        assert!(parse_algorithm("HS256").unwrap_err().contains("HMAC"));
        assert!(parse_algorithm("none").is_err());
    }
}

/// Property test: any bearer token, random or shaped like a JWT, is refused with a reason and
/// never panics the verifier.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// `{"alg":"RS256","kid":"k1"}`: a header that gets the token as far as the key lookup.
    const HEADER: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0";

    fn verifier(runtime: &tokio::runtime::Runtime) -> JwtVerifier {
        let dir = std::env::temp_dir().join(format!("snapgate-jwt-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
        let settings = JwtSettings {
            issuer: "https://idp.test".into(),
            audiences: vec!["snapgate".into()],
            jwks_file: Some(jwks),
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_secs: 5,
            groups_claim: "groups".into(),
            team_claim: "team".into(),
        };
        runtime.block_on(JwtVerifier::new(&settings, &Tasks::new())).unwrap()
    }

    proptest! {
        #[test]
        fn any_token_is_refused_with_a_reason(
            token in prop_oneof![
                "\\PC{0,120}",
                "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}",
                "[A-Za-z0-9_-]{0,200}".prop_map(|p| format!("{HEADER}.{p}.c2ln")),
            ],
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let verifier = verifier(&runtime);
            let refused = runtime.block_on(verifier.verify_holding(&token)).map(|(caller, _)| caller);
            prop_assert!(matches!(refused, Err(AuthError::InvalidToken(_))), "{refused:?}");
        }
    }
}

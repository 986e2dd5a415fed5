//! Authentication: who is calling. A tower layer turns the connection's client certificate
//! or the call's bearer token into a typed [`Caller`] in the request's extensions, or answers
//! UNAUTHENTICATED before the call reaches a handler (and so before any AWS call).
//! Authorization, which needs the resource, is [`policy`].

pub(crate) mod identity;
mod jwks;
pub(crate) mod jwt;
pub mod policy;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest;

use crate::config::AuthSettings;
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Mtls,
    Jwt,
    StaticToken,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::Jwt => "jwt",
            AuthMethod::StaticToken => "static_token",
        }
    }
}

/// An authenticated caller: the principal of every policy decision and audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// SPIFFE id, DNS name or CN of a client certificate; `sub` of a token.
    pub id: String,
    pub method: AuthMethod,
    pub groups: Vec<String>,
    pub team: Option<String>,
    /// The token's issuer, for JWT callers.
    pub issuer: Option<String>,
}

#[cfg(test)]
impl Caller {
    /// A static-token caller `id` in `groups`, for tests.
    pub(crate) fn with_groups(id: &str, groups: &[&str]) -> Caller {
        Caller {
            id: id.into(),
            method: AuthMethod::StaticToken,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            team: None,
            issuer: None,
        }
    }
}

/// Why a caller was refused; the message is safe to return and log (it never holds the
/// credential itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send 'authorization: Bearer <token>' or connect with a client certificate")]
    Missing,
    #[error("the authorization metadata is not a bearer token")]
    Malformed,
    #[error("invalid bearer token: {0}")]
    InvalidToken(String),
    #[error("client certificate not accepted: {0}")]
    Certificate(String),
}

impl AuthError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Certificate(_) => "certificate",
        }
    }
}

/// Checks bearer tokens: fixed ones first (a digest lookup), then JWTs.
pub struct Authenticator {
    /// Each token's caller, shared by all its calls (and their streams).
    static_tokens: HashMap<[u8; 32], Arc<Caller>>,
    jwt: Option<jwt::JwtVerifier>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    /// `tasks` owns the JWKS refreshes.
    pub async fn new(settings: &AuthSettings, metrics: Arc<Metrics>, tasks: &Tasks) -> anyhow::Result<Authenticator> {
        let static_tokens = settings
            .static_tokens
            .iter()
            .map(|t| {
                let caller = Caller {
                    id: t.principal.clone(),
                    method: AuthMethod::StaticToken,
                    groups: t.groups.clone(),
                    team: t.team.clone(),
                    issuer: None,
                };
                (token_digest(t.token.expose()), Arc::new(caller))
            })
            .collect();
        let jwt = match &settings.jwt {
            Some(jwt) => Some(jwt::JwtVerifier::new(jwt, tasks).await?),
            None => None,
        };
        Ok(Authenticator { static_tokens, jwt, metrics })
    }

    /// Authenticates one call from its `authorization` value and the connection's
    /// certificate identity. A token, when sent, must be valid even over mTLS: a bad
    /// credential is never silently ignored.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        certificate: Option<&Result<String, String>>,
    ) -> Result<Caller, AuthError> {
        self.authenticate_holding(authorization, certificate).await.map(|(caller, _)| Arc::unwrap_or_clone(caller))
    }

    /// As [`Authenticator::authenticate`], with the key that signed the caller's JWT when it
    /// brought one, so that its streams can end if the key is withdrawn.
    pub(crate) async fn authenticate_holding(
        &self,
        authorization: Option<&[u8]>,
        certificate: Option<&Result<String, String>>,
    ) -> Result<(Arc<Caller>, Option<jwt::SigningKeyHold>), AuthError> {
        let result = match (authorization, certificate) {
            (Some(header), _) => self.bearer(header).await,
            (None, Some(Ok(id))) => Ok((
                Arc::new(Caller {
                    id: id.clone(),
                    method: AuthMethod::Mtls,
                    groups: Vec::new(),
                    team: None,
                    issuer: None,
                }),
                None,
            )),
            (None, Some(Err(reason))) => Err(AuthError::Certificate(reason.clone())),
            (None, None) => Err(AuthError::Missing),
        };
        if let Err(error) = &result {
            self.metrics.authn_failure(error.label());
        }
        result
    }

    async fn bearer(&self, header: &[u8]) -> Result<(Arc<Caller>, Option<jwt::SigningKeyHold>), AuthError> {
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        if let Some(caller) = self.static_tokens.get(&token_digest(token)) {
            return Ok((caller.clone(), None));
        }
        match &self.jwt {
            Some(verifier) => verifier.verify_holding(token).await,
            None => Err(AuthError::InvalidToken("unknown token".into())),
        }
    }
}

/// Static tokens are kept and looked up as SHA-256 digests, so the lookup's timing says
/// nothing about the tokens' bytes and the process holds no copy of them.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, StaticToken};

    async fn authenticator() -> Authenticator {
        let settings = AuthSettings {
            static_tokens: vec![StaticToken {
                token: Secret::new("0123456789abcdef-token"),
                principal: "ci".into(),
                groups: vec!["backup".into()],
                team: Some("platform".into()),
            }],
            ..AuthSettings::default()
        };
        Authenticator::new(&settings, Metrics::new(), &Tasks::new()).await.unwrap()
    }

    #[tokio::test]
    async fn a_static_token_names_its_principal() {
        let auth = authenticator().await;
        let caller = auth.authenticate(Some(b"Bearer 0123456789abcdef-token"), None).await.unwrap();
        assert_eq!(caller.id, "ci");
        assert_eq!(caller.method, AuthMethod::StaticToken);
        assert_eq!(caller.team.as_deref(), Some("platform"));
        let caller = auth.authenticate(Some(b"bearer   0123456789abcdef-token "), None).await.unwrap();
        assert_eq!(caller.id, "ci");
    }

    #[tokio::test]
    async fn bad_credentials_are_refused_with_a_reason() {
        let auth = authenticator().await;
        assert_eq!(auth.authenticate(None, None).await, Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some(b"Basic dXNlcjpwYXNz"), None).await, Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some(b"Bearer "), None).await, Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some(&[0xff, 0xfe]), None).await, Err(AuthError::Malformed));
        assert!(matches!(auth.authenticate(Some(b"Bearer nope"), None).await, Err(AuthError::InvalidToken(_))));
        // A bad token is refused even over an authenticated connection.
        let cert = Ok("spiffe://example.org/svc".to_string());
        assert!(auth.authenticate(Some(b"Bearer nope"), Some(&cert)).await.is_err());
        assert_eq!(auth.authenticate(None, Some(&cert)).await.unwrap().method, AuthMethod::Mtls);
        let bad = Err("two URI SANs".to_string());
        assert!(matches!(auth.authenticate(None, Some(&bad)).await, Err(AuthError::Certificate(_))));
    }
}

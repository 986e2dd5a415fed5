//! `[auth]` and `[authz]`: how callers prove who they are, and the Cedar policies that decide
//! every call (deny by default). A call must carry a valid bearer token or come over mTLS with a
//! client certificate from `auth.tls.client_ca_file`; anything else is UNAUTHENTICATED.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Secret, Violations};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// TLS on the gRPC listener, and mTLS when a client CA is given.
    pub tls: Option<TlsSettings>,
    /// JWT bearer tokens, checked against an issuer's JWKS.
    pub jwt: Option<JwtSettings>,
    /// Fixed bearer tokens (what `snapgate dev` uses): the same path as JWTs, for local work.
    pub static_tokens: Vec<StaticToken>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM chain of the server certificate, leaf first (required).
    pub cert_file: PathBuf,
    /// PEM private key of the server certificate (PKCS#8, PKCS#1 or SEC1; required).
    pub key_file: PathBuf,
    /// PEM bundle of the CAs whose client certificates identify callers (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// `required`: no certificate, no connection. `optional`: callers without one must bring a
    /// bearer token.
    pub client_certificates: ClientCertificates,
    /// How often the files are checked for changes (they reload without a restart).
    pub reload_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            client_certificates: ClientCertificates::Required,
            reload_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificates {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry (required).
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one (required).
    pub audiences: Vec<String>,
    /// A JWKS document on disk (re-read when it changes).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https, or http on loopback), fetched and cached; refetched on an unknown
    /// key id, so rotated keys are picked up.
    pub jwks_url: Option<String>,
    /// PEM CAs that sign the JWKS server's certificate (default: the system's roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// How often the JWKS is refreshed even when no unknown key id shows up.
    pub jwks_refresh_secs: u64,
    /// Signature algorithms accepted (asymmetric only; `none` and HMAC never are).
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Claim holding the caller's groups (a string or a list of strings).
    pub groups_claim: String,
    /// Claim holding the caller's team.
    pub team_claim: String,
}

impl Default for JwtSettings {
    fn default() -> JwtSettings {
        JwtSettings {
            issuer: String::new(),
            audiences: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_secs: 30,
            groups_claim: "groups".into(),
            team_claim: "team".into(),
        }
    }
}

/// A fixed bearer token and the caller it stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token: Secret,
    pub principal: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub team: Option<String>,
}

/// Cedar policies that decide every call (deny by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzSettings {
    /// A Cedar policy file, validated against the shipped schema; reloaded on SIGHUP or change.
    pub policy_file: Option<PathBuf>,
    /// Policies given inline instead of a file (tests, `dev`).
    pub policies: Option<String>,
    /// How often the policy file is checked for changes.
    pub reload_secs: u64,
}

impl Default for AuthzSettings {
    fn default() -> AuthzSettings {
        AuthzSettings { policy_file: None, policies: None, reload_secs: 5 }
    }
}

impl AuthSettings {
    pub(crate) fn validate(&self, v: &mut Violations) {
        if let Some(tls) = &self.tls {
            v.check(!tls.cert_file.as_os_str().is_empty(), "auth.tls.cert_file", "must be set");
            v.check(!tls.key_file.as_os_str().is_empty(), "auth.tls.key_file", "must be set");
            v.check(
                tls.client_certificates != ClientCertificates::Required || tls.client_ca_file.is_some(),
                "auth.tls.client_certificates",
                "\"required\" needs auth.tls.client_ca_file",
            );
            v.positive("auth.tls.reload_secs", tls.reload_secs);
        }
        if let Some(jwt) = &self.jwt {
            v.check(!jwt.issuer.is_empty(), "auth.jwt.issuer", "must not be empty");
            v.check(!jwt.audiences.is_empty(), "auth.jwt.audiences", "must name at least one audience");
            match (&jwt.jwks_file, &jwt.jwks_url) {
                (Some(_), Some(_)) | (None, None) => v.push("auth.jwt", "set exactly one of jwks_file and jwks_url"),
                (None, Some(url)) => {
                    if let Err(e) = check_jwks_url(url) {
                        v.push("auth.jwt.jwks_url", e);
                    }
                }
                (Some(_), None) => {}
            }
            v.check(!jwt.algorithms.is_empty(), "auth.jwt.algorithms", "must not be empty");
            for (i, name) in jwt.algorithms.iter().enumerate() {
                if let Err(e) = check_jwt_algorithm(name) {
                    v.push(format!("auth.jwt.algorithms[{i}]"), e);
                }
            }
            v.at_least("auth.jwt.jwks_refresh_secs", jwt.jwks_refresh_secs, 10);
            v.check(jwt.leeway_secs <= 300, "auth.jwt.leeway_secs", "must be at most 300");
        }
        for (i, token) in self.static_tokens.iter().enumerate() {
            v.check(
                token.token.expose().len() >= 16,
                format!("auth.static_tokens[{i}].token"),
                "must be at least 16 characters",
            );
            v.check(!token.principal.is_empty(), format!("auth.static_tokens[{i}].principal"), "must not be empty");
        }
    }
}

impl AuthzSettings {
    pub(crate) fn validate(&self, v: &mut Violations) {
        v.check(
            self.policy_file.is_none() || self.policies.is_none(),
            "authz",
            "set policy_file or policies, not both",
        );
        v.positive("authz.reload_secs", self.reload_secs);
    }
}

/// A JWKS URL must be https, or http to a loopback host (a local IdP or a test).
pub(crate) fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("'{url}' is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) => {
            Ok(())
        }
        Some("http") => Err(format!("'{url}' must use https (http only to a loopback host)")),
        _ => Err(format!("'{url}' must be an https URL")),
    }
}

/// The JWS algorithms a token may be signed with: asymmetric only. HMAC is refused (its key
/// is a shared secret, and accepting it next to public keys is the classic key-confusion
/// attack), and `none` is not an algorithm.
pub(crate) const JWT_ALGORITHMS: [&str; 9] =
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

pub(crate) fn check_jwt_algorithm(name: &str) -> Result<(), String> {
    if JWT_ALGORITHMS.contains(&name) {
        Ok(())
    } else if name.starts_with("HS") {
        Err(format!("'{name}' is HMAC (a shared secret); use RS*, PS*, ES* or EdDSA"))
    } else {
        Err(format!("'{name}' is not an accepted JWS algorithm ({})", JWT_ALGORITHMS.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls_must_be_https_or_loopback_http() {
        assert!(check_jwks_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_jwks_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_jwks_url("http://localhost/jwks").is_ok());
        assert!(check_jwks_url("http://idp.example.com/jwks").is_err());
        assert!(check_jwks_url("ftp://idp.example.com/jwks").is_err());
        assert!(check_jwks_url("not a url").is_err());
    }

    #[test]
    fn only_asymmetric_jwt_algorithms_are_accepted() {
        assert!(check_jwt_algorithm("RS256").is_ok());
        assert!(check_jwt_algorithm("EdDSA").is_ok());
        assert!(check_jwt_algorithm("HS256").unwrap_err().contains("HMAC"));
        assert!(check_jwt_algorithm("none").is_err());
    }
}

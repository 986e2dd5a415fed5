//! One typed configuration, a section a file: `server`, `aws`, `watch`, `admin` and `http`,
//! `fair_share`, `auth` and `authz`, `audit`, `store`, `jobs`, `plans`. Each section owns its defaults (its
//! `Default`, the one place a default is written) and its validation, which names every broken
//! setting as a field violation, in the same style as a request's.
//!
//! Settings load from the defaults, then an optional TOML file, then `SNAPGATE_`-prefixed
//! environment variables (nested keys joined by `__`, e.g. `SNAPGATE_AWS__REGION`), and are
//! validated at start, so a bad setting stops the gateway with a message that names it.

mod audit;
mod auth;
mod aws;
mod fair_share;
mod http;
mod jobs;
mod plans;
mod server;
mod store;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::error::FieldViolation;
pub use audit::AuditSettings;
pub(crate) use auth::check_jwt_algorithm;
pub use auth::{AuthSettings, AuthzSettings, ClientCertificates, JwtSettings, StaticToken, TlsSettings};
pub use aws::{AccountRole, AwsSettings};
pub use fair_share::{CallerShare, FairShareSettings};
pub use http::{AdminSettings, HttpSettings};
pub use jobs::{DestinationLimit, JobSettings};
pub use plans::PlanSettings;
pub use server::ServerSettings;
pub use store::StoreSettings;
pub use watch::WatchSettings;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the gRPC server listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    pub server: ServerSettings,
    pub aws: AwsSettings,
    pub watch: WatchSettings,
    pub admin: AdminSettings,
    pub http: HttpSettings,
    pub fair_share: FairShareSettings,
    pub auth: AuthSettings,
    pub authz: AuthzSettings,
    pub audit: AuditSettings,
    pub store: StoreSettings,
    pub jobs: JobSettings,
    pub plans: PlanSettings,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            server: ServerSettings::default(),
            aws: AwsSettings::default(),
            watch: WatchSettings::default(),
            admin: AdminSettings::default(),
            http: HttpSettings::default(),
            fair_share: FairShareSettings::default(),
            auth: AuthSettings::default(),
            authz: AuthzSettings::default(),
            audit: AuditSettings::default(),
            store: StoreSettings::default(),
            jobs: JobSettings::default(),
            plans: PlanSettings::default(),
        }
    }
}

/// Why settings cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// The file or a variable does not fit the settings' shape (figment's message names it).
    #[error("configuration: {0}")]
    Shape(String),
    /// Settings of the right shape that break a rule, each named.
    #[error("invalid settings: {}", crate::error::summary(.0))]
    Invalid(Vec<FieldViolation>),
}

impl ConfigError {
    /// The broken rules, when the settings had the right shape.
    pub fn violations(&self) -> &[FieldViolation] {
        match self {
            ConfigError::Invalid(violations) => violations,
            _ => &[],
        }
    }
}

/// The broken rules a section's validation finds, each naming its setting.
#[derive(Debug, Default)]
pub(crate) struct Violations(Vec<FieldViolation>);

impl Violations {
    pub(crate) fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// A violation of `field` unless `ok`.
    pub(crate) fn check(&mut self, ok: bool, field: impl Into<String>, description: impl Into<String>) {
        if !ok {
            self.push(field, description);
        }
    }

    pub(crate) fn at_least(&mut self, field: impl Into<String>, value: u64, min: u64) {
        self.check(value >= min, field, format!("must be at least {min}"));
    }

    pub(crate) fn positive(&mut self, field: impl Into<String>, value: u64) {
        self.check(value > 0, field, "must be positive");
    }

    /// A rate: a positive, finite number.
    pub(crate) fn rate(&mut self, field: impl Into<String>, value: f64) {
        self.check(value.is_finite() && value > 0.0, field, "must be a positive number");
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(self.0)) }
    }
}

/// The top-level keys of [`Settings`], which `SNAPGATE_` variables may set.
const SECTIONS: [&str; 13] = [
    "listen",
    "server",
    "aws",
    "watch",
    "admin",
    "http",
    "fair_share",
    "auth",
    "authz",
    "audit",
    "store",
    "jobs",
    "plans",
];

impl Settings {
    /// Loads defaults, then `file`, then `SNAPGATE_`-prefixed environment variables (nested
    /// keys joined by `__`) through figment's own environment provider.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only the settings' own sections: other SNAPGATE_ variables belong to the command
        // line (SNAPGATE_CONFIG, SNAPGATE_LOG_FORMAT, SNAPGATE_ADDR) or to other tools.
        let env = Env::prefixed("SNAPGATE_")
            .filter(|key| {
                let section = key.as_str().split("__").next().unwrap_or_default().to_ascii_lowercase();
                SECTIONS.contains(&section.as_str())
            })
            .split("__");
        let settings: Settings = figment.merge(env).extract().map_err(|e| ConfigError::Shape(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot, every section; each violation names its setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Violations::default();
        self.server.validate(&mut v);
        self.aws.validate(&mut v);
        self.watch.validate(&mut v);
        self.fair_share.validate(&mut v);
        self.auth.validate(&mut v);
        self.authz.validate(&mut v);
        self.audit.validate(&mut v);
        self.store.validate(&mut v);
        self.jobs.validate(&mut v);
        self.plans.validate(&mut v);
        v.into_result()
    }

    /// What `serve` needs beyond `validate`: a way to authenticate callers and policies to
    /// authorize them, so a gateway never starts open.
    pub fn validate_for_serving(&self) -> Result<(), ConfigError> {
        let mut v = Violations::default();
        let mtls = self.auth.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        v.check(
            mtls || self.auth.jwt.is_some() || !self.auth.static_tokens.is_empty(),
            "auth",
            "no way to authenticate callers; set auth.tls.client_ca_file (mTLS), auth.jwt or auth.static_tokens",
        );
        v.check(
            self.authz.policy_file.is_some() || self.authz.policies.is_some(),
            "authz.policy_file",
            "is not set: without policies every call would be denied",
        );
        v.into_result()
    }
}

/// A value that must never be printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Reads an identifier made of digits as text even when it arrives as a number: figment's
/// environment provider reads `SNAPGATE_AWS__ACCOUNT_ID=123456789012` as an integer.
fn digits_as_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Digits {
        Text(String),
        Number(u64),
    }
    Ok(Option::<Digits>::deserialize(deserializer)?.map(|d| match d {
        Digits::Text(text) => text,
        Digits::Number(n) => n.to_string(),
    }))
}

#[cfg(test)]
// Jail's closures return figment's own Result, whose error is large: its shape, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    // figment's Jail sets variables for the closure only, under a lock, and restores them.
    use figment::Jail;

    #[test]
    fn environment_overrides_nested_settings() {
        Jail::expect_with(|jail| {
            jail.set_env("SNAPGATE_AWS__REGION", "eu-west-1");
            jail.set_env("SNAPGATE_SERVER__MAX_CONCURRENT_STREAMS", "7");
            jail.set_env("SNAPGATE_AWS__ACCOUNT_ID", "123456789012");
            jail.set_env("OTHER", "x");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.aws.region.as_deref(), Some("eu-west-1"));
            assert_eq!(s.server.max_concurrent_streams, 7);
            assert_eq!(s.aws.account_id.as_deref(), Some("123456789012"));
            assert_eq!(s.listen, Settings::default().listen);
            Ok(())
        });
    }

    #[test]
    fn a_file_is_read_and_the_environment_wins() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "listen = \"127.0.0.1:6000\"\n[aws]\nregion = \"us-west-2\"\n")?;
            jail.set_env("SNAPGATE_AWS__REGION", "eu-central-1");
            let s = Settings::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.listen.port(), 6000);
            assert_eq!(s.aws.region.as_deref(), Some("eu-central-1"));
            Ok(())
        });
    }

    #[test]
    fn other_snapgate_variables_are_not_settings() {
        Jail::expect_with(|jail| {
            jail.set_env("SNAPGATE_CONFIG", "/x.toml");
            jail.set_env("SNAPGATE_LOG_FORMAT", "json");
            jail.set_env("SNAPGATE_VENV", "/v");
            assert_eq!(Settings::load(None).map_err(|e| e.to_string())?, Settings::default());
            Ok(())
        });
    }

    #[test]
    fn bad_settings_are_named() {
        let error = |name: &str, value: &str| {
            let mut out = String::new();
            Jail::expect_with(|jail| {
                jail.set_env(name, value);
                out = Settings::load(None).expect_err("refused").to_string();
                Ok(())
            });
            out
        };
        assert!(error("SNAPGATE_AWS__REGION", "mars").contains("aws.region"));
        assert!(error("SNAPGATE_SERVER__MAX_CONCURRENT_STREAMS", "0").contains("server.max_concurrent_streams"));
        assert!(error("SNAPGATE_SERVER__BOGUS", "1").contains("bogus"));
        let listen = error("SNAPGATE_LISTEN", "nowhere");
        assert!(listen.contains("LISTEN") && listen.contains("SNAPGATE_"), "{listen}");
        assert!(error("SNAPGATE_AWS__ACCOUNT_ID", "12").contains("aws.account_id"));
        assert!(Settings::load(Some(Path::new("/nonexistent.toml"))).is_err());
        // A caller with no turns could never be served, by default or by an override.
        for shares in [
            "[fair_share]\nin_flight = 0\n",
            "[[fair_share.overrides]]\nprincipal = \"ci\"\ncalls_per_sec = 1.0\nburst = 1\nin_flight = 0\n",
        ] {
            Jail::expect_with(|jail| {
                jail.create_file("f.toml", shares)?;
                let refused = Settings::load(Some(Path::new("f.toml"))).expect_err("refused").to_string();
                assert!(refused.contains("fair_share.in_flight"), "{refused}");
                Ok(())
            });
        }
    }

    #[test]
    fn the_shipped_kubernetes_configuration_is_valid() {
        let manifest = include_str!("../../../../deploy/kubernetes/snapgate.yaml");
        let start = manifest.find("snapgate.toml: |").expect("the ConfigMap's snapgate.toml");
        let toml: String = manifest[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("---"))
            .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = std::env::temp_dir().join(format!("snapgate-k8s-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("snapgate.toml");
        std::fs::write(&file, &toml).unwrap();
        // In a jail: no SNAPGATE_ variable of the test's environment takes part.
        figment::Jail::expect_with(|_| {
            let settings = Settings::load(Some(&file)).expect("the shipped configuration loads");
            assert!(settings.http.listen.is_some(), "the manifest serves HTTP/JSON");
            assert_eq!(settings.fair_share.overrides.len(), 1);
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_new_sections_take_their_environment_variables_too() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SNAPGATE_HTTP__LISTEN", "127.0.0.1:8081");
            jail.set_env("SNAPGATE_FAIR_SHARE__BURST", "7");
            let settings = Settings::load(None).expect("loads");
            assert_eq!(settings.http.listen, Some(SocketAddr::from(([127, 0, 0, 1], 8081))));
            assert_eq!(settings.fair_share.burst, 7);
            Ok(())
        });
    }
}

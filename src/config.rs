//! One typed configuration: defaults, then an optional TOML file, then `SNAPGATE_`-prefixed
//! environment variables (nested keys joined by `__`, e.g. `SNAPGATE_AWS__REGION`). Validated
//! at start so a bad setting stops the gateway with a message that names it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the gRPC server listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    pub server: ServerSettings,
    pub aws: AwsSettings,
    pub watch: WatchSettings,
    pub admin: AdminSettings,
}

/// The plaintext admin listener: Prometheus metrics and HTTP health for probes and scrapers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`; none turns the listener off.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminSettings {
    fn default() -> AdminSettings {
        AdminSettings { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) }
    }
}

/// Progress streaming: how the coalesced pollers pace themselves and how streams are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSettings {
    /// Poll interval right after a change or a new watcher.
    pub min_poll_interval_ms: u64,
    /// Poll interval reached while nothing moves (each quiet round waits 1.5 times longer).
    pub max_poll_interval_ms: u64,
    /// An idle stream gets a HEARTBEAT event this often, to keep proxies from closing it.
    pub heartbeat_secs: u64,
    /// Open WatchCopy streams at most; more are RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// How long AWS errors may persist before open streams end with UNAVAILABLE.
    pub error_budget_secs: u64,
}

impl Default for WatchSettings {
    fn default() -> WatchSettings {
        WatchSettings {
            min_poll_interval_ms: 2_000,
            max_poll_interval_ms: 20_000,
            heartbeat_secs: 15,
            max_streams: 10_000,
            error_budget_secs: 60,
        }
    }
}

/// Limits of the gRPC server, set deliberately rather than left to tonic's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest request message accepted (requests are small; tonic's default is 4 MiB).
    pub max_request_bytes: usize,
    /// Largest response message sent (tonic leaves it unlimited).
    pub max_response_bytes: usize,
    /// HTTP/2 concurrent streams per connection (tonic leaves it unlimited).
    pub max_concurrent_streams: u32,
    /// Interval of HTTP/2 keepalive pings, which find dead peers behind silent proxies.
    pub keepalive_interval_secs: u64,
    /// How long a keepalive ping may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// Deadline of a unary call whose caller set none (`grpc-timeout` wins when shorter).
    pub request_timeout_secs: u64,
    /// How long shutdown waits for calls in flight before it stops anyway.
    pub shutdown_grace_secs: u64,
}

/// The AWS side. Credentials always come from the standard chain (environment, profile, web
/// identity, container and instance roles); these settings override the standard variables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSettings {
    /// Default region of copies (else `AWS_REGION` / the profile's region).
    pub region: Option<String>,
    /// RDS endpoint (else `AWS_ENDPOINT_URL_RDS` / `AWS_ENDPOINT_URL`); for emulators.
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call, retries with backoff and jitter included (default 5).
    pub max_attempts: Option<u32>,
    /// The account the gateway's own credentials belong to. Known, it lets the gateway tell
    /// shared sources from its own before calling AWS.
    pub account_id: Option<String>,
    /// Client-side limit of AWS calls per second, per account and region (RDS allows 12/s
    /// sustained per account, shared with every other client).
    pub rate_limit_per_sec: Option<f64>,
    /// Calls allowed at once before the rate applies.
    pub rate_limit_burst: Option<u32>,
    /// Other accounts copies may go to, each with the role the gateway assumes there.
    pub accounts: std::collections::BTreeMap<String, AccountRole>,
}

/// A role in another account, assumed with STS AssumeRole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRole {
    pub role_arn: String,
    /// The external id the role's trust policy requires, if any.
    pub external_id: Option<String>,
    /// Session name, shown in CloudTrail (default `snapgate`).
    pub session_name: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            server: ServerSettings::default(),
            aws: AwsSettings::default(),
            watch: WatchSettings::default(),
            admin: AdminSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            max_request_bytes: 256 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 1024,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            request_timeout_secs: 60,
            shutdown_grace_secs: 10,
        }
    }
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

impl AwsSettings {
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(5)
    }
    pub fn rate_limit_per_sec(&self) -> f64 {
        self.rate_limit_per_sec.unwrap_or(8.0)
    }
    pub fn rate_limit_burst(&self) -> u32 {
        self.rate_limit_burst.unwrap_or(40)
    }
}

/// The top-level keys of [`Settings`], which `SNAPGATE_` variables may set.
const SECTIONS: [&str; 5] = ["listen", "server", "aws", "watch", "admin"];

impl Settings {
    /// Loads defaults, then `file`, then the environment `env` (pass `std::env::vars()` in
    /// production and a fixed list in tests).
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings, String> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        for (key, raw) in env {
            let Some(rest) = key.strip_prefix("SNAPGATE_") else {
                continue;
            };
            let path = rest.to_ascii_lowercase().replace("__", ".");
            // Only the settings' own sections: other SNAPGATE_ variables belong to the command
            // line (SNAPGATE_CONFIG, SNAPGATE_LOG_FORMAT) or to other tools.
            let section = path.split('.').next().unwrap_or_default();
            if !SECTIONS.contains(&section) {
                continue;
            }
            // Figment reads `5` as a number and `true` as a boolean, as its Env provider does.
            let value: figment::value::Value = raw.parse().unwrap_or_else(|_| raw.clone().into());
            figment = figment.merge(Serialized::default(&path, value));
        }
        let settings: Settings = figment.extract().map_err(|e| format!("configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        if s.max_request_bytes < 1024 {
            return Err("server.max_request_bytes must be at least 1024".into());
        }
        if s.max_response_bytes < 64 * 1024 {
            return Err("server.max_response_bytes must be at least 65536".into());
        }
        if s.max_concurrent_streams == 0 {
            return Err("server.max_concurrent_streams must be at least 1".into());
        }
        if s.keepalive_interval_secs == 0 || s.keepalive_timeout_secs == 0 {
            return Err("server.keepalive_interval_secs and server.keepalive_timeout_secs must be positive".into());
        }
        if s.request_timeout_secs == 0 {
            return Err("server.request_timeout_secs must be positive".into());
        }
        if let Some(region) = &self.aws.region
            && !crate::rds::arn::is_region_name(region)
        {
            return Err(format!("aws.region: '{region}' is not a region name (like us-east-1)"));
        }
        if let Some(url) = &self.aws.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!("aws.endpoint_url: '{url}' must start with http:// or https://"));
        }
        let w = &self.watch;
        if w.min_poll_interval_ms < 50 || w.max_poll_interval_ms < w.min_poll_interval_ms {
            return Err("watch.min_poll_interval_ms must be at least 50 and at most watch.max_poll_interval_ms".into());
        }
        if w.heartbeat_secs == 0 || w.max_streams == 0 || w.error_budget_secs == 0 {
            return Err("watch.heartbeat_secs, watch.max_streams and watch.error_budget_secs must be positive".into());
        }
        let is_account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
        if let Some(account) = &self.aws.account_id
            && !is_account(account)
        {
            return Err(format!("aws.account_id: '{account}' is not a 12-digit account id"));
        }
        for (account, role) in &self.aws.accounts {
            if !is_account(account) {
                return Err(format!("aws.accounts.{account}: the key must be a 12-digit account id"));
            }
            let arn = crate::rds::Arn::parse(&role.role_arn);
            if !arn.as_ref().is_some_and(|a| a.service == "iam" && a.resource.starts_with("role/")) {
                return Err(format!("aws.accounts.{account}.role_arn: '{}' is not an IAM role ARN", role.role_arn));
            }
        }
        if !self.aws.rate_limit_per_sec().is_finite()
            || self.aws.rate_limit_per_sec() <= 0.0
            || self.aws.rate_limit_burst() == 0
        {
            return Err("aws.rate_limit_per_sec and aws.rate_limit_burst must be positive".into());
        }
        if self.aws.max_attempts == Some(0) || self.aws.max_attempts.is_some_and(|n| n > 20) {
            return Err("aws.max_attempts must be between 1 and 20".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn environment_overrides_nested_settings() {
        let s = Settings::load(
            None,
            env(&[
                ("SNAPGATE_AWS__REGION", "eu-west-1"),
                ("SNAPGATE_SERVER__MAX_CONCURRENT_STREAMS", "7"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.server.max_concurrent_streams, 7);
        assert_eq!(s.listen, Settings::default().listen);
    }

    #[test]
    fn a_file_is_read_and_the_environment_wins() {
        let dir = std::env::temp_dir().join(format!("snapgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:6000\"\n[aws]\nregion = \"us-west-2\"\n").unwrap();
        let s = Settings::load(Some(&path), env(&[("SNAPGATE_AWS__REGION", "eu-central-1")])).unwrap();
        assert_eq!(s.listen.port(), 6000);
        assert_eq!(s.aws.region.as_deref(), Some("eu-central-1"));
    }

    #[test]
    fn other_snapgate_variables_are_not_settings() {
        let s = Settings::load(
            None,
            env(&[("SNAPGATE_CONFIG", "/x.toml"), ("SNAPGATE_LOG_FORMAT", "json"), ("SNAPGATE_VENV", "/v")]),
        )
        .unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn bad_settings_are_named() {
        let err = Settings::load(None, env(&[("SNAPGATE_AWS__REGION", "mars")])).unwrap_err();
        assert!(err.contains("aws.region"), "{err}");
        let err = Settings::load(None, env(&[("SNAPGATE_SERVER__MAX_CONCURRENT_STREAMS", "0")])).unwrap_err();
        assert!(err.contains("server.max_concurrent_streams"), "{err}");
        let err = Settings::load(None, env(&[("SNAPGATE_SERVER__BOGUS", "1")])).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
        let err = Settings::load(None, env(&[("SNAPGATE_LISTEN", "nowhere")])).unwrap_err();
        assert!(err.contains("listen"), "{err}");
        assert!(Settings::load(Some(Path::new("/nonexistent.toml")), env(&[])).is_err());
    }
}

//! One typed configuration: defaults, then an optional TOML file, then `SNAPGATE_`-prefixed
//! environment variables (nested keys joined by `__`, e.g. `SNAPGATE_AWS__REGION`). Validated
//! at start so a bad setting stops the gateway with a message that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use snapgate_domain::AccountId;

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
    pub store: StoreSettings,
    pub jobs: JobSettings,
}

/// Where copy jobs are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` for PostgreSQL (replicas share its queue), or
    /// `sqlite:PATH`; empty: the SQLite file `snapgate.sqlite` in `data_dir`.
    pub url: Option<Secret>,
    /// Directory of the default SQLite file (created when missing).
    pub data_dir: PathBuf,
    /// Connections to PostgreSQL at most (SQLite uses a few).
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings { url: None, data_dir: PathBuf::from("snapgate-data"), max_connections: 10 }
    }
}

impl StoreSettings {
    /// The URL to connect to.
    pub fn url(&self) -> String {
        match &self.url {
            Some(url) if !url.expose().is_empty() => url.expose().to_owned(),
            _ => format!("sqlite://{}?mode=rwc", self.data_dir.join("snapgate.sqlite").display()),
        }
    }

    /// The URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        let url = self.url();
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url,
        }
    }
}

/// Copy jobs: how many copies may be in progress at once, and how the queue is worked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Copies from another region in progress at once per destination account and region
    /// (AWS allows 5 for cluster snapshots).
    pub cross_region_limit: u32,
    /// Copies within a region in progress at once per account and region; none: no limit.
    pub same_region_limit: Option<u32>,
    /// Other limits for particular destinations.
    pub limits: Vec<DestinationLimit>,
    /// How long a gateway holds a job it is starting; a gateway that dies holding it lets
    /// another take it after this.
    pub lease_secs: u64,
    /// How often the queue is looked at even when nothing wakes the dispatcher (other
    /// replicas' jobs, backoffs that end).
    pub dispatch_interval_ms: u64,
    /// First wait before a job AWS refused for its own limit (or throttling) is tried again;
    /// doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

/// The in-progress limit of one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationLimit {
    /// The destination account; none: every account.
    pub account: Option<String>,
    pub region: String,
    /// Cross-region copies in progress at once there.
    pub cross_region_limit: u32,
}

impl Default for JobSettings {
    fn default() -> JobSettings {
        JobSettings {
            cross_region_limit: 5,
            same_region_limit: None,
            limits: Vec::new(),
            lease_secs: 30,
            dispatch_interval_ms: 1000,
            retry_initial_ms: 2000,
            retry_max_ms: 60_000,
        }
    }
}

impl JobSettings {
    /// The cross-region limit of a destination.
    pub fn cross_region_limit_for(&self, account: &str, region: &str) -> u32 {
        self.limits
            .iter()
            .find(|l| l.region == region && l.account.as_deref().is_none_or(|a| a == account))
            .map_or(self.cross_region_limit, |l| l.cross_region_limit)
    }
}

/// How callers prove who they are. A call must carry a valid bearer token or come over mTLS
/// with a client certificate from `tls.client_ca_file`; anything else is UNAUTHENTICATED.
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
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM chain of the server certificate, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of the server certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM bundle of the CAs whose client certificates identify callers (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// `required`: no certificate, no connection. `optional`: callers without one must bring a
    /// bearer token.
    #[serde(default)]
    pub client_certificates: ClientCertificates,
    /// How often the files are checked for changes (they reload without a restart).
    #[serde(default = "default_tls_reload_secs")]
    pub reload_secs: u64,
}

fn default_tls_reload_secs() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertificates {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// A JWKS document on disk (re-read when it changes).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (https, or http on loopback), fetched and cached; refetched on an unknown
    /// key id, so rotated keys are picked up.
    pub jwks_url: Option<String>,
    /// PEM CAs that sign the JWKS server's certificate (default: the system's roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// How often the JWKS is refreshed even when no unknown key id shows up.
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Signature algorithms accepted (asymmetric only; `none` and HMAC never are).
    #[serde(default = "default_jwt_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Claim holding the caller's groups (a string or a list of strings).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim holding the caller's team.
    #[serde(default = "default_team_claim")]
    pub team_claim: String,
}

fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_jwt_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_team_claim() -> String {
    "team".into()
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

/// The HTTP/JSON listener: the same RPCs, authentication and authorization as gRPC, for curl,
/// Step Functions HTTP tasks and Argo HTTP templates. It takes the gRPC listener's TLS
/// (`auth.tls`) and limits (`server`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP/JSON listener (HTTP/1.1 and HTTP/2); none turns it off.
    pub listen: Option<SocketAddr>,
}

/// Each caller's share of the gateway: a token bucket of calls per caller (its principal id),
/// so one team's flood delays nobody else. Past it a call is RESOURCE_EXHAUSTED with RetryInfo
/// saying when the next is welcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FairShareSettings {
    /// Calls a second each caller may make, sustained.
    pub calls_per_sec: f64,
    /// Calls a caller may make at once (a fleet's watches open together: keep it above the
    /// largest fleet).
    pub burst: u32,
    /// AWS calls a second each caller's requests may cause, sustained: the source describes of
    /// its copies, its fresh reads and its cancels. The polls every watcher shares, and the
    /// starts of queued copies, are not counted (the queue takes callers in turn instead).
    pub aws_calls_per_sec: f64,
    /// AWS calls a caller's requests may cause at once (a fleet's admissions: keep it above
    /// the largest fleet of distinct sources).
    pub aws_burst: u32,
    /// AWS calls of one caller that may wait for one region's pace at once; its others wait
    /// their turn behind other callers', so one caller's burst delays another's call by at
    /// most this many calls at the region's rate.
    pub aws_in_flight: u32,
    /// Unary calls of one caller the gateway works on at once; its others wait their turn (up
    /// to the request timeout, then RESOURCE_EXHAUSTED with RetryInfo), so one caller's burst
    /// puts at most this many calls ahead of another caller's on the gateway's CPUs. Stream
    /// openings have their own turns (`server.max_stream_openings`).
    pub in_flight: u32,
    /// Other shares for some principals or groups; the first that matches a caller applies.
    pub overrides: Vec<CallerShare>,
}

impl Default for FairShareSettings {
    fn default() -> FairShareSettings {
        FairShareSettings {
            calls_per_sec: 200.0,
            burst: 1000,
            aws_calls_per_sec: 4.0,
            aws_burst: 200,
            aws_in_flight: 4,
            in_flight: 8,
            overrides: Vec::new(),
        }
    }
}

impl FairShareSettings {
    fn share_of(&self, id: &str, groups: &[String]) -> Option<&CallerShare> {
        self.overrides
            .iter()
            .find(|o| o.principal.as_deref() == Some(id) || o.group.as_ref().is_some_and(|g| groups.contains(g)))
    }

    /// The calls a second and burst of the caller `id` in `groups`.
    pub(crate) fn calls_of(&self, id: &str, groups: &[String]) -> (f64, u32) {
        self.share_of(id, groups).map_or((self.calls_per_sec, self.burst), |o| (o.calls_per_sec, o.burst))
    }

    /// The unary calls of caller `id` in `groups` the gateway works on at once.
    pub(crate) fn in_flight_of(&self, id: &str, groups: &[String]) -> u32 {
        self.share_of(id, groups).and_then(|o| o.in_flight).unwrap_or(self.in_flight)
    }

    /// The AWS calls a second and burst the requests of caller `id` in `groups` may cause.
    pub(crate) fn aws_calls_of(&self, id: &str, groups: &[String]) -> (f64, u32) {
        let share = self.share_of(id, groups);
        (
            share.and_then(|o| o.aws_calls_per_sec).unwrap_or(self.aws_calls_per_sec),
            share.and_then(|o| o.aws_burst).unwrap_or(self.aws_burst),
        )
    }
}

/// The share of the callers a principal id or a group names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerShare {
    pub principal: Option<String>,
    pub group: Option<String>,
    pub calls_per_sec: f64,
    pub burst: u32,
    /// This caller's `aws_calls_per_sec`; the default's when not set.
    #[serde(default)]
    pub aws_calls_per_sec: Option<f64>,
    /// This caller's `aws_burst`; the default's when not set.
    #[serde(default)]
    pub aws_burst: Option<u32>,
    /// This caller's `in_flight`; the default's when not set.
    #[serde(default)]
    pub in_flight: Option<u32>,
}

#[cfg(test)]
impl CallerShare {
    /// A share of `calls_per_sec` and `burst` for the principal `id`, or the group `id` when
    /// `group`; the rest the default's. Tests set the fields they are about on top.
    pub(crate) fn for_id(id: &str, group: bool, calls_per_sec: f64, burst: u32) -> CallerShare {
        let (principal, group) = if group { (None, Some(id.into())) } else { (Some(id.into()), None) };
        CallerShare {
            principal,
            group,
            calls_per_sec,
            burst,
            aws_calls_per_sec: None,
            aws_burst: None,
            in_flight: None,
        }
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
    /// Open connections at most, per listener; more are closed at once. Default: three
    /// quarters of what the open-file limit leaves after a reserve for AWS connections, the
    /// store and files.
    pub max_connections: Option<usize>,
    /// Open connections at most from one IP address. Off by default: behind a sidecar or a
    /// load balancer every caller is one peer.
    pub max_connections_per_peer: Option<usize>,
    /// Time a new connection has to complete TLS and send its HTTP/2 preface and SETTINGS (or,
    /// on the HTTP/JSON listener, its first bytes); silent peers are closed after it.
    pub handshake_timeout_secs: u64,
    /// A connection with no call in progress for this long is closed (HTTP/2: with GOAWAY).
    pub idle_timeout_secs: u64,
    /// Largest request header block (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`); JWTs included.
    pub max_header_list_bytes: u32,
    /// HTTP/2 flow-control window of each stream.
    pub initial_stream_window_bytes: u32,
    /// HTTP/2 flow-control window of each connection.
    pub initial_connection_window_bytes: u32,
    /// New connections taken per second per listener (a quarter second's worth at once);
    /// more wait in the kernel's backlog. Connections are long-lived here, so this only
    /// smooths a storm of them (thousands opened at once), whose handshakes would otherwise
    /// take the CPU that open connections' calls need.
    pub max_accepts_per_sec: f64,
    /// Refused, failed or reset calls a connection may make per second beyond its burst
    /// before the gateway reads from it only at this pace. A caller that honours RetryInfo
    /// stays far below it; at 200 a second, the refusals of a caller that retries at once came
    /// in bursts that held other callers' calls back by milliseconds (`bench flood`).
    pub paced_refusals_per_sec: f64,
    /// Refused, failed or reset calls a connection may make at once before it is paced.
    pub paced_refusals_burst: u32,
    /// Bytes read from one connection per second at most (a second's worth at once); far
    /// above real callers, it bounds what one connection can make the gateway parse.
    pub max_read_bytes_per_sec: u64,
    /// Unary calls in progress at most, gateway-wide; more are RESOURCE_EXHAUSTED with
    /// RetryInfo at once. (Open streams are bounded by `watch.max_streams`.)
    pub max_in_flight_calls: usize,
    /// WatchCopy streams being opened at once, gateway-wide (authenticated, looked up,
    /// waiting for their first observation); more wait their turn, costing their request
    /// and little else, and one that waits past the request timeout is UNAVAILABLE with
    /// RetryInfo.
    pub max_stream_openings: usize,
    /// Resident memory above which new WatchCopy streams and copy requests are refused
    /// (UNAVAILABLE with RetryInfo) until it falls. Default: 80% of the container's memory
    /// limit (cgroup `memory.max`), none without one.
    pub max_memory_bytes: Option<u64>,
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
    /// How long one attempt may take, in milliseconds, before it is abandoned and retried
    /// (default 20000). A copy whose answer was lost this way is found by the retry, not made
    /// twice.
    pub attempt_timeout_ms: Option<u64>,
    /// The account the gateway's own credentials belong to. Known, it lets the gateway tell
    /// shared sources from its own before calling AWS.
    #[serde(deserialize_with = "digits_as_text", default)]
    pub account_id: Option<String>,
    /// Client-side limit of AWS calls per second, per account and region (RDS allows 12/s
    /// sustained per account, shared with every other client).
    pub rate_limit_per_sec: Option<f64>,
    /// Calls allowed at once before the rate applies.
    pub rate_limit_burst: Option<u32>,
    /// The regions requests may name (in source ARNs, `source_region`, `destination_region`,
    /// copy names); default: every region of AWS's commercial partition. Add GovCloud or China
    /// regions where the gateway's credentials reach them.
    pub regions: Option<Vec<String>>,
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
            http: HttpSettings::default(),
            fair_share: FairShareSettings::default(),
            auth: AuthSettings::default(),
            authz: AuthzSettings::default(),
            store: StoreSettings::default(),
            jobs: JobSettings::default(),
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
            max_connections: None,
            max_connections_per_peer: None,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
            max_header_list_bytes: 64 * 1024,
            initial_stream_window_bytes: 64 * 1024,
            initial_connection_window_bytes: 1024 * 1024,
            max_accepts_per_sec: 2000.0,
            paced_refusals_per_sec: 50.0,
            paced_refusals_burst: 200,
            max_read_bytes_per_sec: 32 * 1024 * 1024,
            max_in_flight_calls: 1024,
            max_stream_openings: 256,
            max_memory_bytes: None,
        }
    }
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

impl AwsSettings {
    /// The regions requests may name.
    pub fn served_regions(&self) -> Vec<String> {
        match &self.regions {
            Some(regions) => regions.clone(),
            None => snapgate_domain::region::COMMERCIAL_REGIONS.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(5)
    }
    /// How long one attempt of an AWS call may take before it is retried (default 20 s).
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms.unwrap_or(20_000))
    }
    pub fn rate_limit_per_sec(&self) -> f64 {
        self.rate_limit_per_sec.unwrap_or(8.0)
    }
    pub fn rate_limit_burst(&self) -> u32 {
        self.rate_limit_burst.unwrap_or(40)
    }
}

/// The top-level keys of [`Settings`], which `SNAPGATE_` variables may set.
const SECTIONS: [&str; 11] =
    ["listen", "server", "aws", "watch", "admin", "http", "fair_share", "auth", "authz", "store", "jobs"];

impl Settings {
    /// Loads defaults, then `file`, then `SNAPGATE_`-prefixed environment variables (nested
    /// keys joined by `__`) through figment's own environment provider.
    pub fn load(file: Option<&Path>) -> Result<Settings, String> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
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
        let settings: Settings = figment.merge(env).extract().map_err(|e| format!("configuration: {e}"))?;
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
        let f = &self.fair_share;
        let shares = [(f.calls_per_sec, f.burst), (f.aws_calls_per_sec, f.aws_burst)].into_iter().chain(
            f.overrides.iter().flat_map(|o| {
                [
                    (o.calls_per_sec, o.burst),
                    (o.aws_calls_per_sec.unwrap_or(f.aws_calls_per_sec), o.aws_burst.unwrap_or(f.aws_burst)),
                ]
            }),
        );
        for (rate, burst) in shares {
            if !(rate > 0.0 && rate.is_finite()) || burst == 0 {
                return Err("fair_share: calls_per_sec must be positive and burst at least 1".into());
            }
        }
        if f.aws_in_flight == 0 {
            return Err("fair_share.aws_in_flight must be at least 1".into());
        }
        if f.in_flight == 0 || f.overrides.iter().any(|o| o.in_flight == Some(0)) {
            return Err("fair_share.in_flight must be at least 1".into());
        }
        if f.overrides.iter().any(|o| o.principal.is_some() == o.group.is_some()) {
            return Err("fair_share.overrides: each names exactly one of principal or group".into());
        }
        if s.handshake_timeout_secs == 0 || s.idle_timeout_secs == 0 {
            return Err("server.handshake_timeout_secs and server.idle_timeout_secs must be positive".into());
        }
        if s.max_connections == Some(0)
            || s.max_connections_per_peer == Some(0)
            || s.max_in_flight_calls == 0
            || s.max_stream_openings == 0
        {
            return Err("server.max_connections, server.max_connections_per_peer, server.max_in_flight_calls and server.max_stream_openings must be at least 1".into());
        }
        if s.max_header_list_bytes < 8 * 1024 {
            return Err("server.max_header_list_bytes must be at least 8192 (a JWT alone can take 4 KiB)".into());
        }
        if s.initial_stream_window_bytes < 65_535 || s.initial_connection_window_bytes < s.initial_stream_window_bytes {
            return Err(
                "server.initial_stream_window_bytes must be at least 65535 and the connection window at least as large"
                    .into(),
            );
        }
        if !(s.paced_refusals_per_sec.is_finite() && s.paced_refusals_per_sec > 0.0) {
            return Err("server.paced_refusals_per_sec must be a positive number".into());
        }
        if !(s.max_accepts_per_sec.is_finite() && s.max_accepts_per_sec >= 1.0) {
            return Err("server.max_accepts_per_sec must be at least 1".into());
        }
        if s.max_read_bytes_per_sec < 64 * 1024 {
            return Err("server.max_read_bytes_per_sec must be at least 65536".into());
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
            && !snapgate_domain::is_region_name(region)
        {
            return Err(format!("aws.region: '{region}' is not a region name (like us-east-1)"));
        }
        if let Some(bad) = self.aws.served_regions().iter().find(|r| !snapgate_domain::is_region_name(r)) {
            return Err(format!("aws.regions: '{bad}' is not a region name (like us-east-1)"));
        }
        if let Some(region) = &self.aws.region
            && !self.aws.served_regions().contains(region)
        {
            return Err(format!("aws.region: '{region}' is not among aws.regions"));
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
        let is_account = AccountId::is_valid;
        if let Some(account) = &self.aws.account_id
            && !is_account(account)
        {
            return Err(format!("aws.account_id: '{account}' is not a 12-digit account id"));
        }
        for (account, role) in &self.aws.accounts {
            if !is_account(account) {
                return Err(format!("aws.accounts.{account}: the key must be a 12-digit account id"));
            }
            let arn = snapgate_domain::Arn::parse(&role.role_arn);
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
        let j = &self.jobs;
        if j.cross_region_limit == 0
            || j.same_region_limit == Some(0)
            || j.limits.iter().any(|l| l.cross_region_limit == 0)
        {
            return Err("jobs: limits of copies in progress must be at least 1".into());
        }
        if j.lease_secs < 2
            || j.dispatch_interval_ms < 10
            || j.retry_initial_ms == 0
            || j.retry_max_ms < j.retry_initial_ms
        {
            return Err("jobs: lease_secs must be at least 2, dispatch_interval_ms at least 10, and retry_initial_ms positive and at most retry_max_ms".into());
        }
        if let Some(l) = j.limits.iter().find(|l| !snapgate_domain::is_region_name(&l.region)) {
            return Err(format!("jobs.limits: '{}' is not a region name", l.region));
        }
        if self.store.max_connections == 0 {
            return Err("store.max_connections must be at least 1".into());
        }
        self.auth.validate()?;
        if self.authz.policy_file.is_some() && self.authz.policies.is_some() {
            return Err("authz: set policy_file or policies, not both".into());
        }
        if self.authz.reload_secs == 0 {
            return Err("authz.reload_secs must be positive".into());
        }
        Ok(())
    }

    /// What `serve` needs beyond `validate`: a way to authenticate callers and policies to
    /// authorize them, so a gateway never starts open.
    pub fn validate_for_serving(&self) -> Result<(), String> {
        let mtls = self.auth.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        if !mtls && self.auth.jwt.is_none() && self.auth.static_tokens.is_empty() {
            return Err("auth: no way to authenticate callers; set auth.tls.client_ca_file (mTLS), auth.jwt or auth.static_tokens".into());
        }
        if self.authz.policy_file.is_none() && self.authz.policies.is_none() {
            return Err("authz.policy_file is not set: without policies every call would be denied".into());
        }
        Ok(())
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), String> {
        if let Some(tls) = &self.tls {
            if tls.client_certificates == ClientCertificates::Required && tls.client_ca_file.is_none() {
                return Err("auth.tls.client_certificates = \"required\" needs auth.tls.client_ca_file".into());
            }
            if tls.reload_secs == 0 {
                return Err("auth.tls.reload_secs must be positive".into());
            }
        }
        if let Some(jwt) = &self.jwt {
            if jwt.issuer.is_empty() {
                return Err("auth.jwt.issuer must not be empty".into());
            }
            if jwt.audiences.is_empty() {
                return Err("auth.jwt.audiences must name at least one audience".into());
            }
            match (&jwt.jwks_file, &jwt.jwks_url) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err("auth.jwt: set exactly one of jwks_file and jwks_url".into());
                }
                (None, Some(url)) => check_jwks_url(url).map_err(|e| format!("auth.jwt.jwks_url: {e}"))?,
                (Some(_), None) => {}
            }
            if jwt.algorithms.is_empty() {
                return Err("auth.jwt.algorithms must not be empty".into());
            }
            for name in &jwt.algorithms {
                check_jwt_algorithm(name).map_err(|e| format!("auth.jwt.algorithms: {e}"))?;
            }
            if jwt.jwks_refresh_secs < 10 {
                return Err("auth.jwt.jwks_refresh_secs must be at least 10".into());
            }
            if jwt.leeway_secs > 300 {
                return Err("auth.jwt.leeway_secs must be at most 300".into());
            }
        }
        for (i, token) in self.static_tokens.iter().enumerate() {
            if token.token.expose().len() < 16 {
                return Err(format!("auth.static_tokens[{i}].token must be at least 16 characters"));
            }
            if token.principal.is_empty() {
                return Err(format!("auth.static_tokens[{i}].principal must not be empty"));
            }
        }
        Ok(())
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
                out = Settings::load(None).expect_err("refused");
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
                let refused = Settings::load(Some(Path::new("f.toml"))).expect_err("refused");
                assert!(refused.contains("fair_share.in_flight"), "{refused}");
                Ok(())
            });
        }
    }

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

    #[test]
    fn the_shipped_kubernetes_configuration_is_valid() {
        let manifest = include_str!("../../../deploy/kubernetes/snapgate.yaml");
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

//! `[server]`: the limits of both listeners and of every call, set deliberately rather than
//! left to tonic's and hyper's defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Violations;

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

    pub(crate) fn validate(&self, v: &mut Violations) {
        v.at_least("server.max_request_bytes", self.max_request_bytes as u64, 1024);
        v.at_least("server.max_response_bytes", self.max_response_bytes as u64, 64 * 1024);
        v.positive("server.handshake_timeout_secs", self.handshake_timeout_secs);
        v.positive("server.idle_timeout_secs", self.idle_timeout_secs);
        v.check(self.max_connections != Some(0), "server.max_connections", "must be at least 1");
        v.check(self.max_connections_per_peer != Some(0), "server.max_connections_per_peer", "must be at least 1");
        v.at_least("server.max_in_flight_calls", self.max_in_flight_calls as u64, 1);
        v.at_least("server.max_stream_openings", self.max_stream_openings as u64, 1);
        v.check(
            self.max_header_list_bytes >= 8 * 1024,
            "server.max_header_list_bytes",
            "must be at least 8192 (a JWT alone can take 4 KiB)",
        );
        v.at_least("server.initial_stream_window_bytes", u64::from(self.initial_stream_window_bytes), 65_535);
        v.check(
            self.initial_connection_window_bytes >= self.initial_stream_window_bytes,
            "server.initial_connection_window_bytes",
            "must be at least server.initial_stream_window_bytes",
        );
        v.rate("server.paced_refusals_per_sec", self.paced_refusals_per_sec);
        v.check(
            self.max_accepts_per_sec.is_finite() && self.max_accepts_per_sec >= 1.0,
            "server.max_accepts_per_sec",
            "must be at least 1",
        );
        v.at_least("server.max_read_bytes_per_sec", self.max_read_bytes_per_sec, 64 * 1024);
        v.at_least("server.max_concurrent_streams", u64::from(self.max_concurrent_streams), 1);
        v.positive("server.keepalive_interval_secs", self.keepalive_interval_secs);
        v.positive("server.keepalive_timeout_secs", self.keepalive_timeout_secs);
        v.positive("server.request_timeout_secs", self.request_timeout_secs);
    }
}

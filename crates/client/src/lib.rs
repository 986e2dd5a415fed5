#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
//! A client of snapgate for Rust services and the `snapgate` CLI: connect with a bearer token
//! or a client certificate, make the calls, and [`Client::wait`] for a copy to end, riding
//! out gateway restarts, deploys and replica changes (a stream ended `UNAVAILABLE`, or a
//! gateway that cannot be reached for a while, is reconnected with backoff and resumed from
//! the copy's current state).
//!
//! ```no_run
//! # async fn run() -> Result<(), snapgate_client::ClientError> {
//! use snapgate_client::{Client, ClientConfig, pb};
//! let client = Client::connect(&ClientConfig::new("http://127.0.0.1:50051").token("snapgate-dev-token")).await?;
//! let copy = client.copy(pb::CopyClusterSnapshotRequest {
//!     source_snapshot: "billing-pg-daily".into(),
//!     target_snapshot_id: "billing-pg-copy".into(),
//!     ..Default::default()
//! }).await?;
//! let done = client.wait(&copy.name, std::time::Duration::from_secs(6 * 3600), |_event| {}).await?;
//! println!("{} is {:?}", done.name, done.state());
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

mod addr;

pub use addr::{ADDRESS_FORMS, AddrError, GatewayAddr};
pub use snapgate_proto as pb;
use snapgate_proto::snapshot_copy_service_client::SnapshotCopyServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the gateway is and how to prove who the caller is.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` (TLS when `ca_cert` or `client_cert` is set), `http://HOST:PORT`, or
    /// `https://HOST:PORT` (see [`GatewayAddr`]).
    pub addr: String,
    /// A bearer token (a JWT, or a static token).
    pub token: Option<String>,
    /// PEM CAs that sign the gateway's certificate (default: the system's roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub connect_timeout: Duration,
    /// How long a call the gateway refused with `RetryInfo` (a caller over its share, a
    /// gateway shedding load or shutting down) is tried again, each time after the delay the
    /// gateway asked for; zero: never. Every call is safe to repeat: a copy's target names it.
    pub retry_for: Duration,
}

impl ClientConfig {
    pub fn new(addr: impl Into<String>) -> ClientConfig {
        ClientConfig {
            addr: addr.into(),
            token: None,
            ca_cert: None,
            client_cert: None,
            connect_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(120),
        }
    }

    pub fn token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Some(token.into());
        self
    }
}

/// Why a call or a wait did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot make a connection (a bad address, unreadable PEM files).
    #[error("{0}")]
    Config(String),
    /// The gateway could not be reached, or stayed unavailable.
    #[error("the gateway at {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The gateway answered with an error.
    #[error("{}", describe(.0))]
    Status(tonic::Status),
    /// The wait's time ran out before the copy ended; `last` is the copy as last seen.
    #[error("the copy did not end within {0:?}")]
    TimedOut(Duration, Option<Box<pb::Copy>>),
}

impl ClientError {
    /// The gRPC code of a gateway's answer.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// A status with its field violations, as a person reads it.
fn describe(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(bad) = status.get_error_details().bad_request() {
        for violation in &bad.field_violations {
            text.push_str(&format!("\n  {}: {}", violation.field, violation.description));
        }
    }
    text
}

#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Stub = SnapshotCopyServiceClient<InterceptedService<Channel, Bearer>>;

/// A connection to a gateway; cheap to clone, safe to share.
#[derive(Clone)]
pub struct Client {
    inner: Stub,
    addr: String,
    retry_for: Duration,
}

/// The delay a refusal asks for, when the gateway says a retry will help.
fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    if !matches!(status.code(), Code::ResourceExhausted | Code::Unavailable | Code::Aborted) {
        return None;
    }
    status.get_details_retry_info().and_then(|info| info.retry_delay)
}

/// Up to a quarter second more, so callers refused together do not all come back together.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(u64::from(nanos % 250))
}

impl Client {
    /// Connects (lazily: the first call connects, and reconnects after a failure).
    pub async fn connect(config: &ClientConfig) -> Result<Client, ClientError> {
        let addr: GatewayAddr = config.addr.parse().map_err(|e: AddrError| ClientError::Config(e.to_string()))?;
        let tls_settings = config.ca_cert.is_some() || config.client_cert.is_some();
        let uri = addr.uri(tls_settings);
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::Config(format!("address '{uri}': {e}")))?
            .connect_timeout(config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if addr.is_tls(tls_settings) {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &config.ca_cert {
                let pem = std::fs::read(ca).map_err(|e| ClientError::Config(format!("{}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &config.client_cert {
                let read =
                    |p: &PathBuf| std::fs::read(p).map_err(|e| ClientError::Config(format!("{}: {e}", p.display())));
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| ClientError::Config(format!("TLS: {e}")))?;
        }
        let bearer = match &config.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ClientError::Config("the token has characters a header cannot carry".into()))?,
            ),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        Ok(Client {
            inner: SnapshotCopyServiceClient::with_interceptor(channel, Bearer(bearer)),
            addr: addr.to_string(),
            retry_for: config.retry_for,
        })
    }

    /// Makes a call, again after the delay a refusal with `RetryInfo` asks for, while the
    /// retry time lasts.
    async fn call<T, Fut>(&self, attempt: impl Fn(Stub) -> Fut) -> Result<T, ClientError>
    where
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let give_up = tokio::time::Instant::now() + self.retry_for;
        loop {
            match attempt(self.inner.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => match retry_delay(&status) {
                    Some(delay) if tokio::time::Instant::now() + delay <= give_up => {
                        tokio::time::sleep(delay + jitter()).await;
                    }
                    _ => return Err(self.error(status)),
                },
            }
        }
    }

    fn error(&self, status: tonic::Status) -> ClientError {
        // tonic reports a connection that could not be made as UNAVAILABLE with a transport
        // source; the gateway's own UNAVAILABLE carries a message of its own.
        if status.code() == Code::Unavailable && status.message().contains("tcp connect error")
            || status.code() == Code::Unknown && status.message().contains("transport error")
        {
            return ClientError::Unreachable { addr: self.addr.clone(), reason: status.message().to_owned() };
        }
        ClientError::Status(status)
    }

    pub async fn copy(&self, request: pb::CopyClusterSnapshotRequest) -> Result<pb::Copy, ClientError> {
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.copy_cluster_snapshot(request).await }
        })
        .await
    }

    /// The copy as the gateway last observed it (at most 1.25 shortest poll intervals old).
    pub async fn get(&self, name: &str) -> Result<pb::Copy, ClientError> {
        self.get_with(name, false).await
    }

    /// The copy; with `fresh`, as AWS describes it now (one AWS call).
    pub async fn get_with(&self, name: &str, fresh: bool) -> Result<pb::Copy, ClientError> {
        let request = pb::GetCopyRequest { name: name.to_owned(), fresh };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.get_copy(request).await }
        })
        .await
    }

    pub async fn cancel(&self, name: &str) -> Result<pb::Copy, ClientError> {
        let request = pb::CancelCopyRequest { name: name.to_owned() };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.cancel_copy(request).await }
        })
        .await
    }

    pub async fn list(&self, request: pb::ListCopiesRequest) -> Result<pb::ListCopiesResponse, ClientError> {
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.list_copies(request).await }
        })
        .await
    }

    /// Creates or replaces a DR plan; the caller becomes its owner.
    pub async fn apply_plan(&self, plan: pb::Plan) -> Result<pb::Plan, ClientError> {
        let request = pb::ApplyPlanRequest { plan: Some(plan) };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.apply_plan(request).await }
        })
        .await
    }

    pub async fn get_plan(&self, name: &str) -> Result<pb::Plan, ClientError> {
        let request = pb::GetPlanRequest { name: name.to_owned() };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.get_plan(request).await }
        })
        .await
    }

    pub async fn list_plans(&self) -> Result<Vec<pb::Plan>, ClientError> {
        self.call(|mut stub| async move { stub.list_plans(pb::ListPlansRequest {}).await }).await.map(|r| r.plans)
    }

    pub async fn delete_plan(&self, name: &str) -> Result<pb::Plan, ClientError> {
        let request = pb::DeletePlanRequest { name: name.to_owned() };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.delete_plan(request).await }
        })
        .await
    }

    /// What a run now would do: of the stored plan `name`, or of `plan` before it is applied.
    pub async fn preview_plan(&self, request: pb::PreviewPlanRequest) -> Result<pb::PlanPreview, ClientError> {
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.preview_plan(request).await }
        })
        .await
    }

    pub async fn run_plan(&self, name: &str) -> Result<pb::PlanRun, ClientError> {
        let request = pb::RunPlanRequest { name: name.to_owned() };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.run_plan(request).await }
        })
        .await
    }

    /// A plan's runs, newest first.
    pub async fn plan_runs(&self, name: &str, page_size: i32) -> Result<Vec<pb::PlanRun>, ClientError> {
        let request = pb::ListPlanRunsRequest { name: name.to_owned(), page_size };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.list_plan_runs(request).await }
        })
        .await
        .map(|r| r.runs)
    }

    /// The raw event stream of one WatchCopy call.
    pub async fn watch(&self, name: &str) -> Result<tonic::Streaming<pb::CopyEvent>, ClientError> {
        let request = pb::WatchCopyRequest { name: name.to_owned() };
        self.call(|mut stub| {
            let request = request.clone();
            async move { stub.watch_copy(request).await }
        })
        .await
    }

    /// Follows a copy until it ends (AVAILABLE, FAILED, CANCELLED or DELETED) and returns it,
    /// calling `on_event` with every event. A stream that ends UNAVAILABLE (a restart, a
    /// deploy) or a gateway out of reach is reconnected with backoff, and the first event of
    /// the new stream is the copy's current state, so a copy that ended meanwhile ends the wait
    /// with its outcome. Other errors (NOT_FOUND, PERMISSION_DENIED, ...) end the wait.
    pub async fn wait(
        &self,
        name: &str,
        timeout: Duration,
        mut on_event: impl FnMut(&pb::CopyEvent),
    ) -> Result<pb::Copy, ClientError> {
        let mut last: Option<pb::Copy> = None;
        let followed = async {
            let mut backoff = Duration::from_millis(100);
            loop {
                let outcome = async {
                    let mut stream = self.watch(name).await?;
                    while let Some(event) = stream.message().await.map_err(|s| self.error(s))? {
                        on_event(&event);
                        if let Some(copy) = &event.copy {
                            last = Some(copy.clone());
                        }
                        if event.terminal {
                            return Ok(last.clone());
                        }
                    }
                    // The gateway ended the stream without a terminal event: resume.
                    Err(ClientError::Status(tonic::Status::unavailable("stream ended")))
                }
                .await;
                match outcome {
                    Ok(Some(copy)) => return Ok(copy),
                    Ok(None) => {
                        return Err(ClientError::Status(tonic::Status::internal("a terminal event without its copy")));
                    }
                    Err(ClientError::Unreachable { .. }) => {}
                    Err(ClientError::Status(status)) => match retry_delay(&status) {
                        // A stream ended by the gateway's shedding (or its shutdown) says
                        // when to come back.
                        Some(delay) => {
                            tokio::time::sleep(delay + jitter()).await;
                            continue;
                        }
                        None if status.code() == Code::Unavailable => {}
                        None => return Err(ClientError::Status(status)),
                    },
                    Err(other) => return Err(other),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        };
        match tokio::time::timeout(timeout, followed).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::TimedOut(timeout, last.map(Box::new))),
        }
    }
}

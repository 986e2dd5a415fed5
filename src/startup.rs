//! Builds the gateway from its settings and runs it: binds the listener (port 0 works, so
//! tests and benchmarks start the real server), wires the services, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin;
use crate::api::Api;
use crate::auth::policy::PolicyStore;
use crate::auth::tls::TlsReloader;
use crate::auth::{AuthLayer, Authenticator};
use crate::aws::Accounts;
use crate::config::Settings;
use crate::copy::CopyService;
use crate::metrics::Metrics;
use crate::pb;
use crate::pb::snapshot_copy_service_server::SnapshotCopyServiceServer;
use crate::watch::WatchHub;
use tokio_util::sync::CancellationToken;

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    settings: Settings,
    api: Api,
    hub: Arc<WatchHub>,
    metrics: Arc<Metrics>,
    admin: Option<TcpListener>,
    authenticator: Arc<Authenticator>,
    policies: Arc<PolicyStore>,
    tls: Option<Arc<TlsReloader>>,
}

impl Application {
    /// Binds `settings.listen` and prepares the services; `sdk` is the AWS side.
    pub async fn build(settings: Settings, sdk: SdkConfig) -> anyhow::Result<Application> {
        settings.validate().map_err(anyhow::Error::msg)?;
        settings.validate_for_serving().map_err(anyhow::Error::msg)?;
        let metrics = Metrics::new();
        let authenticator = Arc::new(Authenticator::new(&settings.auth, metrics.clone()).await?);
        let policies = PolicyStore::new(&settings.authz, metrics.clone())?;
        let tls = settings.auth.tls.clone().map(TlsReloader::new).transpose()?;
        let accounts = Arc::new(Accounts::new(sdk, &settings.aws, metrics.clone()).await.map_err(anyhow::Error::msg)?);
        let copies = Arc::new(CopyService::new(accounts.clone()));
        let hub = Arc::new(WatchHub::new(accounts, settings.watch.clone(), CancellationToken::new(), metrics.clone()));
        let api = Api::new(copies, hub.clone(), policies.clone(), settings.server.request_timeout(), metrics.clone());
        let admin = match settings.admin.listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("admin.listen: cannot bind {addr}"))?)
            }
            None => None,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", settings.listen))?;
        let addr = listener.local_addr()?;
        Ok(Application { listener, addr, settings, api, hub, metrics, admin, authenticator, policies, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The progress hub, for its counters.
    pub fn watch_hub(&self) -> Arc<WatchHub> {
        self.hub.clone()
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, stops accepting and lets
    /// calls in flight finish for at most `server.shutdown_grace_secs`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let limits = &self.settings.server;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<SnapshotCopyServiceServer<Api>>().await;

        // grpcurl 1.8 and older speak only v1alpha reflection, newer clients v1: serve both.
        // tonic-types' descriptors let clients print google.rpc error details.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let copy_service = SnapshotCopyServiceServer::new(self.api)
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes);

        let grace = Duration::from_secs(limits.shutdown_grace_secs);
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        if let Some(listener) = self.admin {
            let router = admin::router(self.metrics.clone(), self.hub.clone(), serving.clone());
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "admin listener stopped");
                }
            });
        }
        let stop_accepting = CancellationToken::new();
        spawn_reloads(self.policies.clone(), self.tls.clone(), &self.settings, stop_accepting.clone());
        let incoming = crate::auth::tls::incoming(self.listener, self.tls.clone(), stop_accepting.clone());
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let reporter = health_reporter.clone();
        let streams = self.hub.shutdown_token().clone();
        let not_serving = serving.clone();
        let signal = async move {
            shutdown.await;
            stop_accepting.cancel();
            tracing::info!("shutting down: reporting NOT_SERVING, ending streams, draining calls");
            // tonic's graceful shutdown waits for every open stream: end them first, each with
            // UNAVAILABLE and a hint to reconnect.
            streams.cancel();
            not_serving.store(false, std::sync::atomic::Ordering::Relaxed);
            reporter.set_not_serving::<SnapshotCopyServiceServer<Api>>().await;
            reporter.set_service_status("", ServingStatus::NotServing).await;
            let _ = stopping_tx.send(());
        };

        let server = Server::builder()
            // Outermost: the server span covers authentication, the handler and the whole
            // response body (a WatchCopy stream to its end).
            .layer(crate::rpc_trace::RpcTraceLayer)
            // Outside every service: an unauthenticated call never reaches a handler.
            .layer(AuthLayer::new(self.authenticator.clone()))
            .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_interval_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)))
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(copy_service)
            .serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(server);
        let grace_over = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = &mut server => served.context("gRPC server failed")?,
            () = grace_over => tracing::warn!(?grace, "grace period over; stopping with calls still in flight"),
        }
        Ok(())
    }
}

/// Policies and certificates reload on SIGHUP and when their files change; a reload that
/// fails keeps what is in force (each says so in the log).
fn spawn_reloads(
    policies: Arc<PolicyStore>,
    tls: Option<Arc<TlsReloader>>,
    settings: &Settings,
    stop: CancellationToken,
) {
    let policy_every = Duration::from_secs(settings.authz.reload_secs);
    let tls_every = tls.as_ref().map_or(Duration::from_secs(3600), |t| t.interval());
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut policy_tick = tokio::time::interval(policy_every);
        let mut tls_tick = tokio::time::interval(tls_every);
        policy_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tls_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                () = stop.cancelled() => break,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading policies and certificates");
                    policies.reload(true);
                    if let Some(tls) = &tls {
                        tls.reload(true);
                    }
                }
                _ = policy_tick.tick() => {
                    policies.reload(false);
                }
                _ = tls_tick.tick() => {
                    if let Some(tls) = &tls {
                        tls.reload(false);
                    }
                }
            }
        }
    });
}

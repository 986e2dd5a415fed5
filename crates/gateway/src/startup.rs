//! Builds the gateway from its settings and runs it: binds the listener (port 0 works, so
//! tests and benchmarks start the real server), wires the services and the layers around
//! them, and shuts down gracefully within a bounded grace.

use futures_util::FutureExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::admin;
use crate::api::{Api, WATCH_COPY, WatchCopyRoute};
use crate::auth::Authenticator;
use crate::auth::policy::PolicyStore;
use crate::auth::tls::TlsReloader;
use crate::aws::Accounts;
use crate::config::Settings;
use crate::copy::{CopyWorkflow, Dispatcher};
use crate::edge::accept;
use crate::edge::serve::{self, Handler};
use crate::edge::{EdgeLimits, Listener};
use crate::http::Transcoder;
use crate::metrics::Metrics;
use crate::plan::Plans;
use crate::reload::{self, Reload};
use crate::share::{AwsShare, CallShare};
use crate::stack::dispatch::Dispatch;
use crate::stack::shed::{self, Memory};
use crate::stack::{self, Parts};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::watch::{QueueFollower, WatchHub};
use snapgate_proto::snapshot_copy_service_server::SnapshotCopyServiceServer;

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    settings: Settings,
    api: Api,
    hub: Arc<WatchHub>,
    metrics: Arc<Metrics>,
    admin: Option<TcpListener>,
    http: Option<TcpListener>,
    authenticator: Arc<Authenticator>,
    policies: Arc<PolicyStore>,
    tls: Option<Arc<TlsReloader>>,
    tasks: Tasks,
}

impl Application {
    /// Binds `settings.listen` and prepares the services; `sdk` is the AWS side.
    pub async fn build(settings: Settings, sdk: SdkConfig) -> anyhow::Result<Application> {
        settings.validate()?;
        settings.validate_for_serving()?;
        crate::audit::install(&settings.audit)
            .map_err(|e| anyhow::anyhow!("audit.path: cannot open {:?}: {e}", settings.audit.path))?;
        let tasks = Tasks::new();
        let metrics = Metrics::new();
        let authenticator = Arc::new(Authenticator::new(&settings.auth, metrics.clone(), &tasks).await?);
        let policies = PolicyStore::new(&settings.authz, metrics.clone())?;
        let tls = settings.auth.tls.clone().map(TlsReloader::new).transpose()?;
        let store = Arc::new(Store::open(&settings.store).await?);
        // Replicas sharing PostgreSQL hold one AWS budget per account and region together.
        let fleet = store.shared().then(|| store.clone() as Arc<dyn crate::aws::FleetBudget>);
        let accounts =
            Arc::new(Accounts::new(sdk, &settings.aws, fleet, metrics.clone()).await.map_err(anyhow::Error::msg)?);
        let fleet_polls = store.shared().then(|| {
            let polls = store.clone() as Arc<dyn crate::watch::FleetPolls>;
            Arc::new(crate::watch::Fleet { polls, lease: Duration::from_secs(settings.watch.poll_lease_secs) })
        });
        let hub = Arc::new(WatchHub::new(
            accounts.clone(),
            settings.watch.clone(),
            tasks.clone(),
            metrics.clone(),
            fleet_polls,
        ));
        let share = Arc::new(AwsShare::new(settings.fair_share.clone(), metrics.clone()));
        let jobs = Dispatcher::new(
            store.clone(),
            accounts.clone(),
            hub.clone(),
            settings.jobs.clone(),
            metrics.clone(),
            tasks.clone(),
            share,
        );
        let queued = QueueFollower::start(
            jobs.clone(),
            hub.clone(),
            Duration::from_millis(settings.jobs.dispatch_interval_ms),
            jobs.moved(),
            &tasks,
        );
        if store.shared() {
            // Another replica's change wakes this one's dispatcher and queued copies' watchers.
            store.listen(&tasks);
            let mut notices = store.poll_notices();
            let (noticed, stopping) = (hub.clone(), tasks.stopping());
            tasks.spawn(async move {
                loop {
                    let notice = tokio::select! {
                        () = stopping.cancelled() => return,
                        notice = notices.recv() => notice,
                    };
                    match notice {
                        Ok((kind, scope)) => noticed.fleet_notice(&kind, &scope),
                        // Behind: the pollers' timers serve what was missed.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            let mut heard = store.remote_changes();
            let (jobs, stopping) = (jobs.clone(), tasks.stopping());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = stopping.cancelled() => return,
                        changed = heard.changed() => if changed.is_err() { return },
                    }
                    jobs.wake();
                    jobs.queue_moved();
                }
            });
        }
        let copies = Arc::new(CopyWorkflow::new(accounts, hub.clone(), jobs, queued, settings.aws.served_regions()));
        let plans =
            Plans::new(store, copies.clone(), policies.clone(), metrics.clone(), tasks.clone(), settings.plans.clone());
        plans.start_scheduler();
        let api = Api::new(copies, plans, policies.clone());
        let admin = match settings.admin.listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("admin.listen: cannot bind {addr}"))?)
            }
            None => None,
        };
        let http = match settings.http.listen {
            Some(addr) => {
                Some(TcpListener::bind(addr).await.with_context(|| format!("http.listen: cannot bind {addr}"))?)
            }
            None => None,
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", settings.listen))?;
        let addr = listener.local_addr()?;
        Ok(Application {
            listener,
            addr,
            settings,
            api,
            hub,
            metrics,
            admin,
            http,
            authenticator,
            policies,
            tls,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP/JSON listener's address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The progress hub, for its gauges and counters.
    pub fn watch_hub(&self) -> Arc<WatchHub> {
        self.hub.clone()
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, stops accepting, ends open
    /// streams (UNAVAILABLE, with a hint to reconnect), and lets calls in flight and the
    /// gateway's tasks finish for at most `server.shutdown_grace_secs`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let limits = &self.settings.server;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<SnapshotCopyServiceServer<Api>>().await;

        // grpcurl 1.8 and older speak only v1alpha reflection, newer clients v1: serve both.
        // tonic-types' descriptors let clients print google.rpc error details.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(snapgate_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let api = Arc::new(self.api);
        let watch_copy = WatchCopyRoute::new(
            api.clone(),
            limits.max_request_bytes,
            limits.max_response_bytes,
            limits.request_timeout(),
        );
        let copy_service = SnapshotCopyServiceServer::from_arc(api)
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes);

        let tasks = self.tasks.clone();
        let metrics = self.metrics.clone();
        let memory_limit = limits.max_memory_bytes.or_else(shed::default_memory_limit);
        let memory = Memory::watch(memory_limit, metrics.clone(), &tasks);
        let routes = Dispatch::builder()
            .add(health_service)
            .add(reflection_v1)
            .add(reflection_v1alpha)
            .add(copy_service)
            .method(WATCH_COPY, move |request| watch_copy.answer(request))
            .build();
        // One stack serves both listeners: an HTTP/JSON call is a gRPC call made in process.
        let calls =
            Arc::new(CallShare::new(self.settings.fair_share.clone(), limits.request_timeout(), metrics.clone()));
        let parts = Parts { authenticator: self.authenticator.clone(), calls, memory, metrics: metrics.clone() };
        let (stack, openings) = stack::compose(routes, limits, parts);

        let edge = EdgeLimits::new(limits);
        tracing::info!(
            max_connections = edge.max_connections,
            handshake_timeout = ?limits.handshake_timeout(),
            idle_timeout = ?limits.idle_timeout(),
            max_memory_bytes = ?memory_limit,
            "edge limits"
        );
        // Shared, and cloned (a boxed service: an allocation) only by a call entering it.
        let grpc = Arc::new(stack.clone());
        let handler: Handler = Arc::new(move |request, info| {
            let mut request = request.map(tonic::body::Body::new);
            request.extensions_mut().insert(info);
            let grpc = grpc.clone();
            let respond = |entered: Result<http::Response<tonic::body::Body>, std::convert::Infallible>| {
                let Ok(response) = entered;
                response
            };
            if !crate::call::opens_stream(request.uri().path()) {
                return Box::pin(stack::enter(&grpc, request).map(respond));
            }
            // A stream's opening waits its turn before it enters the stack (see `Openings`);
            // the shed layer inside gives the turn back once the stream has opened. The wait
            // and what follows are two boxes, one after the other: the wait's state (the
            // request, its message being read, the timers; ~1.2 KiB) is freed once the opening
            // has its turn, and an opening that then waits for its snapshot's first poll holds
            // the stack's future alone. As one async block, 100,000 openings waiting for the
            // first polls of 10,000 new snapshots each held both.
            let admitted = Box::pin(openings.admit(request));
            Box::pin(
                admitted
                    .then(move |admitted| match admitted {
                        Ok(request) => stack::enter(&grpc, request),
                        Err(refused) => Box::pin(std::future::ready(Ok(refused))),
                    })
                    .map(respond),
            )
        });
        let incoming = accept::incoming(
            self.listener,
            Listener::Grpc,
            self.tls.clone(),
            &edge,
            metrics.clone(),
            tasks.stopping(),
            tasks.tracker(),
        );
        let builder = serve::builder(Listener::Grpc, limits);
        serve::serve(
            incoming,
            Listener::Grpc,
            builder,
            handler,
            &edge,
            metrics.clone(),
            tasks.stopping(),
            tasks.tracker(),
        );

        if let Some(listener) = self.http {
            let name = <SnapshotCopyServiceServer<Api> as tonic::server::NamedService>::NAME;
            let transcoder = Transcoder::new(name, stack.clone(), limits.max_request_bytes)
                .map_err(|e| anyhow::anyhow!("HTTP/JSON routes: {e}"))?;
            crate::http::spawn(
                listener,
                self.tls.clone(),
                Arc::new(transcoder),
                stack,
                limits,
                &edge,
                metrics.clone(),
                &tasks,
            );
        }

        let grace = Duration::from_secs(limits.shutdown_grace_secs);
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
        if let Some(listener) = self.admin {
            let router = admin::router(self.metrics.clone(), self.hub.clone(), serving.clone());
            let stopping = tasks.stopping();
            tasks.spawn(async move {
                let served = axum::serve(listener, router).with_graceful_shutdown(stopping.cancelled_owned()).await;
                if let Err(error) = served {
                    tracing::error!(%error, "admin listener stopped");
                }
            });
        }
        let mut reloaders: Vec<Arc<dyn Reload>> = vec![self.policies.clone()];
        if let Some(tls) = &self.tls {
            reloaders.push(tls.clone());
        }
        tasks.spawn(reload::run(reloaders, tasks.stopping()));

        shutdown.await;
        tracing::info!("shutting down: reporting NOT_SERVING, ending streams, draining calls");
        serving.store(false, std::sync::atomic::Ordering::Relaxed);
        health_reporter.set_not_serving::<SnapshotCopyServiceServer<Api>>().await;
        health_reporter.set_service_status("", ServingStatus::NotServing).await;
        // Stops accepting, asks every connection to close (GOAWAY) once its calls are done,
        // ends every stream with UNAVAILABLE, and stops the pollers and reloaders; all of it
        // within the grace.
        if !tasks.stop(grace).await {
            tracing::warn!(?grace, "grace period over; stopping with calls or tasks still in flight");
        }
        Ok(())
    }
}

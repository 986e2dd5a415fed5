//! The HTTP/JSON listener: HTTP/1.1 and HTTP/2 (cleartext or the gRPC listener's TLS, mTLS
//! included) on its own address, every request transcoded to its RPC and served by the gRPC
//! service stack in process (`transcode`). Its connections are the accept loop's, like the
//! gRPC listener's, and end with the gateway's shutdown.

pub(crate) mod routes;
pub(crate) mod transcode;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::auth::tls::{Alpn, TlsReloader};
use crate::config::ServerSettings;
use crate::tasks::Tasks;
pub(crate) use transcode::{GrpcService, Transcoder};

/// How long a client may take to send a request's headers (HTTP/1.1): a peer that trickles
/// them cannot hold a connection for long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `transcoder` on `listener` until the gateway stops; the accept loop and every
/// connection are `tasks`'. At shutdown, connections finish the request in hand (a watch
/// stream ends as its gRPC stream does, with UNAVAILABLE) and close.
pub(crate) fn spawn(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    transcoder: Arc<Transcoder>,
    limits: &ServerSettings,
    tasks: &Tasks,
) {
    let stop = tasks.stopping();
    let tracker = tasks.tracker().clone();
    let mut incoming =
        crate::auth::tls::incoming(listener, tls.map(|t| (t, Alpn::Http)), stop.clone(), tasks.tracker());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Duration::from_secs(limits.keepalive_interval_secs))
        .keep_alive_timeout(Duration::from_secs(limits.keepalive_timeout_secs));
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    let routes: Vec<String> =
        transcoder.routes().iter().map(|r| format!("{} {} → {}", r.method, r.template, r.rpc.name())).collect();
    tracing::info!(routes = routes.join(", "), "HTTP/JSON routes");
    tasks.spawn(async move {
        while let Some(accepted) = incoming.next().await {
            let Ok(conn) = accepted else { continue };
            let info = conn.info().clone();
            let transcoder = transcoder.clone();
            let service = tower::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let transcoder = transcoder.clone();
                let info = info.clone();
                async move { Ok::<_, std::convert::Infallible>(transcoder.handle(request, Some(info)).await) }
            });
            let builder = builder.clone();
            let stop = stop.clone();
            tracker.spawn(async move {
                let connection = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(service));
                tokio::pin!(connection);
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(error) = served {
                            tracing::debug!(%error, "HTTP/JSON connection ended with an error");
                        }
                    }
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(grace, connection).await;
                    }
                }
            });
        }
    });
}

//! The HTTP/JSON listener: HTTP/1.1 and HTTP/2 (cleartext or the gRPC listener's TLS, mTLS
//! included) on its own address, every request transcoded to its RPC and served by the gRPC
//! service stack in process (`transcode`). Its connections are the accept loop's, like the
//! gRPC listener's, and end with the gateway's shutdown.

pub(crate) mod routes;
pub(crate) mod transcode;

use std::sync::Arc;

use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use crate::auth::tls::TlsReloader;
use crate::config::ServerSettings;
use crate::edge::serve::{self, Handler};
use crate::edge::{EdgeLimits, Listener, accept};
use crate::metrics::Metrics;
use crate::stack::Stack;
use crate::tasks::Tasks;
pub(crate) use transcode::Transcoder;

/// Serves `transcoder` on `listener` until the gateway stops, with the edge's limits; the
/// accept loop and every connection are `tasks`'. At shutdown, connections finish the request
/// in hand (a watch stream ends as its gRPC stream does, with UNAVAILABLE) and close.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    transcoder: Arc<Transcoder>,
    grpc: Stack,
    settings: &ServerSettings,
    limits: &EdgeLimits,
    metrics: Arc<Metrics>,
    tasks: &Tasks,
) {
    let routes: Vec<String> =
        transcoder.routes().iter().map(|r| format!("{} {} → {}", r.method, r.template, r.rpc.name())).collect();
    tracing::info!(routes = routes.join(", "), "HTTP/JSON routes");
    // gRPC-Web (and plain gRPC) reach the same stack as the gRPC listener's; the rest is JSON.
    let grpc_web = tonic_web::GrpcWebLayer::new().layer(grpc);
    let handler: Handler = Arc::new(move |request, info| {
        let content_type = request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if content_type.is_some_and(|t| t.starts_with("application/grpc")) {
            let mut request = request.map(tonic::body::Body::new);
            request.extensions_mut().insert(info);
            let call = grpc_web.clone().oneshot(request);
            return Box::pin(async move {
                match call.await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            });
        }
        let transcoder = transcoder.clone();
        Box::pin(async move { transcoder.handle(request, Some(info)).await.map(tonic::body::Body::new) })
    });
    let incoming =
        accept::incoming(listener, Listener::Http, tls, limits, metrics.clone(), tasks.stopping(), tasks.tracker());
    let builder = serve::builder(Listener::Http, settings);
    serve::serve(incoming, Listener::Http, builder, handler, limits, metrics, tasks.stopping(), tasks.tracker());
}

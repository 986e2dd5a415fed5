//! The per-call tower layers, composed once (`compose`) and served by both listeners: a gRPC
//! call and an HTTP/JSON call (transcoded to its RPC in process) go through the same layers in
//! the same order, outermost first:
//!
//! 1. `observe`: every call is counted and has its server span, refused ones included, and the
//!    span lasts to the end of the response body (a WatchCopy stream to its end).
//! 2. `shed`: load shedding before any work is done for the call, authentication included;
//!    shedding a call must cost less than serving it.
//! 3. `authenticate`: who is calling; an unauthenticated call never reaches a handler.
//! 4. `fair_share`: each caller's share of calls, once the caller is known.
//! 5. `deadline`: the caller's `grpc-timeout` within the gateway's request timeout; inside
//!    authentication, so a refused call costs no deadline timer.
//!
//! Which paths are open, streams or heavy is decided once, in `call`.

pub(crate) mod around;
pub(crate) mod authenticate;
pub(crate) mod deadline;
pub(crate) mod dispatch;
pub(crate) mod fair_share;
pub(crate) mod observe;
pub(crate) mod shed;

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::auth::Authenticator;
use crate::config::ServerSettings;
use crate::metrics::Metrics;
use crate::share::CallShare;

/// The gRPC service stack, as both listeners serve it.
pub(crate) type Stack =
    BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, Infallible>;

/// A call entering the stack: its future, boxed once by the outermost layer. The stack is
/// always ready (each layer is as ready as the next, and the dispatch to the services always
/// is), so the call is made at once rather than through a `Oneshot`, which would keep the
/// request's room (~280 bytes) in the future for the call's life.
pub(crate) fn enter(
    stack: &Stack,
    request: http::Request<tonic::body::Body>,
) -> BoxFuture<'static, Result<http::Response<tonic::body::Body>, Infallible>> {
    let mut service = stack.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match tower::Service::poll_ready(&mut service, &mut cx) {
        std::task::Poll::Ready(Ok(())) => tower::Service::call(&mut service, request),
        std::task::Poll::Pending => Box::pin(service.oneshot(request)),
    }
}

/// What the layers hold that outlives one call.
pub(crate) struct Parts {
    pub(crate) authenticator: Arc<Authenticator>,
    pub(crate) calls: Arc<CallShare>,
    pub(crate) memory: Arc<shed::Memory>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The layers around `routes`, and the openings' turns the gRPC listener takes before a stream's
/// opening enters them (see `shed::Openings`).
pub(crate) fn compose(routes: dispatch::Dispatch, server: &ServerSettings, parts: Parts) -> (Stack, shed::Openings) {
    let timeout = server.request_timeout();
    let shedding = shed::ShedLayer::new(
        server.max_in_flight_calls,
        server.max_stream_openings,
        server.max_request_bytes,
        timeout,
        parts.memory,
        parts.metrics.clone(),
    );
    let openings = shedding.openings();
    let layered = tower::ServiceBuilder::new()
        // A stream opening on the gRPC listener that waits past the request timeout for its
        // turn is refused before the stack, and counted as `calls_shed{reason="openings"}`.
        .layer(observe::ObserveLayer::new(parts.metrics))
        .layer(shedding)
        .layer(authenticate::layer(parts.authenticator))
        .layer(fair_share::layer(parts.calls))
        .layer(deadline::layer(timeout))
        .service(routes);
    let stack = ServiceExt::<http::Request<tonic::body::Body>>::map_response(layered, |response| {
        response.map(tonic::body::Body::new)
    });
    (Stack::new(stack), openings)
}

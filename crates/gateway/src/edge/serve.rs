//! Serving accepted connections: HTTP/2 (and HTTP/1.1 on the HTTP/JSON listener) with the
//! configured limits, every request handed to the listener's handler with its connection's
//! `ConnInfo`. A connection with no call in progress for `idle_timeout` is closed (HTTP/2:
//! GOAWAY); at shutdown each is asked to close, finishing what it has in hand within the grace.
//! Each connection is read at its pace (`pace`): its refused, failed and reset calls count
//! against it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::Conn;
use super::coalesce::Coalesced;
use super::pace::{self, Pace, Paced};
use super::{EdgeLimits, Listener};
use crate::call::ConnInfo;
use crate::call::ConnectionCalls;
use crate::call::UnstartedCall;
use crate::config::ServerSettings;
use crate::metrics::Metrics;

/// The body of every response the edge writes: the stack's own (a gRPC response is then boxed
/// once, not again for the edge).
pub(crate) type ResponseBody = tonic::body::Body;

/// What serves a listener's requests.
pub(crate) type Handler =
    Arc<dyn Fn(http::Request<Incoming>, ConnInfo) -> BoxFuture<'static, http::Response<ResponseBody>> + Send + Sync>;

const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// The HTTP protocol settings of a listener, from the server settings.
pub(crate) fn builder(kind: Listener, settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_bytes)
        .initial_stream_window_size(settings.initial_stream_window_bytes)
        .initial_connection_window_size(settings.initial_connection_window_bytes)
        .keep_alive_interval(Duration::from_secs(settings.keepalive_interval_secs))
        .keep_alive_timeout(Duration::from_secs(settings.keepalive_timeout_secs));
    match kind {
        Listener::Grpc => builder.http2_only(),
        Listener::Http => {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.handshake_timeout())
                .max_buf_size(usize::try_from(settings.max_header_list_bytes).unwrap_or(usize::MAX).max(8192));
            builder
        }
    }
}

/// Serves every connection `incoming` yields until `stop` fires; the loop and the connections
/// are `tasks`'.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve(
    mut incoming: mpsc::Receiver<Conn>,
    kind: Listener,
    builder: auto::Builder<TokioExecutor>,
    handler: Handler,
    limits: &EdgeLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let connections = tasks.clone();
    let (idle, grace) = (limits.server.idle_timeout(), Duration::from_secs(limits.server.shutdown_grace_secs));
    let limits = limits.clone();
    // An idle connection has nothing to finish: a peer that does not answer GOAWAY's ping
    // within this is closed anyway.
    let idle_close = grace.min(IDLE_CLOSE);
    tasks.spawn(async move {
        loop {
            let conn = tokio::select! {
                conn = incoming.recv() => match conn {
                    Some(conn) => conn,
                    None => break,
                },
                () = stop.cancelled() => break,
            };
            let info = conn.info().clone();
            let (remote, penalties) = (info.remote, limits.penalties.clone());
            let (open, calls) = watch::channel(0usize);
            let pace = Arc::new(Pace::new(&limits));
            let conn_state = Arc::new(ConnState { open, pace: pace.clone() });
            let places = ConnectionCalls::new(limits.server.max_in_flight_calls);
            let service = EdgeService { handler: handler.clone(), info, state: conn_state, places };
            let (stop, metrics, builder) = (stop.clone(), metrics.clone(), builder.clone());
            connections.spawn(async move {
                let io = Coalesced::new(Paced::new(conn, pace, metrics.clone(), kind));
                let connection = builder.serve_connection(TokioIo::new(io), service);
                tokio::pin!(connection);
                let outcome = tokio::select! {
                    served = connection.as_mut() => Ok(served),
                    () = stop.cancelled() => Err(grace),
                    () = idle_for(calls, idle) => {
                        metrics.connection_refused(kind.as_str(), "idle");
                        Err(idle_close)
                    }
                };
                let served = match outcome {
                    Ok(served) => served,
                    Err(within) => {
                        connection.as_mut().graceful_shutdown();
                        match tokio::time::timeout(within, connection).await {
                            Ok(served) => served,
                            Err(_) => return,
                        }
                    }
                };
                if let Err(error) = served {
                    tracing::debug!(listener = kind.as_str(), %error, "connection ended with an error");
                    if pace::broke_the_protocol(error.as_ref()) {
                        metrics.connection_refused(kind.as_str(), "protocol");
                        if let Some(remote) = remote {
                            penalties.strike(remote.ip());
                        }
                    }
                }
            });
        }
    });
}

/// A connection's service: each request is handed to the listener's handler at once, and what
/// hyper keeps for the call (in the task it spawns for each HTTP/2 stream, for the stream's
/// life) is `Answer`, a few words. A tower service adapted to hyper kept a clone of the service
/// and the request in that task's state, 360 bytes of each open WatchCopy stream's task.
struct EdgeService {
    handler: Handler,
    info: ConnInfo,
    state: Arc<ConnState>,
    places: ConnectionCalls,
}

impl hyper::service::Service<http::Request<Incoming>> for EdgeService {
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut request: http::Request<Incoming>) -> Answer {
        request.extensions_mut().insert(self.places.clone());
        request.extensions_mut().insert(self.state.pace.waiting().clone());
        // Counted among the connection's calls not yet begun until hyper's task first polls it.
        let unstarted = Some(self.state.pace.waiting().unstarted());
        let call = (self.handler)(request, self.info.clone());
        Answer { call, guard: Some(CallGuard::begin(self.state.clone())), unstarted }
    }
}

/// A call until its response's headers: the handler's future, and the call's guard, which the
/// response body then carries.
///
/// Until hyper's task for the call first polls it, the call counts among its connection's
/// calls not yet begun (`WaitingOpenings::unstarted`, a limit of its own), so that a connection whose calls arrive faster than the
/// runtime gets to them is not read further meanwhile. Counted only once a stream opening
/// had its message (in `shed::Openings`), 100,000 openings over 200 connections on 2 busy
/// cores had ~88,000 requests read and not yet begun at one moment, each with its headers,
/// its boxes and its HTTP/2 state. The count ends at the first poll, before the call waits for
/// anything the connection must still deliver (its body), so it never holds the reading of
/// what it waits for.
struct Answer {
    call: BoxFuture<'static, http::Response<ResponseBody>>,
    guard: Option<CallGuard>,
    unstarted: Option<UnstartedCall>,
}

impl Future for Answer {
    type Output = Result<http::Response<Tracked>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.unstarted = None;
        let response = std::task::ready!(self.call.as_mut().poll(cx));
        // Answered once: hyper does not poll a future that has completed.
        let Some(mut guard) = self.guard.take() else { return Poll::Pending };
        if pace::is_refusal(&response) {
            guard.state.pace.strike();
            guard.finished = true;
        }
        Poll::Ready(Ok(response.map(|body| Tracked { body, guard })))
    }
}

/// Resolves once the connection has had no call in progress for `idle`.
async fn idle_for(mut calls: watch::Receiver<usize>, idle: Duration) {
    loop {
        if *calls.borrow_and_update() == 0 {
            tokio::select! {
                () = tokio::time::sleep(idle) => return,
                changed = calls.changed() => if changed.is_err() { return std::future::pending().await },
            }
        } else if calls.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// What a connection's calls share: how many are in progress, and its pace.
struct ConnState {
    open: watch::Sender<usize>,
    pace: Arc<Pace>,
}

/// One call in progress on a connection, from its request to the end of its response body. A
/// call the peer resets before its answer ends is a strike against the connection's pace
/// (CVE-2023-44487's rapid reset: hyper bounds resets of streams it has not accepted yet, this
/// those of accepted ones, and a refused call has been counted already).
struct CallGuard {
    state: Arc<ConnState>,
    finished: bool,
}

impl CallGuard {
    fn begin(state: Arc<ConnState>) -> CallGuard {
        state.open.send_modify(|n| *n += 1);
        CallGuard { state, finished: false }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.state.open.send_modify(|n| *n = n.saturating_sub(1));
        if !self.finished {
            self.state.pace.strike();
        }
    }
}

/// A response body that counts as a call in progress until it ends or is dropped.
struct Tracked {
    body: ResponseBody,
    guard: CallGuard,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended.
        if self.body.is_end_stream() {
            self.guard.finished = true;
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<ConnState> {
        let limits = EdgeLimits::new(&ServerSettings::default());
        Arc::new(ConnState { open: watch::channel(0).0, pace: Arc::new(Pace::new(&limits)) })
    }

    #[tokio::test]
    async fn a_connection_that_resets_its_calls_too_often_is_paced() {
        let conn = state();
        // Calls that finish cost nothing, however many.
        for _ in 0..5_000 {
            let mut call = CallGuard::begin(conn.clone());
            call.finished = true;
        }
        assert_eq!(*conn.open.borrow(), 0);
        assert!(conn.pace.behind(std::time::Instant::now()).is_none());
        // Abandoned calls spend the burst, then hold reading back.
        for _ in 0..=ServerSettings::default().paced_refusals_burst {
            drop(CallGuard::begin(conn.clone()));
        }
        let behind = conn.pace.behind(std::time::Instant::now());
        assert!(behind.is_some_and(|(wait, reason)| !wait.is_zero() && reason == "refusals"), "{behind:?}");
    }

    #[tokio::test]
    async fn a_call_counts_among_the_waiting_until_its_task_first_runs() {
        let conn = state();
        let waiting = conn.pace.waiting().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let call: BoxFuture<'static, http::Response<ResponseBody>> = Box::pin(async move {
            let _ = rx.await;
            http::Response::new(ResponseBody::empty())
        });
        let mut answer =
            Answer { call, guard: Some(CallGuard::begin(conn.clone())), unstarted: Some(waiting.unstarted()) };
        assert_eq!(waiting.unstarted_count(), 1, "read, not yet begun");
        // Begun: it no longer holds the connection's reading, though it still waits.
        assert!(futures_util::poll!(&mut answer).is_pending());
        assert_eq!(waiting.unstarted_count(), 0);
        tx.send(()).unwrap();
        let answered = answer.await;
        assert!(answered.is_ok());
        assert_eq!(waiting.unstarted_count(), 0);
    }

    #[tokio::test]
    async fn idle_is_counted_from_the_last_call() {
        let conn = state();
        let calls = conn.open.subscribe();
        let call = CallGuard::begin(conn.clone());
        let idle = idle_for(calls, Duration::from_millis(20));
        tokio::pin!(idle);
        // Not idle while a call is in progress, whatever the time.
        assert!(tokio::time::timeout(Duration::from_millis(60), idle.as_mut()).await.is_err());
        drop(call);
        assert!(tokio::time::timeout(Duration::from_secs(5), idle).await.is_ok());
    }
}

//! Load shedding, before any work is done for a call (authentication included): unary calls
//! beyond `max_in_flight_calls` are RESOURCE_EXHAUSTED at once, and above the memory watermark
//! new streams and new copies are UNAVAILABLE until the resident set falls back; both carry
//! RetryInfo. Health and reflection are never shed: a probe must see a gateway that is merely
//! busy as serving.
//!
//! No connection may hold more than half of the places (`ConnectionCalls`): a flood on one
//! connection is shed while the others' calls still find room.
//!
//! A unary call counts as in progress once its request has arrived whole, not when its headers
//! do: a peer that sends headers and holds the body back (or whose connection is paced, see
//! `pace`) would otherwise hold places that other callers need. Its body has the request
//! timeout to arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::call::{self, ConnectionCalls, OpeningTurn, WaitingOpenings};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// The resident set size, read every half second by a task of the gateway's.
pub(crate) struct Memory {
    resident: AtomicU64,
    limit: Option<u64>,
}

impl Memory {
    /// Starts reading the resident set when there is a limit to hold it to.
    pub(crate) fn watch(limit: Option<u64>, metrics: Arc<Metrics>, tasks: &Tasks) -> Arc<Memory> {
        let memory = Arc::new(Memory { resident: AtomicU64::new(resident_bytes().unwrap_or(0)), limit });
        let reader = memory.clone();
        let stop = tasks.stopping();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                if let Some(bytes) = resident_bytes() {
                    reader.resident.store(bytes, Ordering::Relaxed);
                    metrics.resident_bytes(bytes);
                }
            }
        });
        memory
    }

    fn over(&self) -> bool {
        self.limit.is_some_and(|limit| self.resident.load(Ordering::Relaxed) > limit)
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// 80% of the container's memory limit (cgroup v2, else v1), when it has one.
pub(crate) fn default_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let limit: u64 = v2.or_else(v1)?.trim().parse().ok()?;
    // v1 reports "no limit" as a huge number.
    (limit < 1 << 60).then_some(limit / 5 * 4)
}

/// The turns WatchCopy openings take: `max_stream_openings` of them at once, each waiting at
/// most the request timeout (then UNAVAILABLE with RetryInfo, `calls_shed{reason="openings"}`).
///
/// An opening holds its call state while it authenticates, looks the copy up and waits for its
/// first observation, so fewer openings than unary calls run at once (the README's `bench
/// watch` figures say how much that saves). An opening gives its turn back once it has joined
/// a poll round (see `WatchHub::watch`) rather than when its stream opens, which a round
/// stretched by RDS's throttling could hold for seconds.
///
/// The gRPC listener admits an opening before the call enters the layered stack, so that an
/// opening waiting its turn holds its request and little else, not its server span and the
/// futures of every layer around it. The shed layer admits what arrives without a turn (the
/// HTTP/JSON listener's calls).
#[derive(Clone)]
pub(crate) struct Openings(Arc<OpeningTurns>);

struct OpeningTurns {
    turns: Arc<Semaphore>,
    max_body: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Openings {
    /// The request, with its turn in its extensions and its one message read; or the answer
    /// that refuses it. A request that already has its turn passes as it is.
    ///
    /// Tens of thousands of openings can wait here at once (a reconnect storm whose requests
    /// arrive faster than they are served), so the future is kept small: ~0.5 KiB, the
    /// request held once (not as an argument and again as its parts), one timer for the whole
    /// wait (the body's arrival and the turn), and the message read frame by frame rather than
    /// through `Collected`, which has room for trailers. It was ~1.3 KiB in its box.
    pub(crate) fn admit(
        &self,
        mut request: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Request<Body>, http::Response<Body>>> + Send + 'static {
        let openings = self.0.clone();
        async move {
            if request.extensions().get::<OpeningTurn>().is_some() {
                return Ok(request);
            }
            let o = &*openings;
            let deadline = tokio::time::sleep(o.timeout);
            tokio::pin!(deadline);
            // The message is taken before the wait, and copied out of the connection's read
            // buffer: a waiting opening then holds a few bytes, not a frame queued in the
            // connection's receive buffer (a slab that keeps the room of its busiest moment for
            // the connection's life) nor a slice pinning a whole read buffer.
            let body = std::mem::replace(request.body_mut(), Body::empty());
            let message = tokio::select! {
                biased;
                read = read_small(body, o.max_body) => read?,
                () = &mut deadline => return Err(body_late()),
            };
            // Counted among its connection's waiting openings until it has its turn or is refused.
            let _waiting = request.extensions().get::<WaitingOpenings>().map(WaitingOpenings::wait);
            let turn = tokio::select! {
                biased;
                turn = o.turns.clone().acquire_owned() => turn.ok(),
                () = &mut deadline => None,
            };
            let Some(turn) = turn else {
                o.metrics.call_shed("openings");
                return Err(refusal(Code::Unavailable, "too many streams are being opened; retry shortly"));
            };
            request.extensions_mut().insert(OpeningTurn::new(turn));
            *request.body_mut() = Body::new(Full::new(message));
            Ok(request)
        }
    }
}

/// A small request body, read whole and copied into one buffer of its own; refused past
/// `max_body` bytes.
async fn read_small(mut body: Body, max_body: usize) -> Result<bytes::Bytes, http::Response<Body>> {
    let mut message = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(tonic::Status::cancelled("the request's stream ended early").into_http());
        };
        if let Ok(data) = frame.into_data() {
            if message.len() + data.len() > max_body {
                return Err(too_large(max_body));
            }
            message.extend_from_slice(&data);
        }
    }
    Ok(message.freeze())
}

fn too_large(max_body: usize) -> http::Response<Body> {
    let message = format!("the request is larger than {} bytes", max_body - FRAME_HEADER);
    tonic::Status::new(Code::OutOfRange, message).into_http()
}

fn body_late() -> http::Response<Body> {
    let message = "the request's body did not arrive within the request timeout";
    tonic::Status::deadline_exceeded(message).into_http()
}

impl ShedLayer {
    pub(crate) fn openings(&self) -> Openings {
        self.openings.clone()
    }
}

#[derive(Clone)]
pub(crate) struct ShedLayer {
    in_flight: Arc<Semaphore>,
    /// Streams being opened at once (`server.max_stream_openings`).
    openings: Openings,
    memory: Arc<Memory>,
    metrics: Arc<Metrics>,
    /// A request body larger than this is refused before it is read further (tonic's own limit
    /// of a message, plus its framing).
    max_body: usize,
    /// How long a request's body has to arrive.
    body_timeout: Duration,
}

/// gRPC's length-prefixed framing of a message.
const FRAME_HEADER: usize = 5;

impl ShedLayer {
    pub(crate) fn new(
        max_in_flight: usize,
        max_openings: usize,
        max_request_bytes: usize,
        body_timeout: Duration,
        memory: Arc<Memory>,
        metrics: Arc<Metrics>,
    ) -> ShedLayer {
        ShedLayer {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            openings: Openings(Arc::new(OpeningTurns {
                turns: Arc::new(Semaphore::new(max_openings)),
                max_body: max_request_bytes.saturating_add(FRAME_HEADER),
                timeout: body_timeout,
                metrics: metrics.clone(),
            })),
            memory,
            metrics,
            max_body: max_request_bytes.saturating_add(FRAME_HEADER),
            body_timeout,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

fn refusal(code: Code, message: &str) -> http::Response<tonic::body::Body> {
    let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
    tonic::Status::with_error_details(code, message, details).into_http()
}

type Body = tonic::body::Body;

impl<S> Service<http::Request<Body>> for Shed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if call::is_open(path) {
            return Box::pin(self.inner.call(request));
        }
        let layer = &self.layer;
        if call::is_heavy(path) && layer.memory.over() {
            layer.metrics.call_shed("memory");
            let response = refusal(Code::Unavailable, "the gateway is above its memory watermark; retry shortly");
            return Box::pin(async move { Ok(response) });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = layer.clone();
        // An open stream holds no place (open streams are bounded by the watch hub's own limit),
        // but opening one does: a reconnect storm of thousands of watchers waits its turn here,
        // where a waiting call costs a few hundred bytes, instead of all of them holding the
        // state of authentication, lookup and first poll at once. The wait is bounded by the
        // request timeout, after which the caller is told to retry.
        if call::opens_stream(path) {
            // The opening as it then waits (for its snapshot's first poll, it may be) holds the
            // inner call and its turn, not the request and the admission's state besides.
            let mut enter = move |request: http::Request<Body>| -> Self::Future {
                let turn = request.extensions().get::<OpeningTurn>().cloned();
                let call = inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    turn.inspect(OpeningTurn::give_back);
                    response
                })
            };
            // Admitted already (the gRPC listener admits before the stack).
            if request.extensions().get::<OpeningTurn>().is_some() {
                return enter(request);
            }
            let admitted = Box::pin(layer.openings.admit(request));
            return Box::pin(admitted.then(move |admitted| match admitted {
                Ok(request) => enter(request),
                Err(refused) => Box::pin(async move { Ok(refused) }),
            }));
        }
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let connection = parts.extensions.remove::<ConnectionCalls>();
            let body = match collect(body, layer.max_body, layer.body_timeout).await {
                Ok(body) => body,
                Err(refused) => return Ok(refused),
            };
            let Ok(permit) = layer.in_flight.clone().try_acquire_owned() else {
                layer.metrics.call_shed("in_flight");
                return Ok(refusal(Code::ResourceExhausted, "too many calls in progress; retry shortly"));
            };
            let connection = match connection.map(|calls| calls.0.try_acquire_owned()) {
                Some(Err(_)) => {
                    layer.metrics.call_shed("connection_in_flight");
                    let message = "too many calls in progress on this connection; retry shortly";
                    return Ok(refusal(Code::ResourceExhausted, message));
                }
                Some(Ok(permit)) => Some(permit),
                None => None,
            };
            let response = inner.call(http::Request::from_parts(parts, Body::new(Full::new(body)))).await;
            drop((permit, connection));
            response
        })
    }
}

/// The request's body, whole, within the size limit and the request timeout; or the answer
/// that refuses it.
async fn collect(body: Body, max_body: usize, timeout: Duration) -> Result<bytes::Bytes, http::Response<Body>> {
    match tokio::time::timeout(timeout, read_small(body, max_body)).await {
        Ok(read) => read,
        Err(_) => Err(body_late()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_from_proc() {
        assert!(resident_bytes().is_some_and(|b| b > 1024 * 1024));
    }

    #[tokio::test]
    async fn calls_past_the_limit_are_refused_at_once_with_retry_info() {
        let metrics = Metrics::new();
        let memory = Arc::new(Memory { resident: AtomicU64::new(0), limit: None });
        let layer = ShedLayer::new(1, 1, 1024, Duration::from_secs(30), memory.clone(), metrics);
        let (entered, has_entered) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let waits = Arc::new(std::sync::Mutex::new(Some((entered, released))));
        let inner = tower::service_fn(move |request: http::Request<Body>| {
            // The first GetCopy says it has begun and waits for the test's word; the others pass.
            let wait = if request.uri().path().ends_with("/GetCopy") { waits.lock().unwrap().take() } else { None };
            async move {
                if let Some((entered, released)) = wait {
                    let _ = entered.send(());
                    let _ = released.await;
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let mut shed = layer.layer(inner);
        let call = |path: &str, body: Body| http::Request::builder().uri(path).body(body).unwrap();
        let get = "/snapgate.v1.SnapshotCopyService/GetCopy";
        // A call whose body has not arrived holds no place.
        let never = Body::new(http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >()));
        let waiting = tokio::spawn(shed.call(call(get, never)));
        let first = tokio::spawn(shed.call(call(get, Body::empty())));
        has_entered.await.unwrap();
        let refused = shed.call(call(get, Body::empty())).await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(1)));
        // Health is never shed.
        let health = shed.call(call("/grpc.health.v1.Health/Check", Body::empty())).await.unwrap();
        assert!(tonic::Status::from_header_map(health.headers()).is_none());
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let after = shed.call(call(get, Body::empty())).await.unwrap();
        assert!(tonic::Status::from_header_map(after.headers()).is_none());
        assert!(!waiting.is_finished());
        waiting.abort();
        // A body over the limit is refused without reading it all.
        let large = shed.call(call(get, Body::new(Full::new(bytes::Bytes::from(vec![0u8; 4096]))))).await.unwrap();
        assert_eq!(tonic::Status::from_header_map(large.headers()).unwrap().code(), Code::OutOfRange);
    }

    #[tokio::test]
    async fn one_connection_holds_at_most_half_of_the_places() {
        let memory = Arc::new(Memory { resident: AtomicU64::new(0), limit: None });
        let layer = ShedLayer::new(4, 4, 1024, Duration::from_secs(30), memory, Metrics::new());
        let (release, released) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_: http::Request<Body>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
            }
        });
        let mut shed = layer.layer(inner);
        let (flood, other) = (ConnectionCalls::new(4), ConnectionCalls::new(4));
        let call = |conn: &ConnectionCalls| {
            let mut request =
                http::Request::builder().uri("/snapgate.v1.SnapshotCopyService/GetCopy").body(Body::empty()).unwrap();
            request.extensions_mut().insert(conn.clone());
            request
        };
        let held: Vec<_> = (0..2).map(|_| tokio::spawn(shed.call(call(&flood)))).collect();
        // Both of the flood's places taken, its next call is refused at once...
        while flood.0.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = shed.call(call(&flood)).await.unwrap();
        assert_eq!(tonic::Status::from_header_map(refused.headers()).unwrap().code(), Code::ResourceExhausted);
        // ...while another connection's call is served.
        let served = tokio::spawn(shed.call(call(&other)));
        release.send(true).unwrap();
        let served = served.await.unwrap().unwrap();
        assert!(tonic::Status::from_header_map(served.headers()).is_none());
        for call in held {
            call.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_ends_at_the_request_timeout() {
        let memory = Arc::new(Memory { resident: AtomicU64::new(0), limit: None });
        let layer = ShedLayer::new(1, 1, 1024, Duration::from_secs(30), memory, Metrics::new());
        let inner = tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let never = Body::new(http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >()));
        let request = http::Request::builder().uri("/snapgate.v1.SnapshotCopyService/GetCopy").body(never).unwrap();
        let answer = layer.layer(inner).call(request).await.unwrap();
        assert_eq!(tonic::Status::from_header_map(answer.headers()).unwrap().code(), Code::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_past_the_openings_wait_their_turn_and_are_told_to_retry_after_the_timeout() {
        let memory = Arc::new(Memory { resident: AtomicU64::new(0), limit: None });
        let layer = ShedLayer::new(1, 1, 1024, Duration::from_secs(30), memory, Metrics::new());
        let (release, released) = tokio::sync::watch::channel(false);
        let entered = Arc::new(AtomicU64::new(0));
        let inner = {
            let entered = entered.clone();
            tower::service_fn(move |_: http::Request<Body>| {
                entered.fetch_add(1, Ordering::SeqCst);
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
                }
            })
        };
        let mut shed = layer.layer(inner);
        let watch =
            || http::Request::builder().uri("/snapgate.v1.SnapshotCopyService/WatchCopy").body(Body::empty()).unwrap();
        let opening = tokio::spawn(shed.call(watch()));
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The second opening waits without reaching the layers inside...
        let waiting = tokio::spawn(shed.call(watch()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(entered.load(Ordering::SeqCst), 1);
        // ...and has its turn once the first stream is open.
        release.send(true).unwrap();
        assert!(tonic::Status::from_header_map(opening.await.unwrap().unwrap().headers()).is_none());
        assert!(tonic::Status::from_header_map(waiting.await.unwrap().unwrap().headers()).is_none());
        assert_eq!(entered.load(Ordering::SeqCst), 2);
        // An opening that waits longer than the request timeout is told to retry.
        release.send(false).unwrap();
        let held = tokio::spawn(shed.call(watch()));
        while entered.load(Ordering::SeqCst) == 2 {
            tokio::task::yield_now().await;
        }
        let refused = shed.call(watch()).await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_details_retry_info().is_some());
        assert_eq!(entered.load(Ordering::SeqCst), 3);
        held.abort();
    }

    #[tokio::test]
    async fn an_opening_takes_its_message_before_it_waits_and_an_admitted_one_passes_on() {
        use futures_util::StreamExt;
        let memory = Arc::new(Memory { resident: AtomicU64::new(0), limit: None });
        let layer = ShedLayer::new(1, 1, 1024, Duration::from_secs(30), memory, Metrics::new());
        let openings = layer.openings();
        let watch =
            |body: Body| http::Request::builder().uri("/snapgate.v1.SnapshotCopyService/WatchCopy").body(body).unwrap();
        let first = openings.admit(watch(Body::empty())).await.unwrap();
        assert!(first.extensions().get::<OpeningTurn>().is_some());
        // The only turn is taken: the next opening waits, with its message already read.
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let frames = futures_util::stream::iter([Ok::<_, tonic::Status>(http_body::Frame::data(
            bytes::Bytes::from_static(b"message"),
        ))])
        .chain(futures_util::stream::poll_fn({
            let read = read.clone();
            move |_| {
                read.store(true, Ordering::SeqCst);
                Poll::Ready(None)
            }
        }));
        let waiting = tokio::spawn({
            let openings = openings.clone();
            async move { openings.admit(watch(Body::new(http_body_util::StreamBody::new(frames)))).await }
        });
        while !read.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        // A request that already has its turn (admitted before the stack) is not held again.
        let again = tokio::time::timeout(Duration::from_secs(5), openings.admit(first)).await.unwrap().unwrap();
        assert!(!waiting.is_finished());
        again.extensions().get::<OpeningTurn>().unwrap().give_back();
        let admitted = waiting.await.unwrap().unwrap();
        let message = admitted.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&message[..], b"message");
    }

    #[test]
    fn streams_and_copies_are_refused_above_the_watermark() {
        let memory = Memory { resident: AtomicU64::new(200), limit: Some(100) };
        assert!(memory.over());
        let memory = Memory { resident: AtomicU64::new(50), limit: Some(100) };
        assert!(!memory.over());
        assert!(!Memory { resident: AtomicU64::new(u64::MAX), limit: None }.over());
    }
}

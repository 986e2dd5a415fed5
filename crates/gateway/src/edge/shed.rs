//! Load shedding, before any work is done for a call (authentication included): unary calls
//! beyond `max_in_flight_calls` are RESOURCE_EXHAUSTED at once, and above the memory watermark
//! new streams and new copies are UNAVAILABLE until the resident set falls back; both carry
//! RetryInfo. Health and reflection are never shed: a probe must see a gateway that is merely
//! busy as serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::metrics::Metrics;
use crate::tasks::Tasks;

const EXEMPT_PREFIXES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Calls that open a stream or start a copy: what the memory watermark refuses.
const HEAVY_SUFFIXES: [&str; 2] = ["/WatchCopy", "/CopyClusterSnapshot"];

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

#[derive(Clone)]
pub(crate) struct ShedLayer {
    in_flight: Arc<Semaphore>,
    memory: Arc<Memory>,
    metrics: Arc<Metrics>,
}

impl ShedLayer {
    pub(crate) fn new(max_in_flight: usize, memory: Arc<Memory>, metrics: Arc<Metrics>) -> ShedLayer {
        ShedLayer { in_flight: Arc::new(Semaphore::new(max_in_flight)), memory, metrics }
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

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        let layer = &self.layer;
        if HEAVY_SUFFIXES.iter().any(|s| path.ends_with(s)) && layer.memory.over() {
            layer.metrics.call_shed("memory");
            let response = refusal(Code::Unavailable, "the gateway is above its memory watermark; retry shortly");
            return Box::pin(async move { Ok(response) });
        }
        // A stream holds no permit: open streams are bounded by the watch hub's own limit.
        let streaming = path.ends_with("/WatchCopy");
        let permit = if streaming {
            None
        } else {
            match layer.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    layer.metrics.call_shed("in_flight");
                    let response = refusal(Code::ResourceExhausted, "too many calls in progress; retry shortly");
                    return Box::pin(async move { Ok(response) });
                }
            }
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await;
            drop(permit);
            response
        })
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
        let layer = ShedLayer::new(1, memory.clone(), metrics);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(Some(released)));
        let inner = tower::service_fn(move |request: http::Request<()>| {
            // The first GetCopy waits for the test's word; the others pass.
            let wait = if request.uri().path().ends_with("/GetCopy") { released.lock().unwrap().take() } else { None };
            async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let mut shed = layer.layer(inner);
        let call = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        // The place is taken when the call is made, before its future runs.
        let first = tokio::spawn(shed.call(call("/snapgate.v1.SnapshotCopyService/GetCopy")));
        let refused = shed.call(call("/snapgate.v1.SnapshotCopyService/GetCopy")).await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(1)));
        // Health is never shed.
        let health = shed.call(call("/grpc.health.v1.Health/Check")).await.unwrap();
        assert!(tonic::Status::from_header_map(health.headers()).is_none());
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let after = shed.call(call("/snapgate.v1.SnapshotCopyService/GetCopy")).await.unwrap();
        assert!(tonic::Status::from_header_map(after.headers()).is_none());
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

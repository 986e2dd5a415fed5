//! What every call records, as one tower layer outside authentication (so a call refused
//! before any handler, unauthenticated or undecodable, is counted too): the RPC metrics by
//! method and status code with latency, and the server span. The caller's
//! `traceparent`/`tracestate` become its parent before it is entered, it follows the
//! OpenTelemetry RPC conventions as most collectors and dashboards still read them
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), and it lasts until the
//! response body ends, so a WatchCopy span covers the whole stream. The trace id goes back to
//! the caller in the `x-trace-id` response header.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http_body::{Body, Frame};
use opentelemetry::propagation::Extractor;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::Metrics;
use crate::telemetry::RpcConventions;

pub(crate) const TRACE_ID_HEADER: &str = "x-trace-id";

#[derive(Clone)]
pub(crate) struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> ObserveLayer {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("unknown", "unknown"));
        let span = tracing::info_span!(
            "rpc",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = tracing::field::Empty,
            rpc.service = tracing::field::Empty,
            rpc.method = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
            rpc.system.name = tracing::field::Empty,
            rpc.response.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        RpcConventions::get().record_names(&span, "grpc", service, method);
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(request.headers())));
        // Before the span is entered: entering starts its OpenTelemetry context.
        let _ = span.set_parent(parent);
        // Recorded as fields too, so every log line inside the call carries them.
        let ids = crate::telemetry::ids_of(&span);
        if let Some((trace_id, span_id)) = &ids {
            span.record("trace_id", trace_id.as_str());
            span.record("span_id", span_id.as_str());
        }
        let trace_id = ids.map(|(trace_id, _)| trace_id);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let handler_span = span.clone();
        let call = CallRecord { metrics: self.metrics.clone(), method: method.into(), started };
        Box::pin(async move {
            let mut response = inner.call(request).instrument(handler_span).await?;
            if let Some(id) = trace_id.and_then(|id| http::HeaderValue::from_str(&id).ok()) {
                response.headers_mut().insert(TRACE_ID_HEADER, id);
            }
            // Latency to the response's headers: a unary call's answer, or a stream's opening.
            let latency = call.started.elapsed();
            let mut pending = Some((call, latency));
            // A trailers-only response (an error before any message) has its status in the headers.
            if let Some(code) = grpc_status(response.headers()) {
                record_status(&span, code);
                if let Some((call, latency)) = pending.take() {
                    call.finish(code, latency);
                }
            }
            // Without trace export the span is none, and an open stream keeps no room for it.
            let span = (!span.is_none()).then(|| Box::new(span));
            Ok(response.map(|body| ObservedBody { inner: body, span, pending }))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

fn record_status(span: &tracing::Span, code: i32) {
    let conventions = RpcConventions::get();
    if conventions.old() {
        span.record("rpc.grpc.status_code", code);
    }
    if conventions.current() {
        // The current conventions name the code: "OK", "NOT_FOUND", ...
        let name = format!("{:?}", tonic::Code::from_i32(code));
        span.record("rpc.response.status_code", screaming_snake(&name).as_str());
    }
    // Server spans are errors for the codes the gRPC conventions name as server faults.
    let error = matches!(code, 2 | 4 | 12 | 13 | 14 | 15);
    span.record("otel.status_code", if error { "ERROR" } else { "OK" });
}

/// `NotFound` as `NOT_FOUND`.
fn screaming_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A call whose status is not known yet.
struct CallRecord {
    metrics: Arc<Metrics>,
    method: Box<str>,
    started: Instant,
}

impl CallRecord {
    fn finish(self, code: i32, latency: Duration) {
        self.metrics.rpc(&self.method, tonic::Code::from_i32(code), latency);
    }
}

/// The response body, holding the server span until the last frame (or until the client goes
/// away and the body is dropped), and counting the call when its status is known.
pub(crate) struct ObservedBody<B> {
    inner: B,
    span: Option<Box<tracing::Span>>,
    pending: Option<(CallRecord, Duration)>,
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // The client went away before the status was sent.
        if let Some((call, latency)) = self.pending.take() {
            call.finish(tonic::Code::Cancelled as i32, latency);
        }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let trailers = match frame {
                Some(Ok(frame)) => frame.trailers_ref(),
                _ => None,
            };
            if let Some(code) = trailers.and_then(grpc_status) {
                if let Some(span) = &this.span {
                    record_status(span, code);
                }
                if let Some((call, latency)) = this.pending.take() {
                    call.finish(code, latency);
                }
            }
            if frame.is_none() || trailers.is_some() {
                drop(_entered);
                this.span = None;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

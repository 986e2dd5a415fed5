//! Fair share: a token bucket of calls per caller, after authentication (the caller is known)
//! and before any work for the call. One caller's flood empties its own bucket and is refused
//! with RESOURCE_EXHAUSTED and RetryInfo; every other caller's calls go on.
//!
//! Within its bucket, a caller also has `in_flight` turns at the gateway's work: its unary
//! calls past them wait (in order) for one of its own to end. A rate alone lets a caller's
//! burst (its whole bucket at once) fill the gateway's run queue, and every other caller's call
//! then waits behind all of it; with turns it waits behind at most `in_flight` of them. A call
//! that waits longer than the request timeout is refused (RESOURCE_EXHAUSTED with RetryInfo).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use snapgate_domain::TokenBucket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::shed::Openings;

use crate::auth::Caller;
use crate::config::FairShareSettings;
use crate::error::Error;
use crate::metrics::Metrics;

/// A token bucket per caller id, made with the caller's share on first use and forgotten
/// after ten idle minutes (a caller back after that starts full). The clock is tokio's.
#[derive(Clone)]
pub(crate) struct CallerBuckets(moka::sync::Cache<String, Arc<TokenBucket>>);

impl CallerBuckets {
    pub(crate) fn new() -> CallerBuckets {
        CallerBuckets(moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(600)).build())
    }

    /// Takes one of `id`'s tokens (its bucket holds `burst` and refills at `rate` a second),
    /// or says how long until the next one.
    pub(crate) fn take(&self, id: &str, (rate, burst): (f64, u32)) -> Result<(), Duration> {
        let now = || tokio::time::Instant::now().into_std();
        let bucket = self.0.get_with_by_ref(id, || Arc::new(TokenBucket::new(rate, burst, now())));
        bucket.take_or_wait(now())
    }
}

#[derive(Clone)]
pub(crate) struct FairShareLayer {
    settings: Arc<FairShareSettings>,
    buckets: CallerBuckets,
    /// Each caller's turns at the gateway's work, made with its `in_flight` on first use.
    turns: moka::sync::Cache<String, Arc<Semaphore>>,
    /// How long a call waits for one of its caller's turns.
    wait: Duration,
    metrics: Arc<Metrics>,
}

/// When a call refused for want of a turn may come back: a turn frees as soon as one of the
/// caller's calls ends, but these have been running for the whole request timeout.
const TURN_RETRY: Duration = Duration::from_secs(1);

impl FairShareLayer {
    /// `wait` bounds a call's wait for one of its caller's turns (the request timeout).
    pub(crate) fn new(settings: FairShareSettings, wait: Duration, metrics: Arc<Metrics>) -> FairShareLayer {
        let turns = moka::sync::Cache::builder().max_capacity(100_000).time_to_idle(Duration::from_secs(600)).build();
        FairShareLayer { settings: Arc::new(settings), buckets: CallerBuckets::new(), turns, wait, metrics }
    }

    /// Takes a call from `caller`'s share: the first override naming it or one of its
    /// groups, else the default.
    fn admit(&self, caller: &Caller) -> Result<(), Duration> {
        self.buckets.take(&caller.id, self.settings.calls_of(&caller.id, &caller.groups))
    }

    /// One of `caller`'s turns, at once or after waiting for one of its calls to end.
    async fn turn(&self, caller: &Caller) -> Result<OwnedSemaphorePermit, Error> {
        let turns = self.turns.get_with_by_ref(&caller.id, || {
            let limit = self.settings.in_flight_of(&caller.id, &caller.groups);
            Arc::new(Semaphore::new(usize::try_from(limit).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS)))
        });
        if let Ok(turn) = turns.clone().try_acquire_owned() {
            return Ok(turn);
        }
        self.metrics.call_waited("caller_in_flight");
        match tokio::time::timeout(self.wait, turns.acquire_owned()).await {
            // The semaphore is never closed.
            Ok(Ok(turn)) => Ok(turn),
            _ => {
                self.metrics.call_shed("caller_in_flight");
                Err(Error::OverShare { caller: caller.id.clone(), of: "calls in progress", retry_after: TURN_RETRY })
            }
        }
    }
}

impl<S> Layer<S> for FairShareLayer {
    type Service = FairShare<S>;

    fn layer(&self, inner: S) -> FairShare<S> {
        FairShare { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct FairShare<S> {
    inner: S,
    layer: FairShareLayer,
}

impl<S, B> Service<http::Request<B>> for FairShare<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            // Health and reflection carry no caller: they are not shared out.
            let caller = request.extensions().get::<Caller>().cloned();
            let Some(caller) = caller else { return inner.call(request).await };
            if let Err(wait) = layer.admit(&caller) {
                layer.metrics.call_shed("fair_share");
                tracing::debug!(caller = caller.id, ?wait, "call over the caller's share");
                let refusal = Error::OverShare { caller: caller.id, of: "calls", retry_after: wait };
                return Ok(tonic::Status::from(refusal).into_http());
            }
            if Openings::takes_turn(request.uri().path()) {
                return inner.call(request).await;
            }
            let _turn = match layer.turn(&caller).await {
                Ok(turn) => turn,
                Err(refusal) => {
                    tracing::debug!(caller = caller.id, "call waited past the request timeout for a turn");
                    return Ok(tonic::Status::from(refusal).into_http());
                }
            };
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CallerShare;

    fn caller(id: &str, groups: &[&str]) -> Caller {
        Caller::with_groups(id, groups)
    }

    #[test]
    fn each_caller_has_its_own_bucket_and_overrides_apply() {
        let settings = FairShareSettings {
            calls_per_sec: 1.0,
            burst: 2,
            overrides: vec![CallerShare::for_id("backup", true, 1.0, 5)],
            ..FairShareSettings::default()
        };
        let layer = FairShareLayer::new(settings, Duration::from_secs(1), Metrics::new());
        let flood = caller("flood", &[]);
        assert!(layer.admit(&flood).is_ok() && layer.admit(&flood).is_ok());
        let wait = layer.admit(&flood).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another caller is untouched by the first one's flood.
        assert!(layer.admit(&caller("quiet", &[])).is_ok());
        let backup = caller("dr-runner", &["backup"]);
        for _ in 0..5 {
            assert!(layer.admit(&backup).is_ok());
        }
        assert!(layer.admit(&backup).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_calls_past_its_turns_wait_for_its_own_and_nobody_elses_do() {
        use futures_util::poll;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let settings = FairShareSettings {
            in_flight: 2,
            overrides: vec![CallerShare { in_flight: Some(3), ..CallerShare::for_id("dr-runner", false, 200.0, 1000) }],
            ..FairShareSettings::default()
        };
        let metrics = Metrics::new();
        let layer = FairShareLayer::new(settings, Duration::from_secs(5), metrics.clone());
        // Every call runs until the test lets one end.
        let (gate, started) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        let inner = {
            let (gate, started) = (gate.clone(), started.clone());
            tower::service_fn(move |_: http::Request<()>| {
                let (gate, started) = (gate.clone(), started.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
                }
            })
        };
        let mut service = layer.layer(inner);
        let mut call = |who: &str, path: &str| {
            let mut request = http::Request::builder().uri(path).body(()).unwrap();
            request.extensions_mut().insert(caller(who, &[]));
            service.call(request)
        };
        let get = "/snapgate.v1.SnapshotCopyService/GetCopy";
        let (mut first, mut second, mut third) = (call("flood", get), call("flood", get), call("flood", get));
        assert!(poll!(&mut first).is_pending() && poll!(&mut second).is_pending() && poll!(&mut third).is_pending());
        assert_eq!(started.load(Ordering::SeqCst), 2, "the third waits for a turn");
        // Nobody else waits for the flood's turns, and a stream opening has turns of its own.
        let mut quiet = call("quiet", get);
        let mut watch = call("flood", "/snapgate.v1.SnapshotCopyService/WatchCopy");
        assert!(poll!(&mut quiet).is_pending() && poll!(&mut watch).is_pending());
        assert_eq!(started.load(Ordering::SeqCst), 4);
        // An override's turns apply to the caller it names.
        let mut runs = [call("dr-runner", get), call("dr-runner", get), call("dr-runner", get)];
        for run in &mut runs {
            assert!(poll!(run).is_pending());
        }
        assert_eq!(started.load(Ordering::SeqCst), 7);
        // The first of the flood's calls to end gives its turn to the third.
        gate.add_permits(1);
        let mut ended = 0;
        for call in [&mut first, &mut second] {
            if let std::task::Poll::Ready(response) = poll!(call) {
                assert_eq!(response.unwrap().status(), http::StatusCode::OK);
                ended += 1;
            }
        }
        assert_eq!(ended, 1);
        assert!(poll!(&mut third).is_pending());
        assert_eq!(started.load(Ordering::SeqCst), 8, "the third call runs now");
        // A call that waits past the request timeout is refused with when to come back.
        let mut late = call("flood", get);
        assert!(poll!(&mut late).is_pending());
        tokio::time::advance(Duration::from_secs(6)).await;
        let refused = late.await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(tonic_types::StatusExt::get_details_retry_info(&status).is_some());
        let text = metrics.render(0, 0);
        assert!(text.contains(r#"snapgate_calls_waited_total{reason="caller_in_flight"} 2"#), "{text}");
        assert!(text.contains(r#"snapgate_calls_shed_total{reason="caller_in_flight"} 1"#), "{text}");
    }
}

//! Fair share: a token bucket of calls per caller, after authentication (the caller is known)
//! and before any work for the call. One caller's flood empties its own bucket and is refused
//! with RESOURCE_EXHAUSTED and RetryInfo; every other caller's calls go on.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use snapgate_domain::TokenBucket;
use tower::{Layer, Service};

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
    metrics: Arc<Metrics>,
}

impl FairShareLayer {
    pub(crate) fn new(settings: FairShareSettings, metrics: Arc<Metrics>) -> FairShareLayer {
        FairShareLayer { settings: Arc::new(settings), buckets: CallerBuckets::new(), metrics }
    }

    /// Takes a call from `caller`'s share: the first override naming it or one of its
    /// groups, else the default.
    fn admit(&self, caller: &Caller) -> Result<(), Duration> {
        self.buckets.take(&caller.id, self.settings.calls_of(&caller.id, &caller.groups))
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
            if let Some(caller) = caller
                && let Err(wait) = layer.admit(&caller)
            {
                layer.metrics.call_shed("fair_share");
                tracing::debug!(caller = caller.id, ?wait, "call over the caller's share");
                let refusal = Error::OverShare { caller: caller.id, of: "calls", retry_after: wait };
                return Ok(tonic::Status::from(refusal).into_http());
            }
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
            overrides: vec![CallerShare {
                principal: None,
                group: Some("backup".into()),
                calls_per_sec: 1.0,
                burst: 5,
                aws_calls_per_sec: None,
                aws_burst: None,
            }],
            ..FairShareSettings::default()
        };
        let layer = FairShareLayer::new(settings, Metrics::new());
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
}

//! The fair-share layer: each caller's share of calls (`share::CallShare`), taken after
//! authentication (the caller is known) and before any work for the call, so that one caller's
//! flood is refused from its own bucket, or waits for its own turns, while every other
//! caller's calls go on. Health and reflection carry no caller and are not shared out; a stream
//! opening takes its share of calls but no turn (openings have turns of their own, `shed`).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tower::Service;

use crate::auth::Caller;
use crate::call;
use crate::share::CallShare;
use crate::stack::around::{Around, AroundLayer, Response};

/// The fair-share step; `layer` makes it a tower layer.
#[derive(Clone)]
pub(crate) struct FairShare {
    share: Arc<CallShare>,
}

pub(crate) fn layer(share: Arc<CallShare>) -> AroundLayer<FairShare> {
    AroundLayer(FairShare { share })
}

impl Around for FairShare {
    fn around<S, B>(&self, request: http::Request<B>, mut next: S) -> BoxFuture<'static, Result<Response, S::Error>>
    where
        S: Service<http::Request<B>, Response = Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        // Decided before the call's future is made: a stream's opening, which may wait a poll
        // round for its first observation, then holds the next layer's future alone.
        let caller = request.extensions().get::<std::sync::Arc<Caller>>().cloned();
        let Some(caller) = caller else { return Box::pin(next.call(request)) };
        if let Err(refusal) = self.share.admit(&caller) {
            let refused = tonic::Status::from(refusal).into_http();
            return Box::pin(async move { Ok(refused) });
        }
        if call::opens_stream(request.uri().path()) {
            return Box::pin(next.call(request));
        }
        let share = self.share.clone();
        Box::pin(async move {
            let _turn = match share.turn(&caller).await {
                Ok(turn) => turn,
                Err(refusal) => return Ok(tonic::Status::from(refusal).into_http()),
            };
            next.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CallerShare, FairShareSettings};
    use crate::metrics::Metrics;
    use std::time::Duration;
    use tokio::sync::Semaphore;
    use tower::Layer;

    fn caller(id: &str, groups: &[&str]) -> Caller {
        Caller::with_groups(id, groups)
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
        let layer = layer(Arc::new(CallShare::new(settings, Duration::from_secs(5), metrics.clone())));
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
            request.extensions_mut().insert(std::sync::Arc::new(caller(who, &[])));
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

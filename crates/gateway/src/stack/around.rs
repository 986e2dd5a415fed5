//! One shape for the layers that run around the rest of the stack and answer with its own
//! response type (authenticate, fair share, deadline): each says only what it does around one
//! call (`Around::around`); the tower plumbing (readiness, handing the ready service to the
//! call) is written once, here.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Layer, Service};

/// The response every layer inside `observe` and `shed` answers with.
pub(crate) type Response = http::Response<tonic::body::Body>;

/// What a layer does around one call: `next` is the rest of the stack, made ready for this call.
pub(crate) trait Around: Clone + Send + Sync + 'static {
    fn around<S, B>(&self, request: http::Request<B>, next: S) -> BoxFuture<'static, Result<Response, S::Error>>
    where
        S: Service<http::Request<B>, Response = Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static;
}

/// The tower layer of an `Around`.
#[derive(Clone)]
pub(crate) struct AroundLayer<T>(pub(crate) T);

impl<T: Clone, S> Layer<S> for AroundLayer<T> {
    type Service = AroundService<T, S>;

    fn layer(&self, inner: S) -> AroundService<T, S> {
        AroundService { step: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub(crate) struct AroundService<T, S> {
    step: T,
    inner: S,
}

impl<T, S, B> Service<http::Request<B>> for AroundService<T, S>
where
    T: Around,
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was made ready is the one that must serve this call; a clone of it
        // waits for the next call's readiness.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        self.step.around(request, ready)
    }
}

//! The authentication layer. It sits outside the gRPC services, so an unauthenticated call
//! never reaches a handler; health and reflection stay open (probes and grpcurl's `list`
//! carry no credentials, and neither reveals more than the public proto).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use super::Authenticator;
use crate::edge::accept::ConnInfo;

const OPEN_PREFIXES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

#[derive(Clone)]
pub(crate) struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub(crate) fn new(auth: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.auth.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return Box::pin(self.inner.call(request));
        }
        // The clone that was made ready is the one that must serve this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
            let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
            let info = request.extensions().get::<ConnInfo>().cloned();
            let certificate = info.as_ref().and_then(|i| i.certificate.as_ref());
            let span = tracing::info_span!(
                "authenticate",
                otel.name = "authenticate",
                authn.method = tracing::field::Empty,
                authn.outcome = tracing::field::Empty,
                enduser.id = tracing::field::Empty,
            );
            // Boxed: the verification's state lives only while it runs, not in the future that
            // waits for the handler (a WatchCopy opening can wait a poll round).
            let outcome =
                Box::pin(auth.authenticate_holding(authorization.as_deref(), certificate).instrument(span.clone()))
                    .await;
            match &outcome {
                Ok((caller, _)) => {
                    span.record("authn.method", caller.method.as_str());
                    span.record("authn.outcome", "ok");
                    span.record("enduser.id", caller.id.as_str());
                }
                Err(error) => {
                    span.record("authn.outcome", error.label());
                }
            }
            match outcome {
                Ok((caller, key)) => {
                    request.extensions_mut().insert(caller);
                    if let Some(key) = key {
                        request.extensions_mut().insert(key);
                    }
                    inner.call(request).await
                }
                Err(error) => {
                    crate::audit::unauthenticated(&method, &error, info.as_ref().and_then(|i| i.remote));
                    Ok(tonic::Status::from(crate::error::Error::from(error)).into_http())
                }
            }
        })
    }
}

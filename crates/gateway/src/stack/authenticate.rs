//! The authentication layer. It sits outside the gRPC services, so an unauthenticated call
//! never reaches a handler; health and reflection stay open (probes and grpcurl's `list`
//! carry no credentials, and neither reveals more than the public proto).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use tower::Service;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::call::{self, ConnInfo};
use crate::stack::around::{Around, AroundLayer, Response};

/// The authentication step; `layer` makes it a tower layer.
#[derive(Clone)]
pub(crate) struct Authenticate {
    auth: Arc<Authenticator>,
}

pub(crate) fn layer(auth: Arc<Authenticator>) -> AroundLayer<Authenticate> {
    AroundLayer(Authenticate { auth })
}

impl Around for Authenticate {
    fn around<S, B>(
        &self,
        mut request: http::Request<B>,
        mut inner: S,
    ) -> BoxFuture<'static, Result<Response, S::Error>>
    where
        S: Service<http::Request<B>, Response = Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        if call::is_open(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let auth = self.auth.clone();
        // Two steps: the verification, freed once it has decided, then the inner call alone (a
        // WatchCopy opening may wait a poll round for its first observation, and held the
        // request's room and this step's state besides).
        // It yields the inner call's future, not its answer: that is the point.
        #[allow(clippy::async_yields_async)]
        let verified = Box::pin(async move {
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
                    // Shared: every call with the same credential, the layers after this one and
                    // a stream for its life hold one caller, not copies of its strings.
                    request.extensions_mut().insert(caller);
                    if let Some(key) = key {
                        request.extensions_mut().insert(key);
                    }
                    Either::Left(inner.call(request))
                }
                Err(error) => {
                    crate::audit::unauthenticated(&method, &error, info.as_ref().and_then(|i| i.remote));
                    let refused = tonic::Status::from(crate::error::Error::from(error)).into_http();
                    Either::Right(Box::pin(async move { Ok(refused) }) as BoxFuture<'static, Result<Response, S::Error>>)
                }
            }
        });
        Box::pin(verified.flatten())
    }
}

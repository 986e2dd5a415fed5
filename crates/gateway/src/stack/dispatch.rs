//! The gRPC services by path: `/{service}/{method}` goes to the service of that name, any other
//! path is answered UNIMPLEMENTED. tonic's `Routes` does the same through an axum router, which
//! boxes a request's body and its response's body once more each way and keeps a router future
//! per call; an open WatchCopy stream held those boxes for its life.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::body::Body;
use tonic::server::NamedService;

type Answer = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

/// What answers a path: a gRPC service as tonic generates it (cheap to clone, ready at once,
/// its future boxed), or one method served by hand (`DispatchBuilder::method`).
trait Grpc: Send + Sync {
    fn answer(&self, request: http::Request<Body>) -> Answer;
}

impl<S> Grpc for S
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible, Future = Answer>
        + Clone
        + Send
        + Sync,
{
    fn answer(&self, request: http::Request<Body>) -> Answer {
        // A generated service is always ready: it holds its implementation behind an `Arc`.
        tower::Service::call(&mut self.clone(), request)
    }
}

/// One method served by a function of its request.
struct Method<F>(F);

impl<F> Grpc for Method<F>
where
    F: Fn(http::Request<Body>) -> Answer + Send + Sync,
{
    fn answer(&self, request: http::Request<Body>) -> Answer {
        (self.0)(request)
    }
}

/// The services the gRPC listener serves, by name, and the methods served apart from their
/// service, by path.
#[derive(Clone)]
pub(crate) struct Dispatch {
    methods: Arc<[(&'static str, Box<dyn Grpc>)]>,
    services: Arc<[(&'static str, Box<dyn Grpc>)]>,
}

/// Gathers the services a `Dispatch` serves.
#[derive(Default)]
pub(crate) struct DispatchBuilder {
    methods: Vec<(&'static str, Box<dyn Grpc>)>,
    services: Vec<(&'static str, Box<dyn Grpc>)>,
}

impl DispatchBuilder {
    /// Serves `service` under its name (a later service of the same name replaces it).
    pub(crate) fn add<S>(mut self, service: S) -> DispatchBuilder
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible, Future = Answer>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.services.retain(|(name, _)| *name != S::NAME);
        self.services.push((S::NAME, Box::new(service)));
        self
    }

    /// Serves the method at `path` (`/package.Service/Method`) with `answer`, rather than with
    /// its service's handler.
    pub(crate) fn method<F>(mut self, path: &'static str, answer: F) -> DispatchBuilder
    where
        F: Fn(http::Request<Body>) -> Answer + Send + Sync + 'static,
    {
        self.methods.retain(|(served, _)| *served != path);
        self.methods.push((path, Box::new(Method(answer))));
        self
    }

    pub(crate) fn build(self) -> Dispatch {
        Dispatch { methods: self.methods.into(), services: self.services.into() }
    }
}

impl Dispatch {
    pub(crate) fn builder() -> DispatchBuilder {
        DispatchBuilder::default()
    }

    /// The service a request's path names, if it is served.
    fn service(&self, path: &str) -> Option<&dyn Grpc> {
        if let Some((_, method)) = self.methods.iter().find(|(served, _)| *served == path) {
            return Some(&**method);
        }
        let (name, _method) = path.strip_prefix('/')?.split_once('/')?;
        self.services.iter().find(|(served, _)| *served == name).map(|(_, service)| &**service)
    }
}

impl tower::Service<http::Request<Body>> for Dispatch {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        match self.service(request.uri().path()) {
            Some(service) => service.answer(request),
            None => {
                let status = tonic::Status::unimplemented(format!("no such method: {}", request.uri().path()));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn dispatch() -> Dispatch {
        let (_reporter, health) = tonic_health::server::health_reporter();
        Dispatch::builder().add(health).build()
    }

    fn request(path: &str, message: &[u8]) -> http::Request<Body> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(message);
        http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::new(http_body_util::Full::new(bytes::Bytes::from(framed))))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_method_of_a_served_service_reaches_it() {
        // Health/Check of "" (the server as a whole): an empty message.
        let Ok(response) = dispatch().oneshot(request("/grpc.health.v1.Health/Check", b"")).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers().get("grpc-status"), None, "{response:?}");
    }

    #[tokio::test]
    async fn an_unknown_service_or_path_is_unimplemented() {
        for path in ["/grpc.health.v2.Health/Check", "/grpc.health.v1.Health", "/", "/x/y/z"] {
            let Ok(response) = dispatch().oneshot(request(path, b"")).await;
            let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok());
            assert_eq!(code, Some("12"), "{path}: {response:?}");
        }
    }

    #[tokio::test]
    async fn a_method_served_apart_is_answered_by_its_function_and_the_rest_by_the_service() {
        let dispatch = Dispatch::builder()
            .add(tonic_health::server::health_reporter().1)
            .method("/grpc.health.v1.Health/Watch", |_request| {
                Box::pin(std::future::ready(Ok(tonic::Status::already_exists("by hand").into_http())))
            })
            .build();
        let Ok(response) = dispatch.clone().oneshot(request("/grpc.health.v1.Health/Watch", b"")).await;
        let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok());
        assert_eq!(code, Some("6"), "{response:?}");
        let Ok(response) = dispatch.oneshot(request("/grpc.health.v1.Health/Check", b"")).await;
        assert_eq!(response.headers().get("grpc-status"), None, "{response:?}");
    }

    #[tokio::test]
    async fn an_unknown_method_of_a_served_service_is_its_own_unimplemented() {
        let Ok(response) = dispatch().oneshot(request("/grpc.health.v1.Health/Nope", b"")).await;
        let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok());
        assert_eq!(code, Some("12"), "{response:?}");
    }
}

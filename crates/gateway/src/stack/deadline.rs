//! Deadlines, as one tower layer for every call: the caller's `grpc-timeout`, bounded by the
//! gateway's own request timeout, ends a call that outlives it with DEADLINE_EXCEEDED (the
//! handler's work is dropped with it). A server stream is bounded only while it opens; the
//! caller's own deadline, put into the request's extensions, bounds the stream itself.

use std::time::Duration;

use futures_util::future::BoxFuture;
use http::HeaderMap;
use tower::Service;

use crate::call::CallerDeadline;
use crate::error::Error;
use crate::stack::around::{Around, AroundLayer, Response};

/// The deadline step; `layer` makes it a tower layer.
#[derive(Clone)]
pub(crate) struct Deadline {
    default: Duration,
}

/// `default` bounds calls whose caller set no shorter deadline.
pub(crate) fn layer(default: Duration) -> AroundLayer<Deadline> {
    AroundLayer(Deadline { default })
}

impl Around for Deadline {
    fn around<S, B>(&self, mut request: http::Request<B>, mut next: S) -> BoxFuture<'static, Result<Response, S::Error>>
    where
        S: Service<http::Request<B>, Response = Response> + Send + 'static,
        S::Future: Send + 'static,
        B: Send + 'static,
    {
        let budget = call_budget(request.headers(), self.default);
        let deadline = caller_deadline(request.headers()).map(|d| tokio::time::Instant::now() + d);
        request.extensions_mut().insert(CallerDeadline(deadline));
        let call = next.call(request);
        Box::pin(async move {
            match tokio::time::timeout(budget, call).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::from(Error::DeadlineExceeded).into_http()),
            }
        })
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's own deadline, if it set one.
fn caller_deadline(metadata: &HeaderMap) -> Option<Duration> {
    metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
}

/// How long a call may take: the caller's `grpc-timeout` when set and shorter, else `default`.
///
/// The budget ends a little before the caller's deadline (a tenth of it, at most 100 ms) so
/// the gateway answers DEADLINE_EXCEEDED itself rather than racing tonic's own timer, which
/// would end the call as CANCELLED.
fn call_budget(metadata: &HeaderMap, default: Duration) -> Duration {
    caller_deadline(metadata).map_or(default, |caller| {
        let margin = (caller / 10).min(Duration::from_millis(100));
        (caller - margin).min(default)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100n"), Some(Duration::from_nanos(100)));
        for bad in ["", "S", "5", "5x", "-5S", "123456789S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let mut md = HeaderMap::new();
        assert_eq!(call_budget(&md, Duration::from_secs(60)), Duration::from_secs(60));
        md.insert("grpc-timeout", "500m".parse().unwrap());
        assert_eq!(call_budget(&md, Duration::from_secs(60)), Duration::from_millis(450), "ends a tenth early");
        md.insert("grpc-timeout", "2H".parse().unwrap());
        assert_eq!(call_budget(&md, Duration::from_secs(60)), Duration::from_secs(60));
    }
}

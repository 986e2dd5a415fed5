//! WatchCopy on the wire, served without tonic's generated handler: the request's one message
//! read and decoded, the call handed to `Api::open_watch`, and each event framed into a
//! buffer of its own that is freed once written. tonic's encoder keeps a buffer per stream for
//! the stream's life (its last event and a shared header, ~350 bytes, and ~190 bytes of the
//! encoder itself): at 100,000 open streams, 50 MB that hold nothing a client will read again.
//! The framing is gRPC's (a compression flag, a 4-byte length, the message); errors are
//! tonic's statuses, before the stream as a trailers-only answer and during it as trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;

use super::Api;
use super::revocable::Revocable;
use snapgate_proto as pb;

/// The method served here.
pub(crate) const WATCH_COPY: &str = "/snapgate.v1.SnapshotCopyService/WatchCopy";

/// A message's prefix: its compression flag and its length.
const PREFIX: usize = 5;

/// Serves WatchCopy calls.
#[derive(Clone)]
pub(crate) struct WatchCopyRoute {
    api: Arc<Api>,
    max_request_bytes: usize,
    max_response_bytes: usize,
    /// How long the request's message may take to arrive.
    read_timeout: Duration,
}

impl WatchCopyRoute {
    pub(crate) fn new(
        api: Arc<Api>,
        max_request_bytes: usize,
        max_response_bytes: usize,
        read_timeout: Duration,
    ) -> WatchCopyRoute {
        WatchCopyRoute { api, max_request_bytes, max_response_bytes, read_timeout }
    }

    /// The answer to one call: the stream's headers and its events, or a trailers-only error.
    /// In two steps, each its own box: the message's reading, then the opening, which may
    /// wait a poll round for the snapshot's first observation holding only what it needs (the
    /// request's headers were the layers', and are dropped).
    pub(crate) fn answer(
        &self,
        request: http::Request<Body>,
    ) -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
        let route = self.clone();
        let (parts, body) = request.into_parts();
        let read = Box::pin(read_message::<pb::WatchCopyRequest>(body, self.max_request_bytes, self.read_timeout));
        let extensions = parts.extensions;
        Box::pin(read.then(move |message| -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
            let message = match message {
                Ok(message) => message,
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            };
            Box::pin(async move {
                Ok(match route.api.open_watch(extensions, message).await {
                    Ok(events) => route.respond(events),
                    Err(status) => status.into_http(),
                })
            })
        }))
    }

    /// The stream's headers, and its events as the body.
    fn respond(&self, events: Revocable) -> http::Response<Body> {
        let body = EventBody { events, max_message: self.max_response_bytes, ended: false };
        let mut response = http::Response::new(Body::new(body));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        response
    }
}

/// Reads a unary request's one message (a call's whole body) and decodes it.
async fn read_message<M: Message + Default>(body: Body, max: usize, within: Duration) -> Result<M, Status> {
    let limited = Limited::new(body, max.saturating_add(PREFIX));
    let mut bytes = match tokio::time::timeout(within, limited.collect()).await {
        Err(_) => return Err(Status::deadline_exceeded("the request's message did not arrive in time")),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::out_of_range(format!("the request is larger than the limit of {max} bytes")));
        }
        Ok(Err(error)) => return Err(Status::from_error(error)),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    if bytes.len() < PREFIX {
        return Err(Status::internal("Missing request message."));
    }
    let compressed = bytes.get_u8();
    let length = usize::try_from(bytes.get_u32()).unwrap_or(usize::MAX);
    match compressed {
        0 => {}
        1 => return Err(Status::unimplemented("compressed messages are not accepted; send them uncompressed")),
        flag => return Err(Status::internal(format!("protocol error: a message's compression flag was {flag}"))),
    }
    if length > max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {length} bytes, the limit is: {max} bytes"
        )));
    }
    if bytes.len() != length {
        return Err(Status::internal(format!(
            "the request must be one message of {length} bytes; its body had {} bytes after the prefix",
            bytes.len()
        )));
    }
    M::decode(bytes).map_err(|error| Status::internal(format!("the request's message does not decode: {error}")))
}

pin_project_lite::pin_project! {
    /// A stream's events as a gRPC response body: a data frame each, then the status in the
    /// trailers. Boxed once by the stack with the stream inside.
    struct EventBody<S> {
        #[pin]
        events: S,
        max_message: usize,
        ended: bool,
    }
}

impl<S> http_body::Body for EventBody<S>
where
    S: Stream<Item = Result<pb::CopyEvent, Status>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let outcome = match std::task::ready!(this.events.poll_next(cx)) {
            Some(Ok(event)) => match framed(&event, *this.max_message) {
                Ok(frame) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
                Err(status) => Err(status),
            },
            Some(Err(status)) => Err(status),
            None => Ok(()),
        };
        *this.ended = true;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(outcome)))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// One message, framed in a buffer of its own (freed once written).
fn framed(message: &impl Message, max: usize) -> Result<Bytes, Status> {
    let length = message.encoded_len();
    let prefix = u32::try_from(length).ok().filter(|_| length <= max).ok_or_else(|| {
        Status::out_of_range(format!(
            "Error, encoded message length too large: found {length} bytes, the limit is: {max} bytes"
        ))
    })?;
    let mut buf = Vec::with_capacity(PREFIX + length);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message.encode(&mut buf).map_err(|error| Status::internal(format!("encoding an event: {error}")))?;
    Ok(Bytes::from(buf))
}

/// The trailers that end a stream: its status.
fn trailers(outcome: Result<(), Status>) -> http::HeaderMap {
    let status = outcome.err().unwrap_or_else(|| Status::ok(""));
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.clear();
        let _ = Status::internal("the stream's status could not be sent").add_header(&mut trailers);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn body(bytes: &[u8]) -> Body {
        Body::new(http_body_util::Full::new(Bytes::copy_from_slice(bytes)))
    }

    fn message(name: &str) -> Vec<u8> {
        let encoded = pb::WatchCopyRequest { name: name.into() }.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&encoded);
        framed
    }

    async fn read(bytes: &[u8], max: usize) -> Result<pb::WatchCopyRequest, Status> {
        read_message(body(bytes), max, Duration::from_secs(5)).await
    }

    #[test]
    fn the_path_is_the_generated_services() {
        use snapgate_proto::snapshot_copy_service_server::SnapshotCopyServiceServer;
        use tonic::server::NamedService;
        assert_eq!(WATCH_COPY, format!("/{}/WatchCopy", <SnapshotCopyServiceServer<Api> as NamedService>::NAME));
    }

    #[tokio::test]
    async fn a_request_of_one_message_is_read() {
        let request = read(&message("copy-1"), 1024).await;
        assert_eq!(request.map(|r| r.name).ok().as_deref(), Some("copy-1"));
    }

    #[tokio::test]
    async fn a_malformed_request_is_refused_with_a_status_not_a_panic() {
        let whole = message("copy-1");
        let mut compressed = whole.clone();
        compressed[0] = 1;
        let mut bad_flag = whole.clone();
        bad_flag[0] = 7;
        let mut two = whole.clone();
        two.extend_from_slice(&whole);
        let cases: [(&[u8], tonic::Code); 7] = [
            (&[], tonic::Code::Internal),
            (&whole[..3], tonic::Code::Internal),
            (&whole[..whole.len() - 1], tonic::Code::Internal),
            (&compressed, tonic::Code::Unimplemented),
            (&bad_flag, tonic::Code::Internal),
            (&two, tonic::Code::Internal),
            (&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff], tonic::Code::Internal),
        ];
        for (bytes, code) in cases {
            let read = read(bytes, 1024).await;
            assert_eq!(read.as_ref().err().map(Status::code), Some(code), "{bytes:?}: {read:?}");
        }
        // Larger than the limit: by its prefix, and by its body.
        assert_eq!(read(&[0, 0, 1, 0, 0], 1024).await.err().map(|s| s.code()), Some(tonic::Code::OutOfRange));
        assert_eq!(
            read(&message(&"x".repeat(4096)), 1024).await.err().map(|s| s.code()),
            Some(tonic::Code::OutOfRange)
        );
    }

    #[tokio::test]
    async fn events_are_framed_one_a_frame_and_the_status_ends_the_stream() {
        let event = pb::CopyEvent { terminal: true, change: 3, ..Default::default() };
        let stream = tokio_stream::iter(vec![Ok(event.clone()), Ok(event.clone()), Err(Status::not_found("gone"))]);
        let mut body = std::pin::pin!(EventBody { events: stream, max_message: 1024, ended: false });
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|s| s.code());
            match frame.map(Frame::into_data) {
                Ok(Ok(bytes)) => data.push(bytes),
                Ok(Err(frame)) => trailers = frame.into_trailers().ok(),
                Err(code) => panic!("the body failed: {code:?}"),
            }
        }
        assert!(body.is_end_stream());
        assert_eq!(data.len(), 2);
        for frame in &data {
            let mut frame = frame.clone();
            assert_eq!(frame.get_u8(), 0);
            assert_eq!(usize::try_from(frame.get_u32()).ok(), Some(frame.len()));
            assert_eq!(pb::CopyEvent::decode(frame).ok(), Some(event.clone()));
        }
        let trailers = trailers.unwrap_or_default();
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"5"[..]), "{trailers:?}");
        assert_eq!(trailers.get("grpc-message").map(|v| v.as_bytes()), Some(&b"gone"[..]));
    }

    #[tokio::test]
    async fn a_stream_that_ends_sends_ok_and_an_event_over_the_limit_ends_it_out_of_range() {
        let mut ended = std::pin::pin!(EventBody {
            events: tokio_stream::iter(Vec::<Result<pb::CopyEvent, Status>>::new()),
            max_message: 1024,
            ended: false,
        });
        let trailers = ended.frame().await.and_then(|f| f.ok()).and_then(|f| f.into_trailers().ok());
        assert_eq!(trailers.and_then(|t| t.get("grpc-status").cloned()), Some(http::HeaderValue::from_static("0")));

        let big = pb::CopyEvent {
            copy: Some(pb::Copy { name: "x".repeat(2048), ..Default::default() }),
            ..Default::default()
        };
        let mut over =
            std::pin::pin!(EventBody { events: tokio_stream::iter(vec![Ok(big)]), max_message: 1024, ended: false });
        let trailers = over.frame().await.and_then(|f| f.ok()).and_then(|f| f.into_trailers().ok());
        assert_eq!(trailers.and_then(|t| t.get("grpc-status").cloned()), Some(http::HeaderValue::from_static("11")));
        assert!(over.frame().await.is_none());
    }
}

//! HTTP/JSON to gRPC and back. A request on a route becomes the RPC's protobuf request (from
//! its path, query and JSON body, by the proto3 JSON mapping), which is sent through the very
//! service stack the gRPC listener serves (metrics and the server span, authentication,
//! deadlines, then the handler with its Cedar decision), in process. The answer comes back as
//! JSON: the response message, NDJSON or Server-Sent Events for a stream, or the
//! `google.rpc.Status` of an error with the HTTP status of the standard gRPC mapping. So the
//! two listeners cannot differ in who may do what.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Value,
};
use tonic::Code;
use tonic_types::StatusExt;
use tower::ServiceExt;

use super::routes::{BodyRule, Found, Route, Routes};
use crate::call::ConnInfo;
use crate::error::{Error, FieldViolation};
use crate::stack::Stack;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every HTTP/JSON response.
pub(crate) type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

/// Request headers passed on to the RPC: credentials, trace context, deadline, and what
/// identifies the caller's request in logs. Everything else (hop-by-hop, content) is HTTP's.
const FORWARDED: [&str; 6] =
    ["authorization", "traceparent", "tracestate", "grpc-timeout", "user-agent", "x-request-id"];

/// Response headers the RPC may set that an HTTP caller sees too.
const RETURNED: [&str; 1] = [crate::stack::observe::TRACE_ID_HEADER];

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";
const EVENT_STREAM: &str = "text/event-stream";

/// How a stream's events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Ndjson,
    ServerSentEvents,
}

pub(crate) struct Transcoder {
    routes: Routes,
    status: MessageDescriptor,
    service: String,
    grpc: Stack,
    max_body_bytes: usize,
}

impl Transcoder {
    /// Routes every RPC of `service` declared in the protos to `grpc`.
    pub(crate) fn new(service: &str, grpc: Stack, max_body_bytes: usize) -> Result<Transcoder, String> {
        let mut pool = DescriptorPool::decode(snapgate_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
        // google.rpc.Status and its details, so errors print as JSON with their `@type`.
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
        let status = pool.get_message_by_name("google.rpc.Status").ok_or("no google.rpc.Status descriptor")?;
        let routes = Routes::from_pool(&pool, service)?;
        Ok(Transcoder { routes, status, service: service.to_owned(), grpc, max_body_bytes })
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Serves one HTTP request; every outcome is a response.
    pub(crate) async fn handle<B>(&self, request: http::Request<B>, conn: Option<ConnInfo>) -> http::Response<HttpBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let (route, bound) = match self.routes.find(&parts.method, parts.uri.path()) {
            Found::Route(route, bound) => (route, bound),
            Found::WrongMethod(allowed) => {
                let allow = allowed.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
                let status = tonic::Status::unimplemented(format!("{} is not served here; use {allow}", parts.method));
                let mut response = self.error(&status, Some(http::StatusCode::METHOD_NOT_ALLOWED));
                if let Ok(value) = http::HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(http::header::ALLOW, value);
                }
                return response;
            }
            Found::NoRoute => {
                let status = tonic::Status::not_found(format!("no route {} {}", parts.method, parts.uri.path()));
                return self.error(&status, None);
            }
        };
        let body = match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let too_large = error.downcast_ref::<http_body_util::LengthLimitError>().is_some();
                return if too_large {
                    let status = tonic::Status::resource_exhausted(format!(
                        "the request body is larger than {} bytes",
                        self.max_body_bytes
                    ));
                    self.error(&status, Some(http::StatusCode::PAYLOAD_TOO_LARGE))
                } else {
                    self.error(&tonic::Status::cancelled("the request body did not arrive"), None)
                };
            }
        };
        let message = match request_message(route, &bound, parts.uri.query(), &body) {
            Ok(message) => message,
            Err(violations) => return self.error(&tonic::Status::from(Error::InvalidArgument(violations)), None),
        };
        let framing = match parts.headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()) {
            Some(accept) if accept.contains(EVENT_STREAM) => Framing::ServerSentEvents,
            _ => Framing::Ndjson,
        };
        let call = self.grpc_request(route, &parts.headers, message, conn);
        let Ok(response) = self.grpc.clone().oneshot(call).await;
        if route.rpc.is_server_streaming() {
            self.stream(route, response, framing).await
        } else {
            self.unary(route, response).await
        }
    }

    fn grpc_request(
        &self,
        route: &Route,
        headers: &http::HeaderMap,
        message: DynamicMessage,
        conn: Option<ConnInfo>,
    ) -> http::Request<tonic::body::Body> {
        let encoded = message.encode_to_vec();
        let mut framed = BytesMut::with_capacity(5 + encoded.len());
        framed.extend_from_slice(&[0]);
        framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(&encoded);
        let mut request = http::Request::new(tonic::body::Body::new(Full::new(framed.freeze())));
        *request.method_mut() = http::Method::POST;
        *request.version_mut() = http::Version::HTTP_2;
        let path = format!("/{}/{}", self.service, route.rpc.name());
        *request.uri_mut() = http::Uri::try_from(path).unwrap_or_default();
        let out = request.headers_mut();
        out.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        out.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        for name in FORWARDED {
            for value in headers.get_all(name) {
                out.append(name, value.clone());
            }
        }
        if let Some(conn) = conn {
            request.extensions_mut().insert(conn);
        }
        request
    }

    async fn unary(&self, route: &Route, response: http::Response<tonic::body::Body>) -> http::Response<HttpBody> {
        let (parts, body) = response.into_parts();
        if let Some(status) = failed(&parts.headers) {
            return self.error(&status, None);
        }
        let collected = match body.collect().await {
            Ok(collected) => collected,
            Err(status) => return self.error(&status, None),
        };
        if let Some(status) = collected.trailers().and_then(failed) {
            return self.error(&status, None);
        }
        let mut data = BytesMut::from(collected.to_bytes());
        let json = match take_message(&mut data) {
            Ok(Some(message)) => to_json(route.rpc.output(), message),
            Ok(None) => Err("the call ended without a response".to_owned()),
            Err(why) => Err(why),
        };
        match json {
            Ok(json) => {
                let mut response = respond(http::StatusCode::OK, JSON, full(json));
                copy_returned(&parts.headers, response.headers_mut());
                response
            }
            Err(why) => self.error(&internal(&why), None),
        }
    }

    async fn stream(
        &self,
        route: &Route,
        response: http::Response<tonic::body::Body>,
        framing: Framing,
    ) -> http::Response<HttpBody> {
        let (parts, mut body) = response.into_parts();
        if let Some(status) = failed(&parts.headers) {
            return self.error(&status, None);
        }
        // Wait for the first event or the end: an error before any event is the HTTP status.
        let mut buffer = BytesMut::new();
        let mut ended = None;
        while !has_message(&buffer) && ended.is_none() {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => buffer.extend_from_slice(&data),
                    Err(frame) => match frame.into_trailers().ok().as_ref().and_then(failed) {
                        Some(status) if buffer.is_empty() => return self.error(&status, None),
                        other => ended = Some(other),
                    },
                },
                Some(Err(status)) if buffer.is_empty() => return self.error(&status, None),
                Some(Err(status)) => ended = Some(Some(status)),
                None => ended = Some(None),
            }
        }
        let writer = EventWriter { output: route.rpc.output(), status: self.status.clone(), framing };
        let state = StreamState { body: Some(body), buffer, ended, writer };
        let events = futures_util::stream::unfold(state, StreamState::next).map(|chunk| chunk.map(Frame::data));
        let content_type = match framing {
            Framing::Ndjson => NDJSON,
            Framing::ServerSentEvents => EVENT_STREAM,
        };
        let mut response = respond(http::StatusCode::OK, content_type, StreamBody::new(events).boxed_unsync());
        response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
        copy_returned(&parts.headers, response.headers_mut());
        response
    }

    /// The error as `google.rpc.Status` JSON, with the HTTP status of its code (or `http`),
    /// and `Retry-After` when the error says when to retry.
    fn error(&self, status: &tonic::Status, http: Option<http::StatusCode>) -> http::Response<HttpBody> {
        let http = http.unwrap_or_else(|| crate::error::http_status(status.code()));
        let mut response = respond(http, JSON, full(status_json(&self.status, status)));
        let retry = status.get_details_retry_info().and_then(|info| info.retry_delay);
        if let Some(delay) = retry {
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs.max(1)));
        }
        copy_returned(status.metadata().as_ref(), response.headers_mut());
        response
    }
}

/// A JSON response or event of one message, all fields present (defaults included), so a
/// workflow's JSONPath finds `percentProgress` at 0 too.
fn to_json(descriptor: MessageDescriptor, message: Bytes) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(descriptor, message).map_err(|e| format!("undecodable response: {e}"))?;
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new().skip_default_fields(false))
        .map_err(|e| format!("response not JSON-encodable: {e}"))?;
    Ok(serializer.into_inner())
}

/// `google.rpc.Status` as JSON: the status's own details when it has them (BadRequest,
/// ErrorInfo, RetryInfo with their `@type`), else its code and message.
fn status_json(descriptor: &MessageDescriptor, status: &tonic::Status) -> Vec<u8> {
    let mut message = DynamicMessage::new(descriptor.clone());
    if !status.details().is_empty()
        && let Ok(decoded) = DynamicMessage::decode(descriptor.clone(), status.details())
    {
        message = decoded;
    }
    message.set_field_by_name("code", Value::I32(status.code() as i32));
    message.set_field_by_name("message", Value::String(status.message().to_owned()));
    let mut serializer = serde_json::Serializer::new(Vec::new());
    let options = SerializeOptions::new().skip_default_fields(false);
    if message.serialize_with_options(&mut serializer, &options).is_ok() {
        return serializer.into_inner();
    }
    // A detail of a type the pool does not know: code and message only.
    serde_json::json!({"code": status.code() as i32, "message": status.message(), "details": []})
        .to_string()
        .into_bytes()
}

/// The status in `headers` (trailers, or the headers of a trailers-only answer) when it is not
/// OK.
fn failed(headers: &http::HeaderMap) -> Option<tonic::Status> {
    tonic::Status::from_header_map(headers).filter(|s| s.code() != Code::Ok)
}

fn internal(why: &str) -> tonic::Status {
    tracing::error!(why, "HTTP/JSON transcoding failed");
    tonic::Status::internal("internal error; the gateway's log has the cause")
}

fn has_message(buffer: &[u8]) -> bool {
    buffer.len() >= 5 && buffer.len() - 5 >= u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize
}

/// The next whole gRPC message in `buffer` (taken out of it), if one is there.
fn take_message(buffer: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if !has_message(buffer) {
        return Ok(None);
    }
    if buffer[0] != 0 {
        return Err("compressed gRPC message".into());
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    buffer.advance(5);
    Ok(Some(buffer.split_to(len).freeze()))
}

/// Writes a stream's events and its end.
struct EventWriter {
    output: MessageDescriptor,
    status: MessageDescriptor,
    framing: Framing,
}

impl EventWriter {
    fn event(&self, json: &[u8]) -> Bytes {
        match self.framing {
            Framing::Ndjson => [json, b"\n"].concat().into(),
            Framing::ServerSentEvents => [b"data: ".as_slice(), json, b"\n\n"].concat().into(),
        }
    }

    /// An error after events were sent: NDJSON ends with `{"error": Status}`, SSE with an
    /// `error` event.
    fn error(&self, status: &tonic::Status) -> Bytes {
        let json = status_json(&self.status, status);
        match self.framing {
            Framing::Ndjson => [b"{\"error\":".as_slice(), &json, b"}\n"].concat().into(),
            Framing::ServerSentEvents => [b"event: error\ndata: ".as_slice(), &json, b"\n\n"].concat().into(),
        }
    }
}

struct StreamState {
    body: Option<tonic::body::Body>,
    buffer: BytesMut,
    /// The stream's end, once seen: `Some(None)` for OK, `Some(Some(status))` for an error.
    ended: Option<Option<tonic::Status>>,
    writer: EventWriter,
}

impl StreamState {
    async fn next(mut self) -> Option<(Result<Bytes, BoxError>, StreamState)> {
        loop {
            match take_message(&mut self.buffer) {
                Ok(Some(message)) => {
                    let chunk = match to_json(self.writer.output.clone(), message) {
                        Ok(json) => self.writer.event(&json),
                        Err(why) => {
                            self.body = None;
                            self.ended = Some(None);
                            self.writer.error(&internal(&why))
                        }
                    };
                    return Some((Ok(chunk), self));
                }
                Ok(None) => {}
                Err(why) => {
                    self.buffer.clear();
                    self.body = None;
                    self.ended = Some(None);
                    let chunk = self.writer.error(&internal(&why));
                    return Some((Ok(chunk), self));
                }
            }
            if let Some(end) = self.ended.take() {
                self.body = None;
                // Ended: an error is the last line; OK ends the body.
                return end.map(|status| {
                    let chunk = self.writer.error(&status);
                    self.ended = Some(None);
                    (Ok(chunk), self)
                });
            }
            let body = self.body.as_mut()?;
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => self.ended = Some(frame.into_trailers().ok().as_ref().and_then(failed)),
                },
                Some(Err(status)) => self.ended = Some(Some(status)),
                None => self.ended = Some(None),
            }
        }
    }
}

fn full(bytes: Vec<u8>) -> HttpBody {
    Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync()
}

fn respond(status: http::StatusCode, content_type: &'static str, body: HttpBody) -> http::Response<HttpBody> {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn copy_returned(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for name in RETURNED {
        if let Some(value) = from.get(name) {
            to.insert(name, value.clone());
        }
    }
}

/// The RPC's request from the path's variables, the query and the JSON body; what does not fit
/// is a field violation, as the gRPC side reports them.
fn request_message(
    route: &Route,
    bound: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, Vec<FieldViolation>> {
    let input = route.rpc.input();
    let mut violations = Vec::new();
    let mut message = DynamicMessage::new(input.clone());
    let body_text = body.iter().any(|b| !b.is_ascii_whitespace());
    match route.body {
        BodyRule::Whole if body_text => {
            let mut json = serde_json::Deserializer::from_slice(body);
            match DynamicMessage::deserialize_with_options(input.clone(), &mut json, &DeserializeOptions::new())
                .and_then(|m| json.end().map(|()| m))
            {
                Ok(decoded) => message = decoded,
                Err(error) => {
                    violations.push(FieldViolation::new("body", format!("not a valid JSON request: {error}")))
                }
            }
        }
        BodyRule::Whole => {}
        BodyRule::None if body_text => {
            violations.push(FieldViolation::new("body", format!("{} {} takes no body", route.method, route.template)));
        }
        BodyRule::None => {}
    }
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if route.body == BodyRule::Whole {
            violations
                .push(FieldViolation::new(name, "query parameters are not accepted here; put fields in the body"));
            continue;
        }
        let field = input.get_field_by_name(&name).or_else(|| input.get_field_by_json_name(&name));
        let Some(field) = field.filter(|f| !bound.iter().any(|(bound, _)| bound == f.name())) else {
            violations.push(FieldViolation::new(name, "unknown query parameter"));
            continue;
        };
        match query_value(&field, &value) {
            Ok(value) if field.is_list() => {
                if let Value::List(list) = message.get_field_mut(&field) {
                    list.push(value);
                }
            }
            Ok(value) => message.set_field(&field, value),
            Err(why) => violations.push(FieldViolation::new(field.name(), why)),
        }
    }
    for (name, value) in bound {
        if let Some(field) = input.get_field_by_name(name) {
            // The path names the resource; a body that names another is a contradiction.
            if let Value::String(given) = message.get_field(&field).as_ref()
                && !given.is_empty()
                && given != value
            {
                violations.push(FieldViolation::new(name, "differs between the path and the body"));
            }
            message.set_field(&field, Value::String(value.clone()));
        }
    }
    if violations.is_empty() { Ok(message) } else { Err(violations) }
}

/// A query parameter's value as its field's type.
fn query_value(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let number = |what: &str| format!("\"{text}\" is not {what}");
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => Value::Bool(text.parse().map_err(|_| number("true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(text.parse().map_err(|_| number("an integer"))?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(text.parse().map_err(|_| number("an integer"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| number("an integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| number("an integer"))?),
        Kind::Enum(values) => {
            let value = values.get_value_by_name(text).or_else(|| text.parse().ok().and_then(|n| values.get_value(n)));
            let names = values.values().map(|v| v.name().to_owned()).collect::<Vec<_>>();
            Value::EnumNumber(value.ok_or_else(|| format!("\"{text}\" is not one of {}", names.join(", ")))?.number())
        }
        _ => return Err("cannot be given in the query".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcoder() -> Transcoder {
        let grpc = Stack::new(tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            Ok::<_, std::convert::Infallible>(tonic::Status::unavailable("not wired").into_http())
        }));
        Transcoder::new("snapgate.v1.SnapshotCopyService", grpc, 1024).unwrap()
    }

    fn route<'a>(t: &'a Transcoder, method: http::Method, path: &str) -> (&'a Route, Vec<(String, String)>) {
        match t.routes().find(&method, path) {
            Found::Route(route, bound) => (route, bound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_filters_come_from_the_query_by_either_name() {
        let t = transcoder();
        let (list, bound) = route(&t, http::Method::GET, "/v1/copies");
        let query = "pageSize=20&states=QUEUED&states=2&destination_region=eu-west-1";
        let message = request_message(list, &bound, Some(query), b"").unwrap();
        let decoded = snapgate_proto::ListCopiesRequest::decode(message.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.page_size, 20);
        assert_eq!(decoded.states, [6, 2]);
        assert_eq!(decoded.destination_region, "eu-west-1");
    }

    #[test]
    fn bad_queries_and_bodies_are_field_violations() {
        let t = transcoder();
        let (list, bound) = route(&t, http::Method::GET, "/v1/copies");
        let violations = request_message(list, &bound, Some("pageSize=many&states=NOPE&colour=red"), b"").unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["page_size", "states", "colour"]);
        assert!(violations[1].description.contains("QUEUED"), "{violations:?}");

        let (copy, bound) = route(&t, http::Method::POST, "/v1/copies");
        let violations = request_message(copy, &bound, None, b"{\"sourceSnapshot\": 7}").unwrap_err();
        assert_eq!(violations[0].field, "body");
        let violations = request_message(copy, &bound, None, b"{\"nope\": 1}").unwrap_err();
        assert!(violations[0].description.contains("nope"), "{violations:?}");
        let violations = request_message(copy, &bound, Some("x=1"), b"{}").unwrap_err();
        assert_eq!(violations[0].field, "x");
    }

    #[test]
    fn the_path_names_the_copy_and_a_body_may_not_contradict_it() {
        let t = transcoder();
        let (cancel, bound) = route(&t, http::Method::POST, "/v1/copies/my-copy:cancel");
        let message = request_message(cancel, &bound, None, b"").unwrap();
        assert_eq!(message.get_field_by_name("name").unwrap().as_str(), Some("my-copy"));
        let message = request_message(cancel, &bound, None, b"{\"name\": \"my-copy\"}").unwrap();
        assert_eq!(message.get_field_by_name("name").unwrap().as_str(), Some("my-copy"));
        let violations = request_message(cancel, &bound, None, b"{\"name\": \"other\"}").unwrap_err();
        assert_eq!(violations[0].field, "name");
        let (get, bound) = route(&t, http::Method::GET, "/v1/copies/my-copy");
        let violations = request_message(get, &bound, Some("name=x"), b"").unwrap_err();
        assert_eq!(violations[0].description, "unknown query parameter");
        assert_eq!(request_message(get, &bound, None, b"{}").unwrap_err()[0].field, "body");
    }

    #[test]
    fn errors_are_google_rpc_status_json_with_their_details() {
        let t = transcoder();
        let status =
            tonic::Status::from(Error::InvalidArgument(vec![FieldViolation::new("target_snapshot_id", "bad")]));
        let json: serde_json::Value = serde_json::from_slice(&status_json(&t.status, &status)).unwrap();
        assert_eq!(json["code"], 3);
        assert_eq!(json["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(json["details"][0]["fieldViolations"][0]["field"], "target_snapshot_id");
        let plain: serde_json::Value =
            serde_json::from_slice(&status_json(&t.status, &tonic::Status::not_found("gone"))).unwrap();
        assert_eq!(plain, serde_json::json!({"code": 5, "message": "gone", "details": []}));
        assert!(t.status.parent_pool().get_message_by_name("google.rpc.RetryInfo").is_some());
    }

    #[test]
    fn grpc_frames_are_split_whole() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[0, 0, 0, 0, 2, 8]);
        assert!(!has_message(&buffer));
        assert_eq!(take_message(&mut buffer), Ok(None));
        buffer.extend_from_slice(&[1, 0, 0, 0, 0, 0]);
        assert_eq!(take_message(&mut buffer), Ok(Some(Bytes::from_static(&[8, 1]))));
        assert_eq!(take_message(&mut buffer), Ok(Some(Bytes::new())));
        assert_eq!(take_message(&mut buffer), Ok(None));
        buffer.extend_from_slice(&[1, 0, 0, 0, 0]);
        assert!(take_message(&mut buffer).is_err());
    }
}

/// Property test: any path, query and body an HTTP client sends is routed and decoded, or
/// refused with field violations, without a panic.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn transcoder() -> Transcoder {
        let grpc = Stack::new(tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            Ok::<_, std::convert::Infallible>(tonic::Status::unavailable("not wired").into_http())
        }));
        Transcoder::new("snapgate.v1.SnapshotCopyService", grpc, 1024).unwrap()
    }

    proptest! {
        #[test]
        fn any_request_is_routed_or_refused(
            path in prop_oneof!["/v1/copies\\PC{0,40}", "/\\PC{0,40}", "/v1/copies/[a-z:%0-9A-F]{0,30}(:watch|:cancel)?"],
            query in "\\PC{0,60}",
            body in prop_oneof![Just(String::new()), "\\PC{0,80}", "\\{\"[a-zA-Z_]{1,20}\": ?(\"\\PC{0,10}\"|[0-9]{1,12}|\\[\\]|null|true)\\}"],
            method in proptest::sample::select(vec![http::Method::GET, http::Method::POST, http::Method::DELETE, http::Method::HEAD]),
        ) {
            let t = transcoder();
            if let Found::Route(route, bound) = t.routes().find(&method, &path) {
                let _ = request_message(route, &bound, Some(&query), body.as_bytes());
            }
        }
    }
}

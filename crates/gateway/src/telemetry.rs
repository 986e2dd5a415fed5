//! Logs and traces. Logs: a `RUST_LOG`-style filter, lines for people (colour only on a
//! terminal) or JSON for pipelines; lines inside a call carry its trace id. Traces: exported
//! with OTLP when the standard `OTEL_*` variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` = `grpc` or
//! `http/protobuf`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! its argument); off when none is set. Export runs on the batch processor's own thread with a
//! bounded queue, so it never blocks a request.
//!
//! Log lines, too, are written by a thread of their own (tracing-appender's non-blocking
//! writer) from a queue of `LOG_QUEUE_LINES`: with the audit trail's line per decision, a log
//! sink that falls behind (a full pipe, a slow disk) would otherwise stall the thread that
//! serves the calls. A sink that cannot keep up loses lines rather than stalling the gateway;
//! they are counted in `snapgate_log_lines_dropped_total`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use clap::ValueEnum;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, with its span context.
    Json,
}

/// The target of WatchCopy's per-change span events: DEBUG, so they reach traces but not the
/// default log (10,000 streams would flood it).
pub const STREAM_EVENTS: &str = "snapgate::watch_events";

/// The log target of the audit trail (`crate::audit`).
pub const AUDIT_TARGET: &str = "snapgate::audit";

/// Log lines that may wait for the writer thread (a few MiB at most).
const LOG_QUEUE_LINES: usize = 16_384;

/// The count of log lines dropped because the writer thread fell behind.
static LOG_DROPS: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the log sink fell behind.
pub fn log_lines_dropped() -> u64 {
    LOG_DROPS.get().map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Flushes the spans and log lines still queued when dropped (at exit).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    logs: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        crate::audit::flush(std::time::Duration::from_secs(2));
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("snapgate: flushing traces failed: {error}");
        }
    }
}

/// What the `OTEL_*` variables ask for; `None` when traces are off.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceExport {
    pub protocol: Protocol,
    /// An endpoint given in code (the benchmark's sink); else the exporter reads the variables.
    pub endpoint: Option<String>,
}

/// Reads the standard variables from `env` (pass `std::env::vars()`).
pub fn trace_export(env: impl IntoIterator<Item = (String, String)>) -> Result<Option<TraceExport>, String> {
    let vars: std::collections::HashMap<String, String> = env.into_iter().collect();
    let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let asked = get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("otlp"));
    if !asked {
        return Ok(None);
    }
    if let Some(exporter) = get("OTEL_TRACES_EXPORTER")
        && !exporter.eq_ignore_ascii_case("otlp")
    {
        return Err(format!("OTEL_TRACES_EXPORTER: '{exporter}' is not supported (otlp or none)"));
    }
    let protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or(get("OTEL_EXPORTER_OTLP_PROTOCOL"));
    let protocol = match protocol {
        // The specification's default.
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(format!("OTEL_EXPORTER_OTLP_PROTOCOL: '{other}' is not supported (grpc or http/protobuf)"));
        }
    };
    Ok(Some(TraceExport { protocol, endpoint: None }))
}

/// Installs the global subscriber: logs by `format` under `RUST_LOG` (else `default_filter`),
/// and, when the environment asks for it, OTLP trace export of the gateway's own spans.
/// Must run inside the Tokio runtime (the gRPC exporter needs it).
pub fn init(default_filter: &str, format: LogFormat) -> Result<TelemetryGuard, String> {
    init_with(default_filter, format, trace_export(std::env::vars())?)
}

/// [`init`] with the export decided by the caller.
pub fn init_with(
    default_filter: &str,
    format: LogFormat,
    export: Option<TraceExport>,
) -> Result<TelemetryGuard, String> {
    let provider = export.as_ref().map(tracer_provider).transpose()?;
    let (writer, logs) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("snapgate-logs")
        .finish(std::io::stderr());
    let _ = LOG_DROPS.set(writer.error_counter());
    // A second init (tests) keeps the first subscriber.
    // The call's ids exist only in a trace: without export, the log has no span to see.
    let calls = if provider.is_some() { CallSpans::Logged } else { CallSpans::Unseen };
    let _ = subscriber(log_layer(default_filter, format, writer, calls), provider.as_ref()).try_init();
    let mut guard = TelemetryGuard::new(provider);
    guard.logs = Some(logs);
    Ok(guard)
}

/// The log layer, and the trace layer when traces are exported, over the span registry.
///
/// Without export the log is the registry's only layer. An absent layer (`None` of an
/// `Option<Layer>`) counts in tracing-subscriber as one that wants every span: with it, the
/// registry made every span of every library for nobody to see, h2's TRACE spans around each
/// frame it reads and writes among them, some 13% of the gateway's CPU in a call flood (`perf`).
fn subscriber(log: Box<dyn Layer<Registry> + Send + Sync>, provider: Option<&SdkTracerProvider>) -> tracing::Dispatch {
    let logged = Registry::default().with(log);
    match provider {
        Some(provider) => tracing::Dispatch::new(logged.with(trace_layer(provider).with_filter(trace_targets()))),
        None => tracing::Dispatch::new(logged),
    }
}

impl TelemetryGuard {
    /// Owns `provider`, flushing and shutting it down when dropped.
    pub fn new(provider: Option<SdkTracerProvider>) -> TelemetryGuard {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        TelemetryGuard { provider, logs: None }
    }
}

/// Whether log lines carry the ids of the call they were logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSpans {
    /// The log sees each call's server span and prints its `trace_id` and `span_id`.
    Logged,
    /// The log sees no span: with no trace exported, a call has no ids to print, and a span
    /// the log kept would cost every call, and every open WatchCopy stream for its life, its
    /// span's record and formatted fields (~340 bytes a stream, `bench watch`) for nothing.
    /// With no layer interested in it, the server span is never made at all.
    Unseen,
}

/// Log lines by `format` under `RUST_LOG` (else `default_filter`), to `writer` (stderr, or a
/// writer in front of it); colour only when stderr is a terminal.
///
/// Spans reach the log only as context (`CallSpans::Logged`): the call's server span (`rpc`),
/// whose `trace_id` and `span_id` every line logged inside the call carries. Other spans and
/// the call span's other fields are the traces' business; formatting them for the log on every
/// call (JSON fields are re-parsed at each `record`) cost more than the call's own work.
pub fn log_layer<S, W>(
    default_filter: &str,
    format: LogFormat,
    writer: W,
    calls: CallSpans,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::FilterExt;
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let seen = calls == CallSpans::Logged;
    let filter =
        tracing_subscriber::filter::filter_fn(move |meta| meta.is_event() || (seen && is_call_span(meta))).and(env);
    match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(CallIds)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    }
}

/// The server span of a call (`stack::observe`).
fn is_call_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == "rpc" && meta.target().starts_with("snapgate")
}

/// The JSON log's span fields: the call's `trace_id` and `span_id`, nothing else.
struct CallIds;

#[derive(Default)]
struct IdsVisitor {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl tracing::field::Visit for IdsVisitor {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "trace_id" => self.trace_id = Some(value.to_owned()),
            "span_id" => self.span_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn std::fmt::Debug) {}
}

impl IdsVisitor {
    fn of(fields: impl tracing_subscriber::field::RecordFields) -> IdsVisitor {
        let mut visitor = IdsVisitor::default();
        fields.record(&mut visitor);
        visitor
    }

    /// `"trace_id":"…","span_id":"…"` (ids are hex, nothing to escape).
    fn write_pairs(&self, out: &mut impl std::fmt::Write, mut first: bool) -> std::fmt::Result {
        for (key, value) in [("trace_id", &self.trace_id), ("span_id", &self.span_id)] {
            if let Some(value) = value {
                out.write_str(if first { "\"" } else { ",\"" })?;
                write!(out, "{key}\":\"{value}\"")?;
                first = false;
            }
        }
        Ok(())
    }
}

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for CallIds {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        writer.write_str("{")?;
        IdsVisitor::of(fields).write_pairs(&mut writer, true)?;
        writer.write_str("}")
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let ids = IdsVisitor::of(fields);
        if ids.trace_id.is_none() && ids.span_id.is_none() {
            return Ok(());
        }
        let held = current.fields.trim_end().trim_end_matches('}').trim_end();
        let empty = held.trim_start_matches('{').trim().is_empty();
        let mut fields = if held.is_empty() { "{".to_owned() } else { held.to_owned() };
        ids.write_pairs(&mut fields, empty)?;
        fields.push('}');
        current.fields = fields;
        Ok(())
    }
}

/// The OpenTelemetry layer as the gateway configures it; filter it with [`trace_targets`].
pub fn trace_layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("snapgate"))
        // Code locations, thread names and busy/idle timings on every span cost CPU on
        // every call and tell the person on call nothing.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        // Nothing here reads the active OpenTelemetry context (trace ids are read from the
        // span itself), so entering a span need not activate it.
        .with_context_activation(false)
}

/// What goes to traces: the gateway's own spans. The AWS SDK's are DEBUG-level and carry no
/// request id (the gateway's CLIENT span per AWS call does); the audit trail is the log's
/// (with the trace id), and the trace has the decision on its `authorize` span.
pub fn trace_targets() -> Targets {
    Targets::new()
        .with_target("snapgate", tracing::Level::INFO)
        .with_target(STREAM_EVENTS, tracing::Level::DEBUG)
        .with_target(AUDIT_TARGET, tracing_subscriber::filter::LevelFilter::OFF)
}

/// Builds the exporter and batch processor the export asks for. Must run inside the Tokio
/// runtime (the exporters need it).
pub fn tracer_provider(export: &TraceExport) -> Result<SdkTracerProvider, String> {
    let exporter = match (export.protocol, &export.endpoint) {
        (Protocol::Grpc, None) => {
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_protocol(Protocol::Grpc).build()
        }
        (Protocol::Grpc, Some(endpoint)) => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .with_endpoint(endpoint)
            .build(),
        (_, endpoint) => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_http_client(OnRuntime::new()?);
            match endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint).build(),
                None => builder.build(),
            }
        }
    }
    .map_err(|e| format!("OTLP trace exporter: {e}"))?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named {
        resource = resource.with_service_name("snapgate");
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// The http/protobuf exporter's client. The batch processor exports from its own thread, where
/// there is no Tokio runtime for hyper and its timer (opentelemetry-http's hyper client panics
/// there), so each request is run on the gateway's runtime.
#[derive(Debug, Clone)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: opentelemetry_http::hyper::HyperClient,
}

impl OnRuntime {
    fn new() -> Result<OnRuntime, String> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| "trace export needs the Tokio runtime".to_owned())?;
        let timeout = std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(std::time::Duration::from_secs(10), std::time::Duration::from_millis);
        Ok(OnRuntime { runtime, client: opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None) })
    }
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime.spawn(async move { client.send_bytes(request).await }).await?
    }
}

/// The trace id of the current span, when it is part of a valid trace.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    ids_of(span).map(|(trace, _)| trace)
}

/// The (trace id, span id) of `span`, when it is part of a valid trace.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log sink the test reads back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn logged(format: LogFormat, body: impl FnOnce()) -> String {
        logged_with(format, CallSpans::Logged, body)
    }

    fn logged_with(format: LogFormat, calls: CallSpans, body: impl FnOnce()) -> String {
        let sink = Captured::default();
        tracing::dispatcher::with_default(&subscriber(log_layer("info", format, sink.clone(), calls), None), body);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    fn a_call() {
        let call = tracing::info_span!(
            "rpc",
            otel.name = "x/GetCopy",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty
        );
        call.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
        call.record("span_id", "00f067aa0ba902b7");
        call.record("rpc.grpc.status_code", 0);
        let _call = call.enter();
        let inner = tracing::info_span!("authorize", authz.decision = "allow");
        let _inner = inner.enter();
        tracing::warn!(detail = "a \"quoted\" thing", "inside the call");
    }

    #[test]
    fn a_json_line_inside_a_call_carries_the_calls_ids_and_no_other_span_fields() {
        let text = logged(LogFormat::Json, a_call);
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "inside the call");
        assert_eq!(line["fields"]["detail"], "a \"quoted\" thing");
        assert_eq!(line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span"]["span_id"], "00f067aa0ba902b7");
        assert_eq!(line["span"]["name"], "rpc");
        assert!(line["span"].get("otel.name").is_none() && !text.contains("authz"), "{text}");
    }

    #[test]
    fn a_human_line_inside_a_call_names_its_trace() {
        let text = logged(LogFormat::Human, a_call);
        assert!(
            text.contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"")
                || text.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
        assert!(text.contains("inside the call") && !text.contains("authz"), "{text}");
    }

    #[test]
    fn without_trace_export_no_span_is_made_and_lines_still_log() {
        let text = logged_with(LogFormat::Json, CallSpans::Unseen, || {
            let call = tracing::info_span!("rpc", trace_id = tracing::field::Empty);
            assert!(call.is_disabled(), "the call span is not made when nothing would see it");
            let _call = call.enter();
            tracing::warn!("inside the call");
        });
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["fields"]["message"], "inside the call");
        assert!(line.get("span").is_none(), "{text}");
    }

    #[test]
    fn no_library_span_is_made_with_or_without_trace_export() {
        let sink = Captured::default();
        let dispatch = subscriber(log_layer("info", LogFormat::Json, sink.clone(), CallSpans::Unseen), None);
        tracing::dispatcher::with_default(&dispatch, || {
            // What h2 makes around every frame, and a span of the gateway's own that only
            // traces would see.
            let frame = tracing::trace_span!("pop_frame");
            let inner = tracing::info_span!("authorize", authz.decision = "allow");
            assert!(frame.is_disabled() && inner.is_disabled(), "{frame:?} {inner:?}");
            tracing::warn!("still logged");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("still logged"), "{text}");

        // With export, the gateway's own spans are made for the traces, and h2's still are not.
        let provider = SdkTracerProvider::builder().build();
        let dispatch = subscriber(log_layer("info", LogFormat::Json, sink, CallSpans::Logged), Some(&provider));
        tracing::dispatcher::with_default(&dispatch, || {
            let frame = tracing::trace_span!(target: "h2::proto", "pop_frame");
            let inner = tracing::info_span!(target: "snapgate_gateway::auth", "authorize");
            assert!(frame.is_disabled() && !inner.is_disabled(), "{frame:?} {inner:?}");
        });
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn export_is_off_unless_the_environment_asks() {
        assert_eq!(trace_export(env(&[])), Ok(None));
        assert_eq!(trace_export(env(&[("OTEL_SERVICE_NAME", "x")])), Ok(None));
        let on = |pairs| trace_export(env(pairs)).unwrap().map(|e| e.protocol);
        assert_eq!(on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]), Some(Protocol::HttpBinary));
        assert_eq!(
            on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            Some(Protocol::Grpc)
        );
        assert_eq!(on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")]), None);
        assert_eq!(on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_EXPORTER", "none")]), None);
        assert!(
            trace_export(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "x"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
                .is_err()
        );
    }
}

/// Which OpenTelemetry RPC conventions spans follow: the names most collectors and dashboards
/// still read (before semantic conventions 1.39: `rpc.system`, `rpc.service`, `rpc.method`,
/// `rpc.grpc.status_code`), the current ones (`rpc.system.name`, a fully qualified
/// `rpc.method`, `rpc.response.status_code`), or both, chosen the standard way with
/// `OTEL_SEMCONV_STABILITY_OPT_IN=rpc` (current) or `rpc/dup` (both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcConventions {
    Old,
    Current,
    Both,
}

impl RpcConventions {
    /// From the value of `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma-separated list).
    pub fn from_opt_in(value: Option<&str>) -> RpcConventions {
        let options: Vec<&str> = value.unwrap_or_default().split(',').map(str::trim).collect();
        if options.contains(&"rpc/dup") {
            RpcConventions::Both
        } else if options.contains(&"rpc") {
            RpcConventions::Current
        } else {
            RpcConventions::Old
        }
    }

    /// The process's choice, read once.
    pub fn get() -> RpcConventions {
        static CHOSEN: std::sync::OnceLock<RpcConventions> = std::sync::OnceLock::new();
        *CHOSEN
            .get_or_init(|| RpcConventions::from_opt_in(std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").ok().as_deref()))
    }

    pub fn old(self) -> bool {
        self != RpcConventions::Current
    }

    pub fn current(self) -> bool {
        self != RpcConventions::Old
    }

    /// Records the RPC's names on `span` (declared with the fields empty): `system`, then
    /// `service` and `method` (`rpc.method` is fully qualified when the current names are on).
    pub(crate) fn record_names(self, span: &tracing::Span, system: &str, service: &str, method: &str) {
        if self.old() {
            span.record("rpc.system", system);
            span.record("rpc.service", service);
            span.record("rpc.method", method);
        }
        if self.current() {
            span.record("rpc.system.name", system);
            span.record("rpc.method", format!("{service}/{method}").as_str());
        }
    }
}

#[cfg(test)]
mod conventions_tests {
    use super::RpcConventions;

    #[test]
    fn the_opt_in_variable_chooses_the_conventions() {
        assert_eq!(RpcConventions::from_opt_in(None), RpcConventions::Old);
        assert_eq!(RpcConventions::from_opt_in(Some("http")), RpcConventions::Old);
        assert_eq!(RpcConventions::from_opt_in(Some("http, rpc")), RpcConventions::Current);
        assert_eq!(RpcConventions::from_opt_in(Some("rpc/dup,http")), RpcConventions::Both);
    }
}

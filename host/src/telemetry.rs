//! Traces: the host's `tracing` spans exported as OpenTelemetry spans over OTLP (HTTP/protobuf or
//! gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`config::traces_from_env`), and the W3C
//! `traceparent` that carries an Order's trace from the leader's `ingest_event` span, through the
//! store, to the worker's `job` span.
//!
//! Without export settings none of this is set up: no layer, no exporter, and
//! [`traceparent`] has nothing to write (jobs carry none).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, Sampler, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;
use url::Url;

use crate::http::HttpClientError;

/// The instrumentation scope of every span the host exports.
const SCOPE: &str = "fulfilld";

/// The W3C header (and the carrier key) of a trace context.
const TRACEPARENT: &str = "traceparent";

/// The longest `traceparent` a job may carry that is looked at. Version `00` is exactly 55
/// characters; later versions may append fields. The value comes from the store, so it is not
/// trusted: anything longer, or malformed, is ignored and the job starts a trace of its own.
pub const MAX_TRACEPARENT_LEN: usize = 128;

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf` (the default): POST `<endpoint>/v1/traces`.
    HttpProtobuf,
    /// `grpc`: the OTLP `TraceService` at the endpoint.
    Grpc,
}

/// Where and how traces are exported: what `config::traces_from_env` reads from the standard
/// `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The full address spans are sent to: for HTTP the `/v1/traces` URL (already appended to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`), for gRPC the collector's address.
    pub endpoint: Url,
    pub protocol: Protocol,
    /// Resource attributes, `service.name` first (`OTEL_SERVICE_NAME`, default `fulfilld`), then
    /// `service.version` and `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`: one export's limit.
    pub timeout: Duration,
    /// `OTEL_BSP_SCHEDULE_DELAY`: how long finished spans wait before a batch goes out.
    pub schedule_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: finished spans held for export; more are dropped.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export request.
    pub max_export_batch_size: usize,
}

/// Setting up trace export failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("trace export: {0}")]
    Client(#[from] HttpClientError),
    #[error("trace export to {endpoint}: the OTLP exporter could not be set up")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// A `tracing` layer, boxed so the caller can keep it beside its other layers.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The running export: finished spans are batched on the tokio runtime and sent. [`flush`]
/// (`serve`'s graceful stop, the end of `fulfill`) sends what is still held.
///
/// [`flush`]: TraceExport::flush
#[derive(Debug)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Sends the spans still held and stops exporting. Waits at most for one export (bounded by
    /// the export timeout); a failure is logged, never fatal: the host's work is done.
    pub async fn flush(self) {
        let provider = self.provider;
        // The SDK's shutdown blocks its thread until the batch task on the runtime answers.
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not send the last spans"),
            Err(err) => tracing::warn!(error = %err, "could not send the last spans"),
        }
    }
}

/// Starts exporting: the exporter, the batch processor on the current tokio runtime (call from
/// inside it), and the layer that turns the host's spans into OpenTelemetry spans.
///
/// The layer has its own filter, independent of the log filter: every span of the host's own
/// targets down to DEBUG (so the `host_call` spans and the HTTP requests under them are in the
/// trace when logs are at INFO), and events of WARN and above as span events. Deploy rehearsals
/// (the `rehearsal` span and everything under it) are not sampled: they are not Orders.
pub fn start<S>(settings: &TraceSettings) -> Result<(BoxedLayer<S>, TraceExport), TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let exporter_error = |source| TelemetryError::Exporter {
        endpoint: settings.endpoint.to_string(),
        source,
    };
    let exporter = match settings.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            // The host's one HTTP client setup: rustls with ring, the system trust store.
            .with_http_client(crate::http::http_client(settings.timeout)?)
            .with_endpoint(settings.endpoint.as_str())
            .with_timeout(settings.timeout)
            .build()
            .map_err(exporter_error)?,
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.as_str())
                .with_timeout(settings.timeout);
            if settings.endpoint.scheme() == "https" {
                // The same public roots the Pub/Sub client trusts.
                builder = builder
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
            }
            builder.build().map_err(exporter_error)?
        }
    };
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(settings.schedule_delay)
        .with_max_queue_size(settings.max_queue_size)
        .with_max_export_batch_size(settings.max_export_batch_size)
        .build();
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
        .with_batch_config(batch)
        .build();
    let resource = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            settings
                .resource
                .iter()
                .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(SkipRehearsals)))
        .build();
    let layer = layer(provider.tracer(SCOPE));
    Ok((layer, TraceExport { provider }))
}

/// The OpenTelemetry layer with the export filter (see [`start`]).
fn layer<S>(tracer: SdkTracer) -> BoxedLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let filter = FilterFn::new(|meta: &tracing::Metadata<'_>| {
        let target = meta.target();
        let ours =
            target == "fulfilld" || target.starts_with("fulfilld::") || target == "component";
        if meta.is_span() {
            ours && *meta.level() <= tracing::Level::DEBUG
        } else {
            ours && *meta.level() <= tracing::Level::WARN
        }
    })
    .with_max_level_hint(LevelFilter::DEBUG);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_filter(filter)
        .boxed()
}

/// Samples everything except deploy rehearsals (root spans named `rehearsal`); children follow
/// their parent (`Sampler::ParentBased`), so a rehearsal's host calls are dropped with it.
#[derive(Debug, Clone)]
struct SkipRehearsals;

impl ShouldSample for SkipRehearsals {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let sampler = if name == crate::runtime::REHEARSAL_SPAN {
            Sampler::AlwaysOff
        } else {
            Sampler::AlwaysOn
        };
        sampler.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The W3C `traceparent` of `span`, to store with the job it starts; `None` when traces are not
/// exported (the span has no OpenTelemetry context).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` (not yet entered) a child of the span `traceparent` names, so a job's run is in
/// the trace its ingest started. A missing, over-long or malformed `traceparent` (it comes from
/// the store) is ignored: the span stays a root of a new trace. Returns whether it was adopted.
pub fn adopt_parent(span: &tracing::Span, traceparent: Option<&str>) -> bool {
    let Some(text) = traceparent else {
        return false;
    };
    if text.len() > MAX_TRACEPARENT_LEN || !well_formed(text) {
        tracing::debug!(
            len = text.len(),
            "the job's traceparent is malformed: it starts a new trace"
        );
        return false;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), text.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    // The propagator also refuses all-zero ids and version `ff`.
    if !context.span().span_context().is_valid() {
        tracing::debug!(
            traceparent = text,
            "the job's traceparent is malformed: it starts a new trace"
        );
        return false;
    }
    span.set_parent(context).is_ok()
}

/// The W3C shape, strictly (the SDK's parser takes shorter ids): `vv-<32 hex>-<16 hex>-ff`, all
/// lowercase hex; a version above `00` may append `-` and more fields.
fn well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|part| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    };
    let dashes = [2, 35, 52].iter().all(|&at| bytes.get(at) == Some(&b'-'));
    let rest = match bytes.get(55) {
        None => true,
        Some(b'-') => !text.starts_with("00"),
        Some(_) => false,
    };
    bytes.len() >= 55 && dashes && hex(0..2) && hex(3..35) && hex(36..52) && hex(53..55) && rest
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::SpanId;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Keeps what the SDK exports (the simple processor exports each span as it ends).
    #[derive(Debug, Clone, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    impl Collected {
        fn named(&self, name: &str) -> Vec<SpanData> {
            let spans = self.0.lock().unwrap();
            spans.iter().filter(|s| s.name == name).cloned().collect()
        }
    }

    /// Runs `body` under a subscriber with the export layer (and its filter) over an SDK that
    /// collects spans in memory.
    fn traced(body: impl FnOnce()) -> Collected {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .with_sampler(Sampler::ParentBased(Box::new(SkipRehearsals)))
            .build();
        let subscriber = tracing_subscriber::registry().with(layer(provider.tracer(SCOPE)));
        tracing::subscriber::with_default(subscriber, body);
        provider.shutdown().unwrap();
        collected
    }

    #[test]
    fn a_job_with_its_ingest_traceparent_joins_that_trace() {
        let collected = traced(|| {
            let ingest = tracing::info_span!(target: "fulfilld::pipeline::ingest", parent: None, "ingest_event");
            let parent = traceparent(&ingest).unwrap();
            assert_eq!(parent.len(), 55, "{parent}");
            drop(ingest);
            let job =
                tracing::info_span!(target: "fulfilld::pipeline::worker", parent: None, "job");
            assert!(adopt_parent(&job, Some(&parent)));
            job.in_scope(|| {
                tracing::debug_span!(target: "fulfilld::runtime::gate", "host_call")
                    .in_scope(|| {});
            });
        });
        let ingest = &collected.named("ingest_event")[0];
        let job = &collected.named("job")[0];
        let call = &collected.named("host_call")[0];
        assert_eq!(ingest.parent_span_id, SpanId::INVALID);
        assert_eq!(job.span_context.trace_id(), ingest.span_context.trace_id());
        assert_eq!(job.parent_span_id, ingest.span_context.span_id());
        assert_eq!(call.span_context.trace_id(), ingest.span_context.trace_id());
        assert_eq!(call.parent_span_id, job.span_context.span_id());
    }

    #[test]
    fn a_malformed_traceparent_from_the_store_starts_a_new_root() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long = format!("{valid}-{}", "a".repeat(MAX_TRACEPARENT_LEN));
        let malformed = [
            "",
            "garbage",
            // All-zero trace id and span id are invalid.
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            // Version ff is forbidden; a short trace id; not hex; non-ASCII.
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333é-01",
            // Upper case; a version-00 value with more fields; separators elsewhere.
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            long.as_str(),
        ];
        let collected = traced(|| {
            for text in malformed {
                let job =
                    tracing::info_span!(target: "fulfilld::pipeline::worker", parent: None, "job");
                assert!(!adopt_parent(&job, Some(text)), "{text:?} adopted");
                job.in_scope(|| {
                    tracing::debug_span!(target: "fulfilld::runtime::gate", "host_call")
                        .in_scope(|| {});
                });
            }
            // No traceparent at all (a job enqueued without export, or before this version).
            let job =
                tracing::info_span!(target: "fulfilld::pipeline::worker", parent: None, "job");
            assert!(!adopt_parent(&job, None));
            drop(job);
        });
        let jobs = collected.named("job");
        assert_eq!(jobs.len(), malformed.len() + 1);
        let mut traces = std::collections::BTreeSet::new();
        for job in &jobs {
            assert_eq!(job.parent_span_id, SpanId::INVALID, "{job:?}");
            assert_ne!(
                job.span_context.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
            traces.insert(job.span_context.trace_id().to_string());
        }
        assert_eq!(
            traces.len(),
            jobs.len(),
            "each malformed one is a trace of its own"
        );
        // Their host calls are still children of their job.
        for call in collected.named("host_call") {
            assert!(
                jobs.iter()
                    .any(|j| j.span_context.span_id() == call.parent_span_id)
            );
        }
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-comes-next";
        assert!(well_formed(later));
        assert!(well_formed(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!well_formed(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0"
        ));
    }

    #[test]
    fn without_export_a_span_has_no_traceparent() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("ingest_event");
            assert_eq!(traceparent(&span), None);
            assert!(!adopt_parent(
                &span,
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            ));
        });
    }

    #[test]
    fn rehearsals_and_foreign_targets_are_not_exported_but_debug_host_calls_are() {
        let collected = traced(|| {
            tracing::debug_span!(target: "fulfilld::gate", "rehearsal").in_scope(|| {
                tracing::debug_span!(target: "fulfilld::runtime::gate", "host_call")
                    .in_scope(|| {});
            });
            tracing::info_span!(target: "h2::proto", "poll").in_scope(|| {});
            tracing::trace_span!(target: "fulfilld::store", "too_fine").in_scope(|| {});
            tracing::info_span!(target: "fulfilld::pipeline::worker", "job").in_scope(|| {
                tracing::info!(target: "fulfilld::pipeline::worker", "not an event of the trace");
                tracing::warn!(target: "component", "a warning is");
                tracing::debug_span!(target: "fulfilld::runtime::gate", "host_call")
                    .in_scope(|| {});
            });
        });
        let names: Vec<String> = collected
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(names, ["host_call", "job"]);
        let job = &collected.named("job")[0];
        let events: Vec<&str> = job.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["a warning is"]);
    }
}

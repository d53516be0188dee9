//! Traces: `fulfilld serve` (the built binary) exports its spans over OTLP to a receiver in this
//! process, one trace per Order: the leader's `ingest_event` span as the root, the worker's `job`
//! span as its child (the trace context travelled in the job, through the store), and the
//! component's host calls (`host_call`) as the job's children.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;

use crate::pipeline::{Rig, ServeProcess};

/// One span as the receiver got it, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root.
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

/// The spans every export request brought, in arrival order.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

impl Collector {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let parent = if span.parent_span_id.iter().all(|b| *b == 0) {
                        String::new()
                    } else {
                        hex::encode(&span.parent_span_id)
                    };
                    spans.push(Received {
                        service: service.clone(),
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent,
                        name: span.name,
                        attributes: attributes(span.attributes),
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    /// The `job` span of `order_id`, once it arrived (it ends after everything else of the
    /// Order's trace, and the exporter sends spans in the order they ended).
    fn has_job(&self, order_id: &str) -> bool {
        self.spans().iter().any(|s| {
            s.name == "job" && s.attributes.get("order_id").map(String::as_str) == Some(order_id)
        })
    }
}

fn attributes(
    list: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
) -> BTreeMap<String, String> {
    list.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(any_value::Value::StringValue(s)) => s,
                Some(any_value::Value::IntValue(n)) => n.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key, value)
        })
        .collect()
}

/// An OTLP/HTTP receiver on a free loopback port: POST `/v1/traces` with a protobuf
/// `ExportTraceServiceRequest`. Returns its base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` takes).
async fn http_receiver(collector: Collector) -> String {
    use axum::body::Bytes;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let collector = collector.clone();
            async move {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if content_type != "application/x-protobuf" {
                    return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new()).into_response();
                }
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        collector.take(request);
                        (
                            [(header::CONTENT_TYPE, "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    }
                    Err(_) => (StatusCode::BAD_REQUEST, Vec::new()).into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The OTLP gRPC `TraceService` on a free loopback port; returns its address.
async fn grpc_receiver(collector: Collector) -> String {
    struct Service(Collector);

    #[tonic::async_trait]
    impl TraceService for Service {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.0.take(request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Service(collector)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// The serve log has no warning or error from the OpenTelemetry SDK or exporter (a failed or
/// refused export).
fn assert_exports_succeeded(log: &str) {
    for line in log.lines() {
        assert!(
            !(line.contains("opentelemetry")
                && (line.contains(" WARN ") || line.contains(" ERROR "))),
            "{line}"
        );
    }
}

/// Waits for `check`, polling; panics naming `what` after `limit`.
async fn wait_until(
    what: &str,
    limit: Duration,
    check: impl Fn() -> bool,
    log: impl Fn() -> String,
) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trace of `order_id` among `spans`, checked: one `ingest_event` root and one `job` span
/// for the Order, in one trace; the job the root's child; every `host_call` the job's child;
/// the HTTP requests under the host calls; nothing else in the trace. Returns (trace id, host
/// call ops, spans in the trace).
fn order_trace(spans: &[Received], order_id: &str) -> (String, Vec<String>, usize) {
    let of_order = |name: &str| -> Vec<&Received> {
        spans
            .iter()
            .filter(|s| {
                s.name == name && s.attributes.get("order_id").map(String::as_str) == Some(order_id)
            })
            .collect()
    };
    let ingest = of_order("ingest_event");
    assert_eq!(
        ingest.len(),
        1,
        "one ingest span for {order_id}: {ingest:#?}"
    );
    let ingest = ingest[0];
    assert_eq!(
        ingest.parent, "",
        "the ingest span is the root: {ingest:#?}"
    );
    assert_eq!(
        ingest.attributes.get("outcome").map(String::as_str),
        Some("enqueued")
    );
    assert!(ingest.attributes.contains_key("event_uuid"), "{ingest:#?}");
    assert!(ingest.attributes.contains_key("replay_id"), "{ingest:#?}");
    let jobs = of_order("job");
    assert_eq!(jobs.len(), 1, "one job span for {order_id}: {jobs:#?}");
    let job = jobs[0];
    assert_eq!(
        job.trace_id, ingest.trace_id,
        "the job is in the ingest span's trace"
    );
    assert_eq!(
        job.parent, ingest.span_id,
        "the job is the ingest span's child"
    );
    assert_eq!(
        job.attributes.get("event_uuid"),
        ingest.attributes.get("event_uuid")
    );

    let trace: Vec<&Received> = spans
        .iter()
        .filter(|s| s.trace_id == ingest.trace_id)
        .collect();
    let calls: Vec<&Received> = trace
        .iter()
        .copied()
        .filter(|s| s.name == "host_call")
        .collect();
    for call in &calls {
        assert_eq!(
            call.parent, job.span_id,
            "a host call is the job's child: {call:#?}"
        );
        assert_eq!(
            call.attributes.get("outcome").map(String::as_str),
            Some("ok"),
            "{call:#?}"
        );
    }
    let call_ids: BTreeSet<&str> = calls.iter().map(|c| c.span_id.as_str()).collect();
    for span in &trace {
        match span.name.as_str() {
            "ingest_event" | "job" | "host_call" => {}
            "salesforce.request" | "salesforce.token" | "whmcs.call" => assert!(
                call_ids.contains(span.parent.as_str()),
                "an HTTP request is a host call's child: {span:#?}"
            ),
            other => panic!("unexpected span {other} in {order_id}'s trace: {span:#?}"),
        }
    }
    let ops: Vec<String> = calls
        .iter()
        .map(|c| c.attributes.get("op").cloned().unwrap_or_default())
        .collect();
    for op in ["salesforce.query", "salesforce.update", "billing.call"] {
        assert!(
            ops.iter().any(|o| o == op),
            "no {op} host call for {order_id}: {ops:?}"
        );
    }
    (ingest.trace_id.clone(), ops, trace.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_order_is_one_trace_from_ingest_through_its_job_and_host_calls() {
    let collector = Collector::default();
    let endpoint = http_receiver(collector.clone()).await;
    let rig = Rig::new().await;
    let orders = rig.orders(1, 3);
    let mut serve = ServeProcess::start(
        &rig,
        "otel-http",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    serve.wait_role("leader", Duration::from_secs(60)).await;
    let started = Instant::now();
    for order in &orders {
        rig.publish(order);
    }
    rig.wait_activated(&orders, Duration::from_secs(60)).await;
    wait_until(
        "every Order's job span",
        Duration::from_secs(30),
        || orders.iter().all(|o| collector.has_job(o)),
        || serve.log_text(),
    )
    .await;
    eprintln!(
        "3 Orders activated and their spans received in {:?}",
        started.elapsed()
    );

    let spans = collector.spans();
    let mut traces = BTreeSet::new();
    for order in &orders {
        let (trace, ops, count) = order_trace(&spans, order);
        eprintln!("{order}: trace {trace}, {count} spans, host calls {ops:?}");
        traces.insert(trace);
    }
    assert_eq!(traces.len(), orders.len(), "one trace per Order");
    // Nothing of an Order is outside its trace; other traces are the host's own (the Pub/Sub
    // session's token exchange).
    let mut other_roots = BTreeMap::<String, usize>::new();
    for span in &spans {
        if traces.contains(&span.trace_id) {
            continue;
        }
        assert!(
            !matches!(span.name.as_str(), "ingest_event" | "job" | "host_call"),
            "an Order's span outside the Order's trace: {span:#?}"
        );
        if span.parent.is_empty() {
            *other_roots.entry(span.name.clone()).or_default() += 1;
        }
    }
    let mut by_name = BTreeMap::<&str, usize>::new();
    for span in &spans {
        *by_name.entry(span.name.as_str()).or_default() += 1;
    }
    eprintln!(
        "{} spans received ({by_name:?}); other traces: {other_roots:?}",
        spans.len()
    );
    assert!(
        spans.iter().all(|s| s.service == "fulfilld"),
        "service.name"
    );
    assert!(
        serve
            .log_text()
            .contains("exporting traces (OpenTelemetry)"),
        "{}",
        serve.log_text()
    );

    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", serve.log_text());
    assert_exports_succeeded(&serve.log_text());
}

/// gRPC, and the graceful stop sends what the batch still holds: with a ten-minute batch delay
/// nothing is sent while the host runs, everything at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_grpc_the_spans_still_held_are_sent_at_sigterm() {
    let collector = Collector::default();
    let endpoint = grpc_receiver(collector.clone()).await;
    let rig = Rig::new().await;
    let orders = rig.orders(1, 1);
    let mut serve = ServeProcess::start(
        &rig,
        "otel-grpc",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ("OTEL_SERVICE_NAME", "fulfilld-grpc-test"),
        ],
    );
    serve.wait_role("leader", Duration::from_secs(60)).await;
    rig.publish(&orders[0]);
    rig.wait_activated(&orders, Duration::from_secs(60)).await;
    assert!(
        !collector.has_job(&orders[0]),
        "sent before the batch delay or the stop"
    );
    let stopping = Instant::now();
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", serve.log_text());
    eprintln!("stopped (spans flushed) in {:?}", stopping.elapsed());
    assert!(
        collector.has_job(&orders[0]),
        "not flushed at the stop:\n{}",
        serve.log_text()
    );
    let spans = collector.spans();
    let (_, ops, count) = order_trace(&spans, &orders[0]);
    eprintln!("{}: {count} spans, host calls {ops:?}", orders[0]);
    assert!(spans.iter().all(|s| s.service == "fulfilld-grpc-test"));
    assert_exports_succeeded(&serve.log_text());
}

/// `fulfill` has no ingest: its `job` span is the root, the host calls its children, and the
/// spans go out when the command ends (the default batch delay, 5 s, is longer than the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfill_exports_its_job_as_the_root_before_it_exits() {
    let collector = Collector::default();
    let endpoint = http_receiver(collector.clone()).await;
    let rig = Rig::new().await;
    let orders = rig.orders(1, 1);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"));
    command
        .args(["fulfill", "--order-id", &orders[0]])
        .envs(&rig.env)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    assert_eq!(rig.status(&orders[0]).0, "Activated", "{stderr}");
    assert_exports_succeeded(&stderr);

    let spans = collector.spans();
    let jobs: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name == "job" && s.attributes.get("order_id") == Some(&orders[0]))
        .collect();
    assert_eq!(jobs.len(), 1, "{spans:#?}");
    let job = jobs[0];
    assert_eq!(job.parent, "", "the job is the root: {job:#?}");
    let calls: Vec<&Received> = spans.iter().filter(|s| s.name == "host_call").collect();
    assert!(calls.len() >= 3, "{calls:#?}");
    for call in &calls {
        assert_eq!(call.trace_id, job.trace_id);
        assert_eq!(call.parent, job.span_id);
    }
    eprintln!("fulfill: {} spans, {} host calls", spans.len(), calls.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_refuses_bad_trace_settings_and_names_each() {
    let rig = Rig::new().await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("serve")
        .envs(&rig.env)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
        .env("OTEL_RESOURCE_ATTRIBUTES", "team")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for setting in [
        "OTEL_EXPORTER_OTLP_ENDPOINT: expected an http(s) URL",
        "OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or grpc, got `carrier-pigeon`",
        "OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs",
    ] {
        assert!(stderr.contains(setting), "{setting} not in:\n{stderr}");
    }
}

/// A collector nobody answers at: the jobs run as without export, the exporter's failures are
/// WARNs, and the graceful stop still ends (exit 0) instead of waiting on the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_collector_costs_no_job_anything() {
    let endpoint = format!("http://127.0.0.1:{}", crate::pipeline::free_port());
    let rig = Rig::new().await;
    let orders = rig.orders(1, 5);
    let mut serve = ServeProcess::start(
        &rig,
        "otel-nobody",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export while the jobs run, not only at the stop.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    serve.wait_role("leader", Duration::from_secs(60)).await;
    for order in &orders {
        rig.publish(order);
    }
    rig.wait_activated(&orders, Duration::from_secs(60)).await;
    rig.assert_exactly_once(&orders);
    // At least one batch was tried and failed, and said so at WARN.
    serve
        .wait_log("WARN opentelemetry", Duration::from_secs(30))
        .await;
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", serve.log_text());
    assert!(serve.log_text().contains("stopped"), "{}", serve.log_text());
}

/// docs/operations.md, "One trace per Order": a job run again (here requeued from the dead
/// letters after the sandbox stopped it) stays in its Order's trace: each run is a `job` span
/// of its own under the same `ingest_event` root.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_requeued_job_runs_again_in_its_orders_trace() {
    let collector = Collector::default();
    let endpoint = http_receiver(collector.clone()).await;
    let rig = Rig::new().await.with_redis(&crate::pipeline::redis_url());
    let orders = rig.orders(1, 1);
    let panic = crate::common::component("fixture-panic")
        .display()
        .to_string();
    let serve = ServeProcess::start(
        &rig,
        "otel-requeue",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("FULFILLD_COMPONENT", panic.as_str()),
        ],
    );
    serve.wait_role("leader", Duration::from_secs(60)).await;
    let (uuid, _) = rig.publish(&orders[0]);
    let store = rig.store().await;
    let jobs_of_order = || -> Vec<Received> {
        collector
            .spans()
            .into_iter()
            .filter(|s| {
                s.name == "job"
                    && s.attributes.get("order_id").map(String::as_str) == Some(orders[0].as_str())
            })
            .collect()
    };
    let letter =
        crate::pipeline::wait_dead_letter(&store, &rig.channel, &uuid, || serve.log_text()).await;
    store.requeue(&rig.channel, &letter.id).await.unwrap();
    let start = Instant::now();
    while jobs_of_order().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{:#?}\n{}",
            jobs_of_order(),
            serve.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = jobs_of_order();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    let spans = collector.spans();
    let ingest: Vec<&Received> = spans
        .iter()
        .filter(|s| {
            s.name == "ingest_event"
                && s.attributes.get("order_id").map(String::as_str) == Some(orders[0].as_str())
        })
        .collect();
    assert_eq!(ingest.len(), 1, "{ingest:#?}");
    for job in &jobs {
        assert_eq!(job.trace_id, ingest[0].trace_id, "{job:#?}");
        assert_eq!(job.parent, ingest[0].span_id, "{job:#?}");
        assert_eq!(job.attributes.get("event_uuid"), Some(&uuid));
    }
    assert_ne!(jobs[0].span_id, jobs[1].span_id);
}

/// docs/operations.md, "One trace per Order": a job reclaimed after its replica was killed
/// (-9) mid-job runs on another replica in the same trace: its `job` span (delivery 2) is the
/// child of the Order's `ingest_event` root, which the killed replica exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_reclaimed_after_a_crash_stays_in_its_orders_trace() {
    let collector = Collector::default();
    let endpoint = http_receiver(collector.clone()).await;
    let rig = Rig::new().await.with_redis(&crate::pipeline::redis_url());
    let orders = rig.orders(1, 1);
    let settings = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("FULFILLD_JOB_RECLAIM_MS", "2000"),
        ("FULFILLD_HOLD_TTL_MS", "3000"),
    ];
    let mut a = ServeProcess::start(&rig, "otel-killed", &settings);
    a.wait_role("leader", Duration::from_secs(60)).await;
    let uuid = rig
        .publish_in_flight(&orders[0], Duration::from_secs(30))
        .await;
    let of_order = |name: &str| -> Vec<Received> {
        collector
            .spans()
            .into_iter()
            .filter(|s| {
                s.name == name
                    && s.attributes.get("order_id").map(String::as_str) == Some(orders[0].as_str())
            })
            .collect()
    };
    let start = Instant::now();
    while of_order("ingest_event").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.kill9();

    let b = ServeProcess::start(&rig, "otel-reclaims", &settings);
    rig.wait_activated(&orders, Duration::from_secs(60)).await;
    rig.assert_exactly_once(&orders);
    let start = Instant::now();
    while of_order("job").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second replica reads the channel again from EARLIEST (the rig's SF_EVENTS_REPLAY=ALL):
    // that read is an `ingest_event` of its own with outcome `duplicate`; the job belongs to the
    // one that enqueued it.
    let ingest: Vec<Received> = of_order("ingest_event")
        .into_iter()
        .filter(|s| s.attributes.get("outcome").map(String::as_str) == Some("enqueued"))
        .collect();
    let jobs = of_order("job");
    assert_eq!((ingest.len(), jobs.len()), (1, 1), "{ingest:#?}\n{jobs:#?}");
    assert_eq!(jobs[0].trace_id, ingest[0].trace_id, "{jobs:#?}");
    assert_eq!(jobs[0].parent, ingest[0].span_id, "{jobs:#?}");
    assert_eq!(jobs[0].attributes.get("event_uuid"), Some(&uuid));
    assert_eq!(
        jobs[0].attributes.get("delivery").map(String::as_str),
        Some("2"),
        "{jobs:#?}"
    );
}

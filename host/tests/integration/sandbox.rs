//! Misbehaving components are stopped with their own failure code, and the next job on the
//! same runtime succeeds. Fixtures: tests/fixtures/README.md.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fulfilld::error::ErrorKind;
use fulfilld::runtime::{
    Disposition, FailureSource, LoadedComponent, RunOptions, Runtime, RuntimeConfig,
};
use fulfilld::services::Services;
use fulfilld::testkit::order_event;
use fulfilld::testkit::scenario::Scenario;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cpu_deadline: Duration::from_millis(300),
        memory_cap: 32 << 20,
        max_host_calls: 200,
        max_instances: 4,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

async fn load(runtime: &Runtime, name: &str) -> LoadedComponent {
    let wasm = std::fs::read(common::component(name)).unwrap();
    runtime.load(&wasm).await.unwrap()
}

fn seeded_host() -> Arc<fulfilld::testkit::FakeHost> {
    Scenario::load(&common::scenarios_dir().join("happy-path.toml"))
        .unwrap()
        .seed()
        .unwrap()
}

/// Runs `fixture`, checks its failure code, then checks a good job still runs on `runtime`.
async fn stopped_with(fixture: &str, code: &str) -> String {
    let runtime = runtime();
    let bad = load(&runtime, fixture).await;
    let good = load(&runtime, "fulfillment").await;
    let event = order_event("801000000000001AAA");

    let host = seeded_host();
    let report = runtime
        .run(&bad, host.clone() as Arc<dyn Services>, &event, true)
        .await;
    let failure = report.result.clone().unwrap_err();
    assert_eq!(failure.code, code, "{fixture}: {failure:?}");

    let host = seeded_host();
    let next = runtime
        .run(&good, host as Arc<dyn Services>, &event, false)
        .await;
    assert_eq!(
        next.result.map(|o| o.disposition),
        Ok(Disposition::Completed),
        "the job after {fixture} must succeed"
    );
    failure.message
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_cpu_deadline() {
    let message = stopped_with("fixture-spin-loop", "COMPONENT_TIMEOUT").await;
    assert!(message.contains("CPU deadline"), "{message}");
}

#[tokio::test]
async fn growing_memory_past_the_cap_traps() {
    let message = stopped_with("fixture-memory-hog", "COMPONENT_MEMORY").await;
    assert!(message.contains(&(32usize << 20).to_string()), "{message}");
}

#[tokio::test]
async fn a_panic_traps_and_reports_the_panic_message() {
    let message = stopped_with("fixture-panic", "COMPONENT_TRAP").await;
    assert!(message.contains("panicked"), "{message}");
}

#[tokio::test]
async fn too_many_host_calls_are_refused() {
    let message = stopped_with("fixture-call-flood", "COMPONENT_HOST_CALLS").await;
    assert!(message.contains("200"), "{message}");
}

#[tokio::test]
async fn files_environment_and_sockets_give_nothing() {
    let message = stopped_with("fixture-sandbox-escape", "ESCAPE_BLOCKED").await;
    assert!(!message.contains("root:"), "{message}");
}

#[tokio::test]
async fn a_write_outside_the_policy_is_forbidden_and_logged() {
    let logs = common::LogCapture::default();
    let _guard = logs.install();
    let runtime = runtime();
    let component = load(&runtime, "fixture-forbidden-write").await;
    let host = seeded_host();
    let report = runtime
        .run(
            &component,
            host.clone() as Arc<dyn Services>,
            &order_event("801000000000001AAA"),
            true,
        )
        .await;
    let failure = report.result.unwrap_err();
    assert_eq!(failure.source, FailureSource::Component);
    assert_eq!(failure.code, "FORBIDDEN_OBSERVED", "{failure:?}");

    let journal = report.journal.unwrap();
    let refused: Vec<_> = journal
        .calls
        .iter()
        .filter(|c| c.op != "salesforce.query")
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    for call in &refused {
        let error = call.result.as_ref().unwrap_err();
        assert_eq!(error.kind, ErrorKind::Forbidden, "{call:?}");
        assert_eq!(error.code, "FORBIDDEN");
    }
    // Nothing was written.
    host.with_org(|org| {
        let account = org.get("Account", "001000000000001AAA").unwrap();
        assert_eq!(account["Name"], "Acme Corp");
        assert_eq!(
            org.get("Order", "801000000000001AAA").unwrap()["Status"],
            "Activated"
        );
    });
    let text = logs.text();
    assert!(text.contains("host call refused"), "{text}");
    assert!(text.contains("Account"), "{text}");
    assert!(text.contains("DeleteClient"), "{text}");
    let counters = runtime.call_counters().snapshot();
    assert_eq!(counters.get(&("salesforce.update", "forbidden")), Some(&2));
    assert_eq!(counters.get(&("billing.call", "forbidden")), Some(&1));
}

/// WIT versioning: a component built against `fulfilld:fulfillment@1.0.0` (an older minor) loads
/// on this 1.1 host and its imports work.
#[tokio::test]
async fn a_component_built_against_an_older_minor_loads_and_runs() {
    let runtime = runtime();
    let older = load(&runtime, "fixture-older-minor").await;
    assert_eq!(older.info().name, "fixture-older-minor");
    let report = runtime
        .run(
            &older,
            seeded_host() as Arc<dyn Services>,
            &order_event("801000000000001AAA"),
            false,
        )
        .await;
    let outcome = report.result.unwrap();
    assert_eq!(outcome.disposition, Disposition::Skipped);
    assert!(
        outcome.message.contains("Activating"),
        "the 1.0 component's query must reach the host: {}",
        outcome.message
    );
}

/// Every log line of a job carries one `job` span, whether the runtime opens it (the test kit,
/// the CLI) or its caller hands in its own (the pipeline's worker opens `runtime::JOB_SPAN`).
#[tokio::test]
async fn every_log_line_of_a_job_carries_one_job_span() {
    use tracing::Instrument as _;

    let logs = common::LogCapture::default();
    let _guard = logs.install();
    let runtime = runtime();
    let component = load(&runtime, "fulfillment").await;
    let event = order_event("801000000000001AAA");

    let report = runtime
        .run(
            &component,
            seeded_host() as Arc<dyn Services>,
            &event,
            false,
        )
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    let span = tracing::info_span!(fulfilld::runtime::JOB_SPAN, opened_by = "caller");
    let options = RunOptions {
        span: Some(span.clone()),
        ..RunOptions::default()
    };
    let report = runtime
        .run_with(
            &component,
            seeded_host() as Arc<dyn Services>,
            &event,
            options,
        )
        .instrument(span)
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);

    let text = logs.text();
    let component_lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(" component: "))
        .collect();
    for by_caller in [false, true] {
        assert!(
            component_lines
                .iter()
                .any(|line| line.contains("opened_by=") == by_caller),
            "no component log line with the span opened by the {}: {text}",
            if by_caller { "caller" } else { "runtime" }
        );
    }
    for line in &component_lines {
        assert_eq!(line.matches("job{").count(), 1, "{line}");
    }
}

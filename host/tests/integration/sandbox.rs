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

/// Runs one job of `component` for `order_id` on the seeded fake host.
async fn run_seeded(
    runtime: &Runtime,
    component: &LoadedComponent,
    order_id: &str,
    options: RunOptions,
) -> fulfilld::runtime::JobReport {
    runtime
        .run_with(
            component,
            seeded_host() as Arc<dyn Services>,
            &order_event(order_id),
            options,
        )
        .await
}

/// [`run_seeded`] with the job's journal.
async fn run_recorded(
    runtime: &Runtime,
    component: &LoadedComponent,
    order_id: &str,
) -> fulfilld::runtime::JobReport {
    let options = RunOptions {
        record: fulfilld::runtime::Recording::Full,
        ..RunOptions::default()
    };
    run_seeded(runtime, component, order_id, options).await
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
    assert_eq!(refused.len(), 4, "{refused:?}");
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
    assert!(
        text.contains("a job may update only the Order its event names (801000000000001AAA)"),
        "{text}"
    );
    let counters = runtime.call_counters().snapshot();
    assert_eq!(counters.get(&("salesforce.update", "forbidden")), Some(&3));
    assert_eq!(counters.get(&("billing.call", "forbidden")), Some(&1));
}

/// The policy's `update_other_orders` widens the Order scope: the write to another Order is
/// sent (the fake org answers it), while the other refusals stand; the event's own Order named
/// by its 15-character id is the same Order.
#[tokio::test]
async fn the_policy_can_let_a_job_update_other_orders() {
    let policy = fulfilld::runtime::policy::CapabilityPolicy {
        update_other_orders: true,
        ..Default::default()
    };
    let runtime = Runtime::new(RuntimeConfig {
        policy,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let component = load(&runtime, "fixture-forbidden-write").await;
    let report = run_recorded(&runtime, &component, "801000000000001").await;
    let failure = report.result.unwrap_err();
    assert_eq!(failure.code, "FORBIDDEN_NOT_ENFORCED", "{failure:?}");
    let journal = report.journal.unwrap();
    let other = journal
        .calls
        .iter()
        .find(|c| c.op == "salesforce.update" && c.target.starts_with("Order/801000000000002"))
        .unwrap();
    assert_ne!(
        other.result.as_ref().err().map(|e| e.kind),
        Some(ErrorKind::Forbidden),
        "{other:?}"
    );

    let policy = fulfilld::runtime::policy::CapabilityPolicy::default();
    assert!(
        policy
            .check_record("Order", "801000000000001AAA", Some("801000000000001"))
            .is_ok()
    );
    assert!(
        policy
            .check_record("Order", "801000000000001", Some("801000000000001AAA"))
            .is_ok()
    );
    assert!(
        policy
            .check_record("Order", "801000000000001AAB", Some("801000000000001AAA"))
            .is_err()
    );
    assert!(
        policy
            .check_record("Account", "001000000000001AAA", None)
            .is_ok()
    );
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

/// An answer larger than `result_max` is not handed to the component: the query fails with
/// `EBADRESPONSE` naming the setting, and the default rules fail the Order with it.
#[tokio::test]
async fn an_answer_over_the_result_limit_is_not_handed_to_the_component() {
    let runtime = Runtime::new(RuntimeConfig {
        result_max: 300,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let component = load(&runtime, "fulfillment").await;
    let report = run_recorded(&runtime, &component, "801000000000001AAA").await;
    let journal = report.journal.unwrap();
    let query = journal
        .calls
        .iter()
        .find(|c| c.op == "salesforce.query")
        .unwrap();
    let error = query.result.as_ref().unwrap_err();
    assert_eq!(error.code, "EBADRESPONSE", "{error:?}");
    assert!(
        error.message.contains("FULFILLD_HOST_RESULT_MAX_BYTES"),
        "{error:?}"
    );
    let failure = report.result.unwrap_err();
    assert_eq!(failure.source, FailureSource::Component, "{failure:?}");
}

/// Holds kept by a store that cannot be reached.
struct UnreachableHolds;

impl fulfilld::holds::HoldBackend for UnreachableHolds {
    fn try_hold<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: fulfilld::holds::HoldMode,
        _: Duration,
    ) -> futures::future::BoxFuture<'a, Result<bool, fulfilld::holds::HoldError>> {
        Box::pin(async {
            Err(fulfilld::holds::HoldError::Backend(
                "connection refused (os error 111)".into(),
            ))
        })
    }

    fn renew_hold<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> futures::future::BoxFuture<'a, Result<bool, fulfilld::holds::HoldError>> {
        Box::pin(async { Ok(false) })
    }

    fn release_hold<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), fulfilld::holds::HoldError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A hold the store cannot give, until the job's deadline, is the host's fault: the run ends as
/// `HOST_UNAVAILABLE` from the host (the worker leaves the job to be handed out again and does
/// not mark the Order Failed); the component never saw an error, so it wrote nothing after it.
#[tokio::test]
async fn a_hold_the_store_cannot_give_is_a_host_fault() {
    let runtime = Runtime::new(RuntimeConfig {
        wall_deadline: Duration::from_secs(3),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let component = load(&runtime, "fulfillment").await;
    let options = RunOptions {
        record: fulfilld::runtime::Recording::Full,
        holds: Some(Arc::new(UnreachableHolds)),
        ..RunOptions::default()
    };
    let report = run_seeded(&runtime, &component, "801000000000001AAA", options).await;
    let failure = report.result.unwrap_err();
    assert_eq!(
        (failure.source, failure.code.as_str()),
        (FailureSource::Host, "HOST_UNAVAILABLE"),
        "{failure:?}"
    );
    assert!(
        failure.message.contains("connection refused"),
        "{failure:?}"
    );
    let journal = report.journal.unwrap();
    let failed_write = |c: &&fulfilld::runtime::CallRecord| {
        c.op == "salesforce.update"
            && c.request
                .as_ref()
                .is_some_and(|r| r["Activation_Status__c"] == "Failed")
    };
    assert!(
        !journal.calls.iter().any(|c| c.target == "AddOrder")
            && !journal.calls.iter().any(|c| failed_write(&c)),
        "{:?}",
        journal.calls
    );
}

/// A hold belongs to one run of a job: a second run of the same job (another delivery) is
/// another holder, so it waits for the first run's hold instead of sharing it.
#[tokio::test]
async fn a_second_run_of_a_job_waits_for_the_first_runs_hold() {
    let runtime = Runtime::new(RuntimeConfig {
        hold_ttl: Duration::from_millis(500),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let component = load(&runtime, "fulfillment").await;
    let event = order_event("801000000000001AAA");
    let table = Arc::new(fulfilld::holds::HoldTable::new());
    // Another run of the same job holds the client's hold and is still going. Its holder is
    // the bare EventUuid, which was every run's holder before holds were per run: then this
    // second run would have counted as the same holder and gone straight through.
    let first_run = event.event_uuid.clone();
    assert!(
        table
            .try_hold_now(
                "whmcs-client:42",
                &first_run,
                fulfilld::holds::HoldMode::Exclusive,
                Duration::from_secs(60),
            )
            .unwrap()
    );
    let options = RunOptions {
        record: fulfilld::runtime::Recording::Full,
        delivery: 2,
        holds: Some(table.clone()),
        ..RunOptions::default()
    };
    let report = runtime
        .run_with(
            &component,
            seeded_host() as Arc<dyn Services>,
            &event,
            options,
        )
        .await;
    let failure = report.result.unwrap_err();
    assert!(failure.message.contains("still busy"), "{failure:?}");
    let journal = report.journal.unwrap();
    assert!(
        !journal.calls.iter().any(|c| c.target == "AddOrder"),
        "{:?}",
        journal.calls
    );
}

/// The CPU deadline counts the component's own execution, not time it waits to be scheduled:
/// with another task taking the (single) runtime thread for 50 ms at each of the guest's
/// yields, a spinning guest still gets its full 100 ms of CPU, over a much longer wall time, and
/// both are reported apart.
#[tokio::test(flavor = "current_thread")]
async fn time_the_job_is_not_scheduled_does_not_count_against_the_cpu_deadline() {
    let runtime = Runtime::new(RuntimeConfig {
        cpu_deadline: Duration::from_millis(100),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let spin = load(&runtime, "fixture-spin-loop").await;
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hog = {
        let busy = busy.clone();
        tokio::spawn(async move {
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_millis(50) {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let report = run_recorded(&runtime, &spin, "801000000000001AAA").await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    hog.await.unwrap();
    let failure = report.result.unwrap_err();
    assert_eq!(failure.code, "COMPONENT_TIMEOUT", "{failure:?}");
    assert!(failure.message.contains("its own code ran"), "{failure:?}");
    assert!(report.cpu >= Duration::from_millis(100), "{:?}", report.cpu);
    assert!(
        report.elapsed >= report.cpu * 2,
        "wall {:?}, cpu {:?}: the time the hog held the thread counted as the guest's",
        report.elapsed,
        report.cpu
    );
}

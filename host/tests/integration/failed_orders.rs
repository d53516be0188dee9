//! Issue 13, item 5: a job that ends where the component could not record its failure (a sandbox
//! trap, a failure before the guard) leaves no Order `Activating`. The host reads the Order and,
//! while it is still `Activating`, writes `Failed` with the job's code (shared/runbook.md, "Ops:
//! Manual Retry Flow": network errors, 5xx and timeouts mark the Order Failed); an Order in any
//! other state is left alone. Real sockets throughout: the sandbox's org over HTTP, the workers of
//! an in-process host, and the built `fulfilld fulfill` as a process.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::common;
use crate::pipeline::{Rig, ServeProcess, redis_url, wait_record};

/// The Order's three runbook fields: status, error code, error message.
fn activation(rig: &Rig, order_id: &str) -> (String, String, String) {
    let org = rig.sandbox.salesforce().org();
    let org = org.lock().unwrap();
    let order = org.get("Order", order_id).unwrap();
    let field = |name: &str| {
        order
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (
        field("Activation_Status__c"),
        field("Activation_Error_Code__c"),
        field("Activation_Error_Message__c"),
    )
}

fn set_status(rig: &Rig, order_id: &str, status: &str) {
    let org = rig.sandbox.salesforce().org();
    let mut org = org.lock().unwrap();
    let mut fields = Map::new();
    fields.insert("Activation_Status__c".into(), status.into());
    org.update("Order", order_id, &fields).unwrap();
}

/// REST writes (PATCH) the org received since `from`.
fn patches_since(rig: &Rig, from: usize) -> usize {
    rig.sandbox
        .salesforce()
        .requests()
        .iter()
        .skip(from)
        .filter(|r| r.method == "PATCH")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapping_component_leaves_the_order_failed_with_component_trap() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let orders = rig.orders(1, 2);
    // The second Order is already Activated: a trap on it must not touch it.
    set_status(&rig, &orders[1], "Activated");
    let panic = common::component("fixture-panic").display().to_string();
    let host = rig
        .host(&[("FULFILLD_COMPONENT", &panic), ("FULFILLD_WORKERS", "1")])
        .await;
    let store = rig.store().await;

    let (uuid, _) = rig.publish(&orders[0]);
    wait_record_or_letter(&store, &rig, &uuid).await;
    let (status, code, message) = activation(&rig, &orders[0]);
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("Failed", "COMPONENT_TRAP")
    );
    assert!(
        message.starts_with("Stopped by the sandbox; check WHMCS") && message.len() <= 255,
        "{message}"
    );

    let before = rig.sandbox.salesforce().requests().len();
    let (uuid, _) = rig.publish(&orders[1]);
    wait_record_or_letter(&store, &rig, &uuid).await;
    assert_eq!(activation(&rig, &orders[1]).0, "Activated");
    assert_eq!(
        patches_since(&rig, before),
        0,
        "an Activated Order is not written"
    );
    host.shutdown().await;
}

/// A trapped job is dead-lettered: waits for the letter of `uuid`.
async fn wait_record_or_letter(store: &fulfilld::store::SharedStore, rig: &Rig, uuid: &str) {
    for _ in 0..200 {
        let letters = store.dead_letters(&rig.channel, 100).await.unwrap();
        if letters.iter().any(|l| l.event_uuid == uuid) {
            return;
        }
        if store.job_record(uuid).await.unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the job {uuid} did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_503_on_the_first_order_read_leaves_the_order_failed_with_503() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let orders = rig.orders(1, 1);
    let host = rig.host(&[("FULFILLD_WORKERS", "1")]).await;
    let store = rig.store().await;
    // The component's first REST request (the Order query) answers 503.
    rig.sandbox.salesforce().fail_next(
        1,
        503,
        r#"[{"message":"down for maintenance","errorCode":"SERVER_UNAVAILABLE"}]"#.into(),
    );
    let (uuid, _) = rig.publish(&orders[0]);
    let record = wait_record(&store, &uuid).await;
    assert_eq!(
        (record.outcome.as_str(), record.code.as_deref()),
        ("failed", Some("503"))
    );
    let (status, code, message) = activation(&rig, &orders[0]);
    assert_eq!((status.as_str(), code.as_str()), ("Failed", "503"));
    assert!(message.contains("down for maintenance"), "{message}");
    assert_eq!(
        rig.sandbox.whmcs().whmcs().lock().unwrap().orders().len(),
        0
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_org_stays_down_the_order_stays_activating_and_nothing_is_retried() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let orders = rig.orders(1, 1);
    let serve = ServeProcess::start(&rig, "replica-f", &[("FULFILLD_WORKERS", "1")]);
    serve.wait_role("leader", Duration::from_secs(60)).await;
    let store = rig.store().await;
    // The component's read and the host's own read both answer 503.
    rig.sandbox.salesforce().fail_next(2, 503, String::new());
    let before = rig.sandbox.salesforce().requests().len();
    let (uuid, _) = rig.publish(&orders[0]);
    let record = wait_record(&store, &uuid).await;
    assert_eq!(record.code.as_deref(), Some("503"));
    assert_eq!(activation(&rig, &orders[0]).0, "Activating");
    // Wait a little past the job: no further request about it arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest: Vec<_> = rig
        .sandbox
        .salesforce()
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.path.starts_with("/services/data/"))
        .collect();
    assert_eq!(
        rest.len(),
        2,
        "one read by the component, one by the host: {rest:?}"
    );
    // The host says it could not mark the Order, with the job's code.
    let warning = serve
        .wait_log(
            "could not mark the Order Failed; it stays as it was (not retried)",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        warning.contains(" WARN ") && warning.contains("code=503"),
        "{warning}"
    );
}

/// `fulfilld fulfill` (the binary) with `component` on `order_id`: its JSON summary.
async fn fulfill(rig: &Rig, component: &str, order_id: &str, extra: &[(&str, &str)]) -> Value {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"));
    command
        .args(["fulfill", "--order-id", order_id, "--component", component])
        .envs(&rig.env);
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    // Exit 1 for a failed job (its result has a code), 0 for a completed or skipped one.
    let expected = if summary["result"]["code"].is_string() {
        1
    } else {
        0
    };
    assert_eq!(output.status.code(), Some(expected), "{stdout}");
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fulfill_marks_a_spinning_component_failed_with_component_timeout_and_leaves_others_alone()
{
    let rig = Rig::new().await.with_redis(&redis_url());
    let orders = rig.orders(1, 2);
    set_status(&rig, &orders[1], "Failed");
    let spin = common::component("fixture-spin-loop").display().to_string();
    let limits = [("FULFILLD_CPU_DEADLINE_MS", "200")];

    let summary = fulfill(&rig, &spin, &orders[0], &limits).await;
    assert_eq!(summary["result"]["code"], "COMPONENT_TIMEOUT", "{summary}");
    assert_eq!(summary["host_marked_failed"], true, "{summary}");
    let (status, code, _) = activation(&rig, &orders[0]);
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("Failed", "COMPONENT_TIMEOUT")
    );

    // An Order already Failed (with no code) keeps what it has.
    let before = rig.sandbox.salesforce().requests().len();
    let summary = fulfill(&rig, &spin, &orders[1], &limits).await;
    assert_eq!(summary["result"]["code"], "COMPONENT_TIMEOUT", "{summary}");
    assert_eq!(summary["host_marked_failed"], false, "{summary}");
    assert_eq!(
        activation(&rig, &orders[1]),
        ("Failed".into(), String::new(), String::new())
    );
    assert_eq!(patches_since(&rig, before), 0);
}

/// docs/operations.md, "When the host marks the Order `Failed`": in a worker the host's read
/// and write get at most a third of `FULFILLD_JOB_RECLAIM_MS` (the job's claim is not renewed
/// meanwhile); past that it logs WARN `could not mark the Order Failed in time` and the Order
/// stays as it was. Here the reclaim time is 3 s and the host's Order read is held 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mark_that_outlasts_a_third_of_the_reclaim_time_is_given_up() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let orders = rig.orders(1, 1);
    let panic = common::component("fixture-panic").display().to_string();
    let serve = ServeProcess::start(
        &rig,
        "replica-m",
        &[
            ("FULFILLD_COMPONENT", panic.as_str()),
            ("FULFILLD_WORKERS", "1"),
            ("FULFILLD_JOB_RECLAIM_MS", "3000"),
        ],
    );
    serve.wait_role("leader", Duration::from_secs(60)).await;
    // The component panics before any call: the next Salesforce request is the host's read.
    rig.sandbox
        .salesforce()
        .delay_next(1, Duration::from_secs(3));
    let (uuid, _) = rig.publish(&orders[0]);
    serve
        .wait_log(
            "could not mark the Order Failed in time; it stays as it was (not retried)",
            Duration::from_secs(30),
        )
        .await;
    let store = rig.store().await;
    crate::pipeline::wait_dead_letter(&store, &rig.channel, &uuid, || serve.log_text()).await;
    // Past the held read's 3 s, nothing was written after all.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(activation(&rig, &orders[0]).0, "Activating");
    let writes = rig
        .sandbox
        .salesforce()
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(writes, 0);
}

//! The job journal, read the way operators read it: `fulfilld orders show` and `fulfilld jobs
//! list` run as the built binary against the store `serve` wrote, on Redis and on the embedded
//! store, after a run with a success, a 409, an AcceptOrder 503 and a reclaimed job.

use std::time::Duration;

use fulfilld::sandbox::{NO_CARD_ACCOUNT, add_orders};
use serde_json::Value;

use crate::pipeline::{Rig, redis_url, wait_for};

/// Runs the built `fulfilld` with the rig's settings (and `extra`), as an operator would.
pub(crate) fn fulfilld_with(
    rig: &Rig,
    extra: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"));
    command.args(args).env("FULFILLD_LOG", "warn");
    for (key, value) in &rig.env {
        command.env(key, value);
    }
    for (key, value) in extra {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// The command exited 1 and said `why` on stdout.
fn assert_refused(output: &std::process::Output, why: &str) {
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        crate::common::text(output)
    );
    assert!(stdout(output).contains(why), "{}", stdout(output));
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The Orders of one run: Activated, failed 409 (no payment method), failed 503 at AcceptOrder,
/// and Activated on its second delivery after its first worker died mid-job.
pub(crate) struct FourOrders {
    pub ok: (String, String),
    pub no_card: (String, String),
    pub accept_503: (String, String),
    pub reclaimed: (String, String),
}

/// Runs the four kinds of job through in-process hosts on `rig` (capture on), then stops them.
pub(crate) async fn run_four_orders(rig: &Rig) -> FourOrders {
    let capture = [("FULFILLD_JOURNAL_CAPTURE", "true")];
    let reclaimed_order = rig.orders(30, 1).remove(0);
    // The reclaimed job: its first host is killed while the job's first call hangs.
    let reclaimed_uuid = rig
        .publish_and_kill_mid_job(&reclaimed_order, &capture)
        .await;
    let host = rig.host(&capture).await;
    rig.wait_activated(
        std::slice::from_ref(&reclaimed_order),
        Duration::from_secs(60),
    )
    .await;

    let ok_order = rig.orders(31, 1).remove(0);
    let accept_order = rig.orders(32, 1).remove(0);
    let no_card_order = {
        let org = rig.sandbox.salesforce().org();
        let mut org = org.lock().unwrap();
        add_orders(&mut org, NO_CARD_ACCOUNT, 33, 1)
            .unwrap()
            .remove(0)
    };
    let (ok_uuid, _) = rig.publish(&ok_order);
    rig.wait_activated(std::slice::from_ref(&ok_order), Duration::from_secs(60))
        .await;
    rig.sandbox
        .whmcs()
        .fail_action("AcceptOrder", 1, 503, "Service Unavailable".into());
    let (accept_uuid, _) = rig.publish(&accept_order);
    let (no_card_uuid, _) = rig.publish(&no_card_order);
    wait_for(
        "both failures written to Salesforce",
        Duration::from_secs(60),
        || {
            [&accept_order, &no_card_order]
                .iter()
                .all(|o| rig.status(o).0 == "Failed")
        },
    )
    .await;
    // Shutdown lets the jobs in flight write their records and journals.
    host.shutdown().await;
    FourOrders {
        ok: (ok_order, ok_uuid),
        no_card: (no_card_order, no_card_uuid),
        accept_503: (accept_order, accept_uuid),
        reclaimed: (reclaimed_order, reclaimed_uuid),
    }
}

/// The journal's `event` names of a job in `orders show --json`.
fn events(job: &Value) -> Vec<String> {
    job["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

/// The `billing` actions of a job's calls, in order, with their outcome and code.
fn billing_calls(job: &Value) -> Vec<String> {
    job["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "call" && e["interface"] == "billing")
        .map(|e| {
            format!(
                "{} {}{}",
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["code"]
                    .as_str()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn show_json(rig: &Rig, id: &str) -> Value {
    let output = fulfilld_with(rig, &[], &["orders", "show", id, "--json"]);
    assert!(output.status.success(), "{}", crate::common::text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn orders_show_tells_each_jobs_story(rig: Rig) {
    let four = run_four_orders(&rig).await;

    // A success: enqueued, claimed, its calls (Salesforce reads, WHMCS, the Salesforce write),
    // finished completed.
    let view = show_json(&rig, &four.ok.0);
    assert_eq!(view["order_id"], four.ok.0.as_str());
    let jobs = view["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{view:#}");
    let job = &jobs[0];
    assert_eq!(job["state"], "completed");
    assert_eq!(job["event_uuid"], four.ok.1.as_str());
    let names = events(job);
    assert_eq!(
        names.first().map(String::as_str),
        Some("enqueued"),
        "{names:?}"
    );
    assert_eq!(names[1], "claimed");
    assert_eq!(names.last().map(String::as_str), Some("finished"));
    assert!(
        names.iter().filter(|n| *n == "call").count() >= 4,
        "{names:?}"
    );
    let billing = billing_calls(job);
    assert!(billing.contains(&"AddOrder ok".to_owned()), "{billing:?}");
    assert!(
        billing.contains(&"AcceptOrder ok".to_owned()),
        "{billing:?}"
    );
    let journal = job["journal"].as_array().unwrap();
    assert!(
        journal.iter().any(|e| e["event"] == "call"
            && e["interface"] == "salesforce"
            && e["action"] == "update"
            && e["outcome"] == "ok"),
        "the Activated write is journaled"
    );
    // Capture was on: requests and answers are kept.
    assert!(
        journal
            .iter()
            .any(|e| e["event"] == "call" && e.get("answer").is_some())
    );
    assert_eq!(job["record"]["outcome"], "completed");

    // The 409: no payment method, failed with its code and the component's message.
    let view = show_json(&rig, &four.no_card.0);
    let job = &view["jobs"][0];
    assert_eq!(job["state"], "failed", "{view:#}");
    assert_eq!(job["record"]["code"], "409");
    let billing = billing_calls(job);
    assert_eq!(
        billing.first().map(String::as_str),
        Some("GetPayMethods ok")
    );
    assert!(
        !billing.iter().any(|c| c.starts_with("AddOrder")),
        "{billing:?}"
    );
    let finished = job["journal"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(finished["event"], "finished");
    assert_eq!(finished["outcome"], "failed");
    assert_eq!(finished["code"], "409");

    // The AcceptOrder 503: AddOrder went through, AcceptOrder failed with 503.
    let view = show_json(&rig, &four.accept_503.0);
    let job = &view["jobs"][0];
    assert_eq!(job["state"], "failed", "{view:#}");
    assert_eq!(job["record"]["code"], "503");
    let billing = billing_calls(job);
    assert!(billing.contains(&"AddOrder ok".to_owned()), "{billing:?}");
    let accept = billing
        .iter()
        .find(|c| c.starts_with("AcceptOrder"))
        .unwrap();
    assert!(
        accept.ends_with(" 503") && !accept.contains(" ok"),
        "{accept}"
    );

    // The reclaimed job: claimed twice (delivery 1 on the killed host, then 2), one end.
    let view = show_json(&rig, &four.reclaimed.0);
    let job = &view["jobs"][0];
    assert_eq!(job["state"], "completed", "{view:#}");
    let claims: Vec<u64> = job["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "claimed")
        .map(|e| e["delivery"].as_u64().unwrap())
        .collect();
    assert_eq!(claims, vec![1, 2], "{view:#}");
    assert_eq!(
        events(job).iter().filter(|n| *n == "finished").count(),
        1,
        "the killed run never finished"
    );
    assert_eq!(job["record"]["deliveries"], 2);

    // The same, by EventUuid, and as text.
    let by_uuid = show_json(&rig, &four.reclaimed.1);
    assert_eq!(by_uuid["jobs"][0]["event_uuid"], four.reclaimed.1.as_str());
    let output = fulfilld_with(&rig, &[], &["orders", "show", &four.accept_503.0]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("Order {}", four.accept_503.0)),
        "{text}"
    );
    assert!(text.contains("FAILED 503"), "{text}");
    assert!(text.contains("billing AcceptOrder"), "{text}");
    assert!(
        text.contains("enqueued") && text.contains("claimed"),
        "{text}"
    );

    // Unknown ids exit 1 saying so.
    let output = fulfilld_with(&rig, &[], &["orders", "show", "801000000000999AAA"]);
    assert_refused(&output, "no job is known");

    // jobs list --state failed: the two failed ones, newest first.
    let output = fulfilld_with(&rig, &[], &["jobs", "list", "--state", "failed", "--json"]);
    assert!(output.status.success(), "{}", crate::common::text(&output));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let uuids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["event_uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids.len(), 2, "{listed:#}");
    assert!(
        uuids.contains(&four.no_card.1.as_str()) && uuids.contains(&four.accept_503.1.as_str())
    );
    for state in ["queued", "running", "dead"] {
        let output = fulfilld_with(&rig, &[], &["jobs", "list", "--state", state]);
        assert!(output.status.success(), "{}", crate::common::text(&output));
        assert!(
            stdout(&output).starts_with(&format!("0 {state} job(s)")),
            "{}",
            stdout(&output)
        );
    }
    let output = fulfilld_with(&rig, &[], &["jobs", "list", "--state", "stuck"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        crate::common::text(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_show_tells_each_jobs_story_from_redis() {
    orders_show_tells_each_jobs_story(Rig::new().await.with_redis(&redis_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_show_tells_each_jobs_story_from_the_embedded_store() {
    orders_show_tells_each_jobs_story(Rig::new().await).await;
}

/// `fulfilld serve --help`, as the binary prints it, names every setting with its default.
#[test]
fn serve_help_lists_every_setting_with_its_default_and_meaning() {
    let output = crate::common::fulfilld(&["serve".as_ref(), "--help".as_ref()]);
    let text = stdout(&output);
    assert!(output.status.success(), "{}", crate::common::text(&output));
    for (_, settings) in fulfilld::settings::SETTINGS {
        for setting in *settings {
            assert!(
                text.contains(setting.name),
                "{} missing:\n{text}",
                setting.name
            );
            assert!(
                text.contains(&format!("[default: {}]", setting.default)),
                "{}'s default missing",
                setting.name
            );
        }
    }
    assert!(text.contains("FULFILLD_LEASE_TTL_MS\n      how long the subscriber lease lasts unless renewed [default: 15000]"), "{text}");
}

/// `fulfilld completions <shell>` prints a script naming the subcommands; an unknown shell is
/// refused with the choices.
#[test]
fn completions_name_the_subcommands_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = crate::common::fulfilld(&["completions".as_ref(), shell.as_ref()]);
        let text = stdout(&output);
        assert!(
            output.status.success(),
            "{shell}: {}",
            crate::common::text(&output)
        );
        for word in ["orders", "dead-letters", "serve", "jobs"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let output = crate::common::fulfilld(&["completions".as_ref(), "tcsh".as_ref()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        crate::common::text(&output).contains("possible values"),
        "{}",
        crate::common::text(&output)
    );
}

/// A failed production job, exported with `fulfilld orders export` (capture on), replays under
/// `fulfilld test`: it fails the same way on the version that failed in production and passes on
/// the fixed one; `--expect recorded` pins what the run did instead. Without capture the command
/// says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exported_failed_job_fails_the_same_way_and_passes_once_fixed() {
    let rig = Rig::new().await;
    let buggy = crate::common::component("fixture_rules_buggy");
    let fixed = crate::common::component("fulfillment");
    let order = rig.orders(70, 1).remove(0);
    let uncaptured = rig.orders(71, 1).remove(0);
    // Production: version 1.0.1 (a billing-cycle bug) with capture on.
    let host = rig
        .host(&[
            ("FULFILLD_COMPONENT", buggy.to_str().unwrap()),
            ("FULFILLD_JOURNAL_CAPTURE", "true"),
        ])
        .await;
    rig.publish(&order);
    wait_for("the Order to fail", Duration::from_secs(60), || {
        rig.status(&order).0 == "Failed"
    })
    .await;
    host.shutdown().await;
    let view = show_json(&rig, &order);
    let record = &view["jobs"][0]["record"];
    assert_eq!(record["outcome"], "failed", "{view:#}");
    assert_eq!(record["component"], "fulfillment@1.0.1");
    let code = record["code"].as_str().unwrap().to_owned();
    let message = record["message"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("production-failure.toml");
    let scenario_arg = scenario.to_str().unwrap();
    let output = fulfilld_with(
        &rig,
        &[],
        &["orders", "export", &order, "--scenario", scenario_arg],
    );
    assert!(output.status.success(), "{}", crate::common::text(&output));
    assert!(stdout(&output).contains("wrote"), "{}", stdout(&output));
    let text = std::fs::read_to_string(&scenario).unwrap();
    assert!(text.contains(&order), "{text}");

    // The version that failed in production fails the scenario, the same way.
    let output = crate::common::fulfilld(&[
        "test".as_ref(),
        buggy.as_os_str(),
        scenario.as_os_str(),
        "--verbose".as_ref(),
    ]);
    let report = crate::common::text(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&code),
        "the replay fails with {code}:\n{report}"
    );
    assert!(
        report.contains(&crate::common::first_words(&message, 6)),
        "the replay fails with the production message ({message}):\n{report}"
    );
    // The fixed version provisions the Order.
    let output =
        crate::common::fulfilld(&["test".as_ref(), fixed.as_os_str(), scenario.as_os_str()]);
    assert!(output.status.success(), "{}", crate::common::text(&output));

    // --expect recorded pins the run: the failing version passes it, the fixed one does not.
    let pinned = dir.path().join("pinned.toml");
    let output = fulfilld_with(
        &rig,
        &[],
        &[
            "orders",
            "export",
            &order,
            "--scenario",
            pinned.to_str().unwrap(),
            "--expect",
            "recorded",
        ],
    );
    assert!(output.status.success(), "{}", crate::common::text(&output));
    let output = crate::common::fulfilld(&["test".as_ref(), buggy.as_os_str(), pinned.as_os_str()]);
    assert!(output.status.success(), "{}", crate::common::text(&output));
    let output = crate::common::fulfilld(&["test".as_ref(), fixed.as_os_str(), pinned.as_os_str()]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        crate::common::text(&output)
    );

    // An existing file is not replaced without --force.
    let output = fulfilld_with(
        &rig,
        &[],
        &["orders", "export", &order, "--scenario", scenario_arg],
    );
    assert_refused(&output, "--force");

    // Without capture there is nothing to seed a scenario from, and the command says so.
    let host = rig
        .host(&[("FULFILLD_COMPONENT", buggy.to_str().unwrap())])
        .await;
    rig.publish(&uncaptured);
    wait_for("the second Order to fail", Duration::from_secs(60), || {
        rig.status(&uncaptured).0 == "Failed"
    })
    .await;
    host.shutdown().await;
    let other = dir.path().join("uncaptured.toml");
    let output = fulfilld_with(
        &rig,
        &[],
        &[
            "orders",
            "export",
            &uncaptured,
            "--scenario",
            other.to_str().unwrap(),
        ],
    );
    assert_refused(&output, "FULFILLD_JOURNAL_CAPTURE");
    assert!(!other.exists());
}

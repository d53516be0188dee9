//! The default component's acceptance scenarios through the test kit, and the test kit's own
//! behaviour (call recording, failure reports, the CLI's exit status).

use crate::common;

use std::path::PathBuf;

use fulfilld::testkit::scenario::{Scenario, run_scenario};
use fulfilld::testkit::{Injection, TestKit, order_event};

async fn kit() -> TestKit {
    TestKit::load_file(&common::component("fulfillment"))
        .await
        .unwrap()
}

fn scenario_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && !p.file_name().unwrap().to_string_lossy().starts_with('_')
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_shipped_scenario_passes_against_the_default_component() {
    let kit = kit().await;
    let files = scenario_files();
    assert!(files.len() >= 11, "scenarios missing: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let scenario = Scenario::load(file).unwrap();
        let result = run_scenario(&kit, &scenario).await;
        if !result.passed() {
            failures.push(format!(
                "{}: {}\n  runs: {:#?}",
                file.display(),
                result.first_difference().unwrap_or_default(),
                result
                    .runs
                    .iter()
                    .map(|r| (&r.name, &r.report.result, &r.differences))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_wrong_expectation_reports_the_first_difference() {
    let kit = kit().await;
    let mut scenario = Scenario::load(&common::scenarios_dir().join("happy-path.toml")).unwrap();
    scenario.runs[0].expect.whmcs_orders = Some(2);
    let result = run_scenario(&kit, &scenario).await;
    assert!(!result.passed());
    assert_eq!(
        result.first_difference().unwrap(),
        "run 1: whmcs_orders: expected 2, got 1"
    );
}

#[tokio::test]
async fn the_kit_records_calls_and_final_records_for_rust_tests() {
    let kit = kit().await;
    let scenario = Scenario::load(&common::scenarios_dir().join("happy-path.toml")).unwrap();
    let host = scenario.seed().unwrap();
    let mut injection = Injection::new("billing.call", Some("AcceptOrder"));
    injection.timeout = true;
    host.inject(injection);
    let report = kit.fulfill(&host, &order_event("801000000000001AAA")).await;
    let failure = report.result.unwrap_err();
    assert_eq!(failure.code, "ETIMEOUT");
    let journal = report.journal.unwrap();
    let accept = journal
        .calls
        .iter()
        .find(|c| c.target == "AcceptOrder")
        .unwrap();
    assert_eq!(accept.result.as_ref().unwrap_err().code, "ETIMEOUT");
    let add = journal
        .calls
        .iter()
        .find(|c| c.target == "AddOrder")
        .unwrap();
    let params = add.request.as_ref().unwrap();
    assert_eq!(params["clientid"].to_string().trim_matches('"'), "42");
    assert_eq!(params["pid"].as_array().map(Vec::len), Some(3));
    host.with_org(|org| {
        let order = org.get("Order", "801000000000001AAA").unwrap();
        assert_eq!(order["Activation_Status__c"], "Failed");
        assert_eq!(order["WHMCS_Order_ID__c"], "1000");
    });
}

#[test]
fn the_cli_prints_a_line_per_scenario_and_fails_on_any_failure() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "name = \"deliberately wrong\"\nseed = \"{}\"\n[[run]]\nevent = {{ OrderId__c = \"801000000000001AAA\" }}\n[run.expect]\nresult = \"skipped\"\n",
            common::scenarios_dir().join("_seed.toml").display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("test")
        .arg(common::component("fulfillment"))
        .arg(common::scenarios_dir().join("happy-path.toml"))
        .arg(&broken)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("PASS happy path"), "{stdout}");
    assert!(
        stdout.contains("FAIL deliberately wrong: run 1: result: expected Skipped, got Completed"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("test")
        .arg(common::component("fulfillment"))
        .arg(common::scenarios_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A component without a manifest runs under the host's policy (a packed one is held to it as a
/// ceiling instead: see `manifest::a_manifest_beyond_the_ceiling_is_refused_naming_each_excess`).
#[test]
fn scenarios_can_run_under_a_stricter_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    // No AcceptOrder: the happy path must now fail with a forbidden call recorded on the Order.
    std::fs::write(
        &policy,
        "billing_actions = [\"GetPayMethods\", \"AddOrder\", \"GetOrders\"]\n[update]\nOrder = [\"Activation_Status__c\", \"WHMCS_Order_ID__c\", \"Activation_Error_Code__c\", \"Activation_Error_Message__c\"]\n",
    )
    .unwrap();
    // `fulfilld test --policy` on the happy path, with `env` set.
    let run = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
            .arg("test")
            .arg("--policy")
            .arg(&policy)
            .arg(common::component("fixture_rules_v2"))
            .arg(common::scenarios_dir().join("happy-path.toml"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let output = run(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FORBIDDEN"), "{stdout}");

    // A scenario run is a rehearsal: the refusal is no WARN line, only DEBUG under the gate.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("host call refused"), "{stderr}");
    let output = run(&[
        ("FULFILLD_LOG", "warn,fulfilld::gate=debug"),
        ("NO_COLOR", "1"),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("host call refused"))
        .collect();
    assert!(!refused.is_empty(), "{stderr}");
    for line in refused {
        assert!(
            line.contains(" DEBUG rehearsal{") && line.contains(" fulfilld::gate: "),
            "{line}"
        );
    }
}

/// A wrong parameter or written value is shown precisely by the binary: which expectation, which
/// key, the expected and the sent value, and what the call sent.
#[test]
fn the_cli_shows_the_difference_of_a_call_or_write_expectation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::scenarios_dir().join("_seed.toml"),
        dir.path().join("_seed.toml"),
    )
    .unwrap();
    let happy = std::fs::read_to_string(common::scenarios_dir().join("happy-path.toml")).unwrap();
    let cycles = "billingcycle = [\"monthly\", \"monthly\", \"annually\"]";
    assert!(happy.contains(cycles));
    std::fs::write(
        dir.path().join("wrong-cycle.toml"),
        happy
            .replace(
                cycles,
                "billingcycle = [\"monthly\", \"annually\", \"annually\"]",
            )
            .replace(happy.lines().next().unwrap(), "name = \"wrong cycle\""),
    )
    .unwrap();
    let status = "fields = { Activation_Status__c = \"Activated\"";
    assert!(happy.contains(status));
    std::fs::write(
        dir.path().join("wrong-write.toml"),
        happy
            .replace(status, "fields = { Activation_Status__c = \"Done\"")
            .replace("name = \"happy path", "name = \"wrong write"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("test")
        .arg(common::component("fulfillment"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL wrong cycle: run 1: whmcs_calls[0] (1st AddOrder): billingcycle[1]: expected \"annually\", sent \
             \"monthly\" (sent: billingcycle[0]=monthly billingcycle[1]=monthly \
             billingcycle[2]=annually clientid=42 noemail=0 noinvoice=0 noinvoiceemail=0 \
             paymentmethod=stripe pid[0]=11 pid[1]=12 \
             pid[2]=13 qty[0]=1 qty[1]=2 qty[2]=1)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            ": run 1: sf_updates[2] (3rd Order update): Activation_Status__c: expected \"Done\", \
             sent \"Activated\" (sent: Order/801000000000001AAA {"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("0 passed, 2 failed"), "{stdout}");
}

/// `fulfilld test` rehearses: the shipped scenarios fail orders on purpose, and their ERROR
/// entries come out only at DEBUG under `fulfilld::gate`, when asked for.
#[test]
fn the_cli_logs_a_scenario_failure_only_at_debug_under_the_gate_target() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("test")
        .arg(common::component("fulfillment"))
        .arg(common::scenarios_dir())
        .env("FULFILLD_LOG", "warn,fulfilld::gate=debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Fulfillment failed"))
        .collect();
    assert!(!failed.is_empty(), "{stderr}");
    for line in &failed {
        assert!(
            line.contains(" DEBUG rehearsal{") && line.contains("fulfilld::gate: "),
            "{line}"
        );
        assert!(line.contains("level=\"error\""), "{line}");
    }
    for line in stderr.lines() {
        assert!(
            !line.contains(" ERROR ") && !line.contains(" WARN "),
            "{line}"
        );
        assert!(!line.contains("job{"), "{line}");
    }
}

/// Shipped scenarios that a component doing nothing may pass: each expects no work at all, with
/// the reason. Empty: every shipped scenario pins the calls and messages of the work it expects.
const EXPECT_NOTHING: &[&str] = &[];

#[test]
fn a_component_that_does_nothing_fails_every_shipped_scenario() {
    // `fixture-noop` makes no call and answers `skipped`: a scenario it passes would pass for
    // rules that provision nothing, so it proves nothing about the rules.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("test")
        .arg(common::component("fixture_noop"))
        .arg(common::scenarios_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");

    let names: Vec<String> = scenario_files()
        .iter()
        .map(|file| Scenario::load(file).unwrap().name)
        .collect();
    assert_eq!(names.len(), scenario_files().len());
    for name in &names {
        let passed = stdout.lines().any(|l| l == format!("PASS {name}"));
        let failed = stdout
            .lines()
            .any(|l| l.starts_with(&format!("FAIL {name}: ")));
        if EXPECT_NOTHING.contains(&name.as_str()) {
            assert!(passed, "{name} expects nothing and should pass: {stdout}");
        } else {
            assert!(
                failed && !passed,
                "a component that does nothing must fail \"{name}\": {stdout}"
            );
        }
    }
    let expected = format!(
        "{} passed, {} failed",
        EXPECT_NOTHING.len(),
        names.len() - EXPECT_NOTHING.len()
    );
    assert!(stdout.contains(&expected), "{expected}: {stdout}");
}

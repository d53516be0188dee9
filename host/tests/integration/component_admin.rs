//! `fulfilld component sign | deploy | list | show | activate | rollback`, run as the built
//! binary against `fulfilld serve` run as a process, as an operator does: each verb's exit status
//! and output, what `/health` and `component list`/`show` report afterwards, the version new
//! jobs run on, and that no output carries the admin token. The admin commands build their HTTP
//! client like every other subcommand (the rustls provider is installed at start), and a host
//! they cannot reach is reported, not a panic. (`component check` and `test` have theirs in
//! `component_check` and `scenarios`.)

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common;
use crate::pipeline::{
    Rig, ServeProcess, free_port, redis_url, wait_record, with_custom_section, write_key_pair,
};

fn component(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fulfilld"));
    command
        .arg("component")
        .args(args)
        .env_remove("FULFILLD_ADMIN_URL")
        .env_remove("FULFILLD_ADMIN_TOKEN");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn list_against_an_unreachable_host_says_so_without_panicking() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let output = component(
        &["list"],
        &[
            ("FULFILLD_ADMIN_URL", &url),
            ("FULFILLD_ADMIN_TOKEN", "admin-token-0123456789"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the admin API at {url}/admin")),
        "{stderr}"
    );
}

#[test]
fn a_missing_admin_setting_is_named() {
    let output = component(
        &["list"],
        &[("FULFILLD_ADMIN_TOKEN", "admin-token-0123456789")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "fulfilld: FULFILLD_ADMIN_URL: is required (the host's admin API address, FULFILLD_ADMIN_ADDR, e.g. http://127.0.0.1:8081)"
        ),
        "{stderr}"
    );
    let output = component(
        &["rollback"],
        &[("FULFILLD_ADMIN_URL", "http://127.0.0.1:1")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("fulfilld: FULFILLD_ADMIN_TOKEN: is required"),
        "{stderr}"
    );
}

const TOKEN: &str = "admin-token-for-the-cli-verbs";
const WRONG_TOKEN: &str = "not-the-admin-token-0123";

/// A verb's exit code and its stdout and stderr together; never the admin token, right or wrong.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = component(args, env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !text.contains(TOKEN) && !text.contains(WRONG_TOKEN),
        "{args:?} printed the token: {text}"
    );
    assert!(!text.contains("panicked"), "{args:?}: {text}");
    (output.status.code().unwrap_or(-1), text)
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The JSON a successful admin verb prints.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// Publishes an order and returns the sha256 of the component version its job ran on.
async fn job_version(rig: &Rig, store: &fulfilld::store::SharedStore, order: &str) -> String {
    let (uuid, _) = rig.publish(order);
    rig.wait_activated(&[order.to_owned()], Duration::from_secs(60))
        .await;
    wait_record(store, &uuid).await.component_sha256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_admin_verb_works_from_the_binary_against_a_serve_process() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let dir = rig._dir.path();
    let (private_pem, public_pem) = write_key_pair(dir, 21);
    let v1_path = dir.join("fulfillment.wasm");
    std::fs::copy(common::component("fulfillment"), &v1_path).unwrap();
    let v1 = fulfilld::registry::sha256_hex(&std::fs::read(&v1_path).unwrap());
    // v2: the real second version of the rules (tests/fixtures/rules-v2).
    let v2_path = dir.join("rules-v2.wasm");
    std::fs::copy(common::component("fixture-rules-v2"), &v2_path).unwrap();
    let v2 = fulfilld::registry::sha256_hex(&std::fs::read(&v2_path).unwrap());

    // sign: a public key is not a signing key (named, its content not echoed, nothing written);
    // the private key writes `<file>.sig`.
    let (code, text) = run(
        &["sign", path_arg(&v1_path), "--key", path_arg(&public_pem)],
        &[],
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("is not an ed25519 private key in PEM") && !text.contains("BEGIN"),
        "{text}"
    );
    assert!(!dir.join("fulfillment.wasm.sig").exists());
    for (path, sha) in [(&v1_path, &v1), (&v2_path, &v2)] {
        let (code, text) = run(
            &["sign", path_arg(path), "--key", path_arg(&private_pem)],
            &[],
        );
        let sig = format!("{}.sig", path.display());
        assert_eq!(code, 0, "{text}");
        assert_eq!(
            text.trim(),
            format!("signed {} (sha256 {sha}): {sig}", path.display())
        );
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(Path::new(&sig).is_file());
    }

    let registry_dir = dir.join("registry");
    let admin = format!("127.0.0.1:{}", free_port());
    let serve = ServeProcess::start(
        &rig,
        "cli-verbs",
        &[
            ("FULFILLD_COMPONENT", path_arg(&v1_path)),
            ("FULFILLD_REGISTRY_DIR", path_arg(&registry_dir)),
            ("FULFILLD_ADMIN_TOKEN", TOKEN),
            ("FULFILLD_ADMIN_ADDR", admin.as_str()),
            ("FULFILLD_COMPONENT_PUBLIC_KEY", path_arg(&public_pem)),
            ("FULFILLD_REQUIRE_SIGNED", "true"),
        ],
    );
    serve.wait_role("leader", Duration::from_secs(30)).await;
    let url = format!("http://{admin}");
    let env = [
        ("FULFILLD_ADMIN_URL", url.as_str()),
        ("FULFILLD_ADMIN_TOKEN", TOKEN),
    ];
    let wrong = [
        ("FULFILLD_ADMIN_URL", url.as_str()),
        ("FULFILLD_ADMIN_TOKEN", WRONG_TOKEN),
    ];
    let running = || async { serve.health().await.unwrap()["component"]["sha256"].clone() };
    let store = rig.store().await;
    let orders = rig.orders(1, 3);

    // deploy: refused with a wrong token, unsigned under require-signed, or a file that is not
    // there; then accepted (its `<file>.sig` picked up), not yet live.
    let unsigned = dir.join("unsigned.wasm");
    std::fs::write(
        &unsigned,
        with_custom_section(&std::fs::read(&v2_path).unwrap(), "unsigned"),
    )
    .unwrap();
    let (code, text) = run(&["deploy", path_arg(&v2_path)], &wrong);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("refused (401 Unauthorized): missing or wrong bearer token"),
        "{text}"
    );
    let (code, text) = run(&["deploy", path_arg(&unsigned)], &env);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("refused (422") && text.contains("unsigned"),
        "{text}"
    );
    let missing = dir.join("missing.wasm");
    let (code, text) = run(&["deploy", path_arg(&missing)], &env);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(&format!("cannot read {}", missing.display())),
        "{text}"
    );
    let (code, text) = run(
        &["deploy", path_arg(&v2_path), "--deployed-by", "cli-test"],
        &env,
    );
    assert_eq!(code, 0, "{text}");
    let deployed = json(&text);
    assert_eq!(deployed["deployed"]["sha256"], v2.as_str(), "{text}");
    assert_eq!(deployed["deployed"]["signed"], true, "{text}");
    assert_eq!(running().await, v1.as_str());

    // list and show: both versions, v1 active and running; an unknown sha256 is a 404.
    let (code, text) = run(&["list"], &env);
    assert_eq!(code, 0, "{text}");
    let listed = json(&text);
    assert_eq!(listed["active"], v1.as_str(), "{text}");
    assert_eq!(listed["running"], v1.as_str(), "{text}");
    let shas: Vec<&str> = listed["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["sha256"].as_str())
        .collect();
    assert!(
        shas.contains(&v1.as_str()) && shas.contains(&v2.as_str()),
        "{text}"
    );
    let (code, text) = run(&["show", &v2], &env);
    assert_eq!(code, 0, "{text}");
    let shown = json(&text);
    assert_eq!(shown["sha256"], v2.as_str(), "{text}");
    assert_eq!(shown["version"], "2.0.0", "{text}");
    assert_eq!(shown["deployed_by"], "cli-test", "{text}");
    let unknown = "0".repeat(64);
    let (code, text) = run(&["show", &unknown], &env);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("refused (404 Not Found)"), "{text}");
    let (code, text) = run(&["list"], &wrong);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("refused (401 Unauthorized)"), "{text}");
    assert_eq!(job_version(&rig, &store, &orders[0]).await, v1);

    // activate: an unknown sha256 changes nothing; v2 goes live and takes the next job.
    let (code, text) = run(&["activate", &unknown], &env);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("refused (404 Not Found)"), "{text}");
    assert_eq!(running().await, v1.as_str());
    let (code, text) = run(&["activate", &v2], &env);
    assert_eq!(code, 0, "{text}");
    assert_eq!(json(&text)["active"]["sha256"], v2.as_str(), "{text}");
    assert_eq!(running().await, v2.as_str());
    let (_, text) = run(&["list"], &env);
    assert_eq!(json(&text)["running"], v2.as_str(), "{text}");
    assert_eq!(job_version(&rig, &store, &orders[1]).await, v2);

    // rollback: refused with a wrong token; then back to v1, for jobs too.
    let (code, text) = run(&["rollback"], &wrong);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("refused (401 Unauthorized)"), "{text}");
    assert_eq!(running().await, v2.as_str());
    let (code, text) = run(&["rollback"], &env);
    assert_eq!(code, 0, "{text}");
    assert_eq!(json(&text)["active"]["sha256"], v1.as_str(), "{text}");
    assert_eq!(running().await, v1.as_str());
    let (_, text) = run(&["list"], &env);
    assert_eq!(json(&text)["active"], v1.as_str(), "{text}");
    assert_eq!(job_version(&rig, &store, &orders[2]).await, v1);

    let log = serve.log_text();
    assert!(!log.contains(TOKEN) && !log.contains(WRONG_TOKEN), "{log}");
}

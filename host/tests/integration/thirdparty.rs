//! `fulfilld sandbox --tls` against a Pub/Sub client written for Salesforce, not for this
//! project: pozil's `salesforce-pubsub-api-client` (npm, pinned in tests/thirdparty/), with its
//! own JWT bearer flow (audience = its login URL), userinfo call and gRPC channel. It needs only
//! configuration: Node's `NODE_EXTRA_CA_CERTS` for the sandbox's test CA (HTTPS) and its
//! `rejectUnauthorizedSsl: false` (gRPC). Then the host itself against the same sandbox, from
//! the settings the sandbox wrote (`SF_CA_FILE` makes it trust the org's certificate).
//!
//! Needs Node and `make thirdparty-client` (npm ci in tests/thirdparty); fails, never skips,
//! without them.

use crate::common;
use crate::pipeline::free_port;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// An Order id only this test publishes for.
const THIRDPARTY_ORDER: &str = "801000000000777AAA";
/// The seeded Order of the shipped demo seed, waiting in `Activating`.
const SEEDED_ORDER: &str = "801000000000001AAA";

fn thirdparty_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/thirdparty")
}

/// Kills the sandbox when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `command` with stdout and stderr in files under `dir`, for at most `limit`.
pub(crate) fn run_bounded(
    mut command: Command,
    dir: &Path,
    name: &str,
    limit: Duration,
) -> (i32, String, String) {
    let out = dir.join(format!("{name}.stdout"));
    let err = dir.join(format!("{name}.stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not finish in {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_pubsub_client_works_against_the_tls_sandbox_unchanged() {
    let project = thirdparty_dir();
    assert!(
        project
            .join("node_modules/salesforce-pubsub-api-client")
            .is_dir(),
        "tests/thirdparty/node_modules is missing: run make thirdparty-client (npm ci in tests/thirdparty)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is not runnable ({node:?}): install Node.js 20.18.1 or newer, then run make thirdparty-client"
    );

    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let log = dir.path().join("sandbox.log");
    let sandbox = Running(
        Command::new(env!("CARGO_BIN_EXE_fulfilld"))
            .args(["sandbox", "--tls", "--admin-port"])
            .arg(admin_port.to_string())
            .args([
                "--salesforce-port",
                "0",
                "--whmcs-port",
                "0",
                "--pubsub-port",
                "0",
                "--keepalive-secs",
                "5",
                "--state-dir",
            ])
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let sandbox_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Ready when the admin API answers; it reports the settings it wrote to sandbox.env.
    // The project's rustls provider, as every fulfilld client installs it before building one.
    fulfilld::http::install_crypto_provider();
    let http = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let start = Instant::now();
    let overview = loop {
        if let Ok(response) = http.get(format!("{admin}/sandbox")).send().await
            && let Ok(body) = response.json::<Value>().await
        {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the sandbox did not start; log:\n{}",
            sandbox_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let env: BTreeMap<String, String> = overview["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert!(env["SF_LOGIN_URL"].starts_with("https://"), "{env:?}");
    assert!(env["SF_PUBSUB_ENDPOINT"].starts_with("https://"), "{env:?}");

    // The independent client, configured from sandbox.env and Node's own CA setting.
    let mut client = Command::new("node");
    client
        .current_dir(&project)
        .arg("client.mjs")
        .args(["--order-id", THIRDPARTY_ORDER, "--admin-url", &admin])
        .args(["--admin-order-id", SEEDED_ORDER])
        .envs(&env)
        .env("NODE_EXTRA_CA_CERTS", &env["SF_CA_FILE"]);
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || run_bounded(client, &dir, "client", Duration::from_secs(90))
    })
    .await
    .unwrap();
    assert_eq!(
        code,
        0,
        "the client failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nsandbox log:\n{}",
        sandbox_log()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON result line ({e}):\n{stdout}\n{stderr}"));

    // What it published came back to it, with the same Order id; so did the admin API's event.
    let received = result["received"].as_array().unwrap();
    for (published, order) in [
        (&result["published"], THIRDPARTY_ORDER),
        (&result["admin_published"], SEEDED_ORDER),
    ] {
        let key = published["correlation_key"].as_str().unwrap();
        let event = received
            .iter()
            .find(|e| e["id"] == key)
            .unwrap_or_else(|| panic!("{key} did not come back: {result}"));
        assert_eq!(event["order_id"], order, "{result}");
        assert_eq!(event["replay_id"], published["replay_id"], "{result}");
    }

    // The sandbox saw the publish and the subscription.
    let overview = get_json(&http, format!("{admin}/sandbox")).await;
    assert_eq!(
        overview["latest_replay_id"], result["admin_published"]["replay_id"],
        "{overview}"
    );
    assert!(overview["pubsub"]["subscribe_calls"].as_u64().unwrap() >= 1);
    assert!(overview["pubsub"]["events_delivered"].as_u64().unwrap() >= 2);

    // The host against the same sandbox, from the settings alone: token and REST over TLS.
    let mut fulfill = Command::new(env!("CARGO_BIN_EXE_fulfilld"));
    fulfill
        .args(["fulfill", "--order-id", SEEDED_ORDER, "--component"])
        .arg(common::component("fulfillment"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&env);
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || run_bounded(fulfill, &dir, "fulfill", Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_eq!(
        code, 0,
        "fulfill failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let order = get_json(&http, format!("{admin}/sandbox/orders/{SEEDED_ORDER}")).await;
    assert_eq!(order["Activation_Status__c"], "Activated", "{order}");
    drop(sandbox);
}

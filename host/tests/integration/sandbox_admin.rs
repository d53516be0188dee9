//! The whole sandbox as `fulfilld sandbox` runs it: the env file it writes is enough for the
//! host's real clients to authenticate and subscribe, and the admin API seeds, publishes and
//! injects faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fulfilld::http::{http_client, http_client_trusting};
use fulfilld::pubsub::{Delivery, ReplayFrom, SubscriberOptions, subscribe};
use fulfilld::salesforce::{SalesforceClient, SalesforceConfig};
use fulfilld::sandbox::{PubSubOptions, Sandbox, SandboxConfig};
use fulfilld::secret::Secret;
use serde_json::{Value, json};

/// The seeded Order of the shipped demo seed, waiting in `Activating`.
const SEEDED_ORDER: &str = "801000000000001AAA";

fn read_env_file(path: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_env_file_and_admin_api_give_a_complete_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        state_dir: Some(dir.path().to_owned()),
        pubsub: PubSubOptions {
            keepalive_interval: Duration::from_millis(200),
            tls: true,
            ..PubSubOptions::default()
        },
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let env = read_env_file(&dir.path().join("sandbox.env"));
    for key in [
        "SF_LOGIN_URL",
        "SF_CLIENT_ID",
        "SF_USERNAME",
        "SF_PRIVATE_KEY_PATH",
        "SF_PUBSUB_ENDPOINT",
        "SF_PUBSUB_CA_FILE",
        "SF_CA_FILE",
        "SF_PROVISION_EVENT_CHANNEL",
        "WHMCS_URL",
        "WHMCS_IDENTIFIER",
        "WHMCS_SECRET",
        "PORTAL_PRICEBOOK_ID",
    ] {
        assert!(env.contains_key(key), "{key} missing from sandbox.env");
    }
    assert_eq!(&env, sandbox.env());
    // With TLS the org is served over TLS too, with the same CA as the Pub/Sub API.
    assert!(env["SF_LOGIN_URL"].starts_with("https://"), "{env:?}");
    assert_eq!(env["SF_CA_FILE"], env["SF_PUBSUB_CA_FILE"]);
    let ca = std::fs::read_to_string(&env["SF_CA_FILE"]).unwrap();

    // The host's own clients, configured only from the env file (the Salesforce client trusts
    // the CA as `SF_CA_FILE` makes `serve` do).
    let sf = SalesforceClient::new(
        SalesforceConfig {
            login_url: env["SF_LOGIN_URL"].parse().unwrap(),
            client_id: env["SF_CLIENT_ID"].clone(),
            username: env["SF_USERNAME"].clone(),
            private_key_pem: Secret::new(
                std::fs::read_to_string(&env["SF_PRIVATE_KEY_PATH"]).unwrap(),
            ),
            audience: env["SF_AUDIENCE"].clone(),
            api_version: "v66.0".into(),
            timeout: Duration::from_secs(5),
        },
        http_client_trusting(Duration::from_secs(5), Some(&ca)).unwrap(),
    )
    .unwrap();
    let mut opts = SubscriberOptions::new(
        env["SF_PUBSUB_ENDPOINT"].parse().unwrap(),
        env["SF_PROVISION_EVENT_CHANNEL"].clone(),
    );
    opts.start = ReplayFrom::Earliest;
    opts.ca_pem = Some(std::fs::read_to_string(&env["SF_PUBSUB_CA_FILE"]).unwrap());
    let mut sub = subscribe(opts, Arc::new(sf.clone())).unwrap();

    let http = http_client(Duration::from_secs(5)).unwrap();
    let admin = sandbox.admin_url();
    let post = |path: &str, body: Value| {
        let request = http.post(admin.join(path).unwrap()).json(&body);
        async move { request.send().await.unwrap() }
    };

    // Publish for the seeded Order, then a duplicate of the same EventUuid.
    let first: Value = post("sandbox/events", json!({ "order_id": SEEDED_ORDER }))
        .await
        .json()
        .await
        .unwrap();
    let uuid = first["event_uuid"].as_str().unwrap().to_owned();
    let dup: Value = post(
        "sandbox/events",
        json!({ "order_id": SEEDED_ORDER, "event_uuid": uuid }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_ne!(first["replay_id"], dup["replay_id"]);
    for expected_replay in [&first["replay_id"], &dup["replay_id"]] {
        let delivery = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match sub.next().await.unwrap() {
                    Delivery::Cursor(_) => continue,
                    other => return other,
                }
            }
        })
        .await
        .unwrap();
        let Delivery::Event(event) = delivery else {
            panic!("expected an event, got {delivery:?}");
        };
        assert_eq!(event.event.order_id(), Some(SEEDED_ORDER));
        assert_eq!(event.event.event_uuid, uuid);
        assert_eq!(
            expected_replay.as_str().unwrap(),
            event.replay_id.to_string()
        );
    }

    // OpenID Connect userinfo with the session the subscriber got, as clients written for
    // Salesforce call it after the token exchange; a token the org did not issue is refused.
    let sf_http = http_client_trusting(Duration::from_secs(5), Some(&ca)).unwrap();
    let token = sandbox
        .salesforce()
        .issued_tokens()
        .last()
        .cloned()
        .unwrap();
    let userinfo = format!("{}/services/oauth2/userinfo", env["SF_LOGIN_URL"]);
    let answer = sf_http
        .get(&userinfo)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let info: Value = answer.json().await.unwrap();
    let org_id = sandbox.salesforce().org_id().to_owned();
    assert_eq!(info["organization_id"], org_id.as_str());
    assert_eq!(info["preferred_username"], env["SF_USERNAME"].as_str());
    let user_id = info["user_id"].as_str().unwrap();
    assert_eq!(
        info["sub"].as_str().unwrap(),
        format!("{}/id/{org_id}/{user_id}", env["SF_LOGIN_URL"])
    );
    for key in ["name", "email", "zoneinfo", "locale", "urls"] {
        assert!(!info[key].is_null(), "userinfo lacks {key}: {info}");
    }
    for bad in [Some("not-a-token"), None] {
        let mut request = sf_http.get(&userinfo);
        if let Some(bad) = bad {
            request = request.bearer_auth(bad);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 403);
        assert_eq!(refused.text().await.unwrap(), "Bad_OAuth_Token");
    }

    // The seeded Order is visible through the admin API and the org's REST API alike.
    let order: Value = http
        .get(
            admin
                .join(&format!("sandbox/orders/{SEEDED_ORDER}"))
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["Activation_Status__c"], "Activating");
    let missing = http
        .get(admin.join("sandbox/orders/801NOPE").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Malformed payloads and faults.
    let raw = post(
        "sandbox/events/raw",
        json!({ "payload_base64": "3q2+7w==", "event_uuid": "bad-1" }),
    )
    .await;
    assert!(raw.status().is_success());
    let bad_fault = post("sandbox/faults", json!({ "fault": "meteor" })).await;
    assert_eq!(bad_fault.status(), 400);
    assert!(bad_fault.text().await.unwrap().contains("meteor"));
    let ok = post("sandbox/faults", json!({ "fault": "drop" })).await;
    assert!(ok.status().is_success());
    let undecodable = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Delivery::Undecodable(event) = sub.next().await.unwrap() {
                return event;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(undecodable.event_uuid, "bad-1");
    assert_eq!(undecodable.payload, vec![0xde, 0xad, 0xbe, 0xef]);

    // Seeding more data uses the scenario seed format.
    let seeded = http
        .post(admin.join("sandbox/seed").unwrap())
        .body(
            "[[org.Account]]\nId = \"001000000000009AAA\"\nName = \"Late Co\"\nWHMCS_Client_ID__c = \"99\"\n",
        )
        .send()
        .await
        .unwrap();
    assert!(seeded.status().is_success(), "{:?}", seeded.text().await);
    let bad_seed = http
        .post(admin.join("sandbox/seed").unwrap())
        .body("[[org.Account]]\nNope = ")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_seed.status(), 400);

    // The dropped stream is replaced.
    let mut state = sub.state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.reconnects >= 1 && s.connected),
    )
    .await
    .unwrap()
    .unwrap();
    let overview: Value = http
        .get(admin.join("sandbox").unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(overview["pubsub"]["subscribe_calls"].as_u64().unwrap() >= 2);
    assert_eq!(overview["env"]["WHMCS_URL"], env["WHMCS_URL"].as_str());
}

/// `fulfilld sandbox` as the binary, the way docs/sandbox.md runs it (every port but the admin
/// API's picked free): its admin API answers, `sandbox.env` holds every setting a host needs and
/// is enough for `fulfilld fulfill` to provision the seeded Order, a second sandbox on the same
/// port cannot run (exit 2, naming the address), and SIGTERM stops it with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_its_env_file_and_admin_api_and_stops_on_sigterm_with_0() {
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let admin_port = crate::pipeline::free_port();
    /// Killed if the test fails before it stops.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let sandbox_command = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fulfilld"));
        command
            .arg("sandbox")
            .args(["--admin-port", &admin_port.to_string()])
            .args([
                "--salesforce-port",
                "0",
                "--whmcs-port",
                "0",
                "--pubsub-port",
                "0",
            ])
            .arg("--state-dir")
            .arg(&state)
            .env("NO_COLOR", "1");
        command
    };
    let mut running = Running(
        sandbox_command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sandbox.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut running.0;
    let log = || std::fs::read_to_string(dir.path().join("sandbox.log")).unwrap_or_default();

    fulfilld::http::install_crypto_provider();
    let http = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let start = Instant::now();
    let overview: Value = loop {
        if let Ok(response) = http.get(format!("{admin}/sandbox")).send().await
            && let Ok(body) = response.json::<Value>().await
        {
            break body;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sandbox exited; log:\n{}",
            log()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the admin API never answered; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        log().contains(&format!(
            "sandbox ready admin=http://127.0.0.1:{admin_port}/"
        )),
        "{}",
        log()
    );

    let env = read_env_file(&state.join("sandbox.env"));
    for key in [
        "SF_LOGIN_URL",
        "SF_CLIENT_ID",
        "SF_USERNAME",
        "SF_PRIVATE_KEY_PATH",
        "SF_AUDIENCE",
        "SF_PUBSUB_ENDPOINT",
        "SF_PROVISION_EVENT_CHANNEL",
        "PORTAL_PRICEBOOK_ID",
        "WHMCS_URL",
        "WHMCS_IDENTIFIER",
        "WHMCS_SECRET",
    ] {
        assert!(
            env.contains_key(key),
            "{key} missing from sandbox.env: {env:?}"
        );
        assert_eq!(overview["env"][key], env[key].as_str(), "{overview}");
    }
    assert_eq!(
        std::path::PathBuf::from(&env["SF_PRIVATE_KEY_PATH"]),
        state.join("sf-private.key")
    );
    assert!(state.join("sf-private.key").is_file());

    // The port is taken: a second sandbox on the same state directory cannot run, says where,
    // and leaves the running one's files as they were.
    let files = || {
        (
            std::fs::read(state.join("sandbox.env")).unwrap(),
            std::fs::read(state.join("sf-private.key")).unwrap(),
        )
    };
    let before = files();
    let (code, _, stderr) = tokio::task::spawn_blocking({
        let second = sandbox_command();
        let dir = dir.path().to_owned();
        move || crate::thirdparty::run_bounded(second, &dir, "second", Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "fulfilld: cannot listen on 127.0.0.1:{admin_port}: Address already in use"
        )),
        "{stderr}"
    );
    assert!(child.try_wait().unwrap().is_none(), "{}", log());
    assert!(
        files() == before,
        "the refused sandbox rewrote the state directory"
    );

    // The docs' next step: `fulfilld fulfill` on sandbox.env alone, against the running sandbox.
    let mut fulfill = Command::new(env!("CARGO_BIN_EXE_fulfilld"));
    fulfill
        .args(["fulfill", "--order-id", SEEDED_ORDER, "--component"])
        .arg(crate::common::component("fulfillment"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(read_env_file(&state.join("sandbox.env")));
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || crate::thirdparty::run_bounded(fulfill, &dir, "fulfill", Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "fulfill:\n{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["result"]["disposition"], "completed", "{result}");
    let order: Value = http
        .get(format!("{admin}/sandbox/orders/{SEEDED_ORDER}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["Activation_Status__c"], "Activated", "{order}");

    // SIGTERM: a clean stop, exit status 0, the admin API gone.
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("still running 30 s after SIGTERM; log:\n{}", log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}; log:\n{}", log());
    assert!(
        http.get(format!("{admin}/sandbox")).send().await.is_err(),
        "the admin API still answers"
    );
}

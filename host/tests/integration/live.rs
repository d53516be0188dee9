//! The real clients end to end: `fulfilld fulfill` runs the default component against fake
//! Salesforce and WHMCS servers over real HTTP, with JWT bearer auth verified by the fake token
//! endpoint. Also: secrets stay out of logs and out of the component's reach, and bad
//! configuration stops start-up naming the setting.

use crate::common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fulfilld::config::{Config, EXPOSED_SETTINGS};
use fulfilld::fake::{
    FakeSalesforce, FakeSalesforceOptions, FakeWhmcsOptions, FakeWhmcsServer,
    serve_fake_salesforce, serve_fake_whmcs,
};
use fulfilld::testkit::scenario::Scenario;
use tokio::net::TcpListener;

const ORDER: &str = "801000000000001AAA";
const WHMCS_IDENTIFIER: &str = "ident-live-7Hq2";
const WHMCS_SECRET: &str = "secret-live-Zx81";
const WHMCS_ACCESS_KEY: &str = "access-live-Pp40";

struct Fakes {
    sf: FakeSalesforce,
    whmcs: FakeWhmcsServer,
}

async fn fakes() -> Fakes {
    let seeded = Scenario::load(&common::scenarios_dir().join("happy-path.toml"))
        .unwrap()
        .seed()
        .unwrap();
    let org = seeded.with_org(|org| org.clone());
    let whmcs = seeded.with_whmcs(|whmcs| whmcs.clone());
    let sf = serve_fake_salesforce(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        FakeSalesforceOptions {
            client_id: "3MVG9.live.consumer".into(),
            username: "integration@acme.example".into(),
            audience: "https://login.salesforce.com".into(),
            public_key_pem: std::fs::read_to_string(common::keys_dir().join("test_public.pem"))
                .unwrap(),
            org_id: "00D8d0000000001EAA".into(),
            page_size: 2,
        },
        Arc::new(Mutex::new(org)),
    )
    .await
    .unwrap();
    let whmcs = serve_fake_whmcs(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        FakeWhmcsOptions {
            identifier: WHMCS_IDENTIFIER.into(),
            secret: WHMCS_SECRET.into(),
            access_key: Some(WHMCS_ACCESS_KEY.into()),
        },
        Arc::new(Mutex::new(whmcs)),
    )
    .await
    .unwrap();
    Fakes { sf, whmcs }
}

fn environment(fakes: &Fakes) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("SF_LOGIN_URL", fakes.sf.url().to_string()),
        ("SF_AUDIENCE", "https://login.salesforce.com".to_owned()),
        ("SF_CLIENT_ID", "3MVG9.live.consumer".to_owned()),
        ("SF_USERNAME", "integration@acme.example".to_owned()),
        (
            "SF_PRIVATE_KEY_PATH",
            common::keys_dir()
                .join("test_private.pem")
                .display()
                .to_string(),
        ),
        ("PORTAL_PRICEBOOK_ID", "01s000000000001AAA".to_owned()),
        ("WHMCS_URL", fakes.whmcs.url().to_string()),
        ("WHMCS_IDENTIFIER", WHMCS_IDENTIFIER.to_owned()),
        ("WHMCS_SECRET", WHMCS_SECRET.to_owned()),
        ("WHMCS_ACCESS_KEY", WHMCS_ACCESS_KEY.to_owned()),
    ])
}

/// Strings that must never appear in a log line or in what a component can see.
fn secrets(fakes: &Fakes) -> Vec<String> {
    let pem = std::fs::read_to_string(common::keys_dir().join("test_private.pem")).unwrap();
    let mut secrets: Vec<String> = pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 20)
        .map(str::to_owned)
        .collect();
    secrets.extend([WHMCS_SECRET, WHMCS_ACCESS_KEY].map(str::to_owned));
    secrets.extend(fakes.sf.issued_tokens());
    secrets
}

fn assert_no_secret(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret leaked: {secret}\n{text}"
        );
    }
}

#[tokio::test]
async fn an_order_is_provisioned_over_real_http_and_no_secret_is_logged() {
    let logs = common::LogCapture::default();
    let _guard = logs.install();
    let fakes = fakes().await;
    let env = environment(&fakes);
    let config = Config::from_lookup(|key| env.get(key).cloned()).unwrap();

    let mut out = Vec::new();
    let ok =
        fulfilld::cli::fulfill_once(&config, &common::component("fulfillment"), ORDER, &mut out)
            .await
            .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("\"completed\""), "{out}");

    let org = fakes.sf.org();
    let org = org.lock().unwrap();
    let order = org.get("Order", ORDER).unwrap();
    assert_eq!(order["Activation_Status__c"], "Activated");
    assert_eq!(order["WHMCS_Order_ID__c"], "1000");
    drop(org);
    let whmcs = fakes.whmcs.whmcs();
    let whmcs = whmcs.lock().unwrap();
    assert_eq!(whmcs.orders().len(), 1);
    assert_eq!(whmcs.orders()[0].status, "Active");
    assert_eq!(whmcs.orders()[0].items.len(), 3);
    drop(whmcs);
    assert_eq!(
        fakes.sf.token_requests(),
        1,
        "one token exchange, then cached"
    );

    let text = logs.text();
    for line in [
        "Starting fulfillment orchestration",
        "validation",
        "mapping",
        "whmcs_create",
        "whmcs_accept",
        "sf_success_update",
    ] {
        assert!(text.contains(line), "log is missing {line}:\n{text}");
    }
    let secrets = secrets(&fakes);
    assert!(!secrets.is_empty());
    assert_no_secret(&text, &secrets);
    assert_no_secret(&out, &secrets);
}

#[tokio::test]
async fn only_non_secret_settings_reach_the_component() {
    let fakes = fakes().await;
    let env = environment(&fakes);
    let config = Config::from_lookup(|key| env.get(key).cloned()).unwrap();
    let exposed = config.exposed();
    assert!(
        exposed
            .keys()
            .all(|k| EXPOSED_SETTINGS.contains(&k.as_str()))
    );
    for value in exposed.values() {
        assert_no_secret(
            value,
            &[
                WHMCS_SECRET.into(),
                WHMCS_ACCESS_KEY.into(),
                WHMCS_IDENTIFIER.into(),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_host_environment_are_invisible_to_a_component() {
    let fakes = fakes().await;
    let env = environment(&fakes);
    let component = common::component("fixture-sandbox-escape");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
            .args(["fulfill", "--order-id", ORDER, "--component"])
            .arg(component)
            .envs(env)
            // Everything at TRACE except the compiler, whose tracing is huge and touches no secret.
            .env("FULFILLD_LOG", "trace,cranelift_codegen=info,regalloc2=info,wasmtime_cranelift=info,cranelift_frontend=info")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stdout.contains("ESCAPE_BLOCKED"), "{stdout}\n{stderr}");
    // The job failed (the fixture reports what it could reach as a business failure): exit 1.
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let secrets = secrets(&fakes);
    assert_no_secret(&stdout, &secrets);
    assert_no_secret(&stderr, &secrets);
    assert!(!stdout.contains(WHMCS_IDENTIFIER), "{stdout}");
}

#[test]
fn bad_configuration_stops_start_up_naming_the_setting() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(["fulfill", "--order-id", ORDER])
        .env_clear()
        .env("SF_LOGIN_URL", "https://login.salesforce.com")
        .env("SF_CLIENT_ID", "3MVG9.client")
        .env("SF_USERNAME", "integration@acme.example")
        .env("SF_PRIVATE_KEY_PATH", "/app/secrets/sf-private.key")
        .env("WHMCS_URL", "billing.example.com/includes")
        .env("WHMCS_IDENTIFIER", WHMCS_IDENTIFIER)
        .env("WHMCS_SECRET", WHMCS_SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SF_PRIVATE_KEY_PATH: cannot read key file /app/secrets/sf-private.key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("WHMCS_URL: malformed URL `billing.example.com/includes`"),
        "{stderr}"
    );
    assert!(!stderr.contains(WHMCS_SECRET), "{stderr}");
}

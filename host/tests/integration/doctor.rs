//! `fulfilld doctor` run as the built binary against the sandbox: all PASS with the sandbox's
//! settings, and each thing an operator gets wrong named as a FAIL with its fix.

use std::collections::BTreeMap;

use serde_json::{Map, json};

use crate::pipeline::{OwnRedis, Rig};

/// Runs `fulfilld doctor` with `env` (and nothing else of this process's environment that could
/// change the outcome); returns its exit code and its output.
async fn doctor(env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let env = env.clone();
    // A blocking wait on its own thread: the sandbox answering the doctor runs on this runtime.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
            .arg("doctor")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// Whether `l` is the `status` line of exactly `check`: the report pads each check name to a
/// column, so `whmcs` followed by two spaces is not `whmcs version`.
fn is_line(l: &str, status: &str, check: &str) -> bool {
    l.strip_prefix(status)
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix(check))
        .is_some_and(|rest| rest.starts_with("  "))
}

/// The line of `check` in a report, panicking with the report when there is none.
fn line<'a>(report: &'a str, status: &str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| is_line(l, status, check))
        .unwrap_or_else(|| panic!("no {status} line for {check:?} in:\n{report}"))
}

/// The `fix:` line under the FAIL line of `check`.
fn fix<'a>(report: &'a str, check: &str) -> &'a str {
    let mut lines = report.lines();
    lines
        .by_ref()
        .find(|l| is_line(l, "FAIL", check))
        .unwrap_or_else(|| panic!("no FAIL line for {check:?} in:\n{report}"));
    lines
        .next()
        .filter(|l| l.trim_start().starts_with("fix: "))
        .unwrap_or_else(|| panic!("no fix under the FAIL of {check:?} in:\n{report}"))
}

async fn rig_with_redis(redis: &OwnRedis) -> Rig {
    Rig::new().await.with_redis(&redis.url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_every_check_against_the_sandbox() {
    let redis = OwnRedis::start_with(&[]).await;
    let rig = rig_with_redis(&redis).await;
    let (code, report) = doctor(&rig.env).await;
    assert_eq!(
        code,
        Some(0),
        "doctor failed against the sandbox:\n{report}"
    );
    for check in [
        "settings",
        "component",
        "salesforce login",
        "salesforce schema",
        "event topic",
        "whmcs",
        "whmcs version",
        "whmcs products",
        "store",
    ] {
        line(&report, "PASS", check);
    }
    assert!(
        line(&report, "PASS", "salesforce login").contains(rig.sandbox.salesforce().org_id()),
        "{report}"
    );
    assert!(
        line(&report, "PASS", "event topic").contains(&rig.channel),
        "{report}"
    );
    assert!(
        line(&report, "PASS", "store").contains("noeviction"),
        "{report}"
    );
    assert!(report.contains("all 9 checks passed"), "{report}");
    // Reading settings that carry secrets prints none of them.
    assert!(!report.contains(&rig.env["WHMCS_SECRET"]), "{report}");

    // It changes nothing anywhere: Salesforce got reads (and the token grant), WHMCS read-only
    // actions, and the store (a Redis of this test's own) holds no key.
    for request in rig.sandbox.salesforce().requests() {
        assert!(
            request.method == "GET" || request.path.ends_with("/oauth2/token"),
            "doctor wrote to Salesforce: {request:?}"
        );
    }
    let actions: Vec<String> = rig
        .sandbox
        .whmcs()
        .requests()
        .iter()
        .filter_map(|form| {
            form.iter()
                .find(|(k, _)| k == "action")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(!actions.is_empty());
    for action in &actions {
        assert!(
            action.starts_with("Get") || action == "WhmcsDetails",
            "doctor called WHMCS {action}: {actions:?}"
        );
    }
    let client = ::redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: i64 = ::redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(keys, 0, "doctor wrote to the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_wrong_whmcs_credentials_and_an_evicting_redis_with_their_fixes() {
    let redis = OwnRedis::start_with(&["--maxmemory-policy", "allkeys-lru"]).await;
    let mut rig = rig_with_redis(&redis).await;
    rig.env
        .insert("WHMCS_SECRET".into(), "not-the-secret-4711".into());
    let (code, report) = doctor(&rig.env).await;
    assert_eq!(
        code,
        Some(1),
        "doctor passed with wrong credentials:\n{report}"
    );

    assert!(
        line(&report, "FAIL", "whmcs").contains("Authentication Failed"),
        "{report}"
    );
    let whmcs_fix = fix(&report, "whmcs");
    assert!(
        whmcs_fix.contains("WHMCS_IDENTIFIER") && whmcs_fix.contains("WHMCS_SECRET"),
        "{report}"
    );
    assert!(!report.contains("not-the-secret-4711"), "{report}");

    assert!(
        line(&report, "FAIL", "store").contains("maxmemory-policy is allkeys-lru"),
        "{report}"
    );
    assert!(fix(&report, "store").contains("noeviction"), "{report}");
    // What needs WHMCS to answer is skipped, saying why, not failed a second time.
    assert!(
        line(&report, "SKIP", "whmcs version").contains("needs WhmcsDetails to answer"),
        "{report}"
    );
    assert!(
        line(&report, "SKIP", "whmcs products").contains("needs WHMCS to accept the credentials"),
        "{report}"
    );
    // The rest still ran and passed: one failure does not hide the others.
    for check in ["settings", "component", "salesforce login", "event topic"] {
        line(&report, "PASS", check);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_channel_the_org_lacks_and_never_prints_the_redis_password() {
    let redis = OwnRedis::start_with(&["--requirepass", "redis-pw-0451"]).await;
    let url = redis.url.replace("redis://", "redis://:redis-pw-0451@");
    let mut rig = rig_with_redis(&redis).await.with_redis(&url);
    rig.env.insert(
        "SF_PROVISION_EVENT_CHANNEL".into(),
        "/event/NoSuchEvent__e".into(),
    );
    let (code, report) = doctor(&rig.env).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        line(&report, "FAIL", "event topic").contains("/event/NoSuchEvent__e"),
        "{report}"
    );
    assert!(
        fix(&report, "event topic").contains("platform event"),
        "{report}"
    );
    // The password-protected Redis is reached and named by host and port only.
    let store = line(&report, "PASS", "store");
    assert!(store.contains("noeviction"), "{report}");
    assert!(!report.contains("redis-pw-0451"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_an_old_whmcs_and_a_mapped_product_whmcs_lacks() {
    let redis = OwnRedis::start_with(&[]).await;
    let rig = rig_with_redis(&redis).await;
    rig.sandbox
        .whmcs()
        .whmcs()
        .lock()
        .unwrap()
        .set_version("8.11.4");
    let product = {
        let org = rig.sandbox.salesforce().org();
        let mut org = org.lock().unwrap();
        let id = org.records("Product2")[0]["Id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut fields = Map::new();
        fields.insert("WH_Product_ID__c".into(), json!("99"));
        org.update("Product2", &id, &fields).unwrap();
        id
    };
    let (code, report) = doctor(&rig.env).await;
    assert_eq!(code, Some(1), "{report}");
    let version = line(&report, "FAIL", "whmcs version");
    assert!(
        version.contains("8.11.4") && version.contains("qty[]"),
        "{report}"
    );
    assert!(
        fix(&report, "whmcs version").contains("FULFILLD_CONFIG_WHMCS_VERSION=8.11"),
        "{report}"
    );
    let products = line(&report, "FAIL", "whmcs products");
    assert!(
        products.contains(&product) && products.contains("WHMCS product 99"),
        "{report}"
    );
    // The credentials themselves are fine.
    line(&report, "PASS", "whmcs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_refused_jwt_grant_and_skips_what_needs_a_session() {
    let redis = OwnRedis::start_with(&[]).await;
    let mut rig = rig_with_redis(&redis).await;
    rig.env
        .insert("SF_CLIENT_ID".into(), "3MVG9not.the.connected.app".into());
    let (code, report) = doctor(&rig.env).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        line(&report, "FAIL", "salesforce login").contains("invalid_grant"),
        "{report}"
    );
    assert!(
        fix(&report, "salesforce login").contains("SF_CLIENT_ID"),
        "{report}"
    );
    for check in ["salesforce schema", "event topic", "whmcs products"] {
        assert!(
            line(&report, "SKIP", check).contains("needs a Salesforce session"),
            "{report}"
        );
    }
    // What needs no session still ran.
    for check in ["component", "whmcs", "store"] {
        line(&report, "PASS", check);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_field_the_org_lacks() {
    // The shipped package without Order.Activation_Error_Code__c, a field the component updates.
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("salesforce");
    crate::salesforce_package::copy_dir(
        &crate::salesforce_package::repo().join("salesforce"),
        &package,
    );
    std::fs::remove_file(package.join(
        "force-app/main/default/objects/Order/fields/Activation_Error_Code__c.field-meta.xml",
    ))
    .unwrap();
    let schema = fulfilld::fake::schema::Schema::from_packages(&[package]).unwrap();
    let redis = OwnRedis::start_with(&[]).await;
    let rig = Rig::with_sandbox(fulfilld::sandbox::SandboxConfig {
        schema,
        ..fulfilld::sandbox::SandboxConfig::default()
    })
    .await
    .with_redis(&redis.url);
    let (code, report) = doctor(&rig.env).await;
    assert_eq!(code, Some(1), "{report}");
    let schema = line(&report, "FAIL", "salesforce schema");
    assert!(
        schema.contains("update Order.Activation_Error_Code__c: it does not exist"),
        "{report}"
    );
    // Only that field: everything else the component reads and updates is there.
    assert_eq!(schema.matches("does not exist").count(), 1, "{report}");
    assert!(
        fix(&report, "salesforce schema").contains("salesforce/ package"),
        "{report}"
    );
    for check in ["salesforce login", "event topic", "whmcs", "store"] {
        line(&report, "PASS", check);
    }
}

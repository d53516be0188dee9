//! The component manifest, from the built binary: `component pack` embeds it, `component check`
//! shows it and holds it to the capability policy (the ceiling), and `fulfilld test` runs the
//! component with exactly what its manifest asks, config keys included.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The default rules' own manifest, as `make components` packs it.
fn default_manifest() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/fulfillment/component.toml"),
    )
    .unwrap()
}

/// Runs the built `fulfilld` with `args`: (exit code, stdout + stderr).
fn fulfilld(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = common::fulfilld(args);
    (output.status.code().unwrap_or(-1), common::text(&output))
}

/// The default component packed with `manifest` (through `component pack --out`).
fn packed(dir: &Path, name: &str, manifest: &str) -> (PathBuf, i32, String) {
    let manifest_path = dir.join(format!("{name}.toml"));
    std::fs::write(&manifest_path, manifest).unwrap();
    let out = dir.join(format!("{name}.wasm"));
    let (code, text) = pack(&common::component("fulfillment"), &manifest_path, &out);
    (out, code, text)
}

/// `fulfilld component pack <from> --manifest <manifest> --out <out>`.
fn pack(from: &Path, manifest: &Path, out: &Path) -> (i32, String) {
    fulfilld(&[
        "component".as_ref(),
        "pack".as_ref(),
        from.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

#[test]
fn the_default_component_ships_its_manifest_and_check_shows_it() {
    let component = common::component("fulfillment");
    let (code, text) = fulfilld(&[
        "component".as_ref(),
        "check".as_ref(),
        component.as_os_str(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("manifest: wit 1.1"), "{text}");
    assert!(text.contains("config: PORTAL_PRICEBOOK_ID"), "{text}");
    assert!(text.contains("query: Order, OrderItem"), "{text}");
    assert!(
        text.contains(
            "billing: AcceptOrder, AddOrder, GetClientsDetails, GetOrders, GetPayMethods"
        ),
        "{text}"
    );
}

#[test]
fn pack_replaces_a_manifest_and_refuses_a_bad_one_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let (first, code, text) = packed(dir.path(), "first", &default_manifest());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("packed"), "{text}");
    // Packing again replaces the manifest: the result is the same bytes.
    let manifest_path = dir.path().join("first.toml");
    let again = dir.path().join("again.wasm");
    let (code, text) = pack(&first, &manifest_path, &again);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // A signature made before packing no longer verifies: pack says so.
    std::fs::write(dir.path().join("again.wasm.sig"), "c2ln").unwrap();
    let (code, text) = pack(&first, &manifest_path, &again);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "again.wasm.sig signs the bytes before packing and no longer verifies: sign again"
        ),
        "{text}"
    );

    let bad = default_manifest().replace("[config]", "[config]\nAPI_TOKEN = [\"hunter2-9Qz\"]");
    let (out, code, text) = packed(dir.path(), "bad", &bad);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("manifest: line"), "{text}");
    assert!(!text.contains("hunter2-9Qz"), "{text}");
    assert!(!out.exists(), "nothing is written for a bad manifest");
}

#[test]
fn a_manifest_beyond_the_ceiling_is_refused_naming_each_excess() {
    let dir = tempfile::tempdir().unwrap();
    // The host's policy: no AcceptOrder, no Activation_Error_Message__c.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "billing_actions = [\"GetPayMethods\", \"GetClientsDetails\", \"AddOrder\", \"GetOrders\"]\n[update]\nOrder = [\"Activation_Status__c\", \"WHMCS_Order_ID__c\", \"Activation_Error_Code__c\"]\n",
    )
    .unwrap();
    let component = common::component("fulfillment");
    let expected = "asks beyond the host's capability policy: update Order.Activation_Error_Message__c, \
         billing AcceptOrder";
    let (code, text) = fulfilld(&[
        "component".as_ref(),
        "check".as_ref(),
        component.as_os_str(),
        "--policy".as_ref(),
        policy.as_os_str(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(expected), "{text}");
    // `fulfilld test` under that policy refuses the component the same way.
    let scenario = common::scenarios_dir().join("happy-path.toml");
    let (code, text) = fulfilld(&[
        "test".as_ref(),
        "--policy".as_ref(),
        policy.as_os_str(),
        component.as_os_str(),
        scenario.as_os_str(),
    ]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains(expected), "{text}");
}

/// A scenario that sets a pricebook the Order does not use: the default rules fail the order with
/// PRICEBOOK_MISMATCH when they can read `PORTAL_PRICEBOOK_ID`.
fn pricebook_scenario(dir: &Path) -> PathBuf {
    std::fs::copy(
        common::scenarios_dir().join("_seed.toml"),
        dir.join("_seed.toml"),
    )
    .unwrap();
    let path = dir.join("pricebook.toml");
    std::fs::write(
        &path,
        r#"name = "an Order from another pricebook is refused"
seed = "_seed.toml"
config = { PORTAL_PRICEBOOK_ID = "01s000000000009AAA" }

[[run]]
event = { OrderId__c = "801000000000001AAA" }

[run.expect]
result = "failed"
code = "PRICEBOOK_MISMATCH"
"#,
    )
    .unwrap();
    path
}

#[test]
fn a_config_key_the_manifest_lacks_is_missing_in_tests_as_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = pricebook_scenario(dir.path());
    let run = |component: &Path| {
        fulfilld(&["test".as_ref(), component.as_os_str(), scenario.as_os_str()])
    };
    // With its manifest the component reads the key the scenario sets.
    let (code, text) = run(&common::component("fulfillment"));
    assert_eq!(code, 0, "{text}");
    // Without the key in the manifest it reads none, whatever the scenario (the host) sets.
    let lacking = default_manifest().replace("PORTAL_PRICEBOOK_ID = ", "# ");
    let (component, code, text) = packed(dir.path(), "lacking", &lacking);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(&component);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL an Order from another pricebook"),
        "{text}"
    );
}

#[test]
fn a_component_gets_exactly_the_queries_its_manifest_asks() {
    let dir = tempfile::tempdir().unwrap();
    let narrow =
        default_manifest().replace("query = [\"Order\", \"OrderItem\"]", "query = [\"Order\"]");
    let (component, code, text) = packed(dir.path(), "narrow", &narrow);
    assert_eq!(code, 0, "{text}");
    let scenario = common::scenarios_dir().join("happy-path.toml");
    let (code, text) = fulfilld(&[
        "test".as_ref(),
        "--verbose".as_ref(),
        component.as_os_str(),
        scenario.as_os_str(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FORBIDDEN"), "{text}");
    assert!(
        text.contains("the capability policy does not allow querying OrderItem"),
        "{text}"
    );
}

#[test]
fn a_manifest_of_another_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = default_manifest().replace("version = \"0.1.0\"", "version = \"9.9.9\"");
    let (component, code, text) = packed(dir.path(), "other", &other);
    assert_eq!(code, 0, "{text}");
    let (code, text) = fulfilld(&[
        "component".as_ref(),
        "check".as_ref(),
        component.as_os_str(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "manifest names fulfillment 9.9.9 but the component's info() says fulfillment 0.1.0"
        ),
        "{text}"
    );
}

/// A `FULFILLD_CONFIG_<KEY>` setting a manifest could not list stops the host at start, naming
/// the setting and never its value.
#[test]
fn a_bad_component_config_setting_is_named_at_start() {
    let keys = common::keys_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(["fulfill", "--order-id", "801000000000001AAA", "--component"])
        .arg(common::component("fulfillment"))
        .env("SF_LOGIN_URL", "http://127.0.0.1:9")
        .env("SF_CLIENT_ID", "client")
        .env("SF_USERNAME", "integration@example.com")
        .env("SF_PRIVATE_KEY_PATH", keys.join("test_private.pem"))
        .env("WHMCS_URL", "http://127.0.0.1:9")
        .env("WHMCS_IDENTIFIER", "ident")
        .env("WHMCS_SECRET", "secret")
        .env("FULFILLD_CONFIG_bad-key", "value-7Rw2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("FULFILLD_CONFIG_bad-key"), "{stderr}");
    assert!(!stderr.contains("value-7Rw2"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

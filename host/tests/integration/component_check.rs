//! `fulfilld component check` says precisely what is wrong with a component file.

use crate::common;

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(["component", "check"])
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn the_default_component_passes_with_its_name_and_version() {
    let (code, text) = check(&common::component("fulfillment"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok: fulfillment 0.1.0 implements fulfilld:fulfillment@1.1.0"),
        "{text}"
    );
}

#[test]
fn a_core_module_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let (code, text) = check(&path);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("not a component: this is a core WebAssembly module"),
        "{text}"
    );

    std::fs::write(&path, b"#!/bin/sh\necho hi\n").unwrap();
    let (code, text) = check(&path);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not WebAssembly"), "{text}");
}

#[test]
fn a_missing_export_is_named() {
    let (code, text) = check(&common::component("fixture-wrong-world"));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "missing export: the component does not export `fulfilld:fulfillment/handler@1.1.0`"
        ),
        "{text}"
    );
    assert!(text.contains("fulfilld:other/handler"), "{text}");
}

#[test]
fn an_unknown_import_is_named() {
    let (code, text) = check(&common::component("fixture-unknown-import"));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("unknown import `fulfilld:fulfillment/secrets@1.0.0`"),
        "{text}"
    );
}

#[test]
fn an_incompatible_major_version_is_refused_with_the_versions() {
    let (code, text) = check(&common::component("fixture-future-major"));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("incompatible WIT version"), "{text}");
    assert!(
        text.contains("2.0.0") && text.contains("fulfilld:fulfillment@1.1.0"),
        "{text}"
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let (code, text) = check(Path::new("/nonexistent/component.wasm"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/component.wasm"), "{text}");
}

#[test]
fn an_older_compatible_minor_passes() {
    let (code, text) = check(&common::component("fixture-older-minor"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("implements fulfilld:fulfillment@1.1.0 (built against 1.0.0;"),
        "{text}"
    );
}

/// docs/component-authoring.md 1.3: inside `info()` no I/O is possible. The `contract` fixture
/// tries a Salesforce query, a WHMCS call (an action the policy allows) and a config read in
/// `info()` and reports in its version what each gave: refused (`forbidden`, `no I/O is allowed
/// in info()`) and no config value.
#[test]
fn info_can_do_no_io() {
    let (code, text) = check(&common::component("fixture_contract"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("ok: fixture-contract 0.1.0+sf-refused.whmcs-refused.config-none implements"),
        "{text}"
    );
}

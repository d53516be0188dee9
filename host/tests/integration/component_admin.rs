//! `fulfilld component deploy | list | show | activate | rollback`, run as the built binary: the
//! admin commands build their HTTP client like every other subcommand (the rustls provider is
//! installed at start), and a host they cannot reach is reported, not a panic.

use std::process::{Command, Output};

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

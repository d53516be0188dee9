//! A new user's first two commands, run the way they run them: `make test`'s Redis
//! (`tests/with-redis.sh`: the machine's Redis, else one of its own, stopped afterwards; one line
//! naming the fix when `redis-server` is missing) and `make demo`'s screen (`fulfilld demo` with
//! its output in a file: no escape codes, the story only, the pipeline's log in the file it names).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pipeline::free_port;

fn with_redis() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/with-redis.sh"
    ))
}

/// `tests/with-redis.sh` running `sh -c script` with `env`, without this process's own
/// `FULFILLD_TEST_REDIS_URL` (make test sets it for us).
fn run_with_redis(script: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new("bash")
        .arg(with_redis())
        .args(["sh", "-c", script])
        .env_remove("FULFILLD_TEST_REDIS_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn make_test_starts_its_own_redis_when_none_answers_and_stops_it_afterwards() {
    // Nothing listens on the default address: the wrapper starts a Redis of its own.
    let nobody = format!("127.0.0.1:{}", free_port());
    let output = run_with_redis(
        r#"redis-cli -u "$FULFILLD_TEST_REDIS_URL" ping && echo "url=$FULFILLD_TEST_REDIS_URL" && exit 7"#,
        &[("FULFILLD_TEST_REDIS_DEFAULT", &nobody)],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The command's own exit status comes back.
    assert_eq!(output.status.code(), Some(7), "{stdout}{stderr}");
    assert!(stdout.contains("PONG"), "{stdout}{stderr}");
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("url="))
        .unwrap_or_else(|| panic!("no url in {stdout}"));
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"));
    assert!(
        stderr.contains(&format!("no Redis at {nobody}"))
            && stderr.contains(&format!("started redis-server on 127.0.0.1:{port}")),
        "{stderr}"
    );
    // Stopped when the command ended: nothing listens there any more.
    let start = Instant::now();
    while answers(port) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the wrapper's redis-server on {port} is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn make_test_uses_the_redis_that_answers_or_the_one_it_is_given_and_starts_none() {
    // A Redis answering at the default address is used as it is.
    let redis = crate::pipeline::OwnRedis::start_with(&[]).await;
    let address = redis.url.trim_start_matches("redis://").to_owned();
    let output = run_with_redis(
        r#"echo "url=$FULFILLD_TEST_REDIS_URL""#,
        &[("FULFILLD_TEST_REDIS_DEFAULT", &address)],
    );
    let text = crate::common::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains(&format!("url=redis://{address}\n")), "{text}");
    assert!(!text.contains("started redis-server"), "{text}");

    // FULFILLD_TEST_REDIS_URL wins: no probe, no Redis of its own.
    let output = run_with_redis(
        r#"echo "url=$FULFILLD_TEST_REDIS_URL""#,
        &[("FULFILLD_TEST_REDIS_URL", "redis://10.0.0.1:6390/3")],
    );
    let text = crate::common::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("url=redis://10.0.0.1:6390/3"), "{text}");
    assert!(!text.contains("started redis-server"), "{text}");
}

#[test]
fn make_test_without_redis_server_says_how_to_install_it_in_one_line() {
    // A PATH without redis-server (bash itself is called by its full path).
    let bin = tempfile::tempdir().unwrap();
    let output = Command::new(which("bash").unwrap())
        .arg(with_redis())
        .args(["sh", "-c", "echo ran"])
        .env_remove("FULFILLD_TEST_REDIS_URL")
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ran"));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("redis-server") && stderr.contains("apt-get install redis-server"),
        "{stderr}"
    );
    // make test's first step (`--check`, before any build) says the same.
    let check = Command::new(which("bash").unwrap())
        .arg(with_redis())
        .arg("--check")
        .env("PATH", bin.path())
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&check.stderr), stderr);
    // With redis-server installed, the check passes and starts nothing.
    let check = Command::new("bash")
        .arg(with_redis())
        .arg("--check")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", crate::common::text(&check));
    assert!(check.stderr.is_empty(), "{}", crate::common::text(&check));
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// `fulfilld demo` as `make demo > out.txt` runs it: stdout to a file; returns once the summary
/// is there and the demo stopped on Ctrl-C (SIGINT), with stdout, stderr and the log file.
fn run_demo(dir: &Path) -> (String, String, String) {
    let out_path = dir.join("out.txt");
    let err_path = dir.join("err.txt");
    let state_dir = dir.join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .arg("demo")
        .arg("--component")
        .arg(crate::common::component("fulfillment"))
        .arg("--state-dir")
        .arg(&state_dir)
        .env_remove("FULFILLD_LOG")
        .env_remove("RUST_LOG")
        .env_remove("FULFILLD_LOG_FORMAT")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        if out.contains("orders settled") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "demo exited ({status}) before its summary:\n{out}\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no summary after 180 s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "demo after Ctrl-C: {status}");
    let log = std::fs::read_to_string(dir.join("demo.log"))
        .unwrap_or_else(|e| panic!("no log file beside the state directory: {e}"));
    (
        std::fs::read_to_string(&out_path).unwrap(),
        std::fs::read_to_string(&err_path).unwrap(),
        log,
    )
}

#[test]
fn make_demo_into_a_file_reads_as_a_story_with_the_log_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (out, err, log) = run_demo(dir.path());
    let all = format!("--- stdout\n{out}--- stderr\n{err}--- log\n{log}");
    for text in [&out, &err, &log] {
        assert!(!text.contains('\u{1b}'), "an escape code:\n{all}");
    }
    // Only the story on stdout: where things are, what was published, one line per status
    // change of an Order, the summary, stopping.
    let mut status_lines = Vec::new();
    for line in out.lines() {
        let known = line.starts_with("sandbox admin API: ")
            || line.starts_with("pipeline log: ")
            || line.starts_with("published ")
            || line.starts_with("all 5 orders settled; ")
            || line == "stopping"
            || line.starts_with("8019");
        assert!(known, "a line that is not the demo's own: {line:?}\n{all}");
        if line.starts_with("8019") {
            status_lines.push(line);
        }
    }
    let mut unique = status_lines.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        status_lines.len(),
        "a status shown twice:\n{all}"
    );
    assert!(
        out.contains(&format!(
            "pipeline log: {}",
            dir.path().join("demo.log").display()
        )),
        "{all}"
    );
    assert!(
        out.contains("801900000000100AAA (customer without a payment method): Failed (409"),
        "{all}"
    );
    assert_eq!(
        out.matches("Activated (WHMCS order").count(),
        4,
        "four approved orders activated once each:\n{all}"
    );
    assert!(
        out.contains("all 5 orders settled; WHMCS holds 4 orders"),
        "{all}"
    );
    assert!(out.ends_with("stopping\n"), "{all}");
    // The pipeline's lines are in the log file, and none of them on the screen.
    for line in [
        "Platform Event enqueued for provisioning",
        "duplicate Platform Event ignored",
        "fulfillment finished",
    ] {
        assert!(log.contains(line), "{line:?} not in the log:\n{all}");
        assert!(!out.contains(line) && !err.contains(line), "{all}");
    }
    // stderr carries warnings and errors only: here the 409 Order's, nothing at INFO.
    for line in err.lines() {
        assert!(
            line.contains(" WARN ") || line.contains(" ERROR "),
            "stderr has more than warnings: {line:?}\n{all}"
        );
    }
    assert!(err.contains("Payment method missing"), "{all}");
}

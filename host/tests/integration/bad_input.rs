//! Hostile input from outside the process (issue 14's catalogue), run the way operators meet it.

use std::path::Path;
use std::process::Command;

/// `fulfilld <args>` on the embedded store in `state_dir`: exit code and stderr.
fn on_store(state_dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FULFILLD_STATE_DIR", state_dir)
        .env(
            "SF_PROVISION_EVENT_CHANNEL",
            "/event/OrderProvisionRequested__e",
        )
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bytes from a fixed linear congruential sequence: the same "random" damage on every run.
fn scramble(bytes: &mut [u8], seed: u64) {
    let mut state = seed;
    for byte in bytes {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *byte = (state >> 56) as u8;
    }
}

#[test]
fn a_damaged_embedded_store_is_named_with_what_to_do_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let (code, err) = on_store(&good, &["cursor", "reset", "42"]);
    assert_eq!(code, Some(0), "{err}");
    let file = std::fs::read(good.join("fulfilld.redb")).unwrap();
    assert!(file.len() > 3 * 4096, "{} bytes", file.len());

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Pages scrambled after the header: redb 4 panics ("entered unreachable code") on these.
    let mut pages = file.clone();
    scramble(&mut pages[4096..3 * 4096], 1);
    cases.push(("scrambled pages", pages));
    let mut header = file.clone();
    header[..64].fill(0);
    cases.push(("zeroed header", header));
    cases.push(("cut in half", file[..file.len() / 2].to_vec()));
    cases.push(("not a database", b"junk".repeat(100)));

    for (what, bytes) in cases {
        let state = dir.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&state).unwrap();
        let path = state.join("fulfilld.redb");
        std::fs::write(&path, &bytes).unwrap();
        let (code, err) = on_store(&state, &["cursor", "show"]);
        // Exit 2 (the command could not run), one `fulfilld:` line naming the file.
        assert_eq!(code, Some(2), "{what}: {err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("fulfilld: "))
            .unwrap_or_else(|| panic!("{what}: no error line in {err}"));
        assert!(line.contains(&path.display().to_string()), "{what}: {line}");
        assert!(
            !line.contains("task") && !line.contains("panicked"),
            "{what}: {line}"
        );
        // The file is left as it was, for support.
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{what}: the file was changed"
        );
        if what == "scrambled pages" {
            assert!(
                line.contains("is damaged") && line.contains("move the file aside"),
                "{what}: {line}"
            );
        }
    }
}

/// A junk value in the cursor key (`sf:pe:replay:<channel>`, which an outside tool such as the
/// previous portal may write) stops ingestion safely; `/health` says so, with the fix, instead of
/// answering 200 ok, and stops saying so once a good cursor is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_cursor_makes_health_degraded_with_the_reason_and_the_fix() {
    use fulfilld::domain::ReplayId;

    let url = crate::pipeline::redis_url();
    let rig = crate::pipeline::Rig::new().await.with_redis(&url);
    let key = format!("sf:pe:replay:{}", rig.channel);
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(&key)
        .arg("not-a-replay-id")
        .query_async(&mut conn)
        .await
        .unwrap();
    let host = rig.host(&[]).await;
    let health_url = format!("http://{}/health", host.http_addr());
    let response = reqwest::get(&health_url).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("the stored replay cursor cannot be read")
            && problems.contains(&key)
            && problems.contains("fulfilld cursor reset"),
        "{body}"
    );
    // No value of the key's content beyond the store's own message, and nothing ingested.
    assert!(body["subscription"]["cursor"].is_null(), "{body}");

    let store = rig.store().await;
    store
        .set_cursor(&rig.channel, Some(&ReplayId::from_u64(0)))
        .await
        .unwrap();
    let body: serde_json::Value = reqwest::get(&health_url)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !body["problems"].to_string().contains("replay cursor"),
        "{body}"
    );
    host.shutdown().await;
    let _: () = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Junk entries in the Redis job stream (written by something other than the host) are
/// dead-lettered as `damaged` with what is wrong; the jobs around them run, a junk dead-letter
/// entry does not break `dead-letters list`, and a damaged one is refused by `requeue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_queue_entries_are_dead_lettered_and_the_jobs_around_them_run() {
    use fulfilld::store::DeadLetterKind;

    let url = crate::pipeline::redis_url();
    let rig = crate::pipeline::Rig::new().await.with_redis(&url);
    let namespace = rig.env["FULFILLD_REDIS_NAMESPACE"].clone();
    let base = format!("{namespace}:{{sf:pe:replay:{}}}", rig.channel);
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let xadd = |key: String, fields: Vec<(&'static str, Vec<u8>)>| {
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(key).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        cmd
    };
    let junk_jobs = [
        vec![("hello", b"world".to_vec())],
        vec![
            ("uuid", b"6f1c1d2e-0000-4000-8000-000000000001".to_vec()),
            ("replay", b"not-a-replay-id".to_vec()),
            ("payload", b"{}".to_vec()),
            ("enq", b"1".to_vec()),
        ],
        vec![
            ("uuid", vec![0xff, 0xfe, 0x00]),
            ("replay", b"42".to_vec()),
            ("payload", b"{}".to_vec()),
            ("enq", b"soon".to_vec()),
        ],
        // The host's fields, but a payload that is not an event: a job, dead-lettered by the
        // worker (BAD_PAYLOAD) rather than by the store.
        vec![
            ("uuid", b"6f1c1d2e-0000-4000-8000-0000000000aa".to_vec()),
            ("replay", b"7".to_vec()),
            ("payload", b"not an event".to_vec()),
            ("enq", b"1".to_vec()),
        ],
    ];
    for fields in junk_jobs {
        let _: String = xadd(format!("{base}:jobs"), fields)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: String = xadd(
        format!("{base}:dead"),
        vec![("kind", b"bogus".to_vec()), ("reason", vec![b'x'; 10_000])],
    )
    .query_async(&mut conn)
    .await
    .unwrap();

    let orders = rig.orders(1, 3);
    let host = rig.host(&[("FULFILLD_WORKERS", "2")]).await;
    for order in &orders {
        rig.publish(order);
    }
    rig.wait_activated(&orders, std::time::Duration::from_secs(60))
        .await;
    rig.assert_exactly_once(&orders);

    let store = rig.store().await;
    let letters = store.dead_letters(&rig.channel, 100).await.unwrap();
    assert_eq!(letters.len(), 5, "{letters:#?}");
    let damaged = letters
        .iter()
        .filter(|l| l.kind == DeadLetterKind::Damaged)
        .count();
    assert_eq!(damaged, 4, "{letters:#?}");
    let not_event = letters
        .iter()
        .find(|l| l.kind == DeadLetterKind::Job)
        .unwrap();
    assert!(
        not_event
            .reason
            .contains("the job's payload is not an event"),
        "{not_event:?}"
    );
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("no field \"uuid\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not-a-replay-id")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("is not UTF-8")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown kind \"bogus\"")),
        "{reasons:?}"
    );
    // What the entry held is kept, bounded.
    let junk = letters
        .iter()
        .find(|l| l.reason.contains("no field \"uuid\""))
        .unwrap();
    let held: serde_json::Value = serde_json::from_slice(&junk.payload).unwrap();
    assert_eq!(held["raw:hello"], "world", "{held}");
    let bogus = letters.iter().find(|l| l.reason.contains("bogus")).unwrap();
    assert!(bogus.reason.len() < 5_000, "{}", bogus.reason.len());
    host.shutdown().await;

    // The operator's commands, as the binary.
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fulfilld"))
            .args(args)
            .envs(&rig.env)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["dead-letters", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("5 dead letter(s)"), "{out}");
    let damaged_lines = out
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("damaged"))
        .count();
    assert_eq!(damaged_lines, 4, "{out}");
    let (code, out, err) = run(&["dead-letters", "show", &junk.id]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"raw:hello\": \"world\""), "{out}");
    // Refused: exit 1 (docs/operations.md, Operator commands), the reason on stdout.
    let (code, out, err) = run(&["dead-letters", "requeue", &junk.id]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.starts_with(&format!("cannot requeue {}: ", junk.id))
            && out.contains("cannot be requeued"),
        "{out}{err}"
    );
    // The junk entry written straight into the dead letters is refused the same way.
    let (code, out, err) = run(&["dead-letters", "requeue", &bogus.id]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.starts_with(&format!("cannot requeue {}: ", bogus.id))
            && out.contains("cannot be requeued"),
        "{out}{err}"
    );
    assert_eq!(
        store.dead_letters(&rig.channel, 100).await.unwrap().len(),
        5
    );

    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = ::redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Text a component controls is bounded everywhere the host puts it: a component that logs
/// 1 MiB messages, asks for a 1 MiB hold name and fails with a 10 KiB code (with a newline) and an
/// 8 MiB message leaves a short log, a job record with a marked cut, a printable code and a
/// small `/metrics`; the Order is Failed with a message Salesforce accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_text_is_bounded_in_logs_records_and_metrics() {
    use crate::pipeline::{Rig, ServeProcess, redis_url, wait_record};

    let rig = Rig::new().await.with_redis(&redis_url());
    let loud = crate::common::component("fixture-loud")
        .display()
        .to_string();
    let serve = ServeProcess::start(
        &rig,
        "loud",
        &[("FULFILLD_COMPONENT", &loud), ("FULFILLD_WORKERS", "1")],
    );
    serve
        .wait_role("leader", std::time::Duration::from_secs(30))
        .await;
    let orders = rig.orders(1, 1);
    let (uuid, _) = rig.publish(&orders[0]);
    let store = rig.store().await;
    let record = wait_record(&store, &uuid).await;

    assert_eq!(record.outcome, "failed", "{record:?}");
    let code = record.code.clone().unwrap();
    assert!(code.starts_with("INVALID_CODE:LOUDCCC"), "{code}");
    assert!(code.len() <= 64 && !code.contains('\n'), "{code}");
    assert!(record.message.len() < 4200, "{}", record.message.len());
    assert!(
        record
            .message
            .ends_with(&format!("[cut: {} bytes in all]", 8 * (1 << 20) + 44)),
        "{}",
        &record.message[record.message.len() - 60..]
    );
    let (status, error_code) = rig.status(&orders[0]);
    assert_eq!(status, "Failed", "{error_code}");

    let metrics = reqwest::get(format!("{}/metrics", serve.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.len() < 64 * 1024, "{}", metrics.len());
    assert!(metrics.contains("code=\"INVALID_CODE:LOUDCCC"), "{metrics}");
    // The log holds the job's lines, each bounded: nowhere near the megabytes handed in.
    let log = serve.log_text();
    assert!(log.contains("fixture-loud"), "{log}");
    // The 1 MiB hold name is refused, and named in the log by its first 200 bytes only.
    assert!(
        log.contains("hold refused: hold name must be 1 to 200 bytes, got 1048576"),
        "{}",
        &log[..log.len().min(4000)]
    );
    assert!(log.len() < 256 * 1024, "{} bytes of log", log.len());
}

/// Jobs wait and no worker of this replica takes or ends one for `FULFILLD_QUEUE_STALL_MS`:
/// `/health` is degraded and says so; once jobs move again it is ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_is_not_moving_makes_health_degraded() {
    use std::time::{Duration, Instant};

    let rig = crate::pipeline::Rig::new()
        .await
        .with_redis(&crate::pipeline::redis_url());
    let orders = rig.orders(1, 3);
    // WHMCS holds its first answer for 8 s: the one worker is stuck on it, two jobs wait.
    rig.sandbox.whmcs().delay_next(1, Duration::from_secs(8));
    let host = rig
        .host(&[
            ("FULFILLD_WORKERS", "1"),
            ("FULFILLD_QUEUE_STALL_MS", "1000"),
            ("FULFILLD_CALL_TIMEOUT_MS", "20000"),
        ])
        .await;
    for order in &orders {
        rig.publish(order);
    }
    let url = format!("http://{}/health", host.http_addr());
    let start = Instant::now();
    let body = loop {
        let response = reqwest::get(&url).await.unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        if body["problems"]
            .to_string()
            .contains("the queue is not moving")
        {
            assert_eq!(status, 503, "{body}");
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body["problems"]
            .to_string()
            .contains("FULFILLD_QUEUE_STALL_MS = 1000 ms"),
        "{body}"
    );
    rig.wait_activated(&orders, Duration::from_secs(60)).await;
    // Once the jobs are recorded and the worker looks for more, the queue moves again.
    let start = Instant::now();
    loop {
        let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if !body["problems"].to_string().contains("not moving") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.shutdown().await;
}

/// An operator command on an embedded store another process has open (a running `serve`) stops
/// at once, naming the setting and why, and changes nothing.
#[test]
fn a_store_another_process_has_open_is_refused_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (code, err) = on_store(&state, &["cursor", "reset", "42"]);
    assert_eq!(code, Some(0), "{err}");
    let path = state.join("fulfilld.redb");
    // This test process holds it open, as `serve` would.
    let held = fulfilld::store::embedded::EmbeddedStore::open(&path).unwrap();
    let (code, err) = on_store(&state, &["cursor", "reset", "7"]);
    assert_eq!(code, Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("fulfilld: "))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    assert!(
        line.contains("FULFILLD_STATE_DIR: cannot open the embedded store")
            && line.contains("Database already open"),
        "{line}"
    );
    drop(held);
    // The refused command changed nothing: the cursor is still the one stored before.
    let output = Command::new(env!("CARGO_BIN_EXE_fulfilld"))
        .args(["cursor", "show"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FULFILLD_STATE_DIR", &state)
        .env(
            "SF_PROVISION_EVENT_CHANNEL",
            "/event/OrderProvisionRequested__e",
        )
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains("42") && !shown.contains(" 7"), "{shown}");
}

/// A journal entry something else wrote into Redis (not the host's JSON) does not hide the
/// job's story: `orders show` lists it as a `damaged` entry, as found, between the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_junk_journal_entry_is_shown_as_damaged_and_the_rest_of_the_story_stays() {
    let url = crate::pipeline::redis_url();
    let rig = crate::pipeline::Rig::new().await.with_redis(&url);
    let order = rig.orders(80, 1).remove(0);
    let host = rig.host(&[]).await;
    let (uuid, _) = rig.publish(&order);
    rig.wait_activated(
        std::slice::from_ref(&order),
        std::time::Duration::from_secs(60),
    )
    .await;
    host.shutdown().await;
    let namespace = rig.env["FULFILLD_REDIS_NAMESPACE"].clone();
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("RPUSH")
        .arg(format!("{namespace}:journal:{uuid}"))
        .arg("<script>alert(1)</script> not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let output = crate::journal::fulfilld_with(&rig, &[], &["orders", "show", &order, "--json"]);
    assert!(output.status.success(), "{}", crate::common::text(&output));
    let view: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let journal = view["jobs"][0]["journal"].as_array().unwrap();
    let damaged: Vec<_> = journal.iter().filter(|e| e["event"] == "damaged").collect();
    assert_eq!(damaged.len(), 1, "{view:#}");
    assert!(
        damaged[0]["problem"]
            .as_str()
            .unwrap()
            .contains("not a journal entry")
    );
    assert_eq!(damaged[0]["found"], "<script>alert(1)</script> not json");
    assert!(journal.iter().any(|e| e["event"] == "finished"), "{view:#}");
    assert_eq!(
        view["jobs"][0]["state"], "completed",
        "the damaged entry changes no state"
    );
    let output = crate::journal::fulfilld_with(&rig, &[], &["orders", "show", &order]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("damaged entry"),
        "{}",
        crate::common::text(&output)
    );
}

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

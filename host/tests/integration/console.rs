//! The operators' console in a real browser: headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs) driven by `tests/browser/console.mjs` (puppeteer-core, pinned in
//! `tests/browser/package-lock.json`) against `serve`'s admin listener. It searches an Order and
//! sees its steps, requeues a dead letter (refused without the token), and leaves screenshots in
//! `target/console-screenshots/` for a person to look at.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::pipeline::{Rig, get, redis_url, wait_record};
use crate::thirdparty::run_bounded;

const TOKEN: &str = "console-test-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_in_a_real_browser_finds_an_order_and_requeues_a_dead_letter() {
    let rig = Rig::new().await.with_redis(&redis_url());
    let store = rig.store().await;

    // A component the sandbox stops: its job ends in the dead letters.
    let dead_order = rig.orders(50, 1).remove(0);
    let panic = crate::common::component("fixture_panic");
    let host = rig
        .host(&[("FULFILLD_COMPONENT", panic.to_str().unwrap())])
        .await;
    let (dead_uuid, _) = rig.publish(&dead_order);
    let mut waited = 0;
    while store.dead_letter_count(&rig.channel).await.unwrap() == 0 {
        assert!(waited < 600, "the trapping job was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    host.shutdown().await;

    // The default component, with the admin API (and the console) on.
    let host = rig
        .host(&[
            ("FULFILLD_ADMIN_TOKEN", TOKEN),
            ("FULFILLD_JOURNAL_CAPTURE", "true"),
        ])
        .await;
    let ok_order = rig.orders(51, 1).remove(0);
    let (ok_uuid, _) = rig.publish(&ok_order);
    rig.wait_activated(std::slice::from_ref(&ok_order), Duration::from_secs(60))
        .await;
    wait_record(&store, &ok_uuid).await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser = root.join("tests/browser");
    assert!(
        browser.join("node_modules/puppeteer-core").is_dir(),
        "puppeteer-core is not installed: run `make browser-client` (make test does)"
    );
    let shots = root.join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let admin = host
        .admin_addr()
        .expect("the admin listener is on with a token");
    let mut command = Command::new("node");
    command
        .current_dir(&browser)
        .arg("console.mjs")
        .env("CONSOLE_URL", format!("http://{admin}"))
        .env("ADMIN_TOKEN", TOKEN)
        .env("ORDER_ID", &ok_order)
        .env("DEAD_ORDER_ID", &dead_order)
        .env("SCREENSHOT_DIR", &shots);
    let logs = tempfile::tempdir().unwrap();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let result = run_bounded(command, logs.path(), "console", Duration::from_secs(240));
        drop(logs);
        result
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "the browser test failed:\n{out}\n{err}");
    for step in [
        "overview",
        "order",
        "dead-letters",
        "requeued",
        "components",
    ] {
        let shot = shots.join(format!("{step}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "no screenshot {} ({size} bytes)",
            shot.display()
        );
    }

    // The API the page reads, with hostile input: a long id names nothing, an unknown state is
    // named, a huge limit is held, a write without the token is refused.
    let http = reqwest::Client::new();
    let base = format!("http://{admin}");
    let long = "8".repeat(5000);
    let (status, body) = get(&format!("{base}/admin/orders/{long}")).await;
    assert_eq!(status, 404);
    assert!(body.contains("no job is known"));
    let (status, body) = get(&format!("{base}/admin/jobs?state=stuck")).await;
    assert_eq!(status, 400);
    assert!(body.contains("queued, running, failed, dead"));
    let (status, _) = get(&format!("{base}/admin/jobs?state=failed&limit=100000000")).await;
    assert_eq!(status, 200);
    let answer = http
        .post(format!("{base}/admin/dead-letters/1/requeue"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    // Captured bodies only with the token; the timeline without.
    let order_url = format!("{base}/admin/orders/{ok_order}");
    let anonymous: serde_json::Value = serde_json::from_str(&get(&order_url).await.1).unwrap();
    let calls = |view: &serde_json::Value| -> Vec<serde_json::Value> {
        view["jobs"][0]["journal"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "call")
            .cloned()
            .collect()
    };
    assert!(!calls(&anonymous).is_empty());
    assert!(
        calls(&anonymous)
            .iter()
            .all(|c| c.get("answer").is_none() && c.get("request").is_none()),
        "{anonymous:#}"
    );
    let with_token: serde_json::Value = http
        .get(&order_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(calls(&with_token).iter().any(|c| c.get("answer").is_some()));
    // A page that rebinds its own name to 127.0.0.1 is not served (DNS rebinding).
    let answer = http
        .get(format!("{base}/admin/overview"))
        .header("Host", format!("attacker.example:{}", admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 421);

    // What the browser did happened: the dead letter is gone, its job ran again and its
    // journal says it was requeued.
    assert_eq!(store.dead_letter_count(&rig.channel).await.unwrap(), 0);
    let journal = store.journal(&dead_uuid).await.unwrap();
    assert!(
        journal
            .iter()
            .any(|e| matches!(e.event, fulfilld::store::JournalEvent::Requeued { .. })),
        "{journal:?}"
    );
    // It runs again (the Order is Failed by now, so the rules skip it) and is recorded.
    wait_record_within(&store, &dead_uuid, Duration::from_secs(60)).await;
    host.shutdown().await;
}

async fn wait_record_within(store: &fulfilld::store::SharedStore, uuid: &str, limit: Duration) {
    let start = std::time::Instant::now();
    while store.job_record(uuid).await.unwrap().is_none() {
        assert!(
            start.elapsed() < limit,
            "no record for {uuid} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

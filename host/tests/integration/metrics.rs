//! `/metrics` serves what `docs/operations.md` documents: every metric of its table, with the
//! documented type, in the OpenMetrics text format, and values that follow what the host did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fulfilld::domain::random_uuid;

use crate::pipeline::{Rig, redis_url};

/// The guide's metric table: name -> type (`counter`, `gauge`, `histogram`).
fn documented_metrics() -> BTreeMap<String, String> {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let section = guide
        .split("\n## `/metrics`\n")
        .nth(1)
        .expect("docs/operations.md has a /metrics section");
    section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells
                .next()?
                .strip_prefix("`fulfilld_")?
                .strip_suffix('`')?;
            let kind = cells.next()?.to_owned();
            Some((format!("fulfilld_{name}"), kind))
        })
        .collect()
}

/// The value of the sample `line_start` (a metric name with its labels, as served).
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_guide_documents_is_served_with_its_type() {
    let documented = documented_metrics();
    assert!(documented.len() >= 20, "{documented:?}");

    let rig = Rig::new().await.with_redis(&redis_url());
    let host = rig.host(&[]).await;
    let orders = rig.orders(1, 3);
    let uuid = random_uuid();
    rig.publish_with_uuid(&orders[0], &uuid);
    rig.publish_with_uuid(&orders[0], &uuid);
    rig.publish(&orders[1]);
    rig.publish(&orders[2]);
    rig.wait_activated(&orders, Duration::from_secs(60)).await;

    let url = format!("http://{}/metrics", host.http_addr());
    let client = reqwest::Client::new();
    // The counters follow the jobs' records by a moment: wait for the last one.
    let start = Instant::now();
    let (content_type, text) = loop {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let text = response.text().await.unwrap();
        if sample(
            &text,
            "fulfilld_jobs_total{outcome=\"completed\",code=\"\",component=\"fulfillment@0.1.0\"}",
        ) == Some(3.0)
            && sample(&text, "fulfilld_queue_depth") == Some(0.0)
        {
            break (content_type, text);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");

    for (name, kind) in &documented {
        // OpenMetrics names a counter's family without its `_total` suffix.
        let family = match kind.as_str() {
            "counter" => name.strip_suffix("_total").unwrap_or(name),
            "gauge" | "histogram" => name.as_str(),
            other => panic!("{name}: the guide gives an unknown type {other:?}"),
        };
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "{name} ({kind}) is documented but not served as one:\n{text}"
        );
    }
    // And nothing served that the guide leaves out.
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (family, kind) = (parts.next().unwrap(), parts.next().unwrap());
            let name = if kind == "counter" {
                format!("{family}_total")
            } else {
                family.to_owned()
            };
            assert!(
                documented.contains_key(&name),
                "{name} is served but not in docs/operations.md"
            );
        }
    }

    // Values that follow what happened: 4 events, one of them a duplicate; 3 jobs completed.
    assert_eq!(sample(&text, "fulfilld_events_received_total"), Some(4.0));
    assert_eq!(sample(&text, "fulfilld_events_enqueued_total"), Some(3.0));
    assert_eq!(sample(&text, "fulfilld_events_duplicate_total"), Some(1.0));
    assert_eq!(
        sample(&text, "fulfilld_events_dead_lettered_total"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "fulfilld_subscription_leader"), Some(1.0));
    assert_eq!(sample(&text, "fulfilld_subscription_connected"), Some(1.0));
    assert_eq!(sample(&text, "fulfilld_dead_letters"), Some(0.0));
    assert_eq!(
        sample(&text, "fulfilld_lease_changes_total{change=\"acquired\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "fulfilld_job_latency_seconds_count"),
        Some(3.0)
    );
    assert!(
        sample(
            &text,
            "fulfilld_host_calls_total{op=\"billing.call\",outcome=\"ok\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{text}"
    );
    host.shutdown().await;
}

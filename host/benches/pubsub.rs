//! Subscribe + Avro decode throughput: the host's subscriber reading pre-published
//! `OrderProvisionRequested__e` events from the sandbox Pub/Sub server over loopback gRPC.
//!
//! The server runs in a child process (this same binary with `--serve`), so the CPU time and
//! peak memory reported are the client's alone. Prints events/s, client CPU per event and peak
//! RSS; `docs/benchmarks.md` records the results.
//!
//! Run with `make bench`. Events: `FULFILLD_BENCH_EVENTS` (default 200000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulfilld::fake::{FakeOrg, FakeSalesforceOptions, serve_fake_salesforce};
use fulfilld::http::http_client;
use fulfilld::pubsub::{Delivery, ReplayFrom, SubscriberOptions, avro, subscribe};
use fulfilld::salesforce::{SalesforceClient, SalesforceConfig};
use fulfilld::sandbox::{
    ORDER_EVENT_TOPIC, PubSubOptions, PubSubSandbox, TokenCheck, order_event_schema_v1,
};
use fulfilld::secret::Secret;
use tokio::net::TcpListener;

#[path = "support/machine.rs"]
mod machine;

const PRIVATE_KEY: &str = include_str!("../../tests/keys/test_private.pem");
const PUBLIC_KEY: &str = include_str!("../../tests/keys/test_public.pem");

fn events() -> usize {
    std::env::var("FULFILLD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

struct AnyToken;

impl TokenCheck for AnyToken {
    fn check(&self, access_token: &str, _: &str, _: &str) -> bool {
        !access_token.is_empty()
    }
}

/// Child: the fake org and the Pub/Sub sandbox with `n` events already published.
async fn serve(n: usize) {
    let opts = FakeSalesforceOptions {
        public_key_pem: PUBLIC_KEY.into(),
        ..FakeSalesforceOptions::default()
    };
    let org = serve_fake_salesforce(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        opts,
        Arc::new(Mutex::new(FakeOrg::new())),
    )
    .await
    .unwrap();
    let sandbox = PubSubSandbox::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        PubSubOptions::default(),
        Arc::new(AnyToken),
    )
    .await
    .unwrap();
    let bus = sandbox.bus();
    for i in 0..n {
        let order = format!("801B{i:013}");
        bus.publish_order(
            ORDER_EVENT_TOPIC,
            &order,
            &fulfilld::testkit::test_uuid(&order),
        )
        .unwrap();
    }
    println!("READY {} {}", sandbox.endpoint(), org.url());
    std::io::stdout().flush().unwrap();
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .unwrap();
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks (100 Hz on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Peak resident set size in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn decode_only(n: usize) -> f64 {
    let schema = avro::parse_schema(order_event_schema_v1()).unwrap();
    let mut fields = serde_json::Map::new();
    fields.insert("CreatedDate".into(), 1_764_000_000_000_i64.into());
    fields.insert("CreatedById".into(), "005xx000001Sv6eAAC".into());
    fields.insert("OrderId__c".into(), "801xx000003DIloAAG".into());
    let payload = avro::encode(&schema, &fields).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(avro::decode(&schema, std::hint::black_box(&payload)).unwrap());
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn client(n: usize) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .arg("--serve")
        .env("FULFILLD_BENCH_EVENTS", n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let mut parts = ready.split_whitespace().skip(1);
    let endpoint = parts.next().unwrap().parse().unwrap();
    let login_url = parts.next().unwrap().parse().unwrap();

    let defaults = FakeSalesforceOptions::default();
    let sf = SalesforceClient::new(
        SalesforceConfig {
            login_url,
            client_id: defaults.client_id,
            username: defaults.username,
            private_key_pem: Secret::new(PRIVATE_KEY),
            audience: defaults.audience,
            api_version: "v66.0".into(),
            timeout: Duration::from_secs(10),
        },
        http_client(Duration::from_secs(10)).unwrap(),
    )
    .unwrap();
    let mut opts = SubscriberOptions::new(endpoint, ORDER_EVENT_TOPIC);
    opts.start = ReplayFrom::Earliest;

    let cpu_before = cpu_time();
    let start = Instant::now();
    let mut sub = subscribe(opts, Arc::new(sf)).unwrap();
    let mut received = 0;
    let mut first_at = None;
    while received < n {
        match sub.next().await.unwrap() {
            Delivery::Event(event) => {
                std::hint::black_box(&event);
                received += 1;
                first_at.get_or_insert_with(Instant::now);
            }
            Delivery::Cursor(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    let streaming = first_at.map(|t| t.elapsed()).unwrap_or(elapsed);
    let cpu = cpu_time() - cpu_before;
    sub.close().await;
    drop(child.stdin.take());
    let _ = child.wait();

    println!("pubsub subscribe + decode, {n} events from the sandbox over loopback gRPC");
    println!(
        "  throughput: {:>9.0} events/s (wall {:.2} s incl. connect, auth, GetTopic, GetSchema)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  streaming:  {:>9.0} events/s (first event to last)",
        n as f64 / streaming.as_secs_f64()
    );
    println!(
        "  client CPU: {:.2} s ({:.2} µs/event, {:.0}% of one core)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    println!("  client peak RSS: {} MiB", peak_rss_kib() / 1024);
    println!(
        "  Avro decode alone: {:>9.0} events/s on one core",
        decode_only(n.min(200_000))
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|arg| arg == "--serve") {
        runtime.block_on(serve(events()));
    } else {
        machine::print_start("pubsub", None);
        runtime.block_on(client(events()));
        machine::print_end("pubsub");
    }
}

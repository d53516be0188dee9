//! Hot swap: what putting a new component version live costs a running host.
//!
//! - **Compile versus cached load**: `Runtime::load` (world check, compile, link, `info()`; a
//!   fresh compile every time, nothing is cached: the engine has no compilation cache
//!   configured) against `Runtime::load_cached` on a warm artifact cache (check, deserialize the
//!   compiled artifact, link, `info()`), for `fulfillment.wasm` and `fixture_rules_v2.wasm`.
//!   One untimed load of each kind first, then `FULFILLD_BENCH_LOADS` (default 5) of each.
//! - **Swap latency**: `fulfilld serve`'s host in this process (`Host::from_config` with a
//!   registry and the admin API), the sandbox in this process too, Redis when it answers (else
//!   the embedded store), under a constant paced load (`FULFILLD_BENCH_SWAP_RATE` events/s,
//!   default 150). After a steady stretch, v2 (`fixture_rules_v2.wasm`, never seen by this host:
//!   it compiles) is deployed with `POST /admin/components?activate=true`, then
//!   `FULFILLD_BENCH_SWAPS` (default 5) times `POST /admin/components/<v1>/activate` (back to
//!   v1, already deployed and compiled) followed by `POST /admin/rollback` (to v2 again). For
//!   each call: its duration, when the host's live version (`shared().component`) became the
//!   target (go-live, from the call's start), and the time from the response to the first job
//!   that ran on the target finishing (its job record's `finished_at_ms`).
//! - **Job latency during swaps**: publish time -> job record's `finished_at_ms`, per event.
//!   Steady: the events published in the stretch before the first call. Swap: the events
//!   published from 100 ms before a call starts to 1 s after its response.
//!
//! Every Order published must end Activated with exactly one WHMCS order, every job completed
//! on v1 or v2.
//!
//! Run with `make bench` (needs `make components`) or `cargo bench -p fulfilld --bench swap`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/machine.rs"]
mod machine;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulfilld::config::Config;
use fulfilld::domain::random_uuid;
use fulfilld::pipeline::{Host, Shared};
use fulfilld::registry::sha256_hex;
use fulfilld::runtime::{CacheUse, Runtime, RuntimeConfig};
use fulfilld::sandbox::{
    ACME_ACCOUNT, EventBus, Sandbox, SandboxConfig, add_orders, order_event_schema_v1,
};
use fulfilld::store::JobRecord;
use support::{component, now_us, percentile, redis_cleanup, redis_reachable, redis_url, setting};

const V1: &str = "fulfillment.wasm";
const V2: &str = "fixture_rules_v2.wasm";
const TOKEN: &str = "swap-bench-admin-token-not-a-secret";

/// Orders published at once to warm the host up (token, connections, pooled instances).
const WARMUP: usize = 50;
/// The stretch with no swap that the steady latencies come from.
const STEADY: Duration = Duration::from_secs(10);
/// Calls start this far apart (plus 0 to 400 ms), and at least `AFTER` after the previous
/// response.
const SPACING: Duration = Duration::from_millis(2500);
/// The swap window runs from `BEFORE_US` µs before a call to `AFTER` after its response.
const BEFORE_US: i64 = 100_000;
const AFTER: Duration = Duration::from_secs(1);
/// Upper bound on the paced stretch (sizes the pool of Orders).
const MAX_PACED: Duration = Duration::from_secs(90);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "median (min – max)" of sorted samples, ms.
fn spread(sorted: &[f64]) -> String {
    format!(
        "{:.1} ({:.1} – {:.1}) ms",
        percentile(sorted, 50.0),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    )
}

// ---------------------------------------------------------------------------------------------
// Compile versus cached load

struct LoadTimes {
    file: &'static str,
    size: usize,
    /// `Runtime::load`, ms, sorted.
    compile: Vec<f64>,
    /// `Runtime::load_cached`, artifact cache hit, ms, sorted.
    cached: Vec<f64>,
}

async fn load_times(file: &'static str, reps: usize) -> LoadTimes {
    let wasm = std::fs::read(component(file)).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Untimed: a first compile, and the one that fills the cache.
    drop(runtime.load(&wasm).await.unwrap());
    let (filled, used) = runtime.load_cached(&wasm, cache.path()).await.unwrap();
    assert_eq!(used, CacheUse::Miss, "{file}: the cache starts empty");
    drop(filled);
    let (mut compile, mut cached) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let clock = Instant::now();
        let loaded = runtime.load(&wasm).await.unwrap();
        compile.push(ms(clock.elapsed()));
        drop(loaded);
        let clock = Instant::now();
        let (loaded, used) = runtime.load_cached(&wasm, cache.path()).await.unwrap();
        cached.push(ms(clock.elapsed()));
        assert_eq!(used, CacheUse::Hit, "{file}: the cache is warm");
        drop(loaded);
    }
    compile.sort_by(f64::total_cmp);
    cached.sort_by(f64::total_cmp);
    LoadTimes {
        file,
        size: wasm.len(),
        compile,
        cached,
    }
}

// ---------------------------------------------------------------------------------------------
// A host with a registry and the admin API, the sandbox in this process

struct Bed {
    sandbox: Sandbox,
    channel: String,
    config: Config,
    /// The Redis namespace, when the store is Redis.
    namespace: Option<String>,
    _dir: tempfile::TempDir,
}

impl Bed {
    async fn new(redis: bool) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::start(SandboxConfig {
            state_dir: Some(dir.path().join("sandbox")),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let channel = format!("/event/Swap{}__e", &random_uuid().replace('-', "")[..12]);
        sandbox
            .pubsub()
            .bus()
            .create_topic(&channel, order_event_schema_v1())
            .unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut env = sandbox.env().clone();
        for (key, value) in [
            ("SF_PROVISION_EVENT_CHANNEL", channel.clone()),
            ("SF_EVENTS_REPLAY", "ALL".into()),
            ("FULFILLD_COMPONENT", component(V1).display().to_string()),
            ("FULFILLD_HTTP_ADDR", "127.0.0.1:0".into()),
            ("FULFILLD_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("FULFILLD_ENV", "bench".into()),
            ("FULFILLD_STATE_DIR", path("store")),
            ("FULFILLD_REGISTRY_DIR", path("registry")),
            ("FULFILLD_ADMIN_TOKEN", TOKEN.into()),
        ] {
            env.insert(key.to_owned(), value);
        }
        let namespace = redis.then(|| format!("fulfilld-swap-bench-{}", &random_uuid()[..8]));
        if let Some(ns) = &namespace {
            env.insert("REDIS_URL".into(), redis_url());
            env.insert("FULFILLD_REDIS_NAMESPACE".into(), ns.clone());
        }
        let config = Config::from_lookup(|key| env.get(key).cloned()).unwrap();
        Bed {
            sandbox,
            channel,
            config,
            namespace,
            _dir: dir,
        }
    }

    fn bus(&self) -> EventBus {
        self.sandbox.pubsub().bus()
    }

    /// Every Order Activated with a WHMCS order of its own, and WHMCS holding no other.
    fn assert_exactly_once(&self, orders: &[String]) {
        let org = self.sandbox.salesforce().org();
        let org = org.lock().unwrap();
        let mut whmcs_ids = BTreeSet::new();
        for id in orders {
            let order = org.get("Order", id).unwrap();
            let field = |name: &str| order.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            assert_eq!(
                field("Activation_Status__c").as_deref(),
                Some("Activated"),
                "Order {id}"
            );
            whmcs_ids.insert(field("WHMCS_Order_ID__c").unwrap());
        }
        assert_eq!(whmcs_ids.len(), orders.len(), "distinct WHMCS orders");
        let whmcs = self.sandbox.whmcs().whmcs().lock().unwrap().orders().len();
        assert_eq!(whmcs, orders.len(), "one WHMCS order per Order");
    }
}

/// Publishes `orders` in turn at `rate` per second on a fixed schedule (a late publish does not
/// move the next one) until `stop`; returns each event's uuid and publish time (µs).
fn paced_publisher(
    bus: EventBus,
    channel: String,
    orders: Vec<String>,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, i64)>> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut sent = Vec::with_capacity(orders.len());
        for (n, order) in orders.iter().enumerate() {
            tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
            if stop.load(Ordering::Relaxed) {
                return sent;
            }
            let uuid = random_uuid();
            bus.publish_order(&channel, order, &uuid).unwrap();
            sent.push((uuid, now_us()));
        }
        panic!("the paced load ran out of Orders ({})", orders.len());
    })
}

/// Samples the host's live version every millisecond until `stop`; returns each change (µs,
/// sha256).
fn version_changes(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(i64, String)>> {
    tokio::spawn(async move {
        let mut live = shared.component.load().digest().to_owned();
        let mut changes = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = shared.component.load();
            if now.digest() != live {
                live = now.digest().to_owned();
                changes.push((now_us(), live.clone()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        changes
    })
}

async fn wait_jobs(host: &Host, total: u64) {
    let clock = Instant::now();
    let metrics = &host.shared().metrics;
    while metrics.job_latency.count() < total {
        assert!(
            clock.elapsed() < Duration::from_secs(120),
            "{} of {total} jobs finished after 120 s",
            metrics.job_latency.count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn job_record(host: &Host, uuid: &str) -> JobRecord {
    for _ in 0..100 {
        if let Some(record) = host.shared().store.job_record(uuid).await.unwrap() {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no job record for event {uuid}");
}

// ---------------------------------------------------------------------------------------------
// The calls

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `POST /admin/components?activate=true` with v2's bytes: a version never seen.
    Deploy,
    /// `POST /admin/components/<v1>/activate`: a version deployed and compiled before.
    Activate,
    /// `POST /admin/rollback`.
    Rollback,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Deploy => "deploy v2 (new version, ?activate=true)",
            Call::Activate => "activate v1 (deployed before)",
            Call::Rollback => "rollback (to v2)",
        }
    }
}

struct Swap {
    call: Call,
    /// The version the call made live.
    target: String,
    start_us: i64,
    response_us: i64,
    /// Request sent -> response read.
    duration: Duration,
    /// Call start -> the host's live version is the target.
    go_live_ms: Option<f64>,
    /// Response -> the first job that ran on the target finished (its `finished_at_ms`).
    first_job_ms: Option<f64>,
}

async fn admin_call(
    http: &reqwest::Client,
    base: &str,
    call: Call,
    v1: &str,
    v2_wasm: &[u8],
) -> Swap {
    let request = match call {
        Call::Deploy => http
            .post(format!("{base}/components?activate=true"))
            .header("x-deployed-by", "swap-bench")
            .body(v2_wasm.to_vec()),
        Call::Activate => http.post(format!("{base}/components/{v1}/activate")),
        Call::Rollback => http.post(format!("{base}/rollback")),
    }
    .bearer_auth(TOKEN);
    let start_us = now_us();
    let clock = Instant::now();
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    let duration = clock.elapsed();
    let response_us = now_us();
    assert!(status.is_success(), "{call:?}: {status} {body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let meta = match call {
        Call::Deploy => &body["deployed"],
        Call::Activate | Call::Rollback => &body["active"],
    };
    Swap {
        call,
        target: meta["sha256"].as_str().unwrap().to_owned(),
        start_us,
        response_us,
        duration,
        go_live_ms: None,
        first_job_ms: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct SwapRun {
    store: &'static str,
    rate: f64,
    events: usize,
    swaps: Vec<Swap>,
    /// Changes of the live version seen, against the calls made.
    changes: usize,
    /// Publish -> job recorded, ms, sorted: steady, every swap window, the deploy's window, the
    /// activations' and rollbacks' windows.
    steady: Vec<f64>,
    during: Vec<f64>,
    during_deploy: Vec<f64>,
    during_cached: Vec<f64>,
    on_v2: usize,
}

async fn swap_run(redis: bool, rate: f64, cycles: usize) -> SwapRun {
    let bed = Bed::new(redis).await;
    let pool = WARMUP + (rate * MAX_PACED.as_secs_f64()) as usize;
    let orders = {
        let org = bed.sandbox.salesforce().org();
        let mut org = org.lock().unwrap();
        add_orders(&mut org, ACME_ACCOUNT, 1, pool as u64).unwrap()
    };
    let v1_wasm = std::fs::read(component(V1)).unwrap();
    let v2_wasm = std::fs::read(component(V2)).unwrap();
    let (v1, v2) = (sha256_hex(&v1_wasm), sha256_hex(&v2_wasm));
    assert_ne!(v1, v2);

    let host = Host::from_config(&bed.config).await.unwrap();
    assert_eq!(host.shared().component.load().digest(), v1);
    let base = format!("http://{}/admin", host.admin_addr().unwrap());
    let http = reqwest::Client::new();

    // Warm-up.
    let bus = bed.bus();
    for order in &orders[..WARMUP] {
        bus.publish_order(&bed.channel, order, &random_uuid())
            .unwrap();
    }
    wait_jobs(&host, WARMUP as u64).await;

    // The paced load; a steady stretch; then the calls.
    let stop_versions = Arc::new(AtomicBool::new(false));
    let versions = version_changes(Arc::clone(host.shared()), Arc::clone(&stop_versions));
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = paced_publisher(
        bus,
        bed.channel.clone(),
        orders[WARMUP..].to_vec(),
        rate,
        Arc::clone(&stop_load),
    );
    let paced_from = now_us();
    let clock = Instant::now();
    tokio::time::sleep(STEADY).await;
    let steady_until = now_us();
    tokio::time::sleep(SPACING - AFTER).await;
    let mut plan = vec![Call::Deploy];
    for _ in 0..cycles {
        plan.extend([Call::Activate, Call::Rollback]);
    }
    let mut swaps = Vec::new();
    for (n, &call) in plan.iter().enumerate() {
        let started = clock.elapsed();
        let swap = admin_call(&http, &base, call, &v1, &v2_wasm).await;
        let expected = if call == Call::Activate { &v1 } else { &v2 };
        assert_eq!(&swap.target, expected, "call {n}: {call:?}");
        swaps.push(swap);
        // The next call (or the end of the load) once this call's window is over, at an offset
        // that varies from call to call: a call does not land at the same phase of the load
        // (the subscriber renews its demand every 50 events, see docs/benchmarks.md) every time.
        let offset = Duration::from_millis((n as u64 * 157) % 400);
        let next =
            (started + SPACING + offset).max(clock.elapsed() + AFTER + Duration::from_millis(200));
        tokio::time::sleep(next.saturating_sub(clock.elapsed())).await;
        assert!(clock.elapsed() < MAX_PACED, "the calls took too long");
    }
    stop_load.store(true, Ordering::Relaxed);
    let published = load.await.unwrap();
    wait_jobs(&host, (WARMUP + published.len()) as u64).await;
    stop_versions.store(true, Ordering::Relaxed);
    let changes = versions.await.unwrap();

    // Every job completed, on v1 or v2; every Order Activated once.
    let mut records = BTreeMap::new();
    for (uuid, at_us) in &published {
        let record = job_record(&host, uuid).await;
        assert_eq!(record.outcome, "completed", "{record:?}");
        assert!(
            record.component_sha256 == v1 || record.component_sha256 == v2,
            "a job on neither v1 nor v2: {record:?}"
        );
        records.insert(uuid.clone(), (*at_us, record));
    }
    bed.assert_exactly_once(&orders[..WARMUP + published.len()]);

    // Per call: go-live and the first job on the target.
    for swap in &mut swaps {
        swap.go_live_ms = changes
            .iter()
            .find(|(at, sha)| *at >= swap.start_us && *sha == swap.target)
            .map(|(at, _)| (at - swap.start_us) as f64 / 1e3);
        swap.first_job_ms = records
            .values()
            .filter(|(_, r)| {
                r.component_sha256 == swap.target && r.finished_at_ms * 1000 >= swap.start_us
            })
            .map(|(_, r)| r.finished_at_ms)
            .min()
            .map(|finished| (finished * 1000 - swap.response_us) as f64 / 1e3);
    }

    // Latency: steady stretch against the swap windows.
    let latency =
        |record: &JobRecord, at_us: i64| (record.finished_at_ms * 1000 - at_us) as f64 / 1e3;
    let in_window = |swap: &Swap, at_us: i64| {
        at_us >= swap.start_us - BEFORE_US && at_us <= swap.response_us + AFTER.as_micros() as i64
    };
    let (mut steady, mut during, mut during_deploy, mut during_cached) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (at_us, record) in records.values() {
        let ms = latency(record, *at_us);
        if (paced_from..steady_until).contains(at_us) {
            steady.push(ms);
        }
        let Some(swap) = swaps.iter().find(|s| in_window(s, *at_us)) else {
            continue;
        };
        during.push(ms);
        if swap.call == Call::Deploy {
            during_deploy.push(ms);
        } else {
            during_cached.push(ms);
        }
    }
    for samples in [
        &mut steady,
        &mut during,
        &mut during_deploy,
        &mut during_cached,
    ] {
        samples.sort_by(f64::total_cmp);
    }
    let on_v2 = records
        .values()
        .filter(|(_, r)| r.component_sha256 == v2)
        .count();

    host.shutdown().await;
    if let Some(ns) = &bed.namespace {
        redis_cleanup(&redis_url(), ns, &bed.channel).await;
    }
    SwapRun {
        store: if redis { "redis" } else { "embedded" },
        rate,
        events: published.len(),
        swaps,
        changes: changes.len(),
        steady,
        during,
        during_deploy,
        during_cached,
        on_v2,
    }
}

// ---------------------------------------------------------------------------------------------

fn summary(values: impl Iterator<Item = Option<f64>>) -> String {
    let mut values: Vec<f64> = values.flatten().collect();
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    format!(
        "{:.1} / {:.1} ms",
        percentile(&values, 50.0),
        values.last().unwrap()
    )
}

fn print_latency(name: &str, sorted: &[f64]) {
    println!(
        "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
}

async fn bench() {
    fulfilld::http::install_crypto_provider();
    let reps: usize = setting("FULFILLD_BENCH_LOADS", 5);
    let rate: f64 = setting("FULFILLD_BENCH_SWAP_RATE", 150.0);
    let cycles: usize = setting("FULFILLD_BENCH_SWAPS", 5);
    machine::print_start("swap", Some(&component("fulfillment.wasm")));

    println!(
        "swap: compile (`Runtime::load`) versus cached load (`Runtime::load_cached`, warm cache), {reps} each"
    );
    println!(
        "| component | size | `load` (check + compile + link + info) median (min – max) | `load_cached` hit median (min – max) | compile / cached |"
    );
    println!("|---|---|---|---|---|");
    for file in [V1, V2] {
        let t = load_times(file, reps).await;
        println!(
            "| {} | {} KB | {} | {} | {:.0}x |",
            t.file,
            t.size / 1000,
            spread(&t.compile),
            spread(&t.cached),
            percentile(&t.compile, 50.0) / percentile(&t.cached, 50.0),
        );
    }

    let redis = redis_reachable(&redis_url()).await;
    if !redis {
        println!(
            "no Redis at {} (set FULFILLD_TEST_REDIS_URL): the embedded store",
            redis_url()
        );
    }
    let run = swap_run(redis, rate, cycles).await;
    println!();
    println!(
        "swap: under {:.0} events/s on {} ({} events, {} on v2), every call in order",
        run.rate, run.store, run.events, run.on_v2
    );
    println!(
        "| # | call | call duration | go-live (from call start) | response -> first job on the target finished |"
    );
    println!("|---|---|---|---|---|");
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    for (n, swap) in run.swaps.iter().enumerate() {
        println!(
            "| {} | {} | {:.1} ms | {} | {} |",
            n + 1,
            swap.call.name(),
            ms(swap.duration),
            show(swap.go_live_ms),
            show(swap.first_job_ms),
        );
    }
    println!(
        "live-version changes seen: {} for {} calls",
        run.changes,
        run.swaps.len()
    );
    println!();
    println!("swap: per kind of call, median / max");
    println!(
        "| call | n | call duration | go-live (from call start) | response -> first job on the target finished |"
    );
    println!("|---|---|---|---|---|");
    for call in [Call::Deploy, Call::Activate, Call::Rollback] {
        let of: Vec<&Swap> = run.swaps.iter().filter(|s| s.call == call).collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            call.name(),
            of.len(),
            summary(of.iter().map(|s| Some(ms(s.duration)))),
            summary(of.iter().map(|s| s.go_live_ms)),
            summary(of.iter().map(|s| s.first_job_ms)),
        );
    }
    println!();
    println!(
        "swap: job latency (publish -> job record's finished_at_ms), steady versus swap windows (100 ms before a call to 1 s after its response)"
    );
    println!("| events published | events | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    print_latency("steady (no swap)", &run.steady);
    print_latency("during swaps (every call)", &run.during);
    print_latency("during the deploy (compiles v2)", &run.during_deploy);
    print_latency("during activate / rollback", &run.during_cached);
    println!(
        "p99 during swaps / p99 steady: {:.2}x",
        percentile(&run.during, 99.0) / percentile(&run.steady, 99.0)
    );
    machine::print_end("swap");
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

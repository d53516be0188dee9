//! The pipeline under load: `fulfilld serve`'s real path, from the sandbox's Pub/Sub stream to the
//! store, and from a published event to an Activated Order.
//!
//! - **Ingest**: N events are published into a fresh topic before the host starts; the host runs
//!   ingest only (`FULFILLD_WORKERS=0`, `SF_EVENTS_REPLAY=ALL`): gRPC stream -> Avro decode ->
//!   `Store::ingest` batches (jobs, dedupe, cursor) under the lease. The clock runs from
//!   `Host::from_config` until the committed cursor is the topic's latest replay id; then the
//!   queue must hold exactly N jobs. On Redis and on the embedded store.
//! - **End to end**: approved Orders in the fake org; the host with W workers and the built
//!   default component. Three runs, each on a fresh sandbox and host after 50 warm-up orders:
//!   burst (all M events published at once, timed until every job is recorded), paced (at half
//!   the burst rate) and light (100 events at 20/s). Latency per event: the job record's
//!   `finished_at_ms` minus the publish time. Every Order is then checked Activated in the fake
//!   org, with one WHMCS order each. The fake org finds a record by id (`WHERE Id =`, and
//!   relationships) through an index, so those lookups do not grow with the Orders it holds
//!   (M + 50 here).
//!
//! The sandbox (Pub/Sub, the fake org, the fake WHMCS) runs in a child process (this binary with
//! `--serve`), so the CPU figures separate the host from the sandbox; both share the machine.
//!
//! Run with `make bench` (needs `make components`). Settings: `FULFILLD_BENCH_EVENTS` (ingest
//! events, default 100000), `FULFILLD_BENCH_ORDERS` (end-to-end orders, default 2000),
//! `FULFILLD_BENCH_WORKERS` (worker counts, default `2,4,8`), `FULFILLD_BENCH_STORES` (default
//! `redis,cluster,embedded`; `cluster` is a 3-primary Redis Cluster with a replica each that the
//! bench starts itself on free ports), `FULFILLD_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/machine.rs"]
mod machine;
#[path = "../tests/support/redis_servers.rs"]
mod redis_servers;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulfilld::config::Config;
use fulfilld::domain::{ReplayId, random_uuid};
use fulfilld::pipeline::Host;
use fulfilld::sandbox::{ACME_ACCOUNT, Sandbox, SandboxConfig, add_orders, order_event_schema_v1};
use support::{component, now_us, percentile, redis_cleanup, redis_reachable, redis_url, setting};

// ---------------------------------------------------------------------------------------------
// Settings

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The child: the whole sandbox, driven by one-line commands on stdin, answering `OK ...`.
//
//   topic <channel>                           create a topic (schema v1)
//   fill <channel> <n>                        publish n events (no such Orders); -> latest replay id
//   orders <count>                            add approved Orders to the fake org
//   publish <channel> <from> <to> <per_s>     publish the events of Orders [from, to) (0: at once)
//                                             -> `<uuid>:<publish time, µs since the epoch>,...`
//   status <from> <to>                        -> `<Activated> <WHMCS orders>`

async fn serve() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        state_dir: Some(dir.path().to_owned()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "READY {}",
        serde_json::to_string(sandbox.env()).unwrap()
    )
    .unwrap();
    out.flush().unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let bus = sandbox.pubsub().bus();
    let mut orders: Vec<String> = Vec::new();
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> usize { words[i].parse().unwrap() };
        let reply = match words[0] {
            "topic" => {
                bus.create_topic(words[1], order_event_schema_v1()).unwrap();
                String::new()
            }
            "fill" => {
                for i in 0..num(2) {
                    bus.publish_order(words[1], &format!("801B{i:013}"), &random_uuid())
                        .unwrap();
                }
                bus.latest_replay_id(words[1]).unwrap().to_string()
            }
            "orders" => {
                let org = sandbox.salesforce().org();
                let mut org = org.lock().unwrap();
                let first = orders.len() as u64 + 1;
                orders.extend(add_orders(&mut org, ACME_ACCOUNT, first, num(1) as u64).unwrap());
                String::new()
            }
            "publish" => {
                let (from, to, rate) = (num(2), num(3), num(4));
                let start = tokio::time::Instant::now();
                let mut published = Vec::with_capacity(to - from);
                for (i, order) in orders[from..to].iter().enumerate() {
                    if rate > 0 {
                        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                        tokio::time::sleep_until(due).await;
                    }
                    let uuid = random_uuid();
                    bus.publish_order(words[1], order, &uuid).unwrap();
                    published.push(format!("{uuid}:{}", now_us()));
                }
                published.join(",")
            }
            "status" => {
                let org = sandbox.salesforce().org();
                let org = org.lock().unwrap();
                let activated = orders[num(1)..num(2)]
                    .iter()
                    .filter(|id| {
                        org.get("Order", id)
                            .and_then(|o| o.get("Activation_Status__c"))
                            .and_then(|v| v.as_str())
                            == Some("Activated")
                    })
                    .count();
                let whmcs = sandbox.whmcs().whmcs().lock().unwrap().orders().len();
                format!("{activated} {whmcs}")
            }
            other => panic!("unknown command {other:?}"),
        };
        writeln!(out, "OK {reply}").unwrap();
        out.flush().unwrap();
    }
}

/// The parent's handle on the child sandbox. Commands run on the blocking pool, so the host's
/// runtime threads never wait on the pipe.
/// The child's stdin and stdout, one command and its answer at a time.
type Pipe = Arc<Mutex<(ChildStdin, BufReader<ChildStdout>)>>;

struct SandboxProc {
    child: Child,
    io: Option<Pipe>,
    env: BTreeMap<String, String>,
}

impl SandboxProc {
    async fn spawn() -> SandboxProc {
        tokio::task::spawn_blocking(|| {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .arg("--serve")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut ready = String::new();
            stdout.read_line(&mut ready).unwrap();
            let env = serde_json::from_str(ready.strip_prefix("READY ").unwrap()).unwrap();
            let stdin = child.stdin.take().unwrap();
            SandboxProc {
                child,
                io: Some(Arc::new(Mutex::new((stdin, stdout)))),
                env,
            }
        })
        .await
        .unwrap()
    }

    async fn cmd(&self, line: String) -> String {
        let io = Arc::clone(self.io.as_ref().unwrap());
        tokio::task::spawn_blocking(move || {
            let mut io = io.lock().unwrap();
            writeln!(io.0, "{line}").unwrap();
            io.0.flush().unwrap();
            let mut answer = String::new();
            io.1.read_line(&mut answer).unwrap();
            let rest = answer
                .trim_end()
                .strip_prefix("OK")
                .unwrap_or_else(|| panic!("sandbox answered {answer:?} to {line:?}"));
            rest.trim_start().to_owned()
        })
        .await
        .unwrap()
    }

    fn cpu(&self) -> Duration {
        cpu_time(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for SandboxProc {
    fn drop(&mut self) {
        // Closing its stdin ends the child.
        self.io = None;
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// User + system CPU time of a process, from its `/proc/<pid>/stat`.
fn cpu_time(stat: &str) -> Duration {
    let stat = std::fs::read_to_string(stat).unwrap();
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

fn host_cpu() -> Duration {
    cpu_time("/proc/self/stat")
}

/// CPU time redis-server has used (`INFO cpu`), when the store is Redis.
async fn redis_cpu(url: &str) -> Option<Duration> {
    let client = redis::Client::open(url).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut con)
        .await
        .ok()?;
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Some(Duration::from_secs_f64(
        field("used_cpu_user:") + field("used_cpu_sys:"),
    ))
}

// ---------------------------------------------------------------------------------------------
// A host pointed at the child sandbox

#[derive(Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Redis,
    /// A 3-primary Redis Cluster (a replica each) the bench starts itself.
    Cluster,
    Embedded,
}

/// The seed URLs of the bench's own cluster, once started.
static CLUSTER_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Redis => "redis",
            StoreKind::Cluster => "redis cluster (3 primaries)",
            StoreKind::Embedded => "embedded",
        }
    }
}

struct Setup {
    sandbox: SandboxProc,
    channel: String,
    config: Config,
    namespace: Option<String>,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new(store: StoreKind, workers: usize) -> Setup {
        let sandbox = SandboxProc::spawn().await;
        let tag = random_uuid().replace('-', "")[..12].to_owned();
        let channel = format!("/event/Bench{tag}__e");
        sandbox.cmd(format!("topic {channel}")).await;
        let dir = tempfile::tempdir().unwrap();
        let mut env = sandbox.env.clone();
        env.insert("SF_PROVISION_EVENT_CHANNEL".into(), channel.clone());
        env.insert("SF_EVENTS_REPLAY".into(), "ALL".into());
        env.insert(
            "FULFILLD_COMPONENT".into(),
            component("fulfillment.wasm").display().to_string(),
        );
        env.insert("FULFILLD_HTTP_ADDR".into(), "127.0.0.1:0".into());
        env.insert("FULFILLD_ENV".into(), "bench".into());
        env.insert("FULFILLD_WORKERS".into(), workers.to_string());
        env.insert(
            "FULFILLD_STATE_DIR".into(),
            dir.path().join("store").display().to_string(),
        );
        let namespace = (store == StoreKind::Redis).then(|| {
            let ns = format!("fulfilld-bench-{}", &random_uuid()[..8]);
            env.insert("REDIS_URL".into(), redis_url());
            env.insert("FULFILLD_REDIS_NAMESPACE".into(), ns.clone());
            ns
        });
        if store == StoreKind::Cluster {
            // The cluster is the bench's own and thrown away at the end: no cleanup.
            let url = CLUSTER_URL.get().expect("the cluster is started first");
            env.insert("REDIS_URL".into(), url.clone());
            env.insert("FULFILLD_REDIS_MODE".into(), "cluster".into());
        }
        let config = Config::from_lookup(|key| env.get(key).cloned()).unwrap();
        Setup {
            sandbox,
            channel,
            config,
            namespace,
            _dir: dir,
        }
    }

    async fn redis_cpu(&self) -> Option<Duration> {
        match self.namespace {
            Some(_) => redis_cpu(&redis_url()).await,
            None => None,
        }
    }

    async fn cleanup(self) {
        if let Some(ns) = &self.namespace {
            redis_cleanup(&redis_url(), ns, &self.channel).await;
        }
    }
}

struct Cpu {
    host: Duration,
    sandbox: Duration,
    redis: Option<Duration>,
}

impl Cpu {
    async fn now(setup: &Setup) -> Cpu {
        Cpu {
            host: host_cpu(),
            sandbox: setup.sandbox.cpu(),
            redis: setup.redis_cpu().await,
        }
    }

    async fn since(self, setup: &Setup) -> Cpu {
        let now = Cpu::now(setup).await;
        Cpu {
            host: now.host - self.host,
            sandbox: now.sandbox - self.sandbox,
            redis: now.redis.zip(self.redis).map(|(a, b)| a - b),
        }
    }

    /// µs of CPU per item: host / sandbox / redis.
    fn per_item(&self, n: usize) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        format!(
            "{:.0} / {:.0} / {}",
            us(self.host),
            us(self.sandbox),
            self.redis
                .map_or("-".to_owned(), |r| format!("{:.0}", us(r)))
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Ingest

struct IngestResult {
    store: StoreKind,
    events: usize,
    /// From `Host::from_config` to the last cursor commit.
    whole: Duration,
    /// From the first cursor commit to the last.
    streaming: Duration,
    /// `Host::from_config` alone (component load, store open, listeners).
    startup: Duration,
    cpu: Cpu,
}

async fn ingest(store: StoreKind, n: usize) -> IngestResult {
    let setup = Setup::new(store, 0).await;
    let latest = ReplayId::parse(
        &setup
            .sandbox
            .cmd(format!("fill {} {n}", setup.channel))
            .await,
    )
    .unwrap();

    let t0 = Instant::now();
    let host = Host::from_config(&setup.config).await.unwrap();
    let startup = t0.elapsed();
    // CPU from here: the subscription and the ingest, not the component's compilation.
    let cpu = Cpu::now(&setup).await;
    let shared = Arc::clone(host.shared());
    let mut first = None;
    loop {
        let cursor = shared.status().cursor;
        if cursor.is_some() && first.is_none() {
            first = Some(Instant::now());
        }
        if cursor.as_ref() == Some(&latest) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "ingest stalled at {cursor:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let whole = t0.elapsed();
    let streaming = first.unwrap().elapsed();
    let cpu = cpu.since(&setup).await;

    // Nothing lost, nothing doubled: the store's own view.
    let stored = shared.store.cursor(&setup.channel).await.unwrap();
    assert_eq!(stored.as_ref(), Some(&latest), "stored cursor");
    let depth = shared.store.queue_depth(&setup.channel).await.unwrap();
    assert_eq!(depth, n as u64, "queue depth after ingesting {n} events");
    drop(shared);
    host.shutdown().await;
    setup.cleanup().await;
    IngestResult {
        store,
        events: n,
        whole,
        streaming,
        startup,
        cpu,
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

struct E2eResult {
    store: StoreKind,
    workers: usize,
    orders: usize,
    burst: Duration,
    burst_cpu: Cpu,
    /// Latency of the burst's events (mostly queueing), ms.
    burst_latency: Vec<f64>,
    paced_rate: f64,
    paced: usize,
    /// Publish -> job recorded, ms, at the paced rate.
    latency: Vec<f64>,
    /// Publish -> job recorded, ms, at a light load (`LIGHT_RATE` per second).
    light: Vec<f64>,
}

/// Publishes Orders [from, to) at `rate` per second (0: at once); returns (uuid, publish µs).
async fn publish(setup: &Setup, from: usize, to: usize, rate: u64) -> Vec<(String, i64)> {
    let answer = setup
        .sandbox
        .cmd(format!("publish {} {from} {to} {rate}", setup.channel))
        .await;
    answer
        .split(',')
        .map(|item| {
            let (uuid, at) = item.split_once(':').unwrap();
            (uuid.to_owned(), at.parse().unwrap())
        })
        .collect()
}

async fn wait_jobs(host: &Host, total: u64, limit: Duration) {
    let start = Instant::now();
    let metrics = &host.shared().metrics;
    while metrics.job_latency.count() < total {
        assert!(
            start.elapsed() < limit,
            "only {} of {total} jobs finished after {limit:?}",
            metrics.job_latency.count()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Publish -> job recorded, ms, per event (every job must have completed).
async fn latencies(host: &Host, published: &[(String, i64)]) -> Vec<f64> {
    let store = &host.shared().store;
    let mut out = Vec::with_capacity(published.len());
    for (uuid, at_us) in published {
        let record = store.job_record(uuid).await.unwrap().unwrap();
        assert_eq!(record.outcome, "completed", "{record:?}");
        out.push((record.finished_at_ms * 1000 - at_us) as f64 / 1000.0);
    }
    out.sort_by(f64::total_cmp);
    out
}

const WARMUP: usize = 50;
/// The light-load run: this many events at this rate.
const LIGHT: usize = 100;
const LIGHT_RATE: u64 = 20;
/// The paced run publishes at most this long's worth of events.
const PACED_SECONDS: f64 = 15.0;

/// One measured run on a fresh sandbox (its fake org holds only this run's Orders) and a fresh
/// host: warm up, publish `count` events at `rate` per second (0: at once), wait until every job
/// is recorded, check every Order Activated with one WHMCS order each.
async fn phase(store: StoreKind, workers: usize, count: usize, rate: u64) -> Phase {
    let setup = Setup::new(store, workers).await;
    setup
        .sandbox
        .cmd(format!("orders {}", WARMUP + count))
        .await;
    let host = Host::from_config(&setup.config).await.unwrap();
    let limit = Duration::from_secs(300);

    // Warm-up: the token, HTTP connections, pooled instances.
    publish(&setup, 0, WARMUP, 0).await;
    wait_jobs(&host, WARMUP as u64, limit).await;

    let cpu = Cpu::now(&setup).await;
    let published = publish(&setup, WARMUP, WARMUP + count, rate).await;
    wait_jobs(&host, (WARMUP + count) as u64, limit).await;
    let end = now_us();
    let cpu = cpu.since(&setup).await;
    let first = published.iter().map(|p| p.1).min().unwrap();
    let elapsed = Duration::from_micros(u64::try_from(end - first).unwrap());
    let latency = latencies(&host, &published).await;

    let total = WARMUP + count;
    let status = setup.sandbox.cmd(format!("status 0 {total}")).await;
    let (activated, whmcs) = status.split_once(' ').unwrap();
    assert_eq!(activated.parse::<usize>().unwrap(), total, "Activated");
    assert_eq!(whmcs.parse::<usize>().unwrap(), total, "WHMCS orders");

    host.shutdown().await;
    setup.cleanup().await;
    Phase {
        count,
        elapsed,
        cpu,
        latency,
    }
}

struct Phase {
    count: usize,
    elapsed: Duration,
    cpu: Cpu,
    /// Publish -> job recorded, ms, sorted.
    latency: Vec<f64>,
}

async fn end_to_end(store: StoreKind, workers: usize, m: usize) -> E2eResult {
    let burst = phase(store, workers, m, 0).await;
    let burst_rate = m as f64 / burst.elapsed.as_secs_f64();
    let rate = (burst_rate / 2.0).max(1.0) as u64;
    let count = m.min((rate as f64 * PACED_SECONDS) as usize).max(1);
    let paced = phase(store, workers, count, rate).await;
    let light = phase(store, workers, LIGHT, LIGHT_RATE).await;
    E2eResult {
        store,
        workers,
        orders: m,
        burst: burst.elapsed,
        burst_cpu: burst.cpu,
        burst_latency: burst.latency,
        paced_rate: rate as f64,
        paced: paced.count,
        latency: paced.latency,
        light: light.latency,
    }
}

// ---------------------------------------------------------------------------------------------

async fn bench() {
    let events: usize = setting("FULFILLD_BENCH_EVENTS", 100_000);
    let orders: usize = setting("FULFILLD_BENCH_ORDERS", 2_000);
    let workers: Vec<usize> = list("FULFILLD_BENCH_WORKERS", "2,4,8")
        .iter()
        .map(|w| w.parse().expect("FULFILLD_BENCH_WORKERS: numbers"))
        .collect();
    let mut stores = Vec::new();
    let mut _cluster = None;
    for name in list("FULFILLD_BENCH_STORES", "redis,cluster,embedded") {
        match name.as_str() {
            "cluster" => {
                let cluster = redis_servers::OwnCluster::start().await;
                let _ = CLUSTER_URL.set(cluster.url());
                _cluster = Some(cluster);
                stores.push(StoreKind::Cluster);
            }
            "redis" if redis_reachable(&redis_url()).await => stores.push(StoreKind::Redis),
            "redis" => println!(
                "SKIPPED redis: no Redis at {} (set FULFILLD_TEST_REDIS_URL)",
                redis_url()
            ),
            "embedded" => stores.push(StoreKind::Embedded),
            other => panic!("FULFILLD_BENCH_STORES: unknown store {other:?}"),
        }
    }
    machine::print_start("pipeline", Some(&component("fulfillment.wasm")));

    println!("pipeline: ingest, {events} events pre-published, FULFILLD_WORKERS=0");
    println!(
        "| store | events/s (host start -> last cursor) | events/s (first -> last commit) | host start | CPU µs/event host / sandbox / redis |"
    );
    println!("|---|---|---|---|---|");
    for &store in &stores {
        let r = ingest(store, events).await;
        println!(
            "| {} | {:.0} | {:.0} | {:.0} ms | {} |",
            r.store.name(),
            r.events as f64 / r.whole.as_secs_f64(),
            r.events as f64 / r.streaming.as_secs_f64(),
            r.startup.as_secs_f64() * 1e3,
            r.cpu.per_item(r.events),
        );
    }

    println!();
    println!(
        "pipeline: end to end, {orders} Orders per burst, latency = job record's finished_at_ms - publish time"
    );
    println!(
        "| store | workers | burst orders/s | burst p50 / p99 | CPU µs/order host / sandbox / redis | paced rate | paced p50 / p99 / max | light p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &store in &stores {
        for &w in &workers {
            let r = end_to_end(store, w, orders).await;
            println!(
                "| {} | {} | {:.0} | {:.0} / {:.0} ms | {} | {:.0}/s x {} | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
                r.store.name(),
                r.workers,
                r.orders as f64 / r.burst.as_secs_f64(),
                percentile(&r.burst_latency, 50.0),
                percentile(&r.burst_latency, 99.0),
                r.burst_cpu.per_item(r.orders),
                r.paced_rate,
                r.paced,
                percentile(&r.latency, 50.0),
                percentile(&r.latency, 99.0),
                r.latency.last().copied().unwrap_or(f64::NAN),
                percentile(&r.light, 50.0),
                percentile(&r.light, 99.0),
            );
        }
    }
    machine::print_end("pipeline");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|arg| arg == "--serve") {
        runtime.block_on(serve());
    } else {
        runtime.block_on(bench());
    }
}

//! Per-order cost of `fulfill`: the Wasm component in the sandbox (fresh pooled instance + call)
//! against the in-memory fake host, and the same rules compiled natively against the same fakes
//! as the floor. Prints p50/p99 and the ratio; `docs/benchmarks.md` records the results.
//!
//! Run with `make bench` (release build). Iterations: `FULFILLD_BENCH_ITERS` (default 5000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulfilld::error::{CallError, ErrorKind};
use fulfilld::runtime::{Runtime, RuntimeConfig};
use fulfilld::services::Services;
use fulfilld::testkit::scenario::Scenario;
use fulfilld::testkit::{FakeHost, order_event};
use fulfillment_sdk::{ErrorKind as SdkErrorKind, Fulfillment, Host, HostError, Level};
use serde_json::{Map, Value};

#[path = "support/machine.rs"]
mod machine;

/// The native floor: the SDK's `Host` served by the same fake host, with the same JSON
/// round trips the Wasm boundary has.
struct NativeHost(Arc<FakeHost>);

fn sdk_error(error: CallError) -> HostError {
    let kind = match error.kind {
        ErrorKind::Forbidden => SdkErrorKind::Forbidden,
        ErrorKind::InvalidInput => SdkErrorKind::InvalidInput,
        ErrorKind::Rejected => SdkErrorKind::Rejected,
        ErrorKind::HttpStatus => SdkErrorKind::HttpStatus,
        ErrorKind::Timeout => SdkErrorKind::Timeout,
        ErrorKind::Network => SdkErrorKind::Network,
        ErrorKind::BadResponse => SdkErrorKind::BadResponse,
        ErrorKind::Auth => SdkErrorKind::Auth,
    };
    HostError {
        kind,
        code: error.code,
        message: error.message,
    }
}

fn object(text: &str) -> Result<Map<String, Value>, HostError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(sdk_error(CallError::invalid_input("not a JSON object"))),
    }
}

fn ready<T>(future: futures::future::BoxFuture<'_, T>) -> T {
    futures::executor::block_on(future)
}

impl Host for NativeHost {
    fn sf_query(&self, soql: &str) -> Result<String, HostError> {
        ready(self.0.sf_query(soql))
            .map(|v| v.to_string())
            .map_err(sdk_error)
    }

    fn sf_update(&self, sobject: &str, id: &str, fields_json: &str) -> Result<(), HostError> {
        let fields = object(fields_json)?;
        ready(self.0.sf_update(sobject, id, &fields)).map_err(sdk_error)
    }

    fn billing_call(&self, action: &str, params_json: &str) -> Result<String, HostError> {
        let params = object(params_json)?;
        ready(self.0.billing_call(action, &params))
            .map(|v| v.to_string())
            .map_err(sdk_error)
    }

    fn log(&self, _level: Level, _step: &str, _message: &str, _fields: &[(String, String)]) {}

    fn config(&self, key: &str) -> Option<String> {
        self.0.config(key)
    }

    fn now_ms(&self) -> i64 {
        self.0.now_ms()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    println!(
        "{name:<28} n={:<6} p50={:>9.1} µs  p99={:>9.1} µs",
        samples.len(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    (p50, p99)
}

fn main() {
    let iterations: usize = std::env::var("FULFILLD_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let component_dir = std::env::var_os("FULFILLD_COMPONENT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/wasm32-wasip2/component"));
    let wasm = std::fs::read(component_dir.join("fulfillment.wasm"))
        .expect("fulfillment.wasm missing: run `make components`");
    let scenario = Scenario::load(&root.join("tests/scenarios/happy-path.toml")).expect("scenario");
    let event = order_event("801000000000001AAA");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let component = tokio.block_on(runtime.load(&wasm)).expect("load");
    machine::print_start("fulfill", Some(&component_dir.join("fulfillment.wasm")));

    println!(
        "fulfill: happy path (3 items, 8 host calls + logs), {} byte component, {iterations} iterations",
        wasm.len()
    );
    // Fresh seeded fakes per iteration, made before the clock starts.
    let hosts = |n: usize| -> Vec<Arc<FakeHost>> {
        (0..n).map(|_| scenario.seed().expect("seed")).collect()
    };

    let warm = hosts(200);
    for host in warm {
        let report =
            tokio.block_on(runtime.run(&component, host as Arc<dyn Services>, &event, false));
        assert!(report.result.is_ok(), "{:?}", report.result);
    }
    let mut wasm_samples = Vec::with_capacity(iterations);
    for host in hosts(iterations) {
        let started = Instant::now();
        let report =
            tokio.block_on(runtime.run(&component, host as Arc<dyn Services>, &event, false));
        wasm_samples.push(started.elapsed());
        assert!(report.result.is_ok());
    }

    let native_event = || fulfillment_sdk::Event {
        event_uuid: event.event_uuid.clone(),
        replay_id: event.replay_id.clone(),
        schema_id: event.schema_id.clone(),
        channel: event.channel.clone(),
        created_date: event.created_date,
        payload: event.payload.clone(),
    };
    for host in hosts(200) {
        let result = fulfillment::Rules::fulfill(&NativeHost(host), native_event());
        assert!(result.is_ok());
    }
    let mut native_samples = Vec::with_capacity(iterations);
    for host in hosts(iterations) {
        let native = NativeHost(host);
        let input = native_event();
        let started = Instant::now();
        let result = fulfillment::Rules::fulfill(&native, input);
        native_samples.push(started.elapsed());
        assert!(result.is_ok());
    }

    let mut probe_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let info = tokio.block_on(runtime.probe(&component));
        probe_samples.push(started.elapsed());
        assert!(info.is_ok());
    }

    summary("wasm instance + info() only", probe_samples);
    let (wasm_p50, wasm_p99) = summary("wasm (instance + fulfill)", wasm_samples);
    let (native_p50, native_p99) = summary("native (same rules)", native_samples);
    let overhead = wasm_p50.saturating_sub(native_p50);
    println!(
        "sandbox overhead p50 = {:.1} µs (target <= 25 µs); p99 = {:.1} µs; wasm/native p50 = {:.2}x (target <= 3x)",
        overhead.as_secs_f64() * 1e6,
        wasm_p99.saturating_sub(native_p99).as_secs_f64() * 1e6,
        wasm_p50.as_secs_f64() / native_p50.as_secs_f64()
    );
    machine::print_end("fulfill");
}

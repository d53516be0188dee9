//! The test kit: runs any component against a mocked host.
//!
//! [`FakeHost`] serves the component's imports from an in-memory Salesforce org and WHMCS
//! (`crate::fake`), seeded per test, with failures injected per call. The runtime's gate records
//! every import call, so a test asserts on the call sequence, the logs and the final records.
//! [`scenario`] adds a readable file format on top, run by `fulfilld test`.

pub mod scenario;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::Event;
use crate::error::CallError;
use crate::fake::org::FakeOrg;
use crate::fake::whmcs::FakeWhmcs;
use crate::runtime::{JobReport, LoadError, LoadedComponent, Runtime, RuntimeConfig, RuntimeError};
use crate::services::Services;
use crate::whmcs;

/// 2026-01-01T00:00:00Z: the fake clock's default, so runs are reproducible.
pub const DEFAULT_NOW_MS: i64 = 1_767_225_600_000;

/// A failure to inject into matching import calls.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Injection {
    /// `salesforce.query`, `salesforce.update` or `billing.call`.
    pub op: String,
    /// Narrows the match: the WHMCS action, the updated sObject, or the queried sObject
    /// (`FROM` of the SOQL). Any call of `op` when absent.
    #[serde(default)]
    pub target: Option<String>,
    /// Which matching call fails first, counting from 1.
    #[serde(default = "one")]
    pub nth: u32,
    /// How many matching calls fail from `nth` on; 0 means every one.
    #[serde(default = "one")]
    pub times: u32,
    /// Let the call take effect in the fake before failing, like an answer lost on the way back
    /// (a timed-out AddOrder that did create the order).
    #[serde(default)]
    pub applied: bool,
    /// The service answered with this HTTP status: `http-status` with that code, as the real
    /// clients classify 403/429/5xx. For `billing.call`, `body` goes through the real WHMCS
    /// classifier (so a 200 with an HTML body is `bad-response`).
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Body sent with `http_status` (default: a short JSON error).
    #[serde(default)]
    pub body: Option<String>,
    /// No answer before the host's call timeout: `ETIMEOUT`.
    #[serde(default)]
    pub timeout: bool,
    /// WHMCS answered `result=error` with this message.
    #[serde(default)]
    pub whmcs_error: Option<String>,
    /// Any error value, as the component receives it.
    #[serde(default)]
    pub error: Option<CallError>,
}

fn one() -> u32 {
    1
}

/// The operations failures can be injected into.
pub const INJECTABLE_OPS: [&str; 3] = ["salesforce.query", "salesforce.update", "billing.call"];

impl Injection {
    /// An injection into the first call of `op` (on `target`); set one failure field after.
    pub fn new(op: &str, target: Option<&str>) -> Self {
        Injection {
            op: op.to_owned(),
            target: target.map(str::to_owned),
            nth: 1,
            times: 1,
            applied: false,
            http_status: None,
            body: None,
            timeout: false,
            whmcs_error: None,
            error: None,
        }
    }

    /// Checks the op name and that exactly one failure is described.
    pub fn validate(&self) -> Result<(), String> {
        if !INJECTABLE_OPS.contains(&self.op.as_str()) {
            return Err(format!(
                "unknown op `{}` (expected one of {})",
                self.op,
                INJECTABLE_OPS.join(", ")
            ));
        }
        let set = [
            self.http_status.is_some(),
            self.timeout,
            self.whmcs_error.is_some(),
            self.error.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        match set {
            1 => Ok(()),
            0 => Err("an injection needs one of http_status, timeout, whmcs_error, error".into()),
            _ => Err(
                "an injection takes only one of http_status, timeout, whmcs_error, error".into(),
            ),
        }
    }

    fn to_error(&self, op: &str, target: &str) -> CallError {
        if let Some(error) = &self.error {
            return error.clone();
        }
        if let Some(message) = &self.whmcs_error {
            return CallError::whmcs(message.clone());
        }
        if let Some(status) = self.http_status {
            let body = self.body.clone().unwrap_or_else(|| {
                if op == "billing.call" {
                    format!(r#"{{"result":"error","message":"HTTP {status}"}}"#)
                } else {
                    format!(r#"[{{"message":"HTTP {status}","errorCode":"SERVER_ERROR"}}]"#)
                }
            });
            return if op == "billing.call" {
                match whmcs::classify_response(status, body.as_bytes()) {
                    Err(error) => error,
                    Ok(_) => CallError::http_status(status, format!("HTTP {status}")),
                }
            } else {
                CallError::http_status(status, format!("HTTP {status}"))
            };
        }
        CallError::timeout(format!("{op} {target}: no answer within the call timeout"))
    }
}

#[derive(Debug)]
struct ArmedInjection {
    injection: Injection,
    seen: u32,
}

impl ArmedInjection {
    /// Counts a matching call; says whether this one fails.
    fn fires(&mut self, op: &str, target: &str) -> bool {
        if self.injection.op != op {
            return false;
        }
        if let Some(wanted) = &self.injection.target
            && !wanted.eq_ignore_ascii_case(target)
        {
            return false;
        }
        self.seen += 1;
        let first = self.injection.nth.max(1);
        let within = self.injection.times == 0 || self.seen < first + self.injection.times;
        self.seen >= first && within
    }
}

#[derive(Debug, Default)]
struct FakeState {
    org: FakeOrg,
    whmcs: FakeWhmcs,
    injections: Vec<ArmedInjection>,
}

/// The mocked host: an in-memory org and WHMCS, failure injection, settings and a clock.
#[derive(Debug)]
pub struct FakeHost {
    state: Mutex<FakeState>,
    config: Mutex<BTreeMap<String, String>>,
    now_ms: AtomicI64,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            state: Mutex::new(FakeState::default()),
            config: Mutex::new(BTreeMap::new()),
            now_ms: AtomicI64::new(DEFAULT_NOW_MS),
        }
    }
}

impl FakeHost {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A panicking test thread cannot leave the fakes half-updated in a way that matters.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Read or seed the fake org.
    pub fn with_org<R>(&self, f: impl FnOnce(&mut FakeOrg) -> R) -> R {
        f(&mut self.state().org)
    }

    /// Read or seed the fake WHMCS.
    pub fn with_whmcs<R>(&self, f: impl FnOnce(&mut FakeWhmcs) -> R) -> R {
        f(&mut self.state().whmcs)
    }

    /// Arms a failure for matching calls.
    pub fn inject(&self, injection: Injection) {
        self.state()
            .injections
            .push(ArmedInjection { injection, seen: 0 });
    }

    /// Disarms every injected failure.
    pub fn clear_injections(&self) {
        self.state().injections.clear();
    }

    /// Exposes a setting through the `config` import.
    pub fn set_config(&self, key: impl Into<String>, value: impl Into<String>) {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key.into(), value.into());
    }

    pub fn set_now_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The injected failure for this call, if one fires, and whether the call applies first.
    fn injected(&self, state: &mut FakeState, op: &str, target: &str) -> Option<(CallError, bool)> {
        state.injections.iter_mut().find_map(|armed| {
            armed.fires(op, target).then(|| {
                (
                    armed.injection.to_error(op, target),
                    armed.injection.applied,
                )
            })
        })
    }

    fn query_now(&self, soql: &str) -> Result<Value, CallError> {
        let mut state = self.state();
        let target = soql_object(soql).unwrap_or_default();
        if let Some((error, applied)) = self.injected(&mut state, "salesforce.query", &target) {
            if !applied {
                return Err(error);
            }
            let _ = state.org.query(soql);
            return Err(error);
        }
        state.org.query(soql)
    }

    fn update_now(
        &self,
        sobject: &str,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<(), CallError> {
        let mut state = self.state();
        if let Some((error, applied)) = self.injected(&mut state, "salesforce.update", sobject) {
            if applied {
                let _ = state.org.update(sobject, id, fields);
            }
            return Err(error);
        }
        state.org.update(sobject, id, fields)
    }

    fn billing_now(&self, action: &str, params: &Map<String, Value>) -> Result<Value, CallError> {
        let mut form = vec![("action".to_owned(), action.to_owned())];
        form.extend(whmcs::encode_params(params)?);
        form.push(("responsetype".to_owned(), "json".to_owned()));
        let mut state = self.state();
        if let Some((error, applied)) = self.injected(&mut state, "billing.call", action) {
            if applied {
                let _ = state.whmcs.handle(&form);
            }
            return Err(error);
        }
        let body = state.whmcs.handle(&form);
        drop(state);
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| CallError::bad_response(format!("fake WHMCS answer: {e}")))?;
        whmcs::classify_response(200, &bytes)
    }
}

/// The `FROM` sObject of a SOQL query's outer select (subqueries skipped).
pub fn soql_object(soql: &str) -> Option<String> {
    let mut depth = 0usize;
    let mut outer = String::with_capacity(soql.len());
    for c in soql.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => outer.push(c),
            _ => {}
        }
    }
    let mut words = outer.split_whitespace();
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("from") {
            return words.next().map(str::to_owned);
        }
    }
    None
}

impl Services for FakeHost {
    fn sf_query<'a>(&'a self, soql: &'a str) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(std::future::ready(self.query_now(soql)))
    }

    fn sf_update<'a>(
        &'a self,
        sobject: &'a str,
        id: &'a str,
        fields: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        Box::pin(std::future::ready(self.update_now(sobject, id, fields)))
    }

    fn billing_call<'a>(
        &'a self,
        action: &'a str,
        params: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(std::future::ready(self.billing_now(action, params)))
    }

    fn config(&self, key: &str) -> Option<String> {
        self.config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .cloned()
    }

    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}

/// A component loaded into a sandboxed runtime, ready to run against fake hosts.
#[derive(Debug, Clone)]
pub struct TestKit {
    runtime: Runtime,
    component: LoadedComponent,
}

impl TestKit {
    /// Loads a component file with the default runtime limits.
    pub async fn load_file(path: &Path) -> Result<Self, TestKitError> {
        Self::load_file_with(path, RuntimeConfig::default()).await
    }

    pub async fn load_file_with(path: &Path, config: RuntimeConfig) -> Result<Self, TestKitError> {
        let wasm = std::fs::read(path).map_err(|source| TestKitError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let runtime = Runtime::new(config).map_err(TestKitError::Runtime)?;
        let component = runtime
            .load(&wasm)
            .await
            .map_err(|source| TestKitError::Load {
                path: path.display().to_string(),
                source,
            })?;
        Ok(TestKit { runtime, component })
    }

    pub fn from_parts(runtime: Runtime, component: LoadedComponent) -> Self {
        TestKit { runtime, component }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn component(&self) -> &LoadedComponent {
        &self.component
    }

    /// Runs `fulfill(event)` against `host` as the job's first delivery, recording every
    /// import call. Every run of the kit is a rehearsal ([`crate::runtime::RunKind`]).
    pub async fn fulfill(&self, host: &Arc<FakeHost>, event: &Event) -> JobReport {
        self.fulfill_delivery(host, event, 1).await
    }

    /// [`TestKit::fulfill`] as the job's `delivery`-th delivery (`job.delivery`): 2 or more is
    /// a job handed out again after an earlier run died.
    pub async fn fulfill_delivery(
        &self,
        host: &Arc<FakeHost>,
        event: &Event,
        delivery: u32,
    ) -> JobReport {
        let services: Arc<dyn Services> = Arc::clone(host) as Arc<dyn Services>;
        // Scenario runs are rehearsals: their logs and counts stay out of the host's job traffic.
        let options = crate::runtime::RunOptions {
            kind: crate::runtime::RunKind::Rehearsal,
            record: crate::runtime::Recording::Full,
            delivery,
            ..crate::runtime::RunOptions::default()
        };
        self.runtime
            .run_with(&self.component, services, event, options)
            .await
    }
}

/// Why a test kit could not be set up. The messages leave the cause to `source()`: anyhow's
/// `{:#}` or [`crate::error::chain`] show it.
#[derive(Debug, thiserror::Error)]
pub enum TestKitError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the runtime")]
    Runtime(#[source] RuntimeError),
    #[error("cannot load {path}")]
    Load { path: String, source: LoadError },
}

/// An event for `order_id` with test defaults for the other fields.
pub fn order_event(order_id: &str) -> Event {
    let mut payload = Map::new();
    payload.insert("OrderId__c".into(), Value::String(order_id.to_owned()));
    Event {
        event_uuid: test_uuid(order_id),
        replay_id: "1".into(),
        schema_id: "test-schema".into(),
        channel: "/event/OrderProvisionRequested__e".into(),
        created_date: DEFAULT_NOW_MS,
        payload,
        trace_parent: None,
    }
}

/// A stable UUID-shaped id derived from `seed`, so test runs are reproducible.
pub fn test_uuid(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex = hex::encode(Sha256::digest(seed.as_bytes()));
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

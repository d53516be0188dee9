//! The one layer every import call passes through: host-call budget, capability policy, a
//! tracing span, a timeout, counters, and (when asked) a journal of calls and log entries.
//!
//! The per-interface modules under `host/` only translate between WIT types and this gate; the
//! rules about what a component may do live here and in [`super::policy`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use super::manifest::Manifest;
use super::policy::CapabilityPolicy;
use crate::error::CallError;
use crate::services::{EXPOSED_SETTINGS, Services};

/// A sandbox rule a job broke; the job fails with the violation's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Guest CPU time passed the per-job deadline.
    CpuDeadline { budget: Duration, used: Duration },
    /// A linear memory tried to grow past the cap.
    MemoryCap { cap: usize, requested: usize },
    /// More host calls than the per-job cap.
    HostCallLimit { limit: u32 },
}

impl Violation {
    /// The job failure code for this violation.
    pub fn code(&self) -> &'static str {
        match self {
            Violation::CpuDeadline { .. } => "COMPONENT_TIMEOUT",
            Violation::MemoryCap { .. } => "COMPONENT_MEMORY",
            Violation::HostCallLimit { .. } => "COMPONENT_HOST_CALLS",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::CpuDeadline { budget, used } => write!(
                f,
                "component exceeded its CPU deadline of {budget:?}: its own code ran {} ms",
                used.as_millis()
            ),
            Violation::MemoryCap { cap, requested } => write!(
                f,
                "component tried to grow a memory to {requested} bytes, over the cap of {cap} bytes"
            ),
            Violation::HostCallLimit { limit } => {
                write!(f, "component made more than {limit} host calls")
            }
        }
    }
}

impl std::error::Error for Violation {}

/// One import call as the journal records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    /// `salesforce.query`, `salesforce.update` or `billing.call`.
    pub op: &'static str,
    /// What the call was about: the SOQL text, `Order/801...`, or the WHMCS action.
    pub target: String,
    /// The request's JSON argument (`fields` of an update, `params` of a billing call).
    pub request: Option<Value>,
    /// The answer, or the error the component received.
    pub result: Result<Value, CallError>,
    /// How long the call took (0 for a call refused before it was sent).
    pub duration_ms: u64,
    /// When it ended, ms since the Unix epoch.
    pub at_ms: i64,
}

/// One `log.emit` entry as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    pub level: String,
    pub step: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

/// What a run keeps of its calls and logs ([`super::RunOptions::record`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recording {
    /// Nothing (counters and spans only).
    #[default]
    Off,
    /// Each call's operation, target, outcome and duration, and the logs; no request or answer
    /// bodies (the pipeline's job journal when capture is off).
    Calls,
    /// Everything, bodies included (the test kit; the job journal with capture on).
    Full,
}

/// Calls and logs of one job, recorded when the job asks for it (the test kit does).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Journal {
    pub calls: Vec<CallRecord>,
    pub logs: Vec<LogRecord>,
}

/// Counters of import calls by operation and outcome, shared by every job of a runtime.
#[derive(Debug, Default)]
pub struct CallCounters {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl CallCounters {
    fn bump(&self, op: &'static str, outcome: &'static str) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((op, outcome)).or_insert(0) += 1;
        }
    }

    /// `(operation, outcome) -> count`; outcome is `ok` or the error kind (`forbidden`, ...).
    pub fn snapshot(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// What a component version may do: its manifest's capabilities and config keys, or the host's
/// policy and settings when it has no manifest.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) policy: Arc<CapabilityPolicy>,
    pub(crate) manifest: Option<Arc<Manifest>>,
}

/// The bytes of log entries (step, message, field names and values, as kept) one job may
/// write; later entries are dropped, with one WARN saying so.
pub(crate) const LOG_BUDGET: usize = 256 * 1024;

/// Per-job state of the gate.
pub(crate) struct Gate {
    services: Arc<dyn Services>,
    grant: Grant,
    counters: Arc<CallCounters>,
    call_timeout: Duration,
    max_host_calls: u32,
    calls: u32,
    pub(crate) violation: Option<Violation>,
    journal: Option<Journal>,
    /// Whether the journal keeps request and answer bodies ([`Recording::Full`]).
    bodies: bool,
    /// A rehearsal's refusals are logged at DEBUG (see [`super::RunKind::Rehearsal`]).
    rehearsal: bool,
    /// The Order the job's event names: the only one it may update, unless the policy widens
    /// that ([`CapabilityPolicy::check_record`]).
    pub(crate) order_scope: Option<String>,
    /// Largest answer handed to the component, in bytes ([`super::RuntimeConfig::result_max`]).
    result_max: usize,
    /// Bytes of log entries this job has written (against [`LOG_BUDGET`]).
    log_bytes: usize,
}

impl Gate {
    pub(crate) fn new(
        services: Arc<dyn Services>,
        grant: Grant,
        counters: Arc<CallCounters>,
        call_timeout: Duration,
        max_host_calls: u32,
        result_max: usize,
        record: Recording,
    ) -> Self {
        Gate {
            services,
            grant,
            counters,
            call_timeout,
            max_host_calls,
            calls: 0,
            violation: None,
            journal: (record != Recording::Off).then(Journal::default),
            bodies: record == Recording::Full,
            rehearsal: false,
            order_scope: None,
            result_max,
            log_bytes: 0,
        }
    }

    /// Marks the gate as a rehearsal's.
    pub(crate) fn rehearsing(mut self, rehearsal: bool) -> Self {
        self.rehearsal = rehearsal;
        self
    }

    pub(crate) fn policy(&self) -> &CapabilityPolicy {
        &self.grant.policy
    }

    /// The value of config `key` for this component: with a manifest, only keys it lists (the
    /// host's setting, else the manifest's default); without one, only the runbook's
    /// [`EXPOSED_SETTINGS`], as before manifests existed.
    pub(crate) fn config(&self, key: &str) -> Option<String> {
        match &self.grant.manifest {
            Some(manifest) => manifest.config_value(key, self.services.config(key)),
            None if EXPOSED_SETTINGS.contains(&key) => self.services.config(key),
            None => None,
        }
    }

    pub(crate) fn services(&self) -> &dyn Services {
        self.services.as_ref()
    }

    pub(crate) fn host_calls(&self) -> u32 {
        self.calls
    }

    pub(crate) fn take_journal(&mut self) -> Option<Journal> {
        self.journal.take()
    }

    /// Counts one host call against the per-job cap. Past the cap the call traps the guest:
    /// a component that loops on its imports is broken, not unlucky.
    pub(crate) fn admit(&mut self, op: &'static str) -> wasmtime::Result<()> {
        self.calls += 1;
        if self.calls > self.max_host_calls {
            let violation = Violation::HostCallLimit {
                limit: self.max_host_calls,
            };
            run_warn!(
                self.rehearsal,
                op,
                limit = self.max_host_calls,
                "host call refused: per-job limit reached"
            );
            self.counters.bump(op, "limit");
            self.violation = Some(violation.clone());
            return Err(wasmtime::Error::new(violation));
        }
        Ok(())
    }

    /// Records a call refused before it was sent (policy or invalid input).
    pub(crate) fn refuse(
        &mut self,
        op: &'static str,
        target: String,
        request: Option<Value>,
        error: CallError,
    ) -> CallError {
        run_warn!(
            self.rehearsal,
            op,
            target = %crate::domain::clip(&target, 200),
            kind = %error.kind,
            code = %error.code,
            "host call refused: {}",
            crate::domain::clip(&error.message, 300)
        );
        self.finish(op, target, request, Err(error.clone()), Duration::ZERO);
        error
    }

    /// Runs an allowed call against the services with the gate's timeout, span and counters.
    pub(crate) async fn perform<T, F, Fut>(
        &mut self,
        op: &'static str,
        target: String,
        request: Option<Value>,
        call: F,
    ) -> Result<T, CallError>
    where
        T: Serialize,
        F: FnOnce(Arc<dyn Services>) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        // DEBUG for the log; exported as a trace span whatever the log level (`telemetry`).
        let span = tracing::debug_span!(
            "host_call",
            op,
            target = %target,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let timeout = self.call_timeout;
        let started = std::time::Instant::now();
        let result = async {
            match tokio::time::timeout(timeout, call(Arc::clone(&self.services))).await {
                Ok(result) => result,
                Err(_) => Err(CallError::timeout(format!(
                    "{op}: no answer within {} ms",
                    timeout.as_millis()
                ))),
            }
        }
        .instrument(span.clone())
        .await;
        match &result {
            Ok(_) => span.record("outcome", "ok"),
            Err(error) => span
                .record("outcome", error.kind.as_str())
                .record("otel.status_code", "error"),
        };
        if let Err(error) = &result {
            tracing::debug!(op, target = %target, kind = %error.kind, code = %error.code, "host call failed: {}", error.message);
        }
        let recorded = match &result {
            Ok(value) if self.journal.is_some() && self.bodies => {
                Ok(serde_json::to_value(value).unwrap_or(Value::Null))
            }
            Ok(_) => Ok(Value::Null),
            Err(error) => Err(error.clone()),
        };
        self.finish(op, target, request, recorded, started.elapsed());
        result
    }

    fn finish(
        &mut self,
        op: &'static str,
        target: String,
        request: Option<Value>,
        result: Result<Value, CallError>,
        duration: Duration,
    ) {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.kind.as_str(),
        };
        self.counters.bump(op, outcome);
        if let Some(journal) = &mut self.journal {
            journal.calls.push(CallRecord {
                op,
                target,
                request: if self.bodies { request } else { None },
                result,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                at_ms: crate::domain::now_ms(),
            });
        }
    }

    /// An answer for the component, refused with `EBADRESPONSE` when it is larger than
    /// [`Self::result_max`] (the component is told the limit and the setting; nothing is cut).
    ///
    /// The journal then records the error, as the component received it.
    pub(crate) fn bounded(
        &mut self,
        op: &'static str,
        result: Result<String, CallError>,
    ) -> Result<String, CallError> {
        match result {
            Ok(text) if text.len() > self.result_max => {
                run_warn!(
                    self.rehearsal,
                    op,
                    bytes = text.len(),
                    limit = self.result_max,
                    "answer not handed to the component: over FULFILLD_HOST_RESULT_MAX_BYTES"
                );
                let error = CallError::bad_response(format!(
                    "{op}: the answer is {} bytes, over the host's limit of {} bytes for an \
                     answer handed to a component (FULFILLD_HOST_RESULT_MAX_BYTES)",
                    text.len(),
                    self.result_max
                ));
                if let Some(last) = self.journal.as_mut().and_then(|j| j.calls.last_mut()) {
                    last.result = Err(error.clone());
                }
                Err(error)
            }
            other => other,
        }
    }

    /// Counts `bytes` of log entry against the job's log budget: `false` when the entry is over
    /// it and must be dropped (the first time, a WARN says so).
    pub(crate) fn spend_log(&mut self, bytes: usize) -> bool {
        let budget = LOG_BUDGET;
        let before = self.log_bytes;
        self.log_bytes = before.saturating_add(bytes);
        if self.log_bytes <= budget {
            return true;
        }
        if before <= budget {
            run_warn!(
                self.rehearsal,
                budget,
                "the component's log entries for this job passed the budget; later entries are dropped"
            );
        }
        self.counters.bump("log.emit", "dropped");
        false
    }

    /// Records a log entry in the journal (the caller emits the tracing event).
    pub(crate) fn record_log(&mut self, entry: impl FnOnce() -> LogRecord) {
        self.counters.bump("log.emit", "ok");
        if let Some(journal) = &mut self.journal {
            journal.logs.push(entry());
        }
    }

    /// Counts a coordination call (holds) by outcome. These stay out of the journal, which
    /// lists what a job asked of Salesforce and WHMCS.
    pub(crate) fn count(&self, op: &'static str, outcome: &'static str) {
        self.counters.bump(op, outcome);
    }

    /// Counts a call that needs no I/O (config, clock).
    pub(crate) fn count_local(&self, op: &'static str) {
        self.counters.bump(op, "ok");
    }
}

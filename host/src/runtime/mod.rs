//! The sandboxed runtime: one wasmtime engine with the pooling allocator, a prepared instance per
//! component version, and a fresh instance per job under a CPU deadline, a memory cap and a cap
//! on host calls. WASI is linked with nothing granted: no files, environment, arguments, sockets
//! or name lookups; stdout is discarded and stderr is kept (bounded) only to explain a trap.

/// A warning about a run: WARN for a job, DEBUG under [`REHEARSAL_TARGET`] for a rehearsal
/// (a rehearsal's troubles are the scenario's business, not an operator's alert).
macro_rules! run_warn {
    ($rehearsal:expr, $($arg:tt)+) => {
        if $rehearsal {
            tracing::debug!(target: $crate::runtime::REHEARSAL_TARGET, $($arg)+)
        } else {
            tracing::warn!($($arg)+)
        }
    };
}

mod bindings;
pub(crate) mod cache;
pub mod check;
mod cpu;
mod gate;
mod host;
pub mod manifest;
pub mod policy;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime::{ResourceLimiter, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::domain::Event;
use crate::error::CallError;
use crate::holds::{HoldTable, SharedHolds};
use crate::services::Services;
use bindings::{Fulfillment, FulfillmentPre};
pub use cache::CacheUse;
use gate::Grant;
pub use gate::{CallCounters, CallRecord, Journal, LogRecord, Recording, Violation};
use manifest::{Manifest, ManifestError};
use policy::CapabilityPolicy;

/// Limits and sizing of the runtime. The defaults live in [`RuntimeConfig::default`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Guest execution time allowed per job (time spent in host calls does not count).
    pub cpu_deadline: Duration,
    /// Wall-clock time allowed per job, host calls included.
    pub wall_deadline: Duration,
    /// Largest size, in bytes, any one linear memory of a component may grow to.
    pub memory_cap: usize,
    /// Import calls allowed per job (log entries included).
    pub max_host_calls: u32,
    /// Time allowed for one Salesforce or WHMCS call.
    pub call_timeout: Duration,
    /// Component instances that may be alive at once (the pool's size, so the job concurrency).
    pub max_instances: u32,
    /// Lifetime of a `holds` hold: the longest a hold outlives a job whose host died. A job
    /// asking for a hold waits at most this long plus one second, so a dead holder's hold
    /// always runs out within the wait.
    pub hold_ttl: Duration,
    /// What components may write and call.
    pub policy: CapabilityPolicy,
    /// Longest text a component hands the host for logs, job records and Salesforce (an
    /// outcome's or failure's message), in bytes; longer text is cut with a marked truncation.
    pub text_max: usize,
    /// Largest answer handed to a component (a query's merged records, a WHMCS answer), in
    /// bytes, as JSON text; a larger one is an `EBADRESPONSE` error naming the limit.
    pub result_max: usize,
}

/// Longest failure code, in bytes: codes are short tokens (`409`, `COMPONENT_TIMEOUT`).
pub const MAX_CODE_BYTES: usize = 64;
/// Longest component name or version `info()` may return, in bytes.
const MAX_INFO_BYTES: usize = 80;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cpu_deadline: Duration::from_secs(2),
            wall_deadline: Duration::from_secs(300),
            memory_cap: 64 << 20,
            max_host_calls: 1000,
            call_timeout: Duration::from_secs(30),
            max_instances: 64,
            // A hold spans a couple of calls (AddOrder, then the Salesforce write).
            hold_ttl: Duration::from_secs(70),
            policy: CapabilityPolicy::default(),
            text_max: 4096,
            result_max: 16 << 20,
        }
    }
}

/// How often the epoch advances; the granularity of the CPU deadline.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Bytes of guest stderr kept to explain a trap (a panic message).
const STDERR_CAPTURE: usize = 4096;
/// Core instances, tables and memories one component may hold (a `wasm32-wasip2` component
/// built with std has a handful of each).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;
/// Bytes of each pooled memory, table and fiber stack kept resident between jobs
/// (see `docs/benchmarks.md` for their effect).
const KEEP_RESIDENT_MEMORY: usize = 2 << 20;
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
const KEEP_RESIDENT_STACK: usize = 512 << 10;

/// Why the runtime could not start. The messages leave the cause to `source()`: render with
/// [`crate::error::chain`] (or anyhow's `{:#}`) to show it.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("cannot configure the wasmtime engine")]
    Engine(#[source] wasmtime::Error),
    #[error("cannot configure the wasmtime engine: cannot start the epoch thread")]
    EpochThread(#[source] std::io::Error),
    /// `what`: which imports (`WASI`, `fulfillment imports`).
    #[error("cannot link the host interfaces: {what}")]
    Link {
        what: &'static str,
        #[source]
        source: wasmtime::Error,
    },
}

/// Why a component could not be loaded. The messages leave the cause to `source()`: render with
/// [`crate::error::chain`] to show it.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error("component does not compile")]
    Compile(#[source] wasmtime::Error),
    #[error("component does not satisfy the fulfillment world")]
    Link(#[source] wasmtime::Error),
    /// The source is wasmtime's error when the host failed, or the job-failure description (a
    /// trap with the guest's panic message, a sandbox limit) when the component did.
    #[error("component's info() export failed")]
    Info(#[source] wasmtime::Error),
    /// The embedded manifest is unusable, does not match the component, or asks beyond the
    /// host's capability policy.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Name and version a component reports through `info()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub name: String,
    pub version: String,
}

/// A compiled, linked component version, ready to instantiate cheaply per job.
#[derive(Clone)]
pub struct LoadedComponent {
    pre: FulfillmentPre<JobState>,
    info: ComponentInfo,
    digest: String,
    grant: Grant,
}

impl LoadedComponent {
    pub fn info(&self) -> &ComponentInfo {
        &self.info
    }

    /// The manifest the component carries, if any.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.grant.manifest.as_deref()
    }

    /// The capabilities its jobs run with: its manifest's, or the host's policy without one.
    pub fn policy(&self) -> &CapabilityPolicy {
        &self.grant.policy
    }

    /// sha256 of the `.wasm` bytes, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("info", &self.info)
            .field("digest", &self.digest)
            .field("manifest", &self.grant.manifest.is_some())
            .finish()
    }
}

/// Result of a successful `fulfill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub disposition: Disposition,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disposition {
    Completed,
    Skipped,
}

/// Where a job failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureSource {
    /// The component returned a business failure (already recorded in Salesforce by it).
    Component,
    /// The sandbox stopped the component: trap, deadline, memory cap, host-call cap.
    Sandbox,
    /// The host could not run the component (instance pool exhausted, its store unreachable
    /// for as long as the job may run, ...): the job is handed out again later, the Order is not
    /// marked Failed.
    Host,
}

/// A fault of the host itself that stops a run (not the component's doing, not a business
/// failure): the run ends as [`FailureSource::Host`] with code `HOST_UNAVAILABLE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostFault(pub String);

/// A failed job: a code (e.g. `409`, `COMPONENT_TIMEOUT`) and a short message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    pub source: FailureSource,
    pub code: String,
    pub message: String,
}

/// Everything known about one finished job.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub result: Result<Outcome, JobFailure>,
    /// The component version the job ran on.
    pub component: ComponentInfo,
    pub host_calls: u32,
    /// Wall-clock time of the run (what the job deadline is measured against).
    pub elapsed: Duration,
    /// CPU time the component's own code used (what the CPU deadline is measured against).
    pub cpu: Duration,
    /// Present when the job was run with `record = true`.
    pub journal: Option<Journal>,
}

/// Name of the span every log line of a job is in (with `order_id`, `event_uuid`, `replay_id`,
/// `component`, `delivery`). Whoever starts a job opens it once: the caller of
/// [`Runtime::run_with`] hands its own in [`RunOptions::span`], or the runtime opens it.
pub const JOB_SPAN: &str = "job";

/// Name of the span a rehearsal runs in (at DEBUG, with `order_id`, `event_uuid`, `component`
/// and `delivery`), instead of [`JOB_SPAN`].
pub const REHEARSAL_SPAN: &str = "rehearsal";

/// Log target of everything a rehearsal logs: the component's entries (at DEBUG whatever level
/// the component used, with that level in the `level` field) and the host's remarks on its calls.
pub const REHEARSAL_TARGET: &str = "fulfilld::gate";

/// Whether a run provisions a real order or rehearses against fakes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunKind {
    /// A real job (the pipeline's worker, `fulfilld fulfill`): the component's logs go out at
    /// their own level under the target `component` in a [`JOB_SPAN`], and its calls count in
    /// [`Runtime::call_counters`].
    #[default]
    Job,
    /// A scenario run (the deploy gate, `fulfilld test`): the component's logs go to
    /// [`REHEARSAL_TARGET`] at DEBUG in a [`REHEARSAL_SPAN`], and its calls count in counters
    /// private to the run.
    Rehearsal,
}

/// What a run knows about its job beyond the event.
#[derive(Clone)]
pub struct RunOptions {
    /// A job or a rehearsal.
    pub kind: RunKind,
    /// What to keep of the job's calls and logs: everything (the test kit), the calls without
    /// their bodies (the pipeline's job journal), or nothing.
    pub record: Recording,
    /// How many times the job has been handed out, this run included (the `job.delivery`
    /// import).
    pub delivery: u32,
    /// Where `holds` live; `None` uses a table private to this runtime (one process).
    pub holds: Option<SharedHolds>,
    /// The job's [`JOB_SPAN`] when the caller opened it (the pipeline's worker, whose own lines
    /// about the job are in it); `None` opens one for the run ([`REHEARSAL_SPAN`] for a
    /// rehearsal). Either way a job has one span.
    pub span: Option<tracing::Span>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            kind: RunKind::Job,
            record: Recording::Off,
            delivery: 1,
            holds: None,
            span: None,
        }
    }
}

/// The job-level part of [`JobState`]: delivery count and the holds the job has.
pub(crate) struct JobContext {
    pub(crate) kind: RunKind,
    pub(crate) delivery: u32,
    /// This run's identity as a holder: its EventUuid, delivery and a random part (see
    /// [`crate::holds`]).
    pub(crate) holder: String,
    pub(crate) holds: SharedHolds,
    pub(crate) hold_ttl: Duration,
    /// Names this run holds, renewed while held and released when it ends.
    pub(crate) held: host::Held,
    /// When the job's wall-clock deadline passes.
    pub(crate) deadline: Instant,
}

impl JobContext {
    pub(crate) fn rehearsal(&self) -> bool {
        self.kind == RunKind::Rehearsal
    }
}

/// Store data of one job.
pub(crate) struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: JobLimiter,
    gate: gate::Gate,
    job: JobContext,
    /// What the guest wrote to stderr (bounded), shown when it traps.
    stderr: MemoryOutputPipe,
    /// The CPU time the guest has used, against the CPU deadline.
    cpu: cpu::GuestCpu,
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Enforces the memory cap and records when it was hit, so the trap is reported as
/// `COMPONENT_MEMORY` rather than a generic trap.
struct JobLimiter {
    memory_cap: usize,
    hit: Option<Violation>,
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            let violation = Violation::MemoryCap {
                cap: self.memory_cap,
                requested: desired,
            };
            self.hit = Some(violation.clone());
            return Err(wasmtime::Error::new(violation));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// WASI's wall clock reads the services' clock, so a component sees one time whichever API
/// it uses (and the test kit controls both).
struct ServicesClock(Arc<dyn Services>);

impl HostWallClock for ServicesClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.now_ms()).unwrap_or(0))
    }
}

/// Advances the engine's epoch on a dedicated thread until the runtime is dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Result<Self, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("fulfilld-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(RuntimeError::EpochThread)?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<JobState>,
    config: RuntimeConfig,
    policy: Arc<CapabilityPolicy>,
    counters: Arc<CallCounters>,
    /// Holds of jobs run without a store's holds (see [`RunOptions::holds`]).
    holds: Arc<HoldTable>,
    _ticker: EpochTicker,
}

/// The runtime. Cheap to clone; every clone shares one engine, pool and epoch thread.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(&config)).map_err(RuntimeError::Engine)?;
        let mut linker = Linker::<JobState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|source| {
            RuntimeError::Link {
                what: "WASI",
                source,
            }
        })?;
        Fulfillment::add_to_linker::<JobState, wasmtime::component::HasSelf<JobState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|source| RuntimeError::Link {
            what: "fulfillment imports",
            source,
        })?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                policy: Arc::new(config.policy.clone()),
                config,
                counters: Arc::new(CallCounters::default()),
                holds: Arc::new(HoldTable::new()),
                _ticker: ticker,
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Counters of import calls across all jobs of this runtime.
    pub fn call_counters(&self) -> &CallCounters {
        &self.inner.counters
    }

    /// Validates, compiles and links a component, then asks it for its `info()`.
    /// Compilation is CPU-heavy and runs on a blocking thread.
    pub async fn load(&self, wasm: &[u8]) -> Result<LoadedComponent, LoadError> {
        let declared = declared(wasm)?;
        let digest = hex::encode(Sha256::digest(wasm));
        let component = self.compile(wasm).await?;
        self.link(component, digest, declared).await
    }

    /// Compiles checked `.wasm` bytes on a blocking thread.
    async fn compile(&self, wasm: &[u8]) -> Result<Component, LoadError> {
        let engine = self.inner.engine.clone();
        let bytes = wasm.to_vec();
        tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| {
                LoadError::Compile(wasmtime::Error::new(e).context("compiler task failed"))
            })?
            .map_err(LoadError::Compile)
    }

    /// Links a compiled component against the host's imports and asks it for its `info()`.
    /// Links a compiled component against the host's imports, asks it for its `info()` and
    /// checks its manifest (if any) against it and against the host's policy (the ceiling).
    async fn link(
        &self,
        component: Component,
        digest: String,
        declared: Declared,
    ) -> Result<LoadedComponent, LoadError> {
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::Link)?;
        let pre = FulfillmentPre::new(instance_pre).map_err(LoadError::Link)?;
        let info = self.component_info(&pre).await?;
        let grant = match declared.manifest {
            Some(manifest) => {
                manifest.check_component(&info.name, &info.version, declared.wit)?;
                let excess = manifest.excess(&self.inner.policy);
                if !excess.is_empty() {
                    return Err(ManifestError::BeyondCeiling(excess).into());
                }
                let mut policy = manifest.policy();
                // The Order scope is the operator's to widen, not the component's to ask for.
                policy.update_other_orders = self.inner.policy.update_other_orders;
                policy.redact = self.inner.policy.redact.clone();
                Grant {
                    policy: Arc::new(policy),
                    manifest: Some(Arc::new(manifest)),
                }
            }
            None => self.host_grant(),
        };
        tracing::info!(
            name = %info.name,
            version = %info.version,
            digest = %digest,
            manifest = grant.manifest.is_some(),
            "component loaded"
        );
        Ok(LoadedComponent {
            pre,
            info,
            digest,
            grant,
        })
    }

    /// What a component without a manifest gets: the host's policy and settings.
    fn host_grant(&self) -> Grant {
        Grant {
            policy: Arc::clone(&self.inner.policy),
            manifest: None,
        }
    }

    /// Instantiates `component` afresh and calls its `info()`: the fixed cost of a job (pooled
    /// instance, WASI context, one export call) without any rules or host calls. A health probe
    /// for a loaded version, and the baseline `make bench` reports.
    pub async fn probe(&self, component: &LoadedComponent) -> Result<ComponentInfo, LoadError> {
        self.component_info(&component.pre).await
    }

    async fn component_info(
        &self,
        pre: &FulfillmentPre<JobState>,
    ) -> Result<ComponentInfo, LoadError> {
        // Loading is not a job: whatever info() logs or calls is counted and logged as a
        // rehearsal's, never in the job metrics.
        let options = RunOptions {
            kind: RunKind::Rehearsal,
            ..RunOptions::default()
        };
        let mut store = self.new_store(Arc::new(NoServices), self.host_grant(), options, "");
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.info_failed(&store, e))?;
        let info = instance
            .fulfilld_fulfillment_handler()
            .call_info(&mut store)
            .await
            .map_err(|e| self.info_failed(&store, e))?;
        check_info(&info.name, &info.version)
            .map_err(|problem| LoadError::Info(wasmtime::Error::msg(problem)))?;
        Ok(ComponentInfo {
            name: info.name,
            version: info.version,
        })
    }

    fn new_store(
        &self,
        services: Arc<dyn Services>,
        grant: Grant,
        options: RunOptions,
        holder: &str,
    ) -> Store<JobState> {
        let config = &self.inner.config;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let rehearsal = options.kind == RunKind::Rehearsal;
        // A rehearsal's calls are not the host's traffic: they count apart.
        let counters = if rehearsal {
            Arc::new(CallCounters::default())
        } else {
            Arc::clone(&self.inner.counters)
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone())
            .wall_clock(ServicesClock(Arc::clone(&services)));
        let state = JobState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: JobLimiter {
                memory_cap: config.memory_cap,
                hit: None,
            },
            gate: gate::Gate::new(
                services,
                grant,
                counters,
                config.call_timeout,
                config.max_host_calls,
                config.result_max,
                options.record,
            )
            .rehearsing(rehearsal),
            job: JobContext {
                kind: options.kind,
                delivery: options.delivery,
                holder: holder.to_owned(),
                holds: options
                    .holds
                    .unwrap_or_else(|| Arc::clone(&self.inner.holds) as SharedHolds),
                hold_ttl: config.hold_ttl,
                held: host::Held::default(),
                deadline: Instant::now() + config.wall_deadline,
            },
            stderr,
            cpu: cpu::GuestCpu::default(),
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.call_hook(|mut ctx, hook| {
            ctx.data_mut().cpu.cross(hook);
            Ok(())
        });
        store.limiter(|state| &mut state.limiter);
        let budget = config.cpu_deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            let used = state.cpu.used();
            if used > budget {
                let violation = Violation::CpuDeadline { budget, used };
                state.gate.violation = Some(violation.clone());
                return Err(wasmtime::Error::new(violation));
            }
            // Let other jobs on this thread run; check again next tick.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// Runs `fulfill(event)` on a fresh instance of `component`. Never panics and never
    /// returns early: every way a job can end is a [`JobReport`].
    pub async fn run(
        &self,
        component: &LoadedComponent,
        services: Arc<dyn Services>,
        event: &Event,
        record: bool,
    ) -> JobReport {
        let options = RunOptions {
            record: if record {
                Recording::Full
            } else {
                Recording::Off
            },
            ..RunOptions::default()
        };
        self.run_with(component, services, event, options).await
    }

    /// [`Runtime::run`] with the job's delivery count and hold backend.
    pub async fn run_with(
        &self,
        component: &LoadedComponent,
        services: Arc<dyn Services>,
        event: &Event,
        options: RunOptions,
    ) -> JobReport {
        let started = Instant::now();
        let (job_span, delivery, kind) = (options.span.clone(), options.delivery, options.kind);
        let holder = format!(
            "{}/{delivery}/{}",
            event.event_uuid,
            &crate::domain::random_uuid()[..8]
        );
        let mut store = self.new_store(services, component.grant.clone(), options, &holder);
        store.data_mut().gate.order_scope = event.order_id().map(str::to_owned);
        let wit_event = bindings::types::Event {
            event_uuid: event.event_uuid.clone(),
            replay_id: event.replay_id.clone(),
            schema_id: event.schema_id.clone(),
            channel: event.channel.clone(),
            created_date: event.created_date,
            payload: Value::Object(event.payload.clone()).to_string(),
        };
        let call = async {
            let instance = component.pre.instantiate_async(&mut store).await?;
            instance
                .fulfilld_fulfillment_handler()
                .call_fulfill(&mut store, &wit_event)
                .await
        };
        // Every log line of the job, the component's included, carries these fields, once.
        let span = job_span.unwrap_or_else(|| match kind {
            RunKind::Job => tracing::info_span!(
                JOB_SPAN,
                order_id = event.order_id().unwrap_or_default(),
                event_uuid = %event.event_uuid,
                replay_id = %event.replay_id,
                component = %format_args!("{}@{}", component.info.name, component.info.version),
                delivery = delivery,
            ),
            RunKind::Rehearsal => tracing::debug_span!(
                target: REHEARSAL_TARGET,
                REHEARSAL_SPAN,
                order_id = event.order_id().unwrap_or_default(),
                event_uuid = %event.event_uuid,
                component = %format_args!("{}@{}", component.info.name, component.info.version),
                delivery = delivery,
            ),
        });
        let call = tracing::Instrument::instrument(call, span);
        let result = match tokio::time::timeout(self.inner.config.wall_deadline, call).await {
            Ok(Ok(Ok(outcome))) => Ok(Outcome {
                disposition: match outcome.disposition {
                    bindings::types::Disposition::Completed => Disposition::Completed,
                    bindings::types::Disposition::Skipped => Disposition::Skipped,
                },
                message: crate::domain::clip_marked(&outcome.message, self.inner.config.text_max),
            }),
            Ok(Ok(Err(failure))) => Err(JobFailure {
                source: FailureSource::Component,
                code: failure_code(failure.code),
                message: crate::domain::clip_marked(&failure.message, self.inner.config.text_max),
            }),
            Ok(Err(error)) => Err(self.describe_error(&store, &error)),
            Err(_) => Err(JobFailure {
                source: FailureSource::Sandbox,
                code: "COMPONENT_TIMEOUT".into(),
                message: format!(
                    "job exceeded its wall-clock deadline of {:?} (its component's own code ran \
                     {} ms of it)",
                    self.inner.config.wall_deadline,
                    store.data().cpu.used().as_millis()
                ),
            }),
        };
        let state = store.data_mut();
        host::release_all_holds(&mut state.job).await;
        JobReport {
            result,
            component: component.info.clone(),
            host_calls: state.gate.host_calls(),
            elapsed: started.elapsed(),
            cpu: state.cpu.used(),
            journal: state.gate.take_journal(),
        }
    }

    /// An `info()` call that failed. A host failure keeps wasmtime's error as the cause; a
    /// component's (a trap, a sandbox limit) is told by the same description a job gets, which
    /// adds what the error lacks (the guest's panic message).
    fn info_failed(&self, store: &Store<JobState>, error: wasmtime::Error) -> LoadError {
        let failure = self.describe_error(store, &error);
        LoadError::Info(match failure.source {
            FailureSource::Host => error,
            _ => wasmtime::Error::msg(failure.message),
        })
    }

    /// Turns an error out of wasmtime into a job failure with a precise code.
    fn describe_error(&self, store: &Store<JobState>, error: &wasmtime::Error) -> JobFailure {
        let state = store.data();
        let violation = state
            .gate
            .violation
            .clone()
            .or_else(|| state.limiter.hit.clone())
            .or_else(|| error.downcast_ref::<Violation>().cloned());
        if let Some(violation) = violation {
            return JobFailure {
                source: FailureSource::Sandbox,
                code: violation.code().into(),
                message: violation.to_string(),
            };
        }
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            let stderr = guest_stderr(&state.stderr);
            let mut message = format!("component trapped: {trap}");
            if !stderr.is_empty() {
                message.push_str(": ");
                message.push_str(&stderr);
            }
            return JobFailure {
                source: FailureSource::Sandbox,
                code: "COMPONENT_TRAP".into(),
                message,
            };
        }
        if let Some(fault) = error.downcast_ref::<HostFault>() {
            return JobFailure {
                source: FailureSource::Host,
                code: "HOST_UNAVAILABLE".into(),
                message: fault.to_string(),
            };
        }
        JobFailure {
            source: FailureSource::Host,
            code: "COMPONENT_UNAVAILABLE".into(),
            message: format!("{error:#}"),
        }
    }
}

/// What a component's bytes declare beyond the world check: its manifest and the WIT version it
/// was built against.
pub(crate) struct Declared {
    manifest: Option<Manifest>,
    wit: Option<check::Version>,
}

/// Checks `wasm` against the world and reads its manifest (before anything is compiled).
pub(crate) fn declared(wasm: &[u8]) -> Result<Declared, LoadError> {
    let surface = check::check_bytes(wasm)?;
    let manifest = manifest::from_component(wasm)?;
    Ok(Declared {
        manifest,
        wit: check::built_version(&surface),
    })
}

/// The name and version `info()` returned, as the host accepts them: they go into every job's
/// log lines, records and metric labels.
fn check_info(name: &str, version: &str) -> Result<(), String> {
    for (what, value) in [("name", name), ("version", version)] {
        let fine = !value.is_empty()
            && value.len() <= MAX_INFO_BYTES
            && value.bytes().all(|b| b.is_ascii_graphic());
        if !fine {
            return Err(format!(
                "info() returned a {what} of {} bytes that is not 1 to {MAX_INFO_BYTES} \
                 printable ASCII characters without spaces",
                value.len()
            ));
        }
    }
    Ok(())
}

/// A component's failure code as the host records it: printable ASCII without spaces, at most
/// [`MAX_CODE_BYTES`]; anything else becomes `INVALID_CODE` followed by what can be kept, so a
/// code never carries a newline into a log line or an unbounded value into a metric label.
fn failure_code(code: String) -> String {
    let fine = !code.is_empty()
        && code.len() <= MAX_CODE_BYTES
        && code.bytes().all(|b| b.is_ascii_graphic());
    if fine {
        return code;
    }
    let kept: String = code
        .chars()
        .filter(char::is_ascii_graphic)
        .take(MAX_CODE_BYTES - "INVALID_CODE:".len())
        .collect();
    if kept.is_empty() {
        "INVALID_CODE".to_owned()
    } else {
        format!("INVALID_CODE:{kept}")
    }
}

/// The last lines the guest wrote to stderr (a panic message), trimmed.
fn guest_stderr(pipe: &MemoryOutputPipe) -> String {
    let bytes = pipe.contents();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    // Keep the end: a panic message is the last thing written before the abort.
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Services for `info()` at load time: a component must not do I/O there.
struct NoServices;

impl Services for NoServices {
    fn sf_query<'a>(
        &'a self,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async { Err(CallError::forbidden("no I/O is allowed in info()")) })
    }

    fn sf_update<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a Map<String, Value>,
    ) -> futures::future::BoxFuture<'a, Result<(), CallError>> {
        Box::pin(async { Err(CallError::forbidden("no I/O is allowed in info()")) })
    }

    fn billing_call<'a>(
        &'a self,
        _: &'a str,
        _: &'a Map<String, Value>,
    ) -> futures::future::BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async { Err(CallError::forbidden("no I/O is allowed in info()")) })
    }

    fn config(&self, _: &str) -> Option<String> {
        None
    }

    fn now_ms(&self) -> i64 {
        crate::domain::now_ms()
    }
}

fn engine_config(config: &RuntimeConfig) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    let instances = config.max_instances.max(1);
    pool.total_component_instances(instances)
        .total_core_instances(instances * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances * MEMORIES_PER_COMPONENT)
        .total_tables(instances * TABLES_PER_COMPONENT)
        .total_stacks(instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(config.memory_cap)
        // Reuse is the common case (a fresh instance per job): keep the pages a job dirtied
        // resident and reset them in place instead of returning them to the kernel, which would
        // cost a page fault per page on the next job. Where the kernel offers PAGEMAP_SCAN only
        // the dirtied pages are reset.
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .async_stack_keep_resident(KEEP_RESIDENT_STACK)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut wasm = Config::new();
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        // No component-model async in this world: skip its per-call bookkeeping.
        .concurrency_support(false);
    wasm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_names_are_bounded() {
        assert!(check_info("fulfillment", "0.1.0").is_ok());
        assert!(check_info("fulfillment", "1.0.0-rc.1+build.7").is_ok());
        let long = "n".repeat(81);
        let err = check_info(&long, "1.0.0").unwrap_err();
        assert!(err.contains("a name of 81 bytes"), "{err}");
        assert!(check_info("", "1.0.0").is_err());
        assert!(check_info("two words", "1.0.0").is_err());
        assert!(check_info("ok", "1.0\n").is_err());
    }

    #[test]
    fn component_text_is_cut_with_a_mark_and_codes_are_tokens() {
        let text = crate::domain::clip_marked(&"é".repeat(3000), 4096);
        assert!(text.ends_with("… [cut: 6000 bytes in all]"), "{text}");
        assert!(text.len() <= 4096 + 40);
        assert_eq!(crate::domain::clip_marked("short", 4096), "short");
        assert_eq!(failure_code("409".into()), "409");
        assert_eq!(failure_code(String::new()), "INVALID_CODE");
        let code = failure_code(format!("BAD\n{}", "C".repeat(100)));
        assert!(
            code.starts_with("INVALID_CODE:BADCCC") && code.len() <= MAX_CODE_BYTES,
            "{code}"
        );
    }
}

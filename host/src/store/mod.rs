//! The durable store: the replay cursor, the subscriber lease, the job queue, job records and dead
//! letters. One interface ([`Store`]), two backends: [`redis::RedisStore`] for production (several
//! replicas on one Redis) and [`embedded::EmbeddedStore`] for a single node (the default when no
//! Redis URL is configured). One conformance suite (`host/tests/integration/store.rs`) runs against both.
//!
//! Guarantees every backend gives:
//! - [`Store::ingest`] is atomic and fenced: the jobs of a batch are enqueued (deduplicated by
//!   EventUuid), its undecodable events dead-lettered and the cursor moved in one step, and only
//!   while the caller's [`Lease`] (holder and epoch) is still the current one. A leader whose
//!   lease expired or was taken over gets [`StoreError::Fenced`] and writes nothing.
//! - The cursor only moves through `ingest` (and the operator's [`Store::set_cursor`]), so it
//!   never runs ahead of what is durably enqueued.
//! - A dedupe entry outlives Salesforce's 72 h retention window ([`DEDUPE_TTL`]).
//! - A claimed job that is not completed within `min_idle` is handed to the next claimer; one
//!   claimed more than `max_deliveries` times is moved to the dead letters with the reason.

pub mod embedded;
pub mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::ReplayId;
use crate::holds::{HoldBackend, HoldError};

/// How long an EventUuid is remembered: well past the 72 h the Pub/Sub API retains events, so a
/// replay of anything still retained is recognised.
pub const DEDUPE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Redis key of a channel's cursor, as the runbook names it (`sf:pe:replay:<channel>`).
pub fn cursor_key(channel: &str) -> String {
    format!("sf:pe:replay:{channel}")
}

/// Which backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Redis,
    Embedded,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "redis",
            Backend::Embedded => "embedded",
        })
    }
}

/// What can go wrong talking to the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed the operation (Redis down, disk error). Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The caller's lease is no longer the current one: it must stop writing for this channel.
    #[error("lease lost for channel {channel}: {detail}")]
    Fenced { channel: String, detail: String },
    /// No such job, dead letter or record.
    #[error("not found: {0}")]
    NotFound(String),
    /// Data in the store that this host cannot read (names the key and the problem).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// A bad argument (names it).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// A store that keeps holds reports its own failure as the hold's cause.
impl From<StoreError> for HoldError {
    fn from(error: StoreError) -> Self {
        HoldError::Backend(Box::new(error))
    }
}

/// The right to read a channel and move its cursor, held by one replica at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub channel: String,
    /// Who holds it (a replica id, unique per process).
    pub holder: String,
    /// Increases every time the lease changes hands; the fencing token.
    pub epoch: u64,
    /// Time to live granted by the last acquire or renew.
    pub ttl_ms: u64,
}

/// Who holds a channel's lease, for `/health` and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub holder: String,
    pub epoch: u64,
    /// Milliseconds until it expires unless renewed.
    pub expires_in_ms: u64,
}

/// A decoded event to enqueue as a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub event_uuid: String,
    pub replay_id: ReplayId,
    /// The serialized [`crate::domain::Event`] (JSON). Opaque to the store.
    pub payload: Vec<u8>,
}

/// An event to dead-letter straight away (it could not be decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDeadLetter {
    pub event_uuid: String,
    pub replay_id: ReplayId,
    /// The raw bytes exactly as received.
    pub payload: Vec<u8>,
    pub reason: String,
}

/// One atomic step of the subscriber: these jobs and dead letters, then the cursor.
#[derive(Debug, Clone, Default)]
pub struct IngestBatch {
    pub jobs: Vec<NewJob>,
    pub dead_letters: Vec<NewDeadLetter>,
    /// The cursor to store once the rest is durable (`None` leaves it where it is).
    pub cursor: Option<ReplayId>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// EventUuids enqueued as new jobs, in batch order.
    pub enqueued: Vec<String>,
    /// EventUuids already seen (within [`DEDUPE_TTL`]) and not enqueued again.
    pub duplicates: Vec<String>,
    /// Number of dead letters written.
    pub dead_lettered: usize,
}

/// A job handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The backend's id of this queue entry (a Redis stream id, or a sequence number).
    pub id: String,
    pub channel: String,
    pub event_uuid: String,
    pub replay_id: ReplayId,
    pub payload: Vec<u8>,
    /// How many times this job has been handed out, this time included (1 the first time).
    pub deliveries: u32,
    /// When it was enqueued, ms since the Unix epoch.
    pub enqueued_at_ms: i64,
}

/// How a job ended, kept per EventUuid for operators (and for the version it ran on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub event_uuid: String,
    pub replay_id: String,
    pub order_id: Option<String>,
    /// `completed`, `skipped` or `failed`.
    pub outcome: String,
    /// Failure code (e.g. `409`, `COMPONENT_TIMEOUT`), when failed.
    pub code: Option<String>,
    pub message: String,
    /// `name@version` of the component the job ran on.
    pub component: String,
    /// sha256 of that component's `.wasm` (its registry id).
    #[serde(default)]
    pub component_sha256: String,
    pub deliveries: u32,
    pub finished_at_ms: i64,
}

/// A dead letter: an event or job the host gave up on, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter set (stable; used by `show` and `requeue`).
    pub id: String,
    pub channel: String,
    pub event_uuid: String,
    pub replay_id: ReplayId,
    /// The job's payload, or the raw Avro bytes of an undecodable event.
    pub payload: Vec<u8>,
    /// `undecodable` (raw Avro, cannot be requeued) or `job` (a serialized event).
    pub kind: DeadLetterKind,
    pub reason: String,
    pub deliveries: u32,
    pub dead_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterKind {
    Undecodable,
    Job,
}

/// Parameters of [`Store::claim`].
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    /// Worker identity (unique per worker task of a process).
    pub consumer: String,
    /// At most this many jobs.
    pub max: usize,
    /// Wait at most this long for a job when none is ready.
    pub block: Duration,
    /// A job claimed but not completed for this long is handed out again.
    pub min_idle: Duration,
    /// A job that would be handed out more often than this is dead-lettered instead.
    pub max_deliveries: u32,
}

/// The store interface. Every method is cancel-safe in the sense that an abandoned call leaves
/// the store in a state one of the guarantees above covers. A store also keeps the components'
/// named holds ([`HoldBackend`]): Redis where every replica sees them, the embedded store in this
/// process (it is single-process).
pub trait Store: HoldBackend + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// A cheap round trip (Redis `PING`); `/health` reports its latency.
    fn ping(&self) -> BoxFuture<'_, Result<Duration, StoreError>>;

    /// The channel's stored cursor.
    fn cursor<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReplayId>, StoreError>>;

    /// Operator reset: stores `replay_id` (or removes the cursor) without a lease.
    fn set_cursor<'a>(
        &'a self,
        channel: &'a str,
        replay_id: Option<&'a ReplayId>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Operator request: the next subscription of `channel` starts from EARLIEST once, whatever
    /// the cursor says. Cleared by the first [`Store::ingest`] that writes a cursor.
    fn request_backfill<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Whether a backfill is pending.
    fn backfill_requested<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Takes the lease when it is free or expired (a new, higher epoch), or renews it when
    /// `holder` already holds it (same epoch). `None` when another holder has it.
    fn acquire_lease<'a>(
        &'a self,
        channel: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>>;

    /// Extends a held lease. [`StoreError::Fenced`] when it expired or changed hands.
    fn renew_lease<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, StoreError>>;

    /// Gives the lease up (no-op when it is no longer ours).
    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Who holds the lease now.
    fn lease<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<LeaseInfo>, StoreError>>;

    /// Atomically: enqueue the batch's jobs not seen before (dedupe by EventUuid), write its dead
    /// letters, clear a pending backfill and store its cursor, all only if `lease` is current.
    fn ingest<'a>(
        &'a self,
        lease: &'a Lease,
        batch: IngestBatch,
    ) -> BoxFuture<'a, Result<IngestReport, StoreError>>;

    /// Jobs for a worker: first any claimed job idle longer than `min_idle` (dead-lettering those
    /// past `max_deliveries`), then new ones, waiting up to `block` when there are none.
    fn claim<'a>(
        &'a self,
        channel: &'a str,
        options: &'a ClaimOptions,
    ) -> BoxFuture<'a, Result<Vec<Job>, StoreError>>;

    /// Keeps a long-running job from being reclaimed (resets its idle time).
    fn touch<'a>(
        &'a self,
        job: &'a Job,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records how the job ended and removes it from the queue.
    fn complete<'a>(
        &'a self,
        job: &'a Job,
        record: JobRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Moves a claimed job to the dead letters with `reason`.
    fn dead_letter_job<'a>(
        &'a self,
        job: &'a Job,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The record of a finished job, by EventUuid.
    fn job_record<'a>(
        &'a self,
        event_uuid: &'a str,
    ) -> BoxFuture<'a, Result<Option<JobRecord>, StoreError>>;

    /// Dead letters of a channel, oldest first, at most `limit`.
    fn dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>>;

    /// One dead letter by id.
    fn dead_letter<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<DeadLetter, StoreError>>;

    /// Puts a `job` dead letter back on the queue (a fresh job, deliveries reset) and removes it
    /// from the dead letters; returns the new job id. An `undecodable` one is refused with
    /// [`StoreError::Invalid`].
    fn requeue<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>>;

    fn dead_letter_count<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Jobs enqueued and not yet completed or dead-lettered (claimed ones included).
    fn queue_depth<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Whether component versions are shared between replicas through this store (Redis). The
    /// embedded store serves one node: each registry's own directory is the truth.
    fn shares_components(&self) -> bool {
        false
    }

    /// Publishes a deployed component version so other replicas can fetch it.
    fn share_component<'a>(
        &'a self,
        component: &'a SharedComponent,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = component;
        Box::pin(async { Ok(()) })
    }

    /// A version another replica published, by sha256.
    fn shared_component<'a>(
        &'a self,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedComponent>, StoreError>> {
        let _ = sha256;
        Box::pin(async { Ok(None) })
    }

    /// Records the version every replica should run.
    fn set_shared_active<'a>(
        &'a self,
        active: &'a SharedActive,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = active;
        Box::pin(async { Ok(()) })
    }

    /// The version every replica should run, if one was recorded.
    fn shared_active(&self) -> BoxFuture<'_, Result<Option<SharedActive>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A component version as replicas share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedComponent {
    pub sha256: String,
    /// The registry's metadata, JSON.
    pub meta_json: String,
    pub wasm: Vec<u8>,
    /// Its base64 signature, when it came with one.
    pub signature: Option<String>,
}

/// The version every replica should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedActive {
    pub sha256: String,
    /// The replica that activated it.
    pub by: String,
    pub at_ms: i64,
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    crate::domain::now_ms()
}

//! The subscriber's side of a channel: its replay cursor, the lease that lets one replica read
//! it, and the fenced ingest that enqueues what was read and moves the cursor in one step.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::ReplayId;

/// How long an EventUuid is remembered: well past the 72 h the Pub/Sub API retains events, so a
/// replay of anything still retained is recognised.
pub const DEDUPE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Redis key of a channel's cursor, as the runbook names it (`sf:pe:replay:<channel>`).
pub fn cursor_key(channel: &str) -> String {
    format!("sf:pe:replay:{channel}")
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

/// A channel's cursor and lease, and the ingest that writes under the lease.
///
/// Guarantees: [`CursorLease::ingest`] is atomic and fenced (see [`crate::store`]); the
/// cursor only moves through `ingest` and the operator's [`CursorLease::set_cursor`]; a lease's
/// epoch only grows, across releases, expiries and restarts.
pub trait CursorLease: Send + Sync {
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
    /// the cursor says. Cleared by the first [`CursorLease::ingest`] that writes a cursor.
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
}

//! The job queue the workers draw from, and the records of how jobs ended.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::ReplayId;

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

/// Parameters of [`JobQueue::claim`].
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
    /// Where a job the claim dead-letters is noted in its journal (`None`: not noted).
    pub journal: Option<ClaimJournal>,
}

/// Who notes the jobs a claim dead-letters in their journals, and for how long they are kept.
#[derive(Debug, Clone)]
pub struct ClaimJournal {
    pub replica: String,
    pub retention: Duration,
}

/// The jobs [`super::CursorLease::ingest`] enqueued, handed to workers.
///
/// Guarantees: a claimed job that is not completed within `min_idle` is handed to the next
/// claimer; one claimed more than `max_deliveries` times is moved to the dead letters with the
/// reason. A job leaves the queue only by [`JobQueue::complete`] (after its record is written) or
/// by being dead-lettered.
pub trait JobQueue: Send + Sync {
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

    /// Jobs enqueued and not yet completed or dead-lettered (claimed ones included).
    fn queue_depth<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;
}

//! The dead letters: events and jobs the host gave up on, kept for operators to read and requeue.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::ReplayId;

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
    /// `undecodable` (raw Avro, cannot be requeued), `job` (a serialized event) or `damaged` (a
    /// store entry the host could not read; kept as found, cannot be requeued).
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
    /// A queue or dead-letter entry the host could not read (missing or malformed fields, as
    /// when something other than the host wrote it): kept with what was found, never run.
    Damaged,
}

/// Reading and requeueing a channel's dead letters (the operator's `dead-letters` command).
///
/// Guarantees: a dead letter keeps its id until it is requeued, and ids are never reused; a
/// requeue removes the dead letter and enqueues a fresh job in one step.
pub trait DeadLetters: Send + Sync {
    /// Dead letters of a channel, oldest first, at most `limit`.
    fn dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>>;

    /// Dead letters of a channel, newest first, at most `limit` (the console and `jobs list
    /// --state dead`: what just went wrong comes first however many there are).
    fn recent_dead_letters<'a>(
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
    /// from the dead letters; returns the new job id. An `undecodable` or `damaged` one is refused
    /// with [`StoreError::Invalid`].
    fn requeue<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>>;

    fn dead_letter_count<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;
}
